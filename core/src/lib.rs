//! The TIME Coin protocol core. Pure: no sockets, no clock, no threads, no
//! tokio, no LMDB (`cargo tree -p timecoin-core` shows it). Time comes in as
//! milliseconds from the driver, and every effect goes out as a value for a
//! transport or a store to carry out.
//!
//! - [`blocks`]: blocks, commit certificates, leader selection and the BFT
//!   block consensus state machine.
//! - [`codec`]: bounded decoding primitives for untrusted bytes.
//! - [`histogram`]: fixed-bucket histograms the state machines keep.
//! - [`protocol`]: types, validation, UTXO states, votes, quorum, TimeProofs,
//!   the engine.
//! - [`sig`]: the one signature rule (ZIP 215): every ed25519 verification.
//! - [`storage`]: the store trait, durable writes, the in-memory store and the
//!   on-disk record encodings.
//! - [`testkit`]: keys, registries and genesis for tests and simulations.

pub mod blocks;
pub mod codec;
pub mod histogram;
pub mod masternode;
pub mod protocol;
pub mod sig;
pub mod storage;
pub mod testkit;
