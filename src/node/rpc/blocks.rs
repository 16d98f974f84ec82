//! The block methods of the JSON-RPC server: `getblockcount`,
//! `getbestblockhash`, `getblockhash`, `getblock`, `getconsensusinfo`.
//!
//! Blocks are read from LMDB on the RPC task through a read-only
//! [`ChainReader`] (readers never wait for the core's writer); consensus
//! state comes from the snapshot the core publishes once a second.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::{bad_params, err, RpcError};
use crate::node::metrics::CoreSnapshot;
use crate::storage::lmdb::ChainReader;
use timecoin_core::blocks::leader::leader;
use timecoin_core::blocks::{BlockHash, CommittedBlock};
use timecoin_core::protocol::registry::Registry;

/// What the block methods read.
pub(crate) struct ChainCtx {
    pub reader: ChainReader,
    pub chain_id: u32,
    pub registry: Registry,
    pub snapshot: Arc<Mutex<CoreSnapshot>>,
    /// The node runs the block layer (`block_interval_ms` > 0).
    pub enabled: bool,
}

/// Bitcoind's code for a height or hash this node does not have.
const INVALID_PARAMETER: i64 = -8;
const BLOCK_NOT_FOUND: i64 = -5;
/// The node runs without blocks.
const NO_BLOCK_LAYER: i64 = -32_001;

fn storage(e: crate::storage::StoreError) -> RpcError {
    err(-32_603, format!("storage: {e}"))
}

impl ChainCtx {
    fn require(&self) -> Result<(), RpcError> {
        if self.enabled {
            Ok(())
        } else {
            Err(err(
                NO_BLOCK_LAYER,
                "this masternode runs without the block layer (block_interval_ms = 0); set \
                 block_interval_ms to run it",
            ))
        }
    }

    fn genesis_hash(&self) -> BlockHash {
        BlockHash::genesis(self.chain_id, self.registry.epoch())
    }

    /// Height and hash of the last committed block (0 and the genesis hash
    /// before the first).
    pub fn tip(&self) -> Result<(u64, BlockHash), RpcError> {
        Ok(match self.reader.tip().map_err(storage)? {
            Some(c) => (c.block.height(), c.block.hash()),
            None => (0, self.genesis_hash()),
        })
    }

    /// A block method, or `None` if `method` is not one.
    pub async fn call(&self, method: &str, p: &[Value]) -> Option<Result<Value, RpcError>> {
        let r = match method {
            "getblockcount" => self.getblockcount(p),
            "getbestblockhash" => self.getbestblockhash(p),
            "getblockhash" => self.getblockhash(p),
            "getblock" => self.getblock(p),
            "getconsensusinfo" => self.getconsensusinfo(p),
            _ => return None,
        };
        Some(r)
    }

    fn no_params(method: &str, p: &[Value]) -> Result<(), RpcError> {
        if p.is_empty() {
            Ok(())
        } else {
            Err(bad_params(format!("{method} takes no parameters")))
        }
    }

    fn getblockcount(&self, p: &[Value]) -> Result<Value, RpcError> {
        Self::no_params("getblockcount", p)?;
        self.require()?;
        Ok(json!(self.tip()?.0))
    }

    fn getbestblockhash(&self, p: &[Value]) -> Result<Value, RpcError> {
        Self::no_params("getbestblockhash", p)?;
        self.require()?;
        Ok(json!(self.tip()?.1.to_string()))
    }

    fn getblockhash(&self, p: &[Value]) -> Result<Value, RpcError> {
        self.require()?;
        let height = match p {
            [h] => h
                .as_u64()
                .ok_or_else(|| bad_params("parameter 1 (height) must be an integer >= 0"))?,
            _ => return Err(bad_params("getblockhash takes [height]")),
        };
        if height == 0 {
            return Ok(json!(self.genesis_hash().to_string()));
        }
        match self.reader.block(height).map_err(storage)? {
            Some(c) => Ok(json!(c.block.hash().to_string())),
            None => Err(err(
                INVALID_PARAMETER,
                format!(
                    "Block height out of range: {height} (this node's tip is {})",
                    self.tip()?.0
                ),
            )),
        }
    }

    fn getblock(&self, p: &[Value]) -> Result<Value, RpcError> {
        self.require()?;
        let (hash, verbosity) = match p {
            [h] => (h, 1),
            [h, v] => (
                h,
                v.as_u64()
                    .filter(|v| *v <= 2)
                    .ok_or_else(|| bad_params("parameter 2 (verbosity) must be 0, 1 or 2"))?,
            ),
            _ => return Err(bad_params("getblock takes [blockhash, verbosity?]")),
        };
        let hash = hash
            .as_str()
            .and_then(|s| hex::decode(s).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(BlockHash)
            .ok_or_else(|| bad_params("parameter 1 (blockhash) must be 64 hex digits"))?;
        let Some(height) = self.reader.height_of(&hash).map_err(storage)? else {
            return Err(err(
                BLOCK_NOT_FOUND,
                format!("Block not found: {hash} (getblockhash HEIGHT gives a block's hash)"),
            ));
        };
        let c = self
            .reader
            .block(height)
            .map_err(storage)?
            .ok_or_else(|| err(BLOCK_NOT_FOUND, format!("Block not found: {hash}")))?;
        if verbosity == 0 {
            return Ok(json!(hex::encode(c.block.to_bytes())));
        }
        let tip = self.tip()?.0;
        Ok(self.block_json(&c, tip, verbosity == 2))
    }

    fn block_json(&self, c: &CommittedBlock, tip: u64, full: bool) -> Value {
        let b = &c.block;
        let h = &b.header;
        let weight: u64 = c
            .cert
            .precommits
            .iter()
            .filter_map(|(k, _)| self.registry.weight_of(k))
            .sum();
        let tx: Vec<Value> = if full {
            b.transactions
                .iter()
                .map(|t| {
                    let mut bytes = Vec::new();
                    t.encode(&mut bytes);
                    json!({"txid": t.txid().to_string(), "hex": hex::encode(bytes)})
                })
                .collect()
        } else {
            b.transactions
                .iter()
                .map(|t| json!(t.txid().to_string()))
                .collect()
        };
        json!({
            "hash": b.hash().to_string(),
            "height": h.height,
            "confirmations": tip.saturating_sub(h.height) + 1,
            "previousblockhash": h.prev.to_string(),
            "time_ms": h.time_ms,
            "time": h.time_ms / 1_000,
            "epoch": h.epoch,
            "proposer": h.proposer.to_string(),
            "size": b.encoded_len(),
            "nTx": b.transactions.len(),
            "tx": tx,
            "certificate": {
                "round": c.cert.slot.round,
                "signers": c.cert.precommits.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>(),
                "weight": weight,
                "total_weight": self.registry.total_weight(),
            },
        })
    }

    fn getconsensusinfo(&self, p: &[Value]) -> Result<Value, RpcError> {
        Self::no_params("getconsensusinfo", p)?;
        self.require()?;
        let snap = match self.snapshot.lock() {
            Ok(g) => g.blocks.clone(),
            Err(poisoned) => poisoned.into_inner().blocks.clone(),
        };
        let Some(b) = snap else {
            return Err(err(
                NO_BLOCK_LAYER,
                "the block layer has not reported yet; try again in a second",
            ));
        };
        // The tip from the store (current); the round and counters from the
        // core's snapshot (at most a second old).
        let (tip, tip_hash) = self.tip()?;
        let deciding = tip + 1;
        let round = if b.status.height == tip { b.round } else { 0 };
        let leader = leader(self.chain_id, &self.registry, deciding, round);
        Ok(json!({
            "height": tip,
            "bestblockhash": tip_hash.to_string(),
            "deciding_height": deciding,
            "round": round,
            "snapshot_age_note": "round and counters are the core's view of up to a second ago",
            "leader": leader.to_string(),
            "syncing": b.status.syncing,
            "halted": b.halted,
            "unconfirmed": b.status.unconfirmed,
            "committed": b.consensus.committed,
            "view_changes": b.consensus.view_changes,
            "proposals_made": b.consensus.proposals_made,
            "invalid_proposals": b.consensus.invalid_proposals,
            "equivocations": b.consensus.equivocations,
            "evidence_kept": b.consensus.evidence_kept,
            "synced_blocks": b.consensus.synced_blocks,
            "confirmed_transactions": b.layer.confirmed_transactions,
            "contradictions": b.layer.contradictions,
            "stopped": b.layer.stop.is_some(),
            "stop": b.layer.stop.as_ref().map(|s| s.to_string()),
            "quorum_weight": self.registry.total_weight() * 2 / 3 + 1,
            "total_weight": self.registry.total_weight(),
        }))
    }
}
