//! Nothing a client sends can poison a shared entry: `examples/proxy.rs`
//! (included below and run on loopback through its own accept loop) in
//! front of an origin that builds absolute URLs from the headers proxies
//! set (`Forwarded: host=`, `X-Forwarded-Host`, `X-Forwarded-Prefix`, else
//! `Host`), personalises pages by `Cookie` without `Vary`, and answers
//! `GET` bodies. Every response is cacheable (`max-age=300`). A hostile
//! request goes first; a normal client then must get an answer without
//! the attacker's input, from L1, and from L2 on a second proxy with an
//! empty L1 sharing the Redis.
//!
//! Requests are written byte for byte on raw TCP connections, so that the
//! tests can send what a hostile client sends (no `Host`, two `Host`s, an
//! absolute-form target). The last section checks the proxy's shutdown:
//! idle connections closed at once, the request in progress answered.
#![cfg(all(feature = "admin", feature = "opentelemetry"))]

#[allow(dead_code)]
#[path = "../examples/proxy.rs"]
mod proxy;

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bound on anything that must happen (a response, a Redis write).
const DEADLINE: Duration = Duration::from_secs(20);
const ATTACKER: &str = "evil.example";

// ---------------------------------------------------------------------------
// The origin

/// What the origin saw: calls per path (without query), and the headers
/// of the last `/echo` request.
#[derive(Default)]
struct Seen {
    calls: HashMap<String, usize>,
    echo: Vec<(String, String)>,
}

#[derive(Clone, Default)]
struct Origin(Arc<Mutex<Seen>>);

impl Origin {
    fn calls(&self, path: &str) -> usize {
        self.0.lock().unwrap().calls.get(path).copied().unwrap_or(0)
    }

    fn echo(&self) -> Vec<(String, String)> {
        self.0.lock().unwrap().echo.clone()
    }
}

/// The host and path prefix an origin behind a proxy builds absolute URLs
/// from, as common frameworks do: `Forwarded: host=`, else the first
/// `X-Forwarded-Host`, else `Host`; then `X-Forwarded-Prefix`.
fn base_url(req: &Request<Incoming>) -> String {
    let h = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let from_forwarded = h("forwarded").and_then(|f| {
        f.split([';', ','])
            .find_map(|p| p.trim().strip_prefix("host=").map(str::to_owned))
    });
    let host = from_forwarded
        .or_else(|| h("x-forwarded-host").map(|v| v.split(',').next().unwrap().trim().to_owned()))
        .or_else(|| h("host"))
        .unwrap_or_default();
    let prefix = h("x-forwarded-prefix").unwrap_or_default();
    format!("http://{host}{prefix}")
}

async fn origin_service(
    origin: Origin,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let base = base_url(&req);
    let cookie = req
        .headers()
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.strip_prefix("session="))
        .map(str::to_owned);
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let method = req.method().clone();
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let body = String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
    {
        let mut seen = origin.0.lock().unwrap();
        *seen.calls.entry(path.clone()).or_default() += 1;
        if path == "/echo" {
            seen.echo = headers;
        }
    }
    let cacheable = Response::builder().header("cache-control", "max-age=300");
    let resp = match (method.as_str(), path.as_str()) {
        ("GET" | "HEAD", "/page") => cacheable.header("content-type", "text/html").body(format!(
            "<html><script src=\"{base}/static/app.js\"></script></html>"
        )),
        ("GET" | "HEAD", "/old") => cacheable
            .status(StatusCode::MOVED_PERMANENTLY)
            .header("location", format!("{base}/new"))
            .body(String::new()),
        // Personalised, and no `Vary: Cookie`.
        ("GET" | "HEAD", "/account") => cacheable.body(format!(
            "hello {}",
            cookie.as_deref().unwrap_or("anonymous")
        )),
        ("GET" | "HEAD", "/search") => cacheable.body(format!("results for [{body}]")),
        ("GET", "/echo") => Response::builder()
            .header("cache-control", "no-store")
            .body("seen".to_owned()),
        ("POST", _) => Response::builder()
            .header("cache-control", "no-store")
            .body("posted".to_owned()),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(String::new()),
    };
    Ok(resp.unwrap().map(|b| Full::new(Bytes::from(b))))
}

/// Starts the origin on 127.0.0.1:0.
async fn start_origin() -> (Origin, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let origin = Origin::default();
    let o = origin.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let o = o.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| origin_service(o.clone(), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (origin, addr)
}

/// Starts `examples/proxy.rs` with `args` (plus `--upstream`) on
/// 127.0.0.1:0.
async fn start_proxy(upstream: SocketAddr, args: &[&str]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    args.push("--upstream".into());
    args.push(format!("http://{upstream}"));
    tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if let Err(e) = proxy::serve_args(&args, listener, std::future::pending()).await {
            panic!("the proxy refused {args:?}: {e}");
        }
    });
    addr
}

// ---------------------------------------------------------------------------
// A raw HTTP/1 client

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn cache_status(&self) -> &str {
        self.header("cache-status").unwrap_or("")
    }

    /// The whole response as text, for "does it mention the attacker".
    fn text(&self) -> String {
        format!("{} {:?} {}", self.status, self.headers, self.body)
    }
}

/// Sends `raw` (a whole request; the connection is closed after it) and
/// reads the response.
async fn send_raw(addr: SocketAddr, raw: &str) -> Reply {
    tokio::time::timeout(DEADLINE, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(raw.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.unwrap();
        parse(&buf)
    })
    .await
    .unwrap_or_else(|_| panic!("no response within {DEADLINE:?} to {raw:?}"))
}

fn parse(buf: &[u8]) -> Reply {
    let text = String::from_utf8_lossy(buf);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        rest.to_owned()
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// A `GET` for `target` with `headers` (`Host: shop.example` unless they
/// name one, or `host` is given as `None` for none at all).
fn get(target: &str, headers: &[(&str, &str)]) -> String {
    request("GET", target, "HTTP/1.1", Some("shop.example"), headers, "")
}

fn request(
    method: &str,
    target: &str,
    version: &str,
    host: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> String {
    let mut r = format!("{method} {target} {version}\r\n");
    let names_host = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host"));
    if let (Some(h), false) = (host, names_host) {
        r.push_str(&format!("host: {h}\r\n"));
    }
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() {
        r.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    r.push_str("connection: close\r\n\r\n");
    r.push_str(body);
    r
}

// ---------------------------------------------------------------------------
// Host and the headers origins trust

/// The hostile requests: each goes first on a URL of its own (the
/// query), then a normal client asks for the same URL.
fn attacks() -> Vec<(&'static str, String)> {
    vec![
        (
            "Host: evil.example",
            get("/page?a=host", &[("host", ATTACKER)]),
        ),
        (
            "Host: evil.example on a redirect",
            get("/old?a=host", &[("host", ATTACKER)]),
        ),
        (
            "absolute-form target http://evil.example/",
            get("http://evil.example/page?a=absolute", &[]),
        ),
        (
            "HTTP/1.0 without Host, X-Forwarded-Host: evil.example",
            request(
                "GET",
                "/page?a=xfh10",
                "HTTP/1.0",
                None,
                &[("x-forwarded-host", ATTACKER)],
                "",
            ),
        ),
        (
            "HTTP/1.0 without Host, X-Forwarded-Host: evil.example, on a redirect",
            request(
                "GET",
                "/old?a=xfh10",
                "HTTP/1.0",
                None,
                &[("x-forwarded-host", ATTACKER)],
                "",
            ),
        ),
        (
            "X-Forwarded-Host: evil.example",
            get("/page?a=xfh", &[("x-forwarded-host", ATTACKER)]),
        ),
        (
            "Forwarded: host=evil.example",
            get("/page?a=forwarded", &[("forwarded", "host=evil.example")]),
        ),
        (
            "X-Forwarded-Prefix: //evil.example",
            get(
                "/page?a=prefix",
                &[("x-forwarded-prefix", "//evil.example")],
            ),
        ),
    ]
}

/// The target of a raw request (its first line's second word), without
/// the scheme and authority of an absolute-form one.
fn target_of(raw: &str) -> String {
    let t = raw.split(' ').nth(1).unwrap();
    match t.strip_prefix("http://") {
        Some(rest) => rest[rest.find('/').unwrap()..].to_owned(),
        None => t.to_owned(),
    }
}

#[tokio::test]
async fn no_host_or_forwarding_header_a_client_sends_reaches_a_shared_entry() {
    let (origin, upstream) = start_origin().await;
    let proxy = start_proxy(upstream, &[]).await;
    let mut failures = Vec::new();
    for (name, attack) in attacks() {
        let target = target_of(&attack);
        let path = target.split('?').next().unwrap().to_owned();
        let before = origin.calls(&path);
        let _ = send_raw(proxy, &attack).await;
        let normal = send_raw(proxy, &get(&target, &[])).await;
        if normal.text().contains(ATTACKER) {
            failures.push(format!("{name}: poisoned: {}", normal.text()));
        }
        // The attacker's request is the one the origin answered, and the
        // normal client got what was stored for it (else this case proves
        // nothing).
        if origin.calls(&path) != before + 1 || !normal.cache_status().contains("hit") {
            failures.push(format!(
                "{name}: not answered from the attacker's entry: {}",
                normal.text()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn client_set_proxy_headers_do_not_reach_the_upstream() {
    let (origin, upstream) = start_origin().await;
    let proxy = start_proxy(upstream, &[]).await;
    let hostile = [
        ("forwarded", "for=6.6.6.6;host=evil.example;proto=https"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-host", ATTACKER),
        ("x-forwarded-proto", "https-evil"),
        ("x-forwarded-port", "6666"),
        ("x-forwarded-prefix", "/evil"),
        ("x-forwarded-server", ATTACKER),
        ("x-real-ip", "6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
        ("x-original-url", "/evil"),
        ("x-rewrite-url", "/evil"),
        ("x-original-host", ATTACKER),
        ("x-host", ATTACKER),
        ("x-http-method-override", "DELETE-evil"),
    ];
    let r = send_raw(proxy, &get("/echo", &hostile)).await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = origin.echo();
    let leaked: Vec<_> = seen
        .iter()
        .filter(|(_, v)| v.contains("evil") || v.contains("6.6.6.6") || v.contains("6666"))
        .collect();
    assert!(leaked.is_empty(), "reached the origin: {leaked:?}");
    let value = |name: &str| {
        seen.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    // The proxy's own values, once each.
    assert_eq!(value("x-forwarded-for"), ["127.0.0.1"], "{seen:?}");
    assert_eq!(value("x-forwarded-proto"), ["http"], "{seen:?}");
    assert_eq!(value("host"), [upstream.to_string()], "{seen:?}");
    assert!(value("x-forwarded-host").is_empty(), "{seen:?}");
}

#[tokio::test]
async fn a_get_body_is_not_in_the_key_so_the_request_passes() {
    let (origin, upstream) = start_origin().await;
    let proxy = start_proxy(upstream, &[]).await;
    let fat = request(
        "GET",
        "/search",
        "HTTP/1.1",
        Some("shop.example"),
        &[],
        "<script>evil.example</script>",
    );
    let r = send_raw(proxy, &fat).await;
    assert!(r.body.contains(ATTACKER), "the body is forwarded: {r:?}");
    let normal = send_raw(proxy, &get("/search", &[])).await;
    assert_eq!(normal.body, "results for []", "{normal:?}");
    assert_eq!(origin.calls("/search"), 2);
    // And the normal answer is cached.
    let again = send_raw(proxy, &get("/search", &[])).await;
    assert!(again.cache_status().contains("hit"), "{again:?}");
    assert_eq!(origin.calls("/search"), 2);
}

#[tokio::test]
async fn allow_host_refuses_other_hosts_and_keys_the_ones_it_forwards() {
    let (origin, upstream) = start_origin().await;
    let proxy = start_proxy(upstream, &["--allow-host", "shop.example,www.shop.example"]).await;
    for (what, raw, status) in [
        ("another host", get("/page", &[("host", ATTACKER)]), 421),
        (
            "another host, absolute-form",
            get("http://evil.example/page", &[]),
            421,
        ),
        (
            "no host",
            request("GET", "/page", "HTTP/1.0", None, &[], ""),
            400,
        ),
        (
            "two hosts",
            get("/page", &[("host", "shop.example"), ("host", ATTACKER)]),
            400,
        ),
    ] {
        let r = send_raw(proxy, &raw).await;
        assert_eq!(r.status, status, "{what}: {r:?}");
    }
    assert_eq!(
        origin.calls("/page"),
        0,
        "refused requests reached the origin"
    );

    // Normalised: case, the default port and a trailing dot.
    let shop = send_raw(proxy, &get("/page", &[("host", "SHOP.Example.:80")])).await;
    assert!(
        shop.body.contains("\"http://shop.example/static/app.js\""),
        "{shop:?}"
    );
    // Another allowed host has entries of its own...
    let www = send_raw(proxy, &get("/page", &[("host", "www.shop.example")])).await;
    assert!(
        www.body
            .contains("\"http://www.shop.example/static/app.js\""),
        "{www:?}"
    );
    assert_eq!(origin.calls("/page"), 2);
    // ...and each is served its own.
    let shop2 = send_raw(proxy, &get("/page", &[("host", "shop.example")])).await;
    assert!(shop2.cache_status().contains("hit"), "{shop2:?}");
    assert!(shop2.body.contains("//shop.example/"), "{shop2:?}");
    let www2 = send_raw(proxy, &get("/page", &[("host", "www.shop.example")])).await;
    assert!(www2.cache_status().contains("hit"), "{www2:?}");
    assert!(www2.body.contains("//www.shop.example/"), "{www2:?}");
    assert_eq!(origin.calls("/page"), 2);
}

#[tokio::test]
async fn public_host_replaces_whatever_the_client_asked_for() {
    let (_origin, upstream) = start_origin().await;
    let proxy = start_proxy(upstream, &["--public-host", "shop.example"]).await;
    let r = send_raw(
        proxy,
        &get(
            "/page",
            &[("host", ATTACKER), ("x-forwarded-host", ATTACKER)],
        ),
    )
    .await;
    assert!(
        r.body.contains("\"http://shop.example/static/app.js\""),
        "{r:?}"
    );
    let normal = send_raw(proxy, &get("/page", &[("host", "127.0.0.1")])).await;
    assert!(normal.cache_status().contains("hit"), "{normal:?}");
    assert!(!normal.text().contains(ATTACKER), "{normal:?}");
}

// ---------------------------------------------------------------------------
// Cookie

#[tokio::test]
async fn cookie_requests_pass_by_default() {
    let (origin, upstream) = start_origin().await;
    let proxy = start_proxy(upstream, &[]).await;
    let alice = send_raw(proxy, &get("/account", &[("cookie", "session=alice")])).await;
    assert_eq!(alice.body, "hello alice");

    let anon = send_raw(proxy, &get("/account", &[])).await;
    assert_eq!(anon.body, "hello anonymous", "{anon:?}");
    assert_eq!(origin.calls("/account"), 2);
    // Passed, not stored.
    assert!(alice.cache_status().contains("fwd=bypass"), "{alice:?}");
    let anon = send_raw(proxy, &get("/account", &[])).await;
    assert!(anon.cache_status().contains("hit"), "{anon:?}");
    assert_eq!(anon.body, "hello anonymous");

    // A cookie request is not answered from the anonymous entry either.
    let bob = send_raw(proxy, &get("/account", &[("cookie", "session=bob")])).await;
    assert_eq!(bob.body, "hello bob", "{bob:?}");
    assert_eq!(origin.calls("/account"), 3);

    // An unsafe request with a cookie still invalidates the URL.
    let post = request(
        "POST",
        "/account",
        "HTTP/1.1",
        Some("shop.example"),
        &[("cookie", "session=alice")],
        "x=1",
    );
    assert_eq!(send_raw(proxy, &post).await.status, 200);
    let anon = send_raw(proxy, &get("/account", &[])).await;
    assert!(!anon.cache_status().contains("hit"), "{anon:?}");
    assert_eq!(origin.calls("/account"), 5);
}

#[tokio::test]
async fn cookies_partition_caches_per_cookie_set() {
    let (origin, upstream) = start_origin().await;
    let proxy = start_proxy(upstream, &["--cookies", "partition"]).await;
    let alice = get("/account", &[("cookie", "session=alice")]);
    let r = send_raw(proxy, &alice).await;
    assert_eq!(r.body, "hello alice");
    let anon = send_raw(proxy, &get("/account", &[])).await;
    assert_eq!(anon.body, "hello anonymous", "{anon:?}");
    let bob = send_raw(proxy, &get("/account", &[("cookie", "session=bob")])).await;
    assert_eq!(bob.body, "hello bob", "{bob:?}");
    assert_eq!(origin.calls("/account"), 3);
    // Each from its own partition.
    for (raw, body) in [
        (&alice, "hello alice"),
        (&get("/account", &[]), "hello anonymous"),
        (&get("/account", &[("cookie", "session=bob")]), "hello bob"),
    ] {
        let r = send_raw(proxy, raw).await;
        assert!(r.cache_status().contains("hit"), "{r:?}");
        assert_eq!(r.body, body);
    }
    assert_eq!(origin.calls("/account"), 3);
}

// ---------------------------------------------------------------------------
// L2

/// The attacks go to proxy A; a normal client is answered from A's L1,
/// then from Redis by proxy B (a fresh L1), without the attacker's host.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_entries_in_redis_are_not_poisoned() {
    use redis_support::{require_redis, RedisServer};
    require_redis();
    let redis = RedisServer::start();
    let url = redis.url();
    let (_origin, upstream) = start_origin().await;
    let args = ["--redis", url.as_str(), "--namespace", "poison"];
    let a = start_proxy(upstream, &args).await;
    let targets = ["/page?l2=1", "/old?l2=1"];
    for t in targets {
        let _ = send_raw(a, &get(t, &[("host", ATTACKER)])).await;
    }
    // The L2 writes are queued: wait until both entries are in Redis.
    let start = Instant::now();
    loop {
        let n = match redis.cmd(&["DBSIZE"]) {
            Ok(redis_support::Reply::Int(n)) => n,
            other => panic!("DBSIZE: {other:?}"),
        };
        if n >= targets.len() as i64 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "{n} key(s) in Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // B's first L2 look-up may time out while it connects (the proxy
    // keeps the crate's 50 ms L2 timeout): a fresh B until one answers
    // from L2. Every answer, from L2 or not, is checked.
    for t in targets {
        let mut from_l2 = false;
        for _ in 0..5 {
            let b = start_proxy(upstream, &args).await;
            let _ = send_raw(b, &get("/echo", &[])).await; // connects to Redis
            let r = send_raw(b, &get(t, &[])).await;
            assert!(!r.text().contains(ATTACKER), "{t} on B: {r:?}");
            if r.cache_status().contains("detail=l2") {
                from_l2 = true;
                break;
            }
        }
        assert!(from_l2, "{t}: never answered from L2");
    }
    // And A answers from L1.
    for t in targets {
        let normal = send_raw(a, &get(t, &[])).await;
        assert!(
            normal.cache_status().contains("detail=l1"),
            "{t}: {normal:?}"
        );
        assert!(!normal.text().contains(ATTACKER), "{t} from L1: {normal:?}");
    }
}

#[tokio::test]
async fn bad_keying_flags_are_refused() {
    for (args, expect) in [
        (
            &["--public-host", "a.example", "--allow-host", "b.example"][..],
            "exclude each other",
        ),
        (&["--allow-host", "user@b.example"][..], "not a host"),
        (&["--allow-host", "b.example,"][..], "not a host"),
        (&["--public-host", "/path"][..], "not a host"),
        (&["--cookies", "share"][..], "pass or partition"),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut all = args.to_vec();
        all.extend(["--upstream", "http://127.0.0.1:9"]);
        let err = proxy::serve_args(&all, listener, std::future::pending())
            .await
            .expect_err("refused");
        assert!(err.to_string().contains(expect), "{args:?}: {err}");
    }
}

/// `--l2-key-file`: a file that is missing or has a bad line is refused
/// naming the file and the line (never the key), and the flag needs the
/// L2 tier.
#[cfg(feature = "l2-encryption")]
#[tokio::test]
async fn bad_l2_key_files_are_refused() {
    let dir = std::env::temp_dir().join(format!("ttc-proxy-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad-keys");
    let secret = "5f0e9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e";
    std::fs::write(&bad, format!("# keys\nk1:{secret}\n")).unwrap();
    let good = dir.join("good-keys");
    std::fs::write(&good, format!("k1:{secret}0f\n")).unwrap();
    let missing = dir.join("missing-keys");
    let (bad, good, missing) = (
        bad.to_str().unwrap().to_owned(),
        good.to_str().unwrap().to_owned(),
        missing.to_str().unwrap().to_owned(),
    );
    let redis = ["--redis", "redis://127.0.0.1:9/"];
    for (args, expect) in [
        (
            [&redis[..], &["--l2-key-file", &bad]].concat(),
            format!("--l2-key-file {bad}: line 2: the key must be 64 hex digits"),
        ),
        (
            [&redis[..], &["--l2-key-file", &missing]].concat(),
            format!("--l2-key-file {missing}: cannot read the key file"),
        ),
        (
            vec!["--l2-key-file", good.as_str()],
            "--l2-key-file applies to the L2 tier".to_owned(),
        ),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut all = args.to_vec();
        all.extend(["--upstream", "http://127.0.0.1:9"]);
        let err = proxy::serve_args(&all, listener, std::future::pending())
            .await
            .expect_err("refused");
        assert!(err.to_string().starts_with(&expect), "{args:?}: {err}");
        assert!(!err.to_string().contains(&secret[..16]), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `--l2-key-file`, what the proxy writes to Redis is sealed: the
/// value holds neither the path nor the body, and a second proxy with the
/// same key file answers from L2.
#[cfg(feature = "l2-encryption")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_seals_l2_values_with_its_key_file() {
    use redis_support::{require_redis, RedisServer, Reply as R};
    require_redis();
    let redis = RedisServer::start();
    let url = redis.url();
    let dir = std::env::temp_dir().join(format!("ttc-proxy-sealed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys");
    std::fs::write(
        &file,
        "k1:5f0e9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f\n",
    )
    .unwrap();
    let file = file.to_str().unwrap().to_owned();
    let (_origin, upstream) = start_origin().await;
    let args = [
        "--redis",
        url.as_str(),
        "--namespace",
        "sealed",
        "--l2-key-file",
        &file,
    ];
    let a = start_proxy(upstream, &args).await;
    let r = send_raw(a, &get("/page?sealed=1", &[])).await;
    assert_eq!(r.status, 200);
    let start = Instant::now();
    let key = loop {
        if let Ok(R::Array(found)) = redis.cmd(&["KEYS", "sealed:1:*"]) {
            if let Some(R::Bulk(k)) = found.first() {
                break String::from_utf8(k.clone()).unwrap();
            }
        }
        assert!(start.elapsed() < DEADLINE, "no entry in Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let Ok(R::Bulk(value)) = redis.cmd(&["GET", &key]) else {
        panic!("GET {key}");
    };
    assert!(value.starts_with(b"TTS\x01\x02k1"), "sealed with k1");
    let text = String::from_utf8_lossy(&value);
    assert!(
        !text.contains("/page") && !text.contains("sealed=1"),
        "{text}"
    );
    // A second proxy with the same key file: an L2 hit (a fresh one until
    // its first look-up has connected, as above).
    let mut from_l2 = false;
    for _ in 0..5 {
        let b = start_proxy(upstream, &args).await;
        let _ = send_raw(b, &get("/echo", &[])).await;
        let r = send_raw(b, &get("/page?sealed=1", &[])).await;
        if r.cache_status().contains("detail=l2") {
            from_l2 = true;
            break;
        }
    }
    assert!(from_l2, "never answered from L2");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Warming requests do not go through the client-side checks: they are
/// keyed and forwarded by the same rules, so what they store is what
/// clients are answered.
#[tokio::test]
async fn warmed_entries_answer_clients_under_the_same_keys() {
    let (origin, upstream) = start_origin().await;
    let dir = std::env::temp_dir().join(format!("ttc-poison-warm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: [(&[&str], &str, &str, &str); 2] = [
        (
            &["--public-host", "shop.example"],
            "/page?warm=public",
            "/page?warm=public",
            "127.0.0.1",
        ),
        (
            &["--allow-host", "shop.example"],
            "http://shop.example/page?warm=allowed",
            "/page?warm=allowed",
            "Shop.Example",
        ),
    ];
    for (i, (flags, line, target, host)) in cases.into_iter().enumerate() {
        let file = dir.join(format!("warm-{i}.txt"));
        std::fs::write(&file, format!("{line}\n")).unwrap();
        let mut args = flags.to_vec();
        let path = file.to_str().unwrap().to_owned();
        args.extend(["--warm", path.as_str()]);
        let before = origin.calls("/page");
        let proxy = start_proxy(upstream, &args).await;
        let start = Instant::now();
        while origin.calls("/page") == before {
            assert!(start.elapsed() < DEADLINE, "{flags:?}: not warmed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The store follows the upstream answer: allow it a moment.
        let start = Instant::now();
        let r = loop {
            let r = send_raw(proxy, &get(target, &[("host", host)])).await;
            if r.cache_status().contains("hit") || start.elapsed() > DEADLINE {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(r.cache_status().contains("hit"), "{flags:?}: {r:?}");
        assert!(r.body.contains("//shop.example/"), "{flags:?}: {r:?}");
        assert_eq!(origin.calls("/page"), before + 1, "{flags:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--redis-sentinel NAME@HOST:PORT,...`: bad values are clear errors
/// (never showing a password), and it excludes the other L2 flags.
#[cfg(feature = "redis")]
#[tokio::test]
async fn bad_sentinel_flags_are_refused() {
    for (args, expect) in [
        (
            &["--redis-sentinel", "mymaster"][..],
            "expected NAME@HOST:PORT",
        ),
        (
            &["--redis-sentinel", "@127.0.0.1:26379"][..],
            "expected NAME@",
        ),
        (&["--redis-sentinel", "m@127.0.0.1"][..], "is not HOST:PORT"),
        (
            &["--redis-sentinel", "m@127.0.0.1:26379,"][..],
            "is not HOST:PORT",
        ),
        (
            &["--redis-sentinel", "m@127.0.0.1:0"][..],
            "is not HOST:PORT",
        ),
        (
            &["--redis-sentinel", "m@redis://:hunter2@127.0.0.1:26379/3"][..],
            "no database",
        ),
        (
            &["--redis-sentinel", "my master@127.0.0.1:26379"][..],
            "master name",
        ),
        (
            &[
                "--redis",
                "redis://127.0.0.1:6379/",
                "--redis-sentinel",
                "m@127.0.0.1:26379",
            ][..],
            "--redis and --redis-sentinel exclude each other",
        ),
        (
            &[
                "--redis-sentinel",
                "m@127.0.0.1:26379",
                "--redis-cluster",
                "redis://127.0.0.1:7000/",
            ][..],
            "--redis-sentinel and --redis-cluster exclude each other",
        ),
        (
            &["--redis-sentinel-master", "redis://:hunter2@master/0"][..],
            "applies to --redis-sentinel",
        ),
        (
            &[
                "--redis-sentinel",
                "m@127.0.0.1:26379",
                "--redis-sentinel-master",
                "redis+unix:///tmp/hunter2.sock",
            ][..],
            "--redis-sentinel-master: ",
        ),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut all = args.to_vec();
        all.extend(["--upstream", "http://127.0.0.1:9"]);
        let err = proxy::serve_args(&all, listener, std::future::pending())
            .await
            .expect_err("refused");
        let err = err.to_string();
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!err.contains("hunter2"), "{args:?}: {err}");
    }
}

/// Two proxies on the master that Redis Sentinel names: what one stored,
/// the other (a fresh L1) answers from L2.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_share_the_master_named_by_the_sentinels() {
    use redis_support::{require_redis, RedisSentinelSet};
    require_redis();
    let set = tokio::task::block_in_place(|| RedisSentinelSet::start("proxy-sl"));
    let sentinels: Vec<String> = set
        .sentinel_urls()
        .iter()
        .map(|u| u.trim_start_matches("redis://").to_owned())
        .collect();
    let flag = format!("{}@{}", set.name(), sentinels.join(","));
    let (_origin, upstream) = start_origin().await;
    let args = ["--redis-sentinel", flag.as_str(), "--namespace", "psl"];
    let a = start_proxy(upstream, &args).await;
    let r = send_raw(a, &get("/page?sentinel=1", &[])).await;
    assert_eq!(r.status, 200, "{r:?}");
    // The write is queued: wait until it is on the master.
    let start = Instant::now();
    while set
        .node(0)
        .cli(&["--scan", "--pattern", "psl:*"])
        .text()
        .trim()
        .is_empty()
    {
        assert!(start.elapsed() < DEADLINE, "never written to the master");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // B's first L2 look-up may time out while it finds the master (the
    // proxy keeps the crate's 50 ms L2 timeout): a fresh B until one
    // answers from L2.
    let mut from_l2 = false;
    for _ in 0..5 {
        let b = start_proxy(upstream, &args).await;
        let _ = send_raw(b, &get("/echo", &[])).await; // finds the master
        let r = send_raw(b, &get("/page?sentinel=1", &[])).await;
        assert_eq!(r.status, 200, "{r:?}");
        if r.cache_status().contains("detail=l2") {
            from_l2 = true;
            break;
        }
    }
    assert!(from_l2, "never answered from L2");
}

// ---------------------------------------------------------------------------
// Shutdown: no client is cut off, no idle connection holds the proxy

/// Reads one response with a `Content-Length` body from a kept-alive
/// connection (the connection stays open).
async fn read_one(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            if body.len() >= len {
                return text;
            }
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a whole response: {text:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn shutdown_closes_idle_connections_at_once_and_finishes_the_request_in_progress() {
    // An origin whose `/held` answers only when the test opens its gate.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let entered = Arc::new(tokio::sync::Notify::new());
    let origin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = origin_listener.local_addr().unwrap();
    let (g, e) = (gate.clone(), entered.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = origin_listener.accept().await {
            let (g, e) = (g.clone(), e.clone());
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (g, e) = (g.clone(), e.clone());
                async move {
                    if req.uri().path() == "/held" {
                        e.notify_one();
                        g.acquire().await.unwrap().forget();
                    }
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("cache-control", "no-store")
                            .body(Full::new(Bytes::from_static(b"done")))
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
        }
    });

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = format!("http://{origin}");
    let served = tokio::spawn(async move {
        let args = ["--upstream", upstream.as_str(), "--access-log", "off"];
        proxy::serve_args(&args, listener, async {
            let _ = stop_rx.await;
        })
        .await
        .map_err(|e| e.to_string())
    });

    // A kept-alive connection, idle after one answer.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /a HTTP/1.1\r\nhost: shop.example\r\n\r\n")
        .await
        .unwrap();
    let first = tokio::time::timeout(DEADLINE, read_one(&mut idle))
        .await
        .expect("no answer on the idle connection");
    assert!(
        first.starts_with("HTTP/1.1 200") && first.ends_with("done"),
        "{first:?}"
    );
    // A request the origin holds.
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /held HTTP/1.1\r\nhost: shop.example\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, entered.notified())
        .await
        .expect("the held request never reached the origin");

    stop_tx.send(()).unwrap();
    // The idle connection is closed at once: well before the proxy's
    // 5 s drain deadline, after which it would only be dropped.
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(3), idle.read(&mut byte))
        .await
        .expect("an idle connection was still open 3 s after shutdown")
        .unwrap();
    assert_eq!(n, 0, "the idle connection got bytes after shutdown");
    // The request in progress still gets its whole answer, then the
    // connection closes.
    gate.add_permits(1);
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, busy.read_to_end(&mut rest))
        .await
        .expect("the request in progress got no answer after shutdown")
        .unwrap();
    let r = parse(&rest);
    assert_eq!((r.status, r.body.as_str()), (200, "done"), "{r:?}");
    // And the proxy's serve loop ends.
    tokio::time::timeout(DEADLINE, served)
        .await
        .expect("the proxy did not stop")
        .unwrap()
        .unwrap();
}
