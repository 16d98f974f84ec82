//! `time-ingest`: how many transactions one masternode finalizes per second
//! on one core, fed in-process by three simulated peers at full speed, next
//! to the ed25519 batch-verification bound measured in the same process.
//!
//! Before the clock starts: a genesis with 4 equal masternodes and one coin
//! per payment, N pre-signed payments (1 input, 2 outputs, each spending its
//! own genesis coin), and the 3 peers' signed vote batches over them, all
//! encoded as the wire frames a peer sends. Then, on this one thread, the
//! node's whole ingest path runs as the node runs it, minus sockets:
//!
//! - transaction frames: decode, txid, stateless checks, signatures in
//!   batches of 64 (`verify_signatures_batch`, as the node's verifier pool),
//!   `handle_transaction(now, tx, Origin::Peer, prechecked = true)`;
//! - vote frames: decode, Merkle root, signatures of up to 64 batches in one
//!   ed25519 batch (as the node's vote threads), `handle_verified_votes`;
//! - every K inputs: `tick` (every 100 ms, as the core), `end_round` (signs
//!   the node's own vote batches), the round's writes applied to LMDB in one
//!   transaction (with fsync, or `no_sync`), outgoing vote batches encoded.
//!
//! Peer votes on payment i arrive after payment i + `--vote-lag`, so the node
//! has voted itself by then, as in a live network. A run counts the
//! `Finalized` events; it fails unless every payment was finalized.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::json;

use time_bench::{input_signatures, measure_crypto, thread_cpu_time, vote_batches, Network, CHAIN};
use timecoin::node::fastpath::VOTES_PER_DATAGRAM;
use timecoin::protocol::engine::{Engine, EngineConfig, Event, Origin, Output};
use timecoin::protocol::message::Message;
use timecoin::protocol::tally::VerifiedBatch;
use timecoin::protocol::timeproof::TimeProof;
use timecoin::protocol::types::{Transaction, Txid};
use timecoin::protocol::validation::{self, Limits};
use timecoin::protocol::vote::VoteBatch;
use timecoin::storage::lmdb::LmdbOptions;
use timecoin::storage::{LmdbStore, Store};

/// Signatures per ed25519 batch, for transactions and for vote batches (the
/// node's verifier pool and vote threads use 64).
const VERIFY_BATCH: usize = 64;
/// Simulated peers (the 4th masternode is the one under test).
const PEERS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Durability {
    /// fsync at every commit (the node's default).
    Fsync,
    /// `LmdbOptions::no_sync` (benchmarks only).
    NoSync,
    Both,
}

#[derive(Parser, Debug)]
#[command(
    name = "time-ingest",
    about = "Single-masternode ingest capacity, in finalized transactions per second on one core"
)]
struct Args {
    /// Payments to finalize per run.
    #[arg(long, default_value_t = 100_000)]
    txs: usize,
    /// Inputs (transactions or vote batches) per engine round; each round
    /// ends with `end_round` and one LMDB commit. The node's core takes up
    /// to 8,192 queued inputs per round, so at full speed its rounds are
    /// this size.
    #[arg(long, default_value_t = 8192)]
    round_inputs: usize,
    /// Items per vote batch, for the peers and for the node under test (the
    /// fast path's per-datagram size by default).
    #[arg(long, default_value_t = VOTES_PER_DATAGRAM)]
    vote_batch: usize,
    /// Peer votes on payment i arrive after payment i + this many.
    #[arg(long, default_value_t = 1024)]
    vote_lag: usize,
    /// Storage durability for the run(s).
    #[arg(long, value_enum, default_value_t = Durability::Both)]
    sync: Durability,
    /// Where the LMDB environments go (a fresh temporary directory inside).
    /// Must be a real disk for the fsync figure to mean anything.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Open vote tallies the engine may hold (`max_unknown_tallies`); the
    /// node's vote threads hold 2^20. With the engine default (100,000) a
    /// run stops finalizing after about 110,000 payments.
    #[arg(long, default_value_t = 1 << 20)]
    max_tallies: usize,
    /// Seconds spent measuring each crypto rate.
    #[arg(long, default_value_t = 1.0)]
    crypto_secs: f64,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

/// One frame from a simulated peer.
enum Frame {
    Tx(Vec<u8>),
    Votes(Vec<u8>),
}

/// Wall and CPU time spent in one stage of the ingest path.
#[derive(Default, Debug, Clone, Copy)]
struct Spent {
    wall: Duration,
    cpu: Duration,
}

/// Time per stage of the ingest path.
#[derive(Default, Debug, Clone)]
struct Phases {
    decode: Spent,
    tx_verify: Spent,
    engine_tx: Spent,
    vote_verify: Spent,
    engine_votes: Spent,
    tick: Spent,
    end_round: Spent,
    store_apply: Spent,
    dispatch: Spent,
}

/// Charges the time since the last lap to a stage.
struct Stopwatch {
    wall: Instant,
    cpu: Duration,
}

impl Stopwatch {
    fn start() -> Self {
        Stopwatch {
            wall: Instant::now(),
            cpu: thread_cpu_time(),
        }
    }
    fn lap(&mut self, to: &mut Spent) {
        let (wall, cpu) = (Instant::now(), thread_cpu_time());
        to.wall += wall - self.wall;
        to.cpu += cpu - self.cpu;
        self.wall = wall;
        self.cpu = cpu;
    }
}

impl Phases {
    fn list(&self) -> [(&'static str, Spent); 9] {
        [
            ("decode frames", self.decode),
            ("tx: txid + stateless + sig batch", self.tx_verify),
            ("engine.handle_transaction", self.engine_tx),
            ("votes: merkle + sig batch", self.vote_verify),
            ("engine.handle_verified_votes", self.engine_votes),
            ("engine.tick", self.tick),
            ("engine.end_round (own votes)", self.end_round),
            ("lmdb apply (commit)", self.store_apply),
            ("dispatch (encode own votes)", self.dispatch),
        ]
    }
}

struct RunResult {
    sync: &'static str,
    finalized: u64,
    rounds: u64,
    wall: Duration,
    cpu: Duration,
    phases: Phases,
    rejected: u64,
    /// Bytes handed to write system calls during the run: LMDB's page
    /// writes. (The kernel's `write_bytes` is not reported: on this kernel it
    /// counts several times what reaches the disk.)
    written: u64,
}

/// This process's `wchar` from /proc/self/io (0 where unreadable).
fn write_call_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

impl RunResult {
    /// Finalized per wall second and per CPU second of the ingest thread.
    fn rates(&self) -> (f64, f64) {
        let n = self.finalized as f64;
        (n / self.wall.as_secs_f64(), n / self.cpu.as_secs_f64())
    }
}

fn now_ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// The peers' stream: every transaction frame, and each peer's vote batch
/// over a chunk once `lag` more transactions have gone by.
fn build_stream(
    txs: &[Transaction],
    votes: &[Vec<VoteBatch>],
    per_batch: usize,
    lag: usize,
) -> Vec<Frame> {
    let frame = |m: &Message| m.to_bytes();
    let chunks = txs.len().div_ceil(per_batch);
    let mut stream = Vec::with_capacity(txs.len() + chunks * PEERS);
    let mut next_chunk = 0;
    let push_votes = |stream: &mut Vec<Frame>, c: usize| {
        for peer in votes {
            stream.push(Frame::Votes(frame(&Message::VoteBatch(peer[c].clone()))));
        }
    };
    for (i, tx) in txs.iter().enumerate() {
        stream.push(Frame::Tx(frame(&Message::TransactionBroadcast(tx.clone()))));
        // Chunk c's votes once its last payment is `lag` behind.
        while next_chunk < chunks && ((next_chunk + 1) * per_batch).min(txs.len()) + lag <= i + 1 {
            push_votes(&mut stream, next_chunk);
            next_chunk += 1;
        }
    }
    while next_chunk < chunks {
        push_votes(&mut stream, next_chunk);
        next_chunk += 1;
    }
    stream
}

#[inline(never)] // a frame of its own in profiles
fn run(
    net: &Network,
    stream: &[Frame],
    args: &Args,
    no_sync: bool,
    base: &std::path::Path,
) -> Result<RunResult, Box<dyn std::error::Error>> {
    let dir = tempfile::Builder::new()
        .prefix("time-ingest-")
        .tempdir_in(base)?;
    let mut store = LmdbStore::open(
        dir.path(),
        LmdbOptions {
            no_sync,
            ..Default::default()
        },
    )?;
    store.init(&net.genesis)?;
    let snap = store.load()?;
    let mut cfg = EngineConfig::new(CHAIN);
    cfg.max_vote_batch_items = args.vote_batch;
    // The engine keeps a finished tally for `decided_retention_ms` (120 s)
    // and refuses votes on new txids once `max_unknown_tallies +
    // mempool_limit` tallies are open, so with the defaults it stops
    // finalizing after 110,000 payments in two minutes (~917 tx/s
    // sustained). The node tallies on its vote threads instead, whose
    // aggregators hold up to 2^20 tallies; give the engine the same room.
    cfg.max_unknown_tallies = args.max_tallies;
    let mut engine = Engine::new(
        cfg,
        net.masternodes[0].clone(),
        net.genesis.registry.clone(),
        snap,
        store.utxo_source(),
    );
    let limits = Limits::default();

    let mut phases = Phases::default();
    let mut finalized = 0u64;
    let mut rounds = 0u64;
    let mut last_proof: Option<(Arc<TimeProof>, Txid)> = None;
    let mut txs: Vec<Transaction> = Vec::with_capacity(VERIFY_BATCH);
    let mut batches: Vec<VoteBatch> = Vec::with_capacity(VERIFY_BATCH);
    let mut out_buf = Vec::with_capacity(2048);
    let mut last_tick = 0;

    let written0 = write_call_bytes();
    let cpu0 = thread_cpu_time();
    let start = Instant::now();
    for round in stream.chunks(args.round_inputs.max(1)) {
        let now = now_ms(start);
        let mut sw = Stopwatch::start();
        // Decode the round's frames (a peer link task's work).
        let mut round_txs = Vec::new();
        let mut round_votes = Vec::new();
        for f in round {
            match f {
                Frame::Tx(b) => match Message::decode(b)? {
                    Message::TransactionBroadcast(tx) => round_txs.push(tx),
                    m => return Err(format!("unexpected {}", m.name()).into()),
                },
                Frame::Votes(b) => match Message::decode(b)? {
                    Message::VoteBatch(vb) => round_votes.push(vb),
                    m => return Err(format!("unexpected {}", m.name()).into()),
                },
            }
        }
        sw.lap(&mut phases.decode);

        // Transactions: the verifier pool's batches of 64, then the core.
        let mut it = round_txs.into_iter().peekable();
        while it.peek().is_some() {
            txs.clear();
            txs.extend(it.by_ref().take(VERIFY_BATCH));
            let ids: Vec<Txid> = txs.iter().map(|t| t.txid()).collect();
            for tx in &txs {
                validation::check_stateless(tx, CHAIN, &limits)?;
            }
            let refs: Vec<&Transaction> = txs.iter().collect();
            for r in validation::verify_signatures_batch(&refs, &ids) {
                r?;
            }
            sw.lap(&mut phases.tx_verify);
            for tx in txs.drain(..) {
                engine.handle_transaction(now, tx, Origin::Peer, true);
            }
            sw.lap(&mut phases.engine_tx);
        }

        // Vote batches: the vote threads' cross-batch verification.
        let mut it = round_votes.into_iter().peekable();
        while it.peek().is_some() {
            batches.clear();
            batches.extend(it.by_ref().take(VERIFY_BATCH));
            let shaped: Vec<_> = batches
                .drain(..)
                .map(|b| {
                    let (levels, msg) = b.levels_and_message();
                    (b, levels, msg)
                })
                .collect();
            let items: Vec<timecoin::sig::Item> = shaped
                .iter()
                .map(|(b, _, m)| (&b.voter.0, &m[..], &b.signature))
                .collect();
            if timecoin::sig::verify_batch_with_fallback(&items).contains(&false) {
                return Err("a vote batch signature does not verify".into());
            }
            let verified: Vec<Arc<VerifiedBatch>> = shaped
                .into_iter()
                .map(|(batch, levels, _)| Arc::new(VerifiedBatch { batch, levels }))
                .collect();
            sw.lap(&mut phases.vote_verify);
            for vb in verified {
                engine.handle_verified_votes(now, vb);
            }
            sw.lap(&mut phases.engine_votes);
        }

        if now.saturating_sub(last_tick) >= 100 {
            engine.tick(now);
            last_tick = now;
        }
        sw.lap(&mut phases.tick);
        let r = engine.end_round(now);
        sw.lap(&mut phases.end_round);
        store.apply(&r.writes)?;
        sw.lap(&mut phases.store_apply);
        for o in r.outputs {
            match o {
                Output::BroadcastVotes(b) => {
                    out_buf.clear();
                    Message::VoteBatch((*b).clone()).encode(&mut out_buf);
                }
                Output::Event(Event::Finalized { txid, proof, .. }) => {
                    finalized += 1;
                    last_proof = Some((proof, txid));
                }
                _ => {}
            }
        }
        sw.lap(&mut phases.dispatch);
        rounds += 1;
    }
    let wall = start.elapsed();
    let cpu = thread_cpu_time() - cpu0;
    let written = write_call_bytes().saturating_sub(written0);

    // Outside the clock: the result is what it claims to be.
    let (proof, txid) = last_proof.ok_or("nothing was finalized")?;
    proof.verify(CHAIN, &net.genesis.registry)?;
    if store.get_proof(&txid)?.is_none() {
        return Err("the last finalized transaction has no stored proof".into());
    }
    Ok(RunResult {
        sync: if no_sync { "no_sync" } else { "fsync" },
        finalized,
        rounds,
        wall,
        cpu,
        phases,
        rejected: engine.metrics().tx_rejected,
        written,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.txs == 0 || args.vote_batch == 0 {
        return Err("--txs and --vote-batch must be positive".into());
    }
    let setup = Instant::now();
    let net = Network::new(4, args.txs);
    let txs = net.payments(args.txs, 2);
    let txids: Vec<Txid> = txs.iter().map(|t| t.txid()).collect();
    let votes: Vec<Vec<VoteBatch>> = net.masternodes[1..=PEERS]
        .iter()
        .map(|k| vote_batches(k, &txids, args.vote_batch))
        .collect();
    let stream = build_stream(&txs, &votes, args.vote_batch, args.vote_lag);
    let sigs = input_signatures(&txs[..txs.len().min(64 * 64)]);
    drop(votes);
    let setup_s = setup.elapsed().as_secs_f64();

    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let crypto_time = Duration::from_secs_f64(args.crypto_secs.max(0.1));
    let crypto = measure_crypto(&sigs, VERIFY_BATCH.min(sigs.len()), crypto_time);
    let modes: &[bool] = match args.sync {
        Durability::Fsync => &[false],
        Durability::NoSync => &[true],
        Durability::Both => &[false, true],
    };
    let mut results = Vec::new();
    for &no_sync in modes {
        results.push(run(&net, &stream, &args, no_sync, &base)?);
    }
    // Measured again after the runs: the machine may have drifted.
    let crypto_after = measure_crypto(&sigs, VERIFY_BATCH.min(sigs.len()), crypto_time);
    let batch = crypto.batch_verify.plus(&crypto_after.batch_verify);
    let single = crypto.single_verify.plus(&crypto_after.single_verify);
    // Per 1-input payment: its own signature, plus each peer's batch
    // signature shared by `vote_batch` payments.
    let sigs_per_tx = 1.0 + PEERS as f64 / args.vote_batch as f64;
    let bound_cpu = batch.per_s_cpu() / sigs_per_tx;
    let bound_wall = batch.per_s_wall() / sigs_per_tx;

    for r in &results {
        if r.finalized != args.txs as u64 {
            return Err(format!(
                "{}: finalized {} of {} payments ({} rejected)",
                r.sync, r.finalized, args.txs, r.rejected
            )
            .into());
        }
    }

    if args.json {
        let runs: Vec<_> = results
            .iter()
            .map(|r| {
                let phases: serde_json::Map<String, serde_json::Value> = r
                    .phases
                    .list()
                    .iter()
                    .map(|(k, d)| {
                        (
                            k.to_string(),
                            json!({"wall_s": d.wall.as_secs_f64(), "cpu_s": d.cpu.as_secs_f64()}),
                        )
                    })
                    .collect();
                let (wall_rate, cpu_rate) = r.rates();
                json!({
                    "sync": r.sync,
                    "finalized": r.finalized,
                    "rounds": r.rounds,
                    "wall_s": r.wall.as_secs_f64(),
                    "cpu_s": r.cpu.as_secs_f64(),
                    "finalized_per_s_wall": wall_rate,
                    "finalized_per_cpu_s": cpu_rate,
                    "fraction_of_bound_wall": wall_rate / bound_wall,
                    "fraction_of_bound_cpu": cpu_rate / bound_cpu,
                    "phases": phases,
                    "write_call_bytes_per_tx": r.written as f64 / r.finalized as f64,
                })
            })
            .collect();
        let doc = json!({
            "txs": args.txs,
            "round_inputs": args.round_inputs,
            "vote_batch": args.vote_batch,
            "vote_lag": args.vote_lag,
            "peers": PEERS,
            "setup_s": setup_s,
            "crypto": {
                "batch": crypto.batch,
                "batch_verify_sigs_per_cpu_s": batch.per_s_cpu(),
                "batch_verify_sigs_per_s_wall": batch.per_s_wall(),
                "batch_verify_sigs_per_cpu_s_before": crypto.batch_verify.per_s_cpu(),
                "batch_verify_sigs_per_cpu_s_after": crypto_after.batch_verify.per_s_cpu(),
                "single_verify_strict_per_cpu_s": single.per_s_cpu(),
                "sigs_per_tx": sigs_per_tx,
                "bound_tx_per_cpu_s": bound_cpu,
                "bound_tx_per_s_wall": bound_wall,
            },
            "runs": runs,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }

    println!(
        "time-ingest: {} payments (1 in, 2 out), 4 masternodes, {} peers' vote batches of {}, \
         rounds of {} inputs, vote lag {} (setup {:.1} s, not timed)",
        args.txs, PEERS, args.vote_batch, args.round_inputs, args.vote_lag, setup_s
    );
    println!();
    println!(
        "crypto bound, measured in this process on this thread (per CPU second / per wall second):"
    );
    println!(
        "  ed25519 ZIP 215 batch of {:<3}       {:>8.0} / {:>8.0} signatures/s  (per CPU s before {:.0}, after {:.0})",
        crypto.batch,
        batch.per_s_cpu(),
        batch.per_s_wall(),
        crypto.batch_verify.per_s_cpu(),
        crypto_after.batch_verify.per_s_cpu()
    );
    println!(
        "  ed25519 ZIP 215, one by one        {:>8.0} / {:>8.0} signatures/s",
        single.per_s_cpu(),
        single.per_s_wall()
    );
    println!(
        "  bound for 1-input payments         {:>8.0} / {:>8.0} tx/s  ({sigs_per_tx:.3} signatures per payment)",
        bound_cpu, bound_wall
    );
    println!();
    println!(
        "{:<8} {:>10} {:>8} {:>8} {:>10} {:>10} {:>12} {:>12}",
        "storage",
        "finalized",
        "wall s",
        "cpu s",
        "tx/cpu-s",
        "tx/s wall",
        "of bound cpu",
        "of bound wall"
    );
    for r in &results {
        let (wall_rate, cpu_rate) = r.rates();
        println!(
            "{:<8} {:>10} {:>8.2} {:>8.2} {:>10.0} {:>10.0} {:>11.0}% {:>12.0}%",
            r.sync,
            r.finalized,
            r.wall.as_secs_f64(),
            r.cpu.as_secs_f64(),
            cpu_rate,
            wall_rate,
            100.0 * cpu_rate / bound_cpu,
            100.0 * wall_rate / bound_wall
        );
    }
    for r in &results {
        println!();
        println!(
            "where the time went ({}, {} rounds)          cpu s   share  cpu µs/tx   wall s",
            r.sync, r.rounds
        );
        let total = r.cpu.as_secs_f64();
        for (name, d) in r.phases.list() {
            println!(
                "  {:<36} {:>8.3} {:>6.1}% {:>10.2} {:>8.3}",
                name,
                d.cpu.as_secs_f64(),
                100.0 * d.cpu.as_secs_f64() / total,
                1e6 * d.cpu.as_secs_f64() / r.finalized as f64,
                d.wall.as_secs_f64(),
            );
        }
        println!(
            "  LMDB page writes per payment: {:.0} bytes through write calls",
            r.written as f64 / r.finalized as f64
        );
    }
    Ok(())
}
