//! The origin is shielded: a hung or slow origin costs each client at most
//! the upstream timeout, a slow origin is called once however many clients
//! wait, a broken body is never stored, and clients asking for revalidation
//! share one revalidation per key.
//!
//! Time is tokio's paused clock (the origin "sleeps" for 20 s in no time)
//! and a `ManualClock` for freshness; nothing sleeps for real.

mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use tower_tiered_cache::{Cache, CacheBuilder, ManualClock, RequestCacheControl};

use support::*;

fn builder(clock: &ManualClock) -> CacheBuilder {
    Cache::builder().clock(clock.clone())
}

/// A cache on `clock` that gives up on the upstream after 2 s.
fn timed_out_after_2s(clock: &ManualClock) -> Cache {
    builder(clock)
        .upstream_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

const MISS_STORED: &str = "tower-tiered-cache; fwd=uri-miss; fwd-status=200; stored";
const HIT: &str = "tower-tiered-cache; hit; detail=l1";
const TIMED_OUT: &str = "tower-tiered-cache; fwd=uri-miss; detail=upstream-timeout";

/// A body that sends `data` and then never another frame (a stalled
/// origin), or ends (`ends`), whatever its length says.
struct Stalling {
    data: Option<Bytes>,
    ends: bool,
}

impl Body for Stalling {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        match this.data.take() {
            Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
            None if this.ends => Poll::Ready(None),
            None => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn stalling(cc: &str, data: &'static str, ends: bool, length: Option<usize>) -> Response<Stalling> {
    let mut resp = Response::new(Stalling {
        data: Some(Bytes::from_static(data.as_bytes())),
        ends,
    });
    resp.headers_mut()
        .insert("cache-control", cc.parse().unwrap());
    if let Some(n) = length {
        resp.headers_mut().insert("content-length", n.into());
    }
    resp
}

// ---------------------------------------------------------------------------
// Upstream timeout
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn an_origin_that_never_answers_gets_a_504_within_the_upstream_timeout() {
    let clock = clock();
    let cache = timed_out_after_2s(&clock);
    let (origin, log) = origin_fn(|_, _| async {
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(ok("max-age=60", "never"))
    });
    let svc = cached(&cache, origin);
    let start = tokio::time::Instant::now();
    let r = send(&svc, get(URL)).await;
    let took = start.elapsed();
    assert_eq!(r.status(), 504);
    assert_eq!(cache_status(&r), TIMED_OUT);
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(body(r).await, "");
    assert_eq!(log.calls(), 1);
    let st = cache.stats();
    assert_eq!(st.upstream_timeouts, 1);
    assert_eq!(st.upstream_errors, 1);
    assert_eq!(st.stores, 0);
    assert_eq!(st.in_flight, 0);
    // The request is counted once, as a miss.
    assert_eq!((st.requests, st.misses, st.hits), (1, 1, 0), "{st:?}");
}

/// A cache (upstream timeout 2 s) holding an entry 10 s past its
/// `max-age=10, stale-if-error=600`, whose origin never answers again.
async fn stale_entry_whose_revalidation_hangs() -> (Cache, Svc, Log) {
    let clock = clock();
    let cache = timed_out_after_2s(&clock);
    let (origin, log) = origin_fn(|n, _| async move {
        if n > 0 {
            std::future::pending::<()>().await;
        }
        Ok::<_, Infallible>(ok("max-age=10, stale-if-error=600", "first"))
    });
    let svc = cached(&cache, origin);
    assert_eq!(cache_status(&send(&svc, get(URL)).await), MISS_STORED);
    clock.advance(secs(20));
    (cache, svc, log)
}

/// The answer of a revalidation given up on: the stale "first", 10 s
/// past its freshness, by stale-if-error, after the origin's second call.
async fn stale_first_after_one_more_call<B>(r: Response<B>, log: &Log)
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    assert_eq!(r.status(), 200);
    assert_eq!(
        cache_status(&r),
        "tower-tiered-cache; fwd=stale; ttl=-10; detail=stale-if-error"
    );
    assert_eq!(body(r).await, "first");
    assert_eq!(log.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hung_revalidation_serves_the_stale_entry_the_origin_allows() {
    let (cache, svc, log) = stale_entry_whose_revalidation_hangs().await;
    let r = send(&svc, get(URL)).await;
    stale_first_after_one_more_call(r, &log).await;
    let st = cache.stats();
    assert_eq!(st.upstream_timeouts, 1);
    // Counted once: a stale-if-error answer.
    assert_eq!(st.stale_if_error, 1, "{st:?}");
    assert_eq!((st.requests, st.misses), (2, 1), "{st:?}");
}

/// The waiters of a revalidation that hangs past the upstream timeout get
/// the same stale-if-error answer as their leader: one origin call for all.
#[tokio::test(start_paused = true)]
async fn waiters_of_a_hung_revalidation_get_its_stale_if_error_answer() {
    let (cache, svc, log) = stale_entry_whose_revalidation_hangs().await;
    let requests: Vec<_> = (0..3)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let r = send(&svc, get(URL)).await;
                let cs = cache_status(&r);
                (r.status().as_u16(), cs, body(r).await)
            })
        })
        .collect();
    for r in requests {
        let (status, cs, got) = r.await.unwrap();
        assert_eq!((status, &got[..]), (200, &b"first"[..]), "{cs}");
        assert!(cs.contains("detail=stale-if-error"), "{cs}");
    }
    assert_eq!(log.calls(), 2, "the waiters called the origin again");
    assert_eq!(cache.stats().upstream_timeouts, 1);
}

/// A revalidation whose answer arrives but whose body stalls: the request
/// is counted as a miss when the answer's head arrives, and the
/// stale-if-error answer it gets after the upstream timeout is not counted
/// again (one outcome per request).
#[tokio::test(start_paused = true)]
async fn a_revalidation_whose_body_stalls_counts_the_request_once() {
    let clock = clock();
    let cache = timed_out_after_2s(&clock);
    let (origin, log) = origin_fn(|n, _| async move {
        Ok::<_, Infallible>(if n == 0 {
            stalling("max-age=10, stale-if-error=600", "first", true, None)
        } else {
            stalling("max-age=10", "half of it", false, Some(100))
        })
    });
    let svc = cached(&cache, origin);
    assert_eq!(cache_status(&send(&svc, get(URL)).await), MISS_STORED);
    clock.advance(secs(20));
    let r = send(&svc, get(URL)).await;
    stale_first_after_one_more_call(r, &log).await;
    let st = cache.stats();
    assert_eq!((st.upstream_timeouts, st.stale_if_error), (1, 1), "{st:?}");
    // Both requests counted once, as misses: not the second as stale too.
    assert_eq!((st.requests, st.misses, st.stale), (2, 2, 0), "{st:?}");
}

/// A leader that may not be served the stale entry (it sends
/// `Authorization`, and the entry was not stored for authorized requests:
/// RFC 9111 §3.5) gets a 504 when its revalidation hangs. Its anonymous
/// waiter, which could be served that entry, is not answered from the
/// leader's failure: it forms the next flight, and the origin, answering
/// again by then, gives it a fresh response rather than the stale copy.
#[tokio::test(start_paused = true)]
async fn a_waiter_is_not_served_stale_on_a_failure_its_leader_was_not_served_stale_on() {
    let clock = clock();
    let cache = timed_out_after_2s(&clock);
    let (origin, log) = origin_fn(|n, _| async move {
        match n {
            0 => Ok::<_, Infallible>(ok("max-age=10, stale-if-error=600", "first")),
            1 => std::future::pending().await,
            _ => Ok(ok("max-age=10", "second")),
        }
    });
    let svc = cached(&cache, origin);
    assert_eq!(cache_status(&send(&svc, get(URL)).await), MISS_STORED);
    clock.advance(secs(20));
    let start = tokio::time::Instant::now();
    let ask = |headers: &'static [(&'static str, &'static str)]| {
        let svc = svc.clone();
        tokio::spawn(async move {
            let r = send(&svc, get_with(URL, headers)).await;
            let cs = cache_status(&r);
            (r.status().as_u16(), cs, body(r).await, start.elapsed())
        })
    };
    // On this current-thread runtime the leader reaches the origin before
    // the waiter looks up the key.
    let leader = ask(&[("authorization", "Bearer leader")]);
    let waiter = ask(&[]);
    let (status, cs, _, took) = leader.await.unwrap();
    assert_eq!(status, 504, "{cs}");
    assert_eq!(took, Duration::from_secs(2));
    let (status, cs, got, took) = waiter.await.unwrap();
    assert_eq!((status, &got[..]), (200, &b"second"[..]), "{cs}");
    assert!(cs.contains("fwd=stale; fwd-status=200; stored"), "{cs}");
    assert_eq!(took, Duration::from_secs(2), "it waited on the leader");
    assert_eq!(log.calls(), 3);
    assert!(log.request(1).header("authorization").is_some());
    assert_eq!(log.request(2).header("authorization"), None);
    let st = cache.stats();
    assert_eq!((st.upstream_timeouts, st.stale_if_error), (1, 0), "{st:?}");
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stalls_is_never_stored() {
    let clock = clock();
    let cache = timed_out_after_2s(&clock);
    let (origin, log) = origin_fn(|_, _| async {
        Ok::<_, Infallible>(stalling("max-age=60", "half of it", false, Some(100)))
    });
    let svc = cached(&cache, origin);
    let start = tokio::time::Instant::now();
    let r = send(&svc, get(URL)).await;
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(r.status(), 504);
    assert_eq!(cache_status(&r), TIMED_OUT);
    let again = send(&svc, get(URL)).await;
    assert_eq!(again.status(), 504, "nothing was stored");
    assert_eq!(log.calls(), 2);
    let st = cache.stats();
    assert_eq!(st.stores, 0);
    assert_eq!(st.l1_entries, 0);
    assert_eq!(st.upstream_timeouts, 2);
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_never_stored() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = origin_fn(|_, _| async {
        Ok::<_, Infallible>(stalling("max-age=60", "only ten b", true, Some(100)))
    });
    let svc = cached(&cache, origin);
    for _ in 0..2 {
        let r = send(&svc, get(URL)).await;
        assert_eq!(
            cache_status(&r),
            "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=incomplete"
        );
        // Never passed on as if complete: the client gets a 502.
        assert_eq!(r.status(), 502);
    }
    assert_eq!(log.calls(), 2);
    assert_eq!(cache.stats().stores, 0);
}

/// Through a real server and client: the truncated response never reaches
/// the client as a complete 200 (and hyper does not trip over it).
#[tokio::test]
async fn a_truncated_body_ends_the_clients_response_with_an_error() {
    use axum::routing::get as route;
    use axum::Router;
    use http_body_util::BodyExt;
    let cache = Cache::builder().build().unwrap();
    let app = Router::new()
        .route(
            "/cut",
            route(|| async { stalling("max-age=60", "only ten b", true, Some(100)) }),
        )
        .layer(tower_tiered_cache::CacheLayer::new(cache.clone()));
    let server = loopback::serve(app).await;
    let client = loopback::client();
    let resp = client
        .request(
            http::Request::get(format!("http://{}/cut", server.addr))
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .expect("the head arrives");
    assert_eq!(resp.status(), 502);
    let read = resp.into_body().collect().await.expect("a whole 502");
    assert!(read.to_bytes().is_empty());
    assert_eq!(cache.stats().stores, 0);
}

// ---------------------------------------------------------------------------
// Coalescing never releases a herd
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn three_hundred_clients_on_a_20_second_origin_make_one_call() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap(); // upstream timeout 30 s
    let (origin, log) = origin_fn(|_, _| async {
        tokio::time::sleep(Duration::from_secs(20)).await;
        Ok::<_, Infallible>(ok("max-age=60", "slow answer"))
    });
    let svc = cached(&cache, origin);
    let tasks: Vec<_> = (0..300)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let r = send(&svc, get(URL)).await;
                (r.status(), body(r).await)
            })
        })
        .collect();
    for t in tasks {
        let (status, b) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(b, "slow answer");
    }
    assert_eq!(log.calls(), 1);
    let st = cache.stats();
    assert_eq!(st.coalesced, 299);
    assert_eq!(st.coalesce_timeouts, 0);
}

/// When the origin outlives the upstream timeout, the leader gets a 504 and
/// so do its waiters, without one more origin call each.
#[tokio::test(start_paused = true)]
async fn waiters_on_a_timed_out_leader_do_not_each_call_the_origin() {
    let clock = clock();
    let cache = builder(&clock)
        .upstream_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let (origin, log) = origin_fn(|_, _| async {
        tokio::time::sleep(Duration::from_secs(20)).await;
        Ok::<_, Infallible>(ok("max-age=60", "too late"))
    });
    let svc = cached(&cache, origin);
    let start = tokio::time::Instant::now();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { send(&svc, get(URL)).await.status() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 504);
    }
    // A failed flight is taken over by one waiter at a time, a bounded
    // number of times: never one call per waiter.
    assert!(log.calls() <= 4, "{} origin calls", log.calls());
    assert!(start.elapsed() <= Duration::from_secs(5 * 4 + 1));
}

#[tokio::test]
async fn a_cancelled_leader_hands_over_to_exactly_one_waiter() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let gate = Gate::new(); // the first call never returns
    let g = gate.clone();
    let (origin, log) = origin_fn(move |n, _| {
        let g = g.clone();
        async move {
            if n == 0 {
                g.pass().await;
            }
            Ok::<_, Infallible>(ok("max-age=60", &format!("v{}", n + 1)))
        }
    });
    let svc = cached(&cache, origin);
    let svc2 = svc.clone();
    let leader = tokio::spawn(async move { send(&svc2, get(URL)).await });
    assert!(eventually(|| log.calls() == 1).await);
    let waiters: Vec<_> = (0..50)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { body(send(&svc, get(URL)).await).await })
        })
        .collect();
    settle().await;
    assert_eq!(log.calls(), 1);
    leader.abort();
    for w in waiters {
        assert_eq!(w.await.unwrap(), "v2");
    }
    assert_eq!(
        log.calls(),
        2,
        "one waiter took over, the rest waited on it"
    );
}

// ---------------------------------------------------------------------------
// Clients cannot multiply load on the origin
// ---------------------------------------------------------------------------

/// Clients asking for revalidation (`no-cache`, `max-age=0`, `Pragma`,
/// `min-fresh`) while one is in flight wait for the next one, which starts
/// after they arrived and answers them all: never one call per request.
#[tokio::test]
async fn revalidation_requests_collapse_into_one_in_flight_per_key() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let gate = Gate::new();
    let g = gate.clone();
    let (origin, log) = origin_fn(move |n, _| {
        let g = g.clone();
        async move {
            if n > 0 {
                g.pass().await;
            }
            let resp = ok("max-age=600", &format!("v{n}"));
            Ok::<_, Infallible>(with_header(resp, "etag", &format!("\"{n}\"")))
        }
    });
    let svc = cached(&cache, origin);
    assert_eq!(cache_status(&send(&svc, get(URL)).await), MISS_STORED);
    clock.advance(secs(1)); // `max-age=0` asks for younger than this

    let asks: [&[(&str, &str)]; 4] = [
        &[("cache-control", "no-cache")],
        &[("pragma", "no-cache")],
        &[("cache-control", "max-age=0")],
        &[("cache-control", "min-fresh=6000")],
    ];
    // The first revalidation is held at the origin...
    let first = {
        let svc = svc.clone();
        tokio::spawn(async move { body(send(&svc, get_with(URL, asks[0])).await).await })
    };
    assert!(eventually(|| log.calls() == 2).await);
    // ... while 31 more clients ask for one.
    let rest: Vec<_> = (0..31)
        .map(|i| {
            let svc = svc.clone();
            let h = asks[i % 4];
            tokio::spawn(async move {
                let r = send(&svc, get_with(URL, h)).await;
                let status = cache_status(&r);
                let b = body(r).await;
                if h[0].1 == "max-age=0" {
                    // The first revalidation's answer is age 0: young
                    // enough for `max-age=0` (RFC 9111 §5.2.1.1).
                    assert!(b == "v1" || b == "v2", "{h:?}: {status}");
                    return Bytes::from_static(b"v2");
                }
                assert_eq!(b, "v2", "{h:?}: {status}");
                b
            })
        })
        .collect();
    settle().await;
    assert_eq!(log.calls(), 2, "they wait: no call of their own");
    gate.let_through(1);
    assert_eq!(first.await.unwrap(), "v1");
    // One of the waiters leads the next revalidation, which started after
    // they all arrived; it answers every one of them.
    assert!(eventually(|| log.calls() == 3).await);
    settle().await;
    assert_eq!(log.calls(), 3);
    gate.let_through(1);
    for t in rest {
        assert_eq!(t.await.unwrap(), "v2");
    }
    assert_eq!(log.calls(), 3);
    // The stored entry is the newest answer.
    let r = send(&svc, get(URL)).await;
    assert_eq!(cache_status(&r), HIT);
    assert_eq!(body(r).await, "v2");
}

#[tokio::test]
async fn a_shared_cache_can_ignore_request_directives() {
    let clock = clock();
    let cache = builder(&clock)
        .request_cache_control(RequestCacheControl::Ignore)
        .build()
        .unwrap();
    let (shared_origin, log) = origin(|n, _| ok("max-age=600", &format!("v{n}")));
    let svc = cached(&cache, shared_origin);
    assert_eq!(cache_status(&send(&svc, get(URL)).await), MISS_STORED);
    for h in [
        ("cache-control", "no-cache"),
        ("pragma", "no-cache"),
        ("cache-control", "max-age=0"),
        ("cache-control", "no-store"),
    ] {
        let r = send(&svc, get_with(URL, &[h])).await;
        assert_eq!(cache_status(&r), HIT, "{h:?}");
        assert_eq!(body(r).await, "v0");
    }
    assert_eq!(log.calls(), 1);

    // Private caches honour them whatever the setting.
    let private = builder(&clock)
        .mode(tower_tiered_cache::CacheMode::Private)
        .request_cache_control(RequestCacheControl::Ignore)
        .build()
        .unwrap();
    let (origin, log) = origin(|n, _| ok("max-age=600", &format!("v{n}")));
    let svc = cached(&private, origin);
    send(&svc, get(URL)).await;
    let r = send(&svc, get_with(URL, &[("cache-control", "no-cache")])).await;
    assert_ne!(cache_status(&r), HIT);
    assert_eq!(log.calls(), 2);
}

#[test]
fn a_zero_upstream_timeout_is_refused() {
    let err = Cache::builder()
        .upstream_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "upstream_timeout");
    let err = Cache::builder()
        .coalesce_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "coalesce_timeout");
}
