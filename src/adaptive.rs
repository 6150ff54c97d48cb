//! Adaptive TTL: keys read often are kept fresh longer, keys read rarely
//! for less time, when the cache chooses the TTL itself.
//!
//! [`AdaptiveTtl`] is the setting ([`CacheBuilder::adaptive_ttl`](crate::CacheBuilder::adaptive_ttl)); the
//! reads are counted by `reads::ReadCounts` (bounded, off the hit path);
//! `Shared::adapt_ttl` is the one decision, for HTTP entries and typed
//! values alike.

use std::cmp::Ordering;
use std::time::Duration;

use http::header::HeaderMap;

use crate::builder::{
    DEFAULT_ADAPTIVE_COLD_FACTOR, DEFAULT_ADAPTIVE_COLD_UNDER, DEFAULT_ADAPTIVE_HOT_AFTER,
    DEFAULT_ADAPTIVE_HOT_FACTOR, DEFAULT_ADAPTIVE_MAX_TTL, DEFAULT_ADAPTIVE_MIN_TTL,
    DEFAULT_ADAPTIVE_READ_SAMPLE, DEFAULT_ADAPTIVE_TRACKED_KEYS, DEFAULT_ADAPTIVE_WINDOW,
    MAX_ADAPTIVE_MAX_TTL, MAX_ADAPTIVE_READ_SAMPLE,
};
use crate::cache::{Fetch, Shared};
use crate::entry::{ReadCap, Reads};
use crate::error::BuildError;
use crate::key::KeyHash;
use crate::policy::Storable;
use crate::reads::{Rate, ReadCounts};

/// Adaptive TTL settings, for [`CacheBuilder::adaptive_ttl`](crate::CacheBuilder::adaptive_ttl): the TTLs the
/// cache chooses itself are scaled by how often their key is read.
///
/// When the cache stores an entry whose TTL it chose (a route's
/// [`ttl`](crate::Route::ttl) forced on a response without freshness
/// information, a heuristic lifetime, the
/// [`negative_caching`](crate::CacheBuilder::negative_caching) TTL), that TTL is
/// multiplied by the hot factor when the key was read more than
/// `hot_after` times per `window`, by the cold factor when it was read
/// fewer than `cold_under` times over a whole window, and kept otherwise
/// (and for a key not watched yet). A lengthened TTL is at most the upper
/// bound, a shortened one at least the lower bound; a TTL already outside
/// the bounds is never moved further out. The TTL is always the base one
/// times one factor: it does not compound from one store to the next.
///
/// An origin's explicit freshness (`max-age`, `s-maxage`, `Expires`, a
/// targeted field such as `CDN-Cache-Control`), and a route's TTL that
/// replaces it, are never changed, unless the route says
/// [`force`](crate::Route::force).
///
/// A typed value's soft TTL (`ValueOptions::ttl`,
/// feature `values`) is the cache's user's choice, never an origin's: it is
/// always adapted, its hard TTL and fail-safe window keeping their lengths
/// after it.
///
/// It is one setting for the whole cache (HTTP routes and typed values
/// alike), not one per route: what it may change is already limited to the
/// TTLs the cache chose, and a route brings the origin's own freshness in
/// with `force`.
///
/// Reads are the requests answered from a stored entry (fresh or stale,
/// from L1 or L2), counted by this instance, per URL (all its variants):
/// an entry counts its first reads one by one, then one in
/// [`read_sample`](Self::read_sample) per thread (adding that many), so
/// that the hits of a hot key do not all write to one shared counter.
/// At most `tracked_keys` keys are watched at once (a table of fixed size);
/// a key pushed out of it keeps its base TTL until it is watched again.
///
/// ```
/// use std::time::Duration;
/// use tower_tiered_cache::{AdaptiveTtl, Cache, Route};
///
/// let cache = Cache::builder()
///     // An API that sends no caching headers: 10 s, 20 s for keys read
///     // more than 50 times a minute, 5 s for those read fewer than 5 times.
///     .route(Route::prefix("/api").ttl(Duration::from_secs(10)).force())
///     .adaptive_ttl(
///         AdaptiveTtl::new()
///             .hot_after(50, 2.0)
///             .cold_under(5, 0.5)
///             .bounds(Duration::from_secs(1), Duration::from_secs(600))
///             .window(Duration::from_secs(60)),
///     )
///     .build()
///     .unwrap();
/// # drop(cache);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveTtl {
    hot_after: u32,
    hot_factor: f64,
    cold_under: u32,
    cold_factor: f64,
    min: Duration,
    max: Duration,
    window: Duration,
    tracked_keys: usize,
    read_sample: u32,
}

impl Default for AdaptiveTtl {
    fn default() -> Self {
        Self {
            hot_after: DEFAULT_ADAPTIVE_HOT_AFTER,
            hot_factor: DEFAULT_ADAPTIVE_HOT_FACTOR,
            cold_under: DEFAULT_ADAPTIVE_COLD_UNDER,
            cold_factor: DEFAULT_ADAPTIVE_COLD_FACTOR,
            min: DEFAULT_ADAPTIVE_MIN_TTL,
            max: DEFAULT_ADAPTIVE_MAX_TTL,
            window: DEFAULT_ADAPTIVE_WINDOW,
            tracked_keys: DEFAULT_ADAPTIVE_TRACKED_KEYS,
            read_sample: DEFAULT_ADAPTIVE_READ_SAMPLE,
        }
    }
}

impl AdaptiveTtl {
    /// The defaults: ×[`DEFAULT_ADAPTIVE_HOT_FACTOR`] over
    /// [`DEFAULT_ADAPTIVE_HOT_AFTER`] reads, ×[`DEFAULT_ADAPTIVE_COLD_FACTOR`]
    /// under [`DEFAULT_ADAPTIVE_COLD_UNDER`], per
    /// [`DEFAULT_ADAPTIVE_WINDOW`], within [`DEFAULT_ADAPTIVE_MIN_TTL`] and
    /// [`DEFAULT_ADAPTIVE_MAX_TTL`], for at most
    /// [`DEFAULT_ADAPTIVE_TRACKED_KEYS`] keys, counting one read in
    /// [`DEFAULT_ADAPTIVE_READ_SAMPLE`] past an entry's first few.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys read more than `reads` times per window get their TTL
    /// multiplied by `factor` (finite, above 0).
    pub fn hot_after(mut self, reads: u32, factor: f64) -> Self {
        self.hot_after = reads;
        self.hot_factor = factor;
        self
    }

    /// Keys read fewer than `reads` times over a whole window get their TTL
    /// multiplied by `factor` (finite, above 0); `reads` is at most the
    /// [`hot_after`](Self::hot_after) count.
    pub fn cold_under(mut self, reads: u32, factor: f64) -> Self {
        self.cold_under = reads;
        self.cold_factor = factor;
        self
    }

    /// The bounds of an adapted TTL: lengthened to at most `max`, shortened
    /// to at least `min` (`min` ≤ `max` ≤ [`MAX_ADAPTIVE_MAX_TTL`]).
    pub fn bounds(mut self, min: Duration, max: Duration) -> Self {
        self.min = min;
        self.max = max;
        self
    }

    /// The window reads are counted over (above 0).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The most keys whose reads are counted at once (at least 1): the
    /// table's size, fixed when the cache is built.
    pub fn tracked_keys(mut self, n: usize) -> Self {
        self.tracked_keys = n;
        self
    }

    /// How many of an entry's reads are counted once it has been read
    /// `cold_under` times (or `eager_refresh`'s `min_reads`, whichever is
    /// more): one in `n` per thread, on average, each counting `n`
    /// (default [`DEFAULT_ADAPTIVE_READ_SAMPLE`], 1 to
    /// [`MAX_ADAPTIVE_READ_SAMPLE`]; 1 counts every read, each a write to
    /// a counter every thread reading the key shares).
    pub fn read_sample(mut self, n: u32) -> Self {
        self.read_sample = n;
        self
    }

    /// Refuses factors that are not finite and above 0, thresholds or
    /// bounds in the wrong order, an upper bound past
    /// [`MAX_ADAPTIVE_MAX_TTL`], an empty window or table, a read sample
    /// out of its range.
    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        let factor_ok = |f: f64| f.is_finite() && f > 0.0;
        let refused = [
            (
                !factor_ok(self.hot_factor),
                "the hot factor must be finite and above 0",
            ),
            (
                !factor_ok(self.cold_factor),
                "the cold factor must be finite and above 0",
            ),
            (
                self.cold_under > self.hot_after,
                "cold_under's reads must be at most hot_after's",
            ),
            (self.min > self.max, "bounds: min must be at most max"),
            (
                self.max > MAX_ADAPTIVE_MAX_TTL,
                "bounds: max must be at most MAX_ADAPTIVE_MAX_TTL (100 years)",
            ),
            (self.window.is_zero(), "the window must be above 0"),
            (self.tracked_keys == 0, "tracked_keys must be at least 1"),
            (
                !(1..=MAX_ADAPTIVE_READ_SAMPLE).contains(&self.read_sample),
                "read_sample must be within 1..=MAX_ADAPTIVE_READ_SAMPLE",
            ),
        ];
        match refused.into_iter().find(|(bad, _)| *bad) {
            Some((_, why)) => Err(BuildError::invalid("adaptive_ttl", why)),
            None => Ok(()),
        }
    }

    /// The table that counts reads for these settings.
    pub(crate) fn read_counts(&self) -> ReadCounts {
        ReadCounts::new(self.tracked_keys, self.window)
    }

    /// How far an entry counts its reads: every read up to `exact` (what
    /// eager refresh needs) and `cold_under`, then one in `read_sample`,
    /// up to enough to show a key hot over the longest life an adapted
    /// entry has (`max` and one more window), so that the hit path stops
    /// writing once that is shown.
    pub(crate) fn read_cap(&self, exact: u32) -> ReadCap {
        let window = self.window.as_millis().max(1);
        let windows = self.max.as_millis().div_ceil(window).saturating_add(1);
        let most = u128::from(self.hot_after)
            .saturating_add(1)
            .saturating_mul(windows);
        let most = u32::try_from(most).unwrap_or(Reads::MAX_CAP);
        let exact = exact.max(self.cold_under);
        ReadCap::sampled(exact, most.max(exact), self.read_sample)
    }

    /// `base` scaled for a key read at `rate` (`None`: not watched yet),
    /// within the bounds.
    pub(crate) fn scale(&self, base: Duration, rate: Option<Rate>) -> Duration {
        let factor = match rate {
            Some(r) if r.per_window > u64::from(self.hot_after) => self.hot_factor,
            Some(r) if r.full && r.per_window < u64::from(self.cold_under) => self.cold_factor,
            _ => return base,
        };
        // Never further out of the bounds than `base` already is.
        let (lo, hi) = (base.min(self.min), base.max(self.max));
        Duration::try_from_secs_f64(base.as_secs_f64() * factor)
            .unwrap_or(hi)
            .clamp(lo, hi)
    }
}

impl Shared {
    /// The TTL to store `key` with, for a `base` TTL the cache chose
    /// (`explicit`: the origin stated it, and nothing allows changing it):
    /// `base` scaled by the key's read rate with adaptive TTL on, `base`
    /// otherwise. Counts the stores whose TTL it lengthened or shortened.
    pub(crate) fn adapt_ttl(&self, key: KeyHash, base: Duration, explicit: bool) -> Duration {
        let (Some(cfg), Some(counts)) = (&self.cfg.adaptive, &self.tiers.read_counts) else {
            return base;
        };
        if explicit {
            return base;
        }
        let ttl = cfg.scale(base, counts.rate(key, self.clock.now_millis()));
        match ttl.cmp(&base) {
            Ordering::Greater => self.counters.ttl_lengthened.incr(),
            Ordering::Less => self.counters.ttl_shortened.incr(),
            Ordering::Equal => {}
        }
        ttl
    }

    /// The storing verdict for a response to `plan`, its freshness adapted
    /// ([`adapt_ttl`](Self::adapt_ttl)) once the reads of the entries it
    /// replaces (the plan's prior, the L1 copy for these request
    /// `headers`) are counted.
    pub(crate) fn adapt_storable(
        &self,
        plan: &Fetch,
        headers: &HeaderMap,
        mut storable: Storable,
    ) -> Storable {
        if self.cfg.adaptive.is_none() {
            return storable;
        }
        let now = self.clock.now_millis();
        self.tiers
            .carry_replaced(plan.key, plan.prior.as_deref(), headers, now);
        let base = Duration::from_millis(storable.lifetime);
        let ttl = self.adapt_ttl(plan.key, base, !storable.adaptable);
        if ttl != base {
            storable.set_lifetime(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        }
        storable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_window: u64, full: bool) -> Option<Rate> {
        Some(Rate { per_window, full })
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_scaler_doubles_hot_keys_halves_cold_ones_within_bounds() {
        let cfg = AdaptiveTtl::new()
            .hot_after(50, 2.0)
            .cold_under(5, 0.5)
            .bounds(S(1), S(3600));
        assert_eq!(
            AdaptiveTtl::new().read_cap(1),
            ReadCap::sampled(5, 51 * (24 * 60 + 1), 8)
        );
        let cases = [
            ("not watched yet", S(10), None, S(10)),
            ("hot", S(10), rate(51, false), S(20)),
            (
                "exactly the hot count is not hot",
                S(10),
                rate(50, true),
                S(10),
            ),
            ("cold over a whole window", S(10), rate(4, true), S(5)),
            (
                "exactly the cold count is not cold",
                S(10),
                rate(5, true),
                S(10),
            ),
            (
                "few reads in part of a window",
                S(10),
                rate(0, false),
                S(10),
            ),
            ("lengthened up to max", S(3000), rate(100, true), S(3600)),
            (
                "shortened down to min",
                S(1) + S(1) / 2,
                rate(0, true),
                S(1),
            ),
            (
                "above max: never shortened by the bound",
                S(7200),
                rate(99, true),
                S(7200),
            ),
            ("above max, cold", S(7200), rate(0, true), S(3600)),
            (
                "under min: never lengthened by the bound",
                Duration::from_millis(500),
                rate(0, true),
                Duration::from_millis(500),
            ),
            (
                "zero stays zero",
                Duration::ZERO,
                rate(99, true),
                Duration::ZERO,
            ),
        ];
        for (name, base, rate, want) in cases {
            assert_eq!(cfg.scale(base, rate), want, "{name}");
        }
        // A product past what a Duration holds is the upper bound.
        let huge = AdaptiveTtl::new()
            .hot_after(0, f64::MAX)
            .bounds(S(0), MAX_ADAPTIVE_MAX_TTL);
        assert_eq!(huge.scale(S(10), rate(1, false)), MAX_ADAPTIVE_MAX_TTL);
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let refused = [
            AdaptiveTtl::new().hot_after(50, 0.0),
            AdaptiveTtl::new().hot_after(50, -2.0),
            AdaptiveTtl::new().hot_after(50, f64::NAN),
            AdaptiveTtl::new().cold_under(5, f64::INFINITY),
            AdaptiveTtl::new().hot_after(4, 2.0).cold_under(5, 0.5),
            AdaptiveTtl::new().bounds(S(10), S(9)),
            AdaptiveTtl::new().window(Duration::ZERO),
            AdaptiveTtl::new().tracked_keys(0),
            AdaptiveTtl::new().bounds(S(1), Duration::MAX),
            AdaptiveTtl::new().bounds(S(1), MAX_ADAPTIVE_MAX_TTL + S(1)),
            AdaptiveTtl::new().read_sample(0),
            AdaptiveTtl::new().read_sample(MAX_ADAPTIVE_READ_SAMPLE + 1),
        ];
        for cfg in refused {
            let err = crate::Cache::builder()
                .adaptive_ttl(cfg.clone())
                .build()
                .unwrap_err();
            assert!(err.is_invalid_setting(), "{cfg:?}");
            assert_eq!(err.setting(), "adaptive_ttl", "{cfg:?}");
        }
        let ok = AdaptiveTtl::new()
            .hot_after(5, 1.5)
            .cold_under(5, 0.9)
            .bounds(S(3), S(3));
        assert!(crate::Cache::builder().adaptive_ttl(ok).build().is_ok());
        let widest = AdaptiveTtl::new()
            .bounds(S(0), MAX_ADAPTIVE_MAX_TTL)
            .read_sample(MAX_ADAPTIVE_READ_SAMPLE);
        assert!(crate::Cache::builder().adaptive_ttl(widest).build().is_ok());
    }

    #[test]
    fn entries_count_reads_far_enough_to_show_a_key_hot() {
        // 51 reads a window, for up to 10 windows (max) and one more.
        let cfg = AdaptiveTtl::new()
            .hot_after(50, 2.0)
            .bounds(S(1), S(600))
            .window(S(60));
        assert_eq!(cfg.read_cap(1), ReadCap::sampled(5, 51 * 11, 8));
        // Eager refresh's `min_reads` counted exactly; every read with a
        // sample of 1.
        assert_eq!(cfg.read_cap(20), ReadCap::sampled(20, 51 * 11, 8));
        let every = cfg.clone().read_sample(1);
        assert_eq!(every.read_cap(1), ReadCap::exact(51 * 11));
        let longest = AdaptiveTtl::new()
            .bounds(S(1), MAX_ADAPTIVE_MAX_TTL)
            .window(Duration::from_millis(1));
        assert_eq!(longest.read_cap(1).most(), Reads::MAX_CAP);
    }
}
