//! Cache keys: which requests share a stored response.
//!
//! A key is built from the request's method class (`GET`; `HEAD` reads `GET`
//! entries), scheme and authority (each optional), path, query (optionally
//! normalised) and configured request headers, or from a custom function.
//! The readable form is kept in the stored entry; lookups use its 128-bit
//! XXH3 hash, so keys of any length cost the same in memory.
//!
//! With credential partitioning on, a request that carries `Authorization`,
//! `Proxy-Authorization` or `Cookie` gets a credentials component: the
//! XXH3-128 digest of those headers (names and values, in order). The hashed
//! key carries the whole digest, the readable key only its first 16 hex
//! digits, and never the credentials themselves. Requests without
//! credentials keep the key they would have without partitioning.
//!
//! Nothing else of a request is in a key: not the other headers (the
//! stored response's `Vary` selects among variants, `variant_hash`), not
//! the body, not the client's address, not extensions. Whatever reaches
//! the origin and is not in the key must not change the response; the
//! crate docs ("Keys: what a client can change") state the rule for
//! adapters in front of the cache.

pub(crate) mod vary;

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, AUTHORIZATION, COOKIE, HOST, PROXY_AUTHORIZATION};
use http::request::Parts;
use http::Uri;
use xxhash_rust::xxh3::{xxh3_128, xxh3_128_with_seed, Xxh3};

/// A custom key function: returns the readable key for a request, or `None`
/// to let the request pass uncached.
pub type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// A custom key writer, the form both custom keys are kept in: appends the
/// readable key of a request to a buffer, or returns `false` to let the
/// request pass uncached.
pub(crate) type KeyWrite = Arc<dyn Fn(&Parts, &mut String) -> bool + Send + Sync>;

/// A [`KeyFn`]'s function as a writer (its key copied into the buffer).
pub(crate) fn writer_of<F>(f: F) -> KeyWrite
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    Arc::new(move |parts: &Parts, out: &mut String| match f(parts) {
        Some(key) => {
            out.push_str(&key);
            true
        }
        None => false,
    })
}

/// The 128-bit hash that identifies a key in every tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(pub u128);

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// How a request becomes a key. Built through [`CacheBuilder`](crate::CacheBuilder).
#[derive(Clone)]
pub(crate) struct KeyConfig {
    pub(crate) scheme: bool,
    pub(crate) authority: bool,
    pub(crate) sort_query: bool,
    pub(crate) drop_query: Vec<QueryDrop>,
    pub(crate) headers: Vec<HeaderName>,
    pub(crate) custom: Option<KeyWrite>,
    /// Partition requests that carry credentials by their digest.
    pub(crate) credentials: bool,
}

impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyConfig")
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("sort_query", &self.sort_query)
            .field("drop_query", &self.drop_query)
            .field("headers", &self.headers)
            .field("custom", &self.custom.is_some())
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl Default for KeyConfig {
    fn default() -> Self {
        Self {
            scheme: true,
            authority: true,
            sort_query: false,
            drop_query: Vec::new(),
            headers: Vec::new(),
            custom: None,
            credentials: false,
        }
    }
}

/// A query parameter to drop from keys: an exact name, or a prefix when the
/// pattern ends in `*` (`utm_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum QueryDrop {
    Exact(String),
    Prefix(String),
}

impl QueryDrop {
    pub(crate) fn parse(pattern: &str) -> Self {
        match pattern.strip_suffix('*') {
            Some(prefix) => QueryDrop::Prefix(prefix.to_owned()),
            None => QueryDrop::Exact(pattern.to_owned()),
        }
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            QueryDrop::Exact(n) => n == name,
            QueryDrop::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

thread_local! {
    static KEY_BUF: RefCell<String> = RefCell::new(String::with_capacity(256));
}

/// The capacity past which the key buffer is given back after use.
const KEY_BUF_KEEP: usize = 16 * 1024;

/// The request headers that carry credentials, in the order their digest
/// takes them.
pub(crate) static CREDENTIAL_HEADERS: [HeaderName; 3] =
    [AUTHORIZATION, PROXY_AUTHORIZATION, COOKIE];

/// Whether `name` is one of the headers credentials partitioning digests.
pub(crate) fn is_credential_header(name: &http::HeaderName) -> bool {
    name == http::header::AUTHORIZATION
        || name == http::header::PROXY_AUTHORIZATION
        || name == http::header::COOKIE
}

/// What separates the credentials component from the rest of a key.
const CREDENTIALS_TAG: &str = "\ncredentials:";

/// The digest of a request's credentials (`Authorization`,
/// `Proxy-Authorization`, `Cookie`: names and every value, in order), or
/// `None` when it carries none of them. Values are taken byte for byte and
/// length-prefixed, so no two different credential sets feed the hash the
/// same bytes.
pub(crate) fn credentials_digest(headers: &HeaderMap) -> Option<u128> {
    if !CREDENTIAL_HEADERS.iter().any(|n| headers.contains_key(n)) {
        return None;
    }
    let mut h = Xxh3::new();
    for name in &CREDENTIAL_HEADERS {
        h.update(name.as_str().as_bytes());
        h.update(b"\0");
        let mut count: u64 = 0;
        for v in headers.get_all(name) {
            h.update(&(v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
            count += 1;
        }
        h.update(&count.to_le_bytes());
    }
    Some(h.digest128())
}

/// The URI a request is keyed and matched by: the request's own, or, on
/// axum (feature `axum`), the URI before nested routers stripped their
/// prefix (`OriginalUri`), so that one cache inside several nested routers
/// keeps `/api/x` and `/static/x` apart.
#[inline]
pub(crate) fn key_uri(parts: &Parts) -> &http::Uri {
    original_uri(&parts.extensions).unwrap_or(&parts.uri)
}

/// axum's `OriginalUri`, when the request went through an axum router
/// (feature `axum`).
#[inline]
pub(crate) fn original_uri(_extensions: &http::Extensions) -> Option<&http::Uri> {
    #[cfg(feature = "axum")]
    if let Some(original) = _extensions.get::<axum::extract::OriginalUri>() {
        return Some(&original.0);
    }
    None
}

impl KeyConfig {
    /// The key hash of a request, or `None` when the custom key function
    /// declines it. Allocation-free for the default configuration.
    pub(crate) fn hash(&self, parts: &Parts) -> Option<KeyHash> {
        self.hash_uri(key_uri(parts), &parts.headers, Some(parts))
    }

    /// The credentials digest of a request when keys are partitioned by it.
    fn partition(&self, headers: &HeaderMap) -> Option<u128> {
        if self.credentials {
            credentials_digest(headers)
        } else {
            None
        }
    }

    /// The hash for `uri` with `headers`; `parts` feeds the custom function.
    ///
    /// A partitioned key hashes the readable key with the whole credentials
    /// digest (32 hex digits) where the readable key shows 16.
    pub(crate) fn hash_uri(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        parts: Option<&Parts>,
    ) -> Option<KeyHash> {
        let partition = self.partition(headers);
        let custom = match &self.custom {
            Some(custom) => Some((custom, parts?)),
            None => None,
        };
        let fill = |out: &mut String| {
            match custom {
                Some((custom, parts)) => {
                    if !custom(parts, out) {
                        return false;
                    }
                }
                None => self.write_key(out, uri, headers),
            }
            if let Some(d) = partition {
                let _ = write!(out, "{CREDENTIALS_TAG}{d:032x}");
            }
            true
        };
        KEY_BUF.with(|buf| {
            let mut buf = match buf.try_borrow_mut() {
                Ok(b) => b,
                // A custom key function that looks up a key itself; never
                // panic on it.
                Err(_) => {
                    let mut own = String::new();
                    return fill(&mut own).then(|| KeyHash(xxh3_128(own.as_bytes())));
                }
            };
            buf.clear();
            let hash = fill(&mut buf).then(|| KeyHash(xxh3_128(buf.as_bytes())));
            if buf.capacity() > KEY_BUF_KEEP {
                // One huge request does not pin its key's size per thread.
                *buf = String::with_capacity(256);
            }
            hash
        })
    }

    /// The readable key of a request. With credentials partitioning it ends
    /// in `\ncredentials:` and the first 16 hex digits of the credentials
    /// digest; the credentials themselves never appear in it.
    pub(crate) fn readable(&self, parts: &Parts) -> Option<String> {
        let mut s = match &self.custom {
            Some(custom) => {
                let mut s = String::new();
                if !custom(parts, &mut s) {
                    return None;
                }
                s
            }
            None => {
                let mut s = String::with_capacity(64);
                self.write_key(&mut s, key_uri(parts), &parts.headers);
                s
            }
        };
        if let Some(d) = self.partition(&parts.headers) {
            let _ = write!(s, "{CREDENTIALS_TAG}{:016x}", (d >> 64) as u64);
        }
        Some(s)
    }

    fn write_key(&self, out: &mut String, uri: &Uri, headers: &HeaderMap) {
        out.push_str("GET ");
        if self.scheme {
            if let Some(s) = uri.scheme_str() {
                out.push_str(s);
                out.push(':');
            }
        }
        if self.authority {
            let authority = uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| headers.get(HOST).and_then(|h| h.to_str().ok()));
            if let Some(a) = authority {
                out.push_str("//");
                if a.bytes().any(|b| b.is_ascii_uppercase()) {
                    out.push_str(&a.to_ascii_lowercase());
                } else {
                    out.push_str(a);
                }
            }
        }
        out.push_str(uri.path());
        if let Some(q) = uri.query() {
            if self.sort_query || !self.drop_query.is_empty() {
                let mut params: Vec<&str> = q
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .filter(|p| {
                        let name = p.split('=').next().unwrap_or("");
                        !self.drop_query.iter().any(|d| d.matches(name))
                    })
                    .collect();
                if self.sort_query {
                    // Stable: repeated names keep their relative order.
                    params.sort_by(|a, b| {
                        let na = a.split('=').next().unwrap_or("");
                        let nb = b.split('=').next().unwrap_or("");
                        na.cmp(nb)
                    });
                }
                if !params.is_empty() {
                    out.push('?');
                    for (i, p) in params.iter().enumerate() {
                        if i > 0 {
                            out.push('&');
                        }
                        out.push_str(p);
                    }
                }
            } else {
                out.push('?');
                out.push_str(q);
            }
        }
        for name in &self.headers {
            out.push('\n');
            out.push_str(name.as_str());
            out.push(':');
            let mut first = true;
            for v in headers.get_all(name) {
                if !first {
                    out.push(',');
                }
                first = false;
                match v.to_str() {
                    Ok(s) => out.push_str(s.trim()),
                    Err(_) => {
                        for b in v.as_bytes() {
                            let _ = write!(out, "%{b:02X}");
                        }
                    }
                }
            }
        }
    }
}

/// The seed of typed values' key hashes (`{name}\x1f{key}`): requests'
/// keys are hashed without one, so a value and a request never share a
/// hash (an L1 slot, an L2 key, a flight), whatever readable key a custom
/// key function makes.
#[cfg_attr(not(feature = "values"), allow(dead_code))]
pub(crate) const VALUE_SEED: u64 = 0x7661_6c75_6573; // "values"

/// Whether `readable`, a stored entry's readable key, is the key of a
/// request hashed to `hash` that carries `headers`: its hash, or, for a key
/// partitioned by credentials (whose readable form shows 16 hex digits of
/// the digest where the hash covers 32), the hash rebuilt from the
/// request's own credentials digest.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn readable_matches(readable: &str, hash: KeyHash, headers: &HeaderMap) -> bool {
    if KeyHash(xxh3_128(readable.as_bytes())) == hash {
        return true;
    }
    if readable.contains(crate::entry::VALUE_SCOPE)
        && KeyHash(xxh3_128_with_seed(readable.as_bytes(), VALUE_SEED)) == hash
    {
        return true; // A typed value's key.
    }
    let Some((base, short)) = readable.rsplit_once(CREDENTIALS_TAG) else {
        return false;
    };
    let Some(d) = credentials_digest(headers) else {
        return false;
    };
    if short != format!("{:016x}", (d >> 64) as u64) {
        return false;
    }
    let full = format!("{base}{CREDENTIALS_TAG}{d:032x}");
    KeyHash(xxh3_128(full.as_bytes())) == hash
}

/// The hash of one variant of a URL: the primary key plus the normal form
/// ([`vary`]) of the request's fields the stored `Vary` names, so that
/// equivalent requests share one variant, in L1 and in L2.
///
/// A field present is hashed as its normal form and `\x01`, each field
/// ends in `\x02`: a single-line value already in normal form hashes as it
/// did before normal forms (one trimmed line, then `\x01`).
pub(crate) fn variant_hash(primary: KeyHash, names: &[HeaderName], headers: &HeaderMap) -> KeyHash {
    let mut h = Xxh3::new();
    h.update(&primary.0.to_le_bytes());
    for name in names {
        h.update(name.as_str().as_bytes());
        h.update(b"\0");
        vary::with_normal_form(name, headers.get_all(name), |normal| {
            if let Some(normal) = normal {
                h.update(normal);
                h.update(b"\x01");
            }
        });
        h.update(b"\x02");
    }
    KeyHash(h.digest128())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn key_table() {
        let default = KeyConfig::default();
        let sorted = KeyConfig {
            sort_query: true,
            drop_query: vec![QueryDrop::parse("utm_*"), QueryDrop::parse("fbclid")],
            ..KeyConfig::default()
        };
        let no_host = KeyConfig {
            authority: false,
            scheme: false,
            ..KeyConfig::default()
        };
        let with_header = KeyConfig {
            headers: vec![HeaderName::from_static("x-tenant")],
            ..KeyConfig::default()
        };
        // (config, a, b, same?)
        let cases: Vec<(&KeyConfig, Parts, Parts, bool)> = vec![
            (&default, parts("/a", &[]), parts("/a", &[]), true),
            (&default, parts("/a", &[]), parts("/b", &[]), false),
            (&default, parts("/a?x=1", &[]), parts("/a?x=2", &[]), false),
            (
                &default,
                parts("/a?x=1&y=2", &[]),
                parts("/a?y=2&x=1", &[]),
                false,
            ),
            (
                &sorted,
                parts("/a?x=1&y=2", &[]),
                parts("/a?y=2&x=1", &[]),
                true,
            ),
            (
                &sorted,
                parts("/a?x=1&utm_source=z", &[]),
                parts("/a?x=1", &[]),
                true,
            ),
            (&sorted, parts("/a?fbclid=9", &[]), parts("/a", &[]), true),
            (
                &sorted,
                parts("/a?x=1&x=2", &[]),
                parts("/a?x=2&x=1", &[]),
                false,
            ),
            (
                &default,
                parts("/a", &[("host", "A.example")]),
                parts("/a", &[("host", "a.example")]),
                true,
            ),
            (
                &default,
                parts("/a", &[("host", "a.example")]),
                parts("/a", &[("host", "b.example")]),
                false,
            ),
            (
                &no_host,
                parts("/a", &[("host", "a.example")]),
                parts("/a", &[("host", "b.example")]),
                true,
            ),
            (
                &default,
                parts("http://a.example/x", &[]),
                parts("https://a.example/x", &[]),
                false,
            ),
            (
                &no_host,
                parts("http://a.example/x", &[]),
                parts("https://b.example/x", &[]),
                true,
            ),
            (
                &with_header,
                parts("/a", &[("x-tenant", "1")]),
                parts("/a", &[("x-tenant", "2")]),
                false,
            ),
            (
                &with_header,
                parts("/a", &[("x-tenant", "1")]),
                parts("/a", &[("x-tenant", " 1 ")]),
                true,
            ),
            (
                &with_header,
                parts("/a", &[("x-other", "1")]),
                parts("/a", &[("x-other", "2")]),
                true,
            ),
        ];
        for (i, (cfg, a, b, same)) in cases.into_iter().enumerate() {
            let ha = cfg.hash(&a).unwrap();
            let hb = cfg.hash(&b).unwrap();
            assert_eq!(
                ha == hb,
                same,
                "case {i}: {:?} vs {:?}",
                cfg.readable(&a),
                cfg.readable(&b)
            );
            // The hash is the hash of the readable key.
            assert_eq!(ha, KeyHash(xxh3_128(cfg.readable(&a).unwrap().as_bytes())));
        }
    }

    #[test]
    fn readable_key_shape() {
        let cfg = KeyConfig::default();
        assert_eq!(
            cfg.readable(&parts("https://Api.Example:8443/v1/x?q=1", &[]))
                .unwrap(),
            "GET https://api.example:8443/v1/x?q=1"
        );
        assert_eq!(
            cfg.readable(&parts("/p", &[("host", "h")])).unwrap(),
            "GET //h/p"
        );
    }

    /// Each query normalisation works alone, and without either the query
    /// is keyed byte for byte (the origin may tell `x=1&` from `x=1`).
    #[test]
    fn query_normalisations_alone_and_the_raw_query() {
        let sort_only = KeyConfig {
            sort_query: true,
            ..KeyConfig::default()
        };
        let drop_only = KeyConfig {
            drop_query: vec![QueryDrop::parse("utm_*")],
            ..KeyConfig::default()
        };
        let default = KeyConfig::default();
        let readable = |c: &KeyConfig, uri: &str| c.readable(&parts(uri, &[])).unwrap();
        assert_eq!(readable(&sort_only, "/a?y=2&x=1&z"), "GET /a?x=1&y=2&z");
        assert_eq!(
            readable(&drop_only, "/a?y=2&utm_source=m&x=1"),
            "GET /a?y=2&x=1"
        );
        assert_eq!(readable(&drop_only, "/a?utm_source=m"), "GET /a");
        assert_eq!(readable(&default, "/a?x=1&&y=2&"), "GET /a?x=1&&y=2&");
        assert_ne!(
            default.hash(&parts("/a?x=1&", &[])),
            default.hash(&parts("/a?x=1", &[]))
        );
    }

    /// A keyed header with several lines is one comma-separated component.
    #[test]
    fn a_keyed_header_with_several_lines_joins_them_with_commas() {
        let cfg = KeyConfig {
            headers: vec![HeaderName::from_static("x-tenant")],
            ..KeyConfig::default()
        };
        let p = parts("/a", &[("x-tenant", " a "), ("x-tenant", "b")]);
        assert_eq!(cfg.readable(&p).unwrap(), "GET /a\nx-tenant:a,b");
    }

    /// The headers whose values credential partitioning digests, and no
    /// other: a response that varies on another header keeps its values.
    #[test]
    fn credential_headers_are_exactly_the_three() {
        for name in ["authorization", "proxy-authorization", "cookie"] {
            assert!(
                is_credential_header(&HeaderName::from_static(name)),
                "{name}"
            );
        }
        for name in ["accept-language", "set-cookie", "x-authorization", "accept"] {
            assert!(
                !is_credential_header(&HeaderName::from_static(name)),
                "{name}"
            );
        }
    }

    /// A readable key that names a typed value (it holds `VALUE_SCOPE`) still
    /// has to hash to the key it was read under.
    #[test]
    fn a_value_scoped_readable_key_matches_only_its_own_hash() {
        let readable = format!("odds{}match-1", crate::entry::VALUE_SCOPE);
        let own = KeyHash(xxh3_128_with_seed(readable.as_bytes(), VALUE_SEED));
        assert!(readable_matches(&readable, own, &HeaderMap::new()));
        let other = KeyHash(xxh3_128_with_seed(b"odds\x1fmatch-2", VALUE_SEED));
        assert!(!readable_matches(&readable, other, &HeaderMap::new()));
        assert!(!readable_matches(&readable, KeyHash(7), &HeaderMap::new()));
    }

    #[test]
    fn long_keys_hash_to_fixed_size() {
        let cfg = KeyConfig::default();
        let long = format!("/{}", "x".repeat(60_000));
        let a = cfg.hash(&parts(&long, &[])).unwrap();
        let b = cfg.hash(&parts(&format!("{long}y"), &[])).unwrap();
        assert_ne!(a, b);
        assert_eq!(std::mem::size_of_val(&a), 16);
    }

    #[test]
    fn custom_key_function() {
        let cfg = KeyConfig {
            custom: Some(writer_of(|p: &Parts| {
                if p.uri.path().starts_with("/nocache") {
                    None
                } else {
                    Some(p.uri.path().to_owned())
                }
            })),
            ..KeyConfig::default()
        };
        assert!(cfg.hash(&parts("/nocache/1", &[])).is_none());
        assert_eq!(
            cfg.hash(&parts("/a?x=1", &[])),
            cfg.hash(&parts("/a?x=2", &[]))
        );
    }

    #[test]
    fn readable_keys_match_their_hashes_only() {
        let plain = KeyConfig::default();
        let cfg = KeyConfig {
            credentials: true,
            ..KeyConfig::default()
        };
        let x = parts("http://a.example/x", &[("authorization", "Bearer a")]);
        let y = parts("http://a.example/y", &[("authorization", "Bearer a")]);
        let other = parts("http://a.example/x", &[("authorization", "Bearer b")]);
        for c in [&plain, &cfg] {
            let (rx, hx) = (c.readable(&x).unwrap(), c.hash(&x).unwrap());
            assert!(readable_matches(&rx, hx, &x.headers));
            assert!(!readable_matches(&c.readable(&y).unwrap(), hx, &x.headers));
        }
        // A partitioned key is only the key of the same credentials.
        let rx = cfg.readable(&x).unwrap();
        let hx = cfg.hash(&x).unwrap();
        assert!(!readable_matches(&rx, hx, &other.headers));
        assert!(!readable_matches(&rx, hx, &HeaderMap::new()));
        assert!(!readable_matches(
            &rx,
            cfg.hash(&other).unwrap(),
            &other.headers
        ));
    }

    #[test]
    fn credentials_partition_keys() {
        let plain = KeyConfig::default();
        let cfg = KeyConfig {
            credentials: true,
            ..KeyConfig::default()
        };
        let anon = parts("http://a.example/x", &[]);
        let a = parts("http://a.example/x", &[("authorization", "Bearer a")]);
        let b = parts("http://a.example/x", &[("authorization", "Bearer b")]);
        let pa = parts("http://a.example/x", &[("proxy-authorization", "Bearer a")]);
        let c1 = parts("http://a.example/x", &[("cookie", "s=1")]);
        let c2 = parts("http://a.example/x", &[("cookie", "s=2")]);
        let c12 = parts(
            "http://a.example/x",
            &[("cookie", "s=1"), ("cookie", "t=2")],
        );
        let c21 = parts(
            "http://a.example/x",
            &[("cookie", "t=2"), ("cookie", "s=1")],
        );
        let other = parts("http://a.example/x", &[("x-other", "1")]);
        // Anonymous requests keep their key.
        assert_eq!(cfg.hash(&anon), plain.hash(&anon));
        assert_eq!(cfg.readable(&anon), plain.readable(&anon));
        assert_eq!(cfg.hash(&other), plain.hash(&anon));
        // Without partitioning credentials are not part of the key.
        assert_eq!(plain.hash(&a), plain.hash(&anon));
        assert_eq!(plain.hash(&c1), plain.hash(&anon));
        // With it, every credential set has its own key.
        let all = [&anon, &a, &b, &pa, &c1, &c2, &c12, &c21];
        for (i, x) in all.iter().enumerate() {
            for (j, y) in all.iter().enumerate() {
                assert_eq!(i == j, cfg.hash(x) == cfg.hash(y), "{i} vs {j}");
            }
        }
        // The same credentials, the same key.
        let a2 = parts("http://a.example/x", &[("authorization", "Bearer a")]);
        assert_eq!(cfg.hash(&a), cfg.hash(&a2));
        // The readable key shows a 16-digit digest, never the credentials,
        // and is not itself the hashed key.
        let ra = cfg.readable(&a).unwrap();
        let d = credentials_digest(&a.headers).unwrap();
        assert_eq!(
            ra,
            format!(
                "GET http://a.example/x\ncredentials:{:016x}",
                (d >> 64) as u64
            )
        );
        assert!(!ra.contains("Bearer"));
        assert_ne!(cfg.hash(&a), Some(KeyHash(xxh3_128(ra.as_bytes()))));
        assert_eq!(
            cfg.hash(&a),
            Some(KeyHash(xxh3_128(
                format!("GET http://a.example/x\ncredentials:{d:032x}").as_bytes()
            )))
        );
        assert!(!cfg.readable(&c1).unwrap().contains("s=1"));
    }

    /// A key writer gives the key a key function returning the same text
    /// gives; `false` passes; what a refusing writer wrote is not kept for
    /// the next request.
    #[test]
    fn a_key_writer_keys_as_a_key_function() {
        let owned = KeyConfig {
            credentials: true,
            custom: Some(writer_of(|p: &Parts| Some(format!("K {}", p.uri.path())))),
            ..KeyConfig::default()
        };
        let writer = KeyConfig {
            credentials: true,
            custom: Some(Arc::new(|p: &Parts, out: &mut String| {
                out.push_str("K ");
                out.push_str(p.uri.path());
                !p.uri.path().starts_with("/no")
            })),
            ..KeyConfig::default()
        };
        for req in [parts("/a", &[]), parts("/b", &[("cookie", "s=1")])] {
            assert_eq!(writer.hash(&req), owned.hash(&req));
            assert_eq!(writer.readable(&req), owned.readable(&req));
        }
        assert_eq!(
            writer.hash(&parts("/a", &[])),
            Some(KeyHash(xxh3_128(b"K /a")))
        );
        assert_eq!(writer.hash(&parts("/no", &[])), None);
        assert_eq!(writer.readable(&parts("/no", &[])), None);
        assert_eq!(
            writer.hash(&parts("/a", &[])),
            Some(KeyHash(xxh3_128(b"K /a")))
        );
    }

    /// A huge key does not leave the thread's key buffer that large.
    #[test]
    fn the_key_buffer_is_given_back_after_a_huge_key() {
        let cfg = KeyConfig::default();
        let long = format!("/{}", "a".repeat(32 * 1024));
        assert!(cfg.hash(&parts(&long, &[])).is_some());
        let cap = KEY_BUF.with(|b| b.borrow().capacity());
        assert!(cap <= KEY_BUF_KEEP, "key buffer kept {cap} bytes");
    }

    #[test]
    fn credentials_partition_custom_keys() {
        let cfg = KeyConfig {
            credentials: true,
            custom: Some(writer_of(|p: &Parts| Some(p.uri.path().to_owned()))),
            ..KeyConfig::default()
        };
        let anon = parts("/a", &[]);
        let a = parts("/a", &[("cookie", "s=1")]);
        assert_eq!(cfg.hash(&anon), Some(KeyHash(xxh3_128(b"/a"))));
        assert_ne!(cfg.hash(&anon), cfg.hash(&a));
        assert!(cfg.readable(&a).unwrap().starts_with("/a\ncredentials:"));
        assert!(!cfg.readable(&a).unwrap().contains("s=1"));
    }

    #[test]
    fn variant_hashes() {
        let p = KeyHash(7);
        let names = [HeaderName::from_static("accept-encoding")];
        let a = parts("/", &[("accept-encoding", "gzip")]);
        let b = parts("/", &[("accept-encoding", "br")]);
        let c = parts("/", &[("accept-encoding", " gzip ")]);
        let none = parts("/", &[]);
        let empty = parts("/", &[("accept-encoding", "")]);
        assert_ne!(
            variant_hash(p, &names, &a.headers),
            variant_hash(p, &names, &b.headers)
        );
        assert_eq!(
            variant_hash(p, &names, &a.headers),
            variant_hash(p, &names, &c.headers)
        );
        assert_ne!(
            variant_hash(p, &names, &none.headers),
            variant_hash(p, &names, &empty.headers)
        );
    }

    /// RFC 9111 §4.1: equivalent requests share one variant hash (so one
    /// variant, in L1 and at one Redis key in L2); different values and a
    /// field not known to be an unordered list in another order do not.
    #[test]
    fn rfc9111_4_1_variant_hashes_use_the_normal_form() {
        let p = KeyHash(7);
        let names = [
            HeaderName::from_static("accept-encoding"),
            HeaderName::from_static("accept-language"),
            HeaderName::from_static("x-a"),
        ];
        let h = |headers: &[(&str, &str)]| variant_hash(p, &names, &parts("/", headers).headers);
        let base = h(&[
            ("accept-encoding", "gzip, br"),
            ("accept-language", "en-US"),
            ("x-a", "a, b"),
        ]);
        for same in [
            &[
                ("accept-encoding", "br,gzip"),
                ("accept-language", "en-us"),
                ("x-a", "a ,b"),
            ][..],
            &[
                ("accept-encoding", "BR, GZip"),
                ("accept-language", "EN-US"),
                ("x-a", "a"),
                ("x-a", "b"),
            ],
            &[
                ("accept-encoding", "gzip"),
                ("accept-encoding", "br"),
                ("accept-language", " en-US "),
                ("x-a", "a,b"),
            ],
        ] {
            assert_eq!(h(same), base, "{same:?}");
        }
        for other in [
            &[
                ("accept-encoding", "gzip"),
                ("accept-language", "en-US"),
                ("x-a", "a, b"),
            ][..],
            &[
                ("accept-encoding", "gzip, br"),
                ("accept-language", "en-GB"),
                ("x-a", "a, b"),
            ],
            &[
                ("accept-encoding", "gzip, br"),
                ("accept-language", "en-US"),
                ("x-a", "b, a"),
            ],
            &[
                ("accept-encoding", "gzip, br"),
                ("accept-language", "en-US"),
                ("x-a", "A, b"),
            ],
            &[
                ("accept-encoding", "gzip, br"),
                ("accept-language", "en-US"),
            ],
        ] {
            assert_ne!(h(other), base, "{other:?}");
        }
    }

    /// A single-line value already in normal form hashes as it did before
    /// normal forms, so those L2 variant keys did not change.
    #[test]
    fn variant_hashes_of_normal_values_are_unchanged() {
        fn before(primary: KeyHash, names: &[HeaderName], headers: &HeaderMap) -> KeyHash {
            let mut h = Xxh3::new();
            h.update(&primary.0.to_le_bytes());
            for name in names {
                h.update(name.as_str().as_bytes());
                h.update(b"\0");
                for v in headers.get_all(name) {
                    h.update(v.as_bytes().trim_ascii());
                    h.update(b"\x01");
                }
                h.update(b"\x02");
            }
            KeyHash(h.digest128())
        }
        let names = [
            HeaderName::from_static("accept-encoding"),
            HeaderName::from_static("user-agent"),
        ];
        for headers in [
            &[][..],
            &[("accept-encoding", "gzip")],
            &[("accept-encoding", "br, gzip"), ("user-agent", "curl/8")],
            &[("accept-encoding", ""), ("user-agent", " x ")],
        ] {
            let h = parts("/", headers).headers;
            assert_eq!(
                variant_hash(KeyHash(9), &names, &h),
                before(KeyHash(9), &names, &h),
                "{headers:?}"
            );
        }
        let h = parts("/", &[("accept-encoding", "gzip, br")]).headers;
        assert_ne!(
            variant_hash(KeyHash(9), &names, &h),
            before(KeyHash(9), &names, &h)
        );
    }
}
