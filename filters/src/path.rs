//! The request path as the worker will see it. uvicorn percent-decodes the
//! path (`urllib.parse.unquote`) before the app routes it, so the gate routes
//! on that decoded form and forwards a canonical encoding of it that decodes
//! to exactly the same string. Forms on which the two could still disagree
//! are refused: a bad escape, an encoded `/` (it would split a segment in the
//! worker that the gate saw whole; see [`EncodedSlash`]), `\` in any form,
//! control characters, invalid UTF-8, and dot-segments (browsers and curl
//! remove them before sending, so only hand-made requests carry them).
//!
//! ```
//! use asgi_gate_filters::path::{canonicalize, EncodedSlash};
//! let p = canonicalize("/%61pi/caf%c3%a9", EncodedSlash::Reject).unwrap();
//! assert_eq!(p.decoded, "/api/café");
//! assert_eq!(p.encoded, "/api/caf%C3%A9");
//! assert!(canonicalize("/api%2Fwhoami", EncodedSlash::Reject).is_err());
//! ```

use std::borrow::Cow;

/// What to do with `%2F` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodedSlash {
    /// 400: the default.
    #[default]
    Reject,
    /// Forward `%2F` as it is (the app's `raw_path` keeps it) and route on
    /// the decoded `/`, which is what the worker routes on too.
    Keep,
}

/// The path in its two forms; both borrow the request's path when it needs
/// no change (the common case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical<'a> {
    /// What the worker's app will see in `scope["path"]`: the gate routes on it.
    pub decoded: Cow<'a, str>,
    /// What the gate forwards: unreserved characters (RFC 3986 §2.3)
    /// decoded, every other escape kept, with upper-case hex.
    pub encoded: Cow<'a, str>,
}

/// Why a path is refused (400). Never carries the path: the detail goes
/// back to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    BadEscape,
    EncodedSlash,
    Backslash,
    Control,
    InvalidUtf8,
    DotSegment,
    Raw,
}

impl PathError {
    pub fn detail(self) -> &'static str {
        match self {
            PathError::BadEscape => "the path has an invalid percent escape",
            PathError::EncodedSlash => "the path has an encoded slash (%2F)",
            PathError::Backslash => "the path has a backslash",
            PathError::Control => "the path has a control character",
            PathError::InvalidUtf8 => "the path does not decode to UTF-8",
            PathError::DotSegment => "the path has a dot-segment (/./ or /../)",
            PathError::Raw => "the path has a byte that is not percent-encoded (non-ASCII)",
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// A `.` or `..` segment. The decoded path is checked, so `%2E` counts.
fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

/// The path the gate routes on and forwards, or why it is refused. A path
/// that does not start with `/` (`*` of `OPTIONS *`) is returned as it is:
/// no route matches it.
pub fn canonicalize(path: &str, slash: EncodedSlash) -> Result<Canonical<'_>, PathError> {
    let bytes = path.as_bytes();
    // One pass for the common case: nothing to decode, nothing to look at.
    let mut escapes = false;
    let mut dot_after_slash = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' => escapes = true,
            b'\\' => return Err(PathError::Backslash),
            // The URI parser lets no other control byte through.
            0x7f => return Err(PathError::Control),
            // hyper passes raw UTF-8; uvicorn refuses it, and it would have
            // to be encoded to be forwarded.
            0x80..=0xff => return Err(PathError::Raw),
            b'.' if i > 0 && bytes[i - 1] == b'/' => dot_after_slash = true,
            _ => {}
        }
    }
    if !escapes {
        if dot_after_slash && has_dot_segment(path) {
            return Err(PathError::DotSegment);
        }
        return Ok(Canonical {
            decoded: Cow::Borrowed(path),
            encoded: Cow::Borrowed(path),
        });
    }

    let mut decoded: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut encoded = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            decoded.push(b);
            encoded.push(char::from(b));
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadEscape);
        };
        let c = hi << 4 | lo;
        match c {
            b'/' if slash == EncodedSlash::Reject => return Err(PathError::EncodedSlash),
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::Control),
            _ => {}
        }
        decoded.push(c);
        if is_unreserved(c) {
            encoded.push(char::from(c));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            encoded.push('%');
            encoded.push(char::from(HEX[usize::from(hi)]));
            encoded.push(char::from(HEX[usize::from(lo)]));
        }
        i += 3;
    }
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::InvalidUtf8)?;
    // C1 controls (U+0080–U+009F) too: some servers and logs act on them.
    if !decoded.is_ascii() && decoded.chars().any(char::is_control) {
        return Err(PathError::Control);
    }
    if has_dot_segment(&decoded) {
        return Err(PathError::DotSegment);
    }
    Ok(Canonical {
        decoded: Cow::Owned(decoded),
        encoded: Cow::Owned(encoded),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use EncodedSlash::{Keep, Reject};

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/api/whoami",
            "/a.b/.well-known/x",
            "/x..y/..z",
            "*",
            "/a;b=c",
        ] {
            let c = canonicalize(p, Reject).unwrap();
            assert_eq!(c.decoded, p);
            assert_eq!(c.encoded, p);
            assert!(matches!(c.decoded, Cow::Borrowed(_)), "{p}");
        }
    }

    #[test]
    fn decodes_to_what_the_worker_sees_and_forwards_a_canonical_encoding() {
        for (raw, decoded, encoded) in [
            ("/%61pi/whoami", "/api/whoami", "/api/whoami"),
            ("/%41%5a%30%2d%2E%5f%7E", "/AZ0-._~", "/AZ0-._~"),
            ("/a%20b", "/a b", "/a%20b"),
            ("/caf%c3%a9", "/café", "/caf%C3%A9"),
            ("/100%25", "/100%", "/100%25"),
            ("/q%3Fx%23y", "/q?x#y", "/q%3Fx%23y"),
            ("/%3B", "/;", "/%3B"),
            ("/%2e%2e%2e", "/...", "/..."),
        ] {
            let c = canonicalize(raw, Reject).unwrap();
            assert_eq!(c.decoded, decoded, "{raw}");
            assert_eq!(c.encoded, encoded, "{raw}");
            // Idempotent: the canonical form is its own canonical form.
            let again = canonicalize(&c.encoded, Reject).unwrap();
            assert_eq!(again.encoded, c.encoded, "{raw}");
            assert_eq!(again.decoded, c.decoded, "{raw}");
        }
    }

    #[test]
    fn refusals() {
        use PathError::*;
        for (raw, why) in [
            ("/api%2Fwhoami", EncodedSlash),
            ("/api%2fwhoami", EncodedSlash),
            ("/api%5Cwhoami", Backslash),
            ("/api\\whoami", Backslash),
            ("/a%00", Control),
            ("/a%0a", Control),
            ("/a%1F", Control),
            ("/a%7f", Control),
            ("/a\x7f", Control),
            ("/a%c2%85", Control),
            ("/a%", BadEscape),
            ("/a%4", BadEscape),
            ("/a%zz", BadEscape),
            ("/a%%41", BadEscape),
            ("/a%ff", InvalidUtf8),
            ("/a%c3", InvalidUtf8),
            ("/a%c3%28", InvalidUtf8),
            ("/a%ed%a0%80", InvalidUtf8),
            ("/./a", DotSegment),
            ("/a/../b", DotSegment),
            ("/a/..", DotSegment),
            ("/a/.", DotSegment),
            ("/a/%2e%2E/b", DotSegment),
            ("/a/%2e/b", DotSegment),
            ("/a/.%2e", DotSegment),
            ("/caf\u{e9}", Raw),
            ("/a\u{85}%20", Raw),
        ] {
            assert_eq!(canonicalize(raw, Reject), Err(why), "{raw:?}");
        }
    }

    #[test]
    fn keep_routes_on_the_decoded_slash_and_forwards_it_encoded() {
        let c = canonicalize("/files/a%2fb", Keep).unwrap();
        assert_eq!(c.decoded, "/files/a/b");
        assert_eq!(c.encoded, "/files/a%2Fb");
        // A dot-segment made of encoded slashes is still one.
        assert_eq!(
            canonicalize("/files/a%2F..%2Fb", Keep),
            Err(PathError::DotSegment)
        );
        assert_eq!(canonicalize("/a%5cb", Keep), Err(PathError::Backslash));
    }
}
