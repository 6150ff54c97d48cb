//! The upstream circuit breakers, one per request label, through a
//! `CacheLayer`: what opens one (transport errors, timeouts, 502/503/504;
//! not a 500, which is that URL's answer), that it spares only its own
//! label's upstream, how a probe closes or re-opens it, and that stats,
//! health, Prometheus, OpenTelemetry and the admin service name every open
//! breaker by label.
//!
//! Labels here are the upstream hosts (`LabelSource::Auto` on absolute
//! request URIs). Time is a `ManualClock` moved by hand (and tokio's
//! paused time where a refresh must time out); no test sleeps for a TTL.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use tower_tiered_cache::{
    BreakerState, Cache, Clock, HealthStatus, HealthThresholds, ManualClock, UpstreamBreaker,
};

use support::*;

/// What a host's origin does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// 200 (304 to a conditional request) with `Cache-Control: cc`.
    Up(&'static str),
    /// Answers with this status.
    Status(u16),
    /// The inner service fails (a transport error).
    Fail,
    /// Never answers.
    Hang,
}

/// Origins by host, switched by the test.
#[derive(Clone, Default)]
struct Hosts(Arc<Mutex<HashMap<String, Mode>>>);

impl Hosts {
    fn set(&self, host: &str, mode: Mode) {
        self.0.lock().unwrap().insert(host.to_owned(), mode);
    }

    fn mode(&self, host: &str) -> Mode {
        self.0
            .lock()
            .unwrap()
            .get(host)
            .copied()
            .unwrap_or(Mode::Up("max-age=60, stale-if-error=300"))
    }
}

/// One origin serving every host by its mode, except that paths under
/// `/broken` answer 500 on every host; every body names the URL and the
/// call (`http://a.example/x #1`).
fn origin_by_host(hosts: &Hosts) -> (Origin<Full<Bytes>, OriginError>, Log) {
    let hosts = hosts.clone();
    let never = Gate::new();
    origin_fn(move |n, req| {
        let mode = hosts.mode(req.uri().host().unwrap_or(""));
        let never = never.clone();
        let conditional = req.headers().contains_key("if-none-match");
        let body = format!("{} #{}", req.uri(), n + 1);
        let broken = req.uri().path().starts_with("/broken");
        async move {
            if broken {
                return Ok(response(500, &[], "this URL fails"));
            }
            match mode {
                Mode::Up(cc) if conditional => Ok(response(
                    304,
                    &[("cache-control", cc), ("etag", "\"e\"")],
                    "",
                )),
                Mode::Up(cc) => Ok(response(
                    200,
                    &[("cache-control", cc), ("etag", "\"e\"")],
                    &body,
                )),
                Mode::Status(code) => Ok(response(code, &[], "upstream says no")),
                Mode::Fail => Err(OriginError("connection refused")),
                Mode::Hang => {
                    never.pass().await;
                    Err(OriginError("unreachable"))
                }
            }
        }
    })
}

/// Calls the origin received for `host`.
fn calls_to(log: &Log, host: &str) -> usize {
    (0..log.calls())
        .filter(|&i| log.request(i).uri.host() == Some(host))
        .count()
}

fn breaker(cache: &Cache, label: &str) -> Option<UpstreamBreaker> {
    cache
        .upstream_breakers()
        .into_iter()
        .find(|b| b.label == label)
}

fn labels(cache: &Cache) -> Vec<String> {
    cache
        .upstream_breakers()
        .into_iter()
        .map(|b| b.label)
        .collect()
}

const NO_CACHE: &[(&str, &str)] = &[("cache-control", "no-cache")];

// ---------------------------------------------------------------------------
// (1) A 500 is the URL's answer, not proof the upstream is down
// ---------------------------------------------------------------------------

/// The scenario: 8 responses with status 500 on other paths (on
/// another label, then on the same label), then a `no-cache` request on a
/// healthy path. With one global breaker counting every 5xx, the 500s
/// opened it and the healthy path was answered from stale-if-error for
/// 30 s without asking its origin.
#[tokio::test]
async fn five_hundreds_on_other_paths_do_not_stop_a_no_cache_revalidation() {
    let clock = clock();
    // Default breaker: 5 failures, 30 s.
    let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    let hosts = Hosts::default();
    hosts.set("broken.example", Mode::Status(500));
    let (origin, log) = origin_by_host(&hosts);
    let svc = cached(&cache, origin);
    let page = "http://healthy.example/page";
    let r = send(&svc, get(page)).await;
    assert!(cache_status(&r).contains("stored"), "{}", cache_status(&r));
    assert_eq!(log.calls(), 1);

    // Another label: 8 × 500.
    for i in 0..8 {
        let r = send(&svc, get(&format!("http://broken.example/p{i}"))).await;
        assert_eq!(r.status(), 500);
    }
    assert_eq!(log.calls(), 9);
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
    let r = send(&svc, get_with(page, NO_CACHE)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=request; fwd-status=304; detail=l1",
        "the healthy origin was asked"
    );
    assert_eq!(log.calls(), 10, "the healthy origin was asked");
    assert_eq!(log.last().header("if-none-match"), Some("\"e\""));

    // Same label, other paths: 8 × 500.
    for i in 0..8 {
        let r = send(&svc, get(&format!("http://healthy.example/broken{i}"))).await;
        assert_eq!(r.status(), 500);
    }
    assert_eq!(log.calls(), 18);
    let r = send(&svc, get_with(page, &[("pragma", "no-cache")])).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=request; fwd-status=304; detail=l1"
    );
    assert_eq!(log.calls(), 19, "the healthy origin was asked");

    let st = cache.stats();
    assert_eq!(st.stale_if_error, 0);
    assert_eq!(st.breaker, BreakerState::Closed);
    assert_eq!(st.breaker_opens, 0);
    assert!(
        st.upstream_breakers.is_empty(),
        "{:?}",
        st.upstream_breakers
    );
    assert_eq!(st.upstream_errors, 16, "500s are still upstream errors");
}

/// A 500 is still an error for stale-if-error (unchanged): the stale entry
/// answers it; it just does not feed the breaker.
#[tokio::test]
async fn a_500_still_serves_stale_if_error_but_never_opens_the_breaker() {
    let clock = clock();
    let cache = Cache::builder()
        .clock(clock.clone())
        .circuit_breaker(1, secs(30))
        .build()
        .unwrap();
    let hosts = Hosts::default();
    hosts.set("a.example", Mode::Up("max-age=1, stale-if-error=300"));
    let (origin, log) = origin_by_host(&hosts);
    let svc = cached(&cache, origin);
    let url = "http://a.example/x";
    send(&svc, get(url)).await;
    clock.advance(secs(2));
    hosts.set("a.example", Mode::Status(500));
    for n in 2..5 {
        let r = send(&svc, get(url)).await;
        assert_eq!(
            cache_status(&r),
            "tower-tiered-cache; fwd=stale; fwd-status=500; ttl=-1; detail=stale-if-error"
        );
        assert_eq!(body(r).await, "http://a.example/x #1");
        assert_eq!(log.calls(), n, "every request asked the origin");
    }
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
    assert_eq!(cache.stats().stale_if_error, 3);
}

// ---------------------------------------------------------------------------
// (2) What means "down" opens that label's breaker only
// ---------------------------------------------------------------------------

#[tokio::test]
async fn gateway_statuses_and_transport_errors_open_only_their_labels_breaker() {
    let clock = clock();
    let cache = Cache::builder()
        .clock(clock.clone())
        .circuit_breaker(4, secs(30))
        .build()
        .unwrap();
    let hosts = Hosts::default();
    let cc = "max-age=1, stale-if-error=300";
    hosts.set("a.example", Mode::Up(cc));
    hosts.set("b.example", Mode::Up(cc));
    let (origin, log) = origin_by_host(&hosts);
    let svc = cached(&cache, origin);
    let (a, b) = ("http://a.example/x", "http://b.example/x");
    send(&svc, get(a)).await;
    send(&svc, get(b)).await;
    clock.advance(secs(2));
    let opened_at = clock.now_millis();

    for (i, mode) in [
        Mode::Status(502),
        Mode::Status(503),
        Mode::Status(504),
        Mode::Fail,
    ]
    .into_iter()
    .enumerate()
    {
        assert!(labels(&cache).is_empty(), "opened after {i} failures");
        hosts.set("a.example", mode);
        let r = send(&svc, get(a)).await;
        let expected = match mode {
            Mode::Status(code) => format!(
                "tower-tiered-cache; fwd=stale; fwd-status={code}; ttl=-1; detail=stale-if-error"
            ),
            _ => "tower-tiered-cache; fwd=stale; ttl=-1; detail=stale-if-error".to_owned(),
        };
        assert_eq!(cache_status(&r), expected);
        assert_eq!(body(r).await, "http://a.example/x #1");
    }
    assert_eq!(calls_to(&log, "a.example"), 5);
    let open = breaker(&cache, "a.example").expect("a's breaker is open");
    assert_eq!(open.state, BreakerState::Open);
    assert_eq!(open.since_ms, opened_at);
    assert_eq!(open.probe_at_ms, opened_at + 30_000);
    assert_eq!(open.consecutive_failures, 4);
    assert_eq!(open.opens, 1);
    assert_eq!(labels(&cache), ["a.example"]);
    assert_eq!(
        cache.breaker_state(),
        BreakerState::Open,
        "the worst of all"
    );

    // A's upstream is spared while the stale entry answers...
    for _ in 0..3 {
        let r = send(&svc, get(a)).await;
        assert_eq!(
            cache_status(&r),
            "tower-tiered-cache; hit; ttl=-1; detail=stale-if-error"
        );
    }
    assert_eq!(calls_to(&log, "a.example"), 5, "the open breaker spared a");

    // ...while B's requests still go to B's origin.
    for n in 2..5 {
        let r = send(&svc, get_with(b, NO_CACHE)).await;
        assert_eq!(
            cache_status(&r),
            "tower-tiered-cache; fwd=request; fwd-status=304; detail=l1"
        );
        assert_eq!(calls_to(&log, "b.example"), n);
    }
    assert_eq!(labels(&cache), ["a.example"]);
}

/// A background refresh that times out counts against its label (and
/// only its label).
#[tokio::test(start_paused = true)]
async fn refresh_timeouts_open_only_their_labels_breaker() {
    let clock = clock();
    let cache = Cache::builder()
        .clock(clock.clone())
        .circuit_breaker(2, secs(30))
        .refresh_timeout(secs(1))
        .build()
        .unwrap();
    let hosts = Hosts::default();
    let cc = "max-age=1, stale-while-revalidate=600";
    hosts.set("a.example", Mode::Up(cc));
    hosts.set("b.example", Mode::Up(cc));
    let (origin, log) = origin_by_host(&hosts);
    let svc = cached(&cache, origin);
    let (a, b) = ("http://a.example/x", "http://b.example/x");
    send(&svc, get(a)).await;
    send(&svc, get(b)).await;
    clock.advance(secs(2));
    hosts.set("a.example", Mode::Hang);

    for failed in 1..=2 {
        assert!(labels(&cache).is_empty());
        let r = send(&svc, get(a)).await;
        assert_eq!(
            cache_status(&r),
            "tower-tiered-cache; hit; ttl=-1; detail=l1"
        );
        assert!(
            eventually(|| cache.stats().refresh_failed == failed).await,
            "{:?}",
            cache.stats()
        );
    }
    assert_eq!(calls_to(&log, "a.example"), 3);
    assert_eq!(labels(&cache), ["a.example"]);
    assert_eq!(
        breaker(&cache, "a.example").unwrap().state,
        BreakerState::Open
    );

    // A's refreshes wait; B's go on.
    send(&svc, get(a)).await;
    settle().await;
    assert_eq!(cache.stats().refresh_skipped, 1);
    assert_eq!(calls_to(&log, "a.example"), 3);
    send(&svc, get(b)).await;
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);
    assert_eq!(calls_to(&log, "b.example"), 2);
    assert_eq!(labels(&cache), ["a.example"]);
}

// ---------------------------------------------------------------------------
// (3) Probes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_half_open_probe_closes_the_breaker_and_a_failed_one_reopens_it() {
    let clock = clock();
    let cache = Cache::builder()
        .clock(clock.clone())
        .circuit_breaker(1, secs(30))
        .build()
        .unwrap();
    let hosts = Hosts::default();
    hosts.set("a.example", Mode::Up("max-age=1, stale-if-error=600"));
    let (origin, log) = origin_by_host(&hosts);
    let svc = cached(&cache, origin);
    let a = "http://a.example/x";
    send(&svc, get(a)).await;
    clock.advance(secs(2));
    let opened_at = clock.now_millis();
    hosts.set("a.example", Mode::Status(503));
    send(&svc, get(a)).await;
    assert_eq!(
        breaker(&cache, "a.example").unwrap().state,
        BreakerState::Open
    );
    send(&svc, get(a)).await;
    assert_eq!(log.calls(), 2, "spared while open");

    // After the open period: half-open; the next request is the probe. It
    // fails: open again for another period, still "since" the first time.
    clock.advance(secs(30));
    assert_eq!(
        breaker(&cache, "a.example").unwrap().state,
        BreakerState::HalfOpen
    );
    assert_eq!(cache.breaker_state(), BreakerState::HalfOpen);
    let r = send(&svc, get(a)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=stale; fwd-status=503; ttl=-31; detail=stale-if-error"
    );
    assert_eq!(log.calls(), 3, "the probe went to the origin");
    let b = breaker(&cache, "a.example").unwrap();
    assert_eq!(b.state, BreakerState::Open, "the failed probe re-opened it");
    assert_eq!((b.since_ms, b.opens), (opened_at, 2));
    assert_eq!(b.probe_at_ms, clock.now_millis() + 30_000);
    send(&svc, get(a)).await;
    assert_eq!(log.calls(), 3, "spared again");

    // The origin is back; the next probe closes the breaker.
    clock.advance(secs(30));
    hosts.set("a.example", Mode::Up("max-age=60, stale-if-error=600"));
    let r = send(&svc, get(a)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=stale; fwd-status=304; detail=l1"
    );
    assert_eq!(log.calls(), 4);
    assert!(cache.upstream_breakers().is_empty());
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
    let r = send(&svc, get(a)).await;
    assert_eq!(cache_status(&r), "tower-tiered-cache; hit; detail=l1");
    assert_eq!(cache.stats().breaker_opens, 2);
}

// ---------------------------------------------------------------------------
// (4) Every view names the open breaker by label
// ---------------------------------------------------------------------------

/// A cache with b.example's breaker open (a 502) and a.example healthy.
async fn one_open_breaker() -> (Cache, ManualClock, Svc<Full<Bytes>, OriginError>, Hosts) {
    let clock = clock();
    let cache = Cache::builder()
        .clock(clock.clone())
        .circuit_breaker(1, secs(30))
        .health_thresholds(
            HealthThresholds::new()
                .degraded_mean_latency(secs(10))
                .warning_p95(secs(10)),
        )
        .build()
        .unwrap();
    let hosts = Hosts::default();
    hosts.set("b.example", Mode::Status(502));
    let (origin, _log) = origin_by_host(&hosts);
    let svc = cached(&cache, origin);
    send(&svc, get("http://a.example/x")).await;
    clock.advance(secs(2));
    let r = send(&svc, get("http://b.example/x")).await;
    assert_eq!(r.status(), 502);
    (cache, clock, svc, hosts)
}

#[tokio::test]
async fn open_breakers_show_in_stats_health_and_prometheus_by_label() {
    let (cache, clock, svc, hosts) = one_open_breaker().await;
    let since = clock.now_millis();

    let st = cache.stats();
    assert_eq!(st.breaker, BreakerState::Open);
    assert_eq!(st.breaker_opens, 1);
    assert_eq!(st.upstream_breakers.len(), 1, "{:?}", st.upstream_breakers);
    let b = &st.upstream_breakers[0];
    assert_eq!(b.label, "b.example");
    assert_eq!(b.state, BreakerState::Open);
    assert_eq!((b.since_ms, b.probe_at_ms), (since, since + 30_000));
    assert_eq!((b.consecutive_failures, b.opens), (1, 1));

    clock.advance(secs(5));
    let h = cache.health();
    assert_eq!(h.status, HealthStatus::Warning, "{h:?}");
    assert_eq!(h.upstream_breakers, cache.upstream_breakers());
    assert_eq!(h.reasons.len(), 1, "{h:?}");
    assert!(
        h.reasons[0].contains("\"b.example\"")
            && h.reasons[0].contains("open")
            && h.reasons[0].contains("5 s ago"),
        "{h:?}"
    );

    let text = cache.prometheus();
    for line in [
        "tower_cache_upstream_breaker_open 1\n",
        "tower_cache_upstream_breaker_state{label=\"b.example\",state=\"open\"} 1\n",
        "tower_cache_upstream_breaker_state{label=\"b.example\",state=\"closed\"} 0\n",
        "tower_cache_upstream_breaker_state{label=\"b.example\",state=\"half_open\"} 0\n",
        "tower_cache_upstream_breaker_opened_timestamp_seconds{label=\"b.example\",state=\"open\"} 1700000002\n",
        "tower_cache_upstream_breaker_opens_total{label=\"b.example\"} 1\n",
        "tower_cache_breaker_opens_total{breaker=\"upstream\"} 1\n",
    ] {
        assert!(text.contains(line), "{line} not in\n{text}");
    }
    assert!(!text.contains("label=\"a.example\",state="), "{text}");

    // Closed again: the series stay (at closed), the timestamp goes.
    clock.advance(secs(30));
    hosts.set("b.example", Mode::Up("max-age=60"));
    send(&svc, get("http://b.example/x")).await;
    assert!(cache.upstream_breakers().is_empty());
    assert_eq!(cache.health().status, HealthStatus::Healthy);
    let text = cache.prometheus();
    assert!(
        text.contains("tower_cache_upstream_breaker_open 0\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "tower_cache_upstream_breaker_state{label=\"b.example\",state=\"closed\"} 1\n"
        ),
        "{text}"
    );
    assert!(
        !text.contains("tower_cache_upstream_breaker_opened_timestamp_seconds{"),
        "{text}"
    );
}

#[cfg(feature = "admin")]
#[tokio::test]
async fn the_admin_service_lists_open_breakers_by_label() {
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;
    use tower_tiered_cache::admin::AdminService;

    let (cache, clock, _svc, _hosts) = one_open_breaker().await;
    let since = clock.now_millis();
    let admin = AdminService::without_auth(cache.clone());
    let get_json = |path: &'static str| {
        let admin = admin.clone();
        async move {
            let r = admin
                .oneshot(http::Request::get(path).body(String::new()).unwrap())
                .await
                .unwrap();
            let status = r.status();
            let bytes = r.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&bytes).unwrap())
        }
    };

    let (status, v) = get_json("/breakers").await;
    assert_eq!(status, 200);
    assert_eq!(
        v,
        serde_json::json!([{
            "label": "b.example",
            "state": "open",
            "since_ms": since,
            "probe_at_ms": since + 30_000,
            "consecutive_failures": 1,
            "opens": 1,
        }])
    );
    let (_, stats) = get_json("/stats").await;
    assert_eq!(stats["breaker"], "open");
    assert_eq!(stats["upstream_breakers"], v);
    let (status, health) = get_json("/health").await;
    assert_eq!(status, 200, "a warning, not degraded: {health}");
    assert_eq!(health["status"], "warning");
    assert_eq!(health["upstream_breakers"], v);
    assert!(
        health["reasons"][0].as_str().unwrap().contains("b.example"),
        "{health}"
    );
    let r = admin
        .oneshot(http::Request::get("/metrics").body(String::new()).unwrap())
        .await
        .unwrap();
    let text = r.into_body().collect().await.unwrap().to_bytes();
    let text = std::str::from_utf8(&text).unwrap();
    assert!(
        text.contains("tower_cache_upstream_breaker_state{label=\"b.example\",state=\"open\"} 1"),
        "{text}"
    );
}

/// On axum the label is the route template: `/items/{id}` failing opens
/// its breaker, `/users/{id}` on the same app keeps calling its handler.
#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_route_templates_have_breakers_of_their_own() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use axum::body::Body;
    use axum::response::IntoResponse;
    use axum::Router;
    use http::header::CACHE_CONTROL;
    use http::StatusCode;
    use tower::ServiceExt;
    use tower_tiered_cache::CacheLayer;

    let clock = clock();
    let cache = Cache::builder()
        .clock(clock.clone())
        .circuit_breaker(2, secs(30))
        .build()
        .unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let (items, users) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let handler = |calls: &Arc<AtomicUsize>, down: Option<Arc<AtomicBool>>| {
        let calls = Arc::clone(calls);
        axum::routing::get(move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            if down.is_some_and(|d| d.load(Ordering::SeqCst)) {
                return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
            }
            ([(CACHE_CONTROL, "max-age=1, stale-if-error=300")], "ok").into_response()
        })
    };
    let app = Router::new()
        .route("/items/{id}", handler(&items, Some(Arc::clone(&down))))
        .route("/users/{id}", handler(&users, None))
        .route_layer(CacheLayer::new(cache.clone()));
    let call = |path: &'static str| {
        let app = app.clone();
        async move {
            let r = app
                .oneshot(http::Request::get(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            (r.status(), cache_status(&r))
        }
    };
    call("/items/1").await;
    call("/users/1").await;
    clock.advance(secs(2));
    down.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let (status, cs) = call("/items/1").await;
        assert_eq!(status, 200);
        assert!(
            cs.contains("fwd-status=503") && cs.contains("stale-if-error"),
            "{cs}"
        );
    }
    assert_eq!(labels(&cache), ["/items/{id}"]);
    assert_eq!(items.load(Ordering::SeqCst), 3);
    let (_, cs) = call("/items/1").await;
    assert!(cs.contains("hit") && cs.contains("stale-if-error"), "{cs}");
    assert_eq!(
        items.load(Ordering::SeqCst),
        3,
        "the open breaker spared /items/{{id}}"
    );
    let (status, cs) = call("/users/1").await;
    assert_eq!(status, 200);
    assert!(cs.contains("fwd=stale; fwd-status=200"), "{cs}");
    assert_eq!(
        users.load(Ordering::SeqCst),
        2,
        "/users/{{id}} still calls its handler"
    );
}

#[cfg(feature = "opentelemetry")]
#[path = "support/meter.rs"]
mod meter;

/// The OpenTelemetry instruments, read through an exporter of our own.
#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};

    use super::*;

    /// One data point: metric name, attributes (sorted), value.
    type Point = (String, Vec<(String, String)>, f64);

    fn attrs<'a>(kvs: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = kvs
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect();
        v.sort();
        v
    }

    fn points<T: Copy>(name: &str, data: &MetricData<T>, f: fn(T) -> f64, out: &mut Vec<Point>) {
        let point = |a: Vec<(String, String)>, v: T| (name.to_owned(), a, f(v));
        match data {
            MetricData::Gauge(g) => out.extend(
                g.data_points()
                    .map(|p| point(attrs(p.attributes()), p.value())),
            ),
            MetricData::Sum(s) => out.extend(
                s.data_points()
                    .map(|p| point(attrs(p.attributes()), p.value())),
            ),
            _ => {}
        }
    }

    /// Every gauge and sum point of an export.
    fn all_points(metrics: &ResourceMetrics) -> Vec<Point> {
        let mut out = Vec::new();
        for scope in metrics.scope_metrics() {
            for m in scope.metrics() {
                match m.data() {
                    AggregatedMetrics::F64(d) => points(m.name(), d, |v| v, &mut out),
                    // Counts here are small: exact as f64.
                    AggregatedMetrics::U64(d) => points(m.name(), d, |v| v as f64, &mut out),
                    AggregatedMetrics::I64(d) => points(m.name(), d, |v| v as f64, &mut out),
                }
            }
        }
        out
    }

    fn value(points: &[Point], name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let mut want: Vec<(String, String)> = want
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        want.sort();
        points
            .iter()
            .find(|(n, a, _)| n == name && *a == want)
            .map(|p| p.2)
    }

    #[tokio::test]
    async fn open_breakers_show_in_opentelemetry_by_label() {
        let (provider, keep) = meter::provider(all_points);
        let clock = clock();
        let cache = Cache::builder()
            .clock(clock.clone())
            .circuit_breaker(1, secs(30))
            .meter(provider.meter("breakers-test"))
            .build()
            .unwrap();
        let hosts = Hosts::default();
        hosts.set("b.example", Mode::Status(504));
        let (origin, _log) = origin_by_host(&hosts);
        let svc = cached(&cache, origin);
        send(&svc, get("http://a.example/x")).await;
        clock.advance(secs(2));
        send(&svc, get("http://b.example/x")).await;
        assert_eq!(super::labels(&cache), ["b.example"]);

        let points = meter::collect(&provider, &keep).await;
        let b = [("label", "b.example")];
        let state = |s: &str| {
            value(
                &points,
                "tower_cache.upstream.breaker.state",
                &[("label", "b.example"), ("state", s)],
            )
        };
        assert_eq!(state("open"), Some(1.0), "{points:#?}");
        assert_eq!(state("closed"), Some(0.0));
        assert_eq!(state("half_open"), Some(0.0));
        assert_eq!(
            value(
                &points,
                "tower_cache.upstream.breaker.opened_timestamp",
                &[("label", "b.example"), ("state", "open")]
            ),
            Some(1_700_000_002.0)
        );
        assert_eq!(
            value(&points, "tower_cache.upstream.breaker.opens", &b),
            Some(1.0)
        );
        assert_eq!(
            value(
                &points,
                "tower_cache.breaker.opens",
                &[("breaker", "upstream")]
            ),
            Some(1.0)
        );
        assert!(
            !points
                .iter()
                .any(|(n, a, _)| n.starts_with("tower_cache.upstream.breaker")
                    && a.iter().any(|(_, v)| v == "a.example")),
            "a's breaker never opened: {points:#?}"
        );
        provider.shutdown().unwrap();
    }
}
