//! A deterministic mutation smoke test for every decoder a peer can reach:
//! `Message::decode` (frames, transactions, vote batches, proofs, handshake),
//! `Transaction::from_bytes`, `TimeProof::from_bytes` and `VoteBatch::decode`.
//! It is the fallback for machines where cargo-fuzz cannot run (the targets
//! under `fuzz/` are the coverage-guided version). Each input is mutated from
//! a corpus of valid encodings; each decoder must return, never panic, and
//! whatever decodes must encode back to something that decodes to the same
//! value.

use std::panic::{catch_unwind, AssertUnwindSafe};

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use timecoin_core::codec::Reader;
use timecoin_core::protocol::message::{Hello, Message, Role};
use timecoin_core::protocol::timeproof::TimeProof;
use timecoin_core::protocol::types::{
    Address, OutPoint, PublicKey, Transaction, TxOutput, Txid, COIN,
};
use timecoin_core::protocol::utxo::{UtxoEntry, UtxoState};
use timecoin_core::protocol::validation::RejectCode;
use timecoin_core::protocol::vote::{Decision, VoteBatch, VoteItem};
use timecoin_core::testkit::key_from_seed;

use crate::config::CHAIN_ID;
use crate::rng_for;

/// Valid encodings per decoder: the mutation starting points here, and the
/// seed corpora for the cargo-fuzz targets (`time-sim --write-corpus`).
pub struct Corpus {
    pub messages: Vec<Vec<u8>>,
    pub transactions: Vec<Vec<u8>>,
    pub proofs: Vec<Vec<u8>>,
    pub vote_batches: Vec<Vec<u8>>,
}

impl Corpus {
    /// (cargo-fuzz target name, its seed inputs).
    pub fn by_target(&self) -> [(&'static str, &Vec<Vec<u8>>); 4] {
        [
            ("message_decode", &self.messages),
            ("transaction_from_bytes", &self.transactions),
            ("timeproof_from_bytes", &self.proofs),
            ("vote_batch_decode", &self.vote_batches),
        ]
    }
}

/// Every valid encoding, flattened.
pub fn corpus() -> Vec<Vec<u8>> {
    let c = structured_corpus();
    let mut v = c.messages;
    v.extend(c.transactions);
    v.extend(c.proofs);
    v.extend(c.vote_batches);
    v
}

pub fn structured_corpus() -> Corpus {
    let k = key_from_seed("fuzz", 0);
    let k2 = key_from_seed("fuzz", 1);
    let tx = Transaction::build_signed(
        CHAIN_ID,
        &k,
        &[
            OutPoint {
                txid: Txid([3; 32]),
                vout: 1,
            },
            OutPoint {
                txid: Txid([4; 32]),
                vout: 0,
            },
        ],
        vec![
            TxOutput {
                amount: COIN,
                address: Address([9; 20]),
            },
            TxOutput {
                amount: 2 * COIN,
                address: Address([8; 20]),
            },
        ],
    );
    let items: Vec<VoteItem> = (0..5u8)
        .map(|i| VoteItem {
            txid: Txid([i; 32]),
            decision: if i % 2 == 0 {
                Decision::Approve
            } else {
                Decision::Reject(RejectCode::InputLocked)
            },
        })
        .collect();
    let b1 = VoteBatch::sign(CHAIN_ID, 1, &k, items.clone());
    let b2 = VoteBatch::sign(CHAIN_ID, 1, &k2, items);
    let certs = [&b1, &b2]
        .iter()
        .map(|b| {
            let l = b.verify().expect("signed");
            b.cert(&l, 2)
        })
        .collect();
    let proof = TimeProof {
        chain_id: CHAIN_ID,
        txid: Txid([2; 32]),
        votes: certs,
    };
    let entry = UtxoEntry {
        output: TxOutput {
            amount: 5,
            address: Address([1; 20]),
        },
        state: UtxoState::SpentPending {
            txid: Txid([6; 32]),
            weight: 3,
        },
    };
    let msgs = vec![
        Message::Hello(Hello {
            chain_id: CHAIN_ID,
            protocol_version: 1,
            role: Role::Masternode,
            public_key: PublicKey::from_signing(&k),
            nonce: [5; 32],
        }),
        Message::HelloAuth([7; 64]),
        Message::Ping(9),
        Message::SubmitTransaction(tx.clone()),
        Message::TransactionBroadcast(tx.clone()),
        Message::VoteBatch(b1.clone()),
        Message::TimeProof {
            tx: tx.clone(),
            proof: proof.clone(),
        },
        Message::ProofRequest(Txid([1; 32])),
        Message::TransactionAccepted(Txid([1; 32])),
        Message::TransactionRejected {
            txid: Txid([1; 32]),
            reason: RejectCode::FeeTooLow,
            detail: "fee".into(),
            rejecters: vec![(PublicKey([2; 32]), RejectCode::InputSpent)],
        },
        Message::UtxoStateQuery(vec![OutPoint {
            txid: Txid([1; 32]),
            vout: 2,
        }]),
        Message::AddressQuery(Address([3; 20])),
        Message::UtxoStateResponse(vec![
            (
                OutPoint {
                    txid: Txid([1; 32]),
                    vout: 2,
                },
                Some(entry),
            ),
            (
                OutPoint {
                    txid: Txid([1; 32]),
                    vout: 3,
                },
                None,
            ),
        ]),
        Message::WalletSubscribe(vec![Address([4; 20])]),
        Message::UtxoStateNotification {
            outpoint: OutPoint {
                txid: Txid([1; 32]),
                vout: 0,
            },
            entry,
        },
        Message::NewTransactionNotification {
            txid: tx.txid(),
            tx: tx.clone(),
        },
        Message::Error {
            code: 3,
            detail: "bye".into(),
        },
    ];
    let mut vb = Vec::new();
    b2.encode(&mut vb);
    let mut vb1 = Vec::new();
    b1.encode(&mut vb1);
    Corpus {
        messages: msgs.iter().map(|m| m.to_bytes()).collect(),
        transactions: vec![tx.to_bytes()],
        proofs: vec![proof.to_bytes()],
        vote_batches: vec![vb, vb1],
    }
}

/// One mutation of one corpus entry (or of two, spliced).
pub fn mutate(rng: &mut ChaCha8Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = corpus.choose(rng).expect("corpus").clone();
    for _ in 0..rng.gen_range(1..=4) {
        match rng.gen_range(0..8) {
            0 if !v.is_empty() => {
                let i = rng.gen_range(0..v.len());
                v[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if !v.is_empty() => {
                let i = rng.gen_range(0..v.len());
                v[i] = rng.gen();
            }
            2 if !v.is_empty() => v.truncate(rng.gen_range(0..v.len())),
            3 => {
                let i = rng.gen_range(0..=v.len());
                let extra: Vec<u8> = (0..rng.gen_range(1..16)).map(|_| rng.gen()).collect();
                v.splice(i..i, extra);
            }
            4 if v.len() >= 4 => {
                // A length or count field set to something large.
                let i = rng.gen_range(0..v.len() - 3);
                let x: u32 = *[u32::MAX, 0x8000_0000, 65_535, 4_097, 16_385, 1_001, 0]
                    .choose(rng)
                    .expect("values");
                v[i..i + 4].copy_from_slice(&x.to_le_bytes());
            }
            5 => {
                let other = corpus.choose(rng).expect("corpus");
                let cut = rng.gen_range(0..=v.len());
                let from = rng.gen_range(0..=other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            6 if !v.is_empty() => {
                // The message tag.
                v[0] = rng.gen();
            }
            _ => {
                let n = rng.gen_range(0..64);
                v = (0..n).map(|_| rng.gen()).collect();
            }
        }
    }
    v
}

/// How one decoder fared.
#[derive(Clone, Debug, Default)]
pub struct DecoderStats {
    pub name: &'static str,
    pub inputs: u64,
    pub decoded: u64,
    pub rejected: u64,
    /// Inputs that panicked or broke the round trip, hex-encoded (first few).
    pub failures: Vec<String>,
}

type Check = fn(&[u8]) -> Result<bool, String>;

fn check_message(b: &[u8]) -> Result<bool, String> {
    match Message::decode(b) {
        Ok(m) => {
            let again =
                Message::decode(&m.to_bytes()).map_err(|e| format!("re-decode failed: {e}"))?;
            (again == m)
                .then_some(true)
                .ok_or_else(|| "round trip changed the message".into())
        }
        Err(_) => Ok(false),
    }
}

fn check_transaction(b: &[u8]) -> Result<bool, String> {
    match Transaction::from_bytes(b) {
        Ok(t) => {
            let bytes = t.to_bytes();
            if bytes != b {
                return Err("re-encoding differs from the input".into());
            }
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

fn check_proof(b: &[u8]) -> Result<bool, String> {
    match TimeProof::from_bytes(b) {
        Ok(p) => {
            let again = TimeProof::from_bytes(&p.to_bytes())
                .map_err(|e| format!("re-decode failed: {e}"))?;
            (again == p)
                .then_some(true)
                .ok_or_else(|| "round trip changed the proof".into())
        }
        Err(_) => Ok(false),
    }
}

fn check_vote_batch(b: &[u8]) -> Result<bool, String> {
    let mut r = Reader::new(b);
    match VoteBatch::decode(&mut r).and_then(|v| r.finish().map(|_| v)) {
        Ok(v) => {
            let mut out = Vec::new();
            v.encode(&mut out);
            let mut r2 = Reader::new(&out);
            let again = VoteBatch::decode(&mut r2).map_err(|e| format!("re-decode failed: {e}"))?;
            (again == v)
                .then_some(true)
                .ok_or_else(|| "round trip changed the batch".into())
        }
        Err(_) => Ok(false),
    }
}

pub const DECODERS: [(&str, Check); 4] = [
    ("Message::decode", check_message),
    ("Transaction::from_bytes", check_transaction),
    ("TimeProof::from_bytes", check_proof),
    ("VoteBatch::decode", check_vote_batch),
];

/// Feeds `n` mutated inputs (plus the corpus itself) to every decoder.
pub fn smoke(seed: u64, n: u64) -> Vec<DecoderStats> {
    let corpus = corpus();
    let mut rng = rng_for(seed, "decoders");
    let mut stats: Vec<DecoderStats> = DECODERS
        .iter()
        .map(|(name, _)| DecoderStats {
            name,
            ..Default::default()
        })
        .collect();
    let inputs = corpus
        .iter()
        .cloned()
        .chain((0..n).map(|_| mutate(&mut rng, &corpus)));
    for input in inputs {
        for ((_, check), st) in DECODERS.iter().zip(stats.iter_mut()) {
            st.inputs += 1;
            match catch_unwind(AssertUnwindSafe(|| check(&input))) {
                Ok(Ok(true)) => st.decoded += 1,
                Ok(Ok(false)) => st.rejected += 1,
                Ok(Err(e)) => {
                    if st.failures.len() < 5 {
                        st.failures.push(format!("{e}: {}", hex::encode(&input)));
                    }
                }
                Err(_) => {
                    if st.failures.len() < 5 {
                        st.failures.push(format!("panic: {}", hex::encode(&input)));
                    }
                }
            }
        }
    }
    stats
}
