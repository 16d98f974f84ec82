//! The block layer: a ledger that confirms every final payment, committed
//! by BFT consensus. Instant finality (TimeProofs) stays the only way a
//! payment becomes final; blocks order final payments and move their inputs
//! to `Confirmed{height}`. Pure like the rest of the core.
//!
//! - [`block`]: header, body, hash, bounded encoding.
//! - [`vote`]: signed proposals and prevote/precommit votes.
//! - [`certificate`]: commit certificates and fork evidence.
//! - [`checked`]: peers' block messages with their signatures checked,
//!   the only form the consensus takes them in.
//! - [`evidence`]: signed proof of a proposer's or voter's misbehaviour.
//! - [`leader`]: stake-weighted leader per height and round.
//! - [`consensus`]: the Tendermint-style state machine.

pub mod block;
pub mod certificate;
pub mod checked;
pub mod consensus;
pub mod evidence;
pub mod leader;
pub mod vote;

#[cfg(test)]
mod tests;

pub use block::{Block, BlockHash, BlockHeader};
pub use certificate::{CommitCertificate, CommittedBlock, ForkEvidence};
pub use checked::{Checked, CheckedBlockMessage};
pub use consensus::{
    BlockConsensus, BlockLedger, BodyRejection, Candidate, ChainTip, ConsensusConfig,
    ConsensusMessage, ConsensusRound, ConsensusWrite, OwnBlockVote, SignedStep,
};
pub use evidence::{BlockEvidence, BlockEvidenceKey, Contradicted, Contradiction, SignedProposal};
pub use vote::{BlockVote, Proposal, Slot, VoteKind};
