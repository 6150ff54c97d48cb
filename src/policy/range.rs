//! A client's `Range` request answered from a stored complete response
//! (RFC 9110 §14, RFC 9111 §4.3.3's spirit: a cache may satisfy a range
//! request from a complete stored response).
//!
//! A pure function of the request's headers and the stored response, so an
//! entry answers alike from L1 and L2:
//!
//! - only `GET` of a stored `200` is ranged (§14.2: `GET` is the only
//!   method range handling is defined for);
//! - one `Range` field line in the `bytes` unit (any letter case), with
//!   well-formed ranges (`first-last`, `first-`, `-suffix`); anything else
//!   is ignored and the whole response answers, as a server may (§14.2);
//! - `If-Range` (§13.1.5): a strong entity tag equal to the stored `ETag`,
//!   or an HTTP-date equal to a strong stored `Last-Modified` (one at least
//!   a second before the stored `Date`, §8.8.2.2); otherwise the whole
//!   response;
//! - satisfiable ranges that merge into one give a `206` with
//!   `Content-Range`; several disjoint ones the whole response (a
//!   `multipart/byteranges` body is not made; §14.2 allows ignoring); none
//!   satisfiable, a `416` with `Content-Range: bytes */length` (§15.5.17).
//!
//! Work is bounded: at most [`MAX_RANGES`] ranges are read, and a `Range`
//! field longer than [`MAX_FIELD`] bytes is ignored.

use http::header::{DATE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use http::{HeaderMap, Method, StatusCode};

/// The most ranges read from one `Range` field (more: the field is ignored).
pub(crate) const MAX_RANGES: usize = 32;

/// The longest `Range` field read (longer: ignored).
pub(crate) const MAX_FIELD: usize = 1024;

/// How a stored complete response answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ranged {
    /// The whole response (no range asked, or the range is ignored).
    Whole,
    /// `206`: bytes `start..=end` of `len`.
    Part { start: u64, end: u64, len: u64 },
    /// `416`: no range asked for can be satisfied; `len` is the length.
    Unsatisfiable { len: u64 },
}

/// What `req` gets from a stored `status` response with `stored` headers
/// and a body of `len` bytes. `now` places two-digit years in `If-Range`.
pub(crate) fn evaluate(
    method: &Method,
    req: &HeaderMap,
    status: StatusCode,
    stored: &HeaderMap,
    len: u64,
    now: u64,
) -> Ranged {
    if method != Method::GET || status != StatusCode::OK {
        return Ranged::Whole;
    }
    let mut lines = req.get_all(RANGE).iter();
    let (Some(range), None) = (lines.next(), lines.next()) else {
        return Ranged::Whole;
    };
    if range.len() > MAX_FIELD || !if_range_holds(req, stored, now) {
        return Ranged::Whole;
    }
    let Some(specs) = parse(range.as_bytes()) else {
        return Ranged::Whole;
    };
    let mut parts: Vec<(u64, u64)> = specs.iter().filter_map(|s| s.resolve(len)).collect();
    parts.sort_unstable();
    let mut parts = parts.into_iter();
    let Some((start, mut end)) = parts.next() else {
        return Ranged::Unsatisfiable { len };
    };
    // Merge what overlaps or touches; a gap left means several parts:
    // the whole response answers instead.
    for (s, e) in parts {
        if s > end.saturating_add(1) {
            return Ranged::Whole;
        }
        end = end.max(e);
    }
    Ranged::Part { start, end, len }
}

/// `Content-Range: bytes first-last/length` (RFC 9110 §14.4) of one part
/// with a known complete length: `(first, last, length)`, or `None` for
/// anything else (`*` lengths, other units, a part past the length).
pub(crate) fn content_range(v: &http::HeaderValue) -> Option<(u64, u64, u64)> {
    let v = v.as_bytes().trim_ascii();
    let sp = v.iter().position(|&b| b == b' ')?;
    if !v[..sp].eq_ignore_ascii_case(b"bytes") {
        return None;
    }
    let rest = &v[sp + 1..];
    let slash = rest.iter().position(|&b| b == b'/')?;
    let (span, len) = (&rest[..slash], number(&rest[slash + 1..])?);
    let dash = span.iter().position(|&b| b == b'-')?;
    let (first, last) = (number(&span[..dash])?, number(&span[dash + 1..])?);
    (first <= last && last < len).then_some((first, last, len))
}

/// One range of a `Range` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `first-` or `first-last`.
    From(u64, Option<u64>),
    /// `-suffix`: the last `suffix` bytes.
    Last(u64),
}

impl Spec {
    /// The inclusive byte positions this range covers in a body of `len`
    /// bytes, or `None` when it covers none (§14.1.1: unsatisfiable).
    fn resolve(self, len: u64) -> Option<(u64, u64)> {
        match self {
            Spec::From(first, _) if first >= len => None,
            Spec::From(first, last) => Some((first, last.unwrap_or(u64::MAX).min(len - 1))),
            Spec::Last(0) => None,
            Spec::Last(_) if len == 0 => None,
            Spec::Last(n) => Some((len.saturating_sub(n), len - 1)),
        }
    }
}

/// `bytes=a-b, c-, -d`: `None` when malformed (the field is then ignored).
fn parse(field: &[u8]) -> Option<Vec<Spec>> {
    let field = field.trim_ascii();
    let eq = field.iter().position(|&b| b == b'=')?;
    let (unit, set) = (field[..eq].trim_ascii(), &field[eq + 1..]);
    if !unit.eq_ignore_ascii_case(b"bytes") {
        return None;
    }
    let mut specs = Vec::new();
    for member in set.split(|&b| b == b',') {
        let member = member.trim_ascii();
        if member.is_empty() {
            // Empty list members are allowed (§5.6.1) and skipped.
            continue;
        }
        if specs.len() == MAX_RANGES {
            return None;
        }
        specs.push(spec(member)?);
    }
    (!specs.is_empty()).then_some(specs)
}

/// One `first-last`, `first-` or `-suffix`.
fn spec(s: &[u8]) -> Option<Spec> {
    let dash = s.iter().position(|&b| b == b'-')?;
    let (first, last) = (&s[..dash], &s[dash + 1..]);
    match (number(first), number(last)) {
        (None, Some(n)) if first.is_empty() => Some(Spec::Last(n)),
        (Some(f), None) if last.is_empty() => Some(Spec::From(f, None)),
        (Some(f), Some(l)) if f <= l => Some(Spec::From(f, Some(l))),
        _ => None,
    }
}

/// Decimal digits (at most 19: no overflow), nothing else.
fn number(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Whether `If-Range` (absent: yes) lets the range apply (§13.1.5).
fn if_range_holds(req: &HeaderMap, stored: &HeaderMap, now: u64) -> bool {
    let mut lines = req.get_all(IF_RANGE).iter();
    let Some(cond) = lines.next() else {
        return true;
    };
    if lines.next().is_some() {
        return false;
    }
    let cond = cond.as_bytes().trim_ascii();
    if cond.starts_with(b"\"") {
        // A strong comparison: neither tag weak, the same opaque tag.
        return stored
            .get(ETAG)
            .is_some_and(|e| e.as_bytes().trim_ascii() == cond);
    }
    if cond.starts_with(b"W/") {
        return false;
    }
    let date = |v: Option<&http::HeaderValue>| {
        v.and_then(|v| v.to_str().ok())
            .and_then(|s| super::date::parse(s, now))
    };
    let Some(since) = std::str::from_utf8(cond)
        .ok()
        .and_then(|s| super::date::parse(s, now))
    else {
        return false;
    };
    match (date(stored.get(LAST_MODIFIED)), date(stored.get(DATE))) {
        // Strong: modified at least a second before the response's date.
        (Some(lm), Some(d)) => lm == since && d.saturating_sub(lm) >= 1000,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::headers;

    const NOW: u64 = 1_796_601_600_000;
    const LM: &str = "Tue, 14 Nov 2023 22:13:20 GMT";
    const LATER: &str = "Tue, 14 Nov 2023 23:13:20 GMT";

    fn ranged(req: &[(&str, &str)], len: u64) -> Ranged {
        let stored = headers(&[("etag", "\"v1\""), ("last-modified", LM), ("date", LATER)]);
        evaluate(
            &Method::GET,
            &headers(req),
            StatusCode::OK,
            &stored,
            len,
            NOW,
        )
    }

    fn part(start: u64, end: u64, len: u64) -> Ranged {
        Ranged::Part { start, end, len }
    }

    #[test]
    fn rfc9110_14_1_2_byte_ranges() {
        assert_eq!(ranged(&[("range", "bytes=0-99")], 1000), part(0, 99, 1000));
        assert_eq!(
            ranged(&[("range", "bytes=500-")], 1000),
            part(500, 999, 1000)
        );
        assert_eq!(
            ranged(&[("range", "bytes=-100")], 1000),
            part(900, 999, 1000)
        );
        // Past the end: up to the end.
        assert_eq!(
            ranged(&[("range", "bytes=900-5000")], 1000),
            part(900, 999, 1000)
        );
        assert_eq!(
            ranged(&[("range", "bytes=-5000")], 1000),
            part(0, 999, 1000)
        );
        assert_eq!(ranged(&[("range", "BYTES = 0-0")], 1000), part(0, 0, 1000));
        assert_eq!(ranged(&[("range", "bytes=0-0, ,")], 1000), part(0, 0, 1000));
    }

    #[test]
    fn rfc9110_14_2_overlapping_or_adjacent_ranges_merge_disjoint_ones_get_the_whole() {
        assert_eq!(
            ranged(&[("range", "bytes=0-9,10-19")], 100),
            part(0, 19, 100)
        );
        assert_eq!(
            ranged(&[("range", "bytes=5-20,0-9")], 100),
            part(0, 20, 100)
        );
        assert_eq!(
            ranged(&[("range", "bytes=30-39,0-9,10-29")], 100),
            part(0, 39, 100)
        );
        assert_eq!(ranged(&[("range", "bytes=0-9,20-29")], 100), Ranged::Whole);
        // An unsatisfiable member is dropped; the rest still answers.
        assert_eq!(ranged(&[("range", "bytes=0-9,500-")], 100), part(0, 9, 100));
    }

    #[test]
    fn rfc9110_15_5_17_nothing_satisfiable_is_416() {
        for r in [
            "bytes=1000-",
            "bytes=1000-2000",
            "bytes=-0",
            "bytes=1000-,2000-",
        ] {
            assert_eq!(
                ranged(&[("range", r)], 1000),
                Ranged::Unsatisfiable { len: 1000 },
                "{r}"
            );
        }
        assert_eq!(
            ranged(&[("range", "bytes=0-")], 0),
            Ranged::Unsatisfiable { len: 0 }
        );
        assert_eq!(
            ranged(&[("range", "bytes=-5")], 0),
            Ranged::Unsatisfiable { len: 0 }
        );
    }

    #[test]
    fn rfc9110_14_2_malformed_or_other_units_are_ignored() {
        for r in [
            "bytes=",
            "bytes",
            "items=0-9",
            "bytes=9-0",
            "bytes=a-b",
            "bytes=-",
            "bytes=0-9;x",
            "bytes=+1-2",
            "bytes=99999999999999999999-",
            "bytes=0--9",
        ] {
            assert_eq!(ranged(&[("range", r)], 1000), Ranged::Whole, "{r}");
        }
        // Two field lines, a huge field, too many ranges.
        assert_eq!(
            ranged(&[("range", "bytes=0-1"), ("range", "bytes=2-3")], 1000),
            Ranged::Whole
        );
        let long = format!("bytes={}", "0-1,".repeat(300));
        assert_eq!(ranged(&[("range", &long)], 1000), Ranged::Whole);
        let many = format!(
            "bytes={}",
            (0..40)
                .map(|i| format!("{i}-{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(ranged(&[("range", &many)], 1000), Ranged::Whole);
    }

    /// The bounds themselves: a field of exactly [`MAX_FIELD`] bytes is
    /// read, one byte more is not; positions of 19 digits are read, of 20
    /// are not, even when leading zeros keep them small.
    #[test]
    fn the_field_and_number_bounds_are_inclusive() {
        let fill = |n: usize| format!("bytes=0-9{}", ",".repeat(n - "bytes=0-9".len()));
        assert_eq!(ranged(&[("range", &fill(MAX_FIELD))], 100), part(0, 9, 100));
        assert_eq!(
            ranged(&[("range", &fill(MAX_FIELD + 1))], 100),
            Ranged::Whole
        );

        assert_eq!(
            number(b"1000000000000000000"),
            Some(1_000_000_000_000_000_000)
        );
        assert_eq!(number(b"00000000000000000001"), None);
        assert_eq!(number(b""), None);
        let r = "bytes=0000000000000000001-";
        assert_eq!(ranged(&[("range", r)], 100), part(1, 99, 100));
        let r = "bytes=00000000000000000001-";
        assert_eq!(ranged(&[("range", r)], 100), Ranged::Whole);
    }

    #[test]
    fn rfc9110_14_4_content_range_of_one_part() {
        let cr = |s: &str| content_range(&http::HeaderValue::from_str(s).unwrap());
        assert_eq!(cr("bytes 0-99/1000"), Some((0, 99, 1000)));
        assert_eq!(cr("BYTES 999-999/1000"), Some((999, 999, 1000)));
        for bad in [
            "bytes 0-99/*",
            "bytes */1000",
            "bytes 99-0/1000",
            "bytes 0-1000/1000",
            "items 0-1/2",
            "bytes 0-1",
            "bytes -1-2/3",
            "bytes 0-1/99999999999999999999",
            "",
        ] {
            assert_eq!(cr(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc9110_14_2_only_get_of_a_200_is_ranged() {
        let req = headers(&[("range", "bytes=0-9")]);
        let stored = HeaderMap::new();
        assert_eq!(
            evaluate(&Method::HEAD, &req, StatusCode::OK, &stored, 100, NOW),
            Ranged::Whole
        );
        assert_eq!(
            evaluate(&Method::GET, &req, StatusCode::NOT_FOUND, &stored, 100, NOW),
            Ranged::Whole
        );
    }

    #[test]
    fn rfc9110_13_1_5_if_range() {
        let r = ("range", "bytes=0-9");
        // A strong tag that matches; weak or different tags do not.
        assert_eq!(ranged(&[r, ("if-range", "\"v1\"")], 100), part(0, 9, 100));
        assert_eq!(ranged(&[r, ("if-range", "\"v2\"")], 100), Ranged::Whole);
        assert_eq!(ranged(&[r, ("if-range", "W/\"v1\"")], 100), Ranged::Whole);
        // A date equal to a strong Last-Modified (an hour before Date).
        assert_eq!(ranged(&[r, ("if-range", LM)], 100), part(0, 9, 100));
        assert_eq!(ranged(&[r, ("if-range", LATER)], 100), Ranged::Whole);
        assert_eq!(ranged(&[r, ("if-range", "garbage")], 100), Ranged::Whole);
        // A Last-Modified as late as Date is weak: no range.
        let stored = headers(&[("last-modified", LM), ("date", LM)]);
        let req = headers(&[r, ("if-range", LM)]);
        assert_eq!(
            evaluate(&Method::GET, &req, StatusCode::OK, &stored, 100, NOW),
            Ranged::Whole
        );
        // A weak stored ETag never matches.
        let stored = headers(&[("etag", "W/\"v1\"")]);
        let req = headers(&[r, ("if-range", "\"v1\"")]);
        assert_eq!(
            evaluate(&Method::GET, &req, StatusCode::OK, &stored, 100, NOW),
            Ranged::Whole
        );
    }
}
