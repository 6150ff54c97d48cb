//! The admin dashboard in a real browser: Debian's Chromium, headless,
//! driven through chromedriver (WebDriver), against a caching proxy on
//! loopback under a bounded load.
//!
//! A caching reverse proxy built like `examples/proxy.rs` (a `CacheLayer`
//! over a hyper-util client) forwards to an origin on `127.0.0.1:0`; the
//! admin service is on a listener of its own under the prefix `/ops`
//! (with the `redis` feature, the cache has an L2 tier on a
//! `redis-server` of its own). The test signs in through the page (a
//! wrong token first), drives a bounded load while the page polls, stops
//! it, and checks that the numbers on the page are the ones `/stats`
//! answers; that hostile label names are shown as text; that the breaker,
//! health reason and low performer the load made are on the page; then
//! saves a screenshot (`target/dashboard/dashboard.png`) and uses the
//! page's invalidate and warm buttons.
//!
//! Without Chromium and chromedriver this test fails, saying what to
//! install (`.ci/run` installs them): it never skips.

#![cfg(feature = "admin")]

mod support;
#[path = "support/webdriver.rs"]
mod webdriver;

#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tower::{service_fn, Layer};
use tower_tiered_cache::admin::AdminService;
use tower_tiered_cache::{Cache, CacheBuilder, CacheLayer};

use support::loopback::{client, send, serve, HttpClient, Server};
use webdriver::{Browser, Chromedriver};

const TOKEN: &str = "dashboard-test-token";
/// A label as an attacker could make one (a route template or host
/// taken from a request): the page must show it as text.
const HOSTILE: &str = "<img src=x onerror=\"document.title='pwned'\">/evil";
/// The page's title, which the hostile label would change if it ran.
const TITLE: &str = "tower-tiered-cache dashboard";
/// The whole test's bound.
const TEST_TIMEOUT: Duration = Duration::from_secs(240);
/// Requests the load sends, in rounds of `ROUND` at `CONCURRENCY`.
const LOAD_REQUESTS: usize = 2400;
const ROUND: usize = 80;
const CONCURRENCY: usize = 8;
/// The pause between rounds, so the page's polls see the load move.
const ROUND_PAUSE: Duration = Duration::from_millis(250);
/// Item ids the load picks from, skewed towards the small ones.
const ITEMS: u64 = 300;
/// A stored item's body.
const ITEM_BYTES: usize = 1500;

/// Calls the origin got, by path.
type Calls = Arc<Mutex<HashMap<String, u32>>>;

/// The origin: cacheable items, reports with no freshness (never stored:
/// a low performer), a failing route (its breaker opens) and the route
/// with the hostile label.
async fn origin(calls: Calls) -> Server {
    let app = Router::new().fallback(move |uri: Uri| {
        let calls = Arc::clone(&calls);
        async move {
            let path = uri.path().to_owned();
            *calls.lock().unwrap().entry(path.clone()).or_default() += 1;
            tokio::time::sleep(Duration::from_millis(3)).await;
            if path.starts_with("/api/items/") || path.starts_with("/evil/") {
                let body = format!("{path} {}", "x".repeat(ITEM_BYTES));
                answer(StatusCode::OK, ("cache-control", "max-age=600"), body)
            } else if path.starts_with("/reports/") {
                // No Cache-Control, no Last-Modified: never stored.
                answer(StatusCode::OK, ("x-report", "1"), path)
            } else {
                let down = "down".to_owned();
                answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ("cache-control", "no-store"),
                    down,
                )
            }
        }
    });
    serve(app).await
}

/// A response with one header.
fn answer(status: StatusCode, (name, value): (&str, &str), body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(name, value)
        .body(Body::from(body))
        .unwrap()
}

/// The label of a request: its route, as a template; the hostile one for
/// `/evil/…`.
fn label(parts: &http::request::Parts) -> Option<String> {
    let path = parts.uri.path();
    let route = if path.starts_with("/api/items/") {
        "/api/items/{id}"
    } else if path.starts_with("/reports/") {
        "/reports/{id}"
    } else if path.starts_with("/flaky/") {
        "/flaky/{id}"
    } else if path.starts_with("/evil/") {
        HOSTILE
    } else {
        return None;
    };
    Some(route.to_owned())
}

/// The proxy: the cache over a hyper-util client to the origin (as in
/// `examples/proxy.rs`), and the admin service under `/ops` on a listener
/// of its own.
struct Proxy {
    front: Server,
    admin: Server,
}

async fn proxy(cache: &Cache, origin: SocketAddr) -> Proxy {
    let upstream: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build_http();
    let forward = service_fn(move |req: Request<Body>| {
        let upstream = upstream.clone();
        async move {
            let (mut parts, body) = req.into_parts();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            parts.uri = format!("http://{origin}{path}").parse().unwrap();
            let resp = match upstream.request(Request::from_parts(parts, body)).await {
                Ok(resp) => resp.map(Body::new),
                Err(e) => Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(Body::from(format!("upstream error: {e}")))
                    .unwrap(),
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let cached = CacheLayer::new(cache.clone()).layer(forward);
    let admin = AdminService::new(cache.clone(), TOKEN)
        .unwrap()
        .prefix("/ops")
        .warmer(cached.warmer::<Body>());
    Proxy {
        front: serve(Router::new().fallback_service(cached)).await,
        admin: serve(Router::new().fallback_service(admin)).await,
    }
}

fn builder() -> CacheBuilder {
    Cache::builder()
        // Keys without the authority: warming by path shares the entries.
        .key_authority(false)
        // Small, so that the load evicts.
        .l1_capacity_bytes(256 * 1024)
        .label_fn(label)
        .circuit_breaker(3, Duration::from_secs(600))
}

/// A small seeded generator (xorshift), so each run sends the same load.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in 0..1.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The path of load request `i`: mostly items (skewed: a few hot ids),
/// some reports, a few failing and hostile-labelled requests.
fn load_path(rng: &mut Rng) -> String {
    let pick = rng.unit();
    let id = (rng.unit().powi(3) * ITEMS as f64) as u64;
    if pick < 0.86 {
        format!("/api/items/{id}")
    } else if pick < 0.94 {
        format!("/reports/{}", id % 20)
    } else if pick < 0.97 {
        format!("/evil/{}", id % 5)
    } else {
        format!("/flaky/{}", id % 3)
    }
}

/// Sends [`LOAD_REQUESTS`] requests through the proxy, [`CONCURRENCY`] at
/// a time, in rounds; every request bounded by the client's deadline.
async fn drive_load(front: SocketAddr) {
    let client = client();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..LOAD_REQUESTS / ROUND {
        let paths: Vec<String> = (0..ROUND).map(|_| load_path(&mut rng)).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in paths.chunks(ROUND / CONCURRENCY) {
            let (client, chunk) = (client.clone(), chunk.to_vec());
            tasks.spawn(async move {
                for path in chunk {
                    get(&client, front, &path).await;
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("a load task");
        }
        tokio::time::sleep(ROUND_PAUSE).await;
    }
}

async fn get(client: &HttpClient, addr: SocketAddr, path: &str) -> support::loopback::Reply {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(client, req).await
}

/// `/ops/stats` as the page reads it.
async fn stats(admin: SocketAddr) -> Value {
    let req = Request::get(format!("http://{admin}/ops/stats"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&client(), req).await;
    assert_eq!(r.status, StatusCode::OK);
    serde_json::from_slice(&r.body).unwrap()
}

/// The page's figures that must equal `/stats` once the load has stopped:
/// element id and stats field.
const FIGURES: &[(&str, &str)] = &[
    ("requests", "requests"),
    ("hits", "hits"),
    ("hits-l1", "hits_l1"),
    ("hits-l2", "hits_l2"),
    ("misses", "misses"),
    ("coalesced", "coalesced"),
    ("stale", "stale"),
    ("passes", "passes"),
    ("upstream-calls", "upstream_calls"),
    ("upstream-errors", "upstream_errors"),
    ("l1-entries", "l1_entries"),
    ("l1-bytes", "l1_bytes"),
    ("l1-capacity", "l1_capacity_bytes"),
    ("evictions", "evictions"),
    ("hit-ratio", "hit_ratio"),
    ("hit-p99", "hit_latency.p99_ms"),
    ("miss-p50", "miss_latency.p50_ms"),
];

/// `field` of `stats` (`a.b` for nested fields) as a number.
fn figure(stats: &Value, field: &str) -> f64 {
    field
        .split('.')
        .fold(stats, |v, k| &v[k])
        .as_f64()
        .unwrap_or_else(|| panic!("/stats has no number {field}"))
}

/// Reads every figure's `data-raw` from the page at once.
const READ_FIGURES: &str = "const out = {}; for (const id of arguments[0]) { \
     const e = document.getElementById(id); out[id] = e ? e.dataset.raw : null; } return out;";

/// Waits until the page shows what `/stats` answers (the load has
/// stopped: both stay still), and returns that answer.
async fn page_matches_stats(browser: &Browser, admin: SocketAddr) -> Value {
    let ids: Vec<&str> = FIGURES.iter().map(|(id, _)| *id).collect();
    let deadline = Instant::now() + webdriver::WAIT_TIMEOUT;
    loop {
        let s = stats(admin).await;
        let page = browser.execute(READ_FIGURES, json!([ids])).await;
        let differ: Vec<String> = FIGURES
            .iter()
            .filter(|(id, field)| {
                let shown = page[id].as_str().and_then(|v| v.parse::<f64>().ok());
                shown != Some(figure(&s, field))
            })
            .map(|(id, field)| format!("{id}: page {} /stats {}", page[id], figure(&s, field)))
            .collect();
        if differ.is_empty() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the page does not show /stats: {differ:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `n` with a comma between thousands, as the page writes counts.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Where the screenshot goes: `target/dashboard/dashboard.png`.
fn screenshot_path() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent()
        .unwrap_or(&tmp)
        .join("dashboard")
        .join("dashboard.png")
}

#[test]
fn grouping_matches_the_page() {
    assert_eq!(grouped(0), "0");
    assert_eq!(grouped(999), "999");
    assert_eq!(grouped(1000), "1,000");
    assert_eq!(grouped(1_234_567), "1,234,567");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_what_stats_says_in_chromium() {
    // Fail first, and clearly, when the browser is not installed.
    let driver = Chromedriver::start();
    tokio::time::timeout(TEST_TIMEOUT, run(&driver))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the browser test took over {TEST_TIMEOUT:?}; chromedriver log:\n{}",
                driver.log_tail(30)
            )
        });
}

async fn run(driver: &Chromedriver) {
    let calls = Calls::default();
    let origin = origin(Arc::clone(&calls)).await;
    #[cfg(feature = "redis")]
    let redis = {
        redis_support::require_redis();
        redis_support::RedisServer::start()
    };
    #[cfg(feature = "redis")]
    let cache = builder().redis(redis.url()).build().unwrap();
    #[cfg(not(feature = "redis"))]
    let cache = builder().build().unwrap();
    let proxy = proxy(&cache, origin.addr).await;
    let admin = proxy.admin.addr;

    let browser = Browser::open(driver, 1280, 1700).await;
    browser
        .goto(&format!("http://{admin}/ops/dashboard?poll=400"))
        .await;
    sign_in(&browser).await;

    drive_load(proxy.front.addr).await;
    // Stopped: wait for the last flights to end.
    let quiet = Instant::now() + Duration::from_secs(10);
    while cache.stats().in_flight > 0 {
        assert!(Instant::now() < quiet, "flights still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let s = page_matches_stats(&browser, admin).await;
    check_rendering(&browser, &s).await;

    let png = browser.screenshot().await;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    assert!(
        png.len() > 20_000,
        "a screenshot of a page drawn: {} bytes",
        png.len()
    );
    let path = screenshot_path();
    webdriver::save(&path, &png);
    eprintln!("screenshot: {}", path.display());

    invalidate_from_the_page(&browser, &cache).await;
    warm_from_the_page(&browser, &calls, proxy.front.addr).await;
    browser.close().await;
}

/// A wrong token is refused on the page; the right one opens it.
async fn sign_in(browser: &Browser) {
    browser
        .wait_until(
            "the token form",
            "return !document.getElementById('login').hidden || null",
        )
        .await;
    let hidden = browser
        .execute(
            "return document.getElementById('dashboard').hidden",
            json!([]),
        )
        .await;
    assert_eq!(hidden, json!(true), "no data before the token");
    browser.type_into("#token", "not-the-token").await;
    browser.click("#login-button").await;
    let refused = browser
        .wait_until(
            "the refusal",
            "return document.getElementById('login-error').textContent || null",
        )
        .await;
    assert_eq!(refused, "That token was refused.");
    browser.type_into("#token", TOKEN).await;
    browser.click("#login-button").await;
    browser
        .wait_until(
            "the first poll",
            "return Number(document.getElementById('poll-count').dataset.raw) > 0 || null",
        )
        .await;
    let kept = browser
        .execute(
            "return sessionStorage.getItem('tower-tiered-cache.admin-token')",
            json!([]),
        )
        .await;
    assert_eq!(kept, TOKEN, "the token is kept for the tab");
}

/// What the page draws besides the figures: text as rendered, labels as
/// text, the breaker, health and low performer the load made, charts.
async fn check_rendering(browser: &Browser, s: &Value) {
    let hits = s["hits"].as_u64().unwrap();
    assert_eq!(browser.text("#hits").await, grouped(hits));
    assert_eq!(
        browser.text("#requests").await,
        grouped(s["requests"].as_u64().unwrap())
    );
    let ratio = browser.text("#hit-ratio").await;
    let shown: f64 = ratio.trim_end_matches(" %").parse().unwrap();
    assert!(
        (shown - s["hit_ratio"].as_f64().unwrap() * 100.0).abs() <= 0.051,
        "{ratio} for {}",
        s["hit_ratio"]
    );
    assert!(hits > 1000 && s["evictions"].as_u64().unwrap() > 0, "{s}");

    // Every label, in the order of /stats, as text.
    let labels: Vec<String> = s["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["label"].as_str().unwrap().to_owned())
        .collect();
    let rows = browser
        .execute(
            "return [...document.querySelectorAll('#labels tr')].map(r => r.firstChild.textContent)",
            json!([]),
        )
        .await;
    assert_eq!(rows, json!(labels));
    assert!(labels.iter().any(|l| l == HOSTILE), "{labels:?}");
    let injected = browser
        .execute(
            "return [document.querySelectorAll('img').length, document.title]",
            json!([]),
        )
        .await;
    assert_eq!(injected, json!([0, TITLE]), "a label ran as markup");

    // The failing route's breaker, in the table, the labels and health.
    let breaker = browser
        .execute(
            "const r = [...document.querySelectorAll('#breakers tr')]\
             .map(r => [...r.children].map(c => c.textContent)); return r;",
            json!([]),
        )
        .await;
    assert_eq!(breaker[0][0], "/flaky/{id}", "{breaker}");
    assert_eq!(breaker[0][1], "open", "{breaker}");
    let reasons = browser.text("#health-reasons").await;
    assert!(reasons.contains("/flaky/{id}"), "{reasons}");
    assert_eq!(browser.text("#breaker-upstream").await, "open");

    // The reports route, never stored: a low performer told to set a TTL.
    let low = browser.text("#low-performers").await;
    assert!(low.contains("/reports/{id}"), "{low}");
    assert!(low.contains("set_route_ttl"), "{low}");

    // Charts: the ratio line and the stacked rates were drawn.
    let drawn = browser
        .execute(
            "return [document.querySelectorAll('#chart-ratio path.line').length, \
             document.querySelectorAll('#chart-rate path.area').length]",
            json!([]),
        )
        .await;
    assert!(
        drawn[0].as_u64() == Some(1) && drawn[1].as_u64() >= Some(2),
        "{drawn}"
    );

    #[cfg(feature = "redis")]
    assert_eq!(browser.text("#l2-breaker").await, "closed");
    // Nothing blocked by the policy, no failed poll, no script error.
    let problems = browser
        .execute(
            "return document.getElementById('problems').textContent",
            json!([]),
        )
        .await;
    assert_eq!(problems, "", "the page reports problems");
}

/// The invalidate form: a path prefix, through `POST /invalidate`.
async fn invalidate_from_the_page(browser: &Browser, cache: &Cache) {
    let before = cache.stats();
    assert!(before.l1_entries > 0);
    browser.click("#inv-kind option[value='prefix']").await;
    browser.type_into("#inv-value", "/api/items/").await;
    browser.click("#inv-button").await;
    let removed = browser
        .wait_until(
            "the invalidation's answer",
            "const o = document.getElementById('inv-result'); return o.dataset.l1 || null",
        )
        .await;
    let removed: u64 = removed.as_str().unwrap().parse().unwrap();
    assert!(removed > 0, "nothing removed");
    let after = cache.stats();
    assert!(after.invalidations >= before.invalidations + removed);
    assert!(after.l1_entries < before.l1_entries);
}

/// The warm form: two paths, through `POST /warm` and `GET /warm/{id}`.
async fn warm_from_the_page(browser: &Browser, calls: &Calls, front: SocketAddr) {
    browser
        .type_into("#warm-urls", "/api/items/warm-1\n/api/items/warm-2\n")
        .await;
    browser.click("#warm-button").await;
    let state = browser
        .wait_until(
            "the warming job",
            "const o = document.getElementById('warm-result'); \
             return o.dataset.state && o.dataset.state !== 'running' ? o.dataset.state : null",
        )
        .await;
    assert_eq!(state, "done");
    let result = browser.text("#warm-result").await;
    assert!(result.contains("warmed 2"), "{result}");
    for path in ["/api/items/warm-1", "/api/items/warm-2"] {
        assert_eq!(calls.lock().unwrap().get(path), Some(&1), "{path}");
        // Stored: the next request is a hit.
        let r = get(&client(), front, path).await;
        assert!(
            r.headers["cache-status"]
                .to_str()
                .unwrap()
                .contains("; hit"),
            "{path}: {r:?}"
        );
    }
}
