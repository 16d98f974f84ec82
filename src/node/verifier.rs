//! Transaction signature verification on a pool of threads, in batches.
//!
//! Network tasks hand transactions here instead of verifying them one by one
//! on the tokio workers: a batch of up to 64 transactions costs one ed25519
//! batch verification, about 2-3x cheaper per signature. The core thread then
//! only does stateful work.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam::channel as cb;

use crate::protocol::types::{ChainId, Transaction, Txid};
use crate::protocol::validation::{self, Limits, TxError};

const BATCH: usize = 64;

pub struct Job<T> {
    pub tx: Transaction,
    pub tag: T,
}

/// Counters for operators.
#[derive(Default, Debug)]
pub struct VerifierStats {
    pub verified: AtomicU64,
    pub failed: AtomicU64,
    pub batches: AtomicU64,
    pub dropped: AtomicU64,
}

pub struct Verifier<T: Send + 'static> {
    tx: Option<cb::Sender<Job<T>>>,
    threads: Vec<JoinHandle<()>>,
    pub stats: Arc<VerifierStats>,
}

impl<T: Send + 'static> Verifier<T> {
    /// `done` receives every transaction with its txid and verdict (stateless
    /// checks and signatures), from a pool thread.
    pub fn start<F>(
        threads: usize,
        queue: usize,
        chain_id: ChainId,
        limits: Limits,
        done: F,
    ) -> Self
    where
        F: Fn(Transaction, Txid, Result<(), TxError>, T) + Send + Sync + 'static,
    {
        let (tx, rx) = cb::bounded::<Job<T>>(queue);
        let done = Arc::new(done);
        let stats = Arc::new(VerifierStats::default());
        let threads = (0..threads.max(1))
            .map(|i| {
                let rx = rx.clone();
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
            tx: Some(tx),
            threads,
            stats,
        }
    }

    /// Queues a transaction; `Err` gives it back when the queue is full.
    pub fn submit(&self, tx: Transaction, tag: T) -> Result<(), Job<T>> {
        let s = self.tx.as_ref().expect("running");
        s.try_send(Job { tx, tag }).map_err(|e| {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            e.into_inner()
        })
    }
}

impl<T: Send + 'static> Drop for Verifier<T> {
    fn drop(&mut self) {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn worker<T, F>(
    rx: cb::Receiver<Job<T>>,
    chain_id: ChainId,
    limits: Limits,
    done: &F,
    stats: &VerifierStats,
) where
    F: Fn(Transaction, Txid, Result<(), TxError>, T),
{
    let mut jobs: Vec<Job<T>> = Vec::with_capacity(BATCH);
    while let Ok(first) = rx.recv() {
        jobs.push(first);
        while jobs.len() < BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
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
