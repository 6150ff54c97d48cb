//! The L2 tier: entries in Redis shared by every instance of a service,
//! promotion of hot entries into L1, a timeout on every operation, and a
//! circuit breaker. L2 failures are misses: they never fail a request.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName};
use pin_project_lite::pin_project;
use quick_cache::sync::Cache as QuickCache;
use redis::Value;
use tokio::sync::{mpsc, watch};

use crate::breaker::Breaker;
use crate::clock::Clock;
use crate::entry::Entry;
use crate::key::{variant_hash, KeyHash};
use crate::stats::Counter;
use crate::store::codec::FORMAT_VERSION;
use crate::store::inval::{Outbox, Pending, Resume, StreamId};
use crate::store::lease::{Leases, News};
use crate::store::order::{Generation, Generations, Scope, Use};
use crate::store::redis::{RedisStore, RedisTarget, StoreError, TargetError};
use crate::sync::lock;

/// The value stored at a URL's key when its responses vary: this magic, a
/// generation (8 bytes), then the `Vary` header names. Variants live at
/// keys derived from the URL, the generation and the request's values;
/// deleting the marker (an invalidation) orphans them for good, since the
/// next marker has a new generation.
const VARY_MAGIC: &[u8; 4] = b"TTV\x02";

/// Lowercase hex of `bytes`, in order.
fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// The bytes of lowercase (or uppercase) hex, or `None`.
#[cfg(feature = "l2-encryption")]
fn unhex(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Why a value read from Redis did not open (nothing without encryption).
#[cfg(feature = "l2-encryption")]
type OpenError = crate::store::seal::SealError;
#[cfg(not(feature = "l2-encryption"))]
type OpenError = std::convert::Infallible;

/// What a value stored at the Redis key `name` is sealed for: the key
/// itself, or for a variant (`{marker key}:{generation}:{variant}`) its
/// key without the generation, which `VARIANT_SCRIPT` picks after the
/// value was sealed.
#[cfg(feature = "l2-encryption")]
fn context_of(name: &str) -> std::borrow::Cow<'_, str> {
    let b = name.as_bytes();
    let hexes = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    let n = b.len();
    if n > 50 && b[n - 33] == b':' && b[n - 50] == b':' && hexes(n - 32..n) && hexes(n - 49..n - 33)
    {
        std::borrow::Cow::Owned(format!("{}{}", &name[..n - 50], &name[n - 33..]))
    } else {
        std::borrow::Cow::Borrowed(name)
    }
}

/// Writes one variant of a URL whose responses vary, atomically and in one
/// command (so a batch of writes is one pipeline):
///
/// - `KEYS[1]` the URL's marker, `KEYS[2]` its variant index (a sorted set
///   of variant keys by first write), both under the URL's hash tag;
/// - `ARGV`: a fresh marker (magic, new generation, names), the TTL in
///   ms, the variant's hash (hex), the encoded entry, the most variants
///   kept, and the write's time (the index's score).
///
/// A missing marker, or one naming other headers, is replaced by the fresh
/// one (and the index emptied: the old generation's variants are orphans);
/// otherwise its TTL is stretched to the variant's. The variant's key is
/// `{marker}:{generation hex}:{variant hash}` (what `lookup` reads). Beyond
/// the most variants kept, the oldest are deleted (as L1 does). Returns how
/// many were.
const VARIANT_SCRIPT: &str = r"
local m = redis.call('GET', KEYS[1])
local fresh = ARGV[1]
if (not m) or string.sub(m, 1, 4) ~= string.sub(fresh, 1, 4)
    or string.sub(m, 13) ~= string.sub(fresh, 13) or string.len(m) < 12 then
  redis.call('SET', KEYS[1], fresh, 'PX', ARGV[2])
  redis.call('DEL', KEYS[2])
  m = fresh
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2], 'GT')
end
local g = ''
for i = 5, 12 do g = g .. string.format('%02x', string.byte(m, i)) end
local vkey = KEYS[1] .. ':' .. g .. ':' .. ARGV[3]
redis.call('SET', vkey, ARGV[4], 'PX', ARGV[2])
local evicted = 0
if redis.call('ZADD', KEYS[2], 'NX', ARGV[6], vkey) == 1 then
  local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
  if over > 0 then
    local old = redis.call('ZPOPMIN', KEYS[2], over)
    for i = 1, #old, 2 do
      redis.call('DEL', old[i])
      evicted = evicted + 1
    end
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[2], 'GT')
redis.call('PEXPIRE', KEYS[2], ARGV[2], 'NX')
return evicted
";

/// `(generation, names)` of a marker, or `None` if it is not one.
fn parse_marker(raw: &[u8]) -> Option<(u64, Vec<HeaderName>)> {
    let rest = raw.strip_prefix(VARY_MAGIC.as_slice())?;
    let (generation, names) = rest.split_at_checked(8)?;
    let generation = u64::from_le_bytes(generation.try_into().ok()?);
    let names = names
        .split(|b| *b == b'\n')
        .filter(|n| !n.is_empty())
        .filter_map(|n| HeaderName::from_bytes(n).ok())
        .collect();
    Some((generation, names))
}

fn marker(generation: u64, names: &[HeaderName]) -> Bytes {
    let mut m = VARY_MAGIC.to_vec();
    m.extend_from_slice(&generation.to_le_bytes());
    for n in names {
        m.extend_from_slice(n.as_str().as_bytes());
        m.push(b'\n');
    }
    Bytes::from(m)
}

/// L2 settings: the builder keeps one (its L2 setters write to it) and
/// hands it to [`L2::new`]. `max_body_bytes`, `warnings` and `max_variants`
/// follow cache-wide settings and are filled in by `build`.
#[derive(Debug, Clone)]
pub(crate) struct L2Config {
    pub(crate) namespace: String,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) breaker_failures: u32,
    pub(crate) breaker_open_for: Duration,
    pub(crate) promote_after: u32,
    pub(crate) promotion_window: Duration,
    pub(crate) write_queue: usize,
    /// If set, how long L1 copies are trusted while this instance is not
    /// following the invalidation log (default: no bound, see
    /// `store::inval`).
    pub(crate) l1_max_ttl: Option<Duration>,
    /// The invalidation log's length, kept with `XADD … MAXLEN ~`.
    pub(crate) invalidation_log_len: usize,
    /// The largest body stored, to give reads of large values more time.
    pub(crate) max_body_bytes: u64,
    /// Bodies larger than this are LZ4-compressed (feature `compression`).
    pub(crate) compress_over: Option<usize>,
    /// Log warnings (L2 down and back, undecodable values).
    pub(crate) warnings: bool,
    /// The most variants (`Vary`) kept per URL, as in L1.
    pub(crate) max_variants: usize,
    /// Encryption at rest: values, tag and prefix messages sealed, tag
    /// index names keyed (see `store::seal`).
    #[cfg(feature = "l2-encryption")]
    pub(crate) keys: Option<Arc<crate::store::seal::L2Keys>>,
}

/// L2 counters.
#[derive(Debug, Default)]
pub(crate) struct L2Counters {
    pub(crate) errors: Counter,
    pub(crate) timeouts: Counter,
    /// Timeouts a probe showed were this host's lateness (a `PING` sent
    /// after a run of them was answered within 1 s): they did not open the
    /// breaker.
    pub(crate) timeouts_slow_host: Counter,
    pub(crate) decode_errors: Counter,
    pub(crate) writes: Counter,
    pub(crate) writes_dropped: Counter,
    pub(crate) promotions: Counter,
    pub(crate) messages_received: Counter,
    /// Variants deleted from L2 to keep a URL within `max_variants`.
    pub(crate) variants_evicted: Counter,
    /// Times L1 was cleared because the invalidation log no longer held
    /// what this instance had not read.
    pub(crate) coherence_resets: Counter,
    /// Invalidations made while Redis was unreachable that did not fit the
    /// queue (replaced by a clear of the namespace).
    pub(crate) invalidations_dropped: Counter,
}

/// One entry's writes: its key(s), tag index additions, and the key to
/// announce to the other instances.
struct Job {
    /// The entry, encoded by the writer (off the request path).
    entry: Arc<Entry>,
    px: u64,
    announce: KeyHash,
    /// For a URL with `Vary`: the request's values of the `Vary` headers.
    /// The variant is written under the URL's current marker generation.
    vary_headers: Option<HeaderMap>,
    /// When the write was queued: a job older than an invalidation of its
    /// key (or a clear) is dropped (see [`Generations::still_applies`]).
    taken: Generation,
    /// Bytes reserved in the queue's budget.
    reserved: u64,
    /// Where to say whether the write landed (a lease held here waits for
    /// it: `store::lease`); dropped unsent when it did not.
    landed: Option<tokio::sync::oneshot::Sender<bool>>,
}

/// The most encoded bytes that may wait in the write queue.
const QUEUE_BYTES: u64 = 64 * 1024 * 1024;

/// The most queued jobs the writer sends in one pipeline.
const BATCH_JOBS: usize = 64;

/// The most queued bytes (entry weights) the writer sends in one pipeline
/// (a larger job goes alone).
const BATCH_BYTES: u64 = 4 * 1024 * 1024;

/// How long one `XREAD` of the invalidation log waits for new entries.
const BLOCK: Duration = Duration::from_secs(2);

/// The most log entries read in one `XREAD` (a page of a catch-up).
const PAGE: usize = 512;

/// The most messages in one log entry.
const MESSAGES_PER_ENTRY: usize = 256;

/// An invalidation received from another instance, or news of a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    Key(KeyHash),
    Tag(String),
    Prefix(String),
    Clear,
    /// A lease on the key ended without an entry in L2 (`store::lease`):
    /// no invalidation; it only wakes the instances waiting on the key.
    Fill(KeyHash, News),
}

impl Message {
    fn encode(&self, instance: u64) -> String {
        format!("{instance:016x} {}", self.body())
    }

    /// The message without its sender: `key HASH`, `tag NAME`, …
    fn body(&self) -> String {
        match self {
            Message::Key(k) => format!("key {k}"),
            Message::Tag(t) => format!("tag {t}"),
            Message::Prefix(p) => format!("prefix {p}"),
            Message::Clear => "clear".to_owned(),
            Message::Fill(k, news) => format!("fill {k} {}", news.as_str()),
        }
    }

    /// `(sender, message)`, or `None` for anything malformed.
    #[cfg(test)]
    fn decode(s: &str) -> Option<(u64, Message)> {
        let (sender, body) = Self::split(s)?;
        Some((sender, Self::decode_body(body)?))
    }

    /// `(sender, body)` of an encoded message.
    fn split(s: &str) -> Option<(u64, &str)> {
        let (sender, rest) = s.split_once(' ')?;
        Some((u64::from_str_radix(sender, 16).ok()?, rest))
    }

    /// The message a body (`kind arg`) names, or `None`.
    fn decode_body(body: &str) -> Option<Message> {
        let (kind, arg) = body.split_once(' ').unwrap_or((body, ""));
        Some(match kind {
            "key" => Message::Key(KeyHash(u128::from_str_radix(arg, 16).ok()?)),
            "tag" => Message::Tag(arg.to_owned()),
            "prefix" => Message::Prefix(arg.to_owned()),
            "clear" => Message::Clear,
            "fill" => {
                let (k, news) = arg.split_once(' ')?;
                Message::Fill(
                    KeyHash(u128::from_str_radix(k, 16).ok()?),
                    News::parse(news)?,
                )
            }
            _ => return None,
        })
    }
}

/// The kind of an invalidation message whose body is sealed: `{sender}
/// sealed {hex}` (a tag or a prefix, while L2 encryption is on).
const SEALED_KIND: &str = "sealed ";

/// What the L2 tier asks of the engine when another instance invalidates.
pub(crate) type Listener = Box<dyn Fn(&Message) + Send + Sync>;

pub(crate) struct L2 {
    /// Shared with the breaker's probe task (see `guarded`).
    store: Arc<RedisStore>,
    clock: Arc<dyn Clock>,
    cfg: L2Config,
    pub(crate) breaker: Arc<Breaker>,
    /// Whether a probe confirming a run of timeouts is under way (at most
    /// one at a time).
    probing: Arc<AtomicBool>,
    /// L2 hits per key within the promotion window (bounded).
    hits: QuickCache<KeyHash, (u32, u64)>,
    /// Keys whose undecodable values were already logged (bounded).
    logged: QuickCache<KeyHash, ()>,
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    pub(crate) counters: Arc<L2Counters>,
    /// This instance's id on the invalidation channel.
    instance: u64,
    /// `{namespace}:{format}:`.
    key_prefix: OnceLock<String>,
    /// Applies other instances' invalidations to L1.
    listener: OnceLock<Listener>,
    /// Whether the log reader task runs (started on first use).
    subscriber_started: AtomicBool,
    /// True while following the invalidation log: L1 copies are kept
    /// coherent.
    coherent: AtomicBool,
    /// The invalidation log's key, `{namespace}:inv`.
    log_key: String,
    /// The id of the last log entry applied (`None` before the first
    /// connection).
    last_id: Mutex<Option<StreamId>>,
    /// Since when the log reader has been without a connection.
    lost_at: Mutex<Option<std::time::Instant>>,
    /// The `run_id` of the server holding the log, when last seen.
    run_id: Mutex<Option<String>>,
    /// With Sentinel, the address of the master whose log was followed
    /// last: another one (with another `run_id`) is a failover.
    log_node: Mutex<Option<(String, u16)>>,
    /// When this tier was made, ms since the Unix epoch (wall clock, as
    /// Redis's stream ids): where the first read of the log starts if
    /// Redis was unreachable at start-up.
    started_ms: u64,
    /// Invalidations waiting for Redis (bounded).
    outbox: Outbox,
    /// Tag, prefix or clear invalidations of the outbox being replayed.
    broad_replays: AtomicU64,
    /// Dropped with the tier: tells the subscriber task to end.
    shutdown: watch::Sender<()>,
    /// The order of writes and invalidations: queued writes older than an
    /// invalidation are dropped instead of undoing it, reads older than
    /// one are not promoted.
    order: Generations,
    /// Bytes of encoded values waiting in the write queue (bounded).
    queued_bytes: AtomicU64,
    /// Writes queued or being written (`Cache::l2_pending_writes`).
    pending: AtomicU64,
    /// Keys invalidated here whose `DEL` has not completed yet (bounded):
    /// a read meanwhile must not serve what was invalidated.
    deleting: QuickCache<KeyHash, ()>,
    /// The last `INFO` subset, and whether a fetch is under way.
    info: Mutex<Option<crate::stats::RedisInfo>>,
    info_fetching: AtomicBool,
    /// Keys waited on and leases held here (distributed coalescing).
    pub(crate) leases: Arc<Leases>,
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
    pub(crate) fn new(
        target: &RedisTarget,
        cfg: L2Config,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, TargetError> {
        let store = RedisStore::new(target, cfg.connect_timeout)?;
        Ok(Self {
            store: Arc::new(store),
            clock,
            breaker: Arc::new(Breaker::new(cfg.breaker_failures, cfg.breaker_open_for)),
            probing: Arc::new(AtomicBool::new(false)),
            hits: QuickCache::new(100_000),
            logged: QuickCache::new(10_000),
            writer: Mutex::new(None),
            counters: Arc::default(),
            instance: instance_id(),
            key_prefix: OnceLock::new(),
            listener: OnceLock::new(),
            subscriber_started: AtomicBool::new(false),
            coherent: AtomicBool::new(false),
            log_key: format!("{{{}}}:inv", cfg.namespace),
            last_id: Mutex::new(None),
            lost_at: Mutex::new(None),
            run_id: Mutex::new(None),
            log_node: Mutex::new(None),
            started_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            outbox: Outbox::default(),
            broad_replays: AtomicU64::new(0),
            shutdown: watch::channel(()).0,
            order: Generations::new(100_000),
            queued_bytes: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            deleting: QuickCache::new(10_000),
            info: Mutex::new(None),
            info_fetching: AtomicBool::new(false),
            leases: Arc::new(Leases::new(crate::store::lease::MAX_LEASED_KEYS)),
            cfg,
        })
    }

    /// Sets what to do with invalidations from other instances.
    pub(crate) fn set_listener(&self, listener: Listener) {
        let _ = self.listener.set(listener);
    }

    /// Whether an L1 copy stored at `stored_at` may be trusted at `now`:
    /// always, unless `l1_max_ttl` is set and this instance is not
    /// following the invalidation log (then for `l1_max_ttl`).
    #[inline]
    pub(crate) fn trust_l1(&self, stored_at: u64, now: u64) -> bool {
        match self.cfg.l1_max_ttl {
            None => true,
            Some(max) => {
                self.coherent.load(Ordering::Relaxed)
                    || now.saturating_sub(stored_at) <= max.as_millis() as u64
            }
        }
    }

    /// Whether this instance follows the invalidation log (connected and
    /// caught up).
    pub(crate) fn subscribed(&self) -> bool {
        self.coherent.load(Ordering::Relaxed)
    }

    /// This tier's number on the invalidation log (what its messages
    /// carry).
    pub(crate) fn instance(&self) -> u64 {
        self.instance
    }

    /// The namespace every key of this tier starts with.
    pub(crate) fn namespace(&self) -> &str {
        &self.cfg.namespace
    }

    /// Runs `cmds` (one pipeline on one node; on a cluster, each to its
    /// slot's node) under the L2 timeout and breaker: `None` when skipped,
    /// failed or late (counted as every L2 operation).
    pub(crate) async fn run(&self, cmds: Vec<redis::Cmd>) -> Option<Vec<Value>> {
        self.guarded(Duration::ZERO, self.store.query_many(cmds))
            .await
    }

    /// The `XADD` telling the other instances that a lease on `key` ended
    /// with `news` and no entry.
    pub(crate) fn fill_announcement(&self, key: KeyHash, news: News) -> Vec<redis::Cmd> {
        self.xadds(&[Message::Fill(key, news)])
    }

    /// `XADD {ns}:inv MAXLEN ~ N * m <message> [m <message> …]`.
    fn xadd(&self, msgs: &[Message]) -> redis::Cmd {
        let mut c = redis::cmd("XADD");
        c.arg(&self.log_key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.cfg.invalidation_log_len.max(1))
            .arg("*");
        for m in msgs {
            c.arg("m").arg(self.encode_message(m));
        }
        c
    }

    /// A message as appended to the log: with encryption on, a tag or a
    /// prefix is sealed (bound to the log's key and the sender).
    fn encode_message(&self, m: &Message) -> String {
        #[cfg(feature = "l2-encryption")]
        if let (Some(keys), Message::Tag(_) | Message::Prefix(_)) = (&self.cfg.keys, m) {
            let context = self.message_context(self.instance);
            if let Some(sealed) = keys.seal(context.as_bytes(), m.body().as_bytes()) {
                return format!("{:016x} {SEALED_KIND}{}", self.instance, hex(&sealed));
            }
            // No randomness: announce the clear that covers it instead
            // of the name.
            return Message::Clear.encode(self.instance);
        }
        m.encode(self.instance)
    }

    /// What a sealed message from `sender` is bound to.
    #[cfg(feature = "l2-encryption")]
    fn message_context(&self, sender: u64) -> String {
        format!("{} {sender:016x}", self.log_key)
    }

    /// `(sender, message)` of a log entry; `None` for anything malformed.
    /// A sealed message this instance cannot open (another key set) is a
    /// `Clear`: it may have covered what L1 holds.
    fn decode_message(&self, payload: &str) -> Option<(u64, Message)> {
        let (sender, body) = Message::split(payload)?;
        let Some(sealed) = body.strip_prefix(SEALED_KIND) else {
            return Some((sender, Message::decode_body(body)?));
        };
        #[cfg(feature = "l2-encryption")]
        if let Some(keys) = &self.cfg.keys {
            let context = self.message_context(sender);
            let opened = unhex(sealed)
                .and_then(|b| keys.open(context.as_bytes(), Bytes::from(b)).ok())
                .and_then(|plain| {
                    let body = std::str::from_utf8(&plain).ok()?;
                    match Message::decode_body(body)? {
                        m @ (Message::Tag(_) | Message::Prefix(_)) => Some(m),
                        _ => None,
                    }
                });
            if let Some(m) = opened {
                return Some((sender, m));
            }
        }
        let _ = sealed;
        self.unreadable_message();
        Some((sender, Message::Clear))
    }

    /// A sealed invalidation that does not open here: warned, counted in
    /// `l2_coherence_resets` (it is applied as a clear of L1).
    fn unreadable_message(&self) {
        self.counters.coherence_resets.incr();
        if self.cfg.warnings {
            tracing::warn!(
                target: "tower_tiered_cache",
                "a sealed L2 invalidation does not open with this instance's keys: L1 cleared"
            );
        }
    }

    /// The `XADD`s announcing `msgs` (at most `MESSAGES_PER_ENTRY` each).
    fn xadds(&self, msgs: &[Message]) -> Vec<redis::Cmd> {
        msgs.chunks(MESSAGES_PER_ENTRY)
            .map(|c| self.xadd(c))
            .collect()
    }

    /// Queues an invalidation Redis did not take, to be replayed when it
    /// is reachable again; a full queue turns into one clear (counted).
    fn queue(&self, p: Pending) {
        let dropped = self.outbox.push(p);
        if dropped > 0 {
            self.counters.invalidations_dropped.add(dropped);
            if self.cfg.warnings {
                tracing::warn!(
                    target: "tower_tiered_cache",
                    dropped,
                    "L2 (Redis) unreachable: too many invalidations queued; \
                     the namespace will be cleared when it is back"
                );
            }
        }
    }

    /// Whether L2 operations are being skipped (breaker open): nothing of
    /// a failed operation reached Redis.
    pub(crate) fn skipping(&self) -> bool {
        self.breaker.state(self.clock.now_millis()) == crate::BreakerState::Open
    }

    /// Starts the subscriber task once, on the current runtime.
    pub(crate) fn ensure_subscriber(self: &Arc<Self>) {
        if let Some(handle) = crate::sync::start_once(&self.subscriber_started) {
            let weak = Arc::downgrade(self);
            handle.spawn(subscribe_loop(weak, self.shutdown.subscribe()));
        }
    }

    /// Appends invalidations to the log; false if Redis did not take them.
    async fn publish(&self, msgs: &[Message]) -> bool {
        if msgs.is_empty() {
            return true;
        }
        self.guarded(Duration::ZERO, self.store.query_many(self.xadds(msgs)))
            .await
            .is_some()
    }

    /// Replays what was queued while Redis was unreachable (what fails
    /// again is queued again).
    async fn flush_outbox(self: &Arc<Self>) {
        let mut keys = Vec::new();
        let mut announce = Vec::new();
        for p in self.outbox.take() {
            // Until each replay lands (or is queued again), reads here of
            // what it covers are misses (`deleting`).
            if matches!(p, Pending::Clear | Pending::Tag(_) | Pending::Prefix(_)) {
                self.broad_replays.fetch_add(1, Ordering::AcqRel);
            }
            match p {
                Pending::Clear => {
                    self.clear().await;
                }
                Pending::Tag(t) => {
                    self.invalidate_tag(&t).await;
                }
                Pending::Prefix(p) => {
                    self.invalidate_prefix(&p).await;
                }
                Pending::Key(k) => {
                    self.deleting.insert(k, ());
                    keys.push(k);
                    continue;
                }
                Pending::Announce(k) => {
                    announce.push(k);
                    continue;
                }
            }
            self.broad_replays.fetch_sub(1, Ordering::AcqRel);
        }
        if !keys.is_empty() {
            self.delete_announced(keys.clone()).await;
            for k in keys {
                self.deleting.remove(&k);
            }
        }
        if !announce.is_empty() {
            let msgs: Vec<Message> = announce.iter().map(|k| Message::Key(*k)).collect();
            if !self.publish(&msgs).await {
                for k in announce {
                    self.queue(Pending::Announce(k));
                }
            }
        }
    }

    fn receive(&self, payload: &str) {
        let Some((sender, msg)) = self.decode_message(payload) else {
            return;
        };
        if sender == self.instance {
            return;
        }
        match &msg {
            Message::Key(k) => self.order.invalidate(Scope::Key(*k)),
            Message::Clear => self.order.invalidate(Scope::All),
            Message::Tag(_) | Message::Prefix(_) => self.order.invalidate(Scope::Unlisted),
            Message::Fill(k, news) => {
                self.leases.hear(*k, *news);
                return;
            }
        }
        if let Some(listener) = self.listener.get() {
            listener(&msg);
        }
        // Counted once applied: whoever sees the count sees L1 without
        // what the message removed.
        self.counters.messages_received.incr();
        if let Message::Key(k) = msg {
            // An overwrite (or a delete) of a key waited on: look in L2.
            self.leases.hear(k, News::Stored);
        }
    }

    /// The index of the entries carrying `tag` that this instance writes
    /// to: `{namespace}:tag:{tag}`, or with encryption on
    /// `{namespace}:tag:{keyed hash of the tag under the write key}`.
    fn tag_key(&self, tag: &str) -> String {
        #[cfg(feature = "l2-encryption")]
        if let Some(keys) = &self.cfg.keys {
            return format!(
                "{}:tag:{}",
                self.cfg.namespace,
                keys.tag_name(&self.cfg.namespace, tag)
            );
        }
        format!("{}:tag:{}", self.cfg.namespace, tag)
    }

    /// Every index `tag`'s entries may be listed in: with encryption on,
    /// one per key of the set (entries written under an older key are
    /// indexed under its hash).
    fn tag_keys(&self, tag: &str) -> Vec<String> {
        #[cfg(feature = "l2-encryption")]
        if let Some(keys) = &self.cfg.keys {
            return keys
                .tag_names(&self.cfg.namespace, tag)
                .into_iter()
                .map(|h| format!("{}:tag:{h}", self.cfg.namespace))
                .collect();
        }
        vec![self.tag_key(tag)]
    }

    /// Deletes every L2 entry carrying `tag` (through the tag's index
    /// sets).
    pub(crate) async fn invalidate_tag(self: &Arc<Self>, tag: &str) -> u64 {
        self.ensure_subscriber();
        let _running = self.order.begin_unlisted();
        let tag_keys = self.tag_keys(tag);
        // Members still alive (scores are expiry times).
        let now = self.clock.now_millis();
        let cmds = tag_keys
            .iter()
            .map(|k| {
                redis::cmd("ZRANGE")
                    .arg(k)
                    .arg(now)
                    .arg("+inf")
                    .arg("BYSCORE")
                    .clone()
            })
            .collect();
        let Some(replies) = self
            .guarded(self.cfg.timeout * 4, self.store.query_many(cmds))
            .await
        else {
            // The indexes could not be read: keep them, so the replay
            // when Redis is back still finds the tagged entries.
            self.queue(Pending::Tag(tag.to_owned()));
            return 0;
        };
        let mut keys: Vec<String> = replies
            .into_iter()
            .flat_map(|reply| match reply {
                Value::Array(items) | Value::Set(items) => items,
                _ => Vec::new(),
            })
            .filter_map(|v| match v {
                Value::BulkString(b) => String::from_utf8(b).ok(),
                _ => None,
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let n = keys.len() as u64;
        keys.extend(tag_keys);
        self.delete_keys(keys).await;
        if !self.publish(&[Message::Tag(tag.to_owned())]).await {
            self.queue(Pending::Tag(tag.to_owned()));
        }
        n
    }

    /// Deletes every L2 entry whose path starts with `prefix`. Scans the
    /// namespace (every master of a cluster): never on the request path.
    pub(crate) async fn invalidate_prefix(self: &Arc<Self>, prefix: &str) -> u64 {
        self.ensure_subscriber();
        let _running = self.order.begin_unlisted();
        let pattern = format!("{}:{}:*", self.cfg.namespace, FORMAT_VERSION);
        let mut removed = 0;
        for keys in self.scan(&pattern).await {
            let gets = keys.iter().map(|k| redis::Cmd::get(k.as_str())).collect();
            let Some(values) = self
                .guarded(self.cfg.timeout * 4, self.store.query_many(gets))
                .await
            else {
                continue;
            };
            let doomed: Vec<String> = keys
                .into_iter()
                .zip(values)
                .filter_map(|(k, v)| match v {
                    // `Vary` markers name no path (their variants do).
                    Value::BulkString(b) if !b.starts_with(VARY_MAGIC) => {
                        match self.open_raw(&k, Bytes::from(b)) {
                            Ok(plain) => match Entry::decode_stored(plain, &self.checks(&|_| true))
                            {
                                Ok(e) if e.matches_prefix(prefix) => Some(k),
                                _ => None,
                            },
                            // Sealed with a key this instance does not
                            // hold (or not sealed): it may match, and no
                            // instance should serve it after the purge.
                            Err(_) => Some(k),
                        }
                    }
                    _ => None,
                })
                .collect();
            removed += doomed.len() as u64;
            self.delete_keys(doomed).await;
        }
        if !self.publish(&[Message::Prefix(prefix.to_owned())]).await {
            self.queue(Pending::Prefix(prefix.to_owned()));
        }
        removed
    }

    /// Deletes everything under the namespace (not the invalidation log,
    /// `{namespace}:inv`, which `{namespace}:*` does not match).
    pub(crate) async fn clear(self: &Arc<Self>) -> u64 {
        self.ensure_subscriber();
        self.order.invalidate(Scope::All);
        let pattern = format!("{}:*", self.cfg.namespace);
        let stats = self.stats_key();
        let leases = format!("{}:lease:", self.cfg.namespace);
        let mut removed = 0;
        for mut keys in self.scan(&pattern).await {
            // Shared stats and leases are not stored responses.
            keys.retain(|k| *k != stats && !k.starts_with(&leases));
            removed += keys.len() as u64;
            self.delete_keys(keys).await;
        }
        if !self.publish(&[Message::Clear]).await {
            self.queue(Pending::Clear);
        }
        removed
    }

    /// The hash that instances add their counters to.
    pub(crate) fn stats_key(&self) -> String {
        format!("{}:stats", self.cfg.namespace)
    }

    /// Adds `fields` to the shared stats hash (one pipeline of `HINCRBY`).
    pub(crate) async fn add_stats(&self, fields: &[(String, u64)]) -> bool {
        if fields.is_empty() {
            return true;
        }
        let key = self.stats_key();
        let cmds = fields
            .iter()
            .map(|(f, n)| redis::cmd("HINCRBY").arg(&key).arg(f).arg(*n).clone())
            .collect();
        self.guarded(self.cfg.timeout * 4, self.store.query_many(cmds))
            .await
            .is_some()
    }

    /// Every field of the shared stats hash.
    pub(crate) async fn read_stats(&self) -> Option<Vec<(String, u64)>> {
        let cmd = redis::Cmd::hgetall(self.stats_key());
        let value = self
            .guarded(self.cfg.timeout * 4, self.store.query(&cmd))
            .await?;
        let items = match value {
            Value::Array(items) => items,
            Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => return None,
        };
        let text = |v: &Value| match v {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        };
        Some(
            items
                .chunks(2)
                .filter_map(|kv| {
                    let k = text(&kv[0])?;
                    let v = text(kv.get(1)?)?.parse().ok()?;
                    Some((k, v))
                })
                .collect(),
        )
    }

    /// Deletes the shared stats hash.
    pub(crate) async fn clear_stats(&self) -> bool {
        let cmd = redis::Cmd::del(self.stats_key());
        self.guarded(self.cfg.timeout * 4, self.store.query(&cmd))
            .await
            .is_some()
    }

    /// Sets the observer of every L2 operation (spans are made regardless).
    pub(crate) fn set_op_hook(&self, hook: crate::store::redis::OpHook) {
        let _ = self.store.ops.set(hook);
    }

    /// `host`, `port` of the server commands go to now (with Sentinel, the
    /// master last found).
    pub(crate) fn current_server(&self) -> (String, u16) {
        self.store.current_server().into_owned()
    }

    /// The last `INFO` subset fetched; starts a fetch in the background
    /// when there is none or it is older than 10 s (never on the caller's
    /// time, and one at a time).
    pub(crate) fn info(self: &Arc<Self>, now: u64) -> Option<crate::stats::RedisInfo> {
        let last = lock(&self.info).clone();
        let stale = last
            .as_ref()
            .is_none_or(|i| now.saturating_sub(i.fetched_at_ms) >= 10_000);
        // Only while the breaker is closed: `allow` would take the probe a
        // half-open breaker keeps for requests.
        if stale && self.breaker.state(now) == crate::BreakerState::Closed {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                if !self.info_fetching.swap(true, Ordering::AcqRel) {
                    let me = Arc::clone(self);
                    handle.spawn(async move {
                        let fetched = me.fetch_info().await;
                        if let Some(mut info) = fetched {
                            info.fetched_at_ms = me.clock.now_millis();
                            *lock(&me.info) = Some(info);
                        }
                        me.info_fetching.store(false, Ordering::Release);
                    });
                }
            }
        }
        last
    }

    /// `INFO memory` and `INFO keyspace` from every node, added up.
    async fn fetch_info(&self) -> Option<crate::stats::RedisInfo> {
        let mut out = crate::stats::RedisInfo::default();
        if !self.store.is_cluster() {
            // One node: over the connection the cache already has.
            let mut cmd = redis::cmd("INFO");
            cmd.arg("memory").arg("keyspace");
            let reply = tokio::time::timeout(self.cfg.timeout * 4, self.store.query(&cmd)).await;
            let text = match reply {
                Ok(Ok(Value::BulkString(b))) => String::from_utf8_lossy(&b).into_owned(),
                Ok(Ok(Value::VerbatimString { text, .. })) => text,
                _ => return None,
            };
            out = parse_info(&text);
            out.nodes = 1;
            return Some(out);
        }
        let clients = self.store.scan_clients().await.ok()?;
        for client in clients {
            let Some(mut conn) = self.node_connection(&client).await else {
                continue;
            };
            let mut cmd = redis::cmd("INFO");
            cmd.arg("memory").arg("keyspace");
            let reply: Result<String, _> =
                tokio::time::timeout(self.cfg.timeout * 4, cmd.query_async(&mut conn))
                    .await
                    .map_err(|_| ())
                    .and_then(|r| r.map_err(|_| ()));
            let Ok(text) = reply else { continue };
            let parsed = parse_info(&text);
            out.used_memory += parsed.used_memory;
            out.maxmemory += parsed.maxmemory;
            out.keys += parsed.keys;
            out.nodes += 1;
        }
        (out.nodes > 0).then_some(out)
    }

    /// A connection of its own to one node (for per-node commands), within
    /// the connect timeout.
    async fn node_connection(
        &self,
        client: &redis::Client,
    ) -> Option<redis::aio::MultiplexedConnection> {
        tokio::time::timeout(
            self.cfg.connect_timeout,
            client.get_multiplexed_async_connection(),
        )
        .await
        .ok()?
        .ok()
    }

    /// `SCAN` every node for `pattern`, in batches (bounded per call).
    async fn scan(&self, pattern: &str) -> Vec<Vec<String>> {
        let mut batches = Vec::new();
        let Ok(clients) = self.store.scan_clients().await else {
            self.counters.errors.incr();
            return batches;
        };
        for client in clients {
            let Some(mut conn) = self.node_connection(&client).await else {
                self.counters.errors.incr();
                continue;
            };
            let mut cursor: u64 = 0;
            // At most 100 000 rounds of 500: a bound, not an expectation.
            for _ in 0..100_000 {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(500);
                let reply: Result<(u64, Vec<String>), _> =
                    tokio::time::timeout(self.cfg.timeout * 4, cmd.query_async(&mut conn))
                        .await
                        .map_err(|_| ())
                        .and_then(|r| r.map_err(|_| ()));
                let Ok((next, keys)) = reply else {
                    self.counters.errors.incr();
                    break;
                };
                if !keys.is_empty() {
                    batches.push(keys);
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        batches
    }

    /// Deletes keys; returns how many existed.
    async fn delete_keys(&self, keys: Vec<String>) -> u64 {
        let mut deleted = 0;
        for chunk in keys.chunks(500) {
            let cmds = chunk
                .iter()
                .map(|k| redis::cmd("DEL").arg(k).clone())
                .collect();
            if let Some(replies) = self
                .guarded(self.cfg.timeout * 4, self.store.query_many(cmds))
                .await
            {
                for r in replies {
                    if let redis::Value::Int(n) = r {
                        deleted += n.max(0) as u64;
                    }
                }
            }
        }
        deleted
    }

    /// `{namespace}:{format}:{{hash}}`: the hash is the key's hash tag, so
    /// on a cluster a URL's marker, variants and variant index share a slot
    /// (one script writes them together).
    pub(crate) fn redis_key(&self, key: KeyHash) -> String {
        // On every lookup: the prefix is made once, the hash written as hex
        // by hand (`format!` of a u128 costs ten times as much).
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let prefix = self
            .key_prefix
            .get_or_init(|| format!("{}:{}:", self.cfg.namespace, FORMAT_VERSION));
        let mut hex = [0u8; 32];
        for (i, digit) in hex.iter_mut().enumerate() {
            *digit = HEX[((key.0 >> ((31 - i) * 4)) & 0xf) as usize];
        }
        let mut out = String::with_capacity(prefix.len() + 34);
        out.push_str(prefix);
        out.push('{');
        // Hex digits are ASCII.
        out.push_str(std::str::from_utf8(&hex).unwrap_or_default());
        out.push('}');
        out
    }

    /// The index of `primary`'s variants: `{namespace}:vi:{{hash}}`, in the
    /// marker's slot but outside `{namespace}:{format}:*` (which prefix
    /// invalidation reads as entries).
    fn variant_index_key(&self, primary: KeyHash) -> String {
        format!("{}:vi:{{{:032x}}}", self.cfg.namespace, primary.0)
    }

    /// The key of the variant these request headers select, under the
    /// marker's generation (`VARIANT_SCRIPT` makes the same).
    fn variant_redis_key(
        &self,
        primary: KeyHash,
        generation: u64,
        names: &[HeaderName],
        headers: &HeaderMap,
    ) -> String {
        format!(
            "{}:{}:{:032x}",
            self.redis_key(primary),
            hex(&generation.to_le_bytes()),
            variant_hash(primary, names, headers).0
        )
    }

    /// How long the `PING` confirming a run of L2 timeouts may take before
    /// Redis is judged down (the connect timeout if longer): far beyond any
    /// healthy reply, and beyond the scheduling lag of a starved host.
    const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

    /// Runs one L2 operation under the timeout and the breaker. `None`
    /// when skipped, failed or timed out (all counted).
    ///
    /// Errors are evidence that Redis is down (refused, reset or closed
    /// connections, I/O errors, `LOADING`): `breaker_failures` in a row
    /// open the breaker. A timeout is only suspicion: this process may not
    /// have been scheduled (a starved machine) while Redis answered. The
    /// request takes it as a miss, but the breaker opens on timeouts only
    /// once a probe confirms them (see [`Self::suspect`]).
    ///
    /// A hand-written future ([`Guarded`], [`Within`]): as `async fn`s, the
    /// operation was held three times over in the future's layout (the
    /// argument, its pinned copy, the timeout's), and every L2 read's
    /// request future grew by as much (issue 18's profile of an L2 hit).
    fn guarded<T, F>(&self, extra: Duration, op: F) -> Guarded<'_, F>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        let now = self.clock.now_millis();
        // Reconnecting after the breaker opened happens in the background
        // (see `RedisStore::reset`): no request waits past the timeout.
        let within = self
            .breaker
            .allow(now)
            .then(|| Self::within(self.cfg.timeout + extra, op));
        Guarded {
            l2: self,
            began: now,
            within,
        }
    }

    /// What a guarded operation's end does to the breaker and the counters
    /// (`began`: when it was allowed, in the cache's clock); its value when
    /// it succeeded.
    fn settle<T>(&self, began: u64, result: Option<Result<T, StoreError>>) -> Option<T> {
        let evidence = match result {
            Some(Ok(v)) => {
                let was = self.breaker.state(began);
                self.breaker.record_success();
                if was != crate::BreakerState::Closed && self.cfg.warnings {
                    tracing::info!(target: "tower_tiered_cache", "L2 (Redis) is back: circuit breaker closed");
                }
                return Some(v);
            }
            None | Some(Err(StoreError::Timeout)) => false,
            Some(Err(StoreError::Redis(e))) if e.is_timeout() => false,
            Some(Err(e)) => {
                self.counters.errors.incr();
                tracing::debug!(error = %e, "L2 operation failed");
                true
            }
        };
        let now = self.clock.now_millis();
        let was_open = self.breaker.state(now) == crate::BreakerState::Open;
        if evidence {
            self.breaker.record_failure(now);
        } else {
            self.counters.timeouts.incr();
            if self.breaker.record_timeout(now) {
                self.suspect();
            }
        }
        if !was_open && self.breaker.state(now) == crate::BreakerState::Open {
            self.opened();
        }
        None
    }

    /// The breaker has just opened: say so, and start afresh after the
    /// open period (an operation cut off by the timeout never lets the
    /// connection see a dead socket).
    fn opened(&self) {
        Self::opened_store(&self.store, &self.cfg);
    }

    /// `breaker_failures` timeouts in a row, no evidence: one `PING` in the
    /// background (at most one at a time), on the connection requests use,
    /// within [`Self::PROBE_TIMEOUT`] (or the connect timeout if longer).
    /// An answer means Redis was there and the timeouts were this host's
    /// lateness: the count starts again (`l2_timeouts_slow_host`). No
    /// answer opens the breaker. Requests meanwhile still go to Redis, each
    /// within its deadline.
    fn suspect(&self) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            // Nowhere to probe from: judge as before, a timeout fails.
            self.probing.store(false, Ordering::Release);
            if self.breaker.trip(self.clock.now_millis()) {
                self.opened();
            }
            return;
        };
        let (store, breaker, counters, clock, probing) = (
            Arc::clone(&self.store),
            Arc::clone(&self.breaker),
            Arc::clone(&self.counters),
            Arc::clone(&self.clock),
            Arc::clone(&self.probing),
        );
        let cfg = self.cfg.clone();
        // The run of timeouts under suspicion: excused if Redis answers,
        // even when an operation that succeeded meanwhile (say, one the
        // pause held back) already started the count again.
        let suspected = self.breaker.consecutive();
        handle.spawn(async move {
            // Cleared however this task ends (a runtime shutting down
            // drops it).
            struct Done(Arc<AtomicBool>);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Release);
                }
            }
            let _done = Done(probing);
            let ping = redis::cmd("PING");
            let answered = matches!(
                L2::within(
                    cfg.connect_timeout.max(L2::PROBE_TIMEOUT),
                    store.query(&ping)
                )
                .await,
                Some(Ok(_))
            );
            if answered {
                // A breaker opened meanwhile on evidence stays open and
                // excuses nothing.
                let closed = breaker.state(clock.now_millis()) == crate::BreakerState::Closed;
                let excused = if closed {
                    breaker.excuse().max(suspected)
                } else {
                    0
                };
                counters.timeouts_slow_host.add(u64::from(excused));
                tracing::debug!(
                    target: "tower_tiered_cache",
                    timeouts = excused,
                    "L2 timeouts while Redis answers PING: this host is slow, breaker kept closed"
                );
            } else if breaker.trip(clock.now_millis()) {
                L2::opened_store(&store, &cfg);
            }
        });
    }

    /// Runs `op` for at most `deadline` of this runtime's time. When the
    /// timer fires late by more than the deadline itself, the runtime was
    /// saturated (this task, or the connection's driver task, was not
    /// scheduled), not Redis slow: the operation gets one more `deadline`
    /// from then. `None` when it did not finish.
    fn within<F: std::future::Future>(deadline: Duration, op: F) -> Within<F> {
        Within {
            op,
            sleep: tokio::time::sleep(deadline),
            started: tokio::time::Instant::now(),
            deadline,
            widened: false,
        }
    }

    /// The L2 breaker has just opened (on evidence, or a probe that got no
    /// answer): a warning, and the connection dropped so the next operation
    /// makes a new one.
    fn opened_store(store: &RedisStore, cfg: &L2Config) {
        if cfg.warnings {
            tracing::warn!(
                target: "tower_tiered_cache",
                server = %{
                    let server = store.current_server();
                    format!("{}:{}", server.0, server.1)
                },
                open_for_ms = cfg.breaker_open_for.as_millis() as u64,
                "L2 (Redis) is down: circuit breaker open, requests skip L2"
            );
        }
        store.reset();
    }

    /// Extra time for reads: a value may be as large as the body cap
    /// (1 ms per 64 KiB of it).
    fn read_allowance(&self) -> Duration {
        Duration::from_millis(self.cfg.max_body_bytes / (64 * 1024))
    }

    async fn get_key(&self, key: &str) -> Option<Bytes> {
        let cmd = redis::Cmd::get(key);
        match self
            .guarded(self.read_allowance(), self.store.query(&cmd))
            .await?
        {
            Value::BulkString(b) => Some(Bytes::from(b)),
            _ => None,
        }
    }

    /// Finds the entry for `primary` that these request headers select;
    /// `varied` is set when the URL has `Vary` variants in L2 (a miss is
    /// then a `vary-miss`).
    pub(crate) async fn lookup_varied(
        self: &Arc<Self>,
        primary: KeyHash,
        headers: &HeaderMap,
        varied: &mut bool,
    ) -> Option<Arc<Entry>> {
        self.ensure_subscriber();
        let primary_key = self.redis_key(primary);
        let raw = self.get_key(&primary_key).await?;
        let (slot, slot_key, raw) = if raw.starts_with(VARY_MAGIC.as_slice()) {
            let Some((generation, names)) = parse_marker(&raw) else {
                self.counters.decode_errors.incr();
                self.spawn_delete(primary);
                return None;
            };
            *varied = true;
            let secondary = variant_hash(primary, &names, headers);
            let key = self.variant_redis_key(primary, generation, &names, headers);
            let raw = self.get_key(&key).await?;
            (secondary, key, raw)
        } else {
            (primary, primary_key, raw)
        };
        let raw = self.open_value(slot, &slot_key, raw)?;
        // The value must be an entry this cache could have stored for the
        // key looked up (a variant's embedded key is its URL's).
        let key_ok = |k: &str| crate::key::readable_matches(k, primary, headers);
        match Entry::decode_stored(raw, &self.checks(&key_ok)) {
            Ok(entry) if entry.vary_matches(headers) => Some(Arc::new(entry)),
            Ok(_) => None,
            Err(e) => {
                // A value another build can read (compressed, while this one
                // lacks the feature) is left alone.
                self.corrupt(slot, slot_key, &e, !e.is_unreadable_here());
                None
            }
        }
    }

    /// A value at `slot` (Redis key `slot_key`) that cannot be used here:
    /// counted in `l2_decode_errors`, logged once per key, and, when
    /// `delete`, deleted off the request path.
    fn corrupt(
        self: &Arc<Self>,
        slot: KeyHash,
        slot_key: String,
        why: &dyn std::fmt::Display,
        delete: bool,
    ) {
        self.counters.decode_errors.incr();
        if self.logged.get(&slot).is_none() {
            self.logged.insert(slot, ());
            if self.cfg.warnings {
                tracing::warn!(
                    target: "tower_tiered_cache",
                    key = %slot_key,
                    error = %why,
                    "undecodable L2 value"
                );
            }
        }
        if delete {
            self.spawn_delete_key(slot_key);
        }
    }

    /// A value read from `key` that the reader cannot use although it
    /// decoded (a typed value of another codec or type, or whose body the
    /// codec refuses): a corrupt value, counted and deleted.
    #[cfg_attr(not(feature = "values"), allow(dead_code))]
    pub(crate) fn discard(self: &Arc<Self>, key: KeyHash, why: &dyn std::fmt::Display) {
        self.corrupt(key, self.redis_key(key), why, true);
    }

    /// Reads the entries stored under `keys` (no `Vary`: values) in one
    /// round trip: one `MGET` on a single node; on a cluster one `GET` per
    /// key, sent at once (keys live on different slots). Each value must
    /// be an entry stored for its key; a corrupt one is `None`, counted
    /// and deleted. Failures are `None` for every key.
    #[cfg_attr(not(feature = "values"), allow(dead_code))]
    pub(crate) async fn lookup_many(self: &Arc<Self>, keys: &[KeyHash]) -> Vec<Option<Arc<Entry>>> {
        if keys.is_empty() {
            return Vec::new();
        }
        self.ensure_subscriber();
        let names: Vec<String> = keys.iter().map(|k| self.redis_key(*k)).collect();
        let extra = self.read_allowance() * (keys.len().min(64) as u32);
        let values = if self.store.is_cluster() {
            let gets = names.iter().map(|k| redis::Cmd::get(k.as_str())).collect();
            self.guarded(extra, self.store.query_many(gets)).await
        } else {
            let mget = redis::cmd("MGET").arg(&names).clone();
            match self.guarded(extra, self.store.query(&mget)).await {
                Some(Value::Array(items)) => Some(items),
                _ => None,
            }
        };
        let Some(values) = values.filter(|v| v.len() == keys.len()) else {
            return vec![None; keys.len()];
        };
        let found = keys.iter().zip(names).zip(values);
        found
            .map(|((key, name), value)| match value {
                Value::BulkString(b) => self.decode_for(*key, name, Bytes::from(b)),
                _ => None,
            })
            .collect()
    }

    /// The entry `raw` holds if it is one stored for `key` (not a `Vary`
    /// marker); anything else is corrupt.
    fn decode_for(self: &Arc<Self>, key: KeyHash, name: String, raw: Bytes) -> Option<Arc<Entry>> {
        let raw = self.open_value(key, &name, raw)?;
        let key_ok = |k: &str| crate::key::readable_matches(k, key, &HeaderMap::new());
        match Entry::decode_stored(raw, &self.checks(&key_ok)) {
            Ok(entry) if entry.vary.is_empty() => Some(Arc::new(entry)),
            Ok(_) => None,
            Err(e) => {
                self.corrupt(key, name, &e, !e.is_unreadable_here());
                None
            }
        }
    }

    /// What a value read back is checked against: the body cap, and
    /// `key_ok` for its key.
    fn checks<'a>(
        &self,
        key_ok: &'a (dyn Fn(&str) -> bool + Sync),
    ) -> crate::store::codec::Checks<'a> {
        crate::store::codec::Checks {
            max_body: self.cfg.max_body_bytes,
            key_ok,
        }
    }

    fn spawn_delete(self: &Arc<Self>, key: KeyHash) {
        self.spawn_delete_key(self.redis_key(key));
    }

    fn spawn_delete_key(self: &Arc<Self>, key: String) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let l2 = Arc::clone(self);
            handle.spawn(async move {
                l2.delete_keys(vec![key]).await;
            });
        }
    }

    /// Reads many keys in one pipeline (per-key commands on a cluster).
    // Used by cache warming (next); tested below.
    #[allow(dead_code)]
    /// Variants (`Vary`) are not followed: each slot is returned as stored;
    /// undecodable values are `None` (and counted).
    pub(crate) async fn get_many(&self, keys: &[KeyHash]) -> Vec<Option<Arc<Entry>>> {
        if keys.is_empty() {
            return Vec::new();
        }
        let cmds = keys
            .iter()
            .map(|k| redis::Cmd::get(self.redis_key(*k)))
            .collect();
        let extra = self.read_allowance() * (keys.len().min(64) as u32);
        let Some(values) = self.guarded(extra, self.store.query_many(cmds)).await else {
            return vec![None; keys.len()];
        };
        values
            .into_iter()
            .zip(keys)
            .map(|(v, k)| match v {
                Value::BulkString(b) if !b.starts_with(VARY_MAGIC) => {
                    let decoded = self
                        .open_raw(&self.redis_key(*k), Bytes::from(b))
                        .ok()
                        .and_then(|plain| {
                            Entry::decode_stored(plain, &self.checks(&|_| true)).ok()
                        });
                    if decoded.is_none() {
                        self.counters.decode_errors.incr();
                    }
                    decoded.map(Arc::new)
                }
                _ => None,
            })
            .collect()
    }

    #[allow(dead_code)]
    /// Writes many entries (no `Vary`) at once, in one pipeline, waiting
    /// for the result. Returns whether L2 took them.
    pub(crate) async fn set_many(&self, entries: &[(KeyHash, Arc<Entry>)]) -> bool {
        let now = self.clock.now_millis();
        let jobs: Vec<Job> = entries
            .iter()
            .filter(|(_, e)| e.fits_format())
            .filter_map(|(k, e)| {
                let px = e.timeline.retain_until.saturating_sub(now);
                (px > 0).then(|| Job {
                    entry: Arc::clone(e),
                    px,
                    announce: *k,
                    vary_headers: None,
                    taken: self.order.next(),
                    reserved: 0,
                    landed: None,
                })
            })
            .collect();
        let n = jobs.len() as u64;
        let before = self.counters.writes.get();
        self.write(jobs).await;
        self.counters.writes.get() >= before + n
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
        entry: &Arc<Entry>,
        req_headers: &HeaderMap,
        now: u64,
    ) {
        // A lease held on the key waits for this write; dropped unsent
        // (the write refused or dropped below), it hears "not landed".
        let landed = self.leases.take_landing(primary);
        let px = entry.timeline.retain_until.saturating_sub(now);
        if px == 0 || !entry.fits_format() {
            return;
        }
        self.ensure_subscriber();
        let vary_headers = (!entry.vary.is_empty()).then(|| {
            let mut h = HeaderMap::new();
            for (n, _) in entry.vary.iter() {
                for v in req_headers.get_all(n) {
                    h.append(n.clone(), v.clone());
                }
            }
            h
        });
        // Reserve the entry's size in the queue's byte budget.
        let size = entry.weight();
        let queued = self.queued_bytes.fetch_add(size, Ordering::AcqRel);
        if queued + size > QUEUE_BYTES {
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            self.counters.writes_dropped.incr();
            return;
        }
        let job = Job {
            entry: Arc::clone(entry),
            px,
            announce: primary,
            vary_headers,
            taken: self.order.next(),
            reserved: size,
            landed,
        };
        self.pending.fetch_add(1, Ordering::AcqRel);
        let Some(tx) = self.sender() else {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            self.counters.writes_dropped.incr();
            return;
        };
        if let Err(e) = tx.try_send(job) {
            let job = match e {
                mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
            };
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.queued_bytes.fetch_sub(job.reserved, Ordering::AcqRel);
            self.counters.writes_dropped.incr();
        }
    }

    /// Marks `key` as being deleted (until `end_delete`).
    pub(crate) fn begin_delete(&self, key: KeyHash) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.deleting.insert(key, ());
    }

    /// The `DEL` of `key` completed (or failed).
    pub(crate) fn end_delete(&self, key: KeyHash) {
        self.deleting.remove(&key);
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether this instance invalidated `key` and its `DEL` is under way
    /// (or queued while Redis is unreachable, or being replayed).
    pub(crate) fn deleting(&self, key: KeyHash) -> bool {
        self.deleting.get(&key).is_some()
            || self.broad_replays.load(Ordering::Acquire) > 0
            || self.outbox.holds(key)
    }

    /// Writes queued by `enqueue` and not yet written or dropped.
    pub(crate) fn pending_writes(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    /// Records an invalidation of `key`: queued writes of it made before
    /// now will not be sent, reads of it started before now not promoted.
    pub(crate) fn note_invalidated(&self, key: KeyHash) {
        self.order.invalidate(Scope::Key(key));
    }

    /// The current generation: taken when an L2 read starts, so that what
    /// it reads is not promoted past a later invalidation.
    pub(crate) fn generation(&self) -> Generation {
        self.order.next()
    }

    /// Whether `key`, read from L2 at `since`, may be copied into L1: not
    /// if an invalidation that may cover it arrived meanwhile (the copy
    /// could be older than the invalidation).
    pub(crate) fn may_promote(&self, key: KeyHash, since: Generation) -> bool {
        self.order.still_applies(key, since, Use::Promote)
    }

    /// The writer's queue, starting the writer task on first use (and again
    /// if its runtime went away).
    fn sender(self: &Arc<Self>) -> Option<mpsc::Sender<Job>> {
        let mut slot = lock(&self.writer);
        if let Some(tx) = slot.as_ref().filter(|tx| !tx.is_closed()) {
            return Some(tx.clone());
        }
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (tx, mut rx) = mpsc::channel::<Job>(self.cfg.write_queue.max(1));
        let weak = Arc::downgrade(self);
        handle.spawn(async move {
            // Whatever is queued goes out together: up to `BATCH_JOBS` jobs
            // and `BATCH_BYTES` bytes per pipeline.
            let mut queued: Vec<Job> = Vec::with_capacity(BATCH_JOBS);
            while rx.recv_many(&mut queued, BATCH_JOBS).await > 0 {
                let Some(l2) = weak.upgrade() else { return };
                let mut jobs = std::mem::take(&mut queued).into_iter().peekable();
                while jobs.peek().is_some() {
                    let mut batch = Vec::new();
                    let mut bytes = 0u64;
                    while let Some(job) =
                        jobs.next_if(|j| batch.is_empty() || bytes + j.reserved <= BATCH_BYTES)
                    {
                        bytes += job.reserved;
                        batch.push(job);
                    }
                    let n = batch.len() as u64;
                    l2.write(batch).await;
                    l2.pending.fetch_sub(n, Ordering::AcqRel);
                }
            }
        });
        *slot = Some(tx.clone());
        Some(tx)
    }

    /// Writes a batch of jobs and tells the other instances to drop their
    /// L1 copies: on one node, all of it (values, `Vary` markers and
    /// variant indexes, tag indexes, log entries) is one pipeline, one
    /// round trip; on a cluster, one command per key (each to its slot's
    /// node, concurrently), then the log entries.
    async fn write(&self, mut jobs: Vec<Job>) {
        let released: u64 = jobs.iter().map(|j| j.reserved).sum();
        let now = self.clock.now_millis();
        let batch = self.batch_commands(&mut jobs, now);
        self.queued_bytes.fetch_sub(released, Ordering::AcqRel);
        if batch.announce.is_empty() {
            return;
        }
        let Batch {
            mut cmds,
            scripts,
            tagged,
            announce,
            bytes,
        } = batch;
        cmds.extend(tag_index_commands(&tagged, now));
        // The time a batch may take: the timeout, 1 ms per 64 KiB of values
        // and 1 ms per 16 commands on top.
        let extra = Duration::from_millis((bytes / (64 * 1024)) as u64 + (cmds.len() / 16) as u64);
        // Whether the operation will be skipped (nothing sent, nothing to
        // announce later).
        let skipped = self.skipping();
        let (written, announced) = self.send_announced(cmds, &announce, extra).await;
        // Leases held here wait for their entries: landed and announced.
        let landed = written.is_some() && announced;
        for tx in jobs.iter_mut().filter_map(|j| j.landed.take()) {
            let _ = tx.send(landed);
        }
        if !announced && !skipped {
            // The values may have landed without their announcement: tell
            // the other instances when Redis is back.
            for k in &announce {
                self.queue(Pending::Announce(*k));
            }
        }
        // Counted once announced, so "written" means other instances know.
        let n = announce.len() as u64;
        match written {
            Some(replies) => {
                self.counters.writes.add(n);
                let evicted: i64 = scripts
                    .iter()
                    .filter_map(|&i| match replies.get(i) {
                        Some(Value::Int(e)) => Some(*e),
                        _ => None,
                    })
                    .sum();
                self.counters.variants_evicted.add(evicted.max(0) as u64);
            }
            None => self.counters.writes_dropped.add(n),
        }
    }

    /// The commands that write the jobs not superseded by an invalidation
    /// (those are dropped and counted), and what the batch must announce.
    fn batch_commands(&self, jobs: &mut [Job], now: u64) -> Batch {
        let mut batch = Batch {
            cmds: Vec::with_capacity(jobs.len() + 8),
            scripts: Vec::new(),
            tagged: std::collections::BTreeMap::new(),
            announce: Vec::with_capacity(jobs.len()),
            bytes: 0,
        };
        for job in jobs {
            if !self
                .order
                .still_applies(job.announce, job.taken, Use::Write)
            {
                // An invalidation came after this write was queued.
                self.counters.writes_dropped.incr();
                job.landed = None;
                continue;
            }
            let value = job.entry.encode_with(self.cfg.compress_over);
            // What a tag index points at: the entry's key, or for a variant
            // its URL's marker (deleting it orphans every variant).
            let member = self.redis_key(job.announce);
            let Some((cmd, script, len)) = self.value_command(job, &member, value, now) else {
                // Not sealed (the system's random generator failed).
                self.counters.writes_dropped.incr();
                continue;
            };
            batch.bytes += len;
            if script {
                batch.scripts.push(batch.cmds.len());
            }
            batch.cmds.push(cmd);
            for tag in job.entry.tags.iter() {
                batch
                    .tagged
                    .entry(self.tag_key(tag))
                    .or_default()
                    .push((member.clone(), now.saturating_add(job.px)));
            }
            batch.announce.push(job.announce);
        }
        batch
    }

    /// The command that stores one job's value at `member`: a `SET … PX`,
    /// or for a variant one `EVAL` of `VARIANT_SCRIPT` (marker, variant,
    /// variant index trimmed to `max_variants`; `true`: its reply counts
    /// the variants evicted), and the bytes of the value stored (sealed
    /// when encryption is on; `None` if it could not be).
    fn value_command(
        &self,
        job: &Job,
        member: &str,
        value: Bytes,
        now: u64,
    ) -> Option<(redis::Cmd, bool, usize)> {
        let Some(h) = &job.vary_headers else {
            let value = self.seal_value(member, value)?;
            let mut c = redis::cmd("SET");
            c.arg(member).arg(value.as_ref()).arg("PX").arg(job.px);
            return Some((c, false, value.len()));
        };
        let names: Vec<HeaderName> = job.entry.vary.iter().map(|(n, _)| n.clone()).collect();
        let fresh = marker(instance_id(), &names);
        let variant = format!("{:032x}", variant_hash(job.announce, &names, h).0);
        // The script picks the generation: the variant's context is its
        // key without it (see `context_of`).
        let value = self.seal_value(&format!("{member}:{variant}"), value)?;
        let mut c = redis::cmd("EVAL");
        c.arg(VARIANT_SCRIPT)
            .arg(2)
            .arg(member)
            .arg(self.variant_index_key(job.announce))
            .arg(fresh.as_ref())
            .arg(job.px)
            .arg(variant)
            .arg(value.as_ref())
            .arg(self.cfg.max_variants.max(1))
            .arg(now);
        Some((c, true, value.len()))
    }

    /// The bytes stored for `value` under the context `context`: sealed
    /// when encryption is on (`None` if the system's random generator
    /// fails), else `value` itself.
    fn seal_value(&self, context: &str, value: Bytes) -> Option<Bytes> {
        #[cfg(feature = "l2-encryption")]
        if let Some(keys) = &self.cfg.keys {
            return keys.seal(context.as_bytes(), &value);
        }
        let _ = context;
        Some(value)
    }

    /// The plain bytes of `raw`, read from the Redis key `name`: opened
    /// when encryption is on.
    fn open_raw(&self, name: &str, raw: Bytes) -> Result<Bytes, OpenError> {
        #[cfg(feature = "l2-encryption")]
        if let Some(keys) = &self.cfg.keys {
            return keys.open(context_of(name).as_bytes(), raw);
        }
        let _ = name;
        Ok(raw)
    }

    /// [`open_raw`](Self::open_raw), with a value that does not open
    /// treated as corrupt (counted, deleted): `None`.
    fn open_value(self: &Arc<Self>, slot: KeyHash, name: &str, raw: Bytes) -> Option<Bytes> {
        match self.open_raw(name, raw) {
            Ok(plain) => Some(plain),
            Err(e) => {
                self.corrupt(slot, name.to_owned(), &e, true);
                None
            }
        }
    }

    /// Sends the batch's commands and its log entries: in one pipeline on
    /// one node (the log entries after the writes); on a cluster, where
    /// commands go out concurrently, the log entries after the writes have
    /// answered (even a failed batch: some of it may have landed). The
    /// replies, and whether the log took the announcements.
    async fn send_announced(
        &self,
        mut cmds: Vec<redis::Cmd>,
        announce: &[KeyHash],
        extra: Duration,
    ) -> (Option<Vec<Value>>, bool) {
        let msgs: Vec<Message> = announce.iter().map(|k| Message::Key(*k)).collect();
        if self.store.is_cluster() {
            let written = self.guarded(extra, self.store.query_many(cmds)).await;
            let announced = self
                .guarded(Duration::ZERO, self.store.query_many(self.xadds(&msgs)))
                .await
                .is_some();
            (written, announced)
        } else {
            cmds.extend(self.xadds(&msgs));
            let written = self.guarded(extra, self.store.query_many(cmds)).await;
            let announced = written.is_some();
            (written, announced)
        }
    }

    /// Deletes keys (all variants are separate keys) and tells the other
    /// instances; queued if Redis does not take it.
    pub(crate) async fn delete_and_announce(self: &Arc<Self>, keys: Vec<KeyHash>) -> u64 {
        self.ensure_subscriber();
        for k in &keys {
            self.note_invalidated(*k);
        }
        self.delete_announced(keys).await
    }

    /// The `DEL`s of keys and their variant indexes, then the log entry:
    /// one pipeline on one node; on a cluster, the entry after the `DEL`s
    /// (so no instance rereads the old value). What fails is queued.
    async fn delete_announced(&self, keys: Vec<KeyHash>) -> u64 {
        let mut deleted = 0;
        for chunk in keys.chunks(MESSAGES_PER_ENTRY) {
            let dels: Vec<redis::Cmd> = chunk
                .iter()
                .flat_map(|k| [self.redis_key(*k), self.variant_index_key(*k)])
                .map(|k| redis::cmd("DEL").arg(k).clone())
                .collect();
            let n = dels.len();
            let msgs: Vec<Message> = chunk.iter().map(|k| Message::Key(*k)).collect();
            let replies = if self.store.is_cluster() {
                match self
                    .guarded(self.cfg.timeout * 4, self.store.query_many(dels))
                    .await
                {
                    Some(r) => self.publish(&msgs).await.then_some(r),
                    None => None,
                }
            } else {
                let mut cmds = dels;
                cmds.extend(self.xadds(&msgs));
                self.guarded(self.cfg.timeout * 4, self.store.query_many(cmds))
                    .await
            };
            match replies {
                Some(r) => {
                    deleted += r
                        .iter()
                        .take(n)
                        .map(|v| match v {
                            Value::Int(d) => (*d).max(0) as u64,
                            _ => 0,
                        })
                        .sum::<u64>();
                }
                None => {
                    for k in chunk {
                        self.queue(Pending::Key(*k));
                    }
                }
            }
        }
        deleted
    }
}

/// One writer batch: its commands, where `VARIANT_SCRIPT`'s replies are,
/// the tag index additions by tag key (member, expiry), the keys to
/// announce, and the bytes of values.
struct Batch {
    cmds: Vec<redis::Cmd>,
    scripts: Vec<usize>,
    tagged: std::collections::BTreeMap<String, Vec<(String, u64)>>,
    announce: Vec<KeyHash>,
    bytes: usize,
}

/// The tag index updates of a batch: each index a sorted set scored by its
/// members' expiry; expired members are trimmed on every write, so an index
/// never outgrows its live entries; it expires with its longest-lived
/// member.
fn tag_index_commands(
    tagged: &std::collections::BTreeMap<String, Vec<(String, u64)>>,
    now: u64,
) -> Vec<redis::Cmd> {
    let mut cmds = Vec::with_capacity(tagged.len() * 4);
    for (tag_key, members) in tagged {
        let mut add = redis::cmd("ZADD");
        add.arg(tag_key).arg("GT");
        for (member, until) in members {
            add.arg(*until).arg(member);
        }
        cmds.push(add);
        let mut trim = redis::cmd("ZREMRANGEBYSCORE");
        trim.arg(tag_key).arg("-inf").arg(now);
        cmds.push(trim);
        let until = members.iter().map(|(_, u)| *u).max().unwrap_or(now);
        for flag in ["GT", "NX"] {
            let mut expire = redis::cmd("PEXPIREAT");
            expire.arg(tag_key).arg(until).arg(flag);
            cmds.push(expire);
        }
    }
    cmds
}

/// A random-enough id for this process's L2 tier (time, address, pid).
fn instance_id() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let marker = Box::new(0u8);
    let addr = &*marker as *const u8 as u64;
    xxhash_rust::xxh3::xxh3_64(
        &[
            t.to_le_bytes(),
            addr.to_le_bytes(),
            u64::from(std::process::id()).to_le_bytes(),
        ]
        .concat(),
    )
}

/// Follows the invalidation log (`XREAD BLOCK` on a connection of its
/// own), reconnecting with a growing delay; on each reconnect, catches up
/// from the last id applied (see `store::inval`). Losing the connection
/// clears nothing. Ends when the cache is dropped.
///
/// Why `XREAD BLOCK` and not pub/sub as a wake-up: the log is the truth
/// either way, and one reader of it has no gap between subscribing and
/// catching up, no message seen twice or out of order, and notices a server
/// that stops answering (the read's deadline), which a pub/sub connection
/// does not. It costs the same one connection per instance.
async fn subscribe_loop(weak: Weak<L2>, mut shutdown: watch::Receiver<()>) {
    // Whatever ends this task (the cache dropped, its runtime shut down),
    // the instance is no longer following the log.
    struct Gone(Weak<L2>);
    impl Drop for Gone {
        fn drop(&mut self) {
            if let Some(l2) = self.0.upgrade() {
                l2.lost();
                l2.subscriber_started.store(false, Ordering::Release);
            }
        }
    }
    let _gone = Gone(weak.clone());
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0usize;
    loop {
        let Some(l2) = weak.upgrade() else { return };
        // The read's own deadline: the block, and a margin for the reply.
        let deadline = BLOCK + l2.cfg.connect_timeout.max(Duration::from_secs(1));
        // Each attempt starts from the next seed URL (a cluster node may
        // be gone).
        let connect = tokio::time::timeout(
            l2.cfg.connect_timeout.saturating_mul(2),
            l2.store.dedicated(&l2.log_key, attempt, deadline),
        )
        .await;
        attempt = attempt.wrapping_add(1);
        drop(l2);
        if let Ok(Ok(mut conn)) = connect {
            if follow(&weak, &mut conn, &mut shutdown, deadline).await {
                return;
            }
            delay = Duration::from_millis(100);
        }
        let Some(l2) = weak.upgrade() else { return };
        l2.lost();
        drop(l2);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Catches up and follows the log on `conn` until it fails (false) or the
/// cache is dropped (true).
async fn follow(
    weak: &Weak<L2>,
    conn: &mut crate::store::redis::Dedicated,
    shutdown: &mut watch::Receiver<()>,
    deadline: Duration,
) -> bool {
    // Runs a command without keeping the cache alive meanwhile.
    macro_rules! run {
        ($cmd:expr) => {{
            let cmd = $cmd;
            tokio::select! {
                r = tokio::time::timeout(deadline + Duration::from_millis(500), conn.query(&cmd)) => match r {
                    Ok(Ok(v)) => v,
                    _ => return false,
                },
                _ = shutdown.changed() => return true,
            }
        }};
    }
    let Some(l2) = weak.upgrade() else {
        return true;
    };
    let last = *lock(&l2.last_id);
    let mut probe = redis::cmd("EVAL");
    probe
        .arg(crate::store::inval::PROBE_SCRIPT)
        .arg(1)
        .arg(&l2.log_key)
        .arg(last.map(|id| id.to_string()).unwrap_or_default());
    drop(l2);
    let reply = run!(probe);
    let Some(state) = crate::store::inval::LogState::from_reply(&reply) else {
        return false;
    };
    let Some(l2) = weak.upgrade() else {
        return true;
    };
    let mut from = l2.start_at(l2.resume_point(last, &state, conn.node.as_ref()), last);
    l2.set_last(from);
    drop(l2);
    let mut caught_up = false;
    loop {
        let Some(l2) = weak.upgrade() else {
            return true;
        };
        if caught_up && !l2.outbox.is_empty() {
            // Invalidations made here while Redis was unreachable.
            l2.flush_outbox().await;
        }
        let mut read = redis::cmd("XREAD");
        read.arg("COUNT").arg(PAGE);
        if caught_up {
            read.arg("BLOCK").arg(BLOCK.as_millis() as u64);
        }
        read.arg("STREAMS").arg(&l2.log_key).arg(from.to_string());
        drop(l2);
        let reply = run!(read);
        let Some(l2) = weak.upgrade() else {
            return true;
        };
        let page = crate::store::inval::entries(&reply);
        let full = page.len() >= PAGE;
        for (id, msgs) in page {
            for m in &msgs {
                l2.receive(m);
            }
            from = id;
        }
        l2.set_last(from);
        if !caught_up && !full {
            // Every missed entry applied: L1 is coherent again.
            caught_up = true;
            *lock(&l2.lost_at) = None;
            l2.coherent.store(true, Ordering::Release);
        }
    }
}

impl L2 {
    /// Where to read the log from once connected, given the last id
    /// applied (`None`: the first connection), the log's state and, with
    /// Sentinel, the master's address (`node`).
    fn resume_point(
        &self,
        last: Option<StreamId>,
        state: &crate::store::inval::LogState,
        node: Option<&(String, u16)>,
    ) -> Resume {
        // The server restarted (or failed over) since this instance last saw it.
        let restarted = {
            let mut seen = lock(&self.run_id);
            let restarted = seen.as_ref().is_some_and(|r| *r != state.run_id);
            *seen = Some(state.run_id.clone());
            restarted
        };
        // Another master than last time: the sentinels failed over.
        let moved = node.is_some_and(|node| {
            let mut seen = lock(&self.log_node);
            let moved = seen.as_ref().is_some_and(|s| s != node);
            *seen = Some(node.clone());
            moved
        });
        if let Some(last) = last {
            if moved && restarted {
                return crate::store::inval::after_failover(state);
            }
            return crate::store::inval::resume(last, state, restarted);
        }
        // The first connection. If Redis was reachable at start-up, from
        // the log's end: what came before concerns copies this instance
        // never held, and replaying it would drop good ones. If it was
        // not (attempts failed before this one), from when this tier was
        // made: other instances' invalidations queued during the outage
        // may concern what L1 fetched from the origin meanwhile. (Stream
        // ids are Redis's clock: a skew between the clocks moves that
        // point by as much.)
        let unreachable_at_start = lock(&self.lost_at).is_some();
        if !unreachable_at_start {
            return Resume::From(state.last_generated);
        }
        let start = StreamId(self.started_ms, 0);
        if crate::store::inval::trimmed_after(start, state) {
            Resume::Reset(
                state.last_generated,
                "the invalidation log was trimmed past this instance's start",
            )
        } else {
            Resume::From(start)
        }
    }

    /// The id to read on from; a reset first clears L1 (warned, counted in
    /// `l2_coherence_resets`): invalidations may have been missed.
    fn start_at(&self, decision: Resume, last: Option<StreamId>) -> StreamId {
        let (id, why) = match decision {
            Resume::From(id) => return id,
            Resume::Reset(id, why) => (id, why),
        };
        self.counters.coherence_resets.incr();
        if self.cfg.warnings {
            tracing::warn!(
                target: "tower_tiered_cache",
                reason = why,
                last_applied = %last.unwrap_or_default(),
                "L2 invalidations may have been missed: L1 cleared"
            );
        }
        // Reads in flight may have missed the same invalidations; this
        // instance's own queued writes are still current.
        self.order.invalidate(Scope::Unlisted);
        if let Some(listener) = self.listener.get() {
            listener(&Message::Clear);
        }
        id
    }

    /// The log reader lost its connection (or ended).
    fn lost(&self) {
        self.coherent.store(false, Ordering::Release);
        lock(&self.lost_at).get_or_insert_with(std::time::Instant::now);
    }

    fn set_last(&self, id: StreamId) {
        *lock(&self.last_id) = Some(id);
    }
}

#[cfg(test)]
#[path = "../../tests/support/redis.rs"]
#[allow(dead_code, unreachable_pub, missing_docs, clippy::all)]
mod redis_support;

pin_project! {
    /// [`L2::guarded`]'s future: the operation under [`Within`], then the
    /// breaker's and the counters' account of how it ended; `within` is
    /// `None` when the breaker refused it (it then answers `None` at once).
    #[must_use = "futures do nothing unless polled"]
    pub(crate) struct Guarded<'a, F> {
        l2: &'a L2,
        began: u64,
        #[pin]
        within: Option<Within<F>>,
    }
}

impl<F, T> std::future::Future for Guarded<'_, F>
where
    F: std::future::Future<Output = Result<T, StoreError>>,
{
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.project();
        let Some(within) = this.within.as_pin_mut() else {
            return Poll::Ready(None);
        };
        let result = ready!(within.poll(cx));
        Poll::Ready(this.l2.settle(*this.began, result))
    }
}

pin_project! {
    /// [`L2::within`]'s future: the operation and one timer, which is
    /// moved once when it fired late by more than the deadline.
    #[must_use = "futures do nothing unless polled"]
    pub(crate) struct Within<F> {
        #[pin]
        op: F,
        #[pin]
        sleep: tokio::time::Sleep,
        started: tokio::time::Instant,
        deadline: Duration,
        widened: bool,
    }
}

impl<F: std::future::Future> std::future::Future for Within<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Poll::Ready(v) = this.op.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            ready!(this.sleep.as_mut().poll(cx));
            if *this.widened || this.started.elapsed() < this.deadline.saturating_mul(2) {
                return Poll::Ready(None);
            }
            // Late by more than the deadline: one more deadline from now.
            *this.widened = true;
            match tokio::time::Instant::now().checked_add(*this.deadline) {
                Some(at) => this.sleep.as_mut().reset(at),
                None => return Poll::Ready(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use crate::entry::{EntryFlags, Timeline};
    use http::{StatusCode, Version};

    fn entry(body: &str, now: u64) -> Arc<Entry> {
        Arc::new(Entry {
            key: format!("GET //h/{body}").into(),
            status: StatusCode::OK,
            version: Version::HTTP_11,
            headers: HeaderMap::new(),
            body: Bytes::copy_from_slice(body.as_bytes()),
            vary: Box::new([]),
            timeline: Timeline {
                stored_at: now,
                initial_age: 0,
                fresh_until: now + 60_000,
                stale_until: now + 60_000,
                stale_if_error_until: now + 60_000,
                retain_until: now + 60_000,
            },
            flags: EntryFlags::default(),
            extensions: 0,
            tags: Box::new(["t".into()]),
            template: Default::default(),
            label: 0,
            reads: Default::default(),
            value: None,
        })
    }

    /// The tests' L2 settings (namespace `batch`, short deadlines).
    fn config() -> L2Config {
        L2Config {
            namespace: "batch".into(),
            timeout: Duration::from_millis(200),
            connect_timeout: Duration::from_millis(500),
            breaker_failures: 5,
            breaker_open_for: Duration::from_secs(5),
            promote_after: 3,
            promotion_window: Duration::from_secs(60),
            write_queue: 16,
            l1_max_ttl: None,
            invalidation_log_len: 10_000,
            max_body_bytes: 1 << 20,
            compress_over: Some(1024),
            warnings: false,
            max_variants: 32,
            #[cfg(feature = "l2-encryption")]
            keys: None,
        }
    }

    fn l2(url: String) -> L2 {
        l2_with(url, config())
    }

    fn l2_with(url: String, cfg: L2Config) -> L2 {
        L2::new(&RedisTarget::Single(url), cfg, Arc::new(SystemClock)).unwrap()
    }

    #[tokio::test]
    async fn pipelined_multi_set_and_multi_get() {
        redis_support::require_redis();
        let server = redis_support::RedisServer::start();
        let l2 = l2(server.url());
        let now = SystemClock.now_millis();
        let mut items: Vec<(KeyHash, Arc<Entry>)> = (0..50)
            .map(|i| (KeyHash(i), entry(&format!("e{i}"), now)))
            .collect();
        // One with nothing left to keep: skipped, not sent with `PX 0`
        // (which Redis refuses, failing the whole pipeline).
        items.push((KeyHash(999), entry("old", now - 120_000)));
        assert!(l2.set_many(&items).await);
        assert_eq!(l2.counters.writes.get(), 50);
        // The tag index holds every key.
        let members = server.cli(&["ZCARD", "batch:tag:t"]);
        assert_eq!(members.text().trim(), "50");
        // Expiry is the entry's last useful instant.
        let pttl: u64 = server
            .cli(&["PTTL", &l2.redis_key(KeyHash(7))])
            .text()
            .trim()
            .parse()
            .unwrap();
        assert!(pttl > 50_000 && pttl <= 60_000, "{pttl}");

        let mut keys: Vec<KeyHash> = (0..50).map(KeyHash).collect();
        keys.push(KeyHash(999)); // absent
        let got = l2.get_many(&keys).await;
        assert_eq!(got.len(), 51);
        for (i, e) in got.iter().take(50).enumerate() {
            assert_eq!(e.as_ref().unwrap().body(), format!("e{i}").as_bytes());
        }
        assert!(got[50].is_none());

        // A corrupt value in the batch is a miss, counted.
        assert!(server
            .cli(&["SET", &l2.redis_key(KeyHash(3)), "junk"])
            .success());
        let got = l2.get_many(&keys[..5]).await;
        assert!(got[3].is_none() && got[4].is_some());
        assert_eq!(l2.counters.decode_errors.get(), 1);
    }

    /// `total_reads_processed` of `INFO stats`: read events, one per round
    /// trip of a small pipeline.
    fn reads(server: &redis_support::RedisServer) -> u64 {
        let info = server.cli(&["INFO", "stats"]);
        info.text()
            .lines()
            .find_map(|l| l.trim().strip_prefix("total_reads_processed:"))
            .and_then(|n| n.parse().ok())
            .expect("total_reads_processed")
    }

    /// An entry varying on `user-agent`, stored for `ua`.
    fn variant(ua: &str, now: u64) -> (Arc<Entry>, HeaderMap) {
        let mut e = Arc::unwrap_or_clone(entry(&format!("page for {ua}"), now));
        let name = HeaderName::from_static("user-agent");
        let value = http::HeaderValue::from_str(ua).unwrap();
        e.vary = Box::new([(name.clone(), Box::new([value.clone()]) as Box<[_]>)]);
        let mut h = HeaderMap::new();
        h.insert(name, value);
        (Arc::new(e), h)
    }

    /// Waits (at most 10 s) until `n` writes were settled.
    async fn settled(l2: &L2, n: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while l2.counters.writes.get() + l2.counters.writes_dropped.get() < n {
            assert!(std::time::Instant::now() < deadline, "writes not settled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_vary_write_is_one_round_trip_and_a_queued_batch_one_pipeline() {
        redis_support::require_redis();
        let server = redis_support::RedisServer::start();
        let l2 = Arc::new(l2(server.url()));
        // No log reader: its `XREAD` after each announcement is a read
        // event of another connection, not a round trip of the write.
        l2.subscriber_started.store(true, Ordering::Release);
        let now = SystemClock.now_millis();
        // Connect first.
        let (e, h) = variant("warm-up", now);
        l2.enqueue(KeyHash(1), &e, &h, now);
        settled(&l2, 1).await;
        assert_eq!(l2.counters.writes.get(), 1);

        // One write at a time, each waited for: one round trip each (the
        // INFO read between writes is one more read event).
        // Reading the counter costs read events of its own (the command,
        // the CLI connection's close): measured while nothing else runs.
        let idle = reads(&server);
        let overhead = reads(&server) - idle;
        const ONE_BY_ONE: u64 = 10;
        let before = reads(&server);
        for i in 0..ONE_BY_ONE {
            let (e, h) = variant(&format!("agent-{i}"), now);
            l2.enqueue(KeyHash(1), &e, &h, now);
            settled(&l2, 2 + i).await;
        }
        let per_write = (reads(&server) - before - overhead) as f64 / ONE_BY_ONE as f64;
        assert_eq!(l2.counters.writes.get(), 1 + ONE_BY_ONE);
        assert!(
            per_write <= 1.0,
            "{per_write} round trips per Vary write (value, marker, tag index, announcement)"
        );

        // A burst: the writer drains what is queued into few pipelines.
        const BURST: u64 = 16;
        let before = reads(&server);
        for i in 0..BURST {
            let (e, h) = variant(&format!("burst-{i}"), now);
            l2.enqueue(KeyHash(2 + u128::from(i % 4)), &e, &h, now);
        }
        settled(&l2, 1 + ONE_BY_ONE + BURST).await;
        let trips = reads(&server) - before - overhead;
        assert_eq!(l2.counters.writes.get(), 1 + ONE_BY_ONE + BURST);
        println!("{per_write} round trips per write one by one, {trips} for a burst of {BURST}");
        // One pipeline (a few read events: Redis reads 16 KiB at a time).
        assert!(
            trips <= BURST / 2,
            "{trips} round trips for {BURST} queued writes"
        );
        // Every variant landed: the marker's generation and the index.
        let cap = server.cli(&["ZCARD", &l2.variant_index_key(KeyHash(1))]);
        assert_eq!(cap.text().trim(), (1 + ONE_BY_ONE).to_string());
        // Announced with their values: nothing left to replay.
        assert!(l2.outbox.is_empty(), "{} queued", l2.outbox.len());
    }

    /// The write queue holds at most `QUEUE_BYTES` of entries, however many
    /// jobs its channel takes: an entry that fills it to the byte is taken,
    /// the next is dropped and counted. Enqueued without an `.await` on a
    /// current-thread runtime, so the writer sends nothing meanwhile (and no
    /// Redis is needed).
    #[tokio::test]
    async fn the_write_queue_holds_at_most_its_byte_budget() {
        static BODY: [u8; 2 << 20] = [b'x'; 2 << 20];
        let now = SystemClock.now_millis();
        let small = entry("big", now);
        let with_body = |n: usize| {
            Arc::new(Entry {
                body: Bytes::from_static(&BODY[..n]),
                ..(*small).clone()
            })
        };
        // The entry that weighs exactly `w` (the weight grows with the
        // body's length).
        let weighing = |w: u64| {
            let (mut lo, mut hi) = (0, BODY.len());
            while lo < hi {
                let mid = (lo + hi).div_ceil(2);
                if with_body(mid).weight() <= w {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            let e = with_body(lo);
            assert_eq!(e.weight(), w, "no body length gives a weight of {w}");
            e
        };
        let l2 = Arc::new(l2_with(
            "redis://127.0.0.1:1/".into(),
            L2Config {
                write_queue: 1_000,
                ..config()
            },
        ));
        l2.subscriber_started.store(true, Ordering::Release);
        let big = with_body(1 << 20);
        let size = big.weight();
        let fit = QUEUE_BYTES / size;
        // An odd count, so that what is left has the entries' granularity.
        let fit = fit - 1 + fit % 2;
        for i in 0..fit {
            l2.enqueue(KeyHash(u128::from(i)), &big, &HeaderMap::new(), now);
        }
        let last = weighing(QUEUE_BYTES - fit * size);
        l2.enqueue(KeyHash(1_000_000), &last, &HeaderMap::new(), now);
        assert_eq!(l2.counters.writes_dropped.get(), 0);
        assert_eq!(l2.queued_bytes.load(Ordering::Acquire), QUEUE_BYTES);
        l2.enqueue(KeyHash(1_000_001), &small, &HeaderMap::new(), now);
        assert_eq!(l2.counters.writes_dropped.get(), 1);
        assert_eq!(l2.pending_writes(), fit + 1);
        assert_eq!(l2.queued_bytes.load(Ordering::Acquire), QUEUE_BYTES);
    }

    /// A key is "being deleted" (its L2 value is a miss, before and after
    /// a read: `Tiers::lookup_l2`) while its own `DEL` is under way, while
    /// an invalidation covering it waits in the outbox, and while a tag,
    /// prefix or clear invalidation is replayed; and not otherwise.
    #[test]
    fn a_key_is_being_deleted_while_any_invalidation_covering_it_is_under_way() {
        let l2 = l2("redis://127.0.0.1:1/".into());
        let (k, other) = (KeyHash(1), KeyHash(2));
        assert!(!l2.deleting(k));
        l2.begin_delete(k);
        assert!(l2.deleting(k) && !l2.deleting(other));
        l2.end_delete(k);
        assert!(!l2.deleting(k));
        l2.broad_replays.fetch_add(1, Ordering::AcqRel);
        assert!(l2.deleting(k) && l2.deleting(other));
        l2.broad_replays.fetch_sub(1, Ordering::AcqRel);
        assert!(!l2.deleting(k));
        l2.queue(Pending::Key(k));
        assert!(l2.deleting(k) && !l2.deleting(other));
    }

    /// What an L2 read found may be copied into L1 unless an invalidation
    /// that covers its key arrived after the read began: of that key, or a
    /// clear; an invalidation of another key, or one before the read,
    /// does not stop it.
    #[test]
    fn a_read_is_promoted_unless_an_invalidation_of_its_key_came_after_it_began() {
        let l2 = l2("redis://127.0.0.1:1/".into());
        let (k, other) = (KeyHash(1), KeyHash(2));
        let before = l2.generation();
        l2.note_invalidated(k);
        let after = l2.generation();
        assert!(!l2.may_promote(k, before));
        assert!(l2.may_promote(other, before));
        assert!(l2.may_promote(k, after));
        l2.order.invalidate(Scope::All);
        assert!(!l2.may_promote(other, after));
        assert!(l2.may_promote(other, l2.generation()));
    }

    /// Queued writes go out in pipelines of at most `BATCH_BYTES` of
    /// entries: ten of a little over 1 MiB take four (seen here as four
    /// failed sends to a dead server, where one pipeline of them all would
    /// be one).
    #[tokio::test]
    async fn queued_writes_are_sent_in_pipelines_of_at_most_batch_bytes() {
        static BODY: [u8; 1 << 20] = [b'x'; 1 << 20];
        let l2 = Arc::new(l2_with(
            "redis://127.0.0.1:1/".into(),
            L2Config {
                write_queue: 100,
                breaker_failures: 100,
                ..config()
            },
        ));
        l2.subscriber_started.store(true, Ordering::Release);
        let now = SystemClock.now_millis();
        let big = Arc::new(Entry {
            body: Bytes::from_static(&BODY),
            ..(*entry("big", now)).clone()
        });
        assert!(big.weight() > 1 << 20 && 4 * big.weight() > BATCH_BYTES);
        // Queued at once (no `.await` in between): one batch for the writer.
        for i in 0..10 {
            l2.enqueue(KeyHash(i), &big, &HeaderMap::new(), now);
        }
        settled(&l2, 10).await;
        assert_eq!(l2.counters.writes_dropped.get(), 10);
        let per_batch = BATCH_BYTES / big.weight();
        let sends = l2.counters.errors.get() + l2.counters.timeouts.get();
        assert_eq!(sends, 10u64.div_ceil(per_batch), "{per_batch} a batch");
    }

    #[tokio::test]
    async fn batch_operations_against_a_dead_server_fail_fast() {
        let l2 = l2("redis://127.0.0.1:1/".into());
        let t = std::time::Instant::now();
        assert!(l2
            .get_many(&[KeyHash(1), KeyHash(2)])
            .await
            .iter()
            .all(Option::is_none));
        assert!(
            !l2.set_many(&[(KeyHash(1), entry("x", SystemClock.now_millis()))])
                .await
        );
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(l2.counters.errors.get() + l2.counters.timeouts.get() >= 1);
    }

    /// Writes `items` while Redis holds writes back for 400 ms (`CLIENT
    /// PAUSE … WRITE`), with a 100 ms timeout: whether they landed.
    async fn written_through_a_pause(items: &[(KeyHash, Arc<Entry>)]) -> bool {
        redis_support::require_redis();
        let server = redis_support::RedisServer::start();
        let cfg = L2Config {
            timeout: Duration::from_millis(100),
            compress_over: None,
            ..config()
        };
        let l2 = l2_with(server.url(), cfg);
        // Connected before the pause.
        let now = SystemClock.now_millis();
        let first = [(KeyHash(u128::MAX), entry("first", now))];
        assert!(l2.set_many(&first).await);
        let paused = server.cli(&["CLIENT", "PAUSE", "400", "WRITE"]);
        assert!(paused.text().contains("OK"), "{paused:?}");
        l2.set_many(items).await
    }

    /// A write's deadline grows with the size of its values, on top of the
    /// timeout (1 ms per 64 KiB): 48 MiB of values, in 8 commands (fewer
    /// than 16: no allowance for their number), are given about 770 ms
    /// more, and land although Redis held them back for 400 ms.
    #[tokio::test]
    async fn a_batch_of_large_values_is_given_time_for_their_size() {
        let now = SystemClock.now_millis();
        let items: Vec<(KeyHash, Arc<Entry>)> = (0..8)
            .map(|i| {
                let mut e = Arc::unwrap_or_clone(entry(&format!("large {i}"), now));
                e.body = Bytes::from(vec![b'a' + i as u8; 6 << 20]);
                e.tags = Box::new([]);
                (KeyHash(i), Arc::new(e))
            })
            .collect();
        assert!(written_through_a_pause(&items).await, "timed out");
    }

    /// A write's deadline grows with the number of its commands, on top of
    /// the timeout (1 ms per 16): 16,000 small values are given about 1 s
    /// more, and land although Redis held them back for 400 ms.
    #[tokio::test]
    async fn a_batch_of_many_values_is_given_time_for_their_number() {
        let now = SystemClock.now_millis();
        let items: Vec<(KeyHash, Arc<Entry>)> = (0..16_000)
            .map(|i| (KeyHash(i), entry(&format!("small {i}"), now)))
            .collect();
        assert!(written_through_a_pause(&items).await, "timed out");
    }

    /// An L2 deadline is this runtime's time: a timer that fires on time
    /// ends the operation at the deadline (paused clock: exactly), one that
    /// fires late by more than the deadline (the only thread was blocked)
    /// gives the operation one more deadline, and its answer, arriving
    /// just after the thread is free again, is taken.
    #[test]
    fn a_deadline_that_fires_late_by_more_than_itself_is_widened_once() {
        let deadline = Duration::from_millis(100);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let started = tokio::time::Instant::now();
            let never = std::future::pending::<()>();
            assert_eq!(L2::within(deadline, never).await, None);
            assert_eq!(started.elapsed(), deadline, "on time: not widened");
            assert_eq!(L2::within(deadline, async { 7 }).await, Some(7));
        });

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // Never answers: widened or not, it ends.
            let never = std::future::pending::<()>();
            assert_eq!(L2::within(deadline, never).await, None);

            let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
            let (free_tx, free_rx) = std::sync::mpsc::channel::<()>();
            let answer = std::thread::spawn(move || {
                free_rx.recv().unwrap();
                std::thread::sleep(Duration::from_millis(10));
                let _ = tx.send(42);
            });
            // Blocks the runtime's only thread for four deadlines once
            // `within` has armed its timer.
            let hog = tokio::spawn(async move {
                std::thread::sleep(4 * deadline);
                free_tx.send(()).unwrap();
            });
            let got = L2::within(deadline, rx).await;
            hog.await.unwrap();
            answer.join().unwrap();
            assert_eq!(got, Some(Ok(42)), "late timer: one more deadline");
        });
    }

    /// Every L2 read's future is part of its request's future (boxed
    /// once per miss and per L2 hit, moved as it is built): the operation
    /// is held once, not once per layer of `async fn` (it was 1 944 bytes
    /// for a `GET`, three copies of the 536-byte query).
    #[tokio::test]
    async fn an_l2_read_future_holds_its_operation_once() {
        let l2 = l2("redis://127.0.0.1:1/".into());
        let cmd = redis::Cmd::get("k");
        let query = std::mem::size_of_val(&l2.store.query(&cmd));
        let guarded = std::mem::size_of_val(&l2.guarded(Duration::ZERO, l2.store.query(&cmd)));
        let sleep = std::mem::size_of::<tokio::time::Sleep>();
        assert!(
            guarded <= query + sleep + 64,
            "guarded GET: {guarded} bytes for a {query}-byte query and a {sleep}-byte timer"
        );
        let get = std::mem::size_of_val(&l2.get_key("k"));
        assert!(
            get <= guarded + 256,
            "get_key: {get} bytes, its guarded query {guarded}"
        );
    }

    #[test]
    fn redis_keys_are_namespace_format_and_hash() {
        let l2 = l2("redis://127.0.0.1:1/".into());
        let k = KeyHash(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(l2.redis_key(k), format!("batch:{FORMAT_VERSION}:{{{k}}}"));
        assert_eq!(
            l2.redis_key(KeyHash(1)),
            format!("batch:{FORMAT_VERSION}:{{{:032x}}}", 1)
        );
    }

    /// A variant is sealed for its key without the marker's generation
    /// (which `VARIANT_SCRIPT` picks after the value was sealed); any other
    /// key is its own context.
    #[cfg(feature = "l2-encryption")]
    #[test]
    fn a_variant_is_sealed_for_its_key_without_the_generation() {
        let l2 = l2("redis://127.0.0.1:1/".into());
        let k = KeyHash(0xabc);
        let names = [HeaderName::from_static("accept-language")];
        let mut h = HeaderMap::new();
        h.insert("accept-language", http::HeaderValue::from_static("fr"));
        let expected = format!("{}:{:032x}", l2.redis_key(k), variant_hash(k, &names, &h).0);
        for generation in [0, 7, u64::MAX] {
            let key = l2.variant_redis_key(k, generation, &names, &h);
            assert_eq!(context_of(&key), expected, "{key}");
        }
        for other in [l2.redis_key(k), l2.variant_index_key(k), expected.clone()] {
            assert_eq!(context_of(&other), other);
        }
    }

    /// Waits (bounded) until `f` holds.
    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let start = std::time::Instant::now();
        while !f() {
            assert!(start.elapsed() < Duration::from_secs(10), "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn exists(server: &redis_support::RedisServer, key: &str) -> bool {
        server.cli(&["EXISTS", key]).text().trim() == "1"
    }

    #[tokio::test]
    async fn a_lease_is_taken_once_and_released_by_its_holder_only() {
        use crate::store::lease::{lease_key, Ending, Take};
        redis_support::require_redis();
        let server = redis_support::RedisServer::start();
        let l2 = Arc::new(l2(server.url()));
        let ttl = Duration::from_secs(30);
        let key = KeyHash(41);
        let name = lease_key("batch", key);
        let Take::Taken(lease) = l2.take_lease(key, ttl).await else {
            panic!("the first take")
        };
        assert!(matches!(l2.take_lease(key, ttl).await, Take::Held));
        let pttl: u64 = server.cli(&["PTTL", &name]).text().trim().parse().unwrap();
        assert!(pttl > 25_000 && pttl <= 30_000, "{pttl}");
        // The lease expired and another holder took it: the old holder's
        // release leaves the new one's alone.
        assert!(server.cli(&["SET", &name, "someone-else"]).success());
        lease.end(Ending::Quiet);
        let Take::Taken(probe) = l2.take_lease(KeyHash(42), ttl).await else {
            panic!("another key")
        };
        // The release ran (a later command on the same connection answered).
        probe.end(Ending::Quiet);
        until("the other key released", || {
            !exists(&server, &lease_key("batch", KeyHash(42)))
        })
        .await;
        assert_eq!(server.cli(&["GET", &name]).text().trim(), "someone-else");
        assert_eq!(l2.leases.len(), 0, "nothing registered any more");
    }

    #[tokio::test]
    async fn a_stored_lease_is_released_only_once_its_write_landed() {
        use crate::store::lease::{lease_key, Ending, Take};
        redis_support::require_redis();
        let server = redis_support::RedisServer::start();
        let l2 = Arc::new(l2(server.url()));
        let ttl = Duration::from_secs(30);
        // A write queued and not yet landed holds the lease.
        let key = KeyHash(51);
        let Take::Taken(lease) = l2.take_lease(key, ttl).await else {
            panic!("taken")
        };
        let landed = l2.leases.take_landing(key).expect("the holder's landing");
        lease.end(Ending::Stored);
        for _ in 0..30 {
            assert!(
                exists(&server, &lease_key("batch", key)),
                "released before the write landed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        landed.send(true).unwrap();
        until("released once landed", || {
            !exists(&server, &lease_key("batch", key))
        })
        .await;

        // A real write: once the lease is gone, the entry is in Redis.
        let key = KeyHash(52);
        let Take::Taken(lease) = l2.take_lease(key, ttl).await else {
            panic!("taken")
        };
        l2.enqueue(
            key,
            &entry("v", SystemClock.now_millis()),
            &HeaderMap::new(),
            SystemClock.now_millis(),
        );
        lease.end(Ending::Stored);
        until("released", || !exists(&server, &lease_key("batch", key))).await;
        assert!(
            exists(&server, &l2.redis_key(key)),
            "the entry landed first"
        );

        // Nothing written: released at once, with word of the failure.
        let key = KeyHash(53);
        let Take::Taken(lease) = l2.take_lease(key, ttl).await else {
            panic!("taken")
        };
        lease.end(Ending::Stored);
        until("released", || !exists(&server, &lease_key("batch", key))).await;
        let log = server.cli(&["XREVRANGE", "{batch}:inv", "+", "-", "COUNT", "1"]);
        assert!(
            log.text().contains(&format!("fill {key} failed")),
            "{log:?}"
        );
        assert_eq!(l2.leases.len(), 0);
    }

    #[tokio::test]
    async fn a_holders_word_reaches_the_instances_waiting_on_the_key() {
        use crate::store::lease::{Ending, News, Take};
        redis_support::require_redis();
        let server = redis_support::RedisServer::start();
        let (a, b) = (Arc::new(l2(server.url())), Arc::new(l2(server.url())));
        b.ensure_subscriber();
        until("b follows the log", || b.subscribed()).await;
        let ttl = Duration::from_secs(30);
        for (key, ending, heard) in [
            (KeyHash(61), Ending::Announce(News::Pass), News::Pass),
            (KeyHash(62), Ending::Announce(News::Failed), News::Failed),
        ] {
            let mut watch = b.leases.watch(key).unwrap();
            let Take::Taken(lease) = a.take_lease(key, ttl).await else {
                panic!("taken")
            };
            assert!(matches!(b.take_lease(key, ttl).await, Take::Held));
            lease.end(ending);
            let news = tokio::time::timeout(Duration::from_secs(10), watch.changed()).await;
            assert_eq!(news.expect("heard"), heard);
        }
        // A write of a key waited on wakes its waiter too.
        let key = KeyHash(63);
        let mut watch = b.leases.watch(key).unwrap();
        let now = SystemClock.now_millis();
        a.enqueue(key, &entry("w", now), &HeaderMap::new(), now);
        let news = tokio::time::timeout(Duration::from_secs(10), watch.changed()).await;
        assert_eq!(news.expect("heard"), News::Stored);
        // Lease news is no invalidation.
        assert_eq!(b.counters.messages_received.get(), 1, "only the write's");
    }

    #[test]
    fn messages_round_trip() {
        for msg in [
            Message::Key(KeyHash(0xdead_beef_u128 << 64 | 7)),
            Message::Tag("product-42".into()),
            Message::Prefix("/api/odds".into()),
            Message::Clear,
            Message::Fill(KeyHash(5), News::Pass),
            Message::Fill(KeyHash(u128::MAX), News::Failed),
        ] {
            assert_eq!(Message::decode(&msg.encode(99)), Some((99, msg)));
        }
        assert_eq!(Message::decode("zz key 1"), None);
        assert_eq!(Message::decode("01 nope"), None);
        assert_eq!(Message::decode("01 key not-hex"), None);
        assert_eq!(Message::decode("01 fill 5"), None);
        assert_eq!(Message::decode("01 fill 5 maybe"), None);
    }
}

/// The fields of an `INFO memory keyspace` reply this cache reports.
pub(crate) fn parse_info(text: &str) -> crate::stats::RedisInfo {
    let mut out = crate::stats::RedisInfo::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("used_memory:") {
            out.used_memory = v.parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("maxmemory:") {
            out.maxmemory = v.parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("db0:") {
            // db0:keys=12,expires=12,avg_ttl=0
            out.keys = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("keys="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        }
    }
    out
}

#[cfg(test)]
mod info_tests {
    #[test]
    fn info_fields() {
        let text = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:0\r\n\r\n# Keyspace\r\ndb0:keys=12,expires=11,avg_ttl=0\r\n";
        let i = super::parse_info(text);
        assert_eq!((i.used_memory, i.maxmemory, i.keys), (1_048_576, 0, 12));
    }
}
