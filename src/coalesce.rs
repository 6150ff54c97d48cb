//! Request coalescing: one upstream call per key, however many requests
//! miss at once. Waiters are woken by a `Notify` (no polling).
//!
//! The flights in progress are kept in shards (a power of two, at least
//! twice the cores), each a `Mutex<HashMap>`, chosen by the key's hash, so
//! misses on different keys seldom wait for one lock; one atomic count over
//! every shard keeps the total at most `max_in_flight`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::entry::Entry;
use crate::key::KeyHash;
use crate::sync::lock;

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
    /// Another instance's call stored it (the leader waited on that
    /// instance's lease, `CacheBuilder::distributed_coalescing`, and read
    /// it from L2): waiters answer from it as collapsed misses too.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Collapsed(Arc<Entry>),
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

/// The fewest shards of the in-flight map.
const MIN_SHARDS: usize = 8;
/// The most shards of the in-flight map.
const MAX_SHARDS: usize = 1024;

/// Shards for this machine: a power of two, at least twice the cores (so
/// that misses on different keys seldom meet on one lock), 8 to 1024.
fn shard_count() -> usize {
    static SHARDS: OnceLock<usize> = OnceLock::new();
    *SHARDS.get_or_init(|| shards_for(std::thread::available_parallelism().map_or(1, |n| n.get())))
}

/// Shards for `cores` cores (see [`shard_count`]).
fn shards_for(cores: usize) -> usize {
    (2 * cores)
        .next_power_of_two()
        .clamp(MIN_SHARDS, MAX_SHARDS)
}

/// One shard of the in-flight map, aligned so that two shards never share
/// a cache line (nor the pair of lines x86 prefetches together).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(Mutex<HashMap<KeyHash, Slot>>);

/// The flights in progress, by key, in shards chosen by the key's hash:
/// requests for different keys seldom take the same lock. Shared by the
/// map and every [`FlightGuard`].
#[derive(Debug)]
struct Table {
    shards: Box<[Shard]>,
    /// `shards.len() == 1 << bits`.
    bits: u32,
    max: usize,
    /// Written on every new flight, so on a cache line of its own: the
    /// fields above are read by every join.
    counts: Counts,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Counts {
    /// The flights in every shard together, never above `max`: raised (if
    /// below `max`) before a flight is inserted, lowered after it is
    /// removed, both under the shard's lock.
    count: AtomicUsize,
    /// The number of the last flight started.
    started: AtomicU64,
}

impl Table {
    /// The shard holding `key`'s flight: the top bits of a multiplicative
    /// hash of the key's two halves (keys are xxh3 hashes already; this
    /// also spreads small test keys).
    fn shard(&self, key: KeyHash) -> &Mutex<HashMap<KeyHash, Slot>> {
        &self.shards[self.shard_index(key)].0
    }

    fn shard_index(&self, key: KeyHash) -> usize {
        let folded = (key.0 as u64) ^ ((key.0 >> 64) as u64);
        (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - self.bits)) as usize
    }

    /// Takes one of the `max` places for a new flight; false when every
    /// place is taken. (One atomic: its modification order alone keeps the
    /// total at most `max`, so `Relaxed` suffices.)
    fn reserve(&self) -> bool {
        self.counts
            .count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }
}

#[derive(Debug)]
pub(crate) struct InFlight {
    table: Arc<Table>,
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
    /// A map of at most `max` flights at once, over every shard.
    pub(crate) fn new(max: usize) -> Self {
        Self::with_shards(max, shard_count())
    }

    /// `shards`: a power of two, at least 2.
    fn with_shards(max: usize, shards: usize) -> Self {
        debug_assert!(shards.is_power_of_two() && shards >= 2);
        Self {
            table: Arc::new(Table {
                shards: (0..shards).map(|_| Shard::default()).collect(),
                bits: shards.trailing_zeros(),
                max,
                counts: Counts::default(),
            }),
        }
    }

    /// The number of the last flight started: flights numbered above it
    /// start later (see [`Flight::started_after`]).
    pub(crate) fn epoch(&self) -> u64 {
        self.table.counts.started.load(Ordering::Acquire)
    }

    /// The flights in progress.
    pub(crate) fn len(&self) -> usize {
        self.table.counts.count.load(Ordering::Relaxed)
    }

    /// Joins the flight for `key`, starting one if there is none. Only
    /// `key`'s shard is locked.
    pub(crate) fn join(&self, key: KeyHash) -> Join {
        let table = &*self.table;
        let mut map = lock(table.shard(key));
        if let Some(flight) = map.get(&key) {
            return Join::Waiter(Arc::clone(flight));
        }
        if !table.reserve() {
            return Join::Full;
        }
        let flight = Arc::new(Flight {
            id: table.counts.started.fetch_add(1, Ordering::AcqRel) + 1,
            ..Flight::default()
        });
        map.insert(key, Arc::clone(&flight));
        drop(map);
        Join::Leader(FlightGuard {
            table: Arc::clone(&self.table),
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
    table: Arc<Table>,
    key: KeyHash,
    flight: Slot,
    done: bool,
}

impl FlightGuard {
    pub(crate) fn complete(mut self, outcome: Outcome) {
        self.finish(outcome);
    }

    /// Completes the flight with [`Outcome::Found`]`(entry)`, cloning the
    /// entry only for a flight somebody waits on: with no waiter, the
    /// caller's reference stays the only one (an L2 hit then gives the
    /// entry's header map to its response).
    #[cfg(feature = "redis")]
    pub(crate) fn complete_found(mut self, entry: &Arc<Entry>) {
        let mut map = lock(self.table.shard(self.key));
        // The map's reference and this guard's are the only ones: nobody
        // waits, and nobody can join (joins clone the flight under this
        // lock). Nobody will read the outcome, so none is set.
        if Arc::strong_count(&self.flight) == 2 && self.leave(&mut map) {
            self.done = true;
            return;
        }
        drop(map);
        self.finish(Outcome::Found(Arc::clone(entry)));
    }

    /// Removes this guard's flight from `map` (its shard, locked) if it is
    /// still there; whether it was.
    fn leave(&self, map: &mut HashMap<KeyHash, Slot>) -> bool {
        let ours = map
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight));
        if ours {
            map.remove(&self.key);
            self.table.counts.count.fetch_sub(1, Ordering::Relaxed);
        }
        ours
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
        self.leave(&mut lock(self.table.shard(self.key)));
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

    #[test]
    fn shards_are_a_power_of_two_twice_the_cores_within_bounds() {
        assert_eq!(shards_for(1), MIN_SHARDS);
        assert_eq!(shards_for(4), 8);
        assert_eq!(shards_for(6), 16);
        assert_eq!(shards_for(16), 32);
        assert_eq!(shards_for(100_000), MAX_SHARDS);
        assert_eq!(
            shard_count(),
            shards_for(std::thread::available_parallelism().unwrap().get())
        );
    }

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

    /// `n` keys, each in a shard of its own (as far as there are shards).
    fn keys_in_distinct_shards(f: &InFlight, n: usize) -> Vec<KeyHash> {
        let mut seen = std::collections::HashSet::new();
        // Bounded: keys that all land in a few shards fail the test, not
        // hang it.
        let keys: Vec<KeyHash> = (0..100_000)
            .map(KeyHash)
            .filter(|k| seen.insert(f.table.shard_index(*k)))
            .take(n)
            .collect();
        assert_eq!(keys.len(), n);
        keys
    }

    #[test]
    fn keys_differing_only_in_their_high_half_spread() {
        let f = InFlight::with_shards(10, 64);
        let shards: std::collections::HashSet<usize> = (0..256u128)
            .map(|i| f.table.shard_index(KeyHash(i << 64)))
            .collect();
        assert!(shards.len() > 32, "{} of 64 shards used", shards.len());
    }

    #[test]
    fn the_bound_is_over_every_shard() {
        let f = InFlight::with_shards(3, 16);
        let keys = keys_in_distinct_shards(&f, 6);
        let mut leaders: Vec<FlightGuard> = keys[..3]
            .iter()
            .map(|&k| f.try_lead(k).expect("room for three"))
            .collect();
        assert_eq!(f.len(), 3);
        // Full in a shard of its own, still full.
        for &k in &keys[3..] {
            assert!(matches!(f.join(k), Join::Full));
        }
        // A waiter on a running flight needs no room.
        assert!(matches!(f.join(keys[0]), Join::Waiter(_)));
        // One ends: one place frees, in any shard.
        leaders.pop().unwrap().complete(Outcome::Pass);
        assert_eq!(f.len(), 2);
        let g = f.try_lead(keys[5]).expect("a freed place");
        assert!(matches!(f.join(keys[4]), Join::Full));
        drop(g);
        drop(leaders);
        assert_eq!(f.len(), 0);
        assert!(f.table.shards.iter().all(|s| lock(&s.0).is_empty()));
    }

    #[test]
    fn the_bound_holds_under_concurrent_joins() {
        const MAX: usize = 50;
        let f = InFlight::with_shards(MAX, 8);
        let start = std::sync::Barrier::new(4);
        // Four threads, 100 keys of their own each, every guard held.
        let guards: Vec<Vec<FlightGuard>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4u128)
                .map(|t| {
                    let (f, start) = (&f, &start);
                    s.spawn(move || {
                        start.wait();
                        (0..100)
                            .filter_map(|i| f.try_lead(KeyHash(t << 64 | i)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let led: usize = guards.iter().map(Vec::len).sum();
        assert_eq!(led, MAX, "exactly max_in_flight flights started");
        assert_eq!(f.len(), MAX);
        let stored: usize = f.table.shards.iter().map(|s| lock(&s.0).len()).sum();
        assert_eq!(stored, MAX);
        drop(guards);
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn flights_churning_on_many_threads_stay_within_the_bound() {
        const MAX: usize = 4;
        let f = InFlight::with_shards(MAX, 8);
        std::thread::scope(|s| {
            for t in 0..4u128 {
                let f = &f;
                s.spawn(move || {
                    // Each thread holds up to three flights: twelve
                    // wanted, four allowed.
                    let mut held = std::collections::VecDeque::new();
                    for i in 0..2_000u128 {
                        held.extend(f.try_lead(KeyHash(t << 64 | (i % 7))));
                        assert!(f.len() <= MAX, "{} flights", f.len());
                        if held.len() == 3 {
                            held.pop_front();
                        }
                    }
                });
            }
        });
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn shards_are_a_power_of_two_at_least_twice_the_cores() {
        let f = InFlight::new(10);
        let n = f.table.shards.len();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(
            n.is_power_of_two() && n >= 2 * cores.min(MAX_SHARDS / 2),
            "{n}"
        );
        assert!((MIN_SHARDS..=MAX_SHARDS).contains(&n));
        // Small keys (as in tests) and hashed ones alike use every shard.
        let used: std::collections::HashSet<usize> = (0..64 * n as u128)
            .map(|k| f.table.shard_index(KeyHash(k)))
            .collect();
        assert_eq!(used.len(), n);
    }

    #[test]
    fn a_poisoned_shard_still_coalesces() {
        let f = InFlight::with_shards(10, 2);
        let k = KeyHash(9);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _held = f.table.shard(k).lock();
            panic!("poisons the shard");
        }));
        assert!(f.table.shard(k).is_poisoned());
        let Join::Leader(g) = f.join(k) else {
            panic!("a poisoned shard still starts flights")
        };
        assert!(matches!(f.join(k), Join::Waiter(_)));
        g.complete(Outcome::Pass);
        assert_eq!(f.len(), 0);
    }
}
