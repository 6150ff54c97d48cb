//! The cost of the synchronous fresh-hit path, side by side with the bare
//! inner service it saves a call to.
//!
//! Group `hit_path`, one run, the same 1 KiB body and request on every side:
//!
//! - `bare`: a `tower::service_fn` origin alone (`ready` + `call`);
//! - `l1_hit`: the same origin behind `CacheLayer`, the entry stored
//!   (`Cache-Control: max-age=3600`), so every call is a fresh L1 hit;
//! - `pass_bare`: the origin alone, called with the pass-through request;
//! - `pass`: the pass-through request (a `.bypass()` route) behind the layer.
//!
//! Every future here is ready on its first poll, so they are polled once with
//! a no-op waker instead of going through a runtime: neither side pays for a
//! scheduler. Requests are built outside the timed section
//! (`iter_batched`) and responses are dropped outside it; bodies are not
//! collected on either side.
//!
//! Before the groups run, heap allocations per call are counted with a
//! counting global allocator wrapping `std::alloc::System` (`stats_alloc`:
//! the crate forbids `unsafe_code`, so the bench cannot implement
//! `GlobalAlloc` itself) over 10 000 calls of each kind.
//!
//! Run with `cargo bench --bench hit_path`.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{ACCEPT, ACCEPT_ENCODING, ACCEPT_LANGUAGE, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_tiered_cache::{Cache, CacheLayer, Route};

#[cfg(feature = "opentelemetry")]
#[path = "../examples/support/telemetry.rs"]
mod telemetry;

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const BODY_LEN: usize = 1024;
const HIT_URI: &str = "http://example.com/api/item?id=42";
const PASS_URI: &str = "http://example.com/live/item?id=42";
const ALLOC_CALLS: usize = 10_000;

/// The shared 1 KiB body buffer, deterministic bytes.
fn body_buffer() -> Bytes {
    let v: Vec<u8> = (0..BODY_LEN).map(|i| b'a' + (i % 26) as u8).collect();
    Bytes::from(v)
}

/// The same few typical request headers on every request.
fn request_headers() -> HeaderMap {
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

/// A request prototype; `make` builds a fresh request from it.
#[derive(Clone)]
struct Proto {
    uri: Uri,
    headers: HeaderMap,
}

impl Proto {
    fn new(uri: &'static str) -> Self {
        Self {
            uri: Uri::from_static(uri),
            headers: request_headers(),
        }
    }

    fn make(&self) -> Request<()> {
        let mut req = Request::new(());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// The origin: every response is the same 1 KiB JSON-ish body, a `Bytes`
/// clone of the shared buffer, fresh for an hour.
fn origin(
    buf: Bytes,
) -> impl Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
> + Clone
       + Send
       + 'static {
    service_fn(move |_req: Request<()>| {
        let body = buf.clone();
        async move {
            let mut resp = Response::new(Full::new(body));
            let h = resp.headers_mut();
            h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok::<_, Infallible>(resp)
        }
    })
}

struct NoopWake;

impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

/// Polls `fut` once; every future benched here is ready on its first poll.
fn poll_once<F: Future>(fut: F, waker: &Waker) -> F::Output {
    let mut cx = Context::from_waker(waker);
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("future not ready on first poll"),
    }
}

/// `ready().await` + `call()` + `.await`, each polled once.
fn call_once<S, B>(svc: &mut S, req: Request<()>, waker: &Waker) -> Response<B>
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    let svc = match poll_once(svc.ready(), waker) {
        Ok(s) => s,
        Err(e) => match e {},
    };
    match poll_once(svc.call(req), waker) {
        Ok(r) => r,
        Err(e) => match e {},
    }
}

/// Heap allocations (and bytes) per call, over `ALLOC_CALLS` calls. Requests
/// are built and responses dropped outside the counted region.
fn allocs_per_call<S, B>(svc: &mut S, proto: &Proto, waker: &Waker) -> (f64, f64)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    // Warm thread-locals and lazily built tables first.
    for _ in 0..100 {
        drop(call_once(svc, proto.make(), waker));
    }
    let reqs: Vec<_> = (0..ALLOC_CALLS).map(|_| proto.make()).collect();
    let mut out = Vec::with_capacity(ALLOC_CALLS);
    let region = Region::new(GLOBAL);
    for req in reqs {
        out.push(call_once(svc, req, waker));
    }
    let change = region.change();
    drop(out);
    let n = ALLOC_CALLS as f64;
    (
        (change.allocations + change.reallocations) as f64 / n,
        change.bytes_allocated as f64 / n,
    )
}

fn fmt_count(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round() as u64)
    } else {
        format!("{x:.2}")
    }
}

fn hit_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _enter = rt.enter();
    let waker = Waker::from(Arc::new(NoopWake));

    let buf = body_buffer();
    let hit = Proto::new(HIT_URI);
    let pass = Proto::new(PASS_URI);

    let cache = Cache::builder()
        .route(Route::prefix("/live").bypass())
        .build()
        .expect("cache");
    let mut bare = origin(buf.clone());
    let mut cached = CacheLayer::new(cache.clone()).layer(origin(buf.clone()));

    // Store the entry: a miss through the runtime, body read to the end.
    rt.block_on(async {
        let resp = cached.clone().oneshot(hit.make()).await.expect("miss");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, buf);
    });
    // Every later call must be a fresh L1 hit served at once, and the pass
    // request a bypass.
    let resp = call_once(&mut cached, hit.make(), &waker);
    assert_eq!(
        resp.headers()["cache-status"],
        "tower-tiered-cache; hit; detail=l1"
    );
    assert_eq!(resp.body().size_hint().exact(), Some(BODY_LEN as u64));
    let resp = call_once(&mut cached, pass.make(), &waker);
    assert_eq!(
        resp.headers()["cache-status"],
        "tower-tiered-cache; fwd=bypass"
    );

    let (a_bare, b_bare) = allocs_per_call(&mut bare, &hit, &waker);
    let (a_hit, b_hit) = allocs_per_call(&mut cached, &hit, &waker);
    let (a_pbare, b_pbare) = allocs_per_call(&mut bare, &pass, &waker);
    let (a_pass, b_pass) = allocs_per_call(&mut cached, &pass, &waker);
    println!(
        "allocations per L1 hit: {} (bare: {})",
        fmt_count(a_hit),
        fmt_count(a_bare)
    );
    println!(
        "allocations per pass: {} (pass_bare: {})",
        fmt_count(a_pass),
        fmt_count(a_pbare)
    );
    println!(
        "bytes allocated per call: l1_hit {b_hit:.0}, bare {b_bare:.0}, pass {b_pass:.0}, pass_bare {b_pbare:.0} \
         (over {ALLOC_CALLS} calls each)"
    );
    let stats = cache.stats();
    assert_eq!(stats.hits_l1, 1 + 100 + ALLOC_CALLS as u64);

    let mut g = c.benchmark_group("hit_path");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("bare", |b| {
        b.iter_batched(
            || hit.make(),
            |req| black_box(call_once(&mut bare, black_box(req), &waker)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("l1_hit", |b| {
        b.iter_batched(
            || hit.make(),
            |req| black_box(call_once(&mut cached, black_box(req), &waker)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("pass_bare", |b| {
        b.iter_batched(
            || pass.make(),
            |req| black_box(call_once(&mut bare, black_box(req), &waker)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("pass", |b| {
        b.iter_batched(
            || pass.make(),
            |req| black_box(call_once(&mut cached, black_box(req), &waker)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The cost of per-request instrumentation on the L1 hit: the same hit
/// with it off (`.observability(false)`: global counters only), on
/// (labels, latency histograms, rolling window, a `cache.lookup` span with
/// no subscriber installed), and on with OpenTelemetry metrics recorded
/// into an SDK meter provider (feature `opentelemetry`).
fn observe_overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _enter = rt.enter();
    let waker = Waker::from(Arc::new(NoopWake));
    let buf = body_buffer();
    let hit = Proto::new(HIT_URI);
    let stored = |builder: tower_tiered_cache::CacheBuilder| {
        let cache = builder.build().expect("cache");
        let mut svc = CacheLayer::new(cache.clone()).layer(origin(buf.clone()));
        rt.block_on(async {
            let resp = svc.clone().oneshot(hit.make()).await.expect("miss");
            resp.into_body().collect().await.expect("body");
        });
        let resp = call_once(&mut svc, hit.make(), &waker);
        assert_eq!(
            resp.headers()["cache-status"],
            "tower-tiered-cache; hit; detail=l1"
        );
        (cache, svc)
    };
    let (_plain_cache, mut plain) = stored(Cache::builder().observability(false));
    let (observed_cache, mut observed) = stored(Cache::builder());
    // A real SDK pipeline whose periodic export never comes round during
    // the bench (an hour), so only recording is measured.
    #[cfg(feature = "opentelemetry")]
    let (_tracer_provider, provider) =
        telemetry::otlp_providers("http://127.0.0.1:9", "bench", Duration::from_secs(3600))
            .expect("providers");
    #[cfg(feature = "opentelemetry")]
    let (_metered_cache, mut metered) = {
        use opentelemetry::metrics::MeterProvider as _;
        stored(Cache::builder().meter(provider.meter("bench")))
    };
    // Interleaved: rounds of the same number of hits on each side in turn,
    // so that the machine's load drifts equally over all of them; the
    // median round of each side is reported, and the ratios between them.
    {
        const ROUNDS: usize = 41;
        const PER_ROUND: usize = 20_000;
        let mut sides: Vec<(&str, Vec<f64>)> =
            vec![("uninstrumented", vec![]), ("instrumented", vec![])];
        #[cfg(feature = "opentelemetry")]
        sides.push(("instrumented+metrics", vec![]));
        for _ in 0..ROUNDS {
            for (name, times) in sides.iter_mut() {
                let reqs: Vec<_> = (0..PER_ROUND).map(|_| hit.make()).collect();
                let svc = match *name {
                    "uninstrumented" => &mut plain,
                    "instrumented" => &mut observed,
                    #[cfg(feature = "opentelemetry")]
                    _ => &mut metered,
                    #[cfg(not(feature = "opentelemetry"))]
                    _ => unreachable!(),
                };
                let mut out = Vec::with_capacity(PER_ROUND);
                let t = std::time::Instant::now();
                for req in reqs {
                    out.push(call_once(svc, req, &waker));
                }
                times.push(t.elapsed().as_nanos() as f64 / PER_ROUND as f64);
                drop(out);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let base = median(&mut sides[0].1);
        for (name, times) in sides.iter_mut() {
            let m = median(times);
            println!(
                "interleaved L1 hit, {name}: {m:.1} ns (median of {ROUNDS} rounds of {PER_ROUND}), {:.3}x uninstrumented",
                m / base
            );
        }
    }
    let mut g = c.benchmark_group("observe_overhead");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("l1_hit_uninstrumented", |b| {
        b.iter_batched(
            || hit.make(),
            |req| black_box(call_once(&mut plain, black_box(req), &waker)),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("l1_hit_instrumented", |b| {
        b.iter_batched(
            || hit.make(),
            |req| black_box(call_once(&mut observed, black_box(req), &waker)),
            BatchSize::SmallInput,
        )
    });
    #[cfg(feature = "opentelemetry")]
    g.bench_function("l1_hit_instrumented_metrics", |b| {
        b.iter_batched(
            || hit.make(),
            |req| black_box(call_once(&mut metered, black_box(req), &waker)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
    // The instrumented side really recorded: one label, latency counted.
    let stats = observed_cache.stats();
    assert_eq!(stats.hit_latency.count, stats.hits_l1);
    assert_eq!(stats.labels[0].label, "example.com");
}

criterion_group!(benches, hit_path, observe_overhead);
criterion_main!(benches);
