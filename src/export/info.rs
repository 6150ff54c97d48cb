//! What a cache is: its configuration and tiers, from [`Cache::info`].

use crate::observe::{EagerRefreshInfo, Info, L1Info, L2Info, LabelsInfo};
use crate::Cache;

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
                capacity_bytes: s.tiers.l1.capacity(),
                entries: s.tiers.l1.len() as u64,
                bytes: s.tiers.l1.weight(),
                evictions: s.tiers.l1.evictions(),
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
        let l2 = self.shared.tiers.l2.as_ref()?;
        let now = self.shared.clock.now_millis();
        let (host, port) = l2.current_server();
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
