//! The crate's own error type: configuration problems found at build time.

use std::fmt;

/// A configuration the [`CacheBuilder`](crate::CacheBuilder) (or
/// `admin::AdminService::new`, feature `admin`, or `Cache::values`, feature
/// `values`) refuses.
///
/// Each error names the setting at fault ([`setting`](Self::setting)) and
/// has one kind:
///
/// - [`is_invalid_setting`](Self::is_invalid_setting): a value out of
///   range, or two settings that cannot go together;
/// - [`is_redis`](Self::is_redis) (feature `redis`): the Redis client
///   refused the L2 tier's URL(s), or its target is incomplete (a cluster
///   with no node, Sentinel with no sentinel or no master name).
///   [`source`](std::error::Error::source) is then the `redis::RedisError`
///   when the redis crate gave one.
///
/// The message names the setting and the reason; it never contains a
/// URL (URLs may carry passwords).
///
/// ```
/// use tower_tiered_cache::Cache;
///
/// let err = Cache::builder().l1_capacity_bytes(0).build().unwrap_err();
/// assert!(err.is_invalid_setting());
/// assert!(!err.is_redis());
/// assert_eq!(err.setting(), "l1_capacity_bytes");
/// assert!(err.to_string().contains("l1_capacity_bytes"));
/// ```
#[derive(Debug, Clone)]
pub struct BuildError {
    setting: &'static str,
    kind: Kind,
}

/// What went wrong; each kind has its `is_*` method.
#[derive(Debug, Clone)]
enum Kind {
    /// A value out of range or inconsistent with another setting.
    InvalidSetting(String),
    /// The Redis client refused the L2 target.
    #[cfg(feature = "redis")]
    Redis(crate::store::redis::TargetError),
}

impl BuildError {
    pub(crate) fn invalid(setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            setting,
            kind: Kind::InvalidSetting(reason.into()),
        }
    }

    #[cfg(feature = "redis")]
    pub(crate) fn redis(setting: &'static str, error: crate::store::redis::TargetError) -> Self {
        Self {
            setting,
            kind: Kind::Redis(error),
        }
    }

    /// True when a setting's value is out of range or inconsistent with
    /// another setting.
    pub fn is_invalid_setting(&self) -> bool {
        matches!(self.kind, Kind::InvalidSetting(_))
    }

    /// True when the Redis client refused the L2 tier's URL(s) (given to
    /// `redis`, `redis_cluster`, `redis_sentinel` or
    /// `redis_sentinel_master_url`, feature `redis`): not a URL, not a Redis
    /// scheme, `rediss://` without the `redis-tls` feature, a database in a
    /// sentinel's URL; or when the target is incomplete: a cluster with no
    /// node, Sentinel with no sentinel or with an empty (or spaced) master
    /// name. Always false without the `redis` feature.
    pub fn is_redis(&self) -> bool {
        match self.kind {
            #[cfg(feature = "redis")]
            Kind::Redis(_) => true,
            Kind::InvalidSetting(_) => false,
        }
    }

    /// The name of the builder setting at fault.
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::InvalidSetting(reason) => {
                write!(f, "invalid cache setting `{}`: {reason}", self.setting)
            }
            #[cfg(feature = "redis")]
            Kind::Redis(e) => write!(f, "invalid cache setting `{}`: {e}", self.setting),
        }
    }
}

impl std::error::Error for BuildError {
    /// The error underneath: for [`is_redis`](Self::is_redis), the
    /// `redis::RedisError` when the redis crate gave one (its message is
    /// not repeated in this error's own).
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            Kind::InvalidSetting(_) => None,
            // The target error's own text is this error's message; what is
            // underneath it is the redis crate's error.
            #[cfg(feature = "redis")]
            Kind::Redis(e) => std::error::Error::source(e),
        }
    }
}
