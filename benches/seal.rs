//! What encryption at rest (feature `l2-encryption`) costs per L2 value:
//! sealing (XChaCha20-Poly1305 with a fresh random nonce from the
//! operating system) and opening, on 1 KiB and 64 KiB values, beside
//! copying the same bytes (what the clear path does at most).
//!
//! The sealing code is crate-private, so this bench compiles
//! `src/store/seal.rs` into itself with `#[path]` (it uses no other crate
//! module).
//!
//! Run with `cargo bench --features l2-encryption --bench seal`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

#[path = "../src/store/seal.rs"]
#[allow(dead_code, unreachable_pub)]
mod seal;

const KEYS: &str = "k1:8f1c0a2b9d7e6f5a4c3b2a19087f6e5d4c3b2a1908f7e6d5c4b3a29180f7e6d5";
/// A Redis key as the L2 tier names one (the value's context).
const CONTEXT: &[u8] = b"ttc:1:{0123456789abcdef0123456789abcdef}";

fn bench(c: &mut Criterion) {
    let keys = seal::L2Keys::parse(KEYS).unwrap();
    let mut group = c.benchmark_group("seal");
    for size in [1024usize, 64 * 1024] {
        let plain: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let sealed = keys.seal(CONTEXT, &plain).unwrap();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("copy", size), &plain, |b, p| {
            b.iter(|| Bytes::copy_from_slice(black_box(p)))
        });
        group.bench_with_input(BenchmarkId::new("seal", size), &plain, |b, p| {
            b.iter(|| keys.seal(CONTEXT, black_box(p)).unwrap())
        });
        // As a read does: the value arrives in a buffer of its own, opened
        // in place.
        group.bench_with_input(BenchmarkId::new("open", size), &sealed, |b, s| {
            b.iter_batched(
                || Bytes::from(s.to_vec()),
                |v| keys.open(CONTEXT, v).unwrap(),
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
