//! The semantics suite (`tests/semantics.rs`) with an L2 tier and an L1 that holds nothing: every stored entry is read from Redis. Every test must
//! pass here exactly as it does on L1 alone: an entry behaves the same
//! whichever tier it was found in. Needs the `redis` feature and a
//! `redis-server` binary (its own, on a free port).
#![cfg(feature = "redis")]

#[path = "semantics.rs"]
mod suite;

// The suite's helpers reach these as `crate::…`.
use suite::{redis_support, tiers};

/// The configuration the included suite reads as `crate::TIERS`.
const TIERS: tiers::Tiers = tiers::Tiers::L2;
