//! One test per builder setting that had only its validation checked: each
//! shows the setting changes what the cache does, comparing the default
//! with another value in the same test where that makes the point (so the
//! test fails if the setter were ignored).
//!
//! Time is a `ManualClock` moved by hand; real waits are bounded loops
//! waiting for a signal (an origin call, a counter), never for a TTL.

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::convert::Infallible;

use tower_tiered_cache::{Cache, CacheBuilder, ManualClock};

use support::*;

const MISS_STORED: &str = "tower-tiered-cache; fwd=uri-miss; fwd-status=200; stored";
const VARY_MISS_STORED: &str = "tower-tiered-cache; fwd=vary-miss; fwd-status=200; stored";
const HIT: &str = "tower-tiered-cache; hit; detail=l1";

/// A shared cache on `clock`, otherwise the defaults.
fn builder(clock: &ManualClock) -> CacheBuilder {
    Cache::builder().clock(clock.clone())
}

/// Whether a `Cache-Status` is a hit (fresh or stale) answered without the
/// origin.
fn is_hit(status: &str) -> bool {
    status.starts_with("tower-tiered-cache; hit")
}

/// Sends a GET for `uri` and returns its `Cache-Status`.
fn status_of(svc: &Svc, uri: &str) -> impl std::future::Future<Output = String> + Send {
    let resp = send(svc, get(uri));
    async move {
        let resp = resp.await;
        let status = cache_status(&resp);
        body(resp).await;
        status
    }
}

/// An origin answering `200` with `Last-Modified` `age_secs` before the
/// clock's start and no explicit freshness (heuristic freshness only).
fn last_modified_origin(age_secs: u64) -> (Origin, Log) {
    let lm = http_date(T0 - age_secs * 1000);
    origin(move |n, _| response(200, &[("last-modified", &lm)], &format!("v{}", n + 1)))
}

// ---------------------------------------------------------------------------
// Freshness
// ---------------------------------------------------------------------------

/// `Last-Modified` 1000 s old: the default fraction (0.1) makes it fresh
/// for 100 s, `heuristic_fraction(0.5)` for 500 s.
#[tokio::test]
async fn heuristic_fraction_sets_the_share_of_the_last_modified_age_used_as_freshness() {
    let clock = clock();
    let default = builder(&clock).build().unwrap();
    let half = builder(&clock).heuristic_fraction(0.5).build().unwrap();
    let (o1, default_log) = last_modified_origin(1000);
    let (o2, half_log) = last_modified_origin(1000);
    let default_svc = cached(&default, o1);
    let half_svc = cached(&half, o2);
    assert_eq!(status_of(&default_svc, URL).await, MISS_STORED);
    assert_eq!(status_of(&half_svc, URL).await, MISS_STORED);

    clock.advance(secs(99));
    assert_eq!(status_of(&default_svc, URL).await, HIT);
    clock.advance(secs(101)); // 200 s: past 100 s, within 500 s
    let s = status_of(&default_svc, URL).await;
    assert!(!is_hit(&s), "default fraction: stale after 100 s: {s}");
    assert_eq!(default_log.calls(), 2);
    assert_eq!(status_of(&half_svc, URL).await, HIT);

    clock.advance(secs(299)); // 499 s
    assert_eq!(status_of(&half_svc, URL).await, HIT);
    clock.advance(secs(2)); // 501 s
    let s = status_of(&half_svc, URL).await;
    assert!(!is_hit(&s), "fraction 0.5: stale after 500 s: {s}");
    assert_eq!(half_log.calls(), 2);
}

/// `Last-Modified` 100 days old: a tenth of it is 10 days, capped at 24 h
/// by default and at 1 h by `heuristic_max(1 h)`.
#[tokio::test]
async fn heuristic_max_caps_the_heuristic_freshness_of_an_old_last_modified() {
    let clock = clock();
    let default = builder(&clock).build().unwrap();
    let capped = builder(&clock).heuristic_max(secs(3600)).build().unwrap();
    let (o1, default_log) = last_modified_origin(100 * 86_400);
    let (o2, capped_log) = last_modified_origin(100 * 86_400);
    let default_svc = cached(&default, o1);
    let capped_svc = cached(&capped, o2);
    assert_eq!(status_of(&default_svc, URL).await, MISS_STORED);
    assert_eq!(status_of(&capped_svc, URL).await, MISS_STORED);

    clock.advance(secs(3599));
    assert_eq!(status_of(&capped_svc, URL).await, HIT);
    clock.advance(secs(2)); // 1 h 1 s
    let s = status_of(&capped_svc, URL).await;
    assert!(!is_hit(&s), "capped at 1 h: {s}");
    assert_eq!(capped_log.calls(), 2);
    assert_eq!(status_of(&default_svc, URL).await, HIT);

    clock.advance(secs(86_400 - 3601 - 1)); // 24 h - 1 s
    assert_eq!(status_of(&default_svc, URL).await, HIT);
    clock.advance(secs(2)); // 24 h 1 s: the default cap, not 10 days
    let s = status_of(&default_svc, URL).await;
    assert!(!is_hit(&s), "capped at 24 h by default: {s}");
    assert_eq!(default_log.calls(), 2);
}

/// An origin answering `max-age=10` with `ETag: "v1"`, and `304` to a
/// request that carries `If-None-Match: "v1"`.
fn etag_origin() -> (Origin, Log) {
    origin(|_, req| {
        if req.headers().get("if-none-match").is_some() {
            response(
                304,
                &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
                "",
            )
        } else {
            response(
                200,
                &[("cache-control", "max-age=10"), ("etag", "\"v1\"")],
                "v1",
            )
        }
    })
}

/// An expired entry with an `ETag` is kept 600 s past freshness by default
/// to be revalidated; with `keep_for_revalidation(30 s)` it is revalidated
/// 25 s past freshness but gone (an unconditional fetch) 35 s past it.
#[tokio::test]
async fn keep_for_revalidation_bounds_how_long_an_expired_entry_is_kept_to_revalidate() {
    let clock = clock();
    let default = builder(&clock).build().unwrap();
    let short = builder(&clock)
        .keep_for_revalidation(secs(30))
        .build()
        .unwrap();
    let (o1, default_log) = etag_origin();
    let (o2, short_log) = etag_origin();
    let default_svc = cached(&default, o1);
    let short_svc = cached(&short, o2);
    let (a, b) = ("http://example.com/a", "http://example.com/b");
    status_of(&default_svc, b).await;
    status_of(&short_svc, a).await;
    status_of(&short_svc, b).await;

    clock.advance(secs(35)); // 25 s past freshness
    let r = send(&short_svc, get(a)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(body(r).await, "v1");
    assert_eq!(short_log.calls(), 3);
    assert_eq!(
        short_log.last().header("if-none-match"),
        Some("\"v1\""),
        "within the 30 s kept for revalidation"
    );

    clock.advance(secs(10)); // 35 s past freshness
    let r = send(&short_svc, get(b)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(short_log.calls(), 4);
    assert_eq!(
        short_log.last().header("if-none-match"),
        None,
        "past the 30 s kept for revalidation: the entry is gone"
    );
    let r = send(&default_svc, get(b)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(body(r).await, "v1");
    assert_eq!(default_log.calls(), 2);
    assert_eq!(
        default_log.last().header("if-none-match"),
        Some("\"v1\""),
        "the default keeps it 600 s"
    );
}

/// A refresh that fails extends the stale window by `factor` × TTL, at
/// most `max_times` times: by default 0.5 × 10 s, up to 4 times; with
/// `stale_extension(1.0, 1)` by 10 s, once.
#[tokio::test]
async fn stale_extension_sets_how_far_and_how_often_a_failed_refresh_extends_the_stale_window() {
    let clock = clock();
    let default = builder(&clock).build().unwrap();
    let once = builder(&clock).stale_extension(1.0, 1).build().unwrap();
    let failing = |n: usize, _: &http::Request<()>| {
        if n == 0 {
            ok("max-age=10, stale-while-revalidate=60", "v1")
        } else {
            response(500, &[], "boom")
        }
    };
    let (o1, default_log) = origin(failing);
    let (o2, once_log) = origin(failing);
    let default_svc = cached(&default, o1);
    let once_svc = cached(&once, o2);
    status_of(&default_svc, URL).await;
    status_of(&once_svc, URL).await;

    // 15 s: stale hits; each refresh fails and extends the window that
    // ended at 70 s: to 75 s by default, to 80 s with factor 1.
    clock.advance(secs(15));
    assert!(is_hit(&status_of(&default_svc, URL).await));
    assert!(is_hit(&status_of(&once_svc, URL).await));
    assert!(eventually(|| default.stats().refresh_failed == 1).await);
    assert!(eventually(|| once.stats().refresh_failed == 1).await);

    clock.advance(secs(62)); // 77 s
    let s = status_of(&default_svc, URL).await;
    assert_eq!(s, "tower-tiered-cache; fwd=uri-miss; fwd-status=500");
    assert_eq!(
        status_of(&once_svc, URL).await,
        "tower-tiered-cache; hit; ttl=-67; detail=l1",
        "factor 1 extended the window to 80 s"
    );
    // That refresh fails too, but the one extension allowed is spent: the
    // window still ends at 80 s (the default would extend it to 90 s).
    assert!(eventually(|| once.stats().refresh_failed == 2).await);
    assert_eq!(once_log.calls(), 3);

    clock.advance(secs(4)); // 81 s
    assert_eq!(
        status_of(&once_svc, URL).await,
        "tower-tiered-cache; fwd=uri-miss; fwd-status=500"
    );
    assert_eq!(once_log.calls(), 4);
    assert_eq!(default_log.calls(), 3);
}

// ---------------------------------------------------------------------------
// Keys and variants
// ---------------------------------------------------------------------------

/// By default `http://` and `https://` URLs are two keys; with
/// `key_scheme(false)` the second is a hit on the first's entry.
#[tokio::test]
async fn key_scheme_off_lets_http_and_https_share_one_entry() {
    let clock = clock();
    let default = builder(&clock).build().unwrap();
    let schemeless = builder(&clock).key_scheme(false).build().unwrap();
    let answer = |n: usize, _: &http::Request<()>| ok("max-age=60", &format!("v{}", n + 1));
    let (o1, default_log) = origin(answer);
    let (o2, schemeless_log) = origin(answer);
    let default_svc = cached(&default, o1);
    let schemeless_svc = cached(&schemeless, o2);
    let (plain, tls) = ("http://example.com/r", "https://example.com/r");

    assert_eq!(status_of(&default_svc, plain).await, MISS_STORED);
    assert_eq!(status_of(&default_svc, tls).await, MISS_STORED);
    assert_eq!(default_log.calls(), 2);

    assert_eq!(status_of(&schemeless_svc, plain).await, MISS_STORED);
    let r = send(&schemeless_svc, get(tls)).await;
    assert_eq!(cache_status(&r), HIT);
    assert_eq!(body(r).await, "v1");
    assert_eq!(schemeless_log.calls(), 1);
}

/// Three languages of one URL (`Vary: Accept-Language`): the default keeps
/// all three; `max_variants(2)` keeps the two stored last, dropping the
/// oldest.
#[tokio::test]
async fn max_variants_drops_the_oldest_variant_beyond_the_limit() {
    let clock = clock();
    let default = builder(&clock).build().unwrap();
    let two = builder(&clock).max_variants(2).build().unwrap();
    let by_language = |_: usize, req: &http::Request<()>| {
        let lang = req.headers()["accept-language"]
            .to_str()
            .unwrap()
            .to_owned();
        response(
            200,
            &[("cache-control", "max-age=60"), ("vary", "accept-language")],
            &lang,
        )
    };
    let (o1, default_log) = origin(by_language);
    let (o2, two_log) = origin(by_language);
    let default_svc = cached(&default, o1);
    let two_svc = cached(&two, o2);
    let in_lang = |svc: &Svc, lang: &'static str| {
        let fut = send(svc, get_with(URL, &[("accept-language", lang)]));
        async move {
            let r = fut.await;
            let status = cache_status(&r);
            assert_eq!(body(r).await, lang);
            status
        }
    };
    assert_eq!(in_lang(&default_svc, "en").await, MISS_STORED);
    assert_eq!(in_lang(&two_svc, "en").await, MISS_STORED);
    for lang in ["fr", "de"] {
        assert_eq!(in_lang(&default_svc, lang).await, VARY_MISS_STORED);
        assert_eq!(in_lang(&two_svc, lang).await, VARY_MISS_STORED);
    }

    for lang in ["de", "fr", "en"] {
        assert_eq!(in_lang(&default_svc, lang).await, HIT, "{lang}");
    }
    assert_eq!(default_log.calls(), 3);

    assert_eq!(in_lang(&two_svc, "de").await, HIT);
    assert_eq!(in_lang(&two_svc, "fr").await, HIT);
    assert_eq!(
        in_lang(&two_svc, "en").await,
        VARY_MISS_STORED,
        "the oldest variant was dropped"
    );
    assert_eq!(two_log.calls(), 4);
}

// ---------------------------------------------------------------------------
// Coalescing and refreshes
// ---------------------------------------------------------------------------

/// Every origin call waits at `gate`; the body names the path and the call.
fn gated_origin(gate: &Gate) -> (Origin, Log) {
    let g = gate.clone();
    origin_fn(move |n, req: http::Request<()>| {
        let g = g.clone();
        async move {
            g.pass().await;
            Ok::<_, Infallible>(ok(
                "max-age=60",
                &format!("{} #{}", req.uri().path(), n + 1),
            ))
        }
    })
}

/// While one miss on `/a` is in flight, two misses on `/b`: by default the
/// second joins the first (one origin call for `/b`); with
/// `max_in_flight(1)` the one flight slot is taken, so each calls alone.
#[tokio::test]
async fn max_in_flight_makes_misses_beyond_the_limit_call_the_origin_alone() {
    async fn two_misses_on_b_while_a_is_in_flight(
        cache: Cache,
        origin_calls_before_opening: usize,
    ) -> (Log, Vec<String>) {
        let gate = Gate::new();
        let (origin, log) = gated_origin(&gate);
        let svc = cached(&cache, origin);
        let spawn = |uri: &'static str| {
            let svc = svc.clone();
            tokio::spawn(async move { status_of(&svc, uri).await })
        };
        let a = spawn("http://example.com/a");
        assert!(eventually(|| log.calls() == 1).await);
        let b1 = spawn("http://example.com/b");
        assert!(eventually(|| log.calls() == 2).await);
        let b2 = spawn("http://example.com/b");
        assert!(
            eventually(|| log.calls() == origin_calls_before_opening).await,
            "origin calls: {}",
            log.calls()
        );
        settle().await; // b2 reaches its flight or the origin
        gate.open();
        let statuses = vec![a.await.unwrap(), b1.await.unwrap(), b2.await.unwrap()];
        (log, statuses)
    }

    let clock = clock();
    // Default: b2 joins b1's flight (or, if it comes late, hits its entry).
    let default = builder(&clock).build().unwrap();
    let (log, statuses) = two_misses_on_b_while_a_is_in_flight(default.clone(), 2).await;
    assert_eq!(log.calls(), 2, "{statuses:?}");
    assert!(
        statuses[2] == "tower-tiered-cache; fwd=uri-miss; collapsed; detail=l1"
            || statuses[2] == HIT,
        "{statuses:?}"
    );

    // max_in_flight(1): /a holds the only slot; both misses on /b call.
    let one = builder(&clock).max_in_flight(1).build().unwrap();
    let (log, statuses) = two_misses_on_b_while_a_is_in_flight(one.clone(), 3).await;
    assert_eq!(log.calls(), 3, "{statuses:?}");
    assert_eq!(log.request(1).uri.path(), "/b");
    assert_eq!(log.request(2).uri.path(), "/b");
    assert_eq!(one.stats().coalesced, 0);
}

/// Two stale entries (in their stale-while-revalidate windows) are read
/// while their refreshes wait at the origin: by default both refresh;
/// with `max_concurrent_refreshes(1)` the second is skipped and counted.
#[tokio::test]
async fn max_concurrent_refreshes_skips_refreshes_beyond_the_limit() {
    /// Reads `/a` and then `/b` stale; `refreshes` is how many of their
    /// refreshes are expected to start.
    async fn two_stale_reads(cache: Cache, clock: &ManualClock, refreshes: usize) -> Log {
        let gate = Gate::new();
        let g = gate.clone();
        let (origin, log) = origin_fn(move |n, req: http::Request<()>| {
            let g = g.clone();
            async move {
                if n >= 2 {
                    g.pass().await; // the refreshes wait
                }
                Ok::<_, Infallible>(ok(
                    "max-age=10, stale-while-revalidate=60",
                    &format!("{} #{}", req.uri().path(), n + 1),
                ))
            }
        });
        let svc = cached(&cache, origin);
        let (a, b) = ("http://example.com/a", "http://example.com/b");
        assert_eq!(status_of(&svc, a).await, MISS_STORED);
        assert_eq!(status_of(&svc, b).await, MISS_STORED);
        clock.advance(secs(15));
        let stale = "tower-tiered-cache; hit; ttl=-5; detail=l1";
        assert_eq!(status_of(&svc, a).await, stale);
        assert!(eventually(|| log.calls() == 3).await, "a's refresh");
        // a's refresh holds its permit until the gate opens.
        assert_eq!(status_of(&svc, b).await, stale);
        assert!(
            eventually(|| log.calls() == 2 + refreshes).await,
            "origin calls: {}",
            log.calls()
        );
        gate.open();
        assert!(
            eventually(|| cache.stats().refresh_ok == refreshes as u64).await,
            "{:?}",
            cache.stats()
        );
        log
    }

    let clock = clock();
    let default = builder(&clock).build().unwrap();
    let log = two_stale_reads(default.clone(), &clock, 2).await;
    let st = default.stats();
    assert_eq!((st.refresh_ok, st.refresh_skipped), (2, 0));
    assert_eq!(log.calls(), 4);

    let one = builder(&clock).max_concurrent_refreshes(1).build().unwrap();
    let log = two_stale_reads(one.clone(), &clock, 1).await;
    let st = one.stats();
    assert_eq!((st.refresh_ok, st.refresh_skipped), (1, 1));
    assert_eq!(log.calls(), 3, "b's refresh never reached the origin");
    assert_eq!(log.request(2).uri.path(), "/a");
}

// ---------------------------------------------------------------------------
// L2 (Redis)
// ---------------------------------------------------------------------------

#[cfg(feature = "redis")]
mod l2 {
    use std::time::Duration;

    use tower_tiered_cache::{Cache, CacheBuilder, ManualClock};

    use super::redis_support::{require_redis, RedisServer, Reply};
    use super::support::*;

    const L2_HIT: &str = "tower-tiered-cache; hit; detail=l2";
    const L1_HIT: &str = "tower-tiered-cache; hit; detail=l1";

    /// A cache on `server` in namespace `ns`, on `clock`.
    fn l2(server: &RedisServer, ns: &str, clock: &ManualClock) -> CacheBuilder {
        Cache::builder()
            .redis(server.url())
            .namespace(ns)
            .clock(clock.clone())
            .l2_timeout(Duration::from_millis(500))
    }

    /// With `promote_after(2)`, two L2 hits 10 s apart promote the entry to
    /// L1 within the default 60 s window, but not within a 5 s
    /// `promotion_window` (the second hit starts a new count).
    #[tokio::test]
    async fn promotion_window_bounds_the_time_over_which_l2_hits_count_toward_promotion() {
        require_redis();
        let server = RedisServer::start();
        let clock = clock();
        let (origin, log) = origin(|_, _| ok("max-age=3600", "hot"));
        let writer = l2(&server, "p", &clock).build().unwrap();
        send(&cached(&writer, origin.clone()), get(URL)).await;
        written(&writer, 1).await;

        let default = l2(&server, "p", &clock).promote_after(2).build().unwrap();
        let short = l2(&server, "p", &clock)
            .promote_after(2)
            .promotion_window(secs(5))
            .build()
            .unwrap();
        let default_svc = cached(&default, origin.clone());
        let short_svc = cached(&short, origin);

        assert_eq!(cache_status(&send(&default_svc, get(URL)).await), L2_HIT);
        assert_eq!(cache_status(&send(&short_svc, get(URL)).await), L2_HIT);
        clock.advance(secs(10));
        assert_eq!(cache_status(&send(&default_svc, get(URL)).await), L2_HIT);
        assert_eq!(cache_status(&send(&short_svc, get(URL)).await), L2_HIT);
        assert_eq!(default.stats().promotions, 1, "2 hits within 60 s");
        assert_eq!(short.stats().promotions, 0, "2 hits 10 s apart, window 5 s");
        // L1 copies are trusted once the invalidation log is followed.
        subscribed(&default).await;
        subscribed(&short).await;

        assert_eq!(cache_status(&send(&default_svc, get(URL)).await), L1_HIT);
        // The third hit is the second within 5 s of the last: promoted now.
        assert_eq!(cache_status(&send(&short_svc, get(URL)).await), L2_HIT);
        assert_eq!(short.stats().promotions, 1);
        assert_eq!(cache_status(&send(&short_svc, get(URL)).await), L1_HIT);
        assert_eq!(log.calls(), 1);
    }

    /// The length of the one string value under namespace `ns` (the
    /// stored entry).
    fn stored_len(server: &RedisServer, ns: &str) -> usize {
        let keys = server.cli(&["--scan", "--pattern", &format!("{ns}:*")]);
        let lens: Vec<usize> = keys
            .text()
            .lines()
            .filter_map(|k| match server.cmd(&["STRLEN", k]) {
                Ok(Reply::Int(n)) if n > 0 => Some(n as usize),
                _ => None,
            })
            .collect();
        assert_eq!(lens.len(), 1, "one stored value under {ns}: {lens:?}");
        lens[0]
    }

    /// A 4000-byte compressible body: stored compressed in L2 by default
    /// (threshold 1024 bytes), stored as it is with
    /// `compression_threshold(None)` or a threshold above its size; read
    /// back intact either way.
    #[cfg(feature = "compression")]
    #[tokio::test]
    async fn compression_threshold_decides_which_l2_bodies_are_compressed() {
        require_redis();
        let server = RedisServer::start();
        let clock = clock();
        let text = "a".repeat(4000);
        let t = text.clone();
        let (origin, _) = origin(move |_, _| ok("max-age=60", &t));
        let mut lens = Vec::new();
        for (ns, threshold) in [("d", "default"), ("off", "none"), ("big", "8192")] {
            let b = l2(&server, ns, &clock);
            let b = match threshold {
                "none" => b.compression_threshold(None),
                "8192" => b.compression_threshold(Some(8192)),
                _ => b,
            };
            let cache = b.build().unwrap();
            send(&cached(&cache, origin.clone()), get(URL)).await;
            written(&cache, 1).await;
            lens.push(stored_len(&server, ns));

            // Another instance reads the body back from L2 intact.
            let reader = l2(&server, ns, &clock).build().unwrap();
            let r = send(&cached(&reader, origin.clone()), get(URL)).await;
            assert_eq!(cache_status(&r), L2_HIT, "{threshold}");
            assert_eq!(body(r).await, text.as_bytes(), "{threshold}");
        }
        assert!(lens[0] < 1000, "compressed by default: {lens:?}");
        assert!(lens[1] > 4000, "not compressed with None: {lens:?}");
        assert!(lens[2] > 4000, "not compressed under 8192: {lens:?}");
    }
}

// ---------------------------------------------------------------------------
// reqwest
// ---------------------------------------------------------------------------

#[cfg(feature = "reqwest")]
mod reqwest_refresh {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use http::{Extensions, HeaderMap, HeaderValue};
    use reqwest_middleware::{ClientWithMiddleware, Middleware, Next};
    use tower_tiered_cache::reqwest::CacheMiddleware;
    use tower_tiered_cache::Cache;

    use super::support::loopback::{serve, Server};
    use super::support::{clock, eventually, secs};

    /// An origin on loopback answering `max-age=10, swr=60` with the call's
    /// number, recording each request's `x-refresh-client` header.
    async fn origin() -> (Server, Arc<AtomicUsize>, Arc<Mutex<Vec<Option<String>>>>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let marks: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let (c, m) = (calls.clone(), marks.clone());
        let app = Router::new().fallback(move |headers: HeaderMap| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            m.lock().unwrap().push(
                headers
                    .get("x-refresh-client")
                    .map(|v| v.to_str().unwrap().to_owned()),
            );
            async move {
                http::Response::builder()
                    .header("cache-control", "max-age=10, stale-while-revalidate=60")
                    .body(axum::body::Body::from(format!("v{}", n + 1)))
                    .unwrap()
            }
        });
        (serve(app).await, calls, marks)
    }

    /// Marks requests with `x-refresh-client: 1`.
    struct Mark;

    #[async_trait::async_trait]
    impl Middleware for Mark {
        async fn handle(
            &self,
            mut req: reqwest::Request,
            extensions: &mut Extensions,
            next: Next<'_>,
        ) -> reqwest_middleware::Result<reqwest::Response> {
            req.headers_mut()
                .insert("x-refresh-client", HeaderValue::from_static("1"));
            next.run(req, extensions).await
        }
    }

    fn chain(cache: CacheMiddleware) -> ClientWithMiddleware {
        reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(cache)
            .build()
    }

    async fn get(client: &ClientWithMiddleware, url: &str) -> (String, String) {
        let resp = client.get(url).send().await.expect("a response");
        let status = resp.headers()["cache-status"].to_str().unwrap().to_owned();
        (status, resp.text().await.unwrap())
    }

    /// With `refresh_through`, a stale read's refresh goes through the
    /// given client (its middleware marks the request) and stores the new
    /// body. (Without it, through the plain client given to
    /// `CacheMiddleware::new`: tests/reqwest_client.rs.)
    #[tokio::test]
    async fn refresh_through_sends_background_refreshes_through_the_given_client() {
        let stale = "tower-tiered-cache; hit; ttl=-5; detail=l1";
        let hit = "tower-tiered-cache; hit; detail=l1";
        let clock = clock();

        let (server, calls, marks) = origin().await;
        let url = format!("http://{}/odds", server.addr);
        let cache = Cache::builder().clock(clock.clone()).build().unwrap();
        let refresh_client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
            .with(Mark)
            .build();
        let client = chain(
            CacheMiddleware::new(reqwest::Client::new(), cache.clone())
                .refresh_through(refresh_client),
        );
        get(&client, &url).await;
        clock.advance(secs(15));
        assert_eq!(
            get(&client, &url).await,
            (stale.to_owned(), "v1".to_owned())
        );
        assert!(
            eventually(|| cache.stats().refresh_ok == 1).await,
            "{:?}",
            cache.stats()
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            *marks.lock().unwrap(),
            vec![None, Some("1".to_owned())],
            "only the refresh went through the refresh client"
        );
        assert_eq!(cache.stats().refresh_skipped, 0);
        assert_eq!(get(&client, &url).await, (hit.to_owned(), "v2".to_owned()));
    }
}
