//! The L1 hit of [`ValueCache::get_or_fetch`] side by side with moka's
//! `future::Cache::get_with` on the same key and the same value.
//!
//! Group `values`, one run, the key `"item:42"` stored once on every side
//! and an `Arc` of the same small struct returned by every call:
//!
//! - `get_or_fetch`: a [`ValueCache`] on a default cache (observability on:
//!   the lookup is counted under the value cache's label, as a request
//!   is), every call a fresh L1 hit;
//! - `get_or_fetch_unobserved`: the same with `.observability(false)`
//!   (global counters only);
//! - `moka_get_with`: `moka::future::Cache::<String, Arc<Item>>::get_with`,
//!   the key passed by value as its API takes it (a `String` made per
//!   call);
//! - `moka_get_with_by_ref`: `get_with_by_ref(&str, ..)`, moka without
//!   that allocation (the stricter comparison).
//!
//! Every future here is ready on its first poll (a hit), so each is
//! polled once with a no-op waker: no scheduler on either side. The
//! returned `Arc`s are kept until the clock stops and dropped after.
//!
//! Before the criterion group, an interleaved run (rounds of the same
//! number of calls on each side in turn, median round per side) prints
//! the ratios the target is about: `get_or_fetch / moka_get_with_by_ref`
//! and `get_or_fetch / moka_get_with` (target: at most 1.2×).
//!
//! Run with `cargo bench --bench values`.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tower_tiered_cache::values::ValueOptions;
use tower_tiered_cache::{Cache, ValueCache};

mod support;

use support::{current_thread_runtime, median, noop_waker, time_calls, try_poll_once};

/// The key every side reads.
const KEY: &str = "item:42";

/// What every side returns: a small metadata record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Item {
    id: u64,
    title: String,
    score: f64,
}

fn item() -> Item {
    Item {
        id: 42,
        title: "The answer".to_owned(),
        score: 4.2,
    }
}

/// The sides, each with its stored value.
struct Sides {
    /// The observed side's cache: its stats show every call was a hit.
    cache: Cache,
    observed: ValueCache<Item>,
    unobserved: ValueCache<Item>,
    moka: moka::future::Cache<String, Arc<Item>>,
    opts: ValueOptions,
    waker: Waker,
}

impl Sides {
    fn new(rt: &tokio::runtime::Runtime) -> Self {
        let opts = ValueOptions::new().ttl(Duration::from_secs(3600));
        let values = |builder: tower_tiered_cache::CacheBuilder| {
            let cache = builder.build().expect("cache");
            let vc = cache.values::<Item>("items").expect("value cache");
            (cache, vc)
        };
        let (cache, observed) = values(Cache::builder());
        let (_, unobserved) = values(Cache::builder().observability(false));
        let moka = moka::future::Cache::new(10_000);
        rt.block_on(async {
            for vc in [&observed, &unobserved] {
                assert!(vc.set(KEY, item(), &opts).await);
            }
            moka.insert(KEY.to_owned(), Arc::new(item())).await;
        });
        Self {
            cache,
            observed,
            unobserved,
            moka,
            opts,
            waker: noop_waker(),
        }
    }

    /// One L1 hit of `get_or_fetch` on `vc`, polled once.
    fn ours(&self, vc: &ValueCache<Item>) -> Arc<Item> {
        let fut = vc.get_or_fetch(KEY, &self.opts, || async { Ok::<_, Infallible>(item()) });
        try_poll_once(fut, &self.waker)
            .expect("a hit is ready on its first poll")
            .expect("a hit")
    }

    /// One hit of moka's `get_with` (the key by value), polled once.
    fn moka(&self) -> Arc<Item> {
        let fut = self
            .moka
            .get_with(KEY.to_owned(), async { Arc::new(item()) });
        try_poll_once(fut, &self.waker).expect("a hit is ready on its first poll")
    }

    /// One hit of moka's `get_with_by_ref`, polled once.
    fn moka_by_ref(&self) -> Arc<Item> {
        let fut = self.moka.get_with_by_ref(KEY, async { Arc::new(item()) });
        try_poll_once(fut, &self.waker).expect("a hit is ready on its first poll")
    }

    /// One round of `n` calls of `side`: nanoseconds per call.
    fn round(&self, side: Side, n: usize) -> f64 {
        time_calls(vec![(); n], |()| match side {
            Side::Ours => self.ours(&self.observed),
            Side::Unobserved => self.ours(&self.unobserved),
            Side::Moka => self.moka(),
            Side::MokaByRef => self.moka_by_ref(),
        })
    }
}

#[derive(Clone, Copy)]
enum Side {
    Ours,
    Unobserved,
    Moka,
    MokaByRef,
}

const SIDES: [(Side, &str); 4] = [
    (Side::Ours, "get_or_fetch"),
    (Side::Unobserved, "get_or_fetch_unobserved"),
    (Side::Moka, "moka_get_with"),
    (Side::MokaByRef, "moka_get_with_by_ref"),
];

/// Rounds of the same number of calls on each side in turn, so that the
/// machine's load drifts equally over all of them; the median round of
/// each side gives the ratios.
fn interleaved(sides: &Sides) {
    const ROUNDS: usize = 41;
    const PER_ROUND: usize = 20_000;
    let mut times = [vec![], vec![], vec![], vec![]];
    for _ in 0..ROUNDS {
        for (i, (side, _)) in SIDES.iter().enumerate() {
            times[i].push(sides.round(*side, PER_ROUND));
        }
    }
    let [ours, unobserved, moka, by_ref] = times.map(|mut t| median(&mut t));
    println!(
        "interleaved (median of {ROUNDS} rounds of {PER_ROUND}): get_or_fetch {ours:.1} ns, \
         get_or_fetch_unobserved {unobserved:.1} ns, moka_get_with {moka:.1} ns, \
         moka_get_with_by_ref {by_ref:.1} ns"
    );
    println!(
        "interleaved ratios: get_or_fetch / moka_get_with_by_ref {:.3}x, \
         get_or_fetch / moka_get_with {:.3}x (target <= 1.2x); unobserved / by_ref {:.3}x",
        ours / by_ref,
        ours / moka,
        unobserved / by_ref
    );
}

fn values(c: &mut Criterion) {
    let rt = current_thread_runtime();
    let _enter = rt.enter();
    let sides = Sides::new(&rt);
    interleaved(&sides);

    let mut g = c.benchmark_group("values");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for (side, name) in SIDES {
        g.bench_function(name, |b| {
            b.iter(|| match side {
                Side::Ours => black_box(sides.ours(&sides.observed)),
                Side::Unobserved => black_box(sides.ours(&sides.unobserved)),
                Side::Moka => black_box(sides.moka()),
                Side::MokaByRef => black_box(sides.moka_by_ref()),
            })
        });
    }
    g.finish();

    let stats = sides.cache.stats();
    assert!(stats.hits_l1 > 0, "{stats:?}");
    assert_eq!(
        (stats.misses, stats.stale, stats.upstream_calls),
        (0, 0, 0),
        "every get_or_fetch was a fresh L1 hit"
    );
}

criterion_group!(benches, values);
criterion_main!(benches);
