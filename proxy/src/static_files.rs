//! Static routes (`static: { dir, index, cache_control }`): files served by
//! the gate from a directory, GET and HEAD only, with `ETag` /
//! `Last-Modified` and 304s, streamed in 64 KiB reads. Which file a path
//! names and the header rules live in `filters::static_path`; this module
//! touches the disk.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use asgi_gate_config::StaticDir;
use asgi_gate_filters::static_path::{self, Validators};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncRead;

use crate::body::{BoxError, GateBody};
use crate::reject::Reject;

const READ: usize = 64 * 1024;

/// One static route, resolved when the gate is built.
#[derive(Debug)]
pub struct StaticRoute {
    /// The directory, canonical: every served file must be under it, after
    /// symlinks are followed.
    root: PathBuf,
    /// The route pattern up to its `{*catch_all}`.
    prefix: String,
    index: Option<String>,
    cache_control: Option<HeaderValue>,
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
        let root = std::fs::canonicalize(&conf.dir).map_err(|source| StaticError::Dir {
            path: pattern.to_string(),
            dir: conf.dir.display().to_string(),
            source,
        })?;
        Ok(StaticRoute {
            root,
            prefix: prefix.to_string(),
            index: conf.index.clone(),
            cache_control: conf
                .cache_control
                .as_deref()
                .and_then(|c| HeaderValue::from_str(c).ok()),
        })
    }

    /// The answer for `method` on `path` (the request path, still
    /// percent-encoded). Anything that does not name a readable regular
    /// file under the root is 404, without saying why.
    pub async fn serve(
        &self,
        method: &Method,
        path: &str,
        req: &HeaderMap,
    ) -> Result<Response<GateBody>, Reject> {
        if method != Method::GET && method != Method::HEAD {
            return Err(Reject::MethodNotAllowed(HeaderValue::from_static(
                "GET, HEAD",
            )));
        }
        let tail = path.strip_prefix(&self.prefix).unwrap_or("");
        let file = self.find(tail).await.ok_or(Reject::NotFound)?;
        let meta = &file.meta;
        let validators = Validators::new(meta.len(), meta.modified().ok());
        let mut resp = Response::new(GateBody::empty());
        let h = resp.headers_mut();
        h.insert(header::ETAG, validators.etag.clone());
        if let Some(lm) = &validators.last_modified {
            h.insert(header::LAST_MODIFIED, lm.clone());
        }
        if let Some(cc) = &self.cache_control {
            h.insert(header::CACHE_CONTROL, cc.clone());
        }
        if validators.not_modified(req) {
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            return Ok(resp);
        }
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(static_path::content_type(&file.path)),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.len()));
        if method == Method::GET {
            *resp.body_mut() = GateBody::boxed(FileBody::new(file.handle, meta.len()));
        }
        Ok(resp)
    }

    /// The regular file `tail` names (the index for a directory), opened.
    async fn find(&self, tail: &str) -> Option<OpenFile> {
        let mut path = static_path::resolve(&self.root, tail)?;
        if tokio::fs::metadata(&path).await.ok()?.is_dir() {
            path.push(self.index.as_deref()?);
        }
        // Symlinks are followed, but only to files under the root.
        let real = tokio::fs::canonicalize(&path).await.ok()?;
        if !real.starts_with(&self.root) {
            tracing::debug!(path = %path.display(), "static: symlink out of the root refused");
            return None;
        }
        let handle = tokio::fs::File::open(&real).await.ok()?;
        // Of the opened file itself: what is served is what was checked.
        let meta = handle.metadata().await.ok()?;
        meta.is_file().then_some(OpenFile {
            path: real,
            handle,
            meta,
        })
    }
}

struct OpenFile {
    path: PathBuf,
    handle: tokio::fs::File,
    meta: std::fs::Metadata,
}

/// A file's bytes as body frames, at most `len` of them (the length the
/// response announced, even if the file grows meanwhile).
struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
}

impl FileBody {
    fn new(file: tokio::fs::File, len: u64) -> FileBody {
        FileBody {
            file,
            remaining: len,
        }
    }
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
        let want = usize::try_from(this.remaining).unwrap_or(READ).min(READ);
        // tokio's File reads on a blocking thread into its own buffer, so a
        // chunk dropped on Pending loses nothing.
        let mut chunk = vec![0u8; want];
        let mut read = tokio::io::ReadBuf::new(&mut chunk);
        match Pin::new(&mut this.file).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                if n == 0 {
                    // Shorter than announced (truncated meanwhile): cut off.
                    this.remaining = 0;
                    return Poll::Ready(Some(Err("static file shrank while being sent".into())));
                }
                chunk.truncate(n);
                this.remaining -= n as u64;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn conf(dir: &Path, index: Option<&str>) -> StaticDir {
        StaticDir {
            dir: dir.to_path_buf(),
            index: index.map(str::to_string),
            cache_control: Some("public, max-age=60".into()),
        }
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
        assert_eq!(r.root, std::fs::canonicalize(d.path()).unwrap());
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
            assert_eq!(e, Some(Reject::NotFound), "{missing}");
        }
        let e = r.serve(&Method::POST, "/s/app.js", &none).await.err();
        assert!(matches!(e, Some(Reject::MethodNotAllowed(_))));
    }
}
