//! Wall-clock time as the cache sees it, replaceable in tests.
//!
//! Every freshness decision is made in wall-clock milliseconds since the Unix
//! epoch, so an entry means the same thing in every process that reads it.
//! [`SystemClock`] is the default; [`ManualClock`] is a clock a test moves by
//! hand, so TTL behaviour is tested without sleeping.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time, in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time in milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;
}

/// The system's wall clock.
///
/// Read through the CPU's time-stamp counter (via `quanta`) from a
/// per-thread anchor that is taken again from [`SystemTime`] every 50 ms:
/// a fresh hit reads the clock once, and `SystemTime::now`
/// costs up to ~100 ns on some virtual machines where the counter costs a
/// few. Between anchors the reading can differ from `SystemTime` by the
/// counter's calibration error (parts per million), far below the clock's
/// millisecond resolution; a wall-clock step (NTP, a manual change) shows
/// within one period.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// How long a thread's anchor is trusted before `SystemTime` is read again.
const REANCHOR: u64 = 50_000_000; // 50 ms, in nanoseconds

thread_local! {
    /// This thread's anchor: (counter reading, wall-clock nanoseconds).
    static ANCHOR: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// The process's calibrated time-stamp counter, shared by the clock and
/// the latency timing.
pub(crate) fn tsc() -> &'static quanta::Clock {
    static TSC: OnceLock<quanta::Clock> = OnceLock::new();
    TSC.get_or_init(quanta::Clock::new)
}

fn system_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Clock for SystemClock {
    #[inline]
    fn now_millis(&self) -> u64 {
        let tsc = tsc();
        let raw = tsc.raw();
        ANCHOR
            .try_with(|anchor| {
                let (at, wall) = anchor.get();
                if at != 0 && raw >= at {
                    let since = tsc.delta_as_nanos(at, raw);
                    if since < REANCHOR {
                        return (wall + since) / 1_000_000;
                    }
                }
                let wall = system_nanos();
                anchor.set((tsc.raw().max(1), wall));
                wall / 1_000_000
            })
            .unwrap_or_else(|_| system_nanos() / 1_000_000)
    }
}

/// A clock that only moves when told to. Clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use tower_tiered_cache::{Clock, ManualClock};
///
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now_millis(), 3_000);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock that reads `start_millis` until moved.
    pub fn new(start_millis: u64) -> Self {
        Self {
            now: Arc::new(AtomicU64::new(start_millis)),
        }
    }

    /// A clock starting at the system's current time.
    pub fn starting_now() -> Self {
        Self::new(SystemClock.now_millis())
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    /// Sets the clock to an absolute time (milliseconds since the epoch).
    pub fn set(&self, millis: u64) {
        self.now.store(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now_millis(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_follows_system_time() {
        // Across several anchor periods, each reading lies between two
        // `SystemTime` readings taken around it (1 ms of slack for the
        // counter's calibration and for rounding down).
        let until = SystemTime::now() + Duration::from_millis(200);
        let mut reads = 0u32;
        while SystemTime::now() < until {
            let before = system_nanos() / 1_000_000;
            let now = SystemClock.now_millis();
            let after = system_nanos() / 1_000_000;
            assert!(
                now + 1 >= before && now <= after + 1,
                "{before} <= {now} <= {after}"
            );
            reads += 1;
            std::thread::sleep(Duration::from_micros(500));
        }
        assert!(reads > 10);
    }
}
