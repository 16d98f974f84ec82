//! Both ends of the node handshake in one process, over in-memory pipes: an
//! honest link, the relay of a listener's proof from a wallet connection,
//! a replayed proof, and refusals told with `Error` frames.

use super::*;
use crate::protocol::registry::{Masternode, Tier};

type Reader = FrameReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>;
type Writer = FrameWriter<tokio::io::WriteHalf<tokio::io::DuplexStream>>;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn registry(seeds: &[u8]) -> Registry {
    Registry::new(
        1,
        seeds
            .iter()
            .map(|&s| Masternode {
                key: PublicKey::from_signing(&key(s)),
                address: "127.0.0.1:1".into(),
                tier: Tier::Bronze,
            })
            .collect(),
    )
    .unwrap()
}

fn identity(seed: u8) -> Identity {
    Identity {
        chain_id: 9,
        key: key(seed),
        me: PublicKey::from_signing(&key(seed)),
        registry: registry(&[1, 2, 3]),
    }
}

/// Two framed ends of one in-memory connection.
fn pipe() -> ((Reader, Writer), (Reader, Writer)) {
    let (x, y) = tokio::io::duplex(1 << 16);
    let (xr, xw) = tokio::io::split(x);
    let (yr, yw) = tokio::io::split(y);
    (
        (FrameReader::new(xr, 4096), FrameWriter::new(xw)),
        (FrameReader::new(yr, 4096), FrameWriter::new(yw)),
    )
}

/// Runs `accept_side` for `id` on one end of a pipe (telling refusals), and
/// hands the other end to the caller.
fn listen(
    id: Identity,
) -> (
    tokio::task::JoinHandle<Result<Inbound, LinkError>>,
    (Reader, Writer),
) {
    let ((mut r, mut w), theirs) = pipe();
    let task = tokio::spawn(async move {
        let res = accept_side(&id, &mut r, &mut w).await;
        if let Err(e) = &res {
            refuse(&mut r, &mut w, e).await;
        }
        res
    });
    (task, theirs)
}

async fn recv(r: &mut Reader) -> Message {
    Message::decode(r.read_frame().await.unwrap()).unwrap()
}

fn hello_as(public_key: PublicKey, role: Role, nonce: [u8; 32]) -> Hello {
    Hello {
        chain_id: 9,
        protocol_version: PROTOCOL_VERSION,
        role,
        public_key,
        nonce,
    }
}

#[tokio::test]
async fn honest_link_authenticates_both_keys() {
    let (a, b) = (identity(1), identity(2));
    let b_key = b.me;
    let (task, (mut r, mut w)) = listen(b);
    dial_side(&a, &b_key, &mut r, &mut w).await.unwrap();
    assert_eq!(task.await.unwrap().unwrap(), Inbound::Masternode(a.me));
}

#[tokio::test]
async fn dialer_refuses_a_listener_with_another_key() {
    let (a, c) = (identity(1), identity(3));
    let (task, (mut r, mut w)) = listen(c);
    let b_key = PublicKey::from_signing(&key(2));
    let e = dial_side(&a, &b_key, &mut r, &mut w).await.unwrap_err();
    assert!(
        matches!(
            e,
            LinkError::Refusing {
                code: refusal::WRONG_KEY,
                ..
            }
        ),
        "{e}"
    );
    // The listener never got a proof from us.
    refuse(&mut r, &mut w, &e).await;
    let res = task.await.unwrap();
    assert!(
        matches!(
            res,
            Err(LinkError::RefusedBy {
                code: refusal::WRONG_KEY,
                ..
            })
        ),
        "{res:?}"
    );
}

/// The v1 attack: claim A's key to B, get A to sign on a wallet connection,
/// hand A's proof to B. With v2 nothing A signs for a wallet, nor A's proof
/// from another connection, is a dialer proof on the attacker's connection.
#[tokio::test]
async fn relayed_and_replayed_proofs_are_refused() {
    let a_key = PublicKey::from_signing(&key(1));
    // Attacker -> B, claiming to be A.
    let (to_b, (mut br, mut bw)) = listen(identity(2));
    let claim = hello_as(a_key, Role::Masternode, [0x55; 32]);
    bw.send(&Message::Hello(claim.clone()).to_bytes())
        .await
        .unwrap();
    let Message::Hello(b_hello) = recv(&mut br).await else {
        panic!("B did not answer with a hello");
    };
    assert!(matches!(recv(&mut br).await, Message::HelloAuth(_)));
    // Attacker -> A as a wallet, carrying B's nonce (and, worse, B's key).
    for wallet_hello in [
        hello_as(PublicKey::default(), Role::Wallet, b_hello.nonce),
        hello_as(b_hello.public_key, Role::Wallet, b_hello.nonce),
    ] {
        let (to_a, (mut ar, mut aw)) = listen(identity(1));
        aw.send(&Message::Hello(wallet_hello).to_bytes())
            .await
            .unwrap();
        let _a_hello = recv(&mut ar).await;
        let Message::HelloAuth(a_proof) = recv(&mut ar).await else {
            panic!("A did not prove its key to the wallet");
        };
        assert_eq!(to_a.await.unwrap().unwrap(), Inbound::Wallet);
        assert!(!verify_handshake(Side::Dialer, &claim, &b_hello, &a_proof));
        assert!(!verify_handshake(
            Side::Acceptor,
            &claim,
            &b_hello,
            &a_proof
        ));
    }
    // A genuine dialer proof by A, from A's own earlier connection to B.
    let replayed = {
        let (task, (mut r, mut w)) = listen(identity(2));
        let a = identity(1);
        let b_key = PublicKey::from_signing(&key(2));
        // Record what A sends: run A's side and capture its HelloAuth.
        let ((mut ar, mut aw), (mut mr, mut mw)) = pipe();
        let a_side = async move {
            dial_side(&a, &b_key, &mut ar, &mut aw).await.unwrap();
        };
        let relay = async {
            let h = mr.read_frame().await.unwrap().to_vec();
            w.send(&h).await.unwrap();
            let bh = r.read_frame().await.unwrap().to_vec();
            let ba = r.read_frame().await.unwrap().to_vec();
            mw.send(&bh).await.unwrap();
            mw.send(&ba).await.unwrap();
            let proof = mr.read_frame().await.unwrap().to_vec();
            w.send(&proof).await.unwrap();
            proof
        };
        let ((), proof) = tokio::join!(a_side, relay);
        assert_eq!(task.await.unwrap().unwrap(), Inbound::Masternode(a_key));
        proof
    };
    bw.send(&replayed).await.unwrap();
    match recv(&mut br).await {
        Message::Error { code, .. } => assert_eq!(code, refusal::BAD_SIGNATURE),
        m => panic!("expected an error frame, got {m:?}"),
    }
    assert!(br.read_frame().await.is_err(), "B kept the connection open");
    let res = to_b.await.unwrap();
    assert!(
        matches!(
            res,
            Err(LinkError::Refusing {
                code: refusal::BAD_SIGNATURE,
                ..
            })
        ),
        "{res:?}"
    );
}

#[tokio::test]
async fn refusals_come_with_their_code() {
    let cases: Vec<(Hello, u16)> = vec![
        (
            Hello {
                chain_id: 8,
                ..hello_as(PublicKey::default(), Role::Wallet, [1; 32])
            },
            refusal::WRONG_CHAIN,
        ),
        (
            Hello {
                protocol_version: 1,
                ..hello_as(PublicKey::default(), Role::Wallet, [1; 32])
            },
            refusal::UNSUPPORTED_VERSION,
        ),
        (
            hello_as(PublicKey::from_signing(&key(7)), Role::Masternode, [1; 32]),
            refusal::NOT_REGISTERED,
        ),
        (
            // Our own key.
            hello_as(PublicKey::from_signing(&key(2)), Role::Masternode, [1; 32]),
            refusal::NOT_REGISTERED,
        ),
    ];
    for (h, want) in cases {
        let (task, (mut r, mut w)) = listen(identity(2));
        w.send(&Message::Hello(h).to_bytes()).await.unwrap();
        match recv(&mut r).await {
            Message::Error { code, detail } => {
                assert_eq!(code, want, "{detail}");
                if want == refusal::WRONG_CHAIN {
                    assert_eq!(detail, "this masternode serves chain 9, you asked for 8");
                }
            }
            m => panic!("expected an error frame, got {m:?}"),
        }
        assert!(task.await.unwrap().is_err());
    }
    // Not a hello at all.
    let (task, (mut r, mut w)) = listen(identity(2));
    w.send(&Message::Ping(1).to_bytes()).await.unwrap();
    assert!(matches!(
        recv(&mut r).await,
        Message::Error {
            code: refusal::PROTOCOL,
            ..
        }
    ));
    assert!(task.await.unwrap().is_err());
}
