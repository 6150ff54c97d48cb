//! The shapes of what a running cache reports about itself: its
//! configuration and tiers ([`Info`]) and, with the `redis` feature, the
//! totals instances share through Redis ([`SharedStats`]). Filled in by
//! the engine's views (`export`); plain data here.

use crate::breaker::BreakerState;
use crate::stats::RedisInfo;

/// A description of a cache's configuration and tiers, from
/// [`Cache::info`](crate::Cache::info): what an operator wants to see before reading the
/// counters (and what the admin service answers at `/info`).
///
/// ```
/// let cache = tower_tiered_cache::Cache::builder()
///     .l1_capacity_bytes(8 * 1024 * 1024)
///     .build()
///     .unwrap();
/// let info = cache.info();
/// assert_eq!(info.l1.capacity_bytes, 8 * 1024 * 1024);
/// assert_eq!(info.mode, "Shared");
/// assert!(info.l2.is_none());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Info {
    /// The crate's version.
    pub version: &'static str,
    /// The cache mode (`Shared` or `Private`).
    pub mode: String,
    /// The largest response body stored, bytes.
    pub max_body_bytes: u64,
    /// The in-process tier.
    pub l1: L1Info,
    /// The Redis tier; `None` without one.
    pub l2: Option<L2Info>,
    /// Whether per-request instrumentation (labels, latency histograms,
    /// the rolling window, spans) is on.
    pub observability: bool,
    /// Request labels.
    pub labels: LabelsInfo,
    /// The log level, as configured (`Minimal`, `Aggregate { .. }`, …).
    pub log_level: String,
    /// The level of the per-request span (`DEBUG`, …).
    pub span_level: String,
    /// Operations slower than this are logged as warnings, ms.
    pub slow_threshold_ms: u64,
    /// Refreshing hot entries before they go stale.
    pub eager_refresh: EagerRefreshInfo,
}

/// The in-process tier, in [`Info`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct L1Info {
    /// Capacity, bytes.
    pub capacity_bytes: u64,
    /// Slots in use (entries plus one per URL with variants).
    pub entries: u64,
    /// Weighted bytes held.
    pub bytes: u64,
    /// Entries evicted to make room so far.
    pub evictions: u64,
}

/// The Redis tier, in [`Info`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct L2Info {
    /// `host:port` of the (first) server; with Redis Sentinel, of the
    /// master last found (the first sentinel until one is).
    pub server: String,
    /// The key namespace (`{namespace}:…` in Redis).
    pub namespace: String,
    /// Whether this instance follows the invalidation log (L1 copies are
    /// then kept coherent with other instances).
    pub subscribed: bool,
    /// The L2 circuit breaker's state.
    pub breaker: BreakerState,
    /// What Redis last reported about itself (`None` before the first
    /// fetch, which this call starts in the background).
    pub redis: Option<RedisInfo>,
}

/// Request labels, in [`Info`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct LabelsInfo {
    /// Where labels come from (`None`, `Auto`, `Host` or `Fn(..)`).
    pub source: String,
    /// The most distinct labels kept (further ones count as `other`).
    pub max_labels: usize,
    /// Distinct labels handed out so far, besides `default` and `other`.
    pub in_use: usize,
}

/// Eager refresh settings, in [`Info`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct EagerRefreshInfo {
    /// Whether hot entries are refreshed before they go stale.
    pub enabled: bool,
    /// Refreshed once less than this fraction of the lifetime is left.
    pub fraction: f64,
    /// Reads from L1 an entry needs before it is refreshed early.
    pub min_reads: u32,
}

/// Totals over every instance that flushed to the same namespace, from
/// [`Cache::shared_stats`](crate::Cache::shared_stats).
#[cfg(feature = "redis")]
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct SharedStats {
    /// Requests.
    pub requests: u64,
    /// Fresh hits, all tiers.
    pub hits: u64,
    /// Fresh hits from L1.
    pub hits_l1: u64,
    /// Fresh hits from L2.
    pub hits_l2: u64,
    /// Stale entries served.
    pub stale: u64,
    /// Misses.
    pub misses: u64,
    /// Revalidated with a 304.
    pub revalidated: u64,
    /// Answered from another request's call to the origin (a `collapsed`
    /// miss; see [`Stats::coalesced`](crate::Stats::coalesced)).
    pub coalesced: u64,
    /// Passed through.
    pub passes: u64,
    /// Upstream calls.
    pub upstream_calls: u64,
    /// Responses stored.
    pub stores: u64,
    /// The share of lookups answered without the origin,
    /// `(hits + stale) / lookups`, as
    /// [`Stats::hit_ratio`](crate::Stats::hit_ratio).
    pub hit_ratio: f64,
    /// Per label (labels as each instance named them), busiest first.
    pub labels: Vec<SharedLabelStats>,
}

/// One label's totals over every instance.
#[cfg(feature = "redis")]
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct SharedLabelStats {
    /// The label.
    pub label: String,
    /// Requests.
    pub requests: u64,
    /// Fresh hits.
    pub hits: u64,
    /// Stale entries served.
    pub stale: u64,
    /// Misses (coalesced and revalidated included).
    pub misses: u64,
    /// Passed through.
    pub passes: u64,
    /// `(hits + stale) / (requests - passes)`.
    pub hit_ratio: f64,
}
