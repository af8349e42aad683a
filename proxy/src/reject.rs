//! The one place where a refusal becomes an HTTP response: status, the small
//! JSON body `{"error", "detail"}` and the standard headers. Nothing else in
//! the gate builds an error response.

use std::cell::RefCell;
use std::collections::HashMap;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use asgi_gate_filters::jwt::{self, AuthError};
use asgi_gate_filters::limits::LimitError;
use asgi_gate_filters::ranges;

use crate::body::{BufferError, GateBody};
use crate::gate::router::NoRoute;
use crate::steps::compress::CompressError;
use crate::steps::static_files::NotServed;
use crate::steps::websocket::ExtensionAgreed;
use crate::upstream::UpstreamError;

/// Every way the gate answers a request itself instead of the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    BadRequest(&'static str),
    /// 400/401/403 from a JWT policy, with its RFC 6750 challenge.
    Auth(AuthError),
    /// 403 for something the gate will not do as configured.
    Forbidden(&'static str),
    NotFound,
    /// The `Allow` header value: the methods the path does accept.
    MethodNotAllowed(HeaderValue),
    PayloadTooLarge,
    /// The request body stalled past `body_timeout`.
    RequestTimeout,
    HeadersTooLarge,
    /// `Retry-After`, `RateLimit-Policy`, `RateLimit` of the limit that refused.
    RateLimited(Box<[(HeaderName, HeaderValue); 3]>),
    /// 416 on a static route: the representation's length (for
    /// `Content-Range: bytes */len`), and whether it varies on
    /// `Accept-Encoding` (a precompressed route).
    RangeNotSatisfiable {
        len: u64,
        vary: bool,
    },
    BadGateway,
    ServiceUnavailable,
    GatewayTimeout,
}

// What each module's own error means for the client. Only here does an
// error become a status.

impl From<AuthError> for Reject {
    fn from(e: AuthError) -> Self {
        Reject::Auth(e)
    }
}

impl From<LimitError> for Reject {
    fn from(e: LimitError) -> Self {
        match e {
            LimitError::HeadersTooLarge { .. } => Reject::HeadersTooLarge,
            LimitError::BodyTooLarge { .. } => Reject::PayloadTooLarge,
            LimitError::BadContentLength => Reject::BadRequest("invalid Content-Length"),
        }
    }
}

impl From<NoRoute> for Reject {
    fn from(e: NoRoute) -> Self {
        match e {
            NoRoute::NotFound => Reject::NotFound,
            NoRoute::MethodNotAllowed(allow) => Reject::MethodNotAllowed(allow),
        }
    }
}

impl From<NotServed> for Reject {
    fn from(e: NotServed) -> Self {
        match e {
            NotServed::NotFound => Reject::NotFound,
            NotServed::MethodNotAllowed => {
                Reject::MethodNotAllowed(HeaderValue::from_static("GET, HEAD"))
            }
            NotServed::RangeNotSatisfiable { len, vary } => {
                Reject::RangeNotSatisfiable { len, vary }
            }
        }
    }
}

impl From<UpstreamError> for Reject {
    fn from(e: UpstreamError) -> Self {
        match e {
            UpstreamError::NoWorker | UpstreamError::Unreachable | UpstreamError::Failed => {
                Reject::BadGateway
            }
            // Busy, but answering: retry later.
            UpstreamError::Busy | UpstreamError::Shed | UpstreamError::QueueTimeout => {
                Reject::ServiceUnavailable
            }
            UpstreamError::TimedOut => Reject::GatewayTimeout,
            UpstreamError::BodyTooLarge => Reject::PayloadTooLarge,
            UpstreamError::BodyCutOff => {
                Reject::BadRequest("the request body was cut off or malformed")
            }
            UpstreamError::BodyTimedOut => Reject::RequestTimeout,
        }
    }
}

impl From<BufferError> for Reject {
    fn from(e: BufferError) -> Self {
        match e {
            BufferError::TimedOut => Reject::GatewayTimeout,
            BufferError::Worker(_) => Reject::BadGateway,
        }
    }
}

impl From<CompressError> for Reject {
    fn from(_: CompressError) -> Self {
        Reject::BadGateway
    }
}

impl From<ExtensionAgreed> for Reject {
    fn from(_: ExtensionAgreed) -> Self {
        Reject::BadGateway
    }
}

impl Reject {
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::BadRequest(_) => StatusCode::BAD_REQUEST,
            Reject::Auth(e) => StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED),
            Reject::Forbidden(_) => StatusCode::FORBIDDEN,
            Reject::NotFound => StatusCode::NOT_FOUND,
            Reject::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Reject::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Reject::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Reject::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Reject::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Reject::BadGateway => StatusCode::BAD_GATEWAY,
            Reject::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Reject::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `reason` label of `asgi_gate_rejections_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::BadRequest(_) => "bad_request",
            Reject::Auth(AuthError::Revoked) => "revoked",
            Reject::Auth(_) => "auth",
            Reject::Forbidden(_) => "forbidden",
            Reject::NotFound | Reject::MethodNotAllowed(_) => "no_route",
            Reject::PayloadTooLarge => "body_limit",
            Reject::RequestTimeout => "body_timeout",
            Reject::HeadersTooLarge => "header_limit",
            Reject::RateLimited(_) => "rate_limit",
            Reject::RangeNotSatisfiable { .. } => "range",
            Reject::BadGateway | Reject::ServiceUnavailable | Reject::GatewayTimeout => "upstream",
        }
    }

    /// The machine-readable code in the body (design.md "Rejections").
    pub fn code(&self) -> &'static str {
        match self {
            Reject::BadRequest(_) => "bad_request",
            Reject::Auth(e) => e.body_code(),
            Reject::Forbidden(_) => "forbidden",
            Reject::NotFound => "not_found",
            Reject::MethodNotAllowed(_) => "method_not_allowed",
            Reject::PayloadTooLarge => "payload_too_large",
            Reject::RequestTimeout => "request_timeout",
            Reject::HeadersTooLarge => "headers_too_large",
            Reject::RateLimited(_) => "rate_limited",
            Reject::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            Reject::BadGateway => "bad_gateway",
            Reject::ServiceUnavailable => "service_unavailable",
            Reject::GatewayTimeout => "gateway_timeout",
        }
    }

    fn detail(&self) -> &'static str {
        match self {
            Reject::BadRequest(why) => why,
            Reject::Auth(e) => e.description(),
            Reject::Forbidden(why) => why,
            Reject::NotFound => "no route matches this path",
            Reject::MethodNotAllowed(_) => "this path does not accept this method",
            Reject::PayloadTooLarge => "request body is larger than the gate accepts",
            Reject::RequestTimeout => "the request body stopped arriving",
            Reject::HeadersTooLarge => "request headers are larger than the gate accepts",
            Reject::RateLimited(_) => "too many requests; retry after the time in Retry-After",
            Reject::RangeNotSatisfiable { .. } => {
                "no byte of the requested range is in the file; its length is in Content-Range"
            }
            Reject::BadGateway => "the application is not reachable",
            Reject::ServiceUnavailable => "the application is busy; retry later",
            Reject::GatewayTimeout => "the application did not answer in time",
        }
    }
}

/// The body and the `WWW-Authenticate` challenge of a rejection, built once
/// per (code, detail) pair and per thread: both are fixed texts (only an
/// `insufficient_scope` challenge names the route's scopes, so it is built
/// each time). Cloning them is a reference count, not a copy.
#[derive(Clone)]
struct Prepared {
    body: Bytes,
    challenge: Option<HeaderValue>,
}

/// Fixed texts only, so the map stays small; the bound is a safety net.
const PREPARED_MAX: usize = 256;

fn prepared(rej: &Reject) -> Prepared {
    thread_local! {
        static PREPARED: RefCell<HashMap<(usize, usize), Prepared>> = RefCell::new(HashMap::new());
    }
    let (code, detail) = (rej.code(), rej.detail());
    let cacheable = !matches!(rej, Reject::Auth(AuthError::InsufficientScope { .. }));
    let key = (code.as_ptr() as usize, detail.as_ptr() as usize);
    if cacheable {
        if let Some(p) = PREPARED.with_borrow(|m| m.get(&key).cloned()) {
            return p;
        }
    }
    let mut body = String::with_capacity(26 + code.len() + detail.len());
    body.push_str("{\"error\":");
    crate::json::push_json_str(&mut body, code);
    body.push_str(",\"detail\":");
    crate::json::push_json_str(&mut body, detail);
    body.push('}');
    let p = Prepared {
        body: Bytes::from(body),
        challenge: match rej {
            // A malformed request (400) gets no challenge: RFC 6750 §3.1.
            Reject::Auth(e) if e.status() != 400 => Some(jwt::www_authenticate(e)),
            _ => None,
        },
    };
    if cacheable {
        PREPARED.with_borrow_mut(|m| {
            if m.len() < PREPARED_MAX {
                m.insert(key, p.clone());
            }
        });
    }
    p
}

pub fn response(rej: &Reject) -> Response<GateBody> {
    // Runs for every refused request, floods included: the texts are
    // prepared once (see `prepared`).
    let Prepared { body, challenge } = prepared(rej);
    let mut resp = Response::new(GateBody::full(body));
    *resp.status_mut() = rej.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(c) = challenge {
        h.insert(header::WWW_AUTHENTICATE, c);
    }
    match rej {
        Reject::MethodNotAllowed(allow) => {
            h.insert(header::ALLOW, allow.clone());
        }
        Reject::RateLimited(headers) => {
            for (name, value) in headers.iter() {
                h.insert(name.clone(), value.clone());
            }
        }
        // RFC 9110 §15.5.17: the length, so the client can ask again.
        Reject::RangeNotSatisfiable { len, vary } => {
            h.insert(header::CONTENT_RANGE, ranges::unsatisfied_range(*len));
            if *vary {
                h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
            }
        }
        // Overloaded or busy now; a second is about one queue's worth.
        Reject::ServiceUnavailable => {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    resp
}

/// A rejection written straight to a socket as the whole HTTP/1.1 answer,
/// for a connection refused before hyper takes it (over a connection cap).
pub fn raw_http1(rej: &Reject) -> Vec<u8> {
    let Prepared { body, .. } = prepared(rej);
    let status = rej.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncache-control: no-store\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn json_body_and_headers() {
        let resp = response(&Reject::MethodNotAllowed(HeaderValue::from_static(
            "GET, HEAD",
        )));
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()["allow"], "GET, HEAD");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "method_not_allowed");
        assert!(v["detail"].as_str().unwrap().contains("method"));
    }

    #[tokio::test]
    async fn prepared_texts_are_the_same_the_second_time() {
        let scope = Reject::Auth(AuthError::InsufficientScope {
            required: "api admin".into(),
        });
        for rej in [
            Reject::Auth(AuthError::BadSignature),
            Reject::Auth(AuthError::Malformed("header is not a JOSE header")),
            Reject::Auth(AuthError::Missing),
            Reject::BadRequest("x"),
            scope.clone(),
        ] {
            let first = response(&rej);
            let second = response(&rej);
            assert_eq!(first.headers(), second.headers(), "{}", rej.code());
            let a = first.into_body().collect().await.unwrap().to_bytes();
            let b = second.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(a, b);
            let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
            assert_eq!(v["error"], rej.code());
        }
        let bad = response(&Reject::Auth(AuthError::BadSignature));
        assert_eq!(
            bad.headers()["www-authenticate"],
            "Bearer realm=\"asgi-gate\", error=\"invalid_token\", error_description=\"bad signature\""
        );
        let other = response(&Reject::Auth(AuthError::InsufficientScope {
            required: "other".into(),
        }));
        assert!(other.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("scope=\"other\""));
        assert!(response(&Reject::BadRequest("x"))
            .headers()
            .get("www-authenticate")
            .is_none());
    }

    #[test]
    fn every_code_has_its_status() {
        for (r, s) in [
            (Reject::BadRequest("x"), 400),
            (Reject::NotFound, 404),
            (Reject::PayloadTooLarge, 413),
            (Reject::HeadersTooLarge, 431),
            (
                Reject::RangeNotSatisfiable {
                    len: 7,
                    vary: false,
                },
                416,
            ),
            (Reject::BadGateway, 502),
            (Reject::ServiceUnavailable, 503),
            (Reject::GatewayTimeout, 504),
        ] {
            assert_eq!(response(&r).status(), s, "{}", r.code());
        }
    }

    #[test]
    fn a_416_says_the_length() {
        let r = response(&Reject::RangeNotSatisfiable {
            len: 1234,
            vary: true,
        });
        assert_eq!(r.headers()["content-range"], "bytes */1234");
        assert_eq!(r.headers()["vary"], "Accept-Encoding");
        let r = response(&Reject::RangeNotSatisfiable {
            len: 0,
            vary: false,
        });
        assert_eq!(r.headers()["content-range"], "bytes */0");
        assert!(r.headers().get("vary").is_none());
    }
}
