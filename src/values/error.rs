//! [`FetchError`]: why a value cache call returned no value.

use std::fmt;
use std::time::Duration;

/// Why [`ValueCache::get_or_fetch`](super::ValueCache::get_or_fetch) or
/// [`get_many_or_fetch`](super::ValueCache::get_many_or_fetch) returned no
/// value. The cache adds no failure of its own to a fetch: Redis errors
/// and undecodable stored values are misses. Each kind has its `is_*`
/// method:
///
/// - [`is_fetch`](Self::is_fetch): the fetch returned this error (and no
///   fail-safe value stood in for it); [`fetch_error`](Self::fetch_error)
///   and [`into_fetch_error`](Self::into_fetch_error) give it back;
/// - [`is_timeout`](Self::is_timeout): the fetch outlived its
///   [`fetch_timeout`](super::ValueOptions::fetch_timeout);
/// - [`is_coalesce`](Self::is_coalesce): the call waited for another
///   call's fetch of the same key, which failed or outlived the wait, and
///   the next ones did too (it never fetches alone meanwhile);
/// - [`is_too_many_keys`](Self::is_too_many_keys): more keys than
///   [`MAX_MANY_KEYS`](super::MAX_MANY_KEYS) in one batch.
///
/// ```
/// use std::time::Duration;
/// use tower_tiered_cache::values::ValueOptions;
/// use tower_tiered_cache::Cache;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let cache = Cache::builder().build().unwrap();
/// let odds = cache.values::<f64>("odds").unwrap();
/// let err = odds
///     .get_or_fetch("match:1", &ValueOptions::new(), || async { Err::<f64, _>("feed down") })
///     .await
///     .unwrap_err();
/// assert!(err.is_fetch());
/// assert_eq!(err.into_fetch_error(), Some("feed down"));
/// # }
/// ```
pub struct FetchError<E> {
    kind: Kind<E>,
}

enum Kind<E> {
    Fetch(E),
    Timeout(Duration),
    Coalesce,
    TooManyKeys { count: usize, max: usize },
}

impl<E> FetchError<E> {
    pub(crate) fn fetch(error: E) -> Self {
        Self {
            kind: Kind::Fetch(error),
        }
    }

    pub(crate) fn timeout(after: Duration) -> Self {
        Self {
            kind: Kind::Timeout(after),
        }
    }

    pub(crate) fn coalesce() -> Self {
        Self {
            kind: Kind::Coalesce,
        }
    }

    pub(crate) fn too_many_keys(count: usize, max: usize) -> Self {
        Self {
            kind: Kind::TooManyKeys { count, max },
        }
    }

    /// True when the fetch itself failed.
    pub fn is_fetch(&self) -> bool {
        matches!(self.kind, Kind::Fetch(_))
    }

    /// True when the fetch outlived its deadline.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, Kind::Timeout(_))
    }

    /// True when the call waited on other calls' fetches of its key, which
    /// failed or outlived the wait.
    pub fn is_coalesce(&self) -> bool {
        matches!(self.kind, Kind::Coalesce)
    }

    /// True when a batch named more keys than allowed.
    pub fn is_too_many_keys(&self) -> bool {
        matches!(self.kind, Kind::TooManyKeys { .. })
    }

    /// The fetch's own error, if that is what this is.
    pub fn fetch_error(&self) -> Option<&E> {
        match &self.kind {
            Kind::Fetch(e) => Some(e),
            _ => None,
        }
    }

    /// The fetch's own error, if that is what this is.
    pub fn into_fetch_error(self) -> Option<E> {
        match self.kind {
            Kind::Fetch(e) => Some(e),
            _ => None,
        }
    }
}

impl<E: fmt::Debug> fmt::Debug for FetchError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Fetch(e) => f.debug_tuple("Fetch").field(e).finish(),
            Kind::Timeout(after) => f.debug_tuple("Timeout").field(after).finish(),
            Kind::Coalesce => f.write_str("Coalesce"),
            Kind::TooManyKeys { count, max } => f
                .debug_struct("TooManyKeys")
                .field("count", count)
                .field("max", max)
                .finish(),
        }
    }
}

impl<E: fmt::Display> fmt::Display for FetchError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Fetch(e) => write!(f, "value fetch failed: {e}"),
            Kind::Timeout(after) => write!(f, "value fetch timed out after {after:?}"),
            Kind::Coalesce => {
                f.write_str("the fetches of this key that the call waited for failed or timed out")
            }
            Kind::TooManyKeys { count, max } => {
                write!(f, "{count} keys in one batch, at most {max} allowed")
            }
        }
    }
}

impl<E> std::error::Error for FetchError<E>
where
    E: std::error::Error + 'static,
{
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::Fetch(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_say_what_they_are() {
        let io = || std::io::Error::other("down");
        let e = FetchError::fetch(io());
        assert!(e.is_fetch() && !e.is_timeout());
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.to_string(), "value fetch failed: down");
        let t = FetchError::<std::io::Error>::timeout(Duration::from_secs(2));
        assert!(t.is_timeout() && t.fetch_error().is_none());
        assert!(t.to_string().contains("2s"));
        assert!(FetchError::<()>::coalesce().is_coalesce());
        let many = FetchError::<()>::too_many_keys(2000, 1000);
        assert!(many.is_too_many_keys());
        assert_eq!(
            format!("{many:?}"),
            "TooManyKeys { count: 2000, max: 1000 }"
        );
    }
}
