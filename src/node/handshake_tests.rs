//! The listener's side of the node handshake in one process, over in-memory
//! pipes: a wallet session, the refusal of the masternode role before
//! anything is signed, a listener's proof that cannot be relayed, and
//! refusals told with `Error` frames.

use super::*;
use crate::protocol::message::verify_handshake;

type Reader = FrameReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>;
type Writer = FrameWriter<tokio::io::WriteHalf<tokio::io::DuplexStream>>;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn identity(seed: u8) -> Identity {
    Identity {
        chain_id: 9,
        key: key(seed),
        me: PublicKey::from_signing(&key(seed)),
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
    tokio::task::JoinHandle<Result<(), LinkError>>,
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
async fn a_wallet_gets_the_listeners_proof_over_this_connection() {
    let (task, (mut r, mut w)) = listen(identity(2));
    let ours = hello_as(PublicKey::default(), Role::Wallet, [3; 32]);
    w.send(&Message::Hello(ours.clone()).to_bytes())
        .await
        .unwrap();
    let Message::Hello(theirs) = recv(&mut r).await else {
        panic!("no hello");
    };
    let Message::HelloAuth(proof) = recv(&mut r).await else {
        panic!("no proof");
    };
    assert_eq!(theirs.public_key, PublicKey::from_signing(&key(2)));
    assert!(verify_handshake(Side::Acceptor, &ours, &theirs, &proof));
    task.await.unwrap().unwrap();
}

/// Masternodes talk only over the peer pool: the masternode role is refused
/// with `PEER_POOL_ONLY` whatever key it claims (registered, unregistered,
/// the listener's own), and the listener signs nothing first, so there is
/// nothing to relay.
#[tokio::test]
async fn the_masternode_role_is_refused_before_anything_is_signed() {
    for claimed in [1u8, 2, 7] {
        let (task, (mut r, mut w)) = listen(identity(2));
        let claim = hello_as(
            PublicKey::from_signing(&key(claimed)),
            Role::Masternode,
            [5; 32],
        );
        w.send(&Message::Hello(claim).to_bytes()).await.unwrap();
        match recv(&mut r).await {
            Message::Error { code, detail } => {
                assert_eq!(code, refusal::PEER_POOL_ONLY);
                assert!(detail.contains("peer pool"), "{detail}");
            }
            m => panic!("expected an error frame first, got {m:?}"),
        }
        assert!(
            r.read_frame().await.is_err(),
            "the listener kept the connection open"
        );
        let res = task.await.unwrap();
        assert!(
            matches!(
                res,
                Err(LinkError::Refusing {
                    code: refusal::PEER_POOL_ONLY,
                    ..
                })
            ),
            "{res:?}"
        );
    }
}

/// The v1 attack's other half: what A signs for a wallet carrying B's nonce
/// (and even B's key) is an acceptor proof over A's own connection, never a
/// proof for any other transcript.
#[tokio::test]
async fn a_proof_for_a_wallet_verifies_on_no_other_connection() {
    let a_key = PublicKey::from_signing(&key(1));
    let b_key = PublicKey::from_signing(&key(2));
    let b_hello = hello_as(b_key, Role::Masternode, [0x66; 32]);
    let claim = hello_as(a_key, Role::Masternode, [0x55; 32]);
    for wallet_hello in [
        hello_as(PublicKey::default(), Role::Wallet, b_hello.nonce),
        hello_as(b_key, Role::Wallet, b_hello.nonce),
    ] {
        let (to_a, (mut ar, mut aw)) = listen(identity(1));
        aw.send(&Message::Hello(wallet_hello.clone()).to_bytes())
            .await
            .unwrap();
        let Message::Hello(a_hello) = recv(&mut ar).await else {
            panic!("A did not answer with a hello");
        };
        let Message::HelloAuth(a_proof) = recv(&mut ar).await else {
            panic!("A did not prove its key to the wallet");
        };
        to_a.await.unwrap().unwrap();
        assert!(verify_handshake(
            Side::Acceptor,
            &wallet_hello,
            &a_hello,
            &a_proof
        ));
        assert!(!verify_handshake(Side::Dialer, &claim, &b_hello, &a_proof));
        assert!(!verify_handshake(
            Side::Acceptor,
            &claim,
            &b_hello,
            &a_proof
        ));
        // Replayed on a fresh connection with the same wallet hello: the
        // listener's new nonce makes it another transcript.
        let (again, (mut r2, mut w2)) = listen(identity(1));
        w2.send(&Message::Hello(wallet_hello.clone()).to_bytes())
            .await
            .unwrap();
        let Message::Hello(a_hello2) = recv(&mut r2).await else {
            panic!("no hello");
        };
        let _ = recv(&mut r2).await;
        again.await.unwrap().unwrap();
        assert!(!verify_handshake(
            Side::Acceptor,
            &wallet_hello,
            &a_hello2,
            &a_proof
        ));
    }
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
            refusal::PEER_POOL_ONLY,
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
