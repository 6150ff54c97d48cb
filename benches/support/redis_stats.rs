//! What the L2 benches (`benches/l2.rs`, `bench-peers/benches/l2_peers.rs`)
//! read from their own `redis-server` and from `/proc`. Included by path
//! next to `tests/support/redis.rs`, which each of them includes as
//! `redis_support`.

use crate::redis_support::RedisServer;

/// The one key under `prefix:*` on the server.
pub(crate) fn only_key(server: &RedisServer, prefix: &str) -> String {
    let out = server.cli(&["--scan", "--pattern", &format!("{prefix}:*")]);
    let keys: Vec<&str> = out.text().lines().collect();
    assert_eq!(keys.len(), 1, "one key under {prefix}: {keys:?}");
    keys[0].to_owned()
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
