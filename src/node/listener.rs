//! The TCP listener on the P2P port, for wallets (and operator tools):
//! accepts connections ([`accept_loop`]), runs the inbound side of the signed
//! handshake ([`accept_side`](crate::node::handshake)) and hands the
//! connection to [`serve_wallet`] ([`serve_connection`]).
//!
//! Owns the listening socket and the handshake-failure accounting. It must
//! never serve traffic before the handshake passed, and never serve a
//! masternode: masternodes talk only over the peer pool (TLS 1.3), and a
//! masternode-role `Hello` is refused with `PEER_POOL_ONLY`. A refused
//! handshake gets an `Error` frame saying why before the connection closes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use time_net::{FrameError, FrameReader, FrameWriter};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::node::handshake::{accept_side, refuse, Identity};
use crate::node::wallet_server::{serve_wallet, WalletCtx};
use crate::node::wire::{LinkError, NetStats};
use crate::protocol::message::HANDSHAKE_FRAME_CAP;

/// Largest frame a wallet may send after the handshake.
const WALLET_FRAME_CAP: usize = 2 * 1024 * 1024;
/// Bound on the whole inbound handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the listener and the connections it accepts need, handed over at
/// startup.
pub(super) struct ListenCtx {
    pub id: Arc<Identity>,
    pub stats: Arc<NetStats>,
    pub stopping: Arc<AtomicBool>,
    pub wallets: Arc<WalletCtx>,
}

/// Accepts connections until the node stops; one task per connection.
pub(super) async fn accept_loop(ctx: Arc<ListenCtx>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let c = ctx.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_connection(c.clone(), stream).await {
                        count_close(&c.stats, addr, e);
                    }
                });
            }
            Err(e) => {
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if ctx.stopping.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// Logs and counts why an inbound connection ended.
fn count_close(stats: &NetStats, addr: SocketAddr, e: LinkError) {
    match e {
        LinkError::Frame(FrameError::Closed) => debug!(%addr, "closed"),
        LinkError::Refusing { .. } | LinkError::RefusedBy { .. } | LinkError::Timeout => {
            stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
            warn!(%addr, "connection refused: {e}");
        }
        _ => {
            stats.malformed_frames.fetch_add(1, Ordering::Relaxed);
            warn!(%addr, "connection closed: {e}");
        }
    }
}

/// The inbound handshake (bounded by [`HANDSHAKE_TIMEOUT`]; a refusal is
/// told to the dialer), then the wallet session.
async fn serve_connection(ctx: Arc<ListenCtx>, stream: TcpStream) -> Result<(), LinkError> {
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, HANDSHAKE_FRAME_CAP);
    let mut writer = FrameWriter::new(w);
    let hs = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        accept_side(&ctx.id, &mut reader, &mut writer),
    )
    .await
    .unwrap_or(Err(LinkError::Timeout));
    if let Err(e) = hs {
        refuse(&mut reader, &mut writer, &e).await;
        return Err(e);
    }
    reader.set_cap(WALLET_FRAME_CAP);
    serve_wallet(ctx.wallets.clone(), reader, writer).await
}
