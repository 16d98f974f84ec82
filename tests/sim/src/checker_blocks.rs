//! The block layer's invariants, checked on the writes of every honest round
//! (committed blocks, own block votes), at every restart and at the end:
//!
//! - `block-fork`: no two different blocks committed at one height at
//!   honest masternodes;
//! - `block-chain`: each honest node's committed blocks form one chain
//!   (height after height, each naming the one before), and a restart never
//!   loses a committed block; with `block-fork` this makes honest chains
//!   prefixes of each other;
//! - `block-certificate`: every committed block's certificate verifies
//!   against the registry with more than 2/3 of the weight, for that block
//!   and height;
//! - `block-contradiction`: no committed block holds a payment no honest
//!   node holds a TimeProof for, one that spends an output a final payment
//!   spends, or one (or a conflicting one) already in an earlier block;
//! - `block-vote-conflict`: no honest node signs two different proposals,
//!   prevotes or precommits for one height and round (its durable records,
//!   so restarts are included);
//! - liveness (Byzantine weight below 1/3): once the network is calm, every
//!   payment final at an honest node is in a committed block within
//!   [`CONFIRM_BOUND`] (`confirm-bound`), and some block is committed in
//!   every calm window of [`STALL_BOUND`] (`block-stall`); at the end every
//!   honest node's chain holds every payment finalized before the final heal
//!   (`not-confirmed`).

use std::collections::{BTreeMap, HashMap, HashSet};

use timecoin_core::blocks::{BlockHash, ChainTip, CommittedBlock, OwnBlockVote, SignedStep};
use timecoin_core::protocol::types::{OutPoint, Txid};

use super::{Checker, KnownIssue, ViolationKind};
use crate::config::{Micros, CHAIN_ID, MS, SEC};

/// A payment final at an honest node is in a committed block this soon,
/// while the network is calm (from [`CALM_LEAD`] before).
pub const CONFIRM_BOUND: Micros = 50 * SEC;
/// While the network is calm (from [`CALM_LEAD`] before) a block is
/// committed at least this often.
pub const STALL_BOUND: Micros = 40 * SEC;
/// How long the network must have been calm before a window counts.
pub const CALM_LEAD: Micros = 5 * SEC;

/// Figures of the block layer in a run, as the checker saw them.
#[derive(Clone, Debug, Default)]
pub struct BlockFigures {
    /// Block evidence records honest nodes kept, checked at the end.
    pub evidence_checked: u64,
    /// Highest height committed at an honest node.
    pub height: u64,
    /// Heights some honest node signed a vote for in a round above 0.
    pub view_changes: u64,
    /// Payments whose confirmation was checked against the bound, and the
    /// longest time from first finality to first confirmation among them.
    pub confirm_checked: u64,
    pub max_confirm: Micros,
    /// Longest time between two commits inside a calm window.
    pub max_calm_gap: Micros,
    pub confirmed: u64,
}

pub struct BlockChecks {
    /// Per node: height -> hash of what it committed.
    chains: Vec<BTreeMap<u64, BlockHash>>,
    /// Height -> (hash, first node, first time) across honest nodes.
    committed: BTreeMap<u64, (BlockHash, usize, Micros)>,
    own: Vec<HashMap<(u64, u32, SignedStep), Option<BlockHash>>>,
    /// Txid -> (height, first commit time).
    confirmed: HashMap<Txid, (u64, Micros)>,
    /// Outpoint -> the block transaction spending it.
    chain_spends: HashMap<OutPoint, Txid>,
    /// Height -> highest round an honest node signed in.
    rounds: BTreeMap<u64, u32>,
    cert_ok: HashSet<BlockHash>,
    /// Restarts of honest nodes: (node, time).
    restarts: Vec<(usize, Micros)>,
    pub figures: BlockFigures,
}

impl BlockChecks {
    pub fn new(n: usize) -> Self {
        BlockChecks {
            chains: vec![BTreeMap::new(); n],
            committed: BTreeMap::new(),
            own: vec![HashMap::new(); n],
            confirmed: HashMap::new(),
            chain_spends: HashMap::new(),
            rounds: BTreeMap::new(),
            cert_ok: HashSet::new(),
            restarts: Vec::new(),
            figures: BlockFigures::default(),
        }
    }

    /// Heights some honest node committed.
    pub fn height(&self) -> u64 {
        self.committed.keys().next_back().copied().unwrap_or(0)
    }
}

impl Checker {
    /// A committed block in an honest node's round (before it is stored).
    pub(crate) fn on_committed_block(&mut self, node: usize, at: Micros, c: &CommittedBlock) {
        let h = c.block.height();
        let hash = c.block.hash();
        if !self.blocks.cert_ok.contains(&hash) {
            let why = if c.cert.block != hash || c.cert.slot.height != h {
                Some("it names another block or height".to_string())
            } else {
                match c.cert.verify(CHAIN_ID, &self.registry) {
                    Ok(w) if 3 * w > 2 * self.registry.total_weight() => None,
                    Ok(w) => Some(format!(
                        "weight {w} of {}, not more than 2/3",
                        self.registry.total_weight()
                    )),
                    Err(e) => Some(e.to_string()),
                }
            };
            match why {
                None => {
                    self.blocks.cert_ok.insert(hash);
                }
                Some(why) => self.violate(
                    ViolationKind::BlockCertificate,
                    at,
                    Some(node),
                    format!("{h} {hash:?}"),
                    None,
                    format!(
                        "node {node} commits block {hash:?} at height {h} with a certificate that fails: {why}"
                    ),
                ),
            }
        }
        let last = self.blocks.chains[node]
            .iter()
            .next_back()
            .map(|(a, b)| (*a, *b));
        let genesis = BlockHash::genesis(CHAIN_ID, self.registry.epoch());
        let (want_h, want_prev) = last.map_or((1, genesis), |(lh, lb)| (lh + 1, lb));
        if h != want_h || c.block.header.prev != want_prev {
            self.violate(
                ViolationKind::BlockChain,
                at,
                Some(node),
                format!("{h}"),
                None,
                format!(
                    "node {node} commits block {hash:?} at height {h} on {:?}; its chain ends at height {} with {want_prev:?}",
                    c.block.header.prev,
                    want_h - 1
                ),
            );
        }
        self.blocks.chains[node].insert(h, hash);
        self.blocks.figures.height = self.blocks.figures.height.max(h);
        match self.blocks.committed.get(&h).copied() {
            Some((other, n2, t2)) if other != hash => {
                self.violate(
                    ViolationKind::BlockFork,
                    at,
                    Some(node),
                    format!("{h}"),
                    None,
                    format!(
                        "node {node} commits {hash:?} at height {h}; node {n2} committed {other:?} there at {} ms",
                        t2 / MS
                    ),
                );
                return;
            }
            Some(_) => return,
            None => {
                self.blocks.committed.insert(h, (hash, node, at));
            }
        }
        // The first commit of this block: its payments, against the
        // TimeProofs honest nodes hold and the blocks before it.
        for tx in &c.block.transactions {
            let txid = tx.txid();
            let mut why = Vec::new();
            if self.first_final(&txid).is_none() {
                why.push("no honest node holds a TimeProof for it".to_string());
            }
            for i in &tx.inputs {
                if let Some(&(f, fnode, _)) = self.final_spend.get(&i.prev) {
                    if f != txid {
                        why.push(format!(
                            "it spends {:?}:{}, which final {f:?} spends (final at node {fnode})",
                            i.prev.txid, i.prev.vout
                        ));
                    }
                }
                match self.blocks.chain_spends.get(&i.prev) {
                    Some(&t) if t != txid => why.push(format!(
                        "it spends {:?}:{}, which {t:?} in an earlier block spends",
                        i.prev.txid, i.prev.vout
                    )),
                    _ => {
                        self.blocks.chain_spends.insert(i.prev, txid);
                    }
                }
            }
            match self.blocks.confirmed.get(&txid) {
                Some(&(h0, _)) if h0 != h => {
                    why.push(format!("it is in the block at height {h0} already"))
                }
                Some(_) => {}
                None => {
                    self.blocks.confirmed.insert(txid, (h, at));
                    self.blocks.figures.confirmed += 1;
                }
            }
            if !why.is_empty() {
                self.violate(
                    ViolationKind::BlockContradiction,
                    at,
                    Some(node),
                    format!("{h} {txid}"),
                    None,
                    format!(
                        "block {hash:?} at height {h} (committed first at node {node}) holds {txid:?}: {}",
                        why.join("; ")
                    ),
                );
            }
        }
    }

    /// A record of something this honest node is about to sign.
    pub(crate) fn on_own_block_vote(&mut self, node: usize, at: Micros, v: &OwnBlockVote) {
        let r = self.blocks.rounds.entry(v.height).or_insert(0);
        if v.round > *r {
            if *r == 0 {
                self.blocks.figures.view_changes += 1;
            }
            *r = v.round;
        }
        let key = (v.height, v.round, v.step);
        match self.blocks.own[node].get(&key) {
            Some(b) if *b != v.block => {
                let b = *b;
                self.violate(
                    ViolationKind::BlockVoteConflict,
                    at,
                    Some(node),
                    format!("{} {} {:?}", v.height, v.round, v.step),
                    None,
                    format!(
                        "node {node} signs {:?} {:?} at height {} round {} after signing {b:?} there",
                        v.step, v.block, v.height, v.round
                    ),
                );
            }
            Some(_) => {}
            None => {
                self.blocks.own[node].insert(key, v.block);
            }
        }
    }

    /// After `Masternode::new` from the store: no committed block lost.
    pub fn on_block_restart(&mut self, node: usize, at: Micros, tip: Option<ChainTip>) {
        self.blocks.restarts.push((node, at));
        let Some((&h, &hash)) = self.blocks.chains[node].iter().next_back() else {
            return;
        };
        let ok = tip.is_some_and(|t| t.height == h && t.hash == hash);
        if !ok {
            self.violate(
                ViolationKind::BlockChain,
                at,
                Some(node),
                format!("restart {h}"),
                None,
                format!(
                    "after restart node {node} has tip {tip:?}; before, it had committed {hash:?} at height {h}"
                ),
            );
        }
    }

    /// Evidence of [`KnownIssue::UnconfirmedLostAtRestart`]: an honest node
    /// that had finalized `txid` restarted before it was in a block.
    fn lost_at_restart(&self, txid: &Txid) -> Option<KnownIssue> {
        let confirmed = self.blocks.confirmed.get(txid).map(|x| x.1);
        self.blocks
            .restarts
            .iter()
            .any(|&(n, t)| {
                self.views[n].finalized.get(txid).is_some_and(|f| *f < t)
                    && confirmed.is_none_or(|c| c > t)
            })
            .then_some(KnownIssue::UnconfirmedLostAtRestart)
    }

    /// The block evidence honest nodes kept (only with Byzantine weight
    /// below 1/3): every record verifies offline and accuses a Byzantine
    /// node (`honest-accused`). Returns how many records were checked.
    pub fn check_block_evidence(
        &mut self,
        at: Micros,
        nodes: &[(usize, Vec<timecoin_core::blocks::BlockEvidence>)],
    ) -> u64 {
        let mut n = 0;
        for (node, records) in nodes {
            for e in records {
                n += 1;
                let offender = e.offender();
                let honest = self
                    .keys
                    .iter()
                    .position(|k| *k == offender)
                    .is_some_and(|v| self.honest[v]);
                if honest || !e.verify(CHAIN_ID, &self.registry) {
                    self.violate(
                        ViolationKind::HonestAccused,
                        at,
                        Some(*node),
                        format!("{offender} {:?}", e.key()),
                        None,
                        format!(
                            "node {node} keeps block evidence against {offender} (honest: {honest}, verifies: {}): {:?}",
                            e.verify(CHAIN_ID, &self.registry),
                            e.key()
                        ),
                    );
                }
            }
        }
        n
    }

    /// Liveness of the block layer at the end of a run (only with Byzantine
    /// weight below 1/3). `calm(a, b)`: every honest node up and connected
    /// over [a, b]. `up`: the honest nodes that are up now.
    pub fn check_blocks_end(
        &mut self,
        end: Micros,
        heal_at: Micros,
        calm: impl Fn(Micros, Micros) -> bool,
        up: &[usize],
    ) {
        let finals = self.finalized_anywhere();
        for (txid, t_f) in &finals {
            let deadline = t_f + CONFIRM_BOUND;
            let conf = self.blocks.confirmed.get(txid).map(|x| x.1);
            if deadline > end || !calm(t_f.saturating_sub(CALM_LEAD), deadline) {
                continue;
            }
            self.blocks.figures.confirm_checked += 1;
            if let Some(c) = conf {
                let d = c.saturating_sub(*t_f);
                self.blocks.figures.max_confirm = self.blocks.figures.max_confirm.max(d);
            }
            if conf.is_none_or(|c| c > deadline) {
                let when = match conf {
                    Some(c) => format!("only at {} ms", c / MS),
                    None => "never".into(),
                };
                let known = self.lost_at_restart(txid);
                self.violate(
                    ViolationKind::ConfirmBound,
                    deadline,
                    None,
                    format!("{txid}"),
                    known,
                    format!(
                        "{txid:?} final at {} ms (network calm) is confirmed {when}; bound {} ms",
                        t_f / MS,
                        CONFIRM_BOUND / MS
                    ),
                );
            }
        }
        let times: Vec<Micros> = {
            let mut t: Vec<Micros> = self.blocks.committed.values().map(|x| x.2).collect();
            t.sort_unstable();
            t
        };
        for w in times.windows(2) {
            if calm(w[0].saturating_sub(CALM_LEAD), w[1]) {
                self.blocks.figures.max_calm_gap =
                    self.blocks.figures.max_calm_gap.max(w[1] - w[0]);
            }
        }
        let mut t = CALM_LEAD;
        while t + STALL_BOUND <= end {
            if calm(t - CALM_LEAD, t + STALL_BOUND) {
                let i = times.partition_point(|&x| x <= t);
                if times.get(i).is_none_or(|&x| x > t + STALL_BOUND) {
                    let last = i.checked_sub(1).map(|k| times[k] / MS);
                    self.violate(
                        ViolationKind::BlockStall,
                        t + STALL_BOUND,
                        None,
                        "stall".into(),
                        None,
                        format!(
                            "no block committed from {} ms to {} ms while the network was calm (last commit before at {last:?} ms; height {} at the end); bound {} ms",
                            t / MS,
                            (t + STALL_BOUND) / MS,
                            self.blocks.height(),
                            STALL_BOUND / MS
                        ),
                    );
                    break;
                }
            }
            t += SEC;
        }
        for &i in up {
            let chain = &self.blocks.chains[i];
            let missing: Vec<(Txid, u64)> = finals
                .iter()
                .filter(|(_, t)| **t < heal_at)
                .filter(|(txid, _)| {
                    !self
                        .blocks
                        .confirmed
                        .get(txid)
                        .is_some_and(|(h, _)| chain.contains_key(h))
                })
                .map(|(t, _)| (*t, self.blocks.confirmed.get(t).map_or(0, |x| x.0)))
                .collect();
            if let Some((first, h)) = missing.first() {
                let tip = chain.keys().next_back().copied().unwrap_or(0);
                let known = missing
                    .iter()
                    .all(|(t, _)| self.lost_at_restart(t).is_some())
                    .then_some(KnownIssue::UnconfirmedLostAtRestart);
                self.violate(
                    ViolationKind::NotConfirmed,
                    end,
                    Some(i),
                    format!("{i}"),
                    known,
                    format!(
                        "at the end node {i} (tip {tip}, highest committed {}) lacks {} of the {} payments final before the heal in its chain (first {first:?}, {})",
                        self.blocks.height(),
                        missing.len(),
                        finals.len(),
                        if *h == 0 { "in no block".to_string() } else { format!("at height {h}") }
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The block invariants can fail: each is fed the fact it forbids.

    use timecoin_core::blocks::{Block, BlockVote, CommitCertificate, Slot, VoteKind};
    use timecoin_core::protocol::registry::{Masternode, Registry, Tier};
    use timecoin_core::protocol::types::{Address, PublicKey, Transaction, TxOutput};
    use timecoin_core::testkit::key_from_seed;

    use super::*;

    struct Fixture {
        keys: Vec<ed25519_dalek::SigningKey>,
        registry: Registry,
        checker: Checker,
    }

    fn fixture() -> Fixture {
        let keys: Vec<_> = (0..4).map(|i| key_from_seed("mn", i)).collect();
        let registry = Registry::new(
            1,
            keys.iter()
                .enumerate()
                .map(|(i, k)| Masternode {
                    key: PublicKey::from_signing(k),
                    address: format!("127.0.0.1:{}", 24100 + i),
                    tier: Tier::Bronze,
                })
                .collect(),
        )
        .unwrap();
        let pks = keys.iter().map(PublicKey::from_signing).collect();
        let checker = Checker::new(registry.clone(), vec![true; 4], pks, true);
        Fixture {
            keys,
            registry,
            checker,
        }
    }

    impl Fixture {
        /// A block on `prev` at `height`, certified by the first `signers`.
        fn committed(
            &self,
            height: u64,
            prev: BlockHash,
            time: u64,
            txs: Vec<Transaction>,
            signers: usize,
        ) -> CommittedBlock {
            let block = Block::new(CHAIN_ID, 1, height, prev, time, PublicKey([0; 32]), txs);
            let slot = Slot {
                chain_id: CHAIN_ID,
                epoch: 1,
                height,
                round: 0,
            };
            let votes: Vec<BlockVote> = self.keys[..signers]
                .iter()
                .map(|k| BlockVote::sign(slot, VoteKind::Precommit, Some(block.hash()), k))
                .collect();
            let refs: Vec<&BlockVote> = votes.iter().collect();
            let cert =
                CommitCertificate::from_precommits(slot, block.hash(), &refs, &self.registry);
            CommittedBlock { block, cert }
        }
        fn kinds(&self) -> Vec<ViolationKind> {
            self.checker.violations.iter().map(|v| v.kind).collect()
        }
    }

    fn payment() -> Transaction {
        Transaction {
            version: 1,
            chain_id: CHAIN_ID,
            inputs: vec![],
            outputs: vec![TxOutput {
                amount: 5,
                address: Address([7; 20]),
            }],
            lock_time: 0,
        }
    }

    #[test]
    fn a_good_chain_passes() {
        let mut f = fixture();
        let g = BlockHash::genesis(CHAIN_ID, 1);
        let b1 = f.committed(1, g, 1, vec![], 3);
        let b2 = f.committed(2, b1.block.hash(), 2, vec![], 4);
        for node in 0..4 {
            f.checker.on_committed_block(node, 10, &b1);
            f.checker.on_committed_block(node, 20, &b2);
        }
        assert!(f.kinds().is_empty(), "{:?}", f.checker.violations);
    }

    #[test]
    fn a_fork_a_gap_a_light_certificate_and_an_unproven_payment_are_caught() {
        let mut f = fixture();
        let g = BlockHash::genesis(CHAIN_ID, 1);
        let b1 = f.committed(1, g, 1, vec![], 3);
        let other = f.committed(1, g, 2, vec![], 3);
        f.checker.on_committed_block(0, 10, &b1);
        f.checker.on_committed_block(1, 11, &other);
        assert!(f.kinds().contains(&ViolationKind::BlockFork));
        // Height 3 on height 1: not a chain.
        let b3 = f.committed(3, b1.block.hash(), 3, vec![], 3);
        f.checker.on_committed_block(0, 12, &b3);
        assert!(f.kinds().contains(&ViolationKind::BlockChain));
        // Two precommits of four: below the quorum.
        let light = f.committed(1, g, 4, vec![], 2);
        f.checker.on_committed_block(2, 13, &light);
        assert!(f.kinds().contains(&ViolationKind::BlockCertificate));
        // A payment no honest node finalized.
        let mut g2 = fixture();
        let unproven = g2.committed(1, g, 1, vec![payment()], 3);
        g2.checker.on_committed_block(0, 10, &unproven);
        assert_eq!(g2.kinds(), vec![ViolationKind::BlockContradiction]);
        // A restart that lost the tip.
        g2.checker.on_block_restart(0, 20, None);
        assert!(g2.kinds().contains(&ViolationKind::BlockChain));
    }

    #[test]
    fn a_second_vote_for_one_slot_is_caught() {
        let mut f = fixture();
        let v = |block| OwnBlockVote {
            height: 4,
            round: 1,
            step: SignedStep::Precommit,
            block,
        };
        f.checker.on_own_block_vote(2, 10, &v(None));
        f.checker.on_own_block_vote(2, 11, &v(None));
        assert!(f.kinds().is_empty());
        f.checker
            .on_own_block_vote(2, 12, &v(Some(BlockHash([1; 32]))));
        assert_eq!(f.kinds(), vec![ViolationKind::BlockVoteConflict]);
    }

    #[test]
    fn a_stall_is_caught_when_calm() {
        let mut f = fixture();
        let g = BlockHash::genesis(CHAIN_ID, 1);
        let b1 = f.committed(1, g, 1, vec![], 3);
        f.checker.on_committed_block(0, SEC, &b1);
        f.checker
            .check_blocks_end(100 * SEC, 60 * SEC, |_, _| true, &[0]);
        assert!(f.kinds().contains(&ViolationKind::BlockStall));
        // Not calm: nothing is promised.
        let mut f2 = fixture();
        f2.checker.on_committed_block(0, SEC, &b1);
        f2.checker
            .check_blocks_end(100 * SEC, 60 * SEC, |_, _| false, &[0]);
        assert!(!f2.kinds().contains(&ViolationKind::BlockStall));
    }
}
