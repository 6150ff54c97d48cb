//! The Redis-only helpers of the L2 benches (`benches/l2.rs`,
//! `bench-peers/benches/l2_peers.rs`): the cache they measure, what they
//! read from their own `redis-server` and from `/proc`, and their checks.
//! Included by path as `redis_stats`, next to `tests/support/redis.rs`,
//! which each of them includes as `redis_support` (both have the `redis`
//! crate and this crate's `redis` feature).
//!
//! Not a bench target itself: Cargo only discovers `benches/*.rs` and
//! `benches/*/main.rs`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::Value;
use tower_tiered_cache::{Cache, Stats};

use crate::redis_support::RedisServer;

/// Our cache's `Cache-Status` on an L2 hit.
pub(crate) const L2_HIT: &str = "tower-tiered-cache; hit; detail=l2";

/// A cache with L2 on `server` under `namespace` and L1 kept out of the
/// way: the entry never reaches L1 (`l1_write_through(false)`) and is
/// never promoted (`promote_after(u32::MAX)`), so every call after the
/// store is an L2 hit.
pub(crate) fn l2_only_cache(server: &RedisServer, namespace: &str) -> Cache {
    Cache::builder()
        .redis(server.url())
        .namespace(namespace)
        .l1_write_through(false)
        .promote_after(u32::MAX)
        .l2_timeout(Duration::from_secs(1)) // a slow moment must not turn a hit into a miss
        .build()
        .expect("cache")
}

/// Waits until `cache`'s first L2 write has landed (it is asynchronous);
/// fails after 10 s.
pub(crate) async fn l2_write_landed(cache: &Cache) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.stats().l2_writes < 1 {
        assert!(
            Instant::now() < deadline,
            "the L2 write did not land: {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The one key under `prefix:*` on the server.
pub(crate) fn only_key(server: &RedisServer, prefix: &str) -> String {
    let out = server.cli(&["--scan", "--pattern", &format!("{prefix}:*")]);
    let keys: Vec<&str> = out.text().lines().collect();
    assert_eq!(keys.len(), 1, "one key under {prefix}: {keys:?}");
    keys[0].to_owned()
}

/// The raw side: `GET key` on a clone of the connection (the caches clone
/// their `ConnectionManager` per operation too), the bulk-string reply
/// turned into `Bytes`, as our cache does.
pub(crate) async fn raw_get(conn: &ConnectionManager, key: &str) -> Bytes {
    let mut c = conn.clone();
    match redis::cmd("GET")
        .arg(key)
        .query_async::<Value>(&mut c)
        .await
        .expect("GET")
    {
        Value::BulkString(b) => Bytes::from(b),
        other => panic!("GET {key}: not a stored value: {other:?}"),
    }
}

/// Redis commands the server saw per call while `f` made `calls` calls
/// (`INFO commandstats`, our own `CONFIG`/`INFO` excluded), as
/// `(all, GET)`.
pub(crate) fn commands_per_call(
    server: &RedisServer,
    calls: usize,
    f: impl FnOnce(),
) -> (f64, f64) {
    assert!(server.cli(&["CONFIG", "RESETSTAT"]).success());
    f();
    let info = server.cli(&["INFO", "commandstats"]);
    let (mut all, mut get) = (0u64, 0u64);
    for line in info.text().lines() {
        // cmdstat_get:calls=2000,usec=...
        let Some((name, rest)) = line.trim().split_once(":calls=") else {
            continue;
        };
        if name == "cmdstat_info" || name.starts_with("cmdstat_config") {
            continue;
        }
        let n: u64 = rest
            .split(',')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        all += n;
        if name == "cmdstat_get" {
            get += n;
        }
    }
    (all as f64 / calls as f64, get as f64 / calls as f64)
}

/// The calling thread's CPU time so far in nanoseconds (Linux
/// `/proc/thread-self/schedstat`), if available.
pub(crate) fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// The calling thread's CPU nanoseconds since `start` (a [`thread_cpu_ns`]
/// reading); NaN when either reading is unavailable.
pub(crate) fn thread_cpu_ns_since(start: Option<u64>) -> f64 {
    match (start, thread_cpu_ns()) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64,
        _ => f64::NAN,
    }
}

/// Prints `cache`'s counters as those of side `side`'s calls; returns them.
pub(crate) fn print_l2_stats(cache: &Cache, side: &str) -> Stats {
    let s = cache.stats();
    println!(
        "{side} calls: hits_l2={} hits_l1={} misses={} upstream_calls={} l2_timeouts={} \
         l2_errors={} promotions={}",
        s.hits_l2, s.hits_l1, s.misses, s.upstream_calls, s.l2_timeouts, s.l2_errors, s.promotions
    );
    s
}

/// Every call of side `side` counted in `s` was an L2 hit: no L1 hit, miss,
/// upstream call, L2 timeout or L2 error.
pub(crate) fn assert_only_l2_hits(s: &Stats, side: &str) {
    assert_eq!(
        (
            s.hits_l1,
            s.misses,
            s.upstream_calls,
            s.l2_timeouts,
            s.l2_errors
        ),
        (0, 0, 0, 0, 0),
        "every {side} call must have been an L2 hit"
    );
}
