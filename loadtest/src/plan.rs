//! What one load step sends: the open-loop schedule (a linear ramp, then a
//! constant rate), which payments become conflicting pairs, and the
//! transactions, all signed before the step starts so signing never paces
//! the load.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use timecoin::protocol::message::Message;
use timecoin::protocol::types::{Address, ChainId, OutPoint, Transaction, TxOutput, Txid, COIN};

/// The minimum fee: every payment pays exactly this.
pub const FEE: u64 = COIN / 100;
/// Below this an output is dust and refused.
pub const DUST: u64 = 546;
/// Size of a payment coin: the fee plus an output far above dust.
pub const COIN_SIZE: u64 = 2 * FEE;

/// A spendable output the load generator owns.
#[derive(Clone, Copy, Debug)]
pub struct Coin {
    pub outpoint: OutPoint,
    pub amount: u64,
    /// Index of the owning key.
    pub key: usize,
}

/// The rate over time of one step.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    /// Payments per second once ramped up.
    pub rate: f64,
    /// Linear ramp from 0 to `rate`.
    pub ramp: Duration,
    /// Time at full rate.
    pub steady: Duration,
}

impl Profile {
    /// Payments the step makes (each spends one coin).
    pub fn payments(&self) -> usize {
        (self.rate * (self.ramp.as_secs_f64() / 2.0 + self.steady.as_secs_f64())).floor() as usize
    }

    /// When payment `i` is due, in nanoseconds from the step's start: the
    /// inverse of the cumulative count `n(t)`.
    pub fn at_ns(&self, i: usize) -> u64 {
        let r = self.ramp.as_secs_f64();
        let i = i as f64;
        let in_ramp = self.rate * r / 2.0;
        let t = if r > 0.0 && i < in_ramp {
            (2.0 * i * r / self.rate).sqrt()
        } else {
            r + (i - in_ramp) / self.rate
        };
        (t * 1e9) as u64
    }

    pub fn total(&self) -> Duration {
        self.ramp + self.steady
    }
}

/// Whether payment `i` is turned into a conflicting pair: spreads
/// `fraction` of the payments evenly (deterministic, no RNG).
pub fn is_pair(i: usize, fraction: f64) -> bool {
    fraction > 0.0 && ((i + 1) as f64 * fraction).floor() > (i as f64 * fraction).floor()
}

/// One transaction to send.
pub struct Submission {
    /// The encoded `SubmitTransaction` message (a frame's payload).
    pub frame: Vec<u8>,
    pub txid: Txid,
    /// Which wallet connection sends it.
    pub conn: usize,
    /// When it is due, nanoseconds from the step's start.
    pub at_ns: u64,
    /// The conflicting pair it belongs to.
    pub pair: Option<u32>,
    /// The coin it spends.
    pub coin: OutPoint,
}

/// Everything a step sends, in due order.
pub struct StepPlan {
    pub profile: Profile,
    pub subs: Vec<Submission>,
    pub payments: usize,
    pub pairs: usize,
}

/// Where each connection goes: `conn_target[c]` is the masternode (index)
/// connection `c` talks to.
pub fn connection_targets(connections: usize, targets: usize) -> Vec<usize> {
    (0..connections).map(|c| c % targets).collect()
}

/// The first connection after `c` that talks to another masternode.
fn other_conn(conn_target: &[usize], c: usize) -> Option<usize> {
    (1..conn_target.len())
        .map(|d| (c + d) % conn_target.len())
        .find(|&o| conn_target[o] != conn_target[c])
}

pub struct PlanInput<'a> {
    pub profile: Profile,
    pub coins: &'a [Coin],
    pub keys: &'a [SigningKey],
    /// Recipients of the two sides of a pair (single payments pay the first).
    pub recipients: [Address; 2],
    pub chain_id: ChainId,
    pub conn_target: &'a [usize],
    /// Fraction of payments that become conflicting pairs (0..=1).
    pub pair_fraction: f64,
    pub threads: usize,
}

struct Slot {
    coin: Coin,
    to: Address,
    amount: u64,
    conn: usize,
    at_ns: u64,
    pair: Option<u32>,
}

/// Builds and signs the step. `coins` must hold at least
/// `profile.payments()` coins.
pub fn build(input: PlanInput<'_>) -> StepPlan {
    let n = input.profile.payments();
    assert!(input.coins.len() >= n, "not enough coins for the step");
    let conns = input.conn_target.len();
    let mut slots = Vec::with_capacity(n + n / 8);
    let mut pairs = 0u32;
    for i in 0..n {
        let coin = input.coins[i];
        let conn = i % conns;
        let at_ns = input.profile.at_ns(i);
        let amount = coin.amount - FEE;
        let pair = if is_pair(i, input.pair_fraction) {
            other_conn(input.conn_target, conn).map(|other| {
                // Different recipient and amount: a different txid on the
                // same coin, sent to another masternode at the same moment.
                // Which side goes where alternates across masternodes.
                let p = pairs;
                pairs += 1;
                (p, other)
            })
        } else {
            None
        };
        slots.push(Slot {
            coin,
            to: input.recipients[0],
            amount,
            conn,
            at_ns,
            pair: pair.map(|(p, _)| p),
        });
        if let Some((p, other)) = pair {
            slots.push(Slot {
                coin,
                to: input.recipients[1],
                amount: amount - 1,
                conn: other,
                at_ns,
                pair: Some(p),
            });
        }
    }
    let chain_id = input.chain_id;
    let keys = input.keys;
    let sign = |s: &Slot| {
        let tx = Transaction::build_signed(
            chain_id,
            &keys[s.coin.key],
            &[s.coin.outpoint],
            vec![TxOutput {
                amount: s.amount,
                address: s.to,
            }],
        );
        Submission {
            txid: tx.txid(),
            frame: Message::SubmitTransaction(tx).to_bytes(),
            conn: s.conn,
            at_ns: s.at_ns,
            pair: s.pair,
            coin: s.coin.outpoint,
        }
    };
    let threads = input.threads.max(1);
    let chunk = slots.len().div_ceil(threads).max(1);
    let subs: Vec<Submission> = std::thread::scope(|scope| {
        let handles: Vec<_> = slots
            .chunks(chunk)
            .map(|c| scope.spawn(move || c.iter().map(sign).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("signing thread"))
            .collect()
    });
    StepPlan {
        profile: input.profile,
        subs,
        payments: n,
        pairs: pairs as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use timecoin::protocol::types::PublicKey;

    #[test]
    fn schedule_ramps_then_holds_the_rate() {
        let p = Profile {
            rate: 1000.0,
            ramp: Duration::from_secs(2),
            steady: Duration::from_secs(3),
        };
        assert_eq!(p.payments(), 4000);
        assert_eq!(p.at_ns(0), 0);
        // Half-way through the ramp's count is at 1/sqrt(2) of its time.
        let t = p.at_ns(500) as f64 / 1e9;
        assert!((t - 2f64.sqrt()).abs() < 1e-6, "{t}");
        assert_eq!(p.at_ns(1000), 2_000_000_000);
        assert_eq!(p.at_ns(2000), 3_000_000_000);
        let flat = Profile {
            ramp: Duration::ZERO,
            ..p
        };
        assert_eq!(flat.at_ns(10), 10_000_000);
    }

    #[test]
    fn pairs_are_spread_evenly() {
        let n = (0..1000).filter(|&i| is_pair(i, 0.1)).count();
        assert_eq!(n, 100);
        assert_eq!((0..1000).filter(|&i| is_pair(i, 0.0)).count(), 0);
        assert_eq!((0..1000).filter(|&i| is_pair(i, 1.0)).count(), 1000);
    }

    #[test]
    fn pair_sides_spend_one_coin_through_two_masternodes() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let coins: Vec<Coin> = (0..100)
            .map(|i| Coin {
                outpoint: OutPoint {
                    txid: Txid([1; 32]),
                    vout: i,
                },
                amount: COIN_SIZE,
                key: 0,
            })
            .collect();
        let sink = |b| {
            Address::from_public_key(&PublicKey::from_signing(&SigningKey::from_bytes(&[b; 32])))
        };
        let conn_target = connection_targets(5, 4);
        let plan = build(PlanInput {
            profile: Profile {
                rate: 100.0,
                ramp: Duration::ZERO,
                steady: Duration::from_secs(1),
            },
            coins: &coins,
            keys: &[key],
            recipients: [sink(1), sink(2)],
            chain_id: 9,
            conn_target: &conn_target,
            pair_fraction: 0.2,
            threads: 2,
        });
        assert_eq!(plan.payments, 100);
        assert_eq!(plan.pairs, 20);
        assert_eq!(plan.subs.len(), 120);
        let mut by_pair: std::collections::HashMap<u32, Vec<&Submission>> = Default::default();
        for s in &plan.subs {
            if let Some(p) = s.pair {
                by_pair.entry(p).or_default().push(s);
            }
        }
        for sides in by_pair.values() {
            let [a, b] = sides[..] else {
                panic!("two sides")
            };
            assert_ne!(a.txid, b.txid);
            assert_eq!(a.at_ns, b.at_ns);
            assert_ne!(conn_target[a.conn], conn_target[b.conn]);
            let ta = match Message::decode(&a.frame).unwrap() {
                Message::SubmitTransaction(t) => t,
                _ => unreachable!(),
            };
            let tb = match Message::decode(&b.frame).unwrap() {
                Message::SubmitTransaction(t) => t,
                _ => unreachable!(),
            };
            assert_eq!(ta.inputs[0].prev, tb.inputs[0].prev);
        }
        assert!(plan.subs.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
    }
}
