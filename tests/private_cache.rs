//! Private-cache mode for clients and partitioning by credentials
//! (`CacheBuilder::partition_by_credentials`): `private` responses in a
//! private cache; what `Authorization` does without partitioning; one
//! keyspace per set of `Authorization` / `Proxy-Authorization` / `Cookie`
//! values, never shared; credentials kept out of readable keys and logs;
//! the shared-mode rule; invalidation across partitions; configurations
//! the builder refuses.
//!
//! Time is a `ManualClock`; no test sleeps for a TTL.

mod support;

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::header::HeaderName;
use http::{Method, Request};
use tower_tiered_cache::{Cache, CacheBuilder, CacheMode, LogLevel, ManualClock};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

use support::*;

const HIT: &str = "tower-tiered-cache; hit; detail=l1";
const MISS_STORED: &str = "tower-tiered-cache; fwd=uri-miss; fwd-status=200; stored";

const ALICE: &str = "Bearer alice-token-5f1c";
const BOB: &str = "Bearer bob-token-9e2d";

fn builder(clock: &ManualClock) -> CacheBuilder {
    Cache::builder().clock(clock.clone())
}

/// A private client cache, partitioned by credentials.
fn partitioned(clock: &ManualClock) -> Cache {
    builder(clock)
        .mode(CacheMode::Private)
        .partition_by_credentials(true)
        .build()
        .unwrap()
}

/// Who a request is from, as the origin sees it: its credential headers
/// (`anon` without any).
fn who(req: &Request<()>) -> String {
    let creds: Vec<String> = ["authorization", "proxy-authorization", "cookie"]
        .iter()
        .flat_map(|n| req.headers().get_all(*n).iter())
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    if creds.is_empty() {
        "anon".to_owned()
    } else {
        creds.join("|")
    }
}

/// An origin that answers `GET`s with `cache_control` and a body naming
/// the caller and the call (`<who>#<n>`), and anything else with 204.
fn echo(cache_control: &'static str) -> (Origin, Log) {
    origin(move |n, req| {
        if req.method() == Method::GET {
            ok(cache_control, &format!("{}#{}", who(req), n + 1))
        } else {
            response(204, &[], "")
        }
    })
}

fn auth(token: &str) -> [(&str, &str); 1] {
    [("authorization", token)]
}

/// Sends a `GET` for `url` with `headers`: (`Cache-Status`, body).
async fn fetch(svc: &Svc, url: &str, headers: &[(&str, &str)]) -> (String, String) {
    let r = send(svc, get_with(url, headers)).await;
    let status = cache_status(&r);
    let b = body(r).await;
    (status, String::from_utf8(b.to_vec()).unwrap())
}

// ---------------------------------------------------------------------------
// (a) Private mode stores `private` responses
// ---------------------------------------------------------------------------

#[tokio::test]
async fn private_mode_stores_private_responses() {
    let clock = clock();
    let cache = builder(&clock).mode(CacheMode::Private).build().unwrap();
    let (origin, log) = echo("private, max-age=60");
    let svc = cached(&cache, origin);
    assert_eq!(
        fetch(&svc, URL, &[]).await,
        (MISS_STORED.into(), "anon#1".into())
    );
    clock.advance(secs(30));
    assert_eq!(fetch(&svc, URL, &[]).await, (HIT.into(), "anon#1".into()));
    assert_eq!(log.calls(), 1);

    // The same response in a shared cache is not stored.
    let shared = builder(&clock).build().unwrap();
    let (origin, log) = echo("private, max-age=60");
    let svc = cached(&shared, origin);
    let (status, _) = fetch(&svc, URL, &[]).await;
    assert_eq!(
        status,
        "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=private"
    );
    fetch(&svc, URL, &[]).await;
    assert_eq!(log.calls(), 2);
    assert_eq!(shared.stats().stores, 0);
}

// ---------------------------------------------------------------------------
// (b) Private mode without partitioning: credentials are not looked at
// ---------------------------------------------------------------------------

/// Today's behaviour, unchanged: a private cache takes everything it sees
/// to belong to one user. `Authorization` (and `Cookie`) are neither part
/// of the key nor a reason to bypass, so one user's `private` response
/// answers another user's request and an anonymous one alike. That is why
/// a client sending several users' credentials needs partitioning.
#[tokio::test]
async fn private_mode_without_partitioning_ignores_credentials() {
    let clock = clock();
    let cache = builder(&clock).mode(CacheMode::Private).build().unwrap();
    let (origin, log) = echo("private, max-age=60");
    let svc = cached(&cache, origin);
    let alice = format!("{ALICE}#1");
    assert_eq!(
        fetch(&svc, URL, &auth(ALICE)).await,
        (MISS_STORED.into(), alice.clone())
    );
    assert_eq!(
        fetch(&svc, URL, &auth(BOB)).await,
        (HIT.into(), alice.clone())
    );
    assert_eq!(fetch(&svc, URL, &[]).await, (HIT.into(), alice.clone()));
    assert_eq!(
        fetch(&svc, URL, &[("cookie", "session=bob")]).await,
        (HIT.into(), alice)
    );
    assert_eq!(log.calls(), 1);
    assert_eq!(cache.stats().l1_entries, 1);
}

// ---------------------------------------------------------------------------
// (c) Partitioning: one keyspace per set of credentials
// ---------------------------------------------------------------------------

#[tokio::test]
async fn partitioned_authorization_is_per_credentials() {
    let clock = clock();
    let cache = partitioned(&clock);
    let (origin, log) = echo("private, max-age=60");
    let svc = cached(&cache, origin);

    let a1 = format!("{ALICE}#1");
    assert_eq!(
        fetch(&svc, URL, &auth(ALICE)).await,
        (MISS_STORED.into(), a1.clone())
    );
    assert_eq!(
        fetch(&svc, URL, &auth(ALICE)).await,
        (HIT.into(), a1.clone())
    );
    // Bob misses and gets his own answer, never Alice's.
    let (status, b) = fetch(&svc, URL, &auth(BOB)).await;
    assert_eq!(status, MISS_STORED);
    assert_eq!(b, format!("{BOB}#2"));
    assert!(!b.contains(ALICE));
    assert_eq!(log.calls(), 2);
    // Both are hits from now on, each for its own answer.
    assert_eq!(fetch(&svc, URL, &auth(BOB)).await, (HIT.into(), b.clone()));
    assert_eq!(fetch(&svc, URL, &auth(ALICE)).await, (HIT.into(), a1));
    // Anonymous requests see neither.
    assert_eq!(
        fetch(&svc, URL, &[]).await,
        (MISS_STORED.into(), "anon#3".into())
    );
    // A credential that differs by one character is someone else.
    let (status, _) = fetch(&svc, URL, &auth("Bearer alice-token-5f1d")).await;
    assert_eq!(status, MISS_STORED);
    // So is the same value under another header.
    let (status, _) = fetch(&svc, URL, &[("proxy-authorization", ALICE)]).await;
    assert_eq!(status, MISS_STORED);
    assert_eq!(log.calls(), 5);
    assert_eq!(cache.stats().l1_entries, 5);
}

#[tokio::test]
async fn partitioned_cookies_are_per_cookie_set() {
    let clock = clock();
    let cache = partitioned(&clock);
    let (origin, log) = echo("private, max-age=60");
    let svc = cached(&cache, origin);

    let a = [("cookie", "session=a1")];
    let b = [("cookie", "session=b2")];
    assert_eq!(
        fetch(&svc, URL, &a).await,
        (MISS_STORED.into(), "session=a1#1".into())
    );
    assert_eq!(
        fetch(&svc, URL, &a).await,
        (HIT.into(), "session=a1#1".into())
    );
    let (status, body_b) = fetch(&svc, URL, &b).await;
    assert_eq!(
        (status.as_str(), body_b.as_str()),
        (MISS_STORED, "session=b2#2")
    );
    assert_eq!(
        fetch(&svc, URL, &b).await,
        (HIT.into(), "session=b2#2".into())
    );
    assert_eq!(log.calls(), 2);

    // Several cookie lines: their order and values both count.
    let ab = [("cookie", "x=1"), ("cookie", "y=2")];
    let ba = [("cookie", "y=2"), ("cookie", "x=1")];
    assert_eq!(fetch(&svc, URL, &ab).await.0, MISS_STORED);
    assert_eq!(fetch(&svc, URL, &ba).await.0, MISS_STORED);
    assert_eq!(fetch(&svc, URL, &ab).await.0, HIT);
    // A cookie plus an Authorization is a set of its own, too.
    let both = [("cookie", "session=a1"), ("authorization", ALICE)];
    let (status, body) = fetch(&svc, URL, &both).await;
    assert_eq!(status, MISS_STORED);
    assert_eq!(body, format!("{ALICE}|session=a1#5"));
    // Values are not confused across headers.
    let swapped = [("cookie", ALICE), ("authorization", "session=a1")];
    assert_eq!(fetch(&svc, URL, &swapped).await.0, MISS_STORED);
    assert_eq!(log.calls(), 6);
}

#[tokio::test]
async fn anonymous_requests_share_one_partition() {
    let clock = clock();
    let cache = partitioned(&clock);
    let (origin, log) = echo("private, max-age=60");
    let svc = cached(&cache, origin);
    assert_eq!(
        fetch(&svc, URL, &[]).await,
        (MISS_STORED.into(), "anon#1".into())
    );
    // Other headers do not make a partition.
    for headers in [
        &[][..],
        &[("accept", "text/plain")][..],
        &[("x-request-id", "42"), ("user-agent", "test")][..],
    ] {
        assert_eq!(
            fetch(&svc, URL, headers).await,
            (HIT.into(), "anon#1".into()),
            "{headers:?}"
        );
    }
    // A credentialed request does not see the anonymous entry, and does not
    // disturb it.
    assert_eq!(fetch(&svc, URL, &auth(ALICE)).await.0, MISS_STORED);
    assert_eq!(fetch(&svc, URL, &[]).await, (HIT.into(), "anon#1".into()));
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn partitions_have_their_own_variants() {
    let clock = clock();
    let cache = partitioned(&clock);
    let (origin, log) = origin(|n, req| {
        let lang = req
            .headers()
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap());
        response(
            200,
            &[
                ("cache-control", "private, max-age=60"),
                ("vary", "accept-language"),
            ],
            &format!("{}:{lang}#{}", who(req), n + 1),
        )
    });
    let svc = cached(&cache, origin);
    let alice_en = [("authorization", ALICE), ("accept-language", "en")];
    let alice_fr = [("authorization", ALICE), ("accept-language", "fr")];
    let bob_en = [("authorization", BOB), ("accept-language", "en")];
    assert_eq!(fetch(&svc, URL, &alice_en).await.0, MISS_STORED);
    let (status, _) = fetch(&svc, URL, &alice_fr).await;
    assert!(status.contains("fwd=vary-miss"), "{status}");
    // Bob's first request is a URL miss: Alice's variants are not his.
    let (status, body) = fetch(&svc, URL, &bob_en).await;
    assert!(status.contains("fwd=uri-miss"), "{status}");
    assert_eq!(body, format!("{BOB}:en#3"));
    assert_eq!(
        fetch(&svc, URL, &alice_en).await,
        (HIT.into(), format!("{ALICE}:en#1"))
    );
    assert_eq!(
        fetch(&svc, URL, &alice_fr).await,
        (HIT.into(), format!("{ALICE}:fr#2"))
    );
    assert_eq!(
        fetch(&svc, URL, &bob_en).await,
        (HIT.into(), format!("{BOB}:en#3"))
    );
    assert_eq!(log.calls(), 3);
}

/// Inside one partition, a request waiting on another variant's flight
/// gets its own variant: only the credential headers' values are pinned by
/// the partition (and stored as a placeholder); `Accept-Language` is kept
/// and compared.
#[tokio::test]
async fn a_waiter_for_another_variant_in_the_same_partition_gets_its_own() {
    let clock = clock();
    let cache = partitioned(&clock);
    let gate = Gate::new();
    let g = gate.clone();
    let (origin, log) = origin_fn(move |n, req: Request<()>| {
        let g = g.clone();
        let lang = req
            .headers()
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap())
            .to_owned();
        async move {
            g.pass().await;
            Ok::<_, Infallible>(response(
                200,
                &[
                    ("cache-control", "private, max-age=60"),
                    ("vary", "accept-language"),
                ],
                &format!("{lang}#{}", n + 1),
            ))
        }
    });
    let svc = cached(&cache, origin);
    let ask = |lang: &'static str| {
        let svc = svc.clone();
        tokio::spawn(async move {
            let h = [("authorization", ALICE), ("accept-language", lang)];
            body(send(&svc, get_with(URL, &h)).await).await
        })
    };
    let en = ask("en");
    assert!(eventually(|| log.calls() == 1).await);
    let fr = ask("fr");
    settle().await;
    // The French request waits on the English flight.
    assert_eq!(log.calls(), 1);
    gate.open();
    assert_eq!(&en.await.unwrap()[..], b"en#1");
    assert_eq!(&fr.await.unwrap()[..], b"fr#2");
    assert_eq!(log.calls(), 2);
}

#[tokio::test]
async fn concurrent_misses_coalesce_within_a_partition_only() {
    let clock = clock();
    let cache = partitioned(&clock);
    let gate = Gate::new();
    let g = gate.clone();
    let (origin, log) = origin_fn(move |n, req: Request<()>| {
        let g = g.clone();
        let body = format!("{}#{}", who(&req), n + 1);
        async move {
            g.pass().await;
            Ok::<_, Infallible>(ok("private, max-age=60", &body))
        }
    });
    let svc = cached(&cache, origin);
    let users = [Some(ALICE), Some(BOB), None];
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let svc = svc.clone();
            let user = users[i % 3];
            tokio::spawn(async move {
                let headers: Vec<(&str, &str)> =
                    user.map(|t| ("authorization", t)).into_iter().collect();
                let r = send(&svc, get_with(URL, &headers)).await;
                (user, String::from_utf8(body(r).await.to_vec()).unwrap())
            })
        })
        .collect();
    // One upstream call per partition, none shared across them.
    assert!(eventually(|| log.calls() == 3).await);
    settle().await;
    assert_eq!(log.calls(), 3);
    gate.open();
    for t in tasks {
        let (user, body) = t.await.unwrap();
        let who = user.unwrap_or("anon");
        assert!(body.starts_with(&format!("{who}#")), "{who} got {body}");
    }
    assert_eq!(cache.stats().coalesced, 27);
    assert_eq!(log.calls(), 3);
}

// ---------------------------------------------------------------------------
// (d) Readable keys and logs never carry the credentials
// ---------------------------------------------------------------------------

/// Records every string-ish field of every span and event.
#[derive(Clone, Default)]
struct Strings(Arc<Mutex<Vec<(String, String)>>>);

impl Strings {
    fn all(&self) -> Vec<(String, String)> {
        self.0.lock().unwrap().clone()
    }
}

struct Collect<'a>(&'a Mutex<Vec<(String, String)>>);

impl Visit for Collect<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .lock()
            .unwrap()
            .push((field.name().to_owned(), value.to_owned()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .lock()
            .unwrap()
            .push((field.name().to_owned(), format!("{value:?}")));
    }
}

impl<S: Subscriber> Layer<S> for Strings {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        attrs.record(&mut Collect(&self.0));
    }
    fn on_record(&self, _: &Id, values: &Record<'_>, _: Context<'_, S>) {
        values.record(&mut Collect(&self.0));
    }
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        event.record(&mut Collect(&self.0));
    }
}

#[tokio::test]
async fn readable_keys_never_show_credentials() {
    let strings = Strings::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(strings.clone()));
    let clock = clock();
    let cache = builder(&clock)
        .mode(CacheMode::Private)
        .partition_by_credentials(true)
        .log_level(LogLevel::Detailed)
        .build()
        .unwrap();
    let (origin, log) = echo("private, max-age=60");
    let svc = cached(&cache, origin);
    let cookie = "session=cookie-secret-77";
    let proxy = "Basic cHJveHk6c2VjcmV0";
    let headers = [
        ("authorization", ALICE),
        ("cookie", cookie),
        ("proxy-authorization", proxy),
    ];
    assert_eq!(fetch(&svc, URL, &headers).await.0, MISS_STORED);
    assert_eq!(fetch(&svc, URL, &headers).await.0, HIT);
    assert_eq!(fetch(&svc, URL, &[]).await.0, MISS_STORED);
    assert_eq!(log.calls(), 2);

    // The keys the spans and the detailed log show.
    let all = strings.all();
    let keys: Vec<&str> = all
        .iter()
        .filter(|(n, _)| n == "cache.key" || n == "key")
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(!keys.is_empty(), "no key was recorded: {all:?}");
    let partitioned: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| k.contains("credentials:"))
        .collect();
    assert!(!partitioned.is_empty(), "{keys:?}");
    for k in &partitioned {
        let (base, digest) = k.split_once("\ncredentials:").expect("a credentials line");
        assert_eq!(base, "GET http://example.com/resource");
        assert_eq!(digest.len(), 16, "{k:?}");
        assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()), "{k:?}");
    }
    assert!(
        keys.contains(&"GET http://example.com/resource"),
        "{keys:?}"
    );
    // No recorded field anywhere carries a credential.
    for secret in [ALICE, "alice-token", cookie, "cookie-secret", proxy] {
        for (name, value) in &all {
            assert!(!value.contains(secret), "{name} = {value:?} shows {secret}");
        }
    }

    // Keys made of the credentials name nothing: the entry is still there.
    for key in [
        format!("GET http://example.com/resource\ncredentials:{ALICE}"),
        format!("GET http://example.com/resource\nauthorization:{ALICE}"),
        format!("GET http://example.com/resource\ncookie:{cookie}"),
        // Nor does the displayed key, which only abbreviates the digest
        // (documented: use invalidate(req), a prefix, a tag or clear).
        partitioned[0].to_owned(),
    ] {
        assert!(!cache.invalidate_key(&key), "{key:?}");
    }
    assert_eq!(fetch(&svc, URL, &headers).await.0, HIT);
    // The anonymous key is the anonymous entry's, not the partition's.
    assert!(cache.invalidate_key("GET http://example.com/resource"));
    assert_eq!(fetch(&svc, URL, &headers).await.0, HIT);
    assert_eq!(log.calls(), 2);
}

// ---------------------------------------------------------------------------
// (e) Shared mode with partitioning
// ---------------------------------------------------------------------------

/// The rule in a shared cache: each credential set gets its own keyspace;
/// RFC 9111 §3.5 no longer holds back responses to `Authorization`
/// requests (they are stored, in the partition only), `private` responses
/// are still never stored, and shareable (`public`) answers to
/// credentialed requests are not shared either.
#[tokio::test]
async fn shared_mode_partitions_without_sharing() {
    let clock = clock();
    let cache = builder(&clock)
        .partition_by_credentials(true)
        .build()
        .unwrap();
    let (origin, log) = origin(|n, req| {
        let cc = match req.uri().path() {
            "/private" => "private, max-age=60",
            "/public" => "public, max-age=60",
            _ => "max-age=60",
        };
        ok(cc, &format!("{}#{}", who(req), n + 1))
    });
    let svc = cached(&cache, origin);
    let url = |p: &str| format!("http://example.com{p}");

    // max-age only: stored for Alice (not refused as `authorization`).
    let plain = url("/plain");
    assert_eq!(
        fetch(&svc, &plain, &auth(ALICE)).await,
        (MISS_STORED.into(), format!("{ALICE}#1"))
    );
    assert_eq!(
        fetch(&svc, &plain, &auth(ALICE)).await,
        (HIT.into(), format!("{ALICE}#1"))
    );
    let (status, body) = fetch(&svc, &plain, &auth(BOB)).await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        (MISS_STORED, &*format!("{BOB}#2"))
    );
    assert_eq!(fetch(&svc, &plain, &[]).await.1, "anon#3");
    assert_eq!(
        fetch(&svc, &plain, &[]).await,
        (HIT.into(), "anon#3".into())
    );
    // The anonymous entry does not answer Alice; hers still does.
    assert_eq!(
        fetch(&svc, &plain, &auth(ALICE)).await,
        (HIT.into(), format!("{ALICE}#1"))
    );
    assert_eq!(log.calls(), 3);

    // private: still never stored in a shared cache, partitioned or not
    // (hit-for-pass is remembered per partition as well).
    let private = url("/private");
    let not_stored = "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=private";
    assert_eq!(fetch(&svc, &private, &auth(ALICE)).await.0, not_stored);
    assert_eq!(
        fetch(&svc, &private, &auth(ALICE)).await.0,
        "tower-tiered-cache; fwd=uri-miss; detail=hit-for-pass"
    );
    assert_eq!(fetch(&svc, &private, &auth(BOB)).await.0, not_stored);
    assert_eq!(log.calls(), 6);
    assert_eq!(cache.stats().l1_entries, 3);

    // public: stored in Alice's partition, not shared with others.
    let public = url("/public");
    assert_eq!(fetch(&svc, &public, &auth(ALICE)).await.0, MISS_STORED);
    assert_eq!(fetch(&svc, &public, &auth(ALICE)).await.0, HIT);
    assert_eq!(fetch(&svc, &public, &[]).await.0, MISS_STORED);
    assert_eq!(fetch(&svc, &public, &auth(BOB)).await.0, MISS_STORED);
    assert_eq!(log.calls(), 9);

    // Cookies partition a shared cache too.
    assert_eq!(
        fetch(&svc, &plain, &[("cookie", "s=1")]).await.0,
        MISS_STORED
    );
    assert_eq!(fetch(&svc, &plain, &[("cookie", "s=1")]).await.0, HIT);
    assert_eq!(log.calls(), 10);
}

#[tokio::test]
async fn shared_mode_without_partitioning_is_unchanged() {
    let clock = clock();
    let cache = builder(&clock).build().unwrap();
    let (origin, log) = echo("max-age=60");
    let svc = cached(&cache, origin);
    let (status, _) = fetch(&svc, URL, &auth(ALICE)).await;
    assert_eq!(
        status,
        "tower-tiered-cache; fwd=uri-miss; fwd-status=200; detail=authorization"
    );
    // Cookies are ignored: one entry for everyone.
    assert_eq!(fetch(&svc, URL, &[("cookie", "s=1")]).await.0, MISS_STORED);
    assert_eq!(
        fetch(&svc, URL, &[("cookie", "s=2")]).await,
        (HIT.into(), "s=1#2".into())
    );
    assert_eq!(log.calls(), 2);
}

// ---------------------------------------------------------------------------
// Invalidation across partitions
// ---------------------------------------------------------------------------

#[tokio::test]
async fn invalidation_reaches_the_callers_partition_only() {
    let clock = clock();
    let cache = partitioned(&clock);
    let (origin, log) = origin(|n, req| match *req.method() {
        Method::GET => response(
            200,
            &[
                ("cache-control", "private, max-age=600"),
                ("surrogate-key", "res"),
            ],
            &format!("{}#{}", who(req), n + 1),
        ),
        _ => response(201, &[("location", "/other")], ""),
    });
    let svc = cached(&cache, origin);
    let other = "http://example.com/other";
    let users: [&[(&str, &str)]; 3] = [&auth(ALICE), &auth(BOB), &[]];
    let fill = |svc: Svc| async move {
        let mut statuses = Vec::new();
        for u in users {
            statuses.push(fetch(&svc, URL, u).await.0);
            statuses.push(fetch(&svc, other, u).await.0);
        }
        statuses
    };
    assert!(fill(svc.clone()).await.iter().all(|s| s == MISS_STORED));
    assert_eq!(cache.stats().l1_entries, 6);
    let hits = |svc: Svc| async move {
        let mut out = Vec::new();
        for u in users {
            out.push(fetch(&svc, URL, u).await.0 == HIT);
            out.push(fetch(&svc, other, u).await.0 == HIT);
        }
        out
    };

    // Alice's POST drops the URL and its Location from her partition only.
    let r = send(&svc, request(Method::POST, URL, &auth(ALICE))).await;
    assert_eq!(r.status(), 201);
    assert_eq!(cache.stats().invalidations, 2);
    assert_eq!(
        hits(svc.clone()).await,
        [false, false, true, true, true, true]
    );
    assert_eq!(log.calls(), 6 + 1 + 2);

    // Cache::invalidate: the partition of the request's credentials.
    assert!(cache.invalidate(&get_with(URL, &auth(BOB))));
    assert!(!cache.invalidate(&get_with(URL, &auth(BOB))));
    assert!(cache.invalidate(&get(URL)));
    assert_eq!(
        hits(svc.clone()).await,
        [true, true, false, true, false, true]
    );
    assert_eq!(cache.stats().l1_entries, 6);

    // A prefix reaches every partition.
    let out = cache.invalidate_prefix("/resource").await;
    assert_eq!(out.l1, 3);
    assert_eq!(
        hits(svc.clone()).await,
        [false, true, false, true, false, true]
    );
    // So do a tag and clear.
    let out = cache.invalidate_tag("res").await;
    assert_eq!(out.l1, 6);
    assert_eq!(cache.stats().l1_entries, 0);
    assert!(fill(svc.clone()).await.iter().all(|s| s == MISS_STORED));
    assert_eq!(cache.clear().await.l1, 6);
    assert!(fill(svc.clone()).await.iter().all(|s| s == MISS_STORED));
}

// ---------------------------------------------------------------------------
// (f) Many credentials, as many partitions
// ---------------------------------------------------------------------------

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A token of 1 to 40 URL-safe characters.
    fn token(&mut self) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let len = 1 + (self.next() % 40) as usize;
        (0..len)
            .map(|_| ALPHABET[(self.next() % ALPHABET.len() as u64) as usize] as char)
            .collect()
    }
}

#[tokio::test]
async fn fifty_random_credentials_make_fifty_partitions() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut tokens: Vec<String> = Vec::new();
    while tokens.len() < 50 {
        let t = rng.token();
        if !tokens.contains(&t) {
            tokens.push(t);
        }
    }
    // Near neighbours: one more character, one character changed.
    tokens[48] = format!("{}x", tokens[0]);
    tokens[49] = {
        let mut t = tokens[1].clone().into_bytes();
        t[0] = if t[0] == b'A' { b'B' } else { b'A' };
        String::from_utf8(t).unwrap()
    };
    assert_eq!(tokens.iter().collect::<HashSet<_>>().len(), 50);

    for header in ["authorization", "cookie"] {
        let clock = clock();
        let cache = partitioned(&clock);
        let (origin, log) = echo("private, max-age=60");
        let svc = cached(&cache, origin);
        let value = |t: &str| {
            if header == "cookie" {
                format!("session={t}")
            } else {
                format!("Bearer {t}")
            }
        };
        let mut bodies = HashSet::new();
        for (i, t) in tokens.iter().enumerate() {
            let v = value(t);
            let (status, body) = fetch(&svc, URL, &[(header, &v)]).await;
            assert_eq!(
                status, MISS_STORED,
                "{header} token {i} ({t}) hit another's entry"
            );
            assert_eq!(body, format!("{v}#{}", i + 1));
            bodies.insert(body);
        }
        assert_eq!(bodies.len(), 50);
        assert_eq!(log.calls(), 50);
        assert_eq!(cache.stats().l1_entries, 50);
        // Every token reads back its own answer.
        for (i, t) in tokens.iter().enumerate() {
            let v = value(t);
            assert_eq!(
                fetch(&svc, URL, &[(header, &v)]).await,
                (HIT.into(), format!("{v}#{}", i + 1)),
                "{header} token {i}"
            );
        }
        assert_eq!(log.calls(), 50);
    }
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

#[test]
fn partitioning_refuses_nonsensical_combinations() {
    let err = Cache::builder()
        .mode(CacheMode::Private)
        .partition_by_credentials(true)
        .share_authorized(true)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "partition_by_credentials");
    assert!(err.to_string().contains("share_authorized"), "{err}");
    for name in ["authorization", "proxy-authorization", "cookie"] {
        let err = Cache::builder()
            .partition_by_credentials(true)
            .key_header(HeaderName::from_static(name))
            .build()
            .unwrap_err();
        assert_eq!(err.setting(), "partition_by_credentials");
        assert!(err.to_string().contains(name), "{err}");
    }
    // Fine: both modes, other key headers, and the setting turned off again.
    for mode in [CacheMode::Private, CacheMode::Shared] {
        Cache::builder()
            .mode(mode)
            .partition_by_credentials(true)
            .key_header(HeaderName::from_static("x-tenant"))
            .build()
            .unwrap();
    }
    Cache::builder()
        .partition_by_credentials(false)
        .share_authorized(true)
        .key_header(HeaderName::from_static("cookie"))
        .build()
        .unwrap();
}

#[tokio::test]
async fn custom_keys_are_partitioned_too() {
    let clock = clock();
    let cache = builder(&clock)
        .mode(CacheMode::Private)
        .partition_by_credentials(true)
        .key_fn(|p| Some(p.uri.path().to_owned()))
        .build()
        .unwrap();
    let (origin, log) = echo("private, max-age=60");
    let svc = cached(&cache, origin);
    assert_eq!(fetch(&svc, URL, &auth(ALICE)).await.0, MISS_STORED);
    assert_eq!(fetch(&svc, URL, &auth(BOB)).await.0, MISS_STORED);
    assert_eq!(fetch(&svc, URL, &[]).await.0, MISS_STORED);
    assert_eq!(
        fetch(&svc, URL, &auth(ALICE)).await,
        (HIT.into(), format!("{ALICE}#1"))
    );
    // The function's key still names the anonymous entry.
    assert!(cache.invalidate_key("/resource"));
    assert_eq!(fetch(&svc, URL, &auth(BOB)).await.0, HIT);
    assert_eq!(log.calls(), 3);
}
