//! Blocks: header, body (the transactions finalized since the previous
//! block), the block hash and the bounded encodings. A block never creates
//! finality: every transaction in it already holds a TimeProof; the block
//! orders them and moves their inputs to `Confirmed{height}`.

use std::fmt;

use crate::codec::{DecodeError, Reader};
use crate::protocol::types::{ChainId, PublicKey, Transaction, Txid};
use crate::protocol::vote::{merkle_levels, merkle_path, merkle_root, root_from_path};

/// Current block format version.
pub const BLOCK_VERSION: u16 = 1;
/// Largest encoded block (seed limit: 2 MB). A proposer that has more final
/// transactions carries the rest over to the next block.
pub const MAX_BLOCK_BYTES: usize = 2_000_000;
/// Most transactions one block may carry (bounds decode and Merkle work).
pub const MAX_BLOCK_TXS: usize = 16_384;
/// Smallest encoded transaction: no inputs, no outputs.
const MIN_TX_LEN: usize = 2 + 4 + 4 + 4 + 8;

const DOMAIN_BLOCK: &[u8] = b"TIMECOIN/block/v1";
const DOMAIN_BLOCK_TX: &[u8] = b"TIMECOIN/block-tx/v1";
const DOMAIN_GENESIS_BLOCK: &[u8] = b"TIMECOIN/genesis-block/v1";

/// blake3 of a block header (domain-separated).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BlockHash(pub [u8; 32]);

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockHash({})", hex::encode(&self.0[..6]))
    }
}
impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl BlockHash {
    /// The hash height 1 builds on: the chain id and registry epoch of the
    /// genesis (height 0 has no block of its own).
    pub fn genesis(chain_id: ChainId, epoch: u64) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(DOMAIN_GENESIS_BLOCK);
        h.update(&chain_id.to_le_bytes());
        h.update(&epoch.to_le_bytes());
        BlockHash(*h.finalize().as_bytes())
    }
}

/// What the block hash commits to. Fixed size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockHeader {
    pub version: u16,
    pub chain_id: ChainId,
    /// Registry epoch whose masternodes commit this block.
    pub epoch: u64,
    pub height: u64,
    pub prev: BlockHash,
    /// Proposer's clock, milliseconds since the Unix epoch; strictly above
    /// the previous block's.
    pub time_ms: u64,
    /// The masternode that built the block.
    pub proposer: PublicKey,
    /// Merkle root over the txids, in block order.
    pub tx_root: [u8; 32],
    pub tx_count: u32,
}

impl BlockHeader {
    pub const ENCODED_LEN: usize = 2 + 4 + 8 + 8 + 32 + 8 + 32 + 32 + 4;

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.chain_id.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.height.to_le_bytes());
        out.extend_from_slice(&self.prev.0);
        out.extend_from_slice(&self.time_ms.to_le_bytes());
        out.extend_from_slice(&self.proposer.0);
        out.extend_from_slice(&self.tx_root);
        out.extend_from_slice(&self.tx_count.to_le_bytes());
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version = r.u16()?;
        if version != BLOCK_VERSION {
            return Err(DecodeError::Invalid {
                what: "block version",
            });
        }
        Ok(BlockHeader {
            version,
            chain_id: r.u32()?,
            epoch: r.u64()?,
            height: r.u64()?,
            prev: BlockHash(r.array()?),
            time_ms: r.u64()?,
            proposer: PublicKey(r.array()?),
            tx_root: r.array()?,
            tx_count: r.u32()?,
        })
    }

    pub fn hash(&self) -> BlockHash {
        let mut buf = Vec::with_capacity(DOMAIN_BLOCK.len() + Self::ENCODED_LEN);
        buf.extend_from_slice(DOMAIN_BLOCK);
        self.encode(&mut buf);
        BlockHash(*blake3::hash(&buf).as_bytes())
    }
}

/// The Merkle leaf of a txid in a block's transaction tree.
fn tx_leaf(t: &Txid) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(DOMAIN_BLOCK_TX);
    h.update(&t.0);
    *h.finalize().as_bytes()
}

/// Merkle root over the txids of a block body (zero for an empty block).
pub fn tx_root<'a>(txids: impl Iterator<Item = &'a Txid>) -> [u8; 32] {
    merkle_root(&merkle_levels(txids.map(tx_leaf).collect()))
}

/// Most siblings a transaction's Merkle path in a block has (16,384
/// transactions: 14 levels; decoders cap at this).
pub const MAX_TX_PATH: usize = 32;

impl BlockHeader {
    /// Whether `txid` is the block's transaction number `index`, by its
    /// Merkle path to `tx_root`.
    pub fn includes(&self, txid: &Txid, index: u32, path: &[[u8; 32]]) -> bool {
        root_from_path(tx_leaf(txid), index as usize, self.tx_count as usize, path)
            == Some(self.tx_root)
    }
}

impl Block {
    /// The Merkle path of transaction number `index` (see
    /// [`BlockHeader::includes`]).
    pub fn tx_path(&self, index: usize) -> Vec<[u8; 32]> {
        let leaves = self
            .transactions
            .iter()
            .map(|t| tx_leaf(&t.txid()))
            .collect();
        merkle_path(&merkle_levels(leaves), index)
    }
}

/// Why a block's own bytes are inconsistent (independent of any node's state).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockFormatError {
    #[error("header says {header} transactions, body has {body}")]
    TxCount { header: u32, body: usize },
    #[error("transaction root does not match the body")]
    TxRoot,
    #[error("transaction {0} appears twice")]
    DuplicateTx(Txid),
    #[error("block is {len} bytes, the limit is {max}")]
    TooLarge { len: usize, max: usize },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub header: BlockHeader,
    pub transactions: Vec<Transaction>,
}

impl Block {
    /// Builds a block over `transactions`, filling in the root and count.
    pub fn new(
        chain_id: ChainId,
        epoch: u64,
        height: u64,
        prev: BlockHash,
        time_ms: u64,
        proposer: PublicKey,
        transactions: Vec<Transaction>,
    ) -> Self {
        let txids: Vec<Txid> = transactions.iter().map(|t| t.txid()).collect();
        Block {
            header: BlockHeader {
                version: BLOCK_VERSION,
                chain_id,
                epoch,
                height,
                prev,
                time_ms,
                proposer,
                tx_root: tx_root(txids.iter()),
                tx_count: transactions.len() as u32,
            },
            transactions,
        }
    }

    pub fn hash(&self) -> BlockHash {
        self.header.hash()
    }

    pub fn height(&self) -> u64 {
        self.header.height
    }

    pub fn txids(&self) -> Vec<Txid> {
        self.transactions.iter().map(|t| t.txid()).collect()
    }

    pub fn encoded_len(&self) -> usize {
        BlockHeader::ENCODED_LEN
            + 4
            + self
                .transactions
                .iter()
                .map(|t| t.encoded_len())
                .sum::<usize>()
    }

    /// The header, then a u32 count and the transactions.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.header.encode(out);
        out.extend_from_slice(&(self.transactions.len() as u32).to_le_bytes());
        for t in &self.transactions {
            t.encode(out);
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode(&mut v);
        v
    }

    /// Decodes a block of at most [`MAX_BLOCK_BYTES`]; the body is checked
    /// against the header (count, root, no repeated transaction).
    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let start = r.remaining();
        let header = BlockHeader::decode(r)?;
        let n = r.count("block transactions", MAX_BLOCK_TXS, MIN_TX_LEN)?;
        let mut transactions = Vec::with_capacity(n);
        for _ in 0..n {
            transactions.push(Transaction::decode(r)?);
            if start - r.remaining() > MAX_BLOCK_BYTES {
                return Err(DecodeError::TooMany {
                    what: "block bytes",
                    count: (start - r.remaining()) as u64,
                    max: MAX_BLOCK_BYTES as u64,
                });
            }
        }
        let block = Block {
            header,
            transactions,
        };
        block.check_format().map_err(|_| DecodeError::Invalid {
            what: "block body does not match its header",
        })?;
        Ok(block)
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let block = Self::decode(&mut r)?;
        r.finish()?;
        Ok(block)
    }

    /// The body matches the header and the block fits the size limit.
    pub fn check_format(&self) -> Result<(), BlockFormatError> {
        if self.header.tx_count as usize != self.transactions.len() {
            return Err(BlockFormatError::TxCount {
                header: self.header.tx_count,
                body: self.transactions.len(),
            });
        }
        let len = self.encoded_len();
        if len > MAX_BLOCK_BYTES {
            return Err(BlockFormatError::TooLarge {
                len,
                max: MAX_BLOCK_BYTES,
            });
        }
        let txids = self.txids();
        let mut seen = std::collections::HashSet::with_capacity(txids.len());
        for t in &txids {
            if !seen.insert(*t) {
                return Err(BlockFormatError::DuplicateTx(*t));
            }
        }
        if tx_root(txids.iter()) != self.header.tx_root {
            return Err(BlockFormatError::TxRoot);
        }
        Ok(())
    }
}
