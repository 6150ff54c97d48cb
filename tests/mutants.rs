//! Tests that kill mutants which survived the rest of the suite (issue 13,
//! point 6): each one fails when the behaviour it names is broken.
//!
//! - `Entry::vary_matches` always `true`: a waiter with another `Vary`
//!   value joining a flight is served the leader's variant;
//! - the L2 supersede check skipped: a write still queued when its key is
//!   invalidated lands after the invalidation;
//! - the delete of a corrupt L2 value skipped (on a single node; the
//!   cluster case is in `l2_cluster.rs`).

mod support;

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;

use std::convert::Infallible;

use support::*;
use tower_tiered_cache::Cache;

/// Lets every ready task of a current-thread runtime run until it blocks
/// (no wall-clock wait).
async fn run_ready_tasks() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

/// `en` leads a flight to an origin that answers `Vary: Accept-Language`;
/// `fr` arrives while it is in flight and waits on it. The leader's answer
/// is not `fr`'s variant: `fr` gets its own (a second origin call), never
/// `en`'s body.
#[tokio::test]
async fn a_waiter_with_another_vary_value_gets_its_own_variant() {
    let cache = Cache::builder().build().unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    let (origin, log) = origin_fn(move |_, req: http::Request<()>| {
        let g = g.clone();
        let lang = req
            .headers()
            .get("accept-language")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        async move {
            g.pass().await;
            let r = ok("max-age=60", &format!("body in {lang}"));
            Ok::<_, Infallible>(with_header(r, "vary", "accept-language"))
        }
    });
    let svc = cached(&cache, origin);
    let fetch = |lang: &'static str| {
        let svc = svc.clone();
        tokio::spawn(async move {
            let r = send(&svc, get_with(URL, &[("accept-language", lang)])).await;
            (cache_status(&r), body(r).await)
        })
    };
    let en = fetch("en");
    run_ready_tasks().await;
    assert_eq!(log.calls(), 1, "en leads a flight");
    let fr = fetch("fr");
    run_ready_tasks().await;
    // fr waits on en's flight: it has not called the origin itself.
    assert_eq!(log.calls(), 1, "fr joined en's flight");
    assert_eq!(cache.stats().in_flight, 1);
    gate.open();

    let (en_status, en_body) = en.await.unwrap();
    let (fr_status, fr_body) = fr.await.unwrap();
    assert_eq!(en_body, "body in en", "{en_status}");
    assert_eq!(fr_body, "body in fr", "fr got another variant: {fr_status}");
    assert_eq!(log.calls(), 2, "each variant came from the origin");
    assert_eq!(log.request(1).header("accept-language"), Some("fr"));
}
