//! Request coalescing: one upstream call per key, however many requests
//! miss at once. Waiters are woken by a `watch` channel (no polling).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::sync::OnceLock;

use tokio::sync::Notify;

use crate::entry::Entry;
use crate::key::KeyHash;

/// What the leader of a flight found.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// The origin's response was stored: waiters answer from it
    /// (`collapsed` misses: the flight reached the origin).
    Stored(Arc<Entry>),
    /// The answer was found in a cache tier (an L1 entry stored since the
    /// look-up, or the leader's L2 read): waiters answer from it, if its
    /// freshness suits their own directives, as hits of that tier.
    Cached(Arc<Entry>, crate::observe::Tier),
    /// The leader found this entry in L2: each waiter judges it as its own
    /// find (`Cache::judge`), as it would judge the same entry in L1.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Found(Arc<Entry>),
    /// The response could not be shared; waiters make their own calls.
    Pass,
    /// The upstream failed and the stale entry was served in its place:
    /// waiters may serve it too (stale-if-error) instead of calling again.
    StaleIfError(Arc<Entry>),
    /// The call failed; waiters make their own calls.
    Failed,
    /// The leader was cancelled before it finished: waiters join (or lead)
    /// a new flight.
    Abandoned,
}

/// One upstream call in progress: its outcome, once known, and the waiters
/// to wake. Cheaper than a channel: nothing is allocated beyond the `Arc`,
/// and finishing a flight nobody waits on costs almost nothing.
#[derive(Debug, Default)]
pub(crate) struct Flight {
    /// Flights are numbered in the order they start: a flight numbered
    /// above a request's [`epoch`](InFlight::epoch) started after it.
    id: u64,
    outcome: OnceLock<Outcome>,
    notify: Notify,
}

impl Flight {
    /// Whether this flight started after `epoch` was read.
    pub(crate) fn started_after(&self, epoch: u64) -> bool {
        self.id > epoch
    }
}

type Slot = Arc<Flight>;

#[derive(Debug)]
pub(crate) struct InFlight {
    map: Arc<Mutex<HashMap<KeyHash, Slot>>>,
    max: usize,
    /// The number of the last flight started.
    started: AtomicU64,
}

/// The result of joining a flight.
#[derive(Debug)]
pub(crate) enum Join {
    /// This request makes the upstream call and must complete the guard.
    Leader(FlightGuard),
    /// Another request is making the call.
    Waiter(Slot),
    /// Too many flights in progress: make the call alone.
    Full,
}

impl InFlight {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            map: Arc::new(Mutex::new(HashMap::new())),
            max,
            started: AtomicU64::new(0),
        }
    }

    /// The number of the last flight started: flights numbered above it
    /// start later (see [`Flight::started_after`]).
    pub(crate) fn epoch(&self) -> u64 {
        self.started.load(Ordering::Acquire)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Joins the flight for `key`, starting one if there is none.
    pub(crate) fn join(&self, key: KeyHash) -> Join {
        let Ok(mut map) = self.map.lock() else {
            return Join::Full;
        };
        if let Some(flight) = map.get(&key) {
            return Join::Waiter(Arc::clone(flight));
        }
        if map.len() >= self.max {
            return Join::Full;
        }
        let flight = Arc::new(Flight {
            id: self.started.fetch_add(1, Ordering::AcqRel) + 1,
            ..Flight::default()
        });
        map.insert(key, Arc::clone(&flight));
        Join::Leader(FlightGuard {
            map: Arc::clone(&self.map),
            key,
            flight,
            done: false,
        })
    }

    /// Starts a flight only if none is running (background refreshes).
    pub(crate) fn try_lead(&self, key: KeyHash) -> Option<FlightGuard> {
        match self.join(key) {
            Join::Leader(g) => Some(g),
            _ => None,
        }
    }
}

/// Held by the request making the upstream call. Dropping it without
/// [`complete`](FlightGuard::complete) (a cancelled request) tells waiters
/// the flight was abandoned, so they form a new one at once.
#[derive(Debug)]
pub(crate) struct FlightGuard {
    map: Arc<Mutex<HashMap<KeyHash, Slot>>>,
    key: KeyHash,
    flight: Slot,
    done: bool,
}

impl FlightGuard {
    pub(crate) fn complete(mut self, outcome: Outcome) {
        self.finish(outcome);
    }

    fn finish(&mut self, outcome: Outcome) {
        if self.done {
            return;
        }
        self.done = true;
        // Outcome first, then wake: a waiter either sees the outcome when it
        // checks, or was registered before the wake-up.
        let _ = self.flight.outcome.set(outcome);
        self.flight.notify.notify_waiters();
        if let Ok(mut map) = self.map.lock() {
            if map
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                map.remove(&self.key);
            }
        }
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.finish(Outcome::Abandoned);
    }
}

/// Waits for the flight's outcome, at most `timeout`. `None` on timeout.
pub(crate) async fn wait(flight: &Flight, timeout: Duration) -> Option<Outcome> {
    let notified = flight.notify.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    if let Some(o) = flight.outcome.get() {
        return Some(o.clone());
    }
    match tokio::time::timeout(timeout, notified).await {
        Ok(()) => Some(flight.outcome.get().cloned().unwrap_or(Outcome::Abandoned)),
        Err(_) => flight.outcome.get().cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leader_wakes_waiters_and_clears_slot() {
        let f = InFlight::new(10);
        let k = KeyHash(1);
        let Join::Leader(g) = f.join(k) else {
            panic!("first is leader")
        };
        let Join::Waiter(rx) = f.join(k) else {
            panic!("second waits")
        };
        let w = tokio::spawn(async move { wait(&rx, Duration::from_secs(5)).await });
        g.complete(Outcome::Pass);
        assert!(matches!(w.await.unwrap(), Some(Outcome::Pass)));
        assert_eq!(f.len(), 0);
        assert!(matches!(f.join(k), Join::Leader(_)));
    }

    #[tokio::test]
    async fn dropped_leader_abandons_the_flight() {
        let f = InFlight::new(10);
        let k = KeyHash(2);
        let g = f.try_lead(k).unwrap();
        assert!(f.try_lead(k).is_none());
        let Join::Waiter(rx) = f.join(k) else {
            panic!()
        };
        drop(g);
        assert!(matches!(
            wait(&rx, Duration::from_secs(5)).await,
            Some(Outcome::Abandoned)
        ));
        assert_eq!(f.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiter_times_out() {
        let f = InFlight::new(10);
        let _g = f.try_lead(KeyHash(3)).unwrap();
        let Join::Waiter(rx) = f.join(KeyHash(3)) else {
            panic!()
        };
        assert!(wait(&rx, Duration::from_millis(50)).await.is_none());
    }

    #[test]
    fn flights_are_numbered_in_start_order() {
        let f = InFlight::new(10);
        let before = f.epoch();
        let Join::Leader(g) = f.join(KeyHash(7)) else {
            panic!()
        };
        let Join::Waiter(w) = f.join(KeyHash(7)) else {
            panic!()
        };
        assert!(w.started_after(before));
        let during = f.epoch();
        assert!(
            !w.started_after(during),
            "a flight did not start after itself"
        );
        g.complete(Outcome::Pass);
        let Join::Leader(g2) = f.join(KeyHash(7)) else {
            panic!()
        };
        assert!(g2.flight.started_after(during));
    }

    #[test]
    fn bounded() {
        let f = InFlight::new(2);
        let _a = f.try_lead(KeyHash(1)).unwrap();
        let _b = f.try_lead(KeyHash(2)).unwrap();
        assert!(matches!(f.join(KeyHash(3)), Join::Full));
    }
}
