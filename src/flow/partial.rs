//! Partial content (RFC 9111 §3.3, §3.4): `206` responses to `Range`
//! requests for something no tier holds complete.
//!
//! A `206` is stored when it is one part (`Content-Range: bytes a-b/len`,
//! a known complete length, a body of exactly `b - a + 1` bytes), has a
//! strong `ETag`, no `Vary`, and the policy would store it (explicit
//! freshness and the rest). It lives under a key of its own, derived from
//! the URL's (`{readable key}` plus a suffix), so the complete response's
//! entry and every path that reads it are untouched; L1 and L2 hold it
//! like any entry.
//!
//! A later `206` for the same representation (the same strong `ETag`)
//! that overlaps or touches the stored part is combined with it (§3.4);
//! one that does not replaces it. When the parts cover the whole
//! representation, the result is stored as the complete `200` under the
//! URL's own key. Everything is bounded by `max_body_bytes`.
//!
//! A `Range` request whose bytes lie within a fresh stored part is
//! answered from it (`206`, or `416` when nothing asked for is
//! satisfiable); anything else goes upstream with its `Range`, as before.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_RANGE, ETAG, VARY};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use std::sync::Arc;

use super::{
    buffer, entry_of, gateway_timeout, pass_through, within, Buffered, CacheResult, Elapsed,
    Upstream,
};
use crate::body::CacheBody;
use crate::cache::{Cache, Fetch};
use crate::entry::Entry;
use crate::key::KeyHash;
use crate::policy::range::{self, Ranged};
use crate::policy::Usability;
use crate::status::Status;
use crate::tiers::L1Lookup;

/// Appended to the URL's readable key to name its stored part.
const SUFFIX: &str = "\npartial";

/// The key and readable key of `client`'s URL's stored part (`None`: the
/// request has no readable key, or its key is partitioned by credentials).
pub(crate) fn part_key(cache: &Cache, client: &Parts) -> Option<(KeyHash, String)> {
    let readable = cache.shared.keys.readable(client)?;
    if readable.contains('\n') {
        return None;
    }
    let readable = format!("{readable}{SUFFIX}");
    let hash = KeyHash(xxhash_rust::xxh3::xxh3_128(readable.as_bytes()));
    Some((hash, readable))
}

/// `(first, last, complete length)` of a stored part, checked against its
/// body (a value read back from Redis may be anything).
fn part_of(entry: &Entry) -> Option<(u64, u64, u64)> {
    if entry.status != StatusCode::PARTIAL_CONTENT {
        return None;
    }
    let (first, last, len) = range::content_range(entry.headers.get(CONTENT_RANGE)?)?;
    (entry.body.len() as u64 == last - first + 1).then_some((first, last, len))
}

/// A `Range` request for something no tier holds complete: answered from
/// a fresh stored part that covers it, or forwarded with its `Range`
/// (what comes back may be stored, see the module docs).
pub(super) async fn range_miss<B, U>(
    cache: &Cache,
    req: Request<B>,
    up: U,
    plan: &Fetch,
) -> CacheResult<U, B>
where
    U: Upstream<B>,
{
    let s = &*cache.shared;
    let client = super::request_view_of(&req);
    let head = req.method() == Method::HEAD;
    let key = if head { None } else { part_key(cache, &client) };
    if let Some((pk, _)) = &key {
        if let Some(resp) = answer_from_part(cache, *pk, &client, plan).await {
            return Ok(resp);
        }
    }
    s.counters.passes.incr();
    let requested_at = cache.now();
    let resp = match within(s.cfg.upstream_timeout, up.call(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return Err(e),
        Err(Elapsed) => return Ok(gateway_timeout(Status::RANGE)),
    };
    match key {
        Some(key) if resp.status() == StatusCode::PARTIAL_CONTENT => {
            Ok(keep::<B, U>(cache, key, resp, &client, plan, requested_at).await)
        }
        _ => Ok(pass_through(resp, Status::RANGE, head)),
    }
}

/// The stored part of `pk`, when fresh for this request, and whether it
/// came from L2.
async fn fresh_part(
    cache: &Cache,
    pk: KeyHash,
    client: &Parts,
    plan: &Fetch,
) -> Option<(Arc<Entry>, bool)> {
    let s = &*cache.shared;
    let now = cache.now();
    let (entry, l2) = match s.tiers.lookup_l1(pk, &client.headers, now) {
        L1Lookup::Found(e) => (e, false),
        L1Lookup::Miss { .. } => (l2_part(cache, pk, client).await?, true),
    };
    let fresh = s.policy.usability(&entry, &plan.directives, now) == Usability::Fresh;
    fresh.then_some((entry, l2))
}

#[cfg(feature = "redis")]
async fn l2_part(cache: &Cache, pk: KeyHash, client: &Parts) -> Option<Arc<Entry>> {
    let s = &*cache.shared;
    match s
        .tiers
        .lookup_l2(pk, &client.headers, None, cache.now())
        .await
    {
        crate::tiers::L2Lookup::Found(e, _) => Some(e),
        crate::tiers::L2Lookup::Miss { .. } => None,
    }
}

#[cfg(not(feature = "redis"))]
async fn l2_part(_: &Cache, _: KeyHash, _: &Parts) -> Option<Arc<Entry>> {
    None
}

/// A `206` (or `416`) cut from a fresh stored part that holds every byte
/// the request asks for.
async fn answer_from_part<RB: Body>(
    cache: &Cache,
    pk: KeyHash,
    client: &Parts,
    plan: &Fetch,
) -> Option<Response<CacheBody<RB>>> {
    let (entry, l2) = fresh_part(cache, pk, client, plan).await?;
    let (first, last, len) = part_of(&entry)?;
    let now = cache.now();
    let ranged = range::evaluate(
        &client.method,
        &client.headers,
        StatusCode::OK,
        &entry.headers,
        len,
        now,
    );
    match ranged {
        Ranged::Part { start, end, .. } if start >= first && end <= last => {}
        Ranged::Unsatisfiable { .. } => {}
        _ => return None,
    }
    let status = cache.tier_hit_status(true, l2, &entry, now);
    let age = crate::cache::age_value(entry.timeline.age_at(now) / 1000);
    let mut resp = crate::cache::ranged_response(&entry, ranged, first, age, status.header())?;
    resp.extensions_mut().insert(status);
    Some(resp)
}

/// Forwards a `206` from upstream and, when it qualifies, stores it:
/// combined with the stored part, or as the complete response once the
/// parts cover it.
async fn keep<B, U>(
    cache: &Cache,
    (pk, readable): (KeyHash, String),
    resp: Response<U::Body>,
    client: &Parts,
    plan: &Fetch,
    requested_at: u64,
) -> Response<CacheBody<U::Body>>
where
    U: Upstream<B>,
{
    let s = &*cache.shared;
    let Some((first, last, len)) = qualifies(cache, &resp) else {
        return pass_through(resp, Status::RANGE, false);
    };
    let max = s.cfg.max_body_bytes;
    let (rparts, body) = resp.into_parts();
    let bytes = match buffer(body, max, s.cfg.upstream_timeout).await {
        Buffered::Complete(bytes) => bytes,
        Buffered::TimedOut => return gateway_timeout(Status::RANGE),
        Buffered::TooLarge(prefix, rest) => {
            let body = CacheBody::prefixed(prefix, None, rest);
            return marked(Response::from_parts(rparts, body));
        }
        Buffered::Failed(prefix, error, rest) => {
            let body = CacheBody::prefixed(prefix, Some(error), rest);
            return marked(Response::from_parts(rparts, body));
        }
    };
    let answer = marked(Response::from_parts(
        rparts.clone(),
        CacheBody::full(bytes.clone()),
    ));
    if bytes.len() as u64 == last - first + 1 {
        let response_time = cache.now();
        let route = plan.route.map(|i| &s.policy.routes[i]);
        let storable = s.policy.storable(
            &plan.directives,
            StatusCode::PARTIAL_CONTENT,
            &rparts.headers,
            route,
            requested_at,
            response_time,
        );
        if let Ok(storable) = storable {
            let (entry, _) = entry_of(cache, rparts, bytes, storable, plan, client, response_time);
            let prior = fresh_part(cache, pk, client, plan).await.map(|(e, _)| e);
            store_part(
                cache,
                (pk, readable),
                entry,
                prior,
                (first, last, len),
                client,
            );
        }
    }
    answer
}

/// A forwarded part, marked as a `Range` pass.
fn marked<RB>(mut resp: Response<RB>) -> Response<RB> {
    super::mark(&mut resp, Status::RANGE);
    resp
}

/// `(first, last, len)` of a `206` this cache may store: one part of a
/// known length, a strong `ETag`, no `Vary`, the part within the body cap.
fn qualifies<RB>(cache: &Cache, resp: &Response<RB>) -> Option<(u64, u64, u64)> {
    let h = resp.headers();
    let mut ranges = h.get_all(CONTENT_RANGE).iter();
    let (Some(cr), None) = (ranges.next(), ranges.next()) else {
        return None;
    };
    let (first, last, len) = range::content_range(cr)?;
    let strong = h.get(ETAG).is_some_and(|e| e.as_bytes().starts_with(b"\""));
    let fits = last - first < cache.shared.cfg.max_body_bytes;
    (strong && fits && !h.contains_key(VARY)).then_some((first, last, len))
}

/// Stores `entry` (a new part) combined with `prior` (the stored part, if
/// it is of the same representation and meets it), or alone; as the
/// complete response when the result covers every byte.
fn store_part(
    cache: &Cache,
    (pk, readable): (KeyHash, String),
    entry: Arc<Entry>,
    prior: Option<Arc<Entry>>,
    (first, last, len): (u64, u64, u64),
    client: &Parts,
) {
    let s = &*cache.shared;
    let mut e = Arc::unwrap_or_clone(entry);
    let (mut first, mut last) = (first, last);
    if let Some(old) = prior.as_deref().filter(|old| old.etag() == e.etag()) {
        if let Some((of, ol, olen)) = part_of(old).filter(|p| p.2 == len) {
            let _ = olen;
            if let Some(joined) = join((of, ol, &old.body), (first, last, &e.body)) {
                if joined.2.len() as u64 <= s.cfg.max_body_bytes {
                    (first, last) = (joined.0, joined.1);
                    e.body = joined.2;
                }
            }
        }
    }
    let now = cache.now();
    e.headers
        .insert(CONTENT_LENGTH, HeaderValue::from(e.body.len()));
    if first == 0 && last + 1 == len {
        // Every byte is here: the complete response, under the URL's key.
        let Some(key) = s.keys.hash(client) else {
            return;
        };
        e.status = StatusCode::OK;
        e.headers.remove(CONTENT_RANGE);
        e.key = readable.trim_end_matches(SUFFIX).into();
        s.tiers.l1.remove(pk);
        if s.tiers.store(key, &Arc::new(e), &[], &client.headers, now) {
            s.counters.stores.incr();
        }
        return;
    }
    let Ok(cr) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")) else {
        return;
    };
    e.headers.insert(CONTENT_RANGE, cr);
    e.key = readable.into();
    if s.tiers.store(pk, &Arc::new(e), &[], &client.headers, now) {
        s.counters.stores.incr();
    }
}

/// Two parts as one, when they overlap or touch: `(first, last, body)`.
fn join(a: (u64, u64, &Bytes), b: (u64, u64, &Bytes)) -> Option<(u64, u64, Bytes)> {
    let (lo, hi) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    if hi.0 > lo.1.saturating_add(1) {
        return None;
    }
    if hi.1 <= lo.1 {
        // `hi` lies within `lo`.
        return Some((lo.0, lo.1, lo.2.clone()));
    }
    let skip = (lo.1 + 1 - hi.0) as usize;
    let mut body = BytesMut::with_capacity(lo.2.len() + hi.2.len() - skip);
    body.extend_from_slice(lo.2);
    body.extend_from_slice(&hi.2[skip..]);
    Some((lo.0, hi.1, body.freeze()))
}

#[cfg(test)]
mod tests {
    use super::join;
    use bytes::Bytes;

    #[test]
    fn rfc9111_3_4_parts_that_overlap_or_touch_join() {
        let (a, b) = (Bytes::from_static(b"0123"), Bytes::from_static(b"3456"));
        assert_eq!(
            join((0, 3, &a), (3, 6, &b)).unwrap(),
            (0, 6, Bytes::from_static(b"0123456"))
        );
        assert_eq!(
            join((3, 6, &b), (0, 3, &a)).unwrap(),
            (0, 6, Bytes::from_static(b"0123456"))
        );
        let c = Bytes::from_static(b"4567");
        assert_eq!(
            join((0, 3, &a), (4, 7, &c)).unwrap(),
            (0, 7, Bytes::from_static(b"01234567"))
        );
        let inner = Bytes::from_static(b"12");
        assert_eq!(join((0, 3, &a), (1, 2, &inner)).unwrap(), (0, 3, a.clone()));
        let far = Bytes::from_static(b"9");
        assert_eq!(join((0, 3, &a), (9, 9, &far)), None);
    }
}
