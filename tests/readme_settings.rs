//! The README's "Configuration at a glance" table against the builder:
//! every setting the table names is a `CacheBuilder` method, every method
//! is in the table, and every default the table quotes is the value of the
//! builder's `DEFAULT_*` constant. Methods are read from the source of
//! `src/builder.rs` (`pub fn NAME`), so settings behind features count
//! whatever features this test is built with.

use std::collections::BTreeSet;
use std::time::Duration;

use tower_tiered_cache::builder::*;
use tower_tiered_cache::HealthThresholds;

fn read(path: &str) -> String {
    let path = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One row of the settings table: the setting names of its first column
/// (`route(Route::…)` names `route`) and its default column.
#[derive(Debug)]
struct Row {
    names: Vec<String>,
    default: String,
    line: String,
}

/// The rows of the table under `## Configuration at a glance`; topic rows
/// (no name in backticks) are skipped.
fn settings_table(readme: &str) -> Vec<Row> {
    let start = readme
        .find("## Configuration at a glance")
        .expect("the README has a \"Configuration at a glance\" section");
    let section = &readme[start..];
    let lines = section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'));
    let mut rows = Vec::new();
    for line in lines.skip(2) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| a | b | c |" splits into ["", a, b, c, ""].
        assert!(cells.len() >= 4, "a row with too few cells: {line}");
        let names = backticked(cells[1])
            .into_iter()
            .map(|code| {
                let name: String = code
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                assert!(!name.is_empty(), "`{code}` names no setting: {line}");
                name
            })
            .collect::<Vec<_>>();
        if !names.is_empty() {
            rows.push(Row {
                names,
                default: cells[2].to_owned(),
                line: line.to_owned(),
            });
        }
    }
    rows
}

/// The spans of `text` in backticks.
fn backticked(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// The `pub fn` names of `src/builder.rs`, doc comments excepted.
fn builder_methods() -> BTreeSet<String> {
    read("src/builder.rs")
        .lines()
        .map(str::trim_start)
        .filter_map(|l| l.strip_prefix("pub fn "))
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn every_setting_the_readme_names_is_a_builder_method() {
    let methods = builder_methods();
    assert!(
        methods.contains("l1_capacity_bytes") && methods.contains("build"),
        "could not read the builder's methods: {methods:?}"
    );
    let rows = settings_table(&read("README.md"));
    assert!(rows.len() > 20, "could not read the table: {rows:?}");
    let unknown: Vec<&String> = rows
        .iter()
        .flat_map(|r| &r.names)
        .filter(|n| !methods.contains(*n))
        .collect();
    assert!(
        unknown.is_empty(),
        "the README's settings table names settings CacheBuilder does not have: {unknown:?}"
    );
}

#[test]
fn every_builder_method_is_in_the_readme() {
    let rows = settings_table(&read("README.md"));
    let named: BTreeSet<&String> = rows.iter().flat_map(|r| &r.names).collect();
    let missing: Vec<String> = builder_methods()
        .into_iter()
        .filter(|m| m != "build" && !named.contains(m))
        .collect();
    assert!(
        missing.is_empty(),
        "CacheBuilder methods missing from the README's settings table: {missing:?}"
    );
}

/// A duration as the README writes it: `50 ms`, `30 s`, `10 min`, `24 h`.
fn dur(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_millis() != 0 || (secs == 0 && !d.is_zero()) {
        format!("{} ms", d.as_millis())
    } else if secs >= 2 * 3600 && secs.is_multiple_of(3600) {
        format!("{} h", secs / 3600)
    } else if secs >= 600 && secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

/// A size as the README writes it: `64 KiB`, `1 MiB`.
fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n.is_multiple_of(1 << 20) => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n.is_multiple_of(1 << 10) => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// A count as the README writes it: `64`, `1024`, `10 000`.
fn count(n: usize) -> String {
    if n < 10_000 {
        return n.to_string();
    }
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn on_off(on: bool) -> String {
    if on { "on" } else { "off" }.to_owned()
}

/// What the README's default column must say for each setting, rendered
/// from the builder's constants.
fn expected_defaults() -> Vec<(&'static str, Vec<String>)> {
    let health = HealthThresholds::default();
    #[allow(unused_mut)]
    let mut expected = vec![
        ("mode", vec![format!("`{DEFAULT_MODE:?}`")]),
        ("l1_capacity_bytes", vec![bytes(DEFAULT_L1_CAPACITY_BYTES)]),
        (
            "l1_max_entry_bytes",
            vec![format!(
                "`max_body_bytes` + {}",
                bytes(DEFAULT_L1_ENTRY_OVERHEAD_BYTES)
            )],
        ),
        ("max_body_bytes", vec![bytes(DEFAULT_MAX_BODY_BYTES)]),
        ("max_variants", vec![count(DEFAULT_MAX_VARIANTS)]),
        ("l1_write_through", vec![DEFAULT_L1_WRITE_THROUGH.to_string()]),
        ("l1_admission", vec![format!("`{DEFAULT_L1_ADMISSION:?}`")]),
        ("set_cookie", vec![format!("`{DEFAULT_SET_COOKIE:?}`")]),
        ("share_authorized", vec![DEFAULT_SHARE_AUTHORIZED.to_string()]),
        ("store_server_errors", vec![DEFAULT_STORE_SERVER_ERRORS.to_string()]),
        (
            "key_scheme",
            vec![format!(
                "{DEFAULT_KEY_SCHEME} / {DEFAULT_KEY_AUTHORITY} / {DEFAULT_SORT_QUERY}"
            )],
        ),
        (
            "partition_by_credentials",
            vec![on_off(DEFAULT_PARTITION_BY_CREDENTIALS)],
        ),
        (
            "heuristic_fraction",
            vec![format!(
                "{DEFAULT_HEURISTIC_FRACTION} / {}",
                dur(DEFAULT_HEURISTIC_MAX)
            )],
        ),
        (
            "default_stale_while_revalidate",
            vec![format!(
                "{} / {}",
                dur(DEFAULT_STALE_WHILE_REVALIDATE),
                dur(DEFAULT_STALE_IF_ERROR)
            )],
        ),
        (
            "keep_for_revalidation",
            vec![dur(DEFAULT_KEEP_FOR_REVALIDATION)],
        ),
        (
            "targeted_cache_control",
            vec![format!("`{}`", DEFAULT_TARGETED_CACHE_CONTROL.join("`, `"))],
        ),
        (
            "strip_targeted_cache_control",
            vec![DEFAULT_STRIP_TARGETED_CACHE_CONTROL.to_string()],
        ),
        (
            "request_cache_control",
            vec![format!("`{DEFAULT_REQUEST_CACHE_CONTROL:?}`")],
        ),
        (
            "stale_extension",
            vec![format!(
                "{DEFAULT_STALE_EXTENSION_FACTOR} × TTL, {DEFAULT_STALE_EXTENSION_TIMES} times"
            )],
        ),
        (
            "eager_refresh",
            vec![format!(
                "off (fraction {DEFAULT_EAGER_REFRESH_FRACTION}, {DEFAULT_EAGER_REFRESH_MIN_READS} reads)"
            )],
        ),
        (
            "adaptive_ttl",
            vec![format!(
                "{} (×{DEFAULT_ADAPTIVE_HOT_FACTOR} over {DEFAULT_ADAPTIVE_HOT_AFTER} reads, \
                 ×{DEFAULT_ADAPTIVE_COLD_FACTOR} under {DEFAULT_ADAPTIVE_COLD_UNDER}, per {}; \
                 {} to {}; {} keys; one read in {DEFAULT_ADAPTIVE_READ_SAMPLE} past the first few)",
                DEFAULT_ADAPTIVE_TTL.map_or("off", |_| "on"),
                dur(DEFAULT_ADAPTIVE_WINDOW),
                dur(DEFAULT_ADAPTIVE_MIN_TTL),
                dur(DEFAULT_ADAPTIVE_MAX_TTL),
                count(DEFAULT_ADAPTIVE_TRACKED_KEYS)
            )],
        ),
        ("upstream_timeout", vec![dur(DEFAULT_UPSTREAM_TIMEOUT)]),
        ("max_in_flight", vec![count(DEFAULT_MAX_IN_FLIGHT)]),
        ("hit_for_pass", vec![dur(DEFAULT_HIT_FOR_PASS)]),
        (
            "refresh_timeout",
            vec![format!(
                "{} / {} (at most {})",
                dur(DEFAULT_REFRESH_TIMEOUT),
                count(DEFAULT_MAX_CONCURRENT_REFRESHES),
                count(MAX_CONCURRENCY)
            )],
        ),
        (
            "circuit_breaker",
            vec![format!(
                "{DEFAULT_BREAKER_FAILURES} failures, {}",
                dur(DEFAULT_BREAKER_OPEN_FOR)
            )],
        ),
        (
            "max_labels",
            vec![format!(
                "{} (at most {})",
                count(DEFAULT_MAX_LABELS),
                count(MAX_LABELS_LIMIT)
            )],
        ),
        (
            "log_level",
            vec![format!(
                "`{DEFAULT_LOG_LEVEL:?}` / {}",
                dur(DEFAULT_SLOW_THRESHOLD)
            )],
        ),
        (
            "health_thresholds",
            vec![
                format!("hit ratio {} %", health.degraded_hit_ratio * 100.0),
                format!("after {} lookups", health.min_requests),
                format!("mean {}", dur(health.degraded_mean_latency)),
                format!("p95 {}", dur(health.warning_p95)),
            ],
        ),
        (
            "refresh_hot",
            vec![format!(
                "off (top {DEFAULT_REFRESH_HOT_TOP_N}, every {}; top at most {}, every at most {})",
                dur(DEFAULT_REFRESH_HOT_EVERY),
                count(MAX_REFRESH_HOT_TOP_N),
                dur(MAX_REFRESH_HOT_EVERY)
            )],
        ),
        ("hot_key_sample", vec![DEFAULT_HOT_KEY_SAMPLE.to_string()]),
        (
            "prefetch_queue",
            vec![format!(
                "{} / {} / {}",
                count(DEFAULT_PREFETCH_QUEUE),
                count(DEFAULT_MAX_CONCURRENT_PREFETCHES),
                dur(DEFAULT_PREFETCH_TIMEOUT)
            )],
        ),
        ("observability", vec![on_off(DEFAULT_OBSERVABILITY)]),
        ("hit_timing_sample", vec![DEFAULT_HIT_TIMING_SAMPLE.to_string()]),
        ("span_level", vec![format!("`{DEFAULT_SPAN_LEVEL}`")]),
        (
            "tag_fn",
            vec![
                format!(
                    "`{}` / `{}` headers",
                    TAG_HEADERS[0], TAG_HEADERS[1]
                ),
                format!(
                    "at most {} per response, {} each",
                    MAX_TAGS_PER_RESPONSE,
                    bytes(MAX_TAG_BYTES as u64)
                ),
            ],
        ),
    ];
    #[cfg(feature = "redis")]
    expected.extend([
        ("namespace", vec![format!("`{DEFAULT_NAMESPACE}`")]),
        (
            "promote_after",
            vec![format!(
                "{DEFAULT_PROMOTE_AFTER} / {}",
                dur(DEFAULT_PROMOTION_WINDOW)
            )],
        ),
        (
            "l2_timeout",
            vec![format!(
                "{} / {DEFAULT_L2_BREAKER_FAILURES} failures, {}",
                dur(DEFAULT_L2_TIMEOUT),
                dur(DEFAULT_L2_BREAKER_OPEN_FOR)
            )],
        ),
        ("l2_write_queue", vec![count(DEFAULT_L2_WRITE_QUEUE)]),
        (
            "l1_max_ttl",
            vec![DEFAULT_L1_MAX_TTL.map_or("no bound".to_owned(), dur)],
        ),
        (
            "l2_invalidation_log_len",
            vec![count(DEFAULT_L2_INVALIDATION_LOG_LEN)],
        ),
        (
            "distributed_coalescing",
            vec![format!(
                "{} / `upstream_timeout`",
                on_off(DEFAULT_DISTRIBUTED_COALESCING)
            )],
        ),
    ]);
    #[cfg(all(feature = "redis", feature = "compression"))]
    expected.push((
        "compression_threshold",
        vec![bytes(DEFAULT_COMPRESSION_THRESHOLD as u64)],
    ));
    expected
}

#[test]
fn the_readme_quotes_the_builders_defaults() {
    let rows = settings_table(&read("README.md"));
    let mut wrong = Vec::new();
    for (setting, texts) in expected_defaults() {
        let row = rows
            .iter()
            .find(|r| r.names.iter().any(|n| n == setting))
            .unwrap_or_else(|| panic!("no README row for `{setting}`"));
        // The tag limits are quoted in the description column.
        let haystack = if setting == "tag_fn" {
            &row.line
        } else {
            &row.default
        };
        for text in texts {
            if !haystack.contains(&text) {
                wrong.push(format!("`{setting}`: expected {text:?} in {haystack:?}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "the README's defaults differ from the builder's constants:\n{}",
        wrong.join("\n")
    );
}

/// The renderings the check relies on.
#[test]
fn renderings() {
    assert_eq!(dur(Duration::from_millis(50)), "50 ms");
    assert_eq!(dur(Duration::from_secs(30)), "30 s");
    assert_eq!(dur(Duration::from_secs(60)), "60 s");
    assert_eq!(dur(Duration::from_secs(600)), "10 min");
    assert_eq!(dur(Duration::from_secs(86_400)), "24 h");
    assert_eq!(dur(Duration::ZERO), "0 s");
    assert_eq!(bytes(64 << 20), "64 MiB");
    assert_eq!(bytes(1024), "1 KiB");
    assert_eq!(count(1024), "1024");
    assert_eq!(count(10_000), "10 000");
    assert_eq!(count(1_234_567), "1 234 567");
}
