//! The engine: [`Cache`] and its [`CacheBuilder`]. It knows nothing about
//! tower; the adapters translate their requests into its calls.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION,
    CONTENT_RANGE, DATE, ETAG, EXPIRES, LAST_MODIFIED, VARY,
};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use quick_cache::sync::Cache as QuickCache;

use crate::body::CacheBody;
use crate::breaker::{BreakerState, Breakers};
use crate::builder::CacheBuilder;
use crate::clock::Clock;
use crate::coalesce::InFlight;
use crate::entry::Entry;
use crate::key::{KeyConfig, KeyHash};
use crate::observe::{LogLevel, Observer, Outcome};
use crate::policy::range::{self, Ranged};
use crate::policy::{PolicyConfig, RequestDirectives, Usability};
use crate::stats::{Counters, Stats};
use crate::status::{Detail, Fwd, Status, CACHE_STATUS, STATUS_ONLY_IF_CACHED};
use crate::store::order::Scope;
use crate::tiers::{L1Lookup, Tier, Tiers};

/// A copy of what the engine needs of a request (method, URI, version,
/// headers) once the request itself has been sent on.
pub(crate) fn request_view(parts: &Parts) -> Parts {
    let mut p = Request::new(()).into_parts().0;
    p.method = parts.method.clone();
    // The URI keys are made from (see `key_uri`).
    p.uri = crate::key::key_uri(parts).clone();
    p.version = parts.version;
    p.headers = parts.headers.clone();
    p
}

/// A `GET` for `uri` with `headers`: what invalidation computes keys from.
pub(crate) fn get_view(uri: &http::Uri, headers: &HeaderMap) -> Parts {
    let mut p = Request::new(()).into_parts().0;
    p.uri = uri.clone();
    p.headers = headers.clone();
    p
}

/// A shared, cheaply cloneable HTTP cache: the engine behind
/// [`CacheLayer`](crate::CacheLayer).
///
/// Build one with [`Cache::builder`] and hand clones to as many layers as
/// you like; they all share the same tiers, in-flight map and counters.
///
/// ```
/// use std::time::Duration;
/// use tower_tiered_cache::{Cache, Route};
///
/// let cache = Cache::builder()
///     .l1_capacity_bytes(128 * 1024 * 1024)
///     .default_stale_while_revalidate(Duration::from_secs(30))
///     .route(Route::prefix("/api/odds").ttl(Duration::from_secs(5)))
///     .build()
///     .expect("valid configuration");
/// assert_eq!(cache.stats().requests, 0);
/// ```
#[derive(Clone)]
pub struct Cache {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("mode", &self.shared.policy.mode)
            .field("l1_capacity_bytes", &self.shared.tiers.l1.capacity())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) policy: PolicyConfig,
    pub(crate) keys: KeyConfig,
    /// L1, the optional L2, and how entries move between them.
    pub(crate) tiers: Tiers,
    pub(crate) inflight: InFlight,
    pub(crate) hit_for_pass: QuickCache<KeyHash, u64>,
    /// The upstream circuit breakers, one per label (`upstream_breaker`).
    pub(crate) breakers: Breakers,
    pub(crate) counters: Counters,
    /// `max_concurrent_refreshes`: stale, eager and typed values'
    /// refreshes on the request path.
    pub(crate) refreshes: Arc<tokio::sync::Semaphore>,
    /// As many again, of the `refresh_hot` rounds' own (every worker's,
    /// HTTP and values'), so that a round never holds up a stale refresh.
    pub(crate) round_refreshes: Arc<tokio::sync::Semaphore>,
    pub(crate) cfg: EngineConfig,
    pub(crate) obs: Observer,
    /// `refresh_hot` and `prefetch`, when either is set.
    pub(crate) hot: Option<Box<crate::flow::hot::HotState>>,
    /// Stats accumulated in Redis (`shared_stats`).
    #[cfg(feature = "redis")]
    pub(crate) shared_stats: Option<crate::export::shared::Flusher>,
}

#[derive(Debug, Clone)]
pub(crate) struct EngineConfig {
    pub(crate) max_body_bytes: u64,
    /// The most a request waits for another's upstream call at a time.
    pub(crate) coalesce_timeout: Duration,
    /// The deadline for the upstream's response head, and for its whole
    /// body once the head is in (when the body is read to be stored).
    pub(crate) upstream_timeout: Duration,
    pub(crate) hit_for_pass_ttl: Duration,
    pub(crate) refresh_timeout: Duration,
    pub(crate) stale_extension_factor: f64,
    pub(crate) max_stale_extensions: u32,
    pub(crate) tags: TagConfig,
    /// Adaptive TTL (`adaptive_ttl`), when on.
    pub(crate) adaptive: Option<crate::AdaptiveTtl>,
    /// With `distributed_coalescing` on (and an L2 tier), how long a lease
    /// lasts.
    #[cfg(feature = "redis")]
    pub(crate) lease_ttl: Option<Duration>,
}

/// A function that names the tags of a response: it sees the request and
/// the response headers. Installed with
/// [`CacheBuilder::tag_fn`](crate::CacheBuilder::tag_fn).
pub type TagFn = Arc<dyn Fn(&Parts, &HeaderMap) -> Vec<String> + Send + Sync>;

/// Where invalidation tags come from, and their limits (defaults: the
/// builder's `TAG_HEADERS`, `MAX_TAGS_PER_RESPONSE`, `MAX_TAG_BYTES`).
#[derive(Clone)]
pub(crate) struct TagConfig {
    pub(crate) headers: Vec<HeaderName>,
    pub(crate) max_tags: usize,
    pub(crate) max_len: usize,
    pub(crate) func: Option<TagFn>,
}

impl fmt::Debug for TagConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TagConfig")
            .field("headers", &self.headers)
            .field("max_tags", &self.max_tags)
            .field("max_len", &self.max_len)
            .field("func", &self.func.is_some())
            .finish()
    }
}

impl TagConfig {
    /// The tags of a response: from the tag headers (split on spaces and
    /// commas) and the tag function; deduplicated; tags longer than the
    /// limit, and tags beyond the count limit, are dropped.
    pub(crate) fn extract(&self, req: &Parts, headers: &HeaderMap) -> Box<[Box<str>]> {
        let mut tags: Vec<Box<str>> = Vec::new();
        let mut push = |t: &str| self.push(&mut tags, t);
        for name in &self.headers {
            for v in headers.get_all(name) {
                if let Ok(v) = v.to_str() {
                    v.split([' ', ',', '\t']).for_each(&mut push);
                }
            }
        }
        if let Some(f) = &self.func {
            for t in f(req, headers) {
                push(&t);
            }
        }
        tags.into_boxed_slice()
    }

    /// Adds `t`, trimmed, to `tags` if it is a tag (printable ASCII, no
    /// space, within the length limit), new, and the count limit allows.
    pub(crate) fn push(&self, tags: &mut Vec<Box<str>>, t: &str) {
        let t = t.trim();
        if !t.is_empty()
            && t.len() <= self.max_len
            && tags.len() < self.max_tags
            && t.bytes().all(|b| b.is_ascii_graphic())
            && !tags.iter().any(|x| &**x == t)
        {
            tags.push(t.into());
        }
    }
}

/// How many stored responses an invalidation removed, per tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Invalidated {
    /// Entries removed from this instance's L1.
    pub l1: u64,
    /// Keys removed from L2 (0 without an L2 tier).
    pub l2: u64,
}

/// What a bulk invalidation removes: the entries carrying a tag, or those
/// whose URL path (or, for a value cache's prefix, readable key: see
/// [`Entry::matches_prefix`]) starts with a prefix.
#[derive(Clone, Copy)]
pub(crate) enum Purge<'a> {
    Tag(&'a str),
    Prefix(&'a str),
}

impl Purge<'_> {
    fn matches(self, e: &Entry) -> bool {
        match self {
            Purge::Tag(tag) => e.tags.iter().any(|t| &**t == tag),
            Purge::Prefix(prefix) => e.matches_prefix(prefix),
        }
    }

    /// Whether it names a value cache's entries (their tags and prefixes
    /// carry [`VALUE_SCOPE`](crate::entry::VALUE_SCOPE), which no HTTP
    /// tag or path holds).
    fn names_values(self) -> bool {
        let (Purge::Tag(s) | Purge::Prefix(s)) = self;
        s.contains(crate::entry::VALUE_SCOPE)
    }
}

/// What the adapter should do with a request. Every answer carries the
/// request's typed [`Status`]: the adapter reports it (`Lookup::finish_*`);
/// `Cache-Status` is already rendered from it.
pub(crate) enum Decision<B: Body> {
    /// Answer now (stale for `only-if-cached`, 504 for `only-if-cached`).
    Respond(Response<CacheBody<B>>, Status),
    /// A fresh L1 hit (or a 304 from it), decided at `now`: `Status::HIT_L1`.
    Hit(Response<CacheBody<B>>, u64),
    /// Answer now with this stale entry and refresh it in the background.
    Stale(Response<CacheBody<B>>, Box<Fetch>, Status),
    /// Forward unchanged, adding this status.
    Pass(Status),
    /// Forward an unsafe method; invalidate on success.
    Unsafe,
    /// Call the upstream (coalesced), store, answer.
    Fetch(Box<Fetch>),
    /// Answer now with this fresh entry, and refresh it early in the
    /// background (eager refresh of a hot key).
    Refresh(Response<CacheBody<B>>, Box<Fetch>, Status),
}

/// How [`Cache::judge`] answered a request from a found entry, with the
/// answer's status.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Answered<B: Body> {
    /// A fresh hit.
    Hit(Response<CacheBody<B>>, u64, Status),
    /// An answer without a refresh (a stale entry, `only-if-cached`).
    Respond(Response<CacheBody<B>>, Status),
    /// A stale answer; refresh in the background.
    Stale(Response<CacheBody<B>>, Box<Fetch>, Status),
    /// A fresh answer; refresh early in the background.
    Refresh(Response<CacheBody<B>>, Box<Fetch>, Status),
}

impl<B: Body> Answered<B> {
    /// A fresh answer: a hit, or with `refresh`, a hit whose entry is
    /// refreshed early in the background.
    pub(crate) fn fresh(
        resp: Response<CacheBody<B>>,
        status: Status,
        now: u64,
        refresh: Option<Box<Fetch>>,
    ) -> Self {
        match refresh {
            Some(plan) => Answered::Refresh(resp, plan, status),
            None => Answered::Hit(resp, now, status),
        }
    }

    /// The response, with its status in its extensions (what the engine's
    /// futures report from), and the refresh to start, if any.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn into_marked(self) -> (Response<CacheBody<B>>, Option<Box<Fetch>>) {
        let (mut resp, status, refresh) = match self {
            Answered::Hit(resp, _, status) | Answered::Respond(resp, status) => {
                (resp, status, None)
            }
            Answered::Stale(resp, plan, status) | Answered::Refresh(resp, plan, status) => {
                (resp, status, Some(plan))
            }
        };
        resp.extensions_mut().insert(status);
        (resp, refresh)
    }
}

impl<B: Body> From<Answered<B>> for Decision<B> {
    fn from(a: Answered<B>) -> Self {
        match a {
            // A fresh hit decided synchronously is always an L1 hit.
            Answered::Hit(resp, now, _) => Decision::Hit(resp, now),
            Answered::Respond(resp, status) => Decision::Respond(resp, status),
            Answered::Stale(resp, plan, status) => Decision::Stale(resp, plan, status),
            Answered::Refresh(resp, plan, status) => Decision::Refresh(resp, plan, status),
        }
    }
}

/// `Age` and `Cache-Status` of a hit on an entry read from L2 for this
/// answer alone, whose response got no header map yet
/// ([`Cache::respond_entry_as`]).
#[derive(Debug)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct HitSlots {
    age: HeaderValue,
    status: HeaderValue,
}

#[cfg_attr(not(feature = "redis"), allow(dead_code))]
impl HitSlots {
    /// Gives `resp` its header map, once nothing else may need `entry`
    /// (its flight is over): when this is the last reference, the entry's
    /// own map, decoded with room for the two fields, becomes the
    /// response's, so that an L2 hit builds one header map, not two.
    /// Otherwise (waiters hold it, L1 promoted it, a refresh keeps it as
    /// its prior) a map is built from it, as for any hit.
    ///
    /// A map taken over keeps the stored order, with `Age` and
    /// `Cache-Status` after the stored fields (in place of stored ones of
    /// those names); a built map puts them first. The order of fields of
    /// different names carries no meaning (RFC 9110 §5.3).
    pub(crate) fn fill<B>(self, resp: &mut Response<B>, entry: Arc<Entry>) {
        *resp.headers_mut() = match Arc::try_unwrap(entry) {
            Ok(mut entry) => {
                let mut headers = std::mem::take(&mut entry.headers);
                headers.insert(AGE, self.age);
                headers.insert(CACHE_STATUS.clone(), self.status);
                headers
            }
            Err(shared) => shared.build_response_headers(self.age, self.status),
        };
    }
}

/// The plan for an upstream call.
#[derive(Debug)]
pub(crate) struct Fetch {
    pub(crate) key: KeyHash,
    pub(crate) directives: RequestDirectives,
    pub(crate) route: Option<usize>,
    /// The stored entry, if any: revalidated, or served on error.
    pub(crate) prior: Option<Arc<Entry>>,
    /// Send the prior entry's validators.
    pub(crate) revalidate: bool,
    /// The `fwd` parameter of `Cache-Status`.
    pub(crate) fwd: Fwd,
    pub(crate) head: bool,
    pub(crate) coalesce: bool,
    /// A background refresh: counts as refresh, not as a request outcome.
    pub(crate) background: bool,
    /// Look in L2 before calling the upstream.
    pub(crate) l2_lookup: bool,
    /// The tier the prior entry was found in.
    pub(crate) tier: Tier,
    /// The request's label.
    pub(crate) label: u16,
}

impl Fetch {
    /// This plan as the background refresh of `entry` (found in `tier`):
    /// the refresh serves everyone, so it is judged by the origin's answer,
    /// not by this client's directives (say, `no-store`); `Authorization`
    /// still counts.
    pub(crate) fn into_refresh(mut self, entry: Arc<Entry>, tier: Tier) -> Box<Fetch> {
        self.directives = RequestDirectives {
            authorized: self.directives.authorized,
            ..RequestDirectives::default()
        };
        self.revalidate = entry.has_validators();
        self.prior = Some(entry);
        self.tier = tier;
        self.head = false;
        self.background = true;
        Box::new(self)
    }

    /// Counts one of this request's outcomes: a background refresh is not
    /// a request and counts only as a refresh.
    pub(crate) fn count(&self, counter: &crate::stats::Counter) {
        if !self.background {
            counter.incr();
        }
    }
}

impl Cache {
    /// Starts building a cache.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    /// A snapshot of the counters and tier sizes.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        let now = s.clock.now_millis();
        // Fresh L1 hits are counted under their label when observability
        // is on, globally when it is off (see `decide`); hits of L2
        // entries promoted on the async path are counted globally too.
        let labels = s.obs.read_labels();
        let labelled_l1_hits = labels.totals[crate::observe::labels::field::HIT_L1];
        let mut stats = Stats::from_counters(&s.counters, labelled_l1_hits);
        self.tiers_and_breakers_into(&mut stats, now);
        self.observe_into(&mut stats, now, &labels);
        self.l2_into(&mut stats, now);
        stats.sum_requests();
        stats.compute_ratio();
        stats
    }

    /// L2 writes (entries, and deletes of invalidated keys) queued and not
    /// yet done or dropped (0 without an L2 tier): 0 means every entry
    /// stored so far has reached Redis or was counted in
    /// `l2_writes_dropped`, and every invalidation was applied to Redis
    /// (tests, graceful shutdown).
    pub fn l2_pending_writes(&self) -> u64 {
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.shared.tiers.l2 {
            return l2.pending_writes();
        }
        0
    }

    /// Sets the request counters, per-label stats, latency histograms and
    /// the rolling window back to zero (tier sizes are unaffected).
    pub fn reset_stats(&self) {
        let reset = || {
            self.shared.counters.reset();
            self.shared.obs.reset();
        };
        // Shared stats in Redis are not reset: what was counted since the
        // last flush is still added to them.
        #[cfg(feature = "redis")]
        self.reset_keeping_shared(reset);
        #[cfg(not(feature = "redis"))]
        reset();
    }

    /// Records a request dropped before its answer on the engine's path.
    pub(crate) fn cancelled(&self, label: u16, span: &tracing::Span) {
        self.shared.counters.cancelled.incr();
        let obs = &self.shared.obs;
        if obs.cfg.enabled {
            obs.labels
                .counters(label)
                .add(crate::observe::labels::field::CANCELLED, 1);
            if !span.is_disabled() {
                span.record("cache.result", "cancelled");
            }
        }
    }

    /// Records a finished request: per-label counters, latency, window,
    /// metrics, the span's fields and (when configured) log events.
    #[allow(clippy::too_many_arguments)] // one call per request path; a struct would only rename them
    pub(crate) fn finish(
        &self,
        label: u16,
        outcome: &Outcome,
        start: u64,
        span: &tracing::Span,
        status: Option<StatusCode>,
        key: Option<&str>,
        now: Option<u64>,
    ) {
        let obs = &self.shared.obs;
        if !obs.cfg.enabled {
            return;
        }
        let elapsed = (start != 0).then(|| obs.elapsed_ns(start));
        let now = now.unwrap_or_else(|| self.shared.clock.now_millis());
        let summary = obs.record(label, outcome, elapsed, now);
        if !span.is_disabled() {
            span.record("cache.result", outcome.result.as_str());
            span.record("cache.tier", outcome.tier.as_str());
            span.record("cache.label", &*obs.labels.name(label));
            span.record("cache.coalesced", outcome.coalesced);
            if let Some(t) = outcome.ttl_secs {
                span.record("cache.ttl_remaining_ms", t.saturating_mul(1000));
            }
            if let Some(s) = status {
                span.record("http.response.status_code", i64::from(s.as_u16()));
            }
            if let Some(key) = key {
                span.record("cache.key", crate::observe::labels::truncate(key, 200));
            }
        }
        if obs.cfg.log == LogLevel::Detailed {
            tracing::debug!(
                target: "tower_tiered_cache",
                label = %obs.labels.name(label),
                key = key.unwrap_or(""),
                result = outcome.result.as_str(),
                tier = outcome.tier.as_str(),
                coalesced = outcome.coalesced,
                ttl_remaining_ms = outcome.ttl_secs.map(|t| t.saturating_mul(1000)),
                elapsed_us = elapsed.map(|e| e / 1000),
                status_code = status.map(|s| s.as_u16()),
                "cache lookup"
            );
        }
        if summary {
            self.log_summary();
        }
    }

    /// The worst state of the upstream circuit breakers (one per label):
    /// open if any is open, else half-open if any is probing, else closed.
    /// [`upstream_breakers`](Self::upstream_breakers) names them.
    pub fn breaker_state(&self) -> BreakerState {
        self.shared.breakers.worst(self.shared.clock.now_millis())
    }

    /// Removes the stored responses (every variant) for the URL of `req`.
    /// Returns whether anything was stored.
    pub fn invalidate<B>(&self, req: &Request<B>) -> bool {
        let uri = crate::key::original_uri(req.extensions()).unwrap_or(req.uri());
        self.invalidate_parts(&get_view(uri, req.headers()))
    }

    /// Removes the stored responses for a readable cache key (as shown by
    /// [`Entry::key`], or as returned by a custom key function), in every
    /// tier. Returns whether this instance's L1 held it.
    ///
    /// Entries in a credentials partition
    /// ([`partition_by_credentials`](CacheBuilder::partition_by_credentials))
    /// are keyed by the whole credentials digest, of which their readable
    /// key shows only half: reach them with [`invalidate`](Self::invalidate)
    /// (a request with the same credentials), a prefix, a tag or
    /// [`clear`](Self::clear).
    pub fn invalidate_key(&self, key: &str) -> bool {
        self.invalidate_hash(KeyHash(xxhash_rust::xxh3::xxh3_128(key.as_bytes())))
    }

    pub(crate) fn invalidate_parts(&self, parts: &Parts) -> bool {
        let removed = match self.shared.keys.hash(parts) {
            Some(key) => self.invalidate_hash(key),
            None => false,
        };
        // A stored part of the URL goes too (`flow::partial`), after the
        // complete response.
        if let Some((part, _)) = crate::flow::part_key(self, parts) {
            self.invalidate_hash(part);
        }
        removed
    }

    pub(crate) fn invalidate_hash(&self, key: KeyHash) -> bool {
        self.shared.tiers.note_invalidated(Scope::Key(key));
        let removed = self.shared.tiers.l1.remove(key);
        self.shared.hit_for_pass.remove(&key);
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.shared.tiers.l2 {
            // Off the request path; without a runtime there is nothing to run it on.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                // Until the DEL lands, a read of the key here is a miss
                // (as it is in L1 at once).
                l2.note_invalidated(key);
                l2.begin_delete(key);
                let l2 = Arc::clone(l2);
                let shared = Arc::clone(&self.shared);
                handle.spawn(async move {
                    let deleted = l2.delete_and_announce(vec![key]).await;
                    l2.end_delete(key);
                    // Counted once, whichever tiers held it.
                    if !removed && deleted > 0 {
                        shared.counters.invalidations.incr();
                    }
                });
            }
        }
        if removed {
            self.shared.counters.invalidations.incr();
        }
        removed
    }

    /// Removes every stored response carrying `tag` (from `Surrogate-Key`,
    /// `Cache-Tag` or the tag function), in every tier, and tells the
    /// other instances. Typed values are not responses: a value cache
    /// removes its own (`ValueCache::invalidate_tag`).
    pub async fn invalidate_tag(&self, tag: &str) -> Invalidated {
        self.purge_http(Purge::Tag(tag)).await
    }

    /// Removes every stored response whose URL path starts with
    /// `path_prefix`, in every tier (L2 is scanned with `SCAN`, off the
    /// request path), and tells the other instances. Typed values are not
    /// responses: a value cache removes its own
    /// (`ValueCache::invalidate_prefix`).
    pub async fn invalidate_prefix(&self, path_prefix: &str) -> Invalidated {
        self.purge_http(Purge::Prefix(path_prefix)).await
    }

    /// A purge of HTTP entries: one naming a value cache's (a tag or path
    /// with a control character, which no HTTP tag or path has) removes
    /// nothing; value caches purge through their own methods.
    async fn purge_http(&self, what: Purge<'_>) -> Invalidated {
        if what.names_values() {
            return Invalidated::default();
        }
        self.purge(what).await
    }

    /// Removes what `what` names from L1, then from L2 (which tells the
    /// other instances); L1's removals are counted as invalidations.
    pub(crate) async fn purge(&self, what: Purge<'_>) -> Invalidated {
        self.shared.tiers.note_invalidated(Scope::Unlisted);
        #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
        let mut out = Invalidated {
            l1: self.shared.tiers.l1.remove_where(|e| what.matches(e)),
            l2: 0,
        };
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.shared.tiers.l2 {
            out.l2 = match what {
                Purge::Tag(tag) => l2.invalidate_tag(tag).await,
                Purge::Prefix(prefix) => l2.invalidate_prefix(prefix).await,
            };
        }
        self.shared.counters.invalidations.add(out.l1);
        out
    }

    /// Drops every stored response in every tier (L2: everything under the
    /// namespace) and tells the other instances.
    pub async fn clear(&self) -> Invalidated {
        #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
        let mut out = Invalidated {
            l1: self.shared.tiers.l1.len() as u64,
            l2: 0,
        };
        self.shared.tiers.note_invalidated(Scope::All);
        self.shared.tiers.l1.clear();
        self.shared.hit_for_pass.clear();
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.shared.tiers.l2 {
            out.l2 = l2.clear().await;
        }
        out
    }

    /// The readable key of a request, made only when a span or the
    /// detailed log will show it.
    pub(crate) fn key_for_display(&self, parts: &Parts, span: &tracing::Span) -> Option<String> {
        if span.is_disabled() && self.shared.obs.cfg.log != LogLevel::Detailed {
            return None;
        }
        self.shared.keys.readable(parts)
    }

    pub(crate) fn now(&self) -> u64 {
        self.shared.clock.now_millis()
    }

    /// Decides what to do with a request, answering it at once when L1 can.
    pub(crate) fn decide<B: Body>(
        &self,
        parts: &Parts,
        label: u16,
        span: &tracing::Span,
    ) -> Decision<B> {
        let s = &*self.shared;
        let (key, route) = match self.classify(parts) {
            Ok(looked_up) => looked_up,
            Err(decision) => {
                s.counters.passes.incr();
                return decision;
            }
        };
        let mut directives = RequestDirectives::from_headers(&parts.headers);
        if s.policy.ignores_request_cc() {
            directives.cc = Default::default();
        }
        let now = s.clock.now_millis();
        let (found, fwd) = match s
            .tiers
            .lookup_hit(key, &parts.headers, directives.plain(), now)
        {
            L1Lookup::Found(e) => (Some(e), Fwd::Stale),
            L1Lookup::Miss { fwd } => (None, fwd),
        };
        if let Some(hot) = &s.hot {
            self.after_read(hot, key, parts, found.is_none());
        }
        if let Some(entry) = &found {
            // The common answer, a fresh L1 hit with no eager refresh due,
            // made without the plan an upstream call would need.
            if let Some(hit) = self.fresh_l1_hit(entry, key, parts, &directives, now, span) {
                return hit;
            }
        }
        let mut plan = Fetch {
            key,
            directives,
            route,
            prior: None,
            revalidate: false,
            fwd,
            head: parts.method == Method::HEAD,
            coalesce: true,
            background: false,
            l2_lookup: false,
            tier: Tier::L1,
            label,
        };
        if let Some(entry) = found {
            plan = match self.judge(entry, Tier::L1, parts, plan, now, span) {
                Ok(answered) => return answered.into(),
                Err(plan) => plan,
            };
        }
        self.nothing_usable_in_l1(plan, now)
    }

    /// Whether a request is looked up at all: its key and its route rule,
    /// or (`Err`) what to do instead: forward an unsafe method, pass other
    /// methods, bypass routes and requests without a key.
    // The decision goes straight back to the adapter; boxing it would cost
    // every pass an allocation.
    #[allow(clippy::result_large_err)]
    #[inline]
    fn classify<B: Body>(&self, parts: &Parts) -> Result<(KeyHash, Option<usize>), Decision<B>> {
        let s = &*self.shared;
        if !PolicyConfig::lookup_method(&parts.method) {
            // RFC 9111 §4.4: every method not known to be safe, extension
            // methods (`M-SEARCH`, `PROPPATCH`, …) included.
            let unsafe_method = !matches!(parts.method, Method::OPTIONS | Method::TRACE);
            return Err(if unsafe_method {
                Decision::Unsafe
            } else {
                Decision::Pass(Status::METHOD)
            });
        }
        let route = self.route_of(crate::key::key_uri(parts).path());
        if route.is_some_and(|i| s.policy.routes[i].bypass) {
            return Err(Decision::Pass(Status::BYPASS));
        }
        match s.keys.hash(parts) {
            Some(key) => Ok((key, route)),
            None => Err(Decision::Pass(Status::BYPASS)),
        }
    }

    /// The route rule for `path`, if any.
    #[inline]
    pub(crate) fn route_of(&self, path: &str) -> Option<usize> {
        let routes = &self.shared.policy.routes;
        if routes.is_empty() {
            return None;
        }
        routes.iter().position(|r| r.matches(path))
    }

    /// L1 had nothing this request may use as it is: L2 is read (by the
    /// flight's leader) whatever the request's directives (a `no-cache`
    /// request needs its validators); without L2, `only-if-cached` is a
    /// 504 and a key marked hit-for-pass passes; a `Range` of something
    /// not stored complete goes to `flow::partial` alone (no flight);
    /// everything else is fetched.
    fn nothing_usable_in_l1<B: Body>(&self, mut plan: Fetch, now: u64) -> Decision<B> {
        let s = &*self.shared;
        plan.l2_lookup = s.tiers.has_l2();
        if plan.directives.cc.only_if_cached && !plan.l2_lookup {
            return Decision::Respond(self.unavailable(), Status::ONLY_IF_CACHED);
        }
        if plan.prior.is_none() && plan.directives.range {
            // A range of something not stored complete: fetching it whole
            // could mean downloading a huge file for a few bytes. A stored
            // part may answer it, or it goes upstream as it is
            // (`flow::partial`); it never waits on a flight.
            plan.coalesce = false;
            return Decision::Fetch(Box::new(plan));
        }
        if plan.prior.is_none() && !s.cfg.hit_for_pass_ttl.is_zero() {
            if let Some(until) = s.hit_for_pass.get(&plan.key) {
                if now < until {
                    s.counters.passes.incr();
                    return Decision::Pass(Status::HIT_FOR_PASS);
                }
                s.hit_for_pass.remove(&plan.key);
            }
        }
        plan.coalesce = !plan.directives.cc.no_store;
        Decision::Fetch(Box::new(plan))
    }

    /// Counts a request answered from a stored entry that a cache tier
    /// held (`fresh`, or stale within its window; from L2 when `l2`) and
    /// gives its `Cache-Status`: one place for every way an entry is found
    /// (its own look-up, or the flight it waited on).
    pub(crate) fn tier_hit_status(&self, fresh: bool, l2: bool, entry: &Entry, now: u64) -> Status {
        let s = &*self.shared;
        let tier = if l2 { Detail::L2 } else { Detail::L1 };
        if !fresh {
            s.counters.stale.incr();
            let staleness = now
                .saturating_sub(entry.timeline.fresh_until)
                .div_ceil(1000);
            return Status::hit(tier, Some(staleness));
        }
        if l2 {
            s.counters.hits_l2.incr();
            return Status::HIT_L2;
        }
        if !s.obs.cfg.enabled {
            // With observability on, the label's counter is the count (one
            // atomic add per hit, not two).
            s.counters.hits_l1.incr();
        }
        Status::HIT_L1
    }

    /// Judges an entry found for a request, whatever tier it came from:
    /// answers it (fresh; stale within its window, with a background
    /// refresh; eager refresh), or returns the plan for an upstream call
    /// with the entry as its prior (revalidated with its validators, kept
    /// for stale-if-error). An L2 entry that answers is promoted to L1 by
    /// the promotion rules.
    // The plan moves in and out by value: boxing it would cost the fresh
    // L1 hit (the hot path) an allocation.
    #[allow(clippy::result_large_err)]
    pub(crate) fn judge<B: Body>(
        &self,
        entry: Arc<Entry>,
        tier: Tier,
        parts: &Parts,
        mut plan: Fetch,
        now: u64,
        span: &tracing::Span,
    ) -> Result<Answered<B>, Fetch> {
        let s = &*self.shared;
        plan.fwd = Fwd::Stale;
        match s.policy.usability(&entry, &plan.directives, now) {
            Usability::Fresh => return Ok(self.fresh_answer(entry, tier, parts, plan, now, span)),
            Usability::Stale => {
                let status = self.tier_hit_status(false, tier != Tier::L1, &entry, now);
                entry.reads.note(s.obs.cfg.read_cap);
                let reuse = self.note_served(&entry, tier, parts, &plan, now);
                let asks = &plan.directives;
                let resp = self.respond_entry(&entry, parts, asks, now, &status, reuse);
                if plan.directives.cc.only_if_cached {
                    // The client asked that the origin not be contacted.
                    return Ok(Answered::Respond(resp, status));
                }
                let refresh = plan.into_refresh(entry, tier);
                return Ok(Answered::Stale(resp, refresh, status));
            }
            // Revalidated with its validators, or kept for stale-if-error.
            Usability::Revalidate => plan.revalidate = true,
            Usability::Unusable => plan.revalidate = false,
        }
        plan.prior = Some(entry);
        plan.tier = tier;
        let d = &plan.directives.cc;
        if d.no_cache || d.max_age.is_some() || d.min_fresh.is_some() {
            plan.fwd = Fwd::Request;
        }
        Err(plan)
    }

    /// A fresh entry answers; a hot one (read often, near the end of its
    /// freshness: `eager_refresh`) is refreshed early in the background.
    #[inline]
    fn fresh_answer<B: Body>(
        &self,
        entry: Arc<Entry>,
        tier: Tier,
        parts: &Parts,
        plan: Fetch,
        now: u64,
        span: &tracing::Span,
    ) -> Answered<B> {
        let (resp, status, refresh, _) = self.serve_fresh(
            &entry,
            plan.key,
            tier,
            parts,
            &plan.directives,
            plan.prior.as_ref(),
            now,
            span,
            false,
        );
        let refresh = refresh.then(|| plan.into_refresh(entry, tier));
        Answered::fresh(resp, status, now, refresh)
    }

    /// [`fresh_answer`](Self::fresh_answer) for an entry L1 found, without
    /// a plan: `None` when the entry is not fresh for the request or an
    /// eager refresh may be due (the general path then judges it, with
    /// the same result).
    #[inline]
    fn fresh_l1_hit<B: Body>(
        &self,
        entry: &Arc<Entry>,
        key: KeyHash,
        parts: &Parts,
        directives: &RequestDirectives,
        now: u64,
        span: &tracing::Span,
    ) -> Option<Decision<B>> {
        let s = &*self.shared;
        if s.obs.cfg.eager_fraction > 0.0
            || s.policy.usability(entry, directives, now) != Usability::Fresh
        {
            return None;
        }
        let (resp, _, refresh, _) = self.serve_fresh(
            entry,
            key,
            Tier::L1,
            parts,
            directives,
            None,
            now,
            span,
            false,
        );
        debug_assert!(!refresh, "no eager refresh without eager_fraction");
        Some(Decision::Hit(resp, now))
    }

    /// [`fresh_answer`](Self::fresh_answer) for an entry the leader of a
    /// flight read from L2, leaving the response's header map to be made
    /// last ([`HitSlots::fill`]), from the entry's own once the flight
    /// is over: `None` when the entry is not fresh for the request (it is
    /// then judged by [`judge`](Self::judge)). Also returns the hit's
    /// status and whether an eager refresh is due (claimed).
    #[allow(clippy::type_complexity)]
    #[cfg(feature = "redis")]
    pub(crate) fn fresh_l2_hit<B: Body>(
        &self,
        entry: &Arc<Entry>,
        tier: Tier,
        parts: &Parts,
        plan: &Fetch,
        now: u64,
        span: &tracing::Span,
    ) -> Option<(Response<CacheBody<B>>, Status, bool, Option<HitSlots>)> {
        if self.shared.policy.usability(entry, &plan.directives, now) != Usability::Fresh {
            return None;
        }
        let prior = plan.prior.as_ref();
        let (key, asks) = (plan.key, &plan.directives);
        Some(self.serve_fresh(entry, key, tier, parts, asks, prior, now, span, true))
    }

    /// What every fresh answer does: its status and counters, its span's
    /// field, its read, its promotion (an L2 entry), and its response; and
    /// whether an eager refresh is due (claimed). With `defer`, a response
    /// whose header map would be built from an entry that lives nowhere
    /// else is left without headers, and their slots are returned
    /// ([`respond_entry_as`](Self::respond_entry_as)).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn serve_fresh<B: Body>(
        &self,
        entry: &Arc<Entry>,
        key: KeyHash,
        tier: Tier,
        parts: &Parts,
        directives: &RequestDirectives,
        prior: Option<&Arc<Entry>>,
        now: u64,
        span: &tracing::Span,
        defer: bool,
    ) -> (Response<CacheBody<B>>, Status, bool, Option<HitSlots>) {
        let s = &*self.shared;
        let status = self.tier_hit_status(true, tier != Tier::L1, entry, now);
        if !span.is_disabled() {
            span.record(
                "cache.ttl_remaining_ms",
                entry.timeline.fresh_until.saturating_sub(now) as i64,
            );
        }
        let cfg = &s.obs.cfg;
        let eager = cfg.eager_fraction > 0.0;
        let reads = entry.reads.note(cfg.read_cap);
        let reuse = self.served(key, entry, tier, prior, &parts.headers, now);
        let (resp, slots) =
            self.respond_entry_as(entry, parts, directives, now, &status, reuse, defer);
        let refresh = eager
            && reads >= cfg.eager_min_reads
            && !directives.cc.only_if_cached
            && (entry.timeline.fresh_until.saturating_sub(now) as f64)
                < cfg.eager_fraction * entry.timeline.ttl_millis() as f64
            && entry.reads.claim_refresh();
        (resp, status, refresh, slots)
    }

    /// [`served`](Self::served), for a request's `plan` (its prior is
    /// what the entry replaces).
    fn note_served(
        &self,
        entry: &Arc<Entry>,
        tier: Tier,
        parts: &Parts,
        plan: &Fetch,
        now: u64,
    ) -> bool {
        let prior = plan.prior.as_ref();
        self.served(plan.key, entry, tier, prior, &parts.headers, now)
    }

    /// An entry of `key` from `tier` answers (a request, or a typed
    /// value's lookup): an L2 entry is promoted to L1 when the admission
    /// rule allows (at once when it `replaces` an older L1 copy the rule's
    /// size admits); the reads of a copy L1 does not keep are carried to
    /// its key's count at once (adaptive TTL). Returns whether the entry
    /// lives in L1 (its response template is worth building).
    pub(crate) fn served(
        &self,
        key: KeyHash,
        entry: &Arc<Entry>,
        tier: Tier,
        replaces: Option<&Arc<Entry>>,
        headers: &HeaderMap,
        now: u64,
    ) -> bool {
        let tiers = &self.shared.tiers;
        let in_l1 = tiers.admit_served(key, entry, tier, replaces, headers, now);
        if !in_l1 {
            tiers.carry_reads(key, entry, now);
        }
        in_l1
    }

    /// The 504 for an `only-if-cached` request with nothing stored.
    pub(crate) fn unavailable<B: Body>(&self) -> Response<CacheBody<B>> {
        self.shared.counters.unavailable.incr();
        let mut resp = Response::new(CacheBody::empty());
        *resp.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        resp.headers_mut()
            .insert(CACHE_STATUS.clone(), STATUS_ONLY_IF_CACHED);
        resp.extensions_mut().insert(Status::ONLY_IF_CACHED);
        resp
    }

    /// Remembers that `key`'s responses cannot be stored, for a while.
    pub(crate) fn mark_hit_for_pass(&self, key: KeyHash) {
        let ttl = self.shared.cfg.hit_for_pass_ttl;
        if !ttl.is_zero() {
            let until = self.now().saturating_add(ttl.as_millis() as u64);
            self.shared.hit_for_pass.insert(key, until);
        }
    }

    /// Builds the response for `entry`: a 304 when the request's
    /// conditionals match, a 206 or 416 for its `Range`, no body for
    /// `HEAD`, `Age` and `Cache-Status`.
    /// `reuse` says whether the entry will answer again (it lives in L1).
    /// An entry read from L2 for one answer gets its response headers built
    /// directly, without a template.
    pub(crate) fn respond_entry<B: Body>(
        &self,
        entry: &Entry,
        req: &Parts,
        asks: &RequestDirectives,
        now: u64,
        status: &Status,
        reuse: bool,
    ) -> Response<CacheBody<B>> {
        self.respond_entry_as(entry, req, asks, now, status, reuse, false)
            .0
    }

    /// [`respond_entry`](Self::respond_entry); with `defer`, a response
    /// whose headers would be built from an entry used for this answer
    /// alone (`!reuse`, no template) gets none yet: they are returned as
    /// [`HitSlots`], to be made last, from the entry's own map if nothing
    /// else holds the entry by then.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn respond_entry_as<B: Body>(
        &self,
        entry: &Entry,
        req: &Parts,
        asks: &RequestDirectives,
        now: u64,
        status: &Status,
        reuse: bool,
        defer: bool,
    ) -> (Response<CacheBody<B>>, Option<HitSlots>) {
        let head = req.method == Method::HEAD;
        let status = status.header();
        if asks.conditional
            && crate::policy::conditional::not_modified(
                entry.status,
                &entry.headers,
                &req.headers,
                now,
            )
        {
            self.shared.counters.not_modified.incr();
            let mut headers = HeaderMap::with_capacity(10);
            for name in [
                CACHE_CONTROL,
                CONTENT_LOCATION,
                DATE,
                ETAG,
                EXPIRES,
                VARY,
                LAST_MODIFIED,
            ] {
                for v in entry.headers.get_all(&name) {
                    headers.append(name.clone(), v.clone());
                }
            }
            headers.insert(AGE, age_value(entry.timeline.age_at(now) / 1000));
            headers.insert(CACHE_STATUS.clone(), status);
            let mut resp = Response::new(CacheBody::empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            *resp.headers_mut() = headers;
            return (resp, None);
        }
        let age = age_value(entry.timeline.age_at(now) / 1000);
        if asks.range {
            let len = entry.body.len() as u64;
            let ranged = range::evaluate(
                &req.method,
                &req.headers,
                entry.status,
                &entry.headers,
                len,
                now,
            );
            if let Some(resp) = ranged_response(entry, ranged, 0, age.clone(), status.clone()) {
                return (resp, None);
            }
        }
        let mut slots = None;
        let headers = if !reuse && entry.template.get().is_none() {
            if defer {
                slots = Some(HitSlots { age, status });
                HeaderMap::new()
            } else {
                entry.build_response_headers(age, status)
            }
        } else {
            // Overwrite the template's slots in place: `insert` would
            // reserve room first, and a clone has none to spare.
            let mut headers = entry.response_headers().clone();
            crate::entry::set_hit_slots(&mut headers, age, status);
            headers
        };
        let body = if head {
            CacheBody::empty()
        } else {
            CacheBody::full(entry.body.clone())
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = entry.status;
        *resp.version_mut() = entry.version;
        *resp.headers_mut() = headers;
        (resp, slots)
    }

    /// The entry with its stale windows extended after an upstream failure,
    /// or `None` when it may not be extended further.
    pub(crate) fn extended(&self, entry: &Entry) -> Option<Entry> {
        self.extended_within(entry, self.shared.cfg.max_stale_extensions)
    }

    /// [`extended`](Self::extended), at most `max` times in all (a value
    /// cache's own bound).
    pub(crate) fn extended_within(&self, entry: &Entry, max: u32) -> Option<Entry> {
        let cfg = &self.shared.cfg;
        if entry.flags.must_revalidate
            || entry.extensions >= max
            || cfg.stale_extension_factor == 0.0
        {
            return None;
        }
        let ext = (entry.timeline.ttl_millis() as f64 * cfg.stale_extension_factor) as u64;
        if ext == 0 {
            return None;
        }
        let now = self.now();
        let mut e = entry.clone();
        let tl = &mut e.timeline;
        tl.stale_until = tl.stale_until.max(now).saturating_add(ext);
        if tl.stale_if_error_until > tl.fresh_until {
            tl.stale_if_error_until = tl.stale_if_error_until.max(now).saturating_add(ext);
        }
        tl.retain_until = tl
            .retain_until
            .max(tl.stale_until)
            .max(tl.stale_if_error_until);
        e.extensions += 1;
        Some(e)
    }
}

/// A `206` with the part of `entry`'s body `ranged` names, or a `416`
/// (RFC 9110 §14.4, §15.3.7, §15.5.17); `None` for the whole response.
/// `first`: the position in the representation of the body's first byte
/// (0, or where a stored part starts; the caller has checked the range
/// lies within the body).
pub(crate) fn ranged_response<B: Body>(
    entry: &Entry,
    ranged: Ranged,
    first: u64,
    age: HeaderValue,
    status: HeaderValue,
) -> Option<Response<CacheBody<B>>> {
    let (code, content_range, body) = match ranged {
        Ranged::Whole => return None,
        Ranged::Part { start, end, len } => (
            StatusCode::PARTIAL_CONTENT,
            format!("bytes {start}-{end}/{len}"),
            entry
                .body
                .slice((start - first) as usize..=(end - first) as usize),
        ),
        Ranged::Unsatisfiable { len } => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("bytes */{len}"),
            bytes::Bytes::new(),
        ),
    };
    let mut headers = entry.build_response_headers(age, status);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Ok(v) = HeaderValue::from_str(&content_range) {
        headers.insert(CONTENT_RANGE, v);
    }
    let mut resp = Response::new(CacheBody::full(body));
    *resp.status_mut() = code;
    *resp.version_mut() = entry.version;
    *resp.headers_mut() = headers;
    Some(resp)
}

/// An `Age` value. The first few thousand are made once, from one leaked
/// (bounded, 20 KB) string, so cloning them touches no reference count.
pub(crate) fn age_value(secs: u64) -> HeaderValue {
    const TABLE: u64 = 4096;
    static AGES: OnceLock<Box<[HeaderValue]>> = OnceLock::new();
    let table = AGES.get_or_init(|| {
        let mut all = String::new();
        let mut bounds = Vec::with_capacity(TABLE as usize);
        for i in 0..TABLE {
            let start = all.len();
            all.push_str(&i.to_string());
            bounds.push((start, all.len()));
        }
        let all: &'static str = Box::leak(all.into_boxed_str());
        bounds
            .into_iter()
            .map(|(a, b)| HeaderValue::from_static(&all[a..b]))
            .collect()
    });
    match table.get(secs as usize) {
        Some(v) => v.clone(),
        None => HeaderValue::from(secs),
    }
}

impl Shared {
    /// The upstream breaker of a request's label (`plan.label`). Record a
    /// transport error or a timeout with `record_failure`, a response with
    /// `record_response` (see [`counts_as_down`](crate::breaker::counts_as_down)).
    #[inline]
    pub(crate) fn upstream_breaker(&self, label: u16) -> &crate::breaker::Breaker {
        self.breakers.get(label)
    }
}

impl Cache {
    /// Every upstream circuit breaker that is not closed (open or
    /// half-open), by label, in label order. There is one breaker per
    /// request label (see [`CacheBuilder::circuit_breaker`](crate::CacheBuilder::circuit_breaker)):
    /// transport errors, timeouts and 502/503/504 answers to one label's
    /// requests open that label's breaker only. With per-request
    /// instrumentation off every request is labelled `default`, and one
    /// breaker counts them all.
    ///
    /// ```
    /// let cache = tower_tiered_cache::Cache::builder().build().unwrap();
    /// assert!(cache.upstream_breakers().is_empty());
    /// ```
    pub fn upstream_breakers(&self) -> Vec<crate::UpstreamBreaker> {
        let s = &*self.shared;
        let now = s.clock.now_millis();
        s.breakers
            .not_closed(now)
            .map(|(i, b)| b.status(s.obs.labels.name(i).to_string(), now))
            .collect()
    }

    /// Every upstream breaker that has opened at least once (closed ones
    /// included), by label: the series the metrics report.
    pub(crate) fn upstream_breakers_seen(&self) -> Vec<crate::UpstreamBreaker> {
        let s = &*self.shared;
        let now = s.clock.now_millis();
        let mut out: Vec<crate::UpstreamBreaker> = s
            .breakers
            .ever_opened()
            .map(|(i, b)| b.status(s.obs.labels.name(i).to_string(), now))
            .collect();
        // A breaker not closed has opened; listed above already.
        out.sort_by(|a, b| a.label.cmp(&b.label));
        out
    }
}
