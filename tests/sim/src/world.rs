//! The event loop: one virtual clock, one queue of timed events, every actor.
//! Events at the same instant run in the order they were scheduled. Each
//! honest round is checked before its writes are applied, and its writes are
//! applied before its messages leave. Whenever a link can change (a partition
//! starts or ends, a node crashes or restarts) the links are recomputed and
//! both ends of every link that came up or went down are told
//! (`handle_peer_up` / `handle_peer_down`).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::Write;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use timecoin_core::blocks::ConsensusConfig;
use timecoin_core::codec::MAX_DATAGRAM_LEN;
use timecoin_core::masternode::{self, MasternodeConfig, Transmit};
use timecoin_core::protocol::engine::{Engine, EngineConfig, Event};
use timecoin_core::protocol::message::Message;
use timecoin_core::protocol::registry::{Masternode, Registry};
use timecoin_core::protocol::types::TxOutput;
use timecoin_core::protocol::types::{Address, PublicKey, Transaction, Txid, COIN};
use timecoin_core::protocol::utxo::{UtxoEntry, UtxoState};
use timecoin_core::storage::Genesis;
use timecoin_core::storage::MemoryStore;
use timecoin_core::storage::Store as _;
use timecoin_core::testkit::{address_of, genesis_outpoint, key_from_seed};

use crate::byzantine::{ByzNode, ByzStats};
use crate::checker::{Checker, Payment, Violation, CATCH_UP_BOUND};
use crate::config::{Micros, Options, Planted, SimConfig, CHAIN_ID, MS, SEC};
use crate::net::{class_of, class_of_frame, Dest, Frame, NetEvent, NetStats, Network};
use crate::node::HonestNode;
use crate::rng_for;
use crate::trace::{event_digest, message_digest, transmit_digest, Trace};
use crate::wallet::{DoubleSpender, HonestWallet};

const COIN_VALUE: u64 = 10 * COIN;

enum Actor {
    Honest(Box<HonestNode>),
    Byz(Box<ByzNode>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WalletRef {
    Honest(usize),
    Spender(usize),
}

enum Ev {
    Net(NetEvent),
    Tick(usize),
    ByzStep(usize),
    Crash {
        node: usize,
        after_write: bool,
        after_block_vote: bool,
    },
    CrashFallback(usize),
    Restart(usize),
    PartitionStart(usize),
    PartitionEnd(usize),
    HealAll,
    Submit {
        node: usize,
        tx: Transaction,
    },
    Note {
        wallet: WalletRef,
        tx: Transaction,
    },
    WalletStep(usize),
    WalletRetry(usize, Txid),
    SpenderStep(usize),
    CheckAgreement,
    /// A restarted node's catch-up window (watch id, window start) is over.
    CatchUpCheck {
        watch: usize,
        since: Micros,
    },
}

struct Scheduled {
    t: Micros,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> Ordering {
        // Min-heap on (time, sequence).
        (o.t, o.seq).cmp(&(self.t, self.seq))
    }
}

/// What one run found.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub seed: u64,
    pub options: Options,
    pub summary: String,
    pub violations: Vec<Violation>,
    pub trace_hash: String,
    pub events: u64,
    pub payments: usize,
    pub payments_final_everywhere: usize,
    pub finality_events: u64,
    /// `Event::ConflictingProofs` emitted by honest masternodes.
    pub conflicting_proofs_detected: usize,
    /// `Event::Equivocation` emitted by honest masternodes.
    pub equivocations_detected: u64,
    /// Payment evidence records honest masternodes stored, all checked at
    /// the end: (two decisions on one transaction, approvals of two
    /// transactions spending one output).
    pub payment_evidence: (u64, u64),
    pub double_spend_txs: usize,
    pub restarts: u32,
    /// What the honest masternodes' state machines did around their engines.
    pub reannounced: u64,
    pub proofs_served: u64,
    pub log_pages_served: u64,
    pub catchup_proofs_requested: u64,
    /// Restart catch-up windows the checker evaluated, and the transactions
    /// (final before the restart, held by a linked peer) they required.
    pub catch_up_windows: u64,
    pub catch_up_required: u64,
    pub net: NetStats,
    pub byz: ByzStats,
    pub decode_errors: u64,
    pub honest_metrics: String,
    /// The block layer, if the run had it.
    pub blocks: Option<crate::checker::blocks::BlockFigures>,
}

impl RunReport {
    /// Violations that fail the run: all of them with `strict`, else those
    /// not traced to a known engine issue.
    pub fn failing(&self) -> impl Iterator<Item = &Violation> {
        let strict = self.options.strict;
        self.violations
            .iter()
            .filter(move |v| strict || v.known.is_none())
    }
    pub fn ok(&self) -> bool {
        self.failing().next().is_none()
    }
    /// Violations traced to known engine issues (tolerated unless strict).
    pub fn known(&self) -> impl Iterator<Item = &Violation> {
        self.violations.iter().filter(|v| v.known.is_some())
    }
    pub fn replay_command(&self) -> String {
        self.options.replay_command(self.seed)
    }
}

struct World {
    cfg: SimConfig,
    now: Micros,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    net: Network,
    actors: Vec<Actor>,
    pubkeys: Vec<PublicKey>,
    /// `linked[i][j]`: the link between i and j is usable and both were told.
    linked: Vec<Vec<bool>>,
    wallets: Vec<HonestWallet>,
    spenders: Vec<DoubleSpender>,
    addresses: Vec<Address>,
    owner: BTreeMap<Txid, WalletRef>,
    checker: Checker,
    trace: Trace,
    rng_wallet: ChaCha8Rng,
    rng_byz: ChaCha8Rng,
    rng_misc: ChaCha8Rng,
    decode_errors: u64,
    double_spend_txs: usize,
    payment_evidence: (u64, u64),
}

/// Builds the genesis: the registry with the drawn tiers, and coins for
/// every wallet (honest ones first, then the double-spenders).
fn genesis(
    cfg: &SimConfig,
    mn_keys: &[ed25519_dalek::SigningKey],
    wallet_keys: &[ed25519_dalek::SigningKey],
) -> Genesis {
    let registry = Registry::new(
        1,
        mn_keys
            .iter()
            .zip(&cfg.tiers)
            .enumerate()
            .map(|(i, (k, tier))| Masternode {
                key: PublicKey::from_signing(k),
                address: format!("127.0.0.1:{}", 24100 + i),
                tier: *tier,
            })
            .collect(),
    )
    .expect("distinct keys");
    let mut utxos = Vec::new();
    for (w, k) in wallet_keys.iter().enumerate() {
        for c in 0..cfg.coins_per_wallet {
            utxos.push((
                genesis_outpoint(w as u32, c),
                UtxoEntry {
                    output: TxOutput {
                        amount: COIN_VALUE,
                        address: address_of(k),
                    },
                    state: UtxoState::Unspent,
                },
            ));
        }
    }
    Genesis {
        chain_id: CHAIN_ID,
        registry,
        utxos,
    }
}

/// Largest message the fast path carries (a datagram minus its header,
/// signature and item length), as the node's `FastPathSender::fits`.
const FAST_PATH_MAX_ITEM: usize = MAX_DATAGRAM_LEN - 18 - 64 - 2;

fn masternode_config(cfg: &SimConfig) -> MasternodeConfig {
    let mut e = EngineConfig::new(CHAIN_ID);
    e.lock_timeout_ms = cfg.engine.lock_timeout_ms;
    e.orphan_timeout_ms = cfg.engine.orphan_timeout_ms;
    e.decided_retention_ms = cfg.engine.decided_retention_ms;
    e.mempool_limit = cfg.engine.mempool_limit;
    e.max_unknown_tallies = cfg.engine.max_unknown_tallies;
    // A cache far smaller than the UTXO set: nearly every output is read
    // back from the store, so the runs check that the cache never answers
    // with a stale state (the node's default holds 2^20).
    e.utxo_cache = 8;
    if cfg.net.fast_path {
        // As the node does: own vote batches fit one datagram.
        e.max_vote_batch_items = (FAST_PATH_MAX_ITEM - 113) / 35;
    }
    let mut m = MasternodeConfig::new(e);
    // Far fewer than a block holds: every committed block with more than
    // two payments is confirmed over several rounds, so the runs (crashes
    // between those rounds among them) check that confirming in parts is
    // the same as confirming at once (the node's default is 256).
    m.confirmations_per_round = 2;
    match cfg.options.planted {
        Planted::None => {}
        Planted::Quorum => m.engine.planted.quorum = Some(cfg.total_weight() * 67 / 100),
        Planted::ReleaseLock => m.engine.planted.release_voted_locks_on_timeout = true,
        Planted::NoCatchup => m.planted_no_catchup = true,
        Planted::BlockQuorum | Planted::BlockForgetVotes => {}
    }
    m.blocks = cfg.blocks.as_ref().map(|b| {
        let mut c = ConsensusConfig::devnet();
        c.block_interval_ms = b.interval_ms;
        c.propose_timeout_ms = b.propose_timeout_ms;
        c.vote_timeout_ms = b.vote_timeout_ms;
        c.max_timeout_ms = b.max_timeout_ms;
        c.planted.weak_quorum = cfg.options.planted == Planted::BlockQuorum;
        c.planted.forget_votes = cfg.options.planted == Planted::BlockForgetVotes;
        c
    });
    m
}

impl World {
    fn new(cfg: SimConfig, trace: Trace) -> World {
        let seed = cfg.seed;
        let n = cfg.n();
        let mn_keys: Vec<_> = (0..n as u64).map(|i| key_from_seed("mn", i)).collect();
        let n_wallets = cfg.honest_wallets + cfg.double_spenders;
        let wallet_keys: Vec<_> = (0..n_wallets as u64)
            .map(|i| key_from_seed("wallet", i))
            .collect();
        let genesis = genesis(&cfg, &mn_keys, &wallet_keys);
        let pubkeys: Vec<PublicKey> = mn_keys.iter().map(PublicKey::from_signing).collect();
        let mcfg = masternode_config(&cfg);
        let actors = (0..n)
            .map(|i| match &cfg.byzantine[i] {
                None => Actor::Honest(Box::new(HonestNode::new(
                    i,
                    mn_keys[i].clone(),
                    mcfg.clone(),
                    &genesis,
                    cfg.skews[i],
                ))),
                Some(b) => Actor::Byz(Box::new(ByzNode::new(
                    i,
                    mn_keys[i].clone(),
                    b.clone(),
                    pubkeys.clone(),
                    &genesis.registry,
                    cfg.blocks.is_some(),
                ))),
            })
            .collect();
        let coins = |w: usize| -> Vec<_> {
            (0..cfg.coins_per_wallet)
                .map(|c| (genesis_outpoint(w as u32, c), COIN_VALUE))
                .collect()
        };
        let wallets = (0..cfg.honest_wallets)
            .map(|w| HonestWallet::new(w, wallet_keys[w].clone(), coins(w)))
            .collect();
        let spenders = (0..cfg.double_spenders)
            .map(|d| {
                let w = cfg.honest_wallets + d;
                DoubleSpender::new(d, wallet_keys[w].clone(), coins(w))
            })
            .collect();
        let addresses = wallet_keys.iter().map(address_of).collect();
        let honest: Vec<bool> = (0..n).map(|i| cfg.is_honest(i)).collect();
        let byz_safe = 3 * cfg.byzantine_weight() < cfg.total_weight();
        let checker = Checker::new(genesis.registry.clone(), honest, pubkeys.clone(), byz_safe);
        World {
            net: Network::new(cfg.net.clone(), n, rng_for(seed, "net")),
            now: 0,
            queue: BinaryHeap::new(),
            seq: 0,
            actors,
            pubkeys,
            linked: vec![vec![false; n]; n],
            wallets,
            spenders,
            addresses,
            owner: BTreeMap::new(),
            checker,
            trace,
            rng_wallet: rng_for(seed, "wallet"),
            rng_byz: rng_for(seed, "byzantine"),
            rng_misc: rng_for(seed, "misc"),
            decode_errors: 0,
            double_spend_txs: 0,
            payment_evidence: (0, 0),
            cfg,
        }
    }

    fn at(&mut self, t: Micros, ev: Ev) {
        self.seq += 1;
        self.queue.push(Scheduled {
            t,
            seq: self.seq,
            ev,
        });
    }

    fn is_up(&self, i: usize) -> bool {
        match &self.actors[i] {
            Actor::Honest(h) => h.is_up(),
            Actor::Byz(_) => true,
        }
    }

    fn schedule_start(&mut self) {
        let n = self.cfg.n();
        for i in 0..n {
            match self.actors[i] {
                Actor::Honest(_) => {
                    let t = self.rng_misc.gen_range(0..self.cfg.engine.tick_every);
                    self.at(t, Ev::Tick(i));
                }
                Actor::Byz(_) => {
                    let t = self.rng_misc.gen_range(0..100 * MS);
                    self.at(t, Ev::ByzStep(i));
                }
            }
        }
        for k in 0..self.cfg.partitions.len() {
            let p = &self.cfg.partitions[k];
            let (s, e) = (p.start, p.end);
            self.at(s, Ev::PartitionStart(k));
            self.at(e, Ev::PartitionEnd(k));
        }
        for c in self.cfg.crashes.clone() {
            self.at(
                c.at,
                Ev::Crash {
                    node: c.node,
                    after_write: c.after_write,
                    after_block_vote: c.after_block_vote,
                },
            );
            if c.after_write || c.after_block_vote {
                self.at(c.at + (c.restart - c.at) / 2, Ev::CrashFallback(c.node));
            }
            self.at(c.restart, Ev::Restart(c.node));
        }
        for w in 0..self.wallets.len() {
            let t = SEC / 2 + self.rng_wallet.gen_range(0..self.cfg.pay_every);
            self.at(t, Ev::WalletStep(w));
        }
        for d in 0..self.spenders.len() {
            let t = self.rng_wallet.gen_range(SEC..10 * SEC);
            self.at(t, Ev::SpenderStep(d));
        }
        self.at(self.cfg.heal_at, Ev::HealAll);
        self.at(10 * SEC, Ev::CheckAgreement);
    }

    fn run(&mut self) {
        self.schedule_start();
        // Every connection comes up at the start.
        self.links();
        while let Some(s) = self.queue.pop() {
            if s.t > self.cfg.end_at {
                break;
            }
            self.now = s.t;
            self.handle(s.ev);
        }
        self.now = self.cfg.end_at;
        self.finish();
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Net(NetEvent::Arrive {
                from,
                to,
                gen,
                frame,
            }) => {
                if self.net.arrives(from, to, gen) {
                    self.deliver(from, to, frame);
                }
            }
            Ev::Net(NetEvent::Datagram { from, to, frame }) => {
                if self.net.datagram_arrives(from, to) {
                    self.deliver(from, to, frame);
                }
            }
            Ev::Tick(i) => {
                if let Actor::Honest(h) = &mut self.actors[i] {
                    if h.is_up() {
                        h.timeout(now);
                        self.trace.record(now, 20, i, &[]);
                        self.flush(i);
                    }
                }
                let every = self.cfg.engine.tick_every;
                self.at(now + every, Ev::Tick(i));
            }
            Ev::ByzStep(i) => {
                if let Actor::Byz(b) = &mut self.actors[i] {
                    let sends = b.step(&mut self.rng_byz, now);
                    self.send_frames(i, sends);
                }
                let dt = self.rng_misc.gen_range(50 * MS..=150 * MS);
                self.at(now + dt, Ev::ByzStep(i));
            }
            Ev::Crash {
                node,
                after_write,
                after_block_vote,
            } => {
                if let Actor::Honest(h) = &mut self.actors[node] {
                    if h.is_up() {
                        if after_block_vote {
                            h.crash_after_block_vote = true;
                        } else if after_write {
                            h.crash_after_write = true;
                        } else {
                            self.crash(node, "crash");
                        }
                    }
                }
            }
            Ev::CrashFallback(node) => {
                if let Actor::Honest(h) = &self.actors[node] {
                    if h.is_up() && (h.crash_after_write || h.crash_after_block_vote) {
                        self.crash(node, "crash (no write came)");
                    }
                }
            }
            Ev::Restart(node) => self.restart(node),
            Ev::PartitionStart(k) => {
                let side = self.cfg.partitions[k].side.clone();
                self.trace.record(now, 30, k, &side);
                self.trace.line(now, || format!("partition {side:?}"));
                self.net.set_partition(Some(side));
                self.links();
            }
            Ev::PartitionEnd(k) => {
                self.trace.record(now, 31, k, &[]);
                self.trace.line(now, || "partition healed".into());
                self.net.set_partition(None);
                self.links();
            }
            Ev::HealAll => {
                self.net.set_partition(None);
                for i in 0..self.cfg.n() {
                    self.restart(i);
                }
                self.links();
            }
            Ev::Submit { node, tx } => {
                let txid = tx.txid();
                self.trace.record(now, 40, node, &txid.0);
                if !self.is_up(node) {
                    return;
                }
                match &mut self.actors[node] {
                    Actor::Honest(h) => {
                        self.checker.on_submitted(&txid, now);
                        let answer = h.wallet_transaction(now, tx);
                        self.flush(node);
                        if let Some(Message::TimeProof { tx, .. }) = answer {
                            // Already final there: the wallet hears at once.
                            self.notify(node, txid, tx);
                        }
                    }
                    Actor::Byz(b) => {
                        let msg = Message::SubmitTransaction(tx);
                        let f: Frame = msg.to_bytes().into();
                        let sends = b.on_message(&mut self.rng_byz, &f, msg);
                        self.send_frames(node, sends);
                    }
                }
            }
            Ev::Note { wallet, tx } => match wallet {
                WalletRef::Honest(w) => self.wallets[w].on_final(tx.txid()),
                WalletRef::Spender(d) => self.spenders[d].on_final(&tx),
            },
            Ev::WalletStep(w) => {
                if now >= self.cfg.payments_until {
                    return;
                }
                let n = self.cfg.n();
                let node = self.rng_wallet.gen_range(0..n);
                let me = self.wallets[w].address;
                let to = **self
                    .addresses
                    .iter()
                    .filter(|a| **a != me)
                    .collect::<Vec<_>>()
                    .choose(&mut self.rng_wallet)
                    .expect("other wallets");
                if let Some(tx) = self.wallets[w].pay(&mut self.rng_wallet, to, node) {
                    let txid = tx.txid();
                    self.checker.register_tx(&tx);
                    self.checker.register_payment(
                        txid,
                        Payment {
                            wallet: w,
                            first_submit: now,
                            first_honest: None,
                        },
                    );
                    self.owner.insert(txid, WalletRef::Honest(w));
                    self.trace
                        .line(now, || format!("wallet {w} pays {txid:?} via node {node}"));
                    self.submit(node, tx);
                    self.at(now + 3 * SEC, Ev::WalletRetry(w, txid));
                }
                let mean = self.cfg.pay_every;
                let dt = self.rng_wallet.gen_range(mean / 2..=mean * 3 / 2);
                self.at(now + dt, Ev::WalletStep(w));
            }
            Ev::WalletRetry(w, txid) => {
                let n = self.cfg.n();
                if let Some((node, tx)) = self.wallets[w].retry(&mut self.rng_wallet, txid, n) {
                    self.trace.line(now, || {
                        format!("wallet {w} resubmits {txid:?} via node {node}")
                    });
                    self.submit(node, tx);
                    self.at(now + 3 * SEC, Ev::WalletRetry(w, txid));
                }
            }
            Ev::SpenderStep(d) => {
                if now >= self.cfg.payments_until {
                    return;
                }
                let n = self.cfg.n();
                let recipients = self.addresses.clone();
                let subs = self.spenders[d].step(&mut self.rng_wallet, now, n, &recipients);
                for (node, tx) in subs {
                    let txid = tx.txid();
                    if !self.owner.contains_key(&txid) {
                        self.double_spend_txs += 1;
                        self.owner.insert(txid, WalletRef::Spender(d));
                        self.checker.register_tx(&tx);
                        self.trace
                            .line(now, || format!("double-spender {d} signs {txid:?}"));
                    }
                    self.submit(node, tx);
                }
                let dt = self.rng_wallet.gen_range(SEC / 2..=4 * SEC);
                self.at(now + dt, Ev::SpenderStep(d));
            }
            Ev::CheckAgreement => {
                self.check_agreement();
                if self.trace.logging() && self.cfg.blocks.is_some() {
                    let tips: Vec<String> = self
                        .actors
                        .iter()
                        .map(|a| match a {
                            Actor::Honest(h) => match h.mn.as_ref().and_then(|m| m.block_tip()) {
                                Some(t) => format!("{}", t.height),
                                None => "down".into(),
                            },
                            Actor::Byz(_) => "byz".into(),
                        })
                        .collect();
                    self.trace.line(now, || format!("block tips {tips:?}"));
                }
                self.at(now + 10 * SEC, Ev::CheckAgreement);
            }
            Ev::CatchUpCheck { watch, since } => {
                let Some(node) = self.checker.watch_node(watch) else {
                    return;
                };
                let engines: Vec<(usize, &Engine)> = self
                    .actors
                    .iter()
                    .enumerate()
                    .filter_map(|(i, a)| match a {
                        Actor::Honest(h) => h.mn.as_ref().map(|m| (i, m.engine())),
                        Actor::Byz(_) => None,
                    })
                    .collect();
                let Some(&(_, me)) = engines.iter().find(|(i, _)| *i == node) else {
                    return;
                };
                let linked: Vec<(usize, &Engine)> = engines
                    .iter()
                    .filter(|(j, _)| self.linked[node][*j])
                    .copied()
                    .collect();
                self.checker.check_catch_up(watch, since, now, me, &linked);
            }
        }
    }

    /// The honest masternodes that are up, with their engines.
    fn honest_engines(&self) -> Vec<(usize, &Engine)> {
        self.actors
            .iter()
            .enumerate()
            .filter_map(|(i, a)| match a {
                Actor::Honest(h) => h.mn.as_ref().map(|m| (i, m.engine())),
                Actor::Byz(_) => None,
            })
            .collect()
    }

    fn check_agreement(&mut self) {
        let engines: Vec<(usize, &Engine)> = self
            .actors
            .iter()
            .enumerate()
            .filter_map(|(i, a)| match a {
                Actor::Honest(h) => h.mn.as_ref().map(|m| (i, m.engine())),
                Actor::Byz(_) => None,
            })
            .collect();
        let now = self.now;
        self.checker.check_agreement(now, &engines);
    }

    /// Recomputes which links are usable (both ends up, no partition between
    /// them) and tells both ends of every link that changed.
    fn links(&mut self) {
        let n = self.cfg.n();
        let now = self.now;
        let mut changed = vec![false; n];
        for i in 0..n {
            for j in i + 1..n {
                let usable = self.is_up(i) && self.is_up(j) && !self.net.partitioned(i, j);
                if usable == self.linked[i][j] {
                    continue;
                }
                self.linked[i][j] = usable;
                self.linked[j][i] = usable;
                changed[i] = true;
                changed[j] = true;
                self.trace.record(now, 32, i * 64 + j, &[usable as u8]);
                if usable {
                    for (t, e) in self.net.link_up(now, i, j) {
                        self.at(t, Ev::Net(e));
                    }
                } else {
                    self.net.link_down(i, j);
                }
                for (a, b) in [(i, j), (j, i)] {
                    let pk = self.pubkeys[b];
                    if let Actor::Honest(h) = &mut self.actors[a] {
                        if usable {
                            h.peer_up(now, pk);
                        } else {
                            h.peer_down(now, &pk);
                        }
                    }
                }
            }
        }
        let quorum = self.cfg_quorum();
        let changed: Vec<usize> = (0..n).filter(|&i| changed[i]).collect();
        for &i in &changed {
            let w: u64 = self.cfg.tiers[i].weight()
                + (0..n)
                    .filter(|&j| self.linked[i][j])
                    .map(|j| self.cfg.tiers[j].weight())
                    .sum::<u64>();
            if let Some((watch, since)) = self.checker.links_changed(i, now, w >= quorum) {
                self.at(since + CATCH_UP_BOUND, Ev::CatchUpCheck { watch, since });
            }
        }
        for i in changed {
            self.flush(i);
        }
    }

    fn cfg_quorum(&self) -> u64 {
        timecoin_core::protocol::registry::quorum_threshold(self.cfg.total_weight())
    }

    /// A wallet's submission: its own short, lossy link.
    fn submit(&mut self, node: usize, tx: Transaction) {
        if self.rng_misc.gen_bool(self.cfg.net.wallet_loss) {
            return;
        }
        let lat = self.cfg.net.wallet_latency + self.rng_misc.gen_range(0..=2 * MS);
        self.at(self.now + lat, Ev::Submit { node, tx });
    }

    fn crash(&mut self, node: usize, why: &str) {
        if let Actor::Honest(h) = &mut self.actors[node] {
            h.crash();
            self.net.sender_crashed(node);
            self.checker.on_crash(node);
            self.trace.record(self.now, 50, node, &[]);
            let why = why.to_string();
            self.trace.line(self.now, || format!("node {node} {why}"));
            self.links();
        }
    }

    fn restart(&mut self, node: usize) {
        let now = self.now;
        let Actor::Honest(h) = &mut self.actors[node] else {
            return;
        };
        if h.is_up() {
            return;
        }
        h.restart(now);
        let mn = h.mn.as_ref().expect("just started");
        let tip = mn.block_tip();
        self.checker.on_restart(node, now, mn.engine());
        if self.cfg.blocks.is_some() {
            self.checker.on_block_restart(node, now, tip);
        }
        self.checker.watch_restart(node, now);
        self.trace.record(now, 51, node, &[]);
        self.trace
            .line(now, || format!("node {node} restarts from its store"));
        self.links();
        // What `Masternode::new` queued (its own pending votes again).
        self.flush(node);
    }

    fn deliver(&mut self, from: usize, to: usize, frame: Frame) {
        let now = self.now;
        let msg = match Message::decode(&frame) {
            Ok(m) => m,
            Err(_) => {
                self.decode_errors += 1;
                self.trace
                    .record(now, 61, to, blake3::hash(&frame).as_bytes());
                return;
            }
        };
        let digest = message_digest(&msg);
        self.trace.record(now, 60, to * 64 + from, &digest);
        if self.trace.logging() {
            let what = msg.name();
            let detail = match &msg {
                Message::BlockVote(v) => format!(
                    " h{} r{} {:?} {}",
                    v.slot.height,
                    v.slot.round,
                    v.kind,
                    v.block.map_or("nil".into(), |b| hex::encode(&b.0[..4]))
                ),
                Message::BlockProposal(p) => format!(
                    " h{} r{} vr {:?} {} ({} txs, polka {})",
                    p.slot.height,
                    p.slot.round,
                    p.valid_round,
                    hex::encode(&p.block.hash().0[..4]),
                    p.block.transactions.len(),
                    p.polka.len()
                ),
                Message::CommittedBlock(c) => format!(
                    " h{} {}",
                    c.block.height(),
                    hex::encode(&c.block.hash().0[..4])
                ),
                Message::BlockRequest { from } => format!(" from {from}"),
                _ => String::new(),
            };
            self.trace.line(now, || {
                format!(
                    "{from} -> {to} {what} {}{detail}",
                    hex::encode(&digest[..digest.len().min(9)])
                )
            });
        }
        let from_pk = self.pubkeys[from];
        match &mut self.actors[to] {
            Actor::Honest(h) => {
                h.peer_message(now, from_pk, msg);
                self.flush(to);
            }
            Actor::Byz(b) => {
                let sends = b.on_message(&mut self.rng_byz, &frame, msg);
                self.send_frames(to, sends);
            }
        }
    }

    /// Ends an honest node's round: check, write durably, maybe crash, send,
    /// then deliver its events.
    fn flush(&mut self, i: usize) {
        let now = self.now;
        let Actor::Honest(h) = &mut self.actors[i] else {
            return;
        };
        let Some(round) = h.end_round(now) else {
            return;
        };
        if round.is_empty() {
            return;
        }
        self.checker.on_round(i, now, &round);
        h.commit(&round);
        if let Some(m) = h.mn.as_ref() {
            self.checker.after_round(i, now, &round, m.engine());
        }
        let crash_now = h.crashes_after(&round);
        // The state machine's output order may follow its hash maps; ours
        // must not (a stable sort keeps its order among equal digests).
        let mut transmits: Vec<(Vec<u8>, Transmit)> = round
            .transmits
            .into_iter()
            .map(|t| (transmit_digest(&t), t))
            .collect();
        transmits.sort_by(|a, b| a.0.cmp(&b.0));
        let mut events: Vec<(Vec<u8>, Event)> = round
            .events
            .into_iter()
            .map(|e| (event_digest(&e), e))
            .collect();
        events.sort_by(|a, b| a.0.cmp(&b.0));
        for (d, _) in &transmits {
            self.trace.record(now, 70, i, d);
        }
        for (d, e) in &events {
            self.trace.record(now, 71, i, d);
            if self.trace.logging() {
                let s = describe_event(e);
                self.trace.line(now, || format!("node {i}: {s}"));
            }
        }
        if crash_now {
            self.crash(i, "crashes after its durable write, before sending");
            return;
        }
        for (_, t) in transmits {
            self.send_transmit(i, t);
        }
        for (_, e) in events {
            if let Event::Finalized { txid, tx, .. } = e {
                self.notify(i, txid, (*tx).clone());
            }
        }
    }

    /// Tells the wallet that made `txid` (if it asked this node) that it is final.
    fn notify(&mut self, node: usize, txid: Txid, tx: Transaction) {
        let Some(&w) = self.owner.get(&txid) else {
            return;
        };
        let tell = match w {
            WalletRef::Honest(k) => self.wallets[k].submitted_to(&txid, node),
            WalletRef::Spender(_) => true,
        };
        if tell {
            let t = self.now + self.cfg.net.wallet_latency;
            self.at(t, Ev::Note { wallet: w, tx });
        }
    }

    /// One transmit of an honest node: lock broadcasts and vote batches to
    /// all peers take the fast path when the run has one and they fit a
    /// datagram; everything else goes over the reliable path in its class.
    fn send_transmit(&mut self, from: usize, t: Transmit) {
        let n = self.cfg.n();
        let frame: Frame = t.msg.to_bytes().into();
        let class = class_of(&t.msg);
        match t.dest {
            masternode::Dest::AllPeers => {
                let fast = self.net.fast_path()
                    && matches!(
                        t.msg,
                        Message::TransactionBroadcast(_) | Message::VoteBatch(_)
                    )
                    && frame.len() <= FAST_PATH_MAX_ITEM;
                for to in (0..n).filter(|&j| j != from) {
                    if fast {
                        let mut out = Vec::new();
                        self.net
                            .datagram(self.now, from, to, frame.clone(), &mut out);
                        for (at, e) in out {
                            self.at(at, Ev::Net(e));
                        }
                    } else {
                        self.send_reliable(from, to, frame.clone(), class);
                    }
                }
            }
            masternode::Dest::Peer(pk) => {
                if let Some(to) = self.pubkeys.iter().position(|k| *k == pk) {
                    self.send_reliable(from, to, frame, class);
                }
            }
        }
    }

    fn send_reliable(&mut self, from: usize, to: usize, frame: Frame, class: usize) {
        if let Some((t, e)) = self.net.send(self.now, from, to, frame, class) {
            self.at(t, Ev::Net(e));
        }
    }

    /// A Byzantine actor's frames, over the reliable path.
    fn send_frames(&mut self, from: usize, sends: Vec<(Dest, Frame)>) {
        let n = self.cfg.n();
        for (dest, frame) in sends {
            let class = class_of_frame(&frame);
            let targets: Vec<usize> = match dest {
                Dest::AllPeers => (0..n).filter(|&j| j != from).collect(),
                Dest::Peer(j) => vec![j],
            };
            for to in targets {
                self.send_reliable(from, to, frame.clone(), class);
            }
        }
    }

    fn finish(&mut self) {
        let now = self.now;
        self.check_agreement();
        let cfg = &self.cfg;
        // Liveness is promised only while Byzantine weight is below 1/3.
        if 3 * cfg.byzantine_weight() >= cfg.total_weight() {
            return;
        }
        let engines: Vec<(usize, &Engine)> = self
            .actors
            .iter()
            .enumerate()
            .filter_map(|(i, a)| match a {
                Actor::Honest(h) => h.mn.as_ref().map(|m| (i, m.engine())),
                Actor::Byz(_) => None,
            })
            .collect();
        self.checker.check_liveness_end(now, &engines);
        self.checker.check_liveness_bound(
            cfg.liveness_bound,
            5 * SEC,
            |a, b| cfg.calm_between(a, b),
            cfg.end_at,
        );
        let nodes: Vec<(usize, &Engine, &MemoryStore)> = self
            .actors
            .iter()
            .enumerate()
            .filter_map(|(i, a)| match a {
                Actor::Honest(h) => h.mn.as_ref().map(|m| (i, m.engine(), &h.store)),
                Actor::Byz(_) => None,
            })
            .collect();
        self.checker.check_learned_end(now, &nodes);
        let payment: Vec<_> = nodes
            .iter()
            .map(|(i, _, s)| {
                (
                    *i,
                    s.evidence().unwrap_or_default(),
                    s.approval_evidence().unwrap_or_default(),
                )
            })
            .collect();
        self.payment_evidence = self.checker.check_payment_evidence(now, &payment);
        if self.cfg.blocks.is_some() {
            let evidence: Vec<(usize, Vec<timecoin_core::blocks::BlockEvidence>)> = nodes
                .iter()
                .map(|(i, _, s)| (*i, s.block_evidence().unwrap_or_default()))
                .collect();
            self.checker.blocks.figures.evidence_checked +=
                self.checker.check_block_evidence(now, &evidence);
            let up: Vec<usize> = nodes.iter().map(|n| n.0).collect();
            self.checker
                .check_blocks_end(now, cfg.heal_at, |a, b| cfg.calm_between(a, b), &up);
        }
    }

    fn report(mut self) -> RunReport {
        let honest: Vec<usize> = (0..self.cfg.n())
            .filter(|&i| self.cfg.is_honest(i))
            .collect();
        let mut violations = std::mem::take(&mut self.checker.violations);
        violations.sort_by(|a, b| {
            (a.at, a.kind, a.node, &a.detail).cmp(&(b.at, b.kind, b.node, &b.detail))
        });
        let mut byz = ByzStats::default();
        let mut restarts = 0;
        let mut metrics = Vec::new();
        let (mut reannounced, mut proofs_served, mut log_pages_served) = (0, 0, 0);
        let mut catchup_proofs_requested = 0;
        for a in &self.actors {
            match a {
                Actor::Byz(b) => {
                    let s = &b.stats;
                    byz.batches_signed += s.batches_signed;
                    byz.forged += s.forged;
                    byz.unregistered += s.unregistered;
                    byz.replayed += s.replayed;
                    byz.flood_items += s.flood_items;
                    byz.garbage_frames += s.garbage_frames;
                    byz.bad_proofs += s.bad_proofs;
                    byz.proofs_pushed += s.proofs_pushed;
                    byz.relays += s.relays;
                    byz.malleated += s.malleated;
                    byz.flood_batches += s.flood_batches;
                    byz.junk_transport += s.junk_transport;
                    byz.torsion += s.torsion;
                    if let Some(c) = &b.chain {
                        byz.blocks.add(&c.stats);
                    }
                }
                Actor::Honest(h) => {
                    restarts += h.restarts;
                    metrics.push(h.metrics_total());
                    let st = h.stats_total();
                    reannounced += st.reannounced;
                    proofs_served += st.proofs_served;
                    log_pages_served += st.log_pages_served;
                    catchup_proofs_requested += st.catchup.proofs_requested;
                }
            }
        }
        let sum = |f: fn(&timecoin_core::protocol::engine::Metrics) -> u64| {
            metrics.iter().map(f).sum::<u64>()
        };
        let honest_metrics = format!(
            "finalized {} rejected {} bad-signature batches {} unknown-voter batches {} wrong-chain/epoch batches {} equivocations {} invalid proofs {} conflicting proofs {} orphans parked {} expired {} votes dropped (tally table full) {}",
            sum(|m| m.tx_finalized),
            sum(|m| m.tx_rejected),
            sum(|m| m.vote_batches_bad_signature),
            sum(|m| m.vote_batches_unknown_voter),
            sum(|m| m.vote_batches_wrong_chain_or_epoch),
            sum(|m| m.equivocations),
            sum(|m| m.proofs_invalid),
            sum(|m| m.conflicting_proofs),
            sum(|m| m.orphans_parked),
            sum(|m| m.orphans_expired),
            sum(|m| m.votes_dropped_unknown_tx),
        );
        RunReport {
            seed: self.cfg.seed,
            options: self.cfg.options,
            summary: self.cfg.summary(),
            violations,
            trace_hash: self.trace.hash_hex(),
            events: self.trace.events,
            payments: self.checker.payments(),
            payments_final_everywhere: {
                let engines = self.honest_engines();
                self.checker.payments_final_everywhere(&honest, &engines)
            },
            finality_events: self.checker.finality_events,
            conflicting_proofs_detected: self.checker.conflicting_proofs.len(),
            equivocations_detected: self.checker.equivocations_seen,
            payment_evidence: self.payment_evidence,
            double_spend_txs: self.double_spend_txs,
            restarts,
            reannounced,
            proofs_served,
            log_pages_served,
            catchup_proofs_requested,
            catch_up_windows: self.checker.catch_up_windows,
            catch_up_required: self.checker.catch_up_required,
            net: self.net.stats.clone(),
            byz,
            decode_errors: self.decode_errors,
            honest_metrics,
            blocks: self
                .cfg
                .blocks
                .is_some()
                .then(|| self.checker.blocks.figures.clone()),
        }
    }
}

fn describe_event(e: &Event) -> String {
    match e {
        Event::Accepted { txid } => format!("accepted {txid:?}"),
        Event::Finalized { txid, proof, .. } => {
            format!("FINAL {txid:?} ({} votes)", proof.votes.len())
        }
        Event::Rejected { txid, reason, .. } => format!("rejected {txid:?}: {}", reason.describe()),
        Event::Equivocation { voter, txid } => format!("equivocation by {voter:?} on {txid:?}"),
        Event::ConflictingProofs(c) => format!(
            "CONFLICTING PROOFS on {:?}:{}: kept {:?} ({}), competing {:?} ({})",
            c.outpoint.txid,
            c.outpoint.vout,
            c.kept,
            c.kept_weight,
            c.competing,
            c.competing_weight
        ),
    }
}

/// Runs one seed to the end.
pub fn run_seed(seed: u64, options: Options) -> RunReport {
    run_seed_traced(seed, options, None)
}

/// Runs one seed, writing a human-readable trace to `out` if given.
pub fn run_seed_traced(
    seed: u64,
    options: Options,
    out: Option<Box<dyn Write + Send>>,
) -> RunReport {
    let cfg = SimConfig::generate(seed, options);
    let mut w = World::new(cfg, Trace::new(out));
    if w.trace.logging() {
        let s = w.cfg.summary();
        w.trace.line(0, || s);
    }
    w.run();
    w.report()
}
