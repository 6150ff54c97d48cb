//! The servers `benches/proxy_e2e.sh` measures `examples/proxy.rs` against,
//! and the origin it puts behind both. One mode per process, so that each
//! side's CPU time is its own:
//!
//! ```text
//! bench_refs origin      [--listen ADDR]
//! bench_refs plain-proxy --upstream ADDR [--listen ADDR]
//! bench_refs static      [--listen ADDR]
//! bench_refs static-hit-head [--listen ADDR]
//! bench_refs l2-ref      --redis URL [--keys N] [--listen ADDR]
//! ```
//!
//! - `origin`: answers any path with the bytes [`route`] gives it: `/pass…`
//!   1 KiB with `Cache-Control: no-store`, `/hit64k…` 64 KiB, anything else
//!   (`/hit1k…`, `/l2/N`) 1 KiB, both `public, max-age=3600`.
//! - `plain-proxy`: a reverse proxy without a cache, as a tuned hyper-util
//!   proxy is written: one pooled HTTP/1 client (keep-alive, `TCP_NODELAY`),
//!   hop-by-hop headers removed both ways and `Via` added (as
//!   `examples/proxy.rs` does), the rest of the head moved, not copied, and
//!   the upstream's body streamed back as it is (no boxing).
//! - `static`: the origin's answer for the path from a static handler (the
//!   same `Bytes`, the same headers): what a cached hit should cost.
//! - `static-hit-head`: `static` with the head `examples/proxy.rs` sends
//!   for an L1 hit, the three fields it adds to the origin's (`Age`,
//!   `Cache-Status`, `Via`) as constants: the same bytes on the wire as the
//!   proxy's hit (an information row of the bench).
//! - `l2-ref`: stores `--keys` bodies of 1 KiB in Redis at start
//!   (`bench-ref:/l2/0` …), then answers `GET /l2/N` with a raw Redis `GET`
//!   of that key over one multiplexed connection: an L2 hit's floor.
//!
//! Every mode prints `listening on http://ADDR` once it accepts (port 0,
//! the default, picks a free port) and runs until killed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AGE, CACHE_CONTROL, CONTENT_TYPE, HOST, VIA};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

#[path = "support/headers.rs"]
mod headers;

use headers::strip_hop_by_hop;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The bytes every body is cut from.
static BODY: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// The key prefix of `l2-ref`'s values.
const L2_PREFIX: &str = "bench-ref:";

const USAGE: &str = "usage: bench_refs origin|plain-proxy|static|static-hit-head|l2-ref \
                     [--listen ADDR] [--upstream ADDR] [--redis URL] [--keys N]";

/// The body and `Cache-Control` the origin answers `path` with.
fn route(path: &str) -> (Bytes, &'static str) {
    if path.starts_with("/pass") {
        (Bytes::from_static(&BODY[..1024]), "no-store")
    } else if path.starts_with("/hit64k") {
        (Bytes::from_static(&BODY[..]), "public, max-age=3600")
    } else {
        (Bytes::from_static(&BODY[..1024]), "public, max-age=3600")
    }
}

/// A `200` with `body` and the origin's headers.
fn answer(body: Bytes, cache_control: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    let h = resp.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static(cache_control));
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}

/// [`answer`] with the head `examples/proxy.rs` sends for an L1 hit of
/// it: `Age` and `Cache-Status` first and `Via` last, around the origin's
/// fields (constants, inserted in that order into an empty map).
fn answer_as_hit(body: Bytes, cache_control: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    let h = resp.headers_mut();
    h.insert(AGE, HeaderValue::from_static("0"));
    h.insert(
        HeaderName::from_static("cache-status"),
        HeaderValue::from_static("tower-tiered-cache; hit; detail=l1"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static(cache_control));
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(VIA, HeaderValue::from_static("1.1 tower-tiered-cache"));
    resp
}

struct Args {
    mode: String,
    listen: SocketAddr,
    upstream: Option<String>,
    redis: Option<String>,
    keys: u32,
}

fn args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mode = it.next().ok_or(USAGE)?;
    let mut args = Args {
        mode,
        listen: ([127, 0, 0, 1], 0).into(),
        upstream: None,
        redis: None,
        keys: 10_000,
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value:?}: {e}");
        match flag.as_str() {
            "--listen" => args.listen = value.parse().map_err(|e| bad(&e))?,
            "--upstream" => args.upstream = Some(value),
            "--redis" => args.redis = Some(value),
            "--keys" => args.keys = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = args()?;
    let listener = TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    match args.mode.as_str() {
        "origin" | "static" => {
            println!("listening on http://{addr}");
            serve(listener, |req: Request<Incoming>| async move {
                let (body, cc) = route(req.uri().path());
                Ok::<_, Infallible>(answer(body, cc))
            })
            .await
        }
        "static-hit-head" => {
            println!("listening on http://{addr}");
            serve(listener, |req: Request<Incoming>| async move {
                let (body, cc) = route(req.uri().path());
                Ok::<_, Infallible>(answer_as_hit(body, cc))
            })
            .await
        }
        "plain-proxy" => {
            let upstream = args.upstream.ok_or("plain-proxy needs --upstream ADDR")?;
            let proxy = PlainProxy::new(&upstream)?;
            println!("listening on http://{addr}");
            serve(listener, move |req| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(proxy.forward(req).await) }
            })
            .await
        }
        "l2-ref" => {
            let url = args.redis.ok_or("l2-ref needs --redis URL")?;
            let client = redis::Client::open(url)?;
            let conn = client.get_multiplexed_async_connection().await?;
            fill(conn.clone(), args.keys).await?;
            println!("listening on http://{addr}");
            serve(listener, move |req: Request<Incoming>| {
                let mut conn = conn.clone();
                async move {
                    let key = format!("{L2_PREFIX}{}", req.uri().path());
                    let got = redis::cmd("GET")
                        .arg(&key)
                        .query_async::<Option<Vec<u8>>>(&mut conn)
                        .await;
                    Ok::<_, Infallible>(match got {
                        Ok(Some(v)) => answer(Bytes::from(v), "public, max-age=3600"),
                        Ok(None) => status(StatusCode::NOT_FOUND),
                        Err(_) => status(StatusCode::BAD_GATEWAY),
                    })
                }
            })
            .await
        }
        other => Err(format!("unknown mode {other:?}\n{USAGE}").into()),
    }
}

/// An empty response with `code`.
fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = code;
    resp
}

/// Stores the `l2-ref` values: `bench-ref:/l2/N` for N below `keys`, the
/// origin's body for that path, in pipelines of 1 000.
async fn fill(mut conn: redis::aio::MultiplexedConnection, keys: u32) -> Result<(), BoxError> {
    let mut n = 0;
    while n < keys {
        let mut pipe = redis::pipe();
        for i in n..keys.min(n + 1000) {
            let path = format!("/l2/{i}");
            pipe.cmd("SET")
                .arg(format!("{L2_PREFIX}{path}"))
                .arg(&route(&path).0[..])
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        n = keys.min(n + 1000);
    }
    Ok(())
}

/// Serves HTTP/1 connections on `listener` with `handler`, forever.
async fn serve<F, Fut, B>(listener: TcpListener, handler: F) -> Result<(), BoxError>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    use std::io::Write as _;
    std::io::stdout().flush()?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service_fn(handler))
                .await;
        });
    }
}

/// The plain reverse proxy (see the module docs).
#[derive(Clone)]
struct PlainProxy {
    client: Client<HttpConnector, Incoming>,
    authority: Authority,
    host: HeaderValue,
}

impl PlainProxy {
    fn new(upstream: &str) -> Result<Self, BoxError> {
        let authority: Authority = upstream.trim_start_matches("http://").parse()?;
        let host = HeaderValue::from_str(authority.as_str())?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(usize::MAX)
            .build(connector);
        Ok(Self {
            client,
            authority,
            host,
        })
    }

    /// The upstream's answer to `req`, its body streamed as it comes, or a
    /// `502` (which the bench's checks would catch).
    async fn forward(&self, req: Request<Incoming>) -> Response<Either<Incoming, Full<Bytes>>> {
        let (mut parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri = parts.uri.into_parts();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        uri.path_and_query = Some(pq);
        parts.uri = Uri::from_parts(uri).expect("scheme, authority and path make a URI");
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.insert(HOST, self.host.clone());
        parts
            .headers
            .append(VIA, HeaderValue::from_static("1.1 bench-refs"));
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                parts
                    .headers
                    .append(VIA, HeaderValue::from_static("1.1 bench-refs"));
                Response::from_parts(parts, Either::Left(body))
            }
            Err(_) => status(StatusCode::BAD_GATEWAY).map(Either::Right),
        }
    }
}
