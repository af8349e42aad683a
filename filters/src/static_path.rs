//! Static routes: which file a request path names under the route's
//! directory (never outside it), its content type, its validators (`ETag`,
//! `Last-Modified`) and whether a conditional request is answered 304 or
//! its `Range` still applies, and which precompressed sibling
//! (`app.js.br`) a client would take. The server opens and streams the
//! file; nothing here touches the disk.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderValue};

use crate::compression::{negotiate_values, Coding};
use crate::ranges;

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

/// Precompressed siblings looked for, in the gate's order of preference
/// (the client's weights come first): smallest first.
pub const PRECOMPRESSED: [Coding; 3] = [Coding::Br, Coding::Zstd, Coding::Gzip];

/// The file-name suffix of a sibling in `coding` (`app.js` → `app.js.br`).
pub fn sibling_suffix(coding: Coding) -> &'static str {
    match coding {
        Coding::Br => "br",
        Coding::Zstd => "zst",
        Coding::Gzip => "gz",
    }
}

/// The precompressed codings the request accepts, best first (weights,
/// then [`PRECOMPRESSED`] order), as the gate's compression negotiates
/// them: `q=0` excludes, an `identity` weighted above a coding ends the
/// list there. Empty without `Accept-Encoding`. The server serves the
/// first one whose sibling exists.
pub fn precompressed_ranking(req: &HeaderMap) -> Vec<Coding> {
    let lines: Vec<&str> = req
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let mut ranked = Vec::new();
    if lines.is_empty() {
        return ranked;
    }
    let mut left = PRECOMPRESSED.to_vec();
    while let Some(best) = negotiate_values(lines.iter().copied(), &left) {
        ranked.push(best);
        left.retain(|c| *c != best);
    }
    ranked
}

/// The sibling of `rel` (a path [`resolve`] made, after any index) in
/// `coding`: the same directory, the name with the coding's suffix. It is
/// checked again as `resolve` checks a request path (plain names only, no
/// hidden one unless `dotfiles`), so a sibling is never a way around it.
pub fn sibling(rel: &Path, coding: Coding, dotfiles: bool) -> Option<PathBuf> {
    let name = rel.file_name()?.to_str()?;
    let path = rel.with_file_name(format!("{name}.{}", sibling_suffix(coding)));
    let plain = path.components().all(|c| match c {
        Component::Normal(n) => n.to_str().is_some_and(|s| dotfiles || !is_hidden(s)),
        _ => false,
    });
    plain.then_some(path)
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
        Validators::of_variant(len, modified, None)
    }

    /// The validators of a precompressed sibling: its own size and time,
    /// and the coding in the tag, so that no two variants share an `ETag`
    /// (caches and `If-Range` tell them apart).
    pub fn of_variant(
        len: u64,
        modified: Option<SystemTime>,
        coding: Option<Coding>,
    ) -> Validators {
        let since_epoch = modified.and_then(|m| m.duration_since(UNIX_EPOCH).ok());
        let secs = since_epoch.map(|d| d.as_secs());
        let etag = match coding {
            None => format!("\"{:x}-{len:x}\"", secs.unwrap_or(0)),
            Some(c) => format!("\"{:x}-{len:x}-{}\"", secs.unwrap_or(0), c.as_str()),
        };
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

impl Validators {
    /// Whether the request's `Range` applies to this representation: yes
    /// without `If-Range`; with one, only if it names this ETag (strong
    /// comparison) or this `Last-Modified` exactly, a second already past
    /// at `now_secs` (RFC 9110 §13.1.5). Several `If-Range` lines are
    /// malformed: no.
    pub fn range_applies(&self, req: &HeaderMap, now_secs: u64) -> bool {
        let mut values = req.get_all(header::IF_RANGE).iter();
        match (values.next(), values.next()) {
            (None, _) => true,
            (Some(v), None) => {
                ranges::if_range_matches(v, &self.etag, self.modified_secs, now_secs)
            }
            _ => false,
        }
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

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn if_range_against_the_validators() {
        let mtime = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let v = Validators::new(1234, Some(mtime));
        let etag = v.etag.to_str().unwrap().to_string();
        assert!(v.range_applies(&HeaderMap::new(), NOW));
        assert!(v.range_applies(&req(&[("if-range", &etag)]), NOW));
        assert!(v.range_applies(&req(&[("if-range", "Tue, 14 Nov 2023 22:13:20 GMT")]), NOW));
        assert!(!v.range_applies(&req(&[("if-range", "\"old\"")]), NOW));
        assert!(!v.range_applies(&req(&[("if-range", &format!("W/{etag}"))]), NOW));
        assert!(!v.range_applies(&req(&[("if-range", "Mon, 13 Nov 2023 00:00:00 GMT")]), NOW));
        assert!(!v.range_applies(&req(&[("if-range", &etag), ("if-range", &etag)]), NOW));
    }

    #[test]
    fn every_variant_has_its_own_etag() {
        let mtime = Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let plain = Validators::new(1234, mtime);
        let tags: Vec<HeaderValue> = PRECOMPRESSED
            .iter()
            .map(|c| Validators::of_variant(1234, mtime, Some(*c)).etag)
            .chain([plain.etag.clone()])
            .collect();
        assert_eq!(tags[0], "\"6553f100-4d2-br\"");
        for (i, a) in tags.iter().enumerate() {
            for b in &tags[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn precompressed_ranking_follows_accept_encoding() {
        use Coding::{Br, Gzip, Zstd};
        for (ae, want) in [
            ("gzip, deflate, br, zstd", vec![Br, Zstd, Gzip]),
            ("gzip, br", vec![Br, Gzip]),
            ("gzip", vec![Gzip]),
            ("br;q=0, gzip", vec![Gzip]),
            ("br;q=0.5, gzip", vec![Gzip, Br]),
            ("*", vec![Br, Zstd, Gzip]),
            ("*;q=0, gzip", vec![Gzip]),
            ("gzip;q=0", vec![]),
            ("identity", vec![]),
            ("gzip;q=0.4, br;q=0.6, identity;q=0.5", vec![Br]),
            ("deflate", vec![]),
            ("", vec![]),
        ] {
            assert_eq!(
                precompressed_ranking(&req(&[("accept-encoding", ae)])),
                want,
                "{ae}"
            );
        }
        assert!(precompressed_ranking(&HeaderMap::new()).is_empty());
        let two_lines = req(&[("accept-encoding", "gzip"), ("accept-encoding", "br;q=0.9")]);
        assert_eq!(precompressed_ranking(&two_lines), vec![Gzip, Br]);
    }

    #[test]
    fn siblings_stay_plain_names_beside_the_file() {
        let s = |p: &str, c, dot| sibling(Path::new(p), c, dot);
        assert_eq!(
            s("app.js", Coding::Br, false),
            Some(PathBuf::from("app.js.br"))
        );
        assert_eq!(
            s("css/site.css", Coding::Gzip, false),
            Some(PathBuf::from("css/site.css.gz"))
        );
        assert_eq!(
            s("docs/index.html", Coding::Zstd, false),
            Some(PathBuf::from("docs/index.html.zst"))
        );
        assert_eq!(s("", Coding::Br, false), None);
        assert_eq!(s("../x.js", Coding::Br, true), None);
        assert_eq!(s("/etc/passwd", Coding::Br, true), None);
        assert_eq!(s(".env", Coding::Gzip, false), None);
        assert_eq!(s(".git/config", Coding::Gzip, false), None);
        assert_eq!(
            s(".env", Coding::Gzip, true),
            Some(PathBuf::from(".env.gz"))
        );
        assert_eq!(
            s(".well-known/a.txt", Coding::Br, false),
            Some(PathBuf::from(".well-known/a.txt.br"))
        );
    }
}
