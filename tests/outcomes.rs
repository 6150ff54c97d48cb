//! Every request keeps exactly one outcome, and `hit_ratio` is the share of
//! lookups answered without the origin: a request that waited on another
//! request's flight is a hit of the tier the flight's leader found the
//! entry in (L1 or L2), and a `collapsed` miss only when the flight reached
//! the origin. Checked in the global stats, per label, in the window and in
//! the Prometheus text.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis_support::{require_redis, RedisServer};
use support::*;
use tower_tiered_cache::{Cache, CacheBuilder, Stats};

const URL: &str = "http://example.com/outcome";
/// Another URL, read first so that the instance's Redis connections are up.
const WARM: &str = "http://example.com/warm";
const WAITERS: usize = 99;

/// A cache on `url` whose L2 reads may take as long as Redis is paused
/// (the paused read is the flight the others wait on). Promoted on the
/// first L2 hit: a request arriving after the flight ended finds L1.
fn l2(url: String) -> CacheBuilder {
    Cache::builder()
        .redis(url)
        .namespace("o")
        .l2_timeout(Duration::from_secs(10))
        .coalesce_timeout(Duration::from_secs(20))
        .promote_after(1)
}

/// How long Redis is paused while the requests join the leader's flight.
/// Below 500 ms: the Redis client gives up on a reply after 500 ms
/// whatever `l2_timeout` says (redis-rs's default response timeout).
const PAUSE_MS: &str = "400";

/// Reads [`WARM`] (stored in L2 by another instance) through `svc`, waits
/// (generously) until `cache` is subscribed, then zeroes its stats: its
/// Redis connections are up before a test pauses Redis.
async fn warm_up<B, E>(cache: &Cache, svc: &Svc<B, E>)
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Send + std::fmt::Debug,
    E: Send + std::fmt::Debug + 'static,
{
    let r = send(svc, get(WARM)).await;
    assert_eq!(cache_status(&r), "tower-tiered-cache; hit; detail=l2");
    assert!(
        within(Duration::from_secs(30), || cache.stats().l2_subscribed).await,
        "not subscribed: {:?}",
        cache.stats()
    );
    cache.reset_stats();
}

/// Runs `fut`, counting in `parked` the first time it returns `Pending`.
async fn first_pending<F: Future>(fut: F, parked: Arc<AtomicUsize>) -> F::Output {
    let mut fut = pin!(fut);
    let mut counted = false;
    std::future::poll_fn(|cx| {
        let r = fut.as_mut().poll(cx);
        if r.is_pending() && !std::mem::replace(&mut counted, true) {
            parked.fetch_add(1, Ordering::SeqCst);
        }
        r
    })
    .await
}

/// How many times Redis ran `cmd` (from `INFO commandstats`).
fn calls(server: &RedisServer, cmd: &str) -> u64 {
    let info = server.cli(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{cmd}:calls=");
    info.text()
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The Prometheus sample `name` (no labels) as a number.
fn prometheus_value(cache: &Cache, name: &str) -> f64 {
    let text = cache.prometheus();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .trim()
        .parse()
        .expect("a number")
}

/// The hit ratio everywhere it is reported: stats, each label, the window,
/// Prometheus (current and window).
fn ratios(cache: &Cache, st: &Stats) -> Vec<(String, f64)> {
    let mut all = vec![
        ("stats".to_owned(), st.hit_ratio),
        ("window".to_owned(), st.window.hit_ratio),
        (
            "prometheus".to_owned(),
            prometheus_value(cache, "tower_cache_hit_ratio"),
        ),
        (
            "prometheus window".to_owned(),
            prometheus_value(cache, "tower_cache_window_hit_ratio"),
        ),
    ];
    for l in &st.labels {
        all.push((format!("label {}", l.label), l.hit_ratio));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_a_leaders_l2_read_are_l2_hits_and_the_hit_ratio_is_one() {
    require_redis();
    let server = RedisServer::start();
    let (origin, log) = origin(|_, _| ok("max-age=600", "from-l2"));

    // Instance a stores the entry in L2.
    let a = l2(server.url()).build().unwrap();
    let r = send(&cached(&a, origin.clone()), get(URL)).await;
    assert!(cache_status(&r).contains("stored"), "{}", cache_status(&r));
    send(&cached(&a, origin.clone()), get(WARM)).await;
    written(&a, 2).await;
    assert_eq!(log.calls(), 2);

    // A fresh instance: empty L1, the entry only in L2.
    let b = l2(server.url()).build().unwrap();
    let svc = cached(&b, origin);
    // Connected and subscribed first, so the paused command below is the
    // leader's read and nothing else.
    warm_up(&b, &svc).await;
    let reads_before = calls(&server, "get");
    // Redis answers nothing for 400 ms: the leader's L2 read waits, and
    // the other requests join its flight meanwhile (spawning 100 tasks
    // takes milliseconds). One that arrives after the flight ended finds
    // the promoted copy in L1: a hit too, and no second L2 read.
    assert!(server.cli(&["CLIENT", "PAUSE", PAUSE_MS, "ALL"]).success());
    let tasks: Vec<_> = (0..=WAITERS)
        .map(|_| tokio::spawn(send(&svc, get(URL))))
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        statuses.push(cache_status(&r));
        assert_eq!(body(r).await, "from-l2");
    }
    let st = b.stats();
    let reads = calls(&server, "get") - reads_before;

    assert_eq!(
        log.calls(),
        2,
        "no request reached the origin: {statuses:?} {st:?}"
    );
    assert_eq!(reads, 1, "one L2 read for the whole flight; {st:?}");
    let l2_hits = statuses
        .iter()
        .filter(|s| *s == "tower-tiered-cache; hit; detail=l2")
        .count();
    let l1_hits = statuses
        .iter()
        .filter(|s| *s == "tower-tiered-cache; hit; detail=l1")
        .count();
    assert_eq!(
        l1_hits + l2_hits,
        1 + WAITERS,
        "every answer is a hit: {statuses:?}"
    );
    // The leader and (at least) one waiter answered from the one L2 read.
    assert!(l2_hits >= 2, "waiters are L2 hits: {statuses:?}");
    assert_eq!(st.requests, 1 + WAITERS as u64, "{st:?}");
    assert_eq!(
        (st.hits_l2, st.hits_l1, st.coalesced, st.misses),
        (l2_hits as u64, l1_hits as u64, 0, 0),
        "(hits_l2, hits_l1, coalesced, misses)"
    );
    assert_eq!(st.upstream_calls, 0);
    for (what, ratio) in ratios(&b, &st) {
        assert!(
            (ratio - 1.0).abs() < 1e-9,
            "{what} hit ratio {ratio}; {st:?}"
        );
    }
    let label = &st.labels[0];
    assert_eq!(label.hits_l2, l2_hits as u64, "{label:?}");
    assert_eq!(label.coalesced, 0, "{label:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_on_a_cold_origin_miss_are_collapsed_misses() {
    require_redis();
    let server = RedisServer::start();
    let gate = Gate::new();
    let g = gate.clone();
    let (origin, log) = origin_fn(move |_, _req| {
        let g = g.clone();
        async move {
            g.pass().await;
            Ok::<_, std::convert::Infallible>(ok("max-age=600", "from-origin"))
        }
    });
    let c = l2(server.url()).build().unwrap();
    let svc = cached(&c, origin);
    // How many requests have been polled once and are waiting: a miss's
    // path from the call to joining the flight has no await, so a waiter's
    // first `Pending` is its wait on the leader's flight (the leader's is
    // at Redis or at the gate).
    let parked = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..=WAITERS)
        .map(|_| tokio::spawn(first_pending(send(&svc, get(URL)), Arc::clone(&parked))))
        .collect();
    // Every request has joined the flight (or is the leader at the
    // origin) before the origin answers: the leader is at the gate once
    // the origin has been called; the rest wait for the gate to open.
    assert!(
        within(Duration::from_secs(20), || log.calls() == 1).await,
        "the leader reached the origin"
    );
    // The deadline only bounds a hang: on a loaded machine the waiters
    // join late, not wrongly.
    assert!(
        within(Duration::from_secs(20), || parked.load(Ordering::SeqCst)
            == 1 + WAITERS)
        .await,
        "{} of {} requests waiting",
        parked.load(Ordering::SeqCst),
        1 + WAITERS
    );
    gate.open();
    let mut statuses = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        statuses.push(cache_status(&r));
        assert_eq!(body(r).await, "from-origin");
    }
    let st = c.stats();
    assert_eq!(log.calls(), 1, "one origin call for the whole flight");
    let collapsed = statuses.iter().filter(|s| s.contains("collapsed")).count();
    assert_eq!(collapsed, WAITERS, "{statuses:?}");
    assert_eq!(
        (st.misses, st.coalesced, st.hits),
        (1, WAITERS as u64, 0),
        "(misses, coalesced, hits); {st:?}"
    );
    assert_eq!(st.requests, 1 + WAITERS as u64);
    for (what, ratio) in ratios(&c, &st) {
        assert!(ratio.abs() < 1e-9, "{what} hit ratio {ratio}; {st:?}");
    }
    assert_eq!(st.labels[0].coalesced, WAITERS as u64);
}
