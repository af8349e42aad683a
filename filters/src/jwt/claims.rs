//! The verified claims of a token and what is derived from them: time
//! checks against an injected clock, scopes, the headers forwarded to the
//! worker (and the removal of any such header sent by the client), and the
//! revocation key.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::AuthError;

/// The claims of a verified token. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Claims(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    map: Map<String, Value>,
    exp: u64,
    nbf: Option<u64>,
}

impl Claims {
    /// Parses a decoded payload: a JSON object with a numeric `exp`; `nbf`,
    /// when present, numeric too.
    pub(crate) fn from_payload(json: &[u8]) -> Result<Self, AuthError> {
        let map: Map<String, Value> = serde_json::from_slice(json)
            .map_err(|_| AuthError::Malformed("malformed token: payload is not a JSON object"))?;
        let exp = match map.get("exp") {
            None | Some(Value::Null) => return Err(AuthError::MissingExpiry),
            Some(v) => numeric_date(v)?,
        };
        let nbf = match map.get("nbf") {
            None | Some(Value::Null) => None,
            Some(v) => Some(numeric_date(v)?),
        };
        Ok(Claims(Arc::new(Inner { map, exp, nbf })))
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.map.get(name)
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0.map
    }

    /// `exp`, in unix seconds (fractions dropped).
    pub fn exp(&self) -> u64 {
        self.0.exp
    }

    pub fn nbf(&self) -> Option<u64> {
        self.0.nbf
    }

    /// A non-empty string `jti`.
    pub fn jti(&self) -> Option<&str> {
        self.get_str("jti").filter(|s| !s.is_empty())
    }

    pub fn sub(&self) -> Option<&str> {
        self.get_str("sub")
    }

    fn get_str(&self, name: &str) -> Option<&str> {
        self.0.map.get(name).and_then(Value::as_str)
    }

    /// `exp` (required; the token is refused from `exp + leeway` on, RFC 7519
    /// §4.1.4 "before") and `nbf` (accepted from `nbf - leeway`).
    pub fn check_time(&self, now: u64, leeway: u64) -> Result<(), AuthError> {
        if now >= self.0.exp.saturating_add(leeway) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = self.0.nbf {
            if now.saturating_add(leeway) < nbf {
                return Err(AuthError::NotYetValid);
            }
        }
        Ok(())
    }
}

/// A NumericDate (RFC 7519 §2): a JSON number of seconds, possibly with a
/// fraction. Negative values are 0; values too large saturate.
fn numeric_date(v: &Value) -> Result<u64, AuthError> {
    let Value::Number(n) = v else {
        return Err(AuthError::Malformed(
            "malformed token: exp or nbf is not a number",
        ));
    };
    if let Some(u) = n.as_u64() {
        return Ok(u);
    }
    match n.as_f64() {
        Some(f) if f.is_finite() => Ok(if f <= 0.0 { 0 } else { f as u64 }),
        _ => Err(AuthError::Malformed(
            "malformed token: exp or nbf is not a number",
        )),
    }
}

/// Every scope in `required` must be granted by the `scope` claim
/// (space-separated string, RFC 8693) or the `scp` claim (string or array).
pub fn check_scopes(claims: &Claims, required: &[String]) -> Result<(), AuthError> {
    if required.is_empty() {
        return Ok(());
    }
    let mut granted: Vec<&str> = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => granted.extend(s.split_ascii_whitespace()),
            Some(Value::Array(items)) => granted.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    if required.iter().all(|r| granted.contains(&r.as_str())) {
        Ok(())
    } else {
        Err(AuthError::InsufficientScope {
            required: required.join(" "),
        })
    }
}

/// The headers that carry the configured claims to the worker: strings as
/// they are, numbers as text, booleans as `true`/`false`, arrays joined with
/// spaces, objects as compact JSON. An absent or null claim sends no header.
/// A value with CR, LF or anything other than visible ASCII and space
/// refuses the token.
pub fn forward_headers(
    claims: &Claims,
    forward: &[(String, HeaderName)],
) -> Result<Vec<(HeaderName, HeaderValue)>, AuthError> {
    let mut out = Vec::with_capacity(forward.len());
    for (claim, header) in forward {
        let Some(value) = claims.get(claim) else {
            continue;
        };
        let text = match value {
            Value::Null => continue,
            Value::Array(items) => {
                let mut parts = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::Null => {}
                        Value::Array(_) | Value::Object(_) => {
                            return Err(AuthError::UnforwardableClaim)
                        }
                        scalar => parts.push(scalar_text(scalar)),
                    }
                }
                parts.join(" ")
            }
            Value::Object(_) => value.to_string(),
            scalar => scalar_text(scalar),
        };
        if !text.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(AuthError::UnforwardableClaim);
        }
        let v = HeaderValue::from_str(&text).map_err(|_| AuthError::UnforwardableClaim)?;
        out.push((header.clone(), v));
    }
    Ok(out)
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "true" } else { "false" }.to_string(),
        other => other.to_string(),
    }
}

/// Removes every configured claim header the client sent (all of their
/// values), so a client can never pose as an identity. Call it on every
/// route, authenticated or not.
pub fn strip_client_claim_headers(headers: &mut HeaderMap, names: &[HeaderName]) {
    for name in names {
        headers.remove(name);
    }
}

/// The key of a token in the revocation list: its `jti`, or the lowercase
/// hex SHA-256 of the whole token when it has none.
pub fn revocation_key(claims: &Claims, token: &str) -> String {
    match claims.jti() {
        Some(jti) => jti.to_owned(),
        None => hex(&Sha256::digest(token.as_bytes())),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> Claims {
        Claims::from_payload(json.as_bytes()).unwrap()
    }

    #[test]
    fn exp_required_and_numeric() {
        assert_eq!(
            Claims::from_payload(br#"{"sub":"a"}"#).unwrap_err(),
            AuthError::MissingExpiry
        );
        assert!(matches!(
            Claims::from_payload(br#"{"exp":"soon"}"#),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            Claims::from_payload(br#"[1,2]"#),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            Claims::from_payload(b"\xff\xfe"),
            Err(AuthError::Malformed(_))
        ));
        assert_eq!(claims(r#"{"exp":1700000000.9}"#).exp(), 1_700_000_000);
        assert_eq!(claims(r#"{"exp":-5}"#).exp(), 0);
        // Huge numbers neither panic nor wrap.
        assert_eq!(claims(r#"{"exp":1e300}"#).exp(), u64::MAX);
        assert_eq!(
            claims(r#"{"exp":123456789012345678901234567890}"#).exp(),
            u64::MAX
        );
        assert!(matches!(
            Claims::from_payload(br#"{"exp":1e400}"#),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn time_checks_with_leeway() {
        let c = claims(r#"{"exp":1000,"nbf":900}"#);
        assert_eq!(c.check_time(999, 0), Ok(()));
        assert_eq!(c.check_time(1000, 0), Err(AuthError::Expired));
        assert_eq!(c.check_time(1029, 30), Ok(()));
        assert_eq!(c.check_time(1030, 30), Err(AuthError::Expired));
        assert_eq!(c.check_time(899, 0), Err(AuthError::NotYetValid));
        assert_eq!(c.check_time(870, 30), Ok(()));
        assert_eq!(c.check_time(869, 30), Err(AuthError::NotYetValid));
        let far = claims(r#"{"exp":18446744073709551615}"#);
        assert_eq!(far.check_time(u64::MAX - 1, u64::MAX), Ok(()));
    }

    #[test]
    fn scopes_from_scope_or_scp() {
        let req = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = claims(r#"{"exp":1,"scope":"read  api write"}"#);
        assert_eq!(check_scopes(&c, &req(&["api", "read"])), Ok(()));
        assert_eq!(
            check_scopes(&c, &req(&["admin"])),
            Err(AuthError::InsufficientScope {
                required: "admin".into()
            })
        );
        let c = claims(r#"{"exp":1,"scp":["api","admin"]}"#);
        assert_eq!(check_scopes(&c, &req(&["admin", "api"])), Ok(()));
        let c = claims(r#"{"exp":1,"scp":"api"}"#);
        assert_eq!(check_scopes(&c, &req(&["api"])), Ok(()));
        let c = claims(r#"{"exp":1}"#);
        assert!(check_scopes(&c, &req(&["api"])).is_err());
        assert_eq!(check_scopes(&c, &[]), Ok(()));
        // A scope is a whole word, not a prefix.
        let c = claims(r#"{"exp":1,"scope":"apiv2"}"#);
        assert!(check_scopes(&c, &req(&["api"])).is_err());
    }

    fn fwd(pairs: &[(&str, &'static str)]) -> Vec<(String, HeaderName)> {
        pairs
            .iter()
            .map(|(c, h)| (c.to_string(), HeaderName::from_static(h)))
            .collect()
    }

    #[test]
    fn forwarded_header_values() {
        let c = claims(
            r#"{"exp":1,"sub":"user 1","n":42,"f":1.5,"admin":true,"roles":["a","b",3],
                "obj":{"k":"v"},"nothing":null}"#,
        );
        let f = fwd(&[
            ("sub", "x-auth-subject"),
            ("n", "x-n"),
            ("f", "x-f"),
            ("admin", "x-admin"),
            ("roles", "x-roles"),
            ("obj", "x-obj"),
            ("nothing", "x-nothing"),
            ("absent", "x-absent"),
        ]);
        let h = forward_headers(&c, &f).unwrap();
        let got: Vec<(&str, &str)> = h
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("x-auth-subject", "user 1"),
                ("x-n", "42"),
                ("x-f", "1.5"),
                ("x-admin", "true"),
                ("x-roles", "a b 3"),
                ("x-obj", r#"{"k":"v"}"#),
            ]
        );
    }

    #[test]
    fn forwarded_value_with_crlf_or_non_visible_refuses_token() {
        let f = fwd(&[("sub", "x-auth-subject")]);
        for bad in [
            r#"{"exp":1,"sub":"a\r\nX-Admin: 1"}"#,
            r#"{"exp":1,"sub":"a\nb"}"#,
            r#"{"exp":1,"sub":"tab\there"}"#,
            r#"{"exp":1,"sub":"nul\u0000"}"#,
            r#"{"exp":1,"sub":"caf\u00e9"}"#,
            r#"{"exp":1,"sub":["ok","b\r\nc"]}"#,
            r#"{"exp":1,"sub":[["nested"]]}"#,
        ] {
            assert_eq!(
                forward_headers(&claims(bad), &f),
                Err(AuthError::UnforwardableClaim),
                "{bad}"
            );
        }
    }

    #[test]
    fn client_claim_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.append("x-auth-subject", HeaderValue::from_static("admin"));
        h.append("x-auth-subject", HeaderValue::from_static("root"));
        h.append("X-Auth-Scope", HeaderValue::from_static("all"));
        h.append("x-other", HeaderValue::from_static("kept"));
        strip_client_claim_headers(
            &mut h,
            &[
                HeaderName::from_static("x-auth-subject"),
                HeaderName::from_static("x-auth-scope"),
            ],
        );
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-other"));
    }

    #[test]
    fn revocation_key_is_jti_or_token_hash() {
        let c = claims(r#"{"exp":1,"jti":"abc-123"}"#);
        assert_eq!(revocation_key(&c, "t.o.k"), "abc-123");
        let c = claims(r#"{"exp":1,"jti":""}"#);
        let k = revocation_key(&c, "abc");
        // SHA-256("abc")
        assert_eq!(
            k,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
