//! The response headers of a limit: `RateLimit-Policy` and `RateLimit`
//! (draft-ietf-httpapi-ratelimit-headers-09, structured-field form) and
//! `Retry-After`. The mapping from GCRA is in the `ratelimit` module docs.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

/// `RateLimit` response header (draft-ietf-httpapi-ratelimit-headers-09).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `RateLimit-Policy` response header (draft-ietf-httpapi-ratelimit-headers-09).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// One limit's name and policy, formatted once when the limit is built; the
/// per-request values only add numbers to them.
pub(super) struct PolicyHeaders {
    /// The name as a structured-field String, quotes included.
    sf_name: Box<str>,
    /// The `RateLimit-Policy` value.
    policy: HeaderValue,
}

impl PolicyHeaders {
    /// The headers of the limit `name` at `count` per `per`; `None` when the
    /// name cannot be a structured-field String (not printable ASCII).
    pub(super) fn new(name: &str, count: u32, per: Duration) -> Option<Self> {
        let sf_name = sf_string(name)?;
        let window = whole_seconds_up(per).max(1);
        let policy = header_value(format!("{sf_name};q={count};w={window}"))?;
        Some(PolicyHeaders {
            sf_name: sf_name.into_boxed_str(),
            policy,
        })
    }

    /// `RateLimit-Policy` value, e.g. `"per_ip";q=100;w=1`.
    pub(super) fn policy(&self) -> HeaderValue {
        self.policy.clone()
    }

    /// `RateLimit` value for an allowed request, e.g. `"per_ip";r=99;t=1`:
    /// `remaining` requests would pass now, the bucket is full after `reset`.
    pub(super) fn allowed(&self, remaining: u32, reset: Duration) -> HeaderValue {
        self.ratelimit(remaining, whole_seconds_up(reset))
    }

    /// `RateLimit-Policy` and `RateLimit` for an allowed request, appended
    /// (several limits each add their own line).
    pub(super) fn append_allowed(&self, remaining: u32, reset: Duration, out: &mut HeaderMap) {
        out.append(RATELIMIT_POLICY.clone(), self.policy());
        out.append(RATELIMIT.clone(), self.allowed(remaining, reset));
    }

    /// `Retry-After`, `RateLimit-Policy` and `RateLimit` for a 429 whose
    /// client must wait `wait`.
    pub(super) fn limited(&self, wait: Duration) -> [(HeaderName, HeaderValue); 3] {
        let secs = retry_after_secs(wait);
        [
            (RETRY_AFTER, HeaderValue::from(secs)),
            (RATELIMIT_POLICY.clone(), self.policy()),
            (RATELIMIT.clone(), self.ratelimit(0, secs)),
        ]
    }

    fn ratelimit(&self, remaining: u32, reset_secs: u64) -> HeaderValue {
        let text = format!("{};r={remaining};t={reset_secs}", self.sf_name);
        // The name was checked at construction; digits are always valid.
        header_value(text).unwrap_or_else(|| HeaderValue::from_static(""))
    }
}

/// `Retry-After` seconds for a wait: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    whole_seconds_up(wait).max(1)
}

/// Whole seconds in `d`, rounded up.
fn whole_seconds_up(d: Duration) -> u64 {
    let secs = d.as_secs();
    if d.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

/// A structured-field String (RFC 8941 §3.3.3): printable ASCII, with `"`
/// and `\` escaped; `None` for anything else.
fn sf_string(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => return None,
        }
    }
    out.push('"');
    Some(out)
}

fn header_value(text: String) -> Option<HeaderValue> {
    HeaderValue::try_from(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::test_support::{ipk, limit, per_sec};
    use crate::ratelimit::{KeyKind, LimitParams};

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1200)), 2);
        assert_eq!(retry_after_secs(Duration::new(2, 1)), 3);
        // Through a limit: one request per 1.2 s.
        let p = LimitParams::new(KeyKind::ClientIp, 1, Duration::from_millis(1200));
        let (l, clock) = limit("slow", p);
        let k = ipk("1.2.3.4");
        l.check(&k).unwrap();
        let refused = l.check(&k).unwrap_err();
        assert_eq!(refused.wait, Duration::from_millis(1200));
        let h = l.limited_headers(&refused);
        assert_eq!(h[0].1, "2");
        clock.advance(Duration::from_millis(1100));
        let h = l.limited_headers(&l.check(&k).unwrap_err());
        assert_eq!(h[0].1, "1");
        assert_eq!(h[2].1, "\"slow\";r=0;t=1");
    }

    #[test]
    fn header_formats() {
        let mut p = per_sec(100);
        p.burst = Some(200);
        let (l, _clock) = limit("per_ip", p);
        assert_eq!(l.policy_header(), "\"per_ip\";q=100;w=1");
        let k = ipk("1.2.3.4");
        let a = l.check(&k).unwrap();
        assert_eq!(l.allowed_header(&a), "\"per_ip\";r=199;t=1");
        for _ in 0..199 {
            l.check(&k).unwrap();
        }
        let refused = l.check(&k).unwrap_err();
        let h = l.limited_headers(&refused);
        assert_eq!(h[0].0, RETRY_AFTER);
        assert_eq!(h[0].1, "1");
        assert_eq!(h[1].0, "ratelimit-policy");
        assert_eq!(h[1].1, "\"per_ip\";q=100;w=1");
        assert_eq!(h[2].0, "ratelimit");
        assert_eq!(h[2].1, "\"per_ip\";r=0;t=1");

        let (l, _clock) = limit(
            "per_key",
            LimitParams::new(KeyKind::ClientIp, 1000, Duration::from_secs(60)),
        );
        assert_eq!(l.policy_header(), "\"per_key\";q=1000;w=60");
        let a = l.check(&k).unwrap();
        // 60 ms to refill the one used cell → rounded up to 1 s.
        assert_eq!(l.allowed_header(&a), "\"per_key\";r=999;t=1");

        let (l, _clock) = limit("a\"b\\c d", per_sec(3));
        assert_eq!(l.policy_header(), "\"a\\\"b\\\\c d\";q=3;w=1");
        let mut out = HeaderMap::new();
        l.append_allowed_headers(&l.check(&k).unwrap(), &mut out);
        assert_eq!(out[&RATELIMIT_POLICY], "\"a\\\"b\\\\c d\";q=3;w=1");
        assert_eq!(out[&RATELIMIT], "\"a\\\"b\\\\c d\";r=2;t=1");
    }
}
