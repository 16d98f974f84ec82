//! Off-core intake of peer traffic: starting the verifier pool and the vote
//! threads wired to the core queue, [`Ingest`] (the handles network tasks
//! use to reach them), where a verified transaction goes next
//! ([`after_verify`]), and the fast path's [`Sink`].
//!
//! Owns no state beyond those handles. It must never verify or tally on a
//! network task or on the core thread, and never block a caller: full
//! queues drop and count.

use std::sync::Arc;

use bytes::Bytes;
use timecoin_core::masternode::{Admission, PeerGate, SessionId};
use tokio::sync::mpsc::error::TrySendError;

use crate::node::core_input::{Clock, CoreInput, CoreTx};
use crate::node::fastpath::FastPathSink;
use crate::node::peer_check::PeerCheck;
use crate::node::peer_net::PeerNet;
use crate::node::verifier::{Lane, Verifier};
use crate::node::vote_threads::{VoteThreadConfig, VoteThreads};
use crate::node::wallet_server::{overloaded, SessionTx, WalletStats, SESSION_QUEUE};
use crate::node::wire::{encode, NetStats};
use crate::protocol::audience::PeerMessage;
use crate::protocol::message::Message;
use crate::protocol::registry::Registry;
use crate::protocol::types::{ChainId, PublicKey, Transaction, Txid};
use crate::protocol::validation::{Limits, TxError};
use time_net::priority::Priority;

/// Who sent a transaction that is being verified.
pub(super) enum Source {
    Peer,
    /// A wallet session: `to` hears a verdict of the stateless checks; the
    /// core routes everything after those to `session`.
    Wallet {
        session: SessionId,
        to: SessionTx,
    },
}

pub(super) type TxVerifier = Verifier<Source>;

/// What the verifier's completion needs: where its verdicts go.
pub(super) struct AfterVerify {
    pub me: PublicKey,
    pub core: CoreTx,
    pub wallet_stats: Arc<WalletStats>,
}

/// Starts the verifier pool; its verdicts go to the core or the wallet.
pub(super) fn start_verifier(threads: usize, chain_id: ChainId, after: AfterVerify) -> TxVerifier {
    Verifier::start(
        threads,
        chain_id,
        Limits::default(),
        move |tx, txid, verdict, src| after_verify(&after, tx, txid, verdict, src),
    )
}

/// The pool readers' pacing ([`time_net::pool::PoolConfig::intake_pacing`]):
/// the state machine's peer book says how long a peer's message must wait
/// for its rate ([`PeerGate::pacing`]), so a sender over its rate is slowed
/// by flow control before anything of it is refused. While every bucket of
/// the peer holds a full message's worth ([`PeerGate::may_pace`], the usual
/// case) the message is not decoded here; otherwise it is decoded a second
/// time. A message that does not decode is not held (the inbox refuses it
/// and counts it).
pub(super) fn intake_pacing(gate: PeerGate, clock: Clock) -> time_net::pool::IntakePacing {
    Arc::new(move |peer: &[u8; 32], bytes: &Bytes| {
        let (now, peer) = (clock.now_ms(), PublicKey(*peer));
        if !gate.may_pace(now, &peer) {
            return None;
        }
        let msg = PeerMessage::try_from(Message::decode(bytes).ok()?).ok()?;
        gate.pacing(now, &peer, &msg)
            .map(std::time::Duration::from_millis)
    })
}

/// Starts the vote threads; their outcomes go to the core.
pub(super) fn start_vote_threads(
    cfg: VoteThreadConfig,
    registry: Registry,
    core: CoreTx,
) -> VoteThreads {
    VoteThreads::start(cfg, registry, move |events| {
        // Outcomes must reach the core: block rather than drop.
        core.send_blocking(CoreInput::Tally(events));
    })
}

/// Where a verified transaction goes next (runs on a verifier thread).
fn after_verify(
    after: &AfterVerify,
    tx: Transaction,
    txid: Txid,
    verdict: Result<(), TxError>,
    src: Source,
) {
    match (src, verdict) {
        (Source::Peer, v) => {
            // An invalid relayed transaction still goes to the engine, which
            // re-checks it and votes reject with the reason.
            after.core.offer(CoreInput::Tx {
                tx,
                prechecked: v.is_ok(),
            });
        }
        (Source::Wallet { session, to }, Err(e)) => {
            let m = encode(&Message::TransactionRejected {
                txid,
                reason: e.code(),
                detail: e.to_string(),
                rejecters: vec![(after.me, e.code())],
            });
            tell_wallet(after, session, &to, m);
        }
        (Source::Wallet { session, to }, Ok(())) => {
            // The core registers the session's interest when it takes the
            // transaction: nothing to undo if the queue is full.
            if !after.core.offer(CoreInput::WalletTx { session, tx }) {
                tell_wallet(after, session, &to, overloaded(txid, after.me));
            }
        }
    }
}

/// A verifier thread's answer to a wallet session, without waiting: a full
/// session queue drops it (counted).
fn tell_wallet(after: &AfterVerify, session: SessionId, to: &SessionTx, m: Bytes) {
    if let Err(TrySendError::Full(_)) = to.try_send(m.into()) {
        let what = format!("session {session}: verdict dropped, its queue is full");
        after
            .wallet_stats
            .frames_dropped
            .hit("SESSION_QUEUE", SESSION_QUEUE, &what);
    }
}

/// Handles to the verifier pool, the vote threads and the check thread, and
/// the state machine's peer book, which admits every peer message first.
#[derive(Clone)]
pub(super) struct Ingest {
    pub verifier: Arc<TxVerifier>,
    pub votes: Arc<VoteThreads>,
    /// Signature checks of peers' proofs and block messages.
    pub checks: Arc<PeerCheck>,
    pub gate: PeerGate,
    pub clock: Clock,
}

impl Ingest {
    /// Whether `from`'s message is taken: its class's token bucket and the
    /// ban list, on the core's clock, before any signature is looked at or
    /// any queue joined. A refusal is counted in the book (and logged by
    /// the core), and what mattered comes back through the sender's
    /// re-announcement and catch-up.
    pub(super) fn admit(&self, from: &PublicKey, msg: &PeerMessage) -> bool {
        self.gate.admit(self.clock.now_ms(), from, msg) == Admission::Accept
    }

    /// A lock broadcast or vote batch from a peer, by TCP or fast path:
    /// transactions to the verifier pool, votes to the vote threads, both
    /// off the core thread. Returns the message if it is neither.
    pub(super) fn ingest(&self, msg: PeerMessage) -> Option<PeerMessage> {
        match msg {
            PeerMessage::TransactionBroadcast(tx) => {
                // A full peer queue drops it (counted in the verifier's
                // stats); its origin re-announces it and catch-up fetches
                // its proof.
                let _ = self.verifier.submit(tx, Source::Peer, Lane::Peer);
                None
            }
            PeerMessage::VoteBatch(b) => {
                self.votes.submit(b);
                None
            }
            other => Some(other),
        }
    }
}

/// Delivers fast-path messages into the node and sends its repair requests
/// over the reliable path.
pub(super) struct Sink {
    pub ingest: Ingest,
    pub net: Arc<PeerNet>,
    pub stats: Arc<NetStats>,
}

impl FastPathSink for Sink {
    fn deliver(&self, from: PublicKey, msg: Message) {
        // Anything but transactions and votes is ignored on the fast path.
        if let Ok(m @ (PeerMessage::TransactionBroadcast(_) | PeerMessage::VoteBatch(_))) =
            PeerMessage::try_from(msg)
        {
            if self.ingest.admit(&from, &m) {
                let _ = self.ingest.ingest(m);
            }
        }
    }

    fn request_repair(&self, to: PublicKey, first: u64, last: u64) {
        self.net.send(
            &to,
            Priority::High,
            encode(&Message::RepairRequest { first, last }),
            &self.stats,
        );
    }
}
