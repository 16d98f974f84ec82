//! Fixtures shared by the criterion micro-benchmarks (`benches/micro.rs`)
//! and the ingest macro-benchmark (`time-ingest`): a genesis with equal
//! masternodes and funding coins, pre-signed payments spending them, the
//! peers' signed vote batches, and the ed25519 batch-verification rate that
//! bounds what one core can ingest.
//!
//! Everything is deterministic (keys come from labels) and in memory; nothing
//! here touches the network.

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use timecoin::protocol::registry::Tier;
use timecoin::protocol::types::{Transaction, TxOutput, Txid, COIN};
use timecoin::protocol::vote::{Decision, VoteBatch, VoteItem};
use timecoin::sig;
use timecoin::storage::Genesis;
use timecoin::testkit::{self, address_of, genesis_outpoint, key_from_seed};

/// The benchmarks' network id.
pub const CHAIN: u32 = 77;
/// Registry epoch written by [`testkit::genesis`].
pub const EPOCH: u64 = 1;
/// Every genesis coin holds this much.
pub const COIN_AMOUNT: u64 = 10 * COIN;

/// A network of `masternodes` equal (bronze) masternodes and `wallets`
/// wallets holding `coins_per_wallet` coins each.
pub struct Network {
    pub masternodes: Vec<SigningKey>,
    pub wallets: Vec<SigningKey>,
    pub coins_per_wallet: u32,
    pub genesis: Genesis,
}

impl Network {
    /// Enough coins for `coins` payments: at most 1,000 wallets (distinct
    /// keys, so batch verification sees distinct public keys as in life).
    pub fn new(masternodes: usize, coins: usize) -> Network {
        let n_wallets = coins.clamp(1, 1_000);
        let coins_per_wallet = coins.div_ceil(n_wallets) as u32;
        let masternodes: Vec<SigningKey> = (0..masternodes as u64)
            .map(|i| key_from_seed("bench-masternode", i))
            .collect();
        let wallets: Vec<SigningKey> = (0..n_wallets as u64)
            .map(|i| key_from_seed("bench-wallet", i))
            .collect();
        let genesis = testkit::genesis(
            CHAIN,
            &masternodes,
            Tier::Bronze,
            &wallets,
            coins_per_wallet,
            COIN_AMOUNT,
        );
        Network {
            masternodes,
            wallets,
            coins_per_wallet,
            genesis,
        }
    }

    /// Payment `i`: spends its own genesis coin (1 input), pays another
    /// wallet and returns the change (2 outputs), minimum fee.
    pub fn payment(&self, i: usize) -> Transaction {
        let n = self.wallets.len();
        let (w, c) = (i % n, i / n);
        assert!(c < self.coins_per_wallet as usize, "payment {i}: no coin");
        let to = address_of(&self.wallets[(w + 1) % n]);
        let change = address_of(&self.wallets[w]);
        let pay = 4 * COIN;
        Transaction::build_signed(
            CHAIN,
            &self.wallets[w],
            &[genesis_outpoint(w as u32, c as u32)],
            vec![
                TxOutput {
                    amount: pay,
                    address: to,
                },
                TxOutput {
                    amount: COIN_AMOUNT - pay - COIN / 100,
                    address: change,
                },
            ],
        )
    }

    /// Payments `0..count`, signed on `threads` threads.
    pub fn payments(&self, count: usize, threads: usize) -> Vec<Transaction> {
        let threads = threads.clamp(1, 64);
        let per = count.div_ceil(threads).max(1);
        std::thread::scope(|s| {
            let parts: Vec<_> = (0..count)
                .step_by(per)
                .map(|start| {
                    s.spawn(move || {
                        (start..(start + per).min(count))
                            .map(|i| self.payment(i))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|h| h.join().expect("signing thread"))
                .collect()
        })
    }
}

/// Approve items for `txids`.
pub fn approvals(txids: &[Txid]) -> Vec<VoteItem> {
    txids
        .iter()
        .map(|t| VoteItem {
            txid: *t,
            decision: Decision::Approve,
        })
        .collect()
}

/// One voter's approve batches over `txids`, `per_batch` items each.
pub fn vote_batches(key: &SigningKey, txids: &[Txid], per_batch: usize) -> Vec<VoteBatch> {
    txids
        .chunks(per_batch.max(1))
        .map(|c| VoteBatch::sign(CHAIN, EPOCH, key, approvals(c)))
        .collect()
}

/// Work done in a measured span: how many items, in wall-clock time and in
/// the measuring thread's CPU time. On a shared machine the CPU-time rate is
/// the one that says what a core can do.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rate {
    pub count: u64,
    pub wall: Duration,
    pub cpu: Duration,
}

impl Rate {
    pub fn per_s_wall(&self) -> f64 {
        self.count as f64 / self.wall.as_secs_f64()
    }
    pub fn per_s_cpu(&self) -> f64 {
        self.count as f64 / self.cpu.as_secs_f64()
    }
    /// Two spans added up.
    pub fn plus(&self, o: &Rate) -> Rate {
        Rate {
            count: self.count + o.count,
            wall: self.wall + o.wall,
            cpu: self.cpu + o.cpu,
        }
    }
}

/// What one core sustains verifying ed25519 signatures.
#[derive(Clone, Copy, Debug)]
pub struct CryptoRates {
    /// Signatures through [`sig::verify_all`] (one ZIP 215 batch) in batches
    /// of `batch`.
    pub batch_verify: Rate,
    pub batch: usize,
    /// Signatures through one-by-one [`sig::verify`] (ZIP 215).
    pub single_verify: Rate,
}

/// One input signature to verify: the signed message, the signature, the key.
pub type SignedInput = ([u8; 61], [u8; 64], [u8; 32]);

/// The input signatures of `txs`: the exact work
/// [`timecoin::protocol::validation::verify_signatures_batch`] hands to ed25519.
pub fn input_signatures(txs: &[Transaction]) -> Vec<SignedInput> {
    txs.iter()
        .flat_map(|tx| {
            let txid = tx.txid();
            tx.inputs.iter().enumerate().map(move |(i, input)| {
                (
                    Transaction::input_sig_message(tx.chain_id, &txid, i as u32),
                    input.signature,
                    input.public_key.0,
                )
            })
        })
        .collect()
}

/// Measures batch verification (batches of `batch` signatures) and single
/// strict verification on the calling thread, each for about `time`.
pub fn measure_crypto(sigs: &[SignedInput], batch: usize, time: Duration) -> CryptoRates {
    assert!(sigs.len() >= batch && batch > 0);
    let chunks: Vec<Vec<sig::Item>> = sigs
        .chunks_exact(batch)
        .map(|c| c.iter().map(|(m, s, k)| (k, &m[..], s)).collect())
        .collect();
    let (start, cpu0) = (Instant::now(), thread_cpu_time());
    let mut done = 0u64;
    'batch: loop {
        for items in &chunks {
            assert!(sig::verify_all(items), "valid batch");
            done += batch as u64;
            if start.elapsed() >= time {
                break 'batch;
            }
        }
    }
    let batch_verify = Rate {
        count: done,
        wall: start.elapsed(),
        cpu: thread_cpu_time() - cpu0,
    };

    let (start, cpu0) = (Instant::now(), thread_cpu_time());
    let mut done = 0u64;
    'single: loop {
        for (m, s, k) in sigs {
            assert!(sig::verify(k, m, s), "valid signature");
            done += 1;
            if done.is_multiple_of(256) && start.elapsed() >= time / 2 {
                break 'single;
            }
        }
    }
    CryptoRates {
        batch_verify,
        batch,
        single_verify: Rate {
            count: done,
            wall: start.elapsed(),
            cpu: thread_cpu_time() - cpu0,
        },
    }
}

/// CPU time consumed by the calling thread.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use timecoin::protocol::validation::{check_stateless, verify_signatures, Limits};

    #[test]
    fn payments_are_valid_and_distinct() {
        let net = Network::new(4, 10);
        let txs = net.payments(10, 2);
        assert_eq!(txs.len(), 10);
        let ids: std::collections::HashSet<Txid> = txs.iter().map(|t| t.txid()).collect();
        assert_eq!(ids.len(), 10);
        for tx in &txs {
            check_stateless(tx, CHAIN, &Limits::default()).unwrap();
            verify_signatures(tx, &tx.txid()).unwrap();
        }
        let b = vote_batches(&net.masternodes[1], &ids.into_iter().collect::<Vec<_>>(), 4);
        assert_eq!(b.len(), 3);
        assert!(b.iter().all(|b| b.verify().is_some()));
    }
}
