//! tower-tiered-cache's fresh L1 hit side by side with peer tower caching
//! middlewares' cached hits, and the bare origin.
//!
//! Every side gets the same request (`GET http://example.com/api/item?id=42`
//! with four typical headers, body `Empty<Bytes>`) and the origin sends the
//! same 1 KiB body with `Cache-Control: max-age=3600`. Each side's entry is
//! stored first (one miss through the runtime), and before timing every
//! cached side is checked to serve from its cache: its own hit header where it
//! has one, and its origin called exactly once. The origin counts are checked
//! again after timing.
//!
//! Sides:
//!
//! - `bare`: the `tower::service_fn` origin alone;
//! - `tiered_l1_hit`: `tower_tiered_cache::CacheLayer`, default builder;
//! - `tower_http_cache`: `tower_http_cache::CacheLayer` over its
//!   `InMemoryBackend` (moka), default policy but TTL 3600 s (it does not
//!   read `max-age`; its default TTL of 60 s would expire mid-run);
//! - `hitbox_json` / `hitbox_bincode`: `hitbox_tower::Cache` over
//!   `hitbox_moka::MokaBackend` (default value format JSON, and bincode),
//!   request predicate `GET`, response predicate `200`, key method + path +
//!   query `id`, TTL 3600 s;
//! - `http_cache_moka`: `http_cache_tower::HttpCacheLayer` over
//!   `http_cache::MokaManager`, default options (RFC 7234 semantics through
//!   `http-cache-semantics`).
//!
//! Two groups:
//!
//! - `poll_once`: the sides whose hit future is ready on its first poll,
//!   polled once with a no-op waker (as in the main crate's
//!   `benches/hit_path.rs`); a side is admitted only if 10 000 probe calls
//!   all completed on the first poll;
//! - `runtime`: every side, each call driven by a current-thread tokio
//!   runtime's `block_on` (`ready().await` + `call().await`).
//!
//! Requests are built outside the timed section and responses are dropped
//! outside it; bodies are not collected. After the criterion groups an
//! interleaved run (rounds of the same number of calls on each side in turn,
//! median round per side) prints a ratio table: vs `bare` and vs
//! `tiered_l1_hit`.
//!
//! Run with `cargo bench --bench peers` from `bench-peers/`.

use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion};
use http::header::CACHE_CONTROL;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use tokio::runtime::Runtime;
use tower::{service_fn, Layer, Service, ServiceExt};

#[path = "../../benches/support/mod.rs"]
mod support;

use support::{
    bench_calls, body_buffer, call_once, median, noop_waker, origin_response, try_call_once,
    BODY_LEN,
};

const HIT_URI: &str = "http://example.com/api/item?id=42";
const PROBE_CALLS: usize = 10_000;
const ROUNDS: usize = 21;
const PER_ROUND: usize = 10_000;

type Req = Request<Empty<Bytes>>;

/// Requests with an empty body.
type Proto = support::Proto<Empty<Bytes>>;

/// The origin: every response is the same 1 KiB JSON-ish body, a `Bytes`
/// clone of the shared buffer, fresh for an hour. Generic over the request
/// type (hitbox hands its upstream `Request<BufferedBody<_>>`). `calls`
/// counts the calls that reach it (`None` on the bare side, so that it pays
/// for no atomic).
fn origin<R: Send + 'static>(
    buf: Bytes,
    calls: Option<Arc<AtomicUsize>>,
) -> impl Service<
    R,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static {
    service_fn(move |_req: R| {
        if let Some(c) = &calls {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let body = buf.clone();
        async move { Ok::<_, Infallible>(origin_response(body)) }
    })
}

/// `ready().await` + `call().await` in `rt.block_on`.
fn call_rt<S, B, E>(svc: &mut S, req: Req, rt: &Runtime) -> Response<B>
where
    S: Service<Req, Response = Response<B>, Error = E>,
    E: Debug,
{
    rt.block_on(async {
        let svc = svc.ready().await.expect("ready");
        svc.call(req).await.expect("call")
    })
}

/// One benched side, whatever its service type: the dynamic dispatch is
/// once per bench function or round, never per call.
trait Side {
    fn name(&self) -> &'static str;
    /// Calls that reached this side's origin.
    fn origin_calls(&self) -> usize;
    /// Store the entry (a miss through the runtime, body read to the end).
    fn warm(&mut self, proto: &Proto, rt: &Runtime, buf: &Bytes);
    /// One call through the runtime: is it a hit by the side's own header?
    fn check_hit(&mut self, proto: &Proto, rt: &Runtime);
    /// Whether `n` calls all completed on their first poll.
    fn probe_poll_once(&mut self, proto: &Proto, waker: &Waker, n: usize) -> bool;
    fn bench_poll(&mut self, g: &mut BenchmarkGroup<'_, WallTime>, proto: &Proto, waker: &Waker);
    fn bench_rt(&mut self, g: &mut BenchmarkGroup<'_, WallTime>, proto: &Proto, rt: &Runtime);
    /// ns per call over `reqs`, polled once.
    fn round_poll(&mut self, reqs: Vec<Req>, waker: &Waker) -> f64;
    /// ns per call over `reqs`, each in `block_on`.
    fn round_rt(&mut self, reqs: Vec<Req>, rt: &Runtime) -> f64;
}

struct Svc<S> {
    name: &'static str,
    svc: S,
    calls: Option<Arc<AtomicUsize>>,
    /// The side's own hit marker (header name, value), if it has one.
    hit_header: Option<(&'static str, &'static str)>,
}

impl<S, B, E> Side for Svc<S>
where
    S: Service<Req, Response = Response<B>, Error = E>,
    B: http_body::Body,
    B::Error: Debug,
    E: Debug,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn origin_calls(&self) -> usize {
        self.calls.as_ref().map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn warm(&mut self, proto: &Proto, rt: &Runtime, buf: &Bytes) {
        let resp = call_rt(&mut self.svc, proto.make(), rt);
        assert_eq!(resp.status(), StatusCode::OK, "{}", self.name);
        let body = rt
            .block_on(resp.into_body().collect())
            .expect("body")
            .to_bytes();
        assert_eq!(&body, buf, "{}", self.name);
    }

    fn check_hit(&mut self, proto: &Proto, rt: &Runtime) {
        let resp = call_rt(&mut self.svc, proto.make(), rt);
        assert_eq!(resp.status(), StatusCode::OK, "{}", self.name);
        if let Some((name, value)) = self.hit_header {
            assert_eq!(
                resp.headers().get(name).map(|v| v.to_str().unwrap()),
                Some(value),
                "{}: hit header",
                self.name
            );
        }
        assert_eq!(
            resp.headers()
                .get(CACHE_CONTROL)
                .map(|v| v.to_str().unwrap()),
            Some("max-age=3600"),
            "{}: stored headers",
            self.name
        );
        let body = rt
            .block_on(resp.into_body().collect())
            .expect("body")
            .to_bytes();
        assert_eq!(body.len(), BODY_LEN, "{}", self.name);
    }

    fn probe_poll_once(&mut self, proto: &Proto, waker: &Waker, n: usize) -> bool {
        let reqs = proto.batch(n);
        for req in reqs {
            match try_call_once(&mut self.svc, req, waker) {
                Some(resp) => drop(resp),
                None => return false,
            }
        }
        true
    }

    fn bench_poll(&mut self, g: &mut BenchmarkGroup<'_, WallTime>, proto: &Proto, waker: &Waker) {
        bench_calls(g, self.name, &mut self.svc, proto, waker);
    }

    fn bench_rt(&mut self, g: &mut BenchmarkGroup<'_, WallTime>, proto: &Proto, rt: &Runtime) {
        let svc = &mut self.svc;
        g.bench_function(self.name, |b| {
            b.iter_batched(
                || proto.make(),
                |req| black_box(call_rt(svc, black_box(req), rt)),
                BatchSize::SmallInput,
            )
        });
    }

    fn round_poll(&mut self, reqs: Vec<Req>, waker: &Waker) -> f64 {
        let n = reqs.len();
        let mut out = Vec::with_capacity(n);
        let t = Instant::now();
        for req in reqs {
            out.push(call_once(&mut self.svc, req, waker));
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        drop(out);
        ns
    }

    fn round_rt(&mut self, reqs: Vec<Req>, rt: &Runtime) -> f64 {
        let n = reqs.len();
        let mut out = Vec::with_capacity(n);
        let t = Instant::now();
        for req in reqs {
            out.push(call_rt(&mut self.svc, req, rt));
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        drop(out);
        ns
    }
}

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

fn side<S>(
    name: &'static str,
    svc: S,
    calls: Option<Arc<AtomicUsize>>,
    hit_header: Option<(&'static str, &'static str)>,
) -> Svc<S> {
    Svc {
        name,
        svc,
        calls,
        hit_header,
    }
}

/// The sides, bare first and ours second (the ratio table's baselines).
fn build_sides(buf: &Bytes) -> Vec<Box<dyn Side>> {
    let mut sides: Vec<Box<dyn Side>> = Vec::new();

    sides.push(Box::new(side(
        "bare",
        origin::<Req>(buf.clone(), None),
        None,
        None,
    )));

    let c = counter();
    let cache = tower_tiered_cache::Cache::builder().build().expect("cache");
    let svc = tower_tiered_cache::CacheLayer::new(cache)
        .layer(origin::<Req>(buf.clone(), Some(c.clone())));
    sides.push(Box::new(side(
        "tiered_l1_hit",
        svc,
        Some(c),
        Some(("cache-status", "tower-tiered-cache; hit; detail=l1")),
    )));

    // tower-http-cache: its TTL is fixed by configuration (default 60 s):
    // it never reads `max-age`, only `no-store`/`no-cache`/`private`. Set to
    // the response's hour, or the entry expires mid-run and the origin is
    // called again. Key = path and query (default).
    let c = counter();
    let layer = tower_http_cache::layer::CacheLayer::builder(
        tower_http_cache::backend::memory::InMemoryBackend::new(10_000),
    )
    .ttl(Duration::from_secs(3600))
    .build();
    let svc = layer.layer(origin::<Req>(buf.clone(), Some(c.clone())));
    sides.push(Box::new(side("tower_http_cache", svc, Some(c), None)));

    // hitbox: GET + 200, key method + path + query `id`, TTL an hour.
    // Default value format of the moka backend is JSON.
    fn hitbox_config() -> impl hitbox::CacheConfig<
        hitbox_http::CacheableHttpRequest<Empty<Bytes>>,
        hitbox_http::CacheableHttpResponse<Full<Bytes>>,
    > + Clone
           + Send
           + Sync
           + 'static {
        use hitbox_http::extractors::path::PathExtractor as _;
        use hitbox_http::extractors::query::QueryExtractor as _;
        hitbox::Config::builder()
            .request_predicate(
                hitbox_http::predicates::request::Method::new(http::Method::GET).expect("method"),
            )
            .response_predicate(hitbox_http::predicates::response::StatusCode::new(
                http::StatusCode::OK,
            ))
            .extractor(
                hitbox_http::extractors::Method::new()
                    .path("/api/item")
                    .query("id".to_string()),
            )
            .policy(
                hitbox::policy::PolicyConfig::builder()
                    .ttl(Duration::from_secs(3600))
                    .build(),
            )
            .build()
    }
    let c = counter();
    let layer = hitbox_tower::Cache::builder()
        .backend(
            hitbox_moka::MokaBackend::builder()
                .max_entries(10_000)
                .build(),
        )
        .config(hitbox_config())
        .build();
    let svc = layer.layer(origin(buf.clone(), Some(c.clone())));
    sides.push(Box::new(side(
        "hitbox_json",
        svc,
        Some(c),
        Some(("x-cache-status", "HIT")),
    )));

    let c = counter();
    let layer = hitbox_tower::Cache::builder()
        .backend(
            hitbox_moka::MokaBackend::builder()
                .max_entries(10_000)
                .value_format(hitbox_backend::format::BincodeFormat)
                .build(),
        )
        .config(hitbox_config())
        .build();
    let svc = layer.layer(origin(buf.clone(), Some(c.clone())));
    sides.push(Box::new(side(
        "hitbox_bincode",
        svc,
        Some(c),
        Some(("x-cache-status", "HIT")),
    )));

    // http-cache: default options, in-memory moka manager.
    let c = counter();
    let layer = http_cache_tower::HttpCacheLayer::new(http_cache::MokaManager::default());
    let svc = layer.layer(origin::<Req>(buf.clone(), Some(c.clone())));
    sides.push(Box::new(side(
        "http_cache_moka",
        svc,
        Some(c),
        Some(("x-cache", "HIT")),
    )));

    sides
}

/// Interleaved rounds over `idx` sides; returns the median ns per call of
/// each, in `idx` order.
fn interleaved(
    sides: &mut [Box<dyn Side>],
    idx: &[usize],
    proto: &Proto,
    mut round: impl FnMut(&mut dyn Side, Vec<Req>) -> f64,
) -> Vec<f64> {
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(ROUNDS); idx.len()];
    for _ in 0..ROUNDS {
        for (k, &i) in idx.iter().enumerate() {
            let reqs = proto.batch(PER_ROUND);
            times[k].push(round(sides[i].as_mut(), reqs));
        }
    }
    times.iter_mut().map(|t| median(t)).collect()
}

fn print_table(group: &str, sides: &[Box<dyn Side>], idx: &[usize], med: &[f64]) {
    let bare = med[0];
    let ours = med[1];
    println!();
    println!(
        "interleaved, group `{group}` (median of {ROUNDS} rounds of {PER_ROUND} calls per side):"
    );
    println!(
        "  {:<18} {:>12} {:>10} {:>10}",
        "side", "ns/call", "x bare", "x ours"
    );
    for (k, &i) in idx.iter().enumerate() {
        println!(
            "  {:<18} {:>12.1} {:>10.2} {:>10.2}",
            sides[i].name(),
            med[k],
            med[k] / bare,
            med[k] / ours
        );
    }
}

fn peers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _enter = rt.enter();
    let waker = noop_waker();
    let buf = body_buffer();
    let hit = Proto::new(HIT_URI);

    let mut sides = build_sides(&buf);
    for s in sides.iter_mut() {
        s.warm(&hit, &rt, &buf);
    }
    for s in sides.iter_mut().skip(1) {
        s.check_hit(&hit, &rt);
        s.check_hit(&hit, &rt);
        assert_eq!(s.origin_calls(), 1, "{}: origin called again", s.name());
    }

    // Which sides are ready on the first poll (bare and ours must be).
    let mut poll_idx = Vec::new();
    for (i, s) in sides.iter_mut().enumerate() {
        let ok = s.probe_poll_once(&hit, &waker, PROBE_CALLS);
        println!(
            "{}: {}",
            s.name(),
            if ok {
                "ready on first poll (poll_once and runtime groups)"
            } else {
                "NOT ready on first poll (runtime group only)"
            }
        );
        if ok {
            poll_idx.push(i);
        } else {
            assert!(i >= 2, "bare and tiered_l1_hit must be ready on first poll");
        }
    }
    for s in sides.iter().skip(1) {
        assert_eq!(s.origin_calls(), 1, "{}: origin called again", s.name());
    }
    let all_idx: Vec<usize> = (0..sides.len()).collect();

    let mut g = c.benchmark_group("poll_once");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for &i in &poll_idx {
        sides[i].bench_poll(&mut g, &hit, &waker);
    }
    g.finish();

    let mut g = c.benchmark_group("runtime");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for &i in &all_idx {
        sides[i].bench_rt(&mut g, &hit, &rt);
    }
    g.finish();

    let med_poll = interleaved(&mut sides, &poll_idx, &hit, |s, reqs| {
        s.round_poll(reqs, &waker)
    });
    let med_rt = interleaved(&mut sides, &all_idx, &hit, |s, reqs| s.round_rt(reqs, &rt));

    // Still served from cache after everything above.
    for s in sides.iter().skip(1) {
        assert_eq!(s.origin_calls(), 1, "{}: origin called again", s.name());
    }
    print_table("poll_once", &sides, &poll_idx, &med_poll);
    print_table("runtime", &sides, &all_idx, &med_rt);
    println!();
}

criterion_group!(benches, peers);
criterion_main!(benches);
