//! The Prometheus rules and the Grafana dashboard in `contrib/`, checked
//! with a real Prometheus (Debian package `prometheus`: `promtool` and
//! `/usr/bin/prometheus`):
//!
//! - `promtool check rules` and `promtool test rules` pass on
//!   `contrib/prometheus/alerts.yml` and its unit tests `alerts_test.yml`;
//! - every `tower_cache_*` metric the rules and the dashboard use is in the
//!   admin service's `/metrics` (a cache with an L2 tier, so the L2 metrics
//!   are there too);
//! - a Prometheus of its own (a temporary directory, a free loopback port)
//!   scrapes the admin service's `/metrics` (bearer token) every 250 ms
//!   with the rules loaded, and after traffic through the cache answers
//!   the dashboard's hit-ratio query and the rules' recorded hit ratio with
//!   the cache's own `Stats::hit_ratio`; every rule evaluates without
//!   error and every dashboard query is accepted.
//!
//! Without the `prometheus` package these tests fail, saying so; they
//! never skip. The metric and scrape tests need the `admin` and `redis`
//! features (`cargo test --all-features`) and a `redis-server`.

#[cfg(all(feature = "admin", feature = "redis"))]
#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/prometheus/alerts.yml");
const ALERTS_TEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contrib/prometheus/alerts_test.yml"
);
#[cfg(all(feature = "admin", feature = "redis"))]
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contrib/grafana/tower-tiered-cache.json"
);
/// The bound on one `promtool` run.
const PROMTOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// The path of a Prometheus tool: on `PATH` or in `/usr/bin`, else a
/// failure naming the package to install.
fn tool(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| Some(Path::new("/usr/bin").join(name)).filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found: install the Debian package `prometheus` \
                 (apt-get install prometheus), which has `promtool` and `prometheus`"
            )
        })
}

/// Runs `promtool args…` (bounded) and returns whether it succeeded, with
/// its output.
async fn promtool(args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(tool("promtool"));
    cmd.args(args).kill_on_drop(true);
    let out = tokio::time::timeout(PROMTOOL_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("promtool {args:?} took more than {PROMTOOL_TIMEOUT:?}"))
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn promtool_checks_and_tests_the_rules() {
    let (ok, out) = promtool(&["check", "rules", ALERTS]).await;
    assert!(ok, "promtool check rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    let (ok, out) = promtool(&["test", "rules", ALERTS_TEST]).await;
    assert!(ok, "promtool test rules:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

/// A broken rule file fails `promtool check rules`: the check above can
/// fail.
#[tokio::test]
async fn promtool_rejects_a_broken_rule() {
    let dir = TempDir::new("broken-rules");
    let broken = dir.0.join("broken.yml");
    let text = std::fs::read_to_string(ALERTS).unwrap().replacen(
        "max by (job, instance) (tower_cache_l2_breaker_open) == 1",
        "max by (job, instance) (tower_cache_l2_breaker_open == 1",
        1,
    );
    std::fs::write(&broken, text).unwrap();
    let (ok, out) = promtool(&["check", "rules", broken.to_str().unwrap()]).await;
    assert!(!ok, "a rule with an unclosed parenthesis passed:\n{out}");
}

/// A directory under the system's temporary directory, removed when
/// dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("tower-cache-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `tower_cache_*` names in `text` (a rule file or the dashboard).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find("tower_cache_") {
        let start = from + at;
        let preceded = start > 0 && {
            let c = bytes[start - 1];
            c.is_ascii_alphanumeric() || c == b'_' || c == b':'
        };
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()))
            .map_or(text.len(), |n| start + n);
        if !preceded {
            out.insert(text[start..end].to_owned());
        }
        from = end;
    }
    out
}

#[test]
fn metric_names_are_found_in_exprs() {
    let names = metric_names(
        "sum(rate(tower_cache_requests_total{x=\"y\"}[5m])) / tower_cache:hit_ratio:rate5m \
         + tower_cache_hit_duration_seconds_bucket",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "tower_cache_hit_duration_seconds_bucket",
            "tower_cache_requests_total"
        ]
    );
}

#[cfg(all(feature = "admin", feature = "redis"))]
mod live {
    use std::collections::{BTreeMap, BTreeSet};
    use std::convert::Infallible;
    use std::process::Stdio;
    use std::sync::Arc;
    use std::time::Instant;

    use axum::body::Body;
    use axum::Router;
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use serde_json::Value;
    use std::future::Future;

    use tokio::process::Child;
    use tokio::sync::Mutex;
    use tower::util::BoxCloneService;
    use tower::{service_fn, Layer, ServiceExt};
    use tower_tiered_cache::admin::AdminService;
    use tower_tiered_cache::{Cache, CacheLayer, CacheService};

    use super::redis_support;
    use super::support::loopback::{client, serve, HttpClient};
    use super::*;

    const TOKEN: &str = "prometheus-test-token";
    const JOB: &str = "tower-cache";
    /// The bound on waiting for Prometheus to start, scrape or evaluate.
    const WAIT: Duration = Duration::from_secs(90);
    /// Between two polls of Prometheus's API.
    const POLL: Duration = Duration::from_millis(100);

    /// The families of a text exposition (`# TYPE` lines) and their types.
    fn families(text: &str) -> BTreeMap<String, String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|rest| {
                let (name, kind) = rest.split_once(' ').unwrap();
                (name.to_owned(), kind.to_owned())
            })
            .collect()
    }

    /// Whether `name` is a family of `families`, or a histogram's
    /// `_bucket`, `_sum` or `_count` series.
    fn exposed(families: &BTreeMap<String, String>, name: &str) -> bool {
        families.contains_key(name)
            || ["_bucket", "_sum", "_count"].iter().any(|s| {
                name.strip_suffix(s)
                    .is_some_and(|f| families.get(f).is_some_and(|k| k == "histogram"))
            })
    }

    /// The origin: everything cacheable for ten minutes.
    type Origin = BoxCloneService<Request<()>, Response<Full<Bytes>>, Infallible>;

    fn origin() -> Origin {
        BoxCloneService::new(service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", "max-age=600")
                    .body(Full::new(Bytes::from_static(b"x")))
                    .unwrap(),
            )
        }))
    }

    /// `GET /metrics` from an admin service, in process.
    async fn admin_metrics(admin: &AdminService) -> String {
        let req = Request::get("/metrics")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        let resp = admin.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn every_metric_the_rules_and_the_dashboard_use_is_exposed() {
        use redis_support::{require_redis, RedisServer};
        require_redis();
        let server = RedisServer::start();
        let cache = Cache::builder()
            .redis(server.url())
            .namespace("prometheus-contrib")
            .build()
            .unwrap();
        let svc = CacheLayer::new(cache.clone()).layer(origin());
        for _ in 0..2 {
            let req = Request::get("http://a.example/1").body(()).unwrap();
            svc.clone().oneshot(req).await.unwrap();
        }
        let admin = AdminService::new(cache.clone(), TOKEN).unwrap();
        let families = families(&admin_metrics(&admin).await);
        assert!(families.contains_key("tower_cache_l2_breaker_open"));
        for file in [ALERTS, DASHBOARD] {
            let names = metric_names(&std::fs::read_to_string(file).unwrap());
            assert!(names.len() >= 5, "{file}: {names:?}");
            let missing: Vec<_> = names.iter().filter(|n| !exposed(&families, n)).collect();
            assert!(
                missing.is_empty(),
                "{file} uses metrics /metrics does not have: {missing:?}"
            );
        }
    }

    /// A Prometheus server of its own, killed (and its directory removed)
    /// when dropped, also when the test panics.
    struct Prometheus {
        child: std::sync::Mutex<Child>,
        port: u16,
        dir: TempDir,
    }

    impl Drop for Prometheus {
        fn drop(&mut self) {
            let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
            let _ = child.start_kill();
            // Reaped here (at most 5 s), so no process outlives the test.
            for _ in 0..500 {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    impl Prometheus {
        /// Starts `prometheus` scraping `metrics_url`'s target with the
        /// rules of `contrib/` loaded.
        fn start(target: std::net::SocketAddr, metrics_path: &str) -> Self {
            let dir = TempDir::new("prometheus");
            let port = free_port();
            let config = format!(
                "global:\n  scrape_interval: 250ms\n  scrape_timeout: 250ms\n  evaluation_interval: 250ms\n\
                 rule_files:\n  - {ALERTS}\n\
                 scrape_configs:\n  - job_name: {JOB}\n    metrics_path: {metrics_path}\n\
                 \x20   authorization:\n      credentials: {TOKEN}\n\
                 \x20   static_configs:\n      - targets: ['{target}']\n"
            );
            let config_file = dir.0.join("prometheus.yml");
            std::fs::write(&config_file, config).unwrap();
            let log = std::fs::File::create(dir.0.join("prometheus.log")).unwrap();
            let child = Command::new(tool("prometheus"))
                .arg(format!("--config.file={}", config_file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.0.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .expect("start prometheus");
            Self {
                child: std::sync::Mutex::new(child),
                port,
                dir,
            }
        }

        fn log(&self) -> String {
            std::fs::read_to_string(self.dir.0.join("prometheus.log")).unwrap_or_default()
        }

        /// `GET path` on the server: the status and the body, or `None`
        /// while it does not answer.
        async fn get(&self, client: &HttpClient, path: &str) -> Option<(u16, Value)> {
            let req = Request::get(format!("http://127.0.0.1:{}{path}", self.port))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
                .await
                .ok()?
                .ok()?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            Some((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
        }

        /// An instant query's answer (`data.result`), failing on an error.
        async fn query(&self, client: &HttpClient, expr: &str) -> Vec<Value> {
            let path = format!("/api/v1/query?query={}", redis_support::url_encode(expr));
            let (status, body) = self
                .get(client, &path)
                .await
                .unwrap_or_else(|| panic!("prometheus did not answer {expr}"));
            assert_eq!(
                (status, body["status"].as_str()),
                (200, Some("success")),
                "{expr}: {body}"
            );
            body["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        }

        /// Polls `probe` until it gives a value (at most [`WAIT`]).
        async fn until<T, F, Fut>(&self, what: &str, mut probe: F) -> T
        where
            F: FnMut() -> Fut,
            Fut: Future<Output = Option<T>>,
        {
            let start = Instant::now();
            loop {
                if let Some(v) = probe().await {
                    return v;
                }
                if let Ok(Some(status)) = self.child.lock().unwrap().try_wait() {
                    panic!(
                        "prometheus exited ({status}) waiting for {what}:\n{}",
                        self.log()
                    );
                }
                assert!(
                    start.elapsed() < WAIT,
                    "no {what} within {WAIT:?}; prometheus log:\n{}",
                    self.log()
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// A free loopback port (bound, then let go, for the server to take).
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// The value of a one-sample answer, if it is a number.
    fn single_value(result: &[Value]) -> Option<f64> {
        let [sample] = result else { return None };
        let v: f64 = sample["value"][1].as_str()?.parse().ok()?;
        v.is_finite().then_some(v)
    }

    /// The dashboard's queries, with its variables given every value.
    fn dashboard_queries() -> Vec<(String, String)> {
        let dash: Value =
            serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
        assert_eq!(
            dash["__inputs"][0]["name"], "DS_PROMETHEUS",
            "the datasource is an input"
        );
        let mut out = Vec::new();
        for panel in dash["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().into_iter().flatten() {
                assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{t}");
                let expr = t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "1m")
                    .replace("$job", ".*")
                    .replace("$instance", ".*");
                out.push((panel["title"].as_str().unwrap().to_owned(), expr));
            }
        }
        out
    }

    /// Sends `rounds` rounds through `svc`, each a miss of a new URL and
    /// three hits of it, while holding `gate` (the scrapes hold it too, so
    /// each scrape sees whole rounds: every one reads hits and misses at
    /// 3:1).
    async fn rounds(svc: &CacheService<Origin>, gate: &Mutex<()>, from: usize, rounds: usize) {
        for r in from..from + rounds {
            let _held = gate.lock().await;
            for _ in 0..4 {
                let req = Request::get(format!("http://app.example/item/{r}"))
                    .body(())
                    .unwrap();
                svc.clone().oneshot(req).await.unwrap();
            }
        }
    }

    #[tokio::test]
    async fn a_real_prometheus_scrapes_metrics_and_answers_the_hit_ratio() {
        tokio::time::timeout(Duration::from_secs(240), scrape_and_query())
            .await
            .expect("the test's bound");
    }

    async fn scrape_and_query() {
        let cache = Cache::builder().build().unwrap();
        let svc = CacheLayer::new(cache.clone()).layer(origin());
        let admin = AdminService::new(cache.clone(), TOKEN).unwrap();
        let gate = Arc::new(Mutex::new(()));
        let g = Arc::clone(&gate);
        let guarded = service_fn(move |req: Request<Body>| {
            let (g, admin) = (Arc::clone(&g), admin.clone());
            async move {
                let _held = g.lock().await;
                admin.oneshot(req).await
            }
        });
        let server = serve(Router::new().nest_service("/admin", guarded)).await;
        let http = client();
        let prom = Prometheus::start(server.addr, "/admin/metrics");
        let p = &prom;

        prom.until("ready prometheus", || {
            let http = http.clone();
            async move { matches!(p.get(&http, "/-/ready").await, Some((200, _))).then_some(()) }
        })
        .await;

        // Two scraped totals, so rates have two samples: 20 requests,
        // then 40.
        for (from, total) in [(0, 20.0), (5, 40.0)] {
            rounds(&svc, &gate, from, 5).await;
            let expr = format!("sum(tower_cache_requests_total{{job=\"{JOB}\"}})");
            prom.until(&format!("a scrape of {total} requests"), || {
                let (http, expr) = (http.clone(), expr.clone());
                async move { (single_value(&p.query(&http, &expr).await) == Some(total)).then_some(()) }
            })
            .await;
        }

        let stats = {
            let _held = gate.lock().await;
            cache.stats()
        };
        assert_eq!((stats.hits, stats.misses), (30, 10));
        assert!(
            (stats.hit_ratio - 0.75).abs() < 1e-12,
            "{}",
            stats.hit_ratio
        );

        // The dashboard's hit ratio and the recorded one the alert uses.
        let queries = dashboard_queries();
        let (_, dashboard_ratio) = queries
            .iter()
            .find(|(title, _)| title == "Hit ratio")
            .expect("the dashboard's Hit ratio panel");
        for expr in [
            dashboard_ratio.clone(),
            format!("tower_cache:hit_ratio:rate5m{{job=\"{JOB}\"}}"),
        ] {
            let ratio = prom
                .until(&format!("a value for {expr}"), || {
                    let (http, expr) = (http.clone(), expr.clone());
                    async move { single_value(&p.query(&http, &expr).await) }
                })
                .await;
            assert!(
                (ratio - stats.hit_ratio).abs() < 1e-9,
                "{expr} = {ratio}, the cache's hit ratio is {}",
                stats.hit_ratio
            );
        }

        // Every dashboard query is accepted (panels of metrics the traffic
        // did not touch may be empty).
        for (title, expr) in &queries {
            let _ = prom.query(&http, expr).await;
            assert!(!expr.contains('$'), "{title}: a variable left in {expr}");
        }

        // Every rule has been evaluated, without error; no alert fires on
        // this healthy cache.
        let evaluated = || {
            let http = http.clone();
            async move {
                let (_, body) = p.get(&http, "/api/v1/rules").await?;
                let rules: Vec<Value> = body["data"]["groups"]
                    .as_array()?
                    .iter()
                    .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                    .collect();
                (rules.len() == 7 && rules.iter().all(|r| r["health"] != "unknown"))
                    .then_some(rules)
            }
        };
        let rules = prom.until("every rule evaluated", evaluated).await;
        let names: BTreeSet<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
        for rule in &rules {
            assert_eq!(rule["health"], "ok", "{rule}");
            if rule["type"] == "alerting" {
                assert_eq!(rule["state"], "inactive", "{rule}");
            }
        }
        for alert in [
            "TowerCacheL2BreakerOpen",
            "TowerCacheUpstreamBreakerOpen",
            "TowerCacheDegraded",
            "TowerCacheHitRatioDrop",
            "TowerCacheL2WritesDropped",
        ] {
            assert!(names.contains(alert), "{alert} not loaded: {names:?}");
        }
        drop(prom);
    }
}
