//! The server half of the end-to-end load benchmark (`bench-peers/e2e.sh`):
//! one axum app, served four times over loopback, once per side:
//!
//! - `static`: the bare handler;
//! - `tiered`: the same handler behind `tower_tiered_cache::CacheLayer`
//!   (`Cache::builder().build()`, defaults): every request after the first
//!   is a fresh L1 hit;
//! - `tower_http_cache`: the same handler behind `tower_http_cache`'s
//!   `CacheLayer` over its `InMemoryBackend` (10 000 entries), TTL 3600 s (it
//!   ignores `max-age`; its default TTL is 60 s), otherwise default policy;
//! - `http_cache_server`: the same handler behind `http_cache_tower_server`'s
//!   `ServerCacheLayer` over `http_cache::MokaManager::default()`, default
//!   options.
//!
//! The handler answers `GET /api/item?id=42` (any method, in fact) with the
//! same 1 KiB body on every call (a clone of one shared `Bytes`),
//! `Cache-Control: max-age=3600` and `Content-Type: application/json`, and
//! counts its calls. It is a plain tower `Service` mounted with
//! `Router::route_service`, the cache layers wrapping it inside the router
//! (after routing, as `Router::layer` would put them): tower-http-cache
//! requires a `Sync` response body, which axum's `Body` is not, so the
//! handler returns `Response<Full<Bytes>>` on every side. The two peers'
//! error type is `BoxError`, so their sides add axum's `HandleErrorLayer`
//! (axum requires `Infallible`), as their own axum examples do.
//!
//! Each side gets its own listener on `127.0.0.1:0` and an identical router
//! (same paths, same routing work), plus `GET /calls`, which answers the
//! number of times that side's handler was called (uncached, plain text).
//! Once every listener is bound, one line goes to stdout:
//!
//! ```text
//! E2E_ADDRS static=127.0.0.1:41001 tiered=127.0.0.1:41002 tower_http_cache=127.0.0.1:41003 http_cache_server=127.0.0.1:41004
//! ```
//!
//! It runs until SIGTERM or ctrl-c, then stops accepting, lets the open
//! connections finish (at most 3 s) and prints the handler call counts on
//! stderr.
//!
//! ```text
//! cargo run --release --example e2e_server -- [--workers N]
//! ```
//!
//! `--workers N` (default 1): tokio worker threads. The default suits the
//! 2-core machine the script runs on, where `wrk` (one thread) needs the
//! other core; every side runs on the same runtime, so they compete equally.
//! Only loopback is ever bound. Run the whole benchmark with `./e2e.sh`.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{BoxError, Router};
use bytes::Bytes;
use http_body_util::Full;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::{Layer, Service};

/// The body's length: 1 KiB.
const BODY_LEN: usize = 1024;
/// The benchmarked route (the script requests this path).
const ITEM_PATH: &str = "/api/item";
/// How long open connections may take to finish after the signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

type Calls = Arc<AtomicU64>;

/// The shared 1 KiB body buffer, deterministic bytes (the same as the
/// criterion benches' origin).
fn body_buffer() -> Bytes {
    let v: Vec<u8> = (0..BODY_LEN).map(|i| b'a' + (i % 26) as u8).collect();
    Bytes::from(v)
}

/// The handler: the same response on every call, counted. A plain tower
/// service (what `tower::service_fn` would give), so that every side wraps
/// the very same thing.
#[derive(Clone)]
struct Handler {
    buf: Bytes,
    calls: Calls,
}

impl Service<Request<Body>> for Handler {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<Body>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut resp = Response::new(Full::new(self.buf.clone()));
        let h = resp.headers_mut();
        h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=3600"));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        ready(Ok(resp))
    }
}

fn handler(buf: Bytes, calls: Calls) -> Handler {
    Handler { buf, calls }
}

/// What a peer's `BoxError` becomes (never seen on a hit).
async fn cache_error(err: BoxError) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("cache: {err}"))
}

/// One side's router: `item` on [`ITEM_PATH`], and `GET /calls`.
fn app<S>(item: S, calls: Calls) -> Router
where
    S: Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    Router::new().route_service(ITEM_PATH, item).route(
        "/calls",
        get(move || {
            let n = calls.load(Ordering::Relaxed);
            async move { n.to_string() }
        }),
    )
}

/// The sides, in the order of the `E2E_ADDRS` line: (name, router, calls).
fn sides(buf: &Bytes) -> Result<Vec<(&'static str, Router, Calls)>, BoxError> {
    let mut out = Vec::new();

    let calls = Calls::default();
    let svc = handler(buf.clone(), calls.clone());
    out.push(("static", app(svc, calls.clone()), calls));

    let calls = Calls::default();
    let cache = tower_tiered_cache::Cache::builder().build()?;
    let svc = tower_tiered_cache::CacheLayer::new(cache).layer(handler(buf.clone(), calls.clone()));
    out.push(("tiered", app(svc, calls.clone()), calls));

    // tower-http-cache never reads `max-age`: its TTL is configuration
    // (default 60 s). Set it to the response's hour.
    let calls = Calls::default();
    let layer = tower_http_cache::layer::CacheLayer::builder(
        tower_http_cache::backend::memory::InMemoryBackend::new(10_000),
    )
    .ttl(Duration::from_secs(3600))
    .build();
    let svc =
        HandleErrorLayer::new(cache_error).layer(layer.layer(handler(buf.clone(), calls.clone())));
    out.push(("tower_http_cache", app(svc, calls.clone()), calls));

    let calls = Calls::default();
    let layer = http_cache_tower_server::ServerCacheLayer::new(http_cache::MokaManager::default());
    let svc =
        HandleErrorLayer::new(cache_error).layer(layer.layer(handler(buf.clone(), calls.clone())));
    out.push(("http_cache_server", app(svc, calls.clone()), calls));

    Ok(out)
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("e2e_server: ctrl-c handler: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                eprintln!("e2e_server: SIGTERM handler: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

async fn run() -> Result<(), BoxError> {
    let buf = body_buffer();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = JoinSet::new();
    let mut addrs: Vec<(&str, SocketAddr)> = Vec::new();
    let mut counters: Vec<(&str, Calls)> = Vec::new();

    for (name, router, calls) in sides(&buf)? {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        // The same socket options on every side.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let mut stop = stop_rx.clone();
        servers.spawn(async move {
            let res = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = res {
                eprintln!("e2e_server: {name} on {addr}: {e}");
            }
        });
        addrs.push((name, addr));
        counters.push((name, calls));
    }

    let line: Vec<String> = addrs.iter().map(|(n, a)| format!("{n}={a}")).collect();
    // `println!` flushes stdout at the newline only on a terminal: the
    // script reads a pipe or a file, so flush explicitly.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "E2E_ADDRS {}", line.join(" "))?;
        out.flush()?;
    }

    shutdown_signal().await;
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!("e2e_server: connections still open after {SHUTDOWN_GRACE:?}, exiting anyway");
        servers.abort_all();
    }

    let counts: Vec<String> = counters
        .iter()
        .map(|(n, c)| format!("{n}={}", c.load(Ordering::Relaxed)))
        .collect();
    eprintln!("E2E_CALLS {}", counts.join(" "));
    Ok(())
}

/// `--workers N` (default 1).
fn parse_workers() -> Result<usize, BoxError> {
    let mut workers = 1;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--workers" => {
                let v = args.next().ok_or("--workers needs a value")?;
                workers = v.parse().map_err(|e| format!("--workers {v}: {e}"))?;
                if workers == 0 {
                    return Err("--workers must be at least 1".into());
                }
            }
            "-h" | "--help" => {
                println!("usage: e2e_server [--workers N]   (tokio worker threads, default 1)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (see --help)").into()),
        }
    }
    Ok(workers)
}

fn main() -> Result<(), BoxError> {
    let workers = parse_workers()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    rt.block_on(run())
}
