//! A deterministic simulator for TIME Coin masternodes.
//!
//! It runs N copies of the masternode state machine the node runs
//! ([`timecoin_core::masternode::Masternode`]: engine, re-announcement,
//! catch-up, approval gate) with their durable state in
//! [`timecoin_core::storage::MemoryStore`] (crash = drop the state machine,
//! restart = `Masternode::new` from what the store holds), under a virtual
//! clock and a seeded RNG. The simulator only drives it: no protocol logic of
//! its own. Messages travel as real wire frames
//! ([`timecoin_core::protocol::message::Message`]) over a model of the
//! node's transports (a reliable pool with bounded per-link queues, and a
//! lossy fast path) with latency, jitter, loss, duplication, reordering,
//! partitions and crashes. Byzantine masternodes and wallets are simulator
//! actors; an invariant checker watches every round every honest node
//! produces.
//!
//! The same seed always replays the same run: nothing here reads the wall
//! clock, the OS RNG or iterates a hash map to decide what happens next.
//!
//! - [`config`]: a run drawn from its seed (topology, faults, actors).
//! - [`net`]: the network model.
//! - [`node`]: the honest masternode driver (the runtime around the state machine).
//! - [`byzantine`]: misbehaving masternodes ([`byzantine_blocks`]: in the
//!   block consensus).
//! - [`wallet`]: honest and double-spending wallets.
//! - [`checker`]: the invariants.
//! - [`world`]: the event loop that ties them together.
//! - [`batch`]: many seeds on all cores, replay commands.
//! - [`decoders`]: a deterministic mutation smoke test for every decoder.

pub mod batch;
pub mod byzantine;
pub mod byzantine_blocks;
pub mod checker;
pub mod config;
pub mod decoders;
pub mod net;
pub mod node;
pub mod trace;
pub mod wallet;
pub mod world;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub use batch::{run_batch, BatchReport};
pub use checker::{Violation, ViolationKind};
pub use config::{BlockMode, ByzWeight, Options, Planted, Scenario, SimConfig};
pub use world::{run_seed, RunReport};

/// An independent random stream per purpose, so that adding a draw in one
/// place does not shift every other decision of the run.
pub fn rng_for(seed: u64, purpose: &str) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(b"TIMECOIN/sim-rng/v1");
    h.update(&seed.to_le_bytes());
    h.update(purpose.as_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}
