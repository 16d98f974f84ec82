//! Signature checks of peers' TimeProofs and block messages (proposals,
//! block votes, committed blocks) on a thread of their own, so that neither
//! the network task reading a peer nor the core thread ever waits on
//! signatures: a junk proof of a megabyte (a transaction with thousands of
//! signed inputs) costs tens of milliseconds, and votes read behind it on
//! the same task would wait.
//!
//! Owns the queue and its bounds: at most [`PER_PEER`] messages and
//! [`PER_PEER_BYTES`] of one peer's proofs waiting (room for a catch-up's
//! answers: up to 2,048 proofs of about a kilobyte asked from each peer at
//! once), [`PER_PEER_BLOCK_BYTES`] of its block messages (two block-sync
//! answers), at most [`MAX_QUEUED_BYTES`] in all. Over a bound a message is
//! dropped and counted; a proof that mattered comes back through catch-up,
//! which asks for it again, a committed block through block sync (its
//! request times out and is asked again), and a round's proposal or votes
//! through the consensus's round timeouts. Checked messages go to the core,
//! invalid ones cost their sender reputation (the state machine decides
//! how much).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam::channel as cb;
use tracing::debug;

use crate::masternode::blocks::check_block_message;
use crate::masternode::Misbehaviour;
use crate::node::core_input::{CoreInput, CoreTx};
use crate::protocol::audience::PeerMessage;
use crate::protocol::engine::verify_proof;
use crate::protocol::registry::Registry;
use crate::protocol::timeproof::TimeProof;
use crate::protocol::types::{ChainId, PublicKey, Transaction};
use crate::protocol::validation::Limits;

/// Most messages of one peer waiting to be checked (catch-up asks a peer
/// for up to 2,048 proofs at once).
pub const PER_PEER: usize = 4_096;
/// Most bytes of one peer's proofs (with their transactions) waiting.
pub const PER_PEER_BYTES: u64 = 4 << 20;
/// Most bytes of one peer's block messages waiting: two block-sync answers
/// ([`timecoin_core::masternode::block_sync::ANSWER_BYTES`] each).
pub const PER_PEER_BLOCK_BYTES: u64 =
    2 * timecoin_core::masternode::block_sync::ANSWER_BYTES as u64;
/// Most bytes of messages waiting, all peers.
pub const MAX_QUEUED_BYTES: u64 = 32 << 20;

/// Counters for operators (`timecoin_peer_checks_total`).
#[derive(Default, Debug)]
pub struct PeerCheckStats {
    pub proofs_verified: AtomicU64,
    pub proofs_invalid: AtomicU64,
    pub blocks_verified: AtomicU64,
    pub blocks_invalid: AtomicU64,
    /// Dropped over [`PER_PEER`], [`PER_PEER_BYTES`],
    /// [`PER_PEER_BLOCK_BYTES`] or [`MAX_QUEUED_BYTES`].
    pub dropped: AtomicU64,
}

enum Work {
    Proof {
        tx: Transaction,
        proof: TimeProof,
    },
    /// A block proposal, block vote or committed block.
    Block(PeerMessage),
}

struct Job {
    from: PublicKey,
    work: Work,
    bytes: u64,
}

#[derive(Default, Clone, Copy)]
struct PeerWaiting {
    messages: usize,
    proof_bytes: u64,
    block_bytes: u64,
}

#[derive(Default)]
struct Waiting {
    per_peer: HashMap<PublicKey, PeerWaiting>,
    bytes: u64,
}

impl Waiting {
    fn done(&mut self, job: &Job) {
        self.bytes -= job.bytes;
        if let Some(p) = self.per_peer.get_mut(&job.from) {
            p.messages -= 1;
            match job.work {
                Work::Proof { .. } => p.proof_bytes -= job.bytes,
                Work::Block(_) => p.block_bytes -= job.bytes,
            }
            if p.messages == 0 {
                self.per_peer.remove(&job.from);
            }
        }
    }
}

pub(super) struct PeerCheck {
    queue: Option<cb::Sender<Job>>,
    waiting: Arc<Mutex<Waiting>>,
    pub stats: Arc<PeerCheckStats>,
    thread: Option<JoinHandle<()>>,
}

impl PeerCheck {
    pub(super) fn start(chain_id: ChainId, registry: Registry, core: CoreTx) -> Self {
        let (queue, rx) = cb::unbounded::<Job>(); // bounded by `Waiting`
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let stats = Arc::new(PeerCheckStats::default());
        let (w, s) = (waiting.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("peer-check".into())
            .spawn(move || {
                let limits = Limits::default();
                for job in rx {
                    w.lock().unwrap_or_else(|e| e.into_inner()).done(&job);
                    let from = job.from;
                    match job.work {
                        Work::Proof { tx, proof } => {
                            match verify_proof(&tx, &proof, chain_id, &registry, &limits) {
                                Ok(()) => {
                                    s.proofs_verified.fetch_add(1, Ordering::Relaxed);
                                    core.offer(CoreInput::Proof { tx, proof });
                                }
                                Err(e) => {
                                    s.proofs_invalid.fetch_add(1, Ordering::Relaxed);
                                    debug!(peer = %from, txid = %proof.txid, "invalid proof from peer: {e}");
                                    core.offer(CoreInput::Misbehaved {
                                        peer: from,
                                        why: Misbehaviour::InvalidProof,
                                    });
                                }
                            }
                        }
                        Work::Block(msg) => match check_block_message(chain_id, &registry, msg) {
                            Some(Ok(msg)) => {
                                s.blocks_verified.fetch_add(1, Ordering::Relaxed);
                                core.offer(CoreInput::CheckedBlock { from, msg });
                            }
                            Some(Err(error)) => {
                                s.blocks_invalid.fetch_add(1, Ordering::Relaxed);
                                debug!(peer = %from, "block message refused: {error}");
                                core.offer(CoreInput::RefusedBlock { from, error });
                            }
                            None => {}
                        },
                    }
                }
            })
            .expect("spawn peer-check thread");
        PeerCheck {
            queue: Some(queue),
            waiting,
            stats,
            thread: Some(thread),
        }
    }

    /// Queues `from`'s proof for checking; false (counted) over a bound.
    pub(super) fn submit_proof(&self, from: PublicKey, tx: Transaction, proof: TimeProof) -> bool {
        let bytes = (tx.encoded_len() + proof.votes.len() * 128) as u64;
        self.submit(from, Work::Proof { tx, proof }, bytes)
    }

    /// Queues `from`'s block proposal, block vote or committed block for
    /// checking; false (counted) over a bound.
    pub(super) fn submit_block(&self, from: PublicKey, msg: PeerMessage) -> bool {
        let bytes = block_message_bytes(&msg);
        self.submit(from, Work::Block(msg), bytes)
    }

    fn submit(&self, from: PublicKey, work: Work, bytes: u64) -> bool {
        {
            let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            let p = w.per_peer.get(&from).copied().unwrap_or_default();
            let over_peer = match work {
                Work::Proof { .. } => p.proof_bytes + bytes > PER_PEER_BYTES,
                Work::Block(_) => p.block_bytes + bytes > PER_PEER_BLOCK_BYTES,
            };
            if p.messages >= PER_PEER || over_peer || w.bytes + bytes > MAX_QUEUED_BYTES {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            w.bytes += bytes;
            let e = w.per_peer.entry(from).or_default();
            e.messages += 1;
            match work {
                Work::Proof { .. } => e.proof_bytes += bytes,
                Work::Block(_) => e.block_bytes += bytes,
            }
        }
        let job = Job { from, work, bytes };
        self.queue.as_ref().is_some_and(|q| q.send(job).is_ok())
    }
}

/// About what a block message holds in memory while it waits.
fn block_message_bytes(msg: &PeerMessage) -> u64 {
    const VOTE: usize = 256;
    let n = match msg {
        PeerMessage::BlockProposal(p) => p.block.encoded_len() + (1 + p.polka.len()) * VOTE,
        PeerMessage::CommittedBlock(c) => c.block.encoded_len() + c.cert.precommits.len() * 96,
        _ => VOTE,
    };
    n as u64
}

impl Drop for PeerCheck {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
