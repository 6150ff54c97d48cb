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
//! Before the criterion groups, an interleaved run (rounds of the same
//! number of calls on each side in turn, median round per side) prints the
//! ratios the targets are about: `l1_hit / bare` and `pass / pass_bare`.
//! Heap allocations per call are counted by `benches/allocs.rs`, a binary
//! of its own, so that the counting allocator does not slow these timings.
//!
//! Run with `cargo bench --bench hit_path`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use http_body_util::BodyExt;
use tower::{Layer, ServiceExt};
use tower_tiered_cache::{Cache, CacheLayer};

mod support;

use support::{
    bench_calls, body_buffer, call_once, current_thread_runtime, hit_and_pass, median, noop_waker,
    origin, round_ns, HIT_URI, PASS_URI,
};

/// Requests with no body.
type Proto = support::Proto<()>;

#[cfg(feature = "opentelemetry")]
#[path = "../examples/support/telemetry.rs"]
mod telemetry;

fn hit_path(c: &mut Criterion) {
    let rt = current_thread_runtime();
    let _enter = rt.enter();
    let waker = noop_waker();

    let (hit, pass) = (Proto::new(HIT_URI), Proto::new(PASS_URI));
    let (mut bare, mut cached, _cache) = hit_and_pass(&rt, &waker);

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
    let rt = current_thread_runtime();
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
