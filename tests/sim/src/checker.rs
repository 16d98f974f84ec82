//! The invariants, checked on every round an honest masternode produces
//! (before its writes are applied and its messages leave), at every restart,
//! and at the end of the run.
//!
//! - safety: no two conflicting transactions are ever both finalized, at any
//!   honest masternode; every TimeProof verifies and carries more than 2/3 of
//!   the weight;
//! - votes: no honest masternode ever signs approvals for two transactions
//!   spending a common outpoint, nor two different decisions on one
//!   transaction, restarts included (checked on its vote-log writes, which is
//!   everything it ever signs); no honest node is reported as an equivocator;
//! - durability: no write turns an output this node finalized or voted to
//!   lock back into an unspent one, and nothing final or locked is lost
//!   across a restart;
//! - agreement: honest masternodes agree on the final state of every output;
//! - liveness: an honest wallet's payment is final within a bound while the
//!   network is calm, and once every partition has healed it is final and
//!   every honest node that approved it has finalized it;
//! - catch-up: at the end (after the final heal and a settle period) every
//!   honest node that is up holds every transaction any honest node
//!   finalized, as final, with a stored proof that verifies; and a restarted
//!   node, once connected to a quorum, knows within [`CATCH_UP_BOUND`] every
//!   transaction that was final at an honest node before its restart (of
//!   those its connected peers hold);
//! - no honest node meets conflicting TimeProofs while the Byzantine weight
//!   is below 1/3.
//!
//! A violation the checker can trace to an engine bug already reported (see
//! [`KnownIssue`]) is marked with it, so a batch can tell new failures from
//! known ones; `--strict` treats both alike.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use timecoin_core::masternode::Round;
use timecoin_core::protocol::engine::{ConflictRecord, Engine, Event};
use timecoin_core::protocol::registry::Registry;
use timecoin_core::protocol::timeproof::TimeProof;
use timecoin_core::protocol::types::{OutPoint, PublicKey, Transaction, Txid};
use timecoin_core::protocol::utxo::UtxoState;
use timecoin_core::protocol::validation::RejectCode;
use timecoin_core::protocol::vote::Decision;
use timecoin_core::storage::{MemoryStore, Store, Write};

use crate::config::{Micros, CHAIN_ID, MS, SEC};

/// The block layer's invariants.
#[path = "checker_blocks.rs"]
pub mod blocks;

/// How soon a restarted node, connected to a quorum, must know what was
/// final before its restart.
pub const CATCH_UP_BOUND: Micros = 10 * SEC;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ViolationKind {
    /// Two conflicting transactions both finalized at honest masternodes.
    DoubleFinality,
    /// A finalized transaction's TimeProof does not verify or is too light.
    InvalidProof,
    /// An honest masternode approved two transactions spending one outpoint.
    ConflictingVotes,
    /// An honest masternode signed two different decisions on one transaction.
    DecisionFlip,
    /// An honest masternode was reported as an equivocator.
    HonestAccused,
    /// A durable write set an output this node finalized or voted to lock
    /// back to unspent.
    DurableRegression,
    /// A node finalized a transaction without recording its inputs as spent.
    InputsNotRecorded,
    /// A restarted masternode lost a finality it had reached.
    FinalityLost,
    /// A restarted masternode lost a lock it had voted for.
    LockLost,
    /// Honest masternodes hold different final states for one output.
    Disagreement,
    /// An honest payment was not final within the bound while all was calm.
    LivenessBound,
    /// An honest payment did not resolve after healing.
    LivenessEnd,
    /// An honest node met conflicting TimeProofs while the Byzantine weight
    /// was below 1/3.
    ConflictingProofs,
    /// At the end, an honest node that is up does not hold a transaction
    /// another honest node finalized (as final, with a proof that verifies).
    NotLearned,
    /// A restarted node connected to a quorum did not learn, within the
    /// bound, what was final before its restart.
    CatchUpBound,
    /// Two different blocks committed at one height at honest masternodes.
    BlockFork,
    /// An honest node's committed block does not extend the block it
    /// committed before (its chain is not a chain), or a restart lost a
    /// committed block.
    BlockChain,
    /// A committed block's certificate does not verify against the
    /// registry (too light, a bad signature, another block or height).
    BlockCertificate,
    /// A committed block contradicts a TimeProof: it holds a payment no
    /// honest node holds a TimeProof for, one that conflicts with a final
    /// payment, or one already in an earlier block (or a conflicting one).
    BlockContradiction,
    /// An honest node signed two different block messages for one height,
    /// round and step (proposal, prevote, precommit), restarts included.
    BlockVoteConflict,
    /// A final payment was not in a committed block within the bound while
    /// the network was calm.
    ConfirmBound,
    /// No block was committed for the bound while the network was calm.
    BlockStall,
    /// At the end an honest node's chain lacks a payment honest nodes
    /// finalized.
    NotConfirmed,
}

impl ViolationKind {
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::DoubleFinality => "double-finality",
            ViolationKind::InvalidProof => "invalid-proof",
            ViolationKind::ConflictingVotes => "conflicting-votes",
            ViolationKind::DecisionFlip => "decision-flip",
            ViolationKind::HonestAccused => "honest-accused",
            ViolationKind::DurableRegression => "durable-regression",
            ViolationKind::InputsNotRecorded => "inputs-not-recorded",
            ViolationKind::FinalityLost => "finality-lost",
            ViolationKind::LockLost => "lock-lost",
            ViolationKind::Disagreement => "disagreement",
            ViolationKind::LivenessBound => "liveness-bound",
            ViolationKind::LivenessEnd => "liveness-end",
            ViolationKind::ConflictingProofs => "conflicting-proofs",
            ViolationKind::NotLearned => "not-learned",
            ViolationKind::CatchUpBound => "catch-up-bound",
            ViolationKind::BlockFork => "block-fork",
            ViolationKind::BlockChain => "block-chain",
            ViolationKind::BlockCertificate => "block-certificate",
            ViolationKind::BlockContradiction => "block-contradiction",
            ViolationKind::BlockVoteConflict => "block-vote-conflict",
            ViolationKind::ConfirmBound => "confirm-bound",
            ViolationKind::BlockStall => "block-stall",
            ViolationKind::NotConfirmed => "not-confirmed",
        }
    }
    pub fn is_safety(self) -> bool {
        !matches!(
            self,
            ViolationKind::LivenessBound
                | ViolationKind::LivenessEnd
                | ViolationKind::NotLearned
                | ViolationKind::CatchUpBound
                | ViolationKind::ConfirmBound
                | ViolationKind::BlockStall
                | ViolationKind::NotConfirmed
        )
    }
}

/// Engine bugs this simulator found and reported, recognised by their
/// evidence. Each entry goes away when the engine is fixed (then `--strict`
/// and the plain run agree again).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KnownIssue {
    /// `Engine::finalize` writes `PutUtxo(out, Unspent)` for every output of
    /// the transaction even when the output is already known and spent or
    /// locked (memory keeps the old state via `or_insert`, the store gets
    /// Unspent). Reached whenever a proof for an already-final transaction
    /// arrives after its record was trimmed (`decided_retention_ms`) or lost
    /// in a restart (`Engine::new` restores no finalized records). After a
    /// restart the node treats a final or voted output as unspent and may
    /// approve a double spend of it.
    RefinalizeOverwritesOutputs,
    /// After a restart (`Engine::new` drops `my_votes` of finalized txids) or
    /// after the record is trimmed, a copy of a final transaction is refused
    /// as `InputSpent` (its inputs are spent by itself) and, from a peer,
    /// gets a signed Reject: the node flips its own earlier vote.
    RevotesFinalTx,
    /// A refusal for a reason that belongs to the bytes or the moment, not
    /// to the txid (a bad signature, which the txid does not cover; an
    /// orphan's parent not yet known) is recorded under the txid and, for a
    /// peer's copy, signed as a Reject: the valid transaction is then ignored
    /// as a duplicate until the record is trimmed, and the node can never
    /// approve it. A Byzantine peer that malleates a signature first can
    /// censor a payment this way.
    StickyRefusal,
    /// `Engine::handle_proof` finalizes a transaction it already knows (even
    /// one it refused, e.g. an expired orphan) without checking that its
    /// inputs are known here; `finalize` skips unknown inputs. Nothing
    /// records that the parent's output is spent: when the parent arrives
    /// later, that output is created Unspent, and the node can approve a
    /// double spend of it.
    FinalizesWithoutInputs,
    /// Block layer: `Masternode::new` starts with an empty queue of final,
    /// unconfirmed payments (PROTOCOL.md, "Blocks", not done yet), so a
    /// payment final before a node's restart is proposed only by nodes
    /// that did not restart since. When every node that held it restarted,
    /// no block ever holds it; when only light nodes hold it, it waits for
    /// them to lead. Evidence: an honest node that had finalized it
    /// restarted while it was not yet in a block.
    UnconfirmedLostAtRestart,
}

impl KnownIssue {
    pub fn name(self) -> &'static str {
        match self {
            KnownIssue::RefinalizeOverwritesOutputs => "refinalize-overwrites-outputs",
            KnownIssue::RevotesFinalTx => "revotes-final-tx",
            KnownIssue::StickyRefusal => "sticky-refusal",
            KnownIssue::FinalizesWithoutInputs => "finalizes-without-inputs",
            KnownIssue::UnconfirmedLostAtRestart => "unconfirmed-lost-at-restart",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub kind: ViolationKind,
    pub at: Micros,
    pub node: Option<usize>,
    pub detail: String,
    /// The reported engine bug this is evidence of, if the checker can tell.
    pub known: Option<KnownIssue>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} at {} ms", self.kind.name(), self.at / MS)?;
        if let Some(n) = self.node {
            write!(f, ", node {n}")?;
        }
        write!(f, "] {}", self.detail)?;
        if let Some(k) = self.known {
            write!(f, " (known engine issue: {})", k.name())?;
        }
        Ok(())
    }
}

/// A payment an honest wallet made.
#[derive(Clone, Debug)]
pub struct Payment {
    pub wallet: usize,
    pub first_submit: Micros,
    /// When an honest masternode that was up first received it: the bound
    /// runs from here (a wallet may first try a Byzantine or crashed node).
    pub first_honest: Option<Micros>,
}

#[derive(Default)]
struct NodeView {
    /// Outpoint -> the transaction this node approved spending it.
    approved: HashMap<OutPoint, Txid>,
    decisions: HashMap<Txid, Decision>,
    /// Outpoint -> the finalized transaction spending it, as this node saw it.
    final_inputs: BTreeMap<OutPoint, Txid>,
    finalized: BTreeMap<Txid, Micros>,
    /// Outputs a write of this node turned back to unspent.
    regressed: BTreeSet<OutPoint>,
    /// Inputs of transactions it finalized that it did not record as spent.
    unrecorded: BTreeSet<OutPoint>,
    /// Transactions this node re-voted on after finalizing them.
    revoted: BTreeSet<Txid>,
}

/// A restarted node's catch-up, watched until checked once.
struct Watch {
    node: usize,
    restart_at: Micros,
    /// Final at some honest node before the restart.
    wanted: Vec<Txid>,
    /// Since when the node's links have been unchanged with a quorum
    /// connected (None: not connected to a quorum).
    since: Option<Micros>,
}

pub struct Checker {
    registry: Registry,
    /// Byzantine weight below 1/3: conflicting proofs are a violation.
    byz_safe: bool,
    watches: BTreeMap<usize, Watch>,
    next_watch: usize,
    honest: Vec<bool>,
    keys: Vec<PublicKey>,
    /// Every transaction any wallet ever built.
    txs: HashMap<Txid, Transaction>,
    payments: BTreeMap<Txid, Payment>,
    /// Across all honest nodes: outpoint -> (finalized spender, node, time).
    final_spend: HashMap<OutPoint, (Txid, usize, Micros)>,
    views: Vec<NodeView>,
    proof_ok: HashMap<[u8; 32], bool>,
    /// Txids an honest node refused for a bad signature or a missing parent.
    transient_refusals: BTreeSet<Txid>,
    pub violations: Vec<Violation>,
    pub conflicting_proofs: Vec<(usize, ConflictRecord)>,
    pub equivocations_seen: u64,
    pub finality_events: u64,
    pub unknown_tx_votes: u64,
    /// Restart catch-up windows evaluated (and how many transactions they
    /// required).
    pub catch_up_windows: u64,
    pub catch_up_required: u64,
    reported: BTreeSet<(ViolationKind, Option<usize>, String)>,
    pub blocks: blocks::BlockChecks,
}

impl Checker {
    /// The payment evidence honest nodes stored: every record verifies
    /// offline and accuses a Byzantine node (`honest-accused`). Returns how
    /// many records of each kind were checked.
    pub fn check_payment_evidence(
        &mut self,
        at: Micros,
        nodes: &[(
            usize,
            Vec<timecoin_core::protocol::evidence::Equivocation>,
            Vec<timecoin_core::protocol::evidence::ConflictingApprovals>,
        )],
    ) -> (u64, u64) {
        let mut n = (0, 0);
        for (node, decisions, approvals) in nodes {
            let records = decisions
                .iter()
                .map(|e| {
                    (
                        e.voter(),
                        e.verify(CHAIN_ID, &self.registry),
                        "two decisions",
                    )
                })
                .chain(approvals.iter().map(|e| {
                    (
                        e.voter(),
                        e.verify(CHAIN_ID, &self.registry),
                        "conflicting approvals",
                    )
                }))
                .collect::<Vec<_>>();
            for (offender, verifies, kind) in records {
                let honest = self
                    .keys
                    .iter()
                    .position(|k| *k == offender)
                    .is_some_and(|v| self.honest[v]);
                if honest || !verifies {
                    self.violate(
                        ViolationKind::HonestAccused,
                        at,
                        Some(*node),
                        format!("{offender} {kind}"),
                        None,
                        format!(
                            "node {node} keeps {kind} evidence against {offender} (honest: {honest}, verifies: {verifies})"
                        ),
                    );
                }
            }
            n.0 += decisions.len() as u64;
            n.1 += approvals.len() as u64;
        }
        n
    }

    pub fn new(
        registry: Registry,
        honest: Vec<bool>,
        keys: Vec<PublicKey>,
        byz_safe: bool,
    ) -> Self {
        let n = honest.len();
        Checker {
            registry,
            byz_safe,
            watches: BTreeMap::new(),
            next_watch: 0,
            honest,
            keys,
            txs: HashMap::new(),
            payments: BTreeMap::new(),
            final_spend: HashMap::new(),
            views: (0..n).map(|_| NodeView::default()).collect(),
            proof_ok: HashMap::new(),
            transient_refusals: BTreeSet::new(),
            violations: Vec::new(),
            conflicting_proofs: Vec::new(),
            equivocations_seen: 0,
            finality_events: 0,
            unknown_tx_votes: 0,
            catch_up_windows: 0,
            catch_up_required: 0,
            reported: BTreeSet::new(),
            blocks: blocks::BlockChecks::new(n),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn violate(
        &mut self,
        kind: ViolationKind,
        at: Micros,
        node: Option<usize>,
        key: String,
        known: Option<KnownIssue>,
        detail: String,
    ) {
        // One report per distinct fact, however often it is observed.
        if self.reported.insert((kind, node, key)) {
            self.violations.push(Violation {
                kind,
                at,
                node,
                detail,
                known,
            });
        }
    }

    pub fn register_tx(&mut self, tx: &Transaction) {
        self.txs.entry(tx.txid()).or_insert_with(|| tx.clone());
    }

    pub fn register_payment(&mut self, txid: Txid, p: Payment) {
        self.payments.entry(txid).or_insert(p);
    }

    /// An honest, running masternode received the payment from its wallet.
    pub fn on_submitted(&mut self, txid: &Txid, at: Micros) {
        if let Some(p) = self.payments.get_mut(txid) {
            p.first_honest.get_or_insert(at);
        }
    }

    pub fn tx(&self, txid: &Txid) -> Option<&Transaction> {
        self.txs.get(txid)
    }

    pub fn finalized_at(&self, node: usize, txid: &Txid) -> Option<Micros> {
        self.views[node].finalized.get(txid).copied()
    }

    /// Everything one honest round signs, writes and reports, before the
    /// writes are applied.
    pub fn on_round(&mut self, node: usize, at: Micros, round: &Round) {
        self.on_round_payments(node, at, round);
        // After the round's finality events: a block may hold a payment
        // that became final in the same round.
        for w in &round.writes {
            match w {
                Write::PutBlock(c) => self.on_committed_block(node, at, c),
                Write::AppendOwnBlockVote(v) => self.on_own_block_vote(node, at, v),
                _ => {}
            }
        }
    }

    fn on_round_payments(&mut self, node: usize, at: Micros, round: &Round) {
        for w in &round.writes {
            match w {
                Write::AppendOwnVotes(batch) => {
                    for item in &batch.items {
                        self.on_own_vote(node, at, item.txid, item.decision);
                    }
                }
                Write::PutUtxo(op, e) if e.state == UtxoState::Unspent => {
                    self.on_unspent_write(node, at, *op)
                }
                _ => {}
            }
        }
        for ev in &round.events {
            match ev {
                Event::Finalized {
                    txid, proof, tx, ..
                } => self.on_finalized(node, at, *txid, proof, tx),
                Event::ConflictingProofs(rec) => {
                    self.conflicting_proofs.push((node, rec.clone()));
                    if self.byz_safe {
                        self.violate(
                            ViolationKind::ConflictingProofs,
                            at,
                            Some(node),
                            format!("{}", rec.outpoint),
                            None,
                            format!(
                                "node {node} holds conflicting TimeProofs on {:?}:{} ({:?} weight {}, {:?} weight {}) with Byzantine weight below 1/3",
                                rec.outpoint.txid,
                                rec.outpoint.vout,
                                rec.kept,
                                rec.kept_weight,
                                rec.competing,
                                rec.competing_weight
                            ),
                        );
                    }
                }
                Event::Rejected { txid, reason, .. } => {
                    if matches!(reason, RejectCode::UnknownInput | RejectCode::BadSignature) {
                        self.transient_refusals.insert(*txid);
                    }
                }
                Event::Equivocation { voter, txid } => {
                    self.equivocations_seen += 1;
                    if let Some(v) = self.keys.iter().position(|k| k == voter) {
                        if self.honest[v] {
                            let known = self.views[v]
                                .revoted
                                .contains(txid)
                                .then_some(KnownIssue::RevotesFinalTx);
                            self.violate(
                                ViolationKind::HonestAccused,
                                at,
                                Some(node),
                                format!("{v} {txid}"),
                                known,
                                format!("node {node} reports honest node {v} as equivocating on {txid:?}"),
                            );
                        }
                    }
                }
                Event::Accepted { .. } => {}
            }
        }
    }

    /// After the round is applied: every input of a transaction finalized in
    /// it is recorded as spent by it.
    pub fn after_round(&mut self, node: usize, at: Micros, round: &Round, engine: &Engine) {
        for ev in &round.events {
            let Event::Finalized { txid, tx, .. } = ev else {
                continue;
            };
            for i in &tx.inputs {
                if engine.utxo(&i.prev).is_none() {
                    self.views[node].unrecorded.insert(i.prev);
                    self.violate(
                        ViolationKind::InputsNotRecorded,
                        at,
                        Some(node),
                        format!("{}", i.prev),
                        Some(KnownIssue::FinalizesWithoutInputs),
                        format!(
                            "node {node} finalized {txid:?} but does not know its input {:?}:{}",
                            i.prev.txid, i.prev.vout
                        ),
                    );
                }
            }
        }
    }

    fn on_unspent_write(&mut self, node: usize, at: Micros, op: OutPoint) {
        let view = &self.views[node];
        // Re-finalization writes a known output again; a first write of an
        // output already spent by a final child is the missing-input case.
        let known = if view.finalized.contains_key(&op.txid) {
            Some(KnownIssue::RefinalizeOverwritesOutputs)
        } else if view.unrecorded.contains(&op) {
            Some(KnownIssue::FinalizesWithoutInputs)
        } else {
            None
        };
        let why = if let Some(t) = view.final_inputs.get(&op) {
            format!("{t:?} spending it was final there")
        } else if let Some(t) = view.approved.get(&op) {
            format!("it had signed an approval of {t:?} spending it")
        } else {
            return;
        };
        if known != Some(KnownIssue::FinalizesWithoutInputs) {
            self.views[node].regressed.insert(op);
        }
        self.violate(
            ViolationKind::DurableRegression,
            at,
            Some(node),
            format!("{op}"),
            known,
            format!(
                "node {node} writes {:?}:{} as unspent to its store; {why}",
                op.txid, op.vout
            ),
        );
    }

    fn on_own_vote(&mut self, node: usize, at: Micros, txid: Txid, decision: Decision) {
        let view = &mut self.views[node];
        if let Some(prev) = view.decisions.insert(txid, decision) {
            if prev != decision {
                let known = match decision {
                    Decision::Reject(RejectCode::InputSpent)
                        if view.finalized.contains_key(&txid) =>
                    {
                        Some(KnownIssue::RevotesFinalTx)
                    }
                    Decision::Reject(RejectCode::BadSignature | RejectCode::UnknownInput) => {
                        Some(KnownIssue::StickyRefusal)
                    }
                    // An input this node had written back to unspent got
                    // locked by a double spend: the flip follows from that.
                    Decision::Reject(RejectCode::InputLocked)
                        if self.txs.get(&txid).is_some_and(|tx| {
                            tx.inputs.iter().any(|i| view.regressed.contains(&i.prev))
                        }) =>
                    {
                        Some(KnownIssue::RefinalizeOverwritesOutputs)
                    }
                    _ => None,
                };
                if known.is_some() {
                    view.revoted.insert(txid);
                }
                self.violate(
                    ViolationKind::DecisionFlip,
                    at,
                    Some(node),
                    format!("{txid}"),
                    known,
                    format!("node {node} signed {prev:?} and then {decision:?} on {txid:?}"),
                );
            }
        }
        if !decision.is_approve() {
            return;
        }
        let Some(tx) = self.txs.get(&txid) else {
            self.unknown_tx_votes += 1;
            return;
        };
        let inputs: Vec<OutPoint> = tx.inputs.iter().map(|i| i.prev).collect();
        for op in inputs {
            let view = &mut self.views[node];
            match view.approved.get(&op) {
                Some(&other) if other != txid => {
                    let known = if view.regressed.contains(&op) {
                        Some(KnownIssue::RefinalizeOverwritesOutputs)
                    } else {
                        view.unrecorded
                            .contains(&op)
                            .then_some(KnownIssue::FinalizesWithoutInputs)
                    };
                    self.violate(
                        ViolationKind::ConflictingVotes,
                        at,
                        Some(node),
                        format!("{op}"),
                        known,
                        format!(
                            "node {node} approved {txid:?} after approving {other:?}; both spend {:?}:{}",
                            op.txid, op.vout
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    view.approved.insert(op, txid);
                }
            }
        }
    }

    fn proof_verifies(&mut self, proof: &TimeProof) -> Result<(), String> {
        let digest = *blake3::hash(&proof.to_bytes()).as_bytes();
        if let Some(&ok) = self.proof_ok.get(&digest) {
            return if ok {
                Ok(())
            } else {
                Err("(cached) does not verify".into())
            };
        }
        let total = self.registry.total_weight();
        let mut r = match proof.verify(CHAIN_ID, &self.registry) {
            Ok(w) if 3 * w > 2 * total => Ok(()),
            Ok(w) => Err(format!("carries weight {w} of {total}, not more than 2/3")),
            Err(e) => Err(e.to_string()),
        };
        if r.is_ok() {
            // The proof's batch verdict must be every certificate's own (a
            // wallet checks them one by one). Byzantine voters are the ones
            // that sign oddly (small-order components).
            for (i, v) in proof.votes.iter().enumerate() {
                let byz = self
                    .keys
                    .iter()
                    .position(|k| *k == v.voter)
                    .is_some_and(|j| !self.honest[j]);
                if byz
                    && !v
                        .signed_message(CHAIN_ID, &proof.txid)
                        .is_some_and(|m| timecoin_core::sig::verify(&v.voter.0, &m, &v.signature))
                {
                    r = Err(format!(
                        "verifies as a whole, but its certificate {i} does not verify alone"
                    ));
                }
            }
        }
        self.proof_ok.insert(digest, r.is_ok());
        r
    }

    fn on_finalized(
        &mut self,
        node: usize,
        at: Micros,
        txid: Txid,
        proof: &TimeProof,
        tx: &Transaction,
    ) {
        self.finality_events += 1;
        if proof.txid != txid || tx.txid() != txid {
            self.violate(
                ViolationKind::InvalidProof,
                at,
                Some(node),
                format!("{txid} mismatch"),
                None,
                format!(
                    "node {node} finalized {txid:?} with a proof or transaction for something else"
                ),
            );
        }
        if let Err(e) = self.proof_verifies(proof) {
            self.violate(
                ViolationKind::InvalidProof,
                at,
                Some(node),
                format!("{txid}"),
                None,
                format!("node {node} finalized {txid:?} with a TimeProof that fails: {e}"),
            );
        }
        self.views[node].finalized.entry(txid).or_insert(at);
        for input in &tx.inputs {
            let op = input.prev;
            match self.final_spend.get(&op) {
                Some(&(other, n2, t2)) if other != txid => {
                    // Evidence that this is the reported store overwrite: the
                    // finalizing node had written this output back to unspent.
                    let view = &self.views[node];
                    let known = if view.regressed.contains(&op) {
                        Some(KnownIssue::RefinalizeOverwritesOutputs)
                    } else {
                        view.unrecorded
                            .contains(&op)
                            .then_some(KnownIssue::FinalizesWithoutInputs)
                    };
                    self.violate(
                        ViolationKind::DoubleFinality,
                        at,
                        Some(node),
                        format!("{op}"),
                        known,
                        format!(
                            "{txid:?} finalized at node {node} while {other:?} was finalized at node {n2} ({} ms); both spend {:?}:{}",
                            t2 / MS,
                            op.txid,
                            op.vout
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    self.final_spend.insert(op, (txid, node, at));
                }
            }
            self.views[node].final_inputs.entry(op).or_insert(txid);
        }
    }

    /// After `Engine::new` from the store: nothing final or voted is lost.
    pub fn on_restart(&mut self, node: usize, at: Micros, engine: &Engine) {
        let view = &self.views[node];
        let mut lost_final = Vec::new();
        for (op, txid) in &view.final_inputs {
            match engine.utxo(op).map(|e| e.state) {
                Some(UtxoState::SpentFinalized { txid: t })
                | Some(UtxoState::Confirmed { txid: t, .. })
                    if t == *txid => {}
                other => lost_final.push((
                    *op,
                    *txid,
                    other,
                    view.regressed.contains(op),
                    view.unrecorded.contains(op),
                )),
            }
        }
        let mut lost_lock = Vec::new();
        for (op, txid) in &view.approved {
            if let Some(UtxoState::Unspent) | None = engine.utxo(op).map(|e| e.state) {
                lost_lock.push((*op, *txid, view.regressed.contains(op)));
            }
        }
        lost_lock.sort();
        let known = |r: bool| r.then_some(KnownIssue::RefinalizeOverwritesOutputs);
        for (op, txid, state, r, u) in lost_final {
            self.violate(
                ViolationKind::FinalityLost,
                at,
                Some(node),
                format!("{op}"),
                known(r).or(u.then_some(KnownIssue::FinalizesWithoutInputs)),
                format!(
                    "after restart node {node} holds {:?}:{} as {state:?}; before, {txid:?} spending it was final there",
                    op.txid, op.vout
                ),
            );
        }
        for (op, txid, r) in lost_lock {
            self.violate(
                ViolationKind::LockLost,
                at,
                Some(node),
                format!("{op}"),
                known(r),
                format!(
                    "after restart node {node} holds {:?}:{} as unspent; it had signed an approval of {txid:?} spending it",
                    op.txid, op.vout
                ),
            );
        }
    }

    /// Honest masternodes agree on the final state of every output they both
    /// know. `engines` are the honest nodes that are up.
    pub fn check_agreement(&mut self, at: Micros, engines: &[(usize, &Engine)]) {
        let mut outpoints: BTreeSet<OutPoint> = self.final_spend.keys().copied().collect();
        for v in &self.views {
            outpoints.extend(v.final_inputs.keys().copied());
        }
        for op in outpoints {
            let mut seen: Option<(usize, Txid)> = None;
            for (i, e) in engines {
                let holder = match e.utxo(&op).map(|u| u.state) {
                    Some(UtxoState::SpentFinalized { txid })
                    | Some(UtxoState::Confirmed { txid, .. }) => txid,
                    _ => continue,
                };
                match seen {
                    Some((j, t)) if t != holder => {
                        self.violate(
                            ViolationKind::Disagreement,
                            at,
                            Some(*i),
                            format!("{op}"),
                            None,
                            format!(
                                "{:?}:{} is spent by {holder:?} at node {i} but by {t:?} at node {j}",
                                op.txid, op.vout
                            ),
                        );
                    }
                    None => seen = Some((*i, holder)),
                    _ => {}
                }
            }
        }
    }

    fn first_final(&self, txid: &Txid) -> Option<Micros> {
        (0..self.views.len())
            .filter(|&i| self.honest[i])
            .filter_map(|i| self.views[i].finalized.get(txid).copied())
            .min()
    }

    /// Bounded liveness: a payment an honest node received while the network
    /// was calm from `lead` before until `bound` after must be final at some
    /// honest node by then.
    pub fn check_liveness_bound(
        &mut self,
        bound: Micros,
        lead: Micros,
        calm: impl Fn(Micros, Micros) -> bool,
        until: Micros,
    ) {
        let payments: Vec<(Txid, Payment)> =
            self.payments.iter().map(|(t, p)| (*t, p.clone())).collect();
        for (txid, p) in payments {
            let Some(start) = p.first_honest else {
                continue;
            };
            let deadline = start + bound;
            if deadline > until || !calm(start.saturating_sub(lead), deadline) {
                continue;
            }
            let first = self.first_final(&txid);
            if first.is_none_or(|t| t > deadline) {
                let at = match first {
                    Some(t) => format!("only at {} ms", t / MS),
                    None => "never".into(),
                };
                let known = self
                    .transient_refusals
                    .contains(&txid)
                    .then_some(KnownIssue::StickyRefusal);
                self.violate(
                    ViolationKind::LivenessBound,
                    deadline,
                    None,
                    format!("{txid}"),
                    known,
                    format!(
                        "honest payment {txid:?} (wallet {}, made at {} ms, at an honest node at {} ms, network calm) final {at}; bound {} ms",
                        p.wallet,
                        p.first_submit / MS,
                        start / MS,
                        bound / MS
                    ),
                );
            }
        }
    }

    /// After healing: every honest payment is final somewhere honest, and
    /// every honest node that approved it has finalized it.
    pub fn check_liveness_end(&mut self, at: Micros, engines: &[(usize, &Engine)]) {
        let txids: Vec<(Txid, usize)> = self.payments.iter().map(|(t, p)| (*t, p.wallet)).collect();
        for (txid, wallet) in txids {
            let anywhere = self.first_final(&txid).is_some();
            let undecided: Vec<usize> = engines
                .iter()
                .filter(|(i, _)| self.views[*i].decisions.get(&txid) == Some(&Decision::Approve))
                .filter(|(_, e)| !e.is_finalized(&txid) && !self.views_final(e, &txid))
                .map(|(i, _)| *i)
                .collect();
            if !anywhere || !undecided.is_empty() {
                // A node whose store lost the inputs' finality cannot show it.
                let inputs: Vec<OutPoint> = self
                    .txs
                    .get(&txid)
                    .map(|t| t.inputs.iter().map(|i| i.prev).collect())
                    .unwrap_or_default();
                let regressed = anywhere
                    && undecided
                        .iter()
                        .all(|&i| inputs.iter().any(|op| self.views[i].regressed.contains(op)));
                let revoted = self.views.iter().any(|v| v.revoted.contains(&txid));
                let known = if regressed {
                    Some(KnownIssue::RefinalizeOverwritesOutputs)
                } else if revoted {
                    Some(KnownIssue::RevotesFinalTx)
                } else {
                    self.transient_refusals
                        .contains(&txid)
                        .then_some(KnownIssue::StickyRefusal)
                };
                let what = if anywhere {
                    format!("is still undecided at nodes {undecided:?}, which approved it")
                } else {
                    "is final at no honest node".into()
                };
                self.violate(
                    ViolationKind::LivenessEnd,
                    at,
                    None,
                    format!("{txid}"),
                    known,
                    format!("honest payment {txid:?} (wallet {wallet}) {what}, after healing"),
                );
            }
        }
    }

    /// A transaction whose decided record the engine already trimmed is
    /// still final if its inputs say so.
    fn views_final(&self, e: &Engine, txid: &Txid) -> bool {
        let Some(tx) = self.txs.get(txid) else {
            return false;
        };
        tx.inputs.iter().all(|i| {
            matches!(e.utxo(&i.prev).map(|u| u.state),
                Some(UtxoState::SpentFinalized { txid: t }) | Some(UtxoState::Confirmed { txid: t, .. }) if t == *txid)
        })
    }

    /// Every transaction some honest node finalized (and when it first did).
    fn finalized_anywhere(&self) -> BTreeMap<Txid, Micros> {
        let mut all: BTreeMap<Txid, Micros> = BTreeMap::new();
        for (i, v) in self.views.iter().enumerate() {
            if !self.honest[i] {
                continue;
            }
            for (t, at) in &v.finalized {
                let e = all.entry(*t).or_insert(*at);
                *e = (*e).min(*at);
            }
        }
        all
    }

    /// A node restarted: watch its catch-up. Call before its links come up.
    pub fn watch_restart(&mut self, node: usize, at: Micros) {
        let wanted = self
            .finalized_anywhere()
            .into_iter()
            .filter(|(_, t)| *t < at)
            .map(|(txid, _)| txid)
            .collect();
        self.watches.retain(|_, w| w.node != node);
        let id = self.next_watch;
        self.next_watch += 1;
        self.watches.insert(
            id,
            Watch {
                node,
                restart_at: at,
                wanted,
                since: None,
            },
        );
    }

    /// The node a watch is about, while it is open.
    pub fn watch_node(&self, id: usize) -> Option<usize> {
        self.watches.get(&id).map(|w| w.node)
    }

    /// The node crashed: its watch (if any) ends unchecked.
    pub fn on_crash(&mut self, node: usize) {
        self.watches.retain(|_, w| w.node != node);
    }

    /// `node`'s links changed. Returns the watch and the time its window
    /// starts, when it is connected to a quorum: the caller checks it
    /// [`CATCH_UP_BOUND`] later (unless the links change again first).
    pub fn links_changed(
        &mut self,
        node: usize,
        at: Micros,
        quorum_connected: bool,
    ) -> Option<(usize, Micros)> {
        let (id, w) = self.watches.iter_mut().find(|(_, w)| w.node == node)?;
        w.since = quorum_connected.then_some(at);
        w.since.map(|s| (*id, s))
    }

    /// The window of watch `id` that started at `since` is over: the node
    /// knows every wanted transaction that a linked honest peer holds final.
    /// `node` is the watched node's engine; `linked` the honest peers linked
    /// to it (unchanged since `since`).
    pub fn check_catch_up(
        &mut self,
        id: usize,
        since: Micros,
        at: Micros,
        node: &Engine,
        linked: &[(usize, &Engine)],
    ) {
        let Some(w) = self.watches.get(&id) else {
            return;
        };
        if w.since != Some(since) {
            return;
        }
        let w = self.watches.remove(&id).expect("present");
        self.catch_up_windows += 1;
        let mut missing = Vec::new();
        for txid in &w.wanted {
            if linked.iter().any(|(_, e)| e.known_final(txid)) {
                self.catch_up_required += 1;
            }
            if node.known_final(txid) {
                continue;
            }
            let holders: Vec<usize> = linked
                .iter()
                .filter(|(_, e)| e.known_final(txid))
                .map(|(j, _)| *j)
                .collect();
            if !holders.is_empty() {
                missing.push((*txid, holders));
            }
        }
        if let Some((first, holders)) = missing.first() {
            self.violate(
                ViolationKind::CatchUpBound,
                at,
                Some(w.node),
                format!("{} {}", w.node, w.restart_at),
                None,
                format!(
                    "node {} restarted at {} ms, connected to a quorum since {} ms, still lacks {} of the {} transactions final before its restart that its peers hold, {} ms later (first {first:?}, held by nodes {holders:?})",
                    w.node,
                    w.restart_at / MS,
                    since / MS,
                    missing.len(),
                    w.wanted.len(),
                    (at - since) / MS
                ),
            );
        }
    }

    /// Whether `txid` is confirmed at the node by a stored block that holds
    /// it and whose commit certificate verifies (a node that learned the
    /// payment from a synced block holds that instead of its TimeProof).
    fn confirmed_in_stored_block(&self, e: &Engine, store: &MemoryStore, txid: &Txid) -> bool {
        let Some(tx) = store.get_transaction(txid).expect("memory store") else {
            return false;
        };
        let Some(op) = tx.inputs.first().map(|i| i.prev) else {
            return false;
        };
        let Some(UtxoState::Confirmed { txid: t, height }) = e.utxo(&op).map(|e| e.state) else {
            return false;
        };
        t == *txid
            && store.block(height).expect("memory store").is_some_and(|b| {
                b.block.txids().contains(txid) && b.cert.verify(CHAIN_ID, &self.registry).is_ok()
            })
    }

    /// At the end, after the final heal and the settle period: every honest
    /// node that is up holds every transaction any honest node finalized, as
    /// final, with a stored proof that verifies (one a synced block
    /// confirmed first included: its proof is fetched after it).
    pub fn check_learned_end(&mut self, at: Micros, nodes: &[(usize, &Engine, &MemoryStore)]) {
        let all: Vec<Txid> = self.finalized_anywhere().into_keys().collect();
        for (i, e, store) in nodes {
            let mut missing = Vec::new();
            for txid in &all {
                // A payment a synced block confirmed is final here before
                // its proof comes, but the proof must come by the end
                // (wallets resubmitting here get it; peers catch up from it).
                let ok = e.known_final(txid)
                    && match store.get_proof(txid).expect("memory store") {
                        Some(p) => p.txid == *txid && self.proof_verifies(&p).is_ok(),
                        None => false,
                    };
                if !ok {
                    missing.push(*txid);
                }
            }
            if let Some(first) = missing.first() {
                let origin: Vec<usize> = (0..self.views.len())
                    .filter(|&j| self.honest[j] && self.views[j].finalized.contains_key(first))
                    .collect();
                let final_no_proof = e.known_final(first);
                let in_block = self.confirmed_in_stored_block(e, store, first);
                self.violate(
                    ViolationKind::NotLearned,
                    at,
                    Some(*i),
                    format!("{i}"),
                    None,
                    format!(
                        "at the end node {i} lacks {} of the {} transactions honest nodes finalized (first {first:?}, finalized at nodes {origin:?}; {})",
                        missing.len(),
                        all.len(),
                        match (final_no_proof, in_block) {
                            (true, true) => "confirmed here by a certified block, but its proof never came",
                            (true, false) => "final here but no valid stored proof",
                            _ => "not final here",
                        }
                    ),
                );
            }
        }
    }

    pub fn payments(&self) -> usize {
        self.payments.len()
    }

    /// Honest payments final at every honest node (the rest lag somewhere:
    /// not a violation, a node that never voted on it may never hear).
    pub fn payments_final_everywhere(
        &self,
        honest_nodes: &[usize],
        engines: &[(usize, &Engine)],
    ) -> usize {
        self.payments
            .keys()
            .filter(|t| {
                honest_nodes.iter().all(|&i| {
                    self.views[i].finalized.contains_key(t)
                        || engines
                            .iter()
                            .any(|(j, e)| *j == i && (e.is_finalized(t) || self.views_final(e, t)))
                })
            })
            .count()
    }
}
