//! A caching reverse proxy: hyper's HTTP/1 server in front, a hyper-util
//! client behind, `CacheLayer` in between.
//!
//! ```text
//! cargo run --release --example proxy -- --listen 127.0.0.1:8080 --upstream http://127.0.0.1:8000
//! curl -si http://127.0.0.1:8080/some/path   # twice: the second is a hit
//! ```
//!
//! With the `redis` feature, `--redis URL` (or `--redis-cluster URL,URL...`,
//! or `--redis-sentinel NAME@HOST:PORT,HOST:PORT...` for the master that
//! Redis Sentinel names) adds the L2 tier, so a restarted proxy (empty L1)
//! answers from Redis:
//!
//! ```text
//! cargo run --release --features redis --example proxy -- \
//!     --upstream http://127.0.0.1:8000 --redis redis://127.0.0.1:6379/
//! ```
//!
//! With the `l2-encryption` feature, `--l2-key-file PATH` seals what the
//! proxy writes to Redis (a file of `ID:HEX` lines, the last key sealing;
//! see `L2Keys`).
//! With `--distributed-coalescing` too, proxies sharing that Redis make one
//! origin call between them for a URL they all miss at once (one takes a
//! lease on the key in Redis and calls; the others wait and answer from L2).
//!
//! `--otlp URL` sends the cache's spans (`cache.lookup`, `cache.refresh`)
//! with OTLP/HTTP, to Jaeger for instance; `--otlp-metrics URL` sends its
//! metrics too (Jaeger refuses them: give a Collector's URL), and with
//! `--admin` they are always on `/metrics`. `--origin ADDR` runs a small
//! origin to try it on. The README's "Seeing it in Jaeger" is the recipe.
//!
//! Every method is forwarded with its body streamed; hop-by-hop headers are
//! removed both ways; upstream failures become `502 Bad Gateway`. The cache
//! follows RFC 9111 as a shared cache and reports itself in `Cache-Status`.
//!
//! Interim (1xx) responses, such as `103 Early Hints`, are not forwarded:
//! hyper's client reads past them to the final response, and hyper 1.x's
//! server has no way to send one before the final response (it logs and
//! drops a 1xx given as a response). The cache never stores one either:
//! only final statuses are stored (RFC 9111 §3).
//!
//! Nothing a client sends can change what another client receives: every
//! request input the proxy forwards and the cache does not key on is either
//! dropped or replaced by the proxy's own value (see [`prepare`] and
//! [`Proxy::upstream_request`]):
//!
//! - `Host`: the upstream gets its own authority. The client's host is sent
//!   as `X-Forwarded-Host` only with `--allow-host` (and then it is one of the
//!   listed hosts, normalised, and part of the cache key; any other host is
//!   refused with `421`) or replaced by the fixed `--public-host`.
//! - `Forwarded`, `X-Forwarded-*`, `X-Real-IP` and the other headers an
//!   origin trusts because a proxy sets them are removed from what clients
//!   send; the proxy sets `X-Forwarded-For` (the peer's address, nothing
//!   else), `X-Forwarded-Proto` and, as above, `X-Forwarded-Host`.
//! - `Cookie`: a `GET` / `HEAD` with cookies is passed uncached by default
//!   (`--cookies pass`), or cached in a partition of its own per cookie set
//!   (`--cookies partition`).
//! - A `GET` / `HEAD` with a body is passed uncached (the body is forwarded
//!   and is not in the key).
//!
//! Every other request header reaches the upstream unchanged and is not in
//! the key: an origin whose answer depends on one must say so in `Vary`,
//! which the cache honours.
//! Each request is logged to stderr, one line each, by a writer thread (a
//! request never waits for it; lines it cannot keep up with are dropped and
//! counted); `--access-log off` turns that off. Ctrl-C (or SIGTERM) stops accepting,
//! lets open requests finish and prints the cache's counters.
//!
//! Not covered, to keep the example short: TLS (to either side), HTTP/2,
//! protocol upgrades (WebSocket) and `CONNECT`.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::process::ExitCode;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, COOKIE, HOST, VIA};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper::server::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_tiered_cache::admin::AdminService;
use tower_tiered_cache::warm::{WarmOptions, WarmTarget};
use tower_tiered_cache::{
    Cache, CacheBody, CacheLayer, CacheService, LabelSource, LogLevel, RequestCacheControl,
    CACHE_STATUS,
};

#[path = "support/access_log.rs"]
mod access_log;
#[path = "support/headers.rs"]
mod headers;
#[path = "support/telemetry.rs"]
mod telemetry;

use access_log::AccessLog;
use headers::{remove_where, strip_hop_by_hop};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `--upstream-timeout` when not given (the cache's own default).
const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// The body of requests and responses through the proxy: the client's or
/// the upstream's, streamed as it is, or one of our own (a short error
/// message, a warming request's empty body). An enum, not a `BoxBody`: a
/// request boxes nothing.
#[derive(Debug, Default)]
enum ProxyBody {
    /// The peer's body, as hyper reads it.
    Incoming(Incoming),
    /// Bytes of our own.
    Full(Full<Bytes>),
    /// No body (what warming sends).
    #[default]
    Empty,
}

impl hyper::body::Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Incoming(b) => std::pin::Pin::new(b).poll_frame(cx),
            ProxyBody::Full(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            ProxyBody::Empty => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Incoming(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_end_stream(),
            ProxyBody::Empty => true,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            ProxyBody::Incoming(b) => b.size_hint(),
            ProxyBody::Full(b) => b.size_hint(),
            ProxyBody::Empty => hyper::body::SizeHint::with_exact(0),
        }
    }
}

const USAGE_LINE: &str = "Usage: proxy --upstream URL [--listen ADDR] [--l1-bytes N] \
                          [--redis URL | --redis-cluster URL[,URL...] | \
                          --redis-sentinel NAME@HOST:PORT[,HOST:PORT...]] [--namespace NAME] \
                          [--promote-after N] [--l2-key-file PATH] [--distributed-coalescing] [--admin ADDR --admin-token TOKEN] \
                          [--otlp URL] [--otlp-metrics URL] [--span-level LEVEL] \
                          [--log detailed|aggregate|minimal] [--access-log on|off] [--warm FILE] \
                          [--public-host HOST | --allow-host HOST[,HOST...]] \
                          [--cookies pass|partition] [--upstream-timeout DURATION] \
                          [--request-cache-control honour|ignore]\n       \
                          proxy --origin ADDR";

const USAGE: &str = "\
A caching reverse proxy built on tower-tiered-cache.

Usage: proxy --upstream URL [--listen ADDR] [--l1-bytes N]
             [--redis URL | --redis-cluster URL[,URL...]
              | --redis-sentinel NAME@HOST:PORT[,HOST:PORT...]]
             [--namespace NAME] [--promote-after N]
             [--distributed-coalescing]
       proxy --origin ADDR

Options:
  --upstream URL        where to forward requests, e.g. http://127.0.0.1:8000 (required)
  --listen ADDR         the address to listen on [default: 127.0.0.1:8080]
                        (port 0 picks a free port; the address is printed)
  --l1-bytes N          the in-process (L1) cache's capacity in bytes [default: 67108864]
  --admin ADDR          serve the admin API (health, stats, metrics, warm,
                        invalidate, a live dashboard at /dashboard) on its
                        own address, e.g. 127.0.0.1:9090
  --admin-token TOKEN   the Bearer token the admin API requires (needed with
                        --admin; or set ADMIN_TOKEN in the environment)
  --otlp URL            export traces with OTLP/HTTP to URL/v1/traces, e.g.
                        http://127.0.0.1:4318 (Jaeger's OTLP port); traces
                        only: Jaeger refuses metrics
  --otlp-metrics URL    export the cache's metrics with OTLP/HTTP to
                        URL/v1/metrics every 10 s (an OpenTelemetry
                        Collector's OTLP port, e.g. http://127.0.0.1:4318)
                        [default: none; with --admin, Prometheus metrics are
                        always on /metrics]
  --span-level LEVEL    the level of the cache's spans (cache.lookup,
                        cache.refresh): error, warn, info, debug or trace.
                        A span is exported only when RUST_LOG lets its level
                        through (default filter: info)
                        [default: info with --otlp, else debug]
  --log LEVEL           the cache's own log events: minimal (warnings),
                        aggregate (plus a summary every 10 000 requests or
                        60 s) or detailed (plus one line per lookup)
                        [default: minimal]
  --access-log on|off   one line per request on stderr (time, client, method,
                        URL, status, duration, Cache-Status), written by a
                        thread of its own; lines it cannot keep up with are
                        dropped and counted [default: on]
  --warm FILE           fetch the URLs (paths) listed in FILE, one per line
                        ('#' starts a comment), through the cache at start-up
                        (with --allow-host: absolute URLs, http://HOST/path)
  --upstream-timeout D  the deadline for the upstream's response head, then
                        for the body it reads to store (e.g. 2s, 500ms, 1m);
                        then a stale copy the origin allows, or a 504
                        [default: 30s]
  --request-cache-control MODE
                        honour (clients' no-cache / max-age revalidate, at
                        most one revalidation in flight per URL) or ignore
                        (as Varnish and nginx do) [default: honour]
  -h, --help            print this help

What clients can make the upstream see (nothing unkeyed):
  --public-host HOST    send `X-Forwarded-Host: HOST` upstream with every
                        request, whatever host the client asked for
                        [default: no X-Forwarded-Host; the upstream sees
                        its own authority in Host]
  --allow-host HOSTS    answer only for these hosts (comma-separated; the
                        flag may be repeated): any other Host is refused
                        with 421 Misdirected Request. The client's host,
                        normalised (lower case, no :80), is sent upstream as
                        X-Forwarded-Host and is part of the cache key.
                        Excludes --public-host
  --cookies MODE        GET/HEAD requests that carry Cookie: pass (forwarded,
                        never cached nor answered from the cache) or
                        partition (cached per cookie set, never shared)
                        [default: pass]
  Client-sent Forwarded, X-Forwarded-*, X-Real-IP and similar headers are
  always dropped; X-Forwarded-For is the peer's address.

L2 tier in Redis (only in a build with `--features redis`):
  --redis URL           one Redis node: redis://[user:password@]host:port[/db]
  --redis-cluster URLS  a Redis Cluster: one or more node URLs, comma-separated
  --redis-sentinel NAME@SENTINELS
                        the master that Redis Sentinel calls NAME, found
                        through the sentinels (comma-separated HOST:PORT, or
                        redis://[user:password@]host:port URLs) and found
                        again after a failover
  --redis-sentinel-master URL
                        with --redis-sentinel: the master's scheme,
                        credentials and database, e.g. redis://:PW@master/0
                        (its host is replaced by the master's address)
                        [default: redis://, no password, database 0]
  --namespace NAME      the prefix of every L2 key [default: ttc]
  --promote-after N     copy an L2 entry into L1 after N L2 hits [default: 3]
  --l2-key-file PATH    seal L2 values with the keys in PATH, one ID:HEX line
                        each (HEX: 32 random bytes, `openssl rand -hex 32`);
                        the last line seals, every line opens (a build with
                        `--features l2-encryption`)
  --distributed-coalescing
                        one origin call for a URL that proxies sharing this
                        Redis (and namespace) miss at once: one takes a lease
                        on it in Redis, the others wait for its answer in L2
                        (at most --upstream-timeout; a lease whose proxy died
                        expires after it) [default: off]

A demo origin, for trying the proxy out:
  --origin ADDR         serve a small origin on ADDR instead (port 0 picks one;
                        the address is printed): every GET answers 200 after
                        20 ms with `Cache-Control: public, max-age=60`, so a
                        proxy in front of it caches every path for a minute

Flags also take the form --flag=value.
";

/// Why the command line was refused: the message, and whether the usage
/// line helps (it does for a missing or unknown flag, not for a bad value).
#[derive(Debug)]
struct ArgError {
    msg: String,
    usage: bool,
}

impl ArgError {
    fn usage(msg: impl Into<String>) -> Self {
        Self {
            msg: msg.into(),
            usage: true,
        }
    }

    fn value(msg: impl Into<String>) -> Self {
        Self {
            msg: msg.into(),
            usage: false,
        }
    }
}

/// How long open connections may take to finish after Ctrl-C.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    run_main(std::env::args().skip(1).collect())
}

/// The proxy's `main` with the command line's arguments (without the
/// program's name): `tests/jaeger_recipe.rs` runs it in a process of its
/// own, as `cargo run --example proxy` does.
#[tokio::main]
pub(crate) async fn run_main(args: Vec<String>) -> ExitCode {
    let config = match parse_args(args) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Origin(addr)) => {
            return match run_origin(addr).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", error_chain(&*e));
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) if e.usage => {
            eprintln!("error: {}\n{USAGE_LINE}\nRun with --help for more.", e.msg);
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {}", e.msg);
            return ExitCode::from(2);
        }
    };
    // Logs to stderr; with --otlp, traces to Jaeger (or a collector); with
    // --otlp-metrics, metrics by OTLP too.
    if config.log == LogLevel::Detailed && std::env::var_os("RUST_LOG").is_none() {
        // The per-lookup events are at DEBUG.
        std::env::set_var("RUST_LOG", "info,tower_tiered_cache=debug");
    }
    let endpoints = telemetry::Endpoints {
        traces: config.otlp.as_deref(),
        metrics: config.otlp_metrics.as_deref(),
    };
    let mut telemetry = match telemetry::init(endpoints, "tower-tiered-cache-proxy") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: --otlp / --otlp-metrics: {e}");
            return ExitCode::from(2);
        }
    };
    // A setting the cache refuses (a zero size, a bad Redis URL) is a usage
    // error too: exit 2, one line.
    let cache = match build_cache(&config) {
        Ok(cache) => cache,
        Err(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::from(2);
        }
    };
    // The cache outlives the last export, so its counters are in it.
    let result = run(config, cache.clone()).await;
    if let Err(e) = telemetry.shutdown() {
        eprintln!("telemetry: {e}");
    }
    match result {
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
    Run(Box<Config>),
    Help,
    /// `--origin ADDR`: the demo origin.
    Origin(SocketAddr),
}

struct Config {
    listen: SocketAddr,
    upstream: Upstream,
    /// `--l1-bytes`: the L1 capacity (the crate's default when absent).
    l1_bytes: Option<u64>,
    /// `--redis` / `--redis-cluster` and their settings.
    #[cfg(feature = "redis")]
    l2: Option<L2Args>,
    /// `--admin` and its token.
    admin: Option<(SocketAddr, String)>,
    /// `--otlp`: the OTLP/HTTP base URL traces go to.
    otlp: Option<String>,
    /// `--otlp-metrics`: the OTLP/HTTP base URL metrics go to.
    otlp_metrics: Option<String>,
    /// `--span-level`.
    span_level: Option<tracing::Level>,
    /// `--log`.
    log: LogLevel,
    /// `--access-log`.
    access_log: bool,
    /// `--warm`: the targets read from the file.
    warm: Vec<WarmTarget>,
    /// `--public-host` / `--allow-host`.
    hosts: Hosts,
    /// `--cookies`.
    cookies: Cookies,
    /// `--upstream-timeout`.
    upstream_timeout: Option<Duration>,
    /// `--request-cache-control`.
    request_cc: RequestCacheControl,
}

/// Where the L2 tier lives and how it is used.
#[cfg(feature = "redis")]
struct L2Args {
    target: L2Target,
    namespace: Option<String>,
    promote_after: Option<u32>,
    /// `--l2-key-file`: the keys read from the file.
    #[cfg(feature = "l2-encryption")]
    keys: Option<tower_tiered_cache::L2Keys>,
    /// `--distributed-coalescing`.
    distributed: bool,
}

#[cfg(feature = "redis")]
enum L2Target {
    Single(String),
    Cluster(Vec<String>),
    /// `--redis-sentinel NAME@…`: the master's name, the sentinels' URLs,
    /// and `--redis-sentinel-master`.
    Sentinel {
        name: String,
        sentinels: Vec<String>,
        master_url: Option<String>,
    },
}

#[cfg(feature = "redis")]
impl L2Args {
    /// `builder` with this L2 tier and its settings.
    fn apply(&self, builder: tower_tiered_cache::CacheBuilder) -> tower_tiered_cache::CacheBuilder {
        let mut builder = match &self.target {
            L2Target::Single(url) => builder.redis(url.clone()),
            L2Target::Cluster(urls) => builder.redis_cluster(urls.iter().cloned()),
            L2Target::Sentinel {
                name,
                sentinels,
                master_url,
            } => {
                let b = builder.redis_sentinel(name.clone(), sentinels.iter().cloned());
                match master_url {
                    Some(url) => b.redis_sentinel_master_url(url.clone()),
                    None => b,
                }
            }
        };
        if let Some(ns) = &self.namespace {
            builder = builder.namespace(ns.clone());
        }
        if let Some(n) = self.promote_after {
            builder = builder.promote_after(n);
        }
        #[cfg(feature = "l2-encryption")]
        if let Some(keys) = &self.keys {
            builder = builder.l2_encryption_key(keys.clone());
        }
        builder.distributed_coalescing(self.distributed)
    }
}

#[cfg(feature = "redis")]
impl L2Target {
    /// The flag and its value as typed, passwords masked: for start-up
    /// output and error messages.
    fn describe(&self) -> String {
        match self {
            L2Target::Single(url) => format!("--redis {}", redact_url(url)),
            L2Target::Cluster(urls) => {
                let urls: Vec<String> = urls.iter().map(|u| redact_url(u)).collect();
                format!("--redis-cluster {}", urls.join(","))
            }
            L2Target::Sentinel {
                name, sentinels, ..
            } => {
                let urls: Vec<String> = sentinels.iter().map(|u| redact_url(u)).collect();
                format!("--redis-sentinel {name}@{}", urls.join(","))
            }
        }
    }

    /// The L2 tier's kind and where it is, passwords masked: for start-up
    /// output.
    fn summary(&self) -> (String, String) {
        let list = |urls: &[String]| {
            urls.iter()
                .map(|u| redact_url(u))
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            L2Target::Single(url) => ("Redis".to_owned(), redact_url(url)),
            L2Target::Cluster(urls) => ("Redis Cluster".to_owned(), list(urls)),
            L2Target::Sentinel {
                name, sentinels, ..
            } => (
                format!("Redis Sentinel master {name:?} via"),
                list(sentinels),
            ),
        }
    }

    /// The flag that chose this target.
    fn flag(&self) -> &'static str {
        match self {
            L2Target::Single(_) => "--redis",
            L2Target::Cluster(_) => "--redis-cluster",
            L2Target::Sentinel { .. } => "--redis-sentinel",
        }
    }
}

/// The L2 flags as they are parsed.
#[cfg(feature = "redis")]
#[derive(Default)]
struct L2Flags {
    target: Option<L2Target>,
    sentinel_master: Option<String>,
    namespace: Option<String>,
    promote_after: Option<u32>,
    /// `--l2-key-file`: the keys read from the file.
    #[cfg(feature = "l2-encryption")]
    keys: Option<tower_tiered_cache::L2Keys>,
    /// `--distributed-coalescing`.
    distributed: bool,
}

#[cfg(feature = "redis")]
impl L2Flags {
    /// One of the L2 flags and its value.
    fn take(&mut self, flag: &str, v: String) -> Result<(), ArgError> {
        let new = match flag {
            "--redis" => L2Target::Single(v),
            "--redis-cluster" => L2Target::Cluster(url_list(flag, &v)?),
            "--redis-sentinel" => sentinel_target(flag, &v)?,
            "--redis-sentinel-master" => {
                self.sentinel_master = Some(v);
                return Ok(());
            }
            "--namespace" => {
                self.namespace = Some(v);
                return Ok(());
            }
            _ => {
                self.promote_after = Some(number(flag, &v, u32::MAX)?);
                return Ok(());
            }
        };
        if let Some(old) = &self.target {
            if old.flag() != new.flag() {
                return Err(ArgError::usage(format!(
                    "{} and {} exclude each other: give one",
                    old.flag(),
                    new.flag()
                )));
            }
        }
        self.target = Some(new);
        Ok(())
    }

    /// The L2 tier asked for, if any; a setting of it without a target is
    /// a usage error.
    fn finish(self) -> Result<Option<L2Args>, ArgError> {
        let target = match (self.target, self.sentinel_master) {
            (
                Some(L2Target::Sentinel {
                    name, sentinels, ..
                }),
                master_url,
            ) => Some(L2Target::Sentinel {
                name,
                sentinels,
                master_url,
            }),
            (_, Some(_)) => {
                return Err(ArgError::usage(
                    "--redis-sentinel-master applies to --redis-sentinel \
                     NAME@HOST:PORT[,HOST:PORT...]: add it",
                ))
            }
            (target, None) => target,
        };
        let (namespace, promote_after) = (self.namespace, self.promote_after);
        let distributed = self.distributed;
        #[cfg(feature = "l2-encryption")]
        let keys = self.keys;
        #[cfg(feature = "l2-encryption")]
        let has_keys = keys.is_some();
        #[cfg(not(feature = "l2-encryption"))]
        let has_keys = false;
        match target {
            Some(target) => Ok(Some(L2Args {
                target,
                namespace,
                promote_after,
                #[cfg(feature = "l2-encryption")]
                keys,
                distributed,
            })),
            None if namespace.is_some() || promote_after.is_some() || has_keys || distributed => {
                let flag = if namespace.is_some() {
                    "--namespace"
                } else if promote_after.is_some() {
                    "--promote-after"
                } else if distributed {
                    "--distributed-coalescing"
                } else {
                    "--l2-key-file"
                };
                Err(ArgError::usage(format!(
                    "{flag} applies to the L2 tier: add --redis URL, --redis-cluster \
                     URL[,URL...] or --redis-sentinel NAME@HOST:PORT[,HOST:PORT...]"
                )))
            }
            None => Ok(None),
        }
    }
}

/// Parses the flags (also as `--flag=value`) and `--help`.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Command, ArgError> {
    let mut listen = None;
    let mut upstream = None;
    let mut l1_bytes = None;
    let (mut admin, mut admin_token, mut otlp, mut log, mut warm) = (None, None, None, None, None);
    let (mut otlp_metrics, mut span_level, mut origin) = (None, None, None);
    let (mut public_host, mut allow_hosts, mut cookies) = (None, Vec::new(), None);
    let (mut upstream_timeout, mut request_cc, mut access_log) = (None, None, None);
    #[cfg(feature = "redis")]
    let mut l2 = L2Flags::default();
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
                .ok_or_else(|| ArgError::usage(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--listen" => listen = Some(value()?),
            "--upstream" => upstream = Some(value()?),
            "--l1-bytes" => l1_bytes = Some(number(&flag, &value()?, u64::MAX)?),
            "--admin" => admin = Some(value()?),
            "--admin-token" => admin_token = Some(value()?),
            "--otlp" => otlp = Some(value()?),
            "--otlp-metrics" => otlp_metrics = Some(value()?),
            "--span-level" => span_level = Some(value()?),
            "--origin" => origin = Some(value()?),
            "--log" => log = Some(value()?),
            "--access-log" => access_log = Some(value()?),
            "--warm" => warm = Some(value()?),
            "--public-host" => public_host = Some(value()?),
            "--allow-host" => allow_hosts.push(value()?),
            "--cookies" => cookies = Some(value()?),
            "--upstream-timeout" => upstream_timeout = Some(duration(&flag, &value()?)?),
            "--request-cache-control" => request_cc = Some(value()?),
            #[cfg(feature = "redis")]
            "--redis"
            | "--redis-cluster"
            | "--redis-sentinel"
            | "--redis-sentinel-master"
            | "--namespace"
            | "--promote-after" => l2.take(&flag, value()?)?,
            #[cfg(feature = "l2-encryption")]
            "--l2-key-file" => {
                let path = value()?;
                let read = tower_tiered_cache::L2Keys::from_file(&path)
                    .map_err(|e| ArgError::value(format!("--l2-key-file {e}")))?;
                l2.keys = Some(read);
            }
            #[cfg(not(feature = "l2-encryption"))]
            "--l2-key-file" => {
                return Err(ArgError::value(
                    "--l2-key-file needs L2 encryption, which this build leaves out: \
                     rebuild with --features l2-encryption",
                ))
            }
            #[cfg(feature = "redis")]
            "--distributed-coalescing" => {
                if inline.is_some() {
                    return Err(ArgError::usage(format!("{flag} takes no value")));
                }
                l2.distributed = true;
            }
            #[cfg(not(feature = "redis"))]
            "--redis"
            | "--redis-cluster"
            | "--redis-sentinel"
            | "--redis-sentinel-master"
            | "--namespace"
            | "--promote-after"
            | "--distributed-coalescing" => {
                return Err(ArgError::value(format!(
                    "{flag} needs the Redis L2 tier, which this build leaves out: \
                     rebuild with --features redis"
                )))
            }
            other => return Err(ArgError::usage(format!("unexpected argument {other:?}"))),
        }
    }
    if let Some(addr) = origin {
        return addr.parse().map(Command::Origin).map_err(|_| {
            ArgError::value(format!("--origin {addr:?} is not an IP address and port"))
        });
    }
    let listen = listen.as_deref().unwrap_or("127.0.0.1:8080");
    let listen = listen.parse().map_err(|_| {
        ArgError::value(format!("--listen {listen:?} is not an IP address and port"))
    })?;
    let upstream = upstream.ok_or_else(|| ArgError::usage("--upstream URL is required"))?;
    let admin_token = admin_token.or_else(|| std::env::var("ADMIN_TOKEN").ok());
    let admin =
        match (admin, admin_token) {
            (Some(addr), Some(token)) if !token.is_empty() => {
                let addr = addr.parse().map_err(|_| {
                    ArgError::value(format!("--admin {addr:?} is not an IP address and port"))
                })?;
                Some((addr, token))
            }
            (Some(_), _) => return Err(ArgError::usage(
                "--admin needs a non-empty --admin-token TOKEN (or ADMIN_TOKEN in the environment)",
            )),
            (None, Some(_)) if std::env::var("ADMIN_TOKEN").is_err() => {
                return Err(ArgError::usage(
                    "--admin-token applies to --admin ADDR: add it",
                ))
            }
            (None, _) => None,
        };
    for (flag, url) in [("--otlp", &otlp), ("--otlp-metrics", &otlp_metrics)] {
        let Some(url) = url else { continue };
        let ok = url.parse::<Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
        });
        if !ok {
            return Err(ArgError::value(format!(
                "{flag} {url:?} is not an http(s) URL, e.g. http://127.0.0.1:4318"
            )));
        }
    }
    let span_level = match span_level {
        Some(l) => Some(l.parse::<tracing::Level>().map_err(|_| {
            ArgError::value(format!(
                "--span-level {l:?}: expected error, warn, info, debug or trace"
            ))
        })?),
        None => None,
    };
    let log = match log {
        Some(l) => l
            .parse::<LogLevel>()
            .map_err(|e| ArgError::value(format!("--log: {e}")))?,
        None => LogLevel::Minimal,
    };
    let access_log = match access_log.as_deref() {
        None | Some("on") => true,
        Some("off") => false,
        Some(other) => {
            return Err(ArgError::value(format!(
                "--access-log {other:?}: expected on or off"
            )))
        }
    };
    let warm = match warm {
        Some(path) => read_warm_file(&path)?,
        None => Vec::new(),
    };
    let hosts = Hosts::from_flags(public_host.as_deref(), &allow_hosts)?;
    let cookies = match cookies.as_deref() {
        None | Some("pass") => Cookies::Pass,
        Some("partition") => Cookies::Partition,
        Some(other) => {
            return Err(ArgError::value(format!(
                "--cookies {other:?}: expected pass or partition"
            )))
        }
    };
    let request_cc = match request_cc.as_deref() {
        None | Some("honour" | "honor") => RequestCacheControl::Honour,
        Some("ignore") => RequestCacheControl::Ignore,
        Some(other) => {
            return Err(ArgError::value(format!(
                "--request-cache-control {other:?}: expected honour or ignore"
            )))
        }
    };
    #[cfg(feature = "redis")]
    let l2 = l2.finish()?;
    Ok(Command::Run(Box::new(Config {
        listen,
        upstream: Upstream::parse(&upstream).map_err(ArgError::value)?,
        l1_bytes,
        #[cfg(feature = "redis")]
        l2,
        admin,
        otlp,
        otlp_metrics,
        span_level,
        log,
        access_log,
        warm,
        hosts,
        cookies,
        upstream_timeout,
        request_cc,
    })))
}

/// A duration flag's value: a number with `ms`, `s` or `m` (`2s`, `500ms`).
fn duration(flag: &str, v: &str) -> Result<Duration, ArgError> {
    let bad = || {
        ArgError::value(format!(
            "{flag} {v:?}: expected a duration such as 2s or 500ms"
        ))
    };
    let (n, unit) = v
        .find(|c: char| !c.is_ascii_digit())
        .map_or((v, ""), |i| v.split_at(i));
    let n: u64 = n.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(ArgError::value(format!(
            "{flag} {v:?}: must be more than 0"
        )));
    }
    Ok(d)
}

/// The targets of `--warm FILE`: one URL or path per line; blank lines
/// and `#` comments are skipped.
fn read_warm_file(path: &str) -> Result<Vec<WarmTarget>, ArgError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ArgError::value(format!("--warm {path:?}: {e}")))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let target: WarmTarget = line.parse().map_err(|e| {
            ArgError::value(format!("--warm {path:?} line {}: {line:?}: {e}", n + 1))
        })?;
        out.push(target);
    }
    Ok(out)
}

/// A whole number for `flag`, at most `max`.
fn number<T: std::str::FromStr + std::fmt::Display>(
    flag: &str,
    value: &str,
    max: T,
) -> Result<T, ArgError> {
    value.parse().map_err(|_| {
        ArgError::value(format!(
            "{flag} {value:?} is not a whole number from 0 to {max}"
        ))
    })
}

#[cfg(feature = "redis")]
/// The comma-separated URLs of `--redis-cluster`.
#[cfg(feature = "redis")]
fn url_list(flag: &str, value: &str) -> Result<Vec<String>, ArgError> {
    let urls: Vec<String> = value.split(',').map(|u| u.trim().to_owned()).collect();
    if urls.iter().any(String::is_empty) {
        return Err(ArgError::value(format!(
            "{flag} {:?}: expected one or more URLs separated by commas, with none empty",
            redact_url(value)
        )));
    }
    Ok(urls)
}

/// `--redis-sentinel NAME@SENTINEL[,SENTINEL...]`: each sentinel a
/// `HOST:PORT` (made `redis://HOST:PORT`) or a `redis://` / `rediss://` URL.
/// The name ends at the first `@` (a name has none; a URL's credentials
/// may).
#[cfg(feature = "redis")]
fn sentinel_target(flag: &str, value: &str) -> Result<L2Target, ArgError> {
    let expected = || {
        ArgError::value(format!(
            "{flag} {:?}: expected NAME@HOST:PORT[,HOST:PORT...], e.g. mymaster@10.0.0.1:26379",
            redact_url(value)
        ))
    };
    let (name, list) = value.split_once('@').ok_or_else(expected)?;
    let name = name.trim();
    if name.is_empty() {
        return Err(expected());
    }
    let mut sentinels = Vec::new();
    for entry in list.split(',').map(str::trim) {
        if entry.contains("://") {
            sentinels.push(entry.to_owned());
            continue;
        }
        let port_ok = entry.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok || entry.contains('/') || entry.contains('@') {
            return Err(ArgError::value(format!(
                "{flag}: {entry:?} is not HOST:PORT (a sentinel, e.g. 10.0.0.1:26379) \
                 nor a redis:// URL"
            )));
        }
        sentinels.push(format!("redis://{entry}"));
    }
    Ok(L2Target::Sentinel {
        name: name.to_owned(),
        sentinels,
        master_url: None,
    })
}

/// `url` with any password replaced by `***` (in the user-info part and in
/// a `pass=` query parameter), for printing.
#[cfg(feature = "redis")]
fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    // Host names never contain `@`; a password may (it should be
    // percent-encoded, but be safe): the user info ends at the last one.
    let rest = match rest.rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{user}:***@{}", &rest[at + 1..])
        }
        None => rest.to_owned(),
    };
    let rest = match rest.split_once('?') {
        Some((head, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _))
                        if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                    {
                        format!("{k}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{head}?{}", query.join("&"))
        }
        None => rest,
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{rest}"),
        None => rest,
    }
}

/// The cache the command line asks for; a refused setting is reported with
/// the flag it came from.
fn build_cache(config: &Config) -> Result<Cache, String> {
    // The key is what the upstream request is made of: the path and query,
    // and the host the upstream is told about (`X-Forwarded-Host`), from
    // the same function `Proxy::upstream_request` uses. The client's own
    // `Host` is never forwarded, so it is not in the key: `localhost:8080`
    // and `127.0.0.1:8080` share entries. Requests `prepare` marked
    // `Uncached` pass.
    let hosts = config.hosts.clone();
    let mut builder = Cache::builder()
        // Written into the cache's buffer: no `String` per request.
        .key_writer(move |parts, out| {
            if parts.extensions.get::<Uncached>().is_some() {
                return false;
            }
            let path = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
            match hosts.forwarded(&parts.uri, &parts.headers) {
                Ok(Some(host)) => {
                    let Ok(host) = host.to_str() else {
                        return false;
                    };
                    out.push_str("GET //");
                    out.push_str(host);
                }
                Ok(None) => out.push_str("GET "),
                // Refused before the cache (421); never stored.
                Err(_) => return false,
            }
            out.push_str(path);
            true
        })
        .partition_by_credentials(config.cookies == Cookies::Partition)
        .request_cache_control(config.request_cc)
        .log_level(config.log)
        // Proxies front many paths: label by the first path segment.
        .labels(LabelSource::PathSegments(1));
    if let Some(t) = config.upstream_timeout {
        builder = builder.upstream_timeout(t);
    }
    // The cache's spans are DEBUG by default, under the default `info`
    // filter; with --otlp they are raised to INFO so that Jaeger gets them.
    let span_level = config
        .span_level
        .or_else(|| config.otlp.as_ref().map(|_| tracing::Level::INFO));
    if let Some(level) = span_level {
        builder = builder.span_level(level);
    }
    if config.otlp_metrics.is_some() {
        builder = builder.meter(opentelemetry::global::meter("tower-tiered-cache"));
    }
    if let Some(n) = config.l1_bytes {
        builder = builder.l1_capacity_bytes(n);
    }
    #[cfg(feature = "redis")]
    if let Some(l2) = &config.l2 {
        builder = l2.apply(builder);
    }
    builder.build().map_err(|e| {
        let flag = match e.setting() {
            "l1_capacity_bytes" | "l1_max_entry_bytes" => "--l1-bytes".to_owned(),
            #[cfg(feature = "redis")]
            "redis" | "redis_cluster" | "redis_sentinel" => config
                .l2
                .as_ref()
                .map_or_else(|| "--redis".to_owned(), |l2| l2.target.describe()),
            #[cfg(feature = "redis")]
            "redis_sentinel_master_url" => "--redis-sentinel-master".to_owned(),
            "namespace" => "--namespace".to_owned(),
            "promote_after" => "--promote-after".to_owned(),
            "upstream_timeout" => "--upstream-timeout".to_owned(),
            _ => return e.to_string(),
        };
        format!("{flag}: {e}")
    })
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
// What clients can make the upstream see

/// The host the upstream is told the client asked for (`X-Forwarded-Host`).
/// The cache key and the upstream request both take it from
/// [`Hosts::forwarded`], so it is keyed whenever it is forwarded.
#[derive(Clone, Debug)]
enum Hosts {
    /// The default: no `X-Forwarded-Host`; the client's host goes nowhere.
    Upstream,
    /// `--public-host`: always this one, whatever the client sent.
    Public(HeaderValue),
    /// `--allow-host`: the client's host, normalised, when it is one of
    /// these; any other is refused.
    Allowed(Arc<[HeaderValue]>),
}

/// Why a request's host is refused (with `--allow-host`).
#[derive(Debug)]
enum HostError {
    /// No host, several `Host` headers, or one that is not a host.
    Bad(&'static str),
    /// A host this proxy does not answer for.
    Misdirected,
}

impl Hosts {
    fn from_flags(public: Option<&str>, allowed: &[String]) -> Result<Self, ArgError> {
        match (public, allowed.is_empty()) {
            (Some(_), false) => Err(ArgError::usage(
                "--public-host and --allow-host exclude each other: give one",
            )),
            (Some(host), true) => normalise_host(host)
                .map(Hosts::Public)
                .ok_or_else(|| ArgError::value(format!("--public-host {host:?} is not a host"))),
            (None, true) => Ok(Hosts::Upstream),
            (None, false) => {
                let mut hosts = Vec::new();
                for host in allowed.iter().flat_map(|v| v.split(',')) {
                    let h = normalise_host(host.trim()).ok_or_else(|| {
                        ArgError::value(format!("--allow-host {host:?} is not a host"))
                    })?;
                    if !hosts.contains(&h) {
                        hosts.push(h);
                    }
                }
                Ok(Hosts::Allowed(hosts.into()))
            }
        }
    }

    /// The `X-Forwarded-Host` for a request: `None` to send none. Only
    /// ever one of the configured values, never the client's bytes.
    fn forwarded(&self, uri: &Uri, headers: &HeaderMap) -> Result<Option<HeaderValue>, HostError> {
        match self {
            Hosts::Upstream => Ok(None),
            Hosts::Public(host) => Ok(Some(host.clone())),
            Hosts::Allowed(allowed) => {
                let host = client_host(uri, headers)?;
                allowed
                    .iter()
                    .find(|a| **a == host)
                    .cloned()
                    .map(Some)
                    .ok_or(HostError::Misdirected)
            }
        }
    }
}

/// The host a client asked for, normalised: the authority of an
/// absolute-form target (which takes precedence over `Host`, RFC 9112
/// §3.2.2), else the one `Host` header.
fn client_host(uri: &Uri, headers: &HeaderMap) -> Result<HeaderValue, HostError> {
    let raw = match uri.authority() {
        Some(a) => a.as_str(),
        None => {
            let mut hosts = headers.get_all(HOST).iter();
            match (hosts.next(), hosts.next()) {
                (Some(h), None) => h.to_str().map_err(|_| HostError::Bad("invalid Host"))?,
                (None, _) => return Err(HostError::Bad("no Host")),
                (Some(_), Some(_)) => return Err(HostError::Bad("more than one Host")),
            }
        }
    };
    normalise_host(raw).ok_or(HostError::Bad("invalid Host"))
}

/// `host[:port]` in lower case, without a trailing dot or the default
/// port 80; `None` for anything else (user info, a path, an empty host).
fn normalise_host(raw: &str) -> Option<HeaderValue> {
    let authority: Authority = raw.parse().ok()?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return None;
    }
    let host = authority.host().to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    if host.is_empty() {
        return None;
    }
    let s = match authority.port_u16() {
        Some(80) | None => host.to_owned(),
        Some(port) => format!("{host}:{port}"),
    };
    HeaderValue::from_str(&s).ok()
}

/// `--cookies`: what happens to `GET` / `HEAD` requests that carry `Cookie`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cookies {
    /// Forwarded, never answered from the cache nor stored (the default:
    /// an origin that personalises a page without `Vary: Cookie` cannot
    /// leak it).
    Pass,
    /// Cached under a key of their own per cookie set
    /// (`partition_by_credentials`): never served to another cookie set
    /// nor to anonymous requests.
    Partition,
}

/// A request the proxy answers itself, with a short text: its status and
/// message.
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl Refusal {
    fn response(&self) -> Response<ProxyBody> {
        text_response(self.0, &self.1)
    }
}

impl From<HostError> for Refusal {
    fn from(e: HostError) -> Self {
        match e {
            HostError::Bad(why) => Refusal(StatusCode::BAD_REQUEST, format!("bad request: {why}")),
            HostError::Misdirected => Refusal(
                StatusCode::MISDIRECTED_REQUEST,
                "misdirected request: this proxy does not serve that host".to_owned(),
            ),
        }
    }
}

/// Marks a request the cache must pass: the key function declines it.
#[derive(Clone, Copy, Debug)]
struct Uncached;

/// Request headers that tell an origin about the client or the original
/// request, which origins trust because a proxy sets them. Clients' values
/// are dropped (every method); the proxy sets its own `X-Forwarded-For`,
/// `X-Forwarded-Proto` and `X-Forwarded-Host`. Names starting with
/// `x-forwarded-` are dropped as well.
const PROXY_SET: [&str; 12] = [
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "client-ip",
    "x-cluster-client-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-host",
    "x-http-host-override",
    "x-proxyuser-ip",
];

// `const`s, so that their names are checked once, when compiling, not at
// every request (`HeaderName::from_static` validates its argument).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that turn a `GET` into another method at some origins: a `GET`
/// or `HEAD` that carries one is a `GET` to the cache, so they are dropped
/// from those.
const METHOD_OVERRIDE: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Removes what a client must not set (see [`PROXY_SET`] and
/// [`METHOD_OVERRIDE`]).
fn drop_proxy_headers(headers: &mut HeaderMap, lookup: bool) {
    remove_where(headers, |name| {
        let name = name.as_str();
        // Every name dropped starts with one of these: the common request
        // headers (`host`, `accept…`, `user-agent`) are passed at once.
        if !matches!(name.as_bytes().first(), Some(b'x' | b'f' | b't' | b'c')) {
            return false;
        }
        name.starts_with("x-forwarded-")
            || PROXY_SET.contains(&name)
            || (lookup && METHOD_OVERRIDE.contains(&name))
    });
}

/// A client's request as the cache and the upstream may see it, or the
/// answer that refuses it. In front of the cache, so the cache judges the
/// request the upstream will get:
///
/// - the host is checked (`--allow-host`: 421 for others);
/// - [`PROXY_SET`] headers and `X-Forwarded-*` are dropped, then
///   `X-Forwarded-For` is set to the peer's address (a value per client:
///   an origin that uses it in a cacheable answer must send
///   `Vary: X-Forwarded-For`, which the cache then honours);
/// - a `GET` / `HEAD` with a body (not in the key), or with `Cookie` under
///   `--cookies pass`, is marked [`Uncached`].
fn prepare(
    req: &mut Request<Incoming>,
    forwarded_for: &HeaderValue,
    hosts: &Hosts,
    cookies: Cookies,
) -> Result<(), Refusal> {
    // In place: the request (264 bytes) is not moved out and back.
    hosts
        .forwarded(req.uri(), req.headers())
        .map_err(Refusal::from)?;
    let lookup = req.method() == Method::GET || req.method() == Method::HEAD;
    let with_body = !req.body().is_end_stream();
    let headers = req.headers_mut();
    drop_proxy_headers(headers, lookup);
    headers.insert(X_FORWARDED_FOR, forwarded_for.clone());
    if lookup && (with_body || (cookies == Cookies::Pass && headers.contains_key(COOKIE))) {
        req.extensions_mut().insert(Uncached);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Server

async fn run(config: Box<Config>, cache: Cache) -> Result<(), BoxError> {
    // Install the signal handlers before announcing the address, so that a
    // Ctrl-C sent right after "listening on" is not lost.
    let shutdown = shutdown_signal()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    serve(config, cache, listener, shutdown).await
}

/// The proxy as `main` runs it, minus signals, telemetry and exit codes:
/// `args` as on the command line (`--listen` is ignored), served on
/// `listener` until `shutdown` resolves. The integration tests
/// (`tests/proxy_poisoning.rs`) run the proxy through this.
#[allow(dead_code)] // Used by the tests, which include this file.
pub(crate) async fn serve_args(
    args: &[&str],
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    let config = match parse_args(args.iter().map(|a| (*a).to_owned())) {
        Ok(Command::Run(config)) => config,
        Ok(Command::Help | Command::Origin(_)) => return Err("not a proxy command line".into()),
        Err(e) => return Err(e.msg.into()),
    };
    let cache = build_cache(&config)?;
    serve(config, cache, listener, shutdown).await
}

/// Serves on `listener` until `shutdown` resolves, then drains.
async fn serve(
    mut config: Box<Config>,
    cache: Cache,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    let mut shutdown = pin!(shutdown);
    println!("listening on http://{}", listener.local_addr()?);
    println!(
        "forwarding to {}://{}",
        config.upstream.scheme, config.upstream.authority
    );
    println!("L1: {} bytes", cache.stats().l1_capacity_bytes);
    match &config.hosts {
        Hosts::Upstream => {
            println!("X-Forwarded-Host: not sent (--public-host or --allow-host sets one)")
        }
        Hosts::Public(host) => println!("X-Forwarded-Host: {host:?} on every request"),
        Hosts::Allowed(hosts) => println!(
            "hosts served: {} (others get 421); keyed and sent as X-Forwarded-Host",
            hosts
                .iter()
                .map(|h| h.to_str().unwrap_or("?"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    println!(
        "requests with Cookie: {}",
        match config.cookies {
            Cookies::Pass =>
                "passed, never cached (--cookies partition caches them per cookie set)",
            Cookies::Partition => "cached per cookie set",
        }
    );
    #[cfg(feature = "redis")]
    let with_l2 = match &config.l2 {
        Some(l2) => {
            // Connected on first use: a Redis that is down is an L2 that
            // misses (counted in l2_errors / l2_timeouts), not a failure.
            let (kind, urls) = l2.target.summary();
            println!(
                "L2: {kind} {urls} (namespace {}, promote after {} hit(s))",
                l2.namespace.as_deref().unwrap_or("ttc"),
                l2.promote_after.unwrap_or(3)
            );
            #[cfg(feature = "l2-encryption")]
            if let Some(keys) = &l2.keys {
                println!(
                    "L2 encryption: on, sealing with key {:?} ({} key(s) open)",
                    keys.write_id(),
                    keys.len()
                );
            }
            if l2.distributed {
                println!("misses coalesced across proxies sharing this L2 (leases in Redis)");
            }
            true
        }
        None => {
            println!("L2: off (--redis URL adds it)");
            false
        }
    };
    #[cfg(not(feature = "redis"))]
    let with_l2 = false;
    std::io::stdout().flush()?;

    let proxy = Proxy::new(
        config.upstream,
        config.hosts.clone(),
        config.cookies,
        config.upstream_timeout.unwrap_or(DEFAULT_UPSTREAM_TIMEOUT),
    );

    if let Some((addr, token)) = &config.admin {
        let admin = AdminService::new(cache.clone(), token.clone())
            .map_err(|e| format!("--admin-token: {e}"))?
            .warmer(cached_service(&cache, &proxy).warmer::<ProxyBody>());
        let admin_listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} (--admin): {e}"))?;
        let admin_addr = admin_listener.local_addr()?;
        println!("admin API on http://{admin_addr} (dashboard: http://{admin_addr}/dashboard)");
        tokio::spawn(serve_admin(admin_listener, admin));
    }
    if !config.warm.is_empty() {
        let targets = std::mem::take(&mut config.warm);
        let svc = cached_service(&cache, &proxy);
        println!("warming {} URL(s) in the background", targets.len());
        tokio::spawn(async move {
            let report = svc.warm(targets, WarmOptions::default(), |_| {}).await;
            println!(
                "warmed: {} stored, {} already fresh, {} duplicate(s), {} failed in {} ms",
                report.warmed,
                report.skipped,
                report.duplicates,
                report.failed.len(),
                report.duration_ms
            );
            for f in report.failed.iter().take(20) {
                println!("  warm failed: {} ({})", f.url, f.reason);
            }
        });
    }

    let (log, log_writer) = if config.access_log {
        let (log, writer) = AccessLog::to_stderr()?;
        (log, Some(writer))
    } else {
        (AccessLog::disabled(), None)
    };
    let (stop_tx, stop_rx) = watch::channel(());
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let svc = service(&cache, &proxy, peer, &log);
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
    // The lines of the last requests are written before the counters.
    if let Some(writer) = log_writer {
        writer.finish();
    }
    print_stats(&cache, with_l2);
    Ok(())
}

/// How long the demo origin (`--origin`) takes to answer: long enough to
/// tell a miss from a hit in a trace.
const ORIGIN_DELAY: Duration = Duration::from_millis(20);

/// `--origin ADDR`: a small origin for trying the proxy out, until Ctrl-C
/// (or SIGTERM). Every `GET` / `HEAD` answers `200` after [`ORIGIN_DELAY`]
/// with `Cache-Control: public, max-age=60` and a line naming the path;
/// other methods get `405`.
async fn run_origin(addr: SocketAddr) -> Result<(), BoxError> {
    let shutdown = shutdown_signal()?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (--origin): {e}"))?;
    println!("origin listening on http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let answer = service_fn(|req: Request<Incoming>| async move {
        tokio::time::sleep(ORIGIN_DELAY).await;
        let mut resp = text_response(StatusCode::OK, &format!("origin: {}", req.uri().path()));
        if req.method() == Method::GET || req.method() == Method::HEAD {
            resp.headers_mut().insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=60"),
            );
        } else {
            *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        }
        Ok::<_, Infallible>(resp)
    });
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let svc = TowerToHyperService::new(answer);
                tokio::spawn(
                    http1::Builder::new()
                        .timer(TokioTimer::new())
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        }
    }
}

/// Serves the admin API until the process ends.
async fn serve_admin(listener: TcpListener, admin: AdminService) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let svc = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| svc.clone().oneshot(req));
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                .await;
        });
    }
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
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<CacheBody<ProxyBody>>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = http1::Builder::new()
        .timer(TokioTimer::new()) // enables the 30 s header read timeout
        .serve_connection(TokioIo::new(stream), svc);
    let mut conn = pin!(conn);
    // `stop` is polled (which takes its lock) once, to leave the task's
    // waker with it, and again only when its version moved; not on every
    // wake-up of the connection, as `select!` would. The task's waker is
    // the same at every poll, so the one left first stays good.
    let probe = stop.clone();
    let mut changed = pin!(stop.changed());
    let mut armed = false;
    let served = poll_fn(|cx| {
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        if !armed || probe.has_changed().unwrap_or(true) {
            armed = true;
            if changed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    })
    .await;
    let result = match served {
        Some(result) => result,
        None => {
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

/// The cache in front of the forwarding service. Request bodies are boxed
/// so that warming can send empty ones. The forwarding service holds the
/// [`Proxy`] behind one `Arc`: a pass clones that (one reference count),
/// not the client and its settings.
fn cached_service(
    cache: &Cache,
    proxy: &Proxy,
) -> CacheService<
    impl Service<
            Request<ProxyBody>,
            Response = Response<ProxyBody>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static,
> {
    let proxy = Arc::new(proxy.clone());
    // The forwarding future is boxed: unboxed (688 bytes: the hyper
    // client's request future and the head timeout) it would make the
    // cache's response future that large for hits too, which never run it
    // and would move it several times each. A pass pays one allocation.
    let forward = service_fn(move |req| {
        let proxy = Arc::clone(&proxy);
        Box::pin(async move { Ok::<_, Infallible>(proxy.forward(req).await) })
            as Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>
    });
    CacheLayer::new(cache.clone()).layer(forward)
}

/// The service for one connection: access log › [`prepare`] › cache ›
/// forwarding.
///
/// Hyper calls it by reference, and the cache service is called in place,
/// from a `RefCell` (it is always ready: a hit never waits for the
/// upstream's readiness; and the future it returns borrows nothing, so the
/// borrow ends with `call`): a request clones nothing, not the cache, not
/// the forwarding service, not the proxy.
fn service(
    cache: &Cache,
    proxy: &Proxy,
    peer: SocketAddr,
    log: &AccessLog,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<CacheBody<ProxyBody>>,
    Error = Infallible,
    Future: Send + 'static,
> + Send
       + 'static {
    let cached = RefCell::new(cached_service(cache, proxy));
    let (hosts, cookies) = (proxy.hosts.clone(), proxy.cookies);
    // The peer's address for `X-Forwarded-For`, formatted once.
    let forwarded_for =
        HeaderValue::from_str(&peer.ip().to_string()).expect("an IP address is a header value");
    // Per connection: the peer formatted once, and one handle its
    // requests clone (not the process-wide one every connection shares).
    let conn_log = log.enabled().then(|| {
        Arc::new(ConnLog {
            log: log.clone(),
            peer: peer.to_string(),
            spare: std::sync::Mutex::new(Vec::new()),
        })
    });
    hyper::service::service_fn(move |mut req: Request<Incoming>| {
        // What the line needs from the request, kept only when logging:
        // its method and URI written at once into the connection's spare
        // buffer (cloning the URI would allocate), and when it began.
        let logged = conn_log.as_ref().map(|c| {
            (
                Arc::clone(c),
                c.begin(req.method(), req.uri()),
                quanta::Instant::now(),
            )
        });
        let call = prepare(&mut req, &forwarded_for, &hosts, cookies)
            .map(|()| cached.borrow_mut().call(req.map(ProxyBody::Incoming)));
        async move {
            let resp = match call {
                Ok(future) => future.await?,
                // Refused before the cache: it never sees the request.
                Err(refusal) => refusal.response().map(CacheBody::stream),
            };
            if let Some((conn, head, start)) = logged {
                conn.line(head, resp.status(), start, resp.headers());
            }
            Ok(resp)
        }
    })
}

/// A connection's access log: the log, the peer's address as text, and a
/// spare buffer for a request's `METHOD URI` (a connection's requests come
/// one after another, so one buffer serves them all).
struct ConnLog {
    log: AccessLog,
    peer: String,
    spare: std::sync::Mutex<Vec<u8>>,
}

/// The largest `METHOD URI` buffer kept for the connection's next request.
const SPARE_KEEP: usize = 4096;

impl ConnLog {
    /// `METHOD URI` of a request (the URI absolute-form when it came so),
    /// in the connection's spare buffer.
    fn begin(&self, method: &Method, uri: &Uri) -> Vec<u8> {
        let mut head = self
            .spare
            .lock()
            .map(|mut spare| std::mem::take(&mut *spare))
            .unwrap_or_default();
        head.clear();
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        match uri.path_and_query() {
            Some(pq) if uri.scheme().is_none() => head.extend_from_slice(pq.as_str().as_bytes()),
            _ => {
                let _ = write!(head, "{uri}");
            }
        }
        head
    }

    /// `PEER METHOD URI -> STATUS in MS ms [CACHE-STATUS]` (after the
    /// time), with `core::fmt` only for an absolute-form URI; `head` goes
    /// back to the spare.
    fn line(&self, head: Vec<u8>, status: StatusCode, start: quanta::Instant, headers: &HeaderMap) {
        let cache_status = headers
            .get(&CACHE_STATUS)
            .map_or(&b"-"[..], HeaderValue::as_bytes);
        let elapsed = quanta::Instant::now().saturating_duration_since(start);
        self.log.line(|buf| {
            buf.extend_from_slice(self.peer.as_bytes());
            buf.push(b' ');
            buf.extend_from_slice(&head);
            buf.extend_from_slice(b" -> ");
            buf.extend_from_slice(status.as_str().as_bytes());
            buf.extend_from_slice(b" in ");
            access_log::push_millis(buf, elapsed);
            buf.extend_from_slice(b" ms [");
            buf.extend_from_slice(cache_status);
            buf.push(b']');
        });
        if head.capacity() <= SPARE_KEEP {
            if let Ok(mut spare) = self.spare.lock() {
                *spare = head;
            }
        }
    }
}

fn print_stats(cache: &Cache, with_l2: bool) {
    let s = cache.stats();
    let mut line = format!(
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
    if with_l2 {
        line.push_str(&format!(
            " hits_l1={} hits_l2={} promotions={} l2_writes={} l2_writes_dropped={} \
             l2_errors={} l2_timeouts={} l2_decode_errors={}",
            s.hits_l1,
            s.hits_l2,
            s.promotions,
            s.l2_writes,
            s.l2_writes_dropped,
            s.l2_errors,
            s.l2_timeouts,
            s.l2_decode_errors
        ));
    }
    println!("{line}");
    let _ = std::io::stdout().flush();
}

// ---------------------------------------------------------------------------
// Forwarding

/// Sends requests to the upstream over a pooled hyper-util client.
#[derive(Clone)]
struct Proxy {
    client: Client<HttpConnector, ProxyBody>,
    upstream: Upstream,
    hosts: Hosts,
    cookies: Cookies,
    /// How long a request the cache passes through (a `POST`, a bypass)
    /// waits for the upstream's head: a little past the cache's own
    /// `upstream_timeout`, so on cached paths the cache answers first.
    head_timeout: Duration,
}

impl Proxy {
    fn new(upstream: Upstream, hosts: Hosts, cookies: Cookies, upstream_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self {
            client,
            upstream,
            hosts,
            cookies,
            head_timeout: upstream_timeout.saturating_add(Duration::from_millis(250)),
        }
    }

    /// Forwards `req` and returns the upstream's answer, a 502, or a 504
    /// when the upstream's head does not come in time.
    async fn forward(&self, req: Request<ProxyBody>) -> Response<ProxyBody> {
        let req = match self.upstream_request(req) {
            Ok(req) => req,
            Err(refusal) => return refusal.response(),
        };
        match tokio::time::timeout(self.head_timeout, self.client.request(req)).await {
            Err(_) => text_response(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream timeout: no response head in time",
            ),
            Ok(Ok(resp)) => downstream_response(resp),
            Ok(Err(e)) => text_response(
                StatusCode::BAD_GATEWAY,
                &format!("upstream error: {}", error_chain(&e)),
            ),
        }
    }

    /// The request as the upstream should see it: its URI, its `Host`, no
    /// hop-by-hop headers, `X-Forwarded-Host` (from [`Hosts::forwarded`],
    /// which the cache key is made from too), `X-Forwarded-Proto` and `Via`
    /// added. The body is passed on as it is, streaming.
    ///
    /// Client requests come through [`prepare`] (client-set proxy headers
    /// dropped, `X-Forwarded-For` set); warming requests do not, and have
    /// no `X-Forwarded-For`.
    fn upstream_request(&self, req: Request<ProxyBody>) -> Result<Request<ProxyBody>, Refusal> {
        let (mut parts, body) = req.into_parts();
        // Client requests were checked in `prepare`; this refuses warming
        // targets for a host we do not serve.
        let forwarded_host = self.hosts.forwarded(&parts.uri, &parts.headers)?;
        // The client's path and query under the upstream's scheme and
        // authority (from parts: `Uri::builder` re-checks what is known good).
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        uri.scheme = Some(self.upstream.scheme.clone());
        uri.authority = Some(self.upstream.authority.clone());
        parts.uri = Uri::from_parts(uri)
            .map_err(|e| Refusal(StatusCode::BAD_REQUEST, format!("bad request: {e}")))?;
        // We speak HTTP/1.1 to the upstream whatever the client spoke.
        parts.version = Version::HTTP_11;

        let lookup = parts.method == Method::GET || parts.method == Method::HEAD;
        // A GET the cache may store carries no cookies under `--cookies
        // pass` (client requests with cookies are marked `Uncached` and
        // kept whole; this catches warming targets with a `Cookie`).
        if lookup && self.cookies == Cookies::Pass && parts.extensions.get::<Uncached>().is_none() {
            parts.headers.remove(COOKIE);
        }
        let headers = &mut parts.headers;
        strip_hop_by_hop(headers);
        headers.insert(HOST, self.upstream.host.clone());
        let xfh = X_FORWARDED_HOST;
        match forwarded_host {
            Some(host) => headers.insert(xfh, host),
            None => headers.remove(xfh),
        };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
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
    Response::from_parts(parts, ProxyBody::Incoming(body))
}

/// A small plain-text response of our own (errors).
fn text_response(status: StatusCode, msg: &str) -> Response<ProxyBody> {
    let body = ProxyBody::Full(Full::new(Bytes::from(format!("{msg}\n"))));
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
