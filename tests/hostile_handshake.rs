//! Hostile handshakes against a cluster of real masternode processes
//! (issue 9), over QUIC and over the TCP pool:
//!
//! - the P2P TCP port (wallets only) refuses the masternode role with
//!   `PEER_POOL_ONLY` before signing anything, so the v1 relay of a
//!   masternode's proof through a wallet connection has nothing to work
//!   with; a replayed wallet-session proof is refused by the wallet; other
//!   refusals come with their `Error` codes;
//! - the pool (QUIC, or TLS 1.3 over TCP at P2P port + 1) refuses an
//!   unregistered key, a forged identity (a certificate naming a registered
//!   key whose CertificateVerify is signed by another key), the wrong
//!   masternode answering, and the wrong dial direction (QUIC close code 3);
//!   the registered key in the right direction completes.
//!
//! Replay of a captured pool handshake: TLS 1.3 binds every CertificateVerify
//! to the handshake hash (both fresh randoms and ECDHE shares), so recorded
//! flights answer no new connection; the pool sends no session tickets and
//! takes no resumption or 0-RTT (`net/src/pool/tests.rs`,
//! `no_session_resumption_and_no_early_data`), so there is no shortcut that
//! skips the certificates either.
//!
//! Each test ends with a payment finalizing through the attacked masternodes.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{address, pay, Cluster, RawMasternode, SERIAL};
use ed25519_dalek::SigningKey;
use time_net::pool::{quic, quic::QuicPeer, Credentials, DialError};
use time_net::{FrameReader, FrameWriter};
use timecoin::node::keyfile::KeyFile;
use timecoin::protocol::message::{refusal, Hello, Message, Role, PROTOCOL_VERSION};
use timecoin::protocol::types::{PublicKey, COIN};
use timecoin::wallet::{ClientError, Outcome, WalletClient};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A raw framed connection to a node's P2P port, speaking for whoever the
/// test pretends to be.
struct Raw {
    r: FrameReader<OwnedReadHalf>,
    w: FrameWriter<OwnedWriteHalf>,
}

/// What the masternode did after the last frame we sent.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// It refused with this code, then closed.
    Refused(u16),
    /// It closed without a word.
    Closed,
    /// It kept the connection open (served us).
    Open,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).await.unwrap();
        let (r, w) = s.into_split();
        Raw {
            r: FrameReader::new(r, 1 << 20),
            w: FrameWriter::new(w),
        }
    }

    async fn send(&mut self, m: &Message) {
        self.w.send(&m.to_bytes()).await.unwrap();
    }

    async fn recv(&mut self) -> Message {
        let f = tokio::time::timeout(WAIT, self.r.read_frame())
            .await
            .expect("an answer")
            .expect("a frame");
        Message::decode(f).unwrap()
    }

    /// Sends our hello; returns the masternode's hello and proof.
    async fn hello(&mut self, ours: &Hello) -> (Hello, [u8; 64]) {
        self.send(&Message::Hello(ours.clone())).await;
        let h = match self.recv().await {
            Message::Hello(h) => h,
            m => panic!("expected a hello, got {m:?}"),
        };
        match self.recv().await {
            Message::HelloAuth(s) => (h, s),
            m => panic!("expected a hello-auth, got {m:?}"),
        }
    }

    /// Waits a moment for the masternode's reaction.
    async fn verdict(&mut self) -> Verdict {
        let first = tokio::time::timeout(Duration::from_millis(1500), self.r.read_frame()).await;
        match first {
            Err(_) => Verdict::Open,
            Ok(Err(_)) => Verdict::Closed,
            Ok(Ok(f)) => match Message::decode(f) {
                Ok(Message::Error { code, .. }) => {
                    let after = tokio::time::timeout(WAIT, self.r.read_frame()).await;
                    assert!(
                        matches!(after, Ok(Err(_))),
                        "connection still open after the error frame"
                    );
                    Verdict::Refused(code)
                }
                m => panic!("unexpected answer {m:?}"),
            },
        }
    }
}

fn hello(chain_id: u32, role: Role, public_key: PublicKey) -> Hello {
    Hello {
        chain_id,
        protocol_version: PROTOCOL_VERSION,
        role,
        public_key,
        nonce: rand::random(),
    }
}

fn key_of(k: &SigningKey) -> PublicKey {
    PublicKey::from_signing(k)
}

/// Masternode messages an impostor would send once accepted: steering B's
/// fast-path gap tracking for A, and asking B for proofs as A.
fn impostor_traffic() -> Vec<Message> {
    vec![
        Message::FastPathSeq { next: u64::MAX / 2 },
        Message::ProofRequest(timecoin::protocol::types::Txid([7; 32])),
        Message::RepairRequest {
            first: 0,
            last: 1000,
        },
    ]
}

/// The issue 9 attack through the P2P TCP port: the attacker (no key) dials
/// B claiming A's key (or another's), gets A to sign on a wallet
/// connection, and hands that proof to B. B refuses the masternode role with
/// `PEER_POOL_ONLY` as its very first frame: it signs nothing, gives out no
/// nonce, and reads no masternode message.
async fn listener_refuses_masternodes(c: &Cluster) {
    let chain = c.chain_id();
    let (a, b) = (c.masternode_key(0), c.masternode_key(1));
    let outsider = KeyFile::generate();
    for claimed in [key_of(&a), key_of(&outsider), key_of(&b)] {
        let mut to_b = Raw::connect(c.addr(1)).await;
        let claim = hello(chain, Role::Masternode, claimed);
        to_b.send(&Message::Hello(claim)).await;
        // A signs whatever a wallet hands it, over its own transcript.
        let mut to_a = Raw::connect(c.addr(0)).await;
        let (_a_hello, a_proof) = to_a
            .hello(&hello(chain, Role::Wallet, PublicKey::default()))
            .await;
        // B may already have closed; failed writes are fine.
        let _ = to_b.w.send(&Message::HelloAuth(a_proof).to_bytes()).await;
        for m in impostor_traffic() {
            let _ = to_b.w.send(&m.to_bytes()).await;
        }
        assert_eq!(
            to_b.verdict().await,
            Verdict::Refused(refusal::PEER_POOL_ONLY),
            "the P2P TCP port took the masternode role claiming {claimed}"
        );
    }
    let log = c.log(1);
    assert!(
        log.contains("masternodes connect through the peer pool, not this port (code 7)"),
        "B logs the refusal:\n{log}"
    );
}

/// A proof recorded on one connection is refused on another: B's genuine
/// proof to one wallet, replayed to another wallet by a fake masternode.
async fn replayed_proofs(c: &Cluster) {
    let chain = c.chain_id();
    let mut wallet = Raw::connect(c.addr(1)).await;
    let (b_hello, b_proof) = wallet
        .hello(&hello(chain, Role::Wallet, PublicKey::default()))
        .await;
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_addr = fake.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (s, _) = fake.accept().await.unwrap();
        let (r, w) = s.into_split();
        let mut raw = Raw {
            r: FrameReader::new(r, 1 << 20),
            w: FrameWriter::new(w),
        };
        let _their_hello = raw.recv().await;
        raw.send(&Message::Hello(b_hello)).await;
        raw.send(&Message::HelloAuth(b_proof)).await;
        let _ = raw.r.read_frame().await;
    });
    let r = WalletClient::connect_registered(fake_addr, chain, &c.registry).await;
    assert!(
        matches!(r, Err(ClientError::Handshake(_))),
        "a wallet accepted a replayed masternode proof"
    );
    server.abort();
}

/// Refusals the P2P port explains with an `Error` frame.
async fn refusals_explained(c: &Cluster) {
    let chain = c.chain_id();
    // A wallet on the wrong genesis.
    let e = match WalletClient::connect(c.addr(0), chain ^ 0x10).await {
        Err(e) => e,
        Ok(_) => panic!("a wallet of another chain was served"),
    };
    // The node's `Error` frame (code WRONG_CHAIN) becomes the client's own
    // error that says what to do.
    match &e {
        ClientError::WrongChain { detail, .. } => {
            assert_eq!(
                detail,
                &format!(
                    "this masternode serves chain {chain}, you asked for {}",
                    chain ^ 0x10
                )
            );
        }
        e => panic!("expected a wrong-chain refusal, got {e}"),
    }
    assert_eq!(
        e.to_string(),
        format!(
            "refused by {}: wrong chain id: this masternode serves chain {chain}, you asked for {}. \
             The masternode serves another network than the genesis file given: use that \
             network's genesis (--genesis), or another masternode",
            c.addr(0),
            chain ^ 0x10
        )
    );
    // Another protocol version.
    let mut raw = Raw::connect(c.addr(0)).await;
    raw.send(&Message::Hello(Hello {
        protocol_version: 1,
        ..hello(chain, Role::Wallet, PublicKey::default())
    }))
    .await;
    assert_eq!(
        raw.verdict().await,
        Verdict::Refused(refusal::UNSUPPORTED_VERSION)
    );
    // The masternode role, even with a registered key: refused before the
    // masternode signs anything.
    let mut raw = Raw::connect(c.addr(0)).await;
    raw.send(&Message::Hello(hello(
        chain,
        Role::Masternode,
        key_of(&c.masternode_key(2)),
    )))
    .await;
    assert_eq!(
        raw.verdict().await,
        Verdict::Refused(refusal::PEER_POOL_ONLY)
    );
    assert!(
        RawMasternode::connect(c.addr(0), chain, &c.masternode_key(2))
            .await
            .is_err()
    );
    // Not a hello.
    let mut raw = Raw::connect(c.addr(0)).await;
    raw.send(&Message::StatusQuery).await;
    assert_eq!(raw.verdict().await, Verdict::Refused(refusal::PROTOCOL));
}

/// The `time-wallet` binary prints the refusal.
fn time_wallet_prints_the_refusal(c: &Cluster) {
    let mut g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&c.layout.genesis).unwrap()).unwrap();
    let wrong = (c.chain_id() ^ 0x10) as u64;
    g["chain_id"] = wrong.into();
    let path = c.dir.path().join("wrong-genesis.json");
    std::fs::write(&path, g.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_time-wallet"))
        .arg("balance")
        .arg("--key")
        .arg(&c.layout.wallet_keys[0])
        .arg("--genesis")
        .arg(&path)
        .arg("--node")
        .arg(c.addr(0).to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "refused by {}: wrong chain id: this masternode serves chain {}, you asked for {wrong}. \
             The masternode serves another network than the genesis file given",
            c.addr(0),
            c.chain_id()
        )),
        "{err}"
    );
}

/// A payment submitted through masternode `node` finalizes.
async fn payment_still_finalizes(c: &Cluster, coin: u32, node: usize) {
    let (a, b) = (c.wallet_key(0), c.wallet_key(1));
    let tx = pay(c.chain_id(), &a, 0, coin, address(&b), COIN);
    match c.client(node).await.submit(&tx, WAIT).await.unwrap() {
        Outcome::Finalized { proof, .. } => {
            assert!(proof.verify(c.chain_id(), &c.registry).is_ok())
        }
        Outcome::Rejected { detail, .. } => panic!("rejected: {detail}"),
    }
}

/// Two masternodes of the cluster in the pool's dial direction:
/// (dialer key, acceptor key, dialer index, acceptor index).
fn dial_pair(c: &Cluster) -> (SigningKey, SigningKey, usize, usize) {
    let (x, y) = (c.masternode_key(0), c.masternode_key(1));
    if key_of(&x).0 < key_of(&y).0 {
        (x, y, 0, 1)
    } else {
        (y, x, 1, 0)
    }
}

/// Refused by the acceptor: either our side of TLS failed, or the acceptor
/// closed before opening any stream.
async fn quic_refused(r: Result<QuicPeer, DialError>) -> bool {
    match r {
        Err(_) => true,
        Ok(p) => matches!(tokio::time::timeout(WAIT, p.first_stream()).await, Ok(None)),
    }
}

fn creds(k: &SigningKey) -> Credentials {
    Credentials::of(&k.to_bytes()).unwrap()
}

/// QUIC: the pool on the P2P UDP port takes only the registered key of a
/// smaller peer, proved by its TLS 1.3 CertificateVerify.
#[test]
fn quic_pool_accepts_only_registered_keys_in_the_dial_direction() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start_with(4, "peer_transport = \"quic\"\n");
    let (dialer, acceptor, dial_i, acc_i) = dial_pair(&c);
    let acc_id = key_of(&acceptor).0;
    rt().block_on(async {
        listener_refuses_masternodes(&c).await;
        replayed_proofs(&c).await;
        refusals_explained(&c).await;
        // An unregistered key.
        let outsider = KeyFile::generate();
        let r = quic::dial_as(&creds(&outsider), c.addr(acc_i), acc_id).await;
        assert!(
            quic_refused(r).await,
            "an unregistered key joined the QUIC pool"
        );
        // A forged identity: the certificate names the dialer's registered
        // key, the CertificateVerify is the outsider's.
        let forged = Credentials::claiming(&outsider.to_bytes(), &key_of(&dialer).0).unwrap();
        let r = quic::dial_as(&forged, c.addr(acc_i), acc_id).await;
        assert!(
            quic_refused(r).await,
            "a forged certificate joined the QUIC pool"
        );
        // Expecting the acceptor's key at another masternode: our side
        // refuses that certificate.
        let other = if acc_i == 0 { 2 } else { 0 };
        let r = quic::dial_as(&creds(&dialer), c.addr(other), acc_id).await;
        assert!(r.is_err(), "accepted the wrong masternode's certificate");
        // The wrong direction: the greater key dials the smaller one, which
        // closes with code 3 after TLS.
        let code = match quic::dial_as(&creds(&acceptor), c.addr(dial_i), key_of(&dialer).0).await {
            Ok(p) => tokio::time::timeout(WAIT, p.closed()).await.unwrap(),
            Err(e) => e.close_code(),
        };
        assert_eq!(code, Some(quic::CLOSE_DIRECTION));
        // Control: the registered dialer key completes, and the acceptor
        // opens its streams for it.
        let p = quic::dial_as(&creds(&dialer), c.addr(acc_i), acc_id)
            .await
            .expect("the registered key is accepted");
        let first = tokio::time::timeout(WAIT, p.first_stream())
            .await
            .unwrap()
            .expect("the acceptor served the registered key");
        let _ = first;
        p.close();
    });
    // Our control connection replaced the real one for a moment; the real
    // dialer reconnects, and the cluster keeps finalizing through both
    // attacked masternodes.
    c.wait_connected(4);
    rt().block_on(async {
        payment_still_finalizes(&c, 0, acc_i).await;
        payment_still_finalizes(&c, 2, dial_i).await;
    });
    time_wallet_prints_the_refusal(&c);
}

/// The TCP pool: its port speaks only TLS 1.3 with a certificate of the
/// expected registered key, proved by its CertificateVerify.
#[test]
fn tcp_pool_accepts_only_registered_keys_in_the_dial_direction() {
    use time_net::pool::handshake::{dial_as, dial_with};
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start_with(4, "peer_transport = \"tcp\"\n");
    let pool_addr = |i: usize| {
        let a = c.addr(i);
        SocketAddr::new(a.ip(), a.port() + 1)
    };
    let (dialer, acceptor, dial_i, acc_i) = dial_pair(&c);
    let acc_id = key_of(&acceptor).0;
    rt().block_on(async {
        listener_refuses_masternodes(&c).await;
        replayed_proofs(&c).await;
        refusals_explained(&c).await;
        // The v1 plaintext pool handshake claiming the dialer's key: the
        // acceptor waits for a TLS ClientHello and closes.
        let mut s = TcpStream::connect(pool_addr(acc_i)).await.unwrap();
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut v1 = vec![73u8, 0, 0, 0, 1];
            v1.extend_from_slice(&key_of(&dialer).0);
            v1.extend_from_slice(&[5; 32]);
            v1.extend_from_slice(&[0; 8]);
            s.write_all(&v1).await.unwrap();
            let mut buf = [0u8; 256];
            let n = tokio::time::timeout(WAIT, s.read(&mut buf))
                .await
                .unwrap()
                .unwrap_or(0);
            assert!(
                n == 0 || buf[0] == 0x15,
                "a plaintext pool hello got an answer other than a TLS alert"
            );
        }
        // TLS with an unregistered key: refused.
        let outsider = KeyFile::generate();
        let s = TcpStream::connect(pool_addr(acc_i)).await.unwrap();
        let r = tokio::time::timeout(WAIT, dial_as(&outsider.to_bytes(), s, 1, acc_id)).await;
        assert!(
            matches!(r, Ok(Err(_))),
            "an unregistered key joined the TCP pool"
        );
        // A forged identity: the dialer's key in the certificate, the
        // outsider's CertificateVerify.
        let forged = Credentials::claiming(&outsider.to_bytes(), &key_of(&dialer).0).unwrap();
        let s = TcpStream::connect(pool_addr(acc_i)).await.unwrap();
        let r = tokio::time::timeout(WAIT, dial_with(&forged, s, 1, acc_id)).await;
        assert!(
            matches!(r, Ok(Err(_))),
            "a forged certificate joined the TCP pool"
        );
        // The wrong direction: the greater key dialing the smaller one is
        // refused after TLS, before the exchange completes.
        let s = TcpStream::connect(pool_addr(dial_i)).await.unwrap();
        let r = tokio::time::timeout(WAIT, dial_as(&acceptor.to_bytes(), s, 1, key_of(&dialer).0))
            .await;
        assert!(
            matches!(r, Ok(Err(_))),
            "the TCP pool accepted the wrong dial direction"
        );
        // TLS expecting the acceptor's key at another masternode's pool
        // port: the dialer refuses that certificate.
        let other = if acc_i == 0 { 2 } else { 0 };
        let s = TcpStream::connect(pool_addr(other)).await.unwrap();
        let r = tokio::time::timeout(WAIT, dial_as(&dialer.to_bytes(), s, 1, acc_id)).await;
        assert!(
            matches!(r, Ok(Err(_))),
            "accepted the wrong masternode's certificate"
        );
        // Control: the real dialer key completes the handshake.
        let s = TcpStream::connect(pool_addr(acc_i)).await.unwrap();
        let (auth, tls) = dial_as(&dialer.to_bytes(), s, 1, acc_id)
            .await
            .expect("the registered key is accepted");
        assert_eq!(auth.peer, acc_id);
        drop(tls);
    });
    // Our control connection replaced the real one for a moment; the real
    // dialer reconnects, and the cluster keeps finalizing.
    c.wait_connected(4);
    rt().block_on(async {
        payment_still_finalizes(&c, 1, acc_i).await;
        payment_still_finalizes(&c, 3, dial_i).await;
    });
}
