//! The L2 tier against real Redis servers started by the tests: a single
//! node, a password-protected one and a 3-master cluster, each on free
//! loopback ports. Covers L2 hits, promotion, undecodable values, Redis dying
//! under load and coming back, and bad URLs.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_support::{require_redis, RedisCluster, RedisServer};
use support::*;
use tower_tiered_cache::{Cache, CacheBuilder, ManualClock};

const L2_HIT: &str = "tower-tiered-cache; hit; detail=l2";
const L1_HIT: &str = "tower-tiered-cache; hit; detail=l1";
const URL: &str = "http://example.com/item";

/// A single-node cache. The L2 timeout is generous here (tests run in
/// parallel on two cores); the failure tests set their own.
fn l2(url: String) -> CacheBuilder {
    Cache::builder()
        .redis(url)
        .namespace("t")
        .l2_timeout(Duration::from_millis(500))
}

#[tokio::test]
async fn a_new_cache_with_an_empty_l1_is_served_from_l2() {
    require_redis();
    let server = RedisServer::start();
    let (origin, log) = origin(|_, _| ok("max-age=60", "shared"));

    let a = l2(server.url()).build().unwrap();
    let r = send(&cached(&a, origin.clone()), get(URL)).await;
    assert!(cache_status(&r).contains("stored"));
    written(&a, 1).await;

    let b = l2(server.url()).build().unwrap();
    let svc = cached(&b, origin);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), L2_HIT);
    assert!(age(&r).is_some());
    assert_eq!(body(r).await, "shared");
    assert_eq!(
        log.calls(),
        1,
        "the second instance did not call the origin"
    );
    assert_eq!(b.stats().hits_l2, 1);
}

#[tokio::test]
async fn promotion_happens_after_exactly_promote_after_l2_hits() {
    require_redis();
    let server = RedisServer::start();
    let (origin, log) = origin(|_, _| ok("max-age=60", "hot"));
    let a = l2(server.url()).build().unwrap();
    send(&cached(&a, origin.clone()), get(URL)).await;
    written(&a, 1).await;

    for n in [1, 3] {
        let b = l2(server.url()).promote_after(n).build().unwrap();
        let svc = cached(&b, origin.clone());
        for i in 1..=n {
            let r = send(&svc, get(URL)).await;
            assert_eq!(cache_status(&r), L2_HIT, "promote_after({n}): L2 hit {i}");
        }
        // L1 copies are trusted once the invalidation channel is up.
        subscribed(&b).await;
        let r = send(&svc, get(URL)).await;
        assert_eq!(
            cache_status(&r),
            L1_HIT,
            "promote_after({n}): promoted after {n} hits"
        );
        assert_eq!(b.stats().promotions, 1);
        assert_eq!(b.stats().hits_l2, u64::from(n));
    }
    assert_eq!(log.calls(), 1);
}

#[tokio::test]
async fn undecodable_values_are_misses_and_are_deleted() {
    require_redis();
    let server = RedisServer::start();
    let (origin, log) = origin(|_, _| ok("max-age=60", "good"));
    let a = l2(server.url()).build().unwrap();
    send(&cached(&a, origin.clone()), get(URL)).await;
    written(&a, 1).await;

    let keys = server.cli(&["--scan", "--pattern", "t:*"]);
    let keys: Vec<String> = keys.text().lines().map(str::to_owned).collect();
    assert_eq!(keys.len(), 1, "one key under the namespace: {keys:?}");
    for garbage in ["garbage", "TTC\u{1}\u{1}\u{9}", ""] {
        assert!(server.cli(&["SET", &keys[0], garbage]).success());
        let b = l2(server.url()).build().unwrap();
        let r = send(&cached(&b, origin.clone()), get(URL)).await;
        assert_eq!(r.status(), 200);
        assert!(
            cache_status(&r).contains("fwd=uri-miss"),
            "{garbage:?}: {}",
            cache_status(&r)
        );
        assert_eq!(body(r).await, "good");
        assert_eq!(b.stats().l2_decode_errors, 1, "{garbage:?}");
        // b's own write of the fresh value lands before the next round.
        written(&b, 1).await;
        // The bad value was deleted (and replaced by the fresh write).
        assert!(
            eventually(|| server.cli(&["GET", &keys[0]]).text().trim() != garbage).await,
            "{garbage:?} was not deleted"
        );
    }
    assert_eq!(log.calls(), 4);
}

#[tokio::test]
async fn auth_via_url() {
    require_redis();
    for server in [
        RedisServer::with_password("s3cret"),
        RedisServer::with_acl_user("cacheuser", "pw-for-cache"),
    ] {
        let (origin, _log) = origin(|_, _| ok("max-age=60", "auth"));
        let a = l2(server.url_with_auth()).build().unwrap();
        send(&cached(&a, origin.clone()), get(URL)).await;
        written(&a, 1).await;
        let b = l2(server.url_with_auth()).build().unwrap();
        let r = send(&cached(&b, origin), get(URL)).await;
        assert_eq!(cache_status(&r), L2_HIT);
        // Without the password, L2 fails: every lookup is a miss, no error.
        let c = l2(server.url()).build().unwrap();
        let (origin, log) = support::origin(|_, _| ok("max-age=60", "auth"));
        let r = send(&cached(&c, origin), get(URL)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(log.calls(), 1);
        assert!(c.stats().l2_errors + c.stats().l2_timeouts >= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_fails_no_request_and_l2_resumes_after_restart() {
    require_redis();
    let mut server = RedisServer::start();
    let (origin, _log) = origin(|_, _| ok("max-age=60", "x"));
    let cache = l2(server.url())
        .l1_write_through(false) // every hit goes to L2
        .promote_after(1_000_000)
        .l2_timeout(Duration::from_millis(50))
        .l2_circuit_breaker(3, Duration::from_millis(300))
        .build()
        .unwrap();
    let svc = cached(&cache, origin);

    const REQUESTS: usize = 3000;
    const CONCURRENCY: usize = 16;
    // How late this runtime runs a task that asked to wake in 10 ms: on a
    // starved machine every request is late by as much, Redis or not.
    let lag = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let ticker = {
        let lag = Arc::clone(&lag);
        tokio::spawn(async move {
            loop {
                let t = Instant::now();
                tokio::time::sleep(Duration::from_millis(10)).await;
                let late = t.elapsed().saturating_sub(Duration::from_millis(10));
                let mut l = lag.lock().unwrap();
                *l = (*l).max(late);
            }
        })
    };
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..CONCURRENCY {
        let svc = svc.clone();
        let sent = Arc::clone(&sent);
        workers.push(tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut failed = 0;
            loop {
                let i = sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= REQUESTS {
                    return (slowest, failed);
                }
                let url = format!("http://example.com/k{}", (i + w) % 40);
                let t = Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(5), call(&svc, get(&url))).await;
                slowest = slowest.max(t.elapsed());
                match r {
                    Ok(Ok(resp)) if resp.status() == 200 => {}
                    _ => failed += 1,
                }
            }
        }));
    }
    // Kill Redis a third of the way through.
    assert!(eventually(|| sent.load(std::sync::atomic::Ordering::SeqCst) >= REQUESTS / 3).await);
    server.kill();
    let mut slowest = Duration::ZERO;
    let mut failed = 0;
    for w in workers {
        let (s, f) = w.await.unwrap();
        slowest = slowest.max(s);
        failed += f;
    }
    ticker.abort();
    let lag = *lag.lock().unwrap();
    let stats = cache.stats();
    assert_eq!(failed, 0, "no request may fail: {stats:?}");
    assert!(
        stats.l2_errors + stats.l2_timeouts > 0,
        "Redis was down: {stats:?}"
    );
    // The origin answers at once; only L2 can make a request slow, and each
    // L2 operation is bounded by its timeout (plus scheduling on 2 cores,
    // and what the machine withheld from this runtime: twice the worst lag
    // seen).
    assert!(
        slowest < Duration::from_millis(750) + 2 * lag,
        "slowest request took {slowest:?}, worst scheduling lag {lag:?}"
    );

    // Back up: after the breaker's open period L2 hits resume by themselves.
    server.restart();
    let url = "http://example.com/after-restart";
    let mut resumed = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let r = send(&svc, get(url)).await;
        if cache_status(&r) == L2_HIT {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resumed, "no L2 hit after restart: {:?}", cache.stats());
}

#[tokio::test]
async fn the_same_behaviour_on_a_three_master_cluster() {
    require_redis();
    let cluster = RedisCluster::start(3);
    let (origin, log) = origin(|_, req| ok("max-age=60", req.uri().path()));
    let a = Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace("c")
        .build()
        .unwrap();
    let svc_a = cached(&a, origin.clone());
    // Enough keys to land on every master.
    for i in 0..30 {
        send(&svc_a, get(&format!("http://example.com/c{i}"))).await;
    }
    written(&a, 30).await;
    let b = Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace("c")
        .promote_after(2)
        .build()
        .unwrap();
    let svc_b = cached(&b, origin);
    for i in 0..30 {
        let url = format!("http://example.com/c{i}");
        let r = send(&svc_b, get(&url)).await;
        assert_eq!(cache_status(&r), L2_HIT, "{url}");
        assert_eq!(body(r).await, format!("/c{i}"));
    }
    assert_eq!(log.calls(), 30);
    assert_eq!(b.stats().hits_l2, 30);
}

#[test]
fn a_bad_url_is_a_build_error() {
    for url in ["not a url", "http://127.0.0.1:6379", "redis://"] {
        let err = Cache::builder().redis(url).build();
        assert!(err.is_err(), "{url} was accepted");
        let err = err.unwrap_err();
        assert_eq!(err.setting(), "redis", "{url}");
        assert!(err.to_string().contains("Redis URL"), "{err}");
    }
    assert!(Cache::builder()
        .redis_cluster(Vec::<String>::new())
        .build()
        .is_err());
    assert!(Cache::builder()
        .redis("redis://127.0.0.1:1/")
        .namespace("")
        .build()
        .is_err());
    assert!(Cache::builder()
        .redis("redis://127.0.0.1:1/")
        .promote_after(0)
        .build()
        .is_err());
}

/// Two instances on one Redis, both holding `URL` in L1.
async fn two_instances(
    server_url: &str,
    resp: fn(usize) -> http::Response<http_body_util::Full<bytes::Bytes>>,
) -> (Cache, Svc, Cache, Svc, Log) {
    let (origin, log) = origin(move |n, _| resp(n));
    let a = l2(server_url.to_owned()).build().unwrap();
    let b = l2(server_url.to_owned()).promote_after(1).build().unwrap();
    let (svc_a, svc_b) = (cached(&a, origin.clone()), cached(&b, origin));
    send(&svc_a, get(URL)).await;
    written(&a, 1).await;
    let r = send(&svc_b, get(URL)).await;
    assert_eq!(cache_status(&r), L2_HIT);
    let r = send(&svc_b, get(URL)).await;
    assert_eq!(cache_status(&r), L1_HIT, "b holds an L1 copy");
    subscribed(&a).await;
    subscribed(&b).await;
    (a, svc_a, b, svc_b, log)
}

fn versioned(n: usize) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    with_header(
        ok("max-age=60", &format!("v{n}")),
        "surrogate-key",
        "product-1 all",
    )
}

#[tokio::test]
async fn an_invalidation_on_one_instance_removes_the_others_l1_copy_within_a_second() {
    require_redis();
    let server = RedisServer::start();
    let (a, _svc_a, b, svc_b, log) = two_instances(&server.url(), versioned).await;
    // b may already have read a's write announcement from the log.
    let before = b.stats().l2_messages_received;
    assert!(a.invalidate(&get(URL)));
    // "Within a second" is the log reader's doing (an `XREAD BLOCK` wakes
    // as soon as the entry is appended); no wall-clock bound here, which a
    // busy machine could break. What proves the message did it: b's copy
    // is fresh for 60 s (max-age=60), far longer than this test runs, so
    // only the message can drop it. The deadline only bounds a hang.
    let t = Instant::now();
    assert!(
        within(Duration::from_secs(20), || b.stats().l1_entries == 0
            && b.stats().l2_messages_received > before)
        .await,
        "no message reached b"
    );
    let r = send(&svc_b, get(URL)).await;
    eprintln!("the invalidation reached b in {:?}", t.elapsed());
    assert!(
        cache_status(&r).contains("fwd=uri-miss"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn an_overwrite_on_one_instance_removes_the_others_l1_copy_within_a_second() {
    require_redis();
    let server = RedisServer::start();
    let (a, svc_a, b, svc_b, _log) = two_instances(&server.url(), versioned).await;
    // `no-cache` on a's request: a fetches v1 and overwrites v0 everywhere.
    let r = send(&svc_a, get_with(URL, &[("cache-control", "no-cache")])).await;
    assert_eq!(body(r).await, "v1");
    written(&a, 2).await;
    // As above: the message, not expiry (max-age=60), drops b's copy; no
    // wall-clock bound. The deadline only bounds a hang.
    let t = Instant::now();
    assert!(
        within(Duration::from_secs(20), || b.stats().l1_entries == 0
            && b.stats().l2_messages_received >= 1)
        .await
    );
    let r = send(&svc_b, get(URL)).await;
    eprintln!(
        "the overwrite's announcement reached b in {:?}",
        t.elapsed()
    );
    assert_eq!(cache_status(&r), L2_HIT, "b's L1 copy was dropped");
    assert_eq!(body(r).await, "v1");
}

#[tokio::test]
async fn tags_prefixes_and_clear_reach_both_tiers_and_other_instances() {
    require_redis();
    let server = RedisServer::start();
    let (a, _svc_a, b, svc_b, log) = two_instances(&server.url(), versioned).await;
    let out = a.invalidate_tag("product-1").await;
    assert_eq!((out.l1, out.l2), (1, 1), "a's L1 copy and the L2 key");
    assert!(eventually(|| b.stats().l2_messages_received >= 1).await);
    assert!(cache_status(&send(&svc_b, get(URL)).await).contains("fwd=uri-miss"));
    assert_eq!(log.calls(), 2);
    // b stored v1 (L1 and L2). A prefix purge from a removes it everywhere.
    written(&b, 1).await;
    let before = b.stats().l2_messages_received;
    let out = a.invalidate_prefix("/it").await;
    assert_eq!(out.l2, 1);
    assert!(eventually(|| b.stats().l2_messages_received > before).await);
    assert!(cache_status(&send(&svc_b, get(URL)).await).contains("fwd=uri-miss"));
    assert_eq!(log.calls(), 3);
    // A prefix that matches nothing removes nothing.
    assert_eq!(a.invalidate_prefix("/other").await.l2, 0);
    // clear: everything under the namespace, both tiers, every instance.
    written(&b, 2).await;
    let before = b.stats().l2_messages_received;
    let out = a.clear().await;
    assert!(out.l2 >= 2, "entry and tag index: {out:?}");
    assert!(eventually(|| b.stats().l2_messages_received > before).await);
    assert!(server
        .cli(&["--scan", "--pattern", "t:*"])
        .text()
        .trim()
        .is_empty());
    assert!(cache_status(&send(&svc_b, get(URL)).await).contains("fwd=uri-miss"));
    assert_eq!(log.calls(), 4);
}

#[tokio::test]
async fn purges_work_on_a_cluster() {
    require_redis();
    let cluster = RedisCluster::start(3);
    let (origin, log) =
        origin(|_, req| with_header(ok("max-age=60", req.uri().path()), "cache-tag", "group"));
    // A generous timeout: the test counts the entries purged, so no write
    // may be dropped for a slow reply on a busy machine (with the default
    // 50 ms, a few were under load).
    let a = Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace("p")
        .l2_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let svc = cached(&a, origin);
    for i in 0..12 {
        send(&svc, get(&format!("http://example.com/x/{i}"))).await;
        send(&svc, get(&format!("http://example.com/y/{i}"))).await;
    }
    written(&a, 24).await;
    assert_eq!(a.invalidate_prefix("/x/").await.l2, 12);
    assert_eq!(
        a.invalidate_tag("group").await.l2,
        24,
        "members of the tag index"
    );
    let b = Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace("p")
        .l2_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let r = send(
        &cached(&b, support::origin(|_, _| ok("max-age=60", "new")).0),
        get("http://example.com/y/3"),
    )
    .await;
    assert!(cache_status(&r).contains("fwd=uri-miss"));
    assert_eq!(log.calls(), 24);
    for i in 0..5 {
        send(&svc, get(&format!("http://example.com/z/{i}"))).await;
    }
    written(&a, 29).await;
    assert!(a.clear().await.l2 >= 5);
}

#[tokio::test]
async fn l1_is_not_trusted_past_l1_max_ttl_while_the_channel_is_down() {
    require_redis();
    let mut server = RedisServer::start();
    let clock = ManualClock::starting_now();
    let (origin, log) = origin(|_, _| ok("max-age=600", "x"));
    let cache = l2(server.url())
        .clock(clock.clone())
        .l1_max_ttl(Duration::from_secs(5))
        .build()
        .unwrap();
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    subscribed(&cache).await;
    server.kill();
    assert!(
        eventually(|| !cache.stats().l2_subscribed).await,
        "the subscriber noticed"
    );
    // Within l1_max_ttl the L1 copy is still used.
    clock.advance(Duration::from_secs(4));
    assert_eq!(cache_status(&send(&svc, get(URL)).await), L1_HIT);
    // Past it, the copy is not trusted: L2 is down, so the origin answers.
    clock.advance(Duration::from_secs(2));
    let r = send(&svc, get(URL)).await;
    assert_ne!(cache_status(&r), L1_HIT);
    assert_eq!(log.calls(), 2);
    // The channel comes back by itself.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(8);
    while !cache.stats().l2_subscribed && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cache.stats().l2_subscribed, "resubscribed after restart");
}

#[cfg(feature = "compression")]
#[tokio::test]
async fn large_bodies_are_compressed_in_l2_and_served_intact() {
    require_redis();
    let server = RedisServer::start();
    let big = "{\"market\": \"1x2\", \"odds\": [1.85, 3.4, 4.2]}\n".repeat(500);
    let expected = big.clone();
    let (origin, log) = origin(move |_, req| {
        if req.uri().path() == "/encoded" {
            with_header(ok("max-age=60", &big), "content-encoding", "identity")
        } else {
            ok("max-age=60", &big)
        }
    });
    let a = l2(server.url()).build().unwrap();
    let svc_a = cached(&a, origin.clone());
    send(&svc_a, get(URL)).await;
    send(&svc_a, get("http://example.com/encoded")).await;
    written(&a, 2).await;
    let sizes: Vec<usize> = server
        .cli(&["--scan", "--pattern", "t:*"])
        .text()
        .lines()
        .map(|k| server.cli(&["STRLEN", k]).text().trim().parse().unwrap())
        .collect();
    assert_eq!(sizes.len(), 2);
    let (small, large) = (*sizes.iter().min().unwrap(), *sizes.iter().max().unwrap());
    assert!(
        small * 5 < expected.len(),
        "compressed value is small: {sizes:?}"
    );
    assert!(
        large > expected.len(),
        "a Content-Encoding body is stored as it is: {sizes:?}"
    );
    let b = l2(server.url()).build().unwrap();
    let r = send(&cached(&b, origin), get(URL)).await;
    assert_eq!(cache_status(&r), L2_HIT);
    assert_eq!(body(r).await, expected.as_bytes());
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn entries_over_the_l1_entry_cap_stay_in_l2_only() {
    require_redis();
    let server = RedisServer::start();
    let big = "y".repeat(200_000);
    let (origin, log) = origin(move |_, _| ok("max-age=60", &big));
    let cache = l2(server.url())
        .l1_max_entry_bytes(64 * 1024)
        .promote_after(1)
        .build()
        .unwrap();
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert!(cache_status(&r).contains("stored"), "{}", cache_status(&r));
    written(&cache, 1).await;
    for _ in 0..3 {
        let r = send(&svc, get(URL)).await;
        assert_eq!(cache_status(&r), L2_HIT, "too big for L1, even promoted");
        assert_eq!(body(r).await.len(), 200_000);
    }
    assert_eq!(cache.stats().l1_entries, 0);
    assert_eq!(log.calls(), 1);
}

fn by_encoding(
    _: usize,
    req: &http::Request<()>,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let enc = req
        .headers()
        .get("accept-encoding")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    with_header(
        ok("max-age=60", &format!("body-{enc}")),
        "vary",
        "accept-encoding",
    )
}

#[tokio::test]
async fn variants_are_shared_through_l2_and_an_invalidation_orphans_them_for_good() {
    require_redis();
    let server = RedisServer::start();
    let (origin, log) = origin(by_encoding);
    let a = l2(server.url()).build().unwrap();
    let svc_a = cached(&a, origin.clone());
    for enc in ["gzip", "br"] {
        send(&svc_a, get_with(URL, &[("accept-encoding", enc)])).await;
    }
    written(&a, 2).await;
    // Another instance: each variant from L2, matched on the request's value.
    let b = l2(server.url()).build().unwrap();
    let svc_b = cached(&b, origin.clone());
    for enc in ["gzip", "br"] {
        let r = send(&svc_b, get_with(URL, &[("accept-encoding", enc)])).await;
        assert_eq!(cache_status(&r), L2_HIT, "{enc}");
        assert_eq!(body(r).await, format!("body-{enc}"));
    }
    let r = send(&svc_b, get_with(URL, &[("accept-encoding", "deflate")])).await;
    assert!(
        cache_status(&r).contains("fwd="),
        "a third variant is a miss"
    );
    assert_eq!(log.calls(), 3);
    written(&b, 1).await;

    // Invalidate the URL; then one variant is stored again. The other old
    // variant must not come back with the new marker.
    a.invalidate(&get(URL));
    assert!(
        eventually(|| server
            .cli(&["--scan", "--pattern", "t:*"])
            .text()
            .lines()
            .count()
            <= 3)
        .await
    );
    let c = l2(server.url()).build().unwrap();
    let svc_c = cached(&c, origin.clone());
    send(&svc_c, get_with(URL, &[("accept-encoding", "gzip")])).await; // re-stored
    written(&c, 1).await;
    let d = l2(server.url()).build().unwrap();
    let svc_d = cached(&d, origin);
    let calls = log.calls();
    let r = send(&svc_d, get_with(URL, &[("accept-encoding", "br")])).await;
    assert!(
        cache_status(&r).contains("fwd="),
        "the old br variant stayed orphaned: {}",
        cache_status(&r)
    );
    assert_eq!(log.calls(), calls + 1);
    let r = send(&svc_d, get_with(URL, &[("accept-encoding", "gzip")])).await;
    assert_eq!(cache_status(&r), L2_HIT, "the new gzip variant is found");
}

#[tokio::test]
async fn invalidate_by_readable_key() {
    require_redis();
    let server = RedisServer::start();
    let (origin, log) = origin(|_, _| ok("max-age=60", "k"));
    let a = l2(server.url()).build().unwrap();
    let svc = cached(&a, origin);
    send(&svc, get(URL)).await;
    written(&a, 1).await;
    assert!(a.invalidate_key("GET http://example.com/item"));
    assert!(
        eventually(|| server
            .cli(&["--scan", "--pattern", "t:*"])
            .text()
            .trim()
            .is_empty())
        .await
    );
    assert!(cache_status(&send(&svc, get(URL)).await).contains("fwd=uri-miss"));
    assert_eq!(log.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_delays_no_request_past_the_timeout_and_a_full_queue_drops_writes() {
    require_redis();
    let mut server = RedisServer::start();
    let (origin, log) = origin(|_, req| ok("max-age=60", req.uri().path()));
    let cache = l2(server.url())
        .l2_timeout(Duration::from_millis(50))
        .l2_write_queue(1)
        .l2_circuit_breaker(1000, Duration::from_millis(200))
        .build()
        .unwrap();
    let svc = cached(&cache, origin);
    send(&svc, get("http://example.com/warm")).await;
    written(&cache, 1).await;
    server.freeze(); // connected, never answers
                     // How late this runtime runs a task that asked to wake in 10 ms: on a
                     // starved machine every request is late by as much, Redis or not.
    let lag = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let ticker = {
        let lag = Arc::clone(&lag);
        tokio::spawn(async move {
            loop {
                let t = Instant::now();
                tokio::time::sleep(Duration::from_millis(10)).await;
                let late = t.elapsed().saturating_sub(Duration::from_millis(10));
                let mut l = lag.lock().unwrap();
                *l = (*l).max(late);
            }
        })
    };
    let mut slowest = Duration::ZERO;
    for i in 0..40 {
        let t = Instant::now();
        let r = send(&svc, get(&format!("http://example.com/f{i}"))).await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(r.status(), 200);
    }
    ticker.abort();
    let lag = *lag.lock().unwrap();
    let stats = cache.stats();
    assert!(stats.l2_timeouts > 0, "{stats:?}");
    assert!(
        stats.l2_writes_dropped > 0,
        "the one-slot queue overflowed: {stats:?}"
    );
    // Bounded by the L2 timeout (50 ms per operation), plus what the
    // machine withheld from this runtime (twice the worst lag seen).
    assert!(
        slowest < Duration::from_millis(400) + 2 * lag,
        "slowest request {slowest:?}, worst scheduling lag {lag:?}"
    );
    assert_eq!(log.calls(), 41);
    server.unfreeze();
    // Back to normal by itself: a new entry is written and read from L2.
    let fresh = l2(server.url()).build().unwrap();
    let mut resumed = false;
    for i in 0..50 {
        let url = format!("http://example.com/after{i}");
        send(&svc, get(&url)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (o, _) = support::origin(|_, _| ok("max-age=60", "x"));
        if cache_status(&send(&cached(&fresh, o), get(&url)).await) == L2_HIT {
            resumed = true;
            break;
        }
    }
    assert!(
        resumed,
        "L2 works again after the freeze: {:?}",
        cache.stats()
    );
}

#[tokio::test]
async fn a_dropped_cache_leaves_no_subscription_behind() {
    require_redis();
    let server = RedisServer::start();
    // Readers of the invalidation log: connections blocked in XREAD.
    let numsub = || {
        let out = server.cli(&["CLIENT", "LIST"]);
        out.text()
            .lines()
            .filter(|l| l.contains("cmd=xread"))
            .count()
    };
    for _ in 0..3 {
        let (origin, _log) = origin(|_, _| ok("max-age=60", "x"));
        let cache = l2(server.url()).build().unwrap();
        send(&cached(&cache, origin), get(URL)).await;
        subscribed(&cache).await;
        assert!(numsub() >= 1);
        drop(cache);
    }
    assert!(
        eventually(|| numsub() == 0).await,
        "subscriptions left: {}",
        numsub()
    );
}

#[tokio::test]
async fn an_invalidation_right_after_a_store_is_not_undone_by_the_queued_write() {
    require_redis();
    let server = RedisServer::start();
    for (i, vary) in [false, true].into_iter().enumerate() {
        let url = format!("http://example.com/raced{i}");
        let (origin, log) = origin(move |n, _| {
            let r = ok("max-age=60", &format!("v{n}"));
            if vary {
                with_header(r, "vary", "accept-language")
            } else {
                r
            }
        });
        let a = l2(server.url()).build().unwrap();
        let req = || get_with(&url, &[("accept-language", "en")]);
        send(&cached(&a, origin.clone()), req()).await;
        // Invalidate before the queued L2 write has had a chance to run.
        a.invalidate(&req());
        // Both done: the queued write ran (or was dropped) and the delete
        // reached Redis. The deadline only bounds a hang.
        assert!(
            within(Duration::from_secs(20), || a.l2_pending_writes() == 0).await,
            "vary={vary}: L2 work still queued: {:?}",
            a.stats()
        );
        let b = l2(server.url()).build().unwrap();
        let r = send(&cached(&b, origin), req()).await;
        assert!(
            cache_status(&r).contains("fwd="),
            "vary={vary}: the old value came back: {}",
            cache_status(&r)
        );
        assert_eq!(log.calls(), 2);
    }
}

/// An `l2_timeout` longer than redis-rs's own 500 ms response timeout is
/// the one that applies: a read that takes 900 ms (Redis paused) under a
/// 5 s `l2_timeout` is an L2 hit, not an error.
#[tokio::test]
async fn an_l2_timeout_over_half_a_second_is_honoured() {
    require_redis();
    let server = RedisServer::start();
    let (origin, log) = origin(|_, _| ok("max-age=60", "slow redis"));
    let patient = || {
        Cache::builder()
            .redis(server.url())
            .namespace("t")
            .l2_timeout(Duration::from_secs(5))
    };
    let a = patient().build().unwrap();
    send(&cached(&a, origin.clone()), get(URL)).await;
    written(&a, 1).await;

    let b = patient().build().unwrap();
    let svc = cached(&b, origin);
    // Connect first, so only the read waits.
    send(&svc, get("http://example.com/connect")).await;
    assert!(
        eventually(|| b.stats().l2_writes >= 1).await,
        "{:?}",
        b.stats()
    );
    let paused = server.cli(&["CLIENT", "PAUSE", "900", "ALL"]);
    assert!(paused.text().contains("OK"), "{paused:?}");
    let started = Instant::now();
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), L2_HIT, "{:?}", b.stats());
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(b.stats().l2_errors, 0);
    assert_eq!(log.calls(), 2, "the paused read did not go to the origin");
}
