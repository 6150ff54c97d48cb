//! The tier configurations the semantics suite runs on.
//!
//! `tests/semantics.rs` is the suite, run on L1 alone. `tests/semantics_l2.rs`
//! and `tests/semantics_both.rs` include the same file (`#[path]`) and set
//! the crate-level `TIERS` constant the suite reads through `crate::TIERS`:
//!
//! - `L1`: no Redis (as the suite always ran).
//! - `L2`: an L2 tier and an L1 that never holds anything: responses are
//!   not written to L1 (`l1_write_through(false)`) and L2 entries are never
//!   promoted (`promote_after(u32::MAX)`), so every hit is an L2 read.
//! - `Both`: L1 written through, plus L2 (the default layout with Redis).
//!
//! Each configuration with L2 starts its own `redis-server` (one per test
//! binary, killed by its watchdog when the binary exits), and every cache
//! gets a namespace of its own, so tests running at once never share
//! entries.
#![allow(dead_code, unreachable_pub)]

use std::cell::RefCell;
use std::time::Duration;

use tower_tiered_cache::{Cache, CacheBuilder, ManualClock};

/// Which tiers a cache of the suite has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tiers {
    /// L1 only.
    L1,
    /// L2 only (L1 never written to, nothing promoted).
    L2,
    /// L1 written through, and L2.
    Both,
}

impl Tiers {
    /// The tier a fresh hit of a stored entry comes from: `l1` or `l2`.
    pub fn hit_tier(self) -> &'static str {
        match self {
            Tiers::L2 => "l2",
            Tiers::L1 | Tiers::Both => "l1",
        }
    }

    /// Whether entries live in L1 (`l1_entries` counts them).
    pub fn l1_holds(self) -> bool {
        self != Tiers::L2
    }

    /// A builder for this configuration, on `clock`.
    pub fn builder(self, clock: &ManualClock) -> CacheBuilder {
        let b = Cache::builder().clock(clock.clone());
        match self {
            Tiers::L1 => b,
            #[cfg(feature = "redis")]
            Tiers::L2 => with_redis(b)
                .l1_write_through(false)
                .promote_after(u32::MAX),
            #[cfg(feature = "redis")]
            Tiers::Both => with_redis(b),
            #[cfg(not(feature = "redis"))]
            Tiers::L2 | Tiers::Both => unreachable!("L2 configurations need the redis feature"),
        }
    }
}

#[cfg(feature = "redis")]
fn with_redis(b: CacheBuilder) -> CacheBuilder {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static SERVER: OnceLock<crate::redis_support::RedisServer> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let server = SERVER.get_or_init(crate::redis_support::RedisServer::start);
    let ns = format!("sem{}", NEXT.fetch_add(1, Ordering::Relaxed));
    // A busy machine (2 cores, several test binaries) must not turn a
    // healthy Redis into misses: the suite tests HTTP semantics, not the
    // L2 deadline.
    b.redis(server.url())
        .namespace(ns)
        .l2_timeout(Duration::from_secs(2))
}

thread_local! {
    /// The caches a test made requests through (each test runs on its own
    /// thread; `#[tokio::test]` runs its tasks on that thread).
    static CACHES: RefCell<Vec<Cache>> = const { RefCell::new(Vec::new()) };
}

/// Remembers `cache`, so requests wait for its L2 writes (`settle`).
pub fn register(cache: &Cache) {
    CACHES.with(|c| c.borrow_mut().push(cache.clone()));
}

/// The caches registered on this thread.
pub fn registered() -> Vec<Cache> {
    CACHES.with(|c| c.borrow().clone())
}

/// Waits (at most 5 s) until every L2 write queued by `caches` is written,
/// so the next request finds in Redis what the previous one stored, as it
/// would find it in L1.
pub async fn settle(caches: &[Cache]) {
    for cache in caches {
        for _ in 0..5000 {
            if cache.l2_pending_writes() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
