//! Crash recovery on real processes: a 4-masternode cluster under a steady
//! payment load while random masternodes are killed with SIGKILL and
//! restarted on the same data directory, one at a time. No payment that
//! became final may be lost, and a restarted masternode must catch up on
//! what was finalized while it was down.
//!
//! Fails on the node as of the commit that added it: a restarted masternode
//! never learns the payments finalized while it was down (nothing asks its
//! peers for them), so each restart leaves it missing roughly its downtime
//! times the payment rate.
//!
//! `TIME_RECOVERY_SEED` replays the kill schedule (the seed is printed);
//! `TIME_RECOVERY_CYCLES` changes the number of kill/restart cycles (10);
//! `TIME_RECOVERY_RATE` the offered payments per second (150) and
//! `TIME_RECOVERY_WORKERS` the concurrent wallet tasks (12).

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{address, pay, Cluster, SERIAL};
use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use timecoin::protocol::message::{Message, MAX_QUERY_OUTPOINTS};
use timecoin::protocol::registry::Registry;
use timecoin::protocol::types::{OutPoint, PublicKey, Transaction, Txid, COIN};
use timecoin::protocol::utxo::UtxoState;
use timecoin::protocol::validation::RejectCode;
use timecoin::wallet::{Outcome, WalletClient};

const NODES: usize = 4;
const WALLETS: usize = 4;
/// 10,000 genesis coins: one per payment, so no payment conflicts with or
/// waits on another. At `RATE` that is more than the load phase can use.
const COINS_PER_WALLET: u32 = 2_500;
/// Offered payments per second (open loop, spread over the workers).
const RATE: f64 = 150.0;
/// Concurrent wallet connections' tasks, each submitting one payment at a time.
const WORKERS: usize = 12;
const CYCLES: usize = 10;
/// Per submission attempt; then the payment is resubmitted elsewhere.
const SUBMIT_WAIT: Duration = Duration::from_secs(5);
/// Attempts per payment (the same transaction, at the next masternode up).
const ATTEMPTS: usize = 6;
/// Hard bound on the load phase, whatever the cycles do.
const LOAD_LIMIT: Duration = Duration::from_secs(70);
/// After the load stops: how long the masternodes get to converge.
const CONVERGE_WAIT: Duration = Duration::from_secs(30);
/// ... but it ends early once no payment became final anywhere for this long.
const STALL_WAIT: Duration = Duration::from_secs(10);
/// A restarted masternode and its peers must be linked again within this.
const MESH_WAIT: Duration = Duration::from_secs(15);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the wallet side saw of one payment.
#[derive(Clone, Debug)]
enum Seen {
    /// A TimeProof that verifies against the registry, from masternode `node`.
    Final {
        node: usize,
    },
    /// A TimeProof that does not verify (a failure in itself).
    BadProof(String),
    Rejected(String),
    /// No outcome after every attempt (or the load stopped).
    NoOutcome(String),
}

impl Seen {
    fn describe(&self) -> String {
        match self {
            Seen::Final { node } => format!("final via mn{node}"),
            Seen::BadProof(e) => format!("bad proof: {e}"),
            Seen::Rejected(e) => format!("rejected: {e}"),
            Seen::NoOutcome(e) => format!("no outcome: {e}"),
        }
    }
}

#[derive(Clone, Debug)]
struct Paid {
    tx: Transaction,
    txid: Txid,
    input: OutPoint,
    /// The masternodes up (and linked) when it was first submitted carried
    /// at least the quorum weight.
    quorum_up: bool,
    seen: Seen,
    attempts: usize,
}

/// State shared by the load tasks, the chaos loop and the catch-up pollers.
struct Load {
    addrs: Vec<SocketAddr>,
    chain: u32,
    registry: Registry,
    /// Registry weight of masternode i.
    weights: Vec<u64>,
    keys: Vec<SigningKey>,
    /// Running and linked to its peers: the load sends only there.
    up: Vec<AtomicBool>,
    /// Bumped at each kill of masternode i (ends its catch-up poller).
    generation: Vec<AtomicUsize>,
    stop: AtomicBool,
    /// Ends the catch-up pollers.
    done: AtomicBool,
    next: AtomicUsize,
    start: Instant,
    /// Payments seen final by the wallet side, in that order: (txid, input).
    finals: Mutex<Vec<(Txid, OutPoint)>>,
    /// Offered payments per second.
    rate: f64,
    coins_per_wallet: u32,
}

impl Load {
    fn up_weight(&self) -> u64 {
        (0..NODES)
            .filter(|&i| self.up[i].load(Ordering::SeqCst))
            .map(|i| self.weights[i])
            .sum()
    }
}

/// One wallet task: takes the next payment slot of the open-loop schedule,
/// submits it to the next masternode up (round robin) and waits for its
/// outcome; on a broken connection or a timeout the same transaction goes to
/// the next masternode up. Bounded by the coin count, `LOAD_LIMIT` and
/// `ATTEMPTS`.
async fn worker(load: Arc<Load>) -> Vec<Paid> {
    let mut conns: Vec<Option<WalletClient>> = (0..NODES).map(|_| None).collect();
    let mut out = Vec::new();
    let total = WALLETS * load.coins_per_wallet as usize;
    loop {
        if load.stop.load(Ordering::SeqCst) || load.start.elapsed() > LOAD_LIMIT {
            break;
        }
        let idx = load.next.fetch_add(1, Ordering::SeqCst);
        if idx >= total {
            break;
        }
        let slot = load.start + Duration::from_secs_f64(idx as f64 / load.rate);
        tokio::time::sleep_until(tokio::time::Instant::from_std(slot)).await;
        if load.stop.load(Ordering::SeqCst) {
            break;
        }
        let (w, coin) = (idx % WALLETS, (idx / WALLETS) as u32);
        let to = address(&load.keys[(w + 1) % WALLETS]);
        let tx = pay(load.chain, &load.keys[w], w as u32, coin, to, COIN);
        let txid = tx.txid();
        let quorum_up = load.up_weight() >= load.registry.quorum();
        let mut seen = None;
        let mut attempts = 0;
        let mut last_err = String::from("never submitted");
        let mut node = idx % NODES;
        while attempts < ATTEMPTS && seen.is_none() && load.start.elapsed() < LOAD_LIMIT {
            attempts += 1;
            let Some(n) = (0..NODES)
                .map(|k| (node + k) % NODES)
                .find(|&n| load.up[n].load(Ordering::SeqCst))
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            node = n;
            if conns[n].is_none() {
                match WalletClient::connect(load.addrs[n], load.chain).await {
                    Ok(c) => conns[n] = Some(c),
                    Err(e) => {
                        last_err = format!("connect mn{n}: {e}");
                        node = (n + 1) % NODES;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
            let c = conns[n].as_mut().expect("connected");
            match c.submit(&tx, SUBMIT_WAIT).await {
                Ok(Outcome::Finalized { proof, .. }) => {
                    if proof.txid != txid {
                        seen = Some(Seen::BadProof(format!("mn{n}: proof for another txid")));
                    } else if let Err(e) = proof.verify(load.chain, &load.registry) {
                        seen = Some(Seen::BadProof(format!("mn{n}: {e}")));
                    } else {
                        load.finals
                            .lock()
                            .expect("finals")
                            .push((txid, tx.inputs[0].prev));
                        seen = Some(Seen::Final { node: n });
                    }
                }
                Ok(Outcome::Rejected {
                    reason: RejectCode::MempoolFull,
                    ..
                }) => {
                    last_err = format!("mn{n}: mempool full");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Outcome::Rejected { reason, detail, .. }) => {
                    seen = Some(Seen::Rejected(format!("mn{n}: {reason:?}: {detail}")));
                }
                Err(e) => {
                    conns[n] = None;
                    last_err = format!("mn{n}: {e}");
                    node = (n + 1) % NODES;
                }
            }
        }
        out.push(Paid {
            input: tx.inputs[0].prev,
            tx,
            txid,
            quorum_up,
            seen: seen.unwrap_or(Seen::NoOutcome(last_err)),
            attempts,
        });
    }
    out
}

/// Which of `payments` (txid, input) are final at `addr`: the input
/// SpentFinalized by that very transaction and its first output known.
async fn final_at(
    addr: SocketAddr,
    chain: u32,
    payments: &[(Txid, OutPoint)],
) -> Result<Vec<bool>, String> {
    let mut c = WalletClient::connect(addr, chain)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut out = Vec::with_capacity(payments.len());
    for chunk in payments.chunks(MAX_QUERY_OUTPOINTS / 2) {
        let ops: Vec<OutPoint> = chunk
            .iter()
            .flat_map(|(txid, input)| {
                [
                    *input,
                    OutPoint {
                        txid: *txid,
                        vout: 0,
                    },
                ]
            })
            .collect();
        let st = c
            .utxo_states(ops)
            .await
            .map_err(|e| format!("query {addr}: {e}"))?;
        for (k, (txid, _)) in chunk.iter().enumerate() {
            let input = st.get(2 * k).and_then(|(_, e)| common::final_view(*e));
            let output = st.get(2 * k + 1).is_some_and(|(_, e)| e.is_some());
            out.push(input == Some(UtxoState::SpentFinalized { txid: *txid }) && output);
        }
    }
    Ok(out)
}

/// For payments final at `addr` by state: resubmits each (a masternode that
/// holds a transaction's proof answers with it) and verifies the TimeProof
/// against the registry. Pipelined in windows. Returns, per payment, `None`
/// if a verifying proof came back, else what did (for the failure message).
async fn proofs_at(
    addr: SocketAddr,
    chain: u32,
    registry: &Registry,
    txs: &[&Transaction],
) -> Result<Vec<Option<String>>, String> {
    let mut c = WalletClient::connect(addr, chain)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let mut out = Vec::with_capacity(txs.len());
    for window in txs.chunks(256) {
        let want: Vec<Txid> = window.iter().map(|t| t.txid()).collect();
        // None: no answer yet; Some(None): a verifying proof.
        let mut got: Vec<Option<Option<String>>> = vec![None; window.len()];
        for tx in window {
            c.push(&Message::SubmitTransaction((*tx).clone()))
                .map_err(|e| format!("{addr}: {e}"))?;
        }
        c.flush().await.map_err(|e| format!("{addr}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while got.iter().any(|g| g.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = match c.recv_timeout(left).await {
                Ok(m) => m,
                Err(_) => break,
            };
            let (txid, answer) = match m {
                Message::TimeProof { proof, .. } => (
                    proof.txid,
                    proof
                        .verify(chain, registry)
                        .err()
                        .map(|e| format!("a proof that does not verify: {e}")),
                ),
                Message::TransactionRejected {
                    txid,
                    reason,
                    detail,
                    ..
                } => (txid, Some(format!("rejected {reason:?}: {detail}"))),
                Message::TransactionAccepted(txid) => {
                    (txid, Some("accepted (pending there), no proof".into()))
                }
                _ => continue,
            };
            if let Some(k) = want.iter().position(|t| *t == txid) {
                // A verifying TimeProof outranks any other answer.
                if !matches!(got[k], Some(None)) {
                    got[k] = Some(answer);
                }
            }
        }
        out.extend(
            got.into_iter()
                .map(|g| g.unwrap_or_else(|| Some("no answer in 15 s".into()))),
        );
    }
    Ok(out)
}

async fn peers_connected(addr: SocketAddr, chain: u32) -> Option<u32> {
    let mut c = WalletClient::connect(addr, chain).await.ok()?;
    c.status().await.ok().map(|s| s.peers_connected)
}

/// Waits until every masternode answers and reports links to all others.
async fn wait_mesh(load: &Load, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    loop {
        let mut all = true;
        for a in &load.addrs {
            if peers_connected(*a, load.chain)
                .await
                .is_none_or(|p| (p as usize) < NODES - 1)
            {
                all = false;
                break;
            }
        }
        if all {
            return Some(t.elapsed());
        }
        if t.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How a restarted masternode caught up on the payments final before its
/// restart.
#[derive(Debug, Clone)]
struct CatchUp {
    node: usize,
    down_ms: u64,
    /// Payments the wallets had seen final at the restart.
    known_final: usize,
    /// Of those, not final at the node when first polled after the restart.
    lacked_at_first_poll: usize,
    /// From the restart until it had them all.
    caught_up_ms: Option<u64>,
    /// Still missing when the poller stopped (node killed again, or the end).
    left: usize,
}

async fn catch_up(
    load: Arc<Load>,
    node: usize,
    generation: usize,
    down_ms: u64,
    restarted: Instant,
    mut missing: Vec<(Txid, OutPoint)>,
) -> CatchUp {
    let known_final = missing.len();
    let mut first = None;
    let limit = Duration::from_secs(60);
    loop {
        if load.generation[node].load(Ordering::SeqCst) != generation
            || load.done.load(Ordering::SeqCst)
            || restarted.elapsed() > limit
        {
            break;
        }
        if let Ok(f) = final_at(load.addrs[node], load.chain, &missing).await {
            let mut k = 0;
            missing.retain(|_| {
                k += 1;
                !f[k - 1]
            });
            first.get_or_insert(missing.len());
            if missing.is_empty() {
                return CatchUp {
                    node,
                    down_ms,
                    known_final,
                    lacked_at_first_poll: first.unwrap_or(0),
                    caught_up_ms: Some(restarted.elapsed().as_millis() as u64),
                    left: 0,
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    CatchUp {
        node,
        down_ms,
        known_final,
        lacked_at_first_poll: first.unwrap_or(missing.len()),
        caught_up_ms: None,
        left: missing.len(),
    }
}

#[test]
fn kill9_restart_cycles_lose_no_final_payment() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let seed: u64 = env_or("TIME_RECOVERY_SEED", rand::random::<u64>());
    let cycles: usize = env_or("TIME_RECOVERY_CYCLES", CYCLES).clamp(1, 50);
    eprintln!("recovery: seed={seed} (TIME_RECOVERY_SEED={seed} replays the kill schedule)");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rate: f64 = env_or("TIME_RECOVERY_RATE", RATE).clamp(1.0, 5_000.0);
    let n_workers: usize = env_or("TIME_RECOVERY_WORKERS", WORKERS).clamp(1, 512);
    // Enough coins for the whole load phase at this rate.
    let coins_per_wallet =
        COINS_PER_WALLET.max((rate * LOAD_LIMIT.as_secs_f64() / WALLETS as f64) as u32 + 1);
    eprintln!("recovery: {rate}/s offered by {n_workers} wallet tasks");
    let mut c = Cluster::start_funded(NODES, "", WALLETS, coins_per_wallet);
    let weights: Vec<u64> = (0..NODES)
        .map(|i| {
            c.registry
                .weight_of(&PublicKey::from_signing(&c.masternode_key(i)))
                .expect("masternode in the registry")
        })
        .collect();
    // One masternode down leaves at least the quorum up: else the test's
    // premise (final payments go on while one is down) does not hold.
    let total: u64 = weights.iter().sum();
    for (i, w) in weights.iter().enumerate() {
        assert!(
            total - w >= c.registry.quorum(),
            "masternode {i} alone holds more than a third of the weight: {weights:?}"
        );
    }
    let load = Arc::new(Load {
        addrs: (0..NODES).map(|i| c.addr(i)).collect(),
        chain: c.chain_id(),
        registry: c.registry.clone(),
        weights,
        keys: (0..WALLETS).map(|w| c.wallet_key(w)).collect(),
        up: (0..NODES).map(|_| AtomicBool::new(true)).collect(),
        generation: (0..NODES).map(|_| AtomicUsize::new(0)).collect(),
        stop: AtomicBool::new(false),
        done: AtomicBool::new(false),
        next: AtomicUsize::new(0),
        start: Instant::now(),
        finals: Mutex::new(Vec::new()),
        rate,
        coins_per_wallet,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let workers: Vec<_> = (0..n_workers)
        .map(|_| rt.spawn(worker(load.clone())))
        .collect();

    // The chaos: kill -9 a random masternode, keep it down 1-3 s, restart it
    // on its data directory, wait until the mesh is whole again.
    let mut pollers = Vec::new();
    let mut mesh_ms = Vec::new();
    std::thread::sleep(Duration::from_millis(1000));
    for cycle in 0..cycles {
        if load.start.elapsed() > LOAD_LIMIT - Duration::from_secs(5) {
            eprintln!("recovery: load time limit reached after {cycle} cycles");
            break;
        }
        let i = rng.gen_range(0..NODES);
        let down = Duration::from_millis(rng.gen_range(1_000..=3_000));
        load.up[i].store(false, Ordering::SeqCst);
        load.generation[i].fetch_add(1, Ordering::SeqCst);
        c.kill9(i);
        std::thread::sleep(down);
        let snapshot = load.finals.lock().expect("finals").clone();
        c.spawn(i);
        let restarted = Instant::now();
        let generation = load.generation[i].load(Ordering::SeqCst);
        pollers.push(rt.spawn(catch_up(
            load.clone(),
            i,
            generation,
            down.as_millis() as u64,
            restarted,
            snapshot,
        )));
        let mesh = rt.block_on(wait_mesh(&load, MESH_WAIT));
        let Some(mesh) = mesh else {
            load.stop.store(true, Ordering::SeqCst);
            panic!(
                "cycle {cycle}: masternode {i} restarted but the four were not linked again within {MESH_WAIT:?}; log:\n{}",
                c.log(i)
            );
        };
        mesh_ms.push(mesh.as_millis() as u64);
        load.up[i].store(true, Ordering::SeqCst);
        eprintln!(
            "recovery: cycle {cycle}: mn{i} down {} ms, linked again {} ms after restart, {} payments submitted so far",
            down.as_millis(),
            mesh.as_millis(),
            load.next.load(Ordering::SeqCst).min(WALLETS * load.coins_per_wallet as usize)
        );
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..=500)));
    }
    let cycles_done = mesh_ms.len();

    // Stop the load; every worker ends within one bounded submission.
    load.stop.store(true, Ordering::SeqCst);
    let load_secs = load.start.elapsed().as_secs_f64();
    let stopped = Instant::now();
    let mut paid: Vec<Paid> = Vec::new();
    for w in workers {
        paid.extend(rt.block_on(w).expect("worker panicked"));
    }
    for i in 0..NODES {
        assert!(
            c.children[i].is_some(),
            "masternode {i} is not running at the end"
        );
    }

    // What must be final everywhere: every payment a wallet saw final, and
    // every payment submitted while masternodes of at least the quorum
    // weight were up.
    let must: Vec<&Paid> = paid
        .iter()
        .filter(|p| matches!(p.seen, Seen::Final { .. }) || p.quorum_up)
        .collect();
    let must_ids: Vec<(Txid, OutPoint)> = must.iter().map(|p| (p.txid, p.input)).collect();
    let seen_final = paid
        .iter()
        .filter(|p| matches!(p.seen, Seen::Final { .. }))
        .count();

    // Converge (bounded), then the final word from every masternode.
    let converge_start = Instant::now();
    let (states, converge_ms) = rt.block_on(async {
        let (mut best, mut progress) = (0, Instant::now());
        loop {
            let mut all = Vec::new();
            for i in 0..NODES {
                all.push(
                    final_at(load.addrs[i], load.chain, &must_ids)
                        .await
                        .unwrap_or_else(|_| vec![false; must_ids.len()]),
                );
            }
            let finals: usize = all.iter().map(|v| v.iter().filter(|f| **f).count()).sum();
            if finals > best {
                (best, progress) = (finals, Instant::now());
            }
            let complete = finals == NODES * must_ids.len();
            if complete
                || converge_start.elapsed() > CONVERGE_WAIT
                || progress.elapsed() > STALL_WAIT
            {
                let ms = complete.then(|| converge_start.elapsed().as_millis() as u64);
                return (all, ms);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let converge_secs = converge_start.elapsed().as_secs_f64();
    // Proofs: from every masternode, for every payment final there.
    let proofs_start = Instant::now();
    let mut per_node = [0usize; NODES];
    let mut bad_proofs = [0usize; NODES];
    let mut examples = Vec::new();
    for i in 0..NODES {
        let here: Vec<&Transaction> = must
            .iter()
            .zip(&states[i])
            .filter(|(_, f)| **f)
            .map(|(p, _)| &p.tx)
            .collect();
        let ok = rt
            .block_on(proofs_at(load.addrs[i], load.chain, &load.registry, &here))
            .unwrap_or_else(|e| panic!("proofs from masternode {i}: {e}"));
        let good: HashSet<Txid> = here
            .iter()
            .zip(&ok)
            .filter(|(_, why)| why.is_none())
            .map(|(t, _)| t.txid())
            .collect();
        let answers: HashMap<Txid, &str> = here
            .iter()
            .zip(&ok)
            .filter_map(|(t, why)| why.as_deref().map(|w| (t.txid(), w)))
            .collect();
        bad_proofs[i] = here.len() - good.len();
        for p in &must {
            if !good.contains(&p.txid) {
                per_node[i] += 1;
                if examples.len() < 12 {
                    examples.push(format!(
                        "mn{i} lacks {} (input {}, wallet saw it {}, {} attempts; resubmitted there: {})",
                        p.txid,
                        p.input,
                        p.seen.describe(),
                        p.attempts,
                        answers.get(&p.txid).copied().unwrap_or("not final there by state")
                    ));
                }
            }
        }
    }
    let proofs_secs = proofs_start.elapsed().as_secs_f64();
    load.done.store(true, Ordering::SeqCst);
    let catchups: Vec<CatchUp> = pollers
        .into_iter()
        .map(|p| rt.block_on(p).expect("poller panicked"))
        .collect();
    drop(rt);

    let missing: usize = per_node.iter().sum();
    let catchup_ms: Vec<String> = catchups
        .iter()
        .map(|k| match k.caught_up_ms {
            Some(ms) => format!("mn{}:{ms}", k.node),
            None => format!("mn{}:never({}/{} missing)", k.node, k.left, k.known_final),
        })
        .collect();
    let rejected: Vec<&Paid> = paid
        .iter()
        .filter(|p| matches!(p.seen, Seen::Rejected(_) | Seen::BadProof(_)))
        .collect();
    let no_outcome = paid
        .iter()
        .filter(|p| matches!(p.seen, Seen::NoOutcome(_)))
        .count();
    let quorum_up = paid.iter().filter(|p| p.quorum_up).count();
    let retried = paid.iter().filter(|p| p.attempts > 1).count();
    for (k, cu) in catchups.iter().enumerate() {
        eprintln!(
            "recovery: restart {k}: mn{} down {} ms; {} payments final before the restart, {} of them not final there at the first poll; {}",
            cu.node,
            cu.down_ms,
            cu.known_final,
            cu.lacked_at_first_poll,
            match cu.caught_up_ms {
                Some(ms) => format!("had them all {ms} ms after the restart"),
                None => format!("still missing {} when polling stopped", cu.left),
            }
        );
    }
    eprintln!(
        "recovery: load {load_secs:.1} s at {rate}/s offered: {} payments, {seen_final} seen final, {quorum_up} submitted with the quorum up, {retried} resubmitted elsewhere, {} rejected or bad proof, {no_outcome} without outcome; \
         links restored in ms {mesh_ms:?}; converged {}; bad proofs per node {bad_proofs:?}; \
         load stop {:.1} s, convergence wait {converge_secs:.1} s, proof check {proofs_secs:.1} s; total {:.1} s",
        paid.len(),
        rejected.len(),
        match converge_ms {
            Some(ms) => format!("{ms} ms after the load stopped"),
            None => format!(
                "NOT (waited at most {CONVERGE_WAIT:?}, stopped after {STALL_WAIT:?} without progress)"
            ),
        },
        (converge_start - stopped).as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    let summary = format!(
        "recovery: cycles={cycles_done} payments={} seen_final={seen_final} checked={} missing_after_catchup={missing} per-node={per_node:?} catchup_ms=[{}]",
        paid.len(),
        must.len(),
        catchup_ms.join(",")
    );
    eprintln!("{summary}");
    for e in &examples {
        eprintln!("  {e}");
    }
    for p in rejected.iter().take(5) {
        eprintln!("  refused: {} {}", p.txid, p.seen.describe());
    }
    assert_eq!(cycles_done, cycles, "not every kill/restart cycle ran");
    assert!(
        seen_final > 0,
        "no payment finalized at all; logs:\n{}",
        c.log(0)
    );
    assert_eq!(
        missing,
        0,
        "{summary}\npayments final somewhere (or submitted with the quorum up) that are not final, with a verifying proof, on every masternode:\n{}",
        examples.join("\n")
    );
    assert!(
        rejected.is_empty(),
        "{} payments spending their own coin were refused or came with a bad proof: {:?}",
        rejected.len(),
        rejected
            .iter()
            .take(5)
            .map(|p| p.seen.describe())
            .collect::<Vec<_>>()
    );
}
