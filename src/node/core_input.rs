//! The one way into the core thread: [`CoreInput`], the work it accepts, and
//! [`CoreTx`], the bounded crossbeam sender every producer (network tasks,
//! verifier threads, vote threads, wallet sessions) is handed at
//! construction.
//!
//! Owns the queue's size and its drop accounting. It must never block a
//! network task: only tally outcomes, shutdown and a wallet session's close
//! (from a blocking-pool thread) wait for room.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use time_net::mailbox;
use timecoin_core::masternode::SessionId;

use crate::node::wire::NetStats;
use crate::protocol::audience::PeerMessage;
use crate::protocol::tally::TallyEvent;
use crate::protocol::timeproof::TimeProof;
use crate::protocol::types::{Address, PublicKey, Transaction, Txid};

/// The clock the core thread runs the state machine on (milliseconds since
/// the Unix epoch, advancing monotonically), shared with the network tasks that act for the state
/// machine before it sees a message (peer admission): bans and token
/// buckets must read the same time on both sides.
#[derive(Clone, Copy, Debug)]
pub(super) struct Clock {
    start: std::time::Instant,
    /// Wall-clock time at `start`, in ms since the Unix epoch.
    origin_ms: u64,
}

impl Clock {
    /// Milliseconds since the Unix epoch, read once from the wall clock and
    /// advanced by the monotonic clock: block times are wall-clock times
    /// other nodes can compare, and a wall-clock step (NTP) never moves the
    /// protocol's timers backwards.
    pub(super) fn start() -> Self {
        let origin_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Clock {
            start: std::time::Instant::now(),
            origin_ms,
        }
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.origin_ms + self.start.elapsed().as_millis() as u64
    }
}

/// Inputs queued for the core thread.
pub(super) const CORE_QUEUE: usize = 1 << 18;

/// Work for the core thread.
pub(super) enum CoreInput {
    Tx {
        tx: Transaction,
        /// Stateless checks and signatures already passed.
        prechecked: bool,
    },
    /// A wallet session started: the core delivers its replies to `to`.
    /// Sent before any other input of the session.
    WalletOpen {
        session: SessionId,
        to: crate::node::wallet_server::SessionTx,
    },
    /// A wallet session ended (must reach the core: it frees the session).
    WalletClose(SessionId),
    WalletSubscribe {
        session: SessionId,
        addrs: Vec<Address>,
    },
    /// A verified transaction from a wallet session, which hears the outcome.
    WalletTx {
        session: SessionId,
        tx: Transaction,
    },
    /// A wallet session's `StatusQuery` (its other queries are answered
    /// from the store, without the core: `wallet_server::QueryLane`).
    WalletStatus {
        reply: tokio::sync::oneshot::Sender<crate::protocol::message::NodeStatus>,
    },
    /// A wallet session (the RPC's push events) waits on a txid's outcome
    /// without submitting it.
    WalletWatch {
        session: SessionId,
        txid: Txid,
    },
    /// The RPC's push events drop address subscriptions (no wallet
    /// protocol message: a TCP wallet's subscriptions end with its session).
    WalletUnsubscribe {
        session: SessionId,
        addrs: Vec<Address>,
    },
    /// The RPC's push events stop waiting on a txid.
    WalletUnwatch {
        session: SessionId,
        txid: Txid,
    },
    /// An operator's query (RPC) the wallet protocol has no message for.
    NodeQuery {
        query: crate::node::node_api::NodeQuery,
        reply: crate::node::node_api::NodeReply,
    },
    /// Outcomes from the vote threads.
    Tally(Vec<TallyEvent>),
    /// A proof and its transaction, already verified off the core thread
    /// (`engine::verify_proof` on the network task that received it).
    Proof {
        tx: Transaction,
        proof: TimeProof,
    },
    ProofRequest {
        txid: Txid,
        from: PublicKey,
    },
    /// A peer's block proposal, vote or committed block, its signatures
    /// checked on the check thread.
    CheckedBlock {
        from: PublicKey,
        msg: timecoin_core::blocks::CheckedBlockMessage,
    },
    /// A peer's block message that failed its check on the check thread.
    RefusedBlock {
        from: PublicKey,
        error: timecoin_core::blocks::consensus::ConsensusError,
    },
    /// A transport or verifier caught a peer misbehaving.
    Misbehaved {
        peer: PublicKey,
        why: crate::masternode::Misbehaviour,
    },
    /// Catch-up requests and pages from a peer masternode.
    Peer {
        from: PublicKey,
        msg: PeerMessage,
    },
    Shutdown,
}

/// Sender side of the core queue; a refused input counts in
/// [`NetStats::core_queue_drops`].
#[derive(Clone)]
pub(super) struct CoreTx {
    tx: mailbox::Sender<CoreInput>,
    stats: Arc<NetStats>,
}

impl CoreTx {
    /// The core queue: give the receiver to the core thread, clones of the
    /// sender to whatever produces inputs.
    pub(super) fn channel(stats: Arc<NetStats>) -> (CoreTx, mailbox::Receiver<CoreInput>) {
        let (tx, rx) = mailbox::bounded(1, CORE_QUEUE);
        (CoreTx { tx, stats }, rx)
    }

    /// Queues without waiting; false (and counted) when the queue is full.
    pub(super) fn offer(&self, input: CoreInput) -> bool {
        match self.tx.try_send(0, input) {
            Ok(()) => true,
            Err(_) => {
                self.stats.core_queue_drops.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Queues without waiting and without counting a refusal: `None` when
    /// queued, else the input back (queue full, or the core gone), for a
    /// caller that has another way to deliver it.
    pub(super) fn try_offer(&self, input: CoreInput) -> Option<CoreInput> {
        self.tx.try_send(0, input).err().map(|e| e.into_inner())
    }

    /// Waits for room: for vote-thread outcomes, which must reach the core
    /// rather than be dropped. Counted only if the core is gone.
    pub(super) fn send_blocking(&self, input: CoreInput) {
        if self.tx.send(0, input).is_err() {
            self.stats.core_queue_drops.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Asks the core to stop after its current round (not counted).
    pub(super) fn shutdown(&self) {
        let _ = self.tx.send(0, CoreInput::Shutdown);
    }
}
