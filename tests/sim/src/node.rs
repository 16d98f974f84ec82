//! An honest masternode: the real state machine ([`Masternode`]) over a
//! [`MemoryStore`], driven the way the node's runtime drives it and doing
//! nothing of its own: inputs go to `handle_*`, then each round's writes are
//! applied to the store *before* its messages leave (the world may crash the
//! node between the two). Re-announcement, proof answers and catch-up are
//! the state machine's.
//!
//! Crash = drop the `Masternode` (the store keeps exactly what was applied);
//! restart = `Masternode::new` from what the store holds.
//!
//! The node's clock is a wall clock read at virtual time, with an offset and
//! a drift, clamped so it never runs backwards.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use timecoin_core::masternode::{Masternode, MasternodeConfig, MasternodeStats, Round, SessionId};
use timecoin_core::protocol::audience::PeerMessage;
use timecoin_core::protocol::engine::Metrics;
use timecoin_core::protocol::message::Message;
use timecoin_core::protocol::registry::Registry;
use timecoin_core::protocol::types::{PublicKey, Transaction};
use timecoin_core::storage::{Genesis, MemoryStore, Store};

use crate::config::{Micros, Skew};
use crate::net::Frame;

/// The wall clock at virtual time 0 (2023-11-14), so that node clocks look
/// like real ones (the state machine may treat 0 as "never").
pub const EPOCH_MS: u64 = 1_700_000_000_000;

pub fn frame(m: &Message) -> Frame {
    Arc::from(m.to_bytes())
}

pub struct HonestNode {
    pub idx: usize,
    key: SigningKey,
    cfg: MasternodeConfig,
    registry: Registry,
    pub store: MemoryStore,
    pub mn: Option<Masternode>,
    pub incarnation: u32,
    skew: Skew,
    last_ms: u64,
    /// Crash right after the next durable write, before the round's sends.
    pub crash_after_write: bool,
    /// Crash right after the next durable write holding an own block vote
    /// or proposal, before it leaves.
    pub crash_after_block_vote: bool,
    /// Counters of incarnations that crashed.
    dead_metrics: Vec<Metrics>,
    dead_stats: Vec<MasternodeStats>,
    pub restarts: u32,
}

impl HonestNode {
    pub fn new(
        idx: usize,
        key: SigningKey,
        cfg: MasternodeConfig,
        genesis: &Genesis,
        skew: Skew,
    ) -> Self {
        let mut store = MemoryStore::new();
        store.init(genesis).expect("memory store");
        let mut h = HonestNode {
            idx,
            key,
            cfg,
            registry: genesis.registry.clone(),
            store,
            mn: None,
            incarnation: 0,
            skew,
            last_ms: 0,
            crash_after_write: false,
            crash_after_block_vote: false,
            dead_metrics: Vec::new(),
            dead_stats: Vec::new(),
            restarts: 0,
        };
        h.start(0);
        h
    }

    fn start(&mut self, t: Micros) {
        let now = self.local_ms(t);
        let snap = self.store.load().expect("memory store");
        self.mn = Some(Masternode::new(
            self.cfg.clone(),
            self.key.clone(),
            self.registry.clone(),
            snap,
            self.store.utxo_source(),
            now,
        ));
    }

    /// Whether `round` is the write this node was set to crash after.
    pub fn crashes_after(&self, round: &Round) -> bool {
        (self.crash_after_write && !round.writes.is_empty())
            || (self.crash_after_block_vote
                && round
                    .writes
                    .iter()
                    .any(|w| matches!(w, timecoin_core::storage::Write::AppendOwnBlockVote(_))))
    }

    pub fn is_up(&self) -> bool {
        self.mn.is_some()
    }

    /// This node's clock at virtual time `t`: wall-clock milliseconds, as a
    /// node reads them (virtual time 0 is [`EPOCH_MS`]).
    pub fn local_ms(&mut self, t: Micros) -> u64 {
        let scaled = t as i128 * (1_000_000 + self.skew.drift_ppm as i128) / 1_000_000;
        let ms = (EPOCH_MS as i128 + scaled / 1_000 + self.skew.offset_ms as i128).max(0) as u64;
        self.last_ms = self.last_ms.max(ms);
        self.last_ms
    }

    pub fn crash(&mut self) {
        if let Some(m) = self.mn.take() {
            self.dead_metrics.push(m.metrics().clone());
            self.dead_stats.push(m.stats());
        }
        self.incarnation += 1;
        self.crash_after_write = false;
        self.crash_after_block_vote = false;
    }

    /// `Masternode::new` from what the store holds.
    pub fn restart(&mut self, t: Micros) {
        self.start(t);
        self.restarts += 1;
    }

    /// A wallet's transaction; the immediate answer, if the node has one.
    pub fn wallet_transaction(&mut self, t: Micros, tx: Transaction) -> Option<Message> {
        let now = self.local_ms(t);
        let mn = self.mn.as_mut()?;
        // The simulated wallets hear outcomes from the checker, not through
        // a session: the router is not used here.
        mn.handle_wallet_transaction(now, SessionId(0), tx, false, &self.store)
            .expect("memory store")
            .map(Message::from)
    }

    pub fn peer_message(&mut self, t: Micros, from: PublicKey, msg: Message) {
        let now = self.local_ms(t);
        // What a masternode may not send is refused at decoding in the node
        // (the connection's audience); the same here.
        let Ok(msg) = PeerMessage::try_from(msg) else {
            return;
        };
        if let Some(mn) = self.mn.as_mut() {
            mn.handle_peer_message(now, from, msg, &self.store)
                .expect("memory store");
        }
    }

    pub fn peer_up(&mut self, t: Micros, peer: PublicKey) {
        let now = self.local_ms(t);
        if let Some(mn) = self.mn.as_mut() {
            mn.handle_peer_up(now, peer);
        }
    }

    pub fn peer_down(&mut self, t: Micros, peer: &PublicKey) {
        let now = self.local_ms(t);
        if let Some(mn) = self.mn.as_mut() {
            mn.handle_peer_down(now, peer);
        }
    }

    /// The timer (the state machine ignores calls before `poll_timeout`).
    pub fn timeout(&mut self, t: Micros) {
        let now = self.local_ms(t);
        if let Some(mn) = self.mn.as_mut() {
            if now >= mn.poll_timeout() {
                mn.handle_timeout(now, &self.store).expect("memory store");
            }
        }
    }

    /// Ends the state machine's round. The caller checks it, then [`commit`]s.
    ///
    /// [`commit`]: HonestNode::commit
    pub fn end_round(&mut self, t: Micros) -> Option<Round> {
        let now = self.local_ms(t);
        self.mn.as_mut().map(|m| m.end_round(now))
    }

    /// Applies the round's writes durably (one transaction).
    pub fn commit(&mut self, round: &Round) {
        self.store.apply(&round.writes).expect("memory store");
    }

    pub fn metrics_total(&self) -> Metrics {
        let mut all = self.dead_metrics.clone();
        if let Some(m) = &self.mn {
            all.push(m.metrics().clone());
        }
        let mut m = Metrics::default();
        for x in all {
            m.tx_received += x.tx_received;
            m.tx_accepted += x.tx_accepted;
            m.tx_rejected += x.tx_rejected;
            m.tx_finalized += x.tx_finalized;
            m.tx_duplicate += x.tx_duplicate;
            m.orphans_parked += x.orphans_parked;
            m.orphans_expired += x.orphans_expired;
            m.votes_received += x.votes_received;
            m.vote_batches_signed += x.vote_batches_signed;
            m.vote_batches_bad_signature += x.vote_batches_bad_signature;
            m.vote_batches_unknown_voter += x.vote_batches_unknown_voter;
            m.vote_batches_wrong_chain_or_epoch += x.vote_batches_wrong_chain_or_epoch;
            m.votes_duplicate += x.votes_duplicate;
            m.votes_dropped_unknown_tx += x.votes_dropped_unknown_tx;
            m.equivocations += x.equivocations;
            m.proofs_received += x.proofs_received;
            m.proofs_invalid += x.proofs_invalid;
            m.conflicting_proofs += x.conflicting_proofs;
        }
        m
    }

    pub fn stats_total(&self) -> MasternodeStats {
        let mut all = self.dead_stats.clone();
        if let Some(m) = &self.mn {
            all.push(m.stats());
        }
        let mut s = MasternodeStats::default();
        for x in all {
            s.reannounced += x.reannounced;
            s.proofs_served += x.proofs_served;
            s.log_pages_served += x.log_pages_served;
            s.proof_broadcasts_dropped += x.proof_broadcasts_dropped;
            s.wallet_resubmissions += x.wallet_resubmissions;
            s.catchup.pages_received += x.catchup.pages_received;
            s.catchup.proofs_requested += x.catchup.proofs_requested;
            s.catchup.proofs_given_up += x.catchup.proofs_given_up;
            s.catchup.stale_pages += x.catchup.stale_pages;
            s.catchup.peer_log_resets += x.catchup.peer_log_resets;
            s.catchup.sync_timeouts += x.catchup.sync_timeouts;
        }
        s
    }
}
