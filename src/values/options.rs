//! [`ValueOptions`]: how long a value lives, how long a fetch may take,
//! its tags and its tiers.

use std::time::Duration;

use crate::entry::Timeline;

/// How long a stored value is fresh (soft TTL): until then it is returned
/// without a fetch. See [`ValueOptions::ttl`].
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// How long a stored value may be returned at all without a fetch first
/// (hard TTL): between the soft and the hard TTL it is returned at once
/// while one background fetch refreshes it. See [`ValueOptions::hard_ttl`].
pub const DEFAULT_HARD_TTL: Duration = Duration::from_secs(120);

/// How long past its hard TTL a value is kept to stand in for a fetch that
/// fails or times out (fail-safe). See [`ValueOptions::fail_safe`].
pub const DEFAULT_FAIL_SAFE: Duration = Duration::from_secs(600);

/// How many times a failed fetch may extend a stale value's life (by half
/// its TTL each time, the cache's
/// [`stale_extension`](crate::CacheBuilder::stale_extension) factor). See
/// [`ValueOptions::fail_safe`].
pub const DEFAULT_MAX_EXTENSIONS: u32 = 4;

/// The deadline of a fetch: past it the fetch is dropped, and the call
/// returns a stale value (fail-safe) or
/// [`FetchError::is_timeout`](super::FetchError::is_timeout). See
/// [`ValueOptions::fetch_timeout`].
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// The soft part of a fetch's deadline: off. See
/// [`ValueOptions::soft_fetch_timeout`].
pub const DEFAULT_SOFT_FETCH_TIMEOUT: Option<Duration> = None;

/// The longest TTL, fail-safe window or fetch timeout a value takes (ten
/// years); longer ones are cut to it, so that a value's whole life (with
/// its extensions) stays within what the stored format accepts.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The most extensions [`ValueOptions::fail_safe`] takes.
pub const MAX_EXTENSIONS: u32 = 100;

/// Which tiers a value goes to and is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// L1 and L2 (as the cache stores responses).
    Both,
    /// This process's L1 only.
    L1,
    /// L2 only (every read goes to Redis).
    L2,
}

/// The settings of one call of a [`ValueCache`](super::ValueCache) (its
/// defaults are the cache's: [`ValueCache::options`](super::ValueCache::options)).
///
/// Builder-style; every setting has a `DEFAULT_*` constant. Durations over
/// [`MAX_TTL`] are cut to it; a hard TTL below the soft TTL is the soft TTL.
///
/// ```
/// use std::time::Duration;
/// use tower_tiered_cache::values::ValueOptions;
///
/// let opts = ValueOptions::new()
///     .ttl(Duration::from_secs(5))
///     .hard_ttl(Duration::from_secs(30))
///     .fail_safe(Duration::from_secs(3600), 3)
///     .fetch_timeout(Duration::from_secs(2))
///     .soft_fetch_timeout(Duration::from_millis(100))
///     .tag("sport:football")
///     .l1_only();
/// # let _ = opts;
/// ```
#[derive(Debug, Clone)]
pub struct ValueOptions {
    pub(crate) ttl: Duration,
    pub(crate) hard_ttl: Duration,
    pub(crate) fail_safe: Duration,
    pub(crate) max_extensions: u32,
    pub(crate) fetch_timeout: Duration,
    pub(crate) soft_fetch_timeout: Option<Duration>,
    pub(crate) tags: Vec<String>,
    pub(crate) place: Place,
}

impl Default for ValueOptions {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            hard_ttl: DEFAULT_HARD_TTL,
            fail_safe: DEFAULT_FAIL_SAFE,
            max_extensions: DEFAULT_MAX_EXTENSIONS,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            soft_fetch_timeout: DEFAULT_SOFT_FETCH_TIMEOUT,
            tags: Vec::new(),
            place: Place::Both,
        }
    }
}

impl ValueOptions {
    /// The defaults (the `DEFAULT_*` constants of this module).
    pub fn new() -> Self {
        Self::default()
    }

    // Lifetime.

    /// How long a stored value is fresh (the soft TTL; default
    /// [`DEFAULT_TTL`]). A TTL of zero stores values already stale.
    ///
    /// With [`adaptive_ttl`](crate::CacheBuilder::adaptive_ttl) on, this
    /// TTL is scaled by the key's read rate as a route's TTL is (it is
    /// the cache's user's choice, not an origin's), at most [`MAX_TTL`];
    /// the stale window up to the [`hard_ttl`](Self::hard_ttl) and the
    /// [`fail_safe`](Self::fail_safe) window keep their lengths after it
    /// (a hot value is fresh longer, not served stale longer).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.min(MAX_TTL);
        self
    }

    /// How long (from when it was stored) a value may be returned without
    /// a fetch first (default [`DEFAULT_HARD_TTL`]): past the soft TTL it
    /// is returned at once and refreshed by one background fetch per key.
    pub fn hard_ttl(mut self, ttl: Duration) -> Self {
        self.hard_ttl = ttl.min(MAX_TTL);
        self
    }

    /// Fail-safe: for `window` past the hard TTL (default
    /// [`DEFAULT_FAIL_SAFE`]) a value is kept to be returned when a fetch
    /// fails or times out; each such failure extends its life by half its
    /// TTL, at most `max_extensions` times (default
    /// [`DEFAULT_MAX_EXTENSIONS`], at most [`MAX_EXTENSIONS`]). A zero
    /// window turns it off.
    pub fn fail_safe(mut self, window: Duration, max_extensions: u32) -> Self {
        self.fail_safe = window.min(MAX_TTL);
        self.max_extensions = max_extensions.min(MAX_EXTENSIONS);
        self
    }

    // Fetching.

    /// The deadline of a fetch (default [`DEFAULT_FETCH_TIMEOUT`]): past
    /// it the fetch is dropped and the call returns a fail-safe value or
    /// a timeout error.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout.min(MAX_TTL);
        self
    }

    /// The soft part of the fetch deadline (default
    /// [`DEFAULT_SOFT_FETCH_TIMEOUT`]: off): when a fail-safe value exists
    /// and the fetch has not answered within `timeout`, the value is
    /// returned and the fetch goes on in the background (to the
    /// [`fetch_timeout`](Self::fetch_timeout)), its result stored when it
    /// lands. Callers waiting for the same key's fetch wait this long too.
    pub fn soft_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.soft_fetch_timeout = Some(timeout.min(MAX_TTL));
        self
    }

    // Invalidation.

    /// Adds an invalidation tag ([`ValueCache::invalidate_tag`](super::ValueCache::invalidate_tag)).
    /// Tags follow the rules of response tags: printable ASCII without
    /// spaces, at most [`MAX_TAG_BYTES`](crate::builder::MAX_TAG_BYTES)
    /// long, at most [`MAX_TAGS_PER_RESPONSE`](crate::builder::MAX_TAGS_PER_RESPONSE)
    /// per value; others are dropped.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    // Tiers.

    /// Keeps values in this process's L1 only (not in Redis). Reads look
    /// in L1 only.
    pub fn l1_only(mut self) -> Self {
        self.place = Place::L1;
        self
    }

    /// Keeps values in L2 (Redis) only: nothing in L1, every read goes to
    /// Redis. Without an L2 tier nothing is stored.
    pub fn l2_only(mut self) -> Self {
        self.place = Place::L2;
        self
    }

    /// Keeps values in both tiers, as responses are (the default).
    pub fn both_tiers(mut self) -> Self {
        self.place = Place::Both;
        self
    }

    /// The timeline of a value stored at `now`: fresh for the soft TTL,
    /// served stale (and refreshed) until the hard TTL, kept for fail-safe
    /// until the window past it closes.
    pub(crate) fn timeline(&self, now: u64) -> Timeline {
        let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        let fresh_until = now.saturating_add(ms(self.ttl));
        let stale_until = now.saturating_add(ms(self.hard_ttl)).max(fresh_until);
        let stale_if_error_until = stale_until.saturating_add(ms(self.fail_safe));
        Timeline {
            stored_at: now,
            initial_age: 0,
            fresh_until,
            stale_until,
            stale_if_error_until,
            retain_until: stale_if_error_until,
        }
    }

    /// Whether values are looked up and stored in L1.
    pub(crate) fn uses_l1(&self) -> bool {
        self.place != Place::L2
    }

    /// Whether values are looked up and stored in L2.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn uses_l2(&self) -> bool {
        self.place != Place::L1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_orders_soft_hard_and_fail_safe() {
        let t = ValueOptions::new()
            .ttl(Duration::from_secs(10))
            .hard_ttl(Duration::from_secs(30))
            .fail_safe(Duration::from_secs(100), 2)
            .timeline(1_000);
        assert_eq!(t.fresh_until, 11_000);
        assert_eq!(t.stale_until, 31_000);
        assert_eq!(t.stale_if_error_until, 131_000);
        assert_eq!(t.retain_until, 131_000);
        // A hard TTL below the soft one is the soft one.
        let t = ValueOptions::new()
            .ttl(Duration::from_secs(10))
            .hard_ttl(Duration::from_secs(1))
            .timeline(0);
        assert_eq!(t.stale_until, t.fresh_until);
    }

    #[test]
    fn huge_durations_are_cut_to_what_the_format_keeps() {
        let o = ValueOptions::new()
            .ttl(Duration::MAX)
            .hard_ttl(Duration::MAX)
            .fail_safe(Duration::MAX, u32::MAX)
            .fetch_timeout(Duration::MAX);
        assert_eq!(o.ttl, MAX_TTL);
        assert_eq!(o.max_extensions, MAX_EXTENSIONS);
        let t = o.timeline(crate::store::codec::MAX_STORED_AT_MS);
        let span = t.retain_until - t.stored_at;
        // Every extension adds half the TTL at most.
        let extended = span + u64::from(MAX_EXTENSIONS) * (MAX_TTL.as_millis() as u64 / 2);
        assert!(extended < crate::store::codec::MAX_TIMELINE_SPAN_MS);
    }
}
