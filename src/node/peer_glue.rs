//! Messages from authenticated peer masternodes: the pool's inbox
//! ([`spawn_pool_inbox`]), through [`handle_peer_message`], which also
//! answers and applies fast-path repairs.
//!
//! Owns [`PeerCtx`], the handles it is given at construction. It must never
//! run protocol logic or verify signatures here: transactions and votes go to
//! [`Ingest`], everything the state machine decides goes to the core queue.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use time_net::pool::Inbox;
use time_net::priority::Priority;
use tracing::warn;

use crate::masternode::Misbehaviour;
use crate::node::core_input::{CoreInput, CoreTx};
use crate::node::fastpath::{FastPathReceiver, RepairRing};
use crate::node::ingest::{Ingest, Sink};
use crate::node::peer_net::PeerNet;
use crate::node::wire::{encode, LinkError, NetStats};
use crate::protocol::audience::PeerMessage;
use crate::protocol::message::Message;
use crate::protocol::types::PublicKey;

/// Most datagrams answered for one repair request.
const MAX_REPAIR: u64 = 1024;
/// Most repair bytes sent to one peer per second: a 17-byte request must not
/// buy 1.2 MB over and over. Above it, requests are dropped (counted); the
/// peer asks again with backoff, and what it still misses comes back through
/// catch-up.
pub(super) const MAX_REPAIR_BYTES_PER_S: u64 = 2 << 20;

/// Repair bytes sent per peer in the current second.
#[derive(Default)]
pub(super) struct RepairBudget {
    second: u64,
    spent: std::collections::HashMap<PublicKey, u64>,
    pub refused: u64,
}

impl RepairBudget {
    /// Takes `bytes` from `peer`'s budget for second `now_s`, if it has them.
    fn take(&mut self, now_s: u64, peer: PublicKey, bytes: u64) -> bool {
        if now_s != self.second {
            self.second = now_s;
            self.spent.clear();
        }
        let spent = self.spent.entry(peer).or_default();
        if *spent + bytes > MAX_REPAIR_BYTES_PER_S {
            self.refused += 1;
            return false;
        }
        *spent += bytes;
        true
    }
}

/// The fast-path pieces the reliable path serves: our sent datagrams (to
/// answer repair requests) and the receiver (to apply repairs).
pub(super) struct FastRepair {
    pub ring: Arc<Mutex<RepairRing>>,
    pub receiver: Arc<Mutex<FastPathReceiver>>,
    pub sink: Arc<Sink>,
    pub budget: Mutex<RepairBudget>,
}

/// What handling a peer's message needs, handed over at startup.
pub(super) struct PeerCtx {
    pub ingest: Ingest,
    pub core: CoreTx,
    pub net: Arc<PeerNet>,
    pub stats: Arc<NetStats>,
    /// `None` when the fast path is off.
    pub fast: Option<FastRepair>,
}

/// Drains the pool's inbox.
pub(super) fn spawn_pool_inbox(ctx: Arc<PeerCtx>, mut inbox: Inbox) {
    tokio::spawn(async move {
        while let Some((peer, prio, frame)) = inbox.recv().await {
            ctx.stats.frames_in.fetch_add(1, Ordering::Relaxed);
            ctx.stats.traffic.received(prio, frame.len());
            let peer = PublicKey(peer);
            let r = match Message::decode(&frame) {
                Ok(m) => PeerMessage::try_from(m)
                    .map_err(LinkError::from)
                    .and_then(|m| handle_peer_message(&ctx, peer, m)),
                Err(e) => Err(LinkError::Decode(e)),
            };
            if let Err(e) = r {
                // The pool authenticated the peer; a bad message is
                // counted, costs it reputation, and is dropped; the
                // connection stays.
                ctx.stats.malformed_frames.fetch_add(1, Ordering::Relaxed);
                ctx.core.offer(CoreInput::Misbehaved {
                    peer,
                    why: Misbehaviour::MalformedFrame,
                });
                warn!(%peer, "bad message from peer: {e}");
            }
        }
    });
}

/// One message from an authenticated peer masternode (pool, or a fast-path
/// repair). The type says what a masternode may send; the rest was refused
/// when it was decoded.
pub(super) fn handle_peer_message(
    ctx: &PeerCtx,
    peer: PublicKey,
    msg: PeerMessage,
) -> Result<(), LinkError> {
    // Cheap before expensive: the peer's rate and ban first, then any
    // signature.
    if !ctx.ingest.admit(&peer, &msg) {
        return Ok(());
    }
    let Some(msg) = ctx.ingest.ingest(msg) else {
        return Ok(());
    };
    match msg {
        PeerMessage::TimeProof { tx, proof } => {
            // Checked on the check thread (structure, then the vote
            // signatures, then the transaction's), not on this task and
            // not on the core thread; over its bounds dropped and counted.
            ctx.ingest.checks.submit_proof(peer, tx, proof);
        }
        m @ (PeerMessage::BlockProposal(_)
        | PeerMessage::BlockVote(_)
        | PeerMessage::CommittedBlock(_)) => {
            // Signatures checked on the check thread too; the core gets
            // them checked.
            ctx.ingest.checks.submit_block(peer, m);
        }
        PeerMessage::ProofRequest(txid) => {
            ctx.core.offer(CoreInput::ProofRequest { txid, from: peer });
        }
        PeerMessage::RepairRequest { first, last } => answer_repair(ctx, peer, first, last),
        PeerMessage::Repair(d) => {
            if let Some(f) = &ctx.fast {
                crate::node::fastpath::check_and_deliver(&f.receiver, &[&d], true, &*f.sink);
            }
        }
        PeerMessage::FastPathSeq { next } => {
            if let Some(f) = &ctx.fast {
                f.receiver
                    .lock()
                    .expect("fast path receiver")
                    .announce(&peer, next);
            }
        }
        m @ (PeerMessage::FinalityLogRequest { .. }
        | PeerMessage::FinalityLogPage { .. }
        | PeerMessage::BlockRequest { .. }) => {
            ctx.core.offer(CoreInput::Peer { from: peer, msg: m });
        }
        // Handled by ingest above.
        PeerMessage::TransactionBroadcast(_) | PeerMessage::VoteBatch(_) => {}
        PeerMessage::Ping(_) | PeerMessage::Pong(_) => {}
    }
    Ok(())
}

/// Resends the datagrams `first..=last` we still hold, over the reliable path.
fn answer_repair(ctx: &PeerCtx, peer: PublicKey, first: u64, last: u64) {
    let Some(f) = &ctx.fast else {
        return;
    };
    // Bounded: at most MAX_REPAIR datagrams per request.
    let last = last.min(first.saturating_add(MAX_REPAIR - 1));
    let found: Vec<Bytes> = {
        let ring = f.ring.lock().expect("repair ring");
        (first..=last).filter_map(|s| ring.get(s)).collect()
    };
    let bytes: u64 = found.iter().map(|d| d.len() as u64).sum();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut budget = f.budget.lock().expect("repair budget");
    if !budget.take(now_s, peer, bytes) {
        if budget.refused.is_power_of_two() {
            warn!(%peer, refused = budget.refused, "repair requests over {MAX_REPAIR_BYTES_PER_S} bytes/s refused");
        }
        return;
    }
    drop(budget);
    for d in found {
        ctx.net.send(
            &peer,
            Priority::High,
            encode(&Message::Repair(d.to_vec())),
            &ctx.stats,
        );
    }
}
