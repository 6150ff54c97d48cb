//! A client's conditional `GET` / `HEAD` evaluated against a stored
//! response (RFC 9110 §13.1.2, §13.1.3, §13.2.2; RFC 9111 §4.3.2).
//!
//! A pure function of the stored status and headers and the request's
//! headers, so an entry answers alike whether it came from L1 or L2 and
//! whatever the method (`HEAD` gets the same 304).

use http::header::{DATE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use http::{HeaderMap, StatusCode};

/// Whether a stored response (`status`, `stored` headers) satisfies the
/// client's validators, so that it is answered `304 Not Modified`.
///
/// - `If-None-Match` present (§13.2.2 step 3): it alone decides, and
///   `If-Modified-Since` is ignored (§13.1.3). `*` matches the stored
///   response, a current representation, whether or not it has an `ETag`
///   (§13.1.2); an entity tag matches the stored `ETag` by weak comparison
///   (§8.8.3.2). The field may span several lines; an entity tag may hold
///   commas (they are split only outside quotes).
/// - Otherwise `If-Modified-Since` (§13.2.2 step 4): one valid HTTP-date
///   (any of the three forms, see [`super::date`]), not before the stored
///   `Last-Modified`, or without one the stored `Date` (RFC 9111 §4.3.2:
///   the time the response was generated). Several members, an invalid
///   date or neither field mean no match (§13.1.3).
///
/// `now` (ms since the epoch) places two-digit years.
///
/// Only a stored `200` is answered `304`: any other status is not a
/// current representation to validate.
pub(crate) fn not_modified(
    status: StatusCode,
    stored: &HeaderMap,
    req: &HeaderMap,
    now: u64,
) -> bool {
    if status != StatusCode::OK {
        return false;
    }
    let mut inm = req.get_all(IF_NONE_MATCH).iter().peekable();
    if inm.peek().is_some() {
        let etag = stored.get(ETAG).map(|v| v.as_bytes());
        return inm.any(|line| {
            items(line.as_bytes()).any(|t| t == b"*" || etag.is_some_and(|e| weak_eq(t, e)))
        });
    }
    let mut ims = req.get_all(IF_MODIFIED_SINCE).iter();
    let (Some(ims), None) = (ims.next(), ims.next()) else {
        return false;
    };
    let date = |v: &http::HeaderValue| v.to_str().ok().and_then(|s| super::date::parse(s, now));
    let since = date(ims);
    let modified = match stored.get(LAST_MODIFIED) {
        Some(lm) => date(lm),
        None => stored.get(DATE).and_then(date),
    };
    match (since, modified) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// The members of a list field value: split at commas outside quoted
/// strings, trimmed, empty members skipped (RFC 9110 §5.6.1).
fn items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = value;
    std::iter::from_fn(move || loop {
        let start = rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b','))?;
        rest = &rest[start..];
        let mut quoted = false;
        let end = rest
            .iter()
            .position(|&b| {
                if b == b'"' {
                    quoted = !quoted;
                }
                b == b',' && !quoted
            })
            .unwrap_or(rest.len());
        let (item, tail) = rest.split_at(end);
        rest = tail;
        let item = item.trim_ascii_end();
        if !item.is_empty() {
            return Some(item);
        }
    })
}

/// Weak entity-tag comparison (RFC 9110 §8.8.3.2): the opaque tags match,
/// either or both may be weak.
fn weak_eq(a: &[u8], b: &[u8]) -> bool {
    fn opaque(t: &[u8]) -> &[u8] {
        t.strip_prefix(b"W/").unwrap_or(t)
    }
    opaque(a) == opaque(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::headers;
    use http::HeaderValue;

    const LM: &str = "Tue, 14 Nov 2023 22:13:20 GMT";
    const BEFORE: &str = "Tue, 14 Nov 2023 21:13:20 GMT";
    const AFTER: &str = "Tue, 14 Nov 2023 23:13:20 GMT";

    /// 2026-12-07 00:00:00 UTC.
    const NOW: u64 = 1_796_601_600_000;

    fn check(stored: &[(&str, &str)], req: &[(&str, &str)]) -> bool {
        not_modified(StatusCode::OK, &headers(stored), &headers(req), NOW)
    }

    #[test]
    fn rfc9110_13_1_2_star_matches_any_current_representation() {
        // With or without an ETag, with or without a Last-Modified.
        assert!(check(&[("etag", "\"abc\"")], &[("if-none-match", "*")]));
        assert!(check(&[], &[("if-none-match", "*")]));
        assert!(check(&[("last-modified", LM)], &[("if-none-match", "*")]));
        assert!(check(&[], &[("if-none-match", " * ")]));
    }

    #[test]
    fn rfc9110_13_1_2_star_does_not_match_a_stored_error() {
        for status in [404, 410, 301, 500] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(!not_modified(
                status,
                &headers(&[("etag", "\"abc\"")]),
                &headers(&[("if-none-match", "*")]),
                NOW
            ));
        }
    }

    #[test]
    fn rfc9110_13_1_2_entity_tags_use_weak_comparison() {
        let stored = [("etag", "\"abc\"")];
        assert!(check(&stored, &[("if-none-match", "\"abc\"")]));
        assert!(check(&stored, &[("if-none-match", "W/\"abc\"")]));
        assert!(check(
            &[("etag", "W/\"abc\"")],
            &[("if-none-match", "\"abc\"")]
        ));
        assert!(check(&stored, &[("if-none-match", "\"x\", \"abc\"")]));
        assert!(check(&stored, &[("if-none-match", "\"x\",\"abc\" ")]));
        assert!(!check(&stored, &[("if-none-match", "\"x\"")]));
        assert!(!check(&stored, &[("if-none-match", "\"ab\"")]));
        assert!(!check(&stored, &[("if-none-match", "")]));
        assert!(!check(&[], &[("if-none-match", "\"abc\"")]));
    }

    #[test]
    fn rfc9110_5_6_1_if_none_match_spans_lines_and_quotes_keep_commas() {
        let stored = [("etag", "\"a,b\"")];
        assert!(check(&stored, &[("if-none-match", "\"x\", \"a,b\"")]));
        assert!(!check(&stored, &[("if-none-match", "\"a\", \"b\"")]));
        assert!(check(
            &[("etag", "\"abc\"")],
            &[("if-none-match", "\"x\""), ("if-none-match", "\"abc\"")]
        ));
        assert!(check(
            &[],
            &[("if-none-match", "\"x\""), ("if-none-match", "*")]
        ));
    }

    #[test]
    fn rfc9110_8_8_3_entity_tags_may_hold_obs_text() {
        let tag = HeaderValue::from_bytes(b"\"caf\xe9\"").unwrap();
        let mut stored = HeaderMap::new();
        stored.insert(ETAG, tag.clone());
        let mut req = HeaderMap::new();
        req.insert(IF_NONE_MATCH, tag);
        assert!(not_modified(StatusCode::OK, &stored, &req, NOW));
        req.insert(IF_NONE_MATCH, HeaderValue::from_static("\"cafe\""));
        assert!(!not_modified(StatusCode::OK, &stored, &req, NOW));
    }

    #[test]
    fn rfc9110_13_2_2_if_none_match_takes_precedence_over_if_modified_since() {
        let stored = [("etag", "\"abc\""), ("last-modified", LM)];
        // `*` matches although the date says modified.
        assert!(check(
            &[("last-modified", LM)],
            &[("if-none-match", "*"), ("if-modified-since", BEFORE)]
        ));
        // A non-matching tag: not modified by date, but the tag decides.
        assert!(!check(
            &stored,
            &[("if-none-match", "\"x\""), ("if-modified-since", AFTER)]
        ));
        assert!(check(
            &stored,
            &[("if-none-match", "\"abc\""), ("if-modified-since", BEFORE)]
        ));
    }

    #[test]
    fn rfc9110_13_1_3_if_modified_since() {
        let stored = [("last-modified", LM)];
        assert!(check(&stored, &[("if-modified-since", LM)]));
        assert!(check(&stored, &[("if-modified-since", AFTER)]));
        assert!(!check(&stored, &[("if-modified-since", BEFORE)]));
        // Invalid, several members, or nothing to compare with: ignored.
        assert!(!check(&stored, &[("if-modified-since", "yesterday")]));
        assert!(!check(
            &stored,
            &[("if-modified-since", AFTER), ("if-modified-since", AFTER)]
        ));
        assert!(!check(&[], &[("if-modified-since", AFTER)]));
        assert!(!check(&stored, &[]));
        // The obsolete forms are read too (RFC 9110 §5.6.7).
        assert!(check(
            &stored,
            &[("if-modified-since", "Tuesday, 14-Nov-23 23:13:20 GMT")]
        ));
        assert!(check(
            &stored,
            &[("if-modified-since", "Tue Nov 14 23:13:20 2023")]
        ));
        assert!(!check(
            &stored,
            &[("if-modified-since", "tue nov 14 21:13:20 2023")]
        ));
    }

    #[test]
    fn rfc9111_4_3_2_if_modified_since_without_last_modified_uses_date() {
        let stored = [("date", LM)];
        assert!(check(&stored, &[("if-modified-since", LM)]));
        assert!(check(&stored, &[("if-modified-since", AFTER)]));
        assert!(!check(&stored, &[("if-modified-since", BEFORE)]));
        // Last-Modified, when there is one, decides (here: modified after
        // the client's date although the response is dated before it).
        let both = [("date", BEFORE), ("last-modified", AFTER)];
        assert!(!check(&both, &[("if-modified-since", LM)]));
    }

    #[test]
    fn items_split_outside_quotes() {
        let all: Vec<&[u8]> = items(b" \"a,b\" ,, W/\"c\",*,\t").collect();
        assert_eq!(all, [&b"\"a,b\""[..], b"W/\"c\"", b"*"]);
        assert_eq!(items(b"").count(), 0);
        assert_eq!(items(b" , ,").count(), 0);
    }
}
