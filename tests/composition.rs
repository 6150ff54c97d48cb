//! `CacheLayer` composed with tower-http layers and axum routers: where the
//! cache sits in a stack decides what it sees, what it stores and what the
//! layers around it see.
//!
//! - `TraceLayer` outside the cache sees every response with its
//!   `Cache-Status`.
//! - `CompressionLayer` inside or outside the cache: outside (the cache
//!   wraps compression) stores one compressed copy per `Accept-Encoding`
//!   value; inside (compression wraps the cache) stores one identity copy and
//!   compresses on every response.
//! - A timeout outside the cache: hits answer in time whatever the origin
//!   does; a miss that times out is cancelled, upstream call and store
//!   included.
//! - axum: `Router::layer` versus `Router::route_layer` (the fallback),
//!   per-router caches and rules under `nest`, `MatchedPath` labels.
//!
//! Origins are axum routers, served on 127.0.0.1:0 and reached with
//! hyper-util's client, or called in process with `oneshot`; every handler
//! counts its calls. The cache's clock is a `ManualClock` wherever
//! freshness matters; every exchange is bounded by a timeout.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::header::{HeaderValue, AGE, CACHE_CONTROL};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::timeout;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::compression::CompressionLayer;
use tower_http::trace::TraceLayer;
use tower_tiered_cache::{Cache, CacheLayer, ManualClock, Route, CACHE_STATUS};

use support::loopback::{client, read_reply, serve, HttpClient, Reply, DEADLINE};

/// Where the manual clocks start: a whole second in the past, so the
/// origins' real `Date` headers are never older than the cache's "now".
const T0: u64 = 1_700_000_000_000;

const HIT: &str = "tower-tiered-cache; hit; detail=l1";
const STORED: &str = "tower-tiered-cache; fwd=uri-miss; fwd-status=200; stored";
const VARY_STORED: &str = "tower-tiered-cache; fwd=vary-miss; fwd-status=200; stored";

// ---------------------------------------------------------------------------
// Helpers

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }

    fn cache_status(&self) -> Option<&str> {
        self.header(CACHE_STATUS.as_str())
    }

    fn age(&self) -> Option<u64> {
        self.header(AGE.as_str())
            .map(|a| a.parse().expect("numeric Age"))
    }
}

/// `GET http://{addr}{path}` with extra headers, over the wire.
async fn fetch(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(Full::default()).expect("request");
    timeout(DEADLINE, async {
        read_reply(client.request(req).await.expect("request")).await
    })
    .await
    .unwrap_or_else(|_| panic!("GET {path} timed out"))
}

/// A response, read to its end, from an in-process service.
async fn read<B>(resp: Response<B>) -> Reply
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    timeout(DEADLINE, read_reply(resp))
        .await
        .expect("body in time")
}

/// A bodiless `GET` for `oneshot`.
fn get_req(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("request")
}

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

fn count(c: &AtomicUsize) -> usize {
    c.load(Ordering::SeqCst)
}

/// A handler that counts its calls and answers `body` with `cc` (no
/// `Cache-Control` when empty).
fn counted(
    calls: &Arc<AtomicUsize>,
    cc: &'static str,
    body: &'static str,
) -> axum::routing::MethodRouter {
    let calls = calls.clone();
    get(move || {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let mut resp = Response::new(Body::from(body));
            if !cc.is_empty() {
                resp.headers_mut()
                    .insert(CACHE_CONTROL, HeaderValue::from_static(cc));
            }
            resp
        }
    })
}

/// `(label, requests, hits, misses)` of every label, busiest first.
fn labels(cache: &Cache) -> Vec<(String, u64, u64, u64)> {
    cache
        .label_stats()
        .into_iter()
        .map(|l| (l.label, l.requests, l.hits, l.misses))
        .collect()
}

fn label(name: &str, requests: u64, hits: u64, misses: u64) -> (String, u64, u64, u64) {
    (name.to_owned(), requests, hits, misses)
}

// ---------------------------------------------------------------------------
// 1. TraceLayer outside the cache

/// An `on_response` callback that records each response's `Cache-Status`
/// (`"-"` when it has none).
fn record_cache_status<B>(
    seen: Arc<Mutex<Vec<String>>>,
) -> impl Fn(&Response<B>, Duration, &tracing::Span) + Clone + Send + Sync + 'static {
    move |resp: &Response<B>, _latency: Duration, _span: &tracing::Span| {
        let status = resp
            .headers()
            .get(&CACHE_STATUS)
            .map(|v| v.to_str().expect("ascii").to_owned())
            .unwrap_or_else(|| "-".to_owned());
        seen.lock().unwrap().push(status);
    }
}

/// The stack exactly as one would write it around a whole service:
/// `ServiceBuilder::new().layer(TraceLayer).layer(CacheLayer).service(app)`.
/// Outside the router the cache sees no `MatchedPath`, so requests are
/// labelled by host (`default` for the host-less URIs a server sees).
#[tokio::test]
async fn service_builder_trace_then_cache_around_a_router() {
    let clock = ManualClock::new(T0);
    let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    let calls = counter();
    let app = Router::new().route("/hello", counted(&calls, "max-age=60", "hello"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let svc = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http().on_response(record_cache_status(seen.clone())))
        .layer(CacheLayer::new(cache.clone()))
        .service(app);

    for _ in 0..3 {
        let resp = timeout(DEADLINE, svc.clone().oneshot(get_req("/hello")))
            .await
            .expect("in time")
            .expect("infallible");
        let reply = read(resp).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "hello");
    }
    assert_eq!(count(&calls), 1, "the handler ran once");
    assert_eq!(*seen.lock().unwrap(), [STORED, HIT, HIT]);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.stores), (2, 1, 1));
    assert_eq!(labels(&cache), [label("default", 3, 2, 1)]);
}

/// The README's stack inside an axum app served on loopback
/// (`Router::layer(ServiceBuilder…)`, the idiomatic axum form): TraceLayer,
/// then a timeout, then the cache. TraceLayer sees the cache's verdict on
/// every response (and none on the timeout's 408); the cache, applied per
/// route, labels by the route template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_timeout_and_cache_over_the_wire() {
    let clock = ManualClock::new(T0);
    let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    let (calls, slow_calls) = (counter(), counter());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let slow = slow_calls.clone();
    let app = Router::new()
        .route("/items/{id}", counted(&calls, "max-age=60", "item"))
        .route(
            "/slow",
            get(move || {
                let slow = slow.clone();
                async move {
                    slow.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    ([(CACHE_CONTROL, "max-age=60")], "late")
                }
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(TraceLayer::new_for_http().on_response(record_cache_status(seen.clone())))
                .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    Duration::from_secs(1),
                ))
                .layer(CacheLayer::new(cache.clone())),
        );
    let server = serve(app).await;
    let client = client();

    for path in ["/items/1", "/items/1", "/items/2", "/items/1"] {
        let reply = fetch(&client, server.addr, path, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert_eq!(reply.body, "item");
    }
    let late = fetch(&client, server.addr, "/slow", &[]).await;
    assert_eq!(late.status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(late.cache_status(), None);
    assert_eq!((count(&calls), count(&slow_calls)), (2, 1));
    assert_eq!(*seen.lock().unwrap(), [STORED, HIT, STORED, HIT, "-"]);
    let items = if cfg!(feature = "axum") {
        "/items/{id}"
    } else {
        "default"
    };
    // The timed-out request is counted as cancelled: a request, neither a
    // hit nor a miss.
    if cfg!(feature = "axum") {
        assert_eq!(
            labels(&cache),
            [label(items, 4, 2, 2), label("/slow", 1, 0, 0)]
        );
    } else {
        assert_eq!(labels(&cache), [label(items, 5, 2, 2)]);
    }
    assert_eq!(cache.stats().cancelled, 1);
    assert_eq!(cache.stats().stores, 2);
}

// ---------------------------------------------------------------------------
// 2. CompressionLayer inside or outside the cache
//
// Which to choose:
//
// - Cache OUTSIDE compression (`ServiceBuilder::new().layer(CacheLayer)
//   .layer(CompressionLayer)`; in a `Router::layer` chain, the cache's
//   `.layer` call comes after compression's): the cache stores what
//   compression produced. Compression adds `Vary: Accept-Encoding`, so
//   every distinct `Accept-Encoding` value is its own entry (one upstream
//   call and one stored copy each; `gzip` and `gzip, br` are two entries).
//   Hits cost no CPU: the stored gzip bytes go out as they are. Best when
//   clients send few distinct `Accept-Encoding` values (a CDN in front that
//   normalises them, or a known client population).
//
// - Cache INSIDE compression (`ServiceBuilder::new().layer(CompressionLayer)
//   .layer(CacheLayer)`): the cache stores the identity body once per URL,
//   and compression runs on every response, hits included. One upstream
//   call serves every encoding; each hit pays for gzip. Best for browsers
//   (many `Accept-Encoding` spellings) and small or cheap-to-compress
//   bodies.

/// A body large and repetitive enough that compression kicks in (over
/// tower-http's 32-byte minimum) and gzip is clearly smaller.
fn document() -> String {
    (0..200)
        .map(|i| format!("line {i:03}: the quick brown fox jumps over the lazy dog\n"))
        .collect()
}

fn gunzip(bytes: &[u8]) -> String {
    let mut out = String::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_string(&mut out)
        .expect("valid gzip");
    out
}

fn document_router(calls: &Arc<AtomicUsize>) -> Router {
    let calls = calls.clone();
    Router::new().route(
        "/doc",
        get(move || {
            let calls = calls.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                ([(CACHE_CONTROL, "max-age=60")], document())
            }
        }),
    )
}

const GZIP: &[(&str, &str)] = &[("accept-encoding", "gzip")];
const GZIP_BR: &[(&str, &str)] = &[("accept-encoding", "gzip, br")];
const IDENTITY: &[(&str, &str)] = &[];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_outside_compression_stores_a_copy_per_accept_encoding() {
    let clock = ManualClock::new(T0);
    let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    let calls = counter();
    // Cache(Compression(handler)): the cache sees compressed responses.
    let app = document_router(&calls).layer(
        ServiceBuilder::new()
            .layer(CacheLayer::new(cache.clone()))
            .layer(CompressionLayer::new()),
    );
    let server = serve(app).await;
    let client = client();
    let doc = document();

    // A gzip client: the origin's answer, compressed, stored with the Vary
    // compression added.
    let gzip1 = fetch(&client, server.addr, "/doc", GZIP).await;
    assert_eq!(gzip1.status, StatusCode::OK);
    assert_eq!(gzip1.cache_status(), Some(STORED));
    assert_eq!(gzip1.header("content-encoding"), Some("gzip"));
    assert_eq!(gzip1.header("vary"), Some("accept-encoding"));
    assert!(
        gzip1.body.len() < doc.len() / 4,
        "{} bytes",
        gzip1.body.len()
    );
    assert_eq!(
        gzip1.header("content-length"),
        Some(gzip1.body.len().to_string().as_str()),
        "the stored compressed length"
    );
    assert_eq!(gunzip(&gzip1.body), doc);
    assert_eq!(count(&calls), 1);

    // An identity client: another variant, another origin call.
    let plain1 = fetch(&client, server.addr, "/doc", IDENTITY).await;
    assert_eq!(plain1.cache_status(), Some(VARY_STORED));
    assert_eq!(plain1.header("content-encoding"), None);
    assert_eq!(plain1.body, doc.as_bytes());
    assert_eq!(count(&calls), 2);

    // Each is now a hit on its own variant; the gzip hit replays the
    // stored bytes, compressing nothing.
    let gzip2 = fetch(&client, server.addr, "/doc", GZIP).await;
    assert_eq!(gzip2.cache_status(), Some(HIT));
    assert_eq!(gzip2.header("content-encoding"), Some("gzip"));
    assert_eq!(gzip2.body, gzip1.body, "the very bytes stored");
    assert_eq!(gunzip(&gzip2.body), doc);
    let plain2 = fetch(&client, server.addr, "/doc", IDENTITY).await;
    assert_eq!(plain2.cache_status(), Some(HIT));
    assert_eq!(plain2.header("content-encoding"), None);
    assert_eq!(plain2.body, doc.as_bytes());
    assert_eq!(count(&calls), 2);

    // Variants are selected by the exact header value: `gzip, br` is a
    // third entry, although it is answered with gzip too.
    let gzip_br = fetch(&client, server.addr, "/doc", GZIP_BR).await;
    assert_eq!(gzip_br.cache_status(), Some(VARY_STORED));
    assert_eq!(gzip_br.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&gzip_br.body), doc);
    assert_eq!(count(&calls), 3);

    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.stores, stats.upstream_calls),
        (2, 3, 3, 3)
    );
    let l = cache.label_stats();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].vary_misses, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_inside_compression_stores_one_identity_copy() {
    let clock = ManualClock::new(T0);
    let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    let calls = counter();
    // Compression(Cache(handler)): the cache sees identity responses.
    let app = document_router(&calls).layer(
        ServiceBuilder::new()
            .layer(CompressionLayer::new())
            .layer(CacheLayer::new(cache.clone())),
    );
    let server = serve(app).await;
    let client = client();
    let doc = document();

    let gzip1 = fetch(&client, server.addr, "/doc", GZIP).await;
    assert_eq!(gzip1.status, StatusCode::OK);
    assert_eq!(gzip1.cache_status(), Some(STORED));
    assert_eq!(gzip1.header("content-encoding"), Some("gzip"));
    assert_eq!(gzip1.header("vary"), Some("accept-encoding"));
    assert_eq!(gunzip(&gzip1.body), doc);

    // One entry answers every encoding: no further origin call.
    let plain = fetch(&client, server.addr, "/doc", IDENTITY).await;
    assert_eq!(plain.cache_status(), Some(HIT));
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(
        plain.header("content-length"),
        Some(doc.len().to_string().as_str()),
        "the stored identity length"
    );
    assert_eq!(plain.body, doc.as_bytes());

    for headers in [GZIP, GZIP_BR] {
        let gz = fetch(&client, server.addr, "/doc", headers).await;
        assert_eq!(gz.cache_status(), Some(HIT), "{headers:?}");
        assert_eq!(gz.header("content-encoding"), Some("gzip"), "{headers:?}");
        assert_eq!(gz.header("content-length"), None, "compressed per response");
        assert_eq!(gunzip(&gz.body), doc, "{headers:?}");
    }
    assert_eq!(count(&calls), 1, "one origin call for every encoding");

    let stats = cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.stores, stats.upstream_calls),
        (3, 1, 1, 1)
    );
    assert_eq!(cache.label_stats()[0].vary_misses, 0);
}

// ---------------------------------------------------------------------------
// 3. Timeouts outside the cache
//
// What happens to a miss that times out: the timeout drops the cache's
// response future, and with it the upstream call (here the handler's
// future; over hyper-util, the client request) and the pending store. The
// response is not stored, however long the origin would have taken; the
// flight's waiters are released at once (one of them calls the upstream
// itself), and the next request for the key is a miss again. A background
// refresh (stale-while-revalidate) is different: it runs in its own task,
// outside any request's timeout, bounded by `refresh_timeout`.

/// An origin whose `/slow/{id}` takes `delay` ms (changeable while the
/// test runs), counting handler starts and completions.
struct SlowOrigin {
    delay_ms: Arc<AtomicU64>,
    started: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
}

impl SlowOrigin {
    fn new() -> Self {
        Self {
            delay_ms: Arc::new(AtomicU64::new(0)),
            started: counter(),
            finished: counter(),
        }
    }

    fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    fn router(&self) -> Router {
        let (delay, started, finished) = (
            self.delay_ms.clone(),
            self.started.clone(),
            self.finished.clone(),
        );
        Router::new().route(
            "/slow/{id}",
            get(move || {
                let (delay, started, finished) = (delay.clone(), started.clone(), finished.clone());
                async move {
                    let n = started.fetch_add(1, Ordering::SeqCst) + 1;
                    let ms = delay.load(Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    finished.fetch_add(1, Ordering::SeqCst);
                    ([(CACHE_CONTROL, "max-age=60")], format!("answer {n}"))
                }
            }),
        )
    }
}

const TIMEOUT: Duration = Duration::from_millis(100);

/// tower-http's `TimeoutLayer` (a 408 response) outside the cache. Tokio's
/// clock is paused (it advances when every task waits), so the timings are
/// exact.
#[tokio::test(start_paused = true)]
async fn tower_http_timeout_outside_the_cache() {
    let clock = ManualClock::new(T0);
    let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    let origin = SlowOrigin::new();
    let svc = ServiceBuilder::new()
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            TIMEOUT,
        ))
        .layer(CacheLayer::new(cache.clone()))
        .service(origin.router());
    let call = |path: &'static str| {
        let svc = svc.clone();
        async move {
            let start = tokio::time::Instant::now();
            let resp = svc.oneshot(get_req(path)).await.expect("infallible");
            (read(resp).await, start.elapsed())
        }
    };

    // Stored while the origin is quick.
    let (first, _) = call("/slow/1").await;
    assert_eq!(first.cache_status(), Some(STORED));
    assert_eq!(first.body, "answer 1");

    // The origin turns slow: hits are still answered at once.
    origin.set_delay(Duration::from_secs(1));
    let (hit, took) = call("/slow/1").await;
    assert_eq!(hit.status, StatusCode::OK);
    assert_eq!(hit.cache_status(), Some(HIT));
    assert_eq!(hit.body, "answer 1");
    assert!(took < TIMEOUT, "{took:?}");

    // A miss on the slow origin times out: a 408 from the timeout layer,
    // with no Cache-Status (the cache never answered).
    let (late, took) = call("/slow/2").await;
    assert_eq!(late.status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(late.cache_status(), None);
    assert_eq!(took, TIMEOUT);
    assert_eq!(count(&origin.started), 2);

    // Long after the origin would have answered: the handler was dropped
    // with the request, nothing was stored, no flight is left behind.
    // (Paused clock: this "sleep" takes no real time; tokio jumps to it
    // once every task waits, and a handler still alive, due at 1 s, would
    // have finished first.)
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        count(&origin.finished),
        1,
        "the cancelled handler never finished"
    );
    let stats = cache.stats();
    assert_eq!(stats.stores, 1);
    assert_eq!(stats.in_flight, 0);
    assert_eq!(stats.upstream_calls, 2, "the cancelled call was made");
    assert_eq!(
        (stats.requests, stats.hits, stats.misses, stats.cancelled),
        (3, 1, 1, 1),
        "the cancelled request is counted as cancelled"
    );

    // So the next request for that key is a miss again.
    origin.set_delay(Duration::ZERO);
    let (again, _) = call("/slow/2").await;
    assert_eq!(again.cache_status(), Some(STORED));
    assert_eq!(again.body, "answer 3");
    assert_eq!(count(&origin.started), 3);
    let (hit, _) = call("/slow/2").await;
    assert_eq!(hit.cache_status(), Some(HIT));
    assert_eq!(hit.body, "answer 3");
}

/// tower's `Timeout` (an `Elapsed` error) outside the cache, and a request
/// without a timeout waiting on the same key: when the leader's request is
/// cancelled, the waiter takes the flight over and calls the origin itself.
#[tokio::test(start_paused = true)]
async fn tower_timeout_cancels_the_leader_and_its_waiter_takes_over() {
    let clock = ManualClock::new(T0);
    let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    let origin = SlowOrigin::new();
    let router = origin.router();
    let with_timeout = ServiceBuilder::new()
        .timeout(TIMEOUT)
        .layer(CacheLayer::new(cache.clone()))
        .service(router.clone());
    let patient = ServiceBuilder::new()
        .layer(CacheLayer::new(cache.clone()))
        .service(router);

    origin.set_delay(Duration::from_millis(300));
    let start = tokio::time::Instant::now();
    let leader = tokio::spawn(with_timeout.clone().oneshot(get_req("/slow/1")));
    // Let the leader reach the origin before the waiter joins its flight.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(count(&origin.started), 1);
    let waiter = tokio::spawn(async move {
        let resp = patient
            .oneshot(get_req("/slow/1"))
            .await
            .expect("infallible");
        read(resp).await
    });

    let err = leader
        .await
        .unwrap()
        .expect_err("the leader's request timed out");
    assert!(err.is::<tower::timeout::error::Elapsed>(), "{err}");
    assert_eq!(start.elapsed(), TIMEOUT);

    let reply = waiter.await.unwrap();
    assert_eq!(reply.cache_status(), Some(STORED));
    assert_eq!(reply.body, "answer 2", "the waiter's own upstream call");
    // The waiter called at 100 ms (when the leader was cancelled), the
    // origin took 300 ms.
    assert_eq!(start.elapsed(), TIMEOUT + Duration::from_millis(300));
    assert_eq!(count(&origin.started), 2);
    assert_eq!(count(&origin.finished), 1);

    // With the answer stored, the timeout no longer matters.
    let hit = with_timeout
        .clone()
        .oneshot(get_req("/slow/1"))
        .await
        .expect("a hit, in time");
    assert_eq!(read(hit).await.cache_status(), Some(HIT));
    let stats = cache.stats();
    assert_eq!((stats.stores, stats.in_flight, stats.coalesced), (1, 0, 0));
}

// ---------------------------------------------------------------------------
// 4. axum: layer vs route_layer, per-router caches, MatchedPath labels

/// The users route (`max-age=60`) and a fallback that counts its calls
/// and answers a cacheable 404 (`max-age=60`, so the difference shows).
fn users_app(users: &Arc<AtomicUsize>, fallback: &Arc<AtomicUsize>) -> Router {
    let fallback = fallback.clone();
    Router::new()
        .route("/users/{id}", counted(users, "max-age=60", "user"))
        .fallback(move || {
            let fallback = fallback.clone();
            async move {
                fallback.fetch_add(1, Ordering::SeqCst);
                (
                    StatusCode::NOT_FOUND,
                    [(CACHE_CONTROL, "max-age=60")],
                    "no such page",
                )
            }
        })
}

async fn call_app(app: &Router, path: &str) -> Reply {
    let resp = timeout(DEADLINE, app.clone().oneshot(get_req(path)))
        .await
        .expect("in time")
        .expect("infallible");
    read(resp).await
}

/// `route_layer` wraps the routes only: unmatched paths reach the fallback
/// untouched (no Cache-Status, no label, nothing stored). `layer` wraps the
/// fallback too, so the 404 is cached like any response (labelled
/// `default`: a fallback has no `MatchedPath`).
#[tokio::test]
async fn route_layer_skips_the_fallback_and_layer_caches_it() {
    let template = if cfg!(feature = "axum") {
        "/users/{id}"
    } else {
        "default"
    };
    for per_route in [true, false] {
        let clock = ManualClock::new(T0);
        let cache = Cache::builder().clock(clock.clone()).build().unwrap();
        let (users, fallback) = (counter(), counter());
        let app = users_app(&users, &fallback);
        let app = if per_route {
            app.route_layer(CacheLayer::new(cache.clone()))
        } else {
            app.layer(CacheLayer::new(cache.clone()))
        };

        let mut seen = Vec::new();
        for path in [
            "/users/1", "/users/1", "/users/2", "/nope", "/nope", "/users/2",
        ] {
            let reply = call_app(&app, path).await;
            let want = if path == "/nope" { 404 } else { 200 };
            assert_eq!(reply.status.as_u16(), want, "{path}");
            seen.push(reply.cache_status().unwrap_or("-").to_owned());
        }
        assert_eq!(count(&users), 2, "route_layer: {per_route}");
        if per_route {
            assert_eq!(seen, [STORED, HIT, STORED, "-", "-", HIT]);
            assert_eq!(count(&fallback), 2);
            assert_eq!(labels(&cache), [label(template, 4, 2, 2)]);
            assert_eq!(cache.stats().stores, 2);
        } else {
            let stored_404 = "tower-tiered-cache; fwd=uri-miss; fwd-status=404; stored";
            assert_eq!(seen, [STORED, HIT, STORED, stored_404, HIT, HIT]);
            assert_eq!(count(&fallback), 1);
            let mut want = vec![label(template, 4, 2, 2), label("default", 2, 1, 1)];
            if template == "default" {
                want = vec![label("default", 6, 3, 3)];
            }
            assert_eq!(labels(&cache), want);
            assert_eq!(cache.stats().stores, 3);
        }
    }
}

/// Two nested routers, each with its own cache and rules: `/api` answers
/// are fresh for 5 s, `/static` ones for an hour (both forced: the
/// handlers send no caching headers). Under `nest`, a router's own layers
/// see the path with the prefix stripped; with the `axum` feature the
/// cache keys and matches rules by axum's `OriginalUri` (the full path),
/// without it by the stripped path. `MatchedPath` keeps the full template.
#[tokio::test]
async fn nested_routers_with_their_own_caches_and_rules() {
    let clock = ManualClock::new(T0);
    let api_cache = Cache::builder()
        .clock(clock.clone())
        .route(
            Route::prefix(if cfg!(feature = "axum") {
                "/api/items"
            } else {
                "/items"
            })
            .ttl(Duration::from_secs(5))
            .force(),
        )
        .build()
        .unwrap();
    let static_cache = Cache::builder()
        .clock(clock.clone())
        .route(Route::prefix("/").ttl(Duration::from_secs(3600)).force())
        .build()
        .unwrap();
    let (api_calls, static_calls) = (counter(), counter());
    let api = Router::new()
        .route("/items/{id}", counted(&api_calls, "", "item"))
        .layer(CacheLayer::new(api_cache.clone()));
    let assets = Router::new()
        .route("/{*file}", counted(&static_calls, "", "asset"))
        .layer(CacheLayer::new(static_cache.clone()));
    let app = Router::new().nest("/api", api).nest("/static", assets);

    let api_get = || call_app(&app, "/api/items/1");
    let static_get = || call_app(&app, "/static/app.js");

    let (a, s) = (api_get().await, static_get().await);
    assert_eq!(
        (a.cache_status(), s.cache_status()),
        (Some(STORED), Some(STORED))
    );
    assert_eq!(
        (a.body.as_ref(), s.body.as_ref()),
        (&b"item"[..], &b"asset"[..])
    );

    clock.advance(Duration::from_secs(4));
    let (a, s) = (api_get().await, static_get().await);
    assert_eq!((a.cache_status(), s.cache_status()), (Some(HIT), Some(HIT)));
    assert_eq!((a.age(), s.age()), (Some(4), Some(4)));

    // 6 s in: past the API's 5 s, well within the hour.
    clock.advance(Duration::from_secs(2));
    let (a, s) = (api_get().await, static_get().await);
    assert_eq!(a.cache_status(), Some(STORED), "the API entry expired");
    assert_eq!(a.age(), Some(0));
    assert_eq!(s.cache_status(), Some(HIT));
    assert_eq!(s.age(), Some(6));

    assert_eq!((count(&api_calls), count(&static_calls)), (2, 1));
    let (api_t, static_t) = if cfg!(feature = "axum") {
        ("/api/items/{id}", "/static/{*file}")
    } else {
        ("default", "default")
    };
    assert_eq!(labels(&api_cache), [label(api_t, 3, 1, 2)]);
    assert_eq!(labels(&static_cache), [label(static_t, 3, 2, 1)]);

    // A rule written against the outer path matches inside `nest` with
    // the `axum` feature (full paths); without it, it does not and, the
    // handler sending no freshness, nothing is stored.
    let outer_rule = Cache::builder()
        .clock(clock.clone())
        .route(Route::prefix("/api").ttl(Duration::from_secs(5)).force())
        .build()
        .unwrap();
    let calls = counter();
    let app = Router::new().nest(
        "/api",
        Router::new()
            .route("/items/{id}", counted(&calls, "", "item"))
            .layer(CacheLayer::new(outer_rule.clone())),
    );
    for _ in 0..2 {
        let r = call_app(&app, "/api/items/1").await;
        assert_eq!(r.status, StatusCode::OK);
    }
    if cfg!(feature = "axum") {
        assert_eq!(count(&calls), 1);
        assert_eq!(outer_rule.stats().stores, 1);
    } else {
        assert_eq!(count(&calls), 2);
        assert_eq!(outer_rule.stats().stores, 0);
        assert_eq!(outer_rule.label_stats()[0].not_stored_no_freshness, 1);
    }
}

/// One cache for several nested routers belongs on the outer router: its
/// `layer` wraps the nested routes from outside `nest`'s prefix stripping,
/// so keys (and route rules) see the full paths. The same cache layered
/// inside each nested router would key `/api/x` and `/static/x` both as
/// `/x` (see the next test).
#[tokio::test]
async fn one_cache_for_nested_routers_goes_on_the_outer_router() {
    let clock = ManualClock::new(T0);
    let cache = Cache::builder()
        .clock(clock.clone())
        .route(Route::prefix("/api").ttl(Duration::from_secs(5)).force())
        .route(
            Route::prefix("/static")
                .ttl(Duration::from_secs(3600))
                .force(),
        )
        .build()
        .unwrap();
    let (api_calls, static_calls) = (counter(), counter());
    let app = Router::new()
        .nest(
            "/api",
            Router::new().route("/{name}", counted(&api_calls, "", "from api")),
        )
        .nest(
            "/static",
            Router::new().route("/{name}", counted(&static_calls, "", "from static")),
        )
        .layer(CacheLayer::new(cache.clone()));

    for _ in 0..2 {
        assert_eq!(call_app(&app, "/api/x").await.body, "from api");
        assert_eq!(call_app(&app, "/static/x").await.body, "from static");
    }
    assert_eq!((count(&api_calls), count(&static_calls)), (1, 1));
    clock.advance(Duration::from_secs(6));
    let a = call_app(&app, "/api/x").await;
    let s = call_app(&app, "/static/x").await;
    assert_eq!(a.cache_status(), Some(STORED), "the /api rule: 5 s");
    assert_eq!(s.cache_status(), Some(HIT), "the /static rule: an hour");
    assert_eq!(s.age(), Some(6));
    if cfg!(feature = "axum") {
        assert_eq!(
            labels(&cache),
            [
                label("/api/{name}", 3, 1, 2),
                label("/static/{name}", 3, 2, 1)
            ]
        );
    }
}

/// One cache layered *inside* two nested routers. Both see the stripped
/// path; with the `axum` feature the cache keys by `OriginalUri`, so
/// `/api/x` and `/static/x` stay apart. Without it they share the key
/// `GET /x` and the second is answered with the first's body: put the
/// cache on the outer router then (previous test).
#[tokio::test]
async fn one_cache_inside_nested_routers() {
    let clock = ManualClock::new(T0);
    let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    let (api_calls, static_calls) = (counter(), counter());
    let app = Router::new()
        .nest(
            "/api",
            Router::new()
                .route("/{name}", counted(&api_calls, "max-age=60", "from api"))
                .layer(CacheLayer::new(cache.clone())),
        )
        .nest(
            "/static",
            Router::new()
                .route(
                    "/{name}",
                    counted(&static_calls, "max-age=60", "from static"),
                )
                .layer(CacheLayer::new(cache.clone())),
        );
    let a = call_app(&app, "/api/x").await;
    assert_eq!(
        (a.cache_status(), a.body.as_ref()),
        (Some(STORED), &b"from api"[..])
    );
    let s = call_app(&app, "/static/x").await;
    if cfg!(feature = "axum") {
        assert_eq!(s.cache_status(), Some(STORED));
        assert_eq!(s.body, "from static");
        assert_eq!((count(&api_calls), count(&static_calls)), (1, 1));
        // And each is a hit for its own path.
        assert_eq!(call_app(&app, "/static/x").await.body, "from static");
        assert_eq!(call_app(&app, "/api/x").await.body, "from api");
        assert_eq!((count(&api_calls), count(&static_calls)), (1, 1));
    } else {
        assert_eq!(s.cache_status(), Some(HIT));
        assert_eq!(s.body, "from api", "the /api entry answered /static/x");
        assert_eq!((count(&api_calls), count(&static_calls)), (1, 0));
    }
}

/// `MatchedPath` labels through a served app: the route template, not the
/// concrete path, so `/users/1` and `/users/2` add up under one label.
#[cfg(feature = "axum")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matched_path_labels_over_the_wire() {
    let clock = ManualClock::new(T0);
    let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    let (users, files) = (counter(), counter());
    let app = Router::new()
        .route("/users/{id}", counted(&users, "max-age=60", "user"))
        .route("/files/{*path}", counted(&files, "no-store", "file"))
        .route_layer(CacheLayer::new(cache.clone()));
    let server = serve(app).await;
    let client = client();
    for path in [
        "/users/1",
        "/users/2",
        "/users/1",
        "/files/a/b",
        "/files/a/b",
    ] {
        assert_eq!(fetch(&client, server.addr, path, &[]).await.status, 200);
    }
    assert_eq!((count(&users), count(&files)), (2, 2));
    let stats = cache.label_stats();
    let users = stats
        .iter()
        .find(|l| l.label == "/users/{id}")
        .expect("users label");
    assert_eq!(
        (users.requests, users.hits, users.misses, users.stores),
        (3, 1, 2, 2)
    );
    let files = stats
        .iter()
        .find(|l| l.label == "/files/{*path}")
        .expect("files label");
    assert_eq!(files.requests, 2);
    assert_eq!(files.stores, 0);
    assert_eq!(files.hits, 0);
    assert_eq!(stats.len(), 2, "{stats:?}");
}
