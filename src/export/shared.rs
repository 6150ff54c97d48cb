//! Stats accumulated in Redis: every instance adds what it counted since
//! its last flush to one hash, so the totals survive restarts and add up
//! across instances (`CacheBuilder::shared_stats`).

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::cache::Shared;
use crate::observe::report::ratio;
use crate::observe::{LabelStats, SharedLabelStats, SharedStats};
use crate::sync::{lock, start_once};
use crate::{Cache, Stats};

#[derive(Debug, Default)]
struct FlushState {
    base: HashMap<String, u64>,
    last: HashMap<String, u64>,
}

/// The flusher's state: what was last added to Redis.
#[derive(Debug)]
pub(crate) struct Flusher {
    pub(crate) interval: Duration,
    /// `base`: what `reset_stats` zeroed, added back so that the flushed
    /// counts never go down; `last`: the counts (base included) Redis has.
    /// One lock, so a reset never falls between a snapshot and its use.
    state: Mutex<FlushState>,
    started: AtomicBool,
    /// One flush at a time (the periodic task and explicit calls).
    flushing: tokio::sync::Mutex<()>,
}

impl Flusher {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(FlushState::default()),
            started: AtomicBool::new(false),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    /// Starts the periodic flush once, on the current runtime.
    pub(crate) fn ensure_started(&self, shared: &Arc<Shared>) {
        if let Some(handle) = start_once(&self.started) {
            handle.spawn(flush_loop(Arc::downgrade(shared), self.interval));
        }
    }
}

async fn flush_loop(weak: Weak<Shared>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    loop {
        tick.tick().await;
        let Some(shared) = weak.upgrade() else { return };
        Cache { shared }.flush_shared_stats().await;
    }
}

/// A total in the shared hash: its field name, this instance's count of
/// it in `S` (flushed), and its field in `T` (the sum, read back).
type Total<S, T> = (&'static str, fn(&S) -> u64, fn(&mut T) -> &mut u64);

const TOTALS: [Total<Stats, SharedStats>; 11] = [
    ("requests", |s| s.requests, |o| &mut o.requests),
    ("hits", |s| s.hits, |o| &mut o.hits),
    ("hits_l1", |s| s.hits_l1, |o| &mut o.hits_l1),
    ("hits_l2", |s| s.hits_l2, |o| &mut o.hits_l2),
    ("stale", |s| s.stale, |o| &mut o.stale),
    ("misses", |s| s.misses, |o| &mut o.misses),
    ("revalidated", |s| s.revalidated, |o| &mut o.revalidated),
    ("coalesced", |s| s.coalesced, |o| &mut o.coalesced),
    ("passes", |s| s.passes + s.unavailable, |o| &mut o.passes),
    (
        "upstream_calls",
        |s| s.upstream_calls,
        |o| &mut o.upstream_calls,
    ),
    ("stores", |s| s.stores, |o| &mut o.stores),
];

/// A label's totals, stored as `label:{label}:{name}`.
const LABEL_TOTALS: [Total<LabelStats, SharedLabelStats>; 5] = [
    ("requests", |l| l.requests, |o| &mut o.requests),
    ("hits", |l| l.hits, |o| &mut o.hits),
    ("stale", |l| l.stale, |o| &mut o.stale),
    (
        "misses",
        |l| l.misses + l.coalesced + l.revalidated,
        |o| &mut o.misses,
    ),
    ("passes", |l| l.passes, |o| &mut o.passes),
];

impl Cache {
    /// The counters as flushed: `name → value`, labels as
    /// `label:{name}:{field}`.
    fn counter_snapshot(&self) -> HashMap<String, u64> {
        let s = self.stats();
        let mut out: HashMap<String, u64> = TOTALS
            .iter()
            .map(|(name, count, _)| ((*name).to_owned(), count(&s)))
            .collect();
        for l in &s.labels {
            for (name, count, _) in &LABEL_TOTALS {
                out.insert(format!("label:{}:{name}", l.label), count(l));
            }
        }
        out
    }

    /// Adds what this instance counted since its last flush to the shared
    /// stats in Redis. Returns false when there is no shared stats
    /// configuration or Redis did not take it (the counts are then added
    /// by the next flush: nothing is lost while this instance lives).
    /// Call it before a graceful shutdown; it also runs every
    /// `shared_stats` interval.
    pub async fn flush_shared_stats(&self) -> bool {
        let s = &*self.shared;
        let (Some(flusher), Some(l2)) = (s.shared_stats.as_ref(), s.tiers.l2.as_ref()) else {
            return false;
        };
        let _one = flusher.flushing.lock().await;
        // Counts since the process started: the counters plus what resets
        // took away.
        let (now, deltas) = {
            let state = lock(&flusher.state);
            let mut now = self.counter_snapshot();
            for (k, v) in &state.base {
                *now.entry(k.clone()).or_insert(0) += v;
            }
            let deltas: Vec<(String, u64)> = now
                .iter()
                .filter_map(|(k, &v)| {
                    let delta = v.saturating_sub(state.last.get(k).copied().unwrap_or(0));
                    (delta > 0).then(|| (k.clone(), delta))
                })
                .collect();
            (now, deltas)
        };
        if !l2.add_stats(&deltas).await {
            return false;
        }
        lock(&flusher.state).last = now;
        true
    }

    /// The totals every instance flushed to this namespace (`None` without
    /// shared stats, or when Redis does not answer).
    pub async fn shared_stats(&self) -> Option<SharedStats> {
        let s = &*self.shared;
        s.shared_stats.as_ref()?;
        let fields = s.tiers.l2.as_ref()?.read_stats().await?;
        let mut out = SharedStats::default();
        let mut labels: HashMap<String, SharedLabelStats> = HashMap::new();
        for (k, v) in fields {
            if let Some(rest) = k.strip_prefix("label:") {
                let Some((name, field)) = rest.rsplit_once(':') else {
                    continue;
                };
                let l = labels
                    .entry(name.to_owned())
                    .or_insert_with(|| SharedLabelStats {
                        label: name.to_owned(),
                        ..SharedLabelStats::default()
                    });
                if let Some((_, _, total)) = LABEL_TOTALS.iter().find(|t| t.0 == field) {
                    *total(l) = v;
                }
                continue;
            }
            if let Some((_, _, total)) = TOTALS.iter().find(|t| t.0 == k) {
                *total(&mut out) = v;
            }
        }
        let served = out.hits + out.stale;
        out.hit_ratio = ratio(
            served,
            served + out.misses + out.revalidated + out.coalesced,
        );
        let mut labels: Vec<SharedLabelStats> = labels
            .into_values()
            .map(|mut l| {
                l.hit_ratio = ratio(l.hits + l.stale, l.hits + l.stale + l.misses);
                l
            })
            .collect();
        labels.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.label.cmp(&b.label)));
        out.labels = labels;
        Some(out)
    }

    /// Runs `reset` (zeroing the counters) so that what it zeroes still
    /// reaches the shared stats: the counts are kept as a base, under the
    /// flusher's lock.
    pub(crate) fn reset_keeping_shared(&self, reset: impl FnOnce()) {
        let Some(flusher) = self.shared.shared_stats.as_ref() else {
            reset();
            return;
        };
        let mut state = lock(&flusher.state);
        for (k, v) in self.counter_snapshot() {
            *state.base.entry(k).or_insert(0) += v;
        }
        reset();
    }

    /// Deletes the shared stats (every instance's contributions).
    pub async fn reset_shared_stats(&self) -> bool {
        let s = &*self.shared;
        match (s.shared_stats.as_ref(), s.tiers.l2.as_ref()) {
            (Some(_), Some(l2)) => l2.clear_stats().await,
            _ => false,
        }
    }
}
