//! The L2 tier on a master found through Redis Sentinel: a master, a
//! replica (`--replicaof`) and three sentinels (`redis-server --sentinel`),
//! all started by the tests on free ports (`RedisSentinelSet`). Discovery
//! and round trips; the master SIGKILLed under load (0 failed requests, L2
//! hits resume, the time to resume printed); invalidations reaching
//! another instance across the failover; configurations that cannot work
//! (no sentinel answers, a wrong master name, a sentinel naming a replica
//! or answering garbage) still serving, within the deadlines.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redis_support::{require_redis, RedisSentinelSet};
use support::loopback::{serve, Server};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tower_tiered_cache::{BreakerState, Cache, CacheBuilder};

const L1_HIT: &str = "tower-tiered-cache; hit; detail=l1";
const L2_HIT: &str = "tower-tiered-cache; hit; detail=l2";

/// Bound on a failover: `down-after-milliseconds` (1 s), agreement and an
/// election (a failed election is tried again after twice the failover
/// timeout, 8 s), the replica's promotion seen by every sentinel.
const FAILOVER: Duration = Duration::from_secs(40);
/// Bound on an instance following the new master's log after a failover
/// (its reader retries with a delay of at most 2 s).
const RECOVERY: Duration = Duration::from_secs(30);

fn url(i: usize) -> String {
    format!("http://example.com/page/{i}")
}

/// A cache on the set's master, under `namespace`, with a generous L2
/// timeout (tests run in parallel on two cores).
fn on(set: &RedisSentinelSet, namespace: &str) -> CacheBuilder {
    Cache::builder()
        .redis_sentinel(set.name(), set.sentinel_urls())
        .namespace(namespace)
        .l2_timeout(Duration::from_millis(500))
}

/// The keys under `namespace` on data node `i`.
fn keys_on(set: &RedisSentinelSet, i: usize, namespace: &str) -> usize {
    let out = set
        .node(i)
        .cli(&["--scan", "--pattern", &format!("{namespace}:*")]);
    assert!(out.success(), "scan of node {i}: {out:?}");
    out.text().lines().filter(|l| !l.is_empty()).count()
}

/// Runs `f` (which blocks: it kills or waits for processes) off the
/// runtime's worker.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

// ---------------------------------------------------------------------------
// A real origin on 127.0.0.1:0, reached over HTTP

/// An HTTP origin on loopback answering `max-age=600` pages, and an origin
/// service that forwards to it with a hyper-util client (a transport error
/// is a 502, which the load test counts as a failure).
async fn http_origin() -> (Server, Origin, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    async fn page(State(calls): State<Arc<AtomicUsize>>, uri: http::Uri) -> impl IntoResponse {
        calls.fetch_add(1, Ordering::SeqCst);
        (
            [(http::header::CACHE_CONTROL, "max-age=600")],
            format!("page {}", uri.path()),
        )
    }
    let app = Router::new()
        .fallback(axum::routing::get(page))
        .with_state(Arc::clone(&calls));
    let server = serve(app).await;
    let addr: SocketAddr = server.addr;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let (svc, _log) = origin_fn(move |_, req: Request<()>| {
        let client = client.clone();
        let uri = format!("http://{addr}{}", req.uri().path());
        async move {
            let fetched = tokio::time::timeout(Duration::from_secs(10), async {
                let resp = client.get(uri.parse().expect("uri")).await.ok()?;
                let (parts, body) = resp.into_parts();
                let body = body.collect().await.ok()?.to_bytes();
                Some(Response::from_parts(parts, Full::new(body)))
            })
            .await;
            Ok::<_, std::convert::Infallible>(fetched.ok().flatten().unwrap_or_else(|| {
                let mut r = Response::new(Full::new(Bytes::from_static(b"origin unreachable")));
                *r.status_mut() = StatusCode::BAD_GATEWAY;
                r
            }))
        }
    });
    (server, svc, calls)
}

// ---------------------------------------------------------------------------
// Discovery

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_is_found_through_the_sentinels_and_entries_round_trip() {
    require_redis();
    let mut set = blocking(|| RedisSentinelSet::start("sl-found"));
    // The first sentinel is gone: the next one is asked.
    blocking(|| set.sentinel_mut(0).kill());
    let (origin, log) = origin(|n, _| ok("max-age=600", &format!("v{n}")));
    let a = on(&set, "found").build().unwrap();
    let b = on(&set, "found").promote_after(1).build().unwrap();
    let (svc_a, svc_b) = (cached(&a, origin.clone()), cached(&b, origin));
    send(&svc_a, get(&url(0))).await;
    written(&a, 1).await;
    // In the master's keyspace (and replicated), not in a sentinel's.
    assert_eq!(keys_on(&set, 0, "found"), 1, "on the master");
    assert!(
        within(Duration::from_secs(10), || keys_on(&set, 1, "found") == 1).await,
        "replicated"
    );
    let r = send(&svc_b, get(&url(0))).await;
    assert_eq!(cache_status(&r), L2_HIT);
    assert_eq!(body(r).await, "v0");
    assert_eq!(cache_status(&send(&svc_b, get(&url(0))).await), L1_HIT);
    assert_eq!(log.calls(), 1);
    // The master's address, once found, is what reports show.
    let info = a.info().l2.expect("an L2 tier");
    assert_eq!(info.server, format!("127.0.0.1:{}", set.node(0).port()));
    // The invalidation log is followed on the master too.
    subscribed(&a).await;
    subscribed(&b).await;
    assert!(a.invalidate(&get(&url(0))));
    assert!(
        eventually(|| b.stats().l1_entries == 0).await,
        "a's invalidation reached b: {:?}",
        b.stats()
    );
    let s = a.stats();
    assert_eq!((s.l2_errors, s.l2_coherence_resets), (0, 0), "{s:?}");
}

// ---------------------------------------------------------------------------
// Failover

/// Stores `KEYS` pages through a writer instance until the master and its
/// replica both hold them.
async fn preload(set: &RedisSentinelSet, ns: &str, origin: &Origin, keys: usize) {
    let writer = on(set, ns)
        .l2_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let w = cached(&writer, origin.clone());
    for k in 0..keys {
        let r = send(&w, get(&url(k))).await;
        assert_eq!(r.status(), 200);
    }
    written(&writer, keys as u64).await;
    assert!(
        within(Duration::from_secs(10), || keys_on(set, 1, ns) == keys).await,
        "the replica holds {} of {keys} keys",
        keys_on(set, 1, ns)
    );
}

/// What the load saw.
#[derive(Default)]
struct Load {
    sent: AtomicUsize,
    failed: AtomicUsize,
    /// Set when the master is killed.
    killed_at: Mutex<Option<Instant>>,
    /// Set once the cache has found the new master.
    switched_at: Mutex<Option<Instant>>,
    /// Time from the kill to the first L2 hit of a request sent after the
    /// cache found the new master.
    resumed_after: Mutex<Option<Duration>>,
    stop: AtomicBool,
    slowest: Mutex<Duration>,
}

/// The most requests the load sends, and for how long at most.
const MAX_REQUESTS: usize = 200_000;
const MAX_LOAD_TIME: Duration = Duration::from_secs(90);

/// One worker: requests until told to stop or a bound is reached.
async fn worker(svc: Svc, load: Arc<Load>, w: usize, keys: usize) {
    let start = Instant::now();
    while !load.stop.load(Ordering::SeqCst) && start.elapsed() < MAX_LOAD_TIME {
        let i = load.sent.fetch_add(1, Ordering::SeqCst);
        if i >= MAX_REQUESTS {
            return;
        }
        let k = (i + w) % keys;
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(5), call(&svc, get(&url(k)))).await;
        let took = t.elapsed();
        {
            let mut s = load.slowest.lock().unwrap();
            *s = (*s).max(took);
        }
        let Ok(Ok(resp)) = r else {
            load.failed.fetch_add(1, Ordering::SeqCst);
            continue;
        };
        let status = cache_status(&resp);
        if resp.status() != 200 || body(resp).await != format!("page /page/{k}") {
            load.failed.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        // An L2 hit for a request sent once the cache knew the new master
        // (not a waiter on a flight whose leader's read the old master
        // answered just before it died): the new master answered it.
        let switched = *load.switched_at.lock().unwrap();
        if status == L2_HIT && switched.is_some_and(|o| o <= t) {
            if let Some(k) = *load.killed_at.lock().unwrap() {
                load.resumed_after
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| k.elapsed());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_fails_no_request_and_l2_hits_resume_on_the_new_master() {
    require_redis();
    let mut set = blocking(|| RedisSentinelSet::start("sl-kill"));
    let (_server, origin, origin_calls) = http_origin().await;
    const KEYS: usize = 40;
    preload(&set, "kill", &origin, KEYS).await;
    let cache = on(&set, "kill")
        .l1_write_through(false) // every hit goes to L2
        .promote_after(1_000_000)
        .l2_timeout(Duration::from_millis(100))
        .l2_circuit_breaker(3, Duration::from_millis(300))
        .build()
        .unwrap();
    let svc = cached(&cache, origin);
    let load = Arc::new(Load::default());
    let workers: Vec<_> = (0..16)
        .map(|w| tokio::spawn(worker(svc.clone(), Arc::clone(&load), w, KEYS)))
        .collect();
    assert!(
        within(Duration::from_secs(30), || cache.stats().hits_l2 >= 500).await,
        "the load did not get going: {:?}",
        cache.stats()
    );
    let calls_before = origin_calls.load(Ordering::SeqCst);
    let old = blocking(|| set.kill_master());
    let killed_at = Instant::now();
    *load.killed_at.lock().unwrap() = Some(killed_at);
    let at_kill = load.sent.load(Ordering::SeqCst);
    let new_master = format!("127.0.0.1:{}", set.node(1 - old).port());
    let switched = within(FAILOVER, || {
        cache.info().l2.is_some_and(|l2| l2.server == new_master)
    })
    .await;
    *load.switched_at.lock().unwrap() = Some(Instant::now());
    let switched_after = killed_at.elapsed();
    let failover = blocking(|| set.wait_for_failover(old, FAILOVER));
    let failed_over_after = killed_at.elapsed();
    let resumed = within(FAILOVER, || load.resumed_after.lock().unwrap().is_some()).await;
    // A little more load on the new master, then stop.
    let after = load.sent.load(Ordering::SeqCst);
    within(Duration::from_secs(20), || {
        load.sent.load(Ordering::SeqCst) > after + 500
    })
    .await;
    load.stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let stats = cache.stats();
    let resumed_after = *load.resumed_after.lock().unwrap();
    let slowest = *load.slowest.lock().unwrap();
    println!(
        "master (node {old}) SIGKILLed after {at_kill} requests; the cache found the new master \
         {switched_after:?} after the kill (every sentinel named it by {failed_over_after:?}); \
         first L2 hit {resumed_after:?} after the kill; {} requests, \
         {} failed, slowest {slowest:?}; {} origin calls during the outage; {stats:?}",
        load.sent.load(Ordering::SeqCst).min(MAX_REQUESTS),
        load.failed.load(Ordering::SeqCst),
        origin_calls.load(Ordering::SeqCst) - calls_before,
    );
    failover.unwrap();
    assert!(switched, "the cache never found the new master: {stats:?}");
    assert!(resumed, "no L2 hit after the failover: {stats:?}");
    assert_eq!(load.failed.load(Ordering::SeqCst), 0, "{stats:?}");
    assert!(
        stats.l2_errors + stats.l2_timeouts > 0,
        "the master was down: {stats:?}"
    );
    // Generous: down-after 1 s, the election, the breaker's 300 ms.
    assert!(
        resumed_after.is_some_and(|d| d < Duration::from_secs(30)),
        "{resumed_after:?}"
    );
    // The reader follows the new master's log, L1 cleared once.
    assert!(
        within(RECOVERY, || {
            let s = cache.stats();
            s.l2_subscribed && s.l2_coherence_resets >= 1
        })
        .await,
        "not following the new master's log: {:?}",
        cache.stats()
    );
    let info = cache.info().l2.expect("an L2 tier");
    assert_eq!(
        info.server,
        format!("127.0.0.1:{}", set.node(1 - old).port()),
        "reports name the new master"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_reach_another_instance_across_a_failover() {
    require_redis();
    let mut set = blocking(|| RedisSentinelSet::start("sl-inval"));
    let (origin, log) = origin(|n, _| ok("max-age=600", &format!("v{n}")));
    let a = on(&set, "inval").build().unwrap();
    let b = on(&set, "inval").promote_after(1).build().unwrap();
    let (svc_a, svc_b) = (cached(&a, origin.clone()), cached(&b, origin));
    for i in 0..3 {
        send(&svc_a, get(&url(i))).await;
    }
    written(&a, 3).await;
    assert!(
        within(Duration::from_secs(10), || keys_on(&set, 1, "inval") == 3).await,
        "replicated"
    );
    for i in 0..3 {
        assert_eq!(cache_status(&send(&svc_b, get(&url(i))).await), L2_HIT);
        assert_eq!(cache_status(&send(&svc_b, get(&url(i))).await), L1_HIT);
    }
    subscribed(&a).await;
    subscribed(&b).await;
    let old = blocking(|| set.kill_master());
    // Made while no master answers: queued, replayed on the new master.
    assert!(a.invalidate(&get(&url(0))));
    blocking(|| set.wait_for_failover(old, FAILOVER)).unwrap();
    for (name, c) in [("a", &a), ("b", &b)] {
        assert!(
            within(RECOVERY, || {
                let s = c.stats();
                s.l2_subscribed && s.l2_coherence_resets >= 1 && c.l2_pending_writes() == 0
            })
            .await,
            "{name} follows the new master's log: {:?}",
            c.stats()
        );
    }
    // The outage's invalidation reached the new master: url 0 is gone
    // from L2 as well; the others are there (replicated before the kill).
    let new = 1 - old;
    assert!(
        within(RECOVERY, || keys_on(&set, new, "inval") == 2).await,
        "the queued DEL was replayed on the new master: {} keys",
        keys_on(&set, new, "inval")
    );
    let calls = log.calls();
    let r = send(&svc_b, get(&url(0))).await;
    assert!(cache_status(&r).contains("fwd=uri-miss"), "{r:?}");
    assert_eq!(log.calls(), calls + 1);
    assert_eq!(cache_status(&send(&svc_b, get(&url(1))).await), L2_HIT);
    assert_eq!(cache_status(&send(&svc_b, get(&url(1))).await), L1_HIT);
    // One made on the new master reaches b's L1.
    let received = b.stats().l2_messages_received;
    let _ = a.invalidate(&get(&url(1)));
    assert!(
        eventually(|| b.stats().l2_messages_received > received).await,
        "b heard a's invalidation: {:?}",
        b.stats()
    );
    let r = send(&svc_b, get(&url(1))).await;
    assert!(cache_status(&r).contains("fwd=uri-miss"), "{r:?}");
    assert_eq!(log.calls(), calls + 2);
}

/// The old master's log ran ahead of what its replica received (a master
/// whose clock ran ahead, cut off from its replica for its last entry):
/// after the failover the new master's log is behind the last entry an
/// instance read, and its new entries get lower ids. Reading on "after
/// the last id read" would miss every invalidation for as long as the gap
/// (here 10 minutes); the instance clears L1 and reads after the new
/// master's own last id instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_master_whose_log_is_behind_still_delivers_invalidations() {
    require_redis();
    let mut set = blocking(|| RedisSentinelSet::start("sl-behind"));
    let (origin, log) = origin(|n, _| ok("max-age=600", &format!("v{n}")));
    let a = on(&set, "behind").build().unwrap();
    let b = on(&set, "behind").promote_after(1).build().unwrap();
    let (svc_a, svc_b) = (cached(&a, origin.clone()), cached(&b, origin));
    send(&svc_a, get(&url(0))).await;
    written(&a, 1).await;
    assert!(
        within(Duration::from_secs(10), || keys_on(&set, 1, "behind") == 1).await,
        "replicated"
    );
    assert_eq!(cache_status(&send(&svc_b, get(&url(0))).await), L2_HIT);
    subscribed(&a).await;
    subscribed(&b).await;
    // The replica cut off and kept out (a password it does not know;
    // connections made before keep theirs), then an entry 10 minutes
    // ahead (an invalidation of a key nobody holds) that b reads.
    let old = set.master_index().unwrap();
    let port = set.node(old).port().to_string();
    let as_admin = |args: &[&str]| {
        let mut all = vec![
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-a",
            "held-back",
            "--no-auth-warning",
        ];
        all.extend_from_slice(args);
        redis_support::redis_cli(&all)
    };
    assert!(set
        .node(old)
        .cmd(&["CONFIG", "SET", "requirepass", "held-back"])
        .is_ok());
    let out = as_admin(&["CLIENT", "KILL", "TYPE", "replica"]);
    assert_eq!(out.text().trim(), "1", "{out:?}");
    let ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 600_000;
    let received = b.stats().l2_messages_received;
    let message = format!("{:016x} key {:032x}", 1, 12345);
    let out = as_admin(&["XADD", "{behind}:inv", &format!("{ahead}-0"), "m", &message]);
    assert_eq!(out.text().trim(), format!("{ahead}-0"), "{out:?}");
    assert!(
        eventually(|| b.stats().l2_messages_received > received).await,
        "b read the entry ahead"
    );
    blocking(|| set.node_mut(old).kill());
    blocking(|| set.wait_for_failover(old, FAILOVER)).unwrap();
    let new = 1 - old;
    // The new master's log is behind: the entry ahead never reached it.
    let newest = set
        .node(new)
        .cli(&["XREVRANGE", "{behind}:inv", "+", "-", "COUNT", "1"]);
    println!("the new master's newest log entry: {:?}", newest.text());
    assert!(!newest.text().contains(&ahead.to_string()), "{newest:?}");
    for (name, c) in [("a", &a), ("b", &b)] {
        assert!(
            within(RECOVERY, || c.stats().l2_subscribed).await,
            "{name} follows the new master's log: {:?}",
            c.stats()
        );
    }
    // b holds url 0 (again, from the new master's L2, after its reset) ...
    let first = cache_status(&send(&svc_b, get(&url(0))).await);
    assert!(first == L2_HIT || first == L1_HIT, "{first}");
    assert_eq!(cache_status(&send(&svc_b, get(&url(0))).await), L1_HIT);
    // ... and a's invalidation on the new master reaches it.
    a.invalidate(&get(&url(0)));
    let calls = log.calls();
    assert!(
        within(RECOVERY, || b.stats().l1_entries == 0).await,
        "b never heard a's invalidation: {:?}",
        b.stats()
    );
    let r = send(&svc_b, get(&url(0))).await;
    assert!(cache_status(&r).contains("fwd=uri-miss"), "{r:?}");
    assert_eq!(log.calls(), calls + 1);
    assert_eq!(b.stats().l2_coherence_resets, 1, "{:?}", b.stats());
}

// ---------------------------------------------------------------------------
// Configurations that cannot work

/// A fake sentinel on loopback: reads RESP commands and answers
/// `SENTINEL …` with `reply` (raw RESP), anything else with `+OK`.
async fn fake_sentinel(reply: Vec<u8>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                while let Some(cmd) = read_command(&mut read).await {
                    let answer = if cmd.eq_ignore_ascii_case("SENTINEL") {
                        reply.clone()
                    } else {
                        b"+OK\r\n".to_vec()
                    };
                    if write.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// The name of the next RESP command (an array of bulk strings).
async fn read_command<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Option<String> {
    let mut line = String::new();
    r.read_line(&mut line).await.ok()?;
    let n: usize = line.trim().strip_prefix('*')?.parse().ok()?;
    let mut name = None;
    for _ in 0..n {
        line.clear();
        r.read_line(&mut line).await.ok()?;
        let len: usize = line.trim().strip_prefix('$')?.parse().ok()?;
        let mut arg = vec![0; len + 2];
        r.read_exact(&mut arg).await.ok()?;
        arg.truncate(len);
        name.get_or_insert_with(|| String::from_utf8_lossy(&arg).into_owned());
    }
    name
}

/// `n` requests for distinct URLs through a cache that cannot reach a
/// master: every one answered 200 by the origin within `bound`, none from
/// L2, and the L2 failures counted.
async fn still_serves(cache: &Cache, n: usize, bound: Duration) {
    let (origin, log) = origin(|_, _| ok("max-age=600", "from the origin"));
    let svc = cached(cache, origin);
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), send(&svc, get(&url(i))))
            .await
            .expect("answered");
        slowest = slowest.max(t.elapsed());
        assert_eq!(r.status(), 200);
        assert!(!cache_status(&r).contains("detail=l2"), "{r:?}");
    }
    let s = cache.stats();
    println!(
        "{n} requests in {:?}, slowest {slowest:?}; {s:?}",
        start.elapsed()
    );
    assert_eq!(log.calls(), n);
    assert!(slowest < bound, "slowest {slowest:?}, bound {bound:?}");
    assert!(s.l2_errors + s.l2_timeouts > 0, "L2 misses counted: {s:?}");
    assert_eq!(s.hits_l2, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sentinel_answering_is_an_l2_that_misses_within_its_deadline() {
    // A sentinel that takes connections and never answers, and one whose
    // port refuses them.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused_addr = refused.local_addr().unwrap();
    drop(refused);
    let cache = Cache::builder()
        .redis_sentinel(
            "mymaster",
            [
                format!("redis://{}", silent.local_addr().unwrap()),
                format!("redis://{refused_addr}"),
            ],
        )
        .l2_timeout(Duration::from_millis(50))
        .l2_circuit_breaker(3, Duration::from_secs(60))
        .build()
        .unwrap();
    // Each L2 operation waits at most its 50 ms (plus a read allowance of
    // 16 ms), then 1 s for the probe that confirms timeouts; the rest
    // skip L2 once the breaker is open.
    still_serves(&cache, 20, Duration::from_secs(2)).await;
    assert!(
        eventually(|| cache.stats().l2_breaker == Some(BreakerState::Open)).await,
        "{:?}",
        cache.stats()
    );
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_master_name_is_an_l2_that_misses() {
    require_redis();
    let set = blocking(|| RedisSentinelSet::start("sl-known"));
    let cache = Cache::builder()
        .redis_sentinel("not-the-name", set.sentinel_urls())
        .l2_timeout(Duration::from_millis(200))
        .l2_circuit_breaker(3, Duration::from_secs(60))
        .build()
        .unwrap();
    still_serves(&cache, 10, Duration::from_secs(1)).await;
    let s = cache.stats();
    assert!(s.l2_errors >= 3, "a sentinel's nil is evidence: {s:?}");
    assert_eq!(s.l2_breaker, Some(BreakerState::Open), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_naming_a_replica_or_answering_garbage_is_not_believed() {
    require_redis();
    let set = blocking(|| RedisSentinelSet::start("sl-lies"));
    let replica = set.node(1).port().to_string();
    let names_replica = format!(
        "*2\r\n$9\r\n127.0.0.1\r\n${}\r\n{replica}\r\n",
        replica.len()
    );
    let (liar, _t1) = fake_sentinel(names_replica.into_bytes()).await;
    let (garbage, _t2) = fake_sentinel(b"*3\r\n:1\r\n$-1\r\n*0\r\n".to_vec()).await;
    let mut sentinels = vec![format!("redis://{liar}"), format!("redis://{garbage}")];
    sentinels.extend(set.sentinel_urls());
    let (origin, _log) = origin(|n, _| ok("max-age=600", &format!("v{n}")));
    let cache = Cache::builder()
        .redis_sentinel(set.name(), sentinels)
        .namespace("lies")
        .l2_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let svc = cached(&cache, origin);
    send(&svc, get(&url(0))).await;
    written(&cache, 1).await;
    // Written to the master, which ROLE confirmed, not to the replica the
    // first sentinel named (a write there is READONLY).
    assert_eq!(keys_on(&set, 0, "lies"), 1);
    let info = cache.info().l2.expect("an L2 tier");
    assert_eq!(info.server, format!("127.0.0.1:{}", set.node(0).port()));
    assert_eq!(cache.stats().l2_errors, 0, "{:?}", cache.stats());
}

#[test]
fn configurations_refused_at_build_name_their_setting() {
    let err = Cache::builder()
        .redis_sentinel("", ["redis://127.0.0.1:26379"])
        .build()
        .unwrap_err();
    assert!(err.is_redis() && err.setting() == "redis_sentinel", "{err}");
    assert!(err.to_string().contains("master name"), "{err}");
    let err = Cache::builder()
        .redis_sentinel("my master", ["redis://127.0.0.1:26379"])
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("master name"), "{err}");
    let err = Cache::builder()
        .redis_sentinel("m", Vec::<String>::new())
        .build()
        .unwrap_err();
    assert!(err.is_redis() && err.setting() == "redis_sentinel", "{err}");
    assert!(err.to_string().contains("at least one sentinel"), "{err}");
    let err = Cache::builder()
        .redis_sentinel("m", ["redis://127.0.0.1:26379", "not a url"])
        .build()
        .unwrap_err();
    assert!(err.is_redis() && err.setting() == "redis_sentinel", "{err}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the redis error: {err:?}"
    );
    let err = Cache::builder()
        .redis_sentinel("m", ["redis://:hunter2@127.0.0.1:26379/3"])
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("no database"), "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
    let err = Cache::builder()
        .redis_sentinel("m", ["redis://127.0.0.1:26379"])
        .redis_sentinel_master_url("redis+unix:///tmp/redis.sock")
        .build()
        .unwrap_err();
    assert!(
        err.is_redis() && err.setting() == "redis_sentinel_master_url",
        "{err}"
    );
    let err = Cache::builder()
        .redis_sentinel("m", ["redis://127.0.0.1:26379"])
        .redis_sentinel_master_url("http://:hunter2@master/")
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "redis_sentinel_master_url", "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
    let err = Cache::builder()
        .redis("redis://127.0.0.1:6379/")
        .redis_sentinel_master_url("redis://:pw@master/1")
        .build()
        .unwrap_err();
    assert!(
        err.is_invalid_setting() && err.setting() == "redis_sentinel_master_url",
        "{err}"
    );
    #[cfg(not(feature = "redis-tls"))]
    for (sentinel, master, setting) in [
        ("rediss://127.0.0.1:26379", None, "redis_sentinel"),
        (
            "redis://127.0.0.1:26379",
            Some("rediss://master/"),
            "redis_sentinel_master_url",
        ),
    ] {
        let mut b = Cache::builder().redis_sentinel("m", [sentinel]);
        if let Some(m) = master {
            b = b.redis_sentinel_master_url(m);
        }
        let err = b.build().unwrap_err();
        assert_eq!(err.setting(), setting, "{err}");
        assert!(err.to_string().contains("`redis-tls` feature"), "{err}");
    }
    // Valid: nothing is connected at build.
    Cache::builder()
        .redis_sentinel(
            "m",
            ["redis://127.0.0.1:26379", "redis://:pw@10.0.0.2:26379"],
        )
        .redis_sentinel_master_url("redis://user:pw@master/2")
        .build()
        .unwrap();
}
