//! An honest masternode: the real engine plus the small runtime a node puts
//! around it. The runtime here does what the issue requires of a node and
//! nothing the engine already does:
//!
//! - a round's writes are applied to the store *before* its messages leave
//!   (the simulator may crash the node between the two);
//! - a `ProofRequest` is answered from the store (so restarted and lagging
//!   nodes catch up);
//! - after a restart it resends the transactions it still holds locks for and
//!   its own signed votes on them (both come from the store);
//! - a transaction it approved that stays undecided is announced again and
//!   its proof asked for, with backoff (a peer may have dropped it as an
//!   orphan, or its tallies may have died in a crash).
//!
//! The node's clock is virtual time with an offset and a drift, clamped so it
//! never runs backwards.

use std::collections::BTreeMap;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use timecoin::protocol::engine::{Engine, EngineConfig, Event, Metrics, Origin, Output, Round};
use timecoin::protocol::message::Message;
use timecoin::protocol::registry::Registry;
use timecoin::protocol::types::Txid;
use timecoin::storage::{Genesis, MemoryStore, Store, Write};

use crate::config::{Micros, Skew, SEC};
use crate::net::Frame;

/// Where a frame goes.
#[derive(Clone, Debug)]
pub enum Dest {
    AllPeers,
    Peer(usize),
}

/// How long an approved transaction may stay undecided before the first repair.
const REPAIR_AFTER: Micros = 3 * SEC;

pub fn frame(m: &Message) -> Frame {
    Arc::from(m.to_bytes())
}

pub struct HonestNode {
    pub idx: usize,
    key: SigningKey,
    cfg: EngineConfig,
    registry: Registry,
    pub store: MemoryStore,
    pub engine: Option<Engine>,
    pub incarnation: u32,
    skew: Skew,
    last_ms: u64,
    /// Crash right after the next durable write, before the round's sends.
    pub crash_after_write: bool,
    /// Own approvals still undecided here: when to repair next, and the
    /// current backoff.
    awaiting: BTreeMap<Txid, (Micros, Micros)>,
    /// Metrics of incarnations that crashed.
    pub dead_metrics: Vec<Metrics>,
    pub restarts: u32,
    pub proof_answers: u64,
}

impl HonestNode {
    pub fn new(
        idx: usize,
        key: SigningKey,
        cfg: EngineConfig,
        genesis: &Genesis,
        skew: Skew,
    ) -> Self {
        let mut store = MemoryStore::new();
        store.init(genesis).expect("memory store");
        let snap = store.load().expect("memory store");
        let engine = Engine::new(cfg.clone(), key.clone(), genesis.registry.clone(), snap);
        HonestNode {
            idx,
            key,
            cfg,
            registry: genesis.registry.clone(),
            store,
            engine: Some(engine),
            incarnation: 0,
            skew,
            last_ms: 0,
            crash_after_write: false,
            awaiting: BTreeMap::new(),
            dead_metrics: Vec::new(),
            restarts: 0,
            proof_answers: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.engine.is_some()
    }

    /// This node's clock at virtual time `t`.
    pub fn local_ms(&mut self, t: Micros) -> u64 {
        let scaled = t as i128 * (1_000_000 + self.skew.drift_ppm as i128) / 1_000_000;
        let ms = (scaled / 1_000 + self.skew.offset_ms as i128).max(0) as u64;
        self.last_ms = self.last_ms.max(ms);
        self.last_ms
    }

    pub fn crash(&mut self) {
        if let Some(e) = self.engine.take() {
            self.dead_metrics.push(e.metrics().clone());
        }
        self.incarnation += 1;
        self.crash_after_write = false;
        self.awaiting.clear();
    }

    /// `Engine::new` from what the store holds, then resend what the store
    /// says is still undecided.
    pub fn restart(&mut self, t: Micros) -> Vec<(Dest, Frame)> {
        let snap = self.store.load().expect("memory store");
        let pending: Vec<_> = snap.pending_transactions.clone();
        let pending_ids: Vec<Txid> = pending.iter().map(|t| t.txid()).collect();
        let mut sends = Vec::new();
        for tx in &pending {
            sends.push((
                Dest::AllPeers,
                frame(&Message::TransactionBroadcast(tx.clone())),
            ));
        }
        for batch in &snap.own_votes {
            if batch.items.iter().any(|i| pending_ids.contains(&i.txid)) {
                sends.push((Dest::AllPeers, frame(&Message::VoteBatch(batch.clone()))));
            }
        }
        for id in pending_ids {
            self.awaiting.insert(id, (t + REPAIR_AFTER, REPAIR_AFTER));
        }
        self.engine = Some(Engine::new(
            self.cfg.clone(),
            self.key.clone(),
            self.registry.clone(),
            snap,
        ));
        self.restarts += 1;
        sends
    }

    /// Feeds one decoded message to the engine. Returns direct answers
    /// (proof requests are served by the runtime, from the store).
    pub fn input(&mut self, t: Micros, from: Option<usize>, msg: Message) -> Vec<(Dest, Frame)> {
        let now = self.local_ms(t);
        let Some(engine) = self.engine.as_mut() else {
            return vec![];
        };
        match msg {
            Message::SubmitTransaction(tx) => {
                engine.handle_transaction(now, tx, Origin::Wallet, false)
            }
            Message::TransactionBroadcast(tx) => {
                engine.handle_transaction(now, tx, Origin::Peer, false)
            }
            Message::VoteBatch(b) => engine.handle_votes(now, b),
            Message::TimeProof { tx, proof } => engine.handle_proof(now, tx, proof),
            Message::ProofRequest(txid) => {
                let Some(peer) = from else { return vec![] };
                if let (Ok(Some(proof)), Ok(Some(tx))) = (
                    self.store.get_proof(&txid),
                    self.store.get_transaction(&txid),
                ) {
                    self.proof_answers += 1;
                    return vec![(Dest::Peer(peer), frame(&Message::TimeProof { tx, proof }))];
                }
            }
            _ => {}
        }
        vec![]
    }

    pub fn tick(&mut self, t: Micros) {
        let now = self.local_ms(t);
        if let Some(e) = self.engine.as_mut() {
            e.tick(now);
        }
    }

    /// Ends the engine's round. The caller checks it, then calls [`commit`].
    pub fn end_round(&mut self, t: Micros) -> Option<Round> {
        let now = self.local_ms(t);
        self.engine.as_mut().map(|e| e.end_round(now))
    }

    /// Applies the round's writes durably and notes what is now awaited.
    pub fn commit(&mut self, t: Micros, round: &Round) {
        self.store.apply(&round.writes).expect("memory store");
        for w in &round.writes {
            if let Write::AppendOwnVotes(b) = w {
                for i in b.items.iter().filter(|i| i.decision.is_approve()) {
                    self.awaiting
                        .entry(i.txid)
                        .or_insert((t + REPAIR_AFTER, REPAIR_AFTER));
                }
            }
        }
        for o in &round.outputs {
            // Only finality ends the wait: a Rejected verdict can be wrong
            // when Byzantine voters split their decisions, and a proof still
            // settles it.
            if let Output::Event(Event::Finalized { txid, .. }) = o {
                self.awaiting.remove(txid);
            }
        }
    }

    /// The round's messages, as frames (events stay with the caller).
    pub fn route(outputs: &[Output]) -> Vec<(Dest, Frame)> {
        let mut sends = Vec::new();
        for o in outputs {
            let m = match o {
                Output::BroadcastTransaction(tx) => Message::TransactionBroadcast((**tx).clone()),
                Output::BroadcastVotes(b) => Message::VoteBatch((**b).clone()),
                Output::RequestProof(t) => Message::ProofRequest(*t),
                Output::Event(_) => continue,
            };
            sends.push((Dest::AllPeers, frame(&m)));
        }
        sends
    }

    /// Approved transactions that stay undecided: announce them again and ask
    /// for their proofs, backing off to once every 30 s.
    pub fn repair(&mut self, t: Micros) -> Vec<(Dest, Frame)> {
        let due: Vec<Txid> = self
            .awaiting
            .iter()
            .filter(|(_, (next, _))| *next <= t)
            .map(|(id, _)| *id)
            .take(32)
            .collect();
        let mut sends = Vec::new();
        for id in due {
            let entry = self.awaiting.get_mut(&id).expect("listed");
            entry.1 = (entry.1 * 2).min(30 * SEC);
            entry.0 = t + entry.1;
            if let Ok(Some(tx)) = self.store.get_transaction(&id) {
                sends.push((Dest::AllPeers, frame(&Message::TransactionBroadcast(tx))));
            }
            sends.push((Dest::AllPeers, frame(&Message::ProofRequest(id))));
        }
        sends
    }

    pub fn metrics_total(&self) -> Metrics {
        let mut all = self.dead_metrics.clone();
        if let Some(e) = &self.engine {
            all.push(e.metrics().clone());
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
}
