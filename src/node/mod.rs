//! The masternode process: configuration, genesis, key files and the tokio
//! runtime that drives the protocol state machine over TCP, QUIC and UDP.
//!
//! Who owns what:
//! - [`startup`]: [`Node::start`] builds every component in order, each
//!   handed its channels at construction; [`Node::shutdown`].
//! - `core_input`: the core queue ([`CoreInput`](core_input) and its sender).
//! - `core_thread`: the core loop driving the state machine (commit before
//!   send).
//! - `ingest`: verifier pool, vote threads, the fast path's sink (which
//!   checks a receive burst's datagrams, then their transactions and votes
//!   together, on the UDP I/O thread), and peer admission (the state
//!   machine's peer book, checked before any signature of the message).
//! - `peer_check`: peers' TimeProofs and block messages (proposals, block
//!   votes, committed blocks) verified on a thread of their own, bounded
//!   per peer and in bytes: the core thread verifies no peer's signature.
//! - `listener`, `handshake`: the P2P port and the signed handshake.
//! - `peer_glue`: messages from authenticated peer masternodes.
//! - [`wallet_server`]: wallet sessions, their limits and their counters
//!   (which session hears what is the state machine's router).
//! - [`metrics`]: the Prometheus metrics and the `/metrics` endpoint.
//! - [`rpc`]: JSON-RPC over HTTP and its WebSocket push events, through the
//!   wallet sessions' typed API and [`node_api`]'s operator queries.
//! - `wire`: frame encoding, connection errors, [`NetStats`].
//! - [`peer_net`], [`fastpath`], [`verifier`], [`vote_threads`]: the
//!   transports and worker pools those parts use.

pub mod config;
mod core_input;
mod core_thread;
pub mod fastpath;
pub mod genesis_file;
mod handshake;
mod ingest;
pub mod keyfile;
mod listener;
pub mod metrics;
pub mod node_api;
pub mod peer_check;
mod peer_glue;
pub mod peer_net;
pub mod rpc;
pub mod startup;
pub mod verifier;
pub mod vote_threads;
pub mod wallet_server;
mod wire;

pub use startup::{Node, NodeError};
pub use wire::NetStats;
