//! [`Store`] on LMDB (through `heed`): the node's durable state.
//!
//! Owns the environment directory and its typed tables, each a name, a key
//! type whose bytes sort in table order and a value type, with byte layouts
//! in [`super::records`]:
//!
//! | table          | key                        | value        |
//! |----------------|----------------------------|--------------|
//! | `meta`         | [`MetaKey`] name           | `u32`; `applied_log_seq`, `confirmed_through`: u64 |
//! | `utxos`        | [`OutPoint::key_bytes`]    | [`UtxoEntry`]|
//! | `address_utxos` | [`AddressUtxoKey`] (address ‖ outpoint) | empty |
//! | `transactions` | [`Txid`]                   | [`Transaction`] |
//! | `proofs`       | [`Txid`]                   | [`TimeProof`] |
//! | `own_votes`    | [`VoteSeq`] (u64 BE)       | [`VoteBatch`] |
//! | `finality_log` | [`LogSeq`] (u64 BE)        | [`Txid`]     |
//! | `stuck`        | [`Txid`]                   | `u32` (0)    |
//! | `evidence`     | voter ‖ txid (64 bytes)    | [`Equivocation`] |
//! | `blocks`       | [`BlockHeight`] (u64 BE)   | [`CommittedBlock`] (block ‖ certificate) |
//! | `own_block_votes` | height ‖ round (BE) ‖ step | [`VotedBlock`] |
//! | `block_candidates` | height (BE) ‖ block hash | [`Candidate`] |
//! | `fork_evidence` | [`BlockHeight`]           | [`ForkEvidence`] |
//! | `block_stop` | [`BlockHeight`] | [`Contradiction`] (at most one) |
//! | `block_evidence` | height ‖ round (BE) ‖ kind ‖ offender | [`BlockEvidence`] |
//! | `approval_evidence` | voter ‖ [`OutPoint::key_bytes`] (68 bytes) | [`ConflictingApprovals`] |
//!
//! Block layouts are in [`timecoin_core::storage::block_records`].
//!
//! `address_utxos` is an index of `utxos`: one key per output that is not
//! spent for good ([`UtxoState::is_spent_for_good`]), maintained by
//! [`Store::apply`] and [`Store::init`] in the same write transaction as the
//! `utxos` record, so an address's outputs are a key range: reading them
//! costs the answer, not the UTXO set. [`StateReader`] serves it to other
//! threads.
//!
//! `meta` carries the format version; a database written by a newer build is
//! refused rather than misread, and `applied_log_seq`, the last write-ahead
//! log record applied ([`LmdbStore::apply_rounds`] writes it in the
//! transaction that applies the records). [`Store::apply`] and
//! [`LmdbStore::apply_rounds`] are one LMDB write transaction each,
//! committed (and fsync'ed, unless [`LmdbOptions::no_sync`]) before they
//! return. The node does not call `apply` per round: its rounds go through
//! the write-ahead log ([`super::store_writer`]). The vote log is append-only: it is written with
//! `MDB_APPEND` under the next sequence number and never overwritten; so is the
//! finality log.
//!
//! This module must never interpret protocol rules: it stores what the engine
//! decided, and reports damaged bytes as [`StoreError::Corrupt`], never a panic.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Bound;
use std::path::Path;

use heed::types::Bytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions, PutFlags, RoTxn, RwTxn, WithoutTls};

use super::records::{
    check_txid, AddressUtxoKey, AppliedSeq, ApprovalEvidenceKey, EvidenceKey, LogSeq, MetaKey,
    RecordError, TableKey, TableValue, VoteSeq, FORMAT_VERSION, MIN_FORMAT_VERSION,
};
use super::{BlockSnapshot, CommittedBlock, Genesis, Snapshot, Store, StoreError, Write};
use crate::protocol::evidence::{ConflictingApprovals, Equivocation};
use crate::protocol::timeproof::TimeProof;
use crate::protocol::types::{Address, ChainId, OutPoint, Transaction, Txid};
use crate::protocol::utxo::{UtxoEntry, UtxoState};
use crate::protocol::vote::VoteBatch;
use timecoin_core::blocks::{
    BlockEvidence, BlockEvidenceKey, BlockHash, Candidate, Contradiction, ForkEvidence,
};
use timecoin_core::storage::block_records::{
    BlockHeight, CandidateKey, OwnBlockVoteKey, VotedBlock,
};

/// Default size of the memory map: 64 GiB of address space. The data file is
/// sparse and only grows with what is written.
pub const DEFAULT_MAP_SIZE: usize = 64 << 30;

const TABLE_META: &str = "meta";
const TABLE_UTXOS: &str = "utxos";
const TABLE_ADDRESS_UTXOS: &str = "address_utxos";
const TABLE_TRANSACTIONS: &str = "transactions";
const TABLE_PROOFS: &str = "proofs";
const TABLE_OWN_VOTES: &str = "own_votes";
const TABLE_FINALITY_LOG: &str = "finality_log";
const TABLE_STUCK: &str = "stuck";
const TABLE_EVIDENCE: &str = "evidence";
const TABLE_BLOCKS: &str = "blocks";
const TABLE_OWN_BLOCK_VOTES: &str = "own_block_votes";
const TABLE_BLOCK_CANDIDATES: &str = "block_candidates";
const TABLE_FORK_EVIDENCE: &str = "fork_evidence";
const TABLE_BLOCK_HEIGHTS: &str = "block_heights";
const TABLE_BLOCK_EVIDENCE: &str = "block_evidence";
const TABLE_BLOCK_STOP: &str = "block_stop";
const TABLE_APPROVAL_EVIDENCE: &str = "approval_evidence";
const TABLE_COUNT: u32 = 17;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LmdbOptions {
    /// Largest the database may grow, in bytes; a multiple of the OS page size.
    pub map_size: usize,
    /// Skips the fsync at commit (`MDB_NOSYNC`). For benchmarks only: an OS
    /// crash or power loss may then lose or damage committed writes,
    /// including votes already sent, so a restarted node could contradict
    /// itself.
    pub no_sync: bool,
}

impl Default for LmdbOptions {
    fn default() -> Self {
        LmdbOptions {
            map_size: DEFAULT_MAP_SIZE,
            no_sync: false,
        }
    }
}

fn backend(e: heed::Error) -> StoreError {
    match e {
        heed::Error::Io(io) => StoreError::Io(io),
        other => StoreError::Backend(other.to_string()),
    }
}

/// A named LMDB database with a key type and a value type.
struct Table<K, V> {
    name: &'static str,
    db: Database<Bytes, Bytes>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for Table<K, V> {}

impl<K: TableKey, V: TableValue> Table<K, V> {
    fn create(
        env: &Env<WithoutTls>,
        wtxn: &mut RwTxn,
        name: &'static str,
    ) -> Result<Self, StoreError> {
        let db = env.create_database(wtxn, Some(name)).map_err(backend)?;
        Ok(Table {
            name,
            db,
            _types: PhantomData,
        })
    }

    fn corrupt(&self, e: RecordError) -> StoreError {
        StoreError::Corrupt {
            table: self.name,
            detail: e.to_string(),
        }
    }

    fn get(&self, txn: &RoTxn, key: &K) -> Result<Option<V>, StoreError> {
        match self.db.get(txn, key.to_key().as_ref()).map_err(backend)? {
            Some(bytes) => V::decode_value(bytes)
                .map(Some)
                .map_err(|e| self.corrupt(e)),
            None => Ok(None),
        }
    }

    fn put_with(
        &self,
        txn: &mut RwTxn,
        flags: PutFlags,
        key: &K,
        value: &V,
        buf: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        buf.clear();
        // An unencodable value fails the whole apply: nothing of it commits.
        value.encode_value(buf).map_err(|e| self.corrupt(e))?;
        self.db
            .put_with_flags(txn, flags, key.to_key().as_ref(), buf)
            .map_err(backend)
    }

    fn put(
        &self,
        txn: &mut RwTxn,
        key: &K,
        value: &V,
        buf: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        self.put_with(txn, PutFlags::empty(), key, value, buf)
    }

    fn is_empty(&self, txn: &RoTxn) -> Result<bool, StoreError> {
        self.db.is_empty(txn).map_err(backend)
    }

    fn last_key(&self, txn: &RoTxn) -> Result<Option<K>, StoreError> {
        match self.db.last(txn).map_err(backend)? {
            Some((k, _)) => K::from_key(k).map(Some).map_err(|e| self.corrupt(e)),
            None => Ok(None),
        }
    }

    /// Calls `f` on every record from `start` on, in key order.
    fn for_each_from(
        &self,
        txn: &RoTxn,
        start: &K,
        mut f: impl FnMut(K, V) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        use std::ops::Bound;
        let key = start.to_key();
        let range = (Bound::Included(key.as_ref()), Bound::Unbounded);
        for item in self.db.range(txn, &range).map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let k = K::from_key(k).map_err(|e| self.corrupt(e))?;
            let v = V::decode_value(v).map_err(|e| self.corrupt(e))?;
            f(k, v)?;
        }
        Ok(())
    }

    fn last(&self, txn: &RoTxn) -> Result<Option<V>, StoreError> {
        match self.db.last(txn).map_err(backend)? {
            Some((_, v)) => V::decode_value(v).map(Some).map_err(|e| self.corrupt(e)),
            None => Ok(None),
        }
    }

    /// Calls `f` on every record in key order.
    fn for_each(
        &self,
        txn: &RoTxn,
        mut f: impl FnMut(K, V) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for item in self.db.iter(txn).map_err(backend)? {
            let (k, v) = item.map_err(backend)?;
            let k = K::from_key(k).map_err(|e| self.corrupt(e))?;
            let v = V::decode_value(v).map_err(|e| self.corrupt(e))?;
            f(k, v)?;
        }
        Ok(())
    }

    /// Every key in order, without decoding the values.
    fn keys(&self, txn: &RoTxn) -> Result<Vec<K>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iter(txn).map_err(backend)? {
            let (k, _) = item.map_err(backend)?;
            out.push(K::from_key(k).map_err(|e| self.corrupt(e))?);
        }
        Ok(out)
    }
}

/// Where the append-only tables continue within one write transaction.
#[derive(Default)]
struct AppendCursors {
    vote: Option<u64>,
    log: Option<u64>,
}

/// What [`LmdbStore::sizes`] reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreSizes {
    /// Entries in the UTXO table (every state: unspent, locked, spent).
    pub utxos: u64,
    /// Length of the finality log: transactions this node finalized.
    pub finalized: u64,
    /// Size of `data.mdb`.
    pub file_bytes: u64,
    /// The map size: the database cannot grow past it (writes then fail
    /// and the core stops).
    pub map_bytes: u64,
}

/// The durable store of one node, in one LMDB environment directory.
pub struct LmdbStore {
    env: Env<WithoutTls>,
    meta: Table<MetaKey, u32>,
    /// The same `meta` table, for its u64 entry ([`MetaKey::AppliedLogSeq`]).
    meta_seq: Table<MetaKey, AppliedSeq>,
    utxos: Table<OutPoint, UtxoEntry>,
    /// The outputs of `utxos` not spent for good, by address.
    address_utxos: Table<AddressUtxoKey, ()>,
    transactions: Table<Txid, Transaction>,
    proofs: Table<Txid, TimeProof>,
    own_votes: Table<VoteSeq, VoteBatch>,
    /// Append-only: the transactions this node finalized, in order.
    finality_log: Table<LogSeq, Txid>,
    /// Approved transactions that can no longer reach the quorum (value:
    /// unused, 0).
    stuck: Table<Txid, u32>,
    /// Equivocation evidence, by voter and transaction.
    evidence: Table<EvidenceKey, Equivocation>,
    blocks: Table<BlockHeight, CommittedBlock>,
    own_block_votes: Table<OwnBlockVoteKey, VotedBlock>,
    block_candidates: Table<CandidateKey, Candidate>,
    fork_evidence: Table<BlockHeight, ForkEvidence>,
    /// Committed block hash -> height (`getblock` by hash).
    block_heights: Table<BlockHash, BlockHeight>,
    /// Double proposals, double votes and conflicting proposals.
    block_evidence: Table<BlockEvidenceKey, BlockEvidence>,
    /// The contradiction that stopped block processing, if any.
    block_stop: Table<BlockHeight, Contradiction>,
    /// Approvals of two transactions spending one output, by voter and
    /// output.
    approval_evidence: Table<ApprovalEvidenceKey, ConflictingApprovals>,
}

/// Reads committed blocks from another thread (see
/// [`LmdbStore::chain_reader`]); it cannot write.
#[derive(Clone)]
pub struct ChainReader {
    env: Env<WithoutTls>,
    blocks: Table<BlockHeight, CommittedBlock>,
    block_heights: Table<BlockHash, BlockHeight>,
}

impl fmt::Debug for ChainReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainReader").finish_non_exhaustive()
    }
}

impl ChainReader {
    pub fn block(&self, height: u64) -> Result<Option<CommittedBlock>, StoreError> {
        let rtxn = self.env.read_txn().map_err(backend)?;
        self.blocks.get(&rtxn, &BlockHeight(height))
    }

    /// The height of committed block `hash`, if this node holds it.
    pub fn height_of(&self, hash: &BlockHash) -> Result<Option<u64>, StoreError> {
        let rtxn = self.env.read_txn().map_err(backend)?;
        Ok(self.block_heights.get(&rtxn, hash)?.map(|h| h.0))
    }

    /// The last committed block, if any.
    pub fn tip(&self) -> Result<Option<CommittedBlock>, StoreError> {
        let rtxn = self.env.read_txn().map_err(backend)?;
        self.blocks.last(&rtxn)
    }
}

/// Reads UTXO states and an address's outputs from another thread (wallet
/// sessions, RPC; see [`LmdbStore::state_reader`]); it cannot write.
///
/// What it reads is LMDB. The core makes each round durable in the
/// write-ahead log before that round's votes and replies leave the node,
/// and the store writer ([`super::store_writer`]) applies rounds to LMDB in
/// batches; a reader from [`super::DurableStore::state_reader`] first waits
/// (a barrier) until LMDB holds every round handed over when the query
/// began, so a wallet that heard an outcome reads a state at least that
/// new. One from [`LmdbStore::state_reader`] has no barrier (offline use).
#[derive(Clone)]
pub struct StateReader {
    env: Env<WithoutTls>,
    utxos: Table<OutPoint, UtxoEntry>,
    address_utxos: Table<AddressUtxoKey, ()>,
    barrier: Option<ReadBarrier>,
}

/// Called before each [`StateReader`] query: returns once LMDB holds what
/// the query must see.
pub type ReadBarrier = std::sync::Arc<dyn Fn() -> Result<(), StoreError> + Send + Sync>;

impl fmt::Debug for StateReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateReader").finish_non_exhaustive()
    }
}

impl StateReader {
    /// The same reader, waiting on `barrier` before each query.
    pub fn with_barrier(self, barrier: ReadBarrier) -> StateReader {
        StateReader {
            barrier: Some(barrier),
            ..self
        }
    }

    fn wait_barrier(&self) -> Result<(), StoreError> {
        match &self.barrier {
            Some(b) => b(),
            None => Ok(()),
        }
    }

    /// One outpoint's entry (None: unknown here).
    pub fn utxo(&self, op: &OutPoint) -> Result<Option<UtxoEntry>, StoreError> {
        self.wait_barrier()?;
        let rtxn = self.env.read_txn().map_err(backend)?;
        self.utxos.get(&rtxn, op)
    }

    /// The state of each outpoint (None: unknown here), in the order asked,
    /// from one read transaction: one point read each.
    pub fn utxo_states(
        &self,
        ops: &[OutPoint],
    ) -> Result<Vec<(OutPoint, Option<UtxoEntry>)>, StoreError> {
        self.wait_barrier()?;
        let rtxn = self.env.read_txn().map_err(backend)?;
        ops.iter()
            .map(|op| Ok((*op, self.utxos.get(&rtxn, op)?)))
            .collect()
    }

    /// Up to `limit` outputs paying `address` that are not spent for good,
    /// by outpoint, from one read transaction: a range read of the address
    /// index that stops at the limit, so the cost is the answer's size.
    pub fn address_utxos(
        &self,
        address: &Address,
        limit: usize,
    ) -> Result<Vec<(OutPoint, UtxoEntry)>, StoreError> {
        self.wait_barrier()?;
        let rtxn = self.env.read_txn().map_err(backend)?;
        let mut out = Vec::new();
        let iter = self
            .address_utxos
            .db
            .prefix_iter(&rtxn, &address.0)
            .map_err(backend)?;
        for item in iter {
            if out.len() >= limit {
                break;
            }
            let (k, _) = item.map_err(backend)?;
            let AddressUtxoKey(_, op) =
                AddressUtxoKey::from_key(k).map_err(|e| self.address_utxos.corrupt(e))?;
            // The index and `utxos` change in one transaction: a key
            // without its output, or with another address's, is damage.
            match self.utxos.get(&rtxn, &op)? {
                Some(e) if e.output.address == *address && !e.state.is_spent_for_good() => {
                    out.push((op, e))
                }
                other => {
                    return Err(StoreError::Corrupt {
                        table: TABLE_ADDRESS_UTXOS,
                        detail: format!(
                            "index entry {op} for address {address} does not match utxos: {other:?}"
                        ),
                    })
                }
            }
        }
        Ok(out)
    }
}

/// `utxos` records read per page while the address index is built.
const MIGRATION_PAGE: usize = 65_536;

/// Up to `max` `utxos` records after `after` (from the first if None).
fn utxos_page(
    utxos: &Table<OutPoint, UtxoEntry>,
    txn: &RoTxn,
    after: Option<&OutPoint>,
    max: usize,
) -> Result<Vec<(OutPoint, UtxoEntry)>, StoreError> {
    let key = after.map(|op| op.to_key());
    let range = match &key {
        Some(k) => (Bound::Excluded(&k[..]), Bound::Unbounded),
        None => (Bound::Unbounded, Bound::Unbounded),
    };
    let mut out = Vec::new();
    for item in utxos.db.range(txn, &range).map_err(backend)? {
        if out.len() >= max {
            break;
        }
        let (k, v) = item.map_err(backend)?;
        let op = OutPoint::from_key(k).map_err(|e| utxos.corrupt(e))?;
        out.push((
            op,
            UtxoEntry::decode_value(v).map_err(|e| utxos.corrupt(e))?,
        ));
    }
    Ok(out)
}

/// Keeps `address_utxos` in step with one `utxos` record (same transaction).
/// An output's address never changes (it is part of the transaction its
/// txid commits to), so the key to insert or delete is known without
/// reading the old record (which the batch apply reads anyway, to skip
/// the index when the output's membership does not change).
fn index_utxo(
    index: &Table<AddressUtxoKey, ()>,
    wtxn: &mut RwTxn,
    op: &OutPoint,
    entry: &UtxoEntry,
) -> Result<(), StoreError> {
    let key = AddressUtxoKey(entry.output.address, *op).to_key();
    if entry.state.is_spent_for_good() {
        index.db.delete(wtxn, &key).map_err(backend)?;
    } else {
        index.db.put(wtxn, &key, &[]).map_err(backend)?;
    }
    Ok(())
}

impl fmt::Debug for LmdbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LmdbStore")
            .field("path", &self.env.path())
            .finish_non_exhaustive()
    }
}

impl LmdbStore {
    /// Opens (creating if needed) the database in `dir`. Refuses a database
    /// written in another format version.
    ///
    /// One node process per directory: this guards against a second open in
    /// the same process, and LMDB's lock file keeps other processes'
    /// transactions consistent, but two nodes sharing one vote log could
    /// still sign conflicting votes, so the runtime must not start two.
    pub fn open(dir: &Path, options: LmdbOptions) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let mut env_options = EnvOpenOptions::new().read_txn_without_tls();
        env_options.map_size(options.map_size).max_dbs(TABLE_COUNT);
        if options.no_sync {
            // SAFETY: NO_SYNC only drops the fsync at commit; it does not
            // change how the map is accessed, and a process crash still
            // leaves a consistent database. An OS crash may lose or damage
            // recent commits, which is why the option is for benchmarks only.
            unsafe {
                env_options.flags(EnvFlags::NO_SYNC);
            }
        }
        // SAFETY: the danger of a memory map is the file changing under it
        // outside LMDB's control. Within this process heed refuses to open
        // the same path twice (EnvAlreadyOpened), so this `Env` is the only
        // mapping; other processes can only reach the files through LMDB,
        // whose lock file (`lock.mdb`; we never set NO_LOCK) serializes
        // writers and protects pages readers still use. Nothing here writes
        // `data.mdb` except LMDB. Like any LMDB database, `dir` must be on a
        // local file system.
        let env = unsafe { env_options.open(dir) }.map_err(backend)?;

        let mut wtxn = env.write_txn().map_err(backend)?;
        let meta = Table::create(&env, &mut wtxn, TABLE_META)?;
        // Check the version before touching anything a newer build may have
        // laid out differently. On error the transaction aborts on drop.
        let version = meta.get(&wtxn, &MetaKey::FormatVersion)?;
        if let Some(found) = version {
            if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&found) {
                return Err(StoreError::FormatVersion {
                    found,
                    supported: FORMAT_VERSION,
                });
            }
        }
        let utxos = Table::create(&env, &mut wtxn, TABLE_UTXOS)?;
        let address_utxos = Table::create(&env, &mut wtxn, TABLE_ADDRESS_UTXOS)?;
        let transactions = Table::create(&env, &mut wtxn, TABLE_TRANSACTIONS)?;
        let proofs = Table::create(&env, &mut wtxn, TABLE_PROOFS)?;
        let own_votes = Table::create(&env, &mut wtxn, TABLE_OWN_VOTES)?;
        // Added after format version 1 shipped: created empty in older
        // databases (catch-up then lists only what finalizes from now on).
        let finality_log = Table::create(&env, &mut wtxn, TABLE_FINALITY_LOG)?;
        let stuck = Table::create(&env, &mut wtxn, TABLE_STUCK)?;
        let evidence = Table::create(&env, &mut wtxn, TABLE_EVIDENCE)?;
        // The block layer's tables, created empty in older databases.
        let blocks = Table::create(&env, &mut wtxn, TABLE_BLOCKS)?;
        let own_block_votes = Table::create(&env, &mut wtxn, TABLE_OWN_BLOCK_VOTES)?;
        let block_candidates = Table::create(&env, &mut wtxn, TABLE_BLOCK_CANDIDATES)?;
        let fork_evidence = Table::create(&env, &mut wtxn, TABLE_FORK_EVIDENCE)?;
        let block_heights = Table::create(&env, &mut wtxn, TABLE_BLOCK_HEIGHTS)?;
        let block_evidence = Table::create(&env, &mut wtxn, TABLE_BLOCK_EVIDENCE)?;
        let block_stop = Table::create(&env, &mut wtxn, TABLE_BLOCK_STOP)?;
        // Added with conflicting-approvals evidence: created empty in older
        // databases.
        let approval_evidence = Table::create(&env, &mut wtxn, TABLE_APPROVAL_EVIDENCE)?;
        if version.is_none() {
            let fresh = meta.is_empty(&wtxn)?
                && utxos.is_empty(&wtxn)?
                && transactions.is_empty(&wtxn)?
                && proofs.is_empty(&wtxn)?
                && own_votes.is_empty(&wtxn)?;
            if !fresh {
                return Err(StoreError::Corrupt {
                    table: TABLE_META,
                    detail: "format_version is missing but the database holds data".into(),
                });
            }
            meta.put(
                &mut wtxn,
                &MetaKey::FormatVersion,
                &FORMAT_VERSION,
                &mut Vec::new(),
            )?;
        }
        if version == Some(2) {
            // Version 3 changes no table: it marks a database that may lag
            // the write-ahead log, which older builds must refuse.
            meta.put(
                &mut wtxn,
                &MetaKey::FormatVersion,
                &FORMAT_VERSION,
                &mut Vec::new(),
            )?;
        }
        if version == Some(1) {
            // Version 1 had no address index: build it from `utxos` and
            // write the new version in the same transaction (a crash
            // leaves version 1 and an empty index, and the next open
            // builds it again). A bumped version, rather than "build when
            // the index is empty", because an older build would otherwise
            // open the database, change `utxos` without the index, and
            // leave it stale for this one; it refuses version 2 instead.
            let started = std::time::Instant::now();
            address_utxos.db.clear(&mut wtxn).map_err(backend)?;
            // In pages: a reader of `utxos` borrows the transaction the
            // index is written in, and the whole set need not be in memory.
            let mut after: Option<OutPoint> = None;
            loop {
                let page = utxos_page(&utxos, &wtxn, after.as_ref(), MIGRATION_PAGE)?;
                for (op, e) in &page {
                    index_utxo(&address_utxos, &mut wtxn, op, e)?;
                }
                match page.last() {
                    Some((op, _)) if page.len() == MIGRATION_PAGE => after = Some(*op),
                    _ => break,
                }
            }
            let built = address_utxos.db.len(&wtxn).map_err(backend)?;
            meta.put(
                &mut wtxn,
                &MetaKey::FormatVersion,
                &FORMAT_VERSION,
                &mut Vec::new(),
            )?;
            tracing::info!(
                outputs = built,
                ms = started.elapsed().as_millis() as u64,
                "database migrated from format version 1 to {FORMAT_VERSION}: address index built"
            );
        }
        wtxn.commit().map_err(backend)?;
        Ok(LmdbStore {
            env,
            meta,
            meta_seq: Table {
                name: TABLE_META,
                db: meta.db,
                _types: PhantomData,
            },
            utxos,
            address_utxos,
            transactions,
            proofs,
            own_votes,
            finality_log,
            stuck,
            evidence,
            blocks,
            own_block_votes,
            block_candidates,
            fork_evidence,
            block_heights,
            block_evidence,
            block_stop,
            approval_evidence,
        })
    }

    /// A read-only view of the chain for other threads (RPC): LMDB readers
    /// never wait for the writer, so reading blocks costs the core nothing.
    pub fn chain_reader(&self) -> ChainReader {
        ChainReader {
            env: self.env.clone(),
            blocks: self.blocks,
            block_heights: self.block_heights,
        }
    }

    /// Indexes the genesis outputs. Into an empty index (a new database)
    /// they go sorted, appended: full pages, so a large genesis leaves the
    /// index about as small as it can be and the one write transaction
    /// dirties fewer pages.
    fn index_genesis(
        &self,
        wtxn: &mut RwTxn,
        utxos: &[(OutPoint, UtxoEntry)],
    ) -> Result<(), StoreError> {
        if !self.address_utxos.is_empty(wtxn)? {
            for (op, e) in utxos {
                index_utxo(&self.address_utxos, wtxn, op, e)?;
            }
            return Ok(());
        }
        let mut keys: Vec<[u8; AddressUtxoKey::LEN]> = utxos
            .iter()
            .filter(|(_, e)| !e.state.is_spent_for_good())
            .map(|(op, e)| AddressUtxoKey(e.output.address, *op).to_key())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for k in &keys {
            self.address_utxos
                .db
                .put_with_flags(wtxn, PutFlags::APPEND, k, &[])
                .map_err(backend)?;
        }
        Ok(())
    }

    /// A read-only view of UTXO states and the address index for other
    /// threads (wallet queries, RPC), answered without the core thread.
    pub fn state_reader(&self) -> StateReader {
        StateReader {
            env: self.env.clone(),
            utxos: self.utxos,
            address_utxos: self.address_utxos,
            barrier: None,
        }
    }

    fn block_snapshot(&self, rtxn: &RoTxn) -> Result<BlockSnapshot, StoreError> {
        let tip = self.blocks.last(rtxn)?;
        let above = tip.as_ref().map_or(0, |t| t.block.height()) + 1;
        let mut snap = BlockSnapshot {
            tip,
            ..BlockSnapshot::default()
        };
        let from = OwnBlockVoteKey {
            height: above,
            round: 0,
            step: timecoin_core::blocks::SignedStep::Proposal,
        };
        self.own_block_votes.for_each_from(rtxn, &from, |k, v| {
            snap.own_votes.push(k.with(v.0));
            Ok(())
        })?;
        let from = CandidateKey(above, BlockHash([0; 32]));
        self.block_candidates.for_each_from(rtxn, &from, |_, c| {
            snap.candidates.push(c);
            Ok(())
        })?;
        snap.fork = self.fork_evidence.last(rtxn)?;
        snap.evidence_count = self.block_evidence.db.len(rtxn).map_err(backend)?;
        snap.stop = self.block_stop.last(rtxn)?;
        snap.confirmed_through = self
            .meta_seq
            .get(rtxn, &MetaKey::ConfirmedThrough)?
            .map(|AppliedSeq(h)| h);
        Ok(snap)
    }

    /// The contradiction that stopped block processing, if any.
    pub fn block_stop(&self) -> Result<Option<Contradiction>, StoreError> {
        let rtxn = self.env.read_txn().map_err(backend)?;
        self.block_stop.last(&rtxn)
    }

    /// Resumes block processing at the next start (`time-masternode
    /// clear-block-stop`): removes the stop record and returns it. The
    /// masternode must not be running (it holds the stop in memory).
    pub fn clear_block_stop(&mut self) -> Result<Option<Contradiction>, StoreError> {
        let stop = self.block_stop()?;
        if stop.is_some() {
            self.apply(&[Write::ClearBlockStop])?;
        }
        Ok(stop)
    }

    /// The environment directory.
    pub fn path(&self) -> &Path {
        self.env.path()
    }

    /// Sizes an operator watches, read from the database (one read
    /// transaction, table statistics only: no scan).
    pub fn sizes(&self) -> Result<StoreSizes, StoreError> {
        let rtxn = self.env.read_txn().map_err(backend)?;
        Ok(StoreSizes {
            utxos: self.utxos.db.len(&rtxn).map_err(backend)?,
            finalized: self.finality_log.db.len(&rtxn).map_err(backend)?,
            file_bytes: self.env.real_disk_size().map_err(backend)?,
            map_bytes: self.env.info().map_size as u64,
        })
    }

    /// The chain this database was initialised for, if [`Store::init`] ran.
    pub fn chain_id(&self) -> Result<Option<ChainId>, StoreError> {
        let rtxn = self.env.read_txn().map_err(backend)?;
        self.meta.get(&rtxn, &MetaKey::ChainId)
    }

    /// A second handle on the same environment, for another thread. LMDB
    /// serializes write transactions, but the store writer
    /// ([`super::store_writer`]) is meant to be the only writer: the core
    /// thread reads through its handle.
    pub fn read_handle(&self) -> LmdbStore {
        LmdbStore {
            env: self.env.clone(),
            ..*self
        }
    }

    /// The last write-ahead log record this database holds (0: none).
    pub fn applied_seq(&self) -> Result<u64, StoreError> {
        let rtxn = self.env.read_txn().map_err(backend)?;
        Ok(self
            .meta_seq
            .get(&rtxn, &MetaKey::AppliedLogSeq)?
            .map_or(0, |AppliedSeq(s)| s))
    }

    /// Applies several rounds of the write-ahead log in one transaction
    /// (committed, and synced unless [`LmdbOptions::no_sync`]), and records
    /// `applied`, the last record's sequence number, in the same
    /// transaction: each record is applied exactly once. All or nothing.
    pub fn apply_rounds<'a>(
        &mut self,
        rounds: impl IntoIterator<Item = &'a [Write]>,
        applied: u64,
    ) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn().map_err(backend)?;
        let before = self
            .meta_seq
            .get(&wtxn, &MetaKey::AppliedLogSeq)?
            .map_or(0, |AppliedSeq(s)| s);
        if applied <= before {
            return Err(StoreError::Corrupt {
                table: TABLE_META,
                detail: format!(
                    "log record {applied} applied again (the database holds up to {before})"
                ),
            });
        }
        let mut next = AppendCursors::default();
        let mut buf = Vec::new();
        for writes in rounds {
            self.apply_in(&mut wtxn, writes, &mut next, &mut buf)?;
        }
        self.meta_seq.put(
            &mut wtxn,
            &MetaKey::AppliedLogSeq,
            &AppliedSeq(applied),
            &mut buf,
        )?;
        wtxn.commit().map_err(backend)
    }

    /// Applies `writes` inside `wtxn`; `next` carries the append positions
    /// across the rounds of one transaction.
    fn apply_in(
        &self,
        wtxn: &mut RwTxn,
        writes: &[Write],
        next: &mut AppendCursors,
        buf: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let AppendCursors {
            vote: next_vote,
            log: next_log,
        } = next;
        for w in writes {
            match w {
                Write::PutUtxo(op, entry) => {
                    // The index changes only when the output joins or
                    // leaves it: a lock, its release or the confirmation of
                    // a spent output would rewrite one of the index's pages
                    // with what it holds already, a random page when the
                    // addresses are spread (in the load test the wallets'
                    // coins share pages, and its page writes did not
                    // change measurably). An unreadable old record is
                    // indexed as before.
                    let listed = |e: &UtxoEntry| !e.state.is_spent_for_good();
                    let was = self.utxos.get(wtxn, op).ok().flatten();
                    self.utxos.put(wtxn, op, entry, buf)?;
                    if was.as_ref().map(listed) != Some(listed(entry)) {
                        index_utxo(&self.address_utxos, wtxn, op, entry)?;
                    }
                }
                Write::PutTransaction(txid, tx) => {
                    check_txid(txid, &tx.txid()).map_err(|e| self.transactions.corrupt(e))?;
                    self.transactions.put(wtxn, txid, tx, buf)?;
                }
                Write::PutProof(proof) => self.proofs.put(wtxn, &proof.txid, proof, buf)?,
                Write::AppendOwnVotes(batch) => {
                    let seq = match *next_vote {
                        Some(s) => s,
                        None => match self.own_votes.last_key(wtxn)? {
                            Some(VoteSeq(last)) => {
                                last.checked_add(1).ok_or_else(|| StoreError::Corrupt {
                                    table: TABLE_OWN_VOTES,
                                    detail: "vote log sequence exhausted".into(),
                                })?
                            }
                            None => 0,
                        },
                    };
                    // MDB_APPEND fails unless the key sorts after every
                    // existing one: the log cannot be rewritten.
                    self.own_votes
                        .put_with(wtxn, PutFlags::APPEND, &VoteSeq(seq), batch, buf)?;
                    *next_vote = Some(seq + 1);
                }
                Write::AppendFinality(txid) => {
                    let seq = match *next_log {
                        Some(s) => s,
                        None => match self.finality_log.last_key(wtxn)? {
                            Some(LogSeq(last)) => last + 1,
                            None => 0,
                        },
                    };
                    self.finality_log
                        .put_with(wtxn, PutFlags::APPEND, &LogSeq(seq), txid, buf)?;
                    *next_log = Some(seq + 1);
                }
                Write::PutStuck(txid) => self.stuck.put(wtxn, txid, &0, buf)?,
                Write::PutApprovalEvidence(e) => self.approval_evidence.put(
                    wtxn,
                    &ApprovalEvidenceKey(e.voter(), e.outpoint),
                    e,
                    buf,
                )?,
                Write::PutEvidence(e) => {
                    self.evidence
                        .put(wtxn, &EvidenceKey(e.voter(), e.txid), e, buf)?
                }
                Write::PutBlock(b) => {
                    let height = BlockHeight(b.block.height());
                    self.blocks.put(wtxn, &height, b, buf)?;
                    self.block_heights
                        .put(wtxn, &b.block.hash(), &height, buf)?
                }
                Write::AppendOwnBlockVote(v) => self.own_block_votes.put(
                    wtxn,
                    &OwnBlockVoteKey::of(v),
                    &VotedBlock(v.block),
                    buf,
                )?,
                Write::PutCandidate(c) => self.block_candidates.put(
                    wtxn,
                    &CandidateKey(c.block.height(), c.block.hash()),
                    c,
                    buf,
                )?,
                Write::PutForkEvidence(f) => {
                    self.fork_evidence
                        .put(wtxn, &BlockHeight(f.height()), f, buf)?
                }
                Write::PutBlockEvidence(e) => self.block_evidence.put(wtxn, &e.key(), e, buf)?,
                Write::PutBlockStop(c) => {
                    // The first contradiction is the one kept.
                    if self.block_stop.is_empty(wtxn)? {
                        self.block_stop.put(wtxn, &BlockHeight(c.height), c, buf)?
                    }
                }
                Write::ClearBlockStop => self.block_stop.db.clear(wtxn).map_err(backend)?,
                Write::PutConfirmedThrough(h) => {
                    self.meta_seq
                        .put(wtxn, &MetaKey::ConfirmedThrough, &AppliedSeq(*h), buf)?
                }
                Write::PruneBlockRecords { below } => {
                    // Keys sort by height first (big-endian): everything
                    // before the first key at `below`.
                    let votes = OwnBlockVoteKey {
                        height: *below,
                        round: 0,
                        step: timecoin_core::blocks::SignedStep::Proposal,
                    }
                    .to_key();
                    let range = (Bound::Unbounded, Bound::Excluded(&votes[..]));
                    self.own_block_votes
                        .db
                        .delete_range(wtxn, &range)
                        .map_err(backend)?;
                    let cands = CandidateKey(*below, BlockHash([0; 32])).to_key();
                    let range = (Bound::Unbounded, Bound::Excluded(&cands[..]));
                    self.block_candidates
                        .db
                        .delete_range(wtxn, &range)
                        .map_err(backend)?;
                }
            }
        }
        Ok(())
    }

    fn get_transaction_in(
        &self,
        txn: &RoTxn,
        txid: &Txid,
    ) -> Result<Option<Transaction>, StoreError> {
        let tx = self.transactions.get(txn, txid)?;
        if let Some(tx) = &tx {
            check_txid(txid, &tx.txid()).map_err(|e| self.transactions.corrupt(e))?;
        }
        Ok(tx)
    }
}

impl timecoin_core::storage::UtxoSource for StateReader {
    fn utxo(&self, op: &OutPoint) -> Result<Option<UtxoEntry>, StoreError> {
        StateReader::utxo(self, op)
    }
}

impl Store for LmdbStore {
    fn init(&mut self, genesis: &Genesis) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn().map_err(backend)?;
        match self.meta.get(&wtxn, &MetaKey::ChainId)? {
            Some(found) if found != genesis.chain_id => Err(StoreError::WrongChain {
                found,
                expected: genesis.chain_id,
            }),
            Some(_) => Ok(()),
            None => {
                let mut buf = Vec::new();
                self.meta
                    .put(&mut wtxn, &MetaKey::ChainId, &genesis.chain_id, &mut buf)?;
                for (op, entry) in &genesis.utxos {
                    self.utxos.put(&mut wtxn, op, entry, &mut buf)?;
                }
                self.index_genesis(&mut wtxn, &genesis.utxos)?;
                wtxn.commit().map_err(backend)
            }
        }
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let rtxn = self.env.read_txn().map_err(backend)?;
        let mut snap = Snapshot::default();
        // One pass over the outputs: the held ones stay in memory, the
        // rest are read when needed; each list takes a transaction once.
        let (mut held, mut finals, mut confirmed) = (Vec::new(), Vec::new(), Vec::new());
        self.utxos.for_each(&rtxn, |op, entry| {
            match entry.state {
                UtxoState::Locked { txid } | UtxoState::SpentPending { txid, .. } => {
                    snap.held_utxos.push((op, entry));
                    held.push(txid);
                }
                UtxoState::SpentFinalized { txid } => finals.push(txid),
                UtxoState::Confirmed { txid, .. } => confirmed.push(txid),
                UtxoState::Unspent => {}
            }
            Ok(())
        })?;
        let mut seen = HashSet::new();
        for txid in held {
            if seen.insert(txid) {
                if let Some(tx) = self.get_transaction_in(&rtxn, &txid)? {
                    if self.stuck.get(&rtxn, &txid)?.is_some() {
                        snap.stuck_transactions.push(tx);
                    } else {
                        snap.pending_transactions.push(tx);
                    }
                }
            }
        }
        let mut seen = HashSet::new();
        for txid in finals {
            if seen.insert(txid) {
                if let Some(tx) = self.get_transaction_in(&rtxn, &txid)? {
                    snap.unconfirmed_transactions.push(tx);
                }
            }
        }
        let mut seen = HashSet::new();
        for txid in confirmed {
            if seen.insert(txid) && self.proofs.get(&rtxn, &txid)?.is_none() {
                if let Some(tx) = self.get_transaction_in(&rtxn, &txid)? {
                    snap.unproven_transactions.push(tx);
                }
            }
        }
        snap.finality_log_len = match self.finality_log.last_key(&rtxn)? {
            Some(LogSeq(last)) => last + 1,
            None => 0,
        };
        // Back from the log's end until every unconfirmed transaction was
        // seen: the walk is as long as the backlog of unconfirmed payments.
        let mut left: HashSet<Txid> = snap
            .unconfirmed_transactions
            .iter()
            .map(|t| t.txid())
            .collect();
        let mut from = snap.finality_log_len;
        while !left.is_empty() && from > 0 {
            from -= 1;
            if let Some(t) = self.finality_log.get(&rtxn, &LogSeq(from))? {
                left.remove(&t);
            }
        }
        snap.unconfirmed_log_from = if left.is_empty() { from } else { 0 };

        snap.finalized = self.proofs.keys(&rtxn)?;

        self.own_votes.for_each(&rtxn, |seq, batch| {
            // Append-only from 0: a gap means lost votes, which must not be
            // papered over (the node could then contradict itself).
            let expected = snap.own_votes.len() as u64;
            if seq.0 != expected {
                return Err(StoreError::Corrupt {
                    table: TABLE_OWN_VOTES,
                    detail: format!("vote log jumps from sequence {expected} to {}", seq.0),
                });
            }
            snap.own_votes.push(batch);
            Ok(())
        })?;
        snap.blocks = self.block_snapshot(&rtxn)?;
        Ok(snap)
    }

    fn utxo_source(&self) -> Box<dyn timecoin_core::storage::UtxoSource> {
        // `apply` is synchronous here: LMDB holds every accepted write.
        Box::new(self.state_reader())
    }

    fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        // One write transaction; an early return drops it, which aborts it.
        let mut wtxn = self.env.write_txn().map_err(backend)?;
        self.apply_in(
            &mut wtxn,
            writes,
            &mut AppendCursors::default(),
            &mut Vec::new(),
        )?;
        wtxn.commit().map_err(backend)
    }

    fn get_proof(&self, txid: &Txid) -> Result<Option<TimeProof>, StoreError> {
        let rtxn = self.env.read_txn().map_err(backend)?;
        let proof = self.proofs.get(&rtxn, txid)?;
        if let Some(p) = &proof {
            check_txid(txid, &p.txid).map_err(|e| self.proofs.corrupt(e))?;
        }
        Ok(proof)
    }

    fn get_transaction(&self, txid: &Txid) -> Result<Option<Transaction>, StoreError> {
        let rtxn = self.env.read_txn().map_err(backend)?;
        self.get_transaction_in(&rtxn, txid)
    }

    fn block(&self, height: u64) -> Result<Option<CommittedBlock>, StoreError> {
        let rtxn = self.env.read_txn().map_err(backend)?;
        self.blocks.get(&rtxn, &BlockHeight(height))
    }

    fn block_evidence(&self) -> Result<Vec<BlockEvidence>, StoreError> {
        let rtxn = self.env.read_txn().map_err(backend)?;
        let mut out = Vec::new();
        self.block_evidence.for_each(&rtxn, |_, e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    fn evidence(&self) -> Result<Vec<Equivocation>, StoreError> {
        let rtxn = self.env.read_txn().map_err(backend)?;
        let mut out = Vec::new();
        self.evidence.for_each(&rtxn, |_, e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    fn approval_evidence(&self) -> Result<Vec<ConflictingApprovals>, StoreError> {
        let rtxn = self.env.read_txn().map_err(backend)?;
        let mut out = Vec::new();
        self.approval_evidence.for_each(&rtxn, |_, e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    fn finality_log(&self, from: u64, max: usize) -> Result<(Vec<Txid>, u64), StoreError> {
        let rtxn = self.env.read_txn().map_err(backend)?;
        let head = match self.finality_log.last_key(&rtxn)? {
            Some(LogSeq(last)) => last + 1,
            None => 0,
        };
        let mut out = Vec::new();
        // Point reads: the log is dense from 0 (append-only), so position p
        // is key p.
        let mut p = from;
        while p < head && out.len() < max {
            match self.finality_log.get(&rtxn, &LogSeq(p))? {
                Some(t) => out.push(t),
                None => {
                    return Err(StoreError::Corrupt {
                        table: TABLE_FINALITY_LOG,
                        detail: format!("finality log has no entry {p} below its head {head}"),
                    })
                }
            }
            p += 1;
        }
        Ok((out, head))
    }
}

#[cfg(test)]
impl LmdbStore {
    /// Writes a raw `address_utxos` key, bypassing `apply` (tests of damage).
    pub(crate) fn put_raw_address_index_key(&self, key: &[u8]) {
        let mut wtxn = self.env.write_txn().unwrap();
        self.address_utxos.db.put(&mut wtxn, key, &[]).unwrap();
        wtxn.commit().unwrap();
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::registry::{Masternode, Registry, Tier};
    use crate::protocol::types::{Address, PublicKey, TxOutput};
    use crate::protocol::vote::{Decision, VoteItem};
    use crate::storage::MemoryStore;

    const CHAIN: ChainId = 7;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn open(dir: &Path) -> LmdbStore {
        LmdbStore::open(dir, LmdbOptions::default()).expect("open")
    }

    fn outpoint(n: u8, vout: u32) -> OutPoint {
        OutPoint {
            txid: Txid([n; 32]),
            vout,
        }
    }

    fn entry(amount: u64, state: UtxoState) -> UtxoEntry {
        UtxoEntry {
            output: TxOutput {
                amount,
                address: Address([3; 20]),
            },
            state,
        }
    }

    fn genesis(chain_id: ChainId) -> Genesis {
        Genesis {
            chain_id,
            registry: Registry::new(
                1,
                vec![Masternode {
                    key: PublicKey::from_signing(&key(1)),
                    address: "127.0.0.1:1".into(),
                    tier: Tier::Bronze,
                }],
            )
            .unwrap(),
            utxos: vec![
                (outpoint(1, 0), entry(500, UtxoState::Unspent)),
                (outpoint(1, 1), entry(700, UtxoState::Unspent)),
            ],
        }
    }

    fn tx_spending(prev: OutPoint, amount: u64) -> Transaction {
        Transaction::build_signed(
            CHAIN,
            &key(2),
            &[prev],
            vec![TxOutput {
                amount,
                address: Address([9; 20]),
            }],
        )
    }

    fn batch(txids: &[Txid]) -> VoteBatch {
        VoteBatch::sign(
            CHAIN,
            1,
            &key(1),
            txids
                .iter()
                .map(|&txid| VoteItem {
                    txid,
                    decision: Decision::Approve,
                })
                .collect(),
        )
    }

    fn proof_for(txid: Txid) -> TimeProof {
        let b = batch(&[txid]);
        let levels = b.verify().unwrap();
        TimeProof {
            chain_id: CHAIN,
            txid,
            votes: vec![b.cert(&levels, 0)],
        }
    }

    /// A round of writes touching every table: one locked, one pending and
    /// one finalized spend, two vote batches.
    fn sample_writes() -> Vec<Write> {
        let locked = tx_spending(outpoint(1, 0), 400);
        let pending = tx_spending(outpoint(1, 1), 600);
        let finalized = tx_spending(outpoint(2, 0), 50);
        vec![
            Write::PutTransaction(locked.txid(), locked.clone()),
            Write::PutTransaction(pending.txid(), pending.clone()),
            Write::PutTransaction(finalized.txid(), finalized.clone()),
            Write::PutUtxo(
                outpoint(1, 0),
                entry(
                    500,
                    UtxoState::Locked {
                        txid: locked.txid(),
                    },
                ),
            ),
            Write::PutUtxo(
                outpoint(1, 1),
                entry(
                    700,
                    UtxoState::SpentPending {
                        txid: pending.txid(),
                        weight: 1,
                    },
                ),
            ),
            // A second input of the same pending transaction: listed once.
            Write::PutUtxo(
                outpoint(1, 2),
                entry(
                    1,
                    UtxoState::Locked {
                        txid: pending.txid(),
                    },
                ),
            ),
            Write::PutUtxo(
                outpoint(2, 0),
                entry(
                    60,
                    UtxoState::SpentFinalized {
                        txid: finalized.txid(),
                    },
                ),
            ),
            Write::AppendOwnVotes(batch(&[locked.txid()])),
            Write::PutProof(proof_for(finalized.txid())),
            Write::AppendOwnVotes(batch(&[pending.txid(), finalized.txid()])),
            // The finality log: the unconfirmed one is entry 1 of 3.
            Write::AppendFinality(Txid([9; 32])),
            Write::AppendFinality(finalized.txid()),
            Write::AppendFinality(Txid([8; 32])),
        ]
    }

    /// What the address index must hold for `address`, from a snapshot's
    /// `utxos`: the outputs not spent for good, by outpoint.
    /// Every stored output, by outpoint.
    fn stored_utxos(s: &LmdbStore) -> Vec<(OutPoint, UtxoEntry)> {
        let rtxn = s.env.read_txn().unwrap();
        let mut v = Vec::new();
        s.utxos
            .for_each(&rtxn, |op, e| {
                v.push((op, e));
                Ok(())
            })
            .unwrap();
        v
    }

    /// What the address index must hold for `address`, from the stored
    /// outputs: the ones not spent for good, by outpoint.
    fn expected_index(
        utxos: &[(OutPoint, UtxoEntry)],
        address: &Address,
    ) -> Vec<(OutPoint, UtxoEntry)> {
        let mut v: Vec<_> = utxos
            .iter()
            .filter(|(_, e)| e.output.address == *address && !e.state.is_spent_for_good())
            .copied()
            .collect();
        v.sort_by_key(|(op, _)| *op);
        v
    }

    /// Every key of the address index, in order.
    fn index_keys(s: &LmdbStore) -> Vec<AddressUtxoKey> {
        s.address_utxos.keys(&s.env.read_txn().unwrap()).unwrap()
    }

    /// The index holds exactly the live stored outputs, for every address.
    fn assert_index_matches(s: &LmdbStore) {
        let utxos = stored_utxos(s);
        let mut want: Vec<AddressUtxoKey> = utxos
            .iter()
            .filter(|(_, e)| !e.state.is_spent_for_good())
            .map(|(op, e)| AddressUtxoKey(e.output.address, *op))
            .collect();
        want.sort();
        assert_eq!(index_keys(s), want);
        let r = s.state_reader();
        let addresses: HashSet<Address> = utxos.iter().map(|(_, e)| e.output.address).collect();
        for a in addresses {
            assert_eq!(
                r.address_utxos(&a, usize::MAX).unwrap(),
                expected_index(&utxos, &a)
            );
        }
    }

    fn paying(address: u8, amount: u64, state: UtxoState) -> UtxoEntry {
        UtxoEntry {
            output: TxOutput {
                amount,
                address: Address([address; 20]),
            },
            state,
        }
    }

    /// The index follows every state change, in the transaction that makes
    /// it; an address's outputs come back by outpoint, cut at the limit;
    /// the index survives a reopen.
    #[test]
    fn address_index_follows_state_changes_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Address([0xa0; 20]), Address([0xb0; 20]));
        let t = Txid([0x55; 32]);
        {
            let mut s = open(dir.path());
            s.init(&genesis(CHAIN)).unwrap();
            let r = s.state_reader();
            let genesis_addr = Address([3; 20]);
            assert_eq!(
                r.address_utxos(&genesis_addr, 10).unwrap().len(),
                2,
                "genesis indexed"
            );
            // Five outputs of `a` written out of order, two of `b`.
            let writes: Vec<Write> = [4u8, 1, 3, 0, 2]
                .iter()
                .map(|&n| {
                    Write::PutUtxo(
                        outpoint(0x40 + n, 0),
                        paying(0xa0, 10 + n as u64, UtxoState::Unspent),
                    )
                })
                .chain((0..2).map(|v| {
                    Write::PutUtxo(outpoint(0x50, v), paying(0xb0, 1, UtxoState::Unspent))
                }))
                .collect();
            s.apply(&writes).unwrap();
            let got = r.address_utxos(&a, usize::MAX).unwrap();
            let ops: Vec<OutPoint> = got.iter().map(|(op, _)| *op).collect();
            assert_eq!(
                ops,
                (0..5).map(|n| outpoint(0x40 + n, 0)).collect::<Vec<_>>(),
                "by outpoint"
            );
            assert_eq!(got[0].1, paying(0xa0, 10, UtxoState::Unspent));
            assert_eq!(
                r.address_utxos(&a, 2).unwrap(),
                got[..2].to_vec(),
                "the limit cuts"
            );
            assert_eq!(r.address_utxos(&a, 0).unwrap(), vec![]);
            assert_eq!(r.address_utxos(&Address([0xa1; 20]), 10).unwrap(), vec![]);
            // Locked and pending stay listed, with their new state; final
            // and confirmed spends leave the index.
            s.apply(&[
                Write::PutUtxo(
                    outpoint(0x40, 0),
                    paying(0xa0, 10, UtxoState::Locked { txid: t }),
                ),
                Write::PutUtxo(
                    outpoint(0x41, 0),
                    paying(0xa0, 11, UtxoState::SpentPending { txid: t, weight: 3 }),
                ),
                Write::PutUtxo(
                    outpoint(0x42, 0),
                    paying(0xa0, 12, UtxoState::SpentFinalized { txid: t }),
                ),
                Write::PutUtxo(
                    outpoint(0x50, 1),
                    paying(0xb0, 1, UtxoState::Confirmed { txid: t, height: 9 }),
                ),
            ])
            .unwrap();
            let got = r.address_utxos(&a, usize::MAX).unwrap();
            assert_eq!(got.len(), 4);
            assert_eq!(got[0].1.state, UtxoState::Locked { txid: t });
            assert_eq!(
                got[1].1.state,
                UtxoState::SpentPending { txid: t, weight: 3 }
            );
            assert!(got.iter().all(|(op, _)| *op != outpoint(0x42, 0)));
            assert_eq!(r.address_utxos(&b, 10).unwrap().len(), 1);
            // Point reads: known, spent and unknown outpoints, in the order asked.
            assert_eq!(
                r.utxo_states(&[outpoint(0x42, 0), outpoint(0x77, 0), outpoint(0x40, 0)])
                    .unwrap(),
                vec![
                    (
                        outpoint(0x42, 0),
                        Some(paying(0xa0, 12, UtxoState::SpentFinalized { txid: t }))
                    ),
                    (outpoint(0x77, 0), None),
                    (
                        outpoint(0x40, 0),
                        Some(paying(0xa0, 10, UtxoState::Locked { txid: t }))
                    ),
                ]
            );
            assert_index_matches(&s);
            // Changes that leave an output's membership as it is (skipped
            // in the index) next to ones that change it, in one batch and
            // across batches: a lock released, a spend confirmed after it
            // was final, an output created, locked and spent in one batch.
            s.apply(&[
                Write::PutUtxo(outpoint(0x40, 0), paying(0xa0, 10, UtxoState::Unspent)),
                Write::PutUtxo(
                    outpoint(0x42, 0),
                    paying(
                        0xa0,
                        12,
                        UtxoState::Confirmed {
                            txid: t,
                            height: 10,
                        },
                    ),
                ),
                Write::PutUtxo(outpoint(0x60, 0), paying(0xa0, 5, UtxoState::Unspent)),
                Write::PutUtxo(
                    outpoint(0x60, 0),
                    paying(0xa0, 5, UtxoState::Locked { txid: t }),
                ),
                Write::PutUtxo(
                    outpoint(0x60, 0),
                    paying(0xa0, 5, UtxoState::SpentFinalized { txid: t }),
                ),
                Write::PutUtxo(
                    outpoint(0x61, 0),
                    paying(0xa0, 6, UtxoState::SpentFinalized { txid: t }),
                ),
                Write::PutUtxo(outpoint(0x61, 0), paying(0xa0, 6, UtxoState::Unspent)),
            ])
            .unwrap();
            assert_index_matches(&s);
            let listed: Vec<OutPoint> = r
                .address_utxos(&a, usize::MAX)
                .unwrap()
                .iter()
                .map(|(op, _)| *op)
                .collect();
            assert!(listed.contains(&outpoint(0x40, 0)) && listed.contains(&outpoint(0x61, 0)));
            assert!(!listed.contains(&outpoint(0x42, 0)) && !listed.contains(&outpoint(0x60, 0)));
        }
        let s = open(dir.path());
        assert_index_matches(&s);
        assert_eq!(
            s.state_reader()
                .address_utxos(&a, usize::MAX)
                .unwrap()
                .len(),
            5
        );
        // Another thread reads while this one writes: LMDB readers never wait.
        let r = s.state_reader();
        let n = std::thread::spawn(move || r.address_utxos(&a, usize::MAX).unwrap().len())
            .join()
            .unwrap();
        assert_eq!(n, 5);
    }

    /// A damaged index is a typed error of the read, never a panic: a key
    /// whose output is missing, and a key of the wrong length.
    #[test]
    fn a_damaged_address_index_is_a_corrupt_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let a = Address([0xa0; 20]);
        s.put_raw_address_index_key(&AddressUtxoKey(a, outpoint(1, 0)).to_key());
        assert_eq!(
            corrupt_table(s.state_reader().address_utxos(&a, 10)),
            TABLE_ADDRESS_UTXOS
        );
        let b = Address([0xb0; 20]);
        s.put_raw_address_index_key(&b.0);
        assert_eq!(
            corrupt_table(s.state_reader().address_utxos(&b, 10)),
            TABLE_ADDRESS_UTXOS
        );
        // Other addresses are not touched by either.
        assert_eq!(
            s.state_reader()
                .address_utxos(&Address([0xc0; 20]), 10)
                .unwrap(),
            vec![]
        );
    }

    /// A database written in format version 1 (no address index) is given
    /// its index at open, and then carries version 2.
    #[test]
    fn version_1_database_gets_its_address_index_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let t = Txid([0x55; 32]);
        {
            let mut s = open(dir.path());
            s.init(&genesis(CHAIN)).unwrap();
            let mut writes = sample_writes();
            // More than one migration page of outputs, over a few addresses.
            writes.extend((0..(MIGRATION_PAGE as u32 + 10)).map(|i| {
                let state = if i % 3 == 0 {
                    UtxoState::SpentFinalized { txid: t }
                } else {
                    UtxoState::Unspent
                };
                Write::PutUtxo(outpoint(0x60, i), paying((i % 5) as u8, 1, state))
            }));
            s.apply(&writes).unwrap();
            // Back to version 1: no index table contents, version 1.
            let mut wtxn = s.env.write_txn().unwrap();
            s.address_utxos.db.clear(&mut wtxn).unwrap();
            s.meta
                .put(&mut wtxn, &MetaKey::FormatVersion, &1, &mut Vec::new())
                .unwrap();
            wtxn.commit().unwrap();
        }
        let s = open(dir.path());
        let rtxn = s.env.read_txn().unwrap();
        assert_eq!(
            s.meta.get(&rtxn, &MetaKey::FormatVersion).unwrap(),
            Some(FORMAT_VERSION)
        );
        drop(rtxn);
        assert!(
            stored_utxos(&s).len() > MIGRATION_PAGE,
            "more than one page read"
        );
        assert_index_matches(&s);
        // Opened again: nothing to do, the same index.
        let before = index_keys(&s);
        drop(s);
        let s = open(dir.path());
        assert_eq!(index_keys(&s), before);
    }

    /// Snapshots with their unordered parts sorted, for comparison.
    fn normalized(mut s: Snapshot) -> Snapshot {
        s.held_utxos.sort_by_key(|(op, _)| *op);
        s.pending_transactions.sort_by_key(|t| t.txid());
        s.unconfirmed_transactions.sort_by_key(|t| t.txid());
        s.unproven_transactions.sort_by_key(|t| t.txid());
        s.finalized.sort();
        s
    }

    fn assert_same(a: Snapshot, b: Snapshot) {
        let (a, b) = (normalized(a), normalized(b));
        assert_eq!(a.held_utxos, b.held_utxos);
        assert_eq!(a.pending_transactions, b.pending_transactions);
        assert_eq!(a.unconfirmed_transactions, b.unconfirmed_transactions);
        assert_eq!(a.unproven_transactions, b.unproven_transactions);
        assert_eq!(a.finalized, b.finalized);
        assert_eq!(a.own_votes, b.own_votes);
        assert_eq!(a.unconfirmed_log_from, b.unconfirmed_log_from);
    }

    /// Block records survive a reopen; the snapshot holds the tip, the own
    /// consensus records and candidates above it, like the memory store.
    #[test]
    fn block_records_survive_reopen_and_match_memory_store() {
        use timecoin_core::blocks::{
            Block, BlockHash, CommitCertificate, OwnBlockVote, SignedStep, Slot,
        };
        use timecoin_core::protocol::types::PublicKey;
        let block = |h: u64| {
            Block::new(
                CHAIN,
                1,
                h,
                BlockHash([h as u8; 32]),
                h,
                PublicKey([1; 32]),
                vec![],
            )
        };
        let committed = |h: u64| CommittedBlock {
            block: block(h),
            cert: CommitCertificate {
                slot: Slot {
                    chain_id: CHAIN,
                    epoch: 1,
                    height: h,
                    round: 0,
                },
                block: block(h).hash(),
                precommits: vec![(PublicKey([2; 32]), [3; 64])],
            },
        };
        let double_vote = |height: u64| {
            let v = |b| timecoin_core::blocks::BlockVote {
                slot: Slot {
                    chain_id: CHAIN,
                    epoch: 1,
                    height,
                    round: 0,
                },
                kind: timecoin_core::blocks::VoteKind::Prevote,
                block: b,
                voter: PublicKey([4; 32]),
                signature: [5; 64],
            };
            BlockEvidence::DoubleVote {
                first: v(None),
                second: v(Some(BlockHash([6; 32]))),
            }
        };
        let vote = |height: u64, round: u32, step, block| OwnBlockVote {
            height,
            round,
            step,
            block,
        };
        let writes = vec![
            Write::AppendOwnBlockVote(vote(1, 0, SignedStep::Prevote, Some(block(1).hash()))),
            Write::PutBlock(Box::new(committed(1))),
            Write::PutBlock(Box::new(committed(2))),
            Write::AppendOwnBlockVote(vote(3, 1, SignedStep::Precommit, None)),
            Write::AppendOwnBlockVote(vote(3, 0, SignedStep::Prevote, Some(block(3).hash()))),
            Write::PutCandidate(Box::new(Candidate {
                block: block(3),
                polka: vec![],
            })),
            Write::PutCandidate(Box::new(Candidate {
                block: block(2),
                polka: vec![],
            })),
            Write::PutBlockEvidence(Box::new(double_vote(3))),
            Write::PutBlockEvidence(Box::new(double_vote(2))),
            // The same key again: one record.
            Write::PutBlockEvidence(Box::new(double_vote(3))),
        ];
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = open(dir.path());
            s.init(&genesis(CHAIN)).unwrap();
            s.apply(&writes).unwrap();
        }
        let s = open(dir.path());
        let mut reference = MemoryStore::new();
        reference.init(&genesis(CHAIN)).unwrap();
        reference.apply(&writes).unwrap();
        let (a, b) = (s.load().unwrap().blocks, reference.load().unwrap().blocks);
        assert_eq!(a.tip, Some(committed(2)));
        assert_eq!(
            a.own_votes,
            vec![
                vote(3, 0, SignedStep::Prevote, Some(block(3).hash())),
                vote(3, 1, SignedStep::Precommit, None)
            ]
        );
        assert_eq!(a.candidates.len(), 1);
        assert_eq!(
            (&a.tip, &a.own_votes, &a.candidates),
            (&b.tip, &b.own_votes, &b.candidates)
        );
        assert_eq!(s.block(1).unwrap(), Some(committed(1)));
        assert_eq!(s.block(9).unwrap(), None);
        // Another thread's read-only view: by height, by hash, the tip.
        let r = s.chain_reader();
        let hash2 = committed(2).block.hash();
        let h = std::thread::spawn(move || {
            (
                r.height_of(&hash2).unwrap(),
                r.height_of(&BlockHash([0xee; 32])).unwrap(),
                r.tip().unwrap().map(|c| c.block.height()),
                r.block(1).unwrap(),
            )
        })
        .join()
        .unwrap();
        assert_eq!(h, (Some(2), None, Some(2), Some(committed(1))));
        assert!(a.fork.is_none());
        assert_eq!((a.evidence_count, b.evidence_count), (2, 2));
        assert_eq!((a.stop.clone(), b.stop.clone()), (None, None));
        let ev = s.block_evidence().unwrap();
        assert_eq!(ev, vec![double_vote(2), double_vote(3)], "by height");
        assert_eq!(ev, reference.block_evidence().unwrap());
        // Pruning below height 3 leaves the records at 3 and above.
        drop(s);
        let mut s = open(dir.path());
        let prune = [Write::PruneBlockRecords { below: 3 }];
        s.apply(&prune).unwrap();
        reference.apply(&prune).unwrap();
        let mut left = Vec::new();
        s.own_block_votes
            .for_each(&s.env.read_txn().unwrap(), |k, _| {
                left.push(k.height);
                Ok(())
            })
            .unwrap();
        assert_eq!(left, vec![3, 3], "the vote at height 1 is gone");
        let mut cands = Vec::new();
        s.block_candidates
            .for_each(&s.env.read_txn().unwrap(), |k, _| {
                cands.push(k.0);
                Ok(())
            })
            .unwrap();
        assert_eq!(cands, vec![3], "the candidate at height 2 is gone");
        let (a, b) = (s.load().unwrap().blocks, reference.load().unwrap().blocks);
        assert_eq!(
            (&a.tip, &a.own_votes, &a.candidates),
            (&b.tip, &b.own_votes, &b.candidates)
        );
    }

    /// Conflicting-approvals evidence is kept across a reopen, one record
    /// per voter and output, like the memory store.
    #[test]
    fn approval_evidence_survives_reopen_and_matches_memory_store() {
        use timecoin_core::protocol::evidence::ConflictingApprovals;
        let prev = outpoint(1, 0);
        let (a, b) = (tx_spending(prev, 10), tx_spending(prev, 20));
        let cert = |txid: Txid| proof_for(txid).votes[0].clone();
        let e = ConflictingApprovals {
            outpoint: prev,
            first: cert(a.txid()),
            first_tx: a.clone(),
            second: cert(b.txid()),
            second_tx: b,
        };
        let mut again = e.clone();
        again.first_tx = a;
        let writes = [
            Write::PutApprovalEvidence(Box::new(e.clone())),
            Write::PutApprovalEvidence(Box::new(again)),
        ];
        let dir = tempfile::tempdir().unwrap();
        let mut reference = MemoryStore::new();
        reference.init(&genesis(CHAIN)).unwrap();
        reference.apply(&writes).unwrap();
        {
            let mut s = open(dir.path());
            s.init(&genesis(CHAIN)).unwrap();
            s.apply(&writes).unwrap();
        }
        let s = open(dir.path());
        assert_eq!(s.approval_evidence().unwrap(), vec![e]);
        assert_eq!(
            s.approval_evidence().unwrap(),
            reference.approval_evidence().unwrap()
        );
    }

    /// The stop after a contradicting block survives a reopen (the first
    /// record is kept) until it is cleared.
    #[test]
    fn block_stop_survives_reopen_until_cleared() {
        use timecoin_core::blocks::{BlockHash, Contradicted};
        let stop = |h: u64| Contradiction {
            height: h,
            block: BlockHash([h as u8; 32]),
            txid: Txid([1; 32]),
            what: Contradicted::FinalPayment(Txid([2; 32])),
        };
        let dir = tempfile::tempdir().unwrap();
        let mut reference = MemoryStore::new();
        reference.init(&genesis(CHAIN)).unwrap();
        let writes = [Write::PutBlockStop(stop(5)), Write::PutBlockStop(stop(4))];
        reference.apply(&writes).unwrap();
        {
            let mut s = open(dir.path());
            s.init(&genesis(CHAIN)).unwrap();
            s.apply(&writes).unwrap();
        }
        let mut s = open(dir.path());
        assert_eq!(s.load().unwrap().blocks.stop, Some(stop(5)));
        assert_eq!(reference.load().unwrap().blocks.stop, Some(stop(5)));
        assert_eq!(s.clear_block_stop().unwrap(), Some(stop(5)));
        assert_eq!(s.clear_block_stop().unwrap(), None);
        drop(s);
        let s = open(dir.path());
        assert_eq!(s.load().unwrap().blocks.stop, None);
        reference.apply(&[Write::ClearBlockStop]).unwrap();
        assert_eq!(reference.load().unwrap().blocks.stop, None);
    }

    /// A payment a block confirmed whose proof is not stored is listed in
    /// the snapshot (the engine still wants its proof); one with its proof
    /// is not. The same as the memory store.
    #[test]
    fn snapshot_lists_confirmed_payments_without_their_proof() {
        let dir = tempfile::tempdir().unwrap();
        let proven = tx_spending(outpoint(3, 0), 10);
        let unproven = tx_spending(outpoint(3, 1), 10);
        let confirmed = |txid| UtxoState::Confirmed { txid, height: 4 };
        let writes = vec![
            Write::PutTransaction(proven.txid(), proven.clone()),
            Write::PutTransaction(unproven.txid(), unproven.clone()),
            Write::PutUtxo(outpoint(3, 0), entry(20, confirmed(proven.txid()))),
            Write::PutUtxo(outpoint(3, 1), entry(20, confirmed(unproven.txid()))),
            // A second input of the unproven one: listed once.
            Write::PutUtxo(outpoint(3, 2), entry(20, confirmed(unproven.txid()))),
            Write::PutProof(proof_for(proven.txid())),
        ];
        let mut reference = MemoryStore::new();
        reference.init(&genesis(CHAIN)).unwrap();
        reference.apply(&writes).unwrap();
        {
            let mut s = open(dir.path());
            s.init(&genesis(CHAIN)).unwrap();
            s.apply(&writes).unwrap();
        }
        let s = open(dir.path());
        assert_eq!(
            s.load().unwrap().unproven_transactions,
            vec![unproven.clone()]
        );
        assert_eq!(
            reference.load().unwrap().unproven_transactions,
            vec![unproven]
        );
    }

    #[test]
    fn apply_survives_reopen_and_matches_memory_store() {
        let dir = tempfile::tempdir().unwrap();
        let writes = sample_writes();
        let mut reference = MemoryStore::new();
        reference.init(&genesis(CHAIN)).unwrap();
        reference.apply(&writes).unwrap();
        {
            let mut s = open(dir.path());
            s.init(&genesis(CHAIN)).unwrap();
            s.apply(&writes).unwrap();
        }
        let s = open(dir.path());
        assert_eq!(s.chain_id().unwrap(), Some(CHAIN));
        let snap = s.load().unwrap();
        assert_eq!(stored_utxos(&s), reference.utxos());
        assert_eq!(snap.pending_transactions.len(), 2);
        assert_eq!(snap.finalized.len(), 1);
        assert_eq!(snap.own_votes.len(), 2);
        // The finalized spend is final but in no block yet.
        assert_eq!(snap.unconfirmed_transactions.len(), 1);
        assert_eq!(snap.unconfirmed_log_from, 1, "where paging in starts");
        assert_same(snap, reference.load().unwrap());

        for w in &writes {
            match w {
                Write::PutTransaction(id, tx) => {
                    assert_eq!(s.get_transaction(id).unwrap().as_ref(), Some(tx))
                }
                Write::PutProof(p) => assert_eq!(s.get_proof(&p.txid).unwrap().as_ref(), Some(p)),
                _ => {}
            }
        }
        assert_eq!(s.get_proof(&Txid([0xee; 32])).unwrap(), None);
        assert_eq!(s.get_transaction(&Txid([0xee; 32])).unwrap(), None);
    }

    #[test]
    fn vote_log_appends_across_reopens_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let batches: Vec<VoteBatch> = (0..5u8).map(|i| batch(&[Txid([i; 32])])).collect();
        for b in &batches {
            let mut s = open(dir.path());
            s.apply(&[Write::AppendOwnVotes(b.clone())]).unwrap();
        }
        let s = open(dir.path());
        assert_eq!(s.load().unwrap().own_votes, batches);
        let rtxn = s.env.read_txn().unwrap();
        assert_eq!(
            s.own_votes.keys(&rtxn).unwrap(),
            (0..5).map(VoteSeq).collect::<Vec<_>>()
        );
    }

    #[test]
    fn init_is_idempotent_and_refuses_another_chain() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = open(dir.path());
            assert_eq!(s.chain_id().unwrap(), None);
            s.init(&genesis(CHAIN)).unwrap();
            s.apply(&[Write::PutUtxo(
                outpoint(1, 0),
                entry(
                    500,
                    UtxoState::Locked {
                        txid: Txid([5; 32]),
                    },
                ),
            )])
            .unwrap();
        }
        let mut s = open(dir.path());
        // The same chain again: accepted, and the genesis is not rewritten.
        s.init(&genesis(CHAIN)).unwrap();
        let snap = s.load().unwrap();
        assert_eq!(
            snap.held_utxos[0].1.state,
            UtxoState::Locked {
                txid: Txid([5; 32])
            }
        );
        assert!(matches!(
            s.init(&genesis(CHAIN + 1)),
            Err(StoreError::WrongChain {
                found: CHAIN,
                expected
            }) if expected == CHAIN + 1
        ));
    }

    #[test]
    fn newer_format_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path());
            let mut wtxn = s.env.write_txn().unwrap();
            s.meta
                .put(
                    &mut wtxn,
                    &MetaKey::FormatVersion,
                    &(FORMAT_VERSION + 1),
                    &mut Vec::new(),
                )
                .unwrap();
            wtxn.commit().unwrap();
        }
        match LmdbStore::open(dir.path(), LmdbOptions::default()) {
            Err(StoreError::FormatVersion { found, supported }) => {
                assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION))
            }
            other => panic!("expected FormatVersion, got {other:?}"),
        }
    }

    #[test]
    fn missing_format_version_with_data_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = open(dir.path());
            s.init(&genesis(CHAIN)).unwrap();
            let mut wtxn = s.env.write_txn().unwrap();
            s.meta
                .db
                .delete(&mut wtxn, MetaKey::FormatVersion.to_key())
                .unwrap();
            wtxn.commit().unwrap();
        }
        assert!(matches!(
            LmdbStore::open(dir.path(), LmdbOptions::default()),
            Err(StoreError::Corrupt { table: "meta", .. })
        ));
    }

    #[test]
    fn second_open_in_one_process_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _s = open(dir.path());
        assert!(LmdbStore::open(dir.path(), LmdbOptions::default()).is_err());
    }

    #[test]
    fn apply_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        s.init(&genesis(CHAIN)).unwrap();
        let before = s.load().unwrap();
        let tx = tx_spending(outpoint(1, 0), 400);
        let empty_batch = VoteBatch {
            items: vec![],
            ..batch(&[tx.txid()])
        };
        let bad_rounds = [
            // The last write cannot be stored (a decoder would refuse it).
            vec![
                Write::PutTransaction(tx.txid(), tx.clone()),
                Write::PutUtxo(
                    outpoint(1, 0),
                    entry(500, UtxoState::Locked { txid: tx.txid() }),
                ),
                Write::AppendOwnVotes(batch(&[tx.txid()])),
                Write::AppendOwnVotes(empty_batch),
            ],
            // A transaction filed under another txid, after a final spend
            // that would take an output out of the address index.
            vec![
                Write::PutUtxo(
                    outpoint(1, 1),
                    entry(700, UtxoState::SpentFinalized { txid: tx.txid() }),
                ),
                Write::AppendOwnVotes(batch(&[tx.txid()])),
                Write::PutTransaction(Txid([1; 32]), tx.clone()),
            ],
        ];
        let index_before = index_keys(&s);
        for writes in &bad_rounds {
            assert!(matches!(s.apply(writes), Err(StoreError::Corrupt { .. })));
            assert_same(s.load().unwrap(), before.clone());
            assert_eq!(
                index_keys(&s),
                index_before,
                "the index is not touched either"
            );
        }
        drop(s);
        let mut s = open(dir.path());
        assert_same(s.load().unwrap(), before);
        // The refused rounds consumed no vote sequence numbers.
        s.apply(&[Write::AppendOwnVotes(batch(&[tx.txid()]))])
            .unwrap();
        let rtxn = s.env.read_txn().unwrap();
        assert_eq!(s.own_votes.keys(&rtxn).unwrap(), vec![VoteSeq(0)]);
    }

    /// Writes raw bytes under a key of one table, bypassing the encoders.
    fn poke(s: &LmdbStore, table: &str, key: &[u8], value: &[u8]) {
        let mut wtxn = s.env.write_txn().unwrap();
        let db = match table {
            TABLE_UTXOS => s.utxos.db,
            TABLE_TRANSACTIONS => s.transactions.db,
            TABLE_PROOFS => s.proofs.db,
            TABLE_OWN_VOTES => s.own_votes.db,
            _ => s.meta.db,
        };
        db.put(&mut wtxn, key, value).unwrap();
        wtxn.commit().unwrap();
    }

    fn corrupt_table<T: fmt::Debug>(r: Result<T, StoreError>) -> &'static str {
        match r {
            Err(StoreError::Corrupt { table, .. }) => table,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        let t = Txid([4; 32]);
        let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
            // Unknown UTXO state tag.
            (TABLE_UTXOS, outpoint(1, 0).to_key().to_vec(), {
                let mut v = entry(1, UtxoState::Unspent).to_value().unwrap();
                v[TxOutput::ENCODED_LEN] = 0xff;
                v
            }),
            // Key of the wrong length.
            (
                TABLE_UTXOS,
                vec![1, 2, 3],
                entry(1, UtxoState::Unspent).to_value().unwrap(),
            ),
            // Truncated vote batch.
            (TABLE_OWN_VOTES, VoteSeq(0).to_key().to_vec(), {
                let v = batch(&[t]).to_value().unwrap();
                v[..v.len() - 1].to_vec()
            }),
            // A hole in the vote log.
            (
                TABLE_OWN_VOTES,
                VoteSeq(3).to_key().to_vec(),
                batch(&[t]).to_value().unwrap(),
            ),
            // A proof key that is not a txid.
            (TABLE_PROOFS, vec![0; 31], proof_for(t).to_value().unwrap()),
        ];
        for (table, k, v) in cases {
            let dir = tempfile::tempdir().unwrap();
            let s = open(dir.path());
            poke(&s, table, &k, &v);
            assert_eq!(corrupt_table(s.load()), table, "{table} {k:?}");
        }

        // Pending transaction with garbage bytes: load and get both refuse.
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path());
        let tx = tx_spending(outpoint(1, 0), 1);
        s.apply(&[Write::PutUtxo(
            outpoint(1, 0),
            entry(1, UtxoState::Locked { txid: tx.txid() }),
        )])
        .unwrap();
        poke(&s, TABLE_TRANSACTIONS, &tx.txid().0, &[0xff; 7]);
        assert_eq!(corrupt_table(s.load()), TABLE_TRANSACTIONS);
        assert_eq!(
            corrupt_table(s.get_transaction(&tx.txid())),
            TABLE_TRANSACTIONS
        );

        // Well-formed records filed under the wrong txid.
        let other = tx_spending(outpoint(1, 1), 2);
        poke(&s, TABLE_TRANSACTIONS, &tx.txid().0, &other.to_bytes());
        assert_eq!(
            corrupt_table(s.get_transaction(&tx.txid())),
            TABLE_TRANSACTIONS
        );
        poke(
            &s,
            TABLE_PROOFS,
            &t.0,
            &proof_for(Txid([5; 32])).to_value().unwrap(),
        );
        assert_eq!(corrupt_table(s.get_proof(&t)), TABLE_PROOFS);

        // A corrupt meta value fails the open.
        let dir = tempfile::tempdir().unwrap();
        poke(
            &open(dir.path()),
            TABLE_META,
            MetaKey::FormatVersion.to_key(),
            &[1],
        );
        assert_eq!(
            corrupt_table(LmdbStore::open(dir.path(), LmdbOptions::default())),
            TABLE_META
        );
    }

    #[test]
    fn empty_apply_and_small_map_work() {
        let dir = tempfile::tempdir().unwrap();
        let options = LmdbOptions {
            map_size: 1 << 20,
            no_sync: true,
        };
        let mut s = LmdbStore::open(dir.path(), options).unwrap();
        s.apply(&[]).unwrap();
        s.apply(&sample_writes()).unwrap();
        assert_eq!(s.load().unwrap().own_votes.len(), 2);
    }

    fn arb_write() -> impl Strategy<Value = Write> {
        let txs: Vec<Transaction> = (0..4u8).map(|i| tx_spending(outpoint(i, 0), 10)).collect();
        let txids: Vec<Txid> = txs.iter().map(|t| t.txid()).collect();
        let pick_txid = prop::sample::select(txids.clone());
        let state = prop_oneof![
            Just(UtxoState::Unspent),
            pick_txid
                .clone()
                .prop_map(|txid| UtxoState::Locked { txid }),
            (pick_txid.clone(), any::<u64>())
                .prop_map(|(txid, weight)| UtxoState::SpentPending { txid, weight }),
            pick_txid
                .clone()
                .prop_map(|txid| UtxoState::SpentFinalized { txid }),
            (pick_txid.clone(), any::<u64>())
                .prop_map(|(txid, height)| UtxoState::Confirmed { txid, height }),
        ];
        prop_oneof![
            (0..4u8, 0..3u32, any::<u64>(), state)
                // Two addresses; an outpoint always pays the same one (an
                // output's address never changes).
                .prop_map(|(n, v, amount, st)| Write::PutUtxo(
                    outpoint(n, v),
                    paying(3 + (n >= 2) as u8, amount, st)
                )),
            prop::sample::select(txs).prop_map(|t| Write::PutTransaction(t.txid(), t)),
            pick_txid
                .clone()
                .prop_map(|t| Write::PutProof(proof_for(t))),
            pick_txid.prop_map(|t| Write::AppendOwnVotes(batch(&[t]))),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Any sequence of rounds, with reopens in between, loads back exactly
        /// what the in-memory reference store holds.
        #[test]
        fn matches_memory_store(
            rounds in prop::collection::vec(prop::collection::vec(arb_write(), 0..6), 1..5),
            reopen_after in any::<prop::sample::Index>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let options = LmdbOptions { no_sync: true, ..LmdbOptions::default() };
            let mut reference = MemoryStore::new();
            reference.init(&genesis(CHAIN)).unwrap();
            let mut s = LmdbStore::open(dir.path(), options.clone()).unwrap();
            s.init(&genesis(CHAIN)).unwrap();
            let reopen_at = reopen_after.index(rounds.len());
            for (i, writes) in rounds.iter().enumerate() {
                reference.apply(writes).unwrap();
                s.apply(writes).unwrap();
                if i == reopen_at {
                    drop(s);
                    s = LmdbStore::open(dir.path(), options.clone()).unwrap();
                }
            }
            let snap = reference.load().unwrap();
            assert_index_matches(&s);
            assert_same(s.load().unwrap(), snap);
        }
    }
}
