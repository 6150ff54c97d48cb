//! An entry found in L2 because L1 could not hold it (both tiers, the
//! default write-through) behaves as the same entry found in L1: after a
//! 304 to its revalidation the merged entry is stored, and the next request
//! is a hit, not another revalidation with the old validators.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use redis_support::{require_redis, RedisServer};
use support::*;
use tower_tiered_cache::{Cache, ManualClock};

#[tokio::test]
async fn a_304_to_an_l2_entry_l1_cannot_hold_is_stored_on_both_tiers() {
    require_redis();
    let server = RedisServer::start();
    let clock = clock();
    let cache = Cache::builder()
        .clock(clock.clone())
        .redis(server.url())
        .l2_timeout(secs(2))
        // L1 refuses every entry: each one is found in L2 only.
        .l1_max_entry_bytes(16)
        .build()
        .unwrap();
    let (origin, log) = origin(|n, req| {
        if n > 0 && req.headers().get("if-none-match").is_some() {
            response(304, &[("cache-control", "max-age=10")], "")
        } else {
            response(
                200,
                &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
                "a body larger than sixteen bytes",
            )
        }
    });
    let svc = cached(&cache, origin);
    let wait_writes = || async {
        assert!(eventually(|| cache.l2_pending_writes() == 0).await);
    };

    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 200);
    wait_writes().await;
    assert_eq!(cache.stats().l1_entries, 0);

    clock.advance(secs(15));
    let r = send(&svc, get(URL)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=stale; fwd-status=304; detail=l2"
    );
    assert_eq!(body(r).await, "a body larger than sixteen bytes");
    assert_eq!(log.calls(), 2);
    wait_writes().await;

    // The merged entry went to L2: fresh again, no third origin call.
    clock.advance(secs(5));
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), "tower-tiered-cache; hit; detail=l2");
    assert_eq!(body(r).await, "a body larger than sixteen bytes");
    assert_eq!(log.calls(), 2, "the refreshed entry was stored nowhere");
}

#[tokio::test]
async fn a_no_cache_request_sends_the_validators_of_an_l2_entry() {
    require_redis();
    let server = RedisServer::start();
    let clock = clock();
    let cache = Cache::builder()
        .clock(clock.clone())
        .redis(server.url())
        .l2_timeout(secs(2))
        .l1_max_entry_bytes(16)
        .build()
        .unwrap();
    let (origin, log) = origin(|_, req| {
        if req.headers().get("if-none-match").map(|v| v.as_bytes()) == Some(b"\"v1\"") {
            response(304, &[("cache-control", "max-age=60")], "")
        } else {
            response(
                200,
                &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
                "a body larger than sixteen bytes",
            )
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    assert!(eventually(|| cache.l2_pending_writes() == 0).await);
    let r = send(&svc, get_with(URL, &[("cache-control", "no-cache")])).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=request; fwd-status=304; detail=l2",
        "a no-cache request revalidates the L2 entry with its validators"
    );
    assert_eq!(body(r).await, "a body larger than sixteen bytes");
    assert_eq!(log.calls(), 2);
}

/// What the origin below answers: stored fields of every kind (one name
/// twice, an `Age` and a `Cache-Status` of its own, which a hit replaces).
const FIELDS: &[(&str, &str)] = &[
    ("cache-control", "max-age=60"),
    ("etag", "\"v1\""),
    ("x-multi", "a"),
    ("x-multi", "b"),
    ("age", "3"),
    ("cache-status", "upstream; hit"),
    ("content-type", "text/plain"),
];

/// A response's fields, by name, each name's values in order; its
/// `Cache-Status` is left out (it names the tier) but must occur once.
fn fields<B>(resp: &http::Response<B>) -> std::collections::BTreeMap<String, Vec<String>> {
    assert_eq!(resp.headers().get_all("cache-status").iter().count(), 1);
    assert_eq!(resp.headers().get_all("age").iter().count(), 1);
    let mut out = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (n, v) in resp.headers() {
        if n != "cache-status" {
            out.entry(n.to_string())
                .or_default()
                .push(v.to_str().unwrap().to_owned());
        }
    }
    out
}

/// A cache on `server` whose L1 keeps entries up to `l1_entry` bytes.
fn cache_on(server: &RedisServer, clock: &ManualClock, l1_entry: u64) -> Cache {
    Cache::builder()
        .clock(clock.clone())
        .redis(server.url())
        .l2_timeout(secs(2))
        .l1_max_entry_bytes(l1_entry)
        .build()
        .unwrap()
}

/// An L2 hit answers with the fields an L1 hit of the same entry answers
/// with: every stored one (in its order, for one name), `Age` and
/// `Cache-Status` once each. The L2 hit's map is the decoded entry's own
/// (nothing else holds the entry), the L1 hit's a copy of its template.
#[tokio::test]
async fn an_l2_hit_answers_with_the_fields_of_an_l1_hit() {
    require_redis();
    let server = RedisServer::start();
    let clock = clock();
    let holds = cache_on(&server, &clock, 1 << 20);
    let refuses = cache_on(&server, &clock, 16);
    let (origin, log) = origin(|_, _| response(200, FIELDS, "a body larger than sixteen bytes"));
    let from_l1 = cached(&holds, origin.clone());
    send(&from_l1, get(URL)).await;
    assert!(eventually(|| holds.l2_pending_writes() == 0).await);

    clock.advance(secs(2));
    let l1 = send(&from_l1, get(URL)).await;
    assert_eq!(cache_status(&l1), "tower-tiered-cache; hit; detail=l1");
    let l2 = send(&cached(&refuses, origin), get(URL)).await;
    assert_eq!(cache_status(&l2), "tower-tiered-cache; hit; detail=l2");
    assert_eq!(log.calls(), 1);
    let want = fields(&l1);
    assert_eq!(want["age"], ["5"], "the origin's 3 s and 2 s stored");
    assert_eq!(want["x-multi"], ["a", "b"]);
    assert_eq!(fields(&l2), want);
    assert_eq!(body(l2).await, "a body larger than sixteen bytes");
    // Twice: the second read decodes its own map again.
    let again = send(&cached(&refuses, log_less_origin()), get(URL)).await;
    assert_eq!(fields(&again), want);
    assert_eq!(refuses.stats().hits_l2, 2);
}

/// Stores the origin's answer on `server` through a cache of its own, and
/// gives the fields of that cache's L1 hit on it.
async fn stored_by_a_writer(
    server: &RedisServer,
    clock: &ManualClock,
) -> std::collections::BTreeMap<String, Vec<String>> {
    let writer = cache_on(server, clock, 1 << 20);
    let (origin, _) = origin(|_, _| response(200, FIELDS, "a body larger than sixteen bytes"));
    let svc = cached(&writer, origin);
    send(&svc, get(URL)).await;
    assert!(eventually(|| writer.l2_pending_writes() == 0).await);
    let hit = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&hit), "tower-tiered-cache; hit; detail=l1");
    fields(&hit)
}

/// An origin that must not be called.
fn log_less_origin() -> support::Origin {
    origin(|_, _| panic!("the origin was called")).0
}

/// Requests that wait on a flight whose leader reads L2 each get every
/// field, the leader too (the entry is shared with them, so its map is
/// copied, not taken): eight requests, one Redis `GET`.
#[tokio::test]
async fn waiters_on_an_l2_read_each_get_every_field() {
    require_redis();
    let server = RedisServer::start();
    let clock = clock();
    let want = stored_by_a_writer(&server, &clock).await;
    let reader = cache_on(&server, &clock, 16);
    let (origin, log) = origin(|_, _| response(200, FIELDS, "another"));
    let svc = cached(&reader, origin);
    // Connected first (a miss on another key), so only the reads wait.
    send(&svc, get("http://example.com/other")).await;
    assert_eq!(log.calls(), 1);
    let reset = server.cli(&["CONFIG", "RESETSTAT"]);
    assert!(reset.text().contains("OK"), "{reset:?}");
    let paused = server.cli(&["CLIENT", "PAUSE", "1000", "ALL"]);
    assert!(paused.text().contains("OK"), "{paused:?}");
    let mut all = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let svc = svc.clone();
        all.spawn(async move { send(&svc, get(URL)).await });
    }
    while let Some(r) = all.join_next().await {
        let r = r.unwrap();
        assert_eq!(cache_status(&r), "tower-tiered-cache; hit; detail=l2");
        assert_eq!(fields(&r), want);
    }
    assert_eq!(log.calls(), 1);
    let stats = server.cli(&["INFO", "commandstats"]);
    let gets = stats
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_get:calls="))
        .and_then(|l| l.split(',').next())
        .map(|n| n.parse::<u32>().unwrap());
    assert_eq!(
        gets,
        Some(1),
        "one read for eight requests: {}",
        stats.text()
    );
}

/// An entry promoted into L1 by the L2 hit that read it is not the
/// response's to take: the hit's map is a copy, and the next request, an
/// L1 hit, has every field too.
#[tokio::test]
async fn an_entry_promoted_by_its_l2_hit_keeps_its_fields() {
    require_redis();
    let server = RedisServer::start();
    let clock = clock();
    let want = stored_by_a_writer(&server, &clock).await;
    let reader = Cache::builder()
        .clock(clock.clone())
        .redis(server.url())
        .l2_timeout(secs(2))
        .promote_after(1)
        .build()
        .unwrap();
    let svc = cached(&reader, log_less_origin());
    let first = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&first), "tower-tiered-cache; hit; detail=l2");
    assert_eq!(fields(&first), want);
    assert_eq!(reader.stats().l1_entries, 1, "promoted");
    let second = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&second), "tower-tiered-cache; hit; detail=l1");
    assert_eq!(fields(&second), want);
}
