use tower_layer::Layer;

use crate::{Cache, CacheService};

/// A [`Layer`] that caches the responses of the service it wraps.
///
/// Every service it makes shares the one [`Cache`] it was given.
///
/// ```
/// use tower_tiered_cache::{Cache, CacheLayer};
///
/// let cache = Cache::builder().build().unwrap();
/// let layer = CacheLayer::new(cache.clone());
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct CacheLayer {
    cache: Cache,
}

impl CacheLayer {
    /// A layer over `cache`.
    pub fn new(cache: Cache) -> Self {
        Self { cache }
    }

    /// The cache this layer stores into.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService::new(inner, self.cache.clone())
    }
}
