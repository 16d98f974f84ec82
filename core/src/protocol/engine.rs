//! The masternode state machine: first-seen UTXO locking, voting, tallying and
//! finality. Pure: every call takes `now` (milliseconds, from any monotonic
//! source) and the effects come back from [`Engine::end_round`] as durable
//! [`Write`]s and [`Output`]s. The driver must apply a round's writes durably
//! *before* it sends that round's outputs: that is what makes "a vote is
//! durable before it leaves the node" hold, across crashes.
//!
//! The one safety rule lives in [`Engine::approve`]: this node never signs an
//! approve vote for a transaction spending an outpoint it has already approved
//! another transaction for. The map behind it (`approved_spends`) is rebuilt
//! from durable state at start and is never released by a timeout.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use ed25519_dalek::SigningKey;

use crate::histogram::{Histogram, Millis};
use crate::protocol::evidence::ConflictingApprovals;
use crate::protocol::registry::Registry;
use crate::protocol::tally::{TallyEvent, VerifiedBatch, VoteAggregator};
use crate::protocol::timeproof::TimeProof;
use crate::protocol::types::{Address, ChainId, OutPoint, PublicKey, Transaction, Txid};
use crate::protocol::utxo::{UtxoEntry, UtxoState};
use crate::protocol::utxo_set::UtxoSet;
use crate::protocol::validation::{self, Limits, RejectCode, TxError};
use crate::protocol::vote::{Decision, VoteBatch, VoteCert, VoteItem, MAX_VOTE_ITEMS};
use crate::storage::{Snapshot, StoreError, UtxoSource, Write};

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub chain_id: ChainId,
    pub limits: Limits,
    /// Most undecided transactions held at once.
    pub mempool_limit: usize,
    /// Most payments from this node's own wallets (and RPC) undecided at
    /// once: the origin's admission window. One more is refused at once
    /// ([`TxError::Busy`]) instead of queueing behind the others, so under
    /// overload every masternode keeps finalizing near its sustainable rate
    /// and the mempool keeps room for peers' payments (see PROTOCOL.md
    /// "Overload").
    pub origin_window: usize,
    /// A payment stops counting in the origin window after this long
    /// undecided (one whose votes never come, e.g. a double spend whose
    /// votes split, must not shrink the window for good).
    pub origin_window_age_ms: u64,
    /// After this long without a decision, state this node holds for a
    /// transaction it never voted on is dropped. Locks it voted on stay.
    pub lock_timeout_ms: u64,
    /// How long a transaction waits for an input this node does not know yet.
    pub orphan_timeout_ms: u64,
    pub max_orphans: usize,
    /// Most vote tallies kept for transactions this node has not seen.
    pub max_unknown_tallies: usize,
    /// How long a decided transaction is remembered (for idempotent answers).
    pub decided_retention_ms: u64,
    /// A transaction undecided for this long makes the node ask its peers
    /// for a proof (it may have missed votes), again at this interval.
    pub stall_request_ms: u64,
    /// Most decisions one signed vote batch carries (smaller when batches
    /// must fit a datagram).
    pub max_vote_batch_items: usize,
    /// Votes are verified and tallied outside the engine (on the node's
    /// vote threads), which feeds [`Engine::handle_tally_events`].
    pub external_tally: bool,
    /// Most UTXO entries kept in memory (outputs held for a transaction
    /// may exceed it); the rest are read from the store when needed.
    pub utxo_cache: usize,
    /// Deliberate bugs for the simulator's control runs: a checker that
    /// cannot fail proves nothing. Compiled only with `planted-bugs`.
    #[cfg(feature = "planted-bugs")]
    pub planted: PlantedBugs,
}

/// Bugs the simulator plants to show its checker catches them.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Debug, Default)]
pub struct PlantedBugs {
    /// Use this quorum instead of floor(2W/3)+1.
    pub quorum: Option<u64>,
    /// Release voted locks after the lock timeout (the seeds' unsafe rule).
    pub release_voted_locks_on_timeout: bool,
}

impl EngineConfig {
    pub fn new(chain_id: ChainId) -> Self {
        EngineConfig {
            chain_id,
            limits: Limits::default(),
            mempool_limit: 10_000,
            origin_window: ORIGIN_WINDOW,
            origin_window_age_ms: 10_000,
            lock_timeout_ms: 30_000,
            orphan_timeout_ms: 5_000,
            max_orphans: 10_000,
            max_unknown_tallies: 100_000,
            decided_retention_ms: 120_000,
            stall_request_ms: 2_000,
            max_vote_batch_items: MAX_VOTE_ITEMS,
            external_tally: false,
            utxo_cache: UTXO_CACHE,
            #[cfg(feature = "planted-bugs")]
            planted: PlantedBugs::default(),
        }
    }
}

/// Where a transaction came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// Submitted by a wallet to this node: this node broadcasts it.
    Wallet,
    /// Relayed by a peer masternode.
    Peer,
}

/// Something a wallet or operator should hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Inputs locked and approved by this node; votes are being gathered.
    Accepted { txid: Txid },
    /// A TimeProof exists: the transaction is final.
    Finalized {
        txid: Txid,
        proof: Arc<TimeProof>,
        tx: Arc<Transaction>,
        /// Milliseconds from this engine's first sight of it to its proof;
        /// `None` when it was loaded from the store at start (not seen
        /// arriving in this run).
        age_ms: Option<u64>,
        /// Addresses whose balance changed (input owners and recipients).
        addresses: Vec<Address>,
        /// The outputs it spent, now SpentFinalized.
        spent: Vec<(OutPoint, UtxoEntry)>,
    },
    /// The transaction will not be final: refused here, or the network
    /// rejected it (`rejecters` names the masternodes and their reasons).
    Rejected {
        txid: Txid,
        reason: RejectCode,
        detail: String,
        rejecters: Vec<(PublicKey, RejectCode)>,
    },
    /// A registered masternode signed two different decisions on one
    /// transaction, or approved two conflicting transactions.
    Equivocation { voter: PublicKey, txid: Txid },
    /// Two conflicting transactions both carry TimeProofs. Only possible with
    /// Byzantine weight >= 1/3 (or a bug); recorded, never silently resolved.
    ConflictingProofs(ConflictRecord),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictRecord {
    pub outpoint: OutPoint,
    pub kept: Txid,
    pub kept_weight: u64,
    pub competing: Txid,
    pub competing_weight: u64,
    /// Heavier proof; ties go to the lower txid. The state keeps `kept`
    /// until the block layer settles it.
    pub winner: Txid,
    pub detected_at_ms: u64,
    /// Settled by the block layer (which does not exist yet: always false).
    pub resolved: bool,
}

/// Effects of a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// To every peer masternode: a transaction whose inputs this node locked
    /// (the UTXO lock broadcast).
    BroadcastTransaction(Arc<Transaction>),
    /// To every peer masternode: this node's signed votes.
    BroadcastVotes(Arc<VoteBatch>),
    /// Ask peers for the TimeProof (and transaction) of `txid`: an input this
    /// node does not know spends its outputs.
    RequestProof(Txid),
    /// To the vote tallies outside the engine (`external_tally`): report
    /// every approval of `txid` back ([`TallyEvent::Approval`]); it is one
    /// side of a double spend seen here.
    WatchApprovals(Txid),
    Event(Event),
}

/// What one round produced. Apply `writes` durably, then act on `outputs`.
#[derive(Debug, Default)]
pub struct Round {
    pub writes: Vec<Write>,
    pub outputs: Vec<Output>,
}

impl Round {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.outputs.is_empty()
    }
}

/// Counters an operator can read. Nothing is dropped without a count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    pub tx_received: u64,
    pub tx_accepted: u64,
    pub tx_rejected: u64,
    pub tx_finalized: u64,
    pub tx_duplicate: u64,
    /// Wallet payments refused at once because the origin window was full.
    pub tx_busy: u64,
    pub orphans_parked: u64,
    pub orphans_expired: u64,
    pub votes_received: u64,
    pub vote_batches_signed: u64,
    pub vote_batches_bad_signature: u64,
    pub vote_batches_unknown_voter: u64,
    pub vote_batches_wrong_chain_or_epoch: u64,
    pub votes_duplicate: u64,
    pub votes_dropped_unknown_tx: u64,
    pub equivocations: u64,
    /// Voters that approved two transactions spending one output (counted
    /// once per voter and output while the evidence cap has room).
    pub conflicting_approvals: u64,
    /// Double spends not watched for conflicting approvals because
    /// [`MAX_CONFLICT_WATCHES`] were watched already.
    pub conflict_watches_refused: u64,
    pub proofs_received: u64,
    pub proofs_invalid: u64,
    pub conflicting_proofs: u64,
    /// Transactions this node learned final from a committed block (synced)
    /// rather than from a TimeProof.
    pub tx_synced_from_blocks: u64,
    /// Of those, the ones confirmed while `MAX_UNPROVEN` were tracked
    /// already: their proof is not fetched here (see PROTOCOL.md, Sync).
    pub unproven_untracked: u64,
    /// From this node's approve vote to the quorum of approvals its tally
    /// reported (milliseconds), for the transactions that quorum finalized.
    pub vote_collection: Histogram<Millis>,
    /// TimeProofs applied and held here (payments finalized by a proof).
    pub proofs_held: u64,
    /// Approve votes each registered masternode (registry position) had in
    /// those proofs; see [`Metrics::missed_votes`].
    pub proof_votes: Vec<u64>,
}

impl Metrics {
    /// Proofs held here that lack the approve vote of the masternode at
    /// registry `position`: one that is down or slow shows up here.
    pub fn missed_votes(&self, position: usize) -> u64 {
        let had = self.proof_votes.get(position).copied().unwrap_or(0);
        self.proofs_held.saturating_sub(had)
    }

    /// A proof this node holds now: counts each of its voters once (a
    /// verified proof names a voter once).
    fn proof_held(&mut self, proof: &TimeProof, registry: &Registry) {
        self.proofs_held += 1;
        if self.proof_votes.len() != registry.len() {
            self.proof_votes.resize(registry.len(), 0);
        }
        for v in &proof.votes {
            if let Some(i) = registry.position(&v.voter) {
                self.proof_votes[i] += 1;
            }
        }
    }
}

/// Why a committed block's transaction cannot be applied here. Both mean
/// the block contradicts this node's final state, which a certificate of
/// more than 2/3 of the weight can only do if Byzantine weight reached 1/3.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommittedTxError {
    #[error("transaction {0} spends {1}, which does not exist here")]
    MissingInput(Txid, OutPoint),
    #[error("transaction {txid} conflicts with final transaction {final_tx}")]
    ConflictsWithFinal { txid: Txid, final_tx: Txid },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Known and undecided.
    Pending,
    Finalized,
    Rejected,
}

#[derive(Debug)]
struct TxRecord {
    tx: Arc<Transaction>,
    status: Status,
    /// Why it was rejected, for wallets that ask again.
    rejection: Option<(RejectCode, String)>,
    /// Weight of its TimeProof once final (for conflict records).
    proof_weight: u64,
    /// When this node last asked peers for its proof (stalled transactions).
    last_request_ms: u64,
    origin: Origin,
    since_ms: u64,
    /// `since_ms` is when this run first saw it (false: loaded at start).
    seen_this_run: bool,
    /// Counted in the origin window (a wallet's payment, undecided, younger
    /// than `origin_window_age_ms`).
    in_window: bool,
    /// When this run queued its approve vote: where its vote collection
    /// starts (None: not approved here, or loaded from the store).
    voted_ms: Option<u64>,
}

impl TxRecord {
    /// A record rebuilt from the store at start.
    fn loaded(
        tx: Transaction,
        status: Status,
        rejection: Option<(RejectCode, String)>,
        since_ms: u64,
    ) -> Self {
        TxRecord {
            tx: Arc::new(tx),
            status,
            rejection,
            proof_weight: 0,
            last_request_ms: 0,
            origin: Origin::Peer,
            since_ms,
            seen_this_run: false,
            in_window: false,
            voted_ms: None,
        }
    }
}

#[derive(Debug)]
struct Orphan {
    tx: Arc<Transaction>,
    origin: Origin,
    since_ms: u64,
    /// A proof that arrived before the parent did.
    proof: Option<Arc<TimeProof>>,
}

pub struct Engine {
    cfg: EngineConfig,
    key: SigningKey,
    me: PublicKey,
    registry: Registry,
    utxos: UtxoSet,
    txs: HashMap<Txid, TxRecord>,
    pending_count: usize,
    /// Records with `in_window` set: this node's wallets' payments in flight.
    in_window: usize,
    /// Outpoint -> the transaction this node approved spending it. Durable
    /// (mirrors Locked/SpentPending entries written with the vote), never
    /// released by a timeout.
    approved_spends: HashMap<OutPoint, Txid>,
    my_votes: HashMap<Txid, Decision>,
    aggregator: VoteAggregator,
    /// Proofs whose transaction this node has not seen yet.
    proofs_waiting: HashMap<Txid, Arc<TimeProof>>,
    /// Network rejections of transactions this node has not seen yet.
    impossible_waiting: HashMap<Txid, Event>,
    orphans: HashMap<Txid, Orphan>,
    orphans_by_parent: HashMap<Txid, Vec<Txid>>,
    requested_parents: HashSet<Txid>,
    vote_queue: Vec<VoteItem>,
    round: Round,
    conflicts: Vec<ConflictRecord>,
    metrics: Metrics,
    /// While set, this node approves nothing: it may not know payments
    /// finalized while it was away (see the masternode's catch-up).
    catching_up: bool,
    /// Equivocations whose evidence was written this run.
    evidence_kept: HashSet<(PublicKey, Txid)>,
    /// Payments this node held as pending when a committed block confirmed
    /// them without their TimeProof here: when the proof comes it is stored
    /// and their finality announced (wallets waiting on this node hear it).
    unproven: HashMap<Txid, Arc<Transaction>>,
    /// Double spends seen here, by the output the sides share.
    conflict_watches: HashMap<OutPoint, ConflictWatch>,
    /// A watched side -> the outputs whose watch it belongs to.
    watched_sides: HashMap<Txid, Vec<OutPoint>>,
    /// The last [`RECENT_PROOFS`] proofs applied here, oldest first: the
    /// approvals of a side whose tally closed before the conflict came.
    recent_proofs: HashMap<Txid, Arc<TimeProof>>,
    recent_order: VecDeque<Txid>,
    /// (voter, output) pairs whose conflicting approvals were written.
    approval_evidence_kept: HashSet<(PublicKey, OutPoint)>,
}

/// The transactions seen here spending one output, and the first approval
/// of each voter for one of them: a second approval by the same voter for
/// another side is a [`ConflictingApprovals`].
#[derive(Debug)]
struct ConflictWatch {
    sides: Vec<(Txid, Arc<Transaction>)>,
    approvals: HashMap<PublicKey, (Txid, VoteCert)>,
    since_ms: u64,
}

/// Most outputs watched for conflicting approvals at once (a watch holds two
/// to [`MAX_CONFLICT_SIDES`] transactions and one certificate per voter that
/// approved a side). Each is kept for `decided_retention_ms`.
pub const MAX_CONFLICT_WATCHES: usize = 8_192;
/// Most transactions watched per output.
pub const MAX_CONFLICT_SIDES: usize = 4;
/// Proofs kept after they were applied, for the approvals of a side whose
/// tally closed before its conflict arrived (about 1.6 KB each).
pub const RECENT_PROOFS: usize = 4_096;

/// Default [`EngineConfig::origin_window`]: enough payments in flight to
/// keep a round's batches full (at 20 ms of finality, 512 per masternode
/// carry 25,000 payments/s), few enough that a saturated network's queue
/// stays well under a second deep.
pub const ORIGIN_WINDOW: usize = 512;

/// Default [`EngineConfig::utxo_cache`]: about 160 bytes each in memory, so
/// some 170 MB when full; a miss is one LMDB point read (a few µs).
pub const UTXO_CACHE: usize = 1 << 20;

/// Most payments tracked as confirmed by a block before their proof came
/// (each holds its transaction: a few MB at most).
pub const MAX_UNPROVEN: usize = 16_384;

/// Most equivocation records written per run (each about 500 bytes); more
/// are counted in `Metrics::equivocations` only.
pub const MAX_EVIDENCE: usize = 10_000;

impl Engine {
    /// Builds the engine from durable state: `snap` from the store's
    /// `load`, `utxos` its [`crate::storage::Store::utxo_source`].
    pub fn new(
        cfg: EngineConfig,
        key: SigningKey,
        registry: Registry,
        snap: Snapshot,
        utxos: Box<dyn UtxoSource>,
    ) -> Self {
        let me = PublicKey::from_signing(&key);
        let utxo_cache = cfg.utxo_cache;
        let open = cfg.max_unknown_tallies + cfg.mempool_limit;
        let aggregator =
            VoteAggregator::new(registry.clone(), effective_quorum(&cfg, &registry), open);
        let mut e = Engine {
            cfg,
            key,
            me,
            registry,
            utxos: UtxoSet::new(utxos, utxo_cache),
            txs: HashMap::new(),
            pending_count: 0,
            in_window: 0,
            approved_spends: HashMap::new(),
            my_votes: HashMap::new(),
            aggregator,
            proofs_waiting: HashMap::new(),
            impossible_waiting: HashMap::new(),
            orphans: HashMap::new(),
            orphans_by_parent: HashMap::new(),
            requested_parents: HashSet::new(),
            vote_queue: Vec::new(),
            round: Round::default(),
            conflicts: Vec::new(),
            metrics: Metrics::default(),
            catching_up: false,
            evidence_kept: HashSet::new(),
            unproven: HashMap::new(),
            conflict_watches: HashMap::new(),
            watched_sides: HashMap::new(),
            recent_proofs: HashMap::new(),
            recent_order: VecDeque::new(),
            approval_evidence_kept: HashSet::new(),
        };
        for (op, entry) in snap.held_utxos {
            if let UtxoState::Locked { txid } | UtxoState::SpentPending { txid, .. } = entry.state {
                e.approved_spends.insert(op, txid);
            }
            e.utxos.preload(op, entry);
        }
        let pending: HashSet<Txid> = snap.pending_transactions.iter().map(|t| t.txid()).collect();
        for tx in snap.pending_transactions {
            let txid = tx.txid();
            e.txs
                .insert(txid, TxRecord::loaded(tx, Status::Pending, None, 0));
            e.pending_count += 1;
        }
        for batch in snap.own_votes {
            for item in &batch.items {
                e.my_votes.insert(item.txid, item.decision);
            }
            if batch.items.iter().any(|i| pending.contains(&i.txid)) {
                // Votes on undecided transactions: count them again and send
                // them again (peers may have missed them before the restart).
                e.own_batch_signed(0, batch);
            }
        }
        for tx in snap.stuck_transactions {
            // Locks stay (approved_spends above); the transaction neither
            // counts against the mempool nor asks for its proof again.
            let txid = tx.txid();
            let why = (
                RejectCode::ApprovalImpossible,
                "votes split: approval can no longer reach the quorum".into(),
            );
            // Remembered for good (never trimmed by the retention).
            let rec = TxRecord::loaded(tx, Status::Rejected, Some(why), u64::MAX / 2);
            e.txs.insert(txid, rec);
        }
        for tx in snap.unproven_transactions {
            // Confirmed by a block before its proof came, then a restart:
            // still wanted (`settled` is false, so the catch-up, which
            // walks every peer's log from 0 after a restart, fetches it).
            if e.unproven.len() < MAX_UNPROVEN {
                e.unproven.insert(tx.txid(), Arc::new(tx));
            } else {
                e.metrics.unproven_untracked += 1;
            }
        }
        let _ = snap.finalized; // proofs stay in the store; answers come from there
        e
    }

    /// While `on`, every transaction that would be approved is refused with
    /// [`RejectCode::CatchingUp`] instead (not voted, not remembered).
    pub fn set_catching_up(&mut self, on: bool) {
        self.catching_up = on;
    }

    pub fn is_catching_up(&self) -> bool {
        self.catching_up
    }

    /// Whether `txid` is final here: its outputs exist (they are created
    /// only by finality, and never removed). Also true for the genesis.
    pub fn known_final(&self, txid: &Txid) -> bool {
        self.utxos.contains(&OutPoint {
            txid: *txid,
            vout: 0,
        })
    }

    /// Whether `txid` is pending here (known, undecided).
    pub fn is_pending(&self, txid: &Txid) -> bool {
        self.txs
            .get(txid)
            .is_some_and(|r| r.status == Status::Pending)
    }

    /// This node's transaction `txid`, if it holds it in memory.
    pub fn transaction(&self, txid: &Txid) -> Option<Arc<Transaction>> {
        self.txs
            .get(txid)
            .map(|r| r.tx.clone())
            .or_else(|| self.orphans.get(txid).map(|o| o.tx.clone()))
    }

    /// Up to `max` transactions pending here (known, undecided), in no
    /// particular order, for an operator's mempool listing. Walks the
    /// transaction records: callers cap how often they ask.
    pub fn pending_txids(&self, max: usize) -> Vec<Txid> {
        self.txs
            .iter()
            .filter(|(_, r)| r.status == Status::Pending)
            .map(|(t, _)| *t)
            .take(max)
            .collect()
    }

    /// Signs this node's decision on `txid` again (same decision: never a
    /// conflicting vote), so peers that lost the first copy can count it.
    /// Returns false when there is nothing to resend.
    pub fn revote(&mut self, txid: &Txid) -> bool {
        match self.my_votes.get(txid) {
            Some(&decision) if self.is_pending(txid) => {
                self.vote_queue.push(VoteItem {
                    txid: *txid,
                    decision,
                });
                true
            }
            _ => false,
        }
    }

    fn quorum(&self) -> u64 {
        effective_quorum(&self.cfg, &self.registry)
    }

    pub fn public_key(&self) -> PublicKey {
        self.me
    }
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    pub fn conflicts(&self) -> &[ConflictRecord] {
        &self.conflicts
    }
    /// The output's entry, from memory or the store.
    pub fn utxo(&self, op: &OutPoint) -> Option<UtxoEntry> {
        self.utxos.get(op)
    }
    /// The first UTXO read from the store that failed, if any: the node
    /// must stop (the engine treated the output as unknown).
    pub fn take_store_read_error(&mut self) -> Option<StoreError> {
        self.utxos.take_read_error()
    }
    pub fn pending_count(&self) -> usize {
        self.pending_count
    }

    /// The UTXO cache: entries in memory now, and reads that went to the
    /// store since start (`UtxoSet::in_memory`, `UtxoSet::misses`).
    pub fn utxo_cache(&self) -> (usize, u64) {
        (self.utxos.in_memory(), self.utxos.misses())
    }

    /// Payments from this node's wallets in flight (the origin window's
    /// fill, at most [`EngineConfig::origin_window`]).
    pub fn wallet_in_flight(&self) -> usize {
        self.in_window
    }
    /// This node's vote on `txid`, if it cast one (since start or durably before).
    pub fn my_vote(&self, txid: &Txid) -> Option<Decision> {
        self.my_votes.get(txid).copied()
    }
    /// Why `txid` was rejected, if it was (and is still remembered).
    pub fn rejection(&self, txid: &Txid) -> Option<(RejectCode, String)> {
        self.txs.get(txid).and_then(|r| r.rejection.clone())
    }

    /// Final here with its TimeProof held (a payment a synced block
    /// confirmed is final here before its proof comes).
    pub fn settled(&self, txid: &Txid) -> bool {
        self.known_final(txid) && !self.unproven.contains_key(txid)
    }

    /// Whether this node has seen `txid` (pending, decided, or parked).
    pub fn knows(&self, txid: &Txid) -> bool {
        self.txs.contains_key(txid) || self.orphans.contains_key(txid)
    }

    pub fn is_finalized(&self, txid: &Txid) -> bool {
        self.txs
            .get(txid)
            .is_some_and(|r| r.status == Status::Finalized)
    }

    fn emit(&mut self, event: Event) {
        self.round.outputs.push(Output::Event(event));
    }

    fn reject_event(&mut self, txid: Txid, err: &TxError) {
        self.metrics.tx_rejected += 1;
        self.emit(Event::Rejected {
            txid,
            reason: err.code(),
            detail: err.to_string(),
            rejecters: vec![(self.me, err.code())],
        });
    }

    /// A transaction from a wallet or a peer. Signatures are verified here
    /// unless the caller already ran [`precheck`] (`prechecked = true`).
    pub fn handle_transaction(
        &mut self,
        now: u64,
        tx: Transaction,
        origin: Origin,
        prechecked: bool,
    ) {
        self.metrics.tx_received += 1;
        let txid = tx.txid();
        if let Some(rec) = self.txs.get(&txid) {
            self.metrics.tx_duplicate += 1;
            // Idempotent: a wallet resubmitting hears the settled outcome again.
            if origin == Origin::Wallet && rec.status == Status::Pending {
                self.emit(Event::Accepted { txid });
            }
            return;
        }
        if self.orphans.contains_key(&txid) {
            self.metrics.tx_duplicate += 1;
            return;
        }
        if !prechecked {
            if let Err(e) = precheck(&tx, &txid, self.cfg.chain_id, &self.cfg.limits) {
                return self.refuse(now, txid, Arc::new(tx), origin, e);
            }
        }
        self.process(now, txid, Arc::new(tx), origin, None);
    }

    /// Stateful part of admission, shared by new transactions and orphans
    /// whose parents arrived.
    fn process(
        &mut self,
        now: u64,
        txid: Txid,
        tx: Arc<Transaction>,
        origin: Origin,
        proof: Option<Arc<TimeProof>>,
    ) {
        // Inputs this node does not know yet: park, ask for the parent.
        let missing: Vec<Txid> = tx
            .inputs
            .iter()
            .filter(|i| !self.utxos.contains(&i.prev))
            .map(|i| i.prev.txid)
            .collect();
        if !missing.is_empty() {
            return self.park_orphan(now, txid, tx, origin, proof, missing);
        }
        let proof = proof.or_else(|| self.proofs_waiting.remove(&txid));
        if let Some(p) = proof {
            // Final already: a verified proof outranks local locks.
            self.insert_record(now, txid, tx.clone(), origin);
            return self.finalize(now, txid, p);
        }
        if let Some(Event::Rejected { reason, detail, .. }) = self.impossible_waiting.remove(&txid)
        {
            // The network already rejected it: do not lock anything for it.
            self.metrics.tx_rejected += 1;
            self.txs.insert(
                txid,
                TxRecord {
                    tx,
                    status: Status::Rejected,
                    rejection: Some((reason, detail.clone())),
                    proof_weight: 0,
                    last_request_ms: 0,
                    origin,
                    since_ms: now,
                    seen_this_run: true,
                    in_window: false,
                    voted_ms: None,
                },
            );
            return self.emit(Event::Rejected {
                txid,
                reason,
                detail,
                rejecters: vec![],
            });
        }
        if self.catching_up {
            return self.refuse(now, txid, tx, origin, TxError::CatchingUp);
        }
        if origin == Origin::Wallet && self.in_window >= self.cfg.origin_window {
            self.metrics.tx_busy += 1;
            return self.refuse(now, txid, tx, origin, TxError::Busy(self.in_window));
        }
        if self.pending_count >= self.cfg.mempool_limit {
            return self.refuse(
                now,
                txid,
                tx,
                origin,
                TxError::MempoolFull(self.pending_count),
            );
        }
        let spent: Vec<UtxoEntry> = tx
            .inputs
            .iter()
            .map(|i| self.utxos.get(&i.prev).expect("checked by process"))
            .collect();
        if spent.iter().any(|e| {
            matches!(e.state, UtxoState::SpentFinalized { txid: h } | UtxoState::Confirmed { txid: h, .. } if h == txid)
        }) {
            // Already final here (its record was trimmed, or this node
            // restarted): a replay. Nothing to decide, nothing to sign.
            self.metrics.tx_duplicate += 1;
            return;
        }
        for (input, entry) in tx.inputs.iter().zip(&spent) {
            let err = match entry.state {
                UtxoState::Unspent => match self.approved_spends.get(&input.prev) {
                    // Unreachable while the maps agree; checked because this is
                    // the one rule that must never break.
                    Some(&holder) if holder != txid => Some(TxError::InputLocked {
                        outpoint: input.prev,
                        holder,
                    }),
                    _ => None,
                },
                UtxoState::Locked { txid: holder }
                | UtxoState::SpentPending { txid: holder, .. } => {
                    (holder != txid).then_some(TxError::InputLocked {
                        outpoint: input.prev,
                        holder,
                    })
                }
                UtxoState::SpentFinalized { txid: holder }
                | UtxoState::Confirmed { txid: holder, .. } => Some(TxError::InputSpent {
                    outpoint: input.prev,
                    holder,
                }),
            };
            if let Some(e) = err {
                return self.refuse(now, txid, tx, origin, e);
            }
        }
        if let Err(e) = validation::check_amounts_and_owners(&tx, &spent, &self.cfg.limits) {
            return self.refuse(now, txid, tx, origin, e);
        }
        self.approve(now, txid, tx, origin);
    }

    fn insert_record(&mut self, now: u64, txid: Txid, tx: Arc<Transaction>, origin: Origin) {
        if self.txs.contains_key(&txid) {
            return;
        }
        self.txs.insert(
            txid,
            TxRecord {
                tx,
                status: Status::Pending,
                rejection: None,
                proof_weight: 0,
                last_request_ms: 0,
                origin,
                since_ms: now,
                seen_this_run: true,
                in_window: origin == Origin::Wallet,
                voted_ms: None,
            },
        );
        self.pending_count += 1;
        if origin == Origin::Wallet {
            self.in_window += 1;
        }
    }

    /// Locks the inputs and queues an approve vote: the only place this node
    /// ever decides to approve.
    fn approve(&mut self, now: u64, txid: Txid, tx: Arc<Transaction>, origin: Origin) {
        if tx.inputs.iter().any(|i| {
            self.approved_spends
                .get(&i.prev)
                .is_some_and(|h| *h != txid)
        }) || self.my_votes.get(&txid).is_some_and(|d| !d.is_approve())
        {
            // Defensive: process() already refused these.
            return;
        }
        for input in &tx.inputs {
            let entry = self.utxos.get_mut(&input.prev).expect("checked by process");
            entry.state = UtxoState::Locked { txid };
            self.approved_spends.insert(input.prev, txid);
            self.round.writes.push(Write::PutUtxo(input.prev, *entry));
        }
        self.round
            .writes
            .push(Write::PutTransaction(txid, (*tx).clone()));
        if self.my_votes.insert(txid, Decision::Approve).is_none() {
            self.vote_queue.push(VoteItem {
                txid,
                decision: Decision::Approve,
            });
        }
        self.metrics.tx_accepted += 1;
        self.insert_record(now, txid, tx.clone(), origin);
        if let Some(r) = self.txs.get_mut(&txid) {
            r.voted_ms.get_or_insert(now);
        }
        if origin == Origin::Wallet {
            self.round.outputs.push(Output::BroadcastTransaction(tx));
            self.emit(Event::Accepted { txid });
        }
    }

    /// Refuses a transaction. A wallet hears at once and nothing is broadcast
    /// (so the refused transaction can never gather votes through this node);
    /// a peer's transaction gets a signed reject vote naming the reason.
    fn refuse(&mut self, now: u64, txid: Txid, tx: Arc<Transaction>, origin: Origin, err: TxError) {
        self.reject_event(txid, &err);
        if let TxError::InputLocked { outpoint, holder }
        | TxError::InputSpent { outpoint, holder } = err
        {
            self.watch_conflict(now, outpoint, holder, txid, tx.clone());
        }
        if matches!(
            err,
            TxError::MempoolFull(_)
                | TxError::Busy(_)
                | TxError::CatchingUp
                | TxError::BadSignature(_)
                | TxError::UnknownInput(_)
        ) {
            // Not a verdict on the txid: overload and a missing parent belong
            // to the moment, and signatures are outside the txid (a peer can
            // flip a signature byte of someone's valid payment). No vote (a
            // reject vote is permanent), nothing remembered, so a good copy
            // later is judged on its own. If a quorum approves it anyway,
            // this node fetches the proof (see `on_quorum`).
            return;
        }
        if origin == Origin::Peer && !self.my_votes.contains_key(&txid) {
            let decision = Decision::Reject(err.code());
            self.my_votes.insert(txid, decision);
            self.vote_queue.push(VoteItem { txid, decision });
        }
        self.txs.insert(
            txid,
            TxRecord {
                tx,
                status: Status::Rejected,
                rejection: Some((err.code(), err.to_string())),
                proof_weight: 0,
                last_request_ms: 0,
                origin,
                since_ms: now,
                seen_this_run: true,
                in_window: false,
                voted_ms: None,
            },
        );
    }

    fn park_orphan(
        &mut self,
        now: u64,
        txid: Txid,
        tx: Arc<Transaction>,
        origin: Origin,
        proof: Option<Arc<TimeProof>>,
        missing: Vec<Txid>,
    ) {
        if self.orphans.len() >= self.cfg.max_orphans {
            let err = TxError::UnknownInput(tx.inputs[0].prev);
            return self.refuse(now, txid, tx, origin, err);
        }
        self.metrics.orphans_parked += 1;
        for parent in missing {
            let list = self.orphans_by_parent.entry(parent).or_default();
            if !list.contains(&txid) {
                list.push(txid);
            }
            // Ask once per parent, unless the parent is known and pending here
            // (its own finality will wake us).
            if !self.txs.contains_key(&parent) && self.requested_parents.insert(parent) {
                self.round.outputs.push(Output::RequestProof(parent));
            }
        }
        self.orphans.insert(
            txid,
            Orphan {
                tx,
                origin,
                since_ms: now,
                proof,
            },
        );
    }

    /// A batch of votes from a peer masternode (verified here).
    pub fn handle_votes(&mut self, now: u64, batch: VoteBatch) {
        if !self.admissible(&batch) {
            return;
        }
        let Some(vb) = VerifiedBatch::verify(batch) else {
            self.metrics.vote_batches_bad_signature += 1;
            return;
        };
        self.handle_verified_votes(now, Arc::new(vb));
    }

    /// Chain, epoch and voter checks before a batch is verified or counted.
    fn admissible(&mut self, batch: &VoteBatch) -> bool {
        if batch.chain_id != self.cfg.chain_id || batch.epoch != self.registry.epoch() {
            self.metrics.vote_batches_wrong_chain_or_epoch += 1;
            return false;
        }
        if self.registry.weight_of(&batch.voter).is_none() {
            self.metrics.vote_batches_unknown_voter += 1;
            return false;
        }
        if batch.voter == self.me {
            // Our own votes come only from our own log.
            self.metrics.votes_duplicate += batch.items.len() as u64;
            return false;
        }
        true
    }

    /// A peer's batch whose signature the caller verified.
    pub fn handle_verified_votes(&mut self, now: u64, vb: Arc<VerifiedBatch>) {
        if !self.admissible(&vb.batch) {
            return;
        }
        self.metrics.votes_received += vb.batch.items.len() as u64;
        // Votes that would open a tally for a transaction not pending here
        // get at most `max_unknown_tallies` of the open tallies; the rest
        // (`mempool_limit` of them) stay for pending transactions. Else one
        // voter's flood of votes for made-up txids fills them all, and the
        // votes on real payments (this node's own too) find no room.
        let mut room = self
            .cfg
            .max_unknown_tallies
            .saturating_sub(self.aggregator.open());
        let mut refused = 0u64;
        let mut admitted = Vec::new();
        for (k, item) in vb.batch.items.iter().enumerate() {
            let t = &item.txid;
            if self.is_pending(t)
                || self.aggregator.approve_weight(t) > 0
                || self.aggregator.is_done(t)
            {
                admitted.push(k as u32);
            } else if room > 0 {
                room -= 1;
                admitted.push(k as u32);
            } else {
                refused += 1;
            }
        }
        self.metrics.votes_dropped_unknown_tx += refused;
        let mut events = Vec::new();
        let before = self.aggregator.stats();
        let indices = (refused > 0).then_some(admitted.as_slice());
        self.aggregator.add(now, &vb, indices, &mut events);
        let after = self.aggregator.stats();
        self.metrics.votes_duplicate += after.duplicates - before.duplicates;
        self.metrics.votes_dropped_unknown_tx += after.dropped_full - before.dropped_full;
        self.handle_tally_events(now, events);
    }

    /// Outcomes of vote tallying, from the engine's own aggregator or from
    /// the node's vote threads.
    pub fn handle_tally_events(&mut self, now: u64, events: Vec<TallyEvent>) {
        for ev in events {
            match ev {
                TallyEvent::Quorum { txid, votes, .. } => {
                    self.vote_collection_ended(now, &txid);
                    let proof = Arc::new(TimeProof {
                        chain_id: self.cfg.chain_id,
                        txid,
                        votes,
                    });
                    self.on_quorum(now, txid, proof);
                }
                TallyEvent::Impossible {
                    txid,
                    reject_weight,
                    rejecters,
                } => self.on_impossible(txid, reject_weight, rejecters),
                TallyEvent::Approving { txid, weight } => {
                    // Locked -> SpentPending with the weight seen so far (memory only).
                    if let Some(rec) = self.txs.get(&txid) {
                        for input in &rec.tx.inputs {
                            if let Some(e) = self.utxos.get_mut(&input.prev) {
                                if let Ok(s) =
                                    e.state.transition(UtxoState::SpentPending { txid, weight })
                                {
                                    e.state = s;
                                }
                            }
                        }
                    }
                }
                TallyEvent::Approval { txid, cert } => self.note_approval(txid, cert),
                TallyEvent::Equivocation {
                    voter,
                    txid,
                    evidence,
                } => {
                    self.metrics.equivocations += 1;
                    // Kept durably once per (voter, transaction), up to a cap.
                    if self.evidence_kept.len() < MAX_EVIDENCE
                        && self.evidence_kept.insert((voter, txid))
                    {
                        self.round.writes.push(Write::PutEvidence(*evidence));
                    }
                    self.emit(Event::Equivocation { voter, txid });
                }
            }
        }
    }

    /// The tally reported the quorum for `txid`: its vote collection ended
    /// here (counted once, for a payment this node approved and that is not
    /// final yet by another proof).
    fn vote_collection_ended(&mut self, now: u64, txid: &Txid) {
        if let Some(rec) = self.txs.get(txid) {
            if let (Status::Pending, Some(at)) = (rec.status, rec.voted_ms) {
                self.metrics.vote_collection.observe(now.saturating_sub(at));
            }
        }
    }

    fn on_quorum(&mut self, now: u64, txid: Txid, proof: Arc<TimeProof>) {
        if let Some(rec) = self.txs.get(&txid) {
            if rec.status == Status::Finalized {
                return;
            }
            // Even a transaction this node refused is final once a quorum
            // approved it: the proof outranks the local view.
            let (tx, origin) = (rec.tx.clone(), rec.origin);
            self.process(now, txid, tx, origin, Some(proof));
        } else if let Some(o) = self.orphans.get_mut(&txid) {
            o.proof = Some(proof);
        } else {
            // Finalize when the transaction arrives; ask peers for it in case
            // it never does (this node may have dropped it under overload).
            if self.proofs_waiting.len() < self.cfg.max_unknown_tallies {
                self.proofs_waiting.insert(txid, proof);
            }
            if self.requested_parents.insert(txid) {
                self.round.outputs.push(Output::RequestProof(txid));
            }
        }
    }

    fn on_impossible(&mut self, txid: Txid, reject: u64, rejecters: Vec<(PublicKey, RejectCode)>) {
        let total = self.registry.total_weight();
        let quorum = self.quorum();
        // The most common reason among the rejecters.
        let mut counts: HashMap<RejectCode, usize> = HashMap::new();
        for (_, c) in &rejecters {
            *counts.entry(*c).or_default() += 1;
        }
        let reason = counts
            .into_iter()
            .max_by_key(|(c, n)| (*n, std::cmp::Reverse(c.code())))
            .map(|(c, _)| c)
            .unwrap_or(RejectCode::ApprovalImpossible);
        let detail = format!(
            "masternodes with weight {reject} of {total} rejected it ({}); approval can no longer reach {quorum}",
            reason.describe()
        );
        let event = Event::Rejected {
            txid,
            reason,
            detail: detail.clone(),
            rejecters,
        };
        match self.txs.get_mut(&txid) {
            Some(r) if r.status == Status::Pending => {
                r.rejection = Some((reason, detail));
                self.set_status(txid, Status::Rejected);
                self.metrics.tx_rejected += 1;
                if self.my_votes.get(&txid).is_some_and(|d| d.is_approve()) {
                    // Our locks stay (our approval is out); after a restart it
                    // must not come back as pending.
                    self.round.writes.push(Write::PutStuck(txid));
                }
                self.emit(event);
            }
            Some(_) => {}
            None => {
                if self.impossible_waiting.len() < self.cfg.max_unknown_tallies {
                    self.impossible_waiting.insert(txid, event);
                }
            }
        }
    }

    /// A vote batch this node signed (now, or before a restart): counted
    /// like anyone's, and broadcast.
    fn own_batch_signed(&mut self, now: u64, batch: VoteBatch) {
        self.round
            .outputs
            .push(Output::BroadcastVotes(Arc::new(batch.clone())));
        if self.cfg.external_tally || self.registry.weight_of(&self.me).is_none() {
            return;
        }
        let vb = Arc::new(VerifiedBatch::own(batch));
        let mut events = Vec::new();
        self.aggregator.add(now, &vb, None, &mut events);
        self.handle_tally_events(now, events);
    }

    fn set_status(&mut self, txid: Txid, status: Status) {
        if let Some(rec) = self.txs.get_mut(&txid) {
            if rec.status == Status::Pending && status != Status::Pending {
                self.pending_count -= 1;
                if std::mem::take(&mut rec.in_window) {
                    self.in_window -= 1;
                }
            }
            rec.status = status;
        }
    }

    /// Applies a verified TimeProof for a known transaction whose inputs are all
    /// known here.
    fn finalize(&mut self, now: u64, txid: Txid, proof: Arc<TimeProof>) {
        let Some(rec) = self.txs.get(&txid) else {
            return;
        };
        if rec.status == Status::Finalized {
            return;
        }
        if self.known_final(&txid) {
            // Final before (the record was trimmed, or this node restarted):
            // its outputs exist. Nothing to apply, log or announce again.
            self.set_status(txid, Status::Finalized);
            return;
        }
        let tx = rec.tx.clone();
        if tx.inputs.iter().any(|i| !self.utxos.contains(&i.prev)) {
            // Callers park such transactions as orphans first; finalizing now
            // would leave the parent's output looking unspent when it comes.
            return;
        }
        let weight = self.proof_weight(&proof);
        // A competing proof for an output already final here: only possible
        // with Byzantine weight >= 1/3 (or a bug). Record it, keep the proof
        // as evidence, and do not apply the second transaction.
        let mut conflicts = Vec::new();
        for input in &tx.inputs {
            if let Some(
                UtxoState::SpentFinalized { txid: other }
                | UtxoState::Confirmed { txid: other, .. },
            ) = self.utxos.get(&input.prev).map(|e| e.state)
            {
                if other != txid {
                    conflicts.push((input.prev, other));
                }
            }
        }
        if !conflicts.is_empty() {
            for (outpoint, other) in conflicts {
                let other_weight = self.txs.get(&other).map_or(0, |r| r.proof_weight);
                let winner = if (weight, std::cmp::Reverse(txid))
                    > (other_weight, std::cmp::Reverse(other))
                {
                    txid
                } else {
                    other
                };
                let rec = ConflictRecord {
                    outpoint,
                    kept: other,
                    kept_weight: other_weight,
                    competing: txid,
                    competing_weight: weight,
                    winner,
                    detected_at_ms: now,
                    resolved: false,
                };
                self.metrics.conflicting_proofs += 1;
                self.conflicts.push(rec.clone());
                self.emit(Event::ConflictingProofs(rec));
            }
            self.round.writes.push(Write::PutProof((*proof).clone()));
            if let Some(r) = self.txs.get_mut(&txid) {
                r.rejection = Some((
                    RejectCode::ConflictFinalized,
                    "a conflicting transaction was final first".into(),
                ));
            }
            self.set_status(txid, Status::Rejected);
            return;
        }
        let mut losers = Vec::new();
        let mut lost = Vec::new();
        let mut addresses = Vec::new();
        let mut spent = Vec::with_capacity(tx.inputs.len());
        for input in &tx.inputs {
            let Some(entry) = self.utxos.get_mut(&input.prev) else {
                continue;
            };
            if let UtxoState::Locked { txid: other } | UtxoState::SpentPending { txid: other, .. } =
                entry.state
            {
                if other != txid {
                    losers.push(other);
                    lost.push((input.prev, other));
                }
            }
            addresses.push(entry.output.address);
            entry.state = UtxoState::SpentFinalized { txid };
            spent.push((input.prev, *entry));
            self.round.writes.push(Write::PutUtxo(input.prev, *entry));
        }
        self.create_outputs(txid, &tx, &mut addresses);
        addresses.sort();
        addresses.dedup();
        // `approve` already stored the transaction with this node's vote.
        if self.my_votes.get(&txid) != Some(&Decision::Approve) {
            self.round
                .writes
                .push(Write::PutTransaction(txid, (*tx).clone()));
        }
        self.round.writes.push(Write::PutProof((*proof).clone()));
        self.metrics.proof_held(&proof, &self.registry);
        self.set_status(txid, Status::Finalized);
        let mut age_ms = None;
        if let Some(r) = self.txs.get_mut(&txid) {
            r.proof_weight = weight;
            age_ms = r.seen_this_run.then(|| now.saturating_sub(r.since_ms));
        }
        self.metrics.tx_finalized += 1;
        self.remember_proof(proof.clone());
        self.emit(Event::Finalized {
            txid,
            proof,
            tx: tx.clone(),
            age_ms,
            addresses,
            spent,
        });
        self.reject_losers(txid, losers);
        for (outpoint, loser) in lost {
            // This node approved the loser: watch who approved both.
            self.watch_conflict(now, outpoint, loser, txid, tx.clone());
        }
        self.wake_orphans(now, txid);
    }

    /// Keeps `proof` among the [`RECENT_PROOFS`] last applied.
    fn remember_proof(&mut self, proof: Arc<TimeProof>) {
        if self
            .recent_proofs
            .insert(proof.txid, proof.clone())
            .is_none()
        {
            self.recent_order.push_back(proof.txid);
        }
        while self.recent_order.len() > RECENT_PROOFS {
            if let Some(old) = self.recent_order.pop_front() {
                self.recent_proofs.remove(&old);
            }
        }
    }

    /// `second` (with `second_tx`) spends `outpoint`, which `first` spends
    /// too: from now on, compare who approves which side. Both must be
    /// known here (the first's record may have been trimmed: then nothing
    /// is watched).
    fn watch_conflict(
        &mut self,
        now: u64,
        outpoint: OutPoint,
        first: Txid,
        second: Txid,
        second_tx: Arc<Transaction>,
    ) {
        let Some(first_tx) = self.txs.get(&first).map(|r| r.tx.clone()) else {
            return;
        };
        if first == second {
            return;
        }
        if !self.conflict_watches.contains_key(&outpoint)
            && self.conflict_watches.len() >= MAX_CONFLICT_WATCHES
        {
            self.metrics.conflict_watches_refused += 1;
            return;
        }
        let w = self
            .conflict_watches
            .entry(outpoint)
            .or_insert_with(|| ConflictWatch {
                sides: Vec::new(),
                approvals: HashMap::new(),
                since_ms: now,
            });
        let mut added = Vec::new();
        for (txid, tx) in [(first, first_tx), (second, second_tx)] {
            if w.sides.len() < MAX_CONFLICT_SIDES && !w.sides.iter().any(|(t, _)| *t == txid) {
                w.sides.push((txid, tx));
                added.push(txid);
            }
        }
        for txid in added {
            self.watched_sides.entry(txid).or_default().push(outpoint);
            if let Some(p) = self.recent_proofs.get(&txid).cloned() {
                for cert in &p.votes {
                    self.note_approval(txid, cert.clone());
                }
            }
            if self.cfg.external_tally {
                self.round.outputs.push(Output::WatchApprovals(txid));
            } else {
                let mut events = Vec::new();
                self.aggregator.watch(now, txid, &mut events);
                self.handle_tally_events(now, events);
            }
        }
    }

    /// A verified approval of a watched side. A voter that approved another
    /// side of the same output equivocated: both certificates are kept,
    /// with both transactions (once per voter and output, up to
    /// [`MAX_EVIDENCE`]).
    fn note_approval(&mut self, txid: Txid, cert: VoteCert) {
        if cert.voter == self.me || !cert.decision.is_approve() {
            return;
        }
        let Some(outpoints) = self.watched_sides.get(&txid).cloned() else {
            return;
        };
        for outpoint in outpoints {
            let Some(w) = self.conflict_watches.get_mut(&outpoint) else {
                continue;
            };
            let voter = cert.voter;
            let (earlier, first) = match w.approvals.get(&voter) {
                None => {
                    w.approvals.insert(voter, (txid, cert.clone()));
                    continue;
                }
                Some((t, _)) if *t == txid => continue,
                Some((t, c)) => (*t, c.clone()),
            };
            if self.approval_evidence_kept.contains(&(voter, outpoint)) {
                continue;
            }
            // Kept once per voter and output, up to the cap; beyond it
            // counted only.
            let keep = self.approval_evidence_kept.len() < MAX_EVIDENCE;
            if keep {
                self.approval_evidence_kept.insert((voter, outpoint));
            }
            let side = |t: Txid| w.sides.iter().find(|(s, _)| *s == t).map(|(_, tx)| tx);
            let (Some(first_tx), Some(second_tx)) = (side(earlier), side(txid)) else {
                continue;
            };
            let evidence = ConflictingApprovals {
                outpoint,
                first_tx: (**first_tx).clone(),
                first,
                second_tx: (**second_tx).clone(),
                second: cert.clone(),
            };
            self.metrics.conflicting_approvals += 1;
            if keep {
                self.round
                    .writes
                    .push(Write::PutApprovalEvidence(Box::new(evidence)));
            }
            self.emit(Event::Equivocation { voter, txid });
        }
    }

    /// Creates the outputs of a transaction that became final (and notes
    /// their addresses).
    fn create_outputs(&mut self, txid: Txid, tx: &Transaction, addresses: &mut Vec<Address>) {
        for (vout, out) in tx.outputs.iter().enumerate() {
            let op = OutPoint {
                txid,
                vout: vout as u32,
            };
            let entry = UtxoEntry {
                output: *out,
                state: UtxoState::Unspent,
            };
            // Finalized again (a late or replayed proof after a restart or a
            // trim): its outputs may be locked or spent by now. Never write
            // them back as Unspent, in memory or on disk.
            if self.utxos.insert_new(op, entry) {
                self.round.writes.push(Write::PutUtxo(op, entry));
            }
            addresses.push(out.address);
        }
    }

    /// Pending transactions that lost their inputs to final `winner`.
    fn reject_losers(&mut self, winner: Txid, losers: Vec<Txid>) {
        for loser in losers {
            if self
                .txs
                .get(&loser)
                .is_some_and(|r| r.status == Status::Pending)
            {
                self.set_status(loser, Status::Rejected);
                if let Some(r) = self.txs.get_mut(&loser) {
                    r.rejection = Some((
                        RejectCode::ConflictFinalized,
                        format!("conflicting transaction {winner} is final"),
                    ));
                }
                self.metrics.tx_rejected += 1;
                self.emit(Event::Rejected {
                    txid: loser,
                    reason: RejectCode::ConflictFinalized,
                    detail: format!("conflicting transaction {winner} is final"),
                    rejecters: vec![],
                });
            }
        }
    }

    /// A transaction of a committed block, at `height`. Final here: its
    /// inputs move from `SpentFinalized` to `Confirmed`. Not final here (a
    /// block synced from peers, whose certificate carries more than 2/3 of
    /// the weight, and honest masternodes vote only for blocks of payments
    /// final at them): it becomes final and confirmed in one step. Returns
    /// how many inputs moved.
    pub fn apply_committed(
        &mut self,
        now: u64,
        tx: &Arc<Transaction>,
        height: u64,
    ) -> Result<usize, CommittedTxError> {
        let txid = tx.txid();
        let next = UtxoState::Confirmed { txid, height };
        if !self.known_final(&txid) {
            for input in &tx.inputs {
                match self.utxos.get(&input.prev).map(|e| e.state) {
                    None => return Err(CommittedTxError::MissingInput(txid, input.prev)),
                    Some(
                        UtxoState::SpentFinalized { txid: other }
                        | UtxoState::Confirmed { txid: other, .. },
                    ) if other != txid => {
                        return Err(CommittedTxError::ConflictsWithFinal {
                            txid,
                            final_tx: other,
                        })
                    }
                    _ => {}
                }
            }
            let mut losers = Vec::new();
            let mut addresses = Vec::new();
            for input in &tx.inputs {
                let Some(entry) = self.utxos.get_mut(&input.prev) else {
                    continue;
                };
                if let UtxoState::Locked { txid: other }
                | UtxoState::SpentPending { txid: other, .. } = entry.state
                {
                    if other != txid {
                        losers.push(other);
                    }
                }
                entry.state = next;
                self.round.writes.push(Write::PutUtxo(input.prev, *entry));
            }
            self.create_outputs(txid, tx, &mut addresses);
            self.round
                .writes
                .push(Write::PutTransaction(txid, (**tx).clone()));
            // Its proof is still wanted (wallets resubmitting here get it,
            // the finality log lists it): the catch-up fetches it, and a
            // payment known here (a wallet may be waiting) is asked for at
            // once and again like a stalled one.
            let fresh = self.unproven.len() < MAX_UNPROVEN
                && self.unproven.insert(txid, tx.clone()).is_none();
            if !fresh && !self.unproven.contains_key(&txid) {
                self.metrics.unproven_untracked += 1;
            }
            if self.txs.contains_key(&txid) {
                self.set_status(txid, Status::Finalized);
                if fresh {
                    self.round.outputs.push(Output::RequestProof(txid));
                }
            }
            self.metrics.tx_synced_from_blocks += 1;
            self.reject_losers(txid, losers);
            self.wake_orphans(now, txid);
            return Ok(tx.inputs.len());
        }
        let mut moved = 0;
        for input in &tx.inputs {
            if let Some(entry) = self.utxos.get_mut(&input.prev) {
                if entry.state == (UtxoState::SpentFinalized { txid }) {
                    if let Ok(state) = entry.state.transition(next) {
                        entry.state = state;
                        self.round.writes.push(Write::PutUtxo(input.prev, *entry));
                        moved += 1;
                    }
                }
            }
        }
        Ok(moved)
    }

    fn proof_weight(&self, proof: &TimeProof) -> u64 {
        proof
            .votes
            .iter()
            .filter_map(|v| self.registry.weight_of(&v.voter))
            .sum()
    }

    fn wake_orphans(&mut self, now: u64, parent: Txid) {
        self.requested_parents.remove(&parent);
        let Some(children) = self.orphans_by_parent.remove(&parent) else {
            return;
        };
        for child in children {
            if let Some(o) = self.orphans.remove(&child) {
                self.process(now, child, o.tx, o.origin, o.proof);
            }
        }
    }

    /// A TimeProof from a peer (usually answering [`Output::RequestProof`]),
    /// with its transaction.
    pub fn handle_proof(&mut self, now: u64, tx: Transaction, proof: TimeProof) {
        self.metrics.proofs_received += 1;
        let txid = tx.txid();
        if self.unproven.contains_key(&txid) {
            if proof.txid == txid && proof.verify(self.cfg.chain_id, &self.registry).is_ok() {
                self.prove_confirmed(now, txid, proof);
            }
            return;
        }
        if self.is_finalized(&txid) || self.known_final(&txid) {
            // Nothing to learn: do not pay for verifying it (peers answer
            // every proof request, and anyone can replay a valid proof).
            return;
        }
        // Cheap before expensive: the proof's structure and weight, then its
        // signatures, then the transaction's input signatures.
        if proof.txid != txid
            || proof.verify(self.cfg.chain_id, &self.registry).is_err()
            || precheck(&tx, &txid, self.cfg.chain_id, &self.cfg.limits).is_err()
        {
            self.metrics.proofs_invalid += 1;
            return;
        }
        self.apply_verified_proof(now, txid, tx, proof);
    }

    /// A proof the caller checked with [`verify_proof`] (on a verifier
    /// thread, off the core): applied without verifying it again.
    pub fn handle_verified_proof(&mut self, now: u64, tx: Transaction, proof: TimeProof) {
        self.metrics.proofs_received += 1;
        let txid = tx.txid();
        if self.unproven.contains_key(&txid) && proof.txid == txid {
            return self.prove_confirmed(now, txid, proof);
        }
        if self.is_finalized(&txid) || self.known_final(&txid) || proof.txid != txid {
            return;
        }
        self.apply_verified_proof(now, txid, tx, proof);
    }

    /// The proof of a payment a block confirmed before it came: stored, and
    /// its finality announced (the finality log, wallets).
    fn prove_confirmed(&mut self, now: u64, txid: Txid, proof: TimeProof) {
        let Some(tx) = self.unproven.remove(&txid) else {
            return;
        };
        let age_ms = self
            .txs
            .get(&txid)
            .filter(|r| r.seen_this_run)
            .map(|r| now.saturating_sub(r.since_ms));
        let mut addresses: Vec<Address> = tx.outputs.iter().map(|o| o.address).collect();
        for i in &tx.inputs {
            if let Some(e) = self.utxos.get(&i.prev) {
                addresses.push(e.output.address);
            }
        }
        addresses.sort();
        addresses.dedup();
        self.round.writes.push(Write::PutProof(proof.clone()));
        self.metrics.proof_held(&proof, &self.registry);
        self.metrics.tx_finalized += 1;
        self.emit(Event::Finalized {
            txid,
            proof: Arc::new(proof),
            tx,
            age_ms,
            addresses,
            spent: Vec::new(),
        });
    }

    fn apply_verified_proof(&mut self, now: u64, txid: Txid, tx: Transaction, proof: TimeProof) {
        let proof = Arc::new(proof);
        if let Some(o) = self.orphans.get_mut(&txid) {
            o.proof = Some(proof);
            return;
        }
        if let Some(rec) = self.txs.get_mut(&txid) {
            // Known here (pending or even refused by us): the proof settles
            // it, once its inputs are known (else it waits as an orphan).
            if rec.status == Status::Rejected {
                rec.status = Status::Pending;
                self.pending_count += 1;
            }
            let (tx, origin) = (rec.tx.clone(), rec.origin);
            return self.process(now, txid, tx, origin, Some(proof));
        }
        self.process(now, txid, Arc::new(tx), Origin::Peer, Some(proof));
    }

    /// Periodic housekeeping: expire orphans, forget state this node never
    /// voted on, trim decided records. Never releases a lock this node voted on.
    pub fn tick(&mut self, now: u64) {
        let mut expired: Vec<Txid> = self
            .orphans
            .iter()
            .filter(|(_, o)| now.saturating_sub(o.since_ms) >= self.cfg.orphan_timeout_ms)
            .map(|(t, _)| *t)
            .collect();
        // Deterministic order (the simulator replays seeds byte for byte).
        expired.sort();
        for txid in expired {
            if let Some(o) = self.orphans.remove(&txid) {
                self.metrics.orphans_expired += 1;
                // A later orphan of the same parent asks again.
                for i in &o.tx.inputs {
                    self.requested_parents.remove(&i.prev.txid);
                }
                for list in self.orphans_by_parent.values_mut() {
                    list.retain(|t| *t != txid);
                }
                let missing =
                    o.tx.inputs
                        .iter()
                        .find(|i| !self.utxos.contains(&i.prev))
                        .map(|i| i.prev)
                        .unwrap_or(o.tx.inputs[0].prev);
                self.refuse(now, txid, o.tx, o.origin, TxError::UnknownInput(missing));
            }
        }
        self.orphans_by_parent.retain(|_, l| !l.is_empty());
        #[cfg(feature = "planted-bugs")]
        if self.cfg.planted.release_voted_locks_on_timeout {
            self.planted_release(now);
        }
        // Undecided for a while: maybe this node missed votes. Peers that
        // finalized it answer with the proof.
        let stall = self.cfg.stall_request_ms;
        let mut stalled = Vec::new();
        let window_age = self.cfg.origin_window_age_ms;
        for (txid, rec) in self.txs.iter_mut() {
            if rec.in_window && now.saturating_sub(rec.since_ms) >= window_age {
                // Undecided this long: its votes may never come. It keeps
                // its lock and its mempool place, not its window place.
                rec.in_window = false;
                self.in_window -= 1;
            }
            // Confirmed by a block without its proof here: asked for too.
            let waiting = rec.status == Status::Pending || self.unproven.contains_key(txid);
            if waiting
                && now.saturating_sub(rec.since_ms) >= stall
                && now.saturating_sub(rec.last_request_ms) >= stall
            {
                rec.last_request_ms = now;
                stalled.push(*txid);
            }
        }
        stalled.sort();
        self.round
            .outputs
            .extend(stalled.into_iter().map(Output::RequestProof));
        let timeout = self.cfg.lock_timeout_ms;
        let keep = self.cfg.decided_retention_ms;
        let txs = &self.txs;
        self.aggregator.expire(now, timeout, keep, |txid| {
            txs.get(txid).is_some_and(|r| r.status == Status::Pending)
        });
        let keep = self.cfg.decided_retention_ms;
        self.txs
            .retain(|_, r| r.status == Status::Pending || now.saturating_sub(r.since_ms) < keep);
        let before = self.conflict_watches.len();
        self.conflict_watches
            .retain(|_, w| now.saturating_sub(w.since_ms) < keep);
        if self.conflict_watches.len() != before {
            let watches = &self.conflict_watches;
            self.watched_sides.retain(|_, ops| {
                ops.retain(|op| watches.contains_key(op));
                !ops.is_empty()
            });
        }
        // Unclaimed proofs and rejections: the transaction never came.
        if self.proofs_waiting.len() > self.cfg.max_unknown_tallies / 2 {
            self.proofs_waiting.clear();
        }
        if self.impossible_waiting.len() > self.cfg.max_unknown_tallies / 2 {
            self.impossible_waiting.clear();
        }
        if self.requested_parents.len() > self.cfg.max_orphans {
            self.requested_parents.clear();
        }
    }

    #[cfg(feature = "planted-bugs")]
    fn planted_release(&mut self, now: u64) {
        let stale: Vec<Txid> = self
            .txs
            .iter()
            .filter(|(_, r)| {
                r.status == Status::Pending
                    && now.saturating_sub(r.since_ms) >= self.cfg.lock_timeout_ms
            })
            .map(|(t, _)| *t)
            .collect();
        for txid in stale {
            let tx = self.txs[&txid].tx.clone();
            for i in &tx.inputs {
                self.approved_spends.remove(&i.prev);
                if let Some(e) = self.utxos.get_mut(&i.prev) {
                    if e.state.holder() == Some(txid) {
                        e.state = UtxoState::Unspent;
                    }
                }
            }
            self.my_votes.remove(&txid);
            self.set_status(txid, Status::Rejected);
        }
    }

    /// The invariants every round ends with (debug builds: every unit test
    /// and debug simulation run checks them on every round).
    #[cfg(debug_assertions)]
    fn check_invariants(&self) {
        for (op, holder) in &self.approved_spends {
            let state = self.utxos.get(op).map(|e| e.state);
            debug_assert!(
                !matches!(state, None | Some(UtxoState::Unspent)),
                "approved spend of {op} by {holder} is {state:?}: a voted lock was released"
            );
            if let Some(UtxoState::Locked { txid } | UtxoState::SpentPending { txid, .. }) = state {
                debug_assert_eq!(
                    txid, *holder,
                    "lock on {op} differs from the approved spend"
                );
            }
        }
        let pending = self
            .txs
            .values()
            .filter(|r| r.status == Status::Pending)
            .count();
        debug_assert_eq!(pending, self.pending_count, "pending count drifted");
        let in_window = self.txs.values().filter(|r| r.in_window).count();
        debug_assert_eq!(in_window, self.in_window, "origin window count drifted");
        debug_assert!(
            self.txs
                .values()
                .all(|r| !r.in_window || r.status == Status::Pending),
            "a decided payment counted in the origin window"
        );
    }

    /// Ends a round: signs the queued votes into one batch (durable via the
    /// vote log write, sent after), and hands back the round's effects.
    pub fn end_round(&mut self, now: u64) -> Round {
        #[cfg(debug_assertions)]
        self.check_invariants();
        while !self.vote_queue.is_empty() {
            let n = self
                .vote_queue
                .len()
                .min(self.cfg.max_vote_batch_items.clamp(1, MAX_VOTE_ITEMS));
            let items: Vec<VoteItem> = self.vote_queue.drain(..n).collect();
            let batch = VoteBatch::sign(self.cfg.chain_id, self.registry.epoch(), &self.key, items);
            self.metrics.vote_batches_signed += 1;
            self.round.writes.push(Write::AppendOwnVotes(batch.clone()));
            self.own_batch_signed(now, batch);
        }
        self.utxos.end_round();
        std::mem::take(&mut self.round)
    }
}

/// The registry's quorum, or a planted one in the simulator's control runs.
fn effective_quorum(cfg: &EngineConfig, registry: &Registry) -> u64 {
    #[cfg(feature = "planted-bugs")]
    if let Some(q) = cfg.planted.quorum {
        return q;
    }
    let _ = cfg;
    registry.quorum()
}

/// Everything [`Engine::handle_proof`] checks before applying a proof, for a
/// verifier thread: the proof (structure first, then signatures), then the
/// transaction's own checks and input signatures.
pub fn verify_proof(
    tx: &Transaction,
    proof: &TimeProof,
    chain_id: ChainId,
    registry: &Registry,
    limits: &Limits,
) -> Result<(), ProofOrTxError> {
    let txid = tx.txid();
    if proof.txid != txid {
        return Err(ProofOrTxError::Mismatch);
    }
    proof.verify(chain_id, registry)?;
    precheck(tx, &txid, chain_id, limits)?;
    Ok(())
}

/// Why a (transaction, proof) pair was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofOrTxError {
    #[error("the proof is for another transaction")]
    Mismatch,
    #[error("proof: {0}")]
    Proof(#[from] crate::protocol::timeproof::ProofError),
    #[error("transaction: {0}")]
    Tx(#[from] TxError),
}

/// Stateless checks and signature verification: safe to run on any thread
/// before the engine sees the transaction.
pub fn precheck(
    tx: &Transaction,
    txid: &Txid,
    chain_id: ChainId,
    limits: &Limits,
) -> Result<(), TxError> {
    validation::check_stateless(tx, chain_id, limits)?;
    validation::verify_signatures(tx, txid)
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
