//! A stored response and its freshness timeline.

use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, AGE, ETAG, LAST_MODIFIED};
use http::{StatusCode, Version};

/// When an entry is fresh, stale-but-servable and dead, in wall-clock
/// milliseconds since the Unix epoch (so it means the same in every
/// process that reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Timeline {
    /// When the response was received (the RFC 9111 `response_time`).
    pub stored_at: u64,
    /// The response's age when it was received (corrected initial age).
    pub initial_age: u64,
    /// The end of freshness (soft TTL).
    pub fresh_until: u64,
    /// The end of the stale-while-revalidate window (hard TTL): until then a
    /// stale entry is served at once while one background refresh runs.
    pub stale_until: u64,
    /// Until then the entry may be served when the upstream fails.
    pub stale_if_error_until: u64,
    /// The last instant the entry is of any use (stale windows, and the time
    /// it is kept for conditional revalidation when it has validators).
    pub retain_until: u64,
}

impl Timeline {
    /// The freshness lifetime in milliseconds (the TTL the origin gave, net
    /// of the age it arrived with).
    pub fn ttl_millis(&self) -> u64 {
        self.fresh_until.saturating_sub(self.stored_at)
    }

    /// The age of the response at `now`, in milliseconds (RFC 9111 §4.2.3).
    pub fn age_at(&self, now: u64) -> u64 {
        self.initial_age + now.saturating_sub(self.stored_at)
    }

    /// True while `now` is before `fresh_until`.
    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.fresh_until
    }
}

/// How an entry may be used, from the response's directives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct EntryFlags {
    /// `must-revalidate` / `proxy-revalidate` / `s-maxage`: never served stale.
    pub(crate) must_revalidate: bool,
    /// `no-cache`: validated with the origin before every use.
    pub(crate) no_cache: bool,
    /// May answer requests carrying `Authorization` (RFC 9111 §3.5).
    pub(crate) auth_ok: bool,
}

/// The `Vary` value stored for a credential header of a partitioned
/// request, in place of the credentials.
pub(crate) const PARTITIONED: HeaderValue = HeaderValue::from_static("ttc-partitioned-credentials");

/// One stored response.
#[derive(Debug, Clone)]
pub struct Entry {
    pub(crate) key: Box<str>,
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) vary: Box<[(HeaderName, Box<[HeaderValue]>)]>,
    pub(crate) timeline: Timeline,
    pub(crate) flags: EntryFlags,
    /// How many times a failed refresh has extended the stale windows.
    pub(crate) extensions: u32,
    /// Tags for invalidation (from a response header or a tag function).
    pub(crate) tags: Box<[Box<str>]>,
    /// The response headers of a hit, with `Age` and `Cache-Status` slots
    /// already in place: a hit clones it and overwrites two values instead
    /// of rebuilding (and re-hashing) the map. Made on first use; reset
    /// whenever `headers` change.
    pub(crate) template: OnceLock<HeaderMap>,
    /// The label of the request that stored it (for per-label stats).
    pub(crate) label: u16,
    /// Reads from L1, counted up to a small cap (for eager refresh and
    /// for spotting entries evicted before any reuse).
    pub(crate) reads: Reads,
}

/// A saturating read counter that clones as a fresh count of zero.
#[derive(Debug, Default)]
pub(crate) struct Reads(std::sync::atomic::AtomicU32);

impl Clone for Reads {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl Reads {
    /// Counts a read up to `cap`; past it this is a plain load (no write
    /// to a line other threads read).
    #[inline]
    pub(crate) fn note(&self, cap: u32) -> u32 {
        use std::sync::atomic::Ordering::Relaxed;
        let n = self.0.load(Relaxed);
        if n < cap {
            self.0.fetch_add(1, Relaxed) + 1
        } else {
            n
        }
    }

    pub(crate) fn get(&self) -> u32 {
        self.0.load(std::sync::atomic::Ordering::Relaxed) & !(1 << 31)
    }

    /// Marks the entry as already refreshed early (no second refresh).
    pub(crate) fn claim_refresh(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.0.fetch_or(1 << 31, Relaxed) & (1 << 31) == 0
    }
}

impl Entry {
    /// The readable cache key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The stored status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stored response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The stored body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The freshness timeline.
    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// The URL path the entry was stored for, read from its key (for keys
    /// made by a custom key function: the whole key).
    pub fn path(&self) -> &str {
        key_path(&self.key)
    }

    /// The entry's invalidation tags.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.tags.iter().map(|t| &**t)
    }

    /// The request header values this variant was selected by (from `Vary`).
    pub fn vary(&self) -> impl Iterator<Item = (&HeaderName, &[HeaderValue])> {
        self.vary.iter().map(|(n, v)| (n, &v[..]))
    }

    /// The hit-response header map (see `template`).
    pub(crate) fn response_headers(&self) -> &HeaderMap {
        self.template.get_or_init(|| {
            self.build_response_headers(HeaderValue::from_static("0"), crate::cache::STATUS_HIT_L1)
        })
    }

    /// The stored headers plus `Age` and `Cache-Status`, in a map sized for
    /// them. `Age` and `Cache-Status` are its first two entries, each with
    /// one value (stored ones are replaced), so that a hit can overwrite
    /// them in place through [`set_hit_slots`] without hashing their names.
    pub(crate) fn build_response_headers(
        &self,
        age: HeaderValue,
        status: HeaderValue,
    ) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(self.headers.len() + 2);
        h.insert(AGE, age);
        h.insert(crate::cache::CACHE_STATUS.clone(), status);
        for (name, value) in self.headers.iter() {
            if name != AGE && name != crate::cache::CACHE_STATUS {
                h.append(name.clone(), value.clone());
            }
        }
        h
    }

    pub(crate) fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(ETAG)
    }

    pub(crate) fn last_modified(&self) -> Option<&HeaderValue> {
        self.headers.get(LAST_MODIFIED)
    }

    /// True when the entry can be revalidated with a conditional request.
    pub fn has_validators(&self) -> bool {
        self.etag().is_some() || self.last_modified().is_some()
    }

    /// Whether a request's headers select this variant.
    pub(crate) fn vary_matches(&self, req: &HeaderMap) -> bool {
        self.vary.iter().all(|(name, stored)| {
            if stored.len() == 1 && stored[0] == PARTITIONED {
                // Stored under a credentials partition, which pins these
                // values already: only their presence is checked.
                return req.contains_key(name);
            }
            let mut it = req.get_all(name).iter();
            for s in stored.iter() {
                match it.next() {
                    Some(v) if v.as_bytes().trim_ascii() == s.as_bytes().trim_ascii() => {}
                    _ => return false,
                }
            }
            it.next().is_none()
        })
    }

    /// An approximation of the memory the entry holds, used as its L1 weight.
    pub fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 48)
            .sum();
        let vary: usize = self
            .vary
            .iter()
            .map(|(k, v)| k.as_str().len() + v.iter().map(|x| x.len() + 32).sum::<usize>())
            .sum();
        // Headers count twice: the stored map and the hit-response template.
        (self.body.len() + 2 * headers + vary + self.key.len() + 160) as u64
    }
}

/// The path part of a readable key: `GET [scheme:][//authority]/path[?q][\n...]`.
pub(crate) fn key_path(key: &str) -> &str {
    let Some(mut r) = key.strip_prefix("GET ") else {
        return key;
    };
    if let Some(i) = r.find("//") {
        if !r[..i].contains('/') {
            r = &r[i + 2..];
            r = &r[r.find('/').unwrap_or(r.len())..];
        }
    }
    let end = r.find(['?', '\n']).unwrap_or(r.len());
    &r[..end]
}

/// Sets `Age` and `Cache-Status` in a map made by
/// [`Entry::build_response_headers`] (or a clone of one): they are its
/// first two values, reached by iteration rather than by hashed look-ups.
pub(crate) fn set_hit_slots(headers: &mut HeaderMap, age: HeaderValue, status: HeaderValue) {
    let mut it = headers.iter_mut();
    match (it.next(), it.next()) {
        (Some((n1, v1)), Some((n2, v2))) if *n1 == AGE && *n2 == crate::cache::CACHE_STATUS => {
            *v1 = age;
            *v2 = status;
        }
        _ => {
            // Not a template: never the case, but stay correct.
            headers.insert(AGE, age);
            headers.insert(crate::cache::CACHE_STATUS.clone(), status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::key_path;

    #[test]
    fn paths_from_keys() {
        for (key, path) in [
            ("GET http://a.example/x/y?q=1", "/x/y"),
            ("GET //host:8080/p", "/p"),
            ("GET /only/path", "/only/path"),
            ("GET https://h/p?x\nx-tenant:1", "/p"),
            ("GET //h", ""),
            ("custom-key", "custom-key"),
        ] {
            assert_eq!(key_path(key), path, "{key}");
        }
    }
}
