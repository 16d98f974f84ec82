//! The core thread: the only place the [`Masternode`] state machine runs.
//! Each round it collects inputs from the core queue ([`collect_round`]),
//! feeds them in ([`handle_input`], [`track_peers`]), ends the round, makes
//! its writes durable in one LMDB transaction, and only then sends its
//! transmits ([`dispatch`]) and hands its events to wallets. It also logs
//! the periodic `status` and `fast path` lines.
//!
//! Owns the state machine, the store and the fast-path sender. It must never
//! send anything of a round before that round's writes are committed (a vote
//! must be durable before it leaves), never wait on the network, and it
//! stops the node if a commit fails.

use std::collections::HashSet;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam::channel as cb;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info};

use crate::node::core_input::CoreInput;
use crate::node::fastpath::{FastPathSender, FastPathStats};
use crate::node::links::LinksUp;
use crate::node::peer_net::{priority_of, PeerNet};
use crate::node::vote_threads::VoteThreads;
use crate::node::wallet_server::{route_event, Router};
use crate::node::wire::{encode, NetStats};
use crate::protocol::audience::PeerMessage;
use crate::protocol::message::{Message, NodeStatus, MAX_QUERY_OUTPOINTS};
use crate::protocol::types::{Address, PublicKey, Transaction};
use crate::storage::{LmdbStore, Store, StoreError};
use time_net::priority::Priority;
use timecoin_core::masternode::{Dest, Masternode, Transmit};

/// Most inputs the core handles before it commits and sends a round.
const MAX_ROUND_INPUTS: usize = 8_192;
const TICK: Duration = Duration::from_millis(10);
/// How often the `status` (and `fast path`) lines are logged.
const STATUS_EVERY_MS: u64 = 10_000;
/// How often our fast-path stream position is announced to peers.
const ANNOUNCE_EVERY_MS: u64 = 250;

/// The handles the core thread uses to reach the rest of the node.
pub(super) struct CoreCtx {
    pub me: PublicKey,
    pub net: Arc<PeerNet>,
    pub peer_count: usize,
    pub stats: Arc<NetStats>,
    /// Set when a commit fails, so the network tasks stop too.
    pub stopping: Arc<AtomicBool>,
    pub links_up: LinksUp,
    pub router: Arc<Mutex<Router>>,
    pub votes: Arc<VoteThreads>,
    pub fast_stats: Option<Arc<FastPathStats>>,
}

/// Everything the core thread owns.
pub(super) struct Core {
    pub mn: Masternode,
    pub store: LmdbStore,
    pub rx: cb::Receiver<CoreInput>,
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
    let start = Instant::now();
    let now_ms = || start.elapsed().as_millis() as u64;
    let mut last_log = 0;
    let mut last_announce = 0;
    let mut peers_up = HashSet::new();
    let mut inputs = Vec::with_capacity(MAX_ROUND_INPUTS);
    loop {
        inputs.clear();
        collect_round(&c.rx, &mut inputs, c.round_window)?;
        let now = now_ms();
        let mut stop = false;
        for input in inputs.drain(..) {
            stop |= handle_input(&mut c.mn, &c.store, &c.ctx, now, input)?;
        }
        if now >= c.mn.poll_timeout() {
            track_peers(&mut c.mn, &c.ctx, now, &mut peers_up);
            c.mn.handle_timeout(now, &c.store)?;
        }
        commit_and_send(&mut c, now)?;
        if let Some(f) = c.fast.as_mut() {
            fast_housekeeping(f, &c.ctx, now, &mut last_announce);
        }
        if now.saturating_sub(last_log) >= STATUS_EVERY_MS {
            last_log = now;
            log_status(&c.mn, &c.ctx);
        }
        if stop {
            info!("core stopped");
            return Ok(());
        }
    }
}

/// Ends the round: its writes durable first, then its transmits, then its
/// events to wallets.
fn commit_and_send(c: &mut Core, now: u64) -> Result<(), StoreError> {
    let round = c.mn.end_round(now);
    if !round.writes.is_empty() {
        // Durable before anything of this round leaves the node. A
        // failed commit stops the core: sending votes we could not
        // persist would break the no-conflicting-votes guarantee.
        if let Err(e) = c.store.apply(&round.writes) {
            error!("storage commit failed, stopping the masternode core: {e}");
            c.ctx.stopping.store(true, Ordering::SeqCst);
            return Err(e);
        }
    }
    dispatch(&c.ctx, round.transmits, c.fast.as_mut());
    for ev in round.events {
        route_event(&c.ctx.router, ev);
    }
    Ok(())
}

/// Flushes the datagrams of the round and keeps the stream announced.
fn fast_housekeeping(f: &mut FastPathSender, ctx: &CoreCtx, now: u64, last_announce: &mut u64) {
    f.flush();
    f.heartbeat(Duration::from_millis(20));
    // Tell peers where our datagram stream is, over the reliable
    // path, so a receiver that missed its start can still repair.
    if now.saturating_sub(*last_announce) >= ANNOUNCE_EVERY_MS {
        *last_announce = now;
        broadcast(
            ctx,
            Priority::Normal,
            encode(&Message::FastPathSeq { next: f.next_seq() }),
        );
    }
}

/// Waits for the first input (or a tick), then holds the round open up to
/// `round_window`: a round costs one vote signature, one datagram signature
/// and one fsync whatever its size, so arrivals close together share them.
fn collect_round(
    rx: &cb::Receiver<CoreInput>,
    inputs: &mut Vec<CoreInput>,
    round_window: Duration,
) -> Result<(), StoreError> {
    match rx.recv_timeout(TICK) {
        Ok(i) => inputs.push(i),
        Err(cb::RecvTimeoutError::Timeout) => return Ok(()),
        Err(cb::RecvTimeoutError::Disconnected) => {
            inputs.push(CoreInput::Shutdown);
            return Ok(());
        }
    }
    let opened = Instant::now();
    while inputs.len() < MAX_ROUND_INPUTS {
        match rx.try_recv() {
            Ok(i) => inputs.push(i),
            Err(_) => {
                let left = round_window.saturating_sub(opened.elapsed());
                if left.is_zero() {
                    break;
                }
                match rx.recv_timeout(left) {
                    Ok(i) => inputs.push(i),
                    Err(_) => break,
                }
            }
        }
    }
    Ok(())
}

/// One input into the state machine. Returns true on shutdown.
fn handle_input(
    mn: &mut Masternode,
    store: &LmdbStore,
    ctx: &CoreCtx,
    now: u64,
    input: CoreInput,
) -> Result<bool, StoreError> {
    match input {
        CoreInput::Tx { tx, prechecked, .. } => mn.handle_peer_transaction(now, tx, prechecked),
        CoreInput::Tally(events) => mn.handle_tally_events(now, events),
        CoreInput::Proof { tx, proof } => mn.handle_proof(now, tx, proof),
        CoreInput::ProofRequest { txid, from } => {
            mn.handle_peer_message(now, from, PeerMessage::ProofRequest(txid), store)?
        }
        CoreInput::Peer { from, msg } => mn.handle_peer_message(now, from, msg, store)?,
        CoreInput::WalletTx { tx, to } => wallet_tx(mn, store, ctx, now, tx, to)?,
        CoreInput::UtxoQuery(ops, reply) => {
            let v = ops
                .into_iter()
                .map(|op| (op, mn.engine().utxo(&op).copied()))
                .collect();
            let _ = reply.send(Message::UtxoStateResponse(v));
        }
        CoreInput::AddressQuery(addr, reply) => answer_address(mn, addr, reply),
        CoreInput::Status(reply) => {
            let _ = reply.send(Message::Status(status(mn, ctx)));
        }
        CoreInput::Shutdown => return Ok(true),
    }
    Ok(false)
}

/// A verified wallet transaction; the session hears the immediate answer.
fn wallet_tx(
    mn: &mut Masternode,
    store: &LmdbStore,
    ctx: &CoreCtx,
    now: u64,
    tx: Transaction,
    to: mpsc::Sender<Bytes>,
) -> Result<(), StoreError> {
    let txid = tx.txid();
    if let Some(answer) = mn.handle_wallet_transaction(now, tx, true, store)? {
        if !matches!(answer, Message::TransactionAccepted(_)) {
            // Settled: no event will come for it, so the session's
            // registration would never be removed.
            ctx.router.lock().expect("router lock").forget(&txid);
        }
        let _ = to.try_send(encode(&answer));
    }
    Ok(())
}

fn answer_address(mn: &Masternode, addr: Address, reply: oneshot::Sender<Message>) {
    let v = mn
        .engine()
        .utxos_of(&addr)
        .into_iter()
        .take(MAX_QUERY_OUTPOINTS)
        .map(|(op, e)| (op, Some(e)))
        .collect();
    let _ = reply.send(Message::UtxoStateResponse(v));
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
    }
}

fn peers_connected(ctx: &CoreCtx) -> u32 {
    ctx.net
        .connected(ctx.stats.peers_connected.load(Ordering::Relaxed))
}

/// Tells the state machine which peer connections came up or went down.
fn track_peers(mn: &mut Masternode, ctx: &CoreCtx, now: u64, up: &mut HashSet<PublicKey>) {
    let current: HashSet<PublicKey> = match &*ctx.net {
        PeerNet::Pool(p) => p.connected_peers().into_iter().map(PublicKey).collect(),
        PeerNet::Links(_) => ctx.links_up.lock().expect("links lock").clone(),
    };
    for p in current.difference(up) {
        mn.handle_peer_up(now, *p);
    }
    for p in up.difference(&current) {
        mn.handle_peer_down(now, p);
    }
    *up = current;
}

/// The periodic `status` line (and `fast path` line); tests parse both.
fn log_status(mn: &Masternode, ctx: &CoreCtx) {
    let m = mn.metrics();
    let st = mn.stats();
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
    ctx.net.broadcast(prio, frame, &ctx.stats.peer_queue_drops);
}

/// Sends a round's messages. Lock broadcasts and votes to all peers take the
/// fast path when they fit a datagram; everything else, and everything when
/// the fast path is off, goes over the reliable path in its priority class.
/// Our own vote batches also go to the vote threads' tallies.
fn dispatch(ctx: &CoreCtx, transmits: Vec<Transmit>, mut fast: Option<&mut FastPathSender>) {
    for Transmit { dest, msg } in transmits {
        let prio = priority_of(&msg);
        if let (Dest::AllPeers, Message::VoteBatch(b)) = (&dest, &msg) {
            ctx.votes.own(b.clone());
        }
        let frame = encode(&msg);
        match dest {
            Dest::Peer(p) => {
                ctx.net.send(&p, prio, frame, &ctx.stats.peer_queue_drops);
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
