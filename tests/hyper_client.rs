//! The client side: a hyper-util `Client` as a tower `Service` behind
//! `CacheLayer` in private mode, against real axum origins on loopback.
//!
//! The client resolves made-up host names (`users.test`, `catalog.test`)
//! to the origins' loopback addresses with a custom resolver, so requests
//! carry absolute URIs with distinct hosts, as they would for two upstream
//! services, and the cache labels them by host.
//!
//! The cache's clock is a `ManualClock` (freshness, staleness); origins
//! count the requests they answer; every exchange is bounded by a timeout.

mod support;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::header::{AGE, CACHE_CONTROL, ETAG, IF_NONE_MATCH};
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio::time::timeout;
use tower::{service_fn, BoxError, Layer, Service, ServiceBuilder, ServiceExt};
use tower_tiered_cache::{Cache, CacheLayer, CacheMode, ManualClock, CACHE_STATUS};

use support::loopback::{read_reply, serve, Reply, DEADLINE};

/// Where the manual clocks start: in the past, so the origins' real `Date`
/// headers are never older than the cache's "now" (no apparent age).
const T0: u64 = 1_700_000_000_000;

const HIT: &str = "tower-tiered-cache; hit; detail=l1";
const STORED: &str = "tower-tiered-cache; fwd=uri-miss; fwd-status=200; stored";

// ---------------------------------------------------------------------------
// Helpers

/// A resolver that knows only the given names (no system DNS).
#[derive(Clone)]
struct Hosts(Arc<HashMap<String, SocketAddr>>);

impl Hosts {
    fn new(hosts: &[(&str, SocketAddr)]) -> Self {
        Self(Arc::new(
            hosts.iter().map(|(n, a)| ((*n).to_owned(), *a)).collect(),
        ))
    }
}

impl Service<Name> for Hosts {
    type Response = std::iter::Once<SocketAddr>;
    type Error = io::Error;
    type Future = std::future::Ready<Result<Self::Response, io::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), io::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        std::future::ready(match self.0.get(name.as_str()) {
            Some(addr) => Ok(std::iter::once(*addr)),
            None => Err(io::Error::new(io::ErrorKind::NotFound, name.as_str())),
        })
    }
}

type HttpClient = Client<HttpConnector<Hosts>, Empty<Bytes>>;

fn client(hosts: Hosts) -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new_with_resolver(hosts))
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }

    fn cache_status(&self) -> &str {
        self.header(CACHE_STATUS.as_str())
            .expect("a Cache-Status header")
    }
}

/// Sends `GET url` (with extra headers) through `svc`, reads the body.
async fn get_through<S, B>(svc: &S, url: &str, headers: &[(&str, &str)]) -> Reply
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let mut req = Request::get(url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(Empty::new()).expect("request");
    timeout(DEADLINE, async {
        read_reply(svc.clone().oneshot(req).await.expect("response")).await
    })
    .await
    .unwrap_or_else(|_| panic!("GET {url} timed out"))
}

/// Waits (at most `limit` of real time) until `f` holds.
async fn within(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

fn count(c: &AtomicUsize) -> usize {
    c.load(Ordering::SeqCst)
}

/// An origin whose every route answers `"{name} {path} #{n}"` with `cc`,
/// counting calls.
fn counting_origin(name: &'static str, cc: &'static str, calls: &Arc<AtomicUsize>) -> Router {
    Router::new()
        .fallback(
            move |State(calls): State<Arc<AtomicUsize>>, uri: http::Uri| async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                ([(CACHE_CONTROL, cc)], format!("{name} {} #{n}", uri.path()))
            },
        )
        .with_state(calls.clone())
}

fn private_cache(clock: &ManualClock) -> Cache {
    Cache::builder()
        .mode(CacheMode::Private)
        .clock(clock.clone())
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// Tests

/// The client is wrapped with `tower::service_fn` (where one would add
/// auth headers, retries, ...) and the cache goes on top with a
/// `ServiceBuilder`. Absolute URIs to two hosts: hits and misses per host,
/// each host its own label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hyper_client_behind_the_cache_hits_and_labels_by_host() {
    let (users_calls, catalog_calls) = (counter(), counter());
    let users = serve(counting_origin("users", "max-age=60", &users_calls)).await;
    let catalog = serve(counting_origin("catalog", "max-age=60", &catalog_calls)).await;
    let hosts = Hosts::new(&[("users.test", users.addr), ("catalog.test", catalog.addr)]);
    let client = client(hosts);

    let clock = ManualClock::new(T0);
    let cache = private_cache(&clock);
    let forwarded = counter();
    let f = forwarded.clone();
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(cache.clone()))
        .service(service_fn(move |mut req: Request<Empty<Bytes>>| {
            f.fetch_add(1, Ordering::SeqCst);
            req.headers_mut()
                .insert("user-agent", "composition-test".parse().unwrap());
            let client = client.clone();
            async move { client.request(req).await.map_err(BoxError::from) }
        }));

    let script = [
        ("http://users.test/users/1", STORED, "users /users/1 #1"),
        ("http://users.test/users/1", HIT, "users /users/1 #1"),
        ("http://catalog.test/items/1", STORED, "catalog /items/1 #1"),
        ("http://users.test/users/2", STORED, "users /users/2 #2"),
        ("http://catalog.test/items/1", HIT, "catalog /items/1 #1"),
        ("http://users.test/users/1", HIT, "users /users/1 #1"),
        // Same path, other host: another key.
        ("http://catalog.test/users/1", STORED, "catalog /users/1 #2"),
    ];
    for (url, status, body) in script {
        let reply = get_through(&svc, url, &[]).await;
        assert_eq!(reply.status, StatusCode::OK, "{url}");
        assert_eq!(reply.cache_status(), status, "{url}");
        assert_eq!(reply.body, body, "{url}");
    }
    assert_eq!((count(&users_calls), count(&catalog_calls)), (2, 2));
    assert_eq!(count(&forwarded), 4, "misses only reach the client");

    let labels: Vec<_> = cache
        .label_stats()
        .into_iter()
        .map(|l| (l.label, l.requests, l.hits, l.misses, l.stores))
        .collect();
    assert_eq!(
        labels,
        [
            ("users.test".to_owned(), 4, 2, 2, 2),
            ("catalog.test".to_owned(), 3, 1, 2, 2),
        ]
    );
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.upstream_calls), (3, 4, 4));
}

/// `Cache-Control: private` is for one user's cache: a private-mode cache
/// (the client's own) stores it; a shared cache passes it on every time.
/// The hyper-util `Client` is itself a tower `Service` and is layered
/// directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_responses_are_stored_in_private_mode_only() {
    let calls = counter();
    let origin = serve(counting_origin("me", "private, max-age=60", &calls)).await;
    let client = client(Hosts::new(&[("account.test", origin.addr)]));
    let url = "http://account.test/me";
    let clock = ManualClock::new(T0);

    let private = private_cache(&clock);
    let svc = CacheLayer::new(private.clone()).layer(client.clone());
    let first = get_through(&svc, url, &[]).await;
    assert_eq!(first.cache_status(), STORED);
    assert_eq!(first.header("cache-control"), Some("private, max-age=60"));
    let second = get_through(&svc, url, &[]).await;
    assert_eq!(second.cache_status(), HIT);
    assert_eq!(second.body, "me /me #1");
    assert_eq!(count(&calls), 1);

    let shared = Cache::builder().clock(clock.clone()).build().unwrap();
    let svc = CacheLayer::new(shared.clone()).layer(client);
    let first = get_through(&svc, url, &[]).await;
    assert_eq!(
        first.cache_status(),
        "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=private"
    );
    assert_eq!(first.body, "me /me #2");
    let second = get_through(&svc, url, &[]).await;
    assert_eq!(
        second.cache_status(),
        "tower-tiered-cache; fwd=uri-miss; detail=hit-for-pass"
    );
    assert_eq!(second.body, "me /me #3");
    assert_eq!(count(&calls), 3);
    assert_eq!(shared.stats().stores, 0);
    assert_eq!(private.stats().stores, 1);
}

/// An origin with an `ETag` that answers a matching `If-None-Match` with
/// 304: counts its 200s and 304s.
fn etag_origin(ok: &Arc<AtomicUsize>, not_modified: &Arc<AtomicUsize>) -> Router {
    let (ok, nm) = (ok.clone(), not_modified.clone());
    Router::new().route(
        "/doc",
        get(move |headers: HeaderMap| {
            let (ok, nm) = (ok.clone(), nm.clone());
            async move {
                let cc = (CACHE_CONTROL, "max-age=60");
                let etag = (ETAG, "\"v1\"");
                if headers.get(IF_NONE_MATCH).is_some_and(|v| v == "\"v1\"") {
                    nm.fetch_add(1, Ordering::SeqCst);
                    (StatusCode::NOT_MODIFIED, [cc, etag]).into_response()
                } else {
                    ok.fetch_add(1, Ordering::SeqCst);
                    ([cc, etag], "the document").into_response()
                }
            }
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_entries_are_revalidated_with_if_none_match() {
    let (ok, not_modified) = (counter(), counter());
    let origin = serve(etag_origin(&ok, &not_modified)).await;
    let client = client(Hosts::new(&[("docs.test", origin.addr)]));
    let clock = ManualClock::new(T0);
    let cache = private_cache(&clock);
    let svc = CacheLayer::new(cache.clone()).layer(client);
    let url = "http://docs.test/doc";

    let first = get_through(&svc, url, &[]).await;
    assert_eq!(first.cache_status(), STORED);
    assert_eq!(first.header("etag"), Some("\"v1\""));
    assert_eq!(get_through(&svc, url, &[]).await.cache_status(), HIT);

    // The client's own conditional request is answered from the fresh
    // entry: a 304 without an origin call.
    let cond = get_through(&svc, url, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(cond.status, StatusCode::NOT_MODIFIED);
    assert_eq!(cond.cache_status(), HIT);
    assert!(cond.body.is_empty());

    // Stale: revalidated with If-None-Match; the origin's 304 freshens the
    // entry and the stored body is served.
    for round in 1..=2 {
        clock.advance(Duration::from_secs(61));
        let reval = get_through(&svc, url, &[]).await;
        assert_eq!(reval.status, StatusCode::OK, "round {round}");
        assert_eq!(
            reval.cache_status(),
            "tower-tiered-cache; fwd=stale; fwd-status=304; detail=l1",
            "round {round}"
        );
        assert_eq!(reval.body, "the document");
        assert_eq!(reval.header("age"), Some("0"), "freshened at once");
        let hit = get_through(&svc, url, &[]).await;
        assert_eq!(hit.cache_status(), HIT, "fresh again after round {round}");
        assert_eq!(hit.body, "the document");
        assert_eq!((count(&ok), count(&not_modified)), (1, round));
    }
    let stats = cache.stats();
    assert_eq!(
        (
            stats.misses,
            stats.revalidated,
            stats.hits,
            stats.not_modified
        ),
        (1, 2, 4, 1),
        "the client's 304 is a hit too"
    );
    assert_eq!(stats.upstream_calls, 3);
}

/// `max-age=1, stale-while-revalidate=30`: once stale, the entry is served
/// at once while one background refresh reaches the origin; the refreshed
/// answer then replaces it. The origin holds the refresh at a gate, which
/// proves the stale answer did not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_in_the_background() {
    let calls = counter();
    let gate = Arc::new(Semaphore::new(0));
    let (c, g) = (calls.clone(), gate.clone());
    let app = Router::new().route(
        "/rates",
        get(move || {
            let (c, g) = (c.clone(), g.clone());
            async move {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                if n > 1 {
                    // Refreshes wait for the test (bounded, so a bug fails
                    // the test rather than hangs it).
                    let _ = timeout(DEADLINE, g.acquire()).await;
                }
                (
                    [(CACHE_CONTROL, "max-age=1, stale-while-revalidate=30")],
                    format!("rates v{n}"),
                )
            }
        }),
    );
    let origin = serve(app).await;
    let client = client(Hosts::new(&[("rates.test", origin.addr)]));
    let clock = ManualClock::new(T0);
    let cache = private_cache(&clock);
    let svc = CacheLayer::new(cache.clone()).layer(client);
    let url = "http://rates.test/rates";

    assert_eq!(get_through(&svc, url, &[]).await.cache_status(), STORED);
    clock.advance(Duration::from_secs(2));

    let stale = get_through(&svc, url, &[]).await;
    assert_eq!(
        stale.cache_status(),
        "tower-tiered-cache; hit; ttl=-1; detail=l1"
    );
    assert_eq!(stale.body, "rates v1");
    assert_eq!(stale.headers.get(AGE).unwrap(), "2");
    // The refresh reaches the origin (and waits there).
    assert!(
        within(Duration::from_secs(5), || count(&calls) == 2).await,
        "no background refresh reached the origin"
    );
    // Meanwhile: still stale, and no second refresh for the key.
    let again = get_through(&svc, url, &[]).await;
    assert_eq!(
        again.cache_status(),
        "tower-tiered-cache; hit; ttl=-1; detail=l1"
    );
    assert_eq!(again.body, "rates v1");
    assert_eq!(count(&calls), 2);

    gate.add_permits(1);
    assert!(
        within(Duration::from_secs(5), || cache.stats().refresh_ok == 1).await,
        "the refresh did not complete: {:?}",
        cache.stats()
    );
    let fresh = get_through(&svc, url, &[]).await;
    assert_eq!(fresh.cache_status(), HIT);
    assert_eq!(fresh.body, "rates v2");
    assert_eq!(count(&calls), 2);
    let stats = cache.stats();
    assert_eq!(
        (stats.misses, stats.stale, stats.hits, stats.upstream_calls),
        (1, 2, 1, 2)
    );
    assert_eq!(stats.refresh_failed, 0);
}
