//! `auth` (JWT verification policies: algorithms, key source, issuer,
//! audience, forwarded claims) and `revocation`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use http::HeaderName;
use serde_yaml::Mapping;

use super::{parse_header_name, present, root, Ctx, Names};
use crate::defaults;
use crate::marks::KeyPath;
use crate::raw::*;
use crate::types::*;

/// JWT algorithms the gate verifies, exactly as they must be written.
const JWT_ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

/// Headers a claim must never be forwarded as: they frame or route the request.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

fn is_hs(alg: &str) -> bool {
    alg.starts_with("HS")
}

/// Key family a single public key file can serve.
fn key_family(alg: &str) -> &'static str {
    match alg {
        "ES256" => "EC P-256",
        "ES384" => "EC P-384",
        "EdDSA" => "Ed25519",
        _ => "RSA",
    }
}

impl Ctx<'_> {
    pub(super) fn auth(
        &mut self,
        top: &Mapping,
        names: &mut Names,
    ) -> BTreeMap<String, AuthPolicy> {
        let mut out = BTreeMap::new();
        for (name, p, v) in self.entries(top, "auth") {
            names.auth.insert(name.clone());
            let Some(raw) = self.de::<RawAuth>(&v, &p) else {
                continue;
            };
            if let Some(policy) = self.auth_policy(&name, &p, raw) {
                out.insert(name, policy);
            }
        }
        out
    }

    fn auth_policy(&mut self, name: &str, p: &KeyPath, raw: RawAuth) -> Option<AuthPolicy> {
        let ap = p.key("algorithms");
        let mut ok = true;
        let mut algs: Vec<String> = Vec::new();
        if raw.algorithms.is_empty() {
            self.at_value(&ap, "list at least one algorithm, e.g. [RS256]");
            ok = false;
        }
        for (i, a) in raw.algorithms.iter().enumerate() {
            let ip = ap.idx(i);
            if a.eq_ignore_ascii_case("none") {
                self.at_value(
                    &ip,
                    "algorithm `none` accepts unsigned tokens and is never allowed: remove it",
                );
                ok = false;
            } else if JWT_ALGORITHMS.contains(&a.as_str()) {
                if algs.contains(a) {
                    self.at_value(&ip, format!("algorithm {a} is listed twice"));
                } else {
                    algs.push(a.clone());
                }
            } else if let Some(known) = JWT_ALGORITHMS.iter().find(|k| k.eq_ignore_ascii_case(a)) {
                self.at_value(&ip, format!("write algorithm `{a}` as `{known}`"));
                ok = false;
            } else {
                self.at_value(
                    &ip,
                    format!(
                        "unknown JWT algorithm `{a}`: use one of {}",
                        JWT_ALGORITHMS.join(", ")
                    ),
                );
                ok = false;
            }
        }
        let hs: Vec<&String> = algs.iter().filter(|a| is_hs(a)).collect();
        let asym: Vec<&String> = algs.iter().filter(|a| !is_hs(a)).collect();
        let mixed = !hs.is_empty() && !asym.is_empty();
        if mixed {
            self.at_value(
                &ap,
                format!(
                    "auth policy `{name}` mixes {} with {}: accepting both shared-secret and public-key algorithms allows algorithm confusion; split it into two policies",
                    hs[0], asym[0]
                ),
            );
            ok = false;
        }

        // Exactly one key source.
        let sources: Vec<(&str, &String)> = [
            ("secret_env", raw.secret_env.as_ref()),
            ("public_key_file", raw.public_key_file.as_ref()),
            ("jwks_file", raw.jwks_file.as_ref()),
            ("jwks_url", raw.jwks_url.as_ref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        let (src_key, src_val) = match sources.as_slice() {
            [] => {
                self.at_value(
                    p,
                    format!("auth policy `{name}` has no key: set one of secret_env, public_key_file, jwks_file or jwks_url"),
                );
                return None;
            }
            [one] => *one,
            [first, rest @ ..] => {
                for (k, _) in rest {
                    self.at_key(
                        &p.key(k),
                        format!(
                            "auth policy `{name}` sets both {} and {k}: keep only one key source",
                            first.0
                        ),
                    );
                }
                return None;
            }
        };
        let kp = p.key(src_key);
        if !mixed {
            if let (Some(h), true) = (hs.first(), src_key != "secret_env") {
                self.at_key(
                    &kp,
                    format!(
                        "{h} verifies with a shared secret: use secret_env instead of {src_key}"
                    ),
                );
                ok = false;
            }
            if let (Some(a), "secret_env") = (asym.first(), src_key) {
                self.at_key(
                    &kp,
                    format!("{a} verifies with a public key: use public_key_file, jwks_file or jwks_url instead of secret_env"),
                );
                ok = false;
            }
            if src_key == "public_key_file" {
                let fams: BTreeSet<&str> = asym.iter().map(|a| key_family(a)).collect();
                if fams.len() > 1 {
                    self.at_value(
                        &ap,
                        format!(
                            "one public_key_file cannot verify {} keys together; use jwks_file or split the policy",
                            fams.into_iter().collect::<Vec<_>>().join(" and ")
                        ),
                    );
                    ok = false;
                }
            }
        }
        let key = match src_key {
            "secret_env" => {
                let value = self.env_secret(src_val, &kp);
                value.map(|value| KeySource::Secret {
                    env: src_val.clone(),
                    value,
                })
            }
            "public_key_file" => Some(KeySource::PublicKeyFile(self.readable_file(src_val, &kp))),
            "jwks_file" => Some(KeySource::JwksFile(self.readable_file(src_val, &kp))),
            _ => {
                if src_val.starts_with("https://") || src_val.starts_with("http://") {
                    Some(KeySource::JwksUrl(src_val.clone()))
                } else {
                    self.at_value(
                        &kp,
                        format!("jwks_url `{src_val}` must start with https://"),
                    );
                    None
                }
            }
        };

        if let Some(iss) = &raw.issuer {
            if iss.is_empty() {
                self.at_value(
                    &p.key("issuer"),
                    "issuer is empty: remove it or set the expected `iss`",
                );
            }
        }
        let audience = raw.audience.map(|a| a.0).unwrap_or_default();
        for (i, a) in audience.iter().enumerate() {
            if a.is_empty() {
                self.at_value(&p.key("audience").idx(i), "audience is empty");
            }
        }
        let leeway = raw.leeway.map_or(defaults::LEEWAY, |d| d.0);

        let mut forward_claims: Vec<(String, HeaderName)> = Vec::new();
        let fp = p.key("forward_claims");
        for (claim, header) in raw.forward_claims.map(|m| m.0).unwrap_or_default() {
            let hp = fp.key(&claim);
            match parse_header_name(&header) {
                Err(e) => self.at_value(&hp, e),
                Ok(h) if RESERVED_HEADERS.contains(&h.as_str()) => self.at_value(
                    &hp,
                    format!("claims cannot be forwarded as `{h}`: pick a header of your own, e.g. x-auth-{claim}"),
                ),
                Ok(h) if forward_claims.iter().any(|(_, x)| *x == h) => {
                    self.at_value(&hp, format!("header `{h}` already carries another claim"))
                }
                Ok(h) => forward_claims.push((claim, h)),
            }
        }
        let key = key?;
        ok.then_some(AuthPolicy {
            algorithms: algs,
            key,
            issuer: raw.issuer,
            audience,
            leeway,
            forward_claims,
            strip_authorization: raw.strip_authorization.unwrap_or(false),
        })
    }

    pub(super) fn revocation(&mut self, top: &Mapping) -> Option<Revocation> {
        let p = root().key("revocation");
        let raw = present(top, "revocation").and_then(|v| self.de::<RawRevocation>(v, &p))?;
        if let Some(r) = &raw.redis {
            if !(r.starts_with("redis://")
                || r.starts_with("rediss://")
                || r.starts_with("unix://"))
            {
                self.at_value(
                    &p.key("redis"),
                    format!("invalid redis URL `{r}`: expected redis://HOST:PORT/DB (or rediss:// for TLS)"),
                );
            }
        }
        if let Some("") = raw.persist_file.as_deref() {
            self.at_value(
                &p.key("persist_file"),
                "persist_file is empty: remove it or give a path",
            );
        }
        Some(Revocation {
            persist_file: raw.persist_file.map(PathBuf::from),
            redis: raw.redis,
        })
    }
}
