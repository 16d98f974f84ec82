//! Who this node is on the wire ([`Identity`]: chain, key, registry) and the
//! two ends of the signed node handshake (v2, `docs/PROTOCOL.md`), shared by
//! the listener (inbound, [`accept_side`]) and the plain links (outbound,
//! [`dial_side`]).
//!
//! Each side signs only after it has seen the other side's `Hello`, and what
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
    refusal, sign_handshake, verify_handshake, Hello, Message, Role, Side, PROTOCOL_VERSION,
};
use crate::protocol::registry::Registry;
use crate::protocol::types::{ChainId, PublicKey};

/// This masternode's identity, as the handshakes prove and check it.
pub(super) struct Identity {
    pub chain_id: ChainId,
    pub key: SigningKey,
    pub me: PublicKey,
    pub registry: Registry,
}

/// Who completed an inbound handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Inbound {
    /// A registered masternode (not us) that proved its key.
    Masternode(PublicKey),
    /// A wallet (or operator tool): it proved nothing, we proved our key.
    Wallet,
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

/// Chain id and protocol version of the other side's `Hello`. `side` is the
/// side that sent it (the wording of the detail depends on who asked).
fn check_hello(id: &Identity, h: &Hello, side: Side) -> Result<(), LinkError> {
    if h.chain_id != id.chain_id {
        let detail = match side {
            Side::Dialer => format!(
                "this masternode serves chain {}, you asked for {}",
                id.chain_id, h.chain_id
            ),
            Side::Acceptor => format!(
                "this masternode dialed for chain {}, you serve {}",
                id.chain_id, h.chain_id
            ),
        };
        return Err(refusing(refusal::WRONG_CHAIN, detail));
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

async fn read_auth<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
) -> Result<[u8; 64], LinkError> {
    match read_handshake(reader).await? {
        Handshake::HelloAuth(s) => Ok(s),
        _ => Err(refusing(refusal::PROTOCOL, "expected hello-auth")),
    }
}

/// The listener's side. Reads the dialer's `Hello` and refuses it unless
/// chain and version match and, for the masternode role, its key is
/// registered and not ours. Only then sends our `Hello` and our proof over
/// both; a masternode dialer must answer with its own proof over the same
/// two `Hello`s.
pub(super) async fn accept_side<R, W>(
    id: &Identity,
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
) -> Result<Inbound, LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let theirs = read_hello(reader).await?;
    check_hello(id, &theirs, Side::Dialer)?;
    if theirs.role == Role::Masternode
        && (id.registry.get(&theirs.public_key).is_none() || theirs.public_key == id.me)
    {
        return Err(refusing(
            refusal::NOT_REGISTERED,
            format!(
                "{} is not a registered masternode of chain {}",
                theirs.public_key, id.chain_id
            ),
        ));
    }
    let ours = hello(id, Role::Masternode, rand::random());
    let proof = sign_handshake(&id.key, Side::Acceptor, &theirs, &ours);
    writer.push(&Message::Hello(ours.clone()).to_bytes())?;
    writer.push(&Message::HelloAuth(proof).to_bytes())?;
    writer.flush().await?;
    match theirs.role {
        Role::Wallet => Ok(Inbound::Wallet),
        Role::Masternode => {
            let sig = read_auth(reader).await?;
            if !verify_handshake(Side::Dialer, &theirs, &ours, &sig) {
                return Err(refusing(
                    refusal::BAD_SIGNATURE,
                    format!(
                        "the proof does not verify under {} over this connection's transcript",
                        theirs.public_key
                    ),
                ));
            }
            Ok(Inbound::Masternode(theirs.public_key))
        }
    }
}

/// A masternode dialer's side, towards the masternode `peer`: sends our
/// `Hello`, requires `peer`'s key and its proof over both `Hello`s, then
/// sends our proof over the same two.
pub(super) async fn dial_side<R, W>(
    id: &Identity,
    peer: &PublicKey,
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
) -> Result<(), LinkError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let ours = hello(id, Role::Masternode, rand::random());
    writer
        .send(&Message::Hello(ours.clone()).to_bytes())
        .await?;
    let theirs = read_hello(reader).await?;
    check_hello(id, &theirs, Side::Acceptor)?;
    if theirs.role != Role::Masternode || theirs.public_key != *peer {
        return Err(refusing(
            refusal::WRONG_KEY,
            format!(
                "dialed masternode {peer}, answered by {}",
                theirs.public_key
            ),
        ));
    }
    let sig = read_auth(reader).await?;
    if !verify_handshake(Side::Acceptor, &ours, &theirs, &sig) {
        return Err(refusing(
            refusal::BAD_SIGNATURE,
            format!("the proof does not verify under {peer} over this connection's transcript"),
        ));
    }
    let proof = sign_handshake(&id.key, Side::Dialer, &ours, &theirs);
    writer.send(&Message::HelloAuth(proof).to_bytes()).await?;
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
