//! Per-peer outbound message queue with four priority classes.
//!
//! Owns the order in which already-encoded messages leave for one peer. It
//! never drops a message silently: a full class refuses the push with a typed
//! error that hands the item back and counts the refusal, and an async sender
//! can instead wait for room ([`PeerQueue::push`]).
//!
//! Scheduling is strict priority with starvation protection. Each class keeps
//! a count of dequeues served to a *higher* class while it had items waiting.
//! When that count reaches `K` ([`QueueLimits::starvation_limit`], default
//! [`DEFAULT_STARVATION_LIMIT`]) the class is served next and its count resets.
//! So under any flood, a waiting class is served at least once every `K + 3`
//! dequeues (`K` passes, plus at most the three other classes' own protected
//! turns), and when lower classes are idle the higher ones get everything.
//!
//! The core [`PriorityQueue`] is plain data (no locks, no clock); [`PeerQueue`]
//! wraps it for tokio tasks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use std::collections::VecDeque;
use thiserror::Error;
use tokio::sync::Notify;

/// Message classes, highest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    /// Transactions and UTXO locks.
    Critical = 0,
    /// Votes and TimeProofs.
    High = 1,
    /// Blocks.
    Normal = 2,
    /// Peer discovery, heartbeats.
    Low = 3,
}

impl Priority {
    pub const COUNT: usize = 4;
    /// Highest first.
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Normal,
        Priority::Low,
    ];

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Default `K`: after 16 consecutive dequeues of higher classes while a class
/// waits, that class gets one turn. Small enough that heartbeats are not
/// delayed past their timeout behind a vote storm (16 messages is microseconds
/// on a socket), large enough that a flood of low-class items costs the
/// critical path at most ~6% of its dequeues.
pub const DEFAULT_STARVATION_LIMIT: u32 = 16;

/// Capacity of each class and the starvation limit `K`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLimits {
    /// Indexed by [`Priority::index`]. A capacity of 0 is raised to 1.
    pub capacity: [usize; Priority::COUNT],
    pub starvation_limit: u32,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            // Transactions/locks and votes come in bursts that must not be
            // refused; blocks are large and few; discovery is cheap to refuse.
            capacity: [8192, 8192, 256, 256],
            starvation_limit: DEFAULT_STARVATION_LIMIT,
        }
    }
}

/// A push that was refused. The item comes back to the caller.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushError<T> {
    #[error("{priority:?} queue full ({capacity} items)")]
    Full {
        priority: Priority,
        capacity: usize,
        item: T,
    },
    #[error("queue closed")]
    Closed { item: T },
}

impl<T> PushError<T> {
    pub fn into_item(self) -> T {
        match self {
            PushError::Full { item, .. } | PushError::Closed { item } => item,
        }
    }
}

/// Counters per class, indexed by [`Priority::index`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub pushed: [u64; Priority::COUNT],
    pub popped: [u64; Priority::COUNT],
    /// `try_push` refusals for lack of room. Each one was reported to the
    /// caller as [`PushError::Full`]; the caller decides to retry or drop.
    pub dropped: [u64; Priority::COUNT],
    /// Dequeues given to a class by starvation protection rather than rank.
    pub starvation_turns: [u64; Priority::COUNT],
}

/// The scheduling core: four bounded FIFOs.
#[derive(Debug)]
pub struct PriorityQueue<T> {
    queues: [VecDeque<T>; Priority::COUNT],
    limits: QueueLimits,
    /// Dequeues served to a higher class while this class waited.
    passed_over: [u32; Priority::COUNT],
    stats: QueueStats,
}

impl<T> PriorityQueue<T> {
    pub fn new(mut limits: QueueLimits) -> Self {
        for c in &mut limits.capacity {
            *c = (*c).max(1);
        }
        PriorityQueue {
            queues: Default::default(),
            limits,
            passed_over: [0; Priority::COUNT],
            stats: QueueStats::default(),
        }
    }

    pub fn limits(&self) -> &QueueLimits {
        &self.limits
    }

    /// Queues `item`, or hands it back in [`PushError::Full`] (counted in
    /// [`QueueStats::dropped`]).
    pub fn try_push(&mut self, priority: Priority, item: T) -> Result<(), PushError<T>> {
        let i = priority.index();
        let capacity = self.limits.capacity[i];
        if self.queues[i].len() >= capacity {
            self.stats.dropped[i] += 1;
            return Err(PushError::Full {
                priority,
                capacity,
                item,
            });
        }
        self.queues[i].push_back(item);
        self.stats.pushed[i] += 1;
        Ok(())
    }

    /// Next item by strict priority, unless a waiting class has been passed
    /// over `K` times, in which case the highest such class goes first.
    pub fn pop(&mut self) -> Option<(Priority, T)> {
        let k = self.limits.starvation_limit;
        let starved =
            (0..Priority::COUNT).find(|&i| !self.queues[i].is_empty() && self.passed_over[i] >= k);
        let top = (0..Priority::COUNT).find(|&i| !self.queues[i].is_empty())?;
        let chosen = starved.unwrap_or(top);
        if chosen != top {
            self.stats.starvation_turns[chosen] += 1;
        }
        let item = self.queues[chosen].pop_front()?;
        self.passed_over[chosen] = 0;
        for lower in chosen + 1..Priority::COUNT {
            if !self.queues[lower].is_empty() {
                self.passed_over[lower] = self.passed_over[lower].saturating_add(1);
            }
        }
        self.stats.popped[chosen] += 1;
        Some((Priority::ALL[chosen], item))
    }

    pub fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    pub fn len_of(&self, priority: Priority) -> usize {
        self.queues[priority.index()].len()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }

    pub fn is_full(&self, priority: Priority) -> bool {
        self.len_of(priority) >= self.limits.capacity[priority.index()]
    }

    pub fn stats(&self) -> &QueueStats {
        &self.stats
    }
}

#[derive(Debug)]
struct Shared<T> {
    queue: Mutex<PriorityQueue<T>>,
    closed: AtomicBool,
    /// Signalled on every push and on close.
    items: Notify,
    /// Signalled when a pop makes room in a class that was full, and on close.
    room: Notify,
}

/// A [`PriorityQueue`] shared between producer tasks and one (or more)
/// sender tasks. Cheap to clone.
#[derive(Debug)]
pub struct PeerQueue<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for PeerQueue<T> {
    fn clone(&self) -> Self {
        PeerQueue {
            shared: self.shared.clone(),
        }
    }
}

impl<T> PeerQueue<T> {
    pub fn new(limits: QueueLimits) -> Self {
        PeerQueue {
            shared: Arc::new(Shared {
                queue: Mutex::new(PriorityQueue::new(limits)),
                closed: AtomicBool::new(false),
                items: Notify::new(),
                room: Notify::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PriorityQueue<T>> {
        // A panic while holding this lock cannot leave the queue half-updated
        // in a way that matters (VecDeque ops are atomic w.r.t. panics).
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Non-blocking push; see [`PriorityQueue::try_push`].
    pub fn try_push(&self, priority: Priority, item: T) -> Result<(), PushError<T>> {
        if self.is_closed() {
            return Err(PushError::Closed { item });
        }
        self.lock().try_push(priority, item)?;
        self.shared.items.notify_one();
        Ok(())
    }

    /// Waits for room in `priority`'s class (backpressure), then pushes.
    /// Fails only if the queue is closed.
    pub async fn push(&self, priority: Priority, item: T) -> Result<(), PushError<T>> {
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.is_closed() {
                return Err(PushError::Closed { item });
            }
            {
                let mut q = self.lock();
                if !q.is_full(priority) {
                    // Cannot fail: room was checked under the same lock.
                    q.try_push(priority, item)?;
                    drop(q);
                    self.shared.items.notify_one();
                    return Ok(());
                }
            }
            room.await;
        }
    }

    /// Next item, or `None` once the queue is closed *and* drained.
    pub fn try_pop(&self) -> Option<(Priority, T)> {
        let mut q = self.lock();
        let was_full: [bool; Priority::COUNT] = Priority::ALL.map(|p| q.is_full(p));
        let out = q.pop();
        drop(q);
        if let Some((p, _)) = &out {
            if was_full[p.index()] {
                self.shared.room.notify_waiters();
            }
        }
        out
    }

    /// Waits for the next item. Returns `None` once the queue is closed and
    /// everything queued before the close has been popped.
    pub async fn pop(&self) -> Option<(Priority, T)> {
        loop {
            let items = self.shared.items.notified();
            tokio::pin!(items);
            items.as_mut().enable();
            if let Some(x) = self.try_pop() {
                return Some(x);
            }
            if self.is_closed() {
                return None;
            }
            items.await;
        }
    }

    /// Refuses further pushes and wakes every waiter. Items already queued
    /// can still be popped.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.items.notify_waiters();
        self.shared.room.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn stats(&self) -> QueueStats {
        self.lock().stats().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(cap: usize, k: u32) -> QueueLimits {
        QueueLimits {
            capacity: [cap; Priority::COUNT],
            starvation_limit: k,
        }
    }

    #[test]
    fn strict_order_between_classes_fifo_within() {
        let mut q = PriorityQueue::new(limits(100, 1000));
        q.try_push(Priority::Low, "l1").unwrap();
        q.try_push(Priority::Normal, "n1").unwrap();
        q.try_push(Priority::High, "h1").unwrap();
        q.try_push(Priority::Critical, "c1").unwrap();
        q.try_push(Priority::High, "h2").unwrap();
        q.try_push(Priority::Critical, "c2").unwrap();
        let order: Vec<_> = std::iter::from_fn(|| q.pop().map(|(_, x)| x)).collect();
        assert_eq!(order, ["c1", "c2", "h1", "h2", "n1", "l1"]);
        assert!(q.is_empty());
        assert_eq!(q.stats().starvation_turns, [0; 4]);
    }

    #[test]
    fn starvation_protection_serves_low_after_k_higher() {
        let k = 4;
        let mut q = PriorityQueue::new(limits(100, k));
        q.try_push(Priority::Low, 999).unwrap();
        for i in 0..20 {
            q.try_push(Priority::Critical, i).unwrap();
        }
        let classes: Vec<Priority> = (0..21).map(|_| q.pop().unwrap().0).collect();
        let low_at = classes.iter().position(|&p| p == Priority::Low).unwrap();
        assert_eq!(
            low_at, k as usize,
            "low must be served right after K criticals"
        );
        assert_eq!(q.stats().starvation_turns[Priority::Low.index()], 1);
        // Served exactly once; the rest are criticals in order.
        assert_eq!(classes.iter().filter(|&&p| p == Priority::Low).count(), 1);
    }

    #[test]
    fn every_waiting_class_served_within_k_plus_3() {
        let k = 5;
        let mut q = PriorityQueue::new(limits(10_000, k));
        for i in 0..2000 {
            for p in Priority::ALL {
                q.try_push(p, i).unwrap();
            }
        }
        let mut last_served = [0usize; Priority::COUNT];
        for step in 1..=4000usize {
            let (p, _) = q.pop().unwrap();
            last_served[p.index()] = step;
            for c in Priority::ALL {
                assert!(
                    step - last_served[c.index()] <= k as usize + 3,
                    "{c:?} starved at step {step}"
                );
            }
            // Keep every class non-empty.
            q.try_push(p, 0).unwrap();
        }
        // Critical still gets the lion's share.
        let popped = &q.stats().popped;
        assert!(popped[0] > popped[1] && popped[0] > 2000, "{popped:?}");
    }

    #[test]
    fn bounds_refuse_and_count_drops_per_class() {
        let mut q = PriorityQueue::new(QueueLimits {
            capacity: [2, 1, 1, 3],
            starvation_limit: 8,
        });
        q.try_push(Priority::Critical, 1).unwrap();
        q.try_push(Priority::Critical, 2).unwrap();
        let err = q.try_push(Priority::Critical, 3).unwrap_err();
        assert_eq!(
            err,
            PushError::Full {
                priority: Priority::Critical,
                capacity: 2,
                item: 3
            }
        );
        assert_eq!(err.into_item(), 3);
        q.try_push(Priority::High, 1).unwrap();
        for _ in 0..5 {
            assert!(q.try_push(Priority::High, 9).is_err());
        }
        assert_eq!(q.stats().dropped, [1, 5, 0, 0]);
        assert_eq!(q.stats().pushed, [2, 1, 0, 0]);
        // Room again after a pop.
        q.pop().unwrap();
        q.try_push(Priority::Critical, 4).unwrap();
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn zero_capacity_is_raised_to_one() {
        let mut q = PriorityQueue::new(limits(0, 1));
        q.try_push(Priority::Low, ()).unwrap();
        assert!(q.try_push(Priority::Low, ()).is_err());
    }

    #[test]
    fn high_flows_under_a_flood_of_low() {
        let k = DEFAULT_STARVATION_LIMIT;
        let mut q = PriorityQueue::new(QueueLimits::default());
        let low_cap = q.limits().capacity[Priority::Low.index()];
        let mut high_sent = 0u64;
        let mut high_got = Vec::new();
        let mut low_got = 0u64;
        // Each round: a flood of 1000 Low attempts, 10 High, then 12 pops.
        for round in 0..200u64 {
            for _ in 0..1000 {
                let _ = q.try_push(Priority::Low, u64::MAX);
            }
            for i in 0..10 {
                q.try_push(Priority::High, round * 10 + i).unwrap();
                high_sent += 1;
            }
            for _ in 0..12 {
                match q.pop() {
                    Some((Priority::High, x)) => high_got.push(x),
                    Some((Priority::Low, _)) => low_got += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        // Every High item came out, in order, none refused.
        assert_eq!(high_got.len() as u64, high_sent);
        assert!(high_got.windows(2).all(|w| w[0] < w[1]));
        let s = q.stats();
        assert_eq!(s.dropped[Priority::High.index()], 0);
        // The flood was refused loudly, not lost silently.
        assert_eq!(
            s.dropped[Priority::Low.index()] + s.pushed[Priority::Low.index()],
            200 * 1000
        );
        assert!(s.pushed[Priority::Low.index()] >= low_cap as u64);
        // Low got its protected share but no more than one per K highs + idle pops.
        assert!(low_got >= high_sent / (k as u64 + 1));
    }

    #[tokio::test]
    async fn async_pop_waits_and_close_drains() {
        let q: PeerQueue<u32> = PeerQueue::new(QueueLimits::default());
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some((p, x)) = q.pop().await {
                    got.push((p, x));
                }
                got
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        q.try_push(Priority::Normal, 1).unwrap();
        q.try_push(Priority::Critical, 2).unwrap();
        q.close();
        assert!(matches!(
            q.try_push(Priority::Critical, 3),
            Err(PushError::Closed { item: 3 })
        ));
        let got = tokio::time::timeout(Duration::from_secs(5), consumer)
            .await
            .expect("consumer stopped")
            .unwrap();
        // Both items queued before close were delivered (order depends on
        // whether the consumer woke between the two pushes).
        let mut items: Vec<u32> = got.iter().map(|&(_, x)| x).collect();
        items.sort();
        assert_eq!(items, [1, 2]);
    }

    #[tokio::test]
    async fn async_push_waits_for_room() {
        let q: PeerQueue<u32> = PeerQueue::new(QueueLimits {
            capacity: [1; 4],
            starvation_limit: 8,
        });
        q.try_push(Priority::High, 1).unwrap();
        let producer = {
            let q = q.clone();
            tokio::spawn(async move { q.push(Priority::High, 2).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!producer.is_finished(), "push must wait while full");
        assert_eq!(q.pop().await, Some((Priority::High, 1)));
        tokio::time::timeout(Duration::from_secs(5), producer)
            .await
            .expect("producer woke")
            .unwrap()
            .unwrap();
        assert_eq!(q.pop().await, Some((Priority::High, 2)));
        assert_eq!(q.stats().dropped, [0; 4]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_many_producers_one_sender() {
        let q: PeerQueue<u64> = PeerQueue::new(QueueLimits {
            capacity: [64; 4],
            starvation_limit: 4,
        });
        let mut producers = Vec::new();
        for p in Priority::ALL {
            let q = q.clone();
            producers.push(tokio::spawn(async move {
                for i in 0..2000u64 {
                    q.push(p, i).await.unwrap();
                }
            }));
        }
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut next = [0u64; 4];
                while let Some((p, x)) = q.pop().await {
                    assert_eq!(x, next[p.index()], "FIFO within {p:?}");
                    next[p.index()] += 1;
                }
                next
            })
        };
        for p in producers {
            tokio::time::timeout(Duration::from_secs(20), p)
                .await
                .unwrap()
                .unwrap();
        }
        q.close();
        let next = tokio::time::timeout(Duration::from_secs(20), consumer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(next, [2000; 4]);
    }
}
