//! Unit tests of the value cache: keys and names, what a value's entry
//! holds, decoding once, and the fail-safe extension's bound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::ManualClock;
use crate::key::VALUE_SEED;

const T0: u64 = 1_700_000_000_000;

fn cache(clock: &ManualClock) -> Cache {
    Cache::builder().clock(clock.clone()).build().unwrap()
}

fn entry_of(
    cache: &Cache,
    values: &ValueCache<impl Send + Sync + 'static>,
    key: &str,
) -> Arc<Entry> {
    match cache
        .shared
        .tiers
        .lookup_l1(values.hash(key), &HeaderMap::new(), cache.now())
    {
        L1Lookup::Found(e) => e,
        L1Lookup::Miss { .. } => panic!("{key} is not in L1"),
    }
}

#[test]
fn keys_hash_as_their_readable_form_short_or_long() {
    let cache = Cache::builder().build().unwrap();
    let odds = cache.values::<u32>("odds").unwrap();
    for key in ["", "match:1", &"k".repeat(300), &"é".repeat(2000)] {
        let readable = odds.readable(key);
        assert_eq!(readable, format!("odds\x1f{key}"));
        let h = odds.hash(key);
        let seeded = xxhash_rust::xxh3::xxh3_128_with_seed(readable.as_bytes(), VALUE_SEED);
        assert_eq!(h, KeyHash(seeded));
        // Never a request's hash, whatever a custom key function returns.
        assert_ne!(h, KeyHash(xxhash_rust::xxh3::xxh3_128(readable.as_bytes())));
        // What L2 checks a value read back against.
        assert!(crate::key::readable_matches(
            &readable,
            h,
            &HeaderMap::new()
        ));
    }
    // Another cache's key of the same text is another key.
    let other = cache.values::<u32>("odds2").unwrap();
    assert_ne!(odds.hash("1"), other.hash("1"));
}

#[test]
fn names_are_bounded_and_free_of_control_characters() {
    let cache = Cache::builder().build().unwrap();
    for bad in ["", "a\x1fb", "tab\there", &"n".repeat(MAX_NAME_BYTES + 1)] {
        let err = cache.values::<u8>(bad).unwrap_err();
        assert!(err.is_invalid_setting());
        assert_eq!(err.setting(), "values");
    }
    for good in ["odds", "user profiles", &"n".repeat(MAX_NAME_BYTES), "ü"] {
        assert_eq!(cache.values::<u8>(good).unwrap().name(), good);
    }
}

#[tokio::test]
async fn a_value_entry_holds_its_serialised_form_and_its_decoded_value() {
    let clock = ManualClock::new(T0);
    let cache = cache(&clock);
    let odds = cache.values::<Vec<u32>>("odds").unwrap();
    let opts = ValueOptions::new().tag("a").tag("bad tag").tag("b");
    assert!(odds.set("k", vec![1, 2], &opts).await);
    let e = entry_of(&cache, &odds, "k");
    assert_eq!(e.key(), "odds\x1fk");
    assert_eq!(&e.body[..], b"[1,2]");
    let tags: Vec<&str> = e.tags().collect();
    assert_eq!(tags, ["odds\x1fa", "odds\x1fb"]);
    let meta = e.value.as_ref().unwrap();
    assert_eq!(meta.codec, 1);
    assert_eq!(meta.type_tag, type_tag(std::any::type_name::<Vec<u32>>()));
    // A hit is the stored `Arc`: nothing decoded.
    let held = Arc::clone(meta.payload.get().unwrap())
        .downcast::<Vec<u32>>()
        .unwrap();
    let got = odds.get("k").await.unwrap();
    assert!(Arc::ptr_eq(&got, &held));
    // The weight counts the decoded value (8 times the body's size).
    let plain = Entry {
        value: None,
        ..(*e).clone()
    };
    assert!(e.weight() > plain.weight() + e.body.len() as u64);
}

/// An entry read back from a store has no decoded value yet: the first
/// typed read decodes it and keeps it, later reads share it.
#[test]
fn an_entry_is_decoded_once_then_shared() {
    let cache = Cache::builder().build().unwrap();
    let odds = cache.values::<Vec<u32>>("odds").unwrap();
    let made = odds.entry(
        "k",
        &Arc::new(vec![7]),
        Bytes::from_static(b"[7]"),
        &ValueOptions::new(),
        ValueOptions::new().timeline(T0),
    );
    let read = Entry::decode(&made.encode()).unwrap();
    assert!(read.value.as_ref().unwrap().payload.get().is_none());
    let first = odds.typed(&read).ok().unwrap();
    let second = odds.typed(&read).ok().unwrap();
    assert_eq!(*first, [7]);
    assert!(Arc::ptr_eq(&first, &second));
    // Another type, another codec, or a body the codec refuses: unusable.
    let strings = cache.values::<Vec<String>>("odds").unwrap();
    assert!(matches!(strings.typed(&read), Err(Unusable::OtherType)));
    let retagged = cache
        .values::<Vec<u32>>("odds")
        .unwrap()
        .with_type_tag("odds/v2");
    assert!(matches!(retagged.typed(&read), Err(Unusable::OtherType)));
    let garbage = Entry {
        body: Bytes::from_static(b"[7,"),
        ..Entry::decode(&made.encode()).unwrap()
    };
    assert!(matches!(odds.typed(&garbage), Err(Unusable::Codec(_))));
    let http = crate::store::codec::tests::minimal();
    assert!(matches!(odds.typed(&http), Err(Unusable::NotAValue)));
}

/// What a decoded `Vec<String>` holds: the `Vec` in its `Arc`, its
/// buffer and the strings' bytes.
fn held(v: &Vec<String>) -> usize {
    let strings = v.capacity() * std::mem::size_of::<String>();
    std::mem::size_of::<Vec<String>>() + strings + v.iter().map(String::capacity).sum::<usize>()
}

/// A value read from L2 (untrusted) is weighed for what it holds decoded,
/// not at its serialised size: 1 000 empty strings are 3 KB of JSON and
/// 24 KB decoded. By default 8 times the serialised size (the same before
/// and after decoding); with a weigher, its answer, set before L1 can
/// keep the entry.
#[test]
fn a_decoded_value_weighs_what_it_holds() {
    let cache = Cache::builder().build().unwrap();
    let names = cache.values::<Vec<String>>("names").unwrap();
    let value = vec![String::new(); 1000];
    let body = Bytes::from(serde_json::to_vec(&value).unwrap());
    let made = names.entry(
        "k",
        &Arc::new(value),
        body,
        &ValueOptions::new(),
        ValueOptions::new().timeline(T0),
    );
    let read = Entry::decode(&made.encode()).unwrap();
    let before = read.weight();
    let decoded = names.typed(&read).ok().unwrap();
    let holds = held(&decoded) as u64;
    assert!(
        read.weight() > read.body.len() as u64 + holds,
        "{}",
        read.weight()
    );
    assert_eq!(read.weight(), before, "decoding does not change it");
    assert_eq!(made.weight(), read.weight());

    let weighed = names.with_weigher(|v| held(v) * 10);
    let read = Entry::decode(&made.encode()).unwrap();
    assert!(weighed.typed(&read).is_ok());
    assert!(read.weight() > 10 * holds, "the weigher's answer counts");
    let made = weighed.entry(
        "k",
        &decoded,
        read.body.clone(),
        &ValueOptions::new(),
        ValueOptions::new().timeline(T0),
    );
    assert_eq!(made.weight(), read.weight(), "alike stored or read back");
}

/// Each failed fetch of a stale value extends its life by half its TTL
/// (the engine's stale extension), at most `max_extensions` times.
#[tokio::test]
async fn failed_fetches_extend_a_stale_value_a_bounded_number_of_times() {
    let clock = ManualClock::new(T0);
    let cache = cache(&clock);
    let odds = cache.values::<u32>("odds").unwrap();
    let opts = ValueOptions::new()
        .ttl(Duration::from_secs(10))
        .hard_ttl(Duration::from_secs(10))
        .fail_safe(Duration::from_secs(600), 2);
    odds.set("k", 1, &opts).await;
    let fails = || async { Err::<u32, _>("down") };
    let mut stale_until = Vec::new();
    for _ in 0..4 {
        // Past the (extended) hard TTL: a foreground fetch, which fails.
        clock.advance(Duration::from_secs(60));
        let v = odds.get_or_fetch("k", &opts, fails).await.unwrap();
        assert_eq!(*v, 1, "the fail-safe value");
        let e = entry_of(&cache, &odds, "k");
        stale_until.push((e.extensions, e.timeline.stale_until));
    }
    let now = cache.now();
    assert_eq!(
        stale_until,
        [
            (1, now - 180_000 + 5_000),
            (2, now - 120_000 + 5_000),
            (2, now - 120_000 + 5_000),
            (2, now - 120_000 + 5_000)
        ]
    );
    let stats = cache.stats();
    assert_eq!(stats.refresh_failed, 4);
    assert_eq!(stats.stale_if_error, 4);
    assert_eq!(stats.stale, 4);
    assert_eq!(stats.upstream_errors, 4);
}

#[tokio::test]
async fn a_key_over_the_bound_is_fetched_but_never_cached() {
    let cache = Cache::builder().build().unwrap();
    let odds = cache.values::<u32>("odds").unwrap();
    let long = "k".repeat(MAX_KEY_BYTES + 1);
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let calls = Arc::clone(&calls);
        let fetch = move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(5)
        };
        let v = odds.get_or_fetch(&long, &ValueOptions::new(), fetch).await;
        assert_eq!(*v.unwrap(), 5);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(!odds.set(&long, 1, &ValueOptions::new()).await);
    assert!(odds.get(&long).await.is_none());
    assert_eq!(cache.stats().passes, 2);
    assert_eq!(cache.shared.tiers.l1.len(), 0);
}

/// With adaptive TTL, a value hit counts its read as an HTTP hit does:
/// every read up to `cold_under`, then one in `read_sample` per thread
/// adding that many (no write to the entry's shared line on every hit).
#[tokio::test]
async fn value_hits_past_the_first_reads_are_counted_one_in_the_sample() {
    let adaptive = crate::AdaptiveTtl::new().cold_under(5, 0.5).read_sample(8);
    let cache = Cache::builder().adaptive_ttl(adaptive).build().unwrap();
    let odds = cache.values::<u32>("odds").unwrap();
    let opts = ValueOptions::new().ttl(Duration::from_secs(60));
    assert!(odds.set("k", 1, &opts).await);
    for _ in 0..1_000 {
        assert!(odds.get("k").await.is_some());
    }
    let counted = entry_of(&cache, &odds, "k").reads.take();
    // 5 counted one by one, then steps of 8: never the exact 1 000.
    assert_eq!((counted - 5) % 8, 0, "{counted} reads counted");
    assert!((500..=1_500).contains(&counted), "{counted} reads counted");
}
