//! A second opinion (issue 14 point 10): the cache's storage and freshness
//! verdicts compared with the `http-cache-semantics` crate's, in shared
//! mode, over generated request/response header sets.
//!
//! For every case both sides answer two questions about a `GET` and its
//! response:
//!
//! - **storable**: theirs is `CachePolicy::is_storable`; ours is whether
//!   the response came back with `Cache-Status: …; stored`.
//! - **fresh for how long** (only when both store): theirs is
//!   `time_to_live` at the moment the response arrived; ours is found
//!   through the public API alone: a cache on a `ManualClock` stores the
//!   response at `T0`, the clock is set to `T0 + t`, and a second request
//!   either is a fresh hit (`Cache-Status: …; hit; detail=l1`) or is not.
//!   Whole seconds are compared (their lifetimes are whole seconds; a
//!   heuristic lifetime of ours can end within one).
//!
//! Where the two disagree, rows of [`KNOWN`] must explain it; each row
//! names the RFC text that makes our answer right (or allowed) and why.
//! Most rows are rewrites: where they read a header differently from RFC
//! 9110/9111, the case is rewritten into what the RFC says it means, in a
//! form they read correctly, and our verdict must then equal theirs on the
//! rewritten case. The rest are excuses: predicates on the rewritten case
//! and both verdicts, for choices the RFC leaves to a cache (not storing
//! what could never be reused). Every row is listed in `docs/RFC9111.md`
//! ("Differences from http-cache-semantics") and must be needed by at least
//! one case, so the table cannot outlive the behaviour it explains. A
//! divergence no row explains fails the test with the case, the rewritten
//! case, both verdicts and our measured lifetime.
//!
//! The cases are a hand-written table (one or more per row and per parsing
//! rule) plus a few hundred generated from fixed pools by a seeded
//! generator: statuses, `Cache-Control` directives (valid, invalid,
//! duplicated, in other letter case), `Expires` / `Date` / `Last-Modified`
//! in each HTTP-date form and invalid, `Age`, validators, `Vary`,
//! `Set-Cookie`, and the request's `Cache-Control` and `Authorization`.

mod support;

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use http::{Method, Request, Response};
use http_cache_semantics::{CacheOptions, CachePolicy};
use tower_tiered_cache::Cache;

use support::{cache_status, clock, origin, send, T0, URL};

/// The `Cache-Status` of a fresh hit from L1.
const FRESH_HIT: &str = "tower-tiered-cache; hit; detail=l1";

/// How the generator writes an HTTP date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// `Tue, 14 Nov 2023 22:13:20 GMT` (RFC 9110 §5.6.7, what senders use).
    Imf,
    /// The same in lower case.
    ImfLower,
    /// `Tuesday, 14-Nov-23 22:13:20 GMT` (obsolete, recipients must read it).
    Rfc850,
    /// `Tue Nov 14 22:13:20 2023` (obsolete, recipients must read it).
    Asctime,
    /// `Tue, 14 Nov 2023 22:13:20 +0000`: RFC 5322, not an HTTP-date.
    NumericZone,
}

const FORMS: [Form; 5] = [
    Form::Imf,
    Form::ImfLower,
    Form::Rfc850,
    Form::Asctime,
    Form::NumericZone,
];

/// A date field's value: seconds from `T0` in some form, or not a date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DateValue {
    At(i64, Form),
    Invalid(&'static str),
}

impl DateValue {
    fn render(self) -> String {
        match self {
            DateValue::At(offset, form) => date_in(offset, form),
            DateValue::Invalid(s) => s.to_owned(),
        }
    }

    /// The offset, when the value is an HTTP-date (our reading).
    fn http_offset(self) -> Option<i64> {
        match self {
            DateValue::At(o, f) if f != Form::NumericZone => Some(o),
            _ => None,
        }
    }
}

/// `T0 + offset` seconds as an HTTP date in `form`.
fn date_in(offset: i64, form: Form) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(T0) + Duration::from_secs(offset.max(0) as u64)
        - Duration::from_secs((-offset).max(0) as u64);
    let imf = httpdate::fmt_http_date(t);
    // "Tue, 14 Nov 2023 22:13:20 GMT"
    let (wd, rest) = imf.split_once(", ").expect("IMF-fixdate");
    let p: Vec<&str> = rest.split(' ').collect();
    let (day, mon, year, time) = (p[0], p[1], p[2], p[3]);
    match form {
        Form::Imf => imf.clone(),
        Form::ImfLower => imf.to_ascii_lowercase(),
        Form::Rfc850 => {
            let long = [
                "Monday",
                "Tuesday",
                "Wednesday",
                "Thursday",
                "Friday",
                "Saturday",
                "Sunday",
            ]
            .into_iter()
            .find(|d| d.starts_with(wd))
            .expect("a day name");
            format!("{long}, {day}-{mon}-{} {time} GMT", &year[2..])
        }
        Form::Asctime => {
            let d: u32 = day.parse().expect("day");
            format!("{wd} {mon} {d:>2} {time} {year}")
        }
        Form::NumericZone => format!("{wd}, {day} {mon} {year} {time} +0000"),
    }
}

/// One request/response pair.
#[derive(Clone, Debug, Default)]
struct Case {
    status: u16,
    /// `Cache-Control` members, in order (empty: no field).
    cc: Vec<String>,
    /// Put each member on a line of its own.
    cc_lines: bool,
    expires: Option<DateValue>,
    date: Option<DateValue>,
    last_modified: Option<DateValue>,
    age: Option<String>,
    etag: bool,
    vary: Option<&'static str>,
    set_cookie: bool,
    pragma_no_cache: bool,
    /// The request's `Cache-Control` (none when `None`).
    req_cc: Option<String>,
    authorization: bool,
}

impl Case {
    fn new(status: u16, cc: &[&'static str]) -> Self {
        Case {
            status,
            cc: cc.iter().map(|d| (*d).to_owned()).collect(),
            ..Case::default()
        }
    }

    fn response_headers(&self) -> Vec<(&'static str, String)> {
        let mut h = Vec::new();
        if self.cc_lines {
            for d in &self.cc {
                h.push(("cache-control", d.clone()));
            }
        } else if !self.cc.is_empty() {
            h.push(("cache-control", self.cc.join(", ")));
        }
        if let Some(d) = self.date {
            h.push(("date", d.render()));
        }
        if let Some(e) = self.expires {
            h.push(("expires", e.render()));
        }
        if let Some(lm) = self.last_modified {
            h.push(("last-modified", lm.render()));
        }
        if let Some(a) = &self.age {
            h.push(("age", a.clone()));
        }
        if self.etag {
            h.push(("etag", "\"v1\"".to_owned()));
        }
        if let Some(v) = self.vary {
            h.push(("vary", v.to_owned()));
        }
        if self.set_cookie {
            h.push(("set-cookie", "session=abc".to_owned()));
        }
        if self.pragma_no_cache {
            h.push(("pragma", "no-cache".to_owned()));
        }
        h
    }

    /// The request's headers; `probe` leaves out its cache directives (a
    /// probe asks whether the stored response is fresh, nothing more).
    fn request_headers(&self, probe: bool) -> Vec<(&'static str, String)> {
        let mut h = vec![("accept-encoding", "gzip".to_owned())];
        if let (Some(cc), false) = (&self.req_cc, probe) {
            h.push(("cache-control", cc.clone()));
        }
        if self.authorization {
            h.push(("authorization", "Bearer token".to_owned()));
        }
        h
    }

    fn request(&self, probe: bool) -> Request<()> {
        let mut b = Request::builder().method(Method::GET).uri(URL);
        for (n, v) in self.request_headers(probe) {
            b = b.header(n, v);
        }
        b.body(()).expect("valid request")
    }

    fn response(&self) -> Response<()> {
        let mut b = Response::builder().status(self.status);
        for (n, v) in self.response_headers() {
            b = b.header(n, v);
        }
        b.body(()).expect("valid response")
    }

    /// Whether a response directive is present, compared as written.
    fn has(&self, directive: &str) -> bool {
        self.cc.iter().any(|d| d == directive)
    }

    /// Whether a response directive is present by name (any case, any
    /// argument).
    fn has_name(&self, name: &str) -> bool {
        self.cc.iter().any(|d| {
            d.split('=')
                .next()
                .is_some_and(|n| n.trim().eq_ignore_ascii_case(name))
        })
    }

    fn has_validator(&self) -> bool {
        self.etag
            || self
                .last_modified
                .is_some_and(|lm| lm.http_offset().is_some())
    }

    /// Whether the response states a lifetime of its own (a `max-age` /
    /// `s-maxage` directive or `Expires`), as we read it.
    fn explicit_freshness(&self) -> bool {
        self.has_name("max-age") || self.has_name("s-maxage") || self.expires.is_some()
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.status)?;
        for (n, v) in self.response_headers() {
            write!(f, " | {n}: {v}")?;
        }
        write!(f, " || request:")?;
        for (n, v) in self.request_headers(false) {
            write!(f, " | {n}: {v}")?;
        }
        Ok(())
    }
}

/// One side's answer: `None` when the response is not stored, else how
/// long it is fresh (ms).
type Verdict = Option<u64>;

/// Both answers for a case.
#[derive(Clone, Copy, Debug)]
struct Outcome {
    ours: Verdict,
    theirs: Verdict,
}

impl Outcome {
    fn agree(&self) -> bool {
        match (self.ours, self.theirs) {
            (None, None) => true,
            (Some(a), Some(b)) => a / 1000 == b / 1000,
            _ => false,
        }
    }

    /// They store it, we do not.
    fn only_theirs(&self) -> bool {
        self.ours.is_none() && self.theirs.is_some()
    }

    fn ours_shorter(&self) -> bool {
        matches!((self.ours, self.theirs), (Some(a), Some(b)) if a / 1000 < b / 1000)
    }
}

/// Their verdict, in shared mode, the response arriving at `T0`.
fn theirs(case: &Case) -> Verdict {
    let arrived = UNIX_EPOCH + Duration::from_millis(T0);
    let policy = CachePolicy::new_options(
        &case.request(false),
        &case.response(),
        arrived,
        CacheOptions {
            shared: true,
            ..CacheOptions::default()
        },
    );
    policy
        .is_storable()
        .then(|| policy.time_to_live(arrived).as_millis() as u64)
}

/// Stores `case`'s response in a new cache at `T0`; then, if it was stored
/// and `probe_at` is given, asks again at `T0 + probe_at` ms. Returns
/// whether it was stored and whether the probe was a fresh hit.
async fn run(case: &Case, probe_at: Option<u64>) -> (bool, bool) {
    let clock = clock();
    let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    let status = case.status;
    let headers = case.response_headers();
    let (origin, _log) = origin(move |_, _| {
        let mut b = Response::builder().status(status);
        for (n, v) in &headers {
            b = b.header(*n, v.as_str());
        }
        b.body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"body",
        )))
        .expect("valid response")
    });
    let svc = support::cached(&cache, origin);
    let first = send(&svc, case.request(false)).await;
    let stored = cache_status(&first).contains("; stored");
    let Some(t) = probe_at.filter(|_| stored) else {
        return (stored, false);
    };
    clock.set(T0 + t);
    let again = send(&svc, case.request(true)).await;
    (stored, cache_status(&again) == FRESH_HIT)
}

/// The longest probe: past 2^31 s (RFC 9111 §1.2.2's cap) and any lifetime
/// the generator writes.
const HORIZON_MS: u64 = 4_000_000_000_000;

/// Our verdict. `expect` (their lifetime, ms) is tried first: two probes
/// confirm a lifetime in the same whole second; otherwise a binary search
/// over the probe time finds ours (`HORIZON_MS` when still fresh there).
async fn ours(case: &Case, expect: Verdict) -> Verdict {
    let (stored, _) = run(case, None).await;
    if !stored {
        return None;
    }
    let fresh = |t: u64| async move { run(case, Some(t)).await.1 };
    if let Some(l) = expect {
        let floor = l / 1000 * 1000;
        let before_ok = floor == 0 || fresh(floor - 1).await;
        if before_ok && !fresh(floor + 999).await {
            // Fresh through the second before, stale by the end of this
            // one: the same whole second. Find the millisecond for the
            // record only when it matters (it does not here).
            return Some(floor);
        }
    }
    if fresh(HORIZON_MS).await {
        return Some(HORIZON_MS);
    }
    // The first t that is not a fresh hit: fresh for [0, t).
    let (mut lo, mut hi) = (0u64, HORIZON_MS);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fresh(mid).await {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

/// A divergence this cache keeps on purpose. Every row is in
/// `docs/RFC9111.md`, "Differences from http-cache-semantics".
struct Known {
    /// A short name (the docs' row names it).
    name: &'static str,
    /// The RFC text that makes our answer the right one (or an allowed one).
    rfc: &'static str,
    /// What differs, in a sentence.
    reason: &'static str,
    rule: Rule,
}

/// How a row explains a divergence.
enum Rule {
    /// A reading of the headers that differs from theirs: the case is
    /// rewritten into what RFC 9111 says it means, in terms they read the
    /// same way (lower-case directive names, IMF-fixdate, one `Age`, …), and
    /// our verdict must then equal theirs on the rewritten case. `None`
    /// when the row does not apply. Every applicable rewrite is applied, in
    /// table order.
    Rewrite(fn(&Case) -> Option<Case>),
    /// A choice within what the RFC allows (mostly: not storing what could
    /// never be reused). Applies to the rewritten case and both verdicts.
    Excuse(fn(&Case, &Outcome) -> bool),
}

/// Statuses the crate understands (its `UNDERSTOOD_STATUSES`, from RFC
/// 7234's "understood by the cache").
const THEIR_STATUSES: [u16; 14] = [
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501,
];

/// Statuses this cache understands for `must-understand` (RFC 9110 §15's
/// final statuses less 206, 304 and 306; `understood_status` in
/// src/policy/mod.rs).
fn we_understand(status: u16) -> bool {
    matches!(
        status,
        200..=205 | 300..=305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505
    )
}

/// A directive's name and argument.
fn split(d: &str) -> (&str, Option<&str>) {
    let mut kv = d.splitn(2, '=');
    (kv.next().unwrap_or("").trim(), kv.next().map(str::trim))
}

/// `case` with its response directives passed through `f` (`None` drops
/// one); `None` when nothing changed.
fn map_directives(case: &Case, f: impl Fn(&str) -> Option<String>) -> Option<Case> {
    let cc: Vec<String> = case.cc.iter().filter_map(|d| f(d)).collect();
    (cc != case.cc).then(|| Case { cc, ..case.clone() })
}

/// `case` with every date passed through `f`; `None` when nothing changed.
fn map_dates(case: &Case, f: impl Fn(DateValue) -> DateValue) -> Option<Case> {
    let mut c = case.clone();
    for d in [&mut c.expires, &mut c.date, &mut c.last_modified] {
        *d = d.map(&f);
    }
    (c.expires != case.expires || c.date != case.date || c.last_modified != case.last_modified)
        .then_some(c)
}

/// An `Age` value as we read it: digits only, else ignored (RFC 9111 §5.1).
fn age_secs(case: &Case) -> u64 {
    case.age
        .as_deref()
        .and_then(|a| {
            a.trim()
                .parse::<u64>()
                .ok()
                .filter(|_| !a.trim().starts_with('+'))
        })
        .unwrap_or(0)
}

const KNOWN: &[Known] = &[
    Known {
        name: "directive-case",
        rfc: "RFC 9111 §5.2: \"Cache directives are identified by a token, to be compared \
              case-insensitively\"",
        reason: "they compare directive names case-sensitively (`MAX-AGE`, `NO-STORE`, \
                 `Public` are unknown to them)",
        rule: Rule::Rewrite(|c| {
            let lower = |d: &str| match split(d) {
                (n, Some(v)) => format!("{}={v}", n.to_ascii_lowercase()),
                (n, None) => n.to_ascii_lowercase(),
            };
            let out = Case {
                cc: c.cc.iter().map(|d| lower(d)).collect(),
                req_cc: c
                    .req_cc
                    .as_deref()
                    .map(|r| r.split(',').map(lower).collect::<Vec<_>>().join(", ")),
                ..c.clone()
            };
            (out.cc != c.cc || out.req_cc != c.req_cc).then_some(out)
        }),
    },
    Known {
        name: "obsolete-date-forms",
        rfc: "RFC 9110 §5.6.7: \"A recipient that parses a timestamp value in an HTTP field \
              MUST accept all three HTTP-date formats\"",
        reason: "they parse dates as RFC 2822 only: an RFC 850 or asctime date (or one in \
                 lower case) is invalid to them: such an `Expires` reads as expired, such a \
                 `Date` or `Last-Modified` as absent",
        rule: Rule::Rewrite(|c| {
            map_dates(c, |d| match d {
                DateValue::At(o, Form::Rfc850 | Form::Asctime | Form::ImfLower) => {
                    DateValue::At(o, Form::Imf)
                }
                d => d,
            })
        }),
    },
    Known {
        name: "not-an-http-date",
        rfc: "RFC 9110 §5.6.7: HTTP-date is IMF-fixdate (\"GMT\") or an obsolete form; \
              RFC 9111 §5.3: \"A cache recipient MUST interpret invalid date formats, \
              especially the value \\\"0\\\", as representing a time in the past\"",
        reason: "they accept any RFC 2822 date (`+0000`); to us it is not an HTTP-date: an \
                 `Expires` so written has already expired, such a `Date` or `Last-Modified` \
                 is ignored",
        rule: Rule::Rewrite(|c| {
            map_dates(c, |d| match d {
                DateValue::At(_, Form::NumericZone) => DateValue::Invalid("not-an-http-date"),
                d => d,
            })
        }),
    },
    Known {
        name: "age-list",
        rfc: "RFC 9111 §5.1: \"a cache encountering a message with a list-based Age field value \
              SHOULD use the first member of the field value, discarding subsequent ones\"",
        reason: "they fail to parse `Age: 7200, 0` and read 0; we use 7200",
        rule: Rule::Rewrite(|c| {
            let a = c.age.as_deref()?;
            let first = a.split(',').next()?.trim();
            (first != a).then(|| Case {
                age: Some(first.to_owned()),
                ..c.clone()
            })
        }),
    },
    Known {
        name: "apparent-age",
        rfc: "RFC 9111 §4.2.3: \"apparent_age = max(0, response_time - date_value); … \
              corrected_initial_age = max(apparent_age, corrected_age_value)\"",
        reason: "they take the age from `Age` alone; we also count the time since `Date`: a \
                 response dated before it arrived is that much older (rewritten as an `Age` \
                 of the corrected initial age)",
        rule: Rule::Rewrite(|c| {
            let apparent = (-c.date?.http_offset()?).max(0) as u64;
            (apparent > age_secs(c)).then(|| Case {
                age: Some(apparent.to_string()),
                ..c.clone()
            })
        }),
    },
    Known {
        name: "delta-seconds-invalid",
        rfc: "RFC 9111 §1.2.2: delta-seconds = 1*DIGIT; §4.2.1: \"Caches are encouraged to \
              consider responses that have invalid freshness information (e.g., a max-age \
              directive with non-integer content) to be stale\"",
        reason: "they read `max-age=+60` as 60 and a `max-age` / `s-maxage` without a value as \
                 absent; to us both are invalid, so stale (rewritten as `max-age=abc`, which \
                 they too read as stale)",
        rule: Rule::Rewrite(|c| {
            map_directives(c, |d| match split(d) {
                (n @ ("max-age" | "s-maxage"), None) => Some(format!("{n}=abc")),
                (n @ ("max-age" | "s-maxage"), Some(v)) if v.trim_matches('"').starts_with('+') => {
                    Some(format!("{n}=abc"))
                }
                _ => Some(d.to_owned()),
            })
        }),
    },
    Known {
        name: "delta-seconds-overflow",
        rfc: "RFC 9111 §1.2.2: \"If a cache receives a delta-seconds value greater than the \
              greatest integer it can represent, or if any of its subsequent calculations \
              overflows, the cache MUST consider the value to be 2147483648 (2^31) or the \
              greatest positive integer it can conveniently represent\"",
        reason: "they read a value past u64 as 0 (stale) and keep 3000000000 as it is; we read \
                 any value past 2^31 as 2^31 (68 years): lifetimes are milliseconds in a u64",
        rule: Rule::Rewrite(|c| {
            map_directives(c, |d| match split(d) {
                (n @ ("max-age" | "s-maxage"), Some(v))
                    if !v.is_empty()
                        && v.bytes().all(|b| b.is_ascii_digit())
                        && v.parse::<u128>().map_or(true, |n| n > 2_147_483_648) =>
                {
                    Some(format!("{n}=2147483648"))
                }
                _ => Some(d.to_owned()),
            })
        }),
    },
    Known {
        name: "qualified-private-no-cache",
        rfc: "RFC 9111 §5.2.2.7: with qualified private \"a shared cache MUST NOT store the \
              specified field names … but MAY store the remainder of the response message\"; \
              §5.2.2.4: qualified no-cache \"allows an origin server to prevent the reuse of \
              certain header fields in a response, while still allowing caching of the rest of \
              the response\"",
        reason: "they read `private=\"f\"` as `private` and `no-cache=\"f\"` as `no-cache`; we \
                 store the response without the named fields (for storing and freshness, as \
                 if the directive were absent)",
        rule: Rule::Rewrite(|c| {
            map_directives(c, |d| match split(d) {
                ("private" | "no-cache", Some(v)) if !v.trim_matches('"').trim().is_empty() => None,
                _ => Some(d.to_owned()),
            })
        }),
    },
    Known {
        name: "immutable",
        rfc: "RFC 8246 §2: \"The immutable extension only applies during the freshness lifetime \
              of the stored response\"",
        reason: "they give an `immutable` response without max-age/s-maxage at least 24 h of \
                 freshness; to us immutable does not make anything fresh",
        rule: Rule::Rewrite(|c| map_directives(c, |d| (d != "immutable").then(|| d.to_owned()))),
    },
    Known {
        name: "proxy-revalidate",
        rfc: "RFC 9111 §5.2.2.8: proxy-revalidate means that \"once the response has become \
              stale, a shared cache MUST NOT reuse that response to satisfy another request \
              until it has been successfully validated\"",
        reason: "they give it lifetime 0 in a shared cache; to us it only forbids stale reuse",
        rule: Rule::Rewrite(|c| {
            map_directives(c, |d| (d != "proxy-revalidate").then(|| d.to_owned()))
        }),
    },
    Known {
        name: "must-understand",
        rfc: "RFC 9111 §5.2.2.3: \"When a cache that implements the must-understand directive \
              receives a response that contains it, the cache SHOULD ignore the no-store \
              directive if it understands and implements the status code's caching \
              requirements.\"",
        reason: "they do not implement must-understand, so `no-store` keeps the response out",
        rule: Rule::Rewrite(|c| {
            if !c.has("must-understand") || !we_understand(c.status) {
                return None;
            }
            map_directives(c, |d| (d != "no-store").then(|| d.to_owned()))
        }),
    },
    Known {
        name: "conflicting-duplicates",
        rfc: "RFC 9111 §4.2.1: \"When there is more than one value present for a given directive \
              … either the first occurrence should be used or the response should be considered \
              stale\"; §3.5: a shared cache may store a response to a request with \
              Authorization only when must-revalidate, public or s-maxage is present",
        reason: "they use the first occurrence too, but also add must-revalidate, which then \
                 lets them store it for a request with Authorization; we keep the first \
                 occurrence and nothing else (rewritten: later occurrences dropped)",
        rule: Rule::Rewrite(|c| {
            let mut seen: Vec<(String, String)> = Vec::new();
            let mut cc = Vec::new();
            for d in &c.cc {
                let name = split(d).0.to_owned();
                match seen.iter().find(|(n, _)| *n == name) {
                    Some((_, first)) if first != d => {}
                    _ => {
                        seen.push((name, d.clone()));
                        cc.push(d.clone());
                    }
                }
            }
            (cc != c.cc).then(|| Case { cc, ..c.clone() })
        }),
    },
    Known {
        name: "final-status",
        rfc: "RFC 9111 §3: a cache MUST NOT store a response unless \"the response status code \
              is final\" and, only \"if the response status code is 206 or 304, or the \
              must-understand cache directive is present: the cache understands the response \
              status code\"",
        reason: "they store only 14 statuses (RFC 7234's \"understood\"); we store any final \
                 status (other 4xx and 5xx included) that has explicit freshness or `public`, \
                 like a status that is not heuristically cacheable (rewritten as 302)",
        rule: Rule::Rewrite(|c| {
            (!THEIR_STATUSES.contains(&c.status)
                && !matches!(c.status, 206 | 304)
                && we_understand(c.status))
            .then(|| Case {
                status: 302,
                ..c.clone()
            })
        }),
    },
    Known {
        name: "vary-star",
        rfc: "RFC 9111 §4.1: \"A stored response with a Vary header field value containing a \
              member \\\"*\\\" always fails to match\"",
        reason: "they store it (lifetime 0); we do not store what can never match",
        rule: Rule::Excuse(|c, o| o.only_theirs() && c.vary == Some("*")),
    },
    Known {
        name: "set-cookie",
        rfc: "RFC 9111 §3: it only says when a cache MUST NOT store, never that it must; \
              RFC 9111 §7.3 (caching of sensitive information)",
        reason: "with the default `SetCookiePolicy::Pass` we never store a response that sets \
                 a cookie; they store it (fresh only with `public` or `immutable`)",
        rule: Rule::Excuse(|c, o| o.only_theirs() && c.set_cookie),
    },
    Known {
        name: "negative-heuristic",
        rfc: "RFC 9111 §4.2.2: \"a cache MAY assign a heuristic expiration time when an \
              explicit time is not specified\"",
        reason: "we give 404/410 without explicit freshness no heuristic lifetime (only \
                 `negative_caching(ttl)` stores them); they apply the 10% heuristic",
        rule: Rule::Excuse(|c, o| {
            o.only_theirs() && matches!(c.status, 404 | 410) && !c.explicit_freshness()
        }),
    },
    Known {
        name: "heuristic-cap",
        rfc: "RFC 9111 §4.2.2: \"This specification does not provide specific algorithms, but \
              it does impose worst-case constraints on their results\"; 10% of the time since \
              Last-Modified is \"no more than\" what caches are encouraged to use",
        reason: "our heuristic lifetime is capped at `heuristic_max` (24 h by default); theirs \
                 is not",
        rule: Rule::Excuse(|c, o| {
            let capped = 86_400u64.saturating_sub(age_secs(c));
            o.ours_shorter()
                && !c.explicit_freshness()
                && c.last_modified.is_some()
                && o.ours.is_some_and(|ms| ms / 1000 == capped)
        }),
    },
    Known {
        name: "no-lifetime-no-validator",
        rfc: "RFC 9111 §3: \"some caches will not store a response that has neither a cache \
              validator nor an explicit expiration time, as such responses are not usually \
              useful to store\"; §3 only says when a cache MUST NOT store, never that it must",
        reason: "they store responses that are stale on arrival (no freshness, `no-cache`, \
                 `Expires` in the past, an `Age` past the lifetime) with nothing to revalidate \
                 them with; we do not store what can never be reused fresh",
        rule: Rule::Excuse(|c, o| o.only_theirs() && o.theirs == Some(0) && !c.has_validator()),
    },
];

/// `case` rewritten by every applicable [`Rule::Rewrite`] row (but
/// `skip`), in table order, and the rows that applied.
fn rewrite(case: &Case, skip: Option<usize>) -> (Case, Vec<usize>) {
    let mut out = case.clone();
    let mut applied = Vec::new();
    for (i, k) in KNOWN.iter().enumerate() {
        if let (Rule::Rewrite(f), false) = (&k.rule, skip == Some(i)) {
            if let Some(c) = f(&out) {
                out = c;
                applied.push(i);
            }
        }
    }
    (out, applied)
}

/// The hand-written cases: each rule of both sides, each row of [`KNOWN`].
fn table() -> Vec<Case> {
    let d = |o: i64| Some(DateValue::At(o, Form::Imf));
    let mut v = vec![
        Case::new(200, &["max-age=60"]),
        Case::new(200, &["max-age=0"]),
        Case::new(200, &["s-maxage=30", "max-age=60"]),
        Case::new(200, &["max-age=60", "s-maxage=30"]),
        Case::new(200, &["public"]),
        Case::new(200, &[]),
        Case::new(200, &["no-store", "max-age=60"]),
        Case::new(200, &["private", "max-age=60"]),
        Case::new(200, &["no-cache", "max-age=60"]),
        Case::new(200, &["must-revalidate", "max-age=60"]),
        Case::new(200, &["max-age=abc"]),
        Case::new(200, &["max-age=-1"]),
        Case::new(200, &["max-age=\"60\""]),
        Case::new(200, &["max-age = 60"]),
        Case::new(200, &["max-age=60", "max-age=120"]),
        Case::new(200, &["max-age=60", "max-age=60"]),
        Case::new(200, &["s-maxage=abc", "max-age=60"]),
        Case::new(200, &["max-age=3000000000"]),
        // Rows.
        Case::new(500, &["max-age=60"]),
        Case::new(503, &["max-age=60"]),
        Case::new(403, &["max-age=60"]),
        Case::new(302, &["max-age=60"]),
        Case::new(302, &[]),
        Case::new(206, &["max-age=60"]),
        Case::new(304, &["max-age=60"]),
        Case::new(200, &["no-store", "must-understand", "max-age=60"]),
        Case::new(418, &["no-store", "must-understand", "max-age=60"]),
        Case::new(200, &["no-cache"]),
        Case::new(200, &["immutable"]),
        Case::new(200, &["proxy-revalidate", "max-age=60"]),
        Case::new(200, &["private=\"x-user\"", "max-age=60"]),
        Case::new(200, &["no-cache=\"x-user\"", "max-age=60"]),
        Case::new(200, &["MAX-AGE=60"]),
        Case::new(200, &["max-age=+60"]),
        Case::new(200, &["max-age"]),
        Case::new(200, &["s-maxage", "max-age=60"]),
        Case::new(200, &["max-age=99999999999999999999"]),
        Case::new(200, &["max-age=60", "stale-while-revalidate=30"]),
    ];
    let with = |mut c: Case, f: &dyn Fn(&mut Case)| {
        f(&mut c);
        c
    };
    v.extend([
        with(Case::new(200, &["max-age=60"]), &|c| {
            c.cc_lines = true;
            c.cc.push("max-age=120".into());
        }),
        with(Case::new(200, &[]), &|c| c.expires = d(60)),
        with(Case::new(200, &[]), &|c| c.expires = d(-60)),
        with(Case::new(200, &[]), &|c| {
            c.expires = Some(DateValue::Invalid("0"))
        }),
        with(Case::new(200, &["max-age=60"]), &|c| {
            c.expires = Some(DateValue::Invalid("0"))
        }),
        with(Case::new(200, &[]), &|c| {
            c.expires = d(600);
            c.date = d(300);
        }),
        with(Case::new(200, &[]), &|c| {
            c.expires = Some(DateValue::At(60, Form::Rfc850))
        }),
        with(Case::new(200, &[]), &|c| {
            c.expires = Some(DateValue::At(60, Form::Asctime))
        }),
        with(Case::new(200, &[]), &|c| {
            c.expires = Some(DateValue::At(60, Form::ImfLower))
        }),
        with(Case::new(200, &[]), &|c| {
            c.expires = Some(DateValue::At(60, Form::NumericZone))
        }),
        with(Case::new(200, &["max-age=600"]), &|c| c.date = d(-100)),
        with(Case::new(200, &["max-age=600"]), &|c| c.date = d(100)),
        with(Case::new(200, &["max-age=600"]), &|c| {
            c.age = Some("100".into())
        }),
        with(Case::new(200, &["max-age=600"]), &|c| {
            c.age = Some("7200, 0".into())
        }),
        with(Case::new(200, &["max-age=600"]), &|c| {
            c.age = Some("abc".into())
        }),
        with(Case::new(200, &["max-age=60"]), &|c| {
            c.age = Some("100".into())
        }),
        with(Case::new(200, &["max-age=60"]), &|c| {
            c.age = Some("100".into());
            c.etag = true;
        }),
        with(Case::new(200, &[]), &|c| c.last_modified = d(-10_000)),
        with(Case::new(200, &[]), &|c| c.last_modified = d(-100 * 86_400)),
        with(Case::new(200, &[]), &|c| {
            c.last_modified = Some(DateValue::At(-10_000, Form::Rfc850))
        }),
        with(Case::new(404, &[]), &|c| c.last_modified = d(-10_000)),
        with(Case::new(410, &[]), &|c| c.last_modified = d(-10_000)),
        with(Case::new(404, &["max-age=60"]), &|c| c.etag = true),
        with(Case::new(200, &["no-cache"]), &|c| c.etag = true),
        with(Case::new(200, &["max-age=60"]), &|c| c.vary = Some("*")),
        with(Case::new(200, &["max-age=60"]), &|c| {
            c.vary = Some("accept-encoding")
        }),
        with(Case::new(200, &["max-age=60"]), &|c| c.set_cookie = true),
        with(Case::new(200, &["public", "max-age=60"]), &|c| {
            c.set_cookie = true
        }),
        with(Case::new(200, &[]), &|c| c.pragma_no_cache = true),
        with(Case::new(200, &["max-age=60"]), &|c| {
            c.pragma_no_cache = true
        }),
        with(Case::new(200, &["max-age=60"]), &|c| {
            c.req_cc = Some("no-store".into())
        }),
        with(Case::new(200, &["max-age=60"]), &|c| {
            c.req_cc = Some("NO-STORE".into())
        }),
        with(Case::new(200, &["max-age=60"]), &|c| {
            c.req_cc = Some("no-cache".into())
        }),
        with(Case::new(200, &["max-age=60"]), &|c| c.authorization = true),
        with(Case::new(200, &["max-age=60", "public"]), &|c| {
            c.authorization = true
        }),
        with(Case::new(200, &["s-maxage=60"]), &|c| {
            c.authorization = true
        }),
        with(Case::new(200, &["max-age=60", "must-revalidate"]), &|c| {
            c.authorization = true
        }),
        with(Case::new(200, &["max-age=60", "max-age=120"]), &|c| {
            c.authorization = true
        }),
    ]);
    v
}

/// A small deterministic generator (xorshift64*), so a failure names a
/// case that the next run produces again.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, pool: &[T]) -> T {
        pool[self.below(pool.len())]
    }

    /// True one time in `n`.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn date(&mut self, offsets: &[i64]) -> DateValue {
        if self.one_in(8) {
            return DateValue::Invalid(self.pick(&["0", "yesterday", "-1"]));
        }
        // Mostly IMF-fixdate: the other forms have rows of their own.
        let form = if self.one_in(3) {
            self.pick(&FORMS)
        } else {
            Form::Imf
        };
        DateValue::At(self.pick(offsets), form)
    }
}

const STATUSES: [u16; 24] = [
    200, 200, 200, 200, 203, 204, 206, 300, 301, 302, 303, 307, 308, 400, 403, 404, 405, 410, 414,
    500, 501, 502, 503, 504,
];

const DIRECTIVES: [&str; 30] = [
    "max-age=60",
    "max-age=60",
    "max-age=3600",
    "max-age=0",
    "max-age=120",
    "max-age=abc",
    "max-age",
    "max-age=\"60\"",
    "MAX-AGE=60",
    "max-age=+60",
    "max-age=99999999999999999999",
    "s-maxage=30",
    "s-maxage=300",
    "s-maxage",
    "no-store",
    "no-cache",
    "no-cache=\"x-user\"",
    "private",
    "private=\"x-user\"",
    "public",
    "public",
    "must-revalidate",
    "proxy-revalidate",
    "immutable",
    "must-understand",
    "stale-while-revalidate=30",
    "stale-if-error=60",
    "NO-STORE",
    "Public",
    "x-unknown=1",
];

fn generated(n: usize) -> Vec<Case> {
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|_| {
            let mut c = Case::new(g.pick(&STATUSES), &[]);
            for _ in 0..g.below(4) {
                c.cc.push(g.pick(&DIRECTIVES).to_owned());
            }
            c.cc_lines = g.one_in(4);
            if g.one_in(3) {
                c.expires = Some(g.date(&[-3600, -60, 0, 60, 3600, 100 * 86_400]));
            }
            if g.one_in(2) {
                c.date = Some(g.date(&[0, 0, -100, -30, 50]));
            }
            if g.one_in(3) {
                c.last_modified = Some(g.date(&[-100, -10_000, -1_000_000, -100 * 86_400, 60]));
            }
            if g.one_in(5) {
                c.age = Some(g.pick(&["10", "100", "7200, 0", "abc", "3600"]).to_owned());
            }
            c.etag = g.one_in(3);
            if g.one_in(8) {
                c.vary = Some(g.pick(&["*", "accept-encoding"]));
            }
            c.set_cookie = g.one_in(10);
            c.pragma_no_cache = g.one_in(12);
            if g.one_in(4) {
                c.req_cc = Some(
                    g.pick(&["no-store", "no-cache", "max-age=0", "NO-STORE"])
                        .to_owned(),
                );
            }
            c.authorization = g.one_in(5);
            c
        })
        .collect()
}

#[tokio::test]
async fn verdicts_match_http_cache_semantics_or_a_known_divergence() {
    let cases: Vec<Case> = table().into_iter().chain(generated(300)).collect();
    let mut used = vec![0usize; KNOWN.len()];
    let mut unexplained = Vec::new();
    let (mut agreed, mut explained, mut stored) = (0, 0, 0);
    for case in &cases {
        // Their verdict on the case as written, and on the case rewritten
        // by every row that applies (what the headers mean per the RFCs).
        let (rewritten, rewrites) = rewrite(case, None);
        let as_written = theirs(case);
        let as_meant = theirs(&rewritten);
        let ours = ours(case, as_meant).await;
        stored += usize::from(ours.is_some());
        if (Outcome {
            ours,
            theirs: as_written,
        })
        .agree()
        {
            agreed += 1;
            continue;
        }
        let outcome = Outcome {
            ours,
            theirs: as_meant,
        };
        let excuse = if outcome.agree() {
            None
        } else {
            let excuse = KNOWN.iter().position(|k| match k.rule {
                Rule::Excuse(f) => f(&rewritten, &outcome),
                Rule::Rewrite(_) => false,
            });
            if excuse.is_none() {
                unexplained.push(format!(
                    "{case}\n    rewritten: {rewritten}\n    ours: {ours:?} ms, theirs: \
                     {as_written:?} ms as written, {as_meant:?} ms as rewritten"
                ));
                continue;
            }
            excuse
        };
        explained += 1;
        // A rewrite counts for its row when the case is still unexplained
        // without it (the row is needed, not merely applicable).
        let needed = rewrites.into_iter().filter(|&i| {
            let (without, _) = rewrite(case, Some(i));
            let o = Outcome {
                ours,
                theirs: theirs(&without),
            };
            !o.agree()
                && !excuse
                    .is_some_and(|e| matches!(KNOWN[e].rule, Rule::Excuse(f) if f(&without, &o)))
        });
        let rows: Vec<usize> = needed.chain(excuse).collect();
        for &i in &rows {
            used[i] += 1;
        }
        // Shown with --nocapture (or on failure): what explained each case.
        let names: Vec<&str> = rows.iter().map(|&i| KNOWN[i].name).collect();
        println!(
            "{names:?} {case}\n    ours: {ours:?} ms, theirs: {as_written:?} ms as written, \
             {as_meant:?} ms as rewritten"
        );
    }
    println!(
        "{} cases: {agreed} agree, {explained} differ as a row explains, {} unexplained; \
         we stored {stored}",
        cases.len(),
        unexplained.len()
    );
    for (k, n) in KNOWN.iter().zip(&used) {
        println!(
            "  {:<40} {n:>4}  ({})",
            k.name,
            k.rfc.split(':').next().unwrap_or("")
        );
    }
    assert!(
        unexplained.is_empty(),
        "{} divergences from http-cache-semantics no row of KNOWN explains:\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
    let unused: Vec<&str> = KNOWN
        .iter()
        .zip(&used)
        .filter(|(_, n)| **n == 0)
        .map(|(k, _)| k.name)
        .collect();
    assert!(
        unused.is_empty(),
        "rows of KNOWN no case exercises (drop them or add a case): {unused:?}"
    );
    for k in KNOWN {
        assert!(!k.rfc.is_empty() && !k.reason.is_empty(), "{}", k.name);
    }
}

/// The known-divergence table agrees with `docs/RFC9111.md`: every row's
/// name appears in its "Differences from http-cache-semantics" section.
#[test]
fn every_known_divergence_is_documented() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/RFC9111.md"))
        .expect("docs/RFC9111.md");
    let section = doc
        .split("## Differences from http-cache-semantics")
        .nth(1)
        .expect("a \"Differences from http-cache-semantics\" section");
    let missing: Vec<&str> = KNOWN
        .iter()
        .map(|k| k.name)
        .filter(|n| !section.contains(&format!("`{n}`")))
        .collect();
    assert!(missing.is_empty(), "not in docs/RFC9111.md: {missing:?}");
}
