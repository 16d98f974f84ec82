//! Hostile handshakes against a cluster of real masternode processes: the
//! relay of a masternode's proof through a wallet connection (issue 9), a
//! replayed proof, refusals with their `Error` codes, and the TCP pool's
//! port (TLS bound to the registered keys), over plain links and over the
//! TCP pool. Each test ends with a payment, so the cluster kept working
//! through the attacks.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{address, pay, Cluster, RawPeer, SERIAL};
use ed25519_dalek::SigningKey;
use time_net::{FrameReader, FrameWriter};
use timecoin::node::keyfile::KeyFile;
use timecoin::protocol::message::{
    refusal, sign_handshake, verify_handshake, Hello, Message, Role, Side, PROTOCOL_VERSION,
};
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

/// The issue 9 attack, both ways of getting A to sign: the attacker (no key)
/// dials B claiming A's key, dials A (as a wallet, or as a masternode
/// claiming B's key) with B's nonce, and hands A's proof to B. B must refuse
/// it with `BAD_SIGNATURE` and close, before reading any masternode message.
async fn relay_attack(c: &Cluster) {
    let chain = c.chain_id();
    let (a, b) = (c.masternode_key(0), c.masternode_key(1));
    for role_at_a in [Role::Wallet, Role::Masternode] {
        let mut to_b = Raw::connect(c.addr(1)).await;
        let claim = hello(chain, Role::Masternode, key_of(&a));
        let (b_hello, b_proof) = to_b.hello(&claim).await;
        assert_eq!(b_hello.public_key, key_of(&b));
        assert!(verify_handshake(Side::Acceptor, &claim, &b_hello, &b_proof));
        // A signs over whatever nonce the attacker hands it.
        let mut to_a = Raw::connect(c.addr(0)).await;
        let relay_hello = Hello {
            nonce: b_hello.nonce,
            ..hello(
                chain,
                role_at_a,
                match role_at_a {
                    Role::Wallet => PublicKey::default(),
                    _ => key_of(&b),
                },
            )
        };
        let (_a_hello, a_proof) = to_a.hello(&relay_hello).await;
        to_b.send(&Message::HelloAuth(a_proof)).await;
        for m in impostor_traffic() {
            // B may already have closed; a failed write is fine.
            let _ = to_b.w.send(&m.to_bytes()).await;
        }
        assert_eq!(
            to_b.verdict().await,
            Verdict::Refused(refusal::BAD_SIGNATURE),
            "B accepted a proof relayed from A's {role_at_a:?} connection"
        );
    }
    // The attacker's own key, claiming A's: also refused.
    let outsider = KeyFile::generate();
    let mut to_b = Raw::connect(c.addr(1)).await;
    let claim = hello(chain, Role::Masternode, key_of(&a));
    let (b_hello, _) = to_b.hello(&claim).await;
    let forged = sign_handshake(&outsider, Side::Dialer, &claim, &b_hello);
    to_b.send(&Message::HelloAuth(forged)).await;
    assert_eq!(
        to_b.verdict().await,
        Verdict::Refused(refusal::BAD_SIGNATURE)
    );
    // Control: the real A's proof on this connection is accepted (B serves it).
    let mut honest = Raw::connect(c.addr(1)).await;
    let ours = hello(chain, Role::Masternode, key_of(&a));
    let (b_hello, _) = honest.hello(&ours).await;
    honest
        .send(&Message::HelloAuth(sign_handshake(
            &a,
            Side::Dialer,
            &ours,
            &b_hello,
        )))
        .await;
    honest.send(&Message::Ping(1)).await;
    assert_eq!(honest.verdict().await, Verdict::Open);
    let log = c.log(1);
    assert!(
        log.contains("handshake signature invalid (code 5)"),
        "B logs the refusal:\n{log}"
    );
}

/// A proof recorded on one connection is refused on another: A's genuine
/// dialer proof replayed to B, and B's genuine proof to a wallet replayed to
/// another wallet by a fake masternode.
async fn replayed_proofs(c: &Cluster) {
    let chain = c.chain_id();
    let a = c.masternode_key(0);
    // Record a genuine handshake of A with B.
    let mut first = Raw::connect(c.addr(1)).await;
    let ours = hello(chain, Role::Masternode, key_of(&a));
    let (b_hello, _) = first.hello(&ours).await;
    let recorded = sign_handshake(&a, Side::Dialer, &ours, &b_hello);
    first.send(&Message::HelloAuth(recorded)).await;
    // Replay it, with the very same hello, on a new connection.
    let mut replay = Raw::connect(c.addr(1)).await;
    let _ = replay.hello(&ours).await;
    replay.send(&Message::HelloAuth(recorded)).await;
    assert_eq!(
        replay.verdict().await,
        Verdict::Refused(refusal::BAD_SIGNATURE)
    );
    drop(first);

    // B's proof to one wallet, replayed to another by a fake masternode.
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
    // The masternode role with an unregistered key: refused before the
    // masternode signs anything.
    let outsider = KeyFile::generate();
    let mut raw = Raw::connect(c.addr(0)).await;
    raw.send(&Message::Hello(hello(
        chain,
        Role::Masternode,
        key_of(&outsider),
    )))
    .await;
    assert_eq!(
        raw.verdict().await,
        Verdict::Refused(refusal::NOT_REGISTERED)
    );
    assert!(RawPeer::connect(c.addr(0), chain, &outsider).await.is_err());
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

async fn payment_still_finalizes(c: &Cluster, coin: u32) {
    let (a, b) = (c.wallet_key(0), c.wallet_key(1));
    let tx = pay(c.chain_id(), &a, 0, coin, address(&b), COIN);
    match c.client(2).await.submit(&tx, WAIT).await.unwrap() {
        Outcome::Finalized { proof, .. } => {
            assert!(proof.verify(c.chain_id(), &c.registry).is_ok())
        }
        Outcome::Rejected { detail, .. } => panic!("rejected: {detail}"),
    }
}

/// Plain links: masternodes talk over the very listener under attack.
#[test]
fn relay_replay_and_refusals_over_plain_links() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start_with(4, "peer_transport = \"links\"\nfast_path = \"off\"\n");
    rt().block_on(async {
        relay_attack(&c).await;
        replayed_proofs(&c).await;
        refusals_explained(&c).await;
        payment_still_finalizes(&c, 0).await;
    });
    time_wallet_prints_the_refusal(&c);
}

/// The TCP pool: its port speaks only TLS 1.3 with a certificate of the
/// expected registered key; the P2P listener (which also takes
/// masternode-role connections in pool mode) refuses the relay as above.
#[test]
fn tcp_pool_accepts_only_registered_keys_and_the_listener_refuses_the_relay() {
    use time_net::pool::handshake::dial_as;
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start_with(4, "peer_transport = \"tcp\"\n");
    let pool_addr = |i: usize| {
        let a = c.addr(i);
        SocketAddr::new(a.ip(), a.port() + 1)
    };
    rt().block_on(async {
        relay_attack(&c).await;
        replayed_proofs(&c).await;
        refusals_explained(&c).await;
        // Pick a (dialer, acceptor) pair in the pool's dial direction.
        let (x, y) = (c.masternode_key(0), c.masternode_key(1));
        let (dialer, acceptor, acc_i) = if key_of(&x).0 < key_of(&y).0 {
            (x, y, 1)
        } else {
            (y, x, 0)
        };
        let acc_id = key_of(&acceptor).0;
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
    rt().block_on(payment_still_finalizes(&c, 1));
}
