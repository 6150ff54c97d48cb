//! An HTTP admin API for a [`Cache`] (feature `admin`): health, stats,
//! Prometheus metrics, configuration, warming and invalidation.
//!
//! [`AdminService`] is a tower service; mount it on its own listener or
//! under a path of an existing app. Every route needs a Bearer token
//! unless the service was made with [`AdminService::without_auth`].
//!
//! | Method | Path | Answer |
//! |---|---|---|
//! | `GET` | `/health` | [`Cache::health`]; 503 when degraded |
//! | `GET` | `/stats` | [`Cache::stats`] |
//! | `GET` | `/stats/labels` | [`Cache::label_stats`] |
//! | `GET` | `/stats/shared` | `Cache::shared_stats` (feature `redis`): totals accumulated in Redis by every instance; 404 without an L2 tier, 503 when shared stats are off or Redis does not answer |
//! | `GET` | `/stats/top?limit=N` | [`Cache::top_labels`] (`limit` 1..=1000, default 10) |
//! | `GET` | `/stats/low-performers?threshold=R` | [`Cache::low_performers`] (`threshold` 0..=1, default 0.5) |
//! | `GET` | `/breakers` | [`Cache::upstream_breakers`]: every upstream circuit breaker not closed, `[{"label", "state", "since_ms", "probe_at_ms", "consecutive_failures", "opens"}]` |
//! | `GET` | `/metrics` | [`Cache::prometheus`] (`text/plain; version=0.0.4`) |
//! | `GET` | `/info` | [`Cache::info`] |
//! | `POST` | `/warm` | starts a warming job (see below); 202 `{"id", "status"}` |
//! | `GET` | `/warm/{id}` | the job: `{"id", "state", "requested", "progress", "report"}` |
//! | `POST` | `/invalidate` | `{"key": …}`, `{"tag": …}`, `{"prefix": "/…"}` or `{"all": true}`; 200 `{"l1", "l2"}` |
//! | `POST` | `/invalidate` | `{"values": name, …}` (feature `values`) with one of `"key"`, `"tag"`, `"prefix"` (of keys, any string) or `"all": true`: the values of the value cache `name` (`Cache::invalidate_value`, `_tag`, `_prefix`); 200 `{"l1", "l2"}` |
//! | `POST` | `/reset-stats` | [`Cache::reset_stats`]; 204 |
//! | `GET` | `/dashboard` | the live dashboard (HTML; needs no token, see below) |
//! | `GET` | `/dashboard.js`, `/dashboard.css` | its script and style sheet |
//!
//! `GET` routes answer `HEAD` too. The body of `POST /warm` is a JSON
//! array of targets — URLs as the cache keys requests (absolute,
//! `"http://shop.example/items/1"`, unless keys leave the authority out;
//! see [`WarmTarget::url`](crate::warm::WarmTarget::url)) or objects
//! `{"url": …, "headers": {…}}` — or an object
//! `{"targets": [...], "concurrency": 8, "timeout_ms": 30000}`; at most
//! [`MAX_WARM_TARGETS`] targets (the default body limit of 64 KiB holds
//! about a thousand URLs: raise [`AdminService::max_body_bytes`] for
//! longer lists). Warming needs a warmer
//! ([`AdminService::warmer`]), else `/warm` answers 501. A job's `state`
//! is `running`, `done` (with its [`WarmReport`]) or `failed` (with an
//! `error`); the last 32 jobs are kept.
//!
//! The dashboard is one self-contained page (its script and style sheet
//! are compiled into the crate; it loads nothing from anywhere else,
//! under a strict `Content-Security-Policy`). It holds no data, so it is
//! served without a token: it asks for the token once, keeps it in the
//! tab's `sessionStorage` and sends it as `Authorization: Bearer` with
//! the JSON requests it polls (`/stats`, `/health`, `/breakers`,
//! `/stats/low-performers`, `/info`), so every figure it shows needs the
//! token as `curl` does. It draws the hit ratio over time (computed from
//! successive polls), requests per second by result and tier, hit and
//! miss latency percentiles, L1 bytes against capacity, evictions, the L2
//! tier's state and errors, the breakers, health with its reasons, the
//! per-label table with low performers and their recommendations, and
//! has buttons for `/invalidate` and `/warm`. Its URLs are relative, so it
//! works under a [`prefix`](AdminService::prefix) or a router's mount
//! point alike: open `{admin}/dashboard`. `?poll=MS` (250..=60000,
//! default 2000) sets how often it polls.
//!
//! Answers are JSON (`Content-Type: application/json`,
//! `Cache-Control: no-store`); errors are `{"error": "…"}` naming the
//! problem, with 400 (bad query or body), 401 (token missing or wrong,
//! with `WWW-Authenticate: Bearer`), 404, 405 (with `Allow`), 413 (body
//! over [`AdminService::max_body_bytes`]), 429 (32 warming jobs running)
//! or 501.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use tower::Layer;
//! use tower_tiered_cache::{admin::AdminService, Cache, CacheLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = Cache::builder().build()?;
//! let origin = Router::new().route("/items/{id}", get(|| async { "an item" }));
//! let cached = CacheLayer::new(cache.clone()).layer(origin);
//!
//! let admin = AdminService::new(cache.clone(), std::env::var("ADMIN_TOKEN")?)?
//!     .warmer(cached.warmer::<axum::body::Body>());
//! let app = Router::new()
//!     .nest_service("/admin", admin)
//!     .fallback_service(cached);
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! // curl -H "Authorization: Bearer $ADMIN_TOKEN" http://127.0.0.1:8080/admin/stats
//! # Ok(()) }
//! ```

#![cfg_attr(docsrs, doc(cfg(feature = "admin")))]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, LOCATION,
    WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tower_service::Service;

use crate::error::BuildError;
use crate::sync::lock;
use crate::warm::{Warm, WarmOptions, WarmProgress, WarmReport, WarmTarget};
use crate::{Cache, HealthStatus};

mod dashboard;

/// The default limit on request bodies: 64 KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// The most targets one warming job takes.
pub const MAX_WARM_TARGETS: usize = 10_000;

/// Warming jobs remembered; the oldest finished ones are dropped first.
const MAX_JOBS: usize = 32;
/// The most warming requests in flight one job may ask for.
const MAX_CONCURRENCY: u64 = 256;
/// The longest per-request warming timeout one job may ask for, ms.
const MAX_TIMEOUT_MS: u64 = 600_000;
/// The most labels `/stats/top` lists.
const MAX_TOP: usize = 1000;

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const PROMETHEUS: HeaderValue =
    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
const REALM: &str = "Bearer realm=\"tower-tiered-cache admin\"";

/// The admin API as a tower [`Service`] (see the [module docs](self) for
/// the routes).
///
/// It accepts requests with any body type, answers every request itself
/// (its error type is [`Infallible`]) and is always ready. Paths are
/// matched as they arrive: mounted with axum's `Router::nest_service`, the
/// mount point is already stripped; on a listener of its own, serve it
/// at the root or set a [`prefix`](Self::prefix). Clones share the
/// warming jobs.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use axum::Router;
/// use http::Request;
/// use tower::ServiceExt;
/// use tower_tiered_cache::{admin::AdminService, Cache};
///
/// let cache = Cache::builder().build().unwrap();
/// let admin = AdminService::new(cache, "s3cret").unwrap();
/// let app: Router = Router::new().nest_service("/admin", admin);
///
/// let req = Request::get("/admin/health")
///     .header("authorization", "Bearer s3cret")
///     .body(axum::body::Body::empty())
///     .unwrap();
/// let resp = app.oneshot(req).await.unwrap();
/// assert_eq!(resp.status(), 200);
/// assert_eq!(resp.headers()["content-type"], "application/json");
/// # }
/// ```
#[derive(Clone)]
pub struct AdminService {
    cache: Cache,
    /// `None`: no authentication.
    token: Option<Arc<[u8]>>,
    /// Stripped from paths; empty, or `/…` with no trailing slash.
    prefix: Arc<str>,
    max_body: usize,
    warmer: Option<Arc<dyn Warm>>,
    jobs: Arc<Mutex<Jobs>>,
}

impl fmt::Debug for AdminService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminService")
            .field("cache", &self.cache)
            .field("auth", &self.token.is_some())
            .field("prefix", &self.prefix)
            .field("max_body_bytes", &self.max_body)
            .field("warmer", &self.warmer.is_some())
            .finish_non_exhaustive()
    }
}

impl AdminService {
    /// An admin service for `cache` that requires `Authorization: Bearer
    /// <token>` on every route. The token is compared in constant time.
    ///
    /// Fails when `token` is empty or holds anything but visible ASCII
    /// (such a token could never be sent in the header).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use http::Request;
    /// use tower::ServiceExt;
    /// use tower_tiered_cache::{admin::AdminService, Cache};
    ///
    /// let cache = Cache::builder().build().unwrap();
    /// assert!(AdminService::new(cache.clone(), "").is_err());
    ///
    /// let admin = AdminService::new(cache, "s3cret").unwrap();
    /// let anonymous = Request::get("/stats").body(String::new()).unwrap();
    /// let resp = admin.clone().oneshot(anonymous).await.unwrap();
    /// assert_eq!(resp.status(), 401);
    /// assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"tower-tiered-cache admin\"");
    ///
    /// let authorized = Request::get("/stats")
    ///     .header("authorization", "Bearer s3cret")
    ///     .body(String::new())
    ///     .unwrap();
    /// assert_eq!(admin.oneshot(authorized).await.unwrap().status(), 200);
    /// # }
    /// ```
    pub fn new(cache: Cache, token: impl Into<String>) -> Result<Self, BuildError> {
        let token = token.into();
        if token.is_empty() {
            return Err(BuildError::invalid("admin_token", "must not be empty"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(BuildError::invalid(
                "admin_token",
                "must be visible ASCII characters (no spaces or control characters)",
            ));
        }
        let mut me = Self::without_auth(cache);
        me.token = Some(Arc::from(token.into_bytes()));
        Ok(me)
    }

    /// An admin service for `cache` that asks for no authentication: for
    /// a listener only trusted clients reach, or behind a layer that
    /// authenticates.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use http::Request;
    /// use tower::ServiceExt;
    /// use tower_tiered_cache::{admin::AdminService, Cache};
    ///
    /// let admin = AdminService::without_auth(Cache::builder().build().unwrap());
    /// let req = Request::get("/metrics").body(String::new()).unwrap();
    /// let resp = admin.oneshot(req).await.unwrap();
    /// assert_eq!(resp.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    /// # }
    /// ```
    pub fn without_auth(cache: Cache) -> Self {
        Self {
            cache,
            token: None,
            prefix: Arc::from(""),
            max_body: DEFAULT_MAX_BODY_BYTES,
            warmer: None,
            jobs: Arc::new(Mutex::new(Jobs::default())),
        }
    }

    /// Strips `prefix` from request paths (for a service mounted under a
    /// path without a router that strips it); paths outside it answer
    /// 404. `""` or `"/"` (the default): none.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use http::Request;
    /// use tower::ServiceExt;
    /// use tower_tiered_cache::{admin::AdminService, Cache};
    ///
    /// let admin = AdminService::without_auth(Cache::builder().build().unwrap()).prefix("/admin/");
    /// let get = |path: &str| Request::get(path).body(String::new()).unwrap();
    /// assert_eq!(admin.clone().oneshot(get("/admin/info")).await.unwrap().status(), 200);
    /// assert_eq!(admin.oneshot(get("/info")).await.unwrap().status(), 404);
    /// # }
    /// ```
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let trimmed = prefix.trim_end_matches('/');
        self.prefix = if trimmed.is_empty() {
            Arc::from("")
        } else if trimmed.starts_with('/') {
            Arc::from(trimmed)
        } else {
            Arc::from(format!("/{trimmed}"))
        };
        self
    }

    /// Enables `/warm` with `warmer`, usually the cached service from
    /// [`CacheService::warmer`](crate::CacheService::warmer): warming
    /// requests go through it, so they are stored like any other.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use http::{Request, Response};
    /// use tower::{service_fn, Layer};
    /// use tower_tiered_cache::{admin::AdminService, Cache, CacheLayer};
    ///
    /// let cache = Cache::builder().build().unwrap();
    /// let origin = service_fn(|_req: Request<String>| async {
    ///     Ok::<_, Infallible>(Response::new(String::from("hi")))
    /// });
    /// let cached = CacheLayer::new(cache.clone()).layer(origin);
    /// let admin = AdminService::without_auth(cache).warmer(cached.warmer::<String>());
    /// # drop(admin);
    /// ```
    pub fn warmer(mut self, warmer: impl Warm) -> Self {
        self.warmer = Some(Arc::new(warmer));
        self
    }

    /// The largest request body read (default
    /// [`DEFAULT_MAX_BODY_BYTES`], 64 KiB); larger ones answer 413.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use http::Request;
    /// use tower::ServiceExt;
    /// use tower_tiered_cache::{admin::AdminService, Cache};
    ///
    /// let admin = AdminService::without_auth(Cache::builder().build().unwrap()).max_body_bytes(16);
    /// let req = Request::post("/invalidate")
    ///     .body(String::from(r#"{"prefix": "/a/very/long/prefix/"}"#))
    ///     .unwrap();
    /// assert_eq!(admin.oneshot(req).await.unwrap().status(), 413);
    /// # }
    /// ```
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Answers one request.
    async fn handle<B>(self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let head = req.method() == Method::HEAD;
        let resp = self.route(req).await;
        if !head {
            return resp;
        }
        let (mut parts, body) = resp.into_parts();
        if let Some(len) = body.size_hint().exact() {
            parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        Response::from_parts(parts, Full::default())
    }

    /// Resolves the request's route (checking the token and the method)
    /// and answers it.
    async fn route<B>(self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path().to_owned();
        match self.resolve(&req, &path) {
            Ok(route) => self.answer(route, req).await,
            Err(resp) => *resp,
        }
    }

    /// The route `path` names, once the request is authorised and its
    /// method allowed there; else the 404, 401 or 405 to answer.
    fn resolve<'p, B>(
        &self,
        req: &Request<B>,
        path: &'p str,
    ) -> Result<Route<'p>, Box<Response<Full<Bytes>>>> {
        let Some(path) = strip_prefix(path, &self.prefix) else {
            return Err(no_such_route(path));
        };
        let route = Route::parse(path);
        // The dashboard's files hold no data: no token needed. Every
        // other path, known or not, wants one first.
        if !matches!(route, Some(Route::Dashboard(_))) {
            if let Some(resp) = self.check_auth(req) {
                return Err(Box::new(resp));
            }
        }
        let Some(route) = route else {
            return Err(no_such_route(path));
        };
        let allowed = route.methods();
        let method = req.method();
        let ok = if allowed == GET {
            method == Method::GET || method == Method::HEAD
        } else {
            method == Method::POST
        };
        if !ok {
            let mut resp = error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("method {method} not allowed on {path} (allowed: {allowed})"),
            );
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allowed));
            return Err(Box::new(resp));
        }
        Ok(route)
    }

    /// Answers a resolved route.
    async fn answer<B>(self, route: Route<'_>, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let cache = &self.cache;
        let query = req.uri().query();
        match route {
            Route::Health => health_response(cache),
            Route::Stats => json_response(StatusCode::OK, &cache.stats()),
            Route::StatsLabels => json_response(StatusCode::OK, &cache.label_stats()),
            Route::StatsShared => shared_stats(cache).await,
            Route::StatsTop => match parse_limit(query) {
                Ok(limit) => json_response(StatusCode::OK, &cache.top_labels(limit)),
                Err(e) => error(StatusCode::BAD_REQUEST, e),
            },
            Route::LowPerformers => match parse_threshold(query) {
                Ok(t) => json_response(StatusCode::OK, &cache.low_performers(t)),
                Err(e) => error(StatusCode::BAD_REQUEST, e),
            },
            Route::Breakers => json_response(StatusCode::OK, &cache.upstream_breakers()),
            Route::Metrics => respond(StatusCode::OK, PROMETHEUS, cache.prometheus().into()),
            Route::Info => json_response(StatusCode::OK, &cache.info()),
            Route::ResetStats => reset_stats(cache),
            Route::Dashboard(asset) => asset.response(),
            Route::WarmJob(id) => self.warm_job(id),
            Route::Warm => {
                if self.warmer.is_none() {
                    return no_warmer();
                }
                match self.read_json(req).await {
                    Ok(v) => self.start_warming(v),
                    Err(resp) => resp,
                }
            }
            Route::Invalidate => match self.read_json(req).await {
                Ok(v) => match Invalidation::parse(v) {
                    Ok(what) => what.run(cache).await,
                    Err(e) => error(StatusCode::BAD_REQUEST, e),
                },
                Err(resp) => resp,
            },
        }
    }

    /// `None` when the request may go on; else the 401.
    fn check_auth<B>(&self, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
        let expected = self.token.as_deref()?;
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()));
        let (message, challenge) = match given {
            None => (
                "missing bearer token: send Authorization: Bearer <token>",
                REALM.to_owned(),
            ),
            Some(given) if token_matches(expected, given) => return None,
            Some(_) => (
                "invalid bearer token",
                format!("{REALM}, error=\"invalid_token\""),
            ),
        };
        tracing::debug!(target: "tower_tiered_cache::admin", path = req.uri().path(), message, "admin request refused");
        let mut resp = error(StatusCode::UNAUTHORIZED, message);
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            resp.headers_mut().insert(WWW_AUTHENTICATE, v);
        }
        Some(resp)
    }

    /// The body as JSON, or the error response (413, 400).
    async fn read_json<B>(&self, req: Request<B>) -> Result<Value, Response<Full<Bytes>>>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let too_large = || {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body is larger than the limit of {} bytes",
                    self.max_body
                ),
            )
        };
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Err(too_large());
        }
        let bytes = match Limited::new(req.into_body(), self.max_body).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
            Err(e) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("could not read the request body: {e}"),
                ))
            }
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))
    }

    fn start_warming(&self, body: Value) -> Response<Full<Bytes>> {
        let Some(warmer) = &self.warmer else {
            return no_warmer();
        };
        let (targets, options) = match parse_warm(body) {
            Ok(t) => t,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        let requested = targets.len() as u64;
        let job = Arc::new(Mutex::new(Job {
            state: JobState::Running,
            requested,
            progress: WarmProgress::default(),
            report: None,
        }));
        let id = {
            let mut jobs = lock(&self.jobs);
            if jobs.map.len() >= MAX_JOBS {
                let oldest_done = jobs
                    .map
                    .iter()
                    .find(|(_, j)| lock(j).state != JobState::Running)
                    .map(|(&id, _)| id);
                match oldest_done {
                    Some(id) => {
                        jobs.map.remove(&id);
                    }
                    None => {
                        return error(
                            StatusCode::TOO_MANY_REQUESTS,
                            format!("{MAX_JOBS} warming jobs are running: wait for one to finish"),
                        )
                    }
                }
            }
            jobs.last_id += 1;
            let id = jobs.last_id;
            jobs.map.insert(id, Arc::clone(&job));
            id
        };
        let progress: Arc<dyn Fn(&WarmProgress) + Send + Sync> = {
            let job = Arc::clone(&job);
            Arc::new(move |p: &WarmProgress| lock(&job).progress = *p)
        };
        let warming = warmer.warm_dyn(targets, options, progress);
        tracing::info!(target: "tower_tiered_cache::admin", id, requested, "warming job started");
        // The job runs in a task of its own so that a panic in it is
        // reported as the job's failure instead of leaving it running.
        tokio::spawn(async move {
            let outcome = tokio::spawn(warming).await;
            let mut job = lock(&job);
            match outcome {
                Ok(report) => {
                    job.state = JobState::Done;
                    job.report = Some(report);
                }
                Err(e) => {
                    job.state = JobState::Failed(if e.is_panic() {
                        "the warming task panicked".to_owned()
                    } else {
                        "the warming task was cancelled".to_owned()
                    });
                }
            }
        });
        let status = format!("{}/warm/{id}", self.prefix);
        let mut resp = json_response(StatusCode::ACCEPTED, &json!({ "id": id, "status": status }));
        if let Ok(v) = HeaderValue::from_str(&status) {
            resp.headers_mut().insert(LOCATION, v);
        }
        resp
    }

    fn warm_job(&self, id: &str) -> Response<Full<Bytes>> {
        if self.warmer.is_none() {
            return no_warmer();
        }
        let job = id
            .parse::<u64>()
            .ok()
            .and_then(|n| lock(&self.jobs).map.get(&n).cloned().map(|j| (n, j)));
        let Some((id, job)) = job else {
            return error(
                StatusCode::NOT_FOUND,
                format!("no warming job with id {id:?}"),
            );
        };
        let job = lock(&job).clone();
        let mut out = json!({
            "id": id,
            "state": job.state.as_str(),
            "requested": job.requested,
            "progress": job.progress,
            "report": job.report,
        });
        if let JobState::Failed(why) = job.state {
            out["error"] = Value::String(why);
        }
        json_response(StatusCode::OK, &out)
    }
}

impl<B> Service<Request<B>> for AdminService
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = AdminFuture;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> AdminFuture {
        let me = self.clone();
        AdminFuture {
            inner: Box::pin(async move { Ok(me.handle(req).await) }),
        }
    }
}

/// The future of an [`AdminService`] response.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use http::Request;
/// use tower::Service;
/// use tower_tiered_cache::admin::{AdminFuture, AdminService};
///
/// let mut admin = AdminService::without_auth(tower_tiered_cache::Cache::builder().build().unwrap());
/// let future: AdminFuture = admin.call(Request::get("/health").body(String::new()).unwrap());
/// assert_eq!(future.await.unwrap().status(), 200);
/// # }
/// ```
pub struct AdminFuture {
    inner: BoxFuture,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

impl fmt::Debug for AdminFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminFuture").finish_non_exhaustive()
    }
}

impl Future for AdminFuture {
    type Output = Result<Response<Full<Bytes>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// `GET /stats/shared`: the totals accumulated in Redis by every instance.
async fn shared_stats(cache: &Cache) -> Response<Full<Bytes>> {
    #[cfg(feature = "redis")]
    if cache.info().l2.is_some() {
        return match cache.shared_stats().await {
            Some(s) => json_response(StatusCode::OK, &s),
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "shared stats are off (CacheBuilder::shared_stats) or Redis did not answer",
            ),
        };
    }
    let _ = cache;
    error(
        StatusCode::NOT_FOUND,
        "no shared stats: they need the L2 tier and CacheBuilder::shared_stats",
    )
}

/// The methods of read-only routes, and of the others.
const GET: &str = "GET, HEAD";
const POST: &str = "POST";

/// The 404 for a path that names no route.
fn no_such_route(path: &str) -> Box<Response<Full<Bytes>>> {
    Box::new(error(
        StatusCode::NOT_FOUND,
        format!("no such route: {path}"),
    ))
}

/// `/health`: the health report, 503 while degraded.
fn health_response(cache: &Cache) -> Response<Full<Bytes>> {
    let health = cache.health();
    let status = if health.status == HealthStatus::Degraded {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json_response(status, &health)
}

/// `/reset-stats`: zeroes the counters; 204.
fn reset_stats(cache: &Cache) -> Response<Full<Bytes>> {
    cache.reset_stats();
    tracing::info!(target: "tower_tiered_cache::admin", "stats reset");
    let mut resp = Response::new(Full::default());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp.headers_mut().insert(CACHE_CONTROL, NO_STORE);
    resp
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route<'a> {
    Health,
    Stats,
    StatsLabels,
    StatsShared,
    StatsTop,
    LowPerformers,
    Breakers,
    Metrics,
    Info,
    Warm,
    WarmJob(&'a str),
    Invalidate,
    ResetStats,
    Dashboard(dashboard::Asset),
}

impl<'a> Route<'a> {
    fn parse(path: &'a str) -> Option<Self> {
        Some(match path {
            "/health" => Route::Health,
            "/stats" => Route::Stats,
            "/stats/labels" => Route::StatsLabels,
            "/stats/shared" => Route::StatsShared,
            "/stats/top" => Route::StatsTop,
            "/stats/low-performers" => Route::LowPerformers,
            "/breakers" => Route::Breakers,
            "/metrics" => Route::Metrics,
            "/info" => Route::Info,
            "/warm" => Route::Warm,
            "/invalidate" => Route::Invalidate,
            "/reset-stats" => Route::ResetStats,
            _ => match path.strip_prefix("/warm/") {
                Some(id) if !id.is_empty() && !id.contains('/') => Route::WarmJob(id),
                _ => Route::Dashboard(dashboard::Asset::parse(path)?),
            },
        })
    }

    /// The `Allow` value.
    fn methods(self) -> &'static str {
        match self {
            Route::Warm | Route::Invalidate | Route::ResetStats => POST,
            _ => GET,
        }
    }
}

/// `path` below `prefix` (`/` for the prefix itself), or `None` outside.
fn strip_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix.is_empty() {
        return Some(path);
    }
    match path.strip_prefix(prefix)? {
        "" => Some("/"),
        rest if rest.starts_with('/') => Some(rest),
        _ => None,
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is
/// case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ')?;
    let end = rest.iter().rposition(|&b| b != b' ')?;
    Some(&rest[start..=end])
}

/// Whether `given` equals `expected`, in time that depends only on
/// `expected`'s length (every byte of it is compared, whatever `given`
/// holds and however long it is).
fn token_matches(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = u8::from(expected.len() != given.len());
    for (i, &e) in expected.iter().enumerate() {
        let g = if given.is_empty() {
            0
        } else {
            given[i % given.len()]
        };
        diff |= e ^ g;
    }
    std::hint::black_box(diff) == 0
}

/// The first value of query parameter `name` (no percent-decoding: the
/// parameters are numbers).
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

fn parse_limit(query: Option<&str>) -> Result<usize, String> {
    let Some(raw) = query_param(query, "limit") else {
        return Ok(10);
    };
    raw.parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_TOP).contains(n))
        .ok_or_else(|| format!("limit must be an integer within 1..={MAX_TOP} (got {raw:?})"))
}

fn parse_threshold(query: Option<&str>) -> Result<f64, String> {
    let Some(raw) = query_param(query, "threshold") else {
        return Ok(0.5);
    };
    raw.parse::<f64>()
        .ok()
        .filter(|t| (0.0..=1.0).contains(t))
        .ok_or_else(|| format!("threshold must be within 0..=1 (got {raw:?})"))
}

/// Takes the optional integer field `name` out of `fields`; it must be
/// within `1..=max`.
fn take_int(fields: &mut Map<String, Value>, name: &str, max: u64) -> Result<Option<u64>, String> {
    let Some(v) = fields.remove(name) else {
        return Ok(None);
    };
    v.as_u64()
        .filter(|n| (1..=max).contains(n))
        .map(Some)
        .ok_or_else(|| format!("{name} must be an integer within 1..={max}"))
}

/// The targets and options of a `POST /warm` body.
fn parse_warm(body: Value) -> Result<(Vec<WarmTarget>, WarmOptions), String> {
    let mut options = WarmOptions::default();
    let list = match body {
        Value::Array(list) => list,
        Value::Object(mut fields) => {
            let targets = fields
                .remove("targets")
                .ok_or("missing field \"targets\" (a list of URLs or {\"url\", \"headers\"})")?;
            if let Some(n) = take_int(&mut fields, "concurrency", MAX_CONCURRENCY)? {
                options = options.concurrency(n as usize);
            }
            if let Some(ms) = take_int(&mut fields, "timeout_ms", MAX_TIMEOUT_MS)? {
                options = options.timeout(Duration::from_millis(ms));
            }
            if let Some(k) = fields.keys().next() {
                return Err(format!(
                    "unknown field {k:?} (expected targets, concurrency or timeout_ms)"
                ));
            }
            match targets {
                Value::Array(list) => list,
                _ => return Err("\"targets\" must be an array".to_owned()),
            }
        }
        _ => {
            return Err(
                "expected a JSON array of targets, or an object with \"targets\"".to_owned(),
            )
        }
    };
    if list.is_empty() {
        return Err("no targets to warm".to_owned());
    }
    if list.len() > MAX_WARM_TARGETS {
        return Err(format!(
            "too many targets: {} (at most {MAX_WARM_TARGETS} per job)",
            list.len()
        ));
    }
    let targets = list
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let target = match v {
                Value::String(s) => s
                    .parse::<WarmTarget>()
                    .map_err(|e| format!("targets[{i}]: invalid URL {s:?}: {e}"))?,
                v @ Value::Object(_) => serde_json::from_value::<WarmTarget>(v)
                    .map_err(|e| format!("targets[{i}]: {e}"))?,
                _ => {
                    return Err(format!(
                        "targets[{i}]: expected a URL or an object with \"url\" and \"headers\""
                    ))
                }
            };
            let url = &target.url;
            if url.scheme().is_none() && !(url.authority().is_none() && url.path().starts_with('/'))
            {
                return Err(format!(
                    "targets[{i}]: {url:?} is neither a path (/…) nor an absolute URL"
                ));
            }
            Ok(target)
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((targets, options))
}

/// What `POST /invalidate` asks for: stored responses, or (with
/// `"values"`, feature `values`) the values of one value cache.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Invalidation {
    /// The value cache named by `"values"`; `None`: stored responses.
    values: Option<String>,
    target: Target,
}

/// What an invalidation removes, of stored responses or of a value
/// cache's values (where a prefix is one of keys, not a path).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Key(String),
    Tag(String),
    Prefix(String),
    All,
}

impl Invalidation {
    const FIELDS: &'static [&'static str] = &[
        "key",
        "tag",
        "prefix",
        "all",
        #[cfg(feature = "values")]
        "values",
    ];

    fn parse(body: Value) -> Result<Self, String> {
        let Value::Object(mut fields) = body else {
            return Err(
                "expected a JSON object with one of \"key\", \"tag\", \"prefix\" or \"all\""
                    .to_owned(),
            );
        };
        if let Some(k) = fields.keys().find(|k| !Self::FIELDS.contains(&k.as_str())) {
            return Err(format!(
                "unknown field {k:?} (expected one of {})",
                Self::FIELDS.join(", ")
            ));
        }
        let values = take_values(&mut fields)?;
        let (name, value) = match one(&fields) {
            Ok(field) => field,
            Err(given) => {
                return Err(format!(
                    "give exactly one of key, tag, prefix or all (got {given})"
                ))
            }
        };
        let target = Target::parse(name, value, values.is_some())?;
        Ok(Self { values, target })
    }

    async fn run(self, cache: &Cache) -> Response<Full<Bytes>> {
        let (what, body) = match &self.values {
            #[cfg(feature = "values")]
            Some(name) => self.target.purge_values(cache, name).await,
            _ => self.target.purge_responses(cache).await,
        };
        let values = self.values.as_deref().unwrap_or("");
        tracing::info!(target: "tower_tiered_cache::admin", what, values, removed = %body, "invalidated");
        json_response(StatusCode::OK, &body)
    }
}

impl Target {
    /// The target `name: value` names; `values`: of a value cache, whose
    /// prefixes are of keys (any string), not paths.
    fn parse(name: &str, value: &Value, values: bool) -> Result<Self, String> {
        match (name, value) {
            ("all", Value::Bool(true)) => Ok(Target::All),
            ("all", _) => Err("\"all\" must be true".to_owned()),
            (name, Value::String(s)) if s.is_empty() => Err(format!("{name:?} must not be empty")),
            ("prefix", Value::String(s)) if !values && !s.starts_with('/') => Err(format!(
                "\"prefix\" must be a path starting with / (got {s:?})"
            )),
            ("key", Value::String(s)) => Ok(Target::Key(s.clone())),
            ("tag", Value::String(s)) => Ok(Target::Tag(s.clone())),
            ("prefix", Value::String(s)) => Ok(Target::Prefix(s.clone())),
            (name, _) => Err(format!("{name:?} must be a string")),
        }
    }

    /// Removes the stored responses it names: what, and what was removed.
    async fn purge_responses(&self, cache: &Cache) -> (&'static str, Value) {
        match self {
            Target::Key(key) => ("key", key_removed(cache.invalidate_key(key))),
            Target::Tag(tag) => ("tag", json!(cache.invalidate_tag(tag).await)),
            Target::Prefix(prefix) => ("prefix", json!(cache.invalidate_prefix(prefix).await)),
            Target::All => ("all", json!(cache.clear().await)),
        }
    }

    /// Removes the values of the value cache `name` it names (all: those
    /// whose key starts with `""`): what, and what was removed.
    #[cfg(feature = "values")]
    async fn purge_values(&self, cache: &Cache, name: &str) -> (&'static str, Value) {
        match self {
            Target::Key(key) => ("key", key_removed(cache.invalidate_value(name, key))),
            Target::Tag(tag) => ("tag", json!(cache.invalidate_value_tag(name, tag).await)),
            Target::Prefix(prefix) => (
                "prefix",
                json!(cache.invalidate_value_prefix(name, prefix).await),
            ),
            Target::All => ("all", json!(cache.invalidate_value_prefix(name, "").await)),
        }
    }
}

/// The answer to a key's invalidation: whether L1 held it. Its L2 delete
/// runs in the background: its count is not known here.
fn key_removed(l1: bool) -> Value {
    json!({ "l1": u64::from(l1), "l2": null })
}

/// Takes the `"values"` field (a value cache's name, checked as
/// [`Cache::values`] checks it) out of `fields`.
#[cfg(feature = "values")]
fn take_values(fields: &mut Map<String, Value>) -> Result<Option<String>, String> {
    match fields.remove("values") {
        None => Ok(None),
        Some(Value::String(name)) if crate::values::check_name(&name).is_ok() => Ok(Some(name)),
        Some(_) => Err(format!(
            "\"values\" must be a value cache's name (1 to {} bytes without control characters)",
            crate::values::MAX_NAME_BYTES
        )),
    }
}

/// Without typed values, `"values"` is an unknown field.
#[cfg(not(feature = "values"))]
fn take_values(_: &mut Map<String, Value>) -> Result<Option<String>, String> {
    Ok(None)
}

/// The one field of `fields`, or what was given instead.
fn one(fields: &Map<String, Value>) -> Result<(&str, &Value), String> {
    let mut it = fields.iter();
    match (it.next(), it.next()) {
        (Some((k, v)), None) => Ok((k.as_str(), v)),
        (None, _) => Err("none".to_owned()),
        _ => Err(fields
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")),
    }
}

#[derive(Debug, Default)]
struct Jobs {
    last_id: u64,
    /// By id: oldest first.
    map: BTreeMap<u64, Arc<Mutex<Job>>>,
}

#[derive(Debug, Clone)]
struct Job {
    state: JobState,
    requested: u64,
    progress: WarmProgress,
    report: Option<WarmReport>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum JobState {
    Running,
    Done,
    Failed(String),
}

impl JobState {
    fn as_str(&self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed(_) => "failed",
        }
    }
}

fn respond(status: StatusCode, content_type: HeaderValue, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, content_type);
    resp.headers_mut().insert(CACHE_CONTROL, NO_STORE);
    resp
}

fn json_response(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => respond(status, JSON, body.into()),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            JSON,
            json!({ "error": format!("could not serialise the answer: {e}") })
                .to_string()
                .into(),
        ),
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json_response(status, &json!({ "error": message.into() }))
}

fn no_warmer() -> Response<Full<Bytes>> {
    error(
        StatusCode::NOT_IMPLEMENTED,
        "warming is not configured: give the admin service a warmer (AdminService::warmer)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches(b"secret", b"secret"));
        assert!(!token_matches(b"secret", b"secreT"));
        assert!(!token_matches(b"secret", b"secret2"));
        assert!(!token_matches(b"secret", b"secre"));
        assert!(!token_matches(b"secret", b""));
        assert!(!token_matches(b"aaaa", b"aa"));
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
    }

    #[test]
    fn routes_and_prefixes() {
        assert_eq!(strip_prefix("/admin/stats", "/admin"), Some("/stats"));
        assert_eq!(strip_prefix("/admin", "/admin"), Some("/"));
        assert_eq!(strip_prefix("/administrator", "/admin"), None);
        assert_eq!(strip_prefix("/stats", ""), Some("/stats"));
        assert_eq!(Route::parse("/warm/12"), Some(Route::WarmJob("12")));
        assert_eq!(Route::parse("/warm/"), None);
        assert_eq!(Route::parse("/warm/1/2"), None);
        assert_eq!(Route::parse("/stats/"), None);
        let svc = AdminService::without_auth(Cache::builder().build().unwrap());
        assert_eq!(&*svc.clone().prefix("admin/").prefix, "/admin");
        assert_eq!(&*svc.prefix("/").prefix, "");
    }

    #[test]
    fn query_parameters() {
        assert_eq!(parse_limit(None), Ok(10));
        assert_eq!(parse_limit(Some("x=1&limit=3")), Ok(3));
        assert!(parse_limit(Some("limit=0")).is_err());
        assert!(parse_limit(Some("limit=1001")).is_err());
        assert!(parse_limit(Some("limit")).is_err());
        assert_eq!(parse_threshold(Some("threshold=0.25")), Ok(0.25));
        assert!(parse_threshold(Some("threshold=NaN")).is_err());
        assert!(parse_threshold(Some("threshold=-0.1")).is_err());
    }

    #[test]
    fn warm_bodies() {
        let (t, o) = parse_warm(
            json!(["/a", {"url": "http://x.example/b", "headers": {"accept": "text/html"}}]),
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].headers["accept"], "text/html");
        assert_eq!(o.concurrency, WarmOptions::default().concurrency);
        let (_, o) =
            parse_warm(json!({"targets": ["/a"], "concurrency": 2, "timeout_ms": 500})).unwrap();
        assert_eq!((o.concurrency, o.timeout), (2, Duration::from_millis(500)));
        let err = |v: Value| parse_warm(v).unwrap_err();
        assert!(err(json!([])).contains("no targets"));
        assert!(err(json!({"targets": ["/a"], "concurency": 2}))
            .contains("unknown field \"concurency\""));
        assert!(err(json!({"targets": ["/a"], "concurrency": 0})).contains("concurrency"));
        assert!(err(json!({"concurrency": 2})).contains("missing field \"targets\""));
        assert!(err(json!(["/a", 3])).starts_with("targets[1]"));
        assert!(err(json!(["no spaces allowed"])).starts_with("targets[0]: invalid URL"));
        assert!(err(json!(["example.com"])).contains("neither a path"));
        assert!(err(json!([{"headers": {}}])).contains("missing field `url`"));
        let many: Vec<Value> = (0..=MAX_WARM_TARGETS)
            .map(|i| json!(format!("/{i}")))
            .collect();
        assert!(err(Value::Array(many)).contains("too many targets: 10001"));
    }

    /// Warms nothing: waits for a permit, then reports; panics on `/panic`.
    struct Gate(Arc<tokio::sync::Semaphore>);

    impl Warm for Gate {
        fn warm_dyn(
            &self,
            targets: Vec<WarmTarget>,
            _options: WarmOptions,
            progress: Arc<dyn Fn(&WarmProgress) + Send + Sync>,
        ) -> Pin<Box<dyn Future<Output = WarmReport> + Send>> {
            let gate = Arc::clone(&self.0);
            Box::pin(async move {
                assert!(targets[0].url.path() != "/panic", "told to panic");
                gate.acquire().await.unwrap().forget();
                let n = targets.len() as u64;
                progress(&WarmProgress {
                    total: n,
                    done: n,
                    warmed: n,
                    ..WarmProgress::default()
                });
                WarmReport {
                    requested: n,
                    warmed: n,
                    ..WarmReport::default()
                }
            })
        }
    }

    async fn call(
        svc: &AdminService,
        method: Method,
        path: &str,
        body: &str,
    ) -> (StatusCode, Value) {
        use http_body_util::BodyExt as _;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(String::from(body))
            .unwrap();
        let mut svc = svc.clone();
        let resp = svc.call(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn wait_done(svc: &AdminService, id: u64) -> Value {
        for _ in 0..1000 {
            let (_, job) = call(svc, Method::GET, &format!("/admin/warm/{id}"), "").await;
            if job["state"] != "running" {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("job {id} still running");
    }

    #[tokio::test]
    async fn warming_jobs_are_bounded() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let svc = AdminService::without_auth(Cache::builder().build().unwrap())
            .prefix("/admin")
            .warmer(Gate(Arc::clone(&gate)));
        for id in 1..=MAX_JOBS as u64 {
            let (status, started) =
                call(&svc, Method::POST, "/admin/warm", r#"["/a", "/b"]"#).await;
            assert_eq!(status, StatusCode::ACCEPTED);
            assert_eq!(
                started,
                json!({"id": id, "status": format!("/admin/warm/{id}")})
            );
        }
        let (_, job) = call(&svc, Method::GET, "/admin/warm/3", "").await;
        assert_eq!(job["state"], "running");
        assert_eq!(job["requested"], 2);
        assert_eq!(job["report"], Value::Null);
        // All running: no room.
        let (status, err) = call(&svc, Method::POST, "/admin/warm", r#"["/a"]"#).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert!(err["error"]
            .as_str()
            .unwrap()
            .contains("32 warming jobs are running"));

        // One finishes: the next job takes its place.
        gate.add_permits(1);
        let done = loop {
            let mut done = None;
            for id in 1..=MAX_JOBS as u64 {
                let (_, job) = call(&svc, Method::GET, &format!("/admin/warm/{id}"), "").await;
                if job["state"] == "done" {
                    done = Some((id, job));
                }
            }
            match done {
                Some(d) => break d,
                None => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        };
        assert_eq!(done.1["progress"]["done"], 2);
        assert_eq!(done.1["report"]["warmed"], 2);
        let (status, started) = call(&svc, Method::POST, "/admin/warm", r#"["/a"]"#).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(started["id"], 33);
        let (status, _) = call(&svc, Method::GET, &format!("/admin/warm/{}", done.0), "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // A panicking warmer fails its job.
        gate.add_permits(1000);
        for id in 1..=MAX_JOBS as u64 + 1 {
            if id != done.0 {
                assert_eq!(wait_done(&svc, id).await["state"], "done");
            }
        }
        let (status, started) = call(&svc, Method::POST, "/admin/warm", r#"["/panic"]"#).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let job = wait_done(&svc, started["id"].as_u64().unwrap()).await;
        assert_eq!(job["state"], "failed");
        assert_eq!(job["error"], "the warming task panicked");
    }

    /// An invalidation of stored responses.
    fn http(target: Target) -> Invalidation {
        Invalidation {
            values: None,
            target,
        }
    }

    #[test]
    fn invalidation_bodies() {
        let p = |v: Value| Invalidation::parse(v);
        assert_eq!(p(json!({"key": "k"})), Ok(http(Target::Key("k".into()))));
        assert_eq!(p(json!({"tag": "t"})), Ok(http(Target::Tag("t".into()))));
        assert_eq!(
            p(json!({"prefix": "/p"})),
            Ok(http(Target::Prefix("/p".into())))
        );
        assert_eq!(p(json!({"all": true})), Ok(http(Target::All)));
        assert!(p(json!({})).unwrap_err().contains("(got none)"));
        assert!(p(json!({"key": "k", "tag": "t"}))
            .unwrap_err()
            .contains("(got key, tag)"));
        assert!(p(json!({"all": false}))
            .unwrap_err()
            .contains("must be true"));
        assert!(p(json!({"prefix": "p"}))
            .unwrap_err()
            .contains("starting with /"));
        assert!(p(json!({"key": 1}))
            .unwrap_err()
            .contains("must be a string"));
        assert!(p(json!({"key": ""}))
            .unwrap_err()
            .contains("must not be empty"));
        assert!(p(json!({"url": "/x"}))
            .unwrap_err()
            .contains("unknown field \"url\""));
        assert!(p(json!(["key"]))
            .unwrap_err()
            .contains("expected a JSON object"));
    }

    #[cfg(feature = "values")]
    #[test]
    fn value_invalidation_bodies() {
        let p = |v: Value| Invalidation::parse(v);
        let odds = |target| {
            Ok(Invalidation {
                values: Some("odds".into()),
                target,
            })
        };
        assert_eq!(
            p(json!({"values": "odds", "key": "match:1"})),
            odds(Target::Key("match:1".into()))
        );
        assert_eq!(
            p(json!({"values": "odds", "tag": "football"})),
            odds(Target::Tag("football".into()))
        );
        // A prefix of keys: no leading `/` needed.
        assert_eq!(
            p(json!({"prefix": "match:", "values": "odds"})),
            odds(Target::Prefix("match:".into()))
        );
        assert_eq!(p(json!({"values": "odds", "all": true})), odds(Target::All));
        let err = |v: Value| p(v).unwrap_err();
        assert!(err(json!({"values": "odds"})).contains("(got none)"));
        assert!(err(json!({"values": "odds", "key": "a", "tag": "b"})).contains("(got key, tag)"));
        assert!(err(json!({"values": "odds", "prefix": ""})).contains("must not be empty"));
        assert!(err(json!({"values": "odds", "all": false})).contains("must be true"));
        for name in [
            json!(""),
            json!("bad\nname"),
            json!("x".repeat(65)),
            json!(7),
        ] {
            assert!(
                err(json!({"values": name, "key": "k"}))
                    .contains("\"values\" must be a value cache's name"),
                "{name}"
            );
        }
        assert!(err(json!({"values": "odds", "url": "k"})).contains("unknown field \"url\""));
        assert_eq!(
            p(json!({"values": "x".repeat(64), "key": "k"})).map(|i| i.values.map(|v| v.len())),
            Ok(Some(64))
        );
    }
}
