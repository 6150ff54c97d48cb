//! The normal form of the request fields a stored response's `Vary`
//! nominates (RFC 9111 §4.1): requests whose fields have the same normal
//! form select the same variant, in L1 and in L2 (the variant's hash,
//! `variant_hash`, and `Entry::vary_matches` both use it).
//!
//! Every field: its field lines are combined into one value (RFC 9110
//! §5.3: joined with commas), split into list members at the commas outside
//! quoted strings (§5.6.1), and each member trimmed of the whitespace
//! around it; members are joined again with `", "`. Nothing else changes:
//! not the order, not the letter case, and empty members are kept (the
//! field need not be a list).
//!
//! `Accept`, `Accept-Encoding` and `Accept-Language` (§12.5.1, §12.5.3,
//! §12.5.4), whose members are ranked by their q-values and not by their
//! place, also:
//! - drop empty members (§5.6.1; an empty field is still unlike an absent
//!   one: `Accept-Encoding:` asks for no coding at all);
//! - lowercase each member's value (media range, content coding, language
//!   range: all case-insensitive) and its parameter names, and drop the
//!   whitespace around the `;` before each parameter. Parameter values
//!   (`q=0.5`, a media type parameter's value, quoted or not) are kept as
//!   they are: a media type parameter's value may be case-sensitive;
//! - sort the members (bytewise), so that their order does not matter.
//!
//! The work is linear in the field's size, plus a sort of at most
//! [`MAX_MEMBERS`] members: a field with more members (a hostile request)
//! is compared in the common form only (combined and trimmed). The buffers
//! are per thread, reused, and given back when a large field grew them.

use std::cell::RefCell;

use http::header::{HeaderName, HeaderValue, ACCEPT, ACCEPT_ENCODING, ACCEPT_LANGUAGE};

/// The most members of an `Accept*` field that are lowercased and sorted;
/// a field with more is compared combined and trimmed only.
pub(crate) const MAX_MEMBERS: usize = 64;

/// Buffers kept per thread beyond this capacity are dropped after use.
const KEEP_BYTES: usize = 16 * 1024;

const QUOTE: u8 = b'"';
const BACKSLASH: u8 = b'\\';

/// The reusable buffers of one thread.
#[derive(Default)]
struct Buffers {
    /// The field lines combined (when there are several).
    combined: Vec<u8>,
    /// The members' normal forms, one after another.
    members: Vec<u8>,
    /// Where each member is in `members`.
    ranges: Vec<(usize, usize)>,
    /// The normal forms compared or hashed.
    a: Vec<u8>,
    b: Vec<u8>,
}

impl Buffers {
    fn shrink(&mut self) {
        for v in [
            &mut self.combined,
            &mut self.members,
            &mut self.a,
            &mut self.b,
        ] {
            if v.capacity() > KEEP_BYTES {
                *v = Vec::new();
            }
        }
        if self.ranges.capacity() > MAX_MEMBERS * 2 {
            self.ranges = Vec::new();
        }
    }
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

/// Runs `f` with this thread's buffers (fresh ones if they are in use).
fn with_buffers<R>(f: impl FnOnce(&mut Buffers) -> R) -> R {
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let r = f(&mut bufs);
            bufs.shrink();
            r
        }
        // Re-entrancy is impossible here, but never panic on it.
        Err(_) => f(&mut Buffers::default()),
    })
}

/// Whether `name`'s members are ranked by q-value, case-insensitive and
/// sorted in the normal form.
fn is_ranked(name: &HeaderName) -> bool {
    name == ACCEPT || name == ACCEPT_ENCODING || name == ACCEPT_LANGUAGE
}

/// Calls `f` with the normal form of the field `name` whose lines are
/// `values`, or `None` when it has none.
pub(crate) fn with_normal_form<'a, R>(
    name: &HeaderName,
    values: impl IntoIterator<Item = &'a HeaderValue>,
    f: impl FnOnce(Option<&[u8]>) -> R,
) -> R {
    with_buffers(|bufs| {
        let mut out = std::mem::take(&mut bufs.a);
        let present = normalize(name, values, bufs, &mut out);
        let r = f(present.then_some(&out[..]));
        bufs.a = out;
        r
    })
}

/// Whether the field `name` has the same normal form with lines `a` as
/// with lines `b` (both absent included).
pub(crate) fn same_normal_form<'a, 'b>(
    name: &HeaderName,
    a: impl IntoIterator<Item = &'a HeaderValue>,
    b: impl IntoIterator<Item = &'b HeaderValue>,
) -> bool {
    with_buffers(|bufs| {
        let (mut x, mut y) = (std::mem::take(&mut bufs.a), std::mem::take(&mut bufs.b));
        let same = normalize(name, a, bufs, &mut x) == normalize(name, b, bufs, &mut y) && x == y;
        (bufs.a, bufs.b) = (x, y);
        same
    })
}

/// The normal form, allocated (tests, diagnostics).
#[cfg(test)]
pub(crate) fn normal_form<'a>(
    name: &HeaderName,
    values: impl IntoIterator<Item = &'a HeaderValue>,
) -> Option<String> {
    with_normal_form(name, values, |n| {
        n.map(|b| String::from_utf8_lossy(b).into_owned())
    })
}

/// Writes the normal form of `name` with lines `values` into `out`;
/// false (and `out` empty) when there are no lines.
fn normalize<'a>(
    name: &HeaderName,
    values: impl IntoIterator<Item = &'a HeaderValue>,
    bufs: &mut Buffers,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    let mut values = values.into_iter();
    let Some(first) = values.next() else {
        return false;
    };
    let value: &[u8] = match values.next() {
        // One line (the common case) is read where it is.
        None => first.as_bytes(),
        Some(second) => {
            let combined = &mut bufs.combined;
            combined.clear();
            combined.extend_from_slice(first.as_bytes());
            for v in std::iter::once(second).chain(values) {
                combined.push(b',');
                combined.extend_from_slice(v.as_bytes());
            }
            combined
        }
    };
    if !(is_ranked(name) && rank(value, &mut bufs.members, &mut bufs.ranges, out)) {
        for (i, (start, end)) in members(value, b',').enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(&value[start..end]);
        }
    }
    true
}

/// Writes into `out` the members of `value` (a ranked field) normalised,
/// empty ones dropped, sorted; false (and `out` untouched) when there are
/// more than [`MAX_MEMBERS`].
fn rank(
    value: &[u8],
    normal: &mut Vec<u8>,
    ranges: &mut Vec<(usize, usize)>,
    out: &mut Vec<u8>,
) -> bool {
    normal.clear();
    ranges.clear();
    for (count, (start, end)) in members(value, b',').enumerate() {
        if count == MAX_MEMBERS {
            return false;
        }
        let at = normal.len();
        normalize_member(&value[start..end], normal);
        if normal.len() > at {
            ranges.push((at, normal.len()));
        }
    }
    ranges.sort_unstable_by(|x, y| normal[x.0..x.1].cmp(&normal[y.0..y.1]));
    for (i, r) in ranges.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(&normal[r.0..r.1]);
    }
    true
}

/// Appends the normal form of one member of a ranked field: its value
/// lowercased, then each non-empty parameter as `;name=value`, the name
/// lowercased, the value as it is.
fn normalize_member(member: &[u8], out: &mut Vec<u8>) {
    if !member.contains(&b';') {
        // No parameters (most members): the value alone.
        return lowercased(member, out);
    }
    for (i, (start, end)) in members(member, b';').enumerate() {
        let piece = &member[start..end];
        if i == 0 {
            lowercased(piece, out);
            continue;
        }
        if piece.is_empty() {
            continue;
        }
        let eq = piece.iter().position(|&b| b == b'=').unwrap_or(piece.len());
        out.push(b';');
        lowercased(&piece[..eq], out);
        out.extend_from_slice(&piece[eq..]);
    }
}

/// Appends `bytes` with ASCII letters lowercased.
fn lowercased(bytes: &[u8], out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(bytes);
    out[at..].make_ascii_lowercase();
}

/// The members of `value` separated by `sep` outside quoted strings
/// (RFC 9110 §5.6.4, with `\` escapes), each trimmed of the whitespace
/// around it, as ranges of `value`. An unclosed quote runs to the end.
fn members(value: &[u8], sep: u8) -> Members<'_> {
    Members {
        value,
        sep,
        pos: 0,
        done: false,
        quotes: value.contains(&QUOTE),
    }
}

/// The iterator of [`members`].
struct Members<'v> {
    value: &'v [u8],
    sep: u8,
    pos: usize,
    done: bool,
    /// Whether `value` has a quote at all (most have none).
    quotes: bool,
}

impl Iterator for Members<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        if self.done {
            return None;
        }
        let (value, sep, start) = (self.value, self.sep, self.pos);
        let end = if self.quotes {
            separator(value, start, sep)
        } else {
            value[start..]
                .iter()
                .position(|&b| b == sep)
                .map_or(value.len(), |i| start + i)
        };
        if end < value.len() {
            self.pos = end + 1;
        } else {
            self.done = true;
        }
        Some(trimmed(value, start, end))
    }
}

/// Where the first `sep` from `pos` on outside quoted strings is, or the
/// end of `value`.
fn separator(value: &[u8], mut pos: usize, sep: u8) -> usize {
    loop {
        match value[pos..].iter().position(|&b| b == sep || b == QUOTE) {
            None => return value.len(),
            Some(i) if value[pos + i] == sep => return pos + i,
            Some(i) => pos = closing_quote(value, pos + i + 1),
        }
    }
}

/// Where the quoted string whose content starts at `pos` ends: just past
/// its closing quote, or the end of `value`.
fn closing_quote(value: &[u8], mut pos: usize) -> usize {
    while pos < value.len() {
        match value[pos] {
            QUOTE => return pos + 1,
            BACKSLASH => pos += 2,
            _ => pos += 1,
        }
    }
    value.len()
}

/// `start..end` of `value` without the whitespace at either end.
fn trimmed(value: &[u8], mut start: usize, mut end: usize) -> (usize, usize) {
    while start < end && value[start].is_ascii_whitespace() {
        start += 1;
    }
    while end > start && value[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(lines: &[&str]) -> Vec<HeaderValue> {
        lines
            .iter()
            .map(|l| HeaderValue::from_str(l).unwrap())
            .collect()
    }

    fn norm(name: &str, lines: &[&str]) -> Option<String> {
        normal_form(
            &HeaderName::from_bytes(name.as_bytes()).unwrap(),
            &values(lines),
        )
    }

    fn same(name: &str, a: &[&str], b: &[&str]) -> bool {
        let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
        same_normal_form(&name, &values(a), &values(b))
    }

    /// RFC 9111 §4.1 with RFC 9110 §5.3: field lines are combined before
    /// they are compared; absent is unlike empty.
    #[test]
    fn rfc9111_4_1_field_lines_are_combined() {
        assert_eq!(norm("x-a", &[]), None);
        assert_eq!(norm("x-a", &[""]).as_deref(), Some(""));
        assert_eq!(norm("x-a", &["a", "b"]).as_deref(), Some("a, b"));
        assert!(same("x-a", &["a", "b"], &["a, b"]));
        assert!(same("x-a", &["a", "b"], &["a,b"]));
        assert!(same("accept-encoding", &["gzip", "br"], &["br, gzip"]));
        assert!(!same("x-a", &[], &[""]));
        assert!(!same("accept-encoding", &[], &[""]));
        assert!(same("x-a", &[], &[]));
        // A quoted string may span what were two lines.
        assert_eq!(norm("x-a", &["\"a", "b\""]).as_deref(), Some("\"a,b\""));
    }

    /// RFC 9111 §4.1 with RFC 9110 §5.6.1: whitespace around list members
    /// does not count; anything else of a field not known to be a ranked
    /// list does (order, case, empty members).
    #[test]
    fn rfc9111_4_1_other_fields_are_trimmed_only() {
        assert_eq!(norm("x-a", &["  a ,b\t,  c  "]).as_deref(), Some("a, b, c"));
        assert_eq!(norm("x-a", &["a,,b"]).as_deref(), Some("a, , b"));
        assert_eq!(norm("x-a", &["a", ""]).as_deref(), Some("a, "));
        assert!(same("user-agent", &["x ,y"], &["x, y"]));
        assert!(!same("x-a", &["a, b"], &["b, a"]));
        assert!(!same("x-a", &["A"], &["a"]));
        assert!(!same("x-a", &["a,,b"], &["a, b"]));
        // Commas and spaces inside quoted strings are the value's own.
        assert_eq!(
            norm("x-a", &[r#" "a , b" , c "#]).as_deref(),
            Some(r#""a , b", c"#)
        );
        assert!(!same("x-a", &[r#""a,b""#], &[r#""a, b""#]));
        assert_eq!(
            norm("x-a", &[r#""a\", b" ,c"#]).as_deref(),
            Some(r#""a\", b", c"#)
        );
        // An unclosed quote runs to the end.
        assert_eq!(
            norm("x-a", &[r#"a, "b , c"#]).as_deref(),
            Some(r#"a, "b , c"#)
        );
    }

    /// RFC 9111 §4.1 with RFC 9110 §12.5.3: content codings are
    /// case-insensitive and ranked by q-value, not by place.
    #[test]
    fn rfc9111_4_1_accept_encoding_ignores_order_and_case() {
        let want = Some("br, gzip".to_owned());
        for v in [
            "gzip, br",
            "br,gzip",
            "BR, GZip",
            " gzip ,, br ",
            ",br,GZIP,",
        ] {
            assert_eq!(norm("accept-encoding", &[v]), want, "{v:?}");
        }
        assert_eq!(norm("accept-encoding", &["gzip", "BR"]), want);
        assert_eq!(
            norm("accept-encoding", &["gzip;q=1.0, identity; Q=0.5, *;q=0"]).as_deref(),
            Some("*;q=0, gzip;q=1.0, identity;q=0.5")
        );
        assert!(!same("accept-encoding", &["gzip"], &["br"]));
        assert!(!same("accept-encoding", &["gzip;q=0.5"], &["gzip;q=0.6"]));
        assert!(!same("accept-encoding", &["gzip, br"], &["gzip"]));
        assert!(!same("accept-encoding", &["gzip, gzip"], &["gzip"]));
        assert_eq!(norm("accept-encoding", &[" , "]).as_deref(), Some(""));
    }

    /// RFC 9111 §4.1 with RFC 9110 §12.5.4: language ranges are
    /// case-insensitive.
    #[test]
    fn rfc9111_4_1_accept_language_ignores_case() {
        assert!(same("accept-language", &["en-US"], &["en-us"]));
        assert!(same(
            "accept-language",
            &["fr-CH, fr;q=0.9, en;q=0.8"],
            &["EN;q=0.8,FR;Q=0.9", "fr-ch"]
        ));
        assert!(!same("accept-language", &["en-US"], &["en-GB"]));
        assert!(!same("accept-language", &["en"], &["en-US"]));
    }

    /// RFC 9111 §4.1 with RFC 9110 §12.5.1: media types and parameter names
    /// are case-insensitive, parameter values may not be.
    #[test]
    fn rfc9111_4_1_accept_keeps_parameter_values() {
        assert_eq!(
            norm(
                "accept",
                &["Text/HTML ; Level=1 ;q=0.7, application/JSON, */*;q=0.1"]
            )
            .as_deref(),
            Some("*/*;q=0.1, application/json, text/html;level=1;q=0.7")
        );
        assert!(same(
            "accept",
            &["text/html, application/xml;q=0.9"],
            &["application/xml; q=0.9", "TEXT/html"]
        ));
        assert!(!same(
            "accept",
            &["text/plain;charset=\"A\""],
            &["text/plain;charset=\"a\""]
        ));
        assert!(!same("accept", &["text/plain;x=A"], &["text/plain;x=a"]));
        // A quoted parameter value keeps its commas, semicolons and case.
        assert_eq!(
            norm("accept", &[r#"Text/X;P="A, b;C", a/b"#]).as_deref(),
            Some(r#"a/b, text/x;p="A, b;C""#)
        );
        // Empty parameters are dropped.
        assert!(same("accept", &["text/html;;q=1;"], &["text/html;q=1"]));
    }

    /// Bounded work: past `MAX_MEMBERS` members a ranked field is compared
    /// combined and trimmed, not sorted; the result never equals the
    /// sorted form of a shorter field.
    #[test]
    fn rfc9111_4_1_too_many_members_are_compared_as_combined() {
        let at_cap: Vec<String> = (0..MAX_MEMBERS).rev().map(|i| format!("C{i}")).collect();
        let sorted = norm("accept-encoding", &[&at_cap.join(",")]).unwrap();
        assert!(sorted.starts_with("c0, c1, c10, "), "{sorted}");
        let over: Vec<String> = (0..=MAX_MEMBERS).rev().map(|i| format!("C{i}")).collect();
        let combined = norm("accept-encoding", &[&over.join(" ,")]).unwrap();
        assert_eq!(combined, over.join(", "));
        // Many field lines count as many members.
        let lines: Vec<&str> = vec!["gzip"; MAX_MEMBERS + 1];
        assert_eq!(
            norm("accept-encoding", &lines).unwrap(),
            vec!["gzip"; MAX_MEMBERS + 1].join(", ")
        );
        // A huge field is linear and leaves no large buffer behind.
        let huge = format!("{}a", "a,".repeat(99_999));
        assert_eq!(norm("accept", &[&huge]).unwrap().len(), 100_000 * 3 - 2);
        BUFFERS.with(|b| {
            let b = b.borrow();
            assert!(b.combined.capacity() <= KEEP_BYTES);
            assert!(b.a.capacity() <= KEEP_BYTES);
            assert!(b.ranges.capacity() <= MAX_MEMBERS * 2);
        });
    }

    /// A quoted string may hold an escaped quote (RFC 9110 §5.6.4): the
    /// comma after it is still inside the string, so the member does not end
    /// there.
    #[test]
    fn rfc9110_5_6_4_an_escaped_quote_does_not_end_a_quoted_string() {
        assert_eq!(norm("x-a", &[r#""\"a, b" ,c"#]).unwrap(), r#""\"a, b", c"#);
        assert_eq!(
            norm("x-a", &[r#" "a\"b , c" ,d "#]).unwrap(),
            r#""a\"b , c", d"#
        );
        assert!(same("x-a", &[r#""a\"b , c",d"#], &[r#" "a\"b , c" , d"#]));
        assert!(!same("x-a", &[r#""a\"b , c",d"#], &[r#""a\"b", c, d"#]));
        // Wherever the escape is in the string.
        assert_eq!(
            norm("x-a", &[r#""abcdef\"x, y" ,z"#]).unwrap(),
            r#""abcdef\"x, y", z"#
        );
        // A trailing backslash ends the value, not the string.
        assert_eq!(norm("x-a", &[r#""a\"#]).unwrap(), r#""a\"#);
    }

    /// Buffers of ordinary sizes are kept for the next request (no
    /// allocation per lookup); only larger ones are dropped, so one huge
    /// field leaves nothing behind.
    #[test]
    fn buffers_up_to_their_bounds_are_kept_and_larger_ones_dropped() {
        let mut b = Buffers {
            combined: Vec::with_capacity(10 * 1024),
            members: Vec::with_capacity(KEEP_BYTES + 1),
            ranges: Vec::with_capacity(MAX_MEMBERS * 2),
            a: Vec::with_capacity(KEEP_BYTES),
            b: Vec::with_capacity(KEEP_BYTES + 1),
        };
        b.shrink();
        assert!(
            b.combined.capacity() >= 10 * 1024,
            "a 10 KiB buffer is kept"
        );
        assert!(
            b.a.capacity() >= KEEP_BYTES,
            "a buffer at the bound is kept"
        );
        assert_eq!(b.members.capacity(), 0, "over the bound: dropped");
        assert_eq!(b.b.capacity(), 0, "over the bound: dropped");
        assert!(
            b.ranges.capacity() >= MAX_MEMBERS * 2,
            "ranges at the bound are kept"
        );
        b.ranges = Vec::with_capacity(MAX_MEMBERS * 2 + 1);
        b.shrink();
        assert_eq!(b.ranges.capacity(), 0, "ranges over the bound: dropped");
    }

    /// Normalising twice changes nothing more.
    #[test]
    fn rfc9111_4_1_normal_forms_are_stable() {
        let cases: [(&str, &[&str]); 5] = [
            ("accept", &["Text/HTML ; Level=1 ;q=0.7, */*"]),
            ("accept-encoding", &["gzip", " BR ,"]),
            ("accept-language", &["en-US,fr"]),
            ("x-a", &[" a ,, \"b , c\" ", ""]),
            ("user-agent", &["Mozilla/5.0 (X11; Linux x86_64)"]),
        ];
        for (name, lines) in cases {
            let once = norm(name, lines).unwrap();
            assert_eq!(norm(name, &[&once]).unwrap(), once, "{name}");
        }
    }
}
