//! What one run looks like, drawn entirely from its seed and the user's
//! options: topology and weights, which masternodes are Byzantine and how they
//! misbehave, link latencies and loss, the fault schedule (partitions,
//! crashes, clock skew), wallets, and the engine settings under test.
//!
//! Everything here is decided before the run starts, so the schedule of
//! disruptions is known to the liveness checker.

use std::fmt;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use timecoin_core::protocol::registry::{quorum_threshold, Tier};

use crate::rng_for;

/// Microseconds of virtual time.
pub type Micros = u64;
pub const MS: Micros = 1_000;
pub const SEC: Micros = 1_000_000;

/// The chain id every run uses.
pub const CHAIN_ID: u32 = 7;

/// Families of runs. `Mixed` draws every knob at random per seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Mixed,
    Calm,
    Lossy,
    Partition,
    Crash,
    Skew,
    Byzantine,
    DoubleSpend,
    Blocks,
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Scenario::Mixed,
        Scenario::Calm,
        Scenario::Lossy,
        Scenario::Partition,
        Scenario::Crash,
        Scenario::Skew,
        Scenario::Byzantine,
        Scenario::DoubleSpend,
        Scenario::Blocks,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Mixed => "mixed",
            Scenario::Calm => "calm",
            Scenario::Lossy => "lossy",
            Scenario::Partition => "partition",
            Scenario::Crash => "crash",
            Scenario::Skew => "skew",
            Scenario::Byzantine => "byzantine",
            Scenario::DoubleSpend => "double-spend",
            Scenario::Blocks => "blocks",
        }
    }
    pub fn describe(self) -> &'static str {
        match self {
            Scenario::Mixed => "every knob drawn per seed (the default)",
            Scenario::Calm => "low latency, no loss, no faults; wallets and Byzantine nodes only",
            Scenario::Lossy => "loss, duplication and heavy jitter (reordering) on every link",
            Scenario::Partition => {
                "repeated partitions (splits and isolated nodes) and their healing"
            }
            Scenario::Crash => {
                "masternodes crash (also between the durable write and the send) and restart"
            }
            Scenario::Skew => "large clock offsets and drift per masternode",
            Scenario::Byzantine => "every Byzantine behaviour at once, at the chosen weight",
            Scenario::DoubleSpend => "many double-spending wallets, conflicts sent again and again",
            Scenario::Blocks => {
                "block layer on with Byzantine leaders and voters (equivocating proposals, withholding, bad bodies, double votes), short crashes mid-phase and partitions across block boundaries"
            }
        }
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scenario::ALL
            .iter()
            .copied()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Scenario::ALL.iter().map(|x| x.name()).collect();
                format!("unknown scenario {s:?}; one of: {}", names.join(", "))
            })
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A deliberate engine bug for control runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Planted {
    None,
    /// The seeds' truncating rule `(W * 67) / 100` instead of floor(2W/3)+1.
    Quorum,
    /// Voted locks released after the lock timeout.
    ReleaseLock,
    /// No catch-up from the peers' finality logs (and the approval gate
    /// always open).
    NoCatchup,
    /// Block layer: commit and lock with more than half the weight
    /// (`PlantedBlockBugs::weak_quorum`).
    BlockQuorum,
    /// Block layer: own block votes forgotten across a restart
    /// (`PlantedBlockBugs::forget_votes`).
    BlockForgetVotes,
}

impl Planted {
    pub fn name(self) -> &'static str {
        match self {
            Planted::None => "none",
            Planted::Quorum => "quorum",
            Planted::ReleaseLock => "release-lock",
            Planted::NoCatchup => "no-catchup",
            Planted::BlockQuorum => "block-quorum",
            Planted::BlockForgetVotes => "block-forget-votes",
        }
    }
    /// A block-layer bug: the run needs the block layer on.
    pub fn is_block(self) -> bool {
        matches!(self, Planted::BlockQuorum | Planted::BlockForgetVotes)
    }
}

impl FromStr for Planted {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Planted::None),
            "quorum" => Ok(Planted::Quorum),
            "release-lock" => Ok(Planted::ReleaseLock),
            "no-catchup" => Ok(Planted::NoCatchup),
            "block-quorum" => Ok(Planted::BlockQuorum),
            "block-forget-votes" => Ok(Planted::BlockForgetVotes),
            _ => Err(format!(
                "unknown planted bug {s:?}; one of: none, quorum, release-lock, no-catchup, block-quorum, block-forget-votes"
            )),
        }
    }
}

/// How much weight the Byzantine masternodes hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByzWeight {
    /// Per seed, anything from none up to just under 1/3 (the default).
    Random,
    /// The largest weight strictly below 1/3.
    MaxSafe,
    /// No Byzantine masternodes.
    Zero,
    /// The smallest weight at or above `num/den` of the total.
    AtLeast(u64, u64),
}

impl ByzWeight {
    pub fn arg(self) -> String {
        match self {
            ByzWeight::Random => "random".into(),
            ByzWeight::MaxSafe => "max-safe".into(),
            ByzWeight::Zero => "0".into(),
            ByzWeight::AtLeast(n, d) => format!("{n}/{d}"),
        }
    }
}

impl FromStr for ByzWeight {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => return Ok(ByzWeight::Random),
            "max-safe" => return Ok(ByzWeight::MaxSafe),
            "0" | "none" => return Ok(ByzWeight::Zero),
            _ => {}
        }
        let bad = || {
            format!("bad Byzantine weight {s:?}: random, max-safe, 0, a fraction like 1/3, or a decimal like 0.34")
        };
        if let Some((n, d)) = s.split_once('/') {
            let n: u64 = n.trim().parse().map_err(|_| bad())?;
            let d: u64 = d.trim().parse().map_err(|_| bad())?;
            if d == 0 || n > d {
                return Err(bad());
            }
            return Ok(ByzWeight::AtLeast(n, d));
        }
        let f: f64 = s.parse().map_err(|_| bad())?;
        if !(0.0..=1.0).contains(&f) {
            return Err(bad());
        }
        Ok(ByzWeight::AtLeast((f * 10_000.0).round() as u64, 10_000))
    }
}

/// Whether the masternodes run the block layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockMode {
    /// Drawn per seed (on in one run of eight; always on in the `blocks`
    /// scenario and with a planted block bug).
    Random,
    On,
    Off,
}

impl BlockMode {
    pub fn arg(self) -> &'static str {
        match self {
            BlockMode::Random => "random",
            BlockMode::On => "on",
            BlockMode::Off => "off",
        }
    }
}

impl FromStr for BlockMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(BlockMode::Random),
            "on" => Ok(BlockMode::On),
            "off" => Ok(BlockMode::Off),
            _ => Err(format!("bad block mode {s:?}: random, on or off")),
        }
    }
}

/// What the user chose; with a seed it determines a run completely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    pub scenario: Scenario,
    pub planted: Planted,
    pub byzantine: ByzWeight,
    /// Fail on violations traced to known engine issues too.
    pub strict: bool,
    pub blocks: BlockMode,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scenario: Scenario::Mixed,
            planted: Planted::None,
            byzantine: ByzWeight::Random,
            strict: false,
            blocks: BlockMode::Random,
        }
    }
}

impl Options {
    /// The one-line command that replays `seed` with these options.
    pub fn replay_command(&self, seed: u64) -> String {
        let mut s = format!(
            "cargo run --release -p time-sim -- --seed {seed} --scenario {}",
            self.scenario
        );
        if self.planted != Planted::None {
            s.push_str(&format!(" --planted {}", self.planted.name()));
        }
        if self.byzantine != ByzWeight::Random {
            s.push_str(&format!(" --byzantine-weight {}", self.byzantine.arg()));
        }
        if self.blocks != BlockMode::Random {
            s.push_str(&format!(" --blocks {}", self.blocks.arg()));
        }
        if self.strict {
            s.push_str(" --strict");
        }
        s
    }
}

/// Which misbehaviours one Byzantine masternode shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ByzBehaviour {
    /// Sends nothing at all, votes on nothing.
    pub silent: bool,
    /// Approves every transaction it sees, both sides of every conflict.
    pub approve_all: bool,
    /// Rejects honest payments (tries to stall them).
    pub reject_all: bool,
    /// Approve to half the masternodes, reject to the other half, same tx.
    pub split_decisions: bool,
    /// Relays each side of a conflict to a different half, to split honest locks.
    pub split_relay: bool,
    /// Batches that claim an honest voter but carry its own signature.
    pub forge: bool,
    /// Replays captured vote batches, proofs and transactions, late.
    pub replay: bool,
    /// Votes signed by a key that is not registered.
    pub unregistered: bool,
    /// Now and then a large batch for unknown transactions, and malformed frames.
    pub flood: bool,
    /// Full-rate floods: many signed batches of votes for made-up txids every
    /// step, during bursts of several seconds.
    pub vote_flood: bool,
    /// Transport messages the state machine must ignore: forged fast-path
    /// stream announcements (`FastPathSeq { next: u64::MAX - k }`), repair
    /// requests for absurd ranges, repairs carrying junk.
    pub transport_junk: bool,
    /// Signs its votes on real transactions with a small-order component
    /// in `R` (`testkit::torsion_signature`): valid under ZIP 215, so they
    /// count, and every node and wallet must agree on the proofs carrying
    /// them.
    pub torsion: bool,
    /// Collects proofs for everything it sees and pushes them to everyone.
    pub gossip_proofs: bool,
    /// Proofs with too few, repeated or reject votes.
    pub bad_proofs: bool,
    /// Re-sends every new transaction at once with one signature byte
    /// flipped: same txid (signatures are outside it), invalid bytes.
    pub malleate: bool,
    /// Block layer (with no block flag set it takes no part in it at all:
    /// as a leader it withholds its proposal, it never votes).
    pub blocks: ByzBlocks,
}

/// A Byzantine masternode in the block consensus. Everything it sends is
/// signed with its registered key, so it counts like an honest node's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ByzBlocks {
    /// Prevotes and precommits the first proposal it sees in each round
    /// (without checking it), so honest nodes need its weight less.
    pub follow: bool,
    /// As a leader: two different signed proposals for one slot, each to
    /// a different half of the peers, and prevotes and precommits for each
    /// to its half.
    pub equivocate: bool,
    /// As a leader: its proposal to only some of the peers.
    pub partial: bool,
    /// As a leader: a block holding a payment that is not final (a
    /// double spend whose votes split, or one seen before its proof), or
    /// one that conflicts with a final payment.
    pub bad_body: bool,
    /// Prevotes and precommits one block to half the peers and nil (or the
    /// other block) to the other half.
    pub double_vote: bool,
}

impl ByzBlocks {
    pub fn any(&self) -> bool {
        self.follow || self.equivocate || self.partial || self.bad_body || self.double_vote
    }
}

/// The block layer's settings in a run.
#[derive(Clone, Debug)]
pub struct BlockParams {
    /// Pause after a commit (simulated time, scaled down from 600 s).
    pub interval_ms: u64,
    pub propose_timeout_ms: u64,
    pub vote_timeout_ms: u64,
    pub max_timeout_ms: u64,
}

/// One fault window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionWindow {
    pub start: Micros,
    pub end: Micros,
    /// Side of each masternode; nodes on different sides cannot talk.
    pub side: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashWindow {
    pub node: usize,
    pub at: Micros,
    pub restart: Micros,
    /// Crash right after the next durable write, before its messages leave.
    pub after_write: bool,
    /// Crash right after the next durable write that holds one of its own
    /// block votes or proposals (mid-phase), before it leaves.
    pub after_block_vote: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skew {
    /// Added to the node's clock, in ms (may be negative).
    pub offset_ms: i64,
    /// Rate error in parts per million.
    pub drift_ppm: i64,
}

#[derive(Clone, Debug)]
pub struct NetParams {
    /// One-way base latency per directed link, µs.
    pub base: Vec<Vec<Micros>>,
    pub jitter: Micros,
    /// Per transmission attempt.
    pub loss: f64,
    pub dup: f64,
    /// The transport's retransmission timeout (a lost packet on the
    /// reliable path is resent after it, doubling).
    pub rto_min: Micros,
    pub rto_max: Micros,
    /// Per-peer outbound queue capacity per priority class, for messages
    /// waiting for a link to come up.
    pub queue_cap: [usize; 4],
    /// Lock broadcasts and vote batches to all peers go as datagrams.
    pub fast_path: bool,
    /// Wallet <-> masternode.
    pub wallet_latency: Micros,
    pub wallet_loss: f64,
}

#[derive(Clone, Debug)]
pub struct EngineParams {
    pub lock_timeout_ms: u64,
    pub orphan_timeout_ms: u64,
    pub decided_retention_ms: u64,
    /// Scaled down with the simulator's load (the node's defaults are
    /// 10,000 and 100,000), so a flood reaches them.
    pub mempool_limit: usize,
    pub max_unknown_tallies: usize,
    /// How often the node's timer fires (`handle_timeout`).
    pub tick_every: Micros,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub options: Options,
    /// The scenario family actually used (Mixed picks one per seed).
    pub flavour: Scenario,
    pub tiers: Vec<Tier>,
    pub byzantine: Vec<Option<ByzBehaviour>>,
    pub honest_wallets: usize,
    pub coins_per_wallet: u32,
    pub double_spenders: usize,
    /// Mean time between an honest wallet's payments.
    pub pay_every: Micros,
    pub payments_until: Micros,
    /// Every partition heals and every crashed node restarts by then.
    pub heal_at: Micros,
    pub end_at: Micros,
    pub partitions: Vec<PartitionWindow>,
    pub crashes: Vec<CrashWindow>,
    pub skews: Vec<Skew>,
    pub net: NetParams,
    pub engine: EngineParams,
    /// How long an honest payment may take while the network is calm.
    pub liveness_bound: Micros,
    /// The block layer, if the run has it.
    pub blocks: Option<BlockParams>,
}

impl SimConfig {
    pub fn total_weight(&self) -> u64 {
        self.tiers.iter().map(|t| t.weight()).sum()
    }
    pub fn byzantine_weight(&self) -> u64 {
        self.tiers
            .iter()
            .zip(&self.byzantine)
            .filter(|(_, b)| b.is_some())
            .map(|(t, _)| t.weight())
            .sum()
    }
    pub fn is_honest(&self, i: usize) -> bool {
        self.byzantine[i].is_none()
    }
    pub fn n(&self) -> usize {
        self.tiers.len()
    }

    /// Draws the whole run from the seed.
    pub fn generate(seed: u64, options: Options) -> SimConfig {
        let mut rng = rng_for(seed, "config");
        let flavour = match options.scenario {
            Scenario::Mixed => *[
                Scenario::Mixed,
                Scenario::Mixed,
                Scenario::Mixed,
                Scenario::Lossy,
                Scenario::Partition,
                Scenario::Crash,
                Scenario::Skew,
                Scenario::Byzantine,
                Scenario::DoubleSpend,
            ]
            .choose(&mut rng)
            .expect("non-empty"),
            s => s,
        };
        let mixed = flavour == Scenario::Mixed;
        let calm = flavour == Scenario::Calm;
        // The block scenario draws its extra knobs from its own stream, so
        // the other scenarios' runs stay exactly what they were.
        let blk = flavour == Scenario::Blocks;
        let mut rng_blocks = rng_for(seed, "blocks");

        let n = rng.gen_range(4..=7usize);
        let tiers: Vec<Tier> = if rng.gen_bool(0.25) {
            // Mixed collateral: weights 1 and 10.
            (0..n)
                .map(|_| {
                    if rng.gen_bool(0.4) {
                        Tier::Silver
                    } else {
                        Tier::Bronze
                    }
                })
                .collect()
        } else {
            vec![Tier::Bronze; n]
        };
        let byz_set = choose_byzantine(&tiers, options.byzantine, &mut rng);
        let mut byzantine: Vec<Option<ByzBehaviour>> = (0..n)
            .map(|i| {
                byz_set
                    .contains(&i)
                    .then(|| draw_behaviour(flavour, options, &mut rng))
            })
            .collect();

        let payments_until = rng.gen_range(40..=120) * SEC;
        let heal_at = payments_until + 5 * SEC;
        // Time after the last heal for every honest node to learn every
        // finalized payment (checked at the end).
        let end_at = heal_at + 30 * SEC;

        // Links.
        let lat_lo = if calm { 1 } else { 2 };
        let lat_hi = if calm { 20 } else { rng.gen_range(20..=120) };
        let base = (0..n)
            .map(|_| {
                (0..n)
                    .map(|_| rng.gen_range(lat_lo..=lat_hi) * MS)
                    .collect()
            })
            .collect();
        let lossy = flavour == Scenario::Lossy || (mixed && rng.gen_bool(0.6));
        let net = NetParams {
            base,
            jitter: if lossy {
                rng.gen_range(5..=150) * MS
            } else {
                rng.gen_range(0..=5) * MS
            },
            loss: if lossy { rng.gen_range(0.0..0.25) } else { 0.0 },
            dup: if lossy { rng.gen_range(0.0..0.2) } else { 0.0 },
            rto_min: 200 * MS,
            rto_max: 2 * SEC,
            queue_cap: {
                let cap = *[16usize, 256, 8192].choose(&mut rng).expect("non-empty");
                [cap, cap, cap.min(256), cap.min(256)]
            },
            fast_path: flavour == Scenario::Lossy || (!calm && rng.gen_bool(0.5)),
            wallet_latency: rng.gen_range(1..=30) * MS,
            wallet_loss: if lossy { rng.gen_range(0.0..0.1) } else { 0.0 },
        };

        // Faults.
        let mut partitions = Vec::new();
        let partitioned = flavour == Scenario::Partition
            || (mixed && rng.gen_bool(0.5))
            || (blk && rng_blocks.gen_bool(0.6));
        if partitioned {
            let k = rng.gen_range(1..=3);
            let mut t = rng.gen_range(3..=15) * SEC;
            for _ in 0..k {
                let dur = rng.gen_range(2..=40) * SEC;
                if t + dur > heal_at {
                    break;
                }
                let side: Vec<u8> = if rng.gen_bool(0.4) {
                    let lone = rng.gen_range(0..n);
                    (0..n).map(|i| (i == lone) as u8).collect()
                } else {
                    loop {
                        let s: Vec<u8> = (0..n).map(|_| rng.gen_range(0..2u8)).collect();
                        if s.contains(&0) && s.contains(&1) {
                            break s;
                        }
                    }
                };
                partitions.push(PartitionWindow {
                    start: t,
                    end: t + dur,
                    side,
                });
                t += dur + rng.gen_range(2..=20) * SEC;
            }
        }
        let mut crashes = Vec::new();
        let crashing = flavour == Scenario::Crash || (mixed && rng.gen_bool(0.5));
        let crashing_mid_phase = blk && rng_blocks.gen_bool(0.8);
        if crashing {
            let honest: Vec<usize> = (0..n).filter(|i| !byz_set.contains(i)).collect();
            let k = rng.gen_range(1..=5);
            for _ in 0..k {
                let node = *honest.choose(&mut rng).expect("honest nodes exist");
                let at = rng.gen_range(2 * SEC..payments_until);
                let down = rng.gen_range(100 * MS..20 * SEC);
                let restart = (at + down).min(heal_at);
                let overlaps = crashes.iter().any(|c: &CrashWindow| {
                    c.node == node && c.at <= restart + SEC && at <= c.restart + SEC
                });
                if !overlaps {
                    crashes.push(CrashWindow {
                        node,
                        at,
                        restart,
                        after_write: rng.gen_bool(0.5),
                        after_block_vote: false,
                    });
                }
            }
            crashes.sort_by_key(|c| (c.at, c.node));
        }
        if crashing_mid_phase {
            // Short crashes, most of them right after an own block vote is
            // durable and before it leaves: the node restarts at the same
            // height and round, while the others are still deciding it.
            let honest: Vec<usize> = (0..n).filter(|i| !byz_set.contains(i)).collect();
            let k = rng_blocks.gen_range(2..=8);
            for _ in 0..k {
                let node = *honest.choose(&mut rng_blocks).expect("honest nodes exist");
                let at = rng_blocks.gen_range(2 * SEC..payments_until);
                let down = rng_blocks.gen_range(50 * MS..1_500 * MS);
                let restart = (at + down).min(heal_at);
                let overlaps = crashes.iter().any(|c: &CrashWindow| {
                    c.node == node && c.at <= restart + SEC && at <= c.restart + SEC
                });
                if !overlaps {
                    let mid = rng_blocks.gen_bool(0.7);
                    crashes.push(CrashWindow {
                        node,
                        at,
                        restart,
                        after_write: !mid && rng_blocks.gen_bool(0.5),
                        after_block_vote: mid,
                    });
                }
            }
            crashes.sort_by_key(|c| (c.at, c.node));
        }
        let skewed = flavour == Scenario::Skew || (mixed && rng.gen_bool(0.5));
        let skews = (0..n)
            .map(|_| {
                if skewed {
                    Skew {
                        offset_ms: rng.gen_range(-10_000..=10_000),
                        drift_ppm: rng.gen_range(-50_000..=50_000),
                    }
                } else {
                    Skew {
                        offset_ms: rng.gen_range(-50..=50),
                        drift_ppm: rng.gen_range(-100..=100),
                    }
                }
            })
            .collect();

        let double_spenders = match flavour {
            Scenario::DoubleSpend => rng.gen_range(2..=4),
            Scenario::Byzantine => rng.gen_range(1..=3),
            _ => rng.gen_range(0..=2),
        };
        let engine = EngineParams {
            lock_timeout_ms: *[5_000u64, 10_000, 30_000]
                .choose(&mut rng)
                .expect("non-empty"),
            orphan_timeout_ms: *[2_000u64, 5_000].choose(&mut rng).expect("non-empty"),
            decided_retention_ms: *[10_000u64, 30_000, 120_000]
                .choose(&mut rng)
                .expect("non-empty"),
            mempool_limit: 1_000,
            max_unknown_tallies: 2_000,
            tick_every: rng.gen_range(100..=1_000) * MS,
        };
        let blocks_on = match options.blocks {
            _ if blk || options.planted.is_block() => true,
            BlockMode::On => true,
            BlockMode::Off => false,
            BlockMode::Random => rng_blocks.gen_bool(1.0 / 8.0),
        };
        let blocks = blocks_on.then(|| BlockParams {
            interval_ms: *[500u64, 1_000, 2_000]
                .choose(&mut rng_blocks)
                .expect("non-empty"),
            propose_timeout_ms: 500,
            vote_timeout_ms: 500,
            max_timeout_ms: 2_000,
        });
        if blocks_on {
            let control = matches!(options.byzantine, ByzWeight::AtLeast(..));
            for b in byzantine.iter_mut().flatten() {
                if !b.silent {
                    b.blocks = draw_block_behaviour(blk || control, &mut rng_blocks);
                }
            }
        }
        SimConfig {
            seed,
            options,
            flavour,
            tiers,
            byzantine,
            honest_wallets: rng.gen_range(2..=4),
            coins_per_wallet: 3,
            double_spenders,
            pay_every: rng.gen_range(2..=6) * SEC,
            payments_until,
            heal_at,
            end_at,
            partitions,
            crashes,
            skews,
            net,
            engine,
            liveness_bound: 10 * SEC,
            blocks,
        }
    }

    /// Is every honest masternode up and fully connected over `[from, to]`?
    pub fn calm_between(&self, from: Micros, to: Micros) -> bool {
        !self
            .partitions
            .iter()
            .any(|p| p.start <= to && from <= p.end)
            && !self.crashes.iter().any(|c| c.at <= to && from <= c.restart)
    }

    pub fn summary(&self) -> String {
        let byz: Vec<usize> = (0..self.n()).filter(|&i| !self.is_honest(i)).collect();
        format!(
            "seed {} scenario {} (as {}): {} masternodes, weight {} (quorum {}), Byzantine {:?} weight {} ({:.1}%), {} partitions, {} crashes, loss {:.2}, dup {:.2}, jitter {} ms, {} honest wallets, {} double-spenders, lock timeout {} ms, retention {} ms, planted {}, blocks {}",
            self.seed,
            self.options.scenario,
            self.flavour,
            self.n(),
            self.total_weight(),
            quorum_threshold(self.total_weight()),
            byz,
            self.byzantine_weight(),
            100.0 * self.byzantine_weight() as f64 / self.total_weight() as f64,
            self.partitions.len(),
            self.crashes.len(),
            self.net.loss,
            self.net.dup,
            self.net.jitter / MS,
            self.honest_wallets,
            self.double_spenders,
            self.engine.lock_timeout_ms,
            self.engine.decided_retention_ms,
            self.options.planted.name(),
            match &self.blocks {
                Some(b) => format!("every {} ms", b.interval_ms),
                None => "off".into(),
            },
        )
    }
}

/// A Byzantine node's block behaviour: in the block scenario (and the
/// controls) most of them at once, else now and then.
fn draw_block_behaviour(all: bool, rng: &mut ChaCha8Rng) -> ByzBlocks {
    let p = if all { 0.7 } else { 0.3 };
    ByzBlocks {
        follow: rng.gen_bool(0.5),
        equivocate: rng.gen_bool(p),
        partial: rng.gen_bool(p * 0.5),
        bad_body: rng.gen_bool(p),
        double_vote: rng.gen_bool(p),
    }
}

/// Picks the Byzantine set by weight.
fn choose_byzantine(tiers: &[Tier], want: ByzWeight, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let n = tiers.len();
    let total: u64 = tiers.iter().map(|t| t.weight()).sum();
    let weight = |mask: u32| -> u64 {
        (0..n)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| tiers[i].weight())
            .sum()
    };
    let all: Vec<u32> = (0..(1u32 << n)).collect();
    let safe = |w: u64| 3 * w < total;
    let pick = |cands: Vec<u32>, rng: &mut ChaCha8Rng| -> Vec<usize> {
        let mask = *cands.choose(rng).unwrap_or(&0);
        (0..n).filter(|i| mask & (1 << i) != 0).collect()
    };
    match want {
        ByzWeight::Zero => vec![],
        ByzWeight::MaxSafe | ByzWeight::Random => {
            let max = all
                .iter()
                .map(|&m| weight(m))
                .filter(|&w| safe(w))
                .max()
                .unwrap_or(0);
            let target = if want == ByzWeight::Random && rng.gen_bool(0.35) {
                rng.gen_range(0..=max)
            } else {
                max
            };
            // Subsets with exactly the target weight, or the largest safe one below it.
            let best = all
                .iter()
                .map(|&m| weight(m))
                .filter(|&w| safe(w) && w <= target)
                .max()
                .unwrap_or(0);
            pick(
                all.into_iter().filter(|&m| weight(m) == best).collect(),
                rng,
            )
        }
        ByzWeight::AtLeast(num, den) => {
            let ok = |w: u64| w * den >= num * total;
            let min = all
                .iter()
                .map(|&m| weight(m))
                .filter(|&w| ok(w))
                .min()
                .unwrap_or(total);
            pick(all.into_iter().filter(|&m| weight(m) == min).collect(), rng)
        }
    }
}

fn draw_behaviour(flavour: Scenario, options: Options, rng: &mut ChaCha8Rng) -> ByzBehaviour {
    // Above the safety threshold the control wants equivocation that works.
    let control = matches!(options.byzantine, ByzWeight::AtLeast(..));
    if control {
        return ByzBehaviour {
            approve_all: true,
            split_relay: true,
            gossip_proofs: true,
            replay: rng.gen_bool(0.5),
            forge: rng.gen_bool(0.3),
            ..ByzBehaviour::default()
        };
    }
    let all = flavour == Scenario::Byzantine;
    if !all && rng.gen_bool(0.2) {
        return ByzBehaviour {
            silent: true,
            ..ByzBehaviour::default()
        };
    }
    let p = if all { 0.8 } else { 0.4 };
    let mut b = ByzBehaviour {
        silent: false,
        approve_all: rng.gen_bool(0.6),
        reject_all: false,
        split_decisions: rng.gen_bool(p * 0.5),
        split_relay: rng.gen_bool(p),
        forge: rng.gen_bool(p),
        replay: rng.gen_bool(p),
        unregistered: rng.gen_bool(p),
        flood: rng.gen_bool(p * 0.5),
        vote_flood: rng.gen_bool(p * 0.1),
        transport_junk: rng.gen_bool(p * 0.5),
        torsion: rng.gen_bool(p * 0.5),
        gossip_proofs: rng.gen_bool(p),
        bad_proofs: rng.gen_bool(p),
        malleate: rng.gen_bool(p * 0.5),
        blocks: ByzBlocks::default(),
    };
    if !b.approve_all {
        b.reject_all = rng.gen_bool(0.5);
    }
    b
}
