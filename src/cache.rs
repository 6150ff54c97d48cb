//! The engine: [`Cache`] and its [`CacheBuilder`]. It knows nothing about
//! tower; the adapters translate their requests into its calls.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{
    HeaderMap, HeaderName, HeaderValue, AGE, CACHE_CONTROL, CONTENT_LOCATION, DATE, ETAG, EXPIRES,
    LAST_MODIFIED, VARY,
};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use quick_cache::sync::Cache as QuickCache;

use crate::body::CacheBody;
use crate::breaker::{BreakerState, Breakers};
use crate::clock::{Clock, SystemClock};
use crate::coalesce::InFlight;
use crate::entry::Entry;
use crate::error::BuildError;
use crate::key::{KeyConfig, KeyHash, QueryDrop};
use crate::observe::{HealthThresholds, LabelSource, LogLevel, ObserveConfig, Observer, Outcome};
use crate::policy::{
    CacheMode, PolicyConfig, RequestDirectives, Route, SetCookiePolicy, Usability,
};
use crate::stats::{Counters, Stats};
use crate::store::memory::{Found, MemoryStore};

/// The name this cache uses in `Cache-Status` (RFC 9211).
pub const CACHE_STATUS_NAME: &str = "tower-tiered-cache";

/// The `Cache-Status` header name.
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

pub(crate) const STATUS_HIT_L1: HeaderValue =
    HeaderValue::from_static("tower-tiered-cache; hit; detail=l1");
pub(crate) const STATUS_HIT_L2: HeaderValue =
    HeaderValue::from_static("tower-tiered-cache; hit; detail=l2");
pub(crate) const STATUS_BYPASS: HeaderValue =
    HeaderValue::from_static("tower-tiered-cache; fwd=bypass");
pub(crate) const STATUS_METHOD: HeaderValue =
    HeaderValue::from_static("tower-tiered-cache; fwd=method");
pub(crate) const STATUS_RANGE: HeaderValue =
    HeaderValue::from_static("tower-tiered-cache; fwd=uri-miss; detail=range");
pub(crate) const STATUS_HIT_FOR_PASS: HeaderValue =
    HeaderValue::from_static("tower-tiered-cache; fwd=uri-miss; detail=hit-for-pass");
pub(crate) const STATUS_ONLY_IF_CACHED: HeaderValue =
    HeaderValue::from_static("tower-tiered-cache; detail=only-if-cached");

/// Builds a `Cache-Status` value from its parameters.
pub(crate) fn cache_status(params: fmt::Arguments<'_>) -> HeaderValue {
    let s = format!("{CACHE_STATUS_NAME}; {params}");
    HeaderValue::from_str(&s).unwrap_or(STATUS_BYPASS)
}

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
            .field("l1_capacity_bytes", &self.shared.l1.capacity())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) policy: PolicyConfig,
    pub(crate) keys: KeyConfig,
    pub(crate) l1: MemoryStore,
    pub(crate) inflight: InFlight,
    pub(crate) hit_for_pass: QuickCache<KeyHash, u64>,
    /// The upstream circuit breakers, one per label (`upstream_breaker`).
    pub(crate) breakers: Breakers,
    pub(crate) counters: Counters,
    pub(crate) refreshes: Arc<tokio::sync::Semaphore>,
    pub(crate) cfg: EngineConfig,
    pub(crate) obs: Observer,
    #[cfg(feature = "redis")]
    pub(crate) l2: Option<Arc<crate::store::l2::L2>>,
    /// Stats accumulated in Redis (`shared_stats`).
    #[cfg(feature = "redis")]
    pub(crate) shared_stats: Option<crate::observe::shared::Flusher>,
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
    /// Write upstream responses to L1 as well as L2 (always true without L2).
    pub(crate) l1_write_through: bool,
    pub(crate) tags: TagConfig,
}

/// A function that names the tags of a response: it sees the request and
/// the response headers.
pub type TagFn = Arc<dyn Fn(&Parts, &HeaderMap) -> Vec<String> + Send + Sync>;

/// Where invalidation tags come from, and their limits.
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

impl Default for TagConfig {
    fn default() -> Self {
        Self {
            headers: vec![
                HeaderName::from_static("surrogate-key"),
                HeaderName::from_static("cache-tag"),
            ],
            max_tags: 32,
            max_len: 128,
            func: None,
        }
    }
}

impl TagConfig {
    /// The tags of a response: from the tag headers (split on spaces and
    /// commas) and the tag function; deduplicated; tags longer than the
    /// limit, and tags beyond the count limit, are dropped.
    pub(crate) fn extract(&self, req: &Parts, headers: &HeaderMap) -> Box<[Box<str>]> {
        let mut tags: Vec<Box<str>> = Vec::new();
        let mut push = |t: &str| {
            let t = t.trim();
            if !t.is_empty()
                && t.len() <= self.max_len
                && tags.len() < self.max_tags
                && t.bytes().all(|b| b.is_ascii_graphic())
                && !tags.iter().any(|x| &**x == t)
            {
                tags.push(t.into());
            }
        };
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

/// The default [`CacheBuilder::upstream_timeout`].
const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds a [`Cache`]. Every setting has a default; see each method.
#[must_use]
pub struct CacheBuilder {
    clock: Arc<dyn Clock>,
    policy: PolicyConfig,
    keys: KeyConfig,
    l1_capacity: u64,
    l1_max_entry: Option<u64>,
    max_body: u64,
    max_variants: usize,
    coalesce_timeout: Option<Duration>,
    upstream_timeout: Duration,
    max_in_flight: usize,
    hit_for_pass_ttl: Duration,
    hit_for_pass_capacity: usize,
    refresh_timeout: Duration,
    max_refreshes: usize,
    extension_factor: f64,
    max_extensions: u32,
    breaker_threshold: u32,
    breaker_open_for: Duration,
    l1_write_through: bool,
    tags: TagConfig,
    #[cfg(feature = "redis")]
    l2: L2Settings,
    observe: ObserveConfig,
    #[cfg(feature = "opentelemetry")]
    meter: Option<opentelemetry::metrics::Meter>,
}

#[cfg(feature = "redis")]
#[derive(Debug, Clone)]
struct L2Settings {
    target: Option<crate::store::redis::RedisTarget>,
    namespace: String,
    timeout: Duration,
    connect_timeout: Duration,
    breaker_failures: u32,
    breaker_open_for: Duration,
    promote_after: u32,
    promotion_window: Duration,
    write_queue: usize,
    l1_max_ttl: Option<Duration>,
    invalidation_log_len: usize,
    compress_over: Option<usize>,
    shared_stats: Option<Duration>,
}

#[cfg(feature = "redis")]
impl Default for L2Settings {
    fn default() -> Self {
        Self {
            target: None,
            namespace: "ttc".to_owned(),
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_millis(500),
            breaker_failures: 5,
            breaker_open_for: Duration::from_secs(5),
            promote_after: 3,
            promotion_window: Duration::from_secs(60),
            write_queue: 1024,
            l1_max_ttl: None,
            invalidation_log_len: 10_000,
            compress_over: cfg!(feature = "compression").then_some(1024),
            shared_stats: None,
        }
    }
}

impl fmt::Debug for CacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("policy", &self.policy)
            .field("keys", &self.keys)
            .field("l1_capacity", &self.l1_capacity)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl Default for CacheBuilder {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            policy: PolicyConfig::default(),
            keys: KeyConfig::default(),
            l1_capacity: 64 * 1024 * 1024,
            l1_max_entry: None,
            max_body: 1024 * 1024,
            max_variants: 32,
            coalesce_timeout: None,
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            max_in_flight: 10_000,
            hit_for_pass_ttl: Duration::from_secs(10),
            hit_for_pass_capacity: 10_000,
            refresh_timeout: Duration::from_secs(30),
            max_refreshes: 64,
            extension_factor: 0.5,
            max_extensions: 4,
            breaker_threshold: 5,
            breaker_open_for: Duration::from_secs(30),
            l1_write_through: true,
            tags: TagConfig::default(),
            observe: ObserveConfig::default(),
            #[cfg(feature = "opentelemetry")]
            meter: None,
            #[cfg(feature = "redis")]
            l2: L2Settings::default(),
        }
    }
}

impl CacheBuilder {
    /// Where request labels come from (default [`LabelSource::Auto`]: the
    /// axum route template, else the upstream host). Labels break stats
    /// and metrics down by endpoint or service.
    pub fn labels(mut self, source: LabelSource) -> Self {
        self.observe.labels = source;
        self
    }

    /// Labels requests with a function (`None`: `default`).
    pub fn label_fn<F>(self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.labels(LabelSource::Fn(Arc::new(f)))
    }

    /// The most distinct labels kept (default 64, at most 1000); requests
    /// with further labels are counted under `other`.
    pub fn max_labels(mut self, n: usize) -> Self {
        self.observe.max_labels = n;
        self
    }

    /// What the cache logs as `tracing` events (default
    /// [`LogLevel::Minimal`]: warnings only).
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.observe.log = level;
        self
    }

    /// Operations (upstream calls, L2 commands) slower than this are
    /// logged as warnings (default 50 ms).
    pub fn slow_threshold(mut self, threshold: Duration) -> Self {
        self.observe.slow = threshold;
        self
    }

    /// The thresholds [`Cache::health`] judges by.
    pub fn health_thresholds(mut self, thresholds: HealthThresholds) -> Self {
        self.observe.health = thresholds;
        self
    }

    /// Per-request instrumentation: labels, latency histograms, the rolling
    /// window, spans, metrics and per-lookup logs (default on). Off, only
    /// the global counters of [`Cache::stats`] are kept (health then sees
    /// no latency or window).
    pub fn observability(mut self, on: bool) -> Self {
        self.observe.enabled = on;
        self
    }

    /// Times one fresh L1 hit in `n` per thread (default
    /// [`HIT_TIMING_SAMPLE`](crate::observe::HIT_TIMING_SAMPLE); 1 times
    /// every hit). Reading the clock twice costs about a tenth of an L1
    /// hit; hit counts are exact whatever `n`, the sample gives the hit
    /// latency percentiles and mean.
    pub fn hit_timing_sample(mut self, n: u32) -> Self {
        self.observe.hit_sample = n;
        self
    }

    /// The level of the per-request `cache.lookup` span (default DEBUG).
    pub fn span_level(mut self, level: tracing::Level) -> Self {
        self.observe.span_level = level;
        self
    }

    /// Refreshes hot entries in the background before they go stale: an
    /// entry read from L1 at least `min_reads` times is refreshed once
    /// (one upstream call, coalesced with any miss) when less than
    /// `fraction` of its freshness lifetime is left. Off by default
    /// (`fraction` 0).
    pub fn eager_refresh(mut self, fraction: f64, min_reads: u32) -> Self {
        self.observe.eager_fraction = fraction;
        self.observe.eager_min_reads = min_reads;
        self
    }

    /// Reports OpenTelemetry metrics on `meter` (feature `opentelemetry`):
    /// request counters by result, tier and label, stale served,
    /// coalesced, promotions, evictions, refreshes, L2 errors, breaker
    /// opens (read from the cache's counters at collection time), the
    /// upstream breakers by label (`cache.upstream.breaker.state`,
    /// `.opened_at`, `.opens`), L1 gauges, and histograms of lookup,
    /// upstream and L2 operation durations in seconds.
    ///
    /// ```
    /// let cache = tower_tiered_cache::Cache::builder()
    ///     .meter(opentelemetry::global::meter("tower-tiered-cache"))
    ///     .build()
    ///     .unwrap();
    /// # drop(cache);
    /// ```
    #[cfg(feature = "opentelemetry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
    pub fn meter(mut self, meter: opentelemetry::metrics::Meter) -> Self {
        self.meter = Some(meter);
        self
    }

    /// The clock freshness is measured with (default: the system clock).
    /// Tests pass a [`ManualClock`](crate::ManualClock) and move it.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Shared (default; servers, proxies) or private (one client's cache).
    pub fn mode(mut self, mode: CacheMode) -> Self {
        self.policy.mode = mode;
        self
    }

    /// L1 capacity in bytes (default 64 MiB), weighed by body, headers and
    /// key size.
    pub fn l1_capacity_bytes(mut self, bytes: u64) -> Self {
        self.l1_capacity = bytes;
        self
    }

    /// The largest single entry L1 keeps (default: the body cap plus 64 KiB,
    /// at most an eighth of the L1 capacity).
    pub fn l1_max_entry_bytes(mut self, bytes: u64) -> Self {
        self.l1_max_entry = Some(bytes);
        self
    }

    /// Bodies larger than this stream through uncached (default 1 MiB).
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        self.max_body = bytes;
        self
    }

    /// The most variants (`Vary`) kept per URL (default 32), in L1 and in
    /// L2; the oldest is dropped beyond it.
    pub fn max_variants(mut self, n: usize) -> Self {
        self.max_variants = n;
        self
    }

    /// Whether the URI scheme is part of the key (default true).
    pub fn key_scheme(mut self, yes: bool) -> Self {
        self.keys.scheme = yes;
        self
    }

    /// Whether the authority (or `Host`) is part of the key (default true).
    ///
    /// Turn it off only when the inner service cannot tell hosts apart:
    /// one upstream, whose answers do not depend on the host the client
    /// asked for. A proxy keyed without the authority must not forward the
    /// client's `Host` in any form (`Host`, `X-Forwarded-Host`,
    /// `Forwarded: host=`): one request with `Host: evil.example` would
    /// decide the links and redirects every later client gets. See the
    /// crate docs, "Keys: what a client can change".
    pub fn key_authority(mut self, yes: bool) -> Self {
        self.keys.authority = yes;
        self
    }

    /// Sort query parameters by name so `?a=1&b=2` and `?b=2&a=1` share an
    /// entry (default false).
    pub fn sort_query(mut self, yes: bool) -> Self {
        self.keys.sort_query = yes;
        self
    }

    /// Drop a query parameter from keys: an exact name, or a prefix ending
    /// in `*` such as `utm_*`. May be called repeatedly.
    pub fn ignore_query_param(mut self, pattern: &str) -> Self {
        self.keys.drop_query.push(QueryDrop::parse(pattern));
        self
    }

    /// Add a request header's value to every key (say, a tenant header).
    /// May be called repeatedly.
    ///
    /// For the headers that select a response although the origin does not
    /// name them in `Vary`: usually ones a layer in front of the cache sets
    /// from a value it has checked (a tenant id an auth layer adds, a host
    /// a proxy accepts from a fixed list, sent on as `X-Forwarded-Host`).
    /// The rule it serves: every input that reaches the origin and can
    /// change the response is in the key; an adapter in front of the cache
    /// must not forward one that is not. Headers the origin lists in `Vary`
    /// need no `key_header`.
    ///
    /// Each distinct value gets entries of its own: keep it to headers with
    /// few values. Values are taken trimmed, several lines joined with `,`.
    /// [`build`](Self::build) refuses a credential header (`Authorization`,
    /// `Proxy-Authorization`, `Cookie`) together with
    /// [`partition_by_credentials`](Self::partition_by_credentials), which
    /// keys on their digest instead.
    pub fn key_header(mut self, name: HeaderName) -> Self {
        self.keys.headers.push(name);
        self
    }

    /// Replace key building with a function; `None` lets the request pass
    /// uncached. It sees the request as sent (for invalidation, with the
    /// method set to `GET`).
    ///
    /// The function decides alone what is in the key (the credentials
    /// digest of [`partition_by_credentials`](Self::partition_by_credentials)
    /// is still added): it must cover every input the inner service
    /// forwards that can change the response. Invalidation by an unsafe
    /// method computes the key from a copy of the request's URI and headers
    /// without its extensions, so a pass decided from a request extension
    /// (set by a layer in front) does not stop a `POST` from invalidating
    /// the URL, while one decided from a header does. A readable key of the
    /// form `GET //host/path?query` keeps
    /// [`Cache::invalidate_prefix`] working on the path.
    pub fn key_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.keys.custom = Some(Arc::new(f));
        self
    }

    /// The share of the time since `Last-Modified` used as freshness when
    /// the response gives none (default 0.1, RFC 9111 §4.2.2).
    pub fn heuristic_fraction(mut self, fraction: f64) -> Self {
        self.policy.heuristic_fraction = fraction;
        self
    }

    /// The cap on heuristic freshness (default 24 h).
    pub fn heuristic_max(mut self, max: Duration) -> Self {
        self.policy.heuristic_max = max;
        self
    }

    /// The stale-while-revalidate window for responses that name none
    /// (default 0: RFC 9111 behaviour).
    pub fn default_stale_while_revalidate(mut self, window: Duration) -> Self {
        self.policy.default_swr = window;
        self
    }

    /// The stale-if-error window for responses that name none (default 0).
    pub fn default_stale_if_error(mut self, window: Duration) -> Self {
        self.policy.default_sie = window;
        self
    }

    /// Cache 404 and 410 responses that carry no freshness information for
    /// `ttl` (off by default; explicit freshness from the origin is always
    /// honoured).
    pub fn negative_caching(mut self, ttl: Duration) -> Self {
        self.policy.negative_ttl = Some(ttl);
        self
    }

    /// What to do with `Set-Cookie` responses (default: do not store).
    pub fn set_cookie(mut self, policy: SetCookiePolicy) -> Self {
        self.policy.set_cookie = policy;
        self
    }

    /// Share responses to requests with `Authorization` as if they were
    /// anonymous (default false: RFC 9111 §3.5 applies).
    pub fn share_authorized(mut self, yes: bool) -> Self {
        self.policy.share_authorized = yes;
        self
    }

    /// Partitions the cache by credentials (default false): a request that
    /// carries `Authorization`, `Proxy-Authorization` or `Cookie` is looked
    /// up and stored under a key of its own, made of its usual key and a
    /// digest of those headers (names and values, byte for byte and in
    /// order). What one set of credentials stored is never served to
    /// another, nor to anonymous requests; requests without credentials
    /// keep their usual keys and share one partition.
    ///
    /// Meant for [`CacheMode::Private`] caches in clients that send several
    /// users' credentials. Without it a private cache takes everything to
    /// belong to one user: a response to one user's `Authorization`
    /// answers every request for the URL.
    ///
    /// Allowed in [`CacheMode::Shared`] too, where it lifts RFC 9111 §3.5
    /// for credentialed requests: a response to an `Authorization` request
    /// is stored in that request's partition even without `public`,
    /// `s-maxage` or `must-revalidate`, since no other credentials can
    /// reach it. The rest of the shared-cache rules stay: `private`
    /// responses are still not stored, `s-maxage` still counts, `Set-Cookie`
    /// responses follow [`set_cookie`](Self::set_cookie). Shareable
    /// (`public`) responses to credentialed requests are kept in the
    /// partition as well, not shared, so every browser that sends a cookie
    /// gets a cache of its own: strip cookies the origin does not need
    /// before the cache.
    ///
    /// The readable key ([`Entry::key`](crate::Entry::key), spans, logs)
    /// ends in `\ncredentials:` and the first 16 hex digits of the digest,
    /// never the credentials; the hashed key uses the whole digest, so
    /// [`Cache::invalidate_key`] cannot name a partitioned entry. The
    /// digest (XXH3) is not cryptographic: it keeps credentials out of
    /// keys, logs and L2, but weak ones could be guessed from it by
    /// whoever reads those.
    ///
    /// Invalidation: [`Cache::invalidate`] and unsafe methods (RFC 9111
    /// §4.4) remove the URL from the partition of the request's own
    /// credentials only (without credentials: the anonymous partition);
    /// other partitions keep their copies until they go stale.
    /// [`Cache::invalidate_prefix`], [`Cache::invalidate_tag`] and
    /// [`Cache::clear`] reach every partition. A credential revoked at the
    /// origin still reads what was stored for it while that is fresh.
    ///
    /// With a [`key_fn`](Self::key_fn), the credentials component is added
    /// to the function's key. [`build`](Self::build) refuses it together
    /// with [`share_authorized(true)`](Self::share_authorized), which shares
    /// what this keeps apart, and with a [`key_header`](Self::key_header)
    /// naming a credential header, which would put the credentials
    /// themselves in keys and logs.
    ///
    /// ```
    /// use tower_tiered_cache::{Cache, CacheMode};
    ///
    /// let client_cache = Cache::builder()
    ///     .mode(CacheMode::Private)
    ///     .partition_by_credentials(true)
    ///     .build()
    ///     .unwrap();
    /// # drop(client_cache);
    /// let err = Cache::builder()
    ///     .partition_by_credentials(true)
    ///     .share_authorized(true)
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err.setting(), "partition_by_credentials");
    /// ```
    pub fn partition_by_credentials(mut self, yes: bool) -> Self {
        self.keys.credentials = yes;
        self.policy.partition_credentials = yes;
        self
    }

    /// How long past freshness an entry with validators is kept for a
    /// conditional revalidation (default 10 min).
    pub fn keep_for_revalidation(mut self, keep: Duration) -> Self {
        self.policy.keep_for_revalidation = keep;
        self
    }

    /// Adds a route rule; the first rule that matches a path applies.
    pub fn route(mut self, route: Route) -> Self {
        self.policy.routes.push(route);
        self
    }

    /// The most a request waits for another request's upstream call
    /// (default: as long as that call may last, twice the
    /// [`upstream_timeout`](Self::upstream_timeout) plus one second).
    ///
    /// A waiter whose wait runs out is answered with a stale entry the
    /// origin allows (`stale-if-error`) or a `504`; it never calls the
    /// origin itself, so a slow origin never sees a herd.
    pub fn coalesce_timeout(mut self, timeout: Duration) -> Self {
        self.coalesce_timeout = Some(timeout);
        self
    }

    /// The deadline for an upstream call (default 30 s): for the response
    /// head, and, when the body is read to be stored, for the whole body
    /// once the head is in (so a stalled body is caught too).
    ///
    /// A call that runs out is an upstream error: a stored entry that
    /// allows it is served (`stale-if-error`), otherwise the client gets a
    /// `504 Gateway Timeout` with `Cache-Status: …; detail=upstream-timeout`.
    /// It counts against the upstream's circuit breaker. Nothing of it is
    /// stored.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_tiered_cache::Cache;
    ///
    /// let cache = Cache::builder()
    ///     .upstream_timeout(Duration::from_secs(2))
    ///     .build()
    ///     .unwrap();
    /// # let _ = cache;
    /// ```
    pub fn upstream_timeout(mut self, timeout: Duration) -> Self {
        self.upstream_timeout = timeout;
        self
    }

    /// What a shared cache does with requests' own cache directives
    /// (default [`RequestCacheControl::Honour`](crate::RequestCacheControl::Honour), with revalidations
    /// collapsed to one in flight per key). Private caches always honour
    /// them.
    pub fn request_cache_control(mut self, choice: crate::policy::RequestCacheControl) -> Self {
        self.policy.request_cc = choice;
        self
    }

    /// The most upstream calls others may join at once (default 10 000);
    /// beyond it requests call alone.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// How long a URL whose response could not be stored skips coalescing
    /// (hit-for-pass; default 10 s, zero disables).
    pub fn hit_for_pass(mut self, ttl: Duration) -> Self {
        self.hit_for_pass_ttl = ttl;
        self
    }

    /// The deadline of a background refresh (default 30 s).
    pub fn refresh_timeout(mut self, timeout: Duration) -> Self {
        self.refresh_timeout = timeout;
        self
    }

    /// The most background refreshes running at once (default 64).
    pub fn max_concurrent_refreshes(mut self, n: usize) -> Self {
        self.max_refreshes = n;
        self
    }

    /// When a refresh fails or the upstream errs, the stale windows grow by
    /// `factor` × the entry's TTL (default 0.5, within 0..=1), at most
    /// `max_times` times per entry (default 4).
    pub fn stale_extension(mut self, factor: f64, max_times: u32) -> Self {
        self.extension_factor = factor;
        self.max_extensions = max_times;
        self
    }

    /// The upstream circuit breakers, one per request label (see
    /// [`labels`](Self::labels); bounded by [`max_labels`](Self::max_labels)):
    /// a label's breaker opens after `failures` consecutive transport
    /// errors, timeouts or 502/503/504 answers to its requests (default 5)
    /// for `open_for` (default 30 s). Other statuses, 500 included, are
    /// the URL's answer and reset the count. While a breaker is open its
    /// label's requests with a usable stale-if-error entry are answered
    /// from it and its background refreshes wait; other labels are not
    /// affected. See [`Cache::upstream_breakers`].
    pub fn circuit_breaker(mut self, failures: u32, open_for: Duration) -> Self {
        self.breaker_threshold = failures;
        self.breaker_open_for = open_for;
        self
    }

    /// Whether upstream responses are written to L1 as well as to L2
    /// (default true). With false, L1 holds only entries promoted from L2.
    /// Without an L2 tier responses always go to L1.
    pub fn l1_write_through(mut self, yes: bool) -> Self {
        self.l1_write_through = yes;
        self
    }

    /// Adds an L2 tier on one Redis node: `redis://[user:password@]host:port[/db]`
    /// or `rediss://` for TLS (with a TLS feature of the `redis` crate). The
    /// connection is made on first use; a bad URL fails [`build`](Self::build).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.l2.target = Some(crate::store::redis::RedisTarget::Single(url.into()));
        self
    }

    /// Adds an L2 tier on a Redis Cluster, given one or more node URLs.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_cluster<I, U>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        self.l2.target = Some(crate::store::redis::RedisTarget::Cluster(
            urls.into_iter().map(Into::into).collect(),
        ));
        self
    }

    /// Accumulates stats in Redis as well: every `every`, this instance
    /// adds what it counted since its last flush to the hash
    /// `{namespace}:stats`, so totals survive restarts and add up across
    /// instances ([`Cache::shared_stats`], [`Cache::flush_shared_stats`]
    /// before a graceful shutdown, [`Cache::reset_shared_stats`]). Needs
    /// the L2 tier; off by default.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn shared_stats(mut self, every: Duration) -> Self {
        self.l2.shared_stats = Some(every);
        self
    }

    /// The prefix of every L2 key (default `ttc`), so several services can
    /// share one Redis: keys are `{namespace}:{format}:{{key hash}}`.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.l2.namespace = namespace.into();
        self
    }

    /// An L2 entry is copied into L1 after this many L2 hits within the
    /// promotion window (default 3; 1 promotes on the first hit).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn promote_after(mut self, hits: u32) -> Self {
        self.l2.promote_after = hits;
        self
    }

    /// The window promotion hits are counted in (default 60 s).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn promotion_window(mut self, window: Duration) -> Self {
        self.l2.promotion_window = window;
        self
    }

    /// The deadline of one L2 operation (default 50 ms; writes of large
    /// values get 1 ms more per 64 KiB). Past it the operation is a miss.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn l2_timeout(mut self, timeout: Duration) -> Self {
        self.l2.timeout = timeout;
        self
    }

    /// The L2 circuit breaker: after `failures` consecutive errors or
    /// timeouts (default 5) L2 is skipped for `open_for` (default 5 s), then
    /// probed.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn l2_circuit_breaker(mut self, failures: u32, open_for: Duration) -> Self {
        self.l2.breaker_failures = failures;
        self.l2.breaker_open_for = open_for;
        self
    }

    /// How many L2 writes may wait to be sent (default 1024); beyond it
    /// writes are dropped and counted.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn l2_write_queue(mut self, n: usize) -> Self {
        self.l2.write_queue = n;
        self
    }

    /// An optional bound on L1 while this instance is not following the
    /// L2 invalidation log (Redis unreachable, or not yet connected): L1
    /// copies older than this are then not used. Default: no bound. L1 keeps
    /// serving what it holds within its own freshness while Redis is down,
    /// and catches up with the invalidations it missed when Redis is back
    /// (L1 is cleared only if the log no longer holds them; see
    /// [`l2_invalidation_log_len`](Self::l2_invalidation_log_len)).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn l1_max_ttl(mut self, ttl: Duration) -> Self {
        self.l2.l1_max_ttl = Some(ttl);
        self
    }

    /// How many entries the L2 invalidation log (a Redis Stream,
    /// `{namespace}:inv`, trimmed with `XADD … MAXLEN ~`) keeps (default
    /// 10 000; at least 1). An instance that reconnects after missing more
    /// invalidations (or overwrites) than this clears its L1, counted in
    /// `Stats::l2_coherence_resets`.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn l2_invalidation_log_len(mut self, entries: usize) -> Self {
        self.l2.invalidation_log_len = entries;
        self
    }

    /// L2 bodies larger than this many bytes are compressed with LZ4 when
    /// that saves space (default 1 KiB; `None` turns it off). Bodies that
    /// already carry a `Content-Encoding` are stored as they are.
    #[cfg(all(feature = "redis", feature = "compression"))]
    #[cfg_attr(docsrs, doc(cfg(all(feature = "redis", feature = "compression"))))]
    pub fn compression_threshold(mut self, bytes: Option<usize>) -> Self {
        self.l2.compress_over = bytes;
        self
    }

    /// Checks the settings and builds the cache.
    pub fn build(self) -> Result<Cache, BuildError> {
        if self.l1_capacity == 0 {
            return Err(BuildError::invalid(
                "l1_capacity_bytes",
                "must be greater than 0",
            ));
        }
        if self.max_body == 0 {
            return Err(BuildError::invalid(
                "max_body_bytes",
                "must be greater than 0",
            ));
        }
        let l1_max_entry = self
            .l1_max_entry
            .unwrap_or_else(|| (self.max_body + 64 * 1024).min((self.l1_capacity / 8).max(1)));
        // quick_cache refuses items heavier than about one shard; shards are
        // sized to hold two of the largest entry (`MemoryStore::shards_for`),
        // which needs the largest entry to be at most half the capacity.
        if l1_max_entry == 0 || l1_max_entry > self.l1_capacity / 2 {
            return Err(BuildError::invalid(
                "l1_max_entry_bytes",
                format!(
                    "must be between 1 and half of l1_capacity_bytes ({})",
                    self.l1_capacity / 2
                ),
            ));
        }
        if !(self.policy.heuristic_fraction.is_finite()
            && (0.0..=1.0).contains(&self.policy.heuristic_fraction))
        {
            return Err(BuildError::invalid(
                "heuristic_fraction",
                "must be within 0..=1",
            ));
        }
        if !(self.extension_factor.is_finite() && (0.0..=1.0).contains(&self.extension_factor)) {
            return Err(BuildError::invalid(
                "stale_extension",
                "factor must be within 0..=1",
            ));
        }
        if self.max_variants == 0 {
            return Err(BuildError::invalid("max_variants", "must be at least 1"));
        }
        if self.max_in_flight == 0 {
            return Err(BuildError::invalid("max_in_flight", "must be at least 1"));
        }
        if self.max_refreshes == 0 {
            return Err(BuildError::invalid(
                "max_concurrent_refreshes",
                "must be at least 1",
            ));
        }
        if self.breaker_threshold == 0 {
            return Err(BuildError::invalid(
                "circuit_breaker",
                "failures must be at least 1",
            ));
        }
        if self.observe.max_labels == 0 || self.observe.max_labels > 1000 {
            return Err(BuildError::invalid("max_labels", "must be within 1..=1000"));
        }
        if !(self.observe.eager_fraction.is_finite()
            && (0.0..1.0).contains(&self.observe.eager_fraction))
        {
            return Err(BuildError::invalid(
                "eager_refresh",
                "fraction must be within 0..1 (0 turns it off)",
            ));
        }
        if self.observe.hit_sample == 0 {
            return Err(BuildError::invalid(
                "hit_timing_sample",
                "must be at least 1 (1 times every hit)",
            ));
        }
        if self.observe.eager_min_reads == 0 {
            return Err(BuildError::invalid(
                "eager_refresh",
                "min_reads must be at least 1",
            ));
        }
        self.observe.health.validate()?;
        if self.keys.credentials {
            if self.policy.share_authorized {
                return Err(BuildError::invalid(
                    "partition_by_credentials",
                    "cannot be combined with share_authorized(true): one keeps each \
                     credential's responses apart, the other shares them",
                ));
            }
            if let Some(h) = self.keys.headers.iter().find(|h| {
                [
                    http::header::AUTHORIZATION,
                    http::header::PROXY_AUTHORIZATION,
                    http::header::COOKIE,
                ]
                .contains(h)
            }) {
                return Err(BuildError::invalid(
                    "partition_by_credentials",
                    format!(
                        "key_header({h}) would put the credentials themselves in keys and \
                         logs; partitioning already keys by them"
                    ),
                ));
            }
        }
        if self.upstream_timeout.is_zero() {
            return Err(BuildError::invalid(
                "upstream_timeout",
                "must be greater than 0",
            ));
        }
        if self.coalesce_timeout.is_some_and(|t| t.is_zero()) {
            return Err(BuildError::invalid(
                "coalesce_timeout",
                "must be greater than 0",
            ));
        }
        if self.refresh_timeout.is_zero() {
            return Err(BuildError::invalid(
                "refresh_timeout",
                "must be greater than 0",
            ));
        }
        #[cfg(feature = "redis")]
        if let Some(every) = self.l2.shared_stats {
            if self.l2.target.is_none() {
                return Err(BuildError::invalid(
                    "shared_stats",
                    "needs the L2 tier: add .redis(url) or .redis_cluster(urls)",
                ));
            }
            if every < Duration::from_millis(100) {
                return Err(BuildError::invalid(
                    "shared_stats",
                    "the flush interval must be at least 100 ms",
                ));
            }
        }
        #[cfg(feature = "redis")]
        let l2 = self.build_l2()?;
        #[cfg(feature = "opentelemetry")]
        let meter = self.meter;
        let shared = Shared {
            clock: self.clock,
            policy: self.policy,
            keys: self.keys,
            l1: MemoryStore::new(self.l1_capacity, l1_max_entry, self.max_variants),
            inflight: InFlight::new(self.max_in_flight),
            hit_for_pass: QuickCache::new(self.hit_for_pass_capacity.max(16)),
            // One per label index: `max_labels` plus `default` and `other`.
            breakers: Breakers::new(
                self.observe.max_labels + 2,
                self.breaker_threshold,
                self.breaker_open_for,
            ),
            counters: Counters::default(),
            refreshes: Arc::new(tokio::sync::Semaphore::new(self.max_refreshes)),
            cfg: EngineConfig {
                max_body_bytes: self.max_body,
                coalesce_timeout: self.coalesce_timeout.unwrap_or_else(|| {
                    self.upstream_timeout
                        .saturating_mul(2)
                        .saturating_add(Duration::from_secs(1))
                }),
                upstream_timeout: self.upstream_timeout,
                hit_for_pass_ttl: self.hit_for_pass_ttl,
                refresh_timeout: self.refresh_timeout,
                stale_extension_factor: self.extension_factor,
                max_stale_extensions: self.max_extensions,
                l1_write_through: self.l1_write_through,
                tags: self.tags,
            },
            obs: Observer::new(self.observe),
            #[cfg(feature = "redis")]
            shared_stats: match (&l2, self.l2.shared_stats) {
                (Some(_), Some(interval)) => Some(crate::observe::shared::Flusher::new(interval)),
                _ => None,
            },
            #[cfg(feature = "redis")]
            l2,
        };
        let shared = Arc::new(shared);
        #[cfg(feature = "opentelemetry")]
        if let Some(meter) = meter {
            let _ = shared
                .obs
                .metrics
                .set(crate::observe::metrics::register(&shared, &meter));
        }
        #[cfg(feature = "redis")]
        if let Some(l2) = &shared.l2 {
            // Every L2 operation: slow warnings and the duration histogram.
            let weak = Arc::downgrade(&shared);
            l2.set_op_hook(Box::new(move |name, took, ok| {
                let Some(shared) = weak.upgrade() else { return };
                shared.obs.slow_l2(name, took, ok);
                #[cfg(feature = "opentelemetry")]
                if let Some(m) = shared.obs.metrics.get() {
                    m.l2_op(name, took, ok);
                }
            }));
        }
        {
            // Entries pushed out of L1 before anyone read them again.
            let weak = Arc::downgrade(&shared);
            shared.l1.on_evicted_unread(Box::new(move |label| {
                if let Some(shared) = weak.upgrade() {
                    shared.obs.evicted_unread(label);
                }
            }));
        }
        #[cfg(feature = "redis")]
        if let Some(l2) = &shared.l2 {
            // Other instances' invalidations reach L1 through this; a weak
            // reference, so the subscriber does not keep the cache alive.
            let weak = Arc::downgrade(&shared);
            l2.set_listener(Box::new(move |msg| {
                if let Some(shared) = weak.upgrade() {
                    apply_remote(&shared, msg);
                }
            }));
        }
        Ok(Cache { shared })
    }
}

/// Applies an invalidation announced by another instance to L1.
#[cfg(feature = "redis")]
fn apply_remote(shared: &Shared, msg: &crate::store::l2::Message) {
    use crate::store::l2::Message;
    match msg {
        Message::Key(k) => {
            shared.l1.remove(*k);
        }
        Message::Tag(t) => {
            shared.l1.remove_where(|e| e.tags.iter().any(|x| &**x == t));
        }
        Message::Prefix(p) => {
            shared.l1.remove_where(|e| e.path().starts_with(p.as_str()));
        }
        Message::Clear => shared.l1.clear(),
    }
}

#[cfg(feature = "redis")]
impl CacheBuilder {
    fn build_l2(&self) -> Result<Option<Arc<crate::store::l2::L2>>, BuildError> {
        let Some(target) = self.l2.target.clone() else {
            return Ok(None);
        };
        let l2 = &self.l2;
        // Keys are `{namespace}:…` and purges SCAN for `{namespace}:*`: a
        // namespace with `:` or glob characters could match another's keys.
        if l2.namespace.is_empty()
            || l2.namespace.len() > 64
            || !l2
                .namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(BuildError::invalid(
                "namespace",
                "must be 1 to 64 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        if l2.timeout.is_zero() {
            return Err(BuildError::invalid("l2_timeout", "must be greater than 0"));
        }
        if l2.promote_after == 0 {
            return Err(BuildError::invalid("promote_after", "must be at least 1"));
        }
        if l2.breaker_failures == 0 {
            return Err(BuildError::invalid(
                "l2_circuit_breaker",
                "failures must be at least 1",
            ));
        }
        if l2.write_queue == 0 {
            return Err(BuildError::invalid("l2_write_queue", "must be at least 1"));
        }
        if l2.invalidation_log_len == 0 {
            return Err(BuildError::invalid(
                "l2_invalidation_log_len",
                "must be at least 1",
            ));
        }
        let cfg = crate::store::l2::L2Config {
            target,
            namespace: l2.namespace.clone(),
            timeout: l2.timeout,
            connect_timeout: l2.connect_timeout.max(l2.timeout),
            breaker_failures: l2.breaker_failures,
            breaker_open_for: l2.breaker_open_for,
            promote_after: l2.promote_after,
            promotion_window: l2.promotion_window,
            write_queue: l2.write_queue,
            l1_max_ttl: l2.l1_max_ttl,
            invalidation_log_len: l2.invalidation_log_len,
            max_body_bytes: self.max_body,
            compress_over: l2.compress_over,
            warnings: self.observe.log.warnings(),
            max_variants: self.max_variants,
        };
        crate::store::l2::L2::new(cfg, Arc::clone(&self.clock))
            .map(|l2| Some(Arc::new(l2)))
            .map_err(|e| BuildError::invalid("redis", e))
    }
}

/// What the adapter should do with a request.
pub(crate) enum Decision<B: Body> {
    /// Answer now (stale for `only-if-cached`, 504 for `only-if-cached`).
    Respond(Response<CacheBody<B>>),
    /// A fresh L1 hit (or a 304 from it), decided at `now`.
    Hit(Response<CacheBody<B>>, u64),
    /// Answer now with this stale entry and refresh it in the background.
    Stale(Response<CacheBody<B>>, Box<Fetch>),
    /// Forward unchanged, adding this `Cache-Status`.
    Pass(HeaderValue),
    /// Forward an unsafe method; invalidate on success.
    Unsafe,
    /// Call the upstream (coalesced), store, answer.
    Fetch(Box<Fetch>),
    /// Answer now with this fresh entry, and refresh it early in the
    /// background (eager refresh of a hot key).
    Refresh(Response<CacheBody<B>>, Box<Fetch>),
}

/// How [`Cache::judge`] answered a request from a found entry.
pub(crate) enum Answered<B: Body> {
    /// A fresh hit.
    Hit(Response<CacheBody<B>>, u64),
    /// An answer without a refresh (a stale entry, `only-if-cached`).
    Respond(Response<CacheBody<B>>),
    /// A stale answer; refresh in the background.
    Stale(Response<CacheBody<B>>, Box<Fetch>),
    /// A fresh answer; refresh early in the background.
    Refresh(Response<CacheBody<B>>, Box<Fetch>),
}

impl<B: Body> From<Answered<B>> for Decision<B> {
    fn from(a: Answered<B>) -> Self {
        match a {
            Answered::Hit(resp, now) => Decision::Hit(resp, now),
            Answered::Respond(resp) => Decision::Respond(resp),
            Answered::Stale(resp, plan) => Decision::Stale(resp, plan),
            Answered::Refresh(resp, plan) => Decision::Refresh(resp, plan),
        }
    }
}

/// The tier a found entry was read from. Everything else about the entry
/// (freshness, revalidation, 304 merging, `Cache-Status`) is decided the
/// same way for both ([`Cache::judge`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tier {
    /// The in-process tier.
    L1,
    /// Redis, read after `since` (a point in the sequence of writes and
    /// invalidations): copied into L1 only if no invalidation came since.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    L2 { since: u64 },
}

impl Tier {
    /// The `detail` of `Cache-Status` for an answer from this tier.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Tier::L1 => "l1",
            Tier::L2 { .. } => "l2",
        }
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
    pub(crate) fwd: &'static str,
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
    fn into_refresh(mut self, entry: Arc<Entry>, tier: Tier) -> Box<Fetch> {
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
}

impl Cache {
    /// Starts building a cache.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    /// A snapshot of the counters and tier sizes.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        let c = &s.counters;
        let now = s.clock.now_millis();
        // Fresh L1 hits are counted under their label when observability
        // is on, globally when it is off (see `decide`); hits of L2
        // entries promoted on the async path are counted globally too.
        let labels = s.obs.read_labels();
        let hits_l1 = c.hits_l1.get() + labels.totals[crate::observe::labels::field::HIT_L1];
        let hits_l2 = c.hits_l2.get();
        let mut stats = Stats {
            requests: 0,
            hits: hits_l1 + hits_l2,
            hits_l1,
            hits_l2,
            stale: c.stale.get(),
            misses: c.misses.get(),
            revalidated: c.revalidated.get(),
            coalesced: c.coalesced.get(),
            passes: c.passes.get(),
            unavailable: c.unavailable.get(),
            cancelled: c.cancelled.get(),
            not_modified: c.not_modified.get(),
            stale_if_error: c.stale_if_error.get(),
            upstream_calls: c.upstream_calls.get(),
            upstream_errors: c.upstream_errors.get(),
            refresh_ok: c.refresh_ok.get(),
            refresh_failed: c.refresh_failed.get(),
            refresh_skipped: c.refresh_skipped.get(),
            stores: c.stores.get(),
            too_large: c.too_large.get(),
            coalesce_timeouts: c.coalesce_timeouts.get(),
            upstream_timeouts: c.upstream_timeouts.get(),
            invalidations: c.invalidations.get(),
            evictions: s.l1.evictions(),
            l1_entries: s.l1.len() as u64,
            l1_bytes: s.l1.weight(),
            l1_capacity_bytes: s.l1.capacity(),
            in_flight: s.inflight.len() as u64,
            l2_errors: 0,
            l2_timeouts: 0,
            l2_decode_errors: 0,
            l2_writes: 0,
            l2_writes_dropped: 0,
            l2_variants_evicted: 0,
            promotions: 0,
            l2_breaker: None,
            l2_subscribed: false,
            l2_messages_received: 0,
            l2_coherence_resets: 0,
            l2_invalidations_dropped: 0,
            breaker: s.breakers.worst(now),
            breaker_opens: s.breakers.opens(),
            upstream_breakers: self.upstream_breakers(),
            hit_ratio: 0.0,
            window: Default::default(),
            hit_latency: Default::default(),
            miss_latency: Default::default(),
            avg_ttl_remaining_ms: None,
            labels: Vec::new(),
            redis: None,
        };
        self.observe_into(&mut stats, now, &labels);
        #[cfg(feature = "redis")]
        if let Some(l2) = &s.l2 {
            let c = &l2.counters;
            stats.l2_errors = c.errors.get();
            stats.l2_timeouts = c.timeouts.get();
            stats.l2_decode_errors = c.decode_errors.get();
            stats.l2_writes = c.writes.get();
            stats.l2_writes_dropped = c.writes_dropped.get();
            stats.promotions = c.promotions.get();
            stats.l2_breaker = Some(l2.breaker.state(now));
            stats.l2_subscribed = l2.subscribed();
            stats.l2_messages_received = c.messages_received.get();
            stats.l2_variants_evicted = c.variants_evicted.get();
            stats.l2_coherence_resets = c.coherence_resets.get();
            stats.l2_invalidations_dropped = c.invalidations_dropped.get();
        }
        stats.requests = stats.hits
            + stats.stale
            + stats.misses
            + stats.revalidated
            + stats.coalesced
            + stats.passes
            + stats.unavailable
            + stats.cancelled;
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
        if let Some(l2) = &self.shared.l2 {
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
        match self.shared.keys.hash(parts) {
            Some(key) => self.invalidate_hash(key),
            None => false,
        }
    }

    pub(crate) fn invalidate_hash(&self, key: KeyHash) -> bool {
        let removed = self.shared.l1.remove(key);
        self.shared.hit_for_pass.remove(&key);
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.shared.l2 {
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
    /// other instances.
    pub async fn invalidate_tag(&self, tag: &str) -> Invalidated {
        #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
        let mut out = Invalidated {
            l1: self
                .shared
                .l1
                .remove_where(|e| e.tags.iter().any(|t| &**t == tag)),
            l2: 0,
        };
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.shared.l2 {
            out.l2 = l2.invalidate_tag(tag).await;
        }
        self.shared.counters.invalidations.add(out.l1);
        out
    }

    /// Removes every stored response whose URL path starts with
    /// `path_prefix`, in every tier (L2 is scanned with `SCAN`, off the
    /// request path), and tells the other instances.
    pub async fn invalidate_prefix(&self, path_prefix: &str) -> Invalidated {
        #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
        let mut out = Invalidated {
            l1: self
                .shared
                .l1
                .remove_where(|e| e.path().starts_with(path_prefix)),
            l2: 0,
        };
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.shared.l2 {
            out.l2 = l2.invalidate_prefix(path_prefix).await;
        }
        self.shared.counters.invalidations.add(out.l1);
        out
    }

    /// Drops every stored response in every tier (L2: everything under the
    /// namespace) and tells the other instances.
    pub async fn clear(&self) -> Invalidated {
        #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
        let mut out = Invalidated {
            l1: self.shared.l1.len() as u64,
            l2: 0,
        };
        self.shared.l1.clear();
        self.shared.hit_for_pass.clear();
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.shared.l2 {
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
        if !PolicyConfig::lookup_method(&parts.method) {
            return if matches!(
                parts.method,
                Method::POST | Method::PUT | Method::PATCH | Method::DELETE
            ) {
                s.counters.passes.incr();
                Decision::Unsafe
            } else {
                s.counters.passes.incr();
                Decision::Pass(STATUS_METHOD)
            };
        }
        let route = if s.policy.routes.is_empty() {
            None
        } else {
            s.policy
                .routes
                .iter()
                .position(|r| r.matches(crate::key::key_uri(parts).path()))
        };
        if route.is_some_and(|i| s.policy.routes[i].bypass) {
            s.counters.passes.incr();
            return Decision::Pass(STATUS_BYPASS);
        }
        let Some(key) = s.keys.hash(parts) else {
            s.counters.passes.incr();
            return Decision::Pass(STATUS_BYPASS);
        };
        let mut directives = RequestDirectives::from_headers(&parts.headers);
        if s.policy.ignores_request_cc() {
            directives.cc = Default::default();
        }
        let head = parts.method == Method::HEAD;
        let now = s.clock.now_millis();
        let (found, fwd) = match s.l1.get(key, &parts.headers) {
            Found::Entry(e) if now >= e.timeline.retain_until => {
                s.l1.remove_expired(key, &e, &parts.headers);
                (None, "uri-miss")
            }
            #[cfg(feature = "redis")]
            Found::Entry(e)
                if s.l2
                    .as_ref()
                    .is_some_and(|l2| !l2.trust_l1(e.timeline.stored_at, now)) =>
            {
                // `l1_max_ttl` is set, this instance is not following the
                // invalidation log and this copy is old: go to L2, which
                // other instances keep current.
                (None, "uri-miss")
            }
            Found::Entry(e) => (Some(e), "stale"),
            Found::UriMiss => (None, "uri-miss"),
            Found::VaryMiss => (None, "vary-miss"),
        };
        let mut plan = Fetch {
            key,
            directives,
            route,
            prior: None,
            revalidate: false,
            fwd,
            head,
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
        // L2 may hold a newer copy, or the only one: read it whatever the
        // request's directives (a `no-cache` request needs its validators).
        plan.l2_lookup = self.has_l2();
        if plan.directives.cc.only_if_cached && !plan.l2_lookup {
            return Decision::Respond(self.unavailable());
        }
        if plan.prior.is_none() && plan.directives.range && !plan.l2_lookup {
            // A range of something not stored: fetching it whole to store
            // could mean downloading a huge file for a few bytes.
            s.counters.passes.incr();
            return Decision::Pass(STATUS_RANGE);
        }
        if plan.prior.is_none() && !s.cfg.hit_for_pass_ttl.is_zero() {
            if let Some(until) = s.hit_for_pass.get(&key) {
                if now < until {
                    s.counters.passes.incr();
                    return Decision::Pass(STATUS_HIT_FOR_PASS);
                }
                s.hit_for_pass.remove(&key);
            }
        }
        plan.coalesce = !plan.directives.cc.no_store;
        Decision::Fetch(Box::new(plan))
    }

    /// Counts a request answered from a stored entry that a cache tier
    /// held (`fresh`, or stale within its window; from L2 when `l2`) and
    /// gives its `Cache-Status`: one place for every way an entry is found
    /// (its own look-up, or the flight it waited on).
    pub(crate) fn tier_hit_status(
        &self,
        fresh: bool,
        l2: bool,
        entry: &Entry,
        now: u64,
    ) -> HeaderValue {
        let s = &*self.shared;
        if !fresh {
            s.counters.stale.incr();
            let staleness = now
                .saturating_sub(entry.timeline.fresh_until)
                .div_ceil(1000);
            let tier = if l2 { "l2" } else { "l1" };
            return cache_status(format_args!("hit; ttl=-{staleness}; detail={tier}"));
        }
        if l2 {
            s.counters.hits_l2.incr();
            return STATUS_HIT_L2;
        }
        if !s.obs.cfg.enabled {
            // With observability on, the label's counter is the count (one
            // atomic add per hit, not two).
            s.counters.hits_l1.incr();
        }
        STATUS_HIT_L1
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
        plan.fwd = "stale";
        match s.policy.usability(&entry, &plan.directives, now) {
            Usability::Fresh => {
                let status = self.tier_hit_status(true, tier != Tier::L1, &entry, now);
                if !span.is_disabled() {
                    span.record(
                        "cache.ttl_remaining_ms",
                        entry.timeline.fresh_until.saturating_sub(now) as i64,
                    );
                }
                let cfg = &s.obs.cfg;
                let eager = cfg.eager_fraction > 0.0;
                let reads = entry
                    .reads
                    .note(if eager { cfg.eager_min_reads } else { 1 });
                let reuse = self.note_served(&entry, tier, parts, &plan, now);
                let resp = self.respond_entry_with(
                    &entry,
                    parts,
                    plan.directives.conditional,
                    now,
                    status,
                    reuse,
                );
                if eager
                    && reads >= cfg.eager_min_reads
                    && !plan.directives.cc.only_if_cached
                    && (entry.timeline.fresh_until.saturating_sub(now) as f64)
                        < cfg.eager_fraction * entry.timeline.ttl_millis() as f64
                    && entry.reads.claim_refresh()
                {
                    return Ok(Answered::Refresh(resp, plan.into_refresh(entry, tier)));
                }
                return Ok(Answered::Hit(resp, now));
            }
            Usability::Stale => {
                let status = self.tier_hit_status(false, tier != Tier::L1, &entry, now);
                let reuse = self.note_served(&entry, tier, parts, &plan, now);
                let resp = self.respond_entry_with(
                    &entry,
                    parts,
                    plan.directives.conditional,
                    now,
                    status,
                    reuse,
                );
                if plan.directives.cc.only_if_cached {
                    // The client asked that the origin not be contacted.
                    return Ok(Answered::Respond(resp));
                }
                return Ok(Answered::Stale(resp, plan.into_refresh(entry, tier)));
            }
            Usability::Revalidate => {
                plan.revalidate = true;
                plan.prior = Some(entry);
                plan.tier = tier;
            }
            Usability::Unusable => {
                plan.revalidate = false;
                plan.prior = Some(entry);
                plan.tier = tier;
            }
        }
        let d = &plan.directives.cc;
        if d.no_cache || d.max_age.is_some() || d.min_fresh.is_some() {
            plan.fwd = "request";
        }

        Err(plan)
    }

    /// An entry from `tier` answers: an L2 entry is promoted to L1 when the
    /// promotion rules allow. Returns whether the entry lives in L1 (its
    /// response template is worth building).
    fn note_served(
        &self,
        entry: &Arc<Entry>,
        tier: Tier,
        parts: &Parts,
        plan: &Fetch,
        now: u64,
    ) -> bool {
        match tier {
            Tier::L1 => true,
            #[cfg(feature = "redis")]
            Tier::L2 { since } => {
                let s = &*self.shared;
                let Some(l2) = s.l2.as_ref() else {
                    return false;
                };
                // An older L1 copy is replaced at once; otherwise hot
                // entries earn promotion.
                // (Checked first: a hit that may not promote is not
                // counted towards promotion.)
                let promoted = l2.may_promote(plan.key, since)
                    && (plan.prior.is_some() || l2.note_hit(plan.key, now));
                if promoted {
                    let names: Vec<HeaderName> =
                        entry.vary.iter().map(|(n, _)| n.clone()).collect();
                    s.l1.insert(plan.key, Arc::clone(entry), &names, &parts.headers);
                }
                promoted
            }
            #[cfg(not(feature = "redis"))]
            Tier::L2 { .. } => {
                let _ = (entry, parts, plan, now);
                false
            }
        }
    }

    /// Stores a new entry: L1 (unless L2 exists and write-through is off)
    /// and, off the request path, L2. Returns whether any tier took it.
    pub(crate) fn store_entry(
        &self,
        key: KeyHash,
        entry: &Arc<Entry>,
        vary: &[HeaderName],
        req_headers: &HeaderMap,
        now: u64,
    ) -> bool {
        let s = &*self.shared;
        let mut stored = false;
        if s.cfg.l1_write_through || !self.has_l2() {
            stored |= s.l1.insert(key, Arc::clone(entry), vary, req_headers);
        }
        #[cfg(feature = "redis")]
        if let Some(l2) = &s.l2 {
            l2.enqueue(key, entry, req_headers, now);
            stored = true;
        }
        let _ = now;
        stored
    }

    /// Replaces `old` with `new` (freshened by a 304, stale windows
    /// extended) if `old` is still the stored entry; then writes it to L2.
    /// An invalidation or a newer response that landed meanwhile wins.
    ///
    /// `tier`: where `old` was found. An entry read from L2 (L1 had no
    /// copy) goes to L1 as a new response would (write-through) and to L2,
    /// unless an invalidation came after it was read.
    pub(crate) fn replace_entry(
        &self,
        key: KeyHash,
        old: &Arc<Entry>,
        new: Arc<Entry>,
        req_headers: &HeaderMap,
        tier: Tier,
    ) -> bool {
        let s = &*self.shared;
        #[cfg(feature = "redis")]
        if let (Tier::L2 { since }, Some(l2)) = (tier, &s.l2) {
            if !l2.may_promote(key, since) {
                return false;
            }
            if s.cfg.l1_write_through {
                let names: Vec<HeaderName> = new.vary.iter().map(|(n, _)| n.clone()).collect();
                s.l1.insert(key, Arc::clone(&new), &names, req_headers);
            }
            l2.enqueue(key, &new, req_headers, self.now());
            return true;
        }
        let _ = tier;
        let replaced = s.l1.replace_if(key, old, Arc::clone(&new), req_headers);
        #[cfg(feature = "redis")]
        if let Some(l2) = &s.l2 {
            // L2 may hold the entry even when L1 does not (write-through
            // off, or evicted); an invalidation deleted it from both.
            if replaced || !s.cfg.l1_write_through {
                l2.enqueue(key, &new, req_headers, self.now());
            }
        }
        replaced
    }

    /// The tier new entries are read back from: L1, unless L2 exists and
    /// responses are not written through to L1.
    pub(crate) fn store_tier(&self) -> &'static str {
        if self.shared.cfg.l1_write_through || !self.has_l2() {
            "l1"
        } else {
            "l2"
        }
    }

    /// Whether an L2 tier is configured.
    pub(crate) fn has_l2(&self) -> bool {
        #[cfg(feature = "redis")]
        {
            self.shared.l2.is_some()
        }
        #[cfg(not(feature = "redis"))]
        {
            false
        }
    }

    /// The 504 for an `only-if-cached` request with nothing stored.
    pub(crate) fn unavailable<B: Body>(&self) -> Response<CacheBody<B>> {
        self.shared.counters.unavailable.incr();
        let mut resp = Response::new(CacheBody::empty());
        *resp.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        resp.headers_mut()
            .insert(CACHE_STATUS.clone(), STATUS_ONLY_IF_CACHED);
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
    /// conditionals match, no body for `HEAD`, `Age` and `Cache-Status`.
    pub(crate) fn respond_entry<B: Body>(
        &self,
        entry: &Entry,
        req: &Parts,
        conditional: bool,
        now: u64,
        status: HeaderValue,
    ) -> Response<CacheBody<B>> {
        self.respond_entry_with(entry, req, conditional, now, status, true)
    }

    /// [`respond_entry`](Self::respond_entry); `reuse` says whether the entry
    /// will answer again (it lives in L1). An entry read from L2 for one
    /// answer gets its response headers built directly, without a template.
    pub(crate) fn respond_entry_with<B: Body>(
        &self,
        entry: &Entry,
        req: &Parts,
        conditional: bool,
        now: u64,
        status: HeaderValue,
        reuse: bool,
    ) -> Response<CacheBody<B>> {
        let head = req.method == Method::HEAD;
        if conditional
            && crate::policy::conditional::not_modified(entry.status, &entry.headers, &req.headers)
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
            return resp;
        }
        let age = age_value(entry.timeline.age_at(now) / 1000);
        let headers = if !reuse && entry.template.get().is_none() {
            entry.build_response_headers(age, status)
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
        resp
    }

    /// The entry with its stale windows extended after an upstream failure,
    /// or `None` when it may not be extended further.
    pub(crate) fn extended(&self, entry: &Entry) -> Option<Entry> {
        let cfg = &self.shared.cfg;
        if entry.flags.must_revalidate
            || entry.extensions >= cfg.max_stale_extensions
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
