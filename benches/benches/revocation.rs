//! Revocation list at 1 M live entries (36-char UUID-like keys):
//! - `is_revoked` hit (a random revoked key) and miss (a random unknown key),
//!   both drawn from pools of 64 Ki fresh key copies, so the probe key costs
//!   alike (a request's `jti` was just parsed) and the map is what misses cache;
//! - `check_token` for verified claims with a `jti` (a plain lookup) and
//!   without one (the SHA-256 of the token is the key, so a hash first);
//! - `revoke` of a new key into the full list (each timed batch is swept
//!   away afterwards, untimed, so the list stays at 1 M).
//!
//! Target (issue 4): lookup < 1 µs at 1 M entries.
//! Run: `cargo bench -p asgi-gate-benches --bench revocation`.

mod common;

use std::hint::black_box;
use std::time::Instant;

use asgi_gate_benches::{unix_now, uuid_like, FAR_EXP, HS256_SECRET};
use asgi_gate_filters::jwt::{self, revocation_key, KeySource, PolicyParams};
use asgi_gate_filters::revocation::RevocationList;
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

const ENTRIES: usize = 1_000_000;
const POOL: usize = 65_536;

fn bench_revocation(c: &mut Criterion) {
    let now = unix_now();
    let live_until = now + 3600;
    let mut rng = fastrand::Rng::with_seed(4);
    let list = RevocationList::new();
    let revoked: Vec<String> = (0..ENTRIES).map(|_| uuid_like(&mut rng)).collect();
    for key in &revoked {
        list.revoke(key, live_until, now);
    }
    assert_eq!(list.len(), ENTRIES);
    let hits: Vec<String> = (0..POOL)
        .map(|_| revoked[rng.usize(..ENTRIES)].clone())
        .collect();
    let unknown: Vec<String> = (0..POOL).map(|_| uuid_like(&mut rng)).collect();

    let mut g = c.benchmark_group("revocation_1M");
    g.bench_function("is_revoked_hit", |b| {
        b.iter(|| {
            let key = &hits[rng.usize(..POOL)];
            assert!(list.is_revoked(black_box(key), now));
        })
    });
    g.bench_function("is_revoked_miss", |b| {
        b.iter(|| {
            let key = &unknown[rng.usize(..POOL)];
            assert!(!list.is_revoked(black_box(key), now));
        })
    });

    // Verified claims to hand to check_token, one token with a revoked jti
    // and one without a jti whose hash key is revoked.
    let policy = jwt::Policy::new(PolicyParams::new(
        vec![Algorithm::HS256],
        KeySource::Secret(HS256_SECRET.to_vec()),
    ))
    .unwrap();
    let mint = |claims: serde_json::Value| {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(HS256_SECRET),
        )
        .unwrap()
    };
    let with_jti = mint(serde_json::json!({"sub": "u", "exp": FAR_EXP, "jti": revoked[7]}));
    let with_jti_claims = policy.verify(&with_jti, now).unwrap();
    let no_jti = mint(serde_json::json!({"sub": "u", "exp": FAR_EXP}));
    let no_jti_claims = policy.verify(&no_jti, now).unwrap();
    list.revoke(&revocation_key(&no_jti_claims, &no_jti), live_until, now);
    g.bench_function("check_token_jti", |b| {
        b.iter(|| {
            let r = list.check_token(black_box(&with_jti_claims), &with_jti, now);
            assert!(r.is_err());
        })
    });
    g.bench_function("check_token_hash", |b| {
        b.iter(|| {
            let r = list.check_token(black_box(&no_jti_claims), &no_jti, now);
            assert!(r.is_err());
        })
    });

    // New keys expire at now + 1, the 1 M base entries much later: sweeping
    // at now + 1 removes exactly the batch.
    g.bench_function("revoke_insert", |b| {
        b.iter_custom(|iters| {
            let keys: Vec<String> = (0..iters).map(|_| uuid_like(&mut rng)).collect();
            let start = Instant::now();
            for key in &keys {
                black_box(list.revoke(key, now + 1, now));
            }
            let took = start.elapsed();
            list.sweep(now + 1);
            took
        })
    });
    g.finish();
    assert_eq!(list.len(), ENTRIES + 1);
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_revocation
}
criterion_main!(benches);
