//! `security_headers`: response headers the gate adds when the worker did
//! not set them, and headers it removes (e.g. `server`). HSTS is sent on
//! TLS responses only (RFC 6797 §7.2: never over plain HTTP).

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub hsts: Option<Duration>,
    pub content_type_options: Option<HeaderValue>,
    pub referrer_policy: Option<HeaderValue>,
    pub frame_options: Option<HeaderValue>,
    pub remove: Vec<HeaderName>,
}

static REFERRER_POLICY: HeaderName = HeaderName::from_static("referrer-policy");

/// Applies the policy to a response's headers.
pub fn apply(headers: &mut HeaderMap, policy: &Policy, tls: bool) {
    for name in &policy.remove {
        headers.remove(name);
    }
    let mut add = |name: &HeaderName, value: &Option<HeaderValue>| {
        if let Some(v) = value {
            if !headers.contains_key(name) {
                headers.insert(name.clone(), v.clone());
            }
        }
    };
    add(
        &header::X_CONTENT_TYPE_OPTIONS,
        &policy.content_type_options,
    );
    add(&REFERRER_POLICY, &policy.referrer_policy);
    add(&header::X_FRAME_OPTIONS, &policy.frame_options);
    if let (true, Some(age)) = (tls, policy.hsts) {
        if !headers.contains_key(header::STRICT_TRANSPORT_SECURITY) {
            let v = format!("max-age={}", age.as_secs());
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(header::STRICT_TRANSPORT_SECURITY, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            hsts: Some(Duration::from_secs(86_400)),
            content_type_options: Some(HeaderValue::from_static("nosniff")),
            referrer_policy: Some(HeaderValue::from_static("no-referrer")),
            frame_options: Some(HeaderValue::from_static("DENY")),
            remove: vec![header::SERVER],
        }
    }

    #[test]
    fn adds_missing_keeps_workers_and_removes() {
        let mut h = HeaderMap::new();
        h.insert(header::SERVER, HeaderValue::from_static("uvicorn"));
        h.insert(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("SAMEORIGIN"),
        );
        apply(&mut h, &policy(), false);
        assert!(h.get(header::SERVER).is_none());
        assert_eq!(h[header::X_FRAME_OPTIONS], "SAMEORIGIN");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert!(
            h.get(header::STRICT_TRANSPORT_SECURITY).is_none(),
            "no HSTS over plain HTTP"
        );
        apply(&mut h, &policy(), true);
        assert_eq!(h[header::STRICT_TRANSPORT_SECURITY], "max-age=86400");
    }
}
