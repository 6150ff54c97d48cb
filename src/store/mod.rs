//! Storage tiers. L1 is in-process memory; L2 (Redis) comes with the
//! `redis` feature.

pub(crate) mod memory;
