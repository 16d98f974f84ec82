//! Wallet side of the protocol: a client for one masternode, coin selection
//! and amount parsing. Used by `time-wallet`, the tests and the load generator.

pub mod amount;
pub mod client;

pub use amount::{format_amount, parse_amount, AmountError};
pub use client::{ClientError, Outcome, WalletClient};
