//! How often each key is read, for adaptive TTL: a table of fixed capacity
//! (like the L2 promotion counters), written off the hit path.
//!
//! A read is counted on the entry that answered it ([`Reads`]: every read
//! up to a few, then one in `read_sample` per thread adding that many, a
//! relaxed atomic, no lock). Its count is carried here, under the
//! entry's key, when the entry stops answering: replaced by a new response
//! or a refresh, dropped past its last useful instant, or at once for a
//! copy read from L2 that L1 does not keep. When the cache stores a new
//! entry whose TTL it chooses itself, it asks for the key's
//! [`Rate`]: reads per window.
//!
//! The table holds at most `capacity` keys, whatever their number: a key
//! pushed out is a key not watched (its TTL is not adapted until it is
//! watched again for a while).

use std::time::Duration;

use quick_cache::sync::{Cache as QuickCache, EntryAction, EntryResult};

use crate::entry::Reads;
use crate::key::KeyHash;

/// A key's reads since `since` (ms since the Unix epoch).
#[derive(Clone, Copy, Debug)]
struct Seen {
    since: u64,
    reads: u32,
}

/// A key's read rate, as [`ReadCounts::rate`] estimates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rate {
    /// Reads per window: the reads counted, averaged over the time the key
    /// has been watched when that is longer than a window.
    pub(crate) per_window: u64,
    /// Whether the key has been watched for a whole window: only then does
    /// a low count mean the key is read rarely.
    pub(crate) full: bool,
}

/// Reads per key over a sliding window, for at most `capacity` keys.
pub(crate) struct ReadCounts {
    seen: QuickCache<KeyHash, Seen>,
    /// The window, ms (at least 1).
    window: u64,
}

impl std::fmt::Debug for ReadCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCounts")
            .field("keys", &self.seen.len())
            .field("window_ms", &self.window)
            .finish()
    }
}

impl ReadCounts {
    /// A table for at most `capacity` keys (at least 1), counting reads
    /// over `window`.
    pub(crate) fn new(capacity: usize, window: Duration) -> Self {
        Self {
            seen: QuickCache::new(capacity.max(1)),
            window: u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1),
        }
    }

    /// Keys watched now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }

    /// Carries the reads counted on an entry of `key` (stored at
    /// `stored_at`) since they were last carried.
    pub(crate) fn carry(&self, key: KeyHash, reads: &Reads, stored_at: u64, now: u64) {
        let n = reads.take();
        if n > 0 {
            self.add(key, n, stored_at.min(now));
        }
    }

    /// Adds `n` reads to `key`'s count; a key not watched yet is watched
    /// from `from`, when the reads began.
    fn add(&self, key: KeyHash, n: u32, from: u64) {
        let counted = self.seen.entry(&key, Some(Duration::ZERO), |_, seen| {
            seen.reads = seen.reads.saturating_add(n);
            EntryAction::Retain(())
        });
        if let EntryResult::Vacant(slot) = counted {
            let _ = slot.insert(Seen {
                since: from,
                reads: n,
            });
        }
        // `Timeout`: another thread is adding the key's first count at
        // this very moment; these reads are dropped.
    }

    /// `key`'s read rate at `now`, or `None` for a key not watched yet
    /// (watched from now on). Past a window, the count becomes one
    /// window's worth (the rate), so older reads weigh less and less.
    pub(crate) fn rate(&self, key: KeyHash, now: u64) -> Option<Rate> {
        let window = self.window;
        let found = self.seen.entry(&key, Some(Duration::ZERO), |_, seen| {
            EntryAction::Retain(Self::fold(seen, window, now))
        });
        match found {
            EntryResult::Retained(rate) => Some(rate),
            EntryResult::Vacant(slot) => {
                let _ = slot.insert(Seen {
                    since: now,
                    reads: 0,
                });
                None
            }
            _ => None,
        }
    }

    /// The rate of `seen` at `now`; watched for a window or more, `seen`
    /// becomes that rate over the last window.
    fn fold(seen: &mut Seen, window: u64, now: u64) -> Rate {
        let span = now.saturating_sub(seen.since);
        if span < window {
            return Rate {
                per_window: u64::from(seen.reads),
                full: false,
            };
        }
        // `span >= window`: the rate is at most the count, so it fits.
        let per_window = u128::from(seen.reads) * u128::from(window) / u128::from(span);
        let per_window = u32::try_from(per_window).unwrap_or(u32::MAX);
        *seen = Seen {
            since: now - window,
            reads: per_window,
        };
        Rate {
            per_window: u64::from(per_window),
            full: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::ReadCap;

    const WINDOW: Duration = Duration::from_secs(10);

    fn reads(n: u32) -> Reads {
        let r = Reads::default();
        for _ in 0..n {
            r.note(ReadCap::exact(u32::MAX));
        }
        r
    }

    #[test]
    fn a_key_is_judged_by_its_reads_per_window() {
        let counts = ReadCounts::new(16, WINDOW);
        let key = KeyHash(1);
        // Never seen: no rate, watched from now on.
        assert_eq!(counts.rate(key, 1_000), None);
        // Part of a window: the count as it is, not yet a full window.
        counts.carry(key, &reads(30), 1_000, 6_000);
        assert_eq!(
            counts.rate(key, 6_000),
            Some(Rate {
                per_window: 30,
                full: false
            })
        );
        // 60 reads over 20 s: 30 per 10 s window.
        counts.carry(key, &reads(30), 6_000, 21_000);
        let rate = counts.rate(key, 21_000).unwrap();
        assert_eq!(
            rate,
            Rate {
                per_window: 30,
                full: true
            }
        );
        // Folded into one window's worth: 30 more reads in the next 10 s
        // make 60 over 20 s, 30 per window again; none make 15.
        counts.carry(key, &reads(30), 21_000, 31_000);
        assert_eq!(counts.rate(key, 31_000).unwrap().per_window, 30);
        assert_eq!(counts.rate(key, 51_000).unwrap().per_window, 10);
        // A clock that goes back is a span of zero, never a panic.
        assert!(!counts.rate(key, 0).unwrap().full);
    }

    #[test]
    fn reads_are_carried_once_and_a_first_carry_starts_the_watch() {
        let counts = ReadCounts::new(16, WINDOW);
        let key = KeyHash(2);
        let r = reads(7);
        counts.carry(key, &r, 0, 20_000);
        counts.carry(key, &r, 0, 20_000);
        // Watched since the entry was stored, 20 s ago: 7 reads over two
        // windows.
        assert_eq!(
            counts.rate(key, 20_000),
            Some(Rate {
                per_window: 3,
                full: true
            })
        );
        r.note(ReadCap::exact(u32::MAX));
        counts.carry(key, &r, 0, 20_000);
        assert_eq!(counts.rate(key, 20_000).unwrap().per_window, 4);
        // Counts saturate.
        counts.add(key, u32::MAX, 0);
        assert_eq!(
            counts.rate(key, 20_000).unwrap().per_window,
            u64::from(u32::MAX)
        );
    }

    #[test]
    fn capacity_is_never_exceeded_with_a_million_distinct_keys() {
        let capacity = 1_000;
        let counts = ReadCounts::new(capacity, WINDOW);
        let one = reads(1);
        for i in 0..1_000_000u128 {
            let key = KeyHash(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
            if i % 2 == 0 {
                counts.rate(key, i as u64);
            } else {
                one.note(ReadCap::exact(u32::MAX));
                counts.carry(key, &one, 0, i as u64);
            }
            if i % 101 == 0 {
                assert!(counts.len() <= capacity, "{} keys at {i}", counts.len());
            }
        }
        assert!(counts.len() <= capacity, "{}", counts.len());
        assert!(counts.len() > capacity / 2, "{}", counts.len());
    }
}
