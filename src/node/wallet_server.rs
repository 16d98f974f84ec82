//! Wallet sessions: reading a wallet's requests ([`serve_wallet`]) and
//! passing them on, within the limits of what one wallet may hold
//! ([`MAX_WALLET_CONNECTIONS`], [`MAX_WALLET_CONNECTIONS_PER_IP`],
//! [`WALLET_IDLE_TIMEOUT`], [`MAX_OUTSTANDING_QUERIES`], [`SESSION_QUEUE`]),
//! each counted in [`WalletStats`] and logged (rate-limited) when hit.
//!
//! Owns each session's outbound queue, its admission and its query lane.
//! Which session hears what (outcomes, notifications, subscription caps) is
//! decided in the state machine's router (`timecoin_core::masternode::router`);
//! the core thread delivers those replies into the session's queue. A
//! session must never touch the state machine or write storage: transactions
//! go to the verifier pool, subscriptions and `StatusQuery` to the core
//! queue, and a full queue is answered (`MempoolFull`, or
//! `Error {OVERLOADED}`) rather than waited on. `UtxoStateQuery` and
//! `AddressQuery` are read from the store's [`StateReader`] on a
//! blocking-pool thread ([`QueryLane`]), never on the core thread, at most
//! [`MAX_CONCURRENT_STORE_QUERIES`] at once in the node.

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

use crate::node::core_input::{CoreInput, CoreTx};
use crate::node::ingest::{Source, TxVerifier};
use crate::node::verifier::Lane;
use crate::node::wire::{encode, LinkError, NetStats};
use crate::protocol::audience::{WalletReply, WalletRequest};
use crate::protocol::message::{Message, MAX_QUERY_OUTPOINTS};
use crate::protocol::types::{Address, OutPoint, PublicKey, Txid};
use crate::protocol::validation::{RejectCode, TxError};
use crate::storage::lmdb::StateReader;

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
/// asked and not yet answered (written to the wallet) at once. One more is
/// answered `Error {QUERY_LIMIT}` and not asked; counted in
/// [`WalletStats::queries_refused`].
pub const MAX_OUTSTANDING_QUERIES: usize = 16;

/// Store queries (`UtxoStateQuery`, `AddressQuery`) being read at once in
/// the whole node, each on a blocking-pool thread. A session's lane runs
/// one query at a time, so without this cap every connection could hold a
/// blocking thread and an LMDB reader slot (126 in all, shared with the
/// core and the RPC's chain reads); a query over it waits for a place
/// (counted in [`WalletStats::store_queries_waited`]), its session's later
/// queries behind it.
pub const MAX_CONCURRENT_STORE_QUERIES: usize = 4;

/// Bytes of query answers read and not yet written to their wallets, in the
/// whole node. A session that does not read holds its answers (up to
/// [`MAX_OUTSTANDING_QUERIES`] of up to 4,096 outputs each, about 0.5 MB),
/// so without this 1,024 such sessions could hold gigabytes. A query
/// reserves its largest possible answer before it is read
/// ([`Query::max_answer_bytes`]), keeps what the encoded answer takes until
/// it is written, and waits for room when the budget is spent (counted in
/// [`WalletStats::answer_bytes_waited`]). 8 MiB is 16 answers of the
/// largest kind at once, node-wide.
pub const MAX_ANSWER_BYTES: usize = 8 << 20;
/// The budget's unit (the semaphore counts KiB).
const ANSWER_UNIT: usize = 1024;
/// Largest encoded size of one output's state in an answer (outpoint,
/// option tag, amount, address, state with its txid and weight or height),
/// rounded up.
const ANSWER_ENTRY_BYTES: usize = 128;

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
    /// Its share of [`MAX_ANSWER_BYTES`], also released once written.
    pub bytes: Option<OwnedSemaphorePermit>,
}

impl From<Bytes> for Outbound {
    fn from(frame: Bytes) -> Self {
        Outbound {
            frame,
            permit: None,
            bytes: None,
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
    /// Store queries that waited for one of the node's
    /// [`MAX_CONCURRENT_STORE_QUERIES`] places.
    pub store_queries_waited: LimitHits,
    /// Queries that waited because [`MAX_ANSWER_BYTES`] of answers were
    /// waiting to be written.
    pub answer_bytes_waited: LimitHits,
    /// Store queries the store could not answer (`Error {QUERY_FAILED}`).
    pub store_queries_failed: AtomicU64,
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
    /// UTXO states and the address index, as last committed.
    state: StateReader,
    /// The node's [`MAX_CONCURRENT_STORE_QUERIES`] places.
    store_queries: Arc<Semaphore>,
    /// [`MAX_ANSWER_BYTES`], in KiB.
    answer_bytes: Arc<Semaphore>,
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
        state: StateReader,
    ) -> Self {
        WalletCtx {
            me,
            core,
            verifier,
            net,
            stats,
            origin_window,
            state,
            store_queries: Arc::new(Semaphore::new(MAX_CONCURRENT_STORE_QUERIES)),
            answer_bytes: Arc::new(Semaphore::new(MAX_ANSWER_BYTES / ANSWER_UNIT)),
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
    ctx: &Arc<WalletCtx>,
    session: SessionId,
    mut reader: FrameReader<OwnedReadHalf>,
    tx_out: &SessionTx,
) -> Result<(), LinkError> {
    let queries = QueryLane::start(ctx, session, tx_out.clone());
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
    queries: &QueryLane,
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
            queries.ask(ctx, session, tx_out, Query::Utxo(ops)).await
        }
        WalletRequest::AddressQuery(a) => {
            queries.ask(ctx, session, tx_out, Query::Address(a)).await
        }
        WalletRequest::StatusQuery => queries.ask(ctx, session, tx_out, Query::Status).await,
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

/// What a wallet may ask.
#[derive(Debug)]
enum Query {
    Utxo(Vec<OutPoint>),
    Address(Address),
    Status,
}

impl Query {
    /// The largest encoded answer this query can have.
    fn max_answer_bytes(&self) -> usize {
        let entries = match self {
            Query::Utxo(ops) => ops.len().min(MAX_QUERY_OUTPOINTS),
            Query::Address(_) => MAX_QUERY_OUTPOINTS,
            Query::Status => 4,
        };
        64 + entries * ANSWER_ENTRY_BYTES
    }
}

/// KiB of [`MAX_ANSWER_BYTES`] for `bytes`.
fn answer_units(bytes: usize) -> u32 {
    bytes.div_ceil(ANSWER_UNIT).max(1) as u32
}

/// One session's queries, answered in the order they were sent by one task
/// of their own: `UtxoStateQuery` and `AddressQuery` from the store
/// ([`StateReader`], on a blocking-pool thread within the node's
/// [`MAX_CONCURRENT_STORE_QUERIES`]), `StatusQuery` from the core. At most
/// [`MAX_OUTSTANDING_QUERIES`] are asked and not yet written to the wallet.
/// The lane ends with its session (when this is dropped).
pub(super) struct QueryLane {
    permits: Arc<Semaphore>,
    to: mpsc::Sender<(Query, OwnedSemaphorePermit)>,
}

impl QueryLane {
    fn start(ctx: &Arc<WalletCtx>, session: SessionId, tx_out: SessionTx) -> QueryLane {
        // Room for every permit: a permitted query is never refused here.
        let (to, mut rx) = mpsc::channel::<(Query, OwnedSemaphorePermit)>(MAX_OUTSTANDING_QUERIES);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            while let Some((query, permit)) = rx.recv().await {
                let reserved = answer_units(query.max_answer_bytes());
                let budget = ctx.answer_bytes.clone();
                let mut bytes = match budget.clone().try_acquire_many_owned(reserved) {
                    Ok(b) => b,
                    Err(_) => {
                        ctx.stats.answer_bytes_waited.hit(
                            "MAX_ANSWER_BYTES",
                            MAX_ANSWER_BYTES,
                            "a query waits until answers already read are written to their wallets",
                        );
                        match budget.acquire_many_owned(reserved).await {
                            Ok(b) => b,
                            Err(_) => return,
                        }
                    }
                };
                let reply = answer(&ctx, session, query).await;
                let frame = encode(&Message::from(reply));
                // Keep only what the answer takes.
                let used = answer_units(frame.len()).min(reserved);
                drop(bytes.split((reserved - used) as usize));
                // Waits for room, like `Pong`: the permit bounds what waits.
                let out = Outbound {
                    frame,
                    permit: Some(permit),
                    bytes: Some(bytes),
                };
                if tx_out.send(out).await.is_err() {
                    return; // the session is gone
                }
            }
        });
        QueryLane {
            permits: Arc::new(Semaphore::new(MAX_OUTSTANDING_QUERIES)),
            to,
        }
    }

    /// Queues `query` within the session's [`MAX_OUTSTANDING_QUERIES`], or
    /// answers `Error {QUERY_LIMIT}` at once.
    async fn ask(&self, ctx: &WalletCtx, session: SessionId, tx_out: &SessionTx, query: Query) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let what = format!(
                "session {session} has {MAX_OUTSTANDING_QUERIES} queries waiting on the masternode; \
                 wait for their answers"
            );
            ctx.stats.queries_refused.hit(
                "MAX_OUTSTANDING_QUERIES",
                MAX_OUTSTANDING_QUERIES,
                &what,
            );
            let _ = tx_out
                .send(error_frame(error_code::QUERY_LIMIT, what).into())
                .await;
            return;
        };
        // Cannot be full (one place per permit); closed only if the lane's
        // task ended with its session.
        let _ = self.to.try_send((query, permit));
    }
}

/// The answer to one query, in the wallet protocol's form.
async fn answer(ctx: &WalletCtx, session: SessionId, query: Query) -> WalletReply {
    let read = match query {
        Query::Status => return status(ctx).await,
        Query::Utxo(ops) => StoreQuery::Utxo(ops),
        Query::Address(a) => StoreQuery::Address(a),
    };
    let place = match ctx.store_queries.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            ctx.stats.store_queries_waited.hit(
                "MAX_CONCURRENT_STORE_QUERIES",
                MAX_CONCURRENT_STORE_QUERIES,
                "a store query waits for a place",
            );
            match ctx.store_queries.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => return query_failed(ctx, session, "the node is stopping"),
            }
        }
    };
    let reader = ctx.state.clone();
    let result = tokio::task::spawn_blocking(move || {
        let _place = place;
        read.answer(&reader)
    })
    .await;
    match result {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => query_failed(ctx, session, &e.to_string()),
        Err(e) => query_failed(ctx, session, &e.to_string()),
    }
}

/// A query read from the store, off the core thread.
pub(super) enum StoreQuery {
    Utxo(Vec<OutPoint>),
    Address(Address),
}

impl StoreQuery {
    /// The answer as the core gave it before: the states in the order
    /// asked; an address's outputs not spent for good, by outpoint, at most
    /// [`MAX_QUERY_OUTPOINTS`]. Costs one read per outpoint answered.
    pub(super) fn answer(
        self,
        reader: &StateReader,
    ) -> Result<WalletReply, crate::storage::StoreError> {
        Ok(WalletReply::UtxoStateResponse(match self {
            StoreQuery::Utxo(ops) => reader.utxo_states(&ops)?,
            StoreQuery::Address(a) => reader
                .address_utxos(&a, MAX_QUERY_OUTPOINTS)?
                .into_iter()
                .map(|(op, e)| (op, Some(e)))
                .collect(),
        }))
    }
}

/// `StatusQuery`, answered by the core.
async fn status(ctx: &WalletCtx) -> WalletReply {
    let (reply, rx) = tokio::sync::oneshot::channel();
    if !ctx.core.offer(CoreInput::WalletStatus { reply }) {
        let detail = "masternode is overloaded; query not answered; retry";
        return WalletReply::Error {
            code: error_code::OVERLOADED,
            detail: detail.into(),
        };
    }
    match rx.await {
        Ok(s) => WalletReply::Status(s),
        Err(_) => WalletReply::Error {
            code: error_code::OVERLOADED,
            detail: "the masternode is stopping".into(),
        },
    }
}

fn query_failed(ctx: &WalletCtx, session: SessionId, why: &str) -> WalletReply {
    ctx.stats
        .store_queries_failed
        .fetch_add(1, Ordering::Relaxed);
    warn!(%session, error = why, "wallet query could not be read from the store");
    WalletReply::Error {
        code: error_code::QUERY_FAILED,
        detail: format!("the masternode could not read the answer: {why}"),
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
        written.push((f.permit, f.bytes));
        while w.buffered() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(f) => {
                    w.push(&f.frame)?;
                    written.push((f.permit, f.bytes));
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
    queries: QueryLane,
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
            queries: QueryLane::start(ctx, session, tx_out.clone()),
            tx_out,
            rx,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::core_input::CoreInput;
    use crate::protocol::message::NodeStatus;
    use crate::protocol::types::TxOutput;
    use crate::protocol::utxo::{UtxoEntry, UtxoState};
    use crate::protocol::validation::Limits;
    use crate::storage::lmdb::{LmdbOptions, LmdbStore};
    use crate::storage::{Store, Write};
    use time_net::mailbox;

    const HELD: u32 = 10_000;

    fn op(i: u32) -> OutPoint {
        let mut t = [0u8; 32];
        t[..4].copy_from_slice(&i.to_be_bytes());
        OutPoint {
            txid: Txid(t),
            vout: i % 3,
        }
    }

    fn paying(a: Address, state: UtxoState) -> UtxoEntry {
        UtxoEntry {
            output: TxOutput {
                amount: 5,
                address: a,
            },
            state,
        }
    }

    /// A wallet context on a real LMDB store, with a core queue nobody
    /// reads: there is no core thread at all.
    fn ctx_without_core(store: &LmdbStore) -> (Arc<WalletCtx>, mailbox::Receiver<CoreInput>) {
        let net = Arc::new(NetStats::default());
        let (core, rx) = CoreTx::channel(net.clone());
        let verifier = Arc::new(crate::node::verifier::Verifier::start(
            1,
            1,
            Limits::default(),
            |_, _, _, _: crate::node::ingest::Source| {},
        ));
        let ctx = WalletCtx::new(
            PublicKey([1; 32]),
            core,
            verifier,
            net,
            Arc::new(WalletStats::default()),
            512,
            store.state_reader(),
        );
        (Arc::new(ctx), rx)
    }

    fn core_inputs(rx: &mailbox::Receiver<CoreInput>) -> Vec<&'static str> {
        let mut v = Vec::new();
        while let Ok(i) = rx.try_recv() {
            v.push(match i {
                CoreInput::WalletOpen { .. } => "open",
                CoreInput::WalletStatus { .. } => "status",
                CoreInput::WalletClose(_) => "close",
                _ => "other",
            });
        }
        v
    }

    /// `AddressQuery` and `UtxoStateQuery` are read from the store: with no
    /// core thread running, an address holding 10,000 outputs is answered
    /// (its first `MAX_QUERY_OUTPOINTS`, by outpoint, spent ones left out),
    /// and the only input the core queue got is the session's start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn utxo_and_address_queries_are_answered_without_the_core() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LmdbStore::open(dir.path(), LmdbOptions::default()).unwrap();
        let (a, t) = (Address([0xa5; 20]), Txid([9; 32]));
        let mut writes: Vec<Write> = (0..HELD)
            .map(|i| Write::PutUtxo(op(i), paying(a, UtxoState::Unspent)))
            .collect();
        // The smallest outpoint is spent for good: not listed.
        writes.push(Write::PutUtxo(
            op(0),
            paying(a, UtxoState::SpentFinalized { txid: t }),
        ));
        store.apply(&writes).unwrap();
        let (ctx, rx) = ctx_without_core(&store);
        let mut s = LocalSession::open(&ctx).unwrap();

        s.request(WalletRequest::AddressQuery(a)).await;
        let Some(WalletReply::UtxoStateResponse(v)) = s.reply().await else {
            panic!("expected a UtxoStateResponse");
        };
        assert_eq!(v.len(), MAX_QUERY_OUTPOINTS);
        let mut want: Vec<OutPoint> = (1..HELD).map(op).collect();
        want.sort();
        let got: Vec<OutPoint> = v.iter().map(|(op, _)| *op).collect();
        assert_eq!(got, want[..MAX_QUERY_OUTPOINTS].to_vec(), "by outpoint");
        assert!(v
            .iter()
            .all(|(_, e)| *e == Some(paying(a, UtxoState::Unspent))));

        s.request(WalletRequest::UtxoStateQuery(vec![
            op(0),
            op(HELD + 1),
            op(7),
        ]))
        .await;
        let Some(WalletReply::UtxoStateResponse(v)) = s.reply().await else {
            panic!("expected a UtxoStateResponse");
        };
        assert_eq!(
            v,
            vec![
                (
                    op(0),
                    Some(paying(a, UtxoState::SpentFinalized { txid: t }))
                ),
                (op(HELD + 1), None),
                (op(7), Some(paying(a, UtxoState::Unspent))),
            ]
        );
        assert_eq!(core_inputs(&rx), vec!["open"], "no query reached the core");
        drop(store);
    }

    /// A session's answers come in the order its queries were sent: an
    /// address query behind a `StatusQuery` waits for the core's status.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_keep_the_order_of_the_queries() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LmdbStore::open(dir.path(), LmdbOptions::default()).unwrap();
        let a = Address([0xa5; 20]);
        store
            .apply(&[Write::PutUtxo(op(1), paying(a, UtxoState::Unspent))])
            .unwrap();
        let (ctx, rx) = ctx_without_core(&store);
        let mut s = LocalSession::open(&ctx).unwrap();
        s.request(WalletRequest::StatusQuery).await;
        s.request(WalletRequest::AddressQuery(a)).await;
        // Play the core: answer the status once it is asked.
        let status = NodeStatus {
            public_key: PublicKey([1; 32]),
            peers_connected: 0,
            peers_total: 0,
            pending: 0,
            finalized: 0,
            rejected: 0,
            catching_up: false,
            blocks: None,
        };
        let core = tokio::task::spawn_blocking(move || loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(CoreInput::WalletStatus { reply }) => {
                    // The address query waits behind it meanwhile.
                    std::thread::sleep(Duration::from_millis(50));
                    let _ = reply.send(status);
                    return;
                }
                Ok(_) => {}
                Err(_) => panic!("no status asked"),
            }
        });
        assert!(matches!(s.reply().await, Some(WalletReply::Status(_))));
        assert!(matches!(
            s.reply().await,
            Some(WalletReply::UtxoStateResponse(v)) if v.len() == 1
        ));
        core.await.unwrap();
    }

    /// A query the store cannot answer (a damaged index) is answered
    /// `Error {QUERY_FAILED}` (counted); the session goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_query_the_store_cannot_answer_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = LmdbStore::open(dir.path(), LmdbOptions::default()).unwrap();
        let a = Address([0xa5; 20]);
        let mut key = [0u8; 56];
        key[..20].copy_from_slice(&a.0);
        store.put_raw_address_index_key(&key); // an output `utxos` does not hold
        let (ctx, _rx) = ctx_without_core(&store);
        let mut s = LocalSession::open(&ctx).unwrap();
        s.request(WalletRequest::AddressQuery(a)).await;
        assert!(matches!(
            s.reply().await,
            Some(WalletReply::Error { code, .. }) if code == error_code::QUERY_FAILED
        ));
        assert_eq!(ctx.stats.store_queries_failed.load(Ordering::Relaxed), 1);
        s.request(WalletRequest::UtxoStateQuery(vec![op(1)])).await;
        assert!(matches!(
            s.reply().await,
            Some(WalletReply::UtxoStateResponse(v)) if v == vec![(op(1), None)]
        ));
    }

    /// Store queries wait for one of the node's
    /// `MAX_CONCURRENT_STORE_QUERIES` places (counted), then are answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_waiting_to_be_written_are_bounded_in_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let store = LmdbStore::open(dir.path(), LmdbOptions::default()).unwrap();
        let (ctx, _rx) = ctx_without_core(&store);
        let units = (MAX_ANSWER_BYTES / ANSWER_UNIT) as u32;
        // The whole budget is held by answers not yet written.
        let held = ctx
            .answer_bytes
            .clone()
            .acquire_many_owned(units)
            .await
            .unwrap();
        let mut s = LocalSession::open(&ctx).unwrap();
        s.request(WalletRequest::UtxoStateQuery(vec![op(1), op(2)]))
            .await;
        let waiting = tokio::time::timeout(Duration::from_millis(200), s.reply()).await;
        assert!(waiting.is_err(), "no room: the query waits");
        assert_eq!(ctx.stats.answer_bytes_waited.get(), 1);
        drop(held);
        assert!(matches!(
            s.reply().await,
            Some(WalletReply::UtxoStateResponse(v)) if v.len() == 2
        ));
        // Once read, the answer's share is back.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ctx.answer_bytes.available_permits(), units as usize);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_queries_wait_for_a_place_in_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let store = LmdbStore::open(dir.path(), LmdbOptions::default()).unwrap();
        let (ctx, _rx) = ctx_without_core(&store);
        let all = ctx
            .store_queries
            .clone()
            .acquire_many_owned(MAX_CONCURRENT_STORE_QUERIES as u32)
            .await
            .unwrap();
        let mut s = LocalSession::open(&ctx).unwrap();
        s.request(WalletRequest::UtxoStateQuery(vec![op(1)])).await;
        let waiting = tokio::time::timeout(Duration::from_millis(200), s.reply()).await;
        assert!(waiting.is_err(), "no place: the query waits");
        assert_eq!(ctx.stats.store_queries_waited.get(), 1);
        drop(all);
        assert!(matches!(
            s.reply().await,
            Some(WalletReply::UtxoStateResponse(v)) if v == vec![(op(1), None)]
        ));
    }
}
