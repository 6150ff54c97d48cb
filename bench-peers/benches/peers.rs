//! tower-tiered-cache's fresh L1 hit side by side with peer tower caching
//! middlewares' cached hits, and the bare origin; then the same sides on a
//! request none of them serves from its store, under contention from two OS
//! threads, and their heap allocations per call.
//!
//! Every side gets the same request (`GET http://example.com/api/item?id=42`
//! with four typical headers, body `Empty<Bytes>`) and the origin sends the
//! same 1 KiB body with `Cache-Control: max-age=3600`. Each side's entry is
//! stored first (one miss through the runtime, then the runtime's spawned
//! tasks run to the end), and before timing every cached side is checked to
//! serve from its cache: its own hit header where it has one, and its origin
//! called exactly once. The origin counts are checked again after every timed
//! section (criterion's calls are counted in its untimed setup).
//!
//! Sides:
//!
//! - `bare`: the `tower::service_fn` origin alone;
//! - `tiered_l1_hit`: `tower_tiered_cache::CacheLayer`, default builder plus
//!   a `.bypass()` route for `/live` (as in `benches/hit_path.rs`);
//! - `tower_http_cache`: `tower_http_cache::CacheLayer` over its
//!   `InMemoryBackend` (moka), default policy but TTL 3600 s (it does not
//!   read `max-age`; its default TTL of 60 s would expire mid-run);
//! - `hitbox_json` / `hitbox_bincode`: `hitbox_tower::Cache` over
//!   `hitbox_moka::MokaBackend` (default value format JSON, and bincode),
//!   request predicate `GET`, response predicate `200`, key method + path +
//!   query `id`, TTL 3600 s;
//! - `http_cache_moka`: `http_cache_tower::HttpCacheLayer` over
//!   `http_cache::MokaManager`, default options (RFC 7234 semantics through
//!   `http-cache-semantics`);
//! - `http_cache_server`: `http_cache_tower_server::ServerCacheLayer` over
//!   `http_cache::MokaManager`, default options, `QueryKeyer` (its default
//!   key, method + path, drops the query).
//!
//! Parts, in the order they run:
//!
//! 1. Hit, criterion groups `poll_once` (the sides whose hit future is ready
//!    on its first poll, polled once with a no-op waker, as in
//!    `benches/hit_path.rs`; admitted only if 10 000 probe calls all
//!    completed on the first poll) and `runtime` (every side, each call in a
//!    current-thread tokio runtime's `block_on`), then an interleaved run
//!    (rounds of the same number of calls on each side in turn, median round
//!    per side) that prints the ratios vs `bare` and vs `tiered_l1_hit`.
//! 2. Heap allocations and bytes per hit (poll-once calls), counted by
//!    `stats_alloc` only inside the counted region (see [`GatedAlloc`]).
//! 3. Contention: 1 and 2 OS threads, each with its own clone of the side's
//!    service (the store is shared), calling it in a poll-once loop on the
//!    hot key, started together by a barrier; median of interleaved rounds.
//! 4. Pass: `POST` to the same URI on every side (and, for ours only, a `GET`
//!    to the `.bypass()` route), each next to `bare` on the same request:
//!    criterion groups `pass_poll_once` and `pass_runtime`, allocations, and
//!    an interleaved ratio run. Runs last: a `POST` invalidates the stored
//!    `GET` in ours and in http-cache (RFC 9111 §4.4). A side is admitted only
//!    if every checked call reached its origin.
//! 5. Whether the `POST`s invalidated each side's stored `GET`: one more
//!    `GET` per side, printed.
//!
//! Requests are built outside the timed section and, except in the
//! contention loop, responses are dropped outside it; bodies are not
//! collected.
//!
//! Run with `cargo bench --bench peers` from `bench-peers/`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Debug;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkGroup, BenchmarkId, Criterion,
};
use http::header::CACHE_CONTROL;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use stats_alloc::{Region, Stats, INSTRUMENTED_SYSTEM};
use tokio::runtime::{Handle, Runtime};
use tower::{Layer, Service, ServiceExt};

#[path = "../../benches/support/mod.rs"]
mod support;

use support::{
    body_buffer, call_once, counting_origin, current_thread_runtime, median, noop_waker,
    time_calls, try_call_once, BODY_LEN,
};

const HIT_URI: &str = "http://example.com/api/item?id=42";
/// Under ours' `.bypass()` route (`/live`); a miss on every peer.
const BYPASS_URI: &str = "http://example.com/live/item?id=42";
const PROBE_CALLS: usize = 10_000;
/// Pass calls through the runtime, spawned tasks run after each, that must
/// all reach the origin before a side is admitted to the pass groups.
const PASS_CHECK_CALLS: usize = 3;
const ROUNDS: usize = 21;
const PER_ROUND: usize = 10_000;
/// Calls counted per side and request for allocations.
const ALLOC_CALLS: usize = 10_000;
/// Untimed calls before counting allocations (thread-locals, lazy tables).
const ALLOC_WARM_CALLS: usize = 100;
const CONTENTION_THREADS: [usize; 2] = [1, 2];
const CONTENTION_ROUNDS: usize = 9;
/// Calls per thread per contention round: at most this many…
const CONTENTION_MAX_CALLS: usize = 200_000;
/// … and at least this many…
const CONTENTION_MIN_CALLS: usize = 1_000;
/// … else as many as fill this much time at the side's single-thread rate.
const CONTENTION_ROUND_TARGET: Duration = Duration::from_millis(120);

/// Counts heap allocations only while [`COUNTING`] is set: then through
/// `stats_alloc`'s `INSTRUMENTED_SYSTEM`, else straight to `System`.
///
/// An always-counting allocator (as in `benches/hit_path.rs`) adds four
/// atomic read-modify-writes on one shared cache line to every allocation and
/// free: a few ns each on one thread, far more when two threads allocate at
/// once. That would tax every side by its allocation count in the timed
/// groups and dominate the contention part; the gate costs one relaxed load.
/// (`unsafe` only to implement `GlobalAlloc`; this crate is not bound by the
/// main crate's `unsafe_code = "forbid"`.)
struct GatedAlloc;

/// Whether [`GatedAlloc`] counts.
static COUNTING: AtomicBool = AtomicBool::new(false);

// SAFETY: every method forwards to `System`, directly or through
// `StatsAlloc<System>`, which forwards to `System` too; memory from either
// path may be freed by the other.
unsafe impl GlobalAlloc for GatedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            unsafe { INSTRUMENTED_SYSTEM.alloc(layout) }
        } else {
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            unsafe { INSTRUMENTED_SYSTEM.dealloc(ptr, layout) }
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            unsafe { INSTRUMENTED_SYSTEM.alloc_zeroed(layout) }
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            unsafe { INSTRUMENTED_SYSTEM.realloc(ptr, layout, new_size) }
        } else {
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}

#[global_allocator]
static GLOBAL: GatedAlloc = GatedAlloc;

/// The allocator statistics' change over `f`, counted on this thread (no
/// other thread of this bench runs meanwhile).
fn count_allocs(f: impl FnOnce()) -> Stats {
    COUNTING.store(true, Ordering::SeqCst);
    let region = Region::new(&INSTRUMENTED_SYSTEM);
    f();
    let change = region.change();
    COUNTING.store(false, Ordering::SeqCst);
    change
}

type Req = Request<Empty<Bytes>>;

/// Requests with an empty body.
type Proto = support::Proto<Empty<Bytes>>;

/// What a call sends: the shared request prototype (URI and headers) with a
/// method. `label` names it in bench ids and tables.
struct Spec {
    label: &'static str,
    method: Method,
    proto: Proto,
}

impl Spec {
    fn new(label: &'static str, method: Method, uri: &'static str) -> Self {
        Self {
            label,
            method,
            proto: Proto::new(uri),
        }
    }

    /// A fresh request (the prototype's `GET`, its method replaced).
    fn make(&self) -> Req {
        let mut req = self.proto.make();
        *req.method_mut() = self.method.clone();
        req
    }

    fn batch(&self, n: usize) -> Vec<Req> {
        (0..n).map(|_| self.make()).collect()
    }
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

/// Criterion bench function `id`: `call` on a fresh request from `spec`,
/// built (and counted) in the untimed setup, one per timed call; returns
/// the calls made.
fn bench_counted<T>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    spec: &Spec,
    mut call: impl FnMut(Req) -> T,
) -> usize {
    let mut made = 0;
    g.bench_function(id, |b| {
        b.iter_batched(
            || {
                made += 1;
                spec.make()
            },
            |req| black_box(call(black_box(req))),
            BatchSize::SmallInput,
        )
    });
    made
}

/// `resp`'s body read to the end in `rt.block_on`.
fn body_bytes<B>(rt: &Runtime, resp: Response<B>) -> Bytes
where
    B: http_body::Body,
    B::Error: Debug,
{
    rt.block_on(resp.into_body().collect())
        .expect("body")
        .to_bytes()
}

/// Runs the tasks the sides spawned until none is left (http-cache-tower-
/// server stores a miss from a spawned task, which a `block_on` whose future
/// completes on its first poll never runs). Returns how many are left after
/// 1 000 yields (none expected).
fn settle(rt: &Runtime) -> usize {
    for _ in 0..1_000 {
        if rt.metrics().num_alive_tasks() == 0 {
            return 0;
        }
        rt.block_on(tokio::task::yield_now());
    }
    rt.metrics().num_alive_tasks()
}

/// Polls `fut` until it is ready, yielding the thread between polls (a
/// no-op waker never wakes it: the poll is simply retried); adds one to
/// `pending` if the first poll was not ready.
fn poll_spin<F: Future>(fut: F, cx: &mut Context<'_>, pending: &mut usize) -> F::Output {
    let mut fut = pin!(fut);
    let mut first = true;
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return out;
        }
        if first {
            *pending += 1;
            first = false;
        }
        std::thread::yield_now();
    }
}

/// `ready()` + `call()` with [`poll_spin`]: the contention loop's call, which
/// must not give up if another thread holds a lock the future waits on.
fn call_spin<S, B, E>(
    svc: &mut S,
    req: Req,
    cx: &mut Context<'_>,
    pending: &mut usize,
) -> Response<B>
where
    S: Service<Req, Response = Response<B>, Error = E>,
    E: Debug,
{
    let svc = poll_spin(svc.ready(), cx, pending).expect("ready");
    poll_spin(svc.call(req), cx, pending).expect("call")
}

/// Heap allocations (incl. reallocations) and bytes allocated per call.
#[derive(Clone, Copy)]
struct Allocs {
    count: f64,
    bytes: f64,
}

/// One contention round of one side: wall time from the first thread's
/// start to the last thread's end, and how many futures were not ready on
/// their first poll (summed over threads).
struct Contended {
    wall: Duration,
    pending: usize,
}

/// How a timed call is made: polled once with a no-op waker (the sides
/// whose futures are ready on their first poll), or in the runtime's
/// `block_on`.
#[derive(Clone, Copy)]
enum Mode<'a> {
    PollOnce(&'a Waker),
    Runtime(&'a Runtime),
}

impl Mode<'_> {
    /// The name of its criterion groups (after their prefix) and tables.
    fn group(self) -> &'static str {
        match self {
            Mode::PollOnce(_) => "poll_once",
            Mode::Runtime(_) => "runtime",
        }
    }
}

/// One benched side, whatever its service type: the dynamic dispatch is
/// once per bench function or round, never per call.
trait Side {
    fn name(&self) -> &'static str;
    /// Calls that reached this side's origin (`None` for `bare`, which has
    /// no counter: every call is an origin call).
    fn origin_calls(&self) -> Option<usize>;
    /// Store the entry (a miss through the runtime, body read to the end,
    /// spawned tasks run).
    fn warm(&mut self, spec: &Spec, rt: &Runtime, buf: &Bytes);
    /// One call through the runtime: is it a hit by the side's own header?
    fn check_hit(&mut self, spec: &Spec, rt: &Runtime);
    /// One call through the runtime, body read, spawned tasks run after it:
    /// its status and `x-cache`-style marker, if any.
    fn call_settled(&mut self, spec: &Spec, rt: &Runtime) -> (StatusCode, Option<String>);
    /// Whether `n` calls all completed on their first poll.
    fn probe_poll_once(&mut self, spec: &Spec, waker: &Waker, n: usize) -> bool;
    /// Criterion bench function `id`, each call made as `mode` says;
    /// returns the calls made.
    fn bench(
        &mut self,
        g: &mut BenchmarkGroup<'_, WallTime>,
        id: BenchmarkId,
        spec: &Spec,
        mode: Mode<'_>,
    ) -> usize;
    /// ns per call over `reqs`, each made as `mode` says.
    fn round(&mut self, reqs: Vec<Req>, mode: Mode<'_>) -> f64;
    /// Allocations per call over `n` poll-once calls (after
    /// `ALLOC_WARM_CALLS` uncounted ones); requests are built and responses
    /// dropped outside the count.
    fn allocs(&mut self, spec: &Spec, waker: &Waker, n: usize) -> Allocs;
    /// `threads` OS threads, each with its own clone of the service and
    /// `per_thread` prebuilt requests, released together, each calling in a
    /// [`call_spin`] loop (responses dropped in the loop).
    fn contend(&self, spec: &Spec, threads: usize, per_thread: usize, handle: &Handle)
        -> Contended;
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
    S: Service<Req, Response = Response<B>, Error = E> + Clone + Send,
    B: http_body::Body,
    B::Error: Debug,
    E: Debug,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn origin_calls(&self) -> Option<usize> {
        self.calls.as_ref().map(|c| c.load(Ordering::Relaxed))
    }

    fn warm(&mut self, spec: &Spec, rt: &Runtime, buf: &Bytes) {
        let resp = call_rt(&mut self.svc, spec.make(), rt);
        assert_eq!(resp.status(), StatusCode::OK, "{}", self.name);
        let body = body_bytes(rt, resp);
        assert_eq!(&body, buf, "{}", self.name);
        assert_eq!(settle(rt), 0, "{}: spawned tasks left", self.name);
    }

    fn check_hit(&mut self, spec: &Spec, rt: &Runtime) {
        let resp = call_rt(&mut self.svc, spec.make(), rt);
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
        let body = body_bytes(rt, resp);
        assert_eq!(body.len(), BODY_LEN, "{}", self.name);
    }

    fn call_settled(&mut self, spec: &Spec, rt: &Runtime) -> (StatusCode, Option<String>) {
        let resp = call_rt(&mut self.svc, spec.make(), rt);
        let status = resp.status();
        let marker = self.hit_header.and_then(|(name, _)| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        });
        let body = body_bytes(rt, resp);
        assert_eq!(body.len(), BODY_LEN, "{}", self.name);
        assert_eq!(settle(rt), 0, "{}: spawned tasks left", self.name);
        (status, marker)
    }

    fn probe_poll_once(&mut self, spec: &Spec, waker: &Waker, n: usize) -> bool {
        let reqs = spec.batch(n);
        for req in reqs {
            match try_call_once(&mut self.svc, req, waker) {
                Some(resp) => drop(resp),
                None => return false,
            }
        }
        true
    }

    fn bench(
        &mut self,
        g: &mut BenchmarkGroup<'_, WallTime>,
        id: BenchmarkId,
        spec: &Spec,
        mode: Mode<'_>,
    ) -> usize {
        let svc = &mut self.svc;
        match mode {
            Mode::PollOnce(waker) => bench_counted(g, id, spec, |req| call_once(svc, req, waker)),
            Mode::Runtime(rt) => bench_counted(g, id, spec, |req| call_rt(svc, req, rt)),
        }
    }

    fn round(&mut self, reqs: Vec<Req>, mode: Mode<'_>) -> f64 {
        let svc = &mut self.svc;
        match mode {
            Mode::PollOnce(waker) => time_calls(reqs, |req| call_once(svc, req, waker)),
            Mode::Runtime(rt) => time_calls(reqs, |req| call_rt(svc, req, rt)),
        }
    }

    fn allocs(&mut self, spec: &Spec, waker: &Waker, n: usize) -> Allocs {
        for _ in 0..ALLOC_WARM_CALLS {
            drop(call_once(&mut self.svc, spec.make(), waker));
        }
        let reqs = spec.batch(n);
        let mut out = Vec::with_capacity(n);
        let svc = &mut self.svc;
        let change = count_allocs(|| {
            for req in reqs {
                out.push(call_once(svc, req, waker));
            }
        });
        drop(out);
        Allocs {
            count: (change.allocations + change.reallocations) as f64 / n as f64,
            bytes: change.bytes_allocated as f64 / n as f64,
        }
    }

    fn contend(
        &self,
        spec: &Spec,
        threads: usize,
        per_thread: usize,
        handle: &Handle,
    ) -> Contended {
        let barrier = Barrier::new(threads);
        let runs: Vec<(Instant, Instant, usize)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    let mut svc = self.svc.clone();
                    let barrier = &barrier;
                    scope.spawn(move || {
                        let _rt = handle.enter();
                        let reqs = spec.batch(per_thread);
                        let waker = noop_waker();
                        let mut cx = Context::from_waker(&waker);
                        let mut pending = 0;
                        barrier.wait();
                        let start = Instant::now();
                        for req in reqs {
                            drop(black_box(call_spin(&mut svc, req, &mut cx, &mut pending)));
                        }
                        (start, Instant::now(), pending)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("contention thread"))
                .collect()
        });
        let start = runs.iter().map(|r| r.0).min().expect("threads");
        let end = runs.iter().map(|r| r.1).max().expect("threads");
        Contended {
            wall: end - start,
            pending: runs.iter().map(|r| r.2).sum(),
        }
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

/// The sides, bare first and ours second (the ratio tables' baselines).
fn build_sides(buf: &Bytes) -> Vec<Box<dyn Side>> {
    let mut sides: Vec<Box<dyn Side>> = Vec::new();

    sides.push(Box::new(side(
        "bare",
        counting_origin::<Req>(buf.clone(), None),
        None,
        None,
    )));

    // The `/live` bypass route is for the pass part (as in
    // `benches/hit_path.rs`); the hit's URI matches no route.
    let c = counter();
    let cache = tower_tiered_cache::Cache::builder()
        .route(tower_tiered_cache::Route::prefix("/live").bypass())
        .build()
        .expect("cache");
    let svc = tower_tiered_cache::CacheLayer::new(cache)
        .layer(counting_origin::<Req>(buf.clone(), Some(c.clone())));
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
    let svc = layer.layer(counting_origin::<Req>(buf.clone(), Some(c.clone())));
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
    let svc = layer.layer(counting_origin(buf.clone(), Some(c.clone())));
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
    let svc = layer.layer(counting_origin(buf.clone(), Some(c.clone())));
    sides.push(Box::new(side(
        "hitbox_bincode",
        svc,
        Some(c),
        Some(("x-cache-status", "HIT")),
    )));

    // http-cache: default options, in-memory moka manager.
    let c = counter();
    let layer = http_cache_tower::HttpCacheLayer::new(http_cache::MokaManager::default());
    let svc = layer.layer(counting_origin::<Req>(buf.clone(), Some(c.clone())));
    sides.push(Box::new(side(
        "http_cache_moka",
        svc,
        Some(c),
        Some(("x-cache", "HIT")),
    )));

    // http-cache-tower-server: default options (max TTL an hour, `x-cache`
    // marker on). Its default keyer is method + path, which would serve
    // `?id=43` from `?id=42`'s entry; `QueryKeyer` keys on method + URI like
    // the other sides. It stores a miss from a spawned task.
    let c = counter();
    let layer = http_cache_tower_server::ServerCacheLayer::with_keyer(
        http_cache::MokaManager::default(),
        http_cache_tower_server::QueryKeyer,
    );
    let svc = layer.layer(counting_origin::<Req>(buf.clone(), Some(c.clone())));
    sides.push(Box::new(side(
        "http_cache_server",
        svc,
        Some(c),
        Some(("x-cache", "HIT")),
    )));

    sides
}

/// Interleaved rounds over `rows` (side index, request): each round runs
/// `PER_ROUND` calls of every row in turn. Returns the median ns per call of
/// each row, in `rows` order.
fn interleaved(sides: &mut [Box<dyn Side>], rows: &[(usize, &Spec)], mode: Mode<'_>) -> Vec<f64> {
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(ROUNDS); rows.len()];
    for _ in 0..ROUNDS {
        for (k, &(i, spec)) in rows.iter().enumerate() {
            let reqs = spec.batch(PER_ROUND);
            times[k].push(sides[i].round(reqs, mode));
        }
    }
    times.iter_mut().map(|t| median(t)).collect()
}

/// `rows` paired with `sides` indices in `idx`, all on `spec`.
fn rows_of<'a>(idx: &[usize], spec: &'a Spec) -> Vec<(usize, &'a Spec)> {
    idx.iter().map(|&i| (i, spec)).collect()
}

/// The ratio of row `k`'s `values` to the value of the row of side `base`
/// on the same request, if there is one.
fn ratio_to(rows: &[(usize, &Spec)], values: &[f64], k: usize, base: usize) -> Option<f64> {
    let label = rows[k].1.label;
    rows.iter()
        .position(|&(i, s)| i == base && s.label == label)
        .map(|b| values[k] / values[b])
}

/// `x` with two decimals, or `-`.
fn fmt_ratio(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))
}

/// Ratio table of an interleaved run: each row vs `bare` and vs
/// `tiered_l1_hit` on the same request.
fn print_table(title: &str, sides: &[Box<dyn Side>], rows: &[(usize, &Spec)], med: &[f64]) {
    println!();
    println!("{title} (median of {ROUNDS} rounds of {PER_ROUND} calls per row):");
    println!(
        "  {:<18} {:<9} {:>12} {:>10} {:>10}",
        "side", "request", "ns/call", "x bare", "x ours"
    );
    for (k, &(i, spec)) in rows.iter().enumerate() {
        println!(
            "  {:<18} {:<9} {:>12.1} {:>10} {:>10}",
            sides[i].name(),
            spec.label,
            med[k],
            fmt_ratio(ratio_to(rows, med, k, 0)),
            fmt_ratio(ratio_to(rows, med, k, 1))
        );
    }
}

/// `s`'s origin has been called once only (its entry's miss): every other
/// call so far was served from its store.
fn assert_origin_called_once(s: &dyn Side) {
    assert_eq!(
        s.origin_calls(),
        Some(1),
        "{}: origin called again",
        s.name()
    );
}

/// Every side's origin count.
fn origin_counts(sides: &[Box<dyn Side>]) -> Vec<Option<usize>> {
    sides.iter().map(|s| s.origin_calls()).collect()
}

/// Every side with a counter has had exactly `grown[i]` origin calls since
/// `before` (0 on the hit: still served from its store).
fn assert_origin_grew(
    sides: &[Box<dyn Side>],
    before: &[Option<usize>],
    grown: &[usize],
    what: &str,
) {
    for (i, s) in sides.iter().enumerate() {
        if let (Some(b), Some(now)) = (before[i], s.origin_calls()) {
            assert_eq!(
                now - b,
                grown[i],
                "{}: origin calls during {what} (expected {})",
                s.name(),
                grown[i]
            );
        }
    }
}

/// Criterion groups `{prefix}poll_once` over `poll_rows` and
/// `{prefix}runtime` over `rt_rows`; asserts afterwards that the origins
/// were called exactly once per call on a pass (`pass`) and never on a hit.
#[allow(clippy::too_many_arguments)]
fn criterion_groups(
    c: &mut Criterion,
    prefix: &str,
    sides: &mut [Box<dyn Side>],
    poll_rows: &[(usize, &Spec)],
    rt_rows: &[(usize, &Spec)],
    pass: bool,
    waker: &Waker,
    rt: &Runtime,
) {
    // A bench function id: the side's name alone on the hit, side and
    // request on a pass.
    let id = |name: &str, spec: &Spec| {
        if pass {
            BenchmarkId::new(name, spec.label)
        } else {
            BenchmarkId::from_parameter(name)
        }
    };
    let before = origin_counts(sides);
    let mut made = vec![0; sides.len()];
    for (mode, rows) in [
        (Mode::PollOnce(waker), poll_rows),
        (Mode::Runtime(rt), rt_rows),
    ] {
        let mut g = c.benchmark_group(format!("{prefix}{}", mode.group()));
        g.measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(500));
        for &(i, spec) in rows {
            let name = sides[i].name();
            made[i] += sides[i].bench(&mut g, id(name, spec), spec, mode);
        }
        g.finish();
    }
    if !pass {
        made.fill(0);
    }
    assert_origin_grew(sides, &before, &made, &format!("{prefix}criterion groups"));
}

/// Runs the interleaved rounds of `poll_rows` (polled once) and `rt_rows`
/// (in `block_on`), checks the origin counts (never called on the hit, once
/// per call on a pass) and prints both tables. Returns the poll-once
/// medians.
fn interleaved_tables(
    what: &str,
    sides: &mut [Box<dyn Side>],
    poll_rows: &[(usize, &Spec)],
    rt_rows: &[(usize, &Spec)],
    pass: bool,
    waker: &Waker,
    rt: &Runtime,
) -> Vec<f64> {
    let before = origin_counts(sides);
    let modes = [
        (Mode::PollOnce(waker), poll_rows),
        (Mode::Runtime(rt), rt_rows),
    ];
    let medians = modes.map(|(mode, rows)| interleaved(sides, rows, mode));
    let mut grown = vec![0; sides.len()];
    if pass {
        for &(i, _) in poll_rows.iter().chain(rt_rows) {
            grown[i] += ROUNDS * PER_ROUND;
        }
    }
    assert_origin_grew(sides, &before, &grown, &format!("interleaved {what}"));
    for ((mode, rows), med) in modes.iter().zip(&medians) {
        let title = format!("interleaved {what}, group `{}`", mode.group());
        print_table(&title, sides, rows, med);
    }
    let [med_poll, _] = medians;
    med_poll
}

/// Allocations per call of every row, printed as a table (and checked: no
/// origin call on the hit, one per call on a pass).
fn alloc_table(
    title: &str,
    sides: &mut [Box<dyn Side>],
    rows: &[(usize, &Spec)],
    pass: bool,
    waker: &Waker,
) {
    let before = origin_counts(sides);
    let mut grown = vec![0; sides.len()];
    let allocs: Vec<Allocs> = rows
        .iter()
        .map(|&(i, spec)| {
            if pass {
                grown[i] += ALLOC_WARM_CALLS + ALLOC_CALLS;
            }
            sides[i].allocs(spec, waker, ALLOC_CALLS)
        })
        .collect();
    assert_origin_grew(sides, &before, &grown, title);
    println!();
    println!("{title} (over {ALLOC_CALLS} poll-once calls per row; requests built and responses dropped outside the count):");
    println!(
        "  {:<18} {:<9} {:>12} {:>12} {:>10}",
        "side", "request", "allocs/call", "bytes/call", "x ours"
    );
    let counts: Vec<f64> = allocs.iter().map(|a| a.count).collect();
    for (k, &(i, spec)) in rows.iter().enumerate() {
        println!(
            "  {:<18} {:<9} {:>12.2} {:>12.0} {:>10}",
            sides[i].name(),
            spec.label,
            allocs[k].count,
            allocs[k].bytes,
            fmt_ratio(ratio_to(rows, &counts, k, 1))
        );
    }
}

/// Contention on the hot key: for each round, each thread count, each side
/// in `idx` in turn; prints per side and thread count the median round's
/// total calls/s and ns per call per thread, vs `bare` and ours at the same
/// thread count. `single_ns[k]` (the side's single-thread ns per call)
/// sizes its rounds.
fn contention(
    sides: &[Box<dyn Side>],
    idx: &[usize],
    single_ns: &[f64],
    spec: &Spec,
    handle: &Handle,
) {
    let per_thread: Vec<usize> = single_ns
        .iter()
        .map(|&ns| {
            let fit = CONTENTION_ROUND_TARGET.as_nanos() as f64 / ns;
            (fit as usize).clamp(CONTENTION_MIN_CALLS, CONTENTION_MAX_CALLS)
        })
        .collect();
    let before = origin_counts(sides);
    let t = CONTENTION_THREADS.len();
    let mut walls = vec![vec![Vec::with_capacity(CONTENTION_ROUNDS); idx.len()]; t];
    let mut pending = vec![vec![0usize; idx.len()]; t];
    for _ in 0..CONTENTION_ROUNDS {
        for (ti, &threads) in CONTENTION_THREADS.iter().enumerate() {
            for (k, &i) in idx.iter().enumerate() {
                let r = sides[i].contend(spec, threads, per_thread[k], handle);
                walls[ti][k].push(r.wall.as_nanos() as f64);
                pending[ti][k] += r.pending;
            }
        }
    }
    assert_origin_grew(sides, &before, &vec![0; sides.len()], "contention");
    // ns per call per thread, calls/s total, per thread count and side.
    let per_call: Vec<Vec<f64>> = walls
        .iter_mut()
        .map(|w| {
            w.iter_mut()
                .zip(&per_thread)
                .map(|(w, &n)| median(w) / n as f64)
                .collect()
        })
        .collect();
    println!();
    println!(
        "contention on the hot key (OS threads, each with its own clone of the service, \
         poll-once loop; median of {CONTENTION_ROUNDS} rounds):"
    );
    println!(
        "  {:<18} {:>3} {:>10} {:>14} {:>12} {:>8} {:>8} {:>8} {:>10}",
        "side",
        "thr",
        "calls/thr",
        "total calls/s",
        "ns/call/thr",
        "x bare",
        "x ours",
        "x 1-thr",
        "not ready"
    );
    for (ti, &threads) in CONTENTION_THREADS.iter().enumerate() {
        for (k, &i) in idx.iter().enumerate() {
            let ns = per_call[ti][k];
            let calls_s = threads as f64 * 1e9 / ns;
            let one = 1e9 / per_call[0][k];
            println!(
                "  {:<18} {:>3} {:>10} {:>14.0} {:>12.1} {:>8.2} {:>8.2} {:>8.2} {:>10}",
                sides[i].name(),
                threads,
                per_thread[k],
                calls_s,
                ns,
                ns / per_call[ti][0],
                ns / per_call[ti][1],
                calls_s / one,
                pending[ti][k]
            );
        }
    }
    println!(
        "  (x bare / x ours: ns per call per thread over theirs at the same thread count; \
         x 1-thr: total calls/s over the side's own 1-thread figure; not ready: futures \
         not ready on their first poll, summed over all rounds)"
    );
}

fn peers(c: &mut Criterion) {
    let started = Instant::now();
    let rt = current_thread_runtime();
    let _enter = rt.enter();
    let waker = noop_waker();
    let buf = body_buffer();
    let hit = Spec::new("get", Method::GET, HIT_URI);
    let post = Spec::new("post", Method::POST, HIT_URI);
    let live = Spec::new("get_live", Method::GET, BYPASS_URI);

    let mut sides = build_sides(&buf);
    for s in sides.iter_mut() {
        s.warm(&hit, &rt, &buf);
    }
    for s in sides.iter_mut().skip(1) {
        s.check_hit(&hit, &rt);
        s.check_hit(&hit, &rt);
        assert_origin_called_once(s.as_ref());
    }

    // Which sides are ready on the first poll (bare and ours must be).
    let mut poll_idx = Vec::new();
    for (i, s) in sides.iter_mut().enumerate() {
        let ok = s.probe_poll_once(&hit, &waker, PROBE_CALLS);
        println!(
            "{}: {}",
            s.name(),
            if ok {
                "hit ready on first poll (poll_once and runtime groups)"
            } else {
                "hit NOT ready on first poll (runtime group only)"
            }
        );
        if ok {
            poll_idx.push(i);
        } else {
            assert!(i >= 2, "bare and tiered_l1_hit must be ready on first poll");
        }
    }
    for s in sides.iter().skip(1) {
        assert_origin_called_once(s.as_ref());
    }
    let all_idx: Vec<usize> = (0..sides.len()).collect();

    // 1. Hit.
    let hit_poll = rows_of(&poll_idx, &hit);
    let hit_rt = rows_of(&all_idx, &hit);
    criterion_groups(c, "", &mut sides, &hit_poll, &hit_rt, false, &waker, &rt);
    let med_poll = interleaved_tables("hit", &mut sides, &hit_poll, &hit_rt, false, &waker, &rt);

    // 2. Allocations per hit.
    alloc_table(
        "heap allocations per hit",
        &mut sides,
        &hit_poll,
        false,
        &waker,
    );

    // 3. Contention on the hit (sides ready on the first poll).
    contention(&sides, &poll_idx, &med_poll, &hit, rt.handle());

    // 4. Pass. Each side's pass must reach its origin every time, through
    // the runtime with spawned tasks run after each call (a side that
    // stores the response and serves the next call from it is no pass),
    // and poll once.
    let mut pass_rows: Vec<(usize, &Spec)> = vec![(0, &post), (0, &live), (1, &post), (1, &live)];
    pass_rows.extend((2..sides.len()).map(|i| (i, &post)));
    let mut pass_poll = Vec::new();
    let mut pass_rt = Vec::new();
    println!();
    for &(i, spec) in &pass_rows {
        let s = sides[i].as_mut();
        let before = s.origin_calls();
        let mut markers = Vec::new();
        for _ in 0..PASS_CHECK_CALLS {
            let (status, marker) = s.call_settled(spec, &rt);
            assert_eq!(status, StatusCode::OK, "{}: {}", s.name(), spec.label);
            markers.extend(marker);
        }
        let reached = s.origin_calls().map(|n| n - before.unwrap());
        if reached.is_some_and(|n| n != PASS_CHECK_CALLS) {
            println!(
                "{} {}: NOT a pass: origin reached {} of {PASS_CHECK_CALLS} times \
                 (markers {markers:?}); left out of the pass part",
                s.name(),
                spec.label,
                reached.unwrap()
            );
            continue;
        }
        pass_rt.push((i, spec));
        let before = s.origin_calls();
        let ok = s.probe_poll_once(spec, &waker, PROBE_CALLS);
        let reached = s.origin_calls().map(|n| n - before.unwrap());
        assert!(
            reached.is_none_or(|n| n == PROBE_CALLS) || !ok,
            "{} {}: origin reached {reached:?} of {PROBE_CALLS}",
            s.name(),
            spec.label
        );
        assert_eq!(settle(&rt), 0, "{}: spawned tasks left", s.name());
        println!(
            "{} {}: pass reaches the origin every time; {}",
            s.name(),
            spec.label,
            if ok {
                "ready on first poll"
            } else {
                "NOT ready on first poll (runtime group only)"
            }
        );
        if ok {
            pass_poll.push((i, spec));
        }
    }
    alloc_table(
        "heap allocations per pass",
        &mut sides,
        &pass_poll,
        true,
        &waker,
    );
    criterion_groups(
        c, "pass_", &mut sides, &pass_poll, &pass_rt, true, &waker, &rt,
    );
    interleaved_tables("pass", &mut sides, &pass_poll, &pass_rt, true, &waker, &rt);

    // 5. After all those POSTs, is the stored GET still served? (RFC 9111
    // §4.4: a successful unsafe request invalidates its target URI.)
    println!();
    for s in sides.iter_mut().skip(1) {
        let before = s.origin_calls();
        let (_, marker) = s.call_settled(&hit, &rt);
        println!(
            "{}: GET after the POSTs {} (marker {marker:?})",
            s.name(),
            if s.origin_calls() == before {
                "served from the store: the POSTs did not invalidate it"
            } else {
                "reached the origin: the POSTs invalidated the stored GET"
            }
        );
    }
    println!();
    println!(
        "peers bench: {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
}

criterion_group!(benches, peers);
criterion_main!(benches);
