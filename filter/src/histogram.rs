//! Latency histogram with fixed log-spaced buckets, shared by the filter (which counts)
//! and the control service (which merges and reads percentiles).
//!
//! Values are microseconds. Buckets 0..=3 hold 0, 1, 2 and 3 µs exactly; above that
//! every power of two is split into four equal sub-buckets, so a bucket is at most 25 %
//! wide relative to its lower bound. The last bucket also holds everything from about
//! 50 s up. Two histograms merge by adding counts bucket by bucket, so workers, nodes
//! and windows combine without loss; the layout never changes (it is part of the
//! telemetry wire format).

/// Number of buckets.
pub const BUCKETS: usize = 100;

/// Bucket index of a latency in microseconds.
pub fn bucket_of(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let k = 63 - us.leading_zeros() as usize; // 2^k <= us < 2^(k+1), k >= 2
    let sub = ((us >> (k - 2)) & 3) as usize;
    (4 + 4 * (k - 2) + sub).min(BUCKETS - 1)
}

/// Smallest value (µs) that falls in bucket `i`.
pub fn lower_bound(i: usize) -> u64 {
    if i < 4 {
        return i as u64;
    }
    let k = (i - 4) / 4 + 2;
    let sub = ((i - 4) % 4) as u64;
    (1u64 << k) + sub * (1u64 << (k - 2))
}

/// Largest value (µs) that falls in bucket `i` (`u64::MAX` for the last bucket).
pub fn upper_bound(i: usize) -> u64 {
    if i + 1 >= BUCKETS {
        u64::MAX
    } else {
        lower_bound(i + 1) - 1
    }
}

/// Counts per bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: [u32; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: [0; BUCKETS],
        }
    }
}

impl Histogram {
    pub fn new() -> Self {
        Self::default()
    }

    /// Count one latency (µs). Saturates instead of wrapping.
    pub fn record(&mut self, us: u64) {
        let c = &mut self.counts[bucket_of(us)];
        *c = c.saturating_add(1);
    }

    /// Add another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    /// Add counts given sparsely as (bucket, count); out-of-range buckets are ignored
    /// and reported as `false`.
    pub fn add_bucket(&mut self, bucket: usize, count: u32) -> bool {
        match self.counts.get_mut(bucket) {
            Some(c) => {
                *c = c.saturating_add(count);
                true
            }
            None => false,
        }
    }

    pub fn counts(&self) -> &[u32; BUCKETS] {
        &self.counts
    }

    /// Non-empty buckets as (bucket, count), in bucket order.
    pub fn nonzero(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| (i, *c))
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| u64::from(*c)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|c| *c == 0)
    }

    pub fn clear(&mut self) {
        self.counts = [0; BUCKETS];
    }

    /// The `q` quantile (0.0..=1.0) in µs: the midpoint of the bucket holding the
    /// rank-⌈q·n⌉ value (the last bucket reports its lower bound). `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let n = self.total();
        if n == 0 {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= rank {
                return Some(if i + 1 >= BUCKETS {
                    lower_bound(i)
                } else {
                    lower_bound(i) + (upper_bound(i) - lower_bound(i)) / 2
                });
            }
        }
        None
    }

    /// How many recorded values were at most `us` (counting whole buckets whose upper
    /// bound is at most `us`): a conservative "within budget" count.
    pub fn count_at_most(&self, us: u64) -> u64 {
        self.counts
            .iter()
            .enumerate()
            .take_while(|(i, _)| upper_bound(*i) <= us)
            .map(|(_, c)| u64::from(*c))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        for i in 0..BUCKETS - 1 {
            assert_eq!(upper_bound(i) + 1, lower_bound(i + 1), "bucket {i}");
            assert_eq!(bucket_of(lower_bound(i)), i);
            assert_eq!(bucket_of(upper_bound(i)), i);
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        // Around 50 s the last bucket starts.
        let last = lower_bound(BUCKETS - 1);
        assert!((40_000_000..70_000_000).contains(&last), "{last}");
    }

    #[test]
    fn buckets_are_at_most_a_quarter_wide() {
        for i in 4..BUCKETS - 1 {
            let (lo, hi) = (lower_bound(i), upper_bound(i));
            assert!((hi - lo + 1) * 4 <= lo, "bucket {i}: {lo}..={hi}");
        }
    }

    #[test]
    fn quantiles_are_within_the_bucket_error() {
        let mut h = Histogram::new();
        // 1..=10_000 ms, uniformly.
        for ms in 1..=10_000u64 {
            h.record(ms * 1_000);
        }
        for (q, want_ms) in [(0.5, 5_000.0), (0.95, 9_500.0), (0.99, 9_900.0)] {
            let got = h.quantile(q).unwrap() as f64 / 1_000.0;
            assert!(
                (got - want_ms).abs() / want_ms < 0.125,
                "q{q}: {got} vs {want_ms}"
            );
        }
        assert_eq!(Histogram::new().quantile(0.5), None);
    }

    #[test]
    fn merging_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
        for v in [3u64, 90, 1_500, 70_000, 300_000, 2_000_000] {
            a.record(v);
            all.record(v);
        }
        for v in [5u64, 90, 900_000, 60_000_000_000] {
            b.record(v);
            all.record(v);
        }
        a.merge(&b);
        assert_eq!(a, all);
        assert_eq!(a.total(), 10);
        let mut sparse = Histogram::new();
        for (i, c) in all.nonzero() {
            assert!(sparse.add_bucket(i, c));
        }
        assert_eq!(sparse, all);
        assert!(!sparse.add_bucket(BUCKETS, 1));
    }

    #[test]
    fn count_at_most_is_conservative() {
        let mut h = Histogram::new();
        for ms in [10u64, 100, 400, 600] {
            h.record(ms * 1_000);
        }
        assert_eq!(h.count_at_most(500_000), 3);
        assert_eq!(h.count_at_most(1), 0);
        assert_eq!(h.count_at_most(u64::MAX), 4);
    }
}
