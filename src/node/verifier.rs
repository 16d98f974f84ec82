//! Transaction signature verification on a pool of threads, in batches.
//!
//! Network tasks hand transactions here instead of verifying them one by one
//! on the tokio workers: a batch of up to 64 transactions costs one ed25519
//! batch verification, about 2-3x cheaper per signature. The core thread then
//! only does stateful work.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use std::time::Duration;

use time_net::mailbox;

use crate::protocol::types::{ChainId, Transaction, Txid};
use crate::protocol::validation::{self, Limits, TxError};

const BATCH: usize = 64;

/// Which queue a transaction waits in. Peers' lock broadcasts and wallets'
/// submissions wait apart and are taken in turn (half of each batch for
/// each, the rest for whichever has more), so no amount of wallet traffic
/// can delay or crowd out a peer's broadcast, and the reverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Peer = 0,
    Wallet = 1,
}

/// Most transactions waiting in one lane.
pub const LANE_JOBS: usize = 1 << 16;
/// Most encoded bytes waiting in the peer lane: with transactions of up to
/// 1 MB, a count alone would let one lane hold gigabytes.
pub const LANE_BYTES: usize = 16 << 20;
/// Most encoded bytes waiting in the wallet lane (about 28,000 payments of
/// 300 bytes): smaller, so that everything any number of wallet
/// connections can make a node hold stays within the memory bound
/// (PROTOCOL.md, "The memory bound").
pub const WALLET_LANE_BYTES: usize = 8 << 20;

/// The byte cap of `lane`.
pub const fn lane_bytes(lane: Lane) -> usize {
    match lane {
        Lane::Peer => LANE_BYTES,
        Lane::Wallet => WALLET_LANE_BYTES,
    }
}

pub struct Job<T> {
    pub tx: Transaction,
    pub tag: T,
    bytes: usize,
    lane: usize,
}

/// Counters for operators.
#[derive(Default, Debug)]
pub struct VerifierStats {
    pub verified: AtomicU64,
    pub failed: AtomicU64,
    pub batches: AtomicU64,
    /// Refused because the lane was full, per [`Lane`].
    pub dropped: [AtomicU64; 2],
    /// Bytes waiting per lane.
    pub queued_bytes: [AtomicUsize; 2],
}

pub struct Verifier<T: Send + 'static> {
    lanes: Option<mailbox::Sender<Job<T>>>,
    threads: Vec<JoinHandle<()>>,
    pub stats: Arc<VerifierStats>,
}

impl<T: Send + 'static> Verifier<T> {
    /// `done` receives every transaction with its txid and verdict (stateless
    /// checks and signatures), from a pool thread.
    pub fn start<F>(threads: usize, chain_id: ChainId, limits: Limits, done: F) -> Self
    where
        F: Fn(Transaction, Txid, Result<(), TxError>, T) + Send + Sync + 'static,
    {
        // Lane 0 peers, lane 1 wallets (`Lane`), each bounded on its own.
        let (lanes_tx, lanes_rx) = mailbox::bounded::<Job<T>>(2, LANE_JOBS);
        let done = Arc::new(done);
        let stats = Arc::new(VerifierStats::default());
        let threads = (0..threads.max(1))
            .map(|i| {
                let rx = lanes_rx.clone();
                let done = done.clone();
                let stats = stats.clone();
                let limits = limits.clone();
                std::thread::Builder::new()
                    .name(format!("verify-{i}"))
                    .spawn(move || worker(rx, chain_id, limits, &*done, &stats))
                    .expect("spawn verifier thread")
            })
            .collect();
        Verifier {
            lanes: Some(lanes_tx),
            threads,
            stats,
        }
    }

    /// Transactions waiting in `lane`.
    pub fn queued(&self, lane: Lane) -> usize {
        self.lanes.as_ref().map_or(0, |l| l.len(lane as usize))
    }

    /// Queues a transaction in `lane`; `Err` gives it back when that lane
    /// holds [`LANE_JOBS`] transactions or [`lane_bytes`] bytes (counted).
    pub fn submit(&self, tx: Transaction, tag: T, lane: Lane) -> Result<(), (Transaction, T)> {
        let l = lane as usize;
        let bytes = tx.encoded_len();
        let queued = &self.stats.queued_bytes[l];
        if queued.fetch_add(bytes, Ordering::Relaxed) + bytes > lane_bytes(lane) {
            queued.fetch_sub(bytes, Ordering::Relaxed);
            self.stats.dropped[l].fetch_add(1, Ordering::Relaxed);
            return Err((tx, tag));
        }
        let s = self.lanes.as_ref().expect("running");
        s.try_send(
            l,
            Job {
                tx,
                tag,
                bytes,
                lane: l,
            },
        )
        .map_err(|e| {
            queued.fetch_sub(bytes, Ordering::Relaxed);
            self.stats.dropped[l].fetch_add(1, Ordering::Relaxed);
            let j = e.into_inner();
            (j.tx, j.tag)
        })
    }
}

impl<T: Send + 'static> Drop for Verifier<T> {
    fn drop(&mut self) {
        self.lanes.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Fills `jobs` with up to [`BATCH`] jobs, half from the peer lane first,
/// then from the wallet lane, then the rest from the peer lane; waits
/// (parked) for the first job. False when the queue is closed and drained.
fn take_batch<T>(rx: &mailbox::Receiver<Job<T>>, jobs: &mut Vec<Job<T>>) -> bool {
    loop {
        let taken = rx.recv_with(Duration::from_secs(3600), |lanes| {
            let before = jobs.len();
            let shares = [
                (Lane::Peer, BATCH / 2),
                (Lane::Wallet, BATCH),
                (Lane::Peer, BATCH),
            ];
            for (lane, share) in shares {
                let q = &mut lanes[lane as usize];
                while jobs.len() < share {
                    let Some(j) = q.pop_front() else { break };
                    jobs.push(j);
                }
            }
            jobs.len() - before
        });
        match taken {
            Ok(n) if n > 0 => return true,
            Ok(_) | Err(mailbox::RecvTimeoutError::Timeout) => {}
            Err(mailbox::RecvTimeoutError::Disconnected) => return false,
        }
    }
}

fn worker<T, F>(
    rx: mailbox::Receiver<Job<T>>,
    chain_id: ChainId,
    limits: Limits,
    done: &F,
    stats: &VerifierStats,
) where
    F: Fn(Transaction, Txid, Result<(), TxError>, T),
{
    let mut jobs: Vec<Job<T>> = Vec::with_capacity(BATCH);
    while take_batch(&rx, &mut jobs) {
        for j in &jobs {
            stats.queued_bytes[j.lane].fetch_sub(j.bytes, Ordering::Relaxed);
        }
        let txids: Vec<Txid> = jobs.iter().map(|j| j.tx.txid()).collect();
        let stateless: Vec<Result<(), TxError>> = jobs
            .iter()
            .map(|j| validation::check_stateless(&j.tx, chain_id, &limits))
            .collect();
        let idx: Vec<usize> = (0..jobs.len()).filter(|i| stateless[*i].is_ok()).collect();
        let refs: Vec<&Transaction> = idx.iter().map(|i| &jobs[*i].tx).collect();
        let ids: Vec<Txid> = idx.iter().map(|i| txids[*i]).collect();
        let sig = validation::verify_signatures_batch(&refs, &ids);
        let mut verdicts = stateless;
        for (k, i) in idx.into_iter().enumerate() {
            verdicts[i] = sig[k].clone();
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        for ((job, txid), verdict) in jobs.drain(..).zip(txids).zip(verdicts) {
            if verdict.is_ok() {
                stats.verified.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            done(job.tx, txid, verdict, job.tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::protocol::types::{TxOutput, COIN};
    use timecoin_core::testkit::{address_of, genesis_outpoint, key_from_seed};

    fn tx(i: u32) -> Transaction {
        let k = key_from_seed("verifier", 0);
        Transaction::build_signed(
            1,
            &k,
            &[genesis_outpoint(0, i)],
            vec![TxOutput {
                amount: COIN,
                address: address_of(&k),
            }],
        )
    }

    #[test]
    fn a_wallet_flood_neither_delays_nor_crowds_out_peer_broadcasts() {
        // A gate holds the only worker until both lanes are filled.
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let order = Arc::new(Mutex::new(Vec::<Lane>::new()));
        let (g, o) = (gate.clone(), order.clone());
        let v = Verifier::start(1, 1, Limits::default(), move |_, _, _, lane: Lane| {
            drop(g.lock().unwrap());
            o.lock().unwrap().push(lane);
        });
        // The worker takes the first job and waits at the gate.
        v.submit(tx(0), Lane::Wallet, Lane::Wallet).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        // A wallet flood until its lane refuses, then 10 peer broadcasts.
        let mut wallet = 0;
        while v.submit(tx(wallet + 1), Lane::Wallet, Lane::Wallet).is_ok() {
            wallet += 1;
        }
        let by_bytes = WALLET_LANE_BYTES / tx(1).encoded_len();
        assert_eq!(
            wallet as usize,
            LANE_JOBS.min(by_bytes),
            "the wallet lane is bounded (in count and bytes)"
        );
        for i in 0..10 {
            v.submit(tx(1_000_000 + i), Lane::Peer, Lane::Peer)
                .expect("the peer lane has room whatever the wallets do");
        }
        assert_eq!(
            v.stats.dropped[Lane::Wallet as usize].load(Ordering::Relaxed),
            1
        );
        drop(held);
        // Every peer broadcast is verified in the first batch after the
        // one in progress.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let o = order.lock().unwrap();
            if o.iter().filter(|l| **l == Lane::Peer).count() == 10 {
                let last_peer = o.iter().rposition(|l| *l == Lane::Peer).unwrap();
                assert!(last_peer < 1 + BATCH, "peer jobs at {last_peer}");
                break;
            }
            drop(o);
            assert!(std::time::Instant::now() < deadline, "peer jobs verified");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_lane_is_bounded_by_bytes_too() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let g = gate.clone();
        let v = Verifier::start(1, 1, Limits::default(), move |_, _, _, _: ()| {
            drop(g.lock().unwrap());
        });
        // One big transaction: 40,000 inputs (about 1.5 MB encoded).
        let k = key_from_seed("verifier", 1);
        let ins: Vec<_> = (0..40_000).map(|i| genesis_outpoint(1, i)).collect();
        let big = Transaction::build_signed(
            1,
            &k,
            &ins,
            vec![TxOutput {
                amount: COIN,
                address: address_of(&k),
            }],
        );
        let per = big.encoded_len();
        v.submit(big.clone(), (), Lane::Peer).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut n = 0;
        while v.submit(big.clone(), (), Lane::Peer).is_ok() {
            n += 1;
        }
        assert_eq!(n, LANE_BYTES / per, "{per} bytes each");
        assert!(v.stats.queued_bytes[0].load(Ordering::Relaxed) <= LANE_BYTES);
        drop(held);
    }
}
