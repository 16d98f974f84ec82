//! Verification of peers' TimeProofs on a thread of its own, so that the
//! network task reading a peer never waits on signatures: a junk proof of a
//! megabyte (a transaction with thousands of signed inputs) costs tens of
//! milliseconds, and votes read behind it on the same task would wait.
//!
//! Owns the queue and its bounds: at most [`PER_PEER`] proofs and
//! [`PER_PEER_BYTES`] of one peer waiting (room for a catch-up's answers:
//! up to 2,048 proofs of about a kilobyte asked from each peer at once),
//! at most [`MAX_QUEUED_BYTES`] in all. Over a bound a proof is
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

/// Most proofs of one peer waiting to be checked (catch-up asks a peer for
/// up to 2,048 at once).
pub const PER_PEER: usize = 4_096;
/// Most bytes of one peer's proofs (with their transactions) waiting.
pub const PER_PEER_BYTES: u64 = 4 << 20;
/// Most bytes of proofs waiting, all peers.
pub const MAX_QUEUED_BYTES: u64 = 32 << 20;

/// Counters for operators.
#[derive(Default, Debug)]
pub struct ProofCheckStats {
    pub verified: AtomicU64,
    pub invalid: AtomicU64,
    /// Dropped over [`PER_PEER`], [`PER_PEER_BYTES`] or [`MAX_QUEUED_BYTES`].
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
    /// Proofs and bytes waiting per peer.
    per_peer: HashMap<PublicKey, (usize, u64)>,
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
                        if let Some((n, b)) = w.per_peer.get_mut(&job.from) {
                            *n -= 1;
                            *b -= job.bytes;
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
                            debug!(peer = %job.from, txid = %job.proof.txid, "invalid proof from peer: {e}");
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
            let (n, b) = w.per_peer.get(&from).copied().unwrap_or((0, 0));
            if n >= PER_PEER || b + bytes > PER_PEER_BYTES || w.bytes + bytes > MAX_QUEUED_BYTES {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            w.bytes += bytes;
            let e = w.per_peer.entry(from).or_default();
            e.0 += 1;
            e.1 += bytes;
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
