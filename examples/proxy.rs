//! A caching reverse proxy: hyper's HTTP/1 server in front, a hyper-util
//! client behind, `CacheLayer` in between.
//!
//! ```text
//! cargo run --release --example proxy -- --listen 127.0.0.1:8080 --upstream http://127.0.0.1:8000
//! curl -si http://127.0.0.1:8080/some/path   # twice: the second is a hit
//! ```
//!
//! Every method is forwarded with its body streamed; hop-by-hop headers are
//! removed both ways; upstream failures become `502 Bad Gateway`. The cache
//! follows RFC 9111 as a shared cache and reports itself in `Cache-Status`.
//! Each request is logged to stderr. Ctrl-C (or SIGTERM) stops accepting,
//! lets open requests finish and prints the cache's counters.
//!
//! Not covered, to keep the example short: TLS (to either side), HTTP/2,
//! protocol upgrades (WebSocket) and `CONNECT`.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, HOST, VIA};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_tiered_cache::{Cache, CacheBody, CacheLayer, CACHE_STATUS};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body the forwarding service answers with: the upstream's, streamed,
/// or a short error message of our own.
type ProxyBody = BoxBody<Bytes, hyper::Error>;

const USAGE_LINE: &str = "Usage: proxy --upstream URL [--listen ADDR]";

const USAGE: &str = "\
A caching reverse proxy built on tower-tiered-cache.

Usage: proxy --upstream URL [--listen ADDR]

Options:
  --upstream URL   where to forward requests, e.g. http://127.0.0.1:8000 (required)
  --listen ADDR    the address to listen on [default: 127.0.0.1:8080]
                   (port 0 picks a free port; the address is printed)
  -h, --help       print this help
";

/// How long open connections may take to finish after Ctrl-C.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> ExitCode {
    let config = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("error: {msg}\n{USAGE_LINE}\nRun with --help for more.");
            return ExitCode::from(2);
        }
    };
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// Command line

enum Command {
    Run(Config),
    Help,
}

struct Config {
    listen: SocketAddr,
    upstream: Upstream,
}

/// Parses `--listen ADDR`, `--upstream URL` (also as `--flag=value`) and
/// `--help`.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut listen = None;
    let mut upstream = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--listen" => listen = Some(value()?),
            "--upstream" => upstream = Some(value()?),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let listen = listen.as_deref().unwrap_or("127.0.0.1:8080");
    let listen = listen
        .parse()
        .map_err(|_| format!("--listen {listen:?} is not an IP address and port"))?;
    let upstream = upstream.ok_or("--upstream URL is required")?;
    Ok(Command::Run(Config {
        listen,
        upstream: Upstream::parse(&upstream)?,
    }))
}

/// The origin every request goes to.
#[derive(Clone, Debug)]
struct Upstream {
    scheme: Scheme,
    authority: Authority,
    /// `Host` for upstream requests: the upstream's own authority.
    host: HeaderValue,
}

impl Upstream {
    fn parse(url: &str) -> Result<Self, String> {
        let invalid = |why: &str| format!("--upstream {url:?}: {why}");
        let uri: Uri = url.parse().map_err(|e| invalid(&format!("{e}")))?;
        match uri.scheme() {
            Some(s) if *s == Scheme::HTTP => {}
            Some(_) => {
                return Err(invalid(
                    "only http:// is supported (no TLS in this example)",
                ))
            }
            None => {
                return Err(invalid(&format!(
                    "must start with http:// (did you mean http://{url}?)"
                )))
            }
        }
        let authority = uri
            .authority()
            .ok_or_else(|| invalid("has no host"))?
            .clone();
        if authority.as_str().contains('@') {
            return Err(invalid("must not contain credentials"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid(
                "must not have a path or query (paths are forwarded as they come)",
            ));
        }
        let host =
            HeaderValue::from_str(authority.as_str()).map_err(|e| invalid(&e.to_string()))?;
        Ok(Self {
            scheme: Scheme::HTTP,
            authority,
            host,
        })
    }
}

// ---------------------------------------------------------------------------
// Server

async fn run(config: Config) -> Result<(), BoxError> {
    // Install the signal handlers before announcing the address, so that a
    // Ctrl-C sent right after "listening on" is not lost.
    let mut shutdown = pin!(shutdown_signal()?);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    println!("listening on http://{}", listener.local_addr()?);
    println!(
        "forwarding to {}://{}",
        config.upstream.scheme, config.upstream.authority
    );
    std::io::stdout().flush()?;

    // One upstream for all requests: the authority (`Host`) adds nothing to
    // cache keys, and leaving it out lets `localhost:8080` and
    // `127.0.0.1:8080` share entries.
    let cache = Cache::builder().key_authority(false).build()?;
    let proxy = Proxy::new(config.upstream);

    let (stop_tx, stop_rx) = watch::channel(());
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let svc = service(&cache, &proxy, peer);
                    connections.spawn(serve_connection(stream, svc, stop_rx.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished connections as we go.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }

    eprintln!("shutting down: {} open connection(s)", connections.len());
    drop(listener);
    let _ = stop_tx.send(());
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        eprintln!("gave up on {} connection(s)", connections.len());
    }
    print_stats(&cache);
    Ok(())
}

/// Resolves on Ctrl-C (and, on Unix, SIGTERM). The handlers are installed
/// by the time this returns.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// Serves one connection until it closes, or until `stop` fires; then it
/// finishes the request in progress and closes.
async fn serve_connection<S>(stream: TcpStream, svc: S, mut stop: watch::Receiver<()>)
where
    S: Service<Request<Incoming>, Response = Response<CacheBody<ProxyBody>>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = http1::Builder::new()
        .timer(TokioTimer::new()) // enables the 30 s header read timeout
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
    let mut conn = pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if !e.is_incomplete_message() {
            eprintln!("connection error: {}", error_chain(&e));
        }
    }
}

/// The service for one connection: access log › cache › forwarding.
fn service(
    cache: &Cache,
    proxy: &Proxy,
    peer: SocketAddr,
) -> impl Service<
    Request<Incoming>,
    Response = Response<CacheBody<ProxyBody>>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + 'static {
    let proxy = proxy.clone();
    let forward = service_fn(move |req| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.forward(req, peer).await) }
    });
    let cached = CacheLayer::new(cache.clone()).layer(forward);
    service_fn(move |req: Request<Incoming>| {
        let cached = cached.clone();
        async move {
            let line = format!("{peer} {} {}", req.method(), req.uri());
            let start = Instant::now();
            let resp = cached.oneshot(req).await?;
            let status = resp
                .headers()
                .get(&CACHE_STATUS)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            eprintln!(
                "{line} -> {} in {:.2} ms [{status}]",
                resp.status().as_u16(),
                start.elapsed().as_secs_f64() * 1000.0
            );
            Ok(resp)
        }
    })
}

fn print_stats(cache: &Cache) {
    let s = cache.stats();
    println!(
        "stats: requests={} hits={} stale={} misses={} revalidated={} coalesced={} passes={} \
         upstream_calls={} upstream_errors={} stores={} hit_ratio={:.3}",
        s.requests,
        s.hits,
        s.stale,
        s.misses,
        s.revalidated,
        s.coalesced,
        s.passes,
        s.upstream_calls,
        s.upstream_errors,
        s.stores,
        s.hit_ratio
    );
    let _ = std::io::stdout().flush();
}

// ---------------------------------------------------------------------------
// Forwarding

/// Sends requests to the upstream over a pooled hyper-util client.
#[derive(Clone)]
struct Proxy {
    client: Client<HttpConnector, Incoming>,
    upstream: Upstream,
}

impl Proxy {
    fn new(upstream: Upstream) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self { client, upstream }
    }

    /// Forwards `req` and returns the upstream's answer, or a 502.
    async fn forward(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let req = match self.upstream_request(req, peer) {
            Ok(req) => req,
            Err(e) => return text_response(StatusCode::BAD_REQUEST, &format!("bad request: {e}")),
        };
        match self.client.request(req).await {
            Ok(resp) => downstream_response(resp),
            Err(e) => text_response(
                StatusCode::BAD_GATEWAY,
                &format!("upstream error: {}", error_chain(&e)),
            ),
        }
    }

    /// The request as the upstream should see it: its URI, its `Host`, no
    /// hop-by-hop headers, `X-Forwarded-*` and `Via` added. The body is
    /// passed on as it is, streaming.
    fn upstream_request(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Request<Incoming>, http::Error> {
        let (mut parts, body) = req.into_parts();
        let original_host = parts
            .headers
            .get(HOST)
            .cloned()
            .or_else(|| parts.uri.authority()?.as_str().parse().ok());
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::builder()
            .scheme(self.upstream.scheme.clone())
            .authority(self.upstream.authority.clone())
            .path_and_query(path_and_query)
            .build()?;
        // We speak HTTP/1.1 to the upstream whatever the client spoke.
        parts.version = Version::HTTP_11;

        let headers = &mut parts.headers;
        strip_hop_by_hop(headers);
        headers.insert(HOST, self.upstream.host.clone());
        headers.append(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_str(&peer.ip().to_string())?,
        );
        if let Some(host) = original_host {
            headers.insert(HeaderName::from_static("x-forwarded-host"), host);
        }
        headers.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        );
        headers.append(VIA, HeaderValue::from_static("1.1 tower-tiered-cache"));
        Ok(Request::from_parts(parts, body))
    }
}

/// The upstream's response as the client should see it: no hop-by-hop
/// headers, `Via` added, the body streamed.
fn downstream_response(resp: Response<Incoming>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .append(VIA, HeaderValue::from_static("1.1 tower-tiered-cache"));
    // We speak HTTP/1.1 to the client whatever the upstream spoke.
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, body.boxed())
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// plus the proxy authentication pair, which is meant for this hop only.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Removes the hop-by-hop headers, and the ones `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// A small plain-text response of our own (errors).
fn text_response(status: StatusCode, msg: &str) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(format!("{msg}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// An error and its sources, `outer: inner: innermost`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}
