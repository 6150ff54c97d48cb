//! Helpers shared by the integration tests: scripted origins, a manual
//! clock at a whole second, gates for slow origins, a streaming body.

#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneService;
use tower::{service_fn, Layer, ServiceExt};
use tower_tiered_cache::{Cache, CacheBody, CacheLayer, CacheService, ManualClock};

pub mod capture;
pub mod loopback;

/// Where every manual clock starts: a whole second, so HTTP dates (second
/// resolution) land on it exactly.
pub const T0: u64 = 1_700_000_000_000;

/// The URL most tests use.
pub const URL: &str = "http://example.com/resource";

/// A manual clock at [`T0`].
pub fn clock() -> ManualClock {
    ManualClock::new(T0)
}

/// `n` seconds.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// An HTTP date for a time in milliseconds since the epoch.
pub fn http_date(millis: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(millis))
}

/// A `GET` for `uri`.
pub fn get(uri: &str) -> Request<()> {
    request(Method::GET, uri, &[])
}

/// A `GET` for `uri` with extra headers.
pub fn get_with(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
    request(Method::GET, uri, headers)
}

/// A request with any method and headers.
pub fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).expect("valid request")
}

/// A response with `status`, headers and a body.
pub fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(status);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .expect("valid response")
}

/// A 200 with `Cache-Control: cc` (none when empty) and `body`.
pub fn ok(cc: &str, body: &str) -> Response<Full<Bytes>> {
    if cc.is_empty() {
        response(200, &[], body)
    } else {
        response(200, &[("cache-control", cc)], body)
    }
}

/// What the origin saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

impl Seen {
    /// A request header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("ascii"))
    }
}

/// Counts and records the requests an origin receives.
#[derive(Debug, Clone, Default)]
pub struct Log {
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Log {
    /// How many times the origin was called.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The `i`th request the origin received (0-based).
    pub fn request(&self, i: usize) -> Seen {
        self.seen.lock().unwrap()[i].clone()
    }

    /// The last request the origin received.
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

/// An origin service, boxed so every test names the same type.
pub type Origin<B = Full<Bytes>, E = Infallible> = BoxCloneService<Request<()>, Response<B>, E>;

/// The cache in front of an origin.
pub type Svc<B = Full<Bytes>, E = Infallible> = CacheService<Origin<B, E>>;

/// An origin that runs `f(call_index, request)` for every call.
pub fn origin_fn<B, E, F, Fut>(f: F) -> (Origin<B, E>, Log)
where
    B: 'static,
    E: 'static,
    F: Fn(usize, Request<()>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
{
    let log = Log::default();
    let l = log.clone();
    let svc = service_fn(move |req: Request<()>| {
        let n = l.calls.fetch_add(1, Ordering::SeqCst);
        l.seen.lock().unwrap().push(Seen {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
        });
        f(n, req)
    });
    (BoxCloneService::new(svc), log)
}

/// An origin that answers at once with `f(call_index, &request)`.
pub fn origin<F>(f: F) -> (Origin, Log)
where
    F: Fn(usize, &Request<()>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    origin_fn(move |n, req: Request<()>| {
        let resp = f(n, &req);
        async move { Ok::<_, Infallible>(resp) }
    })
}

/// `origin` wrapped in a cache layer over `cache`.
pub fn cached<B, E>(cache: &Cache, origin: Origin<B, E>) -> Svc<B, E> {
    CacheLayer::new(cache.clone()).layer(origin)
}

/// Sends `req` through `svc` (a clone of it: the future borrows nothing).
pub fn call<B, E>(
    svc: &Svc<B, E>,
    req: Request<()>,
) -> impl Future<Output = Result<Response<CacheBody<B>>, E>> + Send + 'static
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Send,
    E: Send + 'static,
{
    svc.clone().oneshot(req)
}

/// Sends `req` through `svc`, expecting a response.
pub fn send<B, E>(
    svc: &Svc<B, E>,
    req: Request<()>,
) -> impl Future<Output = Response<CacheBody<B>>> + Send + 'static
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Send,
    E: Send + fmt::Debug + 'static,
{
    let fut = call(svc, req);
    async move { fut.await.expect("the origin answered") }
}

/// The whole body of a response.
pub async fn body<B>(resp: Response<B>) -> Bytes
where
    B: Body,
    B::Error: fmt::Debug,
{
    resp.into_body().collect().await.expect("body").to_bytes()
}

/// A response header's value as text.
pub fn header<B>(resp: &Response<B>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_owned())
}

/// The `Cache-Status` header.
pub fn cache_status<B>(resp: &Response<B>) -> String {
    header(resp, "cache-status").expect("a Cache-Status header")
}

/// The `Age` header, in seconds.
pub fn age<B>(resp: &Response<B>) -> Option<u64> {
    header(resp, "age").map(|a| a.parse().expect("numeric Age"))
}

/// Waits (at most ~10 s of real time) until `f` holds; returns whether it
/// did. The deadline only stops a hang (a passing test returns as soon as
/// `f` holds), so it is generous: a loaded 2-core machine can hold a task
/// back for seconds.
pub async fn eventually(f: impl FnMut() -> bool) -> bool {
    within(Duration::from_secs(10), f).await
}

/// Waits (at most `timeout` of real time) until `f` holds; returns whether
/// it did.
pub async fn within(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until the cache has written (and announced) `n` keys to L2.
pub async fn written(cache: &Cache, n: u64) {
    assert!(
        eventually(|| cache.stats().l2_writes >= n).await,
        "L2 writes did not land: {:?}",
        cache.stats()
    );
}

/// Waits until the cache is subscribed to the L2 invalidation channel.
pub async fn subscribed(cache: &Cache) {
    assert!(
        eventually(|| cache.stats().l2_subscribed).await,
        "not subscribed: {:?}",
        cache.stats()
    );
}

/// Lets every ready task run until it blocks.
pub async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// A gate a slow origin waits at until the test opens it.
#[derive(Debug, Clone)]
pub struct Gate(Arc<tokio::sync::Semaphore>);

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(0)))
    }

    /// Waits until the gate lets one caller through.
    pub async fn pass(&self) {
        if let Ok(permit) = self.0.acquire().await {
            permit.forget();
        }
    }

    /// Lets `n` waiting (or future) callers through.
    pub fn let_through(&self, n: usize) {
        self.0.add_permits(n);
    }

    /// Opens the gate for good.
    pub fn open(&self) {
        self.0.close();
    }
}

/// A body that arrives in chunks, pending between them, with no size hint.
#[derive(Debug)]
pub struct Chunked {
    chunks: VecDeque<Bytes>,
    pending_next: bool,
}

impl Chunked {
    /// `count` chunks of `size` bytes; chunk `i` is filled with `b'a' + i % 26`.
    pub fn new(count: usize, size: usize) -> Self {
        Self {
            chunks: (0..count)
                .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; size]))
                .collect(),
            pending_next: true,
        }
    }

    /// The bytes [`Chunked::new`] produces, concatenated.
    pub fn expected(count: usize, size: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(count * size);
        for i in 0..count {
            out.extend_from_slice(&vec![b'a' + (i % 26) as u8; size]);
        }
        out
    }
}

impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.pending_next && !this.chunks.is_empty() {
            this.pending_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.pending_next = true;
        Poll::Ready(this.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }
}

/// An error an origin returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginError(pub &'static str);

impl fmt::Display for OriginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "origin error: {}", self.0)
    }
}

impl std::error::Error for OriginError {}

/// Adds a header to a response.
pub fn with_header<B>(mut resp: Response<B>, name: &str, value: &str) -> Response<B> {
    resp.headers_mut().append(
        HeaderName::from_bytes(name.as_bytes()).expect("header name"),
        HeaderValue::from_str(value).expect("header value"),
    );
    resp
}

/// Sets a response's status.
pub fn with_status<B>(mut resp: Response<B>, status: u16) -> Response<B> {
    *resp.status_mut() = StatusCode::from_u16(status).expect("status");
    resp
}

/// A body fed by the test through a channel: data arrives as the test sends
/// it, and ends when the sender is dropped.
#[derive(Debug)]
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl ChannelBody {
    /// A body and the sender that feeds it.
    pub fn new(buffer: usize) -> (tokio::sync::mpsc::Sender<Bytes>, Self) {
        let (tx, rx) = tokio::sync::mpsc::channel(buffer);
        (tx, Self(rx))
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// A body that yields `chunks` and then fails with an [`OriginError`].
#[derive(Debug)]
pub struct FailingBody(pub VecDeque<Bytes>);

impl FailingBody {
    /// The chunks, then the error.
    pub fn new(chunks: &[&'static str]) -> Self {
        Self(
            chunks
                .iter()
                .map(|c| Bytes::from_static(c.as_bytes()))
                .collect(),
        )
    }
}

impl Body for FailingBody {
    type Data = Bytes;
    type Error = OriginError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, OriginError>>> {
        Poll::Ready(Some(match self.get_mut().0.pop_front() {
            Some(chunk) => Ok(Frame::data(chunk)),
            None => Err(OriginError("body cut short")),
        }))
    }
}
