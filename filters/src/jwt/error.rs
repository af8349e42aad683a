//! Why a JWT policy refused a request and how the client is told (RFC 6750):
//! the status, the `WWW-Authenticate` challenge and the code of the JSON body
//! (design.md, Rejections). No variant carries the token or any part of it,
//! so an error can be logged and shown as is.

use http::HeaderValue;

pub const REALM: &str = "asgi-gate";

/// A refused request. Every description is a fixed text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No bearer token at all: 401 without an error code (RFC 6750 §3.1).
    #[error("no bearer token")]
    Missing,
    /// A token in both the header and the query, or twice: 400 invalid_request.
    #[error("more than one bearer token in the request")]
    MultipleTokens,
    #[error("token too large")]
    TooLarge,
    /// The fixed text says which part was malformed.
    #[error("{0}")]
    Malformed(&'static str),
    /// The header's `alg` is not in the policy's list (`none` never is).
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// No key with the token's `kid`: the caller may refresh a remote JWKS.
    #[error("unknown signing key")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("token has no expiry (exp)")]
    MissingExpiry,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong audience")]
    WrongAudience,
    #[error("token revoked")]
    Revoked,
    /// A claim to forward holds CR/LF or characters that are not visible ASCII.
    #[error("claim value cannot be forwarded")]
    UnforwardableClaim,
    /// 403; `required` is the route's scope list, space-separated (from config).
    #[error("insufficient scope")]
    InsufficientScope { required: String },
}

impl AuthError {
    /// HTTP status of the rejection.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::MultipleTokens => 400,
            AuthError::InsufficientScope { .. } => 403,
            _ => 401,
        }
    }

    /// RFC 6750 `error` attribute; none when no token was sent.
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            AuthError::Missing => None,
            AuthError::MultipleTokens => Some("invalid_request"),
            AuthError::InsufficientScope { .. } => Some("insufficient_scope"),
            _ => Some("invalid_token"),
        }
    }

    /// The `error` field of the JSON body (design.md, Rejections).
    pub fn body_code(&self) -> &'static str {
        match self {
            AuthError::Missing => "unauthorized",
            AuthError::MultipleTokens => "bad_request",
            AuthError::InsufficientScope { .. } => "insufficient_scope",
            _ => "invalid_token",
        }
    }

    /// Short human text for `error_description` and the body's `detail`.
    pub fn description(&self) -> &'static str {
        match self {
            AuthError::Missing => "no bearer token",
            AuthError::MultipleTokens => "more than one bearer token in the request",
            AuthError::TooLarge => "token too large",
            AuthError::Malformed(what) => what,
            AuthError::AlgorithmNotAllowed => "algorithm not allowed",
            AuthError::UnknownKey => "unknown signing key",
            AuthError::BadSignature => "bad signature",
            AuthError::MissingExpiry => "token has no expiry (exp)",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::WrongIssuer => "wrong issuer",
            AuthError::WrongAudience => "wrong audience",
            AuthError::Revoked => "token revoked",
            AuthError::UnforwardableClaim => "claim value cannot be forwarded",
            AuthError::InsufficientScope { .. } => "token lacks a required scope",
        }
    }

    /// True when a remote key set should be refreshed (rate-limited by the caller).
    pub fn wants_key_refresh(&self) -> bool {
        matches!(self, AuthError::UnknownKey)
    }
}

/// The `WWW-Authenticate` value for a rejection: `Bearer realm="asgi-gate"`,
/// plus `error` and `error_description` when a token was sent, plus `scope`
/// for `insufficient_scope` (RFC 6750 §3).
pub fn www_authenticate(err: &AuthError) -> HeaderValue {
    let Some(code) = err.error_code() else {
        return HeaderValue::from_static("Bearer realm=\"asgi-gate\"");
    };
    let mut v = format!(
        "Bearer realm=\"{REALM}\", error=\"{code}\", error_description=\"{}\"",
        quote(err.description())
    );
    if let AuthError::InsufficientScope { required } = err {
        v.push_str(&format!(", scope=\"{}\"", quote(required)));
    }
    HeaderValue::from_str(&v)
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"asgi-gate\""))
}

/// The inside of a quoted-string: `"` and `\` escaped, anything that is not
/// visible ASCII or space dropped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_token_has_no_error_code() {
        let v = www_authenticate(&AuthError::Missing);
        assert_eq!(v, "Bearer realm=\"asgi-gate\"");
        assert_eq!(AuthError::Missing.status(), 401);
        assert_eq!(AuthError::Missing.body_code(), "unauthorized");
    }

    #[test]
    fn invalid_token_challenge() {
        let v = www_authenticate(&AuthError::Expired);
        assert_eq!(
            v,
            "Bearer realm=\"asgi-gate\", error=\"invalid_token\", error_description=\"token expired\""
        );
        assert_eq!(AuthError::Expired.body_code(), "invalid_token");
        let v = www_authenticate(&AuthError::Malformed("malformed token: bad base64"));
        assert!(v
            .to_str()
            .unwrap()
            .contains("error_description=\"malformed token: bad base64\""));
    }

    #[test]
    fn insufficient_scope_is_403_with_scope() {
        let e = AuthError::InsufficientScope {
            required: "api admin".into(),
        };
        assert_eq!(e.status(), 403);
        assert_eq!(
            www_authenticate(&e),
            "Bearer realm=\"asgi-gate\", error=\"insufficient_scope\", error_description=\"token lacks a required scope\", scope=\"api admin\""
        );
    }

    #[test]
    fn multiple_tokens_is_invalid_request() {
        assert_eq!(AuthError::MultipleTokens.status(), 400);
        assert!(www_authenticate(&AuthError::MultipleTokens)
            .to_str()
            .unwrap()
            .contains("error=\"invalid_request\""));
    }

    #[test]
    fn quoting_escapes_and_drops() {
        assert_eq!(quote("a\"b\\c\r\nd\u{e9}"), "a\\\"b\\\\cd");
        let e = AuthError::InsufficientScope {
            required: "x\"y\r\n".into(),
        };
        assert!(www_authenticate(&e)
            .to_str()
            .unwrap()
            .ends_with("scope=\"x\\\"y\""));
    }

    #[test]
    fn only_unknown_key_asks_for_refresh() {
        assert!(AuthError::UnknownKey.wants_key_refresh());
        assert!(!AuthError::BadSignature.wants_key_refresh());
    }
}
