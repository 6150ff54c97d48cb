//! The admin service over HTTP: an axum app on a loopback port with a
//! cached route and the admin API nested under `/admin`, driven by
//! hyper-util's client. Every client call is bounded by a timeout.

#![cfg(feature = "admin")]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tower::{Layer, ServiceExt};
use tower_tiered_cache::admin::AdminService;
use tower_tiered_cache::{Cache, CacheBuilder, CacheLayer, HealthThresholds, CACHE_STATUS};

use support::loopback::{client, send, serve, HttpClient, Reply, Server};

const TOKEN: &str = "s3cret-admin-token";
/// The admin service's body limit in these tests.
const MAX_BODY: usize = 1024;

/// The app on a free loopback port, stopped when dropped.
struct App {
    server: Server,
    cache: Cache,
    calls: Arc<AtomicUsize>,
    client: HttpClient,
}

impl Reply {
    fn json(&self) -> Value {
        assert_eq!(self.headers["content-type"], "application/json", "{self:?}");
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    /// The `error` of a JSON error answer.
    fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error: {self:?}"))
            .to_owned()
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }

    fn cache_status(&self) -> &str {
        self.headers
            .get(&CACHE_STATUS)
            .map_or("", |v| v.to_str().unwrap())
    }
}

/// A cache that keys on the path (so warming requests, which carry no
/// `Host`, share entries with the client's).
fn builder() -> CacheBuilder {
    Cache::builder().key_authority(false)
}

/// `/items/{id}` (fresh for a minute, tagged `items` and `item-{id}`)
/// behind the cache, every other path a 404 from the origin, and the
/// admin API under `/admin`.
async fn start(cache: Cache) -> App {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let origin = Router::new().route(
        "/items/{id}",
        // The id from the URI: the outer router's path parameters reach
        // this one too (`route_service` below).
        axum::routing::get(move |uri: http::Uri| {
            let c = Arc::clone(&c);
            async move {
                let id = uri.path().rsplit('/').next().unwrap_or("").to_owned();
                c.fetch_add(1, Ordering::SeqCst);
                (
                    [
                        ("cache-control", "max-age=60".to_owned()),
                        ("surrogate-key", format!("items item-{id}")),
                    ],
                    format!("item {id}"),
                )
            }
        }),
    );
    let cached = CacheLayer::new(cache.clone()).layer(origin);
    let admin = AdminService::new(cache.clone(), TOKEN)
        .expect("valid token")
        .max_body_bytes(MAX_BODY)
        .warmer(cached.warmer::<axum::body::Body>());
    let app = Router::new()
        .route_service("/items/{id}", cached.clone())
        .nest_service("/admin", admin)
        .fallback_service(cached);
    App {
        server: serve(app).await,
        cache,
        calls,
        client: client(),
    }
}

impl App {
    async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        send(&self.client, req).await
    }

    /// A request with `authorization` as given (none when `None`).
    async fn raw(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.server.addr));
        if let Some(a) = authorization {
            b = b.header("authorization", a);
        }
        self.send(b.body(Full::new(body.into())).unwrap()).await
    }

    /// An authorised admin request (`path` below `/admin`).
    async fn admin(&self, method: Method, path: &str, body: impl Into<Bytes>) -> Reply {
        let bearer = format!("Bearer {TOKEN}");
        self.raw(method, &format!("/admin{path}"), Some(&bearer), body)
            .await
    }

    async fn admin_get(&self, path: &str) -> Reply {
        self.admin(Method::GET, path, Bytes::new()).await
    }

    async fn admin_post(&self, path: &str, body: &Value) -> Reply {
        self.admin(Method::POST, path, body.to_string()).await
    }

    /// A plain `GET` of the cached app.
    async fn get(&self, path: &str) -> Reply {
        self.raw(Method::GET, path, None, Bytes::new()).await
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn is_hit(r: &Reply) -> bool {
    r.cache_status().contains("; hit")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_the_token() {
    let err = AdminService::new(Cache::builder().build().unwrap(), "").unwrap_err();
    assert_eq!(err.setting(), "admin_token");
    assert!(AdminService::new(Cache::builder().build().unwrap(), "with space").is_err());

    let app = start(builder().build().unwrap()).await;
    let routes = [
        (Method::GET, "/health"),
        (Method::GET, "/stats"),
        (Method::GET, "/stats/labels"),
        (Method::GET, "/stats/top"),
        (Method::GET, "/stats/low-performers"),
        (Method::GET, "/metrics"),
        (Method::GET, "/info"),
        (Method::POST, "/warm"),
        (Method::GET, "/warm/1"),
        (Method::POST, "/invalidate"),
        (Method::POST, "/reset-stats"),
        (Method::GET, "/no-such-route"),
    ];
    for (method, path) in routes {
        let path = format!("/admin{path}");
        let body = r#"{"all": true}"#;
        let none = app.raw(method.clone(), &path, None, body).await;
        assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(
            none.headers["www-authenticate"],
            "Bearer realm=\"tower-tiered-cache admin\""
        );
        assert!(none.error().contains("missing bearer token"), "{none:?}");

        for wrong in [
            "Bearer s3cret-admin-tokeN",
            "Bearer s3cret",
            "Bearer s3cret-admin-token-and-more",
            "Basic s3cret-admin-token",
            "s3cret-admin-token",
        ] {
            let r = app.raw(method.clone(), &path, Some(wrong), body).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {wrong}"
            );
            assert!(r.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"));
            assert_eq!(r.headers["cache-control"], "no-store");
            r.error();
        }
    }
    // The scheme is case-insensitive.
    let ok = app
        .raw(
            Method::GET,
            "/admin/health",
            Some(&format!("bearer {TOKEN}")),
            Bytes::new(),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(app.admin_get("/stats").await.status, StatusCode::OK);
    // Nothing was invalidated or reset by the refused requests.
    assert_eq!(app.cache.stats().invalidations, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_json_and_503_when_degraded() {
    let app = start(builder().build().unwrap()).await;
    let r = app.admin_get("/health").await;
    assert_eq!(r.status, StatusCode::OK);
    let h = r.json();
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["reasons"], json!([]));
    for field in [
        "window_hit_ratio",
        "window_lookups",
        "mean_latency_ms",
        "p95_latency_ms",
    ] {
        assert!(h[field].is_number(), "{field}: {h}");
    }
    assert_eq!(h["l2_breaker"], Value::Null);

    // Judged after two lookups, degraded under a 90 % hit ratio.
    let app = start(
        builder()
            .health_thresholds(
                HealthThresholds::new()
                    .min_requests(2)
                    .degraded_hit_ratio(0.9),
            )
            .build()
            .unwrap(),
    )
    .await;
    app.get("/items/1").await;
    app.get("/items/2").await;
    let r = app.admin_get("/health").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let h = r.json();
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["window_lookups"], 2);
    let reasons = h["reasons"].as_array().unwrap();
    assert!(
        reasons
            .iter()
            .any(|r| r.as_str().unwrap().contains("hit ratio")),
        "{h}"
    );
    // HEAD answers the status without the body.
    let head = app
        .raw(
            Method::HEAD,
            "/admin/health",
            Some(&format!("Bearer {TOKEN}")),
            Bytes::new(),
        )
        .await;
    assert_eq!(head.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(head.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_labels_top_and_low_performers() {
    let app = start(builder().build().unwrap()).await;
    for path in ["/items/1", "/items/1", "/items/1", "/items/2"] {
        let r = app.get(path).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
    }
    assert_eq!(app.calls(), 2);

    let r = app.admin_get("/stats").await;
    assert_eq!(r.status, StatusCode::OK);
    let s = r.json();
    let stats = app.cache.stats();
    assert_eq!(s["requests"], 4);
    assert_eq!(s["hits"], stats.hits);
    assert_eq!(s["hits"], 2);
    assert_eq!(s["misses"], 2);
    assert_eq!(s["stores"], 2);
    assert_eq!(s["l1_entries"], 2);
    assert_eq!(s["hit_ratio"], 0.5);
    assert_eq!(s["labels"][0]["label"], "/items/{id}");

    let r = app.admin_get("/stats/labels").await;
    assert_eq!(r.status, StatusCode::OK);
    let labels = r.json();
    let labels = labels.as_array().unwrap();
    assert_eq!(labels.len(), 1, "{labels:?}");
    assert_eq!(labels[0]["label"], "/items/{id}");
    assert_eq!(labels[0]["requests"], 4);
    assert_eq!(labels[0]["hits_l1"], 2);

    // A second label, with fewer requests.
    app.get("/other").await;
    let top = app.admin_get("/stats/top?limit=1").await;
    assert_eq!(top.status, StatusCode::OK);
    let top = top.json();
    assert_eq!(top.as_array().unwrap().len(), 1);
    assert_eq!(top[0]["label"], "/items/{id}");
    let all = app.admin_get("/stats/top").await.json();
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    for bad in ["limit=abc", "limit=0", "limit=1001", "limit=-1"] {
        let r = app.admin_get(&format!("/stats/top?{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(r
            .error()
            .contains("limit must be an integer within 1..=1000"));
    }

    for bad in ["threshold=2", "threshold=-0.5", "threshold=x"] {
        let r = app.admin_get(&format!("/stats/low-performers?{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            r.error().contains("threshold must be within 0..=1"),
            "{r:?}"
        );
    }
    // Ten lookups of distinct URLs: all misses, a low performer.
    for i in 10..20 {
        app.get(&format!("/items/{i}")).await;
    }
    let low = app.admin_get("/stats/low-performers?threshold=0.5").await;
    assert_eq!(low.status, StatusCode::OK);
    let low = low.json();
    let low = low.as_array().unwrap();
    assert_eq!(low.len(), 1, "{low:?}");
    assert_eq!(low[0]["stats"]["label"], "/items/{id}");
    assert!(low[0]["recommendations"].is_array());
    let none = app
        .admin_get("/stats/low-performers?threshold=0")
        .await
        .json();
    assert_eq!(none, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_back() {
    // prometheus-parse splits label sets at the first `}` and at every `,`,
    // so the labels here are first path segments, not route templates
    // (`/items/{id}`), which the format allows but that parser does not.
    let app = start(
        builder()
            .label_fn(|p| p.uri.path().split('/').nth(1).map(|s| format!("/{s}")))
            .build()
            .unwrap(),
    )
    .await;
    for path in ["/items/1", "/items/1", "/items/1", "/items/2", "/other"] {
        app.get(path).await;
    }
    let r = app.admin_get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let stats = app.cache.stats();
    let scrape =
        prometheus_parse::Scrape::parse(r.text().lines().map(|l| Ok(l.to_owned()))).unwrap();
    let scalar = |name: &str, labels: &[(&str, &str)]| -> Vec<f64> {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                ref other => panic!("{name}: {other:?}"),
            })
            .collect()
    };
    let sum = |name: &str, labels: &[(&str, &str)]| scalar(name, labels).iter().sum::<f64>();

    assert_eq!(
        sum("tower_cache_requests_total", &[("result", "hit")]),
        stats.hits as f64
    );
    assert_eq!(stats.hits, 2);
    assert_eq!(
        sum("tower_cache_requests_total", &[("result", "miss")]),
        stats.misses as f64
    );
    assert_eq!(
        scalar(
            "tower_cache_requests_total",
            &[("result", "hit"), ("tier", "l1"), ("label", "/items")]
        ),
        [2.0]
    );
    assert_eq!(
        sum("tower_cache_requests_total", &[]),
        stats.requests as f64
    );
    assert_eq!(
        scalar("tower_cache_stores_total", &[]),
        [stats.stores as f64]
    );
    assert_eq!(
        scalar("tower_cache_upstream_calls_total", &[]),
        [stats.upstream_calls as f64]
    );
    assert_eq!(
        scalar("tower_cache_l1_entries", &[]),
        [stats.l1_entries as f64]
    );
    assert_eq!(
        scalar("tower_cache_l1_capacity_bytes", &[]),
        [stats.l1_capacity_bytes as f64]
    );
    assert_eq!(scalar("tower_cache_hit_ratio", &[]), [stats.hit_ratio]);
    assert_eq!(
        scalar("tower_cache_health", &[("status", "healthy")]),
        [1.0]
    );
    assert_eq!(
        scalar(
            "tower_cache_breaker_opens_total",
            &[("breaker", "upstream")]
        ),
        [0.0]
    );
    assert_eq!(
        scrape.docs["tower_cache_requests_total"],
        "Requests through the cache by result, tier and label."
    );

    let histogram = |name: &str| {
        scrape
            .samples
            .iter()
            .find_map(|s| match (&s.value, s.metric == name) {
                (prometheus_parse::Value::Histogram(b), true) => Some(b.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let hits = histogram("tower_cache_hit_duration_seconds");
    assert!(hits.windows(2).all(|w| w[0].less_than < w[1].less_than));
    assert!(hits.windows(2).all(|w| w[0].count <= w[1].count));
    assert_eq!(hits.last().unwrap().count, stats.hit_latency.count as f64);
    assert_eq!(
        scalar("tower_cache_hit_duration_seconds_count", &[]),
        [stats.hit_latency.count as f64]
    );
    let misses = histogram("tower_cache_miss_duration_seconds");
    assert_eq!(
        misses.last().unwrap().count,
        stats.miss_latency.count as f64
    );
    let miss_sum = scalar("tower_cache_miss_duration_seconds_sum", &[])[0];
    assert!(miss_sum > 0.0);
    let expected = stats.miss_latency.mean_ms * stats.miss_latency.count as f64 / 1e3;
    assert!(
        (miss_sum - expected).abs() <= expected * 1e-9,
        "{miss_sum} vs {expected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_describes_the_cache() {
    let app = start(
        builder()
            .l1_capacity_bytes(8 * 1024 * 1024)
            .max_labels(12)
            .build()
            .unwrap(),
    )
    .await;
    app.get("/items/1").await;
    let r = app.admin_get("/info").await;
    assert_eq!(r.status, StatusCode::OK);
    let info = r.json();
    assert_eq!(info["mode"], "Shared");
    assert_eq!(info["l1"]["capacity_bytes"], 8 * 1024 * 1024);
    assert_eq!(info["l1"]["entries"], 1);
    assert!(info["l1"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(info["l2"], Value::Null);
    assert_eq!(info["labels"]["source"], "Auto");
    assert_eq!(info["labels"]["max_labels"], 12);
    assert_eq!(info["labels"]["in_use"], 1);
    assert_eq!(info["log_level"], "Minimal");
    assert_eq!(info["span_level"], "DEBUG");
    assert_eq!(info["eager_refresh"]["enabled"], false);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_jobs() {
    let app = start(builder().build().unwrap()).await;
    // Already fresh: skipped.
    app.get("/items/3").await;
    assert_eq!(app.calls(), 1);

    let r = app
        .admin_post(
            "/warm",
            &json!([
                "/items/1",
                {"url": "/items/2", "headers": {"accept": "text/plain"}},
                "/items/1",
                "/items/3",
                "/missing",
            ]),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    let started = r.json();
    let id = started["id"].as_u64().expect("numeric id");
    assert_eq!(started["status"], format!("/warm/{id}"));
    assert_eq!(r.headers["location"], format!("/warm/{id}"));

    let mut job = Value::Null;
    for _ in 0..400 {
        let r = app.admin_get(&format!("/warm/{id}")).await;
        assert_eq!(r.status, StatusCode::OK);
        job = r.json();
        match job["state"].as_str().unwrap() {
            "running" => tokio::time::sleep(Duration::from_millis(25)).await,
            "done" => break,
            other => panic!("job state {other}: {job}"),
        }
    }
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["id"], id);
    assert_eq!(job["requested"], 5);
    assert_eq!(
        job["progress"],
        json!({"total": 4, "done": 4, "warmed": 2, "skipped": 1, "failed": 1})
    );
    let report = &job["report"];
    assert_eq!(report["requested"], 5);
    assert_eq!(report["duplicates"], 1);
    assert_eq!(report["warmed"], 2);
    assert_eq!(report["skipped"], 1);
    assert_eq!(
        report["failed"],
        json!([{"url": "/missing", "reason": "status 404"}])
    );
    // Warmed entries are hits for clients; the origin was called once more
    // for each.
    assert_eq!(app.calls(), 3);
    assert!(is_hit(&app.get("/items/1").await));
    assert!(is_hit(&app.get("/items/2").await));

    // A second job gets the next id, with options.
    let r = app
        .admin_post(
            "/warm",
            &json!({"targets": ["/items/4"], "concurrency": 2, "timeout_ms": 5000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    assert_eq!(r.json()["id"], id + 1);

    let r = app.admin_get("/warm/999").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains("no warming job"));
    assert_eq!(
        app.admin_get("/warm/abc").await.status,
        StatusCode::NOT_FOUND
    );

    for (body, expected) in [
        ("[\"/a\",", "invalid JSON: EOF while parsing"),
        ("{\"url\": \"/a\"}", "missing field \"targets\""),
        ("[]", "no targets to warm"),
        ("[42]", "targets[0]"),
        ("{\"targets\": [\"/a\"], \"concurrency\": 0}", "concurrency"),
        ("\"/a\"", "expected a JSON array"),
    ] {
        let r = app.admin(Method::POST, "/warm", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(r.error().contains(expected), "{body}: {}", r.error());
    }
    let many: Vec<String> = (0..=10_000).map(|i| format!("/{i}")).collect();
    let big = tower_tiered_cache::admin::AdminService::without_auth(app.cache.clone())
        .warmer(
            CacheLayer::new(app.cache.clone())
                .layer(Router::new())
                .warmer::<axum::body::Body>(),
        )
        .max_body_bytes(1 << 20);
    let req = Request::post("/warm")
        .body(axum::body::Body::from(json!(many).to_string()))
        .unwrap();
    let r = big.oneshot(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        err["error"],
        "too many targets: 10001 (at most 10000 per job)"
    );

    // Without a warmer, warming is not implemented.
    let bare = AdminService::without_auth(app.cache.clone());
    for (method, path) in [(Method::POST, "/warm"), (Method::GET, "/warm/1")] {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::from("[\"/items/1\"]"))
            .unwrap();
        let r = bare.clone().oneshot(req).await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_IMPLEMENTED, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation() {
    let app = start(builder().build().unwrap()).await;
    let fill = || async {
        for i in 1..=3 {
            app.get(&format!("/items/{i}")).await;
        }
    };
    fill().await;
    assert!(is_hit(&app.get("/items/1").await));

    let r = app
        .admin_post("/invalidate", &json!({"key": "GET /items/1"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.json(), json!({"l1": 1, "l2": null}));
    assert!(!is_hit(&app.get("/items/1").await));
    let r = app
        .admin_post("/invalidate", &json!({"key": "GET /nope"}))
        .await;
    assert_eq!(r.json(), json!({"l1": 0, "l2": null}));

    let r = app
        .admin_post("/invalidate", &json!({"tag": "item-2"}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"l1": 1, "l2": 0}));
    assert!(!is_hit(&app.get("/items/2").await));
    assert!(is_hit(&app.get("/items/3").await));

    let r = app
        .admin_post("/invalidate", &json!({"prefix": "/items/"}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"l1": 3, "l2": 0}));
    assert!(!is_hit(&app.get("/items/3").await));

    fill().await;
    let entries = app.cache.stats().l1_entries;
    assert_eq!(entries, 3);
    let r = app.admin_post("/invalidate", &json!({"all": true})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"l1": 3, "l2": 0}));
    assert_eq!(app.cache.stats().l1_entries, 0);

    for (body, expected) in [
        (
            "not json",
            "invalid JSON: expected ident at line 1 column 2",
        ),
        (
            "",
            "invalid JSON: EOF while parsing a value at line 1 column 0",
        ),
        (
            "{}",
            "give exactly one of key, tag, prefix or all (got none)",
        ),
        (
            r#"{"key": "GET /a", "tag": "t"}"#,
            "give exactly one of key, tag, prefix or all (got key, tag)",
        ),
        (r#"{"all": false}"#, "\"all\" must be true"),
        (
            r#"{"prefix": "items"}"#,
            "\"prefix\" must be a path starting with /",
        ),
        (r#"{"tag": 7}"#, "\"tag\" must be a string"),
        (r#"{"path": "/a"}"#, "unknown field \"path\""),
        ("[]", "expected a JSON object"),
    ] {
        let r = app.admin(Method::POST, "/invalidate", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(r.error().contains(expected), "{body}: {}", r.error());
    }

    // Over the body limit.
    let long = json!({"prefix": format!("/{}", "x".repeat(MAX_BODY))});
    let r = app.admin_post("/invalidate", &long).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        r.error(),
        format!("request body is larger than the limit of {MAX_BODY} bytes")
    );
}

/// `POST /invalidate` with `"values"` purges one value cache's values by
/// key, tag, prefix or all, and nothing else (neither another value
/// cache's values nor stored responses).
#[cfg(feature = "values")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_invalidation() {
    use tower_tiered_cache::ValueOptions;

    let app = start(builder().build().unwrap()).await;
    for i in 1..=3 {
        app.get(&format!("/items/{i}")).await;
    }
    let odds = app.cache.values::<u32>("odds").unwrap();
    let other = app.cache.values::<u32>("other").unwrap();
    let football = ValueOptions::new().tag("football");
    for (k, v) in [("match:1", 1), ("match:2", 2)] {
        odds.set(k, v, &football).await;
    }
    for (k, v) in [("match:3", 3), ("player:1", 4)] {
        odds.set(k, v, &ValueOptions::new()).await;
    }
    other.set("match:1", 5, &football).await;
    assert_eq!(app.cache.stats().l1_entries, 3 + 4 + 1);

    let keys = ["match:1", "match:2", "match:3", "player:1"];
    for (body, removed, left) in [
        (
            json!({"values": "odds", "key": "match:1"}),
            json!({"l1": 1, "l2": null}),
            &keys[1..],
        ),
        (
            json!({"values": "odds", "tag": "football"}),
            json!({"l1": 1, "l2": 0}),
            &keys[2..],
        ),
        (
            json!({"values": "odds", "prefix": "match:"}),
            json!({"l1": 1, "l2": 0}),
            &keys[3..],
        ),
        (
            json!({"values": "odds", "all": true}),
            json!({"l1": 1, "l2": 0}),
            &keys[4..],
        ),
    ] {
        let r = app.admin_post("/invalidate", &body).await;
        assert_eq!(r.status, StatusCode::OK, "{body}: {r:?}");
        assert_eq!(r.json(), removed, "{body}");
        let mut found = Vec::new();
        for k in keys {
            if odds.get(k).await.is_some() {
                found.push(k);
            }
        }
        assert_eq!(found, left, "{body}");
    }

    // The other value cache and the stored responses are untouched.
    assert_eq!(other.get("match:1").await.as_deref(), Some(&5));
    assert_eq!(app.cache.stats().l1_entries, 3 + 1);
    let calls = app.calls();
    for i in 1..=3 {
        assert!(is_hit(&app.get(&format!("/items/{i}")).await));
    }
    assert_eq!(app.calls(), calls);

    for (body, expected) in [
        (
            json!({"values": "odds"}),
            "give exactly one of key, tag, prefix or all (got none)",
        ),
        (
            json!({"values": "bad\nname", "key": "k"}),
            "\"values\" must be a value cache's name",
        ),
        (
            json!({"values": "odds", "key": "k", "url": "/x"}),
            "unknown field \"url\"",
        ),
    ] {
        let r = app.admin_post("/invalidate", &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(r.error().contains(expected), "{body}: {}", r.error());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_stats() {
    let app = start(builder().build().unwrap()).await;
    for path in ["/items/1", "/items/1"] {
        app.get(path).await;
    }
    assert_eq!(app.cache.stats().requests, 2);
    let r = app.admin(Method::POST, "/reset-stats", Bytes::new()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.body.is_empty());
    let s = app.admin_get("/stats").await.json();
    assert_eq!(s["requests"], 0);
    assert_eq!(s["hits"], 0);
    assert_eq!(s["misses"], 0);
    assert_eq!(s["labels"], json!([]));
    // Tier sizes are kept.
    assert_eq!(s["l1_entries"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_and_unknown_paths() {
    let app = start(builder().build().unwrap()).await;
    for (method, path, allow) in [
        (Method::POST, "/health", "GET, HEAD"),
        (Method::DELETE, "/stats", "GET, HEAD"),
        (Method::PUT, "/metrics", "GET, HEAD"),
        (Method::POST, "/warm/1", "GET, HEAD"),
        (Method::GET, "/invalidate", "POST"),
        (Method::GET, "/reset-stats", "POST"),
        (Method::GET, "/warm", "POST"),
    ] {
        let r = app.admin(method.clone(), path, Bytes::new()).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(r.headers["allow"], allow);
        assert!(r.error().contains(&format!("method {method} not allowed")));
    }
    for path in ["/nope", "/stats/", "/stats/labels/x", "/warm/"] {
        let r = app.admin_get(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.error(), format!("no such route: {path}"));
    }
    // HEAD of a read-only route: the headers without the body.
    let head = app
        .raw(
            Method::HEAD,
            "/admin/stats",
            Some(&format!("Bearer {TOKEN}")),
            Bytes::new(),
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.headers["content-type"], "application/json");
}

/// The dashboard's expected `Content-Security-Policy`: its own files,
/// JSON from its own origin, nothing inline, nothing framed.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The headers every dashboard file carries.
fn assert_dashboard_headers(r: &Reply, content_type: &str) {
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.headers["content-type"], content_type);
    assert_eq!(r.headers["content-security-policy"], DASHBOARD_CSP);
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(r.headers["x-frame-options"], "DENY");
    assert_eq!(r.headers["referrer-policy"], "no-referrer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_needs_no_token_and_its_data_does() {
    let app = start(builder().build().unwrap()).await;
    let bearer = format!("Bearer {TOKEN}");
    for auth in [None, Some("Bearer wrong"), Some(bearer.as_str())] {
        let page = app
            .raw(Method::GET, "/admin/dashboard", auth, Bytes::new())
            .await;
        assert_dashboard_headers(&page, "text/html; charset=utf-8");
        assert!(page.text().starts_with("<!doctype html>"));
        assert!(page
            .text()
            .contains(r#"<script src="dashboard.js" defer></script>"#));
        let script = app
            .raw(Method::GET, "/admin/dashboard.js", auth, Bytes::new())
            .await;
        assert_dashboard_headers(&script, "text/javascript; charset=utf-8");
        assert!(script.text().contains("sessionStorage"));
        let style = app
            .raw(Method::GET, "/admin/dashboard.css", auth, Bytes::new())
            .await;
        assert_dashboard_headers(&style, "text/css; charset=utf-8");
    }
    // HEAD: the headers and the length, no body.
    let head = app
        .raw(Method::HEAD, "/admin/dashboard", None, Bytes::new())
        .await;
    assert_dashboard_headers(&head, "text/html; charset=utf-8");
    assert!(head.body.is_empty());
    let page = app.get("/admin/dashboard").await;
    assert_eq!(
        head.headers["content-length"],
        page.body.len().to_string().as_str()
    );
    // Read-only files: other methods are refused, still without a token.
    let post = app
        .raw(Method::POST, "/admin/dashboard", None, Bytes::new())
        .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers["allow"], "GET, HEAD");

    // The data the page shows still needs the token, and names near the
    // page's are no way around it.
    for path in [
        "/admin/stats",
        "/admin/health",
        "/admin/dashboard/stats",
        "/admin/dashboard.json",
        "/admin/dashboard/",
    ] {
        let r = app.raw(Method::GET, path, None, Bytes::new()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    for path in ["/dashboard.json", "/dashboard/", "/dashboard/stats"] {
        assert_eq!(app.admin_get(path).await.status, StatusCode::NOT_FOUND);
    }

    // Every route the script calls (relative to the page) exists.
    let script = app.get("/admin/dashboard.js").await;
    let mut called: Vec<&str> = script
        .text()
        .split("api('")
        .skip(1)
        .filter_map(|rest| rest.split_once('\'').map(|(path, _)| path))
        .collect();
    called.sort_unstable();
    called.dedup();
    assert_eq!(
        called,
        [
            "breakers",
            "health",
            "info",
            "invalidate",
            "stats",
            "stats/low-performers",
            "warm",
            "warm/"
        ]
    );
    for path in called {
        let path = if path == "warm/" { "warm/1" } else { path };
        let r = app.admin_get(&format!("/{path}")).await;
        // A POST route answers 405 to GET, a job not started 404 with its
        // own message: none is an unknown route.
        assert!(
            !r.error_or_empty().starts_with("no such route"),
            "{path}: {r:?}"
        );
    }
}

impl Reply {
    /// The `error` of a JSON answer, or "" for any other answer.
    fn error_or_empty(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_behind_a_prefix() {
    let cache = builder().build().unwrap();
    let admin = AdminService::new(cache, TOKEN).unwrap().prefix("/ops/");
    let server = serve(Router::new().fallback_service(admin)).await;
    let client = client();
    let get = |path: &str, auth: Option<&str>| {
        let mut b = Request::get(format!("http://{}{path}", server.addr));
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        send(&client, b.body(Full::new(Bytes::new())).unwrap())
    };
    let bearer = format!("Bearer {TOKEN}");
    let page = get("/ops/dashboard", None).await;
    assert_dashboard_headers(&page, "text/html; charset=utf-8");
    assert_dashboard_headers(
        &get("/ops/dashboard.js", None).await,
        "text/javascript; charset=utf-8",
    );
    assert_dashboard_headers(
        &get("/ops/dashboard.css", None).await,
        "text/css; charset=utf-8",
    );
    // Outside the prefix: nothing, with or without the token.
    for auth in [None, Some(bearer.as_str())] {
        for path in ["/dashboard", "/dashboard.js", "/opsdashboard"] {
            let r = get(path, auth).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(r.error(), format!("no such route: {path}"));
        }
    }
    // The JSON beside it still needs the token.
    assert_eq!(
        get("/ops/stats", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let stats = get("/ops/stats", Some(&bearer)).await;
    assert_eq!(stats.status, StatusCode::OK);
    // What the page reads: every figure it draws is in the answer.
    let s = stats.json();
    for field in [
        "hits",
        "hits_l1",
        "hits_l2",
        "misses",
        "stale",
        "coalesced",
        "revalidated",
        "passes",
        "hit_ratio",
        "l1_bytes",
        "l1_capacity_bytes",
        "l1_entries",
        "evictions",
        "l2_breaker",
        "l2_errors",
        "breaker",
        "labels",
    ] {
        assert!(s.get(field).is_some(), "/stats has no {field}: {s}");
    }
    for latency in ["hit_latency", "miss_latency"] {
        for p in ["p50_ms", "p95_ms", "p99_ms"] {
            assert!(s[latency][p].is_number(), "{latency}.{p}: {s}");
        }
    }
}
