use std::future::poll_fn;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::body::CacheBody;
use crate::cache::Decision;
use crate::flow::{self, Upstream};
use crate::future::ResponseFuture;
use crate::Cache;

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
        match self.cache.decide::<ResB>(&parts) {
            Decision::Respond(resp) => ResponseFuture::ready(resp),
            Decision::Pass(status) => {
                self.cache.shared.counters.upstream_calls.incr();
                ResponseFuture::pass(self.inner.call(Request::from_parts(parts, body)), status)
            }
            Decision::Stale(resp, plan) => {
                let up = self.take_ready();
                flow::spawn_refresh(
                    self.cache.clone(),
                    Request::from_parts(parts, body),
                    up,
                    plan,
                );
                ResponseFuture::ready(resp)
            }
            Decision::Fetch(plan) => {
                let up = self.take_ready();
                let fut = flow::fetch(
                    self.cache.clone(),
                    Request::from_parts(parts, body),
                    up,
                    plan,
                );
                ResponseFuture::engine(Box::pin(fut))
            }
            Decision::Unsafe => {
                let up = self.take_ready();
                let fut =
                    flow::unsafe_method(self.cache.clone(), Request::from_parts(parts, body), up);
                ResponseFuture::engine(Box::pin(fut))
            }
        }
    }
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
