//! Who this node is on the wire ([`Identity`]: chain and key) and the
//! listener's side of the signed node handshake (v2, `docs/PROTOCOL.md`,
//! [`accept_side`]), which wallets dial. Masternodes never use this
//! handshake with each other: they talk over the peer pool (TLS 1.3,
//! `time_net::pool`), and a masternode-role `Hello` here is refused.
//!
//! The listener signs only after it has seen the wallet's `Hello`, and what
//! it signs is the transcript of both `Hello`s
//! ([`crate::protocol::message::handshake_message`]): a proof made on one
//! connection verifies on no other, so it cannot be relayed or replayed. A
//! refused handshake is told to the other side with an `Error` frame
//! ([`refuse`]) before the connection closes.
//!
//! [`Identity`] is immutable after startup. This module must never hold
//! connections or counters.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use time_net::{FrameError, FrameReader, FrameWriter};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::node::wire::LinkError;
use crate::protocol::audience::Handshake;
use crate::protocol::message::{
    refusal, sign_handshake, Hello, Message, Role, Side, PROTOCOL_VERSION,
};
use crate::protocol::types::{ChainId, PublicKey};

/// This masternode's identity, as the handshakes prove and check it.
pub(super) struct Identity {
    pub chain_id: ChainId,
    pub key: SigningKey,
    pub me: PublicKey,
}

pub(super) fn hello(id: &Identity, role: Role, nonce: [u8; 32]) -> Hello {
    Hello {
        chain_id: id.chain_id,
        protocol_version: PROTOCOL_VERSION,
        role,
        public_key: id.me,
        nonce,
    }
}

/// A refusal we send: `code` from [`refusal`], `detail` for the other side.
pub(super) fn refusing(code: u16, detail: impl Into<String>) -> LinkError {
    LinkError::Refusing {
        code,
        detail: detail.into(),
    }
}

/// Chain id and protocol version of the dialer's `Hello`.
fn check_hello(id: &Identity, h: &Hello) -> Result<(), LinkError> {
    if h.chain_id != id.chain_id {
        return Err(refusing(
            refusal::WRONG_CHAIN,
            format!(
                "this masternode serves chain {}, you asked for {}",
                id.chain_id, h.chain_id
            ),
        ));
    }
    if h.protocol_version != PROTOCOL_VERSION {
        return Err(refusing(
            refusal::UNSUPPORTED_VERSION,
            format!(
                "this masternode speaks protocol version {PROTOCOL_VERSION}, you sent {}",
                h.protocol_version
            ),
        ));
    }
    Ok(())
}

/// Reads one handshake frame. An `Error` frame becomes [`LinkError::RefusedBy`];
/// a frame that is not a handshake message is refused.
async fn read_handshake<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
) -> Result<Handshake, LinkError> {
    let frame = reader.read_frame().await?;
    let m = Message::decode(frame)
        .map_err(|e| refusing(refusal::PROTOCOL, format!("malformed handshake frame: {e}")))?;
    match Handshake::try_from(m) {
        Ok(Handshake::Error { code, detail }) => Err(LinkError::RefusedBy { code, detail }),
        Ok(h) => Ok(h),
        Err(e) => Err(refusing(refusal::PROTOCOL, e.to_string())),
    }
}

async fn read_hello<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) -> Result<Hello, LinkError> {
    match read_handshake(reader).await? {
        Handshake::Hello(h) => Ok(h),
        _ => Err(refusing(refusal::PROTOCOL, "expected hello")),
    }
}

/// The listener's side. Reads the dialer's `Hello` and refuses it unless
/// chain and version match and the role is wallet: masternodes talk only
/// over the peer pool ([`refusal::PEER_POOL_ONLY`]). Only then sends our
/// `Hello` and our proof over both; a wallet sends no proof.
pub(super) async fn accept_side<R, W>(
    id: &Identity,
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
) -> Result<(), LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let theirs = read_hello(reader).await?;
    check_hello(id, &theirs)?;
    if theirs.role == Role::Masternode {
        // Refused before we sign anything: nothing a masternode-role dialer
        // can obtain here.
        return Err(refusing(
            refusal::PEER_POOL_ONLY,
            "this port serves wallets only; masternodes connect through the peer pool \
             (QUIC on the P2P port, or TLS 1.3 over TCP on P2P port + 1 with \
             peer_transport = \"tcp\")",
        ));
    }
    let ours = hello(id, Role::Masternode, rand::random());
    let proof = sign_handshake(&id.key, Side::Acceptor, &theirs, &ours);
    writer.push(&Message::Hello(ours).to_bytes())?;
    writer.push(&Message::HelloAuth(proof).to_bytes())?;
    writer.flush().await?;
    Ok(())
}

/// The `Error` frame that tells the other side why its handshake failed, if
/// the connection can still carry one.
fn refusal_frame(e: &LinkError) -> Option<Message> {
    let (code, detail) = match e {
        LinkError::Refusing { code, detail } => (*code, detail.clone()),
        LinkError::Timeout => (refusal::PROTOCOL, "handshake timed out".to_string()),
        LinkError::Frame(FrameError::Oversized { .. } | FrameError::Empty) => {
            (refusal::PROTOCOL, format!("handshake: {e}"))
        }
        _ => return None,
    };
    Some(Message::Error { code, detail })
}

/// Tells the other side why its handshake failed (best effort, bounded),
/// then reads what it still sends for a moment, so closing does not reset
/// the connection before the `Error` frame is read.
pub(super) async fn refuse<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    e: &LinkError,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(m) = refusal_frame(e) else {
        return;
    };
    let tell = async {
        writer.send(&m.to_bytes()).await?;
        for _ in 0..8 {
            reader.read_frame().await?;
        }
        Ok::<(), FrameError>(())
    };
    let _ = tokio::time::timeout(Duration::from_millis(250), tell).await;
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
