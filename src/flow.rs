//! The engine's asynchronous paths: coalesced misses, revalidation,
//! background refresh, stale-if-error and invalidation by unsafe methods.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{
    HeaderMap, HeaderName, HeaderValue, AGE, CONTENT_LENGTH, CONTENT_LOCATION, DATE, HOST,
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, LOCATION, RANGE,
    SET_COOKIE,
};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body;

use crate::body::CacheBody;
use crate::cache::{get_view, request_view, Cache, Fetch};
#[cfg(feature = "redis")]
use crate::cache::{Answered, HitSlots};
use crate::coalesce::{self, Join, Outcome};
use crate::entry::Entry;
use crate::observe::Tier;
use crate::policy::{strip_hop_by_hop, NotStored, RequestDirectives, Usability};
use crate::status::{Detail, Fwd, Status, CACHE_STATUS};
#[cfg(feature = "redis")]
use crate::tiers::L2Lookup;

#[cfg(feature = "redis")]
pub(crate) mod distributed;
pub(crate) mod hot;
mod partial;
pub(crate) use partial::part_key;

/// Something that answers requests: the inner service, seen by the engine.
/// Each value is used for at most one call. It may borrow (a
/// `reqwest_middleware::Next` does); what must outlive the request goes
/// through [`refresh`](Upstream::refresh).
pub(crate) trait Upstream<B>: Send + Sized {
    /// Its chunks and errors cross tasks (a flight's leader, refreshes).
    type Body: Body<Data: Send, Error: Send> + Send + 'static;
    type Error: Send + 'static;
    type Future: Future<Output = Result<Response<Self::Body>, Self::Error>> + Send;

    fn call(self, req: Request<B>) -> Self::Future;

    /// Starts a background refresh of a stale entry (see [`spawn_refresh`]),
    /// with an upstream that may outlive this request; the same upstream
    /// when it is `'static`.
    fn refresh(self, cache: Cache, req: Request<B>, plan: Box<Fetch>, cause: &tracing::Span);
}

pub(crate) type CacheResult<U, B> =
    Result<Response<CacheBody<<U as Upstream<B>>::Body>>, <U as Upstream<B>>::Error>;

/// Set by an adapter on an upstream response that must not be stored for
/// the request's key (say, the final response of followed redirects); the
/// reason goes in `Cache-Status` as `detail`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NotStorable(pub(crate) &'static str);

/// The outcome of one upstream exchange.
enum Fetched<U: Upstream<B>, B> {
    /// Stored (or updated by a 304); answer from the entry.
    Stored(Arc<Entry>, Response<CacheBody<U::Body>>),
    /// Not stored; the response streams through.
    Passed(Response<CacheBody<U::Body>>),
    /// An error or a 5xx: a candidate for stale-if-error. The flag says
    /// whether the request's outcome (a miss) was already counted.
    Failed(CacheResult<U, B>, bool),
    /// The upstream missed its deadline (`upstream_timeout`), for the head
    /// or the body: stale-if-error, or a 504. The flag as for `Failed`.
    TimedOut(bool),
}

/// Runs `fut` within `limit` when a tokio timer is available (without a
/// runtime there is nothing to time it with, and it runs unbounded).
async fn within<F: Future>(limit: Duration, fut: F) -> Result<F::Output, Elapsed> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(fut.await);
    }
    tokio::time::timeout(limit, fut).await.map_err(|_| Elapsed)
}

/// A deadline passed.
#[derive(Debug)]
struct Elapsed;

/// A miss or a revalidation in the foreground: answered from L2 when the
/// request will not wait in a flight, otherwise coalesced: the leader of a
/// flight calls the upstream ([`lead_flight`]), waiters answer from what
/// it got ([`after_wait`]).
///
/// The steps that call the upstream, take a lease or follow a wait are
/// boxed where they start: inline, their states (kilobytes) would set
/// the size of every request's future, L2 hits and waiters included,
/// which is allocated and moved whole (the proxy's: 4 624 bytes inline, 3 104
/// boxed; the upstream path pays an allocation or two more).
pub(crate) async fn fetch<B, U>(
    cache: Cache,
    req: Request<B>,
    up: U,
    plan: Box<Fetch>,
) -> CacheResult<U, B>
where
    B: Send + 'static,
    U: Upstream<B>,
{
    let s = &*cache.shared;
    let now = cache.now();
    let (mut req, mut up, mut plan) = (req, up, plan);
    // A request that will not wait in a flight (`no-store`) reads L2 itself.
    #[cfg(feature = "redis")]
    if plan.l2_lookup && !plan.coalesce {
        match from_l2::<B, U::Body>(&cache, req, plan).await {
            L2Answer::Served(served) => return Ok(served.answer(&cache, up)),
            L2Answer::NotServed(r, p) => (req, plan) = (r, p),
        }
    }
    if let Some(resp) = before_upstream(&cache, &req, &plan, now) {
        return Ok(resp);
    }
    // Waiting for another request needs tokio's timer; without a runtime
    // the request simply calls alone.
    if !plan.coalesce || tokio::runtime::Handle::try_current().is_err() {
        if plan.prior.is_none() && plan.directives.range {
            return Box::pin(partial::range_miss(&cache, req, up, &plan)).await;
        }
        return Box::pin(own_call(&cache, req, up, &plan)).await;
    }
    // Flights that start after this point answer this request whatever its
    // own directives ask (they are newer than the request).
    let arrived = s.inflight.epoch();
    // A cancelled or failed leader hands the flight on: its waiters join
    // again and exactly one of them leads; a request that needs a newer
    // answer than the flight it waited on (`no-cache`) waits for the next.
    // Bounded: at most MAX_WAITS flights, each at most `coalesce_timeout`.
    for _ in 0..MAX_WAITS {
        let flight = match s.inflight.join(plan.key) {
            Join::Leader(guard) => return lead_flight(&cache, req, up, plan, guard, now).await,
            Join::Full => return Box::pin(own_call(&cache, req, up, &plan)).await,
            Join::Waiter(flight) => flight,
        };
        let outcome = coalesce::wait(&flight, s.cfg.coalesce_timeout).await;
        let newer = flight.started_after(arrived);
        match Box::pin(after_wait(&cache, outcome, newer, req, up, plan)).await {
            Waited::Done(result) => return result,
            Waited::Again(r, u, p) => (req, up, plan) = (r, u, p),
        }
    }
    let (parts, _body) = req.into_parts();
    let why = Detail::CoalesceFailed;
    Ok(gave_up(&cache, &parts, &plan, why, false))
}

/// Starts the background refresh `refresh` (if any) of the entry that
/// answered, and gives back the answer.
#[cfg(feature = "redis")]
fn with_refresh<B, U: Upstream<B>>(
    cache: &Cache,
    up: U,
    resp: Response<CacheBody<U::Body>>,
    refresh: Option<Box<Fetch>>,
    req: Request<B>,
) -> Response<CacheBody<U::Body>> {
    if let Some(refresh) = refresh {
        up.refresh(cache.clone(), req, refresh, &tracing::Span::current());
    }
    resp
}

/// The leader of a flight: an answer another flight stored meanwhile, an
/// L2 entry, or the upstream; what it got is handed to the waiters
/// (`guard`; dropped without an answer, the waiters form a new flight).
async fn lead_flight<B, U>(
    cache: &Cache,
    req: Request<B>,
    up: U,
    plan: Box<Fetch>,
    guard: coalesce::FlightGuard,
    now: u64,
) -> CacheResult<U, B>
where
    B: Send + 'static,
    U: Upstream<B>,
{
    #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
    let (mut req, mut plan) = (req, plan);
    // Between this request's L1 look-up and its joining (a gap that is wide
    // under load), another flight may have stored the answer and ended:
    // use it rather than call again.
    if !plan.background {
        let (parts, body) = req.into_parts();
        if let Some(entry) = stored_since(cache, &parts, &plan, now) {
            if let Some(resp) = tier_hit(cache, &entry, &parts, &plan, now, Tier::L1) {
                guard.complete(Outcome::Cached(entry, Tier::L1));
                return Ok(resp);
            }
        }
        req = Request::from_parts(parts, body);
    }
    #[cfg(feature = "redis")]
    if plan.l2_lookup {
        match from_l2::<B, U::Body>(cache, req, plan).await {
            L2Answer::Served(served) => {
                // The flight first: with no waiter, the answer then holds
                // the entry's last reference, and takes its header map.
                guard.complete_found(&served.entry);
                return Ok(served.answer(cache, up));
            }
            L2Answer::NotServed(r, p) => (req, plan) = (r, p),
        }
        // What L2 held is judged as L1's would have been; waiters form a
        // new flight.
        if let Some(resp) = before_upstream(cache, &req, &plan, cache.now()) {
            drop(guard);
            return Ok(resp);
        }
    }
    if plan.directives.cc.only_if_cached {
        // Nothing usable in any tier; waiters form a new flight.
        drop(guard);
        return Ok(cache.unavailable());
    }
    if plan.prior.is_none() && plan.directives.range {
        // A range of something stored nowhere: passed, as by `decide`.
        drop(guard);
        return Box::pin(partial::range_miss(cache, req, up, &plan)).await;
    }
    // Other instances may be fetching it: take the key's lease, or wait
    // for the instance holding it (distributed coalescing).
    #[cfg(feature = "redis")]
    let (req, plan, lease) = match Box::pin(distributed::lease_or_wait(cache, req, plan, now)).await
    {
        distributed::Leased::Answered(resp, entry) => {
            guard.complete(Outcome::Collapsed(entry));
            return Ok(resp);
        }
        distributed::Leased::Call(req, plan, lease) => (req, plan, lease),
    };
    let (result, outcome) = Box::pin(lead(cache, req, up, &plan)).await;
    #[cfg(feature = "redis")]
    if let Some(lease) = lease {
        distributed::end(lease, &outcome);
    }
    guard.complete(outcome);
    result
}

/// What a waiter does once its flight ended.
enum Waited<U: Upstream<B>, B> {
    /// Answered (or passed, or gave up).
    Done(CacheResult<U, B>),
    /// Wait on (or lead) the next flight.
    Again(Request<B>, U, Box<Fetch>),
}

/// A waiter's answer from its flight's `outcome` (`None`: the wait timed
/// out); `newer`: the flight started after the request arrived.
async fn after_wait<B, U>(
    cache: &Cache,
    outcome: Option<Outcome>,
    newer: bool,
    req: Request<B>,
    up: U,
    plan: Box<Fetch>,
) -> Waited<U, B>
where
    B: Send + 'static,
    U: Upstream<B>,
{
    let s = &*cache.shared;
    let now = cache.now();
    let (parts, body) = req.into_parts();
    let matches = |e: &Entry| e.vary_matches(&parts.headers);
    let answer = match outcome {
        Some(Outcome::Stored(entry)) if matches(&entry) => {
            // `None`: the answer predates this request and its directives
            // want a newer one: the next flight (one waiter leads) has it.
            collapsed(cache, &entry, &parts, &plan, now, newer)
        }
        // The leader found it in a cache tier: a hit of that tier, not a
        // collapsed miss (nothing reached the origin).
        Some(Outcome::Cached(entry, tier)) if matches(&entry) => {
            tier_hit(cache, &entry, &parts, &plan, now, tier)
        }
        #[cfg(feature = "redis")]
        Some(Outcome::Found(entry)) if matches(&entry) => {
            return found_by_leader(cache, entry, parts, body, up, plan, now);
        }
        // Another instance's call, read from L2 by the leader.
        Some(Outcome::Collapsed(entry)) if matches(&entry) => {
            collapsed_as(cache, &entry, &parts, &plan, now, newer, Detail::L2)
        }
        Some(Outcome::StaleIfError(entry))
            if matches(&entry) && s.policy.stale_if_error_ok(&entry, &plan.directives, now) =>
        {
            Some(serve_stale_if_error(
                cache, &entry, &parts, &plan, None, true,
            ))
        }
        // The answer may not be shared: call alone, as the leader did.
        Some(Outcome::Pass) => {
            let req = Request::from_parts(parts, body);
            return Waited::Done(own_call(cache, req, up, &plan).await);
        }
        // The leader was cancelled or failed: rather than every waiter
        // calling the upstream at once, form a new flight; a later flight
        // may already have stored an answer.
        Some(Outcome::Abandoned | Outcome::Failed | Outcome::StaleIfError(_)) => {
            match s.tiers.l1.get(plan.key, &parts.headers) {
                crate::store::memory::Found::Entry(entry) => {
                    tier_hit(cache, &entry, &parts, &plan, now, Tier::L1)
                }
                _ => None,
            }
        }
        // Another variant was fetched: this one is fetched next.
        Some(_) => None,
        None => {
            // The leader's call outlived its own deadline (it cannot,
            // unless `coalesce_timeout` is set below it): never call the
            // origin alone, answer from what is stored or with a 504.
            s.counters.coalesce_timeouts.incr();
            let why = Detail::CoalesceTimeout;
            Some(gave_up(cache, &parts, &plan, why, false))
        }
    };
    match answer {
        Some(resp) => Waited::Done(Ok(resp)),
        None => Waited::Again(Request::from_parts(parts, body), up, plan),
    }
}

/// A waiter whose leader read an entry from L2: judged as this request's
/// own find (not promoted again: `Generation::NONE`); not usable as is, the next
/// flight revalidates it.
#[cfg(feature = "redis")]
fn found_by_leader<B, U: Upstream<B>>(
    cache: &Cache,
    entry: Arc<Entry>,
    parts: Parts,
    body: B,
    up: U,
    mut plan: Box<Fetch>,
    now: u64,
) -> Waited<U, B> {
    let newer = plan
        .prior
        .as_ref()
        .is_none_or(|p| entry.timeline.stored_at > p.timeline.stored_at);
    if now >= entry.timeline.retain_until || !newer {
        return Waited::Again(Request::from_parts(parts, body), up, plan);
    }
    let span = tracing::Span::current();
    let tier = crate::tiers::Tier::L2 {
        since: crate::store::order::Generation::NONE,
    };
    match cache.judge::<U::Body>(entry, tier, &parts, *plan, now, &span) {
        Ok(answered) => {
            let (resp, refresh) = answered.into_marked();
            let req = Request::from_parts(parts, body);
            Waited::Done(Ok(with_refresh(cache, up, resp, refresh, req)))
        }
        Err(p) => {
            plan = Box::new(p);
            plan.l2_lookup = false;
            Waited::Again(Request::from_parts(parts, body), up, plan)
        }
    }
}

/// What spares the upstream once the stored entry (the plan's prior) is
/// known: while the label's breaker is open, a servable stale entry; a
/// request that may not reach the origin (`only-if-cached`), a 504.
fn before_upstream<B, RB: Body>(
    cache: &Cache,
    req: &Request<B>,
    plan: &Fetch,
    now: u64,
) -> Option<Response<CacheBody<RB>>> {
    let s = &*cache.shared;
    if let Some(prior) = &plan.prior {
        if s.upstream_breaker(plan.label).state(now) == crate::BreakerState::Open
            && s.policy.stale_if_error_ok(prior, &plan.directives, now)
        {
            let parts = request_view_of(req);
            return Some(serve_stale_if_error(cache, prior, &parts, plan, None, true));
        }
    }
    if plan.directives.cc.only_if_cached && !plan.l2_lookup {
        return Some(cache.unavailable());
    }
    None
}

/// The parts of a request, for answering it from an entry.
fn request_view_of<B>(req: &Request<B>) -> Parts {
    let mut parts = get_view(req.uri(), req.headers());
    parts.method = req.method().clone();
    parts
}

/// A request the upstream did not answer in time (`why` says how): a
/// stored entry that allows it (`stale-if-error`), or a `504`.
///
/// `counted`: the request's outcome (a miss) is counted already.
fn gave_up<RB: Body>(
    cache: &Cache,
    parts: &Parts,
    plan: &Fetch,
    why: Detail,
    counted: bool,
) -> Response<CacheBody<RB>> {
    if let Some(prior) = &plan.prior {
        if cache
            .shared
            .policy
            .stale_if_error_ok(prior, &plan.directives, cache.now())
        {
            let count = !plan.background && !counted;
            return serve_stale_if_error(cache, prior, parts, plan, Some(None), count);
        }
    }
    if !counted {
        plan.count(&cache.shared.counters.misses);
    }
    gateway_timeout(Status::forward(plan.fwd).with_detail(why))
}

/// A `504 Gateway Timeout` made by the cache, with its status
/// (empty, so it serves for a `502` too).
fn gateway_timeout<RB: Body>(status: Status) -> Response<CacheBody<RB>> {
    let mut resp = Response::new(CacheBody::empty());
    *resp.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    resp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    mark(&mut resp, status);
    resp
}

/// Gives a response the engine made or passed on its status: the
/// `Cache-Status` field rendered from it, and the typed status in its
/// extensions, where the adapter reports it from.
fn mark<RB>(resp: &mut Response<RB>, status: Status) {
    resp.headers_mut()
        .insert(CACHE_STATUS.clone(), status.header());
    resp.extensions_mut().insert(status);
}

/// An entry's response for this request, marked with `status`.
fn respond<RB: Body>(
    cache: &Cache,
    entry: &Entry,
    parts: &Parts,
    plan: &Fetch,
    now: u64,
    status: Status,
) -> Response<CacheBody<RB>> {
    let mut resp = cache.respond_entry(
        entry,
        parts,
        &plan.directives,
        now,
        &status,
        true, // reuse: built from the entry's template
    );
    resp.extensions_mut().insert(status);
    resp
}

/// What the L2 look-up came to.
// Returned once per L2 look-up and taken apart at once: boxing a variant
// would cost every L2 hit an allocation.
#[allow(clippy::large_enum_variant)]
#[cfg(feature = "redis")]
enum L2Answer<B, RB: Body> {
    /// Answered from an L2 entry.
    Served(L2Served<B, RB>),
    /// Nothing usable; an L2 entry to revalidate or fall back on, if newer
    /// than L1's, is now the plan's prior.
    NotServed(Request<B>, Box<Fetch>),
}

/// An answer from an L2 entry, not yet given out.
#[cfg(feature = "redis")]
struct L2Served<B, RB: Body> {
    resp: Response<CacheBody<RB>>,
    entry: Arc<Entry>,
    /// The plan of the background refresh to start (a stale entry, or an
    /// eager refresh).
    refresh: Option<Box<Fetch>>,
    req: Request<B>,
    /// Set when `resp` has no headers yet: they are made from `entry`
    /// ([`HitSlots::fill`]) once nothing else needs it.
    slots: Option<HitSlots>,
}

#[cfg(feature = "redis")]
impl<B, RB: Body> L2Served<B, RB> {
    /// The response, its headers made if they were left to the end (call
    /// it after the flight is over), its refresh started.
    fn answer<U: Upstream<B, Body = RB>>(self, cache: &Cache, up: U) -> Response<CacheBody<RB>> {
        let L2Served {
            mut resp,
            entry,
            refresh,
            req,
            slots,
        } = self;
        if let Some(slots) = slots {
            slots.fill(&mut resp, entry);
        }
        with_refresh(cache, up, resp, refresh, req)
    }
}

/// Looks for the key in L2 and judges what it finds exactly as an L1 entry
/// is judged ([`Cache::judge`]), with `detail=l2`.
#[cfg(feature = "redis")]
async fn from_l2<B, RB: Body>(
    cache: &Cache,
    req: Request<B>,
    mut plan: Box<Fetch>,
) -> L2Answer<B, RB> {
    let s = &*cache.shared;
    plan.l2_lookup = false;
    let now = cache.now();
    let (found, tier) = match s
        .tiers
        .lookup_l2(plan.key, req.headers(), plan.prior.as_deref(), now)
        .await
    {
        L2Lookup::Found(found, tier) => (found, tier),
        L2Lookup::Miss { varied } => {
            if varied && plan.prior.is_none() {
                // Other variants are stored: as L1 says for the same request.
                plan.fwd = Fwd::VaryMiss;
            }
            return L2Answer::NotServed(req, plan);
        }
    };
    let (parts, body) = req.into_parts();
    let span = tracing::Span::current();
    // A fresh entry (the common case) answers with its headers left to be
    // made last, from the decoded map itself when nothing else keeps it.
    if let Some((resp, status, refresh, slots)) =
        cache.fresh_l2_hit::<RB>(&found, tier, &parts, &plan, now, &span)
    {
        let refresh = refresh.then(|| plan.into_refresh(Arc::clone(&found), tier));
        let (resp, refresh) = Answered::fresh(resp, status, now, refresh).into_marked();
        return L2Answer::Served(L2Served {
            resp,
            entry: found,
            refresh,
            req: Request::from_parts(parts, body),
            slots,
        });
    }
    let entry = Arc::clone(&found);
    let (resp, refresh) = match cache.judge::<RB>(found, tier, &parts, *plan, now, &span) {
        Err(plan) => return L2Answer::NotServed(Request::from_parts(parts, body), Box::new(plan)),
        Ok(answered) => answered.into_marked(),
    };
    L2Answer::Served(L2Served {
        resp,
        entry,
        refresh,
        req: Request::from_parts(parts, body),
        slots: None,
    })
}

/// A fresh L1 entry for the plan's key stored after the plan was made (newer
/// than its prior, if any), which this request may use.
fn stored_since(cache: &Cache, parts: &Parts, plan: &Fetch, now: u64) -> Option<Arc<Entry>> {
    let entry =
        cache
            .shared
            .tiers
            .l1_newer_than(plan.key, &parts.headers, plan.prior.as_deref(), now)?;
    (cache.shared.policy.usability(&entry, &plan.directives, now) == Usability::Fresh)
        .then_some(entry)
}

/// Answers a waiter from an entry another request stored, if it may serve
/// this request (fresh, or stale within its window).
///
/// `newer`: the flight that stored it started after this request arrived,
/// so its answer is the origin's answer to this request too, whatever the
/// request's own directives (`no-cache`, `max-age=0`) ask of stored ones.
fn collapsed<RB: Body>(
    cache: &Cache,
    entry: &Entry,
    parts: &Parts,
    plan: &Fetch,
    now: u64,
    newer: bool,
) -> Option<Response<CacheBody<RB>>> {
    let stored = cache.shared.tiers.store_tier(entry);
    collapsed_as(cache, entry, parts, plan, now, newer, stored)
}

/// [`collapsed`], answered from the tier `detail` names (`l2`: another
/// instance's answer, read from L2).
fn collapsed_as<RB: Body>(
    cache: &Cache,
    entry: &Entry,
    parts: &Parts,
    plan: &Fetch,
    now: u64,
    newer: bool,
    detail: Detail,
) -> Option<Response<CacheBody<RB>>> {
    let s = &*cache.shared;
    if !newer
        && !matches!(
            s.policy.usability(entry, &plan.directives, now),
            Usability::Fresh | Usability::Stale
        )
    {
        return None;
    }
    s.counters.coalesced.incr();
    let status = Status {
        collapsed: true,
        ..Status::forward(plan.fwd).with_detail(detail)
    };
    Some(respond(cache, entry, parts, plan, now, status))
}

/// A request answered from an entry a cache tier held, without the origin:
/// found in L1 after its own look-up, or read from L2 by the leader of the
/// flight it waited on. Counted and labelled (`Cache-Status`) as a hit of
/// that tier, exactly as if it had found the entry there itself; `None`
/// when the entry's freshness does not suit the request's directives.
fn tier_hit<RB: Body>(
    cache: &Cache,
    entry: &Entry,
    parts: &Parts,
    plan: &Fetch,
    now: u64,
    tier: Tier,
) -> Option<Response<CacheBody<RB>>> {
    let s = &*cache.shared;
    let fresh = match s.policy.usability(entry, &plan.directives, now) {
        Usability::Fresh => true,
        Usability::Stale => false,
        Usability::Revalidate | Usability::Unusable => return None,
    };
    let status = cache.tier_hit_status(fresh, tier == Tier::L2, entry, now);
    Some(respond(cache, entry, parts, plan, now, status))
}

/// How many flights a request waits on (or leads) at most: the first it
/// found, then the ones formed after cancelled or failed leaders, or after
/// an answer older than the request wanted.
pub(crate) const MAX_WAITS: usize = 4;

/// The leader's call: its result, and what waiters should do.
async fn lead<B, U>(
    cache: &Cache,
    req: Request<B>,
    up: U,
    plan: &Fetch,
) -> (CacheResult<U, B>, Outcome)
where
    B: Send + 'static,
    U: Upstream<B>,
{
    let (parts, body) = req.into_parts();
    let keep = request_view(&parts);
    match exchange(cache, Request::from_parts(parts, body), up, plan).await {
        Fetched::Stored(entry, resp) => (Ok(resp), Outcome::Stored(entry)),
        Fetched::Passed(resp) => (Ok(resp), Outcome::Pass),
        Fetched::TimedOut(counted) => {
            let resp = gave_up(cache, &keep, plan, Detail::UpstreamTimeout, counted);
            let outcome = match &plan.prior {
                Some(prior) if resp.status() != StatusCode::GATEWAY_TIMEOUT => {
                    Outcome::StaleIfError(Arc::clone(prior))
                }
                _ => Outcome::Failed,
            };
            (Ok(resp), outcome)
        }
        Fetched::Failed(result, counted) => match &plan.prior {
            Some(prior)
                if cache
                    .shared
                    .policy
                    .stale_if_error_ok(prior, &plan.directives, cache.now()) =>
            {
                let failed_status = Some(result.as_ref().ok().map(|r| r.status()));
                let served =
                    serve_stale_if_error(cache, prior, &keep, plan, failed_status, !counted);
                (Ok(served), Outcome::StaleIfError(Arc::clone(prior)))
            }
            _ => {
                if !counted {
                    plan.count(&cache.shared.counters.misses);
                }
                (result, Outcome::Failed)
            }
        },
    }
}

/// A call made alone (no coalescing): still stores, still serves stale on error.
async fn own_call<B, U>(cache: &Cache, req: Request<B>, up: U, plan: &Fetch) -> CacheResult<U, B>
where
    B: Send + 'static,
    U: Upstream<B>,
{
    lead(cache, req, up, plan).await.0
}

fn serve_stale_if_error<RB: Body>(
    cache: &Cache,
    entry: &Arc<Entry>,
    parts: &Parts,
    plan: &Fetch,
    failed: Option<Option<StatusCode>>,
    count: bool,
) -> Response<CacheBody<RB>> {
    let s = &cache.shared;
    let now = cache.now();
    if count {
        s.counters.stale.incr();
    }
    s.counters.stale_if_error.incr();
    // Serving stale on error does not extend the entry's windows: only a
    // failed background refresh does (so a recovered origin is used again
    // at once, and no stale response is served without an error).
    let staleness = now
        .saturating_sub(entry.timeline.fresh_until)
        .div_ceil(1000);
    let status = match failed {
        // Forwarded; the upstream answered with an error status.
        Some(Some(code)) => Status {
            stale_by: Some(staleness),
            ..Status::forward(Fwd::Stale)
                .with_fwd_status(code.as_u16())
                .with_detail(Detail::StaleIfError)
        },
        // Forwarded; the upstream call itself failed.
        Some(None) => Status {
            stale_by: Some(staleness),
            ..Status::forward(Fwd::Stale).with_detail(Detail::StaleIfError)
        },
        // Not forwarded (the breaker is open, or another request's call failed).
        None => Status::hit(Detail::StaleIfError, Some(staleness)),
    };
    respond(cache, entry, parts, plan, now, status)
}

/// Request fields removed when fetching a response to store whole: the
/// client's conditionals (answered later from the entry) and `Range` (this
/// cache stores complete responses; a server may always ignore `Range`).
const NOT_FORWARDED_WHEN_STORING: [HeaderName; 6] = [
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_MATCH,
    IF_UNMODIFIED_SINCE,
    IF_RANGE,
    RANGE,
];

/// One exchange with the upstream: send (conditionally when revalidating),
/// judge, buffer and store, and build the answer.
async fn exchange<B, U>(cache: &Cache, req: Request<B>, up: U, plan: &Fetch) -> Fetched<U, B>
where
    B: Send + 'static,
    U: Upstream<B>,
{
    let s = &*cache.shared;
    let (parts, body) = req.into_parts();
    // What the client sent, kept to select variants and answer its
    // conditionals from the stored entry.
    let client = request_view(&parts);
    let parts = upstream_request(parts, plan);
    let (resp, times) = match call_upstream(cache, up, Request::from_parts(parts, body), plan).await
    {
        Ok(answered) => answered,
        Err(failed) => return failed,
    };
    let status = resp.status();
    if status.is_server_error() {
        upstream_failed(cache, plan, Some(status), times.response);
        if !stores_server_error(cache, &resp, plan, times) {
            let marked = Status::forward(plan.fwd).with_fwd_status(status.as_u16());
            return Fetched::Failed(Ok(pass_through(resp, marked, plan.head)), false);
        }
    } else {
        s.upstream_breaker(plan.label).record_success();
    }
    // A 304 to our conditional request: freshen the stored entry.
    let resp = match (status, plan.revalidate, &plan.prior) {
        (StatusCode::NOT_MODIFIED, true, Some(prior)) => {
            return not_modified(cache, prior, resp, plan, &client, times)
        }
        _ => resp,
    };
    plan.count(&s.counters.misses);
    let storable = match store_verdict(cache, &resp, plan, times) {
        Ok(storable) => storable,
        Err(marked) => {
            let head = client.method == Method::HEAD;
            return Fetched::Passed(pass_through(resp, marked, head));
        }
    };
    let (rparts, body) = match read_whole(cache, resp, plan, &client).await {
        Ok(read) => read,
        Err(done) => return done,
    };
    let storable = s.adapt_storable(plan, &client.headers, storable);
    let (entry, own) = entry_of(cache, rparts, body, storable, plan, &client, times.response);
    store_and_answer(cache, entry, own, plan, &client, times.response)
}

/// When the upstream was asked and answered (wall-clock milliseconds).
#[derive(Clone, Copy)]
struct Times {
    request: u64,
    response: u64,
}

/// The request sent upstream: always `GET`; when the response will be
/// stored, without the client's conditionals and `Range`; when
/// revalidating, with the stored entry's validators.
fn upstream_request(mut parts: http::request::Parts, plan: &Fetch) -> http::request::Parts {
    parts.method = Method::GET;
    if !plan.directives.cc.no_store {
        // The response is fetched whole and stored; the client's own
        // conditionals are answered from the stored entry afterwards.
        for h in &NOT_FORWARDED_WHEN_STORING {
            parts.headers.remove(h);
        }
    }
    if let (true, Some(prior)) = (plan.revalidate, &plan.prior) {
        if let Some(etag) = prior.etag() {
            parts.headers.insert(IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = prior.last_modified() {
            parts.headers.insert(IF_MODIFIED_SINCE, lm.clone());
        }
    }
    parts
}

/// Calls the upstream within `upstream_timeout`, timed and counted. A
/// missed deadline or a transport error is the exchange's end (`Err`).
async fn call_upstream<B, U>(
    cache: &Cache,
    up: U,
    req: Request<B>,
    plan: &Fetch,
) -> Result<(Response<U::Body>, Times), Fetched<U, B>>
where
    U: Upstream<B>,
{
    let s = &*cache.shared;
    let request = cache.now();
    s.counters.upstream_calls.incr();
    let started = s.obs.start();
    let result = within(s.cfg.upstream_timeout, up.call(req)).await;
    let response = cache.now();
    let took = std::time::Duration::from_nanos(s.obs.elapsed_ns(started));
    let Ok(result) = result else {
        // No response head within the deadline: the upstream is failing.
        s.obs.upstream_done(plan.label, took, None);
        upstream_timed_out(cache, plan, response);
        return Err(Fetched::TimedOut(false));
    };
    s.obs
        .upstream_done(plan.label, took, result.as_ref().ok().map(|r| r.status()));
    match result {
        Ok(resp) => Ok((resp, Times { request, response })),
        Err(e) => {
            upstream_failed(cache, plan, None, response);
            Err(Fetched::Failed(Err(e), false))
        }
    }
}

/// A 304 to a revalidation: the stored entry, freshened (and stored again),
/// answers; if the 304 forbids storing, the old body answers once and the
/// entry is dropped.
fn not_modified<U: Upstream<B>, B>(
    cache: &Cache,
    prior: &Arc<Entry>,
    resp: Response<U::Body>,
    plan: &Fetch,
    client: &Parts,
    times: Times,
) -> Fetched<U, B> {
    let s = &*cache.shared;
    let (rparts, _body) = resp.into_parts();
    let freshened = freshen(
        cache,
        prior,
        &rparts.headers,
        plan,
        client,
        times.request,
        times.response,
    );
    let (answer, marked) = match &freshened {
        Some(entry) => {
            plan.count(&s.counters.revalidated);
            let marked = Status::forward(plan.fwd)
                .with_fwd_status(304)
                .with_detail(plan.tier.detail());
            (entry, marked)
        }
        None => {
            // The 304 forbade storing: answer from the old body once.
            plan.count(&s.counters.misses);
            cache.invalidate_hash(plan.key);
            (prior, Status::forward(plan.fwd).with_fwd_status(304))
        }
    };
    let mut resp = respond(cache, answer, client, plan, times.response, marked);
    // Cookies set by the 304 are this client's alone.
    append_cookies(&mut resp, rparts.headers.get_all(SET_COOKIE));
    match freshened {
        Some(entry) => Fetched::Stored(entry, resp),
        None => Fetched::Passed(resp),
    }
}

/// Adds `Set-Cookie` values kept out of the stored entry to this client's
/// answer.
fn append_cookies<'v, RB>(
    resp: &mut Response<RB>,
    cookies: impl IntoIterator<Item = &'v HeaderValue>,
) {
    for c in cookies {
        resp.headers_mut().append(SET_COOKIE, c.clone());
    }
}

/// Whether the response may be stored (`Ok`, with the policy's verdict),
/// or passes through uncached with this status (`Err`): an adapter said it
/// is not the URL's own (a redirect its client followed), or the policy
/// refused it.
fn store_verdict<RB>(
    cache: &Cache,
    resp: &Response<RB>,
    plan: &Fetch,
    times: Times,
) -> Result<crate::policy::Storable, Status> {
    let s = &*cache.shared;
    let status = resp.status();
    let forwarded = Status::forward(plan.fwd).with_fwd_status(status.as_u16());
    if let Some(NotStorable(why)) = resp.extensions().get::<NotStorable>().copied() {
        return Err(forwarded.with_detail(Detail::NotStored(why)));
    }
    if status == StatusCode::PARTIAL_CONTENT {
        // A part to a request for the whole (the cache never asks for a
        // range here): never stored as the complete response.
        s.obs.not_stored(plan.label, NotStored::Status);
        return Err(forwarded.with_detail(Detail::NotStored(reason_token(NotStored::Status))));
    }
    let route = plan.route.map(|i| &s.policy.routes[i]);
    let judged = s.policy.storable(
        &plan.directives,
        status,
        resp.headers(),
        route,
        times.request,
        times.response,
    );
    judged.map_err(|reason| {
        s.obs.not_stored(plan.label, reason);
        if reason.remember(plan.directives.cc.no_store) {
            cache.mark_hit_for_pass(plan.key);
        }
        forwarded.with_detail(Detail::NotStored(reason_token(reason)))
    })
}

/// Whether a 5xx is stored and answered like any response (RFC 9111 §3:
/// it states its own freshness, and `store_server_errors` is on) rather
/// than handled as a failure. A failure it stays for a background refresh
/// (the stale entry is kept) and where `stale-if-error` lets a stale entry
/// answer instead. Pure: nothing is counted or remembered here (a 5xx must
/// never make its key hit-for-pass).
fn stores_server_error<RB>(cache: &Cache, resp: &Response<RB>, plan: &Fetch, times: Times) -> bool {
    let s = &*cache.shared;
    if plan.background {
        return false;
    }
    let stale_ok = plan
        .prior
        .as_ref()
        .is_some_and(|p| s.policy.stale_if_error_ok(p, &plan.directives, cache.now()));
    if stale_ok {
        return false;
    }
    let route = plan.route.map(|i| &s.policy.routes[i]);
    s.policy
        .storable(
            &plan.directives,
            resp.status(),
            resp.headers(),
            route,
            times.request,
            times.response,
        )
        .is_ok()
}

/// Reads the whole body within the upstream deadline and the body cap.
/// Anything else ends the exchange (`Err`): a body over the cap streams
/// through uncached; a body shorter or longer than its `Content-Length`
/// is a 502 (never stored, never passed on as whole); a stalled body is a
/// timeout; a body that fails passes on with its error.
async fn read_whole<U: Upstream<B>, B>(
    cache: &Cache,
    resp: Response<U::Body>,
    plan: &Fetch,
    client: &Parts,
) -> Result<(http::response::Parts, Bytes), Fetched<U, B>> {
    let max = cache.shared.cfg.max_body_bytes;
    let status = resp.status();
    let head = client.method == Method::HEAD;
    let declared = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(
            cache,
            plan,
            status,
            resp.map(CacheBody::stream),
            client,
        ));
    }
    let (rparts, body) = resp.into_parts();
    let forwarded = Status::forward(plan.fwd).with_fwd_status(status.as_u16());
    match buffer(body, max, cache.shared.cfg.upstream_timeout).await {
        Buffered::Complete(bytes) if declared.is_some_and(|n| n != bytes.len() as u64) => {
            // The body ended before (or ran past) its declared length: a
            // broken response. A 502 (or stale-if-error).
            drop((rparts, bytes));
            upstream_failed(cache, plan, None, cache.now());
            let mut resp = gateway_timeout(forwarded.with_detail(Detail::Incomplete));
            *resp.status_mut() = StatusCode::BAD_GATEWAY;
            Err(Fetched::Failed(Ok(resp), true))
        }
        Buffered::Complete(bytes) => Ok((rparts, bytes)),
        Buffered::TimedOut => {
            // The body stalled: nothing was sent to the client yet.
            upstream_timed_out(cache, plan, cache.now());
            Err(Fetched::TimedOut(true))
        }
        Buffered::TooLarge(prefix, rest) => {
            let resp = Response::from_parts(rparts, CacheBody::prefixed(prefix, None, rest));
            Err(too_large(cache, plan, status, resp, client))
        }
        Buffered::Failed(prefix, error, rest) => {
            let body = if head {
                CacheBody::empty()
            } else {
                CacheBody::prefixed(prefix, Some(error), rest)
            };
            let mut resp = Response::from_parts(rparts, body);
            mark(&mut resp, forwarded);
            Err(Fetched::Failed(Ok(resp), true))
        }
    }
}

/// The entry to store for a complete response, and the fields kept out of
/// it that are this client's alone: `Set-Cookie` under
/// [`SetCookiePolicy::Strip`](crate::SetCookiePolicy::Strip), and the
/// fields `no-cache="…"` / `private="…"` name (RFC 9111 §5.2.2.4,
/// §5.2.2.7: not sent to a later request without revalidation, but the
/// response from the origin keeps them).
fn entry_of(
    cache: &Cache,
    rparts: http::response::Parts,
    body: Bytes,
    storable: crate::policy::Storable,
    plan: &Fetch,
    client: &Parts,
    response_time: u64,
) -> (Arc<Entry>, Vec<(HeaderName, HeaderValue)>) {
    let s = &*cache.shared;
    let status = rparts.status;
    let mut headers = rparts.headers;
    let tags = s.cfg.tags.extract(client, &headers);
    let mut own = Vec::new();
    let kept_out = storable
        .strip
        .iter()
        .chain(storable.strip_set_cookie.then_some(&SET_COOKIE));
    for name in kept_out {
        for v in headers.get_all(name) {
            own.push((name.clone(), v.clone()));
        }
    }
    strip_hop_by_hop(&mut headers);
    headers.remove(AGE);
    headers.remove(&CACHE_STATUS);
    if !headers.contains_key(DATE) {
        // RFC 9110 §6.6.1: a cache forwarding a response without Date adds one.
        headers.insert(DATE, http_date(response_time));
    }
    strip_for_storage(&mut headers, &storable);
    if status != StatusCode::NO_CONTENT && status != StatusCode::NOT_MODIFIED {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len() as u64));
    }
    let vary = stored_vary_values(cache, &storable.vary, client);
    let key = s.keys.readable(client).unwrap_or_default();
    let entry = Arc::new(Entry {
        key: key.into_boxed_str(),
        status,
        version: rparts.version,
        // Copied: hyper's values are views into the connection's buffer.
        headers: crate::entry::owned_headers(&headers),
        body,
        vary,
        timeline: storable.timeline,
        flags: storable.flags,
        extensions: 0,
        tags,
        template: Default::default(),
        label: plan.label,
        reads: Default::default(),
        value: None,
    });
    (entry, own)
}

/// The request's values of the fields the response varies on, as stored:
/// owned copies, and for a partitioned entry's credentials a placeholder
/// (their values are never stored, not in L1, not in Redis).
fn stored_vary_values(
    cache: &Cache,
    names: &[HeaderName],
    client: &Parts,
) -> Box<[(HeaderName, Box<[HeaderValue]>)]> {
    names
        .iter()
        .map(|n| {
            if cache.shared.keys.credentials
                && crate::key::is_credential_header(n)
                && client.headers.contains_key(n)
            {
                return (
                    n.clone(),
                    Box::new([crate::entry::PARTITIONED.clone()]) as Box<[_]>,
                );
            }
            // Copied: the client's values are views into its read buffer.
            let vals = crate::entry::owned_vary_values(client.headers.get_all(n).iter());
            (n.clone(), vals)
        })
        .collect()
}

/// Stores the entry in the tiers (timed, counted) and answers this client
/// from it.
fn store_and_answer<U: Upstream<B>, B>(
    cache: &Cache,
    entry: Arc<Entry>,
    own: Vec<(HeaderName, HeaderValue)>,
    plan: &Fetch,
    client: &Parts,
    response_time: u64,
) -> Fetched<U, B> {
    let s = &*cache.shared;
    let vary: Vec<HeaderName> = entry.vary.iter().map(|(n, _)| n.clone()).collect();
    let store_started = s.obs.start();
    let stored = s
        .tiers
        .store(plan.key, &entry, &vary, &client.headers, response_time);
    let span = tracing::Span::current();
    if !span.is_disabled() {
        let ms = s.obs.elapsed_ns(store_started) as f64 / 1e6;
        span.record("cache.store_ms", ms);
    }
    if stored {
        s.counters.stores.incr();
        s.obs.stored(plan.label);
    }
    s.hit_for_pass.remove(&plan.key);
    let forwarded = Status::forward(plan.fwd).with_fwd_status(entry.status.as_u16());
    let marked = if stored {
        Status {
            stored: true,
            ..forwarded
        }
    } else {
        forwarded.with_detail(Detail::NotStored("not-stored"))
    };
    let mut resp = respond(cache, &entry, client, plan, response_time, marked);
    for (name, value) in own {
        resp.headers_mut().append(name, value);
    }
    Fetched::Stored(entry, resp)
}

fn too_large<U: Upstream<B>, B>(
    cache: &Cache,
    plan: &Fetch,
    status: StatusCode,
    resp: Response<CacheBody<U::Body>>,
    client: &Parts,
) -> Fetched<U, B> {
    cache.shared.counters.too_large.incr();
    cache
        .shared
        .obs
        .not_stored(plan.label, crate::NotStored::TooLarge);
    cache.mark_hit_for_pass(plan.key);
    let (parts, body) = resp.into_parts();
    let body = if client.method == Method::HEAD {
        CacheBody::empty()
    } else {
        body
    };
    let mut resp = Response::from_parts(parts, body);
    mark(
        &mut resp,
        Status::forward(plan.fwd)
            .with_fwd_status(status.as_u16())
            .with_detail(Detail::NotStored(reason_token(crate::NotStored::TooLarge))),
    );
    Fetched::Passed(resp)
}

/// Applies a 304's headers to the stored entry and recomputes freshness
/// (RFC 9111 §4.3.4). `None` when the updated response may not be stored.
fn freshen(
    cache: &Cache,
    prior: &Arc<Entry>,
    update: &HeaderMap,
    plan: &Fetch,
    client: &Parts,
    request_time: u64,
    response_time: u64,
) -> Option<Arc<Entry>> {
    let s = &cache.shared;
    let mut headers = prior.headers.clone();
    let mut seen: Vec<&HeaderName> = Vec::new();
    for (name, value) in update.iter() {
        if *name == CONTENT_LENGTH || *name == AGE || *name == CACHE_STATUS {
            continue;
        }
        if !seen.contains(&name) {
            headers.remove(name);
            seen.push(name);
        }
        headers.append(name.clone(), value.clone());
    }
    strip_hop_by_hop(&mut headers);
    if !update.contains_key(DATE) {
        // The 304 is the newest response: without its own Date, it is dated now.
        headers.insert(DATE, http_date(response_time));
    }
    let route = plan.route.map(|i| &s.policy.routes[i]);
    // The origin's view decides (a client's no-store must not drop the
    // shared entry); Authorization still matters.
    let origin_view = RequestDirectives {
        authorized: plan.directives.authorized,
        ..RequestDirectives::default()
    };
    let st = s
        .policy
        .storable(
            &origin_view,
            prior.status,
            &headers,
            route,
            request_time,
            response_time,
        )
        .ok()?;
    let st = s.adapt_storable(plan, &client.headers, st);
    strip_for_storage(&mut headers, &st);
    let mut entry = (**prior).clone();
    // Copied: the 304's values are views into the connection's buffer.
    entry.headers = crate::entry::owned_headers(&headers);
    entry.template = Default::default();
    entry.timeline = st.timeline;
    entry.flags = st.flags;
    entry.extensions = 0;
    let entry = Arc::new(entry);
    if s.tiers.replace(
        plan.key,
        prior,
        Arc::clone(&entry),
        &client.headers,
        plan.tier,
        cache.now(),
    ) {
        s.counters.stores.incr();
        s.obs.stored(plan.label);
    }
    Some(entry)
}

/// Removes what a stored copy must not keep: the fields named by
/// `no-cache="…"` / `private="…"`, and `Set-Cookie` under
/// [`SetCookiePolicy::Strip`](crate::SetCookiePolicy::Strip).
fn strip_for_storage(headers: &mut HeaderMap, st: &crate::policy::Storable) {
    for name in &st.strip {
        headers.remove(name);
    }
    if st.strip_set_cookie {
        headers.remove(SET_COOKIE);
    }
}

/// An HTTP-date for a wall-clock instant in milliseconds.
fn http_date(millis: u64) -> HeaderValue {
    let date =
        httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis));
    HeaderValue::from_str(&date)
        .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

fn reason_token(r: NotStored) -> &'static str {
    match r {
        NotStored::Status => "status",
        NotStored::NoStore => "no-store",
        NotStored::Private => "private",
        NotStored::SetCookie => "set-cookie",
        NotStored::VaryStar => "vary-star",
        NotStored::Authorization => "authorization",
        NotStored::NoFreshness => "no-freshness",
        NotStored::TooLarge => "too-large",
    }
}

/// The upstream's response, streamed, with a `Cache-Status`.
fn pass_through<RB: Body>(
    resp: Response<RB>,
    status: Status,
    head: bool,
) -> Response<CacheBody<RB>> {
    let (parts, body) = resp.into_parts();
    let body = if head {
        CacheBody::empty()
    } else {
        CacheBody::stream(body)
    };
    let mut resp = Response::from_parts(parts, body);
    mark(&mut resp, status);
    resp
}

/// Counts a failed upstream call: a transport error or a broken body
/// (`status` `None`: it counts against the label's breaker) or a 5xx (its
/// status decides whether it does).
fn upstream_failed(cache: &Cache, plan: &Fetch, status: Option<StatusCode>, now: u64) {
    let s = &*cache.shared;
    let breaker = s.upstream_breaker(plan.label);
    match status {
        Some(status) => breaker.record_response(status, now),
        None => breaker.record_failure(now),
    }
    s.counters.upstream_errors.incr();
    s.obs.upstream_error(plan.label);
}

/// Counts an upstream call that missed its deadline.
fn upstream_timed_out(cache: &Cache, plan: &Fetch, now: u64) {
    upstream_failed(cache, plan, None, now);
    cache.shared.counters.upstream_timeouts.incr();
}

enum Buffered<RB: Body> {
    Complete(Bytes),
    /// The whole body did not arrive within the deadline.
    TimedOut,
    TooLarge(VecDeque<Bytes>, std::pin::Pin<Box<RB>>),
    Failed(VecDeque<Bytes>, RB::Error, std::pin::Pin<Box<RB>>),
}

/// Reads the body up to `max` bytes, all of it within `limit`. Trailers
/// are not stored.
async fn buffer<RB: Body>(body: RB, max: u64, limit: Duration) -> Buffered<RB> {
    let mut body = Box::pin(body);
    let mut frames: VecDeque<Bytes> = VecDeque::new();
    let mut total: u64 = 0;
    let deadline = tokio::runtime::Handle::try_current()
        .is_ok()
        .then(|| tokio::time::Instant::now() + limit);
    loop {
        let next = poll_fn(|cx| body.as_mut().poll_frame(cx));
        let frame = match deadline {
            Some(at) => match tokio::time::timeout_at(at, next).await {
                Ok(frame) => frame,
                Err(_) => return Buffered::TimedOut,
            },
            None => next.await,
        };
        match frame {
            None => break,
            Some(Err(e)) => return Buffered::Failed(frames, e, body),
            Some(Ok(frame)) => {
                if let Ok(mut data) = frame.into_data() {
                    let chunk = data.copy_to_bytes(data.remaining());
                    total += chunk.len() as u64;
                    if !chunk.is_empty() {
                        frames.push_back(chunk);
                    }
                    if total > max {
                        return Buffered::TooLarge(frames, body);
                    }
                }
            }
        }
    }
    let bytes = match frames.len() {
        0 => Bytes::new(),
        // A single frame may be a view into a larger buffer (hyper's read
        // buffer): the stored body gets an allocation of its own.
        1 => crate::entry::owned_bytes(&frames.pop_front().unwrap_or_default()),
        _ => {
            let mut buf = BytesMut::with_capacity(total as usize);
            for f in frames {
                buf.extend_from_slice(&f);
            }
            buf.freeze()
        }
    };
    Buffered::Complete(bytes)
}

/// Refreshes a stale entry in the background: one per key, bounded in
/// number, with a deadline, outside the request's cancellation.
pub(crate) fn spawn_refresh<B, U>(
    cache: Cache,
    req: Request<B>,
    up: U,
    plan: Box<Fetch>,
    cause: &tracing::Span,
) where
    B: Send + 'static,
    U: Upstream<B> + 'static,
    U::Future: Send,
{
    let s = &*cache.shared;
    let Some(guard) = s.inflight.try_lead(plan.key) else {
        return; // A refresh or a miss for this key is already in flight.
    };
    let Ok(permit) = Arc::clone(&s.refreshes).try_acquire_owned() else {
        s.counters.refresh_skipped.incr();
        return;
    };
    launch_refresh(cache, req, up, plan, cause, guard, permit);
}

/// Runs a refresh that leads its key's flight (`guard`) and holds its
/// `permit` (taken at once by [`spawn_refresh`], waited for by
/// `refresh_hot`), on its own task within `refresh_timeout`, unless there
/// is no runtime or the label's upstream breaker refuses (counted as
/// skipped). Returns whether it started.
pub(crate) fn launch_refresh<B, U>(
    cache: Cache,
    req: Request<B>,
    up: U,
    plan: Box<Fetch>,
    cause: &tracing::Span,
    guard: coalesce::FlightGuard,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> bool
where
    B: Send + 'static,
    U: Upstream<B> + 'static,
    U::Future: Send,
{
    let s = &*cache.shared;
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        s.counters.refresh_skipped.incr();
        return false;
    };
    if !s.upstream_breaker(plan.label).allow(cache.now()) {
        s.counters.refresh_skipped.incr();
        return false;
    }
    let deadline = s.cfg.refresh_timeout;
    // Its own trace, linked to the request that started it.
    let span = crate::observe::refresh_span(s.obs.cfg.span_level, &s.obs.labels.name(plan.label));
    span.follows_from(cause);
    let task_span = span.clone();
    handle.spawn(tracing::Instrument::instrument(
        async move {
            let _permit = permit;
            let outcome = refresh(&cache, req, up, &plan, deadline).await;
            if !tracing::Span::current().is_disabled() {
                let result = match &outcome {
                    Outcome::Stored(_) | Outcome::Cached(..) => "refreshed",
                    Outcome::Pass => "dropped",
                    _ => "failed",
                };
                tracing::Span::current().record("cache.result", result);
            }
            guard.complete(outcome);
        },
        task_span,
    ));
    true
}

/// One background refresh, within `deadline`: a newer copy another
/// instance put in L2, or the upstream's answer; when that fails, the
/// stale entry is kept with its windows extended.
async fn refresh<B, U>(
    cache: &Cache,
    mut req: Request<B>,
    up: U,
    plan: &Fetch,
    deadline: Duration,
) -> Outcome
where
    B: Send + 'static,
    U: Upstream<B>,
{
    let s = &*cache.shared;
    *req.method_mut() = Method::GET;
    let headers = req.headers().clone();
    #[cfg(feature = "redis")]
    if let Some(found) = refreshed_elsewhere(cache, plan, &headers).await {
        return found;
    }
    match tokio::time::timeout(deadline, exchange(cache, req, up, plan)).await {
        Ok(Fetched::Stored(entry, _)) => {
            s.counters.refresh_ok.incr();
            Outcome::Stored(entry)
        }
        Ok(Fetched::Passed(_)) => {
            // The origin no longer lets this be stored: drop the stale copy.
            s.counters.refresh_ok.incr();
            cache.invalidate_hash(plan.key);
            Outcome::Pass
        }
        Err(_) => {
            // The deadline passed: that counts against the upstream.
            s.upstream_breaker(plan.label).record_failure(cache.now());
            refresh_failed(cache, plan, &headers, true)
        }
        Ok(failed) => {
            let timed_out = matches!(failed, Fetched::TimedOut(_));
            refresh_failed(cache, plan, &headers, timed_out)
        }
    }
}

/// Another instance may have refreshed the entry already: a fresh copy in
/// L2, newer than the stale one, replaces it in L1.
#[cfg(feature = "redis")]
async fn refreshed_elsewhere(cache: &Cache, plan: &Fetch, headers: &HeaderMap) -> Option<Outcome> {
    let s = &*cache.shared;
    let old = plan.prior.as_ref()?;
    let now = cache.now();
    let L2Lookup::Found(found, tier) = s.tiers.lookup_l2(plan.key, headers, Some(old), now).await
    else {
        return None;
    };
    if s.policy.usability(&found, &plan.directives, now) != Usability::Fresh {
        return None;
    }
    s.tiers.adopt(plan.key, old, &found, tier, headers);
    s.counters.refresh_ok.incr();
    Some(Outcome::Cached(found, Tier::L2))
}

/// A refresh that failed: counted, logged, and the stale entry kept with
/// its windows extended (a bounded number of times).
fn refresh_failed(cache: &Cache, plan: &Fetch, headers: &HeaderMap, timed_out: bool) -> Outcome {
    let s = &*cache.shared;
    s.counters.refresh_failed.incr();
    if s.obs.cfg.log.warnings() {
        tracing::warn!(
            target: "tower_tiered_cache",
            key = %plan.key,
            label = %s.obs.labels.name(plan.label),
            timed_out,
            "background refresh failed; keeping the stale entry"
        );
    }
    if let Some(prior) = &plan.prior {
        if let Some(extended) = cache.extended(prior) {
            let extended = Arc::new(extended);
            s.tiers
                .replace(plan.key, prior, extended, headers, plan.tier, cache.now());
        }
    }
    Outcome::Failed
}

/// An unsafe method: forward it, and when it succeeds invalidate the target
/// URI and same-origin `Location` / `Content-Location` (RFC 9111 §4.4).
pub(crate) async fn unsafe_method<B, U>(cache: Cache, req: Request<B>, up: U) -> CacheResult<U, B>
where
    B: Send + 'static,
    U: Upstream<B>,
{
    let (parts, body) = req.into_parts();
    let view = get_view(crate::key::key_uri(&parts), &parts.headers);
    let req = Request::from_parts(parts, body);
    let counters = &cache.shared.counters;
    counters.upstream_calls.incr();
    let resp = match within(cache.shared.cfg.upstream_timeout, up.call(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            counters.upstream_errors.incr();
            return Err(e);
        }
        Err(Elapsed) => {
            counters.upstream_errors.incr();
            counters.upstream_timeouts.incr();
            return Ok(gateway_timeout(
                Status::METHOD.with_detail(Detail::UpstreamTimeout),
            ));
        }
    };
    let status = resp.status();
    if status.is_server_error() {
        counters.upstream_errors.incr();
    }
    if status.is_success() || status.is_redirection() {
        cache.invalidate_parts(&view);
        for name in [LOCATION, CONTENT_LOCATION] {
            if let Some(target) = resp
                .headers()
                .get(&name)
                .and_then(|v| same_origin(&view, v))
            {
                cache.invalidate_parts(&target);
            }
        }
    }
    Ok(pass_through(resp, Status::METHOD, false))
}

/// The request view for `location` when it names the same origin as `base`.
fn same_origin(base: &Parts, location: &HeaderValue) -> Option<Parts> {
    let loc: Uri = location.to_str().ok()?.parse().ok()?;
    let base_authority = base
        .uri
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase())
        .or_else(|| {
            base.headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_ascii_lowercase)
        });
    let path_and_query = match loc.authority() {
        Some(a) => {
            if Some(a.as_str().to_ascii_lowercase()) != base_authority {
                return None;
            }
            if let (Some(ls), Some(bs)) = (loc.scheme_str(), base.uri.scheme_str()) {
                if !ls.eq_ignore_ascii_case(bs) {
                    return None;
                }
            }
            loc.path_and_query()?.as_str().to_owned()
        }
        None => {
            let s = location.to_str().ok()?;
            if s.starts_with('/') {
                s.to_owned()
            } else {
                // A relative reference: resolve against the base path.
                let dir = base.uri.path().rsplit_once('/').map_or("", |(d, _)| d);
                format!("{dir}/{s}")
            }
        }
    };
    let uri: Uri = if base.uri.authority().is_some() {
        let mut b = Uri::builder().path_and_query(path_and_query.as_str());
        if let Some(sch) = base.uri.scheme() {
            b = b.scheme(sch.clone());
        }
        if let Some(a) = base.uri.authority() {
            b = b.authority(a.clone());
        }
        b.build().ok()?
    } else {
        path_and_query.parse().ok()?
    };
    let mut p = request_view(base);
    p.uri = uri;
    Some(p)
}
