//! A rolling window of lookups and hits (the last five minutes).

use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(test)]
use crate::stats::stripe;

/// Slot length in milliseconds.
pub(crate) const SLOT_MS: u64 = 5_000;
/// Slots in the window: 60 × 5 s = 5 minutes.
pub(crate) const SLOTS: u64 = 60;
/// Stripes per slot: one per core, 2 to 16 (a power of two); every
/// request adds to its thread's stripe.
fn stripes() -> usize {
    crate::stats::stripes_for_cores(2, 16)
}

/// A line pair of its own (adjacent-line prefetch moves lines in pairs),
/// so that threads counting in neighbouring stripes do not share one.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot {
    /// Which 5-second period (`now / SLOT_MS`) the counts belong to.
    epoch: AtomicU64,
    /// Lookups in the low 32 bits, served lookups in the high 32 (one
    /// atomic add per request; a 5-second slot of one stripe never sees
    /// 2^32 requests).
    lookups_served: AtomicU64,
    passes: AtomicU64,
}

/// Counts per 5-second slot, per stripe. A slot is reused when its period
/// comes round again; counts from a period older than the window are never
/// read.
#[derive(Debug)]
pub(crate) struct Window {
    slots: Box<[Slot]>,
    /// Stripes per slot, a power of two.
    stripes: usize,
}

impl Default for Window {
    fn default() -> Self {
        let stripes = stripes();
        Self {
            slots: (0..SLOTS as usize * stripes)
                .map(|_| Slot::default())
                .collect(),
            stripes,
        }
    }
}

/// What the window holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WindowCounts {
    pub(crate) lookups: u64,
    pub(crate) served: u64,
    pub(crate) passes: u64,
}

impl Window {
    /// Counts one request at `now_ms`: a lookup (`served` when answered
    /// from storage) or a pass.
    #[cfg(test)]
    pub(crate) fn record(&self, now_ms: u64, lookup: bool, served: bool) {
        self.record_at(stripe(), now_ms, lookup, served);
    }

    /// Records with the thread's stripe already known.
    #[inline]
    pub(crate) fn record_at(&self, stripe: usize, now_ms: u64, lookup: bool, served: bool) {
        let epoch = now_ms / SLOT_MS + 1; // 0 marks a slot never used
        let i = (epoch % SLOTS) as usize * self.stripes + (stripe & (self.stripes - 1));
        let slot = &self.slots[i];
        let seen = slot.epoch.load(Ordering::Relaxed);
        if seen != epoch {
            if seen > epoch {
                return; // a clock that went back: drop the count
            }
            if slot
                .epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                // Counts added by others between the swap and these stores
                // are lost: at most a few, once per slot per period.
                slot.lookups_served.store(0, Ordering::Relaxed);
                slot.passes.store(0, Ordering::Relaxed);
            }
        }
        if lookup {
            let add = 1 | (u64::from(served) << 32);
            slot.lookups_served.fetch_add(add, Ordering::Relaxed);
        } else {
            slot.passes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts of the periods within the window ending at `now_ms`.
    pub(crate) fn read(&self, now_ms: u64) -> WindowCounts {
        let epoch = now_ms / SLOT_MS + 1;
        let oldest = epoch.saturating_sub(SLOTS - 1);
        let mut out = WindowCounts::default();
        for slot in self.slots.iter() {
            let e = slot.epoch.load(Ordering::Acquire);
            if e >= oldest && e <= epoch && e != 0 {
                let both = slot.lookups_served.load(Ordering::Relaxed);
                out.lookups += both & 0xffff_ffff;
                out.served += both >> 32;
                out.passes += slot.passes.load(Ordering::Relaxed);
            }
        }
        out
    }

    pub(crate) fn reset(&self) {
        for slot in self.slots.iter() {
            slot.epoch.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_age_out_after_five_minutes() {
        let counts = |lookups, served, passes| WindowCounts {
            lookups,
            served,
            passes,
        };
        let w = Window::default();
        let t0 = 1_700_000_000_000;
        for _ in 0..10 {
            w.record(t0, true, true);
        }
        w.record(t0 + 1_000, true, false);
        w.record(t0 + 2_000, false, false);
        assert_eq!(w.read(t0 + 2_000), counts(11, 10, 1));
        // 4 minutes later: all still inside
        w.record(t0 + 240_000, true, false);
        assert_eq!(w.read(t0 + 240_000).lookups, 12);
        // 5 minutes and a slot later: the first period has left
        let later = t0 + 300_000 + SLOT_MS;
        assert_eq!(w.read(later), counts(1, 0, 0));
        // a slot reused for a new period starts from zero
        w.record(t0 + 600_000, true, true);
        assert_eq!(w.read(t0 + 600_000), counts(1, 1, 0));
        w.reset();
        assert_eq!(w.read(t0 + 600_000), WindowCounts::default());
    }
}
