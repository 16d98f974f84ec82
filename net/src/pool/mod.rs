//! A persistent, authenticated connection pool to the other masternodes.
//!
//! Owns one long-lived connection per peer in a fixed peer table, its
//! outbound priority queues, reconnection, health (ping/RTT) and counters. It
//! carries opaque messages (`Bytes`) in four [`Priority`] classes and never
//! looks inside them; it must never accept a peer whose key is not in the
//! table, and never lose a message without counting it.
//!
//! # Transports
//!
//! - [`Transport::Quic`] (quinn 0.11, rustls 0.23 with *ring*): mutual TLS 1.3
//!   with self-signed certificates derived from each masternode's ed25519 key;
//!   a certificate is accepted only if its key is the expected masternode key
//!   and the handshake signature verifies under it ([`tls`]). ALPN
//!   `timecoin/1`. Each class has its own long-lived unidirectional stream with
//!   a matching QUIC priority (module `quic`).
//! - [`Transport::Tcp`]: the fallback, same API. TLS 1.3 over TCP
//!   (tokio-rustls) with the same certificates and verifiers as QUIC
//!   authenticates the peer and protects every byte after it ([`handshake`],
//!   ALPN `timecoin-tcp/2`); the four classes share the stream and the sender
//!   schedules them with strict priority and starvation protection (module
//!   `tcp`).
//!
//! # One connection per peer
//!
//! Peer ids are ed25519 public keys, compared as bytes. A node **dials the
//! peers whose key is greater than its own and accepts connections only from
//! peers whose key is smaller**; an authenticated inbound connection from a
//! greater key is refused (counted in [`PoolStats::refused_direction`]). So
//! there is never a race between two connections for one pair, and only the
//! dialing side reconnects (exponential backoff with jitter, [`backoff`]).
//! A new inbound connection from a peer replaces its old one, after the old
//! one's tasks have all stopped.
//!
//! # Messages and losses
//!
//! [`Pool::send`] never blocks: it queues or refuses with a typed
//! [`SendError`] (refusals counted per class in [`PeerStats::refused`]).
//! Queued messages survive reconnections. Each data frame carries a sequence
//! number per (sender, receiver, class); a message lost in flight because a
//! connection died is counted by the receiver in [`PeerStats::lost_in_flight`]
//! when the next message of that class arrives. Within a class, delivery is
//! FIFO. Received messages go into the [`Inbox`], itself a four-class queue,
//! so an unread backlog of Low messages never holds a vote back.
//!
//! Messages larger than [`PoolConfig::compress_threshold`] are zstd-compressed
//! when that saves at least an eighth; decompression is bounded by
//! [`PoolConfig::max_message_len`] ([`wire`]). Frames already queued when a
//! writer wakes go out in one write; [`PoolConfig::batch_window`] can hold a
//! batch open a little longer.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::SeedableRng;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::frame::MAX_FRAME_LEN;
use crate::priority::{PeerQueue, Priority, PushError, QueueLimits};

pub mod backoff;
pub mod handshake;
mod identity;
mod link;
pub mod quic;
mod stats;
mod tcp;
pub mod tls;
pub mod wire;

pub use backoff::BackoffConfig;
pub use identity::{peer_id_from_secret, Credentials, PeerId, ShortId};
pub use stats::{PeerStats, PoolStats};

use identity::Identity;
use link::{Finished, Outbox, PeerLink};
use stats::{LinkStats, PoolCounters};

/// Longest [`PoolConfig::batch_window`]: a vote may wait this long at most.
pub const MAX_BATCH_WINDOW: Duration = Duration::from_millis(1);

/// A message from a peer: who sent it, its class, its bytes.
pub type Incoming = (PeerId, Priority, Bytes);

/// Which transport a pool runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Quic,
    Tcp,
}

/// Everything a pool needs. [`PoolConfig::new`] fills in the defaults.
#[derive(Clone)]
pub struct PoolConfig {
    pub transport: Transport,
    /// UDP (QUIC) or TCP address to listen on; port 0 picks one
    /// ([`Pool::local_addr`]).
    pub listen: SocketAddr,
    /// This masternode's ed25519 secret seed.
    pub local_secret: [u8; 32],
    /// Every masternode we talk to: its key and where it listens. Our own key
    /// may be in it and is skipped. Addresses of peers with a smaller key than
    /// ours are never dialed (they dial us).
    pub peers: HashMap<PeerId, SocketAddr>,
    /// How long a writer holds a batch open for more messages after the queue
    /// ran empty, at most 1 ms. Zero (the default): flush as soon as the
    /// queue is empty, so batching happens only under load and an idle link
    /// adds no delay.
    pub batch_window: Duration,
    /// A batch is flushed when it holds this many bytes.
    pub max_batch_bytes: usize,
    /// Messages larger than this are zstd-compressed when that pays.
    pub compress_threshold: usize,
    /// Largest message accepted by `send` or from a peer (after
    /// decompression).
    pub max_message_len: usize,
    /// Capacity of each class per peer, and the TCP starvation limit.
    pub queue_limits: QueueLimits,
    /// Capacity of each class of the [`Inbox`]. When a class is full, reading
    /// that class from peers pauses (QUIC: that stream's flow control; TCP:
    /// the whole connection); nothing is dropped.
    pub inbox_limits: QueueLimits,
    pub ping_interval: Duration,
    /// An unanswered ping older than this ends the connection.
    pub ping_timeout: Duration,
    /// Bound on connecting plus authenticating, each way.
    pub connect_timeout: Duration,
    pub backoff: BackoffConfig,
    /// How long [`Pool::shutdown`] waits for queued messages to be written.
    pub shutdown_timeout: Duration,
    /// The application's rate limits, applied where a peer's message is
    /// read: for each data message it says how long to hold it back (the
    /// peer is over its rate), or `None` to take it now. While a message is
    /// held, its stream (QUIC) or connection (TCP) is not read, so the
    /// sender is pushed back by flow control instead of having its messages
    /// dropped; after [`MAX_PACING_WAIT`] in all the message is delivered
    /// anyway (the application then refuses and counts it). `None`: no
    /// pacing.
    pub intake_pacing: Option<IntakePacing>,
}

/// See [`PoolConfig::intake_pacing`]: peer, message bytes -> how long to hold
/// the message back.
pub type IntakePacing = Arc<dyn Fn(&PeerId, &Bytes) -> Option<Duration> + Send + Sync>;

/// Longest a reader holds one message back for pacing: well under the ping
/// timeout, so a paced TCP connection still reads its pongs in time.
pub const MAX_PACING_WAIT: Duration = Duration::from_secs(1);

impl PoolConfig {
    pub fn new(
        transport: Transport,
        listen: SocketAddr,
        local_secret: [u8; 32],
        peers: HashMap<PeerId, SocketAddr>,
    ) -> Self {
        PoolConfig {
            transport,
            listen,
            local_secret,
            peers,
            batch_window: Duration::ZERO,
            max_batch_bytes: 64 * 1024,
            compress_threshold: 16 * 1024,
            max_message_len: MAX_FRAME_LEN - wire::DATA_OVERHEAD,
            queue_limits: QueueLimits::default(),
            inbox_limits: QueueLimits {
                capacity: [8192, 8192, 64, 8192],
                ..QueueLimits::default()
            },
            ping_interval: Duration::from_secs(1),
            ping_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            backoff: BackoffConfig::default(),
            shutdown_timeout: Duration::from_secs(2),
            intake_pacing: None,
        }
    }
}

impl std::fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Leaves out the secret.
        f.debug_struct("PoolConfig")
            .field("transport", &self.transport)
            .field("listen", &self.listen)
            .field("local", &ShortId(&peer_id_from_secret(&self.local_secret)))
            .field("peers", &self.peers.len())
            .field("batch_window", &self.batch_window)
            .field("compress_threshold", &self.compress_threshold)
            .field("max_message_len", &self.max_message_len)
            .field("queue_limits", &self.queue_limits)
            .finish_non_exhaustive()
    }
}

/// Why a pool could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PoolError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer key {} is not a usable ed25519 public key", ShortId(.peer))]
    InvalidPeerKey { peer: PeerId },
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    #[error("encoding our key: {0}")]
    KeyEncoding(#[from] ed25519_dalek::pkcs8::Error),
    #[error("building our certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why a message was not queued. Each refusal for lack of room is also
/// counted in [`PeerStats::refused`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    #[error("peer {} is not in the peer table", ShortId(.peer))]
    UnknownPeer { peer: PeerId },
    #[error("empty message")]
    Empty,
    #[error("message of {len} bytes exceeds the cap of {cap}")]
    TooLarge { len: usize, cap: usize },
    #[error("{priority:?} queue to {} is full ({capacity} messages)", ShortId(.peer))]
    QueueFull {
        peer: PeerId,
        priority: Priority,
        capacity: usize,
    },
    #[error("the pool is shutting down")]
    Shutdown,
}

/// What [`Pool::broadcast`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BroadcastReport {
    /// Peers the message was queued for.
    pub queued: usize,
    pub refused: Vec<(PeerId, SendError)>,
}

/// What [`Pool::shutdown`] could not deliver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Messages still queued per peer when the pool stopped (peer
    /// unreachable, or the shutdown timeout ran out).
    pub unsent: HashMap<PeerId, usize>,
}

/// Why a dial attempt failed (counted in [`PeerStats::dial_failures`]).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DialError {
    #[error("i/o: {0}")]
    Io(std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("handshake: {0}")]
    Handshake(handshake::HandshakeError),
    #[error("tls: {0}")]
    Tls(rustls::Error),
    #[error("configuration")]
    Config,
    #[error("quic connect: {0}")]
    QuicConnect(quinn::ConnectError),
    #[error("quic handshake: {0}")]
    QuicHandshake(quinn::ConnectionError),
}

impl DialError {
    /// The QUIC application close code the acceptor ended the handshake
    /// with, if it did (e.g. [`quic::CLOSE_DIRECTION`]).
    pub fn close_code(&self) -> Option<u32> {
        match self {
            DialError::QuicHandshake(quinn::ConnectionError::ApplicationClosed(c)) => {
                u32::try_from(c.error_code.into_inner()).ok()
            }
            _ => None,
        }
    }

    fn is_handshake_failure(&self) -> bool {
        matches!(self, DialError::Handshake(_) | DialError::QuicHandshake(_))
    }
}

/// Settings the running pool reads.
#[derive(Debug, Clone)]
pub(crate) struct Tunables {
    pub batch_window: Duration,
    pub max_batch_bytes: usize,
    pub compress_threshold: usize,
    pub max_message_len: usize,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub connect_timeout: Duration,
    pub backoff: BackoffConfig,
    pub shutdown_timeout: Duration,
}

impl From<&PoolConfig> for Tunables {
    fn from(cfg: &PoolConfig) -> Self {
        Tunables {
            batch_window: cfg.batch_window,
            max_batch_bytes: cfg.max_batch_bytes.max(1),
            compress_threshold: cfg.compress_threshold,
            max_message_len: cfg.max_message_len,
            ping_interval: cfg.ping_interval,
            ping_timeout: cfg.ping_timeout,
            connect_timeout: cfg.connect_timeout,
            backoff: cfg.backoff,
            shutdown_timeout: cfg.shutdown_timeout,
        }
    }
}

enum Net {
    Quic(quic::QuicNet),
    Tcp(Arc<handshake::TcpTls>),
}

/// State shared by the pool handle and its tasks.
pub(crate) struct Shared {
    pub identity: Identity,
    /// Random id of this pool instance (see [`wire::Hello::epoch`]).
    pub epoch: u64,
    pub tun: Tunables,
    pub links: HashMap<PeerId, Arc<PeerLink>>,
    pub peer_set: Arc<HashSet<PeerId>>,
    pub inbound: PeerQueue<(PeerId, Bytes)>,
    pub pacing: Option<IntakePacing>,
    pub counters: PoolCounters,
    net: Net,
    local_addr: SocketAddr,
    closing: AtomicBool,
}

impl Shared {
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Largest frame a peer may send once authenticated.
    pub(crate) fn frame_cap(&self) -> usize {
        (self.tun.max_message_len + wire::DATA_OVERHEAD).min(MAX_FRAME_LEN)
    }

    /// The link for an authenticated inbound peer, if the dial-direction rule
    /// lets it dial us (counted otherwise).
    pub(crate) fn inbound_link(&self, peer: &PeerId) -> Option<Arc<PeerLink>> {
        let link = self.links.get(peer)?;
        if *peer < self.identity.peer_id() {
            Some(link.clone())
        } else {
            LinkStats::add(&self.counters.refused_direction, 1);
            None
        }
    }
}

struct Inner {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Last handle gone without shutdown(): stop everything now.
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
        for link in self.shared.links.values() {
            link.abort();
        }
        if let Net::Quic(q) = &self.shared.net {
            q.endpoint.close(quinn::VarInt::from_u32(0), b"dropped");
        }
        self.shared.inbound.close();
    }
}

/// Messages from peers. Like the send side, it is a four-class queue: the
/// application gets higher classes first (with the same starvation
/// protection), so a backlog of Low messages it has not read yet never holds
/// a vote back. After the pool stops, what was already received can still be
/// read, then [`recv`](Inbox::recv) returns `None`.
#[derive(Debug)]
pub struct Inbox {
    queue: PeerQueue<(PeerId, Bytes)>,
}

impl Inbox {
    /// The next message, or `None` once the pool has stopped and everything
    /// received was read.
    pub async fn recv(&mut self) -> Option<Incoming> {
        let (p, (peer, msg)) = self.queue.pop().await?;
        Some((peer, p, msg))
    }

    pub fn try_recv(&mut self) -> Option<Incoming> {
        let (p, (peer, msg)) = self.queue.try_pop()?;
        Some((peer, p, msg))
    }

    /// Messages waiting to be read.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // Nobody reads any more: deliveries fail fast and are counted in
        // `PoolStats::undeliverable` instead of waiting for room forever.
        self.queue.close();
    }
}

/// Handle to a running pool. Cheap to clone; the pool stops when
/// [`shutdown`](Pool::shutdown) is called or the last handle is dropped.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("local", &ShortId(&self.local_id()))
            .field("addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Binds, starts accepting, and starts dialing the peers with a greater
    /// key. Must run inside a tokio runtime.
    pub async fn start(cfg: PoolConfig) -> Result<(Pool, Inbox), PoolError> {
        if cfg.max_message_len == 0 || cfg.max_message_len + wire::DATA_OVERHEAD > MAX_FRAME_LEN {
            return Err(PoolError::Config(
                "max_message_len must be in 1..=MAX_FRAME_LEN - DATA_OVERHEAD",
            ));
        }
        if cfg.batch_window > MAX_BATCH_WINDOW {
            return Err(PoolError::Config("batch_window must be at most 1 ms"));
        }
        if cfg.ping_interval.is_zero() || cfg.ping_timeout < cfg.ping_interval {
            return Err(PoolError::Config(
                "ping_interval must be non-zero and at most ping_timeout",
            ));
        }
        let identity = Identity::from_secret(&cfg.local_secret);
        let me = identity.peer_id();
        let mut links = HashMap::new();
        for (&id, &addr) in &cfg.peers {
            if id == me {
                continue;
            }
            if !identity::is_usable_peer_key(&id) {
                return Err(PoolError::InvalidPeerKey { peer: id });
            }
            let outbox = match cfg.transport {
                Transport::Quic => Outbox::per_class(&cfg.queue_limits),
                Transport::Tcp => Outbox::shared(&cfg.queue_limits),
            };
            links.insert(id, Arc::new(PeerLink::new(id, addr, outbox)));
        }
        let peer_set: Arc<HashSet<PeerId>> = Arc::new(links.keys().copied().collect());
        let tun = Tunables::from(&cfg);
        let (net, local_addr, listener) = match cfg.transport {
            Transport::Quic => {
                let q = quic::QuicNet::bind(cfg.listen, &identity, peer_set.clone(), &tun)?;
                let addr = q.endpoint.local_addr()?;
                (Net::Quic(q), addr, None)
            }
            Transport::Tcp => {
                let tls = handshake::TcpTls::new(&identity, peer_set.clone())?;
                let l = TcpListener::bind(cfg.listen).await?;
                let addr = l.local_addr()?;
                (Net::Tcp(Arc::new(tls)), addr, Some(l))
            }
        };
        let inbound = PeerQueue::new(cfg.inbox_limits.clone());
        let inbox = Inbox {
            queue: inbound.clone(),
        };
        let shared = Arc::new(Shared {
            identity,
            epoch: rand::random(),
            tun,
            links,
            peer_set,
            inbound,
            pacing: cfg.intake_pacing.clone(),
            counters: PoolCounters::default(),
            net,
            local_addr,
            closing: AtomicBool::new(false),
        });

        let mut tasks = Vec::new();
        match (&shared.net, listener) {
            (Net::Quic(q), _) => tasks.push(tokio::spawn(quic::accept_loop(
                shared.clone(),
                q.endpoint.clone(),
            ))),
            (Net::Tcp(tls), Some(l)) => tasks.push(tokio::spawn(tcp::accept_loop(
                shared.clone(),
                tls.clone(),
                l,
            ))),
            (Net::Tcp(_), None) => unreachable!("TCP pools always bind a listener"),
        }
        for link in shared.links.values() {
            if link.id > me {
                tasks.push(tokio::spawn(dial_loop(shared.clone(), link.clone())));
            }
        }
        tracing::debug!(local = %ShortId(&me), addr = %local_addr, peers = shared.links.len(), "pool started");
        let pool = Pool {
            inner: Arc::new(Inner {
                shared,
                tasks: Mutex::new(tasks),
            }),
        };
        Ok((pool, inbox))
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    pub fn local_id(&self) -> PeerId {
        self.shared().identity.peer_id()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.shared().local_addr
    }

    fn link(&self, peer: &PeerId) -> Result<&Arc<PeerLink>, SendError> {
        self.shared()
            .links
            .get(peer)
            .ok_or(SendError::UnknownPeer { peer: *peer })
    }

    fn check(&self, msg: &Bytes) -> Result<(), SendError> {
        if self.shared().is_closing() {
            return Err(SendError::Shutdown);
        }
        if msg.is_empty() {
            return Err(SendError::Empty);
        }
        let cap = self.shared().tun.max_message_len;
        if msg.len() > cap {
            return Err(SendError::TooLarge {
                len: msg.len(),
                cap,
            });
        }
        Ok(())
    }

    fn push_error(peer: PeerId, e: PushError<Bytes>) -> SendError {
        match e {
            PushError::Full {
                priority, capacity, ..
            } => SendError::QueueFull {
                peer,
                priority,
                capacity,
            },
            _ => SendError::Shutdown,
        }
    }

    /// Queues `msg` for `peer` without waiting. Works while the peer is
    /// disconnected (the message waits in the queue for the next connection).
    pub fn send(&self, peer: &PeerId, priority: Priority, msg: Bytes) -> Result<(), SendError> {
        let link = self.link(peer)?;
        self.check(&msg)?;
        link.outbox
            .try_push(priority, msg)
            .map_err(|e| Self::push_error(*peer, e))
    }

    /// Like [`send`](Self::send), but waits for room in a full class instead
    /// of refusing (backpressure for bulk producers).
    pub async fn send_wait(
        &self,
        peer: &PeerId,
        priority: Priority,
        msg: Bytes,
    ) -> Result<(), SendError> {
        let link = self.link(peer)?;
        self.check(&msg)?;
        link.outbox
            .push(priority, msg)
            .await
            .map_err(|e| Self::push_error(*peer, e))
    }

    /// Queues `msg` for every peer.
    pub fn broadcast(&self, priority: Priority, msg: Bytes) -> BroadcastReport {
        let mut report = BroadcastReport::default();
        for peer in self.shared().links.keys() {
            match self.send(peer, priority, msg.clone()) {
                Ok(()) => report.queued += 1,
                Err(e) => report.refused.push((*peer, e)),
            }
        }
        report
    }

    pub fn stats(&self, peer: &PeerId) -> Option<PeerStats> {
        self.shared().links.get(peer).map(|l| l.snapshot())
    }

    pub fn pool_stats(&self) -> PoolStats {
        self.shared().counters.snapshot()
    }

    /// Peers with a live, authenticated connection right now.
    pub fn connected_peers(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self
            .shared()
            .links
            .values()
            .filter(|l| l.stats.connected.load(Ordering::Relaxed))
            .map(|l| l.id)
            .collect();
        v.sort();
        v
    }

    /// Test hook: closes the connection to `peer` abruptly (QUIC: immediate
    /// close; TCP: reset), as a crash or a network cut would, and returns once
    /// it has stopped (messages sent after that wait for the next connection).
    /// Returns whether there was a connection.
    pub async fn kill_connection(&self, peer: &PeerId) -> bool {
        match self.shared().links.get(peer) {
            Some(link) => link.kill().await,
            None => false,
        }
    }

    /// Stops accepting and dialing, writes what is queued (bounded by
    /// [`PoolConfig::shutdown_timeout`]), closes every connection and reports
    /// what could not be sent. Later calls do nothing.
    pub async fn shutdown(&self) -> ShutdownReport {
        let shared = &self.inner.shared;
        if shared.closing.swap(true, Ordering::AcqRel) {
            return ShutdownReport::default();
        }
        let tasks: Vec<JoinHandle<()>> = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        for link in shared.links.values() {
            link.outbox.close();
        }
        let mut winding = tokio::task::JoinSet::new();
        for link in shared.links.values() {
            let (link, timeout) = (link.clone(), shared.tun.shutdown_timeout);
            winding.spawn(async move { link.wind_down(timeout).await });
        }
        while winding.join_next().await.is_some() {}
        if let Net::Quic(q) = &shared.net {
            q.endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
            let _ = tokio::time::timeout(shared.tun.shutdown_timeout, q.endpoint.wait_idle()).await;
        }
        shared.inbound.close();
        let unsent = shared
            .links
            .values()
            .filter(|l| l.outbox.len() > 0)
            .map(|l| (l.id, l.outbox.len()))
            .collect();
        ShutdownReport { unsent }
    }
}

/// Keeps the connection to one peer we dial up, for the life of the pool.
async fn dial_loop(shared: Arc<Shared>, link: Arc<PeerLink>) {
    let mut backoff = backoff::Backoff::new(shared.tun.backoff);
    let mut rng = rand::rngs::StdRng::from_entropy();
    loop {
        if shared.is_closing() {
            return;
        }
        let attempt: Result<Finished, DialError> = match &shared.net {
            Net::Quic(q) => quic::dial(&shared, q, &link).await,
            Net::Tcp(tls) => tcp::dial(&shared, tls, &link).await,
        };
        match attempt {
            Ok(finished) => {
                let (lived, was_up) = finished.wait().await;
                if was_up {
                    backoff.connection_ended(lived);
                } else {
                    // Refused by the peer after our side of the handshake.
                    LinkStats::add(&link.stats.dial_failures, 1);
                    LinkStats::add(&shared.counters.handshake_failures, 1);
                }
            }
            Err(e) => {
                tracing::debug!(peer = %ShortId(&link.id), "dial failed: {e}");
                LinkStats::add(&link.stats.dial_failures, 1);
                if e.is_handshake_failure() {
                    LinkStats::add(&shared.counters.handshake_failures, 1);
                }
            }
        }
        tokio::time::sleep(backoff.next_delay(&mut rng)).await;
    }
}

#[cfg(test)]
mod tests;
