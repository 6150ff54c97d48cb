//! A client's conditional requests answered from stored responses
//! (RFC 9110 §13.1.2, §13.1.3, §13.2.2; RFC 9111 §4.3.2), alike for
//! entries from L1 and from L2, for `GET` and `HEAD`.
//!
//! Time is a `ManualClock` moved by hand; no test sleeps for a TTL.

mod support;

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;

use http::Method;
use tower_tiered_cache::Cache;

use support::*;

const HIT: &str = "tower-tiered-cache; hit; detail=l1";
const MISS_STORED: &str = "tower-tiered-cache; fwd=uri-miss; fwd-status=200; stored";

fn cache() -> Cache {
    Cache::builder().clock(clock()).build().unwrap()
}

/// Asserts a `304` with no body, the stored validators and the cache's
/// `Cache-Status`.
async fn assert_304<B>(resp: http::Response<B>, status: &str, what: &str)
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    assert_eq!(resp.status(), 304, "{what}");
    assert_eq!(cache_status(&resp), status, "{what}");
    assert!(age(&resp).is_some(), "{what}");
    assert_eq!(body(resp).await, "", "{what}");
}

#[tokio::test]
async fn rfc9110_13_1_2_if_none_match_star_matches_a_stored_response_without_etag() {
    let cache = cache();
    let lm = http_date(T0 - 3_600_000);
    let lm2 = lm.clone();
    let (origin, log) = origin(move |_, req| {
        // One URL with no validator at all, one with only Last-Modified.
        if req.uri().path() == "/plain" {
            ok("max-age=60", "plain")
        } else {
            response(
                200,
                &[("cache-control", "max-age=60"), ("last-modified", &lm2)],
                "dated",
            )
        }
    });
    let svc = cached(&cache, origin);
    for path in ["/plain", "/dated"] {
        let url = format!("http://example.com{path}");
        let first = send(&svc, get(&url)).await;
        assert_eq!(cache_status(&first), MISS_STORED);

        for method in [Method::GET, Method::HEAD] {
            let what = format!("{method} {path}");
            let r = send(&svc, request(method, &url, &[("if-none-match", "*")])).await;
            assert_304(r, HIT, &what).await;
        }
        // Without the condition: the full response.
        let r = send(&svc, get(&url)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(cache_status(&r), HIT);
    }
    assert_eq!(log.calls(), 2);
    assert_eq!(cache.stats().not_modified, 4);
}

#[tokio::test]
async fn rfc9110_13_1_2_if_none_match_star_matches_a_stored_response_with_etag() {
    let cache = cache();
    let (origin, log) = origin(|_, _| {
        response(
            200,
            &[("cache-control", "max-age=60"), ("etag", "W/\"v1\"")],
            "tagged",
        )
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    for (method, value) in [
        (Method::GET, "*"),
        (Method::HEAD, "*"),
        (Method::GET, "\"other\", *"),
    ] {
        let what = format!("{method} {value}");
        let r = send(&svc, request(method, URL, &[("if-none-match", value)])).await;
        assert_eq!(header(&r, "etag").as_deref(), Some("W/\"v1\""), "{what}");
        assert_304(r, HIT, &what).await;
    }
    assert_eq!(log.calls(), 1);
}

#[tokio::test]
async fn rfc9110_13_1_2_if_none_match_star_on_a_miss_is_answered_from_the_stored_response() {
    let cache = cache();
    let (origin, log) = origin(|_, _| ok("max-age=60", "fresh"));
    let svc = cached(&cache, origin);
    let r = send(&svc, get_with(URL, &[("if-none-match", "*")])).await;
    // The cache fetched the full response (without the client's
    // condition) to store it, then answered the condition from it.
    assert_eq!(log.request(0).header("if-none-match"), None);
    assert_304(r, MISS_STORED, "miss").await;
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), HIT);
    assert_eq!(body(r).await, "fresh");
    assert_eq!(log.calls(), 1);
}

#[tokio::test]
async fn rfc9110_13_1_2_if_none_match_star_on_a_stale_hit() {
    let clock = clock();
    let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    let (origin, _log) = origin(|_, _| ok("max-age=10, stale-while-revalidate=60", "old"));
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    clock.advance(secs(20));
    let r = send(&svc, get_with(URL, &[("if-none-match", "*")])).await;
    assert_eq!(r.status(), 304);
    assert!(
        cache_status(&r).contains("hit; ttl=-10"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(body(r).await, "");
}

#[tokio::test]
async fn rfc9110_13_1_2_if_none_match_star_does_not_match_a_stored_error() {
    let cache = cache();
    let (origin, log) = origin(|_, _| response(404, &[("cache-control", "max-age=60")], "gone"));
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    let r = send(&svc, get_with(URL, &[("if-none-match", "*")])).await;
    assert_eq!(r.status(), 404);
    assert_eq!(cache_status(&r), HIT);
    assert_eq!(body(r).await, "gone");
    assert_eq!(log.calls(), 1);
}

#[tokio::test]
async fn rfc9110_13_2_2_if_none_match_takes_precedence_over_if_modified_since() {
    let cache = cache();
    let lm = http_date(T0 - 3_600_000);
    let before = http_date(T0 - 7_200_000);
    let lm2 = lm.clone();
    let (origin, _log) = origin(move |_, req| {
        let mut headers = vec![("cache-control", "max-age=60"), ("last-modified", &lm2)];
        if req.uri().path() != "/untagged" {
            headers.push(("etag", "\"v1\""));
        }
        response(200, &headers, "body")
    });
    let svc = cached(&cache, origin);
    let untagged = "http://example.com/untagged";
    send(&svc, get(URL)).await;
    send(&svc, get(untagged)).await;
    for (url, inm, ims, want) in [
        // The date alone says modified; `*` (or the tag) says not.
        (URL, "*", before.as_str(), 304),
        (untagged, "*", before.as_str(), 304),
        (URL, "\"v1\"", before.as_str(), 304),
        // The date alone says not modified; the tag says modified.
        (URL, "\"v0\"", lm.as_str(), 200),
        (untagged, "\"v0\"", lm.as_str(), 200),
    ] {
        let what = format!("{url}: If-None-Match: {inm}, If-Modified-Since: {ims}");
        let r = send(
            &svc,
            get_with(url, &[("if-none-match", inm), ("if-modified-since", ims)]),
        )
        .await;
        assert_eq!(r.status(), want, "{what}");
    }
}

#[tokio::test]
async fn rfc9110_5_6_1_if_none_match_on_several_lines() {
    let cache = cache();
    let (origin, _log) = origin(|_, _| {
        response(
            200,
            &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
            "body",
        )
    });
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    for (lines, want) in [
        (
            &[("if-none-match", "\"a\""), ("if-none-match", "\"v1\"")][..],
            304,
        ),
        (
            &[("if-none-match", "\"a\""), ("if-none-match", "*")][..],
            304,
        ),
        (
            &[("if-none-match", "\"a\""), ("if-none-match", "\"b\"")][..],
            200,
        ),
    ] {
        let r = send(&svc, get_with(URL, lines)).await;
        assert_eq!(r.status(), want, "{lines:?}");
    }
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn rfc9110_13_1_2_if_none_match_star_on_an_entry_from_l2() {
    use redis_support::{require_redis, RedisServer};
    use std::time::Duration;

    require_redis();
    const L2_HIT: &str = "tower-tiered-cache; hit; detail=l2";
    let server = RedisServer::start();
    let l2 = |url: String| {
        Cache::builder()
            .redis(url)
            .namespace("cond")
            .l2_timeout(Duration::from_millis(500))
            .build()
            .unwrap()
    };
    let (origin, log) = origin(|_, _| ok("max-age=60", "shared"));
    let a = l2(server.url());
    let r = send(&cached(&a, origin.clone()), get(URL)).await;
    assert_eq!(cache_status(&r), MISS_STORED);
    written(&a, 1).await;

    // Fresh instances, empty L1: answered from L2, GET and HEAD alike.
    for method in [Method::GET, Method::HEAD] {
        let b = l2(server.url());
        let svc = cached(&b, origin.clone());
        let what = format!("{method} from L2");
        let r = send(&svc, request(method, URL, &[("if-none-match", "*")])).await;
        assert_304(r, L2_HIT, &what).await;
        assert_eq!(b.stats().not_modified, 1, "{what}");
    }
    assert_eq!(log.calls(), 1, "L2 answered");
}
