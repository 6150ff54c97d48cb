//! Readiness: `CacheService::poll_ready` never waits for the inner service.
//!
//! A request L1 can answer must not queue behind the inner service's
//! back-pressure (a `ConcurrencyLimit` permit held by a slow miss, a
//! `RateLimit` spent); the requests that do reach the inner service (misses,
//! passes, unsafe methods) wait for its readiness in their own futures, on
//! a clone, so the limits still hold; and an inner `poll_ready` error is the
//! request's error, unchanged.
//!
//! Time is tokio's paused clock: a deadline passes only once every task is
//! blocked, so "answered at once" is checked without a race against a busy
//! machine. Slow origins are held by a `Notify` or a `Gate`, never a sleep.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use tokio::sync::Notify;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_tiered_cache::{Cache, CacheLayer, Route};

use support::*;

const HIT: &str = "tower-tiered-cache; hit; detail=l1";
const MISS_STORED: &str = "tower-tiered-cache; fwd=uri-miss; fwd-status=200; stored";
const FAST: &str = "http://example.com/fast";
const SLOW: &str = "http://example.com/slow";

/// How long (in paused time) a request that must not wait may take: any
/// deadline works, since paused time only moves once everything is blocked.
const AT_ONCE: Duration = Duration::from_secs(1);

/// An origin that holds `/slow` until `release` is notified and answers
/// everything else at once, cacheable for a minute.
fn held_origin(release: Arc<Notify>) -> (Origin, Log) {
    origin_fn(move |_, req: Request<()>| {
        let release = release.clone();
        async move {
            if req.uri().path() == "/slow" {
                release.notified().await;
            }
            Ok::<_, Infallible>(ok("max-age=60", "answer"))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn fresh_hit_does_not_wait_for_a_concurrency_permit_held_by_a_slow_miss() {
    let cache = Cache::builder().clock(clock()).build().unwrap();
    let release = Arc::new(Notify::new());
    let (origin, log) = held_origin(release.clone());
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(cache.clone()))
        .concurrency_limit(1)
        .service(origin);

    let first = svc.clone().oneshot(get(FAST)).await.unwrap();
    assert_eq!(cache_status(&first), MISS_STORED);

    // A miss for another URL takes the only permit and holds it.
    let miss = tokio::spawn(svc.clone().oneshot(get(SLOW)));
    assert!(
        eventually(|| log.calls() == 2).await,
        "the miss reached the origin"
    );

    let hit = tokio::time::timeout(AT_ONCE, svc.clone().oneshot(get(FAST)))
        .await
        .expect("a fresh hit waited for the permit held by a slow miss")
        .unwrap();
    assert_eq!(cache_status(&hit), HIT);
    assert_eq!(body(hit).await, "answer");
    assert!(!miss.is_finished(), "the miss is still held");
    assert_eq!(log.calls(), 2);

    release.notify_one();
    let slow = miss.await.unwrap().unwrap();
    assert_eq!(cache_status(&slow), MISS_STORED);
    assert_eq!(log.calls(), 2);
    assert_eq!(cache.stats().hits, 1);
}

#[tokio::test(start_paused = true)]
async fn fresh_hit_does_not_wait_for_a_spent_rate_limit() {
    // The misses below wait up to two minutes for the rate limit: within
    // the upstream timeout, which covers waiting for readiness too.
    let cache = Cache::builder()
        .clock(clock())
        .upstream_timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let (origin, log) = origin(|_, _| ok("max-age=600", "answer"));
    // `RateLimit` is not `Clone`: a `Buffer` (one slot) shares it, as in
    // any real stack.
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(cache.clone()))
        .buffer(1)
        .rate_limit(1, Duration::from_secs(60))
        .service(origin);

    let first = svc.clone().oneshot(get(FAST)).await.unwrap();
    assert_eq!(cache_status(&first), MISS_STORED);

    // The minute's one call is spent: a miss waits in the buffer's worker
    // for the next minute, and a second one in the buffer's one slot.
    let miss = tokio::spawn(svc.clone().oneshot(get(SLOW)));
    settle_briefly().await;
    let queued = tokio::spawn(svc.clone().oneshot(get("http://example.com/queued")));
    settle_briefly().await;
    assert!(!miss.is_finished() && !queued.is_finished());

    let hit = tokio::time::timeout(AT_ONCE, svc.clone().oneshot(get(FAST)))
        .await
        .expect("a fresh hit waited for the rate limit")
        .unwrap();
    assert_eq!(cache_status(&hit), HIT);
    assert!(
        !miss.is_finished() && !queued.is_finished(),
        "the misses still wait for the rate limit"
    );
    assert_eq!(log.calls(), 1);

    // The misses go through when the rate allows, one a minute.
    let start = tokio::time::Instant::now();
    for task in [miss, queued] {
        let resp = task.await.unwrap().unwrap();
        assert_eq!(cache_status(&resp), MISS_STORED);
    }
    assert!(
        start.elapsed() >= Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(log.calls(), 3);
}

/// Lets ready tasks run without moving paused time past a minute.
async fn settle_briefly() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn misses_passes_and_unsafe_methods_still_respect_the_concurrency_limit() {
    let cache = Cache::builder()
        .clock(clock())
        .route(Route::prefix("/live").bypass())
        .build()
        .unwrap();
    let gate = Gate::new();
    let (in_flight, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (g, now, max) = (gate.clone(), in_flight.clone(), most.clone());
    let (origin, log) = origin_fn(move |_, _| {
        let (g, now, max) = (g.clone(), now.clone(), max.clone());
        async move {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            max.fetch_max(n, Ordering::SeqCst);
            g.pass().await;
            now.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, Infallible>(ok("max-age=60", "answer"))
        }
    });
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(cache.clone()))
        .concurrency_limit(1)
        .service(origin);

    let mut requests = Vec::new();
    for i in 0..4 {
        requests.push(get(&format!("http://example.com/miss/{i}")));
        requests.push(get(&format!("http://example.com/live/{i}")));
        requests.push(request(
            Method::OPTIONS,
            &format!("http://example.com/options/{i}"),
            &[],
        ));
        requests.push(request(
            Method::POST,
            &format!("http://example.com/post/{i}"),
            &[],
        ));
    }
    let total = requests.len();
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|req| tokio::spawn(svc.clone().oneshot(req)))
        .collect();

    // Every request is waiting; one of them holds the permit.
    settle().await;
    assert_eq!(
        log.calls(),
        1,
        "only the permit's holder reached the origin"
    );
    assert_eq!(in_flight.load(Ordering::SeqCst), 1);

    // One at a time.
    for done in 1..total {
        gate.let_through(1);
        assert!(
            eventually(|| log.calls() == done + 1).await,
            "request {done} did not follow"
        );
        assert_eq!(in_flight.load(Ordering::SeqCst), 1);
    }
    gate.let_through(1);
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(log.calls(), total);
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "at most one inner call at a time"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_request_waiting_for_readiness_holds_nothing() {
    let cache = Cache::builder()
        .clock(clock())
        .route(Route::prefix("/live").bypass())
        .build()
        .unwrap();
    let release = Arc::new(Notify::new());
    let (origin, log) = held_origin(release.clone());
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(cache.clone()))
        .concurrency_limit(1)
        .service(origin);

    let miss = tokio::spawn(svc.clone().oneshot(get(SLOW)));
    assert!(eventually(|| log.calls() == 1).await);
    // A pass and a miss queue for the permit, then their clients go away.
    let pass = tokio::spawn(svc.clone().oneshot(get("http://example.com/live/x")));
    let other = tokio::spawn(svc.clone().oneshot(get("http://example.com/other")));
    settle_briefly().await;
    assert!(!pass.is_finished() && !other.is_finished());
    pass.abort();
    other.abort();
    assert!(pass.await.unwrap_err().is_cancelled());
    assert!(other.await.unwrap_err().is_cancelled());

    release.notify_one();
    assert_eq!(miss.await.unwrap().unwrap().status(), 200);
    // The permit is free again: the next request gets it at once.
    let next = tokio::time::timeout(AT_ONCE, svc.clone().oneshot(get(FAST)))
        .await
        .expect("the permit was left with a cancelled request")
        .unwrap();
    assert_eq!(cache_status(&next), MISS_STORED);
    assert_eq!(log.calls(), 2);
}

/// An inner service whose `poll_ready` fails while `failing` is set,
/// after answering `Pending` (and waking the task) `pending` times.
#[derive(Clone)]
struct Flaky {
    failing: Arc<AtomicBool>,
    pending: Arc<AtomicUsize>,
    readied: Arc<AtomicUsize>,
    origin: Origin,
}

impl Service<Request<()>> for Flaky {
    type Response = Response<Full<Bytes>>;
    type Error = OriginError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, OriginError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), OriginError>> {
        self.readied.fetch_add(1, Ordering::SeqCst);
        let pending = &self.pending;
        if pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.failing.load(Ordering::SeqCst) {
            return Poll::Ready(Err(OriginError("overloaded")));
        }
        self.origin.poll_ready(cx).map_err(|e| match e {})
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        assert!(
            !self.failing.load(Ordering::SeqCst),
            "called after poll_ready failed"
        );
        let fut = self.origin.call(req);
        Box::pin(async move { fut.await.map_err(|e| match e {}) })
    }
}

#[tokio::test]
async fn an_inner_poll_ready_error_is_the_request_error_and_hits_do_not_see_it() {
    let cache = Cache::builder()
        .clock(clock())
        .route(Route::prefix("/live").bypass())
        .build()
        .unwrap();
    let (origin, log) = origin(|_, _| ok("max-age=60", "answer"));
    let failing = Arc::new(AtomicBool::new(false));
    let readied = Arc::new(AtomicUsize::new(0));
    let pending = Arc::new(AtomicUsize::new(0));
    let svc = CacheLayer::new(cache.clone()).layer(Flaky {
        failing: failing.clone(),
        pending: pending.clone(),
        readied: readied.clone(),
        origin,
    });

    let first = svc.clone().oneshot(get(FAST)).await.unwrap();
    assert_eq!(cache_status(&first), MISS_STORED);
    failing.store(true, Ordering::SeqCst);
    let before = readied.load(Ordering::SeqCst);

    // A fresh hit never asks the inner service.
    let hit = svc.clone().oneshot(get(FAST)).await.unwrap();
    assert_eq!(cache_status(&hit), HIT);
    assert_eq!(readied.load(Ordering::SeqCst), before);

    // Failing at once, and failing after waiting for readiness.
    for wait in [0, 3] {
        for req in [
            get(SLOW),
            get("http://example.com/live/x"),
            request(Method::OPTIONS, FAST, &[]),
            request(Method::POST, FAST, &[]),
        ] {
            let what = format!("{} {} after {wait} pending", req.method(), req.uri());
            pending.store(wait, Ordering::SeqCst);
            let err = svc.clone().oneshot(req).await.expect_err(&what);
            assert_eq!(err, OriginError("overloaded"), "{what}");
            assert_eq!(pending.load(Ordering::SeqCst), 0, "{what}");
        }
    }
    assert_eq!(log.calls(), 1);
}
