//! Tests that kill mutants which survived the rest of the suite (issue 13,
//! point 6): each one fails when the behaviour it names is broken.
//!
//! - `Entry::vary_matches` always `true`: a waiter with another `Vary`
//!   value joining a flight is served the leader's variant;
//! - the L2 supersede check skipped: a write still queued when its key is
//!   invalidated lands after the invalidation;
//! - the delete of a corrupt L2 value skipped (on a single node; the
//!   cluster case is in `l2_cluster.rs`);
//! - a `no-store` request joining a flight, or taken for a `Range` pass;
//! - a waiter served a stale-if-error answer, an entry its leader read
//!   from L2, or another instance's answer (distributed coalescing), for
//!   another `Vary` variant than its own;
//! - a waiter of the same variant sent to read L2 again instead of being
//!   given what its leader read there.

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

/// An origin whose first call waits at `gate`; call `n` answers
/// `{prefix}{n}`, fresh for 60 s.
fn first_call_held(gate: &Gate, prefix: &'static str) -> (Origin, Log) {
    let g = gate.clone();
    origin_fn(move |n, _req: http::Request<()>| {
        let g = g.clone();
        async move {
            if n == 0 {
                g.pass().await;
            }
            Ok::<_, Infallible>(ok("max-age=60", &format!("{prefix}{n}")))
        }
    })
}

/// The request's `Accept-Language`, or "".
fn accept_language(req: &http::Request<()>) -> String {
    req.headers()
        .get("accept-language")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
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
        let lang = accept_language(&req);
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

/// A request with `Cache-Control: no-store` never waits on a flight: while
/// another request's flight is held at the origin, it makes its own call
/// and gets its own answer, marked as a forward of a miss (not a `Range`
/// pass), and nothing of it is stored.
#[tokio::test]
async fn a_no_store_request_calls_alone_while_a_flight_is_in_flight() {
    let cache = Cache::builder().build().unwrap();
    let gate = Gate::new();
    let (origin, log) = first_call_held(&gate, "answer ");
    let svc = cached(&cache, origin);
    let s = svc.clone();
    let leader = tokio::spawn(async move { body(send(&s, get(URL)).await).await });
    run_ready_tasks().await;
    assert_eq!(log.calls(), 1, "the first request leads a flight");
    let no_store = tokio::spawn(async move {
        let r = send(&svc, get_with(URL, &[("cache-control", "no-store")])).await;
        (cache_status(&r), body(r).await)
    });
    run_ready_tasks().await;
    assert!(
        no_store.is_finished(),
        "the no-store request waited on the flight"
    );
    let (status, got) = no_store.await.unwrap();
    assert_eq!(got, "answer 1");
    assert_eq!(
        status,
        "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=no-store"
    );
    assert_eq!(cache.stats().stores, 0);
    gate.open();
    assert_eq!(leader.await.unwrap(), "answer 0");
    assert_eq!(cache.stats().stores, 1);
}

/// A flight that revalidates a stale `en` variant ends in stale-if-error
/// (the origin answers 503). A waiter with the same `Accept-Language` is
/// answered with the same stale entry, marked so; a waiter with another
/// (`fr`, no variant stored) never gets `en`'s stale body: it calls the
/// origin itself and gets the origin's 503.
#[tokio::test]
async fn waiters_of_a_stale_if_error_flight_get_the_stale_entry_only_for_their_variant() {
    let clock = clock();
    let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    let (origin, log) = origin_fn(move |n, _req: http::Request<()>| {
        let g = g.clone();
        async move {
            if n == 0 {
                let r = ok("max-age=1, stale-if-error=300", "en v1");
                return Ok::<_, Infallible>(with_header(r, "vary", "accept-language"));
            }
            g.pass().await;
            Ok(response(503, &[], "down"))
        }
    });
    let svc = cached(&cache, origin);
    let fetch = |lang: &'static str| {
        let svc = svc.clone();
        tokio::spawn(async move {
            let r = send(&svc, get_with(URL, &[("accept-language", lang)])).await;
            let status = r.status().as_u16();
            let cs = cache_status(&r);
            (
                status,
                cs,
                String::from_utf8(body(r).await.to_vec()).unwrap(),
            )
        })
    };
    assert_eq!(fetch("en").await.unwrap().2, "en v1");
    clock.advance(secs(2));
    let leader = fetch("en");
    run_ready_tasks().await;
    assert_eq!(log.calls(), 2, "en's revalidation leads a flight");
    let same = fetch("en");
    let other = fetch("fr");
    run_ready_tasks().await;
    assert_eq!(log.calls(), 2, "both waiters joined the flight");
    gate.open();

    let stale_if_error =
        "tower-tiered-cache; fwd=stale; fwd-status=503; ttl=-1; detail=stale-if-error";
    let (status, cs, got) = leader.await.unwrap();
    assert_eq!(
        (status, cs.as_str(), got.as_str()),
        (200, stale_if_error, "en v1")
    );
    let (status, cs, got) = same.await.unwrap();
    assert_eq!((status, got.as_str()), (200, "en v1"), "{cs}");
    assert!(cs.contains("detail=stale-if-error"), "{cs}");
    let (status, cs, got) = other.await.unwrap();
    assert_eq!((status, got.as_str()), (503, "down"), "fr: {cs}");
    assert_eq!(log.calls(), 3, "fr called the origin for its own variant");
    assert_eq!(log.request(2).header("accept-language"), Some("fr"));
}

/// A `no-cache` request that joins a flight started before it arrived is
/// not answered with that flight's (older) answer: it waits for the next
/// flight, which calls the origin for it.
#[tokio::test]
async fn a_no_cache_waiter_is_not_given_an_answer_older_than_itself() {
    let cache = Cache::builder().build().unwrap();
    let gate = Gate::new();
    let (origin, log) = first_call_held(&gate, "v");
    let svc = cached(&cache, origin);
    let s = svc.clone();
    let first = tokio::spawn(async move { body(send(&s, get(URL)).await).await });
    run_ready_tasks().await;
    assert_eq!(log.calls(), 1, "the first request leads a flight");
    let no_cache = tokio::spawn(async move {
        let r = send(&svc, get_with(URL, &[("cache-control", "no-cache")])).await;
        body(r).await
    });
    run_ready_tasks().await;
    assert_eq!(log.calls(), 1, "the no-cache request waits on the flight");
    gate.open();
    assert_eq!(first.await.unwrap(), "v0");
    assert_eq!(no_cache.await.unwrap(), "v1", "given the older answer");
    assert_eq!(log.calls(), 2);
}

#[cfg(feature = "redis")]
mod l2 {
    use std::time::Duration;

    use super::redis_support::{require_redis, RedisServer};
    use super::*;
    use tower_tiered_cache::CacheBuilder;

    const SLOW: &str = "http://example.com/slow";
    const BLOCKER: &str = "http://example.com/blocker";

    /// An L2 cache whose operations do not time out while the test holds
    /// Redis's writes back.
    fn l2(url: String) -> CacheBuilder {
        Cache::builder()
            .redis(url)
            .namespace("m")
            .l2_timeout(Duration::from_secs(10))
    }

    /// The keys the caches of this file wrote.
    fn keys(server: &RedisServer) -> Vec<String> {
        let out = server.cli(&["--scan", "--pattern", "m:*"]);
        let mut keys: Vec<String> = out.text().lines().map(str::to_owned).collect();
        keys.sort();
        keys
    }

    /// Whether some connection other than an invalidation-log reader is
    /// held by `CLIENT PAUSE` (a blocked write).
    fn a_write_is_held(server: &RedisServer) -> bool {
        server
            .cli(&["CLIENT", "LIST"])
            .text()
            .lines()
            .any(|l| l.contains(" flags=b ") && !l.contains("cmd=xread"))
    }

    /// A write of SLOW is queued behind another write that Redis holds
    /// back (`CLIENT PAUSE … WRITE`); SLOW is invalidated while its write
    /// is still queued. When Redis lets writes through, the queued write
    /// is dropped: a fresh instance misses SLOW.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_queued_before_an_invalidation_never_lands() {
        require_redis();
        let server = RedisServer::start();
        let gate = Gate::new();
        let g = gate.clone();
        let (origin, log) = origin_fn(move |_, req: http::Request<()>| {
            let g = g.clone();
            let slow = req.uri().path() == "/slow";
            async move {
                if slow {
                    g.pass().await;
                }
                Ok::<_, Infallible>(ok("max-age=60", "v"))
            }
        });
        let a = l2(server.url()).build().unwrap();
        let svc = cached(&a, origin.clone());
        // Connected, and SLOW's L2 read done (a miss): its flight waits
        // at the origin.
        send(&svc, get("http://example.com/connect")).await;
        written(&a, 1).await;
        let slow = tokio::spawn(send(&svc, get(SLOW)));
        assert!(
            eventually(|| log.calls() == 2).await,
            "SLOW reached the origin"
        );

        let paused = server.cli(&["CLIENT", "PAUSE", "20000", "WRITE"]);
        assert!(paused.text().contains("OK"), "{paused:?}");
        // BLOCKER's write goes out and is held by Redis: the writer is busy.
        send(&svc, get(BLOCKER)).await;
        assert!(
            within(Duration::from_secs(10), || a_write_is_held(&server)).await,
            "BLOCKER's write is not held: {}",
            server.cli(&["CLIENT", "LIST"]).text()
        );
        // SLOW's answer is stored; its L2 write waits in the queue.
        gate.open();
        assert_eq!(body(slow.await.unwrap()).await, "v");
        assert!(
            within(Duration::from_secs(10), || a.l2_pending_writes() == 2).await,
            "{:?}",
            a.stats()
        );
        a.invalidate(&get(SLOW));
        let unpaused = server.cli(&["CLIENT", "UNPAUSE"]);
        assert!(unpaused.text().contains("OK"), "{unpaused:?}");

        assert!(
            within(Duration::from_secs(10), || a.l2_pending_writes() == 0).await,
            "{:?}",
            a.stats()
        );
        // Only the two other keys are in Redis.
        assert_eq!(keys(&server).len(), 2, "{:?}", keys(&server));
        let b = l2(server.url()).build().unwrap();
        let calls = log.calls();
        let r = send(&cached(&b, origin), get(SLOW)).await;
        assert!(
            cache_status(&r).contains("fwd=uri-miss"),
            "the queued write landed after the invalidation: {}",
            cache_status(&r)
        );
        assert_eq!(log.calls(), calls + 1);
        // Dropped as superseded, not lost to a timeout.
        let st = a.stats();
        assert_eq!((st.l2_writes, st.l2_writes_dropped), (2, 1), "{st:?}");
        assert_eq!(st.l2_timeouts, 0, "{st:?}");
    }

    /// Garbage under an entry's key on a single node: a miss (the origin
    /// answers), counted in `l2_decode_errors`, and the key is deleted. The
    /// origin's second answer is `no-store`, so nothing rewrites the key.
    #[tokio::test]
    async fn a_corrupt_value_on_one_node_is_a_miss_and_deleted() {
        require_redis();
        let server = RedisServer::start();
        let (origin, log) = origin(|n, _| {
            if n == 0 {
                ok("max-age=60", "stored")
            } else {
                ok("no-store", "fresh")
            }
        });
        let a = l2(server.url()).build().unwrap();
        send(&cached(&a, origin.clone()), get(URL)).await;
        written(&a, 1).await;
        let key = keys(&server).pop().expect("URL's key");
        let set = server.cli(&["SET", &key, "not an entry"]);
        assert!(set.text().contains("OK"), "{set:?}");

        let b = l2(server.url()).build().unwrap();
        let r = send(&cached(&b, origin), get(URL)).await;
        assert!(
            cache_status(&r).contains("fwd=uri-miss"),
            "{}",
            cache_status(&r)
        );
        assert_eq!(body(r).await, "fresh");
        assert_eq!(log.calls(), 2);
        assert_eq!(b.stats().l2_decode_errors, 1, "{:?}", b.stats());
        let exists = || server.cli(&["EXISTS", &key]).text().trim().to_owned();
        assert!(
            within(Duration::from_secs(10), || exists() == "0").await,
            "the corrupt value was not deleted: {:?}",
            server.cli(&["GET", &key]).text()
        );
        assert_eq!(b.l2_pending_writes(), 0);
        assert_eq!(b.stats().l2_writes, 0, "{:?}", b.stats());
    }

    /// A fresh instance's `en` request leads a flight whose L2 read Redis
    /// holds back (`CLIENT PAUSE … ALL`, for 3 s); `fr` joins it. The leader finds
    /// `en`'s variant in L2 and is answered with it; `fr`, whose variant L2
    /// does not hold, never gets `en`'s body: it calls the origin itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_of_another_variant_is_not_given_what_the_leader_read_from_l2() {
        require_redis();
        let server = RedisServer::start();
        let (origin, log) = origin_fn(move |_, req: http::Request<()>| {
            let lang = accept_language(&req);
            async move {
                let r = ok("max-age=60", &format!("body in {lang}"));
                Ok::<_, Infallible>(with_header(r, "vary", "accept-language"))
            }
        });
        let en = [("accept-language", "en")];
        let a = l2(server.url()).build().unwrap();
        send(&cached(&a, origin.clone()), get_with(URL, &en)).await;
        written(&a, 1).await;
        // A fresh instance, connected to Redis before the pause.
        let b = l2(server.url()).build().unwrap();
        let svc = cached(&b, origin);
        send(&svc, get("http://example.com/connect")).await;
        assert_eq!(log.calls(), 2);

        // Held for 3 s: a paused Redis takes no `CLIENT UNPAUSE` either.
        let paused = server.cli(&["CLIENT", "PAUSE", "3000", "ALL"]);
        assert!(paused.text().contains("OK"), "{paused:?}");
        let fetch = |lang: &'static str| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let r = send(&svc, get_with(URL, &[("accept-language", lang)])).await;
                let cs = cache_status(&r);
                (cs, String::from_utf8(body(r).await.to_vec()).unwrap())
            })
        };
        let leader = fetch("en");
        // en leads a flight and reads L2, which Redis holds back.
        assert!(eventually(|| b.stats().in_flight == 1).await, "no flight");
        let waiter = fetch("fr");
        // fr joins the flight (a waiter reads nothing from L2 itself): it
        // stays unanswered while the read is held.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished() && !leader.is_finished());
        assert_eq!(log.calls(), 2, "fr did not wait on the flight");

        let (cs, got) = leader.await.unwrap();
        assert_eq!(got, "body in en", "{cs}");
        assert!(cs.contains("detail=l2"), "{cs}");
        let (cs, got) = waiter.await.unwrap();
        assert_eq!(got, "body in fr", "fr was given another variant: {cs}");
        assert_eq!(log.calls(), 3);
        assert_eq!(log.last().header("accept-language"), Some("fr"));
    }

    /// A fresh instance's request leads a flight whose L2 read Redis holds
    /// back; a request for the same variant joins it. The waiter is
    /// answered with what the leader read (an L2 hit of its own), without
    /// a flight or an L2 read of its own: with `promote_after(2)`, the
    /// leader's read is the only one counted towards promotion, so nothing
    /// is promoted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_of_the_same_variant_is_given_what_the_leader_read_from_l2() {
        require_redis();
        let server = RedisServer::start();
        let (origin, log) = origin(|_, _| ok("max-age=60", "stored"));
        let a = l2(server.url()).build().unwrap();
        send(&cached(&a, origin.clone()), get(URL)).await;
        written(&a, 1).await;
        // A fresh instance, connected to Redis before the pause.
        let b = l2(server.url()).promote_after(2).build().unwrap();
        let svc = cached(&b, origin);
        send(&svc, get("http://example.com/connect")).await;
        assert_eq!(log.calls(), 2);

        // Held for 3 s: a paused Redis takes no `CLIENT UNPAUSE` either.
        let paused = server.cli(&["CLIENT", "PAUSE", "3000", "ALL"]);
        assert!(paused.text().contains("OK"), "{paused:?}");
        let fetch = || {
            let svc = svc.clone();
            tokio::spawn(async move {
                let r = send(&svc, get(URL)).await;
                let cs = cache_status(&r);
                (cs, String::from_utf8(body(r).await.to_vec()).unwrap())
            })
        };
        let leader = fetch();
        // The leader reads L2, which Redis holds back.
        assert!(eventually(|| b.stats().in_flight == 1).await, "no flight");
        let waiter = fetch();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished() && !leader.is_finished());

        let l2_hit = "tower-tiered-cache; hit; detail=l2";
        assert_eq!(
            leader.await.unwrap(),
            (l2_hit.to_owned(), "stored".to_owned())
        );
        assert_eq!(
            waiter.await.unwrap(),
            (l2_hit.to_owned(), "stored".to_owned())
        );
        assert_eq!(log.calls(), 2);
        let st = b.stats();
        assert_eq!(st.hits_l2, 2, "{st:?}");
        assert_eq!(st.promotions, 0, "the waiter read L2 itself: {st:?}");
    }

    /// Distributed coalescing: instance A holds the key's lease while its
    /// `en` call waits at the origin; B's `en` flight waits for A's answer
    /// and `fr` joins B's flight. B's leader is answered with `en` from L2
    /// once A's lands; `fr` never gets it: it takes the lease and calls the
    /// origin for its own variant.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_of_another_variant_is_not_given_another_instances_answer() {
        require_redis();
        let server = RedisServer::start();
        let gate = Gate::new();
        let g = gate.clone();
        let (origin, log) = origin_fn(move |n, req: http::Request<()>| {
            let g = g.clone();
            let lang = accept_language(&req);
            async move {
                if n == 0 {
                    g.pass().await;
                }
                let r = ok("max-age=60", &format!("body in {lang}"));
                Ok::<_, Infallible>(with_header(r, "vary", "accept-language"))
            }
        });
        let leased = || {
            l2(server.url())
                .distributed_coalescing(true)
                .lease_ttl(Duration::from_secs(20))
                .build()
                .unwrap()
        };
        let (a, b) = (leased(), leased());
        let (sa, sb) = (cached(&a, origin.clone()), cached(&b, origin));
        let fetch = |svc: &Svc<_, _>, lang: &'static str| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let r = send(&svc, get_with(URL, &[("accept-language", lang)])).await;
                let cs = cache_status(&r);
                (cs, String::from_utf8(body(r).await.to_vec()).unwrap())
            })
        };
        let holder = fetch(&sa, "en");
        assert!(eventually(|| log.calls() == 1).await, "A called the origin");
        assert_eq!(a.stats().leases.taken, 1);
        let leader = fetch(&sb, "en");
        assert!(
            eventually(|| b.stats().leases.waited == 1).await,
            "B's flight did not wait for A's lease"
        );
        let waiter = fetch(&sb, "fr");
        // fr joins B's flight: unanswered while A's call is held.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished());
        assert_eq!(log.calls(), 1);
        gate.open();

        assert_eq!(holder.await.unwrap().1, "body in en");
        let (cs, got) = leader.await.unwrap();
        assert_eq!(got, "body in en", "{cs}");
        let (cs, got) = waiter.await.unwrap();
        assert_eq!(got, "body in fr", "fr was given another variant: {cs}");
        assert_eq!(log.calls(), 2);
        assert_eq!(log.last().header("accept-language"), Some("fr"));
    }
}
