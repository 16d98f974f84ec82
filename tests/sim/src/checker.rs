//! The invariants, checked on every round an honest masternode produces
//! (before its writes are applied and its messages leave), at every restart,
//! and at the end of the run.
//!
//! - safety: no two conflicting transactions are ever both finalized, at any
//!   honest masternode; every TimeProof verifies and carries more than 2/3 of
//!   the weight;
//! - votes: no honest masternode ever signs approvals for two transactions
//!   spending a common outpoint, nor two different decisions on one
//!   transaction, restarts included (checked on its vote log writes, which is
//!   everything it ever signs); no honest node is reported as an equivocator;
//! - durability: what a node finalized or voted to lock is still there after
//!   it restarts;
//! - agreement: honest masternodes agree on the final state of every output;
//! - liveness: an honest wallet's payment is final within a bound while the
//!   network is calm, and everywhere once every partition has healed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use timecoin::protocol::engine::{ConflictRecord, Engine, Event, Output, Round};
use timecoin::protocol::registry::Registry;
use timecoin::protocol::timeproof::TimeProof;
use timecoin::protocol::types::{OutPoint, PublicKey, Transaction, Txid};
use timecoin::protocol::utxo::UtxoState;
use timecoin::protocol::vote::Decision;
use timecoin::storage::Write;

use crate::config::{Micros, CHAIN_ID, MS};

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
    /// Honest masternodes hold different final states for one output.
    Disagreement,
    /// A restarted masternode lost a finality it had reached.
    FinalityLost,
    /// A restarted masternode lost a lock it had voted for.
    LockLost,
    /// An honest payment was not final within the bound while all was calm.
    LivenessBound,
    /// An honest payment was still not final everywhere after healing.
    LivenessEnd,
}

impl ViolationKind {
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::DoubleFinality => "double-finality",
            ViolationKind::InvalidProof => "invalid-proof",
            ViolationKind::ConflictingVotes => "conflicting-votes",
            ViolationKind::DecisionFlip => "decision-flip",
            ViolationKind::HonestAccused => "honest-accused",
            ViolationKind::Disagreement => "disagreement",
            ViolationKind::FinalityLost => "finality-lost",
            ViolationKind::LockLost => "lock-lost",
            ViolationKind::LivenessBound => "liveness-bound",
            ViolationKind::LivenessEnd => "liveness-end",
        }
    }
    pub fn is_safety(self) -> bool {
        !matches!(
            self,
            ViolationKind::LivenessBound | ViolationKind::LivenessEnd
        )
    }
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub kind: ViolationKind,
    pub at: Micros,
    pub node: Option<usize>,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{} at {} ms", self.kind.name(), self.at / MS)?;
        if let Some(n) = self.node {
            write!(f, ", node {n}")?;
        }
        write!(f, "] {}", self.detail)
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
}

pub struct Checker {
    registry: Registry,
    honest: Vec<bool>,
    keys: Vec<PublicKey>,
    /// Every transaction any wallet ever built.
    txs: HashMap<Txid, Transaction>,
    payments: BTreeMap<Txid, Payment>,
    /// Across all honest nodes: outpoint -> (finalized spender, node, time).
    final_spend: HashMap<OutPoint, (Txid, usize, Micros)>,
    views: Vec<NodeView>,
    proof_ok: HashMap<[u8; 32], bool>,
    pub violations: Vec<Violation>,
    pub conflicting_proofs: Vec<(usize, ConflictRecord)>,
    pub equivocations_seen: u64,
    pub finality_events: u64,
    pub unknown_tx_votes: u64,
    reported: BTreeSet<(ViolationKind, Option<usize>, String)>,
}

impl Checker {
    pub fn new(registry: Registry, honest: Vec<bool>, keys: Vec<PublicKey>) -> Self {
        let n = honest.len();
        Checker {
            registry,
            honest,
            keys,
            txs: HashMap::new(),
            payments: BTreeMap::new(),
            final_spend: HashMap::new(),
            views: (0..n).map(|_| NodeView::default()).collect(),
            proof_ok: HashMap::new(),
            violations: Vec::new(),
            conflicting_proofs: Vec::new(),
            equivocations_seen: 0,
            finality_events: 0,
            unknown_tx_votes: 0,
            reported: BTreeSet::new(),
        }
    }

    fn violate(
        &mut self,
        kind: ViolationKind,
        at: Micros,
        node: Option<usize>,
        key: String,
        detail: String,
    ) {
        // One report per distinct fact, however often it is observed.
        if self.reported.insert((kind, node, key)) {
            self.violations.push(Violation {
                kind,
                at,
                node,
                detail,
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
        for w in &round.writes {
            if let Write::AppendOwnVotes(batch) = w {
                for item in &batch.items {
                    self.on_own_vote(node, at, item.txid, item.decision);
                }
            }
        }
        for out in &round.outputs {
            match out {
                Output::Event(Event::Finalized {
                    txid, proof, tx, ..
                }) => self.on_finalized(node, at, *txid, proof, tx),
                Output::Event(Event::ConflictingProofs(rec)) => {
                    self.conflicting_proofs.push((node, rec.clone()));
                }
                Output::Event(Event::Equivocation { voter, txid }) => {
                    self.equivocations_seen += 1;
                    if let Some(v) = self.keys.iter().position(|k| k == voter) {
                        if self.honest[v] {
                            self.violate(
                                ViolationKind::HonestAccused,
                                at,
                                Some(node),
                                format!("{v} {txid}"),
                                format!("node {node} reports honest node {v} as equivocating on {txid:?}"),
                            );
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn on_own_vote(&mut self, node: usize, at: Micros, txid: Txid, decision: Decision) {
        let view = &mut self.views[node];
        if let Some(prev) = view.decisions.insert(txid, decision) {
            if prev != decision {
                self.violate(
                    ViolationKind::DecisionFlip,
                    at,
                    Some(node),
                    format!("{txid}"),
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
                    self.violate(
                        ViolationKind::ConflictingVotes,
                        at,
                        Some(node),
                        format!("{op}"),
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
        let r = match proof.verify(CHAIN_ID, &self.registry) {
            Ok(w) if 3 * w > 2 * total => Ok(()),
            Ok(w) => Err(format!("carries weight {w} of {total}, not more than 2/3")),
            Err(e) => Err(e.to_string()),
        };
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
                format!("node {node} finalized {txid:?} with a TimeProof that fails: {e}"),
            );
        }
        self.views[node].finalized.entry(txid).or_insert(at);
        for input in &tx.inputs {
            let op = input.prev;
            match self.final_spend.get(&op) {
                Some(&(other, n2, t2)) if other != txid => {
                    self.violate(
                        ViolationKind::DoubleFinality,
                        at,
                        Some(node),
                        format!("{op}"),
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
            let view = &mut self.views[node];
            view.final_inputs.entry(op).or_insert(txid);
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
                other => lost_final.push((*op, *txid, other)),
            }
        }
        let mut lost_lock = Vec::new();
        for (op, txid) in &view.approved {
            match engine.utxo(op).map(|e| e.state) {
                Some(UtxoState::Unspent) | None => lost_lock.push((*op, *txid)),
                _ => {}
            }
        }
        for (op, txid, state) in lost_final {
            self.violate(
                ViolationKind::FinalityLost,
                at,
                Some(node),
                format!("{op}"),
                format!(
                    "after restart node {node} holds {:?}:{} as {state:?}; before, {txid:?} spending it was final there",
                    op.txid, op.vout
                ),
            );
        }
        for (op, txid) in lost_lock {
            self.violate(
                ViolationKind::LockLost,
                at,
                Some(node),
                format!("{op}"),
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

    /// Bounded liveness: payments made while the network was calm from a
    /// little before until the bound after must be final somewhere honest by
    /// then. `calm(from, to)` tells whether [from, to] was calm.
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
            let first = (0..self.views.len())
                .filter(|&i| self.honest[i])
                .filter_map(|i| self.views[i].finalized.get(&txid).copied())
                .min();
            if first.is_none_or(|t| t > deadline) {
                let at = match first {
                    Some(t) => format!("only at {} ms", t / MS),
                    None => "never".into(),
                };
                self.violate(
                    ViolationKind::LivenessBound,
                    deadline,
                    None,
                    format!("{txid}"),
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

    /// After healing: every honest payment is final at every honest node.
    pub fn check_liveness_end(&mut self, at: Micros, engines: &[(usize, &Engine)]) {
        let txids: Vec<(Txid, usize)> = self.payments.iter().map(|(t, p)| (*t, p.wallet)).collect();
        for (txid, wallet) in txids {
            let missing: Vec<usize> = engines
                .iter()
                .filter(|(_, e)| !e.is_finalized(&txid) && !self.views_final(e, &txid))
                .map(|(i, _)| *i)
                .collect();
            if !missing.is_empty() {
                self.violate(
                    ViolationKind::LivenessEnd,
                    at,
                    None,
                    format!("{txid}"),
                    format!("honest payment {txid:?} (wallet {wallet}) is not final at nodes {missing:?} after healing"),
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

    pub fn payments(&self) -> usize {
        self.payments.len()
    }

    pub fn payments_final_everywhere(&self, honest_nodes: &[usize]) -> usize {
        self.payments
            .keys()
            .filter(|t| {
                honest_nodes
                    .iter()
                    .all(|&i| self.views[i].finalized.contains_key(t))
            })
            .count()
    }
}
