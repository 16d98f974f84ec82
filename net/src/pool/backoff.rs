//! Reconnect delays: exponential backoff with jitter.
//!
//! Plain data; the caller passes the random source in, so a test (or a
//! simulator) can replay the exact delays from a seed.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// Cap on the delay (before jitter).
    pub max: Duration,
    /// A connection that lived at least this long resets the backoff; a peer
    /// that accepts and drops at once keeps escalating it.
    pub stable_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(50),
            // Short: only the lower key dials, so a restarted peer with the
            // higher key waits for this delay before it is linked again (and
            // can catch up). A registry's handful of dials per second to a
            // down peer costs nothing.
            max: Duration::from_secs(1),
            stable_after: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Backoff {
    cfg: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    pub fn new(cfg: BackoffConfig) -> Self {
        Backoff { cfg, attempt: 0 }
    }

    /// The next delay: `min(max, initial * 2^attempt)`, then "equal jitter"
    /// (uniform in `[d/2, d]`), so peers that lost each other at the same
    /// moment do not redial in lock step, and no delay collapses to zero.
    pub fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Duration {
        let exp = self.attempt.min(30);
        self.attempt = self.attempt.saturating_add(1);
        let d = self
            .cfg
            .initial
            .saturating_mul(1u32 << exp)
            .min(self.cfg.max)
            .max(Duration::from_millis(1));
        let half = d / 2;
        half + half.mul_f64(rng.gen::<f64>())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Resets if a connection that lasted `lived` counts as stable.
    pub fn connection_ended(&mut self, lived: Duration) {
        if lived >= self.cfg.stable_after {
            self.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let cfg = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            stable_after: Duration::from_secs(1),
        };
        let mut b = Backoff::new(cfg);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay(&mut rng)).collect();
        for (i, d) in delays.iter().enumerate() {
            let nominal = (cfg.initial * (1 << i)).min(cfg.max);
            assert!(*d >= nominal / 2 && *d <= nominal, "{i}: {d:?}");
        }
        assert!(delays[7] >= Duration::from_secs(1));
        b.connection_ended(Duration::from_millis(10));
        assert!(b.next_delay(&mut rng) >= Duration::from_secs(1));
        b.connection_ended(Duration::from_secs(3));
        assert!(b.next_delay(&mut rng) <= Duration::from_millis(100));
    }
}
