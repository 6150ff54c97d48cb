//! A per-thread front for L1's hottest entries (issue 18).
//!
//! Every L1 hit through `quick_cache` writes to cache lines all threads
//! share: the shard's read lock (taken and released), the entry's `Arc`
//! count (cloned and dropped), the body's `Bytes` count and the count of
//! every stored header value the response clones. On one hot key, threads
//! on different cores then take turns owning those lines, and two threads
//! serve little more than one.
//!
//! The front keeps, per thread, a few entries that thread has read often,
//! each as a **copy of its own**: the body and header bytes copied, so that
//! a hit answered from it clones and drops only counts this thread owns.
//! A copy answers only while it is current:
//!
//! - L1 keeps a **generation** per bucket of keys ([`Generations`]),
//!   bumped *after* every change to a key's slot (a store, a replacement,
//!   a removal, an invalidation, an eviction by the byte budget, a
//!   promotion from L2), and an **epoch** bumped after every change that
//!   may touch any key (a clear, a purge by tag or prefix, a change whose
//!   evictions L1 cannot list). A copy remembers both as they were
//!   *before* the L1 read it was made from, so any change after that read
//!   makes it unusable at once: a hit reads the two (lines no hit writes)
//!   and compares;
//! - it answers only while fresh (`now < fresh_until`, the moved clock in
//!   tests), only requests without `Cache-Control`, `Pragma` or
//!   `Authorization` (whose directives could make a fresh entry unusable),
//!   and only for entries without `Vary`, without a typed value, not
//!   marked `no-cache`, and weighing at most [`MAX_WEIGHT`] bytes;
//! - anything else goes to L1 as before, which keeps every other decision
//!   (stale, revalidation, 304 merging, promotion) on the one shared entry.
//!
//! A key earns a place by being read: each thread's front has [`SLOTS`]
//! slots, a key's slot chosen by its hash, and a slot keeps a vote count
//! for the key it tracks (a read of it adds one, a read of another key
//! mapped there takes one away; at zero the newcomer takes the slot). A
//! key is copied once it has [`PROMOTE_AT`] votes: a hot key within a few
//! reads, while reads spread over many keys never copy anything.
//!
//! Memory: at most [`SLOTS`] copies of at most [`MAX_WEIGHT`] bytes (their
//! L1 weight; their response templates too) per thread that served hits,
//! so 128 KiB per thread at most, whatever the number of caches in the
//! process (the slots are per thread, shared by every cache). A copy is
//! released when found out of date, when its slot is taken by another key,
//! or when its thread ends.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::entry::Entry;
use crate::key::KeyHash;

/// Slots per thread.
pub(crate) const SLOTS: usize = 8;
/// The heaviest entry (its L1 weight, body included) copied into a front.
pub(crate) const MAX_WEIGHT: u64 = 16 * 1024;
/// Votes a key needs before it is copied.
pub(crate) const PROMOTE_AT: u32 = 8;
/// Votes a slot counts up to (a key that stopped being read loses its slot
/// after this many reads of other keys mapped to it).
const MAX_VOTES: u32 = 64;
/// One front hit in this many per thread also reads the key in L1, so that
/// L1's eviction policy sees the key is in use (its hits here do not reach
/// it otherwise): a hot key is not evicted for looking unread.
pub(crate) const TOUCH_EVERY: u32 = 64;
/// Generation buckets: a change to one key makes the copies of the keys
/// sharing its bucket (about one in this many) copy again.
const BUCKETS: usize = 4096;

/// A cache line of its own for the epoch, so that bucket bumps do not
/// move it.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// L1's change counters, read by every front hit, written on every change
/// to L1 (never by a hit).
#[derive(Debug)]
pub(crate) struct Generations {
    /// Which L1 this is, for the thread's slots (shared by all caches).
    id: u64,
    epoch: Padded,
    buckets: Box<[AtomicU64]>,
}

/// Where a key's generation stood: taken before an L1 read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    epoch: u64,
    bucket: u64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Default for Generations {
    fn default() -> Self {
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            epoch: Padded::default(),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Generations {
    #[inline]
    fn bucket(&self, key: KeyHash) -> &AtomicU64 {
        &self.buckets[(key.0 as usize) % BUCKETS]
    }

    /// Marks a change to `key`'s slot: call it *after* the change.
    #[inline]
    pub(crate) fn changed(&self, key: KeyHash) {
        self.bucket(key).fetch_add(1, Ordering::AcqRel);
    }

    /// Marks a change that may touch any key: call it *after* the change.
    pub(crate) fn changed_all(&self) {
        self.epoch.0.fetch_add(1, Ordering::AcqRel);
    }

    /// Where `key` stands now.
    #[inline]
    pub(crate) fn stamp(&self, key: KeyHash) -> Stamp {
        Stamp {
            epoch: self.epoch.0.load(Ordering::Acquire),
            bucket: self.bucket(key).load(Ordering::Acquire),
        }
    }
}

/// One thread's slot.
struct Slot {
    /// The `Generations::id` of the L1 the key belongs to (0: free).
    owner: u64,
    key: KeyHash,
    votes: u32,
    /// Front hits since L1 was last told the key is in use.
    untold: u32,
    /// The thread's copy, and where the key stood before it was read.
    held: Option<(Arc<Entry>, Stamp)>,
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            owner: 0,
            key: KeyHash(0),
            votes: 0,
            untold: 0,
            held: None,
        }
    }
}

thread_local! {
    static FRONT: RefCell<[Slot; SLOTS]> = RefCell::new(Default::default());
}

#[inline]
fn slot_of(key: KeyHash) -> usize {
    // The low bits pick the generation bucket; use high ones here so that
    // keys sharing a slot do not also share a bucket.
    (key.0 >> 64) as usize % SLOTS
}

/// This thread's copy of `key` from the L1 `gens` belongs to, if it is
/// current and fresh at `now`; a copy found out of date is released. A
/// hit counts as a vote for the key. The flag: one hit in
/// [`TOUCH_EVERY`] should also read the key in L1.
#[inline]
pub(crate) fn get(gens: &Generations, key: KeyHash, now: u64) -> Option<(Arc<Entry>, bool)> {
    FRONT
        .try_with(|front| {
            let mut front = front.try_borrow_mut().ok()?;
            let slot = &mut front[slot_of(key)];
            if slot.owner != gens.id || slot.key != key {
                return None;
            }
            let (entry, stamp) = slot.held.as_ref()?;
            if now >= entry.timeline.fresh_until || gens.stamp(key) != *stamp {
                slot.held = None;
                return None;
            }
            let entry = Arc::clone(entry);
            slot.votes = (slot.votes + 1).min(MAX_VOTES);
            slot.untold += 1;
            let touch = slot.untold >= TOUCH_EVERY;
            if touch {
                slot.untold = 0;
            }
            Some((entry, touch))
        })
        .ok()
        .flatten()
}

/// Counts a read of `key` that the front did not answer; true when the key
/// has the votes to be copied (the caller then stamps, reads L1 and calls
/// [`fill`]).
#[inline]
pub(crate) fn vote(gens: &Generations, key: KeyHash) -> bool {
    FRONT
        .try_with(|front| {
            let Ok(mut front) = front.try_borrow_mut() else {
                return false;
            };
            let slot = &mut front[slot_of(key)];
            if slot.owner == gens.id && slot.key == key {
                slot.votes = (slot.votes + 1).min(MAX_VOTES);
                return slot.votes >= PROMOTE_AT && slot.held.is_none();
            }
            if slot.votes > 1 {
                slot.votes -= 1;
            } else {
                *slot = Slot {
                    owner: gens.id,
                    key,
                    votes: 1,
                    untold: 0,
                    held: None,
                };
            }
            false
        })
        .unwrap_or(false)
}

/// Whether `entry` may be copied into a front at `now`.
fn eligible(entry: &Entry, now: u64) -> bool {
    entry.vary.is_empty()
        && entry.value.is_none()
        && !entry.flags.no_cache
        && now < entry.timeline.fresh_until
        // Its reads are counted already (the front's hits are not counted
        // on it): an entry evicted later is not "evicted unread".
        && entry.reads.was_read()
        && entry.weight() <= MAX_WEIGHT
}

/// Keeps a copy of `entry`, read from L1 for `key` after `stamp` was
/// taken, in this thread's front (if the key still has its slot and the
/// entry qualifies). An entry that does not qualify gives its slot up.
pub(crate) fn fill(gens: &Generations, key: KeyHash, entry: &Entry, stamp: Stamp, now: u64) {
    let _ = FRONT.try_with(|front| {
        let Ok(mut front) = front.try_borrow_mut() else {
            return;
        };
        let slot = &mut front[slot_of(key)];
        if slot.owner != gens.id || slot.key != key {
            return;
        }
        if !eligible(entry, now) {
            slot.votes = 0;
            return;
        }
        slot.held = Some((Arc::new(copy(entry)), stamp));
    });
}

/// `entry` with bytes of its own: body, header names and values copied
/// (a clone would share their counts with every other thread), no
/// template yet (built from the copied headers on first use), its reads
/// counted afresh.
fn copy(entry: &Entry) -> Entry {
    let mut c = entry.clone();
    c.body = Bytes::copy_from_slice(&entry.body);
    let mut headers = HeaderMap::with_capacity(entry.headers.keys_len());
    for (name, value) in entry.headers.iter() {
        // Standard names are static already; a custom one is copied.
        let name =
            HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone());
        let mut v = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        v.set_sensitive(value.is_sensitive());
        headers.append(name, v);
    }
    c.headers = headers;
    c.template = OnceLock::new();
    c
}

/// Empties this thread's front (tests).
#[cfg(test)]
pub(crate) fn clear_thread() {
    FRONT.with(|f| *f.borrow_mut() = Default::default());
}

/// Whether this thread's front holds a copy of `key` from `gens`' L1
/// (tests).
#[cfg(test)]
pub(crate) fn holds(gens: &Generations, key: KeyHash) -> bool {
    FRONT.with(|f| {
        let f = f.borrow();
        let slot = &f[slot_of(key)];
        slot.owner == gens.id && slot.key == key && slot.held.is_some()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &[u8]) -> Entry {
        let mut e = crate::store::codec::tests::minimal();
        e.body = Bytes::copy_from_slice(body);
        e.headers.insert(
            HeaderName::from_static("x-custom"),
            HeaderValue::from_bytes(b"v").unwrap(),
        );
        e.timeline.fresh_until = 1_000;
        e.reads.note(crate::entry::ReadCap::exact(1));
        e
    }

    #[test]
    fn a_copy_shares_no_bytes_with_the_entry() {
        let e = entry(b"hello");
        let c = copy(&e);
        assert_eq!(c.body, e.body);
        assert_ne!(c.body.as_ptr(), e.body.as_ptr());
        assert_eq!(c.headers, e.headers);
        let (a, b) = (&c.headers["x-custom"], &e.headers["x-custom"]);
        assert_ne!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
        assert!(c.template.get().is_none());
    }

    #[test]
    fn a_key_is_copied_after_its_votes_and_answers_until_its_generation_moves() {
        clear_thread();
        let gens = Generations::default();
        let key = KeyHash(42);
        let e = entry(b"x");
        for _ in 1..PROMOTE_AT {
            assert!(!vote(&gens, key));
        }
        assert!(vote(&gens, key));
        let stamp = gens.stamp(key);
        fill(&gens, key, &e, stamp, 10);
        assert!(holds(&gens, key));
        assert!(get(&gens, key, 10).is_some_and(|(e, _)| e.body == "x"));
        // Another L1 with the same key has no copy here.
        assert!(get(&Generations::default(), key, 10).is_none());
        // Past its freshness: no answer.
        assert!(get(&gens, key, 1_000).is_none());
        assert!(!holds(&gens, key));
        fill(&gens, key, &e, gens.stamp(key), 10);
        gens.changed(key);
        assert!(get(&gens, key, 10).is_none());
        fill(&gens, key, &e, gens.stamp(key), 10);
        gens.changed_all();
        assert!(get(&gens, key, 10).is_none());
        // A copy made from a read that a change followed is never used.
        let before = gens.stamp(key);
        gens.changed(key);
        fill(&gens, key, &e, before, 10);
        assert!(get(&gens, key, 10).is_none());
    }

    #[test]
    fn reads_spread_over_many_keys_copy_nothing() {
        clear_thread();
        let gens = Generations::default();
        let mut x = 1u64;
        for _ in 0..100_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let key = KeyHash(
                u128::from(x % 10_000).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
            );
            assert!(!vote(&gens, key));
        }
    }

    #[test]
    fn heavy_unread_or_varied_entries_are_not_copied() {
        clear_thread();
        let gens = Generations::default();
        let key = KeyHash(7 << 64);
        let promote = |e: &Entry| {
            while !vote(&gens, key) {}
            fill(&gens, key, e, gens.stamp(key), 10);
            holds(&gens, key)
        };
        assert!(!promote(&entry(&vec![0; MAX_WEIGHT as usize])));
        let mut unread = entry(b"x");
        unread.reads = Default::default();
        assert!(!promote(&unread));
        let mut varied = entry(b"x");
        varied.vary = vec![(http::header::ACCEPT, Box::from([]))].into_boxed_slice();
        assert!(!promote(&varied));
        assert!(promote(&entry(b"x")));
    }
}
