//! The event trace: every event the simulator handles is folded into a
//! blake3 hash (and optionally printed). Two runs of one seed must produce
//! the same hash.
//!
//! Messages are hashed by what they mean, not by their bytes: a vote batch
//! as its voter and its *sorted* items. The engine builds a batch's item
//! order from its internal maps, and that order may differ between processes
//! (see the report on `Engine::tick`'s orphan expiry); the meaning does not.

use std::io::Write;

use timecoin_core::masternode::{Dest, Transmit};
use timecoin_core::protocol::engine::Event;
use timecoin_core::protocol::message::Message;
use timecoin_core::protocol::vote::Decision;

use crate::config::{Micros, MS};

/// A short, order-insensitive digest of what a message means.
pub fn message_digest(m: &Message) -> Vec<u8> {
    let mut d = Vec::with_capacity(64);
    match m {
        Message::SubmitTransaction(tx) => {
            d.push(1);
            d.extend_from_slice(&tx.txid().0);
        }
        Message::TransactionBroadcast(tx) => {
            d.push(2);
            d.extend_from_slice(&tx.txid().0);
        }
        Message::VoteBatch(b) => {
            d.push(3);
            d.extend_from_slice(&b.voter.0);
            d.extend_from_slice(&b.chain_id.to_le_bytes());
            d.extend_from_slice(&b.epoch.to_le_bytes());
            let mut items: Vec<([u8; 32], u16)> = b
                .items
                .iter()
                .map(|i| (i.txid.0, decision_code(&i.decision)))
                .collect();
            items.sort_unstable();
            let mut h = blake3::Hasher::new();
            for (t, c) in items {
                h.update(&t);
                h.update(&c.to_le_bytes());
            }
            d.extend_from_slice(h.finalize().as_bytes());
        }
        Message::TimeProof { tx, proof } => {
            d.push(4);
            d.extend_from_slice(&tx.txid().0);
            d.extend_from_slice(&proof.txid.0);
            let mut voters: Vec<[u8; 32]> = proof.votes.iter().map(|v| v.voter.0).collect();
            voters.sort_unstable();
            for v in voters {
                d.extend_from_slice(&v[..8]);
            }
        }
        Message::ProofRequest(t) => {
            d.push(5);
            d.extend_from_slice(&t.0);
        }
        // Block messages by meaning: a proposal's polka and a certificate's
        // signers come out of the consensus in hash-map order.
        Message::BlockProposal(p) => {
            d.push(7);
            d.extend_from_slice(&p.slot.height.to_le_bytes());
            d.extend_from_slice(&p.slot.round.to_le_bytes());
            d.extend_from_slice(&p.block.hash().0);
            d.extend_from_slice(&p.proposer.0);
            d.extend_from_slice(&p.signature);
            let mut voters: Vec<[u8; 32]> = p.polka.iter().map(|v| v.voter.0).collect();
            voters.sort_unstable();
            for v in voters {
                d.extend_from_slice(&v[..8]);
            }
        }
        Message::CommittedBlock(c) => {
            d.push(8);
            d.extend_from_slice(&c.block.hash().0);
            let mut voters: Vec<[u8; 32]> = c.cert.precommits.iter().map(|v| v.0 .0).collect();
            voters.sort_unstable();
            for v in voters {
                d.extend_from_slice(&v[..8]);
            }
        }
        other => {
            d.push(6);
            d.extend_from_slice(blake3::hash(&other.to_bytes()).as_bytes());
        }
    }
    d
}

fn decision_code(d: &Decision) -> u16 {
    match d {
        Decision::Approve => 0,
        Decision::Reject(c) => 1 + c.code(),
    }
}

/// A transmit: where it goes, then what it means.
pub fn transmit_digest(t: &Transmit) -> Vec<u8> {
    let mut d = Vec::with_capacity(96);
    match t.dest {
        Dest::AllPeers => d.push(0),
        Dest::Peer(p) => {
            d.push(1);
            d.extend_from_slice(&p.0);
        }
    }
    d.extend(message_digest(&t.msg));
    d
}

pub fn event_digest(e: &Event) -> Vec<u8> {
    let mut d = Vec::with_capacity(64);
    match e {
        Event::Accepted { txid } => {
            d.push(10);
            d.extend_from_slice(&txid.0);
        }
        Event::Finalized { txid, .. } => {
            d.push(11);
            d.extend_from_slice(&txid.0);
        }
        Event::Rejected { txid, reason, .. } => {
            d.push(12);
            d.extend_from_slice(&txid.0);
            d.extend_from_slice(&reason.code().to_le_bytes());
        }
        Event::Equivocation { voter, txid } => {
            d.push(13);
            d.extend_from_slice(&voter.0);
            d.extend_from_slice(&txid.0);
        }
        Event::ConflictingProofs(c) => {
            d.push(14);
            d.extend_from_slice(&c.outpoint.txid.0);
            d.extend_from_slice(&c.outpoint.vout.to_le_bytes());
            d.extend_from_slice(&c.kept.0);
            d.extend_from_slice(&c.competing.0);
        }
    }
    d
}

pub struct Trace {
    hasher: blake3::Hasher,
    pub events: u64,
    out: Option<Box<dyn Write + Send>>,
}

impl Trace {
    pub fn new(out: Option<Box<dyn Write + Send>>) -> Self {
        Trace {
            hasher: blake3::Hasher::new(),
            events: 0,
            out,
        }
    }

    pub fn logging(&self) -> bool {
        self.out.is_some()
    }

    /// Folds one event in.
    pub fn record(&mut self, t: Micros, kind: u8, node: usize, digest: &[u8]) {
        self.events += 1;
        self.hasher.update(&t.to_le_bytes());
        self.hasher.update(&[kind]);
        self.hasher.update(&(node as u32).to_le_bytes());
        self.hasher.update(&(digest.len() as u32).to_le_bytes());
        self.hasher.update(digest);
    }

    /// A human-readable line, when logging.
    pub fn line(&mut self, t: Micros, s: impl FnOnce() -> String) {
        if let Some(o) = self.out.as_mut() {
            let _ = writeln!(o, "{:>9.3} {}", t as f64 / MS as f64 / 1000.0, s());
        }
    }

    pub fn hash_hex(&self) -> String {
        hex::encode(&self.hasher.finalize().as_bytes()[..16])
    }
}
