//! Durable state: the store trait and in-memory store live in the protocol
//! core ([`timecoin_core::storage`]); this module adds what the node runs
//! on: the LMDB store ([`lmdb`]), the write-ahead log in front of it
//! ([`write_log`], its payload [`write_codec`]) and the store-writer thread
//! that moves rounds from one to the other ([`store_writer`]).

pub mod lmdb;
pub mod store_writer;
pub mod write_codec;
pub mod write_log;

pub use lmdb::LmdbStore;
pub use store_writer::DurableStore;
pub use timecoin_core::storage::*;
