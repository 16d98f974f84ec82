//! The bytes of one round's [`Write`]s: the payload of a write-ahead log
//! record ([`super::write_log`]).
//!
//! Layout (integers little-endian): count(u32) ‖ count × (tag(u8) ‖ body).
//! Values are the LMDB tables' own encodings ([`super::records`],
//! [`super::block_records`]), each as a u32-length-prefixed byte string
//! (`var`); keys are fixed-size:
//!
//! | tag | write | body |
//! |----:|-------|------|
//! | 0 | `PutUtxo` | outpoint key(36) ‖ var(utxo entry) |
//! | 1 | `PutTransaction` | txid(32) ‖ var(transaction) |
//! | 2 | `PutProof` | var(proof) |
//! | 3 | `AppendOwnVotes` | var(vote batch) |
//! | 4 | `AppendFinality` | txid(32) |
//! | 5 | `PutStuck` | txid(32) |
//! | 6 | `PutEvidence` | var(equivocation) |
//! | 7 | `PutApprovalEvidence` | var(conflicting approvals) |
//! | 8 | `PutBlock` | var(committed block) |
//! | 9 | `AppendOwnBlockVote` | own-block-vote key(13) ‖ var(voted block) |
//! | 10 | `PutCandidate` | var(candidate) |
//! | 11 | `PutForkEvidence` | var(fork evidence) |
//! | 12 | `PutBlockEvidence` | var(block evidence) |
//! | 13 | `PutBlockStop` | var(contradiction) |
//! | 14 | `PruneBlockRecords` | below(u64) |
//! | 15 | `ClearBlockStop` | none |
//! | 16 | `PutConfirmedThrough` | height(u64) |
//!
//! The encoder refuses what the LMDB store would refuse to apply (values
//! outside their decoders' caps, a transaction filed under another txid),
//! so a round that reaches the log can always be applied at replay. The
//! decoder is bounded by its input: a count or a length larger than the
//! bytes left is an error before anything is allocated. A golden test
//! freezes the layout; changing it is a change of
//! [`super::write_log::LOG_FORMAT_VERSION`].

use super::records::{check_txid, RecordError, TableKey, TableValue};
use super::Write;
use crate::codec::{put_var_bytes, DecodeError, Reader};
use crate::protocol::types::{OutPoint, Txid};
use timecoin_core::storage::block_records::{OwnBlockVoteKey, VotedBlock};

const TAG_PUT_UTXO: u8 = 0;
const TAG_PUT_TRANSACTION: u8 = 1;
const TAG_PUT_PROOF: u8 = 2;
const TAG_APPEND_OWN_VOTES: u8 = 3;
const TAG_APPEND_FINALITY: u8 = 4;
const TAG_PUT_STUCK: u8 = 5;
const TAG_PUT_EVIDENCE: u8 = 6;
const TAG_PUT_APPROVAL_EVIDENCE: u8 = 7;
const TAG_PUT_BLOCK: u8 = 8;
const TAG_APPEND_OWN_BLOCK_VOTE: u8 = 9;
const TAG_PUT_CANDIDATE: u8 = 10;
const TAG_PUT_FORK_EVIDENCE: u8 = 11;
const TAG_PUT_BLOCK_EVIDENCE: u8 = 12;
const TAG_PUT_BLOCK_STOP: u8 = 13;
const TAG_PRUNE_BLOCK_RECORDS: u8 = 14;
const TAG_CLEAR_BLOCK_STOP: u8 = 15;
/// Added after the log's first format: a build that predates it refuses a
/// log holding one (an unknown tag) instead of misreading it.
const TAG_PUT_CONFIRMED_THROUGH: u8 = 16;

/// Largest value inside a round payload; the record limit bounds it anyway.
const MAX_VALUE_BYTES: usize = super::write_log::MAX_RECORD_BYTES;

fn put_value<V: TableValue>(
    out: &mut Vec<u8>,
    v: &V,
    scratch: &mut Vec<u8>,
) -> Result<(), RecordError> {
    scratch.clear();
    v.encode_value(scratch)?;
    put_var_bytes(out, scratch);
    Ok(())
}

/// Appends the encoding of `writes` to `out`.
pub fn encode_writes(writes: &[Write], out: &mut Vec<u8>) -> Result<(), RecordError> {
    let count = u32::try_from(writes.len()).map_err(|_| RecordError::OutOfBounds {
        what: "writes in a round",
        count: writes.len(),
        min: 0,
        max: u32::MAX as usize,
    })?;
    out.extend_from_slice(&count.to_le_bytes());
    let mut s = Vec::new();
    for w in writes {
        match w {
            Write::PutUtxo(op, e) => {
                out.push(TAG_PUT_UTXO);
                out.extend_from_slice(&op.to_key());
                put_value(out, e, &mut s)?;
            }
            Write::PutTransaction(txid, tx) => {
                check_txid(txid, &tx.txid())?;
                out.push(TAG_PUT_TRANSACTION);
                out.extend_from_slice(&txid.0);
                put_value(out, tx, &mut s)?;
            }
            Write::PutProof(p) => {
                out.push(TAG_PUT_PROOF);
                put_value(out, p, &mut s)?;
            }
            Write::AppendOwnVotes(b) => {
                out.push(TAG_APPEND_OWN_VOTES);
                put_value(out, b, &mut s)?;
            }
            Write::AppendFinality(t) => {
                out.push(TAG_APPEND_FINALITY);
                out.extend_from_slice(&t.0);
            }
            Write::PutStuck(t) => {
                out.push(TAG_PUT_STUCK);
                out.extend_from_slice(&t.0);
            }
            Write::PutEvidence(e) => {
                out.push(TAG_PUT_EVIDENCE);
                put_value(out, e, &mut s)?;
            }
            Write::PutApprovalEvidence(e) => {
                out.push(TAG_PUT_APPROVAL_EVIDENCE);
                put_value(out, e.as_ref(), &mut s)?;
            }
            Write::PutBlock(b) => {
                out.push(TAG_PUT_BLOCK);
                put_value(out, b.as_ref(), &mut s)?;
            }
            Write::AppendOwnBlockVote(v) => {
                out.push(TAG_APPEND_OWN_BLOCK_VOTE);
                out.extend_from_slice(&OwnBlockVoteKey::of(v).to_key());
                put_value(out, &VotedBlock(v.block), &mut s)?;
            }
            Write::PutCandidate(c) => {
                out.push(TAG_PUT_CANDIDATE);
                put_value(out, c.as_ref(), &mut s)?;
            }
            Write::PutForkEvidence(f) => {
                out.push(TAG_PUT_FORK_EVIDENCE);
                put_value(out, f.as_ref(), &mut s)?;
            }
            Write::PutBlockEvidence(e) => {
                out.push(TAG_PUT_BLOCK_EVIDENCE);
                put_value(out, e.as_ref(), &mut s)?;
            }
            Write::PutBlockStop(c) => {
                out.push(TAG_PUT_BLOCK_STOP);
                put_value(out, c, &mut s)?;
            }
            Write::PruneBlockRecords { below } => {
                out.push(TAG_PRUNE_BLOCK_RECORDS);
                out.extend_from_slice(&below.to_le_bytes());
            }
            Write::ClearBlockStop => out.push(TAG_CLEAR_BLOCK_STOP),
            Write::PutConfirmedThrough(h) => {
                out.push(TAG_PUT_CONFIRMED_THROUGH);
                out.extend_from_slice(&h.to_le_bytes());
            }
        }
    }
    Ok(())
}

fn value<V: TableValue>(r: &mut Reader<'_>, what: &'static str) -> Result<V, RecordError> {
    V::decode_value(r.var_bytes(what, MAX_VALUE_BYTES)?)
}

/// Decodes a whole round payload; trailing bytes are an error.
pub fn decode_writes(bytes: &[u8]) -> Result<Vec<Write>, RecordError> {
    let mut r = Reader::new(bytes);
    // Every write takes at least its tag byte.
    let n = r.count("writes in a round", bytes.len(), 1)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let w = match r.u8()? {
            TAG_PUT_UTXO => {
                let op = OutPoint::from_key(r.bytes(36)?)?;
                Write::PutUtxo(op, value(&mut r, "utxo entry")?)
            }
            TAG_PUT_TRANSACTION => {
                let txid = Txid(r.array()?);
                let tx: crate::protocol::types::Transaction = value(&mut r, "transaction")?;
                check_txid(&txid, &tx.txid())?;
                Write::PutTransaction(txid, tx)
            }
            TAG_PUT_PROOF => Write::PutProof(value(&mut r, "proof")?),
            TAG_APPEND_OWN_VOTES => Write::AppendOwnVotes(value(&mut r, "vote batch")?),
            TAG_APPEND_FINALITY => Write::AppendFinality(Txid(r.array()?)),
            TAG_PUT_STUCK => Write::PutStuck(Txid(r.array()?)),
            TAG_PUT_EVIDENCE => Write::PutEvidence(value(&mut r, "equivocation")?),
            TAG_PUT_APPROVAL_EVIDENCE => {
                Write::PutApprovalEvidence(Box::new(value(&mut r, "conflicting approvals")?))
            }
            TAG_PUT_BLOCK => Write::PutBlock(Box::new(value(&mut r, "committed block")?)),
            TAG_APPEND_OWN_BLOCK_VOTE => {
                let key = OwnBlockVoteKey::from_key(r.bytes(13)?)?;
                let VotedBlock(block) = value(&mut r, "voted block")?;
                Write::AppendOwnBlockVote(key.with(block))
            }
            TAG_PUT_CANDIDATE => Write::PutCandidate(Box::new(value(&mut r, "candidate")?)),
            TAG_PUT_FORK_EVIDENCE => {
                Write::PutForkEvidence(Box::new(value(&mut r, "fork evidence")?))
            }
            TAG_PUT_BLOCK_EVIDENCE => {
                Write::PutBlockEvidence(Box::new(value(&mut r, "block evidence")?))
            }
            TAG_PUT_BLOCK_STOP => Write::PutBlockStop(value(&mut r, "contradiction")?),
            TAG_PRUNE_BLOCK_RECORDS => Write::PruneBlockRecords { below: r.u64()? },
            TAG_CLEAR_BLOCK_STOP => Write::ClearBlockStop,
            TAG_PUT_CONFIRMED_THROUGH => Write::PutConfirmedThrough(r.u64()?),
            tag => {
                return Err(RecordError::Decode(DecodeError::UnknownTag {
                    what: "write",
                    tag,
                }))
            }
        };
        out.push(w);
    }
    r.finish()?;
    Ok(out)
}
