//! Prometheus metrics of one masternode and the `/metrics` endpoint that
//! serves them ([`serve_metrics`], text format 0.0.4, `metrics_listen`).
//!
//! Counters live where the work happens: the transport's per-class traffic
//! and queue drops in [`Traffic`] (counted by `peer_net` and `peer_glue`),
//! the core's outcomes in [`CoreMetrics`] (counted by the core thread as it
//! dispatches a round's events), the existing per-component atomics
//! (`NetStats`, `FastPathStats`, `VoteThreadStats`, `VerifierStats`, `PeerCheckStats`,
//! `WalletStats`) read at scrape time by [`NodeCollector`]. State values
//! (finalized payments, UTXO set size, database size) are read from the
//! store, so they survive restarts; the state machine's own counters and
//! histograms (vote collection in the engine, block commit time and round
//! in the consensus, missed votes per masternode, the Byzantine detections
//! of each place that detects one) are published by the core thread once a
//! second ([`CoreSnapshot`]) and encoded from there at scrape time.
//!
//! Owns no protocol logic and never blocks the core: a scrape reads atomics
//! and one snapshot behind a mutex the core holds only to copy into it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use time_net::priority::Priority;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::masternode::{Masternode, MasternodeStats};
use crate::node::fastpath::FastPathStats;
use crate::node::peer_check::PeerCheckStats;
use crate::node::verifier::VerifierStats;
use crate::node::vote_threads::VoteThreadStats;
use crate::node::wallet_server::WalletStats;
use crate::node::wire::NetStats;
use crate::protocol::engine::{Event, Metrics as EngineMetrics};
use crate::protocol::types::PublicKey;
use crate::protocol::validation::RejectCode;
use crate::protocol::vote::VoteBatch;
use crate::storage::LmdbStore;
use timecoin_core::histogram::{Buckets, Histogram as CoreHistogram};

/// Scrapes served at once; one more waits for a slot (Prometheus scrapes
/// once per interval; anything else is local tooling).
pub const MAX_METRICS_CONNECTIONS: usize = 16;
/// A scrape connection that sends no complete request in this long is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The priority class a message travels in, as a label value.
pub fn class_name(p: Priority) -> &'static str {
    match p {
        Priority::Critical => "critical",
        Priority::High => "high",
        Priority::Normal => "normal",
        Priority::Low => "low",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    pub class: &'static str,
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MasternodeLabel {
    masternode: String,
}

/// A masternode as a label value: the first 8 bytes of its key in hex
/// (unique enough for a registry, short enough for a legend).
pub fn masternode_label(key: &PublicKey) -> String {
    hex::encode(&key.0[..8])
}

/// Peer messages and bytes per priority class and direction, and the
/// messages refused by a full peer queue per class.
#[derive(Debug)]
pub struct Traffic {
    pub messages: Family<TrafficLabels, Counter>,
    pub bytes: Family<TrafficLabels, Counter>,
    pub queue_drops: Family<ClassLabel, Counter>,
}

const CLASSES: [Priority; 4] = [
    Priority::Critical,
    Priority::High,
    Priority::Normal,
    Priority::Low,
];

impl Default for Traffic {
    /// Every class's series exists from the start (at 0), so dashboards and
    /// alerts see them before the first message.
    fn default() -> Self {
        let t = Traffic {
            messages: Family::default(),
            bytes: Family::default(),
            queue_drops: Family::default(),
        };
        for p in CLASSES {
            for direction in ["in", "out"] {
                t.count(p, direction, 0, 0);
            }
            let _created = t.queue_drops.get_or_create(&ClassLabel {
                class: class_name(p),
            });
        }
        t
    }
}

impl Traffic {
    fn count(&self, prio: Priority, direction: &'static str, messages: u64, bytes: u64) {
        let l = TrafficLabels {
            class: class_name(prio),
            direction,
        };
        self.messages.get_or_create(&l).inc_by(messages);
        self.bytes.get_or_create(&l).inc_by(bytes);
    }

    /// `n` copies of a `len`-byte frame queued towards peers.
    pub fn sent(&self, prio: Priority, len: usize, n: usize) {
        self.count(prio, "out", n as u64, (len * n) as u64);
    }

    /// A `len`-byte frame received from a peer.
    pub fn received(&self, prio: Priority, len: usize) {
        self.count(prio, "in", 1, len as u64);
    }

    /// `n` frames refused by full peer queues.
    pub fn dropped(&self, prio: Priority, n: usize) {
        if n > 0 {
            self.queue_drops
                .get_or_create(&ClassLabel {
                    class: class_name(prio),
                })
                .inc_by(n as u64);
        }
    }
}

/// A reject code as a label value (stable, snake case).
pub fn reason_name(r: RejectCode) -> &'static str {
    use RejectCode::*;
    match r {
        Oversized => "oversized",
        NoInputs => "no_inputs",
        NoOutputs => "no_outputs",
        TooManyItems => "too_many_items",
        DuplicateInput => "duplicate_input",
        UnknownInput => "unknown_input",
        InputLocked => "input_locked",
        InputSpent => "input_spent",
        BadSignature => "bad_signature",
        WrongOwner => "wrong_owner",
        InsufficientFunds => "insufficient_funds",
        FeeTooLow => "fee_too_low",
        DustOutput => "dust_output",
        WrongChain => "wrong_chain",
        UnsupportedVersion => "unsupported_version",
        AmountOverflow => "amount_overflow",
        MempoolFull => "mempool_full",
        ConflictFinalized => "conflict_finalized",
        ApprovalImpossible => "approval_impossible",
        Expired => "expired",
        CatchingUp => "catching_up",
        Other(_) => "other",
    }
}

/// What the core thread counts as it dispatches a round's events, and the
/// state gauges it sets once a second.
#[derive(Debug)]
pub struct CoreMetrics {
    /// From first sight at this node to its TimeProof.
    pub finality: Histogram,
    /// Per round with writes: its store commit (the write-ahead log append
    /// and `fdatasync`, plus any wait for room behind the store writer),
    /// which everything of the round waits for before it leaves the node
    /// (the disk's share of every hop).
    pub round_sync: Histogram,
    /// Per round: the core's work on it before its commit (its inputs, its
    /// timers and the state machine's end of round), which every payment
    /// in flight at the node waits for besides the sync.
    pub round_work: Histogram,
    pub finalized: Counter,
    pub rejected: Family<ReasonLabel, Counter>,
    /// Rejections because an input was locked or spent by another
    /// transaction, or a conflicting one is final.
    pub double_spends_prevented: Counter,
    pub equivocations: Counter,
    pub conflicting_proofs: Counter,
    /// Vote items in the vote batches this node signed and sent.
    pub votes_sent: Counter,
    pub mempool: Gauge,
    pub awaiting_finality: Gauge,
    pub catching_up: Gauge,
    pub peers_connected: Gauge,
    pub peers_known: Gauge,
    pub peers_banned: Gauge,
    /// Payments final in the store (its finality log): survives restarts.
    pub finalized_stored: Gauge,
    pub utxo_set: Gauge,
    pub database_bytes: Gauge,
    pub database_limit_bytes: Gauge,
    /// Lowest reputation among the known peers (0 when none was penalized).
    pub min_peer_reputation: Gauge,
}

/// Round sync buckets, seconds: a sequential append and `fdatasync` takes
/// 0.1-0.3 ms on a quiet SSD; past 10 ms the disk holds up every payment.
const ROUND_SYNC_BUCKETS: [f64; 12] = [
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0,
];

/// Finality buckets, seconds: the protocol finalizes in milliseconds; a
/// tail past a second means trouble.
const FINALITY_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

impl Default for CoreMetrics {
    fn default() -> Self {
        CoreMetrics {
            finality: Histogram::new(FINALITY_BUCKETS),
            round_sync: Histogram::new(ROUND_SYNC_BUCKETS),
            round_work: Histogram::new(ROUND_SYNC_BUCKETS),
            finalized: Counter::default(),
            rejected: Family::default(),
            double_spends_prevented: Counter::default(),
            equivocations: Counter::default(),
            conflicting_proofs: Counter::default(),
            votes_sent: Counter::default(),
            mempool: Gauge::default(),
            awaiting_finality: Gauge::default(),
            catching_up: Gauge::default(),
            peers_connected: Gauge::default(),
            peers_known: Gauge::default(),
            peers_banned: Gauge::default(),
            finalized_stored: Gauge::default(),
            utxo_set: Gauge::default(),
            database_bytes: Gauge::default(),
            database_limit_bytes: Gauge::default(),
            min_peer_reputation: Gauge::default(),
        }
    }
}

impl CoreMetrics {
    /// A transaction rejected for `reason`.
    pub fn rejected(&self, reason: RejectCode) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason_name(reason),
            })
            .inc();
        if matches!(
            reason,
            RejectCode::InputLocked | RejectCode::InputSpent | RejectCode::ConflictFinalized
        ) {
            self.double_spends_prevented.inc();
        }
    }
}

impl CoreMetrics {
    /// Counts one of a round's events (the core thread, as it dispatches).
    pub fn event(&self, ev: &Event) {
        match ev {
            Event::Finalized { age_ms, .. } => {
                self.finalized.inc();
                // Not timed when it was pending before a restart: its
                // arrival time is not known.
                if let Some(ms) = age_ms {
                    self.finality.observe(*ms as f64 / 1000.0);
                }
            }
            Event::Rejected { reason, .. } => self.rejected(*reason),
            Event::Equivocation { .. } => {
                self.equivocations.inc();
            }
            Event::ConflictingProofs(_) => {
                self.conflicting_proofs.inc();
            }
            Event::Accepted { .. } => {}
        }
    }

    /// Vote items of a batch this node signed, on their way out.
    pub fn votes_out(&self, b: &VoteBatch) {
        self.votes_sent.inc_by(b.items.len() as u64);
    }
}

impl NodeMetrics {
    /// Sets the state gauges and copies the state machine's counters (the
    /// core thread, once a second). A store read error leaves the store
    /// gauges as they were (logged).
    pub fn publish(&self, mn: &Masternode, store: &LmdbStore, peers_connected: u32, now: u64) {
        let c = &self.core;
        c.mempool.set(mn.engine().pending_count() as i64);
        c.awaiting_finality.set(mn.awaiting() as i64);
        c.catching_up.set(mn.is_catching_up() as i64);
        c.peers_connected.set(peers_connected as i64);
        let me = mn.public_key();
        let peers: Vec<PublicKey> = mn
            .engine()
            .registry()
            .masternodes()
            .iter()
            .map(|m| m.key)
            .filter(|k| *k != me)
            .collect();
        c.peers_known.set(peers.len() as i64);
        c.peers_banned.set(mn.bans(now).len() as i64);
        let min_rep = peers
            .iter()
            .filter_map(|p| mn.peer_reputation(p))
            .min()
            .unwrap_or(0);
        c.min_peer_reputation.set(min_rep as i64);
        match store.sizes() {
            Ok(z) => {
                c.finalized_stored.set(z.finalized as i64);
                c.utxo_set.set(z.utxos as i64);
                c.database_bytes.set(z.file_bytes as i64);
                c.database_limit_bytes.set(z.map_bytes as i64);
            }
            Err(e) => warn!("metrics: cannot read store sizes: {e}"),
        }
        let mut snap = match self.snapshot.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        snap.engine = mn.metrics().clone();
        snap.masternode = mn.stats();
        snap.catchup_lag = mn.catchup_lag();
        snap.catchup_held = mn.catchup_held();
        snap.utxo_cache = mn.engine().utxo_cache();
        let registry = mn.engine().registry();
        if snap.masternodes.len() != registry.len() {
            snap.masternodes = registry
                .masternodes()
                .iter()
                .map(|m| masternode_label(&m.key))
                .collect();
        }
        snap.blocks = mn.block_layer().map(|b| BlockSnapshot {
            status: b.status(),
            round: b.consensus().height_round().1,
            // Two certificates at one height, or a committed block that
            // contradicted a payment final here.
            halted: b.consensus().halted().is_some() || b.stopped(),
            consensus: b.consensus().stats().clone(),
            layer: b.stats().clone(),
            sync: b.sync_stats().clone(),
            sync_lag: b.sync_lag(),
        });
    }
}

/// The state machine's counters, copied by the core thread once a second.
#[derive(Debug, Default)]
pub struct CoreSnapshot {
    pub engine: EngineMetrics,
    pub masternode: MasternodeStats,
    /// Finality-log entries a connected peer listed and this node has not
    /// walked yet (most of any peer), and proofs being fetched.
    pub catchup_lag: (u64, usize),
    /// The payment catch-up waits for the block sync.
    pub catchup_held: bool,
    /// The UTXO cache: entries in memory, reads that missed it.
    pub utxo_cache: (usize, u64),
    /// Each registered masternode's label, in registry order.
    pub masternodes: Vec<String>,
    /// The block layer, if it runs.
    pub blocks: Option<BlockSnapshot>,
}

/// The block layer's state and counters, copied once a second.
#[derive(Debug, Clone)]
pub struct BlockSnapshot {
    pub status: timecoin_core::protocol::message::BlockStatus,
    pub round: u32,
    pub halted: bool,
    pub consensus: timecoin_core::blocks::consensus::ConsensusStats,
    pub layer: timecoin_core::masternode::blocks::BlockLayerStats,
    pub sync: timecoin_core::masternode::block_sync::SyncStats,
    /// Blocks behind the best height peers showed.
    pub sync_lag: u64,
}

/// Everything of one node that `/metrics` shows.
#[derive(Debug)]
pub struct NodeMetrics {
    pub core: Arc<CoreMetrics>,
    pub snapshot: Arc<Mutex<CoreSnapshot>>,
    registry: Registry,
}

/// The per-component stats the collector reads at scrape time.
#[derive(Debug, Clone)]
pub struct Sources {
    pub net: Arc<NetStats>,
    pub wallet: Arc<WalletStats>,
    pub votes: Arc<VoteThreadStats>,
    pub verifier: Arc<VerifierStats>,
    pub checks: Arc<PeerCheckStats>,
    pub fast: Option<Arc<FastPathStats>>,
}

impl NodeMetrics {
    pub fn new(sources: Sources) -> NodeMetrics {
        let core = Arc::new(CoreMetrics::default());
        let snapshot = Arc::new(Mutex::new(CoreSnapshot::default()));
        let mut r = Registry::with_prefix("timecoin");
        let c = &core;
        r.register_with_unit(
            "finality",
            "Time from a transaction's first sight at this node to its TimeProof",
            Unit::Seconds,
            c.finality.clone(),
        );
        r.register_with_unit(
            "round_sync",
            "Store commit of one round (write-ahead log append and fdatasync, plus any wait for the store writer), which its votes and answers wait for",
            Unit::Seconds,
            c.round_sync.clone(),
        );
        r.register_with_unit(
            "round_work",
            "The core's work on one round before its commit (inputs, timers, end of round), which every payment in flight at the node waits for besides the sync",
            Unit::Seconds,
            c.round_work.clone(),
        );
        r.register(
            "transactions_finalized",
            "Transactions finalized (TimeProof) since start",
            c.finalized.clone(),
        );
        r.register(
            "transactions_rejected",
            "Transactions rejected since start, by reason",
            c.rejected.clone(),
        );
        r.register(
            "double_spends_prevented",
            "Rejections because an input was locked or spent by another transaction",
            c.double_spends_prevented.clone(),
        );
        r.register(
            "equivocations",
            "Masternodes seen signing two decisions on one transaction",
            c.equivocations.clone(),
        );
        r.register(
            "conflicting_proofs",
            "Conflicting transactions that both carry TimeProofs (Byzantine weight >= 1/3)",
            c.conflicting_proofs.clone(),
        );
        r.register(
            "votes_sent",
            "Vote items in the vote batches this node signed",
            c.votes_sent.clone(),
        );
        let gauges: [(&str, &str, &Gauge); 11] = [
            (
                "mempool_transactions",
                "Undecided transactions held",
                &c.mempool,
            ),
            (
                "awaiting_finality_transactions",
                "Transactions this node approved and re-announces until final",
                &c.awaiting_finality,
            ),
            (
                "catching_up",
                "1 while this node approves nothing (catching up, or no quorum reachable)",
                &c.catching_up,
            ),
            (
                "peers_connected",
                "Peer masternodes with a live authenticated connection",
                &c.peers_connected,
            ),
            (
                "peers_known",
                "Peer masternodes in the registry",
                &c.peers_known,
            ),
            (
                "peers_banned",
                "Peer masternodes banned now",
                &c.peers_banned,
            ),
            (
                "finalized_transactions_stored",
                "Transactions final in the store (finality log length); survives restarts",
                &c.finalized_stored,
            ),
            (
                "utxo_set_size",
                "Entries in the stored UTXO table (unspent, locked and spent outputs)",
                &c.utxo_set,
            ),
            (
                "database_size_bytes",
                "Size of the LMDB database file",
                &c.database_bytes,
            ),
            (
                "database_limit_bytes",
                "LMDB map size: the database cannot grow past it",
                &c.database_limit_bytes,
            ),
            (
                "peer_reputation_min",
                "Lowest reputation among peer masternodes",
                &c.min_peer_reputation,
            ),
        ];
        for (name, help, g) in gauges {
            r.register(name, help, g.clone());
        }
        let t = &sources.net.traffic;
        r.register(
            "peer_messages",
            "Peer messages by priority class and direction",
            t.messages.clone(),
        );
        r.register_with_unit(
            "peer_traffic",
            "Peer message bytes by priority class and direction",
            Unit::Bytes,
            t.bytes.clone(),
        );
        r.register(
            "peer_queue_drops",
            "Messages refused by a full peer queue, by priority class",
            t.queue_drops.clone(),
        );
        r.register_collector(Box::new(NodeCollector {
            sources,
            snapshot: snapshot.clone(),
        }));
        NodeMetrics {
            core,
            snapshot,
            registry: r,
        }
    }

    /// The text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            warn!("metrics encoding failed: {e}");
        }
        out
    }
}

/// Reads the components' atomics and the core's snapshot at scrape time.
#[derive(Debug)]
struct NodeCollector {
    sources: Sources,
    snapshot: Arc<Mutex<CoreSnapshot>>,
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Writes one counter (`name` gets `_total`).
fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    let m = e.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    let m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    g.encode(m)
}

/// A state machine's histogram of milliseconds (or of counts, `scale` 1),
/// as a Prometheus histogram.
fn histogram<B: Buckets>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    h: &CoreHistogram<B>,
    scale: f64,
) -> std::fmt::Result {
    let buckets: Vec<(f64, u64)> = h
        .buckets()
        .map(|(b, n)| (b.map_or(f64::INFINITY, |b| b as f64 / scale), n))
        .collect();
    let mut m = e.encode_descriptor(name, help, unit, MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(h.sum() as f64 / scale, h.count(), &buckets, None)
}

/// Byzantine behaviour this node detected, one `kind` per place that
/// detects it (each that place's own counter).
fn byzantine(e: &mut DescriptorEncoder, values: &[(&'static str, u64)]) -> std::fmt::Result {
    let mut m = e.encode_descriptor(
        "byzantine_detections",
        "Byzantine behaviour detected, by kind (each counted where it is detected)",
        None,
        MetricType::Counter,
    )?;
    for (kind, v) in values {
        ConstCounter::new(*v).encode(m.encode_family(&KindLabel { kind })?)?;
    }
    Ok(())
}

/// Per registered masternode: finalized payments whose TimeProof held here
/// lacks its approve vote.
fn missed_votes(e: &mut DescriptorEncoder, snap: &CoreSnapshot) -> std::fmt::Result {
    let mut m = e.encode_descriptor(
        "missed_votes",
        "TimeProofs held here without this masternode's approve vote (down or slow), per registered masternode",
        None,
        MetricType::Counter,
    )?;
    for (i, masternode) in snap.masternodes.iter().enumerate() {
        let l = MasternodeLabel {
            masternode: masternode.clone(),
        };
        ConstCounter::new(snap.engine.missed_votes(i)).encode(m.encode_family(&l)?)?;
    }
    Ok(())
}

/// One counter family with a `reason` label.
fn by_reason(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: &[(&'static str, u64)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (reason, v) in values {
        let l = ReasonLabel { reason };
        ConstCounter::new(*v).encode(m.encode_family(&l)?)?;
    }
    Ok(())
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.sources;
        let n = &s.net;
        counter(
            &mut e,
            "frames_received",
            "Frames received from peers and wallets",
            load(&n.frames_in),
        )?;
        counter(
            &mut e,
            "frames_sent",
            "Frame batches written to peers and wallets",
            load(&n.frames_out),
        )?;
        counter(
            &mut e,
            "malformed_frames",
            "Frames from peers that did not decode",
            load(&n.malformed_frames),
        )?;
        counter(
            &mut e,
            "handshake_failures",
            "Connections whose handshake failed",
            load(&n.handshake_failures),
        )?;
        counter(
            &mut e,
            "core_queue_drops",
            "Inputs refused because the core queue was full",
            load(&n.core_queue_drops),
        )?;

        let w = &s.wallet;
        gauge(
            &mut e,
            "wallet_connections",
            "Wallet connections served now",
            load(&w.connections) as i64,
        )?;
        by_reason(
            &mut e,
            "wallet_limit_hits",
            "Wallet requests or connections refused by a limit",
            &[
                ("connections_total", w.refused_total.get()),
                ("connections_per_ip", w.refused_per_ip.get()),
                ("idle_timeout", w.idle_closed.get()),
                ("outstanding_queries", w.queries_refused.get()),
                ("session_queue_full", w.frames_dropped.get()),
                ("origin_window", w.busy.get()),
            ],
        )?;
        counter(
            &mut e,
            "wallet_store_queries_waited",
            "Wallet UTXO and address queries that waited for one of the node's MAX_CONCURRENT_STORE_QUERIES places",
            w.store_queries_waited.get(),
        )?;
        counter(
            &mut e,
            "wallet_answer_bytes_waited",
            "Wallet queries that waited because MAX_ANSWER_BYTES of answers were waiting to be written",
            w.answer_bytes_waited.get(),
        )?;
        counter(
            &mut e,
            "wallet_store_queries_failed",
            "Wallet UTXO and address queries the store could not answer",
            load(&w.store_queries_failed),
        )?;
        gauge(
            &mut e,
            "wallet_payments_in_flight",
            "Payments from this node's wallets and RPC undecided (the origin window's fill)",
            w.in_flight.load(Ordering::Relaxed) as i64,
        )?;

        let v = &s.votes;
        counter(
            &mut e,
            "votes_received",
            "Vote items in peers' batches that verified",
            load(&v.votes_verified),
        )?;
        counter(
            &mut e,
            "vote_batches_verified",
            "Peer vote batches whose signature verified",
            load(&v.batches_verified),
        )?;
        by_reason(
            &mut e,
            "invalid_vote_batches",
            "Peer vote batches refused",
            &[
                ("bad_signature", load(&v.bad_signatures)),
                ("not_admissible", load(&v.refused)),
            ],
        )?;
        counter(
            &mut e,
            "vote_queue_drops",
            "Vote batches refused by a full vote-thread queue",
            load(&v.queue_full),
        )?;

        let vf = &s.verifier;
        counter(
            &mut e,
            "transactions_verified",
            "Transactions whose signatures verified",
            load(&vf.verified),
        )?;
        counter(
            &mut e,
            "transactions_verify_failed",
            "Transactions that failed stateless checks or signatures",
            load(&vf.failed),
        )?;
        counter(
            &mut e,
            "verifier_queue_drops",
            "Transactions refused by a full verifier queue (peer and wallet lanes)",
            load(&vf.dropped[0]) + load(&vf.dropped[1]),
        )?;

        let pc = &s.checks;
        by_reason(
            &mut e,
            "peer_checks",
            "Peers' TimeProofs and block messages checked on the check thread, by outcome",
            &[
                ("proof_verified", load(&pc.proofs_verified)),
                ("proof_invalid", load(&pc.proofs_invalid)),
                ("block_verified", load(&pc.blocks_verified)),
                ("block_invalid", load(&pc.blocks_invalid)),
                ("dropped", load(&pc.dropped)),
            ],
        )?;

        if let Some(f) = &s.fast {
            counter(
                &mut e,
                "fastpath_datagrams_sent",
                "Fast-path datagrams sent",
                load(&f.datagrams_sent),
            )?;
            counter(
                &mut e,
                "fastpath_datagrams_received",
                "Fast-path datagrams received and verified",
                load(&f.datagrams_received),
            )?;
            counter(
                &mut e,
                "fastpath_bad_datagrams",
                "Fast-path datagrams refused (signature, sender, shape)",
                load(&f.bad_datagrams),
            )?;
            counter(
                &mut e,
                "fastpath_duplicates",
                "Fast-path datagrams received twice",
                load(&f.duplicates),
            )?;
            counter(
                &mut e,
                "fastpath_repair_requests",
                "Repair requests sent for missing datagrams",
                load(&f.repair_requests_sent),
            )?;
            counter(
                &mut e,
                "fastpath_repaired",
                "Missing datagrams recovered by repair",
                load(&f.repaired),
            )?;
            counter(
                &mut e,
                "fastpath_lost",
                "Datagram sequence numbers given up on (recovered by catch-up)",
                load(&f.lost_seqs),
            )?;
            counter(
                &mut e,
                "fastpath_send_refused",
                "Datagrams the socket refused",
                load(&f.send_refused),
            )?;
        }

        let snap = match self.snapshot.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        gauge(
            &mut e,
            "utxo_cache_entries",
            "UTXO entries held in memory (the cache over the stored UTXO table)",
            snap.utxo_cache.0 as i64,
        )?;
        counter(
            &mut e,
            "utxo_cache_misses",
            "UTXO reads that missed the in-memory cache and went to the store",
            snap.utxo_cache.1,
        )?;
        let m = &snap.engine;
        counter(
            &mut e,
            "transactions_received",
            "Transactions handed to the state machine",
            m.tx_received,
        )?;
        counter(
            &mut e,
            "transactions_accepted",
            "Transactions this node locked and approved",
            m.tx_accepted,
        )?;
        counter(
            &mut e,
            "transactions_busy",
            "Wallet payments the state machine refused because the origin window was full",
            m.tx_busy,
        )?;
        counter(
            &mut e,
            "transactions_duplicate",
            "Transactions received again",
            m.tx_duplicate,
        )?;
        counter(
            &mut e,
            "orphans_parked",
            "Transactions parked until their inputs exist",
            m.orphans_parked,
        )?;
        counter(
            &mut e,
            "orphans_expired",
            "Parked transactions dropped after their timeout",
            m.orphans_expired,
        )?;
        counter(
            &mut e,
            "vote_batches_signed",
            "Vote batches this node signed",
            m.vote_batches_signed,
        )?;
        counter(
            &mut e,
            "votes_duplicate",
            "Votes received twice from one voter",
            m.votes_duplicate,
        )?;
        counter(
            &mut e,
            "votes_dropped_unknown_tx",
            "Votes for transactions never seen, dropped",
            m.votes_dropped_unknown_tx,
        )?;
        counter(
            &mut e,
            "proofs_received",
            "TimeProofs received from peers",
            m.proofs_received,
        )?;
        counter(
            &mut e,
            "proofs_invalid",
            "TimeProofs received that did not verify",
            m.proofs_invalid,
        )?;
        histogram(
            &mut e,
            "vote_collection",
            "Time from this node's approve vote to the quorum of approvals its tally reported (TimeProof formed)",
            Some(&Unit::Seconds),
            &m.vote_collection,
            1000.0,
        )?;
        missed_votes(&mut e, &snap)?;
        let (log_lag, fetching) = snap.catchup_lag;
        gauge(
            &mut e,
            "catchup_lag_entries",
            "Finality-log entries a connected peer listed that this node has not walked yet (most of any peer)",
            log_lag as i64,
        )?;
        gauge(
            &mut e,
            "catchup_proofs_fetching",
            "Proofs of listed payments being fetched from peers",
            fetching as i64,
        )?;
        gauge(
            &mut e,
            "catchup_held",
            "1 while the payment catch-up waits for the block sync (behind by more than 2 blocks and progressing)",
            snap.catchup_held as i64,
        )?;
        let (c, l) = snap
            .blocks
            .as_ref()
            .map_or((Default::default(), Default::default()), |b| {
                (b.consensus.clone(), b.layer.clone())
            });
        byzantine(
            &mut e,
            &[
                ("payment_equivocation", m.equivocations),
                ("conflicting_approvals", m.conflicting_approvals),
                ("conflicting_proofs", m.conflicting_proofs),
                ("forged_vote_signature", load(&v.bad_signatures)),
                ("block_equivocation", c.equivocations),
                ("block_fork", c.forks),
                ("block_contradiction", l.contradictions),
            ],
        )?;

        let st = &snap.masternode;
        counter(
            &mut e,
            "reannounced",
            "Approved transactions re-announced while not final",
            st.reannounced,
        )?;
        counter(
            &mut e,
            "proofs_served",
            "TimeProofs served to peers",
            st.proofs_served,
        )?;
        counter(
            &mut e,
            "catchup_pages_received",
            "Finality log pages received while catching up",
            st.catchup.pages_received,
        )?;
        counter(
            &mut e,
            "catchup_proofs_requested",
            "Proofs requested while catching up",
            st.catchup.proofs_requested,
        )?;
        counter(
            &mut e,
            "catchup_proofs_given_up",
            "Proofs no peer delivered",
            st.catchup.proofs_given_up,
        )?;
        counter(
            &mut e,
            "catchup_sync_timeouts",
            "Peers whose log walk timed out",
            st.catchup.sync_timeouts,
        )?;
        by_reason(
            &mut e,
            "peer_messages_refused",
            "Peer messages refused by the peer book",
            &[
                ("rate_limited", st.peers.refused_rate_limited),
                ("banned", st.peers.refused_banned),
            ],
        )?;
        counter(
            &mut e,
            "peer_penalties",
            "Reputation penalties given to peers",
            st.peers.penalties,
        )?;
        counter(&mut e, "peer_bans", "Peers banned", st.peers.bans)?;
        gauge(
            &mut e,
            "wallet_subscriptions",
            "Address subscriptions held for wallet sessions",
            st.wallet.subscriptions as i64,
        )?;
        if let Some(b) = &snap.blocks {
            encode_blocks(&mut e, b)?;
        }
        Ok(())
    }
}

fn encode_blocks(e: &mut DescriptorEncoder, b: &BlockSnapshot) -> std::fmt::Result {
    let (c, l, y) = (&b.consensus, &b.layer, &b.sync);
    gauge(
        e,
        "block_height",
        "Height of the last committed block",
        b.status.height as i64,
    )?;
    gauge(
        e,
        "block_tip_time_seconds",
        "Time of the last committed block (Unix seconds; 0: the genesis)",
        (b.status.tip_time_ms / 1_000) as i64,
    )?;
    gauge(
        e,
        "block_round",
        "Consensus round at the current height (0: no view change)",
        b.round as i64,
    )?;
    gauge(
        e,
        "block_syncing",
        "1 while a peer shows blocks above the tip",
        b.status.syncing as i64,
    )?;
    gauge(
        e,
        "block_unconfirmed",
        "Final payments not yet in a block",
        b.status.unconfirmed as i64,
    )?;
    gauge(
        e,
        "block_halted",
        "1 if two commit certificates for one height were seen and block processing stopped",
        b.halted as i64,
    )?;
    gauge(
        e,
        "reorg_depth",
        "Deepest reorganisation of committed blocks (always 0: committed blocks are final)",
        0,
    )?;
    counter(
        e,
        "blocks_committed",
        "Blocks committed since start (by consensus or sync)",
        c.committed,
    )?;
    counter(
        e,
        "blocks_proposed",
        "Block proposals this masternode made",
        c.proposals_made,
    )?;
    counter(
        e,
        "view_changes",
        "Consensus rounds above 0 started (view changes)",
        c.view_changes,
    )?;
    counter(
        e,
        "block_invalid_proposals",
        "Proposals refused by the block rules",
        c.invalid_proposals,
    )?;
    counter(
        e,
        "block_equivocations",
        "Leaders seen proposing two blocks in one round",
        c.equivocations,
    )?;
    counter(
        e,
        "block_evidence_kept",
        "Block evidence records stored (double proposals, double votes, conflicting proposals)",
        c.evidence_kept,
    )?;
    counter(
        e,
        "blocks_synced",
        "Committed blocks applied from sync",
        c.synced_blocks,
    )?;
    counter(
        e,
        "blocks_served",
        "Committed blocks sent to syncing peers",
        l.blocks_served,
    )?;
    counter(
        e,
        "block_messages_refused",
        "Block messages that failed their checks",
        l.refused_messages,
    )?;
    counter(
        e,
        "transactions_confirmed",
        "Final payments confirmed by a committed block",
        l.confirmed_transactions,
    )?;
    counter(
        e,
        "block_contradictions",
        "Committed block transactions contradicting a payment final here",
        l.contradictions,
    )?;
    counter(
        e,
        "block_sync_requests",
        "Block requests sent to peers",
        y.requests,
    )?;
    counter(
        e,
        "block_sync_timeouts",
        "Block requests given up and asked elsewhere",
        y.timeouts,
    )?;
    gauge(
        e,
        "block_sync_lag_blocks",
        "Blocks this node is behind the best height its peers showed",
        b.sync_lag as i64,
    )?;
    histogram(
        e,
        "block_commit",
        "Time from a block height's start here to its commit",
        Some(&Unit::Seconds),
        &c.commit_time,
        1000.0,
    )?;
    histogram(
        e,
        "block_rounds",
        "Consensus round each block committed in (0: no view change)",
        None,
        &c.commit_rounds,
        1.0,
    )?;
    Ok(())
}

/// Binds `addr` for `/metrics`.
pub async fn bind_metrics(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` on `listener` until the runtime stops; anything
/// else is 404 (405 for another method on `/metrics`).
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<NodeMetrics>) {
    if let Ok(a) = listener.local_addr() {
        info!(addr = %a, "metrics on http://{a}/metrics");
    }
    let slots = Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("metrics accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let m = m.clone();
                async move { Ok::<_, Infallible>(answer(&m, req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            // A scrape is one request; a connection kept open longer than
            // this is closed so it cannot hold a slot for ever.
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
            drop(permit);
        });
    }
}

fn answer(m: &NodeMetrics, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |code: StatusCode, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = code;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(ctype),
        );
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            m.render(),
        ),
        (_, "/metrics") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: metrics are at /metrics\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_metrics() -> (NodeMetrics, Arc<VoteThreadStats>) {
        let votes = Arc::new(VoteThreadStats::default());
        let m = NodeMetrics::new(Sources {
            net: Arc::new(NetStats::default()),
            wallet: Arc::new(WalletStats::default()),
            votes: votes.clone(),
            verifier: Arc::new(VerifierStats::default()),
            checks: Arc::new(PeerCheckStats::default()),
            fast: None,
        });
        (m, votes)
    }

    fn line<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn metrics_new_families_read_the_state_machines_counters() {
        let (m, votes) = node_metrics();
        let fresh = m.render();
        // Every Byzantine kind exists at 0 before anything happened.
        for kind in [
            "payment_equivocation",
            "conflicting_approvals",
            "conflicting_proofs",
            "forged_vote_signature",
            "block_equivocation",
            "block_fork",
            "block_contradiction",
        ] {
            let s = format!("timecoin_byzantine_detections_total{{kind=\"{kind}\"}}");
            assert_eq!(line(&fresh, &s), Some("0"), "{s} in\n{fresh}");
        }
        assert_eq!(
            line(&fresh, "timecoin_vote_collection_seconds_count"),
            Some("0")
        );
        assert_eq!(
            line(
                &fresh,
                "timecoin_vote_collection_seconds_bucket{le=\"+Inf\"}"
            ),
            Some("0")
        );

        votes.bad_signatures.fetch_add(2, Ordering::Relaxed);
        votes.refused.fetch_add(5, Ordering::Relaxed);
        {
            let mut snap = m.snapshot.lock().unwrap();
            let e = &mut snap.engine;
            e.vote_collection.observe(3);
            e.vote_collection.observe(40);
            e.equivocations = 1;
            e.proofs_held = 4;
            e.proof_votes = vec![4, 1, 3];
            snap.masternodes = vec!["aa".into(), "bb".into(), "cc".into()];
            snap.utxo_cache = (12, 345);
        }
        let t = m.render();
        assert_eq!(line(&t, "timecoin_utxo_cache_entries"), Some("12"));
        assert_eq!(line(&t, "timecoin_utxo_cache_misses_total"), Some("345"));
        // Forged votes: the vote threads' bad signatures, apart from the
        // batches refused for other reasons.
        assert_eq!(
            line(
                &t,
                "timecoin_byzantine_detections_total{kind=\"forged_vote_signature\"}"
            ),
            Some("2")
        );
        assert_eq!(
            line(
                &t,
                "timecoin_invalid_vote_batches_total{reason=\"bad_signature\"}"
            ),
            Some("2")
        );
        assert_eq!(
            line(
                &t,
                "timecoin_byzantine_detections_total{kind=\"payment_equivocation\"}"
            ),
            Some("1")
        );
        // 3 ms and 40 ms: cumulative buckets, sum in seconds.
        assert_eq!(
            line(&t, "timecoin_vote_collection_seconds_count"),
            Some("2")
        );
        assert_eq!(
            line(&t, "timecoin_vote_collection_seconds_sum"),
            Some("0.043")
        );
        assert_eq!(
            line(&t, "timecoin_vote_collection_seconds_bucket{le=\"0.002\"}"),
            Some("0")
        );
        assert_eq!(
            line(&t, "timecoin_vote_collection_seconds_bucket{le=\"0.005\"}"),
            Some("1")
        );
        assert_eq!(
            line(&t, "timecoin_vote_collection_seconds_bucket{le=\"0.05\"}"),
            Some("2")
        );
        // Missed votes per registered masternode: proofs held minus its votes.
        for (mn, missed) in [("aa", "0"), ("bb", "3"), ("cc", "1")] {
            let s = format!("timecoin_missed_votes_total{{masternode=\"{mn}\"}}");
            assert_eq!(line(&t, &s), Some(missed), "{s}");
        }
        assert_eq!(
            t.matches("timecoin_missed_votes_total{").count(),
            3,
            "one series per registered masternode"
        );
    }

    #[test]
    fn metrics_block_families_follow_the_consensus_stats() {
        let (m, _) = node_metrics();
        let mut consensus = timecoin_core::blocks::consensus::ConsensusStats::default();
        consensus.commit_time.observe(900);
        consensus.commit_rounds.observe(0);
        consensus.commit_rounds.observe(2);
        consensus.forks = 1;
        m.snapshot.lock().unwrap().blocks = Some(BlockSnapshot {
            status: timecoin_core::protocol::message::BlockStatus {
                height: 7,
                tip: timecoin_core::blocks::BlockHash([0; 32]),
                tip_time_ms: 0,
                syncing: true,
                unconfirmed: 0,
            },
            round: 0,
            halted: true,
            consensus,
            layer: Default::default(),
            sync: Default::default(),
            sync_lag: 12,
        });
        let t = m.render();
        assert_eq!(line(&t, "timecoin_block_sync_lag_blocks"), Some("12"));
        assert_eq!(line(&t, "timecoin_block_commit_seconds_count"), Some("1"));
        assert_eq!(line(&t, "timecoin_block_commit_seconds_sum"), Some("0.9"));
        assert_eq!(
            line(&t, "timecoin_block_commit_seconds_bucket{le=\"0.5\"}"),
            Some("0")
        );
        assert_eq!(
            line(&t, "timecoin_block_commit_seconds_bucket{le=\"1\"}"),
            Some("1")
        );
        assert_eq!(
            line(&t, "timecoin_block_rounds_bucket{le=\"0\"}"),
            Some("1")
        );
        assert_eq!(
            line(&t, "timecoin_block_rounds_bucket{le=\"2\"}"),
            Some("2")
        );
        assert_eq!(line(&t, "timecoin_block_rounds_sum"), Some("2.0"));
        assert_eq!(
            line(
                &t,
                "timecoin_byzantine_detections_total{kind=\"block_fork\"}"
            ),
            Some("1")
        );
    }
}
