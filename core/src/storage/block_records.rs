//! On-disk records of the block layer's tables (see [`super::records`] for
//! the conventions: keys sort as the table is walked, values decode with
//! bounds, golden bytes freeze the layouts).
//!
//! Layouts (integers little-endian unless marked BE):
//! - `blocks` key: height(u64 BE); value: [`Block::encode`] ‖
//!   [`CommitCertificate::encode`].
//! - `own_block_votes` key: height(u64 BE) ‖ round(u32 BE) ‖ step(u8: 0
//!   proposal, 1 prevote, 2 precommit); value: `0` (nil) or `1 ‖ hash(32)`.
//! - `block_candidates` key: height(u64 BE) ‖ hash(32); value:
//!   [`Block::encode`] ‖ count(u32) ‖ prevotes ([`BlockVote::encode`]).
//! - `fork_evidence` key: height(u64 BE); value: [`ForkEvidence::encode`].
//! - `block_heights` key: block hash(32); value: height(u64).
//! - `block_stop` key: height(u64 BE) of the contradicting block; value:
//!   [`Contradiction::encode`]. At most one record.
//! - `block_evidence` key: height(u64 BE) ‖ round(u32 BE) ‖ kind(u8: 0
//!   double proposal, 1 double prevote, 2 double precommit, 3 conflicting
//!   proposal) ‖ offender(32); value: [`BlockEvidence::encode`].

use crate::blocks::block::{Block, BlockHash, MAX_TX_PATH};
use crate::blocks::certificate::{CommitCertificate, CommittedBlock, ForkEvidence};
use crate::blocks::consensus::{Candidate, OwnBlockVote, SignedStep};
use crate::blocks::evidence::{BlockEvidence, BlockEvidenceKey, Contradiction};
use crate::blocks::vote::{decode_opt_hash, encode_opt_hash, BlockVote, MAX_POLKA_VOTES};
use crate::codec::{DecodeError, Reader};
use crate::protocol::types::PublicKey;
use crate::storage::records::{RecordError, TableKey, TableValue};

fn decode_all<'a, T>(
    bytes: &'a [u8],
    f: impl FnOnce(&mut Reader<'a>) -> Result<T, DecodeError>,
) -> Result<T, RecordError> {
    let mut r = Reader::new(bytes);
    let v = f(&mut r)?;
    r.finish()?;
    Ok(v)
}

fn key_len(what: &'static str, bytes: &[u8], expected: usize) -> Result<(), RecordError> {
    if bytes.len() == expected {
        Ok(())
    } else {
        Err(RecordError::KeyLength {
            what,
            expected,
            found: bytes.len(),
        })
    }
}

/// A block height (big-endian, so LMDB keeps the chain in order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlockHeight(pub u64);

impl TableKey for BlockHeight {
    type Bytes = [u8; 8];
    fn to_key(&self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
    fn from_key(bytes: &[u8]) -> Result<Self, RecordError> {
        key_len("block height", bytes, 8)?;
        Ok(BlockHeight(u64::from_be_bytes(
            bytes.try_into().expect("8 bytes"),
        )))
    }
}

/// `block_heights` key: a committed block's hash (value: its height).
impl TableKey for BlockHash {
    type Bytes = [u8; 32];
    fn to_key(&self) -> [u8; 32] {
        self.0
    }
    fn from_key(bytes: &[u8]) -> Result<Self, RecordError> {
        key_len("block hash", bytes, 32)?;
        Ok(BlockHash(bytes.try_into().expect("32 bytes")))
    }
}

impl TableValue for BlockHeight {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        out.extend_from_slice(&self.0.to_le_bytes());
        Ok(())
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_all(bytes, |r| r.u64()).map(BlockHeight)
    }
}

/// `own_block_votes` key: what this node signed at (height, round, step).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnBlockVoteKey {
    pub height: u64,
    pub round: u32,
    pub step: SignedStep,
}

impl TableKey for OwnBlockVoteKey {
    type Bytes = [u8; 13];
    fn to_key(&self) -> [u8; 13] {
        let mut k = [0u8; 13];
        k[..8].copy_from_slice(&self.height.to_be_bytes());
        k[8..12].copy_from_slice(&self.round.to_be_bytes());
        k[12] = self.step.code();
        k
    }
    fn from_key(bytes: &[u8]) -> Result<Self, RecordError> {
        key_len("own block vote key", bytes, 13)?;
        let step = SignedStep::from_code(bytes[12]).ok_or(DecodeError::UnknownTag {
            what: "signed step",
            tag: bytes[12],
        })?;
        Ok(OwnBlockVoteKey {
            height: u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
            round: u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes")),
            step,
        })
    }
}

impl OwnBlockVoteKey {
    pub fn of(v: &OwnBlockVote) -> Self {
        OwnBlockVoteKey {
            height: v.height,
            round: v.round,
            step: v.step,
        }
    }
    pub fn with(self, block: Option<BlockHash>) -> OwnBlockVote {
        OwnBlockVote {
            height: self.height,
            round: self.round,
            step: self.step,
            block,
        }
    }
}

/// The block (or nil) an own-vote record names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VotedBlock(pub Option<BlockHash>);

impl TableValue for VotedBlock {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        encode_opt_hash(out, &self.0);
        Ok(())
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_all(bytes, |r| decode_opt_hash(r).map(VotedBlock))
    }
}

/// `block_candidates` key: height ‖ block hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CandidateKey(pub u64, pub BlockHash);

impl TableKey for CandidateKey {
    type Bytes = [u8; 40];
    fn to_key(&self) -> [u8; 40] {
        let mut k = [0u8; 40];
        k[..8].copy_from_slice(&self.0.to_be_bytes());
        k[8..].copy_from_slice(&self.1 .0);
        k
    }
    fn from_key(bytes: &[u8]) -> Result<Self, RecordError> {
        key_len("candidate key", bytes, 40)?;
        Ok(CandidateKey(
            u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
            BlockHash(bytes[8..].try_into().expect("32 bytes")),
        ))
    }
}

impl TableValue for CommittedBlock {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.block.encode(out);
        self.cert.encode(out);
        Ok(())
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_all(bytes, |r| {
            Ok(CommittedBlock {
                block: Block::decode(r)?,
                cert: CommitCertificate::decode(r)?,
            })
        })
    }
}

impl TableValue for Candidate {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        if self.polka.len() > MAX_POLKA_VOTES {
            return Err(RecordError::OutOfBounds {
                what: "candidate prevotes",
                count: self.polka.len(),
                min: 0,
                max: MAX_POLKA_VOTES,
            });
        }
        self.block.encode(out);
        out.extend_from_slice(&(self.polka.len() as u32).to_le_bytes());
        for v in &self.polka {
            v.encode(out);
        }
        Ok(())
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_all(bytes, |r| {
            let block = Block::decode(r)?;
            let n = r.count(
                "candidate prevotes",
                MAX_POLKA_VOTES,
                BlockVote::MIN_ENCODED_LEN,
            )?;
            let mut polka = Vec::with_capacity(n);
            for _ in 0..n {
                polka.push(BlockVote::decode(r)?);
            }
            Ok(Candidate { block, polka })
        })
    }
}

impl TableValue for ForkEvidence {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.encode(out);
        Ok(())
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_all(bytes, ForkEvidence::decode)
    }
}

/// `block_evidence` key: height ‖ round ‖ kind ‖ offender.
impl TableKey for BlockEvidenceKey {
    type Bytes = [u8; 45];
    fn to_key(&self) -> [u8; 45] {
        let mut k = [0u8; 45];
        k[..8].copy_from_slice(&self.height.to_be_bytes());
        k[8..12].copy_from_slice(&self.round.to_be_bytes());
        k[12] = self.kind;
        k[13..].copy_from_slice(&self.signer.0);
        k
    }
    fn from_key(bytes: &[u8]) -> Result<Self, RecordError> {
        key_len("block evidence key", bytes, 45)?;
        if bytes[12] > 3 {
            return Err(DecodeError::UnknownTag {
                what: "block evidence kind",
                tag: bytes[12],
            }
            .into());
        }
        Ok(BlockEvidenceKey {
            height: u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
            round: u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes")),
            kind: bytes[12],
            signer: PublicKey(bytes[13..].try_into().expect("32 bytes")),
        })
    }
}

impl TableValue for BlockEvidence {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        if let BlockEvidence::ConflictingProposal { path, .. } = self {
            if path.len() > MAX_TX_PATH {
                return Err(RecordError::OutOfBounds {
                    what: "evidence merkle path",
                    count: path.len(),
                    min: 0,
                    max: MAX_TX_PATH,
                });
            }
        }
        self.encode(out);
        Ok(())
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_all(bytes, BlockEvidence::decode)
    }
}

impl TableValue for Contradiction {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.encode(out);
        Ok(())
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_all(bytes, Contradiction::decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::vote::{Slot, VoteKind};

    #[test]
    fn golden_block_keys() {
        assert_eq!(hex::encode(BlockHeight(258).to_key()), "0000000000000102");
        let k = OwnBlockVoteKey {
            height: 1,
            round: 2,
            step: SignedStep::Precommit,
        };
        assert_eq!(hex::encode(k.to_key()), "00000000000000010000000202");
        assert_eq!(OwnBlockVoteKey::from_key(&k.to_key()).unwrap(), k);
        assert!(OwnBlockVoteKey::from_key(&[0; 13][..12]).is_err());
        let mut bad = k.to_key();
        bad[12] = 9;
        assert!(OwnBlockVoteKey::from_key(&bad).is_err());
        assert_eq!(BlockHash([0xcd; 32]).to_key(), [0xcd; 32]);
        assert!(BlockHash::from_key(&[0; 31]).is_err());
        assert_eq!(
            hex::encode(BlockHeight(258).to_value().unwrap()),
            "0201000000000000"
        );
        assert!(BlockHeight::decode_value(&[0; 9]).is_err());
        let c = CandidateKey(3, BlockHash([0xab; 32]));
        assert_eq!(
            hex::encode(c.to_key()),
            format!("0000000000000003{}", "ab".repeat(32))
        );
    }

    #[test]
    fn golden_voted_block() {
        assert_eq!(hex::encode(VotedBlock(None).to_value().unwrap()), "00");
        assert_eq!(
            hex::encode(VotedBlock(Some(BlockHash([0x11; 32]))).to_value().unwrap()),
            format!("01{}", "11".repeat(32))
        );
        assert!(VotedBlock::decode_value(&[2]).is_err());
        assert!(VotedBlock::decode_value(&[0, 0]).is_err());
    }

    #[test]
    fn golden_committed_block() {
        let block = Block::new(
            7,
            1,
            1,
            BlockHash([0x22; 32]),
            1_000,
            PublicKey([0x33; 32]),
            vec![],
        );
        let cert = CommitCertificate {
            slot: Slot {
                chain_id: 7,
                epoch: 1,
                height: 1,
                round: 0,
            },
            block: block.hash(),
            precommits: vec![(PublicKey([0x44; 32]), [0x55; 64])],
        };
        let rec = CommittedBlock { block, cert };
        let bytes = rec.to_value().unwrap();
        let expect = concat!(
            "0100",             // version
            "07000000",         // chain
            "0100000000000000", // epoch
            "0100000000000000", // height
        );
        assert!(hex::encode(&bytes).starts_with(expect));
        // header 130 + count 4 + slot 24 + hash 32 + count 4 + one signer 96
        assert_eq!(bytes.len(), 130 + 4 + 24 + 32 + 4 + 96);
        assert_eq!(&bytes[130..134], &[0, 0, 0, 0]);
        assert_eq!(CommittedBlock::decode_value(&bytes).unwrap(), rec);
        for n in 0..bytes.len() {
            assert!(CommittedBlock::decode_value(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn candidate_roundtrip() {
        let key = crate::testkit::key_from_seed("cand", 0);
        let block = Block::new(7, 1, 2, BlockHash([1; 32]), 5, PublicKey([2; 32]), vec![]);
        let slot = Slot {
            chain_id: 7,
            epoch: 1,
            height: 2,
            round: 0,
        };
        let v = BlockVote::sign(slot, VoteKind::Prevote, Some(block.hash()), &key);
        let c = Candidate {
            block,
            polka: vec![v],
        };
        let bytes = c.to_value().unwrap();
        assert_eq!(bytes.len(), 130 + 4 + 4 + 24 + 1 + 33 + 32 + 64);
        assert_eq!(Candidate::decode_value(&bytes).unwrap(), c);
    }

    fn evidence_slot() -> Slot {
        Slot {
            chain_id: 7,
            epoch: 1,
            height: 2,
            round: 3,
        }
    }

    #[test]
    fn golden_contradiction() {
        use crate::blocks::evidence::Contradicted;
        use crate::protocol::types::{OutPoint, Txid};
        let c = Contradiction {
            height: 258,
            block: BlockHash([0x11; 32]),
            txid: Txid([0x22; 32]),
            what: Contradicted::FinalPayment(Txid([0x33; 32])),
        };
        let bytes = c.to_value().unwrap();
        assert_eq!(
            hex::encode(&bytes),
            format!(
                "0201000000000000{}{}01{}",
                "11".repeat(32),
                "22".repeat(32),
                "33".repeat(32)
            )
        );
        assert_eq!(Contradiction::decode_value(&bytes).unwrap(), c);
        let m = Contradiction {
            what: Contradicted::MissingInput(OutPoint {
                txid: Txid([0x44; 32]),
                vout: 3,
            }),
            ..c
        };
        let bytes = m.to_value().unwrap();
        assert_eq!(
            hex::encode(&bytes[72..]),
            format!("00{}03000000", "44".repeat(32))
        );
        assert_eq!(Contradiction::decode_value(&bytes).unwrap(), m);
        for n in 0..bytes.len() {
            assert!(Contradiction::decode_value(&bytes[..n]).is_err());
        }
        let mut bad = bytes.clone();
        bad[72] = 2;
        assert!(Contradiction::decode_value(&bad).is_err());
    }

    #[test]
    fn golden_block_evidence_key() {
        let k = BlockEvidenceKey {
            height: 2,
            round: 3,
            kind: 1,
            signer: PublicKey([0xee; 32]),
        };
        assert_eq!(
            hex::encode(k.to_key()),
            format!("00000000000000020000000301{}", "ee".repeat(32))
        );
        assert_eq!(BlockEvidenceKey::from_key(&k.to_key()).unwrap(), k);
        let mut bad = k.to_key();
        bad[12] = 4;
        assert!(BlockEvidenceKey::from_key(&bad).is_err());
        assert!(BlockEvidenceKey::from_key(&bad[..44]).is_err());
    }

    #[test]
    fn golden_double_vote_evidence() {
        let vote = |block, sig| BlockVote {
            slot: evidence_slot(),
            kind: VoteKind::Precommit,
            block,
            voter: PublicKey([0x44; 32]),
            signature: [sig; 64],
        };
        let e = BlockEvidence::DoubleVote {
            first: vote(None, 0x55),
            second: vote(Some(BlockHash([0x66; 32])), 0x77),
        };
        let slot = concat!(
            "07000000",         // chain
            "0100000000000000", // epoch
            "0200000000000000", // height
            "03000000",         // round
        );
        let expect = format!(
            "01{slot}0200{v}{s1}{slot}0201{h}{v}{s2}",
            v = "44".repeat(32),
            s1 = "55".repeat(64),
            h = "66".repeat(32),
            s2 = "77".repeat(64),
        );
        let bytes = e.to_value().unwrap();
        assert_eq!(hex::encode(&bytes), expect);
        assert_eq!(BlockEvidence::decode_value(&bytes).unwrap(), e);
        assert_eq!(
            e.key(),
            BlockEvidenceKey {
                height: 2,
                round: 3,
                kind: 2,
                signer: PublicKey([0x44; 32])
            }
        );
        for n in 0..bytes.len() {
            assert!(BlockEvidence::decode_value(&bytes[..n]).is_err());
        }
        let mut bad = bytes.clone();
        bad[0] = 2;
        assert!(BlockEvidence::decode_value(&bad).is_err());
    }

    #[test]
    fn golden_proposal_evidence() {
        use crate::blocks::evidence::SignedProposal;
        let sp = |block, vr| SignedProposal {
            slot: evidence_slot(),
            valid_round: vr,
            block: BlockHash(block),
            proposer: PublicKey([0x33; 32]),
            signature: [0x99; 64],
        };
        let e = BlockEvidence::DoubleProposal {
            first: sp([0x11; 32], None),
            second: sp([0x22; 32], Some(1)),
        };
        let bytes = e.to_value().unwrap();
        let expect = format!(
            "00{slot}ffffffff{b1}{p}{s}{slot}01000000{b2}{p}{s}",
            slot = "070000000100000000000000020000000000000003000000",
            b1 = "11".repeat(32),
            b2 = "22".repeat(32),
            p = "33".repeat(32),
            s = "99".repeat(64),
        );
        assert_eq!(hex::encode(&bytes), expect);
        assert_eq!(bytes.len(), 1 + 2 * SignedProposal::ENCODED_LEN);
        assert_eq!(BlockEvidence::decode_value(&bytes).unwrap(), e);

        let tx = crate::protocol::types::Transaction {
            version: 1,
            chain_id: 7,
            inputs: vec![],
            outputs: vec![],
            lock_time: 0,
        };
        let block = Block::new(
            7,
            1,
            2,
            BlockHash([1; 32]),
            5,
            PublicKey([2; 32]),
            vec![tx.clone()],
        );
        let c = BlockEvidence::ConflictingProposal {
            proposal: sp(block.hash().0, None),
            header: block.header,
            tx,
            index: 0,
            path: vec![],
            final_tx: crate::protocol::types::Txid([0xab; 32]),
        };
        let bytes = c.to_value().unwrap();
        // tag, proposal, header 130, index 4, path count 1, tx 22, txid 32
        assert_eq!(
            bytes.len(),
            1 + SignedProposal::ENCODED_LEN + 130 + 4 + 1 + 22 + 32
        );
        assert_eq!(bytes[0], 3);
        assert_eq!(&bytes[bytes.len() - 32..], &[0xab; 32]);
        assert_eq!(BlockEvidence::decode_value(&bytes).unwrap(), c);
        for n in 0..bytes.len() {
            assert!(BlockEvidence::decode_value(&bytes[..n]).is_err());
        }
        let mut long = c.clone();
        if let BlockEvidence::ConflictingProposal { path, .. } = &mut long {
            *path = vec![[0; 32]; MAX_TX_PATH + 1];
        }
        assert!(long.to_value().is_err());
    }
}
