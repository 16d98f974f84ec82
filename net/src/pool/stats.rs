//! Counters of one peer link (kept across reconnections) and their snapshot.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::priority::{Priority, QueueStats};

const NO_RTT: u64 = u64::MAX;

/// A snapshot of one peer link. Counters cover the life of the pool, across
/// reconnections; arrays are indexed by [`Priority::index`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStats {
    pub connected: bool,
    /// Connections established (dialed or accepted).
    pub connects: u64,
    /// Connections established after the first.
    pub reconnects: u64,
    pub disconnects: u64,
    /// Dial attempts that failed (unreachable, timeout, refused, wrong key).
    pub dial_failures: u64,
    /// Frame bytes written / read, length prefixes included.
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Writes to the transport (one per flushed batch): `frames_out` summed
    /// over `writes` is the batching factor.
    pub writes: u64,
    /// Data frames written / delivered, per class.
    pub frames_out: [u64; Priority::COUNT],
    pub frames_in: [u64; Priority::COUNT],
    /// `send` refusals because the class queue was full (each reported to
    /// the caller as [`super::SendError::QueueFull`]).
    pub refused: [u64; Priority::COUNT],
    /// Messages *from* this peer that never arrived: seen as a jump in its
    /// sequence numbers (a connection died with them in flight).
    pub lost_in_flight: [u64; Priority::COUNT],
    /// Messages queued to this peer and not yet written.
    pub queued: usize,
    pub compressed_out: u64,
    pub compressed_in: u64,
    pub pings_sent: u64,
    pub pongs_received: u64,
    /// Round trip of the last answered ping, and the smallest seen.
    pub rtt: Option<Duration>,
    pub rtt_min: Option<Duration>,
    /// Outbound queue counters (pushed/popped/dropped per class).
    pub queue: QueueStats,
}

impl PeerStats {
    /// Everything lost or refused on this link, per class: refusals at our
    /// sender plus messages from the peer lost in flight.
    pub fn drops(&self) -> [u64; Priority::COUNT] {
        std::array::from_fn(|i| self.refused[i] + self.lost_in_flight[i])
    }
}

#[derive(Debug)]
pub(crate) struct LinkStats {
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    pub disconnects: AtomicU64,
    pub dial_failures: AtomicU64,
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub writes: AtomicU64,
    pub frames_out: [AtomicU64; Priority::COUNT],
    pub frames_in: [AtomicU64; Priority::COUNT],
    pub lost_in_flight: [AtomicU64; Priority::COUNT],
    pub compressed_out: AtomicU64,
    pub compressed_in: AtomicU64,
    pub pings_sent: AtomicU64,
    pub pongs_received: AtomicU64,
    rtt_us: AtomicU64,
    rtt_min_us: AtomicU64,
}

impl Default for LinkStats {
    fn default() -> Self {
        LinkStats {
            connected: AtomicBool::new(false),
            connects: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            dial_failures: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            frames_out: Default::default(),
            frames_in: Default::default(),
            lost_in_flight: Default::default(),
            compressed_out: AtomicU64::new(0),
            compressed_in: AtomicU64::new(0),
            pings_sent: AtomicU64::new(0),
            pongs_received: AtomicU64::new(0),
            rtt_us: AtomicU64::new(NO_RTT),
            rtt_min_us: AtomicU64::new(NO_RTT),
        }
    }
}

fn rtt_of(us: u64) -> Option<Duration> {
    (us != NO_RTT).then(|| Duration::from_micros(us))
}

impl LinkStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn record_rtt(&self, rtt: Duration) {
        let us = (rtt.as_micros() as u64).min(NO_RTT - 1);
        self.rtt_us.store(us, Relaxed);
        self.rtt_min_us.fetch_min(us, Relaxed);
        self.pongs_received.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self, queue: QueueStats, queued: usize) -> PeerStats {
        let load = |a: &[AtomicU64; Priority::COUNT]| -> [u64; Priority::COUNT] {
            std::array::from_fn(|i| a[i].load(Relaxed))
        };
        let connects = self.connects.load(Relaxed);
        PeerStats {
            connected: self.connected.load(Relaxed),
            connects,
            reconnects: connects.saturating_sub(1),
            disconnects: self.disconnects.load(Relaxed),
            dial_failures: self.dial_failures.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            writes: self.writes.load(Relaxed),
            frames_out: load(&self.frames_out),
            frames_in: load(&self.frames_in),
            refused: queue.dropped,
            lost_in_flight: load(&self.lost_in_flight),
            queued,
            compressed_out: self.compressed_out.load(Relaxed),
            compressed_in: self.compressed_in.load(Relaxed),
            pings_sent: self.pings_sent.load(Relaxed),
            pongs_received: self.pongs_received.load(Relaxed),
            rtt: rtt_of(self.rtt_us.load(Relaxed)),
            rtt_min: rtt_of(self.rtt_min_us.load(Relaxed)),
            queue,
        }
    }
}

/// Pool-wide counters of what never became a peer link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Inbound or outbound handshakes that failed authentication or timed out
    /// (unknown key, wrong key for the address, bad signature, garbage).
    pub handshake_failures: u64,
    /// Authenticated inbound connections refused by the dial-direction rule
    /// (the peer's key is higher than ours, so we are the one who dials).
    pub refused_direction: u64,
    /// Messages read from a peer after the [`super::Inbox`] was dropped or
    /// the pool stopped.
    pub undeliverable: u64,
    /// Messages held back on the reading side because the application's
    /// pacing ([`super::PoolConfig::intake_pacing`]) said the peer is over
    /// its rate: the peer's stream (QUIC) or connection (TCP) paused.
    pub paced: u64,
    /// Total time readers paused for pacing, in milliseconds.
    pub paced_ms: u64,
}

#[derive(Debug, Default)]
pub(crate) struct PoolCounters {
    pub handshake_failures: AtomicU64,
    pub refused_direction: AtomicU64,
    pub undeliverable: AtomicU64,
    pub paced: AtomicU64,
    pub paced_ms: AtomicU64,
}

impl PoolCounters {
    pub(crate) fn snapshot(&self) -> PoolStats {
        PoolStats {
            handshake_failures: self.handshake_failures.load(Relaxed),
            refused_direction: self.refused_direction.load(Relaxed),
            undeliverable: self.undeliverable.load(Relaxed),
            paced: self.paced.load(Relaxed),
            paced_ms: self.paced_ms.load(Relaxed),
        }
    }
}
