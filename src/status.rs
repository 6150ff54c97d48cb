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

/// RFC 9211 `fwd`: why the request went forward to the origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fwd {
    /// Nothing stored for the URL.
    UriMiss,
    /// Other variants (`Vary`) stored, not this request's.
    VaryMiss,
    /// The request's own directives asked for the origin.
    Request,
    /// A stored entry could not be used as it was (revalidation, refresh).
    Stale,
    /// Not cacheable by configuration (a bypass route, no key).
    Bypass,
    /// Not a method this cache looks up.
    Method,
}

impl Fwd {
    /// The token written in `Cache-Status`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Request => "request",
            Fwd::Stale => "stale",
            Fwd::Bypass => "bypass",
            Fwd::Method => "method",
        }
    }
}

/// `detail`: the tier that answered, or what the cache did and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Detail {
    /// Answered from (or revalidated in) L1.
    L1,
    /// Answered from (or revalidated in) L2.
    L2,
    /// A `Range` request of something not stored: passed.
    Range,
    /// The key is marked uncacheable for a while: passed.
    HitForPass,
    /// `only-if-cached` with nothing usable: a 504 from the cache.
    OnlyIfCached,
    /// A stale entry served because the origin failed.
    StaleIfError,
    /// The origin did not answer within the upstream timeout.
    UpstreamTimeout,
    /// A coalesced request waited past the coalesce timeout.
    CoalesceTimeout,
    /// Every flight a coalesced request waited on failed, and it may not
    /// call the origin alone.
    CoalesceFailed,
    /// The origin's body ended before its declared length.
    Incomplete,
    /// Not stored, with the reason's token (from `NotStored`, or an
    /// adapter's reason).
    NotStored(&'static str),
}

impl Detail {
    /// The token written in `Cache-Status`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Detail::L1 => "l1",
            Detail::L2 => "l2",
            Detail::Range => "range",
            Detail::HitForPass => "hit-for-pass",
            Detail::OnlyIfCached => "only-if-cached",
            Detail::StaleIfError => "stale-if-error",
            Detail::UpstreamTimeout => "upstream-timeout",
            Detail::CoalesceTimeout => "coalesce-timeout",
            Detail::CoalesceFailed => "coalesce-failed",
            Detail::Incomplete => "incomplete",
            Detail::NotStored(why) => why,
        }
    }
}

/// What the cache did with one request, as RFC 9211 describes it: the
/// engine makes one per request, `Cache-Status` is rendered from it
/// ([`Status::header`]) and every count, label, log line, span field and
/// metric is taken from it (`observe::Outcome::from`). Nothing reads
/// `Cache-Status` back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Status {
    /// Answered from a stored entry without going forward.
    pub(crate) hit: bool,
    /// Went forward, and why.
    pub(crate) fwd: Option<Fwd>,
    /// The origin's status, when it answered.
    pub(crate) fwd_status: Option<u16>,
    /// Answered from another request's upstream call.
    pub(crate) collapsed: bool,
    /// Served stale, this many seconds past freshness (`ttl=-N`).
    pub(crate) stale_by: Option<u64>,
    /// The response was stored.
    pub(crate) stored: bool,
    /// The tier, or what happened and why.
    pub(crate) detail: Option<Detail>,
}

impl Status {
    /// A fresh hit from L1.
    pub(crate) const HIT_L1: Status = Status {
        hit: true,
        fwd: None,
        fwd_status: None,
        collapsed: false,
        stale_by: None,
        stored: false,
        detail: Some(Detail::L1),
    };
    /// A fresh hit from L2.
    pub(crate) const HIT_L2: Status = Status {
        detail: Some(Detail::L2),
        ..Status::HIT_L1
    };
    /// Passed: a bypass route, or no key.
    pub(crate) const BYPASS: Status = Status {
        hit: false,
        fwd: Some(Fwd::Bypass),
        detail: None,
        ..Status::HIT_L1
    };
    /// Passed: not a method this cache looks up.
    pub(crate) const METHOD: Status = Status {
        fwd: Some(Fwd::Method),
        ..Status::BYPASS
    };
    /// Passed: a `Range` request of something not stored.
    pub(crate) const RANGE: Status = Status {
        fwd: Some(Fwd::UriMiss),
        detail: Some(Detail::Range),
        ..Status::BYPASS
    };
    /// Passed: the key is marked uncacheable for a while.
    pub(crate) const HIT_FOR_PASS: Status = Status {
        fwd: Some(Fwd::UriMiss),
        detail: Some(Detail::HitForPass),
        ..Status::BYPASS
    };
    /// `only-if-cached` with nothing usable.
    pub(crate) const ONLY_IF_CACHED: Status = Status {
        fwd: None,
        detail: Some(Detail::OnlyIfCached),
        ..Status::BYPASS
    };

    /// Went forward for `fwd`; the rest unset.
    pub(crate) const fn forward(fwd: Fwd) -> Status {
        Status {
            fwd: Some(fwd),
            ..Status::BYPASS
        }
    }

    /// With the origin's status.
    pub(crate) const fn with_fwd_status(self, code: u16) -> Status {
        Status {
            fwd_status: Some(code),
            ..self
        }
    }

    /// With a `detail`.
    pub(crate) const fn with_detail(self, detail: Detail) -> Status {
        Status {
            detail: Some(detail),
            ..self
        }
    }

    /// A hit from `detail`'s tier, stale by `stale_by` seconds if `Some`.
    pub(crate) const fn hit(detail: Detail, stale_by: Option<u64>) -> Status {
        Status {
            stale_by,
            detail: Some(detail),
            ..Status::HIT_L1
        }
    }

    /// The `Cache-Status` value: the fixed values without formatting.
    pub(crate) fn header(&self) -> HeaderValue {
        for (status, value) in &FIXED {
            if self == status {
                return value.clone();
            }
        }
        // Rendered without `core::fmt`'s argument machinery: this runs for
        // every miss and pass (issue 18's profile of a pass-through).
        let mut s = String::with_capacity(96);
        let _ = self.render(&mut s);
        HeaderValue::from_str(&s).unwrap_or(STATUS_BYPASS)
    }
}

/// Where a caller that wants a request's [`Status`] finds it: put a clone
/// in the request's extensions, read it once the response is ready. The
/// adapter sets it on every path (fresh hits, passes and engine paths
/// alike), so a caller never reads `Cache-Status` back.
#[derive(Clone, Debug, Default)]
pub(crate) struct StatusSink(std::sync::Arc<std::sync::OnceLock<Status>>);

impl StatusSink {
    /// Records the request's status (the first one only).
    pub(crate) fn set(&self, status: Status) {
        let _ = self.0.set(status);
    }

    /// The request's status, once reported.
    pub(crate) fn get(&self) -> Option<Status> {
        self.0.get().copied()
    }
}

/// The statuses whose `Cache-Status` is a constant (the common answers),
/// in the order [`Status::header`] tries them: the fresh L1 hit first.
// A `static`, not a `const`: a `const` array is built anew on the stack
// at every use (seven statuses and header values copied per response).
static FIXED: [(Status, HeaderValue); 7] = [
    (Status::HIT_L1, STATUS_HIT_L1),
    (Status::HIT_L2, STATUS_HIT_L2),
    (Status::BYPASS, STATUS_BYPASS),
    (Status::METHOD, STATUS_METHOD),
    (Status::RANGE, STATUS_RANGE),
    (Status::HIT_FOR_PASS, STATUS_HIT_FOR_PASS),
    (Status::ONLY_IF_CACHED, STATUS_ONLY_IF_CACHED),
];

impl Status {
    /// Writes the `Cache-Status` value to `out`, with `write_str` only
    /// (numbers through [`write_decimal`]).
    fn render(&self, out: &mut impl fmt::Write) -> fmt::Result {
        out.write_str(CACHE_STATUS_NAME)?;
        if self.hit {
            out.write_str("; hit")?;
        }
        if let Some(fwd) = self.fwd {
            out.write_str("; fwd=")?;
            out.write_str(fwd.as_str())?;
        }
        if let Some(code) = self.fwd_status {
            out.write_str("; fwd-status=")?;
            write_decimal(out, u64::from(code))?;
        }
        if self.collapsed {
            out.write_str("; collapsed")?;
        }
        if let Some(secs) = self.stale_by {
            out.write_str("; ttl=-")?;
            write_decimal(out, secs)?;
        }
        if self.stored {
            out.write_str("; stored")?;
        }
        if let Some(detail) = self.detail {
            out.write_str("; detail=")?;
            out.write_str(detail.as_str())?;
        }
        Ok(())
    }
}

/// Writes `n` in decimal.
fn write_decimal(out: &mut impl fmt::Write, mut n: u64) -> fmt::Result {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        // A digit: `n % 10` fits in a u8.
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits only.
    out.write_str(std::str::from_utf8(&digits[i..]).map_err(|_| fmt::Error)?)
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.render(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_render_in_decimal() {
        for n in [0u64, 7, 10, 200, 304, 65_535, u64::MAX] {
            let mut s = String::new();
            write_decimal(&mut s, n).unwrap();
            assert_eq!(s, n.to_string());
        }
        let status = Status {
            fwd: Some(Fwd::Stale),
            fwd_status: Some(503),
            stale_by: Some(1234),
            detail: Some(Detail::StaleIfError),
            ..Status::default()
        };
        assert_eq!(
            status.header(),
            "tower-tiered-cache; fwd=stale; fwd-status=503; ttl=-1234; detail=stale-if-error"
        );
    }

    #[test]
    fn fixed_values_are_what_rendering_gives() {
        for (status, value) in &FIXED {
            assert_eq!(status.to_string(), value.to_str().unwrap());
        }
    }

    #[test]
    fn parameters_render_in_one_order() {
        let s = Status {
            collapsed: true,
            ..Status::forward(Fwd::VaryMiss).with_detail(Detail::L2)
        };
        assert_eq!(
            s.header(),
            "tower-tiered-cache; fwd=vary-miss; collapsed; detail=l2"
        );
        let s = Status::forward(Fwd::Stale)
            .with_fwd_status(503)
            .with_detail(Detail::StaleIfError);
        let s = Status {
            stale_by: Some(0),
            ..s
        };
        assert_eq!(
            s.header(),
            "tower-tiered-cache; fwd=stale; fwd-status=503; ttl=-0; detail=stale-if-error"
        );
        let s = Status {
            stored: true,
            ..Status::forward(Fwd::UriMiss).with_fwd_status(200)
        };
        assert_eq!(
            s.header(),
            "tower-tiered-cache; fwd=uri-miss; fwd-status=200; stored"
        );
    }
}
