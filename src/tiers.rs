//! The tiers as one store: L1 in process and, with the `redis` feature, an
//! optional L2 in Redis, with the rules between them:
//!
//! - **lookup**: which copy may answer a request, and the tier it came
//!   from ([`Tier`]); an L1 copy past `retain_until` is dropped, an L1 copy
//!   the invalidation channel cannot vouch for is skipped;
//! - **admission**: where a new entry goes (L1 unless L2 exists and
//!   write-through is off; L2 off the request path);
//! - **promotion**: when an entry read from L2 is copied into L1 (after
//!   `promote_after` hits, at once when it replaces an older L1 copy, never
//!   when an invalidation may have come after the read);
//! - **replacement**: a 304-merged or extended entry replaces the one it
//!   was made from, wherever that was found.
//!
//! The engine asks L1 synchronously on every request (a hit never waits for
//! a future) and L2 only from the request that leads a miss; [`Tiers::lookup`]
//! does both in order for callers without that split.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName};

use crate::entry::Entry;
use crate::key::KeyHash;
use crate::status::{Detail, Fwd};
use crate::store::memory::{Found, MemoryStore};
use crate::store::order::Generation;

/// The tier a found entry was read from. Everything else about the entry
/// (freshness, revalidation, 304 merging, `Cache-Status`) is decided the
/// same way for both ([`Cache::judge`](crate::Cache)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Tier {
    /// In-process memory.
    L1,
    /// Redis; `since` is the generation at which the read started (what
    /// was read is not promoted past a later invalidation; see
    /// `store/order.rs`).
    L2 { since: Generation },
}

impl Tier {
    /// The tier as `Cache-Status`' `detail` names it.
    pub(crate) fn detail(self) -> Detail {
        match self {
            Tier::L1 => Detail::L1,
            Tier::L2 { .. } => Detail::L2,
        }
    }
}

/// What the L1 step of a lookup found.
pub(crate) enum L1Lookup {
    /// A copy this request may judge.
    Found(Arc<Entry>),
    /// None usable; `fwd` is the `Cache-Status` forward reason
    /// (`uri-miss`, or `vary-miss` when other variants are stored).
    Miss { fwd: Fwd },
}

/// What the L2 step of a lookup found.
#[cfg(feature = "redis")]
pub(crate) enum L2Lookup {
    /// An entry, newer than the prior copy if one was given.
    Found(Arc<Entry>, Tier),
    /// Nothing usable; `varied` when the URL has other variants in L2.
    Miss { varied: bool },
}

/// L1, the optional L2, and how entries move between them.
pub(crate) struct Tiers {
    pub(crate) l1: MemoryStore,
    #[cfg(feature = "redis")]
    pub(crate) l2: Option<Arc<crate::store::l2::L2>>,
    /// Write new entries to L1 as well as L2 (always true without L2).
    write_through: bool,
}

impl Tiers {
    /// L1 alone.
    pub(crate) fn new(l1: MemoryStore, write_through: bool) -> Self {
        Self {
            l1,
            #[cfg(feature = "redis")]
            l2: None,
            write_through,
        }
    }

    /// These tiers with (when `Some`) L2 below L1.
    #[cfg(feature = "redis")]
    pub(crate) fn with_l2(self, l2: Option<Arc<crate::store::l2::L2>>) -> Self {
        Self { l2, ..self }
    }

    /// Whether an L2 tier is configured.
    #[inline]
    pub(crate) fn has_l2(&self) -> bool {
        #[cfg(feature = "redis")]
        {
            self.l2.is_some()
        }
        #[cfg(not(feature = "redis"))]
        {
            false
        }
    }

    /// The tier new entries are read back from: L1, unless L2 exists and
    /// responses are not written through to L1.
    pub(crate) fn store_tier(&self) -> Detail {
        if self.writes_l1() {
            Detail::L1
        } else {
            Detail::L2
        }
    }

    /// Whether new entries go to L1.
    #[inline]
    fn writes_l1(&self) -> bool {
        self.write_through || !self.has_l2()
    }

    /// Whether an L1 copy stored at `stored_at` may be used at `now`:
    /// always without L2; with L2, as far as the invalidation channel can
    /// vouch for it.
    #[inline]
    fn trusts_l1(&self, stored_at: u64, now: u64) -> bool {
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.l2 {
            return l2.trust_l1(stored_at, now);
        }
        let _ = (stored_at, now);
        true
    }

    /// The L1 step of a lookup (synchronous: the hit path).
    #[inline]
    pub(crate) fn lookup_l1(&self, key: KeyHash, headers: &HeaderMap, now: u64) -> L1Lookup {
        match self.l1.get(key, headers) {
            Found::Entry(e) if now >= e.timeline.retain_until => {
                self.l1.remove_expired(key, &e, headers);
                L1Lookup::Miss { fwd: Fwd::UriMiss }
            }
            // `l1_max_ttl` is set, this instance is not following the
            // invalidation log and this copy is old: go to L2, which other
            // instances keep current.
            Found::Entry(e) if !self.trusts_l1(e.timeline.stored_at, now) => {
                L1Lookup::Miss { fwd: Fwd::UriMiss }
            }
            Found::Entry(e) => L1Lookup::Found(e),
            Found::UriMiss => L1Lookup::Miss { fwd: Fwd::UriMiss },
            Found::VaryMiss => L1Lookup::Miss { fwd: Fwd::VaryMiss },
        }
    }

    /// An L1 copy stored after `prior` (any copy when `None`) that may be
    /// used at `now`: what a request that waited finds another stored.
    pub(crate) fn l1_newer_than(
        &self,
        key: KeyHash,
        headers: &HeaderMap,
        prior: Option<&Entry>,
        now: u64,
    ) -> Option<Arc<Entry>> {
        let L1Lookup::Found(entry) = self.lookup_l1(key, headers, now) else {
            return None;
        };
        prior
            .is_none_or(|p| entry.timeline.stored_at > p.timeline.stored_at)
            .then_some(entry)
    }

    /// The L2 step of a lookup: an entry newer than `prior` (any when
    /// `None`) and not past its last useful instant at `now`. Keys this
    /// instance is deleting are misses, before and after the read.
    #[cfg(feature = "redis")]
    pub(crate) async fn lookup_l2(
        &self,
        key: KeyHash,
        headers: &HeaderMap,
        prior: Option<&Entry>,
        now: u64,
    ) -> L2Lookup {
        let Some(l2) = self.l2.as_ref() else {
            return L2Lookup::Miss { varied: false };
        };
        // An invalidation arriving while the read is in flight must not be
        // undone by promoting (or re-storing) what was read.
        let since = l2.generation();
        if l2.deleting(key) {
            return L2Lookup::Miss { varied: false };
        }
        let mut varied = false;
        let Some(found) = l2.lookup_varied(key, headers, &mut varied).await else {
            return L2Lookup::Miss { varied };
        };
        // Invalidated here while the read was in flight.
        if l2.deleting(key) {
            return L2Lookup::Miss { varied: false };
        }
        let newer = prior.is_none_or(|p| found.timeline.stored_at > p.timeline.stored_at);
        // Past its last useful instant the entry is gone, as from L1 (Redis
        // expires it by its own clock, which may lag the cache's).
        if !newer || now >= found.timeline.retain_until {
            return L2Lookup::Miss { varied: false };
        }
        L2Lookup::Found(found, Tier::L2 { since })
    }

    /// Both steps in order: L1, then L2. The entry and the tier it came
    /// from, or `None`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) async fn lookup(
        &self,
        key: KeyHash,
        headers: &HeaderMap,
        now: u64,
    ) -> Option<(Arc<Entry>, Tier)> {
        if let L1Lookup::Found(e) = self.lookup_l1(key, headers, now) {
            return Some((e, Tier::L1));
        }
        #[cfg(feature = "redis")]
        if let L2Lookup::Found(e, tier) = self.lookup_l2(key, headers, None, now).await {
            return Some((e, tier));
        }
        None
    }

    /// Counts a request served from `entry` found in `tier`, and copies an
    /// L2 entry into L1 when it has earned it: at once when it `replaces`
    /// an older L1 copy, otherwise after `promote_after` hits. Never when an
    /// invalidation may have come after the read. Returns whether the entry
    /// is (now) in L1.
    pub(crate) fn admit_served(
        &self,
        key: KeyHash,
        entry: &Arc<Entry>,
        tier: Tier,
        replaces: bool,
        headers: &HeaderMap,
        now: u64,
    ) -> bool {
        match tier {
            Tier::L1 => true,
            #[cfg(feature = "redis")]
            Tier::L2 { since } => {
                let Some(l2) = self.l2.as_ref() else {
                    return false;
                };
                // Checked first: a hit that may not promote is not counted
                // towards promotion.
                let promoted = l2.may_promote(key, since) && (replaces || l2.note_hit(key, now));
                if promoted {
                    self.l1
                        .insert(key, Arc::clone(entry), &vary_names(entry), headers);
                }
                promoted
            }
            #[cfg(not(feature = "redis"))]
            Tier::L2 { .. } => {
                let _ = (key, entry, replaces, headers, now);
                false
            }
        }
    }

    /// Puts `found`, read from L2 in `tier` because another instance
    /// refreshed it, in place of the L1 copy `old` (if `old` is still
    /// there), unless an invalidation came after the read.
    #[cfg(feature = "redis")]
    pub(crate) fn adopt(
        &self,
        key: KeyHash,
        old: &Arc<Entry>,
        found: &Arc<Entry>,
        tier: Tier,
        headers: &HeaderMap,
    ) -> bool {
        let allowed = match (tier, &self.l2) {
            (Tier::L2 { since }, Some(l2)) => l2.may_promote(key, since),
            _ => true,
        };
        allowed && self.l1.replace_if(key, old, Arc::clone(found), headers)
    }

    /// Stores a new entry: in L1 (unless L2 exists and write-through is
    /// off) and, off the request path, in L2. Returns whether any tier took
    /// it.
    pub(crate) fn store(
        &self,
        key: KeyHash,
        entry: &Arc<Entry>,
        vary: &[HeaderName],
        req_headers: &HeaderMap,
        now: u64,
    ) -> bool {
        let mut stored = false;
        if self.writes_l1() {
            stored |= self.l1.insert(key, Arc::clone(entry), vary, req_headers);
        }
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.l2 {
            l2.enqueue(key, entry, req_headers, now);
            stored = true;
        }
        let _ = now;
        stored
    }

    /// Stores a new entry in L1 alone, whatever L2 and write-through say
    /// (a value cache's `l1_only`). Returns whether L1 took it.
    #[cfg_attr(not(feature = "values"), allow(dead_code))]
    pub(crate) fn store_l1_only(&self, key: KeyHash, entry: &Arc<Entry>) -> bool {
        self.l1
            .insert(key, Arc::clone(entry), &[], &HeaderMap::new())
    }

    /// Stores a new entry in L2 alone, off the request path (a value
    /// cache's `l2_only`). Returns whether there is an L2 to take it.
    #[cfg_attr(not(feature = "values"), allow(dead_code))]
    pub(crate) fn store_l2_only(&self, key: KeyHash, entry: &Arc<Entry>, now: u64) -> bool {
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.l2 {
            l2.enqueue(key, entry, &HeaderMap::new(), now);
            return true;
        }
        let _ = (key, entry, now);
        false
    }

    /// The L2 step of a lookup for many keys without `Vary` (values), in
    /// one round trip: per key, an entry not past its last useful instant
    /// at `now`, and its tier. Keys this instance is deleting are misses.
    #[cfg(feature = "redis")]
    #[cfg_attr(not(feature = "values"), allow(dead_code))]
    pub(crate) async fn lookup_l2_many(
        &self,
        keys: &[KeyHash],
        now: u64,
    ) -> Vec<Option<(Arc<Entry>, Tier)>> {
        let Some(l2) = self.l2.as_ref() else {
            return vec![None; keys.len()];
        };
        // As in `lookup_l2`: what an invalidation here covers is a miss,
        // whether it began before the read or during it.
        let since = l2.generation();
        let deleting: Vec<bool> = keys.iter().map(|k| l2.deleting(*k)).collect();
        let found = l2.lookup_many(keys).await;
        keys.iter()
            .zip(deleting)
            .zip(found)
            .map(|((key, before), found)| {
                let usable = |e: &Arc<Entry>| now < e.timeline.retain_until;
                let e = found.filter(|e| !before && usable(e) && !l2.deleting(*key))?;
                Some((e, Tier::L2 { since }))
            })
            .collect()
    }

    /// Replaces `old` with `new` (freshened by a 304, stale windows
    /// extended) if `old` is still the stored entry; then writes it to L2.
    /// An invalidation or a newer response that landed meanwhile wins.
    ///
    /// `tier`: where `old` was found. An entry read from L2 (L1 had no
    /// copy) goes to L1 as a new response would (write-through) and to L2,
    /// unless an invalidation came after it was read.
    pub(crate) fn replace(
        &self,
        key: KeyHash,
        old: &Arc<Entry>,
        new: Arc<Entry>,
        req_headers: &HeaderMap,
        tier: Tier,
        now: u64,
    ) -> bool {
        #[cfg(feature = "redis")]
        if let (Tier::L2 { since }, Some(l2)) = (tier, &self.l2) {
            if !l2.may_promote(key, since) {
                return false;
            }
            if self.write_through {
                self.l1
                    .insert(key, Arc::clone(&new), &vary_names(&new), req_headers);
            }
            l2.enqueue(key, &new, req_headers, now);
            return true;
        }
        let _ = (tier, now);
        let replaced = self.l1.replace_if(key, old, Arc::clone(&new), req_headers);
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.l2 {
            // L2 may hold the entry even when L1 does not (write-through
            // off, or evicted); an invalidation deleted it from both.
            if replaced || !self.write_through {
                l2.enqueue(key, &new, req_headers, now);
            }
        }
        replaced
    }
}

/// The names of the request fields `entry` varies on.
#[cfg(feature = "redis")]
fn vary_names(entry: &Entry) -> Vec<HeaderName> {
    entry.vary.iter().map(|(n, _)| n.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Timeline;
    use bytes::Bytes;

    fn entry(stored_at: u64, retain_until: u64) -> Arc<Entry> {
        let mut e = crate::store::codec::tests::minimal();
        e.body = Bytes::from_static(b"x");
        e.timeline = Timeline {
            stored_at,
            retain_until,
            ..e.timeline
        };
        Arc::new(e)
    }

    #[tokio::test]
    async fn lookup_returns_the_tier_and_drops_what_is_past_retain_until() {
        let tiers = Tiers::new(MemoryStore::new(1 << 20, 1 << 20, 8), true);
        let key = KeyHash(7);
        let headers = HeaderMap::new();
        assert!(tiers.lookup(key, &headers, 0).await.is_none());
        assert!(tiers.store(key, &entry(10, 1_000), &[], &headers, 10));
        let (found, tier) = tiers.lookup(key, &headers, 500).await.expect("found");
        assert_eq!(tier, Tier::L1);
        assert_eq!(found.timeline.stored_at, 10);
        // A copy stored after the prior is "newer"; the same one is not.
        assert!(tiers
            .l1_newer_than(key, &headers, Some(&entry(5, 1_000)), 500)
            .is_some());
        assert!(tiers
            .l1_newer_than(key, &headers, Some(&found), 500)
            .is_none());
        // Past retain_until: a miss, and the copy is gone.
        assert!(matches!(
            tiers.lookup_l1(key, &headers, 1_000),
            L1Lookup::Miss { fwd: Fwd::UriMiss }
        ));
        assert_eq!(tiers.l1.len(), 0);
    }

    #[test]
    fn without_l2_new_entries_go_to_l1_whatever_write_through_says() {
        let tiers = Tiers::new(MemoryStore::new(1 << 20, 1 << 20, 8), false);
        assert_eq!(tiers.store_tier(), Detail::L1);
        assert!(!tiers.has_l2());
        let headers = HeaderMap::new();
        assert!(tiers.store(KeyHash(1), &entry(1, 100), &[], &headers, 1));
        assert_eq!(tiers.l1.len(), 1);
        // Replacing needs the stored copy to be the one replaced.
        let old = entry(1, 100);
        assert!(!tiers.replace(KeyHash(1), &old, entry(2, 100), &headers, Tier::L1, 2));
    }
}
