//! Off-core intake of peer traffic: starting the verifier pool and the vote
//! threads wired to the core queue, [`Ingest`] (the handles network tasks
//! use to reach them), where a verified transaction goes next
//! ([`after_verify`]), and the fast path's [`Sink`].
//!
//! Owns no state beyond those handles. It must never verify or tally on a
//! tokio network task or on the core thread (the fast path's burst check
//! runs on the UDP I/O thread, a thread of its own; only a TCP repair
//! answer, rare and bounded by the repair budget, is checked on the task
//! that received it), and never block a caller: full queues drop and
//! count.

use std::sync::atomic::Ordering;
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
use crate::protocol::tally::VerifiedBatch;
use crate::protocol::types::{ChainId, PublicKey, Transaction, Txid};
use crate::protocol::validation::{self, Limits, TxError};
use crate::protocol::vote::VoteBatch;
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
    pub chain_id: ChainId,
    /// Where fast-path transactions go once checked ([`Ingest::ingest_checked`]).
    pub core: CoreTx,
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

    /// The lock broadcasts and vote batches of one fast-path burst, each
    /// admitted already. Every transaction's input signatures and every
    /// vote batch's signature are checked together in one batch
    /// verification, on the caller's thread (the UDP I/O thread); then the
    /// transactions go to the core and the votes to the tallies. This saves
    /// the hand-off to the verifier pool and the vote thread's own
    /// verification, and larger batches cost less per signature. A failed
    /// batch is checked again message by message to find the bad ones.
    pub(super) fn ingest_checked(&self, msgs: Vec<PeerMessage>) {
        let mut txs = Vec::new();
        let mut votes = Vec::new();
        for m in msgs {
            match m {
                PeerMessage::TransactionBroadcast(tx) => txs.push(tx),
                PeerMessage::VoteBatch(b) if self.votes.admissible(&b) => votes.push(b),
                _ => {}
            }
        }
        let (verdicts, checked) = check_together(self.chain_id, &txs, votes);
        let mut verified = Vec::with_capacity(checked.len());
        for c in checked {
            match c {
                Some(vb) => verified.push(vb),
                None => {
                    self.votes
                        .stats
                        .bad_signatures
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let stats = &self.verifier.stats;
        for (tx, verdict) in txs.into_iter().zip(verdicts) {
            let counter = if verdict.is_ok() {
                &stats.verified
            } else {
                &stats.failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            // As from the verifier pool: an invalid relayed transaction
            // still goes to the engine, which votes reject with the reason.
            self.core.offer(CoreInput::Tx {
                tx,
                prechecked: verdict.is_ok(),
            });
        }
        // After the transactions: the core sees a payment before the
        // outcome of its votes when both came in this burst.
        self.votes.verified(verified);
    }
}

/// The stateless checks and input signatures of `txs` and the signatures
/// of `votes`, all in one batch verification ([`crate::sig`]); if the batch
/// fails, each is checked alone to find the bad ones. Returns each
/// transaction's verdict, and each vote batch verified (`None`: a bad
/// signature).
fn check_together(
    chain_id: ChainId,
    txs: &[Transaction],
    votes: Vec<VoteBatch>,
) -> (Vec<Result<(), TxError>>, Vec<Option<VerifiedBatch>>) {
    let limits = Limits::default();
    let txids: Vec<Txid> = txs.iter().map(|t| t.txid()).collect();
    let mut verdicts: Vec<Result<(), TxError>> = txs
        .iter()
        .map(|t| validation::check_stateless(t, chain_id, &limits))
        .collect();
    let input_msgs: Vec<Vec<[u8; 61]>> = txs
        .iter()
        .zip(&txids)
        .zip(&verdicts)
        .map(|((t, id), v)| match v {
            Ok(()) => validation::input_messages(t, id),
            Err(_) => Vec::new(),
        })
        .collect();
    let vote_msgs: Vec<_> = votes.iter().map(|b| b.levels_and_message()).collect();
    let mut items: Vec<crate::sig::Item> = Vec::new();
    for (t, m) in txs.iter().zip(&input_msgs) {
        for (input, m) in t.inputs.iter().zip(m) {
            items.push((&input.public_key.0, &m[..], &input.signature));
        }
    }
    for (b, (_, m)) in votes.iter().zip(&vote_msgs) {
        items.push((&b.voter.0, &m[..], &b.signature));
    }
    let all_ok = crate::sig::verify_all(&items);
    drop(items);
    if !all_ok {
        for ((t, id), v) in txs.iter().zip(&txids).zip(verdicts.iter_mut()) {
            if v.is_ok() {
                *v = validation::verify_signatures(t, id);
            }
        }
    }
    let checked = votes
        .into_iter()
        .zip(vote_msgs)
        .map(|(batch, (levels, m))| {
            (all_ok || crate::sig::verify(&batch.voter.0, &m, &batch.signature))
                .then_some(VerifiedBatch { batch, levels })
        })
        .collect();
    (verdicts, checked)
}

/// Delivers fast-path messages into the node and sends its repair requests
/// over the reliable path.
pub(super) struct Sink {
    pub ingest: Ingest,
    pub net: Arc<PeerNet>,
    pub stats: Arc<NetStats>,
}

impl FastPathSink for Sink {
    fn deliver(&self, msgs: Vec<(PublicKey, Message)>) {
        let mut admitted = Vec::with_capacity(msgs.len());
        for (from, msg) in msgs {
            // Anything but transactions and votes is ignored on the fast path.
            if let Ok(m @ (PeerMessage::TransactionBroadcast(_) | PeerMessage::VoteBatch(_))) =
                PeerMessage::try_from(msg)
            {
                if self.ingest.admit(&from, &m) {
                    admitted.push(m);
                }
            }
        }
        if !admitted.is_empty() {
            self.ingest.ingest_checked(admitted);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::types::{TxOutput, COIN};
    use crate::protocol::vote::{Decision, VoteItem};
    use timecoin_core::testkit::{address_of, genesis_outpoint, key_from_seed};

    const CHAIN: ChainId = 1;

    fn tx(i: u32) -> Transaction {
        let k = key_from_seed("ingest", i as u64);
        Transaction::build_signed(
            CHAIN,
            &k,
            &[genesis_outpoint(0, i), genesis_outpoint(1, i)],
            vec![TxOutput {
                amount: COIN,
                address: address_of(&k),
            }],
        )
    }

    fn votes(voter: u32) -> VoteBatch {
        let items = (0..3)
            .map(|i| VoteItem {
                txid: tx(i).txid(),
                decision: Decision::Approve,
            })
            .collect();
        VoteBatch::sign(CHAIN, 1, &key_from_seed("voter", voter as u64), items)
    }

    #[test]
    fn one_batch_checks_transactions_and_votes_and_finds_each_bad_one() {
        let (v, c) = check_together(CHAIN, &[tx(0), tx(1)], vec![votes(0), votes(1)]);
        assert_eq!(v, vec![Ok(()), Ok(())]);
        assert!(c.iter().all(|c| c.is_some()));
        let vb = c.into_iter().next().flatten().unwrap();
        assert_eq!(vb.levels, vb.batch.levels_and_message().0);

        // One bad input signature (the second input of the second
        // transaction), one bad vote batch signature, one transaction of
        // another chain (refused before any signature is looked at).
        let mut bad_tx = tx(1);
        bad_tx.inputs[1].signature[0] ^= 1;
        let mut bad_votes = votes(1);
        bad_votes.signature[5] ^= 1;
        let other_chain = Transaction::build_signed(
            CHAIN + 1,
            &key_from_seed("ingest", 9),
            &[genesis_outpoint(0, 9)],
            vec![],
        );
        let (v, c) = check_together(
            CHAIN,
            &[tx(0), bad_tx, other_chain, tx(2)],
            vec![votes(0), bad_votes, votes(2)],
        );
        assert_eq!(v[0], Ok(()));
        assert_eq!(v[1], Err(TxError::BadSignature(1)));
        assert!(v[2].is_err() && v[2] != Err(TxError::BadSignature(0)));
        assert_eq!(v[3], Ok(()));
        let ok: Vec<bool> = c.iter().map(|c| c.is_some()).collect();
        assert_eq!(ok, vec![true, false, true]);
    }
}
