//! Circuit breakers: after `threshold` consecutive failures one opens for
//! `open_for`; then one probe is let through, and its result closes or
//! re-opens it.
//!
//! The upstream has one breaker per request label ([`Breakers`]): the
//! route template on axum, the upstream host on clients, or the
//! configured label (see [`LabelSource`](crate::LabelSource)). The table
//! has a slot for every label index the label table can hand out
//! (`max_labels` plus `default` and `other`), made up front, so it is
//! bounded like the label set. One failing upstream (or route) opens its
//! own breaker only; the others keep calling their origins.
//!
//! What counts against an upstream ([`counts_as_down`]): a transport error
//! (the inner service's `Err`), a timeout, and the statuses that say the
//! upstream itself is unavailable: 502, 503 and 504. Any other response,
//! a 500 included, is that URL's answer and shows the upstream is up: it
//! resets the count (a 5xx is still an error for stale-if-error).
//!
//! The L2 tier has one [`Breaker`] of its own. There a timeout is only
//! suspicion ([`Breaker::record_timeout`]): the tier confirms a run of
//! them with a probe before the breaker opens ([`Breaker::trip`]), or
//! forgives them ([`Breaker::excuse`]); errors open it as above.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use http::StatusCode;

use crate::observe::labels::OTHER_INDEX;

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

impl BreakerState {
    /// Closed < half-open < open: the worse of two states is the greater.
    fn severity(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }

    /// The name used in metrics and JSON (`closed`, `open`, `half_open`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// Whether an upstream response with `status` says the upstream itself is
/// down (502 Bad Gateway, 503 Service Unavailable, 504 Gateway Timeout):
/// those, transport errors and timeouts feed the upstream breaker. Any
/// other status (500 included) is the answer for that URL.
pub(crate) fn counts_as_down(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
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
    /// The start of the current open period.
    opened_at: AtomicU64,
    /// When it last left the closed state (it has not closed since).
    since: AtomicU64,
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
            since: AtomicU64::new(0),
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

    /// The upstream answered: the count starts again and the breaker
    /// closes. Cheap when already closed with no failures (no store).
    pub(crate) fn record_success(&self) {
        if self.failures.load(Ordering::Acquire) != 0 {
            self.failures.store(0, Ordering::Release);
        }
        if self.state.load(Ordering::Acquire) != CLOSED {
            self.state.store(CLOSED, Ordering::Release);
        }
    }

    /// A call failed at `now`: a transport error or a timeout (which
    /// callers record here too), or a status [`counts_as_down`].
    pub(crate) fn record_failure(&self, now: u64) {
        let n = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        match self.state.load(Ordering::Acquire) {
            CLOSED if n >= self.threshold => {
                self.trip(now);
            }
            HALF_OPEN => {
                // The probe failed: another open period.
                self.opened_at.store(now, Ordering::Release);
                if self
                    .state
                    .compare_exchange(HALF_OPEN, OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.opens.fetch_add(1, Ordering::Relaxed);
                }
            }
            OPEN => {
                // Past the open period, calls that did not take the probe
                // (foreground requests with nothing stale to serve) go
                // through: a failure among them re-opens the breaker, as a
                // failed probe would.
                let opened = self.opened_at.load(Ordering::Acquire);
                if now >= opened.saturating_add(self.open_for_ms)
                    && self
                        .opened_at
                        .compare_exchange(opened, now, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    self.opens.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ => {}
        }
    }

    /// A call timed out at `now`: suspicion, not evidence (the other side
    /// may be slow, or this process may not have been scheduled). While
    /// closed it counts like a failure but never opens the breaker: the
    /// return value is `true` once the consecutive count reaches the
    /// threshold, and the caller confirms with a probe, then calls
    /// [`trip`](Self::trip) (no answer) or [`excuse`](Self::excuse) (an
    /// answer). Open or half-open, a timeout is a failure as any other
    /// (the other side was already judged down).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn record_timeout(&self, now: u64) -> bool {
        if self.state.load(Ordering::Acquire) != CLOSED {
            self.record_failure(now);
            return false;
        }
        let n = self
            .failures
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        n >= self.threshold
    }

    /// Opens the breaker at `now` if it is still closed (enough failures, or
    /// a probe confirmed a run of timeouts). `true` when this call opened it.
    pub(crate) fn trip(&self, now: u64) -> bool {
        if self.state.load(Ordering::Acquire) != CLOSED {
            return false;
        }
        self.opened_at.store(now, Ordering::Release);
        if self
            .state
            .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.since.store(now, Ordering::Release);
            self.opens.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Failures (or timeouts) in a row so far.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn consecutive(&self) -> u32 {
        self.failures.load(Ordering::Acquire)
    }

    /// A probe showed the other side answers: the timeouts counted were
    /// this side's own lateness. While closed the consecutive count starts
    /// again; returns how many it forgave (0 when not closed: a breaker
    /// opened meanwhile on evidence stays open).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn excuse(&self) -> u32 {
        if self.state.load(Ordering::Acquire) != CLOSED {
            return 0;
        }
        self.failures.swap(0, Ordering::AcqRel)
    }

    /// Records an upstream response: a failure when its status
    /// [`counts_as_down`], else a success (the upstream answered).
    pub(crate) fn record_response(&self, status: StatusCode, now: u64) {
        if counts_as_down(status) {
            self.record_failure(now);
        } else {
            self.record_success();
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

    /// What an operator sees of this breaker at `now`.
    pub(crate) fn status(&self, label: String, now: u64) -> UpstreamBreaker {
        UpstreamBreaker {
            label,
            state: self.state(now),
            since_ms: self.since.load(Ordering::Acquire),
            probe_at_ms: self
                .opened_at
                .load(Ordering::Acquire)
                .saturating_add(self.open_for_ms),
            consecutive_failures: self.failures.load(Ordering::Acquire),
            opens: self.opens(),
        }
    }
}

/// The upstream breakers, one per label index, made up front: as many as
/// the label table can hand out, so the table is bounded like it.
#[derive(Debug)]
pub(crate) struct Breakers {
    table: Box<[Breaker]>,
}

impl Breakers {
    /// `slots` breakers (at least `default` and `other`).
    pub(crate) fn new(slots: usize, threshold: u32, open_for: Duration) -> Self {
        let slots = slots.max(usize::from(OTHER_INDEX) + 1);
        Self {
            table: (0..slots)
                .map(|_| Breaker::new(threshold, open_for))
                .collect(),
        }
    }

    /// The breaker of a label index (`other`'s beyond the table, which
    /// the label table never hands out).
    #[inline]
    pub(crate) fn get(&self, label: u16) -> &Breaker {
        self.table
            .get(usize::from(label))
            .unwrap_or(&self.table[usize::from(OTHER_INDEX)])
    }

    /// The worst state of any breaker: open if one is open, else
    /// half-open if one is probing, else closed.
    pub(crate) fn worst(&self, now: u64) -> BreakerState {
        let mut worst = BreakerState::Closed;
        for b in self.table.iter() {
            let s = b.state(now);
            if s.severity() > worst.severity() {
                worst = s;
                if s == BreakerState::Open {
                    break;
                }
            }
        }
        worst
    }

    /// Times any of them has opened.
    pub(crate) fn opens(&self) -> u64 {
        self.table.iter().map(Breaker::opens).sum()
    }

    /// The label indexes and breakers that are not closed at `now`.
    pub(crate) fn not_closed(&self, now: u64) -> impl Iterator<Item = (u16, &Breaker)> + '_ {
        self.table
            .iter()
            .enumerate()
            .filter(move |(_, b)| b.state(now) != BreakerState::Closed)
            .map(|(i, b)| (i as u16, b))
    }

    /// The label indexes and breakers that have opened at least once.
    pub(crate) fn ever_opened(&self) -> impl Iterator<Item = (u16, &Breaker)> + '_ {
        self.table
            .iter()
            .enumerate()
            .filter(|(_, b)| b.opens() > 0)
            .map(|(i, b)| (i as u16, b))
    }
}

/// An upstream circuit breaker that is not closed, by label (see
/// [`Cache::upstream_breakers`](crate::Cache::upstream_breakers)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct UpstreamBreaker {
    /// The request label whose upstream calls it counts (route template,
    /// upstream host or configured label; `default` for requests with
    /// none, `other` beyond `max_labels`).
    pub label: String,
    /// Open (calls with a usable stale entry are answered from it, no
    /// background refreshes) or half-open (a probe may go through).
    pub state: BreakerState,
    /// When it opened, ms since the Unix epoch on the cache's clock; it has
    /// not closed since (re-opening after a failed probe keeps this).
    pub since_ms: u64,
    /// When the current open period ends and a probe may go through, ms
    /// since the Unix epoch (in the past while half-open).
    pub probe_at_ms: u64,
    /// Failures counted since the last success.
    pub consecutive_failures: u32,
    /// Times this breaker has opened (failed probes included).
    pub opens: u64,
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

    #[test]
    fn only_gateway_statuses_count_as_down() {
        for code in [502, 503, 504] {
            assert!(
                counts_as_down(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [200, 304, 404, 429, 500, 501, 505, 507, 599] {
            assert!(
                !counts_as_down(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        let b = Breaker::new(2, Duration::from_secs(30));
        for _ in 0..10 {
            b.record_response(StatusCode::INTERNAL_SERVER_ERROR, 0);
        }
        assert_eq!(b.state(0), BreakerState::Closed, "500s are answers");
        b.record_response(StatusCode::BAD_GATEWAY, 1);
        b.record_response(StatusCode::INTERNAL_SERVER_ERROR, 2);
        b.record_response(StatusCode::GATEWAY_TIMEOUT, 3);
        assert_eq!(b.state(3), BreakerState::Closed, "a 500 reset the count");
        b.record_response(StatusCode::SERVICE_UNAVAILABLE, 4);
        assert_eq!(b.state(4), BreakerState::Open);
        assert_eq!(b.status("x".into(), 4).since_ms, 4);
    }

    #[test]
    fn a_failure_past_the_open_period_without_a_probe_reopens() {
        // Foreground calls do not take the probe (`allow`): past the open
        // period they go through, and one failing re-opens the breaker.
        let b = Breaker::new(1, Duration::from_secs(30));
        b.record_failure(1_000);
        assert_eq!(b.state(31_000), BreakerState::HalfOpen);
        b.record_failure(31_000);
        assert_eq!(b.state(31_001), BreakerState::Open);
        assert_eq!(b.opens(), 2);
        let st = b.status("x".into(), 31_001);
        assert_eq!((st.since_ms, st.probe_at_ms), (1_000, 61_000));
        b.record_success();
        assert_eq!(b.state(31_002), BreakerState::Closed);
    }

    #[test]
    fn timeouts_alone_never_open_a_closed_breaker() {
        let b = Breaker::new(3, Duration::from_secs(5));
        assert!(!b.record_timeout(10));
        assert!(!b.record_timeout(10));
        assert!(b.record_timeout(10), "the threshold asks for a probe");
        assert!(b.record_timeout(11), "and keeps asking while unconfirmed");
        assert_eq!(b.state(11), BreakerState::Closed);
        assert!(b.allow(11));
        // The probe answered: our own lateness, the count starts again.
        assert_eq!(b.excuse(), 4);
        assert!(!b.record_timeout(12));
        assert_eq!(b.status("l2".into(), 12).consecutive_failures, 1);
        // Evidence still opens at the threshold, timeouts included.
        b.record_timeout(13);
        b.record_failure(13);
        assert_eq!(b.state(13), BreakerState::Open);
        assert_eq!(b.excuse(), 0, "an open breaker is not excused");
        assert_eq!(b.state(13), BreakerState::Open);
        assert_eq!(b.opens(), 1);
    }

    #[test]
    fn a_confirmed_suspicion_trips_once_and_a_timeout_past_closed_is_a_failure() {
        let b = Breaker::new(2, Duration::from_secs(5));
        b.record_timeout(100);
        assert!(b.record_timeout(100));
        assert!(b.trip(150));
        assert!(!b.trip(151), "already open");
        assert_eq!(b.state(150), BreakerState::Open);
        assert!(!b.allow(5_149));
        let st = b.status("l2".into(), 150);
        assert_eq!((st.since_ms, st.probe_at_ms, st.opens), (150, 5_150, 1));
        // The half-open probe times out: open again, as for any failure.
        assert!(b.allow(5_150));
        assert!(!b.record_timeout(5_160));
        assert_eq!(b.state(5_161), BreakerState::Open);
        assert_eq!(b.opens(), 2);
        b.record_success();
        assert_eq!(b.state(5_162), BreakerState::Closed);
    }

    #[test]
    fn table_is_bounded_and_keeps_labels_apart() {
        let t = Breakers::new(5, 2, Duration::from_secs(30));
        assert_eq!(t.table.len(), 5);
        // Beyond the table: `other`'s breaker (never handed out in practice).
        assert!(std::ptr::eq(t.get(1000), t.get(OTHER_INDEX)));
        assert!(!std::ptr::eq(t.get(2), t.get(3)));
        t.get(2).record_failure(10);
        t.get(2).record_failure(10);
        t.get(3).record_failure(10);
        assert_eq!(t.get(2).state(10), BreakerState::Open);
        assert_eq!(t.get(3).state(10), BreakerState::Closed);
        assert_eq!(t.worst(10), BreakerState::Open);
        assert_eq!(t.worst(30_010), BreakerState::HalfOpen);
        let open: Vec<u16> = t.not_closed(10).map(|(i, _)| i).collect();
        assert_eq!(open, [2]);
        assert_eq!(t.opens(), 1);
        t.get(2).record_success();
        assert_eq!(t.worst(11), BreakerState::Closed);
        assert_eq!(t.not_closed(11).count(), 0);
        assert_eq!(t.ever_opened().count(), 1);
        // Too few slots still has `default` and `other`.
        assert_eq!(Breakers::new(0, 1, Duration::ZERO).table.len(), 2);
    }
}
