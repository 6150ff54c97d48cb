//! A tower client: a hyper-util `Client` behind `CacheLayer` in private
//! mode, calling two slow "services" it knows by host name.
//!
//! ```text
//! cargo run --release --example client
//! ```
//!
//! It starts two axum origins on 127.0.0.1 (ephemeral ports) that take
//! 30 ms per call and answer `Cache-Control: max-age=5`, resolves the host
//! names `users.svc` and `catalog.svc` to them with a custom resolver (no
//! DNS), makes 200 requests over 10 URLs through the cache, and prints the
//! requests, origin calls, hits, median latencies (cached hits, misses, and
//! a few calls that bypass the cache) and the per-service stats of
//! `Cache::label_stats()` (labelled by upstream host). It exits by itself
//! in about a second.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header::CACHE_CONTROL;
use axum::http::Uri;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Layer, Service, ServiceExt};
use tower_tiered_cache::{Cache, CacheLayer, CacheMode, CACHE_STATUS};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long each origin takes per call.
const ORIGIN_DELAY: Duration = Duration::from_millis(30);
/// Requests made through the cache.
const REQUESTS: usize = 200;
/// Calls made straight to the origins, bypassing the cache, for comparison.
const UNCACHED: usize = 10;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Two upstream services, each counting the calls that reach it.
    let users_calls = Arc::new(AtomicU64::new(0));
    let catalog_calls = Arc::new(AtomicU64::new(0));
    let users = serve(origin("users", Arc::clone(&users_calls))).await?;
    let catalog = serve(origin("catalog", Arc::clone(&catalog_calls))).await?;

    // The client: hyper-util's pooled client, resolving our two names.
    let hosts = Hosts::new([("users.svc", users), ("catalog.svc", catalog)]);
    let client: Client<HttpConnector<Hosts>, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new_with_resolver(hosts));

    // The cache in front of it. Private mode: this is one client's cache,
    // so `Cache-Control: private` responses may be kept too.
    let cache = Cache::builder().mode(CacheMode::Private).build()?;
    let cached = CacheLayer::new(cache.clone()).layer(client.clone());

    println!("tower client: hyper-util Client behind CacheLayer (private mode)");
    println!("  users.svc   -> http://{users}");
    println!("  catalog.svc -> http://{catalog}");
    println!(
        "  each origin takes {} ms per call and answers Cache-Control: max-age=5",
        ORIGIN_DELAY.as_millis()
    );
    println!();

    // 10 URLs, 5 per service, visited in an interleaved order.
    let urls: Vec<String> = (1..=5)
        .map(|i| format!("http://users.svc/users/{i}"))
        .chain((1..=5).map(|i| format!("http://catalog.svc/items/{i}")))
        .collect();
    let mut hit_ms = Vec::new();
    let mut miss_ms = Vec::new();
    let mut other = 0usize;
    for i in 0..REQUESTS {
        let url = &urls[(i * 3 + i / urls.len()) % urls.len()];
        let started = Instant::now();
        let (status, cache_status) = get(cached.clone(), url).await?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if status != 200 {
            return Err(format!("{url}: status {status}").into());
        }
        if cache_status.contains("; hit") {
            hit_ms.push(ms);
        } else if cache_status.contains("fwd=") {
            miss_ms.push(ms);
        } else {
            other += 1;
        }
    }

    // What reached the origins through the cache.
    let users_n = users_calls.load(Ordering::Relaxed);
    let catalog_n = catalog_calls.load(Ordering::Relaxed);

    // A few calls that bypass the cache, for comparison.
    let mut uncached_ms = Vec::new();
    for url in urls.iter().cycle().take(UNCACHED) {
        let started = Instant::now();
        get(client.clone(), url).await?;
        uncached_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }

    let stats = cache.stats();
    println!("{:<22}{:>10}", "requests", REQUESTS);
    println!(
        "{:<22}{:>10}   (users {users_n}, catalog {catalog_n})",
        "origin calls",
        users_n + catalog_n
    );
    println!("{:<22}{:>10}", "hits", stats.hits);
    println!("{:<22}{:>10}", "misses", stats.misses);
    if other > 0 {
        println!("{:<22}{:>10}", "other", other);
    }
    println!("{:<22}{:>10.2}", "hit ratio", stats.hit_ratio);
    println!();
    println!("median latency (ms, client side)");
    println!(
        "  {:<20}{:>10.3}   ({} requests)",
        "cached hit",
        median(&mut hit_ms),
        hit_ms.len()
    );
    println!(
        "  {:<20}{:>10.3}   ({} requests)",
        "miss via the cache",
        median(&mut miss_ms),
        miss_ms.len()
    );
    println!(
        "  {:<20}{:>10.3}   ({} requests)",
        "uncached",
        median(&mut uncached_ms),
        uncached_ms.len()
    );
    println!();
    println!("per service (Cache::label_stats(), labelled by upstream host)");
    println!(
        "  {:<14}{:>9}{:>7}{:>8}{:>11}{:>10}",
        "label", "requests", "hits", "misses", "hit ratio", "mean ms"
    );
    for l in cache.label_stats() {
        println!(
            "  {:<14}{:>9}{:>7}{:>8}{:>11.2}{:>10.3}",
            l.label, l.requests, l.hits, l.misses, l.hit_ratio, l.mean_latency_ms
        );
    }
    Ok(())
}

/// `GET url` through `svc`: the status and `Cache-Status` (empty when
/// absent), with the body read to its end.
async fn get<S, B>(svc: S, url: &str) -> Result<(u16, String), BoxError>
where
    S: Service<Request<Empty<Bytes>>, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let req = Request::get(url).body(Empty::new())?;
    let resp = svc.oneshot(req).await.map_err(Into::into)?;
    let status = resp.status().as_u16();
    let cache_status = resp
        .headers()
        .get(&CACHE_STATUS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    resp.into_body().collect().await.map_err(Into::into)?;
    Ok((status, cache_status))
}

/// The median of `v` (0 when empty).
fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A slow origin: every path answers after [`ORIGIN_DELAY`], fresh for 5 s.
fn origin(name: &'static str, calls: Arc<AtomicU64>) -> Router {
    Router::new()
        .fallback(
            move |State(calls): State<Arc<AtomicU64>>, uri: Uri| async move {
                calls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(ORIGIN_DELAY).await;
                (
                    [(CACHE_CONTROL, "max-age=5")],
                    format!("{name}: {}\n", uri.path()),
                )
            },
        )
        .with_state(calls)
}

/// Serves `app` on an ephemeral port of 127.0.0.1 in the background.
async fn serve(app: Router) -> Result<SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("origin on {addr} failed: {e}");
        }
    });
    Ok(addr)
}

/// A resolver for hyper-util's `HttpConnector` that knows a fixed set of
/// names, so the example needs no DNS.
#[derive(Clone)]
struct Hosts(Arc<HashMap<String, SocketAddr>>);

impl Hosts {
    fn new<const N: usize>(hosts: [(&str, SocketAddr); N]) -> Self {
        Self(Arc::new(
            hosts.into_iter().map(|(n, a)| (n.to_owned(), a)).collect(),
        ))
    }
}

impl Service<Name> for Hosts {
    type Response = std::iter::Once<SocketAddr>;
    type Error = io::Error;
    type Future = std::future::Ready<Result<Self::Response, io::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        std::future::ready(
            self.0
                .get(name.as_str())
                .map(|addr| std::iter::once(*addr))
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.as_str().to_owned())),
        )
    }
}
