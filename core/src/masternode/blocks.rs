//! The block layer inside the masternode: the [`BlockConsensus`] state
//! machine, the queue of final payments not yet in a block, the view of the
//! engine the consensus checks blocks against, and block sync requests.
//!
//! Instant finality never waits on anything here: the engine finalizes
//! payments whatever the block layer does, and a block only moves inputs a
//! TimeProof settled (`SpentFinalized`) to `Confirmed{height}`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::blocks::consensus::{BlockLedger, BodyRejection, ConsensusError, ConsensusWrite};
use crate::blocks::evidence::{Contradicted, Contradiction};
use crate::blocks::{
    Block, BlockConsensus, ChainTip, Checked, CheckedBlockMessage, ConsensusMessage,
};
use crate::masternode::block_sync::BlockSync;
use crate::protocol::audience::PeerMessage;
use crate::protocol::engine::{CommittedTxError, Engine};
use crate::protocol::registry::Registry;
use crate::protocol::types::{ChainId, PublicKey, Transaction, Txid};
use crate::protocol::utxo::UtxoState;
use crate::storage::{Store, StoreError, Write};

/// A payment a proposal waits on is asked for again at most this often.
pub const MISSING_PROOF_EVERY_MS: u64 = 1_000;
/// Most proof requests the block layer sends per second (its own budget:
/// it never takes from the engine's requests for its stalled payments).
pub const MISSING_PROOFS_PER_S: u32 = 64;
/// Most payments remembered as asked for.
const MAX_MISSING_TRACKED: usize = 4_096;

/// Most final, unconfirmed payments held in memory (about 300 bytes each:
/// some 20 MB). During a long block stall the rest stay in the store only
/// and are paged back in, in the order they became final, as blocks drain
/// the queue.
pub const MAX_UNCONFIRMED_IN_MEMORY: usize = 65_536;

/// Own consensus records (and candidates) are kept for this many heights
/// below the committed tip, for an operator to read; older ones are pruned
/// every so many heights (see PROTOCOL.md, "Durable votes and restarts").
pub const BLOCK_RECORDS_KEPT: u64 = 64;

/// Most finality-log entries one page-in reads (bounds a core round).
pub const PAGE_IN_ENTRIES: usize = 4_096;

/// Most transactions of committed blocks confirmed in one core round; the
/// rest of a block is confirmed in the rounds after (see
/// [`BlockLayer::confirming`]). At 1,000 payments a second a block a second
/// holds about a thousand, and confirming them all in the round that
/// committed the block held every payment in flight for 6-10 ms of that
/// round (BENCHMARKS.md); confirming 256 took about 0.7 ms of CPU there.
pub const CONFIRMATIONS_PER_ROUND: usize = 256;

/// Checks a peer's block proposal, vote or committed block: cheap checks,
/// then its signatures ([`Checked`]). Pure, so the node runs it on its
/// check thread and the core thread never verifies a block message; `None`
/// for any other message.
pub fn check_block_message(
    chain_id: ChainId,
    registry: &Registry,
    msg: PeerMessage,
) -> Option<Result<CheckedBlockMessage, ConsensusError>> {
    Some(match msg {
        PeerMessage::BlockProposal(p) => Checked::proposal(*p, chain_id, registry)
            .map(|p| CheckedBlockMessage::Proposal(Box::new(p))),
        PeerMessage::BlockVote(v) => Checked::vote(v, registry).map(CheckedBlockMessage::Vote),
        PeerMessage::CommittedBlock(c) => Checked::commit(*c, chain_id, registry)
            .map(|c| CheckedBlockMessage::Commit(Box::new(c))),
        _ => return None,
    })
}

/// The engine as the block consensus sees it.
pub struct LedgerView<'a> {
    pub engine: &'a Engine,
    pub unconfirmed: &'a Unconfirmed,
    /// To tell whether a parent the queue does not hold in memory is in a
    /// block yet (only asked while the queue holds some in the store
    /// only); without it such a body is waited on.
    pub store: Option<&'a dyn Store>,
}

impl LedgerView<'_> {
    /// Whether `parent`, a transaction final here, is in no block yet.
    /// `None`: not known now (ask again with the store).
    fn parent_unconfirmed(&self, parent: &Txid) -> Option<bool> {
        if self.unconfirmed.contains(parent) {
            return Some(true);
        }
        if self.unconfirmed.spill_from.is_none() {
            // Every final, unconfirmed payment is in memory.
            return Some(false);
        }
        let tx = match self.engine.transaction(parent) {
            Some(tx) => (*tx).clone(),
            None => match self.store?.get_transaction(parent).ok()? {
                Some(tx) => tx,
                // No such transaction: a genesis allocation.
                None => return Some(false),
            },
        };
        let Some(input) = tx.inputs.first() else {
            return Some(false);
        };
        Some(matches!(
            self.engine.utxo(&input.prev).map(|e| e.state),
            Some(UtxoState::SpentFinalized { txid }) if txid == *parent
        ))
    }
}

impl BlockLedger for LedgerView<'_> {
    fn block_body(&self, max_bytes: usize) -> Vec<Transaction> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for txid in &self.unconfirmed.order {
            let Some(tx) = self.unconfirmed.txs.get(txid) else {
                continue;
            };
            let settled = tx.inputs.first().is_some_and(|i| {
                matches!(
                    self.engine.utxo(&i.prev).map(|e| e.state),
                    Some(UtxoState::SpentFinalized { txid: t }) if t == *txid
                )
            });
            if !settled {
                // Confirmed already (or never final here): never in a block
                // again, and nothing after it may wait on it.
                continue;
            }
            let len = tx.encoded_len();
            if bytes + len > max_bytes || out.len() >= crate::blocks::block::MAX_BLOCK_TXS {
                break; // the rest carries over to the next block
            }
            bytes += len;
            out.push((**tx).clone());
        }
        out
    }

    fn check_body(&self, block: &Block) -> Result<(), BodyRejection> {
        let mut earlier = std::collections::HashSet::with_capacity(block.transactions.len());
        for tx in &block.transactions {
            let txid = tx.txid();
            // A conflict first: a transaction spending what a payment final
            // here spent can never become final here, so the proposal is
            // refused at once (and kept as evidence), not waited on.
            for input in &tx.inputs {
                if let Some(
                    UtxoState::SpentFinalized { txid: other }
                    | UtxoState::Confirmed { txid: other, .. },
                ) = self.engine.utxo(&input.prev).map(|e| e.state)
                {
                    if other != txid {
                        return Err(BodyRejection::Conflicts {
                            txid,
                            final_tx: other,
                        });
                    }
                }
            }
            if !self.engine.known_final(&txid) || tx.inputs.is_empty() {
                return Err(BodyRejection::NotFinal(txid));
            }
            for input in &tx.inputs {
                // A parent in no block yet must come earlier in this one, so
                // a node replaying the chain always knows every input.
                let parent = input.prev.txid;
                if !earlier.contains(&parent) {
                    match self.parent_unconfirmed(&parent) {
                        Some(false) => {}
                        Some(true) => {
                            return Err(BodyRejection::ParentNotConfirmed { txid, parent })
                        }
                        // Unknown without the store: waited on, asked again.
                        None => return Err(BodyRejection::NotFinal(txid)),
                    }
                }
                match self.engine.utxo(&input.prev).map(|e| e.state) {
                    Some(UtxoState::SpentFinalized { txid: t }) if t == txid => {}
                    Some(UtxoState::Confirmed { txid: t, .. }) if t == txid => {
                        return Err(BodyRejection::AlreadyConfirmed(txid))
                    }
                    Some(UtxoState::SpentFinalized { txid: other })
                    | Some(UtxoState::Confirmed { txid: other, .. }) => {
                        return Err(BodyRejection::Conflicts {
                            txid,
                            final_tx: other,
                        })
                    }
                    _ => return Err(BodyRejection::NotFinal(txid)),
                }
            }
            earlier.insert(txid);
        }
        Ok(())
    }
}

/// Final payments not yet in a block, in the order they became final (a
/// parent is always final before its child). At most `cap` are held in
/// memory; from the first that did not fit, the rest are only in the store
/// (its finality log names them in order) until [`BlockLayer::page_in`]
/// brings them back. The memory part is always closed under parents: a
/// payment held here has every unconfirmed parent held here too, before it.
pub struct Unconfirmed {
    order: VecDeque<Txid>,
    txs: HashMap<Txid, Arc<Transaction>>,
    cap: usize,
    /// Finality-log position from which final payments may be in the
    /// store only (none: every one is in memory).
    pub(crate) spill_from: Option<u64>,
}

impl Default for Unconfirmed {
    fn default() -> Self {
        Self::with_cap(MAX_UNCONFIRMED_IN_MEMORY)
    }
}

impl Unconfirmed {
    pub fn with_cap(cap: usize) -> Self {
        Unconfirmed {
            order: VecDeque::new(),
            txs: HashMap::new(),
            cap: cap.max(1),
            spill_from: None,
        }
    }

    /// A payment that became final here, at position `log_pos` of the
    /// finality log. Left in the store only once the memory is full, and
    /// so is every later one until the queue is paged in again.
    pub fn push_final(&mut self, tx: Arc<Transaction>, log_pos: u64) {
        if self.spill_from.is_some() || self.txs.len() >= self.cap {
            if !self.txs.contains_key(&tx.txid()) {
                self.spill_from.get_or_insert(log_pos);
            }
            return;
        }
        self.push(tx);
    }

    fn push(&mut self, tx: Arc<Transaction>) {
        let txid = tx.txid();
        if self.txs.insert(txid, tx).is_none() {
            self.order.push_back(txid);
        }
    }

    /// Some final payments are in the store only.
    pub fn spilled(&self) -> bool {
        self.spill_from.is_some()
    }
    pub fn remove(&mut self, txid: &Txid) {
        self.txs.remove(txid);
        while self
            .order
            .front()
            .is_some_and(|t| !self.txs.contains_key(t))
        {
            self.order.pop_front();
        }
    }
    /// The queue after a restart: the stored final, unconfirmed
    /// transactions, each after the parents among them (a block never
    /// holds a child before its parent), the first `cap` of that order in
    /// memory; the others are paged in from `log_from`, the finality-log
    /// position of the oldest.
    pub fn restore(&mut self, txs: Vec<Transaction>, log_from: u64) {
        if txs.len() > self.cap {
            self.spill_from = Some(log_from);
        }
        let mut byid: HashMap<Txid, Transaction> = txs.into_iter().map(|t| (t.txid(), t)).collect();
        let mut ids: Vec<Txid> = byid.keys().copied().collect();
        ids.sort();
        for id in ids {
            // Depth first, parents before children, without recursion.
            let mut stack = vec![(id, false)];
            while let Some((id, parents_done)) = stack.pop() {
                if parents_done {
                    if let Some(tx) = byid.remove(&id) {
                        if self.txs.len() < self.cap {
                            self.push(Arc::new(tx));
                        }
                    }
                    continue;
                }
                let Some(tx) = byid.get(&id) else {
                    continue;
                };
                stack.push((id, true));
                for input in &tx.inputs {
                    if byid.contains_key(&input.prev.txid) {
                        stack.push((input.prev.txid, false));
                    }
                }
            }
        }
    }
    pub fn contains(&self, txid: &Txid) -> bool {
        self.txs.contains_key(txid)
    }
    pub fn len(&self) -> usize {
        self.txs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }
}

/// The block layer's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockLayerStats {
    pub refused_messages: u64,
    pub blocks_served: u64,
    pub confirmed_transactions: u64,
    /// Transactions of committed blocks that contradict this node's final
    /// state (only possible with Byzantine weight of 1/3 or more), this run.
    pub contradictions: u64,
    pub last_contradiction: Option<String>,
    /// The contradiction that stopped block processing (durable: restored
    /// at start until the operator clears it).
    pub stop: Option<Contradiction>,
}

pub struct BlockLayer {
    pub(crate) consensus: BlockConsensus,
    pub(crate) unconfirmed: Unconfirmed,
    pub(crate) sync: BlockSync,
    pub(crate) stats: BlockLayerStats,
    last_block_time: Option<u64>,
    /// The engine's finalized count when the consensus last rechecked.
    pub(crate) finals_seen: u64,
    /// Payments a proposal waits on, and when their proof was last asked.
    asked: HashMap<Txid, u64>,
    /// (second, requests sent in it).
    ask_budget: (u64, u32),
    /// Length of this node's finality log (the position of the next entry).
    pub(crate) log_len: u64,
    /// While behind: the tip height and when it last moved (or the lag
    /// was first seen), for [`BlockLayer::syncing_blocks`].
    sync_progress: Option<(u64, u64)>,
    /// The committed block whose transactions are not all confirmed in the
    /// engine yet, at most [`CONFIRMATIONS_PER_ROUND`] a round. Only ever
    /// the tip: the rest of a block is confirmed before the next block is,
    /// and before the consensus looks at anything above the tip
    /// ([`BlockLayer::finish_confirming`]). Its last round records
    /// [`Write::PutConfirmedThrough`]; a restart whose store holds a tip
    /// above that confirms the tip again, so a crash between its rounds
    /// loses nothing.
    confirming: Option<Confirming>,
    pub(crate) confirmations_per_round: usize,
    /// Writes of confirmations made outside [`BlockLayer::drain`] (a
    /// contradiction's stop record), for the round's effects.
    held_writes: Vec<Write>,
}

/// A committed block's transactions still to confirm, in block order.
struct Confirming {
    height: u64,
    block: crate::blocks::BlockHash,
    txs: VecDeque<(Txid, Arc<Transaction>)>,
}

/// Blocks behind that count as syncing: one or two is the normal race with
/// a commit in flight.
pub const SYNC_HOLD_LAG: u64 = 2;
/// A block sync whose tip did not move for this long no longer holds the
/// payment catch-up back.
pub const SYNC_STALL_MS: u64 = 2_000;

/// What the block layer produced in a round, in masternode terms.
#[derive(Default)]
pub struct BlockEffects {
    pub writes: Vec<Write>,
    pub broadcasts: Vec<ConsensusMessage>,
    pub requests: Vec<(PublicKey, u64)>,
    /// Payments of a proposal not final here: their proofs are wanted.
    pub missing: Vec<Txid>,
}

impl BlockLayer {
    pub fn new(consensus: BlockConsensus) -> Self {
        BlockLayer {
            consensus,
            unconfirmed: Unconfirmed::default(),
            sync: BlockSync::default(),
            stats: BlockLayerStats::default(),
            last_block_time: None,
            finals_seen: 0,
            asked: HashMap::new(),
            ask_budget: (0, 0),
            log_len: 0,
            sync_progress: None,
            confirming: None,
            confirmations_per_round: CONFIRMATIONS_PER_ROUND,
            held_writes: Vec::new(),
        }
    }

    /// Confirms `block`, committed at the tip, in the rounds from now on
    /// (after whatever is left of the block before it).
    fn start_confirming(&mut self, now: u64, engine: &mut Engine, block: &Block) {
        self.finish_confirming(now, engine);
        let txs = block
            .transactions
            .iter()
            .map(|tx| {
                let txid = tx.txid();
                let held = self.unconfirmed.txs.get(&txid).cloned();
                (txid, held.unwrap_or_else(|| Arc::new(tx.clone())))
            })
            .collect();
        self.confirming = Some(Confirming {
            height: block.height(),
            block: block.hash(),
            txs,
        });
    }

    /// After a restart whose store shows the tip's transactions not all
    /// confirmed ([`Write::PutConfirmedThrough`] below it): they are
    /// confirmed again (an input already confirmed stays as it is).
    pub fn resume_confirming(&mut self, tip: &Block) {
        self.confirming = Some(Confirming {
            height: tip.height(),
            block: tip.hash(),
            txs: tip
                .transactions
                .iter()
                .map(|tx| (tx.txid(), Arc::new(tx.clone())))
                .collect(),
        });
    }

    /// Whether a committed block still has transactions to confirm (the
    /// masternode wants a round soon).
    pub fn confirming(&self) -> bool {
        self.confirming.is_some()
    }

    /// Confirms whatever is left of the tip: before the consensus handles
    /// anything above the tip (a proposal's body is checked against
    /// confirmed state, and a block never holds a confirmed payment).
    pub fn finish_confirming(&mut self, now: u64, engine: &mut Engine) {
        self.confirm(now, engine, usize::MAX);
    }

    /// Confirms up to `max` transactions of the block being confirmed.
    fn confirm(&mut self, now: u64, engine: &mut Engine, max: usize) {
        let Some(c) = self.confirming.as_mut() else {
            return;
        };
        for _ in 0..max {
            let Some((txid, tx)) = c.txs.pop_front() else {
                break;
            };
            match engine.apply_committed(now, &tx, c.height) {
                Ok(moved) if moved > 0 => self.stats.confirmed_transactions += 1,
                Ok(_) => {}
                Err(e) => {
                    // Left unapplied: a certified block that contradicts
                    // what is final here. Counted, logged as critical by
                    // the driver, and the first one stops block processing
                    // durably.
                    self.stats.contradictions += 1;
                    self.stats.last_contradiction = Some(e.to_string());
                    if self.stats.stop.is_none() {
                        let what = match e {
                            CommittedTxError::MissingInput(_, op) => Contradicted::MissingInput(op),
                            CommittedTxError::ConflictsWithFinal { final_tx, .. } => {
                                Contradicted::FinalPayment(final_tx)
                            }
                        };
                        let stop = Contradiction {
                            height: c.height,
                            block: c.block,
                            txid,
                            what,
                        };
                        self.held_writes.push(Write::PutBlockStop(stop.clone()));
                        self.stats.stop = Some(stop);
                    }
                }
            }
            self.unconfirmed.remove(&txid);
        }
        if c.txs.is_empty() {
            self.held_writes.push(Write::PutConfirmedThrough(c.height));
            self.confirming = None;
        }
    }

    /// Whether this node is syncing blocks in bulk, so the payment catch-up
    /// waits (block answers travel below proofs, and would starve behind a
    /// fresh node's thousands of proof answers): peers carrying more than a
    /// third of the weight, so at least one honest, showed more than
    /// [`SYNC_HOLD_LAG`] blocks above the tip, and the tip moved within
    /// the last [`SYNC_STALL_MS`] (or the lag is newer). A
    /// Byzantine minority claiming heights cannot start it, and a sync that
    /// stalls (peers silent or not answering, blocks that do not apply)
    /// stops it within [`SYNC_STALL_MS`].
    pub fn syncing_blocks(&mut self, now: u64, registry: &Registry) -> bool {
        let tip = self.tip().height;
        let lag = self.sync.vouched_lag(tip, registry.total_weight(), |k| {
            registry.weight_of(k).unwrap_or(0)
        });
        if self.stopped() || lag.is_none_or(|l| l <= SYNC_HOLD_LAG) {
            self.sync_progress = None;
            return false;
        }
        match self.sync_progress {
            Some((height, at)) if height == tip => now.saturating_sub(at) < SYNC_STALL_MS,
            _ => {
                self.sync_progress = Some((tip, now));
                true
            }
        }
    }

    /// Brings final payments held in the store only back into memory, in
    /// finality-log order (parents first), once blocks drained the memory
    /// part to half its cap: at most [`PAGE_IN_ENTRIES`] log entries per
    /// call. A payment confirmed meanwhile, or held already, is skipped;
    /// none is ever dropped.
    pub fn page_in(&mut self, engine: &Engine, store: &dyn Store) -> Result<(), StoreError> {
        let q = &mut self.unconfirmed;
        let Some(from) = q.spill_from else {
            return Ok(());
        };
        if q.txs.len() > q.cap / 2 {
            return Ok(());
        }
        let (txids, len) = store.finality_log(from, PAGE_IN_ENTRIES)?;
        let mut next = from;
        for txid in txids {
            if q.txs.len() >= q.cap {
                break;
            }
            next += 1;
            if q.txs.contains_key(&txid) {
                continue;
            }
            let Some(tx) = store.get_transaction(&txid)? else {
                continue;
            };
            let unconfirmed = tx.inputs.first().is_some_and(|i| {
                matches!(
                    engine.utxo(&i.prev).map(|e| e.state),
                    Some(UtxoState::SpentFinalized { txid: t }) if t == txid
                )
            });
            if unconfirmed {
                q.push(Arc::new(tx));
            }
        }
        q.spill_from = (next < len.max(self.log_len)).then_some(next);
        Ok(())
    }

    pub fn tip(&self) -> ChainTip {
        self.consensus.tip()
    }

    pub fn last_block_time(&self) -> Option<u64> {
        self.last_block_time
    }

    /// Of the payments a proposal waits on, those to ask peers for now:
    /// each at most once per [`MISSING_PROOF_EVERY_MS`], at most
    /// [`MISSING_PROOFS_PER_S`] a second.
    pub fn proofs_to_ask(&mut self, now: u64, missing: Vec<Txid>) -> Vec<Txid> {
        if missing.is_empty() {
            return missing;
        }
        let second = now / 1_000;
        if self.ask_budget.0 != second {
            self.ask_budget = (second, 0);
        }
        if self.asked.len() >= MAX_MISSING_TRACKED {
            self.asked
                .retain(|_, t| now < t.saturating_add(MISSING_PROOF_EVERY_MS));
        }
        let mut out = Vec::new();
        for txid in missing {
            if self.ask_budget.1 >= MISSING_PROOFS_PER_S || self.asked.len() >= MAX_MISSING_TRACKED
            {
                break;
            }
            if self
                .asked
                .get(&txid)
                .is_some_and(|t| now < t.saturating_add(MISSING_PROOF_EVERY_MS))
            {
                continue;
            }
            self.asked.insert(txid, now);
            self.ask_budget.1 += 1;
            out.push(txid);
        }
        out
    }

    /// Where the chain stands, as `status` reports it.
    pub fn status(&self) -> crate::protocol::message::BlockStatus {
        let tip = self.tip();
        crate::protocol::message::BlockStatus {
            height: tip.height,
            tip: tip.hash,
            tip_time_ms: tip.time_ms,
            syncing: self.sync.behind(tip.height),
            unconfirmed: self.unconfirmed.len() as u32,
        }
    }

    /// Blocks this node is behind the best height its peers showed.
    pub fn sync_lag(&self) -> u64 {
        self.sync.lag(self.tip().height)
    }

    pub fn sync_stats(&self) -> &crate::masternode::block_sync::SyncStats {
        &self.sync.stats
    }

    pub fn stats(&self) -> &BlockLayerStats {
        &self.stats
    }

    /// Block processing stopped: a committed block contradicted a payment
    /// final here (like two certificates at one height, only possible with
    /// Byzantine weight of 1/3 or more). Instant finality goes on; the
    /// operator investigates (logged as critical). Durable: a restart
    /// stays stopped until the operator clears the record
    /// (`Write::ClearBlockStop`).
    pub fn stopped(&self) -> bool {
        self.stats.stop.is_some()
    }

    /// The stop recorded before a restart.
    pub fn restore_stop(&mut self, stop: Option<Contradiction>) {
        if let Some(c) = &stop {
            self.stats.last_contradiction = Some(c.to_string());
        }
        self.stats.stop = stop;
    }

    pub fn consensus(&self) -> &BlockConsensus {
        &self.consensus
    }

    /// Collects the consensus effects: durable writes (own records before
    /// anything leaves), confirmations of committed payments in the engine,
    /// broadcasts, block sync requests, and the proofs a proposal waits on.
    pub fn drain(&mut self, now: u64, engine: &mut Engine) -> BlockEffects {
        let r = self.consensus.take_round();
        let mut fx = BlockEffects {
            broadcasts: r.broadcasts,
            ..BlockEffects::default()
        };
        for w in r.writes {
            match w {
                ConsensusWrite::OwnVote(v) => fx.writes.push(Write::AppendOwnBlockVote(v)),
                ConsensusWrite::Candidate(c) => fx.writes.push(Write::PutCandidate(c)),
                ConsensusWrite::Fork(f) => fx.writes.push(Write::PutForkEvidence(f)),
                ConsensusWrite::Evidence(e) => fx.writes.push(Write::PutBlockEvidence(e)),
                ConsensusWrite::Committed(c) => {
                    let height = c.block.height();
                    self.start_confirming(now, engine, &c.block);
                    self.last_block_time = Some(c.block.header.time_ms);
                    fx.writes.push(Write::PutBlock(c));
                    // After the block, in the same transaction: records
                    // below it are never needed again.
                    if height % BLOCK_RECORDS_KEPT == 0 && height > BLOCK_RECORDS_KEPT {
                        fx.writes.push(Write::PruneBlockRecords {
                            below: height - BLOCK_RECORDS_KEPT,
                        });
                    }
                }
            }
        }
        // The first part of a block committed now, or the next part of one
        // committed earlier: in the same round as whatever else it wrote.
        self.confirm(now, engine, self.confirmations_per_round);
        fx.writes.append(&mut self.held_writes);
        for (peer, height) in r.behind {
            self.sync.saw(peer, height);
        }
        fx.requests = self.sync.plan(now, self.consensus.tip().height);
        fx.missing = r.missing;
        fx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::consensus::ConsensusConfig;
    use crate::blocks::ChainTip;
    use crate::protocol::registry::Tier;
    use crate::testkit;

    fn layer() -> BlockLayer {
        let keys: Vec<_> = (0..4).map(|i| testkit::key_from_seed("mn", i)).collect();
        let g = testkit::genesis(7, &keys, Tier::Bronze, &[], 0, 0);
        let tip = ChainTip {
            height: 0,
            hash: crate::blocks::BlockHash::genesis(7, g.registry.epoch()),
            time_ms: 0,
        };
        BlockLayer::new(BlockConsensus::new(
            ConsensusConfig::devnet(),
            7,
            keys[0].clone(),
            g.registry,
            tip,
            None,
            &[],
            vec![],
            0,
        ))
    }

    #[test]
    fn the_catch_up_waits_only_for_a_vouched_sync_that_moves() {
        let keys: Vec<_> = (0..4).map(|i| testkit::key_from_seed("mn", i)).collect();
        let registry = testkit::genesis(7, &keys, Tier::Bronze, &[], 0, 0).registry;
        let pk = |i: usize| PublicKey::from_signing(&keys[i]);
        let mut l = layer();
        // Just started, no peer heard from: no wait.
        assert!(!l.syncing_blocks(1_000, &registry));
        // One peer (1/4 of the weight) claiming a great height: still not
        // vouched for, no wait.
        l.sync.saw(pk(1), 1_000_000);
        assert!(!l.syncing_blocks(5_000, &registry));
        // A second peer: vouched, far behind, the sync holds the walk...
        l.sync.saw(pk(2), 500);
        assert!(l.syncing_blocks(6_000, &registry));
        // ...until the tip has not moved for SYNC_STALL_MS.
        assert!(l.syncing_blocks(6_000 + SYNC_STALL_MS - 1, &registry));
        assert!(!l.syncing_blocks(6_000 + SYNC_STALL_MS, &registry));
        // Two or fewer blocks behind is in step.
        let mut l = layer();
        l.sync.saw(pk(1), 3);
        l.sync.saw(pk(2), 3);
        assert!(!l.syncing_blocks(0, &registry));
    }

    #[test]
    fn missing_proofs_are_asked_once_a_second_within_their_own_budget() {
        let mut l = layer();
        let t = |i: u8| Txid([i; 32]);
        assert_eq!(l.proofs_to_ask(10_000, vec![t(1), t(2)]), vec![t(1), t(2)]);
        // Every core round re-reports what the proposal waits on: not asked again.
        assert!(l.proofs_to_ask(10_100, vec![t(1), t(2)]).is_empty());
        assert_eq!(l.proofs_to_ask(11_000, vec![t(1)]), vec![t(1)]);
        // At most MISSING_PROOFS_PER_S a second.
        let many: Vec<Txid> = (0..=255u8).map(t).collect();
        let asked = l.proofs_to_ask(20_000, many.clone());
        assert_eq!(asked.len(), MISSING_PROOFS_PER_S as usize);
        assert!(l.proofs_to_ask(20_500, many.clone()).is_empty());
        assert_eq!(
            l.proofs_to_ask(21_000, many).len(),
            MISSING_PROOFS_PER_S as usize
        );
    }
}
