//! How typed values are written to L2: the [`Codec`] trait, [`Json`] (the
//! default: other services can read it) and, with the `postcard` feature,
//! [`Postcard`] (compact binary).

use std::fmt;

/// Turns values of type `T` into bytes for L2 and back.
///
/// A stored value carries its codec's [`id`](Codec::id) and its type's tag
/// (see [`ValueCache::with_type_tag`](super::ValueCache::with_type_tag)): a
/// value written by another codec or for another type is a miss (counted
/// in `l2_decode_errors` and deleted), never decoded as something else. So
/// is a value the codec refuses. Ids below 128 are this crate's; pick
/// your own codec's in `128..=255`.
///
/// ```
/// use tower_tiered_cache::values::{Codec, CodecError};
///
/// /// Strings as their UTF-8 bytes.
/// struct Utf8;
///
/// impl Codec<String> for Utf8 {
///     fn id(&self) -> u8 {
///         200
///     }
///     fn encode(&self, value: &String) -> Result<Vec<u8>, CodecError> {
///         Ok(value.as_bytes().to_vec())
///     }
///     fn decode(&self, bytes: &[u8]) -> Result<String, CodecError> {
///         String::from_utf8(bytes.to_vec()).map_err(CodecError::new)
///     }
/// }
///
/// let bytes = Utf8.encode(&"odds".to_owned()).unwrap();
/// assert_eq!(Utf8.decode(&bytes).unwrap(), "odds");
/// assert!(Utf8.decode(&[0xff]).is_err());
/// ```
pub trait Codec<T>: Send + Sync + 'static {
    /// This codec's id, stored with every value it writes.
    fn id(&self) -> u8;

    /// The value's bytes.
    fn encode(&self, value: &T) -> Result<Vec<u8>, CodecError>;

    /// The value `bytes` hold. Must not panic on any input, nor recurse
    /// without bound (a recursive type read from crafted bytes would
    /// overflow the stack, which aborts the process): values read from
    /// Redis are untrusted.
    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError>;
}

/// A value a [`Codec`] could not encode or decode.
#[derive(Debug)]
pub struct CodecError(Box<dyn std::error::Error + Send + Sync>);

impl CodecError {
    /// An error with `source` as its cause.
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(source.into())
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "value codec: {}", self.0)
    }
}

impl std::error::Error for CodecError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// JSON through `serde_json` (id 1): the default, readable by any service
/// sharing the Redis.
///
/// ```
/// use tower_tiered_cache::values::{Codec, Json};
///
/// let bytes = Json.encode(&vec![1, 2]).unwrap();
/// assert_eq!(bytes, b"[1,2]");
/// let back: Vec<i32> = Json.decode(&bytes).unwrap();
/// assert_eq!(back, [1, 2]);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<T> Codec<T> for Json
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    fn id(&self) -> u8 {
        1
    }

    fn encode(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        serde_json::to_vec(value).map_err(CodecError::new)
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes).map_err(CodecError::new)
    }
}

/// The compact binary `postcard` format (id 2; feature `postcard`): smaller
/// and faster than JSON, readable only by Rust services with the same type.
///
/// Postcard sets no recursion limit: a recursive type (a tree, a linked
/// list, an enum that boxes itself) read from crafted bytes nests one level
/// per byte or so, and a value under `max_body_bytes` can overflow the
/// stack, which aborts the process. Use it for types of bounded depth;
/// store recursive ones with [`Json`] (serde_json refuses input nested
/// deeper than 128 levels) or a codec of your own that limits depth.
///
/// ```
/// use tower_tiered_cache::values::{Codec, Json, Postcard};
///
/// let value = (42u32, "odds".to_owned());
/// let small = Postcard.encode(&value).unwrap();
/// assert!(small.len() < Json.encode(&value).unwrap().len());
/// let back: (u32, String) = Postcard.decode(&small).unwrap();
/// assert_eq!(back, value);
/// ```
#[cfg(feature = "postcard")]
#[cfg_attr(docsrs, doc(cfg(feature = "postcard")))]
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

#[cfg(feature = "postcard")]
impl<T> Codec<T> for Postcard
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    fn id(&self) -> u8 {
        2
    }

    fn encode(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        postcard::to_allocvec(value).map_err(CodecError::new)
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        postcard::from_bytes(bytes).map_err(CodecError::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_refuses_garbage_and_other_types() {
        let bytes = Codec::<Vec<u8>>::encode(&Json, &vec![1, 2]).unwrap();
        assert!(Codec::<String>::decode(&Json, &bytes).is_err());
        assert!(Codec::<Vec<u8>>::decode(&Json, b"[1,").is_err());
        let err = Codec::<u8>::decode(&Json, b"\xff").unwrap_err();
        assert!(err.to_string().starts_with("value codec: "));
        assert!(std::error::Error::source(&err).is_some());
    }

    /// A recursive type read from input nested far deeper than the stack
    /// could follow: refused (serde_json's recursion limit), not a stack
    /// overflow. (Postcard has no such limit: see its docs.)
    #[test]
    fn json_refuses_input_nested_past_its_recursion_limit() {
        #[derive(Debug, serde::Serialize, serde::Deserialize)]
        struct Tree(Vec<Tree>);
        let deep = "[".repeat(1_000_000);
        assert!(Codec::<Tree>::decode(&Json, deep.as_bytes()).is_err());
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(Codec::<Tree>::decode(&Json, ok.as_bytes()).is_ok());
    }

    #[cfg(feature = "postcard")]
    #[test]
    fn postcard_refuses_truncated_and_random_input() {
        let value = (7u64, vec!["a".to_owned(); 3]);
        let bytes = Codec::<(u64, Vec<String>)>::encode(&Postcard, &value).unwrap();
        for n in 0..bytes.len() {
            assert!(Codec::<(u64, Vec<String>)>::decode(&Postcard, &bytes[..n]).is_err());
        }
        // A huge declared length allocates nothing of that size.
        let huge = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(Codec::<Vec<String>>::decode(&Postcard, &huge).is_err());
    }
}
