//! JWT verification per token, HS256 / RS256 / ES256 / EdDSA:
//! - `jwt_cold`: the full check (signature, exp/nbf, iss, aud) with the
//!   token cache disabled (`cache_capacity: 0`), what a first-seen token costs;
//! - `jwt_cached`: `verify` on a token already in the cache (SHA-256 of the
//!   token, a map lookup, the time checks).
//!
//! Keys are the throw-away ones of `filters/tests/fixtures/`; tokens are
//! minted here at setup with jsonwebtoken, exp in 2100. `pyjwt_bench.py`
//! times PyJWT on the same keys and claims; `jwt_ratio.sh` runs both.
//!
//! Run: `cargo bench -p asgi-gate-benches --bench jwt` (add `-- jwt_cold` for
//! one group, `-- --quick` for a short run).

mod common;

use std::hint::black_box;

use asgi_gate_benches::{fixture, unix_now, FAR_EXP, HS256_SECRET};
use asgi_gate_filters::jwt::{self, KeySource, PolicyParams};
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

struct Case {
    name: &'static str,
    alg: Algorithm,
    signing: EncodingKey,
    verifying: KeySource,
}

fn cases() -> Vec<Case> {
    let pem = |name| KeySource::PublicKeyPem(fixture(name));
    vec![
        Case {
            name: "HS256",
            alg: Algorithm::HS256,
            signing: EncodingKey::from_secret(HS256_SECRET),
            verifying: KeySource::Secret(HS256_SECRET.to_vec()),
        },
        Case {
            name: "RS256",
            alg: Algorithm::RS256,
            signing: EncodingKey::from_rsa_pem(&fixture("rsa_private.pem")).unwrap(),
            verifying: pem("rsa_public.pem"),
        },
        Case {
            name: "ES256",
            alg: Algorithm::ES256,
            signing: EncodingKey::from_ec_pem(&fixture("ec_private.pem")).unwrap(),
            verifying: pem("ec_public.pem"),
        },
        Case {
            name: "EdDSA",
            alg: Algorithm::EdDSA,
            signing: EncodingKey::from_ed_pem(&fixture("ed_private.pem")).unwrap(),
            verifying: pem("ed_public.pem"),
        },
    ]
}

/// The claims every bench token carries (the same in `pyjwt_bench.py`).
fn claims() -> serde_json::Value {
    serde_json::json!({
        "sub": "user-42",
        "iss": "https://issuer.example",
        "aud": "api",
        "iat": 1_700_000_000u64,
        "exp": FAR_EXP,
        "jti": "0f8fad5b-d9cb-469f-a165-70867728950e",
        "scope": "read write",
    })
}

fn policy(case: &Case, cache_capacity: usize) -> jwt::Policy {
    let mut p = PolicyParams::new(vec![case.alg], case.verifying.clone());
    p.issuer = Some("https://issuer.example".into());
    p.audience = vec!["api".into()];
    p.cache_capacity = cache_capacity;
    jwt::Policy::new(p).expect("bench policy")
}

fn bench_jwt(c: &mut Criterion) {
    let now = unix_now();
    let cases = cases();
    let tokens: Vec<String> = cases
        .iter()
        .map(|case| encode(&Header::new(case.alg), &claims(), &case.signing).unwrap())
        .collect();

    let mut cold = c.benchmark_group("jwt_cold");
    for (case, token) in cases.iter().zip(&tokens) {
        let policy = policy(case, 0);
        policy.verify(token, now).expect("token verifies");
        cold.bench_function(case.name, |b| {
            b.iter(|| policy.verify(black_box(token), black_box(now)).unwrap())
        });
    }
    cold.finish();

    let mut cached = c.benchmark_group("jwt_cached");
    for (case, token) in cases.iter().zip(&tokens) {
        let policy = policy(case, 10_000);
        policy.verify(token, now).expect("token verifies");
        assert_eq!(policy.cache().len(), 1, "cache warmed");
        cached.bench_function(case.name, |b| {
            b.iter(|| policy.verify(black_box(token), black_box(now)).unwrap())
        });
    }
    cached.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = bench_jwt
}
criterion_main!(benches);
