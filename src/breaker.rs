//! A circuit breaker on the upstream: after `threshold` consecutive
//! failures it opens for `open_for`; then one probe is let through, and its
//! result closes or re-opens it.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are skipped until the open period ends.
    Open,
    /// One probe call is in flight; its result decides.
    HalfOpen,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    open_for_ms: u64,
    failures: AtomicU32,
    state: AtomicU8,
    opened_at: AtomicU64,
    opens: AtomicU64,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for_ms: open_for.as_millis() as u64,
            failures: AtomicU32::new(0),
            state: AtomicU8::new(CLOSED),
            opened_at: AtomicU64::new(0),
            opens: AtomicU64::new(0),
        }
    }

    /// Whether a call may go ahead at `now`. In the open state, once the
    /// open period has passed, exactly one caller gets `true` (the probe).
    pub(crate) fn allow(&self, now: u64) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => {
                let opened = self.opened_at.load(Ordering::Acquire);
                now >= opened.saturating_add(self.open_for_ms)
                    && self
                        .state
                        .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
            }
            // A probe that never reported back (dropped) must not wedge the
            // breaker: after another open period, let one more through.
            _ => {
                let since = self.opened_at.load(Ordering::Acquire);
                now >= since.saturating_add(self.open_for_ms.saturating_mul(2))
                    && self
                        .opened_at
                        .compare_exchange(
                            since,
                            now.saturating_sub(self.open_for_ms),
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
            }
        }
    }

    pub(crate) fn record_success(&self) {
        self.failures.store(0, Ordering::Release);
        if self.state.load(Ordering::Acquire) != CLOSED {
            self.state.store(CLOSED, Ordering::Release);
        }
    }

    pub(crate) fn record_failure(&self, now: u64) {
        let n = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        let state = self.state.load(Ordering::Acquire);
        if state == HALF_OPEN || (state == CLOSED && n >= self.threshold) {
            self.opened_at.store(now, Ordering::Release);
            if self.state.swap(OPEN, Ordering::AcqRel) != OPEN {
                self.opens.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn state(&self, now: u64) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN if now
                >= self
                    .opened_at
                    .load(Ordering::Acquire)
                    .saturating_add(self.open_for_ms) =>
            {
                BreakerState::HalfOpen
            }
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    pub(crate) fn opens(&self) -> u64 {
        self.opens.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes() {
        let b = Breaker::new(3, Duration::from_secs(30));
        let t0 = 1_000_000;
        assert!(b.allow(t0));
        b.record_failure(t0);
        b.record_failure(t0);
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.record_success();
        b.record_failure(t0);
        b.record_failure(t0);
        assert!(b.allow(t0), "success reset the count");
        b.record_failure(t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert!(!b.allow(t0 + 29_999));
        // After the open period exactly one probe goes through.
        assert!(b.allow(t0 + 30_000));
        assert!(!b.allow(t0 + 30_000));
        // A failed probe re-opens it for another period.
        b.record_failure(t0 + 30_001);
        assert_eq!(b.state(t0 + 30_002), BreakerState::Open);
        assert!(!b.allow(t0 + 50_000));
        assert!(b.allow(t0 + 60_001));
        b.record_success();
        assert_eq!(b.state(t0 + 60_002), BreakerState::Closed);
        assert!(b.allow(t0 + 60_002));
        assert_eq!(b.opens(), 2);
    }
}
