//! Hot-key refresh and prefetch (`refresh_hot`, `prefetch`), through the
//! background worker `CacheService::spawn_background` starts: which keys a
//! round refreshes, the bounds on what reaches the origin at once and on
//! what waits, the worker's end with the cache, and a failing origin.
//!
//! Time is a `ManualClock` moved by hand and rounds are started with
//! `refresh_hot_now`; real waits are bounded loops waiting for a signal
//! (an origin call, a counter), never for a period.

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tower_tiered_cache::warm::Background;
use tower_tiered_cache::{Cache, CacheBuilder, ManualClock};

use support::*;

/// A cache on `clock` that counts every read for `refresh_hot`.
fn builder(clock: &ManualClock) -> CacheBuilder {
    Cache::builder().clock(clock.clone()).hot_key_sample(1)
}

/// How many of the origin's calls were for `path`.
fn calls_to(log: &Log, path: &str) -> usize {
    (0..log.calls())
        .filter(|&i| log.request(i).uri.path() == path)
        .count()
}

fn url(path: &str) -> String {
    format!("http://example.com{path}")
}

/// Sends a GET for `path` and returns its body.
async fn read(svc: &Svc, path: &str) -> String {
    let resp = send(svc, get(&url(path))).await;
    String::from_utf8(body(resp).await.to_vec()).expect("utf-8")
}

/// An origin answering `max-age=3600` with the path and the call's number.
fn counting_origin() -> (Origin, Log) {
    origin(|n, req| ok("max-age=3600", &format!("{} #{}", req.uri().path(), n + 1)))
}

#[tokio::test]
async fn a_round_refreshes_the_two_hottest_of_ten_keys_and_not_the_cold_ones() {
    let clock = clock();
    let cache = builder(&clock).refresh_hot(2, secs(60)).build().unwrap();
    let (origin, log) = counting_origin();
    let svc = cached(&cache, origin);
    let background = svc.spawn_background::<(), _>().unwrap();
    // Every key read twice (so each is tracked with its request), two of
    // them many more times.
    for i in 0..10 {
        read(&svc, &format!("/k{i}")).await;
        read(&svc, &format!("/k{i}")).await;
    }
    for _ in 0..10 {
        read(&svc, "/k3").await;
    }
    for _ in 0..5 {
        read(&svc, "/k7").await;
    }
    assert_eq!(log.calls(), 10);
    clock.advance(secs(60));
    background.refresh_hot_now();
    assert!(eventually(|| background.rounds() == 1).await);
    assert!(
        eventually(|| cache.stats().refresh_ok == 2).await,
        "{:?}",
        cache.stats()
    );
    assert_eq!(cache.stats().hot_refreshes, 2);
    assert!(cache
        .prometheus()
        .contains("\ntower_cache_hot_refreshes_total 2\n"));
    assert_eq!((calls_to(&log, "/k3"), calls_to(&log, "/k7")), (2, 2));
    assert_eq!(log.calls(), 12, "no cold key was refreshed");
    // The refreshed copy (call 11 or 12) answers, from L1.
    let now = read(&svc, "/k3").await;
    assert!(now == "/k3 #11" || now == "/k3 #12", "{now}");
}

#[tokio::test]
async fn a_round_waits_for_refresh_permits_and_never_exceeds_them() {
    let clock = clock();
    let cache = builder(&clock)
        .refresh_hot(5, secs(60))
        .max_concurrent_refreshes(2)
        .build()
        .unwrap();
    let gate = Gate::new();
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (g, n_, m_) = (gate.clone(), now.clone(), most.clone());
    let (origin, log) = origin_fn(move |n, req: http::Request<()>| {
        let (g, now, most) = (g.clone(), n_.clone(), m_.clone());
        async move {
            let inside = now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(inside, Ordering::SeqCst);
            if n >= 5 {
                g.pass().await; // the refreshes wait
            }
            now.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, Infallible>(ok("max-age=3600", req.uri().path()))
        }
    });
    let svc = cached(&cache, origin);
    let background = svc.spawn_background::<(), _>().unwrap();
    for i in 0..5 {
        for _ in 0..3 {
            read(&svc, &format!("/k{i}")).await;
        }
    }
    clock.advance(secs(60));
    background.refresh_hot_now();
    assert!(
        eventually(|| log.calls() == 7).await,
        "two refreshes reach the origin"
    );
    gate.open();
    assert!(
        eventually(|| cache.stats().refresh_ok == 5).await,
        "the round went on as permits freed up: {:?}",
        cache.stats()
    );
    let st = cache.stats();
    assert_eq!((st.hot_refreshes, st.refresh_skipped), (5, 0));
    assert_eq!(log.calls(), 10);
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "at most 2 at the origin at once"
    );
}

/// A cache whose reads of `/k{n}` prefetch `/u{n}` (and of `/list`,
/// `/next`).
fn prefetching(clock: &ManualClock) -> CacheBuilder {
    builder(clock).prefetch(|req| {
        let path = req.uri.path();
        let next = match path.strip_prefix("/k") {
            Some(n) => format!("/u{n}"),
            None if path == "/list" => "/next".to_owned(),
            None => return Vec::new(),
        };
        vec![next.parse().unwrap()]
    })
}

/// An origin whose answers to prefetched paths (`/u…`, `/next`) wait for
/// `gate`.
fn gated_origin(gate: &Gate) -> (Origin, Log) {
    let gate = gate.clone();
    origin_fn(move |_, req: http::Request<()>| {
        let gate = gate.clone();
        async move {
            let path = req.uri().path().to_owned();
            if path.starts_with("/u") || path == "/next" {
                gate.pass().await;
            }
            Ok::<_, Infallible>(ok("max-age=3600", &path))
        }
    })
}

#[tokio::test]
async fn prefetch_warms_a_named_url_once_however_many_reads_name_it_at_once() {
    let clock = clock();
    let cache = prefetching(&clock).build().unwrap();
    let gate = Gate::new();
    let (origin, log) = gated_origin(&gate);
    let svc = cached(&cache, origin);
    let _background = svc.spawn_background::<(), _>().unwrap();
    read(&svc, "/list").await;
    // The prefetch of /next is in flight (held at the gate) while /list is
    // read 100 times at once.
    assert!(eventually(|| calls_to(&log, "/next") == 1).await);
    let reads: Vec<_> = (0..100)
        .map(|_| tokio::spawn(send(&svc, get(&url("/list")))))
        .collect();
    for r in reads {
        r.await.unwrap();
    }
    gate.open();
    assert!(
        eventually(|| cache.stats().prefetch.warmed == 1).await,
        "{:?}",
        cache.stats().prefetch
    );
    let p = cache.stats().prefetch;
    assert_eq!((p.queued, p.dropped, p.skipped, p.failed), (1, 0, 0, 0));
    assert_eq!(calls_to(&log, "/next"), 1);
    // It was stored: the first client read of /next is a hit.
    let resp = send(&svc, get(&url("/next"))).await;
    assert_eq!(cache_status(&resp), "tower-tiered-cache; hit; detail=l1");
    assert_eq!(calls_to(&log, "/next"), 1);
}

#[tokio::test]
async fn a_full_prefetch_queue_drops_and_counts_and_holds_no_more() {
    let clock = clock();
    let cache = prefetching(&clock)
        .prefetch_queue(2)
        .max_concurrent_prefetches(1)
        .build()
        .unwrap();
    let gate = Gate::new();
    let (origin, log) = gated_origin(&gate);
    let svc = cached(&cache, origin);
    let _background = svc.spawn_background::<(), _>().unwrap();
    read(&svc, "/k0").await;
    assert!(
        eventually(|| calls_to(&log, "/u0") == 1).await,
        "/u0 being warmed"
    );
    // /u1 and /u2 wait; /u3 .. /u9 find the queue full.
    for i in 1..10 {
        read(&svc, &format!("/k{i}")).await;
    }
    let p = cache.stats().prefetch;
    assert_eq!((p.queued, p.dropped), (3, 7));
    gate.open();
    assert!(
        eventually(|| cache.stats().prefetch.warmed == 3).await,
        "{:?}",
        cache.stats().prefetch
    );
    let warmed: usize = (0..10).map(|i| calls_to(&log, &format!("/u{i}"))).sum();
    assert_eq!(warmed, 3, "only what the queue held reached the origin");
    let p = cache.stats().prefetch;
    assert_eq!((p.queued, p.dropped, p.failed), (3, 7, 0));
    let text = cache.prometheus();
    for line in [
        "tower_cache_prefetches_total{outcome=\"queued\"} 3\n",
        "tower_cache_prefetches_total{outcome=\"dropped\"} 7\n",
        "tower_cache_prefetches_total{outcome=\"warmed\"} 3\n",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

/// A prefetching `refresh_hot` cache, its service and running worker,
/// after one read; the origin holds the token returned (and a clone of
/// the cache, with `holds_cache`).
async fn worker_holding(
    clock: &ManualClock,
    holds_cache: bool,
) -> (Cache, Svc, Background, Arc<()>) {
    let cache = prefetching(clock).refresh_hot(2, secs(60)).build().unwrap();
    let token = Arc::new(());
    let (held, kept) = (token.clone(), holds_cache.then(|| cache.clone()));
    let (origin, _log) = origin(move |_, _| {
        let _held = (&held, &kept);
        ok("max-age=3600", "x")
    });
    let svc = cached(&cache, origin);
    let background = svc.spawn_background::<(), _>().unwrap();
    read(&svc, "/k1").await;
    (cache, svc, background, token)
}

#[tokio::test]
async fn the_worker_ends_and_lets_go_of_the_inner_service_when_the_cache_is_dropped() {
    let clock = clock();
    let (cache, svc, background, token) = worker_holding(&clock, false).await;
    // One worker per cache; `stop` ends it and another may start.
    assert!(svc
        .spawn_background::<(), _>()
        .unwrap_err()
        .is_already_running());
    background.stop();
    assert!(eventually(|| background.is_finished()).await);
    let background = svc.spawn_background::<(), _>().unwrap();
    assert!(!background.is_finished());
    drop(svc);
    drop(cache);
    assert!(
        eventually(|| background.is_finished()).await,
        "the worker outlived its cache"
    );
    assert!(
        eventually(|| Arc::strong_count(&token) == 1).await,
        "the inner service was kept"
    );
}

#[tokio::test]
async fn a_failing_origin_does_not_poison_entries() {
    let clock = clock();
    let cache = builder(&clock)
        .refresh_hot(1, secs(60))
        .prefetch(|req| match req.uri.path() {
            "/a" => vec!["/b".parse().unwrap()],
            _ => Vec::new(),
        })
        .build()
        .unwrap();
    // Only the first answer is good.
    let (origin, log) = origin(|n, _| match n {
        0 => ok("max-age=3600", "good"),
        _ => response(500, &[], "broken"),
    });
    let svc = cached(&cache, origin);
    let background = svc.spawn_background::<(), _>().unwrap();
    assert_eq!(read(&svc, "/a").await, "good");
    assert!(eventually(|| cache.stats().prefetch.failed == 1).await);
    // Reads of /a go on; /b, just failed, is not queued again.
    for _ in 0..3 {
        assert_eq!(read(&svc, "/a").await, "good");
    }
    assert_eq!(cache.stats().prefetch.queued, 1);
    clock.advance(secs(60));
    let requests = cache.stats().requests;
    background.refresh_hot_now();
    assert!(
        eventually(|| cache.stats().refresh_failed == 1).await,
        "{:?}",
        cache.stats()
    );
    assert_eq!(log.calls(), 3);
    let st = cache.stats();
    assert_eq!(
        (st.requests, st.misses, st.upstream_errors),
        (requests, 2, 2),
        "a refresh is no request (the misses are /a's and /b's prefetch), its 500 an upstream error"
    );
    // The entry still answers as it was; the failed prefetch stored nothing.
    let resp = send(&svc, get(&url("/a"))).await;
    assert_eq!(cache_status(&resp), "tower-tiered-cache; hit; detail=l1");
    assert_eq!(body(resp).await, "good");
    let resp = send(&svc, get(&url("/b"))).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(
        calls_to(&log, "/b"),
        2,
        "the client's read of /b went to the origin"
    );
    // As for any failed refresh, the entry's life was extended (by half
    // its TTL): past its freshness it is still served, not the origin's 500.
    clock.advance(secs(3600));
    let resp = send(&svc, get(&url("/a"))).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body(resp).await, "good");
}

#[tokio::test]
async fn a_read_made_by_prefetching_prefetches_nothing() {
    let clock = clock();
    // /p0 names /p1, which names /p2, ...: only the client's read counts.
    let cache = builder(&clock)
        .prefetch(|req| {
            let n: u32 = req.uri.path()[2..].parse().unwrap_or(0);
            vec![format!("/p{}", n + 1).parse().unwrap()]
        })
        .build()
        .unwrap();
    let (origin, log) = counting_origin();
    let svc = cached(&cache, origin);
    let _background = svc.spawn_background::<(), _>().unwrap();
    read(&svc, "/p0").await;
    assert!(eventually(|| cache.stats().prefetch.warmed == 1).await);
    // /p1's read (the prefetch) looked /p1 up before it was warmed: had it
    // queued /p2, that would be counted by now.
    assert_eq!(cache.stats().prefetch.queued, 1);
    assert_eq!((calls_to(&log, "/p1"), calls_to(&log, "/p2")), (1, 0));
}

/// What `started` to now took on tokio's paused clock: `deadline`, to
/// within the steps `eventually` polls in.
fn assert_deadline(started: tokio::time::Instant, deadline: std::time::Duration, what: &str) {
    let took = started.elapsed();
    let step = std::time::Duration::from_millis(50);
    assert!(
        took >= deadline && took < deadline + step,
        "{what} deadline is {deadline:?}, took {took:?}"
    );
}

// Tokio's clock is paused (no real I/O here): the deadlines below pass
// exactly, however busy the machine.
#[tokio::test(start_paused = true)]
async fn a_hung_origin_holds_a_refresh_or_a_prefetch_no_longer_than_its_deadline() {
    let clock = clock();
    let cache = builder(&clock)
        .refresh_hot(1, secs(60))
        .refresh_timeout(secs(1))
        .prefetch(|req| match req.uri.path() {
            "/a" => vec!["/b".parse().unwrap()],
            _ => Vec::new(),
        })
        .prefetch_timeout(secs(2))
        .build()
        .unwrap();
    let hang = Gate::new(); // never opened
    let (origin, log) = origin_fn(move |n, _| {
        let hang = hang.clone();
        async move {
            if n > 0 {
                hang.pass().await;
            }
            Ok::<_, Infallible>(ok("max-age=3600", "good"))
        }
    });
    let svc = cached(&cache, origin);
    let background = svc.spawn_background::<(), _>().unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(read(&svc, "/a").await, "good");
    assert_eq!(read(&svc, "/a").await, "good");
    assert!(eventually(|| cache.stats().prefetch.failed == 1).await);
    assert_deadline(started, secs(2), "the prefetch's");
    clock.advance(secs(60));
    let started = tokio::time::Instant::now();
    background.refresh_hot_now();
    assert!(eventually(|| cache.stats().refresh_failed == 1).await);
    assert_deadline(started, secs(1), "the refresh's");
    assert_eq!(log.calls(), 3);
    // The entry is kept, and the refresh's permit and flight are free: the
    // next round refreshes again.
    assert_eq!(read(&svc, "/a").await, "good");
    clock.advance(secs(60));
    background.refresh_hot_now();
    assert!(eventually(|| cache.stats().refresh_failed == 2).await);
    assert_eq!(cache.stats().hot_refreshes, 2);
}

/// An inner service that holds the cache (an axum router whose
/// state is the `Cache`) keeps the cache alive, so only the handle can end
/// the worker: dropping it does.
#[tokio::test]
async fn dropping_the_handle_stops_a_worker_whose_inner_service_holds_the_cache() {
    let clock = clock();
    let (cache, svc, background, token) = worker_holding(&clock, true).await;
    assert!(eventually(|| cache.stats().prefetch.warmed == 1).await);
    drop(svc);
    drop(cache);
    assert!(
        !background.is_finished(),
        "the inner service holds the cache"
    );
    drop(background);
    assert!(
        eventually(|| Arc::strong_count(&token) == 1).await,
        "the worker, its inner service and the cache outlived the handle"
    );
}

/// A hit runs the prefetch function one time in
/// `hot_key_sample` (per thread), a miss every time; other hits cost a
/// thread-local count.
#[tokio::test]
async fn prefetch_runs_for_every_miss_and_one_hit_in_the_sample() {
    let clock = clock();
    let asked = Arc::new(AtomicUsize::new(0));
    let a = asked.clone();
    let cache = Cache::builder()
        .clock(clock.clone())
        .hot_key_sample(8)
        .prefetch(move |_| {
            a.fetch_add(1, Ordering::SeqCst);
            vec!["/next".parse().unwrap()]
        })
        .build()
        .unwrap();
    let (origin, _log) = counting_origin();
    let svc = cached(&cache, origin);
    let _background = svc.spawn_background::<(), _>().unwrap();
    for i in 0..4 {
        read(&svc, &format!("/list{i}")).await;
    }
    assert_eq!(asked.load(Ordering::SeqCst), 4, "every miss");
    for _ in 0..160 {
        read(&svc, "/list0").await;
    }
    // One in 8 on average, gaps under 16: 10 at least, 20 expected.
    let hits = asked.load(Ordering::SeqCst) - 4;
    assert!((10..=60).contains(&hits), "{hits} of 160 hits ran it");
}

/// What `refresh_hot` and `prefetch` send carries none of the
/// reader's credentials (keys are not partitioned by them), and a URL on
/// another host is refused and counted as dropped.
#[tokio::test]
async fn replays_carry_no_credentials_and_prefetch_stays_on_the_reads_host() {
    let clock = clock();
    let cache = builder(&clock)
        .refresh_hot(1, secs(60))
        .prefetch(|req| match req.uri.path() {
            "/a" => vec![
                "http://other.example/steal".parse().unwrap(),
                "/b".parse().unwrap(),
            ],
            _ => Vec::new(),
        })
        .build()
        .unwrap();
    let (origin, log) = origin(|n, req| {
        let body = format!("{} #{}", req.uri().path(), n + 1);
        ok("public, max-age=3600", &body)
    });
    let svc = cached(&cache, origin);
    let background = svc.spawn_background::<(), _>().unwrap();
    let alice = [
        ("authorization", "Bearer alice"),
        ("proxy-authorization", "Basic YWxpY2U="),
        ("cookie", "session=alice"),
        ("accept", "text/plain"),
    ];
    for _ in 0..3 {
        assert_eq!(send(&svc, get_with(&url("/a"), &alice)).await.status(), 200);
    }
    assert!(eventually(|| cache.stats().prefetch.warmed == 1).await);
    let p = cache.stats().prefetch;
    assert_eq!((p.queued, p.dropped), (1, 3), "another host, once per read");
    clock.advance(secs(60));
    background.refresh_hot_now();
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);
    assert_eq!(log.calls(), 3, "/a, /b's prefetch, /a's refresh");
    for i in 0..log.calls() {
        let seen = log.request(i);
        assert_ne!(seen.uri.host(), Some("other.example"));
        if i == 0 {
            assert_eq!(seen.header("cookie"), Some("session=alice"));
            continue;
        }
        for (name, _) in &alice[..3] {
            assert_eq!(seen.header(name), None, "{name} replayed to {}", seen.uri);
        }
        assert_eq!(seen.header("accept"), Some("text/plain"));
    }
    assert_eq!(calls_to(&log, "/b"), 1);
}

/// A round waiting for a refresh permit takes none from the
/// request path: a stale entry read meanwhile is refreshed, not skipped.
#[tokio::test]
async fn a_round_waiting_for_a_permit_never_holds_up_a_stale_refresh() {
    let clock = clock();
    let cache = builder(&clock)
        .refresh_hot(2, secs(60))
        .max_concurrent_refreshes(1)
        .build()
        .unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    let (origin, log) = origin_fn(move |n, req: http::Request<()>| {
        let g = g.clone();
        async move {
            let path = req.uri().path().to_owned();
            if n >= 3 && path.starts_with("/h") {
                g.pass().await; // the hot keys' refreshes wait
            }
            let cc = if path == "/s" {
                "max-age=10, stale-while-revalidate=600"
            } else {
                "max-age=3600"
            };
            Ok::<_, Infallible>(ok(cc, &path))
        }
    });
    let svc = cached(&cache, origin);
    let background = svc.spawn_background::<(), _>().unwrap();
    for path in ["/h1", "/h2"] {
        for _ in 0..3 {
            read(&svc, path).await;
        }
    }
    read(&svc, "/s").await;
    assert_eq!(log.calls(), 3);
    clock.advance(secs(60));
    background.refresh_hot_now();
    // One hot refresh holds the round's permit, the round waits for another.
    assert!(eventually(|| log.calls() == 4).await);
    assert_eq!(read(&svc, "/s").await, "/s");
    assert_eq!(cache.stats().stale, 1, "answered stale, refreshed behind");
    assert!(
        eventually(|| calls_to(&log, "/s") == 2).await,
        "the stale refresh was held up: {:?}",
        cache.stats()
    );
    assert_eq!(cache.stats().refresh_skipped, 0);
    gate.open();
    assert!(
        eventually(|| cache.stats().refresh_ok == 3).await,
        "{:?}",
        cache.stats()
    );
    assert_eq!(cache.stats().hot_refreshes, 2);
}
