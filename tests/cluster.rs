//! A 4-masternode cluster of real processes, real TCP sockets and real LMDB
//! storage on 127.0.0.1. Asserts behaviour, never timings.

mod common;

use std::time::Duration;

use common::{address, pay, Cluster, RawMasternode, SERIAL};
use time_net::priority::Priority;
use timecoin::node::genesis_file::genesis_outpoint;
use timecoin::protocol::message::Message;
use timecoin::protocol::types::{PublicKey, COIN};
use timecoin::protocol::utxo::UtxoState;
use timecoin::protocol::validation::RejectCode;
use timecoin::protocol::vote::{Decision, VoteBatch, VoteItem};
use timecoin::wallet::Outcome;
use tokio::io::AsyncWriteExt;

const WAIT: Duration = Duration::from_secs(20);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn payment_finalizes_on_every_masternode_with_a_verifying_proof() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start(4);
    rt().block_on(async {
        let (a, b) = (c.wallet_key(0), c.wallet_key(1));
        let tx = pay(c.chain_id(), &a, 0, 0, address(&b), 5 * COIN);
        let txid = tx.txid();
        // The recipient watches its address at another masternode.
        let mut watcher = c.client(2).await;
        watcher
            .send(&Message::WalletSubscribe(vec![address(&b)]))
            .await
            .unwrap();
        // The session handles messages in order: once this answers, the
        // subscription is in place.
        watcher.status().await.unwrap();
        let mut w = c.client(0).await;
        match w.submit(&tx, WAIT).await.unwrap() {
            Outcome::Finalized { proof, .. } => {
                let weight = proof.verify(c.chain_id(), &c.registry).unwrap();
                assert!(weight >= c.registry.quorum());
            }
            Outcome::Rejected { detail, .. } => panic!("rejected: {detail}"),
        }
        for i in 0..4 {
            let st = c
                .wait_state(i, genesis_outpoint(0, 0), |e| {
                    matches!(
                        common::final_view(e),
                        Some(UtxoState::SpentFinalized { .. })
                    )
                })
                .await;
            assert_eq!(
                common::final_view(st),
                Some(UtxoState::SpentFinalized { txid }),
                "masternode {i}"
            );
            let out = c
                .wait_state(
                    i,
                    timecoin::protocol::types::OutPoint { txid, vout: 0 },
                    |e| e.is_some(),
                )
                .await
                .expect("new output known everywhere");
            assert_eq!(out.output.amount, 5 * COIN);
            assert_eq!(out.output.address, address(&b));
        }
        // The watcher heard the transaction and the new output's state.
        match watcher.recv_timeout(WAIT).await.unwrap() {
            Message::NewTransactionNotification { txid: t, .. } => assert_eq!(t, txid),
            m => panic!("expected a transaction notification, got {}", m.name()),
        }
        match watcher.recv_timeout(WAIT).await.unwrap() {
            Message::UtxoStateNotification { outpoint, entry } => {
                assert_eq!(
                    outpoint,
                    timecoin::protocol::types::OutPoint { txid, vout: 0 }
                );
                assert_eq!(entry.state, UtxoState::Unspent);
                assert_eq!(entry.output.amount, 5 * COIN);
            }
            m => panic!("expected a utxo notification, got {}", m.name()),
        }
        // The recipient's balance at another masternode includes the payment.
        let mut w3 = c.client(3).await;
        let coins = w3.utxos(address(&b)).await.unwrap();
        assert!(coins.iter().any(|(op, _)| op.txid == txid));
        // Resubmitting the same transaction returns the same proof.
        match w3.submit(&tx, WAIT).await.unwrap() {
            Outcome::Finalized { proof, .. } => assert_eq!(proof.txid, txid),
            Outcome::Rejected { detail, .. } => panic!("resubmit rejected: {detail}"),
        }
    });
}

#[test]
fn conflicting_spends_at_the_same_moment_never_both_finalize() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start(4);
    const RACES: u32 = 40;
    let (mut one_final, mut none_final) = (0, 0);
    rt().block_on(async {
        let (a, b, d) = (c.wallet_key(0), c.wallet_key(1), c.wallet_key(2));
        for race in 0..RACES {
            let t1 = pay(c.chain_id(), &a, 0, race, address(&b), COIN);
            let t2 = pay(c.chain_id(), &a, 0, race, address(&d), 2 * COIN);
            let (n1, n2) = ((race % 4) as usize, ((race + 1 + race % 3) % 4) as usize);
            let mut w1 = c.client(n1).await;
            let mut w2 = c.client(n2).await;
            let (o1, o2) = tokio::join!(w1.submit(&t1, WAIT), w2.submit(&t2, WAIT));
            let (o1, o2) = (o1.unwrap(), o2.unwrap());
            let f1 = matches!(o1, Outcome::Finalized { .. });
            let f2 = matches!(o2, Outcome::Finalized { .. });
            assert!(
                !(f1 && f2),
                "race {race}: both conflicting transactions finalized"
            );
            // Every loser hears why.
            for o in [&o1, &o2] {
                if let Outcome::Rejected { reason, detail, .. } = o {
                    assert!(
                        matches!(
                            reason,
                            RejectCode::InputLocked
                                | RejectCode::ConflictFinalized
                                | RejectCode::InputSpent
                        ),
                        "race {race}: unexpected reason {reason:?}: {detail}"
                    );
                    assert!(!detail.is_empty());
                }
            }
            if f1 || f2 {
                one_final += 1;
            } else {
                none_final += 1;
            }
            // All masternodes agree on the coin: at most one spender final.
            let winner = if f1 {
                Some(t1.txid())
            } else if f2 {
                Some(t2.txid())
            } else {
                None
            };
            if let Some(w) = winner {
                for i in 0..4 {
                    let st = c
                        .wait_state(i, genesis_outpoint(0, race), |e| {
                            matches!(
                                common::final_view(e),
                                Some(UtxoState::SpentFinalized { .. })
                            )
                        })
                        .await;
                    assert_eq!(
                        common::final_view(st),
                        Some(UtxoState::SpentFinalized { txid: w })
                    );
                }
            }
        }
    });
    eprintln!("conflicting-spend races: {RACES} run, {one_final} with one side final, {none_final} with both rejected, 0 with both final");
    assert_eq!(one_final + none_final, RACES);
}

#[test]
fn killed_masternode_keeps_its_state_and_never_votes_for_the_conflict() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(4);
    let chain = c.chain_id();
    let (a, b, d) = (c.wallet_key(0), c.wallet_key(1), c.wallet_key(2));
    let rt = rt();
    // A payment that finalizes before the crash.
    let done = pay(chain, &a, 0, 10, address(&b), COIN);
    rt.block_on(async {
        let o = c.client(0).await.submit(&done, WAIT).await.unwrap();
        assert!(matches!(o, Outcome::Finalized { .. }));
        c.wait_state(0, genesis_outpoint(0, 10), |e| {
            matches!(
                common::final_view(e),
                Some(UtxoState::SpentFinalized { .. })
            )
        })
        .await;
    });
    // Peers down: masternode 0 locks and votes for A alone; A cannot finalize.
    for i in 1..4 {
        c.kill9(i);
    }
    let ta = pay(chain, &a, 0, 11, address(&b), COIN);
    let tb = pay(chain, &a, 0, 11, address(&d), 3 * COIN);
    rt.block_on(async {
        let mut w = c.client(0).await;
        w.send(&Message::SubmitTransaction(ta.clone()))
            .await
            .unwrap();
        match w.recv_timeout(WAIT).await.unwrap() {
            Message::TransactionAccepted(t) => assert_eq!(t, ta.txid()),
            m => panic!("expected accepted, got {m:?}"),
        }
    });
    // kill -9 right after its vote was made durable and sent (nowhere).
    c.kill9(0);
    for i in 0..4 {
        c.spawn(i);
    }
    c.wait_connected(4);
    rt.block_on(async {
        // State survived: the finalized payment and the lock for A.
        let mut w0 = c.client(0).await;
        let st = w0
            .utxo_states(vec![genesis_outpoint(0, 10), genesis_outpoint(0, 11)])
            .await
            .unwrap();
        assert_eq!(common::final_view(st[0].1), Some(UtxoState::SpentFinalized { txid: done.txid() }));
        // Locked for A, or already final for A: restarted, masternode 0
        // re-announces A and the three others may approve it before this
        // query (they never saw B yet).
        assert!(
            matches!(
                st[1].1.map(|e| e.state),
                Some(UtxoState::Locked { txid } | UtxoState::SpentPending { txid, .. }) if txid == ta.txid()
            ) || common::final_view(st[1].1) == Some(UtxoState::SpentFinalized { txid: ta.txid() }),
            "the lock for A was lost: {:?}",
            st[1].1
        );
        // The conflicting B, straight to masternode 0: refused at once.
        match w0.submit(&tb, WAIT).await.unwrap() {
            Outcome::Rejected { reason, .. } => assert!(
                matches!(reason, RejectCode::InputLocked | RejectCode::InputSpent),
                "{reason:?}"
            ),
            Outcome::Finalized { .. } => panic!("masternode 0 accepted a conflict of its own vote"),
        }
        // B through masternode 1: the three others never saw A and approve B;
        // whatever happens, masternode 0's key is never on B's proof.
        let o = c.client(1).await.submit(&tb, WAIT).await.unwrap();
        let mn0 = PublicKey::from_signing(&c.masternode_key(0));
        if let Outcome::Finalized { proof, .. } = &o {
            assert!(proof.verify(chain, &c.registry).is_ok());
            assert!(proof.votes.iter().all(|v| v.voter != mn0), "masternode 0 approved B");
            // And masternode 0 follows the proof without having voted for it.
            let st = c
                .wait_state(0, genesis_outpoint(0, 11), |e| {
                    matches!(common::final_view(e), Some(UtxoState::SpentFinalized { .. }))
                })
                .await;
            assert_eq!(common::final_view(st), Some(UtxoState::SpentFinalized { txid: tb.txid() }));
        }
    });
    // Masternode 0's own vote log on disk never approves B.
    drop(rt);
    c.kill9(0);
    // Killed: what its store writer had not applied is in the write-ahead
    // log, replayed as a start would.
    let dir = common::data_dir(&c, 0);
    let (store, _) = timecoin::storage::store_writer::recover(
        &dir.join("db"),
        &timecoin::storage::store_writer::wal_dir(&dir),
        Default::default(),
    )
    .unwrap();
    use timecoin::storage::Store;
    let snap = store.load().unwrap();
    let votes: Vec<_> = snap
        .own_votes
        .iter()
        .flat_map(|b| b.items.iter())
        .filter(|i| i.txid == tb.txid() || i.txid == ta.txid())
        .collect();
    assert!(votes
        .iter()
        .any(|i| i.txid == ta.txid() && i.decision == Decision::Approve));
    assert!(!votes
        .iter()
        .any(|i| i.txid == tb.txid() && i.decision == Decision::Approve));
}

#[test]
fn forged_and_unregistered_votes_are_ignored() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(4);
    let chain = c.chain_id();
    // Only masternodes 0 and 3 run; 3 is "Byzantine" (we hold its key).
    c.kill9(1);
    c.kill9(2);
    c.kill9(3);
    let (a, b) = (c.wallet_key(0), c.wallet_key(1));
    let tx = pay(chain, &a, 0, 0, address(&b), COIN);
    let txid = tx.txid();
    let rt = rt();
    rt.block_on(async {
        let mut w = c.client(0).await;
        w.send(&Message::SubmitTransaction(tx.clone()))
            .await
            .unwrap();
        assert!(matches!(
            w.recv_timeout(WAIT).await.unwrap(),
            Message::TransactionAccepted(_)
        ));
        let mn3 = c.masternode_key(3);
        let outsider = timecoin::node::keyfile::KeyFile::generate();
        // An unregistered key cannot even connect as a masternode: the P2P
        // TCP port refuses the masternode role, and the pool refuses its
        // certificate.
        if let Ok(mut p) = RawMasternode::connect(c.addr(0), chain, &outsider).await {
            assert!(
                p.reader.read_frame().await.is_err(),
                "unregistered peer was served"
            );
        }
        let item = vec![VoteItem {
            txid,
            decision: Decision::Approve,
        }];
        // Masternode 3's key over a real pool from this process (its own
        // process is dead), connected to masternode 0.
        let peer = byzantine_pool(&c, 3, 0).await;
        let to = PublicKey::from_signing(&c.masternode_key(0)).0;
        let send = |m: Message| {
            peer.send(&to, Priority::High, bytes::Bytes::from(m.to_bytes()))
                .unwrap()
        };
        // Votes by an unregistered key, and votes claiming to be masternodes
        // 1 and 2 but signed by someone else: with masternode 0's own vote
        // these would make 3 of 4 if counted.
        send(Message::VoteBatch(VoteBatch::sign(
            chain,
            1,
            &outsider,
            item.clone(),
        )));
        for i in [1, 2] {
            let mut forged = VoteBatch::sign(chain, 1, &outsider, item.clone());
            forged.voter = PublicKey::from_signing(&c.masternode_key(i));
            send(Message::VoteBatch(forged));
        }
        // Masternode 3's genuine vote, twice: counts once (2 of 4).
        let genuine = VoteBatch::sign(chain, 1, &mn3, item.clone());
        send(Message::VoteBatch(genuine.clone()));
        send(Message::VoteBatch(genuine));
        // Nothing final: a status round trip orders after the votes above
        // were queued to the core.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let st = c
            .client(0)
            .await
            .utxo_states(vec![genesis_outpoint(0, 0)])
            .await
            .unwrap();
        assert!(
            !matches!(
                common::final_view(st[0].1),
                Some(UtxoState::SpentFinalized { .. })
            ),
            "forged votes finalized a payment"
        );
        // A genuine third vote does finalize it: the forged ones were the difference.
        let mn2 = c.masternode_key(2);
        send(Message::VoteBatch(VoteBatch::sign(chain, 1, &mn2, item)));
        let st = c
            .wait_state(0, genesis_outpoint(0, 0), |e| {
                matches!(
                    common::final_view(e),
                    Some(UtxoState::SpentFinalized { .. })
                )
            })
            .await;
        assert_eq!(
            common::final_view(st),
            Some(UtxoState::SpentFinalized { txid })
        );
    });
}

#[test]
fn one_of_four_down_payments_still_finalize() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(4);
    c.kill9(2);
    let (a, b) = (c.wallet_key(1), c.wallet_key(3));
    rt().block_on(async {
        for (coin, node) in [(0u32, 0usize), (1, 1), (2, 3)] {
            let tx = pay(c.chain_id(), &a, 1, coin, address(&b), COIN);
            match c.client(node).await.submit(&tx, WAIT).await.unwrap() {
                Outcome::Finalized { proof, .. } => {
                    assert!(proof.verify(c.chain_id(), &c.registry).is_ok())
                }
                Outcome::Rejected { detail, .. } => panic!("rejected: {detail}"),
            }
        }
    });
}

#[test]
fn garbage_and_oversized_frames_are_refused_and_the_node_keeps_serving() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start(4);
    let chain = c.chain_id();
    rt().block_on(async {
        // Garbage before any handshake.
        let mut s = tokio::net::TcpStream::connect(c.addr(0)).await.unwrap();
        s.write_all(b"\x05\x00\x00\x00GARBAGE-GARBAGE")
            .await
            .unwrap();
        // An oversized length prefix (1 GiB).
        let mut s2 = tokio::net::TcpStream::connect(c.addr(0)).await.unwrap();
        s2.write_all(&(1u32 << 30).to_le_bytes()).await.unwrap();
        // A registered masternode's key on the P2P TCP port: refused
        // (masternodes use the peer pool), before anything is read from it.
        assert!(
            RawMasternode::connect(c.addr(0), chain, &c.masternode_key(1))
                .await
                .is_err(),
            "the P2P TCP port answered a masternode hello"
        );
        // A wallet that sends a vote batch claiming 2^32 items.
        let mut w = c.client(0).await;
        w.send(&Message::Ping(1)).await.unwrap();
        let mut bogus = vec![0x12];
        bogus.extend_from_slice(&[0u8; 44]);
        bogus.extend_from_slice(&u32::MAX.to_le_bytes());
        let (_r, mut wr) = w.into_split();
        wr.send(&bogus).await.unwrap();
        // Each of those connections is closed by the masternode.
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        for s in [&mut s, &mut s2] {
            let r = tokio::time::timeout(WAIT, async {
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            assert!(r.is_ok(), "connection not closed");
        }
        // The node keeps serving: a payment still finalizes through it.
        let (a, b) = (c.wallet_key(2), c.wallet_key(3));
        let tx = pay(chain, &a, 2, 0, address(&b), COIN);
        let o = c.client(0).await.submit(&tx, WAIT).await.unwrap();
        assert!(matches!(o, Outcome::Finalized { .. }));
    });
    let log = c.log(0);
    assert!(log.contains("connection"), "refusals are logged:\n{log}");
}

/// The same payment and conflict behaviour over every peer transport and
/// both UDP backends.
fn transports_case(extra: &str) {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start_with(4, extra);
    rt().block_on(async {
        let (a, b, d) = (c.wallet_key(0), c.wallet_key(1), c.wallet_key(2));
        for coin in 0..5u32 {
            let tx = pay(c.chain_id(), &a, 0, coin, address(&b), COIN);
            match c
                .client(coin as usize % 4)
                .await
                .submit(&tx, WAIT)
                .await
                .unwrap()
            {
                Outcome::Finalized { proof, .. } => {
                    assert!(proof.verify(c.chain_id(), &c.registry).is_ok())
                }
                Outcome::Rejected { detail, .. } => panic!("{extra}: rejected: {detail}"),
            }
        }
        for race in 10..16u32 {
            let t1 = pay(c.chain_id(), &a, 0, race, address(&b), COIN);
            let t2 = pay(c.chain_id(), &a, 0, race, address(&d), 2 * COIN);
            let mut w1 = c.client(0).await;
            let mut w2 = c.client(3).await;
            let (o1, o2) = tokio::join!(w1.submit(&t1, WAIT), w2.submit(&t2, WAIT));
            let both = matches!(o1.unwrap(), Outcome::Finalized { .. })
                && matches!(o2.unwrap(), Outcome::Finalized { .. });
            assert!(!both, "{extra}: both conflicting transactions finalized");
        }
    });
}

#[test]
fn quic_pool_with_multicast_over_epoll() {
    transports_case("peer_transport = \"quic\"\nio_backend = \"epoll\"\n");
}

#[test]
fn tcp_pool_with_unicast_fast_path_over_io_uring() {
    transports_case("peer_transport = \"tcp\"\nfast_path = \"unicast\"\nio_backend = \"uring\"\n");
}

#[test]
fn tcp_pool_without_fast_path() {
    transports_case("peer_transport = \"tcp\"\nfast_path = \"off\"\n");
}

/// `peer_transport = "links"` was removed: the masternode refuses to start
/// and says what to use instead.
#[test]
fn the_removed_links_transport_is_refused_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_time-masternode"))
        .args([
            "run",
            "--data-dir",
            "/nonexistent",
            "--key-file",
            "/nonexistent/key.json",
            "--genesis",
            "/nonexistent/genesis.json",
            "--peer-transport",
            "links",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("peer_transport \"links\" was removed")
            && err.contains("use quic (the default")
            && err.contains("tcp (TLS 1.3 on P2P port + 1)"),
        "{err}"
    );
}

/// Runs a pool in this process holding masternode `byz`'s key (its own
/// process must be dead), connected to masternode `to` only, on the
/// cluster's transport (QUIC).
async fn byzantine_pool(c: &Cluster, byz: usize, to: usize) -> time_net::pool::Pool {
    use time_net::pool::{Pool, PoolConfig, Transport};
    let key = c.masternode_key(byz);
    let target = PublicKey::from_signing(&c.masternode_key(to)).0;
    let cfg = PoolConfig::new(
        Transport::Quic,
        c.addr(byz),
        key.to_bytes(),
        std::collections::HashMap::from([(target, c.addr(to))]),
    );
    let (pool, mut inbox) = Pool::start(cfg).await.expect("a pool with the key");
    tokio::spawn(async move { while inbox.recv().await.is_some() {} });
    let deadline = std::time::Instant::now() + WAIT;
    while pool.connected_peers() != [target] {
        assert!(std::time::Instant::now() < deadline, "pool never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pool
}
