//! A self-contained demo: a slow origin, an axum front that forwards to it
//! through a hyper-util client, and the same front again wrapped in
//! `CacheLayer`. The same workload runs against both and the numbers are
//! printed side by side.
//!
//! ```text
//! cargo run --release --example demo
//! ```
//!
//! Everything listens on 127.0.0.1 with an ephemeral port, the workload is
//! bounded (about 1 100 requests) and the program exits by itself in a few
//! seconds.

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
use tokio::task::JoinSet;
use tower_tiered_cache::{Cache, CacheLayer, Route, Stats, CACHE_STATUS};

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

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The origin, and a counter of the requests it actually served.
    let origin_calls = Arc::new(AtomicU64::new(0));
    let origin = serve(origin_router(Arc::clone(&origin_calls))).await?;

    // The cache: RFC 9111 defaults, plus one rule for the route whose origin
    // sends no caching headers at all.
    let cache = Cache::builder()
        .route(
            Route::prefix("/api/legacy")
                .ttl(Duration::from_secs(30))
                .force(),
        )
        .build()?;

    // Two fronts over the same forwarding handler: one cached, one not.
    let front = front_router(origin);
    let cached_front = serve(front.clone().layer(CacheLayer::new(cache.clone()))).await?;
    let plain_front = serve(front).await?;

    println!(
        "origin   http://{origin}  ({} ms per request)",
        ORIGIN_DELAY.as_millis()
    );
    println!("cached   http://{cached_front}  (axum + CacheLayer, forwards to the origin)");
    println!("uncached http://{plain_front}  (the same front without the cache)");
    println!();

    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();

    println!("running the workload against the uncached front...");
    let uncached = run_workload(&client, plain_front, &origin_calls).await?;
    println!("running the workload against the cached front...");
    let cached = run_workload(&client, cached_front, &origin_calls).await?;
    println!();

    let stats = cache.stats();
    print_table(&cached, &uncached, &stats);
    print_cache_status_tally(&cached);
    println!();
    println!("Cache::stats() as JSON:");
    println!("{}", serde_json::to_string_pretty(&stats)?);
    Ok(())
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
/// seed so every run (and both fronts) sees the same sequence.
fn zipf_mix(keys: &[String], n: usize, seed: u64) -> Vec<String> {
    let weights: Vec<f64> = (1..=keys.len()).map(|rank| 1.0 / rank as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut rng = SplitMix64(seed);
    (0..n)
        .map(|_| {
            let mut x = rng.next_f64() * total;
            let pick = weights
                .iter()
                .position(|w| {
                    x -= w;
                    x < 0.0
                })
                .unwrap_or(keys.len() - 1);
            keys[pick].clone()
        })
        .collect()
}

/// A tiny deterministic PRNG (SplitMix64), enough for a demo.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
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
    let uri: Uri = format!("http://{front}{path}").parse()?;
    let start = Instant::now();
    let resp = client.get(uri).await?;
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

fn print_table(cached: &Run, uncached: &Run, stats: &Stats) {
    let dash = || "-".to_owned();
    let rows: [(&str, String, String); 11] = [
        (
            "requests",
            cached.samples.len().to_string(),
            uncached.samples.len().to_string(),
        ),
        ("hits", stats.hits.to_string(), dash()),
        ("misses", stats.misses.to_string(), dash()),
        ("stale", stats.stale.to_string(), dash()),
        ("coalesced", stats.coalesced.to_string(), dash()),
        ("passes", stats.passes.to_string(), dash()),
        (
            "origin calls",
            cached.origin_calls.to_string(),
            uncached.origin_calls.to_string(),
        ),
        (
            "hit ratio",
            format!("{:.1} %", stats.hit_ratio * 100.0),
            dash(),
        ),
        (
            "p50 latency",
            fmt_ms(percentile(&cached.samples, 0.50)),
            fmt_ms(percentile(&uncached.samples, 0.50)),
        ),
        (
            "p99 latency",
            fmt_ms(percentile(&cached.samples, 0.99)),
            fmt_ms(percentile(&uncached.samples, 0.99)),
        ),
        ("wall time", fmt_ms(cached.wall), fmt_ms(uncached.wall)),
    ];
    println!("{:<14} {:>12} {:>12}", "", "cached", "uncached");
    println!("{}", "-".repeat(40));
    for (name, c, u) in rows {
        println!("{name:<14} {c:>12} {u:>12}");
    }
    println!();
    println!("(wall time includes the 1.2 s pause before the stale phase in both runs)");
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
