//! [`CacheBuilder`]: every setting of a [`Cache`], grouped by topic, with
//! its default as a named `DEFAULT_*` constant, and the checks
//! [`build`](CacheBuilder::build) makes, one function per topic, before
//! anything is constructed.
//!
//! The constants are the only place a default is written: the setters'
//! docs link to them, the README's settings table quotes them (checked by
//! `tests/readme_settings.rs`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName};
use http::request::Parts;
use quick_cache::sync::Cache as QuickCache;

use crate::adaptive::AdaptiveTtl;
use crate::breaker::Breakers;
use crate::cache::{Cache, EngineConfig, Shared, TagConfig};
use crate::clock::{Clock, SystemClock};
use crate::coalesce::InFlight;
use crate::entry::ReadCap;
use crate::error::BuildError;
use crate::flow::hot::{HotSettings, HotState};
use crate::key::{KeyConfig, QueryDrop};
use crate::observe::{HealthThresholds, LabelSource, LogLevel, ObserveConfig, Observer};
use crate::policy::{CacheMode, PolicyConfig, RequestCacheControl, Route, SetCookiePolicy};
use crate::stats::Counters;
use crate::store::memory::MemoryStore;
use crate::tiers::{L1Admission, Tiers};

// ---------------------------------------------------------------------------
// Defaults, in the order of the setters' topics.
// ---------------------------------------------------------------------------

// Storage

/// The default of [`CacheBuilder::mode`]: a shared cache (servers, proxies).
pub const DEFAULT_MODE: CacheMode = CacheMode::Shared;
/// The default of [`CacheBuilder::l1_capacity_bytes`]: 64 MiB.
pub const DEFAULT_L1_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;
/// What the default of [`CacheBuilder::l1_max_entry_bytes`] adds to the body
/// cap ([`CacheBuilder::max_body_bytes`]) for headers and key: 64 KiB. The
/// default is that sum, at most an eighth of the L1 capacity.
pub const DEFAULT_L1_ENTRY_OVERHEAD_BYTES: u64 = 64 * 1024;
/// The default of [`CacheBuilder::max_body_bytes`]: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// The default of [`CacheBuilder::max_variants`].
pub const DEFAULT_MAX_VARIANTS: usize = 32;
/// The default of [`CacheBuilder::l1_write_through`].
pub const DEFAULT_L1_WRITE_THROUGH: bool = true;
/// The default of [`CacheBuilder::l1_admission`]: every entry goes to L1
/// when stored (write-through, [`DEFAULT_L1_WRITE_THROUGH`]).
pub const DEFAULT_L1_ADMISSION: L1Admission = L1Admission::Always;
/// The default of [`CacheBuilder::set_cookie`]: responses with `Set-Cookie`
/// are not stored.
pub const DEFAULT_SET_COOKIE: SetCookiePolicy = SetCookiePolicy::Pass;
/// The default of [`CacheBuilder::store_server_errors`]: a 5xx with
/// explicit freshness is stored, as RFC 9111 §3 allows.
pub const DEFAULT_STORE_SERVER_ERRORS: bool = true;
/// The default of [`CacheBuilder::share_authorized`]: RFC 9111 §3.5
/// applies.
pub const DEFAULT_SHARE_AUTHORIZED: bool = false;

/// The response headers invalidation tags are read from (split on spaces
/// and commas), besides those a [`CacheBuilder::tag_fn`] names.
pub const TAG_HEADERS: [&str; 2] = ["surrogate-key", "cache-tag"];
/// The most invalidation tags kept per response; further ones are dropped.
pub const MAX_TAGS_PER_RESPONSE: usize = 32;
/// The longest invalidation tag kept, in bytes; longer ones are dropped.
pub const MAX_TAG_BYTES: usize = 128;

// Keys

/// The default of [`CacheBuilder::key_scheme`].
pub const DEFAULT_KEY_SCHEME: bool = true;
/// The default of [`CacheBuilder::key_authority`].
pub const DEFAULT_KEY_AUTHORITY: bool = true;
/// The default of [`CacheBuilder::sort_query`].
pub const DEFAULT_SORT_QUERY: bool = false;
/// The default of [`CacheBuilder::partition_by_credentials`].
pub const DEFAULT_PARTITION_BY_CREDENTIALS: bool = false;

// Freshness

/// The default of [`CacheBuilder::heuristic_fraction`] (RFC 9111 §4.2.2
/// suggests 10 %).
pub const DEFAULT_HEURISTIC_FRACTION: f64 = 0.1;
/// The default of [`CacheBuilder::heuristic_max`]: 24 h.
pub const DEFAULT_HEURISTIC_MAX: Duration = Duration::from_secs(24 * 3600);
/// The default of [`CacheBuilder::default_stale_while_revalidate`]: none
/// (RFC 9111 behaviour).
pub const DEFAULT_STALE_WHILE_REVALIDATE: Duration = Duration::ZERO;
/// The default of [`CacheBuilder::default_stale_if_error`]: none.
pub const DEFAULT_STALE_IF_ERROR: Duration = Duration::ZERO;
/// The default of [`CacheBuilder::keep_for_revalidation`]: 10 min.
pub const DEFAULT_KEEP_FOR_REVALIDATION: Duration = Duration::from_secs(600);
/// The default of [`CacheBuilder::request_cache_control`].
pub const DEFAULT_REQUEST_CACHE_CONTROL: RequestCacheControl = RequestCacheControl::Honour;
/// The default of [`CacheBuilder::targeted_cache_control`] in
/// [`CacheMode::Shared`]: `CDN-Cache-Control` (RFC 9213 §3), the field
/// for CDN caches. In [`CacheMode::Private`] the default is none: a
/// client's cache is not the target of these fields.
pub const DEFAULT_TARGETED_CACHE_CONTROL: [&str; 1] = ["CDN-Cache-Control"];
/// The default of [`CacheBuilder::strip_targeted_cache_control`]: the
/// targeted field is forwarded as received.
pub const DEFAULT_STRIP_TARGETED_CACHE_CONTROL: bool = false;
/// The default `factor` of [`CacheBuilder::stale_extension`].
pub const DEFAULT_STALE_EXTENSION_FACTOR: f64 = 0.5;
/// The default `max_times` of [`CacheBuilder::stale_extension`].
pub const DEFAULT_STALE_EXTENSION_TIMES: u32 = 4;
/// The default `fraction` of [`CacheBuilder::eager_refresh`]: 0, off.
pub const DEFAULT_EAGER_REFRESH_FRACTION: f64 = 0.0;
/// The default `min_reads` of [`CacheBuilder::eager_refresh`].
pub const DEFAULT_EAGER_REFRESH_MIN_READS: u32 = 10;
/// The default of [`CacheBuilder::adaptive_ttl`]: off, every TTL is the
/// one the policy computes.
pub const DEFAULT_ADAPTIVE_TTL: Option<AdaptiveTtl> = None;
/// The default reads of [`AdaptiveTtl::hot_after`]: more than this per
/// window is a hot key.
pub const DEFAULT_ADAPTIVE_HOT_AFTER: u32 = 50;
/// The default factor of [`AdaptiveTtl::hot_after`].
pub const DEFAULT_ADAPTIVE_HOT_FACTOR: f64 = 2.0;
/// The default reads of [`AdaptiveTtl::cold_under`]: fewer than this over
/// a whole window is a cold key.
pub const DEFAULT_ADAPTIVE_COLD_UNDER: u32 = 5;
/// The default factor of [`AdaptiveTtl::cold_under`].
pub const DEFAULT_ADAPTIVE_COLD_FACTOR: f64 = 0.5;
/// The default lower bound of [`AdaptiveTtl::bounds`].
pub const DEFAULT_ADAPTIVE_MIN_TTL: Duration = Duration::from_secs(1);
/// The default upper bound of [`AdaptiveTtl::bounds`] (as
/// [`DEFAULT_HEURISTIC_MAX`]).
pub const DEFAULT_ADAPTIVE_MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// The default of [`AdaptiveTtl::window`].
pub const DEFAULT_ADAPTIVE_WINDOW: Duration = Duration::from_secs(60);
/// The default of [`AdaptiveTtl::tracked_keys`] (as many as the L2
/// promotion counters).
pub const DEFAULT_ADAPTIVE_TRACKED_KEYS: usize = 100_000;
/// The default of [`AdaptiveTtl::read_sample`]: past its first few reads,
/// an entry counts one read in 8 per thread (as
/// [`DEFAULT_HOT_KEY_SAMPLE`]).
pub const DEFAULT_ADAPTIVE_READ_SAMPLE: u32 = 8;
/// The largest [`AdaptiveTtl::read_sample`].
pub const MAX_ADAPTIVE_READ_SAMPLE: u32 = 1_024;
/// The largest upper bound of [`AdaptiveTtl::bounds`]: 100 years, well
/// within what an L2 entry's timeline may span (1 000 years, stale windows
/// included), so that an adapted entry is one L2 keeps too.
pub const MAX_ADAPTIVE_MAX_TTL: Duration = Duration::from_secs(100 * 365 * 86_400);

// Coalescing and upstream

/// The default of [`CacheBuilder::upstream_timeout`]. The default
/// [`coalesce_timeout`](CacheBuilder::coalesce_timeout) is twice this plus
/// one second.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// The default of [`CacheBuilder::max_in_flight`].
pub const DEFAULT_MAX_IN_FLIGHT: usize = 10_000;
/// The default of [`CacheBuilder::hit_for_pass`].
pub const DEFAULT_HIT_FOR_PASS: Duration = Duration::from_secs(10);
/// The default of [`CacheBuilder::refresh_timeout`].
pub const DEFAULT_REFRESH_TIMEOUT: Duration = Duration::from_secs(30);
/// The default of [`CacheBuilder::max_concurrent_refreshes`].
pub const DEFAULT_MAX_CONCURRENT_REFRESHES: usize = 64;
/// The default `failures` of [`CacheBuilder::circuit_breaker`].
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// The default `open_for` of [`CacheBuilder::circuit_breaker`].
pub const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(30);

/// How many URLs hit-for-pass remembers (not a setting).
const HIT_FOR_PASS_CAPACITY: usize = 10_000;

// Hot keys and prefetch

/// The default `top_n` of [`CacheBuilder::refresh_hot`]: 0, off.
pub const DEFAULT_REFRESH_HOT_TOP_N: usize = 0;
/// The default `every` of [`CacheBuilder::refresh_hot`].
pub const DEFAULT_REFRESH_HOT_EVERY: Duration = Duration::from_secs(60);
/// The most keys [`CacheBuilder::refresh_hot`] may refresh per round (its
/// tracker then keeps at most 4 000 requests of at most 8 KiB of fields
/// each).
pub const MAX_REFRESH_HOT_TOP_N: usize = 1_000;
/// The longest `every` of [`CacheBuilder::refresh_hot`]: one day.
pub const MAX_REFRESH_HOT_EVERY: Duration = Duration::from_secs(24 * 3600);
/// The default of [`CacheBuilder::hot_key_sample`]: one read in 8.
pub const DEFAULT_HOT_KEY_SAMPLE: u32 = 8;
/// The largest [`CacheBuilder::prefetch_queue`] (each URL waiting keeps a
/// request of at most 8 KiB of fields).
pub const MAX_PREFETCH_QUEUE: usize = 100_000;
/// The largest [`CacheBuilder::max_concurrent_prefetches`] and
/// [`CacheBuilder::max_concurrent_refreshes`].
pub const MAX_CONCURRENCY: usize = 100_000;
/// The default of [`CacheBuilder::prefetch_queue`].
pub const DEFAULT_PREFETCH_QUEUE: usize = 256;
/// The default of [`CacheBuilder::max_concurrent_prefetches`].
pub const DEFAULT_MAX_CONCURRENT_PREFETCHES: usize = 4;
/// The default of [`CacheBuilder::prefetch_timeout`].
pub const DEFAULT_PREFETCH_TIMEOUT: Duration = Duration::from_secs(10);

// L2

/// The default of [`CacheBuilder::namespace`].
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const DEFAULT_NAMESPACE: &str = "ttc";
/// The default of [`CacheBuilder::promote_after`].
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const DEFAULT_PROMOTE_AFTER: u32 = 3;
/// The default of [`CacheBuilder::promotion_window`].
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const DEFAULT_PROMOTION_WINDOW: Duration = Duration::from_secs(60);
/// The default of [`CacheBuilder::l2_timeout`].
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const DEFAULT_L2_TIMEOUT: Duration = Duration::from_millis(50);
/// The default `failures` of [`CacheBuilder::l2_circuit_breaker`].
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const DEFAULT_L2_BREAKER_FAILURES: u32 = 5;
/// The default `open_for` of [`CacheBuilder::l2_circuit_breaker`].
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const DEFAULT_L2_BREAKER_OPEN_FOR: Duration = Duration::from_secs(5);
/// The default of [`CacheBuilder::l2_write_queue`].
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const DEFAULT_L2_WRITE_QUEUE: usize = 1024;
/// The default of [`CacheBuilder::l1_max_ttl`]: no bound (L1 keeps
/// serving within its own freshness while Redis is unreachable, and
/// catches up from the invalidation log when it is back).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const DEFAULT_L1_MAX_TTL: Option<Duration> = None;
/// The default of [`CacheBuilder::l2_invalidation_log_len`].
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const DEFAULT_L2_INVALIDATION_LOG_LEN: usize = 10_000;
/// The default of [`CacheBuilder::compression_threshold`]: 1 KiB. Without
/// the `compression` feature L2 bodies are never compressed.
#[cfg(all(feature = "redis", feature = "compression"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "redis", feature = "compression"))))]
pub const DEFAULT_COMPRESSION_THRESHOLD: usize = 1024;

/// The default of [`CacheBuilder::distributed_coalescing`]: off (each
/// instance coalesces its own misses).
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const DEFAULT_DISTRIBUTED_COALESCING: bool = false;
/// The shortest [`CacheBuilder::lease_ttl`].
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub const MIN_LEASE_TTL: Duration = Duration::from_millis(10);

/// The deadline for making an L2 connection (not a setting; never below
/// [`CacheBuilder::l2_timeout`]).
#[cfg(feature = "redis")]
const L2_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The shortest [`CacheBuilder::shared_stats`] interval.
#[cfg(feature = "redis")]
const MIN_SHARED_STATS_INTERVAL: Duration = Duration::from_millis(100);

// Observability

/// The default of [`CacheBuilder::labels`]: the axum route template, else
/// the upstream host.
pub const DEFAULT_LABELS: LabelSource = LabelSource::Auto;
/// The default of [`CacheBuilder::max_labels`].
pub const DEFAULT_MAX_LABELS: usize = 64;
/// The largest [`CacheBuilder::max_labels`] accepted.
pub const MAX_LABELS_LIMIT: usize = 1000;
/// The default of [`CacheBuilder::log_level`]: warnings only.
pub const DEFAULT_LOG_LEVEL: LogLevel = LogLevel::Minimal;
/// The default of [`CacheBuilder::slow_threshold`].
pub const DEFAULT_SLOW_THRESHOLD: Duration = Duration::from_millis(50);
/// The default of [`CacheBuilder::observability`]: on.
pub const DEFAULT_OBSERVABILITY: bool = true;
/// The default of [`CacheBuilder::hit_timing_sample`].
pub const DEFAULT_HIT_TIMING_SAMPLE: u32 = crate::observe::HIT_TIMING_SAMPLE;
/// The default of [`CacheBuilder::span_level`].
pub const DEFAULT_SPAN_LEVEL: tracing::Level = tracing::Level::DEBUG;

/// Builds a [`Cache`]. Every setting has a default, a `DEFAULT_*` constant
/// of this module linked from the setter; [`build`](Self::build) checks
/// the settings, topic by topic, and refuses inconsistent ones with a
/// [`BuildError`] naming the setting.
///
/// ```
/// use std::time::Duration;
/// use http::HeaderName;
/// use tower_tiered_cache::{Cache, CacheMode, LogLevel, Route, SetCookiePolicy};
///
/// # fn main() -> Result<(), tower_tiered_cache::BuildError> {
/// let builder = Cache::builder()
///     // Storage
///     .mode(CacheMode::Shared)
///     .l1_capacity_bytes(256 * 1024 * 1024)
///     .max_body_bytes(4 * 1024 * 1024)
///     .max_variants(8)
///     .set_cookie(SetCookiePolicy::Pass)
///     .tag_fn(|req, _headers| vec![format!("section:{}", req.uri.path().split('/').nth(1).unwrap_or(""))])
///     // Keys
///     .sort_query(true)
///     .ignore_query_param("utm_*")
///     .key_header(HeaderName::from_static("x-tenant"))
///     // Freshness
///     .default_stale_while_revalidate(Duration::from_secs(30))
///     .default_stale_if_error(Duration::from_secs(300))
///     .negative_caching(Duration::from_secs(10))
///     .route(Route::prefix("/static/").ttl(Duration::from_secs(3600)).force())
///     // Coalescing and upstream
///     .upstream_timeout(Duration::from_secs(5))
///     .max_concurrent_refreshes(16)
///     .circuit_breaker(5, Duration::from_secs(30))
///     // Hot keys and prefetch (run by `CacheService::spawn_background`)
///     .refresh_hot(20, Duration::from_secs(30))
///     // Observability
///     .max_labels(32)
///     .log_level(LogLevel::Minimal)
///     .slow_threshold(Duration::from_millis(100));
///
/// // L2 (feature `redis`): nothing is connected until the first request.
/// #[cfg(feature = "redis")]
/// let builder = builder
///     .redis("redis://127.0.0.1:6379/")
///     .namespace("catalog")
///     .promote_after(2)
///     .l2_timeout(Duration::from_millis(20));
///
/// let cache = builder.build()?;
/// # drop(cache);
///
/// // Refused settings name themselves.
/// let err = Cache::builder().max_variants(0).build().unwrap_err();
/// assert!(err.is_invalid_setting());
/// assert_eq!(err.setting(), "max_variants");
/// # Ok(()) }
/// ```
///
/// # Storage
///
/// What is stored, and where in process:
/// [`mode`](Self::mode), [`l1_capacity_bytes`](Self::l1_capacity_bytes),
/// [`l1_max_entry_bytes`](Self::l1_max_entry_bytes),
/// [`max_body_bytes`](Self::max_body_bytes),
/// [`max_variants`](Self::max_variants),
/// [`l1_write_through`](Self::l1_write_through),
/// [`l1_admission`](Self::l1_admission),
/// [`set_cookie`](Self::set_cookie),
/// [`share_authorized`](Self::share_authorized),
/// [`store_server_errors`](Self::store_server_errors),
/// [`tag_fn`](Self::tag_fn).
///
/// # Keys
///
/// What a key is made of (see the crate docs, "Keys: what a client can
/// change"): [`key_scheme`](Self::key_scheme),
/// [`key_authority`](Self::key_authority), [`sort_query`](Self::sort_query),
/// [`ignore_query_param`](Self::ignore_query_param),
/// [`key_header`](Self::key_header), [`key_fn`](Self::key_fn),
/// [`partition_by_credentials`](Self::partition_by_credentials).
///
/// # Freshness
///
/// How long a response is used, and what happens around its end:
/// [`clock`](Self::clock), [`heuristic_fraction`](Self::heuristic_fraction),
/// [`heuristic_max`](Self::heuristic_max),
/// [`default_stale_while_revalidate`](Self::default_stale_while_revalidate),
/// [`default_stale_if_error`](Self::default_stale_if_error),
/// [`negative_caching`](Self::negative_caching),
/// [`keep_for_revalidation`](Self::keep_for_revalidation),
/// [`route`](Self::route),
/// [`request_cache_control`](Self::request_cache_control),
/// [`targeted_cache_control`](Self::targeted_cache_control),
/// [`strip_targeted_cache_control`](Self::strip_targeted_cache_control),
/// [`stale_extension`](Self::stale_extension),
/// [`eager_refresh`](Self::eager_refresh),
/// [`adaptive_ttl`](Self::adaptive_ttl).
///
/// # Coalescing and upstream
///
/// How the cache calls the inner service:
/// [`coalesce_timeout`](Self::coalesce_timeout),
/// [`upstream_timeout`](Self::upstream_timeout),
/// [`max_in_flight`](Self::max_in_flight),
/// [`hit_for_pass`](Self::hit_for_pass),
/// [`refresh_timeout`](Self::refresh_timeout),
/// [`max_concurrent_refreshes`](Self::max_concurrent_refreshes),
/// [`circuit_breaker`](Self::circuit_breaker).
///
/// # Hot keys and prefetch
///
/// Background work through the inner service, run by
/// [`CacheService::spawn_background`](crate::CacheService::spawn_background):
/// [`refresh_hot`](Self::refresh_hot),
/// [`hot_key_sample`](Self::hot_key_sample), [`prefetch`](Self::prefetch),
/// [`prefetch_queue`](Self::prefetch_queue),
/// [`max_concurrent_prefetches`](Self::max_concurrent_prefetches),
/// [`prefetch_timeout`](Self::prefetch_timeout).
///
/// # L2
///
/// The shared tier in Redis (feature `redis`): `redis`, `redis_cluster`,
/// `redis_sentinel` (with `redis_sentinel_master_url`), `namespace`, `promote_after`, `promotion_window`, `l2_timeout`,
/// `l2_circuit_breaker`, `l2_write_queue`, `l1_max_ttl`,
/// `l2_invalidation_log_len`,
/// `compression_threshold` (feature `compression`), `shared_stats`,
/// `distributed_coalescing`, `lease_ttl`.
///
/// # Observability
///
/// What the cache records and reports: [`labels`](Self::labels),
/// [`label_fn`](Self::label_fn), [`max_labels`](Self::max_labels),
/// [`log_level`](Self::log_level), [`slow_threshold`](Self::slow_threshold),
/// [`health_thresholds`](Self::health_thresholds),
/// [`observability`](Self::observability),
/// [`hit_timing_sample`](Self::hit_timing_sample),
/// [`span_level`](Self::span_level), `meter` (feature `opentelemetry`).
#[must_use]
pub struct CacheBuilder {
    clock: Arc<dyn Clock>,
    policy: PolicyConfig,
    /// The names given to `targeted_cache_control`, checked by `build`;
    /// `None`: the mode's default.
    targeted: Option<Vec<String>>,
    keys: KeyConfig,
    l1_capacity: u64,
    l1_max_entry: Option<u64>,
    max_body: u64,
    max_variants: usize,
    coalesce_timeout: Option<Duration>,
    upstream_timeout: Duration,
    max_in_flight: usize,
    hit_for_pass_ttl: Duration,
    refresh_timeout: Duration,
    max_refreshes: usize,
    extension_factor: f64,
    max_extensions: u32,
    breaker_threshold: u32,
    breaker_open_for: Duration,
    l1_admission: L1Admission,
    tags: TagConfig,
    adaptive: Option<AdaptiveTtl>,
    /// `refresh_hot` and `prefetch`.
    hot: HotSettings,
    /// Where the L2 tier lives; none without `redis` / `redis_cluster` /
    /// `redis_sentinel`.
    #[cfg(feature = "redis")]
    l2_target: Option<crate::store::redis::RedisTarget>,
    /// `redis_sentinel_master_url`: the master's scheme, credentials and
    /// database, with `redis_sentinel`.
    #[cfg(feature = "redis")]
    sentinel_master_url: Option<String>,
    /// The L2 tier's settings, handed to it as they are.
    #[cfg(feature = "redis")]
    l2: crate::store::l2::L2Config,
    #[cfg(feature = "redis")]
    shared_stats: Option<Duration>,
    /// `distributed_coalescing`.
    #[cfg(feature = "redis")]
    distributed: bool,
    /// `lease_ttl`; `None`: the upstream timeout.
    #[cfg(feature = "redis")]
    lease_ttl: Option<Duration>,
    observe: ObserveConfig,
    #[cfg(feature = "opentelemetry")]
    meter: Option<opentelemetry::metrics::Meter>,
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
            policy: PolicyConfig {
                mode: DEFAULT_MODE,
                request_cc: DEFAULT_REQUEST_CACHE_CONTROL,
                heuristic_fraction: DEFAULT_HEURISTIC_FRACTION,
                heuristic_max: DEFAULT_HEURISTIC_MAX,
                default_swr: DEFAULT_STALE_WHILE_REVALIDATE,
                default_sie: DEFAULT_STALE_IF_ERROR,
                set_cookie: DEFAULT_SET_COOKIE,
                share_authorized: DEFAULT_SHARE_AUTHORIZED,
                store_server_errors: DEFAULT_STORE_SERVER_ERRORS,
                partition_credentials: DEFAULT_PARTITION_BY_CREDENTIALS,
                keep_for_revalidation: DEFAULT_KEEP_FOR_REVALIDATION,
                strip_targeted: DEFAULT_STRIP_TARGETED_CACHE_CONTROL,
                ..PolicyConfig::default()
            },
            targeted: None,
            keys: KeyConfig {
                scheme: DEFAULT_KEY_SCHEME,
                authority: DEFAULT_KEY_AUTHORITY,
                sort_query: DEFAULT_SORT_QUERY,
                credentials: DEFAULT_PARTITION_BY_CREDENTIALS,
                ..KeyConfig::default()
            },
            l1_capacity: DEFAULT_L1_CAPACITY_BYTES,
            l1_max_entry: None,
            max_body: DEFAULT_MAX_BODY_BYTES,
            max_variants: DEFAULT_MAX_VARIANTS,
            coalesce_timeout: None,
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            hit_for_pass_ttl: DEFAULT_HIT_FOR_PASS,
            refresh_timeout: DEFAULT_REFRESH_TIMEOUT,
            max_refreshes: DEFAULT_MAX_CONCURRENT_REFRESHES,
            extension_factor: DEFAULT_STALE_EXTENSION_FACTOR,
            max_extensions: DEFAULT_STALE_EXTENSION_TIMES,
            breaker_threshold: DEFAULT_BREAKER_FAILURES,
            breaker_open_for: DEFAULT_BREAKER_OPEN_FOR,
            l1_admission: DEFAULT_L1_ADMISSION,
            tags: TagConfig {
                headers: TAG_HEADERS.map(HeaderName::from_static).to_vec(),
                max_tags: MAX_TAGS_PER_RESPONSE,
                max_len: MAX_TAG_BYTES,
                func: None,
            },
            adaptive: DEFAULT_ADAPTIVE_TTL,
            hot: HotSettings::default(),
            #[cfg(feature = "redis")]
            l2_target: None,
            #[cfg(feature = "redis")]
            sentinel_master_url: None,
            #[cfg(feature = "redis")]
            l2: default_l2(),
            #[cfg(feature = "redis")]
            shared_stats: None,
            #[cfg(feature = "redis")]
            distributed: DEFAULT_DISTRIBUTED_COALESCING,
            #[cfg(feature = "redis")]
            lease_ttl: None,
            observe: ObserveConfig {
                labels: DEFAULT_LABELS,
                max_labels: DEFAULT_MAX_LABELS,
                log: DEFAULT_LOG_LEVEL,
                slow: DEFAULT_SLOW_THRESHOLD,
                eager_fraction: DEFAULT_EAGER_REFRESH_FRACTION,
                eager_min_reads: DEFAULT_EAGER_REFRESH_MIN_READS,
                span_level: DEFAULT_SPAN_LEVEL,
                enabled: DEFAULT_OBSERVABILITY,
                hit_sample: DEFAULT_HIT_TIMING_SAMPLE,
                ..ObserveConfig::default()
            },
            #[cfg(feature = "opentelemetry")]
            meter: None,
        }
    }
}

/// The L2 settings before any L2 setter; `build` fills in the cache-wide
/// ones (`max_body_bytes`, `warnings`, `max_variants`).
#[cfg(feature = "redis")]
fn default_l2() -> crate::store::l2::L2Config {
    crate::store::l2::L2Config {
        namespace: DEFAULT_NAMESPACE.to_owned(),
        timeout: DEFAULT_L2_TIMEOUT,
        connect_timeout: L2_CONNECT_TIMEOUT,
        breaker_failures: DEFAULT_L2_BREAKER_FAILURES,
        breaker_open_for: DEFAULT_L2_BREAKER_OPEN_FOR,
        promote_after: DEFAULT_PROMOTE_AFTER,
        promotion_window: DEFAULT_PROMOTION_WINDOW,
        write_queue: DEFAULT_L2_WRITE_QUEUE,
        l1_max_ttl: DEFAULT_L1_MAX_TTL,
        invalidation_log_len: DEFAULT_L2_INVALIDATION_LOG_LEN,
        #[cfg(feature = "compression")]
        compress_over: Some(DEFAULT_COMPRESSION_THRESHOLD),
        #[cfg(not(feature = "compression"))]
        compress_over: None,
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        warnings: DEFAULT_LOG_LEVEL.warnings(),
        max_variants: DEFAULT_MAX_VARIANTS,
        #[cfg(feature = "l2-encryption")]
        keys: None,
    }
}

/// # Storage
impl CacheBuilder {
    /// Shared (servers, proxies) or private (one client's cache); default
    /// [`DEFAULT_MODE`].
    pub fn mode(mut self, mode: CacheMode) -> Self {
        self.policy.mode = mode;
        self
    }

    /// L1 capacity in bytes (default [`DEFAULT_L1_CAPACITY_BYTES`]),
    /// weighed by body, headers and key size.
    ///
    /// Besides L1, each thread that serves hits keeps its own copies of
    /// the few entries it reads most (at most 8, each weighing at most
    /// 16 KiB: at most 128 KiB per thread, shared by every cache in the
    /// process), so that hits on a hot key from many cores write no memory
    /// the cores share. A copy is dropped as soon as L1's entry changes
    /// (stored again, revalidated, invalidated, purged, evicted); none is
    /// kept with eager refresh or adaptive TTL on.
    pub fn l1_capacity_bytes(mut self, bytes: u64) -> Self {
        self.l1_capacity = bytes;
        self
    }

    /// The largest single entry L1 keeps (default: the body cap plus
    /// [`DEFAULT_L1_ENTRY_OVERHEAD_BYTES`], at most an eighth of the L1
    /// capacity). At most half the L1 capacity.
    pub fn l1_max_entry_bytes(mut self, bytes: u64) -> Self {
        self.l1_max_entry = Some(bytes);
        self
    }

    /// Bodies larger than this stream through uncached (default
    /// [`DEFAULT_MAX_BODY_BYTES`]).
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        self.max_body = bytes;
        self
    }

    /// The most variants (`Vary`) kept per URL (default
    /// [`DEFAULT_MAX_VARIANTS`]), in L1 and in L2; the oldest is dropped
    /// beyond it.
    pub fn max_variants(mut self, n: usize) -> Self {
        self.max_variants = n;
        self
    }

    /// Whether upstream responses are written to L1 as well as to L2
    /// (default [`DEFAULT_L1_WRITE_THROUGH`]). With false, L1 holds only
    /// entries promoted from L2. Without an L2 tier responses always go to
    /// L1. A shorthand for [`l1_admission`](Self::l1_admission): true sets
    /// [`L1Admission::Always`], false [`L1Admission::Reads`]; the last of
    /// the two calls wins.
    pub fn l1_write_through(mut self, yes: bool) -> Self {
        self.l1_admission = if yes {
            L1Admission::Always
        } else {
            L1Admission::Reads
        };
        self
    }

    /// Which entries L1 holds when an L2 tier is below it (default
    /// [`DEFAULT_L1_ADMISSION`]: every entry, as it is stored): entries up
    /// to a size at once, others once read
    /// `promote_after` (feature `redis`) times from L2, or both; the
    /// others are served from L2 until they qualify. See [`L1Admission`]
    /// for each rule. Without an L2 tier every entry goes to L1. A
    /// `MaxBytes` of 0 fails [`build`](Self::build).
    ///
    /// Small entries at once, larger ones once read three times within
    /// the promotion window:
    ///
    /// ```
    /// use tower_tiered_cache::{Cache, L1Admission};
    ///
    /// let builder = Cache::builder().l1_admission(L1Admission::MaxBytesOrReads(16 * 1024));
    /// #[cfg(feature = "redis")]
    /// let builder = builder.redis("redis://127.0.0.1:6379/").promote_after(3);
    /// let cache = builder.build().unwrap();
    /// # drop(cache);
    /// assert!(Cache::builder()
    ///     .l1_admission(L1Admission::MaxBytes(0))
    ///     .build()
    ///     .is_err());
    /// ```
    pub fn l1_admission(mut self, rule: L1Admission) -> Self {
        self.l1_admission = rule;
        self
    }

    /// What to do with `Set-Cookie` responses (default
    /// [`DEFAULT_SET_COOKIE`]: do not store).
    pub fn set_cookie(mut self, policy: SetCookiePolicy) -> Self {
        self.policy.set_cookie = policy;
        self
    }

    /// Share responses to requests with `Authorization` as if they were
    /// anonymous (default [`DEFAULT_SHARE_AUTHORIZED`]: RFC 9111 §3.5
    /// applies).
    pub fn share_authorized(mut self, yes: bool) -> Self {
        self.policy.share_authorized = yes;
        self
    }

    /// Whether a 5xx response that states its own freshness (`max-age`,
    /// `s-maxage`, `Expires`) is stored and reused like any other (default
    /// [`DEFAULT_STORE_SERVER_ERRORS`]: yes, as RFC 9111 §3 allows). Either
    /// way a 5xx counts against the label's breaker, a stale entry that
    /// `stale-if-error` allows is served instead of it, and a background
    /// refresh that gets one keeps the stale entry. A 5xx without explicit
    /// freshness is never stored (a route's forced TTL does not apply to
    /// it; 501 may get a heuristic lifetime from `Last-Modified`).
    pub fn store_server_errors(mut self, yes: bool) -> Self {
        self.policy.store_server_errors = yes;
        self
    }

    /// Names invalidation tags for a stored response with a function (a
    /// [`TagFn`](crate::TagFn)): it sees the request and the response
    /// headers. Its tags are added to those of the [`TAG_HEADERS`]
    /// response headers; [`Cache::invalidate_tag`] removes every entry
    /// carrying the tag, in both tiers. Tags are trimmed and deduplicated;
    /// empty ones, ones longer than [`MAX_TAG_BYTES`] or with characters
    /// other than visible ASCII, and any beyond [`MAX_TAGS_PER_RESPONSE`],
    /// are dropped. A second call replaces the function. None by default.
    ///
    /// ```
    /// use tower_tiered_cache::Cache;
    ///
    /// // Every response under /products/42/... is tagged `product-42`.
    /// let cache = Cache::builder()
    ///     .tag_fn(|req, _headers| {
    ///         let mut parts = req.uri.path().split('/').skip(1);
    ///         match (parts.next(), parts.next()) {
    ///             (Some("products"), Some(id)) => vec![format!("product-{id}")],
    ///             _ => Vec::new(),
    ///         }
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # drop(cache);
    /// ```
    pub fn tag_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts, &HeaderMap) -> Vec<String> + Send + Sync + 'static,
    {
        self.tags.func = Some(Arc::new(f));
        self
    }
}

/// # Keys
impl CacheBuilder {
    /// Whether the URI scheme is part of the key (default
    /// [`DEFAULT_KEY_SCHEME`]).
    pub fn key_scheme(mut self, yes: bool) -> Self {
        self.keys.scheme = yes;
        self
    }

    /// Whether the authority (or `Host`) is part of the key (default
    /// [`DEFAULT_KEY_AUTHORITY`]).
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
    /// entry (default [`DEFAULT_SORT_QUERY`]).
    pub fn sort_query(mut self, yes: bool) -> Self {
        self.keys.sort_query = yes;
        self
    }

    /// Drop a query parameter from keys: an exact name, or a prefix ending
    /// in `*` such as `utm_*`. May be called repeatedly; none by default.
    pub fn ignore_query_param(mut self, pattern: &str) -> Self {
        self.keys.drop_query.push(QueryDrop::parse(pattern));
        self
    }

    /// Add a request header's value to every key (say, a tenant header).
    /// May be called repeatedly; none by default.
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
    ///
    /// [`key_writer`](Self::key_writer) does the same without allocating a
    /// `String` per request.
    pub fn key_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.keys.custom = Some(crate::key::writer_of(f));
        self
    }

    /// [`key_fn`](Self::key_fn) for hot paths: the function appends the
    /// readable key to `out` (an empty buffer the cache reuses between
    /// requests) and returns `true`, or returns `false` to let the request
    /// pass uncached (what it wrote is then ignored). The same key text
    /// gives the same key as from `key_fn`; the last of the two set wins.
    ///
    /// ```
    /// use tower_tiered_cache::Cache;
    ///
    /// let cache = Cache::builder()
    ///     .key_writer(|parts, out| {
    ///         if parts.uri.path().starts_with("/live/") {
    ///             return false; // never cached
    ///         }
    ///         out.push_str("GET ");
    ///         out.push_str(parts.uri.path());
    ///         true
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # drop(cache);
    /// ```
    pub fn key_writer<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts, &mut String) -> bool + Send + Sync + 'static,
    {
        self.keys.custom = Some(Arc::new(f));
        self
    }

    /// Partitions the cache by credentials (default
    /// [`DEFAULT_PARTITION_BY_CREDENTIALS`]): a request that carries
    /// `Authorization`, `Proxy-Authorization` or `Cookie` is looked
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
}

/// # Freshness
impl CacheBuilder {
    /// The clock freshness is measured with (default: the system clock).
    /// Tests pass a [`ManualClock`](crate::ManualClock) and move it.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The share of the time since `Last-Modified` used as freshness when
    /// the response gives none (default [`DEFAULT_HEURISTIC_FRACTION`],
    /// RFC 9111 §4.2.2); within 0..=1.
    pub fn heuristic_fraction(mut self, fraction: f64) -> Self {
        self.policy.heuristic_fraction = fraction;
        self
    }

    /// The cap on heuristic freshness (default [`DEFAULT_HEURISTIC_MAX`]).
    pub fn heuristic_max(mut self, max: Duration) -> Self {
        self.policy.heuristic_max = max;
        self
    }

    /// The stale-while-revalidate window for responses that name none
    /// (default [`DEFAULT_STALE_WHILE_REVALIDATE`]: RFC 9111 behaviour).
    pub fn default_stale_while_revalidate(mut self, window: Duration) -> Self {
        self.policy.default_swr = window;
        self
    }

    /// The stale-if-error window for responses that name none (default
    /// [`DEFAULT_STALE_IF_ERROR`]).
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

    /// How long past freshness an entry with validators is kept for a
    /// conditional revalidation (default [`DEFAULT_KEEP_FOR_REVALIDATION`]).
    pub fn keep_for_revalidation(mut self, keep: Duration) -> Self {
        self.policy.keep_for_revalidation = keep;
        self
    }

    /// Adds a route rule; the first rule that matches a path applies. None
    /// by default.
    pub fn route(mut self, route: Route) -> Self {
        self.policy.routes.push(route);
        self
    }

    /// What a shared cache does with requests' own cache directives
    /// (default [`DEFAULT_REQUEST_CACHE_CONTROL`], with revalidations
    /// collapsed to one in flight per key). Private caches always honour
    /// them.
    pub fn request_cache_control(mut self, choice: RequestCacheControl) -> Self {
        self.policy.request_cc = choice;
        self
    }

    /// The targeted cache-control fields (RFC 9213) this cache obeys, in
    /// order of precedence: a response's first listed field that is
    /// present with a valid, non-empty value (a Structured Fields
    /// Dictionary, RFC 8941) replaces its `Cache-Control` and `Expires`
    /// for this cache's decisions to store and reuse it (`max-age`,
    /// `s-maxage`, `no-store`, `no-cache`, `private`, `must-revalidate`,
    /// the stale windows, …); a field that fails to parse is ignored and
    /// the next one, or `Cache-Control`, applies. `Cache-Control` itself is
    /// forwarded unchanged, for the caches behind this one.
    ///
    /// Default: [`DEFAULT_TARGETED_CACHE_CONTROL`] (`CDN-Cache-Control`) in
    /// [`CacheMode::Shared`], none in [`CacheMode::Private`]. A list given
    /// here applies in either mode (this is how a private cache opts in);
    /// an empty list turns targeted fields off. Names are matched in any
    /// letter case; [`build`](Self::build) refuses one that is not a valid
    /// field name, `Cache-Control` itself, or a name listed twice.
    ///
    /// ```
    /// use tower_tiered_cache::Cache;
    ///
    /// // Our own field first, then the CDN one.
    /// let cache = Cache::builder()
    ///     .targeted_cache_control(["Acme-Cache-Control", "CDN-Cache-Control"])
    ///     .build()
    ///     .unwrap();
    /// # drop(cache);
    /// let err = Cache::builder()
    ///     .targeted_cache_control(["Bad Name"])
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err.setting(), "targeted_cache_control");
    /// ```
    pub fn targeted_cache_control<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.targeted = Some(names.into_iter().map(|n| n.as_ref().to_owned()).collect());
        self
    }

    /// Whether the targeted field a response is judged by (the first valid
    /// one of [`targeted_cache_control`](Self::targeted_cache_control)'s
    /// list) is removed from the response before it is forwarded (default
    /// [`DEFAULT_STRIP_TARGETED_CACHE_CONTROL`]: it is forwarded as
    /// received). Applies to every response the cache forwards, hits,
    /// misses and passes alike; stored entries keep the field, so a later
    /// revalidation is judged as the first response was. Other targeted
    /// fields, and `Cache-Control`, are never removed.
    pub fn strip_targeted_cache_control(mut self, yes: bool) -> Self {
        self.policy.strip_targeted = yes;
        self
    }

    /// When a refresh fails or the upstream errs, the stale windows grow by
    /// `factor` × the entry's TTL (default
    /// [`DEFAULT_STALE_EXTENSION_FACTOR`], within 0..=1), at most
    /// `max_times` times per entry (default
    /// [`DEFAULT_STALE_EXTENSION_TIMES`]).
    pub fn stale_extension(mut self, factor: f64, max_times: u32) -> Self {
        self.extension_factor = factor;
        self.max_extensions = max_times;
        self
    }

    /// Refreshes hot entries in the background before they go stale: an
    /// entry read from L1 at least `min_reads` times (default
    /// [`DEFAULT_EAGER_REFRESH_MIN_READS`], at least 1) is refreshed once
    /// (one upstream call, coalesced with any miss) when less than
    /// `fraction` of its freshness lifetime is left (within 0..1). Off by
    /// default ([`DEFAULT_EAGER_REFRESH_FRACTION`]).
    pub fn eager_refresh(mut self, fraction: f64, min_reads: u32) -> Self {
        self.observe.eager_fraction = fraction;
        self.observe.eager_min_reads = min_reads;
        self
    }

    /// Scales the TTLs the cache chooses itself (a route's
    /// [`ttl`](Route::ttl) forced on a response without freshness, a
    /// heuristic lifetime, the [`negative_caching`](Self::negative_caching)
    /// TTL) by how often their key is read: longer for keys read often,
    /// shorter for keys read rarely, within bounds. An origin's explicit
    /// freshness is never changed unless the route says
    /// [`force`](Route::force). Off by default
    /// ([`DEFAULT_ADAPTIVE_TTL`]); see [`AdaptiveTtl`] for its settings
    /// and their defaults. [`build`](Self::build) refuses factors that are
    /// not finite and above 0, thresholds or bounds in the wrong order.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_tiered_cache::{AdaptiveTtl, Cache, Route};
    ///
    /// let cache = Cache::builder()
    ///     .route(Route::prefix("/odds").ttl(Duration::from_secs(10)).force())
    ///     .adaptive_ttl(AdaptiveTtl::new().hot_after(50, 2.0).cold_under(5, 0.5))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(cache.stats().ttl_lengthened, 0);
    ///
    /// let err = Cache::builder()
    ///     .adaptive_ttl(AdaptiveTtl::new().hot_after(50, 0.0))
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err.setting(), "adaptive_ttl");
    /// ```
    pub fn adaptive_ttl(mut self, adaptive: AdaptiveTtl) -> Self {
        self.adaptive = Some(adaptive);
        self
    }
}

/// # Coalescing and upstream
impl CacheBuilder {
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

    /// The deadline for an upstream call (default
    /// [`DEFAULT_UPSTREAM_TIMEOUT`]): for the response head, and, when the
    /// body is read to be stored, for the whole body once the head is in
    /// (so a stalled body is caught too).
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

    /// The most upstream calls others may join at once (default
    /// [`DEFAULT_MAX_IN_FLIGHT`]); beyond it requests call alone.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// How long a URL whose response could not be stored skips coalescing
    /// (hit-for-pass; default [`DEFAULT_HIT_FOR_PASS`], zero disables).
    ///
    /// A URL is marked when its origin answers in a way that says how it
    /// answers every request: `no-store` or `private` (in a shared cache)
    /// in the response, `Set-Cookie` under [`SetCookiePolicy::Pass`],
    /// `Vary: *`, no freshness, or a body over
    /// [`max_body_bytes`](Self::max_body_bytes). It is not marked for a
    /// status this cache does not store, an `Authorization` it may not
    /// share, or the request's own `no-store`. While marked, requests for
    /// it go to the origin each on its own, as they would have to anyway
    /// (nothing could be shared), and skip the in-flight map.
    pub fn hit_for_pass(mut self, ttl: Duration) -> Self {
        self.hit_for_pass_ttl = ttl;
        self
    }

    /// The deadline of a background refresh (default
    /// [`DEFAULT_REFRESH_TIMEOUT`]).
    pub fn refresh_timeout(mut self, timeout: Duration) -> Self {
        self.refresh_timeout = timeout;
        self
    }

    /// The most background refreshes running at once (default
    /// [`DEFAULT_MAX_CONCURRENT_REFRESHES`], at most [`MAX_CONCURRENCY`]):
    /// stale and eager refreshes and typed values' refreshes share these;
    /// [`refresh_hot`](Self::refresh_hot) rounds (the HTTP worker's and
    /// every value cache's) share as many of their own, so that a round
    /// never holds up a stale refresh.
    pub fn max_concurrent_refreshes(mut self, n: usize) -> Self {
        self.max_refreshes = n;
        self
    }

    /// The upstream circuit breakers, one per request label (see
    /// [`labels`](Self::labels); bounded by [`max_labels`](Self::max_labels)):
    /// a label's breaker opens after `failures` consecutive transport
    /// errors, timeouts or 502/503/504 answers to its requests (default
    /// [`DEFAULT_BREAKER_FAILURES`]) for `open_for` (default
    /// [`DEFAULT_BREAKER_OPEN_FOR`]). Other statuses, 500 included, are
    /// the URL's answer and reset the count. While a breaker is open its
    /// label's requests with a usable stale-if-error entry are answered
    /// from it and its background refreshes wait; other labels are not
    /// affected. See [`Cache::upstream_breakers`].
    pub fn circuit_breaker(mut self, failures: u32, open_for: Duration) -> Self {
        self.breaker_threshold = failures;
        self.breaker_open_for = open_for;
        self
    }
}

/// # Hot keys and prefetch
impl CacheBuilder {
    /// Refreshes the `top_n` most-read keys in the background every
    /// `every` (defaults [`DEFAULT_REFRESH_HOT_TOP_N`], off, and
    /// [`DEFAULT_REFRESH_HOT_EVERY`]; `top_n` at most
    /// [`MAX_REFRESH_HOT_TOP_N`], `every` at most
    /// [`MAX_REFRESH_HOT_EVERY`]), so that they never go stale while they
    /// are read.
    ///
    /// Reads (hits and misses) are counted in a tracker of fixed size
    /// (4 slots per key reported, at least 256), sampled one in
    /// [`hot_key_sample`](Self::hot_key_sample); counts halve at every
    /// round, so the ranking follows what is read now. Each round takes
    /// the hottest keys whose entry L1 holds and that were stored at least
    /// `every` ago, and refreshes them as a stale entry is refreshed: one
    /// refresh per key, at most
    /// [`max_concurrent_refreshes`](Self::max_concurrent_refreshes) at
    /// once (permits of the rounds' own, apart from the request path's
    /// stale refreshes; a round waits for a free one, for at most
    /// `every`), each within [`refresh_timeout`](Self::refresh_timeout), a
    /// failure keeping the entry. The request sent is the one a second
    /// sampled read of the key made, kept with the tracker without its
    /// conditionals, range and directives (one of over 8 KiB of fields is
    /// not kept, and its key is not refreshed), and without its
    /// `Authorization`, `Proxy-Authorization` and `Cookie` unless keys are
    /// partitioned by them
    /// ([`partition_by_credentials`](Self::partition_by_credentials), or a
    /// [`key_header`](Self::key_header) naming one): one client's
    /// credentials are never sent for a key others read.
    ///
    /// The rounds run in the worker
    /// [`CacheService::spawn_background`](crate::CacheService::spawn_background)
    /// starts.
    pub fn refresh_hot(mut self, top_n: usize, every: Duration) -> Self {
        self.hot.top_n = top_n;
        self.hot.every = every;
        self
    }

    /// How many reads the hot-key tracker of
    /// [`refresh_hot`](Self::refresh_hot) counts: one in `n` per thread, on
    /// average (default [`DEFAULT_HOT_KEY_SAMPLE`], at least 1; 1 counts
    /// every read). A sampled read takes one of 16 locks only when it is
    /// free, and never allocates, except to keep the request of a key seen
    /// for the second time. [`prefetch`](Self::prefetch) runs for one hit
    /// in `n` too (and every miss).
    pub fn hot_key_sample(mut self, n: u32) -> Self {
        self.hot.sample = n;
        self
    }

    /// After a read (every miss, and one hit in
    /// [`hot_key_sample`](Self::hot_key_sample) per thread), warms the URLs
    /// `f` names for it that are not in L1, in the background, through the
    /// inner service. Other hits cost a thread-local count: `f` is not
    /// called.
    ///
    /// A URL without an authority takes the read's scheme and authority;
    /// one with an authority other than the read's (its URI's, else its
    /// `Host`), or another scheme, is refused and counted as dropped: a
    /// prefetch never goes to another host. The request sent carries the
    /// read's fields without its conditionals, range and directives, and
    /// without its credentials unless keys are partitioned by them (as for
    /// [`refresh_hot`](Self::refresh_hot)). At most 16 URLs per read are
    /// taken. A URL already queued or being warmed is not queued again, one
    /// marked hit-for-pass is not queued, nor one whose warming failed
    /// within the last [`prefetch_timeout`](Self::prefetch_timeout); beyond
    /// [`prefetch_queue`](Self::prefetch_queue) waiting URLs they are
    /// dropped. Reads made by prefetching prefetch nothing. Counted in
    /// [`Stats::prefetch`](crate::Stats::prefetch). Warming requests are
    /// requests through the cache like any other (counted under their
    /// label).
    ///
    /// Prefetching runs in the worker
    /// [`CacheService::spawn_background`](crate::CacheService::spawn_background)
    /// starts; nothing is queued while none runs.
    ///
    /// ```
    /// use http::Uri;
    /// use tower_tiered_cache::Cache;
    ///
    /// // After page n of a listing, page n + 1.
    /// let cache = Cache::builder()
    ///     .prefetch(|req| {
    ///         let page: u32 = req.uri.query()
    ///             .and_then(|q| q.strip_prefix("page="))
    ///             .and_then(|n| n.parse().ok())
    ///             .unwrap_or(1);
    ///         let next: Uri = format!("{}?page={}", req.uri.path(), page + 1).parse().unwrap();
    ///         vec![next]
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # drop(cache);
    /// ```
    pub fn prefetch<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Vec<http::Uri> + Send + Sync + 'static,
    {
        self.hot.prefetch = Some(Arc::new(f));
        self
    }

    /// The most URLs waiting to be prefetched (default
    /// [`DEFAULT_PREFETCH_QUEUE`], at most [`MAX_PREFETCH_QUEUE`]); beyond
    /// it they are dropped and counted.
    pub fn prefetch_queue(mut self, n: usize) -> Self {
        self.hot.queue = n;
        self
    }

    /// The most URLs prefetched at once (default
    /// [`DEFAULT_MAX_CONCURRENT_PREFETCHES`], at most [`MAX_CONCURRENCY`]).
    pub fn max_concurrent_prefetches(mut self, n: usize) -> Self {
        self.hot.concurrency = n;
        self
    }

    /// The deadline of one prefetch, body included (default
    /// [`DEFAULT_PREFETCH_TIMEOUT`]); a URL whose prefetch failed is not
    /// prefetched again for as long.
    pub fn prefetch_timeout(mut self, timeout: Duration) -> Self {
        self.hot.timeout = timeout;
        self
    }
}

/// # L2
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
impl CacheBuilder {
    /// Adds an L2 tier on one Redis node: `redis://[user:password@]host:port[/db]`
    /// or `rediss://` for TLS (feature `redis-tls`). The connection is
    /// made on first use; a URL the Redis client refuses fails
    /// [`build`](Self::build) with a [`BuildError`] that
    /// [`is_redis`](BuildError::is_redis).
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.l2_target = Some(crate::store::redis::RedisTarget::Single(url.into()));
        self
    }

    /// Adds an L2 tier on a Redis Cluster, given one or more node URLs.
    pub fn redis_cluster<I, U>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        self.l2_target = Some(crate::store::redis::RedisTarget::Cluster(
            urls.into_iter().map(Into::into).collect(),
        ));
        self
    }

    /// Adds an L2 tier on the master of a set that Redis Sentinel
    /// monitors: `master_name` as in the sentinels' `sentinel monitor`
    /// line, and the sentinels' URLs (`redis://[user:password@]host:port`,
    /// or `rediss://` with the `redis-tls` feature; a sentinel has no
    /// database). Like [`redis`](Self::redis) and
    /// [`redis_cluster`](Self::redis_cluster), the last of the three given
    /// is the L2 tier.
    ///
    /// The master is found on first use: the sentinels are asked in turn
    /// (`SENTINEL get-master-addr-by-name`, each within the connect
    /// timeout, the one that answered last first), and the address named
    /// must answer `ROLE` with `master`. It is found again after a
    /// failover: when a command on it fails with a dropped or refused
    /// connection, `READONLY` or `MASTERDOWN`, and when the L2 circuit
    /// breaker opens. One search at a time, shared by every operation
    /// waiting for it, each within its own [`l2_timeout`](Self::l2_timeout):
    /// until a master answers, L2 operations are misses, counted as L2
    /// errors, and the breaker opens as for any Redis that is down.
    /// Everything follows the master: entries, tags, the invalidation log
    /// and its reader, purges, shared stats. After a failover each
    /// instance clears its L1 once (`l2_coherence_resets`): the new
    /// master's copy of the log may lack the old one's last entries.
    ///
    /// The master is reached with `redis://`, no credentials and database
    /// 0, unless [`redis_sentinel_master_url`](Self::redis_sentinel_master_url)
    /// says otherwise. An empty master name, no sentinel URL, or a URL the
    /// Redis client refuses fails [`build`](Self::build) with a
    /// [`BuildError`] that [`is_redis`](BuildError::is_redis), naming
    /// `redis_sentinel`.
    ///
    /// ```
    /// # #[cfg(feature = "redis")] {
    /// use tower_tiered_cache::Cache;
    ///
    /// let cache = Cache::builder()
    ///     .redis_sentinel(
    ///         "mymaster",
    ///         ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379", "redis://10.0.0.3:26379"],
    ///     )
    ///     // The master's password and database (its host is replaced by
    ///     // the address the sentinels name).
    ///     .redis_sentinel_master_url("redis://:secret@master/2")
    ///     .build()
    ///     .expect("nothing is connected until the first request");
    /// # drop(cache);
    /// # }
    /// ```
    pub fn redis_sentinel<I, U>(mut self, master_name: impl Into<String>, sentinel_urls: I) -> Self
    where
        I: IntoIterator<Item = U>,
        U: Into<String>,
    {
        self.l2_target = Some(crate::store::redis::RedisTarget::Sentinel {
            master: master_name.into(),
            sentinels: sentinel_urls.into_iter().map(Into::into).collect(),
            node: None,
        });
        self
    }

    /// With [`redis_sentinel`](Self::redis_sentinel): how the master is
    /// reached, as a URL whose scheme (`redis://`, or `rediss://` with the
    /// `redis-tls` feature), credentials and database are used and whose
    /// host and port are replaced by the address the sentinels name, e.g.
    /// `redis://user:password@master/2` (default: `redis://`, no
    /// credentials, database 0). The sentinels' own credentials go in
    /// their URLs. A URL the Redis client refuses, or one that is not
    /// `redis://` / `rediss://`, fails [`build`](Self::build) with a
    /// [`BuildError`] that [`is_redis`](BuildError::is_redis); without
    /// `redis_sentinel` it is an
    /// [`is_invalid_setting`](BuildError::is_invalid_setting) error.
    pub fn redis_sentinel_master_url(mut self, url: impl Into<String>) -> Self {
        self.sentinel_master_url = Some(url.into());
        self
    }

    /// The prefix of every L2 key (default [`DEFAULT_NAMESPACE`]), so
    /// several services can share one Redis: keys are
    /// `{namespace}:{format}:{{key hash}}`. 1 to 64 letters, digits, `-`,
    /// `_` or `.`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.l2.namespace = namespace.into();
        self
    }

    /// An L2 entry is copied into L1 after this many L2 hits within the
    /// [`promotion_window`](Self::promotion_window) (default
    /// [`DEFAULT_PROMOTE_AFTER`]; 1 promotes on the first hit; at least 1).
    /// The count of the "read" half of every
    /// [`l1_admission`](Self::l1_admission) rule (entries heavier than a
    /// `MaxBytes` rule's size are never copied).
    pub fn promote_after(mut self, hits: u32) -> Self {
        self.l2.promote_after = hits;
        self
    }

    /// The window promotion hits are counted in (default
    /// [`DEFAULT_PROMOTION_WINDOW`]).
    pub fn promotion_window(mut self, window: Duration) -> Self {
        self.l2.promotion_window = window;
        self
    }

    /// The deadline of one L2 operation (default [`DEFAULT_L2_TIMEOUT`];
    /// writes of large values get 1 ms more per 64 KiB). Past it the
    /// operation is a miss.
    pub fn l2_timeout(mut self, timeout: Duration) -> Self {
        self.l2.timeout = timeout;
        self
    }

    /// The L2 circuit breaker: after `failures` consecutive errors or
    /// timeouts (default [`DEFAULT_L2_BREAKER_FAILURES`]) L2 is skipped for
    /// `open_for` (default [`DEFAULT_L2_BREAKER_OPEN_FOR`]), then probed.
    /// Timeouts alone open it only when a `PING` sent then (one at a time,
    /// within 1 s) gets no answer: if Redis answers, this host was too busy
    /// to read its replies in time, and the count starts again
    /// ([`Stats::l2_timeouts_slow_host`](crate::Stats::l2_timeouts_slow_host)).
    pub fn l2_circuit_breaker(mut self, failures: u32, open_for: Duration) -> Self {
        self.l2.breaker_failures = failures;
        self.l2.breaker_open_for = open_for;
        self
    }

    /// How many L2 writes may wait to be sent (default
    /// [`DEFAULT_L2_WRITE_QUEUE`]); beyond it writes are dropped and
    /// counted.
    pub fn l2_write_queue(mut self, n: usize) -> Self {
        self.l2.write_queue = n;
        self
    }

    /// An optional bound on L1 while this instance is not following the
    /// L2 invalidation log (Redis unreachable, or not yet connected): L1
    /// copies older than this are then not used. Default
    /// ([`DEFAULT_L1_MAX_TTL`]): no bound. L1 keeps serving what it holds
    /// within its own freshness while Redis is down, and catches up with
    /// the invalidations it missed when Redis is back (L1 is cleared only
    /// if the log no longer holds them; see
    /// [`l2_invalidation_log_len`](Self::l2_invalidation_log_len)).
    pub fn l1_max_ttl(mut self, ttl: Duration) -> Self {
        self.l2.l1_max_ttl = Some(ttl);
        self
    }

    /// How many entries the L2 invalidation log (a Redis Stream,
    /// `{namespace}:inv`, trimmed with `XADD … MAXLEN ~`) keeps (default
    /// [`DEFAULT_L2_INVALIDATION_LOG_LEN`]; at least 1). An instance that
    /// reconnects after missing more invalidations (or overwrites) than
    /// this clears its L1, counted in
    /// [`Stats::l2_coherence_resets`](crate::Stats::l2_coherence_resets).
    pub fn l2_invalidation_log_len(mut self, entries: usize) -> Self {
        self.l2.invalidation_log_len = entries;
        self
    }

    /// L2 bodies larger than this many bytes are compressed with LZ4 when
    /// that saves space (default [`DEFAULT_COMPRESSION_THRESHOLD`]; `None`
    /// turns it off). Bodies that already carry a `Content-Encoding` are
    /// stored as they are.
    #[cfg(feature = "compression")]
    #[cfg_attr(docsrs, doc(cfg(all(feature = "redis", feature = "compression"))))]
    pub fn compression_threshold(mut self, bytes: Option<usize>) -> Self {
        self.l2.compress_over = bytes;
        self
    }

    /// Encryption at rest (feature `l2-encryption`): what the L2 tier
    /// writes that can carry a URL, a body, headers or a tag name is
    /// sealed with XChaCha20-Poly1305 under the last key of `keys`
    /// (entries and typed values, after compression; `Vary` variants; tag
    /// and prefix invalidations), bound to the Redis key it is stored at;
    /// every key of the set opens. Tag index names are a keyed hash of the
    /// tag. A value that does not open (not sealed, tampered with, moved,
    /// or sealed with a key this instance lacks) is a corrupt entry: a
    /// miss, counted in [`Stats::l2_decode_errors`](crate::Stats::l2_decode_errors),
    /// deleted. Off by default; needs the L2 tier (else [`build`](Self::build)
    /// fails). See [`L2Keys`](crate::L2Keys) for the key file and rotation,
    /// and the README's "Encryption at rest" for what it does not hide.
    ///
    /// ```
    /// use tower_tiered_cache::{Cache, L2Keys};
    ///
    /// // In production: L2Keys::from_file("/run/secrets/l2-keys")?
    /// let keys = L2Keys::parse(
    ///     "k1:5f0e9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f",
    /// )?;
    /// let cache = Cache::builder()
    ///     .redis("redis://127.0.0.1:6379/")
    ///     .l2_encryption_key(keys)
    ///     .build()?;
    /// # drop(cache);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "l2-encryption")]
    #[cfg_attr(docsrs, doc(cfg(feature = "l2-encryption")))]
    pub fn l2_encryption_key(mut self, keys: crate::L2Keys) -> Self {
        self.l2.keys = Some(Arc::new(keys));
        self
    }

    /// Accumulates stats in Redis as well: every `every` (at least 100
    /// ms), this instance adds what it counted since its last flush to the
    /// hash `{namespace}:stats`, so totals survive restarts and add up
    /// across instances ([`Cache::shared_stats`],
    /// [`Cache::flush_shared_stats`] before a graceful shutdown,
    /// [`Cache::reset_shared_stats`]). Needs the L2 tier; off by default.
    pub fn shared_stats(mut self, every: Duration) -> Self {
        self.shared_stats = Some(every);
        self
    }

    /// Coalesces misses across instances (default
    /// [`DEFAULT_DISTRIBUTED_COALESCING`]: off): of the instances sharing
    /// this L2 (same Redis, same [`namespace`](Self::namespace)) that miss
    /// one key at once, one calls the origin; the others answer from L2
    /// once its answer is there (`Cache-Status: …; collapsed;
    /// detail=l2`). Needs the L2 tier.
    ///
    /// How: the leader of a flight that finds nothing usable in L2 takes a
    /// lease on the key in Redis (`SET {namespace}:lease:{{hash}} TOKEN NX
    /// PX ttl`, [`lease_ttl`](Self::lease_ttl)) before calling the origin,
    /// and releases it once the entry's L2 write has landed. A leader that
    /// finds the lease taken waits, woken by the L2 invalidation log (the
    /// write's own announcement, or the holder's word that nothing was
    /// stored), with a poll every 100 ms at most; it waits at most the
    /// [`upstream_timeout`](Self::upstream_timeout). When the holder's
    /// answer may not be shared, each instance calls alone; when it
    /// failed, or died (its lease expired), one waiter takes the lease
    /// over and calls. When Redis is unreachable or slow (three lease
    /// operations in a row fail, each within the
    /// [`l2_timeout`](Self::l2_timeout)) or its breaker is open (at once),
    /// requests coalesce within each instance, as without this setting.
    /// Counted in [`Stats::leases`](crate::Stats::leases).
    ///
    /// The default [`coalesce_timeout`](Self::coalesce_timeout) grows by
    /// one `upstream_timeout` with it on (a leader may wait that long for
    /// another instance before calling itself).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_tiered_cache::Cache;
    ///
    /// let cache = Cache::builder()
    ///     .redis("redis://127.0.0.1:6379/")
    ///     .distributed_coalescing(true)
    ///     .upstream_timeout(Duration::from_secs(10))
    ///     .lease_ttl(Duration::from_secs(5))
    ///     .build()
    ///     .unwrap();
    /// # drop(cache);
    ///
    /// // Without an L2 tier there is nothing to coordinate through.
    /// let err = Cache::builder().distributed_coalescing(true).build().unwrap_err();
    /// assert_eq!(err.setting(), "distributed_coalescing");
    /// ```
    pub fn distributed_coalescing(mut self, on: bool) -> Self {
        self.distributed = on;
        self
    }

    /// How long a lease of [`distributed_coalescing`](Self::distributed_coalescing)
    /// lasts if its holder never releases it (it died mid-call): the most
    /// the other instances wait before one of them takes it over and calls
    /// the origin. Default: the [`upstream_timeout`](Self::upstream_timeout)
    /// (the longest a holder's call for the response head may take); at
    /// least [`MIN_LEASE_TTL`], at most the `upstream_timeout` (a waiter
    /// waits no longer). A shorter lease recovers sooner from a dead
    /// holder; a holder whose call outlives its lease may see another
    /// instance call as well.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = Some(ttl);
        self
    }
}

/// # Observability
impl CacheBuilder {
    /// Where request labels come from (default [`DEFAULT_LABELS`]: the
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

    /// The most distinct labels kept (default [`DEFAULT_MAX_LABELS`], at
    /// most [`MAX_LABELS_LIMIT`]); requests with further labels are counted
    /// under `other`.
    pub fn max_labels(mut self, n: usize) -> Self {
        self.observe.max_labels = n;
        self
    }

    /// What the cache logs as `tracing` events (default
    /// [`DEFAULT_LOG_LEVEL`]: warnings only).
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.observe.log = level;
        self
    }

    /// Operations (upstream calls, L2 commands) slower than this are
    /// logged as warnings (default [`DEFAULT_SLOW_THRESHOLD`]).
    pub fn slow_threshold(mut self, threshold: Duration) -> Self {
        self.observe.slow = threshold;
        self
    }

    /// The thresholds [`Cache::health`] judges by (default
    /// [`HealthThresholds::default`]).
    pub fn health_thresholds(mut self, thresholds: HealthThresholds) -> Self {
        self.observe.health = thresholds;
        self
    }

    /// Per-request instrumentation: labels, latency histograms, the rolling
    /// window, spans, metrics and per-lookup logs (default
    /// [`DEFAULT_OBSERVABILITY`]: on). Off, only the global counters of
    /// [`Cache::stats`] are kept (health then sees no latency or window).
    pub fn observability(mut self, on: bool) -> Self {
        self.observe.enabled = on;
        self
    }

    /// Times one fresh L1 hit in `n` per thread (default
    /// [`DEFAULT_HIT_TIMING_SAMPLE`]; 1 times every hit). Reading the clock
    /// twice costs about a tenth of an L1 hit; hit counts are exact
    /// whatever `n`, the sample gives the hit latency percentiles and mean.
    pub fn hit_timing_sample(mut self, n: u32) -> Self {
        self.observe.hit_sample = n;
        self
    }

    /// The level of the per-request `cache.lookup` span (default
    /// [`DEFAULT_SPAN_LEVEL`]).
    pub fn span_level(mut self, level: tracing::Level) -> Self {
        self.observe.span_level = level;
        self
    }

    /// Reports OpenTelemetry metrics on `meter` (feature `opentelemetry`):
    /// request counters by result, tier and label
    /// (`tower_cache.requests`), stale served, coalesced, promotions,
    /// entries kept out of L1 (`tower_cache.l1.not_admitted`), evictions,
    /// refreshes, leases (`tower_cache.leases`), L2 errors, breaker opens
    /// (read from the cache's counters at collection time), the upstream
    /// breakers by label (`tower_cache.upstream.breaker.state`,
    /// `.opened_timestamp`, `.opens`), L1 gauges, hit ratios, health, and
    /// histograms of hit, miss, lookup, upstream and L2 operation
    /// durations in seconds. Each name is the Prometheus exposition's
    /// ([`Cache::prometheus`](crate::Cache::prometheus)) by the
    /// OpenTelemetry→Prometheus rules (`tower_cache.requests` is
    /// `tower_cache_requests_total`); the README's table lists them. None
    /// by default.
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
}

/// # Building: the checks, one function per topic, then construction
impl CacheBuilder {
    /// Checks the settings, topic by topic in the order above, and builds
    /// the cache. The first setting refused is returned as a
    /// [`BuildError`] naming it; nothing is connected yet (an L2 tier
    /// connects on first use).
    pub fn build(mut self) -> Result<Cache, BuildError> {
        let l1_max_entry = self.check_storage()?;
        self.check_admission()?;
        self.check_keys()?;
        self.check_freshness()?;
        self.check_adaptive()?;
        self.policy.targeted = self.check_targeted()?;
        self.check_upstream()?;
        self.check_hot_keys()?;
        #[cfg(feature = "redis")]
        self.check_l2()?;
        self.check_observability()?;
        #[cfg(feature = "redis")]
        let l2 = self.build_l2()?;
        #[cfg(feature = "opentelemetry")]
        let meter = self.meter.clone();
        let shared = Arc::new(self.into_shared(
            l1_max_entry,
            #[cfg(feature = "redis")]
            l2,
        ));
        #[cfg(feature = "opentelemetry")]
        if let Some(meter) = meter {
            let _ = shared
                .obs
                .metrics
                .set(crate::export::otel::register(&shared, &meter));
        }
        connect_hooks(&shared);
        Ok(Cache { shared })
    }

    /// Storage: sizes, and the largest L1 entry (returned, defaults
    /// applied).
    fn check_storage(&self) -> Result<u64, BuildError> {
        first_refused([
            (
                "l1_capacity_bytes",
                self.l1_capacity == 0,
                "must be greater than 0",
            ),
            (
                "max_body_bytes",
                self.max_body == 0,
                "must be greater than 0",
            ),
        ])?;
        let l1_max_entry = self.l1_max_entry.unwrap_or_else(|| {
            (self.max_body + DEFAULT_L1_ENTRY_OVERHEAD_BYTES).min((self.l1_capacity / 8).max(1))
        });
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
        if self.max_variants == 0 {
            return Err(BuildError::invalid("max_variants", "must be at least 1"));
        }
        Ok(l1_max_entry)
    }

    /// Storage: the L1 admission rule's size, and the reads its promotions
    /// count to (`promote_after`, with an L2 tier), are at least 1.
    fn check_admission(&self) -> Result<(), BuildError> {
        let bytes = match self.l1_admission {
            L1Admission::MaxBytes(b) | L1Admission::MaxBytesOrReads(b) => b,
            _ => 1,
        };
        #[cfg(feature = "redis")]
        let reads = if self.l2_target.is_some() {
            self.l2.promote_after
        } else {
            1
        };
        #[cfg(not(feature = "redis"))]
        let reads = 1;
        first_refused([
            (
                "l1_admission",
                bytes == 0,
                "the size must be at least 1 byte (MaxBytes / MaxBytesOrReads)",
            ),
            ("promote_after", reads == 0, "must be at least 1"),
        ])
    }

    /// Keys: credentials partitioning against what would undo it.
    fn check_keys(&self) -> Result<(), BuildError> {
        if !self.keys.credentials {
            return Ok(());
        }
        if self.policy.share_authorized {
            return Err(BuildError::invalid(
                "partition_by_credentials",
                "cannot be combined with share_authorized(true): one keeps each \
                 credential's responses apart, the other shares them",
            ));
        }
        let credential_headers = [
            http::header::AUTHORIZATION,
            http::header::PROXY_AUTHORIZATION,
            http::header::COOKIE,
        ];
        if let Some(h) = self
            .keys
            .headers
            .iter()
            .find(|h| credential_headers.contains(h))
        {
            return Err(BuildError::invalid(
                "partition_by_credentials",
                format!(
                    "key_header({h}) would put the credentials themselves in keys and \
                     logs; partitioning already keys by them"
                ),
            ));
        }
        Ok(())
    }

    /// Freshness: the fractions are within their ranges.
    fn check_freshness(&self) -> Result<(), BuildError> {
        let (fraction, factor) = (self.policy.heuristic_fraction, self.extension_factor);
        let eager = self.observe.eager_fraction;
        first_refused([
            (
                "heuristic_fraction",
                !(fraction.is_finite() && (0.0..=1.0).contains(&fraction)),
                "must be within 0..=1",
            ),
            (
                "stale_extension",
                !(factor.is_finite() && (0.0..=1.0).contains(&factor)),
                "factor must be within 0..=1",
            ),
            (
                "eager_refresh",
                !(eager.is_finite() && (0.0..1.0).contains(&eager)),
                "fraction must be within 0..1 (0 turns it off)",
            ),
            (
                "eager_refresh",
                self.observe.eager_min_reads == 0,
                "min_reads must be at least 1",
            ),
        ])
    }

    /// Freshness: adaptive TTL's factors, thresholds and bounds.
    fn check_adaptive(&self) -> Result<(), BuildError> {
        self.adaptive.as_ref().map_or(Ok(()), AdaptiveTtl::validate)
    }

    /// Freshness: the targeted cache-control fields, as field names (the
    /// mode's default when none were given); each a valid name, not
    /// `Cache-Control`, listed once.
    fn check_targeted(&self) -> Result<Vec<HeaderName>, BuildError> {
        let Some(given) = &self.targeted else {
            return Ok(match self.policy.mode {
                CacheMode::Shared => DEFAULT_TARGETED_CACHE_CONTROL
                    .iter()
                    .map(|n| HeaderName::from_bytes(n.as_bytes()).expect("a valid name"))
                    .collect(),
                CacheMode::Private => Vec::new(),
            });
        };
        let mut names: Vec<HeaderName> = Vec::with_capacity(given.len());
        for raw in given {
            let bad = |why: &str| {
                Err(BuildError::invalid(
                    "targeted_cache_control",
                    format!("{raw:?} {why}"),
                ))
            };
            let Ok(name) = HeaderName::from_bytes(raw.as_bytes()) else {
                return bad("is not a valid header field name");
            };
            if name == http::header::CACHE_CONTROL {
                return bad("is the field targeted fields take the place of, not one of them");
            }
            if names.contains(&name) {
                return bad("is listed twice");
            }
            names.push(name);
        }
        Ok(names)
    }

    /// Coalescing and upstream: bounds of at least one, deadlines above
    /// zero.
    fn check_upstream(&self) -> Result<(), BuildError> {
        first_refused([
            (
                "max_in_flight",
                self.max_in_flight == 0,
                "must be at least 1",
            ),
            (
                "max_concurrent_refreshes",
                !(1..=MAX_CONCURRENCY).contains(&self.max_refreshes),
                "must be within 1..=MAX_CONCURRENCY",
            ),
            (
                "circuit_breaker",
                self.breaker_threshold == 0,
                "failures must be at least 1",
            ),
            (
                "upstream_timeout",
                self.upstream_timeout.is_zero(),
                "must be greater than 0",
            ),
            (
                "coalesce_timeout",
                self.coalesce_timeout.is_some_and(|t| t.is_zero()),
                "must be greater than 0",
            ),
            (
                "refresh_timeout",
                self.refresh_timeout.is_zero(),
                "must be greater than 0",
            ),
        ])
    }

    /// Hot keys and prefetch ([`HotSettings::check`]).
    fn check_hot_keys(&self) -> Result<(), BuildError> {
        self.hot.check()
    }

    /// Observability: label bounds, the timing sample, health thresholds.
    fn check_observability(&self) -> Result<(), BuildError> {
        if self.observe.max_labels == 0 || self.observe.max_labels > MAX_LABELS_LIMIT {
            return Err(BuildError::invalid(
                "max_labels",
                format!("must be within 1..={MAX_LABELS_LIMIT}"),
            ));
        }
        if self.observe.hit_sample == 0 {
            return Err(BuildError::invalid(
                "hit_timing_sample",
                "must be at least 1 (1 times every hit)",
            ));
        }
        self.observe.health.validate()
    }

    /// The cache's shared state, from checked settings.
    fn into_shared(
        self,
        l1_max_entry: u64,
        #[cfg(feature = "redis")] l2: Option<Arc<crate::store::l2::L2>>,
    ) -> Shared {
        let l1 = MemoryStore::new(self.l1_capacity, l1_max_entry, self.max_variants);
        let mut tiers = Tiers::new(l1, self.l1_admission);
        let mut observe = self.observe;
        let exact = if observe.eager_fraction > 0.0 {
            observe.eager_min_reads
        } else {
            1
        };
        observe.read_cap = ReadCap::exact(exact);
        if let Some(adaptive) = &self.adaptive {
            tiers.read_counts = Some(adaptive.read_counts());
            observe.read_cap = adaptive.read_cap(exact);
        }
        // Per-thread fronts only while a read after the first counts for
        // nothing (their hits are not counted on the shared entry).
        tiers.set_front(exact == 1 && self.adaptive.is_none());
        #[cfg(feature = "redis")]
        let tiers = tiers.with_l2(l2.clone());
        // A leader waits for another instance's call at most one
        // upstream_timeout before its own (lease_ttl).
        #[cfg(feature = "redis")]
        let lease_ttl = (self.distributed && l2.is_some())
            .then(|| self.lease_ttl.unwrap_or(self.upstream_timeout));
        #[cfg(feature = "redis")]
        let calls = if lease_ttl.is_some() { 3 } else { 2 };
        #[cfg(not(feature = "redis"))]
        let calls = 2;
        let coalesce_timeout = self.coalesce_timeout.unwrap_or_else(|| {
            self.upstream_timeout
                .saturating_mul(calls)
                .saturating_add(Duration::from_secs(1))
        });
        Shared {
            clock: self.clock,
            policy: self.policy,
            keys: self.keys,
            tiers,
            inflight: InFlight::new(self.max_in_flight),
            hit_for_pass: QuickCache::new(HIT_FOR_PASS_CAPACITY),
            // One per label index: `max_labels` plus `default` and `other`.
            breakers: Breakers::new(
                observe.max_labels + 2,
                self.breaker_threshold,
                self.breaker_open_for,
            ),
            counters: Counters::default(),
            refreshes: Arc::new(tokio::sync::Semaphore::new(self.max_refreshes)),
            round_refreshes: Arc::new(tokio::sync::Semaphore::new(self.max_refreshes)),
            cfg: EngineConfig {
                max_body_bytes: self.max_body,
                coalesce_timeout,
                upstream_timeout: self.upstream_timeout,
                hit_for_pass_ttl: self.hit_for_pass_ttl,
                refresh_timeout: self.refresh_timeout,
                stale_extension_factor: self.extension_factor,
                max_stale_extensions: self.max_extensions,
                tags: self.tags,
                adaptive: self.adaptive,
                #[cfg(feature = "redis")]
                lease_ttl,
            },
            obs: Observer::new(observe),
            hot: HotState::new(self.hot).map(Box::new),
            #[cfg(feature = "redis")]
            shared_stats: match (&l2, self.shared_stats) {
                (Some(_), Some(interval)) => Some(crate::export::shared::Flusher::new(interval)),
                _ => None,
            },
        }
    }
}

impl<F> Default for HotSettings<F> {
    /// The `DEFAULT_*` hot-key and prefetch settings: both off.
    fn default() -> Self {
        Self {
            top_n: DEFAULT_REFRESH_HOT_TOP_N,
            every: DEFAULT_REFRESH_HOT_EVERY,
            sample: DEFAULT_HOT_KEY_SAMPLE,
            prefetch: None,
            queue: DEFAULT_PREFETCH_QUEUE,
            concurrency: DEFAULT_MAX_CONCURRENT_PREFETCHES,
            timeout: DEFAULT_PREFETCH_TIMEOUT,
        }
    }
}

impl<F> HotSettings<F> {
    /// Hot keys and prefetch, for a cache or a value cache: a bounded
    /// `top_n` with a bounded period, a sample of at least one read,
    /// prefetch bounds within their ranges and a deadline above zero.
    pub(crate) fn check(&self) -> Result<(), BuildError> {
        let h = self;
        first_refused([
            (
                "refresh_hot",
                h.top_n > MAX_REFRESH_HOT_TOP_N,
                "top_n must be at most MAX_REFRESH_HOT_TOP_N",
            ),
            (
                "refresh_hot",
                h.top_n > 0 && h.every.is_zero(),
                "every must be greater than 0",
            ),
            (
                "refresh_hot",
                h.every > MAX_REFRESH_HOT_EVERY,
                "every must be at most MAX_REFRESH_HOT_EVERY (one day)",
            ),
            ("hot_key_sample", h.sample == 0, "must be at least 1"),
            (
                "prefetch_queue",
                !(1..=MAX_PREFETCH_QUEUE).contains(&h.queue),
                "must be within 1..=MAX_PREFETCH_QUEUE",
            ),
            (
                "max_concurrent_prefetches",
                !(1..=MAX_CONCURRENCY).contains(&h.concurrency),
                "must be within 1..=MAX_CONCURRENCY",
            ),
            (
                "prefetch_timeout",
                h.timeout.is_zero(),
                "must be greater than 0",
            ),
        ])
    }
}

/// The first of `checks` (setting, refused, why) that is refused, as the
/// error naming it.
fn first_refused<const N: usize>(
    checks: [(&'static str, bool, &'static str); N],
) -> Result<(), BuildError> {
    match checks.into_iter().find(|(_, bad, _)| *bad) {
        Some((setting, _, reason)) => Err(BuildError::invalid(setting, reason)),
        None => Ok(()),
    }
}

/// L2: its settings checked, and the tier made from them.
#[cfg(feature = "redis")]
impl CacheBuilder {
    /// L2: `shared_stats` needs the tier; the tier's own settings are
    /// checked when there is one.
    fn check_l2(&self) -> Result<(), BuildError> {
        if let Some(every) = self.shared_stats {
            if self.l2_target.is_none() {
                return Err(BuildError::invalid(
                    "shared_stats",
                    "needs the L2 tier: add .redis(url), .redis_cluster(urls) \
                     or .redis_sentinel(name, urls)",
                ));
            }
            if every < MIN_SHARED_STATS_INTERVAL {
                return Err(BuildError::invalid(
                    "shared_stats",
                    "the flush interval must be at least 100 ms",
                ));
            }
        }
        let sentinel = matches!(
            self.l2_target,
            Some(crate::store::redis::RedisTarget::Sentinel { .. })
        );
        if self.sentinel_master_url.is_some() && !sentinel {
            return Err(BuildError::invalid(
                "redis_sentinel_master_url",
                "applies to the master found through Redis Sentinel: add .redis_sentinel(name, urls)",
            ));
        }
        #[cfg(feature = "l2-encryption")]
        if self.l2.keys.is_some() && self.l2_target.is_none() {
            return Err(BuildError::invalid(
                "l2_encryption_key",
                "needs the L2 tier: add .redis(url), .redis_cluster(urls) \
                 or .redis_sentinel(name, urls)",
            ));
        }
        self.check_leases()?;
        if self.l2_target.is_none() {
            return Ok(());
        }
        let l2 = &self.l2;
        // Keys are `{namespace}:…` and purges SCAN for `{namespace}:*`: a
        // namespace with `:` or glob characters could match another's keys.
        let namespace_ok = !l2.namespace.is_empty()
            && l2.namespace.len() <= 64
            && l2
                .namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        first_refused([
            (
                "namespace",
                !namespace_ok,
                "must be 1 to 64 characters of letters, digits, '-', '_' or '.'",
            ),
            ("l2_timeout", l2.timeout.is_zero(), "must be greater than 0"),
            (
                "l2_circuit_breaker",
                l2.breaker_failures == 0,
                "failures must be at least 1",
            ),
            ("l2_write_queue", l2.write_queue == 0, "must be at least 1"),
            (
                "l2_invalidation_log_len",
                l2.invalidation_log_len == 0,
                "must be at least 1",
            ),
        ])
    }

    /// Distributed coalescing needs the L2 tier; a lease lasts between
    /// [`MIN_LEASE_TTL`] and the upstream timeout.
    fn check_leases(&self) -> Result<(), BuildError> {
        let ttl = self.lease_ttl.unwrap_or(self.upstream_timeout);
        first_refused([
            (
                "distributed_coalescing",
                self.distributed && self.l2_target.is_none(),
                "needs the L2 tier: add .redis(url) or .redis_cluster(urls)",
            ),
            (
                "lease_ttl",
                ttl < MIN_LEASE_TTL,
                "must be at least MIN_LEASE_TTL (10 ms)",
            ),
            (
                "lease_ttl",
                ttl > self.upstream_timeout,
                "must be at most the upstream_timeout (a waiter waits no longer)",
            ),
        ])
    }

    /// The L2 tier, given its settings as they are, with the cache-wide
    /// ones it follows; a target the Redis client refuses is a
    /// [`BuildError::is_redis`] error with the client's error as source.
    fn build_l2(&self) -> Result<Option<Arc<crate::store::l2::L2>>, BuildError> {
        use crate::store::redis::RedisTarget;
        let Some(target) = &self.l2_target else {
            return Ok(None);
        };
        let with_master;
        let target = match target {
            RedisTarget::Sentinel {
                master, sentinels, ..
            } => {
                with_master = RedisTarget::Sentinel {
                    master: master.clone(),
                    sentinels: sentinels.clone(),
                    node: self.sentinel_master_url.clone(),
                };
                &with_master
            }
            other => other,
        };
        let cfg = crate::store::l2::L2Config {
            connect_timeout: self.l2.connect_timeout.max(self.l2.timeout),
            max_body_bytes: self.max_body,
            warnings: self.observe.log.warnings(),
            max_variants: self.max_variants,
            ..self.l2.clone()
        };
        crate::store::l2::L2::new(target, cfg, Arc::clone(&self.clock))
            .map(|l2| Some(Arc::new(l2)))
            .map_err(|e| {
                let setting = match target {
                    RedisTarget::Single(_) => "redis",
                    RedisTarget::Cluster(_) => "redis_cluster",
                    RedisTarget::Sentinel { .. } if e.is_master_url() => {
                        "redis_sentinel_master_url"
                    }
                    RedisTarget::Sentinel { .. } => "redis_sentinel",
                };
                BuildError::redis(setting, e)
            })
    }
}

/// Connects the tiers' callbacks to the engine, through weak references
/// (a callback never keeps the cache alive): L2 operations (slow warnings,
/// the duration histogram), L1 evictions of unread entries, and other
/// instances' invalidations (L2 pub/sub).
fn connect_hooks(shared: &Arc<Shared>) {
    #[cfg(feature = "redis")]
    if let Some(l2) = &shared.tiers.l2 {
        let weak = Arc::downgrade(shared);
        l2.set_op_hook(Box::new(move |name, took, ok| {
            let Some(shared) = weak.upgrade() else { return };
            shared.obs.slow_l2(name, took, ok);
            #[cfg(feature = "opentelemetry")]
            if let Some(m) = shared.obs.metrics.get() {
                m.l2_op(name, took, ok);
            }
        }));
        let weak = Arc::downgrade(shared);
        l2.set_listener(Box::new(move |msg| {
            if let Some(shared) = weak.upgrade() {
                apply_remote(&shared, msg);
            }
        }));
    }
    let weak = Arc::downgrade(shared);
    shared.tiers.l1.on_evicted_unread(Box::new(move |label| {
        if let Some(shared) = weak.upgrade() {
            shared.obs.evicted_unread(label);
        }
    }));
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
            shared.tiers.l1.remove_where(|e| e.matches_prefix(p));
        }
        Message::Clear => shared.tiers.l1.clear(),
        // News of a lease: no invalidation (the tier wakes its waiters).
        Message::Fill(..) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lower modules keep `Default`s of their own for their unit
    /// tests; they must say what the builder's constants say.
    #[test]
    fn lower_module_defaults_agree_with_the_constants() {
        let policy = PolicyConfig::default();
        assert_eq!(policy.mode, DEFAULT_MODE);
        assert_eq!(policy.request_cc, DEFAULT_REQUEST_CACHE_CONTROL);
        assert_eq!(policy.heuristic_fraction, DEFAULT_HEURISTIC_FRACTION);
        assert_eq!(policy.heuristic_max, DEFAULT_HEURISTIC_MAX);
        assert_eq!(policy.default_swr, DEFAULT_STALE_WHILE_REVALIDATE);
        assert_eq!(policy.default_sie, DEFAULT_STALE_IF_ERROR);
        assert_eq!(policy.set_cookie, DEFAULT_SET_COOKIE);
        assert_eq!(policy.share_authorized, DEFAULT_SHARE_AUTHORIZED);
        assert_eq!(policy.store_server_errors, DEFAULT_STORE_SERVER_ERRORS);
        assert_eq!(
            policy.partition_credentials,
            DEFAULT_PARTITION_BY_CREDENTIALS
        );
        assert_eq!(policy.keep_for_revalidation, DEFAULT_KEEP_FOR_REVALIDATION);
        let targeted: Vec<String> = policy.targeted.iter().map(|n| n.to_string()).collect();
        let default: Vec<String> = DEFAULT_TARGETED_CACHE_CONTROL
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        assert_eq!(targeted, default);
        assert_eq!(policy.strip_targeted, DEFAULT_STRIP_TARGETED_CACHE_CONTROL);
        let keys = KeyConfig::default();
        assert_eq!(keys.scheme, DEFAULT_KEY_SCHEME);
        assert_eq!(keys.authority, DEFAULT_KEY_AUTHORITY);
        assert_eq!(keys.sort_query, DEFAULT_SORT_QUERY);
        assert_eq!(keys.credentials, DEFAULT_PARTITION_BY_CREDENTIALS);
        let observe = ObserveConfig::default();
        assert!(matches!(observe.labels, LabelSource::Auto));
        assert_eq!(observe.max_labels, DEFAULT_MAX_LABELS);
        assert_eq!(observe.log, DEFAULT_LOG_LEVEL);
        assert_eq!(observe.slow, DEFAULT_SLOW_THRESHOLD);
        assert_eq!(observe.eager_fraction, DEFAULT_EAGER_REFRESH_FRACTION);
        assert_eq!(observe.eager_min_reads, DEFAULT_EAGER_REFRESH_MIN_READS);
        assert_eq!(observe.span_level, DEFAULT_SPAN_LEVEL);
        assert_eq!(observe.enabled, DEFAULT_OBSERVABILITY);
        assert_eq!(observe.hit_sample, DEFAULT_HIT_TIMING_SAMPLE);
    }

    /// The default coalesce timeout outlasts the upstream call it waits
    /// for, as its docs say.
    #[test]
    fn the_default_coalesce_timeout_is_twice_the_upstream_timeout_plus_a_second() {
        let cache = CacheBuilder::default().build().unwrap();
        assert_eq!(
            cache.shared.cfg.coalesce_timeout,
            DEFAULT_UPSTREAM_TIMEOUT * 2 + Duration::from_secs(1)
        );
    }

    /// With distributed coalescing a leader may wait one upstream timeout
    /// for another instance before its own call: the waiters behind it
    /// wait as much longer. The lease defaults to the upstream timeout.
    #[cfg(feature = "redis")]
    #[test]
    fn with_distributed_coalescing_the_default_coalesce_timeout_covers_the_lease_wait() {
        let up = Duration::from_secs(2);
        let build = |on: bool| {
            CacheBuilder::default()
                .redis("redis://127.0.0.1:1/")
                .distributed_coalescing(on)
                .upstream_timeout(up)
                .build()
                .unwrap()
        };
        let on = build(true);
        assert_eq!(
            on.shared.cfg.coalesce_timeout,
            up * 3 + Duration::from_secs(1)
        );
        assert_eq!(on.shared.cfg.lease_ttl, Some(up));
        let off = build(false);
        assert_eq!(
            off.shared.cfg.coalesce_timeout,
            up * 2 + Duration::from_secs(1)
        );
        assert_eq!(off.shared.cfg.lease_ttl, None);
    }
}
