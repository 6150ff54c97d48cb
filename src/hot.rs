//! The parts of background warming that know nothing of HTTP or of the
//! engine: [`HotKeys`], a fixed-size tracker of the most-read keys, and
//! [`PrefetchQueue`], a bounded, deduplicated queue of keys to warm. Both
//! carry an opaque payload `T` per key (what the face that uses them needs
//! to reach the origin again: a request for HTTP entries).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use quick_cache::sync::Cache as QuickCache;

use crate::key::KeyHash;
use crate::sync::{lock, try_lock};

/// Shards of the tracker: a read takes one shard's lock, and only when it
/// is free (a contended shard skips the sample).
const SHARDS: usize = 16;
/// Slots per bucket: a key may live in any of its bucket's ways.
const WAYS: usize = 4;
/// Slots kept for each key the tracker is asked to report: room for keys
/// on their way up and for uneven shards.
pub(crate) const SLOTS_PER_TOP_KEY: usize = 4;
/// The fewest slots a tracker has, whatever it reports.
const MIN_SLOTS: usize = SHARDS * WAYS * 4;

/// One tracked key: its (decayed) read count and its payload, asked for
/// once the key has been seen twice.
struct Slot<T> {
    key: KeyHash,
    /// 0: the slot is free.
    count: u32,
    payload: Option<T>,
    /// The payload was asked for (a key whose payload could not be made is
    /// not asked again while it stays).
    asked: bool,
}

impl<T> Slot<T> {
    fn empty() -> Self {
        Self {
            key: KeyHash(0),
            count: 0,
            payload: None,
            asked: false,
        }
    }

    fn take(&mut self, key: KeyHash) {
        *self = Self {
            key,
            count: 1,
            payload: None,
            asked: false,
        };
    }
}

/// The most-read keys over a window, in memory fixed when it is made
/// whatever the number of distinct keys (a heavy-hitters sketch in the
/// manner of HeavyKeeper).
///
/// A read is sampled one in `sample` per thread (on average:
/// `sample::one_in`); a sampled read locks the
/// key's shard only if it is free (no wait, no allocation) and looks at
/// the `WAYS` slots of the key's bucket: the key's own is counted up, a
/// free one is taken, otherwise the least-read one is counted down and
/// taken once it reaches zero, so keys read rarely never displace keys
/// read often. The second time a key is seen its payload is made, once,
/// outside the lock. [`top`](Self::top) halves every count, so the ranking
/// weighs recent reads most.
pub(crate) struct HotKeys<T> {
    shards: Box<[Shard<T>]>,
    /// Buckets per shard.
    buckets: usize,
    sample: u32,
}

/// One lock's slots: its buckets one after the other.
type Shard<T> = Mutex<Box<[Slot<T>]>>;

thread_local! {
    /// This thread's reads left before its next sampled one.
    static LEFT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

impl<T: Clone> HotKeys<T> {
    /// A tracker able to report the `top` most-read keys, sampling one read
    /// in `sample` (at least 1).
    pub(crate) fn new(top: usize, sample: u32) -> Self {
        let slots = top.saturating_mul(SLOTS_PER_TOP_KEY).max(MIN_SLOTS);
        let buckets = slots.div_ceil(SHARDS * WAYS);
        let shards = (0..SHARDS)
            .map(|_| Mutex::new((0..buckets * WAYS).map(|_| Slot::empty()).collect()))
            .collect();
        Self {
            shards,
            buckets,
            sample: sample.max(1),
        }
    }

    /// How many keys the tracker holds at most.
    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        SHARDS * self.buckets * WAYS
    }

    /// Whether this read is one of the sampled ones.
    #[inline]
    fn sampled(&self) -> bool {
        crate::sample::one_in(&LEFT, self.sample)
    }

    /// The shard and the first slot of `key`'s bucket.
    fn place(&self, key: KeyHash) -> (usize, usize) {
        let shard = (key.0 as usize) % SHARDS;
        let bucket = ((key.0 >> 64) as usize) % self.buckets;
        (shard, bucket * WAYS)
    }

    /// Notes a read of `key`; `payload` is called (outside the lock) the
    /// first time the key is seen again while tracked, and its `None`
    /// (say, a request too large to keep) is not asked again.
    #[inline]
    pub(crate) fn note(&self, key: KeyHash, payload: impl FnOnce() -> Option<T>) {
        if !self.sampled() {
            return;
        }
        let (shard, first) = self.place(key);
        let wants = match try_lock(&self.shards[shard]) {
            Some(mut slots) => count_read(&mut slots[first..first + WAYS], key),
            None => return,
        };
        if !wants {
            return;
        }
        let Some(made) = payload() else { return };
        if let Some(mut slots) = try_lock(&self.shards[shard]) {
            let way = slots[first..first + WAYS]
                .iter_mut()
                .find(|s| s.count > 0 && s.key == key);
            if let Some(slot) = way {
                slot.payload = Some(made);
            }
        }
    }

    /// The `n` most-read keys that have a payload, most read first; every
    /// count is then halved (a key no longer read leaves within a few
    /// calls).
    pub(crate) fn top(&self, n: usize) -> Vec<(KeyHash, T)> {
        let mut found: Vec<(u32, KeyHash, T)> = Vec::new();
        for shard in self.shards.iter() {
            let mut slots = lock(shard);
            for slot in slots.iter_mut().filter(|s| s.count > 0) {
                if let Some(p) = &slot.payload {
                    found.push((slot.count, slot.key, p.clone()));
                }
                slot.count /= 2;
                if slot.count == 0 {
                    *slot = Slot::empty();
                }
            }
        }
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        found.truncate(n);
        found.into_iter().map(|(_, k, p)| (k, p)).collect()
    }
}

/// Counts a read of `key` in its bucket's `ways`; true when the key's
/// payload should now be made (its second sighting, asked once).
fn count_read<T>(ways: &mut [Slot<T>], key: KeyHash) -> bool {
    if let Some(slot) = ways.iter_mut().find(|s| s.count > 0 && s.key == key) {
        slot.count = slot.count.saturating_add(1);
        let wants = slot.count >= 2 && !slot.asked;
        slot.asked |= wants;
        return wants;
    }
    if let Some(free) = ways.iter_mut().find(|s| s.count == 0) {
        free.take(key);
        return false;
    }
    // Every way holds another key: the least read one loses a read, and
    // its slot once it has none left.
    if let Some(least) = ways.iter_mut().min_by_key(|s| s.count) {
        least.count -= 1;
        if least.count == 0 {
            least.take(key);
        }
    }
    false
}

/// The most keys a queue makes room for before any is queued.
const PREALLOCATED: usize = 1024;

/// What [`PrefetchQueue::push`] did with a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued for warming.
    Queued,
    /// Already queued or being warmed: not queued twice.
    Known,
    /// Its last warming failed a short while ago: left alone for now.
    Cooling,
    /// The queue is full: dropped.
    Full,
}

/// The keys waiting, and every key queued or being warmed (each once).
struct QueueState<T> {
    waiting: VecDeque<(KeyHash, T)>,
    pending: HashSet<KeyHash>,
}

/// A bounded queue of keys to warm, each key at most once in it or in
/// flight. A key whose warming failed is not queued again until a given
/// instant (bounded memory of them, the oldest forgotten first).
pub(crate) struct PrefetchQueue<T> {
    state: Mutex<QueueState<T>>,
    cap: usize,
    ready: tokio::sync::Notify,
    /// Keys whose warming failed, with the instant (ms) they may be queued
    /// again.
    cooling: QuickCache<KeyHash, u64>,
}

impl<T> PrefetchQueue<T> {
    /// A queue of at most `cap` waiting keys (at least 1), with
    /// `in_flight` more being warmed at most.
    pub(crate) fn new(cap: usize, in_flight: usize) -> Self {
        let cap = cap.max(1);
        Self {
            // Room for the usual case; a larger bound grows to it as used.
            state: Mutex::new(QueueState {
                waiting: VecDeque::with_capacity(cap.min(PREALLOCATED)),
                pending: HashSet::with_capacity(cap.saturating_add(in_flight).min(PREALLOCATED)),
            }),
            cap,
            ready: tokio::sync::Notify::new(),
            cooling: QuickCache::new(cap),
        }
    }

    /// Queues `key` at `now` (ms) unless it is known, cooling or the queue
    /// is full; `item` is made only when it is queued.
    pub(crate) fn push(&self, key: KeyHash, now: u64, item: impl FnOnce() -> T) -> Pushed {
        if self.cooling.get(&key).is_some_and(|until| now < until) {
            return Pushed::Cooling;
        }
        let mut state = lock(&self.state);
        if state.pending.contains(&key) {
            return Pushed::Known;
        }
        if state.waiting.len() >= self.cap {
            return Pushed::Full;
        }
        state.pending.insert(key);
        state.waiting.push_back((key, item()));
        drop(state);
        self.ready.notify_one();
        Pushed::Queued
    }

    /// Keys waiting now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.state).waiting.len()
    }

    /// Whether `key` is queued or being warmed.
    #[cfg(test)]
    fn is_pending(&self, key: KeyHash) -> bool {
        lock(&self.state).pending.contains(&key)
    }
}

impl<T: Send + 'static> PrefetchQueue<T> {
    /// The next key to warm, waiting for one; it stays known (not queued
    /// again) until its [`Claim`] is dropped.
    pub(crate) async fn next(self: &Arc<Self>) -> Claim<T> {
        loop {
            if let Some(claim) = self.pop() {
                return claim;
            }
            self.ready.notified().await;
        }
    }

    fn pop(self: &Arc<Self>) -> Option<Claim<T>> {
        let (key, item) = lock(&self.state).waiting.pop_front()?;
        Some(Claim {
            queue: Arc::clone(self),
            key,
            item: Some(item),
            retry_at: None,
        })
    }
}

/// A key taken from a [`PrefetchQueue`] to be warmed: known to the queue
/// until dropped (whatever ends the warming: done, failed, cancelled).
pub(crate) struct Claim<T> {
    queue: Arc<PrefetchQueue<T>>,
    key: KeyHash,
    item: Option<T>,
    retry_at: Option<u64>,
}

impl<T> Claim<T> {
    /// The key's payload (once).
    pub(crate) fn take(&mut self) -> Option<T> {
        self.item.take()
    }

    /// The warming failed: the key is not queued again before `at` (ms).
    pub(crate) fn failed(&mut self, at: u64) {
        self.retry_at = Some(at);
    }
}

impl<T> Drop for Claim<T> {
    fn drop(&mut self) {
        if let Some(at) = self.retry_at {
            self.queue.cooling.insert(self.key, at);
        }
        lock(&self.queue.state).pending.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: u128) -> KeyHash {
        // Spread over shards and buckets like real hashes.
        KeyHash(xxhash_rust::xxh3::xxh3_128(&n.to_le_bytes()))
    }

    #[test]
    fn the_most_read_keys_come_first_and_cold_keys_never_displace_them() {
        let hot = HotKeys::<u128>::new(2, 1);
        for round in 0..50u128 {
            for _ in 0..5 {
                hot.note(k(1), || Some(1));
            }
            for _ in 0..3 {
                hot.note(k(2), || Some(2));
            }
            // A stream of keys read once each, far more than the slots.
            for cold in 0..100 {
                hot.note(k(1_000 + round * 100 + cold), || Some(0));
            }
        }
        let top = hot.top(2);
        assert_eq!(top, vec![(k(1), 1), (k(2), 2)]);
    }

    #[test]
    fn memory_is_fixed_whatever_the_keys() {
        let hot = HotKeys::<u128>::new(10, 1);
        let slots = hot.slots();
        assert!(slots >= 10 * SLOTS_PER_TOP_KEY);
        for n in 0..100_000 {
            hot.note(k(n), || Some(n));
            hot.note(k(n), || Some(n));
        }
        assert_eq!(hot.slots(), slots);
        assert!(hot.top(usize::MAX).len() <= slots);
    }

    #[test]
    fn a_payload_is_made_once_on_the_second_sighting_and_refused_ones_are_not_asked_again() {
        let hot = HotKeys::<u128>::new(1, 1);
        let mut asked = 0;
        for _ in 0..10 {
            hot.note(k(7), || {
                asked += 1;
                None
            });
        }
        assert_eq!(asked, 1);
        // Without a payload a key is never reported.
        assert!(hot.top(1).is_empty());
    }

    #[test]
    fn top_halves_the_counts_so_old_reads_fade() {
        let hot = HotKeys::<u128>::new(1, 1);
        for _ in 0..8 {
            hot.note(k(1), || Some(1));
        }
        for _ in 0..3 {
            hot.note(k(2), || Some(2));
        }
        assert_eq!(hot.top(1), vec![(k(1), 1)]);
        // k(1) is no longer read: 4, 2, 1, gone; k(2) keeps being read.
        for _ in 0..3 {
            for _ in 0..3 {
                hot.note(k(2), || Some(2));
            }
            hot.top(1);
        }
        assert_eq!(hot.top(1), vec![(k(2), 2)]);
    }

    #[test]
    fn one_read_in_sample_is_counted() {
        let hot = HotKeys::<u128>::new(1, 4);
        // 16 reads on this thread: at least 2 sampled (gaps are under 8),
        // the second asks the payload, once.
        let mut asked = 0;
        for _ in 0..16 {
            hot.note(k(3), || {
                asked += 1;
                Some(3)
            });
        }
        assert_eq!(asked, 1);
        assert_eq!(hot.top(1), vec![(k(3), 3)]);
    }

    #[test]
    fn a_key_is_queued_once_until_its_claim_is_dropped() {
        let q = Arc::new(PrefetchQueue::new(4, 1));
        assert_eq!(q.push(k(1), 0, || 1), Pushed::Queued);
        assert_eq!(q.push(k(1), 0, || 1), Pushed::Known);
        let mut claim = q.pop().expect("queued");
        assert_eq!(claim.take(), Some(1));
        // Being warmed: still known.
        assert_eq!(q.push(k(1), 0, || 1), Pushed::Known);
        drop(claim);
        assert!(!q.is_pending(k(1)));
        assert_eq!(q.push(k(1), 0, || 1), Pushed::Queued);
    }

    #[test]
    fn a_full_queue_refuses_and_keeps_its_size() {
        let q = PrefetchQueue::new(2, 1);
        assert_eq!(q.push(k(1), 0, || 1), Pushed::Queued);
        assert_eq!(q.push(k(2), 0, || 2), Pushed::Queued);
        let mut made = 0;
        for n in 3..1_000 {
            assert_eq!(
                q.push(k(n), 0, || {
                    made += 1;
                    n
                }),
                Pushed::Full
            );
        }
        assert_eq!((q.len(), made), (2, 0));
    }

    #[test]
    fn a_failed_key_cools_until_its_instant() {
        let q = Arc::new(PrefetchQueue::new(2, 1));
        q.push(k(1), 0, || 1);
        let mut claim = q.pop().expect("queued");
        claim.failed(1_000);
        drop(claim);
        assert_eq!(q.push(k(1), 999, || 1), Pushed::Cooling);
        assert_eq!(q.push(k(1), 1_000, || 1), Pushed::Queued);
    }
}
