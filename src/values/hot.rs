//! Hot-key refresh and prefetch for typed values: [`HotOptions`] (set with
//! [`ValueCache::with_hot`]) and the worker
//! [`ValueCache::spawn_background`] starts, on the engine's parts
//! (`flow::hot`: the tracker, the prefetch queue, the worker's loops). A
//! value cache's [`KeyWork`] reaches the origin through the fetch function
//! the worker holds.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use tokio::sync::OwnedSemaphorePermit;

use super::{boxed, Call, Face, Prior, Report, ValueCache, ValueOptions, MAX_KEY_BYTES};
use crate::cache::Cache;
use crate::flow::hot::{BackgroundError, HotParts, HotSettings, KeyWork, WarmFuture, Warmed};
use crate::key::KeyHash;
use crate::tiers::{L1Lookup, Tier};
use crate::warm::Background;
use crate::BuildError;

/// A function that names the keys to warm after a read of a key (set with
/// [`HotOptions::prefetch`]).
pub type ValuePrefetchFn = Arc<dyn Fn(&str) -> Vec<String> + Send + Sync>;

/// A key as the background worker takes it: the key, and the options of
/// the read that made it known (its TTLs, tags and tiers are the ones the
/// refreshed or warmed value is stored with).
#[derive(Debug)]
pub(crate) struct HotKey {
    key: Box<str>,
    opts: ValueOptions,
}

impl HotKey {
    /// `key` with the options of its read, as the worker keeps it.
    fn of(key: &str, opts: &ValueOptions) -> Arc<Self> {
        Arc::new(Self {
            key: key.into(),
            opts: opts.clone(),
        })
    }
}

/// A value cache's background parts.
pub(crate) type ValueHot = HotParts<Arc<HotKey>, ValuePrefetchFn>;

/// Hot-key refresh and prefetch for a value cache
/// ([`ValueCache::with_hot`]), run by the worker
/// [`ValueCache::spawn_background`] starts. The same settings, defaults
/// and bounds as the HTTP ones of [`CacheBuilder`](crate::CacheBuilder)
/// (its "Hot keys and prefetch" settings), for this value cache's keys.
///
/// ```
/// use std::time::Duration;
/// use tower_tiered_cache::values::HotOptions;
///
/// let hot = HotOptions::new()
///     // Every 30 s, the 10 most-read keys are fetched again.
///     .refresh_hot(10, Duration::from_secs(30))
///     // After a read of "match:{n}", "match:{n + 1}" is warmed if absent.
///     .prefetch(|key| {
///         let next = key.strip_prefix("match:").and_then(|n| n.parse::<u64>().ok());
///         next.map(|n| format!("match:{}", n + 1)).into_iter().collect()
///     })
///     .prefetch_queue(64);
/// # drop(hot);
/// ```
#[derive(Clone, Default)]
pub struct HotOptions {
    settings: HotSettings<ValuePrefetchFn>,
}

impl fmt::Debug for HotOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HotOptions").field(&self.settings).finish()
    }
}

impl HotOptions {
    /// Both off; the bounds at the defaults of the HTTP settings
    /// ([`DEFAULT_REFRESH_HOT_EVERY`](crate::builder::DEFAULT_REFRESH_HOT_EVERY),
    /// [`DEFAULT_HOT_KEY_SAMPLE`](crate::builder::DEFAULT_HOT_KEY_SAMPLE),
    /// [`DEFAULT_PREFETCH_QUEUE`](crate::builder::DEFAULT_PREFETCH_QUEUE),
    /// [`DEFAULT_MAX_CONCURRENT_PREFETCHES`](crate::builder::DEFAULT_MAX_CONCURRENT_PREFETCHES),
    /// [`DEFAULT_PREFETCH_TIMEOUT`](crate::builder::DEFAULT_PREFETCH_TIMEOUT)).
    pub fn new() -> Self {
        Self::default()
    }

    // Hot keys.

    /// Fetches the `top_n` most-read keys again every `every` (`top_n` at
    /// most [`MAX_REFRESH_HOT_TOP_N`](crate::builder::MAX_REFRESH_HOT_TOP_N),
    /// `every` at most [`MAX_REFRESH_HOT_EVERY`](crate::builder::MAX_REFRESH_HOT_EVERY);
    /// default [`DEFAULT_REFRESH_HOT_TOP_N`](crate::builder::DEFAULT_REFRESH_HOT_TOP_N),
    /// off), so that they never go stale while they are read.
    ///
    /// Reads (hits and misses of every lookup) are counted as
    /// [`CacheBuilder::refresh_hot`](crate::CacheBuilder::refresh_hot)
    /// counts requests. Each round takes the hottest keys whose value L1
    /// holds and that were stored at least `every` ago, and refreshes
    /// each as a stale value is refreshed (one fetch per key, at most the
    /// cache's `max_concurrent_refreshes` at once: permits of the rounds'
    /// own, shared with the cache's other workers, apart from the request
    /// path's stale refreshes; within the read's
    /// [`fetch_timeout`](ValueOptions::fetch_timeout), a failure keeping
    /// the value), stored with the options of the read that made the key
    /// known. Counted in [`Stats::hot_refreshes`](crate::Stats::hot_refreshes).
    pub fn refresh_hot(mut self, top_n: usize, every: Duration) -> Self {
        self.settings.top_n = top_n;
        self.settings.every = every;
        self
    }

    /// How many reads the hot-key tracker counts, and how many hits run
    /// the [`prefetch`](Self::prefetch) function: one in `n` per thread
    /// (default [`DEFAULT_HOT_KEY_SAMPLE`](crate::builder::DEFAULT_HOT_KEY_SAMPLE),
    /// at least 1).
    pub fn hot_key_sample(mut self, n: u32) -> Self {
        self.settings.sample = n;
        self
    }

    // Prefetch.

    /// After a read of a key, warms the keys `f` names for it that L1 does
    /// not hold, in the background, through the worker's fetch, with the
    /// read's options. `f` runs for every read that finds nothing in L1,
    /// and for one hit in [`hot_key_sample`](Self::hot_key_sample) per
    /// thread (other hits cost a thread-local count); the key kept for
    /// warming is made only when the queue takes it. At most 16 keys per
    /// read are taken; a key queued or being warmed is not queued again,
    /// nor one whose
    /// warming failed within the last
    /// [`prefetch_timeout`](Self::prefetch_timeout); beyond
    /// [`prefetch_queue`](Self::prefetch_queue) waiting keys they are
    /// dropped. Lookups made by warming prefetch nothing. Counted in
    /// [`Stats::prefetch`](crate::Stats::prefetch); a warming is a lookup
    /// of the value cache like any other (counted under its name).
    /// Nothing is queued while no worker runs.
    pub fn prefetch<F>(mut self, f: F) -> Self
    where
        F: Fn(&str) -> Vec<String> + Send + Sync + 'static,
    {
        self.settings.prefetch = Some(Arc::new(f));
        self
    }

    /// The most keys waiting to be prefetched (default
    /// [`DEFAULT_PREFETCH_QUEUE`](crate::builder::DEFAULT_PREFETCH_QUEUE),
    /// at most [`MAX_PREFETCH_QUEUE`](crate::builder::MAX_PREFETCH_QUEUE));
    /// beyond it they are dropped and counted.
    pub fn prefetch_queue(mut self, n: usize) -> Self {
        self.settings.queue = n;
        self
    }

    /// The most keys warmed at once (default
    /// [`DEFAULT_MAX_CONCURRENT_PREFETCHES`](crate::builder::DEFAULT_MAX_CONCURRENT_PREFETCHES),
    /// at most [`MAX_CONCURRENCY`](crate::builder::MAX_CONCURRENCY)).
    pub fn max_concurrent_prefetches(mut self, n: usize) -> Self {
        self.settings.concurrency = n;
        self
    }

    /// The deadline of one warming (default
    /// [`DEFAULT_PREFETCH_TIMEOUT`](crate::builder::DEFAULT_PREFETCH_TIMEOUT));
    /// a key whose warming failed is not warmed again for as long.
    pub fn prefetch_timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }
}

impl<T: Send + Sync + 'static> ValueCache<T> {
    /// This cache with `hot`'s hot-key refresh and prefetch: its lookups
    /// (and those of its clones) are counted for them, and
    /// [`spawn_background`](Self::spawn_background) runs them. Settings
    /// that cannot work are a [`BuildError`] naming the setting, as
    /// [`CacheBuilder::build`](crate::CacheBuilder::build) checks them.
    pub fn with_hot(mut self, hot: HotOptions) -> Result<Self, BuildError> {
        hot.settings.check()?;
        self.hot = HotParts::new(hot.settings).map(Arc::new);
        Ok(self)
    }

    /// Starts this value cache's background worker: the
    /// [`refresh_hot`](HotOptions::refresh_hot) rounds and the
    /// [`prefetch`](HotOptions::prefetch)ing of [`with_hot`](Self::with_hot),
    /// reaching the origin through `fetch` (called with the key). One
    /// worker runs per value cache (and its clones); it holds the cache
    /// weakly and ends when every clone of this value cache is dropped,
    /// when the returned handle is dropped, or on [`Background::stop`].
    ///
    /// Refused ([`BackgroundError`]) without `with_hot` settings, outside
    /// a tokio runtime, or while a worker runs for this value cache.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_tiered_cache::values::HotOptions;
    /// use tower_tiered_cache::Cache;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = Cache::builder().build()?;
    /// let odds = cache
    ///     .values::<f64>("odds")?
    ///     .with_hot(HotOptions::new().refresh_hot(10, Duration::from_secs(30)))?;
    /// let background = odds.spawn_background(|key: String| async move {
    ///     Ok::<_, std::io::Error>(key.len() as f64)
    /// })?;
    /// assert!(odds
    ///     .spawn_background(|_key: String| async { Ok::<_, std::io::Error>(0.0) })
    ///     .unwrap_err()
    ///     .is_already_running());
    /// background.refresh_hot_now();
    /// # Ok(()) }
    /// ```
    pub fn spawn_background<F, Fut, E>(&self, fetch: F) -> Result<Background, BackgroundError>
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Send + 'static,
    {
        let work = ValueWork {
            values: self.detached(),
            fetch: Arc::new(fetch),
        };
        let runner = self.cache.start_worker(self.hot.as_deref(), work)?;
        Ok(Background::of(runner))
    }

    /// After the L1 step of a lookup (`miss`: L1 had nothing for it): the
    /// read is counted for `refresh_hot` (one in `hot_key_sample`), and,
    /// while a worker runs, the keys `prefetch` names are queued: for a
    /// miss, and for one hit in `hot_key_sample` per thread. (Value keys
    /// name no host: any key the function names is this cache's.)
    #[inline(never)]
    pub(super) fn after_read(&self, hot: &ValueHot, call: &Call<'_>, miss: bool) {
        hot.note(call.hash, || Some(HotKey::of(call.key, call.opts)));
        let Some((func, queue)) = hot.prefetching(miss) else {
            return;
        };
        let now = self.cache.now();
        let none = HeaderMap::new();
        self.cache
            .queue_prefetches(queue, func(call.key), now, |key| {
                if key.len() > MAX_KEY_BYTES {
                    return None;
                }
                let hash = self.hash(&key);
                let present = call.opts.uses_l1() && self.cache.is_present(hash, &none, now);
                if hash == call.hash || present {
                    return None;
                }
                Some((hash, move || HotKey::of(&key, call.opts)))
            });
    }

    /// This value cache without its cache (what a worker holds, so that it
    /// does not keep the cache alive) nor its background parts (lookups
    /// made by the worker are neither counted as hot nor prefetched from).
    fn detached(&self) -> Face<T> {
        self.face.clone()
    }

    /// The stale value a `refresh_hot` round refreshes for `hash`: one L1
    /// holds for this cache, stored at least `every` ago (not one a miss
    /// or a refresh just stored).
    fn hot_prior(&self, hash: KeyHash, opts: &ValueOptions, every: Duration) -> Option<Prior> {
        if !opts.uses_l1() {
            return None;
        }
        let now = self.cache.now();
        let none = HeaderMap::new();
        let L1Lookup::Found(entry) = self.shared().tiers.lookup_l1(hash, &none, now) else {
            return None;
        };
        let old_enough = now.saturating_sub(entry.timeline.stored_at) >= every.as_millis() as u64;
        (old_enough && self.typed(&entry).is_ok()).then_some(Prior {
            entry,
            tier: Tier::L1,
        })
    }

    /// Starts the `refresh_hot` refresh of `item`, holding `permit`: one
    /// per key (none when a fetch of it is in flight). Returns whether it
    /// started.
    fn refresh_hot_key<E: Send + 'static>(
        &self,
        hash: KeyHash,
        item: &HotKey,
        permit: OwnedSemaphorePermit,
        every: Duration,
        fetch: impl FnOnce() -> super::BoxFetch<T, E>,
    ) -> bool {
        let Some(prior) = self.hot_prior(hash, &item.opts, every) else {
            return false;
        };
        let Some(guard) = self.shared().inflight.try_lead(hash) else {
            return false; // A fetch of this key is in flight.
        };
        let call = Call {
            key: &item.key,
            hash,
            opts: &item.opts,
            report: Report::none(0),
        };
        self.launch_refresh(&call, prior, fetch(), guard, permit);
        true
    }

    /// Warms `item` through this cache within `timeout`: stored when its
    /// fetch ran and succeeded, present when a tier (or another call's
    /// fetch) answered, failed otherwise.
    async fn warm<F, Fut, E>(&self, item: &HotKey, timeout: Duration, fetch: F) -> Warmed
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Send + 'static,
    {
        const NOT_CALLED: u8 = 0;
        const FETCHED: u8 = 1;
        let fetched = Arc::new(AtomicU8::new(NOT_CALLED));
        let seen = Arc::clone(&fetched);
        let fetch = move || async move {
            let result = fetch().await;
            seen.store(FETCHED + u8::from(result.is_err()), Ordering::Relaxed);
            result
        };
        let lookup = self.get_or_fetch(&item.key, &item.opts, fetch);
        let found = tokio::time::timeout(timeout, lookup).await;
        match (found, fetched.load(Ordering::Relaxed)) {
            (Ok(Ok(_)), FETCHED) => Warmed::Stored,
            (Ok(Ok(_)), NOT_CALLED) => Warmed::Present,
            _ => Warmed::Failed,
        }
    }
}

impl<T> Face<T> {
    /// The value cache on `cache`, without background parts.
    fn on(&self, cache: Cache) -> ValueCache<T> {
        ValueCache {
            cache,
            face: self.clone(),
            hot: None,
        }
    }
}

/// How a value cache's worker reaches the origin: its fetch function.
struct ValueWork<T, F> {
    values: Face<T>,
    fetch: Arc<F>,
}

impl<T, F, Fut, E> KeyWork<Arc<HotKey>> for ValueWork<T, F>
where
    T: Send + Sync + 'static,
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    E: Send + 'static,
{
    fn refresh(
        &self,
        cache: &Cache,
        key: KeyHash,
        item: &Arc<HotKey>,
        permit: OwnedSemaphorePermit,
        every: Duration,
    ) -> bool {
        let values = self.values.on(cache.clone());
        let fetch = || {
            let (fetch, key) = (Arc::clone(&self.fetch), String::from(&*item.key));
            boxed(move || fetch(key))
        };
        values.refresh_hot_key(key, item, permit, every, fetch)
    }

    fn warm(&self, cache: Cache, item: Arc<HotKey>, timeout: Duration) -> WarmFuture {
        let values = self.values.on(cache);
        let (fetch, key) = (Arc::clone(&self.fetch), String::from(&*item.key));
        Box::pin(async move { values.warm(&item, timeout, move || fetch(key)).await })
    }
}
