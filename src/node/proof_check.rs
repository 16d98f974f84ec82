//! Verification of peers' TimeProofs on a thread of its own, so that the
//! network task reading a peer never waits on signatures: a junk proof of a
//! megabyte (a transaction with thousands of signed inputs) costs tens of
//! milliseconds, and votes read behind it on the same task would wait.
//!
//! Owns the queue and its bounds: at most [`PER_PEER`] proofs of one peer
//! waiting (so one peer's flood delays another's proof by at most that many
//! checks), at most [`MAX_QUEUED_BYTES`] in all. Over a bound a proof is
//! dropped and counted; a proof that mattered comes back through catch-up,
//! which asks for it again. Verified proofs go to the core, invalid ones
//! cost their sender reputation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam::channel as cb;
use tracing::debug;

use crate::masternode::Misbehaviour;
use crate::node::core_input::{CoreInput, CoreTx};
use crate::protocol::engine::verify_proof;
use crate::protocol::registry::Registry;
use crate::protocol::timeproof::TimeProof;
use crate::protocol::types::{ChainId, PublicKey, Transaction};
use crate::protocol::validation::Limits;

/// Most proofs of one peer waiting to be checked.
pub const PER_PEER: usize = 16;
/// Most bytes of proofs (with their transactions) waiting, all peers.
pub const MAX_QUEUED_BYTES: u64 = 16 << 20;

/// Counters for operators.
#[derive(Default, Debug)]
pub struct ProofCheckStats {
    pub verified: AtomicU64,
    pub invalid: AtomicU64,
    /// Dropped over [`PER_PEER`] or [`MAX_QUEUED_BYTES`].
    pub dropped: AtomicU64,
}

struct Job {
    from: PublicKey,
    tx: Transaction,
    proof: TimeProof,
    bytes: u64,
}

#[derive(Default)]
struct Waiting {
    per_peer: HashMap<PublicKey, usize>,
    bytes: u64,
}

pub(super) struct ProofCheck {
    queue: Option<cb::Sender<Job>>,
    waiting: Arc<Mutex<Waiting>>,
    pub stats: Arc<ProofCheckStats>,
    thread: Option<JoinHandle<()>>,
}

impl ProofCheck {
    pub(super) fn start(chain_id: ChainId, registry: Registry, core: CoreTx) -> Self {
        let (queue, rx) = cb::unbounded::<Job>(); // bounded by `Waiting`
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let stats = Arc::new(ProofCheckStats::default());
        let (w, s) = (waiting.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("proof-check".into())
            .spawn(move || {
                let limits = Limits::default();
                for job in rx {
                    let r = verify_proof(&job.tx, &job.proof, chain_id, &registry, &limits);
                    {
                        let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
                        w.bytes -= job.bytes;
                        if let Some(n) = w.per_peer.get_mut(&job.from) {
                            *n -= 1;
                            if *n == 0 {
                                w.per_peer.remove(&job.from);
                            }
                        }
                    }
                    match r {
                        Ok(()) => {
                            s.verified.fetch_add(1, Ordering::Relaxed);
                            core.offer(CoreInput::Proof {
                                tx: job.tx,
                                proof: job.proof,
                            });
                        }
                        Err(e) => {
                            s.invalid.fetch_add(1, Ordering::Relaxed);
                            debug!(peer = %job.from, "invalid proof from peer: {e}");
                            core.offer(CoreInput::Misbehaved {
                                peer: job.from,
                                why: Misbehaviour::InvalidProof,
                            });
                        }
                    }
                }
            })
            .expect("spawn proof-check thread");
        ProofCheck {
            queue: Some(queue),
            waiting,
            stats,
            thread: Some(thread),
        }
    }

    /// Queues `from`'s proof for checking; false (counted) over a bound.
    pub(super) fn submit(&self, from: PublicKey, tx: Transaction, proof: TimeProof) -> bool {
        let bytes = (tx.encoded_len() + proof.votes.len() * 128) as u64;
        {
            let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            let mine = w.per_peer.get(&from).copied().unwrap_or(0);
            if mine >= PER_PEER || w.bytes + bytes > MAX_QUEUED_BYTES {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            w.bytes += bytes;
            *w.per_peer.entry(from).or_default() += 1;
        }
        let job = Job {
            from,
            tx,
            proof,
            bytes,
        };
        self.queue.as_ref().is_some_and(|q| q.send(job).is_ok())
    }
}

impl Drop for ProofCheck {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
