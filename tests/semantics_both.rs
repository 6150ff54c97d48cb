//! The semantics suite (`tests/semantics.rs`) with both tiers: L1 written through, and L2. Every test must
//! pass here exactly as it does on L1 alone: an entry behaves the same
//! whichever tier it was found in. Needs the `redis` feature and a
//! `redis-server` binary (its own, on a free port).
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;
#[path = "support/tiers.rs"]
mod tiers;

/// The configuration the included suite reads as `crate::TIERS`.
const TIERS: tiers::Tiers = tiers::Tiers::Both;

#[path = "semantics.rs"]
mod suite;
