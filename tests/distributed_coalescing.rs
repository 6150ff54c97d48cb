//! Distributed single-flight (`CacheBuilder::distributed_coalescing`) on a
//! real redis-server: two `Cache` instances (each its own L1, the same
//! Redis and namespace) in front of one origin, a hyper server on
//! 127.0.0.1:0 that counts its calls and answers slowly enough that
//! requests overlap. Each instance calls it through a hyper-util client.
//!
//! - 200 concurrent cold requests split across both: 1 origin call, every
//!   answer a 200 with the body, the other instance's answers collapsed
//!   (`detail=l2`); with the option off, 2 calls (one per instance).
//! - The lease holder dies mid-fetch (its runtime shut down: nothing of it
//!   runs again, its lease stays in Redis until it expires): the other
//!   instance answers within the lease's life plus one origin call. A
//!   holder whose request is cancelled releases at once.
//! - Redis frozen or killed: each instance coalesces locally, every request
//!   answered, in bounded time.
//! - An answer that may not be stored (`no-store`): nobody hangs; one
//!   origin call per request, none shared.
//! - The proxy (`examples/proxy.rs --distributed-coalescing`, two of them
//!   in process, served by the proxy's own `serve_args`): the same two
//!   figures, printed (`-- --nocapture`).
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use redis_support::{require_redis, RedisCluster, RedisServer, Reply as RedisReply};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_tiered_cache::{Cache, CacheBuilder, CacheLayer, CacheService, LeaseStats, CACHE_STATUS};

/// The bound on anything that must happen.
const DEADLINE: Duration = Duration::from_secs(30);

/// How long the origin takes to answer: long enough that every request of
/// a burst arrives while the first call is under way.
const DELAY: Duration = Duration::from_millis(400);

/// How long a first call to a `/hang/` path takes: beyond every test.
const HANG: Duration = Duration::from_secs(120);

/// The deadline of an upstream call in these tests.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// The origin

/// Calls per path.
#[derive(Clone, Default)]
struct Origin(Arc<Mutex<HashMap<String, usize>>>);

impl Origin {
    fn calls(&self, path: &str) -> usize {
        self.0.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// `/slow/…`: a cacheable answer after [`DELAY`]; `/nostore/…`: the same,
/// `no-store`; `/hang/…`: the first call never answers (within [`HANG`]),
/// later ones after a quarter of [`DELAY`]; `/fast/…`: at once.
async fn answer(
    origin: Origin,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let n = {
        let mut calls = origin.0.lock().unwrap();
        let n = calls.entry(path.clone()).or_default();
        *n += 1;
        *n
    };
    let mode = path.split('/').nth(1).unwrap_or("");
    let (wait, cc) = match mode {
        "slow" => (DELAY, "max-age=60"),
        "nostore" => (DELAY, "no-store"),
        "hang" if n == 1 => (HANG, "max-age=60"),
        "hang" => (DELAY / 4, "max-age=60"),
        _ => (Duration::ZERO, "max-age=60"),
    };
    tokio::time::sleep(wait).await;
    Ok(Response::builder()
        .header("cache-control", cc)
        .body(Full::new(Bytes::from(format!("body of {path}"))))
        .unwrap())
}

async fn start_origin() -> (Origin, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let origin = Origin::default();
    let o = origin.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let o = o.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| answer(o.clone(), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (origin, addr)
}

// ---------------------------------------------------------------------------
// Instances

type Inner =
    BoxCloneService<Request<Empty<Bytes>>, Response<Incoming>, hyper_util::client::legacy::Error>;
type Svc = CacheService<Inner>;

/// `cache` in front of a hyper-util client (made on the runtime that first
/// uses it).
fn service(cache: &Cache) -> Svc {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let inner = BoxCloneService::new(service_fn(move |req: Request<Empty<Bytes>>| {
        let client = client.clone();
        async move { client.request(req).await }
    }));
    CacheLayer::new(cache.clone()).layer(inner)
}

fn builder(redis: &str, ns: &str) -> CacheBuilder {
    Cache::builder()
        .redis(redis)
        .namespace(ns)
        // Generous: the tests run on two busy cores.
        .l2_timeout(Duration::from_millis(250))
        .upstream_timeout(UPSTREAM_TIMEOUT)
}

/// An instance with distributed coalescing on.
fn leased(redis: &str, ns: &str, lease: Duration) -> Cache {
    builder(redis, ns)
        .distributed_coalescing(true)
        .lease_ttl(lease)
        .build()
        .unwrap()
}

/// One answer, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    cache_status: String,
    body: Bytes,
}

/// Status, `Cache-Status` and body of a response.
async fn answer_of<B>(resp: http::Response<B>) -> Answer
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let status = resp.status().as_u16();
    let cache_status = resp
        .headers()
        .get(&CACHE_STATUS)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.expect("a body").to_bytes();
    Answer {
        status,
        cache_status,
        body,
    }
}

async fn fetch(svc: Svc, url: &str) -> Answer {
    let req = Request::get(url).body(Empty::new()).unwrap();
    tokio::time::timeout(DEADLINE, async {
        answer_of(svc.oneshot(req).await.expect("a response")).await
    })
    .await
    .unwrap_or_else(|_| panic!("GET {url}: no answer within {DEADLINE:?}"))
}

/// `n` concurrent requests for `url`, request `i` to `svcs[i % len]`: the
/// answers, by instance, and the time they all took.
async fn burst(svcs: &[Svc], url: &str, n: usize) -> (Vec<Vec<Answer>>, Duration) {
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let which = i % svcs.len();
        let (svc, url) = (svcs[which].clone(), url.to_owned());
        tasks.spawn(async move { (which, fetch(svc, &url).await) });
    }
    let mut by_instance: Vec<Vec<Answer>> = svcs.iter().map(|_| Vec::new()).collect();
    while let Some(done) = tasks.join_next().await {
        let (which, answer) = done.expect("a request task");
        by_instance[which].push(answer);
    }
    (by_instance, started.elapsed())
}

/// Bounded wait for `f`, polled every 10 ms.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Makes each instance connect and follow the invalidation log (the
/// channel other instances' answers are announced on).
async fn following(origin: SocketAddr, pairs: &[(&Cache, &Svc)]) {
    for (i, (cache, svc)) in pairs.iter().enumerate() {
        let warm = fetch((*svc).clone(), &format!("http://{origin}/fast/warm-{i}")).await;
        assert_eq!(warm.status, 200);
        until("following the log", || cache.stats().l2_subscribed).await;
    }
}

/// What `cache`'s leases came to since `before` was read: taken,
/// waited, taken over, local.
fn leases_since(cache: &Cache, before: LeaseStats) -> (u64, u64, u64, u64) {
    let now = cache.stats().leases;
    (
        now.taken - before.taken,
        now.waited - before.waited,
        now.taken_over - before.taken_over,
        now.local - before.local,
    )
}

/// The lease keys in Redis under `ns`.
fn lease_keys(server: &RedisServer, ns: &str) -> Vec<RedisReply> {
    match server.cmd(&["KEYS", &format!("{ns}:lease:*")]) {
        Ok(RedisReply::Array(keys)) => keys,
        other => panic!("KEYS: {other:?}"),
    }
}

/// How many lease keys Redis holds under `ns`.
fn leases_in_redis(server: &RedisServer, ns: &str) -> usize {
    lease_keys(server, ns).len()
}

/// The leases of namespace `ns` in Redis, each with its remaining time:
/// printed while a burst waits (a stall then says whether a lease holds
/// it up, and for how long).
fn lease_report(server: &RedisServer, ns: &str) -> String {
    let leases: Vec<String> = lease_keys(server, ns)
        .iter()
        .map(|k| match k {
            RedisReply::Bulk(k) => {
                let k = String::from_utf8_lossy(k);
                format!("{k} (PTTL {:?})", server.cmd(&["PTTL", &k]))
            }
            other => format!("{other:?}"),
        })
        .collect();
    format!("[{}]", leases.join(", "))
}

/// Every answer is the origin's 200 with its body.
fn all_ok(answers: &[Vec<Answer>], path: &str) {
    let body = format!("body of {path}");
    for a in answers.iter().flatten() {
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(a.body, body.as_bytes(), "{a:?}");
    }
}

// ---------------------------------------------------------------------------
// Two caches

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_make_one_origin_call_for_200_concurrent_cold_requests() {
    require_redis();
    let server = RedisServer::start();
    let (origin, addr) = start_origin().await;
    let lease = Duration::from_secs(2);
    let (a, b) = (
        leased(&server.url(), "dc1", lease),
        leased(&server.url(), "dc1", lease),
    );
    let (sa, sb) = (service(&a), service(&b));
    following(addr, &[(&a, &sa), (&b, &sb)]).await;
    let before = (a.stats().leases, b.stats().leases);

    let path = "/slow/one";
    let (answers, took) = burst(&[sa, sb], &format!("http://{addr}{path}"), 200).await;
    assert_eq!(origin.calls(path), 1, "one origin call for both instances");
    all_ok(&answers, path);
    // The instance that called stored the answer (its leader) and answered
    // its own waiters as collapsed; the other answered every request from
    // L2 as collapsed.
    let stored = |i: usize| {
        answers[i]
            .iter()
            .filter(|a| a.cache_status.contains("stored"))
            .count()
    };
    let caller = if stored(0) == 1 { 0 } else { 1 };
    assert_eq!(stored(caller), 1, "{:?}", answers[caller]);
    assert_eq!(stored(1 - caller), 0);
    for a in &answers[caller] {
        assert!(
            a.cache_status.contains("stored") || a.cache_status.contains("collapsed"),
            "{a:?}"
        );
    }
    for a in &answers[1 - caller] {
        assert!(
            a.cache_status.contains("collapsed") && a.cache_status.contains("detail=l2"),
            "the other instance's answers are collapsed, from L2: {a:?}"
        );
    }
    let (caller, other, since) = if caller == 0 {
        (&a, &b, before)
    } else {
        (&b, &a, (before.1, before.0))
    };
    assert_eq!(leases_since(caller, since.0), (1, 0, 0, 0));
    assert_eq!(leases_since(other, since.1), (0, 1, 0, 0));
    assert_eq!(other.stats().coalesced, 100);
    println!(
        "figure: 200 concurrent cold requests over two instances: {} origin call, all answered in {} ms",
        origin.calls(path),
        took.as_millis()
    );
    // The lease is gone once the entry landed.
    until("lease released", || leases_in_redis(&server, "dc1") == 0).await;
}

/// Without the option, each instance coalesces its own: 2 calls. (What the
/// test above proves is the option's doing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_option_off_each_instance_calls_once() {
    require_redis();
    let server = RedisServer::start();
    let (origin, addr) = start_origin().await;
    let (a, b) = (
        builder(&server.url(), "dc0").build().unwrap(),
        builder(&server.url(), "dc0").build().unwrap(),
    );
    let (sa, sb) = (service(&a), service(&b));
    following(addr, &[(&a, &sa), (&b, &sb)]).await;
    let path = "/slow/off";
    let (answers, _) = burst(&[sa, sb], &format!("http://{addr}{path}"), 200).await;
    all_ok(&answers, path);
    assert_eq!(origin.calls(path), 2, "one call per instance");
    assert_eq!(a.stats().leases, Default::default());
    assert_eq!(leases_in_redis(&server, "dc0"), 0);
}

/// The lease holder dies mid-fetch: its runtime is shut down while its
/// origin call hangs, so it never releases; its lease stays until it
/// expires. The other instance answers within the lease's life plus one
/// origin call, and makes exactly that one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_lease_expires_and_one_waiter_takes_over() {
    require_redis();
    let server = RedisServer::start();
    let (origin, addr) = start_origin().await;
    let lease = Duration::from_millis(1500);
    let b = leased(&server.url(), "dc2", lease);
    let sb = service(&b);
    following(addr, &[(&b, &sb)]).await;
    let before = b.stats().leases;
    let path = "/hang/dead";
    let url = format!("http://{addr}{path}");

    // A lives on a runtime of its own.
    let rt_a = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let a = leased(&server.url(), "dc2", lease);
    let sa = service(&a);
    let u = url.clone();
    rt_a.spawn(async move { fetch(sa, &u).await });
    until("A's call reached the origin", || origin.calls(path) == 1).await;
    assert_eq!(leases_in_redis(&server, "dc2"), 1, "A holds the lease");
    // A dies: nothing of it runs again.
    rt_a.shutdown_background();
    drop(a);
    let died = Instant::now();
    assert_eq!(
        leases_in_redis(&server, "dc2"),
        1,
        "a dead holder releases nothing"
    );

    let (answers, _) = burst(&[sb], &url, 20).await;
    let took = died.elapsed();
    all_ok(&answers, path);
    assert_eq!(origin.calls(path), 2, "A's call, then exactly one more");
    assert_eq!(leases_since(&b, before), (0, 1, 1, 0));
    // Within the lease's life, one poll and one origin call (a quarter of
    // DELAY), with a margin for two busy cores.
    let bound = lease + DELAY + Duration::from_secs(1);
    assert!(took < bound, "answered after {took:?} (bound {bound:?})");
    // ...and not before the lease could expire: nothing released it.
    assert!(
        took > lease / 2,
        "answered after {took:?}: the lease was released"
    );
    println!(
        "figure: lease holder killed mid-fetch: the other instance answered 20 requests {} ms after the kill (lease {} ms), {} origin calls in all",
        took.as_millis(),
        lease.as_millis(),
        origin.calls(path)
    );
}

/// A holder whose request is cancelled (its future dropped) releases its
/// lease at once, saying it failed: the other instance takes over without
/// waiting for the lease to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_holder_releases_at_once() {
    require_redis();
    let server = RedisServer::start();
    let (origin, addr) = start_origin().await;
    let lease = Duration::from_secs(4);
    let (a, b) = (
        leased(&server.url(), "dc3", lease),
        leased(&server.url(), "dc3", lease),
    );
    let (sa, sb) = (service(&a), service(&b));
    following(addr, &[(&a, &sa), (&b, &sb)]).await;
    let before = (a.stats().leases, b.stats().leases);
    let path = "/hang/cancelled";
    let url = format!("http://{addr}{path}");
    let u = url.clone();
    let holder = tokio::spawn(async move { fetch(sa, &u).await });
    until("A's call reached the origin", || origin.calls(path) == 1).await;
    let u = url.clone();
    let waiter = tokio::spawn(async move { fetch(sb, &u).await });
    until("B waits on A's lease", || {
        b.stats().leases.waited == before.1.waited + 1
    })
    .await;
    holder.abort();
    let cancelled = Instant::now();
    let answer = waiter.await.unwrap();
    let took = cancelled.elapsed();
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(origin.calls(path), 2);
    assert_eq!(leases_since(&b, before.1), (0, 1, 1, 0));
    assert!(took < lease / 2, "took over after {took:?}: not at once");
    assert_eq!(leases_since(&a, before.0), (1, 0, 0, 0));
    assert_eq!(a.stats().in_flight, 0, "the cancelled flight is gone");
}

/// Redis frozen (SIGSTOP: every command times out) or killed (refused):
/// each instance coalesces locally, as without leases; every request is
/// answered, within a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_instance_coalesces_locally() {
    require_redis();
    for how in ["frozen", "killed"] {
        let mut server = RedisServer::start();
        let (origin, addr) = start_origin().await;
        let ns = format!("dc4{how}");
        let (a, b) = (
            leased(&server.url(), &ns, Duration::from_secs(2)),
            leased(&server.url(), &ns, Duration::from_secs(2)),
        );
        let (sa, sb) = (service(&a), service(&b));
        following(addr, &[(&a, &sa), (&b, &sb)]).await;
        let before = (a.stats().leases, b.stats().leases);
        match how {
            "frozen" => server.freeze(),
            _ => server.kill(),
        }
        let path = format!("/slow/{how}");
        let (answers, took) = burst(&[sa, sb], &format!("http://{addr}{path}"), 50).await;
        all_ok(&answers, &path);
        let calls = origin.calls(&path);
        assert!((1..=2).contains(&calls), "{how}: {calls} calls");
        assert_eq!(leases_since(&a, before.0), (0, 0, 0, 1), "{how}");
        assert_eq!(leases_since(&b, before.1), (0, 0, 0, 1), "{how}");
        // The L2 look-up and at most 3 lease attempts (a poll apart), each
        // within the L2 timeout (or skipped once the breaker opened), then
        // the origin's answer.
        let l2 = Duration::from_millis(250);
        let bound = l2 * 4 + Duration::from_millis(200) + DELAY + Duration::from_secs(2);
        assert!(took < bound, "{how}: {took:?} (bound {bound:?})");
        println!(
            "Redis {how}: 50 requests over two instances answered in {} ms, {calls} origin calls",
            took.as_millis()
        );
        if how == "frozen" {
            server.unfreeze();
        }
    }
}

/// An answer that may not be stored: the holder says so, the waiting
/// instance then calls alone, and so does every local waiter (as within
/// one instance). Nobody hangs; the origin sees one call per request (an
/// answer that may not be shared never is), no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_may_not_be_stored_makes_nobody_hang() {
    require_redis();
    let server = RedisServer::start();
    let (origin, addr) = start_origin().await;
    let (a, b) = (
        leased(&server.url(), "dc5", Duration::from_secs(4)),
        leased(&server.url(), "dc5", Duration::from_secs(4)),
    );
    let (sa, sb) = (service(&a), service(&b));
    following(addr, &[(&a, &sa), (&b, &sb)]).await;
    let before = (a.stats().leases, b.stats().leases);
    let path = "/nostore/x";
    let (answers, took) = burst(&[sa, sb], &format!("http://{addr}{path}"), 20).await;
    all_ok(&answers, path);
    assert_eq!(origin.calls(path), 20, "one call per request");
    let (la, lb) = (leases_since(&a, before.0), leases_since(&b, before.1));
    // One holder called first; the other instance waited for it, then
    // called alone (told the answer may not be shared) or, had it missed
    // the word, took the freed lease over.
    assert_eq!(la.0 + lb.0, 1, "{la:?} {lb:?}");
    assert_eq!(la.1 + lb.1, 1, "{la:?} {lb:?}");
    assert_eq!(la.3 + lb.3, 0, "{la:?} {lb:?}");
    // The holder's call, the other leader's, then the waiters' own: three
    // rounds of DELAY, far within the lease (4 s) and upstream timeout.
    let bound = DELAY * 3 + Duration::from_secs(2);
    assert!(took < bound, "{took:?} (bound {bound:?})");
    until("lease released", || leases_in_redis(&server, "dc5") == 0).await;
}

/// On a Redis Cluster: the lease lives in the entry's slot (its hash tag);
/// the release and its word go to their own nodes. One origin call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_two_instances_make_one_origin_call() {
    require_redis();
    let cluster = RedisCluster::start(3);
    let (origin, addr) = start_origin().await;
    let on = || {
        Cache::builder()
            .redis_cluster(cluster.urls())
            .namespace("dcc")
            .l2_timeout(Duration::from_millis(500))
            .upstream_timeout(UPSTREAM_TIMEOUT)
            .distributed_coalescing(true)
            .lease_ttl(Duration::from_secs(2))
            .build()
            .unwrap()
    };
    let (a, b) = (on(), on());
    let (sa, sb) = (service(&a), service(&b));
    following(addr, &[(&a, &sa), (&b, &sb)]).await;
    let before = (a.stats().leases, b.stats().leases);
    let path = "/slow/cluster";
    let (answers, took) = burst(&[sa, sb], &format!("http://{addr}{path}"), 100).await;
    all_ok(&answers, path);
    assert_eq!(origin.calls(path), 1, "one origin call on a cluster");
    let (la, lb) = (leases_since(&a, before.0), leases_since(&b, before.1));
    assert_eq!(
        (la.0 + lb.0, la.1 + lb.1, la.3 + lb.3),
        (1, 1, 0),
        "{la:?} {lb:?}"
    );
    println!(
        "cluster: 100 concurrent cold requests over two instances: 1 origin call in {} ms",
        took.as_millis()
    );
}

// ---------------------------------------------------------------------------
// Two proxies (`examples/proxy.rs`)

#[cfg(all(feature = "admin", feature = "opentelemetry"))]
#[allow(dead_code)]
#[path = "../examples/proxy.rs"]
mod proxy;

#[cfg(all(feature = "admin", feature = "opentelemetry"))]
mod proxies {
    use super::*;

    type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

    /// Serves the proxy with `args` (plus `--upstream`) on a free port of
    /// the current runtime; its address.
    async fn start_proxy(upstream: SocketAddr, args: Vec<String>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut args = args;
            args.extend(["--upstream".to_owned(), format!("http://{upstream}")]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(e) = proxy::serve_args(&args, listener, std::future::pending()).await {
                panic!("the proxy refused {args:?}: {e}");
            }
        });
        addr
    }

    async fn get(client: &HttpClient, url: String) -> Answer {
        let req = Request::get(&url).body(Empty::new()).unwrap();
        tokio::time::timeout(DEADLINE, async {
            answer_of(client.request(req).await.expect("a response")).await
        })
        .await
        .unwrap_or_else(|_| panic!("GET {url}: no answer within {DEADLINE:?}"))
    }

    /// `n` concurrent requests for `path`, request `i` to `proxies[i % len]`.
    async fn burst(client: &HttpClient, proxies: &[SocketAddr], path: &str, n: usize) -> Duration {
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        for i in 0..n {
            let (client, url) = (
                client.clone(),
                format!("http://{}{path}", proxies[i % proxies.len()]),
            );
            tasks.spawn(async move { get(&client, url).await });
        }
        let body = format!("body of {path}");
        while let Some(done) = tasks.join_next().await {
            let a = done.expect("a request task");
            assert_eq!(a.status, 200, "{a:?}");
            assert_eq!(a.body, body.as_bytes(), "{a:?}");
        }
        started.elapsed()
    }

    /// The figures of issue 16: two proxies sharing Redis, 200 concurrent
    /// cold requests split across them, 1 origin call; the proxy holding
    /// a 2 s lease killed mid-fetch (its runtime shut down), another
    /// answers within the lease plus one origin call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_proxies_make_one_origin_call_and_outlive_a_killed_holder() {
        require_redis();
        let server = RedisServer::start();
        let (origin, upstream) = start_origin().await;
        let with_lease = |lease: &str| -> Vec<String> {
            [
                "--redis",
                &server.url(),
                "--namespace",
                "dcp",
                "--distributed-coalescing",
                "--upstream-timeout",
                lease,
            ]
            .map(str::to_owned)
            .to_vec()
        };
        // The burst's proxies hold their lease for 30 s: on a loaded
        // machine the debug-built holder may take more than a couple of
        // seconds to make its call through 200 connections, and a lease
        // that runs out lets the other proxy call too, as it should. What
        // is checked here is the coalescing, not the holder's speed.
        let p1 = start_proxy(upstream, with_lease("30s")).await;
        let p2 = start_proxy(upstream, with_lease("30s")).await;
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        for (i, p) in [p1, p2].iter().enumerate() {
            // Connects each proxy to Redis.
            let warm = get(&client, format!("http://{p}/fast/warm-{i}")).await;
            assert_eq!(warm.status, 200);
        }

        // Every 5 s the burst waits, what may hold it up (the origin's
        // calls, the leases in Redis): a stall under load says where.
        let took = {
            let both = [p1, p2];
            let all = burst(&client, &both, "/slow/proxies", 200);
            tokio::pin!(all);
            loop {
                tokio::select! {
                    took = &mut all => break took,
                    () = tokio::time::sleep(Duration::from_secs(5)) => eprintln!(
                        "the burst still waits: {} origin call(s), leases {}",
                        origin.calls("/slow/proxies"),
                        lease_report(&server, "dcp")
                    ),
                }
            }
        };
        assert_eq!(
            origin.calls("/slow/proxies"),
            1,
            "one origin call for both proxies"
        );
        println!(
            "figure: two proxies, 200 concurrent cold requests split across them: {} origin call, all answered in {} ms",
            origin.calls("/slow/proxies"),
            took.as_millis()
        );

        // A third proxy, on a runtime of its own, takes a 2 s lease and
        // dies; a fourth, with the same lease, answers after it.
        let lease = Duration::from_secs(2);
        let args = with_lease("2s");
        let p4 = start_proxy(upstream, args.clone()).await;
        let warm = get(&client, format!("http://{p4}/fast/warm-4")).await;
        assert_eq!(warm.status, 200);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let a = args.clone();
        rt.spawn(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let _ = tx.send(listener.local_addr().unwrap());
            let mut a = a;
            a.extend(["--upstream".to_owned(), format!("http://{upstream}")]);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let _ = proxy::serve_args(&a, listener, std::future::pending()).await;
        });
        let p3 = rx.await.unwrap();
        let path = "/hang/proxies";
        let c = client.clone();
        let doomed = tokio::spawn(async move {
            let req = Request::get(format!("http://{p3}{path}"))
                .body(Empty::new())
                .unwrap();
            let _ = c.request(req).await;
        });
        until("the holder's call reached the origin", || {
            origin.calls(path) == 1
        })
        .await;
        assert_eq!(leases_in_redis(&server, "dcp"), 1, "the holder's lease");
        rt.shutdown_background();
        let killed = Instant::now();
        burst(&client, &[p4], path, 20).await;
        let took = killed.elapsed();
        doomed.abort();
        assert_eq!(origin.calls(path), 2, "the dead holder's call and one more");
        let bound = lease + DELAY + Duration::from_secs(1);
        assert!(
            took < bound && took > lease / 2,
            "{took:?} (lease {lease:?})"
        );
        println!(
            "figure: the proxy holding the lease killed mid-fetch: the other answered 20 requests {} ms after the kill (lease {} ms), {} origin calls in all",
            took.as_millis(),
            lease.as_millis(),
            origin.calls(path)
        );
    }

    #[tokio::test]
    async fn the_flag_needs_a_redis_target_and_takes_no_value() {
        for (args, expect) in [
            (&["--distributed-coalescing"][..], "applies to the L2 tier"),
            (
                &[
                    "--redis",
                    "redis://127.0.0.1:1/",
                    "--distributed-coalescing=yes",
                ][..],
                "takes no value",
            ),
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut all = args.to_vec();
            all.extend(["--upstream", "http://127.0.0.1:9"]);
            let err = proxy::serve_args(&all, listener, std::future::pending())
                .await
                .expect_err("refused");
            assert!(err.to_string().contains(expect), "{args:?}: {err}");
        }
    }
}

// ---------------------------------------------------------------------------
// Typed values

/// `ValueCache::get_or_fetch` takes the same lease: 100 concurrent calls
/// for one key, split across two instances, fetch once; the instance that
/// did not fetch answers from L2, counted as collapsed.
#[cfg(feature = "values")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_are_fetched_once_across_instances() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower_tiered_cache::values::ValueOptions;

    require_redis();
    let server = RedisServer::start();
    let lease = Duration::from_secs(2);
    let (a, b) = (
        leased(&server.url(), "dcv", lease),
        leased(&server.url(), "dcv", lease),
    );
    let opts = ValueOptions::new().ttl(Duration::from_secs(60));
    let (va, vb) = (
        a.values::<String>("prices").unwrap(),
        b.values::<String>("prices").unwrap(),
    );
    for (cache, v) in [(&a, &va), (&b, &vb)] {
        let warm = v
            .get_or_fetch("warm", &opts, || async {
                Ok::<_, Infallible>("w".to_owned())
            })
            .await;
        assert_eq!(*warm.unwrap(), "w");
        until("following the log", || cache.stats().l2_subscribed).await;
    }
    let before = (a.stats(), b.stats());
    let fetches = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for i in 0..100 {
        let v = if i % 2 == 0 { va.clone() } else { vb.clone() };
        let (opts, fetches) = (opts.clone(), Arc::clone(&fetches));
        tasks.spawn(async move {
            v.get_or_fetch("odds", &opts, move || async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(DELAY).await;
                Ok::<_, Infallible>("1.85".to_owned())
            })
            .await
        });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(*done.unwrap().unwrap(), "1.85");
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "one fetch for both instances"
    );
    let coalesced =
        |s: &tower_tiered_cache::Stats, b: &tower_tiered_cache::Stats| s.coalesced - b.coalesced;
    let (sa, sb) = (a.stats(), b.stats());
    // 99 of the 100 calls waited for the one fetch.
    assert_eq!(coalesced(&sa, &before.0) + coalesced(&sb, &before.1), 99);
    let waited =
        (sa.leases.waited - before.0.leases.waited) + (sb.leases.waited - before.1.leases.waited);
    assert_eq!(waited, 1);
}
