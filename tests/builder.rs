//! `CacheBuilder` as a user meets it: the kinds of `BuildError` and their
//! `source()`, the defaults it documents, and `tag_fn` (tags from a
//! function reach `Cache::invalidate_tag`).

mod support;

use std::error::Error as _;

use tower_tiered_cache::builder::{
    DEFAULT_L1_ADMISSION, DEFAULT_MAX_VARIANTS, DEFAULT_TARGETED_CACHE_CONTROL, MAX_TAG_BYTES,
};
use tower_tiered_cache::{BuildError, Cache, L1Admission};

use support::*;

const HIT: &str = "tower-tiered-cache; hit; detail=l1";
const MISS_STORED: &str = "tower-tiered-cache; fwd=uri-miss; fwd-status=200; stored";

// ---------------------------------------------------------------------------
// BuildError: kinds and sources
// ---------------------------------------------------------------------------

#[test]
fn an_out_of_range_setting_is_an_invalid_setting_without_a_source() {
    let err = Cache::builder().max_variants(0).build().unwrap_err();
    assert!(err.is_invalid_setting());
    assert!(!err.is_redis());
    assert_eq!(err.setting(), "max_variants");
    assert!(err.source().is_none());
    assert_eq!(
        err.to_string(),
        "invalid cache setting `max_variants`: must be at least 1"
    );
    // Two settings that cannot go together are the same kind.
    let err = Cache::builder()
        .partition_by_credentials(true)
        .share_authorized(true)
        .build()
        .unwrap_err();
    assert!(err.is_invalid_setting() && !err.is_redis());
    // And the default builds.
    assert!(Cache::builder()
        .max_variants(DEFAULT_MAX_VARIANTS)
        .build()
        .is_ok());
}

#[test]
fn each_concern_is_checked() {
    // One refused value per check function, named by its setting.
    let cases: Vec<(&str, Result<Cache, BuildError>)> = vec![
        (
            "l1_capacity_bytes",
            Cache::builder().l1_capacity_bytes(0).build(),
        ),
        ("max_variants", Cache::builder().max_variants(0).build()),
        (
            "heuristic_fraction",
            Cache::builder().heuristic_fraction(2.0).build(),
        ),
        (
            "eager_refresh",
            Cache::builder().eager_refresh(1.0, 1).build(),
        ),
        (
            "eager_refresh",
            Cache::builder().eager_refresh(0.5, 0).build(),
        ),
        (
            "adaptive_ttl",
            Cache::builder()
                .adaptive_ttl(tower_tiered_cache::AdaptiveTtl::new().cold_under(60, 0.5))
                .build(),
        ),
        // An upper bound past what an L2 entry's timeline may span: L2
        // would refuse what L1 keeps.
        (
            "adaptive_ttl",
            Cache::builder()
                .adaptive_ttl(
                    tower_tiered_cache::AdaptiveTtl::new()
                        .bounds(std::time::Duration::from_secs(1), std::time::Duration::MAX),
                )
                .build(),
        ),
        (
            "adaptive_ttl",
            Cache::builder()
                .adaptive_ttl(tower_tiered_cache::AdaptiveTtl::new().read_sample(0))
                .build(),
        ),
        (
            "coalesce_timeout",
            Cache::builder()
                .coalesce_timeout(std::time::Duration::ZERO)
                .build(),
        ),
        (
            "upstream_timeout",
            Cache::builder()
                .upstream_timeout(std::time::Duration::ZERO)
                .build(),
        ),
        ("max_labels", Cache::builder().max_labels(1001).build()),
        (
            "hit_timing_sample",
            Cache::builder().hit_timing_sample(0).build(),
        ),
        (
            "partition_by_credentials",
            Cache::builder()
                .partition_by_credentials(true)
                .key_header(http::header::COOKIE)
                .build(),
        ),
    ];
    for (setting, result) in cases.into_iter().chain(hot_key_cases()) {
        let err = result.expect_err(setting);
        assert_eq!(err.setting(), setting, "{err}");
        assert!(err.is_invalid_setting(), "{err}");
    }
}

/// The L1 admission rule: a size of 0 is refused under its own setting,
/// whatever the tiers; every sensible rule builds, with or without L2 (L1
/// alone takes every entry whatever the rule).
#[test]
fn l1_admission_refuses_a_size_of_zero() {
    for rule in [L1Admission::MaxBytes(0), L1Admission::MaxBytesOrReads(0)] {
        let err = Cache::builder().l1_admission(rule).build().unwrap_err();
        assert!(err.is_invalid_setting() && !err.is_redis(), "{err}");
        assert_eq!(err.setting(), "l1_admission", "{rule:?}");
        assert!(err.to_string().contains("at least 1 byte"), "{err}");
    }
    for rule in [
        L1Admission::Always,
        L1Admission::MaxBytes(1),
        L1Admission::Reads,
        L1Admission::MaxBytesOrReads(u64::MAX),
    ] {
        assert!(
            Cache::builder().l1_admission(rule).build().is_ok(),
            "{rule:?}"
        );
    }
    assert_eq!(DEFAULT_L1_ADMISSION, L1Admission::Always);
}

/// `check_hot_keys`: one refused value per bound, and the largest
/// `top_n` accepted.
fn hot_key_cases() -> Vec<(&'static str, Result<Cache, BuildError>)> {
    use std::time::Duration;
    use tower_tiered_cache::builder::{
        MAX_CONCURRENCY, MAX_PREFETCH_QUEUE, MAX_REFRESH_HOT_EVERY, MAX_REFRESH_HOT_TOP_N,
    };
    let every = Duration::from_secs(60);
    assert!(Cache::builder()
        .refresh_hot(MAX_REFRESH_HOT_TOP_N, MAX_REFRESH_HOT_EVERY)
        .prefetch_queue(MAX_PREFETCH_QUEUE)
        .max_concurrent_prefetches(MAX_CONCURRENCY)
        .max_concurrent_refreshes(MAX_CONCURRENCY)
        .build()
        .is_ok());
    vec![
        (
            "refresh_hot",
            Cache::builder()
                .refresh_hot(MAX_REFRESH_HOT_TOP_N + 1, every)
                .build(),
        ),
        (
            "refresh_hot",
            Cache::builder().refresh_hot(1, Duration::ZERO).build(),
        ),
        // A period tokio's clock cannot add to `now` (it panicked in the
        // worker), and one just past the bound.
        (
            "refresh_hot",
            Cache::builder().refresh_hot(10, Duration::MAX).build(),
        ),
        (
            "refresh_hot",
            Cache::builder()
                .refresh_hot(10, MAX_REFRESH_HOT_EVERY + Duration::from_millis(1))
                .build(),
        ),
        (
            "prefetch_queue",
            Cache::builder()
                .prefetch_queue(MAX_PREFETCH_QUEUE + 1)
                .build(),
        ),
        (
            "max_concurrent_prefetches",
            Cache::builder()
                .max_concurrent_prefetches(usize::MAX)
                .build(),
        ),
        (
            "max_concurrent_refreshes",
            Cache::builder()
                .max_concurrent_refreshes(usize::MAX)
                .build(),
        ),
        ("hot_key_sample", Cache::builder().hot_key_sample(0).build()),
        ("prefetch_queue", Cache::builder().prefetch_queue(0).build()),
        (
            "max_concurrent_prefetches",
            Cache::builder().max_concurrent_prefetches(0).build(),
        ),
        (
            "prefetch_timeout",
            Cache::builder().prefetch_timeout(Duration::ZERO).build(),
        ),
    ]
}

/// RFC 9213 field names are checked at `build`: each a valid field name,
/// not `Cache-Control`, listed once (in any letter case).
#[test]
fn targeted_cache_control_names_are_checked() {
    for bad in [
        vec!["Bad Name"],
        vec![""],
        vec!["CDN-Cache-Control:"],
        vec!["Cache-Control"],
        vec!["CDN-Cache-Control", "cdn-cache-control"],
    ] {
        let err = Cache::builder()
            .targeted_cache_control(&bad)
            .build()
            .expect_err(&format!("{bad:?}"));
        assert_eq!(err.setting(), "targeted_cache_control", "{err}");
        assert!(err.is_invalid_setting(), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("{:?}", bad.last().unwrap())),
            "{err}"
        );
    }
    for good in [
        vec!["CDN-Cache-Control"],
        vec!["Foo-Cache-Control", "CDN-Cache-Control"],
        vec![],
    ] {
        assert!(
            Cache::builder()
                .targeted_cache_control(&good)
                .build()
                .is_ok(),
            "{good:?}"
        );
    }
    // The default names are valid in either mode.
    assert!(Cache::builder()
        .targeted_cache_control(DEFAULT_TARGETED_CACHE_CONTROL)
        .mode(tower_tiered_cache::CacheMode::Private)
        .build()
        .is_ok());
}

#[test]
fn a_build_error_is_a_std_error() {
    let err: Box<dyn std::error::Error + Send + Sync> =
        Box::new(Cache::builder().l1_capacity_bytes(0).build().unwrap_err());
    assert!(err.to_string().contains("l1_capacity_bytes"));
    assert!(err.downcast_ref::<BuildError>().is_some());
}

#[cfg(feature = "redis")]
mod redis_kind {
    use super::*;

    /// The source of a Redis build error, as the redis crate's error.
    fn redis_source(err: &BuildError) -> &redis::RedisError {
        err.source()
            .unwrap_or_else(|| panic!("no source: {err}"))
            .downcast_ref::<redis::RedisError>()
            .unwrap_or_else(|| panic!("the source is not a RedisError: {err:?}"))
    }

    #[test]
    fn a_bad_redis_url_is_a_redis_error_with_the_redis_error_as_source() {
        for url in ["not a url", "http://127.0.0.1:6379", "redis://"] {
            let err = Cache::builder().redis(url).build().unwrap_err();
            assert!(err.is_redis(), "{url}: {err}");
            assert!(!err.is_invalid_setting(), "{url}: {err}");
            assert_eq!(err.setting(), "redis");
            assert!(err.to_string().contains("bad Redis URL"), "{err}");
            let source = redis_source(&err);
            // The source's message is not repeated in the error's own.
            assert!(
                !err.to_string().contains(&source.to_string()),
                "{err} repeats {source}"
            );
        }
    }

    #[test]
    fn the_message_never_carries_the_url() {
        let err = Cache::builder()
            .redis("redis://user:hunter2@[::1:6379/")
            .build()
            .unwrap_err();
        assert!(err.is_redis());
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    }

    #[test]
    fn cluster_errors_name_redis_cluster() {
        let err = Cache::builder()
            .redis_cluster(Vec::<String>::new())
            .build()
            .unwrap_err();
        assert!(err.is_redis());
        assert_eq!(err.setting(), "redis_cluster");
        assert!(err.source().is_none(), "no redis error underneath");
        assert!(err.to_string().contains("at least one node"), "{err}");

        let err = Cache::builder()
            .redis_cluster(["redis://127.0.0.1:7000/", "not a url"])
            .build()
            .unwrap_err();
        assert!(err.is_redis());
        assert_eq!(err.setting(), "redis_cluster");
        redis_source(&err);
    }

    #[cfg(not(feature = "redis-tls"))]
    #[test]
    fn tls_without_the_feature_is_a_redis_error_without_a_source() {
        let err = Cache::builder()
            .redis("rediss://127.0.0.1:6380/")
            .build()
            .unwrap_err();
        assert!(err.is_redis());
        assert!(err.source().is_none());
        assert!(err.to_string().contains("`redis-tls` feature"), "{err}");
    }

    /// The read half of the admission rule counts to `promote_after`: 0
    /// reads is refused with an L2 tier, under that setting (without one
    /// the setting is unused, as before).
    #[test]
    fn l1_admission_refuses_zero_reads_with_l2() {
        for rule in [L1Admission::Reads, L1Admission::MaxBytesOrReads(1024)] {
            let err = Cache::builder()
                .redis("redis://127.0.0.1:1/")
                .l1_admission(rule)
                .promote_after(0)
                .build()
                .unwrap_err();
            assert!(err.is_invalid_setting(), "{err}");
            assert_eq!(err.setting(), "promote_after", "{rule:?}");
        }
        assert!(Cache::builder().promote_after(0).build().is_ok());
        let err = Cache::builder()
            .redis("redis://127.0.0.1:1/")
            .l1_admission(L1Admission::MaxBytes(0))
            .build()
            .unwrap_err();
        assert_eq!(err.setting(), "l1_admission");
    }

    #[test]
    fn l2_settings_are_invalid_settings_not_redis_errors() {
        let err = Cache::builder()
            .redis("redis://127.0.0.1:1/")
            .l2_write_queue(0)
            .build()
            .unwrap_err();
        assert!(err.is_invalid_setting() && !err.is_redis());
        assert_eq!(err.setting(), "l2_write_queue");
        assert!(err.source().is_none());
    }
}

#[cfg(not(feature = "redis"))]
#[test]
fn without_redis_no_error_is_a_redis_error() {
    let err = Cache::builder().l1_capacity_bytes(0).build().unwrap_err();
    assert!(!err.is_redis());
}

// ---------------------------------------------------------------------------
// tag_fn
// ---------------------------------------------------------------------------

/// Tags `/products/{id}/...` with `product-{id}`.
fn product_tag(req: &http::request::Parts, _headers: &http::HeaderMap) -> Vec<String> {
    let mut parts = req.uri.path().split('/').skip(1);
    match (parts.next(), parts.next()) {
        (Some("products"), Some(id)) => vec![format!("product-{id}")],
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn tags_from_tag_fn_reach_invalidate_tag() {
    let cache = Cache::builder()
        .clock(clock())
        .tag_fn(product_tag)
        .build()
        .unwrap();
    let (origin, log) = origin(|_, req| {
        if req.uri().path() == "/products/7/reviews" {
            // A header tag as well: both kinds are kept.
            with_header(ok("max-age=600", "r"), "surrogate-key", "reviews")
        } else {
            ok("max-age=600", "x")
        }
    });
    let svc = cached(&cache, origin);
    let urls = [
        "http://example.com/products/42/",
        "http://example.com/products/42/photos",
        "http://example.com/products/7/reviews",
        "http://example.com/about",
    ];
    for url in urls {
        assert_eq!(cache_status(&send(&svc, get(url)).await), MISS_STORED);
    }
    for url in urls {
        assert_eq!(cache_status(&send(&svc, get(url)).await), HIT, "{url}");
    }

    let out = cache.invalidate_tag("product-42").await;
    assert_eq!(out.l1, 2, "the function's tag names both product-42 pages");
    let status = |url| {
        let svc = svc.clone();
        async move { cache_status(&send(&svc, get(url)).await) }
    };
    assert_eq!(status(urls[0]).await, MISS_STORED);
    assert_eq!(status(urls[1]).await, MISS_STORED);
    assert_eq!(status(urls[2]).await, HIT);
    assert_eq!(status(urls[3]).await, HIT);

    // The header's tag and the function's tag both name /products/7/reviews.
    assert_eq!(cache.invalidate_tag("reviews").await.l1, 1);
    assert_eq!(status(urls[2]).await, MISS_STORED);
    assert_eq!(cache.invalidate_tag("product-7").await.l1, 1);
    assert_eq!(status(urls[2]).await, MISS_STORED);
    // Untagged by either: no tag reaches it.
    assert_eq!(cache.invalidate_tag("about").await.l1, 0);
    assert_eq!(log.calls(), 4 + 2 + 2);
}

#[tokio::test]
async fn a_later_tag_fn_replaces_the_earlier_one_and_bad_tags_are_dropped() {
    let cache = Cache::builder()
        .clock(clock())
        .tag_fn(|_, _| vec!["first".to_owned()])
        .tag_fn(|_, _| {
            vec![
                "second".to_owned(),
                " second ".to_owned(),         // trimmed: a duplicate
                "has space".to_owned(),        // not a tag
                "x".repeat(MAX_TAG_BYTES + 1), // too long
            ]
        })
        .build()
        .unwrap();
    let (origin, _log) = origin(|_, _| ok("max-age=600", "x"));
    let svc = cached(&cache, origin);
    send(&svc, get(URL)).await;
    assert_eq!(cache.invalidate_tag("first").await.l1, 0);
    assert_eq!(cache.invalidate_tag("has space").await.l1, 0);
    assert_eq!(
        cache
            .invalidate_tag(&"x".repeat(MAX_TAG_BYTES + 1))
            .await
            .l1,
        0
    );
    assert_eq!(cache.invalidate_tag("second").await.l1, 1);
}

/// Distributed coalescing needs the L2 tier; a lease lasts between
/// `MIN_LEASE_TTL` and the upstream timeout, which it defaults to.
#[cfg(feature = "redis")]
#[test]
fn distributed_coalescing_needs_l2_and_a_lease_within_the_upstream_timeout() {
    use std::time::Duration;
    use tower_tiered_cache::builder::{DEFAULT_DISTRIBUTED_COALESCING, MIN_LEASE_TTL};
    let redis = || Cache::builder().redis("redis://127.0.0.1:1/");
    let refused = [
        (
            "distributed_coalescing",
            Cache::builder().distributed_coalescing(true).build(),
        ),
        (
            "lease_ttl",
            redis()
                .distributed_coalescing(true)
                .lease_ttl(MIN_LEASE_TTL - Duration::from_millis(1))
                .build(),
        ),
        (
            "lease_ttl",
            redis()
                .distributed_coalescing(true)
                .upstream_timeout(Duration::from_secs(2))
                .lease_ttl(Duration::from_secs(3))
                .build(),
        ),
        // The default lease follows the upstream timeout: an upstream
        // timeout below the shortest lease is refused under the lease.
        (
            "lease_ttl",
            redis()
                .distributed_coalescing(true)
                .upstream_timeout(Duration::from_millis(5))
                .build(),
        ),
    ];
    for (setting, result) in refused {
        let err = result.expect_err(setting);
        assert_eq!(err.setting(), setting, "{err}");
        assert!(err.is_invalid_setting(), "{err}");
    }
    // Off by default: building with the default is building without it.
    assert!(Cache::builder()
        .distributed_coalescing(DEFAULT_DISTRIBUTED_COALESCING)
        .build()
        .is_ok());
    assert!(redis()
        .distributed_coalescing(true)
        .lease_ttl(MIN_LEASE_TTL)
        .build()
        .is_ok());
    // Off, nothing about leases applies, the L2 tier or not.
    assert!(Cache::builder()
        .distributed_coalescing(false)
        .build()
        .is_ok());
}
