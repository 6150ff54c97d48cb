//! Views of a running [`Cache`](crate::Cache) for the outside world: stats,
//! health and recommendations (`api`), configuration and state (`info`),
//! the Prometheus text format, OpenTelemetry's observable instruments and
//! the stats instances share through Redis.
//!
//! These read the engine; the engine depends on none of them (it only
//! starts the OpenTelemetry registration and the shared-stats flusher when
//! it is built). What a request records as it runs lives below the engine,
//! in `observe`.

mod api;
pub(crate) mod info;
#[cfg(feature = "opentelemetry")]
pub(crate) mod otel;
mod prometheus;
#[cfg(feature = "redis")]
pub(crate) mod shared;
