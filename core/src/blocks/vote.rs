//! Signed consensus messages of the block layer: the leader's [`Proposal`]
//! and the masternodes' [`BlockVote`]s (prevote, precommit). Every signature
//! binds chain, registry epoch, height and round, so nothing replays across
//! networks, epochs, heights or rounds.

use ed25519_dalek::{Signer, SigningKey};

use crate::blocks::block::{Block, BlockHash};
use crate::codec::{DecodeError, Reader};
use crate::protocol::types::{ChainId, PublicKey};

const DOMAIN_PROPOSAL: &[u8] = b"TIMECOIN/block-proposal/v1";
const DOMAIN_BLOCK_VOTE: &[u8] = b"TIMECOIN/block-vote/v1";

/// The two voting steps of a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VoteKind {
    Prevote,
    Precommit,
}

impl VoteKind {
    pub fn code(self) -> u8 {
        match self {
            VoteKind::Prevote => 1,
            VoteKind::Precommit => 2,
        }
    }
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            1 => Some(VoteKind::Prevote),
            2 => Some(VoteKind::Precommit),
            _ => None,
        }
    }
}

/// Where a vote or proposal sits: (chain, epoch, height, round).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    pub chain_id: ChainId,
    pub epoch: u64,
    pub height: u64,
    pub round: u32,
}

impl Slot {
    pub const ENCODED_LEN: usize = 4 + 8 + 8 + 4;

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.chain_id.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.height.to_le_bytes());
        out.extend_from_slice(&self.round.to_le_bytes());
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Slot {
            chain_id: r.u32()?,
            epoch: r.u64()?,
            height: r.u64()?,
            round: r.u32()?,
        })
    }
}

/// `0` for none (nil), `1 ‖ hash` for a block.
pub fn encode_opt_hash(out: &mut Vec<u8>, h: &Option<BlockHash>) {
    match h {
        None => out.push(0),
        Some(h) => {
            out.push(1);
            out.extend_from_slice(&h.0);
        }
    }
}

pub fn decode_opt_hash(r: &mut Reader<'_>) -> Result<Option<BlockHash>, DecodeError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(BlockHash(r.array()?))),
        t => Err(DecodeError::UnknownTag {
            what: "optional block hash",
            tag: t,
        }),
    }
}

/// The bytes a vote's signature covers.
pub fn vote_signing_message(slot: &Slot, kind: VoteKind, block: &Option<BlockHash>) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN_BLOCK_VOTE.len() + Slot::ENCODED_LEN + 34);
    m.extend_from_slice(DOMAIN_BLOCK_VOTE);
    slot.encode(&mut m);
    m.push(kind.code());
    encode_opt_hash(&mut m, block);
    m
}

/// A masternode's prevote or precommit for a block (or for nil: no block
/// in this round).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockVote {
    pub slot: Slot,
    pub kind: VoteKind,
    pub block: Option<BlockHash>,
    pub voter: PublicKey,
    pub signature: [u8; 64],
}

impl BlockVote {
    /// A nil vote's length (a block vote is 32 bytes longer).
    pub const MIN_ENCODED_LEN: usize = Slot::ENCODED_LEN + 1 + 1 + 32 + 64;

    pub fn sign(slot: Slot, kind: VoteKind, block: Option<BlockHash>, key: &SigningKey) -> Self {
        let signature = key
            .sign(&vote_signing_message(&slot, kind, &block))
            .to_bytes();
        BlockVote {
            slot,
            kind,
            block,
            voter: PublicKey::from_signing(key),
            signature,
        }
    }

    pub fn verify_signature(&self) -> bool {
        crate::sig::verify(
            &self.voter.0,
            &vote_signing_message(&self.slot, self.kind, &self.block),
            &self.signature,
        )
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        self.slot.encode(out);
        out.push(self.kind.code());
        encode_opt_hash(out, &self.block);
        out.extend_from_slice(&self.voter.0);
        out.extend_from_slice(&self.signature);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let slot = Slot::decode(r)?;
        let k = r.u8()?;
        let kind = VoteKind::from_code(k).ok_or(DecodeError::UnknownTag {
            what: "block vote kind",
            tag: k,
        })?;
        Ok(BlockVote {
            slot,
            kind,
            block: decode_opt_hash(r)?,
            voter: PublicKey(r.array()?),
            signature: r.array()?,
        })
    }
}

/// `u32::MAX` encodes "no valid round".
const NO_ROUND: u32 = u32::MAX;

fn proposal_signing_message(
    slot: &Slot,
    valid_round: Option<u32>,
    block: &BlockHash,
    proposer: &PublicKey,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN_PROPOSAL.len() + Slot::ENCODED_LEN + 4 + 64);
    m.extend_from_slice(DOMAIN_PROPOSAL);
    slot.encode(&mut m);
    m.extend_from_slice(&valid_round.unwrap_or(NO_ROUND).to_le_bytes());
    m.extend_from_slice(&block.0);
    m.extend_from_slice(&proposer.0);
    m
}

/// Checks a proposer's signature over (slot, valid round, block hash).
pub fn verify_proposal_signature(
    slot: &Slot,
    valid_round: Option<u32>,
    block: &BlockHash,
    proposer: &PublicKey,
    signature: &[u8; 64],
) -> bool {
    crate::sig::verify(
        &proposer.0,
        &proposal_signing_message(slot, valid_round, block, proposer),
        signature,
    )
}

/// Most prevotes a proposal's justification may carry.
pub const MAX_POLKA_VOTES: usize = 4_096;

/// The round leader's proposal. `valid_round` is the round in which the
/// proposer saw a quorum of prevotes for this block (it re-proposes a block
/// that may already be locked by others), or none for a fresh block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub slot: Slot,
    pub valid_round: Option<u32>,
    pub block: Block,
    /// The round's leader (not necessarily the block's builder).
    pub proposer: PublicKey,
    pub signature: [u8; 64],
    /// With a `valid_round`: the prevotes of that round for this block
    /// (each signed by its voter, not covered by the proposer's signature),
    /// so a receiver that missed them, or lost them in a restart, can still
    /// check the quorum instead of waiting for a timeout.
    pub polka: Vec<BlockVote>,
}

impl Proposal {
    pub fn sign(slot: Slot, valid_round: Option<u32>, block: Block, key: &SigningKey) -> Self {
        let proposer = PublicKey::from_signing(key);
        let signature = key
            .sign(&proposal_signing_message(
                &slot,
                valid_round,
                &block.hash(),
                &proposer,
            ))
            .to_bytes();
        Proposal {
            slot,
            valid_round,
            block,
            proposer,
            signature,
            polka: Vec::new(),
        }
    }

    pub fn verify_signature(&self) -> bool {
        verify_proposal_signature(
            &self.slot,
            self.valid_round,
            &self.block.hash(),
            &self.proposer,
            &self.signature,
        )
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        self.slot.encode(out);
        out.extend_from_slice(&self.valid_round.unwrap_or(NO_ROUND).to_le_bytes());
        out.extend_from_slice(&self.proposer.0);
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&(self.polka.len() as u32).to_le_bytes());
        for v in &self.polka {
            v.encode(out);
        }
        self.block.encode(out);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let slot = Slot::decode(r)?;
        let vr = r.u32()?;
        let proposer = PublicKey(r.array()?);
        let signature = r.array()?;
        let n = r.count(
            "proposal polka",
            MAX_POLKA_VOTES,
            BlockVote::MIN_ENCODED_LEN,
        )?;
        let mut polka = Vec::with_capacity(n);
        for _ in 0..n {
            polka.push(BlockVote::decode(r)?);
        }
        Ok(Proposal {
            slot,
            valid_round: (vr != NO_ROUND).then_some(vr),
            proposer,
            signature,
            polka,
            block: Block::decode(r)?,
        })
    }
}
