//! A fixed number of calls on one path, for instruction counts under
//! callgrind (which, unlike timings, repeat exactly on a noisy machine).
//!
//! The same request, origin and cache as `benches/hit_path.rs`: `hit` is
//! the fresh L1 hit, `bare` the origin alone with the same request, `pass`
//! a request to a bypassed route, `passbare` the origin alone with it. Each
//! call (poll once, drop the response) is in `one`, so callgrind can count
//! only the calls:
//!
//! ```sh
//! cargo build --release --example profile_hit
//! valgrind --tool=callgrind --toggle-collect='profile_hit::one*' \
//!     target/release/examples/profile_hit hit 20000
//! ```
//!
//! and divide `Collected` by the number of calls. BENCHMARKS.md has the
//! figures.
#[path = "../benches/support/mod.rs"]
mod support;
use http_body_util::BodyExt;
use std::hint::black_box;
use tower::{Layer, ServiceExt};
use tower_tiered_cache::{Cache, CacheLayer, Route};
fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "hit".into());
    let n: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    assert!(
        ["hit", "bare", "pass", "passbare"].contains(&mode.as_str()),
        "mode is one of hit, bare, pass, passbare"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _e = rt.enter();
    let waker = support::noop_waker();
    let buf = support::body_buffer();
    let hit = support::Proto::<()>::new("http://example.com/api/item?id=42");
    let pass = support::Proto::<()>::new("http://example.com/live/item?id=42");
    let cache = Cache::builder()
        .route(Route::prefix("/live").bypass())
        .build()
        .unwrap();
    let mut bare = support::origin::<http::Request<()>>(buf.clone());
    let mut cached =
        CacheLayer::new(cache.clone()).layer(support::origin::<http::Request<()>>(buf.clone()));
    rt.block_on(async {
        let resp = cached.clone().oneshot(hit.make()).await.unwrap();
        resp.into_body().collect().await.unwrap();
    });
    // The paths are what they say.
    let status = |r: http::Response<_>| r.headers()["cache-status"].clone();
    assert_eq!(
        status(support::call_once(&mut cached, hit.make(), &waker)),
        "tower-tiered-cache; hit; detail=l1"
    );
    assert_eq!(
        status(support::call_once(&mut cached, pass.make(), &waker)),
        "tower-tiered-cache; fwd=bypass"
    );
    let reqs: Vec<_> = (0..n)
        .map(|_| {
            if mode.starts_with("pass") {
                pass.make()
            } else {
                hit.make()
            }
        })
        .collect();
    let through = mode == "hit" || mode == "pass";
    for r in reqs {
        if through {
            one(&mut cached, r, &waker);
        } else {
            one(&mut bare, r, &waker);
        }
    }
}

/// One call, polled once, its response dropped.
#[inline(never)]
fn one<S, B>(svc: &mut S, r: http::Request<()>, waker: &std::task::Waker)
where
    S: tower::Service<http::Request<()>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
{
    drop(black_box(support::call_once(svc, r, waker)));
}
