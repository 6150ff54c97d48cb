//! The observability methods of [`Cache`].

use crate::observe::labels::field;
use crate::observe::report::{ratio, recommend};
use crate::observe::window::{SLOTS, SLOT_MS};
use crate::observe::LabelRead;
use crate::observe::{
    Health, HealthStatus, HealthThresholds, LabelStats, Latency, LowPerformer, WindowStats,
};
use crate::stats::Stats;
use crate::{BreakerState, Cache, UpstreamBreaker};

/// Entries sampled for the average TTL remaining.
const TTL_SAMPLE: usize = 256;

impl Cache {
    /// Fills the observability parts of a stats snapshot from one reading
    /// of the label counters.
    pub(crate) fn observe_into(&self, stats: &mut Stats, now: u64, read: &LabelRead) {
        let obs = &self.shared.obs;
        let w = obs.window.read(now);
        stats.window = WindowStats {
            seconds: SLOTS * SLOT_MS / 1000,
            lookups: w.lookups,
            served: w.served,
            passes: w.passes,
            hit_ratio: ratio(w.served, w.lookups),
        };
        stats.hit_latency = obs.latency(true, &read.totals).into();
        stats.miss_latency = obs.latency(false, &read.totals).into();
        let sample = self.shared.tiers.l1.sample(TTL_SAMPLE);
        stats.avg_ttl_remaining_ms = (!sample.is_empty()).then(|| {
            sample
                .iter()
                .map(|e| e.timeline.fresh_until.saturating_sub(now))
                .sum::<u64>()
                / sample.len() as u64
        });
        stats.labels = label_rows(read);
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.shared.tiers.l2 {
            stats.redis = l2.info(now);
        }
    }

    /// Fills the tier sizes and counts, the in-flight calls and the
    /// upstream breakers into a stats snapshot.
    pub(crate) fn tiers_and_breakers_into(&self, stats: &mut Stats, now: u64) {
        let s = &*self.shared;
        stats.evictions = s.tiers.l1.evictions();
        stats.l1_not_admitted = s.tiers.not_admitted();
        stats.l1_entries = s.tiers.l1.len() as u64;
        stats.l1_bytes = s.tiers.l1.weight();
        stats.l1_capacity_bytes = s.tiers.l1.capacity();
        stats.in_flight = s.inflight.len() as u64;
        stats.breaker = s.breakers.worst(now);
        stats.breaker_opens = s.breakers.opens();
        stats.upstream_breakers = self.upstream_breakers();
    }

    /// Fills the L2 tier's counters and state into a stats snapshot
    /// (nothing without an L2 tier).
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub(crate) fn l2_into(&self, stats: &mut Stats, now: u64) {
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.shared.tiers.l2 {
            let c = &l2.counters;
            stats.l2_errors = c.errors.get();
            stats.l2_timeouts = c.timeouts.get();
            stats.l2_timeouts_slow_host = c.timeouts_slow_host.get();
            stats.l2_decode_errors = c.decode_errors.get();
            stats.l2_writes = c.writes.get();
            stats.l2_writes_dropped = c.writes_dropped.get();
            stats.promotions = c.promotions.get();
            stats.l2_breaker = Some(l2.breaker.state(now));
            stats.l2_subscribed = l2.subscribed();
            stats.l2_messages_received = c.messages_received.get();
            stats.l2_coherence_resets = c.coherence_resets.get();
            stats.l2_invalidations_dropped = c.invalidations_dropped.get();
            stats.l2_variants_evicted = c.variants_evicted.get();
        }
    }

    /// Per-label stats, busiest first (labels with no requests left out).
    pub fn label_stats(&self) -> Vec<LabelStats> {
        label_rows(&self.shared.obs.read_labels())
    }

    /// The `limit` labels with the most requests.
    pub fn top_labels(&self, limit: usize) -> Vec<LabelStats> {
        let mut all = self.label_stats();
        all.truncate(limit);
        all
    }

    /// Labels with at least 10 lookups whose hit ratio is below
    /// `threshold` (0..=1), worst first, each with recommendations drawn
    /// from its counters.
    pub fn low_performers(&self, threshold: f64) -> Vec<LowPerformer> {
        let capacity = self.shared.tiers.l1.capacity();
        let mut out: Vec<LowPerformer> = self
            .label_stats()
            .into_iter()
            .filter(|s| s.lookups() >= 10 && s.hit_ratio < threshold)
            .map(|s| LowPerformer {
                recommendations: recommend(&s, capacity),
                stats: s,
            })
            .collect();
        out.sort_by(|a, b| {
            a.stats
                .hit_ratio
                .total_cmp(&b.stats.hit_ratio)
                .then(b.stats.requests.cmp(&a.stats.requests))
        });
        out
    }

    /// Healthy, warning or degraded, with the reasons, judged by the
    /// configured [`HealthThresholds`](crate::HealthThresholds): degraded
    /// when the rolling window's hit ratio is below the threshold (after
    /// the minimum lookups), the mean latency is above its threshold or the
    /// L2 breaker is open; warning when the 95th percentile latency is
    /// above its threshold, the L2 breaker is probing, or an upstream
    /// breaker is open or probing (one reason per label, naming it: the
    /// cache still works, only that label's upstream is failing).
    pub fn health(&self) -> Health {
        let s = &*self.shared;
        let t = &s.obs.cfg.health;
        let now = s.clock.now_millis();
        let w = s.obs.window.read(now);
        let lat = self.latency_of_all_requests();
        let mut verdict = Verdict::healthy();
        let window_ratio = ratio(w.served, w.lookups);
        verdict.judge_window(t, window_ratio, w.lookups);
        verdict.judge_latency(t, &lat);
        let l2_breaker = self.judge_l2_breaker(&mut verdict, now);
        let upstream_breakers = self.upstream_breakers();
        verdict.judge_upstream_breakers(&upstream_breakers, now);
        Health {
            status: verdict.status,
            reasons: verdict.reasons,
            window_hit_ratio: window_ratio,
            window_lookups: w.lookups,
            mean_latency_ms: lat.mean_ms,
            p95_latency_ms: lat.p95_ms,
            l2_breaker,
            upstream_breakers,
        }
    }

    /// The latency of hits and misses together. Hits are timed one in
    /// `HIT_TIMING_SAMPLE`: they are weighted back up.
    fn latency_of_all_requests(&self) -> Latency {
        let obs = &self.shared.obs;
        let totals = obs.read_labels().totals;
        let served = totals[field::HIT_L1] + totals[field::HIT_L2] + totals[field::STALE];
        let hits = obs.latency(true, &totals);
        let misses = obs.latency(false, &totals);
        let weight = if hits.count == 0 {
            1.0
        } else {
            served as f64 / hits.count as f64
        };
        let mut both =
            crate::observe::hist::Summary::merge(&obs.hit_latency, weight, &obs.miss_latency);
        both.sum_ns = (hits.sum_ns as f64 * weight) as u64 + misses.sum_ns;
        both.into()
    }

    /// The L2 breaker's state (`None` without L2): degraded while open,
    /// warning while probing.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    fn judge_l2_breaker(&self, verdict: &mut Verdict, now: u64) -> Option<BreakerState> {
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.shared.tiers.l2 {
            let state = l2.breaker.state(now);
            match state {
                BreakerState::Open => verdict.flag(
                    HealthStatus::Degraded,
                    "L2 (Redis) circuit breaker is open: L2 is unreachable or failing".to_owned(),
                ),
                BreakerState::HalfOpen => verdict.flag(
                    HealthStatus::Warning,
                    "L2 (Redis) circuit breaker is probing after failures".to_owned(),
                ),
                BreakerState::Closed => {}
            }
            return Some(state);
        }
        None
    }

    /// Logs the aggregate summary (an INFO event).
    pub(crate) fn log_summary(&self) {
        let st = self.stats();
        let labels: Vec<String> = st
            .labels
            .iter()
            .take(20)
            .map(|l| {
                format!(
                    "{}: {} req, {:.1}% hits, {:.2} ms",
                    l.label,
                    l.requests,
                    l.hit_ratio * 100.0,
                    l.mean_latency_ms
                )
            })
            .collect();
        tracing::info!(
            target: "tower_tiered_cache",
            requests = st.requests,
            hits = st.hits,
            stale = st.stale,
            misses = st.misses,
            passes = st.passes,
            hit_ratio = st.hit_ratio,
            window_hit_ratio = st.window.hit_ratio,
            hit_p95_ms = st.hit_latency.p95_ms,
            miss_p95_ms = st.miss_latency.p95_ms,
            l1_bytes = st.l1_bytes,
            labels = %labels.join("; "),
            "cache summary"
        );
    }
}

/// Per-label stats from one reading, busiest first (labels with no
/// requests left out).
fn label_rows(read: &LabelRead) -> Vec<LabelStats> {
    let mut out: Vec<LabelStats> = read
        .rows
        .iter()
        .map(|(name, c)| LabelStats::from_counts(name, c))
        .filter(|s| s.requests > 0)
        .collect();
    out.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.label.cmp(&b.label)));
    out
}

/// The health status being judged: the worst level flagged so far and
/// one reason per flag.
struct Verdict {
    status: HealthStatus,
    reasons: Vec<String>,
}

impl Verdict {
    /// Healthy, with no reasons.
    fn healthy() -> Self {
        Self {
            status: HealthStatus::Healthy,
            reasons: Vec::new(),
        }
    }

    /// Raises the status to at least `level`, giving `why`.
    fn flag(&mut self, level: HealthStatus, why: String) {
        self.status = self.status.max(level);
        self.reasons.push(why);
    }

    /// Degraded when the rolling window's hit ratio is below the
    /// threshold, once the window has the minimum lookups.
    fn judge_window(&mut self, t: &HealthThresholds, window_ratio: f64, lookups: u64) {
        if lookups >= t.min_requests && window_ratio < t.degraded_hit_ratio {
            self.flag(
                HealthStatus::Degraded,
                format!(
                    "hit ratio {:.1}% over the last 5 minutes is below {:.1}% ({} lookups)",
                    window_ratio * 100.0,
                    t.degraded_hit_ratio * 100.0,
                    lookups
                ),
            );
        }
    }

    /// Degraded when the mean latency is above its threshold, warning
    /// when the 95th percentile is.
    fn judge_latency(&mut self, t: &HealthThresholds, lat: &Latency) {
        for (level, which, value, limit) in [
            (
                HealthStatus::Degraded,
                "mean",
                lat.mean_ms,
                t.degraded_mean_latency,
            ),
            (HealthStatus::Warning, "p95", lat.p95_ms, t.warning_p95),
        ] {
            let limit = limit.as_secs_f64() * 1000.0;
            if lat.count > 0 && value > limit {
                self.flag(
                    level,
                    format!("{which} latency {value:.1} ms is above {limit:.1} ms"),
                );
            }
        }
    }

    /// A warning per upstream breaker that is not closed, naming its
    /// label. Not degraded: the cache itself works (other labels are
    /// served and call their origins), and taking the instance out of a
    /// load balancer would not bring that upstream back.
    fn judge_upstream_breakers(&mut self, breakers: &[UpstreamBreaker], now: u64) {
        for b in breakers {
            let state = match b.state {
                BreakerState::Open => "open",
                _ => "half-open (probing)",
            };
            self.flag(
                HealthStatus::Warning,
                format!(
                    "upstream circuit breaker for label \"{}\" is {state}: opened {} s ago, {} failures in a row (errors, timeouts, 502/503/504)",
                    b.label,
                    now.saturating_sub(b.since_ms) / 1000,
                    b.consecutive_failures
                ),
            );
        }
    }
}
