//! Sampling reads without a shared write: each thread counts down to its
//! next sampled read, the gaps drawn at random around one in `n`, so that a
//! regular pattern of reads (two keys read in turn) is never sampled on one
//! key only. Each user keeps its own countdown (a `thread_local!` of its
//! own, [`Countdown`]), so that one sampler never skews another.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::LocalKey;

/// A thread's reads left before its next sampled one (0: not started).
pub(crate) type Countdown = LocalKey<Cell<u32>>;

/// Seeds each thread's generator differently.
static SEEDS: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

thread_local! {
    /// This thread's random state (xorshift64, never 0).
    static STATE: Cell<u64> = Cell::new(seed());
}

/// A thread's first random state.
fn seed() -> u64 {
    let n = SEEDS.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    // splitmix64's finaliser spreads consecutive seeds.
    let mut z = n;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1
}

/// The reads up to the next sampled one: uniform in `1..=2n - 1` (`n` on
/// average).
fn gap(n: u32) -> u32 {
    let x = STATE
        .try_with(|s| {
            let mut x = s.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.set(x);
            x
        })
        .unwrap_or(u64::from(n));
    let span = (2 * u64::from(n)).saturating_sub(1).max(1);
    // Past `u32::MAX` (for `n` over 2^31) the gap is `n`.
    u32::try_from(x % span + 1).unwrap_or(n)
}

/// Whether this read is one of the sampled ones: one in `n` on average
/// (every read for `n` ≤ 1), counted down in this thread's `left`. Costs
/// one thread-local read and write, no shared write.
#[inline]
pub(crate) fn one_in(left: &'static Countdown, n: u32) -> bool {
    if n <= 1 {
        return true;
    }
    left.try_with(|left| {
        let k = match left.get() {
            0 => gap(n),
            k => k,
        };
        let sampled = k == 1;
        left.set(if sampled { gap(n) } else { k - 1 });
        sampled
    })
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static LEFT: Cell<u32> = const { Cell::new(0) };
    }

    #[test]
    fn one_read_in_n_on_average_with_gaps_under_2n() {
        assert!((0..100).all(|_| one_in(&LEFT, 1)));
        let n = 16;
        let (mut sampled, mut since, mut widest) = (0u32, 0u32, 0u32);
        for _ in 0..16_000 {
            since += 1;
            if one_in(&LEFT, n) {
                sampled += 1;
                widest = widest.max(since);
                since = 0;
            }
        }
        assert!((700..=1_300).contains(&sampled), "{sampled}");
        assert!(widest < 2 * n, "{widest}");
    }

    #[test]
    fn reads_in_turn_are_sampled_on_both_keys() {
        // Two keys read in turn, sampled one in 2: a plain counter would
        // sample one of them only.
        let mut per_key = [0u32; 2];
        for i in 0..2_000 {
            if one_in(&LEFT, 2) {
                per_key[i % 2] += 1;
            }
        }
        assert!(per_key.iter().all(|&k| k > 300), "{per_key:?}");
    }
}
