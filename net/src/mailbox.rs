//! A bounded multi-producer, multi-consumer queue whose receivers park at
//! once when it is empty.
//!
//! Written here instead of using `crossbeam::channel` for the node's
//! thread-to-thread queues (core input, vote shards, verifier lanes,
//! received datagrams) because of how an empty queue is waited on:
//! crossbeam spins and then calls `sched_yield` several times before it
//! parks. On a 2-core host running four masternodes, every wait of every
//! thread did that, and `sched_yield` was 13% of a masternode's CPU samples
//! at 1,000 payments/s (`perf record -g`; 2026-12-02, in the git history of
//! docs/BENCHMARKS.md). Here a
//! receiver yields once and then sleeps on a condition variable (a futex),
//! and a sender only wakes a receiver when one is asleep. Crossbeam's
//! bounded channels also preallocate their capacity (80 MB per masternode
//! with 65,536-slot lanes); these grow with what is queued. Receivers take
//! many items per lock ([`Receiver::recv_many`]).
//!
//! A queue has one or more *lanes*, each bounded on its own; a receiver sees
//! all lanes and decides how to take from them ([`Receiver::recv_with`]),
//! so one consumer can serve several producers fairly.
//!
//! Disconnection is like crossbeam's: when every [`Sender`] is gone,
//! receivers drain what is left and then get `Disconnected`; when every
//! [`Receiver`] is gone, sends fail.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Why a `try_send` gave the item back.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The lane holds its capacity.
    Full(T),
    /// No receiver is left.
    Disconnected(T),
}

impl<T> TrySendError<T> {
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(t) | TrySendError::Disconnected(t) => t,
        }
    }
}

/// No receiver is left; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub struct SendError<T>(pub T);

/// Why a receive gave nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvTimeoutError {
    /// Nothing arrived in time.
    Timeout,
    /// Empty, and no sender is left.
    Disconnected,
}

struct State<T> {
    lanes: Vec<VecDeque<T>>,
    senders: usize,
    receivers: usize,
    /// Receivers asleep on `ready`; senders notify only when > 0.
    sleeping_receivers: usize,
    /// Senders asleep on `room` (blocking sends into a full lane).
    sleeping_senders: usize,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    room: Condvar,
    capacity: usize,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding the lock leaves plain queues behind, never
        // a broken invariant: keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

/// A queue of `lanes` lanes, each holding at most `capacity` items.
pub fn bounded<T>(lanes: usize, capacity: usize) -> (Sender<T>, Receiver<T>) {
    let lanes = lanes.max(1);
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            lanes: (0..lanes).map(|_| VecDeque::new()).collect(),
            senders: 1,
            receivers: 1,
            sleeping_receivers: 0,
            sleeping_senders: 0,
        }),
        ready: Condvar::new(),
        room: Condvar::new(),
        capacity: capacity.max(1),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

impl<T> Sender<T> {
    /// Queues `item` in `lane` without waiting.
    pub fn try_send(&self, lane: usize, item: T) -> Result<(), TrySendError<T>> {
        let mut st = self.shared.lock();
        if st.receivers == 0 {
            return Err(TrySendError::Disconnected(item));
        }
        let Some(q) = st.lanes.get_mut(lane) else {
            return Err(TrySendError::Disconnected(item));
        };
        if q.len() >= self.shared.capacity {
            return Err(TrySendError::Full(item));
        }
        q.push_back(item);
        let wake = st.sleeping_receivers > 0;
        drop(st);
        if wake {
            self.shared.ready.notify_one();
        }
        Ok(())
    }

    /// Queues `item` in `lane`, waiting for room while the lane is full.
    pub fn send(&self, lane: usize, item: T) -> Result<(), SendError<T>> {
        let mut st = self.shared.lock();
        loop {
            if st.receivers == 0 || lane >= st.lanes.len() {
                return Err(SendError(item));
            }
            if st.lanes[lane].len() < self.shared.capacity {
                break;
            }
            st.sleeping_senders += 1;
            st = self.shared.room.wait(st).unwrap_or_else(|e| e.into_inner());
            st.sleeping_senders -= 1;
        }
        st.lanes[lane].push_back(item);
        let wake = st.sleeping_receivers > 0;
        drop(st);
        if wake {
            self.shared.ready.notify_one();
        }
        Ok(())
    }

    /// Items waiting in `lane`.
    pub fn len(&self, lane: usize) -> usize {
        self.shared.lock().lanes.get(lane).map_or(0, VecDeque::len)
    }

    /// Whether every lane is empty.
    pub fn is_empty(&self) -> bool {
        self.shared.lock().lanes.iter().all(VecDeque::is_empty)
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.senders -= 1;
        if st.senders == 0 {
            drop(st);
            self.shared.ready.notify_all();
        }
    }
}

impl<T> Receiver<T> {
    /// Waits up to `timeout` until some lane holds an item, then lets `take`
    /// move what it wants out of the lanes (in lane order of its choosing).
    /// `Ok(n)` with the number of items taken (`take` may take none);
    /// `Timeout` if nothing arrived; `Disconnected` once empty with no
    /// sender left.
    pub fn recv_with<F>(&self, timeout: Duration, take: F) -> Result<usize, RecvTimeoutError>
    where
        F: FnOnce(&mut [VecDeque<T>]) -> usize,
    {
        let deadline = Instant::now().checked_add(timeout);
        let mut yielded = false;
        let mut st = self.shared.lock();
        loop {
            if st.lanes.iter().any(|q| !q.is_empty()) {
                let taken = take(&mut st.lanes);
                let wake_senders = st.sleeping_senders > 0 && taken > 0;
                let more = st.sleeping_receivers > 0 && st.lanes.iter().any(|q| !q.is_empty());
                drop(st);
                if wake_senders {
                    self.shared.room.notify_all();
                }
                if more {
                    // Another consumer can take what this one left.
                    self.shared.ready.notify_one();
                }
                return Ok(taken);
            }
            if st.senders == 0 {
                return Err(RecvTimeoutError::Disconnected);
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            if !yielded {
                // One `sched_yield` before parking (crossbeam makes about
                // four, after spinning): on an oversubscribed host the
                // producer often runs in that slot and the item is taken
                // without a futex sleep and wake. Measured at 1,000 TPS on
                // 2 cores: p50 finality 8.4-8.9 ms parking at once, 6.8-6.9
                // ms with this yield (crossbeam 6.6-6.9 ms), at 35-36 % CPU
                // per masternode (crossbeam 36.5-38 %). Spinning without a
                // yield was worse on both (p50 10 ms, 40 % CPU).
                yielded = true;
                drop(st);
                std::thread::yield_now();
                st = self.shared.lock();
                continue;
            }
            st.sleeping_receivers += 1;
            let (guard, _) = self
                .shared
                .ready
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner());
            st = guard;
            st.sleeping_receivers -= 1;
        }
    }

    /// Waits up to `timeout` for items and appends up to `max` of them to
    /// `out`, lane 0 first.
    pub fn recv_many(
        &self,
        out: &mut Vec<T>,
        max: usize,
        timeout: Duration,
    ) -> Result<usize, RecvTimeoutError> {
        self.recv_with(timeout, |lanes| {
            let mut n = 0;
            for q in lanes.iter_mut() {
                while n < max {
                    let Some(item) = q.pop_front() else { break };
                    out.push(item);
                    n += 1;
                }
            }
            n
        })
    }

    /// Waits up to `timeout` for one item (lane 0 first).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let mut out = Vec::with_capacity(1);
        self.recv_many(&mut out, 1, timeout)?;
        out.pop().ok_or(RecvTimeoutError::Timeout)
    }

    /// One item if there is one, without waiting.
    pub fn try_recv(&self) -> Result<T, RecvTimeoutError> {
        self.recv_timeout(Duration::ZERO)
    }

    /// Items waiting in `lane`.
    pub fn len(&self, lane: usize) -> usize {
        self.shared.lock().lanes.get(lane).map_or(0, VecDeque::len)
    }

    /// Whether every lane is empty.
    pub fn is_empty(&self) -> bool {
        self.shared.lock().lanes.iter().all(VecDeque::is_empty)
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("mailbox::Receiver")
            .field(
                "waiting",
                &st.lanes.iter().map(VecDeque::len).collect::<Vec<_>>(),
            )
            .field("senders", &st.senders)
            .finish()
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        self.shared.lock().receivers += 1;
        Receiver {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.receivers -= 1;
        if st.receivers == 0 {
            drop(st);
            self.shared.room.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_out_in_order_per_lane_and_lanes_are_bounded() {
        let (tx, rx) = bounded::<u32>(2, 3);
        for i in 0..3 {
            tx.try_send(0, i).unwrap();
        }
        assert_eq!(tx.try_send(0, 9), Err(TrySendError::Full(9)));
        tx.try_send(1, 100).unwrap();
        assert_eq!(tx.len(0), 3);
        let mut out = Vec::new();
        assert_eq!(rx.recv_many(&mut out, 10, Duration::ZERO), Ok(4));
        assert_eq!(out, vec![0, 1, 2, 100]);
        assert_eq!(
            rx.try_recv(),
            Err(RecvTimeoutError::Timeout),
            "empty, senders alive"
        );
    }

    #[test]
    fn a_parked_receiver_wakes_for_an_item_from_another_thread() {
        let (tx, rx) = bounded::<u32>(1, 16);
        let h = std::thread::spawn(move || rx.recv_timeout(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        tx.try_send(0, 7).unwrap();
        assert_eq!(h.join().unwrap(), Ok(7));
    }

    #[test]
    fn dropping_every_sender_disconnects_after_the_queue_drains() {
        let (tx, rx) = bounded::<u32>(1, 16);
        let tx2 = tx.clone();
        tx.try_send(0, 1).unwrap();
        drop(tx);
        drop(tx2);
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)), Ok(1));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(1)),
            Err(RecvTimeoutError::Disconnected)
        );
        // A receiver parked when the last sender goes is woken.
        let (tx, rx) = bounded::<u32>(1, 16);
        let h = std::thread::spawn(move || rx.recv_timeout(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(50));
        drop(tx);
        assert_eq!(h.join().unwrap(), Err(RecvTimeoutError::Disconnected));
    }

    #[test]
    fn dropping_every_receiver_fails_sends_and_wakes_blocked_senders() {
        let (tx, rx) = bounded::<u32>(1, 1);
        tx.try_send(0, 1).unwrap();
        let tx2 = tx.clone();
        let h = std::thread::spawn(move || tx2.send(0, 2));
        std::thread::sleep(Duration::from_millis(50));
        drop(rx);
        assert_eq!(h.join().unwrap(), Err(SendError(2)));
        assert_eq!(tx.try_send(0, 3), Err(TrySendError::Disconnected(3)));
    }

    #[test]
    fn a_blocking_send_waits_for_room() {
        let (tx, rx) = bounded::<u32>(1, 1);
        tx.try_send(0, 1).unwrap();
        let h = std::thread::spawn(move || tx.send(0, 2));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)), Ok(1));
        assert_eq!(h.join().unwrap(), Ok(()));
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)), Ok(2));
    }

    #[test]
    fn many_producers_and_consumers_lose_and_duplicate_nothing() {
        let (tx, rx) = bounded::<u64>(2, 64);
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        tx.send((p % 2) as usize, p * 1_000_000 + i).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let consumers: Vec<_> = (0..3)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        match rx.recv_many(&mut got, 100, Duration::from_secs(10)) {
                            Ok(_) => {}
                            Err(RecvTimeoutError::Disconnected) => return got,
                            Err(RecvTimeoutError::Timeout) => panic!("stalled"),
                        }
                    }
                })
            })
            .collect();
        drop(rx);
        for p in producers {
            p.join().unwrap();
        }
        let mut all: Vec<u64> = consumers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        all.sort_unstable();
        let mut want: Vec<u64> = (0..4u64)
            .flat_map(|p| (0..10_000u64).map(move |i| p * 1_000_000 + i))
            .collect();
        want.sort_unstable();
        assert_eq!(all, want);
    }
}
