//! A fixed number of L2 hits, or of raw Redis `GET`s of the same stored
//! bytes, for instruction counts under callgrind: the in-process work an L2
//! hit adds to the round trip.
//!
//! Starts its own `redis-server` on a free loopback port (the test
//! suite's helper), stores one 1 KiB entry through a cache that keeps L1
//! out of the way (as `benches/l2.rs` does), then runs `l2` (hits through
//! the layer) or `raw` (`GET` of the stored key on a `ConnectionManager`).
//! Callgrind counts this process only (not the server); take two runs with
//! different counts and divide the difference, which cancels the set-up:
//!
//! ```sh
//! cargo build --release --features redis --example profile_l2
//! for n in 1 8001; do
//!   valgrind --tool=callgrind target/release/examples/profile_l2 l2 $n
//! done
//! ```
#[path = "../tests/support/redis.rs"]
mod redis_support;
#[path = "../benches/support/mod.rs"]
mod support;
use http_body_util::BodyExt;
use redis::aio::ConnectionManager;
use std::hint::black_box;
use std::time::Duration;
use tower::{Layer, ServiceExt};
use tower_tiered_cache::{Cache, CacheLayer};
fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "l2".into());
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(8_001);
    assert!(mode == "l2" || mode == "raw", "mode is l2 or raw");
    let server = redis_support::RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _e = rt.enter();
    let buf = support::body_buffer();
    let proto = support::Proto::<()>::new(support::HIT_URI);
    let cache = Cache::builder()
        .redis(server.url())
        .namespace("bench")
        .l1_write_through(false)
        .promote_after(u32::MAX)
        .l2_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let cached =
        CacheLayer::new(cache.clone()).layer(support::origin::<http::Request<()>>(buf.clone()));
    rt.block_on(async {
        let resp = cached.clone().oneshot(proto.make()).await.unwrap();
        resp.into_body().collect().await.unwrap();
        while cache.stats().l2_writes < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let keys = server.cli(&["--scan", "--pattern", "bench:*"]);
    let key = keys.text().lines().next().unwrap().to_owned();
    let conn = rt
        .block_on(ConnectionManager::new(
            redis::Client::open(server.url()).unwrap(),
        ))
        .unwrap();
    rt.block_on(async {
        for _ in 0..n {
            if mode == "l2" {
                let r = cached.clone().oneshot(proto.make()).await.unwrap();
                assert_eq!(
                    r.headers()["cache-status"],
                    "tower-tiered-cache; hit; detail=l2"
                );
                black_box(r);
            } else {
                let mut c = conn.clone();
                let v = redis::cmd("GET")
                    .arg(&key)
                    .query_async::<redis::Value>(&mut c)
                    .await
                    .unwrap();
                black_box(v);
            }
        }
    });
}
