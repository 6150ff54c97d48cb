//! Heap allocations (and bytes) per call on the hit and pass paths, side by
//! side with the bare origin: the same sides, requests and cache as
//! `benches/hit_path.rs` (`support::hit_and_pass`).
//!
//! A binary of its own because counting needs a global allocator that
//! counts (`stats_alloc`, which wraps `std::alloc::System` with atomic
//! counters: the crate forbids `unsafe_code`, so the bench cannot implement
//! `GlobalAlloc` itself), and that allocator would slow every timed call
//! in `hit_path`. Requests are built and responses dropped outside the
//! counted region, 10 000 calls per side after 100 to warm thread-locals and
//! lazily built tables.
//!
//! Run with `cargo bench --bench allocs`.

use std::convert::Infallible;
use std::task::Waker;

use http::{Request, Response};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::Service;

mod support;

use support::{call_once, current_thread_runtime, hit_and_pass, noop_waker, HIT_URI, PASS_URI};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const CALLS: usize = 10_000;

/// Requests with no body.
type Proto = support::Proto<()>;

/// Heap allocations (including reallocations) and bytes per call.
fn per_call<S, B>(svc: &mut S, proto: &Proto, waker: &Waker) -> (f64, f64)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    for _ in 0..100 {
        drop(call_once(svc, proto.make(), waker));
    }
    let reqs = proto.batch(CALLS);
    let mut out = Vec::with_capacity(CALLS);
    let region = Region::new(GLOBAL);
    for req in reqs {
        out.push(call_once(svc, req, waker));
    }
    let change = region.change();
    drop(out);
    let n = CALLS as f64;
    (
        (change.allocations + change.reallocations) as f64 / n,
        change.bytes_allocated as f64 / n,
    )
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is ignored.
    let rt = current_thread_runtime();
    let _enter = rt.enter();
    let waker = noop_waker();
    let (hit, pass) = (Proto::new(HIT_URI), Proto::new(PASS_URI));
    let (mut bare, mut cached, cache) = hit_and_pass(&rt, &waker);
    println!(
        "{:<10} {:>12} {:>12}   (per call, over {CALLS} calls)",
        "side", "allocations", "bytes"
    );
    for (name, svc_is_cached, proto) in [
        ("bare", false, &hit),
        ("l1_hit", true, &hit),
        ("pass_bare", false, &pass),
        ("pass", true, &pass),
    ] {
        let (a, b) = if svc_is_cached {
            per_call(&mut cached, proto, &waker)
        } else {
            per_call(&mut bare, proto, &waker)
        };
        println!("{name:<10} {a:>12.2} {b:>12.0}");
    }
    // Every counted hit was a fresh L1 hit.
    assert_eq!(cache.stats().hits_l1, 1 + 100 + CALLS as u64);
}
