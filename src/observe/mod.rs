//! Observability: request labels, per-label counters, latency histograms,
//! a rolling window, health, recommendations, structured logs and (with
//! the `opentelemetry` feature) metrics.

pub(crate) mod hist;
pub(crate) mod labels;
#[cfg(feature = "opentelemetry")]
pub(crate) mod metrics;
pub(crate) mod report;
mod snapshot;
pub(crate) mod window;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::entry::ReadCap;
use crate::status::{Detail, Fwd, Status};

pub use labels::{LabelFn, LabelSource, DEFAULT, OTHER};
pub use report::{
    Health, HealthStatus, HealthThresholds, LabelStats, Latency, LowPerformer, Recommendation,
    RecommendationKind, WindowStats,
};
pub use snapshot::{EagerRefreshInfo, Info, L1Info, L2Info, LabelsInfo};
#[cfg(feature = "redis")]
pub use snapshot::{SharedLabelStats, SharedStats};

use hist::Histogram;
use labels::{field, LabelTable};
use window::Window;

/// What a lookup came to, as reported in spans (`cache.result`), logs and
/// metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum LookupResult {
    /// Answered from storage while fresh.
    Hit,
    /// Answered from storage while stale (stale-while-revalidate,
    /// stale-if-error, `max-stale`).
    Stale,
    /// Nothing usable was stored: the upstream answered (or another
    /// request's upstream call, when coalesced).
    Miss,
    /// Not a cache lookup: the request went through uncached.
    Pass,
    /// A stored entry was revalidated with the upstream (a 304).
    Revalidated,
}

impl LookupResult {
    /// The lowercase name used in spans and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Stale => "stale",
            Self::Miss => "miss",
            Self::Pass => "pass",
            Self::Revalidated => "revalidated",
        }
    }
}

/// The storage tier that answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Tier {
    /// The in-process tier.
    L1,
    /// Redis.
    L2,
    /// No stored entry answered.
    None,
}

impl Tier {
    /// The lowercase name used in spans and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::L1 => "l1",
            Self::L2 => "l2",
            Self::None => "none",
        }
    }
}

/// How one request ended, as counted: derived from the engine's typed
/// [`Status`] (the one description every path makes of what it did).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) result: LookupResult,
    pub(crate) tier: Tier,
    pub(crate) coalesced: bool,
    pub(crate) vary_miss: bool,
    /// The remaining freshness in seconds, when `Cache-Status` said
    /// (`ttl=`).
    pub(crate) ttl_secs: Option<i64>,
}

impl Outcome {
    pub(crate) const HIT_L1: Outcome = Outcome {
        result: LookupResult::Hit,
        tier: Tier::L1,
        coalesced: false,
        vary_miss: false,
        ttl_secs: None,
    };

    /// The outcome of a request whose upstream call failed (no response).
    pub(crate) const FAILED: Outcome = Outcome {
        result: LookupResult::Miss,
        tier: Tier::None,
        coalesced: false,
        vary_miss: false,
        ttl_secs: None,
    };

    /// The outcome of a request the engine described with `status`;
    /// `None` (no response) is a failed upstream call.
    pub(crate) fn of(status: Option<&Status>) -> Outcome {
        status.map_or(Outcome::FAILED, Outcome::from)
    }

    /// The per-label counter this outcome adds to.
    fn field(&self) -> usize {
        match (self.result, self.tier) {
            (_, _) if self.coalesced => field::COALESCED,
            (LookupResult::Hit, Tier::L2) => field::HIT_L2,
            (LookupResult::Hit, _) => field::HIT_L1,
            (LookupResult::Stale, _) => field::STALE,
            (LookupResult::Miss, _) => field::MISS,
            (LookupResult::Revalidated, _) => field::REVALIDATED,
            (LookupResult::Pass, _) => field::PASS,
        }
    }
}

impl From<&Status> for Outcome {
    fn from(s: &Status) -> Outcome {
        let tier = match s.detail {
            Some(Detail::L1) => Tier::L1,
            Some(Detail::L2) => Tier::L2,
            _ => Tier::None,
        };
        let stale_if_error = s.detail == Some(Detail::StaleIfError);
        let result = if s.hit {
            if s.stale_by.is_some() || stale_if_error {
                LookupResult::Stale
            } else {
                LookupResult::Hit
            }
        } else if stale_if_error {
            LookupResult::Stale
        } else if s.collapsed {
            LookupResult::Miss
        } else if s.fwd_status == Some(304) && tier != Tier::None {
            LookupResult::Revalidated
        } else if matches!(s.fwd, Some(Fwd::Bypass | Fwd::Method))
            || matches!(
                s.detail,
                Some(Detail::HitForPass | Detail::Range | Detail::OnlyIfCached)
            )
        {
            LookupResult::Pass
        } else {
            LookupResult::Miss
        };
        Outcome {
            result,
            tier: if matches!(result, LookupResult::Hit | LookupResult::Stale) {
                tier
            } else {
                Tier::None
            },
            coalesced: s.collapsed,
            vary_miss: s.fwd == Some(Fwd::VaryMiss),
            ttl_secs: s.stale_by.map(|secs| -(secs.min(i64::MAX as u64) as i64)),
        }
    }
}

/// How much the cache says about its work in `tracing` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum LogLevel {
    /// No events of the cache's own.
    Off,
    /// Only warnings: L2 down, operations slower than the slow threshold,
    /// undecodable L2 values, failed refreshes.
    #[default]
    Minimal,
    /// Warnings, and an INFO summary (hit ratio, totals, per label) every
    /// `every_requests` requests or `every` (whichever comes first).
    Aggregate {
        /// Requests between summaries.
        every_requests: u64,
        /// Time between summaries.
        every: Duration,
    },
    /// Everything above, and a DEBUG event for every lookup (label, key,
    /// result, tier, TTL remaining, timings).
    Detailed,
}

impl LogLevel {
    /// `Aggregate` every 10 000 requests or 60 seconds.
    pub const AGGREGATE: LogLevel = LogLevel::Aggregate {
        every_requests: 10_000,
        every: Duration::from_secs(60),
    };

    pub(crate) fn warnings(self) -> bool {
        self != LogLevel::Off
    }

    fn summary_every(self) -> Option<(u64, Duration)> {
        match self {
            LogLevel::Aggregate {
                every_requests,
                every,
            } => Some((every_requests.max(1), every)),
            LogLevel::Detailed => Some((10_000, Duration::from_secs(60))),
            _ => None,
        }
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;

    /// `off`, `minimal`, `aggregate` or `detailed`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(LogLevel::Off),
            "minimal" => Ok(LogLevel::Minimal),
            "aggregate" => Ok(LogLevel::AGGREGATE),
            "detailed" => Ok(LogLevel::Detailed),
            other => Err(format!(
                "unknown log level {other:?} (expected off, minimal, aggregate or detailed)"
            )),
        }
    }
}

/// Observability settings, assembled by the builder.
#[derive(Debug, Clone)]
pub(crate) struct ObserveConfig {
    pub(crate) labels: LabelSource,
    pub(crate) max_labels: usize,
    pub(crate) log: LogLevel,
    pub(crate) slow: Duration,
    pub(crate) health: HealthThresholds,
    /// Refresh entries read at least `eager_min_reads` times once this
    /// fraction of their freshness lifetime is left.
    pub(crate) eager_fraction: f64,
    pub(crate) eager_min_reads: u32,
    /// How far an entry counts its reads (`entry::Reads::note`): to
    /// `eager_min_reads` with eager refresh, far enough to show a key hot
    /// with adaptive TTL (sampled past the first few), else 1 (read or
    /// not). Set by the builder.
    pub(crate) read_cap: ReadCap,
    pub(crate) span_level: tracing::Level,
    /// Per-request instrumentation (labels, latency, window, spans,
    /// metrics, per-lookup logs). The global counters are always kept.
    pub(crate) enabled: bool,
    /// Fresh L1 hits are timed one in this many.
    pub(crate) hit_sample: u32,
}

impl Default for ObserveConfig {
    fn default() -> Self {
        Self {
            labels: LabelSource::Auto,
            max_labels: 64,
            log: LogLevel::Minimal,
            slow: Duration::from_millis(50),
            health: HealthThresholds::default(),
            eager_fraction: 0.0,
            eager_min_reads: 10,
            read_cap: ReadCap::exact(1),
            span_level: tracing::Level::DEBUG,
            enabled: true,
            hit_sample: HIT_TIMING_SAMPLE,
        }
    }
}

/// Expands `$mac!(level)` for a level known only at run time (`tracing`'s
/// macros want a constant one).
macro_rules! at_level {
    ($level:expr, $mac:ident) => {
        match $level {
            tracing::Level::ERROR => $mac!(tracing::Level::ERROR),
            tracing::Level::WARN => $mac!(tracing::Level::WARN),
            tracing::Level::INFO => $mac!(tracing::Level::INFO),
            tracing::Level::DEBUG => $mac!(tracing::Level::DEBUG),
            tracing::Level::TRACE => $mac!(tracing::Level::TRACE),
        }
    };
}

/// A `cache.lookup` span at `level` with the fields every lookup fills in
/// later (declared empty) and the lookup's own `extra` fields; none when
/// no subscriber was ever installed (nothing to report to, and with
/// tracing's `log` feature, that some dependency may turn on, the macro
/// would still build a disabled span and its fields).
macro_rules! lookup_span {
    (@at $lvl:expr, $($extra:tt)*) => {
        tracing::span!(
            target: "tower_tiered_cache",
            $lvl,
            "cache.lookup",
            otel.name = "cache.lookup",
            cache.result = tracing::field::Empty,
            cache.tier = tracing::field::Empty,
            cache.key = tracing::field::Empty,
            cache.label = tracing::field::Empty,
            cache.ttl_remaining_ms = tracing::field::Empty,
            cache.coalesced = tracing::field::Empty,
            cache.upstream_ms = tracing::field::Empty,
            cache.lease = tracing::field::Empty,
            $($extra)*
        )
    };
    ($level:expr, $($extra:tt)*) => {
        if !tracing::dispatcher::has_been_set() {
            tracing::Span::none()
        } else {
            match $level {
                tracing::Level::ERROR => lookup_span!(@at tracing::Level::ERROR, $($extra)*),
                tracing::Level::WARN => lookup_span!(@at tracing::Level::WARN, $($extra)*),
                tracing::Level::INFO => lookup_span!(@at tracing::Level::INFO, $($extra)*),
                tracing::Level::DEBUG => lookup_span!(@at tracing::Level::DEBUG, $($extra)*),
                tracing::Level::TRACE => lookup_span!(@at tracing::Level::TRACE, $($extra)*),
            }
        }
    };
}

/// The span of one request through the cache, at `level`. Fields filled
/// in later are declared empty.
#[inline]
pub(crate) fn request_span(level: tracing::Level, parts: &http::request::Parts) -> tracing::Span {
    lookup_span!(
        level,
        cache.lookup_ms = tracing::field::Empty,
        cache.store_ms = tracing::field::Empty,
        http.request.method = %parts.method,
        url.path = parts.uri.path(),
        http.response.status_code = tracing::field::Empty,
    )
}

/// The span of a background refresh: a root of its own (it outlives the
/// request), linked by the caller to the request that started it.
pub(crate) fn refresh_span(level: tracing::Level, label: &str) -> tracing::Span {
    macro_rules! span_at {
        ($lvl:expr) => {
            tracing::span!(
                target: "tower_tiered_cache",
                parent: None,
                $lvl,
                "cache.refresh",
                otel.name = "cache.refresh",
                cache.label = label,
                cache.result = tracing::field::Empty,
                cache.upstream_ms = tracing::field::Empty,
            )
        };
    }
    at_level!(level, span_at)
}

/// The span of one call of a value cache (`ValueCache`; `op`: `get`,
/// `get_or_fetch`, `get_many_or_fetch`), at `level`: a `cache.lookup` like
/// a request's, with the value cache's name as its label. Fields filled in
/// later are declared empty.
#[cfg_attr(not(feature = "values"), allow(dead_code))]
pub(crate) fn value_span(level: tracing::Level, label: &str, op: &'static str) -> tracing::Span {
    let span = lookup_span!(
        level,
        cache.operation = op,
        cache.keys = tracing::field::Empty,
    );
    span.record("cache.label", label);
    span
}

/// By default, fresh L1 hits are timed one in this many per thread (every
/// other request is timed; see `CacheBuilder::hit_timing_sample`): reading the clock twice would cost a tenth of the
/// hit, and sub-microsecond hit latencies are steady enough to sample. The
/// hit counts themselves are exact.
pub const HIT_TIMING_SAMPLE: u32 = 8;

thread_local! {
    static HIT_TICK: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// One reading of every label's counters.
pub(crate) struct LabelRead {
    pub(crate) rows: Vec<(std::sync::Arc<str>, [u64; field::COUNT])>,
    /// Each counter summed over the labels.
    pub(crate) totals: [u64; field::COUNT],
}

/// The observer every request reports to.
pub(crate) struct Observer {
    pub(crate) cfg: ObserveConfig,
    pub(crate) labels: LabelTable,
    pub(crate) hit_latency: Histogram,
    pub(crate) miss_latency: Histogram,
    pub(crate) window: Window,
    pub(crate) tsc: quanta::Clock,
    /// Requests since the last summary, and when it was (ms).
    since_summary: AtomicU64,
    last_summary: AtomicU64,
    #[cfg(feature = "opentelemetry")]
    pub(crate) metrics: std::sync::OnceLock<metrics::Instruments>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observer")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Observer {
    pub(crate) fn new(cfg: ObserveConfig) -> Self {
        Self {
            labels: LabelTable::new(cfg.labels.clone(), cfg.max_labels),
            cfg,
            hit_latency: Histogram::default(),
            miss_latency: Histogram::default(),
            window: Window::default(),
            tsc: crate::clock::tsc().clone(),
            since_summary: AtomicU64::new(0),
            last_summary: AtomicU64::new(0),
            #[cfg(feature = "opentelemetry")]
            metrics: std::sync::OnceLock::new(),
        }
    }

    /// A start time for [`elapsed_ns`](Self::elapsed_ns).
    #[inline]
    pub(crate) fn start(&self) -> u64 {
        self.tsc.raw()
    }

    /// A start time for one request in [`HIT_TIMING_SAMPLE`], else 0 (not
    /// timed, unless it turns out not to be a fresh L1 hit: see
    /// `CacheService::call`).
    #[inline]
    pub(crate) fn start_sampled(&self) -> u64 {
        let sampled = HIT_TICK
            .try_with(|t| {
                let n = t.get().wrapping_add(1);
                t.set(n);
                n % self.cfg.hit_sample == 0
            })
            .unwrap_or(true);
        if sampled {
            self.tsc.raw().max(1)
        } else {
            0
        }
    }

    #[inline]
    pub(crate) fn elapsed_ns(&self, start: u64) -> u64 {
        self.tsc.delta_as_nanos(start, self.tsc.raw())
    }

    /// Counts one finished request under its label, in the latency
    /// histograms (when it was timed) and in the window. Returns whether a
    /// summary is due.
    #[inline]
    pub(crate) fn record(
        &self,
        label: u16,
        o: &Outcome,
        elapsed_ns: Option<u64>,
        now_ms: u64,
    ) -> bool {
        let stripe = crate::stats::stripe();
        let c = self.labels.counters(label);
        c.add_at(stripe, o.field(), 1);
        if o.vary_miss {
            c.add_at(stripe, field::VARY_MISS, 1);
        }
        let served = matches!(o.result, LookupResult::Hit | LookupResult::Stale);
        let lookup = o.result != LookupResult::Pass;
        match elapsed_ns {
            Some(ns) if served => {
                c.add_at(stripe, field::SERVED_NS, ns);
                c.add_at(stripe, field::TIMED_SERVED, 1);
                self.hit_latency.record_at(stripe, ns);
            }
            Some(ns) if lookup => {
                c.add_at(stripe, field::LATENCY_NS, ns);
                self.miss_latency.record_at(stripe, ns);
            }
            _ => {}
        }
        self.window.record_at(stripe, now_ms, lookup, served);
        #[cfg(feature = "opentelemetry")]
        if let (Some(m), Some(ns)) = (self.metrics.get(), elapsed_ns) {
            m.lookup(self, label, o, ns, (served, lookup));
        }
        match self.cfg.log.summary_every() {
            None => false,
            Some((n, every)) => {
                let count = self.since_summary.fetch_add(1, Ordering::Relaxed) + 1;
                let last = self.last_summary.load(Ordering::Relaxed);
                if last == 0 {
                    // The first request starts the period.
                    if self
                        .last_summary
                        .compare_exchange(0, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                    {
                        self.since_summary.store(0, Ordering::Relaxed);
                    }
                    return false;
                }
                let due = count >= n || now_ms.saturating_sub(last) >= every.as_millis() as u64;
                due && self
                    .last_summary
                    .compare_exchange(last, now_ms.max(1), Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                    && {
                        self.since_summary.store(0, Ordering::Relaxed);
                        true
                    }
            }
        }
    }

    /// Counts a response that was not stored, by reason, under its label.
    pub(crate) fn not_stored(&self, label: u16, reason: crate::NotStored) {
        use crate::NotStored as N;
        let f = match reason {
            N::NoFreshness => field::NO_FRESHNESS,
            N::SetCookie => field::COOKIE,
            N::Authorization | N::Private => field::AUTHORIZATION,
            _ => field::NOT_STORED_OTHER,
        };
        self.labels.counters(label).add(f, 1);
    }

    pub(crate) fn stored(&self, label: u16) {
        self.labels.counters(label).add(field::STORES, 1);
    }

    /// An upstream call ended after `took` (`status`: `None` on an error).
    pub(crate) fn upstream_done(
        &self,
        label: u16,
        took: Duration,
        status: Option<http::StatusCode>,
    ) {
        let span = tracing::Span::current();
        if !span.is_disabled() {
            span.record("cache.upstream_ms", took.as_secs_f64() * 1000.0);
        }
        #[cfg(feature = "opentelemetry")]
        if let Some(m) = self.metrics.get() {
            m.upstream(self, label, took, status);
        }
        let _ = status;
        self.slow("upstream", label, took);
    }

    pub(crate) fn upstream_error(&self, label: u16) {
        self.labels.counters(label).add(field::ERRORS, 1);
    }

    pub(crate) fn evicted_unread(&self, label: u16) {
        self.labels.counters(label).add(field::EVICTED_UNREAD, 1);
    }

    /// A warning about an operation slower than the slow threshold.
    pub(crate) fn slow(&self, what: &'static str, label: u16, elapsed: Duration) {
        if self.cfg.log.warnings() && elapsed >= self.cfg.slow {
            tracing::warn!(
                target: "tower_tiered_cache",
                operation = what,
                label = %self.labels.name(label),
                elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                threshold_ms = self.cfg.slow.as_millis() as u64,
                "slow cache operation"
            );
        }
    }

    /// A warning about a slow or failed L2 operation.
    #[cfg(feature = "redis")]
    pub(crate) fn slow_l2(&self, name: &str, took: Duration, ok: bool) {
        if self.cfg.log.warnings() && took >= self.cfg.slow {
            tracing::warn!(
                target: "tower_tiered_cache",
                operation = name,
                ok,
                elapsed_ms = took.as_secs_f64() * 1000.0,
                threshold_ms = self.cfg.slow.as_millis() as u64,
                "slow L2 (Redis) operation"
            );
        }
    }

    /// The per-label counters, read once, and their sums over labels.
    pub(crate) fn read_labels(&self) -> LabelRead {
        let rows = self.labels.all();
        let mut totals = [0u64; field::COUNT];
        for (_, c) in &rows {
            for (t, v) in totals.iter_mut().zip(c) {
                *t += v;
            }
        }
        LabelRead { rows, totals }
    }

    /// The hit (served) or miss latency: percentiles from the histogram,
    /// the exact total from the per-label sums.
    pub(crate) fn latency(&self, served: bool, totals: &[u64; field::COUNT]) -> hist::Summary {
        let (h, f) = if served {
            (&self.hit_latency, field::SERVED_NS)
        } else {
            (&self.miss_latency, field::LATENCY_NS)
        };
        let mut s = h.summary();
        s.sum_ns = totals[f];
        s
    }

    pub(crate) fn reset(&self) {
        self.labels.reset();
        self.hit_latency.reset();
        self.miss_latency.reset();
        self.window.reset();
        self.since_summary.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_from_typed_statuses() {
        use LookupResult::*;
        let fwd = Status::forward;
        let table: &[(Status, &str, LookupResult, Tier, bool)] = &[
            (Status::HIT_L1, "hit; detail=l1", Hit, Tier::L1, false),
            (Status::HIT_L2, "hit; detail=l2", Hit, Tier::L2, false),
            (
                Status::hit(Detail::L1, Some(3)),
                "hit; ttl=-3; detail=l1",
                Stale,
                Tier::L1,
                false,
            ),
            (
                Status::hit(Detail::L2, Some(3)),
                "hit; ttl=-3; detail=l2",
                Stale,
                Tier::L2,
                false,
            ),
            (
                Status::hit(Detail::StaleIfError, Some(1)),
                "hit; ttl=-1; detail=stale-if-error",
                Stale,
                Tier::None,
                false,
            ),
            (
                Status {
                    stale_by: Some(9),
                    ..fwd(Fwd::Stale)
                        .with_fwd_status(503)
                        .with_detail(Detail::StaleIfError)
                },
                "fwd=stale; fwd-status=503; ttl=-9; detail=stale-if-error",
                Stale,
                Tier::None,
                false,
            ),
            (
                Status {
                    stored: true,
                    ..fwd(Fwd::UriMiss).with_fwd_status(200)
                },
                "fwd=uri-miss; fwd-status=200; stored",
                Miss,
                Tier::None,
                false,
            ),
            (
                fwd(Fwd::UriMiss).with_fwd_status(500),
                "fwd=uri-miss; fwd-status=500",
                Miss,
                Tier::None,
                false,
            ),
            (
                Status {
                    collapsed: true,
                    ..fwd(Fwd::UriMiss).with_detail(Detail::L1)
                },
                "fwd=uri-miss; collapsed; detail=l1",
                Miss,
                Tier::None,
                true,
            ),
            (
                fwd(Fwd::Stale).with_fwd_status(304).with_detail(Detail::L1),
                "fwd=stale; fwd-status=304; detail=l1",
                Revalidated,
                Tier::None,
                false,
            ),
            (
                fwd(Fwd::Stale).with_fwd_status(304),
                "fwd=stale; fwd-status=304",
                Miss,
                Tier::None,
                false,
            ),
            (Status::BYPASS, "fwd=bypass", Pass, Tier::None, false),
            (Status::METHOD, "fwd=method", Pass, Tier::None, false),
            (
                Status::HIT_FOR_PASS,
                "fwd=uri-miss; detail=hit-for-pass",
                Pass,
                Tier::None,
                false,
            ),
            (
                Status::RANGE,
                "fwd=uri-miss; detail=range",
                Pass,
                Tier::None,
                false,
            ),
            (
                Status::ONLY_IF_CACHED,
                "detail=only-if-cached",
                Pass,
                Tier::None,
                false,
            ),
            (
                fwd(Fwd::Request).with_detail(Detail::UpstreamTimeout),
                "fwd=request; detail=upstream-timeout",
                Miss,
                Tier::None,
                false,
            ),
        ];
        for (status, header, result, tier, coalesced) in table {
            assert_eq!(
                status.header(),
                format!("tower-tiered-cache; {header}").as_str()
            );
            let o = Outcome::from(status);
            assert_eq!(
                (o.result, o.tier, o.coalesced),
                (*result, *tier, *coalesced),
                "{header}"
            );
        }
        assert!(Outcome::from(&fwd(Fwd::VaryMiss)).vary_miss);
        // Stale at the very millisecond freshness ended, or with max-stale.
        let o = Outcome::from(&Status::hit(Detail::L1, Some(0)));
        assert_eq!((o.result, o.ttl_secs), (Stale, Some(0)));
        assert_eq!(Outcome::of(None), Outcome::FAILED);
    }

    #[test]
    fn summary_due_by_count() {
        let o = Observer::new(ObserveConfig {
            log: LogLevel::Aggregate {
                every_requests: 3,
                every: Duration::from_secs(3600),
            },
            ..ObserveConfig::default()
        });
        let t = 1_000_000;
        let due: Vec<bool> = (0..7)
            .map(|i| o.record(0, &Outcome::HIT_L1, Some(10), t + i))
            .collect();
        // the first request starts the clock; then every third is due
        assert_eq!(due, [false, false, false, true, false, false, true]);
    }
}
