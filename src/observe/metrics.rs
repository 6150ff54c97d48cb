//! OpenTelemetry metrics (feature `opentelemetry`).
//!
//! Counters and gauges are observable instruments read from the cache's own
//! counters when the meter provider collects: nothing is added to the
//! request path for them. Histograms are recorded as requests finish.

use std::time::Duration;

use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry::KeyValue;

use super::{LookupResult, Observer, Outcome};

/// Buckets (seconds) for upstream calls and L2 operations.
const OP_BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Bucket bounds (seconds) for lookups: the cache's own, from 1 µs (L1
/// hits) to 10 s (slow upstreams), as in the Prometheus exposition.
fn lookup_buckets() -> Vec<f64> {
    super::hist::LOOKUP_BUCKETS_NS
        .iter()
        .map(|&ns| ns as f64 / 1e9)
        .collect()
}

/// The synchronous instruments, and per-label attribute values made once.
pub(crate) struct Instruments {
    lookup: Histogram<f64>,
    /// The lookups the cache's own hit and miss histograms take, as the
    /// Prometheus exposition's `tower_cache_{hit,miss}_duration_seconds`.
    hit: Histogram<f64>,
    miss: Histogram<f64>,
    upstream: Histogram<f64>,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    l2_op: Histogram<f64>,
    label_values: Vec<std::sync::OnceLock<opentelemetry::Value>>,
    /// Per label, the lookup histogram's attribute sets for every
    /// (result, tier), made once: recording then passes a ready slice in
    /// the same order every time (no clones, no sorting on our side).
    lookup_attrs: Vec<std::sync::OnceLock<Box<[[KeyValue; 3]]>>>,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    l2_server: Option<(String, i64)>,
}

const RESULTS: [LookupResult; 5] = [
    LookupResult::Hit,
    LookupResult::Stale,
    LookupResult::Miss,
    LookupResult::Pass,
    LookupResult::Revalidated,
];
const TIERS: [super::Tier; 3] = [super::Tier::L1, super::Tier::L2, super::Tier::None];

fn combo(o: &Outcome) -> usize {
    let r = RESULTS.iter().position(|r| *r == o.result).unwrap_or(2);
    let t = TIERS.iter().position(|t| *t == o.tier).unwrap_or(2);
    r * TIERS.len() + t
}

impl Instruments {
    fn label(&self, obs: &Observer, label: u16) -> opentelemetry::Value {
        match self.label_values.get(usize::from(label)) {
            Some(cell) => cell
                .get_or_init(|| opentelemetry::Value::from(obs.labels.name(label).to_string()))
                .clone(),
            None => opentelemetry::Value::from(super::labels::OTHER),
        }
    }

    /// Records one timed lookup: in the per-label histogram and, when it
    /// was `served` from storage or otherwise a `lookup` (not a pass), in
    /// the hit or the miss histogram.
    pub(crate) fn lookup(
        &self,
        obs: &Observer,
        label: u16,
        o: &Outcome,
        elapsed_ns: u64,
        (served, lookup): (bool, bool),
    ) {
        let seconds = elapsed_ns as f64 / 1e9;
        if served {
            self.hit.record(seconds, &[]);
        } else if lookup {
            self.miss.record(seconds, &[]);
        }
        let Some(cell) = self.lookup_attrs.get(usize::from(label)) else {
            return;
        };
        let sets = cell.get_or_init(|| {
            let name = self.label(obs, label);
            RESULTS
                .iter()
                .flat_map(|r| {
                    let name = name.clone();
                    TIERS.iter().map(move |t| {
                        [
                            KeyValue::new("result", r.as_str()),
                            KeyValue::new("tier", t.as_str()),
                            KeyValue::new("label", name.clone()),
                        ]
                    })
                })
                .collect()
        });
        self.lookup.record(seconds, &sets[combo(o)]);
    }

    pub(crate) fn upstream(
        &self,
        obs: &Observer,
        label: u16,
        took: Duration,
        status: Option<http::StatusCode>,
    ) {
        let mut attrs = vec![KeyValue::new("label", self.label(obs, label))];
        match status {
            Some(s) => attrs.push(KeyValue::new(
                "http.response.status_code",
                i64::from(s.as_u16()),
            )),
            None => attrs.push(KeyValue::new("error.type", "upstream_error")),
        }
        self.upstream.record(took.as_secs_f64(), &attrs);
    }

    /// Records one L2 (Redis) operation.
    #[cfg(feature = "redis")]
    pub(crate) fn l2_op(&self, name: &str, took: Duration, ok: bool) {
        let mut attrs = vec![
            KeyValue::new("db.system.name", "redis"),
            KeyValue::new("db.operation.name", name.to_owned()),
        ];
        if let Some((host, port)) = &self.l2_server {
            attrs.push(KeyValue::new("server.address", host.clone()));
            attrs.push(KeyValue::new("server.port", *port));
        }
        if !ok {
            attrs.push(KeyValue::new("error.type", "redis_error"));
        }
        self.l2_op.record(took.as_secs_f64(), &attrs);
    }
}

impl Instruments {
    /// The synchronous instruments on `meter`, for up to `max_labels`
    /// labels (plus `default` and `other`); `l2_server` names the Redis
    /// server in L2 operation metrics.
    pub(crate) fn new(meter: &Meter, max_labels: usize, l2_server: Option<(String, i64)>) -> Self {
        Self {
            lookup: meter
                .f64_histogram("tower_cache.lookup.duration")
                .with_description("Time in the cache layer per request, to the response head")
                .with_unit("s")
                .with_boundaries(lookup_buckets())
                .build(),
            hit: meter
                .f64_histogram("tower_cache.hit.duration")
                .with_description("Time in the cache layer for requests answered from storage")
                .with_unit("s")
                .with_boundaries(lookup_buckets())
                .build(),
            miss: meter
                .f64_histogram("tower_cache.miss.duration")
                .with_description(
                    "Time in the cache layer (upstream included) for lookups that missed",
                )
                .with_unit("s")
                .with_boundaries(lookup_buckets())
                .build(),
            upstream: meter
                .f64_histogram("tower_cache.upstream.duration")
                .with_description(
                    "Upstream calls made by the cache (misses, revalidations, refreshes)",
                )
                .with_unit("s")
                .with_boundaries(OP_BUCKETS.to_vec())
                .build(),
            l2_op: meter
                .f64_histogram("db.client.operation.duration")
                .with_description("Duration of L2 (Redis) operations")
                .with_unit("s")
                .with_boundaries(OP_BUCKETS.to_vec())
                .build(),
            label_values: (0..max_labels + 2)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            lookup_attrs: (0..max_labels + 2)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            l2_server,
        }
    }
}
