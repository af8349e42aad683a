//! CORS (the Fetch standard's CORS protocol): which origins may read a
//! route's responses, the answer to a preflight, and the headers added to
//! an actual cross-origin response. The gate answers preflights itself, so
//! the worker (and a Starlette `CORSMiddleware`) never sees them.
//!
//! Choices where design.md is silent, as Starlette's `CORSMiddleware` does
//! them (what the teams moving to the gate ran before):
//! - A preflight whose origin, method or headers are not allowed is refused
//!   with 400 `bad_request` saying which; an allowed one gets 204.
//! - An actual request from an origin that is not allowed is forwarded as
//!   is, without CORS headers: the browser then withholds the response.
//! - The CORS-safelisted request headers (accept, accept-language,
//!   content-language, content-type) are always allowed.
//! - `Access-Control-Allow-Origin: *` only with a `"*"` origin and without
//!   credentials; otherwise the request's origin is echoed and
//!   `Vary: Origin` added, so caches keep one answer per origin.
//! - CORS headers the worker set are replaced by the gate's, so a worker
//!   that still runs its own CORS middleware cannot produce duplicates.

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;

/// An allowed origin: `scheme://host[:port]`, or `scheme://*.domain[:port]`
/// for any subdomain of `domain` (not `domain` itself).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    /// (`scheme://`, `.domain[:port]`)
    Subdomain(String, String),
}

impl Pattern {
    fn parse(origin: &str) -> Pattern {
        let lower = origin.to_ascii_lowercase();
        match lower.split_once("://*.") {
            Some((scheme, rest)) => Pattern::Subdomain(format!("{scheme}://"), format!(".{rest}")),
            None => Pattern::Exact(lower),
        }
    }

    /// `origin` is already lowercase.
    fn matches(&self, origin: &str) -> bool {
        match self {
            Pattern::Exact(o) => o == origin,
            Pattern::Subdomain(scheme, suffix) => origin
                .strip_prefix(scheme.as_str())
                .and_then(|rest| rest.strip_suffix(suffix.as_str()))
                .is_some_and(|sub| !sub.is_empty() && !sub.contains(['/', ':', '@'])),
        }
    }
}

/// Headers a browser may send cross-origin without asking (Fetch §2.2.2);
/// listed in `Access-Control-Request-Headers` only with unusual values.
const SAFELISTED: [&str; 4] = [
    "accept",
    "accept-language",
    "content-language",
    "content-type",
];

/// One route's CORS policy, with its response header values built once.
#[derive(Debug, Clone)]
pub struct Policy {
    any_origin: bool,
    origins: Vec<Pattern>,
    methods: Vec<Method>,
    /// Configured plus safelisted, lowercase.
    headers: Vec<HeaderName>,
    credentials: bool,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
}

/// Why a preflight is refused; the text goes into the 400's detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PreflightError {
    #[error("CORS preflight: origin not allowed")]
    Origin,
    #[error("CORS preflight: method not allowed")]
    Method,
    #[error("CORS preflight: a requested header is not allowed")]
    Header,
}

impl PreflightError {
    /// The rejection's detail (the same text as `Display`).
    pub fn detail(self) -> &'static str {
        match self {
            PreflightError::Origin => "CORS preflight: origin not allowed",
            PreflightError::Method => "CORS preflight: method not allowed",
            PreflightError::Header => "CORS preflight: a requested header is not allowed",
        }
    }
}

static VARY_ORIGIN: HeaderValue = HeaderValue::from_static("origin");
static VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "origin, access-control-request-method, access-control-request-headers",
);
static STAR: HeaderValue = HeaderValue::from_static("*");
static TRUE: HeaderValue = HeaderValue::from_static("true");

/// Every response header this module sets; the worker's are dropped first.
const OWN_HEADERS: [HeaderName; 6] = [
    header::ACCESS_CONTROL_ALLOW_ORIGIN,
    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    header::ACCESS_CONTROL_EXPOSE_HEADERS,
    header::ACCESS_CONTROL_ALLOW_METHODS,
    header::ACCESS_CONTROL_ALLOW_HEADERS,
    header::ACCESS_CONTROL_MAX_AGE,
];

/// `a, b, c` as a header value. Header names and methods are tokens, so
/// the value is always valid; an item that were not is left out.
fn list_value<'a>(items: impl IntoIterator<Item = &'a str>) -> HeaderValue {
    let mut s = String::new();
    for item in items {
        if HeaderValue::from_str(item).is_err() {
            continue;
        }
        if !s.is_empty() {
            s.push_str(", ");
        }
        s.push_str(item);
    }
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""))
}

impl Policy {
    /// `origins` as validated by the config (`"*"`, or `scheme://host[:port]`
    /// with an optional `*.` before the host).
    pub fn new(
        origins: &[String],
        methods: &[Method],
        allow_headers: &[HeaderName],
        expose_headers: &[HeaderName],
        credentials: bool,
        max_age: Option<Duration>,
    ) -> Policy {
        let any_origin = origins.iter().any(|o| o == "*");
        let mut headers: Vec<HeaderName> = SAFELISTED
            .iter()
            .map(|h| HeaderName::from_static(h))
            .collect();
        for h in allow_headers {
            if !headers.contains(h) {
                headers.push(h.clone());
            }
        }
        Policy {
            any_origin,
            origins: origins
                .iter()
                .filter(|o| *o != "*")
                .map(|o| Pattern::parse(o))
                .collect(),
            methods: methods.to_vec(),
            allow_methods: list_value(methods.iter().map(|m| m.as_str())),
            allow_headers: list_value(headers.iter().map(|h| h.as_str())),
            headers,
            credentials,
            expose_headers: (!expose_headers.is_empty())
                .then(|| list_value(expose_headers.iter().map(|h| h.as_str()))),
            max_age: max_age.map(|d| HeaderValue::from(d.as_secs())),
        }
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, or `None` when
    /// it may not read responses.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.any_origin && !self.credentials {
            return Some(STAR.clone());
        }
        let text = origin.to_str().ok()?;
        let lower;
        let o = if text.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = text.to_ascii_lowercase();
            lower.as_str()
        } else {
            text
        };
        (self.any_origin || self.origins.iter().any(|p| p.matches(o))).then(|| origin.clone())
    }

    /// Whether the answer depends on the request's `Origin` (then caches
    /// must be told with `Vary: Origin`).
    fn varies(&self) -> bool {
        !self.any_origin || self.credentials
    }

    /// The preflight's answer headers (status 204), or why it is refused.
    /// `req` holds `Origin` and `Access-Control-Request-Method` (see
    /// [`preflight_method`]).
    pub fn preflight(&self, req: &HeaderMap) -> Result<HeaderMap, PreflightError> {
        let origin = req.get(header::ORIGIN).ok_or(PreflightError::Origin)?;
        let allow_origin = self.allow_origin(origin).ok_or(PreflightError::Origin)?;
        let method = preflight_method(req).ok_or(PreflightError::Method)?;
        if !self.methods.contains(&method) {
            return Err(PreflightError::Method);
        }
        for value in req.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            let list = value.to_str().map_err(|_| PreflightError::Header)?;
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if !self
                    .headers
                    .iter()
                    .any(|h| h.as_str().eq_ignore_ascii_case(name))
                {
                    return Err(PreflightError::Header);
                }
            }
        }
        let mut out = HeaderMap::with_capacity(8);
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if self.credentials {
            out.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE.clone());
        }
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone(),
        );
        out.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            self.allow_headers.clone(),
        );
        if let Some(age) = &self.max_age {
            out.insert(header::ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        out.insert(header::VARY, VARY_PREFLIGHT.clone());
        Ok(out)
    }

    /// Adds the CORS headers to the response of an actual request that came
    /// with `origin` (the worker's own CORS headers are replaced). An
    /// origin that is not allowed gets none.
    pub fn apply(&self, origin: &HeaderValue, resp: &mut HeaderMap) {
        for name in &OWN_HEADERS {
            resp.remove(name);
        }
        if self.varies() {
            add_vary_origin(resp);
        }
        let Some(allow_origin) = self.allow_origin(origin) else {
            return;
        };
        resp.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if self.credentials {
            resp.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE.clone());
        }
        if let Some(expose) = &self.expose_headers {
            resp.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

/// The method a preflight asks about: an `OPTIONS` request with `Origin`
/// and `Access-Control-Request-Method` is a preflight; anything else is
/// `None` (an ordinary request, OPTIONS included).
pub fn preflight_method(req: &HeaderMap) -> Option<Method> {
    if !req.contains_key(header::ORIGIN) {
        return None;
    }
    let m = req.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
    Method::from_bytes(m.as_bytes()).ok()
}

/// `Vary: origin` merged into what is there (`*` already covers it).
fn add_vary_origin(resp: &mut HeaderMap) {
    let mut merged = String::new();
    for v in resp.get_all(header::VARY) {
        let Ok(s) = v.to_str() else { continue };
        for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token == "*" || token.eq_ignore_ascii_case("origin") {
                return;
            }
            if !merged.is_empty() {
                merged.push_str(", ");
            }
            merged.push_str(token);
        }
    }
    if merged.is_empty() {
        resp.insert(header::VARY, VARY_ORIGIN.clone());
        return;
    }
    merged.push_str(", origin");
    if let Ok(v) = HeaderValue::from_str(&merged) {
        resp.insert(header::VARY, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(origins: &[&str], credentials: bool) -> Policy {
        Policy::new(
            &origins.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            &[Method::GET, Method::POST, Method::DELETE],
            &[header::AUTHORIZATION, HeaderName::from_static("x-api-key")],
            &[HeaderName::from_static("x-request-id")],
            credentials,
            Some(Duration::from_secs(600)),
        )
    }

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
        h.get(name).map(|v| v.to_str().unwrap())
    }

    const ORIGINS: [&str; 2] = ["https://app.example.com", "https://*.example.org"];

    #[test]
    fn origins_exact_and_by_subdomain() {
        let p = policy(&ORIGINS, true);
        let ok = |o: &str| p.allow_origin(&HeaderValue::from_str(o).unwrap()).is_some();
        assert!(ok("https://app.example.com"));
        assert!(
            ok("HTTPS://App.Example.com"),
            "scheme and host are case-insensitive"
        );
        assert!(!ok("http://app.example.com"), "the scheme counts");
        assert!(!ok("https://app.example.com:8443"), "the port counts");
        assert!(!ok("https://app.example.com.evil.net"));
        assert!(!ok("https://evilapp.example.com"));
        assert!(ok("https://a.example.org"));
        assert!(ok("https://a.b.example.org"));
        assert!(!ok("https://example.org"), "*. needs a subdomain");
        assert!(!ok("https://a.example.org:444"));
        assert!(!ok("https://evil.net/.example.org"));
        assert!(!ok("https://evilexample.org"));
        assert!(!ok("null"));
    }

    #[test]
    fn allowed_preflight_gets_every_header() {
        let p = policy(&ORIGINS, true);
        let h = p
            .preflight(&req(&[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "DELETE"),
                (
                    "access-control-request-headers",
                    "Authorization, content-type,x-api-key",
                ),
            ]))
            .unwrap();
        assert_eq!(
            get(&h, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(get(&h, "access-control-allow-credentials"), Some("true"));
        assert_eq!(
            get(&h, "access-control-allow-methods"),
            Some("GET, POST, DELETE")
        );
        let allowed = get(&h, "access-control-allow-headers").unwrap();
        assert!(allowed.contains("authorization") && allowed.contains("x-api-key"));
        assert!(
            allowed.contains("content-type"),
            "safelisted headers are allowed"
        );
        assert_eq!(get(&h, "access-control-max-age"), Some("600"));
        assert!(get(&h, "vary").unwrap().starts_with("origin"));
    }

    #[test]
    fn refused_preflights_say_why() {
        let p = policy(&ORIGINS, false);
        let pre = |pairs: &[(&str, &str)]| p.preflight(&req(pairs));
        assert_eq!(
            pre(&[
                ("origin", "https://evil.net"),
                ("access-control-request-method", "GET")
            ]),
            Err(PreflightError::Origin)
        );
        assert_eq!(
            pre(&[
                ("origin", ORIGINS[0]),
                ("access-control-request-method", "PUT")
            ]),
            Err(PreflightError::Method)
        );
        assert_eq!(
            pre(&[
                ("origin", ORIGINS[0]),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "authorization, x-secret"),
            ]),
            Err(PreflightError::Header)
        );
    }

    #[test]
    fn preflight_is_options_with_origin_and_method() {
        let full = req(&[
            ("origin", "https://a.b"),
            ("access-control-request-method", "PUT"),
        ]);
        assert_eq!(preflight_method(&full), Some(Method::PUT));
        assert_eq!(preflight_method(&req(&[("origin", "https://a.b")])), None);
        assert_eq!(
            preflight_method(&req(&[("access-control-request-method", "PUT")])),
            None
        );
    }

    #[test]
    fn star_without_credentials_is_star_and_does_not_vary() {
        let p = policy(&["*"], false);
        let mut resp = HeaderMap::new();
        p.apply(&HeaderValue::from_static("https://anyone.net"), &mut resp);
        assert_eq!(get(&resp, "access-control-allow-origin"), Some("*"));
        assert_eq!(get(&resp, "vary"), None);
        assert_eq!(
            get(&resp, "access-control-expose-headers"),
            Some("x-request-id")
        );
        assert_eq!(get(&resp, "access-control-allow-credentials"), None);
    }

    #[test]
    fn actual_response_echoes_allowed_origin_and_replaces_the_workers() {
        let p = policy(&ORIGINS, true);
        let mut resp = req(&[
            ("access-control-allow-origin", "*"),
            ("access-control-allow-methods", "PATCH"),
            ("vary", "Accept-Encoding"),
        ]);
        p.apply(
            &HeaderValue::from_static("https://x.example.org"),
            &mut resp,
        );
        assert_eq!(
            get(&resp, "access-control-allow-origin"),
            Some("https://x.example.org")
        );
        assert_eq!(
            resp.get_all("access-control-allow-origin").iter().count(),
            1
        );
        assert_eq!(get(&resp, "access-control-allow-methods"), None);
        assert_eq!(get(&resp, "access-control-allow-credentials"), Some("true"));
        assert_eq!(get(&resp, "vary"), Some("Accept-Encoding, origin"));

        // Not allowed: no CORS headers at all (the worker's are gone too).
        let mut resp = req(&[("access-control-allow-origin", "*")]);
        p.apply(&HeaderValue::from_static("https://evil.net"), &mut resp);
        assert_eq!(get(&resp, "access-control-allow-origin"), None);
        assert_eq!(get(&resp, "vary"), Some("origin"));
    }

    #[test]
    fn vary_is_merged_once() {
        let mut h = req(&[("vary", "origin")]);
        add_vary_origin(&mut h);
        assert_eq!(get(&h, "vary"), Some("origin"));
        let mut h = req(&[("vary", "*")]);
        add_vary_origin(&mut h);
        assert_eq!(get(&h, "vary"), Some("*"));
        let mut h = req(&[("vary", "accept"), ("vary", "cookie")]);
        add_vary_origin(&mut h);
        assert_eq!(get(&h, "vary"), Some("accept, cookie, origin"));
    }
}
