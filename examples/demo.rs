//! A self-contained demo: a slow origin, an axum front that forwards to it
//! through a hyper-util client, and the same front again wrapped in
//! `CacheLayer`. The same workload runs against both and the numbers are
//! printed side by side.
//!
//! ```text
//! cargo run --features redis --example demo
//! ```
//!
//! With the `redis` feature and `redis-server` on `PATH` the cache has an
//! L2 tier on a redis-server of the demo's own (a free loopback port, never
//! the machine's Redis on 6379; killed at the end), and a second instance
//! of the cached front, with an empty L1 on the same Redis, runs the
//! workload again: its answers come from L2. Without either, the demo runs
//! on L1 alone and says in one line how to see L2.
//!
//! Everything listens on 127.0.0.1 with an ephemeral port, the workload is
//! bounded (about 1 100 requests per front) and the program exits by itself
//! in a few seconds.

#[cfg(feature = "redis")]
#[path = "../tests/support/redis.rs"]
pub(crate) mod redis_support;

#[path = "support/load.rs"]
#[allow(dead_code)] // the demo draws keys; it parses no flags
mod load;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::header::{CACHE_CONTROL, HOST};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use load::{SplitMix64, Zipf};
use tokio::task::JoinSet;
use tower_tiered_cache::{Cache, CacheBuilder, CacheLayer, Route, Stats, CACHE_STATUS};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long the origin takes to answer any request.
const ORIGIN_DELAY: Duration = Duration::from_millis(50);
/// Requests in the skewed mix, and how many run at once.
const MIX_REQUESTS: usize = 1000;
const MIX_CONCURRENCY: usize = 32;
/// Concurrent requests fired at one cold key to show coalescing.
const BURST: usize = 50;
/// Concurrent requests fired at the short-lived key once it is stale.
const STALE_BURST: usize = 10;
/// The `Host` every request of the workload names.
const SITE: &str = "demo.example";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The L2 tier's Redis, if the demo can have one; dropping the guard (at
    // the end of `main`, also on an error or a panic) kills the server.
    let (redis_url, _redis_guard) = match l2_redis() {
        Ok((url, guard)) => (Some(url), Some(guard)),
        Err(why) => (None, {
            println!("L2 tier: not shown, {why}");
            None
        }),
    };

    // The origin, and a counter of the requests it actually served.
    let origin_calls = Arc::new(AtomicU64::new(0));
    let origin = serve(origin_router(Arc::clone(&origin_calls))).await?;

    let cache = cache_builder(redis_url.as_deref()).build()?;

    // Two fronts over the same forwarding handler: one cached, one not.
    let front = front_router(origin);
    let cached_front = serve(front.clone().layer(CacheLayer::new(cache.clone()))).await?;
    let plain_front = serve(front.clone()).await?;

    println!(
        "origin   http://{origin}  ({} ms per request)",
        ORIGIN_DELAY.as_millis()
    );
    match &redis_url {
        Some(url) => println!(
            "cached   http://{cached_front}  (axum + CacheLayer: L1, and L2 on its own redis-server {url})"
        ),
        None => println!("cached   http://{cached_front}  (axum + CacheLayer: L1, forwards to the origin)"),
    }
    println!("uncached http://{plain_front}  (the same front without the cache)");
    println!();

    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();

    println!("running the workload against the uncached front...");
    let uncached = run_workload(&client, plain_front, &origin_calls).await?;
    println!("running the workload against the cached front...");
    let cached = run_workload(&client, cached_front, &origin_calls).await?;
    let stats = cache.stats();

    let mut columns = vec![Column {
        name: "cached",
        run: &cached,
        stats: Some(&stats),
    }];
    // A second instance of the cached front: a new `Cache`, so an empty L1,
    // on the same Redis. What the first instance stored it reads from L2.
    let second = match &redis_url {
        Some(url) => {
            let cache = cache_builder(Some(url)).build()?;
            let addr = serve(front.layer(CacheLayer::new(cache.clone()))).await?;
            println!("running the workload against a second cached instance (empty L1, same Redis) at http://{addr}...");
            let run = run_workload(&client, addr, &origin_calls).await?;
            Some((run, cache.stats()))
        }
        None => None,
    };
    if let Some((run, stats)) = &second {
        columns.push(Column {
            name: "2nd instance",
            run,
            stats: Some(stats),
        });
    }
    columns.push(Column {
        name: "uncached",
        run: &uncached,
        stats: None,
    });
    println!();

    print_table(&columns);
    explain_p99(&cached, &stats);
    print_cache_status_tally(&cached);
    println!();
    println!("Cache::stats() of the cached front as JSON:");
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(())
}

/// The cache of every cached front: RFC 9111 defaults, plus one rule for
/// the route whose origin sends no caching headers at all; an L2 tier on
/// `redis_url` when there is one.
fn cache_builder(redis_url: Option<&str>) -> CacheBuilder {
    let builder = Cache::builder().route(
        Route::prefix("/api/legacy")
            .ttl(Duration::from_secs(30))
            .force(),
    );
    match redis_url {
        #[cfg(feature = "redis")]
        Some(url) => builder.redis(url).namespace("demo"),
        _ => builder,
    }
}

/// The URL of a redis-server of the demo's own and the guard that kills it
/// when dropped, or why there is none.
#[cfg(feature = "redis")]
fn l2_redis() -> Result<(String, redis_support::RedisServer), String> {
    if !redis_support::redis_available() {
        return Err(
            "redis-server is not on PATH: to see it, apt-get install redis-server \
                    redis-tools (scripts/test does) and run the demo again"
                .into(),
        );
    }
    let server = redis_support::RedisServer::builder()
        .try_start()
        .map_err(|e| format!("its redis-server did not start: {e}"))?;
    Ok((server.url(), server))
}

/// Without the `redis` feature there is no L2 tier.
#[cfg(not(feature = "redis"))]
fn l2_redis() -> Result<(String, ()), String> {
    Err(
        "built without the `redis` feature: to see it, cargo run --features redis --example demo \
         (with redis-server on PATH)"
            .into(),
    )
}

// ---------------------------------------------------------------------------
// Servers

/// Serves `app` on an ephemeral port of 127.0.0.1 in the background.
async fn serve(app: Router) -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("server on {addr} failed: {e}");
        }
    });
    Ok(addr)
}

/// The slow origin. Every handler waits [`ORIGIN_DELAY`] and counts itself.
fn origin_router(calls: Arc<AtomicU64>) -> Router {
    Router::new()
        .route("/api/items/{id}", get(item))
        .route("/api/odds", get(odds))
        .route("/api/legacy/{id}", get(legacy))
        .route("/account", get(account))
        .with_state(calls)
}

type Calls = State<Arc<AtomicU64>>;

/// Cacheable for a minute, then servable stale for 30 s more.
async fn item(State(calls): Calls, Path(id): Path<String>) -> impl IntoResponse {
    slow(&calls).await;
    (
        [(
            CACHE_CONTROL,
            "public, max-age=60, stale-while-revalidate=30",
        )],
        format!("{{\"item\":\"{id}\",\"price\":42}}"),
    )
}

/// Fresh for one second only: the stale phase relies on it.
async fn odds(State(calls): Calls) -> impl IntoResponse {
    slow(&calls).await;
    (
        [(CACHE_CONTROL, "max-age=1, stale-while-revalidate=10")],
        "{\"home\":1.85,\"away\":2.05}",
    )
}

/// No caching headers: only the `Route::prefix("/api/legacy")` rule makes
/// this cacheable.
async fn legacy(State(calls): Calls, Path(id): Path<String>) -> impl IntoResponse {
    slow(&calls).await;
    format!("legacy record {id}")
}

/// Personal data: a shared cache must not store it.
async fn account(State(calls): Calls) -> impl IntoResponse {
    slow(&calls).await;
    (
        [(CACHE_CONTROL, "private, max-age=60")],
        "{\"user\":\"alice\"}",
    )
}

async fn slow(calls: &AtomicU64) {
    calls.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(ORIGIN_DELAY).await;
}

#[derive(Clone)]
struct Front {
    client: Client<HttpConnector, Body>,
    origin: SocketAddr,
}

/// A minimal forwarding app: every request goes to the origin unchanged.
/// (See `examples/proxy.rs` for a proper reverse proxy that also strips
/// hop-by-hop headers.)
fn front_router(origin: SocketAddr) -> Router {
    let client = Client::builder(TokioExecutor::new()).build_http();
    Router::new()
        .fallback(forward)
        .with_state(Front { client, origin })
}

async fn forward(State(front): State<Front>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    parts.uri = match Uri::builder()
        .scheme("http")
        .authority(front.origin.to_string())
        .path_and_query(path_and_query)
        .build()
    {
        Ok(uri) => uri,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    // The client sets `Host` from the new URI.
    parts.headers.remove(HOST);
    match front.client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => resp.map(Body::new),
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

// ---------------------------------------------------------------------------
// Workload

/// One request as the client saw it.
struct Sample {
    latency: Duration,
    cache_status: Option<String>,
}

/// What one run of the workload produced.
struct Run {
    samples: Vec<Sample>,
    origin_calls: u64,
    wall: Duration,
}

/// The same three phases for both fronts:
///
/// 1. a skewed (Zipf, s = 1) mix over 20 keys, 32 requests at a time;
/// 2. a burst of concurrent requests on a key nobody asked for yet;
/// 3. after waiting for `/api/odds` (max-age=1) to go stale, a burst on it.
async fn run_workload(
    client: &Client<HttpConnector, Empty<Bytes>>,
    front: SocketAddr,
    origin_calls: &AtomicU64,
) -> Result<Run, BoxError> {
    let origin_before = origin_calls.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut samples = Vec::new();

    let mix = zipf_mix(&mix_keys(), MIX_REQUESTS, 0x5eed);
    samples.extend(fetch_all(client, front, mix, MIX_CONCURRENCY).await?);

    let burst = vec!["/api/items/cold-burst".to_owned(); BURST];
    samples.extend(fetch_all(client, front, burst, BURST).await?);

    // The one deliberate pause: let the one-second entry go stale.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stale = vec!["/api/odds".to_owned(); STALE_BURST];
    samples.extend(fetch_all(client, front, stale, STALE_BURST).await?);
    let wall = start.elapsed();

    // Give the background refresh time to land before counting.
    tokio::time::sleep(ORIGIN_DELAY * 2).await;
    Ok(Run {
        samples,
        origin_calls: origin_calls.load(Ordering::Relaxed) - origin_before,
        wall,
    })
}

/// The 20 keys of the mix, most popular first.
fn mix_keys() -> Vec<String> {
    let mut keys = Vec::new();
    let mut item = 0;
    for rank in 1..=20 {
        let key = match rank {
            2 => "/api/odds".to_owned(),
            6 => "/account".to_owned(),
            4 | 8 | 12 | 16 => format!("/api/legacy/{}", rank / 4),
            _ => {
                item += 1;
                format!("/api/items/{item}")
            }
        };
        keys.push(key);
    }
    keys
}

/// `n` keys drawn with probability proportional to 1 / rank, from a fixed
/// seed so every run (and every front) sees the same sequence.
fn zipf_mix(keys: &[String], n: usize, seed: u64) -> Vec<String> {
    let zipf = Zipf::new(keys.len(), 1.0);
    let mut rng = SplitMix64(seed);
    (0..n)
        .map(|_| keys[zipf.sample(&mut rng)].clone())
        .collect()
}

/// Requests every path, `concurrency` at a time, in order of the list.
async fn fetch_all(
    client: &Client<HttpConnector, Empty<Bytes>>,
    front: SocketAddr,
    paths: Vec<String>,
    concurrency: usize,
) -> Result<Vec<Sample>, BoxError> {
    let paths = Arc::new(paths);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.min(paths.len()) {
        let (client, paths, next) = (client.clone(), Arc::clone(&paths), Arc::clone(&next));
        workers.spawn(async move {
            let mut samples = Vec::new();
            while let Some(path) = paths.get(next.fetch_add(1, Ordering::Relaxed)) {
                samples.push(fetch(&client, front, path).await?);
            }
            Ok::<_, BoxError>(samples)
        });
    }
    let mut all = Vec::with_capacity(paths.len());
    while let Some(done) = workers.join_next().await {
        all.extend(done??);
    }
    Ok(all)
}

/// One GET, timed from sending the request to the end of the body.
async fn fetch(
    client: &Client<HttpConnector, Empty<Bytes>>,
    front: SocketAddr,
    path: &str,
) -> Result<Sample, BoxError> {
    // One site name for every front, as a load balancer would give all the
    // instances of one service: the host is part of the cache key, so the
    // second instance finds what the first stored in L2.
    let req = http::Request::get(format!("http://{front}{path}"))
        .header(HOST, SITE)
        .body(Empty::new())?;
    let start = Instant::now();
    let resp = client.request(req).await?;
    let status = resp.status();
    let cache_status = resp
        .headers()
        .get(&CACHE_STATUS)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    resp.into_body().collect().await?;
    let latency = start.elapsed();
    if !status.is_success() {
        return Err(format!("GET {path}: {status}").into());
    }
    Ok(Sample {
        latency,
        cache_status,
    })
}

// ---------------------------------------------------------------------------
// Report

/// One column of the table: a run, and the cache's stats if it had one.
struct Column<'a> {
    name: &'static str,
    run: &'a Run,
    stats: Option<&'a Stats>,
}

fn print_table(columns: &[Column<'_>]) {
    type Cell = fn(&Run, Option<&Stats>) -> String;
    fn stat(stats: Option<&Stats>, f: impl Fn(&Stats) -> String) -> String {
        stats.map_or_else(|| "-".to_owned(), f)
    }
    let rows: [(&str, Cell); 13] = [
        ("requests", |r, _| r.samples.len().to_string()),
        ("hits L1", |_, s| stat(s, |s| s.hits_l1.to_string())),
        ("hits L2", |_, s| stat(s, |s| s.hits_l2.to_string())),
        ("misses", |_, s| stat(s, |s| s.misses.to_string())),
        ("stale", |_, s| stat(s, |s| s.stale.to_string())),
        ("coalesced", |_, s| stat(s, |s| s.coalesced.to_string())),
        ("passes", |_, s| stat(s, |s| s.passes.to_string())),
        ("origin calls", |r, _| r.origin_calls.to_string()),
        ("hit ratio", |_, s| {
            stat(s, |s| format!("{:.1} %", s.hit_ratio * 100.0))
        }),
        ("p50 latency", |r, _| fmt_ms(percentile(&r.samples, 0.50))),
        ("p95 latency", |r, _| fmt_ms(percentile(&r.samples, 0.95))),
        ("p99 latency", |r, _| fmt_ms(percentile(&r.samples, 0.99))),
        ("wall time", |r, _| fmt_ms(r.wall)),
    ];
    print!("{:<14}", "");
    for c in columns {
        print!(" {:>13}", c.name);
    }
    println!();
    println!("{}", "-".repeat(14 + 14 * columns.len()));
    for (name, cell) in rows {
        print!("{name:<14}");
        for c in columns {
            print!(" {:>13}", cell(c.run, c.stats));
        }
        println!();
    }
    println!();
    println!("(wall time includes the 1.2 s pause before the stale phase in every run)");
}

/// Why the cached front's p99 is about the origin's delay while its p50 is
/// a fraction of a millisecond: every request the cache could not answer
/// from storage waited for the origin.
fn explain_p99(run: &Run, stats: &Stats) {
    let paid = stats.misses + stats.coalesced + stats.revalidated + stats.passes;
    let share = paid as f64 / run.samples.len().max(1) as f64 * 100.0;
    println!();
    println!(
        "Why p99 is not a hit: misses ({}), coalesced waiters ({}: they wait for the one \
         origin call of their key), revalidations ({}) and passes ({}: /account is private) \
         all pay the origin's {} ms.",
        stats.misses,
        stats.coalesced,
        stats.revalidated,
        stats.passes,
        ORIGIN_DELAY.as_millis()
    );
    if share > 1.0 {
        println!(
            "They are {paid} of {} requests ({share:.1} %), more than 1 %, so the 99th \
             percentile is one of them; p50 is a hit.",
            run.samples.len()
        );
    } else {
        println!(
            "They are {paid} of {} requests ({share:.1} %), at most 1 %, so p99 is a hit.",
            run.samples.len()
        );
    }
}

/// How often each `Cache-Status` value came back from the cached front.
fn print_cache_status_tally(run: &Run) {
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &run.samples {
        *tally
            .entry(s.cache_status.as_deref().unwrap_or("(none)"))
            .or_default() += 1;
    }
    println!();
    println!("Cache-Status values seen by the client (cached front):");
    for (value, count) in tally {
        println!("{count:>6}  {value}");
    }
}

/// The `q` quantile of the latencies (nearest rank).
fn percentile(samples: &[Sample], q: f64) -> Duration {
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    latencies.sort_unstable();
    let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len().max(1));
    latencies.get(rank - 1).copied().unwrap_or_default()
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
