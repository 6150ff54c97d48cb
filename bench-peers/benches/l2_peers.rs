//! tower-tiered-cache's L2 (Redis) hit side by side with tower-http-cache's
//! `RedisBackend` hit and with raw Redis `GET`s of the bytes each stored.
//!
//! One `redis-server` is started by the bench on a free loopback port (the
//! std-only helpers of the main crate's `tests/support/redis.rs`; never the
//! machine's own Redis on 6379) and killed when the bench ends, also when it
//! panics (the helper's `Drop`, plus its watchdog if the process dies).
//!
//! Every side runs on one current-thread tokio runtime, each call in its own
//! `Runtime::block_on` (so the connection's driver task and the request
//! share the thread). The cached response is the same 1 KiB body with
//! `Cache-Control: max-age=3600`, stored once through each cache (a miss to a
//! counting `tower::service_fn` origin) before anything is timed. The request
//! is `GET http://example.com/api/item?id=42` with four typical headers, body
//! `()`, built outside the timed section; responses are dropped outside it and
//! bodies are not collected.
//!
//! Sides:
//!
//! - `raw_get`: a `redis::aio::ConnectionManager` `GET` of the exact key and
//!   bytes our cache stored (found with `redis-cli --scan`), the reply turned
//!   into `Bytes`, as `benches/l2.rs` of the main crate does;
//! - `tiered_l2_hit`: `tower_tiered_cache::CacheLayer` with L2 on that server
//!   and L1 kept out of the way (`l1_write_through(false)`,
//!   `promote_after(u32::MAX)`), so every call is an L2 hit;
//! - `tower_http_cache_redis`: `tower_http_cache::layer::CacheLayer` over its
//!   `RedisBackend` alone (not its multi-tier backend), its own
//!   `ConnectionManager` to the same server, TTL 3600 s;
//! - `raw_get_thc`: a raw `GET` of the bytes tower-http-cache stored, so its
//!   overhead over its own value size shows.
//!
//! Before timing, the bench checks that our calls are L2 hits (their
//! `Cache-Status`), that both origins were called once, and counts the Redis
//! commands per call of each side (`INFO commandstats`). After a criterion
//! group (`l2_peers`) an interleaved run (rounds of the same number of calls
//! on each side in turn, median round per side) prints the ratios vs
//! `raw_get`, with the bench thread's CPU time per call next to the wall
//! time. The origin counts and our cache's counters are checked again at the
//! end.
//!
//! Run with `cargo bench --bench l2_peers` from `bench-peers/` (about 25 s
//! once built; needs `redis-server` and `redis-cli` on `PATH`, otherwise it
//! prints a note and measures nothing).

use std::hint::black_box;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion};
use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use redis::aio::ConnectionManager;
use tokio::runtime::Runtime;
use tower::{Layer, ServiceExt};

#[path = "../../benches/support/redis_stats.rs"]
mod redis_stats;
#[path = "../../tests/support/redis.rs"]
mod redis_support;
#[path = "../../benches/support/mod.rs"]
mod support;

use redis_stats::{
    assert_only_l2_hits, commands_per_call, l2_only_cache, l2_write_landed, only_key,
    print_l2_stats, raw_get, thread_cpu_ns, thread_cpu_ns_since, L2_HIT,
};
use redis_support::{redis_available, RedisServer};
use support::{body_buffer, counting_origin, current_thread_runtime, median, BODY_LEN};

const URI: &str = "http://example.com/api/item?id=42";
/// Our cache's key prefix.
const NS_TIERED: &str = "tiered";
/// tower-http-cache's key prefix.
const NS_THC: &str = "thc";
/// Calls per side per interleaved round (and per command count).
const PER_ROUND: usize = 2_000;
/// Interleaved rounds.
const ROUNDS: usize = 31;

type Req = Request<()>;
type Proto = support::Proto<()>;

/// One benched side: `call` makes one call (a `block_on`) from a request
/// (the raw sides ignore it) and returns what is dropped outside the timed
/// section.
struct Side<F, O> {
    name: &'static str,
    call: F,
    out: PhantomData<fn() -> O>,
}

fn side<F: FnMut(Req) -> O, O>(name: &'static str, call: F) -> Side<F, O> {
    Side {
        name,
        call,
        out: PhantomData,
    }
}

/// The sides behind one type, the dynamic dispatch once per bench function
/// or round.
trait Bench {
    fn name(&self) -> &'static str;
    fn bench(&mut self, g: &mut BenchmarkGroup<'_, WallTime>, proto: &Proto);
    /// Wall and bench-thread CPU time per call (ns; CPU NaN if unknown).
    fn round(&mut self, reqs: Vec<Req>) -> (f64, f64);
}

impl<F: FnMut(Req) -> O, O> Bench for Side<F, O> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn bench(&mut self, g: &mut BenchmarkGroup<'_, WallTime>, proto: &Proto) {
        let call = &mut self.call;
        g.bench_function(self.name, |b| {
            b.iter_batched(
                || proto.make(),
                |req| black_box(call(black_box(req))),
                BatchSize::SmallInput,
            )
        });
    }

    fn round(&mut self, reqs: Vec<Req>) -> (f64, f64) {
        let n = reqs.len() as f64;
        let mut out = Vec::with_capacity(reqs.len());
        let cpu = thread_cpu_ns();
        let t = Instant::now();
        for req in reqs {
            out.push((self.call)(req));
        }
        let wall = t.elapsed().as_nanos() as f64 / n;
        let cpu = thread_cpu_ns_since(cpu) / n;
        drop(out);
        (wall, cpu)
    }
}

/// Stores the entry through `svc`: one miss, checked (200, the whole body).
fn warm<S, B>(rt: &Runtime, svc: &S, proto: &Proto, buf: &Bytes)
where
    S: tower::Service<Req, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let resp = svc.clone().oneshot(proto.make()).await.expect("miss");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body, buf);
    });
}

fn l2_peers(c: &mut Criterion) {
    if !redis_available() {
        eprintln!("skipping the l2_peers bench: redis-server/redis-cli not on PATH");
        return;
    }
    let server = RedisServer::start();
    let rt = current_thread_runtime();
    let _enter = rt.enter();
    let buf = body_buffer();
    let proto = Proto::new(URI);
    let client = redis::Client::open(server.url()).expect("client");

    // Ours: L1 never holds the entry and never promotes it.
    let tiered_calls = Arc::new(AtomicUsize::new(0));
    let cache = l2_only_cache(&server, NS_TIERED);
    let tiered = tower_tiered_cache::CacheLayer::new(cache.clone()).layer(counting_origin::<Req>(
        buf.clone(),
        Some(tiered_calls.clone()),
    ));
    warm(&rt, &tiered, &proto, &buf);
    // The L2 write is asynchronous: wait until it lands.
    rt.block_on(l2_write_landed(&cache));

    // tower-http-cache: RedisBackend alone, its own connection (the
    // constructor takes one; `ConnectionManager::new` is redis 1.x's default
    // configuration, as for the raw side). It reads no `max-age`: TTL set to
    // the response's hour.
    let thc_calls = Arc::new(AtomicUsize::new(0));
    let thc_conn = rt
        .block_on(ConnectionManager::new(client.clone()))
        .expect("connection");
    let thc = tower_http_cache::layer::CacheLayer::builder(
        tower_http_cache::backend::redis::RedisBackend::new(thc_conn).with_namespace(NS_THC),
    )
    .ttl(Duration::from_secs(3600))
    .build()
    .layer(counting_origin::<Req>(buf.clone(), Some(thc_calls.clone())));
    warm(&rt, &thc, &proto, &buf); // its `set` is awaited inside the miss

    let key = only_key(&server, NS_TIERED);
    let key_thc = only_key(&server, NS_THC);
    let conn = rt
        .block_on(ConnectionManager::new(client))
        .expect("connection");
    let (ours_len, thc_len) = rt.block_on(async {
        (
            raw_get(&conn, &key).await.len(),
            raw_get(&conn, &key_thc).await.len(),
        )
    });
    println!("stored {key}: {ours_len} bytes; {key_thc}: {thc_len} bytes (body {BODY_LEN} bytes)");

    // Every call is a hit with the whole body.
    rt.block_on(async {
        let resp = tiered.clone().oneshot(proto.make()).await.expect("hit");
        assert_eq!(resp.headers()["cache-status"], L2_HIT);
        assert_eq!(resp.body().size_hint().exact(), Some(BODY_LEN as u64));
        let resp = thc.clone().oneshot(proto.make()).await.expect("hit");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, buf);
    });
    let check_origins = |when: &str| {
        assert_eq!(
            tiered_calls.load(Ordering::Relaxed),
            1,
            "tiered origin called again ({when})"
        );
        assert_eq!(
            thc_calls.load(Ordering::Relaxed),
            1,
            "tower-http-cache origin called again ({when})"
        );
    };
    check_origins("before timing");

    let mut sides: Vec<Box<dyn Bench + '_>> = vec![
        Box::new(side("raw_get", |_req: Req| {
            rt.block_on(raw_get(&conn, &key))
        })),
        Box::new(side("tiered_l2_hit", |req: Req| {
            rt.block_on(tiered.clone().oneshot(req)).expect("hit")
        })),
        Box::new(side("tower_http_cache_redis", |req: Req| {
            rt.block_on(thc.clone().oneshot(req)).expect("hit")
        })),
        Box::new(side("raw_get_thc", |_req: Req| {
            rt.block_on(raw_get(&conn, &key_thc))
        })),
    ];

    // Redis commands per call (round trips), counted by the server.
    for s in sides.iter_mut() {
        let reqs = proto.batch(PER_ROUND);
        let (all, get) = commands_per_call(&server, PER_ROUND, || {
            s.round(reqs);
        });
        println!(
            "Redis commands per call, {}: {all:.2} (GET: {get:.2})",
            s.name()
        );
    }
    cache.reset_stats();

    let mut g = c.benchmark_group("l2_peers");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for s in sides.iter_mut() {
        s.bench(&mut g, &proto);
    }
    g.finish();

    // Interleaved rounds: less exposed than consecutive groups to load that
    // comes and goes on a shared machine.
    let mut wall: Vec<Vec<f64>> = vec![Vec::with_capacity(ROUNDS); sides.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::with_capacity(ROUNDS); sides.len()];
    for _ in 0..ROUNDS {
        for (i, s) in sides.iter_mut().enumerate() {
            let (w, c) = s.round(proto.batch(PER_ROUND));
            wall[i].push(w);
            cpu[i].push(c);
        }
    }
    let names: Vec<&'static str> = sides.iter().map(|s| s.name()).collect();
    drop(sides);
    let wall: Vec<f64> = wall.iter_mut().map(|v| median(v)).collect();
    let cpu: Vec<f64> = cpu.iter_mut().map(|v| median(v)).collect();
    println!();
    println!(
        "interleaved ({ROUNDS} rounds x {PER_ROUND} calls per side, median round; \
         cpu = bench thread's CPU time per call):"
    );
    println!(
        "  {:<24} {:>10} {:>11} {:>10} {:>13}",
        "side", "us/call", "x raw_get", "cpu us", "x raw_get_thc"
    );
    for (i, name) in names.iter().enumerate() {
        // tower-http-cache's own sides (2, 3) against its own raw GET.
        let vs_thc = if i >= 2 {
            format!("{:.2}", wall[i] / wall[3])
        } else {
            String::new()
        };
        println!(
            "  {:<24} {:>10.2} {:>11.2} {:>10.2} {:>13}",
            name,
            wall[i] / 1e3,
            wall[i] / wall[0],
            cpu[i] / 1e3,
            vs_thc
        );
    }
    println!();

    check_origins("after timing");
    let s = print_l2_stats(&cache, "tiered_l2_hit");
    assert_only_l2_hits(&s, "tiered_l2_hit");
    drop(server); // killed and reaped (also on panic, by unwinding)
}

criterion_group!(benches, l2_peers);
criterion_main!(benches);
