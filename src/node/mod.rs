//! The masternode process: configuration, genesis, key files and the tokio
//! runtime that drives the protocol engine over TCP.

pub mod config;
pub mod fastpath;
pub mod genesis_file;
pub mod keyfile;
pub mod peer_net;
pub mod runtime;
pub mod verifier;
pub mod vote_threads;
