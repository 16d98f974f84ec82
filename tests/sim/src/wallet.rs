//! Wallets. An honest wallet spends only outputs it has seen finalized (its
//! genesis coins and its own change, so payments chain), submits to one
//! masternode and, if it hears nothing final, resubmits the same transaction
//! to another. A double-spending wallet signs several transactions spending
//! the same coins and sends them to different masternodes at the same
//! moment, or all of them to everyone, again and again, adding new
//! conflicting variants as time goes on; it also double-spends the change of
//! its own finalized transactions.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::SigningKey;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use timecoin_core::protocol::types::{Address, OutPoint, Transaction, TxOutput, Txid, COIN};

use crate::config::{Micros, CHAIN_ID, SEC};

const FEE: u64 = COIN / 100;

fn build(
    key: &SigningKey,
    coins: &[(OutPoint, u64)],
    to: Address,
    amount: u64,
    change_to: Address,
) -> Transaction {
    let total: u64 = coins.iter().map(|c| c.1).sum();
    let prevs: Vec<OutPoint> = coins.iter().map(|c| c.0).collect();
    Transaction::build_signed(
        CHAIN_ID,
        key,
        &prevs,
        vec![
            TxOutput {
                amount,
                address: to,
            },
            TxOutput {
                amount: total - amount - FEE,
                address: change_to,
            },
        ],
    )
}

struct Pending {
    tx: Transaction,
    tried: Vec<usize>,
    change: (OutPoint, u64),
}

pub struct HonestWallet {
    pub id: usize,
    pub key: SigningKey,
    pub address: Address,
    coins: Vec<(OutPoint, u64)>,
    pending: BTreeMap<Txid, Pending>,
    pub finalized: BTreeSet<Txid>,
}

impl HonestWallet {
    pub fn new(id: usize, key: SigningKey, coins: Vec<(OutPoint, u64)>) -> Self {
        let address = timecoin_core::testkit::address_of(&key);
        HonestWallet {
            id,
            key,
            address,
            coins,
            pending: BTreeMap::new(),
            finalized: BTreeSet::new(),
        }
    }

    /// A new payment from outputs known final, or nothing to spend.
    pub fn pay(&mut self, rng: &mut ChaCha8Rng, to: Address, node: usize) -> Option<Transaction> {
        self.coins.retain(|c| c.1 >= COIN / 10);
        if self.coins.is_empty() {
            return None;
        }
        self.coins.shuffle(rng);
        let k = if self.coins.len() >= 2 && rng.gen_bool(0.25) {
            2
        } else {
            1
        };
        let spend: Vec<(OutPoint, u64)> = self.coins.drain(..k).collect();
        let total: u64 = spend.iter().map(|c| c.1).sum();
        let amount = rng.gen_range(total / 10..=total / 3);
        let tx = build(&self.key, &spend, to, amount, self.address);
        let txid = tx.txid();
        let change = (OutPoint { txid, vout: 1 }, total - amount - FEE);
        self.pending.insert(
            txid,
            Pending {
                tx: tx.clone(),
                tried: vec![node],
                change,
            },
        );
        Some(tx)
    }

    /// A masternode told us `txid` is final.
    pub fn on_final(&mut self, txid: Txid) {
        if let Some(p) = self.pending.remove(&txid) {
            self.finalized.insert(txid);
            self.coins.push(p.change);
        }
    }

    /// Still waiting: resubmit to a masternode not tried yet (or any).
    pub fn retry(
        &mut self,
        rng: &mut ChaCha8Rng,
        txid: Txid,
        nodes: usize,
    ) -> Option<(usize, Transaction)> {
        let p = self.pending.get_mut(&txid)?;
        let untried: Vec<usize> = (0..nodes).filter(|n| !p.tried.contains(n)).collect();
        let node = match untried.choose(rng) {
            Some(n) => *n,
            None => rng.gen_range(0..nodes),
        };
        p.tried.push(node);
        Some((node, p.tx.clone()))
    }

    pub fn submitted_to(&self, txid: &Txid, node: usize) -> bool {
        self.pending
            .get(txid)
            .is_some_and(|p| p.tried.contains(&node))
    }

    pub fn is_pending(&self, txid: &Txid) -> bool {
        self.pending.contains_key(txid)
    }
}

struct ConflictSet {
    coins: Vec<(OutPoint, u64)>,
    variants: Vec<Transaction>,
    /// When the next new variant is added.
    next_variant: Micros,
}

/// A wallet that tries to spend its coins twice.
pub struct DoubleSpender {
    pub id: usize,
    pub key: SigningKey,
    pub address: Address,
    coins: Vec<(OutPoint, u64)>,
    sets: Vec<ConflictSet>,
    pub finalized: BTreeSet<Txid>,
    known: BTreeSet<Txid>,
}

impl DoubleSpender {
    pub fn new(id: usize, key: SigningKey, coins: Vec<(OutPoint, u64)>) -> Self {
        let address = timecoin_core::testkit::address_of(&key);
        DoubleSpender {
            id,
            key,
            address,
            coins,
            sets: Vec::new(),
            finalized: BTreeSet::new(),
            known: BTreeSet::new(),
        }
    }

    pub fn owns(&self, txid: &Txid) -> bool {
        self.known.contains(txid)
    }

    fn variant(
        &mut self,
        rng: &mut ChaCha8Rng,
        coins: &[(OutPoint, u64)],
        recipients: &[Address],
    ) -> Transaction {
        let total: u64 = coins.iter().map(|c| c.1).sum();
        let to = *recipients.choose(rng).expect("recipients");
        let amount = rng.gen_range(total / 10..=total / 2);
        let tx = build(&self.key, coins, to, amount, self.address);
        self.known.insert(tx.txid());
        tx
    }

    /// One step: start a new attack or push an old one again. Returns the
    /// submissions to make now, as (masternode, transaction).
    pub fn step(
        &mut self,
        rng: &mut ChaCha8Rng,
        now: Micros,
        nodes: usize,
        recipients: &[Address],
    ) -> Vec<(usize, Transaction)> {
        let mut out = Vec::new();
        self.coins.retain(|c| c.1 >= COIN / 10);
        if !self.coins.is_empty() && (self.sets.is_empty() || rng.gen_bool(0.3)) {
            self.coins.shuffle(rng);
            let k = if self.coins.len() >= 2 && rng.gen_bool(0.3) {
                2
            } else {
                1
            };
            let coins: Vec<(OutPoint, u64)> = self.coins.drain(..k).collect();
            let n_var = rng.gen_range(2..=3);
            let variants: Vec<Transaction> = (0..n_var)
                .map(|_| self.variant(rng, &coins, recipients))
                .collect();
            let mut order: Vec<usize> = (0..nodes).collect();
            order.shuffle(rng);
            if rng.gen_bool(0.6) {
                // Split: each masternode gets one variant, all at once.
                for (j, node) in order.iter().enumerate() {
                    out.push((*node, variants[j % variants.len()].clone()));
                }
            } else {
                // Everything to everyone, in a different order per masternode.
                for node in order {
                    let mut vs = variants.clone();
                    vs.shuffle(rng);
                    for v in vs {
                        out.push((node, v));
                    }
                }
            }
            self.sets.push(ConflictSet {
                coins,
                variants,
                next_variant: now + rng.gen_range(3..=40) * SEC,
            });
            return out;
        }
        if self.sets.is_empty() {
            return out;
        }
        // Again: an old set, to random masternodes, maybe with a new variant.
        let i = rng.gen_range(0..self.sets.len());
        if now >= self.sets[i].next_variant {
            let coins = self.sets[i].coins.clone();
            let v = self.variant(rng, &coins, recipients);
            self.sets[i].variants.push(v.clone());
            let set = &mut self.sets[i];
            set.next_variant = now + rng.gen_range(3..=40) * SEC;
            for node in 0..nodes {
                out.push((node, v.clone()));
            }
            return out;
        }
        let set = &self.sets[i];
        for _ in 0..rng.gen_range(1..=nodes) {
            let v = set.variants.choose(rng).expect("variants").clone();
            out.push((rng.gen_range(0..nodes), v));
        }
        out
    }

    /// One of our transactions is final: its change is ours to double-spend.
    pub fn on_final(&mut self, tx: &Transaction) {
        let txid = tx.txid();
        if !self.known.contains(&txid) || !self.finalized.insert(txid) {
            return;
        }
        if let Some(o) = tx.outputs.get(1) {
            if o.address == self.address {
                self.coins.push((OutPoint { txid, vout: 1 }, o.amount));
            }
        }
    }
}
