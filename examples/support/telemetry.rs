//! OpenTelemetry plumbing shared by the examples and the tests: a `tracing`
//! subscriber that prints to stderr and, given OTLP endpoints, exports
//! spans and (only when asked) metrics with OTLP over HTTP/protobuf.
//!
//! Included as a module (`#[path = "support/telemetry.rs"] mod telemetry;`),
//! so it has no `main` and uses only the crate's (dev-)dependencies. It needs
//! the `opentelemetry` feature (the `opentelemetry` crate is an optional
//! dependency).
//!
//! Exports run on a small Tokio runtime of their own (one worker thread,
//! named `otlp-export`): the OTLP exporter uses the async `reqwest` client,
//! while the SDK's `BatchSpanProcessor` and `PeriodicReader` drive exports
//! from plain threads of their own. Because of that runtime, flushing and
//! shutting down (both blocking calls) work from anywhere, including inside
//! a current-thread Tokio runtime and after the application's runtime ended.

#![allow(dead_code, unreachable_pub)]

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The error type of this module.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// How often metrics are exported unless told otherwise.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(10);

/// How long one export may take (HTTP request with its retries).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The instrumentation scope name of the spans the `tracing` layer exports.
pub const TRACER_NAME: &str = "tower-tiered-cache";

/// Keeps the telemetry pipeline alive; [`Telemetry::shutdown`] (or dropping
/// it) exports what is pending and shuts the providers down.
#[must_use = "dropping the guard shuts telemetry down"]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: Option<SdkMeterProvider>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("traces", &self.tracer.is_some())
            .field("metrics", &self.meter.is_some())
            .finish()
    }
}

impl Telemetry {
    /// The tracer provider, when exporting over OTLP (and not shut down).
    pub fn tracer_provider(&self) -> Option<&SdkTracerProvider> {
        self.tracer.as_ref()
    }

    /// The meter provider, when exporting over OTLP (and not shut down).
    pub fn meter_provider(&self) -> Option<&SdkMeterProvider> {
        self.meter.as_ref()
    }

    /// Exports pending spans and metrics now (blocking; bounded by the SDK's
    /// flush timeouts). A no-op without OTLP or after shutdown.
    pub fn flush(&self) -> Result<(), BoxError> {
        flush(self.tracer.as_ref(), self.meter.as_ref())
    }

    /// Exports what is pending and shuts both providers down (blocking).
    /// Idempotent: later calls (and the drop) do nothing.
    pub fn shutdown(&mut self) -> Result<(), BoxError> {
        let mut errors = Vec::new();
        if let Some(tracer) = self.tracer.take() {
            // Shutting down the batch processor exports its queue first.
            if let Err(e) = tracer.shutdown() {
                errors.push(format!("tracer provider: {e}"));
            }
        }
        if let Some(meter) = self.meter.take() {
            // The periodic reader collects and exports once more on shutdown.
            if let Err(e) = meter.shutdown() {
                errors.push(format!("meter provider: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; ").into())
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("telemetry shutdown: {e}");
        }
    }
}

/// Where telemetry goes with OTLP over HTTP/protobuf: base URLs such as
/// `http://127.0.0.1:4318` (the exporters add `/v1/traces` and
/// `/v1/metrics`). Each signal is exported only when its URL is given:
/// Jaeger takes traces and refuses metrics, so a proxy that sends metrics
/// there logs an export error every interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct Endpoints<'a> {
    /// Where spans go (`{base}/v1/traces`).
    pub traces: Option<&'a str>,
    /// Where metrics go (`{base}/v1/metrics`).
    pub metrics: Option<&'a str>,
}

impl<'a> Endpoints<'a> {
    /// Spans and metrics to the same base URL.
    pub fn both(base: &'a str) -> Self {
        Self {
            traces: Some(base),
            metrics: Some(base),
        }
    }
}

/// [`init_with`] with metrics exported every [`DEFAULT_METRICS_INTERVAL`].
pub fn init(endpoints: Endpoints<'_>, service_name: &str) -> Result<Telemetry, BoxError> {
    init_with(endpoints, service_name, DEFAULT_METRICS_INTERVAL)
}

/// Installs the global `tracing` subscriber: an `EnvFilter` from `RUST_LOG`
/// (default `info`), a fmt layer writing to stderr (colours only when stderr
/// is a terminal) and, when `endpoints.traces` is given, a
/// `tracing-opentelemetry` layer exporting spans to `{base}/v1/traces` (with
/// the global tracer provider and the W3C trace-context propagator set).
/// When `endpoints.metrics` is given it sets the global meter provider,
/// exporting to `{base}/v1/metrics` every `metrics_interval`; without it
/// the global meter provider stays the no-op one.
///
/// Fails when a global subscriber is already installed.
pub fn init_with(
    endpoints: Endpoints<'_>,
    service_name: &str,
    metrics_interval: Duration,
) -> Result<Telemetry, BoxError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Escape codes only for a terminal: a pipe or a file (systemd, docker
    // logs, a test) gets plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());

    let runtime = match (endpoints.traces, endpoints.metrics) {
        (None, None) => None,
        _ => Some(Arc::new(ExportRuntime::new()?)),
    };
    let resource = resource(service_name);
    let tracer = match (endpoints.traces, &runtime) {
        (Some(base), Some(rt)) => Some(tracer_provider(base, resource.clone(), rt)?),
        _ => None,
    };
    let meter = match (endpoints.metrics, &runtime) {
        (Some(base), Some(rt)) => Some(meter_provider(base, resource, metrics_interval, rt)?),
        _ => None,
    };
    // Shuts the providers down if installing the subscriber fails.
    let telemetry = Telemetry {
        tracer: tracer.clone(),
        meter: meter.clone(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(tracer.as_ref().map(tracing_layer))
        .try_init()?;
    if let Some(tracer) = tracer {
        opentelemetry::global::set_tracer_provider(tracer);
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    }
    if let Some(meter) = meter {
        opentelemetry::global::set_meter_provider(meter);
    }
    Ok(telemetry)
}

/// A tracer provider (batch span processor) and a meter provider (periodic
/// reader, cumulative temporality) exporting with OTLP over HTTP/protobuf to
/// `{base}/v1/traces` and `{base}/v1/metrics`, with `service.name` set.
/// Sets no globals: for tests, pair it with [`tracing_layer`] in a scoped
/// subscriber and call `force_flush()` on both providers (or [`flush`]).
///
/// Pass a long `metrics_interval` (an hour, say) to export metrics only when
/// flushed.
pub fn otlp_providers(
    base: &str,
    service_name: &str,
    metrics_interval: Duration,
) -> Result<(SdkTracerProvider, SdkMeterProvider), BoxError> {
    let runtime = Arc::new(ExportRuntime::new()?);
    let resource = resource(service_name);
    let tracer = tracer_provider(base, resource.clone(), &runtime)?;
    let meter = meter_provider(base, resource, metrics_interval, &runtime)?;
    Ok((tracer, meter))
}

/// The resource every signal carries: `service.name`.
fn resource(service_name: &str) -> Resource {
    Resource::builder()
        .with_service_name(service_name.to_owned())
        .build()
}

/// A tracer provider (batch span processor) exporting to `{base}/v1/traces`
/// on `runtime`.
fn tracer_provider(
    base: &str,
    resource: Resource,
    runtime: &Arc<ExportRuntime>,
) -> Result<SdkTracerProvider, BoxError> {
    let base = base.trim_end_matches('/');
    // The reqwest client is built inside the export runtime's context.
    let spans = {
        let _guard = runtime.handle().enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{base}/v1/traces"))
            .with_timeout(EXPORT_TIMEOUT)
            .build()?
    };
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(OnRuntime {
            inner: spans,
            runtime: runtime.clone(),
        })
        .build())
}

/// A meter provider (periodic reader every `interval`, cumulative
/// temporality) exporting to `{base}/v1/metrics` on `runtime`.
fn meter_provider(
    base: &str,
    resource: Resource,
    interval: Duration,
    runtime: &Arc<ExportRuntime>,
) -> Result<SdkMeterProvider, BoxError> {
    let base = base.trim_end_matches('/');
    let metrics = {
        let _guard = runtime.handle().enter();
        opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{base}/v1/metrics"))
            .with_timeout(EXPORT_TIMEOUT)
            .with_temporality(Temporality::Cumulative)
            .build()?
    };
    let reader = PeriodicReader::builder(OnRuntime {
        inner: metrics,
        runtime: runtime.clone(),
    })
    .with_interval(interval)
    .build();
    Ok(SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(reader)
        .build())
}

/// A `tracing-opentelemetry` layer turning `tracing` spans into spans of
/// `provider` (scope [`TRACER_NAME`]).
pub fn tracing_layer<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, SdkTracer>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer(TRACER_NAME))
}

/// Force-flushes the providers given (blocking until exported or the SDK's
/// flush timeout). Safe inside any Tokio runtime: exports do not need the
/// caller's runtime (but an in-process receiver must not need it either).
pub fn flush(
    tracer: Option<&SdkTracerProvider>,
    meter: Option<&SdkMeterProvider>,
) -> Result<(), BoxError> {
    let mut errors = Vec::new();
    if let Some(tracer) = tracer {
        if let Err(e) = tracer.force_flush() {
            errors.push(format!("spans: {e}"));
        }
    }
    if let Some(meter) = meter {
        if let Err(e) = meter.force_flush() {
            errors.push(format!("metrics: {e}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; ").into())
    }
}

/// The Tokio runtime exports run on (see the module docs).
#[derive(Debug)]
struct ExportRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl ExportRuntime {
    fn new() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(Self {
            runtime: Some(runtime),
            handle,
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// `fut`, polled with this runtime entered: its I/O and timers (reqwest,
    /// hyper, retry sleeps) are driven by the runtime's worker while the
    /// SDK's thread blocks on the future.
    fn run<'a, F>(&self, fut: F) -> impl Future<Output = F::Output> + Send + 'a
    where
        F: Future + Send + 'a,
    {
        let handle = self.handle.clone();
        let mut fut = Box::pin(fut);
        std::future::poll_fn(move |cx| {
            let _guard = handle.enter();
            fut.as_mut().poll(cx)
        })
    }
}

impl Drop for ExportRuntime {
    fn drop(&mut self) {
        // May be dropped inside another runtime, where a blocking drop panics.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// An exporter whose exports run on an [`ExportRuntime`].
#[derive(Debug)]
struct OnRuntime<E> {
    inner: E,
    runtime: Arc<ExportRuntime>,
}

impl<E: SpanExporter> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.runtime.run(self.inner.export(batch)).await
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for OnRuntime<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        self.runtime.run(self.inner.export(metrics)).await
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}
