//! Redis judged down by evidence, not by a busy machine (issue 12, point 8).
//!
//! A timeout alone is suspicion: this process may not have been scheduled
//! while Redis answered. The L2 breaker opens on timeouts only when a probe
//! (`PING`, 1 s) gets no answer; errors (a refused or closed connection)
//! open it as before. Each test starts its own `redis-server`.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_support::{require_redis, RedisServer};
use support::*;
use tower_tiered_cache::{BreakerState, Cache, CacheBuilder};

const L2_HIT: &str = "tower-tiered-cache; hit; detail=l2";

/// Every hit goes to L2 (nothing is written to or promoted into L1), L2
/// reads get the 50 ms default deadline and barely more (the body cap adds
/// 1 ms per 64 KiB), and three L2 failures in a row open the breaker.
fn l2_only(url: String, open_for: Duration) -> CacheBuilder {
    Cache::builder()
        .redis(url)
        .namespace("starve")
        .l2_timeout(Duration::from_millis(50))
        .max_body_bytes(64 * 1024)
        .l1_write_through(false)
        .promote_after(1_000_000)
        .l2_circuit_breaker(3, open_for)
}

fn url(i: usize) -> String {
    format!("http://example.com/warm{i}")
}

/// Stores `n` URLs in L2 and waits until they are written.
async fn warm(svc: &Svc, cache: &Cache, n: usize) {
    for i in 0..n {
        let r = send(svc, get(&url(i))).await;
        assert!(cache_status(&r).contains("stored"), "{}", cache_status(&r));
    }
    written(cache, n as u64).await;
}

/// The runtime's only thread is blocked (`std::thread::sleep`, 150 ms: three
/// L2 deadlines) 20 times in a row while 8 clients read L2 entries and store
/// new ones. Redis is healthy throughout: the L2 breaker never opens, L2
/// hits are served during and after the starvation, writes land.
#[tokio::test]
async fn a_starved_runtime_does_not_open_the_l2_breaker_and_l2_keeps_serving() {
    require_redis();
    let server = RedisServer::start();
    let (origin, log) = origin(|_, req| ok("max-age=600", req.uri().path()));
    // An open breaker would stay open for the rest of the test.
    let cache = l2_only(server.url(), Duration::from_secs(600))
        .build()
        .unwrap();
    let svc = cached(&cache, origin);
    const WARM: usize = 20;
    warm(&svc, &cache, WARM).await;
    let calls_before = log.calls();
    let writes_before = cache.stats().l2_writes;

    const BLOCKS: usize = 20;
    const BLOCK: Duration = Duration::from_millis(150);
    let starving = Arc::new(AtomicBool::new(true));
    let hog = {
        let starving = Arc::clone(&starving);
        tokio::spawn(async move {
            for _ in 0..BLOCKS {
                std::thread::sleep(BLOCK);
                tokio::task::yield_now().await;
            }
            starving.store(false, Ordering::SeqCst);
        })
    };
    let opened_seen = Arc::new(AtomicBool::new(false));
    let (l2_hits, requests, new_urls) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut clients = Vec::new();
    for c in 0..8 {
        let (svc, cache, starving, opened_seen) = (
            svc.clone(),
            cache.clone(),
            Arc::clone(&starving),
            Arc::clone(&opened_seen),
        );
        let (l2_hits, requests, new_urls) = (
            Arc::clone(&l2_hits),
            Arc::clone(&requests),
            Arc::clone(&new_urls),
        );
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            // Bounded, and yielding: with L2 skipped (breaker open) a
            // request may complete without ever waiting, and a client that
            // never yields would keep the hog from running.
            while starving.load(Ordering::SeqCst) && n < 2_000 {
                tokio::task::yield_now().await;
                n += 1;
                // One request in four stores a new entry (an L2 write).
                let u = if n % 4 == 0 {
                    new_urls.fetch_add(1, Ordering::SeqCst);
                    format!("http://example.com/new{c}-{n}")
                } else {
                    url((c + n) % WARM)
                };
                let r = send(&svc, get(&u)).await;
                assert_eq!(r.status(), 200);
                requests.fetch_add(1, Ordering::SeqCst);
                if cache_status(&r) == L2_HIT {
                    l2_hits.fetch_add(1, Ordering::SeqCst);
                }
                if cache.stats().l2_breaker == Some(BreakerState::Open) {
                    opened_seen.store(true, Ordering::SeqCst);
                }
            }
        }));
    }
    hog.await.unwrap();
    for c in clients {
        c.await.unwrap();
    }
    // Let a probe under way finish (it has 1 s), then judge.
    assert!(
        within(Duration::from_secs(10), || cache.l2_pending_writes() == 0).await,
        "{:?}",
        cache.stats()
    );
    // Kept as a short sleep: nothing says a probe is under way (it is an
    // internal task; its `PING` has no public sign of completion). It is a
    // window for a late failure to show, not a wait the checks need: on a
    // busy machine a probe still running here can only let a breaker that
    // opens later go unseen below, never fail a healthy run.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let stats = cache.stats();
    let (requests, l2_hits, new_urls) = (
        requests.load(Ordering::SeqCst),
        l2_hits.load(Ordering::SeqCst),
        new_urls.load(Ordering::SeqCst),
    );
    let warm_reads = requests - new_urls;
    let origin_calls = (log.calls() - calls_before) as u64;
    let writes = stats.l2_writes - writes_before;
    eprintln!(
        "starved {BLOCKS} x {BLOCK:?}: {requests} requests, {l2_hits} L2 hits of {warm_reads} \
         reads of L2 entries, {origin_calls} origin calls ({new_urls} new URLs), \
         l2_timeouts={} l2_timeouts_slow_host={} l2_errors={} writes={writes} \
         writes_dropped={} breaker={:?}",
        stats.l2_timeouts,
        stats.l2_timeouts_slow_host,
        stats.l2_errors,
        stats.l2_writes_dropped,
        stats.l2_breaker
    );
    assert!(
        !opened_seen.load(Ordering::SeqCst),
        "the L2 breaker opened with Redis healthy: {stats:?}"
    );
    assert_eq!(stats.l2_breaker, Some(BreakerState::Closed), "{stats:?}");
    assert!(requests >= 8, "the clients ran: {requests}");
    // Most reads of L2 entries were L2 hits while starving; a timed-out
    // read is a miss and calls the origin.
    assert!(
        l2_hits * 2 >= warm_reads,
        "{l2_hits} L2 hits of {warm_reads}: {stats:?}"
    );
    // Writes are not dropped wholesale: at least half the new entries
    // landed in Redis.
    assert!(
        writes * 2 >= new_urls,
        "{writes} L2 writes for {new_urls} new entries: {stats:?}"
    );
    // After the starvation every entry is an L2 hit, without the origin.
    let calls = log.calls();
    for i in 0..WARM {
        let r = send(&svc, get(&url(i))).await;
        assert_eq!(cache_status(&r), L2_HIT, "{i}: {:?}", cache.stats());
    }
    assert_eq!(log.calls(), calls);
}

/// Redis paused (`CLIENT PAUSE 800 ALL`) for less than the probe's 1 s:
/// reads time out, the probe's `PING` is answered when the pause ends, the
/// breaker stays closed and the timeouts are counted as this host's
/// (`l2_timeouts_slow_host`). Deterministic: no reliance on scheduling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_followed_by_an_answered_probe_do_not_open_the_breaker() {
    require_redis();
    let server = RedisServer::start();
    let (origin, _log) = origin(|_, req| ok("max-age=600", req.uri().path()));
    let cache = l2_only(server.url(), Duration::from_secs(600))
        .build()
        .unwrap();
    let svc = cached(&cache, origin);
    warm(&svc, &cache, 1).await;
    // Connected, and nothing queued.
    assert_eq!(cache_status(&send(&svc, get(&url(0))).await), L2_HIT);

    let paused = server.cli(&["CLIENT", "PAUSE", "800", "ALL"]);
    assert!(paused.text().contains("OK"), "{paused:?}");
    let mut sent = 0;
    while cache.stats().l2_timeouts < 3 && sent < 40 {
        let r = send(&svc, get(&url(0))).await;
        assert_eq!(r.status(), 200);
        sent += 1;
    }
    assert!(cache.stats().l2_timeouts >= 3, "{:?}", cache.stats());
    assert!(
        within(Duration::from_secs(10), || cache
            .stats()
            .l2_timeouts_slow_host
            >= 3)
        .await,
        "the probe did not excuse the timeouts: {:?}",
        cache.stats()
    );
    let stats = cache.stats();
    assert_eq!(stats.l2_breaker, Some(BreakerState::Closed), "{stats:?}");
    assert_eq!(stats.l2_errors, 0, "{stats:?}");
    assert!(
        within(Duration::from_secs(10), || cache.l2_pending_writes() == 0).await,
        "{:?}",
        cache.stats()
    );
    assert_eq!(
        cache_status(&send(&svc, get(&url(0))).await),
        L2_HIT,
        "{:?}",
        cache.stats()
    );
    // The counter is exposed with the other L2 counters.
    let text = cache.prometheus();
    assert!(
        text.contains("tower_cache_l2_errors_total{kind=\"timeout_slow_host\"}"),
        "{text}"
    );
}

/// Sends requests for stored entries until the L2 breaker opens; returns
/// how many it took (at most `limit`).
async fn requests_until_open(svc: &Svc, cache: &Cache, limit: usize) -> usize {
    for n in 1..=limit {
        let r = send(svc, get(&url(n % 4))).await;
        assert_eq!(r.status(), 200);
        if cache.stats().l2_breaker == Some(BreakerState::Open) {
            return n;
        }
        // Requests arrive every 10 ms or so (the origin answers at once).
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    limit + 1
}

/// Redis SIGSTOPped: it truly does not answer, the probe's `PING` either.
/// The breaker opens within a bounded number of requests (three timeouts,
/// then the probe's 1 s); after SIGCONT it closes again by itself and L2
/// hits resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_redis_opens_the_breaker_after_the_probe_and_sigcont_closes_it() {
    require_redis();
    let mut server = RedisServer::start();
    let (origin, _log) = origin(|_, req| ok("max-age=600", req.uri().path()));
    let cache = l2_only(server.url(), Duration::from_millis(300))
        .build()
        .unwrap();
    let svc = cached(&cache, origin);
    warm(&svc, &cache, 4).await;
    assert_eq!(cache_status(&send(&svc, get(&url(1))).await), L2_HIT);

    server.freeze();
    let started = Instant::now();
    // Each request waits at least its 50 ms L2 deadline while the probe
    // waits 1 s: about 20 requests, 100 is far beyond.
    const LIMIT: usize = 100;
    let n = requests_until_open(&svc, &cache, LIMIT).await;
    let took = started.elapsed();
    let stats = cache.stats();
    eprintln!(
        "SIGSTOP: breaker open after {n} requests, {took:?}; l2_timeouts={} \
         l2_timeouts_slow_host={} l2_errors={}",
        stats.l2_timeouts, stats.l2_timeouts_slow_host, stats.l2_errors
    );
    assert!(n <= LIMIT, "not open after {LIMIT} requests: {stats:?}");
    assert!(stats.l2_timeouts >= 3, "{stats:?}");

    server.unfreeze();
    let mut resumed = false;
    for _ in 0..200 {
        let r = send(&svc, get(&url(2))).await;
        if cache_status(&r) == L2_HIT && cache.stats().l2_breaker == Some(BreakerState::Closed) {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        resumed,
        "closed and serving after SIGCONT: {:?}",
        cache.stats()
    );
}

/// Redis killed: refused connections are evidence, the breaker opens after
/// three of them, without waiting for a probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_opens_the_breaker_on_evidence() {
    require_redis();
    let mut server = RedisServer::start();
    let (origin, _log) = origin(|_, req| ok("max-age=600", req.uri().path()));
    let cache = l2_only(server.url(), Duration::from_secs(600))
        .build()
        .unwrap();
    let svc = cached(&cache, origin);
    warm(&svc, &cache, 4).await;
    assert_eq!(cache_status(&send(&svc, get(&url(1))).await), L2_HIT);

    server.kill();
    let started = Instant::now();
    const LIMIT: usize = 10;
    let n = requests_until_open(&svc, &cache, LIMIT).await;
    let took = started.elapsed();
    let stats = cache.stats();
    eprintln!(
        "SIGKILL: breaker open after {n} requests, {took:?}; l2_errors={} l2_timeouts={} \
         l2_timeouts_slow_host={}",
        stats.l2_errors, stats.l2_timeouts, stats.l2_timeouts_slow_host
    );
    assert!(n <= LIMIT, "not open after {LIMIT} requests: {stats:?}");
    assert!(stats.l2_errors >= 1, "{stats:?}");
}
