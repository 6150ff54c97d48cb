//! A lock-free log-linear histogram of durations.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the latency histogram buckets, ns: from 1 µs (L1 hits)
/// to 10 s (slow upstreams): the Prometheus exposition's and the
/// OpenTelemetry lookup histograms'.
pub(crate) const LOOKUP_BUCKETS_NS: [u64; 16] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    1_000_000_000,
    10_000_000_000,
];

#[cfg(test)]
use crate::stats::stripe;

/// Sub-buckets per power of two (2^3 = 8: values land within 12.5 %).
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for any `u64`.
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) << SUB_BITS;
const STRIPES: usize = 4;

/// Durations in nanoseconds. Each thread writes one of a few stripes so
/// that concurrent recordings rarely share a cache line. Only bucket counts
/// are kept here (one atomic add per recording): exact totals are the
/// per-label sums (`Observer::latency`).
#[derive(Debug)]
pub(crate) struct Histogram {
    stripes: Box<[Stripe]>,
}

#[derive(Debug)]
#[repr(align(128))]
struct Stripe {
    buckets: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES)
                .map(|_| Stripe {
                    buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
                })
                .collect(),
        }
    }
}

/// The bucket of `v`: values below 8 have their own; above, 8 per power of two.
#[inline]
pub(crate) fn index(v: u64) -> usize {
    if v < SUB {
        v as usize
    } else {
        let exp = 63 - v.leading_zeros();
        let sub = (v >> (exp - SUB_BITS)) & (SUB - 1);
        (((exp - SUB_BITS + 1) as u64) << SUB_BITS | sub) as usize
    }
}

/// The smallest value of bucket `i`, and the bucket's width.
pub(crate) fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        (i, 1)
    } else {
        let shift = (i >> SUB_BITS) - 1;
        let sub = i & (SUB - 1);
        ((SUB + sub) << shift, 1u64 << shift)
    }
}

/// Percentiles and totals read from a [`Histogram`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Summary {
    pub(crate) count: u64,
    pub(crate) sum_ns: u64,
    pub(crate) p50_ns: u64,
    pub(crate) p95_ns: u64,
    pub(crate) p99_ns: u64,
}

impl Summary {
    /// The summary of two histograms taken together, `a`'s counts
    /// weighted by `weight_a` (for a sampled `a`).
    pub(crate) fn merge(a: &Histogram, weight_a: f64, b: &Histogram) -> Summary {
        let mut counts: Vec<u64> = a
            .merged()
            .into_iter()
            .map(|c| (c as f64 * weight_a).round() as u64)
            .collect();
        let cb = b.merged();
        for (x, y) in counts.iter_mut().zip(cb) {
            *x += y;
        }
        Summary::of(&counts)
    }

    /// Count and percentiles of merged bucket counts (`sum_ns` left 0).
    fn of(counts: &[u64]) -> Summary {
        let count: u64 = counts.iter().sum();
        Summary {
            count,
            sum_ns: 0,
            p50_ns: quantile(counts, count, 0.50),
            p95_ns: quantile(counts, count, 0.95),
            p99_ns: quantile(counts, count, 0.99),
        }
    }
}

impl Histogram {
    #[cfg(test)]
    pub(crate) fn record(&self, nanos: u64) {
        self.record_at(stripe(), nanos);
    }

    /// Records with the thread's stripe already known.
    #[inline]
    pub(crate) fn record_at(&self, stripe: usize, nanos: u64) {
        let s = &self.stripes[stripe % STRIPES];
        s.buckets[index(nanos)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts per bucket, the stripes added up.
    fn merged(&self) -> Vec<u64> {
        let mut counts = vec![0u64; BUCKETS];
        for s in self.stripes.iter() {
            for (c, b) in counts.iter_mut().zip(s.buckets.iter()) {
                *c += b.load(Ordering::Relaxed);
            }
        }
        counts
    }

    /// Count and percentiles (`sum_ns` is left 0: see the type's docs).
    pub(crate) fn summary(&self) -> Summary {
        Summary::of(&self.merged())
    }

    /// Cumulative counts at each of `bounds_ns` (for Prometheus buckets),
    /// and the total. A bucket counts under a bound when its upper edge is
    /// at most the bound, so values within 12.5 % below a bound may be
    /// counted under the next one.
    pub(crate) fn cumulative(&self, bounds_ns: &[u64]) -> (Vec<u64>, u64) {
        let counts = self.merged();
        let total = counts.iter().sum();
        let out = bounds_ns
            .iter()
            .map(|&b| {
                counts
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| {
                        let (lo, w) = bounds(*i);
                        lo.saturating_add(w) <= b.saturating_add(1)
                    })
                    .map(|(_, c)| c)
                    .sum()
            })
            .collect();
        (out, total)
    }

    pub(crate) fn reset(&self) {
        for s in self.stripes.iter() {
            for b in s.buckets.iter() {
                b.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// The value at quantile `q`: the middle of the bucket holding that rank.
fn quantile(counts: &[u64], total: u64, q: f64) -> u64 {
    if total == 0 {
        return 0;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, &c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            let (lo, w) = bounds(i);
            return lo + w / 2;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut prev_end = 0;
        for i in 0..BUCKETS {
            let (lo, w) = bounds(i);
            assert_eq!(lo, prev_end, "bucket {i}");
            prev_end = lo.wrapping_add(w);
            assert_eq!(index(lo), i);
            assert_eq!(index(lo + (w - 1)), i);
            if lo >= 8 {
                // within 12.5 % of the bucket's floor
                assert!(w * 8 <= lo, "bucket {i} too wide: {lo} + {w}");
            }
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_within_bucket_error() {
        let h = Histogram::default();
        // 1..=1000 µs, once each
        for us in 1..=1000u64 {
            h.record(us * 1000);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        for (got, want) in [
            (s.p50_ns, 500_000.0),
            (s.p95_ns, 950_000.0),
            (s.p99_ns, 990_000.0),
        ] {
            let err = (got as f64 - want).abs() / want;
            assert!(err < 0.07, "got {got}, want ~{want}");
        }
        h.reset();
        assert_eq!(h.summary(), Summary::default());
    }

    #[test]
    fn cumulative_counts() {
        let h = Histogram::default();
        h.record(500); // 0.5 µs
        h.record(2_000_000); // 2 ms
        h.record(2_000_000_000); // 2 s
        let (c, total) = h.cumulative(&[1_000, 5_000_000, 1_000_000_000]);
        assert_eq!(c, vec![1, 2, 2]);
        assert_eq!(total, 3);
    }
}
