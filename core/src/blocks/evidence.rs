//! Block-layer evidence: signed messages proving that a masternode broke
//! the block protocol. Each record carries the offending signatures, so
//! anyone holding the registry checks it offline ([`BlockEvidence::verify`]);
//! a masternode keeps it durably (`Write::PutBlockEvidence`).
//!
//! - [`BlockEvidence::DoubleProposal`]: a leader signed two proposals for
//!   one height and round naming different blocks.
//! - [`BlockEvidence::DoubleVote`]: a voter signed two prevotes (or two
//!   precommits) for one height and round naming different values.
//! - [`BlockEvidence::ConflictingProposal`]: a leader proposed a block
//!   holding a transaction that spends an input of a payment final at the
//!   node that kept the record (which holds that payment's TimeProof).
//!
//! Never decides anything: the consensus detects, this module describes.

use crate::blocks::block::{BlockHash, BlockHeader, MAX_TX_PATH};
use crate::blocks::vote::{BlockVote, Proposal, Slot, VoteKind};
use crate::codec::{DecodeError, Reader};
use crate::protocol::registry::Registry;
use crate::protocol::types::{ChainId, PublicKey, Transaction, Txid};

/// A proposal without its block: what the proposer's signature covers
/// (slot, valid round, block hash, proposer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedProposal {
    pub slot: Slot,
    pub valid_round: Option<u32>,
    pub block: BlockHash,
    pub proposer: PublicKey,
    pub signature: [u8; 64],
}

/// `u32::MAX` encodes "no valid round" (as in a proposal).
const NO_ROUND: u32 = u32::MAX;

impl SignedProposal {
    pub const ENCODED_LEN: usize = Slot::ENCODED_LEN + 4 + 32 + 32 + 64;

    pub fn of(p: &Proposal) -> Self {
        SignedProposal {
            slot: p.slot,
            valid_round: p.valid_round,
            block: p.block.hash(),
            proposer: p.proposer,
            signature: p.signature,
        }
    }

    pub fn verify_signature(&self) -> bool {
        crate::blocks::vote::verify_proposal_signature(
            &self.slot,
            self.valid_round,
            &self.block,
            &self.proposer,
            &self.signature,
        )
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        self.slot.encode(out);
        out.extend_from_slice(&self.valid_round.unwrap_or(NO_ROUND).to_le_bytes());
        out.extend_from_slice(&self.block.0);
        out.extend_from_slice(&self.proposer.0);
        out.extend_from_slice(&self.signature);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let slot = Slot::decode(r)?;
        let vr = r.u32()?;
        Ok(SignedProposal {
            slot,
            valid_round: (vr != NO_ROUND).then_some(vr),
            block: BlockHash(r.array()?),
            proposer: PublicKey(r.array()?),
            signature: r.array()?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockEvidence {
    DoubleProposal {
        first: SignedProposal,
        second: SignedProposal,
    },
    DoubleVote {
        first: BlockVote,
        second: BlockVote,
    },
    ConflictingProposal {
        proposal: SignedProposal,
        /// The proposed block's header (hashes to `proposal.block`).
        header: BlockHeader,
        /// The block's transaction that conflicts, its position and its
        /// Merkle path to `header.tx_root`.
        tx: Transaction,
        index: u32,
        path: Vec<[u8; 32]>,
        /// The final payment it conflicts with (its transaction and
        /// TimeProof are in the keeping node's store).
        final_tx: Txid,
    },
}

/// What a record is about; one record per key (the store's key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockEvidenceKey {
    pub height: u64,
    pub round: u32,
    /// 0 double proposal, 1 double prevote, 2 double precommit, 3
    /// conflicting proposal.
    pub kind: u8,
    /// The offender: proposer or voter.
    pub signer: PublicKey,
}

const TAG_DOUBLE_PROPOSAL: u8 = 0;
const TAG_DOUBLE_VOTE: u8 = 1;
const TAG_CONFLICTING_PROPOSAL: u8 = 3;

impl BlockEvidence {
    pub fn key(&self) -> BlockEvidenceKey {
        let (slot, kind, signer) = match self {
            BlockEvidence::DoubleProposal { first, .. } => (first.slot, 0, first.proposer),
            BlockEvidence::DoubleVote { first, .. } => (first.slot, first.kind.code(), first.voter),
            BlockEvidence::ConflictingProposal { proposal, .. } => {
                (proposal.slot, 3, proposal.proposer)
            }
        };
        BlockEvidenceKey {
            height: slot.height,
            round: slot.round,
            kind,
            signer,
        }
    }

    /// The masternode the record accuses.
    pub fn offender(&self) -> PublicKey {
        self.key().signer
    }

    /// Both messages are signed by one registered masternode, for this
    /// chain and epoch, and really conflict: two proposals (votes of one
    /// kind) for one height and round naming different blocks (values); or
    /// a signed proposal whose block holds `tx` (by its Merkle path), which
    /// is not the final payment named. That `tx` spends an input of that
    /// payment is checked against the payment itself with
    /// [`BlockEvidence::conflicts_with`].
    pub fn verify(&self, chain_id: ChainId, registry: &Registry) -> bool {
        let bound = |s: &Slot| s.chain_id == chain_id && s.epoch == registry.epoch();
        match self {
            BlockEvidence::DoubleProposal { first, second } => {
                first.slot == second.slot
                    && bound(&first.slot)
                    && first.proposer == second.proposer
                    && first.block != second.block
                    && registry.weight_of(&first.proposer).is_some()
                    && first.verify_signature()
                    && second.verify_signature()
            }
            BlockEvidence::DoubleVote { first, second } => {
                first.slot == second.slot
                    && bound(&first.slot)
                    && first.kind == second.kind
                    && first.voter == second.voter
                    && first.block != second.block
                    && registry.weight_of(&first.voter).is_some()
                    && first.verify_signature()
                    && second.verify_signature()
            }
            BlockEvidence::ConflictingProposal {
                proposal,
                header,
                tx,
                index,
                path,
                final_tx,
            } => {
                let txid = tx.txid();
                bound(&proposal.slot)
                    && header.hash() == proposal.block
                    && header.chain_id == chain_id
                    && header.height == proposal.slot.height
                    && txid != *final_tx
                    && header.includes(&txid, *index, path)
                    && registry.weight_of(&proposal.proposer).is_some()
                    && proposal.verify_signature()
            }
        }
    }

    /// For a conflicting proposal: `final_payment` is the payment named and
    /// the block's transaction spends one of its inputs.
    pub fn conflicts_with(&self, final_payment: &Transaction) -> bool {
        match self {
            BlockEvidence::ConflictingProposal { tx, final_tx, .. } => {
                final_payment.txid() == *final_tx
                    && tx.txid() != *final_tx
                    && tx
                        .inputs
                        .iter()
                        .any(|i| final_payment.inputs.iter().any(|f| f.prev == i.prev))
            }
            _ => false,
        }
    }

    /// `tag:u8 ‖ ..`: 0 `proposal ‖ proposal` (each [`SignedProposal`]),
    /// 1 `vote ‖ vote` ([`BlockVote::encode`]), 3 `proposal ‖ header ‖
    /// index:u32 ‖ count:u8 ‖ path ‖ transaction ‖ final txid`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            BlockEvidence::DoubleProposal { first, second } => {
                out.push(TAG_DOUBLE_PROPOSAL);
                first.encode(out);
                second.encode(out);
            }
            BlockEvidence::DoubleVote { first, second } => {
                out.push(TAG_DOUBLE_VOTE);
                first.encode(out);
                second.encode(out);
            }
            BlockEvidence::ConflictingProposal {
                proposal,
                header,
                tx,
                index,
                path,
                final_tx,
            } => {
                out.push(TAG_CONFLICTING_PROPOSAL);
                proposal.encode(out);
                header.encode(out);
                out.extend_from_slice(&index.to_le_bytes());
                // Paths are built here from a block of at most 16,384
                // transactions: never above MAX_TX_PATH.
                let n = path.len().min(MAX_TX_PATH);
                out.push(n as u8);
                for s in &path[..n] {
                    out.extend_from_slice(s);
                }
                tx.encode(out);
                out.extend_from_slice(&final_tx.0);
            }
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8()? {
            TAG_DOUBLE_PROPOSAL => Ok(BlockEvidence::DoubleProposal {
                first: SignedProposal::decode(r)?,
                second: SignedProposal::decode(r)?,
            }),
            TAG_DOUBLE_VOTE => Ok(BlockEvidence::DoubleVote {
                first: BlockVote::decode(r)?,
                second: BlockVote::decode(r)?,
            }),
            TAG_CONFLICTING_PROPOSAL => {
                let proposal = SignedProposal::decode(r)?;
                let header = BlockHeader::decode(r)?;
                let index = r.u32()?;
                let n = r.u8()? as usize;
                if n > MAX_TX_PATH {
                    return Err(DecodeError::Invalid {
                        what: "evidence merkle path",
                    });
                }
                let mut path = Vec::with_capacity(n);
                for _ in 0..n {
                    path.push(r.array()?);
                }
                Ok(BlockEvidence::ConflictingProposal {
                    proposal,
                    header,
                    tx: Transaction::decode(r)?,
                    index,
                    path,
                    final_tx: Txid(r.array()?),
                })
            }
            t => Err(DecodeError::UnknownTag {
                what: "block evidence",
                tag: t,
            }),
        }
    }

    /// Which step a double vote is about (`None` for proposals).
    pub fn vote_kind(&self) -> Option<VoteKind> {
        match self {
            BlockEvidence::DoubleVote { first, .. } => Some(first.kind),
            _ => None,
        }
    }
}

/// What a certified block contradicted: a transaction of the committed
/// block at `height` spends an output that does not exist here, or one a
/// payment final here spent. Only possible with Byzantine weight of 1/3 or
/// more; the masternode stops processing blocks and keeps this record
/// (`Write::PutBlockStop`), so the stop survives a restart until an
/// operator clears it (`time-masternode clear-block-stop`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contradiction {
    pub height: u64,
    pub block: BlockHash,
    /// The committed block's transaction left unapplied.
    pub txid: Txid,
    pub what: Contradicted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contradicted {
    /// It spends an output unknown here.
    MissingInput(crate::protocol::types::OutPoint),
    /// It spends what this final payment spent.
    FinalPayment(Txid),
}

impl std::fmt::Display for Contradiction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "block {} at height {}: transaction {} ",
            self.block, self.height, self.txid
        )?;
        match self.what {
            Contradicted::MissingInput(op) => write!(f, "spends {op}, which does not exist here"),
            Contradicted::FinalPayment(t) => write!(f, "conflicts with final payment {t}"),
        }
    }
}

impl Contradiction {
    /// `height:u64 ‖ block ‖ txid ‖ tag:u8 ‖ (0: outpoint | 1: final txid)`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.height.to_le_bytes());
        out.extend_from_slice(&self.block.0);
        out.extend_from_slice(&self.txid.0);
        match self.what {
            Contradicted::MissingInput(op) => {
                out.push(0);
                op.encode(out);
            }
            Contradicted::FinalPayment(t) => {
                out.push(1);
                out.extend_from_slice(&t.0);
            }
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let height = r.u64()?;
        let block = BlockHash(r.array()?);
        let txid = Txid(r.array()?);
        let what = match r.u8()? {
            0 => Contradicted::MissingInput(crate::protocol::types::OutPoint::decode(r)?),
            1 => Contradicted::FinalPayment(Txid(r.array()?)),
            t => {
                return Err(DecodeError::UnknownTag {
                    what: "contradiction",
                    tag: t,
                })
            }
        };
        Ok(Contradiction {
            height,
            block,
            txid,
            what,
        })
    }
}
