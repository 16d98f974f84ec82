//! Per-sender sequence tracking for the lossy fast path.
//!
//! Every fast-path datagram carries its sender's sequence number. This module
//! owns the answer to "have I seen this one, and what am I missing?": it
//! classifies each arrival, remembers holes, lists the holes old enough to be
//! requested over the reliable path ([`GapTracker::missing`]) and reports the
//! ones that stay unrepaired too long, or fall out of the window, as lost
//! ([`GapTracker::take_lost`]). Nothing is forgotten without a report or a
//! counter.
//!
//! Pure: no clock, no I/O. Time comes in as milliseconds from any monotonic
//! origin the caller chooses.
//!
//! Memory per sender is bounded by the window: a bitmap of `window` bits and
//! at most `window / 2 + 1` hole ranges. The number of senders is capped too
//! ([`GapConfig::max_senders`]); callers feed only authenticated senders.

use std::collections::{BTreeMap, VecDeque};

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapConfig {
    /// Sequences tracked behind the highest seen, rounded up to a power of
    /// two within 64..=65536.
    pub window: u64,
    /// A hole younger than this is not yet requested: it is most likely
    /// reordering, not loss.
    pub repair_delay_ms: u64,
    /// A hole older than this is reported lost and no longer requested.
    pub give_up_ms: u64,
    pub max_senders: usize,
    /// Lost reports kept until [`GapTracker::take_lost`]; beyond this they are
    /// only counted ([`GapStats::lost_reports_overflowed`]).
    pub max_lost_reports: usize,
}

impl Default for GapConfig {
    fn default() -> Self {
        GapConfig {
            window: 4096,
            repair_delay_ms: 20,
            give_up_ms: 10_000,
            max_senders: 4096,
            max_lost_reports: 4096,
        }
    }
}

/// An inclusive range of sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqRange {
    pub first: u64,
    pub last: u64,
}

impl SeqRange {
    pub fn new(first: u64, last: u64) -> Self {
        debug_assert!(first <= last);
        SeqRange { first, last }
    }

    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.first <= seq && seq <= self.last
    }
}

/// How an arrival was classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// The next expected sequence (or the first ever seen from this sender).
    New,
    /// New, but ahead of the next expected: `missing` became a hole.
    NewWithGap {
        missing: SeqRange,
    },
    /// First arrival of a sequence below the highest seen (a hole filled,
    /// by reordering or by repair).
    Filled,
    Duplicate,
    /// Below the window, or `u64::MAX` (never a valid sequence): cannot be
    /// classified. Treat as already handled.
    Stale,
    /// New, but more than `window` past the next expected: the sender
    /// restarted (its sequences start from its clock) or this receiver heard
    /// nothing from it for longer than the window. The stream starts again
    /// here; the `skipped` sequences are not tracked as holes (no repair
    /// ring holds that many) and not counted as lost. What they carried is
    /// recovered above the transport (the masternode's catch-up).
    Resynced {
        skipped: u64,
    },
}

impl Receipt {
    /// Whether the payload is new and should be processed.
    pub fn is_new(&self) -> bool {
        matches!(
            self,
            Receipt::New | Receipt::NewWithGap { .. } | Receipt::Filled | Receipt::Resynced { .. }
        )
    }
}

/// A hole old enough to request on the reliable path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingRange<S> {
    pub sender: S,
    pub range: SeqRange,
    pub detected_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// Still missing `give_up_ms` after it was detected.
    Unrepaired,
    /// The sender moved more than `window` past it.
    OutOfWindow,
    /// The sender was removed with [`GapTracker::forget`].
    SenderForgotten,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LostRange<S> {
    pub sender: S,
    pub range: SeqRange,
    pub reason: LostReason,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GapError {
    #[error("already tracking the maximum of {max} senders")]
    TooManySenders { max: usize },
}

/// Counters per sender. Sequence counts, not range counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderStats {
    pub new: u64,
    pub filled: u64,
    pub duplicates: u64,
    pub stale: u64,
    pub gap_seqs: u64,
    pub lost_seqs: u64,
    /// Filled after having been reported lost.
    pub late_after_lost: u64,
    /// Times the stream jumped past the window and started again.
    pub resyncs: u64,
    /// Sequences jumped over by those resyncs (not counted as lost).
    pub skipped_seqs: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GapStats {
    pub senders: usize,
    pub pending_ranges: usize,
    /// Lost reports that found the report queue full. Their sequences are
    /// still counted in each sender's `lost_seqs`.
    pub lost_reports_overflowed: u64,
}

#[derive(Debug, Clone, Copy)]
struct PendingGap {
    range: SeqRange,
    detected_ms: u64,
    /// Not listed by [`GapTracker::missing`] before this time: a hole is
    /// asked for after `repair_delay_ms`, then again with doubling intervals
    /// (so a peer that cannot answer is not asked 50 times a second).
    next_ask_ms: u64,
    asks: u32,
}

#[derive(Debug)]
struct SenderState {
    /// Every sequence below `next` is either seen or a hole (or below the window).
    next: u64,
    /// The first `next`: sequences below it were never expected, so their
    /// absence from `gaps` does not mean they were reported lost.
    baseline: u64,
    /// Bit `seq % window` for seqs in `[next - window, next)`.
    seen: Vec<u64>,
    /// Sorted, disjoint, all within the window.
    gaps: VecDeque<PendingGap>,
    stats: SenderStats,
}

impl SenderState {
    fn new(next: u64, window: u64) -> Self {
        SenderState {
            next,
            baseline: next,
            seen: vec![0; (window / 64) as usize],
            gaps: VecDeque::new(),
            stats: SenderStats::default(),
        }
    }

    fn slot(seq: u64, window: u64) -> (usize, u64) {
        let bit = seq & (window - 1);
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    fn is_seen(&self, seq: u64, window: u64) -> bool {
        let (w, m) = Self::slot(seq, window);
        self.seen[w] & m != 0
    }

    fn set_seen(&mut self, seq: u64, window: u64, on: bool) {
        let (w, m) = Self::slot(seq, window);
        if on {
            self.seen[w] |= m;
        } else {
            self.seen[w] &= !m;
        }
    }
}

/// Sequence tracking for many senders.
#[derive(Debug)]
pub struct GapTracker<S = u32> {
    config: GapConfig,
    // BTreeMap, not HashMap: `missing` and `take_lost` come out in a
    // deterministic order, so a simulation replays exactly.
    senders: BTreeMap<S, SenderState>,
    lost: Vec<LostRange<S>>,
    lost_reports_overflowed: u64,
}

impl<S: Ord + Copy> GapTracker<S> {
    pub fn new(mut config: GapConfig) -> Self {
        config.window = config.window.clamp(64, 1 << 16).next_power_of_two();
        GapTracker {
            config,
            senders: BTreeMap::new(),
            lost: Vec::new(),
            lost_reports_overflowed: 0,
        }
    }

    pub fn config(&self) -> &GapConfig {
        &self.config
    }

    /// Declares that `sender`'s stream starts at `first_seq`, so that losses
    /// before its first arrival are detected. Without this, the first arrival
    /// from a sender sets the baseline. Resets any state for `sender`,
    /// reporting its open holes as lost.
    pub fn expect_from(&mut self, sender: S, first_seq: u64) -> Result<(), GapError> {
        self.forget(sender);
        self.check_room()?;
        self.senders
            .insert(sender, SenderState::new(first_seq, self.config.window));
        Ok(())
    }

    fn check_room(&self) -> Result<(), GapError> {
        if self.senders.len() >= self.config.max_senders {
            return Err(GapError::TooManySenders {
                max: self.config.max_senders,
            });
        }
        Ok(())
    }

    /// Classifies one arrival.
    pub fn receive(&mut self, sender: S, seq: u64, now_ms: u64) -> Result<Receipt, GapError> {
        let window = self.config.window;
        if seq == u64::MAX {
            // Checked before any state exists, so it cannot set a baseline.
            if let Some(st) = self.senders.get_mut(&sender) {
                st.stats.stale += 1;
            }
            return Ok(Receipt::Stale);
        }
        if !self.senders.contains_key(&sender) {
            self.check_room()?;
            self.senders.insert(sender, SenderState::new(seq, window));
        }
        let Some(st) = self.senders.get_mut(&sender) else {
            return Err(GapError::TooManySenders {
                max: self.config.max_senders,
            });
        };
        let floor = st.next.saturating_sub(window);
        if seq < floor {
            st.stats.stale += 1;
            return Ok(Receipt::Stale);
        }
        if seq < st.next {
            if st.is_seen(seq, window) {
                st.stats.duplicates += 1;
                return Ok(Receipt::Duplicate);
            }
            st.set_seen(seq, window, true);
            st.stats.filled += 1;
            if !remove_from_gaps(&mut st.gaps, seq) && seq >= st.baseline {
                st.stats.late_after_lost += 1;
            }
            return Ok(Receipt::Filled);
        }

        if seq - st.next > window {
            // A jump past the window: a restarted sender, or a long silence.
            // Holes still tracked are lost (reported); the jump itself is a
            // resync, not millions of lost datagrams.
            let skipped = seq - st.next;
            let stats = std::mem::take(&mut st.stats);
            let old = std::mem::replace(st, SenderState::new(seq + 1, window));
            st.stats = stats;
            st.stats.resyncs += 1;
            st.stats.skipped_seqs += skipped;
            st.stats.new += 1;
            st.set_seen(seq, window, true);
            for g in old.gaps {
                self.report_lost(sender, g.range, LostReason::OutOfWindow);
            }
            return Ok(Receipt::Resynced { skipped });
        }
        // seq >= next: advance the window to end at seq.
        let new_next = seq + 1;
        let new_floor = new_next.saturating_sub(window);
        let mut lost_now: Vec<SeqRange> = Vec::new();
        // Holes that fall below the new floor are lost.
        while let Some(g) = st.gaps.front_mut() {
            if g.range.first >= new_floor {
                break;
            }
            if g.range.last < new_floor {
                lost_now.push(g.range);
                st.gaps.pop_front();
            } else {
                lost_now.push(SeqRange::new(g.range.first, new_floor - 1));
                g.range.first = new_floor;
                break;
            }
        }
        // Slots for [next, seq] are reused: clear them (at most `window`).
        let span = new_next - st.next;
        if span >= window {
            st.seen.iter_mut().for_each(|w| *w = 0);
        } else {
            for s in st.next..new_next {
                st.set_seen(s, window, false);
            }
        }
        let receipt = if seq > st.next {
            let missing = SeqRange::new(st.next, seq - 1);
            st.stats.gap_seqs += missing.len();
            if missing.first < new_floor {
                lost_now.push(SeqRange::new(missing.first, new_floor - 1));
            }
            let tracked_first = missing.first.max(new_floor);
            if tracked_first <= missing.last {
                st.gaps.push_back(PendingGap {
                    range: SeqRange::new(tracked_first, missing.last),
                    detected_ms: now_ms,
                    next_ask_ms: now_ms + self.config.repair_delay_ms,
                    asks: 0,
                });
            }
            Receipt::NewWithGap { missing }
        } else {
            Receipt::New
        };
        st.set_seen(seq, window, true);
        st.next = new_next;
        st.stats.new += 1;
        for range in lost_now {
            self.report_lost(sender, range, LostReason::OutOfWindow);
        }
        Ok(receipt)
    }

    fn report_lost(&mut self, sender: S, range: SeqRange, reason: LostReason) {
        if let Some(st) = self.senders.get_mut(&sender) {
            st.stats.lost_seqs += range.len();
        }
        if self.lost.len() < self.config.max_lost_reports {
            self.lost.push(LostRange {
                sender,
                range,
                reason,
            });
        } else {
            self.lost_reports_overflowed += 1;
        }
    }

    /// Holes due for a repair request: first `repair_delay_ms` after they
    /// were detected, then again after 2x, 4x, ... that delay (capped at
    /// 64x) until filled. Holes older than `give_up_ms` are moved to the
    /// lost reports instead.
    pub fn missing(&mut self, now_ms: u64) -> Vec<MissingRange<S>> {
        let mut out = Vec::new();
        let mut expired: Vec<(S, SeqRange)> = Vec::new();
        let (delay, give_up) = (self.config.repair_delay_ms, self.config.give_up_ms);
        for (&sender, st) in self.senders.iter_mut() {
            st.gaps.retain_mut(|g| {
                let age = now_ms.saturating_sub(g.detected_ms);
                if age >= give_up {
                    expired.push((sender, g.range));
                    false
                } else {
                    if now_ms >= g.next_ask_ms {
                        g.asks = g.asks.saturating_add(1);
                        g.next_ask_ms = now_ms + delay.max(1) * (1u64 << g.asks.min(6));
                        out.push(MissingRange {
                            sender,
                            range: g.range,
                            detected_ms: g.detected_ms,
                        });
                    }
                    true
                }
            });
        }
        for (sender, range) in expired {
            self.report_lost(sender, range, LostReason::Unrepaired);
        }
        out
    }

    /// Drains the lost reports accumulated since the last call.
    pub fn take_lost(&mut self) -> Vec<LostRange<S>> {
        std::mem::take(&mut self.lost)
    }

    /// Stops tracking `sender`; its open holes are reported lost.
    pub fn forget(&mut self, sender: S) -> Option<SenderStats> {
        let st = self.senders.remove(&sender)?;
        let mut stats = st.stats;
        for g in st.gaps {
            stats.lost_seqs += g.range.len();
            if self.lost.len() < self.config.max_lost_reports {
                self.lost.push(LostRange {
                    sender,
                    range: g.range,
                    reason: LostReason::SenderForgotten,
                });
            } else {
                self.lost_reports_overflowed += 1;
            }
        }
        Some(stats)
    }

    pub fn sender_stats(&self, sender: S) -> Option<&SenderStats> {
        self.senders.get(&sender).map(|s| &s.stats)
    }

    /// Whether any sender has a hole not yet filled or given up (a receiver
    /// with none has nothing to repair and can sleep).
    pub fn has_gaps(&self) -> bool {
        self.senders.values().any(|s| !s.gaps.is_empty())
    }

    /// The next sequence expected from `sender`.
    pub fn next_expected(&self, sender: S) -> Option<u64> {
        self.senders.get(&sender).map(|s| s.next)
    }

    pub fn stats(&self) -> GapStats {
        GapStats {
            senders: self.senders.len(),
            pending_ranges: self.senders.values().map(|s| s.gaps.len()).sum(),
            lost_reports_overflowed: self.lost_reports_overflowed,
        }
    }
}

/// Removes `seq` from the sorted hole list, splitting a range if needed.
/// Returns false if no hole held it.
fn remove_from_gaps(gaps: &mut VecDeque<PendingGap>, seq: u64) -> bool {
    let i = gaps.partition_point(|g| g.range.last < seq);
    let Some(g) = gaps.get_mut(i) else {
        return false;
    };
    if !g.range.contains(seq) {
        return false;
    }
    let r = g.range;
    match (r.first == seq, r.last == seq) {
        (true, true) => {
            gaps.remove(i);
        }
        (true, false) => g.range.first = seq + 1,
        (false, true) => g.range.last = seq - 1,
        (false, false) => {
            g.range.last = seq - 1;
            let (detected_ms, next_ask_ms, asks) = (g.detected_ms, g.next_ask_ms, g.asks);
            gaps.insert(
                i + 1,
                PendingGap {
                    range: SeqRange::new(seq + 1, r.last),
                    detected_ms,
                    next_ask_ms,
                    asks,
                },
            );
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tracker() -> GapTracker<u32> {
        GapTracker::new(GapConfig {
            window: 64,
            repair_delay_ms: 10,
            give_up_ms: 100,
            max_senders: 4,
            max_lost_reports: 100,
        })
    }

    #[test]
    fn in_order_duplicates_and_first_baseline() {
        let mut t = tracker();
        assert_eq!(t.receive(1, 100, 0), Ok(Receipt::New));
        assert_eq!(t.receive(1, 101, 0), Ok(Receipt::New));
        assert_eq!(t.receive(1, 101, 0), Ok(Receipt::Duplicate));
        assert_eq!(t.receive(1, 100, 0), Ok(Receipt::Duplicate));
        // Below the baseline but within the window: never seen, so Filled.
        assert_eq!(t.receive(1, 99, 0), Ok(Receipt::Filled));
        assert_eq!(t.next_expected(1), Some(102));
        assert!(t.missing(1_000).is_empty());
        let s = t.sender_stats(1).unwrap();
        assert_eq!((s.new, s.duplicates, s.filled), (2, 2, 1));
        assert_eq!(s.late_after_lost, 0);
    }

    #[test]
    fn gap_detected_then_filled_by_repair() {
        let mut t = tracker();
        t.receive(7, 0, 0).unwrap();
        assert_eq!(
            t.receive(7, 5, 3),
            Ok(Receipt::NewWithGap {
                missing: SeqRange::new(1, 4)
            })
        );
        // Too young to request.
        assert!(t.missing(12).is_empty());
        let m = t.missing(13);
        assert_eq!(
            m,
            [MissingRange {
                sender: 7,
                range: SeqRange::new(1, 4),
                detected_ms: 3
            }]
        );
        assert_eq!(t.receive(7, 3, 14), Ok(Receipt::Filled));
        assert_eq!(t.receive(7, 3, 14), Ok(Receipt::Duplicate));
        // Asked at 13: asked again only after the backoff (2x the delay).
        assert!(t.missing(15).is_empty());
        let ranges: Vec<_> = t.missing(33).into_iter().map(|m| m.range).collect();
        assert_eq!(ranges, [SeqRange::new(1, 2), SeqRange::new(4, 4)]);
        // Then after 4x.
        assert!(t.missing(60).is_empty());
        assert_eq!(t.missing(73).len(), 2);
        for s in [1, 2, 4] {
            assert_eq!(t.receive(7, s, 74), Ok(Receipt::Filled));
        }
        assert!(t.missing(200).is_empty());
        assert!(t.take_lost().is_empty());
        assert_eq!(t.stats().pending_ranges, 0);
    }

    #[test]
    fn unrepaired_gaps_are_reported_lost_not_forgotten() {
        let mut t = tracker();
        t.receive(1, 0, 0).unwrap();
        t.receive(1, 3, 0).unwrap();
        assert_eq!(t.missing(99).len(), 1);
        assert!(t.missing(100).is_empty());
        assert_eq!(
            t.take_lost(),
            [LostRange {
                sender: 1,
                range: SeqRange::new(1, 2),
                reason: LostReason::Unrepaired
            }]
        );
        assert_eq!(t.sender_stats(1).unwrap().lost_seqs, 2);
        // A late arrival is still new data, and counted as late.
        assert_eq!(t.receive(1, 2, 200), Ok(Receipt::Filled));
        assert_eq!(t.sender_stats(1).unwrap().late_after_lost, 1);
    }

    #[test]
    fn window_bounds_memory_and_reports_what_falls_out() {
        let mut t = tracker(); // window 64
        t.receive(1, 0, 0).unwrap();
        t.receive(1, 10, 0).unwrap(); // hole 1..=9
        t.receive(1, 50, 0).unwrap(); // hole 11..=49
                                      // Ahead within the window: the old holes that leave it are lost.
        assert_eq!(
            t.receive(1, 100, 1),
            Ok(Receipt::NewWithGap {
                missing: SeqRange::new(51, 99)
            })
        );
        let lost = t.take_lost();
        assert_eq!(
            lost.iter().map(|l| l.range).collect::<Vec<_>>(),
            [SeqRange::new(1, 9), SeqRange::new(11, 36)]
        );
        assert!(lost.iter().all(|l| l.reason == LostReason::OutOfWindow));
        // What is tracked is exactly the window below 100.
        let m = t.missing(50);
        assert_eq!(
            m.iter().map(|m| m.range).collect::<Vec<_>>(),
            [SeqRange::new(37, 49), SeqRange::new(51, 99)]
        );
        assert_eq!(t.receive(1, 36, 50), Ok(Receipt::Stale));
        assert_eq!(t.receive(1, 37, 50), Ok(Receipt::Filled));
        let s = t.sender_stats(1).unwrap();
        assert_eq!(s.gap_seqs, 9 + 39 + 49);
        assert_eq!(s.lost_seqs, 9 + 26);
    }

    #[test]
    fn a_jump_past_the_window_is_a_resync_not_a_loss() {
        let mut t = tracker(); // window 64
        t.receive(1, 0, 0).unwrap();
        t.receive(1, 10, 0).unwrap(); // hole 1..=9
                                      // A restarted sender: its sequences start from its clock.
        assert_eq!(
            t.receive(1, 5_000_000, 1),
            Ok(Receipt::Resynced { skipped: 4_999_989 })
        );
        // The real hole is reported; the jump is not.
        let lost = t.take_lost();
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].range, SeqRange::new(1, 9));
        assert!(t.missing(100).is_empty());
        assert_eq!(t.receive(1, 5_000_001, 2), Ok(Receipt::New));
        assert_eq!(t.receive(1, 5_000_000, 2), Ok(Receipt::Duplicate));
        let s = t.sender_stats(1).unwrap();
        assert_eq!(s.lost_seqs, 9);
        assert_eq!(s.resyncs, 1);
        assert_eq!(s.skipped_seqs, 4_999_989);
        // Losses after the resync are tracked again.
        assert_eq!(
            t.receive(1, 5_000_004, 3),
            Ok(Receipt::NewWithGap {
                missing: SeqRange::new(5_000_002, 5_000_003)
            })
        );
    }

    #[test]
    fn explicit_start_detects_loss_before_first_arrival() {
        let mut t = tracker();
        t.expect_from(2, 0).unwrap();
        assert_eq!(
            t.receive(2, 2, 0),
            Ok(Receipt::NewWithGap {
                missing: SeqRange::new(0, 1)
            })
        );
    }

    #[test]
    fn sender_cap_and_forget() {
        let mut t = tracker();
        for s in 0..4 {
            t.receive(s, 0, 0).unwrap();
        }
        assert_eq!(t.receive(9, 0, 0), Err(GapError::TooManySenders { max: 4 }));
        t.receive(0, 5, 0).unwrap();
        let stats = t.forget(0).unwrap();
        assert_eq!(stats.lost_seqs, 4);
        assert_eq!(t.take_lost()[0].reason, LostReason::SenderForgotten);
        t.receive(9, 0, 0).unwrap();
    }

    #[test]
    fn lost_report_overflow_is_counted() {
        let mut t = GapTracker::new(GapConfig {
            window: 64,
            max_lost_reports: 2,
            ..GapConfig::default()
        });
        t.receive(1u32, 0, 0).unwrap();
        for i in 0..5u64 {
            // A hole at 200i + 3, then the next jump pushes it out.
            t.receive(1, 2 + i * 200, 0).unwrap();
            t.receive(1, 4 + i * 200, 0).unwrap();
        }
        assert_eq!(t.take_lost().len(), 2);
        assert!(t.stats().lost_reports_overflowed > 0);
    }

    #[test]
    fn max_sequence_is_stale() {
        let mut t = tracker();
        t.receive(1, u64::MAX - 1, 0).unwrap();
        assert_eq!(t.receive(1, u64::MAX, 0), Ok(Receipt::Stale));
        // Nor can it become a new sender's baseline.
        assert_eq!(t.receive(2, u64::MAX, 0), Ok(Receipt::Stale));
        assert_eq!(t.next_expected(2), None);
    }

    proptest! {
        // Against a model: any arrival order of 0..n, with duplicates, must
        // classify each first arrival as new and each repeat as duplicate,
        // and end with no holes and no loss when everything arrived.
        #[test]
        fn matches_a_set_model(
            order in prop::collection::vec(0u64..200, 1..600),
        ) {
            let mut t = GapTracker::new(GapConfig { window: 256, ..GapConfig::default() });
            t.expect_from(0u32, 0).unwrap();
            let mut seen = std::collections::BTreeSet::new();
            for (now, &s) in order.iter().enumerate() {
                let r = t.receive(0, s, now as u64).unwrap();
                prop_assert_eq!(r.is_new(), seen.insert(s), "seq {} -> {:?}", s, r);
            }
            let max = *seen.iter().max().unwrap();
            let expected_missing: Vec<u64> = (0..=max).filter(|s| !seen.contains(s)).collect();
            // Every hole is old enough to request, none old enough to give up.
            let got: Vec<u64> = t
                .missing(order.len() as u64 + 20)
                .iter()
                .flat_map(|m| m.range.first..=m.range.last)
                .collect();
            prop_assert!(t.take_lost().is_empty());
            let all = got;
            prop_assert_eq!(all, expected_missing);
        }
    }
}
