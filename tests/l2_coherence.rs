//! Coherence of L1 across instances through Redis failures: the durable
//! invalidation log (`{ns}:inv`, a Redis Stream). Two `Cache` instances
//! share one test-started redis-server. Losing the connection clears no L1;
//! an instance that reconnects applies what it missed; L1 is cleared (and
//! counted) only when the log no longer holds it; invalidations made while
//! Redis is unreachable are queued and replayed when it is back.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::time::Duration;

use redis_support::{require_redis, RedisServer};
use support::*;
use tower_tiered_cache::{Cache, CacheBuilder, ManualClock};

const L1_HIT: &str = "tower-tiered-cache; hit; detail=l1";
const L2_HIT: &str = "tower-tiered-cache; hit; detail=l2";

/// Reconnecting takes a growing delay (at most 2 s) and, for a frozen
/// server, the log read's own deadline: a generous bound, not a sleep.
const RECOVERY: Duration = Duration::from_secs(30);

fn url(i: usize) -> String {
    format!("http://example.com/page/{i}")
}

fn builder(redis_url: String) -> CacheBuilder {
    Cache::builder()
        .redis(redis_url)
        .namespace("co")
        .l2_timeout(Duration::from_millis(500))
        .promote_after(1)
}

/// A and B, each holding `n` URLs in L1 (A fetched them from the origin, B
/// from L2), both following the log.
async fn pair(a: CacheBuilder, b: CacheBuilder, n: usize) -> (Cache, Svc, Cache, Svc, Log) {
    let (origin, log) = origin(|n, _| ok("max-age=600", &format!("v{n}")));
    let (a, b) = (a.build().unwrap(), b.build().unwrap());
    let (svc_a, svc_b) = (cached(&a, origin.clone()), cached(&b, origin));
    for i in 0..n {
        send(&svc_a, get(&url(i))).await;
    }
    written(&a, n as u64).await;
    for i in 0..n {
        assert_eq!(cache_status(&send(&svc_b, get(&url(i))).await), L2_HIT);
    }
    subscribed(&a).await;
    subscribed(&b).await;
    for i in 0..n {
        assert_eq!(cache_status(&send(&svc_a, get(&url(i))).await), L1_HIT);
        assert_eq!(cache_status(&send(&svc_b, get(&url(i))).await), L1_HIT);
    }
    assert_eq!(log.calls(), n);
    (a, svc_a, b, svc_b, log)
}

/// Invalidations queued or being sent by `cache` are settled.
async fn settled(cache: &Cache) {
    assert!(
        within(RECOVERY, || cache.l2_pending_writes() == 0).await,
        "pending: {}",
        cache.l2_pending_writes()
    );
}

/// A server with a second ACL user, `b`, whose connections the test can
/// cut and keep out while the default user (instance A) carries on.
fn server_with_user_b() -> (RedisServer, String) {
    let server = RedisServer::start();
    let out = server.cli(&["ACL", "SETUSER", "b", "on", ">pw-b", "~*", "&*", "+@all"]);
    assert!(out.success() && out.text().contains("OK"), "{out:?}");
    let b_url = format!("redis://b:pw-b@127.0.0.1:{}/", server.port());
    (server, b_url)
}

/// Cuts every connection of user `b` and keeps it out.
fn cut_b(server: &RedisServer) {
    assert!(server.cli(&["ACL", "SETUSER", "b", "off"]).success());
    assert!(server.cli(&["CLIENT", "KILL", "USER", "b"]).success());
}

fn let_b_in(server: &RedisServer) {
    assert!(server.cli(&["ACL", "SETUSER", "b", "on"]).success());
}

#[tokio::test]
async fn an_invalidation_missed_while_disconnected_is_applied_on_reconnect_and_nothing_else_is_dropped(
) {
    require_redis();
    let (server, b_url) = server_with_user_b();
    let (a, _svc_a, b, svc_b, log) = pair(builder(server.url()), builder(b_url), 3).await;
    cut_b(&server);
    assert!(
        within(RECOVERY, || !b.stats().l2_subscribed).await,
        "b noticed its connection went"
    );
    let received = b.stats().l2_messages_received;
    assert!(a.invalidate(&get(&url(0))));
    settled(&a).await;
    // b has not heard; L1 keeps serving what it holds meanwhile.
    for i in 0..3 {
        assert_eq!(cache_status(&send(&svc_b, get(&url(i))).await), L1_HIT);
    }
    let_b_in(&server);
    assert!(
        within(RECOVERY, || b.stats().l2_subscribed).await,
        "b is back: {:?}",
        b.stats()
    );
    let s = b.stats();
    assert!(s.l2_messages_received > received, "b read what it missed");
    assert_eq!(s.l2_coherence_resets, 0, "no reset: the log held it");
    // The invalidated URL is gone from b's L1 (and from L2)...
    let r = send(&svc_b, get(&url(0))).await;
    assert!(
        cache_status(&r).contains("fwd=uri-miss"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(log.calls(), 4);
    // ...and nothing else was dropped.
    for i in 1..3 {
        assert_eq!(cache_status(&send(&svc_b, get(&url(i))).await), L1_HIT);
    }
    assert_eq!(log.calls(), 4);
}

#[tokio::test]
async fn a_log_trimmed_past_the_last_id_clears_l1_and_counts_a_reset() {
    require_redis();
    let (server, b_url) = server_with_user_b();
    let a = builder(server.url()).l2_invalidation_log_len(10);
    let (a, _svc_a, b, svc_b, log) = pair(a, builder(b_url), 2).await;
    cut_b(&server);
    assert!(within(RECOVERY, || !b.stats().l2_subscribed).await);
    // Far more than the log keeps (`MAXLEN ~` trims whole nodes of 100).
    for i in 0..400 {
        a.invalidate_key(&format!("GET http://example.com/other/{i}"));
    }
    settled(&a).await;
    let len: u64 = server
        .cli(&["XLEN", "{co}:inv"])
        .text()
        .trim()
        .parse()
        .unwrap();
    assert!(len < 400, "the log was trimmed: {len} entries");
    let_b_in(&server);
    assert!(within(RECOVERY, || b.stats().l2_subscribed).await);
    let s = b.stats();
    assert_eq!((s.l2_coherence_resets, s.l1_entries), (1, 0), "{s:?}");
    // Exported with the other L2 counters.
    let text = b.prometheus();
    assert!(
        text.contains("tower_cache_l2_events_total{event=\"coherence_resets\"} 1\n"),
        "{text}"
    );
    // L1 was cleared: the entries come from L2 again (or the origin, if
    // b's L2 breaker is still open after its own outage).
    for i in 0..2 {
        let status = cache_status(&send(&svc_b, get(&url(i))).await);
        assert_ne!(status, L1_HIT);
    }
    assert!(log.calls() <= 4);
    // A's log is intact for A: no reset there.
    assert_eq!(a.stats().l2_coherence_resets, 0);
}

#[tokio::test]
async fn a_log_deleted_while_the_server_stayed_up_clears_l1_and_counts_a_reset() {
    require_redis();
    let (server, b_url) = server_with_user_b();
    let (_a, _svc_a, b, svc_b, _log) = pair(builder(server.url()), builder(b_url), 1).await;
    cut_b(&server);
    assert!(within(RECOVERY, || !b.stats().l2_subscribed).await);
    assert!(server.cli(&["DEL", "{co}:inv"]).success());
    let_b_in(&server);
    assert!(within(RECOVERY, || b.stats().l2_subscribed).await);
    let s = b.stats();
    assert_eq!((s.l2_coherence_resets, s.l1_entries), (1, 0), "{s:?}");
    assert_ne!(cache_status(&send(&svc_b, get(&url(0))).await), L1_HIT);
}

#[tokio::test]
async fn an_invalidation_made_while_redis_is_frozen_is_replayed_when_it_is_back() {
    require_redis();
    let mut server = RedisServer::start();
    let (a, _svc_a, b, svc_b, log) = pair(builder(server.url()), builder(server.url()), 2).await;
    let k0 = key_of(&server, 0);
    assert_eq!(server.cli(&["EXISTS", &k0]).text().trim(), "1");
    server.freeze();
    // The DEL and the log entry time out: queued.
    assert!(a.invalidate(&get(&url(0))));
    settled(&a).await;
    assert_eq!(cache_status(&send(&svc_b, get(&url(0))).await), L1_HIT);
    server.unfreeze();
    assert!(
        within(RECOVERY, || server.cli(&["EXISTS", &k0]).text().trim()
            == "0")
        .await,
        "the queued DEL reached Redis"
    );
    assert!(
        within(RECOVERY, || b.stats().l2_subscribed).await,
        "{:?}",
        b.stats()
    );
    let dropped = within(RECOVERY, || {
        // b's copy goes once the replayed entry is read.
        b.stats().l1_entries < 2
    })
    .await;
    assert!(dropped, "b's L1 copy was dropped: {:?}", b.stats());
    let r = send(&svc_b, get(&url(0))).await;
    assert!(
        cache_status(&r).contains("fwd=uri-miss"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(log.calls(), 3);
    assert_eq!(cache_status(&send(&svc_b, get(&url(1))).await), L1_HIT);
    for c in [&a, &b] {
        let s = c.stats();
        assert_eq!((s.l2_coherence_resets, s.l2_invalidations_dropped), (0, 0));
    }
}

/// The Redis key of the entry for `url(i)`: the only key whose value holds
/// its path.
fn key_of(server: &RedisServer, i: usize) -> String {
    let path = format!("/page/{i}");
    let keys = server.cli(&["--scan", "--pattern", "co:*"]);
    keys.text()
        .lines()
        .find(|k| {
            !k.contains(":tag:")
                && !k.contains(":vi:")
                && server.cli(&["GET", k]).text().contains(&path)
        })
        .map(str::to_owned)
        .expect("the entry's key")
}

/// Restarts the killed `server` and waits until A and B follow the log
/// again, past the L2 breaker's open period (it runs on the cache's clock).
async fn back_and_following(server: &mut RedisServer, clock: &ManualClock, a: &Cache, b: &Cache) {
    server.restart();
    clock.advance(Duration::from_secs(6));
    assert!(
        within(RECOVERY, || a.stats().l2_subscribed
            && b.stats().l2_subscribed)
        .await
    );
}

#[tokio::test]
async fn redis_killed_and_restarted_empty_clears_no_l1_and_the_outage_invalidation_reaches_b() {
    require_redis();
    let mut server = RedisServer::start();
    let clock = ManualClock::starting_now();
    let (a, svc_a, b, svc_b, log) = pair(
        builder(server.url()).clock(clock.clone()),
        builder(server.url()).clock(clock.clone()),
        20,
    )
    .await;
    server.kill();
    assert!(within(RECOVERY, || !b.stats().l2_subscribed).await);
    // Past the 10 s the old default distrusted L1 after: L1 keeps serving
    // within its own freshness (max-age=600).
    clock.advance(Duration::from_secs(30));
    for i in 0..20 {
        assert_eq!(cache_status(&send(&svc_a, get(&url(i))).await), L1_HIT);
        assert_eq!(cache_status(&send(&svc_b, get(&url(i))).await), L1_HIT);
    }
    assert_eq!(log.calls(), 20);
    // A invalidates while Redis is gone: queued.
    assert!(a.invalidate(&get(&url(0))));
    settled(&a).await;
    back_and_following(&mut server, &clock, &a, &b).await;
    assert!(
        within(RECOVERY, || b.stats().l1_entries < 20).await,
        "a's queued invalidation reached b: {:?}",
        b.stats()
    );
    let r = send(&svc_b, get(&url(0))).await;
    assert!(cache_status(&r).contains("fwd="), "{}", cache_status(&r));
    // Every other entry is still in both L1s: no flush.
    for i in 1..20 {
        assert_eq!(cache_status(&send(&svc_a, get(&url(i))).await), L1_HIT);
        assert_eq!(cache_status(&send(&svc_b, get(&url(i))).await), L1_HIT);
    }
    assert_eq!(log.calls(), 21);
    for c in [&a, &b] {
        assert_eq!(c.stats().l2_coherence_resets, 0, "{:?}", c.stats());
    }
}

/// A write whose announcement could not be sent (Redis gone, its breaker
/// still closed) is announced when Redis is back: B drops its older L1
/// copy of that URL, and keeps the others.
#[tokio::test]
async fn a_write_announced_while_redis_was_gone_reaches_b_when_it_is_back() {
    require_redis();
    let mut server = RedisServer::start();
    let clock = ManualClock::starting_now();
    let (a, svc_a, b, svc_b, log) = pair(
        builder(server.url()).clock(clock.clone()),
        builder(server.url()).clock(clock.clone()),
        5,
    )
    .await;
    server.kill();
    // A fetches url(0) anew (`no-cache`) and stores it: the write and its
    // announcement fail, before A's L2 breaker opens.
    let r = send(&svc_a, get_with(&url(0), &[("cache-control", "no-cache")])).await;
    assert!(cache_status(&r).contains("stored"), "{}", cache_status(&r));
    assert_eq!(body(r).await, "v5");
    settled(&a).await;
    assert_eq!(
        a.stats().l2_writes,
        5,
        "the write did not land: {:?}",
        a.stats()
    );
    back_and_following(&mut server, &clock, &a, &b).await;
    assert!(
        within(RECOVERY, || b.stats().l1_entries < 5).await,
        "a's write was never announced to b: {:?}",
        b.stats()
    );
    let r = send(&svc_b, get(&url(0))).await;
    assert!(cache_status(&r).contains("fwd="), "{}", cache_status(&r));
    for i in 1..5 {
        assert_eq!(cache_status(&send(&svc_b, get(&url(i))).await), L1_HIT);
    }
    assert_eq!(log.calls(), 7);
}

#[tokio::test]
async fn with_appendonly_the_log_survives_a_restart_and_the_reader_reads_on() {
    require_redis();
    let mut server = RedisServer::with_args(&["--appendonly", "yes", "--appendfsync", "always"]);
    let (a, _svc_a, b, svc_b, log) = pair(builder(server.url()), builder(server.url()), 3).await;
    // An entry the restarted server must still have, before the kill.
    assert!(a.invalidate(&get(&url(2))));
    settled(&a).await;
    assert!(within(RECOVERY, || b.stats().l1_entries == 2).await);
    server.kill();
    assert!(within(RECOVERY, || !b.stats().l2_subscribed).await);
    assert!(a.invalidate(&get(&url(0))));
    settled(&a).await;
    server.restart();
    let xlen = server.cli(&["XLEN", "{co}:inv"]);
    assert!(
        xlen.text().trim().parse::<u64>().unwrap_or(0) >= 4,
        "the log was restored: {xlen:?}"
    );
    assert!(
        within(RECOVERY, || b.stats().l1_entries == 1).await,
        "{:?}",
        b.stats()
    );
    assert!(within(RECOVERY, || b.stats().l2_subscribed).await);
    assert_eq!(cache_status(&send(&svc_b, get(&url(1))).await), L1_HIT);
    assert!(cache_status(&send(&svc_b, get(&url(0))).await).contains("fwd="));
    assert_eq!(log.calls(), 4);
    assert_eq!(b.stats().l2_coherence_resets, 0);
}

#[tokio::test]
async fn a_queue_that_overflows_while_redis_is_gone_is_counted_and_becomes_a_clear() {
    require_redis();
    let mut server = RedisServer::start();
    let (a, _svc_a, b, svc_b, _log) = pair(builder(server.url()), builder(server.url()), 2).await;
    server.kill();
    assert!(within(RECOVERY, || !b.stats().l2_subscribed).await);
    // More invalidations than the queue holds (4 096).
    for i in 0..5000 {
        a.invalidate_key(&format!("GET http://example.com/other/{i}"));
    }
    settled(&a).await;
    let dropped = a.stats().l2_invalidations_dropped;
    assert!(dropped >= 5000 - 4096, "counted: {dropped}");
    // Nothing lost silently: b keeps serving until Redis is back, then
    // the clear replaces the dropped invalidations everywhere.
    assert_eq!(cache_status(&send(&svc_b, get(&url(0))).await), L1_HIT);
    server.restart();
    assert!(
        within(RECOVERY, || b.stats().l1_entries == 0).await,
        "b's L1 was cleared by a's clear: {:?}",
        b.stats()
    );
    assert_eq!(b.stats().l2_coherence_resets, 0, "a clear, not a reset");
    assert!(cache_status(&send(&svc_b, get(&url(1))).await).contains("fwd="));
}
