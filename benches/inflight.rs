//! The in-flight map (`src/coalesce.rs`) under misses on distinct keys:
//! one `join` (which leads a new flight) and one `complete` per call, from
//! one thread and from two threads at once, each thread on keys of its own
//! (no coalescing: the cost measured is the map's, and whether two misses
//! on different keys wait for each other).
//!
//! The map is crate-private, so this bench compiles `src/coalesce.rs` (and
//! `src/sync.rs`) into itself with `#[path]` and gives it the three names
//! it takes from the crate (`Entry`, `KeyHash`, `Tier`). Run on two commits,
//! it measures each one's own map with the same bench code. If
//! `coalesce.rs` starts using another crate module, add it below.
//!
//! Before the criterion groups, an interleaved run (rounds of the same
//! number of calls on one thread and on each of two threads, in turn,
//! median round per side) prints `2 threads / 1 thread`: the time a call
//! takes on each of two threads against the time it takes alone. 1.0 is no
//! contention at all; on a 2-core machine shared with other work it is
//! above 1 anyway (the two threads do not always get a core each).
//!
//! Run with `cargo bench --bench inflight`.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// The names `src/coalesce.rs` takes from the crate.
mod entry {
    pub(crate) use tower_tiered_cache::Entry;
}
mod key {
    pub(crate) use tower_tiered_cache::KeyHash;
}
mod observe {
    pub(crate) use tower_tiered_cache::observe::Tier;
}

#[path = "../src/sync.rs"]
#[allow(dead_code, unused_imports)]
mod sync;

#[path = "../src/coalesce.rs"]
#[allow(dead_code, unused_imports)]
mod coalesce;

use coalesce::{InFlight, Join, Outcome};
use key::KeyHash;

/// The builder's default `max_in_flight`.
const MAX_IN_FLIGHT: usize = 10_000;
/// Distinct keys per thread, used in turn (each flight ends before its key
/// comes round again).
const KEYS: usize = 4096;

/// `KEYS` well-mixed keys for thread `t` (splitmix64), none shared between
/// threads: real keys are xxh3 hashes.
fn keys(t: u64) -> Vec<KeyHash> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(t + 1);
    let mut next = move || {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    (0..KEYS)
        .map(|_| KeyHash((u128::from(next()) << 64) | u128::from(next())))
        .collect()
}

/// `iters` calls of join + complete on each of `threads` threads, started
/// together; the wall time until the last one finishes.
fn run(map: &InFlight, keys: &[Vec<KeyHash>], iters: u64) -> Duration {
    let start = Barrier::new(keys.len() + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = keys
            .iter()
            .map(|ks| {
                let start = &start;
                s.spawn(move || {
                    start.wait();
                    for i in 0..iters as usize {
                        match map.join(black_box(ks[i % KEYS])) {
                            Join::Leader(guard) => guard.complete(Outcome::Pass),
                            _ => panic!("a key of this thread's own is in flight"),
                        }
                    }
                })
            })
            .collect();
        start.wait();
        let t0 = Instant::now();
        for h in handles {
            h.join().expect("bench thread");
        }
        t0.elapsed()
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn inflight(c: &mut Criterion) {
    let map = InFlight::new(MAX_IN_FLIGHT);
    let one = vec![keys(0)];
    let two = vec![keys(1), keys(2)];

    // Interleaved: the same calls on one thread and on two, in turn.
    {
        const ROUNDS: usize = 21;
        const CALLS: u64 = 200_000;
        let (mut alone, mut both) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            alone.push(run(&map, &one, CALLS).as_nanos() as f64 / CALLS as f64);
            both.push(run(&map, &two, CALLS).as_nanos() as f64 / CALLS as f64);
        }
        let (a, b) = (median(alone), median(both));
        println!(
            "inflight interleaved ({ROUNDS} rounds of {CALLS} calls per thread): \
             1 thread {a:.1} ns/call, 2 threads {b:.1} ns/call each, \
             2 threads / 1 thread = {:.2}",
            b / a
        );
    }

    let mut g = c.benchmark_group("inflight");
    g.sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(1));
    g.bench_function("join_complete/1_thread", |b| {
        b.iter_custom(|iters| run(&map, &one, iters))
    });
    // The time is per call on each thread: two calls (one per thread) per
    // iteration.
    g.throughput(Throughput::Elements(2));
    g.bench_function("join_complete/2_threads", |b| {
        b.iter_custom(|iters| run(&map, &two, iters))
    });
    g.finish();
    assert_eq!(map.len(), 0, "every flight ended");
}

criterion_group!(benches, inflight);
criterion_main!(benches);
