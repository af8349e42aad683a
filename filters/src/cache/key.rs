//! The cache key (RFC 9111 §2, §4.1), surrogate keys and conditional
//! requests answered from a stored response (RFC 9110 §13.1).
//!
//! The key is everything the gate knows changes what the worker answers:
//! the scheme it tells the worker (`X-Forwarded-Proto`), `Host`, the
//! canonical path the worker is sent, the query as sent, the content
//! coding the gate will send the client, and, when the route says so, a
//! verified claim. Each part is length-prefixed, so no value can forge
//! another's boundary. `Vary` adds the listed request headers' values on a
//! second lookup.

use http::header::{self, HeaderMap, HeaderName};

/// What the primary key is made of.
#[derive(Debug, Clone, Copy)]
pub struct KeyParts<'a> {
    pub proto: &'a str,
    pub host: &'a [u8],
    /// The path as forwarded: the gate's canonical encoding.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The content coding the gate negotiated for this client (`None`:
    /// identity, or the route does not compress).
    pub coding: Option<&'a str>,
    /// The route's `key_claim` value, when it has one.
    pub claim: Option<&'a str>,
}

fn push_part(out: &mut Vec<u8>, part: Option<&[u8]>) {
    match part {
        // Absent differs from empty (`/a` vs `/a?`).
        None => out.push(b'-'),
        Some(p) => {
            out.extend_from_slice(p.len().to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(p);
        }
    }
}

/// The primary key.
pub fn primary_key(k: &KeyParts<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        16 + k.host.len()
            + k.path.len()
            + k.query.map_or(0, str::len)
            + k.claim.map_or(0, str::len),
    );
    push_part(&mut out, Some(k.proto.as_bytes()));
    push_part(&mut out, Some(k.host));
    push_part(&mut out, Some(k.path.as_bytes()));
    push_part(&mut out, k.query.map(str::as_bytes));
    push_part(&mut out, k.coding.map(str::as_bytes));
    push_part(&mut out, k.claim.map(str::as_bytes));
    out
}

/// The header names a response varies on, sorted and without repeats;
/// `None` for `Vary: *` (never stored, RFC 9111 §4.1).
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for v in headers.get_all(header::VARY) {
        // A value that is not text cannot be matched: as `*`.
        let v = v.to_str().ok()?;
        for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "*" {
                return None;
            }
            names.push(HeaderName::from_bytes(item.as_bytes()).ok()?);
        }
    }
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

/// The secondary key: `primary` plus the normalised values of `names` in
/// this request (RFC 9111 §4.1: field lines combined, list items trimmed).
/// A header sent as invalid text never matches a stored variant.
pub fn variant_key(primary: &[u8], names: &[HeaderName], req: &HeaderMap) -> Option<Vec<u8>> {
    let mut out = primary.to_vec();
    out.push(b'|');
    for name in names {
        push_part(&mut out, Some(name.as_str().as_bytes()));
        let mut lines = req.get_all(name).iter().peekable();
        if lines.peek().is_none() {
            push_part(&mut out, None);
            continue;
        }
        let mut value = String::new();
        for line in lines {
            for item in line.to_str().ok()?.split(',').map(str::trim) {
                if !value.is_empty() {
                    value.push(',');
                }
                value.push_str(item);
            }
        }
        push_part(&mut out, Some(value.as_bytes()));
    }
    Some(out)
}

pub static SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
pub static CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// Tags kept per response, and bytes per tag: a worker bug must not make
/// purges slow or entries large.
const MAX_TAGS: usize = 64;
const MAX_TAG_LEN: usize = 256;

/// The purge tags a worker set (`Surrogate-Key`, space separated, as
/// Fastly; `Cache-Tag`, comma separated, as Cloudflare; either separator
/// in either). Sorted, without repeats, bounded.
pub fn surrogate_keys(headers: &HeaderMap) -> Vec<String> {
    let mut tags: Vec<String> = headers
        .get_all(&SURROGATE_KEY)
        .iter()
        .chain(headers.get_all(&CACHE_TAG).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([' ', ',', '\t']))
        .filter(|t| !t.is_empty() && t.len() <= MAX_TAG_LEN)
        .map(str::to_string)
        .collect();
    tags.sort_unstable();
    tags.dedup();
    tags.truncate(MAX_TAGS);
    tags
}

/// The tags are for the gate: removed before the response goes on (as
/// Varnish and Fastly do), cached or not.
pub fn strip_surrogate_headers(headers: &mut HeaderMap) {
    headers.remove(&SURROGATE_KEY);
    headers.remove(&CACHE_TAG);
}

/// Request headers that make the worker's answer partial or conditional:
/// removed from a request that fills the cache, so what is stored is the
/// whole response (nginx does the same); the client's own conditions are
/// then answered from it (`not_modified`).
pub const CONDITIONAL: [HeaderName; 5] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// Weak comparison of entity tags (RFC 9110 §8.8.3.2).
fn weak_eq(a: &str, b: &str) -> bool {
    let a = a.trim().trim_start_matches("W/");
    let b = b.trim().trim_start_matches("W/");
    a == b && a.starts_with('"') && a.ends_with('"') && a.len() >= 2
}

/// Whether a stored 200 answers this GET/HEAD with 304 (RFC 9110 §13.1.2,
/// §13.1.3, §13.2.2): `If-None-Match` against its `ETag` (and then
/// `If-Modified-Since` is ignored), else `If-Modified-Since` against its
/// `Last-Modified`. `If-Match`/`If-Unmodified-Since` go to the worker:
/// the caller does not serve those from the cache.
pub fn not_modified(req: &HeaderMap, stored: &HeaderMap) -> bool {
    let inm: Vec<&str> = req
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if !inm.is_empty() {
        let Some(etag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        return inm.iter().any(|t| *t == "*" || weak_eq(t, etag));
    }
    let since = req
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok());
    let last = stored
        .get(header::LAST_MODIFIED)
        .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok());
    matches!((since, last), (Some(s), Some(l)) if l <= s)
}

/// `If-Match` / `If-Unmodified-Since`: preconditions for the worker to
/// judge (they guard changes), never answered from the cache.
pub fn has_preconditions(req: &HeaderMap) -> bool {
    req.contains_key(header::IF_MATCH)
        || req.contains_key(header::IF_UNMODIFIED_SINCE)
        || req.contains_key(header::IF_RANGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn parts<'a>(path: &'a str, query: Option<&'a str>) -> KeyParts<'a> {
        KeyParts {
            proto: "http",
            host: b"example.com",
            path,
            query,
            coding: None,
            claim: None,
        }
    }

    #[test]
    fn every_part_changes_the_key() {
        let base = primary_key(&parts("/a", None));
        assert_ne!(base, primary_key(&parts("/a", Some(""))));
        assert_ne!(base, primary_key(&parts("/b", None)));
        assert_ne!(
            primary_key(&parts("/a", Some("x=1"))),
            primary_key(&parts("/a", Some("x=2")))
        );
        let mut p = parts("/a", None);
        p.host = b"other.example";
        assert_ne!(base, primary_key(&p));
        let mut p = parts("/a", None);
        p.proto = "https";
        assert_ne!(base, primary_key(&p));
        let mut p = parts("/a", None);
        p.coding = Some("gzip");
        assert_ne!(base, primary_key(&p));
        let mut p = parts("/a", None);
        p.claim = Some("alice");
        assert_ne!(base, primary_key(&p));
    }

    #[test]
    fn no_part_can_forge_a_boundary() {
        // A claim that looks like a query and the query that it imitates.
        let mut a = parts("/a", Some("x"));
        a.claim = Some("1:y");
        let mut b = parts("/a", Some("x"));
        b.coding = Some("y");
        assert_ne!(primary_key(&a), primary_key(&b));
        let a = parts("/a?x=1", None);
        let b = parts("/a", Some("x=1"));
        assert_ne!(primary_key(&a), primary_key(&b));
    }

    #[test]
    fn vary_names_are_normalised() {
        let h = headers(&[("vary", "X-Tenant, accept-language"), ("vary", "x-tenant")]);
        let names = vary_names(&h).unwrap();
        assert_eq!(names, vec!["accept-language", "x-tenant"]);
        assert_eq!(vary_names(&headers(&[("vary", "accept, *")])), None);
        assert_eq!(vary_names(&HeaderMap::new()), Some(vec![]));
    }

    #[test]
    fn variant_keys_match_normalised_values() {
        let names = vec![HeaderName::from_static("x-tenant")];
        let k = |pairs: &[(&str, &str)]| variant_key(b"P", &names, &headers(pairs)).unwrap();
        assert_eq!(k(&[("x-tenant", "a, b")]), k(&[("x-tenant", "a,b")]));
        assert_eq!(
            k(&[("x-tenant", "a"), ("x-tenant", "b")]),
            k(&[("x-tenant", "a,b")])
        );
        assert_ne!(k(&[("x-tenant", "a")]), k(&[("x-tenant", "b")]));
        assert_ne!(k(&[]), k(&[("x-tenant", "")]));
        assert_ne!(k(&[("x-tenant", "a")]), k(&[("x-tenant", "A")]));
    }

    #[test]
    fn surrogate_keys_from_both_headers() {
        let h = headers(&[
            ("surrogate-key", "item-1  items"),
            ("cache-tag", "items,list, item-2"),
        ]);
        assert_eq!(
            surrogate_keys(&h),
            vec!["item-1", "item-2", "items", "list"]
        );
        let many = (0..200)
            .map(|i| format!("t{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(
            surrogate_keys(&headers(&[("surrogate-key", &many)])).len(),
            64
        );
        let mut h = h;
        strip_surrogate_headers(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn conditional_requests() {
        let stored = headers(&[
            ("etag", "W/\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(not_modified(
            &headers(&[("if-none-match", "\"v1\"")]),
            &stored
        ));
        assert!(not_modified(
            &headers(&[("if-none-match", "\"x\", W/\"v1\"")]),
            &stored
        ));
        assert!(not_modified(&headers(&[("if-none-match", "*")]), &stored));
        assert!(!not_modified(
            &headers(&[("if-none-match", "\"v2\"")]),
            &stored
        ));
        // If-None-Match wins over If-Modified-Since.
        let both = headers(&[
            ("if-none-match", "\"v2\""),
            ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(!not_modified(&both, &stored));
        let ims = |d: &str| headers(&[("if-modified-since", d)]);
        assert!(not_modified(&ims("Sun, 06 Nov 1994 08:49:37 GMT"), &stored));
        assert!(!not_modified(
            &ims("Sat, 05 Nov 1994 08:49:37 GMT"),
            &stored
        ));
        assert!(!not_modified(&ims("garbage"), &stored));
        assert!(!not_modified(&HeaderMap::new(), &stored));
        assert!(has_preconditions(&headers(&[("if-match", "\"v1\"")])));
    }
}
