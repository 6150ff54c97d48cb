//! The order of L2 writes and invalidations, kept by explicit generations.
//!
//! A write to L2 is queued and sent later, and a value read from L2 may be
//! copied into L1 after the read has answered. Meanwhile an invalidation
//! may arrive (from this instance or, through the invalidation log, from
//! another). Each tier keeps a counter of generations: a queued write and
//! a read take the current generation when they start, and each
//! invalidation records, under what it covers, the generation at which it
//! happened:
//!
//! - per key, for a key invalidation (bounded, as the write queue is: the
//!   least used records go first);
//! - per namespace, one for `clear` and one for tag or prefix
//!   invalidations (whose keys this instance cannot list).
//!
//! [`Generations::still_applies`] is the one place that decides whether
//! what was taken at a generation may still be written or promoted.

// Without L2 only `Generation` is used (as `Tier::L2`'s field).
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::sync::Cache as QuickCache;

use crate::key::KeyHash;

/// A point in one tier's order of writes and invalidations. Every
/// generation handed out is unique: two are never equal unless they are
/// the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Generation(u64);

impl Generation {
    /// No generation: what is marked with it never still applies (a value
    /// that must not be promoted or written again, e.g. one a coalescing
    /// leader read and already promoted or declined to).
    pub(crate) const NONE: Generation = Generation(0);
}

/// What an invalidation covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// One key (all of its variants).
    Key(KeyHash),
    /// Keys this instance cannot list: a tag's, a prefix's, or whatever a
    /// missed stretch of the invalidation log named.
    Unlisted,
    /// The whole namespace.
    All,
}

/// What is about to use a value taken at a generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// A queued write about to be sent. An invalidation of unlisted keys
    /// does not drop it (it cannot tell whether the write is covered, and
    /// dropping every queued write would lose the unrelated ones); a key
    /// invalidation or a clear does.
    Write,
    /// A value read from L2 about to be copied into L1 (or re-stored): any
    /// invalidation that may cover it forbids that.
    Promote,
}

/// The generations of one tier (see the module docs).
pub(crate) struct Generations {
    /// The last generation handed out.
    now: AtomicU64,
    /// The generation of the last `clear` (or coherence reset).
    cleared: AtomicU64,
    /// The generation of the last invalidation of unlisted keys.
    unlisted: AtomicU64,
    /// The generation of each recent key invalidation (bounded).
    keys: QuickCache<KeyHash, Generation>,
    /// Invalidations of unlisted keys under way here (see
    /// [`Generations::begin_unlisted`]).
    running: AtomicU64,
}

/// An invalidation of unlisted keys under way; recorded when dropped.
pub(crate) struct Running<'a>(&'a Generations);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.invalidate(Scope::Unlisted);
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Generations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generations")
            .field("now", &self.now.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Generations {
    /// Generations remembering up to `keys` key invalidations.
    pub(crate) fn new(keys: usize) -> Self {
        Self {
            now: AtomicU64::new(0),
            cleared: AtomicU64::new(0),
            unlisted: AtomicU64::new(0),
            keys: QuickCache::new(keys.max(1)),
            running: AtomicU64::new(0),
        }
    }

    /// A new generation, after every one handed out so far.
    pub(crate) fn next(&self) -> Generation {
        Generation(self.now.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// Records an invalidation of `scope`, happening now.
    pub(crate) fn invalidate(&self, scope: Scope) {
        let at = self.next();
        match scope {
            Scope::Key(key) => self.keys.insert(key, at),
            Scope::Unlisted => {
                self.unlisted.fetch_max(at.0, Ordering::AcqRel);
            }
            Scope::All => {
                self.cleared.fetch_max(at.0, Ordering::AcqRel);
            }
        }
    }

    /// Marks an invalidation of unlisted keys (a tag's, a prefix's) as
    /// under way here until the guard is dropped, when it is recorded as
    /// happening. Meanwhile nothing read from L2 is promoted: a read that
    /// starts and ends while the `DEL`s are being sent could otherwise copy
    /// a value they are about to delete into L1, after L1 was cleaned.
    pub(crate) fn begin_unlisted(&self) -> Running<'_> {
        self.running.fetch_add(1, Ordering::AcqRel);
        Running(self)
    }

    /// Whether a value of `key` taken at `taken` may still be used for
    /// `purpose`: no invalidation that may cover it has happened since.
    pub(crate) fn still_applies(&self, key: KeyHash, taken: Generation, purpose: Use) -> bool {
        if taken == Generation::NONE {
            return false;
        }
        let after = |at: u64| at > taken.0;
        if after(self.cleared.load(Ordering::Acquire)) {
            return false;
        }
        if purpose == Use::Promote
            && (after(self.unlisted.load(Ordering::Acquire))
                || self.running.load(Ordering::Acquire) > 0)
        {
            return false;
        }
        self.keys.get(&key).is_none_or(|at| at <= taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: KeyHash = KeyHash(1);
    const OTHER: KeyHash = KeyHash(2);

    #[test]
    fn generations_only_grow() {
        let g = Generations::new(8);
        let a = g.next();
        let b = g.next();
        assert!(Generation::NONE < a && a < b);
    }

    #[test]
    fn a_key_invalidation_covers_what_was_taken_before_it_and_only_its_key() {
        let g = Generations::new(8);
        let before = g.next();
        g.invalidate(Scope::Key(K));
        let after = g.next();
        for purpose in [Use::Write, Use::Promote] {
            assert!(!g.still_applies(K, before, purpose));
            assert!(g.still_applies(K, after, purpose));
            assert!(g.still_applies(OTHER, before, purpose));
        }
    }

    #[test]
    fn a_clear_covers_every_key_taken_before_it() {
        let g = Generations::new(8);
        let before = g.next();
        g.invalidate(Scope::All);
        let after = g.next();
        for purpose in [Use::Write, Use::Promote] {
            assert!(!g.still_applies(K, before, purpose));
            assert!(!g.still_applies(OTHER, before, purpose));
            assert!(g.still_applies(K, after, purpose));
        }
    }

    #[test]
    fn a_tag_or_prefix_invalidation_stops_promotions_not_queued_writes() {
        let g = Generations::new(8);
        let before = g.next();
        g.invalidate(Scope::Unlisted);
        assert!(!g.still_applies(K, before, Use::Promote));
        assert!(g.still_applies(K, before, Use::Write));
        assert!(g.still_applies(K, g.next(), Use::Promote));
    }

    #[test]
    fn nothing_is_promoted_while_an_unlisted_invalidation_runs() {
        let g = Generations::new(8);
        let run = g.begin_unlisted();
        // Taken after the run began, still not promoted while it runs.
        let during = g.next();
        assert!(!g.still_applies(K, during, Use::Promote));
        assert!(g.still_applies(K, during, Use::Write));
        drop(run);
        // Recorded when it ended: what was read during it stays out.
        assert!(!g.still_applies(K, during, Use::Promote));
        assert!(g.still_applies(K, g.next(), Use::Promote));
    }

    #[test]
    fn no_generation_never_applies() {
        let g = Generations::new(8);
        assert!(!g.still_applies(K, Generation::NONE, Use::Promote));
        assert!(!g.still_applies(K, Generation::NONE, Use::Write));
    }
}
