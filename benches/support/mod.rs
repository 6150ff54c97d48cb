//! Helpers shared by the benches: `benches/hit_path.rs`, `benches/allocs.rs`,
//! `benches/l2.rs` and `bench-peers/benches/*.rs` (a separate crate, which
//! includes this file with `#[path = "../../benches/support/mod.rs"] mod
//! support;`), so it only uses crates both have: `bytes`, `criterion`,
//! `http`, `http-body`, `http-body-util`, `tokio`, `tower` and this crate.
//! The L2 benches' Redis-only helpers are in `redis_stats.rs` next to it.
//!
//! Not a bench target itself: Cargo only discovers `benches/*.rs` and
//! `benches/*/main.rs`.

// Every bench uses a different subset.
#![allow(dead_code)]

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::hint::black_box;
use std::marker::PhantomData;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup};
use http::header::{ACCEPT, ACCEPT_ENCODING, ACCEPT_LANGUAGE, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body_util::Full;
use tower::{service_fn, Service, ServiceExt};

/// The body's length: 1 KiB.
pub(crate) const BODY_LEN: usize = 1024;

/// The shared 1 KiB body buffer, deterministic bytes.
pub(crate) fn body_buffer() -> Bytes {
    let v: Vec<u8> = (0..BODY_LEN).map(|i| b'a' + (i % 26) as u8).collect();
    Bytes::from(v)
}

/// The same few typical request headers on every request.
pub(crate) fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static("bench-client/1.0"),
    );
    h.insert(ACCEPT, HeaderValue::from_static("application/json"));
    h.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip, br"));
    h.insert(ACCEPT_LANGUAGE, HeaderValue::from_static("en-GB,en;q=0.9"));
    h
}

/// A request prototype; `make` builds a fresh `GET` request from it, with a
/// `Q::default()` body (`()`, `Empty<Bytes>`).
#[derive(Clone)]
pub(crate) struct Proto<Q> {
    uri: Uri,
    headers: HeaderMap,
    body: PhantomData<fn() -> Q>,
}

impl<Q: Default> Proto<Q> {
    pub(crate) fn new(uri: &'static str) -> Self {
        Self {
            uri: Uri::from_static(uri),
            headers: request_headers(),
            body: PhantomData,
        }
    }

    pub(crate) fn make(&self) -> Request<Q> {
        let mut req = Request::new(Q::default());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }

    pub(crate) fn batch(&self, n: usize) -> Vec<Request<Q>> {
        (0..n).map(|_| self.make()).collect()
    }
}

/// The origin's response: the body (a `Bytes` clone of the shared buffer),
/// JSON, fresh for an hour.
#[inline]
pub(crate) fn origin_response(body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// What every origin of the benches is, whatever its request type `R`
/// (hitbox hands its upstream `Request<BufferedBody<_>>`): a service that
/// never fails and answers with a `Full<Bytes>` body, which can be cloned
/// and sent anywhere, its future too.
pub(crate) trait Origin<R>:
    Service<R, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<R, S> Origin<R> for S where
    S: Service<R, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// The origin: every response is `origin_response` of the shared buffer.
pub(crate) fn origin<R: Send + 'static>(buf: Bytes) -> impl Origin<R> {
    service_fn(move |_req: R| {
        let body = buf.clone();
        async move { Ok::<_, Infallible>(origin_response(body)) }
    })
}

/// [`origin`] that counts the calls that reach it in `calls` (`None`: no
/// counter, so that a bare side pays for no atomic).
pub(crate) fn counting_origin<R: Send + 'static>(
    buf: Bytes,
    calls: Option<Arc<AtomicUsize>>,
) -> impl Origin<R> {
    service_fn(move |_req: R| {
        if let Some(c) = &calls {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let body = buf.clone();
        async move { Ok::<_, Infallible>(origin_response(body)) }
    })
}

/// A current-thread tokio runtime with its I/O and time drivers.
pub(crate) fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A waker that does nothing: every future polled with it is expected to be
/// ready on its first poll.
pub(crate) struct NoopWake;

impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

/// A `NoopWake` waker.
pub(crate) fn noop_waker() -> Waker {
    Waker::from(Arc::new(NoopWake))
}

/// Polls `fut` once; `None` if it was not ready.
pub(crate) fn try_poll_once<F: Future>(fut: F, waker: &Waker) -> Option<F::Output> {
    let mut cx = Context::from_waker(waker);
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

/// Polls `fut` once; every future benched with it is ready on its first
/// poll.
pub(crate) fn poll_once<F: Future>(fut: F, waker: &Waker) -> F::Output {
    try_poll_once(fut, waker).expect("future not ready on first poll")
}

/// `ready()` + `call()`, each polled once.
pub(crate) fn call_once<S, Q, B, E>(svc: &mut S, req: Request<Q>, waker: &Waker) -> Response<B>
where
    S: Service<Request<Q>, Response = Response<B>, Error = E>,
    E: Debug,
{
    let svc = poll_once(svc.ready(), waker).expect("ready");
    poll_once(svc.call(req), waker).expect("call")
}

/// `ready()` + `call()`, each polled once; `None` if either was pending.
pub(crate) fn try_call_once<S, Q, B, E>(
    svc: &mut S,
    req: Request<Q>,
    waker: &Waker,
) -> Option<Response<B>>
where
    S: Service<Request<Q>, Response = Response<B>, Error = E>,
    E: Debug,
{
    let svc = try_poll_once(svc.ready(), waker)?.expect("ready");
    try_poll_once(svc.call(req), waker).map(|r| r.expect("call"))
}

/// Bench function `name` in `g`: `call_once` on `svc` with a fresh request
/// from `proto` per iteration, built outside the timed section
/// (`iter_batched`), the response dropped outside it.
pub(crate) fn bench_calls<S, Q, B, E>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    svc: &mut S,
    proto: &Proto<Q>,
    waker: &Waker,
) where
    Q: Default,
    S: Service<Request<Q>, Response = Response<B>, Error = E>,
    E: Debug,
{
    g.bench_function(name, |b| {
        b.iter_batched(
            || proto.make(),
            |req| black_box(call_once(svc, black_box(req), waker)),
            BatchSize::SmallInput,
        )
    });
}

/// The median of `v` (sorted in place).
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One interleaved round: `n` requests from `proto`, built before the clock
/// starts, each `call_once` on `svc`, the responses kept until the clock
/// stops and dropped after (as criterion's `iter_batched` does). Returns
/// nanoseconds per call.
pub(crate) fn round_ns<S, Q, B, E>(svc: &mut S, proto: &Proto<Q>, waker: &Waker, n: usize) -> f64
where
    Q: Default,
    S: Service<Request<Q>, Response = Response<B>, Error = E>,
    E: Debug,
{
    time_calls(proto.batch(n), |req| call_once(svc, req, waker))
}

/// Times `call` on each of `reqs` (built before the clock starts), the
/// results kept until the clock stops and dropped after (as criterion's
/// `iter_batched` does). Returns nanoseconds per call.
pub(crate) fn time_calls<Q, T>(reqs: Vec<Q>, mut call: impl FnMut(Q) -> T) -> f64 {
    let n = reqs.len();
    let mut out = Vec::with_capacity(n);
    let t = std::time::Instant::now();
    for req in reqs {
        out.push(call(req));
    }
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    drop(out);
    ns
}

/// The URI every hit bench asks for.
pub(crate) const HIT_URI: &str = "http://example.com/api/item?id=42";
/// A URI under the `/live` route that [`hit_and_pass`]'s cache bypasses.
pub(crate) const PASS_URI: &str = "http://example.com/live/item?id=42";

/// The sides of the hit and pass benches: the bare origin, and the origin
/// behind a `CacheLayer` (default builder plus a `/live` bypass route) whose
/// entry for [`HIT_URI`] is stored (a miss through `rt`, body read). Checks
/// that a call is a fresh L1 hit answered at once, with the whole body, and
/// that a [`PASS_URI`] call is a bypass.
#[allow(clippy::type_complexity)]
pub(crate) fn hit_and_pass(
    rt: &tokio::runtime::Runtime,
    waker: &Waker,
) -> (
    impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone,
    impl Service<
            Request<()>,
            Response = Response<tower_tiered_cache::CacheBody<Full<Bytes>>>,
            Error = Infallible,
        > + Clone,
    tower_tiered_cache::Cache,
) {
    use http_body::Body as _;
    use http_body_util::BodyExt;
    use tower::Layer;
    let buf = body_buffer();
    let cache = tower_tiered_cache::Cache::builder()
        .route(tower_tiered_cache::Route::prefix("/live").bypass())
        .build()
        .expect("cache");
    let bare = origin::<Request<()>>(buf.clone());
    let mut cached = tower_tiered_cache::CacheLayer::new(cache.clone())
        .layer(origin::<Request<()>>(buf.clone()));
    let (hit, pass) = (Proto::<()>::new(HIT_URI), Proto::<()>::new(PASS_URI));
    rt.block_on(async {
        let resp = cached.clone().oneshot(hit.make()).await.expect("miss");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, buf);
    });
    let resp = call_once(&mut cached, hit.make(), waker);
    assert_eq!(
        resp.headers()["cache-status"],
        "tower-tiered-cache; hit; detail=l1"
    );
    assert_eq!(resp.body().size_hint().exact(), Some(BODY_LEN as u64));
    let resp = call_once(&mut cached, pass.make(), waker);
    assert_eq!(
        resp.headers()["cache-status"],
        "tower-tiered-cache; fwd=bypass"
    );
    (bare, cached, cache)
}
