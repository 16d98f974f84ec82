//! The masternode state machine: everything a masternode decides, with no
//! sockets, threads, clock or database inside. The node runtime, the
//! simulator and the in-process tests all drive this one type.
//!
//! It owns the [`Engine`] (first-seen locking, voting, tallying, finality),
//! the re-announcement schedule ([`reannounce`]), catch-up from the peers'
//! finality logs ([`catchup`]), the answers to peers' proof and log requests,
//! and the approval gate that keeps a stale node from locking coins.
//!
//! Driving it (the contract, as in quinn-proto's `Connection`):
//! - feed inputs with `handle_*(now, ..)`: wallet transactions, peer
//!   messages, tally outcomes from the vote threads, peers coming up and
//!   going down, and [`Masternode::handle_timeout`] at
//!   [`Masternode::poll_timeout`];
//! - then call [`Masternode::end_round`]: apply its `writes` durably (one
//!   transaction) *before* sending its `transmits`, then hand its `events`
//!   to wallets. That order is what makes a vote durable before it leaves.
//!   Its `wallet` replies go to the wallet sessions they name (the
//!   [`router`]: sessions open and close with
//!   [`Masternode::handle_wallet_open`] / [`Masternode::handle_wallet_close`]).
//!
//! Reads of durable state (proofs, transactions, the finality log) come
//! through the [`Store`] trait passed to the calls that need them.

pub mod block_sync;
pub mod blocks;
pub mod catchup;
pub mod peers;
pub mod reannounce;
pub mod router;

use std::sync::Arc;

use ed25519_dalek::SigningKey;

use crate::blocks::{
    BlockConsensus, ChainTip, CheckedBlockMessage, ConsensusConfig, ConsensusMessage,
};
use crate::protocol::audience::{PeerMessage, WalletReply};
use crate::protocol::engine::{Engine, EngineConfig, Event, Metrics, Origin, Output};
use crate::protocol::message::{Message, MAX_LOG_PAGE};
use crate::protocol::registry::Registry;
use crate::protocol::tally::{TallyEvent, VerifiedBatch};
use crate::protocol::timeproof::TimeProof;
use crate::protocol::types::{Address, PublicKey, Transaction, Txid};
use crate::protocol::utxo::UtxoState;
use crate::protocol::validation::RejectCode;
use crate::storage::{Snapshot, Store, StoreError, Write};

pub use catchup::{CatchUp, CatchUpConfig, CatchUpStats, LogPage};
pub use peers::{
    Admission, Ban, Class, Misbehaviour, PeerBook, PeerBookStats, PeerGate, PeerLimits,
};
pub use reannounce::{Reannounce, ReannounceConfig};
pub use router::{Router, RouterStats, SessionId, Watch};

#[derive(Clone, Debug)]
pub struct MasternodeConfig {
    pub engine: EngineConfig,
    pub catchup: CatchUpConfig,
    pub reannounce: ReannounceConfig,
    /// Per-peer rate limits, reputation and bans.
    pub peer_limits: PeerLimits,
    /// Engine housekeeping interval.
    pub tick_ms: u64,
    /// Most proof requests broadcast to all peers per second (stalled
    /// transactions, missing parents); more are dropped and counted.
    pub max_proof_broadcasts_per_s: u32,
    /// Planted bug for the simulator's control runs: no catch-up at all (no
    /// finality-log requests, pages ignored) and the approval gate always
    /// open. Compiled only with `planted-bugs`.
    #[cfg(feature = "planted-bugs")]
    pub planted_no_catchup: bool,
    /// The block layer, or none (instant finality only, no blocks).
    pub blocks: Option<ConsensusConfig>,
    /// Most final, unconfirmed payments the block layer holds in memory
    /// (`blocks::MAX_UNCONFIRMED_IN_MEMORY`); the rest wait in the store.
    pub max_unconfirmed_in_memory: usize,
    /// Most transactions of committed blocks confirmed per round
    /// (`blocks::CONFIRMATIONS_PER_ROUND`; at least 1).
    pub confirmations_per_round: usize,
}

impl MasternodeConfig {
    pub fn new(engine: EngineConfig) -> Self {
        MasternodeConfig {
            engine,
            catchup: CatchUpConfig::default(),
            reannounce: ReannounceConfig::default(),
            peer_limits: PeerLimits::default(),
            tick_ms: 100,
            max_proof_broadcasts_per_s: 1_000,
            #[cfg(feature = "planted-bugs")]
            planted_no_catchup: false,
            blocks: None,
            max_unconfirmed_in_memory: blocks::MAX_UNCONFIRMED_IN_MEMORY,
            confirmations_per_round: blocks::CONFIRMATIONS_PER_ROUND,
        }
    }
}

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    AllPeers,
    Peer(PublicKey),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub dest: Dest,
    pub msg: Message,
}

/// What a round produced. Apply `writes` durably, then send `transmits`,
/// then deliver `events` and `wallet`.
#[derive(Debug, Default)]
pub struct Round {
    pub writes: Vec<Write>,
    pub transmits: Vec<Transmit>,
    pub events: Vec<Event>,
    /// Replies for wallet sessions, in the order each session must hear them
    /// (outcomes of the transactions it waits on, notifications for the
    /// addresses it subscribed).
    pub wallet: Vec<(SessionId, WalletReply)>,
    /// Transactions whose approvals the vote tallies outside the state
    /// machine must report back (`EngineConfig::external_tally`): sides of
    /// double spends seen here (see `TallyEvent::Approval`).
    pub watch_approvals: Vec<Txid>,
}

impl Round {
    /// Takes out of `wallet` the replies that may leave before this round's
    /// writes are durable: final outcomes carrying their TimeProof, each
    /// only while no earlier reply of its session in this round waits for
    /// the writes (so every session still hears its replies in order).
    ///
    /// Why that is safe (PROTOCOL.md, "Durability"): a TimeProof is final
    /// wherever it is. It carries approve votes of more than 2/3 of the
    /// weight, each durable at its signer before it was sent, and the
    /// wallet checks it on its own; whether this node keeps its own copy
    /// across a crash changes nothing about the payment (catch-up fetches
    /// the proof back). What this node promises by its own signature (its
    /// votes, and the locks they imply) still leaves only after the sync.
    pub fn take_replies_before_durable(&mut self) -> Vec<(SessionId, WalletReply)> {
        if !self
            .wallet
            .iter()
            .any(|(_, r)| matches!(r, WalletReply::TimeProof { .. }))
        {
            return Vec::new();
        }
        let mut held: Vec<SessionId> = Vec::new();
        let mut early = Vec::new();
        let mut rest = Vec::with_capacity(self.wallet.len());
        for (session, reply) in self.wallet.drain(..) {
            if matches!(reply, WalletReply::TimeProof { .. }) && !held.contains(&session) {
                early.push((session, reply));
            } else {
                if !held.contains(&session) {
                    held.push(session);
                }
                rest.push((session, reply));
            }
        }
        self.wallet = rest;
        early
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.transmits.is_empty()
            && self.events.is_empty()
            && self.wallet.is_empty()
            && self.watch_approvals.is_empty()
    }
}

/// Counters of the layer around the engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MasternodeStats {
    pub reannounced: u64,
    pub proofs_served: u64,
    pub log_pages_served: u64,
    pub proof_broadcasts_dropped: u64,
    pub wallet_resubmissions: u64,
    pub catchup: CatchUpStats,
    /// Wallet sessions: what the router holds and refused.
    pub wallet: RouterStats,
    /// Peers: rate-limit refusals, penalties, bans.
    pub peers: PeerBookStats,
}

pub struct Masternode {
    cfg: MasternodeConfig,
    engine: Engine,
    catchup: CatchUp,
    peer_book: PeerGate,
    reannounce: Reannounce,
    transmits: Vec<Transmit>,
    last_tick: Option<u64>,
    /// Proof broadcasts in the current second: (second, count).
    proof_budget: (u64, u32),
    my_weight: u64,
    stats: MasternodeStats,
    /// Which wallet session hears what.
    router: Router,
    /// The block layer, when configured.
    blocks: Option<blocks::BlockLayer>,
}

impl Masternode {
    /// Builds the masternode from durable state: `snap` from the store's
    /// `load`, `utxos` its [`crate::storage::Store::utxo_source`].
    /// Transactions still pending are re-announced at once (their first
    /// broadcast may never have left).
    pub fn new(
        cfg: MasternodeConfig,
        key: SigningKey,
        registry: Registry,
        mut snap: Snapshot,
        utxos: Box<dyn crate::storage::UtxoSource>,
        now: u64,
    ) -> Self {
        let me = PublicKey::from_signing(&key);
        let pending: Vec<Txid> = snap.pending_transactions.iter().map(|t| t.txid()).collect();
        let peers: Vec<PublicKey> = registry
            .masternodes()
            .iter()
            .map(|m| m.key)
            .filter(|k| *k != me)
            .collect();
        let my_weight = registry.weight_of(&me).unwrap_or(0);
        let blocks = cfg.blocks.clone().map(|bc| {
            let chain_id = cfg.engine.chain_id;
            let b = &snap.blocks;
            let tip = match &b.tip {
                Some(t) => ChainTip {
                    height: t.block.height(),
                    hash: t.block.hash(),
                    time_ms: t.block.header.time_ms,
                },
                None => ChainTip {
                    height: 0,
                    hash: crate::blocks::BlockHash::genesis(chain_id, registry.epoch()),
                    time_ms: 0,
                },
            };
            let mut c = BlockConsensus::new(
                bc,
                chain_id,
                key.clone(),
                registry.clone(),
                tip,
                b.tip.as_ref().map(|t| t.cert.clone()),
                &b.own_votes,
                b.candidates.clone(),
                now,
            );
            c.set_evidence_stored(b.evidence_count);
            if let Some(f) = &b.fork {
                c.fork(f.clone());
                let _ = c.take_round();
            }
            let mut layer = blocks::BlockLayer::new(c);
            layer.restore_stop(b.stop.clone());
            if let Some(t) = &b.tip {
                if b.confirmed_through.is_some_and(|h| h < t.block.height()) {
                    layer.resume_confirming(&t.block);
                }
            }
            layer.unconfirmed = blocks::Unconfirmed::with_cap(cfg.max_unconfirmed_in_memory);
            layer.confirmations_per_round = cfg.confirmations_per_round.max(1);
            layer.unconfirmed.restore(
                std::mem::take(&mut snap.unconfirmed_transactions),
                snap.unconfirmed_log_from,
            );
            layer.log_len = snap.finality_log_len;
            layer
        });
        let engine = Engine::new(cfg.engine.clone(), key, registry, snap, utxos);
        let mut reannounce = Reannounce::new(cfg.reannounce.clone());
        for txid in pending {
            if engine.my_vote(&txid).is_some_and(|d| d.is_approve()) {
                reannounce.approved(now.saturating_sub(cfg.reannounce.first_ms), txid);
            }
        }
        let peer_book = PeerGate::new(PeerBook::new(
            cfg.peer_limits.clone(),
            peers.iter().copied(),
        ));
        let catchup = CatchUp::new(cfg.catchup.clone(), peers);
        let mut m = Masternode {
            cfg,
            engine,
            catchup,
            peer_book,
            reannounce,
            transmits: Vec::new(),
            last_tick: None,
            proof_budget: (0, 0),
            my_weight,
            stats: MasternodeStats::default(),
            router: Router::new(),
            blocks,
        };
        m.update_gate(now);
        m
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The block layer's tip, if the layer runs.
    /// The first UTXO read from the store that failed, if any: the runtime
    /// stops the node (see [`Engine::take_store_read_error`]).
    pub fn take_store_read_error(&mut self) -> Option<crate::storage::StoreError> {
        self.engine.take_store_read_error()
    }

    pub fn block_tip(&self) -> Option<ChainTip> {
        self.blocks.as_ref().map(|b| b.tip())
    }

    /// The block layer (consensus state, counters), if it runs.
    pub fn block_layer(&self) -> Option<&blocks::BlockLayer> {
        self.blocks.as_ref()
    }

    pub fn public_key(&self) -> PublicKey {
        self.engine.public_key()
    }

    pub fn metrics(&self) -> &Metrics {
        self.engine.metrics()
    }

    pub fn stats(&self) -> MasternodeStats {
        let mut s = self.stats.clone();
        s.reannounced = self.reannounce.reannounced;
        s.catchup = self.catchup.stats().clone();
        s.wallet = self.router.stats();
        s.peers = self.peer_book.book().stats().clone();
        s
    }

    /// Peers banned now, for the operator.
    pub fn bans(&self, now: u64) -> Vec<Ban> {
        self.peer_book.book().bans(now)
    }

    /// The peer book, for a runtime that admits peer messages before they
    /// reach this state machine (then handed in through
    /// [`Masternode::handle_admitted_peer_message`] and the `handle_verified_*`
    /// calls).
    pub fn peer_gate(&self) -> PeerGate {
        self.peer_book.clone()
    }

    /// A peer's reputation in the peer book (operator, metrics).
    pub fn peer_reputation(&self, peer: &PublicKey) -> Option<i32> {
        self.peer_book.book().reputation(peer)
    }

    /// Lifts a ban (operator).
    pub fn unban(&mut self, peer: &PublicKey) -> bool {
        self.peer_book.book().unban(peer)
    }

    /// A peer did something wrong that a transport or a verifier noticed
    /// (malformed frame, bad signature, invalid proof).
    pub fn handle_peer_misbehaved(&mut self, now: u64, peer: &PublicKey, why: Misbehaviour) {
        self.peer_book.penalize(now, peer, why);
    }

    /// The wallet router's gauges and refusal counters (cheap).
    pub fn wallet_stats(&self) -> RouterStats {
        self.router.stats()
    }

    /// True while this node approves nothing (catching up, or too few
    /// masternodes reachable to finalize anything).
    pub fn is_catching_up(&self) -> bool {
        self.engine.is_catching_up()
    }

    /// Transactions this node approved and still re-announces.
    pub fn awaiting(&self) -> usize {
        self.reannounce.len()
    }

    pub fn peers_connected(&self) -> usize {
        self.catchup.connected().count()
    }

    /// Catch-up progress: finality-log entries a connected peer reported and
    /// this node has not walked yet (the most of any peer), and proofs it
    /// is fetching.
    pub fn catchup_lag(&self) -> (u64, usize) {
        (self.catchup.log_lag(), self.catchup.fetching())
    }

    /// Whether the payment catch-up waits for the block sync
    /// ([`CatchUp::set_held`]).
    pub fn catchup_held(&self) -> bool {
        self.catchup.is_held()
    }

    /// A wallet session opened; `session` must be new (never reused).
    pub fn handle_wallet_open(&mut self, session: SessionId) {
        self.router.open(session);
    }

    /// A wallet session closed: everything it subscribed or waited on is
    /// dropped.
    pub fn handle_wallet_close(&mut self, session: SessionId) {
        self.router.close(session);
    }

    /// A session's `WalletSubscribe`. Returns the `Error` reply when some
    /// addresses were refused over a cap (see [`router`]).
    pub fn handle_wallet_subscribe(
        &mut self,
        session: SessionId,
        addrs: Vec<Address>,
    ) -> Option<WalletReply> {
        self.router.subscribe(session, addrs)
    }

    /// Wallet `session` unsubscribes from `addrs` (the RPC's push events;
    /// the wallet protocol has no such message). Returns how many it was
    /// subscribed to; each frees its place under the router's caps.
    pub fn handle_wallet_unsubscribe(&mut self, session: SessionId, addrs: &[Address]) -> usize {
        self.router.unsubscribe(session, addrs)
    }

    /// Wallet `session` no longer waits on `txid` (see
    /// [`Masternode::handle_wallet_watch`]); returns whether it did.
    pub fn handle_wallet_unwatch(&mut self, session: SessionId, txid: &Txid) -> bool {
        self.router.unwatch(session, txid)
    }

    /// A transaction from wallet `session`. When the transaction is already
    /// known here, the answer comes back at once (its proof, its rejection,
    /// or "accepted" for a pending one, which is also broadcast again); else
    /// its outcome comes in [`Round::wallet`] (and as an [`Event`]). A
    /// session already waiting on [`router::MAX_WAITING_PER_SESSION`]
    /// transactions is refused at once (`MempoolFull`) and the transaction
    /// is not handled. An unknown session hears nothing beyond the returned
    /// answer; the transaction is handled all the same.
    pub fn handle_wallet_transaction(
        &mut self,
        now: u64,
        session: SessionId,
        tx: Transaction,
        prechecked: bool,
        store: &dyn Store,
    ) -> Result<Option<WalletReply>, StoreError> {
        let txid = tx.txid();
        let known = self.engine.knows(&txid) || self.engine.known_final(&txid);
        if known {
            if let Some(reply) = self.decided_answer(txid, store)? {
                return Ok(Some(reply));
            }
        }
        // New or pending: the session waits on its outcome.
        if self.router.watch(session, txid) == Watch::Full {
            return Ok(Some(WalletReply::TransactionRejected {
                txid,
                reason: RejectCode::MempoolFull,
                detail: format!(
                    "this session waits on {} transactions already; wait for their outcomes",
                    router::MAX_WAITING_PER_SESSION
                ),
                rejecters: vec![(self.public_key(), RejectCode::MempoolFull)],
            }));
        }
        if !known {
            self.engine
                .handle_transaction(now, tx, Origin::Wallet, prechecked);
            return Ok(None);
        }
        // Pending: the first broadcast may have been lost (or this node
        // crashed before sending it). Send it again, with our vote.
        self.stats.wallet_resubmissions += 1;
        self.announce(&txid, Some(tx));
        Ok(Some(WalletReply::TransactionAccepted(txid)))
    }

    /// The outcome of a decided transaction, for a wallet asking about it:
    /// its TimeProof if stored, or why it was rejected.
    fn decided_answer(
        &self,
        txid: Txid,
        store: &dyn Store,
    ) -> Result<Option<WalletReply>, StoreError> {
        if let (Some(tx), Some(proof)) = (store.get_transaction(&txid)?, store.get_proof(&txid)?) {
            return Ok(Some(WalletReply::TimeProof { tx, proof }));
        }
        Ok(self
            .engine
            .rejection(&txid)
            .map(|(reason, detail)| WalletReply::TransactionRejected {
                txid,
                reason,
                detail,
                rejecters: vec![],
            }))
    }

    /// Wallet `session` wants the outcome of `txid` without submitting it
    /// (a push subscription by transaction id). A transaction already
    /// decided here is answered at once (its proof, or its rejection); else
    /// the session waits on it like on one it submitted, and hears
    /// `TransactionAccepted` and then the outcome in [`Round::wallet`]. Over
    /// [`router::MAX_WAITING_PER_SESSION`] the answer is an `Error` of code
    /// [`router::error_code::SUBSCRIPTION_LIMIT`].
    pub fn handle_wallet_watch(
        &mut self,
        session: SessionId,
        txid: Txid,
        store: &dyn Store,
    ) -> Result<Option<WalletReply>, StoreError> {
        if let Some(reply) = self.decided_answer(txid, store)? {
            return Ok(Some(reply));
        }
        match self.router.watch(session, txid) {
            Watch::Full => Ok(Some(WalletReply::Error {
                code: router::error_code::SUBSCRIPTION_LIMIT,
                detail: format!(
                    "this session waits on {} transactions already; wait for their outcomes",
                    router::MAX_WAITING_PER_SESSION
                ),
            })),
            Watch::Added | Watch::Already | Watch::NoSession => Ok(None),
        }
    }

    /// A lock broadcast from a peer whose signatures the caller may have
    /// checked already (`prechecked`).
    pub fn handle_peer_transaction(&mut self, now: u64, tx: Transaction, prechecked: bool) {
        self.engine
            .handle_transaction(now, tx, Origin::Peer, prechecked);
    }

    /// A message from an authenticated peer masternode. Messages that belong
    /// to a transport (fast-path repair and stream announcements, pings) are
    /// ignored here.
    pub fn handle_peer_message(
        &mut self,
        now: u64,
        from: PublicKey,
        msg: PeerMessage,
        store: &dyn Store,
    ) -> Result<(), StoreError> {
        if self.peer_book.admit(now, &from, &msg) != Admission::Accept {
            // Refused and counted (PeerBookStats); the sender's
            // re-announcement and catch-up recover what mattered.
            return Ok(());
        }
        self.handle_admitted_peer_message(now, from, msg, store)
    }

    /// A peer message the runtime already admitted through
    /// [`Masternode::peer_gate`].
    pub fn handle_admitted_peer_message(
        &mut self,
        now: u64,
        from: PublicKey,
        msg: PeerMessage,
        store: &dyn Store,
    ) -> Result<(), StoreError> {
        match msg {
            PeerMessage::TransactionBroadcast(tx) => self.handle_peer_transaction(now, tx, false),
            PeerMessage::VoteBatch(b) => self.engine.handle_votes(now, b),
            PeerMessage::TimeProof { tx, proof } => self.handle_proof(now, tx, proof),
            PeerMessage::ProofRequest(txid) => {
                if let (Some(tx), Some(proof)) =
                    (store.get_transaction(&txid)?, store.get_proof(&txid)?)
                {
                    self.stats.proofs_served += 1;
                    self.transmits.push(Transmit {
                        dest: Dest::Peer(from),
                        msg: Message::TimeProof { tx, proof },
                    });
                }
            }
            PeerMessage::FinalityLogRequest { from: pos } => {
                let (txids, head) = store.finality_log(pos, MAX_LOG_PAGE)?;
                self.stats.log_pages_served += 1;
                self.transmits.push(Transmit {
                    dest: Dest::Peer(from),
                    msg: Message::FinalityLogPage {
                        from: pos,
                        head,
                        txids,
                    },
                });
            }
            PeerMessage::FinalityLogPage {
                from: pos,
                head,
                txids,
            } => {
                #[cfg(feature = "planted-bugs")]
                if self.cfg.planted_no_catchup {
                    return Ok(());
                }
                let engine = &self.engine;
                let mut out = Vec::new();
                let page = LogPage {
                    from: pos,
                    head,
                    txids: &txids,
                };
                self.catchup
                    .on_page(now, from, page, |t| engine.settled(t), &mut out);
                self.push_to_peers(out);
                self.update_gate(now);
            }
            m @ (PeerMessage::BlockProposal(_)
            | PeerMessage::BlockVote(_)
            | PeerMessage::CommittedBlock(_)) => {
                let cfg = self.engine.config();
                match blocks::check_block_message(cfg.chain_id, self.engine.registry(), m) {
                    Some(Ok(checked)) => {
                        self.handle_checked_block_message(now, from, checked, store)?
                    }
                    Some(Err(e)) => self.handle_refused_block_message(now, &from, e),
                    None => {}
                }
            }
            PeerMessage::BlockRequest { from: height } => {
                self.serve_block_request(from, height, store)?
            }
            PeerMessage::RepairRequest { .. }
            | PeerMessage::Repair(_)
            | PeerMessage::FastPathSeq { .. }
            | PeerMessage::Ping(_)
            | PeerMessage::Pong(_) => {}
        }
        Ok(())
    }

    /// A peer's block proposal, vote or committed block whose signatures
    /// were checked ([`blocks::check_block_message`]; the node does that
    /// off the core thread). A message that fails the consensus's checks
    /// costs the sender reputation; none of it touches instant finality.
    pub fn handle_checked_block_message(
        &mut self,
        now: u64,
        from: PublicKey,
        msg: CheckedBlockMessage,
        store: &dyn Store,
    ) -> Result<(), StoreError> {
        let Some(layer) = self.blocks.as_mut() else {
            return Ok(());
        };
        // Anything but a late vote at or below the tip may make the
        // consensus check a body or sign above the tip: the tip's payments
        // are all confirmed first (and a contradiction among them stops).
        let late_vote = matches!(&msg, CheckedBlockMessage::Vote(v)
            if v.get().slot.height <= layer.tip().height);
        if !late_vote {
            layer.finish_confirming(now, &mut self.engine);
        }
        if layer.stopped() {
            return Ok(());
        }
        let view = blocks::LedgerView {
            engine: &self.engine,
            unconfirmed: &layer.unconfirmed,
            store: Some(store),
        };
        let result = match msg {
            CheckedBlockMessage::Proposal(p) => {
                layer.consensus.handle_checked_proposal(now, *p, &view)
            }
            CheckedBlockMessage::Vote(v) => layer.consensus.handle_checked_vote(now, v, &view),
            CheckedBlockMessage::Commit(c) => {
                let tip = layer.consensus.tip().height;
                let mut next = layer.sync.received(now, from, tip, *c).map(|c| (from, c));
                let mut result = Ok(());
                // The block that extends the tip, then any held ones after it.
                while let Some((sender, c)) = next {
                    let r = layer.consensus.handle_checked_commit(now, c, &view);
                    if let Err(e) = r {
                        if sender == from {
                            result = Err(e);
                        } else {
                            layer.stats.refused_messages += 1;
                            self.peer_book
                                .penalize(now, &sender, Misbehaviour::MalformedFrame);
                        }
                        break;
                    }
                    next = layer.sync.next_ready(layer.consensus.tip().height);
                }
                result.map(|_| ())
            }
        };
        if let Err(e) = result {
            self.handle_refused_block_message(now, &from, e);
        }
        Ok(())
    }

    /// A peer's block message that failed a check (its signature, or the
    /// consensus's): counted, and the sender loses reputation.
    pub fn handle_refused_block_message(
        &mut self,
        now: u64,
        from: &PublicKey,
        e: crate::blocks::consensus::ConsensusError,
    ) {
        use crate::blocks::consensus::ConsensusError;
        let Some(layer) = self.blocks.as_mut() else {
            return;
        };
        let why = match e {
            ConsensusError::Halted(_) => return,
            ConsensusError::BadSignature | ConsensusError::Certificate(_) => {
                Misbehaviour::InvalidSignature
            }
            _ => Misbehaviour::MalformedFrame,
        };
        layer.stats.refused_messages += 1;
        self.peer_book.penalize(now, from, why);
    }

    /// A peer asks for committed blocks from `height` on: up to
    /// [`block_sync::BLOCKS_PER_ANSWER`] of them and about
    /// [`block_sync::ANSWER_BYTES`].
    fn serve_block_request(
        &mut self,
        from: PublicKey,
        height: u64,
        store: &dyn Store,
    ) -> Result<(), StoreError> {
        let Some(layer) = self.blocks.as_mut() else {
            return Ok(());
        };
        if layer.stopped() {
            return Ok(());
        }
        let tip = layer.consensus.tip().height;
        let end = tip.min(height.saturating_add(block_sync::BLOCKS_PER_ANSWER - 1));
        let mut h = height.max(1);
        let mut bytes = 0;
        while h <= end {
            let Some(c) = store.block(h)? else { break };
            bytes += c.block.encoded_len();
            if bytes > block_sync::ANSWER_BYTES && h > height {
                break; // the requester asks again from here
            }
            layer.stats.blocks_served += 1;
            self.transmits.push(Transmit {
                dest: Dest::Peer(from),
                msg: Message::CommittedBlock(Box::new(c)),
            });
            h += 1;
        }
        Ok(())
    }

    /// A TimeProof with its transaction, from any peer (verified here).
    pub fn handle_proof(&mut self, now: u64, tx: Transaction, proof: TimeProof) {
        self.apply_proof(now, tx, proof, false);
    }

    /// A TimeProof the caller checked with
    /// [`crate::protocol::engine::verify_proof`] off the core thread.
    pub fn handle_verified_proof(&mut self, now: u64, tx: Transaction, proof: TimeProof) {
        self.apply_proof(now, tx, proof, true);
    }

    fn apply_proof(&mut self, now: u64, tx: Transaction, proof: TimeProof, verified: bool) {
        let txid = tx.txid();
        if verified {
            self.engine.handle_verified_proof(now, tx, proof);
        } else {
            self.engine.handle_proof(now, tx, proof);
        }
        if self.engine.settled(&txid) {
            self.catchup.resolved(&txid);
        }
    }

    /// A peer's vote batch whose signature the caller verified.
    pub fn handle_verified_votes(&mut self, now: u64, vb: Arc<VerifiedBatch>) {
        self.engine.handle_verified_votes(now, vb);
    }

    /// Outcomes of the vote threads' tallies.
    pub fn handle_tally_events(&mut self, now: u64, events: Vec<TallyEvent>) {
        self.engine.handle_tally_events(now, events);
    }

    /// A connection to `peer` came up: catch up from its finality log.
    pub fn handle_peer_up(&mut self, now: u64, peer: PublicKey) {
        self.catchup.connected_peer(now, peer);
        self.update_gate(now);
        self.poll_catchup(now);
    }

    pub fn handle_peer_down(&mut self, now: u64, peer: &PublicKey) {
        self.catchup.disconnected_peer(peer);
        if let Some(layer) = self.blocks.as_mut() {
            layer.sync.peer_disconnected(peer);
        }
        self.update_gate(now);
    }

    /// When [`Masternode::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> u64 {
        if self.blocks.as_ref().is_some_and(|b| b.confirming()) {
            // The rest of a committed block to confirm, a part a round.
            return 0;
        }
        let tick = self.last_tick.map_or(0, |t| t + self.cfg.tick_ms);
        match self
            .blocks
            .as_ref()
            .filter(|b| !b.stopped())
            .and_then(|b| b.consensus.poll_timeout())
        {
            Some(t) => tick.min(t),
            None => tick,
        }
    }

    /// Timers: engine housekeeping, re-announcements, catch-up polls.
    pub fn handle_timeout(&mut self, now: u64, store: &dyn Store) -> Result<(), StoreError> {
        if let Some(layer) = self.blocks.as_mut().filter(|l| !l.stopped()) {
            layer.page_in(&self.engine, store)?;
            if layer.consensus.poll_timeout().is_some_and(|t| t <= now) {
                // A timer may start the next height and propose on it.
                layer.finish_confirming(now, &mut self.engine);
                let view = blocks::LedgerView {
                    engine: &self.engine,
                    unconfirmed: &layer.unconfirmed,
                    store: Some(store),
                };
                layer.consensus.handle_timeout(now, &view);
            }
        }
        if self.last_tick.is_some_and(|t| now < t + self.cfg.tick_ms) {
            return Ok(());
        }
        self.last_tick = Some(now);
        self.engine.tick(now);
        for txid in self.reannounce.due(now) {
            if self.engine.known_final(&txid) {
                self.reannounce.settled(&txid);
                continue;
            }
            let tx = match self.engine.transaction(&txid) {
                Some(tx) => Some((*tx).clone()),
                None => store.get_transaction(&txid)?,
            };
            self.announce(&txid, tx);
        }
        self.poll_catchup(now);
        self.update_gate(now);
        Ok(())
    }

    fn poll_catchup(&mut self, now: u64) {
        #[cfg(feature = "planted-bugs")]
        if self.cfg.planted_no_catchup {
            return;
        }
        let registry = self.engine.registry();
        let held = self
            .blocks
            .as_mut()
            .is_some_and(|layer| layer.syncing_blocks(now, registry));
        self.catchup.set_held(now, held);
        let engine = &self.engine;
        let mut out = Vec::new();
        self.catchup.poll(now, |t| engine.settled(t), &mut out);
        self.push_to_peers(out);
    }

    fn push_to_peers(&mut self, out: Vec<(PublicKey, Message)>) {
        self.transmits
            .extend(out.into_iter().map(|(p, msg)| Transmit {
                dest: Dest::Peer(p),
                msg,
            }));
    }

    /// Lock broadcast, our vote again, and a proof request, for `txid`.
    fn announce(&mut self, txid: &Txid, tx: Option<Transaction>) {
        if let Some(tx) = tx {
            self.transmits.push(Transmit {
                dest: Dest::AllPeers,
                msg: Message::TransactionBroadcast(tx),
            });
        }
        self.engine.revote(txid);
        self.transmits.push(Transmit {
            dest: Dest::AllPeers,
            msg: Message::ProofRequest(*txid),
        });
    }

    fn update_gate(&mut self, now: u64) {
        #[cfg(feature = "planted-bugs")]
        if self.cfg.planted_no_catchup {
            self.engine.set_catching_up(false);
            return;
        }
        let registry = self.engine.registry();
        let _ = now;
        let caught_up = self
            .catchup
            .caught_up(self.my_weight, registry.quorum(), |k| {
                registry.weight_of(k).unwrap_or(0)
            });
        self.engine.set_catching_up(!caught_up);
    }

    fn proof_broadcast_allowed(&mut self, now: u64) -> bool {
        let second = now / 1_000;
        if self.proof_budget.0 != second {
            self.proof_budget = (second, 0);
        }
        if self.proof_budget.1 >= self.cfg.max_proof_broadcasts_per_s {
            self.stats.proof_broadcasts_dropped += 1;
            return false;
        }
        self.proof_budget.1 += 1;
        true
    }

    /// Ends the round: apply `writes` durably, then send `transmits`.
    pub fn end_round(&mut self, now: u64) -> Round {
        // Block effects first: confirmations go into the engine's round, so
        // they commit in the same transaction as the block.
        let fx = match self.blocks.as_mut() {
            Some(layer) => {
                // Payments that became final this round may make a proposal
                // this node waits on valid.
                let finals = self.engine.metrics().tx_finalized;
                if finals != layer.finals_seen && !layer.stopped() {
                    layer.finals_seen = finals;
                    let view = blocks::LedgerView {
                        engine: &self.engine,
                        unconfirmed: &layer.unconfirmed,
                        store: None,
                    };
                    layer.consensus.recheck(now, &view);
                }
                let mut fx = layer.drain(now, &mut self.engine);
                let missing = std::mem::take(&mut fx.missing)
                    .into_iter()
                    .filter(|t| !self.engine.known_final(t))
                    .collect();
                for txid in layer.proofs_to_ask(now, missing) {
                    self.transmits.push(Transmit {
                        dest: Dest::AllPeers,
                        msg: Message::ProofRequest(txid),
                    });
                }
                fx
            }
            None => blocks::BlockEffects::default(),
        };
        let r = self.engine.end_round(now);
        let mut round = Round {
            writes: r.writes,
            transmits: std::mem::take(&mut self.transmits),
            events: Vec::new(),
            wallet: Vec::new(),
            watch_approvals: Vec::new(),
        };
        round.writes.extend(fx.writes);
        round
            .transmits
            .extend(fx.broadcasts.into_iter().map(|m| Transmit {
                dest: Dest::AllPeers,
                msg: match m {
                    ConsensusMessage::Proposal(p) => Message::BlockProposal(p),
                    ConsensusMessage::Vote(v) => Message::BlockVote(v),
                },
            }));
        round
            .transmits
            .extend(fx.requests.into_iter().map(|(peer, from)| Transmit {
                dest: Dest::Peer(peer),
                msg: Message::BlockRequest { from },
            }));
        for w in &round.writes {
            if let Write::AppendOwnVotes(b) = w {
                for i in b.items.iter().filter(|i| i.decision.is_approve()) {
                    if self.engine.is_pending(&i.txid) {
                        self.reannounce.approved(now, i.txid);
                    }
                }
            }
        }
        let mut log = Vec::new();
        for out in r.outputs {
            match out {
                Output::BroadcastTransaction(tx) => round.transmits.push(Transmit {
                    dest: Dest::AllPeers,
                    msg: Message::TransactionBroadcast((*tx).clone()),
                }),
                Output::BroadcastVotes(b) => round.transmits.push(Transmit {
                    dest: Dest::AllPeers,
                    msg: Message::VoteBatch((*b).clone()),
                }),
                Output::WatchApprovals(txid) => round.watch_approvals.push(txid),
                Output::RequestProof(txid) => {
                    if self.proof_broadcast_allowed(now) {
                        round.transmits.push(Transmit {
                            dest: Dest::AllPeers,
                            msg: Message::ProofRequest(txid),
                        });
                    }
                }
                Output::Event(ev) => {
                    match &ev {
                        Event::Finalized { txid, tx, .. } => {
                            if let Some(layer) = self.blocks.as_mut() {
                                // Unless a block of this round confirmed it.
                                let unconfirmed = tx.inputs.first().is_some_and(|i| {
                                    matches!(
                                        self.engine.utxo(&i.prev).map(|e| e.state),
                                        Some(UtxoState::SpentFinalized { .. })
                                    )
                                });
                                if unconfirmed {
                                    let pos = layer.log_len + log.len() as u64;
                                    layer.unconfirmed.push_final(tx.clone(), pos);
                                }
                            }
                            log.push(*txid);
                            self.reannounce.settled(txid);
                            self.catchup.resolved(txid);
                        }
                        Event::Equivocation { voter, .. } => {
                            self.peer_book
                                .penalize(now, voter, Misbehaviour::Equivocation);
                        }
                        Event::Rejected { txid, reason, .. } => {
                            if *reason == RejectCode::ConflictFinalized {
                                self.reannounce.settled(txid);
                            } else if self.reannounce.contains(txid) {
                                self.reannounce.stuck(now, txid);
                            }
                        }
                        _ => {}
                    }
                    self.router.on_event(&ev);
                    round.events.push(ev);
                }
            }
        }
        // In the same transaction as the proofs: the log never lists a
        // transaction whose proof is not stored.
        if let Some(layer) = self.blocks.as_mut() {
            layer.log_len += log.len() as u64;
        }
        round
            .writes
            .extend(log.into_iter().map(Write::AppendFinality));
        round.wallet = self.router.take_output();
        round
    }
}

#[cfg(test)]
mod tests;
