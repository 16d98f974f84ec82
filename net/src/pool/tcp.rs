//! The TCP fallback of the pool: one persistent TCP connection per peer,
//! carried in TLS 1.3 with mutual certificates bound to the masternode keys
//! ([`super::handshake`]): authenticated, confidential and integrity-checked
//! end to end.
//!
//! All four classes share the one byte stream, so head-of-line blocking is
//! unavoidable once a frame is on the wire; what the sender controls is what
//! goes next. A single writer takes pongs and pings first, then pops the
//! peer's [`PeerQueue`](crate::priority::PeerQueue): strict priority with
//! starvation protection, batched into one write while more is queued.

use std::sync::Arc;

use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinSet;

use crate::frame::{FrameReader, FrameWriter};
use crate::priority::Priority;

use super::handshake::{self, HandshakeError, PoolStream, TcpTls};
use super::link::{self, BatchWriter, ConnError, Finished, PeerLink, Probe};
use super::stats::LinkStats;
use super::wire::{self, Frame};
use super::{DialError, Shared};

/// Inbound connections allowed in the handshake at once.
const MAX_PENDING_HANDSHAKES: usize = 64;

/// An authenticated TCP connection, ready to run.
pub(crate) struct Established {
    reader: FrameReader<ReadHalf<PoolStream>>,
    writer: WriteHalf<PoolStream>,
    peer_epoch: u64,
}

impl Established {
    fn new(shared: &Shared, stream: PoolStream, peer_epoch: u64) -> Self {
        let (rh, wh) = tokio::io::split(stream);
        Established {
            reader: FrameReader::new(rh, shared.frame_cap()),
            writer: wh,
            peer_epoch,
        }
    }
}

/// Unsent bytes the kernel may hold for one connection. Above it the writer
/// waits, so the choice of what goes next stays with the priority queue
/// instead of a deep kernel buffer of Low frames ahead of a vote.
const NOTSENT_LOWAT: libc::c_int = 64 * 1024;

fn prepare(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(stream);
    // SAFETY: `fd` is an open socket owned by `stream` for this call; the
    // option value is a c_int that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&NOTSENT_LOWAT as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Closing without a graceful shutdown resets the connection at once (the
    // peer notices immediately instead of after a timeout).
    stream.set_zero_linger()
}

/// Bounds a handshake step by the connect timeout.
async fn bounded<T>(
    shared: &Shared,
    step: impl std::future::Future<Output = Result<T, HandshakeError>>,
) -> Result<T, DialError> {
    tokio::time::timeout(shared.tun.connect_timeout, step)
        .await
        .map_err(|_| DialError::Handshake(HandshakeError::Timeout))?
        .map_err(DialError::Handshake)
}

pub(crate) async fn dial(
    shared: &Arc<Shared>,
    tls: &TcpTls,
    link: &Arc<PeerLink>,
) -> Result<Finished, DialError> {
    let stream = tokio::time::timeout(shared.tun.connect_timeout, TcpStream::connect(link.addr))
        .await
        .map_err(|_| DialError::Timeout)?
        .map_err(DialError::Io)?;
    prepare(&stream).map_err(DialError::Io)?;
    let (auth, stream) =
        bounded(shared, handshake::dial(tls, stream, shared.epoch, link.id)).await?;
    let est = Established::new(shared, stream, auth.peer_epoch);
    Ok(install(shared, link, est).await)
}

/// The acceptor's side: TLS (a key in the table), the dial direction, then
/// the exchange inside TLS.
async fn accept_one(
    shared: &Arc<Shared>,
    tls: &TcpTls,
    stream: TcpStream,
) -> Result<Option<(Arc<PeerLink>, Established)>, DialError> {
    prepare(&stream).map_err(DialError::Io)?;
    let deadline = tokio::time::Instant::now() + shared.tun.connect_timeout;
    let (peer, mut stream) =
        bounded(shared, handshake::accept_tls(tls, stream, &shared.peer_set)).await?;
    let Some(link) = shared.inbound_link(&peer) else {
        return Ok(None);
    };
    let peer_epoch =
        tokio::time::timeout_at(deadline, handshake::exchange(&mut stream, shared.epoch))
            .await
            .map_err(|_| DialError::Handshake(HandshakeError::Timeout))?
            .map_err(DialError::Handshake)?;
    Ok(Some((link, Established::new(shared, stream, peer_epoch))))
}

async fn install(shared: &Arc<Shared>, link: &Arc<PeerLink>, est: Established) -> Finished {
    let (s, l) = (shared.clone(), link.clone());
    link.install(move |kill| run(s, l, est, kill)).await
}

pub(crate) async fn accept_loop(shared: Arc<Shared>, tls: Arc<TcpTls>, listener: TcpListener) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!("tcp accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.is_closing() {
            continue;
        }
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            // Too many half-open handshakes: refuse this one, counted.
            LinkStats::add(&shared.counters.handshake_failures, 1);
            continue;
        };
        let (shared, tls) = (shared.clone(), tls.clone());
        tokio::spawn(async move {
            let (link, est) = match accept_one(&shared, &tls, stream).await {
                Ok(Some(x)) => x,
                // Dial direction refused (counted).
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!("inbound TCP handshake failed: {e}");
                    LinkStats::add(&shared.counters.handshake_failures, 1);
                    return;
                }
            };
            if shared.is_closing() {
                return;
            }
            drop(permit);
            // Only a connection that completed the whole handshake replaces
            // the link's current one.
            drop(install(&shared, &link, est).await);
        });
    }
}

async fn run(
    shared: Arc<Shared>,
    link: Arc<PeerLink>,
    est: Established,
    kill: Arc<Notify>,
) -> Result<(), ConnError> {
    // Both sides confirmed the handshake.
    link.mark_up();
    let mut tasks = JoinSet::new();
    let probe = Arc::new(Probe::default());
    let (ctrl_tx, ctrl_rx) = mpsc::channel(64);
    let writer = tasks.spawn(writer(est.writer, ctrl_rx, link.clone(), shared.clone()));
    let reader = tasks.spawn(reader(
        est.reader,
        est.peer_epoch,
        link.clone(),
        shared.clone(),
        probe.clone(),
        ctrl_tx.clone(),
    ));
    tasks.spawn(link::pinger(link.clone(), shared.clone(), probe, ctrl_tx));
    let (writer, reader) = (writer.id(), reader.id());

    let result = tokio::select! {
        _ = kill.notified() => Err(ConnError::Killed),
        Some(r) = tasks.join_next_with_id() => match r {
            Err(_) => Err(ConnError::Panicked),
            Ok((_, Err(e))) => Err(e),
            Ok((id, Ok(()))) if id == writer => {
                // Shutdown: queue drained and our side of the stream closed;
                // wait for the peer to close its side, so nothing it sent us
                // is cut off.
                let wait = async {
                    while let Some(Ok((id, _))) = tasks.join_next_with_id().await {
                        if id == reader {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(shared.tun.shutdown_timeout, wait).await;
                Ok(())
            }
            // The reader saw the peer close (or the pinger stopped).
            Ok((_, Ok(()))) => Err(ConnError::PeerClosed),
        },
    };
    // Dropping the halves with zero linger resets the connection.
    tasks.shutdown().await;
    result
}

async fn writer(
    mut wh: WriteHalf<PoolStream>,
    mut control: mpsc::Receiver<[u8; 9]>,
    link: Arc<PeerLink>,
    shared: Arc<Shared>,
) -> Result<(), ConnError> {
    let queue = link.outbox.queue(Priority::Critical);
    {
        let mut w = BatchWriter::new(FrameWriter::new(&mut wh), link.clone(), shared.clone());
        loop {
            tokio::select! {
                biased;
                c = control.recv() => match c {
                    Some(f) => w.push_control(&f)?,
                    None => return Ok(()),
                },
                m = queue.pop() => match m {
                    Some((p, msg)) => w.push_data(p, &msg)?,
                    // Closed and drained: the pool is shutting down.
                    None => break,
                },
            }
            while let Ok(f) = control.try_recv() {
                w.push_control(&f)?;
            }
            w.fill_from(queue).await?;
            w.flush().await?;
        }
        w.flush().await?;
    }
    wh.shutdown()
        .await
        .map_err(crate::frame::FrameError::from)?;
    Ok(())
}

async fn reader(
    mut r: FrameReader<ReadHalf<PoolStream>>,
    peer_epoch: u64,
    link: Arc<PeerLink>,
    shared: Arc<Shared>,
    probe: Arc<Probe>,
    control: mpsc::Sender<[u8; 9]>,
) -> Result<(), ConnError> {
    while let Some(f) = link::read_frame(&mut r).await? {
        let len = f.len();
        match wire::decode_frame(f)? {
            frame @ Frame::Data { .. } => {
                link::deliver(&link, &shared, peer_epoch, len, frame).await?
            }
            frame => link::on_control(&link, &probe, &control, frame).await?,
        }
    }
    Ok(())
}
