//! The cost of an L2 hit, side by side with a raw Redis `GET` of the same
//! stored bytes.
//!
//! Group `l2`, one run, one `redis-server` started by the bench on a free
//! loopback port (the std-only helpers of `tests/support/redis.rs`; never
//! the machine's own Redis on 6379), killed when the bench ends:
//!
//! - `l2_hit`: `GET http://example.com/api/item?id=42` (the same request
//!   headers as `benches/hit_path.rs`) through `CacheLayer`, with
//!   `l1_write_through(false)` and `promote_after(u32::MAX)`, so the entry
//!   never reaches L1 and every call is a fresh L2 hit: the `GET` to Redis,
//!   decoding, the response built from the entry. The body is not collected.
//! - `raw_get`: a `redis::aio::ConnectionManager` (the connection type the
//!   cache uses for one node: one multiplexed TCP connection to the same
//!   server) sending `GET` of the key the cache stored (found with
//!   `redis-cli --scan`) and turning the reply into `Bytes`, as the cache
//!   does: the same encoded value, the same round trip, nothing else.
//!
//! The entry is a 1 KiB body with `Cache-Control: max-age=3600`, stored
//! through the layer (a miss to a `tower::service_fn` origin) before the
//! groups run. Both sides run on one current-thread tokio runtime
//! (`Runtime::block_on` per call, so the connection's driver task and the
//! request share the thread); requests are built outside the timed section.
//! After the group the bench checks that every `l2_hit` call was an L2 hit
//! (no L2 timeout or error, one upstream call in all).
//!
//! Run with `cargo bench --features redis --bench l2` (needs `redis-server`
//! and `redis-cli` on `PATH`; without them the bench prints a note and
//! measures nothing).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{Method, Request, Uri};
use http_body::Body as _;
use http_body_util::BodyExt;
use redis::aio::ConnectionManager;
use tower::{Layer, ServiceExt};
use tower_tiered_cache::CacheLayer;

mod support;

use support::{body_buffer, current_thread_runtime, median, origin, request_headers, BODY_LEN};

#[path = "support/redis_stats.rs"]
mod redis_stats;
#[path = "../tests/support/redis.rs"]
mod redis_support;

use redis_stats::{
    assert_only_l2_hits, commands_per_call, l2_only_cache, l2_write_landed, only_key,
    print_l2_stats, raw_get, thread_cpu_ns, thread_cpu_ns_since, L2_HIT,
};
use redis_support::{redis_available, RedisServer};

const URI: &str = "http://example.com/api/item?id=42";
const NAMESPACE: &str = "bench";

/// The request, with the same few typical headers as `hit_path` (built
/// afresh on every call, headers included).
fn request() -> Request<()> {
    let h = request_headers();
    let mut req = Request::new(());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = Uri::from_static(URI);
    *req.headers_mut() = h;
    req
}

/// Calls per round of the checks run before the criterion group.
const ROUND: usize = 2000;
/// Interleaved rounds of each side.
const ROUNDS: usize = 5;

/// CPU microseconds per call since `start` (NaN when unavailable).
fn cpu_us_per_call(start: Option<u64>) -> f64 {
    thread_cpu_ns_since(start) / 1e3 / ROUND as f64
}

fn l2(c: &mut Criterion) {
    if !redis_available() {
        eprintln!("skipping the l2 bench: redis-server/redis-cli not on PATH");
        return;
    }
    let server = RedisServer::start();
    let rt = current_thread_runtime();
    let _enter = rt.enter();

    let buf = body_buffer();
    let origin = origin::<Request<()>>(buf.clone());
    // L1 never holds the entry and never promotes it: every call is an L2 hit.
    let cache = l2_only_cache(&server, NAMESPACE);
    let cached = CacheLayer::new(cache.clone()).layer(origin);

    // Store the entry: a miss, body read to the end, then the L2 write.
    rt.block_on(async {
        let resp = cached.clone().oneshot(request()).await.expect("miss");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, buf);
        l2_write_landed(&cache).await;
    });

    let key = only_key(&server, NAMESPACE);

    let client = redis::Client::open(server.url()).expect("client");
    let conn: ConnectionManager = rt
        .block_on(ConnectionManager::new(client))
        .expect("connection");
    let raw = rt.block_on(raw_get(&conn, &key));
    println!(
        "stored key {key}: {} bytes encoded (body {BODY_LEN} bytes)",
        raw.len()
    );

    // Every call must be an L2 hit with the whole body.
    rt.block_on(async {
        let resp = cached.clone().oneshot(request()).await.expect("hit");
        assert_eq!(resp.headers()["cache-status"], L2_HIT);
        assert_eq!(resp.body().size_hint().exact(), Some(BODY_LEN as u64));
    });

    // Redis commands per L2 hit (round trips: one GET unless the entry
    // varies), counted by the server over a fixed number of calls.
    let (count, get) = commands_per_call(&server, ROUND, || {
        rt.block_on(async {
            for _ in 0..ROUND {
                black_box(cached.clone().oneshot(request()).await.expect("hit"));
            }
        })
    });
    println!("Redis commands per l2_hit: {count:.2} (GET: {get:.2})");
    let (count, get) = commands_per_call(&server, ROUND, || {
        rt.block_on(async {
            for _ in 0..ROUND {
                black_box(raw_get(&conn, &key).await);
            }
        })
    });
    println!("Redis commands per raw_get: {count:.2} (GET: {get:.2})");

    // The ratio from interleaved rounds, less exposed to load that comes and
    // goes than two groups measured one after the other: the median of the
    // per-round mean times.
    // Also the bench thread's own CPU time per call (the runtime is
    // current-thread: the connection's driver task runs on it too), which
    // separates the work done in-process from the wait for Redis.
    let (mut hit, mut raw) = (Vec::new(), Vec::new());
    let (mut hit_cpu, mut raw_cpu) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (t, cpu) = (Instant::now(), thread_cpu_ns());
        rt.block_on(async {
            for _ in 0..ROUND {
                black_box(cached.clone().oneshot(request()).await.expect("hit"));
            }
        });
        hit.push(t.elapsed().as_secs_f64() * 1e6 / ROUND as f64);
        hit_cpu.push(cpu_us_per_call(cpu));
        let (t, cpu) = (Instant::now(), thread_cpu_ns());
        rt.block_on(async {
            for _ in 0..ROUND {
                black_box(raw_get(&conn, &key).await);
            }
        });
        raw.push(t.elapsed().as_secs_f64() * 1e6 / ROUND as f64);
        raw_cpu.push(cpu_us_per_call(cpu));
    }
    let (hit, raw) = (median(&mut hit), median(&mut raw));
    println!(
        "interleaved ({ROUNDS} rounds x {ROUND} calls, median of round means): \
         l2_hit {hit:.1} us, raw_get {raw:.1} us, ratio {:.2}",
        hit / raw
    );
    if hit_cpu.iter().chain(&raw_cpu).all(|c| c.is_finite()) {
        let (hc, rc) = (median(&mut hit_cpu), median(&mut raw_cpu));
        println!(
            "bench-thread CPU per call (same rounds): l2_hit {hc:.1} us, raw_get {rc:.1} us, \
             difference {:.1} us",
            hc - rc
        );
    }
    cache.reset_stats();

    let mut g = c.benchmark_group("l2");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("l2_hit", |b| {
        b.iter_batched(
            request,
            |req| {
                let svc = cached.clone();
                black_box(rt.block_on(svc.oneshot(black_box(req))).expect("hit"))
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("raw_get", |b| {
        b.iter(|| black_box(rt.block_on(raw_get(&conn, black_box(&key)))))
    });
    g.finish();

    let s = print_l2_stats(&cache, "l2_hit");
    if s.hits_l2 == 0 {
        return; // the l2_hit function was filtered out
    }
    assert_only_l2_hits(&s, "l2_hit");
}

criterion_group!(benches, l2);
criterion_main!(benches);
