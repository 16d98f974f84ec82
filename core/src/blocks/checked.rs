//! Block messages whose signatures have been checked: the only form in
//! which the consensus takes a peer's proposal, vote or committed block.
//!
//! Checking needs nothing but the chain id and the registry, so it is a pure
//! function any thread can run: the node runs it on its check thread (with
//! peers' TimeProofs), never on the core thread, and the simulator and the
//! tests run the same functions inline through
//! [`crate::masternode::Masternode::handle_peer_message`]. Cheap checks
//! come first (a registered signer, the round's leader, the block's format,
//! a certificate's signers and weight), so a stranger's junk costs no
//! signature work.
//!
//! Only this module makes a [`Checked`] from a peer's message; the
//! consensus makes them of its own signed messages.

use crate::blocks::consensus::ConsensusError;
use crate::blocks::leader::leader;
use crate::blocks::{BlockVote, CommittedBlock, Proposal, Slot, VoteKind};
use crate::protocol::registry::Registry;
use crate::protocol::types::ChainId;

/// A block message whose signatures verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked<T>(T);

impl<T> Checked<T> {
    pub fn get(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }

    /// A message whose signatures were already checked as part of one
    /// that was (a checked proposal's polka): nothing to verify again.
    pub(in crate::blocks) fn trusted(t: T) -> Self {
        Checked(t)
    }

    /// For tests of code that only holds or orders checked messages.
    #[cfg(test)]
    pub(crate) fn assume_checked(t: T) -> Self {
        Checked(t)
    }
}

impl Checked<BlockVote> {
    /// A registered voter, then its signature.
    pub fn vote(v: BlockVote, registry: &Registry) -> Result<Self, ConsensusError> {
        if registry.weight_of(&v.voter).is_none() {
            return Err(ConsensusError::UnknownSigner(v.voter));
        }
        if !v.verify_signature() {
            return Err(ConsensusError::BadSignature);
        }
        Ok(Checked(v))
    }
}

impl Checked<Proposal> {
    /// A registered proposer that leads its round, a well-formed block, then
    /// the proposer's signature. Justification prevotes (`polka`) that are
    /// not prevotes of the valid round for this block, repeat a voter, come
    /// from an unregistered voter or do not verify are dropped, not fatal:
    /// the proposal itself is signed and may still be good. So at most one
    /// signature per registered masternode is checked for a polka.
    pub fn proposal(
        mut p: Proposal,
        chain_id: ChainId,
        registry: &Registry,
    ) -> Result<Self, ConsensusError> {
        if registry.weight_of(&p.proposer).is_none() {
            return Err(ConsensusError::UnknownSigner(p.proposer));
        }
        let expected = leader(chain_id, registry, p.slot.height, p.slot.round);
        if p.proposer != expected {
            return Err(ConsensusError::NotLeader {
                got: p.proposer,
                height: p.slot.height,
                round: p.slot.round,
            });
        }
        p.block.check_format()?;
        if !p.verify_signature() {
            return Err(ConsensusError::BadSignature);
        }
        let hash = p.block.hash();
        let justified = p.valid_round.filter(|vr| *vr < p.slot.round);
        let mut seen = std::collections::HashSet::new();
        p.polka.retain(|v| {
            justified.is_some_and(|vr| {
                v.slot
                    == Slot {
                        round: vr,
                        ..p.slot
                    }
            }) && v.kind == VoteKind::Prevote
                && v.block == Some(hash)
                && registry.weight_of(&v.voter).is_some()
                && seen.insert(v.voter)
                && v.verify_signature()
        });
        Ok(Checked(p))
    }
}

impl Checked<CommittedBlock> {
    /// The certificate names this block at its height, the block is well
    /// formed, then the certificate: its signers and weight, then its
    /// signatures.
    pub fn commit(
        c: CommittedBlock,
        chain_id: ChainId,
        registry: &Registry,
    ) -> Result<Self, ConsensusError> {
        let hash = c.block.hash();
        if c.cert.block != hash {
            return Err(ConsensusError::CertificateMismatch {
                cert: c.cert.block,
                block: hash,
            });
        }
        if c.cert.slot.height != c.block.height() {
            return Err(ConsensusError::NotExtendingTip {
                height: c.block.height(),
            });
        }
        c.block.check_format()?;
        c.cert.verify(chain_id, registry)?;
        Ok(Checked(c))
    }
}

/// A checked proposal, vote or committed block, as the state machine takes
/// it from a check thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckedBlockMessage {
    Proposal(Box<Checked<Proposal>>),
    Vote(Checked<BlockVote>),
    Commit(Box<Checked<CommittedBlock>>),
}
