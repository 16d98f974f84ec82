//! Block layer tests: golden bytes of the formats, leader selection, and N
//! consensus instances in one process under reordering, loss, silent
//! leaders and restarts.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::block::{Block, BlockHash, MAX_BLOCK_BYTES};
use super::certificate::{CertificateError, CommitCertificate, CommittedBlock, ForkEvidence};
use super::consensus::*;
use super::leader::leader;
use super::vote::{BlockVote, Proposal, Slot, VoteKind};
use crate::codec::Reader;
use crate::protocol::registry::{Masternode, Registry, Tier};
use crate::protocol::types::{PublicKey, Transaction, TxOutput};
use crate::testkit::key_from_seed;

const CHAIN: u32 = 7;

fn keys(n: usize) -> Vec<ed25519_dalek::SigningKey> {
    (0..n as u64).map(|i| key_from_seed("blocks", i)).collect()
}

fn registry(keys: &[ed25519_dalek::SigningKey], tiers: &[Tier]) -> Registry {
    Registry::new(
        1,
        keys.iter()
            .zip(tiers.iter().cycle())
            .enumerate()
            .map(|(i, (k, t))| Masternode {
                key: PublicKey::from_signing(k),
                address: format!("127.0.0.1:{}", 24000 + i),
                tier: *t,
            })
            .collect(),
    )
    .unwrap()
}

fn sample_tx(i: u8) -> Transaction {
    Transaction {
        version: 1,
        chain_id: CHAIN,
        inputs: vec![],
        outputs: vec![TxOutput {
            amount: 1000 + i as u64,
            address: crate::protocol::types::Address([i; 20]),
        }],
        lock_time: 0,
    }
}

fn sample_block() -> Block {
    Block::new(
        CHAIN,
        1,
        5,
        BlockHash([3; 32]),
        1_700_000_000_000,
        PublicKey([9; 32]),
        vec![sample_tx(1)],
    )
}

#[test]
fn header_golden_bytes() {
    let b = Block::new(
        CHAIN,
        1,
        5,
        BlockHash([3; 32]),
        1_700_000_000_000,
        PublicKey([9; 32]),
        vec![],
    );
    let mut out = Vec::new();
    b.header.encode(&mut out);
    let mut expect = Vec::new();
    expect.extend_from_slice(&[1, 0]); // version
    expect.extend_from_slice(&[7, 0, 0, 0]); // chain
    expect.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // epoch
    expect.extend_from_slice(&[5, 0, 0, 0, 0, 0, 0, 0]); // height
    expect.extend_from_slice(&[3; 32]); // prev
    expect.extend_from_slice(&1_700_000_000_000u64.to_le_bytes());
    expect.extend_from_slice(&[9; 32]); // proposer
    expect.extend_from_slice(&[0; 32]); // empty tx root
    expect.extend_from_slice(&[0, 0, 0, 0]); // tx count
    assert_eq!(out, expect);
    assert_eq!(out.len(), super::block::BlockHeader::ENCODED_LEN);
    // The hash is pinned too: a change to the header bytes or the domain
    // must be deliberate.
    assert_eq!(
        b.hash().to_string(),
        hex::encode(blake3::hash(&[b"TIMECOIN/block/v1".as_slice(), &out].concat()).as_bytes())
    );
}

#[test]
fn block_roundtrip_and_body_checks() {
    let b = sample_block();
    let bytes = b.to_bytes();
    assert_eq!(bytes.len(), b.encoded_len());
    assert_eq!(Block::from_bytes(&bytes).unwrap(), b);
    // A body that does not match the root is refused at decode.
    let mut other = b.clone();
    other.transactions[0] = sample_tx(2);
    assert!(Block::from_bytes(&other.to_bytes()).is_err());
    // A repeated transaction is refused.
    let dup = Block::new(
        CHAIN,
        1,
        5,
        BlockHash([3; 32]),
        1,
        PublicKey([9; 32]),
        vec![sample_tx(1), sample_tx(1)],
    );
    assert!(dup.check_format().is_err());
    // Truncations never panic.
    for n in 0..bytes.len() {
        assert!(Block::from_bytes(&bytes[..n]).is_err());
    }
    assert!(MAX_BLOCK_BYTES >= b.encoded_len());
}

#[test]
fn vote_and_certificate_golden_and_verify() {
    let ks = keys(4);
    let reg = registry(&ks, &[Tier::Bronze]);
    let slot = Slot {
        chain_id: CHAIN,
        epoch: 1,
        height: 2,
        round: 3,
    };
    let h = BlockHash([4; 32]);
    let v = BlockVote::sign(slot, VoteKind::Precommit, Some(h), &ks[0]);
    let mut out = Vec::new();
    v.encode(&mut out);
    assert_eq!(
        &out[..26],
        &[7, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 2, 1]
    );
    assert_eq!(out.len(), 24 + 1 + 33 + 32 + 64);
    assert_eq!(BlockVote::decode(&mut Reader::new(&out)).unwrap(), v);
    assert!(v.verify_signature());
    let nil = BlockVote::sign(slot, VoteKind::Prevote, None, &ks[0]);
    let mut out = Vec::new();
    nil.encode(&mut out);
    assert_eq!(&out[24..26], &[1, 0]);

    let votes: Vec<BlockVote> = ks[..3]
        .iter()
        .map(|k| BlockVote::sign(slot, VoteKind::Precommit, Some(h), k))
        .collect();
    let refs: Vec<&BlockVote> = votes.iter().collect();
    let cert = CommitCertificate::from_precommits(slot, h, &refs, &reg);
    assert_eq!(cert.verify(CHAIN, &reg), Ok(3));
    let bytes = cert.to_bytes();
    assert_eq!(bytes.len(), 24 + 32 + 4 + 3 * 96);
    assert_eq!(
        CommitCertificate::decode(&mut Reader::new(&bytes)).unwrap(),
        cert
    );
    // Two of four is below the quorum of three.
    let light = CommitCertificate::from_precommits(slot, h, &refs[..2], &reg);
    assert!(matches!(
        light.verify(CHAIN, &reg),
        Err(CertificateError::BelowQuorum { .. })
    ));
    // A prevote signature does not count as a precommit.
    let pv = BlockVote::sign(slot, VoteKind::Prevote, Some(h), &ks[3]);
    let mut forged = cert.clone();
    forged.precommits.push((pv.voter, pv.signature));
    assert_eq!(
        forged.verify(CHAIN, &reg),
        Err(CertificateError::BadSignature)
    );
    // A repeated signer is refused.
    let mut dup = cert.clone();
    dup.precommits.push(dup.precommits[0]);
    assert!(matches!(
        dup.verify(CHAIN, &reg),
        Err(CertificateError::DuplicateSigner(_))
    ));
    // Another chain or height: the signatures do not verify.
    let mut moved = cert.clone();
    moved.slot.height += 1;
    assert_eq!(
        moved.verify(CHAIN, &reg),
        Err(CertificateError::BadSignature)
    );
}

#[test]
fn proposal_roundtrip() {
    let ks = keys(1);
    let slot = Slot {
        chain_id: CHAIN,
        epoch: 1,
        height: 5,
        round: 0,
    };
    for vr in [None, Some(2)] {
        let p = Proposal::sign(slot, vr, sample_block(), &ks[0]);
        let mut out = Vec::new();
        p.encode(&mut out);
        assert_eq!(Proposal::decode(&mut Reader::new(&out)).unwrap(), p);
        assert!(p.verify_signature());
    }
}

#[test]
fn leader_is_deterministic_and_stake_weighted() {
    let ks = keys(3);
    let reg = registry(&ks, &[Tier::Bronze, Tier::Bronze, Tier::Silver]);
    let mut count: HashMap<PublicKey, u32> = HashMap::new();
    for h in 1..3001 {
        let l = leader(CHAIN, &reg, h, 0);
        assert_eq!(l, leader(CHAIN, &reg, h, 0));
        *count.entry(l).or_default() += 1;
    }
    let silver = count[&PublicKey::from_signing(&ks[2])];
    // Expected 10/12 of 3000 = 2500.
    assert!((2300..2700).contains(&silver), "silver led {silver} times");
    // Rounds move the leader.
    let ls: HashSet<PublicKey> = (0..50).map(|r| leader(CHAIN, &reg, 1, r)).collect();
    assert_eq!(ls.len(), 3);
}

/// A ledger where every block body is acceptable, unless it holds a
/// transaction the test marked as non-final.
#[derive(Default)]
struct TestLedger {
    body: Vec<Transaction>,
    not_final: HashSet<crate::protocol::types::Txid>,
    /// txid -> the final payment it conflicts with.
    conflicts: HashMap<crate::protocol::types::Txid, crate::protocol::types::Txid>,
}

impl BlockLedger for TestLedger {
    fn block_body(&self, _max: usize) -> Vec<Transaction> {
        self.body.clone()
    }
    fn check_body(&self, block: &Block) -> Result<(), BodyRejection> {
        for t in &block.transactions {
            let id = t.txid();
            if let Some(f) = self.conflicts.get(&id) {
                return Err(BodyRejection::Conflicts {
                    txid: id,
                    final_tx: *f,
                });
            }
            if self.not_final.contains(&id) {
                return Err(BodyRejection::NotFinal(id));
            }
        }
        Ok(())
    }
}

fn own_vote(m: &ConsensusMessage, me: PublicKey) -> Option<&BlockVote> {
    match m {
        ConsensusMessage::Vote(v) if v.voter == me => Some(v),
        _ => None,
    }
}

/// N consensus instances with a message queue, a virtual clock, and
/// per-node durable records (what `writes` asked to keep).
struct Net {
    cfg: ConsensusConfig,
    keys: Vec<ed25519_dalek::SigningKey>,
    reg: Registry,
    nodes: Vec<Option<BlockConsensus>>,
    durable_votes: Vec<Vec<OwnBlockVote>>,
    durable_candidates: Vec<Vec<Candidate>>,
    evidence: Vec<Vec<super::evidence::BlockEvidence>>,
    chains: Vec<Vec<CommittedBlock>>,
    queue: Vec<(usize, ConsensusMessage)>,
    ledgers: Vec<TestLedger>,
    now: u64,
    rng: ChaCha8Rng,
    loss_pct: u32,
    /// Nodes whose outgoing messages are dropped (silent).
    silent: HashSet<usize>,
    /// Every vote signed, for the no-conflicting-vote check.
    signed: HashMap<(usize, u64, u32, VoteKind), Option<BlockHash>>,
    /// Votes a node signed that differ from its earlier one for the same
    /// (height, round, step): must stay 0.
    conflicting_votes: u64,
}

impl Net {
    fn new(n: usize, seed: u64) -> Self {
        let ks = keys(n);
        let reg = registry(&ks, &[Tier::Bronze]);
        let mut cfg = ConsensusConfig::devnet();
        cfg.block_interval_ms = 100;
        cfg.propose_timeout_ms = 200;
        cfg.vote_timeout_ms = 100;
        cfg.max_timeout_ms = 1_000;
        let tip = ChainTip {
            height: 0,
            hash: BlockHash::genesis(CHAIN, 1),
            time_ms: 0,
        };
        let nodes = ks
            .iter()
            .map(|k| {
                Some(BlockConsensus::new(
                    cfg.clone(),
                    CHAIN,
                    k.clone(),
                    reg.clone(),
                    tip,
                    None,
                    &[],
                    vec![],
                    1,
                ))
            })
            .collect();
        Net {
            cfg,
            keys: ks,
            reg,
            nodes,
            durable_votes: vec![vec![]; n],
            durable_candidates: vec![vec![]; n],
            evidence: vec![vec![]; n],
            chains: vec![vec![]; n],
            queue: vec![],
            ledgers: (0..n).map(|_| TestLedger::default()).collect(),
            now: 1,
            rng: ChaCha8Rng::seed_from_u64(seed),
            loss_pct: 0,
            silent: HashSet::new(),
            signed: HashMap::new(),
            conflicting_votes: 0,
        }
    }

    fn collect(&mut self, i: usize) {
        let Some(node) = self.nodes[i].as_mut() else {
            return;
        };
        let round = node.take_round();
        for w in round.writes {
            match w {
                ConsensusWrite::OwnVote(v) => self.durable_votes[i].push(v),
                ConsensusWrite::Candidate(b) => self.durable_candidates[i].push(*b),
                ConsensusWrite::Committed(bc) => self.chains[i].push(*bc),
                ConsensusWrite::Fork(_) => panic!("fork among honest nodes"),
                ConsensusWrite::Evidence(e) => self.evidence[i].push(*e),
            }
        }
        for m in round.broadcasts {
            // Its own votes (a view change also relays others' prevotes).
            let mine = PublicKey::from_signing(&self.keys[i]);
            if let Some(v) = own_vote(&m, mine) {
                let k = (i, v.slot.height, v.slot.round, v.kind);
                if let Some(prev) = self.signed.insert(k, v.block) {
                    if prev != v.block {
                        self.conflicting_votes += 1;
                    }
                }
            }
            if !self.silent.contains(&i) {
                self.queue.push((i, m));
            }
        }
        for (peer, _their_height) in round.behind {
            // Sync: hand the missing committed blocks over.
            let height = self.nodes[i].as_ref().unwrap().tip().height + 1;
            let p = self.reg.position(&peer).unwrap();
            let blocks: Vec<_> = self.chains[p]
                .iter()
                .filter(|c| c.block.height() >= height)
                .cloned()
                .collect();
            for CommittedBlock { block: b, cert: c } in blocks {
                let node = self.nodes[i].as_mut().unwrap();
                let _ = node.handle_commit(self.now, b, c, &self.ledgers[i]);
            }
            self.collect(i);
        }
    }

    fn deliver_one(&mut self) -> bool {
        if self.queue.is_empty() {
            return false;
        }
        let k = self.rng.gen_range(0..self.queue.len());
        let (from, msg) = self.queue.swap_remove(k);
        for to in 0..self.nodes.len() {
            if to == from || self.rng.gen_range(0..100) < self.loss_pct {
                continue;
            }
            let Some(node) = self.nodes[to].as_mut() else {
                continue;
            };
            let r = match msg.clone() {
                ConsensusMessage::Proposal(p) => {
                    node.handle_proposal(self.now, *p, &self.ledgers[to])
                }
                ConsensusMessage::Vote(v) => node.handle_vote(self.now, v, &self.ledgers[to]),
            };
            r.expect("honest messages are accepted");
            self.collect(to);
        }
        true
    }

    fn step_time(&mut self, ms: u64) {
        self.now += ms;
        for i in 0..self.nodes.len() {
            if let Some(n) = self.nodes[i].as_mut() {
                if n.poll_timeout().is_some_and(|t| t <= self.now) {
                    n.handle_timeout(self.now, &self.ledgers[i]);
                }
            }
            self.collect(i);
        }
    }

    fn run(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            let burst = self.rng.gen_range(0..20);
            for _ in 0..burst {
                if !self.deliver_one() {
                    break;
                }
            }
            self.step_time(10);
        }
    }

    fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    fn restart(&mut self, i: usize) {
        let (tip, cert) = match self.chains[i].last() {
            Some(CommittedBlock { block: b, cert: c }) => (
                ChainTip {
                    height: b.height(),
                    hash: b.hash(),
                    time_ms: b.header.time_ms,
                },
                Some(c.clone()),
            ),
            None => (
                ChainTip {
                    height: 0,
                    hash: BlockHash::genesis(CHAIN, 1),
                    time_ms: 0,
                },
                None,
            ),
        };
        self.nodes[i] = Some(BlockConsensus::new(
            self.cfg.clone(),
            CHAIN,
            self.keys[i].clone(),
            self.reg.clone(),
            tip,
            cert,
            &self.durable_votes[i],
            self.durable_candidates[i].clone(),
            self.now,
        ));
    }

    /// No two committed blocks at a height; chains are prefixes of each other.
    fn check_agreement(&self) {
        let longest = self.chains.iter().max_by_key(|c| c.len()).unwrap();
        for (i, c) in self.chains.iter().enumerate() {
            for (k, CommittedBlock { block: b, cert }) in c.iter().enumerate() {
                assert_eq!(b.height(), k as u64 + 1, "node {i} skipped a height");
                assert_eq!(
                    b.hash(),
                    longest[k].block.hash(),
                    "node {i} diverges at {}",
                    k + 1
                );
                assert!(cert.verify(CHAIN, &self.reg).is_ok());
            }
        }
    }

    fn min_height(&self) -> usize {
        self.chains.iter().map(|c| c.len()).min().unwrap()
    }
}

#[test]
fn four_nodes_commit_blocks() {
    let mut net = Net::new(4, 1);
    net.ledgers[0].body = vec![sample_tx(1)];
    net.run(3_000);
    net.check_agreement();
    assert!(net.min_height() >= 5, "only {} blocks", net.min_height());
    for c in &net.chains {
        for w in c.windows(2) {
            assert_eq!(w[1].block.header.prev, w[0].block.hash());
            assert!(w[1].block.header.time_ms > w[0].block.header.time_ms);
        }
    }
}

#[test]
fn silent_leader_leads_to_view_change() {
    let mut net = Net::new(4, 2);
    // Silence the leader of height 1, round 0.
    let l = leader(CHAIN, &net.reg, 1, 0);
    let li = net.reg.position(&l).unwrap();
    net.silent.insert(li);
    net.run(3_000);
    let others: Vec<usize> = (0..4).filter(|i| *i != li).collect();
    for i in &others {
        assert!(net.chains[*i].len() >= 2, "node {i} stalled");
        assert!(net.nodes[*i].as_ref().unwrap().stats().view_changes >= 1);
    }
    net.check_agreement();
}

#[test]
fn commit_time_and_round_are_measured_per_height_taken_part_in() {
    let mut net = Net::new(4, 1);
    net.run(3_000);
    for n in net.nodes.iter().flatten() {
        let s = n.stats();
        // Every committed height started here (none was synced), each in
        // round 0 (no faults), each after its start.
        assert!(s.committed >= 5);
        assert_eq!(s.commit_time.count(), s.committed - s.synced_blocks);
        assert_eq!(s.commit_rounds.count(), s.commit_time.count());
        assert_eq!(s.commit_rounds.sum(), 0, "no view change, all in round 0");
        assert_eq!(s.forks, 0);
    }
    // A silent leader: its height commits in a later round at the others.
    let mut net = Net::new(4, 2);
    let l = leader(CHAIN, &net.reg, 1, 0);
    let li = net.reg.position(&l).unwrap();
    net.silent.insert(li);
    net.run(3_000);
    let i = (li + 1) % 4;
    let s = net.nodes[i].as_ref().unwrap().stats();
    assert!(s.commit_rounds.sum() >= 1, "{:?}", s.commit_rounds);
    assert!(s.commit_rounds.buckets().next().unwrap().1 < s.commit_rounds.count());
}

#[test]
fn non_final_transaction_is_never_committed() {
    let mut net = Net::new(4, 3);
    let bad = sample_tx(9);
    // Every node proposes it; the honest checkers (all) refuse it.
    for l in net.ledgers.iter_mut() {
        l.body = vec![bad.clone()];
        l.not_final.insert(bad.txid());
    }
    net.run(2_000);
    for c in &net.chains {
        assert!(
            c.is_empty(),
            "a block with a non-final transaction was committed"
        );
    }
    // Once it is final everywhere, blocks resume.
    for l in net.ledgers.iter_mut() {
        l.not_final.clear();
    }
    net.run(20_000);
    assert!(net.min_height() >= 1);
    net.check_agreement();
}

/// A voter that equivocated (nil to this node, B to the others) must still
/// count for B when B's polka reaches this node inside a later proposal:
/// votes are counted per value, as in the paper. Counting only the first
/// vote per voter left this node waiting forever on a polka it could never
/// see while the others stayed locked on B (found by the simulator,
/// `--scenario blocks`, seed 4 of the mixed runs with blocks on).
#[test]
fn an_equivocators_vote_counts_for_the_value_it_names() {
    let ks = keys(4);
    let reg = registry(&ks, &[Tier::Bronze]);
    let genesis = BlockHash::genesis(CHAIN, 1);
    let tip = ChainTip {
        height: 0,
        hash: genesis,
        time_ms: 0,
    };
    let me = 0;
    let byz = 3;
    // A round whose leader is neither this node nor the equivocator.
    let r = (1..64)
        .find(|r| {
            let l = leader(CHAIN, &reg, 1, *r);
            l != PublicKey::from_signing(&ks[me]) && l != PublicKey::from_signing(&ks[byz])
        })
        .unwrap();
    let li = reg.position(&leader(CHAIN, &reg, 1, r)).unwrap();
    let mut c = BlockConsensus::new(
        ConsensusConfig::devnet(),
        CHAIN,
        ks[me].clone(),
        reg.clone(),
        tip,
        None,
        &[],
        vec![],
        1,
    );
    let ledger = TestLedger::default();
    c.handle_timeout(1, &ledger);
    let slot = |round| Slot {
        chain_id: CHAIN,
        epoch: 1,
        height: 1,
        round,
    };
    let b = Block::new(
        CHAIN,
        1,
        1,
        genesis,
        1,
        PublicKey::from_signing(&ks[li]),
        vec![],
    );
    let h = b.hash();
    // The equivocator's nil prevote of round 0 arrives first ...
    c.handle_vote(
        1,
        BlockVote::sign(slot(0), VoteKind::Prevote, None, &ks[byz]),
        &ledger,
    )
    .unwrap();
    // ... then round r's leader re-proposes B with the polka of round 0
    // (two honest prevotes and the equivocator's prevote for B), and the
    // two honest nodes prevote B in round r (this node moves to round r).
    let mut p = Proposal::sign(slot(r), Some(0), b, &ks[li]);
    p.polka = [1, 2, byz]
        .iter()
        .map(|&k| BlockVote::sign(slot(0), VoteKind::Prevote, Some(h), &ks[k]))
        .collect();
    c.handle_proposal(2, p, &ledger).unwrap();
    for k in [1, 2] {
        c.handle_vote(
            2,
            BlockVote::sign(slot(r), VoteKind::Prevote, Some(h), &ks[k]),
            &ledger,
        )
        .unwrap();
    }
    let out = c.take_round();
    let prevoted = out.broadcasts.iter().any(|m| {
        matches!(m, ConsensusMessage::Vote(v)
            if v.slot.round == r && v.kind == VoteKind::Prevote && v.block == Some(h))
    });
    assert!(
        prevoted,
        "no prevote for B in round {r}: {:?}",
        out.broadcasts
    );
    assert!(c.stats().equivocations >= 1);
}

/// A polka that completes after this node moved on to a later round (the
/// last prevote came from a restarted node) makes its block `valid`: when
/// this node leads, it re-proposes that block with the polka, which a node
/// locked on it accepts. Before, it proposed a fresh block that the locked
/// node refused, and with the honest weight just above the quorum blocks
/// stalled until the locked node itself led a round (found by the
/// simulator, `--blocks on` seed 3: 35 s of calm without a block).
#[test]
fn a_late_polka_is_re_proposed() {
    let ks = keys(4);
    let reg = registry(&ks, &[Tier::Bronze]);
    let genesis = BlockHash::genesis(CHAIN, 1);
    let tip = ChainTip {
        height: 0,
        hash: genesis,
        time_ms: 0,
    };
    let me = PublicKey::from_signing(&ks[0]);
    let vr = (0..64).find(|r| leader(CHAIN, &reg, 1, *r) != me).unwrap();
    let r = (vr + 2..128)
        .find(|r| leader(CHAIN, &reg, 1, *r) == me)
        .unwrap();
    let li = reg.position(&leader(CHAIN, &reg, 1, vr)).unwrap();
    let mut c = BlockConsensus::new(
        ConsensusConfig::devnet(),
        CHAIN,
        ks[0].clone(),
        reg.clone(),
        tip,
        None,
        &[],
        vec![],
        1,
    );
    let ledger = TestLedger::default();
    c.handle_timeout(1, &ledger);
    let slot = |round| Slot {
        chain_id: CHAIN,
        epoch: 1,
        height: 1,
        round,
    };
    let nil_prevotes = |c: &mut BlockConsensus, round: u32| {
        for k in [1, 2] {
            c.handle_vote(
                2,
                BlockVote::sign(slot(round), VoteKind::Prevote, None, &ks[k]),
                &ledger,
            )
            .unwrap();
        }
    };
    // This node is past round vr when round vr's proposal and its polka
    // reach it.
    nil_prevotes(&mut c, vr + 1);
    assert_eq!(c.height_round(), (1, vr + 1));
    let b = Block::new(
        CHAIN,
        1,
        1,
        genesis,
        1,
        PublicKey::from_signing(&ks[li]),
        vec![],
    );
    let h = b.hash();
    c.handle_proposal(2, Proposal::sign(slot(vr), None, b, &ks[li]), &ledger)
        .unwrap();
    for k in [1, 2, 3] {
        c.handle_vote(
            2,
            BlockVote::sign(slot(vr), VoteKind::Prevote, Some(h), &ks[k]),
            &ledger,
        )
        .unwrap();
    }
    let _ = c.take_round();
    // Round r, which this node leads.
    nil_prevotes(&mut c, r);
    assert_eq!(c.height_round(), (1, r));
    let out = c.take_round();
    let proposal = out.broadcasts.iter().find_map(|m| match m {
        ConsensusMessage::Proposal(p) if p.slot.round == r => Some(p),
        _ => None,
    });
    let p = proposal.expect("the leader proposes");
    assert_eq!(p.block.hash(), h, "a fresh block instead of the polka's");
    assert_eq!(p.valid_round, Some(vr));
    assert_eq!(p.polka.len(), 3);
}

/// A node that saw a polka sends that round's proposal and prevotes again
/// when it moves to a later round, so peers that lost them can re-propose
/// the block instead of one it is locked against (found by the simulator,
/// `--blocks on` seed 8: after a partition two nodes stayed locked on a
/// block whose polka the others never received, 30 s without a block).
#[test]
fn a_view_change_relays_the_polka() {
    let ks = keys(4);
    let reg = registry(&ks, &[Tier::Bronze]);
    let genesis = BlockHash::genesis(CHAIN, 1);
    let tip = ChainTip {
        height: 0,
        hash: genesis,
        time_ms: 0,
    };
    let me = PublicKey::from_signing(&ks[0]);
    let r0 = (0..64).find(|r| leader(CHAIN, &reg, 1, *r) != me).unwrap();
    let li = reg.position(&leader(CHAIN, &reg, 1, r0)).unwrap();
    let mut c = BlockConsensus::new(
        ConsensusConfig::devnet(),
        CHAIN,
        ks[0].clone(),
        reg.clone(),
        tip,
        None,
        &[],
        vec![],
        1,
    );
    let ledger = TestLedger::default();
    c.handle_timeout(1, &ledger);
    let slot = |round| Slot {
        chain_id: CHAIN,
        epoch: 1,
        height: 1,
        round,
    };
    let others: Vec<usize> = (1..4).filter(|k| *k != li).collect();
    if r0 > 0 {
        for &k in &others {
            c.handle_vote(
                2,
                BlockVote::sign(slot(r0), VoteKind::Prevote, None, &ks[k]),
                &ledger,
            )
            .unwrap();
        }
    }
    assert_eq!(c.height_round(), (1, r0));
    let b = Block::new(
        CHAIN,
        1,
        1,
        genesis,
        1,
        PublicKey::from_signing(&ks[li]),
        vec![],
    );
    let h = b.hash();
    c.handle_proposal(2, Proposal::sign(slot(r0), None, b, &ks[li]), &ledger)
        .unwrap();
    for k in [1, 2, 3] {
        c.handle_vote(
            2,
            BlockVote::sign(slot(r0), VoteKind::Prevote, Some(h), &ks[k]),
            &ledger,
        )
        .unwrap();
    }
    assert_eq!(c.locked().map(|l| l.1), Some(h));
    let _ = c.take_round();
    // No precommit quorum: the round times out.
    let t = c.poll_timeout().unwrap();
    c.handle_timeout(t, &ledger);
    assert_eq!(c.height_round(), (1, r0 + 1));
    let out = c.take_round();
    let relayed_proposal = out.broadcasts.iter().any(
        |m| matches!(m, ConsensusMessage::Proposal(p) if p.slot.round == r0 && p.block.hash() == h),
    );
    let relayed_votes = out
        .broadcasts
        .iter()
        .filter(|m| {
            matches!(m, ConsensusMessage::Vote(v)
                if v.slot.round == r0 && v.kind == VoteKind::Prevote && v.block == Some(h))
        })
        .count();
    assert!(relayed_proposal, "the polka's proposal is not sent again");
    assert!(
        relayed_votes >= 3,
        "{relayed_votes} of the polka's prevotes sent again"
    );
}

/// Past the cap, every round is still a little longer than the one
/// before, so a node some rounds behind catches up with one ahead (with
/// equal timeouts a node ahead stayed ahead for good: simulator,
/// `--blocks on` seed 42, 45 s of calm without a block).
#[test]
fn round_timeouts_keep_growing_past_the_cap() {
    let ks = keys(4);
    let reg = registry(&ks, &[Tier::Bronze]);
    let tip = ChainTip {
        height: 0,
        hash: BlockHash::genesis(CHAIN, 1),
        time_ms: 0,
    };
    let mut cfg = ConsensusConfig::devnet();
    cfg.max_timeout_ms = 2_000;
    // A node alone: every round ends by its timeouts.
    let mut c = BlockConsensus::new(cfg, CHAIN, ks[0].clone(), reg, tip, None, &[], vec![], 1);
    let ledger = TestLedger::default();
    let mut starts = vec![];
    let mut now = 1;
    while starts.len() < 12 && now < 10_000_000 {
        let (_, r) = c.height_round();
        if starts.len() as u32 <= r {
            starts.push(now);
        }
        now = c.poll_timeout().unwrap();
        c.handle_timeout(now, &ledger);
        let _ = c.take_round();
    }
    // Rounds it does not lead (a leader skips its propose timeout).
    let me = PublicKey::from_signing(&ks[0]);
    let reg = registry(&ks, &[Tier::Bronze]);
    let lengths: Vec<u64> = starts
        .windows(2)
        .enumerate()
        .filter(|(r, _)| leader(CHAIN, &reg, 1, *r as u32) != me)
        .map(|(_, w)| w[1] - w[0])
        .collect();
    for w in lengths.windows(2).skip(2) {
        assert!(w[1] > w[0], "round lengths stop growing: {lengths:?}");
    }
}

#[test]
fn restart_never_signs_a_conflicting_vote() {
    let mut net = Net::new(4, 4);
    net.run(500);
    for round in 0..20 {
        let i = round % 4;
        net.crash(i);
        net.run(150);
        net.restart(i);
        net.run(350);
    }
    net.run(3_000);
    net.check_agreement();
    assert_eq!(net.conflicting_votes, 0);
    assert!(net.min_height() >= 3);
}

/// The control: with the durable vote record ignored at start (planted
/// bug), the same crash/restart cycles make some node sign a second,
/// different vote for a (height, round, step), and the check above sees it.
#[cfg(feature = "planted-bugs")]
#[test]
fn planted_forgotten_votes_are_caught() {
    let mut caught = 0;
    for seed in 0..8 {
        let mut net = Net::new(4, seed);
        net.cfg.planted.forget_votes = true;
        net.run(500);
        for round in 0..20 {
            let i = round % 4;
            net.crash(i);
            net.run(150);
            net.restart(i);
            net.run(350);
        }
        if net.conflicting_votes > 0 {
            caught += 1;
        }
    }
    assert!(caught > 0, "no seed of 8 caught the forgotten votes");
}

#[test]
fn a_second_certificate_at_the_tip_is_a_fork() {
    let mut net = Net::new(4, 5);
    net.run(1_000);
    assert!(net.min_height() >= 1);
    let CommittedBlock { block: b, cert } = net.chains[0][0].clone();
    // Forge another block at height 1 with a full certificate (all keys:
    // the Byzantine weight reached a third).
    let other = Block::new(
        CHAIN,
        1,
        1,
        b.header.prev,
        b.header.time_ms + 5,
        b.header.proposer,
        vec![sample_tx(3)],
    );
    let votes: Vec<BlockVote> = net
        .keys
        .iter()
        .map(|k| BlockVote::sign(cert.slot, VoteKind::Precommit, Some(other.hash()), k))
        .collect();
    let refs: Vec<&BlockVote> = votes.iter().collect();
    let forged = CommitCertificate::from_precommits(cert.slot, other.hash(), &refs, &net.reg);
    // A fresh node at height 1 that holds the first block.
    let tip = ChainTip {
        height: 1,
        hash: b.hash(),
        time_ms: b.header.time_ms,
    };
    let mut c = BlockConsensus::new(
        net.cfg.clone(),
        CHAIN,
        net.keys[0].clone(),
        net.reg.clone(),
        tip,
        Some(cert.clone()),
        &[],
        vec![],
        0,
    );
    let applied = c
        .handle_commit(10, other, forged.clone(), &TestLedger::default())
        .unwrap();
    assert!(!applied);
    assert_eq!(c.stats().forks, 1, "counted once, as a Byzantine detection");
    let ev = c.halted().expect("halted").clone();
    assert!(ev.verify(CHAIN, &net.reg));
    assert!(matches!(
        c.take_round().writes[..],
        [ConsensusWrite::Fork(_)]
    ));
    assert_eq!(c.poll_timeout(), None);
    let mut out = Vec::new();
    ev.encode(&mut out);
    assert_eq!(ForkEvidence::decode(&mut Reader::new(&out)).unwrap(), ev);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    /// Under random reordering, loss, crashes and restarts, honest nodes
    /// never commit different blocks at a height and never sign two
    /// different votes for one height, round and step.
    #[test]
    fn safety_under_loss_and_crashes(seed in any::<u64>(), loss in 0u32..40, n in 4usize..6) {
        let mut net = Net::new(n, seed);
        net.loss_pct = loss;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        for _ in 0..10 {
            let i = rng.gen_range(0..n);
            if rng.gen_bool(0.3) { net.crash(i); }
            net.run(rng.gen_range(50..400));
            if net.nodes[i].is_none() { net.restart(i); }
        }
        net.loss_pct = 0;
        for i in 0..n { if net.nodes[i].is_none() { net.restart(i); } }
        let before = net.min_height();
        // Calm: a round takes at most 3 s (three capped timeouts) and each
        // round's leader is a node locked on the right block with odds of
        // at least a half, so 60 s leaves the test a failure rate near 2^-20.
        net.run(60_000);
        net.check_agreement();
        prop_assert_eq!(net.conflicting_votes, 0);
        prop_assert!(net.min_height() > before, "no progress once calm");
    }
}

/// A consensus instance for masternode `me` of four, with round 0 of
/// height 1 started; and the index of round 0's leader (never `me`).
fn started_at_round_0() -> (
    Vec<ed25519_dalek::SigningKey>,
    Registry,
    BlockConsensus,
    usize,
) {
    let ks = keys(4);
    let reg = registry(&ks, &[Tier::Bronze]);
    let li = reg.position(&leader(CHAIN, &reg, 1, 0)).unwrap();
    let me = (li + 1) % 4;
    let tip = ChainTip {
        height: 0,
        hash: BlockHash::genesis(CHAIN, 1),
        time_ms: 0,
    };
    let mut c = BlockConsensus::new(
        ConsensusConfig::devnet(),
        CHAIN,
        ks[me].clone(),
        reg.clone(),
        tip,
        None,
        &[],
        vec![],
        1,
    );
    c.handle_timeout(1, &TestLedger::default());
    let _ = c.take_round();
    (ks, reg, c, li)
}

fn slot0() -> Slot {
    Slot {
        chain_id: CHAIN,
        epoch: 1,
        height: 1,
        round: 0,
    }
}

fn evidence_of(r: &ConsensusRound) -> Vec<super::evidence::BlockEvidence> {
    r.writes
        .iter()
        .filter_map(|w| match w {
            ConsensusWrite::Evidence(e) => Some((**e).clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_equivocating_leader_and_a_double_voter_are_kept_as_evidence() {
    use super::evidence::BlockEvidence;
    let (ks, reg, mut c, li) = started_at_round_0();
    let ledger = TestLedger::default();
    let genesis = BlockHash::genesis(CHAIN, 1);
    let leader_pk = PublicKey::from_signing(&ks[li]);
    let b1 = Block::new(CHAIN, 1, 1, genesis, 1, leader_pk, vec![]);
    let b2 = Block::new(CHAIN, 1, 1, genesis, 2, leader_pk, vec![]);
    c.handle_proposal(
        1,
        Proposal::sign(slot0(), None, b1.clone(), &ks[li]),
        &ledger,
    )
    .unwrap();
    let _ = c.take_round();
    c.handle_proposal(
        1,
        Proposal::sign(slot0(), None, b2.clone(), &ks[li]),
        &ledger,
    )
    .unwrap();
    let byz = (li + 2) % 4;
    let v1 = BlockVote::sign(slot0(), VoteKind::Prevote, Some(b1.hash()), &ks[byz]);
    let v2 = BlockVote::sign(slot0(), VoteKind::Prevote, None, &ks[byz]);
    let v3 = BlockVote::sign(slot0(), VoteKind::Prevote, Some(b2.hash()), &ks[byz]);
    for v in [v1.clone(), v2.clone(), v3, v2.clone()] {
        c.handle_vote(1, v, &ledger).unwrap();
    }
    // The same proposal again is no evidence.
    c.handle_proposal(1, Proposal::sign(slot0(), None, b2, &ks[li]), &ledger)
        .unwrap();
    let ev = evidence_of(&c.take_round());
    assert_eq!(ev.len(), 2, "one record per offender and step: {ev:?}");
    assert!(ev.iter().all(|e| e.verify(CHAIN, &reg)));
    assert!(matches!(&ev[0], BlockEvidence::DoubleProposal { first, .. }
        if first.proposer == leader_pk && first.block == b1.hash()));
    assert_eq!(
        ev[1],
        BlockEvidence::DoubleVote {
            first: v1.clone(),
            second: v2.clone()
        }
    );
    assert_eq!(ev[1].offender(), PublicKey::from_signing(&ks[byz]));
    assert_eq!(c.stats().evidence_kept, 2);
    assert!(c.stats().equivocations >= 3);
    // What verify refuses: no conflict, a forged signature, another chain.
    let same = BlockEvidence::DoubleVote {
        first: v1.clone(),
        second: v1.clone(),
    };
    assert!(!same.verify(CHAIN, &reg));
    let mut forged = v2.clone();
    forged.signature[0] ^= 1;
    assert!(!BlockEvidence::DoubleVote {
        first: v1.clone(),
        second: forged
    }
    .verify(CHAIN, &reg));
    assert!(!ev[1].verify(CHAIN + 1, &reg));
    let other = BlockVote::sign(slot0(), VoteKind::Prevote, None, &ks[li]);
    assert!(!BlockEvidence::DoubleVote {
        first: v1,
        second: other
    }
    .verify(CHAIN, &reg));
}

#[test]
fn block_evidence_is_bounded_by_the_store() {
    let (ks, _reg, mut c, li) = started_at_round_0();
    c.set_evidence_stored(MAX_BLOCK_EVIDENCE as u64);
    let ledger = TestLedger::default();
    let byz = (li + 2) % 4;
    for b in [Some(BlockHash([1; 32])), None] {
        let v = BlockVote::sign(slot0(), VoteKind::Precommit, b, &ks[byz]);
        c.handle_vote(1, v, &ledger).unwrap();
    }
    assert!(evidence_of(&c.take_round()).is_empty());
    assert_eq!(c.stats().equivocations, 1, "still counted");
    assert_eq!(c.stats().evidence_kept, 0);
}

#[test]
fn a_proposal_conflicting_with_a_final_payment_is_evidence_and_gets_nil() {
    use super::evidence::BlockEvidence;
    use crate::protocol::types::{OutPoint, TxInput, Txid};
    let (ks, reg, mut c, li) = started_at_round_0();
    let spend = |coin: u8, amount: u64| Transaction {
        version: 1,
        chain_id: CHAIN,
        inputs: vec![TxInput {
            prev: OutPoint {
                txid: Txid([coin; 32]),
                vout: 0,
            },
            public_key: PublicKey([1; 32]),
            signature: [2; 64],
        }],
        outputs: vec![TxOutput {
            amount,
            address: crate::protocol::types::Address([3; 20]),
        }],
        lock_time: 0,
    };
    let final_here = spend(5, 10);
    let double = spend(5, 11);
    let mut ledger = TestLedger::default();
    ledger.conflicts.insert(double.txid(), final_here.txid());
    let body = vec![spend(1, 1), spend(2, 1), double.clone(), spend(3, 1)];
    let leader_pk = PublicKey::from_signing(&ks[li]);
    let b = Block::new(
        CHAIN,
        1,
        1,
        BlockHash::genesis(CHAIN, 1),
        1,
        leader_pk,
        body,
    );
    c.handle_proposal(1, Proposal::sign(slot0(), None, b, &ks[li]), &ledger)
        .unwrap();
    let r = c.take_round();
    let me = c.public_key();
    let nil = r
        .broadcasts
        .iter()
        .filter_map(|m| own_vote(m, me))
        .any(|v| v.kind == VoteKind::Prevote && v.block.is_none() && v.slot.round == 0);
    assert!(nil, "a nil prevote at once: {:?}", r.broadcasts);
    let ev = evidence_of(&r);
    assert_eq!(ev.len(), 1);
    let e = &ev[0];
    assert!(
        matches!(e, BlockEvidence::ConflictingProposal { tx, index: 2, final_tx, .. }
        if *tx == double && *final_tx == final_here.txid())
    );
    assert!(e.verify(CHAIN, &reg));
    assert!(e.conflicts_with(&final_here));
    assert!(!e.conflicts_with(&spend(6, 10)));
    assert_eq!(e.offender(), leader_pk);
    // A record whose transaction is not the block's fails.
    let mut bad = e.clone();
    if let BlockEvidence::ConflictingProposal { tx, .. } = &mut bad {
        *tx = spend(7, 1);
    }
    assert!(!bad.verify(CHAIN, &reg));
    assert_eq!(c.stats().invalid_proposals, 1);
}

#[test]
fn checked_block_messages_refuse_strangers_and_bad_signatures() {
    use super::checked::Checked;
    let ks = keys(4);
    let reg = registry(&ks, &[Tier::Bronze]);
    let stranger = key_from_seed("stranger", 0);
    let genesis = BlockHash::genesis(CHAIN, 1);
    // Votes: a stranger is refused before its signature is looked at; a
    // forged signature is refused; a genuine vote passes unchanged.
    let v = BlockVote::sign(slot0(), VoteKind::Prevote, None, &ks[1]);
    assert_eq!(Checked::vote(v.clone(), &reg).unwrap().into_inner(), v);
    let mut forged = v.clone();
    forged.signature[5] ^= 1;
    assert!(matches!(
        Checked::vote(forged, &reg),
        Err(ConsensusError::BadSignature)
    ));
    let s = BlockVote::sign(slot0(), VoteKind::Prevote, None, &stranger);
    assert!(matches!(
        Checked::vote(s, &reg),
        Err(ConsensusError::UnknownSigner(_))
    ));
    // Proposals: only the round's leader, with its signature.
    let li = reg.position(&leader(CHAIN, &reg, 1, 0)).unwrap();
    let leader_pk = PublicKey::from_signing(&ks[li]);
    let b = Block::new(CHAIN, 1, 1, genesis, 1, leader_pk, vec![]);
    let p = Proposal::sign(slot0(), None, b.clone(), &ks[li]);
    assert!(Checked::proposal(p.clone(), CHAIN, &reg).is_ok());
    let other = Proposal::sign(slot0(), None, b.clone(), &ks[(li + 1) % 4]);
    assert!(matches!(
        Checked::proposal(other, CHAIN, &reg),
        Err(ConsensusError::NotLeader { .. })
    ));
    let mut bad = p;
    bad.signature[0] ^= 1;
    assert!(matches!(
        Checked::proposal(bad, CHAIN, &reg),
        Err(ConsensusError::BadSignature)
    ));
    // Committed blocks: the certificate must name the block and verify.
    let slot = slot0();
    let precommits: Vec<BlockVote> = ks
        .iter()
        .map(|k| BlockVote::sign(slot, VoteKind::Precommit, Some(b.hash()), k))
        .collect();
    let refs: Vec<&BlockVote> = precommits.iter().collect();
    let cert = CommitCertificate::from_precommits(slot, b.hash(), &refs, &reg);
    let good = CommittedBlock {
        block: b.clone(),
        cert: cert.clone(),
    };
    assert!(Checked::commit(good, CHAIN, &reg).is_ok());
    let mut forged = cert.clone();
    forged.precommits[2].1[7] ^= 1;
    assert!(matches!(
        Checked::commit(
            CommittedBlock {
                block: b.clone(),
                cert: forged
            },
            CHAIN,
            &reg
        ),
        Err(ConsensusError::Certificate(CertificateError::BadSignature))
    ));
    let elsewhere = Block::new(CHAIN, 1, 1, genesis, 2, leader_pk, vec![]);
    assert!(matches!(
        Checked::commit(
            CommittedBlock {
                block: elsewhere,
                cert
            },
            CHAIN,
            &reg
        ),
        Err(ConsensusError::CertificateMismatch { .. })
    ));
}

#[test]
fn a_checked_proposal_keeps_only_valid_distinct_prevotes_of_its_valid_round() {
    use super::checked::Checked;
    let ks = keys(4);
    let reg = registry(&ks, &[Tier::Bronze]);
    let genesis = BlockHash::genesis(CHAIN, 1);
    let round = 1;
    let li = reg.position(&leader(CHAIN, &reg, 1, round)).unwrap();
    let b = Block::new(
        CHAIN,
        1,
        1,
        genesis,
        1,
        PublicKey::from_signing(&ks[li]),
        vec![],
    );
    let s = Slot { round, ..slot0() };
    let mut p = Proposal::sign(s, Some(0), b.clone(), &ks[li]);
    let good: Vec<BlockVote> = ks
        .iter()
        .take(3)
        .map(|k| BlockVote::sign(slot0(), VoteKind::Prevote, Some(b.hash()), k))
        .collect();
    let mut forged = BlockVote::sign(slot0(), VoteKind::Prevote, Some(b.hash()), &ks[3]);
    forged.signature[1] ^= 1;
    let wrong_round = BlockVote::sign(s, VoteKind::Prevote, Some(b.hash()), &ks[3]);
    let for_nil = BlockVote::sign(slot0(), VoteKind::Prevote, None, &ks[3]);
    let stranger = BlockVote::sign(
        slot0(),
        VoteKind::Prevote,
        Some(b.hash()),
        &key_from_seed("stranger", 1),
    );
    p.polka = good.clone();
    p.polka
        .extend([good[0].clone(), forged, wrong_round, for_nil, stranger]);
    let checked = Checked::proposal(p, CHAIN, &reg).unwrap().into_inner();
    assert_eq!(
        checked.polka, good,
        "the rest are dropped, the proposal kept"
    );
}
