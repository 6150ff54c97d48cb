//! The L1 tier: an in-process `quick_cache`, weighted by bytes.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::header::{HeaderMap, HeaderName};
use quick_cache::sync::{Cache as QuickCache, EntryAction, EntryResult};
use quick_cache::{Lifecycle, OptionsBuilder, Weighter};

use crate::entry::Entry;
use crate::front::Generations;
use crate::key::{variant_hash, KeyHash};
use crate::sync::lock;

/// What an L1 slot holds: a response, or, for a URL whose responses vary,
/// the header names that select among its variants.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    Entry(Arc<Entry>),
    Vary(Arc<VaryIndex>),
}

/// The variants of one URL. Their hashes are kept (bounded) so that
/// invalidating the URL removes every variant.
#[derive(Debug)]
pub(crate) struct VaryIndex {
    pub(crate) names: Box<[HeaderName]>,
    variants: Mutex<VecDeque<KeyHash>>,
}

/// The result of an L1 lookup.
#[derive(Debug)]
pub(crate) enum Found {
    Entry(Arc<Entry>),
    /// Nothing stored for the URL.
    UriMiss,
    /// The URL has variants, none for these request headers.
    VaryMiss,
}

fn slot_ptr(slot: &Slot) -> *const () {
    match slot {
        Slot::Entry(e) => Arc::as_ptr(e).cast(),
        Slot::Vary(v) => Arc::as_ptr(v).cast(),
    }
}

#[derive(Clone, Debug)]
struct SlotWeighter;

impl Weighter<KeyHash, Slot> for SlotWeighter {
    fn weight(&self, _key: &KeyHash, val: &Slot) -> u64 {
        match val {
            Slot::Entry(e) => e.weight(),
            // The index in its `Arc`, its names, its slot in L1. Its list of
            // variant hashes grows with them: each variant's own weight
            // counts its place in it.
            Slot::Vary(v) => {
                let index = crate::entry::chunk(2 * size_of::<usize>() + size_of::<VaryIndex>());
                let names = crate::entry::chunk(v.names.len() * size_of::<HeaderName>())
                    + v.names
                        .iter()
                        .map(|n| crate::entry::chunk(n.as_str().len()))
                        .sum::<usize>();
                (index + names + crate::entry::SLOT_OVERHEAD) as u64
            }
        }
    }
}

/// Keys are already uniform 128-bit hashes: fold them instead of hashing
/// again.
#[derive(Clone, Default, Debug)]
struct KeyHashBuilder;

#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    fn write_u128(&mut self, i: u128) {
        self.0 ^= (i as u64) ^ ((i >> 64) as u64);
    }
}

impl BuildHasher for KeyHashBuilder {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

/// Collects what an insert pushed out, so that evictions are counted
/// (replacing a key's own value is not one) and values are dropped after
/// the shard lock is released.
#[derive(Clone, Debug, Default)]
struct EvictionLog;

impl Lifecycle<KeyHash, Slot> for EvictionLog {
    type RequestState = Vec<(KeyHash, Slot)>;

    fn on_evict(&self, state: &mut Self::RequestState, key: KeyHash, val: Slot) {
        state.push((key, val));
    }
}

type Inner = QuickCache<KeyHash, Slot, SlotWeighter, KeyHashBuilder, EvictionLog>;

/// The in-process tier.
#[derive(Debug)]
pub(crate) struct MemoryStore {
    cache: Inner,
    capacity: u64,
    max_entry: u64,
    max_variants: usize,
    evictions: Arc<AtomicU64>,
    /// Told the label of each entry evicted before it was read.
    unread: std::sync::OnceLock<UnreadHook>,
    /// Bumped after every change to a slot (`front.rs`): what makes a
    /// thread's copy of an entry unusable at once.
    pub(crate) gens: Generations,
}

struct UnreadHook(Box<dyn Fn(u16) + Send + Sync>);

impl std::fmt::Debug for UnreadHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnreadHook")
    }
}

impl MemoryStore {
    pub(crate) fn new(capacity: u64, max_entry: u64, max_variants: usize) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        // A guess at the item count; quick_cache sizes its tables from it.
        let estimated_items = (capacity / 4096).clamp(64, 4_000_000) as usize;
        let options = OptionsBuilder::new()
            .estimated_items_capacity(estimated_items)
            .weight_capacity(capacity)
            .shards(Self::shards_for(capacity, max_entry))
            .build()
            .expect("valid quick_cache options");
        Self {
            cache: Inner::with_options(options, SlotWeighter, KeyHashBuilder, EvictionLog),
            capacity,
            max_entry,
            max_variants: max_variants.max(1),
            evictions,
            unread: std::sync::OnceLock::new(),
            gens: Generations::default(),
        }
    }

    /// quick_cache splits the capacity into shards and refuses any item
    /// heavier than about one shard: keep every shard at least twice the
    /// largest entry, so an entry under the cap is never refused.
    pub(crate) fn shards_for(capacity: u64, max_entry: u64) -> usize {
        let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
        let mut shards = (cpus * 4).next_power_of_two();
        while shards > 1 && capacity / (shards as u64) < max_entry.saturating_mul(2) {
            shards /= 2;
        }
        shards
    }

    /// Finds the entry for `primary` that the request headers select.
    #[inline]
    pub(crate) fn get(&self, primary: KeyHash, headers: &HeaderMap) -> Found {
        match self.cache.get(&primary) {
            None => Found::UriMiss,
            Some(Slot::Entry(e)) => Found::Entry(e),
            Some(Slot::Vary(index)) => {
                let secondary = variant_hash(primary, &index.names, headers);
                match self.cache.get(&secondary) {
                    Some(Slot::Entry(e)) if e.vary_matches(headers) => Found::Entry(e),
                    _ => Found::VaryMiss,
                }
            }
        }
    }

    /// Reads `primary`'s slot for nothing but to tell the eviction policy
    /// it is in use (a hit answered elsewhere: `front.rs`).
    pub(crate) fn touch(&self, primary: KeyHash) {
        let _ = self.cache.get(&primary);
    }

    /// Stores `entry` for `primary`, as a variant when it carries `Vary`.
    /// Returns false when the entry is too large for L1.
    pub(crate) fn insert(
        &self,
        primary: KeyHash,
        entry: Arc<Entry>,
        vary: &[HeaderName],
        req_headers: &HeaderMap,
    ) -> bool {
        if entry.weight() > self.max_entry {
            return false;
        }
        if vary.is_empty() {
            if let Some(Slot::Vary(old)) = self.cache.get(&primary) {
                self.remove_variants(&old);
            }
            return self.put(primary, Slot::Entry(entry));
        }
        let index = match self.cache.get(&primary) {
            Some(Slot::Vary(index)) if *index.names == *vary => index,
            None => {
                // Two first variants stored at once must share one index,
                // or one of them could never be invalidated.
                let fresh = Arc::new(VaryIndex {
                    names: vary.to_vec().into_boxed_slice(),
                    variants: Mutex::new(VecDeque::new()),
                });
                let got = self
                    .cache
                    .get_or_insert_with(&primary, || Ok::<_, ()>(Slot::Vary(Arc::clone(&fresh))));
                // An insert whose evictions are not listed: every key.
                self.gens.changed_all();
                match got {
                    Ok(Slot::Vary(index)) if *index.names == *vary => index,
                    _ => {
                        self.put(primary, Slot::Vary(Arc::clone(&fresh)));
                        fresh
                    }
                }
            }
            old => {
                if let Some(Slot::Vary(old)) = old {
                    self.remove_variants(&old);
                }
                let index = Arc::new(VaryIndex {
                    names: vary.to_vec().into_boxed_slice(),
                    variants: Mutex::new(VecDeque::new()),
                });
                self.put(primary, Slot::Vary(Arc::clone(&index)));
                index
            }
        };
        let secondary = variant_hash(primary, vary, req_headers);
        let evicted = {
            let mut variants = lock(&index.variants);
            if !variants.contains(&secondary) {
                variants.push_back(secondary);
            }
            let mut evicted = Vec::new();
            while variants.len() > self.max_variants {
                if let Some(old) = variants.pop_front() {
                    evicted.push(old);
                }
            }
            evicted
        };
        for old in evicted {
            self.cache.remove(&old);
            self.gens.changed(old);
        }
        self.put(secondary, Slot::Entry(entry))
    }

    /// Inserts a slot; false when quick_cache refused it (too heavy).
    fn put(&self, key: KeyHash, slot: Slot) -> bool {
        let mut pushed_out = Vec::new();
        let ptr = slot_ptr(&slot);
        self.cache.insert_with_lifecycle(key, slot, &mut pushed_out);
        let mut refused = false;
        let mut evicted = 0;
        for (k, v) in &pushed_out {
            if *k != key {
                evicted += 1;
                if let (Slot::Entry(e), Some(hook)) = (v, self.unread.get()) {
                    if !e.reads.was_read() {
                        (hook.0)(e.label);
                    }
                }
            } else if slot_ptr(v) == ptr {
                refused = true;
            }
        }
        if evicted > 0 {
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
        self.gens.changed(key);
        for (k, _) in &pushed_out {
            if *k != key {
                self.gens.changed(*k);
            }
        }
        !refused
    }

    /// Replaces `old` with `new` only if `old` is still the entry stored for
    /// these request headers: an invalidation or a newer response that
    /// landed meanwhile is never overwritten. Returns whether it replaced.
    pub(crate) fn replace_if(
        &self,
        primary: KeyHash,
        old: &Arc<Entry>,
        new: Arc<Entry>,
        req_headers: &HeaderMap,
    ) -> bool {
        if new.weight() > self.max_entry {
            return false;
        }
        let slot_key = match self.cache.get(&primary) {
            Some(Slot::Vary(index)) => variant_hash(primary, &index.names, req_headers),
            Some(Slot::Entry(_)) => primary,
            None => return false,
        };
        let result = self.cache.entry(&slot_key, None, |_, v| {
            if matches!(v, Slot::Entry(e) if Arc::ptr_eq(e, old)) {
                *v = Slot::Entry(new);
                EntryAction::Retain(true)
            } else {
                EntryAction::Retain(false)
            }
        });
        let replaced = matches!(result, EntryResult::Retained(true));
        if replaced {
            // A heavier value may have pushed others out, unlisted.
            self.gens.changed_all();
        }
        replaced
    }

    /// Removes the entry stored for these request headers, if it is
    /// `entry` (any entry when `None`): an expired entry found on lookup, or
    /// an older copy of one that now lives in L2 only.
    pub(crate) fn remove_stored(
        &self,
        primary: KeyHash,
        entry: Option<&Arc<Entry>>,
        headers: &HeaderMap,
    ) -> bool {
        let slot_key = match self.cache.get(&primary) {
            Some(Slot::Vary(index)) => variant_hash(primary, &index.names, headers),
            _ => primary,
        };
        let removed = self
            .cache
            .remove_if(
                &slot_key,
                |v| matches!(v, Slot::Entry(e) if entry.is_none_or(|x| Arc::ptr_eq(e, x))),
            )
            .is_some();
        self.gens.changed(slot_key);
        removed
    }

    /// Removes a URL and all its variants.
    pub(crate) fn remove(&self, primary: KeyHash) -> bool {
        let removed = match self.cache.remove(&primary) {
            Some((_, Slot::Vary(index))) => {
                self.remove_variants(&index);
                true
            }
            Some(_) => true,
            None => false,
        };
        self.gens.changed(primary);
        removed
    }

    fn remove_variants(&self, index: &VaryIndex) {
        let drained: Vec<KeyHash> = lock(&index.variants).drain(..).collect();
        for k in drained {
            self.cache.remove(&k);
            self.gens.changed(k);
        }
    }

    /// Removes every entry `pred` selects (a scan of L1, off the request
    /// path). Returns how many were removed.
    /// Up to `n` entries (in table order: a sample, not a scan).
    pub(crate) fn sample(&self, n: usize) -> Vec<Arc<Entry>> {
        self.cache
            .iter()
            .filter_map(|(_, v)| match v {
                Slot::Entry(e) => Some(e),
                Slot::Vary(_) => None,
            })
            .take(n)
            .collect()
    }

    pub(crate) fn remove_where(&self, pred: impl Fn(&Entry) -> bool) -> u64 {
        let doomed: Vec<(KeyHash, Arc<Entry>)> = self
            .cache
            .iter()
            .filter_map(|(k, v)| match v {
                Slot::Entry(e) if pred(&e) => Some((k, e)),
                _ => None,
            })
            .collect();
        let mut n = 0;
        for (k, e) in doomed {
            if self
                .cache
                .remove_if(&k, |v| matches!(v, Slot::Entry(x) if Arc::ptr_eq(x, &e)))
                .is_some()
            {
                n += 1;
            }
        }
        // Every key the scan may have covered, the removed ones included.
        self.gens.changed_all();
        n
    }

    pub(crate) fn clear(&self) {
        self.cache.clear();
        self.gens.changed_all();
    }

    pub(crate) fn len(&self) -> usize {
        self.cache.len()
    }

    pub(crate) fn weight(&self) -> u64 {
        self.cache.weight()
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Sets the function told about entries evicted unread.
    pub(crate) fn on_evicted_unread(&self, hook: Box<dyn Fn(u16) + Send + Sync>) {
        let _ = self.unread.set(UnreadHook(hook));
    }

    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::ACCEPT_LANGUAGE;
    use http::HeaderValue;

    fn lang(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_LANGUAGE, HeaderValue::from_static(v));
        h
    }

    /// A panic while a vary index's lock was held (`sync::lock`): the
    /// index is still used, so the URL's variants are stored and all
    /// removed with it (a refused lock skipped both).
    #[test]
    fn a_poisoned_vary_index_still_stores_and_invalidates_every_variant() {
        let l1 = MemoryStore::new(1 << 20, 1 << 20, 8);
        let (url, vary) = (KeyHash(1), [ACCEPT_LANGUAGE]);
        let entry = || Arc::new(crate::store::codec::tests::minimal());
        assert!(l1.insert(url, entry(), &vary, &lang("en")));
        let Some(Slot::Vary(index)) = l1.cache.get(&url) else {
            panic!("a vary index")
        };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = index.variants.lock();
            panic!("poisons the vary index");
        }));
        assert!(index.variants.is_poisoned());
        assert!(l1.insert(url, entry(), &vary, &lang("fr")));
        assert!(matches!(l1.get(url, &lang("fr")), Found::Entry(_)));
        assert_eq!(l1.len(), 3, "the index and two variants");
        assert!(l1.remove(url));
        assert_eq!(l1.len(), 0, "every variant removed with the URL");
    }
}
