//! A bodiless idempotent request's head, kept so that it can go to another
//! worker if the first one dies before answering.

use std::cell::RefCell;

use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body::Body;

use super::RequestBody;

/// The head of a bodiless idempotent request, copied before it is sent so
/// that it can go to another worker if the first one dies before answering.
/// Kept as bytes (cloning a header value can allocate) in buffers reused
/// per thread: a request answered at the first try allocates nothing for it.
pub(super) struct Replay {
    method: Method,
    /// The path and query, then each field's name and value, back to back.
    bytes: Vec<u8>,
    target_end: usize,
    /// Where each field's name and value end in `bytes`.
    fields: Vec<(usize, usize)>,
}

/// Spare [`Replay`]s kept per thread, and the largest buffer kept.
const SPARE_REPLAYS: usize = 128;
const SPARE_BYTES: usize = 8 * 1024;

thread_local! {
    // Boxed: the request's future holds a pointer, not the whole Replay.
    #[allow(clippy::vec_box)]
    static SPARE: RefCell<Vec<Box<Replay>>> = const { RefCell::new(Vec::new()) };
}

/// RFC 9110 §9.2.2: sending these twice means what sending them once does.
/// PUT and DELETE included, as nginx's `proxy_next_upstream` does (it
/// excludes only the non-idempotent POST, PATCH, LOCK...).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

impl Replay {
    /// A copy of `req`'s head if it could be sent again (and there is
    /// another worker to send it to).
    pub(super) fn of(workers: usize, req: &Request<RequestBody>) -> Option<Box<Replay>> {
        if workers < 2 || !idempotent(req.method()) || !req.body().is_end_stream() {
            return None;
        }
        let mut r = SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_else(|| {
            Box::new(Replay {
                method: Method::GET,
                bytes: Vec::new(),
                target_end: 0,
                fields: Vec::new(),
            })
        });
        r.method = req.method().clone();
        r.bytes.clear();
        r.fields.clear();
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        r.bytes.extend_from_slice(target.as_bytes());
        r.target_end = r.bytes.len();
        for (name, value) in req.headers() {
            r.bytes.extend_from_slice(name.as_str().as_bytes());
            let name_end = r.bytes.len();
            r.bytes.extend_from_slice(value.as_bytes());
            let end = r.bytes.len();
            r.fields.push((name_end, end));
        }
        Some(r)
    }

    pub(super) fn recycle(self: Box<Self>) {
        if self.bytes.capacity() > SPARE_BYTES {
            return;
        }
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARE_REPLAYS {
                s.push(self);
            }
        });
    }

    /// The request again (this allocates: it is the rare path).
    pub(super) fn request(&self) -> Option<Request<RequestBody>> {
        let mut req = Request::new(RequestBody::empty());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = Uri::try_from(self.bytes.get(..self.target_end)?).ok()?;
        let headers = req.headers_mut();
        headers.reserve(self.fields.len());
        let mut start = self.target_end;
        for &(name_end, end) in &self.fields {
            let name = HeaderName::from_bytes(self.bytes.get(start..name_end)?).ok()?;
            let value = HeaderValue::from_bytes(self.bytes.get(name_end..end)?).ok()?;
            headers.append(name, value);
            start = end;
        }
        Some(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(method: Method) -> Request<RequestBody> {
        let mut req = Request::new(RequestBody::empty());
        *req.method_mut() = method;
        *req.uri_mut() = Uri::from_static("/a/b?x=1&y=%2F");
        let h = req.headers_mut();
        h.insert(http::header::HOST, HeaderValue::from_static("example.com"));
        h.append("x-custom", HeaderValue::from_static("one"));
        h.append("x-custom", HeaderValue::from_static("two"));
        h.insert("x-request-id", HeaderValue::from_bytes(b"abc\xff").unwrap());
        req
    }

    #[test]
    fn a_replay_is_the_same_head() {
        let req = get(Method::DELETE);
        let again = Replay::of(2, &req).unwrap().request().unwrap();
        assert_eq!(again.method(), Method::DELETE);
        assert_eq!(again.uri(), req.uri());
        assert_eq!(again.headers(), req.headers());
        assert!(again.body().is_end_stream());
    }

    #[test]
    fn only_idempotent_requests_with_another_worker_are_kept() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
            Method::TRACE,
        ] {
            assert!(Replay::of(2, &get(m.clone())).is_some(), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(Replay::of(2, &get(m.clone())).is_none(), "{m}");
        }
        // One worker: nowhere to send it again.
        assert!(Replay::of(1, &get(Method::GET)).is_none());
    }

    #[test]
    fn replays_are_reused() {
        let r = Replay::of(2, &get(Method::GET)).unwrap();
        let at = &*r as *const Replay;
        r.recycle();
        let r = Replay::of(2, &get(Method::GET)).unwrap();
        assert_eq!(&*r as *const Replay, at, "a spare one is taken first");
    }
}
