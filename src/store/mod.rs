//! Storage tiers. L1 is in-process memory; L2 (Redis) comes with the
//! `redis` feature.

pub(crate) mod codec;
#[cfg(feature = "redis")]
pub(crate) mod inval;
#[cfg(feature = "redis")]
pub(crate) mod l2;
#[cfg(feature = "redis")]
pub(crate) mod lease;
pub(crate) mod memory;
pub(crate) mod order;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(feature = "l2-encryption")]
pub(crate) mod seal;
#[cfg(feature = "redis")]
pub(crate) mod sentinel;
