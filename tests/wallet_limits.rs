//! Limits on what a wallet controls, against a real 4-masternode cluster:
//! subscriptions capped per session (and told so), connections capped per
//! source IP, and the node still finalizing payments after both.

mod common;

use std::time::Duration;

use common::{address, pay, Cluster, SERIAL};
use timecoin::masternode::router::{error_code, MAX_SUBSCRIPTIONS_PER_SESSION};
use timecoin::node::wallet_server::MAX_WALLET_CONNECTIONS_PER_IP;
use timecoin::protocol::message::Message;
use timecoin::protocol::types::{Address, OutPoint, COIN};
use timecoin::protocol::utxo::UtxoState;
use timecoin::wallet::{Outcome, WalletClient};

const WAIT: Duration = Duration::from_secs(20);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn made_up(i: u32) -> Address {
    let mut a = [0xa5u8; 20];
    a[..4].copy_from_slice(&i.to_le_bytes());
    Address(a)
}

/// The next frame, which must be an `Error` with `code`; returns its detail.
async fn expect_error(c: &mut WalletClient, code: u16) -> String {
    match c.recv_timeout(WAIT).await.unwrap() {
        Message::Error { code: got, detail } => {
            assert_eq!(got, code, "error code; detail: {detail}");
            detail
        }
        m => panic!("expected an error frame, got {}", m.name()),
    }
}

#[test]
fn wallet_limits_hold_and_payments_still_finalize() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start(4);
    rt().block_on(async {
        let (a, b) = (c.wallet_key(0), c.wallet_key(1));
        let payee = address(&b);

        // 1. One session subscribes the payee and 2,000 made-up addresses,
        // with duplicates, in frames of at most 1,000 (the decoding cap is
        // 1,024 per frame).
        let mut w = c.client(0).await;
        let mut first: Vec<Address> = vec![payee];
        first.extend((0..999).map(made_up));
        w.send(&Message::WalletSubscribe(first)).await.unwrap();
        // Nothing refused yet: the next answer is the status.
        w.status().await.unwrap();
        let mut second: Vec<Address> = (0..200).map(made_up).collect(); // duplicates
        second.push(payee); // duplicate
        second.extend((999..1_799).map(made_up));
        w.send(&Message::WalletSubscribe(second)).await.unwrap();
        let detail = expect_error(&mut w, error_code::SUBSCRIPTION_LIMIT).await;
        // 1,000 held; 24 of the 800 new ones fit.
        assert!(detail.contains("776 of 1001"), "{detail}");
        assert!(
            detail.contains(&format!("has {MAX_SUBSCRIPTIONS_PER_SESSION}")),
            "{detail}"
        );
        let mut third: Vec<Address> = (1_799..2_000).map(made_up).collect();
        third.extend((0..300).map(made_up)); // duplicates, not refused
        w.send(&Message::WalletSubscribe(third)).await.unwrap();
        let detail = expect_error(&mut w, error_code::SUBSCRIPTION_LIMIT).await;
        assert!(detail.contains("201 of 501"), "{detail}");
        // The session still answers.
        w.status().await.unwrap();

        // 2. Connections from this IP: `w` and 63 more are served, the
        // extra ones are refused right after their handshake.
        tokio::time::sleep(Duration::from_millis(300)).await; // earlier probes gone
        let mut held = Vec::new();
        for _ in 1..MAX_WALLET_CONNECTIONS_PER_IP {
            let mut x = c.client(0).await;
            x.status().await.unwrap();
            held.push(x);
        }
        for _ in 0..4 {
            let mut x = c.client(0).await;
            let detail = expect_error(&mut x, error_code::CONNECTION_LIMIT).await;
            assert!(detail.contains("from this address"), "{detail}");
            assert!(
                x.recv_timeout(WAIT).await.is_err(),
                "refused connection stays open"
            );
        }
        // A place freed is a place taken again.
        drop(held.pop());
        let mut again = None;
        for _ in 0..100 {
            let mut x = c.client(0).await;
            match x.recv_timeout(Duration::from_millis(200)).await {
                Ok(Message::Error { code, .. }) if code == error_code::CONNECTION_LIMIT => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => {
                    again = Some(x);
                    break;
                }
                Ok(m) => panic!("unexpected {}", m.name()),
            }
        }
        let mut again = again.expect("a freed connection place is reused");
        again.status().await.unwrap();
        drop(again);
        drop(held);

        // 3. A payment through the same node, by the capped session: it
        // finalizes and the session hears its subscription's notifications.
        let tx = pay(c.chain_id(), &a, 0, 0, payee, 5 * COIN);
        let txid = tx.txid();
        match w.submit(&tx, WAIT).await.unwrap() {
            Outcome::Finalized { proof, .. } => {
                assert!(proof.verify(c.chain_id(), &c.registry).unwrap() >= c.registry.quorum());
            }
            Outcome::Rejected { detail, .. } => panic!("rejected: {detail}"),
        }
        match w.recv_timeout(WAIT).await.unwrap() {
            Message::NewTransactionNotification { txid: t, .. } => assert_eq!(t, txid),
            m => panic!("expected a transaction notification, got {}", m.name()),
        }
        match w.recv_timeout(WAIT).await.unwrap() {
            Message::UtxoStateNotification { outpoint, entry } => {
                assert_eq!(outpoint, OutPoint { txid, vout: 0 });
                assert_eq!(entry.state, UtxoState::Unspent);
                assert_eq!(entry.output.address, payee);
            }
            m => panic!("expected a utxo notification, got {}", m.name()),
        }
    });
    assert!(c.log(0).contains("wallet limit hit"), "limits are logged");
}
