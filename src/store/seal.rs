//! Encryption at rest for the L2 tier (feature `l2-encryption`): the key
//! set ([`L2Keys`]), the sealed format, and the keyed names of tag indexes.
//!
//! # The sealed format
//!
//! ```text
//! "TTS" 0x01 | id length (1 byte) | key id | nonce (24 bytes) | ciphertext | tag (16 bytes)
//! ```
//!
//! The cipher is XChaCha20-Poly1305 (RustCrypto `chacha20poly1305`): its
//! 192-bit nonces are drawn from the operating system's generator for every
//! value, so any number of instances can write under one key for as long
//! as it lives without a nonce ever repeating in practice (with 96-bit
//! nonces, random ones are safe for about 2^32 values per key only). The
//! associated data is the header (magic, version, key id) followed by the
//! value's *context*: the Redis key it is stored at (a variant: its key
//! without the marker's generation, which the writing script picks), or,
//! for an invalidation message, the log's key and the sender's id. A value
//! copied under another key therefore does not open.
//!
//! # Keys
//!
//! Each 32-byte key of the set is never used directly: two keys are
//! derived from it with HMAC-SHA256 under fixed labels, one for the AEAD
//! and one for the keyed hashes that name tag indexes.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use chacha20poly1305::aead::{AeadInOut, Generate, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

/// The first bytes of a sealed value: `TTS` and the format's version.
pub(crate) const SEAL_MAGIC: &[u8; 4] = b"TTS\x01";

/// The most keys a key set holds (each tag invalidation reads one index
/// per key).
pub const MAX_L2_KEYS: usize = 16;

/// The longest key id, in bytes.
pub const MAX_L2_KEY_ID_LEN: usize = 32;

/// The largest key file [`L2Keys::from_file`] reads.
pub const MAX_L2_KEY_FILE_BYTES: u64 = 64 * 1024;

const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// The label the AEAD key is derived under.
const AEAD_LABEL: &[u8] = b"tower-tiered-cache l2 aead v1";
/// The label the tag-name key is derived under.
const NAMES_LABEL: &[u8] = b"tower-tiered-cache l2 names v1";

/// One key of the set: its id and the two keys derived from it.
#[derive(Clone)]
struct Key {
    id: Box<str>,
    aead: XChaCha20Poly1305,
    names: Zeroizing<[u8; 32]>,
}

impl Key {
    fn new(id: &str, raw: &[u8; 32]) -> Self {
        let mut aead_key = derive(raw, AEAD_LABEL);
        let aead = XChaCha20Poly1305::new(&aead_key.into());
        aead_key.zeroize();
        Self {
            id: id.into(),
            aead,
            names: Zeroizing::new(derive(raw, NAMES_LABEL)),
        }
    }

    /// The keyed hash (128 bits, hex) naming `tag`'s index in `namespace`.
    fn tag_name(&self, namespace: &str, tag: &str) -> String {
        let mut mac = hmac(&self.names);
        mac.update(namespace.as_bytes());
        mac.update(&[0]);
        mac.update(tag.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(32);
        for b in &digest[..16] {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// HMAC-SHA256 keyed with `key`. HMAC pads a key shorter than the hash's
/// block (64 bytes) with zeros: the padded block is the same key, given
/// through the infallible constructor.
fn hmac(key: &[u8; 32]) -> Hmac<Sha256> {
    let mut block = Zeroizing::new([0u8; 64]);
    block[..32].copy_from_slice(key);
    <Hmac<Sha256> as KeyInit>::new(&(*block).into())
}

/// HMAC-SHA256(`raw`, `label`).
fn derive(raw: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let mut mac = hmac(raw);
    mac.update(label);
    mac.finalize().into_bytes().into()
}

/// The keys the L2 tier seals its values with
/// ([`CacheBuilder::l2_encryption_key`](crate::CacheBuilder::l2_encryption_key)):
/// the last one seals what this instance writes, every one opens what it
/// reads, so keys can be rotated without a cold cache.
///
/// # The key file
///
/// One key per line, `ID:HEX`:
///
/// - `ID`: 1 to 32 ASCII letters, digits, `-`, `_` or `.`, unique in the
///   file. It is stored in clear beside every value sealed with the key.
/// - `HEX`: 64 hex digits (either case), 32 random bytes, e.g. from
///   `openssl rand -hex 32` or `head -c 32 /dev/urandom | xxd -p -c 32`.
/// - The **last** key is the one new values are sealed with; the earlier
///   ones only open values written before.
/// - Blank lines and lines whose first non-blank character is `#` are
///   skipped; spaces around a line are ignored (none inside it); `\r\n`
///   line ends are accepted.
/// - At most [`MAX_L2_KEYS`] keys, and no key twice (under two ids),
///   nor one whose 32 bytes are all the same.
///
/// An error names the line (and, from [`from_file`](Self::from_file), the
/// file); it never repeats what the line holds. `Debug` shows the ids
/// only. The keys are zeroed when the set is dropped.
///
/// # Rotating
///
/// 1. Add the new key as the *first* line on every instance (it opens
///    values, the old key still seals them).
/// 2. Once every instance has it, move it to the last line: new values are
///    sealed with it; values sealed with the old key still open.
/// 3. After the longest TTL, remove the old key.
///
/// An instance without the key a value was sealed with treats that value
/// as corrupt: a miss, counted in `l2_decode_errors`, and deleted.
///
/// ```
/// use tower_tiered_cache::L2Keys;
///
/// let keys = L2Keys::parse(
///     "# rotated 2026-12\n\
///      old:8f1c0a2b9d7e6f5a4c3b2a19087f6e5d4c3b2a1908f7e6d5c4b3a29180f7e6d5\n\
///      new:1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809\n",
/// )?;
/// assert_eq!(keys.write_id(), "new");
/// assert_eq!(keys.ids().collect::<Vec<_>>(), ["old", "new"]);
/// assert!(!format!("{keys:?}").contains("8f1c"));
///
/// let err = L2Keys::parse("a:00\n").unwrap_err();
/// assert_eq!(err.line(), Some(1));
/// # Ok::<(), tower_tiered_cache::L2KeysError>(())
/// ```
#[derive(Clone)]
pub struct L2Keys {
    /// In file order: the last one seals.
    keys: Vec<Key>,
}

impl fmt::Debug for L2Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("L2Keys")
            .field("ids", &self.ids().collect::<Vec<_>>())
            .field("write", &self.write_id())
            .finish_non_exhaustive()
    }
}

impl L2Keys {
    /// Reads a key set from the text of a key file (see the type's docs).
    pub fn parse(text: &str) -> Result<Self, L2KeysError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut keys: Vec<Key> = Vec::new();
        // Each id and a fingerprint of its key, by line, to refuse repeats.
        let mut seen: Vec<(usize, Box<str>, [u8; 32])> = Vec::new();
        for (i, line) in text.split('\n').enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |problem| L2KeysError::at(n, problem);
            let (id, hex) = line.split_once(':').ok_or(err(Problem::NoColon))?;
            if id.is_empty()
                || id.len() > MAX_L2_KEY_ID_LEN
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return Err(err(Problem::BadId));
            }
            let raw = Zeroizing::new(decode_hex(hex).ok_or(err(Problem::BadHex))?);
            if raw.iter().all(|b| *b == raw[0]) {
                return Err(err(Problem::WeakKey));
            }
            let fingerprint = derive(&raw, b"fingerprint");
            for (m, other_id, other) in &seen {
                if **other_id == *id {
                    return Err(err(Problem::DuplicateId(*m)));
                }
                if *other == fingerprint {
                    return Err(err(Problem::DuplicateKey(*m)));
                }
            }
            if keys.len() == MAX_L2_KEYS {
                return Err(err(Problem::TooMany));
            }
            seen.push((n, id.into(), fingerprint));
            keys.push(Key::new(id, &raw));
        }
        if keys.is_empty() {
            return Err(L2KeysError {
                path: None,
                line: None,
                problem: Problem::Empty,
            });
        }
        Ok(Self { keys })
    }

    /// Reads a key set from a key file (at most
    /// [`MAX_L2_KEY_FILE_BYTES`]); errors name the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, L2KeysError> {
        let path = path.as_ref();
        let with_path = |mut e: L2KeysError| {
            e.path = Some(path.to_owned());
            e
        };
        let io = |e: std::io::Error| {
            with_path(L2KeysError {
                path: None,
                line: None,
                problem: Problem::Io(e),
            })
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut bytes = Zeroizing::new(Vec::new());
        file.take(MAX_L2_KEY_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_L2_KEY_FILE_BYTES {
            return Err(with_path(L2KeysError {
                path: None,
                line: None,
                problem: Problem::TooLarge,
            }));
        }
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count();
            with_path(L2KeysError::at(line + 1, Problem::NotUtf8))
        })?;
        Self::parse(text).map_err(with_path)
    }

    /// The ids, in file order (the last one seals new values).
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|k| &*k.id)
    }

    /// The id of the key new values are sealed with (the last one).
    pub fn write_id(&self) -> &str {
        &self.writer().id
    }

    /// How many keys the set holds (at least 1).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a key set holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn writer(&self) -> &Key {
        // `parse` refuses an empty set.
        &self.keys[self.keys.len() - 1]
    }

    /// `plain` sealed with the write key for `context`; `None` only if the
    /// operating system's random generator fails.
    pub(crate) fn seal(&self, context: &[u8], plain: &[u8]) -> Option<Bytes> {
        let key = self.writer();
        let nonce = XNonce::try_generate().ok()?;
        let header_len = SEAL_MAGIC.len() + 1 + key.id.len();
        let mut out = Vec::with_capacity(header_len + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(SEAL_MAGIC);
        // Ids are at most 32 bytes.
        out.push(key.id.len() as u8);
        out.extend_from_slice(key.id.as_bytes());
        let aad = associated(&out, context);
        out.extend_from_slice(&nonce);
        let body = out.len();
        out.extend_from_slice(plain);
        let tag = key
            .aead
            .encrypt_inout_detached(&nonce, &aad, (&mut out[body..]).into())
            .ok()?;
        out.extend_from_slice(&tag);
        Some(Bytes::from(out))
    }

    /// The plain bytes of `sealed`, read for `context`: decrypted in place
    /// when the buffer is not shared.
    pub(crate) fn open(&self, context: &[u8], sealed: Bytes) -> Result<Bytes, SealError> {
        let rest = sealed
            .strip_prefix(SEAL_MAGIC.as_slice())
            .ok_or(SealError::NotSealed)?;
        let (&id_len, rest) = rest.split_first().ok_or(SealError::Malformed)?;
        let id_len = usize::from(id_len);
        let (id, rest) = rest.split_at_checked(id_len).ok_or(SealError::Malformed)?;
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Malformed);
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.id.as_bytes() == id)
            .ok_or(SealError::UnknownKey)?;
        let header_len = SEAL_MAGIC.len() + 1 + id_len;
        let aad = associated(&sealed[..header_len], context);
        let body = header_len + NONCE_LEN;
        let end = sealed.len() - TAG_LEN;
        let nonce =
            XNonce::try_from(&sealed[header_len..body]).map_err(|_| SealError::Malformed)?;
        let tag = Tag::try_from(&sealed[end..]).map_err(|_| SealError::Malformed)?;
        let mut buf: BytesMut = sealed
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        key.aead
            .decrypt_inout_detached(&nonce, &aad, (&mut buf[body..end]).into(), &tag)
            .map_err(|_| SealError::Rejected)?;
        Ok(buf.freeze().slice(body..end))
    }

    /// The keyed name of `tag`'s index under the write key.
    pub(crate) fn tag_name(&self, namespace: &str, tag: &str) -> String {
        self.writer().tag_name(namespace, tag)
    }

    /// The keyed names of `tag`'s index under every key (entries written
    /// under an older key are indexed under its name).
    pub(crate) fn tag_names(&self, namespace: &str, tag: &str) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| k.tag_name(namespace, tag))
            .collect()
    }
}

/// The associated data: the sealed value's header, then its context.
fn associated(header: &[u8], context: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + context.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(context);
    aad
}

/// 64 hex digits as 32 bytes.
fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Why a value read from L2 did not open: each is a corrupt entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SealError {
    /// Not in the sealed format (a clear value while encryption is on).
    NotSealed,
    /// The sealed format's header or length is wrong.
    Malformed,
    /// Sealed with a key id this key set does not hold.
    UnknownKey,
    /// Tampered with, sealed for another Redis key, or with another key
    /// under the same id.
    Rejected,
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SealError::NotSealed => "not sealed, while L2 encryption is on",
            SealError::Malformed => "malformed sealed value",
            SealError::UnknownKey => "sealed with a key id this instance does not hold",
            SealError::Rejected => {
                "sealed value does not open: tampered with, moved from another key, or a wrong key"
            }
        })
    }
}

/// A key file or key text [`L2Keys`] refuses.
///
/// The message names the file (from [`L2Keys::from_file`]) and the line;
/// it never contains what the line holds.
#[derive(Debug)]
pub struct L2KeysError {
    path: Option<PathBuf>,
    line: Option<usize>,
    problem: Problem,
}

#[derive(Debug)]
enum Problem {
    Io(std::io::Error),
    TooLarge,
    NotUtf8,
    Empty,
    NoColon,
    BadId,
    BadHex,
    WeakKey,
    DuplicateId(usize),
    DuplicateKey(usize),
    TooMany,
}

impl L2KeysError {
    fn at(line: usize, problem: Problem) -> Self {
        Self {
            path: None,
            line: Some(line),
            problem,
        }
    }

    /// The line at fault (1-based), if the error is about one.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The key file, for an error from [`L2Keys::from_file`].
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// True when the file could not be read (missing, unreadable).
    pub fn is_io(&self) -> bool {
        matches!(self.problem, Problem::Io(..))
    }

    /// True when the text is not a valid key set (everything but
    /// [`is_io`](Self::is_io)).
    pub fn is_invalid(&self) -> bool {
        !self.is_io()
    }
}

impl fmt::Display for L2KeysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.path {
            write!(f, "{}: ", path.display())?;
        }
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        match &self.problem {
            Problem::Io(e) => write!(f, "cannot read the key file: {e}"),
            Problem::TooLarge => write!(
                f,
                "the key file is larger than {MAX_L2_KEY_FILE_BYTES} bytes"
            ),
            Problem::NotUtf8 => f.write_str("not UTF-8 text"),
            Problem::Empty => f.write_str("no key: expected lines of ID:HEX"),
            Problem::NoColon => f.write_str("expected ID:HEX"),
            Problem::BadId => write!(
                f,
                "the id must be 1 to {MAX_L2_KEY_ID_LEN} letters, digits, '-', '_' or '.'"
            ),
            Problem::BadHex => {
                f.write_str("the key must be 64 hex digits (32 random bytes), nothing else")
            }
            Problem::WeakKey => f.write_str("the key's bytes are all the same: not a random key"),
            Problem::DuplicateId(m) => write!(f, "the id is already used on line {m}"),
            Problem::DuplicateKey(m) => write!(
                f,
                "the same key as line {m} (a new key must be new random bytes)"
            ),
            Problem::TooMany => write!(f, "more than {MAX_L2_KEYS} keys"),
        }
    }
}

impl std::error::Error for L2KeysError {
    /// The I/O error, for [`is_io`](L2KeysError::is_io).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.problem {
            Problem::Io(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "8f1c0a2b9d7e6f5a4c3b2a19087f6e5d4c3b2a1908f7e6d5c4b3a29180f7e6d5";
    const K2: &str = "1A2B3C4D5E6F708192A3B4C5D6E7F8091A2B3C4D5E6F708192A3B4C5D6E7F809";

    fn keys(text: &str) -> L2Keys {
        L2Keys::parse(text).unwrap()
    }

    /// The error for `text`: its line, and its message, which must not
    /// repeat any of the text's non-blank lines.
    fn refused(text: &str) -> (Option<usize>, String) {
        let e = L2Keys::parse(text).unwrap_err();
        let msg = e.to_string();
        for line in text.lines().map(str::trim).filter(|l| l.len() > 3) {
            assert!(!msg.contains(line), "{msg:?} echoes {line:?}");
        }
        for half in [&K1[..32], &K1[32..], &K2[..32], &K2[32..]] {
            assert!(!msg.contains(half), "{msg:?} echoes key material");
        }
        (e.line(), msg)
    }

    #[test]
    fn a_key_file_parses_comments_blanks_and_crlf_and_the_last_key_writes() {
        let k = keys(&format!(
            "\u{feff}# keys\r\n\r\n  old:{K1}  \r\n   # next\nnew-2026.01_b:{K2}\n\n"
        ));
        assert_eq!(k.ids().collect::<Vec<_>>(), ["old", "new-2026.01_b"]);
        assert_eq!(k.write_id(), "new-2026.01_b");
        assert_eq!((k.len(), k.is_empty()), (2, false));
        let debug = format!("{k:?}");
        assert!(debug.contains("new-2026.01_b"), "{debug}");
        for half in [&K1[..16], &K2[..16], &K2[..16].to_ascii_lowercase()] {
            assert!(!debug.contains(half), "{debug}");
        }
    }

    #[test]
    fn bad_key_files_are_refused_by_line_without_echoing_keys() {
        let max = "k".repeat(MAX_L2_KEY_ID_LEN + 1);
        let cases: Vec<(String, Option<usize>, &str)> = vec![
            (String::new(), None, "no key"),
            ("# only a comment\n\n".into(), None, "no key"),
            (K1.into(), Some(1), "expected ID:HEX"),
            (format!("\n:{K1}"), Some(2), "the id"),
            (format!("{max}:{K1}"), Some(1), "the id"),
            (format!("a b:{K1}"), Some(1), "the id"),
            (format!("é:{K1}"), Some(1), "the id"),
            (format!("a:{}", &K1[..62]), Some(1), "64 hex digits"),
            (format!("a:{K1}00"), Some(1), "64 hex digits"),
            (format!("a:{}zz", &K1[..62]), Some(1), "64 hex digits"),
            (format!("a: {K1}"), Some(1), "64 hex digits"),
            (format!("a:{K1}:{K2}"), Some(1), "64 hex digits"),
            (format!("a:{}", "00".repeat(32)), Some(1), "all the same"),
            (format!("a:{}", "ff".repeat(32)), Some(1), "all the same"),
            (format!("a:{K1}\n#\nb:{K2}\na:{K2}"), Some(4), "line 1"),
            (
                format!("a:{K1}\nb:{}", K1.to_uppercase()),
                Some(2),
                "same key as line 1",
            ),
        ];
        for (text, line, expect) in cases {
            let (got, msg) = refused(&text);
            assert_eq!(got, line, "{text:?}: {msg}");
            assert!(msg.contains(expect), "{text:?}: {msg}");
            if let Some(n) = line {
                assert!(msg.starts_with(&format!("line {n}: ")), "{msg}");
            }
        }
        // At most MAX_L2_KEYS keys.
        let many: String = (0..=MAX_L2_KEYS)
            .map(|i| format!("k{i}:{:02x}{}\n", i, &K1[2..]))
            .collect();
        let (line, msg) = refused(&many);
        assert_eq!(line, Some(MAX_L2_KEYS + 1), "{msg}");
    }

    #[test]
    fn key_files_name_the_file_and_the_line() {
        let dir = std::env::temp_dir().join(format!("ttc-seal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, format!("a:{K1}\nb:{K2}\n")).unwrap();
        assert_eq!(L2Keys::from_file(&good).unwrap().write_id(), "b");

        let bad = dir.join("bad");
        std::fs::write(&bad, format!("a:{K1}\n\nb:{}\n", &K2[1..])).unwrap();
        let e = L2Keys::from_file(&bad).unwrap_err();
        assert_eq!(
            (e.line(), e.path(), e.is_invalid()),
            (Some(3), Some(&*bad), true)
        );
        assert!(
            e.to_string()
                .starts_with(&format!("{}: line 3: ", bad.display())),
            "{e}"
        );

        let missing = dir.join("missing");
        let e = L2Keys::from_file(&missing).unwrap_err();
        assert!(e.is_io() && e.line().is_none(), "{e}");
        assert!(std::error::Error::source(&e).is_some());
        assert!(e.to_string().contains("missing"), "{e}");

        let binary = dir.join("binary");
        std::fs::write(&binary, b"# x\n\xff\xfe:00\n").unwrap();
        let e = L2Keys::from_file(&binary).unwrap_err();
        assert_eq!(e.line(), Some(2), "{e}");

        let huge = dir.join("huge");
        let line = format!("# {}\n", "x".repeat(1000));
        std::fs::write(&huge, line.repeat(70)).unwrap();
        let e = L2Keys::from_file(&huge).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sealed_values_open_only_for_their_context_and_key() {
        let k = keys(&format!("a:{K1}"));
        let plain = b"GET https://shop.example/secret body".repeat(40);
        let sealed = k.seal(b"ns:1:{00}", &plain).unwrap();
        assert!(sealed.starts_with(b"TTS\x01\x01a"));
        assert_eq!(sealed.len(), plain.len() + 4 + 2 + 24 + 16);
        assert!(!sealed.windows(12).any(|w| w == b"shop.example"));
        assert_eq!(k.open(b"ns:1:{00}", sealed.clone()).unwrap(), &plain[..]);
        // Two seals of one value differ (random nonces).
        assert_ne!(k.seal(b"ns:1:{00}", &plain).unwrap(), sealed);
        // Another key name.
        assert_eq!(
            k.open(b"ns:1:{01}", sealed.clone()),
            Err(SealError::Rejected)
        );
        // Every byte flipped in turn.
        for i in 0..sealed.len() {
            let mut bad = sealed.to_vec();
            bad[i] ^= 0x01;
            assert!(k.open(b"ns:1:{00}", Bytes::from(bad)).is_err(), "byte {i}");
        }
        // Truncated anywhere.
        for n in 0..sealed.len() {
            assert!(
                k.open(b"ns:1:{00}", sealed.slice(..n)).is_err(),
                "{n} bytes"
            );
        }
        assert_eq!(
            k.open(b"ns:1:{00}", Bytes::from_static(b"TTC\0\x01...")),
            Err(SealError::NotSealed)
        );
        // Another key under the same id; an unknown id.
        let other = keys(&format!("a:{K2}"));
        assert_eq!(
            other.open(b"ns:1:{00}", sealed.clone()),
            Err(SealError::Rejected)
        );
        let unknown = keys(&format!("b:{K1}"));
        assert_eq!(
            unknown.open(b"ns:1:{00}", sealed.clone()),
            Err(SealError::UnknownKey)
        );
        // A rotated set opens both and seals with the last.
        let rotated = keys(&format!("a:{K1}\nb:{K2}"));
        assert_eq!(rotated.open(b"ns:1:{00}", sealed).unwrap(), &plain[..]);
        let newer = rotated.seal(b"c", b"x").unwrap();
        assert!(newer.starts_with(b"TTS\x01\x01b"));
        assert_eq!(k.open(b"c", newer), Err(SealError::UnknownKey));
    }

    #[test]
    fn tag_names_are_keyed_per_key_and_namespace() {
        let rotated = keys(&format!("a:{K1}\nb:{K2}"));
        let (a, b) = (keys(&format!("a:{K1}")), keys(&format!("b:{K2}")));
        let name = rotated.tag_name("ns", "product-42");
        assert_eq!(name.len(), 32);
        assert!(name.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(name, b.tag_name("ns", "product-42"));
        assert_eq!(
            rotated.tag_names("ns", "product-42"),
            [a.tag_name("ns", "product-42"), name.clone()]
        );
        assert_ne!(name, b.tag_name("other", "product-42"));
        assert_ne!(name, b.tag_name("ns", "product-43"));
        // The id does not key the hash: the bytes do.
        assert_eq!(keys(&format!("z:{K2}")).tag_name("ns", "product-42"), name);
    }

    proptest::proptest! {
        #[test]
        fn hostile_key_text_never_panics(text in ".{0,300}") {
            let _ = L2Keys::parse(&text);
        }

        #[test]
        fn hostile_sealed_values_never_open(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let k = keys(&format!("a:{K1}"));
            let mut framed = b"TTS\x01\x01a".to_vec();
            framed.extend_from_slice(&raw);
            proptest::prop_assert!(k.open(b"ctx", Bytes::from(raw)).is_err());
            proptest::prop_assert!(k.open(b"ctx", Bytes::from(framed)).is_err());
        }
    }
}
