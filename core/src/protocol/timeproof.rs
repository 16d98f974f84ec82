//! TimeProof: approve votes on one transaction carrying at least the quorum
//! weight. Anyone holding the masternode registry can verify it offline.

use std::collections::HashSet;

use crate::codec::{DecodeError, Reader};

use crate::protocol::registry::Registry;
use crate::protocol::types::{ChainId, Txid};
use crate::protocol::vote::VoteCert;

/// More certificates than masternodes makes no sense; this caps decode work.
pub const MAX_PROOF_VOTES: usize = 4_096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeProof {
    pub chain_id: ChainId,
    pub txid: Txid,
    pub votes: Vec<VoteCert>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    #[error("proof is for chain {got}, expected {expected}")]
    WrongChain { got: ChainId, expected: ChainId },
    #[error("vote {0} is from a key that is not a registered masternode")]
    UnknownVoter(usize),
    #[error("vote {0} is for registry epoch {1}, current is {2}")]
    WrongEpoch(usize, u64, u64),
    #[error("vote {0} repeats a voter")]
    DuplicateVoter(usize),
    #[error("vote {0} is not an approval")]
    NotApproval(usize),
    #[error("vote {0} has a malformed merkle path")]
    BadPath(usize),
    #[error("a signature does not verify")]
    BadSignature,
    #[error("approve weight {weight} is below the quorum {quorum}")]
    BelowQuorum { weight: u64, quorum: u64 },
}

impl TimeProof {
    /// Checks every certificate and returns the approve weight, which is at
    /// least the quorum on success. Signatures follow [`crate::sig`] (ZIP 215).
    /// Cheap before expensive: chain, voters, epochs, duplicates, decisions,
    /// Merkle paths and weight are all checked before any signature.
    pub fn verify(&self, chain_id: ChainId, registry: &Registry) -> Result<u64, ProofError> {
        let (weight, msgs) = self.check_structure(chain_id, registry)?;
        // One ZIP 215 batch: the same verdict as checking each certificate
        // alone, so a wallet and a node agree on every proof.
        let items: Vec<crate::sig::Item> = self
            .votes
            .iter()
            .zip(&msgs)
            .map(|(v, m)| (&v.voter.0, &m[..], &v.signature))
            .collect();
        if !crate::sig::verify_all(&items) {
            return Err(ProofError::BadSignature);
        }
        Ok(weight)
    }

    /// Everything but the signatures: returns the approve weight and the
    /// message each certificate signs. No signature is checked, so a caller
    /// can refuse a malformed or light proof for almost nothing.
    pub fn check_structure(
        &self,
        chain_id: ChainId,
        registry: &Registry,
    ) -> Result<(u64, Vec<Vec<u8>>), ProofError> {
        if self.chain_id != chain_id {
            return Err(ProofError::WrongChain {
                got: self.chain_id,
                expected: chain_id,
            });
        }
        let mut seen = HashSet::new();
        let mut weight = 0u64;
        let mut msgs = Vec::with_capacity(self.votes.len());
        for (i, v) in self.votes.iter().enumerate() {
            let w = registry
                .weight_of(&v.voter)
                .ok_or(ProofError::UnknownVoter(i))?;
            if v.epoch != registry.epoch() {
                return Err(ProofError::WrongEpoch(i, v.epoch, registry.epoch()));
            }
            if !seen.insert(v.voter) {
                return Err(ProofError::DuplicateVoter(i));
            }
            if !v.decision.is_approve() {
                return Err(ProofError::NotApproval(i));
            }
            msgs.push(
                v.signed_message(self.chain_id, &self.txid)
                    .ok_or(ProofError::BadPath(i))?,
            );
            weight += w;
        }
        let quorum = registry.quorum();
        if weight < quorum {
            return Err(ProofError::BelowQuorum { weight, quorum });
        }
        Ok((weight, msgs))
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.chain_id.to_le_bytes());
        out.extend_from_slice(&self.txid.0);
        out.extend_from_slice(&(self.votes.len() as u32).to_le_bytes());
        for v in &self.votes {
            v.encode(out);
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let chain_id = r.u32()?;
        let txid = Txid(r.array()?);
        // A certificate is at least 32+8+3+4+4+1+64 bytes.
        let n = r.count("proof votes", MAX_PROOF_VOTES, 116)?;
        let mut votes = Vec::with_capacity(n);
        for _ in 0..n {
            votes.push(VoteCert::decode(r)?);
        }
        Ok(TimeProof {
            chain_id,
            txid,
            votes,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let p = Self::decode(&mut r)?;
        r.finish()?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::registry::{Masternode, Tier};
    use crate::protocol::types::PublicKey;
    use crate::protocol::validation::RejectCode;
    use crate::protocol::vote::{Decision, VoteBatch, VoteItem};
    use ed25519_dalek::SigningKey;

    fn keys(n: u8) -> Vec<SigningKey> {
        (1..=n).map(|i| SigningKey::from_bytes(&[i; 32])).collect()
    }

    fn registry(ks: &[SigningKey]) -> Registry {
        Registry::new(
            1,
            ks.iter()
                .map(|k| Masternode {
                    key: PublicKey::from_signing(k),
                    address: "127.0.0.1:1".into(),
                    tier: Tier::Bronze,
                })
                .collect(),
        )
        .unwrap()
    }

    fn proof_from(ks: &[SigningKey], txid: Txid, decision: Decision) -> TimeProof {
        let votes = ks
            .iter()
            .map(|k| {
                let items = vec![
                    VoteItem {
                        txid: Txid([77; 32]),
                        decision: Decision::Approve,
                    },
                    VoteItem { txid, decision },
                ];
                let b = VoteBatch::sign(5, 1, k, items);
                let levels = b.verify().unwrap();
                b.cert(&levels, 1)
            })
            .collect();
        TimeProof {
            chain_id: 5,
            txid,
            votes,
        }
    }

    #[test]
    fn quorum_proofs_verify_and_weak_ones_do_not() {
        let ks = keys(4);
        let reg = registry(&ks);
        let t = Txid([1; 32]);
        let p = proof_from(&ks[..3], t, Decision::Approve);
        assert_eq!(p.verify(5, &reg), Ok(3));
        assert_eq!(TimeProof::from_bytes(&p.to_bytes()).unwrap(), p);

        let p2 = proof_from(&ks[..2], t, Decision::Approve);
        assert!(matches!(
            p2.verify(5, &reg),
            Err(ProofError::BelowQuorum { .. })
        ));

        let mut dup = p.clone();
        dup.votes[2] = dup.votes[0].clone();
        assert!(matches!(
            dup.verify(5, &reg),
            Err(ProofError::DuplicateVoter(2))
        ));

        let rej = proof_from(&ks[..3], t, Decision::Reject(RejectCode::InputLocked));
        assert!(matches!(
            rej.verify(5, &reg),
            Err(ProofError::NotApproval(0))
        ));

        let mut other_tx = p.clone();
        other_tx.txid = Txid([2; 32]);
        assert_eq!(other_tx.verify(5, &reg), Err(ProofError::BadSignature));

        let outsider = keys(9);
        let p3 = proof_from(&outsider[5..8], t, Decision::Approve);
        assert!(matches!(
            p3.verify(5, &reg),
            Err(ProofError::UnknownVoter(0))
        ));

        assert!(matches!(
            p.verify(6, &reg),
            Err(ProofError::WrongChain { .. })
        ));
    }

    /// Vote batches signed with a small-order component in R (which
    /// `verify_strict` refused and `ed25519_dalek::verify_batch` could
    /// accept): the proof verifies in a batch, and each certificate verifies
    /// alone, so a node and a wallet agree.
    #[test]
    fn torsion_signed_proof_verifies_in_batch_and_one_by_one() {
        let ks = keys(4);
        let reg = registry(&ks);
        let txid = Txid([3; 32]);
        let votes: Vec<VoteCert> = ks[..3]
            .iter()
            .map(|k| {
                let items = vec![VoteItem {
                    txid,
                    decision: Decision::Approve,
                }];
                let mut b = VoteBatch::sign(5, 1, k, items);
                let (_, msg) = b.levels_and_message();
                b.signature = crate::testkit::torsion_signature(k, &msg);
                let legacy = k
                    .verifying_key()
                    .verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&b.signature));
                assert!(legacy.is_err());
                let levels = b.verify().expect("valid under ZIP 215");
                b.cert(&levels, 0)
            })
            .collect();
        let p = TimeProof {
            chain_id: 5,
            txid,
            votes,
        };
        assert_eq!(p.verify(5, &reg), Ok(3));
        for v in &p.votes {
            let msg = v.signed_message(5, &txid).unwrap();
            assert!(crate::sig::verify(&v.voter.0, &msg, &v.signature));
        }
    }
}
