//! The block layer inside the masternode: the [`BlockConsensus`] state
//! machine, the queue of final payments not yet in a block, the view of the
//! engine the consensus checks blocks against, and block sync requests.
//!
//! Instant finality never waits on anything here: the engine finalizes
//! payments whatever the block layer does, and a block only moves inputs a
//! TimeProof settled (`SpentFinalized`) to `Confirmed{height}`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::blocks::consensus::{BlockLedger, BodyRejection, ConsensusWrite};
use crate::blocks::{Block, BlockConsensus, ChainTip, CommittedBlock, ConsensusMessage};
use crate::protocol::engine::Engine;
use crate::protocol::types::{PublicKey, Transaction, Txid};
use crate::protocol::utxo::UtxoState;
use crate::storage::Write;

/// Most committed blocks sent for one `BlockRequest` (each up to 2 MB).
pub const MAX_BLOCKS_PER_REQUEST: u64 = 4;
/// Least time between two block requests to one peer.
pub const BLOCK_REQUEST_INTERVAL_MS: u64 = 200;

/// The engine as the block consensus sees it.
pub struct LedgerView<'a> {
    pub engine: &'a Engine,
    pub unconfirmed: &'a Unconfirmed,
}

impl BlockLedger for LedgerView<'_> {
    fn block_body(&self, max_bytes: usize) -> Vec<Transaction> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for txid in &self.unconfirmed.order {
            let Some(tx) = self.unconfirmed.txs.get(txid) else {
                continue;
            };
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
        for tx in &block.transactions {
            let txid = tx.txid();
            if !self.engine.known_final(&txid) || tx.inputs.is_empty() {
                return Err(BodyRejection::NotFinal(txid));
            }
            for input in &tx.inputs {
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
        }
        Ok(())
    }
}

/// Final payments not yet in a block, in the order they became final (a
/// parent is always final before its child).
#[derive(Default)]
pub struct Unconfirmed {
    order: VecDeque<Txid>,
    txs: HashMap<Txid, Arc<Transaction>>,
}

impl Unconfirmed {
    pub fn push(&mut self, tx: Arc<Transaction>) {
        let txid = tx.txid();
        if self.txs.insert(txid, tx).is_none() {
            self.order.push_back(txid);
        }
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
}

pub struct BlockLayer {
    pub(crate) consensus: BlockConsensus,
    pub(crate) unconfirmed: Unconfirmed,
    last_request: HashMap<PublicKey, u64>,
    pub(crate) stats: BlockLayerStats,
    last_block_time: Option<u64>,
}

/// What the block layer produced in a round, in masternode terms.
#[derive(Default)]
pub struct BlockEffects {
    pub writes: Vec<Write>,
    pub broadcasts: Vec<ConsensusMessage>,
    pub requests: Vec<(PublicKey, u64)>,
    pub committed: Vec<CommittedBlock>,
}

impl BlockLayer {
    pub fn new(consensus: BlockConsensus) -> Self {
        BlockLayer {
            consensus,
            unconfirmed: Unconfirmed::default(),
            last_request: HashMap::new(),
            stats: BlockLayerStats::default(),
            last_block_time: None,
        }
    }

    pub fn tip(&self) -> ChainTip {
        self.consensus.tip()
    }

    pub fn last_block_time(&self) -> Option<u64> {
        self.last_block_time
    }

    /// Collects the consensus effects: durable writes (own records before
    /// anything leaves), confirmations of committed payments in the engine,
    /// broadcasts, and rate-limited block requests to peers we are behind.
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
                ConsensusWrite::Committed(c) => {
                    let height = c.block.height();
                    for tx in &c.block.transactions {
                        if engine.confirm(tx, height) > 0 {
                            self.stats.confirmed_transactions += 1;
                        }
                        self.unconfirmed.remove(&tx.txid());
                    }
                    self.last_block_time = Some(c.block.header.time_ms);
                    fx.committed.push((*c).clone());
                    fx.writes.push(Write::PutBlock(c));
                }
            }
        }
        for (peer, from) in r.behind {
            let last = self.last_request.get(&peer).copied();
            if last.is_none_or(|t| now >= t + BLOCK_REQUEST_INTERVAL_MS) {
                self.last_request.insert(peer, now);
                fx.requests.push((peer, from));
            }
        }
        fx
    }
}
