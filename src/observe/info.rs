//! What a cache is: its configuration and tiers, from [`Cache::info`].

use crate::breaker::BreakerState;
use crate::stats::RedisInfo;
use crate::Cache;

/// A description of a cache's configuration and tiers, from
/// [`Cache::info`]: what an operator wants to see before reading the
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
    /// `host:port` of the (first) server.
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

impl Cache {
    /// The cache's configuration and tiers.
    pub fn info(&self) -> Info {
        let s = &*self.shared;
        let obs = &s.obs.cfg;
        Info {
            version: env!("CARGO_PKG_VERSION"),
            mode: format!("{:?}", s.policy.mode),
            max_body_bytes: s.cfg.max_body_bytes,
            l1: L1Info {
                capacity_bytes: s.l1.capacity(),
                entries: s.l1.len() as u64,
                bytes: s.l1.weight(),
                evictions: s.l1.evictions(),
            },
            l2: self.l2_info(),
            observability: obs.enabled,
            labels: LabelsInfo {
                source: format!("{:?}", obs.labels),
                max_labels: obs.max_labels,
                // `default` and `other` are always there.
                in_use: s.obs.labels.all().len().saturating_sub(2),
            },
            log_level: format!("{:?}", obs.log),
            span_level: obs.span_level.to_string(),
            slow_threshold_ms: obs.slow.as_millis() as u64,
            eager_refresh: EagerRefreshInfo {
                enabled: obs.eager_fraction > 0.0,
                fraction: obs.eager_fraction,
                min_reads: obs.eager_min_reads,
            },
        }
    }

    #[cfg(feature = "redis")]
    fn l2_info(&self) -> Option<L2Info> {
        let l2 = self.shared.l2.as_ref()?;
        let now = self.shared.clock.now_millis();
        let (host, port) = l2.server();
        // Keys are `{namespace}:{format}:{hash}` and namespaces hold no `:`.
        let key = l2.redis_key(crate::KeyHash(0));
        let namespace = key.split_once(':').map_or(key.as_str(), |(ns, _)| ns);
        Some(L2Info {
            server: format!("{host}:{port}"),
            namespace: namespace.to_owned(),
            subscribed: l2.subscribed(),
            breaker: l2.breaker.state(now),
            redis: l2.info(now),
        })
    }

    #[cfg(not(feature = "redis"))]
    fn l2_info(&self) -> Option<L2Info> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{Cache, LogLevel};

    #[test]
    fn describes_the_configuration() {
        let cache = Cache::builder()
            .l1_capacity_bytes(4 * 1024 * 1024)
            .max_body_bytes(64 * 1024)
            .mode(crate::CacheMode::Private)
            .max_labels(7)
            .log_level(LogLevel::Off)
            .span_level(tracing::Level::INFO)
            .slow_threshold(Duration::from_millis(20))
            .eager_refresh(0.25, 3)
            .build()
            .unwrap();
        cache.shared.obs.labels.resolve("/a");
        let info = cache.info();
        assert_eq!(info.mode, "Private");
        assert!(info.observability);
        assert_eq!(info.max_body_bytes, 64 * 1024);
        assert_eq!(info.l1.capacity_bytes, 4 * 1024 * 1024);
        assert_eq!((info.l1.entries, info.l1.bytes), (0, 0));
        assert!(info.l2.is_none());
        assert_eq!(info.labels.source, "Auto");
        assert_eq!((info.labels.max_labels, info.labels.in_use), (7, 1));
        assert_eq!(info.log_level, "Off");
        assert_eq!(info.span_level, "INFO");
        assert_eq!(info.slow_threshold_ms, 20);
        assert!(info.eager_refresh.enabled);
        assert_eq!(info.eager_refresh.fraction, 0.25);
        assert_eq!(info.eager_refresh.min_reads, 3);
        assert!(
            !Cache::builder()
                .build()
                .unwrap()
                .info()
                .eager_refresh
                .enabled
        );
    }

    #[cfg(feature = "redis")]
    #[test]
    fn describes_the_l2_tier() {
        // Nothing listens on port 1: the tier is described all the same.
        let cache = Cache::builder()
            .redis("redis://127.0.0.1:1/")
            .namespace("app-1")
            .build()
            .unwrap();
        let l2 = cache.info().l2.expect("an L2 tier");
        assert_eq!(l2.server, "127.0.0.1:1");
        assert_eq!(l2.namespace, "app-1");
        assert!(!l2.subscribed);
        assert_eq!(l2.breaker, crate::BreakerState::Closed);
    }
}
