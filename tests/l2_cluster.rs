//! The L2 behaviours of tests/l2_redis.rs on a 3-master Redis Cluster (no
//! replicas) started by the tests: promotion, cross-instance L1 coherence
//! over pub/sub, undecodable values, a master killed under load and
//! restarted, and AUTH via the node URLs (password and ACL user).
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_support::{require_redis, RedisCluster, RedisServer, Reply};
use support::*;
use tower_tiered_cache::{Cache, CacheBuilder};

const L2_HIT: &str = "tower-tiered-cache; hit; detail=l2";
const L1_HIT: &str = "tower-tiered-cache; hit; detail=l1";
const URL: &str = "http://example.com/item";

/// A cache on the cluster, under its own namespace.
/// A cluster cache. The L2 timeout is generous here (tests run in parallel
/// on two cores); the failure tests set their own.
fn on(urls: Vec<String>, namespace: &str) -> CacheBuilder {
    Cache::builder()
        .redis_cluster(urls)
        .namespace(namespace)
        .l2_timeout(Duration::from_millis(500))
}

/// The cluster's URLs starting with node `first`'s: a cluster cache
/// subscribes to the invalidation channel on the node of its first URL.
fn urls_from(cluster: &RedisCluster, first: usize) -> Vec<String> {
    let mut urls = cluster.urls();
    urls.rotate_left(first);
    urls
}

/// `n` URLs under `/{dir}/`.
fn urls(dir: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("http://example.com/{dir}/{i}"))
        .collect()
}

/// The keys under `namespace` on node `i` (a scan of that node only).
fn keys_on(cluster: &RedisCluster, i: usize, namespace: &str) -> Vec<String> {
    let out = cluster.cli(i, &["--scan", "--pattern", &format!("{namespace}:*")]);
    assert!(out.success(), "scan of node {i}: {out:?}");
    out.text()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The index of the master that owns `key`'s slot (the others answer MOVED).
fn owner_of(cluster: &RedisCluster, key: &str) -> usize {
    (0..cluster.nodes().len())
        .find(|&i| matches!(cluster.node(i).cmd(&["EXISTS", key]), Ok(Reply::Int(_))))
        .unwrap_or_else(|| panic!("no node owns {key}"))
}

/// How many masters hold keys under `namespace`.
fn masters_holding(cluster: &RedisCluster, namespace: &str) -> usize {
    (0..cluster.nodes().len())
        .filter(|&i| !keys_on(cluster, i, namespace).is_empty())
        .count()
}

#[tokio::test]
async fn promotion_happens_after_exactly_promote_after_l2_hits_on_a_cluster() {
    require_redis();
    let cluster = RedisCluster::start(3);
    let ns = "cpromo";
    let (origin, log) = origin(|_, req| ok("max-age=60", req.uri().path()));
    let a = on(cluster.urls(), ns).build().unwrap();
    let svc_a = cached(&a, origin.clone());
    let hot = urls("hot", 8);
    for url in &hot {
        send(&svc_a, get(url)).await;
    }
    written(&a, hot.len() as u64).await;
    assert!(
        masters_holding(&cluster, ns) >= 2,
        "the keys are spread over the masters"
    );

    for n in [1, 3] {
        let b = on(cluster.urls(), ns).promote_after(n).build().unwrap();
        let svc = cached(&b, origin.clone());
        // Subscribe first (a look-up of another URL starts it). None of
        // a's announcements can reach b late (one would be an invalidation
        // and rightly drop b's L1 copy): `written` counts a write once its
        // announcement is in the log, all before b was built, and b,
        // reachable at its first connection, follows the log from its end
        // then; `subscribed` is "caught up". Nothing to wait for; should
        // one arrive all the same, the count below says so.
        let (other, _) = support::origin(|_, _| ok("no-store", "other"));
        send(&cached(&b, other), get("http://example.com/warm-up")).await;
        subscribed(&b).await;
        let received = b.stats().l2_messages_received;
        for url in &hot {
            for i in 1..=n {
                let r = send(&svc, get(url)).await;
                assert_eq!(
                    cache_status(&r),
                    L2_HIT,
                    "promote_after({n}): {url}: L2 hit {i}"
                );
            }
            // L1 copies are trusted once the invalidation channel is up.
            subscribed(&b).await;
            let r = send(&svc, get(url)).await;
            assert_eq!(
                cache_status(&r),
                L1_HIT,
                "promote_after({n}): {url}: promoted after {n} hits"
            );
            assert_eq!(body(r).await, url.trim_start_matches("http://example.com"));
        }
        assert_eq!(
            b.stats().l2_messages_received,
            received,
            "no invalidation arrived during the checks"
        );
        let stats = b.stats();
        assert_eq!(stats.promotions, hot.len() as u64, "{stats:?}");
        assert_eq!(stats.hits_l2, u64::from(n) * hot.len() as u64, "{stats:?}");
    }
    assert_eq!(log.calls(), hot.len());
}

fn versioned(n: usize) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    with_header(
        ok("max-age=60", &format!("v{n}")),
        "surrogate-key",
        "product-1 all",
    )
}

/// Two instances on one cluster, both holding `URL` in L1. Each subscribes
/// on a different node, and neither on the node that owns the channel's
/// slot (where PUBLISH is routed): every message crosses the cluster bus.
async fn two_instances(cluster: &RedisCluster, ns: &str) -> (Cache, Svc, Cache, Svc, Log) {
    let owner = owner_of(cluster, &format!("{ns}:invalidate"));
    let others: Vec<usize> = (0..3).filter(|&i| i != owner).collect();
    let (origin, log) = origin(|n, _| versioned(n));
    let a = on(urls_from(cluster, others[0]), ns).build().unwrap();
    let b = on(urls_from(cluster, others[1]), ns)
        .promote_after(1)
        .build()
        .unwrap();
    let (svc_a, svc_b) = (cached(&a, origin.clone()), cached(&b, origin));
    // Start both subscribers (on first use) before anything is stored.
    let (no_store, _) = support::origin(|_, _| ok("no-store", "warm-up"));
    send(
        &cached(&a, no_store.clone()),
        get("http://example.com/warm-up"),
    )
    .await;
    send(&cached(&b, no_store), get("http://example.com/warm-up")).await;
    subscribed(&a).await;
    subscribed(&b).await;

    let before = b.stats().l2_messages_received;
    send(&svc_a, get(URL)).await;
    written(&a, 1).await;
    // a's announcement of its write reaches b (before b holds a copy).
    assert!(
        eventually(|| b.stats().l2_messages_received > before).await,
        "a's write announcement did not reach b: {:?}",
        b.stats()
    );
    let r = send(&svc_b, get(URL)).await;
    assert_eq!(cache_status(&r), L2_HIT);
    let r = send(&svc_b, get(URL)).await;
    assert_eq!(cache_status(&r), L1_HIT, "b holds an L1 copy");
    (a, svc_a, b, svc_b, log)
}

#[tokio::test]
async fn an_invalidation_on_one_instance_removes_the_others_l1_copy_on_a_cluster() {
    require_redis();
    let cluster = RedisCluster::start(3);
    let (a, _svc_a, b, svc_b, log) = two_instances(&cluster, "cinval").await;
    let before = b.stats().l2_messages_received;
    let t = Instant::now();
    assert!(a.invalidate(&get(URL)));
    // No wall-clock bound (a busy machine could break it): b's copy is
    // fresh for 60 s (max-age=60), far longer than this test runs, so only
    // the message can drop it. The deadline only bounds a hang.
    assert!(
        within(Duration::from_secs(20), || b.stats().l1_entries == 0
            && b.stats().l2_messages_received > before)
        .await,
        "no message reached b: {:?}",
        b.stats()
    );
    let r = send(&svc_b, get(URL)).await;
    let elapsed = t.elapsed();
    println!("invalidation reached the other instance in {elapsed:?}");
    assert!(
        cache_status(&r).contains("fwd=uri-miss"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(body(r).await, "v1");
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn an_overwrite_on_one_instance_removes_the_others_l1_copy_on_a_cluster() {
    require_redis();
    let cluster = RedisCluster::start(3);
    let (a, svc_a, b, svc_b, log) = two_instances(&cluster, "cover").await;
    let before = b.stats().l2_messages_received;
    let t = Instant::now();
    // `no-cache` on a's request: a fetches v1 and overwrites v0 everywhere.
    let r = send(&svc_a, get_with(URL, &[("cache-control", "no-cache")])).await;
    assert_eq!(body(r).await, "v1");
    written(&a, 2).await;
    // As above: the message, not expiry (max-age=60), drops b's copy; no
    // wall-clock bound. The deadline only bounds a hang.
    assert!(
        within(Duration::from_secs(20), || b.stats().l1_entries == 0
            && b.stats().l2_messages_received > before)
        .await,
        "no message reached b: {:?}",
        b.stats()
    );
    let r = send(&svc_b, get(URL)).await;
    let elapsed = t.elapsed();
    println!("overwrite reached the other instance in {elapsed:?}");
    assert_eq!(cache_status(&r), L2_HIT, "b's L1 copy was dropped");
    assert_eq!(body(r).await, "v1");
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn undecodable_values_are_misses_and_are_deleted_on_a_cluster() {
    require_redis();
    let cluster = RedisCluster::start(3);
    let ns = "cdecode";
    let (origin, log) = origin(|_, _| ok("max-age=60", "good"));
    let a = on(cluster.urls(), ns).build().unwrap();
    send(&cached(&a, origin), get(URL)).await;
    written(&a, 1).await;

    // The key lives on one master: scan each.
    let found: Vec<(usize, String)> = (0..3)
        .flat_map(|i| keys_on(&cluster, i, ns).into_iter().map(move |k| (i, k)))
        .collect();
    assert_eq!(found.len(), 1, "one key under the namespace: {found:?}");
    let (node, key) = found[0].clone();
    println!("the entry lives on node {node}: {key}");

    // Caches that do not store (`no-store` from the origin), so a deleted
    // value stays deleted.
    let (no_store, no_store_log) = support::origin(|_, _| ok("no-store", "good"));
    for garbage in ["garbage", "TTC\u{1}\u{1}\u{9}", ""] {
        // `-c` from another node: redirected to the owner.
        let set = cluster.cli((node + 1) % 3, &["SET", &key, garbage]);
        assert!(set.success() && set.text() == "OK", "{set:?}");
        assert_eq!(
            cluster.node(node).cmd(&["GET", &key]),
            Ok(Reply::Bulk(garbage.as_bytes().to_vec()))
        );
        let b = on(cluster.urls(), ns).build().unwrap();
        let r = send(&cached(&b, no_store.clone()), get(URL)).await;
        assert_eq!(r.status(), 200);
        assert!(
            cache_status(&r).contains("fwd=uri-miss"),
            "{garbage:?}: {}",
            cache_status(&r)
        );
        assert_eq!(body(r).await, "good");
        assert_eq!(
            b.stats().l2_decode_errors,
            1,
            "{garbage:?}: {:?}",
            b.stats()
        );
        assert_eq!(b.stats().hits_l2, 0, "{garbage:?}");
        // Deleted off the request path, shortly after the lookup.
        assert!(
            eventually(|| cluster.node(node).cmd(&["GET", &key]) == Ok(Reply::Nil)).await,
            "{garbage:?} was not deleted"
        );
        // The next lookup is a plain miss.
        let r = send(&cached(&b, no_store.clone()), get(URL)).await;
        assert!(cache_status(&r).contains("fwd=uri-miss"));
        assert_eq!(b.stats().l2_decode_errors, 1, "{garbage:?}");
    }
    assert_eq!(log.calls(), 1);
    assert_eq!(no_store_log.calls(), 6);
}

/// Kills master `kill` a third of the way through a bounded load; with
/// `restart`, then restarts it and waits for L2 hits on every key.
async fn a_master_killed_under_load(kill: usize, ns: &str, restart: bool) {
    let mut cluster = RedisCluster::start(3);
    let (origin, _log) = origin(|_, _| ok("max-age=60", "x"));
    let cache = on(cluster.urls(), ns)
        .l1_write_through(false) // every hit goes to L2
        .promote_after(1_000_000)
        .l2_timeout(Duration::from_millis(50))
        .l2_circuit_breaker(3, Duration::from_millis(300))
        .build()
        .unwrap();
    let svc = cached(&cache, origin.clone());
    const KEYS: usize = 40;
    let key_url = |k: usize| format!("http://example.com/k{k}");
    // Every key in L2 first, some on the master that will die: written by
    // another instance, with a generous timeout, until the cluster holds
    // them all (a write that still times out is dropped by design; a new
    // writer's round stores again only what is missing).
    let stored =
        |cluster: &RedisCluster| (0..3).map(|i| keys_on(cluster, i, ns).len()).sum::<usize>();
    let mut rounds = 0;
    while stored(&cluster) < KEYS {
        rounds += 1;
        assert!(
            rounds <= 5,
            "{} of {KEYS} keys in L2 after 5 rounds",
            stored(&cluster)
        );
        let writer = on(cluster.urls(), ns)
            .l2_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let w = cached(&writer, origin.clone());
        for k in 0..KEYS {
            send(&w, get(&key_url(k))).await;
        }
        // Every write this round tried has landed or been dropped.
        let tried = writer.stats().stores;
        assert!(
            within(Duration::from_secs(30), || {
                let st = writer.stats();
                st.l2_writes + st.l2_writes_dropped >= tried
            })
            .await,
            "writes neither landed nor dropped: {:?}",
            writer.stats()
        );
    }
    assert_eq!(stored(&cluster), KEYS, "only the entries, once each");
    let on_victim = keys_on(&cluster, kill, ns).len();
    assert!(on_victim > 0, "no key on node {kill}");

    const REQUESTS: usize = 3000;
    const CONCURRENCY: usize = 16;
    // How late this runtime runs a task that asked to wake in 10 ms: on a
    // starved machine every request is late by as much, Redis or not.
    let lag = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let ticker = {
        let lag = Arc::clone(&lag);
        tokio::spawn(async move {
            loop {
                let t = Instant::now();
                tokio::time::sleep(Duration::from_millis(10)).await;
                let late = t.elapsed().saturating_sub(Duration::from_millis(10));
                let mut l = lag.lock().unwrap();
                *l = (*l).max(late);
            }
        })
    };
    let sent = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..CONCURRENCY {
        let svc = svc.clone();
        let sent = Arc::clone(&sent);
        workers.push(tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut failed = 0;
            loop {
                let i = sent.fetch_add(1, Ordering::SeqCst);
                if i >= REQUESTS {
                    return (slowest, failed);
                }
                let url = key_url((i + w) % KEYS);
                let t = Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(5), call(&svc, get(&url))).await;
                slowest = slowest.max(t.elapsed());
                match r {
                    Ok(Ok(resp)) if resp.status() == 200 => {}
                    _ => failed += 1,
                }
            }
        }));
    }
    let start = Instant::now();
    assert!(
        within(Duration::from_secs(20), || sent.load(Ordering::SeqCst)
            >= REQUESTS / 3)
        .await,
        "the load did not get going"
    );
    cluster.kill_node(kill);
    let at_kill = sent.load(Ordering::SeqCst).min(REQUESTS);
    let mut slowest = Duration::ZERO;
    let mut failed = 0;
    for w in workers {
        let (s, f) = w.await.unwrap();
        slowest = slowest.max(s);
        failed += f;
    }
    ticker.abort();
    let lag = *lag.lock().unwrap();
    let stats = cache.stats();
    println!(
        "node {kill} ({on_victim}/{KEYS} keys) killed after {at_kill}/{REQUESTS} requests; \
         load took {:?}; slowest request {slowest:?}, worst scheduling lag {lag:?}; {stats:?}",
        start.elapsed()
    );
    assert!(at_kill < REQUESTS, "killed during the load");
    assert_eq!(failed, 0, "no request may fail: {stats:?}");
    assert!(
        stats.l2_errors + stats.l2_timeouts > 0,
        "a master was down: {stats:?}"
    );
    // The origin answers at once; only L2 can make a request slow, and each
    // L2 operation is bounded by its timeout (plus scheduling on 2 cores,
    // and what the machine withheld from this runtime: twice the worst lag
    // seen).
    assert!(
        slowest < Duration::from_secs(1) + 2 * lag,
        "slowest request took {slowest:?}, worst scheduling lag {lag:?}"
    );

    if !restart {
        return;
    }
    // Back up: L2 hits resume by themselves, on every key (those of the
    // restarted, empty master are stored again first).
    let t = Instant::now();
    tokio::task::block_in_place(|| cluster.restart_node(kill));
    let cluster_ok = t.elapsed();
    let deadline = t + Duration::from_secs(15);
    let mut pending: Vec<usize> = (0..KEYS).collect();
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for k in pending {
            let r = send(&svc, get(&key_url(k))).await;
            assert_eq!(r.status(), 200);
            if cache_status(&r) != L2_HIT {
                still.push(k);
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!(
        "node {kill} restarted: cluster ok after {cluster_ok:?}, \
         L2 hits on all keys after {:?}; {:?}",
        t.elapsed(),
        cache.stats()
    );
    assert!(
        pending.is_empty(),
        "no L2 hit after restart for {pending:?}: {:?}",
        cache.stats()
    );
    assert!(
        !keys_on(&cluster, kill, ns).is_empty(),
        "the restarted master holds entries again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_fails_no_request_and_stays_bounded() {
    require_redis();
    // Node 0: the first URL, where the cache subscribes to pub/sub.
    a_master_killed_under_load(0, "ckill0", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_hits_resume_after_a_master_killed_under_load_restarts() {
    require_redis();
    // Node 2: neither the first URL nor the pub/sub node (node 0 fails the
    // same way).
    a_master_killed_under_load(2, "ckill2", true).await;
}

/// An entry stored by one cache is served from L2 by another, both with
/// the credentials in the node URLs; without them L2 is only a miss.
async fn auth_round_trip(cluster: &RedisCluster, ns: &str) {
    let (origin, log) = origin(|_, req| ok("max-age=60", req.uri().path()));
    let pages = urls("auth", 6);
    let a = on(cluster.urls_with_auth(), ns).build().unwrap();
    let svc_a = cached(&a, origin.clone());
    for url in &pages {
        assert!(cache_status(&send(&svc_a, get(url)).await).contains("stored"));
    }
    written(&a, pages.len() as u64).await;
    // The pub/sub connection authenticates too.
    subscribed(&a).await;
    assert!(
        masters_holding(cluster, ns) >= 2,
        "keys spread over masters"
    );

    let b = on(cluster.urls_with_auth(), ns).build().unwrap();
    let svc_b = cached(&b, origin);
    for url in &pages {
        let r = send(&svc_b, get(url)).await;
        assert_eq!(cache_status(&r), L2_HIT, "{url}");
        assert_eq!(body(r).await, url.trim_start_matches("http://example.com"));
    }
    assert_eq!(log.calls(), pages.len(), "b did not call the origin");
    assert_eq!(b.stats().hits_l2, pages.len() as u64);

    // Without the credentials, L2 fails: every lookup is a miss, no error.
    let c = on(cluster.urls(), ns).build().unwrap();
    let (origin, log) = support::origin(|_, _| ok("max-age=60", "auth"));
    let r = send(&cached(&c, origin), get(&pages[0])).await;
    assert_eq!(r.status(), 200);
    assert_eq!(log.calls(), 1);
    let stats = c.stats();
    assert!(stats.l2_errors + stats.l2_timeouts >= 1, "{stats:?}");
    assert_eq!(stats.hits_l2, 0);
}

#[tokio::test]
async fn auth_via_url_on_a_password_protected_cluster() {
    require_redis();
    let cluster = RedisCluster::start_with(3, RedisServer::builder().password("pw"));
    assert!(cluster.urls_with_auth()[0].starts_with("redis://:pw@"));
    auth_round_trip(&cluster, "cauthpw").await;
}

#[tokio::test]
async fn auth_via_url_as_an_acl_user_on_a_cluster() {
    require_redis();
    let cluster = RedisCluster::start_with(
        3,
        RedisServer::builder().acl_user("cacheuser", "pw-for-cache"),
    );
    assert!(cluster.urls_with_auth()[0].starts_with("redis://cacheuser:pw-for-cache@"));
    auth_round_trip(&cluster, "cauthacl").await;
}
