//! A load generator: GETs of Zipf-distributed keys against any base URL for
//! a set time, `--concurrency` requests at a time, with a progress bar. It
//! prints the hit ratio, the origin calls saved and latency percentiles,
//! and writes an SVG chart of the hit ratio and the p99 latency per second.
//!
//! ```text
//! cargo run --release --example origin -- --listen 127.0.0.1:8000 --delay 50ms
//! cargo run --release --all-features --example proxy -- --listen 127.0.0.1:8080 --upstream http://127.0.0.1:8000
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8080 --duration 30s --warmup 5s --svg docs/loadgen.svg
//! ```
//!
//! Flags (defaults in brackets): `--url BASE` [http://127.0.0.1:8080],
//! `--duration D` [10s], `--warmup D` [0s: load sent first and left out of
//! every figure], `--keys N` [1000], `--zipf S` [1.0], `--concurrency C`
//! [32], `--path-template T` [/k/{i}: `{i}` is the key's rank, 0 the most
//! popular], `--seed N` [1], `--svg PATH` [loadgen.svg].
//!
//! Where the answers came from is read from each response's `Cache-Status`
//! (RFC 9211; its last entry, the cache nearest to this client): `hit` is
//! a hit, `fwd=...` went forward, `fwd=...; collapsed` waited for another
//! request's origin call. Without the header (a server with no such cache)
//! the hit ratio and the origin calls saved are reported as unknown.
//! Plain `http://` only (HTTP/1.1 over hyper-util's client).

#[path = "support/load.rs"]
mod load;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use load::{flag_pairs, parse, parse_duration, SplitMix64, Zipf};
use plotters::prelude::*;
use tokio::task::JoinSet;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// The longest one request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The command line.
pub(crate) struct Args {
    url: String,
    duration: Duration,
    warmup: Duration,
    keys: usize,
    zipf: f64,
    concurrency: usize,
    path_template: String,
    seed: u64,
    svg: PathBuf,
}

const USAGE: &str = "loadgen [--url BASE] [--duration 10s] [--warmup 0s] [--keys 1000] \
                     [--zipf 1.0] [--concurrency 32] [--path-template /k/{i}] [--seed 1] \
                     [--svg loadgen.svg]";

/// The flags (without the program's name).
pub(crate) fn parse_args(it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        url: "http://127.0.0.1:8080".to_owned(),
        duration: Duration::from_secs(10),
        warmup: Duration::ZERO,
        keys: 1000,
        zipf: 1.0,
        concurrency: 32,
        path_template: "/k/{i}".to_owned(),
        seed: 1,
        svg: PathBuf::from("loadgen.svg"),
    };
    for (flag, v) in flag_pairs(it, USAGE)? {
        match flag.as_str() {
            "--url" => a.url = v.trim_end_matches('/').to_owned(),
            "--duration" => a.duration = parse_duration(&flag, &v)?,
            "--warmup" => a.warmup = parse_duration(&flag, &v)?,
            "--keys" => a.keys = parse(&flag, &v)?,
            "--zipf" => a.zipf = parse(&flag, &v)?,
            "--concurrency" => a.concurrency = parse(&flag, &v)?,
            "--path-template" => a.path_template = v,
            "--seed" => a.seed = parse(&flag, &v)?,
            "--svg" => a.svg = PathBuf::from(v),
            _ => return Err(format!("unknown flag {flag}; usage: {USAGE}")),
        }
    }
    if a.duration.is_zero() || a.keys == 0 || a.concurrency == 0 {
        return Err("--duration, --keys and --concurrency must be more than 0".to_owned());
    }
    if !(a.zipf.is_finite() && a.zipf >= 0.0) {
        return Err(format!("--zipf {}: must be 0 or more", a.zipf));
    }
    if !a.url.starts_with("http://") {
        return Err(format!("--url {}: plain http:// URLs only", a.url));
    }
    Ok(a)
}

// ---------------------------------------------------------------------------
// Load

/// Where an answer came from, by its `Cache-Status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// `hit`: answered from storage (fresh or stale).
    Hit,
    /// `fwd=...; collapsed`: answered from another request's origin call.
    Coalesced,
    /// `fwd=...`: went to the origin.
    Forwarded,
    /// A `Cache-Status` with neither (e.g. an `only-if-cached` 504).
    Other,
    /// No `Cache-Status` at all.
    Unknown,
    /// No answer: a transport error or [`REQUEST_TIMEOUT`].
    Failed,
}

impl Outcome {
    /// Reads the last entry of `Cache-Status`, the cache nearest to the
    /// client (RFC 9211 lists the caches from the origin's side).
    pub(crate) fn of(headers: &HeaderMap) -> Outcome {
        let Some(last) = headers
            .get_all("cache-status")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .last()
        else {
            return Outcome::Unknown;
        };
        let params: Vec<&str> = last.split(';').map(str::trim).skip(1).collect();
        let has = |name: &str| params.contains(&name);
        if has("hit") {
            Outcome::Hit
        } else if !params.iter().any(|p| p.starts_with("fwd=")) {
            Outcome::Other
        } else if has("collapsed") {
            Outcome::Coalesced
        } else {
            Outcome::Forwarded
        }
    }
}

/// One measured request.
struct Sample {
    /// When it was sent, from the start of the measurement.
    at: Duration,
    latency: Duration,
    /// The HTTP status; 0 when there was no answer.
    status: u16,
    outcome: Outcome,
}

/// Counters the progress bar shows while the load runs.
#[derive(Default)]
struct Live {
    requests: AtomicU64,
    hits: AtomicU64,
    classified: AtomicU64,
}

/// When the warm-up ends and when the load stops.
#[derive(Clone, Copy)]
struct Window {
    measure_from: Instant,
    end: Instant,
}

/// One worker: requests one key after another until the window ends.
async fn worker(
    client: HttpClient,
    uris: Arc<Vec<Uri>>,
    zipf: Arc<Zipf>,
    mut rng: SplitMix64,
    window: Window,
    live: Arc<Live>,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    loop {
        let sent = Instant::now();
        if sent >= window.end {
            return samples;
        }
        let uri = uris[zipf.sample(&mut rng)].clone();
        let (status, outcome) = tokio::time::timeout(REQUEST_TIMEOUT, fetch(&client, uri))
            .await
            .unwrap_or((0, Outcome::Failed));
        let latency = sent.elapsed();
        if sent < window.measure_from {
            continue;
        }
        live.requests.fetch_add(1, Ordering::Relaxed);
        if matches!(
            outcome,
            Outcome::Hit | Outcome::Coalesced | Outcome::Forwarded
        ) {
            live.classified.fetch_add(1, Ordering::Relaxed);
        }
        if outcome == Outcome::Hit {
            live.hits.fetch_add(1, Ordering::Relaxed);
        }
        samples.push(Sample {
            at: sent - window.measure_from,
            latency,
            status,
            outcome,
        });
    }
}

/// One GET, body read to the end: the status and the outcome.
async fn fetch(client: &HttpClient, uri: Uri) -> (u16, Outcome) {
    let Ok(resp) = client.get(uri).await else {
        return (0, Outcome::Failed);
    };
    let status = resp.status().as_u16();
    let outcome = Outcome::of(resp.headers());
    match resp.into_body().collect().await {
        Ok(_) => (status, outcome),
        Err(_) => (0, Outcome::Failed),
    }
}

/// Runs the load, showing progress, and returns every measured sample.
async fn run(a: &Args) -> Result<Vec<Sample>, BoxError> {
    let uris = (0..a.keys)
        .map(|i| {
            let path = a.path_template.replace("{i}", &i.to_string());
            format!("{}{path}", a.url).parse::<Uri>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let uris = Arc::new(uris);
    let zipf = Arc::new(Zipf::new(a.keys, a.zipf));
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(a.concurrency)
        .build_http();
    let live = Arc::new(Live::default());
    let start = Instant::now();
    let window = Window {
        measure_from: start + a.warmup,
        end: start + a.warmup + a.duration,
    };
    let mut workers = JoinSet::new();
    for w in 0..a.concurrency {
        let rng = SplitMix64(a.seed.wrapping_mul(0x1000_0001).wrapping_add(w as u64));
        workers.spawn(worker(
            client.clone(),
            Arc::clone(&uris),
            Arc::clone(&zipf),
            rng,
            window,
            Arc::clone(&live),
        ));
    }

    let total = a.warmup + a.duration;
    let bar = ProgressBar::new(total.as_millis() as u64).with_style(
        ProgressStyle::with_template("[{elapsed_precise}] {wide_bar} {msg}")
            .map_err(|e| e.to_string())?,
    );
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while Instant::now() < window.end {
        tick.tick().await;
        let now = Instant::now();
        bar.set_position(now.saturating_duration_since(start).as_millis() as u64);
        bar.set_message(if now < window.measure_from {
            "warming up".to_owned()
        } else {
            let requests = live.requests.load(Ordering::Relaxed);
            let ratio = ratio(
                live.hits.load(Ordering::Relaxed),
                live.classified.load(Ordering::Relaxed),
            );
            format!("{requests} requests, hit ratio {ratio}")
        });
    }
    bar.finish_and_clear();

    let mut samples = Vec::new();
    while let Some(done) = workers.join_next().await {
        samples.extend(done?);
    }
    Ok(samples)
}

// ---------------------------------------------------------------------------
// Report

/// `part / whole` as a percentage, or "unknown" when `whole` is 0.
fn ratio(part: u64, whole: u64) -> String {
    if whole == 0 {
        "unknown".to_owned()
    } else {
        format!("{:.1} %", part as f64 * 100.0 / whole as f64)
    }
}

/// The `q` quantile of sorted latencies (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// The counts of one slice of the run (all of it, or one second).
#[derive(Default)]
pub(crate) struct Tally {
    /// Requests sent.
    pub(crate) requests: u64,
    /// Requests without an answer ([`Outcome::Failed`]).
    pub(crate) failed: u64,
    /// Answers with a status other than 2xx or 3xx.
    pub(crate) not_ok: u64,
    /// [`Outcome::Hit`] answers.
    pub(crate) hits: u64,
    /// [`Outcome::Coalesced`] answers.
    pub(crate) coalesced: u64,
    /// [`Outcome::Forwarded`] answers.
    pub(crate) forwarded: u64,
    /// [`Outcome::Unknown`] answers.
    pub(crate) unknown: u64,
    /// Latencies of the requests that were answered, sorted.
    pub(crate) latencies: Vec<Duration>,
}

impl Tally {
    fn of<'a>(samples: impl Iterator<Item = &'a Sample>) -> Tally {
        let mut t = Tally::default();
        for s in samples {
            t.requests += 1;
            match s.outcome {
                Outcome::Hit => t.hits += 1,
                Outcome::Coalesced => t.coalesced += 1,
                Outcome::Forwarded => t.forwarded += 1,
                Outcome::Unknown => t.unknown += 1,
                Outcome::Failed => t.failed += 1,
                Outcome::Other => {}
            }
            if s.status != 0 {
                t.latencies.push(s.latency);
                if !(200..400).contains(&s.status) {
                    t.not_ok += 1;
                }
            }
        }
        t.latencies.sort_unstable();
        t
    }

    /// Hits among the answers that say whether they were hits.
    pub(crate) fn hit_ratio(&self) -> Option<f64> {
        let classified = self.hits + self.coalesced + self.forwarded;
        (classified > 0).then(|| self.hits as f64 / classified as f64)
    }

    fn p99(&self) -> Option<Duration> {
        (!self.latencies.is_empty()).then(|| quantile(&self.latencies, 0.99))
    }
}

/// The totals, one line each.
pub(crate) fn report(a: &Args, all: &Tally) -> String {
    let classified = all.hits + all.coalesced + all.forwarded;
    let saved = all.hits + all.coalesced;
    let l = &all.latencies;
    let rows = [
        (
            "url",
            format!(
                "{} ({} keys, zipf s = {}, {} at a time)",
                a.url, a.keys, a.zipf, a.concurrency
            ),
        ),
        (
            "measured",
            format!(
                "{} s (after a warm-up of {} s)",
                a.duration.as_secs_f64(),
                a.warmup.as_secs_f64()
            ),
        ),
        (
            "requests",
            format!(
                "{} ({:.0}/s), {} without an answer, {} not 2xx/3xx",
                all.requests,
                all.requests as f64 / a.duration.as_secs_f64(),
                all.failed,
                all.not_ok
            ),
        ),
        (
            "answers",
            format!(
                "{} hit, {} coalesced, {} to the origin, {} without Cache-Status",
                all.hits, all.coalesced, all.forwarded, all.unknown
            ),
        ),
        (
            "hit ratio",
            format!(
                "{}   (hit / (hit + coalesced + to the origin), from Cache-Status)",
                ratio(all.hits, classified)
            ),
        ),
        (
            "origin calls saved",
            if classified == 0 {
                "unknown   (no response carried Cache-Status)".to_owned()
            } else {
                format!(
                    "{saved} of {} requests ({})   (hit + coalesced: answers that did not reach the origin)",
                    all.requests,
                    ratio(saved, all.requests)
                )
            },
        ),
        (
            "latency",
            format!(
                "p50 {}  p95 {}  p99 {}  max {}",
                ms(quantile(l, 0.50)),
                ms(quantile(l, 0.95)),
                ms(quantile(l, 0.99)),
                ms(l.last().copied().unwrap_or_default())
            ),
        ),
    ];
    rows.iter()
        .map(|(label, value)| format!("{label:<18} {value}\n"))
        .collect()
}

/// One second of the measurement, as the chart shows it.
struct Second {
    /// Hit ratio (%), if any answer said.
    hit_ratio: Option<f64>,
    /// p99 latency (ms), if anything was answered.
    p99_ms: Option<f64>,
}

/// Hit ratio and p99 per second of the measurement.
fn per_second(a: &Args, samples: &[Sample]) -> Vec<Second> {
    let seconds = a.duration.as_secs_f64().ceil() as usize;
    let mut buckets: Vec<Vec<&Sample>> = (0..seconds).map(|_| Vec::new()).collect();
    for s in samples {
        let i = (s.at.as_secs() as usize).min(seconds - 1);
        buckets[i].push(s);
    }
    buckets
        .into_iter()
        .map(|b| {
            let t = Tally::of(b.into_iter());
            Second {
                hit_ratio: t.hit_ratio().map(|r| r * 100.0),
                p99_ms: t.p99().map(|d| d.as_secs_f64() * 1000.0),
            }
        })
        .collect()
}

fn write_svg(a: &Args, series: &[Second]) -> Result<(), BoxError> {
    let secs = series.len() as f64;
    let max_p99 = series
        .iter()
        .filter_map(|s| s.p99_ms)
        .fold(1.0f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(&a.svg, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: {} keys, zipf {}, {} at a time",
                a.url, a.keys, a.zipf, a.concurrency
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0f64..secs, 0f64..100f64)?
        .set_secondary_coord(0f64..secs, 0f64..max_p99);
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("hit ratio (%)")
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("p99 latency (ms)")
        .draw()?;
    let points = |pick: fn(&Second) -> Option<f64>| {
        series
            .iter()
            .enumerate()
            .filter_map(move |(i, s)| pick(s).map(|v| (i as f64 + 0.5, v)))
    };
    chart
        .draw_series(LineSeries::new(
            points(|s| s.hit_ratio),
            BLUE.stroke_width(2),
        ))?
        .label("hit ratio (%), left")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_secondary_series(LineSeries::new(points(|s| s.p99_ms), RED.stroke_width(2)))?
        .label("p99 latency (ms), right")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::MiddleRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Runs the load of `a`, prints the report, writes the chart, and returns
/// the totals.
pub(crate) async fn run_and_report(a: &Args) -> Result<Tally, BoxError> {
    let samples = run(a).await?;
    let all = Tally::of(samples.iter());
    print!("{}", report(a, &all));
    write_svg(a, &per_second(a, &samples))?;
    println!("{:<18} {}", "chart", a.svg.display());
    if all.latencies.is_empty() {
        return Err(format!("no request to {} was answered", a.url).into());
    }
    Ok(all)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let a = parse_args(std::env::args().skip(1))?;
    run_and_report(&a).await?;
    Ok(())
}
