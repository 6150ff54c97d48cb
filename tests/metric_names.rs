//! One naming scheme: the OpenTelemetry instruments and the Prometheus
//! exposition (`Cache::prometheus`, the admin service's `/metrics`) name
//! the same metrics, by the OpenTelemetry→Prometheus compatibility rules,
//! and the README's table lists each.
//!
//! After the same traffic (hits, misses, a pass, an upstream breaker left
//! open and, with the `redis` feature, an L2 tier), the instruments are
//! collected through an exporter of our own, their names translated (dots
//! to underscores, the unit's suffix: `s` → `_seconds`, `By` → `_bytes`,
//! `1` on a gauge → `_ratio`, annotations like `{request}` dropped; `_total`
//! for monotonic counters), their attribute keys likewise, and compared
//! with the families, types and label keys parsed from the exposition.
//! Instruments only OpenTelemetry has are listed in [`OTEL_ONLY`] (and in
//! the README's table, with the reason).
//!
//! Needs the `opentelemetry` feature (`cargo test --all-features`); the L2
//! test also needs `redis` and a `redis-server` binary (Debian:
//! `redis-server`), and fails without it.

#![cfg(feature = "opentelemetry")]

#[path = "support/meter.rs"]
mod meter;
#[cfg(feature = "redis")]
#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::collections::{BTreeMap, BTreeSet};

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use support::*;
use tower_tiered_cache::{Cache, CacheBuilder};

/// The instruments with no counterpart in the exposition, and why (the
/// README's table says the same). Each must be collected in the test, so
/// the list cannot outlive an instrument.
const OTEL_ONLY: [(&str, &str); 3] = [
    (
        "tower_cache.lookup.duration",
        "per result, tier and label; the exposition's histograms are the cache's two process-wide ones",
    ),
    (
        "tower_cache.upstream.duration",
        "recorded per upstream call only through OpenTelemetry",
    ),
    (
        "db.client.operation.duration",
        "the OpenTelemetry database semantic conventions' name, recorded per Redis command",
    ),
];

/// A metric family: its Prometheus type and every label key set its
/// series have.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Family {
    kind: &'static str,
    label_sets: BTreeSet<BTreeSet<String>>,
}

/// One collected instrument: name, unit, kind, attribute key sets.
#[derive(Debug, Clone)]
struct Instrument {
    name: String,
    unit: String,
    /// `counter` (a monotonic sum), `gauge` (a gauge or a non-monotonic
    /// sum) or `histogram`.
    kind: &'static str,
    key_sets: BTreeSet<BTreeSet<String>>,
}

fn key_set<'a>(kvs: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> BTreeSet<String> {
    kvs.map(|kv| kv.key.to_string()).collect()
}

fn describe<T>(data: &MetricData<T>) -> (&'static str, BTreeSet<BTreeSet<String>>) {
    match data {
        MetricData::Gauge(g) => (
            "gauge",
            g.data_points().map(|p| key_set(p.attributes())).collect(),
        ),
        MetricData::Sum(s) => (
            if s.is_monotonic() { "counter" } else { "gauge" },
            s.data_points().map(|p| key_set(p.attributes())).collect(),
        ),
        MetricData::Histogram(h) => (
            "histogram",
            h.data_points().map(|p| key_set(p.attributes())).collect(),
        ),
        MetricData::ExponentialHistogram(h) => (
            "histogram",
            h.data_points().map(|p| key_set(p.attributes())).collect(),
        ),
    }
}

/// Every instrument of an export.
fn all_instruments(metrics: &ResourceMetrics) -> Vec<Instrument> {
    let mut out = Vec::new();
    for scope in metrics.scope_metrics() {
        for m in scope.metrics() {
            let (kind, key_sets) = match m.data() {
                AggregatedMetrics::F64(d) => describe(d),
                AggregatedMetrics::U64(d) => describe(d),
                AggregatedMetrics::I64(d) => describe(d),
            };
            out.push(Instrument {
                name: m.name().to_owned(),
                unit: m.unit().to_owned(),
                kind,
                key_sets,
            });
        }
    }
    out
}

/// The Prometheus name of an instrument, by the OpenTelemetry→Prometheus
/// compatibility rules.
fn prometheus_name(i: &Instrument) -> String {
    let mut name = i.name.replace('.', "_");
    let suffix = match (i.unit.as_str(), i.kind) {
        ("s", _) => "seconds",
        ("By", _) => "bytes",
        ("1", "gauge") => "ratio",
        ("", _) => "",
        (u, _) if u.starts_with('{') && u.ends_with('}') => "",
        (u, _) => panic!("{}: no Prometheus suffix for unit {u:?}", i.name),
    };
    if !suffix.is_empty() && !name.ends_with(&format!("_{suffix}")) {
        name.push('_');
        name.push_str(suffix);
    }
    if i.kind == "counter" {
        name.push_str("_total");
    }
    name
}

/// The instruments as the families the exposition should have.
fn translated(instruments: &[Instrument]) -> BTreeMap<String, Family> {
    instruments
        .iter()
        .filter(|i| !OTEL_ONLY.iter().any(|(n, _)| *n == i.name))
        .map(|i| {
            let label_sets = i
                .key_sets
                .iter()
                .map(|keys| keys.iter().map(|k| k.replace('.', "_")).collect())
                .collect();
            let family = Family {
                kind: i.kind,
                label_sets,
            };
            (prometheus_name(i), family)
        })
        .collect()
}

/// The families of a text exposition: `# TYPE` lines, then each sample's
/// label keys (`le` left out of histogram buckets).
fn families(text: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            let kind = match kind {
                "counter" => "counter",
                "gauge" => "gauge",
                "histogram" => "histogram",
                other => panic!("{name}: type {other}"),
            };
            out.insert(
                name.to_owned(),
                Family {
                    kind,
                    label_sets: BTreeSet::new(),
                },
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let sample = line.split(' ').next().unwrap();
        let (name, labels) = match sample.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (sample, ""),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| out.get(*f).is_some_and(|f| f.kind == "histogram"))
            })
            .unwrap_or(name);
        // Label values here have no `,` or `=`; keys are before `=`.
        let keys: BTreeSet<String> = labels
            .split(',')
            .filter(|kv| !kv.is_empty())
            .map(|kv| kv.split_once('=').expect("key=value").0.to_owned())
            .filter(|k| k != "le")
            .collect();
        out.get_mut(family)
            .unwrap_or_else(|| panic!("{line}: no # TYPE for {family}"))
            .label_sets
            .insert(keys);
    }
    out
}

/// One row of the README's table of metrics.
#[derive(Debug)]
struct Row {
    otel: String,
    /// `None` for an instrument only OpenTelemetry has.
    prometheus: Option<String>,
    kind: String,
    labels: BTreeSet<String>,
}

/// The backticked words of a table cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The README's table of metrics: the rows after its header line.
fn readme_rows() -> Vec<Row> {
    let readme = include_str!("../README.md");
    let header = "| OpenTelemetry instrument | Prometheus metric | type | labels | meaning |";
    let start = readme
        .find(header)
        .unwrap_or_else(|| panic!("README: the table of metrics, headed by {header}"));
    readme[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').collect();
            assert_eq!(cells.len(), 5, "README row: {l}");
            let otel = ticked(cells[0]);
            assert_eq!(otel.len(), 1, "README row, first cell: {l}");
            Row {
                otel: otel[0].clone(),
                prometheus: ticked(cells[1]).into_iter().next(),
                kind: cells[2].trim().to_owned(),
                labels: ticked(cells[3]).into_iter().collect(),
            }
        })
        .collect()
}

/// The traffic both read: misses, hits, a pass, a stale entry served and
/// an upstream breaker that opened (and is still open).
async fn traffic(cache: &Cache, clock: &tower_tiered_cache::ManualClock) {
    let (origin, _log) = origin(|_, req| match req.uri().host() {
        Some("down.example") => response(504, &[], "down"),
        _ if req.uri().path() == "/nostore" => ok("no-store", "p"),
        _ => ok("max-age=1, stale-while-revalidate=60", "x"),
    });
    let svc = cached(cache, origin);
    for url in [
        "http://a.example/1",
        "http://a.example/1",
        "http://a.example/nostore",
        "http://b.example/2",
    ] {
        send(&svc, get(url)).await;
    }
    clock.advance(secs(2));
    send(&svc, get("http://a.example/1")).await;
    send(&svc, get("http://down.example/x")).await;
}

/// Builds a cache from `builder` with a meter, sends [`traffic`], and
/// compares what OpenTelemetry collected with the exposition. Returns the
/// instruments.
async fn compare(
    builder: CacheBuilder,
    clock: &tower_tiered_cache::ManualClock,
    l2: bool,
) -> Vec<Instrument> {
    let (provider, keep) = meter::provider(all_instruments);
    let cache = builder
        .clock(clock.clone())
        .hit_timing_sample(1)
        .circuit_breaker(1, secs(30))
        .meter(provider.meter("metric-names-test"))
        .build()
        .unwrap();
    traffic(&cache, clock).await;
    assert!(
        cache.stats().breaker_opens >= 1,
        "the traffic opens a breaker"
    );

    let instruments = meter::collect(&provider, &keep).await;
    let text = cache.prometheus();
    provider.shutdown().unwrap();

    for (name, why) in OTEL_ONLY {
        if l2 || !name.starts_with("db.") {
            assert!(
                instruments.iter().any(|i| i.name == name),
                "{name} ({why}) was not collected: {instruments:#?}"
            );
        }
    }
    let from_otel = translated(&instruments);
    let from_text = families(&text);
    let only_otel: Vec<_> = from_otel
        .keys()
        .filter(|k| !from_text.contains_key(*k))
        .collect();
    let only_text: Vec<_> = from_text
        .keys()
        .filter(|k| !from_otel.contains_key(*k))
        .collect();
    assert!(
        only_otel.is_empty() && only_text.is_empty(),
        "names drifted: only in OpenTelemetry (translated) {only_otel:?}, \
         only in the Prometheus exposition {only_text:?}"
    );
    for (name, family) in &from_otel {
        assert_eq!(
            family, &from_text[name],
            "{name}: OpenTelemetry (translated) vs the exposition"
        );
    }
    check_readme_rows(&instruments, &readme_rows());
    instruments
}

/// Every collected instrument has its row in the README's table, with its
/// Prometheus name (none for those only OpenTelemetry has), type and
/// labels (for those only OpenTelemetry has, at least the attributes
/// collected: `error.type` shows only on failures).
fn check_readme_rows(instruments: &[Instrument], rows: &[Row]) {
    for i in instruments {
        let row = rows
            .iter()
            .find(|r| r.otel == i.name)
            .unwrap_or_else(|| panic!("README: no row for {}", i.name));
        let only_otel = OTEL_ONLY.iter().any(|(n, _)| *n == i.name);
        let want = (!only_otel).then(|| prometheus_name(i));
        assert_eq!(row.prometheus, want, "README row of {}", i.name);
        assert_eq!(row.kind, i.kind, "README row of {}", i.name);
        let keys: BTreeSet<String> = i
            .key_sets
            .iter()
            .flatten()
            .map(|k| {
                if only_otel {
                    k.clone()
                } else {
                    k.replace('.', "_")
                }
            })
            .collect();
        if only_otel {
            assert!(
                keys.is_subset(&row.labels),
                "README row of {}: labels {keys:?}",
                i.name
            );
        } else {
            assert_eq!(row.labels, keys, "README row of {}: labels", i.name);
        }
    }
}

#[tokio::test]
async fn opentelemetry_and_prometheus_name_the_same_metrics() {
    let clock = clock();
    let instruments = compare(Cache::builder(), &clock, false).await;
    assert!(
        instruments.iter().all(|i| !i.name.contains(".l2.")),
        "no L2 metrics without an L2 tier"
    );
}

/// With an L2 tier, and every row of the README's table collected.
#[cfg(feature = "redis")]
#[tokio::test]
async fn with_an_l2_tier_too_and_the_readme_lists_nothing_else() {
    use redis_support::{require_redis, RedisServer};
    require_redis();
    let server = RedisServer::start();
    let clock = clock();
    let builder = Cache::builder()
        .redis(server.url())
        .namespace("metric-names")
        .l2_timeout(secs(2));
    let instruments = compare(builder, &clock, true).await;
    for row in readme_rows() {
        assert!(
            instruments.iter().any(|i| i.name == row.otel),
            "README lists {} which was not collected",
            row.otel
        );
    }
}
