//! `examples/values.rs`, run as a test: the enrichment pipeline's phases
//! (stampede, bulk call, a second instance on L2, stale values past the
//! soft TTL, fail-safe during an API outage) and the checks the example
//! makes of itself (one API call for a stampede, only the missing IDs in
//! the bulk call, no error for a cached ID during the outage, ...).
//!
//! The example's file is compiled into this test as a module, so the
//! test runs the same code as `cargo run --example values`, with Redis
//! when the `redis` feature is on and `redis-server` is on `PATH`.
#![cfg(feature = "values")]

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/values.rs"]
mod example;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_values_example_holds_its_checks() {
    let (builder, second, _redis, tiers) = example::setup();
    let report = example::run(builder, second, tiers).await;
    assert!(report.failures.is_empty(), "{:#?}", report.failures);

    let phase = |name: &str| report.phases.iter().find(|p| p.name.starts_with(name));
    let enrichment = phase("enrichment").expect("the enrichment phase");
    assert_eq!(enrichment.lookups, example::LOOKUPS);
    assert!(
        enrichment.ids_fetched < enrichment.lookups / 5,
        "{enrichment:?}"
    );
    assert!(enrichment.hit_ratio() > 0.8, "{enrichment:?}");

    let stampede = phase("stampede").expect("the stampede phase");
    assert_eq!(stampede.api_calls, 1, "{stampede:?}");
    assert_eq!(stampede.coalesced, example::STAMPEDE as u64 - 1);

    let bulk = phase("bulk").expect("the bulk phase");
    assert_eq!((bulk.api_calls, bulk.errors), (1, 0), "{bulk:?}");
    assert!(bulk.hits > 0 && bulk.ids_fetched > 0, "{bulk:?}");
    assert_eq!(bulk.hits + bulk.ids_fetched, bulk.lookups, "{bulk:?}");

    let outage = phase("API outage").expect("the outage phase");
    assert!(outage.fail_safe > 0, "{outage:?}");
    assert!(outage.stale + outage.errors == outage.lookups, "{outage:?}");

    // With the `redis` feature the example runs on L2 whenever it can (in
    // CI it must: `.ci/run` installs redis-server).
    #[cfg(feature = "redis")]
    if example::redis_support::in_ci() || example::redis_support::redis_available() {
        let l2 = phase("second instance").expect("with Redis: the second instance's phase");
        assert_eq!((l2.api_calls, l2.hits), (0, l2.lookups), "{l2:?}");
    }
}
