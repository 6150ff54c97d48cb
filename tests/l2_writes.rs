//! L2 writes under load: the `Vary: User-Agent` shape (32 concurrent
//! clients × 40 `User-Agent`s) through a cache with a bounded write queue
//! drops (almost) nothing and every variant is readable by another
//! instance; the variants of a URL kept in Redis stay within
//! `max_variants`. Each test starts its own `redis-server`.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::time::{Duration, Instant};

use redis_support::{require_redis, RedisCluster, RedisServer};
use support::*;
use tower_tiered_cache::{Cache, CacheBuilder};

const L2_HIT: &str = "tower-tiered-cache; hit; detail=l2";
const CLIENTS: usize = 32;
const AGENTS: usize = 40;

/// The answer of an origin whose responses vary on `User-Agent`.
fn by_agent(
    _: usize,
    req: &http::Request<()>,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let ua = req
        .headers()
        .get("user-agent")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    with_header(
        ok("max-age=300", &format!("{} for {ua}", req.uri().path())),
        "vary",
        "user-agent",
    )
}

fn l2(url: String) -> CacheBuilder {
    Cache::builder()
        .redis(url)
        .namespace("w")
        // Generous: tests share two cores; the drop bound is about the
        // queue's throughput, not about a slow moment.
        .l2_timeout(Duration::from_millis(500))
}

/// Waits until `n` L2 writes were settled (written or dropped); fails after
/// 30 s.
async fn settled(cache: &Cache, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = cache.stats();
        if s.l2_writes + s.l2_writes_dropped >= n {
            return;
        }
        assert!(Instant::now() < deadline, "writes not settled: {s:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `n` L2 writes have landed; fails after 30 s.
async fn landed(cache: &Cache, n: u64) {
    settled(cache, n).await;
    let s = cache.stats();
    assert!(s.l2_writes >= n, "writes dropped: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_user_agent_load_drops_at_most_one_percent_and_every_variant_is_in_l2() {
    require_redis();
    let server = RedisServer::start();
    let (origin, log) = origin(by_agent);
    // A bounded queue a fifth of the burst: what matters is how fast the
    // writer drains it.
    let a = l2(server.url())
        .l2_write_queue(256)
        .max_variants(AGENTS)
        .build()
        .unwrap();
    let svc = cached(&a, origin.clone());
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            let url = format!("http://example.com/page/{c}");
            for u in 0..AGENTS {
                let r = send(
                    &svc,
                    get_with(&url, &[("user-agent", &format!("agent-{u}"))]),
                )
                .await;
                assert_eq!(r.status(), 200);
                body(r).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = (CLIENTS * AGENTS) as u64;
    assert_eq!(log.calls() as u64, total, "every request was a first one");
    settled(&a, total).await;
    let s = a.stats();
    println!(
        "l2_writes={} l2_writes_dropped={} of {total}",
        s.l2_writes, s.l2_writes_dropped
    );
    assert!(
        s.l2_writes_dropped * 100 <= total,
        "more than 1 % of the writes dropped: {} of {total}",
        s.l2_writes_dropped
    );
    assert_eq!(s.l2_variants_evicted, 0);

    // A fresh instance finds every written variant in L2.
    let b = l2(server.url()).max_variants(AGENTS).build().unwrap();
    let svc_b = cached(&b, origin);
    let mut missing = 0;
    for c in 0..CLIENTS {
        let url = format!("http://example.com/page/{c}");
        for u in 0..AGENTS {
            let ua = format!("agent-{u}");
            let r = send(&svc_b, get_with(&url, &[("user-agent", &ua)])).await;
            if cache_status(&r) == L2_HIT {
                assert_eq!(body(r).await, format!("/page/{c} for {ua}"));
            } else {
                missing += 1;
            }
        }
    }
    assert!(
        missing <= s.l2_writes_dropped,
        "{missing} variants not in L2, {} writes dropped",
        s.l2_writes_dropped
    );
}

/// The keys under the namespace `w` on `server`.
fn keys(server: &RedisServer) -> Vec<String> {
    let out = server.cli(&["--scan", "--pattern", "w:*"]);
    out.text().lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn variants_in_redis_stay_within_max_variants_and_the_newest_are_kept() {
    require_redis();
    const MAX: usize = 4;
    const SENT: usize = 10;
    let server = RedisServer::start();
    let (origin, log) = origin(by_agent);
    let a = l2(server.url()).max_variants(MAX).build().unwrap();
    let svc = cached(&a, origin.clone());
    let url = "http://example.com/capped";
    for u in 0..SENT {
        send(
            &svc,
            get_with(url, &[("user-agent", &format!("agent-{u}"))]),
        )
        .await;
        // One at a time: "oldest" is well defined.
        landed(&a, u as u64 + 1).await;
    }
    // The marker, the variant index and at most MAX variants (no tag
    // index: the responses have no tags).
    let stored = keys(&server);
    assert!(
        stored.len() <= MAX + 2,
        "{} keys for {MAX} variants at most: {stored:?}",
        stored.len()
    );
    assert_eq!(a.stats().l2_variants_evicted, (SENT - MAX) as u64);

    // The newest MAX variants are readable by another instance, the older
    // ones were evicted.
    let b = l2(server.url()).max_variants(MAX).build().unwrap();
    let svc_b = cached(&b, origin);
    for u in (0..SENT).rev() {
        let ua = format!("agent-{u}");
        let r = send(&svc_b, get_with(url, &[("user-agent", &ua)])).await;
        let status = cache_status(&r);
        if u >= SENT - MAX {
            assert_eq!(status, L2_HIT, "{ua} is one of the newest");
        } else {
            assert!(status.contains("fwd="), "{ua} was evicted: {status}");
        }
    }
    assert_eq!(log.calls(), SENT + SENT - MAX);
}

#[tokio::test]
async fn variants_are_written_and_bounded_on_a_three_master_cluster() {
    require_redis();
    // A URL's marker, variants and variant index share its hash tag, so
    // the one script that writes them runs on the URL's node.
    const MAX: usize = 3;
    const URLS: usize = 12;
    const SENT: usize = 5;
    let cluster = RedisCluster::start(3);
    let (origin, log) = origin(by_agent);
    let build = || {
        Cache::builder()
            .redis_cluster(cluster.urls())
            .namespace("w")
            .l2_timeout(Duration::from_millis(500))
            .max_variants(MAX)
            .build()
            .unwrap()
    };
    let a = build();
    let svc = cached(&a, origin.clone());
    for u in 0..SENT {
        for i in 0..URLS {
            let url = format!("http://example.com/c{i}");
            send(
                &svc,
                get_with(&url, &[("user-agent", &format!("agent-{u}"))]),
            )
            .await;
        }
        // One generation of variants at a time: "oldest" is well defined.
        landed(&a, ((u + 1) * URLS) as u64).await;
    }
    let s = a.stats();
    assert_eq!(s.l2_writes_dropped, 0, "{s:?}");
    assert_eq!(s.l2_variants_evicted, ((SENT - MAX) * URLS) as u64);
    let b = build();
    let svc_b = cached(&b, origin);
    for i in 0..URLS {
        let url = format!("http://example.com/c{i}");
        for u in SENT - MAX..SENT {
            let ua = format!("agent-{u}");
            let r = send(&svc_b, get_with(&url, &[("user-agent", &ua)])).await;
            assert_eq!(cache_status(&r), L2_HIT, "{url} {ua}");
            assert_eq!(body(r).await, format!("/c{i} for {ua}"));
        }
    }
    assert_eq!(log.calls(), SENT * URLS);
}
