//! The counters in the Prometheus text exposition format (0.0.4).

use std::fmt::{self, Write as _};
use std::sync::Arc;

use crate::observe::hist::{Histogram, LOOKUP_BUCKETS_NS as BUCKETS_NS};
use crate::observe::labels::{field, SERIES};
use crate::observe::{Health, HealthStatus, Latency};
use crate::{BreakerState, Cache, Stats, UpstreamBreaker};

impl Cache {
    /// The cache's counters, gauges and latency histograms in the
    /// Prometheus text exposition format (version 0.0.4), for a `/metrics`
    /// endpoint (the admin service serves it there).
    ///
    /// - counters: `tower_cache_requests_total{result,tier,label}` (per
    ///   label; `result` is `hit`, `stale`, `miss`, `coalesced`,
    ///   `revalidated` or `pass`, `tier` is `l1` or `l2` for hits and
    ///   `none` otherwise; a request answered from a cache tier while it
    ///   waited on another request's flight is a `hit` of that tier,
    ///   `coalesced` only when the flight reached the origin),
    ///   `tower_cache_stale_served_total`,
    ///   `tower_cache_coalesced_total`, `tower_cache_stores_total`,
    ///   `tower_cache_evictions_total`, `tower_cache_promotions_total`,
    ///   `tower_cache_l1_not_admitted_total` (entries the L1 admission
    ///   rule kept in L2 only),
    ///   `tower_cache_upstream_calls_total`,
    ///   `tower_cache_upstream_errors_total`,
    ///   `tower_cache_refreshes_total{outcome}`,
    ///   `tower_cache_adaptive_ttl_total{change}` (`lengthened`,
    ///   `shortened`: entries stored with a TTL adaptive TTL changed),
    ///   `tower_cache_hot_refreshes_total` (started by `refresh_hot`),
    ///   `tower_cache_prefetches_total{outcome}` (`queued`, `dropped`,
    ///   `warmed`, `skipped`, `failed`: see
    ///   [`PrefetchStats`](crate::PrefetchStats)),
    ///   `tower_cache_leases_total{outcome}` (`taken`, `waited`,
    ///   `taken_over`, `local`: see [`LeaseStats`](crate::LeaseStats)),
    ///   `tower_cache_breaker_opens_total{breaker}` (`upstream` sums the
    ///   labels' breakers), `tower_cache_upstream_breaker_opens_total{label}`
    ///   and, with an L2 tier,
    ///   `tower_cache_l2_errors_total{kind}` (`error`, `timeout`,
    ///   `timeout_slow_host`: the timeouts a `PING` showed were this host's
    ///   lateness, not Redis's, a subset of `timeout`; `decode`,
    ///   `write_dropped`) and `tower_cache_l2_events_total{event}`
    ///   (`variants_evicted`: variants deleted to keep a URL within
    ///   `max_variants`; `coherence_resets`: L1 cleared because the
    ///   invalidation log no longer held what this instance missed;
    ///   `invalidations_dropped`: invalidations queued while Redis was
    ///   unreachable beyond the queue's bound, replaced by a clear);
    /// - gauges: `tower_cache_l1_entries`, `tower_cache_l1_bytes`,
    ///   `tower_cache_l1_capacity_bytes`, `tower_cache_in_flight`,
    ///   `tower_cache_hit_ratio`, `tower_cache_window_hit_ratio` (the last
    ///   five minutes; both the share of lookups answered without the
    ///   origin, see [`Stats::hit_ratio`](crate::Stats::hit_ratio)),
    ///   `tower_cache_health{status}` (1 for the current
    ///   status, 0 for the others), `tower_cache_upstream_breaker_open`
    ///   (1 while any upstream breaker is open),
    ///   `tower_cache_upstream_breaker_state{label,state}` (per label whose
    ///   breaker has opened: 1 for `closed`, `open` or `half_open`, 0 for
    ///   the others),
    ///   `tower_cache_upstream_breaker_opened_timestamp_seconds{label,state}`
    ///   (while not closed: when it opened) and, with an L2 tier,
    ///   `tower_cache_l2_breaker_open`;
    /// - histograms: `tower_cache_hit_duration_seconds` and
    ///   `tower_cache_miss_duration_seconds` (time in the cache layer),
    ///   buckets from 1 µs to 10 s. Bucket counts come from the cache's
    ///   own log-linear histogram and are exact to within its resolution
    ///   (12.5 %): a bucket counts the recordings known to be at most `le`.
    ///
    /// Each has an OpenTelemetry instrument of the same name by the
    /// OpenTelemetry→Prometheus rules (`tower_cache.requests` for
    /// `tower_cache_requests_total`, `tower_cache.hit.duration` in `s` for
    /// `tower_cache_hit_duration_seconds`), with the same label keys; the
    /// README's table lists them.
    ///
    /// ```
    /// let cache = tower_tiered_cache::Cache::builder().build().unwrap();
    /// let text = cache.prometheus();
    /// assert!(text.contains("# TYPE tower_cache_requests_total counter"));
    /// assert!(text.contains("tower_cache_health{status=\"healthy\"} 1\n"));
    /// ```
    pub fn prometheus(&self) -> String {
        let st = self.stats();
        let health = self.health();
        let mut out = String::with_capacity(4096 + st.labels.len() * 7 * 96);
        let w = &mut out;
        self.write_requests_by_label(w, &st);
        write_event_totals(w, &st);
        write_refreshes(w, &st);
        write_ttl_changes(w, &st);
        write_prefetches(w, &st);
        write_leases(w, &st);
        self.write_breaker_opens(w, &st);
        write_l2_errors_and_breaker(w, &st);
        write_l1_and_in_flight(w, &st);
        write_hit_ratios(w, &st);
        write_health(w, &health);
        self.write_upstream_breakers(w, &st);
        self.write_latency_histograms(w, &st);
        out
    }

    /// `tower_cache_requests_total{result,tier,label}`: one series per
    /// outcome for each label that has counted anything.
    fn write_requests_by_label(&self, w: &mut String, st: &Stats) {
        header(
            w,
            "tower_cache_requests_total",
            "counter",
            "Requests through the cache by result, tier and label.",
        );
        for (label, c) in &self.request_counts_by_label(st) {
            if SERIES.iter().all(|series| c[series.field] == 0) {
                continue;
            }
            for series in SERIES {
                sample(
                    w,
                    "tower_cache_requests_total",
                    &[
                        ("result", series.result),
                        ("tier", series.tier),
                        ("label", label),
                    ],
                    c[series.field],
                );
            }
        }
    }

    /// The per-label request counts; without per-request instrumentation
    /// there are none, and the global counts stand in, as `default`.
    fn request_counts_by_label(&self, st: &Stats) -> Vec<(Arc<str>, [u64; field::COUNT])> {
        if self.shared.obs.cfg.enabled {
            return self.shared.obs.labels.all();
        }
        let mut c = [0u64; field::COUNT];
        c[field::HIT_L1] = st.hits_l1;
        c[field::HIT_L2] = st.hits_l2;
        c[field::STALE] = st.stale;
        c[field::MISS] = st.misses;
        c[field::COALESCED] = st.coalesced;
        c[field::REVALIDATED] = st.revalidated;
        c[field::PASS] = st.passes;
        c[field::CANCELLED] = st.cancelled;
        vec![(crate::observe::DEFAULT.into(), c)]
    }

    /// `tower_cache_breaker_opens_total{breaker}`: the upstream breakers'
    /// sum and, with an L2 tier, the L2 breaker.
    fn write_breaker_opens(&self, w: &mut String, st: &Stats) {
        header(
            w,
            "tower_cache_breaker_opens_total",
            "counter",
            "Circuit breaker transitions to open, by breaker.",
        );
        sample(
            w,
            "tower_cache_breaker_opens_total",
            &[("breaker", "upstream")],
            st.breaker_opens,
        );
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.shared.tiers.l2 {
            sample(
                w,
                "tower_cache_breaker_opens_total",
                &[("breaker", "l2")],
                l2.breaker.opens(),
            );
        }
    }

    /// The upstream breakers: whether any is open, then, per label whose
    /// breaker has opened at least once (a bounded set, like the labels,
    /// so a closed one reads 0 rather than vanishing), its state, when it
    /// opened and how often.
    fn write_upstream_breakers(&self, w: &mut String, st: &Stats) {
        gauge(
            w,
            "tower_cache_upstream_breaker_open",
            "1 while the upstream circuit breaker is open, else 0.",
            u8::from(st.breaker == BreakerState::Open),
        );
        let seen = self.upstream_breakers_seen();
        write_upstream_breaker_states(w, &seen);
        write_upstream_breaker_opened_at(w, &seen);
        header(
            w,
            "tower_cache_upstream_breaker_opens_total",
            "counter",
            "Upstream circuit breaker transitions to open, by label.",
        );
        for b in &seen {
            sample(
                w,
                "tower_cache_upstream_breaker_opens_total",
                &[("label", &b.label)],
                b.opens,
            );
        }
    }

    /// The hit and miss latency histograms.
    fn write_latency_histograms(&self, w: &mut String, st: &Stats) {
        let obs = &self.shared.obs;
        histogram(
            w,
            "tower_cache_hit_duration_seconds",
            "Time in the cache layer for requests answered from storage.",
            &obs.hit_latency,
            &st.hit_latency,
        );
        histogram(
            w,
            "tower_cache_miss_duration_seconds",
            "Time in the cache layer (upstream included) for lookups that missed.",
            &obs.miss_latency,
            &st.miss_latency,
        );
    }
}

/// The unlabelled event counters: stale served, coalesced, stores,
/// evictions, promotions, entries kept out of L1, upstream calls and
/// errors, hot-key refreshes.
fn write_event_totals(w: &mut String, st: &Stats) {
    let totals: [(&str, &str, u64); 9] = [
        (
            "tower_cache_stale_served_total",
            "Stale entries served.",
            st.stale,
        ),
        (
            "tower_cache_coalesced_total",
            "Requests answered from another request's upstream call.",
            st.coalesced,
        ),
        ("tower_cache_stores_total", "Responses stored.", st.stores),
        (
            "tower_cache_evictions_total",
            "Entries evicted from L1 to make room.",
            st.evictions,
        ),
        (
            "tower_cache_promotions_total",
            "L2 entries copied into L1.",
            st.promotions,
        ),
        (
            "tower_cache_l1_not_admitted_total",
            "Entries the L1 admission rule kept in L2 only.",
            st.l1_not_admitted,
        ),
        (
            "tower_cache_upstream_calls_total",
            "Upstream calls made by the cache.",
            st.upstream_calls,
        ),
        (
            "tower_cache_upstream_errors_total",
            "Upstream calls that failed or answered 5xx.",
            st.upstream_errors,
        ),
        (
            "tower_cache_hot_refreshes_total",
            "Background refreshes started by refresh_hot.",
            st.hot_refreshes,
        ),
    ];
    for (name, help, v) in totals {
        header(w, name, "counter", help);
        sample(w, name, &[], v);
    }
}

/// `tower_cache_adaptive_ttl_total{change}`.
fn write_ttl_changes(w: &mut String, st: &Stats) {
    counter_by(
        w,
        "tower_cache_adaptive_ttl_total",
        "Entries stored with a TTL adaptive TTL changed, by change.",
        "change",
        &st.ttl_changes(),
    );
}

/// `tower_cache_refreshes_total{outcome}`.
fn write_refreshes(w: &mut String, st: &Stats) {
    counter_by(
        w,
        "tower_cache_refreshes_total",
        "Background refreshes by outcome.",
        "outcome",
        &[
            ("ok", st.refresh_ok),
            ("failed", st.refresh_failed),
            ("skipped", st.refresh_skipped),
        ],
    );
}

/// `tower_cache_prefetches_total{outcome}`.
fn write_prefetches(w: &mut String, st: &Stats) {
    counter_by(
        w,
        "tower_cache_prefetches_total",
        "URLs prefetched after reads, by outcome.",
        "outcome",
        &st.prefetch.outcomes(),
    );
}

/// `tower_cache_leases_total{outcome}`.
fn write_leases(w: &mut String, st: &Stats) {
    counter_by(
        w,
        "tower_cache_leases_total",
        "Distributed coalescing: flight leaders by what their lease came to.",
        "outcome",
        &st.leases.outcomes(),
    );
}

/// With an L2 tier: `tower_cache_l2_errors_total{kind}`,
/// `tower_cache_l2_events_total{event}` and `tower_cache_l2_breaker_open`.
fn write_l2_errors_and_breaker(w: &mut String, st: &Stats) {
    let Some(l2_breaker) = st.l2_breaker else {
        return;
    };
    counter_by(
        w,
        "tower_cache_l2_errors_total",
        "L2 operations that failed, by kind.",
        "kind",
        &[
            ("error", st.l2_errors),
            ("timeout", st.l2_timeouts),
            ("timeout_slow_host", st.l2_timeouts_slow_host),
            ("decode", st.l2_decode_errors),
            ("write_dropped", st.l2_writes_dropped),
        ],
    );
    counter_by(
        w,
        "tower_cache_l2_events_total",
        "L2 events that cost coherence or storage, by kind.",
        "event",
        &[
            ("variants_evicted", st.l2_variants_evicted),
            ("coherence_resets", st.l2_coherence_resets),
            ("invalidations_dropped", st.l2_invalidations_dropped),
        ],
    );
    gauge(
        w,
        "tower_cache_l2_breaker_open",
        "1 while the L2 circuit breaker is open, else 0.",
        u8::from(l2_breaker == BreakerState::Open),
    );
}

/// L1's size gauges and the number of joinable upstream calls.
fn write_l1_and_in_flight(w: &mut String, st: &Stats) {
    let gauges: [(&str, &str, u64); 4] = [
        (
            "tower_cache_l1_entries",
            "Slots in L1 (entries plus one per URL with variants).",
            st.l1_entries,
        ),
        (
            "tower_cache_l1_bytes",
            "Weighted bytes held in L1.",
            st.l1_bytes,
        ),
        (
            "tower_cache_l1_capacity_bytes",
            "L1 capacity in bytes.",
            st.l1_capacity_bytes,
        ),
        (
            "tower_cache_in_flight",
            "Upstream calls in flight that others may join.",
            st.in_flight,
        ),
    ];
    for (name, help, v) in gauges {
        gauge(w, name, help, v);
    }
}

/// The hit ratio since start (or reset) and over the last five minutes.
fn write_hit_ratios(w: &mut String, st: &Stats) {
    gauge(
        w,
        "tower_cache_hit_ratio",
        "Lookups answered from storage (fresh or stale) over all lookups, since start or reset.",
        Float(st.hit_ratio),
    );
    gauge(
        w,
        "tower_cache_window_hit_ratio",
        "Lookups answered from storage over all lookups in the last five minutes.",
        Float(st.window.hit_ratio),
    );
}

/// `tower_cache_health{status}`: 1 for the current status, 0 for the others.
fn write_health(w: &mut String, health: &Health) {
    header(
        w,
        "tower_cache_health",
        "gauge",
        "1 for the cache's current health status, 0 for the others.",
    );
    for status in [
        HealthStatus::Healthy,
        HealthStatus::Warning,
        HealthStatus::Degraded,
    ] {
        sample(
            w,
            "tower_cache_health",
            &[("status", status.as_str())],
            u8::from(health.status == status),
        );
    }
}

/// `tower_cache_upstream_breaker_state{label,state}`: 1 for each
/// breaker's current state, 0 for the others.
fn write_upstream_breaker_states(w: &mut String, seen: &[UpstreamBreaker]) {
    header(
        w,
        "tower_cache_upstream_breaker_state",
        "gauge",
        "Upstream circuit breakers by label (those that have opened): 1 for the current state, 0 for the others.",
    );
    for b in seen {
        for state in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
        ] {
            sample(
                w,
                "tower_cache_upstream_breaker_state",
                &[("label", &b.label), ("state", state.as_str())],
                u8::from(b.state == state),
            );
        }
    }
}

/// `tower_cache_upstream_breaker_opened_timestamp_seconds{label,state}`:
/// when each breaker that is not closed opened.
fn write_upstream_breaker_opened_at(w: &mut String, seen: &[UpstreamBreaker]) {
    header(
        w,
        "tower_cache_upstream_breaker_opened_timestamp_seconds",
        "gauge",
        "When each upstream circuit breaker that is not closed opened (Unix time; it has not closed since).",
    );
    for b in seen.iter().filter(|b| b.state != BreakerState::Closed) {
        sample(
            w,
            "tower_cache_upstream_breaker_opened_timestamp_seconds",
            &[("label", &b.label), ("state", b.state.as_str())],
            Float(b.since_ms as f64 / 1000.0),
        );
    }
}

/// An unlabelled gauge: its `# HELP`/`# TYPE` lines and its one sample.
fn gauge(out: &mut String, name: &str, help: &str, value: impl fmt::Display) {
    header(out, name, "gauge", help);
    sample(out, name, &[], value);
}

/// A counter with one label: its `# HELP`/`# TYPE` lines and a sample per
/// `(label value, count)`.
fn counter_by(out: &mut String, name: &str, help: &str, label: &str, counts: &[(&str, u64)]) {
    header(out, name, "counter", help);
    for &(value, n) in counts {
        sample(out, name, &[(label, value)], n);
    }
}

/// `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

/// One sample line.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escape_label(out, v);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value escaped per the format: backslash, double quote, newline.
fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A float as the format spells it (`+Inf`, `-Inf`, `NaN`).
struct Float(f64);

impl fmt::Display for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v.is_infinite() {
            f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
        } else {
            write!(f, "{v}")
        }
    }
}

/// A histogram family: cumulative buckets, `+Inf` and `_count` from one
/// reading of `h`, `_sum` (seconds) from the exact totals in `latency`.
fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram, latency: &Latency) {
    header(out, name, "histogram", help);
    let (counts, total) = h.cumulative(&BUCKETS_NS);
    let sum_seconds = latency.mean_ms * latency.count as f64 / 1e3;
    let bucket = format!("{name}_bucket");
    for (&bound, count) in BUCKETS_NS.iter().zip(counts) {
        let le = Float(bound as f64 / 1e9).to_string();
        sample(out, &bucket, &[("le", &le)], count);
    }
    sample(out, &bucket, &[("le", "+Inf")], total);
    sample(out, &format!("{name}_sum"), &[], Float(sum_seconds));
    sample(out, &format!("{name}_count"), &[], total);
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::Full;
    use prometheus_parse::{Scrape, Value};
    use tower::{service_fn, Layer, ServiceExt};

    use super::*;
    use crate::{CacheLayer, LabelSource};

    fn scrape(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
    }

    fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = s
            .samples
            .iter()
            .filter(|x| {
                x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:?}");
        match &found[0].value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{metric}: {other:?}"),
        }
    }

    #[tokio::test]
    async fn renders_the_counters() {
        let cache = Cache::builder()
            .labels(LabelSource::Host)
            .hit_timing_sample(1)
            .build()
            .unwrap();
        let origin = service_fn(|req: Request<()>| async move {
            let cc = if req.uri().path() == "/nostore" {
                "no-store"
            } else {
                "max-age=60"
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", cc)
                    .body(Full::new(Bytes::from_static(b"x")))
                    .unwrap(),
            )
        });
        let svc = CacheLayer::new(cache.clone()).layer(origin);
        for uri in [
            "http://a.example/1",
            "http://a.example/1",
            "http://a.example/1",
            "http://b.example/1",
            "http://b.example/nostore",
        ] {
            let req = Request::get(uri).body(()).unwrap();
            svc.clone().oneshot(req).await.unwrap();
        }
        let text = cache.prometheus();
        let s = scrape(&text);
        let req = |result, tier, label| {
            value(
                &s,
                "tower_cache_requests_total",
                &[("result", result), ("tier", tier), ("label", label)],
            )
        };
        assert_eq!(req("hit", "l1", "a.example"), 2.0);
        assert_eq!(req("miss", "none", "a.example"), 1.0);
        assert_eq!(req("miss", "none", "b.example"), 2.0);
        assert_eq!(req("hit", "l2", "b.example"), 0.0);
        assert_eq!(value(&s, "tower_cache_stores_total", &[]), 2.0);
        assert_eq!(value(&s, "tower_cache_upstream_calls_total", &[]), 3.0);
        assert_eq!(value(&s, "tower_cache_l1_entries", &[]), 2.0);
        assert!((value(&s, "tower_cache_hit_ratio", &[]) - 0.4).abs() < 1e-9);
        assert_eq!(
            value(&s, "tower_cache_refreshes_total", &[("outcome", "ok")]),
            0.0
        );
        assert_eq!(
            value(&s, "tower_cache_health", &[("status", "healthy")]),
            1.0
        );
        assert_eq!(
            value(&s, "tower_cache_health", &[("status", "degraded")]),
            0.0
        );
        assert!(!text.contains("tower_cache_l2_errors_total"));

        let hist = |name: &str| {
            s.samples
                .iter()
                .find(|x| x.metric == name)
                .map(|x| match &x.value {
                    Value::Histogram(b) => b.clone(),
                    other => panic!("{name}: {other:?}"),
                })
                .unwrap()
        };
        let hits = hist("tower_cache_hit_duration_seconds");
        assert_eq!(hits.len(), BUCKETS_NS.len() + 1);
        assert!(hits.windows(2).all(|w| w[0].count <= w[1].count));
        let last = hits.last().unwrap();
        assert!(last.less_than.is_infinite());
        assert_eq!(last.count, 2.0);
        assert_eq!(
            value(&s, "tower_cache_hit_duration_seconds_count", &[]),
            2.0
        );
        assert_eq!(
            value(&s, "tower_cache_miss_duration_seconds_count", &[]),
            3.0
        );
        assert!(value(&s, "tower_cache_miss_duration_seconds_sum", &[]) > 0.0);

        // Every family has its HELP and TYPE, and every sample a family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
                })
                .unwrap_or(name);
            assert!(text.contains(&format!("# HELP {family} ")), "{line}");
            assert!(text.contains(&format!("# TYPE {family} ")), "{line}");
        }
    }

    #[tokio::test]
    async fn global_counts_without_per_request_instrumentation() {
        let cache = Cache::builder().observability(false).build().unwrap();
        let origin = service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", "max-age=60")
                    .body(Full::new(Bytes::from_static(b"x")))
                    .unwrap(),
            )
        });
        let svc = CacheLayer::new(cache.clone()).layer(origin);
        for _ in 0..3 {
            let req = Request::get("http://a.example/1").body(()).unwrap();
            svc.clone().oneshot(req).await.unwrap();
        }
        let s = scrape(&cache.prometheus());
        let req = |result, tier| {
            value(
                &s,
                "tower_cache_requests_total",
                &[("result", result), ("tier", tier), ("label", "default")],
            )
        };
        assert_eq!((req("hit", "l1"), req("miss", "none")), (2.0, 1.0));
    }

    #[test]
    fn escapes_label_values() {
        let cache = Cache::builder()
            .label_fn(|_| Some("a\"b\\c\nd".to_owned()))
            .build()
            .unwrap();
        let i = cache.shared.obs.labels.resolve("a\"b\\c\nd");
        cache
            .shared
            .obs
            .labels
            .counters(i)
            .add(crate::observe::labels::field::MISS, 1);
        let text = cache.prometheus();
        assert!(
            text.contains(
                "tower_cache_requests_total{result=\"miss\",tier=\"none\",label=\"a\\\"b\\\\c\\nd\"} 1\n"
            ),
            "{text}"
        );
        assert_eq!(Float(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Float(f64::NAN).to_string(), "NaN");
        assert_eq!(Float(0.0000025).to_string(), "0.0000025");
        assert_eq!(Float(10.0).to_string(), "10");
    }
}
