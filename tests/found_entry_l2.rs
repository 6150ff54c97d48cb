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
use tower_tiered_cache::Cache;

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
