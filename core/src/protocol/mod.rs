//! The protocol core: pure data types and state machines. No sockets, no
//! clock, no threads, no tokio: time is passed in as milliseconds, and every
//! effect comes back as an output for a transport or a store to carry out.

pub mod audience;
pub mod engine;
pub mod evidence;
pub mod message;
pub mod registry;
pub mod tally;
pub mod timeproof;
pub mod types;
pub mod utxo;
pub mod utxo_set;
pub mod validation;
pub mod vote;
