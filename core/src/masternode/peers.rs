//! Per-peer accounting: rate limits per message class, reputation and bans.
//!
//! Every registered peer has a token bucket per class of message it can
//! send, sized so that an honest peer at ten times the target load never
//! empties it, and a reputation from -100 to +100. Misbehaviour costs
//! reputation (seed 002's -20 for Byzantine behaviour); at -50 the peer is
//! banned for `ban_ms`, after which it starts again at -25. Good messages
//! earn reputation back slowly. An operator can list and lift bans.
//!
//! Over a bucket's limit the sender is pushed back first: where the
//! transport can hold a message back ([`PeerBook::pacing`], applied by the
//! node's pool readers), the peer is not read until its bucket holds the
//! message's cost, so flow control slows the sender instead of its messages
//! being dropped. A message still over the limit after that is refused and
//! counted, never silently (the peer's own re-announcement and catch-up
//! recover it), and a peer that keeps going far past the limit is
//! penalized.
//!
//! Pure: time is passed in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::protocol::audience::PeerMessage;
use crate::protocol::types::PublicKey;

/// What a peer did wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Misbehaviour {
    /// A frame that does not decode, or a message its role may not send.
    MalformedFrame,
    /// A signature that does not verify (vote batch, proof, datagram).
    InvalidSignature,
    /// Two contradicting signed votes (Byzantine).
    Equivocation,
    /// A proof that fails its checks.
    InvalidProof,
    /// Far over a rate limit.
    Flood,
}

impl Misbehaviour {
    /// Reputation cost.
    pub fn cost(self) -> i32 {
        match self {
            Misbehaviour::MalformedFrame => 5,
            Misbehaviour::InvalidSignature => 10,
            Misbehaviour::InvalidProof => 10,
            Misbehaviour::Flood => 5,
            Misbehaviour::Equivocation => 20,
        }
    }
}

/// Classes of messages a peer sends, each with its own bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// Lock broadcasts.
    Transactions,
    /// Vote batches.
    Votes,
    /// Proofs and proof requests.
    Proofs,
    /// Finality-log requests and pages.
    CatchUp,
}

impl Class {
    /// The bucket a peer's message draws from; `None` for transport
    /// housekeeping (pings, fast-path repair and stream announcements),
    /// which the transports bound themselves.
    pub fn of(msg: &PeerMessage) -> Option<Class> {
        match msg {
            PeerMessage::TransactionBroadcast(_) => Some(Class::Transactions),
            PeerMessage::VoteBatch(_) => Some(Class::Votes),
            PeerMessage::TimeProof { .. } | PeerMessage::ProofRequest(_) => Some(Class::Proofs),
            PeerMessage::FinalityLogRequest { .. }
            | PeerMessage::FinalityLogPage { .. }
            | PeerMessage::BlockRequest { .. }
            | PeerMessage::CommittedBlock(_) => Some(Class::CatchUp),
            PeerMessage::BlockProposal(_) | PeerMessage::BlockVote(_) => Some(Class::Votes),
            PeerMessage::RepairRequest { .. }
            | PeerMessage::Repair(_)
            | PeerMessage::FastPathSeq { .. }
            | PeerMessage::Ping(_)
            | PeerMessage::Pong(_) => None,
        }
    }

    /// What a message costs in its class's bucket: a lock broadcast one
    /// token per input, a vote batch one per vote in it (a batch carries
    /// up to 16,384 votes under one signature, and every vote is tallied),
    /// anything else one.
    pub fn cost(msg: &PeerMessage) -> u32 {
        match msg {
            PeerMessage::TransactionBroadcast(tx) => tx.inputs.len().max(1) as u32,
            PeerMessage::VoteBatch(b) => b.items.len().max(1) as u32,
            // Answered with up to that many blocks.
            PeerMessage::BlockRequest { .. } => {
                crate::masternode::block_sync::BLOCKS_PER_ANSWER as u32
            }
            _ => 1,
        }
    }

    /// The most one message of this class can cost (see [`Class::cost`]).
    pub fn max_cost(self) -> u32 {
        match self {
            Class::Transactions => crate::protocol::types::MAX_TX_INPUTS as u32,
            Class::Votes => crate::protocol::vote::MAX_VOTE_ITEMS as u32,
            Class::Proofs => 1,
            Class::CatchUp => crate::masternode::block_sync::BLOCKS_PER_ANSWER as u32,
        }
    }

    pub const ALL: [Class; 4] = [
        Class::Transactions,
        Class::Votes,
        Class::Proofs,
        Class::CatchUp,
    ];
}

#[derive(Clone, Debug)]
pub struct PeerLimits {
    /// Tokens per second per class (the bucket's refill rate; see
    /// [`Class::cost`]); the bucket holds `burst_s` seconds of it.
    pub per_second: [u32; 4],
    pub burst_s: u32,
    pub ban_at: i32,
    pub ban_ms: u64,
    /// Refusals in a row, past the limit, that count as a flood.
    pub flood_after: u32,
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            // Target load 1,000 payments/s. Ten times that: 10,000 lock
            // broadcasts of up to 3 inputs, 10,000 votes (one per payment
            // per peer) with room to spare, and proofs (a catch-up after a
            // long outage asks for thousands of proofs a second).
            per_second: [30_000, 20_000, 20_000, 2_000],
            burst_s: 5,
            ban_at: -50,
            ban_ms: 600_000,
            flood_after: 10_000,
        }
    }
}

#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
    refused_in_a_row: u32,
}

#[derive(Clone, Debug)]
struct PeerState {
    reputation: i32,
    banned_until: Option<u64>,
    buckets: [Bucket; 4],
    refused: u64,
}

/// A ban as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    pub peer: PublicKey,
    pub until_ms: u64,
    pub reputation: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerBookStats {
    pub refused_rate_limited: u64,
    pub refused_banned: u64,
    pub penalties: u64,
    pub bans: u64,
}

pub struct PeerBook {
    limits: PeerLimits,
    peers: HashMap<PublicKey, PeerState>,
    stats: PeerBookStats,
}

/// Whether a message from a peer is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Accept,
    /// Over its rate: refused this time (counted).
    RateLimited,
    Banned,
}

impl PeerBook {
    pub fn new(limits: PeerLimits, peers: impl IntoIterator<Item = PublicKey>) -> Self {
        let full = |i: usize| Bucket {
            tokens: (limits.per_second[i] * limits.burst_s) as f64,
            last_ms: 0,
            refused_in_a_row: 0,
        };
        let state = PeerState {
            reputation: 0,
            banned_until: None,
            buckets: [full(0), full(1), full(2), full(3)],
            refused: 0,
        };
        PeerBook {
            peers: peers.into_iter().map(|p| (p, state.clone())).collect(),
            limits,
            stats: PeerBookStats::default(),
        }
    }

    pub fn stats(&self) -> &PeerBookStats {
        &self.stats
    }

    pub fn reputation(&self, peer: &PublicKey) -> Option<i32> {
        self.peers.get(peer).map(|p| p.reputation)
    }

    /// Takes one message of `class` from `peer`, or refuses it.
    pub fn admit(&mut self, now: u64, peer: &PublicKey, class: Class) -> Admission {
        self.admit_cost(now, peer, class, 1)
    }

    /// Takes a message costing `cost` tokens of `class` from `peer`, or
    /// refuses it (a message costing more than the whole bucket is always
    /// refused).
    pub fn admit_cost(&mut self, now: u64, peer: &PublicKey, class: Class, cost: u32) -> Admission {
        let limits = &self.limits;
        let Some(p) = self.peers.get_mut(peer) else {
            return Admission::Banned;
        };
        if let Some(until) = p.banned_until {
            if now < until {
                self.stats.refused_banned += 1;
                return Admission::Banned;
            }
            p.banned_until = None;
            p.reputation = limits.ban_at / 2;
        }
        let i = class as usize;
        let rate = limits.per_second[i] as f64;
        let cap = rate * limits.burst_s as f64;
        let b = &mut p.buckets[i];
        let elapsed = now.saturating_sub(b.last_ms) as f64 / 1_000.0;
        b.tokens = (b.tokens + elapsed * rate).min(cap);
        b.last_ms = now;
        let cost = cost as f64;
        if b.tokens >= cost {
            b.tokens -= cost;
            b.refused_in_a_row = 0;
            return Admission::Accept;
        }
        b.refused_in_a_row += 1;
        p.refused += 1;
        self.stats.refused_rate_limited += 1;
        if b.refused_in_a_row >= limits.flood_after {
            b.refused_in_a_row = 0;
            self.penalize(now, peer, Misbehaviour::Flood);
        }
        Admission::RateLimited
    }

    /// Whether some message from `peer` could have to wait now: false when
    /// every bucket holds the most any one message of its class costs (an
    /// honest peer's usual state), so the caller need not decode the message
    /// to ask [`PeerBook::pacing`]. Changes nothing.
    pub fn may_pace(&self, now: u64, peer: &PublicKey) -> bool {
        let Some(p) = self.peers.get(peer) else {
            return false;
        };
        Class::ALL.iter().any(|&c| {
            let i = c as usize;
            let rate = self.limits.per_second[i] as f64;
            let b = &p.buckets[i];
            let elapsed = now.saturating_sub(b.last_ms) as f64 / 1_000.0;
            b.tokens + elapsed * rate < c.max_cost() as f64
        })
    }

    /// How long `msg` from `peer` must wait before its class's bucket holds
    /// its cost, in milliseconds; `None` if it can be taken now, if it never
    /// fits the bucket, if the peer is banned or unknown, or if the message
    /// has no class (admission then decides). Changes nothing.
    pub fn pacing(&self, now: u64, peer: &PublicKey, msg: &PeerMessage) -> Option<u64> {
        let class = Class::of(msg)?;
        let p = self.peers.get(peer)?;
        if p.banned_until.is_some_and(|u| now < u) {
            return None;
        }
        let i = class as usize;
        let rate = self.limits.per_second[i] as f64;
        let cap = rate * self.limits.burst_s as f64;
        let b = &p.buckets[i];
        let elapsed = now.saturating_sub(b.last_ms) as f64 / 1_000.0;
        let tokens = (b.tokens + elapsed * rate).min(cap);
        let cost = Class::cost(msg) as f64;
        if tokens >= cost || cost > cap || rate <= 0.0 {
            return None;
        }
        // One more millisecond than the exact time: the bucket is kept in
        // floating point, and a wait that falls a hair short would have the
        // message refused after all.
        Some(((cost - tokens) * 1_000.0 / rate).ceil() as u64 + 1)
    }

    /// Lowers `peer`'s reputation; bans it at the threshold.
    pub fn penalize(&mut self, now: u64, peer: &PublicKey, why: Misbehaviour) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        self.stats.penalties += 1;
        p.reputation = (p.reputation - why.cost()).max(-100);
        if p.reputation <= self.limits.ban_at && p.banned_until.is_none() {
            p.banned_until = Some(now + self.limits.ban_ms);
            self.stats.bans += 1;
        }
    }

    /// A good message (a valid proof, a vote that counted): +1, up to +100.
    pub fn reward(&mut self, peer: &PublicKey) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.reputation = (p.reputation + 1).min(100);
        }
    }

    pub fn is_banned(&self, now: u64, peer: &PublicKey) -> bool {
        self.peers
            .get(peer)
            .and_then(|p| p.banned_until)
            .is_some_and(|u| now < u)
    }

    /// Current bans, for the operator.
    pub fn bans(&self, now: u64) -> Vec<Ban> {
        let mut v: Vec<Ban> = self
            .peers
            .iter()
            .filter_map(|(k, p)| match p.banned_until {
                Some(u) if now < u => Some(Ban {
                    peer: *k,
                    until_ms: u,
                    reputation: p.reputation,
                }),
                _ => None,
            })
            .collect();
        v.sort_by_key(|b| b.peer);
        v
    }

    /// Takes `msg` from `peer` if its class has a token (messages without a
    /// class are always taken, unless the peer is banned).
    pub fn admit_message(&mut self, now: u64, peer: &PublicKey, msg: &PeerMessage) -> Admission {
        match Class::of(msg) {
            Some(class) => self.admit_cost(now, peer, class, Class::cost(msg)),
            None if self.is_banned(now, peer) => Admission::Banned,
            None => Admission::Accept,
        }
    }

    /// Bans `peer` until `now + ms` (operator). False if it is not a
    /// registered peer.
    pub fn ban(&mut self, now: u64, peer: &PublicKey, ms: u64) -> bool {
        let Some(p) = self.peers.get_mut(peer) else {
            return false;
        };
        if p.banned_until.is_none_or(|u| u <= now) {
            self.stats.bans += 1;
        }
        p.banned_until = Some(now + ms);
        true
    }

    /// Lifts a ban (operator). The peer starts again at reputation 0.
    pub fn unban(&mut self, peer: &PublicKey) -> bool {
        match self.peers.get_mut(peer) {
            Some(p) if p.banned_until.is_some() => {
                p.banned_until = None;
                p.reputation = 0;
                true
            }
            _ => false,
        }
    }
}

/// The one [`PeerBook`] of a masternode, shared between the state machine
/// and whatever admits peer messages before they reach it: a node checks
/// every peer message here on the network task that read it, before any
/// signature is verified or any queue is joined, so a flood costs a lock
/// and a token-bucket update, not a verification. Pure like the book (the
/// caller passes the time, on the state machine's clock).
#[derive(Clone)]
pub struct PeerGate(Arc<Mutex<PeerBook>>);

impl PeerGate {
    pub fn new(book: PeerBook) -> Self {
        PeerGate(Arc::new(Mutex::new(book)))
    }

    /// The book (a poisoned lock is taken over: the book has no invariant a
    /// panic elsewhere could break half-way).
    pub fn book(&self) -> MutexGuard<'_, PeerBook> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn admit(&self, now: u64, peer: &PublicKey, msg: &PeerMessage) -> Admission {
        self.book().admit_message(now, peer, msg)
    }

    pub fn penalize(&self, now: u64, peer: &PublicKey, why: Misbehaviour) {
        self.book().penalize(now, peer, why)
    }

    /// See [`PeerBook::may_pace`].
    pub fn may_pace(&self, now: u64, peer: &PublicKey) -> bool {
        self.book().may_pace(now, peer)
    }

    /// See [`PeerBook::pacing`].
    pub fn pacing(&self, now: u64, peer: &PublicKey, msg: &PeerMessage) -> Option<u64> {
        self.book().pacing(now, peer, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pk(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    fn votes(n: usize) -> PeerMessage {
        use crate::protocol::types::Txid;
        use crate::protocol::vote::{Decision, VoteBatch, VoteItem};
        let k = crate::testkit::key_from_seed("peers", 0);
        let items = (0..n)
            .map(|i| VoteItem {
                txid: Txid(blake3::hash(&i.to_le_bytes()).into()),
                decision: Decision::Approve,
            })
            .collect();
        PeerMessage::VoteBatch(VoteBatch::sign(1, 1, &k, items))
    }

    #[test]
    fn vote_batches_pay_per_vote_so_full_batches_cannot_flood() {
        let mut book = PeerBook::new(PeerLimits::default(), [pk(1), pk(2)]);
        // Honest at ten times the target: 10 votes a millisecond, in
        // batches of 10, for 10 s.
        let small = votes(10);
        for ms in 0..10_000u64 {
            assert_eq!(book.admit_message(ms, &pk(1), &small), Admission::Accept);
        }
        // A flood of full batches (16,384 votes each) for 10 s, 1,000 a
        // second: the bucket (100,000 votes) plus 20,000 votes a second.
        let full = votes(crate::protocol::vote::MAX_VOTE_ITEMS);
        let mut taken = 0u64;
        for ms in 0..10_000u64 {
            if book.admit_message(ms, &pk(2), &full) == Admission::Accept {
                taken += 1;
            }
        }
        let votes_taken = taken * crate::protocol::vote::MAX_VOTE_ITEMS as u64;
        assert!(votes_taken <= 100_000 + 20_000 * 10, "{votes_taken} votes");
        assert!(taken >= 6, "the bucket's worth was taken: {taken}");
        assert_eq!(book.reputation(&pk(1)), Some(0));
    }

    #[test]
    fn a_sender_over_its_rate_is_paced_before_it_is_refused() {
        let mut book = PeerBook::new(PeerLimits::default(), [pk(1)]);
        let full = votes(crate::protocol::vote::MAX_VOTE_ITEMS);
        // The bucket holds 100,000 votes: six full batches are taken at once.
        let mut now = 0;
        assert!(!book.may_pace(now, &pk(1)), "full buckets: nothing to pace");
        for _ in 0..6 {
            assert_eq!(book.pacing(now, &pk(1), &full), None);
            assert_eq!(book.admit_message(now, &pk(1), &full), Admission::Accept);
        }
        // The seventh must wait for its tokens: 16,384 - 1,696 left at
        // 20,000 a second, 735 ms. Waiting that long, it is taken, and a
        // sender paced like this is never refused nor penalized.
        for _ in 0..20 {
            let wait = book.pacing(now, &pk(1), &full).expect("over the rate");
            assert!(wait > 0 && wait <= 821, "{wait} ms");
            now += wait;
            assert_eq!(book.pacing(now, &pk(1), &full), None);
            assert_eq!(book.admit_message(now, &pk(1), &full), Admission::Accept);
        }
        assert_eq!(book.stats().refused_rate_limited, 0);
        assert_eq!(book.reputation(&pk(1)), Some(0));
        assert!(book.may_pace(now, &pk(1)), "the votes bucket is low");
        // Pacing takes nothing: asking does not change the bucket.
        let before = book.pacing(now, &pk(1), &full);
        assert_eq!(book.pacing(now, &pk(1), &full), before);
        // Never paced: a message without a class, a banned peer, an unknown
        // peer.
        assert_eq!(book.pacing(now, &pk(1), &PeerMessage::Ping(1)), None);
        assert_eq!(book.pacing(now, &pk(9), &full), None);
        book.ban(now, &pk(1), 1_000);
        assert_eq!(book.pacing(now, &pk(1), &full), None);
    }

    #[test]
    fn an_honest_burst_at_ten_times_the_target_is_never_refused() {
        let mut book = PeerBook::new(PeerLimits::default(), [pk(1)]);
        // 10,000 lock broadcasts a second for 10 s, arriving in 1 ms steps.
        let mut refused = 0;
        for ms in 0..10_000u64 {
            for _ in 0..10 {
                if book.admit(ms, &pk(1), Class::Transactions) != Admission::Accept {
                    refused += 1;
                }
            }
        }
        assert_eq!(refused, 0);
        // A catch-up burst: 50,000 proof requests at once fit the bucket.
        for _ in 0..50_000 {
            assert_eq!(book.admit(10_000, &pk(1), Class::Proofs), Admission::Accept);
        }
        assert_eq!(book.reputation(&pk(1)), Some(0));
        assert!(book.bans(10_000).is_empty());
    }

    #[test]
    fn a_flood_is_refused_then_penalized_then_banned_and_the_ban_expires() {
        let limits = PeerLimits {
            per_second: [10, 10, 10, 10],
            burst_s: 1,
            flood_after: 100,
            ..PeerLimits::default()
        };
        let mut book = PeerBook::new(limits, [pk(1), pk(2)]);
        let mut accepted = 0;
        for _ in 0..2_000 {
            match book.admit(0, &pk(1), Class::Votes) {
                Admission::Accept => accepted += 1,
                Admission::RateLimited | Admission::Banned => {}
            }
        }
        assert_eq!(accepted, 10, "the burst, then pushed back");
        assert!(book.is_banned(0, &pk(1)), "far past the limit: banned");
        assert_eq!(book.admit(1, &pk(1), Class::Proofs), Admission::Banned);
        // Others are untouched.
        assert_eq!(book.admit(1, &pk(2), Class::Votes), Admission::Accept);
        assert_eq!(book.bans(1).len(), 1);
        // The ban expires; the peer starts again below zero.
        let later = 600_001;
        assert_eq!(book.admit(later, &pk(1), Class::Votes), Admission::Accept);
        assert_eq!(book.reputation(&pk(1)), Some(-25));
    }

    #[test]
    fn operators_ban_and_unban_registered_peers_only() {
        let mut book = PeerBook::new(PeerLimits::default(), [pk(1)]);
        assert!(!book.ban(0, &pk(9), 1_000), "not a registered peer");
        assert!(book.ban(0, &pk(1), 1_000));
        assert_eq!(book.admit(10, &pk(1), Class::Votes), Admission::Banned);
        assert_eq!(book.bans(10).len(), 1);
        assert_eq!(book.stats().bans, 1);
        assert!(book.unban(&pk(1)));
        assert_eq!(book.admit(11, &pk(1), Class::Votes), Admission::Accept);
        // A ban expires by itself too.
        assert!(book.ban(20, &pk(1), 5));
        assert_eq!(book.admit(26, &pk(1), Class::Votes), Admission::Accept);
    }

    #[test]
    fn equivocation_costs_twenty_and_operators_can_unban() {
        let mut book = PeerBook::new(PeerLimits::default(), [pk(1)]);
        for _ in 0..2 {
            book.penalize(0, &pk(1), Misbehaviour::Equivocation);
        }
        assert_eq!(book.reputation(&pk(1)), Some(-40));
        assert!(!book.is_banned(0, &pk(1)));
        book.penalize(0, &pk(1), Misbehaviour::InvalidSignature);
        assert!(book.is_banned(0, &pk(1)));
        assert!(book.unban(&pk(1)));
        assert!(!book.is_banned(0, &pk(1)));
        assert_eq!(book.reputation(&pk(1)), Some(0));
        assert!(!book.unban(&pk(1)));
    }
}
