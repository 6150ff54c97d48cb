//! Leases on keys in Redis: the mechanics of distributed single-flight
//! (`CacheBuilder::distributed_coalescing`).
//!
//! # The protocol
//!
//! A flight's leader that found nothing usable in L2 takes a lease on the
//! key before calling the origin: `SET {ns}:lease:{{hash}} TOKEN NX PX
//! ttl`, with a random token. The hash tag is the entry's, so the lease
//! lives in the entry's cluster slot.
//!
//! - **Taken**: the holder calls the origin. If the answer is stored, its
//!   L2 write (queued off the request path, as every write) announces the
//!   key on the invalidation log, as every overwrite does (`key` message);
//!   the holder waits for that write in the background ([`Landing`]) and
//!   only then releases the lease. So a lease gone means the entry is in
//!   L2, its holder failed, or its holder died. If nothing was stored (an
//!   answer that may not be shared, a failed call, a write that did not
//!   land) the holder releases the lease and announces why
//!   ([`News::Pass`], [`News::Failed`]) with a `fill` message.
//! - **Held by another instance**: the leader waits ([`Watch`]), woken by
//!   the other instance's `key` or `fill` message, or by a poll (taking the
//!   lease again, so that the first waiter to find it gone holds it); it
//!   answers from L2, calls alone after a pass, or calls holding the lease
//!   it took after a failure or after the holder's lease expired.
//!
//! Release is one script, compare-and-delete ([`RELEASE_SCRIPT`]): a
//! holder whose lease expired and was taken by another never deletes the
//! new holder's.
//!
//! # The `fill` messages and the log's length
//!
//! A stored answer adds nothing to the invalidation log: the write's own
//! overwrite announcement wakes the waiters. A lease that ends without an
//! entry adds one `fill` message, where a store would have added one
//! `key` message: with leases on, the log sees at most one entry per
//! origin call, as before, and fewer in all (one instance calls where
//! every instance did). Other instances' readers skip `fill` messages
//! (they are no invalidation: nothing is removed, nothing is counted), and
//! a lagging reader catching up on old ones wakes nobody.
//!
//! # Bounds
//!
//! The keys this instance waits on or holds a lease on at once are at most
//! [`MAX_LEASED_KEYS`]; beyond, a flight coalesces locally, as without leases.
//! Every registration is a guard removed when dropped, whatever path the
//! request takes (answered, failed, cancelled).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::Value;
use tokio::sync::{oneshot, watch};

use crate::key::KeyHash;
use crate::store::l2::L2;
use crate::sync::lock;

/// Deletes the lease `KEYS[1]` if it still holds this holder's token
/// `ARGV[1]`: 1 if it did, 0 if it had expired (or was taken by another).
pub(crate) const RELEASE_SCRIPT: &str = "\
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// The most keys an instance waits on or holds leases on at once (beyond,
/// flights coalesce locally).
pub(crate) const MAX_LEASED_KEYS: usize = 4096;

/// What a waiter heard about a key another instance holds the lease on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum News {
    /// Nothing yet.
    None,
    /// An entry for the key was written to L2 (an overwrite announcement).
    Stored,
    /// The holder's answer may not be shared: each instance calls alone.
    Pass,
    /// The holder failed, or its entry did not reach L2: the lease is
    /// free again.
    Failed,
}

impl News {
    /// The word a `fill` message carries.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            News::Pass => "pass",
            News::Failed => "failed",
            News::Stored => "stored",
            News::None => "none",
        }
    }

    /// The news a `fill` message's word names.
    pub(crate) fn parse(word: &str) -> Option<News> {
        match word {
            "pass" => Some(News::Pass),
            "failed" => Some(News::Failed),
            "stored" => Some(News::Stored),
            _ => None,
        }
    }
}

/// The keys this instance waits on (other instances hold their leases)
/// and the leases it holds whose entries are being written: bounded, each
/// registration removed by its guard's `Drop`.
#[derive(Debug)]
pub(crate) struct Leases {
    /// Keys waited on, each with the news heard of it.
    waiting: Mutex<HashMap<KeyHash, Arc<watch::Sender<News>>>>,
    /// Leases held here, each with where the outcome of its entry's L2
    /// write goes (and the registration's number).
    landing: Mutex<HashMap<KeyHash, (u64, oneshot::Sender<bool>)>>,
    /// Both maps' sizes together, read without a lock by every message
    /// received and every L2 write queued.
    len: AtomicUsize,
    /// Numbers tokens and registrations.
    next: AtomicU64,
    /// A random seed for tokens (per process and tier).
    seed: u64,
    /// The most keys in both maps together.
    max: usize,
}

impl Leases {
    /// An empty registry of at most `max` keys.
    pub(crate) fn new(max: usize) -> Self {
        Self {
            waiting: Mutex::default(),
            landing: Mutex::default(),
            len: AtomicUsize::new(0),
            next: AtomicU64::new(0),
            seed: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
            max,
        }
    }

    /// Keys waited on or held now.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// A token no other holder (of any instance) uses: 128 bits from a
    /// random seed, this tier's number and a count.
    fn token(&self, instance: u64) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let hi = xxhash_rust::xxh3::xxh3_64_with_seed(&n.to_le_bytes(), self.seed);
        let lo = xxhash_rust::xxh3::xxh3_64_with_seed(&instance.to_le_bytes(), self.seed ^ n);
        format!("{hi:016x}{lo:016x}")
    }

    /// Starts waiting on `key`: news of it reaches the returned guard
    /// (shared with any other waiter on it here). `None` at the bound.
    pub(crate) fn watch(self: &Arc<Self>, key: KeyHash) -> Option<Watch> {
        let mut map = lock(&self.waiting);
        let sender = match map.get(&key) {
            Some(s) => Arc::clone(s),
            None => {
                if !self.reserve() {
                    return None;
                }
                let s = Arc::new(watch::channel(News::None).0);
                map.insert(key, Arc::clone(&s));
                s
            }
        };
        let rx = sender.subscribe();
        Some(Watch {
            leases: Arc::clone(self),
            key,
            sender,
            rx,
        })
    }

    /// Takes one of the `max` places; false when all are taken.
    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn release_place(&self) {
        self.len.fetch_sub(1, Ordering::AcqRel);
    }

    /// News of `key` from another instance: wakes whoever waits on it
    /// here (one load when nobody waits on anything).
    pub(crate) fn hear(&self, key: KeyHash, news: News) {
        if self.len() == 0 {
            return;
        }
        if let Some(s) = lock(&self.waiting).get(&key) {
            s.send_replace(news);
        }
    }

    /// Registers a lease held on `key`: the outcome of the next L2 write of
    /// the key queued here reaches the returned guard. `None` at the bound.
    fn expect_write(self: &Arc<Self>, key: KeyHash) -> Option<Landing> {
        if !self.reserve() {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if lock(&self.landing).insert(key, (id, tx)).is_some() {
            // Another registration of the key was replaced (its guard now
            // hears nothing): one place for the key.
            self.release_place();
        }
        Some(Landing {
            leases: Arc::downgrade(self),
            key,
            id,
            rx: Some(rx),
        })
    }

    /// Where the outcome of an L2 write of `key` goes, if a lease held here
    /// waits for it (one load when none does). Taken by the write queued.
    pub(crate) fn take_landing(&self, key: KeyHash) -> Option<oneshot::Sender<bool>> {
        if self.len() == 0 {
            return None;
        }
        let (_, tx) = lock(&self.landing).remove(&key)?;
        self.release_place();
        Some(tx)
    }
}

/// A waiter's registration on a key: news of it arrive here. Dropped, the
/// key is no longer waited on (unless another waiter here shares it).
#[derive(Debug)]
pub(crate) struct Watch {
    leases: Arc<Leases>,
    key: KeyHash,
    sender: Arc<watch::Sender<News>>,
    rx: watch::Receiver<News>,
}

impl Watch {
    /// The next news of the key (waits for it).
    pub(crate) async fn changed(&mut self) -> News {
        // The sender lives as long as this guard: `changed` never fails.
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        *self.rx.borrow_and_update()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut map = lock(&self.leases.waiting);
        // The map holds one reference and this guard one: the last waiter.
        let last = map
            .get(&self.key)
            .is_some_and(|s| Arc::ptr_eq(s, &self.sender) && Arc::strong_count(s) == 2);
        if last {
            map.remove(&self.key);
            self.leases.release_place();
        }
    }
}

/// A holder's registration for its entry's L2 write: whether it landed.
/// Dropped, the registration is removed (if the write never took it).
#[derive(Debug)]
pub(crate) struct Landing {
    leases: Weak<Leases>,
    key: KeyHash,
    id: u64,
    rx: Option<oneshot::Receiver<bool>>,
}

impl Landing {
    /// Whether a write of the key was queued since the registration (it
    /// took the registration's sender).
    fn queued(&self) -> bool {
        let Some(leases) = self.leases.upgrade() else {
            return false;
        };
        let map = lock(&leases.landing);
        map.get(&self.key).is_none_or(|(id, _)| *id != self.id)
    }

    /// Whether the write landed (and was announced), within `limit`;
    /// false when it was dropped, failed, or never queued.
    async fn landed(&mut self, limit: Duration) -> bool {
        let Some(rx) = self.rx.take() else {
            return false;
        };
        matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(true)))
    }
}

impl Drop for Landing {
    fn drop(&mut self) {
        let Some(leases) = self.leases.upgrade() else {
            return;
        };
        let mut map = lock(&leases.landing);
        if map.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&self.key);
            leases.release_place();
        }
    }
}

/// What trying to take a lease came to.
#[derive(Debug)]
pub(crate) enum Take {
    /// This instance holds it.
    Taken(Lease),
    /// Another holder has it.
    Held,
    /// Redis did not answer in time (or the L2 breaker is open, or the
    /// bound on keys is reached): coalesce locally.
    Unavailable,
}

/// A lease this instance holds on a key. End it with [`Lease::end`];
/// dropped without (a cancelled request), it is released in the background
/// with [`News::Failed`], so waiters elsewhere take over at once.
#[derive(Debug)]
pub(crate) struct Lease {
    l2: Weak<L2>,
    key: KeyHash,
    token: String,
    ttl: Duration,
    landing: Option<Landing>,
    ended: bool,
}

/// How a lease's flight ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// An entry was stored: release once its L2 write landed (announced by
    /// the write itself); if it does not land, release with
    /// [`News::Failed`].
    Stored,
    /// Nothing to announce (the entry was already in L2).
    Quiet,
    /// Nothing stored: release and announce it.
    Announce(News),
}

impl Lease {
    /// Ends the lease as `ending` says, in the background (never on the
    /// request's path).
    pub(crate) fn end(mut self, ending: Ending) {
        self.ended = true;
        let (l2, key, token, ttl) = (self.l2.clone(), self.key, self.token.clone(), self.ttl);
        let landing = self.landing.take();
        spawn(async move {
            let news = match (ending, landing) {
                // Waited for without keeping the tier alive; no write
                // queued (nothing new reached a tier) is a failure at once.
                (Ending::Stored, Some(mut landing)) if landing.queued() => {
                    (!landing.landed(ttl).await).then_some(News::Failed)
                }
                (Ending::Stored, _) => Some(News::Failed),
                (Ending::Quiet, _) => None,
                (Ending::Announce(news), _) => Some(news),
            };
            if let Some(l2) = l2.upgrade() {
                l2.release_lease(key, &token, news).await;
            }
        });
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let (l2, key, token) = (self.l2.clone(), self.key, std::mem::take(&mut self.token));
        spawn(async move {
            if let Some(l2) = l2.upgrade() {
                l2.release_lease(key, &token, Some(News::Failed)).await;
            }
        });
    }
}

/// Runs `fut` on the current runtime, if there is one (a lease is only
/// taken on one; a runtime shutting down drops it, as a dead process
/// would: the lease then expires).
fn spawn(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(fut);
    }
}

/// The lease key of `key` in namespace `ns`: `{ns}:lease:{{hash}}`, with
/// the entry's hash tag (its cluster slot).
pub(crate) fn lease_key(ns: &str, key: KeyHash) -> String {
    format!("{ns}:lease:{{{key}}}")
}

impl L2 {
    /// Tries to take the lease on `key` for `ttl`: `SET … NX PX`, under
    /// the L2 timeout and breaker.
    pub(crate) async fn take_lease(self: &Arc<Self>, key: KeyHash, ttl: Duration) -> Take {
        let Some(landing) = self.leases.expect_write(key) else {
            return Take::Unavailable;
        };
        let token = self.leases.token(self.instance());
        let mut set = redis::cmd("SET");
        set.arg(lease_key(self.namespace(), key))
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64);
        match self.run(vec![set]).await.as_deref() {
            Some([Value::Okay]) => {}
            Some([Value::SimpleString(s)]) if s == "OK" => {}
            Some([Value::Nil]) => return Take::Held,
            _ => {
                // No answer in time: the `SET` may still land (a reply read
                // late on a busy host), leaving a lease no one holds that
                // every instance, this one included, would wait out. Its
                // release goes after it on the same connection and deletes
                // it only if it is still this token's.
                if tokio::runtime::Handle::try_current().is_ok() {
                    let l2 = Arc::clone(self);
                    tokio::spawn(async move { l2.release_lease(key, &token, None).await });
                }
                return Take::Unavailable;
            }
        }
        Take::Taken(Lease {
            l2: Arc::downgrade(self),
            key,
            token,
            ttl,
            landing: Some(landing),
            ended: false,
        })
    }

    /// Deletes this holder's lease on `key` (if it is still its own) and,
    /// with `news`, tells the other instances: one pipeline on one node.
    async fn release_lease(&self, key: KeyHash, token: &str, news: Option<News>) {
        let mut release = redis::cmd("EVAL");
        release
            .arg(RELEASE_SCRIPT)
            .arg(1)
            .arg(lease_key(self.namespace(), key))
            .arg(token);
        let mut cmds = vec![release];
        if let Some(news) = news {
            cmds.extend(self.fill_announcement(key, news));
        }
        let _ = self.run(cmds).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_key_shares_the_entry_hash_tag() {
        let k = KeyHash(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let lease = lease_key("ns", k);
        assert_eq!(lease, format!("ns:lease:{{{k:}}}"));
        assert!(lease.ends_with(&format!("{{{:032x}}}", k.0)));
    }

    #[test]
    fn news_words_round_trip() {
        for n in [News::Pass, News::Failed, News::Stored] {
            assert_eq!(News::parse(n.as_str()), Some(n));
        }
        assert_eq!(News::parse("none"), None);
        assert_eq!(News::parse(""), None);
    }

    #[test]
    fn tokens_differ() {
        let leases = Leases::new(4);
        let a = leases.token(1);
        assert_eq!(a.len(), 32);
        assert_ne!(a, leases.token(1));
        assert_ne!(a, Leases::new(4).token(1));
    }

    #[tokio::test]
    async fn waiters_hear_news_and_are_removed_on_every_path() {
        let leases = Arc::new(Leases::new(2));
        let mut a = leases.watch(KeyHash(1)).unwrap();
        let b = leases.watch(KeyHash(1)).unwrap();
        assert_eq!(leases.len(), 1, "one place per key");
        leases.hear(KeyHash(1), News::Stored);
        leases.hear(KeyHash(2), News::Stored);
        assert_eq!(a.changed().await, News::Stored);
        drop(b);
        assert_eq!(leases.len(), 1, "a still waits");
        // A waiting future dropped (a cancelled request) removes it too.
        let waiting = tokio::spawn(async move { a.changed().await });
        tokio::task::yield_now().await;
        waiting.abort();
        assert!(waiting.await.unwrap_err().is_cancelled());
        assert_eq!(leases.len(), 0);
        assert!(lock(&leases.waiting).is_empty());
    }

    #[test]
    fn the_registry_is_bounded() {
        let leases = Arc::new(Leases::new(2));
        let a = leases.watch(KeyHash(1)).unwrap();
        let landing = leases.expect_write(KeyHash(2)).unwrap();
        assert!(leases.watch(KeyHash(3)).is_none(), "full");
        assert!(leases.expect_write(KeyHash(3)).is_none(), "full");
        drop(a);
        let c = leases.watch(KeyHash(3)).unwrap();
        // A write of the key takes the landing's place.
        assert!(leases.take_landing(KeyHash(2)).is_some());
        assert_eq!(leases.len(), 1);
        drop(landing);
        assert_eq!(leases.len(), 1, "taken already: nothing more to free");
        drop(c);
        assert_eq!(leases.len(), 0);
    }

    #[tokio::test]
    async fn a_landing_hears_the_write() {
        let leases = Arc::new(Leases::new(4));
        let mut ok = leases.expect_write(KeyHash(1)).unwrap();
        leases.take_landing(KeyHash(1)).unwrap().send(true).unwrap();
        assert!(ok.landed(Duration::from_secs(5)).await);
        // A write dropped (its sender with it) did not land.
        let mut dropped = leases.expect_write(KeyHash(2)).unwrap();
        drop(leases.take_landing(KeyHash(2)));
        assert!(!dropped.landed(Duration::from_secs(5)).await);
        // No write at all: not landed, within the limit.
        let mut none = leases.expect_write(KeyHash(3)).unwrap();
        assert!(!none.landed(Duration::from_millis(10)).await);
        drop(none);
        assert_eq!(leases.len(), 0);
    }
}
