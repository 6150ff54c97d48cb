//! An enrichment pipeline: records name IDs, and each ID's metadata comes
//! from a slow third-party API that sometimes fails. The metadata is
//! cached with a [`ValueCache`], in L1 and, when Redis is there, in L2.
//!
//! ```text
//! cargo run --release --example values                  # L1 only
//! cargo run --release --features redis --example values # L1 + L2
//! ```
//!
//! With the `redis` feature and `redis-server` on `PATH` the example starts
//! its own server on a free loopback port (the test suite's helper; never
//! the machine's Redis on 6379); otherwise it runs on L1 only and says so.
//! The API is simulated in-process: every call takes [`API_LATENCY`], the
//! first call for one ID in ten fails, and calls are counted. Minutes pass
//! on a [`ManualClock`], so the run takes a few seconds.
//!
//! The phases, one row each in the table it prints:
//!
//! 1. enrichment: [`LOOKUPS`] lookups of [`IDS`] IDs (most of them of a
//!    few hot IDs), [`CONCURRENCY`] at a time;
//! 2. stampede: [`STAMPEDE`] concurrent lookups of one cold ID: one call;
//! 3. bulk: one `get_many_or_fetch` of IDs some of which are cached: one
//!    call of the bulk endpoint, with only the missing IDs;
//! 4. second instance (with Redis): another cache on the same Redis reads
//!    the hot IDs from L2 without calling the API;
//! 5. soft TTL passed: stale values answered at once, one background
//!    refresh per ID;
//! 6. API outage: past the hard TTL, with the API down, the stale values
//!    stand in for it (fail-safe).
//!
//! The example checks what it shows (one call for the stampede, only the
//! missing IDs in the bulk call, no error for a cached ID during the
//! outage, ...) and exits with status 1 when a check fails.
//! `tests/values_example.rs` runs it too.

#[cfg(feature = "redis")]
#[path = "../tests/support/redis.rs"]
pub(crate) mod redis_support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tower_tiered_cache::values::ValueOptions;
use tower_tiered_cache::{Cache, CacheBuilder, ManualClock, Stats, ValueCache};

/// How long one API call takes.
pub(crate) const API_LATENCY: Duration = Duration::from_millis(5);
/// IDs in the enrichment stream.
pub(crate) const IDS: u64 = 200;
/// The hot IDs (`0..HOT`) that most records name.
pub(crate) const HOT: u64 = 20;
/// Lookups in the enrichment phase.
pub(crate) const LOOKUPS: u64 = 2_000;
/// Lookups running at once.
pub(crate) const CONCURRENCY: usize = 16;
/// Concurrent lookups of one cold ID.
pub(crate) const STAMPEDE: usize = 100;
/// Lookups in the outage phase.
pub(crate) const OUTAGE_LOOKUPS: u64 = 500;
/// Soft TTL: fresh for this long.
pub(crate) const TTL: Duration = Duration::from_secs(60);
/// Hard TTL: answered stale (and refreshed) until then.
pub(crate) const HARD_TTL: Duration = Duration::from_secs(300);
/// Fail-safe window past the hard TTL.
pub(crate) const FAIL_SAFE: Duration = Duration::from_secs(3600);
/// The bound on every wait for background work.
const DEADLINE: Duration = Duration::from_secs(10);

/// What the API knows about an ID.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Metadata {
    /// The ID.
    pub(crate) id: u64,
    /// Its title.
    pub(crate) title: String,
    /// Its categories.
    pub(crate) tags: Vec<String>,
}

impl Metadata {
    fn of(id: u64) -> Self {
        Self {
            id,
            title: format!("Item {id}"),
            tags: vec![format!("shelf:{}", id % 7), "catalogue".to_owned()],
        }
    }
}

/// An API call that failed.
#[derive(Debug)]
pub(crate) struct ApiError(&'static str);

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "metadata API: {}", self.0)
    }
}

impl std::error::Error for ApiError {}

/// The simulated third-party API: slow, failing the first call for one
/// ID in ten (decided by the ID, so runs repeat), down when told.
#[derive(Default)]
pub(crate) struct Api {
    calls: AtomicU64,
    ids_fetched: AtomicU64,
    bulk_calls: AtomicU64,
    attempts: Mutex<HashMap<u64, u32>>,
    bulk_asked: Mutex<Vec<Vec<String>>>,
    down: AtomicBool,
}

/// A 64-bit mix of `x` (splitmix64): the example's only randomness.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether the first call for `id` fails (one ID in ten).
fn flaky(id: u64) -> bool {
    mix(id).is_multiple_of(10)
}

impl Api {
    /// One ID's metadata.
    pub(crate) async fn fetch(&self, id: u64) -> Result<Metadata, ApiError> {
        tokio::time::sleep(API_LATENCY).await;
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.ids_fetched.fetch_add(1, Ordering::SeqCst);
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let n = attempts.entry(id).or_default();
            *n += 1;
            *n
        };
        if self.down.load(Ordering::SeqCst) {
            return Err(ApiError("503 Service Unavailable"));
        }
        if attempt == 1 && flaky(id) {
            return Err(ApiError("502 Bad Gateway"));
        }
        Ok(Metadata::of(id))
    }

    /// The bulk endpoint: the metadata of every ID in `ids`.
    pub(crate) async fn fetch_many(
        &self,
        ids: Vec<String>,
    ) -> Result<Vec<(String, Metadata)>, ApiError> {
        tokio::time::sleep(API_LATENCY).await;
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.bulk_calls.fetch_add(1, Ordering::SeqCst);
        self.ids_fetched
            .fetch_add(ids.len() as u64, Ordering::SeqCst);
        self.bulk_asked.lock().unwrap().push(ids.clone());
        if self.down.load(Ordering::SeqCst) {
            return Err(ApiError("503 Service Unavailable"));
        }
        let found = ids.into_iter().filter_map(|k| {
            let id = k.parse().ok()?;
            Some((k, Metadata::of(id)))
        });
        Ok(found.collect())
    }

    fn ids_fetched(&self) -> u64 {
        self.ids_fetched.load(Ordering::SeqCst)
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

/// What one phase did.
#[derive(Debug, Clone, Default)]
pub(crate) struct Phase {
    /// The phase's name.
    pub(crate) name: &'static str,
    /// Values asked for.
    pub(crate) lookups: u64,
    /// Calls made to the API (one bulk call counts once).
    pub(crate) api_calls: u64,
    /// IDs asked of the API.
    pub(crate) ids_fetched: u64,
    /// Lookups answered fresh from a tier.
    pub(crate) hits: u64,
    /// Lookups that waited for another lookup's API call (coalesced).
    pub(crate) coalesced: u64,
    /// Lookups answered with a stale value.
    pub(crate) stale: u64,
    /// Of `stale`: answered because the API failed (fail-safe).
    pub(crate) fail_safe: u64,
    /// Lookups that returned an error.
    pub(crate) errors: u64,
}

impl Phase {
    /// Fresh hits over lookups.
    pub(crate) fn hit_ratio(&self) -> f64 {
        self.hits as f64 / self.lookups.max(1) as f64
    }

    /// Lookups the API did not have to answer.
    pub(crate) fn fetches_saved(&self) -> u64 {
        self.lookups.saturating_sub(self.ids_fetched)
    }
}

/// What the run did, and which of its checks failed.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// The tiers used, in words.
    pub(crate) tiers: String,
    /// One row per phase.
    pub(crate) phases: Vec<Phase>,
    /// The checks that failed (empty: all held).
    pub(crate) failures: Vec<String>,
}

impl Report {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(what());
        }
    }
}

/// The pipeline under test: one value cache, its API, the IDs it holds.
struct Pipeline {
    cache: Cache,
    meta: ValueCache<Metadata>,
    api: Arc<Api>,
    opts: ValueOptions,
    /// IDs a lookup got a value for (so they are stored).
    cached: Mutex<HashSet<u64>>,
}

/// The outcome of one phase's lookups: answered, or an error.
#[derive(Default)]
struct Tally {
    lookups: u64,
    errors: u64,
    /// IDs that got an error.
    failed: BTreeSet<u64>,
}

impl Pipeline {
    fn new(cache: Cache, api: Arc<Api>) -> Self {
        let meta = cache.values::<Metadata>("metadata").expect("a valid name");
        let opts = ValueOptions::new()
            .ttl(TTL)
            .hard_ttl(HARD_TTL)
            .fail_safe(FAIL_SAFE, 3)
            .fetch_timeout(Duration::from_secs(2));
        Self {
            cache,
            meta,
            api,
            opts,
            cached: Mutex::default(),
        }
    }

    /// One record's enrichment: the metadata of `id`, cached.
    async fn lookup(&self, id: u64) -> bool {
        let api = Arc::clone(&self.api);
        let fetch = move || async move { api.fetch(id).await };
        match self
            .meta
            .get_or_fetch(&id.to_string(), &self.opts, fetch)
            .await
        {
            Ok(m) if m.id == id => {
                self.cached.lock().unwrap().insert(id);
                true
            }
            _ => false,
        }
    }

    /// Looks `ids` up, `concurrency` at a time.
    async fn run(self: &Arc<Self>, ids: Vec<u64>, concurrency: usize) -> Tally {
        let ids = Arc::new(ids);
        let mut workers = JoinSet::new();
        for w in 0..concurrency {
            let (me, ids) = (Arc::clone(self), Arc::clone(&ids));
            workers.spawn(async move {
                let mut failed = Vec::new();
                for i in (w..ids.len()).step_by(concurrency) {
                    if !me.lookup(ids[i]).await {
                        failed.push(ids[i]);
                    }
                }
                failed
            });
        }
        let mut tally = Tally {
            lookups: ids.len() as u64,
            ..Tally::default()
        };
        while let Some(failed) = workers.join_next().await {
            let failed = failed.expect("a worker panicked");
            tally.errors += failed.len() as u64;
            tally.failed.extend(failed);
        }
        tally
    }

    fn is_cached(&self, id: u64) -> bool {
        self.cached.lock().unwrap().contains(&id)
    }

    /// Waits (at most [`DEADLINE`]) until `f` holds of the cache's stats.
    async fn until(&self, f: impl Fn(&Stats) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !f(&self.cache.stats()) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }
}

/// The IDs of the enrichment stream: 80 % of the [`HOT`] IDs, the rest
/// spread over all [`IDS`].
fn stream(n: u64, seed: u64) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let r = mix(seed ^ i);
            if r % 10 < 8 {
                (r >> 8) % HOT
            } else {
                (r >> 8) % IDS
            }
        })
        .collect()
}

/// Measures one phase: the API's and the cache's counts around `body`.
struct Meter {
    stats: Stats,
    calls: u64,
    ids: u64,
}

impl Meter {
    fn start(cache: &Cache, api: &Api) -> Self {
        Self {
            stats: cache.stats(),
            calls: api.calls(),
            ids: api.ids_fetched(),
        }
    }

    fn phase(self, name: &'static str, cache: &Cache, api: &Api, tally: &Tally) -> Phase {
        let now = cache.stats();
        Phase {
            name,
            lookups: tally.lookups,
            api_calls: api.calls() - self.calls,
            ids_fetched: api.ids_fetched() - self.ids,
            hits: now.hits - self.stats.hits,
            coalesced: now.coalesced - self.stats.coalesced,
            stale: now.stale - self.stats.stale,
            fail_safe: now.stale_if_error - self.stats.stale_if_error,
            errors: tally.errors,
        }
    }
}

/// Runs every phase on a cache built from `builder` (which has its
/// tiers; the clock is the run's); `second` builds another instance on
/// the same L2, if there is one.
pub(crate) async fn run(
    builder: CacheBuilder,
    second: Option<CacheBuilder>,
    tiers: String,
) -> Report {
    let clock = ManualClock::starting_now();
    let cache = builder.clock(clock.clone()).build().expect("a valid cache");
    let api = Arc::new(Api::default());
    let p = Arc::new(Pipeline::new(cache, Arc::clone(&api)));
    let mut report = Report {
        tiers,
        ..Report::default()
    };
    enrichment(&p, &mut report).await;
    stampede(&p, &mut report).await;
    bulk(&p, &mut report).await;
    if let Some(second) = second {
        second_instance(&p, second.clock(clock.clone()), &mut report).await;
    }
    soft_ttl_passed(&p, &clock, &mut report).await;
    outage(&p, &clock, &mut report).await;
    report
}

/// Phase 1: the stream, most of it answered from the cache.
async fn enrichment(p: &Arc<Pipeline>, report: &mut Report) {
    let ids = stream(LOOKUPS, 1);
    let distinct = ids.iter().collect::<HashSet<_>>().len() as u64;
    let meter = Meter::start(&p.cache, &p.api);
    let tally = p.run(ids, CONCURRENCY).await;
    let phase = meter.phase("enrichment", &p.cache, &p.api, &tally);
    // Each ID is fetched once, and once more when its first call failed.
    report.check(phase.ids_fetched <= 2 * distinct, || {
        format!(
            "enrichment: {} API calls for {distinct} IDs",
            phase.ids_fetched
        )
    });
    report.check(tally.failed.iter().all(|id| flaky(*id)), || {
        format!(
            "enrichment: errors for IDs the API answers: {:?}",
            tally.failed
        )
    });
    report.phases.push(phase);
}

/// Phase 2: many concurrent lookups of one cold ID make one API call.
async fn stampede(p: &Arc<Pipeline>, report: &mut Report) {
    let id = (10_000..)
        .find(|id| !flaky(*id))
        .expect("an ID that answers");
    let meter = Meter::start(&p.cache, &p.api);
    let tally = p.run(vec![id; STAMPEDE], STAMPEDE).await;
    let phase = meter.phase("stampede (1 cold ID)", &p.cache, &p.api, &tally);
    report.check(phase.api_calls == 1 && tally.errors == 0, || {
        format!(
            "stampede: {} API calls, {} errors for {STAMPEDE} concurrent lookups",
            phase.api_calls, tally.errors
        )
    });
    report.phases.push(phase);
}

/// Phase 3: one bulk lookup asks the bulk endpoint for the missing IDs
/// only, in one call.
async fn bulk(p: &Arc<Pipeline>, report: &mut Report) {
    let ids: Vec<u64> = (0..30).chain(20_000..20_010).collect();
    let missing: Vec<String> = ids
        .iter()
        .filter(|id| !p.is_cached(**id))
        .map(u64::to_string)
        .collect();
    let keys: Vec<String> = ids.iter().map(u64::to_string).collect();
    let meter = Meter::start(&p.cache, &p.api);
    let api = Arc::clone(&p.api);
    let got = p
        .meta
        .get_many_or_fetch(&keys, &p.opts, move |ids| async move {
            api.fetch_many(ids).await
        })
        .await;
    let answered = match &got {
        Ok(values) => ids
            .iter()
            .zip(values)
            .filter(|(id, v)| v.as_ref().is_some_and(|m| m.id == **id))
            .count() as u64,
        Err(_) => 0,
    };
    let tally = Tally {
        lookups: ids.len() as u64,
        errors: ids.len() as u64 - answered,
        ..Tally::default()
    };
    let phase = meter.phase("bulk (get_many_or_fetch)", &p.cache, &p.api, &tally);
    let asked = p.api.bulk_asked.lock().unwrap().clone();
    report.check(asked == [missing.clone()], || {
        format!("bulk: the API was asked {asked:?}, the missing IDs are {missing:?}")
    });
    report.check(tally.errors == 0, || format!("bulk: {got:?}"));
    report.phases.push(phase);
}

/// Phase 4 (with L2): another instance (its own L1) reads the hot IDs
/// from Redis, without calling the API.
async fn second_instance(p: &Arc<Pipeline>, builder: CacheBuilder, report: &mut Report) {
    // L2 writes are made off the request path: wait until they landed.
    let landed = p.until(|s| s.l2_writes >= s.stores).await;
    report.check(landed, || "second instance: L2 writes did not land".into());
    let other = builder.build().expect("a valid cache");
    let q = Arc::new(Pipeline::new(other, Arc::clone(&p.api)));
    let ids: Vec<u64> = (0..HOT).filter(|id| p.is_cached(*id)).collect();
    let meter = Meter::start(&q.cache, &q.api);
    let tally = q.run(ids, CONCURRENCY).await;
    let phase = meter.phase("second instance (L2)", &q.cache, &q.api, &tally);
    report.check(phase.api_calls == 0 && phase.hits == tally.lookups, || {
        format!("second instance: {phase:?}")
    });
    report.phases.push(phase);
}

/// Phase 5: past the soft TTL, values are answered stale at once and
/// refreshed in the background, one fetch per ID.
async fn soft_ttl_passed(p: &Arc<Pipeline>, clock: &ManualClock, report: &mut Report) {
    clock.advance(TTL + Duration::from_secs(1));
    let ids: Vec<u64> = stream(200, 2)
        .into_iter()
        .filter(|id| p.is_cached(*id))
        .collect();
    let distinct = ids.iter().collect::<HashSet<_>>().len() as u64;
    let meter = Meter::start(&p.cache, &p.api);
    let before = p.cache.stats();
    let tally = p.run(ids, CONCURRENCY).await;
    let done = p
        .until(|s| {
            let refreshed = s.refresh_ok + s.refresh_failed + s.refresh_skipped;
            refreshed - (before.refresh_ok + before.refresh_failed + before.refresh_skipped)
                >= distinct
        })
        .await;
    let phase = meter.phase("soft TTL passed", &p.cache, &p.api, &tally);
    report.check(done && phase.api_calls <= distinct, || {
        format!("soft TTL: {} refreshes for {distinct} IDs", phase.api_calls)
    });
    report.check(tally.errors == 0 && phase.stale > 0, || {
        format!("soft TTL: {phase:?}")
    });
    report.phases.push(phase);
}

/// Phase 6: past the hard TTL with the API down, every ID with a value
/// is answered (fail-safe); only IDs never fetched fail.
async fn outage(p: &Arc<Pipeline>, clock: &ManualClock, report: &mut Report) {
    clock.advance(HARD_TTL);
    p.api.down.store(true, Ordering::SeqCst);
    let ids = stream(OUTAGE_LOOKUPS, 3);
    let uncached = ids.iter().filter(|id| !p.is_cached(**id)).count() as u64;
    let meter = Meter::start(&p.cache, &p.api);
    let tally = p.run(ids, CONCURRENCY).await;
    let phase = meter.phase("API outage (fail-safe)", &p.cache, &p.api, &tally);
    report.check(tally.errors == uncached && phase.fail_safe > 0, || {
        format!(
            "outage: {} errors, {uncached} lookups of IDs never cached; {phase:?}",
            tally.errors
        )
    });
    p.api.down.store(false, Ordering::SeqCst);
    report.phases.push(phase);
}

/// The table.
fn print(report: &Report) {
    println!("values example: metadata enrichment through ValueCache<Metadata>");
    println!("tiers: {}", report.tiers);
    println!(
        "API: {} ms a call, the first call for 1 ID in 10 fails; TTL {} s, hard TTL {} s, fail-safe {} s",
        API_LATENCY.as_millis(),
        TTL.as_secs(),
        HARD_TTL.as_secs(),
        FAIL_SAFE.as_secs()
    );
    println!();
    println!(
        "{:<26} {:>7} {:>9} {:>11} {:>9} {:>13} {:>9} {:>12} {:>9} {:>6}",
        "phase",
        "lookups",
        "API calls",
        "IDs fetched",
        "hit ratio",
        "fetches saved",
        "coalesced",
        "stale served",
        "fail-safe",
        "errors"
    );
    for ph in &report.phases {
        println!(
            "{:<26} {:>7} {:>9} {:>11} {:>8.1}% {:>13} {:>9} {:>12} {:>9} {:>6}",
            ph.name,
            ph.lookups,
            ph.api_calls,
            ph.ids_fetched,
            ph.hit_ratio() * 100.0,
            ph.fetches_saved(),
            ph.coalesced,
            ph.stale,
            ph.fail_safe,
            ph.errors
        );
    }
    println!();
    if report.failures.is_empty() {
        println!("all checks held");
    }
    for f in &report.failures {
        println!("CHECK FAILED: {f}");
    }
}

/// A Redis of the example's own, when it can have one.
#[cfg(feature = "redis")]
fn redis() -> Result<redis_support::RedisServer, String> {
    if !redis_support::redis_available() {
        return Err("redis-server not on PATH".into());
    }
    redis_support::RedisServer::builder().try_start()
}

/// The builders of the run (the second on the same L2, if any), the
/// Redis they use (kept running until the end) and the tiers in words.
#[cfg(feature = "redis")]
pub(crate) fn setup() -> (
    CacheBuilder,
    Option<CacheBuilder>,
    Option<impl Drop>,
    String,
) {
    match redis() {
        Ok(server) => {
            let on_redis = || {
                Cache::builder()
                    .redis(server.url())
                    .namespace("values-example")
            };
            let tiers = format!("L1 + L2 (its own redis-server, {})", server.url());
            (on_redis(), Some(on_redis()), Some(server), tiers)
        }
        Err(why) => (Cache::builder(), None, None, format!("L1 only ({why})")),
    }
}

/// The builders of the run: L1 only.
#[cfg(not(feature = "redis"))]
pub(crate) fn setup() -> (CacheBuilder, Option<CacheBuilder>, Option<()>, String) {
    let tiers = "L1 only (built without the `redis` feature)".to_owned();
    (Cache::builder(), None, None, tiers)
}

#[tokio::main]
async fn main() {
    let (builder, second, _redis, tiers) = setup();
    let report = run(builder, second, tiers).await;
    print(&report);
    if !report.failures.is_empty() {
        std::process::exit(1);
    }
}
