//! An in-process OTLP/HTTP receiver for tests: accepts `POST /v1/traces` and
//! `POST /v1/metrics` with `application/x-protobuf` bodies (as the
//! `opentelemetry-otlp` HTTP exporter sends them, uncompressed), decodes
//! them and keeps what arrived as plain Rust values. A receiver started
//! with [`OtlpReceiver::start_traces_only`] answers `/v1/metrics` with
//! `404 Not Found`, as Jaeger's OTLP port does.
//!
//! The server runs on a Tokio runtime of its own, on a thread of its own, so
//! it keeps answering while a test blocks its thread in a (synchronous)
//! `force_flush`, whatever the test's runtime flavor. Waits use real time,
//! so they also work under a paused Tokio clock.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, NumberDataPoint};
use prost::Message;
use tokio::sync::Notify;

const PROTOBUF: &str = "application/x-protobuf";

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    /// Arrays, key-value lists and bytes, as their `Debug` text.
    Other(String),
}

impl AttrValue {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AttrValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The number, if this is an integer or a double.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            AttrValue::Int(i) => Some(*i as f64),
            AttrValue::Double(d) => Some(*d),
            _ => None,
        }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            AttrValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Str(s) => f.write_str(s),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Double(d) => write!(f, "{d}"),
            AttrValue::Bool(b) => write!(f, "{b}"),
            AttrValue::Other(o) => f.write_str(o),
        }
    }
}

/// Attributes by key.
pub type Attributes = BTreeMap<String, AttrValue>;

/// A span as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    pub name: String,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    /// Empty for a root span.
    pub parent_span_id: Vec<u8>,
    /// `(trace_id, span_id)` of each linked span.
    pub links: Vec<(Vec<u8>, Vec<u8>)>,
    pub attributes: Attributes,
    /// Names of the span's events (`tracing` events inside the span).
    pub events: Vec<String>,
    /// The instrumentation scope's name.
    pub scope: String,
    /// The resource's `service.name`.
    pub service_name: Option<String>,
}

impl ReceivedSpan {
    /// An attribute's value.
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.get(key)
    }

    /// A string attribute's value.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(AttrValue::as_str)
    }
}

/// What kind of metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Sum { monotonic: bool },
    Gauge,
    Histogram,
    ExponentialHistogram,
    Summary,
}

/// One data point of a metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub attributes: Attributes,
    /// The value of a sum or gauge; the count of a histogram (or summary).
    pub value: f64,
    /// The sum of a histogram (or summary).
    pub histogram_sum: Option<f64>,
}

/// A metric as received in one export.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedMetric {
    pub name: String,
    pub unit: String,
    pub kind: MetricKind,
    pub points: Vec<Point>,
    /// The instrumentation scope's (meter's) name.
    pub scope: String,
    /// The resource's `service.name`.
    pub service_name: Option<String>,
}

impl ReceivedMetric {
    /// The point whose attributes are exactly `attrs` (string values).
    pub fn point(&self, attrs: &[(&str, &str)]) -> Option<&Point> {
        self.points.iter().find(|p| {
            p.attributes.len() == attrs.len()
                && attrs
                    .iter()
                    .all(|(k, v)| p.attributes.get(*k).and_then(AttrValue::as_str) == Some(*v))
        })
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    metrics: Vec<ReceivedMetric>,
    trace_requests: usize,
    metric_requests: usize,
    /// Requests the receiver refused, and why.
    errors: Vec<String>,
}

#[derive(Default)]
struct Shared {
    received: Mutex<Received>,
    notify: Notify,
    /// Answer `/v1/metrics` with 404 (counting the request).
    refuse_metrics: bool,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut Received)) {
        f(&mut self.received.lock().unwrap());
        self.notify.notify_waiters();
    }
}

/// The receiver; stops when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl fmt::Debug for OtlpReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpReceiver")
            .field("addr", &self.addr)
            .finish()
    }
}

impl OtlpReceiver {
    /// Starts a receiver on a free loopback port.
    pub async fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a receiver that takes traces and answers every metrics export
    /// with `404 Not Found` (as Jaeger does); [`requests`](Self::requests)
    /// still counts them.
    pub async fn start_traces_only() -> Self {
        Self::start_with(true)
    }

    fn start_with(refuse_metrics: bool) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            refuse_metrics,
            ..Shared::default()
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .route("/v1/metrics", post(metrics))
            .with_state(shared.clone());
        std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("receiver runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    tokio::select! {
                        res = axum::serve(listener, app) => {
                            if let Err(e) = res {
                                eprintln!("otlp receiver: {e}");
                            }
                        }
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime here closes the open connections.
            })
            .expect("spawn the receiver thread");
        Self {
            addr,
            shared,
            stop: Some(stop),
        }
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the receiver listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.received.lock().unwrap().spans.clone()
    }

    /// Every metric received so far, in arrival order (with cumulative
    /// temporality each export repeats every metric: the last one is the
    /// newest).
    pub fn metrics(&self) -> Vec<ReceivedMetric> {
        self.shared.received.lock().unwrap().metrics.clone()
    }

    /// The spans named `name`.
    pub fn spans_named(&self, name: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    }

    /// The newest received metric named `name`.
    pub fn metric(&self, name: &str) -> Option<ReceivedMetric> {
        self.metrics().into_iter().rev().find(|m| m.name == name)
    }

    /// How many trace and metric export requests arrived (decoded or not).
    pub fn requests(&self) -> (usize, usize) {
        let r = self.shared.received.lock().unwrap();
        (r.trace_requests, r.metric_requests)
    }

    /// Requests the receiver refused (bad content type, encoding or body).
    pub fn errors(&self) -> Vec<String> {
        self.shared.received.lock().unwrap().errors.clone()
    }

    /// Forgets everything received.
    pub fn clear(&self) {
        self.shared.update(|r| *r = Received::default());
    }

    /// Waits (at most `timeout` of real time) until `pred` holds for the
    /// spans received; returns them. Panics with what arrived on timeout.
    pub async fn wait_for_spans(
        &self,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Vec<ReceivedSpan> {
        self.wait(
            "spans",
            |r| pred(&r.spans).then(|| r.spans.clone()),
            timeout,
        )
        .await
    }

    /// Waits (at most `timeout` of real time) until `pred` holds for the
    /// metrics received; returns them. Panics with what arrived on timeout.
    pub async fn wait_for_metrics(
        &self,
        pred: impl Fn(&[ReceivedMetric]) -> bool,
        timeout: Duration,
    ) -> Vec<ReceivedMetric> {
        self.wait(
            "metrics",
            |r| pred(&r.metrics).then(|| r.metrics.clone()),
            timeout,
        )
        .await
    }

    async fn wait<T>(
        &self,
        what: &str,
        check: impl Fn(&Received) -> Option<T>,
        timeout: Duration,
    ) -> T {
        let deadline = Instant::now() + timeout;
        // A real-time timer (a Tokio one would fire at once under a paused
        // clock while the exports happen on other threads).
        let expired = Arc::new(AtomicBool::new(false));
        {
            let shared = self.shared.clone();
            let expired = expired.clone();
            std::thread::spawn(move || {
                std::thread::sleep(timeout);
                expired.store(true, Ordering::SeqCst);
                shared.notify.notify_waiters();
            });
        }
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            // Registered before checking, so no update is missed.
            notified.as_mut().enable();
            {
                let r = self.shared.received.lock().unwrap();
                if let Some(found) = check(&r) {
                    return found;
                }
                if expired.load(Ordering::SeqCst) || Instant::now() >= deadline {
                    panic!(
                        "timed out after {timeout:?} waiting for {what}\n\
                         trace requests: {}, metric requests: {}, refused: {:?}\n\
                         spans: {:#?}\nmetrics: {:#?}",
                        r.trace_requests, r.metric_requests, r.errors, r.spans, r.metrics
                    );
                }
            }
            notified.await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Checks the content type and encoding; the reason when refused.
fn check_request(headers: &HeaderMap) -> Result<(), String> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type != PROTOBUF {
        return Err(format!("unsupported content-type {content_type:?}"));
    }
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        if encoding != "identity" {
            return Err(format!("unsupported content-encoding {encoding:?}"));
        }
    }
    Ok(())
}

fn refuse(shared: &Shared, status: StatusCode, reason: String) -> Response {
    shared.update(|r| r.errors.push(reason.clone()));
    (status, reason).into_response()
}

fn protobuf(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, PROTOBUF)], body).into_response()
}

async fn traces(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.update(|r| r.trace_requests += 1);
    if let Err(reason) = check_request(&headers) {
        return refuse(&shared, StatusCode::UNSUPPORTED_MEDIA_TYPE, reason);
    }
    let request = match ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(e) => return refuse(&shared, StatusCode::BAD_REQUEST, format!("traces: {e}")),
    };
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service_name = service_name(resource_spans.resource.as_ref().map(|r| &r.attributes));
        for scope_spans in resource_spans.scope_spans {
            let scope = scope_spans.scope.map(|s| s.name).unwrap_or_default();
            for span in scope_spans.spans {
                spans.push(ReceivedSpan {
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    links: span
                        .links
                        .into_iter()
                        .map(|l| (l.trace_id, l.span_id))
                        .collect(),
                    attributes: attributes(&span.attributes),
                    events: span.events.into_iter().map(|e| e.name).collect(),
                    scope: scope.clone(),
                    service_name: service_name.clone(),
                });
            }
        }
    }
    shared.update(|r| r.spans.extend(spans));
    protobuf(ExportTraceServiceResponse::default().encode_to_vec())
}

async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.update(|r| r.metric_requests += 1);
    if shared.refuse_metrics {
        return StatusCode::NOT_FOUND.into_response();
    }
    if let Err(reason) = check_request(&headers) {
        return refuse(&shared, StatusCode::UNSUPPORTED_MEDIA_TYPE, reason);
    }
    let request = match ExportMetricsServiceRequest::decode(body) {
        Ok(request) => request,
        Err(e) => return refuse(&shared, StatusCode::BAD_REQUEST, format!("metrics: {e}")),
    };
    let mut metrics = Vec::new();
    for resource_metrics in request.resource_metrics {
        let service_name = service_name(resource_metrics.resource.as_ref().map(|r| &r.attributes));
        for scope_metrics in resource_metrics.scope_metrics {
            let scope = scope_metrics.scope.map(|s| s.name).unwrap_or_default();
            for m in scope_metrics.metrics {
                let (kind, points) = match m.data {
                    Some(metric::Data::Sum(s)) => (
                        MetricKind::Sum {
                            monotonic: s.is_monotonic,
                        },
                        s.data_points.iter().map(number_point).collect(),
                    ),
                    Some(metric::Data::Gauge(g)) => (
                        MetricKind::Gauge,
                        g.data_points.iter().map(number_point).collect(),
                    ),
                    Some(metric::Data::Histogram(h)) => (
                        MetricKind::Histogram,
                        h.data_points
                            .iter()
                            .map(|p| Point {
                                attributes: attributes(&p.attributes),
                                value: p.count as f64,
                                histogram_sum: p.sum,
                            })
                            .collect(),
                    ),
                    Some(metric::Data::ExponentialHistogram(h)) => (
                        MetricKind::ExponentialHistogram,
                        h.data_points
                            .iter()
                            .map(|p| Point {
                                attributes: attributes(&p.attributes),
                                value: p.count as f64,
                                histogram_sum: p.sum,
                            })
                            .collect(),
                    ),
                    Some(metric::Data::Summary(s)) => (
                        MetricKind::Summary,
                        s.data_points
                            .iter()
                            .map(|p| Point {
                                attributes: attributes(&p.attributes),
                                value: p.count as f64,
                                histogram_sum: Some(p.sum),
                            })
                            .collect(),
                    ),
                    None => {
                        let reason = format!("metric {:?} without data", m.name);
                        return refuse(&shared, StatusCode::BAD_REQUEST, reason);
                    }
                };
                metrics.push(ReceivedMetric {
                    name: m.name,
                    unit: m.unit,
                    kind,
                    points,
                    scope: scope.clone(),
                    service_name: service_name.clone(),
                });
            }
        }
    }
    shared.update(|r| r.metrics.extend(metrics));
    protobuf(ExportMetricsServiceResponse::default().encode_to_vec())
}

fn number_point(p: &NumberDataPoint) -> Point {
    Point {
        attributes: attributes(&p.attributes),
        value: match p.value {
            Some(number_data_point::Value::AsDouble(d)) => d,
            Some(number_data_point::Value::AsInt(i)) => i as f64,
            None => f64::NAN,
        },
        histogram_sum: None,
    }
}

fn service_name(resource: Option<&Vec<KeyValue>>) -> Option<String> {
    resource
        .and_then(|attrs| attrs.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .map(|v| value(v).to_string())
}

fn attributes(kvs: &[KeyValue]) -> Attributes {
    kvs.iter()
        .map(|kv| {
            let v = kv
                .value
                .as_ref()
                .map(value)
                .unwrap_or_else(|| AttrValue::Other(String::new()));
            (kv.key.clone(), v)
        })
        .collect()
}

fn value(v: &AnyValue) -> AttrValue {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => AttrValue::Str(s.clone()),
        Some(any_value::Value::IntValue(i)) => AttrValue::Int(*i),
        Some(any_value::Value::DoubleValue(d)) => AttrValue::Double(*d),
        Some(any_value::Value::BoolValue(b)) => AttrValue::Bool(*b),
        Some(other) => AttrValue::Other(format!("{other:?}")),
        None => AttrValue::Other(String::new()),
    }
}
