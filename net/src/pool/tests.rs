//! Pool internals against hand-made peers: forged certificates, DER walking,
//! and a decompression bomb sent over an authenticated TCP connection.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::{CertifiedKey, SingleCertAndKey};

use super::handshake::{self, PoolStream};
use super::identity::{ed25519_spki, Identity};
use super::tls::{self, cert_peer_id, cert_spki};
use super::*;
use crate::frame::{FrameReader, FrameWriter};

fn ident(seed: u8) -> Identity {
    Identity::from_secret(&[seed; 32])
}

/// `holder`'s certificate with the key replaced by `claimed`: what someone
/// without `claimed`'s secret would present to pass as that masternode.
fn forged_cert(holder: &Identity, claimed: &PeerId) -> CertificateDer<'static> {
    let forged = Credentials::claiming(&holder.secret_for_tests(), claimed).unwrap();
    let cert = forged.certificate().clone();
    assert_eq!(cert_spki(&cert).unwrap(), ed25519_spki(claimed));
    cert
}

fn certified(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Arc<SingleCertAndKey> {
    let provider = tls::provider();
    let signer = provider.key_provider.load_private_key(key).unwrap();
    Arc::new(SingleCertAndKey::from(CertifiedKey::new(
        vec![cert],
        signer,
    )))
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A QUIC server that presents `cert` and signs with `key`, accepting any
/// client certificate from `table`.
fn server(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    table: HashSet<PeerId>,
) -> quinn::Endpoint {
    let provider = tls::provider();
    let verifier = Arc::new(tls::PeerTableVerifier::new(Arc::new(table), &provider));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certified(cert, key));
    cfg.alpn_protocols = vec![tls::ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(cfg).unwrap();
    quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        localhost(),
    )
    .unwrap()
}

/// A QUIC client that presents `cert` (signing with `key`) and expects the
/// server to hold `expected`.
fn client_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    expected: PeerId,
) -> quinn::ClientConfig {
    let provider = tls::provider();
    let verifier = Arc::new(tls::ExpectedPeerVerifier::new(expected, &provider));
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(certified(cert, key));
    cfg.alpn_protocols = vec![tls::ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(cfg).unwrap()))
}

/// Runs one handshake; `Ok` only if both sides completed it and the server
/// side authenticated the client.
async fn quic_handshake(
    server: &quinn::Endpoint,
    client_cfg: quinn::ClientConfig,
) -> Result<PeerId, String> {
    let addr = server.local_addr().unwrap();
    let client = quinn::Endpoint::client(localhost()).unwrap();
    let accept = async {
        let incoming = server.accept().await.ok_or("no incoming")?;
        let conn = incoming.await.map_err(|e| format!("server: {e}"))?;
        let certs = conn
            .peer_identity()
            .unwrap()
            .downcast::<Vec<CertificateDer<'static>>>()
            .unwrap();
        cert_peer_id(&certs[0]).map_err(|e| e.to_string())
    };
    let dial = async {
        let conn = client
            .connect_with(client_cfg, addr, "masternode.timecoin")
            .unwrap()
            .await
            .map_err(|e| format!("client: {e}"))?;
        Ok::<_, String>(conn)
    };
    let (accepted, dialed) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(accept, dial)
    })
    .await
    .map_err(|_| "timeout".to_string())?;
    let _conn = dialed?;
    accepted
}

#[tokio::test]
async fn honest_certificates_authenticate_both_ways() {
    let (a, b) = (ident(1), ident(2));
    let (bc, bk) = b.tls_credentials().unwrap();
    let (ac, ak) = a.tls_credentials().unwrap();
    let srv = server(bc, bk, HashSet::from([a.peer_id()]));
    let who = quic_handshake(&srv, client_config(ac, ak, b.peer_id())).await;
    assert_eq!(who, Ok(a.peer_id()));
}

#[tokio::test]
async fn server_with_a_forged_certificate_is_refused() {
    // The impostor presents a certificate carrying b's key but can only sign
    // the handshake with its own: the signature check must catch it.
    let (a, b, impostor) = (ident(1), ident(2), ident(3));
    let (_, impostor_key) = impostor.tls_credentials().unwrap();
    let srv = server(
        forged_cert(&impostor, &b.peer_id()),
        impostor_key,
        HashSet::from([a.peer_id()]),
    );
    let (ac, ak) = a.tls_credentials().unwrap();
    let r = quic_handshake(&srv, client_config(ac, ak, b.peer_id())).await;
    assert!(r.is_err(), "{r:?}");
}

#[tokio::test]
async fn client_with_a_forged_certificate_is_refused() {
    let (a, b, impostor) = (ident(1), ident(2), ident(3));
    let (bc, bk) = b.tls_credentials().unwrap();
    let srv = server(bc, bk, HashSet::from([a.peer_id()]));
    let (_, impostor_key) = impostor.tls_credentials().unwrap();
    let r = quic_handshake(
        &srv,
        client_config(
            forged_cert(&impostor, &a.peer_id()),
            impostor_key,
            b.peer_id(),
        ),
    )
    .await;
    assert!(r.is_err(), "{r:?}");
}

#[tokio::test]
async fn wrong_and_unknown_keys_are_refused() {
    let (a, b, c) = (ident(1), ident(2), ident(3));
    // Server is c; a expects b.
    let (cc, ck) = c.tls_credentials().unwrap();
    let srv = server(cc, ck, HashSet::from([a.peer_id()]));
    let (ac, ak) = a.tls_credentials().unwrap();
    assert!(
        quic_handshake(&srv, client_config(ac.clone(), ak.clone_key(), b.peer_id()))
            .await
            .is_err()
    );
    // Server is b but its table does not hold a.
    let (bc, bk) = b.tls_credentials().unwrap();
    let srv = server(bc, bk, HashSet::from([c.peer_id()]));
    assert!(quic_handshake(&srv, client_config(ac, ak, b.peer_id()))
        .await
        .is_err());
}

#[test]
fn certificate_binds_the_masternode_key() {
    let a = ident(9);
    let (cert, _) = a.tls_credentials().unwrap();
    assert_eq!(cert_spki(&cert).unwrap(), ed25519_spki(&a.peer_id()));
    assert_eq!(cert_peer_id(&cert), Ok(a.peer_id()));
    // Truncated or padded certificates are not walked.
    assert!(cert_spki(&cert[..cert.len() - 1]).is_none());
    let mut padded = cert.to_vec();
    padded.push(0);
    assert!(cert_spki(&padded).is_none());
    assert!(cert_spki(&[]).is_none());
    // A non-minimal length encoding is refused.
    assert!(cert_spki(&[0x30, 0x81, 0x05, 1, 2, 3, 4, 5]).is_none());
}

/// TCP pool: a client certificate carrying a's key whose CertificateVerify
/// is signed by another key is refused by the acceptor, and so is a server
/// doing the same towards the dialer.
#[tokio::test]
async fn tcp_forged_certificates_are_refused() {
    let (a, b, impostor) = (ident(1), ident(2), ident(3));
    let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let table = Arc::new(HashSet::from([a.peer_id()]));
    let setup = handshake::TcpTls::new(&b, table.clone()).unwrap();
    let forged = Credentials::claiming(&[3; 32], &a.peer_id()).unwrap();
    let dialing = async {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        handshake::dial_with(&forged, s, 1, b.peer_id()).await
    };
    let accepting = async {
        let (s, _) = listener.accept().await.unwrap();
        handshake::accept_tls(&setup, s, &table).await.map(|x| x.0)
    };
    let (d, acc) = tokio::join!(dialing, accepting);
    assert!(
        matches!(acc, Err(handshake::HandshakeError::Tls(_))),
        "{acc:?}"
    );
    assert!(d.is_err());
    // The other way: the impostor answers as b.
    let (_, impostor_key) = impostor.tls_credentials().unwrap();
    let server = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(Arc::new(tls::PeerTableVerifier::new(
            table.clone(),
            &tls::provider(),
        )))
        .with_cert_resolver(certified(
            forged_cert(&impostor, &b.peer_id()),
            impostor_key,
        ));
    let mut server = server;
    server.alpn_protocols = vec![handshake::ALPN_TCP.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let accepting = async {
        let (s, _) = listener.accept().await.unwrap();
        acceptor.accept(s).await.map(|_| ())
    };
    let dialing = async {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        handshake::dial_as(&[1; 32], s, 1, b.peer_id()).await
    };
    let (d, _) = tokio::join!(dialing, accepting);
    assert!(matches!(d, Err(handshake::HandshakeError::Tls(_))), "{d:?}");
}

/// Neither transport resumes a session or takes early data: a client that
/// would resume (session cache, 0-RTT enabled) gets no ticket, so its
/// second connection runs the full handshake again (TCP) and has no 0-RTT
/// to offer (QUIC). A recorded handshake therefore has nothing to replay.
#[tokio::test]
async fn no_session_resumption_and_no_early_data() {
    let (a, b) = (ident(1), ident(2));
    let table = Arc::new(HashSet::from([a.peer_id()]));
    let creds = a.credentials().unwrap();
    // TCP.
    let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let setup = handshake::TcpTls::new(&b, table.clone()).unwrap();
    let mut cfg = tls::tcp_client_config(&creds, b.peer_id()).unwrap();
    cfg.resumption = rustls::client::Resumption::in_memory_sessions(16);
    cfg.enable_early_data = true;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    for _ in 0..2 {
        let dialing = async {
            let s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("masternode.timecoin").unwrap();
            let mut tls =
                tokio_rustls::TlsStream::Client(connector.connect(name, s).await.unwrap());
            handshake::exchange(&mut tls, 1).await.unwrap();
            tls.get_ref().1.handshake_kind()
        };
        let accepting = async {
            let (s, _) = listener.accept().await.unwrap();
            let (_, mut tls) = handshake::accept_tls(&setup, s, &table).await.unwrap();
            handshake::exchange(&mut tls, 2).await.unwrap();
            tls
        };
        let (kind, _keep) = tokio::join!(dialing, accepting);
        assert_eq!(kind, Some(rustls::HandshakeKind::Full));
    }
    // QUIC.
    let (bc, bk) = b.tls_credentials().unwrap();
    let crypto = QuicServerConfig::try_from(tls::server_config(bc, bk, table).unwrap()).unwrap();
    let srv = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        localhost(),
    )
    .unwrap();
    let mut cfg = tls::client_config(&creds, b.peer_id()).unwrap();
    cfg.resumption = rustls::client::Resumption::in_memory_sessions(16);
    cfg.enable_early_data = true;
    let client_cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(cfg).unwrap()));
    let client = quinn::Endpoint::client(localhost()).unwrap();
    for round in 0..2 {
        let connecting = client
            .connect_with(
                client_cfg.clone(),
                srv.local_addr().unwrap(),
                "masternode.timecoin",
            )
            .unwrap();
        let accept = async { srv.accept().await.unwrap().await.unwrap() };
        let dial = async {
            match connecting.into_0rtt() {
                Ok(_) => panic!("round {round}: the client could send 0-RTT data"),
                Err(c) => c.await.unwrap(),
            }
        };
        let (_s, c) = tokio::join!(accept, dial);
        // Give a ticket time to arrive, were one sent.
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(c);
    }
}

/// A pool over TCP receives, from an authenticated peer, a compressed frame
/// that would inflate to 64 MiB: the connection is dropped, nothing is
/// delivered and no 64 MiB buffer is allocated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_peer_sending_a_zstd_bomb_is_disconnected() {
    // The sender must have the smaller key to dial.
    let (x, y) = (ident(1), ident(2));
    let (attacker, victim) = if x.peer_id() < y.peer_id() {
        (x, y)
    } else {
        (y, x)
    };
    let victim_secret = if victim.peer_id() == ident(1).peer_id() {
        [1; 32]
    } else {
        [2; 32]
    };
    let mut cfg = PoolConfig::new(
        Transport::Tcp,
        localhost(),
        victim_secret,
        HashMap::from([(attacker.peer_id(), "127.0.0.1:9".parse().unwrap())]),
    );
    cfg.max_message_len = 1 << 20;
    let (pool, mut rx) = Pool::start(cfg).await.unwrap();

    let attacker_secret = if victim_secret == [1; 32] {
        [2; 32]
    } else {
        [1; 32]
    };
    let (mut r, mut wh) = raw_peer(pool.local_addr(), &attacker_secret, victim.peer_id(), 7).await;
    {
        let mut w = FrameWriter::new(&mut wh);
        let mut frame = Vec::new();
        wire::encode_data(&mut frame, Priority::High, 0, false, b"honest");
        w.send(&frame).await.unwrap();
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 3).unwrap();
        wire::encode_data(&mut frame, Priority::High, 1, true, &bomb);
        w.send(&frame).await.unwrap();
    }
    let (_, p, m) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((p, &m[..]), (Priority::High, &b"honest"[..]));
    // The victim hangs up: our reader sees the end of the stream.
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match r.read_frame().await {
                Ok(_) => continue,
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("victim closed the connection");
    drop(end);
    assert!(tokio::time::timeout(Duration::from_millis(100), rx.recv())
        .await
        .is_err());
    let st = pool.stats(&attacker.peer_id()).unwrap();
    assert_eq!(st.frames_in[Priority::High.index()], 1);
    assert!(!st.connected);
    pool.shutdown().await;
}

/// A hand-made TCP peer: connects and authenticates (TLS, then the
/// exchange) as the holder of `secret` with `epoch`.
async fn raw_peer(
    addr: SocketAddr,
    secret: &[u8; 32],
    them: PeerId,
    epoch: u64,
) -> (
    FrameReader<tokio::io::ReadHalf<PoolStream>>,
    tokio::io::WriteHalf<PoolStream>,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (_, tls) = handshake::dial_as(secret, stream, epoch, them)
        .await
        .unwrap();
    let (rh, wh) = tokio::io::split(tls);
    (FrameReader::new(rh, 1 << 20), wh)
}

async fn send_seqs(wh: &mut tokio::io::WriteHalf<PoolStream>, seqs: &[u64]) {
    let mut w = FrameWriter::new(wh);
    let mut frame = Vec::new();
    for &seq in seqs {
        wire::encode_data(
            &mut frame,
            Priority::Critical,
            seq,
            false,
            &seq.to_le_bytes(),
        );
        w.push(&frame).unwrap();
    }
    w.flush().await.unwrap();
}

/// Sequence gaps within one sender epoch are counted as lost in flight, across
/// reconnections; a new epoch (restarted sender) starts a new baseline; a
/// sequence going backwards within an epoch ends the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_gaps_are_counted_per_epoch() {
    let (x, y) = ([1u8; 32], [2u8; 32]);
    let (peer_secret, pool_secret) = if peer_id_from_secret(&x) < peer_id_from_secret(&y) {
        (x, y)
    } else {
        (y, x)
    };
    let peer = Identity::from_secret(&peer_secret);
    let cfg = PoolConfig::new(
        Transport::Tcp,
        localhost(),
        pool_secret,
        HashMap::from([(peer.peer_id(), "127.0.0.1:9".parse().unwrap())]),
    );
    let (pool, mut inbox) = Pool::start(cfg).await.unwrap();
    let me = pool.local_id();
    let stats = || pool.stats(&peer.peer_id()).unwrap();
    let recv = |inbox: &mut Inbox| {
        let m = inbox.try_recv().expect("delivered");
        u64::from_le_bytes(m.2[..].try_into().unwrap())
    };
    let wait_frames = |n: u64| {
        let pool = pool.clone();
        let id = peer.peer_id();
        async move {
            for _ in 0..500 {
                if pool.stats(&id).unwrap().frames_in[0] >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            panic!("frames did not arrive");
        }
    };

    // Epoch 7: 0, 1, 2, then 5 (3 and 4 lost).
    let (_r, mut wh) = raw_peer(pool.local_addr(), &peer_secret, me, 7).await;
    send_seqs(&mut wh, &[0, 1, 2, 5]).await;
    wait_frames(4).await;
    assert_eq!(stats().lost_in_flight, [2, 0, 0, 0]);
    // Reconnect, same epoch: 9 means 6, 7, 8 were lost in between.
    drop((_r, wh));
    let (_r, mut wh) = raw_peer(pool.local_addr(), &peer_secret, me, 7).await;
    send_seqs(&mut wh, &[9]).await;
    wait_frames(5).await;
    assert_eq!(stats().lost_in_flight, [5, 0, 0, 0]);
    // A restarted sender (new epoch) starts again from 0: no loss.
    drop((_r, wh));
    let (_r, mut wh) = raw_peer(pool.local_addr(), &peer_secret, me, 8).await;
    send_seqs(&mut wh, &[0, 1]).await;
    wait_frames(7).await;
    assert_eq!(stats().lost_in_flight, [5, 0, 0, 0]);
    let got: Vec<u64> = (0..7).map(|_| recv(&mut inbox)).collect();
    assert_eq!(got, [0, 1, 2, 5, 9, 0, 1]);
    // Backwards within an epoch: refused, connection dropped.
    send_seqs(&mut wh, &[1]).await;
    for _ in 0..500 {
        if !stats().connected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!stats().connected);
    assert!(inbox.try_recv().is_none());
    pool.shutdown().await;
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Forwards connections from `listener` to `to`; in the first connection,
/// flips one bit of the dialer-to-acceptor bytes at `offset` (an on-path
/// attacker changing the stream after the handshake).
async fn bit_flipping_proxy(listener: tokio::net::TcpListener, to: SocketAddr, offset: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut first = true;
    while let Ok((inbound, _)) = listener.accept().await {
        let Ok(outbound) = tokio::net::TcpStream::connect(to).await else {
            continue;
        };
        let flip = std::mem::take(&mut first).then_some(offset);
        let (mut ir, mut iw) = inbound.into_split();
        let (mut or, mut ow) = outbound.into_split();
        tokio::spawn(async move {
            let mut seen = 0usize;
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = ir.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if let Some(at) = flip.filter(|&at| (seen..seen + n).contains(&at)) {
                    buf[at - seen] ^= 0x04;
                }
                seen += n;
                if ow.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut or, &mut iw).await;
        });
    }
}

/// Every byte after the TCP pool handshake is in TLS records: one flipped
/// bit on the wire delivers no altered message; the connection ends instead
/// and the dialer connects again. (Over the v1 plaintext handshake the
/// acceptor would have delivered the altered message.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_pool_refuses_a_flipped_bit_after_the_handshake() {
    let (x, y) = ([1u8; 32], [2u8; 32]);
    let (dialer_secret, acceptor_secret) = if peer_id_from_secret(&x) < peer_id_from_secret(&y) {
        (x, y)
    } else {
        (y, x)
    };
    let (dialer_id, acceptor_id) = (
        peer_id_from_secret(&dialer_secret),
        peer_id_from_secret(&acceptor_secret),
    );
    let mut acfg = PoolConfig::new(
        Transport::Tcp,
        localhost(),
        acceptor_secret,
        HashMap::from([(dialer_id, "127.0.0.1:9".parse().unwrap())]),
    );
    acfg.ping_interval = Duration::from_millis(100);
    let (acceptor, mut inbox) = Pool::start(acfg).await.unwrap();
    let proxy = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    // Past the TLS handshake and the exchange (about 1.5 KB), inside data.
    tokio::spawn(bit_flipping_proxy(proxy, acceptor.local_addr(), 6_000));
    let mut dcfg = PoolConfig::new(
        Transport::Tcp,
        localhost(),
        dialer_secret,
        HashMap::from([(acceptor_id, proxy_addr)]),
    );
    dcfg.ping_interval = Duration::from_millis(100);
    dcfg.backoff.initial = Duration::from_millis(20);
    let (dialer, _rx) = Pool::start(dcfg).await.unwrap();
    let sent: Vec<Vec<u8>> = (0..400u32)
        .map(|i| format!("message {i:04} ").repeat(6).into_bytes())
        .collect();
    for m in &sent {
        dialer
            .send_wait(&acceptor_id, Priority::Normal, Bytes::from(m.clone()))
            .await
            .unwrap();
    }
    wait_for("a new connection after the flipped bit", || {
        dialer.stats(&acceptor_id).unwrap().connects >= 2
    })
    .await;
    // The new connection carries messages intact.
    let after: Vec<Vec<u8>> = (0..50u32)
        .map(|i| format!("after {i}").into_bytes())
        .collect();
    for m in &after {
        dialer
            .send_wait(&acceptor_id, Priority::Normal, Bytes::from(m.clone()))
            .await
            .unwrap();
    }
    let mut got_after = 0;
    while got_after < after.len() {
        let (peer, _, m) = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
            .await
            .expect("messages on the new connection")
            .unwrap();
        assert_eq!(peer, dialer_id);
        if after.iter().any(|s| s[..] == m[..]) {
            got_after += 1;
        } else {
            assert!(
                sent.iter().any(|s| s[..] == m[..]),
                "an altered message was delivered: {:?}",
                String::from_utf8_lossy(&m)
            );
        }
    }
    // The acceptor dropped the connection whose record failed to verify.
    let st = acceptor.stats(&dialer_id).unwrap();
    assert!(st.disconnects >= 1 && st.connects >= 2, "{st:?}");
    dialer.shutdown().await;
    acceptor.shutdown().await;
}
