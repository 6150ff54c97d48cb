//! A cached `reqwest` client in front of a slow upstream.
//!
//! Starts its own origin on a loopback port with two "services" (`/odds/…`
//! and `/teams/…`, 40 ms per call, `Cache-Control: max-age=2,
//! stale-while-revalidate=10`), builds a `reqwest-middleware` client with
//! the cache first, makes a few hundred requests over a handful of URLs
//! (bursts of concurrent ones, then sequential ones, for about 3.5 s so
//! entries go stale and are refreshed in the background), and prints how
//! many origin calls the cache saved, the cache's counters and one row per
//! service from `Cache::label_stats()`.
//!
//! ```text
//! cargo run --release --features reqwest --example reqwest_client
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::Uri;
use axum::Router;
use reqwest_middleware::ClientWithMiddleware;
use tower_tiered_cache::reqwest::ClientBuilder;
use tower_tiered_cache::{Cache, CacheMode};

/// The URLs the client reads, by path.
const PATHS: [&str; 8] = [
    "/odds/football",
    "/odds/tennis",
    "/odds/basketball",
    "/odds/hockey",
    "/odds/golf",
    "/teams/home",
    "/teams/away",
    "/teams/standings",
];

/// Rounds of requests, and the pause between them.
const ROUNDS: usize = 8;
const PAUSE: Duration = Duration::from_millis(400);
/// Each round: this many requests at once, then this many one by one.
const BURST: usize = 32;
const SEQUENTIAL: usize = 8;

/// One GET, its body read whole; whether it succeeded.
async fn fetch(client: &ClientWithMiddleware, url: &str) -> bool {
    match client.get(url).send().await {
        Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The origin: 40 ms per call, counted here (refreshes included).
    let origin_calls = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&origin_calls);
    let app = Router::new().fallback(move |uri: Uri| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(Duration::from_millis(40)).await;
            (
                [("cache-control", "max-age=2, stale-while-revalidate=10")],
                format!("{} (origin call {n})", uri.path()),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The cache (private: one client's cache), labelled by service: the
    // first path segment.
    let cache = Cache::builder()
        .mode(CacheMode::Private)
        .label_fn(|p| p.uri.path().split('/').nth(1).map(str::to_owned))
        .build()?;
    let client = ClientBuilder::new(reqwest::Client::new(), cache.clone()).build();

    let started = Instant::now();
    let mut requests = 0u64;
    let mut errors = 0u64;
    for round in 0..ROUNDS {
        // A burst of concurrent requests (the first one finds a cold cache:
        // one origin call per URL, the rest coalesced).
        let mut burst = tokio::task::JoinSet::new();
        for i in 0..BURST {
            let client = client.clone();
            let url = format!("http://{addr}{}", PATHS[(i + round) % PATHS.len()]);
            burst.spawn(async move { fetch(&client, &url).await });
        }
        while let Some(done) = burst.join_next().await {
            requests += 1;
            if !matches!(done, Ok(true)) {
                errors += 1;
            }
        }
        // Then some one by one.
        for i in 0..SEQUENTIAL {
            let url = format!("http://{addr}{}", PATHS[(i * 3 + round) % PATHS.len()]);
            requests += 1;
            if !fetch(&client, &url).await {
                errors += 1;
            }
        }
        if round + 1 < ROUNDS {
            tokio::time::sleep(PAUSE).await;
        }
    }
    let took = started.elapsed();
    // Let background refreshes finish (bounded).
    let deadline = Instant::now() + Duration::from_secs(2);
    while cache.stats().in_flight > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let origin = origin_calls.load(Ordering::SeqCst);
    let stats = cache.stats();
    let saved = requests.saturating_sub(origin);
    println!(
        "{requests} requests over {} URLs in {:.2} s ({errors} errors)",
        PATHS.len(),
        took.as_secs_f64()
    );
    println!("requests made        {requests:>6}");
    println!(
        "origin calls         {origin:>6}   (counted at the origin, background refreshes included)"
    );
    println!(
        "origin calls saved   {saved:>6}   ({:.1}%)",
        100.0 * saved as f64 / requests.max(1) as f64
    );
    println!(
        "cache                hits {}, misses {}, stale {}, coalesced {}, refreshes {} ok / {} failed",
        stats.hits, stats.misses, stats.stale, stats.coalesced, stats.refresh_ok, stats.refresh_failed
    );
    println!(
        "                     {} lookups counted, {} upstream calls, hit ratio {:.3}",
        stats.requests, stats.upstream_calls, stats.hit_ratio
    );
    println!();
    println!(
        "{:<8} {:>8} {:>6} {:>6} {:>7} {:>10} {:>8} {:>10}",
        "service", "requests", "hits", "stale", "misses", "coalesced", "ratio", "mean ms"
    );
    for row in cache.label_stats() {
        println!(
            "{:<8} {:>8} {:>6} {:>6} {:>7} {:>10} {:>8.3} {:>10.3}",
            row.label,
            row.requests,
            row.hits,
            row.stale,
            row.misses,
            row.coalesced,
            row.hit_ratio,
            row.mean_latency_ms
        );
    }
    if errors > 0 {
        return Err(format!("{errors} requests failed").into());
    }
    Ok(())
}
