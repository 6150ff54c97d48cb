//! Table tests for [`PolicyConfig::storable`], [`PolicyConfig::usability`]
//! and [`PolicyConfig::stale_if_error_ok`]. Every time is a fixed number of
//! milliseconds; no test reads a real clock.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};

use super::*;
use crate::entry::{Entry, EntryFlags, Timeline};

/// The response time of every `storable` case: a whole second, so HTTP dates
/// (second resolution) land on it exactly.
const T: u64 = 1_700_000_000_000;
const SEC: u64 = 1_000;
const MIN: u64 = 60 * SEC;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;
/// `PolicyConfig::default().keep_for_revalidation`.
const KEEP: u64 = 10 * MIN;

/// An HTTP date for a time in milliseconds.
fn http_date(millis: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(millis))
}

/// A header map of `list`, in order (repeated names appended); also used by
/// the `conditional` and `range` tests.
pub(super) fn headers<V: AsRef<str>>(list: &[(&str, V)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in list {
        h.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value.as_ref()).unwrap(),
        );
    }
    h
}

fn directives(cache_control: &str, authorized: bool) -> RequestDirectives {
    let mut list = Vec::new();
    if !cache_control.is_empty() {
        list.push(("cache-control", cache_control.to_owned()));
    }
    if authorized {
        list.push(("authorization", "Bearer secret".to_owned()));
    }
    let d = RequestDirectives::from_headers(&headers(&list));
    assert_eq!(d.authorized, authorized);
    d
}

fn shared() -> PolicyConfig {
    PolicyConfig::default()
}

fn private() -> PolicyConfig {
    PolicyConfig {
        mode: CacheMode::Private,
        ..PolicyConfig::default()
    }
}

/// A timeline stored at `T`, the other instants given as offsets from `T`.
fn tl(initial_age: u64, fresh: u64, stale: u64, sie: u64, retain: u64) -> Timeline {
    Timeline {
        stored_at: T,
        initial_age,
        fresh_until: T + fresh,
        stale_until: T + stale,
        stale_if_error_until: T + sie,
        retain_until: T + retain,
    }
}

/// A timeline with no stale windows and no validators: everything ends when
/// freshness does.
fn plain(lifetime: u64) -> Timeline {
    tl(0, lifetime, lifetime, lifetime, lifetime)
}

fn flags(must_revalidate: bool, no_cache: bool, auth_ok: bool) -> EntryFlags {
    EntryFlags {
        must_revalidate,
        no_cache,
        auth_ok,
    }
}

// ---------------------------------------------------------------------------
// storable
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Want {
    timeline: Timeline,
    flags: EntryFlags,
    strip_set_cookie: bool,
    vary: Vec<&'static str>,
    strip: Vec<&'static str>,
}

fn ok(timeline: Timeline) -> Want {
    Want {
        timeline,
        flags: EntryFlags::default(),
        strip_set_cookie: false,
        vary: Vec::new(),
        strip: Vec::new(),
    }
}

impl Want {
    fn flags(mut self, must_revalidate: bool, no_cache: bool, auth_ok: bool) -> Self {
        self.flags = flags(must_revalidate, no_cache, auth_ok);
        self
    }

    fn cookie_stripped(mut self) -> Self {
        self.strip_set_cookie = true;
        self
    }

    fn vary(mut self, names: &[&'static str]) -> Self {
        self.vary = names.to_vec();
        self
    }

    fn strip(mut self, names: &[&'static str]) -> Self {
        self.strip = names.to_vec();
        self
    }
}

struct Case {
    name: &'static str,
    cfg: PolicyConfig,
    request_cc: &'static str,
    authorized: bool,
    status: u16,
    headers: Vec<(&'static str, String)>,
    route: Option<Route>,
    request_time: u64,
    want: Result<Want, NotStored>,
}

/// A case with the default (shared) configuration, an anonymous request and
/// `request_time == response_time == T`.
fn case(name: &'static str, status: u16, headers: &[(&'static str, &str)]) -> Case {
    Case {
        name,
        cfg: shared(),
        request_cc: "",
        authorized: false,
        status,
        headers: headers.iter().map(|(n, v)| (*n, (*v).to_owned())).collect(),
        route: None,
        request_time: T,
        want: Err(NotStored::NoFreshness),
    }
}

impl Case {
    fn cfg(mut self, cfg: PolicyConfig) -> Self {
        self.cfg = cfg;
        self
    }

    fn request(mut self, cache_control: &'static str) -> Self {
        self.request_cc = cache_control;
        self
    }

    fn authorized(mut self) -> Self {
        self.authorized = true;
        self
    }

    fn header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    fn route(mut self, route: Route) -> Self {
        self.route = Some(route);
        self
    }

    /// The upstream call took `delay` ms (`request_time = T - delay`).
    fn delay(mut self, delay: u64) -> Self {
        self.request_time = T - delay;
        self
    }

    fn ok(mut self, want: Want) -> Self {
        self.want = Ok(want);
        self
    }

    fn err(mut self, reason: NotStored) -> Self {
        self.want = Err(reason);
        self
    }
}

fn route() -> Route {
    Route::prefix("/")
}

// A table of cases (one row per response), long by design.
fn storable_cases() -> Vec<Case> {
    let etag = ("etag", "\"v1\"");
    vec![
        // --- Status codes -------------------------------------------------
        case("200 max-age", 200, &[("cache-control", "max-age=60")]).ok(ok(plain(MIN))),
        case("203 max-age", 203, &[("cache-control", "max-age=60")]).ok(ok(plain(MIN))),
        case("204 max-age", 204, &[("cache-control", "max-age=60")]).ok(ok(plain(MIN))),
        case("301 max-age", 301, &[("cache-control", "max-age=60")]).ok(ok(plain(MIN))),
        case("404 max-age", 404, &[("cache-control", "max-age=60")]).ok(ok(plain(MIN))),
        case("410 max-age", 410, &[("cache-control", "max-age=60")]).ok(ok(plain(MIN))),
        case("302 max-age", 302, &[("cache-control", "max-age=60")]).ok(ok(plain(MIN))),
        // RFC 9111 §3: any final status may be stored when its freshness
        // allows, server errors included (unless `store_server_errors` is
        // off); a heuristic applies to RFC 9110 §15.1's list only.
        case("500 max-age", 500, &[("cache-control", "max-age=60")]).ok(ok(plain(MIN))),
        case(
            "503 public max-age",
            503,
            &[("cache-control", "public, max-age=60")],
        )
        .ok(ok(plain(MIN)).flags(false, false, true)),
        case(
            "500 max-age with store_server_errors off",
            500,
            &[("cache-control", "max-age=60")],
        )
        .cfg(PolicyConfig {
            store_server_errors: false,
            ..shared()
        })
        .err(NotStored::Status),
        case("201 max-age", 201, &[("cache-control", "max-age=60")]).ok(ok(plain(MIN))),
        case("418 max-age", 418, &[("cache-control", "max-age=60")]).ok(ok(plain(MIN))),
        case(
            "299, an unregistered code, with max-age",
            299,
            &[("cache-control", "max-age=60")],
        )
        .ok(ok(plain(MIN))),
        case("100 is not final", 100, &[("cache-control", "max-age=60")]).err(NotStored::Status),
        case("501 heuristic from Last-Modified", 501, &[])
            .header("date", http_date(T))
            .header("last-modified", http_date(T - 10 * HOUR))
            .ok(ok(tl(0, HOUR, HOUR, HOUR, HOUR + KEEP))),
        case("503 Last-Modified only", 503, &[])
            .header("date", http_date(T))
            .header("last-modified", http_date(T - 10 * HOUR))
            .err(NotStored::NoFreshness),
        case("500 under a forced route TTL", 500, &[])
            .route(route().ttl(Duration::from_secs(5)).force())
            .err(NotStored::NoFreshness),
        // RFC 9111 §5.2.2.3: must-understand stores an understood status
        // despite no-store, and nothing else.
        case(
            "must-understand with no-store, 200",
            200,
            &[("cache-control", "must-understand, no-store, max-age=60")],
        )
        .ok(ok(plain(MIN))),
        case(
            "must-understand with no-store, unregistered 299",
            299,
            &[("cache-control", "must-understand, no-store, max-age=60")],
        )
        .err(NotStored::Status),
        case(
            "must-understand does not outrank a request's no-store",
            200,
            &[("cache-control", "must-understand, no-store, max-age=60")],
        )
        .request("no-store")
        .err(NotStored::NoStore),
        // A 206 is judged like any response (stored only as a part, by
        // `flow::partial`).
        case("206 max-age", 206, &[("cache-control", "max-age=60")]).ok(ok(plain(MIN))),
        case("304 is not stored", 304, &[("cache-control", "max-age=60")]).err(NotStored::Status),
        case("200 without freshness or validators", 200, &[]).err(NotStored::NoFreshness),
        case("204 without freshness", 204, &[]).err(NotStored::NoFreshness),
        case("301 without freshness", 301, &[]).err(NotStored::NoFreshness),
        case("404 without freshness (no negative ttl)", 404, &[]).err(NotStored::NoFreshness),
        case("410 without freshness (no negative ttl)", 410, &[]).err(NotStored::NoFreshness),
        case("500 without freshness", 500, &[]).err(NotStored::NoFreshness),
        case("206 without freshness", 206, &[]).err(NotStored::NoFreshness),
        case("302 without freshness", 302, &[]).err(NotStored::NoFreshness),
        // 301 is heuristically cacheable: 10% of 10 h.
        case("301 heuristic from Last-Modified", 301, &[])
            .header("date", http_date(T))
            .header("last-modified", http_date(T - 10 * HOUR))
            .ok(ok(tl(0, HOUR, HOUR, HOUR, HOUR + KEEP))),
        // 302 is not heuristically cacheable (RFC 9110 §15.4.3)...
        case("302 Last-Modified only", 302, &[])
            .header("date", http_date(T))
            .header("last-modified", http_date(T - 10 * HOUR))
            .err(NotStored::NoFreshness),
        // ...unless `public` says so (RFC 9111 §3).
        case(
            "302 public with Last-Modified",
            302,
            &[("cache-control", "public")],
        )
        .header("date", http_date(T))
        .header("last-modified", http_date(T - 10 * HOUR))
        .ok(ok(tl(0, HOUR, HOUR, HOUR, HOUR + KEEP)).flags(false, false, true)),
        // --- s-maxage / max-age / Expires precedence ----------------------
        case(
            "s-maxage wins over max-age in a shared cache",
            200,
            &[("cache-control", "max-age=60, s-maxage=120")],
        )
        .ok(ok(plain(2 * MIN)).flags(true, false, true)),
        case(
            "s-maxage is ignored by a private cache",
            200,
            &[("cache-control", "max-age=60, s-maxage=120")],
        )
        .cfg(private())
        .ok(ok(plain(MIN)).flags(false, false, true)),
        case(
            "s-maxage alone in a private cache has no freshness",
            200,
            &[("cache-control", "s-maxage=120")],
        )
        .cfg(private())
        .err(NotStored::NoFreshness),
        case(
            "max-age wins over Expires",
            200,
            &[("cache-control", "max-age=60")],
        )
        .header("date", http_date(T))
        .header("expires", http_date(T + HOUR))
        .ok(ok(plain(MIN))),
        case(
            "s-maxage=0 with validators",
            200,
            &[("cache-control", "s-maxage=0"), etag],
        )
        .ok(ok(tl(0, 0, 0, 0, KEEP)).flags(true, false, true)),
        case("Expires relative to Date", 200, &[])
            .header("date", http_date(T))
            .header("expires", http_date(T + 5 * MIN))
            .ok(ok(plain(5 * MIN))),
        // RFC 9110 §5.6.7 / RFC 9111 §4.2: the obsolete date forms, and
        // names in any letter case (T is Tue, 14 Nov 2023 22:13:20 GMT).
        case("Expires and Date in RFC 850 form", 200, &[])
            .header("date", "Tuesday, 14-Nov-23 22:13:20 GMT".into())
            .header("expires", "Tuesday, 14-Nov-23 22:18:20 GMT".into())
            .ok(ok(plain(5 * MIN))),
        case("Expires in asctime form", 200, &[])
            .header("date", http_date(T))
            .header("expires", "Tue Nov 14 22:18:20 2023".into())
            .ok(ok(plain(5 * MIN))),
        case("Expires in lower case", 200, &[])
            .header("date", http_date(T))
            .header("expires", "tue, 14 nov 2023 22:18:20 gmt".into())
            .ok(ok(plain(5 * MIN))),
        case(
            "Expires with a time zone other than GMT is invalid: expired",
            200,
            &[],
        )
        .header("date", http_date(T))
        .header("expires", "Tue, 14 Nov 2023 22:18:20 UTC".into())
        .err(NotStored::NoFreshness),
        // Date 10 s in the past: lifetime is Expires - Date = 300 s, and
        // the apparent age of 10 s is spent from it.
        case("Expires relative to an old Date", 200, &[])
            .header("date", http_date(T - 10 * SEC))
            .header("expires", http_date(T + 290 * SEC))
            .ok(ok(tl(10 * SEC, 290 * SEC, 290 * SEC, 290 * SEC, 290 * SEC))),
        case(
            "Expires without Date is relative to response_time",
            200,
            &[],
        )
        .header("expires", http_date(T + 30 * SEC))
        .ok(ok(plain(30 * SEC))),
        case("Expires before Date", 200, &[])
            .header("date", http_date(T))
            .header("expires", http_date(T - HOUR))
            .err(NotStored::NoFreshness),
        case(
            "invalid Expires (0) is already expired",
            200,
            &[("expires", "0")],
        )
        .err(NotStored::NoFreshness),
        case(
            "invalid Expires (0) with ETag: lifetime 0, kept to revalidate",
            200,
            &[("expires", "0"), etag],
        )
        .ok(ok(tl(0, 0, 0, 0, KEEP))),
        case(
            "invalid Expires (0) with Last-Modified is not heuristic",
            200,
            &[("expires", "0")],
        )
        .header("date", http_date(T))
        .header("last-modified", http_date(T - 10 * HOUR))
        .ok(ok(tl(0, 0, 0, 0, KEEP))),
        case(
            "invalid Expires (0) with a default swr",
            200,
            &[("expires", "0")],
        )
        .cfg(PolicyConfig {
            default_swr: Duration::from_secs(30),
            ..shared()
        })
        .ok(ok(tl(0, 0, 30 * SEC, 0, 30 * SEC))),
        // --- Heuristic freshness (RFC 9111 §4.2.2) ------------------------
        case("heuristic: 10% of Date - Last-Modified", 200, &[])
            .header("date", http_date(T))
            .header("last-modified", http_date(T - 10 * HOUR))
            .ok(ok(tl(0, HOUR, HOUR, HOUR, HOUR + KEEP))),
        case("heuristic without Date uses response_time", 200, &[])
            .header("last-modified", http_date(T - 1000 * SEC))
            .ok(ok(tl(0, 100 * SEC, 100 * SEC, 100 * SEC, 100 * SEC + KEEP))),
        case(
            "heuristic capped by the default heuristic_max (24 h)",
            200,
            &[],
        )
        .header("date", http_date(T))
        .header("last-modified", http_date(T - 100 * DAY))
        .ok(ok(tl(0, DAY, DAY, DAY, DAY + KEEP))),
        case("heuristic capped by a configured heuristic_max", 200, &[])
            .cfg(PolicyConfig {
                heuristic_max: Duration::from_secs(60),
                ..shared()
            })
            .header("date", http_date(T))
            .header("last-modified", http_date(T - 10 * HOUR))
            .ok(ok(tl(0, MIN, MIN, MIN, MIN + KEEP))),
        case("heuristic with a configured fraction", 200, &[])
            .cfg(PolicyConfig {
                heuristic_fraction: 0.5,
                ..shared()
            })
            .header("date", http_date(T))
            .header("last-modified", http_date(T - HOUR))
            .ok(ok(tl(0, 30 * MIN, 30 * MIN, 30 * MIN, 30 * MIN + KEEP))),
        case("heuristic: Last-Modified after Date gives 0", 200, &[])
            .header("date", http_date(T))
            .header("last-modified", http_date(T + HOUR))
            .ok(ok(tl(0, 0, 0, 0, KEEP))),
        case("no heuristic from ETag alone", 200, &[etag]).ok(ok(tl(0, 0, 0, 0, KEEP))),
        // --- no-store, private, Vary, Set-Cookie --------------------------
        case(
            "response no-store",
            200,
            &[("cache-control", "no-store, max-age=60")],
        )
        .err(NotStored::NoStore),
        case("request no-store", 200, &[("cache-control", "max-age=60")])
            .request("no-store")
            .err(NotStored::NoStore),
        case(
            "no-store wins over a forced route",
            200,
            &[("cache-control", "no-store")],
        )
        .route(route().ttl(Duration::from_secs(5)).force())
        .err(NotStored::NoStore),
        case(
            "private in a shared cache",
            200,
            &[("cache-control", "private, max-age=60")],
        )
        .err(NotStored::Private),
        case(
            "private wins over a forced route",
            200,
            &[("cache-control", "private")],
        )
        .route(route().ttl(Duration::from_secs(5)).force())
        .err(NotStored::Private),
        case(
            "private in a private cache",
            200,
            &[("cache-control", "private, max-age=60")],
        )
        .cfg(private())
        .ok(ok(plain(MIN)).flags(false, false, true)),
        case(
            "qualified private/no-cache name headers to strip (shared)",
            200,
            &[(
                "cache-control",
                "max-age=60, private=\"x-user\", no-cache=\"x-trace\"",
            )],
        )
        .ok(ok(plain(MIN)).strip(&["x-trace", "x-user"])),
        case(
            "qualified private is not stripped by a private cache",
            200,
            &[(
                "cache-control",
                "max-age=60, private=\"x-user\", no-cache=\"x-trace\"",
            )],
        )
        .cfg(private())
        .ok(ok(plain(MIN)).flags(false, false, true).strip(&["x-trace"])),
        case(
            "Vary: *",
            200,
            &[("cache-control", "max-age=60"), ("vary", "*")],
        )
        .err(NotStored::VaryStar),
        case(
            "Vary list containing *",
            200,
            &[
                ("cache-control", "max-age=60"),
                ("vary", "Accept-Encoding, *"),
            ],
        )
        .err(NotStored::VaryStar),
        case(
            "Vary names, deduplicated across lines",
            200,
            &[
                ("cache-control", "max-age=60"),
                ("vary", "Accept-Encoding, Accept-Language"),
                ("vary", "accept-encoding"),
            ],
        )
        .ok(ok(plain(MIN)).vary(&["accept-encoding", "accept-language"])),
        case(
            "Set-Cookie with the Pass policy",
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "a=1")],
        )
        .err(NotStored::SetCookie),
        case(
            "Set-Cookie with the Strip policy",
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "a=1")],
        )
        .cfg(PolicyConfig {
            set_cookie: SetCookiePolicy::Strip,
            ..shared()
        })
        .ok(ok(plain(MIN)).cookie_stripped()),
        case(
            "Set-Cookie with the Store policy",
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "a=1")],
        )
        .cfg(PolicyConfig {
            set_cookie: SetCookiePolicy::Store,
            ..shared()
        })
        .ok(ok(plain(MIN))),
        // --- Authorization (RFC 9111 §3.5) --------------------------------
        case(
            "Authorization with max-age only",
            200,
            &[("cache-control", "max-age=60")],
        )
        .authorized()
        .err(NotStored::Authorization),
        case(
            "Authorization with proxy-revalidate only",
            200,
            &[("cache-control", "max-age=60, proxy-revalidate")],
        )
        .authorized()
        .err(NotStored::Authorization),
        case(
            "Authorization with public",
            200,
            &[("cache-control", "public, max-age=60")],
        )
        .authorized()
        .ok(ok(plain(MIN)).flags(false, false, true)),
        case(
            "Authorization with s-maxage",
            200,
            &[("cache-control", "s-maxage=60")],
        )
        .authorized()
        .ok(ok(plain(MIN)).flags(true, false, true)),
        case(
            "Authorization with must-revalidate",
            200,
            &[("cache-control", "max-age=60, must-revalidate")],
        )
        .authorized()
        .ok(ok(plain(MIN)).flags(true, false, true)),
        case(
            "Authorization with share_authorized",
            200,
            &[("cache-control", "max-age=60")],
        )
        .cfg(PolicyConfig {
            share_authorized: true,
            ..shared()
        })
        .authorized()
        .ok(ok(plain(MIN)).flags(false, false, true)),
        case(
            "Authorization in a private cache",
            200,
            &[("cache-control", "max-age=60")],
        )
        .cfg(private())
        .authorized()
        .ok(ok(plain(MIN)).flags(false, false, true)),
        case(
            "Authorization with max-age only, partitioned by credentials",
            200,
            &[("cache-control", "max-age=60")],
        )
        .cfg(PolicyConfig {
            partition_credentials: true,
            ..shared()
        })
        .authorized()
        .ok(ok(plain(MIN))),
        case(
            "Authorization with private, partitioned by credentials",
            200,
            &[("cache-control", "private, max-age=60")],
        )
        .cfg(PolicyConfig {
            partition_credentials: true,
            ..shared()
        })
        .authorized()
        .err(NotStored::Private),
        case(
            "Authorization with private in a private cache, partitioned",
            200,
            &[("cache-control", "private, max-age=60")],
        )
        .cfg(PolicyConfig {
            partition_credentials: true,
            ..private()
        })
        .authorized()
        .ok(ok(plain(MIN)).flags(false, false, true)),
        // --- no-cache -----------------------------------------------------
        case(
            "no-cache without validators",
            200,
            &[("cache-control", "no-cache, max-age=60")],
        )
        .err(NotStored::NoFreshness),
        case(
            "no-cache with ETag",
            200,
            &[("cache-control", "no-cache, max-age=60"), etag],
        )
        .ok(ok(tl(0, MIN, MIN, MIN, MIN + KEEP)).flags(false, true, false)),
        case(
            "no-cache alone with Last-Modified",
            200,
            &[("cache-control", "no-cache")],
        )
        .header("date", http_date(T))
        .header("last-modified", http_date(T - 10 * HOUR))
        .ok(ok(tl(0, HOUR, HOUR, HOUR, HOUR + KEEP)).flags(false, true, false)),
        // --- Stale windows: must-revalidate & co. zero them ---------------
        case(
            "stale-while-revalidate and stale-if-error directives",
            200,
            &[(
                "cache-control",
                "max-age=60, stale-while-revalidate=30, stale-if-error=300",
            )],
        )
        .ok(ok(tl(
            0,
            MIN,
            MIN + 30 * SEC,
            MIN + 300 * SEC,
            MIN + 300 * SEC,
        ))),
        case(
            "must-revalidate zeroes the stale windows",
            200,
            &[(
                "cache-control",
                "max-age=60, must-revalidate, stale-while-revalidate=30, stale-if-error=300",
            )],
        )
        .ok(ok(plain(MIN)).flags(true, false, true)),
        case(
            "proxy-revalidate zeroes them in a shared cache",
            200,
            &[(
                "cache-control",
                "max-age=60, proxy-revalidate, stale-while-revalidate=30, stale-if-error=300",
            )],
        )
        .ok(ok(plain(MIN)).flags(true, false, false)),
        case(
            "proxy-revalidate is ignored by a private cache",
            200,
            &[(
                "cache-control",
                "max-age=60, proxy-revalidate, stale-while-revalidate=30, stale-if-error=300",
            )],
        )
        .cfg(private())
        .ok(
            ok(tl(0, MIN, MIN + 30 * SEC, MIN + 300 * SEC, MIN + 300 * SEC))
                .flags(false, false, true),
        ),
        case(
            "s-maxage zeroes them in a shared cache",
            200,
            &[(
                "cache-control",
                "s-maxage=60, stale-while-revalidate=30, stale-if-error=300",
            )],
        )
        .ok(ok(plain(MIN)).flags(true, false, true)),
        case(
            "must-revalidate zeroes default and route windows",
            200,
            &[("cache-control", "max-age=60, must-revalidate")],
        )
        .cfg(PolicyConfig {
            default_swr: Duration::from_secs(100),
            default_sie: Duration::from_secs(200),
            ..shared()
        })
        .route(
            route()
                .stale_while_revalidate(Duration::from_secs(10))
                .stale_if_error(Duration::from_secs(20)),
        )
        .ok(ok(plain(MIN)).flags(true, false, true)),
        // --- Stale windows: directive > route > default ------------------
        case(
            "swr/sie: directives win over route and defaults",
            200,
            &[(
                "cache-control",
                "max-age=60, stale-while-revalidate=30, stale-if-error=300",
            )],
        )
        .cfg(PolicyConfig {
            default_swr: Duration::from_secs(100),
            default_sie: Duration::from_secs(200),
            ..shared()
        })
        .route(
            route()
                .stale_while_revalidate(Duration::from_secs(10))
                .stale_if_error(Duration::from_secs(20)),
        )
        .ok(ok(tl(
            0,
            MIN,
            MIN + 30 * SEC,
            MIN + 300 * SEC,
            MIN + 300 * SEC,
        ))),
        case(
            "swr/sie: route wins over defaults",
            200,
            &[("cache-control", "max-age=60")],
        )
        .cfg(PolicyConfig {
            default_swr: Duration::from_secs(100),
            default_sie: Duration::from_secs(200),
            ..shared()
        })
        .route(
            route()
                .stale_while_revalidate(Duration::from_secs(10))
                .stale_if_error(Duration::from_secs(20)),
        )
        .ok(ok(tl(
            0,
            MIN,
            MIN + 10 * SEC,
            MIN + 20 * SEC,
            MIN + 20 * SEC,
        ))),
        case("swr/sie: defaults", 200, &[("cache-control", "max-age=60")])
            .cfg(PolicyConfig {
                default_swr: Duration::from_secs(100),
                default_sie: Duration::from_secs(200),
                ..shared()
            })
            .ok(ok(tl(
                0,
                MIN,
                MIN + 100 * SEC,
                MIN + 200 * SEC,
                MIN + 200 * SEC,
            ))),
        case(
            "swr/sie: each falls back on its own",
            200,
            &[("cache-control", "max-age=60, stale-if-error=5")],
        )
        .cfg(PolicyConfig {
            default_swr: Duration::from_secs(100),
            default_sie: Duration::from_secs(200),
            ..shared()
        })
        .route(route().stale_while_revalidate(Duration::from_secs(10)))
        .ok(ok(tl(
            0,
            MIN,
            MIN + 10 * SEC,
            MIN + 5 * SEC,
            MIN + 10 * SEC,
        ))),
        case(
            "swr: a route without windows falls to the default",
            200,
            &[("cache-control", "max-age=60")],
        )
        .cfg(PolicyConfig {
            default_swr: Duration::from_secs(100),
            ..shared()
        })
        .route(route().ttl(Duration::from_secs(60)))
        .ok(ok(tl(0, MIN, MIN + 100 * SEC, MIN, MIN + 100 * SEC))),
        case(
            "swr=0 directive beats a default window",
            200,
            &[("cache-control", "max-age=60, stale-while-revalidate=0")],
        )
        .cfg(PolicyConfig {
            default_swr: Duration::from_secs(100),
            ..shared()
        })
        .ok(ok(plain(MIN))),
        case(
            "swr alone keeps a zero-lifetime response",
            200,
            &[("cache-control", "max-age=0, stale-while-revalidate=30")],
        )
        .ok(ok(tl(0, 0, 30 * SEC, 0, 30 * SEC))),
        case(
            "sie alone keeps a zero-lifetime response",
            200,
            &[("cache-control", "max-age=0, stale-if-error=30")],
        )
        .ok(ok(tl(0, 0, 0, 30 * SEC, 30 * SEC))),
        // --- Route TTL: override vs force ---------------------------------
        case(
            "route ttl overrides max-age",
            200,
            &[("cache-control", "max-age=60")],
        )
        .route(route().ttl(Duration::from_secs(5)))
        .ok(ok(plain(5 * SEC))),
        case(
            "route ttl overrides s-maxage",
            200,
            &[("cache-control", "s-maxage=60")],
        )
        .route(route().ttl(Duration::from_secs(5)))
        .ok(ok(plain(5 * SEC)).flags(true, false, true)),
        case("route ttl overrides Expires", 200, &[])
            .header("date", http_date(T))
            .header("expires", http_date(T + HOUR))
            .route(route().ttl(Duration::from_secs(5)))
            .ok(ok(plain(5 * SEC))),
        case(
            "route ttl overrides an invalid Expires",
            200,
            &[("expires", "0")],
        )
        .route(route().ttl(Duration::from_secs(5)))
        .ok(ok(plain(5 * SEC))),
        case(
            "route ttl without force: no freshness stays uncached",
            200,
            &[],
        )
        .route(route().ttl(Duration::from_secs(5)))
        .err(NotStored::NoFreshness),
        case("route ttl without force: heuristic still applies", 200, &[])
            .header("date", http_date(T))
            .header("last-modified", http_date(T - 10 * HOUR))
            .route(route().ttl(Duration::from_secs(5)))
            .ok(ok(tl(0, HOUR, HOUR, HOUR, HOUR + KEEP))),
        case("forced route ttl gives freshness", 200, &[])
            .route(route().ttl(Duration::from_secs(5)).force())
            .ok(ok(plain(5 * SEC))),
        case("forced route ttl beats the heuristic", 200, &[])
            .header("date", http_date(T))
            .header("last-modified", http_date(T - 10 * HOUR))
            .route(route().ttl(Duration::from_secs(5)).force())
            .ok(ok(tl(0, 5 * SEC, 5 * SEC, 5 * SEC, 5 * SEC + KEEP))),
        case("forced route ttl with route swr", 200, &[])
            .route(
                route()
                    .ttl(Duration::from_secs(5))
                    .force()
                    .stale_while_revalidate(Duration::from_secs(30)),
            )
            .ok(ok(tl(0, 5 * SEC, 35 * SEC, 5 * SEC, 35 * SEC))),
        case("forced route ttl on a 302 without freshness", 302, &[])
            .route(route().ttl(Duration::from_secs(5)).force())
            .ok(ok(plain(5 * SEC))),
        // --- Negative caching ---------------------------------------------
        case("404 with negative_ttl", 404, &[])
            .cfg(PolicyConfig {
                negative_ttl: Some(Duration::from_secs(30)),
                ..shared()
            })
            .ok(ok(plain(30 * SEC))),
        case("410 with negative_ttl", 410, &[])
            .cfg(PolicyConfig {
                negative_ttl: Some(Duration::from_secs(30)),
                ..shared()
            })
            .ok(ok(plain(30 * SEC))),
        case(
            "404 explicit max-age wins over negative_ttl",
            404,
            &[("cache-control", "max-age=60")],
        )
        .cfg(PolicyConfig {
            negative_ttl: Some(Duration::from_secs(30)),
            ..shared()
        })
        .ok(ok(plain(MIN))),
        case("negative_ttl does not apply to 200", 200, &[])
            .cfg(PolicyConfig {
                negative_ttl: Some(Duration::from_secs(30)),
                ..shared()
            })
            .err(NotStored::NoFreshness),
        case("negative_ttl does not apply to 500", 500, &[])
            .cfg(PolicyConfig {
                negative_ttl: Some(Duration::from_secs(30)),
                ..shared()
            })
            .err(NotStored::NoFreshness),
        case(
            "404 with negative_ttl and must-revalidate",
            404,
            &[("cache-control", "must-revalidate")],
        )
        .cfg(PolicyConfig {
            negative_ttl: Some(Duration::from_secs(30)),
            default_swr: Duration::from_secs(100),
            ..shared()
        })
        .ok(ok(plain(30 * SEC)).flags(true, false, true)),
        // --- Age (RFC 9111 §4.2.3) ----------------------------------------
        case(
            "response delay counts as age",
            200,
            &[("cache-control", "max-age=60")],
        )
        .delay(500)
        .ok(ok(tl(500, MIN - 500, MIN - 500, MIN - 500, MIN - 500))),
        case(
            "Age header plus response delay",
            200,
            &[("cache-control", "max-age=60"), ("age", "10")],
        )
        .delay(500)
        .ok(ok(tl(
            10_500,
            MIN - 10_500,
            MIN - 10_500,
            MIN - 10_500,
            MIN - 10_500,
        ))),
        case(
            "Date in the past: apparent age",
            200,
            &[("cache-control", "max-age=60")],
        )
        .header("date", http_date(T - 20 * SEC))
        .ok(ok(plain(40 * SEC)).timeline_initial_age(20 * SEC)),
        case(
            "apparent age beats a smaller corrected Age",
            200,
            &[("cache-control", "max-age=60"), ("age", "5")],
        )
        .header("date", http_date(T - 20 * SEC))
        .delay(500)
        .ok(ok(plain(40 * SEC)).timeline_initial_age(20 * SEC)),
        case(
            "corrected Age beats a smaller apparent age",
            200,
            &[("cache-control", "max-age=60"), ("age", "30")],
        )
        .header("date", http_date(T - 20 * SEC))
        .delay(500)
        .ok(ok(plain(MIN - 30_500)).timeline_initial_age(30_500)),
        // RFC 9111 §5.1: a list-valued Age uses its first member; an
        // invalid one is ignored.
        case(
            "Age as a list on one line: the first member counts",
            200,
            &[("cache-control", "max-age=60"), ("age", "30, 0")],
        )
        .header("date", http_date(T - 20 * SEC))
        .delay(500)
        .ok(ok(plain(MIN - 30_500)).timeline_initial_age(30_500)),
        case(
            "Age on two lines: the first line counts",
            200,
            &[("cache-control", "max-age=60"), ("age", "30"), ("age", "0")],
        )
        .header("date", http_date(T - 20 * SEC))
        .delay(500)
        .ok(ok(plain(MIN - 30_500)).timeline_initial_age(30_500)),
        case(
            "a negative Age is ignored",
            200,
            &[("cache-control", "max-age=60"), ("age", "-30")],
        )
        .header("date", http_date(T - 20 * SEC))
        .ok(ok(plain(40 * SEC)).timeline_initial_age(20 * SEC)),
        case(
            "an Age list whose first member is invalid is ignored",
            200,
            &[("cache-control", "max-age=60"), ("age", "x, 30")],
        )
        .header("date", http_date(T - 20 * SEC))
        .ok(ok(plain(40 * SEC)).timeline_initial_age(20 * SEC)),
        case(
            "Date in the future (clock skew) gives no apparent age",
            200,
            &[("cache-control", "max-age=60")],
        )
        .header("date", http_date(T + 20 * SEC))
        .ok(ok(plain(MIN))),
        case(
            "Age over the lifetime, with ETag",
            200,
            &[("cache-control", "max-age=60"), ("age", "100"), etag],
        )
        .ok(ok(tl(100 * SEC, 0, 0, 0, KEEP))),
        case(
            "Age shortens a route ttl too",
            200,
            &[("cache-control", "max-age=600"), ("age", "2")],
        )
        .route(route().ttl(Duration::from_secs(5)))
        .ok(ok(plain(3 * SEC)).timeline_initial_age(2 * SEC)),
        case(
            "Age shortens the stale windows' start",
            200,
            &[
                ("cache-control", "max-age=60, stale-while-revalidate=30"),
                ("age", "10"),
            ],
        )
        .ok(ok(tl(10 * SEC, 50 * SEC, 80 * SEC, 50 * SEC, 80 * SEC))),
        case(
            "an invalid Age is ignored",
            200,
            &[("cache-control", "max-age=60"), ("age", "ten")],
        )
        .ok(ok(plain(MIN))),
        // --- retain_until ----------------------------------------------------
        case(
            "retain_until: validators keep the entry past its windows",
            200,
            &[
                ("cache-control", "max-age=60, stale-while-revalidate=30"),
                etag,
            ],
        )
        .ok(ok(tl(0, MIN, MIN + 30 * SEC, MIN, MIN + KEEP))),
        case(
            "retain_until: a stale window longer than the keep",
            200,
            &[("cache-control", "max-age=60, stale-if-error=3600"), etag],
        )
        .ok(ok(tl(0, MIN, MIN, MIN + HOUR, MIN + HOUR))),
        case(
            "retain_until: configured keep_for_revalidation",
            200,
            &[
                ("cache-control", "max-age=60"),
                ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ],
        )
        .cfg(PolicyConfig {
            keep_for_revalidation: Duration::from_secs(5),
            ..shared()
        })
        .ok(ok(tl(0, MIN, MIN, MIN, MIN + 5 * SEC))),
        case(
            "retain_until: no validators, no keep",
            200,
            &[("cache-control", "max-age=60")],
        )
        .cfg(PolicyConfig {
            keep_for_revalidation: Duration::from_secs(3600),
            ..shared()
        })
        .ok(ok(plain(MIN))),
    ]
}

impl Want {
    /// Sets `initial_age` on a timeline built with [`plain`].
    fn timeline_initial_age(mut self, age: u64) -> Self {
        self.timeline.initial_age = age;
        self
    }
}

#[test]
fn storable_table() {
    check_storable(storable_cases());
}

/// A response that arrives already stale (its `Age`, or the age implied by an
/// old `Date`, is at least its freshness lifetime), with no validators and no
/// stale windows, is of no use: it is not stored.
#[test]
fn storable_already_expired_without_validators_is_not_stored() {
    check_storable(vec![
        case(
            "Age over the lifetime, no validators",
            200,
            &[("cache-control", "max-age=60"), ("age", "100")],
        )
        .err(NotStored::NoFreshness),
        case(
            "Age equal to the lifetime, no validators",
            200,
            &[("cache-control", "max-age=60"), ("age", "60")],
        )
        .err(NotStored::NoFreshness),
        case(
            "Date older than the lifetime, no validators",
            200,
            &[("cache-control", "max-age=60")],
        )
        .header("date", http_date(T - 2 * MIN))
        .err(NotStored::NoFreshness),
        // Still stored when something makes it useful.
        case(
            "Age over the lifetime, stale-if-error",
            200,
            &[
                ("cache-control", "max-age=60, stale-if-error=30"),
                ("age", "100"),
            ],
        )
        .ok(ok(tl(100 * SEC, 0, 0, 30 * SEC, 30 * SEC))),
    ]);
}

/// Why `case` does not get what it wants, if it does not.
fn storable_mismatch(case: &Case) -> Option<String> {
    let req = directives(case.request_cc, case.authorized);
    let hdrs = headers(&case.headers);
    let status = StatusCode::from_u16(case.status).unwrap();
    let got = case.cfg.storable(
        &req,
        status,
        &hdrs,
        case.route.as_ref(),
        case.request_time,
        T,
    );
    match (&got, &case.want) {
        (Err(g), Err(w)) if g == w => None,
        (Ok(g), Ok(w)) => {
            let vary: Vec<&str> = g.vary.iter().map(HeaderName::as_str).collect();
            let mut strip: Vec<&str> = g.strip.iter().map(HeaderName::as_str).collect();
            strip.sort_unstable();
            let mut want_strip = w.strip.clone();
            want_strip.sort_unstable();
            if g.timeline == w.timeline
                && g.flags == w.flags
                && g.strip_set_cookie == w.strip_set_cookie
                && vary == w.vary
                && strip == want_strip
            {
                None
            } else {
                Some(format!(
                    "got timeline {} flags {:?} strip_set_cookie {} vary {vary:?} \
                     strip {strip:?}\n    want timeline {} flags {:?} strip_set_cookie {} \
                     vary {:?} strip {:?}",
                    rel(&g.timeline),
                    g.flags,
                    g.strip_set_cookie,
                    rel(&w.timeline),
                    w.flags,
                    w.strip_set_cookie,
                    w.vary,
                    want_strip,
                ))
            }
        }
        _ => Some(format!(
            "got {:?}\n    want {:?}",
            got.as_ref().map(|s| rel(&s.timeline)),
            case.want.as_ref().map(|w| rel(&w.timeline)),
        )),
    }
}

/// Runs `cases` through `storable` and fails with every mismatch.
fn check_storable(cases: Vec<Case>) {
    let mut names = std::collections::HashSet::new();
    for case in &cases {
        assert!(
            names.insert(case.name),
            "duplicate case name {:?}",
            case.name
        );
    }
    let mut failures = Vec::new();
    for case in cases {
        if let Some(msg) = storable_mismatch(&case) {
            failures.push(format!("{}: {msg}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} storable case(s) failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// A timeline as offsets from `T`, for readable failure messages.
fn rel(t: &Timeline) -> String {
    let off = |x: u64| x as i128 - T as i128;
    format!(
        "[stored {:+} age {} fresh {:+} stale {:+} sie {:+} retain {:+}]",
        off(t.stored_at),
        t.initial_age,
        off(t.fresh_until),
        off(t.stale_until),
        off(t.stale_if_error_until),
        off(t.retain_until)
    )
}

#[test]
fn storable_timeline_is_consistent() {
    // Whatever the case, the instants are ordered and the entry's age at
    // `stored_at` is its initial age.
    for case in storable_cases() {
        let req = directives(case.request_cc, case.authorized);
        let hdrs = headers(&case.headers);
        let status = StatusCode::from_u16(case.status).unwrap();
        if let Ok(s) = case.cfg.storable(
            &req,
            status,
            &hdrs,
            case.route.as_ref(),
            case.request_time,
            T,
        ) {
            let t = s.timeline;
            assert_eq!(t.stored_at, T, "{}", case.name);
            assert!(t.fresh_until >= t.stored_at, "{}", case.name);
            assert!(t.stale_until >= t.fresh_until, "{}", case.name);
            assert!(t.stale_if_error_until >= t.fresh_until, "{}", case.name);
            assert!(t.retain_until >= t.stale_until, "{}", case.name);
            assert!(t.retain_until >= t.stale_if_error_until, "{}", case.name);
            assert_eq!(t.age_at(T), t.initial_age, "{}", case.name);
        }
    }
}

// ---------------------------------------------------------------------------
// usability / stale_if_error_ok
// ---------------------------------------------------------------------------

/// An entry stored at `T`: fresh for 60 s, stale-while-revalidate for 30 s
/// more, stale-if-error until 120 s, kept until 660 s.
fn entry(initial_age: u64, validators: bool, flags: EntryFlags) -> Entry {
    let mut headers = HeaderMap::new();
    if validators {
        headers.insert("etag", HeaderValue::from_static("\"v1\""));
    }
    Entry {
        key: "http://example.com/".into(),
        status: StatusCode::OK,
        version: Version::HTTP_11,
        headers,
        body: Bytes::from_static(b"body"),
        vary: Box::new([]),
        timeline: Timeline {
            stored_at: T,
            initial_age,
            fresh_until: T + MIN,
            stale_until: T + 90 * SEC,
            stale_if_error_until: T + 120 * SEC,
            retain_until: T + 660 * SEC,
        },
        flags,
        extensions: 0,
        tags: Box::new([]),
        template: Default::default(),
        label: 0,
        reads: Default::default(),
        value: None,
    }
}

struct UseCase {
    name: &'static str,
    cfg: PolicyConfig,
    entry: Entry,
    request_cc: &'static str,
    authorized: bool,
    /// `(now as an offset from T, expected)`.
    at: Vec<(u64, Usability)>,
}

fn use_case(
    name: &'static str,
    entry: Entry,
    request_cc: &'static str,
    at: &[(u64, Usability)],
) -> UseCase {
    UseCase {
        name,
        cfg: shared(),
        entry,
        request_cc,
        authorized: false,
        at: at.to_vec(),
    }
}

impl UseCase {
    fn cfg(mut self, cfg: PolicyConfig) -> Self {
        self.cfg = cfg;
        self
    }

    fn authorized(mut self) -> Self {
        self.authorized = true;
        self
    }
}

// A table of cases (one row per entry and request), long by design.
#[test]
fn usability_table() {
    use Usability::{Fresh, Revalidate, Stale, Unusable};
    let none = EntryFlags::default();
    let auth_ok = flags(false, false, true);
    let must_revalidate = flags(true, false, false);
    let no_cache = flags(false, true, false);
    let cases = vec![
        // --- The entry's own timeline ------------------------------------
        use_case(
            "timeline, no validators",
            entry(0, false, none),
            "",
            &[
                (0, Fresh),
                (59_999, Fresh),
                (60_000, Stale),
                (89_999, Stale),
                (90_000, Unusable),
                (119_999, Unusable),
                (700_000, Unusable),
            ],
        ),
        use_case(
            "timeline, with validators",
            entry(0, true, none),
            "",
            &[
                (0, Fresh),
                (59_999, Fresh),
                (60_000, Stale),
                (89_999, Stale),
                (90_000, Revalidate),
                (659_999, Revalidate),
            ],
        ),
        // --- Request max-age ------------------------------------------------
        use_case(
            "max-age=30 on an entry aged 10 s",
            entry(10 * SEC, false, none),
            "max-age=30",
            &[
                (0, Fresh),
                (20_000, Fresh),
                (20_001, Unusable),
                (60_000, Unusable), // in the swr window, but the client refuses stale
            ],
        ),
        use_case(
            "max-age=30, with validators",
            entry(10 * SEC, true, none),
            "max-age=30",
            &[(20_000, Fresh), (20_001, Revalidate), (70_000, Revalidate)],
        ),
        use_case(
            "max-age=0",
            entry(0, true, none),
            "max-age=0",
            &[(0, Fresh), (1, Revalidate)],
        ),
        use_case(
            "max-age larger than the lifetime",
            entry(0, false, none),
            "max-age=100",
            &[
                (59_999, Fresh),
                (60_000, Stale),
                (89_999, Stale),
                (90_000, Unusable),
            ],
        ),
        use_case(
            "max-age exceeded in the swr window",
            entry(0, true, none),
            "max-age=70",
            &[(65_000, Stale), (70_000, Stale), (70_001, Revalidate)],
        ),
        use_case(
            "max-age=30 with max-stale",
            entry(0, true, none),
            "max-age=30, max-stale",
            &[(30_000, Fresh), (30_001, Stale), (200_000, Stale)],
        ),
        // --- Request min-fresh ----------------------------------------------
        use_case(
            "min-fresh=10",
            entry(0, false, none),
            "min-fresh=10",
            &[
                (0, Fresh),
                (50_000, Fresh),
                (50_001, Unusable),
                (60_000, Unusable), // in the swr window, but the client wants fresh
            ],
        ),
        use_case(
            "min-fresh=10, with validators",
            entry(0, true, none),
            "min-fresh=10",
            &[(50_000, Fresh), (50_001, Revalidate)],
        ),
        use_case(
            "min-fresh longer than the lifetime",
            entry(0, true, none),
            "min-fresh=61",
            &[(0, Revalidate)],
        ),
        // --- Request max-stale ----------------------------------------------
        use_case(
            "max-stale without a value",
            entry(0, false, none),
            "max-stale",
            &[
                (0, Fresh),
                (60_000, Stale),
                (90_000, Stale),
                (600_000, Stale),
            ],
        ),
        use_case(
            "max-stale=5",
            entry(0, false, none),
            "max-stale=5",
            &[
                (59_999, Fresh),
                (60_000, Stale),
                (65_000, Stale),
                (65_001, Unusable), // the client's bound is tighter than the swr window
            ],
        ),
        use_case(
            "max-stale=5, with validators",
            entry(0, true, none),
            "max-stale=5",
            &[(65_000, Stale), (65_001, Revalidate)],
        ),
        use_case(
            "max-stale=100 past the swr window",
            entry(0, true, none),
            "max-stale=100",
            &[(90_000, Stale), (160_000, Stale), (160_001, Revalidate)],
        ),
        use_case(
            "max-stale with min-fresh",
            entry(0, true, none),
            "max-stale, min-fresh=10",
            &[(50_000, Fresh), (50_001, Stale)],
        ),
        // --- Request no-cache -----------------------------------------------
        use_case(
            "request no-cache, no validators",
            entry(0, false, none),
            "no-cache",
            &[(0, Unusable), (60_000, Unusable)],
        ),
        use_case(
            "request no-cache, with validators",
            entry(0, true, none),
            "no-cache",
            &[(0, Revalidate), (60_000, Revalidate)],
        ),
        use_case(
            "request no-cache beats max-stale",
            entry(0, true, none),
            "no-cache, max-stale",
            &[(0, Revalidate)],
        ),
        // --- Entry flags ------------------------------------------------------
        use_case(
            "entry no-cache, no validators",
            entry(0, false, no_cache),
            "",
            &[(0, Unusable), (60_000, Unusable)],
        ),
        use_case(
            "entry no-cache, with validators",
            entry(0, true, no_cache),
            "",
            &[(0, Revalidate), (30_000, Revalidate)],
        ),
        use_case(
            "entry must-revalidate, no validators",
            entry(0, false, must_revalidate),
            "",
            &[(59_999, Fresh), (60_000, Unusable), (89_999, Unusable)],
        ),
        use_case(
            "entry must-revalidate, with validators",
            entry(0, true, must_revalidate),
            "",
            &[(59_999, Fresh), (60_000, Revalidate)],
        ),
        use_case(
            "entry must-revalidate beats max-stale",
            entry(0, true, must_revalidate),
            "max-stale",
            &[(59_999, Fresh), (60_000, Revalidate)],
        ),
        // --- Authorization ------------------------------------------------
        use_case(
            "authorized request, entry not auth_ok",
            entry(0, true, none),
            "",
            &[(0, Unusable), (60_000, Unusable)],
        )
        .authorized(),
        use_case(
            "authorized request, entry auth_ok",
            entry(0, true, auth_ok),
            "",
            &[(0, Fresh), (60_000, Stale), (90_000, Revalidate)],
        )
        .authorized(),
        use_case(
            "authorized request, share_authorized",
            entry(0, true, none),
            "",
            &[(0, Fresh), (60_000, Stale)],
        )
        .cfg(PolicyConfig {
            share_authorized: true,
            ..shared()
        })
        .authorized(),
        use_case(
            "authorized request, private cache",
            entry(0, true, none),
            "",
            &[(0, Fresh), (60_000, Stale)],
        )
        .cfg(private())
        .authorized(),
        use_case(
            "authorized request, partitioned by credentials",
            entry(0, true, none),
            "",
            &[(0, Fresh), (60_000, Stale)],
        )
        .cfg(PolicyConfig {
            partition_credentials: true,
            ..shared()
        })
        .authorized(),
        use_case(
            "anonymous request, entry not auth_ok",
            entry(0, true, none),
            "",
            &[(0, Fresh)],
        ),
        use_case(
            "authorized request, auth_ok, must-revalidate",
            entry(0, true, flags(true, false, true)),
            "",
            &[(0, Fresh), (60_000, Revalidate)],
        )
        .authorized(),
        use_case(
            "authorized request, auth_ok, request no-cache",
            entry(0, true, auth_ok),
            "no-cache",
            &[(0, Revalidate)],
        )
        .authorized(),
    ];
    let mut failures = Vec::new();
    for case in cases {
        let req = directives(case.request_cc, case.authorized);
        for (offset, want) in &case.at {
            let got = case.cfg.usability(&case.entry, &req, T + offset);
            if got != *want {
                failures.push(format!(
                    "{} (Cache-Control: {:?}) at T+{offset}: got {got:?}, want {want:?}",
                    case.name, case.request_cc
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} usability check(s) failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

// A table of cases (one row per configuration, entry and request), long by design.
#[test]
fn stale_if_error_ok_table() {
    struct SieCase {
        name: &'static str,
        cfg: PolicyConfig,
        flags: EntryFlags,
        authorized: bool,
        at: &'static [(u64, bool)],
    }
    let cases = [
        SieCase {
            name: "anonymous, plain entry",
            cfg: shared(),
            flags: EntryFlags::default(),
            authorized: false,
            at: &[
                (0, true),
                (60_000, true),
                (119_999, true),
                (120_000, false),
                (600_000, false),
            ],
        },
        SieCase {
            name: "must-revalidate entry",
            cfg: shared(),
            flags: flags(true, false, false),
            authorized: false,
            at: &[(0, false), (60_000, false)],
        },
        SieCase {
            // RFC 9111 §4.2.4: no-cache forbids generating stale responses.
            name: "no-cache entry is never served stale on error",
            cfg: shared(),
            flags: flags(false, true, false),
            authorized: false,
            at: &[(60_000, false), (120_000, false)],
        },
        SieCase {
            name: "authorized request, entry not auth_ok",
            cfg: shared(),
            flags: EntryFlags::default(),
            authorized: true,
            at: &[(0, false), (60_000, false)],
        },
        SieCase {
            name: "authorized request, entry auth_ok",
            cfg: shared(),
            flags: flags(false, false, true),
            authorized: true,
            at: &[(60_000, true), (120_000, false)],
        },
        SieCase {
            name: "authorized request, share_authorized",
            cfg: PolicyConfig {
                share_authorized: true,
                ..shared()
            },
            flags: EntryFlags::default(),
            authorized: true,
            at: &[(60_000, true), (120_000, false)],
        },
        SieCase {
            name: "authorized request, private cache",
            cfg: private(),
            flags: EntryFlags::default(),
            authorized: true,
            at: &[(60_000, true), (120_000, false)],
        },
        SieCase {
            name: "authorized request, partitioned by credentials",
            cfg: PolicyConfig {
                partition_credentials: true,
                ..shared()
            },
            flags: EntryFlags::default(),
            authorized: true,
            at: &[(60_000, true), (120_000, false)],
        },
    ];
    let mut failures = Vec::new();
    for case in cases {
        let e = entry(0, false, case.flags);
        let req = directives("", case.authorized);
        for (offset, want) in case.at {
            let got = case.cfg.stale_if_error_ok(&e, &req, T + offset);
            if got != *want {
                failures.push(format!(
                    "{} at T+{offset}: got {got}, want {want}",
                    case.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} stale_if_error_ok check(s) failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn storable_then_usable_end_to_end() {
    // A response judged by `storable` answers requests along its timeline.
    let cfg = PolicyConfig {
        default_swr: Duration::from_secs(30),
        ..shared()
    };
    let anon = RequestDirectives::default();
    let hdrs = headers(&[
        ("cache-control", "max-age=60".to_owned()),
        ("etag", "\"v1\"".to_owned()),
        ("age", "10".to_owned()),
    ]);
    let s = cfg
        .storable(&anon, StatusCode::OK, &hdrs, None, T - 1_000, T)
        .expect("storable");
    assert_eq!(
        s.timeline,
        tl(11 * SEC, 49 * SEC, 79 * SEC, 49 * SEC, 49 * SEC + KEEP)
    );
    let mut e = entry(0, true, s.flags);
    e.timeline = s.timeline;
    let at = |offset: u64| cfg.usability(&e, &anon, T + offset);
    assert_eq!(at(0), Usability::Fresh);
    assert_eq!(at(48_999), Usability::Fresh);
    assert_eq!(at(49_000), Usability::Stale);
    assert_eq!(at(78_999), Usability::Stale);
    assert_eq!(at(79_000), Usability::Revalidate);
    // The response arrived 11 s old: at T+19 s it is 30 s old.
    let max_age_30 = directives("max-age=30", false);
    assert_eq!(cfg.usability(&e, &max_age_30, T + 19_000), Usability::Fresh);
    assert_eq!(
        cfg.usability(&e, &max_age_30, T + 19_001),
        Usability::Revalidate
    );
    // Nothing was said about stale-if-error and there is no default.
    assert!(!cfg.stale_if_error_ok(&e, &anon, T + 49_000));
    assert!(cfg.stale_if_error_ok(&e, &anon, T + 48_999));
}

// ---------------------------------------------------------------------------
// RFC 9213: targeted cache-control fields
// ---------------------------------------------------------------------------

/// A shared cache obeying `names`, in order of precedence.
fn targeting(names: &[&'static str]) -> PolicyConfig {
    PolicyConfig {
        targeted: names.iter().map(|n| HeaderName::from_static(n)).collect(),
        ..PolicyConfig::default()
    }
}

const CDN: &str = "cdn-cache-control";

/// RFC 9213 §2.1: the first valid targeted field on the list replaces
/// `Cache-Control` and `Expires`; an invalid one is ignored.
#[test]
fn rfc9213_2_1_storable_with_targeted_fields() {
    check_storable(targeted_directive_cases());
    check_storable(targeted_selection_cases());
}

/// A targeted field's directives, in place of Cache-Control's.
fn targeted_directive_cases() -> Vec<Case> {
    let cdn = CDN;
    vec![
        case(
            "targeted max-age beats Cache-Control's",
            200,
            &[("cache-control", "max-age=10"), (cdn, "max-age=60")],
        )
        .ok(ok(plain(MIN))),
        case(
            "targeted no-store beats public max-age",
            200,
            &[("cache-control", "public, max-age=60"), (cdn, "no-store")],
        )
        .err(NotStored::NoStore),
        case(
            "Cache-Control's no-store does not count",
            200,
            &[("cache-control", "no-store"), (cdn, "max-age=60")],
        )
        .ok(ok(plain(MIN))),
        case(
            "targeted private",
            200,
            &[("cache-control", "public, max-age=60"), (cdn, "private")],
        )
        .err(NotStored::Private),
        case(
            "targeted no-cache: stored, revalidated",
            200,
            &[
                ("cache-control", "max-age=60"),
                (cdn, "no-cache"),
                ("etag", "\"v1\""),
            ],
        )
        .ok(ok(tl(0, 0, 0, 0, KEEP)).flags(false, true, false)),
        case(
            "targeted must-revalidate: no stale windows",
            200,
            &[
                ("cache-control", "max-age=60, stale-while-revalidate=30"),
                (cdn, "max-age=60, must-revalidate"),
            ],
        )
        .ok(ok(plain(MIN)).flags(true, false, true)),
        case(
            "targeted stale windows",
            200,
            &[
                ("cache-control", "max-age=10"),
                (
                    cdn,
                    "max-age=60, stale-while-revalidate=30, stale-if-error=90",
                ),
            ],
        )
        .ok(ok(tl(
            0,
            MIN,
            MIN + 30 * SEC,
            MIN + 90 * SEC,
            MIN + 90 * SEC,
        ))),
        case(
            "targeted s-maxage: proxy-revalidate",
            200,
            &[("cache-control", "max-age=10"), (cdn, "s-maxage=60")],
        )
        .ok(ok(plain(MIN)).flags(true, false, true)),
    ]
}

/// Which field is obeyed: Expires, invalid fields, the list's order.
fn targeted_selection_cases() -> Vec<Case> {
    let cdn = CDN;
    vec![
        case(
            "Expires is ignored with a targeted field",
            200,
            &[(cdn, "must-revalidate")],
        )
        .header("expires", http_date(T + HOUR))
        .err(NotStored::NoFreshness),
        case(
            "invalid targeted field: Cache-Control applies",
            200,
            &[("cache-control", "max-age=10"), (cdn, "Max-Age=60")],
        )
        .ok(ok(plain(10 * SEC))),
        case(
            "empty targeted field: Cache-Control applies",
            200,
            &[("cache-control", "max-age=10"), (cdn, "")],
        )
        .ok(ok(plain(10 * SEC))),
        case(
            "invalid targeted field: Expires applies",
            200,
            &[(cdn, "max-age=60,")],
        )
        .header("expires", http_date(T + MIN))
        .ok(ok(plain(MIN))),
        case(
            "targeted field on several lines",
            200,
            &[(cdn, "max-age=60"), (cdn, "must-revalidate")],
        )
        .ok(ok(plain(MIN)).flags(true, false, true)),
        case(
            "no targeted list: Cache-Control",
            200,
            &[("cache-control", "max-age=10"), (cdn, "no-store")],
        )
        .cfg(targeting(&[]))
        .ok(ok(plain(10 * SEC))),
        case(
            "first on the list wins",
            200,
            &[(cdn, "max-age=60"), ("foo-cache-control", "max-age=30")],
        )
        .cfg(targeting(&["foo-cache-control", cdn]))
        .ok(ok(plain(30 * SEC))),
        case(
            "an invalid first falls to the second",
            200,
            &[
                (cdn, "max-age=60"),
                ("foo-cache-control", "max-age=\"30\" x"),
            ],
        )
        .cfg(targeting(&["foo-cache-control", cdn]))
        .ok(ok(plain(MIN))),
        case(
            "a field not on the list changes nothing",
            200,
            &[
                ("cache-control", "max-age=10"),
                ("foo-cache-control", "no-store"),
            ],
        )
        .ok(ok(plain(10 * SEC))),
    ]
}

/// With stripping on, the field a response is judged by goes; others stay.
#[test]
fn rfc9213_strip_removes_the_field_the_cache_obeys_only() {
    let mut cfg = targeting(&["foo-cache-control", "cdn-cache-control"]);
    let both = || {
        headers(&[
            ("cache-control", "max-age=10".to_owned()),
            ("foo-cache-control", "max-age=30".to_owned()),
            ("cdn-cache-control", "max-age=60".to_owned()),
        ])
    };
    let mut h = both();
    cfg.strip_targeted(&mut h);
    assert_eq!(h, both(), "stripping is off by default");

    cfg.strip_targeted = true;
    cfg.strip_targeted(&mut h);
    assert!(!h.contains_key("foo-cache-control"));
    assert!(h.contains_key("cdn-cache-control"));
    assert!(h.contains_key("cache-control"));

    // Foo's value invalid: CDN is the field obeyed, and the one removed.
    let mut h = both();
    h.insert("foo-cache-control", HeaderValue::from_static("Bad"));
    cfg.strip_targeted(&mut h);
    assert!(h.contains_key("foo-cache-control"));
    assert!(!h.contains_key("cdn-cache-control"));

    // Nothing valid: nothing removed.
    let mut h = both();
    h.insert("foo-cache-control", HeaderValue::from_static("Bad"));
    h.insert("cdn-cache-control", HeaderValue::from_static(""));
    let before = h.clone();
    cfg.strip_targeted(&mut h);
    assert_eq!(h, before);
}

// ---------------------------------------------------------------------------
// Adaptive TTL: which lifetimes the cache may change, and how
// ---------------------------------------------------------------------------

/// A response judged for adaptive TTL: its lifetime, and whether the
/// cache may change it.
fn lifetime_of(
    cfg: &PolicyConfig,
    status: u16,
    list: &[(&str, String)],
    route: Option<&Route>,
) -> (u64, bool) {
    let status = StatusCode::from_u16(status).unwrap();
    let s = cfg
        .storable(
            &RequestDirectives::default(),
            status,
            &headers(list),
            route,
            T,
            T,
        )
        .expect("storable");
    (s.lifetime, s.adaptable)
}

/// The lifetime of each kind of response, and whether adaptive TTL may
/// change it: only what the cache chose, or anything on a `force` route.
#[test]
fn adaptive_ttl_may_change_only_the_lifetimes_the_cache_chose() {
    let forced = Route::prefix("/").ttl(Duration::from_secs(10)).force();
    let unforced = Route::prefix("/").ttl(Duration::from_secs(10));
    let force_only = Route::prefix("/").force();
    let negative = PolicyConfig {
        negative_ttl: Some(Duration::from_secs(30)),
        ..shared()
    };
    let cc = |v: &str| vec![("cache-control", v.to_owned())];
    let expires = vec![("date", http_date(T)), ("expires", http_date(T + 60 * SEC))];
    let targeted = vec![("cdn-cache-control", "max-age=60".to_owned())];
    let heuristic = vec![("last-modified", http_date(T - 10 * DAY))];
    let explicit = (60 * SEC, false);
    let c = shared();
    assert_eq!(lifetime_of(&c, 200, &cc("max-age=60"), None), explicit);
    assert_eq!(lifetime_of(&c, 200, &cc("s-maxage=60"), None), explicit);
    assert_eq!(lifetime_of(&c, 200, &expires, None), explicit);
    assert_eq!(lifetime_of(&c, 200, &targeted, None), explicit);
    // A route's TTL in place of max-age: changed only with `force`.
    let max_age = cc("max-age=60");
    assert_eq!(
        lifetime_of(&c, 200, &max_age, Some(&unforced)),
        (10 * SEC, false)
    );
    assert_eq!(
        lifetime_of(&c, 200, &max_age, Some(&forced)),
        (10 * SEC, true)
    );
    assert_eq!(
        lifetime_of(&c, 200, &max_age, Some(&force_only)),
        (60 * SEC, true)
    );
    // What the cache chose.
    assert_eq!(lifetime_of(&c, 200, &[], Some(&forced)), (10 * SEC, true));
    assert_eq!(lifetime_of(&c, 200, &heuristic, None), (DAY, true));
    assert_eq!(lifetime_of(&negative, 404, &[], None), (30 * SEC, true));
}

/// A new lifetime moves the end of freshness (less the age the response
/// arrived with); the stale windows and the time kept for revalidation
/// keep their lengths after it.
#[test]
fn a_new_lifetime_moves_freshness_and_keeps_the_windows_after_it() {
    let cfg = PolicyConfig {
        default_swr: Duration::from_secs(30),
        default_sie: Duration::from_secs(60),
        ..shared()
    };
    let hdrs = headers(&[
        ("cache-control", "max-age=60"),
        ("etag", "\"v1\""),
        ("age", "10"),
    ]);
    let anon = RequestDirectives::default();
    let mut s = cfg
        .storable(&anon, StatusCode::OK, &hdrs, None, T, T)
        .expect("storable");
    assert_eq!(
        s.timeline,
        tl(10 * SEC, 50 * SEC, 80 * SEC, 110 * SEC, 50 * SEC + KEEP)
    );
    s.set_lifetime(120 * SEC);
    assert_eq!(s.lifetime, 120 * SEC);
    assert_eq!(
        s.timeline,
        tl(10 * SEC, 110 * SEC, 140 * SEC, 170 * SEC, 110 * SEC + KEEP)
    );
    // Shorter than the age it arrived with: stale at once.
    s.set_lifetime(5 * SEC);
    assert_eq!(s.timeline, tl(10 * SEC, 0, 30 * SEC, 60 * SEC, KEEP));
}

/// Small rules the end-to-end suites reach only through other paths (each
/// once a surviving mutant of the unit tests): which methods look up,
/// when a shared cache ignores request directives, which refusals
/// hit-for-pass remembers, that `Pragma` alone or `Cache-Control` alone
/// is read, and what a hop-by-hop strip leaves.
#[test]
fn small_rules_each_decide_their_case() {
    for (method, looks_up) in [
        (http::Method::GET, true),
        (http::Method::HEAD, true),
        (http::Method::POST, false),
        (http::Method::OPTIONS, false),
        (http::Method::PUT, false),
    ] {
        assert_eq!(PolicyConfig::lookup_method(&method), looks_up, "{method}");
    }

    let with = |mode, request_cc| PolicyConfig {
        mode,
        request_cc,
        ..PolicyConfig::default()
    };
    use crate::policy::RequestCacheControl::{Honour, Ignore};
    assert!(with(CacheMode::Shared, Ignore).ignores_request_cc());
    assert!(!with(CacheMode::Shared, Honour).ignores_request_cc());
    assert!(!with(CacheMode::Private, Ignore).ignores_request_cc());
    assert!(!with(CacheMode::Private, Honour).ignores_request_cc());

    for (reason, request_no_store, remembered) in [
        (NotStored::Status, false, false),
        (NotStored::Authorization, false, false),
        (NotStored::NoStore, false, true),
        (NotStored::NoStore, true, false),
        (NotStored::Private, false, true),
        (NotStored::SetCookie, false, true),
        (NotStored::VaryStar, false, true),
        (NotStored::NoFreshness, false, true),
        (NotStored::TooLarge, false, true),
    ] {
        assert_eq!(
            reason.remember(request_no_store),
            remembered,
            "{reason:?}, request no-store {request_no_store}"
        );
    }

    let read = |list: &[(&str, &str)]| RequestDirectives::from_headers(&headers(list)).cc;
    assert!(read(&[("pragma", "no-cache")]).no_cache);
    assert!(read(&[("cache-control", "no-cache")]).no_cache);
    assert!(read(&[("accept", "*/*"), ("cache-control", "no-store")]).no_store);
    assert!(read(&[("accept", "*/*")]).is_empty());

    let mut h = headers(&[
        ("connection", "x-hop, close"),
        ("x-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "h2c"),
        ("te", "trailers"),
        ("proxy-authenticate", "Basic"),
        ("x-end-to-end", "kept"),
        ("cache-control", "max-age=60"),
    ]);
    strip_hop_by_hop(&mut h);
    let mut left: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
    left.sort_unstable();
    assert_eq!(left, ["cache-control", "x-end-to-end"]);
}
