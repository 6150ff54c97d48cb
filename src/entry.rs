//! A stored response and its freshness timeline.

use std::any::Any;
use std::sync::{Arc, OnceLock};

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
    /// Saturates at `u64::MAX` rather than wrapping.
    pub fn age_at(&self, now: u64) -> u64 {
        self.initial_age
            .saturating_add(now.saturating_sub(self.stored_at))
    }

    /// True while `now` is before `fresh_until`.
    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.fresh_until
    }

    /// This timeline with a freshness lifetime of `lifetime` ms: freshness
    /// ends that long after `stored_at`, less the age the response arrived
    /// with; the stale windows and the time kept for revalidation keep
    /// their lengths after it (adaptive TTL).
    pub(crate) fn with_lifetime(self, lifetime: u64) -> Self {
        let fresh_until = self
            .stored_at
            .saturating_add(lifetime.saturating_sub(self.initial_age));
        let after = |t: u64| fresh_until.saturating_add(t.saturating_sub(self.fresh_until));
        Self {
            fresh_until,
            stale_until: after(self.stale_until),
            stale_if_error_until: after(self.stale_if_error_until),
            retain_until: after(self.retain_until),
            ..self
        }
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
    /// Reads, counted up to a cap (for eager refresh, adaptive TTL and
    /// for spotting entries evicted before any reuse).
    pub(crate) reads: Reads,
    /// Set on a typed value's entry (a value cache's): the body is the
    /// value's serialised form.
    pub(crate) value: Option<Box<ValueMeta>>,
}

/// What a typed value's entry carries besides its serialised form: the
/// codec and type it was written with (stored, so that a read by another
/// codec or type is refused) and the value itself (not stored: kept in L1
/// so that a hit deserialises nothing).
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "values"), allow(dead_code))]
pub(crate) struct ValueMeta {
    /// The id of the codec that wrote the body.
    pub(crate) codec: u8,
    /// A hash naming the value's type.
    pub(crate) type_tag: u64,
    /// The decoded value: set when the entry is made from a value, or on
    /// its first typed read.
    pub(crate) payload: OnceLock<Arc<dyn Any + Send + Sync>>,
    /// The memory the decoded value holds, as its value cache weighs it:
    /// set with the payload (see [`ValueMeta::decoded`]). Until then the
    /// weight assumes [`VALUE_WEIGHT_FACTOR`] times the serialised size.
    pub(crate) decoded_weight: OnceLock<u64>,
}

/// How many times its serialised size a decoded value is assumed to hold
/// when its value cache has no weigher of its own: conservative for
/// JSON, whose worst case among the standard types is near it (`""` and
/// `[]`, 2 bytes and a comma, decode to 24-byte `String`s and `Vec`s).
pub(crate) const VALUE_WEIGHT_FACTOR: u64 = 8;

/// The most a decoded value is taken to weigh (1 TiB): more than any L1.
const MAX_DECODED_WEIGHT: u64 = 1 << 40;

impl ValueMeta {
    /// The meta of a value written by codec `codec` for type `type_tag`,
    /// with its decoded form if known.
    pub(crate) fn new(
        codec: u8,
        type_tag: u64,
        payload: Option<Arc<dyn Any + Send + Sync>>,
    ) -> Self {
        let cell = OnceLock::new();
        if let Some(p) = payload {
            let _ = cell.set(p);
        }
        Self {
            codec,
            type_tag,
            payload: cell,
            decoded_weight: OnceLock::new(),
        }
    }

    /// Keeps `value`, the decoded form, weighing `weight` bytes (the
    /// first one set stays). Called before the entry can enter L1 (when it
    /// is made, or on the typed read that precedes a promotion), so the
    /// entry's weight never changes while L1 holds it.
    #[cfg_attr(not(feature = "values"), allow(dead_code))]
    pub(crate) fn decoded(&self, value: Arc<dyn Any + Send + Sync>, weight: u64) {
        let _ = self.decoded_weight.set(weight);
        let _ = self.payload.set(value);
    }
}

/// Separates a value cache's name from what it names, in the readable key
/// (`{name}\x1f{key}`) and tags (`{name}\x1f{tag}`) of its entries. Names
/// have no control character, and HTTP paths and tags none either, so a
/// value cache's entries never match an HTTP invalidation (nor another
/// value cache's). A prefix invalidation that starts with it names value
/// keys: `\x1f{name}\x1f{prefix}` (see [`Entry::matches_prefix`]).
pub(crate) const VALUE_SCOPE: char = '\x1f';

thread_local! {
    /// This thread's reads left before its next sampled one, for
    /// [`Reads::note`].
    static READS_LEFT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// How far [`Reads::note`] counts: every read up to `exact`, then one in
/// `sample` (adding `sample`) up to `most`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadCap {
    exact: u32,
    most: u32,
    sample: u32,
}

impl ReadCap {
    /// The largest `sample`: a count grows by at most this much per read,
    /// far below the flags however many threads race past `most`.
    pub(crate) const MAX_SAMPLE: u32 = 1 << 10;

    /// Every read counted, up to `cap` (at most [`Reads::MAX_CAP`]).
    pub(crate) const fn exact(cap: u32) -> Self {
        let cap = if cap < Reads::MAX_CAP {
            cap
        } else {
            Reads::MAX_CAP
        };
        Self {
            exact: cap,
            most: cap,
            sample: 1,
        }
    }

    /// Every read up to `exact`, then one in `sample` (1 to
    /// [`MAX_SAMPLE`](Self::MAX_SAMPLE)) up to `most` (at most
    /// [`Reads::MAX_CAP`]).
    pub(crate) fn sampled(exact: u32, most: u32, sample: u32) -> Self {
        let most = most.min(Reads::MAX_CAP);
        let sample = sample.clamp(1, Self::MAX_SAMPLE);
        // A sample of 1 counts every read: exactly, all the way.
        let exact = if sample == 1 { most } else { exact.min(most) };
        Self {
            exact,
            most,
            sample,
        }
    }

    /// The count past which reads are no longer counted.
    #[cfg(test)]
    pub(crate) fn most(&self) -> u32 {
        self.most
    }
}

/// A saturating read counter that clones as a fresh count of zero.
///
/// The low bits count reads since the count was last
/// [taken](Self::take); two flags say whether the entry was ever read and
/// whether its early refresh was claimed.
#[derive(Debug, Default)]
pub(crate) struct Reads(std::sync::atomic::AtomicU32);

impl Clone for Reads {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl Reads {
    /// Set once an early refresh was claimed.
    const CLAIMED: u32 = 1 << 31;
    /// Set once a count was taken that was not zero.
    const WAS_READ: u32 = 1 << 30;
    /// The bits that count.
    const COUNT: u32 = Self::WAS_READ - 1;
    /// The highest cap [`note`](Self::note) takes: far enough below the
    /// flags that threads racing past the cap (each adding at most
    /// [`ReadCap::MAX_SAMPLE`]) cannot reach them.
    pub(crate) const MAX_CAP: u32 = 1 << 24;

    /// Counts a read as `cap` says: one by one up to `cap.exact`, then
    /// one read in `cap.sample` per thread adding `cap.sample` (so a hot
    /// key's hits do not all write to the entry's line), up to `cap.most`;
    /// past it this is a plain load. Returns the count.
    #[inline]
    pub(crate) fn note(&self, cap: ReadCap) -> u32 {
        use std::sync::atomic::Ordering::Relaxed;
        let n = self.0.load(Relaxed) & Self::COUNT;
        let by = if n < cap.exact {
            1
        } else if n < cap.most && crate::sample::one_in(&READS_LEFT, cap.sample) {
            cap.sample
        } else {
            return n;
        };
        (self.0.fetch_add(by, Relaxed).wrapping_add(by)) & Self::COUNT
    }

    /// Whether the entry was ever read.
    pub(crate) fn was_read(&self) -> bool {
        let v = self.0.load(std::sync::atomic::Ordering::Relaxed);
        v & (Self::COUNT | Self::WAS_READ) != 0
    }

    /// The reads counted since the last call, which starts the count again
    /// (each read is taken once, whoever takes it).
    pub(crate) fn take(&self) -> u32 {
        use std::sync::atomic::Ordering::Relaxed;
        let mut taken = 0;
        let _ = self.0.fetch_update(Relaxed, Relaxed, |v| {
            taken = v & Self::COUNT;
            let read = if taken > 0 { Self::WAS_READ } else { 0 };
            Some((v & !Self::COUNT) | read)
        });
        taken
    }

    /// Marks the entry as already refreshed early (no second refresh).
    pub(crate) fn claim_refresh(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.0.fetch_or(Self::CLAIMED, Relaxed) & Self::CLAIMED == 0
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

    /// Whether a prefix invalidation of `prefix` removes this entry: a
    /// plain prefix names URL paths of HTTP entries; one starting with
    /// [`VALUE_SCOPE`] names readable keys of values.
    pub(crate) fn matches_prefix(&self, prefix: &str) -> bool {
        match prefix.strip_prefix(VALUE_SCOPE) {
            Some(keys) => self.value.is_some() && self.key.starts_with(keys),
            None => self.value.is_none() && self.path().starts_with(prefix),
        }
    }

    /// The entry's invalidation tags.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.tags.iter().map(|t| &**t)
    }

    /// The request header values this variant was selected by (from `Vary`),
    /// as that request sent them. Requests whose values have the same normal
    /// form (lines combined, whitespace around list members trimmed, and for
    /// `Accept`, `Accept-Encoding` and `Accept-Language` members in any order
    /// and case) select it too.
    pub fn vary(&self) -> impl Iterator<Item = (&HeaderName, &[HeaderValue])> {
        self.vary.iter().map(|(n, v)| (n, &v[..]))
    }

    /// The hit-response header map (see `template`).
    pub(crate) fn response_headers(&self) -> &HeaderMap {
        self.template.get_or_init(|| {
            self.build_response_headers(HeaderValue::from_static("0"), crate::status::STATUS_HIT_L1)
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
        let mut h = HeaderMap::with_capacity(self.headers.keys_len() + 2);
        h.insert(AGE, age);
        h.insert(crate::status::CACHE_STATUS.clone(), status);
        for (name, value) in self.headers.iter() {
            if name != AGE && name != crate::status::CACHE_STATUS {
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

    /// Whether a request's headers select this variant: each field the
    /// response varies on has the same normal form (`key::vary`: lines
    /// combined, members trimmed, `Accept*` members sorted and lowercased)
    /// in the request as in the one that stored it (RFC 9111 §4.1).
    pub(crate) fn vary_matches(&self, req: &HeaderMap) -> bool {
        self.vary.iter().all(|(name, stored)| {
            if stored.len() == 1 && stored[0] == PARTITIONED {
                // Stored under a credentials partition, which pins these
                // values already: only their presence is checked.
                return req.contains_key(name);
            }
            same_lines(stored, req.get_all(name))
                || crate::key::vary::same_normal_form(name, stored.iter(), req.get_all(name))
        })
    }

    /// The memory the entry holds, in bytes, used as its L1 weight: the
    /// key, body, headers (names, values and the map's slots), the `Vary`
    /// values, the tags, the hit-response template (counted whether or
    /// not it has been built yet), the entry itself and its L1 slot, each
    /// allocation with the allocator's own overhead; for a typed value,
    /// its decoded form too, as its value cache weighs it (by default 8
    /// times its serialised size). It is honest only
    /// because entries own exactly what they keep: what is stored is
    /// copied out of the buffers it arrived in.
    pub fn weight(&self) -> u64 {
        let extras = self.headers.len() - self.headers.keys_len();
        let headers = table_weight(self.headers.capacity(), extras)
            + self
                .headers
                .keys()
                .map(|n| chunk(n.as_str().len()))
                .sum::<usize>()
            + self.headers.values().map(|v| chunk(v.len())).sum::<usize>();
        // The template: a map sized for the headers plus `Age` and
        // `Cache-Status`, whose names and values share the stored ones (a
        // first clone of a copied `Bytes` allocates its shared header).
        let template = table_weight(map_capacity(self.headers.keys_len() + 2), extras)
            + (self.headers.keys_len() + self.headers.len()) * chunk(SHARED);
        // A variant also has its hash in its URL's index (a list that
        // doubles as it grows: two hashes' room per variant).
        let vary = if self.vary.is_empty() {
            0
        } else {
            4 * size_of::<u64>()
                + chunk(self.vary.len() * size_of::<(HeaderName, Box<[HeaderValue]>)>())
                + self
                    .vary
                    .iter()
                    .map(|(n, v)| {
                        chunk(n.as_str().len())
                            + chunk(v.len() * size_of::<HeaderValue>())
                            + v.iter().map(|x| chunk(x.len())).sum::<usize>()
                    })
                    .sum::<usize>()
        };
        let tags = if self.tags.is_empty() {
            0
        } else {
            chunk(self.tags.len() * size_of::<Box<str>>())
                + self.tags.iter().map(|t| chunk(t.len())).sum::<usize>()
        };
        let body = if self.body.is_empty() {
            0
        } else {
            chunk(self.body.len()) + chunk(SHARED)
        };
        // A value's meta, and its decoded form (in its `Arc`) as its value
        // cache weighs it, or estimated from its serialised size.
        let value = self.value.as_ref().map_or(0, |meta| {
            let decoded = meta
                .decoded_weight
                .get()
                .copied()
                .unwrap_or_else(|| VALUE_WEIGHT_FACTOR.saturating_mul(self.body.len() as u64));
            // Bounded so that a weigher's huge answer cannot overflow: any
            // entry that heavy is refused by L1 anyway.
            let decoded = decoded.min(MAX_DECODED_WEIGHT) as usize;
            chunk(size_of::<ValueMeta>()) + chunk(2 * size_of::<usize>() + decoded)
        });
        (ENTRY_OVERHEAD + chunk(self.key.len()) + body + headers + template + vary + tags + value)
            as u64
    }
}

/// What `Bytes` allocates when a buffer it owns alone is first shared
/// (its `Shared` header: buffer, capacity, reference count).
const SHARED: usize = 3 * size_of::<usize>();

/// One slot of a `HeaderMap`'s entry table (hash, name, value, links).
const BUCKET: usize = size_of::<HeaderName>() + size_of::<HeaderValue>() + 4 * size_of::<usize>();

/// One extra value of a multi-valued header (value and two links).
const EXTRA_VALUE: usize = size_of::<HeaderValue>() + 4 * size_of::<usize>();

/// A value's slot in L1: key, value and metadata in quick_cache's tables.
pub(crate) const SLOT_OVERHEAD: usize = 64;

/// The entry's own allocation (in its `Arc`) and its slot in L1.
const ENTRY_OVERHEAD: usize =
    MALLOC_OVERHEAD + 2 * size_of::<usize>() + size_of::<Entry>() + SLOT_OVERHEAD;

/// What the allocator adds to an allocation (glibc: an 8-byte header,
/// 16-byte granularity, 32 bytes at least).
const MALLOC_OVERHEAD: usize = 8;

/// The memory an allocation of `n` bytes takes (none for `n == 0`).
pub(crate) fn chunk(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (n + MALLOC_OVERHEAD).next_multiple_of(16).max(32)
    }
}

/// The slots `HeaderMap::with_capacity(n)` makes room for (mirrors `http`:
/// a power of two over `n + n/3`, three quarters of it usable).
fn map_capacity(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let raw = (n + n / 3).next_power_of_two();
    raw - raw / 4
}

/// The tables of a header map with `capacity` slots and `extras` values
/// beyond the first of each name.
fn table_weight(capacity: usize, extras: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    // The index table: 4 bytes a position, a third more than the slots.
    let indices = chunk(capacity.div_ceil(3) * 4 * 4);
    let extra_table = if extras == 0 {
        0
    } else {
        chunk(extras.next_power_of_two().max(4) * EXTRA_VALUE)
    };
    indices + chunk(capacity * BUCKET) + extra_table
}

/// A copy of `data` in an allocation of its own, sized to it.
///
/// A `Bytes` handed over by hyper (a body frame, a header value) is a view
/// into the connection's read buffer: keeping it keeps the whole buffer
/// (hundreds of KB behind a 1 KB entry), whatever the entry weighs. What
/// an entry keeps is copied through here when it is stored.
pub(crate) fn owned_bytes(data: &[u8]) -> Bytes {
    if data.is_empty() {
        Bytes::new()
    } else {
        Bytes::copy_from_slice(data)
    }
}

/// A copy of a header value in an allocation sized to it (see
/// [`owned_bytes`]); its sensitivity is kept.
pub(crate) fn owned_value(value: &HeaderValue) -> HeaderValue {
    match HeaderValue::from_bytes(value.as_bytes()) {
        Ok(mut v) => {
            v.set_sensitive(value.is_sensitive());
            v
        }
        // Unreachable: the bytes were a valid value already.
        Err(_) => value.clone(),
    }
}

/// Whether `stored` and `req` are the same lines, each trimmed: the
/// common case, which needs no normal form (the same lines have the same).
fn same_lines(stored: &[HeaderValue], req: http::header::GetAll<'_, HeaderValue>) -> bool {
    let mut it = req.iter();
    for s in stored {
        match it.next() {
            Some(v) if v.as_bytes().trim_ascii() == s.as_bytes().trim_ascii() => {}
            _ => return false,
        }
    }
    it.next().is_none()
}

/// A copy of a header map, sized to its names, whose values are owned
/// copies (see [`owned_bytes`]). Names need no copy: `http` makes them
/// from copied bytes (or static ones).
pub(crate) fn owned_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.keys_len());
    for (name, value) in headers {
        out.append(name.clone(), owned_value(value));
    }
    out
}

/// The `Vary` values to store: owned copies (see [`owned_bytes`]).
pub(crate) fn owned_vary_values<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
) -> Box<[HeaderValue]> {
    values.map(owned_value).collect()
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
        (Some((n1, v1)), Some((n2, v2))) if *n1 == AGE && *n2 == crate::status::CACHE_STATUS => {
            *v1 = age;
            *v2 = status;
        }
        _ => {
            // Not a template: never the case, but stay correct.
            headers.insert(AGE, age);
            headers.insert(crate::status::CACHE_STATUS.clone(), status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use tower::{service_fn, Layer, ServiceExt};

    use crate::{Cache, CacheLayer};

    /// Whether any byte the entry keeps lies in a buffer other than its own
    /// allocations: every value and the body must be sized to their data.
    fn assert_owned(e: &Entry, bufs: &[&Bytes]) {
        let inside = |p: *const u8| bufs.iter().any(|b| b.as_ptr_range().contains(&p));
        assert!(
            e.body.is_empty() || !inside(e.body.as_ptr()),
            "body is a view"
        );
        for (n, v) in &e.headers {
            assert!(!inside(v.as_bytes().as_ptr()), "{n} is a view");
        }
        for (n, vals) in e.vary() {
            for v in vals {
                assert!(!inside(v.as_bytes().as_ptr()), "vary {n} is a view");
            }
        }
    }

    #[test]
    fn owned_copies_are_sized_to_their_data() {
        let wire = Bytes::from(vec![b'w'; 64 * 1024]);
        let inside = |p: *const u8| wire.as_ptr_range().contains(&p);
        let view = wire.slice(10..20);
        let owned = owned_bytes(&view);
        assert_eq!(owned, view);
        assert!(!inside(owned.as_ptr()));
        assert!(owned_bytes(&[]).is_empty());

        let mut v = HeaderValue::from_maybe_shared(wire.slice(0..8)).unwrap();
        v.set_sensitive(true);
        let o = owned_value(&v);
        assert_eq!(o, v);
        assert!(o.is_sensitive());
        assert!(!inside(o.as_bytes().as_ptr()));

        let mut map = HeaderMap::new();
        map.append("x-a", v.clone());
        map.append(
            "x-a",
            HeaderValue::from_maybe_shared(wire.slice(8..9)).unwrap(),
        );
        map.append(
            ETAG,
            HeaderValue::from_maybe_shared(wire.slice(9..12)).unwrap(),
        );
        let o = owned_headers(&map);
        assert_eq!(o, map);
        assert!(o.values().all(|v| !inside(v.as_bytes().as_ptr())));
        let vals = owned_vary_values(map.get_all("x-a").iter());
        assert_eq!(vals.len(), 2);
        assert!(vals.iter().all(|v| !inside(v.as_bytes().as_ptr())));
    }

    /// Through the engine: a response whose body and header values are
    /// views into a large buffer (as hyper hands them over), for a request
    /// whose `Vary`-selected value is one too, is stored as copies; so is
    /// a 304's header that freshens the entry.
    #[tokio::test]
    async fn stored_entries_keep_no_view_into_the_wire() {
        let origin_wire = Bytes::from(vec![b'o'; 256 * 1024]);
        let client_wire = Bytes::from(vec![b'c'; 256 * 1024]);
        let calls = Arc::new(AtomicUsize::new(0));
        let (w, n) = (origin_wire.clone(), Arc::clone(&calls));
        let origin = service_fn(move |_req: Request<()>| {
            let w = w.clone();
            let call = n.fetch_add(1, Ordering::SeqCst);
            async move {
                let view =
                    |r: std::ops::Range<usize>| HeaderValue::from_maybe_shared(w.slice(r)).unwrap();
                let b = Response::builder()
                    .header("cache-control", "max-age=0")
                    .header("etag", "\"v1\"")
                    .header("vary", "accept-encoding")
                    .header("x-origin", view(0..16));
                let resp = if call == 0 {
                    b.body(Full::new(w.slice(100..1100))).unwrap()
                } else {
                    b.status(304)
                        .header("x-fresh", view(200..216))
                        .body(Full::new(Bytes::new()))
                        .unwrap()
                };
                Ok::<_, std::convert::Infallible>(resp)
            }
        });
        let cache = Cache::builder().build().unwrap();
        let svc = CacheLayer::new(cache.clone()).layer(origin);
        let request = || {
            let mut req = Request::get("http://example.com/x").body(()).unwrap();
            req.headers_mut().insert(
                http::header::ACCEPT_ENCODING,
                HeaderValue::from_maybe_shared(client_wire.slice(0..4)).unwrap(),
            );
            req
        };
        let resp = svc.clone().oneshot(request()).await.unwrap();
        assert_eq!(
            resp.into_body().collect().await.unwrap().to_bytes().len(),
            1000
        );
        let stored = cache.shared.tiers.l1.sample(8);
        assert_eq!(stored.len(), 1);
        assert_owned(&stored[0], &[&origin_wire, &client_wire]);
        assert_eq!(stored[0].vary().count(), 1);

        // `max-age=0`: revalidated, freshened by the 304.
        let resp = svc.oneshot(request()).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let stored = cache.shared.tiers.l1.sample(8);
        assert_eq!(stored.len(), 1);
        assert!(
            stored[0].headers.contains_key("x-fresh"),
            "{:?}",
            stored[0].headers
        );
        assert_owned(&stored[0], &[&origin_wire, &client_wire]);
    }

    #[test]
    fn weight_counts_what_the_entry_holds() {
        let base = Entry {
            key: "GET http://example.com/".into(),
            ..crate::store::codec::tests::minimal()
        };
        let w0 = base.weight();
        assert!(w0 >= size_of::<Entry>() as u64, "{w0}");
        let mut e = base.clone();
        e.body = Bytes::from(vec![0; 10_000]);
        assert!(e.weight() >= w0 + 10_000 - 64);
        let mut e = base.clone();
        e.key = "k".repeat(5000).into();
        assert!(e.weight() >= w0 + 5000 - 64);
        let mut e = base.clone();
        e.tags = vec!["t".repeat(3000).into()].into_boxed_slice();
        assert!(e.weight() >= w0 + 3000 - 64);
        let mut e = base.clone();
        e.vary = vec![(
            http::header::ACCEPT_ENCODING,
            vec![HeaderValue::from_str(&"g".repeat(4000)).unwrap()].into_boxed_slice(),
        )]
        .into_boxed_slice();
        assert!(e.weight() >= w0 + 4000 - 64);
        // Headers: their bytes, and a slot each in the map and the template.
        let mut e = base.clone();
        for i in 0..20 {
            e.headers.append(
                HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        assert!(e.weight() >= w0 + 20 * 2 * 100, "{} vs {w0}", e.weight());
    }

    /// The lib tests' allocator, counting (for
    /// `weight_is_what_the_allocator_holds`).
    #[global_allocator]
    static ALLOCATOR: &stats_alloc::StatsAlloc<std::alloc::System> =
        &stats_alloc::INSTRUMENTED_SYSTEM;

    /// The weight is what the allocator really holds for a stored entry
    /// (in its `Arc`, with its hit template built and its body shared) plus
    /// its L1 slot: never less, and not more than the blocks' rounding over,
    /// for each part an entry can be heavy in. Entries are built from their
    /// parts as the flow stores them ([`owned_headers`] and the rest), from
    /// sources made before the measurement starts.
    ///
    /// The allocator counts every thread's allocations, so the test runs
    /// itself again in a process of its own, where no other test runs.
    #[test]
    fn weight_is_what_the_allocator_holds() {
        const ALONE: &str = "TOWER_TIERED_CACHE_MEASURE_ALONE";
        const NAME: &str = "entry::tests::weight_is_what_the_allocator_holds";
        if std::env::var_os(ALONE).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", NAME, "--test-threads=1", "--nocapture"])
                .env(ALONE, "1")
                .output()
                .expect("run the test binary again");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            println!("{text}");
            assert!(out.status.success() && text.contains("1 passed"), "{text}");
            return;
        }
        use std::sync::Arc;

        // Source headers: custom and standard names, multi-valued ones, an
        // `Age` and a `Cache-Status` the template replaces.
        let mut source = HeaderMap::new();
        for i in 0..40 {
            let name = HeaderName::from_bytes(format!("x-header-{i}").as_bytes()).unwrap();
            source.append(
                name.clone(),
                HeaderValue::from_str(&"v".repeat(i * 7)).unwrap(),
            );
            if i % 3 == 0 {
                source.append(name, HeaderValue::from_static("second value"));
            }
        }
        source.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/html"),
        );
        source.insert(http::header::AGE, HeaderValue::from_static("12"));
        source.insert(
            crate::status::CACHE_STATUS.clone(),
            HeaderValue::from_static("upstream; hit"),
        );
        let body = vec![7u8; 100_000];
        let key = format!("GET http://example.com/{}", "p".repeat(3_000));
        let vary_source = [
            HeaderValue::from_str(&"gzip, br, ".repeat(300)).unwrap(),
            HeaderValue::from_static("deflate"),
        ];
        let tags: Vec<String> = (0..30)
            .map(|i| format!("tag-{i}-{}", "t".repeat(i * 11)))
            .collect();

        type Build<'a> = Box<dyn Fn() -> Entry + 'a>;
        let minimal = crate::store::codec::tests::minimal;
        let shapes: Vec<(&str, Build<'_>)> = vec![
            (
                "minimal",
                Box::new(|| Entry {
                    key: "GET /".into(),
                    ..minimal()
                }),
            ),
            (
                "body",
                Box::new(|| Entry {
                    body: owned_bytes(&body),
                    ..minimal()
                }),
            ),
            (
                "key",
                Box::new(|| Entry {
                    key: key.as_str().into(),
                    ..minimal()
                }),
            ),
            (
                "headers",
                Box::new(|| Entry {
                    headers: owned_headers(&source),
                    ..minimal()
                }),
            ),
            (
                "vary",
                Box::new(|| Entry {
                    vary: vec![
                        (
                            http::header::ACCEPT_ENCODING,
                            owned_vary_values(vary_source.iter()),
                        ),
                        (
                            HeaderName::from_bytes(b"x-custom-vary-name").unwrap(),
                            owned_vary_values(vary_source[1..].iter()),
                        ),
                        (http::header::ACCEPT_LANGUAGE, Box::new([]) as Box<[_]>),
                    ]
                    .into_boxed_slice(),
                    ..minimal()
                }),
            ),
            (
                "tags",
                Box::new(|| Entry {
                    tags: tags.iter().map(|t| Box::from(t.as_str())).collect(),
                    ..minimal()
                }),
            ),
            (
                "value",
                Box::new(|| {
                    // A decoded value of 10 000 bytes, as its weigher says.
                    let payload: Arc<dyn std::any::Any + Send + Sync> = Arc::new(vec![1u8; 10_000]);
                    let meta = ValueMeta {
                        codec: 1,
                        type_tag: 7,
                        payload: payload.into(),
                        decoded_weight: (size_of::<Vec<u8>>() as u64 + 10_000).into(),
                    };
                    Entry {
                        value: Some(Box::new(meta)),
                        ..minimal()
                    }
                }),
            ),
            (
                "everything",
                Box::new(|| Entry {
                    key: key.as_str().into(),
                    headers: owned_headers(&source),
                    body: owned_bytes(&body),
                    vary: vec![(
                        http::header::ACCEPT_ENCODING,
                        owned_vary_values(vary_source.iter()),
                    )]
                    .into_boxed_slice(),
                    tags: tags.iter().map(|t| Box::from(t.as_str())).collect(),
                    ..minimal()
                }),
            ),
        ];
        let mut wrong = Vec::new();
        for (name, build) in &shapes {
            let region = stats_alloc::Region::new(ALLOCATOR);
            let entry = Arc::new(build());
            // A first hit builds the template, and shares the body.
            let _ = entry.response_headers();
            let shared = entry.body.clone();
            let change = region.change();
            drop(shared);
            let requested = change.bytes_allocated as i64 - change.bytes_deallocated as i64
                + change.bytes_reallocated as i64;
            let blocks = change.allocations as i64 - change.deallocations as i64;
            // The allocator takes 8 to 31 bytes more than asked for each
            // block (glibc: an 8-byte header, 16-byte granularity, 32 bytes
            // at least), and L1 a slot.
            let least = requested + 8 * blocks + SLOT_OVERHEAD as i64;
            let most = requested + 31 * blocks + SLOT_OVERHEAD as i64;
            let weight = entry.weight() as i64;
            // What the model rounds differently from the allocator: a few
            // blocks, none in proportion to a size.
            let slack = 160;
            println!("{name}: weight {weight}, held {least}..={most} bytes in {blocks} blocks");
            if weight < least || weight > most + slack {
                wrong.push(name);
            }
        }
        assert!(wrong.is_empty(), "the weight is wrong for {wrong:?}");
    }

    /// RFC 9111 §4.1: the stored request values and a request's are
    /// compared in their normal form; credentials stored as a placeholder
    /// are only checked for presence.
    #[test]
    fn rfc9111_4_1_vary_matches_normal_forms() {
        let with = |vary: &[(HeaderName, &[&str])]| Entry {
            vary: vary
                .iter()
                .map(|(n, vals)| {
                    let vals: Box<[HeaderValue]> = vals
                        .iter()
                        .map(|v| HeaderValue::from_str(v).unwrap())
                        .collect();
                    (n.clone(), vals)
                })
                .collect(),
            ..crate::store::codec::tests::minimal()
        };
        let req = |headers: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in headers {
                h.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            h
        };
        let ae = http::header::ACCEPT_ENCODING;
        let al = http::header::ACCEPT_LANGUAGE;
        let x = HeaderName::from_static("x-a");
        let e = with(&[(ae.clone(), &["gzip", "br"]), (al, &["en-US"])]);
        assert!(e.vary_matches(&req(&[
            ("accept-encoding", "BR, GZip"),
            ("accept-language", "en-us")
        ])));
        assert!(e.vary_matches(&req(&[
            ("accept-encoding", "gzip"),
            ("accept-encoding", " br"),
            ("accept-language", "en-US")
        ])));
        assert!(!e.vary_matches(&req(&[
            ("accept-encoding", "gzip"),
            ("accept-language", "en-us")
        ])));
        assert!(!e.vary_matches(&req(&[("accept-encoding", "br, gzip")])));
        let e = with(&[(x.clone(), &["a", "b"])]);
        assert!(e.vary_matches(&req(&[("x-a", "a ,b")])));
        assert!(!e.vary_matches(&req(&[("x-a", "b, a")])));
        assert!(!e.vary_matches(&req(&[("x-a", "A, b")])));
        // Absent is not empty.
        let e = with(&[(ae.clone(), &[])]);
        assert!(e.vary_matches(&req(&[])));
        assert!(!e.vary_matches(&req(&[("accept-encoding", "")])));
        let e = with(&[(ae, &[""])]);
        assert!(e.vary_matches(&req(&[("accept-encoding", " , ")])));
        assert!(!e.vary_matches(&req(&[])));
        // As many lines as stored, other values.
        let e = with(&[(x.clone(), &["a"])]);
        assert!(e.vary_matches(&req(&[("x-a", " a ")])));
        assert!(!e.vary_matches(&req(&[("x-a", "b")])));
        // A partitioned entry's credentials: presence only.
        let e = Entry {
            vary: vec![(http::header::COOKIE, vec![PARTITIONED].into_boxed_slice())]
                .into_boxed_slice(),
            ..crate::store::codec::tests::minimal()
        };
        assert!(e.vary_matches(&req(&[("cookie", "s=1")])));
        assert!(!e.vary_matches(&req(&[])));
    }

    #[test]
    fn reads_count_to_a_cap_are_taken_once_and_outlive_a_claimed_refresh() {
        let r = Reads::default();
        assert!(!r.was_read());
        let (three, five) = (ReadCap::exact(3), ReadCap::exact(5));
        assert_eq!(
            (r.note(three), r.note(three), r.note(three), r.note(three)),
            (1, 2, 3, 3)
        );
        assert!(r.claim_refresh());
        assert!(!r.claim_refresh());
        // A claimed refresh does not stop the count.
        assert_eq!(r.note(five), 4);
        assert_eq!(r.take(), 4);
        assert_eq!(r.take(), 0);
        assert!(r.was_read());
        assert_eq!(r.note(five), 1);
        assert!(!r.claim_refresh());
        // A second take of a read entry keeps it read.
        assert_eq!(r.take(), 1);
        assert!(r.was_read());
        // A clone is a new count.
        let c = r.clone();
        assert!(!c.was_read());
        assert_eq!(c.take(), 0);
        assert!(!c.was_read());
        assert!(c.claim_refresh());
    }

    #[test]
    fn past_the_exact_part_one_read_in_the_sample_writes_and_adds_the_sample() {
        let r = Reads::default();
        let cap = ReadCap::sampled(5, 100_000, 16);
        let counts: Vec<u32> = (0..5).map(|_| r.note(cap)).collect();
        assert_eq!(counts, [1, 2, 3, 4, 5], "every read up to `exact`");
        // 16 000 more reads: about 1 000 writes of 16 each (not 16 000 of
        // one), the count a fair estimate.
        let mut writes = 0;
        let mut last = 5;
        for _ in 0..16_000 {
            let n = r.note(cap);
            if n != last {
                assert_eq!(n - last, 16);
                writes += 1;
            }
            last = n;
        }
        assert!((700..=1_300).contains(&writes), "{writes} writes");
        assert_eq!(r.take(), 5 + 16 * writes);
        // Past `most`, nothing is written.
        let r = Reads::default();
        let cap = ReadCap::sampled(2, 2, 16);
        assert_eq!((r.note(cap), r.note(cap), r.note(cap)), (1, 2, 2));
        assert_eq!(ReadCap::sampled(9, 3, 0), ReadCap::exact(3));
        assert_eq!(ReadCap::exact(u32::MAX).most(), Reads::MAX_CAP);
    }

    /// The public accessors give what was stored; a prefix names URL paths
    /// of HTTP entries (not their readable keys, which are in the value
    /// scope); the hit template keeps one `Age` and one `Cache-Status`,
    /// its own, whatever the stored headers hold.
    #[test]
    fn accessors_prefixes_and_the_hit_template() {
        let mut headers = HeaderMap::new();
        headers.insert(
            LAST_MODIFIED,
            HeaderValue::from_static("Tue, 14 Nov 2023 22:13:20 GMT"),
        );
        headers.insert(AGE, HeaderValue::from_static("50"));
        headers.insert(
            crate::status::CACHE_STATUS.clone(),
            HeaderValue::from_static("upstream; hit"),
        );
        let e = Entry {
            key: "GET http://a.example/x/y?q=1".into(),
            status: StatusCode::NOT_FOUND,
            headers,
            ..crate::store::codec::tests::minimal()
        };
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(e.headers().len(), 3);
        assert_eq!(e.path(), "/x/y");
        assert!(e.last_modified().is_some() && e.etag().is_none());
        assert!(e.has_validators(), "Last-Modified alone is a validator");

        assert!(e.matches_prefix("/x/"));
        assert!(!e.matches_prefix("/z"));
        let in_value_scope = format!("{VALUE_SCOPE}GET http://a.example");
        assert!(!e.matches_prefix(&in_value_scope), "an HTTP entry's key");

        let h = e.build_response_headers(
            HeaderValue::from_static("7"),
            HeaderValue::from_static("ours"),
        );
        let all = |name| h.get_all(name).iter().cloned().collect::<Vec<_>>();
        assert_eq!(all(AGE), [HeaderValue::from_static("7")]);
        assert_eq!(
            all(crate::status::CACHE_STATUS.clone()),
            [HeaderValue::from_static("ours")]
        );
        assert_eq!(h.len(), 3);
    }

    /// A hit's `Age` and `Cache-Status` are set in a template's first two
    /// slots, and in any other map by name, leaving its other fields.
    #[test]
    fn hit_slots_are_set_in_a_template_and_in_any_map() {
        let e = Entry {
            headers: HeaderMap::from_iter([
                (ETAG, HeaderValue::from_static("\"x\"")),
                (
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain"),
                ),
            ]),
            ..crate::store::codec::tests::minimal()
        };
        let cs = crate::status::CACHE_STATUS.clone();
        let with_first = |name: &HeaderName| {
            let mut h = HeaderMap::from_iter([(name.clone(), HeaderValue::from_static("1"))]);
            h.extend(e.headers.clone());
            h
        };
        let with_second = |name: &HeaderName| {
            let mut h = e.headers.clone();
            let etag = h.remove(ETAG).unwrap();
            let mut out = HeaderMap::from_iter([(ETAG, etag)]);
            out.insert(name.clone(), HeaderValue::from_static("1"));
            out.extend(h);
            out
        };
        // A template, a map without the slots, and maps with one of them
        // in its place but not the other.
        let mut maps = [
            e.response_headers().clone(),
            e.headers.clone(),
            with_first(&AGE),
            with_second(&cs),
        ];
        for h in &mut maps {
            set_hit_slots(
                h,
                HeaderValue::from_static("9"),
                HeaderValue::from_static("s"),
            );
            assert_eq!(h.get(AGE), Some(&HeaderValue::from_static("9")), "{h:?}");
            assert_eq!(h.get(&cs), Some(&HeaderValue::from_static("s")), "{h:?}");
            for name in [ETAG, http::header::CONTENT_TYPE] {
                assert_eq!(h.get(&name), e.headers.get(&name), "{h:?}");
            }
            assert_eq!(h.len(), 4, "{h:?}");
        }
    }

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
