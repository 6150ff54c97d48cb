//! OpenTelemetry's observable instruments (feature `opentelemetry`): the
//! cache's counters and gauges, read from the engine when the meter
//! provider collects (nothing is added to the request path for them). The
//! histograms recorded as requests finish are in `observe::metrics`.
//!
//! Every instrument is named so that the OpenTelemetry→Prometheus
//! translation (dots to underscores, the unit's suffix, `_total` for
//! monotonic counters) gives the name the Prometheus exposition
//! (`export::prometheus`) uses, with the same attribute keys as its label
//! keys: `tower_cache.requests{result,tier,label}` is
//! `tower_cache_requests_total{result,tier,label}`. `tests/metric_names.rs`
//! checks both after the same traffic.

use std::sync::{Arc, Weak};

use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;

use crate::cache::Shared;
use crate::observe::labels::SERIES;
use crate::observe::metrics::Instruments;
use crate::observe::HealthStatus;
use crate::{BreakerState, Cache};

/// Registers every instrument on `meter`; callbacks hold the cache weakly.
pub(crate) fn register(shared: &Arc<Shared>, meter: &Meter) -> Instruments {
    let weak = Arc::downgrade(shared);
    observable_counters(meter, &weak);
    observable_gauges(meter, &weak);
    upstream_breakers(meter, &weak);
    #[cfg(feature = "redis")]
    let l2_server = shared.tiers.l2.as_ref().map(|l2| {
        // Fixed at registration: with Sentinel, the first sentinel
        // (the master is not known yet).
        let (host, port) = l2.current_server();
        (host, i64::from(port))
    });
    #[cfg(not(feature = "redis"))]
    let l2_server = None;
    Instruments::new(meter, shared.obs.cfg.max_labels, l2_server)
}

/// Reads one counter or gauge of the cache.
type Reader = fn(&Shared) -> u64;

/// Series of one instrument: `(attribute value, value)` each (the value is
/// ignored without an attribute key).
type Series = Vec<(&'static str, u64)>;

/// Every observable counter: requests by outcome, the unlabelled event
/// counts, refreshes, breaker opens and, with an L2 tier, its errors.
fn observable_counters(meter: &Meter, weak: &Weak<Shared>) {
    requests_counter(meter, weak);
    event_counters(meter, weak);
    refreshes_counter(meter, weak);
    ttl_changes_counter(meter, weak);
    prefetches_counter(meter, weak);
    leases_counter(meter, weak);
    breaker_opens_counter(meter, weak);
    #[cfg(feature = "redis")]
    l2_errors_counter(meter, weak);
    #[cfg(feature = "redis")]
    l2_events_counter(meter, weak);
}

/// `tower_cache.requests` by result, tier and label.
fn requests_counter(meter: &Meter, weak: &Weak<Shared>) {
    let w = weak.clone();
    meter
        .u64_observable_counter("tower_cache.requests")
        .with_description("Requests through the cache by result, tier and label")
        .with_unit("{request}")
        .with_callback(move |o| {
            let Some(s) = w.upgrade() else { return };
            for (name, c) in s.obs.labels.all() {
                let label: opentelemetry::Value = name.to_string().into();
                for series in SERIES {
                    let v = c[series.field];
                    if v == 0 {
                        continue;
                    }
                    o.observe(
                        v,
                        &[
                            KeyValue::new("result", series.result),
                            KeyValue::new("tier", series.tier),
                            KeyValue::new("label", label.clone()),
                        ],
                    );
                }
            }
        })
        .build();
}

/// The unlabelled event counters: stale served, coalesced, evictions,
/// stores, upstream calls and errors, promotions, entries kept out of L1
/// and hot-key refreshes.
fn event_counters(meter: &Meter, weak: &Weak<Shared>) {
    let simple: [(&'static str, &'static str, Reader); 9] = [
        ("tower_cache.stale_served", "Stale entries served", |s| {
            s.counters.stale.get()
        }),
        (
            "tower_cache.coalesced",
            "Requests answered from another request's call to the origin",
            |s| s.counters.coalesced.get(),
        ),
        (
            "tower_cache.evictions",
            "Entries evicted from L1 to make room",
            |s| s.tiers.l1.evictions(),
        ),
        ("tower_cache.stores", "Responses stored", |s| {
            s.counters.stores.get()
        }),
        (
            "tower_cache.upstream.calls",
            "Upstream calls made by the cache",
            |s| s.counters.upstream_calls.get(),
        ),
        (
            "tower_cache.upstream.errors",
            "Upstream calls that failed or answered 5xx",
            |s| s.counters.upstream_errors.get(),
        ),
        (
            "tower_cache.promotions",
            "L2 entries copied into L1",
            promotions,
        ),
        (
            "tower_cache.l1.not_admitted",
            "Entries the L1 admission rule kept in L2 only",
            |s| s.tiers.not_admitted(),
        ),
        (
            "tower_cache.hot_refreshes",
            "Background refreshes started by refresh_hot",
            |s| s.counters.hot_refreshes.get(),
        ),
    ];
    for (name, description, read) in simple {
        observable_counter(meter, weak, name, description, None, move |s| {
            vec![("", read(s))]
        });
    }
}

/// `tower_cache.refreshes` by outcome.
fn refreshes_counter(meter: &Meter, weak: &Weak<Shared>) {
    observable_counter(
        meter,
        weak,
        "tower_cache.refreshes",
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
}

/// `tower_cache.adaptive_ttl` by change (`lengthened`, `shortened`).
fn ttl_changes_counter(meter: &Meter, weak: &Weak<Shared>) {
    observable_counter(
        meter,
        weak,
        "tower_cache.adaptive_ttl",
        "Entries stored with a TTL adaptive TTL changed, by change",
        Some("change"),
        |s| {
            crate::Stats::from_counters(&s.counters, 0)
                .ttl_changes()
                .to_vec()
        },
    );
}

/// `tower_cache.prefetches` by outcome.
fn prefetches_counter(meter: &Meter, weak: &Weak<Shared>) {
    observable_counter(
        meter,
        weak,
        "tower_cache.prefetches",
        "URLs prefetched after reads, by outcome",
        Some("outcome"),
        |s| s.counters.prefetch().outcomes().to_vec(),
    );
}

/// `tower_cache.leases` by outcome (distributed coalescing).
fn leases_counter(meter: &Meter, weak: &Weak<Shared>) {
    observable_counter(
        meter,
        weak,
        "tower_cache.leases",
        "Distributed coalescing: flight leaders by what their lease came to",
        Some("outcome"),
        |s| s.counters.leases().outcomes().to_vec(),
    );
}

/// `tower_cache.breaker.opens` by breaker: the upstream breakers' sum and,
/// with an L2 tier, the L2 breaker.
fn breaker_opens_counter(meter: &Meter, weak: &Weak<Shared>) {
    observable_counter(
        meter,
        weak,
        "tower_cache.breaker.opens",
        "Circuit breaker transitions to open, by breaker",
        Some("breaker"),
        |s| {
            #[allow(unused_mut)]
            let mut v = vec![("upstream", s.breakers.opens())];
            #[cfg(feature = "redis")]
            if let Some(l2) = &s.tiers.l2 {
                v.push(("l2", l2.breaker.opens()));
            }
            v
        },
    );
}

/// `tower_cache.l2.errors` by kind.
#[cfg(feature = "redis")]
fn l2_errors_counter(meter: &Meter, weak: &Weak<Shared>) {
    l2_counter(
        meter,
        weak,
        "tower_cache.l2.errors",
        "L2 operations that failed, by kind",
        "kind",
        |c| {
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

/// `tower_cache.l2.events` by kind: variants evicted, coherence resets,
/// invalidations dropped from the outbox.
#[cfg(feature = "redis")]
fn l2_events_counter(meter: &Meter, weak: &Weak<Shared>) {
    l2_counter(
        meter,
        weak,
        "tower_cache.l2.events",
        "L2 events that cost coherence or storage, by kind",
        "event",
        |c| {
            vec![
                ("variants_evicted", c.variants_evicted.get()),
                ("coherence_resets", c.coherence_resets.get()),
                ("invalidations_dropped", c.invalidations_dropped.get()),
            ]
        },
    );
}

/// An [`observable_counter`] of the L2 tier's counters, by `key`: no series
/// without an L2 tier.
#[cfg(feature = "redis")]
fn l2_counter(
    meter: &Meter,
    weak: &Weak<Shared>,
    name: &'static str,
    description: &'static str,
    key: &'static str,
    read: fn(&crate::store::l2::L2Counters) -> Series,
) {
    observable_counter(meter, weak, name, description, Some(key), move |s| {
        s.tiers
            .l2
            .as_ref()
            .map_or_else(Vec::new, |l2| read(&l2.counters))
    });
}

/// The unlabelled gauges (L1's size and capacity, joinable upstream calls,
/// whether the upstream and L2 breakers are open), the hit ratios and the
/// health status.
fn observable_gauges(meter: &Meter, weak: &Weak<Shared>) {
    let sizes: [(&'static str, &'static str, &'static str, Reader); 4] = [
        (
            "tower_cache.l1.entries",
            "Slots in L1 (entries plus one per URL with variants)",
            "{entry}",
            |s| s.tiers.l1.len() as u64,
        ),
        (
            "tower_cache.l1.bytes",
            "Weighted bytes held in L1",
            "By",
            |s| s.tiers.l1.weight(),
        ),
        (
            "tower_cache.l1.capacity",
            "L1 capacity in bytes",
            "By",
            |s| s.tiers.l1.capacity(),
        ),
        (
            "tower_cache.in_flight",
            "Upstream calls in flight that others may join",
            "{request}",
            |s| s.inflight.len() as u64,
        ),
    ];
    for (name, description, unit, read) in sizes {
        observable_gauge(meter, weak, name, description, unit, None, move |s| {
            vec![("", read(s))]
        });
    }
    observable_gauge(
        meter,
        weak,
        "tower_cache.upstream.breaker.open",
        "1 while the upstream circuit breaker is open, else 0",
        "",
        None,
        |s| {
            let open = s.breakers.worst(s.clock.now_millis()) == BreakerState::Open;
            vec![("", u64::from(open))]
        },
    );
    #[cfg(feature = "redis")]
    observable_gauge(
        meter,
        weak,
        "tower_cache.l2.breaker.open",
        "1 while the L2 circuit breaker is open, else 0",
        "",
        None,
        |s| {
            let now = s.clock.now_millis();
            s.tiers.l2.as_ref().map_or_else(Vec::new, |l2| {
                vec![("", u64::from(l2.breaker.state(now) == BreakerState::Open))]
            })
        },
    );
    observable_gauge(
        meter,
        weak,
        "tower_cache.health",
        "1 for the cache's current health status, 0 for the others",
        "",
        Some("status"),
        |s| {
            let current = Cache {
                shared: Arc::clone(s),
            }
            .health()
            .status;
            [
                HealthStatus::Healthy,
                HealthStatus::Warning,
                HealthStatus::Degraded,
            ]
            .into_iter()
            .map(|status| (status.as_str(), u64::from(current == status)))
            .collect()
        },
    );
    hit_ratio_gauges(meter, weak);
}

/// Reads one ratio of a stats snapshot.
type RatioOf = fn(&crate::Stats) -> f64;

/// `tower_cache.hit_ratio` and `tower_cache.window.hit_ratio`, from a
/// `Cache::stats` snapshot: the share of lookups answered without the
/// origin, since start and over the last five minutes.
fn hit_ratio_gauges(meter: &Meter, weak: &Weak<Shared>) {
    let ratios: [(&'static str, &'static str, RatioOf); 2] = [
        (
            "tower_cache.hit_ratio",
            "Lookups answered from storage (fresh or stale) over all lookups, since start or reset",
            |st| st.hit_ratio,
        ),
        (
            "tower_cache.window.hit_ratio",
            "Lookups answered from storage over all lookups in the last five minutes",
            |st| st.window.hit_ratio,
        ),
    ];
    for (name, description, read) in ratios {
        let w = weak.clone();
        meter
            .f64_observable_gauge(name)
            .with_description(description)
            .with_unit("1")
            .with_callback(move |o| {
                if let Some(shared) = w.upgrade() {
                    o.observe(read(&Cache { shared }.stats()), &[]);
                }
            })
            .build();
    }
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
    read: impl Fn(&Arc<Shared>) -> Series + Send + Sync + 'static,
) {
    let w = weak.clone();
    meter
        .u64_observable_counter(name)
        .with_description(description)
        .with_callback(move |o| {
            let Some(s) = w.upgrade() else { return };
            for (value, n) in read(&s) {
                o.observe(n, &attributes(key, value));
            }
        })
        .build();
}

/// An observable gauge read from the cache at collection time, like
/// [`observable_counter`]; `unit` is left out when empty.
fn observable_gauge(
    meter: &Meter,
    weak: &Weak<Shared>,
    name: &'static str,
    description: &'static str,
    unit: &'static str,
    key: Option<&'static str>,
    read: impl Fn(&Arc<Shared>) -> Series + Send + Sync + 'static,
) {
    let w = weak.clone();
    let mut gauge = meter
        .u64_observable_gauge(name)
        .with_description(description);
    if !unit.is_empty() {
        gauge = gauge.with_unit(unit);
    }
    gauge
        .with_callback(move |o| {
            let Some(s) = w.upgrade() else { return };
            for (value, n) in read(&s) {
                o.observe(n, &attributes(key, value));
            }
        })
        .build();
}

/// One series' attributes: `key=value`, or none without a key.
fn attributes(key: Option<&'static str>, value: &'static str) -> Vec<KeyValue> {
    key.map(|k| KeyValue::new(k, value)).into_iter().collect()
}

fn promotions(_s: &Shared) -> u64 {
    #[cfg(feature = "redis")]
    if let Some(l2) = &_s.tiers.l2 {
        return l2.counters.promotions.get();
    }
    0
}

/// The upstream breakers by label, for every label whose breaker has
/// opened at least once (a bounded set, like the labels):
/// `tower_cache.upstream.breaker.state` (1 for the current state, 0 for
/// the others), `tower_cache.upstream.breaker.opened_timestamp` (while not
/// closed: when it opened, Unix seconds) and
/// `tower_cache.upstream.breaker.opens`.
fn upstream_breakers(meter: &Meter, weak: &Weak<Shared>) {
    let w = weak.clone();
    meter
        .u64_observable_gauge("tower_cache.upstream.breaker.state")
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
                    BreakerState::Closed,
                    BreakerState::Open,
                    BreakerState::HalfOpen,
                ] {
                    o.observe(
                        u64::from(current == state),
                        &[
                            KeyValue::new("label", label.clone()),
                            KeyValue::new("state", state.as_str()),
                        ],
                    );
                }
            }
        })
        .build();
    let w = weak.clone();
    meter
        .f64_observable_gauge("tower_cache.upstream.breaker.opened_timestamp")
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
                        KeyValue::new("label", s.obs.labels.name(i).to_string()),
                        KeyValue::new("state", st.state.as_str()),
                    ],
                );
            }
        })
        .build();
    let w = weak.clone();
    meter
        .u64_observable_counter("tower_cache.upstream.breaker.opens")
        .with_description("Upstream circuit breaker transitions to open, by label")
        .with_callback(move |o| {
            let Some(s) = w.upgrade() else { return };
            for (i, b) in s.breakers.ever_opened() {
                o.observe(
                    b.opens(),
                    &[KeyValue::new("label", s.obs.labels.name(i).to_string())],
                );
            }
        })
        .build();
}
