//! A [tower] middleware that caches HTTP responses, for servers (axum,
//! hyper, a caching reverse proxy) and clients (hyper-util, reqwest).
//!
//! - **RFC 9111 semantics**, shared-cache by default, private mode for
//!   clients: `s-maxage` › `max-age` › `Expires` › heuristic freshness,
//!   `no-store`, `no-cache`, `private`, `must-revalidate`, `Vary`,
//!   `Authorization` (§3.5), request directives, conditional requests,
//!   invalidation by unsafe methods, `Age` and `Cache-Status` (RFC 9211).
//! - **Stale-while-revalidate and stale-if-error** (RFC 5861): stale hits are
//!   answered at once while one background refresh per key runs; a failing
//!   upstream is answered from stale entries, behind a circuit breaker.
//! - **Request coalescing**: concurrent misses for a key make one upstream
//!   call.
//! - **Tiered storage**: L1 in process (`quick_cache`, weighted by bytes).
//! - **Counters** in a serialisable [`Stats`] snapshot.
//!
//! # Quick start (axum)
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use tower_tiered_cache::{Cache, CacheLayer, Route};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Cache::builder()
//!     .l1_capacity_bytes(256 * 1024 * 1024)
//!     .default_stale_while_revalidate(Duration::from_secs(30))
//!     .route(Route::prefix("/slow").ttl(Duration::from_secs(60)).force())
//!     .build()?;
//!
//! let app = Router::new()
//!     .route("/slow", get(|| async { "expensive answer" }))
//!     .layer(CacheLayer::new(cache.clone()));
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! # With any tower service
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_tiered_cache::{Cache, CacheLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let cache = Cache::builder().build().unwrap();
//! let origin = service_fn(|_req: Request<()>| async {
//!     Ok::<_, Infallible>(
//!         Response::builder()
//!             .header("cache-control", "max-age=60")
//!             .body(Full::new(Bytes::from_static(b"hello")))
//!             .unwrap(),
//!     )
//! });
//! let svc = CacheLayer::new(cache.clone()).layer(origin);
//!
//! let first = svc.clone().oneshot(Request::get("http://example.com/").body(()).unwrap()).await.unwrap();
//! assert!(first.headers()["cache-status"].to_str().unwrap().contains("stored"));
//! let second = svc.oneshot(Request::get("http://example.com/").body(()).unwrap()).await.unwrap();
//! assert_eq!(second.headers()["cache-status"], "tower-tiered-cache; hit; detail=l1");
//! assert_eq!(cache.stats().hits, 1);
//! # }
//! ```
//!
//! [tower]: https://docs.rs/tower

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "admin")]
pub mod admin;
mod body;
mod breaker;
mod cache;
mod clock;
mod coalesce;
mod entry;
mod error;
mod flow;
mod future;
mod key;
mod layer;
pub mod observe;
pub mod policy;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest;
mod service;
mod stats;
mod store;
pub mod warm;

pub use body::CacheBody;
pub use breaker::{BreakerState, UpstreamBreaker};
pub use cache::{Cache, CacheBuilder, Invalidated, TagFn, CACHE_STATUS, CACHE_STATUS_NAME};
pub use clock::{Clock, ManualClock, SystemClock};
pub use entry::{Entry, Timeline};
pub use error::BuildError;
pub use future::ResponseFuture;
pub use key::{KeyFn, KeyHash};
pub use layer::CacheLayer;
pub use observe::{
    Health, HealthStatus, HealthThresholds, LabelSource, LabelStats, Latency, LogLevel,
    LookupResult, LowPerformer, Recommendation, RecommendationKind, Tier, WindowStats,
};
pub use policy::{CacheMode, NotStored, Route, SetCookiePolicy};
pub use service::CacheService;
pub use stats::{RedisInfo, Stats};
pub use store::codec::{DecodeError, FORMAT_VERSION};

// Compile and run the README's examples as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
