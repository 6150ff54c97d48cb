//! The response body of [`CacheService`](crate::CacheService).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// A response body that is either shared bytes from the cache or the
    /// inner service's body streamed through (never buffered whole).
    pub struct CacheBody<B: Body> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B: Body> {
        Empty,
        Full { data: Option<Bytes> },
        Stream { #[pin] inner: B },
        // Frames read while deciding whether to store, then the rest of the
        // inner body (or the error that stopped the read).
        Prefixed {
            prefix: VecDeque<Bytes>,
            error: Option<B::Error>,
            inner: Pin<Box<B>>,
        },
    }
}

impl<B: Body> CacheBody<B> {
    /// An empty body.
    pub fn empty() -> Self {
        Self { kind: Kind::Empty }
    }

    /// A body of shared bytes (cloned from the cache, not copied).
    pub fn full(data: Bytes) -> Self {
        if data.is_empty() {
            return Self::empty();
        }
        Self {
            kind: Kind::Full { data: Some(data) },
        }
    }

    /// The inner body, streamed through as it arrives.
    pub fn stream(inner: B) -> Self {
        Self {
            kind: Kind::Stream { inner },
        }
    }

    /// Already-read frames, then an error or the rest of `inner`.
    pub(crate) fn prefixed(
        prefix: VecDeque<Bytes>,
        error: Option<B::Error>,
        inner: Pin<Box<B>>,
    ) -> Self {
        Self {
            kind: Kind::Prefixed {
                prefix,
                error,
                inner,
            },
        }
    }

    /// Whether the body comes from the cache's storage.
    pub fn is_cached(&self) -> bool {
        matches!(self.kind, Kind::Full { .. } | Kind::Empty)
    }
}

impl<B: Body> Default for CacheBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B: Body> fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Empty => "empty",
            Kind::Full { .. } => "full",
            Kind::Stream { .. } => "stream",
            Kind::Prefixed { .. } => "prefixed",
        };
        f.debug_struct("CacheBody").field("kind", &kind).finish()
    }
}

fn to_bytes<D: Buf>(mut d: D) -> Bytes {
    d.copy_to_bytes(d.remaining())
}

impl<B: Body> Body for CacheBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Empty => Poll::Ready(None),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Stream { inner } => match inner.poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame.map_data(to_bytes)))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            KindProj::Prefixed {
                prefix,
                error,
                inner,
            } => {
                if let Some(b) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                if let Some(e) = error.take() {
                    return Poll::Ready(Some(Err(e)));
                }
                inner
                    .as_mut()
                    .poll_frame(cx)
                    .map(|o| o.map(|r| r.map(|f| f.map_data(to_bytes))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full { data } => data.is_none(),
            Kind::Stream { inner } => inner.is_end_stream(),
            Kind::Prefixed {
                prefix,
                error,
                inner,
            } => prefix.is_empty() && error.is_none() && inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Stream { inner } => inner.size_hint(),
            Kind::Prefixed { prefix, inner, .. } => {
                let buffered: u64 = prefix.iter().map(|b| b.len() as u64).sum();
                let h = inner.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + buffered);
                if let Some(u) = h.upper() {
                    out.set_upper(u + buffered);
                }
                out
            }
        }
    }
}
