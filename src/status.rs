//! The vocabulary of `Cache-Status` (RFC 9211) this cache writes: the
//! field's name, this cache's name in it, and the fixed values of the
//! common answers. The engine and the adapters render values from here;
//! nothing below the engine needs the engine to name an answer.

use std::fmt;

use http::header::{HeaderName, HeaderValue};

/// The name this cache uses in `Cache-Status` (RFC 9211).
pub const CACHE_STATUS_NAME: &str = "tower-tiered-cache";

/// The `Cache-Status` header name.
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

pub(crate) const STATUS_HIT_L1: HeaderValue =
    HeaderValue::from_static("tower-tiered-cache; hit; detail=l1");
pub(crate) const STATUS_HIT_L2: HeaderValue =
    HeaderValue::from_static("tower-tiered-cache; hit; detail=l2");
pub(crate) const STATUS_BYPASS: HeaderValue =
    HeaderValue::from_static("tower-tiered-cache; fwd=bypass");
pub(crate) const STATUS_METHOD: HeaderValue =
    HeaderValue::from_static("tower-tiered-cache; fwd=method");
pub(crate) const STATUS_RANGE: HeaderValue =
    HeaderValue::from_static("tower-tiered-cache; fwd=uri-miss; detail=range");
pub(crate) const STATUS_HIT_FOR_PASS: HeaderValue =
    HeaderValue::from_static("tower-tiered-cache; fwd=uri-miss; detail=hit-for-pass");
pub(crate) const STATUS_ONLY_IF_CACHED: HeaderValue =
    HeaderValue::from_static("tower-tiered-cache; detail=only-if-cached");

/// Builds a `Cache-Status` value from its parameters.
pub(crate) fn cache_status(params: fmt::Arguments<'_>) -> HeaderValue {
    let s = format!("{CACHE_STATUS_NAME}; {params}");
    HeaderValue::from_str(&s).unwrap_or(STATUS_BYPASS)
}
