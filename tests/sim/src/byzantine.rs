//! Byzantine masternodes: registered keys driven by the simulator instead of
//! the engine. They see what any peer sees and sign [`VoteBatch`]es
//! directly: approvals for both sides of a conflict, approve to some peers
//! and reject to others, batches claiming another voter, votes from keys that
//! are not registered, old batches and proofs replayed late, proofs that are
//! too light, floods of votes for unknown transactions (now and then, or at
//! full rate in bursts) and malformed frames, transport messages the state
//! machine must ignore (forged fast-path stream announcements), or nothing
//! at all.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::SigningKey;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use timecoin_core::protocol::message::Message;
use timecoin_core::protocol::timeproof::TimeProof;
use timecoin_core::protocol::types::{OutPoint, PublicKey, Transaction, Txid};
use timecoin_core::protocol::validation::RejectCode;
use timecoin_core::protocol::vote::{Decision, VoteBatch, VoteItem};

use timecoin_core::protocol::registry::Registry;

use crate::byzantine_blocks::ByzChain;
use crate::config::{ByzBehaviour, Micros, CHAIN_ID, SEC};
use crate::net::{Dest, Frame};
use crate::node::frame;

const KEEP: usize = 256;

#[derive(Clone, Debug, Default)]
pub struct ByzStats {
    pub batches_signed: u64,
    pub forged: u64,
    pub unregistered: u64,
    pub replayed: u64,
    pub flood_items: u64,
    pub garbage_frames: u64,
    pub bad_proofs: u64,
    pub proofs_pushed: u64,
    pub relays: u64,
    pub malleated: u64,
    /// Batches sent by full-rate floods, and their items.
    pub flood_batches: u64,
    pub junk_transport: u64,
    /// Vote batches signed with a small-order component.
    pub torsion: u64,
    pub blocks: crate::byzantine_blocks::ByzBlockStats,
}

pub struct ByzNode {
    pub idx: usize,
    key: SigningKey,
    outsider: SigningKey,
    pub behaviour: ByzBehaviour,
    n: usize,
    keys: Vec<PublicKey>,
    epoch: u64,
    seen: BTreeMap<Txid, Transaction>,
    order: Vec<Txid>,
    spends: BTreeMap<OutPoint, Vec<Txid>>,
    unvoted: Vec<Txid>,
    captured_votes: Vec<Frame>,
    captured_proofs: Vec<Frame>,
    captured_txs: Vec<Frame>,
    proofs_requested: BTreeSet<Txid>,
    proofs_pushed: BTreeSet<[u8; 32]>,
    /// Full-rate flood: the current burst ends at `.0`, the next starts at `.1`.
    burst: (Micros, Micros),
    /// Payments it saw a TimeProof for.
    finals: BTreeSet<Txid>,
    /// Its part in the block consensus, when the run has blocks.
    pub chain: Option<ByzChain>,
    pub stats: ByzStats,
}

impl ByzNode {
    pub fn new(
        idx: usize,
        key: SigningKey,
        behaviour: ByzBehaviour,
        keys: Vec<PublicKey>,
        registry: &Registry,
        blocks: bool,
    ) -> Self {
        let epoch = registry.epoch();
        let chain = blocks.then(|| {
            ByzChain::new(
                idx,
                key.clone(),
                registry.clone(),
                keys.clone(),
                behaviour.blocks.clone(),
            )
        });
        ByzNode {
            idx,
            key,
            outsider: timecoin_core::testkit::key_from_seed("outsider", idx as u64),
            behaviour,
            n: keys.len(),
            keys,
            epoch,
            seen: BTreeMap::new(),
            order: Vec::new(),
            spends: BTreeMap::new(),
            unvoted: Vec::new(),
            captured_votes: Vec::new(),
            captured_proofs: Vec::new(),
            captured_txs: Vec::new(),
            proofs_requested: BTreeSet::new(),
            proofs_pushed: BTreeSet::new(),
            burst: (0, 5 * SEC),
            finals: BTreeSet::new(),
            chain,
            stats: ByzStats::default(),
        }
    }

    fn peers(&self) -> Vec<usize> {
        (0..self.n).filter(|&i| i != self.idx).collect()
    }

    fn capture(list: &mut Vec<Frame>, f: &Frame) {
        if list.len() < KEEP {
            list.push(f.clone());
        }
    }

    fn sign(&mut self, items: Vec<VoteItem>) -> Frame {
        self.stats.batches_signed += 1;
        frame(&Message::VoteBatch(VoteBatch::sign(
            CHAIN_ID, self.epoch, &self.key, items,
        )))
    }

    /// Its votes on real transactions: signed with a small-order component
    /// in `R` when it misbehaves that way (valid under ZIP 215, so the
    /// batch counts, and proofs carry the odd signature to everyone).
    fn sign_votes(&mut self, items: Vec<VoteItem>) -> Frame {
        if !self.behaviour.torsion {
            return self.sign(items);
        }
        self.stats.batches_signed += 1;
        self.stats.torsion += 1;
        let mut b = VoteBatch::sign(CHAIN_ID, self.epoch, &self.key, items);
        let (_, msg) = b.levels_and_message();
        b.signature = timecoin_core::testkit::torsion_signature(&self.key, &msg);
        frame(&Message::VoteBatch(b))
    }

    /// A frame from a peer or wallet. Returns what to send at once.
    pub fn on_message(
        &mut self,
        rng: &mut ChaCha8Rng,
        f: &Frame,
        msg: Message,
    ) -> Vec<(Dest, Frame)> {
        if self.behaviour.silent {
            return vec![];
        }
        let mut out = Vec::new();
        match msg {
            Message::TransactionBroadcast(tx) | Message::SubmitTransaction(tx) => {
                let txid = tx.txid();
                if self.seen.contains_key(&txid) {
                    return out;
                }
                Self::capture(&mut self.captured_txs, f);
                let mut rivals = BTreeSet::new();
                for i in &tx.inputs {
                    let list = self.spends.entry(i.prev).or_default();
                    rivals.extend(list.iter().copied());
                    list.push(txid);
                }
                self.seen.insert(txid, tx.clone());
                self.order.push(txid);
                self.unvoted.push(txid);
                if self.behaviour.malleate {
                    let mut bad = tx.clone();
                    bad.inputs[0].signature[0] ^= 0x01;
                    self.stats.malleated += 1;
                    out.push((Dest::AllPeers, frame(&Message::TransactionBroadcast(bad))));
                }
                if self.behaviour.split_relay {
                    // Each side of the conflict to a different half, at once.
                    let mut peers = self.peers();
                    peers.shuffle(rng);
                    let half = peers.len() / 2;
                    let mine = frame(&Message::TransactionBroadcast(tx));
                    let rival = rivals.iter().next().and_then(|r| self.seen.get(r)).cloned();
                    for (k, p) in peers.into_iter().enumerate() {
                        match (&rival, k < half) {
                            (Some(r), true) => out.push((
                                Dest::Peer(p),
                                frame(&Message::TransactionBroadcast(r.clone())),
                            )),
                            _ => out.push((Dest::Peer(p), mine.clone())),
                        }
                        self.stats.relays += 1;
                    }
                }
            }
            Message::VoteBatch(_) => Self::capture(&mut self.captured_votes, f),
            Message::BlockProposal(_) | Message::BlockVote(_) | Message::CommittedBlock(_) => {
                if let Some(c) = self.chain.as_mut() {
                    out.extend(c.on_message(rng, &msg));
                }
            }
            Message::TimeProof { ref tx, .. } => {
                self.finals.insert(tx.txid());
                Self::capture(&mut self.captured_proofs, f);
                if self.behaviour.gossip_proofs
                    && self.proofs_pushed.insert(*blake3::hash(f).as_bytes())
                {
                    self.stats.proofs_pushed += 1;
                    out.push((Dest::AllPeers, f.clone()));
                }
            }
            _ => {}
        }
        out
    }

    /// Periodic misbehaviour, every 50 to 150 ms.
    pub fn step(&mut self, rng: &mut ChaCha8Rng, now: Micros) -> Vec<(Dest, Frame)> {
        let b = self.behaviour.clone();
        let mut out = Vec::new();
        if b.silent {
            return out;
        }
        if let Some(c) = self.chain.as_mut() {
            out.extend(c.step(rng, now, &self.seen, &self.finals, &self.spends));
        }
        let fresh: Vec<Txid> = std::mem::take(&mut self.unvoted);
        if !fresh.is_empty() {
            let approve = |t: &Txid| VoteItem {
                txid: *t,
                decision: Decision::Approve,
            };
            let reject = |t: &Txid| VoteItem {
                txid: *t,
                decision: Decision::Reject(RejectCode::InputLocked),
            };
            if b.split_decisions {
                let mut peers = self.peers();
                peers.shuffle(rng);
                let half = peers.len() / 2;
                let yes = self.sign_votes(fresh.iter().map(approve).collect());
                let no = self.sign_votes(fresh.iter().map(reject).collect());
                for (k, p) in peers.into_iter().enumerate() {
                    out.push((
                        Dest::Peer(p),
                        if k < half { yes.clone() } else { no.clone() },
                    ));
                }
            } else if b.approve_all {
                let f = self.sign_votes(fresh.iter().map(approve).collect());
                out.push((Dest::AllPeers, f));
            } else if b.reject_all {
                let f = self.sign_votes(fresh.iter().map(reject).collect());
                out.push((Dest::AllPeers, f));
            }
        }
        let recent: Vec<Txid> = self.order.iter().rev().take(8).copied().collect();
        if b.forge && !recent.is_empty() && rng.gen_bool(0.03) {
            // Claims an honest voter, carries our signature.
            let items = recent
                .iter()
                .map(|t| VoteItem {
                    txid: *t,
                    decision: Decision::Approve,
                })
                .collect();
            let mut batch = VoteBatch::sign(CHAIN_ID, self.epoch, &self.key, items);
            let victims: Vec<PublicKey> = self
                .keys
                .iter()
                .filter(|k| **k != batch.voter)
                .copied()
                .collect();
            batch.voter = *victims.choose(rng).expect("peers");
            self.stats.forged += 1;
            out.push((Dest::AllPeers, frame(&Message::VoteBatch(batch))));
        }
        if b.unregistered && !recent.is_empty() && rng.gen_bool(0.03) {
            let items = recent
                .iter()
                .map(|t| VoteItem {
                    txid: *t,
                    decision: Decision::Approve,
                })
                .collect();
            self.stats.unregistered += 1;
            let batch = VoteBatch::sign(CHAIN_ID, self.epoch, &self.outsider, items);
            out.push((Dest::AllPeers, frame(&Message::VoteBatch(batch))));
        }
        if b.replay && rng.gen_bool(0.08) {
            let pool = match rng.gen_range(0..3) {
                0 => &self.captured_votes,
                1 => &self.captured_proofs,
                _ => &self.captured_txs,
            };
            if let Some(f) = pool.choose(rng).cloned() {
                self.stats.replayed += 1;
                out.push((
                    Dest::Peer(*self.peers().choose(rng).expect("peers")),
                    f.clone(),
                ));
                // And a copy claiming another epoch or chain: must not count.
                if let Ok(Message::VoteBatch(mut vb)) = Message::decode(&f) {
                    if rng.gen_bool(0.5) {
                        vb.epoch += 1;
                    } else {
                        vb.chain_id += 1;
                    }
                    out.push((Dest::AllPeers, frame(&Message::VoteBatch(vb))));
                }
            }
        }
        if b.flood && rng.gen_bool(0.02) {
            let k = rng.gen_range(64..=512);
            let items: Vec<VoteItem> = (0..k)
                .map(|_| VoteItem {
                    txid: Txid(rng.gen()),
                    decision: Decision::Approve,
                })
                .collect();
            self.stats.flood_items += k as u64;
            out.push((Dest::AllPeers, self.sign(items)));
            for _ in 0..4 {
                out.push((Dest::AllPeers, self.garbage(rng)));
            }
        }
        if b.vote_flood {
            if now >= self.burst.1 {
                self.burst = (
                    now + rng.gen_range(2 * SEC..=4 * SEC),
                    now + rng.gen_range(20 * SEC..=40 * SEC),
                );
            }
            if now < self.burst.0 {
                // Full rate: many signed batches for made-up txids, every
                // step (far more than the tallies honest nodes keep open
                // for transactions they have not seen).
                for _ in 0..rng.gen_range(4..=8) {
                    let k = rng.gen_range(32..=64);
                    let items: Vec<VoteItem> = (0..k)
                        .map(|_| VoteItem {
                            txid: Txid(rng.gen()),
                            decision: if rng.gen_bool(0.9) {
                                Decision::Approve
                            } else {
                                Decision::Reject(RejectCode::InputLocked)
                            },
                        })
                        .collect();
                    self.stats.flood_items += k as u64;
                    self.stats.flood_batches += 1;
                    out.push((Dest::AllPeers, self.sign(items)));
                }
            }
        }
        if b.transport_junk && rng.gen_bool(0.1) {
            // Transport messages: the state machine ignores them.
            let k: u64 = rng.gen_range(0..4);
            let m = match rng.gen_range(0..3) {
                0 => Message::FastPathSeq { next: u64::MAX - k },
                1 => Message::RepairRequest {
                    first: rng.gen(),
                    last: u64::MAX - k,
                },
                _ => Message::Repair((0..rng.gen_range(0..64)).map(|_| rng.gen()).collect()),
            };
            self.stats.junk_transport += 1;
            out.push((Dest::AllPeers, frame(&m)));
        }
        if b.gossip_proofs {
            let want: Vec<Txid> = self
                .order
                .iter()
                .filter(|t| !self.proofs_requested.contains(*t))
                .take(8)
                .copied()
                .collect();
            for t in want {
                self.proofs_requested.insert(t);
                let peer = *self.peers().choose(rng).expect("peers");
                out.push((Dest::Peer(peer), frame(&Message::ProofRequest(t))));
            }
            // Ask again later for a few, in case they were not final yet.
            if rng.gen_bool(0.05) {
                self.proofs_requested.clear();
            }
        }
        if b.bad_proofs && !self.order.is_empty() && rng.gen_bool(0.02) {
            let t = *self.order.choose(rng).expect("non-empty");
            if let Some(tx) = self.seen.get(&t).cloned() {
                self.stats.bad_proofs += 1;
                out.push((
                    Dest::AllPeers,
                    frame(&Message::TimeProof {
                        tx,
                        proof: self.light_proof(rng, t),
                    }),
                ));
            }
        }
        out
    }

    /// A proof for `txid` that must not verify: only our vote, our vote
    /// repeated, or a reject vote.
    fn light_proof(&mut self, rng: &mut ChaCha8Rng, txid: Txid) -> TimeProof {
        let decision = if rng.gen_bool(0.3) {
            Decision::Reject(RejectCode::InputLocked)
        } else {
            Decision::Approve
        };
        let batch = VoteBatch::sign(
            CHAIN_ID,
            self.epoch,
            &self.key,
            vec![VoteItem { txid, decision }],
        );
        let levels = batch.verify().expect("own signature");
        let cert = batch.cert(&levels, 0);
        let copies = rng.gen_range(1..=self.n);
        TimeProof {
            chain_id: CHAIN_ID,
            txid,
            votes: vec![cert; copies],
        }
    }

    /// Random bytes, or a real frame cut short or with a flipped byte.
    fn garbage(&mut self, rng: &mut ChaCha8Rng) -> Frame {
        self.stats.garbage_frames += 1;
        let base = self
            .captured_votes
            .choose(rng)
            .or_else(|| self.captured_txs.choose(rng))
            .cloned();
        let mut v: Vec<u8> = match base {
            Some(f) if rng.gen_bool(0.7) => f.to_vec(),
            _ => (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect(),
        };
        if !v.is_empty() {
            match rng.gen_range(0..3) {
                0 => v.truncate(rng.gen_range(0..v.len())),
                1 => {
                    let i = rng.gen_range(0..v.len());
                    v[i] ^= 1 << rng.gen_range(0..8);
                }
                _ => v.extend((0..rng.gen_range(1..8)).map(|_| rng.gen::<u8>())),
            }
        }
        v.into()
    }
}
