//! The engine's UTXO set: a bounded in-memory cache over the store.
//!
//! The store holds every output; the engine keeps in memory the outputs it
//! touched lately, up to [`crate::protocol::engine::EngineConfig::utxo_cache`]
//! entries, and reads the rest from the store on first use
//! ([`UtxoSource`]), so a masternode with millions of outputs starts without
//! loading them and its memory does not grow with the chain.
//!
//! What keeps it exact:
//! - Every change the engine makes to an output is a `Write::PutUtxo` in the
//!   same round, and the runtime applies a round's writes (to the store or to
//!   the overlay in front of it) before it hands the engine any more input:
//!   the source answers with the newest state of every output that is not
//!   in memory.
//! - An entry is evicted only if it was not changed in the round that is
//!   ending ([`UtxoSet::end_round`]): its writes were applied by then.
//! - Outputs this node holds locked for a transaction (`Locked`,
//!   `SpentPending`) are never evicted: the weight seen so far lives in
//!   memory only, and the lock must hold as long as the engine runs.
//! - A miss reads the store, so "not in memory" never means "unspent".
//!   A read that fails counts as unknown (the output cannot be spent or
//!   settled here) and is kept for the runtime, which stops the node.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};

use crate::protocol::types::OutPoint;
use crate::protocol::utxo::{UtxoEntry, UtxoState};
use crate::storage::{StoreError, UtxoSource};

#[derive(Debug)]
struct Slot {
    entry: UtxoEntry,
    /// The round (of [`UtxoSet::end_round`]'s count) that last changed it:
    /// its write may not have been applied yet in that round.
    changed: Option<u64>,
}

pub struct UtxoSet {
    /// Interior mutability: a read through `&self` may fill the cache. The
    /// engine is driven by one thread (it is `Send`, not `Sync`).
    hot: RefCell<HashMap<OutPoint, Slot>>,
    /// The entries in the order they came into memory: the eviction order
    /// (oldest first; held or just-changed ones go to the back).
    order: RefCell<VecDeque<OutPoint>>,
    source: Box<dyn UtxoSource>,
    capacity: usize,
    round: u64,
    misses: Cell<u64>,
    read_error: RefCell<Option<StoreError>>,
    /// A store read failed this run (sticky: the node is stopping).
    read_failed: Cell<bool>,
}

impl std::fmt::Debug for UtxoSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UtxoSet")
            .field("in_memory", &self.hot.borrow().len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// Whether this node holds the output for a transaction (never evicted).
fn held(state: &UtxoState) -> bool {
    matches!(
        state,
        UtxoState::Locked { .. } | UtxoState::SpentPending { .. }
    )
}

impl UtxoSet {
    /// An empty cache of at most `capacity` entries (held outputs may exceed
    /// it) in front of `source`.
    pub fn new(source: Box<dyn UtxoSource>, capacity: usize) -> Self {
        UtxoSet {
            hot: RefCell::new(HashMap::new()),
            order: RefCell::new(VecDeque::new()),
            source,
            capacity: capacity.max(1),
            round: 1,
            misses: Cell::new(0),
            read_error: RefCell::new(None),
            read_failed: Cell::new(false),
        }
    }

    /// Puts a stored entry in memory (the snapshot's held outputs at start).
    pub fn preload(&mut self, op: OutPoint, entry: UtxoEntry) {
        if self
            .hot
            .get_mut()
            .insert(
                op,
                Slot {
                    entry,
                    changed: None,
                },
            )
            .is_none()
        {
            self.order.get_mut().push_back(op);
        }
    }

    /// Brings `op` into memory from the source if it is not there; false if
    /// the output is unknown (or its read failed).
    fn fault_in(&self, op: &OutPoint) -> bool {
        if self.hot.borrow().contains_key(op) {
            return true;
        }
        self.misses.set(self.misses.get() + 1);
        match self.source.utxo(op) {
            Ok(Some(entry)) => {
                self.hot.borrow_mut().insert(
                    *op,
                    Slot {
                        entry,
                        changed: None,
                    },
                );
                self.order.borrow_mut().push_back(*op);
                true
            }
            Ok(None) => false,
            Err(e) => {
                self.read_failed.set(true);
                self.read_error.borrow_mut().get_or_insert(e);
                false
            }
        }
    }

    /// The output's entry, from memory or the store.
    pub fn get(&self, op: &OutPoint) -> Option<UtxoEntry> {
        if !self.fault_in(op) {
            return None;
        }
        self.hot.borrow().get(op).map(|s| s.entry)
    }

    pub fn contains(&self, op: &OutPoint) -> bool {
        self.fault_in(op)
    }

    /// The output's entry for a change (the caller writes the change as a
    /// `Write::PutUtxo` in this round).
    pub fn get_mut(&mut self, op: &OutPoint) -> Option<&mut UtxoEntry> {
        if !self.fault_in(op) {
            return None;
        }
        let round = self.round;
        self.hot.get_mut().get_mut(op).map(|s| {
            s.changed = Some(round);
            &mut s.entry
        })
    }

    /// Adds a new output unless one is known under `op` (in memory or in
    /// the store); returns whether it was added. The caller writes it.
    pub fn insert_new(&mut self, op: OutPoint, entry: UtxoEntry) -> bool {
        if self.fault_in(&op) {
            return false;
        }
        if self.read_failed.get() {
            // Unknown is not absent when the read failed: never write an
            // output over one the store may hold.
            return false;
        }
        self.hot.get_mut().insert(
            op,
            Slot {
                entry,
                changed: Some(self.round),
            },
        );
        self.order.get_mut().push_back(op);
        true
    }

    /// Ends a round: evicts the oldest entries beyond the capacity that are
    /// neither held nor changed in this round. Bounded work: each entry is
    /// looked at most once per call.
    pub fn end_round(&mut self) {
        let round = self.round;
        self.round += 1;
        let hot = self.hot.get_mut();
        let order = self.order.get_mut();
        // Enough to pass over the held entries queued in front of the
        // evictable ones without walking the whole cache every round.
        let mut budget = hot.len().saturating_sub(self.capacity) * 2 + 256;
        while hot.len() > self.capacity && budget > 0 {
            budget -= 1;
            let Some(op) = order.pop_front() else { break };
            let Some(slot) = hot.get(&op) else { continue };
            if held(&slot.entry.state) || slot.changed == Some(round) {
                order.push_back(op);
            } else {
                hot.remove(&op);
            }
        }
        // Entries removed elsewhere never are; the order holds each
        // in-memory key once.
        debug_assert_eq!(hot.len(), order.len(), "cache order out of step");
    }

    /// Entries in memory now.
    pub fn in_memory(&self) -> usize {
        self.hot.borrow().len()
    }

    /// Reads that went to the store.
    pub fn misses(&self) -> u64 {
        self.misses.get()
    }

    /// The first failed store read, if any: the runtime stops the node.
    pub fn take_read_error(&mut self) -> Option<StoreError> {
        self.read_error.get_mut().take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::types::{Address, TxOutput, Txid};
    use crate::storage::{MemoryStore, Store, Write};

    fn op(i: u8) -> OutPoint {
        OutPoint {
            txid: Txid([i; 32]),
            vout: 0,
        }
    }

    fn entry(state: UtxoState) -> UtxoEntry {
        UtxoEntry {
            output: TxOutput {
                address: Address([1; 20]),
                amount: 5,
            },
            state,
        }
    }

    /// Changes an entry and applies its write to the store, as the engine
    /// and its runtime do in one round.
    fn change(set: &mut UtxoSet, store: &mut MemoryStore, o: OutPoint, state: UtxoState) {
        let e = set.get_mut(&o).expect("known");
        e.state = state;
        let w = Write::PutUtxo(o, *e);
        store.apply(&[w]).unwrap();
    }

    /// A store holding `n` unspent outputs `op(0..n)`.
    fn store_of(n: u8) -> MemoryStore {
        let mut store = MemoryStore::new();
        let writes: Vec<Write> = (0..n)
            .map(|i| Write::PutUtxo(op(i), entry(UtxoState::Unspent)))
            .collect();
        store.apply(&writes).unwrap();
        store
    }

    #[test]
    fn an_evicted_output_reads_back_its_newest_state() {
        let mut store = store_of(10);
        let mut set = UtxoSet::new(store.utxo_source(), 2);
        let spent = UtxoState::SpentFinalized {
            txid: Txid([9; 32]),
        };
        change(&mut set, &mut store, op(0), spent);
        // Changed this round: kept however full the cache is.
        for i in 1..10 {
            assert!(set.contains(&op(i)));
        }
        set.end_round();
        assert!(set.hot.borrow().contains_key(&op(0)), "changed this round");
        for i in 1..10 {
            set.get(&op(i));
        }
        set.end_round();
        set.end_round();
        assert!(set.in_memory() <= 2, "bounded: {}", set.in_memory());
        assert!(
            !set.hot.borrow().contains_key(&op(0)),
            "evicted once applied"
        );
        // Read back as stored: spent, not the genesis state.
        assert_eq!(set.get(&op(0)).map(|e| e.state), Some(spent));
        // A replayed creation does not write it back as unspent.
        assert!(!set.insert_new(op(0), entry(UtxoState::Unspent)));
        assert_eq!(set.get(&op(0)).map(|e| e.state), Some(spent));
        assert!(set.misses() > 0);
    }

    #[test]
    fn held_outputs_stay_in_memory() {
        let mut store = store_of(6);
        let mut set = UtxoSet::new(store.utxo_source(), 1);
        let locked = UtxoState::Locked {
            txid: Txid([7; 32]),
        };
        change(&mut set, &mut store, op(3), locked);
        for _ in 0..3 {
            for i in 0..6 {
                set.get(&op(i));
            }
            set.end_round();
        }
        assert!(
            set.hot.borrow().contains_key(&op(3)),
            "a lock is never evicted"
        );
        assert!(set.in_memory() <= 2);
    }

    struct Failing;
    impl UtxoSource for Failing {
        fn utxo(&self, _: &OutPoint) -> Result<Option<UtxoEntry>, StoreError> {
            Err(StoreError::Backend("disk gone".into()))
        }
    }

    #[test]
    fn a_failed_read_is_unknown_and_reported() {
        let mut set = UtxoSet::new(Box::new(Failing), 4);
        assert_eq!(set.get(&op(1)), None);
        // Unknown because unreadable: never created over what the store
        // may hold.
        assert!(!set.insert_new(op(1), entry(UtxoState::Unspent)));
        assert!(set.take_read_error().is_some());
    }
}
