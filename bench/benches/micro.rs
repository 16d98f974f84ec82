//! Criterion micro-benchmarks of the hot paths one masternode runs per
//! payment: codec, transaction validation, ed25519 single vs batch, one
//! check under a decoded key, vote
//! batches, vote aggregation to quorum, and the LMDB commit of a round.
//!
//! Short by default (1 s warm-up, 3 s measurement; criterion's command-line
//! flags override). Everything but the LMDB group is timed in the CPU time
//! of the benchmark thread, so figures taken on a shared, busy machine still
//! say what one core does; `TIME_BENCH_CLOCK=wall` times everything in wall
//! time. The LMDB group is always wall time: waiting for fsync is the point.
//! Its environments go in a temporary directory under `TIME_BENCH_DIR`
//! (default: the system temporary directory), which must be a real disk for
//! the fsync figure to mean anything.
//!
//! ```sh
//! cargo bench -p time-bench --bench micro -- --warm-up-time 1 --measurement-time 3
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BatchSize, Criterion, Throughput};

use time_bench::{approvals, thread_cpu_time, vote_batches, Network, CHAIN, EPOCH};
use timecoin::protocol::message::Message;
use timecoin::protocol::registry::Registry;
use timecoin::protocol::tally::{TallyEvent, VerifiedBatch, VoteAggregator};
use timecoin::protocol::timeproof::TimeProof;
use timecoin::protocol::types::{OutPoint, Transaction, Txid};
use timecoin::protocol::utxo::{UtxoEntry, UtxoState};
use timecoin::protocol::validation::{
    check_amounts_and_owners, check_stateless, verify_signatures, verify_signatures_batch, Limits,
};
use timecoin::protocol::vote::VoteBatch;
use timecoin::storage::lmdb::LmdbOptions;
use timecoin::storage::{LmdbStore, Store, Write};

/// Payments signed for the validation benchmarks (a multiple of 64).
const PAYMENTS: usize = 1024;

struct Fixture {
    net: Network,
    txs: Vec<Transaction>,
    txids: Vec<Txid>,
}

impl Fixture {
    fn new() -> Fixture {
        let net = Network::new(4, PAYMENTS);
        let txs = net.payments(PAYMENTS, 2);
        let txids = txs.iter().map(|t| t.txid()).collect();
        Fixture { net, txs, txids }
    }

    fn registry(&self) -> &Registry {
        &self.net.genesis.registry
    }

    /// The genesis entry payment `i` spends.
    fn spent(&self, i: usize) -> UtxoEntry {
        let prev = self.txs[i].inputs[0].prev;
        self.net
            .genesis
            .utxos
            .iter()
            .find(|(op, _)| *op == prev)
            .map(|(_, e)| *e)
            .expect("genesis coin")
    }

    /// A TimeProof for payment 0 from 3 of the 4 masternodes, each cert cut
    /// from a batch of `per_batch` votes.
    fn proof(&self, per_batch: usize) -> TimeProof {
        let votes = self.net.masternodes[..3]
            .iter()
            .map(|k| {
                let b = vote_batches(k, &self.txids[..per_batch], per_batch).remove(0);
                let levels = b.verify().expect("valid batch");
                b.cert(&levels, 0)
            })
            .collect();
        TimeProof {
            chain_id: CHAIN,
            txid: self.txids[0],
            votes,
        }
    }
}

fn codec<M: Measurement>(c: &mut Criterion<M>, f: &Fixture) {
    let mut g = c.benchmark_group("codec");
    let tx = &f.txs[0];
    let bytes = tx.to_bytes();
    g.throughput(Throughput::Elements(1));
    let mut buf = Vec::with_capacity(bytes.len());
    g.bench_function("tx_encode", |b| {
        b.iter(|| {
            buf.clear();
            tx.encode(&mut buf);
            buf.len()
        })
    });
    g.bench_function("tx_decode", |b| {
        b.iter(|| Transaction::from_bytes(&bytes).expect("decodes"))
    });
    g.bench_function("txid", |b| b.iter(|| tx.txid()));
    for n in [28usize, 1000] {
        let batch = vote_batches(&f.net.masternodes[1], &f.txids[..n], n).remove(0);
        let frame = Message::VoteBatch(batch).to_bytes();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("message_vote_batch_decode/{n}"), |b| {
            b.iter(|| Message::decode(&frame).expect("decodes"))
        });
    }
    g.throughput(Throughput::Elements(1));
    for n in [28usize, 1000] {
        let proof = f.proof(n);
        let reg = f.registry();
        g.bench_function(
            format!("timeproof_verify/3_certs_from_batches_of_{n}"),
            |b| b.iter(|| proof.verify(CHAIN, reg).expect("valid proof")),
        );
    }
    g.finish();
}

fn validation<M: Measurement>(c: &mut Criterion<M>, f: &Fixture) {
    let mut g = c.benchmark_group("validation");
    let limits = Limits::default();
    let (tx, txid) = (&f.txs[0], f.txids[0]);
    let spent = [f.spent(0)];
    g.throughput(Throughput::Elements(1));
    g.bench_function("stateless_and_amounts", |b| {
        b.iter(|| {
            check_stateless(tx, CHAIN, &limits).expect("valid");
            check_amounts_and_owners(tx, &spent, &limits).expect("valid")
        })
    });
    g.bench_function("verify_signatures/1_input_strict", |b| {
        b.iter(|| verify_signatures(tx, &txid).expect("valid"))
    });
    let chunks: Vec<(Vec<&Transaction>, &[Txid])> = f
        .txs
        .chunks_exact(64)
        .zip(f.txids.chunks_exact(64))
        .map(|(t, i)| (t.iter().collect(), i))
        .collect();
    g.throughput(Throughput::Elements(64));
    let mut next = 0;
    g.bench_function("verify_signatures_batch/64_txs", |b| {
        b.iter(|| {
            let (refs, ids) = &chunks[next % chunks.len()];
            next += 1;
            let r = verify_signatures_batch(refs, ids);
            assert!(r[0].is_ok());
            r
        })
    });
    g.finish();
}

/// One signature checked alone: under the key's bytes (decoded on every
/// check, `sig::verify`) and under a key decoded once (`sig::DecodedKey`,
/// what the fast path uses for a burst of one datagram).
fn single_check<M: Measurement>(c: &mut Criterion<M>, f: &Fixture) {
    use ed25519_dalek::Signer;
    let mut g = c.benchmark_group("ed25519_one");
    let key = &f.net.masternodes[1];
    let pk = key.verifying_key().to_bytes();
    let msg = vec![7u8; 200];
    let sig = key.sign(&msg).to_bytes();
    let decoded = timecoin::sig::DecodedKey::new(&pk);
    g.throughput(Throughput::Elements(1));
    g.bench_function("key_bytes", |b| {
        b.iter(|| assert!(timecoin::sig::verify(&pk, &msg, &sig)))
    });
    g.bench_function("decoded_key", |b| {
        b.iter(|| assert!(decoded.verify(&msg, &sig)))
    });
    g.finish();
}

fn vote<M: Measurement>(c: &mut Criterion<M>, f: &Fixture) {
    let mut g = c.benchmark_group("vote");
    let key = &f.net.masternodes[1];
    for n in [28usize, 1000] {
        let items = approvals(&f.txids[..n]);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("sign/{n}"), |b| {
            b.iter_batched(
                || items.clone(),
                |items| VoteBatch::sign(CHAIN, EPOCH, key, items),
                BatchSize::SmallInput,
            )
        });
        let batch = VoteBatch::sign(CHAIN, EPOCH, key, items.clone());
        g.bench_function(format!("verify/{n}"), |b| {
            b.iter(|| batch.verify().expect("valid"))
        });
    }
    g.finish();
}

fn aggregation<M: Measurement>(c: &mut Criterion<M>, f: &Fixture) {
    let mut g = c.benchmark_group("aggregation");
    let reg = f.registry().clone();
    const TXIDS: usize = 1000;
    const VOTERS: usize = 3;
    // 3 of 4 equal voters reach the quorum (3): every txid yields exactly
    // one Quorum event, with its 3 certificates cut.
    for per_batch in [28usize, 1000] {
        let batches: Vec<Arc<VerifiedBatch>> = f.net.masternodes[..VOTERS]
            .iter()
            .flat_map(|k| vote_batches(k, &f.txids[..TXIDS], per_batch))
            .map(|b| Arc::new(VerifiedBatch::verify(b).expect("valid")))
            .collect();
        g.throughput(Throughput::Elements((TXIDS * VOTERS) as u64));
        g.bench_function(
            format!("add_to_quorum/{TXIDS}_txids_x_{VOTERS}_voters/batches_of_{per_batch}"),
            |b| {
                b.iter_batched(
                    || {
                        (
                            VoteAggregator::new(reg.clone(), reg.quorum(), 1 << 20),
                            Vec::with_capacity(2 * TXIDS),
                        )
                    },
                    |(mut agg, mut out): (VoteAggregator, Vec<TallyEvent>)| {
                        for vb in &batches {
                            agg.add(0, vb, None, &mut out);
                        }
                        let quorums = out
                            .iter()
                            .filter(|e| matches!(e, TallyEvent::Quorum { .. }))
                            .count();
                        assert_eq!(quorums, TXIDS);
                        (agg, out)
                    },
                    BatchSize::LargeInput,
                )
            },
        );
    }
    g.finish();
}

/// Outpoint `n` of the LMDB benchmark: txids spread over the key space.
fn outpoint(n: u64) -> OutPoint {
    OutPoint {
        txid: Txid(*blake3::hash(&n.to_le_bytes()).as_bytes()),
        vout: 0,
    }
}

fn lmdb(c: &mut Criterion, f: &Fixture) {
    const PUTS: usize = 1000;
    /// Outputs already in the table, so the tree has a realistic depth.
    const PREFILL: u64 = 100_000;
    let base: PathBuf = std::env::var_os("TIME_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let entry = f.spent(0);
    let own_votes = vote_batches(&f.net.masternodes[0], &f.txids[..PUTS], PUTS).remove(0);
    let mut g = c.benchmark_group("lmdb");
    g.sample_size(10);
    g.throughput(Throughput::Elements(PUTS as u64));
    for no_sync in [false, true] {
        let dir = tempfile::Builder::new()
            .prefix("time-bench-lmdb-")
            .tempdir_in(&base)
            .expect("temporary directory");
        let mut store = LmdbStore::open(
            dir.path(),
            LmdbOptions {
                no_sync,
                ..Default::default()
            },
        )
        .expect("open lmdb");
        store.init(&f.net.genesis).expect("init");
        let prefill: Vec<Write> = (0..PREFILL)
            .map(|n| Write::PutUtxo(outpoint(n), entry))
            .collect();
        store.apply(&prefill).expect("prefill");
        // Each round locks fresh outputs (new keys, as a live node's are).
        let mut next = PREFILL;
        let name = if no_sync {
            "round_1000_utxos_1_vote_batch/no_sync"
        } else {
            "round_1000_utxos_1_vote_batch/fsync"
        };
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let mut w: Vec<Write> = (next..next + PUTS as u64)
                        .map(|n| {
                            Write::PutUtxo(
                                outpoint(n),
                                UtxoEntry {
                                    state: UtxoState::Locked {
                                        txid: outpoint(n).txid,
                                    },
                                    ..entry
                                },
                            )
                        })
                        .collect();
                    next += PUTS as u64;
                    w.push(Write::AppendOwnVotes(own_votes.clone()));
                    w
                },
                |w| store.apply(&w).expect("commit"),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

/// CPU time of the benchmark thread: what one core spends, whatever else the
/// machine is running.
struct ThreadCpu;

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_time()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu_time().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, d: &Duration) -> f64 {
        // Nanoseconds, as the wall-time formatter expects.
        d.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

fn configured<M: Measurement>(c: Criterion<M>) -> Criterion<M> {
    c.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

fn main() {
    let f = Fixture::new();
    let wall = std::env::var("TIME_BENCH_CLOCK").is_ok_and(|v| v == "wall");
    if wall {
        let mut c = configured(Criterion::default());
        codec(&mut c, &f);
        validation(&mut c, &f);
        single_check(&mut c, &f);
        vote(&mut c, &f);
        aggregation(&mut c, &f);
    } else {
        let mut c = configured(Criterion::default().with_measurement(ThreadCpu));
        codec(&mut c, &f);
        validation(&mut c, &f);
        single_check(&mut c, &f);
        vote(&mut c, &f);
        aggregation(&mut c, &f);
    }
    let mut c = configured(Criterion::default());
    lmdb(&mut c, &f);
    c.final_summary();
}
