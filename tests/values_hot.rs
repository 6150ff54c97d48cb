//! Typed values (`ValueCache`) with the engine's read-driven features:
//! adaptive TTL scales a hot value's soft TTL and a cold one's (the stale
//! and fail-safe windows keeping their lengths after it), and the worker
//! `ValueCache::spawn_background` starts refreshes the hottest keys
//! (`refresh_hot`) and warms the keys a read names (`prefetch`), through
//! the fetch function it holds, and ends with the value cache.
//!
//! Time is a `ManualClock` moved by hand and rounds are started with
//! `refresh_hot_now`; real waits are bounded loops waiting for a signal
//! (a fetch, a counter), never for a period.
#![cfg(feature = "values")]

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use std::sync::atomic::{AtomicUsize, Ordering};
use support::*;

use tower_tiered_cache::builder::{MAX_CONCURRENCY, MAX_PREFETCH_QUEUE, MAX_REFRESH_HOT_EVERY};
use tower_tiered_cache::values::{HotOptions, ValueOptions};
use tower_tiered_cache::{AdaptiveTtl, Cache, ManualClock, ValueCache};

/// Soft TTL 10 s, hard TTL 30 s, fail-safe 60 s past it.
fn opts() -> ValueOptions {
    ValueOptions::new()
        .ttl(secs(10))
        .hard_ttl(secs(30))
        .fail_safe(secs(60), 3)
}

/// Fresh for an hour: only a round or a warming fetches again.
fn long() -> ValueOptions {
    ValueOptions::new().ttl(secs(3600)).hard_ttl(secs(7200))
}

/// Fetches per key, each answered `"{key} #{n}"` (n: the fetch's number
/// for the key); keys named in `gated` wait at the gate first.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<Mutex<HashMap<String, usize>>>,
    gate: Option<Gate>,
}

type Fetching = Pin<Box<dyn Future<Output = Result<String, &'static str>> + Send>>;

impl Origin {
    fn gated(gate: &Gate) -> Self {
        Self {
            gate: Some(gate.clone()),
            ..Self::default()
        }
    }

    fn calls(&self, key: &str) -> usize {
        self.calls.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.calls.lock().unwrap().values().sum()
    }

    /// The worker's fetch: keys starting with `u` wait at the gate.
    fn fetch(&self) -> impl Fn(String) -> Fetching + Send + Sync + 'static {
        let this = self.clone();
        move |key| this.call(key)
    }

    /// A lookup's fetch of `key`.
    fn once(&self, key: &str) -> impl FnOnce() -> Fetching + Send + 'static {
        let (this, key) = (self.clone(), key.to_owned());
        move || this.call(key)
    }

    fn call(&self, key: String) -> Fetching {
        let n = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(key.clone()).or_default();
            *n += 1;
            *n
        };
        let gate = self.gate.clone().filter(|_| key.starts_with('u'));
        Box::pin(async move {
            if let Some(g) = gate {
                g.pass().await;
            }
            Ok(format!("{key} #{n}"))
        })
    }
}

/// Reads `key` with `opts` through `get_or_fetch`, fetching from `origin`.
async fn read(values: &ValueCache<String>, origin: &Origin, key: &str, opts: &ValueOptions) {
    let found = values.get_or_fetch(key, opts, origin.once(key)).await;
    found.unwrap_or_else(|e| panic!("{key}: {e}"));
}

// ---------------------------------------------------------------------------
// Adaptive TTL
// ---------------------------------------------------------------------------

/// A value's soft TTL (10 s) becomes 20 s for a key read 60 times in the
/// window, 5 s for one read twice; its hard TTL stays 20 s after the end
/// of freshness (the stale window keeps its length), for either. Every
/// read is counted (the default counts one in 8 past an entry's first
/// reads), so that 60 reads are 60.
#[tokio::test]
async fn adaptive_ttl_doubles_a_hot_values_ttl_and_halves_a_cold_ones() {
    let clock = clock();
    let adaptive = AdaptiveTtl::new()
        .hot_after(50, 2.0)
        .cold_under(5, 0.5)
        .window(secs(10))
        .read_sample(1);
    let cache = Cache::builder()
        .clock(clock.clone())
        .adaptive_ttl(adaptive)
        .build()
        .unwrap();
    let odds = cache.values::<String>("odds").unwrap();
    for key in ["hot", "cold"] {
        assert!(odds.set(key, format!("{key} v1"), &opts()).await);
    }
    clock.advance(secs(1));
    for _ in 0..60 {
        assert!(odds.get("hot").await.is_some());
    }
    for _ in 0..2 {
        assert!(odds.get("cold").await.is_some());
    }
    // A key seen for the first time kept its TTL: both still fresh at
    // 10 s, stored again at 11 s.
    clock.advance(secs(10));
    for key in ["hot", "cold"] {
        assert!(odds.set(key, format!("{key} v2"), &opts()).await);
    }
    let st = cache.stats();
    assert_eq!((st.ttl_lengthened, st.ttl_shortened), (1, 1), "{st:?}");

    let stale = || cache.stats().stale;
    // The cold value: fresh for 5 s, then stale until 20 s later.
    clock.advance(secs(4));
    odds.get("cold").await.unwrap();
    assert_eq!(stale(), 0, "cold: fresh at 4 s");
    clock.advance(secs(2));
    odds.get("cold").await.unwrap();
    assert_eq!(stale(), 1, "cold: stale at 6 s");
    // The hot value: fresh for 20 s.
    clock.advance(secs(13));
    odds.get("hot").await.unwrap();
    assert_eq!(stale(), 1, "hot: fresh at 19 s");
    clock.advance(secs(2));
    odds.get("hot").await.unwrap();
    assert_eq!(stale(), 2, "hot: stale at 21 s");
    // The cold value's hard TTL moved with its freshness: 25 s, not 30 s.
    clock.advance(secs(3));
    assert!(odds.get("cold").await.is_some(), "cold: stale at 24 s");
    clock.advance(secs(2));
    assert!(odds.get("cold").await.is_none(), "cold: past 25 s");
    // The hot one's: 40 s.
    clock.advance(secs(13));
    assert!(odds.get("hot").await.is_some(), "hot: stale at 39 s");
    clock.advance(secs(2));
    assert!(odds.get("hot").await.is_none(), "hot: past 40 s");
}

// ---------------------------------------------------------------------------
// Hot keys and prefetch
// ---------------------------------------------------------------------------

/// A value cache counting every read for its worker.
fn hot_values(clock: &ManualClock, hot: HotOptions) -> (Cache, ValueCache<String>) {
    let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    let odds = cache
        .values::<String>("odds")
        .unwrap()
        .with_hot(hot.hot_key_sample(1))
        .unwrap();
    (cache, odds)
}

#[tokio::test]
async fn a_round_refreshes_the_two_hottest_of_ten_value_keys_through_the_workers_fetch() {
    let clock = clock();
    let (cache, odds) = hot_values(&clock, HotOptions::new().refresh_hot(2, secs(60)));
    let origin = Origin::default();
    let background = odds.spawn_background(origin.fetch()).unwrap();
    // Every key read twice (so each is tracked with its options), two of
    // them many more times.
    for i in 0..10 {
        for _ in 0..2 {
            read(&odds, &origin, &format!("k{i}"), &long()).await;
        }
    }
    for _ in 0..10 {
        read(&odds, &origin, "k3", &long()).await;
    }
    for _ in 0..5 {
        read(&odds, &origin, "k7", &long()).await;
    }
    assert_eq!(origin.total(), 10);
    clock.advance(secs(60));
    background.refresh_hot_now();
    assert!(eventually(|| background.rounds() == 1).await);
    assert!(
        eventually(|| cache.stats().refresh_ok == 2).await,
        "{:?}",
        cache.stats()
    );
    assert_eq!(cache.stats().hot_refreshes, 2);
    assert!(cache
        .prometheus()
        .contains("\ntower_cache_hot_refreshes_total 2\n"));
    assert_eq!((origin.calls("k3"), origin.calls("k7")), (2, 2));
    assert_eq!(origin.total(), 12, "no cold key was refreshed");
    // The refreshed value answers, from L1, still fresh for the hour of
    // the options it was read with.
    let hits = cache.stats().hits_l1;
    assert_eq!(*odds.get("k3").await.unwrap(), "k3 #2");
    clock.advance(secs(3000));
    assert_eq!(*odds.get("k7").await.unwrap(), "k7 #2");
    assert_eq!(cache.stats().hits_l1, hits + 2);
}

/// Reads of `k{n}` name `u{n}`; reads of `u{n}` name `w{n}`.
fn next_keys(key: &str) -> Vec<String> {
    let named = match key.as_bytes().first() {
        Some(b'k') => format!("u{}", &key[1..]),
        Some(b'u') => format!("w{}", &key[1..]),
        _ => return Vec::new(),
    };
    vec![named]
}

#[tokio::test]
async fn prefetch_warms_a_named_value_once_however_many_reads_name_it() {
    let clock = clock();
    let (cache, odds) = hot_values(&clock, HotOptions::new().prefetch(next_keys));
    let gate = Gate::new();
    let origin = Origin::gated(&gate);
    let _background = odds.spawn_background(origin.fetch()).unwrap();
    for _ in 0..5 {
        read(&odds, &origin, "k1", &long()).await;
    }
    assert!(eventually(|| origin.calls("u1") == 1).await);
    assert_eq!(cache.stats().prefetch.queued, 1, "queued once");
    gate.open();
    assert!(
        eventually(|| cache.stats().prefetch.warmed == 1).await,
        "{:?}",
        cache.stats().prefetch
    );
    // The warming's own lookup of u1 named w1, and queued nothing; u1 is
    // present now: a read naming it queues nothing either.
    settle().await;
    read(&odds, &origin, "k1", &long()).await;
    settle().await;
    let p = cache.stats().prefetch;
    assert_eq!((p.queued, p.warmed, p.dropped, p.failed), (1, 1, 0, 0));
    assert_eq!(origin.calls("w1"), 0, "no chains of prefetches");
    assert_eq!(origin.calls("u1"), 1);
    // Warmed with the reading call's options, and answered from L1.
    let hits = cache.stats().hits_l1;
    clock.advance(secs(3000));
    assert_eq!(*odds.get("u1").await.unwrap(), "u1 #1");
    assert_eq!(cache.stats().hits_l1, hits + 1);
}

#[tokio::test]
async fn the_value_worker_ends_and_lets_go_of_its_fetch_when_the_value_cache_is_dropped() {
    let clock = clock();
    let hot = HotOptions::new()
        .refresh_hot(5, secs(60))
        .prefetch(next_keys);
    let (cache, odds) = hot_values(&clock, hot);
    let origin = Origin::default();
    let background = odds.spawn_background(origin.fetch()).unwrap();
    let again = odds.spawn_background(origin.fetch()).unwrap_err();
    assert!(again.is_already_running());
    read(&odds, &origin, "k1", &long()).await;
    assert!(eventually(|| cache.stats().prefetch.warmed == 1).await);
    let copy = odds.clone();
    drop(odds);
    settle().await;
    assert!(!background.is_finished(), "a clone still holds it");
    drop(copy);
    assert!(
        eventually(|| background.is_finished()).await,
        "the worker ended with the value cache"
    );
    assert!(
        eventually(|| Arc::strong_count(&origin.calls) == 1).await,
        "the worker's fetch was dropped"
    );
    // The cache lives on for its other users.
    let other = cache.values::<String>("odds").unwrap();
    assert!(other.get("u1").await.is_some());
}

/// The value cache's handle alone ends its worker: the value cache lives
/// on, the worker's fetch is let go, and another worker may start.
#[tokio::test]
async fn dropping_the_handle_stops_a_value_worker() {
    let clock = clock();
    let (cache, odds) = hot_values(&clock, HotOptions::new().prefetch(next_keys));
    let origin = Origin::default();
    let background = odds.spawn_background(origin.fetch()).unwrap();
    read(&odds, &origin, "k1", &long()).await;
    assert!(eventually(|| cache.stats().prefetch.warmed == 1).await);
    drop(background);
    assert!(
        eventually(|| Arc::strong_count(&origin.calls) == 1).await,
        "the worker outlived its handle"
    );
    let again = odds.spawn_background(origin.fetch());
    assert!(again.is_ok(), "a worker may start again");
}

/// A miss runs the prefetch function every time, a hit one time in
/// `hot_key_sample` (per thread).
#[tokio::test]
async fn value_prefetch_runs_for_every_miss_and_one_hit_in_the_sample() {
    let asked = Arc::new(AtomicUsize::new(0));
    let a = Arc::clone(&asked);
    let hot = HotOptions::new().hot_key_sample(8).prefetch(move |_| {
        a.fetch_add(1, Ordering::SeqCst);
        vec![String::from("next")]
    });
    let cache = Cache::builder().clock(clock()).build().unwrap();
    let odds = cache.values::<String>("odds").unwrap().with_hot(hot);
    let odds = odds.unwrap();
    let origin = Origin::default();
    let _background = odds.spawn_background(origin.fetch()).unwrap();
    for i in 0..4 {
        read(&odds, &origin, &format!("k{i}"), &long()).await;
    }
    assert_eq!(asked.load(Ordering::SeqCst), 4, "every miss");
    for _ in 0..160 {
        read(&odds, &origin, "k0", &long()).await;
    }
    // One in 8 on average, gaps under 16: 10 at least, 20 expected.
    let hits = asked.load(Ordering::SeqCst) - 4;
    assert!((10..=60).contains(&hits), "{hits} of 160 hits ran it");
}

/// A value round waiting for a refresh permit takes none from the request
/// path: a stale value read meanwhile is refreshed, not skipped.
#[tokio::test]
async fn a_value_round_waiting_for_a_permit_never_holds_up_a_stale_refresh() {
    let clock = clock();
    let cache = Cache::builder()
        .clock(clock.clone())
        .max_concurrent_refreshes(1)
        .build()
        .unwrap();
    let hot = HotOptions::new().refresh_hot(2, secs(60)).hot_key_sample(1);
    let odds = cache.values::<String>("odds").unwrap().with_hot(hot);
    let odds = odds.unwrap();
    let gate = Gate::new();
    let origin = Origin::gated(&gate);
    let background = odds.spawn_background(origin.fetch()).unwrap();
    gate.let_through(2); // the first fetches of u1 and u2
    for key in ["u1", "u2"] {
        for _ in 0..3 {
            read(&odds, &origin, key, &long()).await;
        }
    }
    clock.advance(secs(60));
    background.refresh_hot_now();
    // One hot refresh holds the round's permit, the round waits for another.
    assert!(eventually(|| origin.total() == 3).await);
    read(&odds, &origin, "s", &opts()).await;
    clock.advance(secs(15));
    read(&odds, &origin, "s", &opts()).await;
    assert_eq!(cache.stats().stale, 1, "answered stale, refreshed behind");
    assert!(
        eventually(|| origin.calls("s") == 2).await,
        "the stale refresh was held up: {:?}",
        cache.stats()
    );
    assert_eq!(cache.stats().refresh_skipped, 0);
    gate.open();
    assert!(
        eventually(|| cache.stats().hot_refreshes == 2).await,
        "{:?}",
        cache.stats()
    );
}

#[tokio::test]
async fn a_value_worker_needs_settings_a_runtime_and_sane_bounds() {
    let cache = Cache::builder().build().unwrap();
    let plain = cache.values::<String>("odds").unwrap();
    let fetch = Origin::default().fetch();
    let err = plain.spawn_background(fetch).unwrap_err();
    assert!(err.is_not_configured(), "{err}");
    let refused = [
        (HotOptions::new().refresh_hot(1, secs(0)), "refresh_hot"),
        (HotOptions::new().refresh_hot(1_001, secs(1)), "refresh_hot"),
        (HotOptions::new().hot_key_sample(0), "hot_key_sample"),
        (HotOptions::new().prefetch_queue(0), "prefetch_queue"),
        (
            HotOptions::new().max_concurrent_prefetches(0),
            "max_concurrent_prefetches",
        ),
        (
            HotOptions::new().prefetch_timeout(secs(0)),
            "prefetch_timeout",
        ),
        // The builder's caps.
        (
            HotOptions::new().refresh_hot(1, MAX_REFRESH_HOT_EVERY + secs(1)),
            "refresh_hot",
        ),
        (
            HotOptions::new().prefetch_queue(MAX_PREFETCH_QUEUE + 1),
            "prefetch_queue",
        ),
        (
            HotOptions::new().max_concurrent_prefetches(MAX_CONCURRENCY + 1),
            "max_concurrent_prefetches",
        ),
    ];
    for (hot, setting) in refused {
        let err = plain.clone().with_hot(hot).unwrap_err();
        assert!(err.is_invalid_setting(), "{setting}");
        assert_eq!(err.setting(), setting);
    }
    let widest = HotOptions::new()
        .refresh_hot(1, MAX_REFRESH_HOT_EVERY)
        .prefetch_queue(MAX_PREFETCH_QUEUE)
        .max_concurrent_prefetches(MAX_CONCURRENCY);
    assert!(plain.clone().with_hot(widest).is_ok());
    // Outside a runtime.
    let values = plain.with_hot(HotOptions::new().refresh_hot(1, secs(1)));
    let values = values.unwrap();
    let err = std::thread::spawn(move || values.spawn_background(Origin::default().fetch()))
        .join()
        .unwrap()
        .unwrap_err();
    assert!(err.is_no_runtime(), "{err}");
}
