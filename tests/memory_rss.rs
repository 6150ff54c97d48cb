//! Memory as an operator sees it: a real origin, a real caching server in
//! front of it (hyper server › `CacheLayer` › hyper-util client, as
//! `examples/proxy.rs` is built), clients over real TCP, and the process's
//! resident set size read from `/proc/self/status` (`VmRSS`).
//!
//! A `Bytes` or `HeaderValue` handed over by hyper is a view into the
//! connection's read buffer; an entry that keeps one pins the whole buffer,
//! and `l1_capacity_bytes` no longer bounds memory. The scenarios:
//!
//! - `vary_with_junk_headers`: 400 `Vary: Accept-Encoding` entries of ~1 KB,
//!   each requested on a fresh connection whose request carries a 300 KB
//!   junk header (the stored `Accept-Encoding` value was a view into that
//!   request's read buffer).
//! - `small_after_large`: one client alternating a 2 MB response (not
//!   stored) and three small cacheable ones, ×300 (the small ones' headers
//!   and bodies were views into the upstream connection's read buffer,
//!   grown by the 2 MB response).
//! - `weight_is_honest`: a counting global allocator (`stats_alloc`; the
//!   crate forbids `unsafe`) measures the heap an L1 filled past its
//!   capacity holds (the live bytes `Cache::clear` frees) against the L1
//!   weight it reports.
//!
//! RSS is process-wide, so everything runs serially in ONE `#[test]`
//! (nothing else in this binary allocates meanwhile); each scenario has
//! its own cache and server, and measures its baseline after a warm-up (the
//! runtime's threads, the allocator's arenas, connection buffers). Figures
//! are printed (`cargo test --test memory_rss -- --nocapture`) and every
//! bound is checked only after all scenarios ran, so one failure still
//! shows every figure.

use std::alloc::System;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tower::{service_fn, Layer};
use tower_tiered_cache::{Cache, CacheLayer, CACHE_STATUS};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const MIB: u64 = 1024 * 1024;

/// The L1 budget of the RSS scenarios.
const L1_BUDGET: u64 = 16 * MIB;

/// The bound on any single exchange.
const DEADLINE: Duration = Duration::from_secs(20);

/// A ~1 KB body.
fn small_body(i: &str) -> String {
    let mut s = format!("entry {i}\n");
    while s.len() < 1000 {
        s.push_str("0123456789abcdef");
    }
    s
}

/// The process's resident set size, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("a VmRSS line");
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("VmRSS in kB");
    kb * 1024
}

/// Heap bytes allocated and not yet freed, as the counting allocator sees
/// them (it counts a reallocation's growth or shrinking in those two).
fn live_heap() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

fn mb(bytes: i64) -> f64 {
    bytes as f64 / MIB as f64
}

// ---------------------------------------------------------------------------
// The origin and the caching server

/// The origin: `/v/{i}` (~1 KB, `Vary: Accept-Encoding`), `/s/{i}` (~1 KB),
/// both fresh for 10 minutes, and `/big` (2 MB, `no-store`).
fn origin_app() -> Router {
    let big = Bytes::from(vec![b'x'; 2 * MIB as usize]);
    Router::new()
        .route(
            "/v/{i}",
            get(|Path(i): Path<String>| async move {
                Response::builder()
                    .header("cache-control", "max-age=600")
                    .header("vary", "accept-encoding")
                    .header("content-type", "text/plain; charset=utf-8")
                    .header("etag", format!("\"v-{i}\""))
                    .body(axum::body::Body::from(small_body(&i)))
                    .expect("response")
            }),
        )
        .route(
            "/s/{i}",
            get(|Path(i): Path<String>| async move {
                Response::builder()
                    .header("cache-control", "max-age=600")
                    .header("content-type", "text/plain; charset=utf-8")
                    .header("etag", format!("\"s-{i}\""))
                    .header("surrogate-key", format!("page:{i} section:small"))
                    .body(axum::body::Body::from(small_body(&i)))
                    .expect("response")
            }),
        )
        .route(
            "/big",
            get(move || {
                let big = big.clone();
                async move {
                    Response::builder()
                        .header("cache-control", "no-store")
                        .body(axum::body::Body::from(big))
                        .expect("response")
                }
            }),
        )
}

/// A server task, aborted (with its connections) when dropped.
struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
    /// Connections accepted and not yet finished (their tasks ended or
    /// were dropped).
    open: Arc<AtomicUsize>,
}

/// Lowers a server's open-connection count when its connection's task ends
/// or is dropped.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(open))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `svc` on a loopback port (HTTP/1.1), counting open connections.
async fn serve<S, B>(svc: S) -> Server
where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let open = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&open);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => accepted.expect("accept"),
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            };
            let svc = TowerToHyperService::new(svc.clone());
            let open = Open::new(&counter);
            conns.spawn(async move {
                let _open = open;
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Server { addr, task, open }
}

async fn serve_origin() -> Server {
    serve(origin_app()).await
}

/// The caching server: hyper › `CacheLayer` › a pooled hyper-util client
/// forwarding to `origin`.
async fn serve_cache(cache: &Cache, origin: SocketAddr) -> Server {
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    let forward = service_fn(move |req: Request<Incoming>| {
        let client = client.clone();
        async move {
            let (mut parts, body) = req.into_parts();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = format!("http://{origin}{path}").parse().expect("uri");
            client.request(Request::from_parts(parts, body)).await
        }
    });
    serve(CacheLayer::new(cache.clone()).layer(forward)).await
}

/// One client connection.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    task: JoinHandle<()>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Self { sender, task }
    }

    /// Sends a `GET` and reads the response to its end; returns the body's
    /// length and the `Cache-Status`.
    async fn get(
        &mut self,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (usize, String) {
        let mut req = Request::get(path).header("host", addr.to_string());
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let req = req.body(Empty::new()).expect("request");
        let what = format!("GET {path}");
        timeout(DEADLINE, async {
            self.sender.ready().await.expect("connection ready");
            let resp = self.sender.send_request(req).await.expect("response");
            assert_eq!(resp.status(), 200, "{what}");
            let status = resp
                .headers()
                .get(&CACHE_STATUS)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let mut body = resp.into_body();
            let mut n = 0;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.expect("body").into_data() {
                    n += data.len();
                }
            }
            (n, status)
        })
        .await
        .unwrap_or_else(|_| panic!("{what} timed out"))
    }

    /// Closes the connection and waits until it is closed.
    async fn close(self) {
        drop(self.sender);
        let _ = timeout(DEADLINE, self.task).await;
    }
}

/// Waits until connections that were closed have finished on the server
/// side: `server` has `open` connections left. The deadline only bounds a
/// hang.
async fn settle(server: &Arc<AtomicUsize>, open: usize) {
    let deadline = Instant::now() + DEADLINE;
    while server.load(Ordering::SeqCst) != open {
        assert!(
            Instant::now() < deadline,
            "{} connection(s) open, not {open}",
            server.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ---------------------------------------------------------------------------
// The scenarios

/// What one scenario measured.
struct Figures {
    name: &'static str,
    rss_growth: i64,
    heap_growth: i64,
    l1_bytes: u64,
    l1_entries: u64,
    took: Duration,
}

impl Figures {
    fn print(&self) {
        println!(
            "{:<24} RSS {:+8.1} MB   live heap {:+8.1} MB   L1 weight {:6.2} MB ({} entries)   {:.1} s",
            self.name,
            mb(self.rss_growth),
            mb(self.heap_growth),
            mb(self.l1_bytes as i64),
            self.l1_entries,
            self.took.as_secs_f64()
        );
    }
}

fn cache(l1: u64) -> Cache {
    Cache::builder()
        .l1_capacity_bytes(l1)
        .build()
        .expect("valid configuration")
}

/// 400 `Vary` entries, each on a fresh connection with a 300 KB junk header.
async fn vary_with_junk_headers(origin: SocketAddr) -> Figures {
    let cache = cache(L1_BUDGET);
    let server = serve_cache(&cache, origin).await;
    let junk = "j".repeat(300 * 1024);
    let one = |path: String| {
        let junk = &junk;
        async move {
            let mut conn = Conn::open(server.addr).await;
            let (n, status) = conn
                .get(
                    server.addr,
                    &path,
                    &[("accept-encoding", "gzip"), ("x-junk", junk)],
                )
                .await;
            assert!(n >= 1000, "{path}: {n} bytes");
            assert!(status.contains("stored"), "{path}: {status}");
            conn.close().await;
        }
    };
    for i in 0..20 {
        one(format!("/v/warm-{i}")).await;
    }
    settle(&server.open, 0).await;
    let (rss0, heap0) = (rss(), live_heap());
    let started = Instant::now();
    for i in 0..400 {
        one(format!("/v/{i}")).await;
    }
    let took = started.elapsed();
    settle(&server.open, 0).await;
    let stats = cache.stats();
    let figures = Figures {
        name: "vary_with_junk_headers",
        rss_growth: rss() as i64 - rss0 as i64,
        heap_growth: live_heap() - heap0,
        l1_bytes: stats.l1_bytes,
        l1_entries: stats.l1_entries,
        took,
    };
    assert_eq!(stats.stores, 420, "{stats:?}");
    drop(server);
    cache.clear().await;
    figures
}

/// A 2 MB response, then three small cacheable ones.
async fn round(conn: &mut Conn, addr: SocketAddr, r: &str) {
    let (n, _) = conn.get(addr, "/big", &[]).await;
    assert_eq!(n, 2 * MIB as usize);
    for k in 0..3 {
        let path = format!("/s/{r}-{k}");
        let (n, status) = conn.get(addr, &path, &[]).await;
        assert!(n >= 1000, "{path}: {n} bytes");
        assert!(status.contains("stored"), "{path}: {status}");
    }
}

/// One client: a 2 MB response, then three small cacheable ones, ×300.
async fn small_after_large(origin: SocketAddr) -> Figures {
    let cache = cache(L1_BUDGET);
    let server = serve_cache(&cache, origin).await;
    let mut conn = Conn::open(server.addr).await;
    for r in 0..5 {
        round(&mut conn, server.addr, &format!("warm-{r}")).await;
    }
    settle(&server.open, 1).await;
    let (rss0, heap0) = (rss(), live_heap());
    let started = Instant::now();
    for r in 0..300 {
        round(&mut conn, server.addr, &r.to_string()).await;
    }
    let took = started.elapsed();
    settle(&server.open, 1).await;
    let stats = cache.stats();
    let figures = Figures {
        name: "small_after_large",
        rss_growth: rss() as i64 - rss0 as i64,
        heap_growth: live_heap() - heap0,
        l1_bytes: stats.l1_bytes,
        l1_entries: stats.l1_entries,
        took,
    };
    assert_eq!(stats.stores, 3 * 305, "{stats:?}");
    conn.close().await;
    drop(server);
    cache.clear().await;
    figures
}

/// Fills a 2 MiB L1 past its capacity (with evictions) through the server:
/// `Vary` entries requested with a 16 KB junk header and small entries
/// after 2 MB responses, on one keep-alive connection, each requested
/// twice (stored, then a hit). Returns the L1
/// weight and the live heap bytes `clear` frees once the server is gone.
async fn weight_is_honest(origin: &Server) -> (u64, i64, u64, Duration) {
    let cache = cache(2 * MIB);
    let server = serve_cache(&cache, origin.addr).await;
    let junk = "j".repeat(16 * 1024);
    let mut conn = Conn::open(server.addr).await;
    let started = Instant::now();
    for i in 0..1600 {
        if i % 200 == 0 {
            conn.get(server.addr, "/big", &[]).await;
        }
        let (path, headers) = if i % 2 == 0 {
            (
                format!("/v/h{i}"),
                vec![("accept-encoding", "br, gzip"), ("x-junk", &junk[..])],
            )
        } else {
            (format!("/s/h{i}"), vec![])
        };
        let (_, status) = conn.get(server.addr, &path, &headers).await;
        assert!(status.contains("stored"), "{path}: {status}");
        // Read again (a hit unless L1 evicted it already), so that
        // entries hold their hit-response template too.
        conn.get(server.addr, &path, &headers).await;
    }
    let took = started.elapsed();
    conn.close().await;
    // Gone: the server's connections, and with its client's pool, the
    // pooled connections to the origin.
    let open = Arc::clone(&server.open);
    drop(server);
    settle(&open, 0).await;
    settle(&origin.open, 0).await;
    let stats = cache.stats();
    assert!(stats.evictions > 0, "L1 was not filled: {stats:?}");
    let before = live_heap();
    cache.clear().await;
    let held = before - live_heap();
    (stats.l1_bytes, held, stats.l1_entries, took)
}

#[test]
fn memory_stays_within_the_l1_budget() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let origin = serve_origin().await;
        let (weight, held, entries, took) = weight_is_honest(&origin).await;
        println!(
            "{:<24} L1 weight {:.2} MB ({entries} entries), heap held {:.2} MB (x{:.2}), {:.1} s",
            "weight_is_honest",
            mb(weight as i64),
            mb(held),
            held as f64 / weight as f64,
            took.as_secs_f64()
        );
        let a = vary_with_junk_headers(origin.addr).await;
        a.print();
        let b = small_after_large(origin.addr).await;
        b.print();

        let budget = 2 * L1_BUDGET as i64;
        let mut failures = Vec::new();
        for f in [&a, &b] {
            if f.rss_growth > budget {
                failures.push(format!(
                    "{}: RSS grew {:.1} MB, over 2x the L1 budget ({:.0} MB)",
                    f.name,
                    mb(f.rss_growth),
                    mb(budget)
                ));
            }
        }
        // The weight bounds what the entries hold: allocator-exact bytes
        // within a small factor of it (the weight also counts a per
        // allocation overhead the counting allocator does not see).
        if held as f64 > 1.25 * weight as f64 {
            failures.push(format!(
                "weight_is_honest: L1 entries hold {:.2} MB of heap for a weight of {:.2} MB",
                mb(held),
                mb(weight as i64)
            ));
        }
        if (held as f64) < 0.5 * weight as f64 {
            failures.push(format!(
                "weight_is_honest: the weight ({:.2} MB) overstates the heap held ({:.2} MB)",
                mb(weight as i64),
                mb(held)
            ));
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    });
}
