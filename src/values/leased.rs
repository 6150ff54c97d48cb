//! Distributed coalescing for typed values: a `get_or_fetch` leader that
//! found nothing usable in L2 takes the key's lease, or waits for the
//! instance holding it and answers from L2, through the same lease step
//! as a request (`flow::distributed::Across`). Only for values written to
//! L2 (an `l1_only` value is nobody else's). A leader with a fail-safe
//! value and a soft fetch timeout waits at most that timeout, then
//! answers with the fail-safe value (the holder's fetch goes on
//! elsewhere); others wait at most the fetch timeout, then fetch.

use std::sync::Arc;

use http::HeaderMap;

use super::{Call, Held, Prior, ValueCache};
use crate::entry::Entry;
use crate::flow::distributed::{Across, Turn};
use crate::policy::Usability;
use crate::status::Detail;
use crate::tiers::{L2Lookup, Tier};

/// What the lease step came to for a value's flight leader.
pub(super) enum Leased<T> {
    /// Another instance's fetch, read from L2 (the entry: for the local
    /// waiters).
    Answered(Arc<T>, Arc<Entry>),
    /// The wait outlived the soft fetch timeout: the fail-safe value
    /// answers (the prior's entry: for the local waiters).
    FailSafe(Arc<T>, Arc<Entry>),
    /// Fetch, holding the lease or not.
    Call(Held),
}

impl<T: Send + Sync + 'static> ValueCache<T> {
    /// Takes the key's lease, or waits for the instance holding it.
    pub(super) async fn lease_or_wait(&self, call: &Call<'_>, prior: Option<&Prior>) -> Leased<T> {
        if !call.opts.uses_l2() {
            return Leased::Call(None);
        }
        let soft = self.soft_limit(call.opts, prior);
        let max_wait = soft.map_or(call.opts.fetch_timeout, |(soft, _)| soft);
        let Some(mut across) = Across::new(&self.cache, call.hash, max_wait) else {
            return Leased::Call(None);
        };
        loop {
            match across.turn(&self.cache).await {
                Turn::Call(lease) => {
                    if let (true, None, Some((_, stood_in))) = (across.timed_out(), &lease, soft) {
                        let now = self.cache.now();
                        if let Some(v) = self.fail_safe(call, stood_in, now) {
                            return Leased::FailSafe(v, Arc::clone(&stood_in.entry));
                        }
                    }
                    return Leased::Call(lease);
                }
                Turn::Look => {
                    if let Some((v, entry)) = self.remote(call, prior).await {
                        across.found();
                        return Leased::Answered(v, entry);
                    }
                }
            }
        }
    }

    /// Another instance's value, read from L2 while fresh: a collapsed
    /// miss (`detail=l2`), its read counted as a leader's L2 read is.
    async fn remote(&self, call: &Call<'_>, prior: Option<&Prior>) -> Option<(Arc<T>, Arc<Entry>)> {
        let now = self.cache.now();
        let older = prior.map(|p| &*p.entry);
        let none = HeaderMap::new();
        let found = self.shared().tiers.lookup_l2(call.hash, &none, older, now);
        let L2Lookup::Found(entry, tier) = found.await else {
            return None;
        };
        if self.usability(&entry, now) != Usability::Fresh {
            return None;
        }
        let v = self.collapsed_as(call, &entry, prior, now, Detail::L2)?;
        let replaces = prior.filter(|p| p.tier == Tier::L1).map(|p| &p.entry);
        self.note_read(call, &entry, tier, replaces, now);
        Some((v, entry))
    }
}
