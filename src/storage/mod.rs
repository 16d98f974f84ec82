//! Durable state: the store trait and in-memory store live in the protocol
//! core ([`timecoin_core::storage`]); this module adds the LMDB store the node runs on.

pub mod lmdb;

pub use lmdb::LmdbStore;
pub use timecoin_core::storage::*;
