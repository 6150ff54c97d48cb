//! `Cache-Control` parsing (RFC 9111 §5.2) for requests and responses.

use http::header::{HeaderMap, CACHE_CONTROL, PRAGMA};

/// The largest delta-seconds value honoured (RFC 9111 §1.2.2: 2^31).
pub const MAX_DELTA_SECONDS: u64 = 2_147_483_648;

/// Parsed `Cache-Control` directives of one message (all header lines).
///
/// Unknown directives are ignored. When a directive appears more than once
/// the first occurrence wins. A `max-age` / `s-maxage` whose value is not a
/// number is read as `0` (the response is treated as stale), as RFC 9111
/// §4.2.1 allows.
///
/// ```
/// use http::HeaderMap;
/// use tower_tiered_cache::policy::CacheControl;
///
/// let mut h = HeaderMap::new();
/// h.insert("cache-control", "public, max-age=60, stale-while-revalidate=30".parse().unwrap());
/// let cc = CacheControl::from_headers(&h);
/// assert_eq!(cc.max_age, Some(60));
/// assert_eq!(cc.stale_while_revalidate, Some(30));
/// assert!(cc.public);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheControl {
    /// `max-age=N` (seconds).
    pub max_age: Option<u64>,
    /// `s-maxage=N` (seconds, shared caches only).
    pub s_maxage: Option<u64>,
    /// `no-cache` without field names (or, on a request, `Pragma: no-cache`).
    pub no_cache: bool,
    /// Field names of a qualified `no-cache="a, b"`.
    pub no_cache_fields: Vec<String>,
    /// `no-store`.
    pub no_store: bool,
    /// `private` without field names.
    pub private: bool,
    /// Field names of a qualified `private="a, b"`.
    pub private_fields: Vec<String>,
    /// `public`.
    pub public: bool,
    /// `must-revalidate`.
    pub must_revalidate: bool,
    /// `proxy-revalidate`.
    pub proxy_revalidate: bool,
    /// `immutable` (RFC 8246).
    pub immutable: bool,
    /// `stale-while-revalidate=N` (RFC 5861).
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error=N` (RFC 5861).
    pub stale_if_error: Option<u64>,
    /// Request `max-stale[=N]`: `Some(None)` accepts any staleness.
    pub max_stale: Option<Option<u64>>,
    /// Request `min-fresh=N`.
    pub min_fresh: Option<u64>,
    /// Request `only-if-cached`.
    pub only_if_cached: bool,
    /// `must-understand` (RFC 9111 §5.2.2.3): store only a status this
    /// cache understands, and then even with `no-store`.
    pub must_understand: bool,
}

impl CacheControl {
    /// Parses every `Cache-Control` line of `headers`. `Pragma: no-cache` is
    /// honoured as `no-cache` when no `Cache-Control` line is present
    /// (RFC 9111 §5.4).
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut cc = CacheControl::default();
        let mut seen = Seen::default();
        let mut any = false;
        for value in headers.get_all(CACHE_CONTROL) {
            any = true;
            if let Ok(s) = value.to_str() {
                cc.parse_into(s, &mut seen);
            }
        }
        if !any {
            for value in headers.get_all(PRAGMA) {
                if let Ok(s) = value.to_str() {
                    if s.split(',')
                        .any(|p| p.trim().eq_ignore_ascii_case("no-cache"))
                    {
                        cc.no_cache = true;
                    }
                }
            }
        }
        cc
    }

    /// Parses one header value.
    pub fn parse(value: &str) -> Self {
        let mut cc = CacheControl::default();
        cc.parse_into(value, &mut Seen::default());
        cc
    }

    /// True when the message carried nothing this type understands.
    pub fn is_empty(&self) -> bool {
        *self == CacheControl::default()
    }

    fn parse_into(&mut self, value: &str, seen: &mut Seen) {
        for (name, arg) in Directives::new(value) {
            let lname = name.to_ascii_lowercase();
            match lname.as_str() {
                "max-age" => set_once(&mut self.max_age, &mut seen.max_age, seconds(arg)),
                "s-maxage" => set_once(&mut self.s_maxage, &mut seen.s_maxage, seconds(arg)),
                "no-cache" => match arg {
                    Some(fields) if !fields.trim().is_empty() => {
                        self.no_cache_fields.extend(field_list(fields))
                    }
                    _ => self.no_cache = true,
                },
                "no-store" => self.no_store = true,
                "private" => match arg {
                    Some(fields) if !fields.trim().is_empty() => {
                        self.private_fields.extend(field_list(fields))
                    }
                    _ => self.private = true,
                },
                "public" => self.public = true,
                "must-revalidate" => self.must_revalidate = true,
                "proxy-revalidate" => self.proxy_revalidate = true,
                "immutable" => self.immutable = true,
                "stale-while-revalidate" => set_once(
                    &mut self.stale_while_revalidate,
                    &mut seen.stale_while_revalidate,
                    seconds(arg),
                ),
                "stale-if-error" => set_once(
                    &mut self.stale_if_error,
                    &mut seen.stale_if_error,
                    seconds(arg),
                ),
                "must-understand" => self.must_understand = true,
                "max-stale" if self.max_stale.is_none() => {
                    self.max_stale = Some(arg.and_then(parse_delta));
                }
                "min-fresh" => set_once(&mut self.min_fresh, &mut seen.min_fresh, seconds(arg)),
                "only-if-cached" => self.only_if_cached = true,
                _ => {}
            }
        }
    }
}

/// Which directives with a value were met already: the first occurrence
/// decides, later ones are ignored (RFC 9111 §4.2.1), across every line.
#[derive(Default)]
struct Seen {
    max_age: bool,
    s_maxage: bool,
    stale_while_revalidate: bool,
    stale_if_error: bool,
    min_fresh: bool,
}

fn set_once(slot: &mut Option<u64>, seen: &mut bool, v: u64) {
    if !*seen {
        *seen = true;
        *slot = Some(v);
    }
}

/// A delta-seconds argument; a missing or malformed one reads as 0 so the
/// message is treated as stale rather than fresh.
fn seconds(arg: Option<&str>) -> u64 {
    arg.and_then(parse_delta).unwrap_or(0)
}

/// Parses delta-seconds, saturating at [`MAX_DELTA_SECONDS`].
pub(crate) fn parse_delta(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        s.parse::<u64>()
            .unwrap_or(MAX_DELTA_SECONDS)
            .min(MAX_DELTA_SECONDS),
    )
}

fn field_list(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(',')
        .map(|f| f.trim().to_ascii_lowercase())
        .filter(|f| !f.is_empty())
}

/// Iterates `name[=value]` pairs, honouring quoted strings (commas inside
/// quotes do not split, quotes and escapes are removed from the value).
struct Directives<'a> {
    rest: &'a str,
    buf: String,
}

impl<'a> Directives<'a> {
    fn new(s: &'a str) -> Self {
        Self {
            rest: s,
            buf: String::new(),
        }
    }
}

impl<'a> Iterator for Directives<'a> {
    type Item = (&'a str, Option<&'a str>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let s = self.rest.trim_start_matches([' ', '\t', ',']);
            if s.is_empty() {
                self.rest = s;
                return None;
            }
            let name_end = s.find(['=', ',']).unwrap_or(s.len());
            let name = s[..name_end].trim();
            if s[name_end..].starts_with('=') {
                let after = s[name_end + 1..].trim_start();
                if let Some(quoted) = after.strip_prefix('"') {
                    // Find the closing quote, skipping escaped characters.
                    let bytes = quoted.as_bytes();
                    let mut i = 0;
                    let mut end = None;
                    while i < bytes.len() {
                        match bytes[i] {
                            b'\\' => i += 2,
                            b'"' => {
                                end = Some(i);
                                break;
                            }
                            _ => i += 1,
                        }
                    }
                    let end = end.unwrap_or(quoted.len());
                    let value = &quoted[..end];
                    let consumed = (end + 1).min(quoted.len());
                    let tail = &quoted[consumed..];
                    self.rest = tail.find(',').map(|i| &tail[i..]).unwrap_or("");
                    self.buf.clear();
                    if name.is_empty() {
                        continue;
                    }
                    // Escapes inside field lists are vanishingly rare; the
                    // raw slice (escapes kept) is good enough for them.
                    return Some((name, Some(value)));
                }
                let vend = after.find(',').unwrap_or(after.len());
                let value = after[..vend].trim();
                self.rest = &after[vend..];
                if name.is_empty() {
                    continue;
                }
                return Some((name, Some(value)));
            }
            self.rest = &s[name_end..];
            if name.is_empty() {
                continue;
            }
            return Some((name, None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(s: &str) -> CacheControl {
        CacheControl::parse(s)
    }

    #[test]
    fn directive_table() {
        struct Case {
            input: &'static str,
            check: fn(&CacheControl) -> bool,
        }
        let cases = [
            Case {
                input: "max-age=60",
                check: |c| c.max_age == Some(60),
            },
            Case {
                input: "MAX-AGE=60",
                check: |c| c.max_age == Some(60),
            },
            Case {
                input: "max-age=\"60\"",
                check: |c| c.max_age == Some(60),
            },
            Case {
                input: "max-age=abc",
                check: |c| c.max_age == Some(0),
            },
            Case {
                input: "max-age=",
                check: |c| c.max_age == Some(0),
            },
            Case {
                input: "max-age=10, max-age=20",
                check: |c| c.max_age == Some(10),
            },
            Case {
                input: "max-age=99999999999999999999",
                check: |c| c.max_age == Some(MAX_DELTA_SECONDS),
            },
            Case {
                input: "s-maxage=5, max-age=1",
                check: |c| c.s_maxage == Some(5) && c.max_age == Some(1),
            },
            Case {
                input: "no-cache",
                check: |c| c.no_cache && c.no_cache_fields.is_empty(),
            },
            Case {
                input: "no-cache=\"Set-Cookie, X-Foo\"",
                check: |c| !c.no_cache && c.no_cache_fields == ["set-cookie", "x-foo"],
            },
            Case {
                input: "private",
                check: |c| c.private,
            },
            Case {
                input: "private=\"x-user\"",
                check: |c| !c.private && c.private_fields == ["x-user"],
            },
            Case {
                input: "no-store",
                check: |c| c.no_store,
            },
            Case {
                input: "public, must-revalidate",
                check: |c| c.public && c.must_revalidate,
            },
            Case {
                input: "proxy-revalidate",
                check: |c| c.proxy_revalidate,
            },
            Case {
                input: "stale-while-revalidate=30, stale-if-error=600",
                check: |c| c.stale_while_revalidate == Some(30) && c.stale_if_error == Some(600),
            },
            // RFC 9111 §4.2.1: the first occurrence of a directive decides,
            // valid or not (an invalid delta reads as 0: stale, no window).
            Case {
                input: "stale-while-revalidate=30, stale-while-revalidate=90",
                check: |c| c.stale_while_revalidate == Some(30),
            },
            Case {
                input: "stale-if-error=x, stale-if-error=600",
                check: |c| c.stale_if_error == Some(0),
            },
            Case {
                input: "min-fresh=5, min-fresh=50",
                check: |c| c.min_fresh == Some(5),
            },
            Case {
                input: "max-stale=5, max-stale=50",
                check: |c| c.max_stale == Some(Some(5)),
            },
            Case {
                input: "no-store, must-understand",
                check: |c| c.no_store && c.must_understand,
            },
            Case {
                input: "max-stale",
                check: |c| c.max_stale == Some(None),
            },
            Case {
                input: "max-stale=5",
                check: |c| c.max_stale == Some(Some(5)),
            },
            Case {
                input: "min-fresh=7",
                check: |c| c.min_fresh == Some(7),
            },
            Case {
                input: "only-if-cached",
                check: |c| c.only_if_cached,
            },
            Case {
                input: " , ,max-age=3 ,, public",
                check: |c| c.max_age == Some(3) && c.public,
            },
            Case {
                input: "foo=\"a,b\", max-age=4",
                check: |c| c.max_age == Some(4),
            },
            Case {
                input: "unknown, x=1",
                check: |c| c.is_empty(),
            },
            Case {
                input: "immutable",
                check: |c| c.immutable,
            },
        ];
        for case in cases {
            let parsed = cc(case.input);
            assert!(
                (case.check)(&parsed),
                "{:?} parsed as {:?}",
                case.input,
                parsed
            );
        }
    }

    #[test]
    fn multiple_lines_and_pragma() {
        let mut h = HeaderMap::new();
        h.append(CACHE_CONTROL, "max-age=5".parse().unwrap());
        h.append(CACHE_CONTROL, "no-store".parse().unwrap());
        let c = CacheControl::from_headers(&h);
        assert_eq!(c.max_age, Some(5));
        assert!(c.no_store);

        let mut h = HeaderMap::new();
        h.insert(PRAGMA, "no-cache".parse().unwrap());
        assert!(CacheControl::from_headers(&h).no_cache);

        // Cache-Control present: Pragma is ignored.
        h.insert(CACHE_CONTROL, "max-age=5".parse().unwrap());
        assert!(!CacheControl::from_headers(&h).no_cache);
    }
}
