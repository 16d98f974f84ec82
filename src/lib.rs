//! TIME Coin masternode: instant-finality UTXO payments.
//!
//! - [`protocol`]: the pure protocol core, from the `timecoin-core` crate (types,
//!   validation, UTXO states, votes, quorum, TimeProofs, the masternode state
//!   machine).
//! - [`storage`]: durable state behind the [`storage::Store`] trait, with the
//!   LMDB store the node runs on.
//! - [`node`]: the runtime that drives the core: threads, sockets, fsync.

pub mod devnet;
pub mod node;
pub mod storage;
pub mod wallet;

pub use timecoin_core::{codec, masternode, protocol, sig, testkit};
