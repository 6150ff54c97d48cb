//! The versioned binary encoding of an [`Entry`], for storing entries
//! outside the process (the L2 tier).
//!
//! The layout is documented on [`FORMAT_VERSION`].
//!
//! Decoding validates everything (header names
//! and values, status, version, UTF-8, flag bits, counts) and checks every
//! declared length against the input left *before* allocating, so garbage,
//! a truncated value or a value of another format version is a
//! [`DecodeError`], never a panic or a huge allocation.
//!
//! Values read back from L2 are decoded with stricter checks
//! (`Entry::decode_stored`, see `Checks`): the body cap (a compressed
//! body's declared size checked before anything is allocated), a stored
//! status, no hop-by-hop fields, a matching `Content-Length`, a sane
//! timeline and the key that was looked up. A value that fails them is a
//! corrupt entry: a miss, deleted, counted in `l2_decode_errors`.
//!
//! The encoding is canonical: a byte string that decodes re-encodes to
//! exactly the same bytes (header names must be in their lowercase form and
//! the values of one header name must be contiguous, as a `HeaderMap`
//! iterates them).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};

use crate::entry::{Entry, EntryFlags, Timeline, ValueMeta};

/// The version of the binary entry format that [`Entry::encode`] writes and
/// [`Entry::decode`] reads. A value written in another version is refused
/// ([`DecodeError::is_unsupported_version`]).
///
/// # Layout (format version 1)
///
/// Every integer is little-endian.
///
/// | bytes            | field                                                   |
/// |------------------|---------------------------------------------------------|
/// | 4                | magic `b"TTC\0"`                                        |
/// | 1                | format version (this constant)                          |
/// | 1                | format flags (bit 0: body compressed, reserved; bit 1: a typed value; bit 7: the entry exceeded the format's limits and was not encoded) |
/// | 2                | status code                                             |
/// | 1                | HTTP version (0 = 0.9, 1 = 1.0, 2 = 1.1, 3 = 2, 4 = 3)  |
/// | 1                | entry flags (bit 0 must-revalidate, bit 1 no-cache, bit 2 auth-ok) |
/// | 4                | stale-window extensions                                 |
/// | 6 × 8            | timeline: stored_at, initial_age, fresh_until, stale_until, stale_if_error_until, retain_until |
/// | 1 + 8            | only with format flag bit 1 (a typed value, whose body is its serialised form): the codec's id, then the type tag |
/// | 4 + n            | readable key (UTF-8)                                    |
/// | 4 + …            | headers: count, then per header `u16` name length, name, `u32` value length, value (validators — `ETag`, `Last-Modified` — are headers) |
/// | 2 + …            | Vary: count, then per name `u16` length, name, `u16` value count, per value `u32` length, value |
/// | 2 + …            | tags: count, then per tag `u16` length, tag (UTF-8)     |
/// | 4 + n            | body                                                    |
///
/// Nothing may follow the body. Limits: at most 10 000 header lines,
/// 1 000 `Vary` names with 10 000 values each, and 10 000 tags.
///
/// Values written before typed values existed have format flag bit 1
/// clear and read as they always did; a typed value read by a build that
/// predates it is refused (unknown flag bits), never misread.
pub const FORMAT_VERSION: u8 = 1;

const MAGIC: [u8; 4] = *b"TTC\0";

/// Format flag: the body is compressed (reserved for the `compression`
/// feature; this build cannot read such values).
const FLAG_COMPRESSED: u8 = 1 << 0;
/// Format flag: a typed value; its codec id and type tag follow the
/// timeline.
const FLAG_VALUE: u8 = 1 << 1;
/// Format flag: the entry was beyond the format's limits, so only this
/// header was written. Decoding it is an error.
const FLAG_UNENCODABLE: u8 = 1 << 7;
/// The format flags this build understands.
const KNOWN_FLAGS: u8 = FLAG_COMPRESSED | FLAG_VALUE | FLAG_UNENCODABLE;

/// The length of a typed value's section: codec id and type tag.
const VALUE_LEN: usize = 1 + 8;

const ENTRY_MUST_REVALIDATE: u8 = 1 << 0;
const ENTRY_NO_CACHE: u8 = 1 << 1;
const ENTRY_AUTH_OK: u8 = 1 << 2;
const ENTRY_KNOWN: u8 = ENTRY_MUST_REVALIDATE | ENTRY_NO_CACHE | ENTRY_AUTH_OK;

/// At most this many header lines (name/value pairs).
const MAX_HEADERS: usize = 10_000;
/// At most this many `Vary` header names.
const MAX_VARY_NAMES: usize = 1_000;
/// At most this many request header values per `Vary` name.
const MAX_VARY_VALUES: usize = 10_000;
/// At most this many tags.
const MAX_TAGS: usize = 10_000;

/// The fixed part: magic, version, flags, status, HTTP version, entry
/// flags, extensions, timeline.
const FIXED_LEN: usize = 4 + 1 + 1 + 2 + 1 + 1 + 4 + 6 * 8;

// The smallest encoded size of one item of each list, used to refuse a
// count the remaining input cannot hold before allocating for it.
const MIN_HEADER_LEN: usize = 2 + 1 + 4;
const MIN_VARY_LEN: usize = 2 + 1 + 2;
const MIN_VARY_VALUE_LEN: usize = 4;
const MIN_TAG_LEN: usize = 2;

/// Why a stored value could not be decoded into an [`Entry`].
///
/// Every kind means the same to the cache: the value is a miss (counted,
/// logged, and the key deleted). The kinds and the message say what was
/// wrong, for the log.
///
/// ```
/// use tower_tiered_cache::{Entry, FORMAT_VERSION};
///
/// let err = Entry::decode(b"not an entry").unwrap_err();
/// assert!(err.is_bad_magic());
///
/// let err = Entry::decode(&[b'T', b'T', b'C', 0, FORMAT_VERSION + 1]).unwrap_err();
/// assert!(err.is_unsupported_version());
/// assert!(err.to_string().contains("version 2"));
///
/// let err = Entry::decode(b"TTC").unwrap_err();
/// assert!(err.is_truncated());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    kind: Kind,
    /// The byte offset of the field at fault.
    offset: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// The value does not start with the format's magic bytes.
    BadMagic,
    /// The value was written in another format version.
    UnsupportedVersion(u8),
    /// The value ends before `field` does.
    Truncated {
        field: &'static str,
        needed: usize,
        remaining: usize,
    },
    /// `field` holds something the format does not allow.
    Malformed {
        field: &'static str,
        problem: Problem,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem {
    UnknownFlags(u8),
    Compressed,
    Unencodable,
    Status(u16),
    HttpVersion(u8),
    Utf8,
    HeaderName,
    NonCanonicalName,
    HeaderValue,
    NotContiguous,
    TooMany {
        count: usize,
        max: usize,
    },
    TrailingBytes(usize),
    /// A body (or the size a compressed body declares) over the cap.
    BodyTooLarge {
        size: u64,
        max: u64,
    },
    /// A status the cache never stores.
    StatusNotStored(u16),
    /// A hop-by-hop header field, never stored.
    HopByHop(&'static str),
    /// A `Content-Length` that is not the body's length.
    ContentLength {
        body: usize,
    },
    /// Timeline instants out of order or out of bounds.
    Timeline(&'static str),
    /// The embedded key is not the key that was looked up.
    WrongKey,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::UnknownFlags(bits) => write!(f, "unknown flag bits {bits:#04x}"),
            Problem::Compressed => {
                if cfg!(feature = "compression") {
                    f.write_str("the compressed body is corrupt or too large")
                } else {
                    f.write_str("the body is compressed, which this build cannot read (feature `compression`)")
                }
            }
            Problem::Unencodable => {
                f.write_str("the entry exceeded the format's limits and was not encoded")
            }
            Problem::Status(code) => write!(f, "{code} is not a valid status code"),
            Problem::HttpVersion(v) => write!(f, "unknown HTTP version code {v}"),
            Problem::Utf8 => f.write_str("not valid UTF-8"),
            Problem::HeaderName => f.write_str("not a valid header name"),
            Problem::NonCanonicalName => f.write_str("header name is not in lowercase form"),
            Problem::HeaderValue => f.write_str("not a valid header value"),
            Problem::NotContiguous => f.write_str("values of one header name are not contiguous"),
            Problem::TooMany { count, max } => write!(f, "{count} items, at most {max} allowed"),
            Problem::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the body"),
            Problem::BodyTooLarge { size, max } => {
                write!(f, "a body of {size} bytes, over the cap of {max} bytes")
            }
            Problem::StatusNotStored(code) => write!(f, "status {code} is never stored"),
            Problem::HopByHop(name) => write!(f, "hop-by-hop field `{name}` is never stored"),
            Problem::ContentLength { body } => {
                write!(f, "Content-Length does not match the body's {body} bytes")
            }
            Problem::Timeline(what) => write!(f, "insane timeline: {what}"),
            Problem::WrongKey => f.write_str("not the entry for the key that was looked up"),
        }
    }
}

impl DecodeError {
    fn new(kind: Kind, offset: usize) -> Self {
        Self { kind, offset }
    }

    fn malformed(field: &'static str, problem: Problem, offset: usize) -> Self {
        Self::new(Kind::Malformed { field, problem }, offset)
    }

    /// True when the value does not start with the format's magic bytes:
    /// it is not an encoded entry at all.
    pub fn is_bad_magic(&self) -> bool {
        matches!(self.kind, Kind::BadMagic)
    }

    /// True when the value was written in another format version (by an
    /// older or newer build).
    pub fn is_unsupported_version(&self) -> bool {
        matches!(self.kind, Kind::UnsupportedVersion(_))
    }

    /// True when the value ends early: a field, or a length or count it
    /// declares, runs past the end of the input.
    pub fn is_truncated(&self) -> bool {
        matches!(self.kind, Kind::Truncated { .. })
    }

    /// True when a field holds something the format does not allow (an
    /// invalid header, status or UTF-8, unknown flag bits, too many items,
    /// bytes after the body, …).
    pub fn is_malformed(&self) -> bool {
        matches!(self.kind, Kind::Malformed { .. })
    }

    /// The byte offset in the input of the field at fault.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// True when the value is valid but needs a feature this build lacks
    /// (a compressed body without `compression`): other instances may read
    /// it, so it must not be deleted.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn is_unreadable_here(&self) -> bool {
        !cfg!(feature = "compression")
            && matches!(
                &self.kind,
                Kind::Malformed {
                    problem: Problem::Compressed,
                    ..
                }
            )
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::BadMagic => f.write_str("not an encoded cache entry: bad magic bytes"),
            Kind::UnsupportedVersion(v) => write!(
                f,
                "unsupported cache entry format version {v} (this build reads version {FORMAT_VERSION})"
            ),
            Kind::Truncated {
                field,
                needed,
                remaining,
            } => write!(
                f,
                "truncated cache entry: {field} at byte {} needs {needed} bytes, {remaining} left",
                self.offset
            ),
            Kind::Malformed { field, problem } => write!(
                f,
                "malformed cache entry: {field} at byte {}: {problem}",
                self.offset
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

fn version_code(v: Version) -> u8 {
    match v {
        Version::HTTP_09 => 0,
        Version::HTTP_10 => 1,
        Version::HTTP_2 => 3,
        Version::HTTP_3 => 4,
        // HTTP/1.1, and any version a later `http` adds (there is none in
        // http 1.x), which reads back as HTTP/1.1.
        _ => 2,
    }
}

fn version_from_code(code: u8) -> Option<Version> {
    Some(match code {
        0 => Version::HTTP_09,
        1 => Version::HTTP_10,
        2 => Version::HTTP_11,
        3 => Version::HTTP_2,
        4 => Version::HTTP_3,
        _ => return None,
    })
}

impl Entry {
    /// Whether the entry is within the format's limits (the counts, and
    /// lengths that fit their length fields), so that [`encode`] writes it
    /// whole and [`decode`] reads it back.
    ///
    /// [`encode`]: Entry::encode
    /// [`decode`]: Entry::decode
    pub(crate) fn fits_format(&self) -> bool {
        let u32_ok = |n: usize| u32::try_from(n).is_ok();
        u32_ok(self.key.len())
            && self.headers.len() <= MAX_HEADERS
            && self.headers.values().all(|v| u32_ok(v.len()))
            && self.vary.len() <= MAX_VARY_NAMES
            && self.vary.iter().all(|(_, vals)| {
                vals.len() <= MAX_VARY_VALUES && vals.iter().all(|v| u32_ok(v.len()))
            })
            && self.tags.len() <= MAX_TAGS
            && self.tags.iter().all(|t| u16::try_from(t.len()).is_ok())
            && u32_ok(self.body.len())
    }

    fn encoded_len(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| 2 + n.as_str().len() + 4 + v.len())
            .sum();
        let vary: usize = self
            .vary
            .iter()
            .map(|(n, vals)| {
                2 + n.as_str().len() + 2 + vals.iter().map(|v| 4 + v.len()).sum::<usize>()
            })
            .sum();
        let tags: usize = self.tags.iter().map(|t| 2 + t.len()).sum();
        FIXED_LEN
            + self.value.as_ref().map_or(0, |_| VALUE_LEN)
            + (4 + self.key.len())
            + (4 + headers)
            + (2 + vary)
            + (2 + tags)
            + (4 + self.body.len())
    }

    /// Encodes the entry in the versioned binary format (its layout is
    /// documented on [`FORMAT_VERSION`]), for storing it outside the process.
    ///
    /// Everything that makes up the entry is written: status, HTTP version,
    /// headers (with the validators), body, timeline, flags, `Vary` data
    /// and tags. [`Entry::decode`] reads it back.
    ///
    /// Never panics. An entry beyond the format's limits (more than 10 000
    /// header lines, 1 000 `Vary` names or 10 000 tags, a tag of 64 KiB or
    /// more, a body or header value of 4 GiB or more) cannot be stored: it
    /// encodes to a short value that [`Entry::decode`] refuses as malformed.
    pub fn encode(&self) -> Bytes {
        self.encode_with(None)
    }

    /// [`encode`](Self::encode), compressing a body larger than
    /// `compress_over` bytes with LZ4 when that saves space (feature
    /// `compression`; a body that already has a `Content-Encoding` is
    /// stored as it is).
    pub(crate) fn encode_with(&self, compress_over: Option<usize>) -> Bytes {
        let compressed = self.compressed_body(compress_over);
        if !self.fits_format() {
            let mut buf = BytesMut::with_capacity(6);
            put_format_header(&mut buf, FLAG_UNENCODABLE);
            return buf.freeze();
        }
        // The casts in the `put_*` steps are lossless: `fits_format`
        // checked every length and count against its field.
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        let mut format_flags = 0;
        if compressed.is_some() {
            format_flags |= FLAG_COMPRESSED;
        }
        if self.value.is_some() {
            format_flags |= FLAG_VALUE;
        }
        put_format_header(&mut buf, format_flags);
        self.put_fixed_fields(&mut buf);
        if let Some(v) = &self.value {
            buf.put_u8(v.codec);
            buf.put_u64_le(v.type_tag);
        }
        buf.put_u32_le(self.key.len() as u32);
        buf.put_slice(self.key.as_bytes());
        self.put_headers(&mut buf);
        self.put_vary(&mut buf);
        self.put_tags(&mut buf);
        match &compressed {
            Some(c) => {
                buf.put_u32_le(c.len() as u32);
                buf.put_slice(c);
            }
            None => {
                buf.put_u32_le(self.body.len() as u32);
                buf.put_slice(&self.body);
                debug_assert_eq!(buf.len(), self.encoded_len());
            }
        }
        buf.freeze()
    }

    /// The status, HTTP version, entry flags, extensions and timeline.
    fn put_fixed_fields(&self, buf: &mut BytesMut) {
        buf.put_u16_le(self.status.as_u16());
        buf.put_u8(version_code(self.version));
        let mut flags = 0;
        if self.flags.must_revalidate {
            flags |= ENTRY_MUST_REVALIDATE;
        }
        if self.flags.no_cache {
            flags |= ENTRY_NO_CACHE;
        }
        if self.flags.auth_ok {
            flags |= ENTRY_AUTH_OK;
        }
        buf.put_u8(flags);
        buf.put_u32_le(self.extensions);
        let t = &self.timeline;
        for v in [
            t.stored_at,
            t.initial_age,
            t.fresh_until,
            t.stale_until,
            t.stale_if_error_until,
            t.retain_until,
        ] {
            buf.put_u64_le(v);
        }
    }

    /// The header lines, in the map's order (a name's lines contiguous).
    fn put_headers(&self, buf: &mut BytesMut) {
        buf.put_u32_le(self.headers.len() as u32);
        for (name, value) in self.headers.iter() {
            put_name(buf, name);
            buf.put_u32_le(value.len() as u32);
            buf.put_slice(value.as_bytes());
        }
    }

    /// The `Vary` names, each with the request's values for it.
    fn put_vary(&self, buf: &mut BytesMut) {
        buf.put_u16_le(self.vary.len() as u16);
        for (name, values) in self.vary.iter() {
            put_name(buf, name);
            buf.put_u16_le(values.len() as u16);
            for value in values.iter() {
                buf.put_u32_le(value.len() as u32);
                buf.put_slice(value.as_bytes());
            }
        }
    }

    /// The tags.
    fn put_tags(&self, buf: &mut BytesMut) {
        buf.put_u16_le(self.tags.len() as u16);
        for tag in self.tags.iter() {
            buf.put_u16_le(tag.len() as u16);
            buf.put_slice(tag.as_bytes());
        }
    }

    #[cfg(feature = "compression")]
    fn compressed_body(&self, over: Option<usize>) -> Option<Vec<u8>> {
        let over = over?;
        if self.body.len() <= over || self.headers.contains_key(http::header::CONTENT_ENCODING) {
            return None;
        }
        let c = lz4_flex::compress_prepend_size(&self.body);
        (c.len() < self.body.len()).then_some(c)
    }

    #[cfg(not(feature = "compression"))]
    fn compressed_body(&self, _over: Option<usize>) -> Option<Vec<u8>> {
        None
    }

    /// Decodes a value written by [`Entry::encode`].
    ///
    /// Garbage, a truncated value, a value of another format version or
    /// with flags this build does not understand is an error that says
    /// what was wrong; decoding never panics, and a declared length is
    /// checked against the input before anything is allocated for it. The
    /// body is copied out of `bytes`; [`Entry::decode_bytes`] shares it
    /// instead.
    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        decode_from(bytes, None, None)
    }

    /// Like [`Entry::decode`], but a large body that is nearly all of
    /// `bytes` (64 KiB or more, with at most a sixty-fourth of that, and at
    /// most 4 KiB, of other data) is a slice of `bytes` rather than a copy:
    /// the entry then keeps the whole buffer alive, a little more than the
    /// body it weighs. Any other body is copied, so that an entry never
    /// keeps a much larger reply buffer alive.
    pub fn decode_bytes(bytes: Bytes) -> Result<Entry, DecodeError> {
        decode_from(&bytes, Some(&bytes), None)
    }

    /// Decodes a value read back from a store (the L2 tier): like
    /// [`Entry::decode_bytes`], and the entry must also be one this cache
    /// could have stored under `checks` (see [`Checks`]). Anything else is a
    /// [`DecodeError`] (malformed): a corrupt entry.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn decode_stored(bytes: Bytes, checks: &Checks<'_>) -> Result<Entry, DecodeError> {
        decode_from(&bytes, Some(&bytes), Some(checks))
    }
}

/// The most a stored timeline may reach past its `stored_at`: 1 000 years,
/// in milliseconds. Freshness from `max-age` is at most 2^31 seconds (68
/// years, RFC 9111 §1.2.2); stale windows and the time kept for
/// revalidation add to it. Anything further is corrupt.
pub(crate) const MAX_TIMELINE_SPAN_MS: u64 = 1_000 * 365_250 * 86_400;

/// The latest `stored_at` a stored entry may have: the end of year 9999
/// (UTC), in milliseconds since the Unix epoch.
pub(crate) const MAX_STORED_AT_MS: u64 = 253_402_300_799_999;

/// The hop-by-hop fields (RFC 9110 §7.6.1) that are stripped before an
/// entry is stored: a stored value that holds one is corrupt.
use crate::policy::HOP_BY_HOP;

/// What a value read back from a store is checked against, besides the
/// format (see [`Entry::decode_stored`]):
///
/// - a body (a compressed one by the size it declares, before anything is
///   allocated for it) is at most `max_body` bytes, the body cap it was
///   stored under;
/// - the status is one the cache stores: `200..=599`, not `304`;
/// - no hop-by-hop field (`Connection`, `Keep-Alive`, `Proxy-Connection`,
///   `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`,
///   `Proxy-Authenticate`) is stored;
/// - a `Content-Length`, when present, is the body's length;
/// - the timeline is in order (`stored_at <= fresh_until <= stale_until,
///   stale_if_error_until <= retain_until`), `stored_at` is at most
///   [`MAX_STORED_AT_MS`], and nothing (`initial_age` included) reaches
///   more than [`MAX_TIMELINE_SPAN_MS`] past `stored_at`;
/// - `key_ok` accepts the embedded readable key (the key looked up).
pub(crate) struct Checks<'a> {
    /// The body cap (`max_body_bytes`).
    pub(crate) max_body: u64,
    /// Whether the embedded readable key is the one looked up.
    pub(crate) key_ok: &'a (dyn Fn(&str) -> bool + Sync),
}

impl fmt::Debug for Checks<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checks")
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

/// The first rule of [`Checks`] a timeline breaks, if any.
fn timeline_problem(t: &Timeline) -> Option<&'static str> {
    let horizon = t.stored_at.saturating_add(MAX_TIMELINE_SPAN_MS);
    if t.stored_at > MAX_STORED_AT_MS {
        Some("stored_at is past year 9999")
    } else if t.initial_age > MAX_TIMELINE_SPAN_MS {
        Some("initial_age is over 1000 years")
    } else if t.fresh_until < t.stored_at {
        Some("fresh_until is before stored_at")
    } else if t.stale_until < t.fresh_until {
        Some("stale_until is before fresh_until")
    } else if t.stale_if_error_until < t.fresh_until {
        Some("stale_if_error_until is before fresh_until")
    } else if t.retain_until < t.stale_until.max(t.stale_if_error_until) {
        Some("retain_until is before a stale window's end")
    } else if t.retain_until > horizon {
        Some("retain_until is over 1000 years after stored_at")
    } else {
        None
    }
}

/// The magic, the format version and the format `flags`.
fn put_format_header(buf: &mut BytesMut, flags: u8) {
    buf.put_slice(&MAGIC);
    buf.put_u8(FORMAT_VERSION);
    buf.put_u8(flags);
}

fn put_name(buf: &mut BytesMut, name: &HeaderName) {
    // `http` caps header names at 64 KiB - 1, so the length fits a u16.
    let name = name.as_str().as_bytes();
    buf.put_u16_le(name.len() as u16);
    buf.put_slice(name);
}

/// A cursor over the input that never reads past its end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let remaining = self.remaining();
        if n > remaining {
            return Err(DecodeError::new(
                Kind::Truncated {
                    field,
                    needed: n,
                    remaining,
                },
                self.pos,
            ));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A `u16`-length-prefixed byte string.
    fn bytes16(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let at = self.pos;
        let n = self.u16(field)?;
        self.take(usize::from(n), field)
            .map_err(|e| DecodeError { offset: at, ..e })
    }

    /// A `u32`-length-prefixed byte string.
    fn bytes32(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let at = self.pos;
        let n = self.u32(field)?;
        // On 16-bit targets a length may not fit a usize: it cannot fit the
        // input either.
        let n = usize::try_from(n).map_err(|_| {
            DecodeError::new(
                Kind::Truncated {
                    field,
                    needed: usize::MAX,
                    remaining: self.remaining(),
                },
                at,
            )
        })?;
        self.take(n, field)
            .map_err(|e| DecodeError { offset: at, ..e })
    }

    /// A count already read at `at`, checked against `max` and against what
    /// the rest of the input can hold (each item takes at least `min_len`
    /// bytes), before anything is allocated for it.
    fn check_count(
        &self,
        count: usize,
        max: usize,
        min_len: usize,
        field: &'static str,
        at: usize,
    ) -> Result<usize, DecodeError> {
        if count > max {
            return Err(DecodeError::malformed(
                field,
                Problem::TooMany { count, max },
                at,
            ));
        }
        let needed = count * min_len; // count ≤ 10 000, min_len ≤ 7: no overflow
        let remaining = self.remaining();
        if needed > remaining {
            return Err(DecodeError::new(
                Kind::Truncated {
                    field,
                    needed,
                    remaining,
                },
                self.pos,
            ));
        }
        Ok(count)
    }

    fn count16(
        &mut self,
        max: usize,
        min_len: usize,
        field: &'static str,
    ) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = usize::from(self.u16(field)?);
        self.check_count(n, max, min_len, field, at)
    }

    fn count32(
        &mut self,
        max: usize,
        min_len: usize,
        field: &'static str,
    ) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = usize::try_from(self.u32(field)?).unwrap_or(usize::MAX);
        self.check_count(n, max, min_len, field, at)
    }

    /// A `u16`-length-prefixed header name, in its canonical (lowercase)
    /// form.
    fn name(&mut self, field: &'static str) -> Result<HeaderName, DecodeError> {
        self.name_and_bytes(field).map(|(name, _)| name)
    }

    /// [`name`](Self::name), and the bytes it was read from.
    fn name_and_bytes(
        &mut self,
        field: &'static str,
    ) -> Result<(HeaderName, &'a [u8]), DecodeError> {
        let at = self.pos;
        let raw = self.bytes16(field)?;
        let name = HeaderName::from_bytes(raw)
            .map_err(|_| DecodeError::malformed(field, Problem::HeaderName, at))?;
        if name.as_str().as_bytes() != raw {
            return Err(DecodeError::malformed(field, Problem::NonCanonicalName, at));
        }
        Ok((name, raw))
    }

    /// A `u32`-length-prefixed header value.
    fn value(&mut self, field: &'static str) -> Result<HeaderValue, DecodeError> {
        let at = self.pos;
        let raw = self.bytes32(field)?;
        HeaderValue::from_bytes(raw)
            .map_err(|_| DecodeError::malformed(field, Problem::HeaderValue, at))
    }

    fn utf8<'b>(raw: &'b [u8], field: &'static str, at: usize) -> Result<&'b str, DecodeError> {
        std::str::from_utf8(raw).map_err(|_| DecodeError::malformed(field, Problem::Utf8, at))
    }
}

/// Decodes one value: the format's header, the entry's fixed fields, its
/// key, headers, `Vary` values, tags and body, then (with `checks`) what
/// the whole entry must satisfy.
fn decode_from(
    input: &[u8],
    shared: Option<&Bytes>,
    checks: Option<&Checks<'_>>,
) -> Result<Entry, DecodeError> {
    let mut r = Reader { buf: input, pos: 0 };
    let checked = checks.is_some();
    let format = r.format_header()?;
    let status = r.status(checked)?;
    let version = r.http_version()?;
    let flags = r.entry_flags()?;
    let extensions = r.u32("extensions")?;
    let timeline = r.timeline(checked)?;
    let value = r.value_meta(format & FLAG_VALUE != 0)?;
    let key = r.key(checks)?;
    let headers = r.headers(checked)?;
    let vary = r.vary()?;
    let tags = r.tags()?;
    let body_at = r.pos;
    let compressed = format & FLAG_COMPRESSED != 0;
    let body = r.body(compressed, shared, checks.map(|c| c.max_body))?;
    r.end()?;
    if checked {
        check_content_length(&headers, body.len(), body_at)?;
    }
    Ok(Entry {
        key: key.into(),
        status,
        version,
        headers,
        body,
        vary: vary.into_boxed_slice(),
        timeline,
        flags,
        extensions,
        tags: tags.into_boxed_slice(),
        template: Default::default(),
        label: 0,
        reads: Default::default(),
        value,
    })
}

/// One `Vary` name with the request's values for it.
type VaryValues = (HeaderName, Box<[HeaderValue]>);

/// The sections of a value, in the order they are stored. A `checked`
/// read also refuses what a well-formed entry of this cache never holds.
impl<'a> Reader<'a> {
    /// The magic, format version and format flags; the flags, known and
    /// readable here. A prefix of the magic that ends early is a truncated
    /// value; anything else is not an entry.
    fn format_header(&mut self) -> Result<u8, DecodeError> {
        let head = &self.buf[..self.buf.len().min(MAGIC.len())];
        if head != &MAGIC[..head.len()] {
            return Err(DecodeError::new(Kind::BadMagic, 0));
        }
        self.take(MAGIC.len(), "magic")?;

        let at = self.pos;
        let version = self.u8("format version")?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::new(Kind::UnsupportedVersion(version), at));
        }

        let at = self.pos;
        let flags = self.u8("format flags")?;
        let refuse = |problem| Err(DecodeError::malformed("format flags", problem, at));
        if flags & !KNOWN_FLAGS != 0 {
            return refuse(Problem::UnknownFlags(flags & !KNOWN_FLAGS));
        }
        if flags & FLAG_UNENCODABLE != 0 {
            return refuse(Problem::Unencodable);
        }
        let compressed = flags & FLAG_COMPRESSED != 0;
        if compressed && !cfg!(feature = "compression") {
            return refuse(Problem::Compressed);
        }
        Ok(flags)
    }

    /// A typed value's codec id and type tag (`present`: the format flag
    /// says they are there).
    fn value_meta(&mut self, present: bool) -> Result<Option<Box<ValueMeta>>, DecodeError> {
        if !present {
            return Ok(None);
        }
        let codec = self.u8("value codec")?;
        let type_tag = self.u64("value type tag")?;
        Ok(Some(Box::new(ValueMeta::new(codec, type_tag, None))))
    }

    /// The status code; checked, one this cache stores (200..=599, not 304).
    fn status(&mut self, checked: bool) -> Result<StatusCode, DecodeError> {
        let at = self.pos;
        let code = self.u16("status")?;
        let status = StatusCode::from_u16(code)
            .map_err(|_| DecodeError::malformed("status", Problem::Status(code), at))?;
        if checked && (!(200..=599).contains(&code) || status == StatusCode::NOT_MODIFIED) {
            let problem = Problem::StatusNotStored(code);
            return Err(DecodeError::malformed("status", problem, at));
        }
        Ok(status)
    }

    /// The HTTP version's code.
    fn http_version(&mut self) -> Result<http::Version, DecodeError> {
        let at = self.pos;
        let code = self.u8("HTTP version")?;
        version_from_code(code)
            .ok_or_else(|| DecodeError::malformed("HTTP version", Problem::HttpVersion(code), at))
    }

    /// The entry's flags (no unknown bits).
    fn entry_flags(&mut self) -> Result<EntryFlags, DecodeError> {
        let at = self.pos;
        let bits = self.u8("entry flags")?;
        if bits & !ENTRY_KNOWN != 0 {
            let problem = Problem::UnknownFlags(bits & !ENTRY_KNOWN);
            return Err(DecodeError::malformed("entry flags", problem, at));
        }
        Ok(EntryFlags {
            must_revalidate: bits & ENTRY_MUST_REVALIDATE != 0,
            no_cache: bits & ENTRY_NO_CACHE != 0,
            auth_ok: bits & ENTRY_AUTH_OK != 0,
        })
    }

    /// The six instants of the timeline; checked, in a possible order.
    fn timeline(&mut self, checked: bool) -> Result<Timeline, DecodeError> {
        let at = self.pos;
        let timeline = Timeline {
            stored_at: self.u64("timeline")?,
            initial_age: self.u64("timeline")?,
            fresh_until: self.u64("timeline")?,
            stale_until: self.u64("timeline")?,
            stale_if_error_until: self.u64("timeline")?,
            retain_until: self.u64("timeline")?,
        };
        if let Some(problem) = checked.then(|| timeline_problem(&timeline)).flatten() {
            return Err(DecodeError::malformed(
                "timeline",
                Problem::Timeline(problem),
                at,
            ));
        }
        Ok(timeline)
    }

    /// The cache key; with `checks`, one the value may be stored under.
    fn key(&mut self, checks: Option<&Checks<'_>>) -> Result<&'a str, DecodeError> {
        let at = self.pos;
        let key = Reader::utf8(self.bytes32("key")?, "key", at)?;
        if checks.is_some_and(|c| !(c.key_ok)(key)) {
            return Err(DecodeError::malformed("key", Problem::WrongKey, at));
        }
        Ok(key)
    }

    /// The header lines, the lines of one name contiguous; checked, no
    /// hop-by-hop header.
    fn headers(&mut self, checked: bool) -> Result<HeaderMap, DecodeError> {
        let count = self.count32(MAX_HEADERS, MIN_HEADER_LEN, "header count")?;
        // Room for two fields more: an L2 hit answered from this map alone
        // adds `Age` and `Cache-Status` to it (`HitSlots::fill`). A typed
        // value's entry has no fields and answers no request: nothing.
        let room = if count == 0 { 0 } else { count + 2 };
        let mut headers = HeaderMap::with_capacity(room);
        // The previous line's name (canonical: its bytes are its name).
        let mut last: &[u8] = &[];
        for _ in 0..count {
            let at = self.pos;
            let (name, raw) = self.name_and_bytes("header name")?;
            if checked {
                if let Some(hop) = HOP_BY_HOP.iter().find(|h| **h == name.as_str()) {
                    let problem = Problem::HopByHop(hop);
                    return Err(DecodeError::malformed("header name", problem, at));
                }
            }
            let value = self.value("header value")?;
            // One look-up per line: a name seen before must be the
            // previous line's.
            match headers.entry(name) {
                header::Entry::Vacant(v) => {
                    v.insert(value);
                }
                header::Entry::Occupied(mut o) if last == raw => o.append(value),
                header::Entry::Occupied(_) => {
                    let problem = Problem::NotContiguous;
                    return Err(DecodeError::malformed("header name", problem, at));
                }
            }
            last = raw;
        }
        Ok(headers)
    }

    /// The `Vary` names, each with the request's values for it.
    fn vary(&mut self) -> Result<Vec<VaryValues>, DecodeError> {
        let count = self.count16(MAX_VARY_NAMES, MIN_VARY_LEN, "vary count")?;
        let mut vary = Vec::with_capacity(count);
        for _ in 0..count {
            let name = self.name("vary name")?;
            let n = self.count16(MAX_VARY_VALUES, MIN_VARY_VALUE_LEN, "vary value count")?;
            let mut values = Vec::with_capacity(n);
            for _ in 0..n {
                values.push(self.value("vary value")?);
            }
            vary.push((name, values.into_boxed_slice()));
        }
        Ok(vary)
    }

    /// The tags.
    fn tags(&mut self) -> Result<Vec<Box<str>>, DecodeError> {
        let count = self.count16(MAX_TAGS, MIN_TAG_LEN, "tag count")?;
        let mut tags = Vec::with_capacity(count);
        for _ in 0..count {
            let at = self.pos;
            let tag = Reader::utf8(self.bytes16("tag")?, "tag", at)?;
            tags.push(Box::<str>::from(tag));
        }
        Ok(tags)
    }

    /// The body: decompressed, a slice of `shared` (the value's own
    /// buffer) when [`shares_body`] allows, else a copy. With `max_body`,
    /// no larger than it.
    fn body(
        &mut self,
        compressed: bool,
        shared: Option<&Bytes>,
        max_body: Option<u64>,
    ) -> Result<Bytes, DecodeError> {
        let start = self.pos + 4;
        let at = self.pos;
        let raw = self.bytes32("body")?;
        if let Some(max) = max_body.filter(|max| !compressed && raw.len() as u64 > *max) {
            let problem = Problem::BodyTooLarge {
                size: raw.len() as u64,
                max,
            };
            return Err(DecodeError::malformed("body", problem, at));
        }
        if compressed {
            return decompress(raw, at, max_body);
        }
        Ok(match shared {
            Some(b) if shares_body(self.buf.len(), raw.len()) => b.slice(start..start + raw.len()),
            _ => crate::entry::owned_bytes(raw),
        })
    }

    /// Nothing after the body.
    fn end(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            let problem = Problem::TrailingBytes(self.remaining());
            return Err(DecodeError::malformed("end of value", problem, self.pos));
        }
        Ok(())
    }
}

/// Every `Content-Length` value (a list of them included) is the body's
/// length; `at` is where the body starts.
fn check_content_length(
    headers: &HeaderMap,
    body_len: usize,
    at: usize,
) -> Result<(), DecodeError> {
    let bad = headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|v| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                != Some(body_len as u64)
        });
    if bad {
        let problem = Problem::ContentLength { body: body_len };
        return Err(DecodeError::malformed("header value", problem, at));
    }
    Ok(())
}

/// Whether a decoded body of `body` bytes may stay a slice of the value's
/// `value` bytes: when it is large (copying it would cost) and the rest of
/// the value (key, headers, tags, all decoded into copies of their own) is
/// at most a sixty-fourth of it and at most 4 KiB, so that the buffer it
/// keeps alive is all but what the entry weighs.
fn shares_body(value: usize, body: usize) -> bool {
    let rest = value.saturating_sub(body);
    body >= 64 * 1024 && rest <= (body / 64).min(4096)
}

/// The largest body a compressed value may declare (a bound against
/// decompression bombs).
#[cfg(feature = "compression")]
const MAX_DECOMPRESSED: usize = 256 * 1024 * 1024;

/// Decompresses an LZ4 body, checking the size it declares before
/// allocating for it: against `max` (the body cap, when known; else
/// [`MAX_DECOMPRESSED`]) and against what the compressed bytes could
/// expand to (LZ4 expands at most about 255 times).
#[cfg(feature = "compression")]
fn decompress(raw: &[u8], at: usize, max: Option<u64>) -> Result<Bytes, DecodeError> {
    let declared = raw
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| DecodeError::malformed("body", Problem::Compressed, at))?;
    if let Some(max) = max.filter(|max| declared as u64 > *max) {
        let problem = Problem::BodyTooLarge {
            size: declared as u64,
            max,
        };
        return Err(DecodeError::malformed("body", problem, at));
    }
    let expandable = (raw.len() - 4).saturating_mul(256).saturating_add(64);
    if declared > MAX_DECOMPRESSED || declared > expandable {
        return Err(DecodeError::malformed("body", Problem::Compressed, at));
    }
    lz4_flex::decompress_size_prepended(raw)
        .map(Bytes::from)
        .map_err(|_| DecodeError::malformed("body", Problem::Compressed, at))
}

#[cfg(not(feature = "compression"))]
fn decompress(_raw: &[u8], at: usize, _max: Option<u64>) -> Result<Bytes, DecodeError> {
    Err(DecodeError::malformed("body", Problem::Compressed, at))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http::header::{
        ACCEPT_ENCODING, ACCEPT_LANGUAGE, CACHE_CONTROL, CONTENT_TYPE, COOKIE, ETAG, LAST_MODIFIED,
        SET_COOKIE, VARY,
    };

    /// The smallest entry: empty key, headers and body, a zero timeline.
    pub(crate) fn minimal() -> Entry {
        Entry {
            key: "".into(),
            status: StatusCode::OK,
            version: Version::HTTP_11,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            vary: Box::new([]),
            timeline: Timeline {
                stored_at: 0,
                initial_age: 0,
                fresh_until: 0,
                stale_until: 0,
                stale_if_error_until: 0,
                retain_until: 0,
            },
            flags: EntryFlags::default(),
            extensions: 0,
            tags: Box::new([]),
            template: Default::default(),
            label: 0,
            reads: Default::default(),
            value: None,
        }
    }

    pub(super) fn rich(body: Bytes) -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.append(SET_COOKIE, HeaderValue::from_static("a=1"));
        headers.append(SET_COOKIE, HeaderValue::from_static("b=2"));
        headers.append(SET_COOKIE, HeaderValue::from_static(""));
        headers.insert(ETAG, HeaderValue::from_static("\"v1\""));
        headers.insert(
            LAST_MODIFIED,
            HeaderValue::from_static("Tue, 15 Nov 1994 12:45:26 GMT"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
        headers.insert(
            VARY,
            HeaderValue::from_static("accept-encoding, accept-language, cookie"),
        );
        headers.insert("x-a", HeaderValue::from_static("v1"));
        headers.insert(
            "x-obs-text",
            HeaderValue::from_bytes(b"caf\xe9\t \xff").unwrap(),
        );
        Entry {
            key: "GET https://example.com/caf\u{e9}?q=1 \u{1f600}".into(),
            status: StatusCode::NON_AUTHORITATIVE_INFORMATION,
            version: Version::HTTP_2,
            headers,
            body,
            vary: vec![
                (ACCEPT_ENCODING, Box::new([]) as Box<[HeaderValue]>),
                (
                    ACCEPT_LANGUAGE,
                    Box::new([HeaderValue::from_static("en")]) as Box<[_]>,
                ),
                (
                    COOKIE,
                    Box::new([
                        HeaderValue::from_static("a=1"),
                        HeaderValue::from_static("b=2"),
                    ]) as Box<[_]>,
                ),
            ]
            .into_boxed_slice(),
            timeline: Timeline {
                stored_at: 1_700_000_000_000,
                initial_age: 5_000,
                fresh_until: 1_700_000_060_000,
                stale_until: 1_700_000_090_000,
                stale_if_error_until: 1_700_000_600_000,
                retain_until: u64::MAX,
            },
            flags: EntryFlags {
                must_revalidate: true,
                no_cache: false,
                auth_ok: true,
            },
            extensions: 3,
            tags: vec!["product:1".into(), "".into(), "caf\u{e9}".into()].into_boxed_slice(),
            template: Default::default(),
            label: 0,
            reads: Default::default(),
            value: None,
        }
    }

    /// Every field equal, headers in the same order.
    pub(super) fn assert_same(a: &Entry, b: &Entry) {
        assert_eq!(a.key, b.key);
        assert_eq!(a.status, b.status);
        assert_eq!(a.version, b.version);
        let ha: Vec<_> = a.headers.iter().collect();
        let hb: Vec<_> = b.headers.iter().collect();
        assert_eq!(ha, hb);
        assert_eq!(a.body, b.body);
        assert_eq!(a.vary, b.vary);
        assert_eq!(a.timeline, b.timeline);
        assert_eq!(a.flags, b.flags);
        assert_eq!(a.extensions, b.extensions);
        assert_eq!(a.tags, b.tags);
        let meta = |e: &Entry| e.value.as_ref().map(|v| (v.codec, v.type_tag));
        assert_eq!(meta(a), meta(b));
    }

    /// A typed value's entry: `rich`'s fields, a serialised body, and the
    /// codec and type tag it was written with.
    pub(super) fn typed(body: &'static [u8], codec: u8, type_tag: u64) -> Entry {
        Entry {
            value: Some(Box::new(ValueMeta::new(codec, type_tag, None))),
            ..rich(Bytes::from_static(body))
        }
    }

    /// `enc` with the unique occurrence of `from` replaced by `to` (same
    /// length).
    fn patch(enc: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let hits: Vec<usize> = enc
            .windows(from.len())
            .enumerate()
            .filter(|(_, w)| *w == from)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(hits.len(), 1, "{from:?} must occur once");
        let mut out = enc.to_vec();
        out[hits[0]..hits[0] + to.len()].copy_from_slice(to);
        out
    }

    /// The encoding of `minimal()` up to and including the (empty) key:
    /// a prefix to which a test appends crafted fields.
    fn prefix() -> BytesMut {
        let enc = minimal().encode();
        BytesMut::from(&enc[..FIXED_LEN + 4])
    }

    const MALFORMED: fn(&DecodeError) -> bool = DecodeError::is_malformed;
    const TRUNCATED: fn(&DecodeError) -> bool = DecodeError::is_truncated;

    /// The error of decoding `v`, which must be of the kind `is` tells
    /// ([`MALFORMED`], [`TRUNCATED`]) and name `needle`.
    fn refused(v: &[u8], is: fn(&DecodeError) -> bool, needle: &str) -> DecodeError {
        let err = Entry::decode(v).unwrap_err();
        assert!(
            is(&err) && err.to_string().contains(needle),
            "{needle}: {err}"
        );
        err
    }

    #[test]
    fn round_trip_rich_entry() {
        for body in [
            Bytes::new(),
            Bytes::from_static(b"hello"),
            Bytes::from((0..=255u8).cycle().take(3 << 20).collect::<Vec<u8>>()),
        ] {
            let e = rich(body);
            let enc = e.encode();
            assert_eq!(&enc[..4], b"TTC\0");
            assert_eq!(enc[4], FORMAT_VERSION);
            assert_eq!(enc.len(), e.encoded_len());
            let d = Entry::decode(&enc).unwrap();
            assert_same(&e, &d);
            assert!(d.has_validators());
            assert_eq!(d.encode(), enc);
            let shared = Entry::decode_bytes(enc.clone()).unwrap();
            assert_same(&e, &shared);
        }
    }

    #[test]
    fn round_trip_minimal_and_every_version() {
        for version in [
            Version::HTTP_09,
            Version::HTTP_10,
            Version::HTTP_11,
            Version::HTTP_2,
            Version::HTTP_3,
        ] {
            let mut e = minimal();
            e.version = version;
            let d = Entry::decode(&e.encode()).unwrap();
            assert_same(&e, &d);
        }
        let e = minimal();
        assert_eq!(e.encode().len(), FIXED_LEN + 4 + 4 + 2 + 2 + 4);
    }

    #[test]
    fn decode_bytes_shares_a_large_body() {
        let enc = rich(Bytes::from(vec![7u8; 256 * 1024])).encode();
        let range = enc.as_ptr_range();
        let d = Entry::decode_bytes(enc.clone()).unwrap();
        assert!(range.contains(&d.body.as_ptr()));
        let copied = Entry::decode(&enc).unwrap();
        assert!(!range.contains(&copied.body.as_ptr()));
    }

    /// A decoded entry keeps no view into a reply much larger than its
    /// body: the body of a small entry, or of one whose headers are a good
    /// part of the value, is copied.
    #[test]
    fn decode_bytes_copies_a_body_that_is_not_most_of_the_value() {
        let mut headers_heavy = rich(Bytes::from(vec![7u8; 64 * 1024]));
        headers_heavy.headers.insert(
            "x-big",
            HeaderValue::from_str(&"h".repeat(8 * 1024)).unwrap(),
        );
        for e in [rich(Bytes::from(vec![7u8; 4096])), headers_heavy] {
            let enc = e.encode();
            let range = enc.as_ptr_range();
            let d = Entry::decode_bytes(enc.clone()).unwrap();
            assert_eq!(d.body, e.body);
            assert!(!range.contains(&d.body.as_ptr()));
            for v in d.headers.values() {
                assert!(v.is_empty() || !range.contains(&v.as_bytes().as_ptr()));
            }
        }
        assert!(!shares_body(10_000, 9_999));
        assert!(shares_body(65_536 + 1024, 65_536));
        assert!(!shares_body(65_536 + 1025, 65_536));
        assert!(shares_body((1 << 20) + 4096, 1 << 20));
        assert!(!shares_body((1 << 20) + 4097, 1 << 20));
    }

    #[test]
    fn every_truncation_is_truncated() {
        for e in [minimal(), rich(Bytes::from_static(b"some body"))] {
            let enc = e.encode();
            for n in 0..enc.len() {
                let err = Entry::decode(&enc[..n]).unwrap_err();
                assert!(err.is_truncated(), "prefix of {n} bytes: {err}");
                let err = Entry::decode_bytes(enc.slice(..n)).unwrap_err();
                assert!(err.is_truncated(), "prefix of {n} bytes: {err}");
            }
        }
    }

    #[test]
    fn bad_magic() {
        for input in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"X",
            b"TTX\0\x01\x00",
            b"ttc\0\x01\x00",
            b"{\"status\":200}",
        ] {
            let err = Entry::decode(input).unwrap_err();
            assert!(err.is_bad_magic(), "{input:?}: {err}");
            assert!(!err.is_truncated() && !err.is_malformed() && !err.is_unsupported_version());
            assert!(err.to_string().contains("magic"), "{err}");
        }
    }

    #[test]
    fn other_format_versions_are_unsupported() {
        let mut enc = rich(Bytes::from_static(b"x")).encode().to_vec();
        for v in [0, 2, 255] {
            enc[4] = v;
            let err = Entry::decode(&enc).unwrap_err();
            assert!(err.is_unsupported_version(), "{err}");
            assert_eq!(err.offset(), 4);
            assert!(err.to_string().contains(&format!("version {v}")), "{err}");
        }
        // Even a value that stops right after the version byte.
        let err = Entry::decode(b"TTC\0\x02").unwrap_err();
        assert!(err.is_unsupported_version(), "{err}");
    }

    #[test]
    fn unknown_or_unsupported_flag_bits_are_malformed() {
        let enc = rich(Bytes::from_static(b"x")).encode().to_vec();
        for bits in [0x04u8, 0x40, 0x7e, 0xfc] {
            let mut v = enc.clone();
            v[5] = bits;
            let err = refused(&v, MALFORMED, "unknown flag bits");
            assert!(err.to_string().contains("format flags"), "{err}");
        }
        // Bit 0 on an uncompressed body: not readable (without the feature)
        // or not valid LZ4 (with it).
        let mut v = enc.clone();
        v[5] = FLAG_COMPRESSED;
        refused(&v, MALFORMED, "compressed");
        // Unknown entry flag bits.
        let mut v = enc.clone();
        v[9] |= 0x08;
        assert_eq!(refused(&v, MALFORMED, "entry flags").offset(), 9);
    }

    /// A typed value's codec id and type tag follow the timeline when
    /// format flag bit 1 says so, and come back; entries without it
    /// (every value written before typed values) read as before.
    #[test]
    fn typed_values_round_trip_with_their_codec_and_type_tag() {
        let tag = 0x0123_4567_89ab_cdef;
        let e = typed(b"{\"odds\":1.5}", 7, tag);
        let enc = e.encode();
        assert_eq!(enc[5], FLAG_VALUE);
        assert_eq!(enc[FIXED_LEN], 7);
        assert_eq!(enc[FIXED_LEN + 1..FIXED_LEN + VALUE_LEN], tag.to_le_bytes());
        assert_eq!(enc.len(), e.encoded_len());
        let d = Entry::decode(&enc).unwrap();
        assert_same(&e, &d);
        assert!(d.value.as_ref().unwrap().payload.get().is_none());
        assert_eq!(d.encode(), enc, "canonical");
        // An HTTP entry: no flag, no section, the same bytes as before.
        let plain = rich(Bytes::from_static(b"{\"odds\":1.5}")).encode();
        assert_eq!(plain[5], 0);
        assert_eq!(plain.len() + VALUE_LEN, enc.len());
        assert!(Entry::decode(&plain).unwrap().value.is_none());
        // Checked as stored values are.
        let checks = Checks {
            max_body: 1 << 20,
            key_ok: &|_| true,
        };
        let stored = Entry {
            timeline: Timeline {
                retain_until: 1_700_000_600_000,
                ..e.timeline
            },
            headers: HeaderMap::new(),
            ..typed(b"[1,2]", 1, 9)
        };
        let d = Entry::decode_stored(stored.encode(), &checks).unwrap();
        assert_same(&stored, &d);
    }

    /// Cut anywhere, a typed value is truncated; its flag without its
    /// section, or its section without its flag, never decodes as a typed
    /// value of the same fields.
    #[test]
    fn crafted_or_truncated_typed_values_are_refused() {
        let e = typed(b"42", 2, u64::MAX);
        let enc = e.encode();
        for n in 0..enc.len() {
            let err = Entry::decode(&enc[..n]).unwrap_err();
            assert!(err.is_truncated(), "prefix of {n} bytes: {err}");
        }
        // The section cut short: the value ends inside the type tag.
        let err = Entry::decode(&enc[..FIXED_LEN + 4]).unwrap_err();
        assert!(err.to_string().contains("value type tag"), "{err}");
        // The flag cleared: the section is read as the key's length.
        let mut v = enc.to_vec();
        v[5] = 0;
        assert!(Entry::decode(&v).is_err());
        // The flag set on an HTTP entry: its key is read as the section.
        let mut v = rich(Bytes::from_static(b"x")).encode().to_vec();
        v[5] = FLAG_VALUE;
        assert!(Entry::decode(&v).is_err());
        // Flag and section both added to an HTTP entry: a value of its own.
        let plain = minimal().encode();
        let mut v = plain[..FIXED_LEN].to_vec();
        v[5] = FLAG_VALUE;
        v.push(9);
        v.extend_from_slice(&5u64.to_le_bytes());
        v.extend_from_slice(&plain[FIXED_LEN..]);
        let d = Entry::decode(&v).unwrap();
        let meta = d.value.as_ref().unwrap();
        assert_eq!((meta.codec, meta.type_tag), (9, 5));
        assert!(check_input(&v));
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut enc = rich(Bytes::from_static(b"x")).encode().to_vec();
        enc.push(0);
        let err = refused(&enc, MALFORMED, "1 unexpected bytes after the body");
        assert_eq!(err.offset(), enc.len() - 1);
    }

    #[test]
    fn invalid_fields_are_malformed() {
        let enc = rich(Bytes::from_static(b"x")).encode();
        let cases: [(&[u8], &[u8], &str); 7] = [
            (b"\x03\x00x-a", b"\x03\x00x a", "not a valid header name"),
            (b"\x03\x00x-a", b"\x03\x00X-a", "not in lowercase form"),
            (b"v1\"", b"v\n\"", "not a valid header value"),
            (b"caf\xc3\xa9?", b"caf\xc3\xc3?", "key at byte"),
            (b"product:1", b"product:\xff", "tag at byte"),
            (
                b"\x02\x00\x00\x00en",
                b"\x02\x00\x00\x00e\x00",
                "vary value",
            ),
            (
                b"\x0f\x00accept-language",
                b"\x0f\x00Accept-language",
                "vary name",
            ),
        ];
        for (from, to, needle) in cases {
            refused(&patch(&enc, from, to), MALFORMED, needle);
        }
        for code in [0u16, 99, 1000, u16::MAX] {
            let mut v = enc.to_vec();
            v[6..8].copy_from_slice(&code.to_le_bytes());
            refused(&v, MALFORMED, &format!("{code} is not a valid status"));
        }
        let mut v = enc.to_vec();
        v[8] = 5;
        refused(&v, MALFORMED, "HTTP version");
    }

    #[test]
    fn non_contiguous_header_values_are_malformed() {
        let mut b = prefix();
        b.put_u32_le(3);
        for (n, v) in [("x-a", "1"), ("x-b", "2"), ("x-a", "3")] {
            b.put_u16_le(n.len() as u16);
            b.put_slice(n.as_bytes());
            b.put_u32_le(v.len() as u32);
            b.put_slice(v.as_bytes());
        }
        b.put_u16_le(0);
        b.put_u16_le(0);
        b.put_u32_le(0);
        refused(&b, MALFORMED, "not contiguous");
    }

    #[test]
    fn huge_declared_lengths_fail_without_allocating() {
        let start = std::time::Instant::now();
        // Key length.
        let mut b = BytesMut::from(&prefix()[..FIXED_LEN]);
        b.put_u32_le(u32::MAX);
        refused(&b, TRUNCATED, "key");

        // Header count over the limit, and one the input cannot hold.
        let mut b = prefix();
        b.put_u32_le(u32::MAX);
        refused(&b, MALFORMED, "at most 10000");
        let mut b = prefix();
        b.put_u32_le(MAX_HEADERS as u32);
        b.put_slice(&[0; 64]);
        refused(&b, TRUNCATED, "header count");

        // A header value length.
        let mut b = prefix();
        b.put_u32_le(1);
        b.put_u16_le(1);
        b.put_u8(b'a');
        b.put_u32_le(u32::MAX);
        refused(&b, TRUNCATED, "header value");

        // Vary value count, tag count, body length.
        let mut b = prefix();
        b.put_u32_le(0);
        b.put_u16_le(1);
        b.put_u16_le(1);
        b.put_u8(b'a');
        b.put_u16_le(u16::MAX);
        refused(&b, MALFORMED, "vary value count");
        let mut b = prefix();
        b.put_u32_le(0);
        b.put_u16_le(0);
        b.put_u16_le(MAX_TAGS as u16);
        refused(&b, TRUNCATED, "tag count");
        let mut b = prefix();
        b.put_u32_le(0);
        b.put_u16_le(0);
        b.put_u16_le(0);
        b.put_u32_le(u32::MAX);
        refused(
            &b,
            TRUNCATED,
            &format!(
                "body at byte {} needs 4294967295 bytes, 0 left",
                b.len() - 4
            ),
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn an_entry_beyond_the_limits_encodes_to_a_refused_value() {
        let mut e = minimal();
        e.tags = (0..=MAX_TAGS).map(|i| i.to_string().into()).collect();
        assert!(!e.fits_format());
        let enc = e.encode();
        assert_eq!(enc.len(), 6);
        refused(&enc, MALFORMED, "exceeded the format's limits");

        let mut e = minimal();
        e.tags = vec!["t".repeat(1 << 16).into()].into_boxed_slice();
        assert!(Entry::decode(&e.encode()).unwrap_err().is_malformed());
        assert!(minimal().fits_format());
        assert!(rich(Bytes::new()).fits_format());
    }

    #[test]
    fn decode_error_is_a_std_error() {
        fn check<E: std::error::Error + Send + Sync + 'static>(_: &E) {}
        let err = Entry::decode(b"").unwrap_err();
        check(&err);
        assert!(err.is_truncated());
        assert_eq!(
            err.to_string(),
            "truncated cache entry: magic at byte 0 needs 4 bytes, 0 left"
        );
    }

    /// xorshift64*: a small seeded generator, so runs are repeatable.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn mutate(rng: &mut Rng, v: &mut Vec<u8>) {
        const INTERESTING: [u8; 6] = [0, 1, 0x7f, 0x80, 0xfe, 0xff];
        for _ in 0..1 + rng.below(4) {
            let len = v.len();
            match rng.below(8) {
                0 if len > 0 => v[rng.below(len)] ^= 1 << rng.below(8),
                1 if len > 0 => v[rng.below(len)] = INTERESTING[rng.below(6)],
                2 => v.insert(rng.below(len + 1), rng.next() as u8),
                3 if len > 0 => {
                    let at = rng.below(len);
                    let n = 1 + rng.below((len - at).min(16));
                    v.drain(at..at + n);
                }
                4 => v.truncate(rng.below(len + 1)),
                5 if len >= 4 => {
                    let at = rng.below(len - 3);
                    let word: u32 = [0, 1, 10_000, 10_001, u16::MAX as u32, u32::MAX][rng.below(6)];
                    v[at..at + 4].copy_from_slice(&word.to_le_bytes());
                }
                6 if len > 0 => {
                    let at = rng.below(len);
                    let n = 1 + rng.below((len - at).min(32));
                    let chunk = v[at..at + n].to_vec();
                    let to = rng.below(len + 1);
                    v.splice(to..to, chunk);
                }
                _ if len > 0 => v[rng.below(len)] = rng.next() as u8,
                _ => v.push(rng.next() as u8),
            }
        }
    }

    /// The fuzz target's property (`fuzz/fuzz_targets/decode_entry.rs`),
    /// plus canonicity: whatever decodes re-encodes to the same bytes.
    pub(super) fn check_input(data: &[u8]) -> bool {
        // The checks for values read back from L2 never panic either, and
        // accept only what the format accepts.
        let checks = Checks {
            max_body: 1 << 20,
            key_ok: &|k: &str| !k.is_empty(),
        };
        let stored = Entry::decode_stored(Bytes::copy_from_slice(data), &checks);
        if let Err(e) = &stored {
            let _ = e.to_string();
        }
        let format_ok = Entry::decode(data).is_ok();
        assert!(stored.is_err() || format_ok, "checked decode is stricter");
        match Entry::decode(data) {
            Ok(e) => {
                let enc = e.encode();
                assert_eq!(&enc[..], data, "decoded input must re-encode to itself");
                let again = Entry::decode(&enc).expect("re-encode decodes");
                assert_eq!(enc, again.encode());
                let shared = Entry::decode_bytes(Bytes::copy_from_slice(data)).unwrap();
                assert_same(&e, &shared);
                true
            }
            Err(err) => {
                let shared = Entry::decode_bytes(Bytes::copy_from_slice(data)).unwrap_err();
                assert_eq!(err, shared);
                let _ = err.to_string();
                false
            }
        }
    }

    /// A stable-Rust stand-in for the cargo-fuzz target: random and mutated
    /// inputs from a seeded generator, bounded in count and time.
    #[test]
    fn decode_survives_random_and_mutated_inputs() {
        let seeds: Vec<Vec<u8>> = vec![
            minimal().encode().to_vec(),
            rich(Bytes::new()).encode().to_vec(),
            rich(Bytes::from_static(b"0123456789")).encode().to_vec(),
            typed(b"{\"a\":[1,2]}", 1, 42).encode().to_vec(),
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let (mut runs, mut decoded) = (0u32, 0u32);
        while runs < 200_000 && std::time::Instant::now() < deadline {
            let input = if rng.below(8) == 0 {
                // Random bytes, half of them behind a valid header.
                let mut v = if rng.below(2) == 0 {
                    b"TTC\0\x01\x00".to_vec()
                } else {
                    Vec::new()
                };
                let n = rng.below(256);
                v.extend((0..n).map(|_| rng.next() as u8));
                v
            } else {
                let mut v = seeds[rng.below(seeds.len())].clone();
                mutate(&mut rng, &mut v);
                v
            };
            if check_input(&input) {
                decoded += 1;
            }
            runs += 1;
        }
        eprintln!("{runs} inputs, {decoded} decoded");
        assert!(runs >= 10_000, "only {runs} inputs in the time allowed");
        // Mutations of timeline and body bytes stay valid: the property's
        // Ok branch must have been exercised too.
        assert!(decoded > runs / 100, "{decoded} of {runs} decoded");
    }
}

#[cfg(test)]
mod props {
    use super::tests::{assert_same, check_input};
    use super::*;
    use http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, LAST_MODIFIED, SET_COOKIE, VARY};
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::{select, Index};

    fn header_name() -> impl Strategy<Value = HeaderName> {
        prop_oneof![
            select(vec![
                ETAG,
                LAST_MODIFIED,
                CONTENT_TYPE,
                SET_COOKIE,
                CACHE_CONTROL,
                VARY
            ]),
            "[a-z0-9!#$%&'*+.^_`|~-]{1,24}"
                .prop_map(|s| HeaderName::from_bytes(s.as_bytes()).unwrap()),
        ]
    }

    fn header_value() -> impl Strategy<Value = HeaderValue> {
        prop_oneof![
            "[ -~]{0,40}".prop_map(|s| HeaderValue::from_str(&s).unwrap()),
            vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..40)
                .prop_map(|b| HeaderValue::from_bytes(&b).unwrap()),
        ]
    }

    fn headers() -> impl Strategy<Value = HeaderMap> {
        vec((header_name(), header_value()), 0..24).prop_map(|pairs| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(n, v);
            }
            h
        })
    }

    fn timeline() -> impl Strategy<Value = Timeline> {
        any::<[u64; 6]>().prop_map(|t| Timeline {
            stored_at: t[0],
            initial_age: t[1],
            fresh_until: t[2],
            stale_until: t[3],
            stale_if_error_until: t[4],
            retain_until: t[5],
        })
    }

    fn entry() -> impl Strategy<Value = Entry> {
        (
            ".{0,64}",
            select(vec![
                100u16, 200, 203, 204, 206, 301, 304, 404, 410, 451, 501, 599, 999,
            ]),
            select(vec![
                Version::HTTP_09,
                Version::HTTP_10,
                Version::HTTP_11,
                Version::HTTP_2,
                Version::HTTP_3,
            ]),
            headers(),
            vec(any::<u8>(), 0..4096),
            vec((header_name(), vec(header_value(), 0..3)), 0..4),
            vec(".{0,16}", 0..6),
            timeline(),
            any::<(bool, bool, bool)>(),
            (any::<u32>(), proptest::option::of(any::<(u8, u64)>())),
        )
            .prop_map(
                |(key, status, version, headers, body, vary, tags, timeline, flags, more)| {
                    let (extensions, value) = more;
                    Entry {
                        key: key.into(),
                        status: StatusCode::from_u16(status).unwrap(),
                        version,
                        headers,
                        body: body.into(),
                        vary: vary
                            .into_iter()
                            .map(|(n, v)| (n, v.into_boxed_slice()))
                            .collect(),
                        timeline,
                        flags: EntryFlags {
                            must_revalidate: flags.0,
                            no_cache: flags.1,
                            auth_ok: flags.2,
                        },
                        extensions,
                        tags: tags.into_iter().map(String::into_boxed_str).collect(),
                        template: Default::default(),
                        label: 0,
                        reads: Default::default(),
                        value: value.map(|(c, t)| Box::new(ValueMeta::new(c, t, None))),
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn round_trip(e in entry()) {
            let enc = e.encode();
            let d = Entry::decode(&enc).unwrap();
            assert_same(&e, &d);
            // Through the public accessors too.
            prop_assert_eq!(d.key(), e.key());
            prop_assert_eq!(d.status(), e.status());
            prop_assert_eq!(d.headers(), e.headers());
            prop_assert_eq!(d.body(), e.body());
            prop_assert_eq!(d.timeline(), e.timeline());
            prop_assert!(d.vary().eq(e.vary()));
            prop_assert!(d.tags().eq(e.tags()));
            prop_assert_eq!(d.encode(), enc.clone());
            assert_same(&e, &Entry::decode_bytes(enc).unwrap());
        }

        #[test]
        fn every_truncation_is_an_error(e in entry(), cut in any::<Index>()) {
            let enc = e.encode();
            let n = cut.index(enc.len());
            prop_assert!(Entry::decode(&enc[..n]).unwrap_err().is_truncated());
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..512)) {
            check_input(&data);
            let mut framed = b"TTC\0\x01\x00".to_vec();
            framed.extend_from_slice(&data);
            check_input(&framed);
        }

        #[test]
        fn mutated_encodings_never_panic(
            e in entry(),
            edits in vec((any::<Index>(), any::<u8>()), 1..8),
            cut in proptest::option::of(any::<Index>()),
        ) {
            let mut v = e.encode().to_vec();
            for (at, byte) in edits {
                let i = at.index(v.len());
                v[i] = byte;
            }
            if let Some(cut) = cut {
                v.truncate(cut.index(v.len() + 1));
            }
            check_input(&v);
        }
    }
}

#[cfg(all(test, feature = "compression"))]
mod compression_tests {
    use super::*;
    use crate::entry::Timeline;
    use http::header::{HeaderValue, CONTENT_ENCODING};

    fn entry(body: Vec<u8>, encoded: bool) -> Entry {
        let mut headers = HeaderMap::new();
        if encoded {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        Entry {
            key: "GET //h/x".into(),
            headers,
            body: Bytes::from(body),
            timeline: Timeline {
                stored_at: 1,
                initial_age: 0,
                fresh_until: 2,
                stale_until: 3,
                stale_if_error_until: 4,
                retain_until: 5,
            },
            ..super::tests::minimal()
        }
    }

    #[test]
    fn large_compressible_bodies_are_compressed_and_round_trip() {
        let body = b"{\"odds\": [1.5, 2.25, 3.75]} ".repeat(400);
        let e = entry(body.clone(), false);
        let plain = e.encode();
        let packed = e.encode_with(Some(1024));
        assert!(
            packed.len() * 4 < plain.len(),
            "{} vs {}",
            packed.len(),
            plain.len()
        );
        assert_eq!(packed[5] & FLAG_COMPRESSED, FLAG_COMPRESSED);
        let back = Entry::decode_bytes(packed).unwrap();
        assert_eq!(back.body(), &body[..]);
    }

    #[test]
    fn small_incompressible_or_encoded_bodies_are_stored_as_they_are() {
        // Under the threshold.
        let e = entry(vec![b'a'; 1000], false);
        assert_eq!(e.encode_with(Some(1024)), e.encode());
        // Already content-encoded.
        let e = entry(vec![b'a'; 10_000], true);
        assert_eq!(e.encode_with(Some(1024)), e.encode());
        // Incompressible (pseudo-random bytes): compression would not save space.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let e = entry(noise, false);
        assert_eq!(e.encode_with(Some(1024)), e.encode());
    }

    #[test]
    fn corrupt_or_oversized_compressed_bodies_are_errors() {
        let e = entry(b"abc".repeat(2000), false);
        let packed = e.encode_with(Some(1024)).to_vec();
        // The body is last; its first 4 bytes declare the decompressed size.
        let body_len = lz4_flex::compress_prepend_size(&e.body).len();
        let start = packed.len() - body_len;
        // A declared size far over the bound.
        let mut bomb = packed.clone();
        bomb[start..start + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Entry::decode(&bomb).unwrap_err().is_malformed());
        // Garbage in place of LZ4 data.
        let mut junk = packed;
        for b in &mut junk[start + 4..] {
            *b = 0xff;
        }
        assert!(Entry::decode(&junk).is_err());
    }
}

/// The checks on values read back from a store ([`Checks`]): each kind of
/// corrupt entry, crafted, is refused.
#[cfg(test)]
mod stored_checks {
    use super::tests::{assert_same, minimal};
    use super::*;
    use http::header::{CONTENT_LENGTH, CONTENT_TYPE};

    const KEY: &str = "GET //h/x";
    const T: u64 = 1_700_000_000_000;
    const MAX_BODY: u64 = 1024 * 1024;

    /// An entry as the cache stores it.
    fn stored(body: &'static [u8]) -> Entry {
        let mut e = minimal();
        e.key = KEY.into();
        e.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        e.headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        e.body = Bytes::from_static(body);
        e.timeline = Timeline {
            stored_at: T,
            initial_age: 2_000,
            fresh_until: T + 60_000,
            stale_until: T + 70_000,
            stale_if_error_until: T + 600_000,
            retain_until: T + 600_000,
        };
        e
    }

    fn decode(enc: &[u8]) -> Result<Entry, DecodeError> {
        let key_ok = |k: &str| k == KEY;
        let checks = Checks {
            max_body: MAX_BODY,
            key_ok: &key_ok,
        };
        Entry::decode_stored(Bytes::copy_from_slice(enc), &checks)
    }

    /// `e` is refused with a malformed error that mentions `what`, while the
    /// format-level decoder still reads it.
    #[track_caller]
    fn refused(e: &Entry, what: &str) {
        let enc = e.encode();
        assert!(Entry::decode(&enc).is_ok(), "the format itself is fine");
        let err = decode(&enc).unwrap_err();
        assert!(err.is_malformed(), "{err}");
        assert!(err.to_string().contains(what), "{what:?} not in: {err}");
    }

    #[test]
    fn an_entry_the_cache_stores_passes() {
        for e in [stored(b""), stored(b"hello")] {
            let d = decode(&e.encode()).unwrap();
            assert_same(&e, &d);
        }
        // No Content-Length (a 204) is fine; a list of equal values too.
        let mut e = stored(b"");
        e.status = StatusCode::NO_CONTENT;
        e.headers.remove(CONTENT_LENGTH);
        decode(&e.encode()).unwrap();
        let mut e = stored(b"abc");
        e.headers
            .insert(CONTENT_LENGTH, HeaderValue::from_static("3, 3"));
        decode(&e.encode()).unwrap();
        // The edges of the status range.
        for code in [200, 203, 206, 301, 404, 410, 599] {
            let mut e = stored(b"x");
            e.status = StatusCode::from_u16(code).unwrap();
            decode(&e.encode()).unwrap();
        }
    }

    #[test]
    fn statuses_the_cache_never_stores_are_refused() {
        for code in [100, 101, 199, 304, 600, 999] {
            let mut e = stored(b"x");
            e.status = StatusCode::from_u16(code).unwrap();
            refused(&e, &format!("status {code} is never stored"));
        }
    }

    #[test]
    fn another_key_is_refused() {
        let mut e = stored(b"x");
        e.key = "GET //h/other".into();
        refused(&e, "not the entry for the key that was looked up");
        let err = decode(&e.encode()).unwrap_err();
        assert_eq!(err.offset(), FIXED_LEN);
    }

    #[test]
    fn hop_by_hop_fields_are_refused() {
        for name in HOP_BY_HOP {
            let mut e = stored(b"x");
            e.headers
                .insert(HeaderName::from_static(name), HeaderValue::from_static("1"));
            refused(&e, &format!("hop-by-hop field `{name}`"));
        }
        let mut e = stored(b"x");
        e.headers.insert(
            http::header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        refused(&e, "transfer-encoding");
    }

    #[test]
    fn a_content_length_other_than_the_body_is_refused() {
        for cl in ["4", "2", "", "x", "3, 4", "-3", "99999999999999999999999"] {
            let mut e = stored(b"abc");
            e.headers
                .insert(CONTENT_LENGTH, HeaderValue::from_str(cl).unwrap());
            refused(&e, "Content-Length does not match the body's 3 bytes");
        }
        let mut e = stored(b"abc");
        e.headers
            .append(CONTENT_LENGTH, HeaderValue::from_static("4"));
        refused(&e, "Content-Length");
    }

    #[test]
    fn insane_timelines_are_refused() {
        let all_max = Timeline {
            stored_at: u64::MAX,
            initial_age: u64::MAX,
            fresh_until: u64::MAX,
            stale_until: u64::MAX,
            stale_if_error_until: u64::MAX,
            retain_until: u64::MAX,
        };
        // Today's wrap: the age of an all-MAX timeline.
        assert_eq!(all_max.age_at(0), u64::MAX);
        assert_eq!(all_max.age_at(u64::MAX), u64::MAX);
        let ok = stored(b"x").timeline;
        let span = MAX_TIMELINE_SPAN_MS;
        let cases: [(Timeline, &str); 8] = [
            (all_max, "stored_at is past year 9999"),
            (
                Timeline {
                    initial_age: u64::MAX,
                    ..ok
                },
                "initial_age",
            ),
            (
                Timeline {
                    fresh_until: T - 1,
                    ..ok
                },
                "fresh_until is before stored_at",
            ),
            (
                Timeline {
                    stale_until: ok.fresh_until - 1,
                    ..ok
                },
                "stale_until is before fresh_until",
            ),
            (
                Timeline {
                    stale_if_error_until: ok.fresh_until - 1,
                    ..ok
                },
                "stale_if_error_until is before fresh_until",
            ),
            (
                Timeline {
                    retain_until: ok.stale_if_error_until - 1,
                    ..ok
                },
                "retain_until is before",
            ),
            (
                Timeline {
                    fresh_until: u64::MAX,
                    stale_until: u64::MAX,
                    stale_if_error_until: u64::MAX,
                    retain_until: u64::MAX,
                    ..ok
                },
                "retain_until is over 1000 years after stored_at",
            ),
            (
                Timeline {
                    retain_until: T + span + 1,
                    ..ok
                },
                "over 1000 years",
            ),
        ];
        for (timeline, what) in cases {
            let mut e = stored(b"x");
            e.timeline = timeline;
            refused(&e, what);
            assert_eq!(decode(&e.encode()).unwrap_err().offset(), 14);
        }
        // The bound itself is fine.
        let mut e = stored(b"x");
        e.timeline.retain_until = T + span;
        decode(&e.encode()).unwrap();
    }

    #[test]
    fn huge_declared_lengths_and_counts_are_refused_before_allocating() {
        // A body over the cap, stored plainly.
        let mut e = stored(b"");
        e.headers.remove(CONTENT_LENGTH);
        e.body = Bytes::from(vec![b'a'; MAX_BODY as usize + 1]);
        refused(&e, "over the cap of 1048576 bytes");
        // Counts and lengths far beyond the input: the same errors as the
        // format-level decoder, at once.
        let enc = stored(b"x").encode();
        let key_len_at = FIXED_LEN;
        let headers_at = FIXED_LEN + 4 + KEY.len();
        let start = std::time::Instant::now();
        for (at, word) in [
            (key_len_at, u32::MAX),
            (headers_at, u32::MAX),
            (headers_at, MAX_HEADERS as u32),
        ] {
            let mut v = enc.to_vec();
            v[at..at + 4].copy_from_slice(&word.to_le_bytes());
            let err = decode(&v).unwrap_err();
            assert!(err.is_truncated() || err.is_malformed(), "{err}");
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    /// Without the feature a compressed value is refused (and kept for
    /// the builds that can read it).
    #[cfg(not(feature = "compression"))]
    #[test]
    fn a_compressed_value_is_unreadable_here() {
        let mut enc = stored(b"x").encode().to_vec();
        enc[5] = FLAG_COMPRESSED;
        assert!(decode(&enc).unwrap_err().is_unreadable_here());
    }

    /// A compressed body is checked by the size it declares, before
    /// anything is allocated: a claim over the cap (255 MiB, under the
    /// format's own bound of 256 MiB) is refused, whatever follows.
    #[cfg(feature = "compression")]
    #[test]
    fn a_huge_decompressed_size_claim_is_refused() {
        let mut e = stored(b"");
        let body = b"{\"odds\": [1.5, 2.25, 3.75]} ".repeat(400);
        e.headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        e.body = Bytes::from(body);
        let packed = e.encode_with(Some(1024)).to_vec();
        assert_eq!(packed[5] & FLAG_COMPRESSED, FLAG_COMPRESSED);
        assert_same(&e, &decode(&packed).unwrap());
        let body_len = lz4_flex::compress_prepend_size(&e.body).len();
        let start = packed.len() - body_len;
        for claim in [255u32 << 20, MAX_BODY as u32 + 1, u32::MAX] {
            let mut bomb = packed.clone();
            bomb[start..start + 4].copy_from_slice(&claim.to_le_bytes());
            let err = decode(&bomb).unwrap_err();
            assert!(err.is_malformed(), "{err}");
            assert!(
                err.to_string()
                    .contains(&format!("a body of {claim} bytes")),
                "{err}"
            );
            assert!(!err.is_unreadable_here());
        }
        // Within the cap but more than the compressed bytes could expand
        // to: corrupt, refused before allocating for it.
        let mut bomb = packed.clone();
        bomb[start..start + 4].copy_from_slice(&(MAX_BODY as u32).to_le_bytes());
        let err = decode(&bomb[..start + 4 + 8]).map(|_| ()).unwrap_err();
        assert!(err.is_truncated() || err.is_malformed(), "{err}");
        // A plain 255 MiB claim refuses a 10-byte body in the public decoder too.
        let mut tiny = stored(b"").encode().to_vec();
        let n = tiny.len();
        tiny[5] = FLAG_COMPRESSED;
        tiny[n - 4..].copy_from_slice(&14u32.to_le_bytes());
        tiny.extend_from_slice(&(255u32 << 20).to_le_bytes());
        tiny.extend_from_slice(&[0x1f; 10]);
        assert!(Entry::decode(&tiny).unwrap_err().is_malformed());
    }
}
