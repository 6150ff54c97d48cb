//! The cache's spans and metrics exported with OTLP (HTTP/protobuf) by the
//! providers of `examples/support/telemetry.rs`, decoded by the in-process
//! receiver of `tests/support/otlp.rs`: `cache.lookup` spans with their
//! attributes, the request counters, duration histograms and L1 gauges and,
//! with Redis, the `db.client.operation.duration` histogram and the Redis
//! client spans.
//!
//! Needs the `opentelemetry` feature (`cargo test --all-features`); the
//! Redis test also needs `redis` and a `redis-server` binary.

#![cfg(feature = "opentelemetry")]

#[path = "support/otlp.rs"]
mod otlp;
#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;
mod support;
#[path = "../examples/support/telemetry.rs"]
mod telemetry;

use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use otlp::{AttrValue, MetricKind, OtlpReceiver, Point, ReceivedMetric, ReceivedSpan};
use support::capture::install;
use support::*;
use tower_tiered_cache::Cache;
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;

const WAIT: Duration = Duration::from_secs(10);
/// Long enough that metrics go out only when flushed.
const NEVER: Duration = Duration::from_secs(3600);
const SCOPE: &str = "tower-tiered-cache";

/// An expected attribute value.
#[derive(Debug, Clone, Copy)]
enum A<'a> {
    S(&'a str),
    I(i64),
}

fn matches(v: Option<&AttrValue>, want: A<'_>) -> bool {
    match (v, want) {
        (Some(AttrValue::Str(s)), A::S(w)) => s == w,
        (Some(AttrValue::Int(i)), A::I(w)) => *i == w,
        _ => false,
    }
}

/// The point whose attributes are exactly `attrs` (typed values).
fn point<'m>(m: &'m ReceivedMetric, attrs: &[(&str, A<'_>)]) -> &'m Point {
    m.points
        .iter()
        .find(|p| {
            p.attributes.len() == attrs.len()
                && attrs.iter().all(|(k, v)| matches(p.attributes.get(*k), *v))
        })
        .unwrap_or_else(|| panic!("no point {attrs:?} in {m:#?}"))
}

/// An attribute's value as text, whatever its OTLP type.
fn text(span: &ReceivedSpan, key: &str) -> Option<String> {
    span.attr(key).map(ToString::to_string)
}

fn metric(receiver: &OtlpReceiver, name: &str) -> ReceivedMetric {
    receiver
        .metric(name)
        .unwrap_or_else(|| panic!("no metric {name:?} in {:#?}", receiver.metrics()))
}

fn has_metrics(ms: &[ReceivedMetric], names: &[&str]) -> bool {
    names.iter().all(|n| ms.iter().any(|m| m.name == *n))
}

#[tokio::test]
async fn lookup_spans_and_cache_metrics_are_exported() {
    let receiver = OtlpReceiver::start().await;
    let (tracer, meter) =
        telemetry::otlp_providers(&receiver.endpoint(), "cache-otlp-test", NEVER).unwrap();
    let subscriber = tracing_subscriber::registry().with(telemetry::tracing_layer(&tracer));
    let installed = install(subscriber);

    let clock = clock();
    let cache = Cache::builder()
        .clock(clock.clone())
        .meter(meter.meter(SCOPE))
        .span_level(Level::INFO)
        .build()
        .unwrap();
    let (origin, log) = origin(|_, _| ok("max-age=60", "hello"));
    let svc = cached(&cache, origin);
    let url = "http://example.com/doc";
    let r = send(&svc, get(url)).await;
    assert!(cache_status(&r).contains("stored"));
    assert_eq!(body(r).await, "hello");
    clock.advance(secs(5));
    let r = send(&svc, get(url)).await;
    assert_eq!(cache_status(&r), "tower-tiered-cache; hit; detail=l1");
    assert_eq!(body(r).await, "hello");
    assert_eq!(log.calls(), 1);
    drop(installed);

    telemetry::flush(Some(&tracer), Some(&meter)).unwrap();
    let spans = receiver
        .wait_for_spans(
            |s| s.iter().filter(|s| s.name == "cache.lookup").count() >= 2,
            WAIT,
        )
        .await;
    let lookups: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == "cache.lookup").collect();
    assert_eq!(lookups.len(), 2, "{spans:#?}");
    // Exported in the order they ended: the miss first.
    let (miss, hit) = (lookups[0], lookups[1]);
    for (s, result, tier) in [(miss, "miss", "none"), (hit, "hit", "l1")] {
        assert_eq!(s.attr_str("cache.result"), Some(result), "{s:#?}");
        assert_eq!(s.attr_str("cache.tier"), Some(tier), "{s:#?}");
        assert_eq!(s.attr_str("cache.label"), Some("example.com"));
        assert_eq!(s.attr_str("cache.key"), Some("GET http://example.com/doc"));
        assert_eq!(s.attr_str("http.request.method"), Some("GET"));
        assert_eq!(s.attr_str("url.path"), Some("/doc"));
        // The value (its OTLP type: see `integer_span_fields_are_exported_as_integers`).
        assert_eq!(text(s, "http.response.status_code").as_deref(), Some("200"));
        assert_eq!(s.attr("cache.coalesced"), Some(&AttrValue::Bool(false)));
        assert_eq!(s.scope, telemetry::TRACER_NAME);
        assert_eq!(s.service_name.as_deref(), Some("cache-otlp-test"));
        assert!(s.parent_span_id.is_empty(), "a root span");
    }
    assert!(
        miss.attr("cache.upstream_ms")
            .and_then(AttrValue::as_f64)
            .is_some(),
        "{miss:#?}"
    );
    assert_eq!(
        text(hit, "cache.ttl_remaining_ms").as_deref(),
        Some("55000")
    );
    assert_ne!(miss.trace_id, hit.trace_id, "two requests, two traces");

    receiver
        .wait_for_metrics(
            |ms| {
                has_metrics(
                    ms,
                    &[
                        "tower_cache.requests",
                        "tower_cache.lookup.duration",
                        "tower_cache.upstream.duration",
                        "tower_cache.l1.entries",
                    ],
                )
            },
            WAIT,
        )
        .await;

    let requests = metric(&receiver, "tower_cache.requests");
    assert_eq!(requests.kind, MetricKind::Sum { monotonic: true });
    assert_eq!(requests.unit, "{request}");
    assert_eq!(requests.scope, SCOPE);
    assert_eq!(requests.service_name.as_deref(), Some("cache-otlp-test"));
    assert_eq!(requests.points.len(), 2, "{requests:#?}");
    for (result, tier) in [("hit", "l1"), ("miss", "none")] {
        let p = point(
            &requests,
            &[
                ("result", A::S(result)),
                ("tier", A::S(tier)),
                ("label", A::S("example.com")),
            ],
        );
        assert_eq!(p.value, 1.0, "{result}");
    }

    let lookup = metric(&receiver, "tower_cache.lookup.duration");
    assert_eq!(lookup.kind, MetricKind::Histogram);
    assert_eq!(lookup.unit, "s");
    assert_eq!(lookup.points.len(), 2, "{lookup:#?}");
    assert_eq!(lookup.points.iter().map(|p| p.value).sum::<f64>(), 2.0);
    for (result, tier) in [("hit", "l1"), ("miss", "none")] {
        let p = point(
            &lookup,
            &[
                ("result", A::S(result)),
                ("tier", A::S(tier)),
                ("label", A::S("example.com")),
            ],
        );
        assert_eq!(p.value, 1.0);
        let sum = p.histogram_sum.unwrap();
        assert!(sum > 0.0 && sum < 10.0, "{sum} s");
    }

    let upstream = metric(&receiver, "tower_cache.upstream.duration");
    assert_eq!(upstream.kind, MetricKind::Histogram);
    assert_eq!(upstream.unit, "s");
    let p = point(
        &upstream,
        &[
            ("label", A::S("example.com")),
            ("http.response.status_code", A::I(200)),
        ],
    );
    assert_eq!(p.value, 1.0);
    assert_eq!(upstream.points.len(), 1);

    let entries = metric(&receiver, "tower_cache.l1.entries");
    assert_eq!(entries.kind, MetricKind::Gauge);
    assert_eq!(entries.points.len(), 1);
    assert_eq!(entries.points[0].value, 1.0);
    let bytes = metric(&receiver, "tower_cache.l1.bytes");
    assert_eq!(bytes.unit, "By");
    assert_eq!(bytes.points[0].value, cache.stats().l1_bytes as f64);

    for (name, value) in [
        ("tower_cache.stores", 1.0),
        ("tower_cache.upstream.calls", 1.0),
        ("tower_cache.stale_served", 0.0),
        ("tower_cache.coalesced", 0.0),
        ("tower_cache.l1.not_admitted", 0.0),
        ("tower_cache.hot_refreshes", 0.0),
    ] {
        let m = metric(&receiver, name);
        assert_eq!(m.kind, MetricKind::Sum { monotonic: true }, "{name}");
        assert_eq!(m.points.len(), 1, "{m:#?}");
        assert_eq!(m.points[0].value, value, "{name}");
    }
    let adaptive = metric(&receiver, "tower_cache.adaptive_ttl");
    assert_eq!(adaptive.kind, MetricKind::Sum { monotonic: true });
    for change in ["lengthened", "shortened"] {
        assert_eq!(point(&adaptive, &[("change", A::S(change))]).value, 0.0);
    }
    let prefetches = metric(&receiver, "tower_cache.prefetches");
    assert_eq!(prefetches.kind, MetricKind::Sum { monotonic: true });
    assert_eq!(
        prefetches.points.len(),
        5,
        "one per outcome: {prefetches:#?}"
    );
    assert!(receiver.errors().is_empty(), "{:?}", receiver.errors());

    tracer.shutdown().unwrap();
    meter.shutdown().unwrap();
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_operations_are_exported_as_db_client_spans_and_durations() {
    use redis_support::{require_redis, RedisServer};
    require_redis();
    let server = RedisServer::start();
    let port = i64::from(server.port());
    let receiver = OtlpReceiver::start().await;
    let (tracer, meter) =
        telemetry::otlp_providers(&receiver.endpoint(), "cache-otlp-redis", NEVER).unwrap();
    let subscriber = tracing_subscriber::registry().with(telemetry::tracing_layer(&tracer));
    let installed = install(subscriber);

    let cache = Cache::builder()
        .redis(server.url())
        .namespace("otlp")
        .l2_timeout(Duration::from_millis(500))
        .meter(meter.meter(SCOPE))
        .span_level(Level::INFO)
        .build()
        .unwrap();
    let (origin, _) = origin(|_, _| ok("max-age=60", "shared"));
    let r = send(&cached(&cache, origin), get("http://example.com/item")).await;
    assert!(cache_status(&r).contains("stored"));
    written(&cache, 1).await;
    drop(installed);

    telemetry::flush(Some(&tracer), Some(&meter)).unwrap();
    let spans = receiver
        .wait_for_spans(
            |s| {
                s.iter().any(|s| s.name == "cache.lookup")
                    && s.iter().any(|s| s.name == "PIPELINE SET")
                    && s.iter().any(|s| s.name == "GET")
            },
            WAIT,
        )
        .await;
    let lookup = spans
        .iter()
        .find(|s| s.name == "cache.lookup")
        .expect("cache.lookup");
    let redis: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.attr_str("db.system.name") == Some("redis"))
        .collect();
    for s in &redis {
        // `otel.name` names the span for its command.
        assert_eq!(Some(s.name.as_str()), s.attr_str("db.operation.name"));
        assert_eq!(s.attr_str("server.address"), Some("127.0.0.1"));
        assert_eq!(text(s, "server.port"), Some(port.to_string()));
    }
    let get_span = redis
        .iter()
        .find(|s| s.name == "GET")
        .unwrap_or_else(|| panic!("a GET span in {spans:#?}"));
    assert_eq!(
        get_span.parent_span_id, lookup.span_id,
        "inside the request"
    );
    assert_eq!(get_span.trace_id, lookup.trace_id);
    // The write and its announcement: one pipeline.
    let set_span = redis
        .iter()
        .find(|s| s.name == "PIPELINE SET")
        .expect("a PIPELINE SET span");
    assert!(
        set_span.parent_span_id.is_empty(),
        "written off the request"
    );

    receiver
        .wait_for_metrics(
            |ms| has_metrics(ms, &["db.client.operation.duration"]),
            WAIT,
        )
        .await;
    let ops = metric(&receiver, "db.client.operation.duration");
    assert_eq!(ops.kind, MetricKind::Histogram);
    assert_eq!(ops.unit, "s");
    assert_eq!(ops.scope, SCOPE);
    for op in ["GET", "PIPELINE SET"] {
        let p = point(
            &ops,
            &[
                ("db.system.name", A::S("redis")),
                ("db.operation.name", A::S(op)),
                ("server.address", A::S("127.0.0.1")),
                ("server.port", A::I(port)),
            ],
        );
        assert_eq!(p.value, 1.0, "{op}: {ops:#?}");
    }
    assert!(
        ops.points
            .iter()
            .all(|p| !p.attributes.contains_key("error.type")),
        "{ops:#?}"
    );
    assert!(receiver.errors().is_empty(), "{:?}", receiver.errors());

    tracer.shutdown().unwrap();
    meter.shutdown().unwrap();
}

/// OpenTelemetry's conventions type `http.response.status_code` and
/// `server.port` as integers (and the metrics here send them so). The span
/// fields are recorded as `u64` (`u16` values), which `tracing-opentelemetry`
/// has no integer mapping for: they arrive as strings. `cache.ttl_remaining_ms`
/// is a `u64` on fresh hits (a string) but an `i64` on stale ones (an int).
#[tokio::test]
async fn integer_span_fields_are_exported_as_integers() {
    let receiver = OtlpReceiver::start().await;
    let (tracer, _meter) =
        telemetry::otlp_providers(&receiver.endpoint(), "cache-otlp-types", NEVER).unwrap();
    let subscriber = tracing_subscriber::registry().with(telemetry::tracing_layer(&tracer));
    let installed = install(subscriber);
    let clock = clock();
    let cache = Cache::builder()
        .clock(clock.clone())
        .span_level(Level::INFO)
        .build()
        .unwrap();
    let (origin, _) = origin(|_, _| ok("max-age=60", "x"));
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(5));
    send(&svc, get(URL)).await;
    drop(installed);
    tracer.force_flush().unwrap();
    let spans = receiver
        .wait_for_spans(
            |s| s.iter().filter(|s| s.name == "cache.lookup").count() >= 2,
            WAIT,
        )
        .await;
    let hit = spans
        .iter()
        .find(|s| s.attr_str("cache.result") == Some("hit"))
        .expect("the hit");
    assert_eq!(
        hit.attr("http.response.status_code"),
        Some(&AttrValue::Int(200)),
        "{hit:#?}"
    );
    assert_eq!(
        hit.attr("cache.ttl_remaining_ms"),
        Some(&AttrValue::Int(55_000)),
        "{hit:#?}"
    );
    tracer.shutdown().unwrap();
}
