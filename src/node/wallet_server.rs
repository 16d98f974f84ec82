//! Wallet sessions: reading a wallet's requests ([`serve_wallet`]) and
//! passing them on, within the limits of what one wallet may hold
//! ([`MAX_WALLET_CONNECTIONS`], [`MAX_WALLET_CONNECTIONS_PER_IP`],
//! [`WALLET_IDLE_TIMEOUT`], [`MAX_OUTSTANDING_QUERIES`], [`SESSION_QUEUE`]),
//! each counted in [`WalletStats`] and logged (rate-limited) when hit.
//!
//! Owns each session's outbound queue and its admission. Which session hears
//! what (outcomes, notifications, subscription caps) is decided in the state
//! machine's router (`timecoin_core::masternode::router`); the core thread
//! delivers those replies into the session's queue. A session must never
//! touch the state machine or storage directly: transactions go to the
//! verifier pool, everything else to the core queue, and a full queue is
//! answered (`MempoolFull`, or `Error {OVERLOADED}`) rather than waited on.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use time_net::{FrameReader, FrameWriter};
use timecoin_core::masternode::router::error_code;
use timecoin_core::masternode::SessionId;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tracing::warn;

use crate::node::core_input::{CoreInput, CoreTx, WalletQuery};
use crate::node::ingest::{Source, TxVerifier};
use crate::node::verifier::Lane;
use crate::node::wire::{encode, LinkError, NetStats};
use crate::protocol::audience::WalletRequest;
use crate::protocol::message::Message;
use crate::protocol::types::{Address, PublicKey, Txid};
use crate::protocol::validation::{RejectCode, TxError};

/// Wallet connections served at once, from all addresses. One more is
/// refused right after its handshake with `Error {CONNECTION_LIMIT}` and
/// closed; counted in [`WalletStats::refused_total`].
pub const MAX_WALLET_CONNECTIONS: usize = 1_024;

/// Wallet connections served at once from one source IP. One more is
/// refused like one over [`MAX_WALLET_CONNECTIONS`]; counted in
/// [`WalletStats::refused_per_ip`].
pub const MAX_WALLET_CONNECTIONS_PER_IP: usize = 64;

/// A session that sends no frame for this long after its handshake is sent
/// `Error {IDLE_TIMEOUT}` and closed; counted in [`WalletStats::idle_closed`].
/// A wallet that only listens sends a `Ping` now and then.
pub const WALLET_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Queries (`UtxoStateQuery`, `AddressQuery`, `StatusQuery`) of one session
/// waiting on the core at once. One more is answered `Error {QUERY_LIMIT}`
/// and not asked; counted in [`WalletStats::queries_refused`].
pub const MAX_OUTSTANDING_QUERIES: usize = 16;

/// Frames queued towards one wallet. When full, the core drops further
/// replies and notifications for it (the session's own answers, `Pong`,
/// wait for room instead); counted in [`WalletStats::frames_dropped`].
pub const SESSION_QUEUE: usize = 4_096;

/// Bytes of frames a session's writer batches into one write (its buffer
/// keeps about this much between writes).
const WRITE_BATCH: usize = 16 * 1024;

/// A frame queued for a wallet session, with the query permit it answers:
/// the permit is released once the frame is written, so a session that does
/// not read has at most [`MAX_OUTSTANDING_QUERIES`] answers (each up to
/// 4,096 outputs) waiting here, not [`SESSION_QUEUE`] of them.
pub(super) struct Outbound {
    pub frame: Bytes,
    pub permit: Option<OwnedSemaphorePermit>,
}

impl From<Bytes> for Outbound {
    fn from(frame: Bytes) -> Self {
        Outbound {
            frame,
            permit: None,
        }
    }
}

/// Where a session's frames are queued.
pub(super) type SessionTx = mpsc::Sender<Outbound>;

/// How often one limit's warning is logged at most.
const LIMIT_WARN_EVERY: Duration = Duration::from_secs(10);

/// How long a closing session waits for its queued frames to be written.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Milliseconds on a process-wide monotonic clock.
fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Lets a warning through at most once per [`LIMIT_WARN_EVERY`].
#[derive(Debug, Default)]
pub struct WarnEvery {
    next_ms: AtomicU64,
}

impl WarnEvery {
    pub fn due(&self) -> bool {
        let now = mono_ms();
        let next = self.next_ms.load(Ordering::Relaxed);
        now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + LIMIT_WARN_EVERY.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

/// How often a limit was hit, with a rate-limited warning.
#[derive(Debug, Default)]
pub struct LimitHits {
    hits: AtomicU64,
    warn: WarnEvery,
}

impl LimitHits {
    pub fn get(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Counts a hit of `limit` (= `value`); warns unless it did recently.
    pub fn hit(&self, limit: &'static str, value: impl std::fmt::Display, what: &str) {
        let hits = self.hits.fetch_add(1, Ordering::Relaxed) + 1;
        if self.warn.due() {
            warn!(limit, %value, hits, "wallet limit hit: {what}");
        }
    }
}

/// Counters of the wallet sessions (the router's are in the state
/// machine's `MasternodeStats::wallet`).
#[derive(Debug, Default)]
pub struct WalletStats {
    /// Wallet connections served now.
    pub connections: AtomicU64,
    /// Refused over [`MAX_WALLET_CONNECTIONS`].
    pub refused_total: LimitHits,
    /// Refused over [`MAX_WALLET_CONNECTIONS_PER_IP`].
    pub refused_per_ip: LimitHits,
    /// Closed after [`WALLET_IDLE_TIMEOUT`] without a frame.
    pub idle_closed: LimitHits,
    /// Queries refused over [`MAX_OUTSTANDING_QUERIES`].
    pub queries_refused: LimitHits,
    /// Replies dropped because a session's [`SESSION_QUEUE`] was full.
    pub frames_dropped: LimitHits,
    /// This node's wallet payments in flight (the state machine's origin
    /// window fill, `Engine::wallet_in_flight`), published by the core
    /// thread after every round.
    pub in_flight: AtomicUsize,
    /// Payments refused before any signature check because the origin
    /// window was full (in flight plus waiting for the verifier).
    pub busy: LimitHits,
}

/// Wallet connections served now, in total and per source IP.
#[derive(Default)]
struct Admission {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// What a wallet session needs, handed over when the listener is built.
pub(super) struct WalletCtx {
    me: PublicKey,
    core: CoreTx,
    verifier: Arc<TxVerifier>,
    net: Arc<NetStats>,
    stats: Arc<WalletStats>,
    /// `EngineConfig::origin_window`, checked here too so that a busy
    /// node refuses before it spends a signature check.
    origin_window: usize,
    next_session: AtomicU64,
    admission: Mutex<Admission>,
}

/// A served wallet connection's place under the connection caps; freed
/// when dropped.
pub(super) struct ConnectionGuard {
    ctx: Arc<WalletCtx>,
    ip: IpAddr,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut a = self.ctx.admission.lock().expect("admission lock");
        a.total -= 1;
        if let Some(n) = a.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                a.per_ip.remove(&self.ip);
            }
        }
        self.ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WalletCtx {
    pub(super) fn new(
        me: PublicKey,
        core: CoreTx,
        verifier: Arc<TxVerifier>,
        net: Arc<NetStats>,
        stats: Arc<WalletStats>,
        origin_window: usize,
    ) -> Self {
        WalletCtx {
            me,
            core,
            verifier,
            net,
            stats,
            origin_window,
            next_session: AtomicU64::new(1),
            admission: Mutex::new(Admission::default()),
        }
    }

    /// Admits one more wallet connection from `ip`, or says which cap it
    /// is over (counted and logged).
    pub(super) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionGuard, String> {
        let mut a = self.admission.lock().expect("admission lock");
        if a.total >= MAX_WALLET_CONNECTIONS {
            let what = format!(
                "wallet connection from {ip} refused: {MAX_WALLET_CONNECTIONS} served already"
            );
            self.stats
                .refused_total
                .hit("MAX_WALLET_CONNECTIONS", MAX_WALLET_CONNECTIONS, &what);
            return Err(what);
        }
        let n = a.per_ip.entry(ip).or_default();
        if *n >= MAX_WALLET_CONNECTIONS_PER_IP {
            let what = format!(
                "wallet connection from {ip} refused: {MAX_WALLET_CONNECTIONS_PER_IP} served from this address already"
            );
            self.stats.refused_per_ip.hit(
                "MAX_WALLET_CONNECTIONS_PER_IP",
                MAX_WALLET_CONNECTIONS_PER_IP,
                &what,
            );
            return Err(what);
        }
        *n += 1;
        a.total += 1;
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionGuard {
            ctx: self.clone(),
            ip,
        })
    }
}

/// The answer to a wallet whose transaction found a queue full.
pub(super) fn overloaded(txid: Txid, me: PublicKey) -> Bytes {
    encode(&Message::TransactionRejected {
        txid,
        reason: RejectCode::MempoolFull,
        detail: "masternode is overloaded; retry".into(),
        rejecters: vec![(me, RejectCode::MempoolFull)],
    })
}

/// The answer to a wallet whose payment found the origin window full.
fn busy(txid: Txid, me: PublicKey, in_flight: usize) -> Bytes {
    encode(&Message::TransactionRejected {
        txid,
        reason: RejectCode::MempoolFull,
        detail: TxError::Busy(in_flight).to_string(),
        rejecters: vec![(me, RejectCode::MempoolFull)],
    })
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs())
}

fn error_frame(code: u16, detail: impl Into<String>) -> Bytes {
    encode(&Message::Error {
        code,
        detail: detail.into(),
    })
}

/// Serves one authenticated wallet connection until it closes, misbehaves
/// or idles; refuses it at once if it is over a connection cap.
pub(super) async fn serve_wallet(
    ctx: Arc<WalletCtx>,
    reader: FrameReader<OwnedReadHalf>,
    mut writer: FrameWriter<OwnedWriteHalf>,
) -> Result<(), LinkError> {
    let Ok(peer) = reader.get_ref().peer_addr() else {
        return Ok(()); // already gone
    };
    let guard = match ctx.admit(peer.ip()) {
        Ok(g) => g,
        Err(why) => {
            let _ = writer
                .send(&error_frame(error_code::CONNECTION_LIMIT, why))
                .await;
            return Ok(());
        }
    };
    let session = SessionId(ctx.next_session.fetch_add(1, Ordering::Relaxed));
    let (tx_out, mut rx_out) = mpsc::channel::<Outbound>(SESSION_QUEUE);
    let open = CoreInput::WalletOpen {
        session,
        to: tx_out.clone(),
    };
    if !ctx.core.offer(open) {
        let detail = "masternode is overloaded; retry";
        let _ = writer
            .send(&error_frame(error_code::OVERLOADED, detail))
            .await;
        return Ok(());
    }
    let stats = ctx.net.clone();
    let mut writer_task = tokio::spawn(async move {
        let _ = write_frames(&mut writer, &mut rx_out, &stats).await;
    });
    let result = read_requests(&ctx, session, reader, &tx_out).await;
    close_session(&ctx.core, session);
    // Let what is queued (an idle-timeout Error, say) go out; the queue
    // ends once the core dropped the session.
    drop(tx_out);
    if tokio::time::timeout(CLOSE_LINGER, &mut writer_task)
        .await
        .is_err()
    {
        writer_task.abort();
    }
    drop(guard);
    result
}

/// The session's read loop.
async fn read_requests(
    ctx: &WalletCtx,
    session: SessionId,
    mut reader: FrameReader<OwnedReadHalf>,
    tx_out: &SessionTx,
) -> Result<(), LinkError> {
    let queries = Arc::new(Semaphore::new(MAX_OUTSTANDING_QUERIES));
    loop {
        let frame = match tokio::time::timeout(WALLET_IDLE_TIMEOUT, reader.read_frame()).await {
            Ok(frame) => frame?,
            Err(_) => {
                let what = format!("session {session} sent nothing for {WALLET_IDLE_TIMEOUT:?}");
                ctx.stats
                    .idle_closed
                    .hit("WALLET_IDLE_TIMEOUT", secs(WALLET_IDLE_TIMEOUT), &what);
                let _ = tx_out.try_send(error_frame(error_code::IDLE_TIMEOUT, what).into());
                return Ok(());
            }
        };
        ctx.net.frames_in.fetch_add(1, Ordering::Relaxed);
        let request = WalletRequest::try_from(Message::decode(frame)?)?;
        handle_wallet_request(ctx, session, tx_out, &queries, request).await;
    }
}

/// Tells the core a session ended. It must get there (the router would
/// keep the session's subscriptions otherwise): when the queue is full, a
/// blocking-pool thread waits for room.
fn close_session(core: &CoreTx, session: SessionId) {
    if let Some(input) = core.try_offer(CoreInput::WalletClose(session)) {
        let core = core.clone();
        tokio::task::spawn_blocking(move || core.send_blocking(input));
    }
}

/// One request of a wallet session: the typed wallet API of the node.
async fn handle_wallet_request(
    ctx: &WalletCtx,
    session: SessionId,
    tx_out: &SessionTx,
    queries: &Arc<Semaphore>,
    request: WalletRequest,
) {
    match request {
        WalletRequest::SubmitTransaction(tx) => {
            let txid = tx.txid();
            let src = Source::Wallet {
                session,
                to: tx_out.clone(),
            };
            tracing::debug!(%txid, %session, "payment submitted by a wallet");
            // Cheap before expensive: a full origin window refuses at once,
            // before a signature check or a queue (the state machine checks
            // the same window authoritatively, see `TxError::Busy`).
            let in_flight =
                ctx.stats.in_flight.load(Ordering::Relaxed) + ctx.verifier.queued(Lane::Wallet);
            if in_flight >= ctx.origin_window {
                ctx.stats.busy.hit(
                    "origin_window",
                    ctx.origin_window,
                    "payments refused at once: this masternode's wallets have that many in flight",
                );
                tracing::debug!(%txid, %session, in_flight, "payment refused: masternode busy");
                let _ = tx_out.send(busy(txid, ctx.me, in_flight).into()).await;
                return;
            }
            if ctx.verifier.submit(tx, src, Lane::Wallet).is_err() {
                tracing::debug!(%txid, %session, "payment refused: the verifier queue is full");
                let _ = tx_out.send(overloaded(txid, ctx.me).into()).await;
            }
        }
        WalletRequest::UtxoStateQuery(ops) => {
            ask_core(ctx, session, tx_out, queries, WalletQuery::Utxo(ops)).await
        }
        WalletRequest::AddressQuery(a) => {
            ask_core(ctx, session, tx_out, queries, WalletQuery::Address(a)).await
        }
        WalletRequest::StatusQuery => {
            ask_core(ctx, session, tx_out, queries, WalletQuery::Status).await
        }
        WalletRequest::WalletSubscribe(addrs) => {
            // The router de-duplicates and caps; an over-cap answer comes
            // back from the core.
            if !ctx
                .core
                .offer(CoreInput::WalletSubscribe { session, addrs })
            {
                let detail = "masternode is overloaded; subscription not taken; retry";
                let _ = tx_out
                    .send(error_frame(error_code::OVERLOADED, detail).into())
                    .await;
            }
        }
        WalletRequest::Ping(n) => {
            let _ = tx_out.send(encode(&Message::Pong(n)).into()).await;
        }
    }
}

/// A query the core answers into the session's queue, within the session's
/// [`MAX_OUTSTANDING_QUERIES`].
async fn ask_core(
    ctx: &WalletCtx,
    session: SessionId,
    tx_out: &SessionTx,
    queries: &Arc<Semaphore>,
    query: WalletQuery,
) {
    let Ok(permit) = queries.clone().try_acquire_owned() else {
        let what = format!(
            "session {session} has {MAX_OUTSTANDING_QUERIES} queries waiting on the masternode; \
             wait for their answers"
        );
        ctx.stats
            .queries_refused
            .hit("MAX_OUTSTANDING_QUERIES", MAX_OUTSTANDING_QUERIES, &what);
        let _ = tx_out
            .send(error_frame(error_code::QUERY_LIMIT, what).into())
            .await;
        return;
    };
    let input = CoreInput::WalletQuery {
        session,
        query,
        permit,
    };
    if !ctx.core.offer(input) {
        let detail = "masternode is overloaded; query not answered; retry";
        let _ = tx_out
            .send(error_frame(error_code::OVERLOADED, detail).into())
            .await;
    }
}

async fn write_frames<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut FrameWriter<W>,
    rx: &mut mpsc::Receiver<Outbound>,
    stats: &NetStats,
) -> Result<(), LinkError> {
    // Frames are batched into one write up to WRITE_BATCH bytes; the
    // permits of the answers in it are released once it is written.
    let mut written = Vec::new();
    while let Some(f) = rx.recv().await {
        w.push(&f.frame)?;
        written.push(f.permit);
        while w.buffered() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(f) => {
                    w.push(&f.frame)?;
                    written.push(f.permit);
                }
                Err(_) => break,
            }
        }
        w.flush().await?;
        written.clear();
        stats.frames_out.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// An in-process wallet session (the RPC server's): the same typed
/// requests, routed to the core the same way and under the same limits as
/// a TCP wallet's, without the socket. Closed in the core when dropped.
pub(super) struct LocalSession {
    ctx: Arc<WalletCtx>,
    pub session: SessionId,
    tx_out: SessionTx,
    rx: mpsc::Receiver<Outbound>,
    queries: Arc<Semaphore>,
}

impl LocalSession {
    /// None when the core queue is full (the caller answers "overloaded").
    pub(super) fn open(ctx: &Arc<WalletCtx>) -> Option<LocalSession> {
        let session = SessionId(ctx.next_session.fetch_add(1, Ordering::Relaxed));
        let (tx_out, rx) = mpsc::channel::<Outbound>(SESSION_QUEUE);
        let open = CoreInput::WalletOpen {
            session,
            to: tx_out.clone(),
        };
        if !ctx.core.offer(open) {
            return None;
        }
        Some(LocalSession {
            ctx: ctx.clone(),
            session,
            tx_out,
            rx,
            queries: Arc::new(Semaphore::new(MAX_OUTSTANDING_QUERIES)),
        })
    }

    pub(super) async fn request(&self, request: WalletRequest) {
        handle_wallet_request(
            &self.ctx,
            self.session,
            &self.tx_out,
            &self.queries,
            request,
        )
        .await
    }

    /// The next reply or notification; None once the core dropped the
    /// session.
    pub(super) async fn reply(&mut self) -> Option<crate::protocol::audience::WalletReply> {
        loop {
            // The answer's query permit is released here, once read.
            let Outbound { frame, .. } = self.rx.recv().await?;
            if let Ok(r) = Message::decode(&frame)
                .map_err(|_| ())
                .and_then(|m| crate::protocol::audience::WalletReply::try_from(m).map_err(|_| ()))
            {
                return Some(r);
            }
        }
    }
}

impl LocalSession {
    /// Waits on `txid`'s outcome without submitting it (push events); the
    /// answer comes as a reply. False when the core queue is full.
    pub(super) fn watch(&self, txid: Txid) -> bool {
        self.ctx.core.offer(CoreInput::WalletWatch {
            session: self.session,
            txid,
        })
    }

    /// Stops waiting on `txid` (the WebSocket's own set says whether it
    /// did). False when the core queue is full.
    pub(super) fn unwatch(&self, txid: Txid) -> bool {
        self.ctx.core.offer(CoreInput::WalletUnwatch {
            session: self.session,
            txid,
        })
    }

    /// Drops the subscription to `addr`. False when the core queue is full.
    pub(super) fn unsubscribe(&self, addr: Address) -> bool {
        self.ctx.core.offer(CoreInput::WalletUnsubscribe {
            session: self.session,
            addrs: vec![addr],
        })
    }

    /// Replies queued for this session and not read yet.
    pub(super) fn backlog(&self) -> usize {
        self.rx.len()
    }
}

impl WalletCtx {
    /// Asks the core an operator query; None when its queue is full.
    pub(super) fn node_query(
        &self,
        query: crate::node::node_api::NodeQuery,
    ) -> Option<
        tokio::sync::oneshot::Receiver<
            Result<crate::node::node_api::NodeAnswer, crate::storage::StoreError>,
        >,
    > {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.core
            .offer(CoreInput::NodeQuery { query, reply })
            .then_some(rx)
    }
}

impl Drop for LocalSession {
    fn drop(&mut self) {
        close_session(&self.ctx.core, self.session);
    }
}
