//! Observability of the L2 tier against a real `redis-server` started by the
//! test (a free loopback port): client spans for Redis commands under the
//! request's span, health following the L2 circuit breaker through a
//! kill and a restart, and the Redis `INFO` subset in `Stats::redis`.
//!
//! The L2 breaker reads the cache's clock, so its open period is passed by
//! moving a `ManualClock`, not by sleeping.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::time::{Duration, Instant};

use redis_support::{require_redis, RedisServer};
use support::capture::*;
use support::*;
use tower_tiered_cache::{
    BreakerState, Cache, CacheBuilder, Clock, HealthStatus, HealthThresholds,
};
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;

const L2_HIT: &str = "tower-tiered-cache; hit; detail=l2";

fn l2(url: String) -> CacheBuilder {
    Cache::builder()
        .redis(url)
        .namespace("obs")
        .l2_timeout(Duration::from_millis(500))
}

// ---------------------------------------------------------------------------
// Spans
// ---------------------------------------------------------------------------

#[tokio::test]
async fn redis_commands_are_client_spans_under_the_request_span() {
    require_redis();
    let server = RedisServer::start();
    let cap = Capture::default();
    let _installed = install(tracing_subscriber::registry().with(cap.clone()));
    let (origin, log) = origin(|_, _| ok("max-age=60", "shared"));
    let url = "http://example.com/item";

    let a = l2(server.url()).span_level(Level::INFO).build().unwrap();
    let r = send(&cached(&a, origin.clone()), get(url)).await;
    assert!(cache_status(&r).contains("stored"), "{}", cache_status(&r));
    written(&a, 1).await;

    // A second instance, L1 empty: an L2 hit.
    let b = l2(server.url()).span_level(Level::INFO).build().unwrap();
    let r = send(&cached(&b, origin), get(url)).await;
    assert_eq!(cache_status(&r), L2_HIT);
    assert_eq!(body(r).await, "shared");
    assert_eq!(log.calls(), 1);

    let spans = cap.spans();
    let lookups: Vec<usize> = (0..spans.len())
        .filter(|&i| spans[i].name == "cache.lookup")
        .collect();
    assert_eq!(lookups.len(), 2, "{spans:#?}");
    let (miss, hit) = (&spans[lookups[0]], &spans[lookups[1]]);
    assert_eq!(
        (miss.str("cache.result"), miss.str("cache.tier")),
        (Some("miss"), Some("none"))
    );
    assert_eq!(
        (hit.str("cache.result"), hit.str("cache.tier")),
        (Some("hit"), Some("l2"))
    );

    let redis: Vec<&SpanRec> = spans.iter().filter(|s| s.name == "redis").collect();
    assert!(!redis.is_empty(), "{spans:#?}");
    for s in &redis {
        assert_eq!(s.target, "tower_tiered_cache");
        assert_eq!(s.level, Level::DEBUG);
        assert_eq!(s.str("db.system.name"), Some("redis"), "{s:#?}");
        assert_eq!(s.str("server.address"), Some("127.0.0.1"), "{s:#?}");
        assert_eq!(
            s.fields.get("server.port"),
            Some(&Val::I64(i64::from(server.port()))),
            "{s:#?}"
        );
        assert_eq!(s.str("otel.kind"), Some("client"));
        let op = s.str("db.operation.name").expect("db.operation.name");
        assert_eq!(s.str("otel.name"), Some(op), "span named for its command");
        assert_eq!(s.fields.get("error.type"), None, "{s:#?}");
    }
    // Each lookup's GET runs inside the request's span.
    let children = |lookup: usize| -> Vec<&str> {
        redis
            .iter()
            .filter(|s| s.parent == Some(lookup))
            .filter_map(|s| s.str("db.operation.name"))
            .collect()
    };
    assert_eq!(children(lookups[0]), ["GET"], "{spans:#?}");
    assert_eq!(children(lookups[1]), ["GET"], "{spans:#?}");
    // The write and its announcement went out off the request path, in
    // one pipeline (a root of its own); INFO fetches (from `stats()`) are
    // left out.
    let ops: Vec<(&str, Option<&str>)> = redis
        .iter()
        .filter(|s| s.str("db.operation.name") != Some("INFO"))
        .map(|s| {
            (
                s.str("db.operation.name").unwrap(),
                s.parent.map(|p| spans[p].name),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("GET", Some("cache.lookup")),
            ("PIPELINE SET", None),
            ("GET", Some("cache.lookup")),
        ]
    );
}

// ---------------------------------------------------------------------------
// Health and the L2 breaker
// ---------------------------------------------------------------------------

/// Health that judges by the L2 breaker only (latency thresholds high:
/// requests wait for L2 timeouts while Redis is down).
fn l2_health_cache(server: &RedisServer, clock: &tower_tiered_cache::ManualClock) -> Cache {
    l2(server.url())
        .clock(clock.clone())
        .l2_timeout(Duration::from_millis(200))
        .l2_circuit_breaker(2, Duration::from_secs(30))
        .health_thresholds(
            HealthThresholds::new()
                .degraded_mean_latency(Duration::from_secs(10))
                .warning_p95(Duration::from_secs(10)),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn health_is_degraded_while_redis_is_down_and_recovers_after_restart() {
    require_redis();
    let mut server = RedisServer::start();
    let cap = Capture::default();
    let _installed = install(tracing_subscriber::registry().with(cap.clone()));
    let clock = clock();
    let cache = l2_health_cache(&server, &clock);
    let (origin, _) = origin(|_, req| ok("max-age=600", req.uri().path()));
    let svc = cached(&cache, origin);
    send(&svc, get("http://example.com/warm")).await;
    written(&cache, 1).await;
    let h = cache.health();
    assert_eq!(h.status, HealthStatus::Healthy, "{h:#?}");
    assert_eq!(h.l2_breaker, Some(BreakerState::Closed));

    server.kill();
    let mut i = 0;
    while cache.health().l2_breaker != Some(BreakerState::Open) {
        i += 1;
        assert!(i <= 20, "the breaker did not open: {:?}", cache.stats());
        let r = send(&svc, get(&format!("http://example.com/down/{i}"))).await;
        assert_eq!(r.status(), 200, "L2 failures never fail a request");
    }
    let h = cache.health();
    assert_eq!(h.status, HealthStatus::Degraded, "{h:#?}");
    assert_eq!(h.reasons.len(), 1, "{h:#?}");
    assert!(h.reasons[0].contains("L2"), "{h:#?}");
    assert!(h.reasons[0].contains("open"), "{h:#?}");
    assert_eq!(cache.stats().l2_breaker, Some(BreakerState::Open));
    // Minimal logging (the default) warned once that L2 is down.
    assert_eq!(
        cap.events_with(tracing::Level::WARN, "L2 (Redis) is down"),
        1
    );
    // Requests keep coming: still answered, still degraded (the breaker
    // stays open for its period on the cache's clock).
    for j in 0..5 {
        let r = send(&svc, get(&format!("http://example.com/open/{j}"))).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(cache.health().status, HealthStatus::Degraded);

    server.restart();
    clock.advance(Duration::from_secs(31));
    let h = cache.health();
    assert_eq!(h.status, HealthStatus::Warning, "{h:#?}");
    assert_eq!(h.l2_breaker, Some(BreakerState::HalfOpen));
    assert!(h.reasons[0].contains("probing"), "{h:#?}");

    // The next request probes L2; a probe that meets a connection still
    // coming up re-opens the breaker for another (clock) period.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        let r = send(&svc, get(&format!("http://example.com/back/{n}"))).await;
        assert_eq!(r.status(), 200);
        match cache.health().l2_breaker {
            Some(BreakerState::Closed) => break,
            Some(BreakerState::Open) => clock.advance(Duration::from_secs(31)),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "L2 did not come back: {:?}",
            cache.health()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let h = cache.health();
    assert_eq!(h.status, HealthStatus::Healthy, "{h:#?}");
    assert!(h.reasons.is_empty());
    assert_eq!(
        cap.events_with(tracing::Level::INFO, "L2 (Redis) is back"),
        1
    );
    // And L2 serves again.
    let url = format!("http://example.com/back/{n}");
    written(&cache, 2).await;
    let (o, _) = support::origin(|_, _| ok("max-age=60", "unused"));
    let fresh = l2(server.url()).clock(clock.clone()).build().unwrap();
    assert_eq!(
        cache_status(&send(&cached(&fresh, o), get(&url)).await),
        L2_HIT
    );
}

/// `Cache::stats` refreshes `Stats::redis` through `L2::info`, which asks
/// the L2 breaker `allow(now)`: once the open period has passed, that takes
/// the breaker's single half-open probe, and the INFO fetch never reports
/// back. The next L2 operation is then refused until a second open period
/// has passed, so a stats poll (an admin endpoint, a metrics scrape) keeps
/// L2 off for longer than configured.
#[tokio::test]
async fn a_stats_call_does_not_take_the_l2_breakers_probe() {
    require_redis();
    let mut server = RedisServer::start();
    let clock = clock();
    let cache = l2_health_cache(&server, &clock);
    let (origin, _) = origin(|_, req| ok("max-age=600", req.uri().path()));
    let svc = cached(&cache, origin);
    send(&svc, get("http://example.com/warm")).await;
    written(&cache, 1).await;
    server.kill();
    let mut i = 0;
    while cache.health().l2_breaker != Some(BreakerState::Open) {
        i += 1;
        assert!(i <= 20, "the breaker did not open");
        send(&svc, get(&format!("http://example.com/down/{i}"))).await;
    }
    server.restart();
    clock.advance(Duration::from_secs(31));
    assert_eq!(cache.health().l2_breaker, Some(BreakerState::HalfOpen));

    let _ = cache.stats(); // e.g. a metrics scrape
    send(&svc, get("http://example.com/probe")).await;
    // The request's L2 operation was the probe: it closed the breaker, or
    // (connection not ready yet) re-opened it. Not still waiting.
    assert_ne!(
        cache.health().l2_breaker,
        Some(BreakerState::HalfOpen),
        "{:?}",
        cache.stats()
    );
}

// ---------------------------------------------------------------------------
// Redis INFO in the stats
// ---------------------------------------------------------------------------

#[tokio::test]
async fn stats_report_redis_memory_and_keys() {
    require_redis();
    let server = RedisServer::start();
    let clock = clock();
    let cache = l2(server.url()).clock(clock.clone()).build().unwrap();
    let (origin, _) = origin(|_, req| ok("max-age=600", req.uri().path()));
    let svc = cached(&cache, origin);
    for i in 0..3 {
        send(&svc, get(&format!("http://example.com/k{i}"))).await;
    }
    written(&cache, 3).await;

    // Fetched in the background, at most every 10 s of the cache's clock
    // (the waits above already started fetches: move past them). A fetch
    // still under way lands stamped with the moved clock, perhaps without
    // every key: the loop below moves the clock on again, for a new one.
    clock.advance(Duration::from_secs(11));
    let deadline = Instant::now() + Duration::from_secs(10);
    let info = loop {
        match cache.stats().redis {
            // The 3 entries and the invalidation log (`{ns}:inv`).
            Some(info) if info.fetched_at_ms == clock.now_millis() && info.keys == 4 => break info,
            Some(info) if info.fetched_at_ms == clock.now_millis() => {
                clock.advance(Duration::from_secs(11))
            }
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no INFO with the 4 keys: {:?}",
            cache.stats().redis
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(info.used_memory > 0, "{info:?}");
    assert_eq!(info.maxmemory, 0, "{info:?}");
    assert_eq!(info.nodes, 1);
}
