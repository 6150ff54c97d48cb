//! OpenTelemetry metrics (feature `opentelemetry`).
//!
//! Counters and gauges are observable instruments read from the cache's own
//! counters when the meter provider collects: nothing is added to the
//! request path for them. Histograms are recorded as requests finish.

use std::sync::{Arc, Weak};
use std::time::Duration;

use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry::KeyValue;

use super::labels::field;
use super::{LookupResult, Observer, Outcome};
use crate::cache::Shared;

/// Buckets (seconds) for lookups: from 1 µs (L1 hits) to 10 s (slow
/// upstreams).
const LOOKUP_BUCKETS: [f64; 16] = [
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    1.0,
    10.0,
];
/// Buckets (seconds) for upstream calls and L2 operations.
const OP_BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The synchronous instruments, and per-label attribute values made once.
pub(crate) struct Instruments {
    lookup: Histogram<f64>,
    upstream: Histogram<f64>,
    l2_op: Histogram<f64>,
    label_values: Vec<std::sync::OnceLock<opentelemetry::Value>>,
    /// Per label, the lookup histogram's attribute sets for every
    /// (result, tier), made once: recording then passes a ready slice in
    /// the same order every time (no clones, no sorting on our side).
    lookup_attrs: Vec<std::sync::OnceLock<Box<[[KeyValue; 3]]>>>,
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

    pub(crate) fn lookup(&self, obs: &Observer, label: u16, o: &Outcome, elapsed_ns: u64) {
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
                            KeyValue::new("cache.result", r.as_str()),
                            KeyValue::new("cache.tier", t.as_str()),
                            KeyValue::new("cache.label", name.clone()),
                        ]
                    })
                })
                .collect()
        });
        self.lookup.record(elapsed_ns as f64 / 1e9, &sets[combo(o)]);
    }

    pub(crate) fn upstream(
        &self,
        obs: &Observer,
        label: u16,
        took: Duration,
        status: Option<http::StatusCode>,
    ) {
        let mut attrs = vec![KeyValue::new("cache.label", self.label(obs, label))];
        match status {
            Some(s) => attrs.push(KeyValue::new(
                "http.response.status_code",
                i64::from(s.as_u16()),
            )),
            None => attrs.push(KeyValue::new("error.type", "upstream_error")),
        }
        self.upstream.record(took.as_secs_f64(), &attrs);
    }

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

/// Registers every instrument on `meter`; callbacks hold the cache weakly.
pub(crate) fn register(shared: &Arc<Shared>, meter: &Meter) -> Instruments {
    let weak = Arc::downgrade(shared);
    observable_counters(meter, &weak);
    let w = weak.clone();
    meter
        .u64_observable_gauge("cache.l1.entries")
        .with_description("Slots in L1 (entries plus one per URL with variants)")
        .with_unit("{entry}")
        .with_callback(move |o| {
            if let Some(s) = w.upgrade() {
                o.observe(s.l1.len() as u64, &[]);
            }
        })
        .build();
    let w = weak.clone();
    meter
        .u64_observable_gauge("cache.l1.bytes")
        .with_description("Weighted bytes held in L1")
        .with_unit("By")
        .with_callback(move |o| {
            if let Some(s) = w.upgrade() {
                o.observe(s.l1.weight(), &[]);
            }
        })
        .build();
    #[cfg(feature = "redis")]
    let l2_server = shared
        .l2
        .as_ref()
        .map(|l2| (l2.server().0.clone(), i64::from(l2.server().1)));
    #[cfg(not(feature = "redis"))]
    let l2_server = None;
    Instruments {
        lookup: meter
            .f64_histogram("cache.lookup.duration")
            .with_description("Time in the cache layer per request, to the response head")
            .with_unit("s")
            .with_boundaries(LOOKUP_BUCKETS.to_vec())
            .build(),
        upstream: meter
            .f64_histogram("cache.upstream.duration")
            .with_description("Upstream calls made by the cache (misses, revalidations, refreshes)")
            .with_unit("s")
            .with_boundaries(OP_BUCKETS.to_vec())
            .build(),
        l2_op: meter
            .f64_histogram("db.client.operation.duration")
            .with_description("Duration of L2 (Redis) operations")
            .with_unit("s")
            .with_boundaries(OP_BUCKETS.to_vec())
            .build(),
        label_values: (0..shared.obs.cfg.max_labels + 2)
            .map(|_| std::sync::OnceLock::new())
            .collect(),
        lookup_attrs: (0..shared.obs.cfg.max_labels + 2)
            .map(|_| std::sync::OnceLock::new())
            .collect(),
        l2_server,
    }
}

/// Reads one counter of the cache.
type Reader = fn(&Shared) -> u64;

fn observable_counters(meter: &Meter, weak: &Weak<Shared>) {
    let w = weak.clone();
    meter
        .u64_observable_counter("cache.requests")
        .with_description("Requests through the cache by result, tier and label")
        .with_unit("{request}")
        .with_callback(move |o| {
            let Some(s) = w.upgrade() else { return };
            for (name, c) in s.obs.labels.all() {
                let label: opentelemetry::Value = name.to_string().into();
                for (f, result, tier) in [
                    (field::HIT_L1, "hit", "l1"),
                    (field::HIT_L2, "hit", "l2"),
                    (field::STALE, "stale", "none"),
                    (field::MISS, "miss", "none"),
                    (field::COALESCED, "miss", "none"),
                    (field::REVALIDATED, "revalidated", "none"),
                    (field::PASS, "pass", "none"),
                    // Dropped before an answer: no lookup result.
                    (field::CANCELLED, "cancelled", "none"),
                ] {
                    if c[f] == 0 {
                        continue;
                    }
                    // Coalesced misses are reported apart from the others.
                    let coalesced = f == field::COALESCED;
                    o.observe(
                        c[f],
                        &[
                            KeyValue::new("cache.result", result),
                            KeyValue::new("cache.tier", tier),
                            KeyValue::new("cache.label", label.clone()),
                            KeyValue::new("cache.coalesced", coalesced),
                        ],
                    );
                }
            }
        })
        .build();
    let simple: [(&'static str, &'static str, Reader); 6] = [
        ("cache.stale_served", "Stale entries served", |s| {
            s.counters.stale.get()
        }),
        (
            "cache.coalesced",
            "Requests answered from another request's call to the origin",
            |s| s.counters.coalesced.get(),
        ),
        (
            "cache.evictions",
            "Entries evicted from L1 to make room",
            |s| s.l1.evictions(),
        ),
        ("cache.stores", "Responses stored", |s| {
            s.counters.stores.get()
        }),
        (
            "cache.upstream.calls",
            "Upstream calls made by the cache",
            |s| s.counters.upstream_calls.get(),
        ),
        ("cache.promotions", "L2 entries copied into L1", promotions),
    ];
    for (name, description, read) in simple {
        observable_counter(meter, weak, name, description, None, move |s| {
            vec![("", read(s))]
        });
    }
    observable_counter(
        meter,
        weak,
        "cache.refreshes",
        "Background refreshes by outcome",
        Some("outcome"),
        |s| {
            let c = &s.counters;
            vec![
                ("ok", c.refresh_ok.get()),
                ("failed", c.refresh_failed.get()),
                ("skipped", c.refresh_skipped.get()),
            ]
        },
    );
    observable_counter(
        meter,
        weak,
        "cache.breaker.opens",
        "Circuit breaker transitions to open, by breaker",
        Some("breaker"),
        |s| {
            #[allow(unused_mut)]
            let mut v = vec![("upstream", s.breakers.opens())];
            #[cfg(feature = "redis")]
            if let Some(l2) = &s.l2 {
                v.push(("l2", l2.breaker.opens()));
            }
            v
        },
    );
    upstream_breakers(meter, weak);
    #[cfg(feature = "redis")]
    observable_counter(
        meter,
        weak,
        "cache.l2.errors",
        "L2 operations that failed, by kind",
        Some("error.type"),
        |s| {
            let Some(l2) = &s.l2 else { return Vec::new() };
            let c = &l2.counters;
            vec![
                ("error", c.errors.get()),
                ("timeout", c.timeouts.get()),
                ("timeout_slow_host", c.timeouts_slow_host.get()),
                ("decode", c.decode_errors.get()),
                ("write_dropped", c.writes_dropped.get()),
            ]
        },
    );
}

/// An observable counter read from the cache at collection time: `read`
/// gives `(attribute value, count)` per series (the value is ignored
/// without an attribute `key`).
fn observable_counter(
    meter: &Meter,
    weak: &Weak<Shared>,
    name: &'static str,
    description: &'static str,
    key: Option<&'static str>,
    read: impl Fn(&Shared) -> Vec<(&'static str, u64)> + Send + Sync + 'static,
) {
    let w = weak.clone();
    meter
        .u64_observable_counter(name)
        .with_description(description)
        .with_callback(move |o| {
            let Some(s) = w.upgrade() else { return };
            for (value, n) in read(&s) {
                match key {
                    Some(k) => o.observe(n, &[KeyValue::new(k, value)]),
                    None => o.observe(n, &[]),
                }
            }
        })
        .build();
}

fn promotions(_s: &Shared) -> u64 {
    #[cfg(feature = "redis")]
    if let Some(l2) = &_s.l2 {
        return l2.counters.promotions.get();
    }
    0
}

/// The upstream breakers by label, for every label whose breaker has
/// opened at least once (a bounded set, like the labels):
/// `cache.upstream.breaker.state` (1 for the current state, 0 for the
/// others), `cache.upstream.breaker.opened_at` (while not closed: when it
/// opened, Unix seconds) and `cache.upstream.breaker.opens`.
fn upstream_breakers(meter: &Meter, weak: &Weak<Shared>) {
    let w = weak.clone();
    meter
        .u64_observable_gauge("cache.upstream.breaker.state")
        .with_description(
            "Upstream circuit breakers by label: 1 for the current state, 0 for the others",
        )
        .with_callback(move |o| {
            let Some(s) = w.upgrade() else { return };
            let now = s.clock.now_millis();
            for (i, b) in s.breakers.ever_opened() {
                let label: opentelemetry::Value = s.obs.labels.name(i).to_string().into();
                let current = b.state(now);
                for state in [
                    crate::BreakerState::Closed,
                    crate::BreakerState::Open,
                    crate::BreakerState::HalfOpen,
                ] {
                    o.observe(
                        u64::from(current == state),
                        &[
                            KeyValue::new("cache.label", label.clone()),
                            KeyValue::new("state", state.as_str()),
                        ],
                    );
                }
            }
        })
        .build();
    let w = weak.clone();
    meter
        .f64_observable_gauge("cache.upstream.breaker.opened_at")
        .with_description("When each upstream circuit breaker that is not closed opened, Unix time")
        .with_unit("s")
        .with_callback(move |o| {
            let Some(s) = w.upgrade() else { return };
            let now = s.clock.now_millis();
            for (i, b) in s.breakers.not_closed(now) {
                let st = b.status(String::new(), now);
                o.observe(
                    st.since_ms as f64 / 1000.0,
                    &[
                        KeyValue::new("cache.label", s.obs.labels.name(i).to_string()),
                        KeyValue::new("state", st.state.as_str()),
                    ],
                );
            }
        })
        .build();
    let w = weak.clone();
    meter
        .u64_observable_counter("cache.upstream.breaker.opens")
        .with_description("Upstream circuit breaker transitions to open, by label")
        .with_callback(move |o| {
            let Some(s) = w.upgrade() else { return };
            for (i, b) in s.breakers.ever_opened() {
                o.observe(
                    b.opens(),
                    &[KeyValue::new(
                        "cache.label",
                        s.obs.labels.name(i).to_string(),
                    )],
                );
            }
        })
        .build();
}
