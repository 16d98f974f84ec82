//! Operator queries that the wallet protocol has no message for (a
//! transaction and its proof by txid, the mempool, the peers, the
//! registry), answered on the core thread from the state machine and the
//! store, like a wallet's queries. The RPC server asks them through
//! [`CoreInput::NodeQuery`](crate::node::core_input::CoreInput) and awaits a
//! oneshot answer.
//!
//! Owns only the read-out: it must never change the state machine.

use std::collections::HashSet;

use tokio::sync::oneshot;

use crate::protocol::timeproof::TimeProof;
use crate::protocol::types::{PublicKey, Transaction, Txid};
use crate::protocol::validation::RejectCode;
use crate::storage::{Store, StoreError};
use timecoin_core::masternode::Masternode;

/// Most txids `getrawmempool` lists (the count is always complete).
pub const MAX_MEMPOOL_LISTING: usize = 10_000;

/// A query the core answers from the state machine and the store.
#[derive(Debug)]
pub(super) enum NodeQuery {
    /// A transaction, its state here and its proof once final.
    Transaction(Txid),
    /// Pending txids, at most [`MAX_MEMPOOL_LISTING`].
    Mempool,
    /// The registered peer masternodes and how we stand with them.
    Peers,
    /// The registry: every masternode, its tier and weight.
    Masternodes,
}

/// Where a transaction stands on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxState {
    /// Final: its TimeProof is stored.
    Final,
    /// Known and undecided (locked here, votes being collected).
    Pending,
    /// Rejected here, and why.
    Rejected { reason: RejectCode, detail: String },
    /// Not known here (never seen, or forgotten after a restart).
    Unknown,
}

#[derive(Debug)]
pub struct TxInfo {
    pub txid: Txid,
    pub tx: Option<Transaction>,
    pub state: TxState,
    pub proof: Option<TimeProof>,
}

#[derive(Debug)]
pub struct PeerInfo {
    pub key: PublicKey,
    pub address: String,
    pub tier: &'static str,
    pub weight: u64,
    pub connected: bool,
    pub reputation: Option<i32>,
    /// Milliseconds of ban left, if banned.
    pub banned_for_ms: Option<u64>,
}

#[derive(Debug)]
pub struct MasternodeInfo {
    pub key: PublicKey,
    pub address: String,
    pub tier: &'static str,
    pub weight: u64,
    pub is_self: bool,
    pub connected: bool,
}

#[derive(Debug)]
pub(super) enum NodeAnswer {
    Transaction(Box<TxInfo>),
    Mempool {
        txids: Vec<Txid>,
        total: usize,
    },
    Peers(Vec<PeerInfo>),
    Masternodes {
        epoch: u64,
        total_weight: u64,
        quorum: u64,
        nodes: Vec<MasternodeInfo>,
    },
}

/// Where the answer goes.
pub(super) type NodeReply = oneshot::Sender<Result<NodeAnswer, StoreError>>;

/// Answers `query`; `connected` is the set of peers whose link is up now.
pub(super) fn answer(
    mn: &Masternode,
    store: &dyn Store,
    connected: &HashSet<PublicKey>,
    now: u64,
    query: NodeQuery,
) -> Result<NodeAnswer, StoreError> {
    let reg = mn.engine().registry();
    Ok(match query {
        NodeQuery::Transaction(txid) => {
            NodeAnswer::Transaction(Box::new(transaction(mn, store, txid)?))
        }
        NodeQuery::Mempool => NodeAnswer::Mempool {
            txids: mn.engine().pending_txids(MAX_MEMPOOL_LISTING),
            total: mn.engine().pending_count(),
        },
        NodeQuery::Peers => {
            let bans = mn.bans(now);
            NodeAnswer::Peers(
                reg.masternodes()
                    .iter()
                    .filter(|m| m.key != mn.public_key())
                    .map(|m| PeerInfo {
                        key: m.key,
                        address: m.address.clone(),
                        tier: m.tier.name(),
                        weight: m.tier.weight(),
                        connected: connected.contains(&m.key),
                        reputation: mn.peer_reputation(&m.key),
                        banned_for_ms: bans
                            .iter()
                            .find(|b| b.peer == m.key)
                            .map(|b| b.until_ms.saturating_sub(now)),
                    })
                    .collect(),
            )
        }
        NodeQuery::Masternodes => NodeAnswer::Masternodes {
            epoch: reg.epoch(),
            total_weight: reg.total_weight(),
            quorum: reg.quorum(),
            nodes: reg
                .masternodes()
                .iter()
                .map(|m| MasternodeInfo {
                    key: m.key,
                    address: m.address.clone(),
                    tier: m.tier.name(),
                    weight: m.tier.weight(),
                    is_self: m.key == mn.public_key(),
                    connected: m.key == mn.public_key() || connected.contains(&m.key),
                })
                .collect(),
        },
    })
}

fn transaction(mn: &Masternode, store: &dyn Store, txid: Txid) -> Result<TxInfo, StoreError> {
    let e = mn.engine();
    let proof = store.get_proof(&txid)?;
    let tx = match e.transaction(&txid) {
        Some(t) => Some((*t).clone()),
        None => store.get_transaction(&txid)?,
    };
    let state = if proof.is_some() {
        TxState::Final
    } else if let Some((reason, detail)) = e.rejection(&txid) {
        TxState::Rejected { reason, detail }
    } else if e.is_pending(&txid) {
        TxState::Pending
    } else {
        TxState::Unknown
    };
    Ok(TxInfo {
        txid,
        tx,
        state,
        proof,
    })
}
