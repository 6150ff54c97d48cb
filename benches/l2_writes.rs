//! The L2 write throughput the write queue sustains, on the load shape of
//! issue 12: 32 concurrent clients × 40 `User-Agent`s on URLs whose
//! responses carry `Vary: User-Agent` (1 280 distinct variants, every
//! request a miss and a write to L2).
//!
//! One `redis-server` started by the bench on a free loopback port (the
//! std-only helpers of `tests/support/redis.rs`; never the machine's own
//! Redis on 6379), killed when the bench ends. The cache runs with its
//! defaults (`l2_write_queue` 1 024, `l2_timeout` 50 ms) except
//! `max_variants(40)`, on a two-worker tokio runtime, in front of a
//! `tower::service_fn` origin that answers at once.
//!
//! Before the criterion group the bench runs the shape `ROUNDS` times on
//! fresh URLs, for the default queue and for a queue of 256, and prints per
//! round: writes landed, writes dropped, and the write throughput (writes
//! landed per second from the first request to the last write settled).
//! The group `l2_writes` then times one burst (`vary_burst_1280`, fresh
//! URLs every iteration, until every write is settled: landed or dropped)
//! and prints the writes landed and dropped over all its iterations.
//! Criterion's throughput line counts the 1 280 writes of a burst whether
//! they landed or were dropped (a dropped write settles at once): read it
//! with the dropped count next to it; the per-round lines count only
//! writes that landed. Both are bounded by how fast the 32 clients make
//! requests on the same two workers, not only by the writer.
//!
//! Run with `cargo bench --features redis --bench l2_writes` (needs
//! `redis-server` and `redis-cli` on `PATH`; without them the bench prints
//! a note and measures nothing).

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt};
use tower_tiered_cache::{Cache, CacheLayer};

#[path = "../tests/support/redis.rs"]
mod redis_support;

use redis_support::{redis_available, RedisServer};

const CLIENTS: usize = 32;
const AGENTS: usize = 40;
const ROUNDS: usize = 5;

/// Distinct URLs for every burst.
static BURST: AtomicUsize = AtomicUsize::new(0);

fn cache(server: &RedisServer, queue: Option<usize>) -> Cache {
    let mut b = Cache::builder()
        .redis(server.url())
        .namespace("bench-writes")
        .max_variants(AGENTS);
    if let Some(q) = queue {
        b = b.l2_write_queue(q);
    }
    b.build().expect("cache")
}

/// Runs the shape once on fresh URLs through `cache`; returns (writes
/// landed, writes dropped, seconds until every write was settled).
async fn burst(cache: &Cache) -> (u64, u64, f64) {
    let n = BURST.fetch_add(1, Ordering::Relaxed);
    let before = cache.stats();
    let origin = tower::service_fn(|req: Request<()>| async move {
        let ua = req
            .headers()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut r = Response::new(Full::new(Bytes::from(format!(
            "{} for {ua}",
            req.uri().path()
        ))));
        r.headers_mut()
            .insert("cache-control", "max-age=300".parse().unwrap());
        r.headers_mut()
            .insert("vary", "user-agent".parse().unwrap());
        Ok::<_, Infallible>(r)
    });
    let svc = CacheLayer::new(cache.clone()).layer(origin);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let svc = svc.clone();
            tokio::spawn(async move {
                for u in 0..AGENTS {
                    let req = Request::builder()
                        .uri(format!("http://example.com/b{n}/page/{c}"))
                        .header("user-agent", format!("agent-{u}"))
                        .body(())
                        .unwrap();
                    let r = svc.clone().oneshot(req).await.expect("response");
                    let _ = r.into_body().collect().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("client");
    }
    let total = (CLIENTS * AGENTS) as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = cache.stats();
        let (w, d) = (
            s.l2_writes - before.l2_writes,
            s.l2_writes_dropped - before.l2_writes_dropped,
        );
        if w + d >= total || Instant::now() > deadline {
            return (w, d, started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn l2_writes(c: &mut Criterion) {
    if !redis_available() {
        eprintln!("redis-server/redis-cli not found: the l2_writes bench measures nothing");
        return;
    }
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for (name, queue) in [("default queue (1024)", None), ("queue 256", Some(256))] {
        let cache = cache(&server, queue);
        for round in 0..ROUNDS {
            let (w, d, secs) = rt.block_on(burst(&cache));
            println!(
                "l2_writes {name} round {round}: {w} written, {d} dropped of {}, \
                 {:.0} writes/s",
                CLIENTS * AGENTS,
                w as f64 / secs
            );
        }
    }

    let cache = cache(&server, None);
    let mut g = c.benchmark_group("l2_writes");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(10))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Elements((CLIENTS * AGENTS) as u64));
    g.bench_function("vary_burst_1280", |b| b.iter(|| rt.block_on(burst(&cache))));
    g.finish();
    let s = cache.stats();
    println!(
        "l2_writes vary_burst_1280 (all iterations): {} written, {} dropped",
        s.l2_writes, s.l2_writes_dropped
    );
}

criterion_group!(benches, l2_writes);
criterion_main!(benches);
