//! `Cache-Control` parsing (RFC 9111 §5.2) for requests and responses, and
//! of targeted cache-control fields such as `CDN-Cache-Control` (RFC 9213).

use http::header::{HeaderMap, HeaderName, CACHE_CONTROL, PRAGMA};

use super::sfv::{self, Bare, Member};

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

    /// Parses a targeted cache-control field (RFC 9213 §2.2), such as
    /// `CDN-Cache-Control`: every line of `name` in `headers`, combined
    /// with commas and parsed as a Structured Fields Dictionary
    /// (RFC 8941). `None` when the field is absent, empty, or not a valid
    /// Dictionary (non-ASCII bytes, an uppercase key, a trailing comma,
    /// …): RFC 9213 then has the cache ignore it.
    ///
    /// Each member is a response directive with the meaning it has in
    /// `Cache-Control`. A delta-seconds directive (`max-age`, `s-maxage`,
    /// `stale-while-revalidate`, `stale-if-error`) takes an Integer; any
    /// other value (a negative one, a String, a Decimal) reads as `0`, as
    /// an invalid value does in `Cache-Control`. `no-cache` and `private`
    /// take their field names as a String (`no-cache="set-cookie"`), a
    /// Token or an Inner List. A member whose value is `?0` is absent.
    /// Parameters are ignored; a repeated key keeps its last value
    /// (RFC 8941). Request directives (`max-stale`, `min-fresh`,
    /// `only-if-cached`) and unknown ones are ignored.
    ///
    /// ```
    /// use http::{HeaderMap, HeaderName};
    /// use tower_tiered_cache::policy::CacheControl;
    ///
    /// let name = HeaderName::from_static("cdn-cache-control");
    /// let mut h = HeaderMap::new();
    /// h.insert(&name, "max-age=600, stale-while-revalidate=30".parse().unwrap());
    /// let cc = CacheControl::from_targeted(&h, &name).unwrap();
    /// assert_eq!(cc.max_age, Some(600));
    /// assert_eq!(cc.stale_while_revalidate, Some(30));
    ///
    /// // Not a Dictionary (keys are lowercase): ignored.
    /// h.insert(&name, "Max-Age=600".parse().unwrap());
    /// assert_eq!(CacheControl::from_targeted(&h, &name), None);
    /// ```
    pub fn from_targeted(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut lines = headers.get_all(name).iter();
        let first = lines.next()?.to_str().ok()?;
        let Some(second) = lines.next() else {
            return Self::parse_targeted(first);
        };
        let mut combined = String::from(first);
        for line in std::iter::once(second).chain(lines) {
            combined.push_str(", ");
            combined.push_str(line.to_str().ok()?);
        }
        Self::parse_targeted(&combined)
    }

    /// Parses one targeted field value; see
    /// [`from_targeted`](Self::from_targeted).
    pub fn parse_targeted(value: &str) -> Option<Self> {
        let dict = sfv::parse_dictionary(value)?;
        if dict.is_empty() {
            return None;
        }
        let mut cc = CacheControl::default();
        for (key, member) in &dict {
            cc.apply_targeted(key, member);
        }
        Some(cc)
    }

    /// One member of a targeted field. Keys are unique (the Dictionary
    /// kept the last of a repeated one).
    fn apply_targeted(&mut self, key: &str, member: &Member) {
        if *member == Member::Item(Bare::Boolean(false)) {
            return;
        }
        match key {
            "max-age" => self.max_age = Some(sf_seconds(member)),
            "s-maxage" => self.s_maxage = Some(sf_seconds(member)),
            "stale-while-revalidate" => self.stale_while_revalidate = Some(sf_seconds(member)),
            "stale-if-error" => self.stale_if_error = Some(sf_seconds(member)),
            "no-cache" => match sf_fields(member) {
                Some(fields) if !fields.is_empty() => self.no_cache_fields = fields,
                _ => self.no_cache = true,
            },
            "private" => match sf_fields(member) {
                Some(fields) if !fields.is_empty() => self.private_fields = fields,
                _ => self.private = true,
            },
            "no-store" => self.no_store = true,
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "immutable" => self.immutable = true,
            "must-understand" => self.must_understand = true,
            _ => {}
        }
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

/// A targeted delta-seconds value: a non-negative Integer, saturating at
/// [`MAX_DELTA_SECONDS`]; anything else reads as 0 (stale).
fn sf_seconds(member: &Member) -> u64 {
    match member {
        Member::Item(Bare::Integer(n)) if *n >= 0 => (*n as u64).min(MAX_DELTA_SECONDS),
        _ => 0,
    }
}

/// The field names of a targeted `no-cache` / `private`: a String (a
/// comma-separated list, as in `Cache-Control`), a Token, or an Inner List
/// of them; `None` for other values (the directive is then unqualified).
fn sf_fields(member: &Member) -> Option<Vec<String>> {
    let text = |b: &Bare| match b {
        Bare::String(s) => Some(field_list(s).collect::<Vec<_>>()),
        Bare::Token(t) => Some(vec![t.to_ascii_lowercase()]),
        _ => None,
    };
    match member {
        Member::Item(b) => text(b),
        Member::InnerList(items) => {
            let mut all = Vec::new();
            for b in items {
                all.extend(text(b)?);
            }
            Some(all)
        }
    }
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

    fn targeted(s: &str) -> Option<CacheControl> {
        CacheControl::parse_targeted(s)
    }

    #[test]
    fn rfc9213_2_2_targeted_members_map_to_directives() {
        let c = targeted(
            "max-age=60, s-maxage=30, stale-while-revalidate=10, stale-if-error=600, \
             must-revalidate, proxy-revalidate, public, immutable, no-store, must-understand",
        )
        .unwrap();
        assert_eq!(c.max_age, Some(60));
        assert_eq!(c.s_maxage, Some(30));
        assert_eq!(c.stale_while_revalidate, Some(10));
        assert_eq!(c.stale_if_error, Some(600));
        assert!(c.must_revalidate && c.proxy_revalidate && c.public && c.immutable);
        assert!(c.no_store && c.must_understand);

        // Field names of no-cache / private: a String, a Token, an Inner List.
        let c = targeted(r#"no-cache="Set-Cookie, X-Foo", private=x-user"#).unwrap();
        assert!(!c.no_cache && !c.private);
        assert_eq!(c.no_cache_fields, ["set-cookie", "x-foo"]);
        assert_eq!(c.private_fields, ["x-user"]);
        let c = targeted(r#"no-cache=("a" b)"#).unwrap();
        assert_eq!(c.no_cache_fields, ["a", "b"]);
        // Unqualified: true, an empty String, or a value of another type.
        for v in ["no-cache", "no-cache=?1", r#"no-cache="""#, "no-cache=1"] {
            let c = targeted(v).unwrap();
            assert!(c.no_cache && c.no_cache_fields.is_empty(), "{v}");
        }
        assert!(targeted("private").unwrap().private);

        // `?0` is the directive's absence.
        let c = targeted("no-store=?0, private=?0, max-age=?0").unwrap();
        assert!(!c.no_store && !c.private && c.max_age.is_none());

        // Request directives and unknown ones are not read; the field is
        // still valid (and so replaces Cache-Control).
        let c = targeted("max-stale=5, min-fresh=5, only-if-cached, foo=bar").unwrap();
        assert!(c.is_empty());
    }

    /// Cases the tables above left open (each once a surviving mutant):
    /// an empty field list is the unqualified directive, in both syntaxes;
    /// `is_empty` is false once something is understood; escaped quotes
    /// in a quoted value, at its start or inside, and an unterminated one,
    /// neither end the value early nor panic nor loop.
    #[test]
    fn empty_field_lists_escapes_and_unterminated_quotes() {
        for v in [r#"private="""#, r#"private=" ""#] {
            let c = cc(v);
            assert!(c.private && c.private_fields.is_empty(), "{v}");
        }
        for v in [r#"no-cache="""#, r#"no-cache="  ""#] {
            let c = cc(v);
            assert!(c.no_cache && c.no_cache_fields.is_empty(), "{v}");
        }
        let c = CacheControl::parse_targeted("private=()").unwrap();
        assert!(c.private && c.private_fields.is_empty());
        let c = CacheControl::parse_targeted("private=(a)").unwrap();
        assert!(!c.private && c.private_fields == ["a"]);

        assert!(!cc("max-age=5").is_empty());
        assert!(!cc("no-store").is_empty());

        // The field names keep their escapes (no such name is valid).
        for (v, fields) in [
            (r#"private="\"x", max-age=5"#, &[r#"\"x"#][..]),
            (r#"private="a\"b, c", max-age=5"#, &[r#"a\"b"#, "c"][..]),
            (r#"private="a\\", max-age=5"#, &[r#"a\\"#][..]),
        ] {
            let c = cc(v);
            assert_eq!(c.max_age, Some(5), "{v}");
            assert!(!c.private, "{v}");
            assert_eq!(c.private_fields, fields, "{v}");
        }
        for v in [
            r#"no-cache="abc"#,
            r#"no-cache="ab\"#,
            r#"no-cache="\"#,
            "no-cache=\"",
        ] {
            let c = cc(v);
            assert!(c.max_age.is_none(), "{v}");
        }
    }

    #[test]
    fn rfc9213_2_2_targeted_delta_seconds_are_integers() {
        assert_eq!(targeted("max-age=0").unwrap().max_age, Some(0));
        assert_eq!(
            targeted("max-age=999999999999999").unwrap().max_age,
            Some(MAX_DELTA_SECONDS)
        );
        // Not a non-negative Integer: stale, as in Cache-Control.
        for v in [
            "max-age=-1",
            r#"max-age="60""#,
            "max-age=1.5",
            "max-age",
            "max-age=abc",
            "max-age=:AA==:",
            "max-age=(60)",
        ] {
            assert_eq!(targeted(v).unwrap().max_age, Some(0), "{v}");
        }
    }

    #[test]
    fn rfc9213_2_2_parameters_are_ignored() {
        let c = targeted("max-age=60;x=1;y, no-store;z=\"q\"").unwrap();
        assert_eq!(c.max_age, Some(60));
        assert!(c.no_store);
        // But they must parse.
        assert_eq!(targeted("max-age=60;X=1"), None);
    }

    #[test]
    fn rfc9213_2_2_a_repeated_key_keeps_its_last_value() {
        // RFC 8941's rule for Dictionaries, not Cache-Control's first-wins.
        assert_eq!(
            targeted("max-age=10, max-age=20").unwrap().max_age,
            Some(20)
        );
        assert!(!targeted("no-store, no-store=?0").unwrap().no_store);
    }

    #[test]
    fn rfc9213_2_2_invalid_or_empty_targeted_fields_are_ignored() {
        for v in [
            "",
            "   ",
            "Max-Age=60",
            "max-age=60,",
            "max-age=60 no-store",
            "max-age=60;",
            "max-age=\"60",
            "public, max-age=60, ",
            "no-cache=\"a\\b\"",
            "max-age = 60",
        ] {
            assert_eq!(targeted(v), None, "{v:?}");
        }
    }

    #[test]
    fn rfc9213_2_2_targeted_field_names_in_any_case_and_on_several_lines() {
        let name = HeaderName::from_static("cdn-cache-control");
        // A name given in any case is the same field.
        let mut h = HeaderMap::new();
        h.append(
            HeaderName::from_bytes(b"CDN-Cache-Control").unwrap(),
            "max-age=60".parse().unwrap(),
        );
        h.append(
            HeaderName::from_bytes(b"Cdn-Cache-Control").unwrap(),
            "must-revalidate".parse().unwrap(),
        );
        let c = CacheControl::from_targeted(&h, &name).unwrap();
        assert_eq!(c.max_age, Some(60));
        assert!(c.must_revalidate);
        // Lines are combined before parsing: the last value of a key wins
        // across lines, and one bad line spoils the field.
        h.append(&name, "max-age=5".parse().unwrap());
        assert_eq!(
            CacheControl::from_targeted(&h, &name).unwrap().max_age,
            Some(5)
        );
        h.append(&name, "Bad".parse().unwrap());
        assert_eq!(CacheControl::from_targeted(&h, &name), None);
        // An empty line makes a trailing comma.
        let mut h = HeaderMap::new();
        h.append(&name, "max-age=60".parse().unwrap());
        h.append(&name, "".parse().unwrap());
        assert_eq!(CacheControl::from_targeted(&h, &name), None);
        // Non-ASCII bytes: invalid.
        let mut h = HeaderMap::new();
        h.append(
            &name,
            http::HeaderValue::from_bytes(b"max-age=60, x=\"\xe9\"").unwrap(),
        );
        assert_eq!(CacheControl::from_targeted(&h, &name), None);
        // Absent.
        assert_eq!(CacheControl::from_targeted(&HeaderMap::new(), &name), None);
        // Cache-Control is not read.
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, "max-age=60".parse().unwrap());
        assert_eq!(CacheControl::from_targeted(&h, &name), None);
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
