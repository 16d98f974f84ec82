//! The block consensus state machine: Tendermint (Buchman, Kwon, Milosevic,
//! "The latest gossip on BFT consensus", 2018) with stake weights, driven
//! sans-IO. One instance per masternode decides one height after another:
//! rounds (views) of propose -> prevote -> precommit, a lock on the block a
//! node precommitted, and a commit when precommits of more than two thirds of
//! the weight name one block in one round. Timeouts (with exponential
//! backoff per round) move a stuck round to the next one, whose leader is
//! drawn afresh: that is the view change.
//!
//! Inputs are `handle_*(now, ..)`; effects are collected in a
//! [`ConsensusRound`] (`take_round`): writes that must be durable before the
//! transmits leave (every vote this node signs is recorded first, so it never
//! signs two different votes for one height, round and step, not even across
//! a crash), transmits, and committed blocks. Never does I/O, never reads a
//! clock. The safety argument is in docs/PROTOCOL.md ("Blocks").

use std::collections::{BTreeMap, HashMap, HashSet};

use ed25519_dalek::SigningKey;

use crate::blocks::block::{Block, BlockFormatError, BlockHash, MAX_BLOCK_BYTES};
use crate::blocks::certificate::{
    CertificateError, CommitCertificate, CommittedBlock, ForkEvidence,
};
use crate::blocks::checked::Checked;
use crate::blocks::evidence::{BlockEvidence, BlockEvidenceKey, SignedProposal};
use crate::blocks::leader::leader;
use crate::blocks::vote::{BlockVote, Proposal, Slot, VoteKind};
use crate::histogram::{BlockMillis, Histogram, Rounds};
use crate::protocol::registry::Registry;
use crate::protocol::types::{ChainId, PublicKey, Transaction, Txid};

#[derive(Clone, Debug)]
pub struct ConsensusConfig {
    /// Pause after a commit before round 0 of the next height (the block
    /// interval: 600 s on mainnet, about 1 s on a devnet).
    pub block_interval_ms: u64,
    /// How long round 0 waits for the leader's proposal.
    pub propose_timeout_ms: u64,
    /// How long round 0 waits after a quorum of mixed prevotes or precommits.
    pub vote_timeout_ms: u64,
    /// Timeouts double per round up to this cap (backoff).
    pub max_timeout_ms: u64,
    /// A block's time may be at most this far ahead of the local clock.
    pub max_clock_drift_ms: u64,
    /// Messages for rounds further ahead than this are ignored (bounds memory).
    pub max_rounds_ahead: u32,
    /// Body size a proposer fills up to.
    pub max_block_bytes: usize,
    #[cfg(feature = "planted-bugs")]
    pub planted: PlantedBlockBugs,
}

/// Deliberate bugs the simulator must catch. Never in a node.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Debug, Default)]
pub struct PlantedBlockBugs {
    /// Commit and lock with more than half the weight instead of two thirds.
    pub weak_quorum: bool,
    /// Ignore the durable record of own votes at start.
    pub forget_votes: bool,
}

impl ConsensusConfig {
    /// Mainnet pacing: a block every 600 s.
    pub fn mainnet() -> Self {
        ConsensusConfig {
            block_interval_ms: 600_000,
            ..Self::devnet()
        }
    }

    /// Devnet pacing: a block about every second.
    pub fn devnet() -> Self {
        ConsensusConfig {
            block_interval_ms: 1_000,
            propose_timeout_ms: 1_000,
            vote_timeout_ms: 500,
            max_timeout_ms: 60_000,
            max_clock_drift_ms: 30_000,
            max_rounds_ahead: 64,
            max_block_bytes: MAX_BLOCK_BYTES,
            #[cfg(feature = "planted-bugs")]
            planted: PlantedBlockBugs::default(),
        }
    }

    /// Doubling per round up to the cap, plus a quarter of the base per
    /// round beyond it: past the cap, rounds still get longer, so a node
    /// that fell some rounds behind (a restart, a partition) catches up
    /// with one that is ahead. With equal timeouts a node ahead stayed
    /// ahead for good, and when the quorum needed it no round ever had
    /// the quorum in it (as in the paper, timeouts must grow with the
    /// round).
    fn backoff(&self, base: u64, round: u32) -> u64 {
        let doubled = base.saturating_mul(1u64 << round.min(16));
        if doubled <= self.max_timeout_ms {
            return doubled;
        }
        let capped_from = (0..=16u32)
            .find(|r| base.saturating_mul(1u64 << r) > self.max_timeout_ms)
            .unwrap_or(16);
        self.max_timeout_ms.saturating_add(
            (base / 4).saturating_mul(u64::from(round.saturating_sub(capped_from) + 1)),
        )
    }
}

/// The last committed block (height 0: the genesis).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainTip {
    pub height: u64,
    pub hash: BlockHash,
    pub time_ms: u64,
}

/// What this node signed in a round. Durable before the message leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SignedStep {
    Proposal,
    Prevote,
    Precommit,
}

impl SignedStep {
    pub fn code(self) -> u8 {
        match self {
            SignedStep::Proposal => 0,
            SignedStep::Prevote => 1,
            SignedStep::Precommit => 2,
        }
    }
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(SignedStep::Proposal),
            1 => Some(SignedStep::Prevote),
            2 => Some(SignedStep::Precommit),
            _ => None,
        }
    }
    fn of(kind: VoteKind) -> Self {
        match kind {
            VoteKind::Prevote => SignedStep::Prevote,
            VoteKind::Precommit => SignedStep::Precommit,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnBlockVote {
    pub height: u64,
    pub round: u32,
    pub step: SignedStep,
    pub block: Option<BlockHash>,
}

/// Why a block's transactions are not acceptable to this node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyRejection {
    #[error("transaction {0} is not final here (no verified TimeProof)")]
    NotFinal(Txid),
    #[error("transaction {txid} conflicts with final transaction {final_tx}")]
    Conflicts { txid: Txid, final_tx: Txid },
    #[error("transaction {0} is already in an earlier block")]
    AlreadyConfirmed(Txid),
    #[error("transaction {txid} comes before its parent {parent}, which is in no block yet")]
    ParentNotConfirmed { txid: Txid, parent: Txid },
}

/// The node's view of payments, as the block layer needs it.
pub trait BlockLedger {
    /// Final transactions not yet in a block, oldest first, at most
    /// `max_bytes` encoded.
    fn block_body(&self, max_bytes: usize) -> Vec<Transaction>;
    /// Every transaction is final here and conflicts with nothing final here.
    fn check_body(&self, block: &Block) -> Result<(), BodyRejection>;
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsensusError {
    #[error("message for chain {0}")]
    WrongChain(ChainId),
    #[error("message for registry epoch {0}")]
    WrongEpoch(u64),
    #[error("{0} is not a registered masternode")]
    UnknownSigner(PublicKey),
    #[error("{got} is not the leader of height {height} round {round}")]
    NotLeader {
        got: PublicKey,
        height: u64,
        round: u32,
    },
    #[error("signature does not verify")]
    BadSignature,
    #[error("certificate: {0}")]
    Certificate(#[from] CertificateError),
    #[error("certificate names block {cert}, the block hashes to {block}")]
    CertificateMismatch { cert: BlockHash, block: BlockHash },
    #[error("block format: {0}")]
    Format(#[from] BlockFormatError),
    #[error("block at height {height} does not extend the tip")]
    NotExtendingTip { height: u64 },
    #[error("block processing stopped: two commit certificates at height {0}")]
    Halted(u64),
}

/// A message of the block layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsensusMessage {
    Proposal(Box<Proposal>),
    Vote(BlockVote),
}

/// A block this node proposed or locked on, with the prevotes that justify
/// the lock (empty for a block it only proposed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub block: Block,
    pub polka: Vec<BlockVote>,
}

/// What the driver must store (before sending the transmits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsensusWrite {
    OwnVote(OwnBlockVote),
    /// A block this node proposed or precommitted, kept until its height is
    /// decided so a restarted node can still re-propose what it is locked on.
    Candidate(Box<Candidate>),
    Committed(Box<CommittedBlock>),
    Fork(Box<ForkEvidence>),
    /// A proposer's or voter's misbehaviour, with its signatures.
    Evidence(Box<BlockEvidence>),
}

/// Effects collected since the last `take_round`.
#[derive(Debug, Default)]
pub struct ConsensusRound {
    pub writes: Vec<ConsensusWrite>,
    /// To every peer.
    pub broadcasts: Vec<ConsensusMessage>,
    /// Peers that sent messages for a height above ours, with that height:
    /// they hold the committed blocks from our height on.
    pub behind: Vec<(PublicKey, u64)>,
    /// Payments in a proposal that are not final here yet: ask for their
    /// TimeProofs.
    pub missing: Vec<Txid>,
}

/// Whether a proposed block can be voted for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Validity {
    Valid,
    Invalid,
    Wait,
}

impl ConsensusRound {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.broadcasts.is_empty()
            && self.behind.is_empty()
            && self.missing.is_empty()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsensusStats {
    pub committed: u64,
    /// Rounds above 0 started (view changes).
    pub view_changes: u64,
    pub proposals_made: u64,
    pub invalid_proposals: u64,
    pub equivocations: u64,
    /// Evidence records written (double proposals, double votes,
    /// proposals conflicting with a final payment), this run.
    pub evidence_kept: u64,
    /// Votes this node refused to sign because it had signed another one
    /// for the same height, round and step (never on a correct path).
    pub refused_conflicting: u64,
    pub synced_blocks: u64,
    /// From a height's start (its first round) to its commit, ms.
    pub commit_time: Histogram<BlockMillis>,
    /// The round each of those heights committed in.
    pub commit_rounds: Histogram<Rounds>,
    /// Two commit certificates for one height seen (block processing stops).
    pub forks: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Propose,
    Prevote,
    Precommit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    StartHeight,
    Propose,
    Prevote,
    Precommit,
}

/// Most block evidence records a store holds (the payment layer's limit,
/// each record at most a few KB); more misbehaviour is counted only.
pub const MAX_BLOCK_EVIDENCE: usize = crate::protocol::engine::MAX_EVIDENCE;

/// Most further values one equivocating voter is counted for per round
/// and step (bounds memory).
const MAX_EQUIVOCATIONS: usize = 2;

#[derive(Default)]
struct VoteSet {
    by_voter: HashMap<PublicKey, BlockVote>,
    /// An equivocator's votes for values other than its first, each counted
    /// for the value it names (the paper counts messages per value). A node
    /// that heard its nil first must still see the polka it signed for B,
    /// or it waits forever while the others stay locked on B. Safe: two
    /// quorums for different values in one round still need an honest voter
    /// in both.
    equivocations: HashMap<(PublicKey, Option<BlockHash>), BlockVote>,
    weight: HashMap<Option<BlockHash>, u64>,
    total: u64,
}

impl VoteSet {
    /// Every vote held for `block`, an equivocator's included.
    fn votes_for(&self, block: Option<BlockHash>) -> impl Iterator<Item = &BlockVote> {
        self.by_voter
            .values()
            .chain(self.equivocations.values())
            .filter(move |v| v.block == block)
    }
}

#[derive(Default)]
struct RoundState {
    proposal: Option<Proposal>,
    prevotes: VoteSet,
    precommits: VoteSet,
    /// Who sent anything in this round, and their weight (round skip).
    senders: HashSet<PublicKey>,
    sender_weight: u64,
    polka_seen: bool,
    prevote_timer: bool,
    precommit_timer: bool,
}

/// One masternode's block consensus.
pub struct BlockConsensus {
    cfg: ConsensusConfig,
    chain_id: ChainId,
    key: SigningKey,
    me: PublicKey,
    registry: Registry,
    tip: ChainTip,
    tip_cert: Option<CommitCertificate>,
    /// Height being decided: tip.height + 1.
    height: u64,
    round: u32,
    step: Step,
    started: bool,
    locked: Option<(u32, BlockHash)>,
    valid: Option<(u32, BlockHash)>,
    rounds: BTreeMap<u32, RoundState>,
    blocks: HashMap<BlockHash, Block>,
    valid_cache: HashSet<BlockHash>,
    /// What this node signed at the current height.
    own: HashMap<(u32, SignedStep), Option<BlockHash>>,
    timers: Vec<(u64, Timer, u64, u32)>,
    out: ConsensusRound,
    halted: Option<ForkEvidence>,
    stats: ConsensusStats,
    /// Evidence written this run (one record per key).
    evidence_keys: HashSet<BlockEvidenceKey>,
    /// Evidence records in the store (at start, plus those written since).
    evidence_stored: u64,
    /// The latest time a driver passed in.
    now: u64,
    /// When the height being decided started here (for `commit_time`).
    height_started_ms: Option<u64>,
}

impl BlockConsensus {
    /// Rebuilds the consensus from durable state: the tip (and its
    /// certificate), this node's own records at the height being decided,
    /// and the candidate blocks it stored. The round resumes at the highest
    /// round it signed anything in, at the step after its last signature,
    /// with the lock of its last precommit.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: ConsensusConfig,
        chain_id: ChainId,
        key: SigningKey,
        registry: Registry,
        tip: ChainTip,
        tip_cert: Option<CommitCertificate>,
        own: &[OwnBlockVote],
        candidates: Vec<Candidate>,
        now: u64,
    ) -> Self {
        let me = PublicKey::from_signing(&key);
        let mut c = BlockConsensus {
            cfg,
            chain_id,
            key,
            me,
            registry,
            tip,
            tip_cert,
            height: tip.height + 1,
            round: 0,
            step: Step::Propose,
            started: false,
            locked: None,
            valid: None,
            rounds: BTreeMap::new(),
            blocks: HashMap::new(),
            valid_cache: HashSet::new(),
            own: HashMap::new(),
            timers: Vec::new(),
            out: ConsensusRound::default(),
            halted: None,
            stats: ConsensusStats::default(),
            evidence_keys: HashSet::new(),
            evidence_stored: 0,
            now,
            height_started_ms: None,
        };
        #[cfg(feature = "planted-bugs")]
        let own: &[OwnBlockVote] = if c.cfg.planted.forget_votes { &[] } else { own };
        for cand in candidates {
            if cand.block.height() == c.height {
                c.blocks.insert(cand.block.hash(), cand.block);
                for v in cand.polka {
                    c.insert_vote(v);
                }
            }
        }
        let mut resume: Option<(u32, SignedStep)> = None;
        for r in own.iter().filter(|r| r.height == c.height) {
            c.own.insert((r.round, r.step), r.block);
            if resume.is_none_or(|x| (r.round, r.step) > x) {
                resume = Some((r.round, r.step));
            }
            if let (SignedStep::Precommit, Some(h)) = (r.step, r.block) {
                if c.locked.is_none_or(|(lr, _)| r.round > lr) && c.blocks.contains_key(&h) {
                    c.locked = Some((r.round, h));
                    c.valid = Some((r.round, h));
                }
            }
        }
        match resume {
            None => c.timers.push((now, Timer::StartHeight, c.height, 0)),
            Some((round, step)) => {
                // Resume mid-height at once: the interval has passed already.
                c.started = true;
                c.height_started_ms = Some(now);
                c.round = round;
                c.rounds.entry(round).or_default();
                c.step = match step {
                    SignedStep::Proposal => Step::Propose,
                    SignedStep::Prevote => Step::Prevote,
                    SignedStep::Precommit => Step::Precommit,
                };
                let t = c.cfg.backoff(c.cfg.propose_timeout_ms, round);
                let which = match c.step {
                    Step::Propose => Timer::Propose,
                    Step::Prevote => Timer::Prevote,
                    Step::Precommit => Timer::Precommit,
                };
                c.timers.push((now + t, which, c.height, round));
            }
        }
        c
    }

    pub fn tip(&self) -> ChainTip {
        self.tip
    }
    pub fn public_key(&self) -> PublicKey {
        self.me
    }
    /// The height being decided and its current round.
    pub fn height_round(&self) -> (u64, u32) {
        (self.height, self.round)
    }
    pub fn halted(&self) -> Option<&ForkEvidence> {
        self.halted.as_ref()
    }
    pub fn stats(&self) -> &ConsensusStats {
        &self.stats
    }
    pub fn locked(&self) -> Option<(u32, BlockHash)> {
        self.locked
    }

    /// The (height, round) whose leader's proposal this node waits for
    /// right now (round started, nothing prevoted, no proposal held).
    pub fn awaiting_proposal(&self) -> Option<(u64, u32)> {
        let held = self
            .rounds
            .get(&self.round)
            .is_some_and(|rs| rs.proposal.is_some());
        (self.started && self.halted.is_none() && self.step == Step::Propose && !held)
            .then_some((self.height, self.round))
    }

    /// How many evidence records the store holds already (at start): the
    /// bound [`MAX_BLOCK_EVIDENCE`] counts them.
    pub fn set_evidence_stored(&mut self, n: u64) {
        self.evidence_stored = n;
    }

    /// Evidence records in the store, as far as this node knows.
    pub fn evidence_stored(&self) -> u64 {
        self.evidence_stored
    }

    /// Writes `e` once per key while the store holds fewer than
    /// [`MAX_BLOCK_EVIDENCE`] records; beyond that only the counters move.
    fn keep_evidence(&mut self, e: BlockEvidence) {
        if self.evidence_stored >= MAX_BLOCK_EVIDENCE as u64 {
            return;
        }
        if self.evidence_keys.insert(e.key()) {
            self.evidence_stored += 1;
            self.stats.evidence_kept += 1;
            self.out.writes.push(ConsensusWrite::Evidence(Box::new(e)));
        }
    }

    /// Effects since the last call.
    pub fn take_round(&mut self) -> ConsensusRound {
        std::mem::take(&mut self.out)
    }

    /// Earliest pending timer.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.halted.is_some() {
            return None;
        }
        self.timers.iter().map(|t| t.0).min()
    }

    fn quorum(&self) -> u64 {
        #[cfg(feature = "planted-bugs")]
        if self.cfg.planted.weak_quorum {
            return self.registry.total_weight() / 2 + 1;
        }
        self.registry.quorum()
    }

    fn slot(&self, round: u32) -> Slot {
        Slot {
            chain_id: self.chain_id,
            epoch: self.registry.epoch(),
            height: self.height,
            round,
        }
    }

    fn check_slot(&self, slot: &Slot) -> Result<(), ConsensusError> {
        if slot.chain_id != self.chain_id {
            return Err(ConsensusError::WrongChain(slot.chain_id));
        }
        if slot.epoch != self.registry.epoch() {
            return Err(ConsensusError::WrongEpoch(slot.epoch));
        }
        if let Some(ev) = &self.halted {
            return Err(ConsensusError::Halted(ev.height()));
        }
        Ok(())
    }

    /// Whether a message at `slot` from `peer` is for this height and a
    /// round we keep. A higher height means we are behind `peer`.
    fn relevant(&mut self, slot: &Slot, peer: PublicKey) -> bool {
        if slot.height > self.height {
            match self.out.behind.iter_mut().find(|(p, _)| *p == peer) {
                Some(b) => b.1 = b.1.max(slot.height),
                None => self.out.behind.push((peer, slot.height)),
            }
            return false;
        }
        slot.height == self.height
            && slot.round <= self.round.saturating_add(self.cfg.max_rounds_ahead)
    }

    fn note_sender(&mut self, round: u32, who: PublicKey) {
        let w = self.registry.weight_of(&who).unwrap_or(0);
        let rs = self.rounds.entry(round).or_default();
        if rs.senders.insert(who) {
            rs.sender_weight += w;
        }
    }

    /// A peer's proposal: [`Checked::proposal`], then
    /// [`Self::handle_checked_proposal`].
    pub fn handle_proposal(
        &mut self,
        now: u64,
        p: Proposal,
        ledger: &dyn BlockLedger,
    ) -> Result<(), ConsensusError> {
        let p = Checked::proposal(p, self.chain_id, &self.registry)?;
        self.handle_checked_proposal(now, p, ledger)
    }

    /// A proposal whose proposer, leadership, format and signatures were
    /// checked ([`Checked::proposal`], off the core thread in the node).
    pub fn handle_checked_proposal(
        &mut self,
        now: u64,
        p: Checked<Proposal>,
        ledger: &dyn BlockLedger,
    ) -> Result<(), ConsensusError> {
        let mut p = p.into_inner();
        self.check_slot(&p.slot)?;
        if !self.relevant(&p.slot, p.proposer) {
            return Ok(());
        }
        let round = p.slot.round;
        let hash = p.block.hash();
        // Only prevotes of the valid round for this block, each verified,
        // are left in a checked proposal's polka.
        for v in std::mem::take(&mut p.polka) {
            self.insert_checked_vote(Checked::trusted(v));
        }
        let rs = self.rounds.entry(round).or_default();
        if let Some(prev) = &rs.proposal {
            if prev.block.hash() != hash {
                // An equivocating leader: keep the first; the round times out
                // or decides on whichever gathers a quorum of prevotes. Both
                // signatures are checked (the first when it arrived).
                let e = BlockEvidence::DoubleProposal {
                    first: SignedProposal::of(prev),
                    second: SignedProposal::of(&p),
                };
                self.stats.equivocations += 1;
                self.keep_evidence(e);
            }
            return Ok(());
        }
        rs.proposal = Some(p.clone());
        self.blocks.entry(hash).or_insert(p.block);
        self.note_sender(round, p.proposer);
        self.progress(now, ledger);
        Ok(())
    }

    /// A peer's vote: [`Checked::vote`], then [`Self::handle_checked_vote`].
    pub fn handle_vote(
        &mut self,
        now: u64,
        v: BlockVote,
        ledger: &dyn BlockLedger,
    ) -> Result<(), ConsensusError> {
        let v = Checked::vote(v, &self.registry)?;
        self.handle_checked_vote(now, v, ledger)
    }

    /// A vote whose voter and signature were checked ([`Checked::vote`]).
    pub fn handle_checked_vote(
        &mut self,
        now: u64,
        v: Checked<BlockVote>,
        ledger: &dyn BlockLedger,
    ) -> Result<(), ConsensusError> {
        self.check_slot(&v.get().slot)?;
        if !self.relevant(&v.get().slot, v.get().voter) {
            return Ok(());
        }
        self.insert_checked_vote(v);
        self.progress(now, ledger);
        Ok(())
    }

    /// Counts a checked vote of the current height; a second vote of one
    /// voter for another block in one round and step is equivocation.
    fn insert_checked_vote(&mut self, v: Checked<BlockVote>) {
        let v = v.into_inner();
        let held = self.rounds.get(&v.slot.round).and_then(|rs| {
            match v.kind {
                VoteKind::Prevote => &rs.prevotes,
                VoteKind::Precommit => &rs.precommits,
            }
            .by_voter
            .get(&v.voter)
        });
        match held {
            Some(first) if first.block == v.block => {}
            Some(first) => {
                let first = first.clone();
                let Some(w) = self.registry.weight_of(&v.voter) else {
                    return;
                };
                let Some(rs) = self.rounds.get_mut(&v.slot.round) else {
                    return;
                };
                let set = match v.kind {
                    VoteKind::Prevote => &mut rs.prevotes,
                    VoteKind::Precommit => &mut rs.precommits,
                };
                let key = (v.voter, v.block);
                let more = set.equivocations.keys().filter(|k| k.0 == v.voter).count();
                if set.equivocations.contains_key(&key) {
                    return;
                }
                self.stats.equivocations += 1;
                let evidence = BlockEvidence::DoubleVote {
                    first,
                    second: v.clone(),
                };
                if more < MAX_EQUIVOCATIONS {
                    *set.weight.entry(v.block).or_default() += w;
                    set.equivocations.insert(key, v);
                }
                self.keep_evidence(evidence);
            }
            None => self.insert_vote(v),
        }
    }

    /// Counts a vote already checked; the first vote of a voter per round
    /// and step is the one that counts.
    fn insert_vote(&mut self, v: BlockVote) {
        let Some(w) = self.registry.weight_of(&v.voter) else {
            return;
        };
        if v.slot.height != self.height {
            return;
        }
        let round = v.slot.round;
        let rs = self.rounds.entry(round).or_default();
        let set = match v.kind {
            VoteKind::Prevote => &mut rs.prevotes,
            VoteKind::Precommit => &mut rs.precommits,
        };
        if set.by_voter.contains_key(&v.voter) {
            return;
        }
        *set.weight.entry(v.block).or_default() += w;
        set.total += w;
        let voter = v.voter;
        set.by_voter.insert(voter, v);
        self.note_sender(round, voter);
    }

    /// The prevotes of `round` for `block` that this node holds.
    fn polka_votes(&self, round: u32, block: BlockHash) -> Vec<BlockVote> {
        self.rounds.get(&round).map_or_else(Vec::new, |rs| {
            rs.prevotes.votes_for(Some(block)).cloned().collect()
        })
    }

    /// A committed block with its certificate from a peer:
    /// [`Checked::commit`], then [`Self::handle_checked_commit`].
    pub fn handle_commit(
        &mut self,
        now: u64,
        block: Block,
        cert: CommitCertificate,
        ledger: &dyn BlockLedger,
    ) -> Result<bool, ConsensusError> {
        let c = Checked::commit(
            CommittedBlock { block, cert },
            self.chain_id,
            &self.registry,
        )?;
        self.handle_checked_commit(now, c, ledger)
    }

    /// A committed block whose certificate was checked ([`Checked::commit`])
    /// from a peer (sync, or a node that missed the precommits). Applied if
    /// it extends the tip; a second valid certificate at the tip's height
    /// for another block is a fork.
    pub fn handle_checked_commit(
        &mut self,
        now: u64,
        c: Checked<CommittedBlock>,
        ledger: &dyn BlockLedger,
    ) -> Result<bool, ConsensusError> {
        let CommittedBlock { block, cert } = c.into_inner();
        self.check_slot(&cert.slot)?;
        let hash = block.hash();
        if block.height() == self.tip.height && hash != self.tip.hash {
            if let Some(mine) = self.tip_cert.clone() {
                self.fork(ForkEvidence {
                    first: mine,
                    second: cert,
                });
            }
            return Ok(false);
        }
        if block.height() != self.height {
            return Ok(false);
        }
        if block.header.prev != self.tip.hash
            || block.header.chain_id != self.chain_id
            || block.header.epoch != self.registry.epoch()
        {
            return Err(ConsensusError::NotExtendingTip {
                height: block.height(),
            });
        }
        self.stats.synced_blocks += 1;
        self.commit(now, block, cert);
        self.progress(now, ledger);
        Ok(true)
    }

    /// Records a fork found elsewhere (e.g. against a stored block below
    /// the tip) and stops block processing.
    pub fn fork(&mut self, evidence: ForkEvidence) {
        if self.halted.is_none() {
            self.stats.forks += 1;
            self.out
                .writes
                .push(ConsensusWrite::Fork(Box::new(evidence.clone())));
            self.halted = Some(evidence);
            self.timers.clear();
        }
    }

    pub fn handle_timeout(&mut self, now: u64, ledger: &dyn BlockLedger) {
        if self.halted.is_some() {
            return;
        }
        self.now = self.now.max(now);
        let mut due: Vec<(u64, Timer, u64, u32)> = Vec::new();
        self.timers.retain(|t| {
            if t.0 <= now {
                due.push(*t);
                false
            } else {
                true
            }
        });
        due.sort();
        for (_, timer, height, round) in due {
            if height != self.height || round != self.round {
                continue;
            }
            match timer {
                Timer::StartHeight if !self.started => {
                    self.started = true;
                    self.height_started_ms = Some(now);
                    self.start_round(now, 0, ledger);
                }
                Timer::Propose if self.step == Step::Propose => {
                    self.prevote(None);
                }
                Timer::Prevote if self.step == Step::Prevote => {
                    self.precommit(None);
                }
                Timer::Precommit => {
                    self.start_round(now, round + 1, ledger);
                }
                _ => {}
            }
        }
        self.progress(now, ledger);
    }

    fn schedule(&mut self, at: u64, timer: Timer, round: u32) {
        self.timers.push((at, timer, self.height, round));
    }

    fn start_round(&mut self, now: u64, round: u32, ledger: &dyn BlockLedger) {
        self.now = self.now.max(now);
        if round > 0 && round > self.round {
            self.stats.view_changes += 1;
        }
        self.round = round;
        self.step = Step::Propose;
        let keep_from = round.saturating_sub(self.cfg.max_rounds_ahead);
        let keep: Vec<u32> = [self.locked, self.valid]
            .iter()
            .flatten()
            .map(|(r, _)| *r)
            .collect();
        self.rounds
            .retain(|r, _| *r >= keep_from || keep.contains(r));
        self.rounds.entry(round).or_default();
        let t = self.cfg.backoff(self.cfg.propose_timeout_ms, round);
        self.schedule(now + t, Timer::Propose, round);
        self.relay_valid();
        if leader(self.chain_id, &self.registry, self.height, round) == self.me {
            self.propose(now, round, ledger);
        }
    }

    /// At a view change, a node that saw a polka (its `valid` block, which
    /// it may be locked on) sends that round's proposal and prevotes again.
    /// Nothing re-sends votes otherwise: peers that lost them (a partition,
    /// a restart) could not know the polka, so every other leader proposed
    /// a fresh block the locked nodes refused, and blocks waited until a
    /// locked node led a round. With the polka, the next leader re-proposes
    /// its block (the late-polka rule in `step_once`).
    fn relay_valid(&mut self) {
        let Some((vr, h)) = self.valid else {
            return;
        };
        if vr >= self.round {
            return;
        }
        if let Some(p) = self.rounds.get(&vr).and_then(|rs| rs.proposal.clone()) {
            if p.block.hash() == h {
                self.out
                    .broadcasts
                    .push(ConsensusMessage::Proposal(Box::new(p)));
            }
        }
        for v in self.polka_votes(vr, h) {
            self.out.broadcasts.push(ConsensusMessage::Vote(v));
        }
    }

    fn propose(&mut self, now: u64, round: u32, ledger: &dyn BlockLedger) {
        let (block, valid_round) = match self.own.get(&(round, SignedStep::Proposal)) {
            // Proposed here before a restart: the same block or nothing.
            Some(Some(h)) => match self.blocks.get(h) {
                Some(b) => (b.clone(), self.valid.filter(|v| v.1 == *h).map(|v| v.0)),
                None => return,
            },
            Some(None) => return,
            None => match self
                .valid
                .and_then(|(r, h)| self.blocks.get(&h).map(|b| (r, b)))
            {
                Some((r, b)) => (b.clone(), Some(r)),
                None => {
                    let body_max = self
                        .cfg
                        .max_block_bytes
                        .saturating_sub(crate::blocks::block::BlockHeader::ENCODED_LEN + 4);
                    let b = Block::new(
                        self.chain_id,
                        self.registry.epoch(),
                        self.height,
                        self.tip.hash,
                        now.max(self.tip.time_ms + 1),
                        self.me,
                        ledger.block_body(body_max),
                    );
                    (b, None)
                }
            },
        };
        let hash = block.hash();
        if self
            .record(round, SignedStep::Proposal, Some(hash))
            .is_none()
        {
            return;
        }
        self.stats.proposals_made += 1;
        self.out
            .writes
            .push(ConsensusWrite::Candidate(Box::new(Candidate {
                block: block.clone(),
                polka: Vec::new(),
            })));
        let mut p = Proposal::sign(self.slot(round), valid_round, block.clone(), &self.key);
        if let Some(vr) = valid_round {
            p.polka = self.polka_votes(vr, hash);
        }
        self.out
            .broadcasts
            .push(ConsensusMessage::Proposal(Box::new(p.clone())));
        self.blocks.entry(hash).or_insert(block);
        let rs = self.rounds.entry(round).or_default();
        rs.proposal = Some(p);
        self.note_sender(round, self.me);
    }

    /// Records a signature about to be made. `None` (and no signature) if a
    /// different one was made for this round and step already; `Some(new)`
    /// otherwise, `new` false for a repeat of the same.
    fn record(&mut self, round: u32, step: SignedStep, block: Option<BlockHash>) -> Option<bool> {
        match self.own.get(&(round, step)) {
            Some(b) if *b == block => Some(false),
            Some(_) => {
                self.stats.refused_conflicting += 1;
                None
            }
            None => {
                self.own.insert((round, step), block);
                self.out.writes.push(ConsensusWrite::OwnVote(OwnBlockVote {
                    height: self.height,
                    round,
                    step,
                    block,
                }));
                Some(true)
            }
        }
    }

    fn vote(&mut self, kind: VoteKind, block: Option<BlockHash>) {
        let round = self.round;
        if self.record(round, SignedStep::of(kind), block).is_none() {
            return;
        }
        let v = BlockVote::sign(self.slot(round), kind, block, &self.key);
        self.out.broadcasts.push(ConsensusMessage::Vote(v.clone()));
        let w = self.registry.weight_of(&self.me).unwrap_or(0);
        let rs = self.rounds.entry(round).or_default();
        let set = match kind {
            VoteKind::Prevote => &mut rs.prevotes,
            VoteKind::Precommit => &mut rs.precommits,
        };
        if !set.by_voter.contains_key(&self.me) {
            *set.weight.entry(block).or_default() += w;
            set.total += w;
            set.by_voter.insert(self.me, v);
        }
        self.note_sender(round, self.me);
    }

    fn prevote(&mut self, block: Option<BlockHash>) {
        self.vote(VoteKind::Prevote, block);
        self.step = Step::Prevote;
        self.arm_vote_timer(Timer::Prevote);
    }

    /// A step's timer runs from the moment this node votes, not only once
    /// a quorum of votes arrived: over a lossy network the quorum may never
    /// arrive, and moving on to the next round is always safe.
    fn arm_vote_timer(&mut self, timer: Timer) {
        let round = self.round;
        let rs = self.rounds.entry(round).or_default();
        let armed = match timer {
            Timer::Prevote => &mut rs.prevote_timer,
            _ => &mut rs.precommit_timer,
        };
        if !*armed {
            *armed = true;
            // The last timestamp the caller passed in; timers are relative.
            let t = self.cfg.backoff(self.cfg.vote_timeout_ms, round);
            self.schedule(self.now + t, timer, round);
        }
    }

    fn precommit(&mut self, block: Option<BlockHash>) {
        if let Some((h, b)) = block.and_then(|h| self.blocks.get(&h).map(|b| (h, b))) {
            let cand = Candidate {
                block: b.clone(),
                polka: self.polka_votes(self.round, h),
            };
            self.out
                .writes
                .push(ConsensusWrite::Candidate(Box::new(cand)));
        }
        self.vote(VoteKind::Precommit, block);
        self.step = Step::Precommit;
        self.arm_vote_timer(Timer::Precommit);
    }

    /// Header and body rules for a proposed block at the current height.
    /// `Wait` when the body holds a payment not final here yet: it may be
    /// one TimeProof behind, so the node waits (until the step's timeout)
    /// instead of voting nil at once, and asks for the proof.
    fn is_valid(&mut self, now: u64, hash: &BlockHash, ledger: &dyn BlockLedger) -> Validity {
        if self.valid_cache.contains(hash) {
            return Validity::Valid;
        }
        let Some(b) = self.blocks.get(hash) else {
            return Validity::Invalid;
        };
        let h = &b.header;
        let ok = h.chain_id == self.chain_id
            && h.epoch == self.registry.epoch()
            && h.height == self.height
            && h.prev == self.tip.hash
            && h.time_ms > self.tip.time_ms
            && h.time_ms <= now.saturating_add(self.cfg.max_clock_drift_ms)
            && self.registry.weight_of(&h.proposer).is_some()
            && b.check_format().is_ok();
        let body = if ok { ledger.check_body(b) } else { Ok(()) };
        match body {
            Ok(()) if ok => {
                self.valid_cache.insert(*hash);
                Validity::Valid
            }
            Err(BodyRejection::NotFinal(txid)) => {
                if !self.out.missing.contains(&txid) {
                    self.out.missing.push(txid);
                }
                Validity::Wait
            }
            Err(BodyRejection::Conflicts { txid, final_tx }) => {
                // A Byzantine proposer: the block spends what a payment
                // final here spent. Kept with the proposal's signature.
                self.stats.invalid_proposals += 1;
                if let Some(e) = self.conflict_evidence(hash, txid, final_tx) {
                    self.keep_evidence(e);
                }
                Validity::Invalid
            }
            _ => {
                self.stats.invalid_proposals += 1;
                Validity::Invalid
            }
        }
    }

    /// Evidence against the signed proposal of block `hash` whose
    /// transaction `txid` conflicts with the final payment `final_tx`.
    fn conflict_evidence(
        &self,
        hash: &BlockHash,
        txid: Txid,
        final_tx: Txid,
    ) -> Option<BlockEvidence> {
        let p = self
            .rounds
            .values()
            .filter_map(|rs| rs.proposal.as_ref())
            .find(|p| p.block.hash() == *hash)?;
        let index = p.block.transactions.iter().position(|t| t.txid() == txid)?;
        Some(BlockEvidence::ConflictingProposal {
            proposal: SignedProposal::of(p),
            header: p.block.header,
            tx: p.block.transactions[index].clone(),
            index: index as u32,
            path: p.block.tx_path(index),
            final_tx,
        })
    }

    /// The ledger changed (payments became final here): a proposal this
    /// node was waiting on may be valid now.
    pub fn recheck(&mut self, now: u64, ledger: &dyn BlockLedger) {
        self.progress(now, ledger);
    }

    fn weight_for(&self, round: u32, kind: VoteKind, block: Option<BlockHash>) -> u64 {
        self.rounds.get(&round).map_or(0, |rs| {
            let set = match kind {
                VoteKind::Prevote => &rs.prevotes,
                VoteKind::Precommit => &rs.precommits,
            };
            set.weight.get(&block).copied().unwrap_or(0)
        })
    }

    /// Applies every rule that can fire until none does.
    fn progress(&mut self, now: u64, ledger: &dyn BlockLedger) {
        self.now = self.now.max(now);
        while self.halted.is_none() && self.started && self.step_once(now, ledger) {}
    }

    fn step_once(&mut self, now: u64, ledger: &dyn BlockLedger) -> bool {
        let q = self.quorum();
        // Commit: a quorum of precommits for a block we hold, in any round.
        let decided = self.rounds.iter().find_map(|(r, rs)| {
            rs.precommits
                .weight
                .iter()
                .find(|(b, w)| b.is_some() && **w >= q)
                .and_then(|(b, _)| b.filter(|h| self.blocks.contains_key(h)))
                .map(|h| (*r, h))
        });
        if let Some((r, h)) = decided {
            let rs = &self.rounds[&r];
            let votes: Vec<&BlockVote> = rs.precommits.votes_for(Some(h)).collect();
            let cert = CommitCertificate::from_precommits(self.slot(r), h, &votes, &self.registry);
            let block = self.blocks[&h].clone();
            self.commit(now, block, cert);
            return true;
        }
        // Round skip: more than a third of the weight is in a later round.
        let total = self.registry.total_weight();
        let skip = self
            .rounds
            .range(self.round + 1..)
            .find(|(_, rs)| rs.sender_weight * 3 > total)
            .map(|(r, _)| *r);
        if let Some(r) = skip {
            self.start_round(now, r, ledger);
            return true;
        }
        // A polka that completed only after this node left its round (a
        // late or restarted voter): remember it as `valid`, so this node,
        // when it leads, re-proposes that block with its polka instead of a
        // fresh one that a node locked on it would refuse. Safe: receivers
        // check the polka themselves; locks are untouched.
        let late = self.rounds.range(..self.round).rev().find_map(|(r, rs)| {
            if self.valid.is_some_and(|(vr, _)| vr >= *r) {
                return None;
            }
            rs.prevotes
                .weight
                .iter()
                .find(|(b, w)| b.is_some() && **w >= q)
                .and_then(|(b, _)| b.filter(|h| self.blocks.contains_key(h)))
                .map(|h| (*r, h))
        });
        if let Some((r, h)) = late {
            if self.is_valid(now, &h, ledger) == Validity::Valid {
                self.valid = Some((r, h));
                return true;
            }
        }
        let round = self.round;
        let proposal = self.rounds.get(&round).and_then(|rs| {
            rs.proposal
                .as_ref()
                .map(|p| (p.block.hash(), p.valid_round))
        });
        if self.step == Step::Propose {
            if let Some((h, vr)) = proposal {
                let vote = match vr {
                    None => {
                        let ok = match self.is_valid(now, &h, ledger) {
                            Validity::Wait => return false,
                            v => v == Validity::Valid,
                        };
                        (ok && self.locked.is_none_or(|(_, l)| l == h)).then_some(h)
                    }
                    Some(vr)
                        if vr < round && self.weight_for(vr, VoteKind::Prevote, Some(h)) >= q =>
                    {
                        let ok = match self.is_valid(now, &h, ledger) {
                            Validity::Wait => return false,
                            v => v == Validity::Valid,
                        };
                        (ok && self.locked.is_none_or(|(lr, l)| lr <= vr || l == h)).then_some(h)
                    }
                    // Waits for the prevotes of the valid round (or the timeout).
                    Some(_) => return false,
                };
                self.prevote(vote);
                return true;
            }
        }
        let (prevote_total, precommit_total) = self
            .rounds
            .get(&round)
            .map_or((0, 0), |rs| (rs.prevotes.total, rs.precommits.total));
        if self.step == Step::Prevote && prevote_total >= q {
            self.arm_vote_timer(Timer::Prevote);
        }
        if self.step >= Step::Prevote {
            if let Some((h, _)) = proposal {
                let polka = self.weight_for(round, VoteKind::Prevote, Some(h)) >= q;
                let seen = self.rounds.get(&round).is_some_and(|rs| rs.polka_seen);
                if polka && !seen && self.is_valid(now, &h, ledger) == Validity::Valid {
                    self.rounds.entry(round).or_default().polka_seen = true;
                    if self.step == Step::Prevote {
                        self.locked = Some((round, h));
                        self.precommit(Some(h));
                    }
                    self.valid = Some((round, h));
                    return true;
                }
            }
        }
        if self.step == Step::Prevote && self.weight_for(round, VoteKind::Prevote, None) >= q {
            self.precommit(None);
            return true;
        }
        if precommit_total >= q {
            self.arm_vote_timer(Timer::Precommit);
        }
        false
    }

    fn commit(&mut self, now: u64, block: Block, cert: CommitCertificate) {
        self.stats.committed += 1;
        if let Some(at) = self.height_started_ms.take() {
            // Heights this node took part in (not those synced before they began).
            self.stats.commit_time.observe(now.saturating_sub(at));
            self.stats.commit_rounds.observe(cert.slot.round as u64);
        }
        self.tip = ChainTip {
            height: block.height(),
            hash: block.hash(),
            time_ms: block.header.time_ms,
        };
        self.tip_cert = Some(cert.clone());
        self.out
            .writes
            .push(ConsensusWrite::Committed(Box::new(CommittedBlock {
                block,
                cert,
            })));
        self.height = self.tip.height + 1;
        self.round = 0;
        self.step = Step::Propose;
        self.started = false;
        self.locked = None;
        self.valid = None;
        self.rounds.clear();
        self.blocks.clear();
        self.valid_cache.clear();
        self.own.clear();
        self.timers.clear();
        self.schedule(now + self.cfg.block_interval_ms, Timer::StartHeight, 0);
    }
}
