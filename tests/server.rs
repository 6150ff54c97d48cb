//! Real-server tests: an axum 0.8 app with `CacheLayer` on a loopback TCP
//! port, driven by hyper-util's legacy client. Every client call is bounded
//! by a timeout; handlers count their invocations.

mod support;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request as AxumRequest;
use axum::middleware::{self, Next};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::header::{
    AGE, CACHE_CONTROL, CONTENT_LENGTH, ETAG, IF_NONE_MATCH, LOCATION, SET_COOKIE, VARY,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use tokio::sync::{mpsc, Notify};
use tokio::time::timeout;
use tower::ServiceExt;
use tower_tiered_cache::{Cache, CacheLayer, CACHE_STATUS};

use support::loopback::{client, send, serve, HttpClient, Reply, DEADLINE};

const HIT_L1: &str = "tower-tiered-cache; hit; detail=l1";
const STORED: &str = "tower-tiered-cache; fwd=uri-miss; fwd-status=200; stored";

impl Reply {
    fn cache_status(&self) -> &str {
        self.headers
            .get(&CACHE_STATUS)
            .map(|v| v.to_str().expect("ascii Cache-Status"))
            .unwrap_or("")
    }

    fn age(&self) -> Option<u64> {
        self.headers
            .get(AGE)
            .map(|v| v.to_str().unwrap().parse().expect("numeric Age"))
    }
}

fn request(method: Method, addr: SocketAddr, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
}

fn get_req(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    request(Method::GET, addr, path)
        .body(Full::default())
        .unwrap()
}

async fn get_path(client: &HttpClient, addr: SocketAddr, path: &str) -> Reply {
    send(client, get_req(addr, path)).await
}

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

fn count(c: &AtomicUsize) -> usize {
    c.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_get_is_an_l1_hit_with_age() {
    let calls = counter();
    let cache = Cache::builder().build().unwrap();
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/hello",
            get(move || {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    ([(CACHE_CONTROL, "max-age=60")], "hello")
                }
            }),
        )
        .layer(CacheLayer::new(cache.clone()));
    let server = serve(app).await;
    let client = client();

    let first = get_path(&client, server.addr, "/hello").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, "hello");
    assert_eq!(first.cache_status(), STORED);

    let second = get_path(&client, server.addr, "/hello").await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body, "hello");
    assert_eq!(second.cache_status(), HIT_L1);
    let age = second.age().expect("a hit carries Age");
    assert!(age < 10, "Age {age}");
    assert_eq!(
        second.headers[CACHE_CONTROL], "max-age=60",
        "stored headers are replayed"
    );
    assert_eq!(second.headers[CONTENT_LENGTH], "5");

    // HEAD reads the GET entry.
    let head = send(
        &client,
        request(Method::HEAD, server.addr, "/hello")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.cache_status(), HIT_L1);
    assert!(head.body.is_empty());

    assert_eq!(count(&calls), 1, "the handler ran once");
    let stats = cache.stats();
    assert_eq!(stats.hits_l1, 2);
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.stores, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cold_misses_make_one_upstream_call() {
    const N: usize = 200;
    let calls = counter();
    let arrivals = counter();
    let joined = counter();
    let gate = Arc::new(Notify::new());
    let cache = Cache::builder().build().unwrap();

    let (c, g) = (calls.clone(), gate.clone());
    let (a, g2) = (arrivals.clone(), gate.clone());
    let app = Router::new()
        .route(
            "/slow",
            get(move || {
                let (c, g) = (c.clone(), g.clone());
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    // Held until every request has reached the cache (or a
                    // bounded while, so a bug fails the test rather than hangs).
                    let _ = timeout(Duration::from_secs(10), g.notified()).await;
                    ([(CACHE_CONTROL, "max-age=60")], "slow answer")
                }
            }),
        )
        .layer(CacheLayer::new(cache.clone()))
        // Outside the cache: counts requests as they arrive, and as they come
        // back from their first poll of the cache, which has then joined
        // the flight (or, the leader, reached the handler): a miss's path
        // from the call to joining has no await. The last to do so opens
        // the gate.
        .layer(middleware::from_fn(move |req: AxumRequest, next: Next| {
            let (a, j, g) = (a.clone(), joined.clone(), g2.clone());
            async move {
                a.fetch_add(1, Ordering::SeqCst);
                let mut inner = std::pin::pin!(next.run(req));
                let mut first = true;
                std::future::poll_fn(|cx| {
                    let r = inner.as_mut().poll(cx);
                    if std::mem::take(&mut first) && j.fetch_add(1, Ordering::SeqCst) + 1 == N {
                        g.notify_one();
                    }
                    r
                })
                .await
            }
        }));
    let server = serve(app).await;
    let client = client();

    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let client = client.clone();
            let addr = server.addr;
            tokio::spawn(async move { get_path(&client, addr, "/slow").await })
        })
        .collect();
    let mut statuses = std::collections::HashMap::<String, usize>::new();
    for t in tasks {
        let reply = t.await.expect("request task");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "slow answer");
        *statuses.entry(reply.cache_status().to_owned()).or_default() += 1;
    }
    assert_eq!(count(&arrivals), N);
    assert_eq!(
        count(&calls),
        1,
        "one upstream call for {N} requests; Cache-Status seen: {statuses:?}"
    );
    assert_eq!(statuses.get(STORED), Some(&1), "{statuses:?}");
    assert_eq!(
        statuses.get("tower-tiered-cache; fwd=uri-miss; collapsed; detail=l1"),
        Some(&(N - 1)),
        "{statuses:?}"
    );
    let stats = cache.stats();
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.coalesced, (N - 1) as u64);
    assert_eq!(stats.upstream_calls, 1);
    assert_eq!(stats.in_flight, 0);

    // And the next one is a plain hit.
    let after = get_path(&client, server.addr, "/slow").await;
    assert_eq!(after.cache_status(), HIT_L1);
    assert_eq!(count(&calls), 1);
}

/// The byte at `i` of the generated large body.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 13)) as u8
}

fn pattern_chunk(start: usize, len: usize) -> Bytes {
    (start..start + len)
        .map(pattern)
        .collect::<Vec<u8>>()
        .into()
}

/// A body fed by a channel: frames arrive as the producer sends them.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

const LARGE: usize = 4 * 1024 * 1024;
const CHUNK: usize = 16 * 1024;
const HALF: usize = LARGE / 2;

/// A handler that streams `LARGE` generated bytes with `max-age=60`, no
/// `Content-Length`, and stops halfway until `resume` is notified: if
/// anything between it and the client buffered the whole body, the client
/// would never see the first half and the test would time out.
fn streaming_handler(
    calls: Arc<AtomicUsize>,
    resume: Arc<Notify>,
) -> impl Fn() -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Clone + Send + Sync + 'static
{
    move || {
        let (calls, resume) = (calls.clone(), resume.clone());
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let mut sent = 0;
                while sent < LARGE {
                    if sent == HALF
                        && timeout(Duration::from_secs(10), resume.notified())
                            .await
                            .is_err()
                    {
                        return; // Never resumed: end the body short.
                    }
                    if tx.send(pattern_chunk(sent, CHUNK)).await.is_err() {
                        return;
                    }
                    sent += CHUNK;
                }
            });
            Response::builder()
                .header(CACHE_CONTROL, "max-age=60")
                .body(Body::new(ChannelBody { rx }))
                .unwrap()
        })
    }
}

/// Reads a response body frame by frame, notifying `resume` once the first
/// half has arrived; checks every byte.
async fn read_large(client: &HttpClient, addr: SocketAddr, resume: &Notify) -> (HeaderMap, usize) {
    timeout(DEADLINE, async {
        let resp = client
            .request(get_req(addr, "/large"))
            .await
            .expect("request");
        assert_eq!(resp.status(), StatusCode::OK);
        let (parts, mut body) = resp.into_parts();
        let mut received = 0usize;
        let mut resumed = false;
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("body frame");
            if let Ok(data) = frame.into_data() {
                for (j, b) in data.iter().enumerate() {
                    assert_eq!(*b, pattern(received + j), "byte {}", received + j);
                }
                received += data.len();
            }
            if !resumed && received >= HALF {
                resumed = true;
                resume.notify_one();
            }
        }
        (parts.headers, received)
    })
    .await
    .expect("the large body streamed within the deadline")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_streaming_body_passes_through_and_is_not_stored() {
    let calls = counter();
    let resume = Arc::new(Notify::new());
    let cache = Cache::builder().max_body_bytes(64 * 1024).build().unwrap();
    let app = Router::new()
        .route(
            "/large",
            get(streaming_handler(calls.clone(), resume.clone())),
        )
        .layer(CacheLayer::new(cache.clone()));
    let server = serve(app).await;
    let client = client();

    let (headers, received) = read_large(&client, server.addr, &resume).await;
    assert_eq!(received, LARGE, "the whole body arrived");
    assert_eq!(
        headers[&CACHE_STATUS],
        "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=too-large"
    );
    assert!(headers.get(AGE).is_none(), "not answered from the cache");

    let (headers, received) = read_large(&client, server.addr, &resume).await;
    assert_eq!(received, LARGE);
    assert_eq!(count(&calls), 2, "not stored: the handler ran again");
    assert_eq!(
        headers[&CACHE_STATUS],
        "tower-tiered-cache; fwd=uri-miss; detail=hit-for-pass"
    );
    let stats = cache.stats();
    assert_eq!(stats.too_large, 1);
    assert_eq!(stats.stores, 0);
    assert_eq!(stats.l1_entries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_body_with_content_length_passes_through_and_is_not_stored() {
    let calls = counter();
    let cache = Cache::builder().max_body_bytes(64 * 1024).build().unwrap();
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/sized",
            get(move || {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    Response::builder()
                        .header(CACHE_CONTROL, "max-age=60")
                        .header(CONTENT_LENGTH, LARGE)
                        .body(Body::from(pattern_chunk(0, LARGE)))
                        .unwrap()
                }
            }),
        )
        .layer(CacheLayer::new(cache.clone()));
    let server = serve(app).await;
    let client = client();

    for round in 1..=2 {
        let reply = get_path(&client, server.addr, "/sized").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body.len(), LARGE, "round {round}");
        assert!(
            reply.body == pattern_chunk(0, LARGE),
            "round {round}: body intact"
        );
        assert_eq!(reply.headers[CONTENT_LENGTH], LARGE.to_string());
        assert_eq!(count(&calls), round, "round {round}: handler called");
    }
    assert_eq!(cache.stats().l1_entries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_if_cached_gives_504_on_a_miss_and_the_entry_on_a_hit() {
    let calls = counter();
    let cache = Cache::builder().build().unwrap();
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/maybe",
            get(move || {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    ([(CACHE_CONTROL, "max-age=60")], "cached")
                }
            }),
        )
        .layer(CacheLayer::new(cache.clone()));
    let server = serve(app).await;
    let client = client();
    let only_if_cached = || {
        request(Method::GET, server.addr, "/maybe")
            .header(CACHE_CONTROL, "only-if-cached")
            .body(Full::default())
            .unwrap()
    };

    let cold = send(&client, only_if_cached()).await;
    assert_eq!(cold.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        cold.cache_status(),
        "tower-tiered-cache; detail=only-if-cached"
    );
    assert!(cold.body.is_empty());
    assert_eq!(count(&calls), 0, "only-if-cached never reaches the origin");

    let filled = get_path(&client, server.addr, "/maybe").await;
    assert_eq!(filled.cache_status(), STORED);

    let warm = send(&client, only_if_cached()).await;
    assert_eq!(warm.status, StatusCode::OK);
    assert_eq!(warm.body, "cached");
    assert_eq!(warm.cache_status(), HIT_L1);
    assert_eq!(count(&calls), 1);
    assert_eq!(cache.stats().unavailable, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_methods_invalidate() {
    let gets = counter();
    let posts = counter();
    let cache = Cache::builder().build().unwrap();
    let (g, p) = (gets.clone(), posts.clone());
    let p2 = posts.clone();
    let app = Router::new()
        .route(
            "/item",
            get(move || {
                let g = g.clone();
                async move {
                    let n = g.fetch_add(1, Ordering::SeqCst) + 1;
                    ([(CACHE_CONTROL, "max-age=60")], format!("version {n}"))
                }
            })
            .post(move |headers: HeaderMap| {
                let p = p.clone();
                async move {
                    p.fetch_add(1, Ordering::SeqCst);
                    if headers.contains_key("x-fail") {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::NO_CONTENT
                    }
                }
            }),
        )
        .route(
            "/items",
            axum::routing::post(move || {
                let p = p2.clone();
                async move {
                    p.fetch_add(1, Ordering::SeqCst);
                    (StatusCode::CREATED, [(LOCATION, "/item")])
                }
            }),
        )
        .layer(CacheLayer::new(cache.clone()));
    let server = serve(app).await;
    let client = client();
    let post = |path: &str, fail: bool| {
        let mut b = request(Method::POST, server.addr, path);
        if fail {
            b = b.header("x-fail", "1");
        }
        b.body(Full::new(Bytes::from_static(b"{}"))).unwrap()
    };

    let first = get_path(&client, server.addr, "/item").await;
    assert_eq!(first.body, "version 1");
    let hit = get_path(&client, server.addr, "/item").await;
    assert_eq!(hit.cache_status(), HIT_L1);
    assert_eq!(hit.body, "version 1");

    // A failed POST leaves the entry alone.
    let failed = send(&client, post("/item", true)).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    let still = get_path(&client, server.addr, "/item").await;
    assert_eq!(still.cache_status(), HIT_L1);
    assert_eq!(still.body, "version 1");

    // A successful POST to the URL invalidates it.
    let ok = send(&client, post("/item", false)).await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT);
    assert_eq!(ok.cache_status(), "tower-tiered-cache; fwd=method");
    let after = get_path(&client, server.addr, "/item").await;
    assert_eq!(after.cache_status(), STORED);
    assert_eq!(after.body, "version 2");
    assert_eq!(count(&gets), 2);

    // A successful POST elsewhere whose Location names the URL does too.
    let created = send(&client, post("/items", false)).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let after = get_path(&client, server.addr, "/item").await;
    assert_eq!(after.cache_status(), STORED);
    assert_eq!(after.body, "version 3");

    assert_eq!(count(&gets), 3);
    assert_eq!(count(&posts), 3);
    assert_eq!(cache.stats().invalidations, 2);
}

/// One origin behaviour: the headers an axum handler answers with, and what
/// a second request for the same URL should see.
struct OriginCase {
    name: &'static str,
    headers: &'static [(&'static str, &'static str)],
    /// The `Cache-Status` of the first answer.
    first: &'static str,
    /// The `Cache-Status` of the second answer.
    second: &'static str,
    /// Handler calls after both requests.
    calls: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_body_handlers_with_cache_control_table() {
    let cases = [
        OriginCase {
            name: "max-age",
            headers: &[("cache-control", "max-age=60")],
            first: STORED,
            second: HIT_L1,
            calls: 1,
        },
        OriginCase {
            name: "public, s-maxage",
            headers: &[("cache-control", "public, s-maxage=60")],
            first: STORED,
            second: HIT_L1,
            calls: 1,
        },
        OriginCase {
            name: "Expires",
            headers: &[("expires", "Fri, 01 Jan 2100 00:00:00 GMT")],
            first: STORED,
            second: HIT_L1,
            calls: 1,
        },
        OriginCase {
            name: "no-store",
            headers: &[("cache-control", "no-store, max-age=60")],
            first: "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=no-store",
            second: "tower-tiered-cache; fwd=uri-miss; detail=hit-for-pass",
            calls: 2,
        },
        OriginCase {
            name: "private",
            headers: &[("cache-control", "private, max-age=60")],
            first: "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=private",
            second: "tower-tiered-cache; fwd=uri-miss; detail=hit-for-pass",
            calls: 2,
        },
        OriginCase {
            name: "Set-Cookie",
            headers: &[("cache-control", "max-age=60"), ("set-cookie", "id=1")],
            first: "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=set-cookie",
            second: "tower-tiered-cache; fwd=uri-miss; detail=hit-for-pass",
            calls: 2,
        },
        OriginCase {
            name: "Vary: *",
            headers: &[("cache-control", "max-age=60"), ("vary", "*")],
            first: "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=vary-star",
            second: "tower-tiered-cache; fwd=uri-miss; detail=hit-for-pass",
            calls: 2,
        },
        OriginCase {
            name: "no freshness",
            headers: &[],
            first: "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=no-freshness",
            second: "tower-tiered-cache; fwd=uri-miss; detail=hit-for-pass",
            calls: 2,
        },
        OriginCase {
            // The handler answers the conditional request with a 304; the
            // client gets the stored body.
            name: "no-cache with ETag",
            headers: &[("cache-control", "no-cache"), ("etag", "\"v1\"")],
            first: STORED,
            second: "tower-tiered-cache; fwd=stale; fwd-status=304; detail=l1",
            calls: 2,
        },
        OriginCase {
            name: "Vary: Accept-Language",
            headers: &[("cache-control", "max-age=60"), ("vary", "accept-language")],
            first: STORED,
            second: HIT_L1,
            calls: 1,
        },
    ];

    for (i, case) in cases.iter().enumerate() {
        let calls = counter();
        let cache = Cache::builder().build().unwrap();
        let c = calls.clone();
        let origin_headers = case.headers;
        let app = Router::new()
            .route(
                "/origin",
                get(move |req_headers: HeaderMap| {
                    let c = c.clone();
                    async move {
                        c.fetch_add(1, Ordering::SeqCst);
                        let etag = origin_headers
                            .iter()
                            .find(|(n, _)| *n == "etag")
                            .map(|(_, v)| *v);
                        if let (Some(etag), Some(inm)) = (etag, req_headers.get(IF_NONE_MATCH)) {
                            if inm == etag {
                                let mut b = Response::builder().status(StatusCode::NOT_MODIFIED);
                                for (n, v) in origin_headers {
                                    b = b.header(*n, *v);
                                }
                                return b.body(Body::empty()).unwrap();
                            }
                        }
                        let mut b = Response::builder();
                        for (n, v) in origin_headers {
                            b = b.header(*n, *v);
                        }
                        b.body(Body::from(format!("origin body {i}"))).unwrap()
                    }
                }),
            )
            .layer(CacheLayer::new(cache.clone()));
        let server = serve(app).await;
        let client = client();
        let req = || {
            request(Method::GET, server.addr, "/origin")
                .header("accept-language", "en")
                .body(Full::default())
                .unwrap()
        };

        let first = send(&client, req()).await;
        let second = send(&client, req()).await;
        let name = case.name;
        assert_eq!(first.status, StatusCode::OK, "{name}: first status");
        assert_eq!(second.status, StatusCode::OK, "{name}: second status");
        let want_body = format!("origin body {i}");
        assert_eq!(first.body, want_body, "{name}: first body");
        assert_eq!(second.body, want_body, "{name}: second body");
        assert_eq!(
            first.cache_status(),
            case.first,
            "{name}: first Cache-Status"
        );
        assert_eq!(
            second.cache_status(),
            case.second,
            "{name}: second Cache-Status"
        );
        assert_eq!(count(&calls), case.calls, "{name}: handler calls");
        if case.headers.iter().any(|(n, _)| *n == "set-cookie") {
            assert_eq!(second.headers[SET_COOKIE], "id=1", "{name}: cookie kept");
        }
        if let Some((_, v)) = case.headers.iter().find(|(n, _)| *n == "vary") {
            assert_eq!(first.headers[VARY], *v, "{name}: Vary kept");
        }
        if let Some((_, v)) = case.headers.iter().find(|(n, _)| *n == "etag") {
            assert_eq!(second.headers[ETAG], *v, "{name}: ETag kept");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_selects_variants_over_the_wire() {
    let calls = counter();
    let cache = Cache::builder().build().unwrap();
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/greeting",
            get(move |headers: HeaderMap| {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    let lang = headers
                        .get("accept-language")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_owned();
                    (
                        [(CACHE_CONTROL, "max-age=60"), (VARY, "accept-language")],
                        format!("hello in {lang}"),
                    )
                }
            }),
        )
        .layer(CacheLayer::new(cache.clone()));
    let server = serve(app).await;
    let client = client();
    let req = |lang: &str| {
        request(Method::GET, server.addr, "/greeting")
            .header("accept-language", lang)
            .body(Full::default())
            .unwrap()
    };
    let mut seen = VecDeque::new();
    for lang in ["en", "fr", "en", "fr"] {
        let r = send(&client, req(lang)).await;
        assert_eq!(r.body, format!("hello in {lang}"));
        seen.push_back(r.cache_status().to_owned());
    }
    assert_eq!(count(&calls), 2, "{seen:?}");
    assert_eq!(seen[2], HIT_L1);
    assert_eq!(seen[3], HIT_L1);
}

/// The same router called in process (no TCP): `Request<axum::body::Body>`
/// in, `CacheBody<axum::body::Body>` out.
#[tokio::test]
async fn axum_router_oneshot_with_axum_body() {
    let calls = counter();
    let cache = Cache::builder().build().unwrap();
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/doc",
            get(move || {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    Response::builder()
                        .header(CACHE_CONTROL, "public, max-age=300")
                        .header(ETAG, "\"doc-1\"")
                        .body(Body::from("document"))
                        .unwrap()
                }
            }),
        )
        .layer(CacheLayer::new(cache.clone()));
    let call = |req: Request<Body>| {
        let app = app.clone();
        async move {
            let resp = timeout(DEADLINE, app.oneshot(req))
                .await
                .expect("in time")
                .expect("infallible");
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.expect("body").to_bytes();
            (parts, body)
        }
    };
    let uri = "http://example.com/doc";

    let (p1, b1) = call(Request::get(uri).body(Body::empty()).unwrap()).await;
    assert_eq!(p1.status, StatusCode::OK);
    assert_eq!(b1, "document");
    assert_eq!(p1.headers[&CACHE_STATUS], STORED);

    let (p2, b2) = call(Request::get(uri).body(Body::empty()).unwrap()).await;
    assert_eq!(p2.headers[&CACHE_STATUS], HIT_L1);
    assert_eq!(b2, "document");
    assert!(p2.headers.contains_key(AGE));

    // A conditional request is answered 304 from the cache.
    let (p3, b3) = call(
        Request::get(uri)
            .header(IF_NONE_MATCH, "\"doc-1\"")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(p3.status, StatusCode::NOT_MODIFIED);
    assert!(b3.is_empty());
    assert_eq!(p3.headers[ETAG], "\"doc-1\"");

    // An authorized request may use it: `public` allows sharing.
    let (p4, b4) = call(
        Request::get(uri)
            .header("authorization", "Bearer x")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(p4.headers[&CACHE_STATUS], HIT_L1);
    assert_eq!(b4, "document");

    assert_eq!(count(&calls), 1);
    assert_eq!(cache.stats().not_modified, 1);
}
