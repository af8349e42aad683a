//! Static routes (`static: { dir, index, cache_control, dotfiles,
//! precompressed }`): files served by the gate from a directory, GET and
//! HEAD only, with `ETag` / `Last-Modified` and 304s, single byte ranges
//! (206, 416) and, opted in, precompressed siblings (`app.js.br`),
//! streamed in 64 KiB reads. Which file a path names and the header rules
//! live in `filters::static_path` and `filters::ranges`; this module
//! touches the disk.
//!
//! Files are opened with `openat2(RESOLVE_BENEATH)` relative to the
//! directory's descriptor, opened when the gate is built (start, reload):
//! the kernel keeps every step of the lookup, symlinks included, under it,
//! so nothing can be swapped in between a check and the open.

use std::fs::{File, Metadata};
use std::future::Future;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use asgi_gate_config::StaticDir;
use asgi_gate_filters::compression::Coding;
use asgi_gate_filters::ranges::{self, ByteRange, RangeAnswer};
use asgi_gate_filters::static_path::{self, Validators};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::body::{BoxError, GateBody};

/// Bytes per body frame: one blocking read each.
const READ: usize = 256 * 1024;

/// One static route, resolved when the gate is built.
#[derive(Debug)]
pub struct StaticRoute {
    /// Shared with the blocking thread that opens files.
    root: Arc<Root>,
    /// How many `/` the route pattern has before its `{*catch_all}`: the
    /// file's path is what follows that many in the request path. Counted,
    /// not compared: the router matched the decoded path, while the path
    /// given here is its canonical encoding (`/my%20files/` for a route
    /// `/my files/{*path}`).
    prefix_slashes: usize,
    dotfiles: bool,
    /// Look for `file.br` / `.zst` / `.gz` beside the file.
    precompressed: bool,
    cache_control: Option<HeaderValue>,
}

/// The route's directory, where each lookup happens.
#[derive(Debug)]
struct Root {
    /// Canonical: every served file must be under it, after symlinks are
    /// followed.
    path: PathBuf,
    /// `path` opened once: a directory renamed over it later is served only
    /// after a reload (files inside change live).
    dir: OwnedFd,
    index: Option<String>,
}

/// Set on the first ENOSYS (kernels before 5.6, some seccomp profiles).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Why a static route serves no file (`reject.rs` answers 404 or 405).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotServed {
    /// No readable regular file there, or a hidden one.
    NotFound,
    /// Only GET and HEAD are served.
    MethodNotAllowed,
    /// 416: no byte of the `Range` is in the representation of `len`
    /// bytes; `vary` on a precompressed route (the length is the variant's).
    RangeNotSatisfiable { len: u64, vary: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    #[error("route {0}: a static route's path must end in a catch-all, e.g. /static/{{*path}}, with no other parameter")]
    Pattern(String),
    #[error("route {path}: static dir {dir}: {source}")]
    Dir {
        path: String,
        dir: String,
        source: io::Error,
    },
}

impl StaticRoute {
    pub fn new(pattern: &str, conf: &StaticDir) -> Result<StaticRoute, StaticError> {
        let prefix = match pattern.split_once("{*") {
            Some((prefix, rest)) if !prefix.contains('{') && rest.ends_with('}') => prefix,
            _ => return Err(StaticError::Pattern(pattern.to_string())),
        };
        let dir_err = |source| StaticError::Dir {
            path: pattern.to_string(),
            dir: conf.dir.display().to_string(),
            source,
        };
        let path = std::fs::canonicalize(&conf.dir).map_err(dir_err)?;
        let dir = rustix::fs::open(
            &path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| dir_err(e.into()))?;
        Ok(StaticRoute {
            root: Arc::new(Root {
                path,
                dir,
                index: conf.index.clone(),
            }),
            prefix_slashes: prefix.matches('/').count(),
            dotfiles: conf.dotfiles,
            precompressed: conf.precompressed,
            cache_control: conf
                .cache_control
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok()),
        })
    }

    /// The answer for `method` on `path` (the request path, still
    /// percent-encoded). Anything that does not name a readable regular
    /// file under the root, or names a hidden one (`.env`, `.git/`) without
    /// `dotfiles: true`, is 404, without saying why.
    pub async fn serve(
        &self,
        method: &Method,
        path: &str,
        req: &HeaderMap,
    ) -> Result<Response<GateBody>, NotServed> {
        if method != Method::GET && method != Method::HEAD {
            return Err(NotServed::MethodNotAllowed);
        }
        let tail = after_slashes(path, self.prefix_slashes);
        let ranking = match self.precompressed {
            true => static_path::precompressed_ranking(req),
            false => Vec::new(),
        };
        let mut file = self.find(tail, ranking).await.ok_or(NotServed::NotFound)?;
        let len = file.meta.len();
        let validators = Validators::of_variant(len, file.meta.modified().ok(), file.coding);
        let mut resp = Response::new(GateBody::empty());
        let h = resp.headers_mut();
        h.insert(header::ETAG, validators.etag.clone());
        if let Some(lm) = &validators.last_modified {
            h.insert(header::LAST_MODIFIED, lm.clone());
        }
        if let Some(cc) = &self.cache_control {
            h.insert(header::CACHE_CONTROL, cc.clone());
        }
        // Every answer of such a route depends on Accept-Encoding, the
        // identity one and the 304 included, or a cache would mix them up.
        if self.precompressed {
            h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
        if validators.not_modified(req) {
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            return Ok(resp);
        }
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(static_path::content_type(&file.path)),
        );
        if let Some(c) = file.coding {
            h.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(c.as_str()),
            );
        }
        // Ranges of a precompressed variant are of its encoded bytes, as
        // its Content-Length and ETag are.
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let mut span = None;
        if let Some(range) = one_range(req) {
            if validators.range_applies(req, crate::clock::unix_now()) {
                match ranges::parse(range, len) {
                    RangeAnswer::Full => {}
                    RangeAnswer::Partial(r) => span = Some(r),
                    RangeAnswer::NotSatisfiable => {
                        let vary = self.precompressed;
                        return Err(NotServed::RangeNotSatisfiable { len, vary });
                    }
                }
            }
        }
        let count = match span {
            Some(r) => {
                *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                let h = resp.headers_mut();
                h.insert(header::CONTENT_RANGE, r.content_range(len));
                r.count()
            }
            None => len,
        };
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(count));
        if method == Method::GET {
            if let Some(ByteRange { first, .. }) = span.filter(|r| r.first > 0) {
                // lseek on a regular file: no I/O, so not worth a blocking trip.
                file.handle
                    .seek(SeekFrom::Start(first))
                    .map_err(|_| NotServed::NotFound)?;
            }
            *resp.body_mut() = GateBody::boxed(FileBody::new(file.handle, count));
        }
        Ok(resp)
    }

    /// The regular file `tail` names (the index for a directory), opened;
    /// or, when the original exists, its first sibling in `ranking` that
    /// is a regular file, looked up the same way.
    async fn find(&self, tail: &str, ranking: Vec<Coding>) -> Option<OpenFile> {
        let rel = static_path::resolve(tail, self.dotfiles)?;
        let root = self.root.clone();
        let dotfiles = self.dotfiles;
        // One trip to a blocking thread for the whole lookup.
        let file = tokio::task::spawn_blocking(move || {
            let beneath = !NO_OPENAT2.load(Ordering::Relaxed);
            let (path, file, meta) = root.find(rel, beneath)?;
            for coding in ranking {
                let Some(sib) = static_path::sibling(&path, coding, dotfiles) else {
                    continue;
                };
                if let Some((file, meta)) = root.open(&sib, beneath) {
                    if meta.is_file() {
                        return Some((path, file, meta, Some(coding)));
                    }
                }
            }
            Some((path, file, meta, None))
        });
        let (path, handle, meta, coding) = file.await.ok()??;
        Some(OpenFile {
            path,
            handle,
            meta,
            coding,
        })
    }
}

/// The request's `Range`, if it has exactly one (several lines are
/// malformed, hence ignored).
fn one_range(req: &HeaderMap) -> Option<&HeaderValue> {
    let mut values = req.get_all(header::RANGE).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => Some(v),
        _ => None,
    }
}

impl Root {
    /// `rel` (relative, no `..`), or its index if it is a directory.
    /// `beneath`: openat2; else the check-then-open used where openat2 is
    /// missing.
    fn find(&self, mut rel: PathBuf, beneath: bool) -> Option<(PathBuf, File, Metadata)> {
        let (mut file, mut meta) = self.open(&rel, beneath)?;
        if meta.is_dir() {
            rel.push(self.index.as_deref()?);
            (file, meta) = self.open(&rel, beneath)?;
        }
        // Of the opened file itself: what is served is what was checked.
        meta.is_file().then_some((rel, file, meta))
    }

    fn open(&self, rel: &Path, beneath: bool) -> Option<(File, Metadata)> {
        let file = if beneath {
            self.open_beneath(rel)?
        } else {
            self.open_checked(rel)?
        };
        let meta = file.metadata().ok()?;
        Some((file, meta))
    }

    fn open_beneath(&self, rel: &Path) -> Option<File> {
        match openat2_beneath(&self.dir, rel) {
            Ok(fd) => Some(File::from(fd)),
            // An absolute symlink, or one through `..` out of the directory:
            // followed as before, to a file under the root only; that file
            // is then opened beneath the directory again, so a swap in
            // between still cannot lead out.
            Err(Errno::XDEV) => {
                let real = std::fs::canonicalize(self.path.join(rel)).ok()?;
                let Ok(inside) = real.strip_prefix(&self.path) else {
                    tracing::debug!(path = %rel.display(), "static: symlink out of the root refused");
                    return None;
                };
                openat2_beneath(&self.dir, inside).ok().map(File::from)
            }
            Err(Errno::NOSYS) => {
                if !NO_OPENAT2.swap(true, Ordering::Relaxed) {
                    tracing::warn!("static files: openat2 is not available (Linux < 5.6?); checking paths before opening them instead");
                }
                self.open_checked(rel)
            }
            Err(_) => None,
        }
    }

    /// Without openat2: symlinks followed, then the result checked to be
    /// under the root before it is opened by name.
    fn open_checked(&self, rel: &Path) -> Option<File> {
        let real = std::fs::canonicalize(self.path.join(rel)).ok()?;
        if !real.starts_with(&self.path) {
            tracing::debug!(path = %rel.display(), "static: symlink out of the root refused");
            return None;
        }
        nonblocking_open(&real)
    }
}

/// `rel` opened for reading beneath `dir`: every component, symlinks
/// included, must resolve inside it (EXDEV otherwise); no /proc magic links.
/// O_NONBLOCK so that a FIFO in the directory cannot hang the open (it is
/// then refused as not a regular file; regular files ignore the flag).
fn openat2_beneath(dir: &OwnedFd, rel: &Path) -> Result<OwnedFd, Errno> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let mut retries = 0;
    loop {
        match rustix::fs::openat2(dir, rel, flags, Mode::empty(), resolve) {
            // A concurrent rename while resolving `..`: the kernel asks to retry.
            Err(Errno::AGAIN) if retries < 3 => retries += 1,
            r => return r,
        }
    }
}

fn nonblocking_open(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .ok()
}

struct OpenFile {
    /// The original's path, even when a sibling is served: its name gives
    /// the Content-Type.
    path: PathBuf,
    handle: File,
    meta: std::fs::Metadata,
    /// The sibling's coding, when one is served.
    coding: Option<Coding>,
}

/// A file's bytes as body frames, at most `len` of them (the length the
/// response announced, even if the file grows meanwhile). Each frame is one
/// read on a blocking thread, straight into the frame's buffer: tokio's
/// `File` reads into a buffer of its own and copies it out, and 64 KiB
/// frames took 16 thread hand-offs per MiB (profiled on the static_range
/// bench: thread switches 34 % and copies 16 % of the gate's CPU).
struct FileBody {
    /// Here between reads; on the blocking thread during one.
    file: Option<File>,
    reading: Option<tokio::task::JoinHandle<io::Result<Chunk>>>,
    remaining: u64,
}

impl FileBody {
    fn new(file: File, len: u64) -> FileBody {
        FileBody {
            file: Some(file),
            reading: None,
            remaining: len,
        }
    }
}

/// The file back from a blocking read, and what was read.
type Chunk = (File, Vec<u8>);

/// Reads up to `want` bytes at the file's position.
fn read_chunk(file: File, want: usize) -> io::Result<Chunk> {
    let mut buf = Vec::with_capacity(want);
    // `read_to_end` fills the spare capacity without zeroing it first.
    io::Read::read_to_end(&mut io::Read::take(&file, want as u64), &mut buf)?;
    Ok((file, buf))
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        if this.reading.is_none() {
            let Some(file) = this.file.take() else {
                return Poll::Ready(Some(Err("static file read failed".into())));
            };
            let want = usize::try_from(this.remaining).unwrap_or(READ).min(READ);
            this.reading = Some(tokio::task::spawn_blocking(move || read_chunk(file, want)));
        }
        let Some(reading) = this.reading.as_mut() else {
            return Poll::Pending;
        };
        let done = match Pin::new(reading).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(done) => done,
        };
        this.reading = None;
        match done {
            Err(e) => Poll::Ready(Some(Err(e.into()))),
            Ok(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            Ok(Ok((file, chunk))) => {
                if chunk.is_empty() {
                    // Shorter than announced (truncated meanwhile): cut off.
                    this.remaining = 0;
                    return Poll::Ready(Some(Err("static file shrank while being sent".into())));
                }
                this.file = Some(file);
                this.remaining = this.remaining.saturating_sub(chunk.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// What follows the `n`-th `/` of `path` ("" when it has fewer).
fn after_slashes(path: &str, n: usize) -> &str {
    match path.match_indices('/').nth(n.saturating_sub(1)) {
        Some((i, _)) if n > 0 => &path[i + 1..],
        _ if n == 0 => path,
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn conf(dir: &Path, index: Option<&str>) -> StaticDir {
        StaticDir {
            dir: dir.to_path_buf(),
            index: index.map(str::to_string),
            cache_control: Some("public, max-age=60".into()),
            dotfiles: false,
            precompressed: false,
        }
    }

    #[tokio::test]
    async fn a_prefix_with_an_encoded_character_finds_its_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("app.js"), "console.log(1)").unwrap();
        std::fs::write(d.path().join("index.html"), "<h1>index</h1>").unwrap();
        let r = StaticRoute::new("/my files/{*p}", &conf(d.path(), Some("index.html"))).unwrap();
        let none = HeaderMap::new();
        let js = r
            .serve(&Method::GET, "/my%20files/app.js", &none)
            .await
            .unwrap();
        assert_eq!(body_of(js).await, "console.log(1)");
        let missing = r.serve(&Method::GET, "/my%20files/nope.js", &none).await;
        assert!(matches!(missing, Err(NotServed::NotFound)));
        assert_eq!(after_slashes("/a/b/c", 2), "b/c");
        assert_eq!(after_slashes("/a/", 2), "");
        assert_eq!(after_slashes("/a", 2), "");
    }

    #[test]
    fn patterns_must_end_in_a_catch_all() {
        let d = tempfile::tempdir().unwrap();
        let c = conf(d.path(), None);
        assert!(StaticRoute::new("/static/{*path}", &c).is_ok());
        assert!(StaticRoute::new("/{*path}", &c).is_ok());
        for bad in ["/static", "/u/{id}/{*path}", "/static/{file}"] {
            assert!(StaticRoute::new(bad, &c).is_err(), "{bad}");
        }
        let gone = conf(&d.path().join("missing"), None);
        assert!(StaticRoute::new("/s/{*p}", &gone).is_err());
        let r = StaticRoute::new("/s/{*p}", &c).unwrap();
        assert_eq!(r.root.path, std::fs::canonicalize(d.path()).unwrap());
    }

    async fn body_of(resp: Response<GateBody>) -> Bytes {
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes()
    }

    #[tokio::test]
    async fn serves_files_index_and_304_and_refuses_escapes() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("www");
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::write(root.join("app.js"), "console.log(1)").unwrap();
        std::fs::write(root.join("docs/index.html"), "<h1>docs</h1>").unwrap();
        std::fs::write(d.path().join("secret.txt"), "no").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret.txt"), root.join("link.txt")).unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(root.join("big.bin"), &big).unwrap();
        let r = StaticRoute::new("/s/{*p}", &conf(&root, Some("index.html"))).unwrap();
        let none = HeaderMap::new();

        let js = r.serve(&Method::GET, "/s/app.js", &none).await.unwrap();
        assert_eq!(js.status(), 200);
        assert_eq!(
            js.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(js.headers()["content-length"], "14");
        assert_eq!(js.headers()["cache-control"], "public, max-age=60");
        let etag = js.headers()["etag"].clone();
        assert_eq!(body_of(js).await, "console.log(1)");

        let big_resp = r.serve(&Method::GET, "/s/big.bin", &none).await.unwrap();
        assert_eq!(body_of(big_resp).await, big);

        let head = r.serve(&Method::HEAD, "/s/app.js", &none).await.unwrap();
        assert_eq!(head.headers()["content-length"], "14");
        assert!(body_of(head).await.is_empty());

        let mut cond = HeaderMap::new();
        cond.insert(header::IF_NONE_MATCH, etag);
        let not_modified = r.serve(&Method::GET, "/s/app.js", &cond).await.unwrap();
        assert_eq!(not_modified.status(), 304);
        assert!(body_of(not_modified).await.is_empty());

        for dir in ["/s/docs", "/s/docs/", "/s/docs/index.html"] {
            let idx = r.serve(&Method::GET, dir, &none).await.unwrap();
            assert_eq!(body_of(idx).await, "<h1>docs</h1>", "{dir}");
        }
        for missing in [
            "/s/nope.js",
            "/s/",
            "/s/../secret.txt",
            "/s/%2e%2e/secret.txt",
            "/s/link.txt",
        ] {
            let e = r.serve(&Method::GET, missing, &none).await.err();
            assert_eq!(e, Some(NotServed::NotFound), "{missing}");
        }
        let e = r.serve(&Method::POST, "/s/app.js", &none).await.err();
        assert!(matches!(e, Some(NotServed::MethodNotAllowed)));
    }

    #[tokio::test]
    async fn dotfiles_are_404_unless_the_route_opts_in() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join(".git")).unwrap();
        std::fs::create_dir_all(d.path().join(".well-known")).unwrap();
        std::fs::write(d.path().join(".env"), "SECRET=1").unwrap();
        std::fs::write(d.path().join(".git/config"), "[core]").unwrap();
        std::fs::write(d.path().join(".well-known/security.txt"), "Contact: x").unwrap();
        let none = HeaderMap::new();
        let mut c = conf(d.path(), None);
        let r = StaticRoute::new("/s/{*p}", &c).unwrap();
        for hidden in ["/s/.env", "/s/.git/config", "/s/%2eenv"] {
            let e = r.serve(&Method::GET, hidden, &none).await.err();
            assert_eq!(e, Some(NotServed::NotFound), "{hidden}");
        }
        let wk = r.serve(&Method::GET, "/s/.well-known/security.txt", &none);
        assert_eq!(body_of(wk.await.unwrap()).await, "Contact: x");

        c.dotfiles = true;
        let r = StaticRoute::new("/s/{*p}", &c).unwrap();
        let env = r.serve(&Method::GET, "/s/.env", &none).await.unwrap();
        assert_eq!(body_of(env).await, "SECRET=1");
        let git = r
            .serve(&Method::GET, "/s/.git/config", &none)
            .await
            .unwrap();
        assert_eq!(body_of(git).await, "[core]");
    }

    /// A range is read from its offset; a sibling that is not a regular
    /// file (a FIFO, a directory) is passed over for the next coding, and
    /// siblings are only looked for on a `precompressed` route.
    #[tokio::test]
    async fn ranges_and_siblings() {
        let d = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(d.path().join("big.bin"), &big).unwrap();
        std::fs::write(d.path().join("app.js"), "plain").unwrap();
        nix_mkfifo(&d.path().join("app.js.br"));
        std::fs::create_dir(d.path().join("app.js.zst")).unwrap();
        std::fs::write(d.path().join("app.js.gz"), "gzipped").unwrap();
        let mut c = conf(d.path(), None);
        let r = StaticRoute::new("/s/{*p}", &c).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            header::RANGE,
            HeaderValue::from_static("bytes=70000-140001"),
        );
        let part = r.serve(&Method::GET, "/s/big.bin", &h).await.unwrap();
        assert_eq!(part.status(), 206);
        assert_eq!(part.headers()["content-range"], "bytes 70000-140001/200000");
        assert_eq!(body_of(part).await, big[70_000..140_002]);
        h.insert(header::RANGE, HeaderValue::from_static("bytes=200000-"));
        let e = r.serve(&Method::GET, "/s/big.bin", &h).await.err();
        assert_eq!(
            e,
            Some(NotServed::RangeNotSatisfiable {
                len: 200_000,
                vary: false
            })
        );

        let mut ae = HeaderMap::new();
        ae.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, zstd, gzip"),
        );
        let off = r.serve(&Method::GET, "/s/app.js", &ae).await.unwrap();
        assert!(off.headers().get("content-encoding").is_none());
        assert!(off.headers().get("vary").is_none());
        assert_eq!(body_of(off).await, "plain");
        c.precompressed = true;
        let r = StaticRoute::new("/s/{*p}", &c).unwrap();
        let on = r.serve(&Method::GET, "/s/app.js", &ae).await.unwrap();
        assert_eq!(on.headers()["content-encoding"], "gzip");
        assert_eq!(on.headers()["vary"], "Accept-Encoding");
        assert_eq!(
            on.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(body_of(on).await, "gzipped");
    }

    /// openat2 and the check-then-open fallback agree: symlinks are followed
    /// (relative or absolute, even out and back in) to files under the root
    /// only; a FIFO is refused without hanging.
    #[test]
    fn both_lookups_follow_symlinks_only_under_the_root() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let out = std::fs::canonicalize(d.path()).unwrap();
        let root = out.join("www");
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::write(root.join("a.txt"), "a").unwrap();
        std::fs::write(root.join("docs/index.html"), "idx").unwrap();
        std::fs::write(out.join("secret.txt"), "no").unwrap();
        symlink("../secret.txt", root.join("rel-out")).unwrap();
        symlink(out.join("secret.txt"), root.join("abs-out")).unwrap();
        symlink("..", root.join("up")).unwrap();
        symlink("/proc/self/root/etc/hostname", root.join("proc")).unwrap();
        symlink("a.txt", root.join("rel-in")).unwrap();
        symlink(root.join("a.txt"), root.join("abs-in")).unwrap();
        symlink(root.join("docs"), root.join("abs-dir")).unwrap();
        nix_mkfifo(&root.join("fifo"));
        let r = StaticRoute::new("/s/{*p}", &conf(&root, Some("index.html"))).unwrap();
        for beneath in [true, false] {
            let find = |p: &str| {
                r.root.find(PathBuf::from(p), beneath).map(|(_, mut f, _)| {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut f, &mut s).unwrap();
                    s
                })
            };
            for (p, want) in [
                ("a.txt", Some("a")),
                ("rel-in", Some("a")),
                ("abs-in", Some("a")),
                ("up/www/a.txt", Some("a")),
                ("docs", Some("idx")),
                ("abs-dir", Some("idx")),
                ("", None),
                ("rel-out", None),
                ("abs-out", None),
                ("up/secret.txt", None),
                ("proc", None),
                ("fifo", None),
                ("missing", None),
            ] {
                assert_eq!(find(p).as_deref(), want, "{p} (openat2: {beneath})");
            }
        }
    }

    fn nix_mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            c.as_c_str(),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }
}
