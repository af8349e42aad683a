//! One rate-limit `check` on the production (quanta) clock:
//! - `1_key`: a single bucket, allowed (the common path) and refused (one
//!   more clock read to compute the wait);
//! - `1M_keys`: 1 M live buckets, a random key each iteration (cache
//!   misses, like many clients) and one hot key among them.
//!
//! The limit is high enough that every allowed-path check is allowed.
//! Target (issue 6): check < 200 ns at 1 M keys.
//! Run: `cargo bench -p asgi-gate-benches --bench ratelimit`.

mod common;

use std::hint::black_box;
use std::time::Duration;

use asgi_gate_filters::ratelimit::{Key, KeyKind, LimitParams, RateLimit};
use criterion::{criterion_group, criterion_main, Criterion};

const KEYS: u32 = 1_000_000;

fn limit(count: u32, per_secs: u64) -> RateLimit {
    let p = LimitParams::new(KeyKind::ClientIp, count, Duration::from_secs(per_secs));
    RateLimit::new("bench", p).unwrap()
}

/// A client IPv4 key; spread over 10.0.0.0/8 and beyond.
fn key(i: u32) -> Key {
    Key::V4(0x0a00_0000 + i)
}

fn bench_ratelimit(c: &mut Criterion) {
    let mut g = c.benchmark_group("ratelimit");

    let one = limit(1_000_000_000, 1);
    g.bench_function("1_key_allowed", |b| {
        b.iter(|| one.check(black_box(&key(1))).unwrap())
    });
    // One request an hour: stays refused for the whole run.
    let tight = limit(1, 3600);
    tight.check(&key(1)).unwrap();
    g.bench_function("1_key_refused", |b| {
        b.iter(|| tight.check(black_box(&key(1))).unwrap_err())
    });

    let many = limit(1_000_000_000, 1);
    for i in 0..KEYS {
        many.check(&key(i)).unwrap();
    }
    assert_eq!(many.len(), KEYS as usize);
    let mut rng = fastrand::Rng::with_seed(6);
    g.bench_function("1M_keys_random", |b| {
        b.iter(|| many.check(black_box(&key(rng.u32(..KEYS)))).unwrap())
    });
    g.bench_function("1M_keys_hot", |b| {
        b.iter(|| many.check(black_box(&key(12_345))).unwrap())
    });
    g.finish();
    assert_eq!(many.len(), KEYS as usize, "no key added or dropped");
    assert_eq!(many.overflow_checks(), 0);
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_ratelimit
}
criterion_main!(benches);
