//! The network between masternodes.
//!
//! Packets see per-link latency plus jitter (so they reorder), loss and
//! duplication. On top sits the reliable path a real node runs (per-peer
//! sessions that retransmit until the peer has the frame, with exponential
//! backoff): a lost packet is delayed, not gone, while its sender stays up.
//! A partition drops every packet that crosses it; retransmission carries
//! the backlog over once it heals. A sender that crashes loses everything it
//! had not yet delivered. Duplicates are delivered as they come: the engine
//! must be idempotent, so the model does not deduplicate for it.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::config::{Micros, NetParams};

pub type Frame = Arc<[u8]>;

#[derive(Clone, Debug)]
struct InFlight {
    from: usize,
    to: usize,
    frame: Frame,
    /// Sender's incarnation when it queued the frame; a crash voids it.
    sender_incarnation: u32,
    attempt: u32,
}

/// A network-layer event for the world to schedule.
#[derive(Clone, Debug)]
pub enum NetEvent {
    /// A transmission attempt reaches the receiver's side.
    Arrive(u64),
    /// The sender's retransmission timer fires.
    Retry(u64),
    /// A duplicated packet: delivered if it can be, never retried.
    Duplicate {
        from: usize,
        to: usize,
        frame: Frame,
    },
}

/// What an arrival turned into.
pub enum Arrival {
    Deliver {
        from: usize,
        to: usize,
        frame: Frame,
    },
    /// Dropped at the cut or at a node that is down.
    Dropped,
    /// The id was already acknowledged or voided.
    Gone,
}

#[derive(Clone, Debug, Default)]
pub struct NetStats {
    pub frames: u64,
    pub attempts: u64,
    pub lost: u64,
    pub dropped_partition: u64,
    pub dropped_down: u64,
    pub duplicated: u64,
    pub voided_by_crash: u64,
}

pub struct Network {
    params: NetParams,
    /// Side of each node while a partition is active.
    partition: Option<Vec<u8>>,
    inflight: BTreeMap<u64, InFlight>,
    next_id: u64,
    rng: ChaCha8Rng,
    pub stats: NetStats,
}

impl Network {
    pub fn new(params: NetParams, rng: ChaCha8Rng) -> Self {
        Network {
            params,
            partition: None,
            inflight: BTreeMap::new(),
            next_id: 0,
            rng,
            stats: NetStats::default(),
        }
    }

    pub fn set_partition(&mut self, side: Option<Vec<u8>>) {
        self.partition = side;
    }

    pub fn partitioned(&self, a: usize, b: usize) -> bool {
        self.partition.as_ref().is_some_and(|s| s[a] != s[b])
    }

    fn latency(&mut self, from: usize, to: usize) -> Micros {
        let j = self.params.jitter;
        self.params.base[from][to] + if j > 0 { self.rng.gen_range(0..=j) } else { 0 }
    }

    fn rto(&self, attempt: u32) -> Micros {
        (self.params.rto_min << attempt.min(16)).min(self.params.rto_max)
    }

    /// Queues a frame on the reliable path; returns the first event.
    pub fn send(
        &mut self,
        now: Micros,
        from: usize,
        to: usize,
        frame: Frame,
        sender_incarnation: u32,
    ) -> (Micros, NetEvent) {
        let id = self.next_id;
        self.next_id += 1;
        self.stats.frames += 1;
        self.inflight.insert(
            id,
            InFlight {
                from,
                to,
                frame,
                sender_incarnation,
                attempt: 0,
            },
        );
        self.attempt(now, id)
    }

    fn attempt(&mut self, now: Micros, id: u64) -> (Micros, NetEvent) {
        self.stats.attempts += 1;
        let f = self.inflight.get_mut(&id).expect("in flight");
        let (from, to, attempt) = (f.from, f.to, f.attempt);
        f.attempt += 1;
        if self.rng.gen_bool(self.params.loss) {
            self.stats.lost += 1;
            return (now + self.rto(attempt), NetEvent::Retry(id));
        }
        (now + self.latency(from, to), NetEvent::Arrive(id))
    }

    /// An attempt reaches `to`'s side. `up` says whether the receiver is up.
    /// Returns what happened and, possibly, follow-up events to schedule.
    pub fn arrive(
        &mut self,
        now: Micros,
        id: u64,
        up: impl Fn(usize) -> bool,
        out: &mut Vec<(Micros, NetEvent)>,
    ) -> Arrival {
        let Some(f) = self.inflight.get(&id) else {
            return Arrival::Gone;
        };
        let (from, to, attempt) = (f.from, f.to, f.attempt);
        if self.partitioned(from, to) || !up(to) {
            if self.partitioned(from, to) {
                self.stats.dropped_partition += 1;
            } else {
                self.stats.dropped_down += 1;
            }
            out.push((now + self.rto(attempt), NetEvent::Retry(id)));
            return Arrival::Dropped;
        }
        let f = self.inflight.remove(&id).expect("checked");
        if self.params.dup > 0.0 && self.rng.gen_bool(self.params.dup) {
            self.stats.duplicated += 1;
            let extra = self.latency(from, to) + self.rng.gen_range(0..=self.params.rto_max);
            out.push((
                now + extra,
                NetEvent::Duplicate {
                    from,
                    to,
                    frame: f.frame.clone(),
                },
            ));
        }
        Arrival::Deliver {
            from,
            to,
            frame: f.frame,
        }
    }

    /// The sender's retransmission timer: try again unless the sender crashed
    /// since it queued the frame.
    pub fn retry(
        &mut self,
        now: Micros,
        id: u64,
        incarnation_of: impl Fn(usize) -> Option<u32>,
    ) -> Option<(Micros, NetEvent)> {
        let f = self.inflight.get(&id)?;
        if incarnation_of(f.from) != Some(f.sender_incarnation) {
            self.stats.voided_by_crash += 1;
            self.inflight.remove(&id);
            return None;
        }
        Some(self.attempt(now, id))
    }

    /// A duplicate reaches `to`: delivered only if it can cross.
    pub fn duplicate_deliverable(&self, from: usize, to: usize) -> bool {
        !self.partitioned(from, to)
    }

    /// Frames still waiting for delivery (for end-of-run statistics).
    pub fn backlog(&self) -> usize {
        self.inflight.len()
    }
}
