//! Corrupt L2 values, written straight into a redis-server of the test's
//! own under the key the cache reads: a status the cache never stores,
//! hop-by-hop fields, a wrong `Content-Length`, another URL's entry, an
//! insane timeline, a compressed body that claims 255 MiB. Each is a miss
//! (the origin answers), is deleted, and is counted in `l2_decode_errors`;
//! the 255 MiB claim allocates nothing of that size.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::time::Duration;

use redis_support::{require_redis, RedisServer};
use support::*;
use tower_tiered_cache::{Cache, CacheBuilder, Entry};

const URL: &str = "http://example.com/item";
const OTHER: &str = "http://example.com/other";

/// The tests of this binary run one at a time, so that the memory one
/// measures is its own.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn l2(url: String) -> CacheBuilder {
    Cache::builder()
        .redis(url)
        .namespace("c")
        .l2_timeout(Duration::from_millis(500))
}

/// A connection for writing raw (binary) values.
async fn conn(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn get_raw(c: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query_async(c).await.unwrap()
}

async fn set_raw(c: &mut redis::aio::MultiplexedConnection, key: &str, value: &[u8]) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(c)
        .await
        .unwrap();
}

fn keys(server: &RedisServer) -> Vec<String> {
    let out = server.cli(&["--scan", "--pattern", "c:*"]);
    let mut keys: Vec<String> = out.text().lines().map(str::to_owned).collect();
    keys.sort();
    keys
}

/// An encoded entry, field by field (the layout documented on
/// `FORMAT_VERSION`), so that a test can write what the cache never would.
#[derive(Clone)]
struct Crafted {
    /// Magic, version, format flags, status, HTTP version, entry flags,
    /// extensions.
    head: [u8; 14],
    timeline: [u64; 6],
    key: String,
    headers: Vec<(String, Vec<u8>)>,
    /// The body field as stored (compressed or not).
    body: Vec<u8>,
}

impl Crafted {
    /// The fields of a value the cache wrote (no `Vary`, no tags).
    fn from_value(raw: &[u8]) -> Self {
        let e = Entry::decode(raw).expect("the cache's own value decodes");
        assert_eq!(e.vary().count(), 0);
        assert_eq!(e.tags().count(), 0);
        let t = e.timeline();
        let c = Crafted {
            head: raw[..14].try_into().unwrap(),
            timeline: [
                t.stored_at,
                t.initial_age,
                t.fresh_until,
                t.stale_until,
                t.stale_if_error_until,
                t.retain_until,
            ],
            key: e.key().to_owned(),
            headers: e
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
            body: e.body().to_vec(),
        };
        assert_eq!(c.encode(), raw, "the test's encoder writes the format");
        c
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = self.head.to_vec();
        for t in self.timeline {
            v.extend_from_slice(&t.to_le_bytes());
        }
        v.extend_from_slice(&(self.key.len() as u32).to_le_bytes());
        v.extend_from_slice(self.key.as_bytes());
        v.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (n, val) in &self.headers {
            v.extend_from_slice(&(n.len() as u16).to_le_bytes());
            v.extend_from_slice(n.as_bytes());
            v.extend_from_slice(&(val.len() as u32).to_le_bytes());
            v.extend_from_slice(val);
        }
        v.extend_from_slice(&0u16.to_le_bytes()); // Vary
        v.extend_from_slice(&0u16.to_le_bytes()); // tags
        v.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        v.extend_from_slice(&self.body);
        v
    }

    fn status(mut self, code: u16) -> Self {
        self.head[6..8].copy_from_slice(&code.to_le_bytes());
        self
    }

    fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(n, _)| n != name);
        self.headers
            .push((name.to_owned(), value.as_bytes().to_vec()));
        self
    }
}

/// Stores URL (and OTHER) through a first cache; returns URL's Redis key,
/// URL's value and OTHER's value.
async fn seed(server: &RedisServer, origin: Origin) -> (String, Vec<u8>, Vec<u8>) {
    let a = l2(server.url()).build().unwrap();
    let svc = cached(&a, origin);
    send(&svc, get(URL)).await;
    written(&a, 1).await;
    let key = keys(server).pop().expect("URL's key");
    send(&svc, get(OTHER)).await;
    written(&a, 2).await;
    let other_key = keys(server)
        .into_iter()
        .find(|k| *k != key)
        .expect("OTHER's key");
    let mut c = conn(server).await;
    let value = get_raw(&mut c, &key).await.unwrap();
    let other = get_raw(&mut c, &other_key).await.unwrap();
    (key, value, other)
}

#[tokio::test]
async fn corrupt_entries_are_misses_deleted_and_counted() {
    require_redis();
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let (origin, log) = origin(|_, req| {
        let path = req.uri().path().to_owned();
        ok("max-age=60", &format!("good {path}"))
    });
    let (key, value, other) = seed(&server, origin.clone()).await;
    let good = Crafted::from_value(&value);
    let body_len = good.body.len();
    assert_eq!(log.calls(), 2);

    let all_max = Crafted {
        timeline: [u64::MAX; 6],
        ..good.clone()
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("status 101", good.clone().status(101).encode()),
        ("status 304", good.clone().status(304).encode()),
        ("status 999", good.clone().status(999).encode()),
        (
            "Transfer-Encoding stored",
            good.clone().header("transfer-encoding", "chunked").encode(),
        ),
        (
            "Connection stored",
            good.clone().header("connection", "close").encode(),
        ),
        (
            "Content-Length too large",
            good.clone()
                .header("content-length", &(body_len + 100).to_string())
                .encode(),
        ),
        (
            "Content-Length too small",
            good.clone()
                .header("content-length", &(body_len - 1).to_string())
                .encode(),
        ),
        ("another URL's entry", other.clone()),
        ("all-MAX timeline", all_max.encode()),
    ];
    let mut c = conn(&server).await;
    // Every case is tried; the failures are listed together at the end.
    let mut failures = Vec::new();
    for (what, crafted) in cases {
        set_raw(&mut c, &key, &crafted).await;
        let calls = log.calls();
        let b = l2(server.url()).build().unwrap();
        let r = send(&cached(&b, origin.clone()), get(URL)).await;
        let mut wrong = Vec::new();
        if r.status() != 200 {
            wrong.push(format!("status {}", r.status()));
        }
        if !cache_status(&r).contains("fwd=uri-miss") {
            wrong.push(format!("Cache-Status {}", cache_status(&r)));
        }
        for hop in ["transfer-encoding", "connection"] {
            if let Some(v) = header(&r, hop) {
                wrong.push(format!("served {hop}: {v}"));
            }
        }
        let got = tokio::time::timeout(Duration::from_secs(5), body(r)).await;
        if got.as_ref().map(|b| &b[..]) != Ok(b"good /item".as_slice()) {
            wrong.push(format!("body {got:?}"));
        }
        if log.calls() != calls + 1 {
            wrong.push(format!("{} origin calls, not 1", log.calls() - calls));
        }
        if b.stats().l2_decode_errors != 1 {
            wrong.push(format!("l2_decode_errors {}", b.stats().l2_decode_errors));
        }
        // The corrupt value is deleted (and then replaced by b's fresh
        // write of the origin's answer).
        let mut gone = false;
        for _ in 0..200 {
            if get_raw(&mut c, &key).await.as_deref() != Some(&crafted[..]) {
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
        // A clean slate for the next case.
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The resident set size of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kb * 1024
}

/// A valid LZ4 block (size prepended) that expands to `size` zero bytes:
/// one literal, one match of `size - 6` bytes at offset 1, five literals.
/// About `size / 255` bytes long.
#[cfg(feature = "compression")]
fn lz4_zeros(size: usize) -> Vec<u8> {
    let mut v = (size as u32).to_le_bytes().to_vec();
    let matched = size - 6;
    v.push(0x1f); // 1 literal, match length 15 + extension
    v.push(0);
    v.extend_from_slice(&1u16.to_le_bytes());
    let mut rest = matched - 4 - 15;
    while rest >= 255 {
        v.push(255);
        rest -= 255;
    }
    v.push(rest as u8);
    v.push(0x50); // 5 literals, the end of the block
    v.extend_from_slice(&[0; 5]);
    v
}

#[cfg(feature = "compression")]
#[test]
fn the_lz4_bomb_builder_is_valid_lz4() {
    for size in [100, 4096, 1 << 20] {
        let bomb = lz4_zeros(size);
        assert!(bomb.len() < size / 200 + 32);
        let out = lz4_flex::decompress_size_prepended(&bomb).unwrap();
        assert_eq!(out.len(), size);
        assert!(out.iter().all(|b| *b == 0));
    }
}

/// Eight clients ask for a URL whose L2 value is a compressed body that
/// claims (and really expands to) 255 MiB, and never read the answer: it
/// is a corrupt entry (over the 1 MiB body cap), a miss, and memory stays
/// flat.
#[cfg(feature = "compression")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_255_mib_decompression_claim_is_a_miss_and_memory_stays_flat() {
    require_redis();
    let _serial = SERIAL.lock().await;
    let server = RedisServer::start();
    let (origin, log) = origin(|_, _| ok("max-age=60", "good"));
    let (key, value, _) = seed(&server, origin.clone()).await;
    let mut bomb = Crafted::from_value(&value);
    bomb.head[5] |= 1; // the body is compressed
    bomb.headers.retain(|(n, _)| n != "content-length");
    bomb.body = lz4_zeros(255 << 20);
    let bomb = bomb.encode();
    let mut c = conn(&server).await;
    set_raw(&mut c, &key, &bomb).await;
    let calls = log.calls();

    let b = l2(server.url()).build().unwrap();
    let svc = cached(&b, origin);
    // Warm up what the first request allocates anyway.
    send(&svc, get("http://example.com/warm-up")).await;
    let before = rss();
    let held: Vec<_> = futures_util::future::join_all((0..8).map(|_| send(&svc, get(URL)))).await;
    let grown = rss().saturating_sub(before);
    eprintln!("RSS grew by {} KiB for 8 unread answers", grown >> 10);
    assert!(
        grown < 32 << 20,
        "RSS grew by {} MiB for 8 unread answers",
        grown >> 20
    );
    for r in held {
        assert_eq!(r.status(), 200);
        // A miss, or (for a request that came after it) the origin's
        // answer from L1; never the bomb.
        let status = cache_status(&r);
        assert!(!status.contains("detail=l2"), "{status}");
        assert_eq!(body(r).await, "good");
    }
    assert!(log.calls() > calls, "the origin answered");
    assert!(b.stats().l2_decode_errors >= 1, "{:?}", b.stats());
    let mut gone = false;
    for _ in 0..200 {
        if get_raw(&mut c, &key).await.map(|v| v.len()) != Some(bomb.len()) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gone, "the bomb was not deleted");
}
