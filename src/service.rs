use std::future::poll_fn;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::body::CacheBody;
use crate::cache::{Decision, CACHE_STATUS};
use crate::flow::{self, Upstream};
use crate::future::ResponseFuture;
use crate::observe::{request_span, Outcome};
use crate::Cache;
use tracing::Instrument;

/// Caches the responses of the inner service `S`. Made by
/// [`CacheLayer`](crate::CacheLayer).
///
/// Fresh hits are answered without calling `S`; misses call it once per
/// key however many requests arrive together; requests the cache does not
/// handle pass straight through with their body streamed. `S`'s errors are
/// returned unchanged and the cache adds none of its own.
#[derive(Debug, Clone)]
pub struct CacheService<S> {
    inner: S,
    cache: Cache,
}

impl<S> CacheService<S> {
    /// Wraps `inner` with `cache`.
    pub fn new(inner: S, cache: Cache) -> Self {
        Self { inner, cache }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }
}

/// The inner service as the engine's upstream. The first call uses the
/// instance `poll_ready` prepared; `ready` says whether that still holds.
struct ServiceUpstream<S> {
    svc: S,
    ready: bool,
}

impl<S, B, ResB> Upstream<B> for ServiceUpstream<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResB: Body + Send + 'static,
{
    type Body = ResB;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResB>, S::Error>> + Send>>;

    fn call(mut self, req: Request<B>) -> Self::Future {
        Box::pin(async move {
            if !self.ready {
                poll_fn(|cx| self.svc.poll_ready(cx)).await?;
            }
            self.svc.call(req).await
        })
    }
}

impl<S, B, ResB> Service<Request<B>> for CacheService<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResB: Body + Send + 'static,
    ResB::Data: Send,
    ResB::Error: Send,
{
    type Response = Response<CacheBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let obs = &self.cache.shared.obs;
        let (mut start, label, span) = if obs.cfg.enabled {
            let label = obs.labels.label_of(&parts);
            let span = request_span(obs.cfg.span_level, &parts);
            // Fresh L1 hits are timed one in HIT_TIMING_SAMPLE (every request
            // with a live span is).
            let start = if span.is_disabled() {
                obs.start_sampled()
            } else {
                obs.start()
            };
            (start, label, span)
        } else {
            (0, 0, tracing::Span::none())
        };
        let decision = self.cache.decide::<ResB>(&parts, label, &span);
        if obs.cfg.enabled && start == 0 && !matches!(decision, Decision::Hit(..)) {
            // Not a fresh hit: always timed (from here; the L1 look-up
            // before is a few hundred nanoseconds).
            start = obs.start();
        }
        if !span.is_disabled() {
            let ms = obs.elapsed_ns(start) as f64 / 1e6;
            span.record("cache.lookup_ms", ms);
        }
        match decision {
            Decision::Hit(resp, now) => {
                if self.cache.shared.obs.cfg.enabled {
                    let key = self.cache.key_for_display(&parts, &span);
                    self.cache.finish(
                        label,
                        &Outcome::HIT_L1,
                        start,
                        &span,
                        Some(resp.status()),
                        key.as_deref(),
                        Some(now),
                    );
                }
                ResponseFuture::ready(resp)
            }
            Decision::Respond(resp) => {
                finish_now(&self.cache, label, start, &span, &parts, &resp);
                ResponseFuture::ready(resp)
            }
            Decision::Pass(status) => {
                self.cache.shared.counters.upstream_calls.incr();
                let outcome = Outcome::PASS;
                let key = self.cache.key_for_display(&parts, &span);
                self.cache
                    .finish(label, &outcome, start, &span, None, key.as_deref(), None);
                let future = {
                    let _entered = span.enter();
                    self.inner.call(Request::from_parts(parts, body))
                };
                ResponseFuture::pass(future, status, span)
            }
            Decision::Stale(resp, plan) | Decision::Refresh(resp, plan) => {
                finish_now(&self.cache, label, start, &span, &parts, &resp);
                let up = self.take_ready();
                flow::spawn_refresh(
                    self.cache.clone(),
                    Request::from_parts(parts, body),
                    up,
                    plan,
                    &span,
                );
                ResponseFuture::ready(resp)
            }
            Decision::Fetch(plan) => {
                let up = self.take_ready();
                let cache = self.cache.clone();
                let key = cache.key_for_display(&parts, &span);
                let fut = flow::fetch(cache.clone(), Request::from_parts(parts, body), up, plan);
                ResponseFuture::engine(engine(cache, fut, label, start, span, key))
            }
            Decision::Unsafe => {
                let up = self.take_ready();
                let cache = self.cache.clone();
                let key = cache.key_for_display(&parts, &span);
                let fut = flow::unsafe_method(cache.clone(), Request::from_parts(parts, body), up);
                ResponseFuture::engine(engine(cache, fut, label, start, span, key))
            }
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Reports a request answered at once.
fn finish_now<RB>(
    cache: &Cache,
    label: u16,
    start: u64,
    span: &tracing::Span,
    parts: &http::request::Parts,
    resp: &Response<RB>,
) {
    let outcome = Outcome::from_status(resp.headers().get(&CACHE_STATUS));
    let key = cache.key_for_display(parts, span);
    cache.finish(
        label,
        &outcome,
        start,
        span,
        Some(resp.status()),
        key.as_deref(),
        None,
    );
}

/// Runs an engine path inside the request's span and reports it when the
/// response head is ready.
fn engine<F, RB, E>(
    cache: Cache,
    fut: F,
    label: u16,
    start: u64,
    span: tracing::Span,
    key: Option<String>,
) -> BoxFuture<Result<Response<CacheBody<RB>>, E>>
where
    F: Future<Output = Result<Response<CacheBody<RB>>, E>> + Send + 'static,
    RB: Body + 'static,
    E: 'static,
{
    let inner = span.clone();
    let fut = async move {
        let result = fut.await;
        let (outcome, status) = match &result {
            Ok(resp) => (
                Outcome::from_status(resp.headers().get(&CACHE_STATUS)),
                Some(resp.status()),
            ),
            Err(_) => (Outcome::FAILED, None),
        };
        cache.finish(label, &outcome, start, &span, status, key.as_deref(), None);
        result
    };
    Box::pin(fut.instrument(inner))
}

impl<S: Clone> CacheService<S> {
    /// Takes the instance `poll_ready` prepared, leaving a clone in its
    /// place (the usual tower pattern for services moved into futures).
    fn take_ready(&mut self) -> ServiceUpstream<S> {
        let clone = self.inner.clone();
        ServiceUpstream {
            svc: std::mem::replace(&mut self.inner, clone),
            ready: true,
        }
    }
}
