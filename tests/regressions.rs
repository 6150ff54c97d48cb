//! Regression tests for bugs a review found (reproduced in a scratch crate,
//! then fixed in src/). Each test fails on the old behaviour.
//!
//! Time is a `ManualClock` moved by hand; no test sleeps for a TTL.

mod support;

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use tower_tiered_cache::{Cache, CacheBuilder, ManualClock, Route, SetCookiePolicy};

use support::*;

fn builder(clock: &ManualClock) -> CacheBuilder {
    Cache::builder().clock(clock.clone())
}

const HIT: &str = "tower-tiered-cache; hit; detail=l1";
const MISS_STORED: &str = "tower-tiered-cache; fwd=uri-miss; fwd-status=200; stored";
const NO_FRESHNESS: &str = "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=no-freshness";
const HIT_FOR_PASS: &str = "tower-tiered-cache; fwd=uri-miss; detail=hit-for-pass";

fn set_cookies<B>(r: &Response<B>) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Set-Cookie from a 304 is the revalidating client's alone
// ---------------------------------------------------------------------------

#[tokio::test]
async fn set_cookie_from_a_304_is_not_stored_under_strip() {
    let clock = clock();
    let cache = builder(&clock)
        .set_cookie(SetCookiePolicy::Strip)
        .build()
        .unwrap();
    let (origin, log) = origin(|n, req| {
        if n == 0 {
            response(
                200,
                &[
                    ("cache-control", "max-age=10"),
                    ("etag", "\"v1\""),
                    ("set-cookie", "sid=alice0"),
                ],
                "hello",
            )
        } else {
            assert_eq!(
                req.headers()
                    .get("if-none-match")
                    .map(|v| v.to_str().unwrap()),
                Some("\"v1\"")
            );
            response(
                304,
                &[
                    ("cache-control", "max-age=10"),
                    ("etag", "\"v1\""),
                    ("set-cookie", "sid=ALICE"),
                ],
                "",
            )
        }
    });
    let svc = cached(&cache, origin);

    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(set_cookies(&r), ["sid=alice0"]);
    assert_eq!(body(r).await, "hello");

    clock.advance(secs(20));
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=stale; fwd-status=304; detail=l1"
    );
    assert_eq!(set_cookies(&r), ["sid=ALICE"], "the revalidating client");
    assert_eq!(body(r).await, "hello");
    assert_eq!(log.calls(), 2);

    // Another client: a hit, and nobody's cookie.
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), HIT);
    assert_eq!(set_cookies(&r), Vec::<String>::new());
    assert_eq!(body(r).await, "hello");
    assert_eq!(log.calls(), 2);
}

// ---------------------------------------------------------------------------
// 2-3. An invalidation during a background refresh is not undone
// ---------------------------------------------------------------------------

#[tokio::test]
async fn invalidation_is_not_undone_by_a_late_failed_refresh() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    let (origin, log) = origin_fn(move |n, req| {
        let g = g.clone();
        async move {
            Ok::<_, Infallible>(if req.method() == Method::PUT {
                response(204, &[], "")
            } else if n == 0 {
                ok("max-age=1, stale-while-revalidate=60", "OLD")
            } else if n == 1 {
                // The background refresh: slow, then failing.
                g.pass().await;
                response(503, &[], "down")
            } else {
                ok("max-age=60", "NEW")
            })
        }
    });
    let svc = cached(&cache, origin);
    assert_eq!(body(send(&svc, get(URL)).await).await, "OLD");

    clock.advance(secs(5));
    let r = send(&svc, get(URL)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; hit; ttl=-4; detail=l1"
    );
    assert_eq!(body(r).await, "OLD");
    assert!(eventually(|| log.calls() == 2).await, "the refresh started");

    let r = send(&svc, request(Method::PUT, URL, &[])).await;
    assert_eq!(r.status(), 204);
    assert_eq!(cache_status(&r), "tower-tiered-cache; fwd=method");
    assert_eq!(cache.stats().invalidations, 1);
    assert_eq!(log.calls(), 3);

    gate.open();
    assert!(eventually(|| cache.stats().refresh_failed == 1).await);

    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(body(r).await, "NEW");
    assert_eq!(log.calls(), 4);
}

#[tokio::test]
async fn invalidation_is_not_undone_by_a_late_304() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    let (origin, log) = origin_fn(move |n, req| {
        let g = g.clone();
        async move {
            Ok::<_, Infallible>(if req.method() == Method::PUT {
                response(204, &[], "")
            } else if n == 0 {
                response(
                    200,
                    &[
                        ("cache-control", "max-age=1, stale-while-revalidate=60"),
                        ("etag", "\"e\""),
                    ],
                    "OLD",
                )
            } else if n == 1 {
                // The background revalidation: slow, then "not modified".
                assert!(req.headers().contains_key("if-none-match"));
                g.pass().await;
                response(
                    304,
                    &[("cache-control", "max-age=60"), ("etag", "\"e\"")],
                    "",
                )
            } else {
                ok("max-age=60", "NEW")
            })
        }
    });
    let svc = cached(&cache, origin);
    assert_eq!(body(send(&svc, get(URL)).await).await, "OLD");

    clock.advance(secs(5));
    let r = send(&svc, get(URL)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; hit; ttl=-4; detail=l1"
    );
    assert_eq!(body(r).await, "OLD");
    assert!(eventually(|| log.calls() == 2).await, "the refresh started");

    let r = send(&svc, request(Method::PUT, URL, &[])).await;
    assert_eq!(r.status(), 204);
    assert_eq!(cache.stats().invalidations, 1);

    gate.open();
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);
    assert_eq!(cache.stats().stores, 1, "the 304 replaced nothing");

    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(body(r).await, "NEW");
    assert_eq!(log.calls(), 4);
}

// ---------------------------------------------------------------------------
// 4. Configured stale windows do not invent freshness
// ---------------------------------------------------------------------------

#[tokio::test]
async fn default_stale_while_revalidate_does_not_store_headerless_responses() {
    let clock = clock();
    let cache = builder(&clock)
        .default_stale_while_revalidate(secs(30))
        .build()
        .unwrap();
    let (origin, log) = origin(|n, _| ok("", &format!("user-data-{n}")));
    let svc = cached(&cache, origin);

    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), NO_FRESHNESS);
    assert_eq!(body(r).await, "user-data-0");
    clock.advance(secs(1));
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), HIT_FOR_PASS);
    assert_eq!(body(r).await, "user-data-1");
    assert_eq!(log.calls(), 2);
    let st = cache.stats();
    assert_eq!(st.stores, 0);
    assert_eq!(st.hits + st.stale, 0);
    assert_eq!(st.l1_entries, 0);
}

#[tokio::test]
async fn route_stale_while_revalidate_without_force_does_not_store_headerless_responses() {
    let clock = clock();
    let cache = builder(&clock)
        .route(Route::prefix("/swr").stale_while_revalidate(secs(30)))
        .build()
        .unwrap();
    let (origin, log) = origin(|n, _| ok("", &format!("user-data-{n}")));
    let svc = cached(&cache, origin);
    let url = "http://example.com/swr/me";

    let r = send(&svc, get(url)).await;
    assert_eq!(cache_status(&r), NO_FRESHNESS);
    assert_eq!(body(r).await, "user-data-0");
    clock.advance(secs(1));
    let r = send(&svc, get(url)).await;
    assert_eq!(cache_status(&r), HIT_FOR_PASS);
    assert_eq!(body(r).await, "user-data-1");
    assert_eq!(log.calls(), 2);
    let st = cache.stats();
    assert_eq!(st.stores, 0);
    assert_eq!(st.hits + st.stale, 0);
}

#[tokio::test]
async fn default_stale_while_revalidate_still_extends_heuristic_freshness() {
    let clock = clock();
    let cache = builder(&clock)
        .default_stale_while_revalidate(secs(30))
        .build()
        .unwrap();
    // Modified 1000 s ago: fresh for 100 s (10 %), then 30 s stale-while-revalidate.
    let lm = http_date(T0 - 1_000_000);
    let (origin, log) =
        origin(move |n, _| response(200, &[("last-modified", &lm)], &format!("v{}", n + 1)));
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(body(r).await, "v1");
    clock.advance(secs(50));
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), HIT);
    assert_eq!(body(r).await, "v1");
    clock.advance(secs(60)); // 110 s: stale, within the 30 s window
    let r = send(&svc, get(URL)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; hit; ttl=-10; detail=l1"
    );
    assert_eq!(body(r).await, "v1");
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn forced_route_with_stale_while_revalidate_stores_headerless_responses() {
    let clock = clock();
    let cache = builder(&clock)
        .route(
            Route::prefix("/forced")
                .ttl(secs(10))
                .stale_while_revalidate(secs(30))
                .force(),
        )
        .build()
        .unwrap();
    let (origin, log) = origin(|n, _| ok("", &format!("v{}", n + 1)));
    let svc = cached(&cache, origin);
    let url = "http://example.com/forced/me";
    let r = send(&svc, get(url)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(body(r).await, "v1");
    clock.advance(secs(5));
    let r = send(&svc, get(url)).await;
    assert_eq!(cache_status(&r), HIT);
    assert_eq!(body(r).await, "v1");
    clock.advance(secs(15)); // 20 s: stale, within the route's 30 s window
    let r = send(&svc, get(url)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; hit; ttl=-10; detail=l1"
    );
    assert_eq!(body(r).await, "v1");
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);
    assert_eq!(log.calls(), 2);
    assert_eq!(cache.stats().stores, 2);
}

// ---------------------------------------------------------------------------
// 5. Entries under the caps fit in L1
// ---------------------------------------------------------------------------

#[tokio::test]
async fn entry_just_under_the_caps_is_stored_in_a_small_l1() {
    const LEN: usize = 1_040_000;
    let clock = clock();
    let cache = builder(&clock)
        .l1_capacity_bytes(8 * 1024 * 1024)
        .max_body_bytes(1_100_000)
        .build()
        .unwrap();
    let (origin, log) = origin_fn(|_, _| async {
        Ok::<_, Infallible>(with_header(
            Response::new(Full::new(Bytes::from(vec![b'x'; LEN]))),
            "cache-control",
            "max-age=60",
        ))
    });
    let svc = cached(&cache, origin);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(body(r).await.len(), LEN);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), HIT);
    assert_eq!(body(r).await.len(), LEN);
    assert_eq!(log.calls(), 1);
    let st = cache.stats();
    assert!(st.l1_entries >= 1, "l1_entries = {}", st.l1_entries);
    assert_eq!(st.stores, 1);
    assert_eq!(st.too_large, 0);
}

#[test]
fn l1_max_entry_above_half_the_capacity_is_rejected() {
    let err = Cache::builder()
        .l1_capacity_bytes(1024 * 1024)
        .l1_max_entry_bytes(600 * 1024)
        .build()
        .expect_err("l1_max_entry_bytes above half of l1_capacity_bytes");
    assert!(err.is_invalid_setting());
    assert_eq!(err.setting(), "l1_max_entry_bytes");
    // Half is still fine.
    assert!(Cache::builder()
        .l1_capacity_bytes(1024 * 1024)
        .l1_max_entry_bytes(512 * 1024)
        .build()
        .is_ok());
}

// ---------------------------------------------------------------------------
// 6. Serving stale-if-error does not extend freshness
// ---------------------------------------------------------------------------

#[tokio::test]
async fn serving_stale_if_error_does_not_extend_the_entry() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, _| match n {
        0 => ok("max-age=100, stale-if-error=600", "OLD"),
        1 => response(503, &[], "down"),
        _ => ok("max-age=100", "NEW"),
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;

    clock.advance(secs(101));
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 200);
    let sie_status = cache_status(&r);
    assert_eq!(body(r).await, "OLD");
    assert_eq!(log.calls(), 2);

    // The origin is healthy again: it is asked, not bypassed by a stale hit.
    clock.advance(secs(1));
    let r = send(&svc, get(URL)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=stale; fwd-status=200; stored"
    );
    assert_eq!(body(r).await, "NEW");
    assert_eq!(log.calls(), 3);
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), HIT);
    assert_eq!(body(r).await, "NEW");
    assert_eq!(log.calls(), 3);
    let st = cache.stats();
    assert_eq!(st.stale_if_error, 1);
    assert_eq!(st.stale, 1);
    assert_eq!(st.refresh_ok + st.refresh_failed, 0);
    assert_eq!(
        sie_status,
        "tower-tiered-cache; fwd=stale; fwd-status=503; ttl=-1; detail=stale-if-error"
    );
}

// ---------------------------------------------------------------------------
// 7. Waiters do not stampede a failing origin
// ---------------------------------------------------------------------------

#[tokio::test]
async fn waiters_of_a_failed_leader_do_not_stampede_the_origin() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    let (origin, log) = origin_fn(move |n, _| {
        let g = g.clone();
        async move {
            g.pass().await;
            Ok::<_, Infallible>(if n == 0 {
                response(503, &[], "down")
            } else {
                ok("max-age=60", "up")
            })
        }
    });
    let svc = cached(&cache, origin);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let r = send(&svc, get(URL)).await;
                (r.status().as_u16(), body(r).await)
            })
        })
        .collect();
    assert!(eventually(|| log.calls() == 1).await);
    settle().await;
    assert_eq!(log.calls(), 1, "one leader while the origin is slow");
    gate.open();

    let (mut failed, mut served) = (0, 0);
    for t in tasks {
        let (status, b) = tokio::time::timeout(std::time::Duration::from_secs(5), t)
            .await
            .expect("every request gets a response")
            .unwrap();
        match status {
            503 => {
                assert_eq!(b, "down");
                failed += 1;
            }
            200 => {
                assert_eq!(b, "up");
                served += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((failed, served), (1, 49));
    assert!(log.calls() <= 5, "origin calls: {}", log.calls());
    assert_eq!(cache.stats().in_flight, 0);
}

/// The same with a second answer that is not instant: the waiters of the
/// failed flight form one new flight behind one new leader.
#[tokio::test]
async fn waiters_of_a_failed_leader_form_one_new_flight() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (first, second) = (Gate::new(), Gate::new());
    let (g1, g2) = (first.clone(), second.clone());
    let (origin, log) = origin_fn(move |n, _| {
        let (g1, g2) = (g1.clone(), g2.clone());
        async move {
            if n == 0 {
                g1.pass().await;
                return Ok::<_, Infallible>(response(503, &[], "down"));
            }
            g2.pass().await;
            Ok(ok("max-age=60", "up"))
        }
    });
    let svc = cached(&cache, origin);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let r = send(&svc, get(URL)).await;
                (r.status().as_u16(), body(r).await)
            })
        })
        .collect();
    assert!(eventually(|| log.calls() == 1).await);
    settle().await;
    assert_eq!(log.calls(), 1);
    first.open();
    assert!(eventually(|| log.calls() == 2).await);
    settle().await;
    assert_eq!(log.calls(), 2, "one new leader; the others wait for it");
    second.open();

    let mut statuses = Vec::new();
    for t in tasks {
        let (status, b) = tokio::time::timeout(std::time::Duration::from_secs(5), t)
            .await
            .expect("every request gets a response")
            .unwrap();
        assert_eq!(b, if status == 503 { "down" } else { "up" });
        statuses.push(status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 1);
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 49);
    assert_eq!(log.calls(), 2);
    let st = cache.stats();
    assert_eq!(st.coalesced, 48);
    assert_eq!(st.stores, 1);
    assert_eq!(st.in_flight, 0);
}

// ---------------------------------------------------------------------------
// 8. A body error with stale-if-error counts the request once
// ---------------------------------------------------------------------------

type Boxed = BoxBody<Bytes, OriginError>;

fn full(s: &'static str) -> Boxed {
    Full::new(Bytes::from_static(s.as_bytes()))
        .map_err(|never: Infallible| match never {})
        .boxed()
}

#[tokio::test]
async fn body_error_served_stale_if_error_counts_the_request_once() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin_fn(|n, _| async move {
        let resp = if n == 0 {
            with_header(
                Response::new(full("v1")),
                "cache-control",
                "max-age=1, stale-if-error=300",
            )
        } else {
            // Storable, but the body fails after one chunk.
            with_header(
                Response::new(FailingBody::new(&["part one"]).boxed()),
                "cache-control",
                "max-age=60",
            )
        };
        Ok::<_, Infallible>(resp)
    });
    let svc = cached(&cache, origin);
    assert_eq!(body(send(&svc, get(URL)).await).await, "v1");
    assert_eq!(cache.stats().requests, 1);

    clock.advance(secs(2));
    let r = send(&svc, get(URL)).await;
    assert_eq!(r.status(), 200);
    let status = cache_status(&r);
    assert_eq!(body(r).await, "v1");
    assert_eq!(log.calls(), 2);
    let st = cache.stats();
    assert_eq!(st.requests, 2, "one more request, one more outcome");
    assert_eq!(st.stale_if_error, 1);
    assert_eq!(st.stores, 1);
    // The origin's 200 could not be read whole: stale-if-error answered.
    assert_eq!(
        status,
        "tower-tiered-cache; fwd=stale; fwd-status=200; ttl=-1; detail=stale-if-error"
    );
}

// ---------------------------------------------------------------------------
// 9. Range requests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn range_request_for_something_not_stored_passes_through() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, req| {
        if req.headers().contains_key("range") {
            response(
                206,
                &[
                    ("cache-control", "max-age=60"),
                    ("content-range", "bytes 0-1/7"),
                ],
                "pa",
            )
        } else {
            ok("max-age=60", "payload")
        }
    });
    let svc = cached(&cache, origin);
    let range = [("range", "bytes=0-1")];

    let r = send(&svc, get_with(URL, &range)).await;
    assert_eq!(r.status(), 206);
    let status = cache_status(&r);
    assert!(status.contains("detail=range"), "{status}");
    assert_eq!(status, "tower-tiered-cache; fwd=uri-miss; detail=range");
    assert_eq!(body(r).await, "pa");
    assert_eq!(log.calls(), 1);
    assert_eq!(log.last().header("range"), Some("bytes=0-1"));
    assert_eq!(cache.stats().stores, 0);

    // Once stored, a range request is answered from the cache: its part
    // (RFC 9110 §14, issue 14; it was answered whole before).
    assert_eq!(cache_status(&send(&svc, get(URL)).await), MISS_STORED);
    assert_eq!(log.last().header("range"), None);
    let r = send(&svc, get_with(URL, &range)).await;
    assert_eq!(r.status(), 206);
    assert_eq!(cache_status(&r), HIT);
    assert_eq!(body(r).await, "pa");
    assert_eq!(log.calls(), 2);
}

// ---------------------------------------------------------------------------
// 10. only-if-cached
// ---------------------------------------------------------------------------

#[tokio::test]
async fn only_if_cached_504_forwards_nothing() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, _| ok("max-age=60", "x"));
    let svc = cached(&cache, origin);
    let r = send(&svc, get_with(URL, &[("cache-control", "only-if-cached")])).await;
    assert_eq!(r.status(), 504);
    let status = cache_status(&r);
    assert_eq!(status, "tower-tiered-cache; detail=only-if-cached");
    assert!(!status.contains("fwd"), "{status}");
    assert_eq!(log.calls(), 0);
}

// ---------------------------------------------------------------------------
// 11. A client's no-store does not drop the shared entry on a 304
// ---------------------------------------------------------------------------

#[tokio::test]
async fn no_store_request_revalidated_by_a_304_keeps_the_shared_entry() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|n, req| {
        if n == 0 {
            response(
                200,
                &[("cache-control", "max-age=10"), ("etag", "\"e\"")],
                "x",
            )
        } else {
            assert!(req.headers().contains_key("if-none-match"));
            response(
                304,
                &[("cache-control", "max-age=10"), ("etag", "\"e\"")],
                "",
            )
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(15));
    let r = send(&svc, get_with(URL, &[("cache-control", "no-store")])).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=stale; fwd-status=304; detail=l1"
    );
    assert_eq!(body(r).await, "x");
    assert_eq!(log.calls(), 2);

    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), HIT);
    assert_eq!(body(r).await, "x");
    assert_eq!(log.calls(), 2);
}

/// A request dropped while the engine works is counted once: as
/// `cancelled` when nothing was counted for it yet, and not again when its
/// outcome was (an unsafe method is a pass from the start).
#[tokio::test(start_paused = true)]
async fn dropped_requests_are_counted_once() {
    use std::time::Duration;
    use tower::{service_fn, Layer, ServiceExt};

    let cache = Cache::builder().build().unwrap();
    let slow = service_fn(|_req: http::Request<()>| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"late"))))
    });
    let svc = tower::timeout::TimeoutLayer::new(Duration::from_millis(100))
        .layer(tower_tiered_cache::CacheLayer::new(cache.clone()).layer(slow));
    let post = http::Request::post("http://example.com/a")
        .body(())
        .unwrap();
    assert!(svc.clone().oneshot(post).await.is_err(), "timed out");
    let get = http::Request::get("http://example.com/b").body(()).unwrap();
    assert!(svc.oneshot(get).await.is_err(), "timed out");
    let st = cache.stats();
    assert_eq!(
        (st.requests, st.passes, st.misses, st.cancelled),
        (2, 1, 0, 1),
        "{st:?}"
    );
    let labels = cache.label_stats();
    assert_eq!(labels.iter().map(|l| l.requests).sum::<u64>(), 2);
}
