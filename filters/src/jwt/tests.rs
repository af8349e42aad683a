//! Policy-level tests: tokens minted here with the committed fixture keys
//! (filters/tests/fixtures, see the README there), verified with an injected
//! clock.

use super::*;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const RSA_PRIVATE: &str = include_str!("../../tests/fixtures/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("../../tests/fixtures/rsa_public.pem");
const EC_PRIVATE: &str = include_str!("../../tests/fixtures/ec_private.pem");
const EC_PUBLIC: &str = include_str!("../../tests/fixtures/ec_public.pem");
const ED_PRIVATE: &str = include_str!("../../tests/fixtures/ed_private.pem");
const ED_PUBLIC: &str = include_str!("../../tests/fixtures/ed_public.pem");
const JWKS: &str = include_str!("../../tests/fixtures/jwks.json");

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const NOW: u64 = 1_700_000_000;

fn hs_policy(algs: &[Algorithm]) -> PolicyParams {
    PolicyParams::new(algs.to_vec(), KeySource::Secret(SECRET.to_vec()))
}

fn policy(p: PolicyParams) -> Policy {
    Policy::new(p).unwrap()
}

fn mint(
    alg: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    claims: &serde_json::Value,
) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    encode(&h, claims, key).unwrap()
}

fn hs(alg: Algorithm, claims: &serde_json::Value) -> String {
    mint(alg, None, &EncodingKey::from_secret(SECRET), claims)
}

/// `msg` (header.payload, whatever they hold) with its HS256 signature.
fn signed_hs256(msg: &str) -> String {
    let key = EncodingKey::from_secret(SECRET);
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &key, Algorithm::HS256).unwrap();
    format!("{msg}.{sig}")
}

fn valid_claims() -> serde_json::Value {
    json!({"sub": "user-1", "exp": NOW + 600, "iat": NOW, "jti": "j-1"})
}

/// base64url of a JSON value, for hand-made tokens.
fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn hs256_384_512_valid() {
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let p = policy(hs_policy(&[alg]));
        let c = p.verify(&hs(alg, &valid_claims()), NOW).unwrap();
        assert_eq!(c.sub(), Some("user-1"));
        assert_eq!(c.exp(), NOW + 600);
    }
}

#[test]
fn hs_key_is_the_one_of_the_header_alg() {
    // One secret, three precomputed HMAC keys: each label verifies with its
    // own digest (a mix-up would fail on the tag length), and an HS256 MAC
    // under another label does not pass.
    let all = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
    let p = policy(hs_policy(&all));
    let t256 = hs(Algorithm::HS256, &valid_claims());
    let (_, rest) = t256.split_once('.').unwrap();
    for (alg, name) in [(Algorithm::HS384, "HS384"), (Algorithm::HS512, "HS512")] {
        let relabelled = format!("{}.{rest}", b64(&json!({"alg": name, "typ": "JWT"})));
        assert_eq!(
            p.verify(&relabelled, NOW).unwrap_err(),
            AuthError::BadSignature
        );
        assert!(p.verify(&hs(alg, &valid_claims()), NOW).is_ok());
    }
}

#[test]
fn alg_not_in_list_refused() {
    let p = policy(hs_policy(&[Algorithm::HS256]));
    let t = hs(Algorithm::HS512, &valid_claims());
    assert_eq!(
        p.verify(&t, NOW).unwrap_err(),
        AuthError::AlgorithmNotAllowed
    );
}

#[test]
fn alg_none_refused() {
    let p = policy(hs_policy(&[Algorithm::HS256]));
    for alg in ["none", "None", "NONE", ""] {
        let t = format!(
            "{}.{}.",
            b64(&json!({"alg": alg, "typ": "JWT"})),
            b64(&valid_claims())
        );
        assert_eq!(
            p.verify(&t, NOW).unwrap_err(),
            AuthError::AlgorithmNotAllowed,
            "{alg}"
        );
        let t = format!("{t}c2ln");
        assert_eq!(
            p.verify(&t, NOW).unwrap_err(),
            AuthError::AlgorithmNotAllowed,
            "{alg}"
        );
    }
}

#[test]
fn expired_with_and_without_leeway() {
    let claims = json!({"exp": NOW - 10});
    let t = hs(Algorithm::HS256, &claims);
    let strict = policy(hs_policy(&[Algorithm::HS256]));
    assert_eq!(strict.verify(&t, NOW).unwrap_err(), AuthError::Expired);
    let mut p = hs_policy(&[Algorithm::HS256]);
    p.leeway = Duration::from_secs(30);
    let lenient = policy(p);
    assert!(lenient.verify(&t, NOW).is_ok());
    assert_eq!(
        lenient.verify(&t, NOW + 20).unwrap_err(),
        AuthError::Expired
    );
}

#[test]
fn exp_required() {
    let p = policy(hs_policy(&[Algorithm::HS256]));
    let t = hs(Algorithm::HS256, &json!({"sub": "x"}));
    assert_eq!(p.verify(&t, NOW).unwrap_err(), AuthError::MissingExpiry);
}

#[test]
fn nbf_in_future() {
    let t = hs(
        Algorithm::HS256,
        &json!({"exp": NOW + 600, "nbf": NOW + 60}),
    );
    let p = policy(hs_policy(&[Algorithm::HS256]));
    assert_eq!(p.verify(&t, NOW).unwrap_err(), AuthError::NotYetValid);
    assert!(p.verify(&t, NOW + 60).is_ok());
    let mut pp = hs_policy(&[Algorithm::HS256]);
    pp.leeway = Duration::from_secs(60);
    assert!(policy(pp).verify(&t, NOW).is_ok());
}

#[test]
fn issuer_and_audience() {
    let mut pp = hs_policy(&[Algorithm::HS256]);
    pp.issuer = Some("https://issuer.example".into());
    pp.audience = vec!["my-api".into(), "other-api".into()];
    let p = policy(pp);
    let base = |extra: serde_json::Value| {
        let mut c = json!({"exp": NOW + 600});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        hs(Algorithm::HS256, &c)
    };
    let ok1 = base(json!({"iss": "https://issuer.example", "aud": "my-api"}));
    let ok2 = base(json!({"iss": "https://issuer.example", "aud": ["x", "other-api"]}));
    assert!(p.verify(&ok1, NOW).is_ok());
    assert!(p.verify(&ok2, NOW).is_ok());
    let bad_iss = base(json!({"iss": "https://evil.example", "aud": "my-api"}));
    assert_eq!(p.verify(&bad_iss, NOW).unwrap_err(), AuthError::WrongIssuer);
    let no_iss = base(json!({"aud": "my-api"}));
    assert_eq!(p.verify(&no_iss, NOW).unwrap_err(), AuthError::WrongIssuer);
    let bad_aud = base(json!({"iss": "https://issuer.example", "aud": ["x", "y"]}));
    assert_eq!(
        p.verify(&bad_aud, NOW).unwrap_err(),
        AuthError::WrongAudience
    );
    let no_aud = base(json!({"iss": "https://issuer.example"}));
    assert_eq!(
        p.verify(&no_aud, NOW).unwrap_err(),
        AuthError::WrongAudience
    );
    let num_aud = base(json!({"iss": "https://issuer.example", "aud": 5}));
    assert_eq!(
        p.verify(&num_aud, NOW).unwrap_err(),
        AuthError::WrongAudience
    );
}

#[test]
fn tampered_signature_and_payload() {
    let p = policy(hs_policy(&[Algorithm::HS256]));
    let t = hs(Algorithm::HS256, &valid_claims());
    let (msg, sig) = t.rsplit_once('.').unwrap();
    let mut sig = sig.to_string();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    sig.replace_range(0..1, flipped);
    assert_eq!(
        p.verify(&format!("{msg}.{sig}"), NOW).unwrap_err(),
        AuthError::BadSignature
    );
    // Someone else's payload with the original signature.
    let (header, _) = msg.split_once('.').unwrap();
    let forged = json!({"sub": "admin", "exp": NOW + 600});
    let sig = t.rsplit_once('.').unwrap().1;
    assert_eq!(
        p.verify(&format!("{header}.{}.{sig}", b64(&forged)), NOW)
            .unwrap_err(),
        AuthError::BadSignature
    );
    // Signed with another secret.
    let other = mint(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(&[7u8; 32]),
        &valid_claims(),
    );
    assert_eq!(p.verify(&other, NOW).unwrap_err(), AuthError::BadSignature);
}

#[test]
fn malformed_tokens_never_panic() {
    let p = policy(hs_policy(&[Algorithm::HS256]));
    let good = hs(Algorithm::HS256, &valid_claims());
    let (h, rest) = good.split_once('.').unwrap();
    let cases = [
        String::new(),
        ".".into(),
        "..".into(),
        "...".into(),
        "abc".into(),
        "a.b".into(),
        "a.b.c.d".into(),
        "!!!.@@@.###".into(),
        format!("{h}==.{rest}"),
        format!("{h}.{rest}.extra"),
        format!("{}.{rest}", b64(&json!("not an object"))),
        format!("{}.{rest}", b64(&json!({"alg": 256}))),
        format!("{}.{rest}", b64(&json!({"typ": "JWT"}))),
        format!("{}.{rest}", URL_SAFE_NO_PAD.encode(b"\xff\xfe{")),
        "\u{e9}\u{e9}.\u{e9}.\u{e9}".into(),
        format!("{h}.{}.sig", URL_SAFE_NO_PAD.encode("[".repeat(4000))),
    ];
    for t in &cases {
        let err = p.verify(t, NOW).unwrap_err();
        assert_eq!(err.status(), 401, "{t:?} -> {err:?}");
        assert!(!err.description().contains(t.as_str()) || t.is_empty());
    }
    // Payload that is not JSON but correctly signed still fails cleanly.
    let msg = format!("{h}.{}", URL_SAFE_NO_PAD.encode(b"{{{{"));
    assert!(matches!(
        p.verify(&signed_hs256(&msg), NOW),
        Err(AuthError::Malformed(_))
    ));
    // Deeply nested JSON, correctly signed: bounded, no stack overflow.
    let msg = format!("{h}.{}", URL_SAFE_NO_PAD.encode("[".repeat(5000)));
    assert!(matches!(
        p.verify(&signed_hs256(&msg), NOW),
        Err(AuthError::Malformed(_))
    ));
}

#[test]
fn crit_header_refused() {
    let p = policy(hs_policy(&[Algorithm::HS256]));
    let msg = format!(
        "{}.{}",
        b64(&json!({"alg": "HS256", "crit": ["b64"], "b64": false})),
        b64(&valid_claims())
    );
    assert!(matches!(
        p.verify(&signed_hs256(&msg), NOW),
        Err(AuthError::Malformed(_))
    ));
}

#[test]
fn token_over_8_kib_refused() {
    let p = policy(hs_policy(&[Algorithm::HS256]));
    let big = json!({"exp": NOW + 600, "pad": "x".repeat(9 * 1024)});
    let t = hs(Algorithm::HS256, &big);
    assert!(t.len() > MAX_TOKEN_BYTES);
    assert_eq!(p.verify(&t, NOW).unwrap_err(), AuthError::TooLarge);
    assert_eq!(p.verify_uncached(&t, NOW).unwrap_err(), AuthError::TooLarge);
    assert_eq!(
        p.verify_for_revocation(&t).unwrap_err(),
        AuthError::TooLarge
    );
}

#[test]
fn rs256_with_pem() {
    let p = policy(PolicyParams::new(
        vec![Algorithm::RS256],
        KeySource::PublicKeyPem(RSA_PUBLIC.as_bytes().to_vec()),
    ));
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let t = mint(Algorithm::RS256, None, &key, &valid_claims());
    assert_eq!(p.verify(&t, NOW).unwrap().jti(), Some("j-1"));
    // Same key, PS256 not in the list.
    let t = mint(Algorithm::PS256, None, &key, &valid_claims());
    assert_eq!(
        p.verify(&t, NOW).unwrap_err(),
        AuthError::AlgorithmNotAllowed
    );
}

#[test]
fn algorithm_confusion_hs256_signed_with_rsa_public_pem() {
    let p = policy(PolicyParams::new(
        vec![Algorithm::RS256],
        KeySource::PublicKeyPem(RSA_PUBLIC.as_bytes().to_vec()),
    ));
    let t = mint(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
        &valid_claims(),
    );
    assert_eq!(
        p.verify(&t, NOW).unwrap_err(),
        AuthError::AlgorithmNotAllowed
    );
    // And a policy may not list HS256 beside RS256 to begin with.
    let mixed = PolicyParams::new(
        vec![Algorithm::RS256, Algorithm::HS256],
        KeySource::PublicKeyPem(RSA_PUBLIC.as_bytes().to_vec()),
    );
    assert_eq!(Policy::new(mixed).unwrap_err(), PolicyError::MixedHmac);
}

#[test]
fn ec_and_ed_pem_keys() {
    let p = policy(PolicyParams::new(
        vec![Algorithm::ES256],
        KeySource::PublicKeyPem(EC_PUBLIC.as_bytes().to_vec()),
    ));
    let t = mint(
        Algorithm::ES256,
        None,
        &EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap(),
        &valid_claims(),
    );
    assert!(p.verify(&t, NOW).is_ok());
    let p = policy(PolicyParams::new(
        vec![Algorithm::EdDSA],
        KeySource::PublicKeyPem(ED_PUBLIC.as_bytes().to_vec()),
    ));
    let t = mint(
        Algorithm::EdDSA,
        None,
        &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
        &valid_claims(),
    );
    assert!(p.verify(&t, NOW).is_ok());
}

#[test]
fn every_asymmetric_algorithm_with_preparsed_keys() {
    // One RSA PEM key serves RS256/384/512 and PS256/384/512.
    let rsa_algs = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ];
    let p = policy(PolicyParams::new(
        rsa_algs.to_vec(),
        KeySource::PublicKeyPem(RSA_PUBLIC.as_bytes().to_vec()),
    ));
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    for alg in rsa_algs {
        let t = mint(alg, None, &rsa, &valid_claims());
        assert!(p.verify_uncached(&t, NOW).is_ok(), "{alg:?}");
        // The signature of one algorithm does not pass as another's.
        let (head, sig) = t.rsplit_once('.').unwrap();
        let other = if alg == Algorithm::RS256 {
            Algorithm::PS256
        } else {
            Algorithm::RS256
        };
        let forged = format!(
            "{}.{}.{sig}",
            b64(&json!({"alg": format!("{other:?}"), "typ": "JWT"})),
            head.split_once('.').unwrap().1
        );
        assert_eq!(
            p.verify_uncached(&forged, NOW).unwrap_err(),
            AuthError::BadSignature,
            "{alg:?} as {other:?}"
        );
    }

    // ES384 with a P-384 JWK made here; a P-256 policy skips that key.
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = pair.public_key().as_ref();
    assert_eq!(point.len(), 97);
    let jwk = json!({"kty": "EC", "crv": "P-384", "kid": "p384",
        "x": URL_SAFE_NO_PAD.encode(&point[1..49]), "y": URL_SAFE_NO_PAD.encode(&point[49..])});
    let doc = json!({ "keys": [jwk] }).to_string();
    let p = policy(PolicyParams::new(
        vec![Algorithm::ES384],
        KeySource::Jwks(doc.clone()),
    ));
    let es384 = EncodingKey::from_ec_der(pkcs8.as_ref());
    let t = mint(Algorithm::ES384, Some("p384"), &es384, &valid_claims());
    assert!(p.verify_uncached(&t, NOW).is_ok());
    assert!(matches!(
        Policy::new(PolicyParams::new(
            vec![Algorithm::ES256],
            KeySource::Jwks(doc)
        )),
        Err(PolicyError::BadJwks(_))
    ));

    // A JWK modulus with a leading zero byte is the same key.
    let mut doc: serde_json::Value = serde_json::from_str(JWKS).unwrap();
    let n = URL_SAFE_NO_PAD
        .decode(doc["keys"][2]["n"].as_str().unwrap())
        .unwrap();
    let padded = [&[0u8][..], &n].concat();
    doc["keys"][2]["n"] = json!(URL_SAFE_NO_PAD.encode(padded));
    let p = policy(PolicyParams::new(
        vec![Algorithm::RS256],
        KeySource::Jwks(doc.to_string()),
    ));
    let t = mint(Algorithm::RS256, Some("rsa-1"), &rsa, &valid_claims());
    assert!(p.verify_uncached(&t, NOW).is_ok());

    // A point off the curve is refused when the key set is loaded, not at
    // the first token.
    let mut doc: serde_json::Value = serde_json::from_str(JWKS).unwrap();
    doc["keys"][0]["y"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32]));
    let r = Policy::new(PolicyParams::new(
        vec![Algorithm::ES256],
        KeySource::Jwks(doc.to_string()),
    ));
    assert!(matches!(r, Err(PolicyError::BadJwks(_))), "{r:?}");
}

fn jwks_policy(algs: &[Algorithm]) -> Policy {
    policy(PolicyParams::new(
        algs.to_vec(),
        KeySource::Jwks(JWKS.into()),
    ))
}

#[test]
fn es256_and_eddsa_from_jwks_by_kid() {
    let p = jwks_policy(&[Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256]);
    assert_eq!(p.key_count(), 3);
    assert!(p.jwks_warnings().is_empty(), "{:?}", p.jwks_warnings());
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    let ed = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    let t = mint(Algorithm::ES256, Some("ec-1"), &ec, &valid_claims());
    assert!(p.verify(&t, NOW).is_ok());
    let t = mint(Algorithm::EdDSA, Some("ed-1"), &ed, &valid_claims());
    assert!(p.verify(&t, NOW).is_ok());
    let t = mint(Algorithm::RS256, Some("rsa-1"), &rsa, &valid_claims());
    assert!(p.verify(&t, NOW).is_ok());
    // Right key type, wrong kid: the EC token names the Ed key.
    let t = mint(Algorithm::ES256, Some("ed-1"), &ec, &valid_claims());
    assert_eq!(
        p.verify(&t, NOW).unwrap_err(),
        AuthError::AlgorithmNotAllowed
    );
    // Without kid: exactly one key fits ES256, so it is used.
    let t = mint(Algorithm::ES256, None, &ec, &valid_claims());
    assert!(p.verify(&t, NOW).is_ok());
}

#[test]
fn unknown_kid_is_its_own_error() {
    let p = jwks_policy(&[Algorithm::ES256, Algorithm::EdDSA]);
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    let t = mint(Algorithm::ES256, Some("ec-2"), &ec, &valid_claims());
    let err = p.verify(&t, NOW).unwrap_err();
    assert_eq!(err, AuthError::UnknownKey);
    assert!(err.wants_key_refresh());
}

#[test]
fn jwks_keys_outside_the_policy_are_skipped() {
    let p = jwks_policy(&[Algorithm::EdDSA]);
    assert_eq!(p.key_count(), 1);
    assert_eq!(p.jwks_warnings().len(), 2);
    // A refresh with a document missing the key: the new policy says unknown key.
    let ed = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
    let t = mint(Algorithm::EdDSA, Some("ed-1"), &ed, &valid_claims());
    assert!(p.verify(&t, NOW).is_ok());
    let mut doc: serde_json::Value = serde_json::from_str(JWKS).unwrap();
    doc["keys"][1]["kid"] = json!("ed-2");
    let p2 = p.with_jwks(&doc.to_string()).unwrap();
    assert_eq!(p2.verify(&t, NOW).unwrap_err(), AuthError::UnknownKey);
    assert!(p2.cache().is_empty());
    // A refresh with no usable key is refused; the caller keeps `p`.
    assert!(matches!(
        p.with_jwks(r#"{"keys": []}"#),
        Err(PolicyError::BadJwks(_))
    ));
}

#[test]
fn bad_jwks_documents() {
    let algs = vec![Algorithm::EdDSA];
    for doc in [
        "",
        "[]",
        "{\"keys\": 5}",
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA","kid":"short"}]}"#,
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"!!","kid":"bad"}]}"#,
        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"sym"}]}"#,
    ] {
        let r = Policy::new(PolicyParams::new(algs.clone(), KeySource::Jwks(doc.into())));
        assert!(matches!(r, Err(PolicyError::BadJwks(_))), "{doc}: {r:?}");
    }
    // Encryption keys are skipped with a warning.
    let mut doc: serde_json::Value = serde_json::from_str(JWKS).unwrap();
    doc["keys"][0]["use"] = json!("enc");
    let p = policy(PolicyParams::new(
        vec![Algorithm::ES256, Algorithm::EdDSA],
        KeySource::Jwks(doc.to_string()),
    ));
    assert_eq!(p.key_count(), 1);
    assert!(p.jwks_warnings()[0].contains("ec-1"));
}

#[test]
fn constructor_validation() {
    let e = |p: PolicyParams| Policy::new(p).unwrap_err();
    assert_eq!(e(hs_policy(&[])), PolicyError::NoAlgorithms);
    assert!(matches!(
        e(PolicyParams::new(
            vec![Algorithm::HS256],
            KeySource::Secret(b"short".to_vec())
        )),
        PolicyError::WeakSecret {
            len: 5,
            need: 32,
            ..
        }
    ));
    assert!(matches!(
        e(PolicyParams::new(
            vec![Algorithm::HS512],
            KeySource::Secret(vec![1; 48])
        )),
        PolicyError::WeakSecret { need: 64, .. }
    ));
    assert!(matches!(
        e(PolicyParams::new(
            vec![Algorithm::RS256],
            KeySource::Secret(SECRET.to_vec())
        )),
        PolicyError::KeyMismatch(_)
    ));
    assert!(matches!(
        e(PolicyParams::new(
            vec![Algorithm::HS256],
            KeySource::PublicKeyPem(RSA_PUBLIC.as_bytes().to_vec())
        )),
        PolicyError::KeyMismatch(_)
    ));
    // An RSA key for ES256, an EC key for RS256, garbage PEM.
    assert!(matches!(
        e(PolicyParams::new(
            vec![Algorithm::ES256],
            KeySource::PublicKeyPem(RSA_PUBLIC.as_bytes().to_vec())
        )),
        PolicyError::BadKey(_)
    ));
    assert!(matches!(
        e(PolicyParams::new(
            vec![Algorithm::RS256],
            KeySource::PublicKeyPem(EC_PUBLIC.as_bytes().to_vec())
        )),
        PolicyError::BadKey(_)
    ));
    assert!(matches!(
        e(PolicyParams::new(
            vec![Algorithm::RS256],
            KeySource::PublicKeyPem(
                b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_vec()
            )
        )),
        PolicyError::BadKey(_)
    ));
    // One PEM key cannot serve two families; ES384 does not fit a P-256 key.
    assert!(matches!(
        e(PolicyParams::new(
            vec![Algorithm::RS256, Algorithm::ES256],
            KeySource::PublicKeyPem(RSA_PUBLIC.as_bytes().to_vec())
        )),
        PolicyError::KeyMismatch(_)
    ));
    assert!(matches!(
        e(PolicyParams::new(
            vec![Algorithm::ES256, Algorithm::ES384],
            KeySource::PublicKeyPem(EC_PUBLIC.as_bytes().to_vec())
        )),
        PolicyError::BadKey(_)
    ));
    // Forwarding into a header the gate owns.
    let mut p = hs_policy(&[Algorithm::HS256]);
    p.forward_claims = vec![("sub".into(), HeaderName::from_static("host"))];
    assert!(matches!(e(p), PolicyError::BadForwardClaim(_)));
    // Errors and Debug never show the secret.
    let p = PolicyParams::new(
        vec![Algorithm::HS256],
        KeySource::Secret(b"hunter2-secret".to_vec()),
    );
    assert!(!format!("{p:?}").contains("hunter2"));
    assert!(!e(p).to_string().contains("hunter2"));
}

#[test]
fn scopes_and_forwarding_through_policy() {
    let mut pp = hs_policy(&[Algorithm::HS256]);
    pp.forward_claims = vec![
        ("sub".into(), HeaderName::from_static("x-auth-subject")),
        ("scope".into(), HeaderName::from_static("x-auth-scope")),
    ];
    let p = policy(pp);
    let t = hs(
        Algorithm::HS256,
        &json!({"exp": NOW + 60, "sub": "u1", "scope": "api read"}),
    );
    let c = p.verify(&t, NOW).unwrap();
    assert_eq!(check_scopes(&c, &["api".into()]), Ok(()));
    let h = forward_headers(&c, p.forward_claims()).unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(h[1].1, "api read");
    let names: Vec<_> = p.claim_header_names().cloned().collect();
    assert_eq!(names, ["x-auth-subject", "x-auth-scope"]);
    // A CRLF in a forwarded claim refuses the token.
    let t = hs(
        Algorithm::HS256,
        &json!({"exp": NOW + 60, "sub": "u1\r\nX-Admin: 1"}),
    );
    let c = p.verify(&t, NOW).unwrap();
    assert_eq!(
        forward_headers(&c, p.forward_claims()).unwrap_err(),
        AuthError::UnforwardableClaim
    );
    let t = hs(Algorithm::HS256, &json!({"exp": NOW + 60, "scp": ["read"]}));
    let c = p.verify(&t, NOW).unwrap();
    assert!(matches!(
        check_scopes(&c, &["api".into()]),
        Err(AuthError::InsufficientScope { .. })
    ));
}

#[test]
fn cache_hit_still_enforces_exp_and_nbf() {
    let mut pp = hs_policy(&[Algorithm::HS256]);
    pp.leeway = Duration::from_secs(5);
    let p = policy(pp);
    let t = hs(Algorithm::HS256, &json!({"exp": NOW + 10, "nbf": NOW - 5}));
    assert!(p.verify(&t, NOW).is_ok());
    assert_eq!(p.cache().len(), 1);
    assert!(p.verify(&t, NOW + 14).is_ok(), "cached, within leeway");
    assert_eq!(p.verify(&t, NOW + 15).unwrap_err(), AuthError::Expired);
    assert!(p.cache().is_empty(), "entry gone with the token");
    // nbf is enforced on a hit too (a clock that goes back).
    let t = hs(Algorithm::HS256, &json!({"exp": NOW + 100, "nbf": NOW}));
    assert!(p.verify(&t, NOW).is_ok());
    assert_eq!(p.verify(&t, NOW - 10).unwrap_err(), AuthError::NotYetValid);
}

#[test]
fn cache_skips_signature_only_for_the_same_token() {
    let p = policy(hs_policy(&[Algorithm::HS256]));
    let t = hs(Algorithm::HS256, &valid_claims());
    assert!(p.verify(&t, NOW).is_ok());
    assert!(p.verify(&t, NOW).is_ok());
    let (msg, _) = t.rsplit_once('.').unwrap();
    assert_eq!(
        p.verify(&format!("{msg}.AAAA"), NOW).unwrap_err(),
        AuthError::BadSignature
    );
    assert_eq!(p.cache().len(), 1);
}

#[test]
fn revocation_helpers() {
    let mut pp = hs_policy(&[Algorithm::HS256]);
    pp.leeway = Duration::from_secs(30);
    let p = policy(pp);
    // Expired tokens can still be revoked by token (signature checked only).
    let t = hs(Algorithm::HS256, &json!({"exp": NOW - 1000, "jti": "old"}));
    let c = p.verify_for_revocation(&t).unwrap();
    assert_eq!(revocation_key(&c, &t), "old");
    assert_eq!(p.revocation_expiry(&c), NOW - 970);
    let t = hs(Algorithm::HS256, &json!({"exp": NOW}));
    let c = p.verify_for_revocation(&t).unwrap();
    assert_eq!(revocation_key(&c, &t).len(), 64);
    let forged = format!("{}.AAAA", t.rsplit_once('.').unwrap().0);
    assert_eq!(
        p.verify_for_revocation(&forged).unwrap_err(),
        AuthError::BadSignature
    );
}

#[test]
fn random_and_mutated_tokens_never_panic() {
    let mut rng = fastrand::Rng::with_seed(7);
    let policies = [
        policy(hs_policy(&[Algorithm::HS256])),
        jwks_policy(&[Algorithm::ES256, Algorithm::EdDSA]),
        policy(PolicyParams::new(
            vec![Algorithm::RS256],
            KeySource::PublicKeyPem(RSA_PUBLIC.as_bytes().to_vec()),
        )),
    ];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/%";
    let good = hs(Algorithm::HS256, &valid_claims());
    for _ in 0..2000 {
        let len = rng.usize(0..200);
        let t: String = (0..len)
            .map(|_| alphabet[rng.usize(..alphabet.len())] as char)
            .collect();
        let mut m = good.clone().into_bytes();
        let i = rng.usize(..m.len());
        m[i] = alphabet[rng.usize(..alphabet.len())];
        let m = String::from_utf8(m).unwrap();
        for p in &policies {
            assert!(p.verify(&t, NOW).is_err());
            let _ = p.verify(&m, NOW);
        }
    }
}
