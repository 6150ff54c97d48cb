//! Stats accumulated in Redis (`CacheBuilder::shared_stats`): two
//! instances on one real `redis-server` add up, survive a restart of the
//! instances, are never double counted, and are reset on request.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::Full;
use tower::{service_fn, Layer, ServiceExt};
use tower_tiered_cache::{Cache, CacheLayer};

use redis_support::{require_redis, RedisServer};

/// Polls `f` (async) until it returns `Some`, for at most `timeout`.
async fn until<T, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cache(redis: &RedisServer, every: Duration) -> Cache {
    Cache::builder()
        .redis(redis.url())
        .namespace("shared")
        .shared_stats(every)
        .build()
        .unwrap()
}

async fn get(cache: &Cache, path: &str) -> String {
    let origin = service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("cache-control", "max-age=600")
                .body(Full::new(bytes::Bytes::from_static(b"body")))
                .unwrap(),
        )
    });
    let svc = CacheLayer::new(cache.clone()).layer(origin);
    let req = Request::get(format!("http://svc.example{path}"))
        .body(())
        .unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    resp.headers()["cache-status"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn two_instances_add_up_and_survive_a_restart() {
    require_redis();
    let redis = RedisServer::start();
    let hour = Duration::from_secs(3600);
    let a = cache(&redis, hour);
    let b = cache(&redis, hour);
    a.reset_shared_stats().await;

    // a: one miss, two hits
    assert!(get(&a, "/x").await.contains("fwd=uri-miss"));
    get(&a, "/x").await;
    get(&a, "/x").await;
    support::written(&a, 1).await;
    // b: the L2 copy (a hit), then one miss elsewhere
    assert!(get(&b, "/x").await.contains("detail=l2"));
    get(&b, "/y").await;

    assert!(a.flush_shared_stats().await);
    assert!(b.flush_shared_stats().await);
    // A second flush with nothing new adds nothing.
    assert!(a.flush_shared_stats().await);

    let s = a.shared_stats().await.expect("shared stats");
    assert_eq!(s.requests, 5, "{s:#?}");
    assert_eq!((s.hits, s.hits_l1, s.hits_l2), (3, 2, 1), "{s:#?}");
    assert_eq!(s.misses, 2, "{s:#?}");
    assert!((s.hit_ratio - 0.6).abs() < 1e-9, "{s:#?}");
    let label = &s.labels[0];
    assert_eq!(
        (
            label.label.as_str(),
            label.requests,
            label.hits,
            label.misses
        ),
        ("svc.example", 5, 3, 2)
    );
    // The other instance reads the same totals.
    assert_eq!(b.shared_stats().await.unwrap(), s);

    // A restarted instance (new process, counters from zero) adds to them.
    drop(a);
    let a2 = cache(&redis, hour);
    get(&a2, "/z").await;
    assert!(a2.flush_shared_stats().await);
    let s = a2.shared_stats().await.unwrap();
    assert_eq!((s.requests, s.misses), (6, 3));

    // A local reset_stats neither loses what was not flushed yet nor
    // counts anything twice.
    get(&b, "/y").await; // an L1 hit on b, not flushed
    b.reset_stats();
    get(&b, "/y").await; // another, after the reset
    assert!(b.flush_shared_stats().await);
    let s = b.shared_stats().await.unwrap();
    assert_eq!((s.requests, s.hits), (8, 5), "{s:#?}");
    assert!(b.flush_shared_stats().await);
    assert_eq!(b.shared_stats().await.unwrap().requests, 8);

    // clear() drops entries, not stats; reset_shared_stats drops stats.
    b.clear().await;
    assert_eq!(b.shared_stats().await.unwrap().requests, 8);
    assert!(b.reset_shared_stats().await);
    assert_eq!(b.shared_stats().await.unwrap().requests, 0);
}

#[tokio::test]
async fn the_periodic_flush_runs_by_itself_and_failed_flushes_lose_nothing() {
    require_redis();
    let mut redis = RedisServer::start();
    let a = cache(&redis, Duration::from_millis(100));
    a.reset_shared_stats().await;
    get(&a, "/p").await;
    get(&a, "/p").await;
    let s = until(Duration::from_secs(10), || async {
        a.shared_stats().await.filter(|s| s.requests == 2)
    })
    .await;
    assert_eq!((s.requests, s.hits, s.misses), (2, 1, 1));

    // Redis down: flushes fail, counts wait for the next one that lands.
    // (This redis-server keeps nothing across its restart: the hash then
    // holds what had not been flushed yet, the third request.)
    redis.kill();
    get(&a, "/p").await;
    assert!(!a.flush_shared_stats().await);
    redis.restart();
    let s = until(Duration::from_secs(20), || async {
        a.shared_stats().await.filter(|s| s.requests > 0)
    })
    .await;
    assert_eq!((s.requests, s.hits, s.misses), (1, 1, 0), "{s:#?}");
}

#[test]
fn shared_stats_need_l2_and_a_sane_interval() {
    let e = Cache::builder()
        .shared_stats(Duration::from_secs(10))
        .build()
        .unwrap_err();
    assert_eq!(e.setting(), "shared_stats");
    let e = Cache::builder()
        .redis("redis://127.0.0.1:1/")
        .shared_stats(Duration::from_millis(1))
        .build()
        .unwrap_err();
    assert_eq!(e.setting(), "shared_stats");
}

#[cfg(feature = "admin")]
#[tokio::test]
async fn the_admin_service_serves_shared_stats() {
    use http_body_util::BodyExt;
    use tower_tiered_cache::admin::AdminService;
    require_redis();
    let redis = RedisServer::start();
    let a = cache(&redis, Duration::from_secs(3600));
    a.reset_shared_stats().await;
    get(&a, "/s").await;
    assert!(a.flush_shared_stats().await);
    let admin = AdminService::without_auth(a.clone());
    let resp = admin
        .clone()
        .oneshot(
            Request::get("/stats/shared")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["requests"], 1);
    assert_eq!(v["misses"], 1);

    // Without shared stats configured: 404 with a JSON reason.
    let plain = Cache::builder().build().unwrap();
    let resp = AdminService::without_auth(plain)
        .oneshot(
            Request::get("/stats/shared")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn the_flusher_runs_with_observability_off() {
    require_redis();
    let redis = RedisServer::start();
    let a = Cache::builder()
        .redis(redis.url())
        .namespace("quiet")
        .shared_stats(Duration::from_millis(100))
        .observability(false)
        .build()
        .unwrap();
    a.reset_shared_stats().await;
    for _ in 0..3 {
        get(&a, "/q").await;
    }
    let s = until(Duration::from_secs(10), || async {
        a.shared_stats().await.filter(|s| s.requests == 3)
    })
    .await;
    assert_eq!((s.hits, s.misses), (2, 1));
}
