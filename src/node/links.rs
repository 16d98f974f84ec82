//! The plain outbound peer links (`peer_transport = links`): one task per
//! peer masternode that dials it for ever with backoff ([`peer_link`]),
//! proves our key in the signed handshake ([`dial`], over the transcript of
//! both `Hello`s, after checking the peer's) and writes that peer's queue in
//! batches ([`write_queue`]).
//!
//! Owns the outbound sockets and [`LinksUp`], the set of peers whose link is
//! up (read by the core thread). It must never read protocol messages: a
//! peer never writes on a link after the handshake.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use time_net::{FrameReader, FrameWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::node::handshake::{dial_side, refuse, Identity};
use crate::node::wire::{encode, LinkError, NetStats};
use crate::protocol::message::{Message, HANDSHAKE_FRAME_CAP};
use crate::protocol::types::PublicKey;

/// Frames queued per peer link before new ones are dropped (and counted).
pub(super) const PEER_QUEUE: usize = 1 << 16;

/// Peers whose plain outbound link is up.
pub(super) type LinksUp = Arc<Mutex<HashSet<PublicKey>>>;

/// What every link task shares, handed over at startup.
pub(super) struct LinkCtx {
    pub id: Arc<Identity>,
    pub stats: Arc<NetStats>,
    pub stopping: Arc<AtomicBool>,
    pub up: LinksUp,
}

/// Dials one peer for ever (with backoff and jitter), authenticates, and
/// writes its queue.
pub(super) async fn peer_link(
    ctx: Arc<LinkCtx>,
    peer: PublicKey,
    address: String,
    mut rx: mpsc::Receiver<Bytes>,
) {
    let mut backoff = Duration::from_millis(50);
    let mut pending: Option<Bytes> = None;
    while !ctx.stopping.load(Ordering::Relaxed) {
        match dial(&ctx.id, &peer, &address).await {
            Ok(mut w) => {
                backoff = Duration::from_millis(50);
                ctx.stats.peers_connected.fetch_add(1, Ordering::Relaxed);
                ctx.up.lock().expect("links lock").insert(peer);
                info!(%peer, %address, "peer link up");
                let r = write_queue(&ctx.stats, &mut w, &mut rx, &mut pending).await;
                ctx.up.lock().expect("links lock").remove(&peer);
                ctx.stats.peers_connected.fetch_sub(1, Ordering::Relaxed);
                match r {
                    Ok(()) => return, // queue closed: node stopping
                    Err(e) => info!(%peer, "peer link down: {e}"),
                }
            }
            Err(e) => debug!(%peer, %address, "dial failed: {e}"),
        }
        let jitter =
            Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Connects to `peer` and runs our side of the signed handshake
/// ([`dial_side`]); a refusal of the peer's answer is told to it.
async fn dial(
    id: &Identity,
    peer: &PublicKey,
    address: &str,
) -> Result<FrameWriter<OwnedWriteHalf>, LinkError> {
    let stream = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(address))
        .await
        .map_err(|_| LinkError::Timeout)??;
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, HANDSHAKE_FRAME_CAP);
    let mut writer = FrameWriter::new(w);
    let hs = tokio::time::timeout(
        Duration::from_secs(5),
        dial_side(id, peer, &mut reader, &mut writer),
    )
    .await
    .unwrap_or(Err(LinkError::Timeout));
    if let Err(e) = hs {
        refuse(&mut reader, &mut writer, &e).await;
        return Err(e);
    }
    // The peer never writes on this connection after the handshake, except
    // an `Error` frame if it refused our proof; keep the read half alive so
    // the socket stays open, and notice a close.
    let peer = *peer;
    tokio::spawn(async move {
        let mut r = reader;
        if let Ok(f) = r.read_frame().await {
            if let Ok(Message::Error { code, detail }) = Message::decode(f) {
                let e = LinkError::RefusedBy { code, detail };
                info!(%peer, "peer refused our link: {e}");
            }
        }
    });
    Ok(writer)
}

/// Writes queued frames, batching what is queued into one write; a ping
/// when idle. A frame whose write failed stays in `pending` for the next
/// connection.
async fn write_queue<W: tokio::io::AsyncWrite + Unpin>(
    stats: &NetStats,
    w: &mut FrameWriter<W>,
    rx: &mut mpsc::Receiver<Bytes>,
    pending: &mut Option<Bytes>,
) -> Result<(), LinkError> {
    loop {
        let first = match pending.take() {
            Some(f) => f,
            None => match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                // Idle: a ping keeps the link checked.
                Err(_) => encode(&Message::Ping(0)),
            },
        };
        *pending = Some(first.clone());
        w.push(&first)?;
        let mut n = 1;
        // Batch whatever else is queued into the same write.
        while w.buffered() < 256 * 1024 {
            match rx.try_recv() {
                Ok(f) => {
                    w.push(&f)?;
                    n += 1;
                }
                Err(_) => break,
            }
        }
        w.flush().await?;
        *pending = None;
        stats.frames_out.fetch_add(n, Ordering::Relaxed);
    }
}
