//! [`CacheBuilder`]: every setting of a [`Cache`], its default, and the
//! checks `build` makes before anything is constructed.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::request::Parts;
use quick_cache::sync::Cache as QuickCache;

use crate::breaker::Breakers;
use crate::cache::{Cache, EngineConfig, Shared, TagConfig};
use crate::clock::{Clock, SystemClock};
use crate::coalesce::InFlight;
use crate::error::BuildError;
use crate::key::{KeyConfig, QueryDrop};
use crate::observe::{HealthThresholds, LabelSource, LogLevel, ObserveConfig, Observer};
use crate::policy::{CacheMode, PolicyConfig, Route, SetCookiePolicy};
use crate::stats::Counters;
use crate::store::memory::MemoryStore;
use crate::tiers::Tiers;

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
    l1_max_ttl: Duration,
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
            l1_max_ttl: Duration::from_secs(10),
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

    /// While the invalidation channel (Redis pub/sub) is down, or not yet
    /// up, L1 copies older than this are not used (default 10 s): other instances'
    /// invalidations may be missed meanwhile. L1 is cleared when the
    /// channel comes back.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn l1_max_ttl(mut self, ttl: Duration) -> Self {
        self.l2.l1_max_ttl = ttl;
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
            tiers: {
                let l1 = MemoryStore::new(self.l1_capacity, l1_max_entry, self.max_variants);
                let tiers = Tiers::new(l1, self.l1_write_through);
                #[cfg(feature = "redis")]
                let tiers = tiers.with_l2(l2.clone());
                tiers
            },
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
                tags: self.tags,
            },
            obs: Observer::new(self.observe),
            #[cfg(feature = "redis")]
            shared_stats: match (&l2, self.l2.shared_stats) {
                (Some(_), Some(interval)) => Some(crate::export::shared::Flusher::new(interval)),
                _ => None,
            },
        };
        let shared = Arc::new(shared);
        #[cfg(feature = "opentelemetry")]
        if let Some(meter) = meter {
            let _ = shared
                .obs
                .metrics
                .set(crate::export::otel::register(&shared, &meter));
        }
        #[cfg(feature = "redis")]
        if let Some(l2) = &shared.tiers.l2 {
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
            shared.tiers.l1.on_evicted_unread(Box::new(move |label| {
                if let Some(shared) = weak.upgrade() {
                    shared.obs.evicted_unread(label);
                }
            }));
        }
        #[cfg(feature = "redis")]
        if let Some(l2) = &shared.tiers.l2 {
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
            shared.tiers.l1.remove(*k);
        }
        Message::Tag(t) => {
            shared
                .tiers
                .l1
                .remove_where(|e| e.tags.iter().any(|x| &**x == t));
        }
        Message::Prefix(p) => {
            shared
                .tiers
                .l1
                .remove_where(|e| e.path().starts_with(p.as_str()));
        }
        Message::Clear => shared.tiers.l1.clear(),
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
