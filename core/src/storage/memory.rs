//! In-memory [`Store`] for tests and the simulator. It models durability
//! exactly: what `apply` accepted survives a simulated crash, nothing else.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    BlockSnapshot, CommittedBlock, Genesis, Snapshot, Store, StoreError, UtxoSource, Write,
};
use crate::blocks::block::BlockHash;
use crate::blocks::certificate::ForkEvidence;
use crate::blocks::consensus::{Candidate, OwnBlockVote, SignedStep};
use crate::blocks::evidence::{BlockEvidence, BlockEvidenceKey, Contradiction};
use crate::protocol::evidence::{ConflictingApprovals, Equivocation};
use crate::protocol::timeproof::TimeProof;
use crate::protocol::types::{OutPoint, PublicKey, Transaction, Txid};
use crate::protocol::utxo::{UtxoEntry, UtxoState};
use crate::protocol::vote::VoteBatch;

/// The UTXO table, shared with the engine's reader
/// ([`Store::utxo_source`]). Cloning the store copies it (a clone is another
/// store, not a view of this one).
#[derive(Debug, Default)]
struct SharedUtxos(Arc<Mutex<BTreeMap<OutPoint, UtxoEntry>>>);

impl SharedUtxos {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<OutPoint, UtxoEntry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clone for SharedUtxos {
    fn clone(&self) -> Self {
        SharedUtxos(Arc::new(Mutex::new(self.lock().clone())))
    }
}

/// [`MemoryStore`]'s [`UtxoSource`]: reads what `apply` accepted.
struct MemoryUtxos(Arc<Mutex<BTreeMap<OutPoint, UtxoEntry>>>);

impl UtxoSource for MemoryUtxos {
    fn utxo(&self, op: &OutPoint) -> Result<Option<UtxoEntry>, StoreError> {
        Ok(self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(op)
            .copied())
    }
}

#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    chain_id: Option<u32>,
    utxos: SharedUtxos,
    txs: HashMap<Txid, Transaction>,
    proofs: HashMap<Txid, TimeProof>,
    votes: Vec<VoteBatch>,
    finality_log: Vec<Txid>,
    stuck: std::collections::HashSet<Txid>,
    evidence: BTreeMap<(PublicKey, Txid), Equivocation>,
    approval_evidence: BTreeMap<(PublicKey, OutPoint), ConflictingApprovals>,
    blocks: BTreeMap<u64, CommittedBlock>,
    own_block_votes: BTreeMap<(u64, u32, SignedStep), Option<BlockHash>>,
    candidates: BTreeMap<(u64, BlockHash), Candidate>,
    fork: Option<ForkEvidence>,
    block_evidence: BTreeMap<BlockEvidenceKey, BlockEvidence>,
    block_stop: Option<Contradiction>,
    confirmed_through: Option<u64>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The stored entry of `op` (tests, the simulator's checks).
    pub fn utxo(&self, op: &OutPoint) -> Option<UtxoEntry> {
        self.utxos.lock().get(op).copied()
    }

    /// Every stored output, by outpoint (tests, the simulator's checks).
    pub fn utxos(&self) -> Vec<(OutPoint, UtxoEntry)> {
        self.utxos.lock().iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// How many outputs the store holds.
    pub fn utxo_count(&self) -> usize {
        self.utxos.lock().len()
    }

    /// The lowest height of an own consensus record or candidate kept.
    pub fn lowest_block_record(&self) -> Option<u64> {
        let v = self.own_block_votes.keys().next().map(|k| k.0);
        let c = self.candidates.keys().next().map(|k| k.0);
        v.into_iter().chain(c).min()
    }

    fn block_snapshot(&self) -> BlockSnapshot {
        let tip = self.blocks.values().next_back().cloned();
        let above = tip.as_ref().map_or(0, |t| t.block.height());
        BlockSnapshot {
            own_votes: self
                .own_block_votes
                .iter()
                .filter(|((h, _, _), _)| *h > above)
                .map(|(&(height, round, step), &block)| OwnBlockVote {
                    height,
                    round,
                    step,
                    block,
                })
                .collect(),
            candidates: self
                .candidates
                .iter()
                .filter(|((h, _), _)| *h > above)
                .map(|(_, c)| c.clone())
                .collect(),
            tip,
            fork: self.fork.clone(),
            evidence_count: self.block_evidence.len() as u64,
            stop: self.block_stop.clone(),
            confirmed_through: self.confirmed_through,
        }
    }
}

impl Store for MemoryStore {
    fn init(&mut self, genesis: &Genesis) -> Result<(), StoreError> {
        match self.chain_id {
            Some(c) if c != genesis.chain_id => Err(StoreError::WrongChain {
                found: c,
                expected: genesis.chain_id,
            }),
            Some(_) => Ok(()),
            None => {
                self.chain_id = Some(genesis.chain_id);
                self.utxos.lock().extend(genesis.utxos.iter().cloned());
                Ok(())
            }
        }
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        // One pass over the outputs, as the LMDB store makes.
        let mut held = Vec::new();
        let mut pending = Vec::new();
        let mut stuck = Vec::new();
        let mut unconfirmed = Vec::new();
        let mut unproven = Vec::new();
        // Each list once per transaction.
        let (mut seen_held, mut seen_final, mut seen_confirmed) = (
            std::collections::HashSet::new(),
            std::collections::HashSet::new(),
            std::collections::HashSet::new(),
        );
        for (op, e) in self.utxos.lock().iter() {
            match e.state {
                UtxoState::Locked { txid } | UtxoState::SpentPending { txid, .. } => {
                    held.push((*op, *e));
                    if let Some(tx) = self.txs.get(&txid) {
                        if seen_held.insert(txid) {
                            if self.stuck.contains(&txid) {
                                stuck.push(tx.clone());
                            } else {
                                pending.push(tx.clone());
                            }
                        }
                    }
                }
                UtxoState::SpentFinalized { txid } => {
                    if let Some(tx) = self.txs.get(&txid) {
                        if seen_final.insert(txid) {
                            unconfirmed.push(tx.clone());
                        }
                    }
                }
                UtxoState::Confirmed { txid, .. } => {
                    if !self.proofs.contains_key(&txid) {
                        if let Some(tx) = self.txs.get(&txid) {
                            if seen_confirmed.insert(txid) {
                                unproven.push(tx.clone());
                            }
                        }
                    }
                }
                UtxoState::Unspent => {}
            }
        }
        let mut left: std::collections::HashSet<Txid> =
            unconfirmed.iter().map(|t| t.txid()).collect();
        let mut from = self.finality_log.len();
        while !left.is_empty() && from > 0 {
            from -= 1;
            left.remove(&self.finality_log[from]);
        }
        let unconfirmed_log_from = if left.is_empty() { from as u64 } else { 0 };
        Ok(Snapshot {
            unconfirmed_log_from,
            unconfirmed_transactions: unconfirmed,
            unproven_transactions: unproven,
            held_utxos: held,
            pending_transactions: pending,
            stuck_transactions: stuck,
            finality_log_len: self.finality_log.len() as u64,
            finalized: self.proofs.keys().copied().collect(),
            own_votes: self.votes.clone(),
            blocks: self.block_snapshot(),
        })
    }

    fn utxo_source(&self) -> Box<dyn UtxoSource> {
        Box::new(MemoryUtxos(self.utxos.0.clone()))
    }

    fn apply(&mut self, writes: &[Write]) -> Result<(), StoreError> {
        for w in writes {
            match w {
                Write::PutUtxo(k, v) => {
                    self.utxos.lock().insert(*k, *v);
                }
                Write::PutTransaction(id, tx) => {
                    self.txs.insert(*id, tx.clone());
                }
                Write::PutProof(p) => {
                    self.proofs.insert(p.txid, p.clone());
                }
                Write::AppendOwnVotes(b) => self.votes.push(b.clone()),
                Write::AppendFinality(t) => self.finality_log.push(*t),
                Write::PutStuck(t) => {
                    self.stuck.insert(*t);
                }
                Write::PutApprovalEvidence(e) => {
                    self.approval_evidence
                        .insert((e.voter(), e.outpoint), (**e).clone());
                }
                Write::PutEvidence(e) => {
                    self.evidence.insert((e.voter(), e.txid), e.clone());
                }
                Write::PutBlock(b) => {
                    self.blocks.insert(b.block.height(), (**b).clone());
                }
                Write::AppendOwnBlockVote(v) => {
                    self.own_block_votes
                        .insert((v.height, v.round, v.step), v.block);
                }
                Write::PutCandidate(c) => {
                    self.candidates
                        .insert((c.block.height(), c.block.hash()), (**c).clone());
                }
                Write::PutForkEvidence(f) => {
                    self.fork.get_or_insert_with(|| (**f).clone());
                }
                Write::PutBlockEvidence(e) => {
                    self.block_evidence.insert(e.key(), (**e).clone());
                }
                Write::PutBlockStop(c) => {
                    self.block_stop.get_or_insert_with(|| c.clone());
                }
                Write::ClearBlockStop => self.block_stop = None,
                Write::PutConfirmedThrough(h) => self.confirmed_through = Some(*h),
                Write::PruneBlockRecords { below } => {
                    self.own_block_votes.retain(|(h, _, _), _| h >= below);
                    self.candidates.retain(|(h, _), _| h >= below);
                }
            }
        }
        Ok(())
    }

    fn get_proof(&self, txid: &Txid) -> Result<Option<TimeProof>, StoreError> {
        Ok(self.proofs.get(txid).cloned())
    }

    fn get_transaction(&self, txid: &Txid) -> Result<Option<Transaction>, StoreError> {
        Ok(self.txs.get(txid).cloned())
    }

    fn block(&self, height: u64) -> Result<Option<CommittedBlock>, StoreError> {
        Ok(self.blocks.get(&height).cloned())
    }

    fn block_evidence(&self) -> Result<Vec<BlockEvidence>, StoreError> {
        Ok(self.block_evidence.values().cloned().collect())
    }

    fn evidence(&self) -> Result<Vec<Equivocation>, StoreError> {
        Ok(self.evidence.values().cloned().collect())
    }

    fn approval_evidence(&self) -> Result<Vec<ConflictingApprovals>, StoreError> {
        Ok(self.approval_evidence.values().cloned().collect())
    }

    fn finality_log(&self, from: u64, max: usize) -> Result<(Vec<Txid>, u64), StoreError> {
        let len = self.finality_log.len();
        let start = usize::try_from(from).unwrap_or(usize::MAX).min(len);
        let end = start.saturating_add(max).min(len);
        Ok((self.finality_log[start..end].to_vec(), len as u64))
    }
}
