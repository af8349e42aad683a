//! Whether a response is compressed, and the header rules that go with the
//! answer: `Content-Encoding`, `Content-Length`, `ETag`, `Vary`.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use super::{Coding, Levels};
use crate::limits;

/// One `compression:` block as the server applies it to a route. A route
/// with `compression: false` has no policy: the server then neither calls
/// [`should_compress`] nor strips `Accept-Encoding`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The codings offered, in the server's order of preference (ties in the
    /// client's weights go to the earlier one).
    pub algorithms: Vec<Coding>,
    /// Bodies shorter than this are sent as they are.
    pub min_size: u64,
    /// Media ranges: `application/json`, `text/*`, `*/*`. Matched against
    /// the response's media type without its parameters, case-insensitively.
    pub content_types: Vec<String>,
    pub levels: Levels,
    /// Compress `text/event-stream` too (flushing after every chunk). Off by
    /// default: `text/*` alone never pulls SSE in.
    pub sse: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            algorithms: vec![Coding::Br, Coding::Gzip],
            min_size: 1024,
            content_types: [
                "text/*",
                "application/json",
                "application/javascript",
                "application/xml",
                "image/svg+xml",
            ]
            .map(String::from)
            .to_vec(),
            levels: Levels::default(),
            sse: false,
        }
    }
}

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Compress: call [`apply_headers`] and wrap the body in
    /// [`CompressedBody`](super::CompressedBody).
    Compress(Coding),
    /// Compressible, but no `Content-Length` says how big: probe the body with
    /// [`buffer_head`](super::buffer_head) and decide with
    /// [`Buffered::is_small`](super::Buffered::is_small).
    UnknownSize(Coding),
    /// Compressible but shorter than `min_size`: send as is, with
    /// [`add_vary`] (a longer body would have been compressed).
    TooSmall,
    /// Compressible but the client accepts none of the offered codings: send
    /// as is, with [`add_vary`].
    NotAccepted,
    /// Never compressed whatever the client accepts: send untouched, no Vary.
    NotEligible(Reason),
}

impl Decision {
    /// The response is sent uncompressed but depends on `Accept-Encoding`.
    pub fn needs_vary(self) -> bool {
        matches!(self, Decision::TooSmall | Decision::NotAccepted)
    }
}

/// Why a response is never compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A HEAD response has no body.
    Head,
    /// 1xx, 204 and 304 have no body.
    NoBody,
    /// Already has a `Content-Encoding` (never compress twice).
    AlreadyEncoded,
    /// `Cache-Control: no-transform`.
    NoTransform,
    /// 206 or a `Content-Range`: ranges are of the identity representation.
    Partial,
    /// No `Content-Type`, or one outside `content_types`.
    ContentType,
    /// `text/event-stream` on a policy without `sse: true`.
    EventStream,
}

/// Decides for one response. `accepted` is what [`negotiate`](super::negotiate)
/// chose from the request's `Accept-Encoding` with `policy.algorithms`
/// (the server negotiates before it strips that header from the request).
///
/// An opted-in event stream is compressed whatever its size: its headers are
/// never held back waiting for a first event.
pub fn should_compress(
    policy: &Policy,
    method: &Method,
    accepted: Option<Coding>,
    status: StatusCode,
    resp_headers: &HeaderMap,
) -> Decision {
    if let Some(reason) = ineligible(policy, method, status, resp_headers) {
        return Decision::NotEligible(reason);
    }
    let Some(coding) = accepted.filter(|c| policy.algorithms.contains(c)) else {
        return Decision::NotAccepted;
    };
    if is_event_stream(resp_headers) {
        return Decision::Compress(coding);
    }
    // A malformed length (the upstream client would already have refused
    // one) is treated as unknown.
    match limits::check_content_length(resp_headers, u64::MAX) {
        Ok(Some(n)) if n == 0 || n < policy.min_size => Decision::TooSmall,
        Ok(Some(_)) => Decision::Compress(coding),
        Ok(None) | Err(_) => Decision::UnknownSize(coding),
    }
}

fn ineligible(
    policy: &Policy,
    method: &Method,
    status: StatusCode,
    h: &HeaderMap,
) -> Option<Reason> {
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Some(Reason::NoBody);
    }
    if method == Method::HEAD {
        return Some(Reason::Head);
    }
    if h.contains_key(header::CONTENT_ENCODING) {
        return Some(Reason::AlreadyEncoded);
    }
    if has_no_transform(h) {
        return Some(Reason::NoTransform);
    }
    if status == StatusCode::PARTIAL_CONTENT || h.contains_key(header::CONTENT_RANGE) {
        return Some(Reason::Partial);
    }
    let Some(media) = media_type(h) else {
        return Some(Reason::ContentType);
    };
    if media.eq_ignore_ascii_case("text/event-stream") {
        return (!policy.sse).then_some(Reason::EventStream);
    }
    if !policy.content_types.iter().any(|p| media_matches(p, media)) {
        return Some(Reason::ContentType);
    }
    None
}

/// The response is `text/event-stream`: the body must be flushed after
/// every chunk (`flush_each_chunk` of [`CompressedBody`](super::CompressedBody)).
pub fn is_event_stream(resp_headers: &HeaderMap) -> bool {
    media_type(resp_headers).is_some_and(|m| m.eq_ignore_ascii_case("text/event-stream"))
}

/// `type/subtype` of the single `Content-Type`, parameters removed.
fn media_type(h: &HeaderMap) -> Option<&str> {
    let mut values = h.get_all(header::CONTENT_TYPE).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return None;
    };
    let s = v.to_str().ok()?;
    let media = s.split(';').next()?.trim();
    let (ty, sub) = media.split_once('/')?;
    (!ty.trim().is_empty() && !sub.trim().is_empty()).then_some(media)
}

/// `*/*`, `type/*` or `type/subtype` against a media type, ignoring case
/// and any parameters on the pattern.
pub fn media_matches(pattern: &str, media: &str) -> bool {
    let pattern = pattern.split(';').next().unwrap_or("").trim();
    let (Some((pt, ps)), Some((mt, ms))) = (pattern.split_once('/'), media.split_once('/')) else {
        return false;
    };
    let (pt, ps, mt, ms) = (pt.trim(), ps.trim(), mt.trim(), ms.trim());
    if pt == "*" {
        return ps == "*";
    }
    pt.eq_ignore_ascii_case(mt) && (ps == "*" || ps.eq_ignore_ascii_case(ms))
}

fn has_no_transform(h: &HeaderMap) -> bool {
    h.get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .any(|d| {
            let name = d.split('=').next().unwrap_or("").trim();
            name.eq_ignore_ascii_case("no-transform")
        })
}

/// Headers of a response about to be compressed with `coding`:
/// `Content-Encoding` set, `Content-Length` and `Accept-Ranges` removed (the
/// length is unknown until the end; ranges would be of the encoded bytes), a
/// strong `ETag` made weak, `Vary: Accept-Encoding` added.
pub fn apply_headers(resp_headers: &mut HeaderMap, coding: Coding) {
    resp_headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.as_str()),
    );
    resp_headers.remove(header::CONTENT_LENGTH);
    resp_headers.remove(header::ACCEPT_RANGES);
    weaken_etag(resp_headers);
    add_vary(resp_headers);
}

/// `"x"` becomes `W/"x"`; a weak tag stays; a malformed one (unquoted) is
/// removed, since it cannot be weakened and must not pass as strong.
fn weaken_etag(h: &mut HeaderMap) {
    let Some(tag) = h.get(header::ETAG) else {
        return;
    };
    let b = tag.as_bytes();
    if b.starts_with(b"W/") {
        return;
    }
    let weak = if b.len() >= 2 && b.starts_with(b"\"") && b.ends_with(b"\"") {
        let mut v = Vec::with_capacity(b.len() + 2);
        v.extend_from_slice(b"W/");
        v.extend_from_slice(b);
        HeaderValue::from_bytes(&v).ok()
    } else {
        None
    };
    match weak {
        Some(w) => {
            h.insert(header::ETAG, w);
        }
        None => {
            h.remove(header::ETAG);
        }
    }
}

/// Adds `Accept-Encoding` to `Vary`, merged into one value with what is
/// there; nothing when it is already named or `Vary: *` is present.
pub fn add_vary(resp_headers: &mut HeaderMap) {
    let mut merged: Vec<u8> = Vec::new();
    for v in resp_headers.get_all(header::VARY) {
        for token in v.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token == b"*" || token.eq_ignore_ascii_case(b"accept-encoding") {
                return;
            }
            if !token.is_empty() {
                merged.extend_from_slice(token);
                merged.extend_from_slice(b", ");
            }
        }
    }
    merged.extend_from_slice(b"Accept-Encoding");
    // Tokens of valid header values joined by ", " are a valid value.
    if let Ok(v) = HeaderValue::from_bytes(&merged) {
        resp_headers.insert(header::VARY, v);
    } else {
        resp_headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// The request to the worker when the gate compresses the route: without
/// `Accept-Encoding`, so uvicorn and any GZipMiddleware do no compression
/// work. Request bodies (`Content-Encoding` on the request) are left alone.
pub fn strip_accept_encoding(req_headers: &mut HeaderMap) {
    req_headers.remove(header::ACCEPT_ENCODING);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn decide(pairs: &[(&str, &str)]) -> Decision {
        let p = Policy::default();
        should_compress(
            &p,
            &Method::GET,
            Some(Coding::Br),
            StatusCode::OK,
            &headers(pairs),
        )
    }

    const JSON_2K: &[(&str, &str)] = &[
        ("content-type", "application/json"),
        ("content-length", "2048"),
    ];

    #[test]
    fn compresses_eligible_responses() {
        assert_eq!(decide(JSON_2K), Decision::Compress(Coding::Br));
        assert_eq!(
            decide(&[("content-type", "text/html; charset=utf-8")]),
            Decision::UnknownSize(Coding::Br)
        );
        assert_eq!(
            decide(&[
                ("content-type", "Application/JSON ; charset=UTF-8"),
                ("content-length", "1024")
            ]),
            Decision::Compress(Coding::Br)
        );
        // Errors with bodies are compressed too.
        let p = Policy::default();
        let d = should_compress(
            &p,
            &Method::POST,
            Some(Coding::Gzip),
            StatusCode::NOT_FOUND,
            &headers(JSON_2K),
        );
        assert_eq!(d, Decision::Compress(Coding::Gzip));
    }

    #[test]
    fn size_rules() {
        let small = [
            ("content-type", "application/json"),
            ("content-length", "1023"),
        ];
        assert_eq!(decide(&small), Decision::TooSmall);
        assert!(decide(&small).needs_vary());
        let empty = [
            ("content-type", "application/json"),
            ("content-length", "0"),
        ];
        let p = Policy {
            min_size: 0,
            ..Policy::default()
        };
        let d = should_compress(
            &p,
            &Method::GET,
            Some(Coding::Br),
            StatusCode::OK,
            &headers(&empty),
        );
        assert_eq!(d, Decision::TooSmall, "an empty body is never compressed");
        let bad = [
            ("content-type", "application/json"),
            ("content-length", "x"),
        ];
        assert_eq!(decide(&bad), Decision::UnknownSize(Coding::Br));
    }

    #[test]
    fn not_accepted_needs_vary() {
        let p = Policy::default();
        let h = headers(JSON_2K);
        let d = should_compress(&p, &Method::GET, None, StatusCode::OK, &h);
        assert_eq!(d, Decision::NotAccepted);
        assert!(d.needs_vary());
        // A coding the policy does not offer is as good as none.
        let d = should_compress(&p, &Method::GET, Some(Coding::Zstd), StatusCode::OK, &h);
        assert_eq!(d, Decision::NotAccepted);
    }

    #[test]
    fn exclusions() {
        let p = Policy::default();
        let h = headers(JSON_2K);
        let by_status = |s: u16| {
            should_compress(
                &p,
                &Method::GET,
                Some(Coding::Br),
                StatusCode::from_u16(s).unwrap(),
                &h,
            )
        };
        for s in [100, 101, 103, 204, 304] {
            assert_eq!(by_status(s), Decision::NotEligible(Reason::NoBody), "{s}");
        }
        assert_eq!(by_status(206), Decision::NotEligible(Reason::Partial));
        let head = should_compress(&p, &Method::HEAD, Some(Coding::Br), StatusCode::OK, &h);
        assert_eq!(head, Decision::NotEligible(Reason::Head));
        assert!(!head.needs_vary());

        let with = |extra: (&str, &str)| {
            let mut pairs = JSON_2K.to_vec();
            pairs.push(extra);
            decide(&pairs)
        };
        assert_eq!(
            with(("content-encoding", "gzip")),
            Decision::NotEligible(Reason::AlreadyEncoded)
        );
        assert_eq!(
            with(("cache-control", "public, No-Transform")),
            Decision::NotEligible(Reason::NoTransform)
        );
        assert_eq!(
            with(("cache-control", "max-age=60")),
            Decision::Compress(Coding::Br)
        );
        assert_eq!(
            with(("content-range", "bytes 0-99/2048")),
            Decision::NotEligible(Reason::Partial)
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(
            decide(&[("content-type", "image/png"), ("content-length", "9999")]),
            Decision::NotEligible(Reason::ContentType)
        );
        assert_eq!(
            decide(&[("content-length", "9999")]),
            Decision::NotEligible(Reason::ContentType)
        );
        assert_eq!(
            decide(&[("content-type", "garbage"), ("content-length", "9999")]),
            Decision::NotEligible(Reason::ContentType)
        );
        for (pattern, media, want) in [
            ("*/*", "image/png", true),
            ("text/*", "text/html", true),
            ("TEXT/*", "text/css", true),
            ("text/*", "application/json", false),
            ("application/json", "application/JSON", true),
            ("application/json; charset=utf-8", "application/json", true),
            ("application/json", "application/jsonx", false),
            ("*/json", "application/json", false),
            ("text", "text", false),
        ] {
            assert_eq!(media_matches(pattern, media), want, "{pattern} vs {media}");
        }
    }

    #[test]
    fn event_streams_are_opt_in() {
        let sse = headers(&[("content-type", "text/event-stream; charset=utf-8")]);
        assert!(is_event_stream(&sse));
        assert!(!is_event_stream(&headers(JSON_2K)));
        let mut p = Policy::default();
        let d =
            |p: &Policy| should_compress(p, &Method::GET, Some(Coding::Gzip), StatusCode::OK, &sse);
        // text/* in content_types does not pull SSE in.
        assert_eq!(d(&p), Decision::NotEligible(Reason::EventStream));
        p.sse = true;
        // Opted in: compressed at once, no size probe that would hold headers.
        assert_eq!(d(&p), Decision::Compress(Coding::Gzip));
    }

    #[test]
    fn apply_headers_rules() {
        let mut h = headers(&[
            ("content-type", "application/json"),
            ("content-length", "2048"),
            ("etag", "\"abc\""),
            ("accept-ranges", "bytes"),
            ("vary", "Origin"),
        ]);
        apply_headers(&mut h, Coding::Zstd);
        assert_eq!(h[header::CONTENT_ENCODING], "zstd");
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        assert!(!h.contains_key(header::ACCEPT_RANGES));
        assert_eq!(h[header::ETAG], "W/\"abc\"");
        assert_eq!(h[header::VARY], "Origin, Accept-Encoding");
        assert_eq!(h.get_all(header::VARY).iter().count(), 1);

        // Applying twice changes nothing more.
        apply_headers(&mut h, Coding::Zstd);
        assert_eq!(h[header::ETAG], "W/\"abc\"");
        assert_eq!(h[header::VARY], "Origin, Accept-Encoding");

        let mut h = headers(&[("etag", "W/\"w\"")]);
        apply_headers(&mut h, Coding::Br);
        assert_eq!(h[header::ETAG], "W/\"w\"");
        assert_eq!(h[header::CONTENT_ENCODING], "br");
        let mut h = headers(&[("etag", "unquoted")]);
        apply_headers(&mut h, Coding::Gzip);
        assert!(!h.contains_key(header::ETAG));
    }

    #[test]
    fn vary_merging() {
        let mut h = HeaderMap::new();
        add_vary(&mut h);
        assert_eq!(h[header::VARY], "Accept-Encoding");

        let mut h = headers(&[("vary", "origin"), ("vary", "cookie, , accept")]);
        add_vary(&mut h);
        assert_eq!(h[header::VARY], "origin, cookie, accept, Accept-Encoding");
        assert_eq!(h.get_all(header::VARY).iter().count(), 1);

        for kept in [
            "*",
            "origin, *",
            "ACCEPT-ENCODING",
            "origin,accept-encoding ",
        ] {
            let mut h = headers(&[("vary", kept)]);
            add_vary(&mut h);
            assert_eq!(h[header::VARY], kept);
            assert_eq!(h.get_all(header::VARY).iter().count(), 1);
        }
    }

    #[test]
    fn strips_accept_encoding_only() {
        let mut h = headers(&[
            ("accept-encoding", "gzip"),
            ("accept-encoding", "br"),
            ("content-encoding", "gzip"),
        ]);
        strip_accept_encoding(&mut h);
        assert!(!h.contains_key(header::ACCEPT_ENCODING));
        assert_eq!(h[header::CONTENT_ENCODING], "gzip");
    }
}
