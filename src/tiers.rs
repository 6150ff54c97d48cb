//! The tiers as one store: L1 in process and, with the `redis` feature, an
//! optional L2 in Redis, with the rules between them:
//!
//! - **lookup**: which copy may answer a request, and the tier it came
//!   from ([`Tier`]); an L1 copy past `retain_until` is dropped, an L1 copy
//!   the invalidation channel cannot vouch for is skipped;
//! - **admission**: which entries L1 holds ([`L1Admission`], decided by
//!   one function, [`Tiers::admits`], for every path that writes L1: a new
//!   entry, a replacement, an adopted copy, a promotion); L2 takes every
//!   entry, off the request path;
//! - **promotion**: when an entry read from L2 is copied into L1 (after
//!   `promote_after` hits, at once when it replaces an older L1 copy the
//!   rule let in, never when an invalidation may have come after the
//!   read);
//! - **replacement**: a 304-merged or extended entry replaces the one it
//!   was made from, wherever that was found.
//!
//! The engine asks L1 synchronously on every request (a hit never waits for
//! a future) and L2 only from the request that leads a miss; [`Tiers::lookup`]
//! does both in order for callers without that split.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName};

use crate::entry::Entry;
use crate::key::KeyHash;
use crate::reads::ReadCounts;
use crate::stats::Counter;
use crate::status::{Detail, Fwd};
use crate::store::memory::{Found, MemoryStore};
use crate::store::order::{Generation, Generations, Scope, Use};

/// Which entries L1 holds when an L2 tier is below it; the others live in
/// L2 only until they qualify
/// ([`CacheBuilder::l1_admission`](crate::CacheBuilder::l1_admission)).
///
/// Two ways in: when an entry is stored (a response, a revalidated or
/// refreshed copy), by its weight, as L1 weighs it (body, headers, key,
/// bookkeeping; see [`Entry::weight`]); and by promotion, once an entry
/// found only in L2 has been read
/// `CacheBuilder::promote_after` times within the
/// `promotion_window` (the counts
/// are bounded like every promotion count). A newer version of an entry L1
/// holds (revalidated, refreshed here or by another instance) replaces it
/// unless its size is refused; refused, the older L1 copy is removed so
/// that the newer one answers from L2.
///
/// Without an L2 tier every rule admits every entry: L1 is then the only
/// tier, and keeping an entry out of it would mean not caching it (that is
/// [`l1_max_entry_bytes`](crate::CacheBuilder::l1_max_entry_bytes)' job).
///
/// Entries a rule keeps out of L1 are counted in
/// [`Stats::l1_not_admitted`](crate::Stats::l1_not_admitted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum L1Admission {
    /// Every entry goes to L1 when it is stored (write-through); one found
    /// only in L2 is copied in after `promote_after` reads. The default
    /// ([`DEFAULT_L1_ADMISSION`](crate::builder::DEFAULT_L1_ADMISSION)),
    /// and what `l1_write_through(true)` sets.
    Always,
    /// Entries weighing at most this many bytes go to L1 when stored (and,
    /// found only in L2, after `promote_after` reads); heavier ones never
    /// do: they are served from L2 however often they are read. At least 1.
    MaxBytes(u64),
    /// No entry goes to L1 when stored; each is copied in once read
    /// `promote_after` times from L2. What `l1_write_through(false)` sets.
    Reads,
    /// Small ones at once, the others once read: entries weighing at most
    /// this many bytes go to L1 when stored, heavier ones once read
    /// `promote_after` times from L2. At least 1.
    MaxBytesOrReads(u64),
}

impl L1Admission {
    /// The heaviest entry the rule's size admits; `None`: no size limit.
    fn max_bytes(self) -> Option<u64> {
        match self {
            L1Admission::MaxBytes(b) | L1Admission::MaxBytesOrReads(b) => Some(b),
            L1Admission::Always | L1Admission::Reads => None,
        }
    }

    /// Whether an entry within the size goes to L1 when stored.
    fn on_store(self) -> bool {
        !matches!(self, L1Admission::Reads)
    }

    /// Whether reads admit an entry over the size.
    fn reads_admit_heavy(self) -> bool {
        !matches!(self, L1Admission::MaxBytes(_))
    }
}

/// How an entry is about to reach L1, for [`Tiers::admits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Way {
    /// Stored: a new entry (a response, a value), or a revalidated copy of
    /// an entry L1 does not hold.
    Store,
    /// In place of an older version L1 holds (304-merged, extended,
    /// refreshed by another instance, found newer in L2): the key has its
    /// place in L1, only the size may refuse it.
    Newer,
    /// Read from L2: whether the read counts towards promotion.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Read,
}

/// The tier a found entry was read from. Everything else about the entry
/// (freshness, revalidation, 304 merging, `Cache-Status`) is decided the
/// same way for both ([`Cache::judge`](crate::Cache)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Tier {
    /// In-process memory.
    L1,
    /// Redis; `since` is the generation at which the read started (what
    /// was read is not promoted past a later invalidation; see
    /// `store/order.rs`).
    L2 { since: Generation },
}

impl Tier {
    /// The tier as `Cache-Status`' `detail` names it.
    pub(crate) fn detail(self) -> Detail {
        match self {
            Tier::L1 => Detail::L1,
            Tier::L2 { .. } => Detail::L2,
        }
    }
}

/// What the L1 step of a lookup found.
pub(crate) enum L1Lookup {
    /// A copy this request may judge.
    Found(Arc<Entry>),
    /// None usable; `fwd` is the `Cache-Status` forward reason
    /// (`uri-miss`, or `vary-miss` when other variants are stored).
    Miss { fwd: Fwd },
}

/// What the L2 step of a lookup found.
#[cfg(feature = "redis")]
pub(crate) enum L2Lookup {
    /// An entry, newer than the prior copy if one was given.
    Found(Arc<Entry>, Tier),
    /// Nothing usable; `varied` when the URL has other variants in L2.
    Miss { varied: bool },
}

/// How many key invalidations made here L1's order remembers (the least
/// used records go first: a fetch that outlives that many invalidations of
/// other keys may store a value read before its own).
const L1_INVALIDATIONS_REMEMBERED: usize = 10_000;

/// Where the tiers' order of writes and invalidations stood when a fetch
/// started (`store/order.rs`): what it got is stored only if no
/// invalidation that may cover its key came since
/// ([`Tiers::still_current`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    /// L1's order: invalidations made here.
    l1: Generation,
    /// L2's order: invalidations made here and those other instances
    /// announced.
    #[cfg(feature = "redis")]
    l2: Generation,
}

/// L1, the optional L2, and how entries move between them.
pub(crate) struct Tiers {
    pub(crate) l1: MemoryStore,
    #[cfg(feature = "redis")]
    pub(crate) l2: Option<Arc<crate::store::l2::L2>>,
    /// Which entries go to L1 (every entry without L2).
    admission: L1Admission,
    /// Entries the rule kept out of L1 (stored in L2 only).
    not_admitted: Counter,
    /// How often keys are read, with adaptive TTL on (`reads.rs`).
    pub(crate) read_counts: Option<ReadCounts>,
    /// The invalidations made here, in L1's order (L2 keeps its own).
    order: Generations,
    /// Whether hot entries are copied into per-thread fronts
    /// ([`lookup_hit`](Self::lookup_hit), `front.rs`): off when reads are
    /// counted past the first (eager refresh, adaptive TTL), since a
    /// front's hits are not counted on the shared entry.
    front: bool,
}

impl Tiers {
    /// L1 alone, with the rule it follows once an L2 tier is added.
    pub(crate) fn new(l1: MemoryStore, admission: L1Admission) -> Self {
        Self {
            l1,
            #[cfg(feature = "redis")]
            l2: None,
            admission,
            not_admitted: Counter::default(),
            read_counts: None,
            order: Generations::new(L1_INVALIDATIONS_REMEMBERED),
            front: true,
        }
    }

    /// Turns the per-thread fronts on or off (on by default).
    pub(crate) fn set_front(&mut self, on: bool) {
        self.front = on;
    }

    /// Records an invalidation made here of `scope`, before L1 removes
    /// what it covers: a fetch under way then will not store what it got
    /// ([`still_current`](Self::still_current)).
    pub(crate) fn note_invalidated(&self, scope: Scope) {
        self.order.invalidate(scope);
    }

    /// Where the order stands now: taken when a fetch starts.
    #[cfg_attr(not(feature = "values"), allow(dead_code))]
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket {
            l1: self.order.next(),
            #[cfg(feature = "redis")]
            l2: self
                .l2
                .as_ref()
                .map_or(Generation::NONE, |l2| l2.generation()),
        }
    }

    /// Whether what a fetch started at `ticket` got for `key` may still be
    /// stored: no invalidation that may cover the key (of the key, a tag,
    /// a prefix, a clear, here or announced by another instance) came
    /// since. Else it would undo the invalidation: "update the source,
    /// then delete the key" racing with a fetch that read the old source.
    #[cfg_attr(not(feature = "values"), allow(dead_code))]
    pub(crate) fn still_current(&self, key: KeyHash, ticket: Ticket) -> bool {
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.l2 {
            if !l2.may_promote(key, ticket.l2) {
                return false;
            }
        }
        self.order.still_applies(key, ticket.l1, Use::Promote)
    }

    /// These tiers with (when `Some`) L2 below L1.
    #[cfg(feature = "redis")]
    pub(crate) fn with_l2(self, l2: Option<Arc<crate::store::l2::L2>>) -> Self {
        Self { l2, ..self }
    }

    /// Whether an L2 tier is configured.
    #[inline]
    pub(crate) fn has_l2(&self) -> bool {
        #[cfg(feature = "redis")]
        {
            self.l2.is_some()
        }
        #[cfg(not(feature = "redis"))]
        {
            false
        }
    }

    /// The tier `entry`, just stored, is read back from: L1 when the rule
    /// admitted it, else L2.
    pub(crate) fn store_tier(&self, entry: &Entry) -> Detail {
        if self.admits(entry, Way::Store) {
            Detail::L1
        } else {
            Detail::L2
        }
    }

    /// The admission rule's one decision: whether `entry`, reaching L1
    /// `way`, may go there (every entry may without L2). For [`Way::Read`]:
    /// whether its L2 reads count towards promotion.
    pub(crate) fn admits(&self, entry: &Entry, way: Way) -> bool {
        if !self.has_l2() {
            return true;
        }
        let rule = self.admission;
        let within = || rule.max_bytes().is_none_or(|b| entry.weight() <= b);
        match way {
            Way::Store => rule.on_store() && within(),
            Way::Newer => within(),
            Way::Read => rule.reads_admit_heavy() || within(),
        }
    }

    /// [`admits`](Self::admits), for a write: a refused entry is counted
    /// and the L1 copy it supersedes removed ([`keep_out`](Self::keep_out)).
    fn admit_write(
        &self,
        key: KeyHash,
        entry: &Entry,
        way: Way,
        superseded: Option<&Arc<Entry>>,
        headers: &HeaderMap,
    ) -> bool {
        let admitted = self.admits(entry, way);
        if !admitted {
            let _ = self.keep_out(key, superseded, headers);
        }
        admitted
    }

    /// An entry the rule refused lives in L2 only: counted, and the older
    /// L1 copy it supersedes (`superseded`, or whatever L1 holds for these
    /// request headers) removed, so that it does not answer instead.
    /// Returns whether an L1 copy was removed.
    fn keep_out(&self, key: KeyHash, superseded: Option<&Arc<Entry>>, headers: &HeaderMap) -> bool {
        self.not_admitted.incr();
        self.l1.remove_stored(key, superseded, headers)
    }

    /// Entries the admission rule kept out of L1.
    pub(crate) fn not_admitted(&self) -> u64 {
        self.not_admitted.get()
    }

    /// Whether an L1 copy stored at `stored_at` may be used at `now`:
    /// always without L2; with L2, as far as the invalidation channel can
    /// vouch for it.
    #[inline]
    fn trusts_l1(&self, stored_at: u64, now: u64) -> bool {
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.l2 {
            return l2.trust_l1(stored_at, now);
        }
        let _ = (stored_at, now);
        true
    }

    /// The L1 step of a lookup (synchronous: the hit path).
    #[inline]
    pub(crate) fn lookup_l1(&self, key: KeyHash, headers: &HeaderMap, now: u64) -> L1Lookup {
        match self.l1.get(key, headers) {
            Found::Entry(e) if now >= e.timeline.retain_until => {
                self.l1.remove_stored(key, Some(&e), headers);
                self.carry_reads(key, &e, now);
                L1Lookup::Miss { fwd: Fwd::UriMiss }
            }
            // `l1_max_ttl` is set, this instance is not following the
            // invalidation log and this copy is old: go to L2, which other
            // instances keep current.
            Found::Entry(e) if !self.trusts_l1(e.timeline.stored_at, now) => {
                L1Lookup::Miss { fwd: Fwd::UriMiss }
            }
            Found::Entry(e) => L1Lookup::Found(e),
            Found::UriMiss => L1Lookup::Miss { fwd: Fwd::UriMiss },
            Found::VaryMiss => L1Lookup::Miss { fwd: Fwd::VaryMiss },
        }
    }

    /// The L1 step of a request's own lookup (the engine's `decide`, and
    /// only there): this thread's copy of a hot entry when it holds a
    /// current and fresh one (`front.rs`), else [`lookup_l1`](Self::lookup_l1).
    ///
    /// A copy is not the entry L1 holds (its `Arc` differs), so it is
    /// handed out only where nothing compares it with L1's: a fresh entry,
    /// for a request whose directives cannot make it unusable (no
    /// `Cache-Control`, `Pragma` or `Authorization`: `plain`, from the
    /// request's directives, already scanned), which is answered
    /// and dropped. Every other request, and every other caller, gets
    /// L1's own entry.
    #[inline]
    pub(crate) fn lookup_hit(
        &self,
        key: KeyHash,
        headers: &HeaderMap,
        plain: bool,
        now: u64,
    ) -> L1Lookup {
        if !self.front || !plain {
            return self.lookup_l1(key, headers, now);
        }
        let gens = &self.l1.gens;
        if let Some((e, touch)) = crate::front::get(gens, key, now) {
            if now < e.timeline.retain_until && self.trusts_l1(e.timeline.stored_at, now) {
                if touch {
                    self.l1.touch(key);
                }
                return L1Lookup::Found(e);
            }
        }
        if !crate::front::vote(gens, key) {
            return self.lookup_l1(key, headers, now);
        }
        // Taken before the read: a change after it makes the copy stale.
        let stamp = gens.stamp(key);
        let found = self.lookup_l1(key, headers, now);
        if let L1Lookup::Found(e) = &found {
            crate::front::fill(gens, key, e, stamp, now);
        }
        found
    }

    /// Carries the reads counted on `entry` to `key`'s count (adaptive
    /// TTL; nothing when it is off): the entry stops answering, or is a
    /// copy L1 does not keep.
    pub(crate) fn carry_reads(&self, key: KeyHash, entry: &Entry, now: u64) {
        if let Some(counts) = &self.read_counts {
            counts.carry(key, &entry.reads, entry.timeline.stored_at, now);
        }
    }

    /// Carries the reads of the entries a new response for `key` replaces:
    /// `prior` (the entry refreshed or revalidated) and the L1 copy these
    /// request `headers` select.
    pub(crate) fn carry_replaced(
        &self,
        key: KeyHash,
        prior: Option<&Entry>,
        headers: &HeaderMap,
        now: u64,
    ) {
        if self.read_counts.is_none() {
            return;
        }
        if let Some(prior) = prior {
            self.carry_reads(key, prior, now);
        }
        if let Found::Entry(e) = self.l1.get(key, headers) {
            self.carry_reads(key, &e, now);
        }
    }

    /// An L1 copy stored after `prior` (any copy when `None`) that may be
    /// used at `now`: what a request that waited finds another stored.
    pub(crate) fn l1_newer_than(
        &self,
        key: KeyHash,
        headers: &HeaderMap,
        prior: Option<&Entry>,
        now: u64,
    ) -> Option<Arc<Entry>> {
        let L1Lookup::Found(entry) = self.lookup_l1(key, headers, now) else {
            return None;
        };
        prior
            .is_none_or(|p| entry.timeline.stored_at > p.timeline.stored_at)
            .then_some(entry)
    }

    /// The L2 step of a lookup: an entry newer than `prior` (any when
    /// `None`) and not past its last useful instant at `now`. Keys this
    /// instance is deleting are misses, before and after the read.
    #[cfg(feature = "redis")]
    pub(crate) async fn lookup_l2(
        &self,
        key: KeyHash,
        headers: &HeaderMap,
        prior: Option<&Entry>,
        now: u64,
    ) -> L2Lookup {
        let Some(l2) = self.l2.as_ref() else {
            return L2Lookup::Miss { varied: false };
        };
        // An invalidation arriving while the read is in flight must not be
        // undone by promoting (or re-storing) what was read.
        let since = l2.generation();
        if l2.deleting(key) {
            return L2Lookup::Miss { varied: false };
        }
        let mut varied = false;
        let Some(found) = l2.lookup_varied(key, headers, &mut varied).await else {
            return L2Lookup::Miss { varied };
        };
        // Invalidated here while the read was in flight.
        if l2.deleting(key) {
            return L2Lookup::Miss { varied: false };
        }
        let newer = prior.is_none_or(|p| found.timeline.stored_at > p.timeline.stored_at);
        // Past its last useful instant the entry is gone, as from L1 (Redis
        // expires it by its own clock, which may lag the cache's).
        if !newer || now >= found.timeline.retain_until {
            return L2Lookup::Miss { varied: false };
        }
        L2Lookup::Found(found, Tier::L2 { since })
    }

    /// Both steps in order: L1, then L2. The entry and the tier it came
    /// from, or `None`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) async fn lookup(
        &self,
        key: KeyHash,
        headers: &HeaderMap,
        now: u64,
    ) -> Option<(Arc<Entry>, Tier)> {
        if let L1Lookup::Found(e) = self.lookup_l1(key, headers, now) {
            return Some((e, Tier::L1));
        }
        #[cfg(feature = "redis")]
        if let L2Lookup::Found(e, tier) = self.lookup_l2(key, headers, None, now).await {
            return Some((e, tier));
        }
        None
    }

    /// Counts a request served from `entry` found in `tier`, and copies an
    /// L2 entry into L1 when it has earned it: at once when it `replaces`
    /// an older L1 copy (unless the rule refuses its size: the older copy
    /// is then removed), otherwise after `promote_after` hits the rule
    /// lets count. Never when an invalidation may have come after the
    /// read. Returns whether the entry is (now) in L1.
    pub(crate) fn admit_served(
        &self,
        key: KeyHash,
        entry: &Arc<Entry>,
        tier: Tier,
        replaces: Option<&Arc<Entry>>,
        headers: &HeaderMap,
        now: u64,
    ) -> bool {
        match tier {
            Tier::L1 => true,
            #[cfg(feature = "redis")]
            Tier::L2 { since } => {
                let Some(l2) = self.l2.as_ref() else {
                    return false;
                };
                // Checked first: a hit that may not promote is not counted
                // towards promotion.
                l2.may_promote(key, since) && self.promote(l2, key, entry, replaces, headers, now)
            }
            #[cfg(not(feature = "redis"))]
            Tier::L2 { .. } => {
                let _ = (key, entry, replaces, headers, now);
                false
            }
        }
    }

    /// Copies `entry`, read from L2, into L1 when the rule lets it in now:
    /// at once in place of an older L1 copy (`replaces`) if its size is
    /// admitted, else once its reads count to `promote_after`. A newer
    /// version refused by size removes the older copy.
    #[cfg(feature = "redis")]
    fn promote(
        &self,
        l2: &crate::store::l2::L2,
        key: KeyHash,
        entry: &Arc<Entry>,
        replaces: Option<&Arc<Entry>>,
        headers: &HeaderMap,
        now: u64,
    ) -> bool {
        let newer = replaces.map(|old| (old, self.admits(entry, Way::Newer)));
        let promoted = matches!(newer, Some((_, true)))
            || (self.admits(entry, Way::Read) && l2.note_hit(key, now));
        if promoted {
            self.l1
                .insert(key, Arc::clone(entry), &vary_names(entry), headers);
        } else if let Some((old, false)) = newer {
            self.keep_out(key, Some(old), headers);
        }
        promoted
    }

    /// Puts `found`, read from L2 in `tier` because another instance
    /// refreshed it, in place of the L1 copy `old` (if `old` is still
    /// there), unless an invalidation came after the read.
    #[cfg(feature = "redis")]
    pub(crate) fn adopt(
        &self,
        key: KeyHash,
        old: &Arc<Entry>,
        found: &Arc<Entry>,
        tier: Tier,
        headers: &HeaderMap,
    ) -> bool {
        let allowed = match (tier, &self.l2) {
            (Tier::L2 { since }, Some(l2)) => l2.may_promote(key, since),
            _ => true,
        };
        allowed
            && self.admit_write(key, found, Way::Newer, Some(old), headers)
            && self.l1.replace_if(key, old, Arc::clone(found), headers)
    }

    /// Stores a new entry: in L1 when the admission rule lets it in (an
    /// older L1 copy is removed when it does not) and, off the request
    /// path, in L2. Returns whether any tier took it.
    pub(crate) fn store(
        &self,
        key: KeyHash,
        entry: &Arc<Entry>,
        vary: &[HeaderName],
        req_headers: &HeaderMap,
        now: u64,
    ) -> bool {
        let mut stored = false;
        if self.admit_write(key, entry, Way::Store, None, req_headers) {
            stored |= self.l1.insert(key, Arc::clone(entry), vary, req_headers);
        }
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.l2 {
            l2.enqueue(key, entry, req_headers, now);
            stored = true;
        }
        let _ = now;
        stored
    }

    /// Stores a new entry in L1 alone, whatever L2 and write-through say
    /// (a value cache's `l1_only`). Returns whether L1 took it.
    #[cfg_attr(not(feature = "values"), allow(dead_code))]
    pub(crate) fn store_l1_only(&self, key: KeyHash, entry: &Arc<Entry>) -> bool {
        self.l1
            .insert(key, Arc::clone(entry), &[], &HeaderMap::new())
    }

    /// Stores a new entry in L2 alone, off the request path (a value
    /// cache's `l2_only`). Returns whether there is an L2 to take it.
    #[cfg_attr(not(feature = "values"), allow(dead_code))]
    pub(crate) fn store_l2_only(&self, key: KeyHash, entry: &Arc<Entry>, now: u64) -> bool {
        #[cfg(feature = "redis")]
        if let Some(l2) = &self.l2 {
            l2.enqueue(key, entry, &HeaderMap::new(), now);
            return true;
        }
        let _ = (key, entry, now);
        false
    }

    /// The L2 step of a lookup for many keys without `Vary` (values), in
    /// one round trip: per key, an entry not past its last useful instant
    /// at `now`, and its tier. Keys this instance is deleting are misses.
    #[cfg(feature = "redis")]
    #[cfg_attr(not(feature = "values"), allow(dead_code))]
    pub(crate) async fn lookup_l2_many(
        &self,
        keys: &[KeyHash],
        now: u64,
    ) -> Vec<Option<(Arc<Entry>, Tier)>> {
        let Some(l2) = self.l2.as_ref() else {
            return vec![None; keys.len()];
        };
        // As in `lookup_l2`: what an invalidation here covers is a miss,
        // whether it began before the read or during it.
        let since = l2.generation();
        let deleting: Vec<bool> = keys.iter().map(|k| l2.deleting(*k)).collect();
        let found = l2.lookup_many(keys).await;
        keys.iter()
            .zip(deleting)
            .zip(found)
            .map(|((key, before), found)| {
                let usable = |e: &Arc<Entry>| now < e.timeline.retain_until;
                let e = found.filter(|e| !before && usable(e) && !l2.deleting(*key))?;
                Some((e, Tier::L2 { since }))
            })
            .collect()
    }

    /// Replaces `old` with `new` (freshened by a 304, stale windows
    /// extended) if `old` is still the stored entry; then writes it to L2.
    /// An invalidation or a newer response that landed meanwhile wins.
    ///
    /// `tier`: where `old` was found. An entry read from L2 (L1 had no
    /// copy) goes to L1 as a new response would (the admission rule) and to
    /// L2, unless an invalidation came after it was read. One L1 held goes
    /// back to L1 unless the rule refuses its size (the old copy is then
    /// removed), and to L2; nowhere when L1 no longer holds `old`.
    pub(crate) fn replace(
        &self,
        key: KeyHash,
        old: &Arc<Entry>,
        new: Arc<Entry>,
        req_headers: &HeaderMap,
        tier: Tier,
        now: u64,
    ) -> bool {
        #[cfg(feature = "redis")]
        if let (Tier::L2 { since }, Some(l2)) = (tier, &self.l2) {
            if !l2.may_promote(key, since) {
                return false;
            }
            if self.admit_write(key, &new, Way::Store, None, req_headers) {
                self.l1
                    .insert(key, Arc::clone(&new), &vary_names(&new), req_headers);
            }
            l2.enqueue(key, &new, req_headers, now);
            return true;
        }
        let _ = (tier, now);
        // `old` came from L1: the new copy goes anywhere only while `old`
        // is still there. Once it is gone (an invalidation, a newer
        // response, an eviction) writing `new` to L2 could bring back what
        // was invalidated, or overwrite a newer copy.
        let still_there = if self.admits(&new, Way::Newer) {
            self.l1.replace_if(key, old, Arc::clone(&new), req_headers)
        } else {
            // The rule refuses the new copy's size: it lives in L2 only.
            self.keep_out(key, Some(old), req_headers)
        };
        #[cfg(feature = "redis")]
        if let (true, Some(l2)) = (still_there, &self.l2) {
            l2.enqueue(key, &new, req_headers, now);
        }
        still_there
    }
}

/// The names of the request fields `entry` varies on.
#[cfg(feature = "redis")]
fn vary_names(entry: &Entry) -> Vec<HeaderName> {
    entry.vary.iter().map(|(n, _)| n.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Timeline;
    use bytes::Bytes;

    fn entry(stored_at: u64, retain_until: u64) -> Arc<Entry> {
        let mut e = crate::store::codec::tests::minimal();
        e.body = Bytes::from_static(b"x");
        e.timeline = Timeline {
            stored_at,
            retain_until,
            ..e.timeline
        };
        Arc::new(e)
    }

    #[tokio::test]
    async fn lookup_returns_the_tier_and_drops_what_is_past_retain_until() {
        let tiers = Tiers::new(MemoryStore::new(1 << 20, 1 << 20, 8), L1Admission::Always);
        let key = KeyHash(7);
        let headers = HeaderMap::new();
        assert!(tiers.lookup(key, &headers, 0).await.is_none());
        assert!(tiers.store(key, &entry(10, 1_000), &[], &headers, 10));
        let (found, tier) = tiers.lookup(key, &headers, 500).await.expect("found");
        assert_eq!(tier, Tier::L1);
        assert_eq!(found.timeline.stored_at, 10);
        // A copy stored after the prior is "newer"; the same one is not.
        assert!(tiers
            .l1_newer_than(key, &headers, Some(&entry(5, 1_000)), 500)
            .is_some());
        assert!(tiers
            .l1_newer_than(key, &headers, Some(&found), 500)
            .is_none());
        // Past retain_until: a miss, and the copy is gone.
        assert!(matches!(
            tiers.lookup_l1(key, &headers, 1_000),
            L1Lookup::Miss { fwd: Fwd::UriMiss }
        ));
        assert_eq!(tiers.l1.len(), 0);
    }

    /// The rule's decision for each way in (`[Store, Newer, Read]`), for
    /// an entry within its size and one over it; without L2, every way.
    #[cfg(feature = "redis")]
    #[test]
    fn the_admission_rule_decides_each_way_into_l1() {
        let small = entry(1, 100);
        let mut heavy = (*small).clone();
        heavy.body = Bytes::from(vec![0; 8192]);
        let limit = small.weight() + 1;
        assert!(heavy.weight() > limit);
        let table = [
            (L1Admission::Always, [true, true, true], [true, true, true]),
            (
                L1Admission::MaxBytes(limit),
                [true, true, true],
                [false, false, false],
            ),
            (L1Admission::Reads, [false, true, true], [false, true, true]),
            (
                L1Admission::MaxBytesOrReads(limit),
                [true, true, true],
                [false, false, true],
            ),
        ];
        let ways = [Way::Store, Way::Newer, Way::Read];
        for (rule, within, over) in table {
            let cache = crate::Cache::builder()
                .redis("redis://127.0.0.1:1/")
                .l1_admission(rule)
                .build()
                .unwrap();
            let tiers = &cache.shared.tiers;
            for (way, (w, o)) in ways.into_iter().zip(within.into_iter().zip(over)) {
                assert_eq!(tiers.admits(&small, way), w, "{rule:?} {way:?} within");
                assert_eq!(tiers.admits(&heavy, way), o, "{rule:?} {way:?} over");
            }
            let l1_only = Tiers::new(MemoryStore::new(1 << 20, 1 << 20, 8), rule);
            assert!(
                ways.into_iter().all(|w| l1_only.admits(&heavy, w)),
                "{rule:?}"
            );
        }
    }

    #[test]
    fn without_l2_new_entries_go_to_l1_whatever_the_admission_rule_says() {
        let tiers = Tiers::new(MemoryStore::new(1 << 20, 1 << 20, 8), L1Admission::Reads);
        assert_eq!(tiers.store_tier(&entry(1, 100)), Detail::L1);
        assert!(!tiers.has_l2());
        let headers = HeaderMap::new();
        assert!(tiers.store(KeyHash(1), &entry(1, 100), &[], &headers, 1));
        assert_eq!(tiers.l1.len(), 1);
        // Replacing needs the stored copy to be the one replaced.
        let old = entry(1, 100);
        assert!(!tiers.replace(KeyHash(1), &old, entry(2, 100), &headers, Tier::L1, 2));
    }
}
