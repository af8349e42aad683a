//! `Cache-Control` as a shared cache reads it (RFC 9111 §5.2). Unknown
//! directives are ignored (§5.2.3); a directive given twice with different
//! values makes its value unusable, read as the stricter meaning
//! (§4.2.1: "invalid ... treated as stale").

use http::header::{self, HeaderMap};

/// The response directives the cache acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseControl {
    pub public: bool,
    /// `private`, with or without a field list: never stored (§5.2.2.7).
    pub private: bool,
    pub no_store: bool,
    /// With or without a field list: not stored here (stored-then-always-
    /// revalidated would send every request to the worker anyway).
    pub no_cache: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    /// Seconds; `Some(0)` when malformed (stale at once, §4.2.1).
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    /// RFC 5861 §3, seconds.
    pub stale_while_revalidate: Option<u64>,
    /// RFC 5861 §4, seconds.
    pub stale_if_error: Option<u64>,
}

/// The request directives the cache acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestControl {
    /// `no-store` on a request: neither served from nor stored (§5.2.1.5).
    pub no_store: bool,
}

/// Splits every `Cache-Control` field line into (lower-case name, value
/// without quotes), in order.
fn directives(headers: &HeaderMap) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(split_list)
        .map(|d| match d.split_once('=') {
            Some((n, v)) => (
                n.trim().to_ascii_lowercase(),
                Some(v.trim().trim_matches('"').to_string()),
            ),
            None => (d.trim().to_ascii_lowercase(), None),
        })
}

/// Comma-separated items, commas inside a quoted string kept
/// (`no-cache="a, b"`).
fn split_list(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect()
}

/// A delta-seconds value (§1.2.2): digits only; too large saturates.
fn delta_seconds(v: Option<&str>) -> Option<u64> {
    let v = v?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u64>().unwrap_or(u64::MAX))
}

/// A second, different value for the same directive is as bad as a
/// malformed one: the smaller wins, so the response is never fresher than
/// either line says.
fn set_seconds(slot: &mut Option<u64>, value: Option<&str>) {
    let parsed = delta_seconds(value).unwrap_or(0);
    *slot = Some(match *slot {
        Some(prev) => prev.min(parsed),
        None => parsed,
    });
}

impl ResponseControl {
    pub fn parse(headers: &HeaderMap) -> ResponseControl {
        let mut c = ResponseControl::default();
        for (name, value) in directives(headers) {
            let v = value.as_deref();
            match name.as_str() {
                "public" => c.public = true,
                "private" => c.private = true,
                "no-store" => c.no_store = true,
                "no-cache" => c.no_cache = true,
                "must-revalidate" => c.must_revalidate = true,
                "proxy-revalidate" => c.proxy_revalidate = true,
                "max-age" => set_seconds(&mut c.max_age, v),
                "s-maxage" => set_seconds(&mut c.s_maxage, v),
                "stale-while-revalidate" => set_seconds(&mut c.stale_while_revalidate, v),
                "stale-if-error" => set_seconds(&mut c.stale_if_error, v),
                _ => {}
            }
        }
        c
    }

    /// May a stale copy be served at all (RFC 9111 §4.2.4, §5.2.2.2, §5.2.2.8)?
    pub fn allows_stale(&self) -> bool {
        !self.must_revalidate && !self.proxy_revalidate
    }
}

impl RequestControl {
    pub fn parse(headers: &HeaderMap) -> RequestControl {
        RequestControl {
            no_store: directives(headers).any(|(n, _)| n == "no-store"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cc(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn parses_the_directives_it_acts_on() {
        let c = ResponseControl::parse(&cc(&[
            "Public, MAX-AGE=60, s-maxage=\"120\"",
            "stale-while-revalidate=30, stale-if-error=600, x-ext=1",
        ]));
        assert!(c.public && !c.private && !c.no_store);
        assert_eq!(c.max_age, Some(60));
        assert_eq!(c.s_maxage, Some(120));
        assert_eq!(c.stale_while_revalidate, Some(30));
        assert_eq!(c.stale_if_error, Some(600));
        assert!(c.allows_stale());
    }

    #[test]
    fn malformed_or_conflicting_ages_are_stale() {
        assert_eq!(
            ResponseControl::parse(&cc(&["max-age=abc"])).max_age,
            Some(0)
        );
        assert_eq!(
            ResponseControl::parse(&cc(&["max-age=-5"])).max_age,
            Some(0)
        );
        assert_eq!(
            ResponseControl::parse(&cc(&["max-age=60", "max-age=10"])).max_age,
            Some(10)
        );
        assert_eq!(
            ResponseControl::parse(&cc(&["max-age=99999999999999999999999"])).max_age,
            Some(u64::MAX)
        );
    }

    #[test]
    fn private_and_no_cache_with_field_lists() {
        let c = ResponseControl::parse(&cc(&["private=\"set-cookie, x-a\", max-age=5"]));
        assert!(c.private);
        assert_eq!(c.max_age, Some(5));
        let c = ResponseControl::parse(&cc(&["no-cache=\"a,b\""]));
        assert!(c.no_cache);
    }

    #[test]
    fn revalidation_directives_forbid_stale() {
        assert!(!ResponseControl::parse(&cc(&["must-revalidate"])).allows_stale());
        assert!(!ResponseControl::parse(&cc(&["proxy-revalidate"])).allows_stale());
    }

    #[test]
    fn request_no_store() {
        assert!(RequestControl::parse(&cc(&["max-age=0, No-Store"])).no_store);
        assert!(!RequestControl::parse(&cc(&["no-cache"])).no_store);
    }
}
