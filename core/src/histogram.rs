//! A fixed-bucket histogram a state machine keeps where it measures (vote
//! collection time, block commit time, rounds per block), with the bucket
//! bounds in the type so the stats structs holding one keep their derived
//! `Default`. Pure counting: the node's exporter reads it as a Prometheus
//! histogram; nothing here knows about Prometheus.

use std::marker::PhantomData;

/// Upper bounds of a histogram's buckets, ascending (a last bucket above
/// every bound is implied).
pub trait Buckets {
    const BOUNDS: &'static [u64];
}

/// Durations in milliseconds: 1 ms .. 10 s (the protocol decides in
/// milliseconds; a tail past a second means trouble).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Millis;

impl Buckets for Millis {
    const BOUNDS: &'static [u64] = &[
        1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000,
    ];
}

/// Block durations in milliseconds: 10 ms .. 60 s (a block interval is
/// about a second; view changes back off up to the timeout cap).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockMillis;

impl Buckets for BlockMillis {
    const BOUNDS: &'static [u64] = &[
        10, 50, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000,
    ];
}

/// Small counts, such as the consensus round a block committed in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rounds;

impl Buckets for Rounds {
    const BOUNDS: &'static [u64] = &[0, 1, 2, 3, 5, 10, 20];
}

/// Counts per bucket (not cumulative), their sum and count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram<B> {
    /// One per bound, then one above every bound.
    counts: Vec<u64>,
    sum: u64,
    _b: PhantomData<B>,
}

impl<B: Buckets> Default for Histogram<B> {
    fn default() -> Self {
        Histogram {
            counts: vec![0; B::BOUNDS.len() + 1],
            sum: 0,
            _b: PhantomData,
        }
    }
}

impl<B: Buckets> Histogram<B> {
    /// Counts `v` in the first bucket whose bound is at least `v`.
    pub fn observe(&mut self, v: u64) {
        let i = B::BOUNDS.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum = self.sum.saturating_add(v);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// `(upper bound, observations in that bucket)`, ascending; `None` is
    /// the bucket above every bound (`+Inf`).
    pub fn buckets(&self) -> impl Iterator<Item = (Option<u64>, u64)> + '_ {
        B::BOUNDS
            .iter()
            .map(|b| Some(*b))
            .chain(std::iter::once(None))
            .zip(self.counts.iter().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_at_or_above_them() {
        let mut h = Histogram::<Millis>::default();
        assert_eq!(h.count(), 0);
        for v in [0, 1, 2, 3, 10_000, 10_001] {
            h.observe(v);
        }
        let b: Vec<(Option<u64>, u64)> = h.buckets().filter(|(_, n)| *n > 0).collect();
        assert_eq!(
            b,
            vec![
                (Some(1), 2),
                (Some(2), 1),
                (Some(5), 1),
                (Some(10_000), 1),
                (None, 1)
            ]
        );
        assert_eq!(h.count(), 6);
        assert_eq!(h.sum(), 20_007);
        assert_eq!(h.buckets().count(), Millis::BOUNDS.len() + 1);
    }
}
