//! Encryption at rest for the L2 tier (feature `l2-encryption`), on
//! redis-server processes of the tests' own: nothing readable is left in
//! Redis (every key read by its type), entries round-trip through a fresh
//! instance, keys rotate (an older key still opens, tag purges find
//! entries indexed under every key), and a tampered, moved, clear or
//! wrongly-keyed value is a corrupt entry: a miss, counted, deleted.
#![cfg(feature = "l2-encryption")]

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis_support::{require_redis, RedisServer};
use support::*;
use tower_tiered_cache::values::ValueOptions;
use tower_tiered_cache::{Cache, CacheBuilder, L2Keys};

const K1: &str = "k1:8f1c0a2b9d7e6f5a4c3b2a19087f6e5d4c3b2a1908f7e6d5c4b3a29180f7e6d5";
const K2: &str = "k2:1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";
/// Another key under k1's id.
const K1_WRONG: &str = "k1:0a2b9d7e6f5a4c3b2a19087f6e5d4c3b2a1908f7e6d5c4b3a29180f7e6d58f1c";

const NS: &str = "enc";

/// What must never be found in Redis in clear.
const SECRETS: [&str; 8] = [
    "secret-host.example",
    "/account/",
    "SECRET-QUERY",
    "SECRET-BODY",
    "SECRET-HEADER",
    "x-secret-header",
    "secret-tag",
    "SECRET-VALUE",
];

fn keys(lines: &[&str]) -> L2Keys {
    L2Keys::parse(&lines.join("\n")).unwrap()
}

/// An L2 cache on `url` in the test namespace. Generous L2 deadlines and a
/// breaker that does not open: the tests count writes and decode errors,
/// so no operation may be skipped for a slow reply on a loaded machine.
fn l2(url: &str, keys: Option<L2Keys>) -> CacheBuilder {
    let b = Cache::builder()
        .redis(url)
        .namespace(NS)
        .promote_after(1)
        .l2_timeout(Duration::from_secs(5))
        .l2_circuit_breaker(1_000, Duration::from_millis(100));
    match keys {
        Some(k) => b.l2_encryption_key(k),
        None => b,
    }
}

fn url(i: usize) -> String {
    format!("http://secret-host.example/account/{i}?q=SECRET-QUERY")
}

/// An origin answering `SECRET-BODY <path>` (a 64 KiB body for paths
/// under `/account/big`), a secret header, a tag per path, and `Vary`
/// for `/account/varied`.
fn secret_origin() -> (Origin, Log) {
    origin(|_, req| {
        let path = req.uri().path().to_owned();
        let mut body = format!("SECRET-BODY {path}");
        if path.starts_with("/account/big") {
            body = body.repeat(65_536 / body.len() + 1);
        }
        let mut r = ok("max-age=600", &body);
        r = with_header(r, "x-secret-header", "SECRET-HEADER");
        r = with_header(r, "cache-tag", &format!("secret-tag-{}", path.len() % 2));
        if path.ends_with("varied") {
            r = with_header(r, "vary", "accept-language");
        }
        r
    })
}

/// The test's own connection, for binary values; generous deadlines (the
/// client's default, 500 ms, is not enough on a loaded 2-core machine).
async fn conn(server: &RedisServer) -> MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap()
}

/// Every key in Redis, by `SCAN`.
async fn all_keys(c: &mut MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await
            .unwrap();
        out.extend(keys);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    out.sort();
    out
}

/// Every byte Redis holds: each key's name and, by its type, its value
/// (`GET`, `HGETALL`, `ZRANGE`, `XRANGE`, `SMEMBERS`, `LRANGE`), with the
/// types seen.
async fn dump(c: &mut MultiplexedConnection) -> (Vec<u8>, Vec<String>) {
    let mut out = Vec::new();
    let mut types = Vec::new();
    for key in all_keys(c, "*").await {
        out.extend_from_slice(key.as_bytes());
        out.push(b'\n');
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(c).await.unwrap();
        let value: redis::Value = match kind.as_str() {
            "string" => redis::cmd("GET").arg(&key).query_async(c).await.unwrap(),
            "hash" => redis::cmd("HGETALL")
                .arg(&key)
                .query_async(c)
                .await
                .unwrap(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(c)
                .await
                .unwrap(),
            "stream" => redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .query_async(c)
                .await
                .unwrap(),
            "set" => redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async(c)
                .await
                .unwrap(),
            "list" => redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(c)
                .await
                .unwrap(),
            // Expired between SCAN and TYPE.
            "none" => continue,
            other => panic!("{key}: unexpected type {other}"),
        };
        flatten(&value, &mut out);
        out.push(b'\n');
        types.push(kind);
    }
    types.sort();
    types.dedup();
    (out, types)
}

fn flatten(v: &redis::Value, out: &mut Vec<u8>) {
    use redis::Value;
    match v {
        Value::BulkString(b) => out.extend_from_slice(b),
        Value::SimpleString(s) => out.extend_from_slice(s.as_bytes()),
        Value::VerbatimString { text, .. } => out.extend_from_slice(text.as_bytes()),
        Value::Int(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::Array(items) | Value::Set(items) => {
            for i in items {
                flatten(i, out);
                out.push(b' ');
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                flatten(k, out);
                out.push(b' ');
                flatten(v, out);
                out.push(b' ');
            }
        }
        _ => {}
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Entries with bodies, URLs, headers and tags (one with `Vary`, one of
/// 64 KiB), a typed value with a tag, then a tag and a prefix purge
/// (messages on the invalidation log), and shared stats.
async fn workload(cache: &Cache, origin: Origin) {
    let svc = cached(cache, origin);
    for i in 0..6 {
        send(&svc, get(&url(i))).await;
    }
    send(
        &svc,
        get("http://secret-host.example/account/big?q=SECRET-QUERY"),
    )
    .await;
    for lang in ["en", "fr"] {
        let req = get_with(
            "http://secret-host.example/account/varied?q=SECRET-QUERY",
            &[("accept-language", lang)],
        );
        send(&svc, req).await;
    }
    let values = cache.values::<String>("meta").unwrap();
    let opts = ValueOptions::new()
        .ttl(Duration::from_secs(600))
        .tag("secret-tag-values");
    assert!(values.set("secret-key", "SECRET-VALUE".into(), &opts).await);
    written(cache, 6 + 1 + 2 + 1).await;
    // Purges announce the tag and the path on the log.
    cache.invalidate_tag("secret-tag-0").await;
    cache.invalidate_prefix("/account/5").await;
    assert!(cache.flush_shared_stats().await);
}

/// With encryption on, none of the secrets is anywhere in Redis; the same
/// workload without it leaves every one of them there (the dump reads what
/// it must).
#[tokio::test]
async fn nothing_readable_is_left_in_redis() {
    require_redis();
    for encrypted in [false, true] {
        let server = RedisServer::start();
        let keys = encrypted.then(|| keys(&[K1]));
        // Shared stats name labels in clear (documented): one fixed label,
        // not the default (the host).
        let cache = l2(&server.url(), keys)
            .label_fn(|_| Some("api".to_owned()))
            .shared_stats(Duration::from_secs(3600))
            .build()
            .unwrap();
        let (origin, _log) = secret_origin();
        workload(&cache, origin).await;
        let mut c = conn(&server).await;
        let (all, types) = dump(&mut c).await;
        // Entries, markers (strings), tag and variant indexes (sorted
        // sets), the log (a stream), shared stats (a hash).
        assert_eq!(types, ["hash", "stream", "string", "zset"], "{encrypted}");
        let found: Vec<&str> = SECRETS.into_iter().filter(|s| contains(&all, s)).collect();
        if encrypted {
            assert!(found.is_empty(), "found in clear: {found:?}");
            assert!(contains(&all, " sealed "), "sealed invalidations");
            assert!(contains(&all, "TTS\x01\x02k1"), "sealed values");
        } else {
            assert_eq!(found, SECRETS, "the unencrypted control");
        }
    }
}

/// A fresh instance with the same key (empty L1) answers from L2 with the
/// same response: plain, 64 KiB, a `Vary` variant, a typed value; a
/// sealed tag purge reaches the other instance's L1, and a prefix purge
/// reads sealed entries.
#[tokio::test]
async fn entries_round_trip_through_l2() {
    require_redis();
    let server = RedisServer::start();
    let a = l2(&server.url(), Some(keys(&[K1]))).build().unwrap();
    let (origin, log) = secret_origin();
    let svc_a = cached(&a, origin.clone());
    let big = "http://secret-host.example/account/big";
    let varied = "http://secret-host.example/account/varied";
    let mut first = Vec::new();
    for req in [
        get(&url(1)),
        get(big),
        get_with(varied, &[("accept-language", "fr")]),
    ] {
        let r = send(&svc_a, req).await;
        first.push((header(&r, "x-secret-header"), body(r).await));
    }
    let values = a.values::<String>("v").unwrap();
    let opts = ValueOptions::new().ttl(Duration::from_secs(600));
    assert!(values.set("k", "SECRET-VALUE".into(), &opts).await);
    written(&a, 4).await;

    let b = l2(&server.url(), Some(keys(&[K1]))).build().unwrap();
    let svc_b = cached(&b, origin);
    for (i, req) in [
        get(&url(1)),
        get(big),
        get_with(varied, &[("accept-language", "fr")]),
    ]
    .into_iter()
    .enumerate()
    {
        let r = send(&svc_b, req).await;
        assert_eq!(
            cache_status(&r),
            "tower-tiered-cache; hit; detail=l2",
            "{i}"
        );
        assert_eq!(
            (header(&r, "x-secret-header"), body(r).await),
            first[i],
            "{i}"
        );
    }
    assert!(first[1].1.len() > 65_536, "the big body");
    let r = send(&svc_b, get_with(varied, &[("accept-language", "en")])).await;
    assert!(
        cache_status(&r).contains("fwd=vary-miss"),
        "{}",
        cache_status(&r)
    );
    let got = b.values::<String>("v").unwrap().get("k").await;
    assert_eq!(got.as_deref().map(String::as_str), Some("SECRET-VALUE"));
    assert_eq!(b.stats().l2_decode_errors, 0);
    assert_eq!(log.calls(), 4);

    // b holds /account/1 in L1 (promoted on its first L2 hit); a's tag
    // purge (its tag, and the big one's), sealed on the log, reaches it.
    subscribed(&b).await;
    let before = b.stats().l2_messages_received;
    let out = a.invalidate_tag("secret-tag-0").await;
    assert_eq!(out.l2, 2, "{out:?}");
    assert!(eventually(|| b.stats().l2_messages_received > before).await);
    assert_eq!(b.stats().l2_coherence_resets, 0, "the message opened");
    let r = send(&svc_b, get(&url(1))).await;
    assert!(
        cache_status(&r).contains("fwd=uri-miss"),
        "{}",
        cache_status(&r)
    );

    // A prefix purge decodes sealed entries: /account/1 (stored again by
    // b) goes, the variants stay.
    written(&b, 2).await;
    assert_eq!(a.invalidate_prefix("/account/1").await.l2, 1);
    let fresh = l2(&server.url(), Some(keys(&[K1]))).build().unwrap();
    let svc = cached(&fresh, secret_origin().0);
    let r = send(&svc, get_with(varied, &[("accept-language", "fr")])).await;
    assert_eq!(cache_status(&r), "tower-tiered-cache; hit; detail=l2");
    let r = send(&svc, get(&url(1))).await;
    assert!(
        cache_status(&r).contains("fwd=uri-miss"),
        "{}",
        cache_status(&r)
    );
}

/// The raw value at `key`.
async fn get_raw(c: &mut MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query_async(c).await.unwrap()
}

/// The entry keys (`{ns}:{format}:*`) not in `before`.
async fn new_keys(c: &mut MultiplexedConnection, before: &[String]) -> Vec<String> {
    all_keys(c, &format!("{NS}:1:*"))
        .await
        .into_iter()
        .filter(|k| !before.contains(k))
        .collect()
}

/// Written under k1; an instance with [k1, k2] reads it and writes under
/// k2; one with [k2] only misses k1's entry (corrupt: counted, deleted)
/// and reads k2's; a tag purge finds entries indexed under k1 and k2.
#[tokio::test]
async fn keys_rotate() {
    require_redis();
    let server = RedisServer::start();
    let mut c = conn(&server).await;
    let (origin, log) =
        origin(|_, req| with_header(ok("max-age=600", req.uri().path()), "cache-tag", "rotating"));
    let a = l2(&server.url(), Some(keys(&[K1]))).build().unwrap();
    let svc_a = cached(&a, origin.clone());
    send(&svc_a, get("http://h/one")).await;
    written(&a, 1).await;
    let one = new_keys(&mut c, &[]).await;
    send(&svc_a, get("http://h/three")).await;
    written(&a, 2).await;
    let three = new_keys(&mut c, &one).await;
    assert_eq!((one.len(), three.len()), (1, 1));
    let three_k1 = get_raw(&mut c, &three[0]).await.unwrap();
    assert!(three_k1.starts_with(b"TTS\x01\x02k1"));

    let b = l2(&server.url(), Some(keys(&[K1, K2]))).build().unwrap();
    let svc_b = cached(&b, origin.clone());
    let r = send(&svc_b, get("http://h/one")).await;
    assert_eq!(cache_status(&r), "tower-tiered-cache; hit; detail=l2");
    send(&svc_b, get("http://h/two")).await;
    written(&b, 1).await;
    let two = new_keys(&mut c, &[one.clone(), three.clone()].concat()).await;
    assert_eq!(two.len(), 1);
    assert!(get_raw(&mut c, &two[0])
        .await
        .unwrap()
        .starts_with(b"TTS\x01\x02k2"));

    let c2 = l2(&server.url(), Some(keys(&[K2]))).build().unwrap();
    let svc_c = cached(&c2, origin);
    let r = send(&svc_c, get("http://h/two")).await;
    assert_eq!(cache_status(&r), "tower-tiered-cache; hit; detail=l2");
    let calls = log.calls();
    let r = send(&svc_c, get("http://h/three")).await;
    assert!(
        cache_status(&r).contains("fwd=uri-miss"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(body(r).await, "/three");
    assert_eq!((log.calls(), c2.stats().l2_decode_errors), (calls + 1, 1));
    // Deleted, then written again under k2 by c2's miss.
    let mut replaced = false;
    for _ in 0..500 {
        let now = get_raw(&mut c, &three[0]).await;
        if now.as_deref() != Some(&three_k1[..]) {
            replaced = now.is_none_or(|v| v.starts_with(b"TTS\x01\x02k2"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(replaced, "k1's value of /three was not deleted");
    written(&c2, 1).await;

    // /one is indexed under k1's hash of the tag; /two and /three under
    // k2's: b (holding both keys) finds all three.
    let tag_indexes = all_keys(&mut c, &format!("{NS}:tag:*")).await;
    assert_eq!(tag_indexes.len(), 2, "{tag_indexes:?}");
    assert!(tag_indexes.iter().all(|k| !k.contains("rotating")));
    assert_eq!(b.invalidate_tag("rotating").await.l2, 3);
    assert!(all_keys(&mut c, &format!("{NS}:*")).await.is_empty());
}

/// A flipped byte, a value moved under another key, a clear value and a
/// value sealed with another key under the same id are corrupt entries:
/// each a miss (the origin answers), counted in `l2_decode_errors`, and
/// deleted.
#[tokio::test]
async fn tampered_moved_clear_or_wrongly_keyed_values_are_corrupt() {
    require_redis();
    let server = RedisServer::start();
    let mut c = conn(&server).await;
    let (origin, log) = origin(|_, req| ok("max-age=600", &format!("good {}", req.uri().path())));
    const ITEM: &str = "http://secret-host.example/item";
    let a = l2(&server.url(), Some(keys(&[K1]))).build().unwrap();
    let svc = cached(&a, origin.clone());
    send(&svc, get(ITEM)).await;
    written(&a, 1).await;
    let key = new_keys(&mut c, &[]).await.pop().unwrap();
    send(&svc, get("http://secret-host.example/other")).await;
    written(&a, 2).await;
    let other_key = new_keys(&mut c, std::slice::from_ref(&key))
        .await
        .pop()
        .unwrap();
    let sealed = get_raw(&mut c, &key).await.unwrap();
    let other = get_raw(&mut c, &other_key).await.unwrap();
    // A clear entry for the same URL, from an instance without encryption
    // in another namespace.
    let plain = Cache::builder()
        .redis(server.url())
        .namespace("plain")
        .l2_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    send(&cached(&plain, origin.clone()), get(ITEM)).await;
    written(&plain, 1).await;
    let clear_key = all_keys(&mut c, "plain:1:*").await.pop().unwrap();
    let clear = get_raw(&mut c, &clear_key).await.unwrap();
    // The same URL's entry sealed with the same key for another namespace:
    // only the Redis key it was sealed for tells it apart.
    let twin = Cache::builder()
        .redis(server.url())
        .namespace("twin")
        .l2_timeout(Duration::from_secs(5))
        .l2_encryption_key(keys(&[K1]))
        .build()
        .unwrap();
    send(&cached(&twin, origin.clone()), get(ITEM)).await;
    written(&twin, 1).await;
    let twin_key = all_keys(&mut c, "twin:1:*").await.pop().unwrap();
    let twin_value = get_raw(&mut c, &twin_key).await.unwrap();

    let mut flipped = sealed.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x20;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("a flipped byte", flipped, K1),
        ("another URL's value", other, K1),
        (
            "the same URL's value sealed for another namespace",
            twin_value,
            K1,
        ),
        ("a clear value", clear, K1),
        (
            "sealed with another key under its id",
            sealed.clone(),
            K1_WRONG,
        ),
        ("sealed with an id this instance lacks", sealed, K2),
    ];
    let mut failures = Vec::new();
    for (what, value, reader_key) in cases {
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(&value)
            .query_async(&mut c)
            .await
            .unwrap();
        let calls = log.calls();
        let b = l2(&server.url(), Some(keys(&[reader_key])))
            .build()
            .unwrap();
        let r = send(&cached(&b, origin.clone()), get(ITEM)).await;
        let status = cache_status(&r);
        let mut wrong = Vec::new();
        if !status.contains("fwd=uri-miss") {
            wrong.push(format!("Cache-Status {status}"));
        }
        if body(r).await != "good /item" {
            wrong.push("body".to_owned());
        }
        if log.calls() != calls + 1 {
            wrong.push(format!("{} origin calls", log.calls() - calls));
        }
        if b.stats().l2_decode_errors != 1 {
            wrong.push(format!("l2_decode_errors {}", b.stats().l2_decode_errors));
        }
        let mut gone = false;
        for _ in 0..500 {
            if get_raw(&mut c, &key).await.as_deref() != Some(&value[..]) {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !gone {
            wrong.push("not deleted".to_owned());
        }
        if !wrong.is_empty() {
            failures.push(format!("{what}: {}", wrong.join(", ")));
        }
        written(&b, 1).await;
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A sealed invalidation this instance cannot open (sent by one with
/// another key) may cover what its L1 holds: L1 is cleared, counted as a
/// coherence reset.
#[tokio::test]
async fn an_invalidation_that_does_not_open_clears_l1() {
    require_redis();
    let server = RedisServer::start();
    let (origin, log) = origin(|_, _| with_header(ok("max-age=600", "x"), "cache-tag", "t"));
    let a = l2(&server.url(), Some(keys(&[K2]))).build().unwrap();
    let b = l2(&server.url(), Some(keys(&[K1]))).build().unwrap();
    let svc_b = cached(&b, origin);
    send(&svc_b, get("http://h/kept")).await;
    assert_eq!(b.stats().l1_entries, 1);
    subscribed(&b).await;
    a.invalidate_tag("unrelated").await;
    assert!(eventually(|| b.stats().l2_coherence_resets == 1).await);
    assert_eq!(b.stats().l1_entries, 0);
    assert_eq!(log.calls(), 1);
}

#[test]
fn encryption_without_l2_is_refused() {
    let err = Cache::builder()
        .l2_encryption_key(keys(&[K1]))
        .build()
        .unwrap_err();
    assert!(err.is_invalid_setting());
    assert_eq!(err.setting(), "l2_encryption_key");
    assert!(err.to_string().contains(".redis(url)"), "{err}");
}
