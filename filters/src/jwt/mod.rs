//! JWT policies: one named `auth:` policy of the config, built from plain
//! parameters, that finds a bearer token, verifies it and turns it into
//! headers for the worker.
//!
//! Verification order, all of it with an injected clock:
//! 1. size (at most [`MAX_TOKEN_BYTES`], which also bounds any JSON bomb),
//!    three base64url segments;
//! 2. the header's `alg` against the policy's pinned list, BEFORE any key is
//!    chosen (`none` is not even representable; a token cannot pick HMAC
//!    against an RSA key: algorithm confusion);
//! 3. the key: the secret, the PEM key, or the JWKS key named by `kid`
//!    (unknown `kid` is [`AuthError::UnknownKey`] so the server can refresh a
//!    remote JWKS);
//! 4. the signature, by aws-lc, with none of jsonwebtoken's own claim
//!    validation (jsonwebtoken's `decode` would parse the claims into a
//!    struct and check them its own way; we call the crypto directly);
//! 5. our claim checks: `exp` required, `nbf` honoured, both with leeway;
//!    `iss` and `aud` when configured.
//!
//! Crypto backend: aws-lc (the `aws_lc_rs` feature of jsonwebtoken, and
//! `aws-lc-rs` directly), not jsonwebtoken's pure-Rust `rust_crypto`. The
//! issue asks RS256/ES256 to verify at least 3× faster than PyJWT, which
//! runs OpenSSL; RustCrypto's RSA and P-256 are several times slower than
//! that. Measured on the 2-CPU dev machine, load about 1.3 (criterion
//! medians of `jwt_cold`, `bash benches/jwt_ratio.sh`, same run as PyJWT):
//! RS256 184 µs → 17 µs (PyJWT 62 µs), ES256 279 µs → 51 µs (PyJWT 100 µs),
//! EdDSA 46 µs → 38 µs, HS256 1.7 µs either way. Public keys are parsed once
//! per key and algorithm when the policy is built (`keys.rs`; that alone is
//! 2 µs of RS256's 17), which also keeps a bad EC key a start-up error. The
//! price is a C library: aws-lc-sys builds with the `cc` crate and the
//! system C compiler (no cmake, no NASM on x86_64 Linux), 44 s for a clean
//! release build of that crate and 16 s for a debug one on 2 cores. ES256
//! stays near 2× PyJWT: one P-256 verification is about 49 µs here with
//! aws-lc (52 µs with ring, 60 µs in `openssl speed`), half of PyJWT's whole
//! `decode`, so no backend reaches 3× on it.
//!
//! Revocation is checked by the caller after this, with
//! [`revocation_key`] and [`crate::revocation::RevocationList`].

mod cache;
mod claims;
mod error;
mod keys;
mod token;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{self, HeaderName};
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;
use serde_json::Value;

pub use cache::{token_digest, TokenCache, TokenDigest, DEFAULT_CACHE_CAPACITY};
pub use claims::{
    check_scopes, forward_headers, revocation_key, strip_client_claim_headers, Claims,
};
pub use error::{www_authenticate, AuthError, REALM};
pub use jsonwebtoken::Algorithm as JwtAlgorithm;
pub use keys::{MAX_JWKS_BYTES, MAX_JWKS_KEYS};
pub use token::{extract_token, query_without_access_token, TokenLocation, TokenSource};

use keys::KeySet;

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Where the verification keys come from.
#[derive(Clone)]
pub enum KeySource {
    /// HMAC secret (HS256/384/512), at least as long as the hash output.
    Secret(Vec<u8>),
    /// One PEM public key: RSA (SPKI or PKCS#1), EC or Ed25519 (SPKI).
    PublicKeyPem(Vec<u8>),
    /// A JWKS document (JSON text); keys are chosen by `kid`.
    Jwks(String),
}

impl std::fmt::Debug for KeySource {
    // Never print a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Secret(s) => write!(f, "Secret([{} bytes])", s.len()),
            KeySource::PublicKeyPem(p) => write!(f, "PublicKeyPem([{} bytes])", p.len()),
            KeySource::Jwks(j) => write!(f, "Jwks([{} bytes])", j.len()),
        }
    }
}

/// Everything a policy is built from (the config crate maps its YAML here).
#[derive(Debug, Clone)]
pub struct PolicyParams {
    pub algorithms: Vec<Algorithm>,
    pub key: KeySource,
    pub issuer: Option<String>,
    /// Accepted audiences; empty means `aud` is not checked.
    pub audience: Vec<String>,
    /// Tolerance on `exp` and `nbf` (whole seconds; fractions dropped).
    pub leeway: Duration,
    /// Claim name → header sent to the worker.
    pub forward_claims: Vec<(String, HeaderName)>,
    pub strip_authorization: bool,
    /// Verified-token cache size; 0 disables the cache.
    pub cache_capacity: usize,
}

impl PolicyParams {
    pub fn new(algorithms: Vec<Algorithm>, key: KeySource) -> Self {
        PolicyParams {
            algorithms,
            key,
            issuer: None,
            audience: Vec::new(),
            leeway: Duration::ZERO,
            forward_claims: Vec::new(),
            strip_authorization: false,
            cache_capacity: DEFAULT_CACHE_CAPACITY,
        }
    }
}

/// A policy that cannot be built. Messages name what is wrong, never a
/// secret or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("no algorithms: list at least one (HS*, RS*, PS*, ES256/384, EdDSA)")]
    NoAlgorithms,
    #[error("HS* algorithms cannot be mixed with RS*/PS*/ES*/EdDSA in one policy (algorithm confusion): use two policies")]
    MixedHmac,
    #[error("{0}")]
    KeyMismatch(String),
    #[error(
        "secret of {len} bytes is too short for {alg:?}: at least {need} bytes (RFC 7518 §3.2)"
    )]
    WeakSecret {
        alg: Algorithm,
        len: usize,
        need: usize,
    },
    #[error("bad key: {0}")]
    BadKey(String),
    #[error("bad JWKS: {0}")]
    BadJwks(String),
    #[error("forward_claims: {0}")]
    BadForwardClaim(String),
}

/// A verified-JWT policy. Immutable except for its token cache; share it
/// behind an `Arc`. A remote JWKS refresh builds a new policy with
/// [`Policy::with_jwks`] and swaps it in.
#[derive(Debug)]
pub struct Policy {
    algorithms: Vec<Algorithm>,
    keys: KeySet,
    jwks_warnings: Vec<String>,
    issuer: Option<String>,
    audience: Vec<String>,
    leeway: u64,
    forward_claims: Vec<(String, HeaderName)>,
    strip_authorization: bool,
    cache_capacity: usize,
    cache: TokenCache,
}

/// Headers a claim may never be forwarded into: framing, routing and the
/// ones the gate sets itself.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "cookie",
    "host",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
];

impl Policy {
    pub fn new(params: PolicyParams) -> Result<Self, PolicyError> {
        let mut algorithms = params.algorithms;
        let mut seen = Vec::with_capacity(algorithms.len());
        algorithms.retain(|a| {
            let new = !seen.contains(a);
            seen.push(*a);
            new
        });
        if algorithms.is_empty() {
            return Err(PolicyError::NoAlgorithms);
        }
        let hmac = algorithms
            .iter()
            .filter(|a| a.family() == AlgorithmFamily::Hmac)
            .count();
        if hmac != 0 && hmac != algorithms.len() {
            return Err(PolicyError::MixedHmac);
        }
        let (keys, jwks_warnings) = match &params.key {
            KeySource::Secret(secret) => {
                if hmac == 0 {
                    return Err(PolicyError::KeyMismatch(format!(
                        "a secret verifies HS* tokens only, not {algorithms:?}: use public_key_file or a JWKS"
                    )));
                }
                (keys::secret_key(secret, &algorithms)?, Vec::new())
            }
            KeySource::PublicKeyPem(pem) => {
                if hmac != 0 {
                    return Err(PolicyError::KeyMismatch(
                        "a public key cannot verify HS* tokens: use a secret".into(),
                    ));
                }
                (keys::pem_key(pem, &algorithms)?, Vec::new())
            }
            KeySource::Jwks(text) => {
                if hmac != 0 {
                    return Err(PolicyError::KeyMismatch(
                        "HS* keys are not taken from a JWKS: use a secret".into(),
                    ));
                }
                keys::jwks_keys(text, &algorithms)?
            }
        };
        for (claim, header) in &params.forward_claims {
            if claim.is_empty() {
                return Err(PolicyError::BadForwardClaim("empty claim name".into()));
            }
            if RESERVED_HEADERS.contains(&header.as_str()) {
                return Err(PolicyError::BadForwardClaim(format!(
                    "{claim} cannot be forwarded as {header}: the gate owns that header"
                )));
            }
        }
        Ok(Policy {
            algorithms,
            keys,
            jwks_warnings,
            issuer: params.issuer,
            audience: params.audience,
            leeway: params.leeway.as_secs(),
            forward_claims: params.forward_claims,
            strip_authorization: params.strip_authorization,
            cache_capacity: params.cache_capacity,
            cache: TokenCache::new(params.cache_capacity),
        })
    }

    /// The same policy with the keys of a newly fetched JWKS document and an
    /// empty token cache (a key that left the set must stop verifying).
    /// On error the caller keeps the policy it has.
    pub fn with_jwks(&self, jwks: &str) -> Result<Policy, PolicyError> {
        if !matches!(self.keys, KeySet::Jwks(_)) {
            return Err(PolicyError::KeyMismatch(
                "this policy does not use a JWKS".into(),
            ));
        }
        let (keys, jwks_warnings) = keys::jwks_keys(jwks, &self.algorithms)?;
        Ok(Policy {
            algorithms: self.algorithms.clone(),
            keys,
            jwks_warnings,
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            leeway: self.leeway,
            forward_claims: self.forward_claims.clone(),
            strip_authorization: self.strip_authorization,
            cache_capacity: self.cache_capacity,
            cache: TokenCache::new(self.cache_capacity),
        })
    }

    /// JWKS keys that were skipped, one line each (log them at load).
    pub fn jwks_warnings(&self) -> &[String] {
        &self.jwks_warnings
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    pub fn leeway_secs(&self) -> u64 {
        self.leeway
    }

    pub fn forward_claims(&self) -> &[(String, HeaderName)] {
        &self.forward_claims
    }

    /// The headers this policy forwards claims into: strip them from every
    /// client request, on every route ([`strip_client_claim_headers`]).
    pub fn claim_header_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.forward_claims.iter().map(|(_, h)| h)
    }

    pub fn strip_authorization(&self) -> bool {
        self.strip_authorization
    }

    /// The header to remove before forwarding when `strip_authorization`.
    pub fn authorization_header() -> HeaderName {
        header::AUTHORIZATION
    }

    /// When a revocation of this token may be forgotten: `exp` plus the
    /// leeway, the last second this policy could still accept it.
    pub fn revocation_expiry(&self, claims: &Claims) -> u64 {
        claims.exp().saturating_add(self.leeway)
    }

    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    /// Verifies `token` at `now` (unix seconds), through the token cache: a
    /// token verified before skips its signature but still has `exp`/`nbf`
    /// checked against `now`. Revocation is the caller's next step.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        if self.cache_capacity == 0 {
            return self.verify_uncached(token, now);
        }
        let digest = token_digest(token);
        if let Some(claims) = self.cache.get(&digest, now) {
            claims.check_time(now, self.leeway)?;
            return Ok(claims);
        }
        let claims = self.verify_uncached(token, now)?;
        self.cache.insert(
            digest,
            claims.clone(),
            claims.exp().saturating_add(self.leeway),
            now,
        );
        Ok(claims)
    }

    /// [`Policy::verify`] without the cache.
    pub fn verify_uncached(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        let claims = self.verify_signature(token)?;
        claims.check_time(now, self.leeway)?;
        self.check_issuer_audience(&claims)?;
        Ok(claims)
    }

    /// For the admin API's `{"token": ...}` revocation: the signature and a
    /// numeric `exp` are checked, but not the time, issuer or audience.
    pub fn verify_for_revocation(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_signature(token)
    }

    fn verify_signature(&self, token: &str) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let (message, signature) = token
            .rsplit_once('.')
            .ok_or(AuthError::Malformed("malformed token: not three segments"))?;
        let (header_b64, payload_b64) = message
            .split_once('.')
            .ok_or(AuthError::Malformed("malformed token: not three segments"))?;
        if payload_b64.contains('.') {
            return Err(AuthError::Malformed("malformed token: not three segments"));
        }
        let header = decode_header(header_b64)?;
        // The algorithm is checked before any key is looked at.
        let alg: Algorithm = header
            .alg
            .parse()
            .map_err(|_| AuthError::AlgorithmNotAllowed)?;
        if !self.algorithms.contains(&alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        if header.crit.is_some() {
            return Err(AuthError::Malformed(
                "malformed token: unsupported critical header (crit)",
            ));
        }
        let key = self.keys.select(alg, header.kid.as_deref())?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| AuthError::Malformed("malformed token: signature is not base64url"))?;
        key.verify(alg, message.as_bytes(), &signature)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| AuthError::Malformed("malformed token: payload is not base64url"))?;
        Claims::from_payload(&payload)
    }

    fn check_issuer_audience(&self, claims: &Claims) -> Result<(), AuthError> {
        if let Some(iss) = &self.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(iss.as_str()) {
                return Err(AuthError::WrongIssuer);
            }
        }
        if !self.audience.is_empty() {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => self.audience.contains(a),
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|a| self.audience.iter().any(|want| want == a)),
                _ => false,
            };
            if !ok {
                return Err(AuthError::WrongAudience);
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

fn decode_header(b64: &str) -> Result<RawHeader, AuthError> {
    let json = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| AuthError::Malformed("malformed token: header is not base64url"))?;
    serde_json::from_slice(&json)
        .map_err(|_| AuthError::Malformed("malformed token: header is not a JOSE header"))
}

#[cfg(test)]
mod tests;
