//! How a TCP pool connection is authenticated and protected: TLS 1.3
//! (tokio-rustls, *ring*) with mutual certificates bound to the masternode
//! keys, exactly as on QUIC ([`super::tls`], [`super::identity`]), then a
//! short exchange inside TLS.
//!
//! - The dialer accepts only a certificate for the key of the peer it dials
//!   ([`tls::ExpectedPeerVerifier`]); the acceptor only one for a key in its
//!   peer table ([`tls::PeerTableVerifier`]); both check the TLS 1.3
//!   CertificateVerify signature under that key. ALPN [`ALPN_TCP`]; no
//!   session resumption, no early data.
//! - The TLS 1.3 handshake is the transcript: each side's CertificateVerify
//!   signs the hash of every handshake message before it (both randoms, both
//!   key shares, the certificates), so a signature made on one connection
//!   verifies on no other and cannot be relayed; and each side signs only
//!   after it has the other's ClientHello/ServerHello.
//! - After it, every byte is in TLS records (AEAD): a changed, dropped,
//!   reordered or injected byte ends the connection instead of being read.
//! - Inside TLS, both sides send a [`Hello`] (the pool epoch) at once, then a
//!   one-byte confirmation, so neither counts a connection as established
//!   that the other refused (e.g. for the dial direction).
//!
//! Frames stay capped at the size of a hello until the exchange is done.

use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use crate::frame::{FrameError, FrameReader, FrameWriter};
use crate::reader::DecodeError;

use super::identity::{Credentials, Identity, PeerId, ShortId};
use super::tls;
use super::wire::Hello;
use super::PoolError;

/// ALPN of the TCP pool (the QUIC pool's is [`tls::ALPN`]).
pub const ALPN_TCP: &[u8] = b"timecoin-tcp/2";

/// Last handshake frame: "I accept you".
const ACCEPTED: u8 = 1;

/// Frame cap until the exchange inside TLS is done: the largest handshake
/// frame.
pub(crate) const HANDSHAKE_FRAME_CAP: usize = Hello::LEN;

/// A TCP pool connection: TLS over the socket.
pub type PoolStream = TlsStream<TcpStream>;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// TLS refused: a certificate that is not the expected registered key,
    /// a bad CertificateVerify signature, no TLS 1.3, wrong ALPN, or the
    /// peer refused ours.
    #[error("tls: {0}")]
    Tls(std::io::Error),
    #[error("handshake i/o: {0}")]
    Frame(#[from] FrameError),
    #[error("malformed handshake: {0}")]
    Decode(#[from] DecodeError),
    #[error("peer key {} is not in the peer table", ShortId(.presented))]
    UnknownPeer { presented: PeerId },
    #[error("peer key {} is not the key of the peer being dialed", ShortId(.presented))]
    WrongPeer { presented: PeerId, expected: PeerId },
    #[error("handshake timed out")]
    Timeout,
}

/// The peer proved it holds `peer`'s key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated {
    pub peer: PeerId,
    pub peer_epoch: u64,
}

/// This pool's TLS credentials and acceptor, built once at start.
pub(crate) struct TcpTls {
    acceptor: TlsAcceptor,
    creds: Credentials,
}

impl TcpTls {
    pub(crate) fn new(
        identity: &Identity,
        peers: Arc<std::collections::HashSet<PeerId>>,
    ) -> Result<Self, PoolError> {
        let (cert, key) = identity.tls_credentials()?;
        let server = tls::tcp_server_config(cert, key, peers)?;
        Ok(TcpTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            creds: identity.credentials()?,
        })
    }

    fn connector(&self, expected: PeerId) -> Result<TlsConnector, HandshakeError> {
        connector(&self.creds, expected)
    }
}

fn connector(creds: &Credentials, expected: PeerId) -> Result<TlsConnector, HandshakeError> {
    let cfg = tls::tcp_client_config(creds, expected)
        .map_err(|e| HandshakeError::Tls(std::io::Error::other(e)))?;
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// The dialer's side on a fresh TCP stream: TLS with `expected`'s key, then
/// the exchange.
pub(crate) async fn dial(
    setup: &TcpTls,
    stream: TcpStream,
    epoch: u64,
    expected: PeerId,
) -> Result<(Authenticated, PoolStream), HandshakeError> {
    dial_through(setup.connector(expected)?, stream, epoch, expected).await
}

async fn dial_through(
    connector: TlsConnector,
    stream: TcpStream,
    epoch: u64,
    expected: PeerId,
) -> Result<(Authenticated, PoolStream), HandshakeError> {
    let name = rustls::pki_types::ServerName::try_from(tls::SERVER_NAME)
        .expect("a valid DNS name")
        .to_owned();
    let tls = connector
        .connect(name, stream)
        .await
        .map_err(HandshakeError::Tls)?;
    let mut stream = TlsStream::Client(tls);
    let presented = stream_peer(&stream)?;
    if presented != expected {
        // The verifier already required this key; checked again so a
        // mistake there cannot attach the connection to the wrong link.
        return Err(HandshakeError::WrongPeer {
            presented,
            expected,
        });
    }
    let peer_epoch = exchange(&mut stream, epoch).await?;
    Ok((
        Authenticated {
            peer: presented,
            peer_epoch,
        },
        stream,
    ))
}

/// The acceptor's TLS handshake: returns the peer's key (in the table, its
/// CertificateVerify checked). The caller decides whether to go on with
/// [`exchange`].
pub(crate) async fn accept_tls(
    setup: &TcpTls,
    stream: TcpStream,
    table: &std::collections::HashSet<PeerId>,
) -> Result<(PeerId, PoolStream), HandshakeError> {
    let tls = setup
        .acceptor
        .accept(stream)
        .await
        .map_err(HandshakeError::Tls)?;
    let stream = TlsStream::Server(tls);
    let presented = stream_peer(&stream)?;
    if !table.contains(&presented) {
        return Err(HandshakeError::UnknownPeer { presented });
    }
    Ok((presented, stream))
}

/// The key of the single certificate the peer presented (and the pool's
/// ALPN was agreed).
fn stream_peer(stream: &PoolStream) -> Result<PeerId, HandshakeError> {
    let session = stream.get_ref().1;
    if session.alpn_protocol() != Some(ALPN_TCP) {
        return Err(HandshakeError::Tls(std::io::Error::other(
            "the TCP pool protocol (ALPN) was not agreed",
        )));
    }
    let certs = session.peer_certificates();
    match certs {
        Some([cert]) => tls::cert_peer_id(cert)
            .map_err(|e| HandshakeError::Tls(std::io::Error::other(rustls::Error::from(e)))),
        _ => Err(HandshakeError::Tls(std::io::Error::other(
            "peer presented no single certificate",
        ))),
    }
}

/// Inside TLS: both send a [`Hello`] at once, then both confirm. Returns the
/// peer's epoch.
pub(crate) async fn exchange(stream: &mut PoolStream, epoch: u64) -> Result<u64, HandshakeError> {
    FrameWriter::new(&mut *stream)
        .send(&Hello { epoch }.encode())
        .await?;
    let theirs = {
        let mut r = FrameReader::new(&mut *stream, HANDSHAKE_FRAME_CAP);
        Hello::decode(r.read_frame().await?)?
    };
    FrameWriter::new(&mut *stream).send(&[ACCEPTED]).await?;
    let mut r = FrameReader::new(&mut *stream, HANDSHAKE_FRAME_CAP);
    if r.read_frame().await? != [ACCEPTED] {
        return Err(DecodeError::Invalid {
            what: "handshake confirmation",
        }
        .into());
    }
    Ok(theirs.epoch)
}

/// A hand-made TCP pool peer for tests and diagnostics: dials `stream` as
/// the masternode whose secret seed is `secret`, requiring `expected`'s key,
/// and completes the exchange with pool epoch `epoch`. The same checks as
/// the pool's own dialer.
pub async fn dial_as(
    secret: &[u8; 32],
    stream: TcpStream,
    epoch: u64,
    expected: PeerId,
) -> Result<(Authenticated, PoolStream), HandshakeError> {
    let creds = Credentials::of(secret)
        .map_err(|e| HandshakeError::Tls(std::io::Error::other(e.to_string())))?;
    dial_with(&creds, stream, epoch, expected).await
}

/// [`dial_as`] presenting `creds`, which may be forged
/// ([`Credentials::claiming`]), to check that an acceptor refuses them.
pub async fn dial_with(
    creds: &Credentials,
    stream: TcpStream,
    epoch: u64,
    expected: PeerId,
) -> Result<(Authenticated, PoolStream), HandshakeError> {
    dial_through(connector(creds, expected)?, stream, epoch, expected).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn ident(seed: u8) -> Identity {
        Identity::from_secret(&[seed; 32])
    }

    /// `dialer` dials `acceptor` (whose table is `table`) over loopback TCP,
    /// expecting `expected`. Returns both sides' results.
    async fn pair(
        dialer: Identity,
        expected: PeerId,
        acceptor: Identity,
        table: HashSet<PeerId>,
    ) -> (
        Result<Authenticated, HandshakeError>,
        Result<Authenticated, HandshakeError>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let table = Arc::new(table);
        let dial_tls = TcpTls::new(&dialer, Arc::new(HashSet::from([expected]))).unwrap();
        let accept_tls_cfg = TcpTls::new(&acceptor, table.clone()).unwrap();
        let dialing = async {
            let s = TcpStream::connect(addr).await.unwrap();
            let (auth, stream) = dial(&dial_tls, s, 1, expected).await?;
            // Keep it open until the acceptor has judged us.
            Ok::<_, HandshakeError>((auth, stream))
        };
        let accepting = async {
            let (s, _) = listener.accept().await.unwrap();
            let (peer, mut stream) = accept_tls(&accept_tls_cfg, s, &table).await?;
            let peer_epoch = exchange(&mut stream, 2).await?;
            Ok::<_, HandshakeError>((Authenticated { peer, peer_epoch }, stream))
        };
        let (d, a) = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            tokio::join!(dialing, accepting)
        })
        .await
        .expect("handshake finished");
        (d.map(|x| x.0), a.map(|x| x.0))
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
        // b's table does not hold a: b refuses a's certificate, a never
        // gets b's hello.
        let (a, b) = (ident(1), ident(2));
        let b_id = b.peer_id();
        let (ra, rb) = pair(a, b_id, b, HashSet::from([[9u8; 32]])).await;
        assert!(matches!(rb, Err(HandshakeError::Tls(_))), "{rb:?}");
        assert!(ra.is_err());
        // a dials expecting c, reaches b.
        let (a, b, c) = (ident(1), ident(2), ident(3));
        let a_id = a.peer_id();
        let (ra, rb) = pair(a, c.peer_id(), b, HashSet::from([a_id])).await;
        assert!(matches!(ra, Err(HandshakeError::Tls(_))), "{ra:?}");
        assert!(rb.is_err());
    }

    #[tokio::test]
    async fn a_plaintext_v1_handshake_is_refused() {
        // The v1 signed-nonce handshake's first frame is no TLS ClientHello.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let b = ident(2);
        let table = Arc::new(HashSet::from([ident(1).peer_id()]));
        let setup = TcpTls::new(&b, table.clone()).unwrap();
        let old = async {
            let s = TcpStream::connect(addr).await.unwrap();
            let (_, w) = s.into_split();
            let mut w = FrameWriter::new(w);
            let mut hello = vec![1u8];
            hello.extend_from_slice(&ident(1).peer_id());
            hello.extend_from_slice(&[5; 32]);
            hello.extend_from_slice(&[0; 8]);
            let _ = w.send(&hello).await;
            w
        };
        let accept = async {
            let (s, _) = listener.accept().await.unwrap();
            accept_tls(&setup, s, &table).await.map(|x| x.0)
        };
        let (_w, r) = tokio::join!(old, accept);
        assert!(matches!(r, Err(HandshakeError::Tls(_))), "{r:?}");
    }
}
