//! A [tower] middleware that caches HTTP responses, for servers (axum,
//! hyper, a caching reverse proxy) and clients (hyper-util, reqwest).
//!
//! - **RFC 9111 semantics**, shared-cache by default, private mode for
//!   clients: `s-maxage` › `max-age` › `Expires` › heuristic freshness,
//!   `no-store`, `no-cache`, `private`, `must-revalidate`, `Vary`,
//!   `Authorization` (§3.5), request directives, conditional requests,
//!   invalidation by unsafe methods, `Age` and `Cache-Status` (RFC 9211),
//!   and targeted fields such as `CDN-Cache-Control` (RFC 9213) in shared
//!   mode.
//! - **Stale-while-revalidate and stale-if-error** (RFC 5861): stale hits are
//!   answered at once while one background refresh per key runs; a failing
//!   upstream is answered from stale entries, behind a circuit breaker.
//! - **Request coalescing**: concurrent misses for a key make one upstream
//!   call.
//! - **Tiered storage**: L1 in process, L2 in Redis (see [Tiers](#tiers)).
//! - **Counters** in a serialisable [`Stats`] snapshot, `tracing` spans,
//!   OpenTelemetry metrics and an admin service (see [Features](#features)).
//! - **Typed values** (feature `values`, on by default) on the same tiers,
//!   counters and invalidation: [`ValueCache`], from [`Cache::values`].
//!
//! # Tiers
//!
//! - **L1**, always there: an in-process [`quick_cache`] cache, weighted
//!   by the bytes each entry holds and bounded by
//!   [`l1_capacity_bytes`](CacheBuilder::l1_capacity_bytes). Each process
//!   has its own.
//! - **L2**, optional (feature `redis`): Redis, shared by every instance
//!   that uses the same server and namespace, as one node
//!   (`CacheBuilder::redis`), a Redis Cluster (`CacheBuilder::redis_cluster`)
//!   or the master that Redis Sentinel names (`CacheBuilder::redis_sentinel`),
//!   with `rediss://` TLS (feature `redis-tls`), encryption at rest (feature
//!   `l2-encryption`) and LZ4 compression (feature `compression`). An L2
//!   hit is copied into L1 after `CacheBuilder::promote_after` hits;
//!   invalidations reach every instance's L1.
//!
//! A lookup tries L1, then L2, then the upstream (one call per key for
//! concurrent misses); `Cache-Status` says which answered
//! (`hit; detail=l1`, `hit; detail=l2`, `fwd=uri-miss`).
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `serde` | yes | `Serialize` for [`Stats`] and the other snapshots |
//! | `values` | yes | typed values ([`ValueCache`], [`Cache::values`]) on the same tiers, JSON in L2 |
//! | `postcard` | no | `values::Postcard`, a compact binary codec for typed values (implies `values`) |
//! | `redis` | no | the L2 tier in Redis: one node, Redis Cluster or Redis Sentinel |
//! | `redis-tls` | no | `rediss://` URLs, through the system's OpenSSL (implies `redis`) |
//! | `l2-encryption` | no | encryption at rest for L2: XChaCha20-Poly1305, `L2Keys` (implies `redis`) |
//! | `compression` | no | LZ4 compression of large L2 bodies |
//! | `opentelemetry` | no | OpenTelemetry metrics (`CacheBuilder::meter`); re-exports `opentelemetry` |
//! | `axum` | no | labels requests by axum's matched route template |
//! | `reqwest` | no | `reqwest::CacheMiddleware` and `reqwest::ClientBuilder`; re-exports `reqwest_middleware` |
//! | `admin` | no | `admin::AdminService`: health, stats, Prometheus `/metrics`, warming, invalidation, a dashboard |
//!
//! Spans need no feature: `cache.lookup` and `cache.refresh` are `tracing`
//! spans at [`span_level`](CacheBuilder::span_level) (DEBUG by default),
//! and with `redis`, each L2 command has a DEBUG `redis` client span.
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
//! # Keys: what a client can change
//!
//! A shared cache answers many clients with what one of them caused to be
//! stored, so every request input that reached the origin and shaped the
//! response must be in the key. The key is made of:
//!
//! - the method class (`GET`; `HEAD` is answered from `GET` entries);
//! - the request URI's scheme and authority, or `Host` when the URI has
//!   none, lower-cased ([`key_scheme`](CacheBuilder::key_scheme),
//!   [`key_authority`](CacheBuilder::key_authority));
//! - the path and query, byte for byte
//!   ([`sort_query`](CacheBuilder::sort_query),
//!   [`ignore_query_param`](CacheBuilder::ignore_query_param));
//! - the headers named by [`key_header`](CacheBuilder::key_header);
//! - per stored response, the request headers its `Vary` names;
//! - with [`partition_by_credentials`](CacheBuilder::partition_by_credentials),
//!   a digest of `Authorization`, `Proxy-Authorization` and `Cookie`;
//!
//! or, with [`key_fn`](CacheBuilder::key_fn), of whatever the function
//! returns. Nothing else: other request headers, a `GET`'s body, the
//! client's address and request extensions are not in the key. An origin
//! that shapes a cacheable response with one of them must name it in
//! `Vary`, and a service in front of the cache (a reverse proxy, a gateway)
//! must not forward an input the cache does not key on: drop it, replace
//! it with a value of its own, or key on the value it forwards (with
//! [`key_header`](CacheBuilder::key_header), or in a
//! [`key_fn`](CacheBuilder::key_fn)). A proxy that keys without the
//! authority but copies the client's `Host` into `X-Forwarded-Host` lets one
//! request with `Host: evil.example` rewrite the links and redirects every
//! later client gets; client-sent `Forwarded` / `X-Forwarded-*` headers and
//! `GET` bodies are the same trap.
//!
//! `Cookie` is not special to RFC 9111: in a shared cache, a response to a
//! request with cookies that allows storing (`max-age`, no `Vary: Cookie`)
//! is served to the next client. Responses with `Set-Cookie` are not
//! stored by default ([`SetCookiePolicy`]). For an origin that personalises
//! by cookie, let those requests pass (a [`key_fn`](CacheBuilder::key_fn)
//! returning `None`) or partition them
//! ([`partition_by_credentials`](CacheBuilder::partition_by_credentials)).
//! `examples/proxy.rs` shows both, and the host rules above.
//!
//! [tower]: https://docs.rs/tower
//! [`quick_cache`]: https://docs.rs/quick_cache/0.7

#![cfg_attr(docsrs, feature(doc_cfg))]

mod adaptive;
#[cfg(feature = "admin")]
pub mod admin;
mod body;
mod breaker;
pub mod builder;
mod cache;
mod clock;
mod coalesce;
mod entry;
mod error;
mod export;
mod flow;
mod front;
mod future;
mod hot;
mod key;
mod layer;
pub mod observe;
pub mod policy;
mod reads;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod reqwest;
mod sample;
mod service;
mod stats;
mod status;
mod store;
mod sync;
mod tiers;
#[cfg(feature = "values")]
#[cfg_attr(docsrs, doc(cfg(feature = "values")))]
pub mod values;
pub mod warm;

pub use adaptive::AdaptiveTtl;
pub use body::CacheBody;
pub use breaker::{BreakerState, UpstreamBreaker};
pub use builder::CacheBuilder;
pub use cache::{Cache, Invalidated, TagFn};
pub use clock::{Clock, ManualClock, SystemClock};
pub use entry::{Entry, Timeline};
pub use error::BuildError;
pub use flow::hot::PrefetchFn;
pub use future::ResponseFuture;
pub use key::{KeyFn, KeyHash};
pub use layer::CacheLayer;
pub use observe::{
    Health, HealthStatus, HealthThresholds, LabelSource, LabelStats, Latency, LogLevel,
    LookupResult, LowPerformer, Recommendation, RecommendationKind, Tier, WindowStats,
};
pub use policy::{CacheMode, NotStored, RequestCacheControl, Route, SetCookiePolicy};
pub use service::CacheService;
pub use stats::{LeaseStats, PrefetchStats, RedisInfo, Stats};
pub use status::{CACHE_STATUS, CACHE_STATUS_NAME};
pub use store::codec::{DecodeError, FORMAT_VERSION};
#[cfg(feature = "l2-encryption")]
#[cfg_attr(docsrs, doc(cfg(feature = "l2-encryption")))]
pub use store::seal::{L2Keys, L2KeysError, MAX_L2_KEYS, MAX_L2_KEY_FILE_BYTES, MAX_L2_KEY_ID_LEN};
pub use tiers::L1Admission;

/// The [`opentelemetry`](https://docs.rs/opentelemetry/0.33) API crate this
/// crate is built against, version 0.33 (feature `opentelemetry`). The
/// `Meter` given to [`CacheBuilder::meter`] must come from this same
/// version: take it from here (`tower_tiered_cache::opentelemetry`) or
/// depend on `opentelemetry = "0.33"`, with `opentelemetry_sdk` and
/// `opentelemetry-otlp` 0.33 and `tracing-opentelemetry` 0.34 beside it.
/// A meter of another version is another type and does not compile.
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub use opentelemetry;

/// The [`reqwest_middleware`](https://docs.rs/reqwest-middleware/0.5) crate
/// this crate is built against, version 0.5, on `reqwest` 0.13 (feature
/// `reqwest`; `reqwest_middleware::reqwest` is that `reqwest`).
/// [`CacheMiddleware`](crate::reqwest::CacheMiddleware) implements this version's `Middleware`:
/// chain it with `reqwest-middleware = "0.5"` and `reqwest = "0.13"`, or
/// through this re-export.
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub use reqwest_middleware;
#[cfg(feature = "values")]
pub use values::{ValueCache, ValueOptions};

// Compile the README's examples as doc tests (they use every feature:
// run with `--all-features`, as the README's test command does).
#[cfg(all(
    doctest,
    feature = "redis",
    feature = "l2-encryption",
    feature = "reqwest",
    feature = "admin",
    feature = "axum"
))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
