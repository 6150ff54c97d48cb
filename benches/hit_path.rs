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
use std::task::Waker;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{Layer, Service, ServiceExt};
use tower_tiered_cache::{Cache, CacheLayer, Route};

mod support;

use support::{
    bench_calls, body_buffer, call_once, median, noop_waker, origin, round_ns, BODY_LEN,
};

/// Requests with no body.
type Proto = support::Proto<()>;

#[cfg(feature = "opentelemetry")]
#[path = "../examples/support/telemetry.rs"]
mod telemetry;

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const HIT_URI: &str = "http://example.com/api/item?id=42";
const PASS_URI: &str = "http://example.com/live/item?id=42";
const ALLOC_CALLS: usize = 10_000;

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
    let waker = noop_waker();

    let buf = body_buffer();
    let hit = Proto::new(HIT_URI);
    let pass = Proto::new(PASS_URI);

    let cache = Cache::builder()
        .route(Route::prefix("/live").bypass())
        .build()
        .expect("cache");
    let mut bare = origin::<Request<()>>(buf.clone());
    let mut cached = CacheLayer::new(cache.clone()).layer(origin::<Request<()>>(buf.clone()));

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

    // Interleaved: rounds of the same number of calls on each side in turn,
    // so that the machine's load drifts equally over all of them; the
    // median round of each side gives the ratios the targets are about.
    {
        const ROUNDS: usize = 31;
        const PER_ROUND: usize = 20_000;
        let mut times = [vec![], vec![], vec![], vec![]];
        for _ in 0..ROUNDS {
            times[0].push(round_ns(&mut bare, &hit, &waker, PER_ROUND));
            times[1].push(round_ns(&mut cached, &hit, &waker, PER_ROUND));
            times[2].push(round_ns(&mut bare, &pass, &waker, PER_ROUND));
            times[3].push(round_ns(&mut cached, &pass, &waker, PER_ROUND));
        }
        let [bare_ns, hit_ns, pbare_ns, pass_ns] = times.map(|mut t| median(&mut t));
        println!(
            "interleaved (median of {ROUNDS} rounds of {PER_ROUND}): bare {bare_ns:.1} ns, \
             l1_hit {hit_ns:.1} ns, pass_bare {pbare_ns:.1} ns, pass {pass_ns:.1} ns"
        );
        println!(
            "interleaved ratios: l1_hit / bare {:.3}x (target <= 1.5x), pass / pass_bare {:.3}x (target <= 1.05x)",
            hit_ns / bare_ns,
            pass_ns / pbare_ns
        );
    }

    let mut g = c.benchmark_group("hit_path");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    bench_calls(&mut g, "bare", &mut bare, &hit, &waker);
    bench_calls(&mut g, "l1_hit", &mut cached, &hit, &waker);
    bench_calls(&mut g, "pass_bare", &mut bare, &pass, &waker);
    bench_calls(&mut g, "pass", &mut cached, &pass, &waker);
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
    let waker = noop_waker();
    let buf = body_buffer();
    let hit = Proto::new(HIT_URI);
    let stored = |builder: tower_tiered_cache::CacheBuilder| {
        let cache = builder.build().expect("cache");
        let mut svc = CacheLayer::new(cache.clone()).layer(origin::<Request<()>>(buf.clone()));
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
                let svc = match *name {
                    "uninstrumented" => &mut plain,
                    "instrumented" => &mut observed,
                    #[cfg(feature = "opentelemetry")]
                    _ => &mut metered,
                    #[cfg(not(feature = "opentelemetry"))]
                    _ => unreachable!(),
                };
                times.push(round_ns(svc, &hit, &waker, PER_ROUND));
            }
        }
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
    bench_calls(&mut g, "l1_hit_uninstrumented", &mut plain, &hit, &waker);
    bench_calls(&mut g, "l1_hit_instrumented", &mut observed, &hit, &waker);
    #[cfg(feature = "opentelemetry")]
    bench_calls(
        &mut g,
        "l1_hit_instrumented_metrics",
        &mut metered,
        &hit,
        &waker,
    );
    g.finish();
    // The instrumented side really recorded: one label, latency counted
    // for a sample of the hits (one in HIT_TIMING_SAMPLE per thread; the
    // thread's tick is shared with the metered cache, so not exactly).
    let stats = observed_cache.stats();
    assert!(stats.hit_latency.count > 0, "{stats:?}");
    assert!(stats.hit_latency.count < stats.hits_l1 / 2, "{stats:?}");
    assert_eq!(stats.labels[0].label, "example.com");
}

criterion_group!(benches, hit_path, observe_overhead);
criterion_main!(benches);
