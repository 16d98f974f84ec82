//! The block layer on real processes (4 masternodes on 127.0.0.1, blocks
//! every second as on the devnet): blocks are committed and confirm every
//! final payment on every masternode; a killed leader costs one view change;
//! a masternode started from an empty data directory syncs the chain and
//! ends with the same tip and UTXO set; payments keep finalizing while the
//! block layer cannot reach its quorum. Timings are printed, not asserted
//! (beyond generous liveness bounds).

mod common;

use std::time::{Duration, Instant};

use common::{address, pay, Cluster, SERIAL};
use timecoin::protocol::message::{BlockStatus, NodeStatus};
use timecoin::protocol::types::{OutPoint, Transaction, COIN};
use timecoin::protocol::utxo::UtxoState;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn status(c: &Cluster, i: usize) -> Option<NodeStatus> {
    let mut w = timecoin::wallet::WalletClient::connect(c.addr(i), c.chain_id())
        .await
        .ok()?;
    w.status().await.ok()
}

async fn blocks(c: &Cluster, i: usize) -> Option<BlockStatus> {
    status(c, i).await.and_then(|s| s.blocks)
}

/// Waits (up to `limit`) until masternode `i` reaches `height`; the time it took.
async fn wait_height(c: &Cluster, i: usize, height: u64, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        if blocks(c, i).await.is_some_and(|b| b.height >= height) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "masternode {i} did not reach height {height} in {limit:?} (at {:?}); log:\n{}",
            blocks(c, i).await.map(|b| b.height),
            c.log(i)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends payments from wallet 0 (coins `coins`) through masternode `node`
/// and waits until each is final there.
async fn pay_some(c: &Cluster, node: usize, coins: std::ops::Range<u32>) -> Vec<Transaction> {
    let from = c.wallet_key(0);
    let to = address(&c.wallet_key(1));
    let mut w = c.client(node).await;
    let mut txs = Vec::new();
    for coin in coins {
        let tx = pay(c.chain_id(), &from, 0, coin, to, COIN);
        match w.submit(&tx, Duration::from_secs(10)).await {
            Ok(timecoin::wallet::Outcome::Finalized { .. }) => {}
            other => panic!("payment {coin}: {other:?}; log:\n{}", c.log(node)),
        }
        txs.push(tx);
    }
    txs
}

/// Waits until masternode `i` holds `tx`'s input `Confirmed` by `tx`; its height.
async fn confirmed_height(c: &Cluster, i: usize, tx: &Transaction) -> u64 {
    let txid = tx.txid();
    let st = c
        .wait_state(i, tx.inputs[0].prev, |e| {
            matches!(e.map(|e| e.state), Some(UtxoState::Confirmed { txid: t, .. }) if t == txid)
        })
        .await;
    match st.map(|e| e.state) {
        Some(UtxoState::Confirmed { height, .. }) => height,
        other => panic!(
            "masternode {i}: {txid} not confirmed ({other:?}); log:\n{}",
            c.log(i)
        ),
    }
}

/// Every coin the payments touched (inputs and outputs), with its state.
async fn coin_states(
    c: &Cluster,
    i: usize,
    txs: &[Transaction],
) -> Vec<(OutPoint, Option<UtxoState>)> {
    let mut ops = Vec::new();
    for tx in txs {
        ops.extend(tx.inputs.iter().map(|i| i.prev));
        ops.extend((0..tx.outputs.len() as u32).map(|vout| OutPoint {
            txid: tx.txid(),
            vout,
        }));
    }
    let mut w = c.client(i).await;
    w.utxo_states(ops)
        .await
        .unwrap()
        .into_iter()
        .map(|(op, e)| (op, e.map(|e| e.state)))
        .collect()
}

/// Samples masternodes `a` and `b` until they report one height, and
/// checks they hold the same block there.
async fn same_tip(c: &Cluster, a: usize, b: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (x, y) = (blocks(c, a).await.unwrap(), blocks(c, b).await.unwrap());
        if x.height == y.height {
            assert_eq!(
                x.tip, y.tip,
                "masternodes {a} and {b} at height {}",
                x.height
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never at one height: {x:?} {y:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn blocks_confirm_every_final_payment_on_every_masternode() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start(4);
    let rt = rt();
    rt.block_on(async {
        wait_height(&c, 0, 2, Duration::from_secs(20)).await;
        let txs = pay_some(&c, 0, 0..20).await;
        let t = Instant::now();
        for i in 0..4 {
            for tx in &txs {
                confirmed_height(&c, i, tx).await;
            }
        }
        println!(
            "20 payments confirmed on all 4 masternodes {:?} after the last was final",
            t.elapsed()
        );
        // One chain: whenever two masternodes are at one height, they hold
        // the same tip.
        for i in 1..4 {
            same_tip(&c, 0, i).await;
        }
    });
}

#[test]
fn a_killed_leader_costs_a_view_change_and_blocks_go_on() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(4);
    let rt = rt();
    let keys: Vec<_> = (0..4)
        .map(|i| timecoin::protocol::types::PublicKey::from_signing(&c.masternode_key(i)))
        .collect();
    let (h, victim) = rt.block_on(async {
        wait_height(&c, 0, 2, Duration::from_secs(20)).await;
        // Right after a commit at h, the leader of h + 1 round 0 is known.
        let h = blocks(&c, 0).await.unwrap().height;
        let leader = timecoin_core::blocks::leader::leader(c.chain_id(), &c.registry, h + 1, 0);
        (h, keys.iter().position(|k| *k == leader).unwrap())
    });
    c.kill9(victim);
    let other = (victim + 1) % 4;
    rt.block_on(async {
        let took = wait_height(&c, other, h + 2, Duration::from_secs(30)).await;
        println!(
            "leader {victim} of height {} killed: heights {}..{} committed by the others in {took:?} \
             (block interval 1 s, propose timeout 1 s)",
            h + 1,
            h + 1,
            h + 2
        );
        let info = c.log(other);
        assert!(info.contains("blocks"), "status lines are logged");
        // Payments keep finalizing with 3 of 4.
        pay_some(&c, other, 40..43).await;
    });
}

#[test]
fn a_masternode_from_an_empty_data_directory_syncs_the_chain_and_utxo_set() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(4);
    let rt = rt();
    let txs = rt.block_on(async {
        wait_height(&c, 0, 2, Duration::from_secs(20)).await;
        let txs = pay_some(&c, 0, 60..75).await;
        for tx in &txs {
            confirmed_height(&c, 0, tx).await;
        }
        txs
    });
    c.kill9(3);
    let data = common::data_dir(&c, 3);
    std::fs::remove_dir_all(&data).unwrap();
    // Let the chain grow while it is away.
    std::thread::sleep(Duration::from_secs(3));
    let target = rt.block_on(async { blocks(&c, 0).await.unwrap().height });
    let t = Instant::now();
    c.spawn(3);
    rt.block_on(async {
        let took = wait_height(&c, 3, target, Duration::from_secs(60)).await;
        println!(
            "masternode 3 from an empty data directory reached height {target} in {took:?} \
             (from process start: {:?})",
            t.elapsed()
        );
        for tx in &txs {
            confirmed_height(&c, 3, tx).await;
        }
        same_tip(&c, 0, 3).await;
        assert_eq!(
            coin_states(&c, 0, &txs).await,
            coin_states(&c, 3, &txs).await,
            "the same UTXO states for every coin the payments touched"
        );
    });
}

#[test]
fn payments_finalize_while_the_block_layer_has_no_quorum() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(4);
    let rt = rt();
    rt.block_on(wait_height(&c, 0, 1, Duration::from_secs(20)));
    // Masternodes 2 and 3 restart without the block layer: the other two
    // hold half the weight, short of the block quorum; all four still vote
    // on payments.
    for i in [2, 3] {
        c.kill9(i);
        let cfg = &c.layout.node_configs[i];
        let mut text = std::fs::read_to_string(cfg).unwrap();
        text.push_str("block_interval_ms = 0\n");
        std::fs::write(cfg, text).unwrap();
        c.spawn(i);
    }
    c.wait_connected(4);
    rt.block_on(async {
        let stalled = blocks(&c, 0).await.unwrap().height;
        let txs = pay_some(&c, 0, 80..90).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = blocks(&c, 0).await.unwrap();
        assert!(
            now.height <= stalled + 1,
            "no blocks without a quorum: {stalled} -> {}",
            now.height
        );
        assert!(now.unconfirmed >= 10, "final, waiting for a block: {now:?}");
        assert!(
            status(&c, 2).await.unwrap().blocks.is_none(),
            "blocks off at 2"
        );
        for tx in &txs {
            let st = c.wait_state(0, tx.inputs[0].prev, |_| true).await;
            assert_eq!(
                st.map(|e| e.state),
                Some(UtxoState::SpentFinalized { txid: tx.txid() }),
                "final, not confirmed"
            );
        }
    });
}

/// The sync figure of docs/BENCHMARKS.md (not part of the suite: it takes a
/// minute). A chain of blocks 100 ms apart carrying `PAYMENTS` payments,
/// then masternode 3 from an empty data directory; prints blocks/s and
/// transactions/s of its sync. Run:
/// `cargo test --release --test blocks -- --ignored --nocapture sync_speed`
#[test]
#[ignore]
fn sync_speed() {
    const WALLETS: usize = 4;
    const COINS: u32 = 5_000;
    const IDLE_S: u64 = 60;
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start_funded(4, "block_interval_ms = 100\n", WALLETS, COINS);
    let rt = rt();
    let payments = rt.block_on(async {
        // Pipelined: every wallet's payments in flight at once, from one
        // connection per wallet to masternodes 0..2.
        let mut tasks = Vec::new();
        for w in 0..WALLETS {
            let key = c.wallet_key(w);
            let to = address(&c.wallet_key((w + 1) % WALLETS));
            let chain = c.chain_id();
            let addr = c.addr(w % 3);
            tasks.push(tokio::spawn(async move {
                let mut cl = timecoin::wallet::WalletClient::connect(addr, chain)
                    .await
                    .unwrap();
                let mut sent = 0u64;
                for coin in 0..COINS {
                    let tx = pay(chain, &key, w as u32, coin, to, COIN);
                    cl.send(&timecoin::protocol::message::Message::SubmitTransaction(tx))
                        .await
                        .unwrap();
                    sent += 1;
                    if coin % 200 == 199 {
                        cl.flush().await.unwrap();
                        // About 1,000 payments/s per wallet.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                cl.flush().await.unwrap();
                // Keep the session open while the outcomes arrive.
                tokio::time::sleep(Duration::from_secs(5)).await;
                sent
            }));
        }
        let mut n = 0;
        for t in tasks {
            n += t.await.unwrap();
        }
        n
    });
    // Idle blocks on top, so the chain is long as well as full.
    std::thread::sleep(Duration::from_secs(IDLE_S));
    let (target, unconfirmed) = rt.block_on(async {
        let b = blocks(&c, 0).await.unwrap();
        (b.height, b.unconfirmed)
    });
    c.kill9(3);
    std::fs::remove_dir_all(common::data_dir(&c, 3)).unwrap();
    let finalized = rt.block_on(async { status(&c, 0).await.unwrap().finalized });
    let t = Instant::now();
    c.spawn(3);
    let (first, took) = rt.block_on(async {
        // From the first block applied (the process is up and connected).
        let first = wait_height(&c, 3, 1, Duration::from_secs(60)).await;
        let h1 = blocks(&c, 3).await.unwrap().height;
        let took = wait_height(&c, 3, target, Duration::from_secs(300)).await;
        (first, (took, h1))
    });
    let (rest, h1) = took;
    let synced = target.saturating_sub(h1);
    let whole = t.elapsed();
    println!(
        "sync: {target} blocks, {finalized} payments final at masternode 0 ({unconfirmed} not \
         in a block), {payments} sent; masternode 3 from an empty data directory: first block \
         after {first:?} (start, connect), then {synced} more blocks in {rest:?} ({:.0} blocks/s); \
         whole sync from process start {whole:?}: {:.0} blocks/s, {:.0} payments/s",
        synced as f64 / rest.as_secs_f64(),
        target as f64 / whole.as_secs_f64(),
        finalized as f64 / whole.as_secs_f64(),
    );
}

#[test]
fn time_wallet_shows_the_confirmation_height() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = Cluster::start(4);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_time-wallet"))
        .arg("send")
        .arg("--key")
        .arg(&c.layout.wallet_keys[0])
        .args(["--to", &address(&c.wallet_key(1)).to_string()])
        .args(["--amount", "1", "--timeout", "20", "--confirm"])
        .arg("--genesis")
        .arg(&c.layout.genesis)
        .args(["--node", &c.addr(2).to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("confirmed in block "))
        .unwrap_or_else(|| panic!("no confirmation line: {text}"));
    let height: u64 = line["confirmed in block ".len()..]
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let rt = rt();
    assert!(
        rt.block_on(blocks(&c, 2)).unwrap().height >= height && height >= 1,
        "{line}"
    );
}
