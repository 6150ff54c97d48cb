//! An OpenTelemetry meter provider read in process: its exporter keeps
//! what `read` takes from the last collection, and only a flush collects.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};

/// What `read` took from the last export (cumulative temporality).
pub struct Keep<T> {
    kept: Arc<Mutex<Vec<T>>>,
    read: fn(&ResourceMetrics) -> Vec<T>,
}

impl<T> Clone for Keep<T> {
    fn clone(&self) -> Self {
        Self {
            kept: Arc::clone(&self.kept),
            read: self.read,
        }
    }
}

impl<T: Clone> Keep<T> {
    /// What the last export kept.
    pub fn kept(&self) -> Vec<T> {
        self.kept.lock().unwrap().clone()
    }
}

impl<T: Send + 'static> PushMetricExporter for Keep<T> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        *self.kept.lock().unwrap() = (self.read)(metrics);
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// A meter provider whose exports go to the returned [`Keep`]; it exports
/// only when flushed (see [`collect`]).
pub fn provider<T: Send + 'static>(
    read: fn(&ResourceMetrics) -> Vec<T>,
) -> (SdkMeterProvider, Keep<T>) {
    let keep = Keep {
        kept: Arc::default(),
        read,
    };
    let provider = SdkMeterProvider::builder()
        .with_reader(
            PeriodicReader::builder(keep.clone())
                .with_interval(Duration::from_secs(3600))
                .build(),
        )
        .build();
    (provider, keep)
}

/// Flushes `provider` (off the async threads: the SDK blocks) and returns
/// what its exporter kept.
pub async fn collect<T: Clone + Send + 'static>(
    provider: &SdkMeterProvider,
    keep: &Keep<T>,
) -> Vec<T> {
    let p = provider.clone();
    tokio::task::spawn_blocking(move || p.force_flush())
        .await
        .unwrap()
        .unwrap();
    keep.kept()
}
