//! Typed values cached on the same engine as HTTP responses:
//! [`ValueCache`], made by [`Cache::values`].
//!
//! A value cache shares everything with the HTTP layer: L1 (weighted by
//! bytes, the same eviction), L2 (Redis, the same write queue and
//! invalidation channel), the in-flight map, background-refresh bounds,
//! stats, labels (its name is its label), health, spans and metrics. Its
//! values are stored as entries whose body is their serialised form (a
//! [`Codec`]: [`Json`] by default) and which keep the decoded value in L1:
//! an L1 hit clones an `Arc`, nothing is deserialised.
//!
//! - [`get_or_fetch`](ValueCache::get_or_fetch): a fresh value is
//!   returned; a stale one (past its [`ttl`](ValueOptions::ttl), within its
//!   [`hard_ttl`](ValueOptions::hard_ttl)) too, while one background fetch
//!   per key refreshes it; otherwise one fetch per key, however many calls
//!   ask at once (the others wait for it).
//! - Fail-safe: when a fetch fails or times out and a value within its
//!   [`fail_safe`](ValueOptions::fail_safe) window exists, that value is
//!   returned and its life extended by half its TTL (a bounded number of
//!   times), counted as a stale answer and a failed refresh.
//! - [`get_many_or_fetch`](ValueCache::get_many_or_fetch): L1, then one
//!   L2 round trip, then one call of the fetch with only the keys still
//!   missing; each result is stored as its own value.
//!
//! Each lookup counts as one request of the cache's stats (a hit by tier,
//! a stale answer, a miss, a coalesced wait) under the value cache's
//! label.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Version};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::Instrument;

use crate::cache::{Cache, Purge, Shared};
use crate::coalesce::{self, FlightGuard, Join, Outcome};
use crate::entry::{Entry, Timeline, ValueMeta, VALUE_SCOPE};
use crate::key::KeyHash;
use crate::observe::{LogLevel, Outcome as Counted};
use crate::policy::{RequestDirectives, Usability};
use crate::status::{Detail, Fwd, Status};
use crate::tiers::{L1Lookup, Ticket, Tier};
use crate::{BuildError, Invalidated};

mod codec;
mod error;
mod hot;
#[cfg(feature = "redis")]
mod leased;
mod many;
mod options;

#[cfg(feature = "postcard")]
pub use codec::Postcard;
pub use codec::{Codec, CodecError, Json};
pub use error::FetchError;
pub use hot::{HotOptions, ValuePrefetchFn};
use options::Place;
pub use options::{
    ValueOptions, DEFAULT_FAIL_SAFE, DEFAULT_FETCH_TIMEOUT, DEFAULT_HARD_TTL,
    DEFAULT_MAX_EXTENSIONS, DEFAULT_SOFT_FETCH_TIMEOUT, DEFAULT_TTL, MAX_EXTENSIONS, MAX_TTL,
};

/// The longest value cache name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// The longest key a value cache stores, in bytes. A longer key is never
/// cached: [`ValueCache::get_or_fetch`] calls the fetch and returns its
/// result (counted as a pass), [`ValueCache::get`] finds nothing and
/// [`ValueCache::set`] stores nothing.
pub const MAX_KEY_BYTES: usize = 4096;

/// The most keys one [`ValueCache::get_many_or_fetch`] takes; more is
/// [`FetchError::is_too_many_keys`].
pub const MAX_MANY_KEYS: usize = 1000;

/// How many times its serialised size a decoded value is taken to weigh
/// in L1 when its value cache has no weigher
/// ([`ValueCache::with_weigher`]): 8, conservative for JSON, whose worst
/// case among the standard types is near it (`""` and `[]`, 2 bytes and a
/// comma, decode to 24-byte `String`s and `Vec`s). A value read from L2 is
/// untrusted: without a weigher, a type that can hold much more than 8
/// times its encoding (collections of empty strings, vectors or maps in
/// postcard's one-byte form, enums whose small variants sit beside a
/// large one) lets L1 hold more than its byte budget.
pub const DEFAULT_WEIGHT_FACTOR: u64 = crate::entry::VALUE_WEIGHT_FACTOR;

/// A value cache's weigher (see [`ValueCache::with_weigher`]).
type Weigher<T> = Arc<dyn Fn(&T) -> usize + Send + Sync>;

impl Cache {
    /// A cache of values of type `T` named `name`, on this cache's tiers,
    /// written to L2 as JSON ([`Json`]).
    ///
    /// `name` is the values' label (in stats, metrics and spans) and the
    /// namespace of their keys, tags and prefixes: two value caches of
    /// different names never see each other's values, and HTTP
    /// invalidations never touch them. Value caches of the same name (in
    /// this process or another sharing the Redis) share their values.
    ///
    /// A name must be 1 to [`MAX_NAME_BYTES`] bytes without control
    /// characters; anything else is a [`BuildError`] naming the setting
    /// `values`.
    ///
    /// ```
    /// let cache = tower_tiered_cache::Cache::builder().build().unwrap();
    /// let odds = cache.values::<f64>("odds").unwrap();
    /// assert_eq!(odds.name(), "odds");
    /// assert!(cache.values::<f64>("").is_err());
    /// assert!(cache.values::<f64>("bad\nname").is_err());
    /// ```
    pub fn values<T>(&self, name: &str) -> Result<ValueCache<T>, BuildError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        self.values_with_codec(name, Json)
    }

    /// [`values`](Self::values) written with `codec` (say `Postcard`,
    /// feature `postcard`, or a codec of your own).
    pub fn values_with_codec<T, C>(&self, name: &str, codec: C) -> Result<ValueCache<T>, BuildError>
    where
        T: Send + Sync + 'static,
        C: Codec<T>,
    {
        check_name(name)?;
        let label = self.shared.obs.labels.resolve(name);
        Ok(ValueCache {
            cache: self.clone(),
            face: Face {
                name: name.into(),
                label,
                codec_id: codec.id(),
                codec: Arc::new(codec),
                type_tag: type_tag(std::any::type_name::<T>()),
                defaults: Arc::default(),
                weigher: None,
            },
            hot: None,
        })
    }

    /// Removes the value of `key` from the value cache named `name` (in
    /// this process or another sharing the Redis), from every tier, and
    /// tells the other instances, without its type:
    /// [`ValueCache::delete`] for an operator (the admin service) or code
    /// that has no [`ValueCache`] at hand. HTTP entries are never touched.
    /// Returns whether this instance's L1 held it: never for a name
    /// [`values`](Self::values) refuses or a key over [`MAX_KEY_BYTES`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tower_tiered_cache::{Cache, ValueOptions};
    ///
    /// let cache = Cache::builder().build().unwrap();
    /// let odds = cache.values::<f64>("odds").unwrap();
    /// let football = ValueOptions::new().tag("football");
    /// odds.set("match:42", 1.5, &football).await;
    /// odds.set("match:43", 2.5, &football).await;
    /// odds.set("match:44", 3.5, &ValueOptions::new()).await;
    ///
    /// assert!(cache.invalidate_value("odds", "match:42"));
    /// assert!(odds.get("match:42").await.is_none());
    /// assert_eq!(cache.invalidate_value_tag("odds", "football").await.l1, 1);
    /// assert_eq!(cache.invalidate_value_prefix("odds", "match:").await.l1, 1);
    /// assert!(odds.get("match:44").await.is_none());
    /// assert!(!cache.invalidate_value("bad\nname", "match:42"));
    /// # }
    /// ```
    pub fn invalidate_value(&self, name: &str, key: &str) -> bool {
        check_name(name).is_ok()
            && key.len() <= MAX_KEY_BYTES
            && self.invalidate_hash(value_hash(name, key))
    }

    /// Removes every value of the value cache named `name` whose key
    /// starts with `prefix` (`""`: all its values), in every tier (L2 is
    /// scanned, off the request path), and tells the other instances,
    /// without its type: [`ValueCache::invalidate_prefix`]. HTTP entries
    /// and other value caches' values are never touched; a name
    /// [`values`](Self::values) refuses removes nothing. See
    /// [`invalidate_value`](Self::invalidate_value) for an example.
    pub async fn invalidate_value_prefix(&self, name: &str, prefix: &str) -> Invalidated {
        if check_name(name).is_err() {
            return Invalidated::default();
        }
        let prefix = format!("{VALUE_SCOPE}{}", scoped(name, prefix));
        self.purge(Purge::Prefix(&prefix)).await
    }

    /// Removes every value of the value cache named `name` stored with
    /// `tag` ([`ValueOptions::tag`]), in every tier, and tells the other
    /// instances, without its type: [`ValueCache::invalidate_tag`]. HTTP
    /// entries and other value caches' values are never touched; a name
    /// [`values`](Self::values) refuses removes nothing. See
    /// [`invalidate_value`](Self::invalidate_value) for an example.
    pub async fn invalidate_value_tag(&self, name: &str, tag: &str) -> Invalidated {
        if check_name(name).is_err() {
            return Invalidated::default();
        }
        self.purge(Purge::Tag(&scoped(name, tag))).await
    }
}

/// A name for a value cache: non-empty, bounded, no control character
/// (which would break the separation of names and keys).
pub(crate) fn check_name(name: &str) -> Result<(), BuildError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(BuildError::invalid(
            "values",
            "a value cache's name must be 1 to 64 bytes without control characters",
        ));
    }
    Ok(())
}

/// The hash of `key` in the namespace of the value cache `name`: the hash
/// of its readable key (`{name}\x1f{key}`), made without allocating,
/// seeded apart from requests' keys (`key::VALUE_SEED`).
fn value_hash(name: &str, key: &str) -> KeyHash {
    let name = name.as_bytes();
    let len = name.len() + 1 + key.len();
    let mut buf = [0u8; 256];
    if len <= buf.len() {
        buf[..name.len()].copy_from_slice(name);
        buf[name.len()] = VALUE_SCOPE as u8;
        buf[name.len() + 1..len].copy_from_slice(key.as_bytes());
        return KeyHash(xxhash_rust::xxh3::xxh3_128_with_seed(
            &buf[..len],
            crate::key::VALUE_SEED,
        ));
    }
    let mut h = xxhash_rust::xxh3::Xxh3::with_seed(crate::key::VALUE_SEED);
    h.update(name);
    h.update(&[VALUE_SCOPE as u8]);
    h.update(key.as_bytes());
    KeyHash(h.digest128())
}

/// `s` (a key or a tag) in the namespace of the value cache `name`:
/// `{name}\x1f{s}`.
fn scoped(name: &str, s: &str) -> String {
    format!("{name}{VALUE_SCOPE}{s}")
}

/// The tag naming a type: a hash of its name.
fn type_tag(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

/// Typed values of type `T` on a [`Cache`]'s tiers: see the
/// [module docs](self). Made by [`Cache::values`]; cheap to clone (clones
/// share everything).
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::time::Duration;
/// use tower_tiered_cache::values::ValueOptions;
/// use tower_tiered_cache::Cache;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cache = Cache::builder().build().unwrap();
/// let odds = cache.values::<Vec<f64>>("odds").unwrap();
/// let opts = ValueOptions::new()
///     .ttl(Duration::from_secs(5))
///     .hard_ttl(Duration::from_secs(60));
/// let calls = Arc::new(AtomicUsize::new(0));
///
/// for _ in 0..3 {
///     let calls = Arc::clone(&calls);
///     let v = odds
///         .get_or_fetch("match:42", &opts, move || async move {
///             calls.fetch_add(1, Ordering::SeqCst);
///             Ok::<_, std::io::Error>(vec![1.5, 3.2])
///         })
///         .await
///         .unwrap();
///     assert_eq!(*v, [1.5, 3.2]);
/// }
/// assert_eq!(calls.load(Ordering::SeqCst), 1);
/// assert_eq!(cache.stats().hits_l1, 2);
///
/// odds.set("match:43", vec![2.0], &opts).await;
/// assert_eq!(odds.get("match:43").await.as_deref(), Some(&vec![2.0]));
/// assert!(odds.delete("match:43"));
/// assert!(odds.get("match:43").await.is_none());
/// # }
/// ```
pub struct ValueCache<T> {
    cache: Cache,
    face: Face<T>,
    /// Hot-key refresh and prefetch ([`with_hot`](Self::with_hot)).
    hot: Option<Arc<hot::ValueHot>>,
}

/// What a value cache is apart from its cache and its background parts:
/// its name, how its values are written and weighed, its defaults. A
/// background worker keeps this (not the cache, which it must not keep
/// alive).
struct Face<T> {
    name: Arc<str>,
    label: u16,
    codec: Arc<dyn Codec<T>>,
    codec_id: u8,
    type_tag: u64,
    defaults: Arc<ValueOptions>,
    weigher: Option<Weigher<T>>,
}

impl<T> Clone for Face<T> {
    fn clone(&self) -> Self {
        Self {
            name: Arc::clone(&self.name),
            label: self.label,
            codec: Arc::clone(&self.codec),
            codec_id: self.codec_id,
            type_tag: self.type_tag,
            defaults: Arc::clone(&self.defaults),
            weigher: self.weigher.clone(),
        }
    }
}

impl<T> Clone for ValueCache<T> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            face: self.face.clone(),
            hot: self.hot.clone(),
        }
    }
}

impl<T> fmt::Debug for ValueCache<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValueCache")
            .field("name", &self.face.name)
            .field("type", &std::any::type_name::<T>())
            .field("codec", &self.face.codec_id)
            .field("defaults", &self.face.defaults)
            .field("hot", &self.hot.is_some())
            .finish_non_exhaustive()
    }
}

/// How one lookup is observed: when it started (0: not timed) and its
/// span.
struct Report {
    start: u64,
    span: tracing::Span,
}

impl Report {
    /// Not timed, no span (a batch's keys: the batch has the span).
    fn none(start: u64) -> Self {
        Self {
            start,
            span: tracing::Span::none(),
        }
    }
}

/// One lookup: its key, options and report.
struct Call<'a> {
    key: &'a str,
    hash: KeyHash,
    opts: &'a ValueOptions,
    report: Report,
}

/// An entry found for a key that may stand in for a failed fetch, and the
/// tier it was found in.
#[derive(Clone)]
struct Prior {
    entry: Arc<Entry>,
    tier: Tier,
}

/// What an entry found in a tier did for a lookup.
enum Answer<T> {
    /// A fresh value: answered.
    Fresh(Arc<T>, Arc<Entry>),
    /// A stale value within its hard TTL: answered; refresh it.
    Stale(Arc<T>, Prior),
    /// Past its hard TTL: kept for fail-safe.
    Prior(Prior),
    /// Nothing usable.
    Miss,
}

/// Why an entry found for a key cannot answer for this cache.
enum Unusable {
    NotAValue,
    OtherType,
    Codec(CodecError),
}

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unusable::NotAValue => f.write_str("not a typed value"),
            Unusable::OtherType => f.write_str("a value of another codec or type"),
            Unusable::Codec(e) => write!(f, "{e}"),
        }
    }
}

/// The status of a miss answered by a fetch (`prior`: a value past its
/// hard TTL existed), whose value was `stored` or not.
fn miss_status(prior: bool, stored: bool) -> Status {
    let fwd = if prior { Fwd::Stale } else { Fwd::UriMiss };
    if stored {
        Status {
            stored: true,
            ..Status::forward(fwd)
        }
    } else {
        Status::forward(fwd).with_detail(Detail::NotStored("not-stored"))
    }
}

/// Counts a lookup as cancelled if it is dropped before its answer (a
/// caller's timeout, a caller gone); forgotten once it answers.
struct Unfinished<'a> {
    cache: &'a Cache,
    label: u16,
    span: &'a tracing::Span,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        self.cache.cancelled(self.label, self.span);
    }
}

/// Completes a flight this call leads, if it leads one.
fn complete(guard: Option<FlightGuard>, outcome: Outcome) {
    if let Some(g) = guard {
        g.complete(outcome);
    }
}

impl<T: Send + Sync + 'static> ValueCache<T> {
    /// The name: the values' label and namespace.
    pub fn name(&self) -> &str {
        &self.face.name
    }

    /// The options calls start from (a copy to change per call):
    /// [`ValueOptions::new`] unless set with
    /// [`with_options`](Self::with_options).
    pub fn options(&self) -> ValueOptions {
        (*self.face.defaults).clone()
    }

    /// This cache with `options` as its defaults: what
    /// [`get`](Self::get) reads with, and what [`options`](Self::options)
    /// returns.
    pub fn with_options(mut self, options: ValueOptions) -> Self {
        self.face.defaults = Arc::new(options);
        self
    }

    /// This cache with the type tag made from `name` instead of `T`'s Rust
    /// type name (the default): values stored under another tag are
    /// misses. Name the type the same in every service that shares values
    /// whose Rust type names differ (say, after a module moved).
    pub fn with_type_tag(mut self, name: &str) -> Self {
        self.face.type_tag = type_tag(name);
        self
    }

    /// This cache with `weigher` telling how many bytes a decoded value
    /// holds (its size in its `Arc` and what it owns on the heap): what L1
    /// counts for it beside its serialised form. Without one, a value
    /// weighs [`DEFAULT_WEIGHT_FACTOR`] times its serialised size. Values
    /// read from L2 are weighed once decoded, before L1 keeps them.
    ///
    /// ```
    /// let cache = tower_tiered_cache::Cache::builder().build().unwrap();
    /// let names = cache
    ///     .values::<Vec<String>>("names")
    ///     .unwrap()
    ///     .with_weigher(|v| {
    ///         let strings = v.capacity() * std::mem::size_of::<String>();
    ///         24 + strings + v.iter().map(String::capacity).sum::<usize>()
    ///     });
    /// # let _ = names;
    /// ```
    pub fn with_weigher(mut self, weigher: impl Fn(&T) -> usize + Send + Sync + 'static) -> Self {
        self.face.weigher = Some(Arc::new(weigher));
        self
    }

    /// What `value`, whose serialised form is `body_len` bytes, weighs
    /// decoded: the weigher's answer, else [`DEFAULT_WEIGHT_FACTOR`] times
    /// `body_len`.
    fn decoded_weight(&self, value: &T, body_len: usize) -> u64 {
        match &self.face.weigher {
            Some(w) => w(value) as u64,
            None => DEFAULT_WEIGHT_FACTOR.saturating_mul(body_len as u64),
        }
    }

    fn shared(&self) -> &Shared {
        &self.cache.shared
    }

    /// The hash of `key` in this cache's namespace ([`value_hash`]).
    fn hash(&self, key: &str) -> KeyHash {
        value_hash(&self.face.name, key)
    }

    /// The readable key of `key`: what its entry holds ([`scoped`]).
    fn readable(&self, key: &str) -> String {
        scoped(&self.face.name, key)
    }

    /// A lookup of `key`, or `None` when it is not cached: a key over
    /// [`MAX_KEY_BYTES`], or no tokio runtime to time fetches and waits.
    fn call<'a>(&self, key: &'a str, opts: &'a ValueOptions, op: &'static str) -> Option<Call<'a>> {
        if key.len() > MAX_KEY_BYTES || tokio::runtime::Handle::try_current().is_err() {
            return None;
        }
        let obs = &self.shared().obs;
        let report = if obs.cfg.enabled {
            let span = crate::observe::value_span(obs.cfg.span_level, &self.face.name, op);
            // Fresh L1 hits are timed one in `hit_timing_sample`, as
            // requests are; every other lookup is timed (`timed`).
            let start = if span.is_disabled() {
                obs.start_sampled()
            } else {
                obs.start()
            };
            Report { start, span }
        } else {
            Report::none(0)
        };
        Some(Call {
            key,
            hash: self.hash(key),
            opts,
            report,
        })
    }

    /// Reports a lookup of `key` as `outcome`, decided at `now`.
    fn report(&self, key: &str, report: &Report, outcome: &Counted, now: Option<u64>) {
        let obs = &self.shared().obs;
        if !obs.cfg.enabled {
            return;
        }
        let shown = !report.span.is_disabled() || obs.cfg.log == LogLevel::Detailed;
        let key = shown.then_some(key);
        let start = report.start;
        self.cache.finish(
            self.face.label,
            outcome,
            start,
            &report.span,
            None,
            key,
            now,
        );
    }

    /// The value `entry` holds for this cache (its codec and type),
    /// decoded once: kept in the entry, so that later reads of the same
    /// entry clone an `Arc`.
    fn typed(&self, entry: &Entry) -> Result<Arc<T>, Unusable> {
        let meta = entry.value.as_deref().ok_or(Unusable::NotAValue)?;
        if meta.codec != self.face.codec_id || meta.type_tag != self.face.type_tag {
            return Err(Unusable::OtherType);
        }
        if let Some(p) = meta.payload.get() {
            return Arc::clone(p)
                .downcast::<T>()
                .map_err(|_| Unusable::OtherType);
        }
        let value = Arc::new(
            self.face
                .codec
                .decode(&entry.body)
                .map_err(Unusable::Codec)?,
        );
        // Weighed before it can be promoted: L1 counts what it holds.
        let weight = self.decoded_weight(&value, entry.body.len());
        meta.decoded(Arc::clone(&value) as Arc<dyn Any + Send + Sync>, weight);
        Ok(value)
    }

    /// Answers a lookup from `entry`, found in `tier`, judged as the HTTP
    /// layer judges entries: a fresh or stale value is counted as a hit
    /// of its tier, reported and, from L2, promoted to L1 by the promotion
    /// rules (at once when it `replaces` an L1 copy); past its hard TTL it
    /// is kept as the lookup's prior. An entry this cache cannot read is a
    /// miss (and from L2, a corrupt value: counted, deleted).
    fn answer(
        &self,
        call: &Call<'_>,
        entry: Arc<Entry>,
        tier: Tier,
        replaces: Option<&Arc<Entry>>,
        now: u64,
    ) -> Answer<T> {
        let value = match self.typed(&entry) {
            Ok(v) => v,
            Err(why) => {
                self.discard(call.hash, tier, &why);
                return Answer::Miss;
            }
        };
        let fresh = match self.usability(&entry, now) {
            Usability::Fresh => true,
            Usability::Stale => false,
            _ => return Answer::Prior(Prior { entry, tier }),
        };
        let l2 = tier != Tier::L1;
        let status = self.cache.tier_hit_status(fresh, l2, &entry, now);
        self.note_read(call, &entry, tier, replaces, now);
        if fresh && !call.report.span.is_disabled() {
            let left = entry.timeline.fresh_until.saturating_sub(now);
            call.report
                .span
                .record("cache.ttl_remaining_ms", left as i64);
        }
        self.report(call.key, &call.report, &Counted::from(&status), Some(now));
        if fresh {
            Answer::Fresh(value, entry)
        } else {
            Answer::Stale(value, Prior { entry, tier })
        }
    }

    /// A read `entry` (found in `tier`) answered, counted as the HTTP
    /// layer counts one: on the entry (one relaxed atomic, for adaptive
    /// TTL and eviction reports); an L2 entry is promoted by the admission
    /// rule (unless values stay in L2 only), and the reads of a copy L1
    /// does not keep are carried to the key's count at once.
    fn note_read(
        &self,
        call: &Call<'_>,
        entry: &Arc<Entry>,
        tier: Tier,
        replaces: Option<&Arc<Entry>>,
        now: u64,
    ) {
        let s = self.shared();
        entry.reads.note(s.obs.cfg.read_cap);
        if tier == Tier::L1 {
            return;
        }
        if call.opts.uses_l1() {
            let none = HeaderMap::new();
            let cache = &self.cache;
            cache.served(call.hash, entry, tier, replaces, &none, now);
        } else {
            s.tiers.carry_reads(call.hash, entry, now);
        }
    }

    /// Fresh, stale within its hard TTL, or past it.
    fn usability(&self, entry: &Entry, now: u64) -> Usability {
        let any = RequestDirectives::default();
        self.shared().policy.usability(entry, &any, now)
    }

    /// An entry read from L2 that this cache cannot use: a corrupt value,
    /// counted and deleted. (In L1 it is left to be replaced.)
    fn discard(&self, hash: KeyHash, tier: Tier, why: &Unusable) {
        #[cfg(feature = "redis")]
        if let (Tier::L2 { .. }, Some(l2)) = (tier, &self.shared().tiers.l2) {
            l2.discard(hash, why);
        }
        let _ = (hash, tier, why);
    }

    /// The L1 step of a lookup (unless the options keep values in L2 only).
    /// Every lookup takes it: its read is noted for hot-key refresh and
    /// prefetch here, after the L1 look-up (a miss always prefetches).
    fn look_in_l1(&self, call: &Call<'_>, now: u64) -> Answer<T> {
        let found = if call.opts.uses_l1() {
            let none = HeaderMap::new();
            self.shared().tiers.lookup_l1(call.hash, &none, now)
        } else {
            L1Lookup::Miss { fwd: Fwd::UriMiss }
        };
        if let Some(hot) = &self.hot {
            let miss = matches!(found, L1Lookup::Miss { .. });
            self.after_read(hot, call, miss);
        }
        match found {
            L1Lookup::Found(entry) => self.answer(call, entry, Tier::L1, None, now),
            L1Lookup::Miss { .. } => Answer::Miss,
        }
    }

    /// The L2 step of a lookup: an entry newer than the prior's, judged
    /// (unless the options keep values in L1 only, or there is no L2).
    async fn look_in_l2(&self, call: &Call<'_>, prior: Option<&Prior>, now: u64) -> Answer<T> {
        #[cfg(feature = "redis")]
        if call.opts.uses_l2() && self.shared().tiers.has_l2() {
            let older = prior.map(|p| &*p.entry);
            let none = HeaderMap::new();
            let found = self.shared().tiers.lookup_l2(call.hash, &none, older, now);
            if let crate::tiers::L2Lookup::Found(entry, tier) = found.await {
                let replaces = prior.filter(|p| p.tier == Tier::L1).map(|p| &p.entry);
                return self.answer(call, entry, tier, replaces, now);
            }
        }
        let _ = (call, prior, now);
        Answer::Miss
    }

    /// The value stored for `key`, fresh or stale within its hard TTL, from
    /// L1 or L2 (as the default options say); `None` otherwise. Never
    /// fetches; counted as a lookup (a hit by tier, stale, or a miss).
    pub async fn get(&self, key: &str) -> Option<Arc<T>> {
        let opts = Arc::clone(&self.face.defaults);
        let call = self.call(key, &opts, "get")?;
        let now = self.cache.now();
        let prior = match self.look_in_l1(&call, now) {
            Answer::Fresh(v, _) | Answer::Stale(v, _) => return Some(v),
            Answer::Prior(p) => Some(p),
            Answer::Miss => None,
        };
        let look_in_l2 = async {
            match self.look_in_l2(&call, prior.as_ref(), now).await {
                Answer::Fresh(v, _) | Answer::Stale(v, _) => Some(v),
                _ => {
                    self.shared().counters.misses.incr();
                    let miss = Counted::from(&Status::forward(Fwd::UriMiss));
                    self.report(call.key, &call.report, &miss, Some(now));
                    None
                }
            }
        };
        self.answering(&call.report.span, look_in_l2).await
    }

    /// Runs the asynchronous part of a lookup in its span; dropped before
    /// it ends, the lookup counts as cancelled (so that each lookup ends in
    /// exactly one outcome).
    async fn answering<R>(&self, span: &tracing::Span, fut: impl Future<Output = R>) -> R {
        let unfinished = Unfinished {
            cache: &self.cache,
            label: self.face.label,
            span,
        };
        let result = fut.instrument(span.clone()).await;
        std::mem::forget(unfinished);
        result
    }

    /// Stores `value` for `key` with `opts`' lifetime, tags and tiers
    /// (replacing what was stored, in every instance: L2 writes announce
    /// the key). Returns whether a tier took it: not for a key over
    /// [`MAX_KEY_BYTES`], a value the codec cannot encode or whose encoding
    /// is over the cache's `max_body_bytes`, nor for `l2_only` without L2.
    pub async fn set(&self, key: &str, value: T, opts: &ValueOptions) -> bool {
        if key.len() > MAX_KEY_BYTES {
            return false;
        }
        let now = self.cache.now();
        self.store(key, self.hash(key), value, opts, now).2
    }

    /// Removes the value of `key` from every tier, and tells the other
    /// instances. Returns whether this instance's L1 held it
    /// ([`Cache::invalidate_value`]).
    pub fn delete(&self, key: &str) -> bool {
        self.cache.invalidate_value(&self.face.name, key)
    }

    /// Removes every value of this cache whose key starts with `prefix`
    /// (say `"user:123:"`), in every tier (L2 is scanned, off the request
    /// path), and tells the other instances. HTTP entries and other value
    /// caches' values are never touched
    /// ([`Cache::invalidate_value_prefix`]).
    pub async fn invalidate_prefix(&self, prefix: &str) -> Invalidated {
        self.cache
            .invalidate_value_prefix(&self.face.name, prefix)
            .await
    }

    /// Removes every value of this cache stored with `tag`
    /// ([`ValueOptions::tag`]), in every tier, and tells the other
    /// instances. HTTP entries and other value caches' values are never
    /// touched ([`Cache::invalidate_value_tag`]).
    pub async fn invalidate_tag(&self, tag: &str) -> Invalidated {
        self.cache.invalidate_value_tag(&self.face.name, tag).await
    }

    /// Stores `value` for `key` as `opts` say: its `Arc` (the one returned
    /// to callers and kept in L1), its entry, and whether a tier took it.
    /// A value that cannot be stored (see [`set`](Self::set)) still gets
    /// an entry, for the calls that wait for this one.
    fn store(
        &self,
        key: &str,
        hash: KeyHash,
        value: T,
        opts: &ValueOptions,
        now: u64,
    ) -> (Arc<T>, Arc<Entry>, bool) {
        let s = self.shared();
        let value = Arc::new(value);
        let body = self.encode(&value);
        let Some(body) = body else {
            let entry = self.entry(key, &value, Bytes::new(), opts, opts.timeline(now));
            return (value, Arc::new(entry), false);
        };
        let timeline = self.timeline(hash, opts, now);
        let entry = Arc::new(self.entry(key, &value, body, opts, timeline));
        let stored = match opts.place {
            Place::Both => s.tiers.store(hash, &entry, &[], &HeaderMap::new(), now),
            Place::L1 => s.tiers.store_l1_only(hash, &entry),
            Place::L2 => s.tiers.store_l2_only(hash, &entry, now),
        };
        if stored {
            s.counters.stores.incr();
            s.obs.stored(self.face.label);
        }
        (value, entry, stored)
    }

    /// The timeline of a value of `hash` stored at `now` with `opts`: with
    /// adaptive TTL on, the soft TTL is the cache's user's choice, so it is
    /// scaled by the key's read rate (`Shared::adapt_ttl`, once the reads
    /// of the L1 copy it replaces are counted), at most [`MAX_TTL`]; the
    /// stale window up to the hard TTL and the fail-safe window keep their
    /// lengths after it, as an HTTP entry's stale windows do.
    fn timeline(&self, hash: KeyHash, opts: &ValueOptions, now: u64) -> Timeline {
        let timeline = opts.timeline(now);
        let s = self.shared();
        if s.cfg.adaptive.is_none() {
            return timeline;
        }
        s.tiers.carry_replaced(hash, None, &HeaderMap::new(), now);
        let ttl = s.adapt_ttl(hash, opts.ttl, false).min(MAX_TTL);
        if ttl == opts.ttl {
            return timeline;
        }
        timeline.with_lifetime(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
    }

    /// Stores a fetched value as [`store`](Self::store) does, unless an
    /// invalidation that may cover its key came since the fetch started
    /// (`ticket`): what was read before "update the source, then delete
    /// the key" must not outlive the delete. Not stored, it still answers
    /// this call and the calls waiting for it.
    fn store_fetched(
        &self,
        key: &str,
        hash: KeyHash,
        value: T,
        opts: &ValueOptions,
        ticket: Ticket,
        now: u64,
    ) -> (Arc<T>, Arc<Entry>, bool) {
        if self.shared().tiers.still_current(hash, ticket) {
            return self.store(key, hash, value, opts, now);
        }
        let value = Arc::new(value);
        let entry = Arc::new(self.entry(key, &value, Bytes::new(), opts, opts.timeline(now)));
        (value, entry, false)
    }

    /// The serialised form of `value`, if the codec makes one within the
    /// cache's body cap.
    fn encode(&self, value: &T) -> Option<Bytes> {
        let s = self.shared();
        match self.face.codec.encode(value) {
            Ok(mut b) if b.len() as u64 <= s.cfg.max_body_bytes => {
                // Stored data owns what it weighs: no spare capacity.
                b.shrink_to_fit();
                Some(Bytes::from(b))
            }
            Ok(_) => {
                s.counters.too_large.incr();
                s.obs
                    .not_stored(self.face.label, crate::NotStored::TooLarge);
                None
            }
            Err(e) => {
                if s.obs.cfg.log.warnings() {
                    tracing::warn!(
                        target: "tower_tiered_cache",
                        label = %self.face.name,
                        error = %e,
                        "value not stored: the codec refused it"
                    );
                }
                None
            }
        }
    }

    /// The entry of `value` for `key`: its serialised form as the body,
    /// the decoded value kept beside it.
    fn entry(
        &self,
        key: &str,
        value: &Arc<T>,
        body: Bytes,
        opts: &ValueOptions,
        timeline: Timeline,
    ) -> Entry {
        let payload = Arc::clone(value) as Arc<dyn Any + Send + Sync>;
        let meta = ValueMeta::new(self.face.codec_id, self.face.type_tag, None);
        meta.decoded(payload, self.decoded_weight(value, body.len()));
        Entry {
            key: self.readable(key).into_boxed_str(),
            status: StatusCode::OK,
            version: Version::HTTP_11,
            headers: HeaderMap::new(),
            body,
            vary: Box::new([]),
            timeline,
            flags: Default::default(),
            extensions: 0,
            tags: self.tags(opts),
            template: Default::default(),
            label: self.face.label,
            reads: Default::default(),
            value: Some(Box::new(meta)),
        }
    }

    /// `opts`' tags that are tags (as response tags are checked), in this
    /// cache's namespace.
    fn tags(&self, opts: &ValueOptions) -> Box<[Box<str>]> {
        let mut tags = Vec::new();
        for t in &opts.tags {
            self.shared().cfg.tags.push(&mut tags, t);
        }
        tags.iter()
            .map(|t| self.readable(t).into_boxed_str())
            .collect()
    }
}

/// The fetching calls: a fetch is an async closure returning the value
/// (or an error of its own), called at most once, on this task or (a
/// background refresh, or the rest of a fetch past its soft timeout) on
/// a task of its own.
impl<T: Send + Sync + 'static> ValueCache<T> {
    /// The value of `key`: a fresh stored value; a stale one within its
    /// hard TTL, while one background fetch (per key, bounded in number by
    /// the cache's `max_concurrent_refreshes`, within `fetch_timeout`)
    /// refreshes it; otherwise the result of `fetch`, stored. Concurrent
    /// calls for a key make one fetch; the others wait for it (at most the
    /// cache's `coalesce_timeout`, or the soft fetch timeout when they
    /// have a fail-safe value).
    ///
    /// When the fetch fails or times out and a value within its fail-safe
    /// window exists, that value is returned (see [`ValueOptions::fail_safe`]);
    /// otherwise the error ([`FetchError`]).
    pub async fn get_or_fetch<F, Fut, E>(
        &self,
        key: &str,
        opts: &ValueOptions,
        fetch: F,
    ) -> Result<Arc<T>, FetchError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Send + 'static,
    {
        let Some(mut call) = self.call(key, opts, "get_or_fetch") else {
            return self.uncached(key, opts, fetch).await;
        };
        let now = self.cache.now();
        let prior = match self.look_in_l1(&call, now) {
            Answer::Fresh(v, _) => return Ok(v),
            Answer::Stale(v, prior) => {
                self.spawn_refresh(&call, prior, boxed(fetch));
                return Ok(v);
            }
            Answer::Prior(p) => Some(p),
            Answer::Miss => None,
        };
        if call.report.start == 0 && self.shared().obs.cfg.enabled {
            call.report.start = self.shared().obs.start();
        }
        let miss = self.miss(&call, boxed(fetch), prior);
        self.answering(&call.report.span, miss).await
    }

    /// A key that is not cached: the fetch's result, within its deadline
    /// when there is a runtime to time it; counted as a pass.
    async fn uncached<F, Fut, E>(
        &self,
        key: &str,
        opts: &ValueOptions,
        fetch: F,
    ) -> Result<Arc<T>, FetchError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let s = self.shared();
        s.counters.passes.incr();
        s.counters.upstream_calls.incr();
        self.report(key, &Report::none(0), &Counted::from(&Status::BYPASS), None);
        let result = if tokio::runtime::Handle::try_current().is_ok() {
            tokio::time::timeout(opts.fetch_timeout, fetch())
                .await
                .map_err(|_| FetchError::timeout(opts.fetch_timeout))?
        } else {
            fetch().await
        };
        result.map(Arc::new).map_err(FetchError::fetch)
    }

    /// Nothing usable in L1: joins the key's flight. The leader reads L2
    /// and fetches; waiters answer from what it got, or wait on (or lead)
    /// the next flight, at most `MAX_WAITS` flights.
    async fn miss<E: Send + 'static>(
        &self,
        call: &Call<'_>,
        fetch: BoxFetch<T, E>,
        prior: Option<Prior>,
    ) -> Result<Arc<T>, FetchError<E>> {
        let s = self.shared();
        for _ in 0..crate::flow::MAX_WAITS {
            let flight = match s.inflight.join(call.hash) {
                Join::Leader(guard) => return self.lead(call, fetch, prior, Some(guard)).await,
                Join::Full => return self.lead(call, fetch, prior, None).await,
                Join::Waiter(flight) => flight,
            };
            let limit = self.wait_limit(call.opts, prior.as_ref());
            let outcome = coalesce::wait(&flight, limit).await;
            if let Some(done) = self.after_wait(call, outcome, prior.as_ref()) {
                return done;
            }
        }
        self.gave_up(call, prior.as_ref(), false)
    }

    /// How long a call waits for another's fetch: the soft fetch timeout
    /// when it has a fail-safe value to return then, else the cache's
    /// `coalesce_timeout`.
    fn wait_limit(&self, opts: &ValueOptions, prior: Option<&Prior>) -> std::time::Duration {
        let coalesce = self.shared().cfg.coalesce_timeout;
        match self.soft_limit(opts, prior) {
            Some((soft, _)) => soft.min(coalesce),
            None => coalesce,
        }
    }

    /// The soft fetch timeout, when it applies: set, shorter than the
    /// fetch timeout, with a prior within its fail-safe window.
    fn soft_limit<'p>(
        &self,
        opts: &ValueOptions,
        prior: Option<&'p Prior>,
    ) -> Option<(std::time::Duration, &'p Prior)> {
        let soft = opts
            .soft_fetch_timeout
            .filter(|s| *s < opts.fetch_timeout)?;
        let prior = prior?;
        let any = RequestDirectives::default();
        let now = self.cache.now();
        let ok = self
            .shared()
            .policy
            .stale_if_error_ok(&prior.entry, &any, now);
        ok.then_some((soft, prior))
    }

    /// A waiter's answer from what its flight got (`None`: the wait timed
    /// out); `None` when it should wait on (or lead) the next flight.
    fn after_wait<E>(
        &self,
        call: &Call<'_>,
        outcome: Option<Outcome>,
        prior: Option<&Prior>,
    ) -> Option<Result<Arc<T>, FetchError<E>>> {
        let now = self.cache.now();
        let l2 = Tier::L2 {
            since: crate::store::order::Generation::NONE,
        };
        let (entry, tier) = match outcome {
            None => return Some(self.gave_up(call, prior, true)),
            Some(Outcome::Stored(entry)) => {
                return self.collapsed(call, &entry, prior, now).map(Ok)
            }
            // Another instance's fetch, read from L2 by the leader.
            Some(Outcome::Collapsed(entry)) => {
                return self
                    .collapsed_as(call, &entry, prior, now, Detail::L2)
                    .map(Ok)
            }
            Some(Outcome::StaleIfError(entry)) => {
                let stood_in = Prior { entry, tier: l2 };
                return self.fail_safe(call, &stood_in, now).map(Ok);
            }
            Some(Outcome::Cached(entry, crate::observe::Tier::L2) | Outcome::Found(entry)) => {
                (entry, l2)
            }
            Some(Outcome::Cached(entry, _)) => (entry, Tier::L1),
            // Failed or abandoned: another flight may have stored a value.
            Some(_) => (self.newer_in_l1(call, prior, now)?, Tier::L1),
        };
        match self.answer(call, entry, tier, None, now) {
            Answer::Fresh(v, _) | Answer::Stale(v, _) => Some(Ok(v)),
            Answer::Prior(_) | Answer::Miss => None,
        }
    }

    /// An L1 copy stored after the prior (any, without one).
    fn newer_in_l1(&self, call: &Call<'_>, prior: Option<&Prior>, now: u64) -> Option<Arc<Entry>> {
        if !call.opts.uses_l1() {
            return None;
        }
        let older = prior.map(|p| &*p.entry);
        let s = self.shared();
        s.tiers
            .l1_newer_than(call.hash, &HeaderMap::new(), older, now)
    }

    /// A waiter answered from the value its flight's leader fetched and
    /// stored: a coalesced miss.
    fn collapsed(
        &self,
        call: &Call<'_>,
        entry: &Entry,
        prior: Option<&Prior>,
        now: u64,
    ) -> Option<Arc<T>> {
        let s = self.shared();
        let stored = if call.opts.uses_l1() {
            s.tiers.store_tier(entry)
        } else {
            Detail::L2
        };
        self.collapsed_as(call, entry, prior, now, stored)
    }

    /// [`collapsed`](Self::collapsed), answered from the tier `stored`
    /// names (`l2`: another instance's fetch, read from L2).
    fn collapsed_as(
        &self,
        call: &Call<'_>,
        entry: &Entry,
        prior: Option<&Prior>,
        now: u64,
        stored: Detail,
    ) -> Option<Arc<T>> {
        let value = self.typed(entry).ok()?;
        let s = self.shared();
        s.counters.coalesced.incr();
        let fwd = if prior.is_some() {
            Fwd::Stale
        } else {
            Fwd::UriMiss
        };
        let status = Status {
            collapsed: true,
            ..Status::forward(fwd).with_detail(stored)
        };
        self.report(call.key, &call.report, &Counted::from(&status), Some(now));
        Some(value)
    }

    /// A call whose waits all failed or timed out (`timed_out`): its
    /// fail-safe value, else a coalescing error (a miss).
    fn gave_up<E>(
        &self,
        call: &Call<'_>,
        prior: Option<&Prior>,
        timed_out: bool,
    ) -> Result<Arc<T>, FetchError<E>> {
        let s = self.shared();
        let now = self.cache.now();
        if timed_out {
            s.counters.coalesce_timeouts.incr();
        }
        if let Some(v) = prior.and_then(|p| self.fail_safe(call, p, now)) {
            return Ok(v);
        }
        s.counters.misses.incr();
        self.report(call.key, &call.report, &Counted::FAILED, Some(now));
        Err(FetchError::coalesce())
    }

    /// The prior's value standing in for a fetch that failed, timed out or
    /// outlived the soft timeout, when within its fail-safe window: a
    /// stale answer (`detail=stale-if-error`).
    fn fail_safe(&self, call: &Call<'_>, prior: &Prior, now: u64) -> Option<Arc<T>> {
        let s = self.shared();
        let any = RequestDirectives::default();
        if !s.policy.stale_if_error_ok(&prior.entry, &any, now) {
            return None;
        }
        let value = self.typed(&prior.entry).ok()?;
        s.counters.stale.incr();
        s.counters.stale_if_error.incr();
        let fresh_until = prior.entry.timeline.fresh_until;
        let status = Status {
            stale_by: Some(now.saturating_sub(fresh_until).div_ceil(1000)),
            ..Status::forward(Fwd::Stale).with_detail(Detail::StaleIfError)
        };
        self.report(call.key, &call.report, &Counted::from(&status), Some(now));
        Some(value)
    }

    /// A failed fetch of a key whose stale value is kept: counted as a
    /// failed refresh, and the value's life extended by the engine's
    /// stale extension (half its TTL), at most `opts`' extensions; not
    /// when an invalidation of the key (or a newer value another instance
    /// stored) came since the fetch started (`ticket`): the old value
    /// would come back.
    fn keep_stale(
        &self,
        hash: KeyHash,
        prior: &Prior,
        opts: &ValueOptions,
        ticket: Ticket,
        now: u64,
    ) {
        let s = self.shared();
        s.counters.refresh_failed.incr();
        if s.obs.cfg.log.warnings() {
            tracing::warn!(
                target: "tower_tiered_cache",
                key = %hash,
                label = %self.face.name,
                "value fetch failed; keeping the stale value"
            );
        }
        if !s.tiers.still_current(hash, ticket) {
            return;
        }
        let Some(extended) = self
            .cache
            .extended_within(&prior.entry, opts.max_extensions)
        else {
            return;
        };
        let extended = Arc::new(extended);
        let none = HeaderMap::new();
        match opts.place {
            Place::Both => {
                s.tiers
                    .replace(hash, &prior.entry, extended, &none, prior.tier, now);
            }
            Place::L1 => {
                s.tiers.l1.replace_if(hash, &prior.entry, extended, &none);
            }
            Place::L2 => {
                s.tiers.store_l2_only(hash, &extended, now);
            }
        }
    }

    /// The leader of a key's flight: a fresh copy another flight stored
    /// meanwhile, L2, then the fetch; waiters get what it got.
    async fn lead<E: Send + 'static>(
        &self,
        call: &Call<'_>,
        fetch: BoxFetch<T, E>,
        prior: Option<Prior>,
        guard: Option<FlightGuard>,
    ) -> Result<Arc<T>, FetchError<E>> {
        let mut prior = prior;
        let now = self.cache.now();
        let newer = self.newer_in_l1(call, prior.as_ref(), now);
        if let Some(entry) = newer.filter(|e| self.usability(e, now) == Usability::Fresh) {
            if let Answer::Fresh(v, entry) = self.answer(call, entry, Tier::L1, None, now) {
                complete(guard, Outcome::Cached(entry, crate::observe::Tier::L1));
                return Ok(v);
            }
        }
        match self.look_in_l2(call, prior.as_ref(), now).await {
            Answer::Fresh(v, entry) => {
                complete(guard, Outcome::Found(entry));
                return Ok(v);
            }
            Answer::Stale(v, stale) => {
                complete(guard, Outcome::Found(Arc::clone(&stale.entry)));
                self.spawn_refresh(call, stale, fetch);
                return Ok(v);
            }
            Answer::Prior(p) => prior = Some(p),
            Answer::Miss => {}
        }
        // Other instances may be fetching it (distributed coalescing).
        #[cfg(feature = "redis")]
        let held = match self.lease_or_wait(call, prior.as_ref()).await {
            leased::Leased::Answered(v, entry) => {
                complete(guard, Outcome::Collapsed(entry));
                return Ok(v);
            }
            leased::Leased::FailSafe(v, entry) => {
                complete(guard, Outcome::StaleIfError(entry));
                return Ok(v);
            }
            leased::Leased::Call(held) => held,
        };
        #[cfg(not(feature = "redis"))]
        let held = None;
        self.fetch_now(call, fetch, prior, guard, held).await
    }

    /// The leader's fetch, within the fetch timeout. Past the soft timeout
    /// (when it applies) the fail-safe value answers and the fetch goes on
    /// in the background, holding the flight, when the background bound
    /// allows; else the call waits on.
    async fn fetch_now<E: Send + 'static>(
        &self,
        call: &Call<'_>,
        fetch: BoxFetch<T, E>,
        prior: Option<Prior>,
        guard: Option<FlightGuard>,
        held: Held,
    ) -> Result<Arc<T>, FetchError<E>> {
        let started = Instant::now();
        let deadline = started + call.opts.fetch_timeout;
        self.shared().counters.upstream_calls.incr();
        let ticket = self.shared().tiers.ticket();
        let mut fut = fetch();
        if let Some((soft, stood_in)) = self.soft_limit(call.opts, prior.as_ref()) {
            match tokio::time::timeout(soft, fut.as_mut()).await {
                Ok(result) => {
                    let done = self.fetched(call, Ok(result), prior, guard, (started, ticket));
                    end_lease(held);
                    return done;
                }
                Err(_) => {
                    if let Some(permit) = self.background_permit() {
                        if let Some(v) = self.fail_safe(call, stood_in, self.cache.now()) {
                            let stood_in = stood_in.clone();
                            let mut bg = self.background(call, stood_in, guard, permit, ticket);
                            bg.held = held;
                            bg.spawn(fut, started, deadline, &call.report.span);
                            return Ok(v);
                        }
                    }
                }
            }
        }
        let result = tokio::time::timeout_at(deadline, fut).await;
        let done = self.fetched(
            call,
            result.map_err(|_| ()),
            prior,
            guard,
            (started, ticket),
        );
        end_lease(held);
        done
    }

    /// What the leader's fetch gave: stored and answered; or the fail-safe
    /// value (the stale value kept and extended); or the error.
    fn fetched<E>(
        &self,
        call: &Call<'_>,
        result: Result<Result<T, E>, ()>,
        prior: Option<Prior>,
        guard: Option<FlightGuard>,
        (started, ticket): (Instant, Ticket),
    ) -> Result<Arc<T>, FetchError<E>> {
        let s = self.shared();
        let now = self.cache.now();
        self.fetch_done(started, &result);
        let error = match result {
            Ok(Ok(value)) => {
                let (value, entry, stored) =
                    self.store_fetched(call.key, call.hash, value, call.opts, ticket, now);
                s.counters.misses.incr();
                let status = miss_status(prior.is_some(), stored);
                self.report(call.key, &call.report, &Counted::from(&status), Some(now));
                complete(guard, Outcome::Stored(entry));
                return Ok(value);
            }
            Ok(Err(e)) => FetchError::fetch(e),
            Err(()) => FetchError::timeout(call.opts.fetch_timeout),
        };
        if let Some(p) = prior {
            if let Some(v) = self.fail_safe(call, &p, now) {
                self.keep_stale(call.hash, &p, call.opts, ticket, now);
                complete(guard, Outcome::StaleIfError(p.entry));
                return Ok(v);
            }
        }
        s.counters.misses.incr();
        self.report(call.key, &call.report, &Counted::FAILED, Some(now));
        complete(guard, Outcome::Failed);
        Err(error)
    }

    /// Counts a finished fetch: an upstream call, failed or timed out.
    fn fetch_done<V, E>(&self, started: Instant, result: &Result<Result<V, E>, ()>) {
        let s = self.shared();
        let ok = matches!(result, Ok(Ok(_)));
        let status = ok.then_some(StatusCode::OK);
        s.obs
            .upstream_done(self.face.label, started.elapsed(), status);
        if !ok {
            s.counters.upstream_errors.incr();
            s.obs.upstream_error(self.face.label);
        }
        if result.is_err() {
            s.counters.upstream_timeouts.incr();
        }
    }

    /// A place for one more background fetch (`max_concurrent_refreshes`),
    /// or `None`, counted as a skipped refresh.
    fn background_permit(&self) -> Option<OwnedSemaphorePermit> {
        let s = self.shared();
        let permit = Arc::clone(&s.refreshes).try_acquire_owned().ok();
        if permit.is_none() {
            s.counters.refresh_skipped.incr();
        }
        permit
    }

    /// Refreshes a stale value in the background: one per key (the key's
    /// flight), bounded in number, within the fetch timeout, outside the
    /// caller's cancellation.
    fn spawn_refresh<E: Send + 'static>(
        &self,
        call: &Call<'_>,
        prior: Prior,
        fetch: BoxFetch<T, E>,
    ) {
        let s = self.shared();
        let Some(guard) = s.inflight.try_lead(call.hash) else {
            return; // A fetch of this key is in flight already.
        };
        let Some(permit) = self.background_permit() else {
            return;
        };
        self.launch_refresh(call, prior, fetch, guard, permit);
    }

    /// Starts the background refresh of `call`'s key (its stale value
    /// `prior`), leading its flight (`guard`), holding `permit`: a stale
    /// value's and a `refresh_hot` round's.
    fn launch_refresh<E: Send + 'static>(
        &self,
        call: &Call<'_>,
        prior: Prior,
        fetch: BoxFetch<T, E>,
        guard: FlightGuard,
        permit: OwnedSemaphorePermit,
    ) {
        let s = self.shared();
        let ticket = s.tiers.ticket();
        s.counters.upstream_calls.incr();
        let started = Instant::now();
        let deadline = started + call.opts.fetch_timeout;
        let bg = self.background(call, prior, Some(guard), permit, ticket);
        bg.spawn(fetch(), started, deadline, &call.report.span);
    }

    /// A fetch to finish in the background for `call`'s key.
    fn background(
        &self,
        call: &Call<'_>,
        prior: Prior,
        guard: Option<FlightGuard>,
        permit: OwnedSemaphorePermit,
        ticket: Ticket,
    ) -> Background<T> {
        Background {
            values: self.clone(),
            key: call.key.to_owned(),
            hash: call.hash,
            opts: call.opts.clone(),
            prior,
            guard,
            permit,
            ticket,
            held: None,
        }
    }
}

/// A lease held on a key across instances (distributed coalescing), ended
/// once the fetch stored its value (or did not).
#[cfg(feature = "redis")]
type Held = Option<crate::store::lease::Lease>;
/// Without Redis, no lease is ever held.
#[cfg(not(feature = "redis"))]
type Held = Option<std::convert::Infallible>;

/// Ends `held` after the fetch: released once the value's L2 write landed;
/// at once, saying it failed, when nothing was written.
fn end_lease(held: Held) {
    #[cfg(feature = "redis")]
    if let Some(lease) = held {
        lease.end(crate::store::lease::Ending::Stored);
    }
    #[cfg(not(feature = "redis"))]
    let _ = held;
}

/// A fetch finishing on a task of its own (a background refresh, or the
/// rest of a fetch past its soft timeout): it holds the key's flight (if
/// any) and a place among the background fetches.
struct Background<T> {
    values: ValueCache<T>,
    key: String,
    hash: KeyHash,
    opts: ValueOptions,
    prior: Prior,
    guard: Option<FlightGuard>,
    permit: OwnedSemaphorePermit,
    /// Where the tiers' order stood when the fetch started.
    ticket: Ticket,
    /// The key's lease across instances, if this fetch holds it.
    held: Held,
}

/// A fetch's future, pinned so that it can move to another task halfway.
type Fetching<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// A fetch as the steps after a lookup's L1 step take it, made once a
/// lookup needs it (a miss, a refresh): nothing is allocated on a hit.
type BoxFetch<T, E> = Box<dyn FnOnce() -> Fetching<T, E> + Send>;

/// `fetch`, type-erased.
fn boxed<F, Fut, T, E>(fetch: F) -> BoxFetch<T, E>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    Box::new(move || Box::pin(fetch()) as Fetching<T, E>)
}

impl<T: Send + Sync + 'static> Background<T> {
    /// Runs `fut` to `deadline` on a task of its own, in a `cache.refresh`
    /// span linked to `cause`: a value is stored (a refresh), a failure
    /// keeps the stale value, extended.
    fn spawn<E: Send + 'static>(
        self,
        fut: Fetching<T, E>,
        started: Instant,
        deadline: Instant,
        cause: &tracing::Span,
    ) {
        let obs = &self.values.shared().obs;
        let span = crate::observe::refresh_span(obs.cfg.span_level, &self.values.face.name);
        span.follows_from(cause);
        tokio::spawn(self.run(fut, started, deadline).instrument(span));
    }

    async fn run<E: Send + 'static>(
        self,
        fut: Fetching<T, E>,
        started: Instant,
        deadline: Instant,
    ) {
        let _permit = self.permit;
        let vc = &self.values;
        let result = tokio::time::timeout_at(deadline, fut).await.map_err(|_| ());
        vc.fetch_done(started, &result);
        let now = vc.cache.now();
        let outcome = match result {
            Ok(Ok(value)) => {
                let (_, entry, _) =
                    vc.store_fetched(&self.key, self.hash, value, &self.opts, self.ticket, now);
                vc.shared().counters.refresh_ok.incr();
                Outcome::Stored(entry)
            }
            _ => {
                vc.keep_stale(self.hash, &self.prior, &self.opts, self.ticket, now);
                Outcome::Failed
            }
        };
        end_lease(self.held);
        let span = tracing::Span::current();
        if !span.is_disabled() {
            let refreshed = matches!(outcome, Outcome::Stored(_));
            span.record(
                "cache.result",
                if refreshed { "refreshed" } else { "failed" },
            );
        }
        complete(self.guard, outcome);
    }
}

#[cfg(test)]
mod tests;
