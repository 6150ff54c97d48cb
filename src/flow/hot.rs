//! Background work on keys nobody is asking for right now: the hottest
//! keys refreshed on a schedule (`refresh_hot`) and the keys a read names
//! warmed before they are asked for (`prefetch`).
//!
//! The engine keeps the parts (`hot::HotKeys`, `hot::PrefetchQueue`), notes
//! reads in [`Cache::decide`](crate::Cache) ([`Cache::after_read`]), and
//! runs one worker per cache ([`Cache::start_background`]). How one key reaches the
//! origin is the adapter's: a [`KeyWork`] (the tower service's is in
//! `warm::background`), so other faces can plug theirs in.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::header::{
    HeaderMap, CACHE_CONTROL, CONTENT_LENGTH, EXPECT, HOST, IF_MATCH, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, PRAGMA, RANGE,
};
use http::request::Parts;
use http::{Request, Uri};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::Upstream;
use crate::cache::{get_view, Cache, Fetch, Shared};
use crate::hot::{Claim, HotKeys, PrefetchQueue, Pushed};
use crate::key::{key_uri, KeyConfig, KeyHash, CREDENTIAL_HEADERS};
use crate::policy::{strip_hop_by_hop, RequestDirectives};
use crate::status::Fwd;
use crate::tiers::{L1Lookup, Tier};

/// A function that names the URLs to warm after a read: it sees the
/// request read (hit or miss). Installed with
/// [`CacheBuilder::prefetch`](crate::CacheBuilder::prefetch).
pub type PrefetchFn = Arc<dyn Fn(&Parts) -> Vec<Uri> + Send + Sync>;

/// The most URLs one read may queue; the rest are counted as dropped.
pub(crate) const MAX_PREFETCH_PER_READ: usize = 16;

/// The most request-header bytes (names and values) kept to replay a
/// request; a larger request is neither refreshed by `refresh_hot` nor
/// prefetched with.
pub(crate) const MAX_REPLAY_HEADER_BYTES: usize = 8 * 1024;

/// Request fields that belong to one client's exchange, not to the
/// resource: never replayed.
const NOT_REPLAYED: [http::HeaderName; 10] = [
    RANGE,
    IF_RANGE,
    IF_MATCH,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_UNMODIFIED_SINCE,
    CACHE_CONTROL,
    PRAGMA,
    CONTENT_LENGTH,
    EXPECT,
];

thread_local! {
    /// This thread's hits left before its next sampled one, for prefetch
    /// (HTTP reads and values' alike).
    static PREFETCH_LEFT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// The settings of `refresh_hot` and `prefetch`, as the builder holds them
/// (and a value cache's [`HotOptions`](crate::values::HotOptions), with
/// its own kind of prefetch function `F`).
#[derive(Clone)]
pub(crate) struct HotSettings<F = PrefetchFn> {
    /// 0: no `refresh_hot`.
    pub(crate) top_n: usize,
    pub(crate) every: Duration,
    pub(crate) sample: u32,
    pub(crate) prefetch: Option<F>,
    pub(crate) queue: usize,
    pub(crate) concurrency: usize,
    pub(crate) timeout: Duration,
}

impl<F> fmt::Debug for HotSettings<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotSettings")
            .field("top_n", &self.top_n)
            .field("every", &self.every)
            .field("prefetch", &self.prefetch.is_some())
            .finish_non_exhaustive()
    }
}

/// A request to send again, as kept for a key: its URI and the request
/// fields that select its entry (without the client's conditionals, range
/// and directives, nor its credentials unless keys are partitioned by
/// them).
#[derive(Debug)]
pub(crate) struct Replay {
    uri: Uri,
    headers: HeaderMap,
}

impl Replay {
    /// Whether a request with `headers` may be kept: at most
    /// [`MAX_REPLAY_HEADER_BYTES`] of them.
    fn fits(headers: &HeaderMap) -> bool {
        let size: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        size <= MAX_REPLAY_HEADER_BYTES
    }

    /// `uri` with `headers`, unless they do not [fit](Self::fits).
    fn new(uri: Uri, headers: &HeaderMap, keys: &KeyConfig) -> Option<Self> {
        Self::fits(headers).then(|| Self::made(uri, headers, keys))
    }

    /// `uri` with `headers`, less the fields never replayed and the
    /// credentials `keys` does not partition by.
    fn made(uri: Uri, headers: &HeaderMap, keys: &KeyConfig) -> Self {
        let mut headers = headers.clone();
        strip_hop_by_hop(&mut headers);
        for name in NOT_REPLAYED {
            headers.remove(name);
        }
        if !keys.credentials {
            // One client's credentials are never sent for a key others
            // share; a key header naming one partitions by it.
            for name in CREDENTIAL_HEADERS.iter() {
                if !keys.headers.contains(name) {
                    headers.remove(name);
                }
            }
        }
        Self { uri, headers }
    }

    /// The request read, as it would be sent again.
    fn of(parts: &Parts, keys: &KeyConfig) -> Option<Self> {
        Self::new(key_uri(parts).clone(), &parts.headers, keys)
    }

    /// A `GET` for it.
    pub(crate) fn view(&self) -> Parts {
        get_view(&self.uri, &self.headers)
    }
}

/// Marks a request sent by `prefetch`: its read is neither counted as hot
/// nor prefetched from (no chains of prefetches).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PrefetchRequest;

/// The prefetch part: the function, its queue and bounds.
struct Prefetch<T, F> {
    func: F,
    queue: Arc<PrefetchQueue<T>>,
    concurrency: usize,
    timeout: Duration,
}

/// The background parts of one face of the cache, for keys kept with a
/// payload `T` (what its worker needs to reach the origin again) and a
/// prefetch function `F`: HTTP entries' ([`HotState`], in the engine) or
/// a value cache's.
pub(crate) struct HotParts<T, F> {
    tracker: Option<Arc<HotKeys<T>>>,
    top_n: usize,
    every: Duration,
    /// A hit prefetches one read in this many (per thread); a miss always.
    sample: u32,
    prefetch: Option<Prefetch<T, F>>,
    /// A worker is running (one per set of parts).
    attached: Arc<AtomicBool>,
    /// Dropped with the parts (with the cache): the worker ends.
    alive: tokio::sync::watch::Sender<()>,
}

/// The engine's background parts for HTTP entries, when `refresh_hot` or
/// `prefetch` is set.
pub(crate) type HotState = HotParts<Arc<Replay>, PrefetchFn>;

impl<T: Clone, F> HotParts<T, F> {
    /// The parts `settings` ask for; `None` when neither is set.
    pub(crate) fn new(settings: HotSettings<F>) -> Option<Self> {
        if settings.top_n == 0 && settings.prefetch.is_none() {
            return None;
        }
        let tracker =
            (settings.top_n > 0).then(|| Arc::new(HotKeys::new(settings.top_n, settings.sample)));
        let prefetch = settings.prefetch.map(|func| Prefetch {
            func,
            queue: Arc::new(PrefetchQueue::new(settings.queue, settings.concurrency)),
            concurrency: settings.concurrency,
            timeout: settings.timeout,
        });
        Some(Self {
            tracker,
            top_n: settings.top_n,
            every: settings.every,
            sample: settings.sample,
            prefetch,
            attached: Arc::new(AtomicBool::new(false)),
            alive: tokio::sync::watch::channel(()).0,
        })
    }

    /// Counts a read of `key` for `refresh_hot` (if set); `payload` is
    /// made at most once per key (see `HotKeys::note`).
    #[inline]
    pub(crate) fn note(&self, key: KeyHash, payload: impl FnOnce() -> Option<T>) {
        if let Some(tracker) = &self.tracker {
            tracker.note(key, payload);
        }
    }

    /// The prefetch function and its queue, for a read that found nothing
    /// in L1 (`miss`) or one hit in `hot_key_sample` per thread (other
    /// hits cost a thread-local count), while a worker runs to take from
    /// the queue (nothing is queued otherwise).
    #[inline]
    pub(crate) fn prefetching(&self, miss: bool) -> Option<(&F, &PrefetchQueue<T>)> {
        let p = self.prefetch.as_ref()?;
        let now = self.attached.load(Ordering::Relaxed)
            && (miss || crate::sample::one_in(&PREFETCH_LEFT, self.sample));
        now.then_some((&p.func, &*p.queue))
    }
}

impl Cache {
    /// After the L1 look-up of `key` by `parts` (`miss`: L1 had nothing
    /// for it): the read is counted for `refresh_hot` (one in
    /// `hot_key_sample`), and, while a worker runs, the URLs `prefetch`
    /// names are queued: for a miss, and for one hit in `hot_key_sample`
    /// per thread (other hits cost a thread-local count). Reads made by
    /// prefetching do neither.
    #[inline(never)]
    pub(crate) fn after_read(&self, hot: &HotState, key: KeyHash, parts: &Parts, miss: bool) {
        if parts.extensions.get::<PrefetchRequest>().is_some() {
            return;
        }
        let keys = &self.shared.keys;
        hot.note(key, || Replay::of(parts, keys).map(Arc::new));
        if let Some((func, queue)) = hot.prefetching(miss) {
            self.prefetch_for(func, queue, key, parts);
        }
    }

    /// Queues the URLs `func` names for the read of `key` by `parts` that
    /// are on the read's host and not stored in L1 (nor marked
    /// hit-for-pass), counted; one for another host is dropped. The
    /// request to send is made only for a key the queue takes.
    fn prefetch_for(
        &self,
        func: &PrefetchFn,
        queue: &PrefetchQueue<Arc<Replay>>,
        key: KeyHash,
        parts: &Parts,
    ) {
        let targets = func(parts);
        if targets.is_empty() || !Replay::fits(&parts.headers) {
            return;
        }
        let now = self.now();
        let s = &*self.shared;
        self.queue_prefetches(queue, targets, now, |uri| {
            let uri = resolve(key_uri(parts), uri);
            if !same_host(parts, &uri) {
                s.counters.prefetch_dropped.incr();
                return None;
            }
            let target = self.prefetch_key(&uri, &parts.headers)?;
            if target == key || self.is_present(target, &parts.headers, now) {
                return None;
            }
            let replay = move || Arc::new(Replay::made(uri, &parts.headers, &s.keys));
            Some((target, replay))
        });
    }

    /// Queues the first [`MAX_PREFETCH_PER_READ`] of `targets` one read
    /// named, each as the key `wanted` makes of it with the maker of its
    /// payload (`None`: not worth warming), at `now`; the payload is made
    /// only when the queue takes the key. Counts what was queued and what
    /// was dropped (beyond the per-read bound, or the queue full).
    pub(crate) fn queue_prefetches<U, T, M>(
        &self,
        queue: &PrefetchQueue<T>,
        targets: Vec<U>,
        now: u64,
        mut wanted: impl FnMut(U) -> Option<(KeyHash, M)>,
    ) where
        M: FnOnce() -> T,
    {
        let counters = &self.shared.counters;
        let over = targets.len().saturating_sub(MAX_PREFETCH_PER_READ);
        counters.prefetch_dropped.add(over as u64);
        for target in targets.into_iter().take(MAX_PREFETCH_PER_READ) {
            let Some((key, make)) = wanted(target) else {
                continue;
            };
            match queue.push(key, now, make) {
                Pushed::Queued => counters.prefetch_queued.incr(),
                Pushed::Full => counters.prefetch_dropped.incr(),
                Pushed::Known | Pushed::Cooling => {}
            }
        }
    }

    /// The key of a `GET` for `uri` with `headers`, when it is looked up
    /// at all (not a bypass route, a key function that keys it).
    fn prefetch_key(&self, uri: &Uri, headers: &HeaderMap) -> Option<KeyHash> {
        let s = &*self.shared;
        if self
            .route_of(uri.path())
            .is_some_and(|i| s.policy.routes[i].bypass)
        {
            return None;
        }
        if s.keys.custom.is_some() {
            return s.keys.hash(&get_view(uri, headers));
        }
        s.keys.hash_uri(uri, headers, None)
    }

    /// Whether L1 holds something usable for `key` with `headers`, or the
    /// key is marked hit-for-pass (not worth fetching ahead).
    pub(crate) fn is_present(&self, key: KeyHash, headers: &HeaderMap, now: u64) -> bool {
        let s = &*self.shared;
        matches!(s.tiers.lookup_l1(key, headers, now), L1Lookup::Found(_))
            || s.hit_for_pass.get(&key).is_some_and(|until| now < until)
    }

    /// The background refresh of `key` for `refresh_hot`, with the request
    /// `parts`: only for an entry L1 holds for it, stored at least `every`
    /// ago (not one a miss or a refresh just stored), on a route that is
    /// looked up.
    pub(crate) fn hot_refresh_plan(
        &self,
        parts: &Parts,
        key: KeyHash,
        every: Duration,
    ) -> Option<Box<Fetch>> {
        let s = &*self.shared;
        let route = self.route_of(key_uri(parts).path());
        if route.is_some_and(|i| s.policy.routes[i].bypass) {
            return None;
        }
        let now = self.now();
        let L1Lookup::Found(entry) = s.tiers.lookup_l1(key, &parts.headers, now) else {
            return None;
        };
        if now.saturating_sub(entry.timeline.stored_at) < every.as_millis() as u64 {
            return None;
        }
        let plan = Fetch {
            key,
            directives: RequestDirectives::from_headers(&parts.headers),
            route,
            prior: None,
            revalidate: false,
            fwd: Fwd::Stale,
            head: false,
            coalesce: true,
            background: false,
            l2_lookup: false,
            tier: Tier::L1,
            label: entry.label,
        };
        Some(plan.into_refresh(entry, Tier::L1))
    }
}

/// `uri` as a request for it after a read of `base` would name it: a path
/// takes `base`'s scheme and authority.
fn resolve(base: &Uri, uri: Uri) -> Uri {
    if uri.authority().is_some() || base.authority().is_none() {
        return uri;
    }
    let mut parts = uri.clone().into_parts();
    parts.scheme = base.scheme().cloned();
    parts.authority = base.authority().cloned();
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).unwrap_or(uri)
}

/// Whether `uri` (as [`resolve`]d) goes where the read `parts` went: no
/// authority of its own, or the read's (its URI's, else its `Host`), and
/// the read's scheme when both name one.
fn same_host(parts: &Parts, uri: &Uri) -> bool {
    let Some(to) = uri.authority() else {
        return true;
    };
    let base = key_uri(parts);
    if base.scheme().zip(uri.scheme()).is_some_and(|(a, b)| a != b) {
        return false;
    }
    match base.authority() {
        Some(from) => from == to,
        None => parts
            .headers
            .get(HOST)
            .is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(to.as_str().as_bytes())),
    }
}

/// Starts the `refresh_hot` refresh of `key` (kept as `replay`) through
/// `up`, holding `permit`: one per key (none when a refresh or a miss for
/// it is in flight), within `refresh_timeout`, as a stale entry's refresh.
/// Returns whether it started.
pub(crate) fn refresh_replay<B, U>(
    cache: &Cache,
    key: KeyHash,
    replay: &Replay,
    (body, up): (B, U),
    permit: OwnedSemaphorePermit,
    every: Duration,
) -> bool
where
    B: Send + 'static,
    U: Upstream<B> + 'static,
    U::Future: Send,
{
    let parts = replay.view();
    let Some(plan) = cache.hot_refresh_plan(&parts, key, every) else {
        return false;
    };
    let Some(guard) = cache.shared.inflight.try_lead(key) else {
        return false; // A refresh or a miss for this key is in flight.
    };
    let req = Request::from_parts(parts, body);
    let cause = tracing::Span::none();
    super::launch_refresh(cache.clone(), req, up, plan, &cause, guard, permit)
}

/// What warming one key came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Warmed {
    /// Fetched and stored.
    Stored,
    /// Already stored by its turn.
    Present,
    /// Not stored (an error, a timeout, an answer that may not be stored).
    Failed,
}

/// A boxed warming.
pub(crate) type WarmFuture = Pin<Box<dyn Future<Output = Warmed> + Send>>;

/// How the background worker reaches the origin for one key of payload
/// `T`: the adapter's part.
pub(crate) trait KeyWork<T>: Send + Sync + 'static {
    /// Starts a background refresh of `key` (a hot key, kept as `item`),
    /// holding `permit` (one of the rounds' `max_concurrent_refreshes`)
    /// until it ends;
    /// `every`: the schedule's period. Returns whether one started.
    fn refresh(
        &self,
        cache: &Cache,
        key: KeyHash,
        item: &T,
        permit: OwnedSemaphorePermit,
        every: Duration,
    ) -> bool;

    /// Warms `item` through the cache within `timeout`.
    fn warm(&self, cache: Cache, item: T, timeout: Duration) -> WarmFuture;
}

/// Why a background worker was not started.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{service_fn, Layer};
/// use tower_tiered_cache::{Cache, CacheLayer};
///
/// let cache = Cache::builder().build().unwrap();
/// let origin = service_fn(|_req: Request<String>| async {
///     Ok::<_, Infallible>(Response::new(String::from("hi")))
/// });
/// let svc = CacheLayer::new(cache).layer(origin);
/// // Neither `refresh_hot` nor `prefetch` is set: nothing to run.
/// let err = svc.spawn_background::<String, _>().unwrap_err();
/// assert!(err.is_not_configured());
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackgroundError(Refused);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    NotConfigured,
    NoRuntime,
    AlreadyRunning,
}

impl BackgroundError {
    /// True when the cache has neither `refresh_hot` nor `prefetch` set.
    pub fn is_not_configured(&self) -> bool {
        self.0 == Refused::NotConfigured
    }

    /// True when called outside a tokio runtime.
    pub fn is_no_runtime(&self) -> bool {
        self.0 == Refused::NoRuntime
    }

    /// True when a worker already runs for this cache (one per cache).
    pub fn is_already_running(&self) -> bool {
        self.0 == Refused::AlreadyRunning
    }
}

impl fmt::Display for BackgroundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Refused::NotConfigured => "neither refresh_hot nor prefetch is set on this cache",
            Refused::NoRuntime => "background work needs a tokio runtime",
            Refused::AlreadyRunning => "a background worker already runs for this cache",
        })
    }
}

impl std::error::Error for BackgroundError {}

/// A running worker, as its adapter's handle holds it.
pub(crate) struct Runner {
    pub(crate) task: tokio::task::JoinHandle<()>,
    /// Starts a `refresh_hot` round now.
    pub(crate) tick: Arc<Notify>,
    /// Rounds finished.
    pub(crate) rounds: Arc<AtomicU64>,
}

impl Cache {
    /// Starts this cache's background worker for HTTP entries, reaching
    /// the origin through `work`.
    pub(crate) fn start_background<W: KeyWork<Arc<Replay>>>(
        &self,
        work: W,
    ) -> Result<Runner, BackgroundError> {
        self.start_worker(self.shared.hot.as_deref(), work)
    }

    /// Starts the background worker of `hot` (`None`: not configured), on
    /// this cache, reaching the origin through `work`: one worker per set
    /// of parts, ending when the parts are dropped.
    pub(crate) fn start_worker<T, F, W>(
        &self,
        hot: Option<&HotParts<T, F>>,
        work: W,
    ) -> Result<Runner, BackgroundError>
    where
        T: Clone + Send + Sync + 'static,
        W: KeyWork<T>,
    {
        let s = &*self.shared;
        let hot = hot.ok_or(BackgroundError(Refused::NotConfigured))?;
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| BackgroundError(Refused::NoRuntime))?;
        if hot.attached.swap(true, Ordering::AcqRel) {
            return Err(BackgroundError(Refused::AlreadyRunning));
        }
        let rounds = hot.tracker.as_ref().map(|tracker| Rounds {
            tracker: Arc::clone(tracker),
            top_n: hot.top_n,
            every: hot.every,
            permits: Arc::clone(&s.round_refreshes),
        });
        let prefetching = hot.prefetch.as_ref().map(|p| Prefetching {
            queue: Arc::clone(&p.queue),
            permits: Arc::new(Semaphore::new(p.concurrency)),
            timeout: p.timeout,
        });
        let ctx = Ctx {
            weak: Arc::downgrade(&self.shared),
            work: Arc::new(work),
            alive: hot.alive.subscribe(),
            tick: Arc::new(Notify::new()),
            rounds: Arc::new(AtomicU64::new(0)),
        };
        let (tick, done) = (Arc::clone(&ctx.tick), Arc::clone(&ctx.rounds));
        let detach = Detach(Arc::clone(&hot.attached));
        let task = handle.spawn(run_worker(ctx, rounds, prefetching, detach));
        Ok(Runner {
            task,
            tick,
            rounds: done,
        })
    }
}

/// What a worker shares between its loops. It holds the cache weakly: a
/// dropped cache ends it (`alive` closes).
struct Ctx<W> {
    weak: Weak<Shared>,
    work: Arc<W>,
    alive: tokio::sync::watch::Receiver<()>,
    tick: Arc<Notify>,
    rounds: Arc<AtomicU64>,
}

/// `refresh_hot`'s part of a worker.
struct Rounds<T> {
    tracker: Arc<HotKeys<T>>,
    top_n: usize,
    every: Duration,
    /// The rounds' own `max_concurrent_refreshes`, shared by every
    /// worker of the cache (a round waiting for one never holds up a
    /// stale refresh on the request path).
    permits: Arc<Semaphore>,
}

/// `prefetch`'s part of a worker.
struct Prefetching<T> {
    queue: Arc<PrefetchQueue<T>>,
    permits: Arc<Semaphore>,
    timeout: Duration,
}

/// Lets the parts start a worker again once this one ends.
struct Detach(Arc<AtomicBool>);

impl Drop for Detach {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A worker: `refresh_hot` rounds and prefetching side by side, until the
/// cache is dropped (or the task aborted).
async fn run_worker<T, W>(
    ctx: Ctx<W>,
    rounds: Option<Rounds<T>>,
    prefetching: Option<Prefetching<T>>,
    _detach: Detach,
) where
    T: Clone + Send + Sync + 'static,
    W: KeyWork<T>,
{
    tokio::join!(rounds_loop(&ctx, rounds), prefetch_loop(&ctx, prefetching));
}

/// A round every `every`, or when told to ([`Runner::tick`]).
async fn rounds_loop<T, W>(ctx: &Ctx<W>, rounds: Option<Rounds<T>>)
where
    T: Clone + Send + Sync + 'static,
    W: KeyWork<T>,
{
    let Some(r) = rounds else { return };
    let mut alive = ctx.alive.clone();
    let start = later(r.every);
    let mut every = tokio::time::interval_at(start, r.every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = alive.changed() => return,
            _ = every.tick() => {}
            () = ctx.tick.notified() => {}
        }
        tokio::select! {
            _ = alive.changed() => return,
            () = round(ctx, &r) => {}
        }
        ctx.rounds.fetch_add(1, Ordering::Relaxed);
    }
}

/// `after` from now, or as far as tokio's clock reaches (the builder
/// bounds `every`; this never panics whatever it is).
fn later(after: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// One round: the `top_n` hottest keys refreshed, hottest first, each
/// once one of the rounds' refresh permits is free; the round gives up on
/// the rest after `every` (the next round takes over).
async fn round<T, W>(ctx: &Ctx<W>, r: &Rounds<T>)
where
    T: Clone + Send + Sync + 'static,
    W: KeyWork<T>,
{
    let hottest = r.tracker.top(r.top_n);
    let deadline = later(r.every);
    for (key, item) in hottest {
        let permit = Arc::clone(&r.permits).acquire_owned();
        let Ok(Ok(permit)) = tokio::time::timeout_at(deadline, permit).await else {
            return;
        };
        let Some(shared) = ctx.weak.upgrade() else {
            return;
        };
        let cache = Cache { shared };
        if ctx.work.refresh(&cache, key, &item, permit, r.every) {
            cache.shared.counters.hot_refreshes.incr();
        }
    }
}

/// Takes queued keys as warming permits free up, each warmed in a task of
/// its own.
async fn prefetch_loop<T, W>(ctx: &Ctx<W>, prefetching: Option<Prefetching<T>>)
where
    T: Clone + Send + Sync + 'static,
    W: KeyWork<T>,
{
    let Some(p) = prefetching else { return };
    let mut alive = ctx.alive.clone();
    loop {
        let permit = tokio::select! {
            _ = alive.changed() => return,
            permit = Arc::clone(&p.permits).acquire_owned() => permit,
        };
        let Ok(permit) = permit else { return };
        let claim = tokio::select! {
            _ = alive.changed() => return,
            claim = p.queue.next() => claim,
        };
        let Some(shared) = ctx.weak.upgrade() else {
            return;
        };
        let work = Arc::clone(&ctx.work);
        tokio::spawn(warm_claimed(
            Cache { shared },
            claim,
            permit,
            work,
            p.timeout,
        ));
    }
}

/// Warms one queued key and counts what came of it; a failed key is left
/// alone for `timeout` before it may be queued again.
async fn warm_claimed<T, W>(
    cache: Cache,
    mut claim: Claim<T>,
    _permit: OwnedSemaphorePermit,
    work: Arc<W>,
    timeout: Duration,
) where
    T: Send + 'static,
    W: KeyWork<T>,
{
    let Some(item) = claim.take() else { return };
    let warmed = work.warm(cache.clone(), item, timeout).await;
    let c = &cache.shared.counters;
    match warmed {
        Warmed::Stored => c.prefetch_warmed.incr(),
        Warmed::Present => c.prefetch_skipped.incr(),
        Warmed::Failed => {
            c.prefetch_failed.incr();
            claim.failed(cache.now().saturating_add(timeout.as_millis() as u64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_takes_the_reads_scheme_and_authority() {
        let base: Uri = "https://api.example/v1/items/1".parse().unwrap();
        let to = |u: &str| resolve(&base, u.parse().unwrap()).to_string();
        assert_eq!(to("/v1/items/2?x=1"), "https://api.example/v1/items/2?x=1");
        assert_eq!(to("http://other.example/a"), "http://other.example/a");
        let bare: Uri = "/v1/items/1".parse().unwrap();
        assert_eq!(
            resolve(&bare, "/v1/x".parse().unwrap()).to_string(),
            "/v1/x"
        );
    }

    fn header_map(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        fields
            .iter()
            .map(|&(n, v)| (http::HeaderName::from_static(n), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn a_replay_keeps_the_resource_fields_and_refuses_huge_requests() {
        let mut h = header_map(&[
            ("accept", "text/html"),
            ("if-none-match", "\"a\""),
            ("range", "bytes=0-1"),
            ("cache-control", "no-store"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
        ]);
        let keys = KeyConfig::default();
        let r = Replay::new("http://a.example/".parse().unwrap(), &h, &keys).unwrap();
        let names: Vec<&str> = r.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["accept"]);
        let big = "x".repeat(MAX_REPLAY_HEADER_BYTES);
        h.insert("x-big", big.parse().unwrap());
        assert!(Replay::new("http://a.example/".parse().unwrap(), &h, &keys).is_none());
    }

    #[test]
    fn credentials_are_replayed_only_when_keys_are_partitioned_by_them() {
        let h = header_map(&[
            ("accept", "text/html"),
            ("authorization", "Bearer one-client"),
            ("proxy-authorization", "Basic b25l"),
            ("cookie", "session=one-client"),
        ]);
        let names = |keys: &KeyConfig| {
            let r = Replay::made("http://a.example/".parse().unwrap(), &h, keys);
            let mut n: Vec<String> = r.headers.keys().map(|n| n.to_string()).collect();
            n.sort();
            n
        };
        assert_eq!(names(&KeyConfig::default()), ["accept"]);
        let by_cookie = KeyConfig {
            headers: vec![http::header::COOKIE],
            ..KeyConfig::default()
        };
        assert_eq!(names(&by_cookie), ["accept", "cookie"]);
        let partitioned = KeyConfig {
            credentials: true,
            ..KeyConfig::default()
        };
        assert_eq!(
            names(&partitioned),
            ["accept", "authorization", "cookie", "proxy-authorization"]
        );
    }

    #[test]
    fn a_prefetch_goes_to_the_reads_host_only() {
        let read = |uri: &str, host: Option<&str>| {
            let mut req = Request::get(uri);
            if let Some(h) = host {
                req = req.header("host", h);
            }
            req.body(()).unwrap().into_parts().0
        };
        let abs = read("https://api.example/v1/a", None);
        let origin_form = read("/v1/a", Some("API.example"));
        let bare = read("/v1/a", None);
        let to =
            |parts: &Parts, u: &str| same_host(parts, &resolve(key_uri(parts), u.parse().unwrap()));
        assert!(to(&abs, "/v1/b"));
        assert!(to(&abs, "https://API.example/v1/b"));
        assert!(!to(&abs, "https://other.example/v1/b"));
        assert!(!to(&abs, "http://api.example/v1/b"), "another scheme");
        assert!(!to(&abs, "https://api.example:8443/v1/b"), "another port");
        assert!(to(&origin_form, "/v1/b"));
        assert!(to(&origin_form, "http://api.example/v1/b"));
        assert!(!to(&origin_form, "http://other.example/v1/b"));
        assert!(!to(&bare, "http://api.example/v1/b"), "no host to match");
    }
}
