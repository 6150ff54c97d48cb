//! Distributed single-flight, the engine's side
//! ([`CacheBuilder::distributed_coalescing`](crate::CacheBuilder::distributed_coalescing)):
//! a flight's leader that found nothing usable in L2 takes the key's lease
//! before calling the origin, or waits for the instance holding it and
//! answers from L2. The lease mechanics (Redis commands, the registry of
//! keys waited on, the release after the write landed) are in
//! `store::lease`.
//!
//! Every path ends in a call the flight makes as it would without leases,
//! or in an answer from L2: Redis unreachable or slow ([`LEASE_ATTEMPTS`]
//! lease operations failed in a row, each within the L2 timeout, a poll
//! apart) or its breaker open (at once), the bound on keys reached, or a
//! wait past the upstream timeout, and the flight coalesces locally
//! (counted in `leases.local`).

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{Request, Response};
use http_body::Body;

use crate::body::CacheBody;
use crate::cache::{Cache, Fetch};
use crate::entry::Entry;
use crate::status::Detail;
use crate::store::l2::L2;
use crate::store::lease::{Ending, Lease, News, Take, Watch};
use crate::tiers::L2Lookup;

/// The longest pause between two looks at a lease waited on (at most a
/// quarter of the lease's life, at least 10 ms): the bound on a wake-up
/// the invalidation log did not deliver.
pub(crate) const LEASE_POLL: Duration = Duration::from_millis(100);

/// The shortest pause between two looks.
const MIN_LEASE_POLL: Duration = Duration::from_millis(10);

/// Lease operations that may fail in a row (each within the L2 timeout; on
/// a busy host a reply read late is a timeout) before the flight
/// coalesces locally. None while the L2 breaker is open (Redis judged
/// down): then at once.
pub(crate) const LEASE_ATTEMPTS: u32 = 3;

/// What a flight's leader does next.
pub(crate) enum Turn {
    /// Call the origin, holding the lease (`Some`), or without one.
    Call(Option<Lease>),
    /// The entry may be in L2 now: look (then take another turn).
    Look,
}

/// One leader's way through the lease of its key: [`turn`](Self::turn)
/// until it says to call, or an entry looked for after
/// [`Turn::Look`] is found ([`found`](Self::found)). Typed values
/// (`values/leased.rs`) take the same way.
pub(crate) struct Across {
    l2: Arc<L2>,
    key: crate::key::KeyHash,
    ttl: Duration,
    poll: Duration,
    /// The most this leader waits (the upstream timeout, for a request).
    deadline: tokio::time::Instant,
    /// The wait ran out.
    timed_out: bool,
    /// While waiting: news of the key from other instances.
    watch: Option<Watch>,
    /// A lease taken after waiting, kept while L2 is looked at.
    held: Option<Lease>,
    /// The first turn was taken.
    started: bool,
    /// Another holder was seen (counted as `waited`).
    seen_held: bool,
    /// Lease operations failed in a row.
    failures: u32,
}

impl Across {
    /// `None` when distributed coalescing is off (or without L2); waits
    /// at most `max_wait` for another instance.
    pub(crate) fn new(cache: &Cache, key: crate::key::KeyHash, max_wait: Duration) -> Option<Self> {
        let s = &*cache.shared;
        let ttl = s.cfg.lease_ttl?;
        let l2 = Arc::clone(s.tiers.l2.as_ref()?);
        Some(Self {
            l2,
            key,
            ttl,
            poll: (ttl / 4).clamp(MIN_LEASE_POLL, LEASE_POLL),
            deadline: tokio::time::Instant::now() + max_wait,
            timed_out: false,
            watch: None,
            held: None,
            started: false,
            seen_held: false,
            failures: 0,
        })
    }

    /// The next step: take the lease (or find it held and wait for news, a
    /// poll, or the deadline).
    pub(crate) async fn turn(&mut self, cache: &Cache) -> Turn {
        let c = &cache.shared.counters;
        if let Some(lease) = self.held.take() {
            // Taken after waiting, and the entry is not in L2: taken over
            // from another holder, or (a first attempt having failed)
            // simply taken.
            if self.seen_held {
                c.lease_taken_over.incr();
                record("taken_over");
            } else {
                c.lease_taken.incr();
                record("taken");
            }
            return Turn::Call(Some(lease));
        }
        if !self.started {
            self.started = true;
            // Registered first, so that news arriving before the wait
            // begins is kept.
            let Some(watch) = self.l2.leases.watch(self.key) else {
                return self.local(cache);
            };
            self.watch = Some(watch);
            match self.l2.take_lease(self.key, self.ttl).await {
                Take::Taken(lease) => {
                    self.watch = None;
                    c.lease_taken.incr();
                    record("taken");
                    return Turn::Call(Some(lease));
                }
                Take::Unavailable if self.gives_up() => return self.local(cache),
                Take::Unavailable => {}
                Take::Held => self.held_elsewhere(cache),
            }
        }
        self.wait(cache).await
    }

    /// Another instance holds the lease (counted once).
    fn held_elsewhere(&mut self, cache: &Cache) {
        self.failures = 0;
        if !self.seen_held {
            self.seen_held = true;
            cache.shared.counters.lease_waited.incr();
            record("waited");
        }
    }

    /// A lease operation failed: whether to give up on leases (the L2
    /// breaker is open, or [`LEASE_ATTEMPTS`] failed in a row).
    fn gives_up(&mut self) -> bool {
        self.failures += 1;
        self.failures >= LEASE_ATTEMPTS || self.l2.skipping()
    }

    /// Waits for news of the key, or the next poll, then looks or tries
    /// the lease again; past the deadline, calls without it.
    async fn wait(&mut self, cache: &Cache) -> Turn {
        loop {
            let Some(watch) = self.watch.as_mut() else {
                return self.local(cache);
            };
            let news = tokio::select! {
                news = watch.changed() => news,
                () = tokio::time::sleep(self.poll) => News::None,
                () = tokio::time::sleep_until(self.deadline) => {
                    self.timed_out = true;
                    return self.local(cache);
                }
            };
            match news {
                News::Stored => return Turn::Look,
                // The holder's answer may not be shared: call alone.
                News::Pass => {
                    self.watch = None;
                    return Turn::Call(None);
                }
                News::None | News::Failed => {}
            }
            // The first to find the lease gone takes it; it looks in L2
            // before calling (the holder releases once its entry landed).
            match self.l2.take_lease(self.key, self.ttl).await {
                Take::Taken(lease) => {
                    self.held = Some(lease);
                    return Turn::Look;
                }
                Take::Held => self.held_elsewhere(cache),
                Take::Unavailable if self.gives_up() => return self.local(cache),
                Take::Unavailable => {}
            }
        }
    }

    /// Coalesces locally: no lease (counted).
    fn local(&mut self, cache: &Cache) -> Turn {
        self.watch = None;
        cache.shared.counters.lease_local.incr();
        record("local");
        Turn::Call(None)
    }

    /// Whether the last [`Turn::Call`] came because the wait ran out.
    #[cfg_attr(not(feature = "values"), allow(dead_code))]
    pub(crate) fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// The entry was found in L2: a lease taken meanwhile is released
    /// without news (the entry is there for whoever looks).
    pub(crate) fn found(mut self) {
        if let Some(lease) = self.held.take() {
            lease.end(Ending::Quiet);
        }
    }
}

/// Records what the lease came to on the request's span (`cache.lease`).
fn record(what: &'static str) {
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record("cache.lease", what);
    }
}

/// What the lease step came to for a flight's leader.
pub(super) enum Leased<B, RB: Body> {
    /// Answered from L2 with another instance's answer (the entry: for
    /// the local waiters).
    Answered(Response<CacheBody<RB>>, Arc<Entry>),
    /// Call the origin, holding the lease or not.
    Call(Request<B>, Box<Fetch>, Option<Lease>),
}

/// Takes the key's lease or waits for the instance holding it (see the
/// module docs); `arrived`: when the request arrived (wall-clock ms).
pub(super) async fn lease_or_wait<B, RB: Body>(
    cache: &Cache,
    req: Request<B>,
    plan: Box<Fetch>,
    arrived: u64,
) -> Leased<B, RB> {
    let max_wait = cache.shared.cfg.upstream_timeout;
    let Some(mut across) = Across::new(cache, plan.key, max_wait) else {
        return Leased::Call(req, plan, None);
    };
    let (parts, body) = req.into_parts();
    loop {
        match across.turn(cache).await {
            Turn::Call(lease) => {
                return Leased::Call(Request::from_parts(parts, body), plan, lease);
            }
            Turn::Look => {
                if let Some((resp, entry)) = look(cache, &parts, &plan, arrived).await {
                    across.found();
                    return Leased::Answered(resp, entry);
                }
            }
        }
    }
}

/// Another instance's answer, read from L2: a collapsed miss
/// (`detail=l2`), if it may answer this request (an answer stored after
/// the request arrived always may, as a flight's that started after it).
async fn look<RB: Body>(
    cache: &Cache,
    parts: &Parts,
    plan: &Fetch,
    arrived: u64,
) -> Option<(Response<CacheBody<RB>>, Arc<Entry>)> {
    let s = &*cache.shared;
    let now = cache.now();
    let L2Lookup::Found(entry, tier) = s
        .tiers
        .lookup_l2(plan.key, &parts.headers, plan.prior.as_deref(), now)
        .await
    else {
        return None;
    };
    let newer = entry.timeline.stored_at >= arrived;
    let resp = super::collapsed_as(cache, &entry, parts, plan, now, newer, Detail::L2)?;
    // Read by this flight's leader: counts towards promotion, as any.
    cache.served(
        plan.key,
        &entry,
        tier,
        plan.prior.as_ref(),
        &parts.headers,
        now,
    );
    Some((resp, entry))
}

/// How the flight holding `lease` ended, for the lease: stored (released
/// once the write landed), nothing to share (each instance calls alone),
/// or failed (another instance may take the lease).
pub(super) fn end(lease: Lease, outcome: &crate::coalesce::Outcome) {
    use crate::coalesce::Outcome;
    let ending = match outcome {
        Outcome::Stored(_) => Ending::Stored,
        Outcome::Pass => Ending::Announce(News::Pass),
        _ => Ending::Announce(News::Failed),
    };
    lease.end(ending);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_is_a_quarter_of_the_lease_within_bounds() {
        let cache = Cache::builder()
            .redis("redis://127.0.0.1:1/")
            .distributed_coalescing(true)
            .upstream_timeout(Duration::from_secs(1))
            .lease_ttl(Duration::from_millis(200))
            .build()
            .unwrap();
        let wait = Duration::from_secs(1);
        let across = Across::new(&cache, crate::key::KeyHash(1), wait).unwrap();
        assert_eq!(across.poll, Duration::from_millis(50));
        assert_eq!(across.ttl, Duration::from_millis(200));
        let off = Cache::builder()
            .redis("redis://127.0.0.1:1/")
            .build()
            .unwrap();
        assert!(Across::new(&off, crate::key::KeyHash(1), wait).is_none());
    }
}
