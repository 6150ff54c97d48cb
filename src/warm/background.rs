//! The tower service's background worker: the engine's `refresh_hot`
//! rounds and prefetching (`flow::hot`), reaching the origin through a
//! clone of the inner service.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use http_body::Body;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tower_service::Service;

use super::warm_request;
use crate::flow::hot::{
    refresh_replay, BackgroundError, KeyWork, PrefetchRequest, Replay, Runner, WarmFuture, Warmed,
};
use crate::key::KeyHash;
use crate::service::ServiceUpstream;
use crate::sync::lock;
use crate::{Cache, CacheService};

/// The background worker of a cache (from
/// [`CacheService::spawn_background`], or a value cache's from
/// `ValueCache::spawn_background`, feature `values`): it refreshes the hottest keys
/// every `every` ([`refresh_hot`](crate::CacheBuilder::refresh_hot)) and
/// warms the URLs reads name ([`prefetch`](crate::CacheBuilder::prefetch)).
///
/// It ends when this handle is dropped, on [`stop`](Self::stop), or when
/// the cache is dropped (every [`Cache`] and [`CacheService`] using it; a
/// value cache's worker: every clone of that value cache).
/// Keep the handle for as long as the worker should run: the worker holds
/// a clone of the inner service, and when that service holds the cache
/// (an axum router whose state is the [`Cache`], for its admin routes) the
/// cache is never dropped while the worker runs; the handle is what ends
/// it then.
#[derive(Debug)]
#[must_use = "dropping the handle stops the background worker"]
pub struct Background {
    task: tokio::task::JoinHandle<()>,
    tick: Arc<Notify>,
    rounds: Arc<std::sync::atomic::AtomicU64>,
}

impl Background {
    /// The handle of a worker just started.
    pub(crate) fn of(runner: Runner) -> Self {
        Self {
            task: runner.task,
            tick: runner.tick,
            rounds: runner.rounds,
        }
    }

    /// Starts a `refresh_hot` round now, without waiting for the next
    /// period (the periodic rounds go on as before).
    pub fn refresh_hot_now(&self) {
        self.tick.notify_one();
    }

    /// `refresh_hot` rounds finished so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Whether the worker has ended (the cache was dropped, or
    /// [`stop`](Self::stop)).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the worker: no more rounds, nothing more taken from the
    /// prefetch queue (refreshes and prefetches already started end within
    /// their deadlines). Another worker may then be started. Dropping the
    /// handle does the same.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<S> CacheService<S> {
    /// Starts the cache's background worker, reaching the origin through a
    /// clone of this service's inner service with requests whose body is
    /// `B::default()`: [`refresh_hot`](crate::CacheBuilder::refresh_hot)
    /// rounds and [`prefetch`](crate::CacheBuilder::prefetch)ing. One
    /// worker runs per cache: with several services on one cache, start it
    /// on one whose inner service answers every key.
    ///
    /// Refused ([`BackgroundError`]) when neither setting is on, outside a
    /// tokio runtime, or while a worker runs for this cache.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::convert::Infallible;
    /// use std::time::Duration;
    /// use http::{Request, Response};
    /// use tower::{service_fn, Layer};
    /// use tower_tiered_cache::{Cache, CacheLayer};
    ///
    /// let cache = Cache::builder()
    ///     .refresh_hot(10, Duration::from_secs(30))
    ///     .build()
    ///     .unwrap();
    /// let origin = service_fn(|_req: Request<String>| async {
    ///     Ok::<_, Infallible>(
    ///         Response::builder().header("cache-control", "max-age=60").body(String::from("hi")).unwrap(),
    ///     )
    /// });
    /// let svc = CacheLayer::new(cache.clone()).layer(origin);
    /// let background = svc.spawn_background::<String, _>().unwrap();
    /// assert!(svc.spawn_background::<String, _>().unwrap_err().is_already_running());
    /// background.refresh_hot_now();
    /// # }
    /// ```
    pub fn spawn_background<B, ResB>(&self) -> Result<Background, BackgroundError>
    where
        S: Service<Request<B>, Response = http::Response<ResB>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: std::fmt::Display + Send + 'static,
        B: Default + Send + 'static,
        ResB: Body<Data: Send, Error: Send> + Send + 'static,
    {
        let work = ServiceWork {
            inner: Mutex::new(self.get_ref().clone()),
            _body: PhantomData,
        };
        let runner = self.cache().start_background(work)?;
        Ok(Background::of(runner))
    }
}

/// The inner service as the background worker reaches the origin. It
/// never holds the cache (the worker must not keep it alive); the service
/// is behind a lock only to be shared between tasks without being `Sync`.
struct ServiceWork<S, B> {
    inner: Mutex<S>,
    _body: PhantomData<fn() -> B>,
}

impl<S: Clone, B> ServiceWork<S, B> {
    fn inner(&self) -> S {
        lock(&self.inner).clone()
    }
}

impl<S, B, ResB> KeyWork<Arc<Replay>> for ServiceWork<S, B>
where
    S: Service<Request<B>, Response = http::Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
    B: Default + Send + 'static,
    ResB: Body<Data: Send, Error: Send> + Send + 'static,
{
    fn refresh(
        &self,
        cache: &Cache,
        key: KeyHash,
        item: &Arc<Replay>,
        permit: OwnedSemaphorePermit,
        every: Duration,
    ) -> bool {
        let up = ServiceUpstream::new(self.inner());
        refresh_replay(cache, key, item, (B::default(), up), permit, every)
    }

    fn warm(&self, cache: Cache, item: Arc<Replay>, timeout: Duration) -> WarmFuture {
        let mut svc = CacheService::new(self.inner(), cache);
        Box::pin(async move {
            let mut req = Request::from_parts(item.view(), B::default());
            req.extensions_mut().insert(PrefetchRequest);
            match warm_request(&mut svc, req, timeout).await {
                Ok(true) => Warmed::Stored,
                Ok(false) => Warmed::Present,
                Err(_) => Warmed::Failed,
            }
        })
    }
}
