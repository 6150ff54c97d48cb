//! Observability without Redis: the `cache.lookup` and `cache.refresh`
//! spans and their fields, request labels (axum route templates, upstream
//! hosts, functions, the `other` bound), per-label counters adding up to the
//! global ones, latency histograms and the rolling window, health,
//! low performers with their recommendations, log levels, eager refresh and
//! `reset_stats`.
//!
//! Spans and events are captured by the small `tracing_subscriber::Layer`
//! of `support/capture.rs`, installed as the thread's default subscriber
//! (`set_default`); the tests run on Tokio's current-thread runtime, so
//! spawned tasks (background refreshes) report to it too. Time is a `ManualClock` wherever the cache's
//! clock matters; only the latency tests sleep (tens of milliseconds).

mod support;

use std::convert::Infallible;
use std::time::Duration;

use http::{Method, Request};
use tower_tiered_cache::{
    Cache, CacheBuilder, HealthStatus, HealthThresholds, LabelSource, LabelStats, Latency,
    LogLevel, ManualClock,
};
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer;

use support::capture::*;
use support::*;
use tower_tiered_cache::observe::RecommendationKind;

const HIT: &str = "tower-tiered-cache; hit; detail=l1";
const MISS_STORED: &str = "tower-tiered-cache; fwd=uri-miss; fwd-status=200; stored";

fn builder(clock: &ManualClock) -> CacheBuilder {
    Cache::builder().clock(clock.clone())
}

/// A label's stats by name.
fn label<'a>(stats: &'a [LabelStats], name: &str) -> &'a LabelStats {
    stats
        .iter()
        .find(|s| s.label == name)
        .unwrap_or_else(|| panic!("no label {name:?} in {stats:#?}"))
}

/// `(label, requests, hits, misses)` of every label, busiest first.
fn summary(stats: &[LabelStats]) -> Vec<(String, u64, u64, u64)> {
    stats
        .iter()
        .map(|s| (s.label.clone(), s.requests, s.hits, s.misses))
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Spans
// ---------------------------------------------------------------------------

#[tokio::test]
async fn lookup_spans_of_a_miss_and_a_hit_carry_every_field() {
    let (cap, _guard) = capture();
    let clock = clock();
    let cache = builder(&clock).span_level(Level::INFO).build().unwrap();
    let (origin, log) = origin(|_, _| ok("max-age=60", "hello"));
    let svc = cached(&cache, origin);
    let url = "http://example.com/users/7?x=1";

    let started = std::time::Instant::now();
    let r = send(&svc, get(url)).await;
    let miss_took_ms = started.elapsed().as_secs_f64() * 1e3;
    assert_eq!(cache_status(&r), MISS_STORED);
    assert_eq!(body(r).await, "hello");
    clock.advance(secs(5));
    let r = send(&svc, get(url)).await;
    assert_eq!(cache_status(&r), HIT);
    assert_eq!(body(r).await, "hello");
    assert_eq!(log.calls(), 1);

    let spans = cap.spans_named("cache.lookup");
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let (miss, hit) = (&spans[0], &spans[1]);
    for s in [miss, hit] {
        assert_eq!(s.level, Level::INFO);
        assert_eq!(s.target, "tower_tiered_cache");
        assert_eq!(s.parent, None, "a request span is a root here");
        assert_eq!(s.str("otel.name"), Some("cache.lookup"));
        assert_eq!(
            s.str("cache.key"),
            Some("GET http://example.com/users/7?x=1")
        );
        assert_eq!(s.str("cache.label"), Some("example.com"));
        assert_eq!(s.bool("cache.coalesced"), Some(false));
        assert_eq!(s.str("http.request.method"), Some("GET"));
        assert_eq!(s.str("url.path"), Some("/users/7"));
        assert_eq!(s.get("http.response.status_code"), Some(&Val::I64(200)));
    }
    assert_eq!(miss.str("cache.result"), Some("miss"));
    assert_eq!(miss.str("cache.tier"), Some("none"));
    assert_eq!(miss.get("cache.ttl_remaining_ms"), None, "{miss:#?}");
    let upstream = miss.f64("cache.upstream_ms").expect("cache.upstream_ms");
    assert!((0.0..10_000.0).contains(&upstream), "{upstream}");
    // The store's time in milliseconds: some, and a part of the request's.
    let store = miss.f64("cache.store_ms").expect("cache.store_ms");
    assert!(
        store > 0.0 && store <= miss_took_ms,
        "{store} of {miss_took_ms}"
    );

    assert_eq!(hit.str("cache.result"), Some("hit"));
    assert_eq!(hit.str("cache.tier"), Some("l1"));
    // Stored at T0 for 60 s, read at T0 + 5 s.
    assert_eq!(hit.get("cache.ttl_remaining_ms"), Some(&Val::I64(55_000)));
    assert_eq!(hit.get("cache.upstream_ms"), None, "no upstream call");
    assert_eq!(hit.get("cache.store_ms"), None, "nothing stored");
    assert!(cap.spans_named("cache.refresh").is_empty());
}

#[tokio::test]
async fn a_stale_hit_is_marked_stale_and_its_refresh_span_follows_from_it() {
    let (cap, _guard) = capture();
    let clock = clock();
    let cache = builder(&clock).span_level(Level::INFO).build().unwrap();
    let (origin, log) = origin(|n, _| {
        ok(
            "max-age=10, stale-while-revalidate=60",
            &format!("v{}", n + 1),
        )
    });
    let svc = cached(&cache, origin);
    let url = "http://example.com/feed";

    assert_eq!(body(send(&svc, get(url)).await).await, "v1");
    clock.advance(secs(20));
    let r = send(&svc, get(url)).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; hit; ttl=-10; detail=l1"
    );
    assert_eq!(body(r).await, "v1");
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);
    assert_eq!(log.calls(), 2);
    let r = send(&svc, get(url)).await;
    assert_eq!(cache_status(&r), HIT);
    assert_eq!(body(r).await, "v2");

    let lookups = cap.spans_named("cache.lookup");
    let results: Vec<_> = lookups.iter().map(|s| s.str("cache.result")).collect();
    assert_eq!(results, [Some("miss"), Some("stale"), Some("hit")]);
    let stale = &lookups[1];
    assert_eq!(stale.str("cache.tier"), Some("l1"));
    assert_eq!(
        stale.get("cache.ttl_remaining_ms"),
        Some(&Val::I64(-10_000))
    );
    assert_eq!(stale.get("http.response.status_code"), Some(&Val::I64(200)));
    assert_eq!(stale.get("cache.upstream_ms"), None, "answered at once");

    let refreshes = cap.spans_named("cache.refresh");
    assert_eq!(refreshes.len(), 1, "{refreshes:#?}");
    let refresh = &refreshes[0];
    assert_eq!(refresh.level, Level::INFO);
    assert_eq!(refresh.parent, None, "a root of its own");
    assert_eq!(refresh.follows, [cap.index(stale)]);
    assert_eq!(refresh.str("cache.label"), Some("example.com"));
    assert_eq!(refresh.str("cache.result"), Some("refreshed"));
    assert!(refresh.f64("cache.upstream_ms").is_some(), "{refresh:#?}");
}

/// A background refresh whose origin no longer lets the response be
/// stored drops the stale copy: its span says `dropped` (not `refreshed`,
/// not `failed`).
#[tokio::test]
async fn a_refresh_the_origin_no_longer_lets_be_stored_is_marked_dropped() {
    let (cap, _guard) = capture();
    let clock = clock();
    let cache = builder(&clock).span_level(Level::INFO).build().unwrap();
    let (origin, log) = origin(|n, _| {
        if n == 0 {
            ok("max-age=10, stale-while-revalidate=60", "v1")
        } else {
            ok("no-store", "v2")
        }
    });
    let svc = cached(&cache, origin);
    let url = "http://example.com/feed";

    assert_eq!(body(send(&svc, get(url)).await).await, "v1");
    clock.advance(secs(20));
    let r = send(&svc, get(url)).await;
    assert!(
        cache_status(&r).contains("hit; ttl=-10"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(body(r).await, "v1");
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);
    assert!(eventually(|| cache.stats().in_flight == 0).await);
    assert_eq!(log.calls(), 2);
    assert_eq!(cache.stats().l1_entries, 0, "the stale copy was dropped");

    let refreshes = cap.spans_named("cache.refresh");
    assert_eq!(refreshes.len(), 1, "{refreshes:#?}");
    assert_eq!(refreshes[0].str("cache.result"), Some("dropped"));
}

#[tokio::test]
async fn span_level_decides_whether_a_filtered_subscriber_sees_the_spans() {
    use tracing_subscriber::filter::LevelFilter;
    for (level, expected) in [(None, 0), (Some(Level::INFO), 1), (Some(Level::WARN), 1)] {
        let cap = Capture::default();
        let subscriber =
            tracing_subscriber::registry().with(cap.clone().with_filter(LevelFilter::INFO));
        let _installed = install(subscriber);
        let mut b = Cache::builder();
        if let Some(level) = level {
            b = b.span_level(level);
        }
        let cache = b.build().unwrap();
        let (origin, _) = origin(|_, _| ok("max-age=60", "x"));
        send(&cached(&cache, origin), get(URL)).await;
        let spans = cap.spans_named("cache.lookup");
        assert_eq!(spans.len(), expected, "span_level {level:?}: {spans:#?}");
        if let Some(s) = spans.first() {
            assert_eq!(Some(s.level), level);
            assert_eq!(s.str("cache.result"), Some("miss"));
            assert_eq!(s.str("cache.key"), Some("GET http://example.com/resource"));
        }
    }
}

#[tokio::test]
async fn with_observability_off_only_the_global_counters_are_kept() {
    let (cap, _installed) = capture();
    let clock = clock();
    let cache = builder(&clock)
        .observability(false)
        .span_level(Level::INFO)
        .log_level(LogLevel::Detailed)
        .build()
        .unwrap();
    let (origin, _) = origin(|_, _| ok("max-age=60", "x"));
    let svc = cached(&cache, origin);
    for _ in 0..3 {
        send(&svc, get("http://example.com/a")).await;
    }
    send(&svc, request(Method::POST, "http://example.com/b", &[])).await;
    let st = cache.stats();
    assert_eq!(
        (st.requests, st.hits, st.hits_l1, st.misses, st.passes),
        (4, 2, 2, 1, 1)
    );
    assert!((st.hit_ratio - 2.0 / 3.0).abs() < 1e-9);
    assert!(cache.label_stats().is_empty());
    assert_eq!((st.hit_latency.count, st.miss_latency.count), (0, 0));
    assert_eq!(st.window.lookups, 0);
    assert!(cap.spans_named("cache.lookup").is_empty());
    assert!(cap.events_starting("cache lookup").is_empty());
    cache.reset_stats();
    assert_eq!(cache.stats().requests, 0);
}

// ---------------------------------------------------------------------------
// 2. Labels
// ---------------------------------------------------------------------------

/// axum routers (the `axum` feature).
#[cfg(feature = "axum")]
mod axum_routes {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tower::ServiceExt;
    use tower_tiered_cache::CacheLayer;

    use super::*;

    fn users_router(cache: &Cache, calls: &Arc<AtomicUsize>, per_route: bool) -> axum::Router {
        use axum::extract::Path;
        use axum::routing::get as route;
        let (c1, c2) = (calls.clone(), calls.clone());
        let router = axum::Router::new()
            .route(
                "/users/{id}",
                route(move |Path(id): Path<String>| {
                    c1.fetch_add(1, Ordering::SeqCst);
                    async move { ([("cache-control", "max-age=60")], format!("user {id}")) }
                }),
            )
            .route(
                "/static/{*path}",
                route(move |Path(path): Path<String>| {
                    c2.fetch_add(1, Ordering::SeqCst);
                    async move { ([("cache-control", "max-age=60")], format!("file {path}")) }
                }),
            );
        if per_route {
            router.route_layer(CacheLayer::new(cache.clone()))
        } else {
            router.layer(CacheLayer::new(cache.clone()))
        }
    }

    async fn call_router(app: &axum::Router, path: &str) -> String {
        let req = Request::get(path).body(axum::body::Body::empty()).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(req))
            .await
            .expect("in time")
            .expect("infallible");
        assert_eq!(resp.status(), 200, "{path}");
        cache_status(&resp)
    }

    /// axum sets `MatchedPath` before it calls the route's service, and both
    /// `Router::route_layer` and `Router::layer` wrap each route's service (in
    /// axum 0.8 `layer` is applied per route too), so the cache sees the
    /// template either way. (A `CacheLayer` wrapping the whole `Router` from the
    /// outside, e.g. `CacheLayer::new(c).layer(router)`, runs before routing and
    /// sees no `MatchedPath`: it labels by host or `default`.)
    #[tokio::test]
    async fn axum_route_templates_label_requests() {
        for per_route in [true, false] {
            let cache = Cache::builder().build().unwrap();
            let calls = Arc::new(AtomicUsize::new(0));
            let app = users_router(&cache, &calls, per_route);
            for path in ["/users/1", "/users/2", "/users/1", "/users/2"] {
                call_router(&app, path).await;
            }
            for path in [
                "/static/css/site.css",
                "/static/css/site.css",
                "/static/a.js",
            ] {
                call_router(&app, path).await;
            }
            assert_eq!(calls.load(Ordering::SeqCst), 4);
            let stats = cache.label_stats();
            assert_eq!(
                summary(&stats),
                [
                    ("/users/{id}".to_owned(), 4, 2, 2),
                    ("/static/{*path}".to_owned(), 3, 1, 2),
                ],
                "route_layer: {per_route}"
            );
            let users = label(&stats, "/users/{id}");
            assert_eq!(users.hits_l1, 2);
            assert_eq!(users.stores, 2);
            assert!((users.hit_ratio - 0.5).abs() < 1e-9);
        }

        // Outside the router: no template, and relative URIs have no host.
        let cache = Cache::builder().build().unwrap();
        let inner = axum::Router::new().route(
            "/users/{id}",
            axum::routing::get(|| async { ([("cache-control", "max-age=60")], "u") }),
        );
        let outer = tower::Layer::layer(&CacheLayer::new(cache.clone()), inner);
        for _ in 0..2 {
            let req = Request::get("/users/1")
                .body(axum::body::Body::empty())
                .unwrap();
            let resp = outer.clone().oneshot(req).await.unwrap();
            assert_eq!(resp.status(), 200);
        }
        assert_eq!(
            summary(&cache.label_stats()),
            [("default".to_owned(), 2, 1, 1)]
        );
    }
}

#[tokio::test]
async fn client_side_labels_are_upstream_hosts() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, _) = origin(|_, _| ok("max-age=60", "x"));
    let svc = cached(&cache, origin);
    for url in [
        "http://a.example/x",
        "http://a.example/x",
        "http://b.example/y",
        "http://a.example/z",
        "/relative",
    ] {
        send(&svc, get(url)).await;
    }
    assert_eq!(
        summary(&cache.label_stats()),
        [
            ("a.example".to_owned(), 3, 1, 2),
            ("b.example".to_owned(), 1, 0, 1),
            ("default".to_owned(), 1, 0, 1),
        ]
    );
    assert_eq!(cache.stats().labels, cache.label_stats());
}

#[tokio::test]
async fn labels_beyond_max_labels_are_counted_as_other() {
    let clock = clock();
    let cache = builder(&clock).max_labels(2).build().unwrap();
    let (origin, _) = origin(|_, _| ok("max-age=60", "x"));
    let svc = cached(&cache, origin);
    for url in [
        "http://a.example/1",
        "http://b.example/1",
        "http://c.example/1",
        "http://c.example/1",
        "http://d.example/1",
        "http://a.example/1",
    ] {
        send(&svc, get(url)).await;
    }
    assert_eq!(
        summary(&cache.label_stats()),
        [
            ("other".to_owned(), 3, 1, 2),
            ("a.example".to_owned(), 2, 1, 1),
            ("b.example".to_owned(), 1, 0, 1),
        ]
    );
    assert!(Cache::builder().max_labels(0).build().is_err());
    assert!(Cache::builder().max_labels(1001).build().is_err());
}

#[tokio::test]
async fn label_functions_host_headers_and_no_labels() {
    let clock = clock();
    let cache = builder(&clock)
        .label_fn(|p| {
            p.headers
                .get("x-tenant")
                .and_then(|v| v.to_str().ok())
                .map(|t| format!("tenant:{t}"))
        })
        .build()
        .unwrap();
    let (origin, _) = origin(|_, _| ok("max-age=60", "x"));
    let svc = cached(&cache, origin.clone());
    send(
        &svc,
        get_with("http://h.example/a", &[("x-tenant", "acme")]),
    )
    .await;
    send(
        &svc,
        get_with("http://h.example/a", &[("x-tenant", "acme")]),
    )
    .await;
    send(
        &svc,
        get_with("http://h.example/b", &[("x-tenant", "zeta")]),
    )
    .await;
    send(&svc, get("http://h.example/c")).await;
    assert_eq!(
        summary(&cache.label_stats()),
        [
            ("tenant:acme".to_owned(), 2, 1, 1),
            ("default".to_owned(), 1, 0, 1),
            ("tenant:zeta".to_owned(), 1, 0, 1),
        ]
    );

    let cache = builder(&clock).labels(LabelSource::Host).build().unwrap();
    let svc = cached(&cache, origin.clone());
    send(&svc, get_with("/p", &[("host", "api.example:8080")])).await;
    send(&svc, get("http://web.example/p")).await;
    assert_eq!(
        summary(&cache.label_stats()),
        [
            ("api.example".to_owned(), 1, 0, 1),
            ("web.example".to_owned(), 1, 0, 1),
        ]
    );

    let cache = builder(&clock).labels(LabelSource::None).build().unwrap();
    let svc = cached(&cache, origin);
    send(&svc, get("http://a.example/p")).await;
    send(&svc, get("http://b.example/p")).await;
    assert_eq!(
        summary(&cache.label_stats()),
        [("default".to_owned(), 2, 0, 2)]
    );
}

// ---------------------------------------------------------------------------
// 3. Per-label counters add up to the global ones
// ---------------------------------------------------------------------------

#[tokio::test]
async fn label_counters_add_up_to_the_global_counters() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    let (origin, log) = origin_fn(move |_, req: Request<()>| {
        let g = g.clone();
        async move {
            let host = req.uri().host().unwrap_or("").to_owned();
            let revalidating = req.headers().contains_key("if-none-match");
            let resp = match (host.as_str(), req.uri().path()) {
                ("c.example", _) => {
                    g.pass().await;
                    ok("max-age=60", "c")
                }
                ("b.example", _) => ok("max-age=1, stale-while-revalidate=100", "b"),
                ("d.example", _) if revalidating => response(
                    304,
                    &[("etag", "\"v1\""), ("cache-control", "max-age=1")],
                    "",
                ),
                ("d.example", _) => response(
                    200,
                    &[("etag", "\"v1\""), ("cache-control", "max-age=1")],
                    "d",
                ),
                ("e.example", "/err") => response(503, &[], "down"),
                ("e.example", _) => response(200, &[], "no freshness"),
                _ => ok("max-age=60", "a"),
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let svc = cached(&cache, origin);

    // a: a miss, two hits, and two passes (an unsafe method and OPTIONS).
    for _ in 0..3 {
        send(&svc, get("http://a.example/h")).await;
    }
    send(&svc, request(Method::POST, "http://a.example/p", &[])).await;
    send(&svc, request(Method::OPTIONS, "http://a.example/h", &[])).await;
    // b: a miss, then stale (after 2 s) with a background refresh.
    // d: a miss, then revalidated with a 304 (after 2 s).
    send(&svc, get("http://b.example/s")).await;
    send(&svc, get("http://d.example/r")).await;
    clock.advance(secs(2));
    let r = send(&svc, get("http://b.example/s")).await;
    assert!(cache_status(&r).contains("ttl=-1"), "{}", cache_status(&r));
    let r = send(&svc, get("http://d.example/r")).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=stale; fwd-status=304; detail=l1"
    );
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);
    // c: three concurrent misses, one upstream call.
    let before = log.calls();
    let tasks: Vec<_> = (0..3)
        .map(|_| tokio::spawn(send(&svc, get("http://c.example/c"))))
        .collect();
    assert!(eventually(|| log.calls() == before + 1).await);
    settle().await;
    assert_eq!(cache.stats().in_flight, 1);
    gate.open();
    for t in tasks {
        assert_eq!(body(t.await.unwrap()).await, "c");
    }
    // e: no freshness (a miss, then hit-for-pass), and a 503 (a miss).
    send(&svc, get("http://e.example/nf")).await;
    let r = send(&svc, get("http://e.example/nf")).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=uri-miss; detail=hit-for-pass"
    );
    let r = send(&svc, get("http://e.example/err")).await;
    assert_eq!(r.status(), 503);

    let st = cache.stats();
    let labels = cache.label_stats();
    let sum = |f: fn(&LabelStats) -> u64| labels.iter().map(f).sum::<u64>();
    assert_eq!(sum(|l| l.hits), st.hits);
    assert_eq!(sum(|l| l.hits_l1), st.hits_l1);
    assert_eq!(sum(|l| l.hits_l2), st.hits_l2);
    assert_eq!(sum(|l| l.misses), st.misses);
    assert_eq!(sum(|l| l.stale), st.stale);
    assert_eq!(sum(|l| l.coalesced), st.coalesced);
    assert_eq!(sum(|l| l.revalidated), st.revalidated);
    assert_eq!(sum(|l| l.passes), st.passes + st.unavailable);
    assert_eq!(sum(|l| l.requests), st.requests);
    // (`stores` is left out: see `a_304_refresh_counts_as_a_store_under_its_label`.)
    // ... and the global counters are what the workload made.
    assert_eq!(
        (
            st.hits,
            st.misses,
            st.stale,
            st.coalesced,
            st.revalidated,
            st.passes,
            st.unavailable,
            st.requests
        ),
        (2, 6, 1, 2, 1, 3, 0, 15),
        "{st:#?}"
    );
    assert_eq!(
        labels
            .iter()
            .map(|l| (
                l.label.as_str(),
                l.requests,
                l.hits,
                l.misses,
                l.stale,
                l.coalesced,
                l.revalidated,
                l.passes
            ))
            .collect::<Vec<_>>(),
        [
            ("a.example", 5, 2, 1, 0, 0, 0, 2),
            ("c.example", 3, 0, 1, 0, 2, 0, 0),
            ("e.example", 3, 0, 2, 0, 0, 0, 1),
            ("b.example", 2, 0, 1, 1, 0, 0, 0),
            ("d.example", 2, 0, 1, 0, 0, 1, 0),
        ]
    );
    let e = label(&labels, "e.example");
    assert_eq!(e.not_stored_no_freshness, 1);
    assert_eq!(e.upstream_errors, 1);
    assert_eq!(e.stores, 0);
}

/// `only-if-cached` with nothing stored is answered 504 without calling the
/// upstream: globally it is `unavailable` (not a lookup, not in the hit
/// ratio); per label it should be the same kind of non-lookup.
#[tokio::test]
async fn only_if_cached_504s_are_not_label_misses() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, _| ok("max-age=60", "x"));
    let svc = cached(&cache, origin);
    send(&svc, get("http://a.example/stored")).await;
    send(&svc, get("http://a.example/stored")).await;
    let r = send(
        &svc,
        get_with(
            "http://a.example/none",
            &[("cache-control", "only-if-cached")],
        ),
    )
    .await;
    assert_eq!(r.status(), 504);
    assert_eq!(log.calls(), 1);
    let st = cache.stats();
    assert_eq!((st.hits, st.misses, st.unavailable), (1, 1, 1));
    assert!((st.hit_ratio - 0.5).abs() < 1e-9);
    let a = label(&cache.label_stats(), "a.example").clone();
    assert_eq!(a.requests, 3);
    assert_eq!(a.misses, st.misses, "{a:#?}");
    assert_eq!(a.passes, st.passes + st.unavailable, "{a:#?}");
    assert!((a.hit_ratio - st.hit_ratio).abs() < 1e-9, "{a:#?}");
}

/// A 304 that freshens the stored entry counts in `Stats::stores`; the
/// label's `stores` should count it too (recommendations divide by it).
#[tokio::test]
async fn a_304_refresh_counts_as_a_store_under_its_label() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin(|_, req| {
        let headers = [("etag", "\"v1\""), ("cache-control", "max-age=1")];
        if req.headers().contains_key("if-none-match") {
            response(304, &headers, "")
        } else {
            response(200, &headers, "d")
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get("http://d.example/r")).await;
    clock.advance(secs(2));
    let r = send(&svc, get("http://d.example/r")).await;
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=stale; fwd-status=304; detail=l1"
    );
    assert_eq!(log.calls(), 2);
    let st = cache.stats();
    assert_eq!((st.misses, st.revalidated, st.stores), (1, 1, 2));
    let d = label(&cache.label_stats(), "d.example").clone();
    assert_eq!((d.misses, d.revalidated), (1, 1));
    assert_eq!(d.stores, st.stores, "{d:#?}");
}

// ---------------------------------------------------------------------------
// 4. Latency and the rolling window
// ---------------------------------------------------------------------------

/// By default one fresh L1 hit in eight is timed (per thread); every
/// other request is, and hit counts stay exact.
#[tokio::test]
async fn fresh_hits_are_timed_one_in_eight_by_default() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, _) = origin(|_, _| ok("max-age=3600", "x"));
    let svc = cached(&cache, origin);
    // This test's thread is new: its tick starts at 0. The miss is the
    // first request (tick 1), the 64 hits are ticks 2..=65: 8 of them are
    // multiples of 8.
    for _ in 0..65 {
        send(&svc, get("http://example.com/t")).await;
    }
    let st = cache.stats();
    assert_eq!((st.hits, st.misses), (64, 1));
    assert_eq!(st.hit_latency.count, 8);
    assert_eq!(st.miss_latency.count, 1);
    let l = label(&cache.label_stats(), "example.com").clone();
    assert_eq!(l.hits, 64);
    assert!(l.mean_latency_ms > 0.0, "{l:#?}");
    assert!(
        Cache::builder().hit_timing_sample(0).build().is_err(),
        "0 is refused"
    );
}

#[tokio::test]
async fn latency_counts_match_outcomes_and_the_window_ages_out() {
    let clock = clock();
    let cache = builder(&clock).hit_timing_sample(1).build().unwrap();
    let (origin, _) = origin(|_, _| ok("max-age=3600", "x"));
    let svc = cached(&cache, origin);
    for i in 0..3 {
        let url = format!("http://example.com/{i}");
        send(&svc, get(&url)).await;
        send(&svc, get(&url)).await;
    }
    send(&svc, get("http://example.com/0")).await;
    send(&svc, get("http://example.com/1")).await;
    send(
        &svc,
        request(Method::DELETE, "http://example.com/other", &[]),
    )
    .await;

    let st = cache.stats();
    assert_eq!((st.hits, st.misses, st.passes), (5, 3, 1));
    assert_eq!(st.hit_latency.count, st.hits + st.stale);
    assert_eq!(
        st.miss_latency.count,
        st.misses + st.coalesced + st.revalidated
    );
    for l in [st.hit_latency, st.miss_latency] {
        assert!(l.mean_ms > 0.0, "{l:?}");
        assert!(l.p50_ms <= l.p95_ms && l.p95_ms <= l.p99_ms, "{l:?}");
    }
    assert_eq!(st.window.seconds, 300);
    assert_eq!(
        (st.window.lookups, st.window.served, st.window.passes),
        (8, 5, 1)
    );
    assert!((st.window.hit_ratio - 5.0 / 8.0).abs() < 1e-9);
    assert_eq!(st.avg_ttl_remaining_ms, Some(3_600_000));

    // Four minutes on: all still inside the window.
    clock.advance(Duration::from_secs(240));
    let st = cache.stats();
    assert_eq!((st.window.lookups, st.window.served), (8, 5));
    assert_eq!(st.avg_ttl_remaining_ms, Some(3_360_000));

    // Six minutes after the requests: the window is empty, the totals stay.
    clock.advance(Duration::from_secs(120));
    let st = cache.stats();
    assert_eq!(
        (
            st.window.lookups,
            st.window.served,
            st.window.passes,
            st.window.hit_ratio
        ),
        (0, 0, 0, 0.0)
    );
    assert_eq!((st.hits, st.misses, st.passes), (5, 3, 1));
    assert_eq!((st.hit_latency.count, st.miss_latency.count), (5, 3));
    // A new request lands in the new window.
    send(&svc, get("http://example.com/2")).await;
    let st = cache.stats();
    assert_eq!((st.window.lookups, st.window.served), (1, 1));
}

#[tokio::test]
async fn reset_stats_zeroes_labels_latency_and_the_window() {
    let clock = clock();
    let cache = builder(&clock).hit_timing_sample(1).build().unwrap();
    let (origin, log) = origin(|_, _| ok("max-age=60", "x"));
    let svc = cached(&cache, origin);
    for _ in 0..3 {
        send(&svc, get("http://a.example/x")).await;
    }
    send(&svc, get("http://b.example/x")).await;
    assert_eq!(cache.label_stats().len(), 2);
    let before = cache.stats();
    assert_eq!(before.l1_entries, 2);

    cache.reset_stats();
    let st = cache.stats();
    assert!(cache.label_stats().is_empty(), "{:?}", cache.label_stats());
    assert!(st.labels.is_empty());
    assert_eq!(st.hit_latency, Latency::default());
    assert_eq!(st.miss_latency, Latency::default());
    assert_eq!(
        (st.window.lookups, st.window.served, st.window.passes),
        (0, 0, 0)
    );
    assert_eq!((st.requests, st.hits, st.misses, st.stores), (0, 0, 0, 0));
    assert!(cache.top_labels(10).is_empty());
    // Tier sizes are not counters.
    assert_eq!(st.l1_entries, 2);
    assert_eq!(st.l1_bytes, before.l1_bytes);

    // Counting starts again from zero; the stored entry still answers.
    let r = send(&svc, get("http://a.example/x")).await;
    assert_eq!(cache_status(&r), HIT);
    assert_eq!(log.calls(), 2);
    let st = cache.stats();
    assert_eq!(summary(&st.labels), [("a.example".to_owned(), 1, 1, 0)]);
    assert_eq!((st.hit_latency.count, st.miss_latency.count), (1, 0));
    assert_eq!((st.window.lookups, st.window.served), (1, 1));
}

// ---------------------------------------------------------------------------
// 5. Health
// ---------------------------------------------------------------------------

#[tokio::test]
async fn health_follows_the_window_hit_ratio() {
    let clock = clock();
    let cache = builder(&clock)
        .health_thresholds(HealthThresholds::new().min_requests(10))
        .build()
        .unwrap();
    let h = cache.health();
    assert_eq!(h.status, HealthStatus::Healthy);
    assert!(h.reasons.is_empty());
    assert_eq!((h.window_lookups, h.window_hit_ratio), (0, 0.0));
    assert_eq!(h.l2_breaker, None);

    let (origin, _) = origin(|_, req| {
        if req.uri().path().starts_with("/nostore") {
            ok("no-store", "x")
        } else {
            ok("max-age=3600", "x")
        }
    });
    let svc = cached(&cache, origin);
    send(&svc, get("http://example.com/kept")).await;
    for i in 0..8 {
        send(&svc, get(&format!("http://example.com/nostore/{i}"))).await;
    }
    // Nine misses: under min_requests, not judged.
    let h = cache.health();
    assert_eq!((h.status, h.window_lookups), (HealthStatus::Healthy, 9));
    // The tenth: judged ("at least min_requests"), and 0 % is below 50 %.
    send(&svc, get("http://example.com/nostore/8")).await;
    let h = cache.health();
    assert_eq!(h.status, HealthStatus::Degraded, "{h:#?}");
    assert_eq!(h.window_lookups, 10);
    assert_eq!(h.window_hit_ratio, 0.0);
    assert_eq!(h.reasons.len(), 1, "{h:#?}");
    assert!(h.reasons[0].contains("hit ratio"), "{h:#?}");

    // Six minutes on, twenty hits: healthy again.
    clock.advance(Duration::from_secs(360));
    assert_eq!(cache.health().window_lookups, 0);
    for _ in 0..20 {
        let r = send(&svc, get("http://example.com/kept")).await;
        assert_eq!(cache_status(&r), HIT);
    }
    let h = cache.health();
    assert_eq!(h.status, HealthStatus::Healthy, "{h:#?}");
    assert!(h.reasons.is_empty());
    assert_eq!((h.window_lookups, h.window_hit_ratio), (20, 1.0));
}

/// An origin that takes `slow` for paths under `/slow`.
fn slow_origin(slow: Duration) -> (Origin, Log) {
    origin_fn(move |_, req: Request<()>| async move {
        if req.uri().path().starts_with("/slow") {
            tokio::time::sleep(slow).await;
        }
        Ok::<_, Infallible>(ok("max-age=60", "x"))
    })
}

#[tokio::test]
async fn health_is_degraded_by_a_high_mean_latency() {
    let clock = clock();
    let cache = builder(&clock)
        .health_thresholds(
            HealthThresholds::new()
                .degraded_mean_latency(Duration::from_millis(50))
                .warning_p95(Duration::from_secs(10)),
        )
        .build()
        .unwrap();
    let (origin, _) = slow_origin(Duration::from_millis(60));
    let svc = cached(&cache, origin);
    send(&svc, get("http://example.com/slow")).await;
    let h = cache.health();
    assert_eq!(h.status, HealthStatus::Degraded, "{h:#?}");
    assert_eq!(h.reasons.len(), 1, "{h:#?}");
    assert!(h.reasons[0].contains("mean latency"), "{h:#?}");
    assert!(h.mean_latency_ms >= 60.0, "{h:#?}");
}

#[tokio::test]
async fn health_warns_on_a_slow_tail() {
    let clock = clock();
    // Margins are wide: the machine may be busy (fast requests must stay
    // under the p95 threshold, however loaded).
    let cache = builder(&clock)
        .health_thresholds(
            HealthThresholds::new()
                .warning_p95(Duration::from_millis(200))
                .degraded_mean_latency(Duration::from_secs(1)),
        )
        .build()
        .unwrap();
    let (origin, _) = slow_origin(Duration::from_millis(250));
    let svc = cached(&cache, origin);
    // Eight fast lookups (one miss, seven hits) and two slow misses: the
    // mean stays under its threshold, the 95th percentile is a slow one.
    for _ in 0..8 {
        send(&svc, get("http://example.com/fast")).await;
    }
    assert_eq!(cache.health().status, HealthStatus::Healthy);
    send(&svc, get("http://example.com/slow/1")).await;
    send(&svc, get("http://example.com/slow/2")).await;
    let h = cache.health();
    assert_eq!(h.status, HealthStatus::Warning, "{h:#?}");
    assert_eq!(h.reasons.len(), 1, "{h:#?}");
    assert!(h.reasons[0].contains("p95 latency"), "{h:#?}");
    assert!(h.p95_latency_ms > 200.0, "{h:#?}");
    assert!(h.mean_latency_ms < 1000.0, "{h:#?}");
}

// ---------------------------------------------------------------------------
// 6. Low performers and recommendations
// ---------------------------------------------------------------------------

fn kinds(p: &tower_tiered_cache::LowPerformer) -> Vec<RecommendationKind> {
    p.recommendations.iter().map(|r| r.kind).collect()
}

#[tokio::test]
async fn low_performers_come_with_recommendations_and_top_labels_are_ordered() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, _) = origin(|_, req| match req.uri().host().unwrap_or("") {
        "nottl.example" => response(200, &[], "no cache-control"),
        "cookie.example" => response(
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "sid=1")],
            "personal",
        ),
        "vary.example" => response(
            200,
            &[("cache-control", "max-age=60"), ("vary", "accept-language")],
            "localized",
        ),
        _ => ok("max-age=60", "fine"),
    });
    let svc = cached(&cache, origin);
    for i in 0..10 {
        send(&svc, get(&format!("http://nottl.example/{i}"))).await;
        send(&svc, get(&format!("http://cookie.example/{i}"))).await;
    }
    for i in 0..12 {
        let lang = format!("l{i}");
        send(
            &svc,
            get_with("http://vary.example/page", &[("accept-language", &lang)]),
        )
        .await;
    }
    for _ in 0..15 {
        send(&svc, get("http://good.example/page")).await;
    }
    for i in 0..3 {
        send(&svc, get(&format!("http://few.example/{i}"))).await;
    }

    let low = cache.low_performers(0.5);
    let names: Vec<&str> = low.iter().map(|p| p.stats.label.as_str()).collect();
    // Worst ratio first (all 0 here), then the busiest.
    assert_eq!(
        names,
        ["vary.example", "cookie.example", "nottl.example"],
        "{low:#?}"
    );
    let by = |n: &str| low.iter().find(|p| p.stats.label == n).unwrap();

    let nottl = by("nottl.example");
    assert_eq!(kinds(nottl), [RecommendationKind::SetRouteTtl]);
    assert_eq!(nottl.stats.not_stored_no_freshness, 10);
    assert!(
        nottl.recommendations[0].message.contains("10 of 10 misses"),
        "{nottl:#?}"
    );

    let cookie = by("cookie.example");
    assert_eq!(kinds(cookie), [RecommendationKind::PersonalizedResponses]);
    assert_eq!(cookie.stats.not_stored_set_cookie, 10);

    let vary = by("vary.example");
    assert_eq!(kinds(vary), [RecommendationKind::ReduceVariants]);
    assert_eq!(
        (vary.stats.misses, vary.stats.vary_misses, vary.stats.stores),
        (12, 11, 12)
    );

    // A stricter threshold adds none (good.example is 14/15), a looser one
    // takes it in.
    assert_eq!(cache.low_performers(0.9).len(), 3);
    assert_eq!(cache.low_performers(0.95).len(), 4);
    assert!(cache.low_performers(0.0).is_empty());

    let top: Vec<(String, u64)> = cache
        .top_labels(3)
        .into_iter()
        .map(|s| (s.label, s.requests))
        .collect();
    assert_eq!(
        top,
        [
            ("good.example".to_owned(), 15),
            ("vary.example".to_owned(), 12),
            // A tie is broken by name.
            ("cookie.example".to_owned(), 10),
        ]
    );
    assert_eq!(cache.top_labels(100).len(), 5);
    assert!(cache.top_labels(0).is_empty());
}

#[tokio::test]
async fn a_tiny_l1_is_told_to_grow() {
    let clock = clock();
    let cache = builder(&clock)
        .l1_capacity_bytes(32 * 1024)
        .build()
        .unwrap();
    let body_text = "b".repeat(900);
    let (origin, _) = origin(move |_, _| ok("max-age=600", &body_text));
    let svc = cached(&cache, origin);
    for i in 0..60 {
        let r = send(&svc, get(&format!("http://tiny.example/{i}"))).await;
        assert_eq!(cache_status(&r), MISS_STORED, "{i}");
    }
    let st = cache.stats();
    assert!(st.evictions > 0, "{st:#?}");
    let tiny = label(&cache.label_stats(), "tiny.example").clone();
    assert!(tiny.evicted_unread > 0, "{tiny:#?}");
    assert!(tiny.evicted_unread <= st.evictions);
    let low = cache.low_performers(0.5);
    assert_eq!(low.len(), 1, "{low:#?}");
    assert_eq!(kinds(&low[0]), [RecommendationKind::RaiseL1Capacity]);
    assert!(
        low[0].recommendations[0].message.contains("32768 bytes"),
        "{low:#?}"
    );
}

// ---------------------------------------------------------------------------
// 7. Log levels
// ---------------------------------------------------------------------------

#[tokio::test]
async fn detailed_logs_one_debug_event_per_request() {
    let (cap, _guard) = capture();
    let clock = clock();
    let cache = builder(&clock)
        .log_level(LogLevel::Detailed)
        .build()
        .unwrap();
    let (origin, _) = origin(|_, _| ok("max-age=60", "x"));
    let svc = cached(&cache, origin);
    send(&svc, get("http://example.com/a")).await;
    send(&svc, get("http://example.com/a")).await;
    send(&svc, request(Method::POST, "http://example.com/a", &[])).await;

    let events = cap.events_starting("cache lookup");
    let seen: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.level,
                e.str("result"),
                e.str("tier"),
                e.str("label"),
                e.str("key"),
            )
        })
        .collect();
    let key = Some("GET http://example.com/a");
    assert_eq!(
        seen,
        [
            (
                Level::DEBUG,
                Some("miss"),
                Some("none"),
                Some("example.com"),
                key
            ),
            (
                Level::DEBUG,
                Some("hit"),
                Some("l1"),
                Some("example.com"),
                key
            ),
            (
                Level::DEBUG,
                Some("pass"),
                Some("none"),
                Some("example.com"),
                key
            ),
        ]
    );
    assert_eq!(events[0].fields.get("status_code"), Some(&Val::U64(200)));
    assert!(cap.events_starting("cache summary").is_empty());
}

#[tokio::test]
async fn aggregate_logs_a_summary_every_n_requests_or_period() {
    let (cap, _guard) = capture();
    let clock = clock();
    let cache = builder(&clock)
        .log_level(LogLevel::Aggregate {
            every_requests: 5,
            every: Duration::from_secs(60),
        })
        .build()
        .unwrap();
    let (origin, _) = origin(|_, _| ok("max-age=3600", "x"));
    let svc = cached(&cache, origin);
    let summaries = || cap.events_starting("cache summary");

    // The first request starts the period; five more make a summary.
    for i in 1..=6 {
        send(&svc, get("http://example.com/a")).await;
        assert_eq!(summaries().len(), usize::from(i == 6), "after {i} requests");
    }
    let s = &summaries()[0];
    assert_eq!(s.level, Level::INFO);
    assert_eq!(s.fields.get("requests"), Some(&Val::U64(6)));
    assert_eq!(s.fields.get("hits"), Some(&Val::U64(5)));
    assert_eq!(s.fields.get("misses"), Some(&Val::U64(1)));
    assert!(
        s.str("labels")
            .unwrap()
            .starts_with("example.com: 6 req, 83.3% hits"),
        "{s:#?}"
    );
    assert!(cap.events_starting("cache lookup").is_empty());

    // Four more requests: not yet; then a minute passes: due by time.
    for _ in 0..4 {
        send(&svc, get("http://example.com/a")).await;
    }
    assert_eq!(summaries().len(), 1);
    clock.advance(Duration::from_secs(61));
    send(&svc, get("http://example.com/a")).await;
    assert_eq!(summaries().len(), 2);
    assert_eq!(summaries()[1].fields.get("requests"), Some(&Val::U64(11)));
}

#[tokio::test]
async fn minimal_logs_only_warnings_failed_refreshes_and_slow_upstreams() {
    let (cap, _guard) = capture();
    let clock = clock();
    let cache = builder(&clock)
        .slow_threshold(Duration::from_millis(20))
        .build()
        .unwrap();
    let (origin, log) = origin_fn(|n, req: Request<()>| async move {
        let resp = match req.uri().path() {
            "/slow" => {
                tokio::time::sleep(Duration::from_millis(30)).await;
                ok("max-age=60", "slow")
            }
            _ if n == 0 => ok("max-age=1, stale-while-revalidate=60", "v1"),
            _ => response(500, &[], "broken"),
        };
        Ok::<_, Infallible>(resp)
    });
    let svc = cached(&cache, origin);
    send(&svc, get("http://example.com/feed")).await;
    send(&svc, get("http://example.com/feed")).await;
    // Nothing for a miss and a hit (a slow warning aside, should the
    // machine be busy enough to stall a call for 20 ms).
    let early: Vec<_> = cap
        .events()
        .into_iter()
        .filter(|e| !e.message.starts_with("slow cache operation"))
        .collect();
    assert!(early.is_empty(), "{early:#?}");

    // Stale: served, and the refresh fails with a 500.
    clock.advance(secs(3));
    let r = send(&svc, get("http://example.com/feed")).await;
    assert_eq!(body(r).await, "v1");
    assert!(eventually(|| cache.stats().refresh_failed == 1).await);
    assert_eq!(log.calls(), 2);
    let warned = cap.events_starting("background refresh failed");
    assert_eq!(warned.len(), 1, "{:#?}", cap.events());
    assert_eq!(warned[0].level, Level::WARN);
    assert_eq!(warned[0].str("label"), Some("example.com"));
    assert_eq!(warned[0].fields.get("timed_out"), Some(&Val::Bool(false)));

    // A slow upstream (on a host of its own: on a busy machine another
    // call could take 20 ms too).
    send(&svc, get("http://slow.example/slow")).await;
    let slow: Vec<_> = cap
        .events_starting("slow cache operation")
        .into_iter()
        .filter(|e| e.str("label") == Some("slow.example"))
        .collect();
    assert_eq!(slow.len(), 1, "{:#?}", cap.events());
    assert_eq!(slow[0].level, Level::WARN);
    assert_eq!(slow[0].str("operation"), Some("upstream"));
    assert_eq!(slow[0].fields.get("threshold_ms"), Some(&Val::U64(20)));

    // Nothing else: no per-request events, no summaries.
    let others: Vec<_> = cap
        .events()
        .into_iter()
        .filter(|e| e.target == "tower_tiered_cache" && e.level != Level::WARN)
        .collect();
    assert!(others.is_empty(), "{others:#?}");
}

#[tokio::test]
async fn log_level_off_logs_nothing() {
    let (cap, _guard) = capture();
    let clock = clock();
    let cache = builder(&clock)
        .log_level(LogLevel::Off)
        .slow_threshold(Duration::from_millis(1))
        .build()
        .unwrap();
    let (origin, _) = slow_origin(Duration::from_millis(5));
    let svc = cached(&cache, origin);
    send(&svc, get("http://example.com/slow")).await;
    send(&svc, get("http://example.com/slow")).await;
    let ours: Vec<_> = cap
        .events()
        .into_iter()
        .filter(|e| e.target == "tower_tiered_cache")
        .collect();
    assert!(ours.is_empty(), "{ours:#?}");
    assert_eq!("detailed".parse::<LogLevel>(), Ok(LogLevel::Detailed));
    assert_eq!("aggregate".parse::<LogLevel>(), Ok(LogLevel::AGGREGATE));
    assert!("loud".parse::<LogLevel>().is_err());
}

// ---------------------------------------------------------------------------
// 8. Eager refresh
// ---------------------------------------------------------------------------

fn versioned() -> (Origin, Log) {
    origin(|n, _| ok("max-age=100", &format!("v{}", n + 1)))
}

#[tokio::test]
async fn eager_refresh_renews_a_hot_entry_before_it_goes_stale() {
    let clock = clock();
    let cache = builder(&clock).eager_refresh(0.2, 3).build().unwrap();
    let (origin, log) = versioned();
    let svc = cached(&cache, origin);
    let url = "http://example.com/hot";
    assert_eq!(body(send(&svc, get(url)).await).await, "v1");
    for _ in 0..3 {
        clock.advance(secs(10));
        let r = send(&svc, get(url)).await;
        assert_eq!(cache_status(&r), HIT);
    }
    settle().await;
    assert_eq!(log.calls(), 1, "not yet within the last 20 %");

    clock.set(T0 + 85_000); // 15 % of the lifetime left
    for _ in 0..3 {
        let r = send(&svc, get(url)).await;
        assert_eq!(cache_status(&r), HIT, "still answered from the entry");
        assert_eq!(body(r).await, "v1");
    }
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);
    settle().await;
    assert_eq!(log.calls(), 2, "exactly one background call");
    let st = cache.stats();
    assert_eq!((st.hits, st.misses, st.upstream_calls), (6, 1, 2));

    let r = send(&svc, get(url)).await;
    assert_eq!(cache_status(&r), HIT);
    assert_eq!(age(&r), Some(0), "the refreshed entry");
    assert_eq!(body(r).await, "v2");
    // Fresh for another 100 s from the refresh.
    clock.advance(secs(99));
    assert_eq!(body(send(&svc, get(url)).await).await, "v2");
    settle().await;
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn eager_refresh_is_claimed_once_per_entry_even_when_it_fails() {
    // The refresh fails and the entry is kept as it is (no stale
    // extension, which would make a new entry): the reads that follow it
    // must not start another early refresh each, or a failing origin gets
    // one call per hit.
    let clock = clock();
    let cache = builder(&clock)
        .eager_refresh(0.2, 3)
        .stale_extension(0.0, 0)
        .build()
        .unwrap();
    let (origin, log) = origin(|n, _| {
        if n == 0 {
            ok("max-age=100", "v1")
        } else {
            response(503, &[], "down")
        }
    });
    let svc = cached(&cache, origin);
    let url = "http://example.com/hot";
    send(&svc, get(url)).await;
    clock.set(T0 + 85_000);
    for _ in 0..3 {
        send(&svc, get(url)).await;
    }
    assert!(eventually(|| cache.stats().refresh_failed == 1).await);
    for _ in 0..10 {
        let r = send(&svc, get(url)).await;
        assert_eq!(cache_status(&r), HIT);
        settle().await;
    }
    assert_eq!(log.calls(), 2, "one early refresh for the entry");
    assert_eq!(cache.stats().refresh_failed, 1);
}

#[tokio::test]
async fn eager_refresh_waits_for_enough_reads_and_is_off_by_default() {
    let clock = clock();
    let cache = builder(&clock).eager_refresh(0.2, 3).build().unwrap();
    let (origin, log) = versioned();
    let svc = cached(&cache, origin);
    let url = "http://example.com/warm";
    send(&svc, get(url)).await;
    clock.advance(secs(10));
    send(&svc, get(url)).await; // read 1
    clock.set(T0 + 85_000);
    send(&svc, get(url)).await; // read 2: under min_reads
    settle().await;
    assert_eq!(log.calls(), 1);
    send(&svc, get(url)).await; // read 3
    assert!(eventually(|| log.calls() == 2).await);
    settle().await;
    assert_eq!(cache.stats().refresh_ok, 1);

    // Off by default: however often it is read.
    let clock = support::clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = versioned();
    let svc = cached(&cache, origin);
    send(&svc, get(url)).await;
    clock.set(T0 + 95_000);
    for _ in 0..20 {
        assert_eq!(cache_status(&send(&svc, get(url)).await), HIT);
    }
    settle().await;
    assert_eq!(log.calls(), 1);

    assert!(Cache::builder().eager_refresh(1.0, 3).build().is_err());
    assert!(Cache::builder().eager_refresh(0.2, 0).build().is_err());
}
