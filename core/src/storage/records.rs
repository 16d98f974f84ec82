//! On-disk record formats of the LMDB tables: the bytes of every key and value.
//!
//! Each key type says how its bytes sort ([`TableKey`]); each value type has
//! an explicit, bounded encoding ([`TableValue`]) decoded with
//! [`crate::codec::Reader`], so a damaged database yields a [`RecordError`], never
//! a panic or a huge allocation. Golden-bytes tests freeze every layout: a
//! change here is a change of [`FORMAT_VERSION`] and needs a migration.
//!
//! This module must never depend on a serde library's defaults, and must not
//! write a value that its own decoder would refuse (encoders check the same
//! caps the decoders enforce).
//!
//! Layouts (integers little-endian unless marked BE):
//! - `meta` values: `u32`, except `applied_log_seq`: u64 ([`AppliedSeq`]).
//! - `utxos` key: [`OutPoint::key_bytes`] = txid(32) ‖ vout(u32 BE).
//!   Value: amount(u64) ‖ address(20) ‖ state tag(u8) ‖ state fields, where
//!   tag 0 Unspent: none; 1 Locked: txid(32); 2 SpentPending: txid(32) ‖
//!   weight(u64); 3 SpentFinalized: txid(32); 4 Confirmed: txid(32) ‖ height(u64).
//! - `transactions` key: txid(32); value: [`Transaction::encode`].
//! - `proofs` key: txid(32); value: [`TimeProof::encode`].
//! - `own_votes` key: sequence(u64 BE); value: [`VoteBatch::encode`].
//! - `address_utxos` key: [`AddressUtxoKey`] = address(20) ‖ txid(32) ‖
//!   vout(u32 BE); value: empty. One record per output that is not spent
//!   for good ([`UtxoState::is_spent_for_good`]); since format version 2.

use crate::codec::{DecodeError, Reader};

use crate::protocol::evidence::{ConflictingApprovals, Equivocation};
use crate::protocol::timeproof::{TimeProof, MAX_PROOF_VOTES};
use crate::protocol::types::{
    Address, OutPoint, PublicKey, Transaction, TxOutput, Txid, MAX_TX_INPUTS, MAX_TX_OUTPUTS,
};
use crate::protocol::utxo::{UtxoEntry, UtxoState};
use crate::protocol::vote::{VoteBatch, MAX_MERKLE_DEPTH, MAX_VOTE_ITEMS};

/// Version of the database layout this build reads and writes.
///
/// 2: the `address_utxos` index. A version-1 database is migrated at open
/// (the index is built from `utxos` in the same transaction that writes the
/// new version), and a build that reads only version 1 refuses it: such a
/// build would change `utxos` without maintaining the index.
///
/// 3: the database may lag the write-ahead log (`wal/` beside `db/`), and
/// `meta` holds `applied_log_seq`, the last log record applied. No table
/// changes (a version-2 database is upgraded by writing the version), but a
/// build that knows nothing of the log must refuse it: it would start
/// without the log's records, votes already sent among them.
pub const FORMAT_VERSION: u32 = 3;

/// The oldest database layout this build opens (and migrates).
pub const MIN_FORMAT_VERSION: u32 = 1;

/// Why a record could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("{what} key is {found} bytes, expected {expected}")]
    KeyLength {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("{what}: {count} is outside the stored format's range {min}..={max}")]
    OutOfBounds {
        what: &'static str,
        count: usize,
        min: usize,
        max: usize,
    },
    #[error("record stored under txid {key} is for txid {found}")]
    TxidMismatch { key: Txid, found: Txid },
}

/// A table key. Its bytes sort (lexicographically, as LMDB compares them) in
/// the order the table is meant to be walked.
pub trait TableKey: Sized {
    type Bytes: AsRef<[u8]>;
    fn to_key(&self) -> Self::Bytes;
    fn from_key(bytes: &[u8]) -> Result<Self, RecordError>;
}

/// A table value with an explicit, bounded encoding.
pub trait TableValue: Sized {
    /// Appends the record; fails if the value is outside what
    /// [`TableValue::decode_value`] accepts, so nothing unreadable is stored.
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), RecordError>;
    /// Decodes a whole record; trailing bytes are an error.
    fn decode_value(bytes: &[u8]) -> Result<Self, RecordError>;

    fn to_value(&self) -> Result<Vec<u8>, RecordError> {
        let mut out = Vec::new();
        self.encode_value(&mut out)?;
        Ok(out)
    }
}

/// Runs `f` over the whole of `bytes`, refusing trailing bytes.
fn decode_all<'a, T>(
    bytes: &'a [u8],
    f: impl FnOnce(&mut Reader<'a>) -> Result<T, DecodeError>,
) -> Result<T, RecordError> {
    let mut r = Reader::new(bytes);
    let v = f(&mut r)?;
    r.finish()?;
    Ok(v)
}

fn fixed_key<const N: usize>(what: &'static str, bytes: &[u8]) -> Result<[u8; N], RecordError> {
    bytes.try_into().map_err(|_| RecordError::KeyLength {
        what,
        expected: N,
        found: bytes.len(),
    })
}

fn check_bounds(
    what: &'static str,
    count: usize,
    min: usize,
    max: usize,
) -> Result<(), RecordError> {
    if (min..=max).contains(&count) {
        Ok(())
    } else {
        Err(RecordError::OutOfBounds {
            what,
            count,
            min,
            max,
        })
    }
}

/// Fails unless a record stored under `key` is about `found`.
pub fn check_txid(key: &Txid, found: &Txid) -> Result<(), RecordError> {
    if key == found {
        Ok(())
    } else {
        Err(RecordError::TxidMismatch {
            key: *key,
            found: *found,
        })
    }
}

// ---- keys ----

/// Entries of the `meta` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaKey {
    FormatVersion,
    ChainId,
    /// The sequence number of the last write-ahead log record applied (a
    /// [`AppliedSeq`] value, not a `u32`); absent: none yet.
    AppliedLogSeq,
    /// The height of the last [`crate::storage::Write::PutConfirmedThrough`]
    /// (an [`AppliedSeq`]-encoded u64); absent: every stored block is.
    ConfirmedThrough,
}

impl MetaKey {
    pub fn name(self) -> &'static str {
        match self {
            MetaKey::FormatVersion => "format_version",
            MetaKey::ChainId => "chain_id",
            MetaKey::AppliedLogSeq => "applied_log_seq",
            MetaKey::ConfirmedThrough => "confirmed_through",
        }
    }
}

impl TableKey for MetaKey {
    type Bytes = &'static [u8];
    fn to_key(&self) -> &'static [u8] {
        self.name().as_bytes()
    }
    fn from_key(bytes: &[u8]) -> Result<Self, RecordError> {
        [
            MetaKey::FormatVersion,
            MetaKey::ChainId,
            MetaKey::AppliedLogSeq,
            MetaKey::ConfirmedThrough,
        ]
        .into_iter()
        .find(|k| k.name().as_bytes() == bytes)
        .ok_or(RecordError::Decode(DecodeError::Invalid {
            what: "meta key",
        }))
    }
}

impl TableKey for OutPoint {
    type Bytes = [u8; 36];
    fn to_key(&self) -> [u8; 36] {
        self.key_bytes()
    }
    fn from_key(bytes: &[u8]) -> Result<Self, RecordError> {
        let k: [u8; 36] = fixed_key("outpoint", bytes)?;
        let mut txid = [0u8; 32];
        txid.copy_from_slice(&k[..32]);
        let mut vout = [0u8; 4];
        vout.copy_from_slice(&k[32..]);
        Ok(OutPoint {
            txid: Txid(txid),
            vout: u32::from_be_bytes(vout),
        })
    }
}

impl TableKey for Txid {
    type Bytes = [u8; 32];
    fn to_key(&self) -> [u8; 32] {
        self.0
    }
    fn from_key(bytes: &[u8]) -> Result<Self, RecordError> {
        Ok(Txid(fixed_key("txid", bytes)?))
    }
}

/// Position in the own-vote log. Big-endian so byte order is append order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VoteSeq(pub u64);

impl TableKey for VoteSeq {
    type Bytes = [u8; 8];
    fn to_key(&self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
    fn from_key(bytes: &[u8]) -> Result<Self, RecordError> {
        Ok(VoteSeq(u64::from_be_bytes(fixed_key(
            "vote sequence",
            bytes,
        )?)))
    }
}

/// Position in the finality log (big-endian, so LMDB keeps the log in order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogSeq(pub u64);

impl TableKey for LogSeq {
    type Bytes = [u8; 8];
    fn to_key(&self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
    fn from_key(bytes: &[u8]) -> Result<Self, RecordError> {
        Ok(LogSeq(u64::from_be_bytes(fixed_key(
            "finality log sequence",
            bytes,
        )?)))
    }
}

/// `address_utxos` key: the address an output pays, then its outpoint in
/// [`OutPoint::key_bytes`] order, so one address's outputs are one
/// contiguous range sorted by outpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AddressUtxoKey(pub Address, pub OutPoint);

impl AddressUtxoKey {
    pub const LEN: usize = 20 + 36;

    /// The first key of `address`'s range (the range is every key that
    /// starts with the address's 20 bytes).
    pub fn first_of(address: Address) -> AddressUtxoKey {
        AddressUtxoKey(
            address,
            OutPoint {
                txid: Txid([0; 32]),
                vout: 0,
            },
        )
    }
}

impl TableKey for AddressUtxoKey {
    type Bytes = [u8; AddressUtxoKey::LEN];
    fn to_key(&self) -> [u8; AddressUtxoKey::LEN] {
        let mut k = [0u8; AddressUtxoKey::LEN];
        k[..20].copy_from_slice(&self.0 .0);
        k[20..].copy_from_slice(&self.1.key_bytes());
        k
    }
    fn from_key(bytes: &[u8]) -> Result<Self, RecordError> {
        let k: [u8; AddressUtxoKey::LEN] = fixed_key("address utxo", bytes)?;
        let mut a = [0u8; 20];
        a.copy_from_slice(&k[..20]);
        Ok(AddressUtxoKey(Address(a), OutPoint::from_key(&k[20..])?))
    }
}

// ---- values ----

/// An empty value (index tables, whose key is the whole record).
impl TableValue for () {
    fn encode_value(&self, _out: &mut Vec<u8>) -> Result<(), RecordError> {
        Ok(())
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_all(bytes, |_| Ok(()))
    }
}

impl TableValue for u32 {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        out.extend_from_slice(&self.to_le_bytes());
        Ok(())
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_all(bytes, |r| r.u32())
    }
}

/// `meta` value of [`MetaKey::AppliedLogSeq`]: a log sequence number (u64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AppliedSeq(pub u64);

impl TableValue for AppliedSeq {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        out.extend_from_slice(&self.0.to_le_bytes());
        Ok(())
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_all(bytes, |r| r.u64()).map(AppliedSeq)
    }
}

const STATE_UNSPENT: u8 = 0;
const STATE_LOCKED: u8 = 1;
const STATE_SPENT_PENDING: u8 = 2;
const STATE_SPENT_FINALIZED: u8 = 3;
const STATE_CONFIRMED: u8 = 4;

/// Largest `utxos` value (Confirmed / SpentPending).
pub const UTXO_RECORD_MAX_LEN: usize = TxOutput::ENCODED_LEN + 1 + 32 + 8;

impl TableValue for Txid {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        out.extend_from_slice(&self.0);
        Ok(())
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_all(bytes, |r| Ok(Txid(r.array()?)))
    }
}

/// `evidence` key: voter ‖ txid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvidenceKey(pub PublicKey, pub Txid);

impl TableKey for EvidenceKey {
    type Bytes = [u8; 64];
    fn to_key(&self) -> [u8; 64] {
        let mut k = [0u8; 64];
        k[..32].copy_from_slice(&self.0 .0);
        k[32..].copy_from_slice(&self.1 .0);
        k
    }
    fn from_key(bytes: &[u8]) -> Result<Self, RecordError> {
        let k: [u8; 64] = fixed_key("evidence key", bytes)?;
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        a.copy_from_slice(&k[..32]);
        b.copy_from_slice(&k[32..]);
        Ok(EvidenceKey(PublicKey(a), Txid(b)))
    }
}

impl TableValue for Equivocation {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.encode(out);
        Ok(())
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_all(bytes, Equivocation::decode)
    }
}

/// `approval_evidence` key: voter ‖ [`OutPoint::key_bytes`] (68 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApprovalEvidenceKey(pub PublicKey, pub OutPoint);

impl TableKey for ApprovalEvidenceKey {
    type Bytes = [u8; 68];
    fn to_key(&self) -> [u8; 68] {
        let mut k = [0u8; 68];
        k[..32].copy_from_slice(&self.0 .0);
        k[32..].copy_from_slice(&self.1.key_bytes());
        k
    }
    fn from_key(bytes: &[u8]) -> Result<Self, RecordError> {
        let k: [u8; 68] = fixed_key("approval evidence key", bytes)?;
        let mut voter = [0u8; 32];
        let mut txid = [0u8; 32];
        let mut vout = [0u8; 4];
        voter.copy_from_slice(&k[..32]);
        txid.copy_from_slice(&k[32..64]);
        vout.copy_from_slice(&k[64..]);
        Ok(ApprovalEvidenceKey(
            PublicKey(voter),
            OutPoint {
                txid: Txid(txid),
                vout: u32::from_be_bytes(vout),
            },
        ))
    }
}

impl TableValue for ConflictingApprovals {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        for tx in [&self.first_tx, &self.second_tx] {
            check_bounds("transaction inputs", tx.inputs.len(), 0, MAX_TX_INPUTS)?;
            check_bounds("transaction outputs", tx.outputs.len(), 0, MAX_TX_OUTPUTS)?;
        }
        for c in [&self.first, &self.second] {
            check_bounds("merkle path", c.path.len(), 0, MAX_MERKLE_DEPTH)?;
        }
        self.encode(out);
        Ok(())
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_all(bytes, ConflictingApprovals::decode)
    }
}

impl TableValue for UtxoEntry {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.output.encode(out);
        match self.state {
            UtxoState::Unspent => out.push(STATE_UNSPENT),
            UtxoState::Locked { txid } => {
                out.push(STATE_LOCKED);
                out.extend_from_slice(&txid.0);
            }
            UtxoState::SpentPending { txid, weight } => {
                out.push(STATE_SPENT_PENDING);
                out.extend_from_slice(&txid.0);
                out.extend_from_slice(&weight.to_le_bytes());
            }
            UtxoState::SpentFinalized { txid } => {
                out.push(STATE_SPENT_FINALIZED);
                out.extend_from_slice(&txid.0);
            }
            UtxoState::Confirmed { txid, height } => {
                out.push(STATE_CONFIRMED);
                out.extend_from_slice(&txid.0);
                out.extend_from_slice(&height.to_le_bytes());
            }
        }
        Ok(())
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_all(bytes, |r| {
            let output = TxOutput::decode(r)?;
            let state = match r.u8()? {
                STATE_UNSPENT => UtxoState::Unspent,
                STATE_LOCKED => UtxoState::Locked {
                    txid: Txid(r.array()?),
                },
                STATE_SPENT_PENDING => UtxoState::SpentPending {
                    txid: Txid(r.array()?),
                    weight: r.u64()?,
                },
                STATE_SPENT_FINALIZED => UtxoState::SpentFinalized {
                    txid: Txid(r.array()?),
                },
                STATE_CONFIRMED => UtxoState::Confirmed {
                    txid: Txid(r.array()?),
                    height: r.u64()?,
                },
                tag => {
                    return Err(DecodeError::UnknownTag {
                        what: "utxo state",
                        tag,
                    })
                }
            };
            Ok(UtxoEntry { output, state })
        })
    }
}

impl TableValue for Transaction {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        check_bounds("transaction inputs", self.inputs.len(), 0, MAX_TX_INPUTS)?;
        check_bounds("transaction outputs", self.outputs.len(), 0, MAX_TX_OUTPUTS)?;
        self.encode(out);
        Ok(())
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_all(bytes, Transaction::decode)
    }
}

impl TableValue for TimeProof {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        check_bounds("proof votes", self.votes.len(), 0, MAX_PROOF_VOTES)?;
        for v in &self.votes {
            check_bounds("merkle path", v.path.len(), 0, MAX_MERKLE_DEPTH)?;
        }
        self.encode(out);
        Ok(())
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_all(bytes, TimeProof::decode)
    }
}

impl TableValue for VoteBatch {
    fn encode_value(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        check_bounds("vote items", self.items.len(), 1, MAX_VOTE_ITEMS)?;
        self.encode(out);
        Ok(())
    }
    fn decode_value(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_all(bytes, VoteBatch::decode)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::types::{Address, PublicKey, TxInput};
    use crate::protocol::validation::RejectCode;
    use crate::protocol::vote::{Decision, VoteCert, VoteItem};

    fn hex_of<V: TableValue>(v: &V) -> String {
        hex::encode(v.to_value().unwrap())
    }

    fn utxo(state: UtxoState) -> UtxoEntry {
        UtxoEntry {
            output: TxOutput {
                amount: 1_000,
                address: Address([0xaa; 20]),
            },
            state,
        }
    }

    const OUTPUT_HEX: &str = concat!(
        "e803000000000000",                         // amount 1000
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", // address
    );
    const TXID_11: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn golden_utxo_records() {
        let t = Txid([0x11; 32]);
        let cases = [
            (UtxoState::Unspent, "00".to_string()),
            (UtxoState::Locked { txid: t }, format!("01{TXID_11}")),
            (
                UtxoState::SpentPending { txid: t, weight: 5 },
                format!("02{TXID_11}0500000000000000"),
            ),
            (
                UtxoState::SpentFinalized { txid: t },
                format!("03{TXID_11}"),
            ),
            (
                UtxoState::Confirmed {
                    txid: t,
                    height: 0x0102,
                },
                format!("04{TXID_11}0201000000000000"),
            ),
        ];
        for (state, tail) in cases {
            let e = utxo(state);
            assert_eq!(hex_of(&e), format!("{OUTPUT_HEX}{tail}"), "{state:?}");
            assert!(e.to_value().unwrap().len() <= UTXO_RECORD_MAX_LEN);
        }
    }

    #[test]
    fn golden_keys_and_meta() {
        let op = OutPoint {
            txid: Txid([0x11; 32]),
            vout: 0x0102,
        };
        assert_eq!(hex::encode(op.to_key()), format!("{TXID_11}00000102"));
        assert_eq!(hex::encode(Txid([0x11; 32]).to_key()), TXID_11);
        assert_eq!(hex::encode(VoteSeq(0x0102).to_key()), "0000000000000102");
        assert_eq!(hex::encode(LogSeq(0x0102).to_key()), "0000000000000102");
        assert_eq!(hex_of(&Txid([0x11; 32])), TXID_11);
        assert_eq!(MetaKey::FormatVersion.to_key(), b"format_version");
        assert_eq!(MetaKey::ChainId.to_key(), b"chain_id");
        assert_eq!(MetaKey::AppliedLogSeq.to_key(), b"applied_log_seq");
        assert_eq!(hex_of(&FORMAT_VERSION), "03000000");
        assert_eq!(hex_of(&AppliedSeq(0x0102)), "0201000000000000");
        assert_eq!(hex_of(&0x0a0b0c0du32), "0d0c0b0a");
    }

    #[test]
    fn golden_address_utxo_key() {
        let op = OutPoint {
            txid: Txid([0x11; 32]),
            vout: 0x0102,
        };
        let k = AddressUtxoKey(Address([0xaa; 20]), op);
        assert_eq!(
            hex::encode(k.to_key()),
            format!("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa{TXID_11}00000102")
        );
        assert_eq!(AddressUtxoKey::from_key(&k.to_key()), Ok(k));
        assert!(AddressUtxoKey::from_key(&k.to_key()[1..]).is_err());
        assert_eq!(hex_of(&()), "");
        assert!(<()>::decode_value(&[0]).is_err());
        // Key order is (address, outpoint) order.
        let later = AddressUtxoKey(Address([0xaa; 20]), OutPoint { vout: 0x0200, ..op });
        assert!(k.to_key() < later.to_key() && k < later);
        assert!(AddressUtxoKey::first_of(Address([0xaa; 20])).to_key() < k.to_key());
    }

    fn golden_tx() -> Transaction {
        Transaction {
            version: 1,
            chain_id: 7,
            inputs: vec![TxInput {
                prev: OutPoint {
                    txid: Txid([0x11; 32]),
                    vout: 2,
                },
                public_key: PublicKey([0x22; 32]),
                signature: [0x33; 64],
            }],
            outputs: vec![TxOutput {
                amount: 1_000,
                address: Address([0xaa; 20]),
            }],
            lock_time: 9,
        }
    }

    #[test]
    fn golden_transaction_record() {
        let expected = [
            "0100",     // version
            "07000000", // chain id
            "01000000", // one input
            TXID_11,    // prev txid
            "02000000", // prev vout
            &"22".repeat(32),
            &"33".repeat(64),
            "01000000", // one output
            OUTPUT_HEX,
            "0900000000000000", // lock time
        ]
        .concat();
        assert_eq!(hex_of(&golden_tx()), expected);
    }

    #[test]
    fn golden_vote_batch_record() {
        let b = VoteBatch {
            chain_id: 7,
            epoch: 3,
            voter: PublicKey([0x44; 32]),
            items: vec![
                VoteItem {
                    txid: Txid([0x11; 32]),
                    decision: Decision::Approve,
                },
                VoteItem {
                    txid: Txid([0x55; 32]),
                    decision: Decision::Reject(RejectCode::InputLocked),
                },
            ],
            signature: [0x66; 64],
        };
        let expected = [
            "07000000",         // chain id
            "0300000000000000", // epoch
            &"44".repeat(32),   // voter
            "02000000",         // two items
            TXID_11,
            "000000", // approve
            &"55".repeat(32),
            "010700", // reject, InputLocked = 7
            &"66".repeat(64),
        ]
        .concat();
        assert_eq!(hex_of(&b), expected);
    }

    #[test]
    fn golden_proof_record() {
        let p = TimeProof {
            chain_id: 7,
            txid: Txid([0x11; 32]),
            votes: vec![VoteCert {
                voter: PublicKey([0x44; 32]),
                epoch: 3,
                decision: Decision::Approve,
                index: 1,
                leaf_count: 2,
                path: vec![[0x77; 32]],
                signature: [0x66; 64],
            }],
        };
        let expected = [
            "07000000", // chain id
            TXID_11,
            "01000000",         // one certificate
            &"44".repeat(32),   // voter
            "0300000000000000", // epoch
            "000000",           // approve
            "01000000",         // index
            "02000000",         // leaf count
            "01",               // path length
            &"77".repeat(32),
            &"66".repeat(64),
        ]
        .concat();
        assert_eq!(hex_of(&p), expected);
    }

    #[test]
    fn golden_approval_evidence_record() {
        let cert = |index: u32| VoteCert {
            voter: PublicKey([0x44; 32]),
            epoch: 3,
            decision: Decision::Approve,
            index,
            leaf_count: 2,
            path: vec![[0x77; 32]],
            signature: [0x66; 64],
        };
        let mut second_tx = golden_tx();
        second_tx.lock_time = 10;
        let e = ConflictingApprovals {
            outpoint: golden_tx().inputs[0].prev,
            first_tx: golden_tx(),
            first: cert(0),
            second_tx: second_tx.clone(),
            second: cert(1),
        };
        let cert_hex = |index: &str| {
            [
                &"44".repeat(32),
                "0300000000000000", // epoch
                "000000",           // approve
                index,
                "02000000", // leaf count
                "01",       // path length
                &"77".repeat(32),
                &"66".repeat(64),
            ]
            .concat()
        };
        let expected = [
            TXID_11,
            "02000000", // outpoint vout (LE, as on the wire)
            &hex_of(&golden_tx()),
            &cert_hex("00000000"),
            &hex_of(&second_tx),
            &cert_hex("01000000"),
        ]
        .concat();
        assert_eq!(hex_of(&e), expected);
        assert_eq!(
            ConflictingApprovals::decode_value(&e.to_value().unwrap()),
            Ok(e.clone())
        );
        let key = ApprovalEvidenceKey(PublicKey([0x44; 32]), e.outpoint);
        assert_eq!(
            hex::encode(key.to_key()),
            format!("{}{TXID_11}00000002", "44".repeat(32))
        );
        assert_eq!(ApprovalEvidenceKey::from_key(&key.to_key()), Ok(key));
        assert!(ApprovalEvidenceKey::from_key(&[0; 67]).is_err());
    }

    #[test]
    fn bad_bytes_are_typed_errors() {
        let good = utxo(UtxoState::Locked {
            txid: Txid([1; 32]),
        })
        .to_value()
        .unwrap();
        let mut bad_tag = good.clone();
        bad_tag[TxOutput::ENCODED_LEN] = 9;
        assert_eq!(
            UtxoEntry::decode_value(&bad_tag),
            Err(RecordError::Decode(DecodeError::UnknownTag {
                what: "utxo state",
                tag: 9
            }))
        );
        assert!(matches!(
            UtxoEntry::decode_value(&good[..good.len() - 1]),
            Err(RecordError::Decode(DecodeError::Truncated { .. }))
        ));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            UtxoEntry::decode_value(&long),
            Err(RecordError::Decode(DecodeError::TrailingBytes(1)))
        );
        assert!(matches!(
            OutPoint::from_key(&[0; 35]),
            Err(RecordError::KeyLength { expected: 36, .. })
        ));
        assert!(VoteSeq::from_key(&[0; 9]).is_err());
        assert!(MetaKey::from_key(b"nope").is_err());
        assert_eq!(MetaKey::from_key(b"chain_id"), Ok(MetaKey::ChainId));
        assert_eq!(
            MetaKey::from_key(b"applied_log_seq"),
            Ok(MetaKey::AppliedLogSeq)
        );
        assert!(u32::decode_value(&[1, 2, 3]).is_err());
        assert!(AppliedSeq::decode_value(&[0; 7]).is_err());
    }

    #[test]
    fn encoders_refuse_what_decoders_would_refuse() {
        let empty = VoteBatch {
            chain_id: 1,
            epoch: 1,
            voter: PublicKey([1; 32]),
            items: vec![],
            signature: [0; 64],
        };
        assert!(matches!(
            empty.to_value(),
            Err(RecordError::OutOfBounds { min: 1, .. })
        ));
        let mut tx = golden_tx();
        tx.outputs = vec![tx.outputs[0]; MAX_TX_OUTPUTS + 1];
        assert!(tx.to_value().is_err());
        let p = TimeProof {
            chain_id: 1,
            txid: Txid([1; 32]),
            votes: vec![VoteCert {
                voter: PublicKey([1; 32]),
                epoch: 1,
                decision: Decision::Approve,
                index: 0,
                leaf_count: 1,
                path: vec![[0; 32]; MAX_MERKLE_DEPTH + 1],
                signature: [0; 64],
            }],
        };
        assert!(p.to_value().is_err());
    }

    // ---- property tests ----

    fn arb_txid() -> impl Strategy<Value = Txid> {
        any::<[u8; 32]>().prop_map(Txid)
    }

    fn arb_output() -> impl Strategy<Value = TxOutput> {
        (any::<u64>(), any::<[u8; 20]>()).prop_map(|(amount, a)| TxOutput {
            amount,
            address: Address(a),
        })
    }

    fn arb_state() -> impl Strategy<Value = UtxoState> {
        prop_oneof![
            Just(UtxoState::Unspent),
            arb_txid().prop_map(|txid| UtxoState::Locked { txid }),
            (arb_txid(), any::<u64>())
                .prop_map(|(txid, weight)| UtxoState::SpentPending { txid, weight }),
            arb_txid().prop_map(|txid| UtxoState::SpentFinalized { txid }),
            (arb_txid(), any::<u64>())
                .prop_map(|(txid, height)| UtxoState::Confirmed { txid, height }),
        ]
    }

    fn arb_outpoint() -> impl Strategy<Value = OutPoint> {
        (arb_txid(), any::<u32>()).prop_map(|(txid, vout)| OutPoint { txid, vout })
    }

    fn arb_tx() -> impl Strategy<Value = Transaction> {
        let input =
            (arb_outpoint(), any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(prev, pk, s)| {
                let mut signature = [0u8; 64];
                signature[..32].copy_from_slice(&s);
                signature[32..].copy_from_slice(&pk);
                TxInput {
                    prev,
                    public_key: PublicKey(pk),
                    signature,
                }
            });
        (
            any::<u16>(),
            any::<u32>(),
            prop::collection::vec(input, 0..5),
            prop::collection::vec(arb_output(), 0..5),
            any::<u64>(),
        )
            .prop_map(
                |(version, chain_id, inputs, outputs, lock_time)| Transaction {
                    version,
                    chain_id,
                    inputs,
                    outputs,
                    lock_time,
                },
            )
    }

    /// Decisions as a decoder produces them: an `Other` code is never one
    /// this build knows (those decode to their named variant).
    fn arb_decision() -> impl Strategy<Value = Decision> {
        prop_oneof![
            Just(Decision::Approve),
            any::<u16>().prop_map(|c| Decision::Reject(RejectCode::from_code(c))),
        ]
    }

    fn arb_batch() -> impl Strategy<Value = VoteBatch> {
        let item =
            (arb_txid(), arb_decision()).prop_map(|(txid, decision)| VoteItem { txid, decision });
        (
            any::<u32>(),
            any::<u64>(),
            any::<[u8; 32]>(),
            prop::collection::vec(item, 1..8),
            any::<[u8; 32]>(),
        )
            .prop_map(|(chain_id, epoch, voter, items, s)| VoteBatch {
                chain_id,
                epoch,
                voter: PublicKey(voter),
                items,
                signature: [s, s].concat().try_into().expect("64 bytes"),
            })
    }

    fn arb_proof() -> impl Strategy<Value = TimeProof> {
        let cert = (
            any::<[u8; 32]>(),
            any::<u64>(),
            arb_decision(),
            any::<u32>(),
            any::<u32>(),
            prop::collection::vec(any::<[u8; 32]>(), 0..=MAX_MERKLE_DEPTH),
        )
            .prop_map(
                |(voter, epoch, decision, index, leaf_count, path)| VoteCert {
                    voter: PublicKey(voter),
                    epoch,
                    decision,
                    index,
                    leaf_count,
                    path,
                    signature: [voter, voter].concat().try_into().expect("64 bytes"),
                },
            );
        (any::<u32>(), arb_txid(), prop::collection::vec(cert, 0..4)).prop_map(
            |(chain_id, txid, votes)| TimeProof {
                chain_id,
                txid,
                votes,
            },
        )
    }

    fn round_trip<V: TableValue + PartialEq + std::fmt::Debug>(v: &V) {
        let bytes = v.to_value().expect("encodable");
        assert_eq!(&V::decode_value(&bytes).expect("decodable"), v);
    }

    proptest! {
        #[test]
        fn utxo_round_trip(output in arb_output(), state in arb_state()) {
            round_trip(&UtxoEntry { output, state });
        }

        #[test]
        fn transaction_round_trip(tx in arb_tx()) {
            round_trip(&tx);
        }

        #[test]
        fn vote_batch_round_trip(b in arb_batch()) {
            round_trip(&b);
        }

        #[test]
        fn proof_round_trip(p in arb_proof()) {
            round_trip(&p);
        }

        #[test]
        fn u32_round_trip(v in any::<u32>()) {
            round_trip(&v);
        }

        #[test]
        fn outpoint_key_round_trips_and_sorts(a in arb_outpoint(), b in arb_outpoint()) {
            prop_assert_eq!(OutPoint::from_key(&a.to_key()).unwrap(), a);
            prop_assert_eq!(a.cmp(&b), a.to_key().cmp(&b.to_key()));
        }

        #[test]
        fn vote_seq_key_round_trips_and_sorts(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(VoteSeq::from_key(&VoteSeq(a).to_key()).unwrap(), VoteSeq(a));
            prop_assert_eq!(a.cmp(&b), VoteSeq(a).to_key().cmp(&VoteSeq(b).to_key()));
        }

        #[test]
        fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = UtxoEntry::decode_value(&bytes);
            let _ = Transaction::decode_value(&bytes);
            let _ = VoteBatch::decode_value(&bytes);
            let _ = TimeProof::decode_value(&bytes);
            let _ = ConflictingApprovals::decode_value(&bytes);
            let _ = u32::decode_value(&bytes);
            let _ = OutPoint::from_key(&bytes);
            let _ = Txid::from_key(&bytes);
            let _ = VoteSeq::from_key(&bytes);
            let _ = MetaKey::from_key(&bytes);
        }

        #[test]
        fn truncated_records_are_errors(output in arb_output(), state in arb_state(), cut in any::<prop::sample::Index>()) {
            let bytes = UtxoEntry { output, state }.to_value().unwrap();
            let n = cut.index(bytes.len());
            prop_assert!(UtxoEntry::decode_value(&bytes[..n]).is_err());
        }
    }
}
