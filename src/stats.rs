//! Lock-free counters and the stats snapshot.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::breaker::BreakerState;

const STRIPES: usize = 8;

/// A counter split over cache lines so that threads counting at once do not
/// fight over one line. Reads add the stripes up.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    stripes: [Padded; STRIPES],
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

/// The most stripes any striped counter has: threads are numbered modulo
/// this, and each counter takes the number modulo its own stripe count.
const MAX_STRIPES: usize = 64;

thread_local! {
    static STRIPE: Cell<usize> = Cell::new(NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % MAX_STRIPES);
}

/// This thread's stripe number (below 64, stable for the thread's life):
/// a counter with `n` stripes (a power of two) uses `stripe() % n`.
#[inline]
pub(crate) fn stripe() -> usize {
    STRIPE.try_with(Cell::get).unwrap_or(0)
}

/// Stripes for a counter written on every request: one per core (rounded
/// up to a power of two), at least `min` and at most `max`, so that on many
/// cores few threads share a stripe's cache line (issue 18).
pub(crate) fn stripes_for_cores(min: usize, max: usize) -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    cores.next_power_of_two().clamp(min, max.min(MAX_STRIPES))
}

impl Counter {
    #[inline]
    pub(crate) fn incr(&self) {
        self.add(1);
    }

    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.stripes[stripe() % STRIPES]
            .0
            .fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn reset(&self) {
        for s in &self.stripes {
            s.0.store(0, Ordering::Relaxed);
        }
    }
}

/// Every counter the engine keeps. Each request ends in exactly one of the
/// outcome counters (`hits_l1` .. `unavailable`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits_l1: Counter,
    pub(crate) hits_l2: Counter,
    pub(crate) stale: Counter,
    pub(crate) misses: Counter,
    pub(crate) revalidated: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) passes: Counter,
    pub(crate) unavailable: Counter,
    pub(crate) not_modified: Counter,
    pub(crate) stale_if_error: Counter,
    pub(crate) upstream_calls: Counter,
    pub(crate) upstream_errors: Counter,
    pub(crate) refresh_ok: Counter,
    pub(crate) refresh_failed: Counter,
    pub(crate) refresh_skipped: Counter,
    pub(crate) stores: Counter,
    pub(crate) too_large: Counter,
    pub(crate) coalesce_timeouts: Counter,
    pub(crate) upstream_timeouts: Counter,
    pub(crate) invalidations: Counter,
    pub(crate) cancelled: Counter,
    pub(crate) ttl_lengthened: Counter,
    pub(crate) ttl_shortened: Counter,
    /// Background refreshes started by `refresh_hot` (also counted by
    /// their outcome in `refresh_*`).
    pub(crate) hot_refreshes: Counter,
    pub(crate) prefetch_queued: Counter,
    pub(crate) prefetch_dropped: Counter,
    pub(crate) prefetch_warmed: Counter,
    pub(crate) prefetch_skipped: Counter,
    pub(crate) prefetch_failed: Counter,
    pub(crate) lease_taken: Counter,
    pub(crate) lease_waited: Counter,
    pub(crate) lease_taken_over: Counter,
    pub(crate) lease_local: Counter,
}

impl Counters {
    pub(crate) fn reset(&self) {
        for c in [
            &self.hits_l1,
            &self.hits_l2,
            &self.stale,
            &self.misses,
            &self.revalidated,
            &self.coalesced,
            &self.passes,
            &self.unavailable,
            &self.not_modified,
            &self.stale_if_error,
            &self.upstream_calls,
            &self.upstream_errors,
            &self.refresh_ok,
            &self.refresh_failed,
            &self.refresh_skipped,
            &self.stores,
            &self.too_large,
            &self.coalesce_timeouts,
            &self.upstream_timeouts,
            &self.invalidations,
            &self.cancelled,
            &self.ttl_lengthened,
            &self.ttl_shortened,
            &self.hot_refreshes,
            &self.prefetch_queued,
            &self.prefetch_dropped,
            &self.prefetch_warmed,
            &self.prefetch_skipped,
            &self.prefetch_failed,
            &self.lease_taken,
            &self.lease_waited,
            &self.lease_taken_over,
            &self.lease_local,
        ] {
            c.reset();
        }
    }
}

impl Counters {
    /// The prefetch counts now.
    pub(crate) fn prefetch(&self) -> PrefetchStats {
        PrefetchStats {
            queued: self.prefetch_queued.get(),
            dropped: self.prefetch_dropped.get(),
            warmed: self.prefetch_warmed.get(),
            skipped: self.prefetch_skipped.get(),
            failed: self.prefetch_failed.get(),
        }
    }

    /// The lease counts now.
    pub(crate) fn leases(&self) -> LeaseStats {
        LeaseStats {
            taken: self.lease_taken.get(),
            waited: self.lease_waited.get(),
            taken_over: self.lease_taken_over.get(),
            local: self.lease_local.get(),
        }
    }
}

/// What distributed coalescing did (see
/// `CacheBuilder::distributed_coalescing`, feature `redis`):
/// per flight leader that found nothing usable in L2, one of `taken`,
/// `waited` (then possibly `taken_over` too) or `local`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct LeaseStats {
    /// Leases taken without finding another holder (at once, or after a
    /// failed attempt): this instance called the origin for its flight.
    pub taken: u64,
    /// Leases found held by another instance: this instance's flight
    /// waited for it (answered from L2 when its answer came).
    pub waited: u64,
    /// Of `waited`, leases taken over after the wait: the holder's answer
    /// did not reach L2 (it failed, or died and its lease expired), and
    /// this instance called the origin.
    pub taken_over: u64,
    /// Flights coalesced locally, as without leases: Redis unreachable or
    /// slow (three lease operations failed in a row) or its breaker open,
    /// the bound on keys waited on reached, or a wait that outlived the
    /// upstream timeout.
    pub local: u64,
}

impl LeaseStats {
    /// Each count by the `outcome` name every exporter gives it: the one
    /// list Prometheus (`tower_cache_leases_total{outcome}`) and
    /// OpenTelemetry (`tower_cache.leases` by `outcome`) read.
    pub(crate) fn outcomes(&self) -> [(&'static str, u64); 4] {
        [
            ("taken", self.taken),
            ("waited", self.waited),
            ("taken_over", self.taken_over),
            ("local", self.local),
        ]
    }
}

/// What prefetching did (see
/// [`CacheBuilder::prefetch`](crate::CacheBuilder::prefetch)): every key
/// queued ends warmed, skipped or failed; `dropped` were never queued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct PrefetchStats {
    /// Keys queued for warming.
    pub queued: u64,
    /// Keys not queued because the queue was full (or a read named more
    /// than a read may prefetch).
    pub dropped: u64,
    /// Queued keys fetched and stored.
    pub warmed: u64,
    /// Queued keys another request had stored by their turn.
    pub skipped: u64,
    /// Queued keys that could not be stored (an error, a timeout, an
    /// answer that may not be stored).
    pub failed: u64,
}

impl PrefetchStats {
    /// Each count by the `outcome` name every exporter gives it: the one
    /// list Prometheus (`tower_cache_prefetches_total{outcome}`) and
    /// OpenTelemetry (`tower_cache.prefetches` by `outcome`) read.
    pub(crate) fn outcomes(&self) -> [(&'static str, u64); 5] {
        [
            ("queued", self.queued),
            ("dropped", self.dropped),
            ("warmed", self.warmed),
            ("skipped", self.skipped),
            ("failed", self.failed),
        ]
    }
}

/// A point-in-time snapshot of the cache's counters, from
/// [`Cache::stats`](crate::Cache::stats).
///
/// Each request is counted under exactly one outcome: `hits` (by tier),
/// `stale`, `misses`, `revalidated`, `coalesced`, `passes`,
/// `unavailable` or `cancelled`; `requests` is their sum.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Stats {
    /// Requests seen by the cache.
    pub requests: u64,
    /// Requests answered from storage while fresh (all tiers).
    pub hits: u64,
    /// Fresh hits answered from L1.
    pub hits_l1: u64,
    /// Fresh hits answered from L2.
    pub hits_l2: u64,
    /// Requests answered with a stale entry (stale-while-revalidate,
    /// `max-stale`, stale-if-error).
    pub stale: u64,
    /// Requests that called the upstream because nothing usable was stored.
    pub misses: u64,
    /// Requests answered from a stored entry after a 304 from the upstream.
    pub revalidated: u64,
    /// Requests that waited for another request's call to the origin and
    /// were answered from its response (`Cache-Status: fwd=…; collapsed`):
    /// misses that did not call the origin themselves. A request that
    /// waited on a flight whose leader found the entry in a cache tier (L1,
    /// or its L2 read) is a hit of that tier instead (`hits_l1`/`hits_l2`).
    pub coalesced: u64,
    /// Requests that went through uncached (method, route bypass, policy,
    /// hit-for-pass).
    pub passes: u64,
    /// `only-if-cached` requests answered 504 because nothing was stored.
    pub unavailable: u64,
    /// Requests dropped before their answer (a client timeout, a client
    /// gone) while the cache was looking in L2 or calling the upstream.
    pub cancelled: u64,
    /// Responses answered 304 from cache to a client's conditional request.
    pub not_modified: u64,
    /// Stale entries served because the upstream failed (of `stale`).
    pub stale_if_error: u64,
    /// Calls made to the upstream (foreground and background).
    pub upstream_calls: u64,
    /// Upstream calls that returned an error or a 5xx (pass-through
    /// responses are forwarded without inspection and not counted here).
    pub upstream_errors: u64,
    /// Background refreshes that stored a new response or a 304.
    pub refresh_ok: u64,
    /// Background refreshes that failed (the stale entry was kept).
    pub refresh_failed: u64,
    /// Background refreshes not started (breaker open, at the cap).
    pub refresh_skipped: u64,
    /// Background refreshes started by
    /// [`refresh_hot`](crate::CacheBuilder::refresh_hot) (their outcomes
    /// are in `refresh_ok` / `refresh_failed`).
    pub hot_refreshes: u64,
    /// What prefetching did.
    pub prefetch: PrefetchStats,
    /// What distributed coalescing did (all zero while it is off).
    pub leases: LeaseStats,
    /// Responses stored.
    pub stores: u64,
    /// Responses not stored because their body was over the size cap.
    pub too_large: u64,
    /// Waiters whose wait for another request's upstream call ran out
    /// (`coalesce_timeout`); they were answered stale or with a 504, never
    /// by calling the origin themselves.
    pub coalesce_timeouts: u64,
    /// Upstream calls that missed `upstream_timeout` (head or body).
    pub upstream_timeouts: u64,
    /// Entries removed by invalidation (unsafe methods, API calls).
    pub invalidations: u64,
    /// Entries stored with a TTL adaptive TTL lengthened (their key is
    /// read often; see [`AdaptiveTtl`](crate::AdaptiveTtl)).
    pub ttl_lengthened: u64,
    /// Entries stored with a TTL adaptive TTL shortened (their key is read
    /// rarely).
    pub ttl_shortened: u64,
    /// Entries evicted from L1 to make room.
    pub evictions: u64,
    /// Entries the L1 admission rule kept out of L1 when they were stored,
    /// revalidated or refreshed: they live in L2 only until they qualify
    /// ([`CacheBuilder::l1_admission`](crate::CacheBuilder::l1_admission)).
    pub l1_not_admitted: u64,
    /// Slots in L1 (entries plus one per URL with variants).
    pub l1_entries: u64,
    /// Weighted bytes held in L1.
    pub l1_bytes: u64,
    /// L1 capacity in bytes.
    pub l1_capacity_bytes: u64,
    /// Upstream calls in flight that others may join.
    pub in_flight: u64,
    /// L2 operations that failed (connection refused, server error).
    pub l2_errors: u64,
    /// L2 operations that took longer than the L2 timeout.
    pub l2_timeouts: u64,
    /// L2 timeouts that did not open the L2 breaker because Redis answered
    /// a probe (`PING`, within 1 s) sent after
    /// `l2_circuit_breaker`'s count of them in a row: this host was too
    /// busy to read the replies in time, Redis was up. Included in
    /// `l2_timeouts`.
    pub l2_timeouts_slow_host: u64,
    /// L2 values that could not be decoded (deleted, counted as misses).
    pub l2_decode_errors: u64,
    /// Keys written to L2.
    pub l2_writes: u64,
    /// L2 writes dropped (queue full, L2 down or timed out).
    pub l2_writes_dropped: u64,
    /// Variants deleted from L2 to keep a URL within `max_variants`
    /// (the oldest go first, as in L1).
    pub l2_variants_evicted: u64,
    /// L2 entries copied into L1 after `promote_after` hits.
    pub promotions: u64,
    /// The L2 circuit breaker's state; `None` without an L2 tier.
    pub l2_breaker: Option<BreakerState>,
    /// Whether this instance follows the L2 invalidation log (connected
    /// and caught up: L1 copies are kept coherent with other instances).
    pub l2_subscribed: bool,
    /// Invalidations received from other instances (counted once applied
    /// to L1).
    pub l2_messages_received: u64,
    /// Times L1 was cleared because the L2 invalidation log no longer held
    /// entries this instance had not read (trimmed past its last id, or
    /// lost while Redis stayed up). A reconnect alone never clears L1.
    pub l2_coherence_resets: u64,
    /// Invalidations made while Redis was unreachable that did not fit the
    /// bounded queue; a clear of the namespace (L2 and every instance's L1)
    /// is sent instead when Redis is back.
    pub l2_invalidations_dropped: u64,
    /// The worst state of the upstream circuit breakers (one per label):
    /// open if any is open, else half-open if any is probing, else closed.
    /// `upstream_breakers` names them.
    pub breaker: BreakerState,
    /// Times any upstream breaker has opened.
    pub breaker_opens: u64,
    /// Every upstream breaker that is not closed, by label, with its state
    /// and since when (see [`Cache::upstream_breakers`](crate::Cache::upstream_breakers)).
    pub upstream_breakers: Vec<crate::UpstreamBreaker>,
    /// The share of lookups answered without the origin:
    /// `(hits + stale) / (hits + stale + misses + revalidated + coalesced)`,
    /// 0 before the first lookup. Passes, `unavailable` and `cancelled`
    /// requests are not lookups. A request answered from a cache tier is a
    /// hit of that tier even when it waited on another request's flight;
    /// only waiters on a flight that reached the origin are `coalesced`.
    /// The per-label, window, shared, Prometheus (`tower_cache_hit_ratio`)
    /// and OpenTelemetry (`tower_cache.hit_ratio`) figures use the
    /// same definition.
    pub hit_ratio: f64,
    /// The last five minutes (hit ratio beside the totals above).
    pub window: crate::observe::WindowStats,
    /// Time in the cache layer for requests answered from storage.
    pub hit_latency: crate::observe::Latency,
    /// Time in the cache layer (upstream included) for lookups that missed.
    pub miss_latency: crate::observe::Latency,
    /// Mean freshness left of up to 256 L1 entries (a sample, not a
    /// scan), ms; `None` with L1 empty. Stale entries count as 0.
    pub avg_ttl_remaining_ms: Option<u64>,
    /// Per-label breakdown, busiest first.
    pub labels: Vec<crate::observe::LabelStats>,
    /// A subset of Redis `INFO`, fetched in the background (at most every
    /// 10 s); `None` without L2 or before the first fetch.
    pub redis: Option<RedisInfo>,
}

/// What Redis reports about itself (`INFO memory` and `INFO keyspace`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct RedisInfo {
    /// `used_memory` in bytes (summed over cluster nodes).
    pub used_memory: u64,
    /// `maxmemory` in bytes (0: no limit).
    pub maxmemory: u64,
    /// Keys in database 0 (summed over nodes).
    pub keys: u64,
    /// Nodes that answered.
    pub nodes: u32,
    /// When this was fetched, ms since the Unix epoch.
    pub fetched_at_ms: u64,
}

impl Stats {
    /// A snapshot of the engine's counters (`labelled_l1_hits`: the
    /// fresh L1 hits counted under their label rather than globally), with
    /// every other figure zero or empty until the tiers, breakers and
    /// observability fill it in.
    pub(crate) fn from_counters(c: &Counters, labelled_l1_hits: u64) -> Self {
        let hits_l1 = c.hits_l1.get() + labelled_l1_hits;
        let hits_l2 = c.hits_l2.get();
        Self {
            requests: 0,
            hits: hits_l1 + hits_l2,
            hits_l1,
            hits_l2,
            stale: c.stale.get(),
            misses: c.misses.get(),
            revalidated: c.revalidated.get(),
            coalesced: c.coalesced.get(),
            passes: c.passes.get(),
            unavailable: c.unavailable.get(),
            cancelled: c.cancelled.get(),
            not_modified: c.not_modified.get(),
            stale_if_error: c.stale_if_error.get(),
            upstream_calls: c.upstream_calls.get(),
            upstream_errors: c.upstream_errors.get(),
            refresh_ok: c.refresh_ok.get(),
            refresh_failed: c.refresh_failed.get(),
            refresh_skipped: c.refresh_skipped.get(),
            hot_refreshes: c.hot_refreshes.get(),
            prefetch: c.prefetch(),
            leases: c.leases(),
            stores: c.stores.get(),
            too_large: c.too_large.get(),
            coalesce_timeouts: c.coalesce_timeouts.get(),
            upstream_timeouts: c.upstream_timeouts.get(),
            invalidations: c.invalidations.get(),
            ttl_lengthened: c.ttl_lengthened.get(),
            ttl_shortened: c.ttl_shortened.get(),
            evictions: 0,
            l1_not_admitted: 0,
            l1_entries: 0,
            l1_bytes: 0,
            l1_capacity_bytes: 0,
            in_flight: 0,
            l2_errors: 0,
            l2_timeouts: 0,
            l2_timeouts_slow_host: 0,
            l2_decode_errors: 0,
            l2_writes: 0,
            l2_writes_dropped: 0,
            l2_variants_evicted: 0,
            promotions: 0,
            l2_breaker: None,
            l2_subscribed: false,
            l2_messages_received: 0,
            l2_coherence_resets: 0,
            l2_invalidations_dropped: 0,
            breaker: BreakerState::Closed,
            breaker_opens: 0,
            upstream_breakers: Vec::new(),
            hit_ratio: 0.0,
            window: Default::default(),
            hit_latency: Default::default(),
            miss_latency: Default::default(),
            avg_ttl_remaining_ms: None,
            labels: Vec::new(),
            redis: None,
        }
    }

    /// The stores adaptive TTL changed, by how: what every exporter counts
    /// (`change`: `lengthened`, `shortened`), named here only.
    pub(crate) fn ttl_changes(&self) -> [(&'static str, u64); 2] {
        [
            ("lengthened", self.ttl_lengthened),
            ("shortened", self.ttl_shortened),
        ]
    }

    /// `requests`: the sum of the outcomes, each request counted under one.
    pub(crate) fn sum_requests(&mut self) {
        self.requests = self.hits
            + self.stale
            + self.misses
            + self.revalidated
            + self.coalesced
            + self.passes
            + self.unavailable
            + self.cancelled;
    }

    pub(crate) fn compute_ratio(&mut self) {
        let served = self.hits + self.stale;
        let lookups = served + self.misses + self.revalidated + self.coalesced;
        self.hit_ratio = if lookups == 0 {
            0.0
        } else {
            served as f64 / lookups as f64
        };
    }
}

#[cfg(test)]
mod stripe_tests {
    use super::*;

    #[test]
    fn stripes_follow_the_cores_within_their_bounds_as_powers_of_two() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        for (min, max) in [(2, 16), (4, 16), (1, 64), (8, 8)] {
            let n = stripes_for_cores(min, max);
            assert!(n.is_power_of_two() && (min..=max).contains(&n), "{n}");
            assert!(
                n >= cores.next_power_of_two().min(max),
                "{n} for {cores} cores"
            );
        }
        assert!(stripe() < MAX_STRIPES);
    }
}
