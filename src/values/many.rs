//! [`ValueCache::get_many_or_fetch`]: many keys, one L2 round trip, one
//! fetch of the keys still missing.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::Instrument;

use super::{complete, Answer, Call, FetchError, Prior, Report, ValueCache, ValueOptions};
use super::{MAX_KEY_BYTES, MAX_MANY_KEYS};
use crate::coalesce::{self, Flight, FlightGuard, Join, Outcome};
use crate::key::KeyHash;
use crate::observe::Outcome as Counted;
use crate::status::Status;
use crate::tiers::Ticket;

/// The items a batch's fetch returned, collected.
type Fetched<T> = Vec<(String, T)>;

/// A batch's fetch as the steps after the public call take it.
type BoxBatchFetch<T, E> = Box<
    dyn FnOnce(Vec<String>) -> Pin<Box<dyn Future<Output = Result<Fetched<T>, E>> + Send>> + Send,
>;

/// `fetch`, type-erased, its items collected as they come back.
fn boxed_batch<F, Fut, I, T, E>(fetch: F) -> BoxBatchFetch<T, E>
where
    F: FnOnce(Vec<String>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<I, E>> + Send + 'static,
    I: IntoIterator<Item = (String, T)>,
{
    Box::new(move |keys| {
        Box::pin(async move { fetch(keys).await.map(|items| items.into_iter().collect()) })
    })
}

/// One distinct key of a batch.
struct Item<'a, T> {
    key: &'a str,
    hash: KeyHash,
    /// Within [`MAX_KEY_BYTES`]: looked up and stored.
    cached: bool,
    value: Option<Arc<T>>,
    /// A stale value (answered), or one past its hard TTL (fail-safe).
    prior: Option<Prior>,
    /// The value answered is stale: refresh it.
    stale: bool,
    /// Its lookup is reported (an answer, a pass, a failure).
    done: bool,
}

/// The keys of a batch, by what happens to them after the lookups.
#[derive(Default)]
struct Flights {
    /// Missing keys this batch fetches (their flights, when it leads them).
    mine: Vec<(usize, Option<FlightGuard>)>,
    /// Missing keys another call is fetching.
    theirs: Vec<(usize, Arc<Flight>)>,
    /// Stale keys whose refresh this batch leads.
    refresh: Vec<(usize, FlightGuard)>,
}

/// One batch: its distinct keys, in order of first appearance.
struct Batch<'a, T> {
    values: &'a ValueCache<T>,
    opts: &'a ValueOptions,
    start: u64,
    items: Vec<Item<'a, T>>,
    index: HashMap<&'a str, usize>,
    /// Every key is reported: nothing to count as cancelled when dropped.
    finished: bool,
}

/// A batch dropped before its answer (a caller's timeout, a caller gone):
/// each key not reported yet counts as cancelled, as a dropped
/// [`get_or_fetch`](ValueCache::get_or_fetch) does, so that each key ends
/// in exactly one outcome.
impl<T> Drop for Batch<'_, T> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let none = tracing::Span::none();
        for _ in self.items.iter().filter(|i| !i.done) {
            self.values.cache.cancelled(self.values.face.label, &none);
        }
    }
}

impl<T: Send + Sync + 'static> ValueCache<T> {
    /// The values of `keys`, in their order (`None` for a key nothing was
    /// found or fetched for): each key is looked up in L1, the rest in L2
    /// in one round trip (`MGET`; one command per key, sent at once, on a
    /// cluster), then `fetch_missing` is called once with only the keys
    /// still missing (and those stale, to refresh them on the way), and
    /// each value it returns is stored as its own entry. Keys another
    /// call is fetching are waited for, not fetched again. Stale values
    /// are answered; when nothing is missing, one background call
    /// refreshes them.
    ///
    /// At most [`MAX_MANY_KEYS`] keys (else [`FetchError::is_too_many_keys`]).
    /// When the fetch fails or times out, keys with a fail-safe value get
    /// it; if a key it was asked for has none, the call returns the
    /// fetch's error.
    ///
    /// ```
    /// use tower_tiered_cache::values::ValueOptions;
    /// use tower_tiered_cache::Cache;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let cache = Cache::builder().build().unwrap();
    /// let names = cache.values::<String>("names").unwrap();
    /// let opts = ValueOptions::new();
    /// names.set("1", "one".to_owned(), &opts).await;
    /// let got = names
    ///     .get_many_or_fetch(&["1", "2", "3"], &opts, |missing| async move {
    ///         assert_eq!(missing, ["2", "3"]);
    ///         Ok::<_, std::io::Error>(vec![("2".to_owned(), "two".to_owned())])
    ///     })
    ///     .await
    ///     .unwrap();
    /// let got: Vec<_> = got.iter().map(|v| v.as_deref().map(String::as_str)).collect();
    /// assert_eq!(got, [Some("one"), Some("two"), None]);
    /// # }
    /// ```
    pub async fn get_many_or_fetch<K, F, Fut, I, E>(
        &self,
        keys: &[K],
        opts: &ValueOptions,
        fetch_missing: F,
    ) -> Result<Vec<Option<Arc<T>>>, FetchError<E>>
    where
        K: AsRef<str>,
        F: FnOnce(Vec<String>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<I, E>> + Send + 'static,
        I: IntoIterator<Item = (String, T)>,
        E: Send + 'static,
    {
        if keys.len() > MAX_MANY_KEYS {
            return Err(FetchError::too_many_keys(keys.len(), MAX_MANY_KEYS));
        }
        // A span and a start for the batch; each key reports on its own.
        let Some(probe) = self.call("", opts, "get_many_or_fetch") else {
            return self.many_uncached(keys, fetch_missing).await;
        };
        let span = probe.report.span.clone();
        span.record("cache.keys", keys.len() as u64);
        let start = self.shared().obs.start();
        let batch = Batch::new(self, keys, opts, start);
        let fetch = boxed_batch(fetch_missing);
        batch.run(keys, fetch).instrument(span).await
    }

    /// Without a runtime to time fetches and waits: the fetch of every
    /// key, nothing cached (counted as passes).
    async fn many_uncached<K, F, Fut, I, E>(
        &self,
        keys: &[K],
        fetch: F,
    ) -> Result<Vec<Option<Arc<T>>>, FetchError<E>>
    where
        K: AsRef<str>,
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = Result<I, E>>,
        I: IntoIterator<Item = (String, T)>,
    {
        let s = self.shared();
        s.counters.passes.add(keys.len() as u64);
        s.counters.upstream_calls.incr();
        let asked = keys.iter().map(|k| k.as_ref().to_owned()).collect();
        let mut got: HashMap<String, Arc<T>> = HashMap::new();
        for (k, v) in fetch(asked).await.map_err(FetchError::fetch)? {
            got.insert(k, Arc::new(v));
        }
        Ok(keys.iter().map(|k| got.get(k.as_ref()).cloned()).collect())
    }
}

impl<'a, T: Send + Sync + 'static> Batch<'a, T> {
    fn new<K: AsRef<str>>(
        values: &'a ValueCache<T>,
        keys: &'a [K],
        opts: &'a ValueOptions,
        start: u64,
    ) -> Self {
        let mut batch = Batch {
            values,
            opts,
            start,
            items: Vec::with_capacity(keys.len()),
            index: HashMap::with_capacity(keys.len()),
            finished: false,
        };
        for key in keys {
            let key = key.as_ref();
            if batch.index.contains_key(key) {
                continue;
            }
            batch.index.insert(key, batch.items.len());
            batch.items.push(Item {
                key,
                hash: values.hash(key),
                cached: key.len() <= MAX_KEY_BYTES,
                value: None,
                prior: None,
                stale: false,
                done: false,
            });
        }
        batch
    }

    /// The lookup of item `i`, reported without a span of its own.
    fn call(&self, i: usize) -> Call<'a> {
        let item = &self.items[i];
        Call {
            key: item.key,
            hash: item.hash,
            opts: self.opts,
            report: Report::none(self.start),
        }
    }

    /// Every step in order: L1, L2, the flights, the one fetch, the waits.
    async fn run<K: AsRef<str>, E: Send + 'static>(
        mut self,
        keys: &[K],
        fetch: BoxBatchFetch<T, E>,
    ) -> Result<Vec<Option<Arc<T>>>, FetchError<E>> {
        let now = self.values.cache.now();
        self.look_in_l1(now);
        self.look_in_l2(now).await;
        let flights = self.join_flights();
        let asked: Vec<usize> = flights.mine.iter().map(|(i, _)| *i).collect();
        let failed = self.fetch(flights.mine, flights.refresh, fetch).await;
        self.wait(flights.theirs).await;
        self.finished = true;
        if let Some(error) = failed {
            if asked.iter().any(|i| self.items[*i].value.is_none()) {
                return Err(error);
            }
        }
        let value = |k: &K| {
            self.index
                .get(k.as_ref())
                .and_then(|&i| self.items[i].value.clone())
        };
        Ok(keys.iter().map(value).collect())
    }

    /// Notes what a tier's entry did for item `i`.
    fn note(&mut self, i: usize, answer: Answer<T>) {
        let item = &mut self.items[i];
        match answer {
            Answer::Fresh(v, _) => {
                item.value = Some(v);
                item.done = true;
            }
            Answer::Stale(v, prior) => {
                item.value = Some(v);
                item.done = true;
                item.prior = Some(prior);
                item.stale = true;
            }
            Answer::Prior(prior) => item.prior = Some(prior),
            Answer::Miss => {}
        }
    }

    fn look_in_l1(&mut self, now: u64) {
        for i in 0..self.items.len() {
            if self.items[i].cached {
                let answer = self.values.look_in_l1(&self.call(i), now);
                self.note(i, answer);
            }
        }
    }

    /// One L2 round trip for every key still without a value; an entry
    /// older than the key's prior is ignored.
    async fn look_in_l2(&mut self, now: u64) {
        #[cfg(feature = "redis")]
        {
            let s = self.values.shared();
            if !self.opts.uses_l2() || !s.tiers.has_l2() {
                return;
            }
            let todo: Vec<usize> = (0..self.items.len())
                .filter(|&i| self.items[i].cached && self.items[i].value.is_none())
                .collect();
            if todo.is_empty() {
                return;
            }
            let hashes: Vec<KeyHash> = todo.iter().map(|&i| self.items[i].hash).collect();
            let found = s.tiers.lookup_l2_many(&hashes, now).await;
            for (i, found) in todo.into_iter().zip(found) {
                let Some((entry, tier)) = found else { continue };
                let prior = self.items[i].prior.as_ref();
                if prior.is_some_and(|p| entry.timeline.stored_at <= p.entry.timeline.stored_at) {
                    continue;
                }
                let replaces = prior
                    .filter(|p| p.tier == crate::tiers::Tier::L1)
                    .map(|p| Arc::clone(&p.entry));
                let answer = self
                    .values
                    .answer(&self.call(i), entry, tier, replaces.as_ref(), now);
                self.note(i, answer);
            }
        }
        let _ = now;
    }

    /// Joins the flight of every missing key (this batch leads it, or
    /// waits for the call that does) and of every stale key it can lead
    /// (to refresh it). Keys that are not cached pass.
    fn join_flights(&mut self) -> Flights {
        let s = self.values.shared();
        let mut flights = Flights::default();
        for i in 0..self.items.len() {
            let item = &self.items[i];
            if !item.cached {
                s.counters.passes.incr();
                let pass = Counted::from(&Status::BYPASS);
                self.values.report(item.key, &Report::none(0), &pass, None);
                self.items[i].done = true;
                flights.mine.push((i, None));
            } else if item.stale {
                flights
                    .refresh
                    .extend(s.inflight.try_lead(item.hash).map(|g| (i, g)));
            } else if item.value.is_none() {
                match s.inflight.join(item.hash) {
                    Join::Leader(g) => flights.mine.push((i, Some(g))),
                    Join::Full => flights.mine.push((i, None)),
                    Join::Waiter(f) => flights.theirs.push((i, f)),
                }
            }
        }
        flights
    }

    /// The one call of the fetch: for the missing keys this batch leads
    /// and the stale ones it refreshes; with nothing missing, the stale
    /// ones alone, in the background. The fetch's error, if it failed.
    async fn fetch<E: Send + 'static>(
        &mut self,
        mine: Vec<(usize, Option<FlightGuard>)>,
        refresh: Vec<(usize, FlightGuard)>,
        fetch: BoxBatchFetch<T, E>,
    ) -> Option<FetchError<E>> {
        let refresh = refresh.into_iter().map(|(i, g)| (i, Some(g)));
        if mine.is_empty() {
            let bulk = self.bulk(refresh);
            if !bulk.keys.is_empty() {
                if let Some(permit) = self.values.background_permit() {
                    tokio::spawn(async move {
                        let _permit = permit;
                        bulk.run(fetch).await;
                    });
                }
            }
            return None;
        }
        let bulk = self.bulk(mine.into_iter().chain(refresh));
        let (values, failed) = bulk.run(fetch).await;
        for (i, value) in values {
            self.items[i].value = self.items[i].value.take().or(value);
            self.items[i].done = true;
        }
        failed
    }

    /// The bulk fetch of `keys` (items and their flights).
    fn bulk(&self, keys: impl Iterator<Item = (usize, Option<FlightGuard>)>) -> Bulk<T> {
        let keys = keys
            .map(|(i, guard)| {
                let item = &self.items[i];
                BulkKey {
                    item: i,
                    key: item.key.to_owned(),
                    hash: item.hash,
                    cached: item.cached,
                    answered: item.value.is_some(),
                    prior: item.prior.clone(),
                    guard,
                }
            })
            .collect();
        Bulk {
            values: self.values.clone(),
            opts: self.opts.clone(),
            start: self.start,
            keys,
        }
    }

    /// Waits (within one `coalesce_timeout` for them all) for the keys
    /// other calls are fetching; each is answered as a waiter is.
    async fn wait(&mut self, theirs: Vec<(usize, Arc<Flight>)>) {
        let s = self.values.shared();
        let deadline = Instant::now() + s.cfg.coalesce_timeout;
        for (i, flight) in theirs {
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome = coalesce::wait(&flight, left).await;
            let call = self.call(i);
            let prior = self.items[i].prior.clone();
            let answered = self.values.after_wait::<()>(&call, outcome, prior.as_ref());
            self.items[i].value = match answered {
                Some(answered) => answered.ok(),
                // Its flight failed and no fetch is left to this batch.
                None => self.values.gave_up::<()>(&call, prior.as_ref(), false).ok(),
            };
            self.items[i].done = true;
        }
    }
}

/// One key of a bulk fetch.
struct BulkKey {
    item: usize,
    key: String,
    hash: KeyHash,
    cached: bool,
    /// Answered already (stale): fetched to refresh it.
    answered: bool,
    prior: Option<Prior>,
    guard: Option<FlightGuard>,
}

/// One call of a batch's fetch, owning what it needs (it may run on a
/// task of its own): each value it returns is stored, each flight
/// completed, each key counted.
struct Bulk<T> {
    values: ValueCache<T>,
    opts: ValueOptions,
    start: u64,
    keys: Vec<BulkKey>,
}

impl<T: Send + Sync + 'static> Bulk<T> {
    /// Calls the fetch (within the fetch timeout) and handles what it
    /// gave: the value of each item, and the error if it failed.
    async fn run<E>(
        self,
        fetch: BoxBatchFetch<T, E>,
    ) -> (Vec<(usize, Option<Arc<T>>)>, Option<FetchError<E>>) {
        let vc = &self.values;
        vc.shared().counters.upstream_calls.incr();
        let started = Instant::now();
        let ticket = vc.shared().tiers.ticket();
        let asked = self.keys.iter().map(|k| k.key.clone()).collect();
        let result = tokio::time::timeout(self.opts.fetch_timeout, fetch(asked)).await;
        let result = result.map_err(|_| ());
        vc.fetch_done(started, &result);
        match result {
            Ok(Ok(got)) => (self.stored(got, ticket), None),
            Ok(Err(e)) => (self.failed(ticket), Some(FetchError::fetch(e))),
            Err(()) => {
                let after = self.opts.fetch_timeout;
                (self.failed(ticket), Some(FetchError::timeout(after)))
            }
        }
    }

    /// Stores each value the fetch returned for a key it was asked for.
    fn stored<I: IntoIterator<Item = (String, T)>>(
        mut self,
        got: I,
        ticket: Ticket,
    ) -> Vec<(usize, Option<Arc<T>>)> {
        let keys = std::mem::take(&mut self.keys);
        let mut fetched: Vec<Option<T>> = keys.iter().map(|_| None).collect();
        let index: HashMap<&str, usize> = (keys.iter().enumerate())
            .map(|(n, k)| (k.key.as_str(), n))
            .collect();
        for (key, value) in got {
            if let Some(&n) = index.get(key.as_str()) {
                fetched[n] = Some(value);
            }
        }
        drop(index);
        let now = self.values.cache.now();
        keys.into_iter()
            .zip(fetched)
            .map(|(k, value)| self.store_one(k, value, ticket, now))
            .collect()
    }

    /// One key's value from the fetch: stored (a miss, or a refresh of a
    /// stale value) and handed to its flight's waiters; `None`: the
    /// fetch had nothing for it.
    fn store_one(
        &self,
        k: BulkKey,
        value: Option<T>,
        ticket: Ticket,
        now: u64,
    ) -> (usize, Option<Arc<T>>) {
        let vc = &self.values;
        let s = vc.shared();
        let call = Call {
            key: &k.key,
            hash: k.hash,
            opts: &self.opts,
            report: Report::none(self.start),
        };
        let Some(value) = value else {
            if k.cached && !k.answered {
                s.counters.misses.incr();
                vc.report(call.key, &call.report, &Counted::FAILED, Some(now));
            }
            complete(k.guard, Outcome::Failed);
            return (k.item, None);
        };
        if !k.cached {
            return (k.item, Some(Arc::new(value)));
        }
        let (value, entry, stored) =
            vc.store_fetched(call.key, k.hash, value, &self.opts, ticket, now);
        if k.answered {
            s.counters.refresh_ok.incr();
        } else {
            s.counters.misses.incr();
            let status = super::miss_status(k.prior.is_some(), stored);
            vc.report(call.key, &call.report, &Counted::from(&status), Some(now));
        }
        complete(k.guard, Outcome::Stored(entry));
        (k.item, Some(value))
    }

    /// The fetch failed: each key's fail-safe value (its stale value kept
    /// and extended), or nothing.
    fn failed(mut self, ticket: Ticket) -> Vec<(usize, Option<Arc<T>>)> {
        let keys = std::mem::take(&mut self.keys);
        let now = self.values.cache.now();
        keys.into_iter()
            .map(|k| self.fail_one(k, ticket, now))
            .collect()
    }

    fn fail_one(&self, k: BulkKey, ticket: Ticket, now: u64) -> (usize, Option<Arc<T>>) {
        let vc = &self.values;
        let call = Call {
            key: &k.key,
            hash: k.hash,
            opts: &self.opts,
            report: Report::none(self.start),
        };
        if let Some(p) = &k.prior {
            // A stale value answered already is kept; else the fail-safe
            // value answers, if there is one.
            let stood_in = if k.answered {
                None
            } else {
                vc.fail_safe(&call, p, now)
            };
            if k.answered || stood_in.is_some() {
                vc.keep_stale(k.hash, p, &self.opts, ticket, now);
                let outcome = match stood_in {
                    Some(_) => Outcome::StaleIfError(Arc::clone(&p.entry)),
                    None => Outcome::Failed,
                };
                complete(k.guard, outcome);
                return (k.item, stood_in);
            }
        }
        if k.cached {
            vc.shared().counters.misses.incr();
            vc.report(call.key, &call.report, &Counted::FAILED, Some(now));
        }
        complete(k.guard, Outcome::Failed);
        (k.item, None)
    }
}
