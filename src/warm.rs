//! Warming: fetch a list of URLs through the cache before traffic asks
//! ([`CacheService::warm`]), and keep warming in the background
//! ([`CacheService::spawn_background`]: hot keys refreshed on a schedule,
//! the URLs a read names prefetched).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, Request, Uri};
use http_body::Body;
use tower_service::Service;

use crate::observe::{LookupResult, Outcome};
use crate::status::StatusSink;
use crate::sync::lock;
use crate::{CacheBody, CacheService};

mod background;
pub use crate::flow::hot::BackgroundError;
pub use background::Background;

/// One request to warm: a URL and the request headers that select its
/// variant (for `Vary`) or its key (configured key headers).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[non_exhaustive]
pub struct WarmTarget {
    /// The URL, as the cache's keys see requests: absolute
    /// (`http://host/path`) for clients and for servers whose keys include
    /// the authority (the default, `key_authority(true)`: a request with
    /// `Host: shop.example` is keyed `//shop.example/path`); a bare path
    /// only when keys leave the authority out.
    #[cfg_attr(feature = "serde", serde(with = "uri_serde"))]
    pub url: Uri,
    /// Request headers to send.
    #[cfg_attr(feature = "serde", serde(default, with = "headers_serde"))]
    pub headers: HeaderMap,
}

impl WarmTarget {
    /// A target with no extra headers.
    pub fn new(url: Uri) -> Self {
        Self {
            url,
            headers: HeaderMap::new(),
        }
    }

    /// Adds a request header.
    pub fn header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }
}

impl WarmTarget {
    /// The `GET` it stands for, with an empty body.
    fn into_request<B: Default>(self) -> Request<B> {
        let mut req = Request::new(B::default());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = self.url;
        *req.headers_mut() = self.headers;
        req
    }
}

impl From<Uri> for WarmTarget {
    fn from(url: Uri) -> Self {
        Self::new(url)
    }
}

impl std::str::FromStr for WarmTarget {
    type Err = http::uri::InvalidUri;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s.trim().parse()?))
    }
}

#[cfg(feature = "serde")]
mod uri_serde {
    use serde::Deserialize;

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<http::Uri, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "serde")]
mod headers_serde {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<http::HeaderMap, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(d)?;
        let mut out = http::HeaderMap::new();
        for (k, v) in map {
            let name: http::HeaderName = k.parse().map_err(serde::de::Error::custom)?;
            let value: http::HeaderValue = v.parse().map_err(serde::de::Error::custom)?;
            out.append(name, value);
        }
        Ok(out)
    }
}

/// How to warm.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WarmOptions {
    /// Requests in flight at once (default 8, at least 1).
    pub concurrency: usize,
    /// Give up on one request after this long (default 30 s).
    pub timeout: Duration,
}

impl Default for WarmOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            timeout: Duration::from_secs(30),
        }
    }
}

impl WarmOptions {
    /// Requests in flight at once.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The limit for one request.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// Where warming stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct WarmProgress {
    /// Distinct targets to warm (duplicates removed).
    pub total: u64,
    /// Targets finished (warmed, skipped or failed).
    pub done: u64,
    /// Fetched from the upstream and stored.
    pub warmed: u64,
    /// Already fresh in the cache (no upstream call).
    pub skipped: u64,
    /// Failed (see the report for why).
    pub failed: u64,
}

/// A target that could not be warmed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct WarmFailure {
    /// The URL.
    pub url: String,
    /// Why: the status, "not stored: …", "timed out", or the error.
    pub reason: String,
}

/// What warming did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct WarmReport {
    /// Targets given, duplicates included.
    pub requested: u64,
    /// Duplicates collapsed into one request.
    pub duplicates: u64,
    /// Fetched and stored.
    pub warmed: u64,
    /// Already fresh: not fetched.
    pub skipped: u64,
    /// Failed, each with the reason.
    pub failed: Vec<WarmFailure>,
    /// Wall time, ms.
    pub duration_ms: u64,
}

/// Something that warms: a [`CacheService`] (see
/// [`CacheService::warm`]), type-erased for the admin service.
pub trait Warm: Send + Sync + 'static {
    /// Warms `targets`, telling `progress` after each one.
    fn warm_dyn(
        &self,
        targets: Vec<WarmTarget>,
        options: WarmOptions,
        progress: Arc<dyn Fn(&WarmProgress) + Send + Sync>,
    ) -> Pin<Box<dyn Future<Output = WarmReport> + Send>>;
}

/// A [`CacheService`] as a [`Warm`] for requests with bodies of type `B`
/// (from [`CacheService::warmer`]).
pub struct Warmer<S, B> {
    svc: CacheService<S>,
    _body: std::marker::PhantomData<fn() -> B>,
}

impl<S: Clone, B> Clone for Warmer<S, B> {
    fn clone(&self) -> Self {
        Self {
            svc: self.svc.clone(),
            _body: std::marker::PhantomData,
        }
    }
}

impl<S, B> std::fmt::Debug for Warmer<S, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warmer").finish_non_exhaustive()
    }
}

impl<S> CacheService<S> {
    /// This service as a type-erasable [`Warm`] (for the admin service),
    /// sending warming requests with an empty body of type `B`.
    pub fn warmer<B>(&self) -> Warmer<S, B>
    where
        S: Clone,
    {
        Warmer {
            svc: self.clone(),
            _body: std::marker::PhantomData,
        }
    }
}

impl<S, B, ResB> Warm for Warmer<S, B>
where
    S: Service<Request<B>, Response = http::Response<ResB>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
    B: Default + Send + 'static,
    ResB: Body<Data: Send, Error: Send> + Send + 'static,
{
    fn warm_dyn(
        &self,
        targets: Vec<WarmTarget>,
        options: WarmOptions,
        progress: Arc<dyn Fn(&WarmProgress) + Send + Sync>,
    ) -> Pin<Box<dyn Future<Output = WarmReport> + Send>> {
        let me = self.svc.clone();
        Box::pin(async move { me.warm(targets, options, move |p| progress(p)).await })
    }
}

impl<S> CacheService<S> {
    /// Fetches `targets` through this service so that they are stored:
    /// duplicates (same URL and headers) are collapsed, at most
    /// `options.concurrency` run at once, entries already fresh are
    /// skipped without an upstream call, and `progress` is told after each
    /// target (an INFO `tracing` event every 10 % as well).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::convert::Infallible;
    /// use http::{Request, Response};
    /// use tower::{service_fn, Layer};
    /// use tower_tiered_cache::{warm::{WarmOptions, WarmTarget}, Cache, CacheLayer};
    ///
    /// let cache = Cache::builder().build().unwrap();
    /// let origin = service_fn(|_req: Request<String>| async {
    ///     Ok::<_, Infallible>(
    ///         Response::builder().header("cache-control", "max-age=60").body(String::from("hi")).unwrap(),
    ///     )
    /// });
    /// let svc = CacheLayer::new(cache.clone()).layer(origin);
    /// let targets: Vec<WarmTarget> = ["http://example.com/a", "http://example.com/a", "http://example.com/b"]
    ///     .iter()
    ///     .map(|u| u.parse().unwrap())
    ///     .collect();
    /// let report = svc.warm(targets, WarmOptions::default(), |_| {}).await;
    /// assert_eq!((report.requested, report.duplicates, report.warmed), (3, 1, 2));
    /// # }
    /// ```
    pub async fn warm<B, ResB>(
        &self,
        targets: Vec<WarmTarget>,
        options: WarmOptions,
        progress: impl Fn(&WarmProgress) + Send + Sync + 'static,
    ) -> WarmReport
    where
        S: Service<Request<B>, Response = http::Response<ResB>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: std::fmt::Display + Send + 'static,
        B: Default + Send + 'static,
        ResB: Body<Data: Send, Error: Send> + Send + 'static,
    {
        let started = Instant::now();
        let requested = targets.len() as u64;
        let unique = distinct_targets(targets);
        let state = Arc::new(WarmState::new(unique.len() as u64));
        let progress = Arc::new(progress);
        let workers = options.concurrency.max(1).min(unique.len().max(1));
        let queue = Arc::new(Mutex::new(unique.into_iter()));
        let tasks = (0..workers)
            .map(|_| {
                warm_worker(
                    self.clone(),
                    Arc::clone(&queue),
                    Arc::clone(&state),
                    Arc::clone(&progress),
                    options.timeout,
                )
            })
            .collect();
        futures_join_all(tasks).await;
        let report = state.report(requested, started);
        tracing::info!(
            target: "tower_tiered_cache",
            requested = report.requested,
            warmed = report.warmed,
            skipped = report.skipped,
            failed = report.failed.len(),
            duration_ms = report.duration_ms,
            "cache warming done"
        );
        report
    }
}

/// The targets without duplicates (same URL and same headers, in any
/// order), first occurrence kept.
fn distinct_targets(targets: Vec<WarmTarget>) -> Vec<WarmTarget> {
    let mut seen = HashSet::new();
    targets
        .into_iter()
        .filter(|t| {
            let mut h: Vec<(String, Vec<u8>)> = t
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect();
            h.sort();
            seen.insert((t.url.to_string(), h))
        })
        .collect()
}

/// One of the warming workers: takes targets from the shared queue until
/// it is empty, warming each, counting it and telling `progress`.
async fn warm_worker<S, B, ResB, P>(
    mut svc: CacheService<S>,
    queue: Arc<Mutex<std::vec::IntoIter<WarmTarget>>>,
    state: Arc<WarmState>,
    progress: Arc<P>,
    timeout: Duration,
) where
    S: Service<Request<B>, Response = http::Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
    B: Default + Send + 'static,
    ResB: Body<Data: Send, Error: Send> + Send + 'static,
    P: Fn(&WarmProgress) + Send + Sync + 'static,
{
    loop {
        let next = lock(&queue).next();
        let Some(target) = next else { break };
        let url = target.url.to_string();
        let result = warm_request(&mut svc, target.into_request(), timeout).await;
        state.finish(url, result);
        let p = state.progress();
        progress(&p);
        log_progress(&p);
    }
}

/// An INFO event at every tenth of the targets (from ten targets up).
fn log_progress(p: &WarmProgress) {
    if p.total >= 10 && p.done.is_multiple_of(p.total / 10) {
        tracing::info!(
            target: "tower_tiered_cache",
            done = p.done,
            total = p.total,
            warmed = p.warmed,
            skipped = p.skipped,
            failed = p.failed,
            "cache warming"
        );
    }
}

/// Runs futures to completion together (no extra dependency).
async fn futures_join_all<F: Future<Output = ()>>(futures: Vec<F>) {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        futures.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if futures.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

struct WarmState {
    total: u64,
    done: AtomicU64,
    warmed: AtomicU64,
    skipped: AtomicU64,
    failures: Mutex<Vec<WarmFailure>>,
}

impl WarmState {
    fn new(total: u64) -> Self {
        Self {
            total,
            done: AtomicU64::new(0),
            warmed: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
        }
    }

    /// The report once every worker is done: `requested` targets given,
    /// warming `started` then.
    fn report(&self, requested: u64, started: Instant) -> WarmReport {
        let failed = std::mem::take(&mut *lock(&self.failures));
        WarmReport {
            requested,
            duplicates: requested - self.total,
            warmed: self.warmed.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            failed,
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }

    fn finish(&self, url: String, result: Result<bool, String>) {
        match result {
            Ok(true) => {
                self.warmed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
            }
            Err(reason) => lock(&self.failures).push(WarmFailure { url, reason }),
        }
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    fn progress(&self) -> WarmProgress {
        let done = self.done.load(Ordering::Relaxed);
        let warmed = self.warmed.load(Ordering::Relaxed);
        let skipped = self.skipped.load(Ordering::Relaxed);
        WarmProgress {
            total: self.total,
            done,
            warmed,
            skipped,
            failed: done.saturating_sub(warmed).saturating_sub(skipped),
        }
    }
}

/// Sends the `GET` `req` through `svc` and reads its body, within
/// `timeout`: `Ok(true)` stored, `Ok(false)` already fresh, `Err` why not.
pub(crate) async fn warm_request<S, B, ResB>(
    svc: &mut CacheService<S>,
    mut req: Request<B>,
    timeout: Duration,
) -> Result<bool, String>
where
    S: Service<Request<B>, Response = http::Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
    B: Send + 'static,
    ResB: Body<Data: Send, Error: Send> + Send + 'static,
{
    // The adapter reports the request's typed status here.
    let sink = StatusSink::default();
    req.extensions_mut().insert(sink.clone());
    // The call and the body, within the one time limit. The body is read
    // to the end (a streamed response then completes) and dropped as it
    // comes: warming never holds a body.
    let call = async {
        std::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .map_err(|e| e.to_string())?;
        let resp: http::Response<CacheBody<ResB>> =
            svc.call(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let mut body = Box::pin(resp.into_body());
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            if frame.is_err() {
                break;
            }
        }
        Ok::<_, String>(status)
    };
    let status = match tokio::time::timeout(timeout, call).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err("timed out".to_owned()),
    };
    // A service without the cache layer reports nothing.
    let marked = sink.get().unwrap_or_default();
    let outcome = Outcome::from(&marked);
    match outcome.result {
        LookupResult::Hit | LookupResult::Stale if !outcome.coalesced => Ok(false),
        _ if marked.stored || outcome.result == LookupResult::Revalidated => Ok(true),
        _ if outcome.coalesced => Ok(true),
        _ if !status.is_success() => Err(format!("status {}", status.as_u16())),
        _ => {
            let detail = marked.detail.map_or("not stored", |d| d.as_str());
            Err(format!("not stored: {detail}"))
        }
    }
}
