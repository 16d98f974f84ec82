//! The TCP listener on the P2P port: accepts connections ([`accept_loop`]),
//! runs the inbound side of the signed handshake and hands the connection to
//! its role's server ([`serve_connection`]): peer masternodes to
//! [`serve_peer`], wallets to [`serve_wallet`].
//!
//! Owns the listening socket and the handshake-failure accounting. It must
//! never serve traffic before the handshake passed, nor let a wallet in as a
//! masternode: a masternode must prove a registered key that is not ours.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use time_net::{FrameError, FrameReader, FrameWriter, MAX_FRAME_LEN};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::node::handshake::{check_hello, hello, Identity};
use crate::node::peer_glue::{serve_peer, PeerCtx};
use crate::node::wallet_server::{serve_wallet, WalletCtx};
use crate::node::wire::{LinkError, NetStats};
use crate::protocol::message::{
    sign_handshake, verify_handshake, Hello, Message, Role, HANDSHAKE_FRAME_CAP,
};

/// Largest frame a wallet may send after the handshake.
const WALLET_FRAME_CAP: usize = 2 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the listener and the connections it accepts need, handed over at
/// startup.
pub(super) struct ListenCtx {
    pub id: Arc<Identity>,
    pub stats: Arc<NetStats>,
    pub stopping: Arc<AtomicBool>,
    pub peers: Arc<PeerCtx>,
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
        LinkError::Handshake(_) | LinkError::Timeout => {
            stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
            warn!(%addr, "connection refused: {e}");
        }
        _ => {
            stats.malformed_frames.fetch_add(1, Ordering::Relaxed);
            warn!(%addr, "connection closed: {e}");
        }
    }
}

/// The inbound handshake, then the connection's role server.
async fn serve_connection(ctx: Arc<ListenCtx>, stream: TcpStream) -> Result<(), LinkError> {
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, HANDSHAKE_FRAME_CAP);
    let mut writer = FrameWriter::new(w);
    let their = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.read_frame())
        .await
        .map_err(|_| LinkError::Timeout)??;
    let their = match Message::decode(their)? {
        Message::Hello(h) => h,
        _ => return Err(LinkError::Handshake("expected hello")),
    };
    let id = &ctx.id;
    check_hello(id, &their)?;
    let nonce: [u8; 32] = rand::random();
    writer.push(&Message::Hello(hello(id, Role::Masternode, nonce)).to_bytes())?;
    writer
        .push(&Message::HelloAuth(sign_handshake(&id.key, id.chain_id, &their.nonce)).to_bytes())?;
    writer.flush().await?;
    match their.role {
        Role::Masternode => {
            masternode_proof(id, &their, &nonce, &mut reader).await?;
            reader.set_cap(MAX_FRAME_LEN);
            serve_peer(&ctx.peers, their.public_key, reader).await
        }
        Role::Wallet => {
            reader.set_cap(WALLET_FRAME_CAP);
            serve_wallet(ctx.wallets.clone(), reader, writer).await
        }
    }
}

/// A peer claiming the masternode role must be registered, not us, and sign
/// our `nonce` with its key.
async fn masternode_proof(
    id: &Identity,
    their: &Hello,
    nonce: &[u8; 32],
    reader: &mut FrameReader<OwnedReadHalf>,
) -> Result<(), LinkError> {
    if id.registry.get(&their.public_key).is_none() || their.public_key == id.me {
        return Err(LinkError::Handshake("not a registered peer masternode"));
    }
    let sig = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.read_frame())
        .await
        .map_err(|_| LinkError::Timeout)??;
    match Message::decode(sig)? {
        Message::HelloAuth(s) if verify_handshake(id.chain_id, nonce, &their.public_key, &s) => {
            Ok(())
        }
        _ => Err(LinkError::Handshake("masternode key proof does not verify")),
    }
}
