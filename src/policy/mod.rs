//! HTTP caching semantics (RFC 9111, RFC 5861): what may be stored, for how
//! long, and whether a stored response may answer a request.

pub(crate) mod conditional;
pub(crate) mod date;
mod directives;
pub(crate) mod range;
mod rules;
mod sfv;

pub use directives::{CacheControl, MAX_DELTA_SECONDS};
pub use rules::Route;

use std::time::Duration;

use http::header::{
    HeaderMap, HeaderName, AGE, AUTHORIZATION, CONNECTION, DATE, EXPIRES, LAST_MODIFIED,
    SET_COOKIE, TRANSFER_ENCODING, UPGRADE, VARY,
};
use http::{Method, StatusCode};

use crate::entry::{Entry, EntryFlags, Timeline};

/// What a shared cache does with a request's own `Cache-Control` /
/// `Pragma` directives (`no-cache`, `max-age`, `min-fresh`, `max-stale`,
/// `no-store`, `only-if-cached`).
///
/// A private cache always honours them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestCacheControl {
    /// Honour them (RFC 9111 §5.2.1, the default). Requests that must be
    /// revalidated (`no-cache`, `max-age=0`, `Pragma: no-cache`,
    /// `min-fresh`) are collapsed: they join the one revalidation in flight
    /// for their key, and a validation that started after a request arrived
    /// answers it, so clients cannot multiply the load on the origin.
    #[default]
    Honour,
    /// Ignore them, as Varnish and nginx do by default: a client cannot
    /// make a shared cache call the origin. `Authorization`, conditionals
    /// and `Range` still apply.
    Ignore,
}

/// Whether the cache is shared (a server or proxy, the default) or private
/// to one user agent (a client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// A shared cache (RFC 9111): honours `s-maxage`, does not store
    /// `private` responses, applies the `Authorization` rules of §3.5
    /// (unless keys are
    /// [partitioned by credentials](crate::CacheBuilder::partition_by_credentials)).
    /// Note that `s-maxage` implies `proxy-revalidate` (§5.2.2.10): such a
    /// response is never served stale, whatever the stale windows say.
    #[default]
    Shared,
    /// A private cache: ignores `s-maxage`, stores `private` responses.
    /// Requests with `Authorization` or `Cookie` are not treated apart: the
    /// cache is taken to belong to one user. A client that sends several
    /// users' credentials through one cache should turn on
    /// [`partition_by_credentials`](crate::CacheBuilder::partition_by_credentials).
    Private,
}

/// What to do with responses that carry `Set-Cookie`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetCookiePolicy {
    /// Do not store them (the default): one user's cookie is never shared.
    #[default]
    Pass,
    /// Store them without their `Set-Cookie` lines; the response that
    /// triggered the store still carries its cookies.
    Strip,
    /// Store them as they are, cookies included.
    Store,
}

/// Why a response was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotStored {
    /// The status is not one this cache stores (5xx, 206, 1xx, ...).
    Status,
    /// `Cache-Control: no-store` on the request or the response.
    NoStore,
    /// `Cache-Control: private` in a shared cache.
    Private,
    /// `Set-Cookie` with [`SetCookiePolicy::Pass`].
    SetCookie,
    /// `Vary: *`.
    VaryStar,
    /// The request carried `Authorization` and the response did not allow
    /// sharing it (RFC 9111 §3.5; never with credential partitioning).
    Authorization,
    /// No freshness information (and no route TTL to force one), or a
    /// lifetime of zero with nothing to revalidate with.
    NoFreshness,
    /// The body is larger than the configured cap.
    TooLarge,
}

impl NotStored {
    /// Whether later requests for the key should skip coalescing for a while
    /// (hit-for-pass): true for reasons that come from how the origin
    /// answers this URL, not from one failed exchange nor from one
    /// request. `no-store` is such a reason when the response said it
    /// (Varnish's hit-for-miss does the same), not when the request did
    /// (`request_no_store`: that request's own choice, which says nothing
    /// of the next request for the URL).
    pub(crate) fn remember(self, request_no_store: bool) -> bool {
        match self {
            NotStored::Status | NotStored::Authorization => false,
            NotStored::NoStore => !request_no_store,
            _ => true,
        }
    }
}

/// The policy settings, assembled by the builder.
#[derive(Debug, Clone)]
pub(crate) struct PolicyConfig {
    pub(crate) mode: CacheMode,
    pub(crate) request_cc: RequestCacheControl,
    pub(crate) heuristic_fraction: f64,
    pub(crate) heuristic_max: Duration,
    pub(crate) default_swr: Duration,
    pub(crate) default_sie: Duration,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) set_cookie: SetCookiePolicy,
    pub(crate) share_authorized: bool,
    /// Whether a 5xx with explicit freshness is stored (RFC 9111 §3 allows
    /// it; the default).
    pub(crate) store_server_errors: bool,
    /// Keys are partitioned by credentials (`KeyConfig::credentials`): an
    /// entry stored for an authorized request only answers the same
    /// credentials, so §3.5 does not hold it back.
    pub(crate) partition_credentials: bool,
    pub(crate) keep_for_revalidation: Duration,
    pub(crate) routes: Vec<Route>,
    /// The targeted cache-control fields this cache obeys (RFC 9213), in
    /// order of precedence; empty: `Cache-Control` alone.
    pub(crate) targeted: Vec<HeaderName>,
    /// Whether the targeted field a response is judged by is removed
    /// before the response is forwarded.
    pub(crate) strip_targeted: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            mode: CacheMode::Shared,
            request_cc: RequestCacheControl::Honour,
            heuristic_fraction: 0.1,
            heuristic_max: Duration::from_secs(24 * 3600),
            default_swr: Duration::ZERO,
            default_sie: Duration::ZERO,
            negative_ttl: None,
            set_cookie: SetCookiePolicy::Pass,
            share_authorized: false,
            store_server_errors: true,
            partition_credentials: false,
            keep_for_revalidation: Duration::from_secs(600),
            routes: Vec::new(),
            targeted: vec![HeaderName::from_static("cdn-cache-control")],
            strip_targeted: false,
        }
    }
}

/// What a request asks of the cache.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestDirectives {
    pub(crate) cc: CacheControl,
    pub(crate) authorized: bool,
    /// The request carries `If-None-Match` or `If-Modified-Since`.
    pub(crate) conditional: bool,
    /// The request carries `Range`.
    pub(crate) range: bool,
    /// The request carries `Cache-Control` or `Pragma` (whether or not the
    /// cache obeys them: `cc` is then emptied, this stays).
    pub(crate) has_cc: bool,
}

impl RequestDirectives {
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        // One pass over the (few) names beats five hashed look-ups that
        // usually find nothing.
        let (mut has_cc, mut authorized, mut conditional, mut range) = (false, false, false, false);
        for name in headers.keys() {
            if name == http::header::CACHE_CONTROL || name == http::header::PRAGMA {
                has_cc = true;
            } else if name == AUTHORIZATION {
                authorized = true;
            } else if name == http::header::IF_NONE_MATCH || name == http::header::IF_MODIFIED_SINCE
            {
                conditional = true;
            } else if name == http::header::RANGE {
                range = true;
            }
        }
        Self {
            cc: if has_cc {
                CacheControl::from_headers(headers)
            } else {
                CacheControl::default()
            },
            authorized,
            conditional,
            range,
            has_cc,
        }
    }

    /// Neither `Cache-Control`, `Pragma` nor `Authorization`: a request
    /// the per-thread front may answer (`front`).
    #[inline]
    pub(crate) fn plain(&self) -> bool {
        !self.has_cc && !self.authorized
    }
}

/// How a stored entry may answer a request, now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Usability {
    /// Fresh: serve it.
    Fresh,
    /// Stale but servable at once; a background refresh should run.
    Stale,
    /// Must be validated with the origin before use.
    Revalidate,
    /// Cannot answer this request (may still serve stale-if-error).
    Unusable,
}

/// The directives a response's storing and reuse are judged by.
struct ResponseDirectives<'h> {
    /// Those of the first valid targeted field (RFC 9213), else those of
    /// `Cache-Control`.
    cc: CacheControl,
    /// `Expires`, unless a targeted field was selected: RFC 9213 §2.1 has
    /// the cache ignore `Cache-Control` and `Expires` then.
    expires: Option<&'h http::HeaderValue>,
}

/// The result of judging a response storable.
#[derive(Debug)]
pub(crate) struct Storable {
    pub(crate) timeline: Timeline,
    pub(crate) flags: EntryFlags,
    pub(crate) vary: Vec<HeaderName>,
    pub(crate) strip: Vec<HeaderName>,
    pub(crate) strip_set_cookie: bool,
    /// The freshness lifetime, ms (before the age the response arrived
    /// with is taken off).
    pub(crate) lifetime: u64,
    /// Whether the cache may change the lifetime (adaptive TTL): it chose
    /// it (a route's TTL forced on a response without freshness, a
    /// heuristic, the negative-caching TTL), or the route says `force`.
    /// Never for the origin's explicit freshness otherwise.
    pub(crate) adaptable: bool,
}

impl Storable {
    /// Sets the freshness lifetime to `lifetime` ms: freshness ends that
    /// long after the response's time, less the age it arrived with; the
    /// stale windows and the time kept for revalidation keep their lengths
    /// after it.
    pub(crate) fn set_lifetime(&mut self, lifetime: u64) {
        self.timeline = self.timeline.with_lifetime(lifetime);
        self.lifetime = lifetime;
    }
}

/// A response's freshness lifetime, ms, and where it came from.
struct Lifetime {
    millis: u64,
    /// The response (or a rule the operator wrote for it) says how long it
    /// is fresh.
    has_freshness: bool,
    /// The origin stated it (`s-maxage`, `max-age`, `Expires`), whether
    /// or not a route's TTL replaced it.
    explicit: bool,
}

/// The hop-by-hop fields (RFC 9110 §7.6.1): never stored, never served
/// from a stored entry.
pub(crate) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
];

/// Removes hop-by-hop headers (and those named by `Connection`) in place.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(n);
    }
    debug_assert!(!headers.contains_key(TRANSFER_ENCODING) && !headers.contains_key(UPGRADE));
}

impl PolicyConfig {
    fn shared(&self) -> bool {
        self.mode == CacheMode::Shared
    }

    /// A shared cache set to ignore requests' own cache directives.
    pub(crate) fn ignores_request_cc(&self) -> bool {
        self.mode == CacheMode::Shared && self.request_cc == RequestCacheControl::Ignore
    }

    /// Whether RFC 9111 §3.5 applies to this request: it carries
    /// `Authorization`, the cache is shared, and neither `share_authorized`
    /// nor credential partitioning (which gives the credentials a keyspace
    /// of their own) lifts the rule.
    fn guards_authorization(&self, req: &RequestDirectives) -> bool {
        req.authorized && self.shared() && !self.share_authorized && !self.partition_credentials
    }

    /// The first of the configured targeted fields that `headers` carry
    /// with a valid, non-empty value, and its directives (RFC 9213 §2.1).
    fn targeted_directives(&self, headers: &HeaderMap) -> Option<(&HeaderName, CacheControl)> {
        self.targeted
            .iter()
            .find_map(|name| Some((name, CacheControl::from_targeted(headers, name)?)))
    }

    /// What a response is judged by: its selected targeted field, or
    /// `Cache-Control` and `Expires`.
    fn response_directives<'h>(&self, headers: &'h HeaderMap) -> ResponseDirectives<'h> {
        match self.targeted_directives(headers) {
            Some((_, cc)) => ResponseDirectives { cc, expires: None },
            None => ResponseDirectives {
                cc: CacheControl::from_headers(headers),
                expires: headers.get(EXPIRES),
            },
        }
    }

    /// Removes, when so configured, the targeted field a response with
    /// `headers` is judged by (the first valid one on the list) before it
    /// is forwarded; the others, and `Cache-Control`, are left as they are.
    #[inline]
    pub(crate) fn strip_targeted(&self, headers: &mut HeaderMap) {
        if !self.strip_targeted {
            return;
        }
        if let Some((name, _)) = self.targeted_directives(headers) {
            let name = name.clone();
            headers.remove(name);
        }
    }

    /// Whether `method` is answered from the cache (`HEAD` reads `GET`).
    pub(crate) fn lookup_method(method: &Method) -> bool {
        method == Method::GET || method == Method::HEAD
    }

    /// Judges whether `entry` may answer a request with `req` directives.
    pub(crate) fn usability(&self, entry: &Entry, req: &RequestDirectives, now: u64) -> Usability {
        if self.guards_authorization(req) && !entry.flags.auth_ok {
            return Usability::Unusable;
        }
        let tl = &entry.timeline;
        let revalidate_or_unusable = || {
            if entry.has_validators() {
                Usability::Revalidate
            } else {
                Usability::Unusable
            }
        };
        if entry.flags.no_cache || req.cc.no_cache {
            return revalidate_or_unusable();
        }
        let mut fresh = tl.is_fresh(now);
        let mut client_refuses_stale = false;
        if let Some(max_age) = req.cc.max_age {
            if tl.age_at(now) > max_age.saturating_mul(1000) {
                fresh = false;
                client_refuses_stale = true;
            }
        }
        if let Some(min_fresh) = req.cc.min_fresh {
            if tl.fresh_until.saturating_sub(now) < min_fresh.saturating_mul(1000) {
                fresh = false;
                client_refuses_stale = true;
            }
        }
        if fresh {
            return Usability::Fresh;
        }
        if entry.flags.must_revalidate {
            return revalidate_or_unusable();
        }
        if let Some(max_stale) = req.cc.max_stale {
            let staleness = now.saturating_sub(tl.fresh_until);
            match max_stale {
                None => return Usability::Stale,
                Some(s) if staleness <= s.saturating_mul(1000) => return Usability::Stale,
                Some(_) => return revalidate_or_unusable(),
            }
        }
        if !client_refuses_stale && now < tl.stale_until {
            return Usability::Stale;
        }
        revalidate_or_unusable()
    }

    /// Whether a stored entry may stand in for a failed upstream at `now`.
    pub(crate) fn stale_if_error_ok(
        &self,
        entry: &Entry,
        req: &RequestDirectives,
        now: u64,
    ) -> bool {
        // RFC 9111 §4.2.4: no stale responses against no-cache / must-revalidate.
        if entry.flags.must_revalidate || entry.flags.no_cache {
            return false;
        }
        if self.guards_authorization(req) && !entry.flags.auth_ok {
            return false;
        }
        now < entry.timeline.stale_if_error_until
    }

    /// Decides whether a response to a `GET` may be stored, and computes its
    /// timeline. `request_time` / `response_time` bracket the upstream call.
    pub(crate) fn storable(
        &self,
        req: &RequestDirectives,
        status: StatusCode,
        headers: &HeaderMap,
        route: Option<&Route>,
        request_time: u64,
        response_time: u64,
    ) -> Result<Storable, NotStored> {
        let resp = self.response_directives(headers);
        let cc = &resp.cc;
        self.refuse_by_directives(req, status, cc)?;
        let vary = vary_names(headers)?;
        let has_cookie = headers.contains_key(SET_COOKIE);
        if has_cookie && self.set_cookie == SetCookiePolicy::Pass {
            return Err(NotStored::SetCookie);
        }
        let shared_directive =
            cc.public || cc.must_revalidate || (self.shared() && cc.s_maxage.is_some());
        if self.guards_authorization(req) && !shared_directive {
            return Err(NotStored::Authorization);
        }

        let date = header_date(headers, DATE, response_time);
        let lifetime =
            self.freshness_lifetime(status, &resp, headers, route, date, response_time)?;
        let must_revalidate =
            cc.must_revalidate || (self.shared() && (cc.proxy_revalidate || cc.s_maxage.is_some()));
        let validators =
            headers.contains_key(http::header::ETAG) || headers.contains_key(LAST_MODIFIED);
        let (swr, sie) = self.stale_windows(cc, route, must_revalidate, lifetime.has_freshness);
        // A no-cache response is only ever used after validation.
        if cc.no_cache && !validators {
            return Err(NotStored::NoFreshness);
        }

        let initial_age = initial_age(headers, date, request_time, response_time);
        let remaining = lifetime.millis.saturating_sub(initial_age);
        // Dead on arrival, with nothing to revalidate with and no stale window.
        if remaining == 0 && !validators && swr == 0 && sie == 0 {
            return Err(NotStored::NoFreshness);
        }
        Ok(Storable {
            timeline: self.timeline(
                response_time,
                initial_age,
                remaining,
                (swr, sie),
                validators,
            ),
            flags: EntryFlags {
                must_revalidate,
                no_cache: cc.no_cache,
                // Partitioning does not set it: the flag says the response
                // may answer any credentials, which a partitioned entry
                // only may because no other credentials can reach it.
                auth_ok: !self.shared() || self.share_authorized || shared_directive,
            },
            vary,
            strip: self.stripped_fields(cc),
            strip_set_cookie: has_cookie && self.set_cookie == SetCookiePolicy::Strip,
            lifetime: lifetime.millis,
            adaptable: !lifetime.explicit || route.is_some_and(|r| r.force),
        })
    }

    /// Refuses a response that `no-store` (the request's or its own), its
    /// status or, in a shared cache, `private` keeps out.
    fn refuse_by_directives(
        &self,
        req: &RequestDirectives,
        status: StatusCode,
        cc: &CacheControl,
    ) -> Result<(), NotStored> {
        if req.cc.no_store {
            return Err(NotStored::NoStore);
        }
        if !final_status(status) {
            return Err(NotStored::Status);
        }
        // RFC 9111 §5.2.2.3: with `must-understand`, a status this cache
        // understands is stored even with `no-store`; any other is not.
        if cc.must_understand {
            if !understood_status(status) {
                return Err(NotStored::Status);
            }
        } else if cc.no_store {
            return Err(NotStored::NoStore);
        }
        if status.is_server_error() && !self.store_server_errors {
            return Err(NotStored::Status);
        }
        if self.shared() && cc.private {
            return Err(NotStored::Private);
        }
        Ok(())
    }

    /// The freshness lifetime (RFC 9111 §4.2.1), whether the response (or
    /// a rule the operator wrote for it) says how long it is fresh, and
    /// whether the origin stated it. Without freshness information,
    /// configured stale windows do not make a response storable: only
    /// `force` does.
    fn freshness_lifetime(
        &self,
        status: StatusCode,
        resp: &ResponseDirectives<'_>,
        headers: &HeaderMap,
        route: Option<&Route>,
        date: Option<u64>,
        response_time: u64,
    ) -> Result<Lifetime, NotStored> {
        let explicit = self.explicit_lifetime(resp, date, response_time);
        let negative = matches!(status, StatusCode::NOT_FOUND | StatusCode::GONE);
        let route_ttl = route.and_then(|r| r.ttl).map(|d| d.as_millis() as u64);
        let chosen = |millis: u64, has_freshness: bool| Lifetime {
            millis,
            has_freshness,
            explicit: false,
        };
        Ok(match (explicit, route_ttl) {
            (Some(e), ttl) => Lifetime {
                millis: ttl.unwrap_or(e),
                has_freshness: true,
                explicit: true,
            },
            (None, _) if negative => match self.negative_ttl {
                Some(t) => chosen(t.as_millis() as u64, true),
                None => return Err(NotStored::NoFreshness),
            },
            // A route forces a lifetime on headerless answers, not on
            // server errors: those need the origin's own freshness.
            (None, Some(ttl)) if route.is_some_and(|r| r.force) && !status.is_server_error() => {
                chosen(ttl, true)
            }
            (None, _) => {
                if !(heuristic_status(status) || resp.cc.public) {
                    return Err(NotStored::NoFreshness);
                }
                chosen(
                    self.heuristic_lifetime(headers, date, response_time),
                    headers.contains_key(LAST_MODIFIED),
                )
            }
        })
    }

    /// The lifetime the response states: `s-maxage` (shared), `max-age`,
    /// or `Expires` less `Date` (not with a targeted field); `None` when it
    /// states none.
    fn explicit_lifetime(
        &self,
        resp: &ResponseDirectives<'_>,
        date: Option<u64>,
        response_time: u64,
    ) -> Option<u64> {
        let cc = &resp.cc;
        if let Some(s) = cc.s_maxage.filter(|_| self.shared()) {
            Some(s * 1000)
        } else if let Some(m) = cc.max_age {
            Some(m * 1000)
        } else {
            let exp = resp.expires?;
            // An invalid Expires (such as "0") is a time in the past.
            Some(match http_date(exp, response_time) {
                Some(e) => e.saturating_sub(date.unwrap_or(response_time)),
                None => 0,
            })
        }
    }

    /// The heuristic lifetime (RFC 9111 §4.2.2): a fraction of the time
    /// since `Last-Modified`, capped; 0 without it.
    fn heuristic_lifetime(
        &self,
        headers: &HeaderMap,
        date: Option<u64>,
        response_time: u64,
    ) -> u64 {
        match header_date(headers, LAST_MODIFIED, response_time) {
            Some(lm) => {
                let since = date.unwrap_or(response_time).saturating_sub(lm);
                let h = (since as f64 * self.heuristic_fraction) as u64;
                h.min(self.heuristic_max.as_millis() as u64)
            }
            None => 0,
        }
    }

    /// The stale-while-revalidate and stale-if-error windows, ms: none when
    /// the response must be revalidated. The origin's own windows always
    /// count; configured ones (the route's, else the defaults) only when
    /// there is freshness information to extend.
    fn stale_windows(
        &self,
        cc: &CacheControl,
        route: Option<&Route>,
        must_revalidate: bool,
        has_freshness: bool,
    ) -> (u64, u64) {
        if must_revalidate {
            return (0, 0);
        }
        let secs = |s: u64| s.saturating_mul(1000);
        let configured = |route_w: Option<Duration>, default: Duration| {
            if has_freshness {
                route_w.unwrap_or(default).as_millis() as u64
            } else {
                0
            }
        };
        let swr = cc
            .stale_while_revalidate
            .map(secs)
            .unwrap_or_else(|| configured(route.and_then(|r| r.swr), self.default_swr));
        let sie = cc
            .stale_if_error
            .map(secs)
            .unwrap_or_else(|| configured(route.and_then(|r| r.sie), self.default_sie));
        (swr, sie)
    }

    /// The entry's timeline: fresh for `remaining` ms from `response_time`,
    /// then stale for the `(swr, sie)` windows; kept for revalidation a
    /// while longer when it has validators.
    fn timeline(
        &self,
        response_time: u64,
        initial_age: u64,
        remaining: u64,
        (swr, sie): (u64, u64),
        validators: bool,
    ) -> Timeline {
        let fresh_until = response_time.saturating_add(remaining);
        let stale_until = fresh_until.saturating_add(swr);
        let stale_if_error_until = fresh_until.saturating_add(sie);
        let mut retain_until = stale_until.max(stale_if_error_until);
        if validators {
            retain_until = retain_until
                .max(fresh_until.saturating_add(self.keep_for_revalidation.as_millis() as u64));
        }
        Timeline {
            stored_at: response_time,
            initial_age,
            fresh_until,
            stale_until,
            stale_if_error_until,
            retain_until,
        }
    }

    /// The fields to strip before storing: `no-cache="…"` and, in a shared
    /// cache, `private="…"`.
    fn stripped_fields(&self, cc: &CacheControl) -> Vec<HeaderName> {
        let private: &[_] = if self.shared() {
            &cc.private_fields
        } else {
            &[]
        };
        cc.no_cache_fields
            .iter()
            .chain(private)
            .filter_map(|f| HeaderName::from_bytes(f.as_bytes()).ok())
            .collect()
    }
}

/// The names a response varies on, each once; `Vary: *` (or a name or
/// value that does not parse) refuses it.
fn vary_names(headers: &HeaderMap) -> Result<Vec<HeaderName>, NotStored> {
    let mut vary = Vec::new();
    for v in headers.get_all(VARY) {
        let Ok(s) = v.to_str() else {
            return Err(NotStored::VaryStar);
        };
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return Err(NotStored::VaryStar);
            }
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) if !vary.contains(&n) => vary.push(n),
                Ok(_) => {}
                Err(_) => return Err(NotStored::VaryStar),
            }
        }
    }
    Ok(vary)
}

/// The response's age when it arrived (RFC 9111 §4.2.3), ms.
fn initial_age(
    headers: &HeaderMap,
    date: Option<u64>,
    request_time: u64,
    response_time: u64,
) -> u64 {
    let age_value = age_field(headers).unwrap_or(0).saturating_mul(1000);
    let apparent_age = date.map_or(0, |d| response_time.saturating_sub(d));
    let response_delay = response_time.saturating_sub(request_time);
    apparent_age.max(age_value.saturating_add(response_delay))
}

/// The `Age` field's value, seconds (RFC 9111 §5.1): of a list (on one
/// line or several), the first member; `None` (the field is ignored) when
/// that member is not a non-negative integer.
fn age_field(headers: &HeaderMap) -> Option<u64> {
    let first = headers.get(AGE)?.to_str().ok()?;
    let member = first.split(',').next().unwrap_or(first);
    directives::parse_delta(member)
}

/// A header's HTTP date, ms since the epoch (`None` when absent or
/// invalid; the first field line counts).
fn header_date(headers: &HeaderMap, name: HeaderName, now: u64) -> Option<u64> {
    headers.get(name).and_then(|v| http_date(v, now))
}

/// An HTTP date in any of its three forms (see [`date`]), ms since the
/// epoch.
fn http_date(v: &http::HeaderValue, now: u64) -> Option<u64> {
    v.to_str().ok().and_then(|s| date::parse(s, now))
}

/// Statuses this cache may store (RFC 9111 §3): final ones (200–599),
/// except 304 (it freshens a stored response; it is not one). A 206 is
/// stored only as a part (`flow::partial`), never as a complete response
/// (`flow::store_verdict` refuses it). Explicit freshness, a route's TTL
/// or, for the statuses of [`heuristic_status`], a heuristic decide the
/// rest.
fn final_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200..=599) && status.as_u16() != 304
}

/// Statuses whose caching requirements this cache implements: what
/// `must-understand` asks (RFC 9111 §5.2.2.3). The final statuses RFC 9110
/// §15 defines, less 206 and 304 (see [`final_status`]) and the reserved
/// 306.
fn understood_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=205 | 300..=305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505
    )
}

/// Statuses that are heuristically cacheable (RFC 9110 §15.1): the only
/// ones a heuristic lifetime applies to (206 is never stored here).
fn heuristic_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

#[cfg(test)]
mod tests;
