//! The response future of [`CacheService`](crate::CacheService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use http::{HeaderValue, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::body::CacheBody;
use crate::status::CACHE_STATUS;
use crate::Cache;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The response future of [`CacheService`](crate::CacheService)`<S>`
    /// for requests of type `R` and response bodies of type `B`: an answer
    /// from the cache (ready at once), a request passed through to `S`
    /// (waiting for a clone of `S` to be ready, then its call), or the
    /// engine's upstream path.
    pub struct ResponseFuture<S: Service<R>, R, B: Body> {
        #[pin]
        kind: Kind<S, R, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S: Service<R>, R, B: Body> {
        Ready { response: Option<Response<CacheBody<B>>> },
        Pass {
            #[pin] call: Call<S, R>,
            status: Option<HeaderValue>,
            span: tracing::Span,
            // The cache, when it removes targeted fields before forwarding.
            strip: Option<Cache>,
        },
        Engine { future: BoxFuture<Result<Response<CacheBody<B>>, S::Error>> },
    }
}

pin_project! {
    /// A call on a clone of the inner service: its `poll_ready`, then its
    /// `call` (as `tower::util::Oneshot`). Nothing is reserved on the
    /// service `CacheService` keeps.
    ///
    /// `Waiting` is boxed: it is made only when the inner service was not
    /// ready at once (the request waits anyway), and unboxed it would make
    /// every `ResponseFuture` (hits included) larger by a request, a cost
    /// paid in moves on every call.
    #[project = CallProj]
    enum Call<S: Service<R>, R> {
        Waiting { pending: Option<Box<(S, R)>> },
        Calling { #[pin] future: S::Future },
        Failed { error: Option<S::Error> },
    }
}

impl<S: Service<R>, R> Future for Call<S, R> {
    type Output = Result<S::Response, S::Error>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                CallProj::Waiting { pending } => {
                    let (svc, _) = &mut **pending.as_mut().expect("Call polled after completion");
                    ready!(svc.poll_ready(cx))?;
                    let (mut svc, req) = *pending.take().expect("checked above");
                    let future = svc.call(req);
                    self.set(Call::Calling { future });
                }
                CallProj::Calling { future } => return future.poll(cx),
                CallProj::Failed { error } => {
                    let error = error.take().expect("Call polled after completion");
                    return Poll::Ready(Err(error));
                }
            }
        }
    }
}

impl<S: Service<R>, R, B: Body> ResponseFuture<S, R, B> {
    pub(crate) fn ready(response: Response<CacheBody<B>>) -> Self {
        Self {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }

    /// `req` passed through to `svc` (a clone of the inner service), once
    /// `svc` is ready.
    ///
    /// Readiness is tried at once (with a no-op waker): a service that is
    /// ready is called here, so the request is not moved into the future
    /// and out again (the common case, and the pass path's cost). One that
    /// is not is polled again, with the caller's waker, when the future is;
    /// what it holds meanwhile belongs to this request's clone alone.
    ///
    /// `strip`: the cache, when it removes the targeted cache-control
    /// field it obeys from what it forwards.
    #[inline]
    pub(crate) fn pass(
        mut svc: S,
        req: R,
        status: HeaderValue,
        span: tracing::Span,
        strip: Option<Cache>,
    ) -> Self {
        let entered = span.enter();
        let call = match svc.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => {
                // Built in place: the common case, kept free of moves.
                let future = svc.call(req);
                drop(entered);
                return Self {
                    kind: Kind::Pass {
                        call: Call::Calling { future },
                        status: Some(status),
                        span,
                        strip,
                    },
                };
            }
            Poll::Ready(Err(error)) => Call::Failed { error: Some(error) },
            Poll::Pending => Call::Waiting {
                pending: Some(Box::new((svc, req))),
            },
        };
        drop(entered);
        Self {
            kind: Kind::Pass {
                call,
                status: Some(status),
                span,
                strip,
            },
        }
    }

    pub(crate) fn engine(future: BoxFuture<Result<Response<CacheBody<B>>, S::Error>>) -> Self {
        Self {
            kind: Kind::Engine { future },
        }
    }
}

impl<S: Service<R>, R, B: Body> fmt::Debug for ResponseFuture<S, R, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Ready { .. } => "ready",
            Kind::Pass {
                call: Call::Waiting { .. },
                ..
            } => "pass (waiting for readiness)",
            Kind::Pass { .. } => "pass",
            Kind::Engine { .. } => "engine",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<S, R, B> Future for ResponseFuture<S, R, B>
where
    S: Service<R, Response = Response<B>>,
    B: Body,
{
    type Output = Result<Response<CacheBody<B>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Ready { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => panic!("ResponseFuture polled after completion"),
            },
            KindProj::Pass {
                call,
                status,
                span,
                strip,
            } => {
                let resp = {
                    let _entered = span.enter();
                    ready!(call.poll(cx))?
                };
                if !span.is_disabled() {
                    span.record(
                        "http.response.status_code",
                        i64::from(resp.status().as_u16()),
                    );
                }
                let (mut parts, body) = resp.into_parts();
                if let Some(status) = status.take() {
                    parts.headers.insert(CACHE_STATUS.clone(), status);
                }
                if let Some(cache) = strip.take() {
                    cache.shared.policy.strip_targeted(&mut parts.headers);
                }
                Poll::Ready(Ok(Response::from_parts(parts, CacheBody::stream(body))))
            }
            KindProj::Engine { future } => future.as_mut().poll(cx),
        }
    }
}
