//! Typed values on the engine (`ValueCache`), L1 only: fresh, stale and
//! expired values under a clock the test moves; one fetch for many
//! concurrent callers; one background refresh per stale key; fail-safe;
//! the soft fetch timeout; tiers; invalidation kept within one value
//! cache; batches; and the counts each lookup leaves under its label.
#![cfg(feature = "values")]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::capture::capture;
use support::*;
use tower_tiered_cache::values::{FetchError, ValueOptions};
use tower_tiered_cache::{Cache, ManualClock, ValueCache};

/// Counts the calls of a fetch that returns `value`.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// A fetch that counts itself and returns `value`.
    fn fetch<T: Send + 'static>(
        &self,
        value: T,
    ) -> impl FnOnce() -> std::future::Ready<Result<T, &'static str>> + Send + 'static {
        let n = Arc::clone(&self.0);
        move || {
            n.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(value))
        }
    }

    /// A fetch that counts itself, waits at `gate`, then returns `value`.
    fn gated<T: Send + 'static>(
        &self,
        gate: &Gate,
        value: T,
    ) -> impl FnOnce() -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<T, &'static str>> + Send>,
    > + Send
           + 'static {
        let (n, gate) = (Arc::clone(&self.0), gate.clone());
        move || {
            n.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                gate.pass().await;
                Ok(value)
            })
        }
    }

    /// A fetch that counts itself and fails.
    fn failing<T: Send + 'static>(
        &self,
    ) -> impl FnOnce() -> std::future::Ready<Result<T, &'static str>> + Send + 'static {
        let n = Arc::clone(&self.0);
        move || {
            n.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Err("upstream down"))
        }
    }
}

fn setup(clock: &ManualClock) -> (Cache, ValueCache<String>) {
    let cache = Cache::builder().clock(clock.clone()).build().unwrap();
    let odds = cache.values::<String>("odds").unwrap();
    (cache, odds)
}

/// Soft TTL 10 s, hard TTL 30 s, fail-safe 60 s past it.
fn opts() -> ValueOptions {
    ValueOptions::new()
        .ttl(secs(10))
        .hard_ttl(secs(30))
        .fail_safe(secs(60), 3)
}

async fn get_or_fetch(
    odds: &ValueCache<String>,
    fetch: impl FnOnce() -> std::future::Ready<Result<String, &'static str>> + Send + 'static,
) -> Result<String, FetchError<&'static str>> {
    let v = odds.get_or_fetch("match:1", &opts(), fetch).await?;
    Ok((*v).clone())
}

#[tokio::test]
async fn fresh_stale_and_expired_values_follow_the_clock() {
    let clock = clock();
    let (cache, odds) = setup(&clock);
    let calls = Calls::default();

    assert_eq!(
        get_or_fetch(&odds, calls.fetch("v1".into())).await.unwrap(),
        "v1"
    );
    clock.advance(secs(9));
    assert_eq!(
        get_or_fetch(&odds, calls.fetch("v2".into())).await.unwrap(),
        "v1"
    );
    assert_eq!(calls.get(), 1, "fresh: no fetch");

    // Stale within the hard TTL: the old value at once, refreshed behind.
    clock.advance(secs(2));
    assert_eq!(
        get_or_fetch(&odds, calls.fetch("v2".into())).await.unwrap(),
        "v1"
    );
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);
    assert_eq!(calls.get(), 2);
    assert_eq!(
        get_or_fetch(&odds, calls.fetch("v3".into())).await.unwrap(),
        "v2"
    );

    // Past the hard TTL (of the refreshed value): fetched before answering.
    clock.advance(secs(31));
    assert_eq!(
        get_or_fetch(&odds, calls.fetch("v3".into())).await.unwrap(),
        "v3"
    );
    assert_eq!(calls.get(), 3);

    let s = cache.stats();
    assert_eq!((s.hits_l1, s.stale, s.misses), (2, 1, 2), "{s:?}");
    assert_eq!((s.refresh_ok, s.stores), (1, 3));
    assert_eq!(s.requests, 5);
    let label = cache
        .label_stats()
        .into_iter()
        .find(|l| l.label == "odds")
        .expect("counted under the value cache's name");
    assert_eq!(
        (label.hits_l1, label.stale, label.misses, label.requests),
        (2, 1, 2, 5)
    );
}

#[tokio::test]
async fn concurrent_callers_for_a_missing_key_make_one_fetch() {
    let clock = clock();
    let (cache, odds) = setup(&clock);
    let calls = Calls::default();
    let gate = Gate::new();
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let (odds, fetch) = (odds.clone(), calls.gated(&gate, "v".to_owned()));
            tokio::spawn(async move { odds.get_or_fetch("k", &opts(), fetch).await })
        })
        .collect();
    assert!(eventually(|| calls.get() == 1).await);
    settle().await;
    gate.open();
    for c in callers {
        assert_eq!(*c.await.unwrap().unwrap(), "v");
    }
    assert_eq!(calls.get(), 1);
    let s = cache.stats();
    assert_eq!((s.misses, s.coalesced, s.stores), (1, 49, 1), "{s:?}");
}

#[tokio::test]
async fn a_stale_value_is_refreshed_by_one_background_fetch() {
    let clock = clock();
    let (cache, odds) = setup(&clock);
    let calls = Calls::default();
    odds.set("k", "old".into(), &opts()).await;
    clock.advance(secs(15));
    let gate = Gate::new();
    for _ in 0..20 {
        let v = odds
            .get_or_fetch("k", &opts(), calls.gated(&gate, "new".to_owned()))
            .await;
        assert_eq!(*v.unwrap(), "old", "answered while the refresh waits");
    }
    assert!(eventually(|| calls.get() == 1).await);
    settle().await;
    assert_eq!(calls.get(), 1, "one refresh for the key");
    gate.open();
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);
    let v = odds
        .get_or_fetch("k", &opts(), calls.fetch("newer".into()))
        .await;
    assert_eq!(*v.unwrap(), "new");
    let s = cache.stats();
    assert_eq!((s.stale, s.hits_l1, s.refresh_ok, s.misses), (20, 1, 1, 0));
}

#[tokio::test]
async fn a_failed_fetch_returns_the_fail_safe_value_counted_as_stale() {
    let clock = clock();
    let (cache, odds) = setup(&clock);
    let calls = Calls::default();
    odds.set("match:1", "kept".into(), &opts()).await;

    // Past the hard TTL, within the fail-safe window.
    clock.advance(secs(40));
    let v = get_or_fetch(&odds, calls.failing()).await.unwrap();
    assert_eq!(v, "kept");
    let s = cache.stats();
    assert_eq!(
        (s.stale, s.stale_if_error, s.refresh_failed, s.misses),
        (1, 1, 1, 0)
    );
    // Its life was extended by half its TTL: stale (answered at once, a
    // refresh behind) rather than expired 4 s later.
    clock.advance(secs(4));
    let v = get_or_fetch(&odds, calls.fetch("new".into()))
        .await
        .unwrap();
    assert_eq!(v, "kept");
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);

    // Past the fail-safe window, a failure is the fetch's error.
    clock.advance(secs(200));
    let err = get_or_fetch(&odds, calls.failing()).await.unwrap_err();
    assert!(err.is_fetch(), "{err:?}");
    assert_eq!(err.into_fetch_error(), Some("upstream down"));
    assert_eq!(cache.stats().upstream_errors, 2);
}

#[tokio::test(start_paused = true)]
async fn a_fetch_past_its_timeout_is_dropped() {
    let clock = clock();
    let (cache, odds) = setup(&clock);
    let gate = Gate::new();
    let opts = opts().fetch_timeout(Duration::from_millis(200));
    let calls = Calls::default();
    let err = odds
        .get_or_fetch("k", &opts, calls.gated(&gate, "late".to_owned()))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let s = cache.stats();
    assert_eq!((s.upstream_timeouts, s.misses, s.stores), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn past_the_soft_timeout_the_stale_value_answers_and_the_fetch_lands_later() {
    let clock = clock();
    let (cache, odds) = setup(&clock);
    let opts = opts()
        .soft_fetch_timeout(Duration::from_millis(100))
        .fetch_timeout(secs(10));
    odds.set("k", "old".into(), &opts).await;
    clock.advance(secs(40));
    let (gate, calls) = (Gate::new(), Calls::default());
    let started = tokio::time::Instant::now();
    let v = odds
        .get_or_fetch("k", &opts, calls.gated(&gate, "new".to_owned()))
        .await;
    assert_eq!(*v.unwrap(), "old");
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    // A second caller meanwhile waits on the same fetch, as long.
    let v = odds
        .get_or_fetch("k", &opts, calls.fetch("other".into()))
        .await;
    assert_eq!(*v.unwrap(), "old");
    assert_eq!(calls.get(), 1);
    gate.open();
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);
    assert_eq!(
        odds.get("k").await.as_deref().map(String::as_str),
        Some("new")
    );
    let s = cache.stats();
    assert_eq!((s.stale_if_error, s.refresh_failed), (2, 0));
}

#[tokio::test]
async fn l1_only_and_l2_only_values_without_redis() {
    let clock = clock();
    let (cache, odds) = setup(&clock);
    assert!(!odds.set("a", "x".into(), &opts().l2_only()).await);
    assert!(odds.get("a").await.is_none());
    assert_eq!(cache.stats().l1_entries, 0);
    assert!(odds.set("b", "y".into(), &opts().l1_only()).await);
    assert_eq!(cache.stats().l1_entries, 1);
    // An l2_only lookup does not read L1.
    let calls = Calls::default();
    let v = odds
        .get_or_fetch("b", &opts().l2_only(), calls.fetch("z".into()))
        .await;
    assert_eq!(*v.unwrap(), "z");
    assert_eq!(calls.get(), 1);
    let v = odds
        .get_or_fetch("b", &opts().l1_only(), calls.fetch("w".into()))
        .await;
    assert_eq!(*v.unwrap(), "y");
}

#[tokio::test]
async fn invalidation_stays_within_one_value_cache() {
    let clock = clock();
    let (cache, odds) = setup(&clock);
    let other = cache.values::<String>("other").unwrap();
    let tagged = || opts().tag("team:7");
    for values in [&odds, &other] {
        for key in ["user:123:a", "user:123:b", "user:9:a"] {
            values.set(key, key.into(), &tagged()).await;
        }
    }
    // An HTTP entry with the same tag and a path like the keys.
    let (origin, _) =
        origin(|_, _| with_header(ok("max-age=60", "page"), "surrogate-key", "team:7"));
    let svc = cached(&cache, origin);
    send(&svc, get("http://example.com/user:123:a")).await;
    assert_eq!(cache.stats().l1_entries, 7);

    assert_eq!(odds.invalidate_prefix("user:123:").await.l1, 2);
    assert!(odds.get("user:123:a").await.is_none());
    assert!(odds.get("user:9:a").await.is_some());
    assert!(other.get("user:123:a").await.is_some());
    assert_eq!(cache.stats().l1_entries, 5);

    assert_eq!(other.invalidate_tag("team:7").await.l1, 3);
    assert!(odds.get("user:9:a").await.is_some());
    assert_eq!(cache.stats().l1_entries, 2);

    // HTTP purges never touch values.
    assert_eq!(cache.invalidate_prefix("").await.l1, 1);
    assert_eq!(cache.invalidate_tag("odds\x1fteam:7").await.l1, 0);
    assert!(odds.get("user:9:a").await.is_some());
    assert!(odds.delete("user:9:a"));
    assert_eq!(cache.stats().l1_entries, 0);
}

#[tokio::test]
async fn a_value_of_another_type_under_the_same_name_is_a_miss() {
    let clock = clock();
    let (cache, odds) = setup(&clock);
    odds.set("k", "text".into(), &opts()).await;
    let numbers = cache.values::<u64>("odds").unwrap();
    assert!(numbers.get("k").await.is_none());
    let v = numbers
        .get_or_fetch("k", &opts(), || async { Ok::<_, ()>(7) })
        .await;
    assert_eq!(*v.unwrap(), 7);
    // Its value replaced the other type's.
    assert!(odds.get("k").await.is_none());
    assert_eq!(cache.stats().misses, 3);
}

#[tokio::test]
async fn a_batch_fetches_only_the_missing_keys_in_one_call() {
    let clock = clock();
    let (cache, odds) = setup(&clock);
    odds.set("a", "A".into(), &opts()).await;
    odds.set("c", "C".into(), &opts()).await;
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&asked);
    let got = odds
        .get_many_or_fetch(&["a", "b", "c", "d", "b", "e"], &opts(), move |missing| {
            seen.lock().unwrap().push(missing.clone());
            async move {
                let found = missing.into_iter().filter(|k| k != "e");
                Ok::<_, ()>(
                    found
                        .map(|k| (k.clone(), k.to_uppercase()))
                        .collect::<Vec<_>>(),
                )
            }
        })
        .await
        .unwrap();
    let got: Vec<Option<String>> = got.iter().map(|v| v.as_deref().cloned()).collect();
    let want = |s: &str| Some(s.to_owned());
    assert_eq!(
        got,
        [want("A"), want("B"), want("C"), want("D"), want("B"), None]
    );
    assert_eq!(*asked.lock().unwrap(), [vec!["b", "d", "e"]]);
    // Stored one by one.
    assert_eq!(
        odds.get("d").await.as_deref().map(String::as_str),
        Some("D")
    );
    let s = cache.stats();
    assert_eq!(
        (s.hits_l1, s.misses, s.stores, s.upstream_calls),
        (3, 3, 4, 1),
        "{s:?}"
    );
}

#[tokio::test]
async fn a_batch_waits_for_keys_another_call_is_fetching() {
    let clock = clock();
    let (cache, odds) = setup(&clock);
    let (gate, calls) = (Gate::new(), Calls::default());
    let single = {
        let (odds, fetch) = (odds.clone(), calls.gated(&gate, "from-single".to_owned()));
        tokio::spawn(async move { odds.get_or_fetch("x", &opts(), fetch).await })
    };
    assert!(eventually(|| calls.get() == 1).await);
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&asked);
    let batch = {
        let odds = odds.clone();
        tokio::spawn(async move {
            let fetch = move |missing: Vec<String>| {
                seen.lock().unwrap().extend(missing.clone());
                std::future::ready(Ok::<_, ()>(missing.into_iter().map(|k| (k, "bulk".into()))))
            };
            odds.get_many_or_fetch(&["x", "y"], &opts(), fetch).await
        })
    };
    assert!(eventually(|| asked.lock().unwrap().len() == 1).await);
    gate.open();
    let got = batch.await.unwrap().unwrap();
    assert_eq!(got[0].as_deref().map(String::as_str), Some("from-single"));
    assert_eq!(got[1].as_deref().map(String::as_str), Some("bulk"));
    assert_eq!(*asked.lock().unwrap(), ["y"]);
    assert_eq!(*single.await.unwrap().unwrap(), "from-single");
    assert_eq!(cache.stats().coalesced, 1);
}

#[tokio::test]
async fn a_failed_batch_answers_from_fail_safe_values_or_fails() {
    let clock = clock();
    let (cache, odds) = setup(&clock);
    odds.set("a", "A".into(), &opts()).await;
    clock.advance(secs(40));
    let fail = |_: Vec<String>| std::future::ready(Err::<Vec<(String, String)>, _>("down"));
    let got = odds.get_many_or_fetch(&["a"], &opts(), fail).await.unwrap();
    assert_eq!(got[0].as_deref().map(String::as_str), Some("A"));
    let err = odds
        .get_many_or_fetch(&["a", "b"], &opts(), fail)
        .await
        .unwrap_err();
    assert!(err.is_fetch());
    let too_many: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    let err = odds
        .get_many_or_fetch(&too_many[..], &opts(), fail)
        .await
        .unwrap_err();
    assert!(err.is_too_many_keys());
    // The second batch found `a` stale (its life extended by the first
    // failure) and refreshed it along with `b`.
    let s = cache.stats();
    assert_eq!(
        (s.stale, s.stale_if_error, s.refresh_failed),
        (2, 1, 2),
        "{s:?}"
    );
}

#[tokio::test]
async fn a_dropped_call_counts_as_cancelled_and_hands_its_flight_on() {
    let clock = clock();
    let (cache, odds) = setup(&clock);
    let (gate, calls) = (Gate::new(), Calls::default());
    let opts = opts();
    let mut first = Box::pin(odds.get_or_fetch("k", &opts, calls.gated(&gate, "never".into())));
    // Polled once (it waits at the gate), then dropped.
    tokio::select! {
        biased;
        _ = &mut first => panic!("answered through a closed gate"),
        _ = std::future::ready(()) => {}
    }
    assert_eq!(calls.get(), 1);
    drop(first);
    let s = cache.stats();
    assert_eq!((s.cancelled, s.requests, s.misses), (1, 1, 0), "{s:?}");
    let v = odds
        .get_or_fetch("k", &opts, calls.fetch("next".into()))
        .await;
    assert_eq!(*v.unwrap(), "next");
    assert_eq!(calls.get(), 2);
}

/// Each lookup has a `cache.lookup` span like a request's, with the value
/// cache's name as its label; a background refresh has its own
/// `cache.refresh` root, linked to the lookup that started it.
#[tokio::test]
async fn lookups_have_spans_like_requests() {
    let (cap, _installed) = capture();
    let clock = clock();
    let (_cache, odds) = setup(&clock);
    let calls = Calls::default();
    get_or_fetch(&odds, calls.fetch("v1".into())).await.unwrap();
    get_or_fetch(&odds, calls.fetch("v1".into())).await.unwrap();
    clock.advance(secs(15));
    get_or_fetch(&odds, calls.fetch("v2".into())).await.unwrap();
    assert!(eventually(|| calls.get() == 2).await);
    let lookups = cap.spans_named("cache.lookup");
    let seen: Vec<(Option<&str>, Option<&str>, Option<&str>)> = lookups
        .iter()
        .map(|s| {
            (
                s.str("cache.result"),
                s.str("cache.tier"),
                s.str("cache.label"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (Some("miss"), Some("none"), Some("odds")),
            (Some("hit"), Some("l1"), Some("odds")),
            (Some("stale"), Some("l1"), Some("odds")),
        ]
    );
    assert!(lookups
        .iter()
        .all(|s| s.str("cache.key") == Some("match:1")));
    assert_eq!(lookups[0].str("cache.operation"), Some("get_or_fetch"));
    assert!(lookups[0].f64("cache.upstream_ms").is_some());
    assert!(eventually(|| !cap.spans_named("cache.refresh").is_empty()).await);
    let refresh = &cap.spans_named("cache.refresh")[0];
    assert_eq!(refresh.str("cache.label"), Some("odds"));
    assert_eq!(refresh.follows, [cap.index(&lookups[2])]);
}

/// "Update the source, then delete the key" while a fetch that read the
/// old source is under way: its result answers the calls that asked, but
/// is not stored (the next lookup fetches again), for a miss, a background
/// refresh and a batch.
#[tokio::test]
async fn a_delete_during_a_fetch_is_not_undone_by_its_result() {
    let clock = clock();
    let (cache, odds) = setup(&clock);
    let calls = Calls::default();

    let gate = Gate::new();
    let (o, fetch) = (odds.clone(), calls.gated(&gate, "old".to_owned()));
    let miss = tokio::spawn(async move { o.get_or_fetch("k", &opts(), fetch).await });
    assert!(eventually(|| calls.get() == 1).await);
    odds.delete("k");
    gate.open();
    assert_eq!(*miss.await.unwrap().unwrap(), "old", "answers its call");
    let v = odds
        .get_or_fetch("k", &opts(), calls.fetch("new".into()))
        .await;
    assert_eq!(*v.unwrap(), "new", "the old value was not stored");
    assert_eq!(calls.get(), 2);

    // A stale value's background refresh, deleted while it runs.
    clock.advance(secs(15));
    let gate = Gate::new();
    let v = odds
        .get_or_fetch("k", &opts(), calls.gated(&gate, "old".into()))
        .await;
    assert_eq!(*v.unwrap(), "new", "stale, answered at once");
    assert!(eventually(|| calls.get() == 3).await);
    assert!(odds.delete("k"));
    gate.open();
    assert!(eventually(|| cache.stats().refresh_ok == 1).await);
    assert!(odds.get("k").await.is_none(), "the refresh stored nothing");

    // A batch.
    let gate = Gate::new();
    let g = gate.clone();
    let o = odds.clone();
    let batch = tokio::spawn(async move {
        let fetch = move |keys: Vec<String>| async move {
            g.pass().await;
            let items: Vec<(String, String)> =
                keys.into_iter().map(|k| (k, "old".into())).collect();
            Ok::<_, &'static str>(items)
        };
        o.get_many_or_fetch(&["b"], &opts(), fetch).await
    });
    assert!(eventually(|| cache.stats().upstream_calls == 4).await);
    odds.delete("b");
    gate.open();
    let got = batch.await.unwrap().unwrap();
    assert_eq!(got[0].as_deref().map(String::as_str), Some("old"));
    assert!(odds.get("b").await.is_none(), "the batch stored nothing");
    assert_eq!(cache.stats().stores, 1, "only the first refetch");
}

/// A batch dropped before its answer counts each key it had not answered
/// as cancelled, as a dropped single lookup does: every key ends in
/// exactly one outcome.
#[tokio::test]
async fn a_dropped_batch_counts_its_unanswered_keys_as_cancelled() {
    let clock = clock();
    let (cache, odds) = setup(&clock);
    odds.set("a", "A".into(), &opts()).await;
    let gate = Gate::new();
    let g = gate.clone();
    let fetch = move |_keys: Vec<String>| async move {
        g.pass().await;
        Ok::<Vec<(String, String)>, &'static str>(Vec::new())
    };
    let opts = opts();
    let mut batch = Box::pin(odds.get_many_or_fetch(&["a", "b", "c"], &opts, fetch));
    // Polled once (its fetch waits at the gate), then dropped.
    tokio::select! {
        biased;
        _ = &mut batch => panic!("answered through a closed gate"),
        _ = std::future::ready(()) => {}
    }
    assert_eq!(cache.stats().upstream_calls, 1);
    drop(batch);
    let s = cache.stats();
    assert_eq!((s.hits_l1, s.cancelled, s.requests), (1, 2, 3), "{s:?}");
}

/// A custom key function can make the readable key of a value
/// (`{name}\x1f{key}`): the request and the value still never share an
/// entry (a value's hash is seeded apart), so neither answers for, nor
/// replaces, the other.
#[tokio::test]
async fn a_request_keyed_like_a_value_never_meets_it() {
    let clock = clock();
    let cache = Cache::builder()
        .clock(clock.clone())
        .key_fn(|_| Some("odds\x1fmatch:42".to_owned()))
        .build()
        .unwrap();
    let odds = cache.values::<String>("odds").unwrap();
    assert!(odds.set("match:42", "value".into(), &opts()).await);
    let (origin, log) = origin(|_, _| ok("max-age=60", "page"));
    let svc = cached(&cache, origin);
    let resp = send(&svc, get("http://example.com/x")).await;
    assert_eq!(&body(resp).await[..], b"page", "the origin answered");
    assert_eq!(log.calls(), 1);
    let resp = send(&svc, get("http://example.com/x")).await;
    assert_eq!(&body(resp).await[..], b"page");
    assert_eq!(log.calls(), 1, "the response was stored beside the value");
    let v = odds.get("match:42").await;
    assert_eq!(v.as_deref().map(String::as_str), Some("value"));
    assert_eq!(cache.stats().l1_entries, 2);
}
