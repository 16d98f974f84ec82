//! Commit certificates: precommits of more than two thirds of the weight for
//! one block in one round. Anyone holding the registry can check one offline,
//! so a node syncing from a single honest peer needs to trust nobody.
//! Two valid certificates for different blocks at one height are
//! [`ForkEvidence`].

use std::collections::HashSet;

use crate::blocks::block::BlockHash;
use crate::blocks::vote::{vote_signing_message, BlockVote, Slot, VoteKind};
use crate::codec::{DecodeError, Reader};
use crate::protocol::registry::Registry;
use crate::protocol::types::{ChainId, PublicKey};

/// More signatures than masternodes makes no sense; caps decode work.
pub const MAX_CERT_SIGNATURES: usize = 4_096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitCertificate {
    pub slot: Slot,
    pub block: BlockHash,
    /// (voter, precommit signature), in registry order.
    pub precommits: Vec<(PublicKey, [u8; 64])>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    #[error("certificate is for chain {got}, expected {expected}")]
    WrongChain { got: ChainId, expected: ChainId },
    #[error("certificate is for epoch {got}, the registry is epoch {expected}")]
    WrongEpoch { got: u64, expected: u64 },
    #[error("signer {0} is not a registered masternode")]
    UnknownSigner(PublicKey),
    #[error("signer {0} appears twice")]
    DuplicateSigner(PublicKey),
    #[error("precommit weight {weight} is below the quorum {quorum}")]
    BelowQuorum { weight: u64, quorum: u64 },
    #[error("a precommit signature does not verify")]
    BadSignature,
}

impl CommitCertificate {
    /// Builds a certificate from precommits (callers pass votes already
    /// checked; the result is ordered by registry position).
    pub fn from_precommits(
        slot: Slot,
        block: BlockHash,
        votes: &[&BlockVote],
        registry: &Registry,
    ) -> Self {
        let mut precommits: Vec<(PublicKey, [u8; 64])> =
            votes.iter().map(|v| (v.voter, v.signature)).collect();
        precommits.sort_by_key(|(k, _)| registry.position(k).unwrap_or(usize::MAX));
        CommitCertificate {
            slot,
            block,
            precommits,
        }
    }

    /// Checks signers, weight, then every signature (one ZIP 215 batch).
    /// Returns the precommit weight.
    pub fn verify(&self, chain_id: ChainId, registry: &Registry) -> Result<u64, CertificateError> {
        if self.slot.chain_id != chain_id {
            return Err(CertificateError::WrongChain {
                got: self.slot.chain_id,
                expected: chain_id,
            });
        }
        if self.slot.epoch != registry.epoch() {
            return Err(CertificateError::WrongEpoch {
                got: self.slot.epoch,
                expected: registry.epoch(),
            });
        }
        let mut seen = HashSet::with_capacity(self.precommits.len());
        let mut weight = 0u64;
        for (k, _) in &self.precommits {
            let w = registry
                .weight_of(k)
                .ok_or(CertificateError::UnknownSigner(*k))?;
            if !seen.insert(*k) {
                return Err(CertificateError::DuplicateSigner(*k));
            }
            weight += w;
        }
        if weight < registry.quorum() {
            return Err(CertificateError::BelowQuorum {
                weight,
                quorum: registry.quorum(),
            });
        }
        let msg = vote_signing_message(&self.slot, VoteKind::Precommit, &Some(self.block));
        let items: Vec<crate::sig::Item> = self
            .precommits
            .iter()
            .map(|(k, s)| (&k.0, &msg[..], s))
            .collect();
        if !crate::sig::verify_all(&items) {
            return Err(CertificateError::BadSignature);
        }
        Ok(weight)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        self.slot.encode(out);
        out.extend_from_slice(&self.block.0);
        out.extend_from_slice(&(self.precommits.len() as u32).to_le_bytes());
        for (k, s) in &self.precommits {
            out.extend_from_slice(&k.0);
            out.extend_from_slice(s);
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let slot = Slot::decode(r)?;
        let block = BlockHash(r.array()?);
        let n = r.count("certificate precommits", MAX_CERT_SIGNATURES, 96)?;
        let mut precommits = Vec::with_capacity(n);
        for _ in 0..n {
            precommits.push((PublicKey(r.array()?), r.array()?));
        }
        Ok(CommitCertificate {
            slot,
            block,
            precommits,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }
}

/// A committed block with its certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedBlock {
    pub block: crate::blocks::block::Block,
    pub cert: CommitCertificate,
}

/// Two valid commit certificates for different blocks at one height: only
/// possible if Byzantine weight reached a third. Kept, logged as critical;
/// the node stops processing blocks rather than pick one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForkEvidence {
    pub first: CommitCertificate,
    pub second: CommitCertificate,
}

impl ForkEvidence {
    pub fn height(&self) -> u64 {
        self.first.slot.height
    }

    /// Both certificates are valid, at one height, for different blocks.
    pub fn verify(&self, chain_id: ChainId, registry: &Registry) -> bool {
        self.first.slot.height == self.second.slot.height
            && self.first.block != self.second.block
            && self.first.verify(chain_id, registry).is_ok()
            && self.second.verify(chain_id, registry).is_ok()
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        self.first.encode(out);
        self.second.encode(out);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(ForkEvidence {
            first: CommitCertificate::decode(r)?,
            second: CommitCertificate::decode(r)?,
        })
    }
}
