//! Typed values (`ValueCache`) through L2, against a redis-server of the
//! test's own: shared between instances and promoted with their decoded
//! value; values of another type, corrupt values and bodies the codec
//! refuses are misses, counted and deleted; a batch reads L2 in one round
//! trip (`MGET`, counted by Redis itself); `l2_only` values skip L1;
//! invalidations reach Redis and the other instances; a big value stays in
//! L2 until read `promote_after` times (selective L1); reads of `l2_only`
//! values count for adaptive TTL.
#![cfg(all(feature = "redis", feature = "values"))]

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis_support::{require_redis, RedisCluster, RedisServer};
use support::*;
use tower_tiered_cache::values::ValueOptions;
use tower_tiered_cache::{AdaptiveTtl, Cache, CacheBuilder, L1Admission};

fn l2(url: String) -> CacheBuilder {
    Cache::builder()
        .redis(url)
        .namespace("v")
        .l2_timeout(Duration::from_millis(500))
}

/// The keys of stored values (`v:1:{hash}`).
fn value_keys(server: &RedisServer) -> Vec<String> {
    let out = server.cli(&["--scan", "--pattern", "v:1:*"]);
    out.text().lines().map(str::to_owned).collect()
}

/// The raw value stored under `key`.
fn get_raw(server: &RedisServer, key: &str) -> Vec<u8> {
    match server.cmd(&["GET", key]) {
        Ok(redis_support::Reply::Bulk(b)) => b,
        other => panic!("GET {key}: {other:?}"),
    }
}

/// Writes raw (binary) bytes under `key`.
fn set_raw(server: &RedisServer, key: &str, value: &[u8]) {
    let client = redis::Client::open(server.url()).unwrap();
    let mut c = client.get_connection().unwrap();
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query::<()>(&mut c)
        .unwrap();
}

/// How many times Redis ran `command` since the last `CONFIG RESETSTAT`.
fn calls(server: &RedisServer, command: &str) -> u64 {
    let stats = server.cli(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .text()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn values_are_shared_through_l2_and_promoted_with_their_decoded_value() {
    require_redis();
    let server = RedisServer::start();
    let a = l2(server.url()).build().unwrap();
    let odds = a.values::<Vec<u32>>("odds").unwrap();
    assert!(odds.set("k", vec![1, 2, 3], &ValueOptions::new()).await);
    written(&a, 1).await;

    let b = l2(server.url()).promote_after(2).build().unwrap();
    let odds_b = b.values::<Vec<u32>>("odds").unwrap();
    for n in 1..=2 {
        assert_eq!(*odds_b.get("k").await.unwrap(), [1, 2, 3]);
        assert_eq!(b.stats().hits_l2, n);
    }
    subscribed(&b).await;
    let first = odds_b.get("k").await.unwrap();
    let second = odds_b.get("k").await.unwrap();
    assert!(Arc::ptr_eq(&first, &second), "L1 keeps the decoded value");
    let s = b.stats();
    assert_eq!((s.hits_l1, s.hits_l2, s.promotions), (2, 2, 1), "{s:?}");
    let label = b.label_stats().into_iter().find(|l| l.label == "odds");
    assert_eq!(label.map(|l| (l.hits_l1, l.hits_l2)), Some((2, 2)));
}

#[tokio::test]
async fn values_of_another_type_or_corrupt_are_misses_counted_and_deleted() {
    require_redis();
    let server = RedisServer::start();
    let a = l2(server.url()).build().unwrap();
    let text = a.values::<String>("odds").unwrap();
    text.set("k", "text".into(), &ValueOptions::new()).await;
    written(&a, 1).await;
    let key = value_keys(&server).pop().expect("the value's key");
    let stored = get_raw(&server, &key);

    // Another type under the same name and key.
    let b = l2(server.url()).build().unwrap();
    assert!(b.values::<u64>("odds").unwrap().get("k").await.is_none());
    assert_eq!(b.stats().l2_decode_errors, 1);
    assert!(eventually(|| value_keys(&server).is_empty()).await);

    // A body the codec refuses (`"text"` made `"tex!`), in a valid entry;
    // then bytes that are no entry at all.
    let mut bad_json = stored.clone();
    let last = bad_json.len() - 1;
    bad_json[last] = b'!';
    for (n, value) in [bad_json, b"garbage".to_vec()].into_iter().enumerate() {
        set_raw(&server, &key, &value);
        let c = l2(server.url()).build().unwrap();
        assert!(
            c.values::<String>("odds").unwrap().get("k").await.is_none(),
            "case {n}"
        );
        assert_eq!(c.stats().l2_decode_errors, 1, "case {n}");
        assert!(
            eventually(|| value_keys(&server).is_empty()).await,
            "case {n}"
        );
    }
    // The intact value reads back.
    set_raw(&server, &key, &stored);
    let d = l2(server.url()).build().unwrap();
    let v = d.values::<String>("odds").unwrap().get("k").await;
    assert_eq!(v.as_deref().map(String::as_str), Some("text"));
}

#[tokio::test]
async fn a_batch_reads_l2_in_one_round_trip_and_fetches_the_rest_once() {
    require_redis();
    let server = RedisServer::start();
    let a = l2(server.url()).build().unwrap();
    let names = a.values::<String>("names").unwrap();
    for k in ["a", "b", "c"] {
        names.set(k, k.to_uppercase(), &ValueOptions::new()).await;
    }
    written(&a, 3).await;

    let b = l2(server.url()).build().unwrap();
    let names_b = b.values::<String>("names").unwrap();
    server.cli(&["CONFIG", "RESETSTAT"]);
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&asked);
    let got = names_b
        .get_many_or_fetch(
            &["a", "b", "c", "d", "e"],
            &ValueOptions::new(),
            move |missing| {
                seen.lock().unwrap().push(missing.clone());
                std::future::ready(Ok::<_, ()>(missing.into_iter().map(|k| {
                    let v = format!("fetched {k}");
                    (k, v)
                })))
            },
        )
        .await
        .unwrap();
    let got: Vec<String> = got.iter().map(|v| v.as_deref().unwrap().clone()).collect();
    assert_eq!(got, ["A", "B", "C", "fetched d", "fetched e"]);
    assert_eq!(*asked.lock().unwrap(), [vec!["d", "e"]]);
    assert_eq!(calls(&server, "mget"), 1, "one round trip");
    assert_eq!(calls(&server, "get"), 0);
    let s = b.stats();
    assert_eq!((s.hits_l2, s.misses, s.upstream_calls), (3, 2, 1), "{s:?}");
}

#[tokio::test]
async fn l2_only_values_are_read_from_redis_every_time() {
    require_redis();
    let server = RedisServer::start();
    let a = l2(server.url()).promote_after(1).build().unwrap();
    let odds = a
        .values::<u32>("odds")
        .unwrap()
        .with_options(ValueOptions::new().l2_only());
    assert!(odds.set("k", 7, &odds.options()).await);
    written(&a, 1).await;
    assert_eq!(a.stats().l1_entries, 0);
    for _ in 0..3 {
        assert_eq!(odds.get("k").await.as_deref(), Some(&7));
    }
    let s = a.stats();
    assert_eq!(
        (s.hits_l2, s.hits_l1, s.l1_entries, s.promotions),
        (3, 0, 0, 0)
    );
}

#[tokio::test]
async fn invalidations_reach_redis_and_the_other_instances() {
    require_redis();
    let server = RedisServer::start();
    let a = l2(server.url()).build().unwrap();
    let odds_a = a.values::<u32>("odds").unwrap();
    let tagged = ValueOptions::new().tag("league:1");
    for (k, v) in [("user:1:a", 1), ("user:1:b", 2), ("user:2:a", 3)] {
        odds_a.set(k, v, &tagged).await;
    }
    written(&a, 3).await;
    let b = l2(server.url()).promote_after(1).build().unwrap();
    let odds_b = b.values::<u32>("odds").unwrap();
    // Its first L2 read starts b's reader of the invalidation log.
    assert!(odds_b.get("absent").await.is_none());
    subscribed(&b).await;
    for k in ["user:1:a", "user:1:b", "user:2:a"] {
        assert!(odds_b.get(k).await.is_some());
    }
    assert_eq!(b.stats().l1_entries, 3, "promoted into b's L1");

    let removed = odds_a.invalidate_prefix("user:1:").await;
    assert_eq!((removed.l1, removed.l2), (2, 2));
    assert!(eventually(|| b.stats().l1_entries == 1).await);
    assert_eq!(value_keys(&server).len(), 1);
    assert!(odds_b.get("user:1:a").await.is_none());

    let removed = odds_a.invalidate_tag("league:1").await;
    assert_eq!(removed.l1, 1);
    assert!(eventually(|| b.stats().l1_entries == 0).await);
    assert!(value_keys(&server).is_empty());
}

/// An operator's purge through a cache that has no value cache of that
/// name (`Cache::invalidate_value*`, what the admin service calls) removes
/// the values from Redis and from another instance's L1.
#[tokio::test]
async fn type_erased_invalidations_reach_redis_and_the_other_instances() {
    require_redis();
    let server = RedisServer::start();
    let a = l2(server.url()).build().unwrap();
    let odds_a = a.values::<u32>("odds").unwrap();
    let other_a = a.values::<u32>("other").unwrap();
    let tagged = ValueOptions::new().tag("league:1");
    odds_a.set("tagged", 1, &tagged).await;
    odds_a.set("user:2:a", 2, &ValueOptions::new()).await;
    odds_a.set("user:3", 3, &ValueOptions::new()).await;
    other_a.set("tagged", 4, &tagged).await;
    written(&a, 4).await;
    assert!(odds_a.get("absent").await.is_none());
    subscribed(&a).await;
    let operator = l2(server.url()).build().unwrap();

    let removed = operator.invalidate_value_tag("odds", "league:1").await;
    assert_eq!((removed.l1, removed.l2), (0, 1));
    assert!(eventually(|| a.stats().l1_entries == 3).await);
    let removed = operator.invalidate_value_prefix("odds", "user:2:").await;
    assert_eq!((removed.l1, removed.l2), (0, 1));
    assert!(eventually(|| a.stats().l1_entries == 2).await);
    // L2's delete runs in the background: a's L1 loses it once announced.
    assert!(!operator.invalidate_value("odds", "user:3"));
    assert!(eventually(|| a.stats().l1_entries == 1).await);
    assert!(eventually(|| value_keys(&server).len() == 1).await);
    for k in ["tagged", "user:2:a", "user:3"] {
        assert!(odds_a.get(k).await.is_none(), "{k}");
    }
    assert_eq!(other_a.get("tagged").await.as_deref(), Some(&4));
}

/// A stale `l2_only` value whose background fetch fails is kept (and
/// answered) while it lasts, but not written back to Redis over a delete
/// that came while the fetch ran: the old value would be served
/// everywhere again.
#[tokio::test]
async fn a_failed_refresh_does_not_write_back_a_value_deleted_meanwhile() {
    require_redis();
    let server = RedisServer::start();
    let clock = clock();
    let a = l2(server.url()).clock(clock.clone()).build().unwrap();
    let odds = a.values::<u32>("odds").unwrap();
    let opts = ValueOptions::new()
        .l2_only()
        .ttl(secs(10))
        .hard_ttl(secs(30))
        .fail_safe(secs(60), 3);
    assert!(odds.set("k", 1, &opts).await);
    written(&a, 1).await;
    clock.advance(secs(15));
    let gate = Gate::new();
    let g = gate.clone();
    let failing = move || async move {
        g.pass().await;
        Err::<u32, _>("upstream down")
    };
    let v = odds.get_or_fetch("k", &opts, failing).await.unwrap();
    assert_eq!(*v, 1, "stale, answered while the refresh runs");
    odds.delete("k");
    assert!(eventually(|| value_keys(&server).is_empty()).await);
    gate.open();
    // One thread: the failed refresh has queued whatever it writes by the
    // time its count shows.
    assert!(eventually(|| a.stats().refresh_failed == 1).await);
    assert!(eventually(|| a.l2_pending_writes() == 0).await);
    assert!(value_keys(&server).is_empty(), "the old value came back");
    assert!(odds.get("k").await.is_none());
}

/// On a cluster a batch's keys live on different slots: one `GET` per key,
/// sent at once (no cross-slot command), every stored value found.
#[tokio::test]
async fn a_batch_on_a_cluster_finds_every_value() {
    require_redis();
    let cluster = RedisCluster::start(3);
    let on = || {
        Cache::builder()
            .redis_cluster(cluster.urls())
            .namespace("vc")
            .l2_timeout(Duration::from_millis(500))
            .build()
            .unwrap()
    };
    let a = on();
    let names = a.values::<u32>("n").unwrap();
    let keys: Vec<String> = (0..12).map(|i| i.to_string()).collect();
    for (i, k) in keys.iter().enumerate() {
        names.set(k, i as u32, &ValueOptions::new()).await;
    }
    written(&a, 12).await;
    let b = on();
    let names_b = b.values::<u32>("n").unwrap();
    let nothing = |_: Vec<String>| std::future::ready(Ok::<Vec<(String, u32)>, ()>(Vec::new()));
    let got = names_b
        .get_many_or_fetch(&keys[..], &ValueOptions::new(), nothing)
        .await
        .unwrap();
    let got: Vec<u32> = got.iter().map(|v| *v.as_deref().unwrap()).collect();
    assert_eq!(got, (0..12).collect::<Vec<u32>>());
    let s = b.stats();
    assert_eq!((s.hits_l2, s.misses, s.l2_errors), (12, 0, 0), "{s:?}");
}

/// Selective L1 for values: under `MaxBytesOrReads`, a small value goes to
/// L1 when stored, a big one is kept out (counted) and answered from L2
/// until it has been read `promote_after` times there, then from L1.
#[tokio::test]
async fn a_big_value_stays_in_l2_until_read_promote_after_times() {
    require_redis();
    let server = RedisServer::start();
    let cache = l2(server.url())
        .l1_admission(L1Admission::MaxBytesOrReads(4096))
        .promote_after(3)
        .build()
        .unwrap();
    let blobs = cache.values::<String>("blobs").unwrap();
    let opts = ValueOptions::new();
    let big = "x".repeat(16 * 1024);
    let fetched = blobs
        .get_or_fetch("big", &opts, move || async move { Ok::<_, &str>(big) })
        .await
        .unwrap();
    assert_eq!(fetched.len(), 16 * 1024);
    assert!(blobs.set("small", "s".into(), &opts).await);
    written(&cache, 2).await;
    subscribed(&cache).await;
    assert_eq!(cache.stats().l1_not_admitted, 1, "the big one kept out");
    assert!(blobs.get("small").await.is_some());
    assert_eq!(cache.stats().hits_l1, 1, "the small one in L1 at once");
    for n in 1..=3 {
        assert_eq!(blobs.get("big").await.unwrap().len(), 16 * 1024);
        let s = cache.stats();
        assert_eq!((s.hits_l1, s.hits_l2), (1, n), "read {n} from L2");
    }
    let first = blobs.get("big").await.unwrap();
    let second = blobs.get("big").await.unwrap();
    assert!(Arc::ptr_eq(&first, &second), "L1 keeps the decoded value");
    let s = cache.stats();
    assert_eq!((s.hits_l1, s.hits_l2, s.promotions), (3, 3, 1), "{s:?}");
    let label = cache.label_stats().into_iter().find(|l| l.label == "blobs");
    assert_eq!(label.map(|l| (l.hits_l1, l.hits_l2)), Some((3, 3)));
}

/// Adaptive TTL counts the reads of values L1 never holds (`l2_only`):
/// each read from L2 is carried to its key's count at once.
#[tokio::test]
async fn reads_of_l2_only_values_count_for_adaptive_ttl() {
    require_redis();
    let server = RedisServer::start();
    let adaptive = AdaptiveTtl::new().hot_after(50, 2.0).cold_under(5, 0.5);
    let cache = l2(server.url()).adaptive_ttl(adaptive).build().unwrap();
    let odds = cache.values::<u32>("odds").unwrap();
    let opts = ValueOptions::new().l2_only();
    assert!(odds.set("k", 1, &opts).await);
    written(&cache, 1).await;
    for _ in 0..60 {
        let found = odds.get_or_fetch("k", &opts, || async { Err("no") }).await;
        assert_eq!(found.ok().as_deref(), Some(&1));
    }
    assert_eq!(cache.stats().hits_l2, 60);
    assert!(odds.set("k", 2, &opts).await);
    let s = cache.stats();
    assert_eq!((s.ttl_lengthened, s.ttl_shortened), (1, 0), "{s:?}");
}
