//! A [`reqwest_middleware`] middleware on the same engine (feature
//! `reqwest`): the calls a service makes to slow third-party APIs are
//! cached with the same semantics, tiers, coalescing, stale-while-
//! revalidate, stats, spans and labels (by default the upstream host) as
//! [`CacheLayer`](crate::CacheLayer).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tower_tiered_cache::{reqwest::ClientBuilder, Cache, CacheMode};
//!
//! let cache = Cache::builder().mode(CacheMode::Private).build()?;
//! // The cache first; middlewares added here run after it, for misses and
//! // for background refreshes alike.
//! let client = ClientBuilder::new(reqwest::Client::new(), cache.clone()).build();
//! let odds = client.get("http://odds.example/v1/events").send().await?.text().await?;
//! let again = client.get("http://odds.example/v1/events").send().await?; // a hit
//! assert_eq!(again.headers()["cache-status"], "tower-tiered-cache; hit; detail=l1");
//! println!("{:?}", cache.label_stats()); // per upstream host
//! # let _ = odds; Ok(()) }
//! ```

use std::sync::Arc;

use http::Extensions;
use reqwest_middleware::{ClientWithMiddleware, Middleware, Next};

use crate::body::CacheBody;
use crate::cache::Fetch;
use crate::flow::{self, Upstream};
use crate::service::{BoxFuture, Dispatched, Lookup};
use crate::status::CACHE_STATUS;
use crate::Cache;

/// Caches responses in a `reqwest-middleware` chain.
///
/// Put it first in the chain: what comes after it (retries, auth) runs
/// for misses, revalidations and refreshes, and never for hits.
///
/// The cache keys requests (and partitions them by credentials, with
/// [`partition_by_credentials`](crate::CacheBuilder::partition_by_credentials))
/// by what they carry when it sees them: credentials that a middleware
/// after it adds (per-user `Authorization`, cookies from reqwest's cookie
/// store) are not seen. Put such credentials on the request before the
/// cache, or use one cache per identity. Background refreshes do not
/// carry the request's `Extensions`.
///
/// Background refreshes (stale-while-revalidate, eager refresh) outlive
/// the request that started them, so they cannot go through the rest of
/// the chain (its `Next`): they go through a client of their own. That is
/// why [`new`](Self::new) takes the `reqwest::Client`: in a plain
/// `reqwest_middleware` chain, refreshes are sent by that client, with no
/// middleware. [`refresh_through`](Self::refresh_through) gives them the
/// middlewares that come after the cache (retries, auth), as
/// [`ClientBuilder`] does by itself.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_tiered_cache::{reqwest::CacheMiddleware, Cache, CacheMode};
///
/// let cache = Cache::builder().mode(CacheMode::Private).build()?;
/// let http = reqwest::Client::new();
/// let client = reqwest_middleware::ClientBuilder::new(http.clone())
///     .with(CacheMiddleware::new(http, cache))
///     .build();
/// let rates = client.get("http://rates.example/v1/eur").send().await?;
/// # drop(rates); Ok(()) }
/// ```
#[derive(Clone)]
pub struct CacheMiddleware {
    cache: Cache,
    refresh: ClientWithMiddleware,
}

impl std::fmt::Debug for CacheMiddleware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheMiddleware")
            .field("cache", &self.cache)
            .field("refresh_client", &self.refresh)
            .finish()
    }
}

impl CacheMiddleware {
    /// A middleware on `cache` (clones share everything) whose background
    /// refreshes are sent by `client` (with no middleware; see
    /// [`refresh_through`](Self::refresh_through)). Give it the client the
    /// chain is built on (a clone shares its connection pool).
    pub fn new(client: reqwest::Client, cache: Cache) -> Self {
        Self {
            cache,
            refresh: reqwest_middleware::ClientBuilder::new(client).build(),
        }
    }

    /// Background refreshes go through `client` instead of the plain client
    /// given to [`new`](Self::new): give it the middlewares that come after
    /// the cache in the main chain.
    pub fn refresh_through(mut self, client: ClientWithMiddleware) -> Self {
        self.refresh = client;
        self
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }
}

/// Builds a [`ClientWithMiddleware`] with the cache first, the middlewares
/// given to [`with`](Self::with) after it, and background refreshes
/// through those same middlewares.
pub struct ClientBuilder {
    client: reqwest::Client,
    cache: Cache,
    rest: Vec<Arc<dyn Middleware>>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("cache", &self.cache)
            .field("middlewares", &self.rest.len())
            .finish()
    }
}

impl ClientBuilder {
    /// Starts a chain on `client` with `cache` first.
    pub fn new(client: reqwest::Client, cache: Cache) -> Self {
        Self {
            client,
            cache,
            rest: Vec::new(),
        }
    }

    /// Adds a middleware after the cache (and after those added before).
    pub fn with<M: Middleware>(self, middleware: M) -> Self {
        self.with_arc(Arc::new(middleware))
    }

    /// [`with`](Self::with) for a shared middleware.
    pub fn with_arc(mut self, middleware: Arc<dyn Middleware>) -> Self {
        self.rest.push(middleware);
        self
    }

    /// The client.
    pub fn build(self) -> ClientWithMiddleware {
        let rest = |b: reqwest_middleware::ClientBuilder| {
            self.rest.iter().fold(b, |b, m| b.with_arc(Arc::clone(m)))
        };
        let refresh = rest(reqwest_middleware::ClientBuilder::new(self.client.clone())).build();
        let cache = CacheMiddleware::new(self.client.clone(), self.cache).refresh_through(refresh);
        rest(reqwest_middleware::ClientBuilder::new(self.client).with(cache)).build()
    }
}

type Body = reqwest::Body;

#[async_trait::async_trait]
impl Middleware for CacheMiddleware {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        // The conversion fails only for a URL that is not a valid URI:
        // such a request goes through untouched. Streaming bodies convert
        // (an unsafe method with one still invalidates).
        if http::Uri::try_from(req.url().as_str()).is_err() {
            return next.run(req, extensions).await;
        }
        let url = Some(req.url().clone());
        let req = http::Request::<Body>::try_from(req)?;
        let up = NextUpstream {
            next,
            extensions,
            refresh: self.refresh.clone(),
        };
        let resp = self.call(req, up).await?;
        Ok(into_reqwest(resp, url))
    }
}

impl CacheMiddleware {
    /// The engine, as `CacheService::call` drives it.
    async fn call(
        &self,
        req: http::Request<Body>,
        up: NextUpstream<'_>,
    ) -> reqwest_middleware::Result<http::Response<CacheBody<Body>>> {
        let cache = &self.cache;
        let (parts, body) = req.into_parts();
        let lookup = Lookup::begin(cache, &parts);
        match lookup.dispatch(cache, parts, body, || up) {
            Dispatched::Ready(resp) => Ok(resp),
            Dispatched::Pass(req, status, span, up) => {
                let resp = tracing::Instrument::instrument(up().call(req), span.clone()).await?;
                if !span.is_disabled() {
                    span.record(
                        "http.response.status_code",
                        i64::from(resp.status().as_u16()),
                    );
                }
                let (mut rparts, rbody) = resp.into_parts();
                rparts.headers.insert(CACHE_STATUS.clone(), status.header());
                crate::service::strip_targeted(cache, &mut rparts.headers);
                Ok(http::Response::from_parts(rparts, CacheBody::stream(rbody)))
            }
            Dispatched::Engine(fut) => fut.await,
        }
    }
}

/// The rest of the chain, seen by the engine as its upstream.
struct NextUpstream<'a> {
    next: Next<'a>,
    extensions: &'a mut Extensions,
    refresh: ClientWithMiddleware,
}

impl<'a> Upstream<Body> for NextUpstream<'a> {
    type Body = Body;
    type Error = reqwest_middleware::Error;
    type Future = BoxFuture<'a, Result<http::Response<Body>, reqwest_middleware::Error>>;

    fn call(self, req: http::Request<Body>) -> Self::Future {
        Box::pin(exchange(req, |req| self.next.run(req, self.extensions)))
    }

    fn refresh(
        self,
        cache: Cache,
        req: http::Request<Body>,
        plan: Box<Fetch>,
        cause: &tracing::Span,
    ) {
        flow::spawn_refresh(cache, req, ClientUpstream(self.refresh), plan, cause);
    }
}

/// A client that outlives the request: background refreshes.
struct ClientUpstream(ClientWithMiddleware);

impl Upstream<Body> for ClientUpstream {
    type Body = Body;
    type Error = reqwest_middleware::Error;
    type Future = BoxFuture<'static, Result<http::Response<Body>, reqwest_middleware::Error>>;

    fn call(self, req: http::Request<Body>) -> Self::Future {
        Box::pin(exchange(req, move |req| async move {
            self.0.execute(req).await
        }))
    }

    fn refresh(
        self,
        cache: Cache,
        req: http::Request<Body>,
        plan: Box<Fetch>,
        cause: &tracing::Span,
    ) {
        flow::spawn_refresh(cache, req, self, plan, cause);
    }
}

/// One upstream call for the engine: `req` as reqwest's request, sent by
/// `send`, its response back as the engine's (see [`from_reqwest`]).
async fn exchange<F>(
    req: http::Request<Body>,
    send: impl FnOnce(reqwest::Request) -> F,
) -> Result<http::Response<Body>, reqwest_middleware::Error>
where
    F: std::future::Future<Output = reqwest_middleware::Result<reqwest::Response>>,
{
    let req = reqwest::Request::try_from(req)?;
    let url = req.url().clone();
    let resp = send(req).await?;
    Ok(from_reqwest(resp, &url))
}

/// The final URL of a response whose client followed redirects.
#[derive(Debug, Clone)]
struct FinalUrl(reqwest::Url);

/// An upstream response for the engine. After followed redirects the
/// response belongs to another URL: it keeps that URL and is not stored
/// under this request's key.
fn from_reqwest(resp: reqwest::Response, requested: &reqwest::Url) -> http::Response<Body> {
    let final_url = resp.url().clone();
    let mut resp = http::Response::from(resp);
    if final_url != *requested {
        resp.extensions_mut()
            .insert(crate::flow::NotStorable("redirected"));
        resp.extensions_mut().insert(FinalUrl(final_url));
    }
    resp
}

/// The engine's answer as a `reqwest::Response`, with the request's URL
/// (or the final one, after redirects).
fn into_reqwest(
    resp: http::Response<CacheBody<Body>>,
    url: Option<reqwest::Url>,
) -> reqwest::Response {
    let (mut parts, body) = resp.into_parts();
    let url = parts.extensions.remove::<FinalUrl>().map(|u| u.0).or(url);
    if let Some(url) = url {
        // reqwest reads the URL from this extension (`ResponseBuilderExt`).
        use reqwest::ResponseBuilderExt as _;
        if let Ok(carrier) = http::Response::builder().url(url).body(()) {
            parts.extensions.extend(carrier.into_parts().0.extensions);
        }
    }
    reqwest::Response::from(http::Response::from_parts(parts, Body::wrap(body)))
}
