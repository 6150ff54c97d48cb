//! Route rules: per path prefix or pattern TTLs, stale windows and bypass.

use std::time::Duration;

/// A rule for the requests whose path it matches. Rules are tried in the
/// order they were added; the first match applies.
///
/// ```
/// use std::time::Duration;
/// use tower_tiered_cache::Route;
///
/// // Odds change fast: 5 s fresh, then serve stale for 30 s while refreshing.
/// let odds = Route::prefix("/api/odds")
///     .ttl(Duration::from_secs(5))
///     .stale_while_revalidate(Duration::from_secs(30));
/// // An upstream API that sends no caching headers at all.
/// let products = Route::pattern("/api/products/*").ttl(Duration::from_secs(300)).force();
/// // Never cache the account pages.
/// let account = Route::prefix("/account").bypass();
/// # let _ = (odds, products, account);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    matcher: Matcher,
    pub(crate) ttl: Option<Duration>,
    pub(crate) force: bool,
    pub(crate) swr: Option<Duration>,
    pub(crate) sie: Option<Duration>,
    pub(crate) bypass: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    Prefix(String),
    Pattern(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one path segment.
    One,
    /// `**`: any number of segments (only meaningful last).
    Rest,
}

impl Route {
    /// Matches paths that start with `prefix` (`/api` matches `/api`,
    /// `/api/x`, but not `/apix`, unless `prefix` ends in `/` or is `/`).
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self::new(Matcher::Prefix(prefix.into()))
    }

    /// Matches paths segment by segment: `*` stands for exactly one segment,
    /// a final `**` for any remainder (`/users/*/posts/**`).
    pub fn pattern(pattern: &str) -> Self {
        let segs = pattern
            .trim_start_matches('/')
            .split('/')
            .map(|s| match s {
                "*" => Segment::One,
                "**" => Segment::Rest,
                lit => Segment::Literal(lit.to_owned()),
            })
            .collect();
        Self::new(Matcher::Pattern(segs))
    }

    fn new(matcher: Matcher) -> Self {
        Self {
            matcher,
            ttl: None,
            force: false,
            swr: None,
            sie: None,
            bypass: false,
        }
    }

    /// Overrides the freshness lifetime the origin gave (`max-age`,
    /// `s-maxage`, `Expires`) for responses on this route. Responses with no
    /// freshness information get it too when [`force`](Self::force) is set.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Caches responses that carry no freshness information (APIs that send
    /// no caching headers) for the route's [`ttl`](Self::ttl). `no-store`,
    /// `private` and the other rules that forbid storing still apply.
    ///
    /// With [adaptive TTL](crate::CacheBuilder::adaptive_ttl) on, `force`
    /// also lets the cache scale the freshness the origin stated
    /// (`max-age`, `s-maxage`, `Expires`, or the route's TTL in its place)
    /// by how often the key is read; without it, explicit freshness is
    /// never changed.
    pub fn force(mut self) -> Self {
        self.force = true;
        self
    }

    /// The stale-while-revalidate window when the response names none.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.swr = Some(window);
        self
    }

    /// The stale-if-error window when the response names none.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.sie = Some(window);
        self
    }

    /// Requests on this route go straight to the inner service, uncached.
    pub fn bypass(mut self) -> Self {
        self.bypass = true;
        self
    }

    /// Whether the rule applies to `path`.
    pub fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Prefix(p) => {
                path.starts_with(p.as_str())
                    && (p.ends_with('/')
                        || path.len() == p.len()
                        || path.as_bytes()[p.len()] == b'/')
            }
            Matcher::Pattern(segs) => {
                let mut parts = path.trim_start_matches('/').split('/');
                for seg in segs {
                    match seg {
                        Segment::Rest => return true,
                        Segment::One => match parts.next() {
                            Some(p) if !p.is_empty() => {}
                            _ => return false,
                        },
                        Segment::Literal(l) => match parts.next() {
                            Some(p) if p == l => {}
                            _ => return false,
                        },
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_table() {
        let cases = [
            (Route::prefix("/api"), "/api", true),
            (Route::prefix("/api"), "/api/x", true),
            (Route::prefix("/api"), "/apix", false),
            (Route::prefix("/api/"), "/api/x", true),
            (Route::prefix("/"), "/anything", true),
            (Route::pattern("/users/*/posts"), "/users/7/posts", true),
            (Route::pattern("/users/*/posts"), "/users//posts", false),
            (Route::pattern("/users/*/posts"), "/users/7/posts/1", false),
            (
                Route::pattern("/users/*/posts/**"),
                "/users/7/posts/1/2",
                true,
            ),
            (Route::pattern("/users/*"), "/users", false),
            (Route::pattern("/a/b"), "/a/b", true),
            (Route::pattern("/a/b"), "/a/c", false),
        ];
        for (route, path, want) in cases {
            assert_eq!(route.matches(path), want, "{route:?} on {path}");
        }
    }
}
