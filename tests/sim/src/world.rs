//! The event loop: one virtual clock, one queue of timed events, every actor.
//! Events at the same instant run in the order they were scheduled. Each
//! honest round is checked before its writes are applied, and its writes are
//! applied before its messages leave.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::Write;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use timecoin::protocol::engine::{Engine, EngineConfig, Event, Output};
use timecoin::protocol::message::Message;
use timecoin::protocol::registry::{Masternode, Registry};
use timecoin::protocol::types::TxOutput;
use timecoin::protocol::types::{Address, PublicKey, Transaction, Txid, COIN};
use timecoin::protocol::utxo::{UtxoEntry, UtxoState};
use timecoin::storage::Genesis;
use timecoin::testkit::{address_of, genesis_outpoint, key_from_seed};

use crate::byzantine::{ByzNode, ByzStats};
use crate::checker::{Checker, Payment, Violation};
use crate::config::{Micros, Options, Planted, SimConfig, CHAIN_ID, MS, SEC};
use crate::net::{Arrival, Frame, NetEvent, NetStats, Network};
use crate::node::{Dest, HonestNode};
use crate::rng_for;
use crate::trace::{message_digest, output_digest, Trace};
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
    Repair(usize),
    ByzStep(usize),
    Crash { node: usize, after_write: bool },
    CrashFallback(usize),
    Restart(usize),
    PartitionStart(usize),
    PartitionEnd(usize),
    HealAll,
    Submit { node: usize, tx: Transaction },
    Note { wallet: WalletRef, tx: Transaction },
    WalletStep(usize),
    WalletRetry(usize, Txid),
    SpenderStep(usize),
    CheckAgreement,
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
    pub double_spend_txs: usize,
    pub restarts: u32,
    pub net: NetStats,
    pub byz: ByzStats,
    pub decode_errors: u64,
    pub honest_metrics: String,
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

fn engine_config(cfg: &SimConfig) -> EngineConfig {
    let mut e = EngineConfig::new(CHAIN_ID);
    e.lock_timeout_ms = cfg.engine.lock_timeout_ms;
    e.orphan_timeout_ms = cfg.engine.orphan_timeout_ms;
    e.decided_retention_ms = cfg.engine.decided_retention_ms;
    match cfg.options.planted {
        Planted::None => {}
        Planted::Quorum => e.planted.quorum = Some(cfg.total_weight() * 67 / 100),
        Planted::ReleaseLock => e.planted.release_voted_locks_on_timeout = true,
    }
    e
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
        let ecfg = engine_config(&cfg);
        let actors = (0..n)
            .map(|i| match &cfg.byzantine[i] {
                None => Actor::Honest(Box::new(HonestNode::new(
                    i,
                    mn_keys[i].clone(),
                    ecfg.clone(),
                    &genesis,
                    cfg.skews[i],
                ))),
                Some(b) => Actor::Byz(Box::new(ByzNode::new(
                    i,
                    mn_keys[i].clone(),
                    b.clone(),
                    pubkeys.clone(),
                    genesis.registry.epoch(),
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
        let checker = Checker::new(genesis.registry.clone(), honest, pubkeys);
        World {
            net: Network::new(cfg.net.clone(), rng_for(seed, "net")),
            now: 0,
            queue: BinaryHeap::new(),
            seq: 0,
            actors,
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

    fn incarnation(&self, i: usize) -> Option<u32> {
        match &self.actors[i] {
            Actor::Honest(h) => h.is_up().then_some(h.incarnation),
            Actor::Byz(_) => Some(0),
        }
    }

    fn schedule_start(&mut self) {
        let n = self.cfg.n();
        for i in 0..n {
            match self.actors[i] {
                Actor::Honest(_) => {
                    let t = self.rng_misc.gen_range(0..self.cfg.engine.tick_every);
                    self.at(t, Ev::Tick(i));
                    let t = self.rng_misc.gen_range(0..self.cfg.engine.repair_every);
                    self.at(t, Ev::Repair(i));
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
                },
            );
            if c.after_write {
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
            Ev::Net(NetEvent::Arrive(id)) => {
                let mut follow = Vec::new();
                let up: Vec<bool> = (0..self.cfg.n()).map(|i| self.is_up(i)).collect();
                let arrival = self.net.arrive(now, id, |i| up[i], &mut follow);
                for (t, e) in follow {
                    self.at(t, Ev::Net(e));
                }
                if let Arrival::Deliver { from, to, frame } = arrival {
                    self.deliver(from, to, frame);
                }
            }
            Ev::Net(NetEvent::Retry(id)) => {
                let inc: Vec<Option<u32>> =
                    (0..self.cfg.n()).map(|i| self.incarnation(i)).collect();
                if let Some((t, e)) = self.net.retry(now, id, |i| inc[i]) {
                    self.at(t, Ev::Net(e));
                }
            }
            Ev::Net(NetEvent::Duplicate { from, to, frame }) => {
                if self.net.duplicate_deliverable(from, to) && self.is_up(to) {
                    self.deliver(from, to, frame);
                }
            }
            Ev::Tick(i) => {
                if let Actor::Honest(h) = &mut self.actors[i] {
                    if h.is_up() {
                        h.tick(now);
                        self.trace.record(now, 20, i, &[]);
                        self.flush(i);
                    }
                }
                let every = self.cfg.engine.tick_every;
                self.at(now + every, Ev::Tick(i));
            }
            Ev::Repair(i) => {
                if let Actor::Honest(h) = &mut self.actors[i] {
                    if h.is_up() {
                        let sends = h.repair(now);
                        self.send_all(i, sends);
                    }
                }
                let every = self.cfg.engine.repair_every;
                self.at(now + every, Ev::Repair(i));
            }
            Ev::ByzStep(i) => {
                if let Actor::Byz(b) = &mut self.actors[i] {
                    let sends = b.step(&mut self.rng_byz);
                    self.send_all(i, sends);
                }
                let dt = self.rng_misc.gen_range(50 * MS..=150 * MS);
                self.at(now + dt, Ev::ByzStep(i));
            }
            Ev::Crash { node, after_write } => {
                if let Actor::Honest(h) = &mut self.actors[node] {
                    if h.is_up() {
                        if after_write {
                            h.crash_after_write = true;
                        } else {
                            self.crash(node, "crash");
                        }
                    }
                }
            }
            Ev::CrashFallback(node) => {
                if let Actor::Honest(h) = &self.actors[node] {
                    if h.is_up() && h.crash_after_write {
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
            }
            Ev::PartitionEnd(k) => {
                self.trace.record(now, 31, k, &[]);
                self.trace.line(now, || "partition healed".into());
                self.net.set_partition(None);
            }
            Ev::HealAll => {
                self.net.set_partition(None);
                for i in 0..self.cfg.n() {
                    self.restart(i);
                }
            }
            Ev::Submit { node, tx } => {
                let txid = tx.txid();
                self.trace.record(now, 40, node, &txid.0);
                if !self.is_up(node) {
                    return;
                }
                let msg = Message::SubmitTransaction(tx);
                match &mut self.actors[node] {
                    Actor::Honest(h) => {
                        self.checker.on_submitted(&txid, now);
                        let sends = h.input(now, None, msg);
                        self.flush(node);
                        self.send_all(node, sends);
                    }
                    Actor::Byz(b) => {
                        let f: Frame = msg.to_bytes().into();
                        let sends = b.on_message(&mut self.rng_byz, &f, msg);
                        self.send_all(node, sends);
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
                self.at(now + 10 * SEC, Ev::CheckAgreement);
            }
        }
    }

    fn check_agreement(&mut self) {
        let engines: Vec<(usize, &Engine)> = self
            .actors
            .iter()
            .enumerate()
            .filter_map(|(i, a)| match a {
                Actor::Honest(h) => h.engine.as_ref().map(|e| (i, e)),
                Actor::Byz(_) => None,
            })
            .collect();
        self.checker.check_agreement(self.now, &engines);
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
            self.trace.record(self.now, 50, node, &[]);
            let why = why.to_string();
            self.trace.line(self.now, || format!("node {node} {why}"));
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
        let sends = h.restart(now);
        self.checker
            .on_restart(node, now, h.engine.as_ref().expect("just started"));
        self.trace.record(now, 51, node, &[]);
        self.trace
            .line(now, || format!("node {node} restarts from its store"));
        self.send_all(node, sends);
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
            self.trace.line(now, || {
                format!(
                    "{from} -> {to} {what} {}",
                    hex::encode(&digest[..digest.len().min(9)])
                )
            });
        }
        match &mut self.actors[to] {
            Actor::Honest(h) => {
                let sends = h.input(now, Some(from), msg);
                self.flush(to);
                self.send_all(to, sends);
            }
            Actor::Byz(b) => {
                let sends = b.on_message(&mut self.rng_byz, &frame, msg);
                self.send_all(to, sends);
            }
        }
    }

    /// Ends an honest node's round: check, write durably, maybe crash, send.
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
        h.commit(now, &round);
        if let Some(e) = h.engine.as_ref() {
            self.checker.after_round(i, now, &round, e);
        }
        let crash_now = h.crash_after_write && !round.writes.is_empty();
        let mut keyed: Vec<(Vec<u8>, &Output)> = round
            .outputs
            .iter()
            .map(|o| (output_digest(o), o))
            .collect();
        // The engine's output order may follow its hash maps; ours must not.
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        for (d, o) in &keyed {
            self.trace.record(now, 70, i, d);
            if self.trace.logging() {
                if let Output::Event(e) = o {
                    let s = describe_event(e);
                    self.trace.line(now, || format!("node {i}: {s}"));
                }
            }
        }
        if crash_now {
            self.crash(i, "crashes after its durable write, before sending");
            return;
        }
        let outputs: Vec<Output> = keyed.into_iter().map(|(_, o)| o.clone()).collect();
        let sends = HonestNode::route(&outputs);
        self.send_all(i, sends);
        for o in outputs {
            if let Output::Event(Event::Finalized { txid, tx, .. }) = o {
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

    fn send_all(&mut self, from: usize, sends: Vec<(Dest, Frame)>) {
        let n = self.cfg.n();
        let inc = self.incarnation(from).unwrap_or(0);
        for (dest, frame) in sends {
            let targets: Vec<usize> = match dest {
                Dest::AllPeers => (0..n).filter(|&j| j != from).collect(),
                Dest::Peer(j) => vec![j],
            };
            for to in targets {
                let (t, e) = self.net.send(self.now, from, to, frame.clone(), inc);
                self.at(t, Ev::Net(e));
            }
        }
    }

    fn finish(&mut self) {
        let now = self.now;
        self.check_agreement();
        let engines: Vec<(usize, &Engine)> = self
            .actors
            .iter()
            .enumerate()
            .filter_map(|(i, a)| match a {
                Actor::Honest(h) => h.engine.as_ref().map(|e| (i, e)),
                Actor::Byz(_) => None,
            })
            .collect();
        let cfg = &self.cfg;
        // Liveness is promised only while Byzantine weight is below 1/3.
        if 3 * cfg.byzantine_weight() >= cfg.total_weight() {
            return;
        }
        self.checker.check_liveness_end(now, &engines);
        self.checker.check_liveness_bound(
            cfg.liveness_bound,
            5 * SEC,
            |a, b| cfg.calm_between(a, b),
            cfg.end_at,
        );
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
                }
                Actor::Honest(h) => {
                    restarts += h.restarts;
                    metrics.push(h.metrics_total());
                }
            }
        }
        let sum =
            |f: fn(&timecoin::protocol::engine::Metrics) -> u64| metrics.iter().map(f).sum::<u64>();
        let honest_metrics = format!(
            "finalized {} rejected {} bad-signature batches {} unknown-voter batches {} wrong-chain/epoch batches {} equivocations {} invalid proofs {} conflicting proofs {} orphans parked {} expired {}",
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
                let engines: Vec<(usize, &Engine)> = self
                    .actors
                    .iter()
                    .enumerate()
                    .filter_map(|(i, a)| match a {
                        Actor::Honest(h) => h.engine.as_ref().map(|e| (i, e)),
                        Actor::Byz(_) => None,
                    })
                    .collect();
                self.checker.payments_final_everywhere(&honest, &engines)
            },
            finality_events: self.checker.finality_events,
            conflicting_proofs_detected: self.checker.conflicting_proofs.len(),
            equivocations_detected: self.checker.equivocations_seen,
            double_spend_txs: self.double_spend_txs,
            restarts,
            net: self.net.stats.clone(),
            byz,
            decode_errors: self.decode_errors,
            honest_metrics,
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
