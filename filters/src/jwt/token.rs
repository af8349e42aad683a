//! Where the bearer token is found: `Authorization: Bearer <token>` (scheme
//! case-insensitive, RFC 6750 §2.1) or, on WebSocket routes where browsers
//! cannot set headers, the `access_token` query parameter (§2.3), which is
//! then removed from the URL the worker sees.

use http::header::{self, HeaderMap};

use super::AuthError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenLocation {
    Header,
    Query,
}

#[derive(Clone, PartialEq, Eq)]
pub struct TokenSource {
    pub token: String,
    pub location: TokenLocation,
}

impl std::fmt::Debug for TokenSource {
    // Never print the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("token", &format_args!("[{} bytes]", self.token.len()))
            .field("location", &self.location)
            .finish()
    }
}

/// The request's bearer token, if any. `Ok(None)` means no token (401
/// without an error code); an `Authorization` header with another scheme
/// counts as no token. Two tokens (two headers, two parameters, or header
/// and parameter) are `MultipleTokens` (RFC 6750 §2: one method only).
pub fn extract_token(
    headers: &HeaderMap,
    query: Option<&str>,
    allow_query: bool,
) -> Result<Option<TokenSource>, AuthError> {
    let mut found: Option<TokenSource> = None;
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    if let Some(value) = values.next() {
        if values.next().is_some() {
            return Err(AuthError::MultipleTokens);
        }
        // Byte by byte, in one pass over the token: this runs for every
        // authenticated request and for every flood of bad tokens.
        let not_visible =
            || AuthError::Malformed("malformed token: Authorization is not visible ASCII");
        let not_bearer =
            || AuthError::Malformed("malformed token: expected `Authorization: Bearer <token>`");
        let text = trim_spaces(value.as_bytes());
        let (scheme, rest) = match text.iter().position(|&b| b == b' ') {
            Some(i) => (&text[..i], &text[i + 1..]),
            None => (text, &b""[..]),
        };
        if scheme.eq_ignore_ascii_case(b"bearer") {
            let token = trim_spaces(rest);
            // The common case in one branch-free pass the compiler vectorises;
            // only a refused token is looked at again to say why.
            let visible = |b: &u8| (0x21..=0x7e).contains(b);
            let all_visible = token.iter().fold(true, |ok, b| ok & visible(b));
            if token.is_empty() || !all_visible {
                return Err(
                    match token
                        .iter()
                        .all(|b| visible(b) || *b == b' ' || *b == b'\t')
                    {
                        true => not_bearer(),
                        false => not_visible(),
                    },
                );
            }
            // Visible ASCII only, so this cannot fail.
            let token = std::str::from_utf8(token).map_err(|_| not_visible())?;
            found = Some(TokenSource {
                token: token.to_owned(),
                location: TokenLocation::Header,
            });
        } else if value.to_str().is_err() {
            return Err(not_visible());
        }
    }
    if allow_query {
        for pair in query.unwrap_or("").split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !is_access_token_name(name) {
                continue;
            }
            if found.is_some() {
                return Err(AuthError::MultipleTokens);
            }
            if value.is_empty() {
                return Err(AuthError::Malformed(
                    "malformed token: empty access_token parameter",
                ));
            }
            // A JWT is made of URL-safe characters only, so the value is taken
            // as it is; anything else fails verification as malformed.
            found = Some(TokenSource {
                token: value.to_owned(),
                location: TokenLocation::Query,
            });
        }
    }
    Ok(found)
}

fn trim_spaces(mut b: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' '] = b {
        b = rest;
    }
    b
}

/// The query string without any `access_token` parameter (also
/// percent-encoded forms of the name); other parameters are kept verbatim
/// and in order. An empty result means the URL should have no `?`.
pub fn query_without_access_token(query: &str) -> String {
    let mut out = String::with_capacity(query.len());
    for pair in query.split('&') {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        if is_access_token_name(name) || pair.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(pair);
    }
    out
}

/// `access_token`, after form-decoding the name (`%5F`, `+`).
fn is_access_token_name(name: &str) -> bool {
    const WANT: &[u8] = b"access_token";
    if !name.contains(['%', '+']) {
        return name == "access_token";
    }
    let bytes = name.as_bytes();
    let mut decoded = Vec::with_capacity(WANT.len());
    let mut i = 0;
    while i < bytes.len() {
        if decoded.len() > WANT.len() {
            return false;
        }
        let b = bytes[i];
        match b {
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    decoded.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => decoded.push(b),
            },
            b'+' => decoded.push(b' '),
            _ => decoded.push(b),
        }
        i += 1;
    }
    decoded == WANT
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_auth(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn bearer_header_any_case() {
        for v in [
            "Bearer a.b.c",
            "bearer a.b.c",
            "BEARER  a.b.c ",
            " Bearer a.b.c",
        ] {
            let t = extract_token(&with_auth(&[v]), None, false)
                .unwrap()
                .unwrap();
            assert_eq!(t.token, "a.b.c", "{v}");
            assert_eq!(t.location, TokenLocation::Header);
        }
    }

    #[test]
    fn no_token_or_other_scheme_is_none() {
        assert_eq!(extract_token(&HeaderMap::new(), None, false), Ok(None));
        assert_eq!(
            extract_token(&with_auth(&["Basic dXNlcjpwYXNz"]), None, false),
            Ok(None)
        );
        assert_eq!(
            extract_token(&HeaderMap::new(), Some("access_token=a.b.c"), false),
            Ok(None)
        );
    }

    #[test]
    fn non_ascii_bytes_are_malformed_in_any_scheme() {
        // HeaderValue admits obs-text (0x80..=0xff), never control bytes.
        for raw in [&b"Bearer a\xffb"[..], b"Basic \x80x", b"Bearer\x80 a"] {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_bytes(raw).unwrap());
            assert_eq!(
                extract_token(&h, None, false),
                Err(AuthError::Malformed(
                    "malformed token: Authorization is not visible ASCII"
                )),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn empty_or_split_bearer_is_malformed() {
        for v in [
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "Bearer a\tb",
            "Bearer \ta",
        ] {
            assert!(matches!(
                extract_token(&with_auth(&[v]), None, false),
                Err(AuthError::Malformed(_))
            ));
        }
    }

    #[test]
    fn two_tokens_refused() {
        assert_eq!(
            extract_token(&with_auth(&["Bearer a", "Bearer b"]), None, false),
            Err(AuthError::MultipleTokens)
        );
        assert_eq!(
            extract_token(&with_auth(&["Bearer a"]), Some("access_token=b"), true),
            Err(AuthError::MultipleTokens)
        );
        assert_eq!(
            extract_token(
                &HeaderMap::new(),
                Some("access_token=a&access%5Ftoken=b"),
                true
            ),
            Err(AuthError::MultipleTokens)
        );
    }

    #[test]
    fn query_token_when_allowed() {
        let t = extract_token(&HeaderMap::new(), Some("x=1&access_token=a.b.c&y"), true)
            .unwrap()
            .unwrap();
        assert_eq!(t.token, "a.b.c");
        assert_eq!(t.location, TokenLocation::Query);
        assert!(!format!("{t:?}").contains("a.b.c"));
        assert!(matches!(
            extract_token(&HeaderMap::new(), Some("access_token="), true),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn access_token_removed_from_query() {
        assert_eq!(query_without_access_token("access_token=t"), "");
        assert_eq!(
            query_without_access_token("a=1&access_token=t&b=2&access%5ftoken=u&access+token=v"),
            "a=1&b=2&access+token=v"
        );
        assert_eq!(query_without_access_token("a=1&&b"), "a=1&b");
        assert_eq!(
            query_without_access_token("access_tokens=1"),
            "access_tokens=1"
        );
        assert_eq!(query_without_access_token("%"), "%");
        assert_eq!(query_without_access_token("access_token%"), "access_token%");
        assert_eq!(query_without_access_token("%6"), "%6");
    }
}
