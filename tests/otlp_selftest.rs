//! Tests of the OpenTelemetry test plumbing: spans and metrics exported by
//! `examples/support/telemetry.rs` (OTLP over HTTP/protobuf) arrive, decoded,
//! at the in-process receiver of `tests/support/otlp.rs`, with their names,
//! attributes, parents and links.
//!
//! Needs the `opentelemetry` feature (`cargo test --all-features`).

#![cfg(feature = "opentelemetry")]

#[path = "support/otlp.rs"]
mod otlp;
#[path = "../examples/support/telemetry.rs"]
mod telemetry;

use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::KeyValue;
use otlp::{AttrValue, MetricKind, OtlpReceiver, ReceivedSpan};
use tracing_subscriber::layer::SubscriberExt;

const WAIT: Duration = Duration::from_secs(10);
/// Long enough that metrics go out only when flushed.
const NEVER: Duration = Duration::from_secs(3600);

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one span named {name:?} in {spans:#?}");
    found[0]
}

#[tokio::test]
async fn span_with_attributes_arrives() {
    let receiver = OtlpReceiver::start().await;
    let (tracer, meter) =
        telemetry::otlp_providers(&receiver.endpoint(), "otlp-selftest", NEVER).unwrap();
    let subscriber = tracing_subscriber::registry().with(telemetry::tracing_layer(&tracer));
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("work", cache.result = "hit", cache.tier = "l1");
        span.in_scope(|| tracing::info!("inside"));
    });
    tracer.force_flush().unwrap();

    let spans = receiver
        .wait_for_spans(|s| s.iter().any(|s| s.name == "work"), WAIT)
        .await;
    let work = named(&spans, "work");
    assert_eq!(work.attr_str("cache.result"), Some("hit"));
    assert_eq!(work.attr_str("cache.tier"), Some("l1"));
    assert_eq!(work.trace_id.len(), 16);
    assert_eq!(work.span_id.len(), 8);
    assert!(work.parent_span_id.is_empty(), "a root span: {work:?}");
    assert!(work.links.is_empty());
    assert_eq!(work.events, ["inside"]);
    assert_eq!(work.scope, telemetry::TRACER_NAME);
    assert_eq!(work.service_name.as_deref(), Some("otlp-selftest"));
    assert!(receiver.errors().is_empty(), "{:?}", receiver.errors());

    tracer.shutdown().unwrap();
    meter.shutdown().unwrap();
}

#[tokio::test]
async fn child_span_has_its_parent() {
    let receiver = OtlpReceiver::start().await;
    let (tracer, _meter) =
        telemetry::otlp_providers(&receiver.endpoint(), "otlp-selftest", NEVER).unwrap();
    let subscriber = tracing_subscriber::registry().with(telemetry::tracing_layer(&tracer));
    tracing::subscriber::with_default(subscriber, || {
        let outer = tracing::info_span!("outer");
        let _entered = outer.enter();
        tracing::info_span!("inner", n = 7_i64).in_scope(|| {});
    });
    tracer.force_flush().unwrap();

    let spans = receiver.wait_for_spans(|s| s.len() >= 2, WAIT).await;
    let outer = named(&spans, "outer");
    let inner = named(&spans, "inner");
    assert_eq!(inner.parent_span_id, outer.span_id);
    assert_eq!(inner.trace_id, outer.trace_id);
    assert_eq!(inner.attr("n").and_then(AttrValue::as_i64), Some(7));
}

#[tokio::test]
async fn follows_from_becomes_a_link() {
    let receiver = OtlpReceiver::start().await;
    let (tracer, _meter) =
        telemetry::otlp_providers(&receiver.endpoint(), "otlp-selftest", NEVER).unwrap();
    let subscriber = tracing_subscriber::registry().with(telemetry::tracing_layer(&tracer));
    tracing::subscriber::with_default(subscriber, || {
        let cause = tracing::info_span!("cause");
        let effect = tracing::info_span!("effect");
        effect.follows_from(&cause);
        drop(cause);
        drop(effect);
    });
    tracer.force_flush().unwrap();

    let spans = receiver.wait_for_spans(|s| s.len() >= 2, WAIT).await;
    let cause = named(&spans, "cause");
    let effect = named(&spans, "effect");
    assert_eq!(
        effect.links,
        [(cause.trace_id.clone(), cause.span_id.clone())]
    );
    assert!(cause.links.is_empty());
    // Both are roots: the link is the only relation.
    assert!(effect.parent_span_id.is_empty());
    assert_ne!(effect.trace_id, cause.trace_id);
}

// Under a paused Tokio clock: the waits use real time.
#[tokio::test(start_paused = true)]
async fn counter_and_histogram_arrive() {
    let receiver = OtlpReceiver::start().await;
    let (tracer, meter) =
        telemetry::otlp_providers(&receiver.endpoint(), "otlp-selftest", NEVER).unwrap();
    let m = meter.meter("t");
    let requests = m
        .u64_counter("cache.requests")
        .with_unit("{request}")
        .build();
    requests.add(3, &[KeyValue::new("cache.result", "hit")]);
    requests.add(1, &[KeyValue::new("cache.result", "miss")]);
    requests.add(2, &[KeyValue::new("cache.result", "hit")]);
    let latency = m.f64_histogram("cache.latency").with_unit("s").build();
    latency.record(0.25, &[KeyValue::new("cache.tier", "l1")]);
    latency.record(0.5, &[KeyValue::new("cache.tier", "l1")]);
    latency.record(2.0, &[KeyValue::new("cache.tier", "l2")]);
    meter.force_flush().unwrap();

    receiver
        .wait_for_metrics(
            |ms| {
                ms.iter().any(|m| m.name == "cache.requests")
                    && ms.iter().any(|m| m.name == "cache.latency")
            },
            WAIT,
        )
        .await;

    let counter = receiver.metric("cache.requests").unwrap();
    assert_eq!(counter.kind, MetricKind::Sum { monotonic: true });
    assert_eq!(counter.unit, "{request}");
    assert_eq!(counter.scope, "t");
    assert_eq!(counter.service_name.as_deref(), Some("otlp-selftest"));
    assert_eq!(counter.points.len(), 2, "{counter:#?}");
    assert_eq!(
        counter.point(&[("cache.result", "hit")]).unwrap().value,
        5.0
    );
    assert_eq!(
        counter.point(&[("cache.result", "miss")]).unwrap().value,
        1.0
    );

    let histogram = receiver.metric("cache.latency").unwrap();
    assert_eq!(histogram.kind, MetricKind::Histogram);
    assert_eq!(histogram.unit, "s");
    assert_eq!(histogram.points.len(), 2, "{histogram:#?}");
    let l1 = histogram.point(&[("cache.tier", "l1")]).unwrap();
    assert_eq!(l1.value, 2.0);
    assert_eq!(l1.histogram_sum, Some(0.75));
    let l2 = histogram.point(&[("cache.tier", "l2")]).unwrap();
    assert_eq!(l2.value, 1.0);
    assert_eq!(l2.histogram_sum, Some(2.0));
    assert!(receiver.errors().is_empty(), "{:?}", receiver.errors());

    meter.shutdown().unwrap();
    tracer.shutdown().unwrap();
}

// The only test that installs globals (a process can do that once).
#[tokio::test]
async fn init_exports_through_the_globals() {
    let receiver = OtlpReceiver::start().await;
    let mut guard = telemetry::init_with(
        telemetry::Endpoints::both(&receiver.endpoint()),
        "otlp-selftest-global",
        NEVER,
    )
    .unwrap();
    tracing::info_span!("global_work", answer = 42_i64).in_scope(|| {});
    opentelemetry::global::meter("g")
        .u64_counter("global.requests")
        .build()
        .add(4, &[KeyValue::new("k", "v")]);
    // Shutdown exports what is pending; a second call does nothing.
    guard.shutdown().unwrap();
    guard.shutdown().unwrap();
    assert!(guard.tracer_provider().is_none());

    let spans = receiver
        .wait_for_spans(|s| s.iter().any(|s| s.name == "global_work"), WAIT)
        .await;
    let span = named(&spans, "global_work");
    assert_eq!(span.attr("answer").and_then(AttrValue::as_i64), Some(42));
    assert_eq!(span.service_name.as_deref(), Some("otlp-selftest-global"));

    receiver
        .wait_for_metrics(|ms| ms.iter().any(|m| m.name == "global.requests"), WAIT)
        .await;
    let counter = receiver.metric("global.requests").unwrap();
    assert_eq!(counter.point(&[("k", "v")]).unwrap().value, 4.0);
    assert_eq!(
        counter.service_name.as_deref(),
        Some("otlp-selftest-global")
    );
}

#[tokio::test]
#[should_panic(expected = "timed out after 200ms waiting for spans")]
async fn waiting_for_what_never_comes_panics() {
    let receiver = OtlpReceiver::start().await;
    receiver
        .wait_for_spans(|s| !s.is_empty(), Duration::from_millis(200))
        .await;
}
