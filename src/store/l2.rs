//! The L2 tier: entries in Redis shared by every instance of a service,
//! promotion of hot entries into L1, a timeout on every operation, and a
//! circuit breaker. L2 failures are misses: they never fail a request.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use quick_cache::sync::Cache as QuickCache;
use redis::Value;
use tokio::sync::mpsc;

use crate::breaker::Breaker;
use crate::clock::Clock;
use crate::entry::Entry;
use crate::key::{variant_hash, KeyHash};
use crate::stats::Counter;
use crate::store::codec::FORMAT_VERSION;
use crate::store::redis::{RedisStore, RedisTarget, StoreError};

/// The value stored at a URL's key when its responses vary: the `Vary`
/// header names, after this magic.
const VARY_MAGIC: &[u8; 4] = b"TTV\x01";

/// L2 settings, from the builder.
#[derive(Debug, Clone)]
pub(crate) struct L2Config {
    pub(crate) target: RedisTarget,
    pub(crate) namespace: String,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) breaker_failures: u32,
    pub(crate) breaker_open_for: Duration,
    pub(crate) promote_after: u32,
    pub(crate) promotion_window: Duration,
    pub(crate) write_queue: usize,
}

/// L2 counters.
#[derive(Debug, Default)]
pub(crate) struct L2Counters {
    pub(crate) errors: Counter,
    pub(crate) timeouts: Counter,
    pub(crate) decode_errors: Counter,
    pub(crate) writes: Counter,
    pub(crate) writes_dropped: Counter,
    pub(crate) promotions: Counter,
}

struct Write {
    key: String,
    value: Bytes,
    px: u64,
}

pub(crate) struct L2 {
    store: RedisStore,
    clock: Arc<dyn Clock>,
    cfg: L2Config,
    pub(crate) breaker: Breaker,
    /// L2 hits per key within the promotion window (bounded).
    hits: QuickCache<KeyHash, (u32, u64)>,
    /// Keys whose undecodable values were already logged (bounded).
    logged: QuickCache<KeyHash, ()>,
    writer: Mutex<Option<mpsc::Sender<Vec<Write>>>>,
    pub(crate) counters: L2Counters,
}

impl std::fmt::Debug for L2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2")
            .field("store", &self.store)
            .field("namespace", &self.cfg.namespace)
            .finish_non_exhaustive()
    }
}

impl L2 {
    pub(crate) fn new(cfg: L2Config, clock: Arc<dyn Clock>) -> Result<Self, String> {
        let store = RedisStore::new(&cfg.target, cfg.connect_timeout)?;
        Ok(Self {
            store,
            clock,
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_open_for),
            hits: QuickCache::new(100_000),
            logged: QuickCache::new(10_000),
            writer: Mutex::new(None),
            counters: L2Counters::default(),
            cfg,
        })
    }

    /// `{namespace}:{format}:{hash}`.
    pub(crate) fn redis_key(&self, key: KeyHash) -> String {
        format!("{}:{}:{}", self.cfg.namespace, FORMAT_VERSION, key)
    }

    /// Runs one L2 operation under the timeout and the breaker. `None`
    /// when skipped, failed or timed out (all counted).
    async fn guarded<T>(
        &self,
        extra: Duration,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Option<T> {
        if !self.breaker.allow(self.clock.now_millis()) {
            return None;
        }
        match tokio::time::timeout(self.cfg.timeout + extra, op).await {
            Ok(Ok(v)) => {
                self.breaker.record_success();
                Some(v)
            }
            Ok(Err(StoreError::Timeout)) | Err(_) => {
                self.counters.timeouts.incr();
                self.breaker.record_failure(self.clock.now_millis());
                None
            }
            Ok(Err(e)) => {
                self.counters.errors.incr();
                self.breaker.record_failure(self.clock.now_millis());
                tracing::debug!(error = %e, "L2 operation failed");
                None
            }
        }
    }

    async fn get(&self, key: KeyHash) -> Option<Bytes> {
        let cmd = redis::Cmd::get(self.redis_key(key));
        match self.guarded(Duration::ZERO, self.store.query(&cmd)).await? {
            Value::BulkString(b) => Some(Bytes::from(b)),
            _ => None,
        }
    }

    /// Finds the entry for `primary` that these request headers select.
    pub(crate) async fn lookup(&self, primary: KeyHash, headers: &HeaderMap) -> Option<Arc<Entry>> {
        let raw = self.get(primary).await?;
        let (slot, raw) = if let Some(names) = raw.strip_prefix(VARY_MAGIC.as_slice()) {
            let names: Vec<HeaderName> = names
                .split(|b| *b == b'\n')
                .filter(|n| !n.is_empty())
                .filter_map(|n| HeaderName::from_bytes(n).ok())
                .collect();
            let secondary = variant_hash(primary, &names, headers);
            (secondary, self.get(secondary).await?)
        } else {
            (primary, raw)
        };
        match Entry::decode(&raw) {
            Ok(entry) if entry.vary_matches(headers) => Some(Arc::new(entry)),
            Ok(_) => None,
            Err(e) => {
                self.counters.decode_errors.incr();
                if self.logged.get(&slot).is_none() {
                    self.logged.insert(slot, ());
                    tracing::warn!(key = %self.redis_key(slot), error = %e, "undecodable L2 value; deleting it");
                }
                self.delete(vec![slot]).await;
                None
            }
        }
    }

    /// Counts an L2 hit; true when the key has now earned promotion to L1.
    pub(crate) fn note_hit(&self, key: KeyHash, now: u64) -> bool {
        let n = self.cfg.promote_after.max(1);
        if n == 1 {
            self.counters.promotions.incr();
            return true;
        }
        let window = self.cfg.promotion_window.as_millis() as u64;
        let (count, start) = match self.hits.get(&key) {
            Some((c, s)) if now.saturating_sub(s) <= window => (c + 1, s),
            _ => (1, now),
        };
        if count >= n {
            self.hits.remove(&key);
            self.counters.promotions.incr();
            true
        } else {
            self.hits.insert(key, (count, start));
            false
        }
    }

    /// Queues the write of `entry` off the request path. A full queue drops
    /// the write (counted).
    pub(crate) fn enqueue(
        self: &Arc<Self>,
        primary: KeyHash,
        entry: &Entry,
        req_headers: &HeaderMap,
        now: u64,
    ) {
        let px = entry.timeline.retain_until.saturating_sub(now);
        if px == 0 {
            return;
        }
        let mut writes = Vec::with_capacity(2);
        let names: Vec<HeaderName> = entry.vary.iter().map(|(n, _)| n.clone()).collect();
        if names.is_empty() {
            writes.push(Write {
                key: self.redis_key(primary),
                value: entry.encode(),
                px,
            });
        } else {
            let mut marker = VARY_MAGIC.to_vec();
            for n in &names {
                marker.extend_from_slice(n.as_str().as_bytes());
                marker.push(b'\n');
            }
            writes.push(Write {
                key: self.redis_key(primary),
                value: Bytes::from(marker),
                px,
            });
            writes.push(Write {
                key: self.redis_key(variant_hash(primary, &names, req_headers)),
                value: entry.encode(),
                px,
            });
        }
        let Some(tx) = self.sender() else {
            self.counters.writes_dropped.add(writes.len() as u64);
            return;
        };
        let n = writes.len() as u64;
        if tx.try_send(writes).is_err() {
            self.counters.writes_dropped.add(n);
        }
    }

    /// The writer's queue, starting the writer task on first use (and again
    /// if its runtime went away).
    fn sender(self: &Arc<Self>) -> Option<mpsc::Sender<Vec<Write>>> {
        let mut slot = self.writer.lock().ok()?;
        if let Some(tx) = slot.as_ref().filter(|tx| !tx.is_closed()) {
            return Some(tx.clone());
        }
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (tx, mut rx) = mpsc::channel::<Vec<Write>>(self.cfg.write_queue.max(1));
        let weak = Arc::downgrade(self);
        handle.spawn(async move {
            let mut batch: Vec<Vec<Write>> = Vec::with_capacity(64);
            while rx.recv_many(&mut batch, 64).await > 0 {
                let Some(l2) = weak.upgrade() else { return };
                let writes: Vec<Write> = batch.drain(..).flatten().collect();
                l2.write(writes).await;
            }
        });
        *slot = Some(tx.clone());
        Some(tx)
    }

    async fn write(&self, writes: Vec<Write>) {
        let n = writes.len() as u64;
        let bytes: usize = writes.iter().map(|w| w.value.len()).sum();
        // Large values get more time: 1 ms per 64 KiB on top of the timeout.
        let extra = Duration::from_millis((bytes / (64 * 1024)) as u64);
        let cmds: Vec<redis::Cmd> = writes
            .into_iter()
            .map(|w| {
                let mut c = redis::cmd("SET");
                c.arg(w.key).arg(w.value.as_ref()).arg("PX").arg(w.px);
                c
            })
            .collect();
        if self
            .guarded(extra, self.store.query_many(cmds))
            .await
            .is_some()
        {
            self.counters.writes.add(n);
        } else {
            self.counters.writes_dropped.add(n);
        }
    }

    /// Deletes keys (all variants are separate keys).
    pub(crate) async fn delete(&self, keys: Vec<KeyHash>) -> bool {
        if keys.is_empty() {
            return true;
        }
        let cmds = keys
            .into_iter()
            .map(|k| {
                let mut c = redis::cmd("DEL");
                c.arg(self.redis_key(k));
                c
            })
            .collect();
        self.guarded(Duration::ZERO, self.store.query_many(cmds))
            .await
            .is_some()
    }
}
