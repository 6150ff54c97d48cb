//! Request labels: a bounded set of names (route templates, upstream
//! hosts) with counters for each.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use http::request::Parts;

use crate::stats::stripe;
use crate::sync::{read, write};

/// A function that names a request's label (see [`LabelSource::Fn`]).
pub type LabelFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// Where each request's label comes from. Labels break the stats and
/// metrics down by endpoint or upstream service; there are at most
/// `max_labels` of them (default 64), and requests beyond go to `other`.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum LabelSource {
    /// No labels: every request is `default`.
    None,
    /// The matched route template on axum (`MatchedPath`, with the `axum`
    /// feature), else the host of an absolute request URI (the upstream
    /// "service" on clients), else `default`.
    #[default]
    Auto,
    /// The host of the request URI (or the `Host` header).
    Host,
    /// The first `n` segments of the request's path: with `1`, `/api/items/7`
    /// is labelled `/api` and `/` is `/`; with `2`, `/api/items`. A
    /// proxy's usual breakdown, and free: the label is a slice of the
    /// path (no allocation per request, as a [`Fn`](Self::Fn) returning a
    /// `String` has). `0` labels every request `/`.
    PathSegments(u8),
    /// A function of the request; `None` means `default`.
    Fn(LabelFn),
}

impl fmt::Debug for LabelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::Auto => f.write_str("Auto"),
            Self::Host => f.write_str("Host"),
            Self::PathSegments(n) => write!(f, "PathSegments({n})"),
            Self::Fn(_) => f.write_str("Fn(..)"),
        }
    }
}

/// The first `n` segments of `path` (see [`LabelSource::PathSegments`]):
/// the path up to, not including, the slash after its `n`th segment; `/`
/// for `n == 0` and for an empty path.
fn path_prefix(path: &str, n: u8) -> &str {
    if n == 0 || path.len() <= 1 {
        return "/";
    }
    let mut seen = 0;
    for (i, b) in path.bytes().enumerate().skip(1) {
        if b == b'/' {
            seen += 1;
            if seen == n {
                return &path[..i];
            }
        }
    }
    path
}

/// The label of requests beyond the bound.
pub const OTHER: &str = "other";
/// The label of requests with none.
pub const DEFAULT: &str = "default";

/// Counters kept per label, indexes into a [`Block`].
pub(crate) mod field {
    pub(crate) const HIT_L1: usize = 0;
    pub(crate) const HIT_L2: usize = 1;
    pub(crate) const STALE: usize = 2;
    pub(crate) const MISS: usize = 3;
    pub(crate) const REVALIDATED: usize = 4;
    pub(crate) const COALESCED: usize = 5;
    pub(crate) const PASS: usize = 6;
    /// Time (ns) of lookups that were not served from storage.
    pub(crate) const LATENCY_NS: usize = 7;
    pub(crate) const STORES: usize = 8;
    pub(crate) const NO_FRESHNESS: usize = 9;
    pub(crate) const COOKIE: usize = 10;
    pub(crate) const AUTHORIZATION: usize = 11;
    pub(crate) const NOT_STORED_OTHER: usize = 12;
    pub(crate) const VARY_MISS: usize = 13;
    pub(crate) const EVICTED_UNREAD: usize = 14;
    pub(crate) const ERRORS: usize = 15;
    /// Time (ns) of lookups served from storage (hits and stale).
    pub(crate) const SERVED_NS: usize = 16;
    /// Lookups served from storage that were timed (fresh L1 hits are
    /// timed one in [`HIT_TIMING_SAMPLE`](crate::observe::HIT_TIMING_SAMPLE)).
    pub(crate) const TIMED_SERVED: usize = 17;
    /// Requests dropped before their answer (a client timeout, a client
    /// gone) on the engine's path.
    pub(crate) const CANCELLED: usize = 18;
    pub(crate) const COUNT: usize = 19;
}

/// How every exporter names the requests one per-label counter counts:
/// the counter (`field`), the `result` and the `tier`. One list for
/// Prometheus, OpenTelemetry and the stats shared through Redis, made from
/// the same typed outcomes (`Outcome::field`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Series {
    pub(crate) field: usize,
    /// `hit`, `stale`, `miss`, `coalesced` (answered from another
    /// request's upstream call), `revalidated`, `pass` or `cancelled`.
    pub(crate) result: &'static str,
    /// `l1` or `l2` for hits, `none` otherwise.
    pub(crate) tier: &'static str,
}

/// Every request ends in exactly one of these.
pub(crate) const SERIES: [Series; 8] = [
    Series {
        field: field::HIT_L1,
        result: "hit",
        tier: "l1",
    },
    Series {
        field: field::HIT_L2,
        result: "hit",
        tier: "l2",
    },
    Series {
        field: field::STALE,
        result: "stale",
        tier: "none",
    },
    Series {
        field: field::MISS,
        result: "miss",
        tier: "none",
    },
    Series {
        field: field::COALESCED,
        result: "coalesced",
        tier: "none",
    },
    Series {
        field: field::REVALIDATED,
        result: "revalidated",
        tier: "none",
    },
    Series {
        field: field::PASS,
        result: "pass",
        tier: "none",
    },
    // Dropped before an answer: no lookup result.
    Series {
        field: field::CANCELLED,
        result: "cancelled",
        tier: "none",
    },
];

/// Stripes per label: one per core, 4 to 16 (a power of two). Every
/// request adds to one of its label's stripes, so on 16 cores each thread
/// has a line of its own, and on 64 four threads share one.
fn stripes() -> usize {
    crate::stats::stripes_for_cores(4, 16)
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Block([AtomicU64; field::COUNT]);

/// One label's counters, striped.
#[derive(Debug)]
pub(crate) struct LabelCounters {
    stripes: Box<[Block]>,
}

impl Default for LabelCounters {
    fn default() -> Self {
        Self {
            stripes: (0..stripes()).map(|_| Block::default()).collect(),
        }
    }
}

impl LabelCounters {
    #[inline]
    pub(crate) fn add(&self, field: usize, n: u64) {
        self.add_at(stripe(), field, n);
    }

    /// [`add`](Self::add) with the thread's stripe already known.
    #[inline]
    pub(crate) fn add_at(&self, stripe: usize, field: usize, n: u64) {
        // The stripe count is a power of two.
        let i = stripe & (self.stripes.len() - 1);
        self.stripes[i].0[field].fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> [u64; field::COUNT] {
        let mut out = [0u64; field::COUNT];
        for b in &self.stripes {
            for (o, c) in out.iter_mut().zip(b.0.iter()) {
                *o += c.load(Ordering::Relaxed);
            }
        }
        out
    }

    fn reset(&self) {
        for b in &self.stripes {
            for c in &b.0 {
                c.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// The label index of requests with no label. Index 1 is `other`.
pub(crate) const DEFAULT_INDEX: u16 = 0;
pub(crate) const OTHER_INDEX: u16 = 1;

static NEXT_TABLE: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// The last label this thread resolved: (table id, name, index).
    static LAST: RefCell<(usize, String, u16)> = const { RefCell::new((0, String::new(), 0)) };
}

/// The bounded set of labels. Indexes are handed out on first sight and
/// never reused; counters for every possible index exist from the start.
pub(crate) struct LabelTable {
    id: usize,
    source: LabelSource,
    index: RwLock<HashMap<Arc<str>, u16>>,
    names: RwLock<Vec<Arc<str>>>,
    counters: Box<[LabelCounters]>,
    /// Set once every index is handed out.
    full: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for LabelTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LabelTable")
            .field("source", &self.source)
            .field("capacity", &self.counters.len())
            .finish_non_exhaustive()
    }
}

impl LabelTable {
    /// A table for up to `max` labels besides `default` and `other`.
    pub(crate) fn new(source: LabelSource, max: usize) -> Self {
        let names: Vec<Arc<str>> = vec![Arc::from(DEFAULT), Arc::from(OTHER)];
        let index = names
            .iter()
            .enumerate()
            .map(|(i, n)| (Arc::clone(n), i as u16))
            .collect();
        Self {
            id: NEXT_TABLE.fetch_add(1, Ordering::Relaxed),
            source,
            index: RwLock::new(index),
            names: RwLock::new(names),
            counters: (0..max + 2).map(|_| LabelCounters::default()).collect(),
            full: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The label index of a request.
    #[inline]
    pub(crate) fn label_of(&self, parts: &Parts) -> u16 {
        match &self.source {
            LabelSource::None => DEFAULT_INDEX,
            LabelSource::Auto => {
                #[cfg(feature = "axum")]
                if let Some(p) = parts.extensions.get::<axum::extract::MatchedPath>() {
                    return self.resolve(p.as_str());
                }
                match parts.uri.authority() {
                    Some(a) => self.resolve_host(a.as_str()),
                    None => DEFAULT_INDEX,
                }
            }
            LabelSource::Host => {
                let authority = parts.uri.authority().map(|a| a.as_str()).or_else(|| {
                    parts
                        .headers
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                });
                match authority {
                    Some(a) => self.resolve_host(a),
                    None => DEFAULT_INDEX,
                }
            }
            LabelSource::PathSegments(n) => self.resolve(path_prefix(parts.uri.path(), *n)),
            LabelSource::Fn(f) => match f(parts) {
                Some(name) => self.resolve(&name),
                None => DEFAULT_INDEX,
            },
        }
    }

    /// The index of the host of `authority` (`[user@]host[:port]`). The
    /// thread's last answer is keyed by the authority as given, so the
    /// host is parsed out only when it changes.
    #[inline]
    fn resolve_host(&self, authority: &str) -> u16 {
        self.resolve_with(authority, |a| {
            let a = a.rsplit_once('@').map_or(a, |(_, h)| h);
            match a.strip_prefix('[') {
                // [v6]:port
                Some(v6) => v6.split_once(']').map_or(a, |(h, _)| h),
                None => a.rsplit_once(':').map_or(a, |(h, _)| h),
            }
        })
    }

    /// The index of `name`, handing out a new one while there is room.
    pub(crate) fn resolve(&self, name: &str) -> u16 {
        self.resolve_with(name, |n| n)
    }

    /// The index of `name(raw)`; the thread's last `raw` and its index are
    /// remembered.
    #[inline]
    fn resolve_with(&self, raw: &str, name: impl Fn(&str) -> &str) -> u16 {
        let name_of = name;
        let cached = LAST
            .try_with(|last| {
                let last = last.borrow();
                (last.0 == self.id && last.1 == raw).then_some(last.2)
            })
            .ok()
            .flatten();
        if let Some(i) = cached {
            return i;
        }
        let i = self.lookup_or_insert(name_of(raw));
        let _ = LAST.try_with(|last| {
            if let Ok(mut last) = last.try_borrow_mut() {
                last.0 = self.id;
                last.1.clear();
                last.1.push_str(raw);
                last.2 = i;
            }
        });
        i
    }

    fn lookup_or_insert(&self, name: &str) -> u16 {
        if let Some(&i) = read(&self.index).get(name) {
            return i;
        }
        // Full: new names are `other` without taking the write locks (a
        // client sending random hosts must not serialise requests).
        if self.full.load(Ordering::Relaxed) {
            return OTHER_INDEX;
        }
        // Labels are for breakdowns, not keys: keep them short.
        let name = truncate(name, 120);
        let mut index = write(&self.index);
        if let Some(&i) = index.get(name) {
            return i;
        }
        let mut names = write(&self.names);
        if names.len() >= self.counters.len() {
            self.full.store(true, Ordering::Relaxed);
            return OTHER_INDEX;
        }
        let i = names.len() as u16;
        let name: Arc<str> = Arc::from(name);
        names.push(Arc::clone(&name));
        index.insert(name, i);
        i
    }

    #[inline]
    pub(crate) fn counters(&self, i: u16) -> &LabelCounters {
        &self.counters[usize::from(i).min(self.counters.len() - 1)]
    }

    /// Every label handed out so far, with its counters.
    pub(crate) fn all(&self) -> Vec<(Arc<str>, [u64; field::COUNT])> {
        let names = read(&self.names).clone();
        names
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n, self.counters[i].read()))
            .collect()
    }

    pub(crate) fn name(&self, i: u16) -> Arc<str> {
        let names = read(&self.names);
        names
            .get(usize::from(i))
            .cloned()
            .unwrap_or_else(|| Arc::from(OTHER))
    }

    pub(crate) fn reset(&self) {
        for c in self.counters.iter() {
            c.reset();
        }
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str) -> Parts {
        http::Request::get(uri).body(()).unwrap().into_parts().0
    }

    #[test]
    fn path_segments_label_by_the_leading_segments() {
        for (path, n, want) in [
            ("/api/items/7", 1, "/api"),
            ("/api/items/7", 2, "/api/items"),
            ("/api/items/7", 3, "/api/items/7"),
            ("/api/items/7", 9, "/api/items/7"),
            ("/api/", 1, "/api"),
            ("/api", 1, "/api"),
            ("/", 1, "/"),
            ("//x", 1, "/"),
            ("/api/items", 0, "/"),
        ] {
            assert_eq!(path_prefix(path, n), want, "{path} {n}");
        }
        let t = LabelTable::new(LabelSource::PathSegments(1), 8);
        let api = t.label_of(&parts("/api/a?q=1"));
        assert_eq!(t.label_of(&parts("/api/b")), api);
        assert_ne!(t.label_of(&parts("/static/x.css")), api);
        let names: Vec<String> = t.all().into_iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, ["default", "other", "/api", "/static"]);
    }

    #[test]
    fn bounded_with_overflow_to_other() {
        let t = LabelTable::new(LabelSource::Host, 3);
        let a = t.label_of(&parts("http://a.example/x"));
        assert_eq!(a, 2);
        assert_eq!(t.label_of(&parts("http://a.example/y")), a);
        assert_eq!(t.label_of(&parts("http://b.example/")), 3);
        assert_eq!(t.label_of(&parts("http://c.example/")), 4);
        // full: the next new host is `other`, known ones keep their index
        assert_eq!(t.label_of(&parts("http://d.example/")), OTHER_INDEX);
        assert_eq!(t.label_of(&parts("http://b.example/")), 3);
        assert_eq!(t.label_of(&parts("/relative")), DEFAULT_INDEX);
        let names: Vec<String> = t.all().into_iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(
            names,
            ["default", "other", "a.example", "b.example", "c.example"]
        );
    }

    #[test]
    fn host_header_and_function_sources() {
        let t = LabelTable::new(LabelSource::Host, 8);
        let mut p = parts("/x");
        p.headers
            .insert(http::header::HOST, "api.example:8080".parse().unwrap());
        let i = t.label_of(&p);
        assert_eq!(&*t.name(i), "api.example");

        let f: LabelFn =
            Arc::new(|p: &Parts| p.uri.path().split('/').nth(1).map(|s| format!("/{s}")));
        let t = LabelTable::new(LabelSource::Fn(f), 8);
        let i = t.label_of(&parts("/users/7"));
        assert_eq!(&*t.name(i), "/users");
        assert_eq!(t.label_of(&parts("/")), t.resolve("/"));

        // hosts without ports, user info or brackets
        let t = LabelTable::new(LabelSource::Auto, 8);
        for (uri, host) in [
            ("http://u:p@h.example:81/x", "h.example"),
            ("http://[::1]:8080/x", "::1"),
            ("http://h.example/x", "h.example"),
        ] {
            assert_eq!(&*t.name(t.label_of(&parts(uri))), host, "{uri}");
        }
    }

    #[test]
    fn two_tables_do_not_share_the_thread_cache() {
        let a = LabelTable::new(LabelSource::Host, 8);
        let b = LabelTable::new(LabelSource::Host, 8);
        b.resolve("first");
        assert_eq!(a.resolve("x"), 2);
        assert_eq!(b.resolve("x"), 3);
        assert_eq!(a.resolve("x"), 2);
    }
}
