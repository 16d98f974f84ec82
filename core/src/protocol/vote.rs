//! Signed vote batches. One ed25519 signature covers a whole batch of
//! (txid, decision) items through a blake3 Merkle root, so signing and
//! verifying cost is per batch, not per transaction (a single verify costs
//! ~35 µs here; see ../shared/NOTES.md). A [`VoteCert`] extracts one item with
//! its Merkle path, so a TimeProof stays small and verifiable on its own.

use crate::codec::{DecodeError, Reader};
use ed25519_dalek::{Signer, SigningKey};

use crate::protocol::types::{ChainId, PublicKey, Txid};
use crate::protocol::validation::RejectCode;

const DOMAIN_VOTE: &[u8] = b"TIMECOIN/vote-batch/v1";
const DOMAIN_LEAF: &[u8] = b"TIMECOIN/vote-leaf/v1";
const DOMAIN_NODE: &[u8] = b"TIMECOIN/vote-node/v1";

/// Most items one batch may carry (bounds decode and Merkle work).
pub const MAX_VOTE_ITEMS: usize = 16_384;
/// Longest Merkle path: ceil(log2(MAX_VOTE_ITEMS)).
pub const MAX_MERKLE_DEPTH: usize = 14;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    Approve,
    Reject(RejectCode),
}

impl Decision {
    pub fn is_approve(&self) -> bool {
        matches!(self, Decision::Approve)
    }
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Decision::Approve => {
                out.push(0);
                out.extend_from_slice(&0u16.to_le_bytes());
            }
            Decision::Reject(code) => {
                out.push(1);
                out.extend_from_slice(&code.code().to_le_bytes());
            }
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let tag = r.u8()?;
        let code = r.u16()?;
        match tag {
            0 if code == 0 => Ok(Decision::Approve),
            1 => Ok(Decision::Reject(RejectCode::from_code(code))),
            0 => Err(DecodeError::Invalid {
                what: "approve decision with a reason",
            }),
            t => Err(DecodeError::UnknownTag {
                what: "decision",
                tag: t,
            }),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VoteItem {
    pub txid: Txid,
    pub decision: Decision,
}

impl VoteItem {
    pub const ENCODED_LEN: usize = 32 + 3;

    pub fn leaf(&self) -> [u8; 32] {
        let mut buf = Vec::with_capacity(DOMAIN_LEAF.len() + Self::ENCODED_LEN);
        buf.extend_from_slice(DOMAIN_LEAF);
        buf.extend_from_slice(&self.txid.0);
        self.decision.encode(&mut buf);
        *blake3::hash(&buf).as_bytes()
    }
}

fn node_hash(l: &[u8; 32], r: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(DOMAIN_NODE);
    h.update(l);
    h.update(r);
    *h.finalize().as_bytes()
}

/// All levels of the Merkle tree, leaves first. An odd node is carried up
/// unchanged (no duplication, so no second-preimage games with repeated leaves).
pub fn merkle_levels(leaves: Vec<[u8; 32]>) -> Vec<Vec<[u8; 32]>> {
    let mut levels = vec![leaves];
    while levels.last().map(|l| l.len()).unwrap_or(0) > 1 {
        let prev = levels.last().expect("non-empty");
        let next: Vec<[u8; 32]> = prev
            .chunks(2)
            .map(|c| {
                if c.len() == 2 {
                    node_hash(&c[0], &c[1])
                } else {
                    c[0]
                }
            })
            .collect();
        levels.push(next);
    }
    levels
}

pub fn merkle_root(levels: &[Vec<[u8; 32]>]) -> [u8; 32] {
    levels
        .last()
        .and_then(|l| l.first())
        .copied()
        .unwrap_or([0; 32])
}

/// Sibling path for leaf `index`; levels where the node had no sibling are skipped.
pub fn merkle_path(levels: &[Vec<[u8; 32]>], mut index: usize) -> Vec<[u8; 32]> {
    let mut path = Vec::new();
    for level in &levels[..levels.len().saturating_sub(1)] {
        let sib = index ^ 1;
        if sib < level.len() {
            path.push(level[sib]);
        }
        index /= 2;
    }
    path
}

/// Recomputes the root from a leaf, its index, the leaf count and the path.
/// `None` if the path does not fit the shape of a tree with `count` leaves.
pub fn root_from_path(
    leaf: [u8; 32],
    mut index: usize,
    mut count: usize,
    path: &[[u8; 32]],
) -> Option<[u8; 32]> {
    if index >= count {
        return None;
    }
    let mut acc = leaf;
    let mut used = 0;
    while count > 1 {
        let sib = index ^ 1;
        if sib < count {
            let s = path.get(used)?;
            used += 1;
            acc = if index.is_multiple_of(2) {
                node_hash(&acc, s)
            } else {
                node_hash(s, &acc)
            };
        }
        index /= 2;
        count = count.div_ceil(2);
    }
    (used == path.len()).then_some(acc)
}

fn signing_message(
    chain_id: ChainId,
    epoch: u64,
    voter: &PublicKey,
    count: u32,
    root: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN_VOTE.len() + 4 + 8 + 32 + 4 + 32);
    m.extend_from_slice(DOMAIN_VOTE);
    m.extend_from_slice(&chain_id.to_le_bytes());
    m.extend_from_slice(&epoch.to_le_bytes());
    m.extend_from_slice(&voter.0);
    m.extend_from_slice(&count.to_le_bytes());
    m.extend_from_slice(root);
    m
}

/// A masternode's signed votes on a batch of transactions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteBatch {
    pub chain_id: ChainId,
    /// Registry epoch the voter was registered in.
    pub epoch: u64,
    pub voter: PublicKey,
    pub items: Vec<VoteItem>,
    pub signature: [u8; 64],
}

impl VoteBatch {
    pub fn sign(chain_id: ChainId, epoch: u64, key: &SigningKey, items: Vec<VoteItem>) -> Self {
        let voter = PublicKey::from_signing(key);
        let levels = merkle_levels(items.iter().map(|i| i.leaf()).collect());
        let msg = signing_message(
            chain_id,
            epoch,
            &voter,
            items.len() as u32,
            &merkle_root(&levels),
        );
        VoteBatch {
            chain_id,
            epoch,
            voter,
            items,
            signature: key.sign(&msg).to_bytes(),
        }
    }

    /// The Merkle levels and the message the signature must cover.
    pub fn levels_and_message(&self) -> (Vec<Vec<[u8; 32]>>, Vec<u8>) {
        let levels = merkle_levels(self.items.iter().map(|i| i.leaf()).collect());
        let msg = signing_message(
            self.chain_id,
            self.epoch,
            &self.voter,
            self.items.len() as u32,
            &merkle_root(&levels),
        );
        (levels, msg)
    }

    /// Verifies the signature ([`crate::sig`], ZIP 215). Returns the Merkle
    /// levels on success so certificates can be cut without hashing again.
    pub fn verify(&self) -> Option<Vec<Vec<[u8; 32]>>> {
        let (levels, msg) = self.levels_and_message();
        crate::sig::verify(&self.voter.0, &msg, &self.signature).then_some(levels)
    }

    pub fn cert(&self, levels: &[Vec<[u8; 32]>], index: usize) -> VoteCert {
        VoteCert {
            voter: self.voter,
            epoch: self.epoch,
            decision: self.items[index].decision,
            index: index as u32,
            leaf_count: self.items.len() as u32,
            path: merkle_path(levels, index),
            signature: self.signature,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.chain_id.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.voter.0);
        out.extend_from_slice(&(self.items.len() as u32).to_le_bytes());
        for i in &self.items {
            out.extend_from_slice(&i.txid.0);
            i.decision.encode(out);
        }
        out.extend_from_slice(&self.signature);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let chain_id = r.u32()?;
        let epoch = r.u64()?;
        let voter = PublicKey(r.array()?);
        let n = r.count("vote items", MAX_VOTE_ITEMS, VoteItem::ENCODED_LEN)?;
        if n == 0 {
            return Err(DecodeError::Invalid {
                what: "empty vote batch",
            });
        }
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(VoteItem {
                txid: Txid(r.array()?),
                decision: Decision::decode(r)?,
            });
        }
        Ok(VoteBatch {
            chain_id,
            epoch,
            voter,
            items,
            signature: r.array()?,
        })
    }
}

/// One masternode's vote on one transaction, cut from a signed batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteCert {
    pub voter: PublicKey,
    pub epoch: u64,
    pub decision: Decision,
    pub index: u32,
    pub leaf_count: u32,
    pub path: Vec<[u8; 32]>,
    pub signature: [u8; 64],
}

impl VoteCert {
    /// The message the voter's signature covers, if the path is well formed.
    pub fn signed_message(&self, chain_id: ChainId, txid: &Txid) -> Option<Vec<u8>> {
        let leaf = VoteItem {
            txid: *txid,
            decision: self.decision,
        }
        .leaf();
        let root = root_from_path(
            leaf,
            self.index as usize,
            self.leaf_count as usize,
            &self.path,
        )?;
        Some(signing_message(
            chain_id,
            self.epoch,
            &self.voter,
            self.leaf_count,
            &root,
        ))
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.voter.0);
        out.extend_from_slice(&self.epoch.to_le_bytes());
        self.decision.encode(out);
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.leaf_count.to_le_bytes());
        out.push(self.path.len() as u8);
        for p in &self.path {
            out.extend_from_slice(p);
        }
        out.extend_from_slice(&self.signature);
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let voter = PublicKey(r.array()?);
        let epoch = r.u64()?;
        let decision = Decision::decode(r)?;
        let index = r.u32()?;
        let leaf_count = r.u32()?;
        let depth = r.u8()? as usize;
        if depth > MAX_MERKLE_DEPTH {
            return Err(DecodeError::TooMany {
                what: "merkle path",
                count: depth as u64,
                max: MAX_MERKLE_DEPTH as u64,
            });
        }
        let mut path = Vec::with_capacity(depth);
        for _ in 0..depth {
            path.push(r.array()?);
        }
        Ok(VoteCert {
            voter,
            epoch,
            decision,
            index,
            leaf_count,
            path,
            signature: r.array()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<VoteItem> {
        (0..n)
            .map(|i| VoteItem {
                txid: Txid([i as u8; 32]),
                decision: if i % 3 == 0 {
                    Decision::Reject(RejectCode::InputLocked)
                } else {
                    Decision::Approve
                },
            })
            .collect()
    }

    #[test]
    fn every_cert_verifies_for_every_batch_size() {
        let key = SigningKey::from_bytes(&[7; 32]);
        for n in 1..40 {
            let b = VoteBatch::sign(9, 1, &key, items(n));
            let levels = b.verify().expect("valid batch");
            let (_, msg) = b.levels_and_message();
            for i in 0..n {
                let c = b.cert(&levels, i);
                assert_eq!(c.signed_message(9, &b.items[i].txid).as_ref(), Some(&msg));
                // Wrong txid, wrong index, or wrong chain: different message.
                let other = Txid([200; 32]);
                assert_ne!(c.signed_message(9, &other).as_ref(), Some(&msg));
                assert_ne!(c.signed_message(8, &b.items[i].txid).as_ref(), Some(&msg));
                if n > 1 {
                    let mut c2 = c.clone();
                    c2.index = ((i + 1) % n) as u32;
                    assert_ne!(c2.signed_message(9, &b.items[i].txid).as_ref(), Some(&msg));
                }
            }
        }
    }

    #[test]
    fn tampered_batch_fails() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut b = VoteBatch::sign(9, 1, &key, items(5));
        b.items[1].decision = Decision::Reject(RejectCode::InputLocked);
        assert!(b.verify().is_none());
        let mut b = VoteBatch::sign(9, 1, &key, items(5));
        b.epoch = 2;
        assert!(b.verify().is_none());
    }

    #[test]
    fn batch_round_trip() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let b = VoteBatch::sign(9, 1, &key, items(5));
        let mut out = Vec::new();
        b.encode(&mut out);
        let mut r = Reader::new(&out);
        assert_eq!(VoteBatch::decode(&mut r).unwrap(), b);
        r.finish().unwrap();
    }
}
