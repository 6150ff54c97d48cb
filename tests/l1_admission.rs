//! The L1 admission rule (`CacheBuilder::l1_admission`) against a real
//! Redis started by the tests: small entries go to L1 when stored, heavy
//! ones stay in L2 (served with `detail=l2`) until their reads promote them,
//! or for good under `MaxBytes`; every path that writes L1 (a store, a 304
//! revalidation of an L1 or an L2 copy, a newer copy adopted from another
//! instance, a promotion) asks the same rule, and refusals are counted.
//! The clock is a `ManualClock`; nothing sleeps for a TTL.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::time::Duration;

use redis_support::{require_redis, RedisServer};
use support::*;
use tower_tiered_cache::{Cache, CacheBuilder, L1Admission, ManualClock};

const L1_HIT: &str = "tower-tiered-cache; hit; detail=l1";
const L2_HIT: &str = "tower-tiered-cache; hit; detail=l2";

/// The rule's size: the small body's entry weighs less, the big one's
/// more.
const LIMIT: u64 = 4096;
const SMALL: &str = "http://example.com/small";
const BIG: &str = "http://example.com/big";

fn big_body() -> String {
    "b".repeat(8192)
}

/// A cache on `server` in namespace `ns`, on `clock`, with `rule`.
fn l2(server: &RedisServer, ns: &str, clock: &ManualClock, rule: L1Admission) -> CacheBuilder {
    Cache::builder()
        .redis(server.url())
        .namespace(ns)
        .clock(clock.clone())
        .l2_timeout(Duration::from_millis(500))
        .l1_admission(rule)
}

/// An origin answering `/small` with a small body and anything else with
/// the big one, fresh for 10 minutes.
fn small_and_big() -> (Origin, Log) {
    origin(|_, req| {
        if req.uri().path() == "/small" {
            ok("max-age=600", "small")
        } else {
            ok("max-age=600", &big_body())
        }
    })
}

/// `MaxBytesOrReads`: the small entry is in L1 from its store; the big one
/// is served from L2 (L1 not holding it) for its first `promote_after`
/// reads, the last of which copies it into L1. Its refusal is counted, in
/// the stats and in the Prometheus text.
#[tokio::test]
async fn a_small_entry_goes_to_l1_at_once_and_a_big_one_after_its_nth_l2_read() {
    require_redis();
    let server = RedisServer::start();
    let clock = clock();
    let (origin, log) = small_and_big();
    let rule = L1Admission::MaxBytesOrReads(LIMIT);
    let cache = l2(&server, "or", &clock, rule)
        .promote_after(3)
        .build()
        .unwrap();
    let svc = cached(&cache, origin);

    assert!(cache_status(&send(&svc, get(SMALL)).await).contains("stored"));
    assert_eq!(cache.stats().l1_entries, 1, "the small entry went to L1");
    assert_eq!(cache_status(&send(&svc, get(SMALL)).await), L1_HIT);

    assert!(cache_status(&send(&svc, get(BIG)).await).contains("stored"));
    let stats = cache.stats();
    assert_eq!(
        stats.l1_entries, 1,
        "the big entry is in L2 only: {stats:?}"
    );
    assert_eq!(stats.l1_not_admitted, 1);
    written(&cache, 2).await;
    for read in 1..=3 {
        let r = send(&svc, get(BIG)).await;
        assert_eq!(cache_status(&r), L2_HIT, "read {read}");
        assert_eq!(body(r).await, big_body());
        let promoted = u64::from(read == 3);
        assert_eq!(cache.stats().promotions, promoted, "read {read}");
        assert_eq!(cache.stats().l1_entries, 1 + promoted, "read {read}");
    }
    assert_eq!(cache_status(&send(&svc, get(BIG)).await), L1_HIT);
    assert_eq!(log.calls(), 2);
    let text = cache.prometheus();
    assert!(
        text.contains("\ntower_cache_l1_not_admitted_total 1\n"),
        "{text}"
    );
}

/// `MaxBytes`: a big entry never reaches L1, however often it is read
/// (even with `promote_after(1)`); a small one found only in L2 (another
/// instance stored it) is promoted as usual.
#[tokio::test]
async fn under_max_bytes_a_big_entry_is_never_promoted() {
    require_redis();
    let server = RedisServer::start();
    let clock = clock();
    let (origin, log) = small_and_big();
    let rule = L1Admission::MaxBytes(LIMIT);
    let a = l2(&server, "mb", &clock, rule).build().unwrap();
    let svc_a = cached(&a, origin.clone());
    send(&svc_a, get(SMALL)).await;
    send(&svc_a, get(BIG)).await;
    assert_eq!(a.stats().l1_entries, 1);
    assert_eq!(a.stats().l1_not_admitted, 1);
    written(&a, 2).await;

    let b = l2(&server, "mb", &clock, rule)
        .promote_after(1)
        .build()
        .unwrap();
    let svc_b = cached(&b, origin);
    for read in 1..=3 {
        let r = send(&svc_b, get(BIG)).await;
        assert_eq!(cache_status(&r), L2_HIT, "read {read}");
        assert_eq!(body(r).await, big_body());
    }
    assert_eq!(cache_status(&send(&svc_b, get(SMALL)).await), L2_HIT);
    assert_eq!(cache_status(&send(&svc_b, get(SMALL)).await), L1_HIT);
    let stats = b.stats();
    assert_eq!((stats.promotions, stats.l1_entries), (1, 1), "{stats:?}");
    assert_eq!(log.calls(), 2);
}

/// `l1_write_through(false)` is the `Reads` rule and `true` is `Always`;
/// the last of the two setters wins.
#[tokio::test]
async fn l1_write_through_is_a_shorthand_for_the_rule() {
    require_redis();
    let server = RedisServer::start();
    let clock = clock();
    let (origin, _log) = small_and_big();
    let reads = l2(&server, "wt", &clock, L1Admission::Always)
        .l1_write_through(false)
        .build()
        .unwrap();
    send(&cached(&reads, origin.clone()), get(SMALL)).await;
    let stats = reads.stats();
    assert_eq!((stats.l1_entries, stats.l1_not_admitted), (0, 1));

    let always = l2(&server, "wt", &clock, L1Admission::MaxBytes(1))
        .l1_write_through(true)
        .build()
        .unwrap();
    send(&cached(&always, origin), get(BIG)).await;
    let stats = always.stats();
    assert_eq!((stats.l1_entries, stats.l1_not_admitted), (1, 0));
}

/// A small entry in L1 is revalidated; the 304 adds a field that takes the
/// merged entry over the size: it replaces nothing in L1 (the old copy is
/// removed, the refusal counted) and is served from L2.
#[tokio::test]
async fn a_304_that_takes_an_l1_entry_over_the_size_moves_it_to_l2() {
    require_redis();
    let server = RedisServer::start();
    let clock = clock();
    let pad = "p".repeat(LIMIT as usize);
    let sent = pad.clone();
    let (origin, log) = origin(move |n, _| match n {
        0 => response(
            200,
            &[("cache-control", "max-age=1"), ("etag", "\"v1\"")],
            "small",
        ),
        _ => response(
            304,
            &[
                ("cache-control", "max-age=600"),
                ("etag", "\"v1\""),
                ("x-pad", &sent),
            ],
            "",
        ),
    });
    let cache = l2(&server, "rv", &clock, L1Admission::MaxBytes(LIMIT))
        .build()
        .unwrap();
    let svc = cached(&cache, origin);
    send(&svc, get(SMALL)).await;
    assert_eq!(cache.stats().l1_entries, 1);
    written(&cache, 1).await;

    clock.advance(secs(2));
    let r = send(&svc, get(SMALL)).await;
    assert_eq!(log.last().header("if-none-match"), Some("\"v1\""));
    assert_eq!(body(r).await, "small");
    let stats = cache.stats();
    assert_eq!(
        stats.l1_entries, 0,
        "the merged entry is too big: {stats:?}"
    );
    assert_eq!(stats.l1_not_admitted, 1);
    written(&cache, 2).await;
    let r = send(&svc, get(SMALL)).await;
    assert_eq!(cache_status(&r), L2_HIT);
    assert_eq!(header(&r, "x-pad").as_deref(), Some(pad.as_str()));
    assert_eq!(log.calls(), 2);
}

/// A big entry read from L2 (L1 has no copy) is revalidated: the 304-merged
/// entry goes back to L2 only, as a new store of it would.
#[tokio::test]
async fn a_304_for_an_l2_entry_the_rule_refuses_stays_in_l2() {
    require_redis();
    let server = RedisServer::start();
    let clock = clock();
    let (origin, log) = origin(|n, _| match n {
        0 => response(
            200,
            &[("cache-control", "max-age=1"), ("etag", "\"v1\"")],
            &big_body(),
        ),
        _ => response(
            304,
            &[("cache-control", "max-age=600"), ("etag", "\"v1\"")],
            "",
        ),
    });
    let cache = l2(&server, "r2", &clock, L1Admission::MaxBytes(LIMIT))
        .build()
        .unwrap();
    let svc = cached(&cache, origin);
    send(&svc, get(BIG)).await;
    written(&cache, 1).await;

    clock.advance(secs(2));
    let r = send(&svc, get(BIG)).await;
    assert_eq!(log.last().header("if-none-match"), Some("\"v1\""));
    assert_eq!(body(r).await, big_body());
    let stats = cache.stats();
    assert_eq!(stats.l1_entries, 0, "{stats:?}");
    assert_eq!(stats.l1_not_admitted, 2, "the store and the revalidation");
    written(&cache, 2).await;
    assert_eq!(cache_status(&send(&svc, get(BIG)).await), L2_HIT);
    assert_eq!(log.calls(), 2);
}

/// A client's `no-cache` sends a request past the small, fresh L1 copy;
/// the origin's new answer is big: it is stored in L2 only and the older
/// copy leaves L1, so that the new one answers the next requests.
#[tokio::test]
async fn a_new_response_refused_by_size_removes_the_older_l1_copy() {
    require_redis();
    let server = RedisServer::start();
    let clock = clock();
    let (origin, log) = origin(|n, _| match n {
        0 => ok("max-age=600", "small"),
        _ => ok("max-age=600", &big_body()),
    });
    let cache = l2(&server, "nw", &clock, L1Admission::MaxBytesOrReads(LIMIT))
        .promote_after(5)
        .build()
        .unwrap();
    let svc = cached(&cache, origin);
    send(&svc, get(SMALL)).await;
    assert_eq!(cache.stats().l1_entries, 1);

    let r = send(&svc, get_with(SMALL, &[("cache-control", "no-cache")])).await;
    assert_eq!(body(r).await, big_body());
    let stats = cache.stats();
    assert_eq!(
        (stats.l1_entries, stats.l1_not_admitted),
        (0, 1),
        "{stats:?}"
    );
    written(&cache, 2).await;
    let r = send(&svc, get(SMALL)).await;
    assert_eq!(cache_status(&r), L2_HIT);
    assert_eq!(body(r).await, big_body());
    assert_eq!(log.calls(), 2);
}

/// A cache on `server` in namespace `ns` holding a small copy of `SMALL`
/// in L1 (from `origin`'s first answer), and the big version of it put in
/// its L2 without an invalidation reaching it: as when another instance's
/// overwrite has not been applied here yet (here, stored by an instance of
/// another namespace at `clock` + 2 s and copied over this one's key).
async fn newer_big_copy_behind_its_back(
    server: &RedisServer,
    ns: &str,
    clock: &ManualClock,
    origin: Origin,
) -> (Cache, Svc) {
    let rule = L1Admission::MaxBytes(LIMIT);
    let b = l2(server, ns, clock, rule).build().unwrap();
    let svc_b = cached(&b, origin.clone());
    send(&svc_b, get(SMALL)).await;
    assert_eq!(b.stats().l1_entries, 1);
    written(&b, 1).await;
    clock.advance(secs(2));
    let other = format!("{ns}-elsewhere");
    let a = l2(server, &other, clock, rule).build().unwrap();
    send(&cached(&a, origin), get(SMALL)).await;
    written(&a, 1).await;
    let theirs = server.cli(&["--scan", "--pattern", &format!("{other}:1:*")]);
    let theirs = theirs.text();
    let ours = theirs.replacen(&other, ns, 1);
    assert!(server.cli(&["COPY", theirs, &ours, "REPLACE"]).success());
    (b, svc_b)
}

/// B's small copy is stale (kept for revalidation); the newer big copy it
/// reads from L2 answers, is not promoted over the stale copy (its size is
/// refused), and the stale copy leaves L1.
#[tokio::test]
async fn a_newer_l2_copy_refused_by_size_is_not_promoted_over_the_stale_one() {
    require_redis();
    let server = RedisServer::start();
    let clock = clock();
    let (origin, log) = origin(|n, _| match n {
        0 => response(
            200,
            &[("cache-control", "max-age=1"), ("etag", "\"v1\"")],
            "small",
        ),
        _ => ok("max-age=600", &big_body()),
    });
    let (b, svc_b) = newer_big_copy_behind_its_back(&server, "pr", &clock, origin).await;

    let r = send(&svc_b, get(SMALL)).await;
    assert_eq!(cache_status(&r), L2_HIT);
    assert_eq!(body(r).await, big_body());
    let stats = b.stats();
    assert_eq!(
        (stats.l1_entries, stats.l1_not_admitted),
        (0, 1),
        "{stats:?}"
    );
    assert_eq!(stats.promotions, 0);
    assert_eq!(cache_status(&send(&svc_b, get(SMALL)).await), L2_HIT);
    assert_eq!(log.calls(), 2);
}

/// Instance B holds a small copy in L1, stale within its
/// stale-while-revalidate window, and a newer big copy is in L2. B answers
/// stale; its background refresh finds the newer copy (refreshed
/// elsewhere) and does not adopt it into L1: B's stale copy leaves L1 and
/// B is served from L2.
#[tokio::test]
async fn a_copy_refreshed_elsewhere_is_not_adopted_into_l1_when_refused() {
    require_redis();
    let server = RedisServer::start();
    let clock = clock();
    let (origin, log) = origin(|n, _| match n {
        0 => ok("max-age=1, stale-while-revalidate=60", "small"),
        _ => ok("max-age=600", &big_body()),
    });
    let (b, svc_b) = newer_big_copy_behind_its_back(&server, "ad", &clock, origin).await;

    assert_eq!(body(send(&svc_b, get(SMALL)).await).await, "small");
    assert!(
        eventually(|| b.stats().refresh_ok == 1).await,
        "{:?}",
        b.stats()
    );
    let stats = b.stats();
    assert_eq!(
        (stats.l1_entries, stats.l1_not_admitted),
        (0, 1),
        "{stats:?}"
    );
    let r = send(&svc_b, get(SMALL)).await;
    assert_eq!(cache_status(&r), L2_HIT);
    assert_eq!(body(r).await, big_body());
    assert_eq!(log.calls(), 2, "B's refresh did not call the origin");
}

/// A 304 that arrives after another instance stored a newer response
/// (whose announcement took this instance's L1 copy away) does not write
/// the older, merged entry over the newer one in L2.
#[tokio::test]
async fn a_late_304_does_not_overwrite_a_newer_copy_in_l2() {
    require_redis();
    let server = RedisServer::start();
    let clock = clock();
    let pad = "p".repeat(LIMIT as usize);
    let rule = L1Admission::MaxBytes(LIMIT);
    let a = l2(&server, "late304", &clock, rule).build().unwrap();
    let b = l2(&server, "late304", &clock, rule).build().unwrap();
    let (b_origin, _) = origin(|_, _| ok("max-age=600", "v2"));
    // In a mutex: the origin function must be `Sync`, the service is not.
    let b_svc = std::sync::Mutex::new(cached(&b, b_origin));
    let b_svc = std::sync::Arc::new(b_svc);
    let a_view = a.clone();
    let (a_origin, log) = origin_fn(move |n, _req| {
        let b_svc = b_svc.lock().unwrap().clone();
        let (a, b, pad) = (a_view.clone(), b.clone(), pad.clone());
        async move {
            if n == 0 {
                return Ok::<_, std::convert::Infallible>(response(
                    200,
                    &[("cache-control", "max-age=1"), ("etag", "\"v1\"")],
                    "v1",
                ));
            }
            // While this revalidation is at the origin, instance b stores
            // v2; its announcement removes a's L1 copy.
            let mut req = get(SMALL);
            req.headers_mut()
                .insert("cache-control", "no-cache".parse().unwrap());
            assert_eq!(body(send(&b_svc, req).await).await, "v2");
            assert!(eventually(|| a.stats().l1_entries == 0).await);
            assert!(eventually(|| b.l2_pending_writes() == 0).await);
            Ok(response(
                304,
                &[
                    ("cache-control", "max-age=600"),
                    ("etag", "\"v1\""),
                    ("x-pad", &pad),
                ],
                "",
            ))
        }
    });
    let svc = cached(&a, a_origin);
    send(&svc, get(SMALL)).await;
    written(&a, 1).await;
    subscribed(&a).await;

    clock.advance(secs(2));
    send(&svc, get(SMALL)).await;
    assert_eq!(log.calls(), 2);
    assert!(eventually(|| a.l2_pending_writes() == 0).await);
    let c = l2(&server, "late304", &clock, rule).build().unwrap();
    let (c_origin, c_log) = origin(|_, _| ok("max-age=600", "origin"));
    let r = send(&cached(&c, c_origin), get(SMALL)).await;
    assert_eq!(body(r).await, "v2", "the older entry overwrote the newer");
    assert_eq!(c_log.calls(), 0);
}

/// A 304 that arrives after the L1 copy it revalidates was invalidated
/// brings nothing back: the merged entry, refused by size, is not written
/// to L2 (it was, and the invalidated response came back for every
/// instance).
#[tokio::test]
async fn a_304_after_an_invalidation_brings_nothing_back() {
    require_redis();
    let server = RedisServer::start();
    let clock = clock();
    let pad = "p".repeat(LIMIT as usize);
    let holder: std::sync::Arc<std::sync::OnceLock<Cache>> = Default::default();
    let inner = holder.clone();
    let (origin, log) = origin(move |n, req| match n {
        0 => response(
            200,
            &[("cache-control", "max-age=1"), ("etag", "\"v1\"")],
            "small",
        ),
        1 => {
            // The purge lands while the revalidation is at the origin.
            assert!(inner.get().unwrap().invalidate(req));
            response(
                304,
                &[
                    ("cache-control", "max-age=600"),
                    ("etag", "\"v1\""),
                    ("x-pad", &pad),
                ],
                "",
            )
        }
        _ => ok("max-age=600", "v2"),
    });
    let cache = l2(&server, "inv304", &clock, L1Admission::MaxBytes(LIMIT))
        .build()
        .unwrap();
    holder.set(cache.clone()).ok().unwrap();
    let svc = cached(&cache, origin.clone());
    send(&svc, get(SMALL)).await;
    written(&cache, 1).await;

    clock.advance(secs(2));
    send(&svc, get(SMALL)).await;
    assert_eq!(log.calls(), 2);
    assert!(eventually(|| cache.l2_pending_writes() == 0).await);
    assert_eq!(cache.stats().l1_entries, 0);
    // Another instance (no L1 copy) finds nothing in L2.
    let other = l2(&server, "inv304", &clock, L1Admission::MaxBytes(LIMIT))
        .build()
        .unwrap();
    let r = send(&cached(&other, origin), get(SMALL)).await;
    assert_eq!(body(r).await, "v2", "the invalidated entry came back");
    assert_eq!(log.calls(), 3);
}
