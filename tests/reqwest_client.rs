//! The reqwest middleware (`tower_tiered_cache::reqwest`) against real axum
//! origins on loopback ports: hits and coalescing, stale-while-revalidate
//! refreshes through the rest of the middleware chain (and, in a plain
//! chain, through the client `CacheMiddleware::new` takes), 304 revalidation,
//! two clients sharing a Redis L2, stale-if-error on a client timeout,
//! per-service stats, invalidation by a POST, and stripping of the targeted
//! cache-control field (RFC 9213).
//!
//! Freshness moves with a `ManualClock`; real waits are bounded loops.
#![cfg(feature = "reqwest")]

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body as AxumBody;
use axum::response::Response as AxumResponse;
use axum::Router;
use http::{Extensions, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use reqwest_middleware::{ClientWithMiddleware, Middleware, Next};
use support::{clock, within};
use tower_tiered_cache::reqwest::{CacheMiddleware, ClientBuilder};
use tower_tiered_cache::{Cache, CacheBuilder, CacheMode, ManualClock};

const L1_HIT: &str = "tower-tiered-cache; hit; detail=l1";
const STORED: &str = "tower-tiered-cache; fwd=uri-miss; fwd-status=200; stored";

// ---------------------------------------------------------------------------
// A counting origin
// ---------------------------------------------------------------------------

/// What the origin saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// An axum server on `127.0.0.1:0` that counts and records every request.
#[derive(Clone)]
struct Origin {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Origin {
    /// Starts an origin answering every request with `f(call_index, seen)`.
    async fn start<F, Fut>(f: F) -> Origin
    where
        F: Fn(usize, Seen) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = AxumResponse> + Send + 'static,
    {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (c, s) = (calls.clone(), seen.clone());
        let app = Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
            let seen = Seen {
                method,
                path: uri.path().to_owned(),
                headers,
            };
            s.lock().unwrap().push(seen.clone());
            let n = c.fetch_add(1, Ordering::SeqCst);
            f(n, seen)
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Origin { addr, calls, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn request(&self, i: usize) -> Seen {
        self.seen.lock().unwrap()[i].clone()
    }
}

/// A response with `status`, headers and a body.
fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<String>) -> AxumResponse {
    let mut b = http::Response::builder().status(status);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(AxumBody::from(body.into())).unwrap()
}

/// A 200 with `Cache-Control: cc`.
fn ok(cc: &str, body: impl Into<String>) -> AxumResponse {
    reply(200, &[("cache-control", cc)], body)
}

/// The origin's `n`th answer for `/odds`: fresh for 10 s, then stale
/// while revalidating for 60 s; the body names the version.
fn odds(n: usize) -> AxumResponse {
    ok(
        "max-age=10, stale-while-revalidate=60",
        format!("odds v{}", n + 1),
    )
}

/// The cache in front of `client`, nothing after it.
fn client(cache: &Cache) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new(), cache.clone()).build()
}

fn private() -> CacheBuilder {
    Cache::builder().mode(CacheMode::Private)
}

fn manual(clock: &ManualClock) -> CacheBuilder {
    private().clock(clock.clone())
}

fn cache_status(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("cache-status")
        .expect("a Cache-Status header")
        .to_str()
        .unwrap()
        .to_owned()
}

/// GETs `url`: status, Cache-Status, the response's URL and its body.
async fn get(client: &ClientWithMiddleware, url: &str) -> (StatusCode, String, String, String) {
    let resp = client.get(url).send().await.expect("a response");
    let status = resp.status();
    let cs = cache_status(&resp);
    let u = resp.url().to_string();
    (status, cs, u, resp.text().await.expect("a body"))
}

/// Waits (at most `timeout` of real time) until `f` holds.
async fn until(timeout: Duration, what: &str, f: impl FnMut() -> bool) {
    assert!(within(timeout, f).await, "timed out waiting for {what}");
}

// ---------------------------------------------------------------------------
// 1. Hits and coalescing
// ---------------------------------------------------------------------------

/// A miss stores, the second GET is an L1 hit with the request's URL and
/// the body intact, the origin is called once, and the default label is
/// the upstream host.
#[tokio::test]
async fn a_second_get_is_an_l1_hit_with_the_request_url_and_body() {
    let origin = Origin::start(|_, _| async { ok("max-age=60", "1.85") }).await;
    let cache = private().build().unwrap();
    let client = client(&cache);
    let url = origin.url("/odds?event=42");

    let (status, cs, u, body) = get(&client, &url).await;
    assert_eq!(
        (status, cs.as_str(), u.as_str(), body.as_str()),
        (StatusCode::OK, STORED, url.as_str(), "1.85")
    );
    let (status, cs, u, body) = get(&client, &url).await;
    assert_eq!(
        (status, cs.as_str(), u.as_str(), body.as_str()),
        (StatusCode::OK, L1_HIT, url.as_str(), "1.85")
    );
    assert_eq!(origin.calls(), 1);
    // A hit's body has its exact size (reqwest reads it from the size hint).
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.content_length(), Some(4));
    assert_eq!(resp.bytes().await.unwrap(), "1.85");

    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.upstream_calls), (2, 1, 1));
    let labels = cache.label_stats();
    assert_eq!(labels.len(), 1);
    assert_eq!(labels[0].label, "127.0.0.1");
    assert_eq!((labels[0].hits, labels[0].misses), (2, 1));
}

/// 50 concurrent GETs of a cold URL make one origin call: one leader
/// stores, 49 are answered from its response.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_gets_of_a_cold_url_make_one_origin_call() {
    // The origin holds its answer until every request has joined the
    // flight (each request's first poll joins it), so the count below does
    // not hang on timing.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let origin = Origin::start(move |_, _| {
        let g = g.clone();
        async move {
            let _ = g.acquire().await;
            ok("max-age=60", "teams")
        }
    })
    .await;
    let cache = private().build().unwrap();
    let client = client(&cache);
    let url = origin.url("/teams");

    let joined = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (client, url, joined) = (client.clone(), url.clone(), joined.clone());
        tasks.spawn(async move {
            // The first poll runs the cache's decision and joins the flight.
            let mut send = std::pin::pin!(client.get(&url).send());
            let mut first = true;
            let resp = std::future::poll_fn(|cx| {
                let r = send.as_mut().poll(cx);
                if std::mem::take(&mut first) {
                    joined.fetch_add(1, Ordering::SeqCst);
                }
                r
            })
            .await
            .expect("a response");
            let cs = cache_status(&resp);
            let u = resp.url().to_string();
            (resp.status(), cs, u, resp.text().await.unwrap())
        });
    }
    until(Duration::from_secs(5), "50 requests to start", || {
        joined.load(Ordering::SeqCst) == 50
    })
    .await;
    gate.close();

    let mut statuses = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (status, cs, u, body) = r.unwrap();
        assert_eq!(
            (status, u.as_str(), body.as_str()),
            (StatusCode::OK, url.as_str(), "teams")
        );
        statuses.push(cs);
    }
    assert_eq!(origin.calls(), 1, "one origin call for 50 concurrent GETs");
    statuses.sort();
    let collapsed = "tower-tiered-cache; fwd=uri-miss; collapsed; detail=l1";
    let mut expected = vec![collapsed.to_owned(); 49];
    expected.push(STORED.to_owned());
    expected.sort();
    assert_eq!(statuses, expected);
    let stats = cache.stats();
    assert_eq!(
        (
            stats.misses,
            stats.coalesced,
            stats.hits,
            stats.upstream_calls
        ),
        (1, 49, 0, 1)
    );
}

// ---------------------------------------------------------------------------
// 2. Stale-while-revalidate through the rest of the chain
// ---------------------------------------------------------------------------

/// A middleware after the cache: marks requests with `x-via-chain: 1` and
/// counts them.
struct ViaChain(Arc<AtomicUsize>);

#[async_trait::async_trait]
impl Middleware for ViaChain {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        self.0.fetch_add(1, Ordering::SeqCst);
        req.headers_mut()
            .insert("x-via-chain", HeaderValue::from_static("1"));
        next.run(req, extensions).await
    }
}

/// A stale entry inside its SWR window is answered at once; one background
/// refresh goes through the middlewares after the cache; the next GET is a
/// fresh hit with the new body.
#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_through_the_chain() {
    // The refresh (the second origin call) waits at a gate: the stale
    // answer must not.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let origin = Origin::start(move |n, _| {
        let g = g.clone();
        async move {
            if n > 0 {
                let _ = g.acquire().await;
            }
            odds(n)
        }
    })
    .await;
    let clock = clock();
    let cache = manual(&clock).build().unwrap();
    let chain_calls = Arc::new(AtomicUsize::new(0));
    let client = ClientBuilder::new(reqwest::Client::new(), cache.clone())
        .with(ViaChain(chain_calls.clone()))
        .build();
    let url = origin.url("/odds");

    let (_, cs, _, body) = get(&client, &url).await;
    assert_eq!((cs.as_str(), body.as_str()), (STORED, "odds v1"));
    assert_eq!(origin.request(0).header("x-via-chain"), Some("1"));
    let (_, cs, _, body) = get(&client, &url).await;
    assert_eq!((cs.as_str(), body.as_str()), (L1_HIT, "odds v1"));
    assert_eq!(
        chain_calls.load(Ordering::SeqCst),
        1,
        "hits do not run the middlewares after the cache"
    );

    clock.advance(Duration::from_secs(15));
    // Structural: the refresh is held at the gate until after this answer
    // arrived, so an answer that waited for it would never come. The
    // timeout only bounds that hang.
    let resp = tokio::time::timeout(Duration::from_secs(20), client.get(&url).send())
        .await
        .expect("the stale answer did not wait for the refresh")
        .unwrap();
    assert_eq!(
        cache_status(&resp),
        "tower-tiered-cache; hit; ttl=-5; detail=l1"
    );
    assert_eq!(resp.url().as_str(), url);
    assert_eq!(resp.text().await.unwrap(), "odds v1");

    // One background refresh reaches the origin, through ViaChain.
    until(
        Duration::from_secs(5),
        "the refresh to reach the origin",
        || origin.calls() == 2,
    )
    .await;
    gate.close();
    until(Duration::from_secs(5), "the refresh to store", || {
        cache.stats().refresh_ok == 1
    })
    .await;
    let refresh = origin.request(1);
    assert_eq!(refresh.method, Method::GET);
    assert_eq!(refresh.path, "/odds");
    assert_eq!(refresh.header("x-via-chain"), Some("1"));
    assert_eq!(chain_calls.load(Ordering::SeqCst), 2);

    let (_, cs, u, body) = get(&client, &url).await;
    assert_eq!(
        (cs.as_str(), u.as_str(), body.as_str()),
        (L1_HIT, url.as_str(), "odds v2")
    );
    assert_eq!(origin.calls(), 2);
    let stats = cache.stats();
    assert_eq!(
        (
            stats.hits,
            stats.stale,
            stats.misses,
            stats.refresh_ok,
            stats.refresh_skipped
        ),
        (2, 1, 1, 1, 0)
    );
}

/// `CacheMiddleware` in a plain `reqwest_middleware` chain (no
/// `ClientBuilder`, no `refresh_through`) refreshes stale entries in the
/// background by itself, through the `reqwest::Client` its constructor
/// takes: the middleware after the cache in the chain runs for the miss
/// only, the refresh reaches the origin without it, and nothing is skipped.
#[tokio::test]
async fn a_plain_chain_refreshes_in_the_background_through_the_client_it_was_given() {
    let origin = Origin::start(|n, _| async move { odds(n) }).await;
    let clock = clock();
    let cache = manual(&clock).build().unwrap();
    let chain_calls = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::new();
    let client = reqwest_middleware::ClientBuilder::new(http.clone())
        .with(CacheMiddleware::new(http, cache.clone()))
        .with(ViaChain(chain_calls.clone()))
        .build();
    let url = origin.url("/odds");

    let (_, cs, _, body) = get(&client, &url).await;
    assert_eq!((cs.as_str(), body.as_str()), (STORED, "odds v1"));
    clock.advance(Duration::from_secs(15));
    let (_, cs, _, body) = get(&client, &url).await;
    assert_eq!(
        (cs.as_str(), body.as_str()),
        ("tower-tiered-cache; hit; ttl=-5; detail=l1", "odds v1")
    );
    until(
        Duration::from_secs(5),
        "the background refresh to store",
        || cache.stats().refresh_ok == 1,
    )
    .await;
    assert_eq!(origin.calls(), 2);
    assert_eq!(origin.request(0).header("x-via-chain"), Some("1"));
    assert_eq!(
        origin.request(1).header("x-via-chain"),
        None,
        "the refresh went through the plain client, not the chain"
    );
    assert_eq!(chain_calls.load(Ordering::SeqCst), 1);
    let (_, cs, _, body) = get(&client, &url).await;
    assert_eq!((cs.as_str(), body.as_str()), (L1_HIT, "odds v2"));
    let stats = cache.stats();
    assert_eq!((stats.refresh_ok, stats.refresh_skipped), (1, 0));
}

// ---------------------------------------------------------------------------
// 3. Revalidation with a 304
// ---------------------------------------------------------------------------

/// An expired entry with an ETag (no SWR) is revalidated: the origin sees
/// `If-None-Match` and answers 304; the client gets a 200 with the stored
/// body, and the entry is fresh again.
#[tokio::test]
async fn an_expired_entry_is_revalidated_with_if_none_match_and_a_304() {
    let origin = Origin::start(|_, seen| async move {
        let headers = [("etag", "\"v1\""), ("cache-control", "max-age=10")];
        if seen.header("if-none-match") == Some("\"v1\"") {
            reply(304, &headers, "")
        } else {
            reply(200, &headers, "stored body")
        }
    })
    .await;
    let clock = clock();
    let cache = manual(&clock).build().unwrap();
    let client = client(&cache);
    let url = origin.url("/fixtures");

    let (_, cs, _, body) = get(&client, &url).await;
    assert_eq!((cs.as_str(), body.as_str()), (STORED, "stored body"));
    assert_eq!(origin.request(0).header("if-none-match"), None);

    clock.advance(Duration::from_secs(15));
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        cache_status(&resp),
        "tower-tiered-cache; fwd=stale; fwd-status=304; detail=l1"
    );
    assert_eq!(resp.headers()["etag"], "\"v1\"");
    assert_eq!(resp.url().as_str(), url);
    assert_eq!(resp.text().await.unwrap(), "stored body");
    assert_eq!(origin.calls(), 2);
    assert_eq!(origin.request(1).header("if-none-match"), Some("\"v1\""));

    // Freshened by the 304: a hit again, without the origin.
    let (_, cs, _, body) = get(&client, &url).await;
    assert_eq!((cs.as_str(), body.as_str()), (L1_HIT, "stored body"));
    assert_eq!(origin.calls(), 2);
    let stats = cache.stats();
    assert_eq!(
        (
            stats.revalidated,
            stats.misses,
            stats.hits,
            stats.upstream_calls
        ),
        (1, 1, 1, 2)
    );
}

// ---------------------------------------------------------------------------
// 4. Two clients sharing a Redis L2
// ---------------------------------------------------------------------------

/// Two clients (two caches, one Redis, one namespace): what A stored is
/// answered to B from L2 without calling the origin.
#[cfg(feature = "redis")]
#[tokio::test]
async fn two_clients_share_responses_through_redis() {
    redis_support::require_redis();
    let server = redis_support::RedisServer::start();
    let origin = Origin::start(|n, _| async move { ok("max-age=60", format!("shared {n}")) }).await;
    let l2 = || {
        private()
            .redis(server.url())
            .namespace("reqwest-client")
            .l2_timeout(Duration::from_millis(500))
            .build()
            .unwrap()
    };
    let (a, b) = (l2(), l2());
    let (client_a, client_b) = (client(&a), client(&b));
    let url = origin.url("/v1/events");

    let (_, cs, _, body) = get(&client_a, &url).await;
    assert_eq!((cs.as_str(), body.as_str()), (STORED, "shared 0"));
    support::written(&a, 1).await;

    let (status, cs, u, body) = get(&client_b, &url).await;
    assert_eq!(
        (status, cs.as_str(), u.as_str(), body.as_str()),
        (
            StatusCode::OK,
            "tower-tiered-cache; hit; detail=l2",
            url.as_str(),
            "shared 0"
        )
    );
    assert_eq!(origin.calls(), 1, "B was answered without the origin");
    let stats = b.stats();
    assert_eq!(
        (stats.hits_l2, stats.misses, stats.upstream_calls),
        (1, 0, 0)
    );
}

// ---------------------------------------------------------------------------
// 5. A client timeout and stale-if-error
// ---------------------------------------------------------------------------

/// When the origin turns slow and the reqwest client times out, an expired
/// entry inside its stale-if-error window is served instead of the error;
/// with nothing stored, the timeout surfaces as an error.
#[tokio::test]
async fn a_timed_out_upstream_is_answered_from_stale_if_error() {
    // Slow: the origin never answers (it waits for a gate nobody opens), so
    // only the client's 200 ms timeout can end a request.
    let slow = Arc::new(AtomicBool::new(false));
    let never = Arc::new(tokio::sync::Semaphore::new(0));
    let s = slow.clone();
    let origin = Origin::start(move |_, _| {
        let slow = s.load(Ordering::SeqCst);
        let never = never.clone();
        async move {
            if slow {
                let _ = never.acquire().await;
            }
            ok("max-age=10, stale-if-error=600", "last known odds")
        }
    })
    .await;
    let clock = clock();
    let cache = manual(&clock).build().unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let client = ClientBuilder::new(http, cache.clone()).build();
    let url = origin.url("/odds");

    let (_, cs, _, body) = get(&client, &url).await;
    assert_eq!((cs.as_str(), body.as_str()), (STORED, "last known odds"));

    slow.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(15));
    // The origin never answers: a response at all means the client's
    // timeout ended the call (the deadline only bounds a hang).
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(20), client.get(&url).send())
        .await
        .expect("the client's timeout did not end the call")
        .expect("the stale entry");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(200), "took {took:?}");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        cache_status(&resp),
        "tower-tiered-cache; fwd=stale; ttl=-5; detail=stale-if-error"
    );
    assert_eq!(resp.url().as_str(), url);
    assert_eq!(resp.text().await.unwrap(), "last known odds");
    assert_eq!(origin.calls(), 2, "the slow origin was tried");
    let stats = cache.stats();
    assert_eq!(
        (stats.stale_if_error, stats.upstream_errors, stats.misses),
        (1, 1, 1)
    );

    // Nothing stored for this URL: the timeout is the answer.
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        client.get(origin.url("/cold")).send(),
    )
    .await
    .expect("the client's timeout did not end the call")
    .expect_err("a timeout with nothing stored");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(origin.calls(), 3);
    let stats = cache.stats();
    assert_eq!((stats.stale_if_error, stats.upstream_errors), (1, 2));
}

// ---------------------------------------------------------------------------
// 6. Per-service stats and invalidation
// ---------------------------------------------------------------------------

/// Two upstream services (two ports), labelled by `host:port`: each label
/// counts its own requests, hits and misses.
#[tokio::test]
async fn label_stats_break_requests_down_by_upstream_service() {
    let odds = Origin::start(|_, _| async { ok("max-age=60", "odds") }).await;
    let teams = Origin::start(|_, _| async { ok("max-age=60", "teams") }).await;
    let cache = private()
        .label_fn(|p| p.uri.authority().map(|a| a.to_string()))
        .build()
        .unwrap();
    let client = client(&cache);

    for _ in 0..2 {
        assert_eq!(get(&client, &odds.url("/v1/odds")).await.3, "odds");
    }
    for _ in 0..3 {
        assert_eq!(get(&client, &teams.url("/v1/teams")).await.3, "teams");
    }
    assert_eq!((odds.calls(), teams.calls()), (1, 1));

    let rows: Vec<_> = cache
        .label_stats()
        .into_iter()
        .map(|l| (l.label, l.requests, l.hits, l.misses))
        .collect();
    assert_eq!(
        rows,
        vec![
            (teams.addr.to_string(), 3, 2, 1),
            (odds.addr.to_string(), 2, 1, 1),
        ]
    );
}

/// A successful POST through the client invalidates the cached GET of the
/// same URL: the next GET goes to the origin.
#[tokio::test]
async fn a_post_through_the_client_invalidates_the_cached_get() {
    let gets = Arc::new(AtomicUsize::new(0));
    let g = gets.clone();
    let origin = Origin::start(move |_, seen| {
        let version = if seen.method == Method::GET {
            g.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            0
        };
        async move {
            if seen.method == Method::POST {
                reply(201, &[], "created")
            } else {
                ok("max-age=60", format!("bets v{version}"))
            }
        }
    })
    .await;
    let cache = private().build().unwrap();
    let client = client(&cache);
    let url = origin.url("/bets");

    let (_, cs, _, body) = get(&client, &url).await;
    assert_eq!((cs.as_str(), body.as_str()), (STORED, "bets v1"));
    let (_, cs, _, body) = get(&client, &url).await;
    assert_eq!((cs.as_str(), body.as_str()), (L1_HIT, "bets v1"));

    let resp = client
        .post(&url)
        .body("{\"stake\": 10}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(cache_status(&resp), "tower-tiered-cache; fwd=method");
    assert_eq!(resp.text().await.unwrap(), "created");
    assert_eq!(origin.request(1).method, Method::POST);
    assert_eq!(cache.stats().invalidations, 1);

    let (_, cs, _, body) = get(&client, &url).await;
    assert_eq!((cs.as_str(), body.as_str()), (STORED, "bets v2"));
    assert_eq!(origin.calls(), 3);
}

// ---------------------------------------------------------------------------
// Redirects followed by reqwest
// ---------------------------------------------------------------------------

/// reqwest follows redirects below the middleware, so the cache sees the
/// final response. It must not present it (or store it) as the original
/// URL's: `url()` is the final URL, as without the cache, and a
/// non-storable redirect is followed again on the next GET.
#[tokio::test]
async fn a_redirect_followed_by_reqwest_is_not_cached_under_the_original_url() {
    let origin = Origin::start(|_, seen| async move {
        if seen.path == "/old" {
            // A temporary redirect that must not be stored.
            reply(
                302,
                &[("location", "/new"), ("cache-control", "no-store")],
                "",
            )
        } else {
            ok("max-age=60", "new")
        }
    })
    .await;
    let (old, new) = (origin.url("/old"), origin.url("/new"));
    let plain = reqwest::Client::new().get(&old).send().await.unwrap();
    assert_eq!(plain.url().as_str(), new, "reqwest reports the final URL");

    let cache = private().build().unwrap();
    let client = client(&cache);
    let (status, _, u, body) = get(&client, &old).await;
    assert_eq!(
        (status, u.as_str(), body.as_str()),
        (StatusCode::OK, new.as_str(), "new")
    );
    // The 302 said no-store: the next GET of /old asks the origin again.
    let before = origin.calls();
    let (_, _, _, body) = get(&client, &old).await;
    assert_eq!(body, "new");
    assert_eq!(
        origin.calls(),
        before + 2,
        "the second GET was answered from /new's response stored under /old"
    );
    assert_eq!(origin.request(before).path, "/old");
}

// ---------------------------------------------------------------------------
// Targeted cache control (RFC 9213)
// ---------------------------------------------------------------------------

/// With `strip_targeted_cache_control(true)` the middleware removes the
/// targeted field it obeys from what it hands back: on a miss, a hit and a
/// pass (the middleware's own pass path); `Cache-Control` stays.
#[tokio::test]
async fn rfc9213_the_middleware_strips_the_obeyed_field_when_configured() {
    let origin = Origin::start(|_, _| async {
        reply(
            200,
            &[
                ("cache-control", "max-age=0"),
                ("cdn-cache-control", "max-age=60"),
            ],
            "x",
        )
    })
    .await;
    let cache = Cache::builder()
        .strip_targeted_cache_control(true)
        .route(tower_tiered_cache::Route::prefix("/bypass/").bypass())
        .build()
        .unwrap();
    let client = client(&cache);
    for (path, status) in [
        ("/a", STORED),
        ("/a", L1_HIT),
        ("/bypass/a", "tower-tiered-cache; fwd=bypass"),
    ] {
        let resp = client.get(origin.url(path)).send().await.unwrap();
        assert_eq!(cache_status(&resp), status, "{path}");
        assert_eq!(resp.headers().get("cdn-cache-control"), None, "{path}");
        assert_eq!(
            resp.headers().get("cache-control").unwrap(),
            "max-age=0",
            "{path}"
        );
    }
    assert_eq!(origin.calls(), 2);
}
