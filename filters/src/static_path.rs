//! Static routes: which file a request path names under the route's
//! directory (never outside it), its content type, its validators (`ETag`,
//! `Last-Modified`) and whether a conditional request is answered 304. The
//! server opens and streams the file; nothing here touches the disk.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderValue};

/// The file (or directory, for the server to add the index to) that `tail`
/// names, relative to the route's directory: `tail` is the request path
/// after the route's prefix, still percent-encoded. `None` for anything that
/// could leave the directory or that a file name cannot hold: `..`, an
/// encoded `/` or `\`, NUL, invalid UTF-8 (a query is not part of `tail`);
/// and, unless `dotfiles`, for a hidden segment (see `is_hidden`). Empty and
/// `.` segments are skipped; an empty result names the directory itself.
pub fn resolve(tail: &str, dotfiles: bool) -> Option<PathBuf> {
    let mut path = PathBuf::new();
    for raw in tail.split('/') {
        let segment = percent_decode(raw)?;
        match segment.as_str() {
            "" | "." => continue,
            ".." => return None,
            s if s.contains(['/', '\\', '\0']) => return None,
            s if !dotfiles && is_hidden(s) => return None,
            s => path.push(s),
        }
    }
    Some(path)
}

/// A file or directory name that is not served by default: one starting
/// with `.` (`.env`, `.git`, `.htpasswd`), as deploys leave secrets there.
/// `.well-known` itself is not hidden (RFC 8615: ACME challenges,
/// security.txt); the names inside it still are checked.
pub fn is_hidden(segment: &str) -> bool {
    segment.starts_with('.') && segment != ".well-known"
}

/// A path segment with its `%XX` escapes decoded, as UTF-8; `None` for a
/// bad escape or bytes that are not UTF-8. (Also the admin API's, for
/// `/revocations/{jti}`.)
pub fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = hex(*bytes.get(i + 1)?)?;
            let lo = hex(*bytes.get(i + 2)?)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The media type for a file name's extension (what browsers need to run
/// or render it); `application/octet-stream` when unknown.
pub fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("csv") => "text/csv; charset=utf-8",
        Some("xml") => "application/xml",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("avif") => "image/avif",
        Some("ico") => "image/x-icon",
        Some("wasm") => "application/wasm",
        Some("woff") => "font/woff",
        Some("woff2") => "font/woff2",
        Some("ttf") => "font/ttf",
        Some("otf") => "font/otf",
        Some("pdf") => "application/pdf",
        Some("mp4") => "video/mp4",
        Some("webm") => "video/webm",
        Some("mp3") => "audio/mpeg",
        Some("zip") => "application/zip",
        Some("gz") => "application/gzip",
        _ => "application/octet-stream",
    }
}

/// A file's validators: a strong `ETag` from its size and modification
/// time (as nginx makes it), and `Last-Modified`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    pub etag: HeaderValue,
    pub last_modified: Option<HeaderValue>,
    /// Whole seconds since the epoch (what `Last-Modified` can say).
    modified_secs: Option<u64>,
}

impl Validators {
    pub fn new(len: u64, modified: Option<SystemTime>) -> Validators {
        let since_epoch = modified.and_then(|m| m.duration_since(UNIX_EPOCH).ok());
        let secs = since_epoch.map(|d| d.as_secs());
        let etag = format!("\"{:x}-{len:x}\"", secs.unwrap_or(0));
        Validators {
            etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\"")),
            last_modified: secs.and_then(|s| {
                let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s));
                HeaderValue::from_str(&date).ok()
            }),
            modified_secs: secs,
        }
    }

    /// Whether the request's conditions say the client's copy is current
    /// (RFC 9110 §13.2.2): `If-None-Match` decides when present (weak
    /// comparison, `*` matches), else `If-Modified-Since`.
    pub fn not_modified(&self, req: &HeaderMap) -> bool {
        let mut inm = req.get_all(header::IF_NONE_MATCH).iter().peekable();
        if inm.peek().is_some() {
            let ours = opaque(self.etag.as_bytes());
            return inm.any(|v| {
                v.to_str().is_ok_and(|list| {
                    list.split(',')
                        .map(str::trim)
                        .any(|t| t == "*" || opaque(t.as_bytes()) == ours)
                })
            });
        }
        let (Some(ims), Some(ours)) = (req.get(header::IF_MODIFIED_SINCE), self.modified_secs)
        else {
            return false;
        };
        let Some(since) = ims
            .to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s).ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        else {
            return false;
        };
        ours <= since.as_secs()
    }
}

/// An entity tag without its weakness prefix (weak comparison).
fn opaque(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        for dotfiles in [false, true] {
            let ok = |t: &str| resolve(t, dotfiles);
            assert_eq!(ok("app.js"), Some(PathBuf::from("app.js")));
            assert_eq!(ok("css/site.css"), Some(PathBuf::from("css/site.css")));
            assert_eq!(ok("a//./b"), Some(PathBuf::from("a/b")));
            assert_eq!(ok(""), Some(PathBuf::new()));
            assert_eq!(ok("my%20file.txt"), Some(PathBuf::from("my file.txt")));
            assert_eq!(ok("caf%C3%A9.txt"), Some(PathBuf::from("café.txt")));
            assert_eq!(ok("/abs"), Some(PathBuf::from("abs")));
            for bad in [
                "..",
                "../etc/passwd",
                "a/../../etc/passwd",
                "%2e%2e/etc/passwd",
                "%2E%2E",
                "a%2F..%2F..%2Fetc",
                "a%5C..%5Cb",
                "a%00b",
                "%zz",
                "%4",
                "%+f",
                "%ff",
            ] {
                assert_eq!(ok(bad), None, "{bad}");
            }
        }
    }

    #[test]
    fn dotfiles_are_refused_but_well_known_is_not() {
        let hidden = [
            ".env",
            ".htpasswd",
            ".git/config",
            ".git/",
            "a/.hidden/b.txt",
            "a/.draft.html",
            "%2eenv",
            "%2Egit/HEAD",
            "...",
            ".well-known/.secret",
        ];
        for h in hidden {
            assert_eq!(resolve(h, false), None, "{h}");
        }
        let public = [
            ".well-known/security.txt",
            "a/b.c",
            "a./b",
            "x.y/.well-known/z",
        ];
        for p in public {
            assert!(resolve(p, false).is_some(), "{p}");
        }
        // `dotfiles: true` serves them all.
        for p in hidden.iter().chain(&public) {
            assert!(resolve(p, true).is_some(), "{p}");
        }
        assert_eq!(resolve("%2eenv", true), Some(PathBuf::from(".env")));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("%e2%82%AC").as_deref(), Some("€"));
        for bad in ["bad%2", "bad%zz", "%+f", "%-1", "%c3"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(
            content_type(Path::new("a/index.HTML")),
            "text/html; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("app.mjs")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("logo.svg")), "image/svg+xml");
        assert_eq!(content_type(Path::new("blob")), "application/octet-stream");
        assert_eq!(
            content_type(Path::new("x.unknown")),
            "application/octet-stream"
        );
    }

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn conditional_requests() {
        let mtime = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let v = Validators::new(1234, Some(mtime));
        assert_eq!(v.etag, "\"6553f100-4d2\"");
        assert_eq!(
            v.last_modified.as_ref().unwrap(),
            "Tue, 14 Nov 2023 22:13:20 GMT"
        );
        let etag = v.etag.to_str().unwrap().to_string();
        assert!(v.not_modified(&req(&[("if-none-match", &etag)])));
        assert!(v.not_modified(&req(&[("if-none-match", &format!("W/{etag}"))])));
        assert!(v.not_modified(&req(&[("if-none-match", &format!("\"x\", {etag}"))])));
        assert!(v.not_modified(&req(&[("if-none-match", "*")])));
        assert!(!v.not_modified(&req(&[("if-none-match", "\"other\"")])));
        // If-None-Match wins over If-Modified-Since.
        assert!(!v.not_modified(&req(&[
            ("if-none-match", "\"other\""),
            ("if-modified-since", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ])));
        assert!(v.not_modified(&req(&[(
            "if-modified-since",
            "Tue, 14 Nov 2023 22:13:20 GMT"
        )])));
        assert!(v.not_modified(&req(&[(
            "if-modified-since",
            "Wed, 15 Nov 2023 00:00:00 GMT"
        )])));
        assert!(!v.not_modified(&req(&[(
            "if-modified-since",
            "Tue, 14 Nov 2023 22:13:19 GMT"
        )])));
        assert!(!v.not_modified(&req(&[("if-modified-since", "yesterday")])));
        assert!(!v.not_modified(&HeaderMap::new()));
    }
}
