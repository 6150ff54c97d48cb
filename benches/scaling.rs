//! Fresh L1 hits from one and from two OS threads at once, beside the bare
//! service on the same requests (issue 18, point 3): how the hit path
//! scales when threads share a cache.
//!
//! Four sides, each at 1 and 2 threads:
//!
//! - `bare_hot`: the bare origin (`support::origin`), every call with the
//!   one hot request ([`HIT_URI`]);
//! - `cached_hot`: the same origin behind `CacheLayer` (default builder),
//!   the hot key stored, so that every call is a fresh L1 hit on one key;
//! - `bare_many`: the bare origin, each call with one of [`KEYS`] URLs
//!   drawn uniformly (seeded xorshift, each thread its own stream);
//! - `cached_many`: the same requests behind the layer, all [`KEYS`] keys
//!   stored: every call is a fresh L1 hit on a key drawn uniformly.
//!
//! Each thread is a worker that lives for the whole bench (its
//! thread-locals stay warm, as a server's workers' do), holds its own
//! clones of the services, enters its own current-thread runtime and polls
//! each call once with a no-op waker (every call here is ready at once).
//! A round: each taking part builds its requests, all start together
//! (a barrier), call, and the clock stops when the last one is done;
//! responses are dropped after. Throughput = calls on all threads / wall
//! time; **scaling = throughput at 2 threads / throughput at 1 thread**
//! (2.0: no contention at all, on two free cores).
//!
//! First an interleaved run (every side and thread count in turn, rounds
//! of the same number of calls per thread, median round per side) prints
//! the scaling of each side; then criterion groups `scaling_hot` and
//! `scaling_many` time the same (`iter_custom`: one iteration is one call
//! on each thread, so criterion's throughput is the total calls/s).
//!
//! The machine's two cores are shared with whatever else runs: a second
//! thread that does not get a core of its own shows as a scaling near 1.0
//! on every side, bare included. Compare sides within one run.
//!
//! Run with `cargo bench --bench scaling`.

use std::hint::black_box;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::Request;
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_tiered_cache::{Cache, CacheBody, CacheLayer};

mod support;

use support::{body_buffer, call_once, current_thread_runtime, noop_waker, origin, HIT_URI};

/// Requests with no body.
type Proto = support::Proto<()>;

/// Distinct keys of the many-key sides.
const KEYS: usize = 10_000;
/// Interleaved rounds per side and thread count.
const ROUNDS: usize = 15;
/// Calls per thread per interleaved round.
const PER_ROUND: usize = 100_000;
/// Thread counts compared.
const THREADS: [usize; 2] = [1, 2];

/// Which service a round calls, and with which requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    BareHot,
    CachedHot,
    BareMany,
    CachedMany,
}

impl Side {
    const ALL: [Side; 4] = [
        Side::BareHot,
        Side::CachedHot,
        Side::BareMany,
        Side::CachedMany,
    ];

    fn name(self) -> &'static str {
        match self {
            Side::BareHot => "bare_hot",
            Side::CachedHot => "cached_hot",
            Side::BareMany => "bare_many",
            Side::CachedMany => "cached_many",
        }
    }

    fn many(self) -> bool {
        matches!(self, Side::BareMany | Side::CachedMany)
    }
}

/// One round's order to a worker: `calls` calls on `side`, started and
/// ended with the others through the two barriers.
struct Job {
    side: Side,
    calls: usize,
    start: Arc<Barrier>,
    done: Arc<Barrier>,
}

/// The many-key requests' URLs (leaked: they live as long as the bench).
fn many_protos() -> Arc<Vec<Proto>> {
    Arc::new(
        (0..KEYS)
            .map(|i| {
                let uri: &'static str =
                    Box::leak(format!("http://example.com/api/many?id={i}").into_boxed_str());
                Proto::new(uri)
            })
            .collect(),
    )
}

/// A worker thread: waits for jobs until the sender is dropped.
fn spawn_worker<B, C>(
    id: u64,
    bare: B,
    cached: C,
    many: Arc<Vec<Proto>>,
) -> (mpsc::Sender<Job>, std::thread::JoinHandle<()>)
where
    B: Service<
            Request<()>,
            Response = http::Response<Full<Bytes>>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    C: Service<
            Request<()>,
            Response = http::Response<CacheBody<Full<Bytes>>>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
{
    let (tx, rx) = mpsc::channel::<Job>();
    let handle = std::thread::spawn(move || {
        let (mut bare, mut cached) = (bare, cached);
        let rt = current_thread_runtime();
        let _enter = rt.enter();
        let waker = noop_waker();
        let hot = Proto::new(HIT_URI);
        // xorshift64, a stream per worker.
        let mut x = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(id + 1) | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for job in rx {
            let reqs: Vec<Request<()>> = if job.side.many() {
                (0..job.calls)
                    .map(|_| many[(next() % KEYS as u64) as usize].make())
                    .collect()
            } else {
                hot.batch(job.calls)
            };
            let mut out_bare = Vec::new();
            let mut out_cached = Vec::new();
            match job.side {
                Side::BareHot | Side::BareMany => out_bare.reserve(job.calls),
                Side::CachedHot | Side::CachedMany => out_cached.reserve(job.calls),
            }
            job.start.wait();
            match job.side {
                Side::BareHot | Side::BareMany => {
                    for req in reqs {
                        out_bare.push(call_once(&mut bare, black_box(req), &waker));
                    }
                }
                Side::CachedHot | Side::CachedMany => {
                    for req in reqs {
                        out_cached.push(call_once(&mut cached, black_box(req), &waker));
                    }
                }
            }
            job.done.wait();
            drop((out_bare, out_cached));
        }
    });
    (tx, handle)
}

/// The workers and the cache they share.
struct Bench {
    workers: Vec<(mpsc::Sender<Job>, std::thread::JoinHandle<()>)>,
    cache: Cache,
}

impl Bench {
    fn new() -> Self {
        let rt = current_thread_runtime();
        let buf = body_buffer();
        let cache = Cache::builder().build().expect("cache");
        let bare = origin::<Request<()>>(buf.clone());
        let cached = CacheLayer::new(cache.clone()).layer(origin::<Request<()>>(buf.clone()));
        let many = many_protos();
        // Store the hot key and every many-key URL (misses), and check
        // that each then answers as a fresh L1 hit.
        rt.block_on(async {
            let protos = std::iter::once(Proto::new(HIT_URI)).chain(many.iter().cloned());
            for p in protos {
                let resp = cached.clone().oneshot(p.make()).await.expect("miss");
                let body = resp.into_body().collect().await.expect("body").to_bytes();
                assert_eq!(body, buf);
                let resp = cached.clone().oneshot(p.make()).await.expect("hit");
                assert_eq!(
                    resp.headers()["cache-status"],
                    "tower-tiered-cache; hit; detail=l1"
                );
            }
        });
        assert_eq!(cache.stats().l1_entries, KEYS as u64 + 1);
        let workers = (0..THREADS[THREADS.len() - 1] as u64)
            .map(|id| spawn_worker(id, bare.clone(), cached.clone(), Arc::clone(&many)))
            .collect();
        Self { workers, cache }
    }

    /// `calls` calls on `side` on each of `threads` workers at once; the
    /// wall time from the common start to the last one's end.
    fn round(&self, side: Side, threads: usize, calls: usize) -> Duration {
        let start = Arc::new(Barrier::new(threads + 1));
        let done = Arc::new(Barrier::new(threads + 1));
        for (tx, _) in &self.workers[..threads] {
            tx.send(Job {
                side,
                calls,
                start: Arc::clone(&start),
                done: Arc::clone(&done),
            })
            .expect("worker alive");
        }
        start.wait();
        let t = Instant::now();
        done.wait();
        t.elapsed()
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        for (tx, handle) in std::mem::take(&mut self.workers) {
            drop(tx);
            handle.join().expect("worker");
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn scaling(c: &mut Criterion) {
    let bench = Bench::new();
    let hits_before = bench.cache.stats().hits_l1;

    // Interleaved: every side and thread count in turn, round after round.
    let mut times = vec![vec![Vec::with_capacity(ROUNDS); THREADS.len()]; Side::ALL.len()];
    for _ in 0..ROUNDS {
        for (si, &side) in Side::ALL.iter().enumerate() {
            for (ti, &threads) in THREADS.iter().enumerate() {
                let wall = bench.round(side, threads, PER_ROUND);
                times[si][ti].push(wall.as_nanos() as f64);
            }
        }
    }
    println!(
        "interleaved (median of {ROUNDS} rounds of {PER_ROUND} calls per thread; \
         {KEYS} keys for *_many):"
    );
    println!(
        "  {:<12} {:>16} {:>16} {:>16} {:>16} {:>8}",
        "side", "1 thr ns/call", "1 thr calls/s", "2 thr ns/call/thr", "2 thr calls/s", "scaling"
    );
    for (si, side) in Side::ALL.iter().enumerate() {
        let calls_s: Vec<f64> = THREADS
            .iter()
            .enumerate()
            .map(|(ti, &threads)| {
                let wall = median(&mut times[si][ti]);
                (threads * PER_ROUND) as f64 * 1e9 / wall
            })
            .collect();
        println!(
            "  {:<12} {:>16.1} {:>16.0} {:>16.1} {:>16.0} {:>7.2}x",
            side.name(),
            1e9 / calls_s[0],
            calls_s[0],
            2.0 * 1e9 / calls_s[1],
            calls_s[1],
            calls_s[1] / calls_s[0]
        );
    }
    // Every cached call was a fresh L1 hit.
    let cached_calls = 2 * ROUNDS * PER_ROUND * THREADS.iter().sum::<usize>();
    assert_eq!(
        bench.cache.stats().hits_l1 - hits_before,
        cached_calls as u64
    );

    for (group, sides) in [
        ("scaling_hot", [Side::BareHot, Side::CachedHot]),
        ("scaling_many", [Side::BareMany, Side::CachedMany]),
    ] {
        let mut g = c.benchmark_group(group);
        g.measurement_time(Duration::from_secs(3))
            .warm_up_time(Duration::from_secs(1));
        for side in sides {
            for threads in THREADS {
                g.throughput(Throughput::Elements(threads as u64));
                g.bench_function(format!("{}/{threads}", side.name()), |b| {
                    b.iter_custom(|iters| bench.round(side, threads, iters as usize))
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, scaling);
criterion_main!(benches);
