//! The response future of [`CacheService`](crate::CacheService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderValue, Response};
use http_body::Body;
use pin_project_lite::pin_project;

use crate::body::CacheBody;
use crate::cache::CACHE_STATUS;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The response future of [`CacheService`](crate::CacheService): an
    /// answer from the cache (ready at once), the inner service's future
    /// passed through, or the engine's upstream path.
    pub struct ResponseFuture<F, B: Body, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B: Body, E> {
        Ready { response: Option<Response<CacheBody<B>>> },
        Pass { #[pin] future: F, status: Option<HeaderValue>, span: tracing::Span },
        Engine { future: BoxFuture<Result<Response<CacheBody<B>>, E>> },
    }
}

impl<F, B: Body, E> ResponseFuture<F, B, E> {
    pub(crate) fn ready(response: Response<CacheBody<B>>) -> Self {
        Self {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }

    pub(crate) fn pass(future: F, status: HeaderValue, span: tracing::Span) -> Self {
        Self {
            kind: Kind::Pass {
                future,
                status: Some(status),
                span,
            },
        }
    }

    pub(crate) fn engine(future: BoxFuture<Result<Response<CacheBody<B>>, E>>) -> Self {
        Self {
            kind: Kind::Engine { future },
        }
    }
}

impl<F, B: Body, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Ready { .. } => "ready",
            Kind::Pass { .. } => "pass",
            Kind::Engine { .. } => "engine",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<CacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Ready { response } => match response.take() {
                Some(r) => Poll::Ready(Ok(r)),
                None => panic!("ResponseFuture polled after completion"),
            },
            KindProj::Pass {
                future,
                status,
                span,
            } => {
                let resp = {
                    let _entered = span.enter();
                    ready!(future.poll(cx))?
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
                Poll::Ready(Ok(Response::from_parts(parts, CacheBody::stream(body))))
            }
            KindProj::Engine { future } => future.as_mut().poll(cx),
        }
    }
}
