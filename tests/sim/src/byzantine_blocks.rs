//! A Byzantine masternode in the block consensus. It follows the chain the
//! way any peer can (proposals and votes it receives, a quorum of
//! precommits for a block it holds, `CommittedBlock` answers to its
//! `BlockRequest`s) and crafts block messages signed with its registered
//! key (`Proposal::sign`, `BlockVote::sign`): nothing in the core changes.
//!
//! Behaviours ([`ByzBlocks`]): withholding (the default: as a leader it
//! proposes nothing and it never votes), a proposal to only some peers,
//! equivocating proposals (two signed blocks for one slot, each to its half
//! of the peers, with prevotes and precommits for each to its half), blocks
//! holding a payment that is not final or that conflicts with a final one,
//! double votes (a block to one half, nil to the other), and plain
//! following (voting for the first proposal of each round unchecked).

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::SigningKey;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use timecoin_core::blocks::leader::leader;
use timecoin_core::blocks::{Block, BlockHash, BlockVote, Proposal, Slot, VoteKind};
use timecoin_core::protocol::message::Message;
use timecoin_core::protocol::registry::Registry;
use timecoin_core::protocol::types::{OutPoint, PublicKey, Transaction, Txid};

use crate::config::{ByzBlocks, Micros, CHAIN_ID, MS, SEC};
use crate::net::{Dest, Frame};
use crate::node::{frame, EPOCH_MS};

/// Block messages a Byzantine node sent, by kind.
#[derive(Clone, Debug, Default)]
pub struct ByzBlockStats {
    pub proposals: u64,
    pub equivocations: u64,
    pub partial_proposals: u64,
    pub bad_bodies: u64,
    pub votes: u64,
    pub double_votes: u64,
    pub withheld: u64,
}

impl ByzBlockStats {
    pub fn add(&mut self, o: &ByzBlockStats) {
        self.proposals += o.proposals;
        self.equivocations += o.equivocations;
        self.partial_proposals += o.partial_proposals;
        self.bad_bodies += o.bad_bodies;
        self.votes += o.votes;
        self.double_votes += o.double_votes;
        self.withheld += o.withheld;
    }
}

#[derive(Clone, Copy)]
struct Tip {
    height: u64,
    hash: BlockHash,
    time_ms: u64,
}

pub struct ByzChain {
    idx: usize,
    key: SigningKey,
    me: PublicKey,
    registry: Registry,
    keys: Vec<PublicKey>,
    pub behaviour: ByzBlocks,
    tip: Tip,
    /// Blocks seen in proposals at heights above the tip.
    blocks: BTreeMap<BlockHash, Block>,
    /// Precommit weight per (height, round, block), with the voters counted.
    precommits: BTreeMap<(u64, u32, BlockHash), (u64, BTreeSet<PublicKey>)>,
    /// Highest round seen per height above the tip.
    rounds: BTreeMap<u64, u32>,
    /// Slots it already proposed or voted in.
    proposed: BTreeSet<(u64, u32)>,
    voted: BTreeSet<(u64, u32)>,
    /// Highest height any peer is at (from its messages).
    peer_height: u64,
    last_request: Micros,
    pub stats: ByzBlockStats,
}

impl ByzChain {
    pub fn new(
        idx: usize,
        key: SigningKey,
        registry: Registry,
        keys: Vec<PublicKey>,
        behaviour: ByzBlocks,
    ) -> Self {
        let me = PublicKey::from_signing(&key);
        let genesis = BlockHash::genesis(CHAIN_ID, registry.epoch());
        ByzChain {
            idx,
            key,
            me,
            registry,
            keys,
            behaviour,
            tip: Tip {
                height: 0,
                hash: genesis,
                time_ms: 0,
            },
            blocks: BTreeMap::new(),
            precommits: BTreeMap::new(),
            rounds: BTreeMap::new(),
            proposed: BTreeSet::new(),
            voted: BTreeSet::new(),
            peer_height: 0,
            last_request: 0,
            stats: ByzBlockStats::default(),
        }
    }

    fn slot(&self, height: u64, round: u32) -> Slot {
        Slot {
            chain_id: CHAIN_ID,
            epoch: self.registry.epoch(),
            height,
            round,
        }
    }

    fn peers(&self) -> Vec<usize> {
        (0..self.keys.len()).filter(|&i| i != self.idx).collect()
    }

    /// The peers in a random order, split in two halves.
    fn halves(&self, rng: &mut ChaCha8Rng) -> (Vec<usize>, Vec<usize>) {
        let mut p = self.peers();
        p.shuffle(rng);
        let b = p.split_off(p.len() / 2);
        (p, b)
    }

    fn seen_round(&mut self, height: u64, round: u32) {
        self.peer_height = self.peer_height.max(height);
        if height > self.tip.height {
            let r = self.rounds.entry(height).or_insert(0);
            *r = (*r).max(round);
        }
    }

    fn advance(&mut self, height: u64, hash: BlockHash, time_ms: u64) {
        if height != self.tip.height + 1 {
            return;
        }
        self.tip = Tip {
            height,
            hash,
            time_ms,
        };
        let h = self.tip.height;
        self.blocks.retain(|_, b| b.height() > h);
        self.precommits.retain(|k, _| k.0 > h);
        self.rounds.retain(|k, _| *k > h);
        self.proposed.retain(|k| k.0 > h);
        self.voted.retain(|k| k.0 > h);
    }

    /// A block message from a peer: follow the chain, and vote at once if it
    /// behaves that way.
    pub fn on_message(&mut self, rng: &mut ChaCha8Rng, msg: &Message) -> Vec<(Dest, Frame)> {
        let mut out = Vec::new();
        match msg {
            Message::BlockProposal(p) => {
                let (h, r) = (p.slot.height, p.slot.round);
                self.seen_round(h, r);
                if h <= self.tip.height || p.slot.chain_id != CHAIN_ID {
                    return out;
                }
                let hash = p.block.hash();
                if self.blocks.len() < 256 {
                    self.blocks.entry(hash).or_insert_with(|| p.block.clone());
                }
                if h == self.tip.height + 1 && self.voted.insert((h, r)) {
                    self.vote_on(rng, h, r, hash, &mut out);
                }
            }
            Message::BlockVote(v) => {
                self.seen_round(v.slot.height, v.slot.round);
                if v.kind == VoteKind::Precommit && v.slot.height == self.tip.height + 1 {
                    if let (Some(b), Some(w)) = (v.block, self.registry.weight_of(&v.voter)) {
                        let e = self
                            .precommits
                            .entry((v.slot.height, v.slot.round, b))
                            .or_default();
                        if e.1.insert(v.voter) {
                            e.0 += w;
                        }
                        if e.0 >= self.registry.quorum() {
                            if let Some(t) = self.blocks.get(&b).map(|x| x.header.time_ms) {
                                self.advance(v.slot.height, b, t);
                            }
                        }
                    }
                }
            }
            Message::CommittedBlock(c) => {
                self.peer_height = self.peer_height.max(c.block.height());
                if c.block.header.prev == self.tip.hash {
                    self.advance(c.block.height(), c.block.hash(), c.block.header.time_ms);
                }
            }
            _ => {}
        }
        out
    }

    /// Its votes on a proposal it received (none when withholding).
    fn vote_on(
        &mut self,
        rng: &mut ChaCha8Rng,
        h: u64,
        r: u32,
        hash: BlockHash,
        out: &mut Vec<(Dest, Frame)>,
    ) {
        let b = self.behaviour.clone();
        if b.double_vote {
            let (a, z) = self.halves(rng);
            self.stats.double_votes += 1;
            self.votes_to(h, r, Some(hash), &a, out);
            self.votes_to(h, r, None, &z, out);
        } else if b.follow {
            let all = self.peers();
            self.votes_to(h, r, Some(hash), &all, out);
        }
    }

    /// A prevote and a precommit for `block` at (h, r), to `to`.
    fn votes_to(
        &mut self,
        h: u64,
        r: u32,
        block: Option<BlockHash>,
        to: &[usize],
        out: &mut Vec<(Dest, Frame)>,
    ) {
        let slot = self.slot(h, r);
        for kind in [VoteKind::Prevote, VoteKind::Precommit] {
            let v = BlockVote::sign(slot, kind, block, &self.key);
            self.stats.votes += 1;
            let f = frame(&Message::BlockVote(v));
            for &p in to {
                out.push((Dest::Peer(p), f.clone()));
            }
        }
    }

    /// Periodic: ask for the chain when behind, and act as the leader of
    /// the rounds the honest nodes are in.
    pub fn step(
        &mut self,
        rng: &mut ChaCha8Rng,
        now: Micros,
        seen: &BTreeMap<Txid, Transaction>,
        finals: &BTreeSet<Txid>,
        spends: &BTreeMap<OutPoint, Vec<Txid>>,
    ) -> Vec<(Dest, Frame)> {
        let mut out = Vec::new();
        if self.peer_height > self.tip.height + 1 && now >= self.last_request + SEC {
            self.last_request = now;
            let p = *self.peers().choose(rng).expect("peers");
            out.push((
                Dest::Peer(p),
                frame(&Message::BlockRequest {
                    from: self.tip.height + 1,
                }),
            ));
        }
        let h = self.tip.height + 1;
        let r0 = self.rounds.get(&h).copied().unwrap_or(0);
        for r in [r0, r0 + 1] {
            if leader(CHAIN_ID, &self.registry, h, r) != self.me || self.proposed.contains(&(h, r))
            {
                continue;
            }
            self.proposed.insert((h, r));
            self.lead(rng, now, h, r, seen, finals, spends, &mut out);
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn lead(
        &mut self,
        rng: &mut ChaCha8Rng,
        now: Micros,
        h: u64,
        r: u32,
        seen: &BTreeMap<Txid, Transaction>,
        finals: &BTreeSet<Txid>,
        spends: &BTreeMap<OutPoint, Vec<Txid>>,
        out: &mut Vec<(Dest, Frame)>,
    ) {
        let b = self.behaviour.clone();
        if !(b.equivocate || b.partial || b.bad_body || b.follow || b.double_vote) {
            self.stats.withheld += 1;
            return;
        }
        let time_ms = (EPOCH_MS + now / MS).max(self.tip.time_ms + 1);
        let mut body = Vec::new();
        if b.bad_body && rng.gen_bool(0.7) {
            body = bad_transactions(rng, seen, finals, spends);
            if !body.is_empty() {
                self.stats.bad_bodies += 1;
            }
        }
        let block = Block::new(
            CHAIN_ID,
            self.registry.epoch(),
            h,
            self.tip.hash,
            time_ms,
            self.me,
            body,
        );
        let slot = self.slot(h, r);
        let first = Proposal::sign(slot, None, block.clone(), &self.key);
        self.stats.proposals += 1;
        self.voted.insert((h, r));
        if b.equivocate {
            // Another block for the same slot: one millisecond later.
            let mut other = block.clone();
            other.header.time_ms += 1;
            let second = Proposal::sign(slot, None, other.clone(), &self.key);
            self.stats.equivocations += 1;
            let (a, z) = self.halves(rng);
            let (fa, fz) = (
                frame(&Message::BlockProposal(Box::new(first))),
                frame(&Message::BlockProposal(Box::new(second))),
            );
            for &p in &a {
                out.push((Dest::Peer(p), fa.clone()));
            }
            for &p in &z {
                out.push((Dest::Peer(p), fz.clone()));
            }
            self.votes_to(h, r, Some(block.hash()), &a, out);
            self.votes_to(h, r, Some(other.hash()), &z, out);
            self.blocks.insert(block.hash(), block);
            self.blocks.insert(other.hash(), other);
            return;
        }
        let mut to = self.peers();
        if b.partial {
            to.shuffle(rng);
            let k = rng.gen_range(1..to.len().max(2));
            to.truncate(k);
            self.stats.partial_proposals += 1;
        }
        let f = frame(&Message::BlockProposal(Box::new(first)));
        for &p in &to {
            out.push((Dest::Peer(p), f.clone()));
        }
        let hash = block.hash();
        self.blocks.insert(hash, block);
        if b.double_vote {
            let (a, z) = self.halves(rng);
            self.stats.double_votes += 1;
            self.votes_to(h, r, Some(hash), &a, out);
            self.votes_to(h, r, None, &z, out);
        } else {
            self.votes_to(h, r, Some(hash), &to, out);
        }
    }
}

/// Payments an honest node must not vote for in a block: both sides of a
/// double spend (at most one can be final), else one that conflicts with a
/// payment it saw final, else one it saw no proof for.
fn bad_transactions(
    rng: &mut ChaCha8Rng,
    seen: &BTreeMap<Txid, Transaction>,
    finals: &BTreeSet<Txid>,
    spends: &BTreeMap<OutPoint, Vec<Txid>>,
) -> Vec<Transaction> {
    let get = |t: &Txid| seen.get(t).cloned();
    let pairs: Vec<&Vec<Txid>> = spends.values().filter(|s| s.len() > 1).collect();
    if let Some(s) = pairs.choose(rng) {
        return s.iter().take(2).filter_map(get).collect();
    }
    let pending: Vec<Txid> = seen
        .keys()
        .filter(|t| !finals.contains(*t))
        .copied()
        .collect();
    pending.choose(rng).and_then(get).into_iter().collect()
}
