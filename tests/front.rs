//! The per-thread fronts of hot L1 entries (`src/front.rs`, issue 18):
//! each worker thread below reads one key often enough that its front holds
//! a copy of its own; then every way an entry changes in L1 (a new version
//! stored, a 304 merge, an invalidation of the key, a purge by tag or by
//! prefix, a clear, an eviction by the byte budget, the clock moving past
//! freshness) must make both threads' copies unusable at once: the next
//! read on each thread sees what L1 now says, as it would with no front.
//!
//! The workers are two OS threads that live for the whole test (fronts are
//! thread-locals), each with its own current-thread runtime. The clock is a
//! `ManualClock`; nothing sleeps for a TTL.

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::sync::mpsc;
use std::thread::JoinHandle;

use bytes::Bytes;
use http::Request;
use support::*;
use tower_tiered_cache::{Cache, ManualClock};

const L1_HIT: &str = "tower-tiered-cache; hit; detail=l1";
/// More reads than a key needs to be copied into a thread's front.
const WARM_READS: usize = 40;

/// What a worker got back: `Cache-Status`, `x-version` (if any), body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    status: String,
    version: Option<String>,
    body: Bytes,
}

type Job = (Request<()>, mpsc::Sender<Got>);

/// A thread with its own runtime that sends the requests it is given
/// through its clone of the service.
struct Worker {
    tx: Option<mpsc::Sender<Job>>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    fn new(svc: Svc) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            for (req, reply) in rx {
                let got = rt.block_on(async {
                    let resp = send(&svc, req).await;
                    let status = cache_status(&resp);
                    let version = header(&resp, "x-version");
                    Got {
                        status,
                        version,
                        body: body(resp).await,
                    }
                });
                // Let the tasks the request spawned (a background
                // refresh) run before the next one.
                rt.block_on(async {
                    for _ in 0..20 {
                        tokio::task::yield_now().await;
                    }
                });
                let _ = reply.send(got);
            }
        });
        Self {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    fn send(&self, req: Request<()>) -> Got {
        let (tx, rx) = mpsc::channel();
        self.tx.as_ref().unwrap().send((req, tx)).unwrap();
        rx.recv().expect("the worker answered")
    }

    fn get(&self, uri: &str) -> Got {
        self.send(get(uri))
    }

    /// Reads `uri` until this thread's front surely holds it, each read a
    /// fresh L1 hit with `body`.
    fn warm(&self, uri: &str, body: &str) {
        for _ in 0..WARM_READS {
            let got = self.get(uri);
            assert_eq!(got.status, L1_HIT);
            assert_eq!(got.body, body);
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Two workers on `cache` in front of `origin`.
fn workers(cache: &Cache, origin: Origin) -> [Worker; 2] {
    let svc = cached(cache, origin);
    [Worker::new(svc.clone()), Worker::new(svc)]
}

/// An origin whose `n`th answer (from 1) is body `v{n}`, fresh for 60 s,
/// tagged `t`.
fn versions() -> (Origin, Log) {
    origin(|n, _| {
        with_header(
            ok("max-age=60", &format!("v{}", n + 1)),
            "surrogate-key",
            "t",
        )
    })
}

/// Both workers read `URL` until their fronts hold `v1`.
fn warmed(cache: &Cache, origin: Origin) -> [Worker; 2] {
    let w = workers(cache, origin);
    let first = w[0].get(URL);
    assert!(first.status.contains("stored"), "{first:?}");
    assert_eq!(first.body, "v1");
    for worker in &w {
        worker.warm(URL, "v1");
    }
    w
}

/// After a change, each worker's next read is a miss that the origin
/// answers (the first with `v2`, which the second then reads from L1).
fn both_see_v2_after_a_miss(w: &[Worker; 2]) {
    let first = w[0].get(URL);
    assert!(first.status.contains("fwd=uri-miss"), "{first:?}");
    assert_eq!(first.body, "v2");
    let second = w[1].get(URL);
    assert_eq!(second.body, "v2", "{second:?}");
    assert_eq!(second.status, L1_HIT);
    for worker in w {
        worker.warm(URL, "v2");
    }
}

fn l1_cache(clock: &ManualClock) -> Cache {
    Cache::builder().clock(clock.clone()).build().unwrap()
}

#[test]
fn a_new_version_stored_replaces_every_threads_copy() {
    let clock = clock();
    let cache = l1_cache(&clock);
    let (origin, log) = versions();
    let w = warmed(&cache, origin);
    // A request that must not be answered from storage stores `v2`.
    let got = w[0].send(get_with(URL, &[("cache-control", "no-cache")]));
    assert_eq!(got.body, "v2");
    for worker in &w {
        let got = worker.get(URL);
        assert_eq!(got.status, L1_HIT);
        assert_eq!(got.body, "v2", "a copy of v1 answered: {got:?}");
    }
    assert_eq!(log.calls(), 2);
}

#[test]
fn a_304_merge_replaces_every_threads_copy() {
    let clock = clock();
    let cache = l1_cache(&clock);
    // First a 200 with an ETag and `x-version: 1`; every later call a 304
    // that brings `x-version: 2`.
    let (origin, log) = support::origin(|n, _| {
        if n == 0 {
            with_header(
                with_header(ok("max-age=60", "body"), "etag", "\"a\""),
                "x-version",
                "1",
            )
        } else {
            with_header(
                with_header(
                    response(304, &[("cache-control", "max-age=60")], ""),
                    "etag",
                    "\"a\"",
                ),
                "x-version",
                "2",
            )
        }
    });
    let w = workers(&cache, origin);
    assert!(w[0].get(URL).status.contains("stored"));
    for worker in &w {
        for _ in 0..WARM_READS {
            let got = worker.get(URL);
            assert_eq!(got.status, L1_HIT);
            assert_eq!(got.version.as_deref(), Some("1"));
        }
    }
    let got = w[0].send(get_with(URL, &[("cache-control", "no-cache")]));
    assert_eq!(got.version.as_deref(), Some("2"), "{got:?}");
    assert_eq!(log.calls(), 2);
    for worker in &w {
        let got = worker.get(URL);
        assert_eq!(got.status, L1_HIT);
        assert_eq!(got.body, "body");
        assert_eq!(
            got.version.as_deref(),
            Some("2"),
            "a copy from before the 304 answered: {got:?}"
        );
    }
}

#[test]
fn invalidating_the_key_reaches_every_threads_copy() {
    let clock = clock();
    let cache = l1_cache(&clock);
    let (origin, _log) = versions();
    let w = warmed(&cache, origin);
    assert!(cache.invalidate(&get(URL)));
    both_see_v2_after_a_miss(&w);
}

#[test]
fn invalidating_by_readable_key_reaches_every_threads_copy() {
    let clock = clock();
    let cache = l1_cache(&clock);
    let (origin, _log) = versions();
    let w = warmed(&cache, origin);
    assert!(cache.invalidate_key("GET http://example.com/resource"));
    both_see_v2_after_a_miss(&w);
}

#[tokio::test]
async fn purging_by_tag_reaches_every_threads_copy() {
    let clock = clock();
    let cache = l1_cache(&clock);
    let (origin, _log) = versions();
    let w = warmed(&cache, origin);
    let done = cache.invalidate_tag("t").await;
    assert_eq!(done.l1, 1);
    both_see_v2_after_a_miss(&w);
}

#[tokio::test]
async fn purging_by_prefix_reaches_every_threads_copy() {
    let clock = clock();
    let cache = l1_cache(&clock);
    let (origin, _log) = versions();
    let w = warmed(&cache, origin);
    let done = cache.invalidate_prefix("/res").await;
    assert_eq!(done.l1, 1);
    both_see_v2_after_a_miss(&w);
}

#[tokio::test]
async fn clearing_reaches_every_threads_copy() {
    let clock = clock();
    let cache = l1_cache(&clock);
    let (origin, _log) = versions();
    let w = warmed(&cache, origin);
    cache.clear().await;
    both_see_v2_after_a_miss(&w);
}

/// The moved clock: past `max-age` no copy answers as fresh, whatever its
/// generation says. L1's own entry is served stale (within
/// `stale-while-revalidate`) and revalidated in the background; the 304
/// freshens that entry (a copy would not be the entry L1 holds, and the
/// 304 would be lost), and both threads then read the freshened one.
#[test]
fn past_its_freshness_no_copy_answers() {
    let clock = clock();
    let cache = l1_cache(&clock);
    let cc = "max-age=60, stale-while-revalidate=600";
    let (origin, log) = support::origin(move |n, _| {
        let resp = if n == 0 {
            ok(cc, "v1")
        } else {
            response(304, &[("cache-control", cc)], "")
        };
        let resp = with_header(resp, "etag", "\"a\"");
        with_header(resp, "x-version", &(n + 1).to_string())
    });
    let w = warmed(&cache, origin);
    clock.advance(secs(59));
    for worker in &w {
        worker.warm(URL, "v1");
    }
    clock.advance(secs(1));
    let got = w[0].get(URL);
    assert!(got.status.contains("ttl=-"), "not served stale: {got:?}");
    // The revalidation ran on the first worker's runtime.
    assert_eq!(log.calls(), 2);
    for worker in &w {
        let got = worker.get(URL);
        assert_eq!(got.status, L1_HIT, "the 304 did not freshen L1's entry");
        assert_eq!(got.body, "v1");
        assert_eq!(got.version.as_deref(), Some("2"), "{got:?}");
    }
}

/// L1's byte budget evicts the hot key while other keys are stored (its
/// threads not reading it then): both threads' next read is a miss.
#[test]
fn an_eviction_by_the_byte_budget_reaches_every_threads_copy() {
    let clock = clock();
    let cache = Cache::builder()
        .clock(clock.clone())
        .l1_capacity_bytes(64 * 1024)
        .build()
        .unwrap();
    let (origin, _log) = versions();
    let w = warmed(&cache, origin);
    // Other keys (their URLs chosen so that none shares the hot key's
    // generation bucket: a store of one would hide a missing eviction
    // hook), stored and read from the first worker (the hot key unread
    // meanwhile), until L1 has evicted the hot key: an `only-if-cached`
    // request (never answered by a front, and read only now and then, as
    // it counts as a read in L1's eviction policy) says when.
    let mut n = 0;
    loop {
        for _ in 0..200 {
            n += 1;
            let other = format!("http://example.com/o/{n}");
            let got = w[0].get(&other);
            assert!(got.status.contains("stored"), "{got:?}");
            // Read again, so that the others are hot too in L1's eyes
            // (entries read once only are evicted first).
            w[0].get(&other);
            w[0].get(&other);
        }
        let probe = w[1].send(get_with(URL, &[("cache-control", "only-if-cached")]));
        if !probe.status.contains("hit") {
            break;
        }
        assert!(n < 20_000, "the hot key was never evicted");
    }
    assert!(cache.stats().evictions > 0);
    // The second worker (its copy untouched by the loop: `only-if-cached`
    // reads bypass fronts) reads first: a miss that stores a new version;
    // the first then reads that one, not its own old copy.
    let first = w[1].get(URL);
    assert!(
        first.status.contains("fwd=uri-miss"),
        "an evicted copy answered: {first:?}"
    );
    assert_ne!(first.body, "v1");
    let second = w[0].get(URL);
    assert_eq!(
        second.body, first.body,
        "an evicted copy answered: {second:?}"
    );
}

/// An entry another instance stored, read from L2 by a worker and promoted
/// into this instance's L1, is copied into both threads' fronts like any
/// other; the other instance's invalidation (the L2 invalidation log)
/// reaches every copy: the next read on each thread sees the origin's new
/// answer.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instances_invalidation_reaches_every_copy_of_a_promoted_entry() {
    redis_support::require_redis();
    let server = redis_support::RedisServer::start();
    let clock = clock();
    let tiered = || {
        Cache::builder()
            .clock(clock.clone())
            .redis(server.url())
            .l2_timeout(secs(2))
            .promote_after(1)
            .build()
            .unwrap()
    };
    let (a, b) = (tiered(), tiered());
    let (versions, log) = versions();
    let stored = send(&cached(&a, versions.clone()), get(URL)).await;
    assert_eq!(body(stored).await, "v1");
    written(&a, 1).await;
    // B connects and subscribes from this runtime (whose threads keep
    // running while the workers block), through an origin of its own.
    let (other, _) = origin(|_, _| ok("max-age=60", "other"));
    send(&cached(&b, other), get("http://example.com/other")).await;
    subscribed(&b).await;

    let w = workers(&b, versions);
    tokio::task::block_in_place(|| {
        let promoted = w[0].get(URL);
        assert_eq!(promoted.status, "tower-tiered-cache; hit; detail=l2");
        assert_eq!(promoted.body, "v1");
        for worker in &w {
            worker.warm(URL, "v1");
        }
    });
    assert_eq!(b.stats().l1_entries, 2, "{:?}", b.stats());
    assert_eq!(log.calls(), 1);

    assert!(a.invalidate(&get(URL)));
    assert!(
        eventually(|| b.stats().l1_entries == 1).await,
        "the invalidation did not reach B: {:?}",
        b.stats()
    );
    tokio::task::block_in_place(|| both_see_v2_after_a_miss(&w));
    assert_eq!(log.calls(), 2);
}
