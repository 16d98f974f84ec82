//! The core thread: the only place the [`Masternode`] state machine runs.
//! Each round it collects inputs from the core queue ([`collect_round`]),
//! feeds them in ([`handle_input`], [`track_peers`]), ends the round, makes
//! its writes durable as one write-ahead log record ([`DurableStore::commit`]:
//! one sequential write and `fdatasync`; LMDB gets them later from the
//! store-writer thread), and only then sends its
//! transmits ([`dispatch`]) and delivers its wallet replies ([`Wallets`]:
//! each open session's outbound queue, by [`SessionId`]). It also logs the
//! periodic `status` and `fast path` lines, and the router's limits when
//! hit.
//!
//! Owns the state machine, the store, the fast-path sender and the wallet
//! sessions' queues. It must never
//! send anything of a round before that round's writes are committed (a vote
//! must be durable before it leaves), never wait on the network, and it
//! stops the node if a commit fails.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use time_net::mailbox;
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, error, info, warn};

use crate::node::core_input::{Clock, CoreInput};
use crate::node::fastpath::{FastPathSender, FastPathStats};
use crate::node::metrics::NodeMetrics;
use crate::node::peer_net::{priority_of, PeerNet};
use crate::node::vote_threads::VoteThreads;
use crate::node::wallet_server::{Outbound, SessionTx, WalletStats, WarnEvery, SESSION_QUEUE};
use crate::node::wire::{encode, NetStats};
use crate::protocol::audience::{PeerMessage, WalletReply};
use crate::protocol::engine::Event;
use crate::protocol::message::{Message, NodeStatus};
use crate::protocol::types::PublicKey;
use crate::storage::{DurableStore, StoreError};
use time_net::priority::Priority;
use timecoin_core::masternode::router::{
    MAX_SUBSCRIPTIONS_PER_SESSION, MAX_SUBSCRIPTIONS_TOTAL, MAX_WAITING_PER_SESSION,
};
use timecoin_core::masternode::{Dest, Masternode, RouterStats, SessionId, Transmit};

/// Most inputs the core handles before it commits and sends a round.
const MAX_ROUND_INPUTS: usize = 8_192;
/// Longest the core sleeps without input: timers (the state machine's
/// `poll_timeout`, the fast-path heartbeat, a due announcement) usually
/// wake it sooner; this bounds the lateness of the metrics' gauges. An idle
/// core wakes a few times a second, not ten or a hundred.
const MAX_IDLE_WAIT: Duration = Duration::from_millis(METRICS_EVERY_MS);
/// How often the `status` (and `fast path`) lines are logged.
const STATUS_EVERY_MS: u64 = 10_000;
/// How often the metrics' state gauges are refreshed.
const METRICS_EVERY_MS: u64 = 1_000;
/// How often our fast-path stream position is announced to peers while
/// data datagrams go out.
const ANNOUNCE_EVERY_MS: u64 = 250;
/// How often it is announced while it stands still. A receiver uses an
/// announcement only to learn where a stream it has heard nothing of starts
/// (a node that just started, or cannot hear multicast); repeating an
/// unchanged position four times a second to every peer was most of an idle
/// node's peer traffic.
const ANNOUNCE_IDLE_MS: u64 = 5_000;

/// When our fast-path stream position was last announced, and what it was.
#[derive(Default)]
struct Announced {
    at: u64,
    data_end: Option<u64>,
}

impl Announced {
    /// When the next announcement is due.
    fn due(&self, f: &FastPathSender) -> u64 {
        if self.data_end == Some(f.data_end()) {
            self.at + ANNOUNCE_IDLE_MS
        } else {
            self.at + ANNOUNCE_EVERY_MS
        }
    }
}

/// The handles the core thread uses to reach the rest of the node.
pub(super) struct CoreCtx {
    pub me: PublicKey,
    /// The state machine's clock, shared with peer admission.
    pub clock: Clock,
    pub net: Arc<PeerNet>,
    pub peer_count: usize,
    pub stats: Arc<NetStats>,
    /// Set when a commit fails, so the network tasks stop too.
    pub stopping: Arc<AtomicBool>,
    pub wallet_stats: Arc<WalletStats>,
    pub votes: Arc<VoteThreads>,
    pub fast_stats: Option<Arc<FastPathStats>>,
    pub metrics: Arc<NodeMetrics>,
}

/// Everything the core thread owns.
pub(super) struct Core {
    pub mn: Masternode,
    pub store: DurableStore,
    pub rx: mailbox::Receiver<CoreInput>,
    pub fast: Option<FastPathSender>,
    pub round_window: Duration,
    pub ctx: CoreCtx,
}

/// Starts the core thread; it holds the data directory's `lock` for life.
pub(super) fn spawn(core: Core, lock: File) -> JoinHandle<Result<(), StoreError>> {
    std::thread::Builder::new()
        .name("core".into())
        .spawn(move || {
            let _lock = lock; // held for the life of the core
            core_loop(core)
        })
        .expect("spawn core thread")
}

fn core_loop(mut c: Core) -> Result<(), StoreError> {
    let clock = c.ctx.clock;
    let now_ms = || clock.now_ms();
    let mut last_log = 0;
    let mut last_metrics = 0;
    let mut announced = Announced::default();
    let mut refusals_logged = (0, 0);
    let mut peers_up = HashSet::new();
    let mut inputs = Vec::with_capacity(MAX_ROUND_INPUTS);
    let mut wallets = Wallets::new(c.ctx.wallet_stats.clone());
    loop {
        inputs.clear();
        // Outcomes of this thread's own votes, tallied inline last round
        // (no vote threads): this round handles them, without waiting.
        let held = c.ctx.votes.take_held();
        let wait = if held.is_empty() {
            idle_wait(&c, now_ms(), &announced)
        } else {
            inputs.push(CoreInput::Tally(held));
            Duration::ZERO
        };
        collect_round(&c.rx, &mut inputs, wait, c.round_window)?;
        let now = now_ms();
        let work = Instant::now();
        let mut stop = false;
        for input in inputs.drain(..) {
            stop |= handle_input(&mut c.mn, &c.store, &c.ctx, &mut wallets, now, input)?;
        }
        if now >= c.mn.poll_timeout() {
            track_peers(&mut c.mn, &c.ctx, now, &mut peers_up);
            c.mn.handle_timeout(now, &c.store)?;
        }
        commit_and_send(&mut c, &mut wallets, now, work)?;
        if let Some(f) = c.fast.as_mut() {
            fast_housekeeping(f, &c.ctx, now, &mut announced);
        }
        if now.saturating_sub(last_metrics) >= METRICS_EVERY_MS {
            last_metrics = now;
            c.ctx
                .metrics
                .publish(&c.mn, c.store.lmdb(), peers_connected(&c.ctx), now);
        }
        if now.saturating_sub(last_log) >= STATUS_EVERY_MS {
            last_log = now;
            log_status(&c.mn, &c.ctx, &mut refusals_logged);
        }
        if stop {
            info!("core stopped");
            // The store writer applies what it holds, then stops.
            return c.store.close();
        }
    }
}

/// Ends the round: its events recorded and its final outcomes with their
/// proof sent to wallets, then its writes made durable, then its
/// transmits, then its other replies to wallets.
fn commit_and_send(
    c: &mut Core,
    wallets: &mut Wallets,
    now: u64,
    work: Instant,
) -> Result<(), StoreError> {
    let mut round = c.mn.end_round(now);
    c.ctx
        .metrics
        .core
        .round_work
        .observe(work.elapsed().as_secs_f64());
    c.ctx
        .wallet_stats
        .in_flight
        .store(c.mn.engine().wallet_in_flight(), Ordering::Relaxed);
    // Durable (its log record synced) before anything of this round
    // leaves the node. A failed commit, or a store writer that stopped,
    // stops the core: sending votes we could not persist would break the
    // no-conflicting-votes guarantee.
    let writes = std::mem::take(&mut round.writes);
    // Final outcomes carrying their TimeProof need not wait for the sync
    // (the state machine says which, `Round::take_replies_before_durable`);
    // readers wait for this round, so such a wallet reads what it heard.
    let early = round.take_replies_before_durable();
    if !early.is_empty() && !writes.is_empty() {
        c.store.expect_commit();
    }
    // The round's events (metrics, log lines) before any reply: a wallet
    // that heard a proof finds the node's log and metrics saying so.
    for ev in &round.events {
        c.ctx.metrics.core.event(ev);
        log_event(ev);
    }
    for (session, reply) in early {
        wallets.deliver(session, reply);
    }
    let synced = (!writes.is_empty()).then(std::time::Instant::now);
    if let Err(e) = c.store.commit(writes) {
        error!("storage commit failed, stopping the masternode core: {e}");
        c.ctx.stopping.store(true, Ordering::SeqCst);
        return Err(e);
    }
    if let Some(t) = synced {
        c.ctx
            .metrics
            .core
            .round_sync
            .observe(t.elapsed().as_secs_f64());
    }
    // A UTXO read from the store failed this round (the engine treated the
    // output as unknown): the database is not readable, stop.
    if let Some(e) = c.mn.take_store_read_error() {
        error!("storage read failed, stopping the masternode core: {e}");
        c.ctx.stopping.store(true, Ordering::SeqCst);
        return Err(e);
    }
    for txid in round.watch_approvals {
        c.ctx.votes.watch(txid);
    }
    dispatch(&c.ctx, round.transmits, c.fast.as_mut());
    for (session, reply) in round.wallet {
        wallets.deliver(session, reply);
    }
    wallets.reap(&mut c.mn);
    wallets.warn_limits(&c.mn);
    Ok(())
}

/// What the node logs of a round's events (wallets hear theirs through the
/// router).
fn log_event(ev: &Event) {
    match ev {
        Event::Equivocation { voter, txid } => {
            warn!(
                %voter,
                %txid,
                "masternode equivocated (two decisions on one transaction, or approvals of two \
                 transactions spending one output); evidence kept: `time-masternode evidence`"
            );
        }
        Event::ConflictingProofs(rec) => {
            error!(
                ?rec,
                "conflicting TimeProofs: Byzantine weight at or above 1/3?"
            );
        }
        // The payment path, one line per step with its `txid` field (debug:
        // `log = "info,timecoin::node::core_thread=debug"` shows them).
        Event::Accepted { txid } => debug!(%txid, "payment locked and approved here"),
        Event::Finalized {
            txid,
            age_ms,
            proof,
            ..
        } => {
            debug!(%txid, ?age_ms, votes = proof.votes.len(), "payment final (TimeProof)")
        }
        Event::Rejected {
            txid,
            reason,
            detail,
            ..
        } => debug!(%txid, reason = reason.describe(), detail, "payment rejected"),
    }
}

/// The open wallet sessions' outbound queues, and the warnings for the
/// router's limits.
struct Wallets {
    sessions: HashMap<SessionId, SessionTx>,
    /// Sessions whose queue was found closed (their task ended): closed in
    /// the state machine at the end of the round.
    gone: Vec<SessionId>,
    stats: Arc<WalletStats>,
    /// The router's counters when last compared.
    seen: RouterStats,
    warn_session_subs: WarnEvery,
    warn_total_subs: WarnEvery,
    warn_waiting: WarnEvery,
}

impl Wallets {
    fn new(stats: Arc<WalletStats>) -> Self {
        Wallets {
            sessions: HashMap::new(),
            gone: Vec::new(),
            stats,
            seen: RouterStats::default(),
            warn_session_subs: WarnEvery::default(),
            warn_total_subs: WarnEvery::default(),
            warn_waiting: WarnEvery::default(),
        }
    }

    /// Queues a reply to `session` without waiting: a full queue drops it
    /// (counted), a closed one ends the session.
    fn deliver(&mut self, session: SessionId, reply: WalletReply) {
        let Some(to) = self.sessions.get(&session) else {
            return; // closed already
        };
        let frame = encode(&Message::from(reply));
        match to.try_send(Outbound::from(frame)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let what = format!("session {session}: reply dropped, its queue is full");
                self.stats
                    .frames_dropped
                    .hit("SESSION_QUEUE", SESSION_QUEUE, &what);
            }
            Err(TrySendError::Closed(_)) => {
                self.sessions.remove(&session);
                self.gone.push(session);
            }
        }
    }

    fn close(&mut self, mn: &mut Masternode, session: SessionId) {
        self.sessions.remove(&session);
        mn.handle_wallet_close(session);
    }

    fn reap(&mut self, mn: &mut Masternode) {
        for s in self.gone.drain(..) {
            mn.handle_wallet_close(s);
        }
    }

    /// Warns (rate-limited) when the router refused something since the
    /// last round.
    fn warn_limits(&mut self, mn: &Masternode) {
        let st = mn.wallet_stats();
        if st.subscriptions_refused_session > self.seen.subscriptions_refused_session
            && self.warn_session_subs.due()
        {
            warn!(
                limit = "MAX_SUBSCRIPTIONS_PER_SESSION",
                value = MAX_SUBSCRIPTIONS_PER_SESSION,
                refused = st.subscriptions_refused_session,
                "wallet limit hit: subscriptions refused, session at its cap"
            );
        }
        if st.subscriptions_refused_total > self.seen.subscriptions_refused_total
            && self.warn_total_subs.due()
        {
            warn!(
                limit = "MAX_SUBSCRIPTIONS_TOTAL",
                value = MAX_SUBSCRIPTIONS_TOTAL,
                refused = st.subscriptions_refused_total,
                "wallet limit hit: subscriptions refused, node at its cap"
            );
        }
        if st.submissions_refused > self.seen.submissions_refused && self.warn_waiting.due() {
            warn!(
                limit = "MAX_WAITING_PER_SESSION",
                value = MAX_WAITING_PER_SESSION,
                refused = st.submissions_refused,
                "wallet limit hit: submission refused, session waits on too many"
            );
        }
        self.seen = st;
    }
}

/// Flushes the datagrams of the round and keeps the stream announced.
fn fast_housekeeping(f: &mut FastPathSender, ctx: &CoreCtx, now: u64, announced: &mut Announced) {
    f.flush();
    f.heartbeat();
    // Tell peers where our datagram stream is, over the reliable
    // path, so a receiver that missed its start can still repair.
    if now >= announced.due(f) {
        *announced = Announced {
            at: now,
            data_end: Some(f.data_end()),
        };
        broadcast(
            ctx,
            Priority::Normal,
            encode(&Message::FastPathSeq { next: f.data_end() }),
        );
    }
}

/// How long the core may wait for input before a timer is due.
fn idle_wait(c: &Core, now: u64, announced: &Announced) -> Duration {
    let mut wait = Duration::from_millis(c.mn.poll_timeout().saturating_sub(now));
    if let Some(f) = c.fast.as_ref() {
        wait = wait.min(f.heartbeat_in());
        wait = wait.min(Duration::from_millis(announced.due(f).saturating_sub(now)));
    }
    wait.clamp(Duration::from_millis(1), MAX_IDLE_WAIT)
}

/// Waits for the first input (or a tick), then holds the round open up to
/// `round_window`: a round costs one vote signature, one datagram signature
/// and one fsync whatever its size, so arrivals close together share them.
fn collect_round(
    rx: &mailbox::Receiver<CoreInput>,
    inputs: &mut Vec<CoreInput>,
    wait: Duration,
    round_window: Duration,
) -> Result<(), StoreError> {
    match rx.recv_many(inputs, MAX_ROUND_INPUTS, wait) {
        Ok(_) => {}
        Err(mailbox::RecvTimeoutError::Timeout) => return Ok(()),
        Err(mailbox::RecvTimeoutError::Disconnected) => {
            inputs.push(CoreInput::Shutdown);
            return Ok(());
        }
    }
    // Sleep out the window, then take what arrived: waiting on the mailbox
    // instead woke the core for every input that came meanwhile (at 1,000
    // TPS about fourteen wake-ups per round).
    let opened = Instant::now();
    if !round_window.is_zero() && inputs.len() < MAX_ROUND_INPUTS {
        std::thread::sleep(round_window.saturating_sub(opened.elapsed()));
        let _ = rx.recv_many(inputs, MAX_ROUND_INPUTS - inputs.len(), Duration::ZERO);
    }
    Ok(())
}

/// One input into the state machine. Returns true on shutdown.
fn handle_input(
    mn: &mut Masternode,
    store: &DurableStore,
    ctx: &CoreCtx,
    wallets: &mut Wallets,
    now: u64,
    input: CoreInput,
) -> Result<bool, StoreError> {
    match input {
        CoreInput::Tx { tx, prechecked, .. } => mn.handle_peer_transaction(now, tx, prechecked),
        CoreInput::Tally(events) => mn.handle_tally_events(now, events),
        CoreInput::Proof { tx, proof } => mn.handle_verified_proof(now, tx, proof),
        CoreInput::Misbehaved { peer, why } => mn.handle_peer_misbehaved(now, &peer, why),
        CoreInput::CheckedBlock { from, msg } => {
            mn.handle_checked_block_message(now, from, msg, store)?
        }
        CoreInput::RefusedBlock { from, error } => {
            let n = mn.block_layer().map_or(0, |l| l.stats().refused_messages) + 1;
            if n.is_power_of_two() {
                warn!(peer = %from, refused = n, "block message refused by its check: {error}");
            }
            mn.handle_refused_block_message(now, &from, error)
        }
        // Admitted by the peer book on the network task that read them.
        CoreInput::ProofRequest { txid, from } => {
            mn.handle_admitted_peer_message(now, from, PeerMessage::ProofRequest(txid), store)?
        }
        CoreInput::Peer { from, msg } => mn.handle_admitted_peer_message(now, from, msg, store)?,
        CoreInput::WalletOpen { session, to } => {
            wallets.sessions.insert(session, to);
            mn.handle_wallet_open(session);
        }
        CoreInput::WalletClose(session) => wallets.close(mn, session),
        CoreInput::WalletSubscribe { session, addrs } => {
            if let Some(reply) = mn.handle_wallet_subscribe(session, addrs) {
                wallets.deliver(session, reply);
            }
        }
        CoreInput::WalletTx { session, tx } => {
            // The immediate answer (known transaction, or the session's
            // cap); else the outcome comes in the round's wallet replies.
            if let Some(reply) = mn.handle_wallet_transaction(now, session, tx, true, store)? {
                wallets.deliver(session, reply);
            }
        }
        CoreInput::WalletStatus { reply } => {
            let _ = reply.send(status(mn, ctx));
        }
        CoreInput::WalletWatch { session, txid } => {
            if let Some(reply) = mn.handle_wallet_watch(session, txid, store)? {
                wallets.deliver(session, reply);
            }
        }
        CoreInput::WalletUnsubscribe { session, addrs } => {
            mn.handle_wallet_unsubscribe(session, &addrs);
        }
        CoreInput::WalletUnwatch { session, txid } => {
            mn.handle_wallet_unwatch(session, &txid);
        }
        CoreInput::NodeQuery { query, reply } => {
            let connected = connected_set(ctx);
            let _ = reply.send(crate::node::node_api::answer(
                mn, store, &connected, now, query,
            ));
        }
        CoreInput::Shutdown => return Ok(true),
    }
    Ok(false)
}

/// The peers whose connection is up now (as [`track_peers`] sees them).
fn connected_set(ctx: &CoreCtx) -> HashSet<PublicKey> {
    ctx.net.connected_set()
}

fn status(mn: &Masternode, ctx: &CoreCtx) -> NodeStatus {
    let m = mn.metrics();
    NodeStatus {
        public_key: ctx.me,
        peers_connected: peers_connected(ctx),
        peers_total: ctx.peer_count as u32,
        pending: mn.engine().pending_count() as u32,
        finalized: m.tx_finalized,
        rejected: m.tx_rejected,
        catching_up: mn.is_catching_up(),
        blocks: mn.block_layer().map(|b| b.status()),
    }
}

fn peers_connected(ctx: &CoreCtx) -> u32 {
    ctx.net.connected()
}

/// Tells the state machine which peer connections came up or went down.
fn track_peers(mn: &mut Masternode, ctx: &CoreCtx, now: u64, up: &mut HashSet<PublicKey>) {
    let current = ctx.net.connected_set();
    for p in current.difference(up) {
        mn.handle_peer_up(now, *p);
    }
    for p in up.difference(&current) {
        mn.handle_peer_down(now, p);
    }
    *up = current;
}

/// The periodic `status` line (and `fast path` line); tests parse both.
fn log_status(mn: &Masternode, ctx: &CoreCtx, logged: &mut (u64, u64)) {
    let (refusals_logged, paced_logged) = (&mut logged.0, &mut logged.1);
    let m = mn.metrics();
    let st = mn.stats();
    let p = &st.peers;
    let refused = p.refused_rate_limited + p.refused_banned;
    if refused != *refusals_logged {
        *refusals_logged = refused;
        warn!(
            rate_limited = p.refused_rate_limited,
            banned = p.refused_banned,
            penalties = p.penalties,
            bans = p.bans,
            "peer messages refused (rate-limited or banned; see PeerLimits)"
        );
    }
    let s = ctx.net.0.pool_stats();
    if s.paced != std::mem::replace(paced_logged, s.paced) {
        warn!(
            paced = s.paced,
            paced_ms = s.paced_ms,
            "peers over their rate pushed back (their messages read later; see PeerLimits)"
        );
    }
    info!(
        finalized = m.tx_finalized,
        rejected = m.tx_rejected,
        pending = mn.engine().pending_count(),
        awaiting = mn.awaiting(),
        catching_up = mn.is_catching_up(),
        reannounced = st.reannounced,
        catchup_pages = st.catchup.pages_received,
        catchup_proofs = st.catchup.proofs_requested,
        votes_in = m.votes_received,
        peers = peers_connected(ctx),
        malformed = ctx.stats.malformed_frames.load(Ordering::Relaxed),
        drops = ctx.stats.peer_queue_drops.load(Ordering::Relaxed)
            + ctx.stats.core_queue_drops.load(Ordering::Relaxed),
        "status"
    );
    if let Some(b) = mn.block_layer() {
        let s = b.status();
        let c = b.consensus();
        let (_, round) = c.height_round();
        info!(
            height = s.height,
            tip = %s.tip,
            round,
            syncing = s.syncing,
            unconfirmed = s.unconfirmed,
            confirmed = b.stats().confirmed_transactions,
            view_changes = c.stats().view_changes,
            "blocks"
        );
        if let Some(e) = c.halted() {
            error!(
                height = e.height(),
                "CRITICAL: two commit certificates for one height (Byzantine weight of 1/3 or \
                 more); block processing stopped, evidence stored; payments still finalize"
            );
        }
        if let Some(stop) = &b.stats().stop {
            error!(
                count = b.stats().contradictions,
                stop = %stop,
                last = b.stats().last_contradiction.as_deref().unwrap_or(""),
                "CRITICAL: a committed block contradicts a payment final here; block \
                 processing stopped (durable: see docs/OPERATING.md, `time-masternode \
                 clear-block-stop`); payments still finalize"
            );
        }
    }
    if let Some(fs) = &ctx.fast_stats {
        info!(
            sent = fs.datagrams_sent.load(Ordering::Relaxed),
            received = fs.datagrams_received.load(Ordering::Relaxed),
            bad = fs.bad_datagrams.load(Ordering::Relaxed),
            repair_requests = fs.repair_requests_sent.load(Ordering::Relaxed),
            repaired = fs.repaired.load(Ordering::Relaxed),
            lost = fs.lost_seqs.load(Ordering::Relaxed),
            "fast path"
        );
    }
}

fn broadcast(ctx: &CoreCtx, prio: Priority, frame: Bytes) {
    ctx.net.broadcast(prio, frame, &ctx.stats);
}

/// Sends a round's messages. Lock broadcasts and votes to all peers take the
/// fast path when they fit a datagram; everything else, and everything when
/// the fast path is off, goes over the reliable path in its priority class.
/// Our own vote batches also go to the vote threads' tallies.
fn dispatch(ctx: &CoreCtx, transmits: Vec<Transmit>, mut fast: Option<&mut FastPathSender>) {
    for Transmit { dest, msg } in transmits {
        let prio = priority_of(&msg);
        if let (Dest::AllPeers, Message::VoteBatch(b)) = (&dest, &msg) {
            ctx.metrics.core.votes_out(b);
            ctx.votes.own(b.clone());
        }
        let frame = encode(&msg);
        match dest {
            Dest::Peer(p) => {
                ctx.net.send(&p, prio, frame, &ctx.stats);
            }
            Dest::AllPeers => match (&mut fast, &msg) {
                (Some(f), Message::TransactionBroadcast(_) | Message::VoteBatch(_))
                    if FastPathSender::fits(frame.len()) =>
                {
                    f.push(&frame)
                }
                _ => broadcast(ctx, prio, frame),
            },
        }
    }
}
