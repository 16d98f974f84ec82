//! The QUIC transport of the pool (quinn + rustls, TLS 1.3 with mutual
//! certificates bound to masternode keys, see [`super::tls`]).
//!
//! Stream layout of one connection, per direction: five unidirectional
//! streams opened once when the connection starts and kept for its life. Each
//! begins with a [`StreamHello`] frame:
//!
//! | stream   | carries                      | quinn priority |
//! |----------|------------------------------|----------------|
//! | control  | pings and pongs              | 10             |
//! | Critical | data frames of that class    | 3              |
//! | High     |                              | 2              |
//! | Normal   |                              | 1              |
//! | Low      |                              | 0              |
//!
//! Each class stream has its own writer task draining its own queue, so a
//! 2 MiB block being written on the Normal stream (or waiting for flow
//! control) never holds back a vote on the High stream, and quinn sends the
//! higher-priority stream's bytes first. Under a flood of a higher class,
//! quinn serves lower classes only when higher ones are idle: QUIC stream
//! priority is strict (the TCP transport adds starvation protection instead).

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

use crate::frame::{FrameReader, FrameWriter};
use crate::priority::Priority;

use super::identity::{Credentials, PeerId};
use super::link::{self, BatchWriter, ConnError, Finished, PeerLink, Probe};
use super::stats::LinkStats;
use super::tls;
use super::wire::{self, Frame, StreamHello, StreamKind};
use super::{DialError, PoolError, Shared};

/// Application close codes (`docs/PROTOCOL.md`, Peer pool).
pub const CLOSE_SHUTDOWN: u32 = 0;
pub const CLOSE_ERROR: u32 = 1;
pub const CLOSE_KILLED: u32 = 2;
/// The dialer's key is not smaller than ours: it must not dial us.
pub const CLOSE_DIRECTION: u32 = 3;

const CONTROL_PRIORITY: i32 = 10;

fn class_priority(p: Priority) -> i32 {
    (Priority::COUNT - 1 - p.index()) as i32
}

pub(crate) struct QuicNet {
    pub endpoint: Endpoint,
    creds: Credentials,
    transport: Arc<quinn::TransportConfig>,
}

fn transport_config(shared_tun: &super::Tunables) -> Result<quinn::TransportConfig, PoolError> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_uni_streams(VarInt::from_u32(5));
    t.max_concurrent_bidi_streams(VarInt::from_u32(0));
    // No QUIC keep-alive: the pool's own ping (`link::pinger`, every
    // `ping_interval` on every transport) is ack-eliciting and keeps the
    // connection from idling out, so QUIC's PING frames only doubled an
    // idle link's packets (and their ACKs and timer wake-ups).
    t.keep_alive_interval(None);
    let idle = quinn::IdleTimeout::try_from(shared_tun.ping_timeout * 2)
        .map_err(|_| PoolError::Config("ping_timeout too large for a QUIC idle timeout"))?;
    t.max_idle_timeout(Some(idle));
    Ok(t)
}

impl QuicNet {
    pub(crate) fn bind(
        listen: std::net::SocketAddr,
        identity: &super::identity::Identity,
        peers: Arc<std::collections::HashSet<PeerId>>,
        tun: &super::Tunables,
    ) -> Result<Self, PoolError> {
        let (cert, key) = identity.tls_credentials()?;
        let transport = Arc::new(transport_config(tun)?);
        let server_tls = tls::server_config(cert, key, peers)?;
        let crypto = QuicServerConfig::try_from(server_tls)
            .map_err(|_| PoolError::Config("TLS suite unusable for QUIC"))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(transport.clone());
        let mut endpoint_cfg = quinn::EndpointConfig::new(Arc::new(identity.stateless_reset_key()));
        // Connection IDs carry a keyed hash the endpoint checks before it
        // answers a packet for a connection it does not know with a
        // stateless reset. With quinn's default (a random key per process)
        // a restarted masternode dropped its peers' packets as "invalid
        // CID" instead of resetting their dead connections, so they noticed
        // only by their ping timeout (5 s) and the restarted node, which
        // does not dial peers with a lower key, waited that long for them.
        // Keyed from the identity, like the reset key, a restart answers at
        // once and the peer redials.
        let cid_key = identity.connection_id_key();
        endpoint_cfg.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let socket = std::net::UdpSocket::bind(listen)?;
        let endpoint = Endpoint::new(
            endpoint_cfg,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        Ok(QuicNet {
            endpoint,
            creds: identity.credentials()?,
            transport,
        })
    }

    fn client_config(&self, expected: PeerId) -> Result<quinn::ClientConfig, DialError> {
        client_config(&self.creds, expected, self.transport.clone())
    }
}

fn client_config(
    creds: &Credentials,
    expected: PeerId,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, DialError> {
    let tls = tls::client_config(creds, expected).map_err(DialError::Tls)?;
    let crypto = QuicClientConfig::try_from(tls).map_err(|_| DialError::Config)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport);
    Ok(cfg)
}

/// A hand-made QUIC pool peer for tests and diagnostics: one connection to
/// the pool at `addr`, presenting `creds` (honest, [`Credentials::of`], or
/// forged, [`Credentials::claiming`]) and requiring `expected`'s key, with
/// the pool's own TLS configuration and verifier. It opens no streams; see
/// [`QuicPeer`] for what it can observe.
pub async fn dial_as(
    creds: &Credentials,
    addr: std::net::SocketAddr,
    expected: PeerId,
) -> Result<QuicPeer, DialError> {
    let tun = super::PoolConfig::new(super::Transport::Quic, addr, [0; 32], Default::default());
    let transport =
        Arc::new(transport_config(&super::Tunables::from(&tun)).map_err(|_| DialError::Config)?);
    let cfg = client_config(creds, expected, transport)?;
    let local: std::net::SocketAddr = match addr.ip() {
        ip if ip.is_loopback() => (ip, 0).into(),
        std::net::IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        std::net::IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let endpoint = Endpoint::client(local).map_err(DialError::Io)?;
    let connecting = endpoint
        .connect_with(cfg, addr, tls::SERVER_NAME)
        .map_err(DialError::QuicConnect)?;
    let conn = match tokio::time::timeout(tun.connect_timeout, connecting).await {
        Err(_) => return Err(DialError::Timeout),
        Ok(Err(e)) => return Err(DialError::QuicHandshake(e)),
        Ok(Ok(c)) => c,
    };
    if peer_of(&conn) != Some(expected) {
        conn.close(VarInt::from_u32(CLOSE_ERROR), b"identity");
        return Err(DialError::Config);
    }
    Ok(QuicPeer {
        conn,
        _endpoint: endpoint,
    })
}

/// A connection made by [`dial_as`]: our side of the TLS handshake
/// completed. Whether the acceptor accepted us shows in what it does next:
/// it opens its streams ([`QuicPeer::first_stream`]) or closes with a code
/// ([`QuicPeer::closed`]).
pub struct QuicPeer {
    conn: Connection,
    _endpoint: Endpoint,
}

impl QuicPeer {
    /// The `StreamHello` of the first stream the acceptor opens, `None` if it
    /// closes the connection first (it opens streams only once it accepted
    /// us: certificate, signature and dial direction).
    pub async fn first_stream(&self) -> Option<StreamHello> {
        let s = self.conn.accept_uni().await.ok()?;
        let mut r = FrameReader::new(s, StreamHello::LEN);
        StreamHello::decode(r.read_frame().await.ok()?).ok()
    }

    /// Waits until the connection ends; the application close code the
    /// acceptor sent, `None` if it ended otherwise (a TLS alert, a timeout).
    pub async fn closed(&self) -> Option<u32> {
        match self.conn.closed().await {
            quinn::ConnectionError::ApplicationClosed(c) => {
                u32::try_from(c.error_code.into_inner()).ok()
            }
            _ => None,
        }
    }

    /// Closes the connection (code [`CLOSE_SHUTDOWN`]).
    pub fn close(&self) {
        self.conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"");
    }
}

/// Dials `link`'s peer, proves both keys, and installs the connection.
pub(crate) async fn dial(
    shared: &Arc<Shared>,
    net: &QuicNet,
    link: &Arc<PeerLink>,
) -> Result<Finished, DialError> {
    let cfg = net.client_config(link.id)?;
    let connecting = net
        .endpoint
        .connect_with(cfg, link.addr, tls::SERVER_NAME)
        .map_err(DialError::QuicConnect)?;
    let conn = match tokio::time::timeout(shared.tun.connect_timeout, connecting).await {
        Err(_) => return Err(DialError::Timeout),
        Ok(Err(quinn::ConnectionError::TimedOut)) => return Err(DialError::Timeout),
        Ok(Err(e)) => return Err(DialError::QuicHandshake(e)),
        Ok(Ok(c)) => c,
    };
    // The verifier already required this key; checked again so a mistake
    // there cannot attach the connection to the wrong link.
    if peer_of(&conn) != Some(link.id) {
        conn.close(VarInt::from_u32(CLOSE_ERROR), b"identity");
        return Err(DialError::Config);
    }
    Ok(install(shared, link, conn).await)
}

async fn install(shared: &Arc<Shared>, link: &Arc<PeerLink>, conn: Connection) -> Finished {
    let (s, l) = (shared.clone(), link.clone());
    link.install(move |kill| run(s, l, conn, kill)).await
}

/// The masternode key the peer's certificate is bound to.
fn peer_of(conn: &Connection) -> Option<PeerId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    match certs.as_slice() {
        [cert] => tls::cert_peer_id(cert).ok(),
        _ => None,
    }
}

/// Inbound connections allowed in the handshake at once.
const MAX_PENDING_HANDSHAKES: usize = 64;

/// Accepts inbound connections until the endpoint closes.
pub(crate) async fn accept_loop(shared: Arc<Shared>, endpoint: Endpoint) {
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    while let Some(incoming) = endpoint.accept().await {
        if shared.is_closing() {
            incoming.refuse();
            continue;
        }
        if !incoming.remote_address_validated() {
            // Address validation first (a Retry: one round trip that proves
            // the dialer receives at its source address), so spoofed
            // sources cost no handshake slot and no crypto. A dialer
            // answers the Retry with its token and comes back validated.
            if incoming.may_retry() {
                if let Err(e) = incoming.retry() {
                    e.into_incoming().ignore();
                }
            } else {
                incoming.ignore();
            }
            continue;
        }
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            // Too many handshakes in progress: refuse this one, counted.
            LinkStats::add(&shared.counters.handshake_failures, 1);
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let conn = match tokio::time::timeout(shared.tun.connect_timeout, incoming).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    tracing::debug!("inbound QUIC handshake failed: {e}");
                    LinkStats::add(&shared.counters.handshake_failures, 1);
                    return;
                }
                Err(_) => {
                    LinkStats::add(&shared.counters.handshake_failures, 1);
                    return;
                }
            };
            let Some(peer) = peer_of(&conn) else {
                LinkStats::add(&shared.counters.handshake_failures, 1);
                conn.close(VarInt::from_u32(CLOSE_ERROR), b"identity");
                return;
            };
            let Some(link) = shared.inbound_link(&peer) else {
                conn.close(VarInt::from_u32(CLOSE_DIRECTION), b"dial direction");
                return;
            };
            if shared.is_closing() {
                conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
                return;
            }
            drop(permit);
            // The dialer waits for the connection's end itself; here nothing does.
            drop(install(&shared, &link, conn).await);
        });
    }
}

/// Runs one connection until it fails, is killed, or the pool shuts down.
async fn run(
    shared: Arc<Shared>,
    link: Arc<PeerLink>,
    conn: Connection,
    kill: Arc<Notify>,
) -> Result<(), ConnError> {
    let mut writers = JoinSet::new();
    let mut others = JoinSet::new();
    let result = drive(&shared, &link, &conn, &kill, &mut writers, &mut others).await;
    let code = match &result {
        Ok(()) => CLOSE_SHUTDOWN,
        Err(ConnError::Killed) => CLOSE_KILLED,
        Err(_) => CLOSE_ERROR,
    };
    conn.close(VarInt::from_u32(code), b"");
    // Wait until every task has stopped before the link may start another
    // connection (no delivery from this one after that).
    writers.shutdown().await;
    others.shutdown().await;
    result
}

async fn drive(
    shared: &Arc<Shared>,
    link: &Arc<PeerLink>,
    conn: &Connection,
    kill: &Notify,
    writers: &mut JoinSet<Result<(), ConnError>>,
    others: &mut JoinSet<Result<(), ConnError>>,
) -> Result<(), ConnError> {
    let probe = Arc::new(Probe::default());
    let (ctrl_tx, ctrl_rx) = mpsc::channel(64);
    let stop_control = Arc::new(Notify::new());

    let control = conn.open_uni().await?;
    control.set_priority(CONTROL_PRIORITY)?;
    others.spawn(control_writer(
        control,
        ctrl_rx,
        stop_control.clone(),
        link.clone(),
        shared.clone(),
    ));
    for p in Priority::ALL {
        let stream = conn.open_uni().await?;
        stream.set_priority(class_priority(p))?;
        writers.spawn(class_writer(stream, p, link.clone(), shared.clone()));
    }
    others.spawn(accept_streams(
        conn.clone(),
        link.clone(),
        shared.clone(),
        probe.clone(),
        ctrl_tx.clone(),
    ));
    others.spawn(link::pinger(link.clone(), shared.clone(), probe, ctrl_tx));

    let mut writers_done = 0;
    loop {
        tokio::select! {
            _ = kill.notified() => return Err(ConnError::Killed),
            Some(r) = writers.join_next() => {
                r.map_err(|_| ConnError::Panicked)??;
                writers_done += 1;
                if writers_done == Priority::COUNT {
                    break;
                }
            }
            Some(r) = others.join_next() => {
                r.map_err(|_| ConnError::Panicked)??;
                // Every stream the peer opened ended cleanly.
                return Err(ConnError::PeerClosed);
            }
        }
    }
    // Shutdown: our queues are closed and drained and each class stream is
    // finished and acknowledged. Finish the control stream too; the peer then
    // sees all five streams end and closes, which tells us it read them.
    stop_control.notify_one();
    let _ = tokio::time::timeout(shared.tun.shutdown_timeout, conn.closed()).await;
    Ok(())
}

async fn class_writer(
    mut stream: SendStream,
    p: Priority,
    link: Arc<PeerLink>,
    shared: Arc<Shared>,
) -> Result<(), ConnError> {
    let hello = StreamHello {
        kind: StreamKind::Class(p),
        epoch: shared.epoch,
    };
    {
        let queue = link.outbox.queue(p);
        let mut w = BatchWriter::new(FrameWriter::new(&mut stream), link.clone(), shared.clone());
        w.push_control(&hello.encode())?;
        w.flush().await?;
        while let Some((class, msg)) = queue.pop().await {
            w.push_data(class, &msg)?;
            w.fill_from(queue).await?;
            w.flush().await?;
        }
    }
    stream.finish()?;
    let _ = tokio::time::timeout(shared.tun.shutdown_timeout, stream.stopped()).await;
    Ok(())
}

async fn control_writer(
    mut stream: SendStream,
    mut rx: mpsc::Receiver<[u8; 9]>,
    stop: Arc<Notify>,
    link: Arc<PeerLink>,
    shared: Arc<Shared>,
) -> Result<(), ConnError> {
    let hello = StreamHello {
        kind: StreamKind::Control,
        epoch: shared.epoch,
    };
    {
        let mut w = BatchWriter::new(FrameWriter::new(&mut stream), link, shared);
        w.push_control(&hello.encode())?;
        w.flush().await?;
        loop {
            tokio::select! {
                f = rx.recv() => {
                    let Some(f) = f else { break };
                    w.push_control(&f)?;
                    while let Ok(f) = rx.try_recv() {
                        w.push_control(&f)?;
                    }
                    w.flush().await?;
                }
                _ = stop.notified() => break,
            }
        }
    }
    stream.finish()?;
    Ok(())
}

/// Accepts the peer's five streams and runs a reader on each. Ends with the
/// first reader error, or `Ok` once all five ended cleanly.
async fn accept_streams(
    conn: Connection,
    link: Arc<PeerLink>,
    shared: Arc<Shared>,
    probe: Arc<Probe>,
    ctrl_tx: mpsc::Sender<[u8; 9]>,
) -> Result<(), ConnError> {
    let mut readers = JoinSet::new();
    let result = async {
        let mut seen = [false; Priority::COUNT + 1];
        let mut opened = 0;
        let mut ended = 0;
        loop {
            tokio::select! {
                s = conn.accept_uni(), if opened < seen.len() => {
                    let mut r = FrameReader::new(s?, StreamHello::LEN);
                    let hello = tokio::time::timeout(shared.tun.connect_timeout, r.read_frame())
                        .await
                        .map_err(|_| ConnError::Protocol("stream without a hello"))??;
                    let hello = StreamHello::decode(hello)?;
                    if std::mem::replace(&mut seen[hello.kind.slot()], true) {
                        return Err(ConnError::Protocol("stream kind opened twice"));
                    }
                    opened += 1;
                    // The peer opens its streams only once it has accepted us.
                    link.mark_up();
                    r.set_cap(shared.frame_cap());
                    match hello.kind {
                        StreamKind::Control => readers.spawn(control_reader(
                            r, link.clone(), probe.clone(), ctrl_tx.clone(),
                        )),
                        StreamKind::Class(p) => readers.spawn(class_reader(
                            r, p, hello.epoch, link.clone(), shared.clone(),
                        )),
                    };
                }
                Some(res) = readers.join_next() => {
                    res.map_err(|_| ConnError::Panicked)??;
                    ended += 1;
                    if ended == seen.len() {
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;
    readers.shutdown().await;
    result
}

async fn class_reader(
    mut r: FrameReader<RecvStream>,
    p: Priority,
    peer_epoch: u64,
    link: Arc<PeerLink>,
    shared: Arc<Shared>,
) -> Result<(), ConnError> {
    while let Some(f) = link::read_frame(&mut r).await? {
        let len = f.len();
        let frame = wire::decode_frame(f)?;
        match frame {
            Frame::Data { priority, .. } if priority == p => {
                link::deliver(&link, &shared, peer_epoch, len, frame).await?
            }
            _ => return Err(ConnError::Protocol("wrong frame on a class stream")),
        }
    }
    Ok(())
}

async fn control_reader(
    mut r: FrameReader<RecvStream>,
    link: Arc<PeerLink>,
    probe: Arc<Probe>,
    ctrl_tx: mpsc::Sender<[u8; 9]>,
) -> Result<(), ConnError> {
    while let Some(f) = link::read_frame(&mut r).await? {
        let frame = wire::decode_frame(f)?;
        link::on_control(&link, &probe, &ctrl_tx, frame).await?;
    }
    Ok(())
}
