//! `examples/loadgen.rs` against a cached server of the test's own (an
//! axum origin behind `CacheLayer`, on 127.0.0.1:0) and against a server
//! without a cache: its totals agree with what the origin counted, the
//! report has a hit ratio (or says it is unknown), and the chart is written.
//!
//! The example's file is compiled into this test as a module, so the test
//! runs the same code as `cargo run --example loadgen`.

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/loadgen.rs"]
mod example;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::header::CACHE_CONTROL;
use axum::response::IntoResponse;
use axum::Router;
use http::{HeaderMap, HeaderValue};
use tower_tiered_cache::{Cache, CacheLayer};

/// The bound on one run of the load generator (it runs for 2 s).
const DEADLINE: Duration = Duration::from_secs(30);

/// An origin that counts its calls and answers cacheably after 10 ms,
/// served on a free loopback port, with a cache in front when `cached`.
async fn origin(cached: bool) -> (SocketAddr, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&calls);
    let mut app = Router::new().fallback(move || {
        let calls = Arc::clone(&counted);
        async move {
            calls.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
            ([(CACHE_CONTROL, "public, max-age=300")], "body").into_response()
        }
    });
    if cached {
        app = app.layer(CacheLayer::new(Cache::builder().build().unwrap()));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, calls)
}

/// Runs the load generator on `addr` for 2 s; its totals and the chart.
async fn loadgen(addr: SocketAddr, name: &str) -> (example::Tally, String, String) {
    let dir = std::env::temp_dir().join(format!("ttc-loadgen-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("chart.svg");
    let flags = [
        "--url".to_owned(),
        format!("http://{addr}"),
        "--duration".to_owned(),
        "2s".to_owned(),
        "--keys".to_owned(),
        "50".to_owned(),
        "--concurrency".to_owned(),
        "8".to_owned(),
        "--svg".to_owned(),
        svg.display().to_string(),
    ];
    let args = example::parse_args(flags.into_iter()).unwrap();
    let tally = tokio::time::timeout(DEADLINE, example::run_and_report(&args))
        .await
        .expect("the load generator stops after its duration")
        .unwrap();
    let report = example::report(&args, &tally);
    let chart = std::fs::read_to_string(&svg).expect("the chart is written");
    std::fs::remove_dir_all(&dir).unwrap();
    (tally, report, chart)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_cache_it_counts_what_reached_the_origin() {
    let (addr, calls) = origin(true).await;
    let (t, report, chart) = loadgen(addr, "cached").await;

    assert!(t.requests > 100, "{report}");
    assert_eq!((t.failed, t.not_ok, t.unknown), (0, 0, 0), "{report}");
    assert_eq!(t.hits + t.coalesced + t.forwarded, t.requests, "{report}");
    // Every answer that says it went forward made one origin call, and no
    // other answer did.
    assert_eq!(t.forwarded, calls.load(Ordering::Relaxed), "{report}");
    assert!(t.forwarded <= 50, "at most one call per key: {report}");
    let ratio = t.hit_ratio().expect("a hit ratio");
    assert!(ratio > 0.5, "{report}");
    let line = report
        .lines()
        .find(|l| l.starts_with("hit ratio"))
        .expect("a hit ratio line");
    assert!(
        line.contains(&format!("{:.1} %", ratio * 100.0)),
        "{report}"
    );
    assert!(report.contains("origin calls saved"), "{report}");
    assert!(
        chart.starts_with("<svg") && chart.contains("<polyline"),
        "{chart}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cache_status_the_hit_ratio_is_unknown() {
    let (addr, calls) = origin(false).await;
    let (t, report, chart) = loadgen(addr, "plain").await;

    assert!(t.requests > 0, "{report}");
    assert_eq!(t.unknown, t.requests, "{report}");
    assert_eq!(t.requests, calls.load(Ordering::Relaxed), "{report}");
    assert_eq!(t.hit_ratio(), None);
    assert!(report.contains("hit ratio          unknown"), "{report}");
    assert!(report.contains("origin calls saved unknown"), "{report}");
    assert!(chart.starts_with("<svg"), "{chart}");
}

#[test]
fn cache_status_is_read_from_its_last_entry() {
    let outcome = |values: &[&str]| {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("cache-status", HeaderValue::from_str(v).unwrap());
        }
        example::Outcome::of(&headers)
    };
    use example::Outcome::*;
    assert_eq!(outcome(&[]), Unknown);
    assert_eq!(outcome(&["tower-tiered-cache; hit; detail=l1"]), Hit);
    assert_eq!(outcome(&["c; hit; ttl=-2; detail=l2"]), Hit);
    assert_eq!(
        outcome(&["c; fwd=uri-miss; fwd-status=200; stored"]),
        Forwarded
    );
    assert_eq!(outcome(&["c; fwd=uri-miss; collapsed"]), Coalesced);
    assert_eq!(outcome(&["c; detail=only-if-cached"]), Other);
    // The origin's side first: the cache nearest the client decides.
    assert_eq!(outcome(&["origin-cdn; hit, edge; fwd=uri-miss"]), Forwarded);
    assert_eq!(outcome(&["origin-cdn; fwd=uri-miss", "edge; hit"]), Hit);
}
