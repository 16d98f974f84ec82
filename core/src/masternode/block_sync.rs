//! Block sync: how a masternode that is behind fetches committed blocks.
//!
//! Peers show their height in every consensus message they send (a peer
//! working on height `h` holds the committed blocks below `h`). When one is
//! ahead, the node asks up to [`SYNC_PEERS`] peers at once for consecutive
//! windows of [`BLOCKS_PER_ANSWER`] blocks, each window from another peer,
//! the window the tip waits on from a second peer too when its first answer
//! is slow, and again from another peer when a request times out. Blocks
//! that arrive ahead of the tip wait here (bounded in count and bytes) for
//! their parent. No peer is trusted: every block's commit certificate is
//! checked against the registry ([`Checked::commit`]) before it gets here,
//! and the consensus applies only one that extends its tip, so one honest
//! peer is enough and a Byzantine one only wastes a request (and its
//! reputation).
//!
//! Sans-IO: time comes in as `now`, requests go out as `(peer, from)`.

use std::collections::{BTreeMap, HashMap};

use crate::blocks::{Checked, CommittedBlock};
use crate::protocol::types::PublicKey;

/// Most committed blocks sent for one `BlockRequest`.
pub const BLOCKS_PER_ANSWER: u64 = 64;
/// Most bytes of blocks sent for one `BlockRequest` (an answer stops early
/// rather than exceed it; the requester asks again from the gap).
pub const ANSWER_BYTES: usize = 4 << 20;
/// Peers asked at once, each for its own window.
pub const SYNC_PEERS: usize = 4;
/// A request unanswered this long is given up and asked of another peer.
pub const REQUEST_TIMEOUT_MS: u64 = 2_000;
/// The window the tip waits on is asked of a second peer after this long.
pub const REDUNDANT_AFTER_MS: u64 = 300;
/// An answer that stopped this long before its window's last block ended
/// early: the server stops at [`ANSWER_BYTES`] (the requester cannot tell
/// where), and an answer's blocks come back to back, so the rest is asked
/// at once instead of after [`REQUEST_TIMEOUT_MS`].
pub const ANSWER_ENDED_AFTER_MS: u64 = 250;
/// Most blocks held ahead of the tip, and their bytes.
pub const MAX_AHEAD_BLOCKS: usize = 2 * SYNC_PEERS * BLOCKS_PER_ANSWER as usize;
pub const MAX_AHEAD_BYTES: usize = 32 << 20;

#[derive(Clone, Copy, Debug)]
struct Request {
    from: u64,
    sent_ms: u64,
    /// When the answer's last block so far arrived.
    answered_ms: Option<u64>,
}

/// Sync counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub requests: u64,
    pub timeouts: u64,
    pub blocks_received: u64,
    /// Blocks dropped: below the tip, too far ahead, or over the byte bound.
    pub blocks_dropped: u64,
}

#[derive(Default)]
pub struct BlockSync {
    /// The highest height each peer showed it works on.
    peer_heights: HashMap<PublicKey, u64>,
    inflight: HashMap<PublicKey, Request>,
    /// Requests each peer let time out since it last sent a block: a peer
    /// that does not answer (down, Byzantine, or banned here, so its answers
    /// are refused) is asked only after every peer with fewer.
    strikes: HashMap<PublicKey, u32>,
    /// Blocks ahead of the tip, with the peer that sent each.
    ahead: BTreeMap<u64, (PublicKey, Checked<CommittedBlock>)>,
    ahead_bytes: usize,
    pub stats: SyncStats,
}

impl BlockSync {
    /// `peer` sent a message for `height`.
    pub fn saw(&mut self, peer: PublicKey, height: u64) {
        let h = self.peer_heights.entry(peer).or_insert(0);
        *h = (*h).max(height);
    }

    /// The highest committed height some peer has shown it holds.
    pub fn best_known(&self) -> u64 {
        self.peer_heights
            .values()
            .copied()
            .max()
            .unwrap_or(0)
            .saturating_sub(1)
    }

    /// Whether a peer holds blocks above `tip`.
    pub fn behind(&self, tip: u64) -> bool {
        self.best_known() > tip
    }

    /// How many committed blocks the best height peers showed is above `tip`.
    pub fn lag(&self, tip: u64) -> u64 {
        self.best_known().saturating_sub(tip)
    }

    /// How many committed blocks above `tip` peers carrying more than a
    /// third of `total_weight` all showed they hold: at least one of them is
    /// honest, so a Byzantine minority claiming heights it does not have
    /// cannot make this more than 0.
    /// None until peers carrying more than a third have shown a height.
    pub fn vouched_lag(
        &self,
        tip: u64,
        total_weight: u64,
        weight_of: impl Fn(&PublicKey) -> u64,
    ) -> Option<u64> {
        let mut shown: Vec<(u64, u64)> = self
            .peer_heights
            .iter()
            .map(|(p, h)| (*h, weight_of(p)))
            .collect();
        shown.sort_unstable_by(|a, b| b.cmp(a));
        let mut weight = 0u64;
        for (height, w) in shown {
            weight = weight.saturating_add(w);
            if weight.saturating_mul(3) > total_weight {
                return Some(height.saturating_sub(1).saturating_sub(tip));
            }
        }
        None
    }

    pub fn peer_disconnected(&mut self, peer: &PublicKey) {
        self.inflight.remove(peer);
    }

    /// A committed block from `peer`. Returns it if it is the next one
    /// (`tip + 1`); keeps it if it is ahead, drops it otherwise.
    pub fn received(
        &mut self,
        now: u64,
        peer: PublicKey,
        tip: u64,
        c: Checked<CommittedBlock>,
    ) -> Option<Checked<CommittedBlock>> {
        self.stats.blocks_received += 1;
        let h = c.get().block.height();
        self.saw(peer, h + 1);
        self.strikes.remove(&peer);
        let best = self.best_known();
        if let Some(r) = self.inflight.get_mut(&peer) {
            let last = (r.from + BLOCKS_PER_ANSWER - 1).min(best);
            r.answered_ms = Some(now);
            if h >= last {
                self.inflight.remove(&peer);
            }
        }
        if h == tip + 1 {
            return Some(c);
        }
        let len = c.get().block.encoded_len();
        if h <= tip
            || self.ahead.contains_key(&h)
            || h > tip + MAX_AHEAD_BLOCKS as u64
            || self.ahead_bytes + len > MAX_AHEAD_BYTES
        {
            self.stats.blocks_dropped += 1;
            return None;
        }
        self.ahead_bytes += len;
        self.ahead.insert(h, (peer, c));
        None
    }

    /// The held block that extends `tip` and its sender, if any (and
    /// forgets those below).
    pub fn next_ready(&mut self, tip: u64) -> Option<(PublicKey, Checked<CommittedBlock>)> {
        while let Some((&h, _)) = self.ahead.first_key_value() {
            if h > tip + 1 {
                return None;
            }
            let (_, (peer, c)) = self.ahead.pop_first()?;
            self.ahead_bytes -= c.get().block.encoded_len();
            if h == tip + 1 {
                return Some((peer, c));
            }
        }
        None
    }

    /// The requests to send now for a node whose tip is `tip`.
    pub fn plan(&mut self, now: u64, tip: u64) -> Vec<(PublicKey, u64)> {
        let target = self.best_known();
        if target <= tip {
            self.inflight.clear();
            return Vec::new();
        }
        let strikes = &mut self.strikes;
        let mut timeouts = 0;
        self.inflight.retain(|p, r| {
            if r.answered_ms
                .is_some_and(|at| now >= at + ANSWER_ENDED_AFTER_MS)
            {
                // Answered in part (the byte cap): not a strike.
                return false;
            }
            if now >= r.sent_ms + REQUEST_TIMEOUT_MS {
                timeouts += 1;
                *strikes.entry(*p).or_default() += 1;
                return false;
            }
            r.from + BLOCKS_PER_ANSWER > tip
        });
        self.stats.timeouts += timeouts;
        let mut out = Vec::new();
        let mut window = tip + 1;
        for _ in 0..SYNC_PEERS {
            if window > target {
                break;
            }
            let asked: Vec<Request> = self
                .inflight
                .values()
                .filter(|r| r.from <= window && window < r.from + BLOCKS_PER_ANSWER)
                .copied()
                .collect();
            let held = self.ahead.contains_key(&window);
            let slow = window == tip + 1
                && asked.len() == 1
                && asked.iter().all(|r| now >= r.sent_ms + REDUNDANT_AFTER_MS);
            if !held && (asked.is_empty() || slow) {
                if let Some(peer) = self.idle_peer(window) {
                    self.inflight.insert(
                        peer,
                        Request {
                            from: window,
                            sent_ms: now,
                            answered_ms: None,
                        },
                    );
                    self.stats.requests += 1;
                    out.push((peer, window));
                }
            }
            window += BLOCKS_PER_ANSWER;
        }
        out
    }

    /// A peer with no request outstanding that holds block `height`: of
    /// those with the fewest unanswered requests, the one furthest ahead
    /// (ties by key, so the choice is deterministic). A peer that claims the
    /// highest height but never answers cannot keep the node from syncing
    /// from the others.
    fn idle_peer(&self, height: u64) -> Option<PublicKey> {
        self.peer_heights
            .iter()
            .filter(|(p, h)| **h > height && !self.inflight.contains_key(*p))
            .max_by_key(|(p, h)| {
                let strikes = self.strikes.get(*p).copied().unwrap_or(0);
                (std::cmp::Reverse(strikes), **h, std::cmp::Reverse(**p))
            })
            .map(|(p, _)| *p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::{Block, BlockHash, CommitCertificate, Slot};

    fn pk(i: u8) -> PublicKey {
        PublicKey([i; 32])
    }

    fn committed(h: u64) -> Checked<CommittedBlock> {
        let block = Block::new(1, 0, h, BlockHash([h as u8; 32]), h * 1_000, pk(1), vec![]);
        // Sync only orders and holds blocks; their certificates do not matter here.
        Checked::assume_checked(CommittedBlock {
            cert: CommitCertificate {
                slot: Slot {
                    chain_id: 1,
                    epoch: 0,
                    height: h,
                    round: 0,
                },
                block: block.hash(),
                precommits: vec![],
            },
            block,
        })
    }

    #[test]
    fn asks_several_peers_for_consecutive_windows() {
        let mut s = BlockSync::default();
        assert!(s.plan(0, 0).is_empty(), "nobody is ahead");
        for i in 1..=3 {
            s.saw(pk(i), 1_000);
        }
        let reqs = s.plan(0, 10);
        let froms: Vec<u64> = reqs.iter().map(|r| r.1).collect();
        assert_eq!(froms, vec![11, 11 + 64, 11 + 128], "one window per peer");
        let mut peers: Vec<_> = reqs.iter().map(|r| r.0).collect();
        peers.sort();
        peers.dedup();
        assert_eq!(peers.len(), 3, "each from another peer");
        assert!(
            s.plan(1, 10).is_empty(),
            "nothing new while answers are due"
        );
    }

    #[test]
    fn slow_or_lost_answers_are_asked_again_elsewhere() {
        let mut s = BlockSync::default();
        s.saw(pk(1), 100);
        s.saw(pk(2), 50);
        let first = s.plan(0, 0);
        assert_eq!(first, vec![(pk(1), 1)]);
        // pk(2) is idle but holds only up to 49: still useful for window 1,
        // after the redundancy delay.
        assert!(s.plan(REDUNDANT_AFTER_MS - 1, 0).is_empty());
        assert_eq!(s.plan(REDUNDANT_AFTER_MS, 0), vec![(pk(2), 1)]);
        // Both time out: asked again.
        let again = s.plan(REDUNDANT_AFTER_MS + REQUEST_TIMEOUT_MS, 0);
        assert_eq!(again.len(), 1);
        assert!(s.stats.timeouts >= 1);
    }

    #[test]
    fn a_peer_that_never_answers_is_asked_after_the_others() {
        let mut s = BlockSync::default();
        // pk(9) claims the highest height but never answers; pk(2) and
        // pk(3) hold the blocks.
        s.saw(pk(9), 1_000);
        s.saw(pk(2), 20);
        s.saw(pk(3), 20);
        assert_eq!(s.plan(0, 10)[0], (pk(9), 11));
        let t = REQUEST_TIMEOUT_MS;
        let again = s.plan(t, 10);
        assert!(s.stats.timeouts >= 1);
        // Window 11 goes to a peer that answers; pk(9) is still the only
        // one holding the next window.
        assert_eq!(again[0], (pk(2), 11), "{again:?}");
        assert!(again[1..].iter().all(|(_, from)| *from > 11), "{again:?}");
        // Its answer, when one comes, clears the strike.
        s.received(t, pk(9), 10, committed(11));
        assert!(s.strikes.is_empty());
    }

    #[test]
    fn an_answer_cut_short_is_asked_on_soon_without_a_strike() {
        let mut s = BlockSync::default();
        s.saw(pk(1), 1_000);
        assert_eq!(s.plan(0, 0), vec![(pk(1), 1)]);
        // The server's byte cap ended the answer after block 40 of 64.
        for h in 1..=40 {
            assert!(s.received(10, pk(1), h - 1, committed(h)).is_some());
        }
        assert!(
            s.plan(10 + ANSWER_ENDED_AFTER_MS - 1, 40).is_empty(),
            "still coming?"
        );
        assert_eq!(s.plan(10 + ANSWER_ENDED_AFTER_MS, 40), vec![(pk(1), 41)]);
        assert_eq!(s.stats.timeouts, 0);
        assert!(s.strikes.is_empty());
    }

    #[test]
    fn blocks_ahead_wait_for_their_parent_within_bounds() {
        let mut s = BlockSync::default();
        s.saw(pk(1), 10);
        assert!(s.received(0, pk(1), 0, committed(3)).is_none());
        assert!(s.received(0, pk(1), 0, committed(2)).is_none());
        assert!(s.next_ready(0).is_none());
        let b1 = s.received(0, pk(1), 0, committed(1)).expect("next block");
        assert_eq!(b1.get().block.height(), 1);
        assert_eq!(s.next_ready(1).unwrap().1.get().block.height(), 2);
        assert_eq!(s.next_ready(2).unwrap().1.get().block.height(), 3);
        assert!(s.next_ready(3).is_none());
        // Below the tip, a duplicate, or too far ahead: dropped.
        assert!(s.received(0, pk(1), 5, committed(4)).is_none());
        let far = 5 + MAX_AHEAD_BLOCKS as u64 + 1;
        assert!(s.received(0, pk(1), 5, committed(far)).is_none());
        assert_eq!(s.stats.blocks_dropped, 2);
        assert!(s.ahead.is_empty() && s.ahead_bytes == 0);
    }

    #[test]
    fn lag_is_the_best_peer_height_above_the_tip() {
        let mut s = BlockSync::default();
        assert_eq!(s.lag(0), 0, "no peer heard from");
        // Peers show the height they work on: 41 means blocks up to 40.
        s.saw(pk(1), 41);
        s.saw(pk(2), 12);
        assert_eq!(s.lag(10), 30);
        assert_eq!(s.lag(40), 0, "caught up");
        assert_eq!(s.lag(45), 0, "ahead of every peer is no lag");
        s.saw(pk(2), 5);
        assert_eq!(s.lag(10), 30, "a peer's lower height later changes nothing");
    }

    #[test]
    fn vouched_lag_needs_more_than_a_third_of_the_weight() {
        let mut s = BlockSync::default();
        let w = |_: &PublicKey| 1;
        assert_eq!(s.vouched_lag(10, 4, w), None, "nobody heard from");
        // 4 masternodes of weight 1: one peer alone is not more than 1/3.
        s.saw(pk(9), 1_000_000);
        assert_eq!(s.lag(10), 1_000_000 - 1 - 10);
        assert_eq!(
            s.vouched_lag(10, 4, w),
            None,
            "one claim is not vouched for"
        );
        s.saw(pk(2), 41);
        assert_eq!(
            s.vouched_lag(10, 4, w),
            Some(30),
            "the second highest vouches"
        );
        s.saw(pk(3), 61);
        assert_eq!(s.vouched_lag(10, 4, w), Some(50));
        assert_eq!(s.vouched_lag(60, 4, w), Some(0), "caught up");
        // A heavy peer alone is enough when it carries more than a third.
        let heavy = |p: &PublicKey| if *p == pk(9) { 2 } else { 1 };
        assert_eq!(s.vouched_lag(10, 5, heavy), Some(1_000_000 - 1 - 10));
    }
}
