//! The verification keys of one policy: an HMAC secret, one PEM public key,
//! or the usable keys of a JWKS document, and the choice of the key for a
//! token's (`alg`, `kid`). Keys are checked when they are loaded (size,
//! curve, that the crypto backend accepts them) so a bad key is a startup
//! error, not a 401 on every request. Keys named by the token itself
//! (`jku`, `jwk`, `x5u`, `x5c`) are never used.
//!
//! An asymmetric key is parsed by aws-lc once, here, for each algorithm of
//! the policy it serves ([`aws_lc_rs::signature::ParsedPublicKey`]): a token
//! then costs the signature check alone, not a key parse (and, for RSA, not
//! the Montgomery set-up of the modulus) as well. An HMAC secret likewise
//! becomes one aws-lc key per HS algorithm, its padded inner and outer
//! states computed once instead of for every token.

use aws_lc_rs::hmac;
use aws_lc_rs::signature::{self as lc, ParsedPublicKey, RsaPublicKeyComponents};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::traits::PublicKeyParts;
use serde_json::Value;

use super::{AuthError, PolicyError};

/// RFC 7518 §3.3: RSA keys of 2048 bits or more.
const MIN_RSA_BYTES: usize = 256;
/// Moduli over 4096 bits are refused (as the RustCrypto backend used to).
const MAX_RSA_BYTES: usize = 512;
/// A JWKS document larger than this is refused (a real one is a few KiB).
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Keys of a JWKS past this many are ignored (with a warning).
pub const MAX_JWKS_KEYS: usize = 100;

#[derive(Debug)]
pub(crate) enum KeySet {
    /// An HMAC secret or one PEM public key: one key for every algorithm.
    Single(VerifyingKey),
    /// The usable keys of a JWKS document.
    Jwks(Vec<JwkEntry>),
}

#[derive(Debug)]
pub(crate) struct JwkEntry {
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one.
    alg: Option<Algorithm>,
    curve: Option<EllipticCurve>,
    key: VerifyingKey,
}

/// A key ready to verify: the jsonwebtoken key (its family) and one aws-lc
/// key per policy algorithm it was checked for at load (parsed public keys,
/// or HMAC keys for a secret).
#[derive(Debug)]
pub(crate) struct VerifyingKey {
    key: DecodingKey,
    parsed: Vec<(Algorithm, ParsedPublicKey)>,
    hmac: Vec<(Algorithm, hmac::Key)>,
}

impl VerifyingKey {
    fn family(&self) -> AlgorithmFamily {
        self.key.family()
    }

    /// Checks `signature` over `message` for `alg` (a policy algorithm that
    /// [`KeySet::select`] matched to this key).
    pub(crate) fn verify(
        &self,
        alg: Algorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), AuthError> {
        if self.family() == AlgorithmFamily::Hmac {
            let (_, key) = self
                .hmac
                .iter()
                .find(|(a, _)| *a == alg)
                .ok_or(AuthError::BadSignature)?;
            // Constant-time comparison of the tags inside aws-lc.
            return hmac::verify(key, message, signature).map_err(|_| AuthError::BadSignature);
        }
        let (_, parsed) = self
            .parsed
            .iter()
            .find(|(a, _)| *a == alg)
            .ok_or(AuthError::BadSignature)?;
        parsed
            .verify_sig(message, signature)
            .map_err(|_| AuthError::BadSignature)
    }
}

impl JwkEntry {
    fn fits(&self, alg: Algorithm) -> bool {
        if self.key.family() != alg.family() || self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        match (&self.curve, alg) {
            (Some(EllipticCurve::P256), Algorithm::ES256) => true,
            (Some(EllipticCurve::P384), Algorithm::ES384) => true,
            (Some(EllipticCurve::Ed25519), Algorithm::EdDSA) => true,
            (Some(_), _) => false,
            (None, _) => true,
        }
    }
}

impl KeySet {
    /// The key for a token whose header says `alg` (already checked against
    /// the policy) and `kid`. In a JWKS, a token without `kid` is accepted
    /// only when exactly one key fits its algorithm.
    pub(crate) fn select(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<&VerifyingKey, AuthError> {
        match self {
            KeySet::Single(key) => {
                if key.family() == alg.family() {
                    Ok(key)
                } else {
                    Err(AuthError::AlgorithmNotAllowed)
                }
            }
            KeySet::Jwks(entries) => match kid {
                Some(kid) => {
                    let mut named = entries
                        .iter()
                        .filter(|e| e.kid.as_deref() == Some(kid))
                        .peekable();
                    if named.peek().is_none() {
                        return Err(AuthError::UnknownKey);
                    }
                    named
                        .find(|e| e.fits(alg))
                        .map(|e| &e.key)
                        .ok_or(AuthError::AlgorithmNotAllowed)
                }
                None => {
                    let mut fitting = entries.iter().filter(|e| e.fits(alg));
                    match (fitting.next(), fitting.next()) {
                        (Some(e), None) => Ok(&e.key),
                        _ => Err(AuthError::UnknownKey),
                    }
                }
            },
        }
    }

    /// How many keys the set holds.
    pub(crate) fn len(&self) -> usize {
        match self {
            KeySet::Single(_) => 1,
            KeySet::Jwks(entries) => entries.len(),
        }
    }
}

/// The HMAC secret for the HS algorithms of a policy: RFC 7518 §3.2 asks for
/// at least as many bytes as the hash output.
pub(crate) fn secret_key(secret: &[u8], algorithms: &[Algorithm]) -> Result<KeySet, PolicyError> {
    for alg in algorithms {
        let need = match alg {
            Algorithm::HS256 => 32,
            Algorithm::HS384 => 48,
            Algorithm::HS512 => 64,
            other => {
                return Err(PolicyError::KeyMismatch(format!(
                    "an HMAC secret cannot verify {other:?}"
                )))
            }
        };
        if secret.len() < need {
            return Err(PolicyError::WeakSecret {
                alg: *alg,
                len: secret.len(),
                need,
            });
        }
    }
    let hmac = algorithms
        .iter()
        .map(|alg| {
            let digest = match alg {
                Algorithm::HS384 => hmac::HMAC_SHA384,
                Algorithm::HS512 => hmac::HMAC_SHA512,
                // HS256, the one left after the check above.
                _ => hmac::HMAC_SHA256,
            };
            (*alg, hmac::Key::new(digest, secret))
        })
        .collect();
    Ok(KeySet::Single(VerifyingKey {
        key: DecodingKey::from_secret(secret),
        parsed: Vec::new(),
        hmac,
    }))
}

/// One PEM public key (SubjectPublicKeyInfo, or PKCS#1 for RSA) serving every
/// algorithm of the policy, which must then all be of the key's family.
pub(crate) fn pem_key(pem: &[u8], algorithms: &[Algorithm]) -> Result<KeySet, PolicyError> {
    let family = single_family(algorithms)?;
    let key = match family {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
        AlgorithmFamily::Hmac => {
            return Err(PolicyError::KeyMismatch(
                "a public key cannot verify HS* tokens".into(),
            ))
        }
    }
    .map_err(|_| PolicyError::BadKey(format!("not a PEM {} public key", family_name(family))))?;
    let parsed = algorithms
        .iter()
        .map(|alg| Ok((*alg, parse_key(&key, *alg)?)))
        .collect::<Result<_, PolicyError>>()?;
    Ok(KeySet::Single(VerifyingKey {
        key,
        parsed,
        hmac: Vec::new(),
    }))
}

/// The usable keys of a JWKS document, and a warning for each key skipped
/// (encryption keys, symmetric keys, unsupported curves, keys fitting none
/// of the policy's algorithms, invalid keys). No usable key is an error.
pub(crate) fn jwks_keys(
    text: &str,
    algorithms: &[Algorithm],
) -> Result<(KeySet, Vec<String>), PolicyError> {
    if text.len() > MAX_JWKS_BYTES {
        return Err(PolicyError::BadJwks(format!(
            "document is {} bytes, more than {MAX_JWKS_BYTES}",
            text.len()
        )));
    }
    let doc: Value =
        serde_json::from_str(text).map_err(|e| PolicyError::BadJwks(format!("not JSON: {e}")))?;
    let Some(keys) = doc.get("keys").and_then(Value::as_array) else {
        return Err(PolicyError::BadJwks("no \"keys\" array".into()));
    };
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    for (i, raw) in keys.iter().enumerate() {
        if i >= MAX_JWKS_KEYS {
            warnings.push(format!("keys past the first {MAX_JWKS_KEYS} are ignored"));
            break;
        }
        let kid = raw.get("kid").and_then(Value::as_str);
        let label = match kid {
            Some(k) => format!("key {i} (kid {k:?})"),
            None => format!("key {i}"),
        };
        match jwk_entry(raw, algorithms) {
            Ok(entry) => entries.push(entry),
            Err(why) => warnings.push(format!("{label} skipped: {why}")),
        }
    }
    if entries.is_empty() {
        return Err(PolicyError::BadJwks(format!(
            "no usable key for {algorithms:?} ({})",
            warnings.join("; ")
        )));
    }
    Ok((KeySet::Jwks(entries), warnings))
}

fn jwk_entry(raw: &Value, algorithms: &[Algorithm]) -> Result<JwkEntry, String> {
    if let Some(u) = raw.get("use") {
        if u.as_str() != Some("sig") {
            return Err("not a signature key (use)".into());
        }
    }
    if let Some(ops) = raw.get("key_ops") {
        let verify = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o.as_str() == Some("verify")));
        if !verify {
            return Err("key_ops does not allow verify".into());
        }
    }
    let alg = match raw.get("alg") {
        None => None,
        Some(v) => {
            let name = v.as_str().ok_or("alg is not a string")?;
            let alg: Algorithm = name
                .parse()
                .map_err(|_| format!("alg {name:?} is not a signature algorithm"))?;
            Some(alg)
        }
    };
    let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|_| "unsupported or invalid key")?;
    let curve = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric keys are not taken from a JWKS".into())
        }
        AlgorithmParameters::RSA(_) => None,
        AlgorithmParameters::EllipticCurve(p) => {
            if !matches!(p.curve, EllipticCurve::P256 | EllipticCurve::P384) {
                return Err("unsupported EC curve".into());
            }
            Some(p.curve.clone())
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err("unsupported OKP curve".into());
            }
            Some(p.curve.clone())
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "invalid key material")?;
    let mut entry = JwkEntry {
        kid: jwk.common.key_id.clone(),
        alg,
        curve,
        key: VerifyingKey {
            key,
            parsed: Vec::new(),
            hmac: Vec::new(),
        },
    };
    let usable: Vec<Algorithm> = algorithms
        .iter()
        .copied()
        .filter(|a| entry.fits(*a))
        .collect();
    if usable.is_empty() {
        return Err(format!("fits none of {algorithms:?}"));
    }
    for a in usable {
        let parsed = parse_key(&entry.key.key, a).map_err(|e| e.to_string())?;
        entry.key.parsed.push((a, parsed));
    }
    Ok(entry)
}

/// The aws-lc key verifying `alg` tokens with `key`, or why the key cannot:
/// wrong family, RSA outside 2048..=4096 bits, an Ed25519 key that is not 32
/// bytes, a point not on the algorithm's curve, anything aws-lc refuses.
fn parse_key(key: &DecodingKey, alg: Algorithm) -> Result<ParsedPublicKey, PolicyError> {
    if key.family() != alg.family() {
        return Err(PolicyError::KeyMismatch(format!(
            "a {} key cannot verify {alg:?}",
            family_name(key.family())
        )));
    }
    let parsed = match key.family() {
        AlgorithmFamily::Rsa => {
            let bad = || PolicyError::BadKey("invalid RSA public key".into());
            let rsa_key = match key.kind() {
                jsonwebtoken::DecodingKeyKind::SecretOrDer(der) => {
                    rsa::RsaPublicKey::from_pkcs1_der(der).map_err(|_| bad())?
                }
                jsonwebtoken::DecodingKeyKind::RsaModulusExponent { n, e } => {
                    rsa::RsaPublicKey::new(
                        rsa::BigUint::from_bytes_be(n),
                        rsa::BigUint::from_bytes_be(e),
                    )
                    .map_err(|_| bad())?
                }
            };
            let size = rsa_key.size();
            if !(MIN_RSA_BYTES..=MAX_RSA_BYTES).contains(&size) {
                return Err(PolicyError::BadKey(format!(
                    "RSA key of {} bits: 2048 to 4096 bits are accepted",
                    size * 8
                )));
            }
            let params: &'static lc::RsaParameters = match alg {
                Algorithm::RS256 => &lc::RSA_PKCS1_2048_8192_SHA256,
                Algorithm::RS384 => &lc::RSA_PKCS1_2048_8192_SHA384,
                Algorithm::RS512 => &lc::RSA_PKCS1_2048_8192_SHA512,
                Algorithm::PS256 => &lc::RSA_PSS_2048_8192_SHA256,
                Algorithm::PS384 => &lc::RSA_PSS_2048_8192_SHA384,
                // PS512, the last of the RSA family.
                _ => &lc::RSA_PSS_2048_8192_SHA512,
            };
            // Big-endian without leading zeros, as aws-lc wants them (a JWK's
            // `n` may carry a leading zero byte).
            RsaPublicKeyComponents {
                n: rsa_key.n().to_bytes_be(),
                e: rsa_key.e().to_bytes_be(),
            }
            .to_parsed_public_key(params)
        }
        AlgorithmFamily::Ec => {
            // The SEC1 point of the PEM key or of the JWK's x and y.
            let params: &'static lc::EcdsaVerificationAlgorithm = match alg {
                Algorithm::ES256 => &lc::ECDSA_P256_SHA256_FIXED,
                // ES384, the other one of the EC family.
                _ => &lc::ECDSA_P384_SHA384_FIXED,
            };
            ParsedPublicKey::new(params, key.as_bytes())
        }
        AlgorithmFamily::Ed => {
            if key.as_bytes().len() != 32 {
                return Err(PolicyError::BadKey("Ed25519 key is not 32 bytes".into()));
            }
            ParsedPublicKey::new(&lc::ED25519, key.as_bytes())
        }
        AlgorithmFamily::Hmac => {
            return Err(PolicyError::KeyMismatch(
                "an HMAC secret is not a public key".into(),
            ))
        }
    };
    parsed.map_err(|_| PolicyError::BadKey(format!("key does not fit {alg:?}")))
}

/// The one family of a list of algorithms, for a single public key.
fn single_family(algorithms: &[Algorithm]) -> Result<AlgorithmFamily, PolicyError> {
    let Some(first) = algorithms.first() else {
        return Err(PolicyError::NoAlgorithms);
    };
    let family = first.family();
    if algorithms.iter().any(|a| a.family() != family) {
        return Err(PolicyError::KeyMismatch(format!(
            "one public key cannot serve {algorithms:?}: use a JWKS for several key types"
        )));
    }
    Ok(family)
}

pub(crate) fn family_name(f: AlgorithmFamily) -> &'static str {
    match f {
        AlgorithmFamily::Hmac => "HMAC",
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Ec => "EC",
        AlgorithmFamily::Ed => "Ed25519",
    }
}
