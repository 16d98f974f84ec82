//! The network between masternodes, modelled on what a node really has.
//!
//! - The **reliable path** is the connection pool: one connection per pair
//!   of masternodes, usable while both ends are up and no partition
//!   separates them (the world tells the model when a link comes up or goes
//!   down, and tells both masternodes). Per directed link and priority class
//!   delivery is in order (FIFO) after latency plus jitter; classes overtake
//!   each other. A lost packet is retransmitted by the transport (TCP/QUIC
//!   do that), which shows as delay and head-of-line blocking, never as a
//!   loss. While a link is down, messages wait in the sender's queue for that
//!   peer, bounded per class like the pool's; a full class refuses the
//!   message (counted, gone). They leave when the link comes back. A link
//!   going down loses what was in flight on it; a crashed sender loses its
//!   queues. Nothing is retransmitted on behalf of the node: what is lost is
//!   for the masternode state machine to recover.
//! - The **fast path** (when the run turns it on): lock broadcasts and vote
//!   batches to all peers travel as datagrams, each of which may be lost,
//!   duplicated or reordered, and is dropped when its link is not usable. The
//!   transport's gap repair is not modelled (stricter than the node).

use std::collections::VecDeque;
use std::sync::Arc;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use timecoin_core::protocol::message::Message;

use crate::config::{Micros, NetParams};

pub type Frame = Arc<[u8]>;

/// Where a simulator actor sends a frame.
#[derive(Clone, Copy, Debug)]
pub enum Dest {
    AllPeers,
    Peer(usize),
}

/// The pool's priority classes: transactions and locks, votes and proofs,
/// bulk, housekeeping (as the node's `priority_of`).
pub const CLASSES: usize = 4;

pub fn class_of(m: &Message) -> usize {
    match m {
        Message::TransactionBroadcast(_) => 0,
        Message::VoteBatch(_)
        | Message::TimeProof { .. }
        | Message::ProofRequest(_)
        | Message::RepairRequest { .. }
        | Message::Repair(_) => 1,
        Message::Ping(_) | Message::Pong(_) => 3,
        _ => 2,
    }
}

/// Class of a frame that may not decode (garbage goes as bulk).
pub fn class_of_frame(f: &[u8]) -> usize {
    Message::decode(f).map_or(2, |m| class_of(&m))
}

/// A network-layer event for the world to schedule.
#[derive(Clone, Debug)]
pub enum NetEvent {
    /// A message on the reliable path reaches the receiver, if the link it
    /// was sent on (generation `gen`) is still the one that is up.
    Arrive {
        from: usize,
        to: usize,
        gen: u64,
        frame: Frame,
    },
    /// A fast-path datagram reaches the receiver, if the link is usable.
    Datagram {
        from: usize,
        to: usize,
        frame: Frame,
    },
}

#[derive(Clone, Debug, Default)]
pub struct NetStats {
    /// Messages handed to the reliable path.
    pub frames: u64,
    /// Reliable-path packets the transport had to retransmit (delay only).
    pub retransmits: u64,
    /// Messages that waited in a queue for a link to come up.
    pub queued: u64,
    /// Refused by a full class queue.
    pub refused_full: u64,
    /// In flight when their link went down.
    pub lost_in_flight: u64,
    /// Still queued when their sender crashed.
    pub voided_by_crash: u64,
    pub datagrams: u64,
    pub datagrams_lost: u64,
    /// Datagrams sent on, or arriving at, a link that was not usable.
    pub datagrams_dropped: u64,
    pub duplicated: u64,
    pub link_downs: u64,
}

struct Link {
    up: bool,
    /// Bumped every time the link goes down: what was in flight is lost.
    gen: u64,
    queued: [VecDeque<Frame>; CLASSES],
    /// Latest delivery scheduled per class (FIFO per class).
    last: [Micros; CLASSES],
}

impl Link {
    fn new() -> Self {
        Link {
            up: false,
            gen: 0,
            queued: Default::default(),
            last: [0; CLASSES],
        }
    }
}

pub struct Network {
    params: NetParams,
    n: usize,
    /// Side of each node while a partition is active.
    partition: Option<Vec<u8>>,
    /// Directed links, `from * n + to`.
    links: Vec<Link>,
    rng: ChaCha8Rng,
    pub stats: NetStats,
}

impl Network {
    pub fn new(params: NetParams, n: usize, rng: ChaCha8Rng) -> Self {
        Network {
            params,
            n,
            partition: None,
            links: (0..n * n).map(|_| Link::new()).collect(),
            rng,
            stats: NetStats::default(),
        }
    }

    pub fn fast_path(&self) -> bool {
        self.params.fast_path
    }

    pub fn set_partition(&mut self, side: Option<Vec<u8>>) {
        self.partition = side;
    }

    pub fn partitioned(&self, a: usize, b: usize) -> bool {
        self.partition.as_ref().is_some_and(|s| s[a] != s[b])
    }

    fn link(&mut self, from: usize, to: usize) -> &mut Link {
        &mut self.links[from * self.n + to]
    }

    pub fn is_linked(&self, a: usize, b: usize) -> bool {
        self.links[a * self.n + b].up
    }

    fn latency(&mut self, from: usize, to: usize) -> Micros {
        let j = self.params.jitter;
        self.params.base[from][to] + if j > 0 { self.rng.gen_range(0..=j) } else { 0 }
    }

    /// One message over an up link: latency, jitter, the transport's
    /// retransmissions, and never before an earlier message of its class.
    fn transmit(&mut self, now: Micros, from: usize, to: usize, class: usize) -> Micros {
        let mut t = now + self.latency(from, to);
        let mut attempt = 0u32;
        while self.params.loss > 0.0 && self.rng.gen_bool(self.params.loss) {
            self.stats.retransmits += 1;
            t += (self.params.rto_min << attempt.min(16)).min(self.params.rto_max);
            attempt += 1;
        }
        let l = self.link(from, to);
        let t = t.max(l.last[class]);
        l.last[class] = t;
        t
    }

    /// Hands a message to the reliable path: in flight if the link is up,
    /// else queued (or refused when its class queue is full).
    pub fn send(
        &mut self,
        now: Micros,
        from: usize,
        to: usize,
        frame: Frame,
        class: usize,
    ) -> Option<(Micros, NetEvent)> {
        self.stats.frames += 1;
        let cap = self.params.queue_cap[class];
        let l = self.link(from, to);
        if !l.up {
            if l.queued[class].len() >= cap {
                self.stats.refused_full += 1;
            } else {
                l.queued[class].push_back(frame);
                self.stats.queued += 1;
            }
            return None;
        }
        let gen = l.gen;
        let t = self.transmit(now, from, to, class);
        Some((
            t,
            NetEvent::Arrive {
                from,
                to,
                gen,
                frame,
            },
        ))
    }

    /// A fast-path datagram: lost, duplicated, reordered, or dropped if the
    /// link is not usable.
    pub fn datagram(
        &mut self,
        now: Micros,
        from: usize,
        to: usize,
        frame: Frame,
        out: &mut Vec<(Micros, NetEvent)>,
    ) {
        self.stats.datagrams += 1;
        if !self.is_linked(from, to) {
            self.stats.datagrams_dropped += 1;
            return;
        }
        if self.params.loss > 0.0 && self.rng.gen_bool(self.params.loss) {
            self.stats.datagrams_lost += 1;
            return;
        }
        let copies = if self.params.dup > 0.0 && self.rng.gen_bool(self.params.dup) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let t = now + self.latency(from, to);
            out.push((
                t,
                NetEvent::Datagram {
                    from,
                    to,
                    frame: frame.clone(),
                },
            ));
        }
    }

    /// The connection between `a` and `b` came up: what waited in both
    /// directions leaves now, in order.
    pub fn link_up(&mut self, now: Micros, a: usize, b: usize) -> Vec<(Micros, NetEvent)> {
        let mut out = Vec::new();
        for (from, to) in [(a, b), (b, a)] {
            let l = self.link(from, to);
            l.up = true;
            l.last = [now; CLASSES];
            let gen = l.gen;
            let waiting: Vec<(usize, Frame)> = l
                .queued
                .iter_mut()
                .enumerate()
                .flat_map(|(c, q)| q.drain(..).map(move |f| (c, f)))
                .collect();
            for (class, frame) in waiting {
                let t = self.transmit(now, from, to, class);
                out.push((
                    t,
                    NetEvent::Arrive {
                        from,
                        to,
                        gen,
                        frame,
                    },
                ));
            }
        }
        out
    }

    /// The connection between `a` and `b` went down: what was in flight on
    /// it is lost; later messages queue.
    pub fn link_down(&mut self, a: usize, b: usize) {
        self.stats.link_downs += 1;
        for (from, to) in [(a, b), (b, a)] {
            let l = self.link(from, to);
            l.up = false;
            l.gen += 1;
        }
    }

    /// `node` crashed: its outbound queues die with it.
    pub fn sender_crashed(&mut self, node: usize) {
        for to in 0..self.n {
            let l = self.link(node, to);
            let k: usize = l.queued.iter().map(|q| q.len()).sum();
            l.queued.iter_mut().for_each(|q| q.clear());
            self.stats.voided_by_crash += k as u64;
        }
    }

    /// Whether a reliable-path arrival is delivered (its link stayed up).
    pub fn arrives(&mut self, from: usize, to: usize, gen: u64) -> bool {
        let l = self.link(from, to);
        if l.up && l.gen == gen {
            true
        } else {
            self.stats.lost_in_flight += 1;
            false
        }
    }

    /// Whether a datagram arriving now is delivered.
    pub fn datagram_arrives(&mut self, from: usize, to: usize) -> bool {
        if self.is_linked(from, to) {
            true
        } else {
            self.stats.datagrams_dropped += 1;
            false
        }
    }

    /// Messages still waiting in queues (for end-of-run statistics).
    pub fn backlog(&self) -> usize {
        self.links
            .iter()
            .map(|l| l.queued.iter().map(|q| q.len()).sum::<usize>())
            .sum()
    }
}
