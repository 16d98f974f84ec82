//! TIME Coin masternode: instant-finality UTXO payments.
//!
//! - [`protocol`]: the pure protocol core (types, validation, UTXO states,
//!   votes, quorum, TimeProofs, the masternode state machine).
//! - [`storage`]: durable state (LMDB) behind the [`storage::Store`] trait.

pub mod devnet;
pub mod node;
pub mod protocol;
pub mod storage;
pub mod testkit;
pub mod wallet;
