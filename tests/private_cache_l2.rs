//! Credentials partitioning with the L2 tier: credentials never reach
//! Redis, not even through `Vary` on a credential header.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::convert::Infallible;

use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, ServiceExt};
use tower_tiered_cache::{Cache, CacheLayer, CacheMode};

use redis_support::{require_redis, RedisServer};

#[tokio::test]
async fn vary_on_credentials_stores_no_credentials_in_redis() {
    require_redis();
    let server = RedisServer::start();
    let cache = |_: ()| {
        Cache::builder()
            .mode(CacheMode::Private)
            .partition_by_credentials(true)
            .redis(server.url())
            .namespace("pv")
            .build()
            .unwrap()
    };
    let origin = service_fn(|req: Request<()>| async move {
        let who = req
            .headers()
            .get("cookie")
            .map(|c| c.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Ok::<_, Infallible>(
            Response::builder()
                .header("cache-control", "max-age=60")
                .header("vary", "Cookie, Authorization")
                .body(Full::new(bytes::Bytes::from(format!("for {}", who.len()))))
                .unwrap(),
        )
    });
    let a = cache(());
    let svc = CacheLayer::new(a.clone()).layer(origin);
    let get = |cookie: &str| {
        Request::get("http://api.example/me")
            .header("cookie", cookie)
            .header("authorization", "Bearer TOKEN-XYZ-987")
            .body(())
            .unwrap()
    };
    let resp = svc
        .clone()
        .oneshot(get("session=SUPERSECRET42"))
        .await
        .unwrap();
    assert!(resp.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("stored"));
    resp.into_body().collect().await.unwrap();
    support::written(&a, 1).await;

    // Same credentials: a hit in L1, and in L2 for another instance.
    let again = svc
        .clone()
        .oneshot(get("session=SUPERSECRET42"))
        .await
        .unwrap();
    assert_eq!(
        again.headers()["cache-status"],
        "tower-tiered-cache; hit; detail=l1"
    );
    let b = cache(());
    let other = CacheLayer::new(b.clone()).layer(origin);
    let from_l2 = other
        .clone()
        .oneshot(get("session=SUPERSECRET42"))
        .await
        .unwrap();
    assert_eq!(
        from_l2.headers()["cache-status"],
        "tower-tiered-cache; hit; detail=l2"
    );
    // Other credentials: their own miss.
    let bob = other.oneshot(get("session=BOB")).await.unwrap();
    assert!(bob.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("fwd=uri-miss"));

    // No value in Redis carries either secret.
    let keys = match server.cmd(&["KEYS", "pv:*"]).unwrap() {
        redis_support::Reply::Array(items) => {
            items.iter().filter_map(|k| k.as_text()).collect::<Vec<_>>()
        }
        other => panic!("KEYS: {other:?}"),
    };
    assert!(keys.len() >= 2, "{keys:?}");
    let mut values = 0;
    for key in keys {
        // Entries (and Vary markers) are strings; tag indexes are sets.
        if let Ok(redis_support::Reply::Bulk(raw)) = server.cmd(&["GET", &key]) {
            values += 1;
            for secret in [&b"SUPERSECRET42"[..], b"TOKEN-XYZ"] {
                assert!(
                    !raw.windows(secret.len()).any(|w| w == secret),
                    "{key} holds a credential"
                );
            }
        }
    }
    assert!(values >= 2, "two entries were written");
}
