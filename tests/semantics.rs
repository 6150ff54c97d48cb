//! End-to-end HTTP caching semantics through `CacheLayer`: RFC 9111
//! freshness and storage rules, request directives, conditional requests,
//! Vary, invalidation, stale-while-revalidate, stale-if-error, the circuit
//! breaker, coalescing, keys and configuration errors.
//!
//! Time is a `ManualClock` moved by hand; no test sleeps for a TTL.

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
pub(crate) mod redis_support;
mod support;
#[path = "support/tiers.rs"]
pub(crate) mod tiers;

/// The tier configuration this copy of the suite runs on. `semantics_l2.rs`
/// and `semantics_both.rs` include this file as a module and set their own
/// (the suite reads `crate::TIERS`, which is theirs there).
#[allow(dead_code)]
const TIERS: tiers::Tiers = tiers::Tiers::L1;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::{Method, Response};
use tower_tiered_cache::{
    AdaptiveTtl, BreakerState, Cache, CacheBuilder, CacheMode, Clock, ManualClock, Route,
    SetCookiePolicy,
};

use support::*;

/// A builder for the configuration the suite runs on (`crate::TIERS`).
fn builder(clock: &ManualClock) -> CacheBuilder {
    crate::TIERS.builder(clock)
}

/// The `Cache-Status` of a fresh hit, from the tier that holds entries.
fn hit() -> String {
    at_tier("tower-tiered-cache; hit; detail=l1")
}

/// `status` with `detail=l1` naming the tier that holds entries in this
/// configuration (`l2` when L1 holds nothing).
fn at_tier(status: &str) -> String {
    status.replace("detail=l1", &format!("detail={}", crate::TIERS.hit_tier()))
}

/// `support::cached`, remembering the cache so requests wait for its L2
/// writes (`send`).
fn cached<B, E>(cache: &Cache, origin: Origin<B, E>) -> Svc<B, E> {
    crate::tiers::register(cache);
    support::cached(cache, origin)
}

/// `support::send`, after and before which the L2 writes queued so far are
/// waited for: a request finds in L2 what the previous one stored, as it
/// would in L1 (no-op without L2).
fn send<B, E>(
    svc: &Svc<B, E>,
    req: http::Request<()>,
) -> impl std::future::Future<Output = Response<tower_tiered_cache::CacheBody<B>>> + Send + 'static
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Send,
    E: Send + std::fmt::Debug + 'static,
{
    let caches = crate::tiers::registered();
    let fut = support::send(svc, req);
    async move {
        crate::tiers::settle(&caches).await;
        let resp = fut.await;
        crate::tiers::settle(&caches).await;
        resp
    }
}
const MISS_STORED: &str = "tower-tiered-cache; fwd=uri-miss; fwd-status=200; stored";
const HIT_FOR_PASS: &str = "tower-tiered-cache; fwd=uri-miss; detail=hit-for-pass";

// ---------------------------------------------------------------------------
// 1. Miss, then hit
// ---------------------------------------------------------------------------

#[tokio::test]
async fn miss_then_hit() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, _| ok("max-age=60", "hello"));
    let svc = cached(&cache, origin);

    let first = send(&svc, get(URL)).await;
    assert_eq!(first.status(), 200);
    let status = cache_status(&first);
    assert!(
        status.contains("fwd=uri-miss; fwd-status=200; stored"),
        "{status}"
    );
    assert_eq!(status, MISS_STORED);
    assert_eq!(age(&first), Some(0));
    assert_eq!(body(first).await, "hello");

    clock.advance(secs(5));
    let second = send(&svc, get(URL)).await;
    assert_eq!(second.status(), 200);
    assert_eq!(cache_status(&second), hit());
    assert_eq!(age(&second), Some(5));
    assert_eq!(
        header(&second, "cache-control").as_deref(),
        Some("max-age=60")
    );
    assert_eq!(header(&second, "content-length").as_deref(), Some("5"));
    assert_eq!(body(second).await, "hello");

    assert_eq!(log.calls(), 1);
    let st = cache.stats();
    assert_eq!(st.requests, 2);
    assert_eq!(st.hits, 1);
    // Tier-specific figures: with L2 only, the hit is an L2 hit and L1
    // holds nothing (by construction of that configuration).
    if crate::TIERS.l1_holds() {
        assert_eq!(st.hits_l1, 1);
        assert_eq!(st.l1_entries, 1);
        assert!(st.l1_bytes > 0);
    } else {
        assert_eq!(st.hits_l2, 1);
        assert_eq!(st.l1_entries, 0);
    }
    assert_eq!(st.misses, 1);
    assert_eq!(st.stores, 1);
    assert_eq!(st.upstream_calls, 1);
    assert_eq!(st.in_flight, 0);
    assert!((st.hit_ratio - 0.5).abs() < 1e-9);
}

#[tokio::test]
async fn body_in_many_chunks_under_the_cap_is_stored_intact() {
    let clock = clock();
    let cache = builder(&clock).max_body_bytes(1024).build().unwrap();
    let (origin, log) = origin_fn(|_, _| async {
        Ok::<_, Infallible>(with_header(
            Response::new(Chunked::new(64, 16)),
            "cache-control",
            "max-age=60",
        ))
    });
    let svc = cached(&cache, origin);
    let first = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&first), MISS_STORED);
    assert_eq!(header(&first, "content-length").as_deref(), Some("1024"));
    assert_eq!(body(first).await, Chunked::expected(64, 16));
    let second = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&second), hit());
    assert_eq!(body(second).await, Chunked::expected(64, 16));
    assert_eq!(log.calls(), 1);
    assert_eq!(cache.stats().too_large, 0);
}

// ---------------------------------------------------------------------------
// 2. Coalescing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn concurrent_cold_misses_make_one_origin_call() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    let (origin, log) = origin_fn(move |_, _| {
        let g = g.clone();
        async move {
            g.pass().await;
            Ok::<_, Infallible>(ok("max-age=60", "shared answer"))
        }
    });
    let svc = cached(&cache, origin);

    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let r = send(&svc, get(URL)).await;
                (cache_status(&r), body(r).await)
            })
        })
        .collect();
    assert!(eventually(|| log.calls() == 1).await);
    settle().await;
    assert_eq!(log.calls(), 1);
    assert_eq!(cache.stats().in_flight, 1);
    gate.open();

    let mut collapsed = 0;
    let mut stored = 0;
    for t in tasks {
        let (status, b) = t.await.unwrap();
        assert_eq!(b, "shared answer");
        if status == at_tier("tower-tiered-cache; fwd=uri-miss; collapsed; detail=l1") {
            collapsed += 1;
        } else {
            assert_eq!(status, MISS_STORED);
            stored += 1;
        }
    }
    assert_eq!((collapsed, stored), (199, 1));
    assert_eq!(log.calls(), 1);
    let st = cache.stats();
    assert_eq!(st.coalesced, 199);
    assert_eq!(st.misses, 1);
    assert_eq!(st.stores, 1);
    assert_eq!(st.upstream_calls, 1);
    assert_eq!(st.requests, 200);
    assert_eq!(st.in_flight, 0);
}

/// A miss decided before another request's flight stored the answer and
/// ended (the gap between `call` and the first poll, wide under load) is
/// answered from that answer, not with a second origin call: an L1 hit (it
/// found the entry in L1 and reached no origin), not a collapsed miss.
#[tokio::test]
async fn a_miss_joining_after_a_finished_flight_uses_its_answer() {
    use tower::{Service, ServiceExt};
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, _| ok("max-age=60", &format!("answer {n}")));
    let svc = cached(&cache, origin);

    // Decided (an L1 miss) but not yet polled.
    let mut late = svc.clone();
    let late = late.ready().await.unwrap().call(get(URL));
    // Meanwhile another request misses, calls, stores, and its flight ends.
    let first = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&first), MISS_STORED);
    assert_eq!(body(first).await, "answer 0");

    let r = late.await.unwrap();
    // The late request finds the flight's answer in a cache tier after its
    // own L1 miss: a hit of that tier (L1, or with L2 only its own L2 read),
    // and no second origin call (asserted below).
    let expected = if crate::TIERS.l1_holds() {
        "tower-tiered-cache; hit; detail=l1"
    } else {
        "tower-tiered-cache; hit; detail=l2"
    };
    assert_eq!(cache_status(&r), expected);
    assert_eq!(body(r).await, "answer 0");
    assert_eq!(log.calls(), 1);
    let st = cache.stats();
    assert_eq!(
        (st.misses, st.coalesced, st.hits, st.upstream_calls),
        (1, 0, 1, 1)
    );
    assert_eq!(st.requests, 2);
    assert!((st.hit_ratio - 0.5).abs() < 1e-9, "{}", st.hit_ratio);
}

// ---------------------------------------------------------------------------
// 3. Freshness sources
// ---------------------------------------------------------------------------

#[tokio::test]
async fn s_maxage_beats_max_age_in_shared_mode_only() {
    for (mode, hit_at_50) in [(CacheMode::Shared, true), (CacheMode::Private, false)] {
        let clock = clock();
        let cache = builder(&clock).mode(mode).build().unwrap();
        let (origin, log) = origin(|_, _| ok("max-age=10, s-maxage=100", "x"));
        let svc = cached(&cache, origin);
        assert_eq!(cache_status(&send(&svc, get(URL)).await), MISS_STORED);
        clock.advance(secs(50));
        let r = send(&svc, get(URL)).await;
        if hit_at_50 {
            assert_eq!(cache_status(&r), hit(), "{mode:?}");
            assert_eq!(age(&r), Some(50));
            assert_eq!(log.calls(), 1, "{mode:?}");
            // s-maxage ends at 100 s.
            clock.advance(secs(51));
            let r = send(&svc, get(URL)).await;
            assert_eq!(cache_status(&r), MISS_STORED);
            assert_eq!(log.calls(), 2);
        } else {
            assert_eq!(cache_status(&r), MISS_STORED, "{mode:?}");
            assert_eq!(log.calls(), 2, "{mode:?}");
        }
    }
}

#[tokio::test]
async fn max_age_bounds_freshness() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, _| ok("max-age=60", &format!("v{}", n + 1)));
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(59));
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(age(&r), Some(59));
    assert_eq!(body(r).await, "v1");
    clock.advance(secs(2));
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(age(&r), Some(0));
    assert_eq!(body(r).await, "v2");
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn expires_is_relative_to_date() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    // The origin's Date is 10 s in the past and Expires 30 s after it: the
    // response arrives 10 s old with 20 s of freshness left.
    let date = http_date(T0 - 10_000);
    let expires = http_date(T0 + 20_000);
    let (origin, log) =
        origin(move |_, _| response(200, &[("date", &date), ("expires", &expires)], "x"));
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(age(&r), Some(10));
    clock.advance(secs(19));
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(age(&r), Some(29));
    clock.advance(secs(2));
    let r = send(&svc, get(URL)).await;
    assert!(
        cache_status(&r).contains("fwd-status=200"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(log.calls(), 2);
}

/// `millis` in RFC 850's obsolete form (`Tuesday, 14-Nov-23 22:13:20 GMT`).
fn rfc850_date(millis: u64) -> String {
    let imf = http_date(millis); // `Tue, 14 Nov 2023 22:13:20 GMT`
    let day = match &imf[..3] {
        "Mon" => "Monday",
        "Tue" => "Tuesday",
        "Wed" => "Wednesday",
        "Thu" => "Thursday",
        "Fri" => "Friday",
        "Sat" => "Saturday",
        _ => "Sunday",
    };
    format!(
        "{day}, {}-{}-{} {}",
        &imf[5..7],
        &imf[8..11],
        &imf[14..16],
        &imf[17..]
    )
}

/// `millis` in C's `asctime()` form (`Tue Nov 14 22:13:20 2023`).
fn asctime_date(millis: u64) -> String {
    let imf = http_date(millis);
    let day = imf[5..7].trim_start_matches('0');
    format!(
        "{} {} {day:>2} {} {}",
        &imf[..3],
        &imf[8..11],
        &imf[17..25],
        &imf[12..16]
    )
}

#[tokio::test]
async fn rfc9110_5_6_7_obsolete_date_forms_set_freshness() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    // Date 10 s in the past (RFC 850 form), Expires 20 s ahead (asctime
    // form, in lower case): 30 s of lifetime, 10 s of it spent.
    let date = rfc850_date(T0 - 10_000);
    let expires = asctime_date(T0 + 20_000).to_ascii_lowercase();
    let (origin, log) =
        origin(move |_, _| response(200, &[("date", &date), ("expires", &expires)], "x"));
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(age(&r), Some(10));
    clock.advance(secs(19));
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), hit());
    clock.advance(secs(2));
    let r = send(&svc, get(URL)).await;
    assert!(
        cache_status(&r).contains("fwd-status=200"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn rfc9111_5_1_a_list_valued_age_uses_its_first_member() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, _log) = origin(|_, _| {
        response(
            200,
            &[("cache-control", "max-age=60"), ("age", "50, 0")],
            "x",
        )
    });
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(age(&r), Some(50));
    clock.advance(secs(11));
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED, "60 s of lifetime, 61 s old");
}

#[tokio::test]
async fn rfc9111_4_3_2_if_modified_since_without_last_modified_uses_date() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let date = http_date(T0 - 10_000);
    let (origin, log) = origin(move |_, _| {
        response(
            200,
            &[("cache-control", "max-age=60"), ("date", &date)],
            "x",
        )
    });
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    // Not modified since the response's Date: 304 from the cache.
    for ims in [http_date(T0 - 10_000), rfc850_date(T0)] {
        let r = send(&svc, get_with(URL, &[("if-modified-since", &ims)])).await;
        assert_eq!(r.status(), 304, "{ims}");
        assert_eq!(cache_status(&r), hit());
    }
    // The client's copy is older than the response: the whole response.
    let older = http_date(T0 - 20_000);
    let r = send(&svc, get_with(URL, &[("if-modified-since", &older)])).await;
    assert_eq!(r.status(), 200);
    assert_eq!(log.calls(), 1);
}

#[tokio::test]
async fn rfc9111_3_a_server_error_with_explicit_freshness_is_stored() {
    for store in [true, false] {
        let clock = clock();
        let cache = builder(&clock).store_server_errors(store).build().unwrap();
        let (origin, log) = origin(|_, req| match req.uri().path() {
            "/fresh" => response(503, &[("cache-control", "max-age=30")], "down"),
            _ => response(503, &[], "down"),
        });
        let svc = cached(&cache, origin);
        let fresh = "http://example.com/fresh";
        let r = send(&svc, get(fresh)).await;
        assert_eq!(r.status(), 503);
        let r = send(&svc, get(fresh)).await;
        assert_eq!(r.status(), 503);
        if store {
            assert_eq!(cache_status(&r), hit());
            assert_eq!(body(r).await, "down");
            assert_eq!(log.calls(), 1);
        } else {
            assert!(
                cache_status(&r).contains("fwd-status=503"),
                "{}",
                cache_status(&r)
            );
            assert_eq!(log.calls(), 2);
        }
        // Without explicit freshness a 5xx is never stored.
        let before = log.calls();
        send(&svc, get(URL)).await;
        let r = send(&svc, get(URL)).await;
        assert!(
            cache_status(&r).contains("fwd-status=503"),
            "{}",
            cache_status(&r)
        );
        assert_eq!(log.calls(), before + 2);
    }
}

#[tokio::test]
async fn age_from_the_origin_counts_against_freshness() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) =
        origin(|_, _| response(200, &[("cache-control", "max-age=60"), ("age", "50")], "x"));
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(age(&r), Some(50));
    clock.advance(secs(9));
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(age(&r), Some(59));
    // The stored `Age` is replaced, not repeated, in the hit's headers.
    assert_eq!(r.headers().get_all("age").iter().count(), 1);
    assert_eq!(r.headers().get_all("cache-status").iter().count(), 1);
    clock.advance(secs(2));
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn heuristic_freshness_is_ten_percent_of_last_modified_age() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    // Modified 1000 s before the response (no Date: the response time
    // counts): 100 s of heuristic freshness.
    let lm = http_date(T0 - 1_000_000);
    let lm2 = lm.clone();
    let (origin, log) = origin(move |_, _| response(200, &[("last-modified", &lm2)], "x"));
    let svc = cached(&cache, origin);
    assert_eq!(cache_status(&send(&svc, get(URL)).await), MISS_STORED);
    clock.advance(secs(99));
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(age(&r), Some(99));
    assert_eq!(log.calls(), 1);
    clock.advance(secs(2));
    let r = send(&svc, get(URL)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=stale; fwd-status=200; stored"
    );
    assert_eq!(log.calls(), 2);
    // Stale with a validator: the origin was asked conditionally.
    assert_eq!(log.last().header("if-modified-since"), Some(lm.as_str()));
}

#[tokio::test]
async fn no_freshness_information_is_not_stored() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, _| ok("", &format!("v{}", n + 1)));
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=no-freshness"
    );
    assert_eq!(body(r).await, "v1");
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), HIT_FOR_PASS);
    assert_eq!(body(r).await, "v2");
    assert_eq!(log.calls(), 2);
    let st = cache.stats();
    assert_eq!(st.stores, 0);
    assert_eq!(st.l1_entries, 0);
}

#[tokio::test]
async fn forced_route_ttl_caches_headerless_responses() {
    let clock = clock();
    let cache = builder(&clock)
        .route(Route::prefix("/forced").ttl(secs(30)).force())
        .route(Route::prefix("/unforced").ttl(secs(30)))
        .build()
        .unwrap();
    let (origin, log) = origin(|n, _| ok("", &format!("v{}", n + 1)));
    let svc = cached(&cache, origin);
    let forced = "http://example.com/forced/item";
    assert_eq!(cache_status(&send(&svc, get(forced)).await), MISS_STORED);
    clock.advance(secs(29));
    let r = send(&svc, get(forced)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(body(r).await, "v1");
    clock.advance(secs(2));
    let r = send(&svc, get(forced)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(body(r).await, "v2");
    assert_eq!(log.calls(), 2);
    // Without `force` a route TTL does not invent freshness.
    let unforced = "http://example.com/unforced/item";
    let r = send(&svc, get(unforced)).await;
    assert!(
        cache_status(&r).contains("detail=no-freshness"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(log.calls(), 3);
}

#[tokio::test]
async fn route_ttl_overrides_max_age() {
    let clock = clock();
    let cache = builder(&clock)
        .route(Route::prefix("/short").ttl(secs(5)))
        .build()
        .unwrap();
    let (origin, log) = origin(|_, _| ok("max-age=3600", "x"));
    let svc = cached(&cache, origin);
    let u = "http://example.com/short/a";
    send(&svc, get(u)).await;
    clock.advance(secs(4));
    assert_eq!(cache_status(&send(&svc, get(u)).await), hit());
    clock.advance(secs(2));
    assert_eq!(cache_status(&send(&svc, get(u)).await), MISS_STORED);
    assert_eq!(log.calls(), 2);
    // Other paths keep the origin's max-age.
    send(&svc, get(URL)).await;
    clock.advance(secs(600));
    assert_eq!(cache_status(&send(&svc, get(URL)).await), hit());
    assert_eq!(log.calls(), 3);
}

#[tokio::test]
async fn bypass_route_is_never_cached() {
    let clock = clock();
    let cache = builder(&clock)
        .route(Route::prefix("/live").bypass())
        .build()
        .unwrap();
    let (origin, log) = origin(|_, _| ok("max-age=60", "x"));
    let svc = cached(&cache, origin);
    for _ in 0..2 {
        let r = send(&svc, get("http://example.com/live/score")).await;
        assert_eq!(cache_status(&r), "tower-tiered-cache; fwd=bypass");
        assert_eq!(body(r).await, "x");
    }
    assert_eq!(log.calls(), 2);
    let st = cache.stats();
    assert_eq!(st.passes, 2);
    assert_eq!(st.stores, 0);
}

// ---------------------------------------------------------------------------
// 4. What is not stored; no-cache responses
// ---------------------------------------------------------------------------

#[tokio::test]
async fn no_store_response_is_not_stored() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, _| ok("no-store, max-age=60", "x"));
    let svc = cached(&cache, origin);
    const NO_STORE: &str = "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=no-store";
    // The origin's `no-store` marks the URL hit-for-pass: the next
    // requests go to the origin each on its own (nothing could be shared)
    // until the mark expires, and the answer is judged again.
    for (i, want) in [NO_STORE, HIT_FOR_PASS, HIT_FOR_PASS]
        .into_iter()
        .enumerate()
    {
        let r = send(&svc, get(URL)).await;
        assert_eq!(cache_status(&r), want, "request {i}");
        assert_eq!(body(r).await, "x");
    }
    clock.advance(tower_tiered_cache::builder::DEFAULT_HIT_FOR_PASS + secs(1));
    assert_eq!(cache_status(&send(&svc, get(URL)).await), NO_STORE);
    assert_eq!(log.calls(), 4);
    assert_eq!(cache.stats().stores, 0);
}

#[tokio::test]
async fn a_request_no_store_does_not_mark_its_url_hit_for_pass() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, _| ok("max-age=60", "x"));
    let svc = cached(&cache, origin);
    let r = send(&svc, get_with(URL, &[("cache-control", "no-store")])).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=no-store"
    );
    // The next request without it is a plain miss that stores, then a hit.
    assert_eq!(cache_status(&send(&svc, get(URL)).await), MISS_STORED);
    assert_eq!(cache_status(&send(&svc, get(URL)).await), hit());
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn private_response_is_stored_only_by_a_private_cache() {
    let clock = clock();
    let shared = builder(&clock).build().unwrap();
    let (origin_a, log_a) = origin(|_, _| ok("private, max-age=60", "mine"));
    let svc = cached(&shared, origin_a);
    let r = send(&svc, get(URL)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=private"
    );
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), HIT_FOR_PASS);
    assert_eq!(body(r).await, "mine");
    assert_eq!(log_a.calls(), 2);
    assert_eq!(shared.stats().stores, 0);

    let private = builder(&clock).mode(CacheMode::Private).build().unwrap();
    let (origin_b, log_b) = origin(|_, _| ok("private, max-age=60", "mine"));
    let svc = cached(&private, origin_b);
    assert_eq!(cache_status(&send(&svc, get(URL)).await), MISS_STORED);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(body(r).await, "mine");
    assert_eq!(log_b.calls(), 1);
}

#[tokio::test]
async fn vary_star_is_not_stored() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) =
        origin(|_, _| response(200, &[("cache-control", "max-age=60"), ("vary", "*")], "x"));
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=vary-star"
    );
    send(&svc, get(URL)).await;
    assert_eq!(log.calls(), 2);
    assert_eq!(cache.stats().stores, 0);
}

#[tokio::test]
async fn no_cache_response_is_stored_but_revalidated_on_every_use() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, req| {
        if req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"")
        {
            response(
                304,
                &[("cache-control", "no-cache"), ("etag", "\"v1\"")],
                "",
            )
        } else {
            response(
                200,
                &[("cache-control", "no-cache"), ("etag", "\"v1\"")],
                "stored body",
            )
        }
    });
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(body(r).await, "stored body");
    assert_eq!(log.request(0).header("if-none-match"), None);

    for i in 1..=2 {
        let r = send(&svc, get(URL)).await;
        assert_eq!(r.status(), 200);
        let status = cache_status(&r);
        assert!(status.contains("fwd-status=304"), "{status}");
        assert_eq!(
            status,
            at_tier("tower-tiered-cache; fwd=stale; fwd-status=304; detail=l1")
        );
        assert_eq!(body(r).await, "stored body");
        assert_eq!(log.calls(), i + 1);
        assert_eq!(log.last().header("if-none-match"), Some("\"v1\""));
    }
    let st = cache.stats();
    assert_eq!(st.revalidated, 2);
    assert_eq!(st.hits, 0);
    assert_eq!(st.misses, 1);
}

// ---------------------------------------------------------------------------
// 5. Request directives
// ---------------------------------------------------------------------------

#[tokio::test]
async fn request_no_cache_refetches_without_validators() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, _| ok("max-age=60", &format!("v{}", n + 1)));
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    let r = send(&svc, get_with(URL, &[("cache-control", "no-cache")])).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=request; fwd-status=200; stored"
    );
    assert_eq!(body(r).await, "v2");
    assert_eq!(log.calls(), 2);
    assert_eq!(log.last().header("if-none-match"), None);
    // The refetched response replaced the entry.
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(body(r).await, "v2");
}

#[tokio::test]
async fn request_no_cache_revalidates_with_validators() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, req| {
        if req.headers().contains_key("if-none-match") {
            response(
                304,
                &[("cache-control", "max-age=60"), ("etag", "\"e\"")],
                "",
            )
        } else {
            response(
                200,
                &[("cache-control", "max-age=60"), ("etag", "\"e\"")],
                &format!("v{}", n + 1),
            )
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    let r = send(&svc, get_with(URL, &[("cache-control", "no-cache")])).await;
    assert_eq!(
        cache_status(&r),
        at_tier("tower-tiered-cache; fwd=request; fwd-status=304; detail=l1")
    );
    assert_eq!(body(r).await, "v1");
    assert_eq!(log.calls(), 2);
    assert_eq!(log.last().header("if-none-match"), Some("\"e\""));
    assert_eq!(cache.stats().revalidated, 1);
}

#[tokio::test]
async fn request_max_age_limits_the_acceptable_age() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, _| ok("max-age=60", &format!("v{}", n + 1)));
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(1));
    let r = send(&svc, get_with(URL, &[("cache-control", "max-age=5")])).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(log.calls(), 1);
    let r = send(&svc, get_with(URL, &[("cache-control", "max-age=0")])).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=request; fwd-status=200; stored"
    );
    assert_eq!(body(r).await, "v2");
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn request_min_fresh_requires_remaining_freshness() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, _| ok("max-age=60", &format!("v{}", n + 1)));
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(50)); // 10 s of freshness left
    let r = send(&svc, get_with(URL, &[("cache-control", "min-fresh=5")])).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(log.calls(), 1);
    let r = send(&svc, get_with(URL, &[("cache-control", "min-fresh=20")])).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=request; fwd-status=200; stored"
    );
    assert_eq!(body(r).await, "v2");
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn request_max_stale_serves_past_stale_until() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, req| {
        if req.headers().contains_key("if-none-match") {
            response(
                304,
                &[
                    ("cache-control", "max-age=10, stale-while-revalidate=5"),
                    ("etag", "\"e\""),
                ],
                "",
            )
        } else {
            response(
                200,
                &[
                    ("cache-control", "max-age=10, stale-while-revalidate=5"),
                    ("etag", "\"e\""),
                ],
                &format!("v{}", n + 1),
            )
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    // Fresh until 10 s, stale-while-revalidate until 15 s; at 20 s only a
    // client accepting 10 s of staleness gets the stored response at once.
    clock.advance(secs(20));
    let r = send(&svc, get_with(URL, &[("cache-control", "max-stale=15")])).await;
    assert_eq!(
        cache_status(&r),
        at_tier("tower-tiered-cache; hit; ttl=-10; detail=l1")
    );
    assert_eq!(age(&r), Some(20));
    assert_eq!(body(r).await, "v1");
    // It still refreshes in the background, conditionally.
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);
    assert_eq!(log.calls(), 2);
    assert_eq!(log.last().header("if-none-match"), Some("\"e\""));
    // Fresh again until 30 s; at 40 s max-stale=5 is not enough: revalidate.
    clock.advance(secs(20));
    let r = send(&svc, get_with(URL, &[("cache-control", "max-stale=5")])).await;
    assert_eq!(
        cache_status(&r),
        at_tier("tower-tiered-cache; fwd=stale; fwd-status=304; detail=l1")
    );
    assert_eq!(body(r).await, "v1");
    assert_eq!(log.calls(), 3);
    assert_eq!(cache.stats().stale, 1);
}

#[tokio::test]
async fn only_if_cached() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, _| ok("max-age=60", "x"));
    let svc = cached(&cache, origin);
    let oic = [("cache-control", "only-if-cached")];
    let r = send(&svc, get_with(URL, &oic)).await;
    assert_eq!(r.status(), 504);
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; detail=only-if-cached"
    );
    assert_eq!(body(r).await, "");
    assert_eq!(log.calls(), 0);
    assert_eq!(cache.stats().unavailable, 1);

    send(&svc, get(URL)).await;
    let r = send(&svc, get_with(URL, &oic)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(cache_status(&r), hit());
    assert_eq!(body(r).await, "x");
    assert_eq!(log.calls(), 1);
}

#[tokio::test]
async fn pragma_no_cache_forces_a_refetch() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, _| ok("max-age=60", &format!("v{}", n + 1)));
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    let r = send(&svc, get_with(URL, &[("pragma", "no-cache")])).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=request; fwd-status=200; stored"
    );
    assert_eq!(body(r).await, "v2");
    assert_eq!(log.calls(), 2);
    // Cache-Control takes precedence over Pragma (RFC 9111 §5.4).
    let r = send(
        &svc,
        get_with(
            URL,
            &[("pragma", "no-cache"), ("cache-control", "max-stale=1")],
        ),
    )
    .await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(log.calls(), 2);
}

// ---------------------------------------------------------------------------
// 6. Stale-while-revalidate
// ---------------------------------------------------------------------------

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let refresh_gate = Gate::new();
    let late_gate = Gate::new();
    let (rg, lg) = (refresh_gate.clone(), late_gate.clone());
    let (origin, log) = origin_fn(move |n, _| {
        let (rg, lg) = (rg.clone(), lg.clone());
        async move {
            match n {
                0 => {}
                1 => rg.pass().await,
                _ => lg.pass().await,
            }
            Ok::<_, Infallible>(ok(
                "max-age=10, stale-while-revalidate=60",
                &format!("v{}", n + 1),
            ))
        }
    });
    let svc = cached(&cache, origin);
    assert_eq!(body(send(&svc, get(URL)).await).await, "v1");

    clock.advance(secs(15));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let r = send(&svc, get(URL)).await;
                (cache_status(&r), age(&r), body(r).await)
            })
        })
        .collect();
    for t in tasks {
        let (status, age, b) = tokio::time::timeout(Duration::from_secs(2), t)
            .await
            .expect("stale answers do not wait for the origin")
            .unwrap();
        assert_eq!(
            status,
            at_tier("tower-tiered-cache; hit; ttl=-5; detail=l1")
        );
        assert_eq!(age, Some(15));
        assert_eq!(b, "v1");
    }
    // The one refresh is still waiting at the origin.
    assert!(eventually(|| log.calls() == 2).await);
    settle().await;
    assert_eq!(log.calls(), 2);
    let st = cache.stats();
    assert_eq!(st.stale, 20);
    assert_eq!(st.refresh_ok, 0);
    assert_eq!(st.refresh_skipped, 0);
    assert_eq!(st.in_flight, 1);

    refresh_gate.open();
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(age(&r), Some(0));
    assert_eq!(body(r).await, "v2");
    assert_eq!(log.calls(), 2);

    // Past stale_until (refreshed at 15 s: fresh to 25 s, stale to 85 s),
    // the request waits for the origin.
    clock.advance(secs(100));
    let svc2 = svc.clone();
    let late = tokio::spawn(async move {
        let r = send(&svc2, get(URL)).await;
        (cache_status(&r), body(r).await)
    });
    assert!(eventually(|| log.calls() == 3).await);
    settle().await;
    assert!(!late.is_finished(), "served without waiting for the origin");
    late_gate.open();
    let (status, b) = late.await.unwrap();
    assert_eq!(status, MISS_STORED);
    assert_eq!(b, "v3");
    assert_eq!(cache.stats().stale, 20);
}

#[tokio::test]
async fn stale_while_revalidate_from_builder_default_and_route() {
    let clock = clock();
    let cache = builder(&clock)
        .default_stale_while_revalidate(secs(30))
        .route(Route::prefix("/odds").stale_while_revalidate(secs(5)))
        .build()
        .unwrap();
    let (origin, log) = origin(|n, _| ok("max-age=10", &format!("v{}", n + 1)));
    let svc = cached(&cache, origin);
    let odds = "http://example.com/odds/1";
    send(&svc, get(URL)).await;
    send(&svc, get(odds)).await;
    clock.advance(secs(20));
    // The default window (30 s) still covers URL; the route's (5 s) does not cover odds.
    let r = send(&svc, get(URL)).await;
    assert_eq!(
        cache_status(&r),
        at_tier("tower-tiered-cache; hit; ttl=-10; detail=l1")
    );
    let r = send(&svc, get(odds)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);
    assert_eq!(log.calls(), 4);
}

// ---------------------------------------------------------------------------
// 7. Failed refresh
// ---------------------------------------------------------------------------

#[tokio::test]
async fn failed_refresh_keeps_stale_entry_and_extends_its_window() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, _| {
        if n == 0 {
            ok("max-age=10, stale-while-revalidate=60", "v1")
        } else {
            response(500, &[], "boom")
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;

    clock.advance(secs(15));
    let r = send(&svc, get(URL)).await;
    assert_eq!(
        cache_status(&r),
        at_tier("tower-tiered-cache; hit; ttl=-5; detail=l1")
    );
    assert_eq!(body(r).await, "v1");
    assert!(eventually(|| cache.stats().refresh_failed == 1).await);
    assert_eq!(log.calls(), 2);
    assert_eq!(cache.stats().refresh_ok, 0);

    // The stale window ended at 70 s; the failure extended it by half the
    // 10 s TTL, to 75 s.
    clock.advance(secs(57)); // 72 s
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        cache_status(&r),
        at_tier("tower-tiered-cache; hit; ttl=-62; detail=l1")
    );
    assert_eq!(body(r).await, "v1");
    // That refresh fails too and extends again, from 75 s to 80 s.
    assert!(eventually(|| cache.stats().refresh_failed == 2).await);
    assert_eq!(log.calls(), 3);

    clock.advance(secs(9)); // 81 s: past every extension
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 500);
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=uri-miss; fwd-status=500"
    );
    assert_eq!(body(r).await, "boom");
    let st = cache.stats();
    assert_eq!(st.stale, 2);
    assert_eq!(st.upstream_errors, 3);
}

// ---------------------------------------------------------------------------
// 8. Circuit breaker
// ---------------------------------------------------------------------------

#[tokio::test]
async fn circuit_breaker_opens_skips_refreshes_and_lets_a_probe_through() {
    let clock = clock();
    let cache = builder(&clock)
        .circuit_breaker(2, secs(30))
        .build()
        .unwrap();
    let failing = Arc::new(AtomicBool::new(false));
    let f = failing.clone();
    let (origin, log) = origin(move |n, _| {
        if f.load(Ordering::SeqCst) {
            response(503, &[], "down")
        } else {
            ok(
                "max-age=10, stale-while-revalidate=600",
                &format!("v{}", n + 1),
            )
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    failing.store(true, Ordering::SeqCst);
    clock.advance(secs(15));

    send(&svc, get(URL)).await;
    assert!(eventually(|| cache.stats().refresh_failed == 1).await);
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
    send(&svc, get(URL)).await;
    assert!(eventually(|| cache.stats().refresh_failed == 2).await);
    assert_eq!(cache.breaker_state(), BreakerState::Open);
    let st = cache.stats();
    assert_eq!(st.breaker, BreakerState::Open);
    assert_eq!(st.breaker_opens, 1);
    assert_eq!(log.calls(), 3);

    // While open, stale answers go on and no refresh reaches the origin.
    for _ in 0..3 {
        let r = send(&svc, get(URL)).await;
        assert_eq!(
            cache_status(&r),
            at_tier("tower-tiered-cache; hit; ttl=-5; detail=l1")
        );
        assert_eq!(body(r).await, "v1");
    }
    settle().await;
    assert_eq!(cache.stats().refresh_skipped, 3);
    assert_eq!(log.calls(), 3);

    // After the open period, one probe goes through and closes it.
    clock.advance(secs(30));
    assert_eq!(cache.breaker_state(), BreakerState::HalfOpen);
    failing.store(false, Ordering::SeqCst);
    let r = send(&svc, get(URL)).await;
    assert_eq!(body(r).await, "v1");
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);
    assert_eq!(log.calls(), 4);
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(body(r).await, "v4");
}

#[tokio::test]
async fn open_breaker_answers_from_stale_if_error_without_calling_the_origin() {
    let clock = clock();
    let cache = builder(&clock)
        .circuit_breaker(1, secs(30))
        .build()
        .unwrap();
    let (origin, log) = origin(|n, _| {
        if n == 0 {
            ok("max-age=1, stale-if-error=300", "v1")
        } else {
            response(503, &[], "down")
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(2));
    let r = send(&svc, get(URL)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=stale; fwd-status=503; ttl=-1; detail=stale-if-error"
    );
    assert_eq!(body(r).await, "v1");
    assert_eq!(log.calls(), 2);
    assert_eq!(cache.breaker_state(), BreakerState::Open);

    clock.advance(secs(1));
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; hit; ttl=-2; detail=stale-if-error"
    );
    assert_eq!(body(r).await, "v1");
    assert_eq!(log.calls(), 2, "the open breaker spared the origin");
    assert_eq!(cache.stats().stale_if_error, 2);
}

// ---------------------------------------------------------------------------
// 9. Stale-if-error
// ---------------------------------------------------------------------------

#[tokio::test]
async fn stale_if_error_serves_stale_when_the_origin_errs() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin_fn(|n, _| async move {
        if n == 0 {
            Ok(ok("max-age=1, stale-if-error=300", "v1"))
        } else {
            Err(OriginError("boom"))
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(2));
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=stale; ttl=-1; detail=stale-if-error"
    );
    assert_eq!(age(&r), Some(2));
    assert_eq!(body(r).await, "v1");
    assert_eq!(log.calls(), 2);
    let st = cache.stats();
    assert_eq!(st.stale_if_error, 1);
    assert_eq!(st.stale, 1);
    assert_eq!(st.upstream_errors, 1);

    // Past the stale-if-error window the error passes through.
    clock.advance(secs(400));
    let err = call(&svc, get(URL)).await.unwrap_err();
    assert_eq!(err, OriginError("boom"));
    assert_eq!(cache.stats().stale_if_error, 1);
}

#[tokio::test]
async fn stale_if_error_serves_stale_on_a_5xx() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, _| {
        if n == 0 {
            ok("max-age=1, stale-if-error=300", "v1")
        } else {
            response(503, &[], "down")
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(2));
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=stale; fwd-status=503; ttl=-1; detail=stale-if-error"
    );
    assert_eq!(body(r).await, "v1");
    assert_eq!(log.calls(), 2);
    assert_eq!(cache.stats().stale_if_error, 1);
}

#[tokio::test]
async fn stale_if_error_from_builder_default() {
    let clock = clock();
    let cache = builder(&clock)
        .default_stale_if_error(secs(60))
        .build()
        .unwrap();
    let (origin, _log) = origin(|n, _| {
        if n == 0 {
            ok("max-age=1", "v1")
        } else {
            response(502, &[], "bad gateway")
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(30));
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(body(r).await, "v1");
    assert_eq!(cache.stats().stale_if_error, 1);
}

#[tokio::test]
async fn must_revalidate_lets_errors_through() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin_fn(|n, _| async move {
        match n {
            0 => Ok(response(
                200,
                &[
                    (
                        "cache-control",
                        "max-age=1, stale-if-error=300, must-revalidate",
                    ),
                    ("etag", "\"e\""),
                ],
                "v1",
            )),
            1 => Ok(response(503, &[], "down")),
            _ => Err(OriginError("boom")),
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(2));
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=stale; fwd-status=503"
    );
    assert_eq!(body(r).await, "down");
    assert_eq!(log.last().header("if-none-match"), Some("\"e\""));
    let err = call(&svc, get(URL)).await.unwrap_err();
    assert_eq!(err, OriginError("boom"));
    assert_eq!(log.calls(), 3);
    assert_eq!(cache.stats().stale_if_error, 0);
}

#[tokio::test]
async fn origin_errors_pass_through_unchanged_when_nothing_is_stored() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin_fn(|n, _| async move {
        if n == 0 {
            Err(OriginError("connection refused"))
        } else {
            Ok(response(503, &[("retry-after", "5")], "down"))
        }
    });
    let svc = cached(&cache, origin);
    let err = call(&svc, get(URL)).await.unwrap_err();
    assert_eq!(err, OriginError("connection refused"));
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after").as_deref(), Some("5"));
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=uri-miss; fwd-status=503"
    );
    assert_eq!(body(r).await, "down");
    assert_eq!(log.calls(), 2);
    let st = cache.stats();
    assert_eq!(st.upstream_errors, 2);
    assert_eq!(st.stores, 0);
    assert_eq!(st.stale_if_error, 0);
}

// ---------------------------------------------------------------------------
// 10. Revalidation and conditional requests
// ---------------------------------------------------------------------------

/// RFC 9111 §3.2: a 304's `Content-Length` (of its own empty body) and a
/// `Cache-Status` from a cache in front of the origin do not replace the
/// stored response's: the freshened entry keeps its body's length, and
/// its hits carry one `Cache-Status`, this cache's.
#[tokio::test]
async fn rfc9111_3_2_a_304_does_not_update_content_length_or_cache_status() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, _| {
        if n == 0 {
            response(
                200,
                &[("cache-control", "max-age=10"), ("etag", "\"abc\"")],
                "payload",
            )
        } else {
            response(
                304,
                &[
                    ("cache-control", "max-age=100"),
                    ("etag", "\"abc\""),
                    ("content-length", "0"),
                    ("age", "50"),
                    ("cache-status", "upstream-cache; hit"),
                ],
                "",
            )
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(15));
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(body(r).await, "payload");
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(header(&r, "content-length").as_deref(), Some("7"));
    assert_eq!(r.headers().get_all("cache-status").iter().count(), 1);
    assert_eq!(body(r).await, "payload");
    assert_eq!(log.calls(), 2);
}

/// RFC 9110 §8.6: a server must not send `Content-Length` in a 204. A
/// stored 204 is answered without one, on the miss that stores it and on
/// every hit (whichever tier it is read from), though stored entries are
/// otherwise given the length of their body.
#[tokio::test]
async fn rfc9110_8_6_a_stored_204_is_answered_without_content_length() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, _| response(204, &[("cache-control", "max-age=60")], ""));
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 204);
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=uri-miss; fwd-status=204; stored"
    );
    assert_eq!(header(&r, "content-length"), None);
    clock.advance(secs(5));
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 204);
    assert_eq!(cache_status(&r), hit());
    assert_eq!(header(&r, "content-length"), None, "a 204 hit");
    assert_eq!(body(r).await, "");
    assert_eq!(log.calls(), 1);
}

#[tokio::test]
async fn stale_entry_with_etag_is_revalidated_by_a_304() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let origin_clock = clock.clone();
    let (origin, log) = origin(move |n, _| {
        let date = http_date(origin_clock.now_millis());
        match n {
            0 => response(
                200,
                &[
                    ("cache-control", "max-age=10"),
                    ("etag", "\"abc\""),
                    ("x-version", "1"),
                    ("date", &date),
                ],
                "payload",
            ),
            _ => response(
                304,
                &[
                    ("cache-control", "max-age=100"),
                    ("etag", "\"abc\""),
                    ("x-version", "2"),
                    ("date", &date),
                ],
                "",
            ),
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(15));
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        cache_status(&r),
        at_tier("tower-tiered-cache; fwd=stale; fwd-status=304; detail=l1")
    );
    assert_eq!(header(&r, "cache-control").as_deref(), Some("max-age=100"));
    assert_eq!(header(&r, "x-version").as_deref(), Some("2"));
    assert_eq!(header(&r, "etag").as_deref(), Some("\"abc\""));
    assert_eq!(header(&r, "content-length").as_deref(), Some("7"));
    assert_eq!(age(&r), Some(0));
    assert_eq!(body(r).await, "payload");
    assert_eq!(log.request(1).header("if-none-match"), Some("\"abc\""));
    let st = cache.stats();
    assert_eq!(st.revalidated, 1);
    assert_eq!(st.stores, 2);

    // The new max-age applies.
    clock.advance(secs(50));
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(age(&r), Some(50));
    assert_eq!(header(&r, "x-version").as_deref(), Some("2"));
    assert_eq!(body(r).await, "payload");
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn stale_entry_with_last_modified_is_revalidated_by_a_304() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let lm = http_date(T0 - 3_600_000);
    let lm2 = lm.clone();
    let origin_clock = clock.clone();
    let (origin, log) = origin(move |n, _| {
        let date = http_date(origin_clock.now_millis());
        match n {
            0 => response(
                200,
                &[
                    ("cache-control", "max-age=10"),
                    ("last-modified", &lm2),
                    ("date", &date),
                ],
                "payload",
            ),
            _ => response(
                304,
                &[("cache-control", "max-age=100"), ("date", &date)],
                "",
            ),
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(15));
    let r = send(&svc, get(URL)).await;
    assert_eq!(
        cache_status(&r),
        at_tier("tower-tiered-cache; fwd=stale; fwd-status=304; detail=l1")
    );
    assert_eq!(header(&r, "cache-control").as_deref(), Some("max-age=100"));
    assert_eq!(header(&r, "last-modified"), Some(lm.clone()));
    assert_eq!(body(r).await, "payload");
    assert_eq!(
        log.request(1).header("if-modified-since"),
        Some(lm.as_str())
    );
    assert_eq!(log.request(1).header("if-none-match"), None);
    assert_eq!(cache.stats().revalidated, 1);
    clock.advance(secs(90));
    assert_eq!(cache_status(&send(&svc, get(URL)).await), hit());
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn client_conditional_requests_are_answered_from_cache() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let lm = http_date(T0 - 3_600_000);
    let before_lm = http_date(T0 - 7_200_000);
    let lm2 = lm.clone();
    let (origin, log) = origin(move |_, _| {
        response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"abc\""),
                ("last-modified", &lm2),
            ],
            "payload",
        )
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;

    for (name, value, want) in [
        ("if-none-match", "\"abc\"", 304),
        ("if-none-match", "W/\"abc\"", 304),
        ("if-none-match", "\"zzz\", \"abc\"", 304),
        ("if-none-match", "*", 304),
        ("if-none-match", "\"zzz\"", 200),
        ("if-modified-since", lm.as_str(), 304),
        ("if-modified-since", before_lm.as_str(), 200),
    ] {
        let r = send(&svc, get_with(URL, &[(name, value)])).await;
        assert_eq!(r.status(), want, "{name}: {value}");
        assert_eq!(cache_status(&r), hit(), "{name}: {value}");
        assert!(age(&r).is_some());
        assert_eq!(header(&r, "etag").as_deref(), Some("\"abc\""));
        let b = body(r).await;
        if want == 304 {
            assert_eq!(b, "", "{name}: {value}");
        } else {
            assert_eq!(b, "payload", "{name}: {value}");
        }
    }
    assert_eq!(log.calls(), 1);
    let st = cache.stats();
    assert_eq!(st.not_modified, 5);
    assert_eq!(st.hits, 7);
}

#[tokio::test]
async fn client_conditionals_are_not_forwarded_on_a_miss() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, _| {
        response(
            200,
            &[("cache-control", "max-age=60"), ("etag", "\"abc\"")],
            "payload",
        )
    });
    let svc = cached(&cache, origin);
    let r = send(&svc, get_with(URL, &[("if-none-match", "\"abc\"")])).await;
    // The cache fetched the full response to store it, then answered the
    // client's condition from it.
    assert_eq!(log.request(0).header("if-none-match"), None);
    assert_eq!(r.status(), 304);
    assert_eq!(cache_status(&r), MISS_STORED);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(body(r).await, "payload");
    assert_eq!(log.calls(), 1);
}

// ---------------------------------------------------------------------------
// 11. Vary
// ---------------------------------------------------------------------------

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, req| {
        let enc = req
            .headers()
            .get("accept-encoding")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        response(
            200,
            &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")],
            &format!("enc:{enc}"),
        )
    });
    let svc = cached(&cache, origin);
    let gzip = [("accept-encoding", "gzip")];
    let br = [("accept-encoding", "br")];

    let r = send(&svc, get_with(URL, &gzip)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(body(r).await, "enc:gzip");
    let r = send(&svc, get_with(URL, &br)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=vary-miss; fwd-status=200; stored"
    );
    assert_eq!(body(r).await, "enc:br");
    assert_eq!(log.calls(), 2);

    for _ in 0..2 {
        let r = send(&svc, get_with(URL, &gzip)).await;
        assert_eq!(cache_status(&r), hit());
        assert_eq!(header(&r, "vary").as_deref(), Some("Accept-Encoding"));
        assert_eq!(body(r).await, "enc:gzip");
        let r = send(&svc, get_with(URL, &br)).await;
        assert_eq!(cache_status(&r), hit());
        assert_eq!(body(r).await, "enc:br");
    }
    assert_eq!(log.calls(), 2);

    let r = send(&svc, get_with(URL, &[("accept-encoding", "deflate")])).await;
    assert!(cache_status(&r).starts_with("tower-tiered-cache; fwd=vary-miss"));
    assert_eq!(body(r).await, "enc:deflate");
    assert_eq!(log.calls(), 3);
    let r = send(&svc, get(URL)).await;
    assert!(cache_status(&r).starts_with("tower-tiered-cache; fwd=vary-miss"));
    assert_eq!(body(r).await, "enc:");
    assert_eq!(log.calls(), 4);
    let st = cache.stats();
    assert_eq!(st.hits, 4);
    assert_eq!(st.misses, 4);
}

/// An origin whose responses vary on `field`, with the values of `field`
/// it was sent (lines joined by `|`) as their body.
fn varying_origin(field: &'static str) -> (Origin, Log) {
    origin(move |_, req| {
        let seen: Vec<&str> = req
            .headers()
            .get_all(field)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        response(
            200,
            &[("cache-control", "max-age=60"), ("vary", field)],
            &seen.join("|"),
        )
    })
}

const VARY_MISS_STORED: &str = "tower-tiered-cache; fwd=vary-miss; fwd-status=200; stored";

/// RFC 9111 §4.1 (with RFC 9110 §12.5.3): content codings are
/// case-insensitive and ranked by q-value, so `gzip, br`, `br,gzip`,
/// `BR, GZip` and the same codings on two field lines select one variant.
#[tokio::test]
async fn rfc9111_4_1_accept_encoding_in_any_order_and_case_shares_one_variant() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = varying_origin("accept-encoding");
    let svc = cached(&cache, origin);
    let r = send(&svc, get_with(URL, &[("accept-encoding", "gzip, br")])).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(body(r).await, "gzip, br");
    for same in [
        &[("accept-encoding", "br,gzip")][..],
        &[("accept-encoding", "BR, GZip")],
        &[("accept-encoding", " gzip ,br ")],
        &[("accept-encoding", "br"), ("accept-encoding", "gzip")],
    ] {
        let r = send(&svc, get_with(URL, same)).await;
        assert_eq!(cache_status(&r), hit(), "{same:?}");
        assert_eq!(body(r).await, "gzip, br", "{same:?}");
    }
    assert_eq!(log.calls(), 1);
    // Other codings are another variant.
    for (i, other) in ["gzip", "gzip, br, zstd", "gzip;q=0.5, br"]
        .into_iter()
        .enumerate()
    {
        let r = send(&svc, get_with(URL, &[("accept-encoding", other)])).await;
        assert_eq!(cache_status(&r), VARY_MISS_STORED, "{other}");
        assert_eq!(body(r).await, other);
        assert_eq!(log.calls(), i + 2);
    }
    let st = cache.stats();
    assert_eq!(st.hits, 4);
    assert_eq!(st.misses, 4);
}

/// RFC 9111 §4.1 with RFC 9110 §5.3: a field sent on two lines is the same
/// field as its lines combined on one; whitespace around list members does
/// not count. For a field not known to be an unordered list the order (and
/// the case) of its members does: another order is another variant.
#[tokio::test]
async fn rfc9111_4_1_field_lines_are_combined_and_other_fields_keep_their_order() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = varying_origin("x-variant");
    let svc = cached(&cache, origin);
    let two = [("x-variant", "a"), ("x-variant", "b")];
    let r = send(&svc, get_with(URL, &two)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(body(r).await, "a|b");
    for same in [
        &[("x-variant", "a, b")][..],
        &[("x-variant", "a,b")],
        &[("x-variant", " a ,  b ")],
        &two,
    ] {
        let r = send(&svc, get_with(URL, same)).await;
        assert_eq!(cache_status(&r), hit(), "{same:?}");
        assert_eq!(body(r).await, "a|b", "{same:?}");
    }
    assert_eq!(log.calls(), 1);
    for (i, other) in [
        &[("x-variant", "b, a")][..],
        &[("x-variant", "A, b")],
        &[("x-variant", "a")],
    ]
    .into_iter()
    .enumerate()
    {
        let r = send(&svc, get_with(URL, other)).await;
        assert!(
            cache_status(&r).starts_with("tower-tiered-cache; fwd=vary-miss"),
            "{other:?}: {}",
            cache_status(&r)
        );
        assert_eq!(log.calls(), i + 2, "{other:?}");
    }
    // `b, a` was stored on its own: requests for it hit that variant.
    for same in [
        &[("x-variant", "b,a")][..],
        &[("x-variant", "b"), ("x-variant", "a")],
    ] {
        let r = send(&svc, get_with(URL, same)).await;
        assert_eq!(cache_status(&r), hit(), "{same:?}");
        assert_eq!(body(r).await, "b, a");
    }
    assert_eq!(log.calls(), 4);
}

/// RFC 9111 §4.1 with RFC 9110 §12.5.4 and §12.5.1: language ranges, media
/// types and parameter names are case-insensitive (`en-US` and `en-us`
/// share a variant); a media type parameter's value is not.
#[tokio::test]
async fn rfc9111_4_1_language_ranges_and_media_types_ignore_case() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = varying_origin("accept-language");
    let svc = cached(&cache, origin);
    let r = send(&svc, get_with(URL, &[("accept-language", "en-US")])).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    let r = send(&svc, get_with(URL, &[("accept-language", "en-us")])).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(body(r).await, "en-US");
    let r = send(&svc, get_with(URL, &[("accept-language", "en-GB")])).await;
    assert_eq!(cache_status(&r), VARY_MISS_STORED);
    assert_eq!(body(r).await, "en-GB");
    assert_eq!(log.calls(), 2);

    let url = "http://example.com/media";
    let (origin, log) = varying_origin("accept");
    let svc = cached(&cache, origin);
    let html = "text/html, application/json;q=0.5";
    let r = send(&svc, get_with(url, &[("accept", html)])).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    let r = send(
        &svc,
        get_with(url, &[("accept", "Application/JSON; Q=0.5,TEXT/HTML")]),
    )
    .await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(body(r).await, html);
    let x = |v: &'static str| [("accept", v)];
    let r = send(&svc, get_with(url, &x("text/plain;format=Flowed"))).await;
    assert_eq!(cache_status(&r), VARY_MISS_STORED);
    let r = send(&svc, get_with(url, &x("text/plain;format=flowed"))).await;
    assert_eq!(cache_status(&r), VARY_MISS_STORED);
    let r = send(&svc, get_with(url, &x("Text/Plain; Format=Flowed"))).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(body(r).await, "text/plain;format=Flowed");
    assert_eq!(log.calls(), 3);
}

// ---------------------------------------------------------------------------
// 12. HEAD
// ---------------------------------------------------------------------------

#[tokio::test]
async fn head_is_answered_from_the_get_entry() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, _| {
        response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"e\""),
                ("x-custom", "1"),
            ],
            "hello",
        )
    });
    let svc = cached(&cache, origin);
    let get_resp = send(&svc, get(URL)).await;
    let get_headers = get_resp.headers().clone();
    clock.advance(secs(3));
    let head = send(&svc, request(Method::HEAD, URL, &[])).await;
    assert_eq!(head.status(), 200);
    assert_eq!(cache_status(&head), hit());
    assert_eq!(age(&head), Some(3));
    for name in ["cache-control", "etag", "x-custom", "content-length"] {
        assert_eq!(head.headers().get(name), get_headers.get(name), "{name}");
    }
    assert_eq!(header(&head, "content-length").as_deref(), Some("5"));
    assert_eq!(body(head).await, "");
    assert_eq!(log.calls(), 1);
    assert_eq!(cache.stats().hits, 1);
}

#[tokio::test]
async fn head_miss_fetches_with_get_and_fills_the_get_entry() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, _| ok("max-age=60", "hello"));
    let svc = cached(&cache, origin);
    let head = send(&svc, request(Method::HEAD, URL, &[])).await;
    assert_eq!(cache_status(&head), MISS_STORED);
    assert_eq!(body(head).await, "");
    assert_eq!(log.request(0).method, Method::GET);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(body(r).await, "hello");
    assert_eq!(log.calls(), 1);
}

// ---------------------------------------------------------------------------
// 13. Set-Cookie and Authorization
// ---------------------------------------------------------------------------

fn cookie_origin() -> (Origin, Log) {
    origin(|n, _| {
        response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("set-cookie", "session=abc"),
                ("set-cookie", "theme=dark"),
            ],
            &format!("v{}", n + 1),
        )
    })
}

fn cookies<B>(r: &Response<B>) -> usize {
    r.headers().get_all("set-cookie").iter().count()
}

#[tokio::test]
async fn set_cookie_responses_are_not_stored_by_default() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = cookie_origin();
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=set-cookie"
    );
    assert_eq!(cookies(&r), 2);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), HIT_FOR_PASS);
    assert_eq!(cookies(&r), 2);
    assert_eq!(log.calls(), 2);
    assert_eq!(cache.stats().stores, 0);
}

#[tokio::test]
async fn set_cookie_strip_stores_without_the_cookie() {
    let clock = clock();
    let cache = builder(&clock)
        .set_cookie(SetCookiePolicy::Strip)
        .build()
        .unwrap();
    let (origin, log) = cookie_origin();
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(
        cookies(&r),
        2,
        "the response that was stored keeps its cookies"
    );
    assert_eq!(body(r).await, "v1");
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(cookies(&r), 0);
    assert_eq!(body(r).await, "v1");
    assert_eq!(log.calls(), 1);
}

#[tokio::test]
async fn set_cookie_store_keeps_the_cookie() {
    let clock = clock();
    let cache = builder(&clock)
        .set_cookie(SetCookiePolicy::Store)
        .build()
        .unwrap();
    let (origin, log) = cookie_origin();
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(cookies(&r), 2);
    assert_eq!(log.calls(), 1);
}

const AUTH: [(&str, &str); 1] = [("authorization", "Bearer secret")];

#[tokio::test]
async fn authorized_requests_are_not_shared_by_default() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, _| ok("max-age=60", &format!("v{}", n + 1)));
    let svc = cached(&cache, origin);
    let r = send(&svc, get_with(URL, &AUTH)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=authorization"
    );
    assert_eq!(body(r).await, "v1");
    let r = send(&svc, get_with(URL, &AUTH)).await;
    assert_eq!(body(r).await, "v2");
    // Nothing stored: an anonymous request misses too.
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(body(r).await, "v3");
    // An anonymous entry does not answer an authorized request.
    let r = send(&svc, get_with(URL, &AUTH)).await;
    assert!(
        cache_status(&r).contains("detail=authorization"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(body(r).await, "v4");
    assert_eq!(log.calls(), 4);
    assert_eq!(cache.stats().stores, 1);
}

#[tokio::test]
async fn authorized_requests_are_shared_with_public_or_s_maxage() {
    for cc in [
        "public, max-age=60",
        "s-maxage=60",
        "max-age=60, must-revalidate",
    ] {
        let clock = clock();
        let cache = builder(&clock).build().unwrap();
        let (origin, log) = origin(move |_, _| ok(cc, "shared"));
        let svc = cached(&cache, origin);
        let r = send(&svc, get_with(URL, &AUTH)).await;
        assert_eq!(cache_status(&r), MISS_STORED, "{cc}");
        let r = send(&svc, get_with(URL, &AUTH)).await;
        assert_eq!(cache_status(&r), hit(), "{cc}");
        let r = send(&svc, get(URL)).await;
        assert_eq!(cache_status(&r), hit(), "{cc}");
        assert_eq!(log.calls(), 1, "{cc}");
    }
}

/// RFC 9111 §3.5 holds for a 304 too: an entry stored for an authorized
/// request under `public` is freshened only if the 304's fields still allow
/// sharing it. After a 304 whose `Cache-Control` drops `public`, no other
/// client is answered from the entry.
#[tokio::test]
async fn rfc9111_3_5_a_304_that_drops_public_does_not_freshen_an_authorized_entry() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, req| {
        if req.headers().contains_key("if-none-match") {
            response(
                304,
                &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
                "",
            )
        } else {
            response(
                200,
                &[("cache-control", "public, max-age=1"), ("etag", "\"v1\"")],
                "shared",
            )
        }
    });
    let svc = cached(&cache, origin);
    let r = send(&svc, get_with(URL, &AUTH)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    clock.advance(secs(2));
    let r = send(&svc, get_with(URL, &AUTH)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(body(r).await, "shared");
    assert_eq!(log.calls(), 2);
    assert_eq!(log.last().header("if-none-match"), Some("\"v1\""));
    // Not freshened (dropped, or left stale): an anonymous request is not
    // answered with what an authorized one was given without `public`.
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(body(r).await, "shared");
    assert_eq!(log.calls(), 3, "the entry was freshened by the 304");
}

#[tokio::test]
async fn share_authorized_stores_plain_responses() {
    let clock = clock();
    let cache = builder(&clock).share_authorized(true).build().unwrap();
    let (origin, log) = origin(|_, _| ok("max-age=60", "x"));
    let svc = cached(&cache, origin);
    assert_eq!(
        cache_status(&send(&svc, get_with(URL, &AUTH)).await),
        MISS_STORED
    );
    assert_eq!(cache_status(&send(&svc, get_with(URL, &AUTH)).await), hit());
    assert_eq!(cache_status(&send(&svc, get(URL)).await), hit());
    assert_eq!(log.calls(), 1);
}

// ---------------------------------------------------------------------------
// 14. Oversize bodies and hit-for-pass
// ---------------------------------------------------------------------------

#[tokio::test]
async fn oversize_streaming_body_passes_through_intact() {
    const CHUNK: usize = 1024;
    const CHUNKS: usize = 64;
    let clock = clock();
    let cache = builder(&clock).max_body_bytes(1024).build().unwrap();
    let senders = Arc::new(Mutex::new(Vec::new()));
    let s = senders.clone();
    let (origin, log) = origin_fn(move |_, _| {
        let (tx, body) = ChannelBody::new(CHUNKS);
        s.lock().unwrap().push(Some(tx));
        async move {
            Ok::<_, Infallible>(with_header(
                Response::new(body),
                "cache-control",
                "max-age=60",
            ))
        }
    });
    let svc = cached(&cache, origin);

    for round in 0..2 {
        let svc2 = svc.clone();
        let task = tokio::spawn(async move { send(&svc2, get(URL)).await });
        assert!(eventually(|| senders.lock().unwrap().len() == round + 1).await);
        // Only the test holds the sender: dropping it ends the body.
        let tx = senders.lock().unwrap()[round].take().unwrap();
        let payload: Vec<Bytes> = (0..CHUNKS)
            .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; CHUNK]))
            .collect();
        // Two chunks put the body over the cap; the response starts before
        // the origin has sent the rest, so nothing waits for the whole body.
        tx.send(payload[0].clone()).await.unwrap();
        tx.send(payload[1].clone()).await.unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("the response head does not wait for the whole body")
            .unwrap();
        if round == 0 {
            assert_eq!(
                cache_status(&resp),
                "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=too-large"
            );
        } else {
            assert_eq!(cache_status(&resp), HIT_FOR_PASS);
        }
        let feeder = tokio::spawn(async move {
            for chunk in &payload[2..] {
                tx.send(chunk.clone()).await.unwrap();
            }
        });
        let got = body(resp).await;
        feeder.await.unwrap();
        assert_eq!(got.len(), CHUNK * CHUNKS);
        assert_eq!(got, Chunked::expected(CHUNKS, CHUNK));
    }
    assert_eq!(log.calls(), 2);
    let st = cache.stats();
    assert_eq!(st.too_large, 1);
    assert_eq!(st.stores, 0);
    assert_eq!(st.l1_entries, 0);
}

#[tokio::test]
async fn oversize_content_length_passes_through_intact() {
    let clock = clock();
    let cache = builder(&clock).max_body_bytes(1024).build().unwrap();
    let big = "z".repeat(4096);
    let (origin, log) = origin(move |_, _| {
        response(
            200,
            &[("cache-control", "max-age=60"), ("content-length", "4096")],
            &big,
        )
    });
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=too-large"
    );
    assert_eq!(header(&r, "content-length").as_deref(), Some("4096"));
    assert!(!r.body().is_cached());
    assert_eq!(body(r).await, "z".repeat(4096));
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), HIT_FOR_PASS);
    assert_eq!(body(r).await.len(), 4096);
    assert_eq!(log.calls(), 2);
    let st = cache.stats();
    assert_eq!(st.too_large, 1);
    assert_eq!(st.stores, 0);
}

/// The body cap is inclusive: a body whose `Content-Length` is exactly
/// `max_body_bytes` is stored (and hit); one byte more streams through.
#[tokio::test]
async fn a_body_of_exactly_the_cap_is_stored_and_one_byte_more_is_not() {
    let clock = clock();
    let cache = builder(&clock).max_body_bytes(1024).build().unwrap();
    let (origin, log) = origin(|_, req| {
        let n = if req.uri().path() == "/exact" {
            1024
        } else {
            1025
        };
        let length = n.to_string();
        let headers = [("cache-control", "max-age=60"), ("content-length", &length)];
        response(200, &headers, &"z".repeat(n))
    });
    let svc = cached(&cache, origin);
    let exact = "http://example.com/exact";
    let r = send(&svc, get(exact)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(body(r).await.len(), 1024);
    let r = send(&svc, get(exact)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(header(&r, "content-length").as_deref(), Some("1024"));
    assert_eq!(body(r).await.len(), 1024);
    assert_eq!(log.calls(), 1);

    let r = send(&svc, get("http://example.com/over")).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=too-large"
    );
    assert_eq!(body(r).await.len(), 1025);
    let st = cache.stats();
    assert_eq!((st.stores, st.too_large), (1, 1), "{st:?}");
}

#[tokio::test]
async fn hit_for_pass_requests_do_not_queue_behind_each_other() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    let (origin, log) = origin_fn(move |n, _| {
        let g = g.clone();
        async move {
            if n > 0 {
                g.pass().await;
            }
            Ok::<_, Infallible>(ok("private, max-age=60", &format!("v{}", n + 1)))
        }
    });
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert!(cache_status(&r).ends_with("detail=private"));

    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let r = send(&svc, get(URL)).await;
                cache_status(&r)
            })
        })
        .collect();
    // Both reach the origin while neither has been answered.
    assert!(eventually(|| log.calls() == 3).await);
    gate.open();
    for t in tasks {
        assert_eq!(t.await.unwrap(), HIT_FOR_PASS);
    }
    let st = cache.stats();
    assert_eq!(st.passes, 2);
    assert_eq!(st.coalesced, 0);
}

#[tokio::test]
async fn hit_for_pass_expires() {
    let clock = clock();
    let cache = builder(&clock).hit_for_pass(secs(10)).build().unwrap();
    let (origin, log) = origin(|n, _| {
        if n < 2 {
            ok("private", "p")
        } else {
            ok("max-age=60", "public now")
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    assert_eq!(cache_status(&send(&svc, get(URL)).await), HIT_FOR_PASS);
    clock.advance(secs(11));
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(cache_status(&send(&svc, get(URL)).await), hit());
    assert_eq!(log.calls(), 3);
}

// ---------------------------------------------------------------------------
// 15. Invalidation by unsafe methods
// ---------------------------------------------------------------------------

#[tokio::test]
async fn unsafe_methods_invalidate_on_success_only() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, req| {
        let path = req.uri().path().to_owned();
        match (req.method().as_str(), path.as_str()) {
            ("GET", p) => ok("max-age=600", p),
            ("POST", "/a") => response(201, &[("location", "/b")], "created"),
            ("PUT", "/c") => response(500, &[], "failed"),
            ("PUT", "/d") => response(404, &[], "no such thing"),
            ("DELETE", "/c") => {
                response(204, &[("content-location", "http://other.example/x")], "")
            }
            ("POST", "/d") => response(303, &[("location", "http://example.com/e")], ""),
            _ => response(400, &[], "unexpected"),
        }
    });
    let svc = cached(&cache, origin);
    let u = |p: &str| format!("http://example.com{p}");
    let other = "http://other.example/x";
    for p in ["/a", "/b", "/c", "/d", "/e"] {
        send(&svc, get(&u(p))).await;
    }
    send(&svc, get(other)).await;
    assert_eq!(log.calls(), 6);
    let is_hit = |svc: &Svc, url: String| {
        let svc = svc.clone();
        async move { cache_status(&send(&svc, get(&url)).await) == hit() }
    };

    // 201 with a same-origin Location: the target and the Location go.
    let r = send(&svc, request(Method::POST, &u("/a"), &[])).await;
    assert_eq!(r.status(), 201);
    assert_eq!(cache_status(&r), "tower-tiered-cache; fwd=method");
    assert_eq!(body(r).await, "created");
    assert_eq!(cache.stats().invalidations, 2);
    assert!(!is_hit(&svc, u("/a")).await);
    assert!(!is_hit(&svc, u("/b")).await);
    assert!(is_hit(&svc, u("/c")).await);
    assert_eq!(log.calls(), 9);

    // Errors invalidate nothing.
    let r = send(&svc, request(Method::PUT, &u("/c"), &[])).await;
    assert_eq!(r.status(), 500);
    let r = send(&svc, request(Method::PUT, &u("/d"), &[])).await;
    assert_eq!(r.status(), 404);
    assert!(is_hit(&svc, u("/c")).await);
    assert!(is_hit(&svc, u("/d")).await);
    assert_eq!(cache.stats().invalidations, 2);

    // A Content-Location on another origin is left alone.
    let r = send(&svc, request(Method::DELETE, &u("/c"), &[])).await;
    assert_eq!(r.status(), 204);
    assert_eq!(cache.stats().invalidations, 3);
    assert!(is_hit(&svc, other.to_owned()).await);
    assert!(!is_hit(&svc, u("/c")).await);

    // A redirect is not an error: an absolute same-origin Location goes too.
    let r = send(&svc, request(Method::POST, &u("/d"), &[])).await;
    assert_eq!(r.status(), 303);
    assert_eq!(cache.stats().invalidations, 5);
    assert!(!is_hit(&svc, u("/d")).await);
    assert!(!is_hit(&svc, u("/e")).await);
    assert_eq!(log.calls(), 9 + 3 + 1 + 1 + 2);
}

#[tokio::test]
async fn rfc9111_4_4_every_method_not_known_to_be_safe_invalidates() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, req| match req.method().as_str() {
        "GET" => ok("max-age=600", "x"),
        _ => response(200, &[], "done"),
    });
    let svc = cached(&cache, origin);
    let mut calls = 0;
    // Safe methods other than GET and HEAD pass, invalidating nothing.
    for method in ["OPTIONS", "TRACE"] {
        send(&svc, get(URL)).await;
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let r = send(&svc, request(m, URL, &[])).await;
        assert_eq!(r.status(), 200, "{method}");
        assert_eq!(cache_status(&send(&svc, get(URL)).await), hit(), "{method}");
        calls = log.calls();
    }
    // Extension methods and the unsafe standard ones invalidate.
    for method in ["M-SEARCH", "PROPPATCH", "MKCOL", "LOCK", "PATCH", "CONNECT"] {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let r = send(&svc, request(m, URL, &[])).await;
        assert_eq!(r.status(), 200, "{method}");
        assert_eq!(
            cache_status(&r),
            "tower-tiered-cache; fwd=method",
            "{method}"
        );
        let r = send(&svc, get(URL)).await;
        assert_eq!(cache_status(&r), MISS_STORED, "{method} invalidates");
        calls += 2;
        assert_eq!(log.calls(), calls, "{method}");
    }
}

#[tokio::test]
async fn unsafe_methods_invalidate_with_host_header_requests() {
    // Server-side requests carry a path and a Host header.
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, req| match *req.method() {
        Method::GET => ok("max-age=600", req.uri().path()),
        _ => response(200, &[("location", "http://example.com/list")], "ok"),
    });
    let svc = cached(&cache, origin);
    let host = [("host", "example.com")];
    send(&svc, get_with("/item", &host)).await;
    send(&svc, get_with("/list", &host)).await;
    assert_eq!(
        cache_status(&send(&svc, get_with("/item", &host)).await),
        hit()
    );
    send(&svc, request(Method::PUT, "/item", &host)).await;
    assert_eq!(cache.stats().invalidations, 2);
    assert_eq!(
        cache_status(&send(&svc, get_with("/item", &host)).await),
        MISS_STORED
    );
    assert_eq!(
        cache_status(&send(&svc, get_with("/list", &host)).await),
        MISS_STORED
    );
    assert_eq!(log.calls(), 5);
}

// ---------------------------------------------------------------------------
// 16. Negative caching
// ---------------------------------------------------------------------------

#[tokio::test]
async fn not_found_is_not_stored_by_default() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, _| response(404, &[], "not found"));
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=uri-miss; fwd-status=404; detail=no-freshness"
    );
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 404);
    assert_eq!(log.calls(), 2);
    assert_eq!(cache.stats().stores, 0);
}

#[tokio::test]
async fn negative_caching_stores_not_found_for_its_ttl() {
    let clock = clock();
    let cache = builder(&clock).negative_caching(secs(30)).build().unwrap();
    let (origin, log) = origin(|_, _| response(404, &[], "not found"));
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=uri-miss; fwd-status=404; stored"
    );
    clock.advance(secs(29));
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 404);
    assert_eq!(cache_status(&r), hit());
    assert_eq!(body(r).await, "not found");
    assert_eq!(log.calls(), 1);
    clock.advance(secs(1));
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=uri-miss; fwd-status=404; stored"
    );
    assert_eq!(log.calls(), 2);
}

// ---------------------------------------------------------------------------
// 17. Coalescing: timeouts and cancelled leaders
// ---------------------------------------------------------------------------

/// A waiter whose `coalesce_timeout` runs out before the leader's call
/// ends never calls the origin itself (that would turn N waiters into N
/// origin calls): it gets a 504 saying why.
#[tokio::test(start_paused = true)]
async fn coalesce_waiter_times_out_without_calling_the_origin() {
    let clock = clock();
    let cache = builder(&clock)
        .coalesce_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let gate = Gate::new(); // never opened
    let g = gate.clone();
    let (origin, log) = origin_fn(move |n, _| {
        let g = g.clone();
        async move {
            if n == 0 {
                g.pass().await;
            }
            Ok::<_, Infallible>(ok("max-age=60", &format!("v{}", n + 1)))
        }
    });
    let svc = cached(&cache, origin);
    let svc2 = svc.clone();
    let leader = tokio::spawn(async move { send(&svc2, get(URL)).await });
    assert!(eventually(|| log.calls() == 1).await);

    let start = tokio::time::Instant::now();
    let r = send(&svc, get(URL)).await;
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(50), "{waited:?}");
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    assert_eq!(r.status(), 504);
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=uri-miss; detail=coalesce-timeout"
    );
    assert_eq!(log.calls(), 1, "the waiter did not call the origin");
    let st = cache.stats();
    assert_eq!(st.coalesce_timeouts, 1);
    assert_eq!(st.coalesced, 0);
    assert!(!leader.is_finished());
    leader.abort();
}

#[tokio::test]
async fn cancelled_leader_releases_its_waiters() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap(); // coalesce timeout 15 s
    let gate = Gate::new(); // never opened
    let g = gate.clone();
    let (origin, log) = origin_fn(move |n, _| {
        let g = g.clone();
        async move {
            if n == 0 {
                g.pass().await;
            }
            Ok::<_, Infallible>(ok("max-age=60", &format!("v{}", n + 1)))
        }
    });
    let svc = cached(&cache, origin);
    let svc2 = svc.clone();
    let leader = tokio::spawn(async move { send(&svc2, get(URL)).await });
    assert!(eventually(|| log.calls() == 1).await);
    let svc3 = svc.clone();
    let waiter = tokio::spawn(async move {
        let r = send(&svc3, get(URL)).await;
        (cache_status(&r), body(r).await)
    });
    settle().await;
    assert!(!waiter.is_finished());
    assert_eq!(log.calls(), 1);

    leader.abort();
    let (status, b) = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .expect("the waiter is released at once, not after the coalesce timeout")
        .unwrap();
    assert_eq!(status, MISS_STORED);
    assert_eq!(b, "v2");
    assert_eq!(log.calls(), 2);
    let st = cache.stats();
    assert_eq!(st.coalesce_timeouts, 0);
    assert_eq!(st.in_flight, 0);
    assert_eq!(cache_status(&send(&svc, get(URL)).await), hit());
}

// ---------------------------------------------------------------------------
// 18. Keys
// ---------------------------------------------------------------------------

#[tokio::test]
async fn query_normalisation_shares_entries() {
    let clock = clock();
    let cache = builder(&clock)
        .sort_query(true)
        .ignore_query_param("utm_*")
        .build()
        .unwrap();
    let (normalised, log) = origin(|_, req| ok("max-age=60", req.uri().query().unwrap_or("")));
    let svc = cached(&cache, normalised);
    let r = send(&svc, get("http://example.com/p?b=2&a=1&utm_source=x")).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    for u in [
        "http://example.com/p?a=1&b=2",
        "http://example.com/p?utm_campaign=y&a=1&b=2&utm_medium=z",
        "http://example.com/p?b=2&a=1",
    ] {
        let r = send(&svc, get(u)).await;
        assert_eq!(cache_status(&r), hit(), "{u}");
        assert_eq!(body(r).await, "b=2&a=1&utm_source=x", "{u}");
    }
    assert_eq!(log.calls(), 1);
    let r = send(&svc, get("http://example.com/p?a=1&b=3")).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(log.calls(), 2);

    // Without normalisation, order matters.
    let plain = builder(&clock).build().unwrap();
    let (plain_origin, log) = origin(|_, _| ok("max-age=60", "x"));
    let svc = cached(&plain, plain_origin);
    send(&svc, get("http://example.com/p?a=1&b=2")).await;
    send(&svc, get("http://example.com/p?b=2&a=1")).await;
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn key_header_separates_entries() {
    let clock = clock();
    let cache = builder(&clock)
        .key_header(HeaderName::from_static("x-tenant"))
        .build()
        .unwrap();
    let (origin, log) = origin(|_, req| {
        let t = req
            .headers()
            .get("x-tenant")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_else(|| "none".to_owned());
        ok("max-age=60", &t)
    });
    let svc = cached(&cache, origin);
    let a = [("x-tenant", "a")];
    let b = [("x-tenant", "b")];
    assert_eq!(body(send(&svc, get_with(URL, &a)).await).await, "a");
    assert_eq!(body(send(&svc, get_with(URL, &b)).await).await, "b");
    assert_eq!(body(send(&svc, get(URL)).await).await, "none");
    assert_eq!(log.calls(), 3);
    let r = send(&svc, get_with(URL, &a)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(body(r).await, "a");
    let r = send(&svc, get_with(URL, &b)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(body(r).await, "b");
    assert_eq!(log.calls(), 3);
}

#[tokio::test]
async fn key_fn_decides_keys_and_none_passes() {
    let clock = clock();
    let cache = builder(&clock)
        .key_fn(|parts| {
            let path = parts.uri.path();
            (!path.starts_with("/private")).then(|| path.to_owned())
        })
        .build()
        .unwrap();
    let (origin, log) = origin(|_, _| ok("max-age=60", "x"));
    let svc = cached(&cache, origin);
    for _ in 0..2 {
        let r = send(&svc, get("http://example.com/private/me")).await;
        assert_eq!(cache_status(&r), "tower-tiered-cache; fwd=bypass");
        assert_eq!(body(r).await, "x");
    }
    assert_eq!(log.calls(), 2);
    // The key is the path alone: the query and the host do not matter.
    send(&svc, get("http://example.com/public?x=1")).await;
    let r = send(&svc, get("http://other.example/public?x=2")).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(log.calls(), 3);
    assert_eq!(cache.stats().passes, 2);
}

// ---------------------------------------------------------------------------
// 19. Configuration errors
// ---------------------------------------------------------------------------

#[test]
fn bad_configuration_is_rejected_naming_the_setting() {
    let cases: Vec<(&str, CacheBuilder)> = vec![
        ("l1_capacity_bytes", Cache::builder().l1_capacity_bytes(0)),
        ("max_body_bytes", Cache::builder().max_body_bytes(0)),
        (
            "l1_max_entry_bytes",
            Cache::builder()
                .l1_capacity_bytes(1024)
                .l1_max_entry_bytes(2048),
        ),
        ("l1_max_entry_bytes", Cache::builder().l1_max_entry_bytes(0)),
        (
            "heuristic_fraction",
            Cache::builder().heuristic_fraction(1.5),
        ),
        (
            "heuristic_fraction",
            Cache::builder().heuristic_fraction(-0.1),
        ),
        (
            "heuristic_fraction",
            Cache::builder().heuristic_fraction(f64::NAN),
        ),
        ("stale_extension", Cache::builder().stale_extension(2.0, 4)),
        (
            "stale_extension",
            Cache::builder().stale_extension(f64::INFINITY, 4),
        ),
        ("max_variants", Cache::builder().max_variants(0)),
        ("max_in_flight", Cache::builder().max_in_flight(0)),
        (
            "max_concurrent_refreshes",
            Cache::builder().max_concurrent_refreshes(0),
        ),
        (
            "circuit_breaker",
            Cache::builder().circuit_breaker(0, secs(30)),
        ),
        (
            "refresh_timeout",
            Cache::builder().refresh_timeout(Duration::ZERO),
        ),
    ];
    for (setting, b) in cases {
        let err = b.build().expect_err(setting);
        assert!(err.is_invalid_setting(), "{setting}");
        assert_eq!(err.setting(), setting);
        assert!(err.to_string().contains(setting), "{err}");
    }
    // The error is a std error.
    let err: Box<dyn std::error::Error> =
        Box::new(Cache::builder().l1_capacity_bytes(0).build().unwrap_err());
    assert!(err.to_string().contains("l1_capacity_bytes"));

    // Edge values that are valid.
    assert!(Cache::builder().build().is_ok());
    assert!(Cache::builder().stale_extension(0.0, 0).build().is_ok());
    assert!(Cache::builder().heuristic_fraction(1.0).build().is_ok());
    assert!(Cache::builder()
        .l1_capacity_bytes(1024)
        .l1_max_entry_bytes(512)
        .build()
        .is_ok());
    assert!(Cache::builder()
        .l1_capacity_bytes(1024)
        .l1_max_entry_bytes(513)
        .build()
        .is_err());
    assert!(Cache::builder()
        .hit_for_pass(Duration::ZERO)
        .build()
        .is_ok());
}

// ---------------------------------------------------------------------------
// 20. Targeted cache control (RFC 9213)
// ---------------------------------------------------------------------------

/// A 200 with `Cache-Control: cc` and the targeted fields `targeted`.
fn targeted_ok(
    cc: &str,
    targeted: &[(&str, &str)],
    body: &str,
) -> Response<http_body_util::Full<Bytes>> {
    let mut headers = vec![("cache-control", cc)];
    headers.extend_from_slice(targeted);
    response(200, &headers, body)
}

#[tokio::test]
async fn rfc9213_2_1_targeted_max_age_overrides_cache_control() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, _| {
        targeted_ok(
            "max-age=10",
            &[("cdn-cache-control", "max-age=60")],
            &format!("v{}", n + 1),
        )
    });
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    // Cache-Control goes downstream unchanged, and so (by default) does
    // the targeted field.
    assert_eq!(header(&r, "cache-control").as_deref(), Some("max-age=10"));
    assert_eq!(
        header(&r, "cdn-cache-control").as_deref(),
        Some("max-age=60")
    );

    // Past Cache-Control's 10 s, within the targeted 60 s.
    clock.advance(secs(59));
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(age(&r), Some(59));
    assert_eq!(header(&r, "cache-control").as_deref(), Some("max-age=10"));
    assert_eq!(
        header(&r, "cdn-cache-control").as_deref(),
        Some("max-age=60")
    );
    assert_eq!(body(r).await, "v1");
    assert_eq!(log.calls(), 1);

    clock.advance(secs(2));
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(body(r).await, "v2");
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn rfc9213_2_1_targeted_no_store_stops_storing_a_public_response() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, _| {
        targeted_ok(
            "public, max-age=60",
            &[("cdn-cache-control", "no-store")],
            "x",
        )
    });
    let svc = cached(&cache, origin);
    for i in 1..=2 {
        let r = send(&svc, get(URL)).await;
        // The second: the URL is hit-for-pass after the first's `no-store`.
        let want = if i == 1 {
            "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=no-store"
        } else {
            HIT_FOR_PASS
        };
        assert_eq!(cache_status(&r), want);
        assert_eq!(
            header(&r, "cache-control").as_deref(),
            Some("public, max-age=60")
        );
        assert_eq!(body(r).await, "x");
        assert_eq!(log.calls(), i);
    }
    assert_eq!(cache.stats().stores, 0);

    // And the other way round: Cache-Control's no-store does not count
    // when a targeted field allows storing.
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = support::origin(|_, _| {
        targeted_ok("no-store", &[("cdn-cache-control", "max-age=60")], "y")
    });
    let svc = cached(&cache, origin);
    assert_eq!(cache_status(&send(&svc, get(URL)).await), MISS_STORED);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(header(&r, "cache-control").as_deref(), Some("no-store"));
    assert_eq!(log.calls(), 1);
}

#[tokio::test]
async fn rfc9213_2_1_targeted_no_cache_and_must_revalidate() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    // The origin answers conditionals with 304.
    let (origin, log) = origin(|_, req| {
        let fields = [
            ("cache-control", "max-age=600"),
            ("cdn-cache-control", "no-cache"),
            ("etag", "\"v1\""),
        ];
        if req.headers().get("if-none-match").is_some() {
            response(304, &fields, "")
        } else {
            response(200, &fields, "body")
        }
    });
    let svc = cached(&cache, origin);
    assert_eq!(cache_status(&send(&svc, get(URL)).await), MISS_STORED);
    // Cache-Control says fresh for 10 min; the targeted no-cache has every
    // use revalidated.
    let r = send(&svc, get(URL)).await;
    assert_eq!(
        cache_status(&r),
        at_tier("tower-tiered-cache; fwd=stale; fwd-status=304; detail=l1")
    );
    assert_eq!(body(r).await, "body");
    assert_eq!(log.calls(), 2);
    assert_eq!(log.last().header("if-none-match"), Some("\"v1\""));

    // must-revalidate in the targeted field: no stale window, though
    // Cache-Control grants one.
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = support::origin(|n, _| {
        targeted_ok(
            "max-age=10, stale-while-revalidate=600",
            &[("cdn-cache-control", "max-age=10, must-revalidate")],
            &format!("v{}", n + 1),
        )
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(20));
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(body(r).await, "v2");
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn rfc9213_2_1_the_first_configured_field_takes_precedence() {
    for (order, fresh_at_40) in [
        (["Foo-Cache-Control", "CDN-Cache-Control"], false),
        (["CDN-Cache-Control", "Foo-Cache-Control"], true),
    ] {
        let clock = clock();
        let cache = builder(&clock)
            .targeted_cache_control(order)
            .build()
            .unwrap();
        let (origin, log) = origin(|_, _| {
            targeted_ok(
                "max-age=10",
                &[
                    ("cdn-cache-control", "max-age=60"),
                    ("foo-cache-control", "max-age=30"),
                ],
                "x",
            )
        });
        let svc = cached(&cache, origin);
        send(&svc, get(URL)).await;
        clock.advance(secs(20));
        // Both allow 20 s; Cache-Control alone would not.
        assert_eq!(
            cache_status(&send(&svc, get(URL)).await),
            hit(),
            "{order:?}"
        );
        clock.advance(secs(20));
        let r = send(&svc, get(URL)).await;
        if fresh_at_40 {
            assert_eq!(cache_status(&r), hit(), "{order:?}");
            assert_eq!(log.calls(), 1);
        } else {
            assert_eq!(cache_status(&r), MISS_STORED, "{order:?}");
            assert_eq!(log.calls(), 2);
        }
    }
}

#[tokio::test]
async fn rfc9213_2_2_an_invalid_targeted_field_falls_back() {
    // To Cache-Control: `Max-Age` is not a Dictionary key (keys are
    // lowercase), so the field is ignored and max-age=10 applies.
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) =
        origin(|_, _| targeted_ok("max-age=10", &[("cdn-cache-control", "Max-Age=60")], "x"));
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(9));
    assert_eq!(cache_status(&send(&svc, get(URL)).await), hit());
    clock.advance(secs(2));
    assert_eq!(cache_status(&send(&svc, get(URL)).await), MISS_STORED);
    assert_eq!(log.calls(), 2);

    // To the next field on the list: Foo's trailing comma spoils it.
    let cache = builder(&clock)
        .targeted_cache_control(["Foo-Cache-Control", "CDN-Cache-Control"])
        .build()
        .unwrap();
    let (origin, log) = support::origin(|_, _| {
        targeted_ok(
            "max-age=10",
            &[
                ("foo-cache-control", "no-store,"),
                ("cdn-cache-control", "max-age=60"),
            ],
            "x",
        )
    });
    let svc = cached(&cache, origin);
    assert_eq!(cache_status(&send(&svc, get(URL)).await), MISS_STORED);
    clock.advance(secs(30));
    assert_eq!(cache_status(&send(&svc, get(URL)).await), hit());
    assert_eq!(log.calls(), 1);
}

#[tokio::test]
async fn rfc9213_private_mode_ignores_targeted_fields_unless_configured() {
    for (opt_in, hit_at_30) in [(false, false), (true, true)] {
        let clock = clock();
        let mut b = builder(&clock).mode(CacheMode::Private);
        if opt_in {
            b = b.targeted_cache_control(["CDN-Cache-Control"]);
        }
        let cache = b.build().unwrap();
        let (origin, log) =
            origin(|_, _| targeted_ok("max-age=10", &[("cdn-cache-control", "max-age=60")], "x"));
        let svc = cached(&cache, origin);
        send(&svc, get(URL)).await;
        clock.advance(secs(30));
        let r = send(&svc, get(URL)).await;
        if hit_at_30 {
            assert_eq!(cache_status(&r), hit());
            assert_eq!(log.calls(), 1);
        } else {
            assert_eq!(cache_status(&r), MISS_STORED);
            assert_eq!(log.calls(), 2);
        }
    }
}

#[tokio::test]
async fn rfc9213_the_obeyed_field_is_stripped_only_when_configured() {
    for strip in [false, true] {
        let clock = clock();
        let cache = builder(&clock)
            .strip_targeted_cache_control(strip)
            .route(Route::prefix("/bypass/").bypass())
            .build()
            .unwrap();
        let (origin, log) = origin(|_, req| {
            let fields = [
                ("cache-control", "max-age=10"),
                ("cdn-cache-control", "max-age=60"),
                // Not on the list: never removed.
                ("foo-cache-control", "no-store"),
                ("etag", "\"v1\""),
            ];
            if req.headers().get("if-none-match").is_some() {
                // Nothing but the validator: the stored fields decide.
                response(304, &[("etag", "\"v1\"")], "")
            } else {
                response(200, &fields, "x")
            }
        });
        let svc = cached(&cache, origin);
        let expect = |r: &Response<_>, what: &str| {
            let cdn = header(r, "cdn-cache-control");
            assert_eq!(cdn.is_none(), strip, "strip={strip}, {what}: {cdn:?}");
            assert_eq!(
                header(r, "cache-control").as_deref(),
                Some("max-age=10"),
                "{what}"
            );
            assert_eq!(
                header(r, "foo-cache-control").as_deref(),
                Some("no-store"),
                "{what}"
            );
        };
        let r = send(&svc, get(URL)).await;
        assert_eq!(cache_status(&r), MISS_STORED);
        expect(&r, "miss");
        clock.advance(secs(30));
        let r = send(&svc, get(URL)).await;
        assert_eq!(cache_status(&r), hit());
        expect(&r, "hit");
        // Stale at 61 s: revalidated with a bare 304. The stored copy kept
        // the targeted field, so the freshened entry is fresh for another
        // 60 s (Cache-Control's 10 s would end at 71 s).
        clock.advance(secs(31));
        let r = send(&svc, get(URL)).await;
        assert_eq!(
            cache_status(&r),
            at_tier("tower-tiered-cache; fwd=stale; fwd-status=304; detail=l1")
        );
        expect(&r, "revalidated");
        clock.advance(secs(30));
        let r = send(&svc, get(URL)).await;
        assert_eq!(cache_status(&r), hit(), "strip={strip}");
        expect(&r, "hit after the 304");
        assert_eq!(log.calls(), 2);
        // Passes and unsafe methods are forwarded the same way.
        let r = send(&svc, get("http://example.com/bypass/x")).await;
        assert!(cache_status(&r).contains("bypass"), "{}", cache_status(&r));
        expect(&r, "bypass");
        let r = send(&svc, request(Method::POST, URL, &[])).await;
        expect(&r, "POST");
    }
}

// ---------------------------------------------------------------------------
// 21. Adaptive TTL
// ---------------------------------------------------------------------------

/// Adaptive TTL over a 10 s window: more than 50 reads double the TTL the
/// cache chose, fewer than 5 halve it. Every read is counted (the default
/// counts one in 8 past an entry's first reads), so that 60 reads are 60.
fn adaptive() -> AdaptiveTtl {
    AdaptiveTtl::new()
        .hot_after(50, 2.0)
        .cold_under(5, 0.5)
        .window(secs(10))
        .read_sample(1)
}

/// Reads `url` `n` times, each a fresh hit.
async fn hits(svc: &Svc, url: &str, n: usize) {
    for _ in 0..n {
        assert_eq!(cache_status(&send(svc, get(url)).await), hit());
    }
}

/// `url` is a fresh hit `age` seconds old.
async fn hit_aged(svc: &Svc, url: &str, age_secs: u64) {
    let r = send(svc, get(url)).await;
    assert_eq!(cache_status(&r), hit(), "{url}");
    assert_eq!(age(&r), Some(age_secs), "{url}");
}

/// `url` is fetched and stored again.
async fn stored_again(svc: &Svc, url: &str) {
    assert_eq!(
        cache_status(&send(svc, get(url)).await),
        MISS_STORED,
        "{url}"
    );
}

/// A route's TTL forced on headerless responses: 10 s becomes 20 s for a
/// key read 60 times in the window, 5 s for one read twice; `Age` and
/// expiry follow the adapted TTL, from whichever tier answers.
#[tokio::test]
async fn adaptive_ttl_doubles_a_hot_keys_route_ttl_and_halves_a_cold_ones() {
    let clock = clock();
    let cache = builder(&clock)
        .route(Route::prefix("/api").ttl(secs(10)).force())
        .adaptive_ttl(adaptive())
        .build()
        .unwrap();
    let (origin, log) = origin(|n, _| ok("", &format!("v{}", n + 1)));
    let svc = cached(&cache, origin);
    let (hot, cold) = ("http://example.com/api/hot", "http://example.com/api/cold");
    stored_again(&svc, hot).await;
    stored_again(&svc, cold).await;
    clock.advance(secs(1));
    hits(&svc, hot, 60).await;
    hits(&svc, cold, 2).await;
    // A key seen for the first time kept its route TTL: 10 s.
    clock.advance(secs(10));
    stored_again(&svc, hot).await;
    stored_again(&svc, cold).await;
    let st = cache.stats();
    assert_eq!((st.ttl_lengthened, st.ttl_shortened), (1, 1));
    let metrics = cache.prometheus();
    for change in ["lengthened", "shortened"] {
        let line = format!("tower_cache_adaptive_ttl_total{{change=\"{change}\"}} 1\n");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    // The cold key: 5 s.
    clock.advance(secs(4));
    hit_aged(&svc, cold, 4).await;
    clock.advance(secs(2));
    stored_again(&svc, cold).await;
    // The hot key: 20 s.
    clock.advance(secs(13));
    hit_aged(&svc, hot, 19).await;
    clock.advance(secs(2));
    stored_again(&svc, hot).await;
    assert_eq!(log.calls(), 6);
}

/// An origin's `max-age` is never lengthened or shortened by adaptive TTL,
/// however often (or rarely) its key is read, unless the route says
/// `force`.
#[tokio::test]
async fn adaptive_ttl_changes_an_origins_max_age_only_on_a_force_route() {
    let clock = clock();
    let cache = builder(&clock)
        .route(Route::prefix("/forced").force())
        .adaptive_ttl(adaptive())
        .build()
        .unwrap();
    let (origin, log) = origin(|n, _| ok("max-age=10", &format!("v{}", n + 1)));
    let svc = cached(&cache, origin);
    let plain = "http://example.com/plain";
    let rare = "http://example.com/rare";
    let forced = "http://example.com/forced/item";
    for u in [plain, rare, forced] {
        stored_again(&svc, u).await;
    }
    clock.advance(secs(1));
    hits(&svc, plain, 60).await;
    hits(&svc, forced, 60).await;
    clock.advance(secs(10));
    for u in [plain, rare, forced] {
        stored_again(&svc, u).await;
    }
    // `max-age=10` holds for the hot and the unread key alike.
    clock.advance(secs(9));
    hit_aged(&svc, plain, 9).await;
    hit_aged(&svc, rare, 9).await;
    clock.advance(secs(2));
    stored_again(&svc, plain).await;
    stored_again(&svc, rare).await;
    // On the force route, the hot key's 10 s became 20 s.
    hit_aged(&svc, forced, 11).await;
    let st = cache.stats();
    assert_eq!((st.ttl_lengthened, st.ttl_shortened), (1, 0));
    assert_eq!(log.calls(), 8);
}

// ---------------------------------------------------------------------------
// Regressions for bugs found while writing these tests. The first three
// were fixed in src/ while this file was written; the ignored ones are open.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn background_refresh_is_not_counted_as_a_client_request() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, req| {
        if n >= 2 && req.headers().contains_key("if-none-match") {
            response(
                304,
                &[("cache-control", "max-age=10, stale-while-revalidate=60")],
                "",
            )
        } else {
            response(
                200,
                &[
                    ("cache-control", "max-age=10, stale-while-revalidate=60"),
                    ("etag", "\"e\""),
                ],
                "x",
            )
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await; // miss
    clock.advance(secs(15));
    send(&svc, get(URL)).await; // stale; the refresh gets a 200
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);
    clock.advance(secs(15));
    send(&svc, get(URL)).await; // stale; the refresh gets a 304
    assert!(eventually(|| cache.stats().refresh_ok == 2).await);
    assert_eq!(log.calls(), 3);
    let st = cache.stats();
    assert_eq!(st.stale, 2);
    assert_eq!(st.misses, 1, "a background refresh is not a client miss");
    assert_eq!(
        st.revalidated, 0,
        "a background 304 is not a client revalidation"
    );
    assert_eq!(st.requests, 3, "three client requests");
}

#[tokio::test]
async fn failed_upstream_call_counts_as_a_request() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, _log) = origin_fn(|n, _| async move {
        if n == 0 {
            Ok(response(503, &[], "down"))
        } else {
            Err(OriginError("boom"))
        }
    });
    let svc = cached(&cache, origin);
    assert_eq!(send(&svc, get(URL)).await.status(), 503);
    assert!(call(&svc, get(URL)).await.is_err());
    let st = cache.stats();
    assert_eq!(st.upstream_errors, 2);
    assert_eq!(st.requests, 2, "every request ends in one outcome counter");
    assert_eq!(st.misses, 2);
}

#[tokio::test(start_paused = true)]
async fn timed_out_probe_reopens_the_breaker() {
    // L1 only: this test runs on paused time, and with a real Redis socket
    // tokio jumps the paused clock forward whenever the runtime waits on
    // it, so every L2 operation's deadline passes at once (the L2 reads
    // and writes here are timed out by the test's clock, not by Redis).
    if crate::TIERS != crate::tiers::Tiers::L1 {
        return;
    }
    let clock = clock();
    let cache = builder(&clock)
        .circuit_breaker(1, secs(30))
        .refresh_timeout(secs(1))
        .build()
        .unwrap();
    let hang = Gate::new(); // never opened
    let h = hang.clone();
    let (origin, log) = origin_fn(move |n, _| {
        let h = h.clone();
        async move {
            match n {
                0 => {}
                1 => return Ok::<_, Infallible>(response(503, &[], "down")),
                2 => h.pass().await,
                _ => {}
            }
            Ok(ok(
                "max-age=10, stale-while-revalidate=600",
                &format!("v{}", n + 1),
            ))
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(15));
    send(&svc, get(URL)).await;
    assert!(eventually(|| cache.stats().refresh_failed == 1).await);
    assert_eq!(cache.breaker_state(), BreakerState::Open);

    // The probe hangs and times out after 1 s.
    clock.advance(secs(30));
    send(&svc, get(URL)).await;
    assert!(eventually(|| cache.stats().refresh_failed == 2).await);
    assert_eq!(log.calls(), 3);
    assert_eq!(
        cache.breaker_state(),
        BreakerState::Open,
        "a probe that timed out failed"
    );

    // After another open period the next probe goes through.
    clock.advance(secs(30));
    send(&svc, get(URL)).await;
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);
    assert_eq!(log.calls(), 4);
    assert_eq!(cache.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn rfc9110_14_a_range_of_a_stored_response_is_answered_from_the_cache() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, _| {
        response(
            200,
            &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
            "0123456789",
        )
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    let ranged = |range: &'static str, extra: Option<(&'static str, &'static str)>| {
        let svc = svc.clone();
        async move {
            let mut headers = vec![("range", range)];
            headers.extend(extra);
            let r = send(&svc, get_with(URL, &headers)).await;
            let status = r.status().as_u16();
            let cr = header(&r, "content-range");
            let cl = header(&r, "content-length");
            let b = String::from_utf8(body(r).await.to_vec()).unwrap();
            (status, cr, cl, b)
        }
    };
    let part = |cr: &str, body: &str| {
        (
            206,
            Some(cr.to_owned()),
            Some(body.len().to_string()),
            body.to_owned(),
        )
    };
    assert_eq!(ranged("bytes=2-4", None).await, part("bytes 2-4/10", "234"));
    assert_eq!(ranged("bytes=7-", None).await, part("bytes 7-9/10", "789"));
    assert_eq!(ranged("bytes=-2", None).await, part("bytes 8-9/10", "89"));
    assert_eq!(
        ranged("bytes=0-1,2-3", None).await,
        part("bytes 0-3/10", "0123")
    );
    // §15.5.17: nothing satisfiable.
    let (status, cr, _, b) = ranged("bytes=10-", None).await;
    assert_eq!(
        (status, cr.as_deref(), b.as_str()),
        (416, Some("bytes */10"), "")
    );
    // §13.1.5: If-Range with the stored strong ETag applies the range,
    // another validator gets the whole response.
    assert_eq!(
        ranged("bytes=0-0", Some(("if-range", "\"v1\""))).await,
        part("bytes 0-0/10", "0")
    );
    let (status, _, _, b) = ranged("bytes=0-0", Some(("if-range", "\"v0\""))).await;
    assert_eq!((status, b.as_str()), (200, "0123456789"));
    // Disjoint ranges and malformed ones get the whole response (§14.2).
    for r in ["bytes=0-1,5-6", "bytes=5-2", "lines=1-2"] {
        let (status, _, _, b) = ranged(r, None).await;
        assert_eq!((status, b.as_str()), (200, "0123456789"), "{r}");
    }
    // HEAD ignores Range.
    let r = send(&svc, request(Method::HEAD, URL, &[("range", "bytes=0-1")])).await;
    assert_eq!(r.status(), 200);
    assert_eq!(log.calls(), 1, "every answer came from the cache");
}

#[tokio::test]
async fn rfc9111_5_2_2_4_qualified_no_cache_and_private_fields_stay_out_of_reuse() {
    for mode in [CacheMode::Shared, CacheMode::Private] {
        let clock = clock();
        let cache = builder(&clock).mode(mode).build().unwrap();
        let (origin, log) = origin(|_, _| {
            response(
                200,
                &[
                    (
                        "cache-control",
                        "max-age=60, no-cache=\"x-secret\", private=\"x-user\"",
                    ),
                    ("x-secret", "s1"),
                    ("x-user", "alice"),
                    ("x-public", "p"),
                ],
                "x",
            )
        });
        let svc = cached(&cache, origin);
        // The response from the origin keeps every field.
        let r = send(&svc, get(URL)).await;
        assert_eq!(cache_status(&r), MISS_STORED, "{mode:?}");
        for (name, value) in [("x-secret", "s1"), ("x-user", "alice"), ("x-public", "p")] {
            assert_eq!(header(&r, name).as_deref(), Some(value), "{mode:?} {name}");
        }
        // Reused without revalidation: the named fields are gone (`private`
        // names only for a shared cache, RFC 9111 §5.2.2.7).
        let r = send(&svc, get(URL)).await;
        assert_eq!(cache_status(&r), hit(), "{mode:?}");
        assert_eq!(header(&r, "x-secret"), None, "{mode:?}");
        let user = (mode == CacheMode::Private).then(|| "alice".to_owned());
        assert_eq!(header(&r, "x-user"), user, "{mode:?}");
        assert_eq!(header(&r, "x-public").as_deref(), Some("p"), "{mode:?}");
        assert_eq!(log.calls(), 1);
    }
}

#[tokio::test]
async fn rfc9110_15_4_5_a_304_from_the_cache_carries_the_listed_fields() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let expires = http_date(T0 + 60_000);
    let (origin, _log) = origin(move |_, _| {
        response(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"v1\""),
                ("content-location", "/resource.en"),
                ("vary", "accept-language"),
                ("expires", &expires),
                ("content-type", "text/plain"),
                ("x-other", "1"),
            ],
            "hello",
        )
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    let r = send(&svc, get_with(URL, &[("if-none-match", "\"v1\"")])).await;
    assert_eq!(r.status(), 304);
    assert_eq!(cache_status(&r), hit());
    for name in [
        "cache-control",
        "etag",
        "content-location",
        "vary",
        "expires",
        "date",
    ] {
        assert!(
            r.headers().contains_key(name),
            "{name} missing from the 304"
        );
    }
    // Representation metadata of the body not sent stays out.
    assert_eq!(header(&r, "content-type"), None);
    assert_eq!(header(&r, "x-other"), None);
    assert!(body(r).await.is_empty());
}

#[tokio::test]
async fn rfc9111_3_an_interim_response_is_never_stored() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    // A service that answers with a 1xx as its response (hyper's client
    // never does: it reads past interim responses).
    let (origin, log) = origin(|_, _| {
        response(
            103,
            &[
                ("cache-control", "max-age=60"),
                ("link", "</a.css>; rel=preload"),
            ],
            "",
        )
    });
    let svc = cached(&cache, origin);
    for _ in 0..2 {
        let r = send(&svc, get(URL)).await;
        assert_eq!(r.status(), 103);
        assert!(!cache_status(&r).contains("stored"), "{}", cache_status(&r));
    }
    assert_eq!(log.calls(), 2);
    assert_eq!(cache.stats().stores, 0);
}

/// What an origin holding `body` answers `range` (`bytes=a-b` / `bytes=a-`)
/// with: a 206 with `etag` and `max-age=60`, or the whole 200.
fn part_of_body(
    body: &str,
    range: Option<&str>,
    etag: &str,
) -> Response<http_body_util::Full<bytes::Bytes>> {
    let cc = ("cache-control", "max-age=60");
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return response(200, &[cc, ("etag", etag)], body);
    };
    let (a, b) = spec.split_once('-').unwrap();
    let a: usize = a.parse().unwrap();
    let b: usize = b.parse().unwrap_or(body.len() - 1).min(body.len() - 1);
    let cr = format!("bytes {a}-{b}/{}", body.len());
    response(
        206,
        &[cc, ("etag", etag), ("content-range", &cr)],
        &body[a..=b],
    )
}

/// What an origin holding `0123456789` (strong `ETag` `"v1"`) answers
/// `req`, by its `Range` (see [`part_of_body`]).
fn digits_part(req: &http::Request<()>) -> Response<http_body_util::Full<bytes::Bytes>> {
    let range = req
        .headers()
        .get("range")
        .map(|v| v.to_str().unwrap().to_owned());
    part_of_body("0123456789", range.as_deref(), "\"v1\"")
}

/// Sends a `Range` request: (status, Content-Range, body).
async fn get_range(svc: &Svc, range: &str) -> (u16, Option<String>, String) {
    let r = send(svc, get_with(URL, &[("range", range)])).await;
    let status = r.status().as_u16();
    let cr = header(&r, "content-range");
    (
        status,
        cr,
        String::from_utf8(body(r).await.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn rfc9111_3_3_parts_are_stored_answered_and_combined_into_the_whole() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, req| digits_part(req));
    let svc = cached(&cache, origin);
    let part = |cr: &str, b: &str| (206, Some(cr.to_owned()), b.to_owned());
    assert_eq!(
        get_range(&svc, "bytes=0-3").await,
        part("bytes 0-3/10", "0123")
    );
    assert_eq!(log.calls(), 1);
    // Within the stored part: from the cache.
    assert_eq!(
        get_range(&svc, "bytes=1-2").await,
        part("bytes 1-2/10", "12")
    );
    assert_eq!(log.calls(), 1);
    // Beyond it: upstream, and the new part joins the stored one (§3.4).
    assert_eq!(
        get_range(&svc, "bytes=2-6").await,
        part("bytes 2-6/10", "23456")
    );
    assert_eq!(log.calls(), 2);
    assert_eq!(
        get_range(&svc, "bytes=0-6").await,
        part("bytes 0-6/10", "0123456")
    );
    assert_eq!(log.calls(), 2);
    // The last part completes the representation: stored whole.
    assert_eq!(
        get_range(&svc, "bytes=7-").await,
        part("bytes 7-9/10", "789")
    );
    assert_eq!(log.calls(), 3);
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(cache_status(&r), hit());
    assert_eq!(body(r).await, "0123456789");
    assert_eq!(log.calls(), 3);
}

#[tokio::test]
async fn rfc9111_4_4_an_unsafe_method_invalidates_a_stored_part() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, req| {
        if req.method() == Method::POST {
            return response(204, &[], "");
        }
        digits_part(req)
    });
    let svc = cached(&cache, origin);
    get_range(&svc, "bytes=0-3").await;
    get_range(&svc, "bytes=1-2").await;
    assert_eq!(log.calls(), 1);
    send(&svc, request(Method::POST, URL, &[])).await;
    assert_eq!(log.calls(), 2);
    assert_eq!(get_range(&svc, "bytes=1-2").await.2, "12");
    assert_eq!(log.calls(), 3, "the part was invalidated");
}

#[tokio::test]
async fn rfc9111_3_4_only_parts_of_one_representation_are_combined() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let version = Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let v = Arc::clone(&version);
    let (origin, log) = origin(move |_, req| {
        let range = req
            .headers()
            .get("range")
            .map(|v| v.to_str().unwrap().to_owned());
        let n = v.load(Ordering::SeqCst);
        let body = if n == 1 { "0123456789" } else { "abcdefghij" };
        part_of_body(body, range.as_deref(), &format!("\"v{n}\""))
    });
    let svc = cached(&cache, origin);
    get_range(&svc, "bytes=0-3").await;
    version.store(2, Ordering::SeqCst);
    // A part of the new version meets the old part: not joined, it
    // replaces it.
    assert_eq!(get_range(&svc, "bytes=4-6").await.2, "efg");
    assert_eq!(log.calls(), 2);
    assert_eq!(get_range(&svc, "bytes=0-1").await.2, "ab");
    assert_eq!(log.calls(), 3, "the old part was not kept");
    // A part apart from the stored one replaces it too: the newest stays.
    assert_eq!(get_range(&svc, "bytes=1-1").await.2, "b");
    assert_eq!(log.calls(), 3);
    assert_eq!(get_range(&svc, "bytes=5-6").await.2, "fg");
    assert_eq!(log.calls(), 4);
}

/// A stored part that starts past the first byte answers what lies within
/// it, and a range past the end with a `416`, from the cache.
#[tokio::test]
async fn rfc9111_3_3_a_part_in_the_middle_answers_within_it_and_416_past_the_end() {
    let clock = clock();
    // A part of 3 bytes fits in 8, wherever it starts.
    let cache = builder(&clock).max_body_bytes(8).build().unwrap();
    let (origin, log) = origin(|_, req| digits_part(req));
    let svc = cached(&cache, origin);
    let part = |cr: &str, b: &str| (206, Some(cr.to_owned()), b.to_owned());
    assert_eq!(
        get_range(&svc, "bytes=4-6").await,
        part("bytes 4-6/10", "456")
    );
    assert_eq!(log.calls(), 1);
    clock.advance(secs(5));
    let r = send(&svc, get_with(URL, &[("range", "bytes=5-6")])).await;
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "age").as_deref(), Some("5"));
    assert_eq!(header(&r, "content-range").as_deref(), Some("bytes 5-6/10"));
    assert_eq!(body(r).await, "56");
    assert_eq!(log.calls(), 1, "answered from the stored part");
    let r = send(&svc, get_with(URL, &[("range", "bytes=20-30")])).await;
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "content-range").as_deref(), Some("bytes */10"));
    assert_eq!(log.calls(), 1, "the 416 came from the stored part");
}

/// A `200` to a `Range` request is not a part, whatever `Content-Range` it
/// carries: it is not stored under the part's key.
#[tokio::test]
async fn rfc9111_3_3_a_200_with_content_range_is_not_stored_as_a_part() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, _| {
        let h = [
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
            ("content-range", "bytes 0-3/10"),
        ];
        response(200, &h, "0123")
    });
    let svc = cached(&cache, origin);
    for _ in 0..2 {
        let r = send(&svc, get_with(URL, &[("range", "bytes=0-3")])).await;
        assert_eq!(r.status(), 200);
        assert_eq!(body(r).await, "0123");
    }
    assert_eq!(log.calls(), 2);
    assert_eq!(cache.stats().stores, 0);
}

#[tokio::test]
async fn rfc9111_3_3_parts_that_cannot_be_trusted_are_not_stored() {
    for (etag, cr, body) in [
        // A weak validator: parts may not be combined, nor reused.
        ("W/\"v1\"", "bytes 0-3/10", "0123"),
        // A body longer or shorter than its Content-Range says.
        ("\"v1\"", "bytes 0-3/10", "012"),
        ("\"v1\"", "bytes 0-3/10", "01234"),
        // A part past the end, an unknown length.
        ("\"v1\"", "bytes 0-10/10", "01234567890"),
        ("\"v1\"", "bytes 0-3/*", "0123"),
    ] {
        let clock = clock();
        let cache = builder(&clock).build().unwrap();
        let (origin, log) = origin(move |_, _| {
            let h = [
                ("cache-control", "max-age=60"),
                ("etag", etag),
                ("content-range", cr),
            ];
            response(206, &h, body)
        });
        let svc = cached(&cache, origin);
        for _ in 0..2 {
            let (status, got_cr, got) = get_range(&svc, "bytes=0-3").await;
            assert_eq!(
                (status, got_cr.as_deref(), got.as_str()),
                (206, Some(cr), body)
            );
        }
        assert_eq!(log.calls(), 2, "{etag} {cr} {body:?}: stored");
        assert_eq!(cache.stats().stores, 0);
    }
}

#[tokio::test]
async fn range_request_on_a_stale_entry_does_not_evict_it() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, req| {
        let cc = "max-age=10, stale-while-revalidate=60";
        if req.headers().contains_key("range") {
            response(
                206,
                &[("cache-control", cc), ("content-range", "bytes 0-1/7")],
                "pa",
            )
        } else {
            ok(cc, &format!("payload{}", n + 1))
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(15));
    // The stale entry answers the range itself (RFC 9110 §14).
    let r = send(&svc, get_with(URL, &[("range", "bytes=0-1")])).await;
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range").as_deref(), Some("bytes 0-1/8"));
    assert_eq!(body(r).await, "pa");
    assert!(
        eventually(|| {
            let st = cache.stats();
            st.refresh_ok + st.refresh_failed == 1
        })
        .await
    );
    assert_eq!(log.calls(), 2);
    assert_eq!(
        log.last().header("range"),
        None,
        "the refresh asks for the whole representation"
    );
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(body(r).await, "payload2");
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn body_error_while_buffering_reaches_the_client_and_counts_once() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin_fn(|_, _| async {
        Ok::<_, Infallible>(with_header(
            Response::new(FailingBody::new(&["part one, ", "part two"])),
            "cache-control",
            "max-age=60",
        ))
    });
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=uri-miss; fwd-status=200"
    );
    // The bytes read so far arrive, then the origin's error.
    let mut b = r.into_body();
    let mut got = Vec::new();
    let err = loop {
        match http_body_util::BodyExt::frame(&mut b).await {
            Some(Ok(frame)) => got.extend_from_slice(&frame.into_data().unwrap()),
            Some(Err(e)) => break e,
            None => panic!("the body ended without its error"),
        }
    };
    assert_eq!(got, b"part one, part two");
    assert_eq!(err, OriginError("body cut short"));
    assert_eq!(log.calls(), 1);
    let st = cache.stats();
    assert_eq!(st.stores, 0);
    assert_eq!(st.requests, 1, "one request, one outcome");
    assert_eq!(st.misses, 1);
}

#[tokio::test]
async fn revalidation_by_a_304_without_date_restarts_the_age() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, _| match n {
        0 => response(
            200,
            &[("cache-control", "max-age=10"), ("etag", "\"e\"")],
            "x",
        ),
        _ => response(
            304,
            &[("cache-control", "max-age=100"), ("etag", "\"e\"")],
            "",
        ),
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(15));
    let r = send(&svc, get(URL)).await;
    assert_eq!(
        cache_status(&r),
        at_tier("tower-tiered-cache; fwd=stale; fwd-status=304; detail=l1")
    );
    assert_eq!(age(&r), Some(0), "the 304 was received just now");
    // Fresh for 100 s from the 304.
    clock.advance(secs(90));
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), hit());
    assert_eq!(age(&r), Some(90));
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn no_store_request_on_a_stale_entry_does_not_evict_it() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, _| {
        ok(
            "max-age=10, stale-while-revalidate=60",
            &format!("v{}", n + 1),
        )
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(15));
    let r = send(&svc, get_with(URL, &[("cache-control", "no-store")])).await;
    assert_eq!(
        cache_status(&r),
        at_tier("tower-tiered-cache; hit; ttl=-5; detail=l1")
    );
    assert_eq!(body(r).await, "v1");
    assert!(
        eventually(|| {
            let st = cache.stats();
            st.refresh_ok + st.refresh_failed == 1
        })
        .await
    );
    assert_eq!(log.calls(), 2);
    // Other clients still have an entry: the refreshed one (or the stale one).
    let r = send(&svc, get(URL)).await;
    assert!(
        cache_status(&r).starts_with("tower-tiered-cache; hit"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(log.calls(), 2);
}
