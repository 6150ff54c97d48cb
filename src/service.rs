use std::future::poll_fn;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::body::CacheBody;
use crate::cache::{Decision, Fetch};
use crate::flow::{self, Upstream};
use crate::future::ResponseFuture;
use crate::observe::{request_span, Outcome};
use crate::status::{Status, StatusSink};
use crate::Cache;
use tracing::Instrument;

/// Caches the responses of the inner service `S`. Made by
/// [`CacheLayer`](crate::CacheLayer).
///
/// Fresh hits are answered without calling `S`; misses call it once per
/// key however many requests arrive together; requests the cache does not
/// handle pass straight through with their body streamed. `S`'s errors are
/// returned unchanged and the cache adds none of its own.
///
/// # Readiness
///
/// `poll_ready` is always ready and never asks `S`: a request the cache
/// can answer must not queue behind `S`'s back-pressure (a
/// `ConcurrencyLimit` permit held by a slow miss, a spent `RateLimit`).
/// A request that reaches `S` (a miss, a pass, a refresh, an unsafe
/// method) waits for a clone of `S` to be ready inside its own response
/// future, as `tower::buffer` clients do, so `S`'s limits still hold; an
/// error from `S::poll_ready` is that request's error.
///
/// # A large `S::Future`
///
/// The response future holds either a hit's response or `S`'s future, so
/// it is as large as `S::Future`, and a hit moves it a few times on its
/// way out. When `S::Future` is large (a reverse proxy's forwarding
/// future with a hyper client call and a timeout is about 700 bytes), box it
/// in `S` (return `Pin<Box<dyn Future<…> + Send>>`): passes and misses pay
/// one allocation, and hits no longer copy it. `examples/proxy.rs` does.
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

/// The inner service as the engine's upstream: a clone of it, made ready
/// only when the engine calls it (a coalesced waiter or an L2 hit never
/// does, and so reserves nothing).
pub(crate) struct ServiceUpstream<S> {
    svc: S,
}

impl<S> ServiceUpstream<S> {
    /// `svc` as the engine's upstream.
    pub(crate) fn new(svc: S) -> Self {
        Self { svc }
    }
}

impl<S, B, ResB> Upstream<B> for ServiceUpstream<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResB: Body<Data: Send, Error: Send> + Send + 'static,
{
    type Body = ResB;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResB>, S::Error>> + Send>>;

    fn call(mut self, req: Request<B>) -> Self::Future {
        Box::pin(async move {
            poll_fn(|cx| self.svc.poll_ready(cx)).await?;
            self.svc.call(req).await
        })
    }

    fn refresh(self, cache: Cache, req: Request<B>, plan: Box<Fetch>, cause: &tracing::Span) {
        flow::spawn_refresh(cache, req, self, plan, cause);
    }
}

impl<S, B, ResB> Service<Request<B>> for CacheService<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResB: Body<Data: Send, Error: Send> + Send + 'static,
{
    type Response = Response<CacheBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<B>, ResB>;

    /// Always ready: the inner service is not asked here. A request the
    /// cache answers never waits for it; one that reaches it waits for a
    /// clone of it to be ready inside its response future, so nothing is
    /// reserved on the inner service (say, a `ConcurrencyLimit` permit)
    /// while it is not being called.
    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let lookup = Lookup::begin(&self.cache, &parts);
        let inner = &self.inner;
        let up = || ServiceUpstream { svc: inner.clone() };
        match lookup.dispatch(&self.cache, parts, body, up) {
            Dispatched::Ready(resp) => ResponseFuture::ready(resp),
            Dispatched::Pass(req, status, span, _) => ResponseFuture::pass(
                self.inner.clone(),
                req,
                status.header(),
                span,
                strips_targeted(&self.cache).then(|| self.cache.clone()),
            ),
            Dispatched::Engine(fut) => ResponseFuture::engine(fut),
        }
    }
}

/// Whether the cache removes the targeted cache-control field it obeys
/// from the responses it forwards
/// ([`strip_targeted_cache_control`](crate::CacheBuilder::strip_targeted_cache_control)).
#[inline]
pub(crate) fn strips_targeted(cache: &Cache) -> bool {
    cache.shared.policy.strip_targeted
}

/// Removes the targeted field a response with `headers` is judged by, when
/// so configured: every response the engine answers with passes here;
/// passes strip in their adapter.
#[inline]
pub(crate) fn strip_targeted(cache: &Cache, headers: &mut http::HeaderMap) {
    cache.shared.policy.strip_targeted(headers);
}

/// What an adapter does with a request once the engine has handled what it
/// can ([`Lookup::dispatch`]).
pub(crate) enum Dispatched<'a, B, RB: Body, E, F> {
    /// The answer, ready now (reported).
    Ready(Response<CacheBody<RB>>),
    /// Forward it, adding this status (reported) and removing the targeted
    /// cache-control field when so configured ([`strip_targeted`]); the adapter's
    /// upstream maker comes back for it.
    Pass(Request<B>, Status, tracing::Span, F),
    /// The engine's path (a miss, a revalidation, an unsafe method),
    /// reported when it ends.
    Engine(BoxFuture<'a, Result<Response<CacheBody<RB>>, E>>),
}

/// Reports a request as cancelled when dropped (forgotten once it
/// finished).
struct Unfinished<'c> {
    cache: &'c Cache,
    label: u16,
    span: &'c tracing::Span,
    /// The global outcome is counted already (a pass): only the label's
    /// count is missing.
    counted: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if self.counted {
            let obs = &self.cache.shared.obs;
            if obs.cfg.enabled {
                obs.labels
                    .counters(self.label)
                    .add(crate::observe::labels::field::PASS, 1);
            }
        } else {
            self.cache.cancelled(self.label, self.span);
        }
    }
}

/// A boxed future that may borrow for `'a`.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One request's observation: when it started (0: not timed), its label
/// and its span. Shared by every adapter so that they report alike.
pub(crate) struct Lookup {
    start: u64,
    label: u16,
    pub(crate) span: tracing::Span,
    /// Where the request's status goes when the caller asked for it
    /// (cache warming).
    sink: Option<StatusSink>,
}

impl Lookup {
    /// Labels the request and opens its span.
    pub(crate) fn begin(cache: &Cache, parts: &http::request::Parts) -> Self {
        #[cfg(feature = "redis")]
        if let Some(flusher) = &cache.shared.shared_stats {
            flusher.ensure_started(&cache.shared);
        }
        let obs = &cache.shared.obs;
        let sink = parts.extensions.get::<StatusSink>().cloned();
        if !obs.cfg.enabled {
            return Self {
                start: 0,
                label: 0,
                span: tracing::Span::none(),
                sink,
            };
        }
        let label = obs.labels.label_of(parts);
        let span = request_span(obs.cfg.span_level, parts);
        // Fresh L1 hits are timed one in HIT_TIMING_SAMPLE (every request
        // with a live span is).
        let start = if span.is_disabled() {
            obs.start_sampled()
        } else {
            obs.start()
        };
        Self {
            start,
            label,
            span,
            sink,
        }
    }

    /// What the engine does with the request.
    pub(crate) fn decide<RB: Body>(
        &mut self,
        cache: &Cache,
        parts: &http::request::Parts,
    ) -> Decision<RB> {
        let obs = &cache.shared.obs;
        let decision = cache.decide::<RB>(parts, self.label, &self.span);
        if obs.cfg.enabled
            && self.start == 0
            && !matches!(decision, Decision::Hit(..) | Decision::Pass(_))
        {
            // Not a fresh hit: always timed (from here; the L1 look-up
            // before is a few hundred nanoseconds). Passes are not timed:
            // their time is the upstream's.
            self.start = obs.start();
        }
        if !self.span.is_disabled() {
            let ms = obs.elapsed_ns(self.start) as f64 / 1e6;
            self.span.record("cache.lookup_ms", ms);
        }
        decision
    }

    /// Decides what to do with the request and does all of it that does
    /// not depend on the adapter: answers, background refreshes, the
    /// engine's paths, and reporting. `up` makes the adapter's upstream,
    /// only when one is needed (a fresh hit makes none).
    pub(crate) fn dispatch<'a, B, U, F>(
        mut self,
        cache: &Cache,
        parts: http::request::Parts,
        body: B,
        up: F,
    ) -> Dispatched<'a, B, U::Body, U::Error, F>
    where
        B: Send + 'static,
        U: Upstream<B> + 'a,
        F: FnOnce() -> U,
    {
        match self.decide::<U::Body>(cache, &parts) {
            Decision::Hit(mut resp, now) => {
                strip_targeted(cache, resp.headers_mut());
                self.finish_hit(cache, &parts, &resp, now);
                Dispatched::Ready(resp)
            }
            Decision::Respond(mut resp, status) => {
                strip_targeted(cache, resp.headers_mut());
                self.finish_now(cache, &parts, &resp, status);
                Dispatched::Ready(resp)
            }
            Decision::Pass(status) => {
                self.finish_pass(cache, &parts, status);
                Dispatched::Pass(Request::from_parts(parts, body), status, self.span, up)
            }
            Decision::Stale(mut resp, plan, status) | Decision::Refresh(mut resp, plan, status) => {
                strip_targeted(cache, resp.headers_mut());
                self.finish_now(cache, &parts, &resp, status);
                let req = Request::from_parts(parts, body);
                up().refresh(cache.clone(), req, plan, &self.span);
                Dispatched::Ready(resp)
            }
            Decision::Fetch(plan) => {
                let key = cache.key_for_display(&parts, &self.span);
                let req = Request::from_parts(parts, body);
                let fut = Box::pin(flow::fetch(cache.clone(), req, up(), plan));
                Dispatched::Engine(self.engine(cache.clone(), fut, key, false))
            }
            Decision::Unsafe => {
                let key = cache.key_for_display(&parts, &self.span);
                let req = Request::from_parts(parts, body);
                let fut = Box::pin(flow::unsafe_method(cache.clone(), req, up()));
                Dispatched::Engine(self.engine(cache.clone(), fut, key, true))
            }
        }
    }

    /// Reports a fresh L1 hit decided at `now`.
    pub(crate) fn finish_hit<RB>(
        &self,
        cache: &Cache,
        parts: &http::request::Parts,
        resp: &Response<RB>,
        now: u64,
    ) {
        self.tell(Status::HIT_L1);
        self.report(
            cache,
            parts,
            &Outcome::HIT_L1,
            Some(resp.status()),
            Some(now),
        );
    }

    /// Hands the request's status to the caller that asked for it.
    #[inline]
    fn tell(&self, status: Status) {
        if let Some(sink) = &self.sink {
            sink.set(status);
        }
    }

    /// Reports a request answered at once with `status`.
    pub(crate) fn finish_now<RB>(
        &self,
        cache: &Cache,
        parts: &http::request::Parts,
        resp: &Response<RB>,
        status: Status,
    ) {
        self.tell(status);
        let outcome = Outcome::from(&status);
        self.report(cache, parts, &outcome, Some(resp.status()), None);
    }

    /// Reports a request passed through with `status` (before it is sent).
    pub(crate) fn finish_pass(&self, cache: &Cache, parts: &http::request::Parts, status: Status) {
        self.tell(status);
        cache.shared.counters.upstream_calls.incr();
        self.report(cache, parts, &Outcome::from(&status), None, None);
    }

    /// Reports the request as `outcome` (`code`: the response's status;
    /// `now`: when a hit was decided), with its key where it is shown;
    /// nothing to do without per-request instrumentation.
    fn report(
        &self,
        cache: &Cache,
        parts: &http::request::Parts,
        outcome: &Outcome,
        code: Option<http::StatusCode>,
        now: Option<u64>,
    ) {
        if cache.shared.obs.cfg.enabled {
            let key = cache.key_for_display(parts, &self.span);
            let key = key.as_deref();
            cache.finish(self.label, outcome, self.start, &self.span, code, key, now);
        }
    }

    /// Runs an engine path inside the request's span and reports it when
    /// the response head is ready.
    ///
    /// `counted`: the request's outcome is already counted (an unsafe
    /// method is a pass from the start), so a drop is not `cancelled`.
    ///
    /// `fut` comes boxed: the engine's futures are large state machines,
    /// and boxing them where they are made moves them once, where every
    /// move on the way here (and into this wrapper) was a copy of the
    /// whole state (over 1 000 instructions of `memcpy` per L2 hit).
    pub(crate) fn engine<'a, RB, E>(
        self,
        cache: Cache,
        fut: BoxFuture<'a, Result<Response<CacheBody<RB>>, E>>,
        key: Option<String>,
        counted: bool,
    ) -> BoxFuture<'a, Result<Response<CacheBody<RB>>, E>>
    where
        RB: Body + 'a,
        E: 'a,
    {
        let Lookup {
            start,
            label,
            span,
            sink,
        } = self;
        let inner = span.clone();
        let fut = async move {
            // Counted as cancelled if this future is dropped first.
            let guard = Unfinished {
                cache: &cache,
                label,
                span: &span,
                counted,
            };
            let mut result = fut.await;
            std::mem::forget(guard);
            if let Ok(resp) = &mut result {
                strip_targeted(&cache, resp.headers_mut());
            }
            // Every response the engine makes carries its typed status.
            let (outcome, status) = match &result {
                Ok(resp) => {
                    let marked = resp.extensions().get::<Status>().copied();
                    if let (Some(sink), Some(marked)) = (&sink, marked) {
                        sink.set(marked);
                    }
                    (Outcome::of(marked.as_ref()), Some(resp.status()))
                }
                Err(_) => (Outcome::FAILED, None),
            };
            cache.finish(label, &outcome, start, &span, status, key.as_deref(), None);
            result
        };
        Box::pin(fut.instrument(inner))
    }
}
