//! [`DurableStore`]: the store the core thread runs on. A round is durable
//! once its write-ahead log record is `fdatasync`'ed ([`WriteLog::append`]:
//! one sequential write); LMDB gets it later, off the critical path, from
//! the store-writer thread, which applies every round waiting in one synced
//! transaction (group commit across rounds) together with the highest
//! sequence number applied ([`LmdbStore::apply_rounds`]).
//!
//! Owns the store-writer thread, the log's appending side and the overlay:
//! the rounds handed over but not yet acknowledged by the writer, indexed
//! for the reads the state machine makes ([`Store`]'s `get_proof`,
//! `get_transaction`, `finality_log`, `block` and evidence lists), so the
//! core thread reads its own writes before LMDB holds them. Other threads
//! read LMDB: wallet and RPC UTXO queries through
//! [`DurableStore::state_reader`], which waits until LMDB holds every round
//! handed over when the query began (so a wallet reads at least the state
//! of every outcome it heard); blocks through [`super::lmdb::ChainReader`]
//! and the metrics' sizes without waiting, lagging by what the writer has
//! not applied yet ([`WRITER_INTERVAL`] plus a commit, at most
//! [`MAX_PENDING_ROUNDS`] rounds or [`MAX_PENDING_BYTES`]).
//!
//! Bounded: when the writer falls that far behind, [`DurableStore::commit`]
//! waits for it (backpressure). It must never let a round's transmits leave
//! before its record is synced (the caller sends after `commit` returns),
//! and never apply a record twice: [`recover`] replays only records above
//! the database's applied sequence number.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::lmdb::{LmdbOptions, LmdbStore};
use super::records::{ApprovalEvidenceKey, EvidenceKey, TableKey};
use super::write_codec::decode_writes;
use super::write_log::{self, WriteLog};
use super::{CommittedBlock, Genesis, Snapshot, Store, StoreError, Write};
use crate::protocol::evidence::{ConflictingApprovals, Equivocation};
use crate::protocol::timeproof::TimeProof;
use crate::protocol::types::OutPoint;
use crate::protocol::types::{Transaction, Txid};
use crate::protocol::utxo::UtxoEntry;
use timecoin_core::blocks::BlockEvidence;
use timecoin_core::storage::UtxoSource;

/// Most rounds handed to the writer and not yet applied; the core waits
/// beyond this.
pub const MAX_PENDING_ROUNDS: usize = 4_096;
/// Most payload bytes handed to the writer and not yet applied; the core
/// waits beyond this (a single larger round is still taken once nothing
/// else waits).
pub const MAX_PENDING_BYTES: usize = 64 << 20;

/// Shortest time between two of the writer's LMDB commits: rounds that
/// arrive meanwhile go in the next one. Fewer, larger commits write each
/// hot B-tree page (branches, the free list, leaves two payments share)
/// once per batch and sync less often, which leaves the disk to the log's
/// syncs. In the 4-node load test at 1,000 payments/s (docs/BENCHMARKS.md,
/// 2026-12-07; `bench/scripts/round-work.sh`, 4 pairs): 100 ms against 20
/// ms took the devnet's disk writes from 108-113 to 82-97 MB/s, the log's
/// mean sync from 2.2-3.3 to 1.3-2.4 ms and the finality p50 from 22-33 to
/// 17-24 ms. (On 2026-12-02's faster disk 20 ms had beaten committing
/// whenever work waited, p50 7.1 to 5.6-6.2 ms, and 100 ms had given a
/// worse p90.) Other threads' readers that do not wait for the writer
/// (block and metrics reads) lag by about this; UTXO queries make it
/// commit at once ([`DurableStore::state_reader`]).
pub const WRITER_INTERVAL: Duration = Duration::from_millis(100);

/// The write-ahead log directory beside the LMDB directory `db`.
pub fn wal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("wal")
}

/// Opens the LMDB store in `db_dir` and replays the log in `wal_dir` into
/// it: the records above its applied sequence number, in one synced
/// transaction; then deletes the log. Returns the store and the sequence
/// number the next log record gets. The data directory must be locked
/// (no masternode running on it).
pub fn recover(
    db_dir: &Path,
    wal_dir: &Path,
    options: LmdbOptions,
) -> Result<(LmdbStore, u64), StoreError> {
    let mut store = LmdbStore::open(db_dir, options)?;
    let applied = store.applied_seq()?;
    let mut rounds: Vec<Vec<Write>> = Vec::new();
    let mut last_replayed = applied;
    let last = write_log::replay(wal_dir, applied, |seq, payload| {
        let writes = decode_writes(payload).map_err(|e| StoreError::LogCorrupt {
            segment: wal_dir.display().to_string(),
            offset: 0,
            detail: format!("record {seq} passes its checksum but does not decode: {e}"),
        })?;
        rounds.push(writes);
        last_replayed = seq;
        Ok(())
    })?;
    if !rounds.is_empty() {
        let started = std::time::Instant::now();
        store.apply_rounds(rounds.iter().map(|r| r.as_slice()), last_replayed)?;
        tracing::info!(
            records = rounds.len(),
            from = applied + 1,
            to = last_replayed,
            ms = started.elapsed().as_millis() as u64,
            "write-ahead log replayed into the database"
        );
    }
    write_log::clear(wal_dir)?;
    let next = last.unwrap_or(0).max(last_replayed).max(applied) + 1;
    Ok((store, next))
}

/// A round handed to the writer.
struct Round {
    seq: u64,
    writes: Arc<[Write]>,
    bytes: usize,
}

/// What the core thread and the writer share.
#[derive(Default)]
struct Queue {
    /// Handed over, not yet taken by the writer.
    waiting: VecDeque<Round>,
    /// Handed over and not yet applied (taken ones included).
    pending_rounds: usize,
    pending_bytes: usize,
    /// Highest sequence number applied and committed.
    applied: u64,
    /// Why the writer stopped, if it failed.
    failed: Option<String>,
    /// No more rounds: apply what waits and stop.
    closing: bool,
    /// Stop without applying anything more (tests: a killed process).
    abandon: bool,
    /// Hold the writer (tests: reads before anything is applied).
    paused: bool,
    /// Highest sequence number handed over.
    handed: u64,
    /// A reader waits (a [`DurableStore::state_reader`] barrier): commit
    /// without waiting out the interval.
    urgent: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// The writer waits here for rounds.
    work: Condvar,
    /// The core waits here for the writer's progress.
    progress: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A poisoned lock means the writer panicked; the queue is still
        // consistent (every update is one assignment), so keep going.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The store-writer thread's loop.
/// The backlog is half its bound: the writer commits without waiting out
/// its interval.
fn pressed(q: &Queue) -> bool {
    q.pending_rounds * 2 >= MAX_PENDING_ROUNDS || q.pending_bytes * 2 >= MAX_PENDING_BYTES
}

fn writer_loop(mut store: LmdbStore, shared: Arc<Shared>) {
    let interval = WRITER_INTERVAL;
    let mut next_commit = Instant::now();
    loop {
        let batch: Vec<Round> = {
            let mut q = shared.lock();
            loop {
                if q.abandon {
                    return;
                }
                if !q.paused && !q.waiting.is_empty() {
                    let now = Instant::now();
                    // Wait out the interval unless the backlog presses or
                    // the node stops.
                    if now >= next_commit || pressed(&q) || q.closing || q.urgent {
                        q.urgent = false;
                        break q.waiting.drain(..).collect();
                    }
                    q = shared
                        .work
                        .wait_timeout(q, next_commit - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    continue;
                }
                if q.closing && !q.paused {
                    return; // and nothing waits
                }
                q = shared.work.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        next_commit = Instant::now() + interval;
        let Some(last) = batch.last().map(|r| r.seq) else {
            continue;
        };
        let result = store.apply_rounds(batch.iter().map(|r| &r.writes[..]), last);
        let mut q = shared.lock();
        match result {
            Ok(()) => {
                q.applied = last;
                q.pending_rounds -= batch.len();
                q.pending_bytes -= batch.iter().map(|r| r.bytes).sum::<usize>();
                shared.progress.notify_all();
            }
            Err(e) => {
                tracing::error!("store writer: applying log records up to {last} failed: {e}");
                q.failed = Some(e.to_string());
                shared.progress.notify_all();
                return;
            }
        }
    }
}

/// Waits until the writer applied every round handed over by now.
fn wait_applied(shared: &Shared) -> Result<(), StoreError> {
    let mut q = shared.lock();
    let target = q.handed;
    if q.applied >= target {
        return Ok(());
    }
    q.urgent = true;
    shared.work.notify_one();
    while q.applied < target && q.failed.is_none() && !q.abandon {
        q = shared
            .progress
            .wait_timeout(q, Duration::from_millis(100))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    DurableStore::failed(&q)
}

/// Where a handed-over write sits: its round's sequence number and its
/// index in the round.
type Slot = (u64, u32);

/// The rounds handed over and not yet known applied, indexed for the core
/// thread's reads.
#[derive(Default)]
struct Overlay {
    rounds: VecDeque<Round>,
    proofs: HashMap<Txid, Slot>,
    transactions: HashMap<Txid, Slot>,
    blocks: HashMap<u64, Slot>,
    /// Finality-log appends not known applied, in order.
    finality: VecDeque<(u64, Txid)>,
    /// Length of the finality log, these appends included.
    finality_head: u64,
}

impl Overlay {
    fn write(&self, (seq, idx): Slot) -> Option<&Write> {
        let front = self.rounds.front()?.seq;
        let round = self
            .rounds
            .get(usize::try_from(seq.checked_sub(front)?).ok()?)?;
        round.writes.get(idx as usize)
    }

    fn push(&mut self, round: Round) {
        for (i, w) in round.writes.iter().enumerate() {
            let slot = (round.seq, i as u32);
            match w {
                Write::PutProof(p) => {
                    self.proofs.insert(p.txid, slot);
                }
                Write::PutTransaction(t, _) => {
                    self.transactions.insert(*t, slot);
                }
                Write::PutBlock(b) => {
                    self.blocks.insert(b.block.height(), slot);
                }
                Write::AppendFinality(t) => {
                    self.finality.push_back((round.seq, *t));
                    self.finality_head += 1;
                }
                _ => {}
            }
        }
        self.rounds.push_back(round);
    }

    /// Drops the rounds LMDB holds (up to `applied`).
    fn prune(&mut self, applied: u64) {
        while self.rounds.front().is_some_and(|r| r.seq <= applied) {
            let r = self.rounds.pop_front().expect("front exists");
            for (i, w) in r.writes.iter().enumerate() {
                let slot = (r.seq, i as u32);
                let (map, key): (&mut HashMap<Txid, Slot>, Txid) = match w {
                    Write::PutProof(p) => (&mut self.proofs, p.txid),
                    Write::PutTransaction(t, _) => (&mut self.transactions, *t),
                    Write::PutBlock(b) => {
                        let h = b.block.height();
                        if self.blocks.get(&h) == Some(&slot) {
                            self.blocks.remove(&h);
                        }
                        continue;
                    }
                    _ => continue,
                };
                // Only if no later round wrote it again.
                if map.get(&key) == Some(&slot) {
                    map.remove(&key);
                }
            }
        }
        while self.finality.front().is_some_and(|(s, _)| *s <= applied) {
            self.finality.pop_front();
        }
    }

    /// The handed-over writes, oldest first.
    fn writes(&self) -> impl Iterator<Item = &Write> {
        self.rounds.iter().flat_map(|r| r.writes.iter())
    }
}

/// The UTXO writes handed over and not yet known applied, shared with the
/// engine's reader ([`DurableUtxos`]). The core thread is the only one that
/// changes it (in `commit` and `settle`) and reads through it.
#[derive(Default)]
struct UtxoOverlay {
    entries: HashMap<OutPoint, (u64, UtxoEntry)>,
    /// (round, output) in the order written: what `prune` walks.
    order: VecDeque<(u64, OutPoint)>,
}

impl UtxoOverlay {
    fn push(&mut self, seq: u64, writes: &[Write]) {
        for w in writes {
            if let Write::PutUtxo(op, e) = w {
                self.entries.insert(*op, (seq, *e));
                self.order.push_back((seq, *op));
            }
        }
    }

    fn prune(&mut self, applied: u64) {
        while let Some(&(seq, op)) = self.order.front() {
            if seq > applied {
                break;
            }
            self.order.pop_front();
            // Only if no later round wrote it again.
            if self.entries.get(&op).is_some_and(|(s, _)| *s == seq) {
                self.entries.remove(&op);
            }
        }
    }
}

fn lock_utxos(o: &Mutex<UtxoOverlay>) -> MutexGuard<'_, UtxoOverlay> {
    o.lock().unwrap_or_else(|e| e.into_inner())
}

/// The engine's [`UtxoSource`] on the node: the overlay's newest write of
/// an output, else LMDB. An output leaves the overlay only once the writer
/// applied its round, so one of the two always holds its newest state.
struct DurableUtxos {
    overlay: Arc<Mutex<UtxoOverlay>>,
    lmdb: super::lmdb::StateReader,
}

impl UtxoSource for DurableUtxos {
    fn utxo(&self, op: &OutPoint) -> Result<Option<UtxoEntry>, StoreError> {
        if let Some((_, e)) = lock_utxos(&self.overlay).entries.get(op) {
            return Ok(Some(*e));
        }
        self.lmdb.utxo(op)
    }
}

/// The node's store: the write-ahead log, the store-writer thread and the
/// overlay of rounds LMDB may not hold yet.
pub struct DurableStore {
    log: WriteLog,
    utxos: Arc<Mutex<UtxoOverlay>>,
    /// A handle on the LMDB environment for reads (the writer thread owns
    /// the one that writes).
    lmdb: LmdbStore,
    overlay: Overlay,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DurableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableStore")
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl DurableStore {
    /// Starts the log in `wal_dir` (empty: [`recover`] ran) at `next_seq`,
    /// and the store-writer thread applying to `store`. `sync: false`
    /// (`--unsafe-no-sync`) never syncs the log.
    pub fn start(
        store: LmdbStore,
        wal_dir: &Path,
        next_seq: u64,
        sync: bool,
    ) -> Result<Self, StoreError> {
        let (_, finality_head) = store.finality_log(0, 0)?;
        let log = WriteLog::create(wal_dir, next_seq, sync)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                applied: next_seq - 1,
                handed: next_seq - 1,
                ..Queue::default()
            }),
            work: Condvar::new(),
            progress: Condvar::new(),
        });
        let lmdb = store.read_handle();
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || writer_loop(store, shared))?
        };
        Ok(DurableStore {
            log,
            utxos: Arc::default(),
            lmdb,
            overlay: Overlay {
                finality_head,
                ..Overlay::default()
            },
            shared,
            writer: Some(writer),
        })
    }

    /// The LMDB store, for other threads' readers and sizes: it lags by
    /// what the writer has not applied yet.
    pub fn lmdb(&self) -> &LmdbStore {
        &self.lmdb
    }

    fn failed(q: &Queue) -> Result<(), StoreError> {
        match &q.failed {
            Some(e) => Err(StoreError::Backend(format!("store writer stopped: {e}"))),
            None => Ok(()),
        }
    }

    /// Drops what the writer applied from the overlay, deletes the log
    /// segments LMDB now holds, and reports a writer failure. Cheap; call
    /// once a round.
    pub fn settle(&mut self) -> Result<(), StoreError> {
        let applied = {
            let q = self.shared.lock();
            Self::failed(&q)?;
            q.applied
        };
        self.overlay.prune(applied);
        lock_utxos(&self.utxos).prune(applied);
        self.log.checkpoint(applied)
    }

    /// Makes one round durable: its log record appended and synced before
    /// this returns (the caller may then send the round's messages), and
    /// readable through this store at once. Waits while the writer is more
    /// than [`MAX_PENDING_ROUNDS`] or [`MAX_PENDING_BYTES`] behind.
    pub fn commit(&mut self, writes: Vec<Write>) -> Result<(), StoreError> {
        self.settle()?;
        if writes.is_empty() {
            return Ok(());
        }
        self.wait_for_room()?;
        let (seq, bytes) = match self.log.append(&writes) {
            Ok(appended) => appended,
            Err(e) => {
                // Readers told to wait for this round (`expect_commit`)
                // must not wait forever: the node stops on this error.
                self.shared.lock().failed = Some(format!("log append failed: {e}"));
                self.shared.progress.notify_all();
                return Err(e);
            }
        };
        let writes: Arc<[Write]> = writes.into();
        let wake = {
            let mut q = self.shared.lock();
            // A writer with rounds waiting sleeps until its next commit is
            // due and looks again then; waking it for every round (several
            // hundred a second) only to sleep again cost a context switch
            // each. It is woken when it may be in its untimed wait (nothing
            // was waiting) or the backlog presses.
            let idle = q.waiting.is_empty();
            q.pending_rounds += 1;
            q.pending_bytes += bytes;
            q.handed = seq;
            q.waiting.push_back(Round {
                seq,
                writes: writes.clone(),
                bytes,
            });
            idle || pressed(&q)
        };
        if wake {
            self.shared.work.notify_one();
        }
        lock_utxos(&self.utxos).push(seq, &writes);
        self.overlay.push(Round { seq, writes, bytes });
        Ok(())
    }

    /// The next [`DurableStore::commit`] hands over a round of writes:
    /// readers that begin from now on wait for it too. For replies sent
    /// before that round is durable (`Round::take_replies_before_durable`),
    /// so a wallet that heard one still reads a state at least that new.
    /// Call only right before committing writes (a failed commit marks the
    /// store failed, which releases those readers).
    pub fn expect_commit(&mut self) {
        let next = self.log.next_seq();
        let mut q = self.shared.lock();
        q.handed = q.handed.max(next);
    }

    fn wait_for_room(&mut self) -> Result<(), StoreError> {
        let mut q = self.shared.lock();
        while q.failed.is_none()
            && q.pending_rounds > 0
            && (q.pending_rounds >= MAX_PENDING_ROUNDS || q.pending_bytes >= MAX_PENDING_BYTES)
        {
            q = self
                .shared
                .progress
                .wait(q)
                .unwrap_or_else(|e| e.into_inner());
        }
        Self::failed(&q)
    }

    /// Waits until the writer applied everything handed over.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        {
            let mut q = self.shared.lock();
            while q.failed.is_none() && q.pending_rounds > 0 {
                q = self
                    .shared
                    .progress
                    .wait(q)
                    .unwrap_or_else(|e| e.into_inner());
            }
            Self::failed(&q)?;
        }
        self.settle()
    }

    /// A reader of UTXO states and the address index for other threads
    /// (wallet queries, RPC) that reads its writes: each query first waits
    /// until LMDB holds every round handed over when it began (asking the
    /// writer to commit at once), so a wallet that heard an outcome reads a
    /// state at least that new. The wait is one LMDB commit at most.
    pub fn state_reader(&self) -> super::lmdb::StateReader {
        let shared = self.shared.clone();
        self.lmdb
            .state_reader()
            .with_barrier(Arc::new(move || wait_applied(&shared)))
    }

    /// Rounds handed over and not yet applied to LMDB, and their bytes.
    pub fn pending(&self) -> (usize, usize) {
        let q = self.shared.lock();
        (q.pending_rounds, q.pending_bytes)
    }

    /// Stops the writer after it applied everything handed over (a clean
    /// shutdown leaves an empty log behind, but for the current segment).
    pub fn close(mut self) -> Result<(), StoreError> {
        self.stop(false);
        let q = self.shared.lock();
        Self::failed(&q)?;
        let applied = q.applied;
        drop(q);
        self.log.checkpoint(applied)
    }

    fn stop(&mut self, abandon: bool) {
        {
            let mut q = self.shared.lock();
            q.closing = true;
            q.abandon |= abandon;
            q.paused = false;
        }
        self.shared.work.notify_all();
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }

    /// Tests: holds the writer, so nothing handed over reaches LMDB.
    #[cfg(test)]
    fn pause_writer(&self) {
        self.shared.lock().paused = true;
    }

    /// Tests: lets a held writer go on.
    #[cfg(test)]
    fn resume_writer(shared: &Shared) {
        shared.lock().paused = false;
        shared.work.notify_all();
    }

    /// Tests: a killed process, the writer stopped with rounds unapplied.
    #[cfg(test)]
    fn crash(mut self) {
        self.stop(true);
    }
}

impl Drop for DurableStore {
    fn drop(&mut self) {
        self.stop(false);
    }
}

impl Store for DurableStore {
    /// Only before anything was handed over in practice; waits for the
    /// writer first either way.
    fn init(&mut self, genesis: &Genesis) -> Result<(), StoreError> {
        self.flush()?;
        self.lmdb.init(genesis)
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let q = self.shared.lock();
        if q.pending_rounds > 0 {
            return Err(StoreError::Backend(
                "load while log records are not yet applied: flush first".into(),
            ));
        }
        drop(q);
        self.lmdb.load()
    }

    fn utxo_source(&self) -> Box<dyn UtxoSource> {
        Box::new(DurableUtxos {
            overlay: self.utxos.clone(),
            lmdb: self.lmdb.state_reader(),
        })
    }

    fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        self.commit(writes.to_vec())
    }

    fn get_proof(&self, txid: &Txid) -> Result<Option<TimeProof>, StoreError> {
        // The overlay's newest write of a key is at least as new as
        // anything LMDB holds: LMDB only gets rounds the overlay had.
        if let Some(Write::PutProof(p)) = self
            .overlay
            .proofs
            .get(txid)
            .and_then(|s| self.overlay.write(*s))
        {
            return Ok(Some(p.clone()));
        }
        self.lmdb.get_proof(txid)
    }

    fn get_transaction(&self, txid: &Txid) -> Result<Option<Transaction>, StoreError> {
        if let Some(Write::PutTransaction(_, tx)) = self
            .overlay
            .transactions
            .get(txid)
            .and_then(|s| self.overlay.write(*s))
        {
            return Ok(Some(tx.clone()));
        }
        self.lmdb.get_transaction(txid)
    }

    fn finality_log(&self, from: u64, max: usize) -> Result<(Vec<Txid>, u64), StoreError> {
        let o = &self.overlay;
        let head = o.finality_head;
        // Positions below `start` are in LMDB (their rounds were pruned
        // only once applied); the rest are in the overlay.
        let start = head - o.finality.len() as u64;
        let mut out = Vec::new();
        if from < start && max > 0 {
            let want = (start - from).min(max as u64) as usize;
            let (got, lmdb_head) = self.lmdb.finality_log(from, want)?;
            if got.len() != want {
                return Err(StoreError::Corrupt {
                    table: "finality_log",
                    detail: format!(
                        "the database's finality log ends at {lmdb_head}, below {start}, which \
                         the store writer acknowledged"
                    ),
                });
            }
            out = got;
        }
        let skip = from.saturating_sub(start) as usize;
        out.extend(
            o.finality
                .iter()
                .skip(skip)
                .take(max - out.len())
                .map(|(_, t)| *t),
        );
        Ok((out, head))
    }

    fn evidence(&self) -> Result<Vec<Equivocation>, StoreError> {
        let mut all: BTreeMap<Vec<u8>, Equivocation> = BTreeMap::new();
        for e in self.lmdb.evidence()? {
            all.insert(EvidenceKey(e.voter(), e.txid).to_key().to_vec(), e);
        }
        for w in self.overlay.writes() {
            if let Write::PutEvidence(e) = w {
                all.insert(EvidenceKey(e.voter(), e.txid).to_key().to_vec(), e.clone());
            }
        }
        Ok(all.into_values().collect())
    }

    fn approval_evidence(&self) -> Result<Vec<ConflictingApprovals>, StoreError> {
        let mut all: BTreeMap<Vec<u8>, ConflictingApprovals> = BTreeMap::new();
        let key = |e: &ConflictingApprovals| {
            ApprovalEvidenceKey(e.voter(), e.outpoint)
                .to_key()
                .as_ref()
                .to_vec()
        };
        for e in self.lmdb.approval_evidence()? {
            all.insert(key(&e), e);
        }
        for w in self.overlay.writes() {
            if let Write::PutApprovalEvidence(e) = w {
                all.insert(key(e), e.as_ref().clone());
            }
        }
        Ok(all.into_values().collect())
    }

    fn block_evidence(&self) -> Result<Vec<BlockEvidence>, StoreError> {
        let mut all: BTreeMap<Vec<u8>, BlockEvidence> = BTreeMap::new();
        for e in self.lmdb.block_evidence()? {
            all.insert(e.key().to_key().to_vec(), e);
        }
        for w in self.overlay.writes() {
            if let Write::PutBlockEvidence(e) = w {
                all.insert(e.key().to_key().to_vec(), e.as_ref().clone());
            }
        }
        Ok(all.into_values().collect())
    }

    fn block(&self, height: u64) -> Result<Option<CommittedBlock>, StoreError> {
        if let Some(Write::PutBlock(b)) = self
            .overlay
            .blocks
            .get(&height)
            .and_then(|s| self.overlay.write(*s))
        {
            return Ok(Some(b.as_ref().clone()));
        }
        self.lmdb.block(height)
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::protocol::evidence::Equivocation;
    use crate::protocol::registry::{Masternode, Registry, Tier};
    use crate::protocol::types::{Address, ChainId, OutPoint, PublicKey, TxOutput};
    use crate::protocol::utxo::{UtxoEntry, UtxoState};
    use crate::protocol::vote::{Decision, VoteBatch, VoteItem};

    const CHAIN: ChainId = 7;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    fn outpoint(n: u8) -> OutPoint {
        OutPoint {
            txid: Txid([n; 32]),
            vout: 0,
        }
    }

    fn genesis() -> Genesis {
        Genesis {
            chain_id: CHAIN,
            registry: Registry::new(
                1,
                vec![Masternode {
                    key: PublicKey::from_signing(&key(1)),
                    address: "127.0.0.1:1".into(),
                    tier: Tier::Bronze,
                }],
            )
            .unwrap(),
            utxos: vec![(
                outpoint(1),
                UtxoEntry {
                    output: TxOutput {
                        amount: 500,
                        address: Address([3; 20]),
                    },
                    state: UtxoState::Unspent,
                },
            )],
        }
    }

    fn tx(n: u8) -> Transaction {
        Transaction::build_signed(
            CHAIN,
            &key(2),
            &[outpoint(n)],
            vec![TxOutput {
                amount: 1,
                address: Address([9; 20]),
            }],
        )
    }

    fn batch(txid: Txid, decision: Decision) -> VoteBatch {
        VoteBatch::sign(CHAIN, 1, &key(1), vec![VoteItem { txid, decision }])
    }

    fn proof_for(txid: Txid) -> TimeProof {
        let b = batch(txid, Decision::Approve);
        let levels = b.verify().unwrap();
        TimeProof {
            chain_id: CHAIN,
            txid,
            votes: vec![b.cert(&levels, 0)],
        }
    }

    /// Round `n`: a transaction, its lock, a vote batch, its proof and a
    /// finality-log entry.
    fn round(n: u8) -> Vec<Write> {
        let t = tx(n);
        vec![
            Write::PutTransaction(t.txid(), t.clone()),
            Write::PutUtxo(
                outpoint(n),
                UtxoEntry {
                    output: TxOutput {
                        amount: 500,
                        address: Address([3; 20]),
                    },
                    state: UtxoState::SpentFinalized { txid: t.txid() },
                },
            ),
            Write::AppendOwnVotes(batch(t.txid(), Decision::Approve)),
            Write::PutProof(proof_for(t.txid())),
            Write::AppendFinality(t.txid()),
        ]
    }

    struct Dirs {
        _tmp: tempfile::TempDir,
        db: PathBuf,
        wal: PathBuf,
    }

    fn dirs() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        Dirs {
            db: tmp.path().join("db"),
            wal: wal_dir(tmp.path()),
            _tmp: tmp,
        }
    }

    /// Recovers (replaying the log), initialises and starts the store.
    fn start(d: &Dirs) -> DurableStore {
        let (mut lmdb, next) = recover(&d.db, &d.wal, LmdbOptions::default()).unwrap();
        lmdb.init(&genesis()).unwrap();
        DurableStore::start(lmdb, &d.wal, next, true).unwrap()
    }

    fn reopen(d: &Dirs) -> LmdbStore {
        recover(&d.db, &d.wal, LmdbOptions::default()).unwrap().0
    }

    #[test]
    fn writes_handed_over_are_read_before_the_writer_applies_them() {
        let d = dirs();
        let mut s = start(&d);
        s.pause_writer();
        let eq = Equivocation {
            first: batch(tx(2).txid(), Decision::Approve)
                .cert(&batch(tx(2).txid(), Decision::Approve).verify().unwrap(), 0),
            second: batch(
                tx(2).txid(),
                Decision::Reject(crate::protocol::validation::RejectCode::NoInputs),
            )
            .cert(
                &batch(
                    tx(2).txid(),
                    Decision::Reject(crate::protocol::validation::RejectCode::NoInputs),
                )
                .verify()
                .unwrap(),
                0,
            ),
            txid: tx(2).txid(),
        };
        let mut r2 = round(2);
        r2.push(Write::PutEvidence(eq.clone()));
        s.commit(round(1)).unwrap();
        s.commit(r2).unwrap();
        assert_eq!(s.pending().0, 2);
        for n in [1u8, 2] {
            let t = tx(n);
            assert_eq!(s.get_transaction(&t.txid()).unwrap(), Some(t.clone()));
            assert_eq!(s.get_proof(&t.txid()).unwrap(), Some(proof_for(t.txid())));
            // LMDB itself does not have them yet: the overlay answered.
            assert_eq!(s.lmdb().get_proof(&t.txid()).unwrap(), None);
        }
        assert_eq!(
            s.finality_log(0, 10).unwrap(),
            (vec![tx(1).txid(), tx(2).txid()], 2)
        );
        assert_eq!(s.finality_log(1, 10).unwrap(), (vec![tx(2).txid()], 2));
        assert_eq!(s.finality_log(0, 1).unwrap(), (vec![tx(1).txid()], 2));
        assert_eq!(s.evidence().unwrap(), vec![eq.clone()]);
        assert!(s.lmdb().evidence().unwrap().is_empty());

        DurableStore::resume_writer(&s.shared);
        s.flush().unwrap();
        assert_eq!(s.pending(), (0, 0));
        assert!(
            s.overlay.rounds.is_empty(),
            "applied rounds leave the overlay"
        );
        assert_eq!(s.lmdb().applied_seq().unwrap(), 2);
        // Read from LMDB now, the same answers; the log split across both.
        s.pause_writer();
        s.commit(round(3)).unwrap();
        assert_eq!(
            s.finality_log(1, 10).unwrap(),
            (vec![tx(2).txid(), tx(3).txid()], 3)
        );
        assert_eq!(
            s.get_proof(&tx(1).txid()).unwrap(),
            Some(proof_for(tx(1).txid()))
        );
        assert_eq!(s.evidence().unwrap(), vec![eq]);
        DurableStore::resume_writer(&s.shared);
        s.close().unwrap();
        let l = reopen(&d);
        assert_eq!(l.load().unwrap().own_votes.len(), 3);
        assert_eq!(l.applied_seq().unwrap(), 3);
    }

    /// Another thread's query waits for the rounds handed over before it
    /// (the writer would otherwise hold them for its interval).
    #[test]
    fn a_state_reader_sees_every_round_handed_over_before_it() {
        let d = dirs();
        let mut s = start(&d);
        let r = s.state_reader();
        let unbarred = s.lmdb().state_reader();
        let mut stale = 0;
        for n in 1..=20u8 {
            s.commit(round(n)).unwrap();
            let want = Some(UtxoState::SpentFinalized { txid: tx(n).txid() });
            // Read before the barrier, to count how often it matters.
            let raw = unbarred.utxo_states(&[outpoint(n)]).unwrap();
            stale += (raw[0].1.map(|e| e.state) != want) as u32;
            let got = r.utxo_states(&[outpoint(n)]).unwrap();
            assert_eq!(got[0].1.map(|e| e.state), want, "round {n}");
            let held = r.address_utxos(&Address([3; 20]), 100).unwrap();
            assert!(
                held.iter().all(|(op, _)| *op != outpoint(n)),
                "spent for good"
            );
        }
        assert!(
            stale > 0,
            "the writer lagged at least once, so the barrier was tested"
        );
        s.close().unwrap();
    }

    /// After `expect_commit`, a query that begins before the round is
    /// committed still waits for it (a wallet told of a proof before the
    /// round's sync reads at least that state).
    #[test]
    fn a_query_begun_after_expect_commit_waits_for_that_round() {
        let d = dirs();
        let mut s = start(&d);
        let r = s.state_reader();
        s.expect_commit();
        let query = std::thread::spawn(move || r.utxo_states(&[outpoint(1)]).unwrap());
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !query.is_finished(),
            "the query waits for the expected round"
        );
        s.commit(round(1)).unwrap();
        let got = query.join().unwrap();
        assert_eq!(
            got[0].1.map(|e| e.state),
            Some(UtxoState::SpentFinalized { txid: tx(1).txid() })
        );
        s.close().unwrap();
    }

    /// A killed node: rounds acknowledged (their records synced) but not
    /// applied are all there after the restart, each exactly once.
    #[test]
    fn crash_before_the_writer_applied_loses_nothing_and_replays_once() {
        let d = dirs();
        let mut s = start(&d);
        s.commit(round(1)).unwrap();
        s.flush().unwrap();
        s.pause_writer();
        for n in 2..=4u8 {
            s.commit(round(n)).unwrap();
        }
        s.crash();
        {
            // Before recovery LMDB holds only round 1.
            let raw = LmdbStore::open(&d.db, LmdbOptions::default()).unwrap();
            assert_eq!(raw.applied_seq().unwrap(), 1);
            assert_eq!(raw.load().unwrap().own_votes.len(), 1);
        }
        let l = reopen(&d);
        let snap = l.load().unwrap();
        assert_eq!(snap.own_votes.len(), 4, "each vote batch exactly once");
        assert_eq!(snap.finality_log_len, 4);
        assert_eq!(snap.finalized.len(), 4);
        assert_eq!(l.applied_seq().unwrap(), 4);
        drop(l);
        // A second recovery finds nothing to replay; the log goes on at 5.
        let mut s = start(&d);
        assert_eq!(s.log.next_seq(), 5);
        s.commit(round(5)).unwrap();
        s.crash();
        let snap = reopen(&d).load().unwrap();
        assert_eq!(snap.own_votes.len(), 5);
        assert_eq!(snap.finality_log_len, 5);
    }

    /// The core waits when the writer is [`MAX_PENDING_ROUNDS`] behind, and
    /// goes on once it catches up.
    #[test]
    fn a_writer_that_falls_behind_holds_the_core_back() {
        let d = dirs();
        let (mut lmdb, next) = recover(&d.db, &d.wal, LmdbOptions::default()).unwrap();
        lmdb.init(&genesis()).unwrap();
        let mut s = DurableStore::start(lmdb, &d.wal, next, false).unwrap();
        s.pause_writer();
        let small = |i: usize| vec![Write::AppendFinality(Txid([(i % 251) as u8; 32]))];
        for i in 0..MAX_PENDING_ROUNDS {
            s.commit(small(i)).unwrap();
        }
        assert_eq!(s.pending().0, MAX_PENDING_ROUNDS);
        let shared = s.shared.clone();
        let released = Instant::now();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            DurableStore::resume_writer(&shared);
        });
        s.commit(small(0)).unwrap();
        assert!(
            released.elapsed() >= Duration::from_millis(200),
            "the commit waited for the writer"
        );
        t.join().unwrap();
        assert!(s.pending().0 <= 1);
        s.close().unwrap();
        assert_eq!(
            reopen(&d).load().unwrap().finality_log_len,
            MAX_PENDING_ROUNDS as u64 + 1
        );
    }
}
