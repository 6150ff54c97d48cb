//! A cache stampede: 1,000 concurrent requests for one cold key, against
//! tower-tiered-cache and the peer tower caching middlewares.
//!
//! Every side gets a fresh service and a fresh, empty cache in every round.
//! 1,000 tasks are spawned on a multi-thread tokio runtime with 2 worker
//! threads; each builds its request (`GET http://example.com/api/item?id=42`
//! with four typical headers, body `Empty<Bytes>`) and waits on a `watch`
//! channel. Once all 1,000 are parked the channel releases them at once;
//! each does `svc.clone().oneshot(req)` and reads the body to the end. A
//! request's latency runs from the release to the end of its body. The
//! origin sleeps 10 ms (`tokio::time::sleep`) and then sends the same 1 KiB
//! body with `Cache-Control: max-age=3600`; it counts its calls and notes
//! when the first one started and returned.
//!
//! Every response must be a 200 with the 1 KiB body: anything else (a
//! different status or body, a service or body error, a panic, or no answer
//! within 10 s) counts as an error.
//!
//! Per side, over [`ROUNDS`] rounds (interleaved: round 1 of every side,
//! then round 2, ...): origin calls per round (min and max), and the median
//! over rounds of each round's p50, p99 and max latency, of the time from the
//! release to the first origin call (`1st call`) and of the time from that
//! call's return to the last answer (`tail`: how long the fan-out to the
//! other 999 requests takes).
//! Sides, in table order:
//!
//! - `tiered`: `tower_tiered_cache::CacheLayer`, default builder
//!   (coalesces concurrent misses);
//! - `tower_http_cache`: `tower_http_cache::layer::CacheLayer` over its
//!   `InMemoryBackend`, TTL 3600 s (per-key stampede lock);
//! - `hitbox_broadcast`: `hitbox_tower::Cache` over `hitbox_moka` (bincode),
//!   with `BroadcastConcurrencyManager` and `PolicyConfig` concurrency 1,
//!   hitbox's opt-in dogpile prevention;
//! - `hitbox_default`: the same with the builder's default
//!   `NoopConcurrencyManager` and no concurrency limit (no coordination);
//! - `http_cache_tower_server`: `http_cache_tower_server::ServerCacheLayer`
//!   over `http_cache::MokaManager`, default options (no coordination);
//! - `http_cache_tower`: `http_cache_tower::HttpCacheLayer` over
//!   `http_cache::MokaManager`, default options (no coordination);
//! - `bare`: the origin alone, for reference (every request is an origin
//!   call; the latency floor of 1,000 tasks on 2 workers).
//!
//! Run with `cargo bench --bench stampede` from `bench-peers/` (a few
//! seconds once built; no criterion: it prints one table, and each side's
//! origin calls per round on stderr).

use std::convert::Infallible;
use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::{service_fn, Layer, Service, ServiceExt};

#[path = "../../benches/support/mod.rs"]
mod support;

use support::{body_buffer, median, origin_response, Origin};

const URI: &str = "http://example.com/api/item?id=42";
/// Concurrent requests per round.
const TASKS: usize = 1_000;
/// Rounds per side, each on a fresh service and cache.
const ROUNDS: usize = 21;
/// Worker threads of the multi-thread runtime.
const WORKERS: usize = 2;
/// The origin's latency.
const ORIGIN_DELAY: Duration = Duration::from_millis(10);
/// Bound on one round (release to the last answer).
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);

type Req = Request<Empty<Bytes>>;
type Proto = support::Proto<Empty<Bytes>>;

/// What the origin saw in one round.
#[derive(Default)]
struct OriginLog {
    calls: AtomicUsize,
    /// When the first call started and when that call returned.
    first_start: OnceLock<Instant>,
    first_end: OnceLock<Instant>,
}

/// The origin: logs its calls, sleeps [`ORIGIN_DELAY`], then answers with
/// the shared 1 KiB body, fresh for an hour. Generic over the request type
/// (hitbox hands its upstream `Request<BufferedBody<_>>`).
fn slow_origin<R: Send + 'static>(buf: Bytes, log: Arc<OriginLog>) -> impl Origin<R> {
    service_fn(move |_req: R| {
        log.calls.fetch_add(1, Ordering::Relaxed);
        let first = log.first_start.set(Instant::now()).is_ok();
        let log = log.clone();
        let body = buf.clone();
        async move {
            tokio::time::sleep(ORIGIN_DELAY).await;
            if first {
                let _ = log.first_end.set(Instant::now());
            }
            Ok::<_, Infallible>(origin_response(body))
        }
    })
}

/// What one round measured.
struct Round {
    origin_calls: usize,
    /// From the release to the first origin call, in ms.
    first_call_ms: f64,
    /// From the first origin call's return to the last answer, in ms.
    tail_ms: f64,
    /// Latency of each successful request, sorted.
    latencies: Vec<Duration>,
    errors: Vec<String>,
}

/// One request: waits for the release, then calls and reads the body to
/// the end. Returns the instant the body ended.
async fn one_request<S, B>(
    svc: S,
    req: Req,
    mut go: watch::Receiver<bool>,
    parked: Arc<AtomicUsize>,
    buf: Bytes,
) -> Result<Instant, String>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Debug,
    B: http_body::Body,
    B::Error: Debug,
{
    parked.fetch_add(1, Ordering::SeqCst);
    go.wait_for(|go| *go).await.map_err(|e| e.to_string())?;
    let resp = svc
        .oneshot(req)
        .await
        .map_err(|e| format!("service error: {e:?}"))?;
    if resp.status() != StatusCode::OK {
        return Err(format!("status {}", resp.status()));
    }
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body error: {e:?}"))?
        .to_bytes();
    if body != buf {
        return Err(format!("a body of {} bytes, not the origin's", body.len()));
    }
    Ok(Instant::now())
}

/// The rest of a round once its [`TASKS`] tasks are spawned: waits until
/// all are parked, releases them together through `tx`, and collects their
/// answers.
async fn release_and_collect(
    tx: watch::Sender<bool>,
    parked: &AtomicUsize,
    handles: Vec<JoinHandle<Result<Instant, String>>>,
    log: &OriginLog,
) -> Round {
    while parked.load(Ordering::SeqCst) < TASKS {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let release = Instant::now();
    tx.send_replace(true);

    let deadline = tokio::time::Instant::from_std(release) + ROUND_TIMEOUT;
    let mut latencies = Vec::with_capacity(TASKS);
    let mut errors = Vec::new();
    for h in handles {
        let abort = h.abort_handle();
        match tokio::time::timeout_at(deadline, h).await {
            Ok(Ok(Ok(end))) => latencies.push(end - release),
            Ok(Ok(Err(e))) => errors.push(e),
            Ok(Err(e)) => errors.push(format!("task failed: {e}")),
            Err(_) => {
                abort.abort();
                errors.push(format!("no answer within {ROUND_TIMEOUT:?}"));
            }
        }
    }
    latencies.sort();
    let ms = |from: Instant, to: Option<&Instant>| {
        to.map_or(f64::NAN, |t| {
            t.saturating_duration_since(from).as_secs_f64() * 1e3
        })
    };
    let last = latencies.last().map(|l| release + *l);
    Round {
        origin_calls: log.calls.load(Ordering::SeqCst),
        first_call_ms: ms(release, log.first_start.get()),
        tail_ms: log
            .first_end
            .get()
            .map_or(f64::NAN, |&e| ms(e, last.as_ref())),
        latencies,
        errors,
    }
}

/// Nearest-rank percentile of sorted `v`, in milliseconds (NaN if empty).
fn percentile_ms(v: &[Duration], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1].as_secs_f64() * 1e3
}

/// One side: how to build a fresh service (and cache) over an origin with
/// the given body, logging into the given `OriginLog`, and what it claims.
struct Side<F> {
    name: &'static str,
    coalesces: &'static str,
    make: F,
}

/// The sides behind one type, so that rounds can be interleaved.
trait Stampede {
    fn name(&self) -> &'static str;
    fn coalesces(&self) -> &'static str;
    /// One round on a fresh (cold) service and cache: [`TASKS`] tasks
    /// released together.
    fn round(&self, rt: &Runtime, proto: &Proto, buf: &Bytes) -> Round;
}

impl<F, S, B> Stampede for Side<F>
where
    F: Fn(Bytes, Arc<OriginLog>) -> S,
    S: Service<Req, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Debug + Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Debug + Send,
{
    fn name(&self) -> &'static str {
        self.name
    }

    fn coalesces(&self) -> &'static str {
        self.coalesces
    }

    fn round(&self, rt: &Runtime, proto: &Proto, buf: &Bytes) -> Round {
        let log = Arc::new(OriginLog::default());
        let svc = (self.make)(buf.clone(), log.clone());
        let (tx, rx) = watch::channel(false);
        let parked = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..TASKS)
            .map(|_| {
                rt.spawn(one_request(
                    svc.clone(),
                    proto.make(),
                    rx.clone(),
                    parked.clone(),
                    buf.clone(),
                ))
            })
            .collect();
        drop(svc);
        rt.block_on(release_and_collect(tx, &parked, handles, &log))
    }
}

fn side<F>(name: &'static str, coalesces: &'static str, make: F) -> Box<dyn Stampede>
where
    Side<F>: Stampede + 'static,
{
    Box::new(Side {
        name,
        coalesces,
        make,
    })
}

/// One side's rounds.
#[derive(Default)]
struct Rounds {
    calls: Vec<usize>,
    first_call: Vec<f64>,
    tail: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    max: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
}

impl Rounds {
    fn push(&mut self, r: Round) {
        self.calls.push(r.origin_calls);
        self.first_call.push(r.first_call_ms);
        self.tail.push(r.tail_ms);
        self.p50.push(percentile_ms(&r.latencies, 0.50));
        self.p99.push(percentile_ms(&r.latencies, 0.99));
        self.max.push(percentile_ms(&r.latencies, 1.0));
        self.errors += r.errors.len();
        if self.first_error.is_none() {
            self.first_error = r.errors.into_iter().next();
        }
    }
}

/// hitbox's configuration: `GET` requests, `200` responses, key method +
/// path + query `id`, TTL an hour, and `concurrency` as the dogpile
/// limit (`None`: no coordination).
fn hitbox_config(
    concurrency: Option<hitbox::policy::ConcurrencyLimit>,
) -> impl hitbox::CacheConfig<
    hitbox_http::CacheableHttpRequest<Empty<Bytes>>,
    hitbox_http::CacheableHttpResponse<Full<Bytes>>,
> + Clone
       + Send
       + Sync
       + 'static {
    use hitbox_http::extractors::path::PathExtractor as _;
    use hitbox_http::extractors::query::QueryExtractor as _;
    let mut policy = hitbox::policy::PolicyConfig::builder().ttl(Duration::from_secs(3600));
    if let Some(limit) = concurrency {
        policy = policy.concurrency(limit);
    }
    hitbox::Config::builder()
        .request_predicate(
            hitbox_http::predicates::request::Method::new(http::Method::GET).expect("method"),
        )
        .response_predicate(hitbox_http::predicates::response::StatusCode::new(
            StatusCode::OK,
        ))
        .extractor(
            hitbox_http::extractors::Method::new()
                .path("/api/item")
                .query("id".to_string()),
        )
        .policy(policy.build())
        .build()
}

fn hitbox_backend() -> hitbox_moka::MokaBackend<hitbox_backend::format::BincodeFormat> {
    hitbox_moka::MokaBackend::builder()
        .max_entries(10_000)
        .value_format(hitbox_backend::format::BincodeFormat)
        .build()
}

fn print_table(sides: &[Box<dyn Stampede>], rounds: &mut [Rounds]) {
    println!();
    println!(
        "stampede: {TASKS} concurrent requests for one cold key, origin {} ms, 1 KiB body, \
         {WORKERS} worker threads, {ROUNDS} rounds per side (latency: release to end of body, \
         median over rounds)",
        ORIGIN_DELAY.as_millis()
    );
    println!(
        "  {:<24} {:<38} {:>12} {:>8} {:>8} {:>8} {:>7} {:>10} {:>8}",
        "side",
        "coalesces?",
        "origin calls",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "1st call",
        "tail"
    );
    for (s, r) in sides.iter().zip(rounds.iter_mut()) {
        let lo = r.calls.iter().min().copied().unwrap_or(0);
        let hi = r.calls.iter().max().copied().unwrap_or(0);
        let calls = if lo == hi {
            format!("{lo}")
        } else {
            format!("{lo}..{hi}")
        };
        println!(
            "  {:<24} {:<38} {:>12} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>10.2} {:>8.2}",
            s.name(),
            s.coalesces(),
            calls,
            median(&mut r.p50),
            median(&mut r.p99),
            median(&mut r.max),
            r.errors,
            median(&mut r.first_call),
            median(&mut r.tail)
        );
    }
    println!(
        "  (1st call: release to the first origin call; tail: that call's return to the last \
         answer; ms, median over rounds)"
    );
    for (s, r) in sides.iter().zip(rounds.iter()) {
        if let Some(e) = &r.first_error {
            println!("  {}: first error: {e}", s.name());
        }
    }
    println!();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .expect("runtime");
    let buf = body_buffer();
    let proto = Proto::new(URI);
    let limit = hitbox::policy::ConcurrencyLimit::new(1).expect("1 is in range");

    let mut sides = vec![side("tiered", "yes: coalescing (default)", move |b, c| {
        let cache = tower_tiered_cache::Cache::builder().build().expect("cache");
        tower_tiered_cache::CacheLayer::new(cache).layer(slow_origin::<Req>(b, c))
    })];
    sides.push(side(
        "tower_http_cache",
        "yes: per-key stampede lock",
        move |b, c| {
            tower_http_cache::layer::CacheLayer::builder(
                tower_http_cache::backend::memory::InMemoryBackend::new(10_000),
            )
            .ttl(Duration::from_secs(3600))
            .build()
            .layer(slow_origin::<Req>(b, c))
        },
    ));
    sides.push(side(
        "hitbox_broadcast",
        "yes: BroadcastConcurrencyManager, 1",
        move |b, c| {
            hitbox_tower::Cache::builder()
                .backend(hitbox_backend())
                .config(hitbox_config(Some(limit)))
                .concurrency_manager(hitbox::concurrency::BroadcastConcurrencyManager::new())
                .build()
                .layer(slow_origin(b, c))
        },
    ));
    sides.push(side(
        "hitbox_default",
        "no: NoopConcurrencyManager (default)",
        move |b, c| {
            hitbox_tower::Cache::builder()
                .backend(hitbox_backend())
                .config(hitbox_config(None))
                .build()
                .layer(slow_origin(b, c))
        },
    ));
    sides.push(side("http_cache_tower_server", "no", move |b, c| {
        http_cache_tower_server::ServerCacheLayer::new(http_cache::MokaManager::default())
            .layer(slow_origin::<Req>(b, c))
    }));
    sides.push(side("http_cache_tower", "no", move |b, c| {
        http_cache_tower::HttpCacheLayer::new(http_cache::MokaManager::default())
            .layer(slow_origin::<Req>(b, c))
    }));
    sides.push(side("bare", "n/a: no cache", move |b, c| {
        slow_origin::<Req>(b, c)
    }));

    // Rounds interleaved across sides, so that load coming and going on the
    // machine is spread over all of them.
    let started = Instant::now();
    let mut rounds: Vec<Rounds> = sides.iter().map(|_| Rounds::default()).collect();
    for _ in 0..ROUNDS {
        for (s, r) in sides.iter().zip(rounds.iter_mut()) {
            r.push(s.round(&rt, &proto, &buf));
        }
    }
    for (s, r) in sides.iter().zip(rounds.iter()) {
        eprintln!("{}: origin calls per round {:?}", s.name(), r.calls);
    }
    print_table(&sides, &mut rounds);
    println!("total time {:.1} s", started.elapsed().as_secs_f64());
}
