//! The crate's own error type: configuration problems found at build time.

use std::fmt;

/// A configuration the [`CacheBuilder`](crate::CacheBuilder) refuses.
///
/// ```
/// use tower_tiered_cache::Cache;
///
/// let err = Cache::builder().l1_capacity_bytes(0).build().unwrap_err();
/// assert!(err.is_invalid_setting());
/// assert!(err.to_string().contains("l1_capacity_bytes"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    setting: &'static str,
    reason: String,
}

impl BuildError {
    pub(crate) fn invalid(setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }

    /// True when a setting's value is out of range or inconsistent.
    pub fn is_invalid_setting(&self) -> bool {
        true
    }

    /// The name of the builder setting at fault.
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid cache setting `{}`: {}",
            self.setting, self.reason
        )
    }
}

impl std::error::Error for BuildError {}
