//! The signed handshake that authenticates a TCP pool connection.
//!
//! Both sides send a `Hello` (key, fresh 32-byte nonce, pool epoch) at once,
//! then a signature over
//! `"TIMECOIN/pool-handshake/v1" || peer_nonce || own_pubkey`, checked with
//! [`timecoin_core::sig::verify`] (ZIP 215), and finally a one-byte confirmation. The dialer requires the key it dialed; the acceptor
//! requires a key in its peer table. Frames stay capped at the size of a hello
//! until the peer is authenticated.
//!
//! What this does not give: confidentiality or integrity after the handshake,
//! nor protection from an on-path relay. QUIC (TLS 1.3) gives both; TCP is the
//! fallback.

use std::collections::HashSet;

use rand::RngCore;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::frame::{FrameError, FrameReader, FrameWriter};
use crate::reader::DecodeError;

use super::identity::{Identity, PeerId};
use super::wire::Hello;

pub const HANDSHAKE_CONTEXT: &[u8] = b"TIMECOIN/pool-handshake/v1";

/// Last handshake frame: "I accept you".
const ACCEPTED: u8 = 1;

/// Frame cap while unauthenticated: the largest handshake frame.
pub(crate) const HANDSHAKE_FRAME_CAP: usize = Hello::LEN;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HandshakeError {
    #[error("handshake i/o: {0}")]
    Frame(#[from] FrameError),
    #[error("malformed handshake: {0}")]
    Decode(#[from] DecodeError),
    #[error("peer key is not in the peer table")]
    UnknownPeer { presented: PeerId },
    #[error("peer key is not the key of the peer being dialed")]
    WrongPeer { presented: PeerId, expected: PeerId },
    #[error("peer presented our own key")]
    OwnKey,
    #[error("peer's handshake signature does not verify")]
    BadSignature,
    #[error("handshake timed out")]
    Timeout,
}

/// Whom a handshake may authenticate.
pub(crate) enum Expect<'a> {
    /// Dialer: exactly this key.
    Peer(PeerId),
    /// Acceptor: any key in the table.
    AnyOf(&'a HashSet<PeerId>),
}

/// The peer proved it holds `key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Authenticated {
    pub peer: PeerId,
    pub peer_epoch: u64,
}

/// The bytes a side signs: it proves the holder of `own_key` answered the
/// challenge `peer_nonce`.
pub fn transcript(peer_nonce: &[u8; 32], own_key: &PeerId) -> Vec<u8> {
    let mut m = Vec::with_capacity(HANDSHAKE_CONTEXT.len() + 64);
    m.extend_from_slice(HANDSHAKE_CONTEXT);
    m.extend_from_slice(peer_nonce);
    m.extend_from_slice(own_key);
    m
}

/// Runs the handshake on fresh framed halves. The reader's cap is left at
/// [`HANDSHAKE_FRAME_CAP`]; the caller raises it once this returns `Ok`.
pub(crate) async fn run<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    me: &Identity,
    my_epoch: u64,
    expect: Expect<'_>,
) -> Result<Authenticated, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    reader.set_cap(HANDSHAKE_FRAME_CAP);
    let mut nonce = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let hello = Hello {
        key: me.peer_id(),
        nonce,
        epoch: my_epoch,
    };
    writer.send(&hello.encode()).await?;

    let theirs = Hello::decode(reader.read_frame().await?)?;
    if theirs.key == me.peer_id() {
        return Err(HandshakeError::OwnKey);
    }
    match expect {
        Expect::Peer(expected) if theirs.key != expected => {
            return Err(HandshakeError::WrongPeer {
                presented: theirs.key,
                expected,
            })
        }
        Expect::AnyOf(table) if !table.contains(&theirs.key) => {
            return Err(HandshakeError::UnknownPeer {
                presented: theirs.key,
            })
        }
        _ => {}
    }
    if !timecoin_core::sig::is_point(&theirs.key) {
        return Err(HandshakeError::BadSignature);
    }

    let sig = me.sign(&transcript(&theirs.nonce, &me.peer_id()));
    writer.send(&sig.to_bytes()).await?;

    let their_sig = reader.read_frame().await?;
    let their_sig: [u8; 64] = their_sig.try_into().map_err(|_| DecodeError::Invalid {
        what: "handshake signature length",
    })?;
    if !timecoin_core::sig::verify(&theirs.key, &transcript(&nonce, &theirs.key), &their_sig) {
        return Err(HandshakeError::BadSignature);
    }

    // Each side confirms it accepted the other, so neither counts a
    // connection as established that the other refused.
    writer.send(&[ACCEPTED]).await?;
    if reader.read_frame().await? != [ACCEPTED] {
        return Err(DecodeError::Invalid {
            what: "handshake confirmation",
        }
        .into());
    }
    Ok(Authenticated {
        peer: theirs.key,
        peer_epoch: theirs.epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::MAX_FRAME_LEN;

    fn ident(seed: u8) -> Identity {
        Identity::from_secret(&[seed; 32])
    }

    async fn pair(
        a: Identity,
        a_expect: PeerId,
        b: Identity,
        b_table: HashSet<PeerId>,
    ) -> (
        Result<Authenticated, HandshakeError>,
        Result<Authenticated, HandshakeError>,
    ) {
        let (x, y) = tokio::io::duplex(4096);
        let (xr, xw) = tokio::io::split(x);
        let (yr, yw) = tokio::io::split(y);
        let dial = async move {
            let mut r = FrameReader::new(xr, MAX_FRAME_LEN);
            let mut w = FrameWriter::new(xw);
            run(&mut r, &mut w, &a, 1, Expect::Peer(a_expect)).await
        };
        let accept = async move {
            let mut r = FrameReader::new(yr, MAX_FRAME_LEN);
            let mut w = FrameWriter::new(yw);
            run(&mut r, &mut w, &b, 2, Expect::AnyOf(&b_table)).await
        };
        tokio::join!(dial, accept)
    }

    #[tokio::test]
    async fn both_sides_authenticate() {
        let (a, b) = (ident(1), ident(2));
        let (a_id, b_id) = (a.peer_id(), b.peer_id());
        let (ra, rb) = pair(a, b_id, b, HashSet::from([a_id])).await;
        assert_eq!(
            ra.unwrap(),
            Authenticated {
                peer: b_id,
                peer_epoch: 2
            }
        );
        assert_eq!(
            rb.unwrap(),
            Authenticated {
                peer: a_id,
                peer_epoch: 1
            }
        );
    }

    #[tokio::test]
    async fn unknown_and_wrong_keys_are_refused() {
        let (a, b) = (ident(1), ident(2));
        let b_id = b.peer_id();
        // b's table does not hold a.
        let (_, rb) = pair(a, b_id, b, HashSet::from([[9u8; 32]])).await;
        assert!(matches!(rb, Err(HandshakeError::UnknownPeer { .. })));
        // a dials expecting c, reaches b.
        let (a, b, c) = (ident(1), ident(2), ident(3));
        let a_id = a.peer_id();
        let (ra, _) = pair(a, c.peer_id(), b, HashSet::from([a_id])).await;
        assert!(matches!(ra, Err(HandshakeError::WrongPeer { .. })));
    }

    #[tokio::test]
    async fn a_claimed_key_without_its_secret_is_refused() {
        // The impostor claims b's key but signs with its own.
        let (x, y) = tokio::io::duplex(4096);
        let (xr, xw) = tokio::io::split(x);
        let (yr, yw) = tokio::io::split(y);
        let a = ident(1);
        let b_id = ident(2).peer_id();
        let impostor = ident(7);
        let dial = async move {
            let mut r = FrameReader::new(xr, MAX_FRAME_LEN);
            let mut w = FrameWriter::new(xw);
            run(&mut r, &mut w, &a, 1, Expect::Peer(b_id)).await
        };
        let fake = async move {
            let mut r = FrameReader::new(yr, MAX_FRAME_LEN);
            let mut w = FrameWriter::new(yw);
            let theirs = Hello::decode(r.read_frame().await.unwrap()).unwrap();
            let hello = Hello {
                key: b_id,
                nonce: [5; 32],
                epoch: 0,
            };
            w.send(&hello.encode()).await.unwrap();
            let sig = impostor.sign(&transcript(&theirs.nonce, &b_id));
            w.send(&sig.to_bytes()).await.unwrap();
            // Stay connected until the dialer has judged the signature.
            (r, w)
        };
        let (ra, _halves) = tokio::join!(dial, fake);
        assert!(matches!(ra, Err(HandshakeError::BadSignature)), "{ra:?}");
    }

    #[test]
    fn golden_transcript() {
        let t = transcript(&[1; 32], &[2; 32]);
        assert_eq!(&t[..26], b"TIMECOIN/pool-handshake/v1");
        assert_eq!(&t[26..58], &[1; 32]);
        assert_eq!(&t[58..], &[2; 32]);
    }
}
