//! What the counters add up to: per-label stats, latency, the rolling
//! window, health, and recommendations for labels that cache poorly.

use std::fmt;
use std::time::Duration;

use super::hist::Summary;
use super::labels::field;
use crate::error::BuildError;

/// One label's counters (see [`LabelSource`](crate::LabelSource)).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct LabelStats {
    /// The label: a route template, an upstream host, `default` or `other`.
    pub label: String,
    /// Requests with this label.
    pub requests: u64,
    /// Fresh hits (all tiers).
    pub hits: u64,
    /// Fresh hits from L1.
    pub hits_l1: u64,
    /// Fresh hits from L2.
    pub hits_l2: u64,
    /// Stale entries served.
    pub stale: u64,
    /// Misses (upstream called).
    pub misses: u64,
    /// Revalidated with a 304.
    pub revalidated: u64,
    /// Answered from another request's call to the origin (a `collapsed`
    /// miss; see [`Stats::coalesced`](crate::Stats::coalesced)).
    pub coalesced: u64,
    /// Passed through uncached.
    pub passes: u64,
    /// Dropped before their answer (client timeout or gone) while the
    /// cache was fetching: neither hits nor misses.
    pub cancelled: u64,
    /// The share of lookups answered without the origin:
    /// `(hits + stale) / lookups`, where lookups are all but passes (and
    /// cancelled requests); as [`Stats::hit_ratio`](crate::Stats::hit_ratio).
    pub hit_ratio: f64,
    /// Mean time in the cache layer per lookup (to the response head, the
    /// upstream call included for misses), ms. Passes are not timed.
    pub mean_latency_ms: f64,
    /// Responses stored.
    pub stores: u64,
    /// Responses not stored: no freshness information from the origin.
    pub not_stored_no_freshness: u64,
    /// Responses not stored because of `Set-Cookie`.
    pub not_stored_set_cookie: u64,
    /// Responses not stored because of `Authorization` or `private`.
    pub not_stored_authorization: u64,
    /// Responses not stored for other reasons (status, `no-store`, size).
    pub not_stored_other: u64,
    /// Lookups that found the URL but not the variant (`Vary`).
    pub vary_misses: u64,
    /// Entries evicted from L1 before they were read.
    pub evicted_unread: u64,
    /// Upstream calls that failed or answered 5xx.
    pub upstream_errors: u64,
}

impl LabelStats {
    pub(crate) fn from_counts(label: &str, c: &[u64; field::COUNT]) -> Self {
        let hits = c[field::HIT_L1] + c[field::HIT_L2];
        let lookups =
            hits + c[field::STALE] + c[field::MISS] + c[field::REVALIDATED] + c[field::COALESCED];
        let requests = lookups + c[field::PASS] + c[field::CANCELLED];
        Self {
            label: label.to_owned(),
            requests,
            hits,
            hits_l1: c[field::HIT_L1],
            hits_l2: c[field::HIT_L2],
            stale: c[field::STALE],
            misses: c[field::MISS],
            revalidated: c[field::REVALIDATED],
            coalesced: c[field::COALESCED],
            passes: c[field::PASS],
            cancelled: c[field::CANCELLED],
            hit_ratio: ratio(hits + c[field::STALE], lookups),
            mean_latency_ms: {
                // Fresh L1 hits are timed one in HIT_TIMING_SAMPLE: scale
                // their time up to all served lookups.
                let served = hits + c[field::STALE];
                let served_ns = if c[field::TIMED_SERVED] == 0 {
                    0.0
                } else {
                    c[field::SERVED_NS] as f64 * served as f64 / c[field::TIMED_SERVED] as f64
                };
                if lookups == 0 {
                    0.0
                } else {
                    (c[field::LATENCY_NS] as f64 + served_ns) / lookups as f64 / 1e6
                }
            },
            stores: c[field::STORES],
            not_stored_no_freshness: c[field::NO_FRESHNESS],
            not_stored_set_cookie: c[field::COOKIE],
            not_stored_authorization: c[field::AUTHORIZATION],
            not_stored_other: c[field::NOT_STORED_OTHER],
            vary_misses: c[field::VARY_MISS],
            evicted_unread: c[field::EVICTED_UNREAD],
            upstream_errors: c[field::ERRORS],
        }
    }

    /// Requests that were cache lookups and got an answer (all but passes
    /// and cancelled ones).
    pub fn lookups(&self) -> u64 {
        self.requests - self.passes - self.cancelled
    }
}

pub(crate) fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Latency percentiles, in milliseconds. Values are exact to within the
/// histogram's buckets (12.5 %).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Latency {
    /// Requests timed: every one but fresh L1 hits, which are timed one
    /// in [`HIT_TIMING_SAMPLE`](crate::observe::HIT_TIMING_SAMPLE) per
    /// thread (their counts are exact in the stats; the sample sets the
    /// percentiles and the mean).
    pub count: u64,
    /// Mean, ms.
    pub mean_ms: f64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

impl From<Summary> for Latency {
    fn from(s: Summary) -> Self {
        Self {
            count: s.count,
            mean_ms: if s.count == 0 {
                0.0
            } else {
                s.sum_ns as f64 / s.count as f64 / 1e6
            },
            p50_ms: s.p50_ns as f64 / 1e6,
            p95_ms: s.p95_ns as f64 / 1e6,
            p99_ms: s.p99_ns as f64 / 1e6,
        }
    }
}

/// The last five minutes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct WindowStats {
    /// The window's length in seconds (300).
    pub seconds: u64,
    /// Lookups in the window.
    pub lookups: u64,
    /// Lookups answered from storage (fresh or stale).
    pub served: u64,
    /// Requests passed through.
    pub passes: u64,
    /// `served / lookups`, the share of the window's lookups answered
    /// without the origin (as [`Stats::hit_ratio`](crate::Stats::hit_ratio));
    /// 0 with no lookups.
    pub hit_ratio: f64,
}

/// Overall condition, from [`Cache::health`](crate::Cache::health).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum HealthStatus {
    /// All within thresholds.
    Healthy,
    /// Something to look at (slow tail).
    Warning,
    /// The cache is not doing its job (low hit ratio, slow, L2 down).
    Degraded,
}

impl HealthStatus {
    /// `healthy`, `warning` or `degraded`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Warning => "warning",
            Self::Degraded => "degraded",
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`Cache::health`](crate::Cache::health) judges by.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct HealthThresholds {
    /// Lookups in the rolling window before the hit ratio is judged
    /// (default 100).
    pub min_requests: u64,
    /// Degraded below this window hit ratio (default 0.5).
    pub degraded_hit_ratio: f64,
    /// Degraded when the mean latency is above this (default 50 ms).
    pub degraded_mean_latency: Duration,
    /// Warning when the 95th percentile latency is above this (default
    /// 100 ms).
    pub warning_p95: Duration,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        Self {
            min_requests: 100,
            degraded_hit_ratio: 0.5,
            degraded_mean_latency: Duration::from_millis(50),
            warning_p95: Duration::from_millis(100),
        }
    }
}

impl HealthThresholds {
    /// The defaults; adjust with the setters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lookups needed before the hit ratio counts.
    pub fn min_requests(mut self, n: u64) -> Self {
        self.min_requests = n;
        self
    }

    /// Degraded below this hit ratio (0..=1).
    pub fn degraded_hit_ratio(mut self, ratio: f64) -> Self {
        self.degraded_hit_ratio = ratio;
        self
    }

    /// Degraded above this mean latency.
    pub fn degraded_mean_latency(mut self, d: Duration) -> Self {
        self.degraded_mean_latency = d;
        self
    }

    /// Warning above this 95th percentile.
    pub fn warning_p95(mut self, d: Duration) -> Self {
        self.warning_p95 = d;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        if !(self.degraded_hit_ratio.is_finite() && (0.0..=1.0).contains(&self.degraded_hit_ratio))
        {
            return Err(BuildError::invalid(
                "health_thresholds",
                "degraded_hit_ratio must be within 0..=1",
            ));
        }
        Ok(())
    }
}

/// The cache's condition with the reasons for it.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Health {
    /// The worst condition found.
    pub status: HealthStatus,
    /// One line per threshold crossed; empty when healthy.
    pub reasons: Vec<String>,
    /// The rolling window's hit ratio.
    pub window_hit_ratio: f64,
    /// Lookups in the window.
    pub window_lookups: u64,
    /// Mean latency over all measured requests, ms.
    pub mean_latency_ms: f64,
    /// 95th percentile latency, ms.
    pub p95_latency_ms: f64,
    /// The L2 breaker (`None` without L2).
    pub l2_breaker: Option<crate::BreakerState>,
    /// Every upstream breaker that is not closed, by label (see
    /// [`Cache::upstream_breakers`](crate::Cache::upstream_breakers)).
    pub upstream_breakers: Vec<crate::UpstreamBreaker>,
}

/// What kind of change a [`Recommendation`] suggests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum RecommendationKind {
    /// The origin sends no freshness: give the route a TTL.
    SetRouteTtl,
    /// Entries are evicted before reuse: L1 is too small.
    RaiseL1Capacity,
    /// Many `Vary` variants dilute the hits.
    ReduceVariants,
    /// Responses carry `Set-Cookie` or requests `Authorization`.
    PersonalizedResponses,
    /// Most requests pass through uncached.
    MostlyPasses,
    /// Responses are stored but rarely asked for again.
    LowReuse,
}

/// A suggestion drawn from a label's stats.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Recommendation {
    /// What to change.
    pub kind: RecommendationKind,
    /// Why, with the figures, and how.
    pub message: String,
}

/// A label whose hit ratio is below the threshold, with suggestions.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct LowPerformer {
    /// The label's stats.
    pub stats: LabelStats,
    /// Most likely causes first.
    pub recommendations: Vec<Recommendation>,
}

/// Suggestions for one label, from what its counters show: the likely
/// causes that apply, or, when none does but entries are stored, low reuse.
pub(crate) fn recommend(s: &LabelStats, l1_capacity: u64) -> Vec<Recommendation> {
    let mut out: Vec<Recommendation> = [
        set_route_ttl(s),
        personalized_responses(s),
        raise_l1_capacity(s, l1_capacity),
        reduce_variants(s),
        mostly_passes(s),
    ]
    .into_iter()
    .flatten()
    .collect();
    if out.is_empty() {
        out.extend(low_reuse(s));
    }
    out
}

/// Lookups that went to the origin: misses, led or joined.
fn origin_misses(s: &LabelStats) -> u64 {
    s.misses + s.coalesced
}

/// At least half the misses were not stored for want of freshness.
fn set_route_ttl(s: &LabelStats) -> Option<Recommendation> {
    let misses = origin_misses(s);
    (s.not_stored_no_freshness > 0 && s.not_stored_no_freshness * 2 >= misses.max(1)).then(|| {
        Recommendation {
            kind: RecommendationKind::SetRouteTtl,
            message: format!(
                "{} of {} misses were not stored because the origin sent no freshness \
                 (no Cache-Control max-age, Expires or Last-Modified): set a TTL for it, \
                 e.g. Route::prefix(\"{}\").ttl(Duration::from_secs(60)), or have the origin \
                 send Cache-Control",
                s.not_stored_no_freshness, misses, s.label
            ),
        }
    })
}

/// At least half the responses not stored (or passed) were personal:
/// `Set-Cookie`, `Authorization` or `private`.
fn personalized_responses(s: &LabelStats) -> Option<Recommendation> {
    let not_stored = s.not_stored_no_freshness
        + s.not_stored_set_cookie
        + s.not_stored_authorization
        + s.not_stored_other;
    let personal = s.not_stored_set_cookie + s.not_stored_authorization;
    (personal > 0 && personal * 2 >= (not_stored + s.passes).max(1)).then(|| Recommendation {
        kind: RecommendationKind::PersonalizedResponses,
        message: format!(
            "{} responses were not stored because of Set-Cookie ({}) or Authorization/private \
             ({}): strip cookies from cacheable responses (SetCookiePolicy::Strip), or have \
             the origin mark shared responses `public`/`s-maxage`",
            personal, s.not_stored_set_cookie, s.not_stored_authorization
        ),
    })
}

/// At least a quarter of the stored entries were evicted unread.
fn raise_l1_capacity(s: &LabelStats, l1_capacity: u64) -> Option<Recommendation> {
    (s.evicted_unread > 0 && s.evicted_unread * 4 >= s.stores.max(1)).then(|| Recommendation {
        kind: RecommendationKind::RaiseL1Capacity,
        message: format!(
            "{} of {} stored entries were evicted from L1 before anyone read them: raise \
             l1_capacity_bytes (now {} bytes) or lower max_body_bytes",
            s.evicted_unread, s.stores, l1_capacity
        ),
    })
}

/// At least a quarter of the misses found other `Vary` variants.
fn reduce_variants(s: &LabelStats) -> Option<Recommendation> {
    let misses = origin_misses(s);
    (s.vary_misses > 0 && s.vary_misses * 4 >= misses.max(1)).then(|| Recommendation {
        kind: RecommendationKind::ReduceVariants,
        message: format!(
            "{} of {} misses found the URL stored for other Vary values: normalise the \
             varying request header (e.g. Accept-Encoding, Accept-Language) before the cache, \
             or have the origin vary on fewer headers",
            s.vary_misses, misses
        ),
    })
}

/// More requests passed through than were looked up.
fn mostly_passes(s: &LabelStats) -> Option<Recommendation> {
    (s.passes > s.lookups()).then(|| Recommendation {
        kind: RecommendationKind::MostlyPasses,
        message: format!(
            "{} of {} requests passed through uncached (unsafe methods, bypass routes, \
             hit-for-pass after uncacheable responses)",
            s.passes, s.requests
        ),
    })
}

/// Entries are stored but rarely read again.
fn low_reuse(s: &LabelStats) -> Option<Recommendation> {
    (s.stores > 0).then(|| Recommendation {
        kind: RecommendationKind::LowReuse,
        message: format!(
            "{} responses stored, {} served from cache: requests rarely repeat within the \
             TTL; a longer TTL or stale-while-revalidate would help if the data allows",
            s.stores,
            s.hits + s.stale
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(f: impl FnOnce(&mut [u64; field::COUNT])) -> LabelStats {
        let mut c = [0u64; field::COUNT];
        f(&mut c);
        LabelStats::from_counts("/api/x", &c)
    }

    #[test]
    fn label_stats_add_up() {
        let s = stats(|c| {
            c[field::HIT_L1] = 6;
            c[field::HIT_L2] = 2;
            c[field::STALE] = 2;
            c[field::MISS] = 10;
            c[field::PASS] = 5;
            c[field::LATENCY_NS] = 10 * 2_000_000;
            // 10 served, 5 of them timed
            c[field::SERVED_NS] = 5 * 2_000_000;
            c[field::TIMED_SERVED] = 5;
        });
        assert_eq!(s.requests, 25);
        assert_eq!(s.lookups(), 20);
        assert_eq!(s.hits, 8);
        assert!((s.hit_ratio - 0.5).abs() < 1e-9);
        assert!((s.mean_latency_ms - 2.0).abs() < 1e-9);
    }

    #[test]
    fn recommendations_follow_the_counters() {
        use field::*;
        use RecommendationKind::*;
        let kinds = |s: &LabelStats| -> Vec<RecommendationKind> {
            recommend(s, 1 << 20).into_iter().map(|r| r.kind).collect()
        };
        let cases: [(&[(usize, u64)], RecommendationKind); 6] = [
            (&[(MISS, 10), (NO_FRESHNESS, 10)], SetRouteTtl),
            (
                &[(MISS, 10), (STORES, 10), (EVICTED_UNREAD, 8)],
                RaiseL1Capacity,
            ),
            (&[(MISS, 10), (STORES, 10), (VARY_MISS, 6)], ReduceVariants),
            (
                &[(MISS, 10), (COOKIE, 7), (AUTHORIZATION, 2)],
                PersonalizedResponses,
            ),
            (&[(MISS, 1), (PASS, 9)], MostlyPasses),
            (&[(MISS, 10), (STORES, 10)], LowReuse),
        ];
        for (counts, kind) in cases {
            let s = stats(|c| {
                for &(f, n) in counts {
                    c[f] = n;
                }
            });
            assert_eq!(kinds(&s), [kind], "{counts:?}");
            if kind == SetRouteTtl {
                assert!(recommend(&s, 1)[0]
                    .message
                    .contains("Route::prefix(\"/api/x\")"));
            }
        }
    }
}
