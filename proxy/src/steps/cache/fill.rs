//! A miss on its way: the key's fill lock (coalescing) and the body tee
//! that stores the response. A storable body is read from the worker at
//! the worker's pace before its client is sent it (`ReadAhead`): were the
//! copy built as the client reads, one slow reader would hold every waiter
//! for `lock_timeout`. The copy is dropped as soon as it passes
//! `max_entry_size` or the body fails, and then the waiters are woken to
//! ask the worker.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use asgi_gate_filters::cache::{self as policy, Freshness};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::watch;

use super::{serve, Entry, Outcome, Request, Store};
use crate::body::{BoxError, GateBody, Stall};

/// The right to fill one key. Dropping it (stored or not) wakes the
/// requests waiting for it: their `changed()` sees the sender gone.
pub struct FillGuard {
    store: Arc<Store>,
    key: Box<[u8]>,
    _tx: watch::Sender<()>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        let mut fills = self.store.fills.lock().unwrap_or_else(|p| p.into_inner());
        fills.remove(&self.key);
    }
}

impl Store {
    /// The key's fill lock, or a receiver that wakes when its fill ends.
    pub(super) fn lock_or_wait(
        self: &Arc<Self>,
        key: &[u8],
    ) -> Result<FillGuard, watch::Receiver<()>> {
        let mut fills = self.fills.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = fills.get(key) {
            return Err(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        fills.insert(key.into(), rx);
        Ok(FillGuard {
            store: self.clone(),
            key: key.into(),
            _tx: tx,
        })
    }

    /// The key's fill lock if nobody holds it (a background refresh).
    pub(super) fn try_lock(self: &Arc<Self>, key: &[u8]) -> Option<FillGuard> {
        self.lock_or_wait(key).ok()
    }
}

/// A request the cache could not answer: its worker response may be
/// stored (`finish`), or replaced by a stale copy if the worker fails
/// (`stale_on_error`, RFC 5861 §4).
pub struct Fill {
    store: Arc<Store>,
    primary: Box<[u8]>,
    /// The request as forwarded: `Vary` keys and conditional answers.
    req_headers: HeaderMap,
    method: Method,
    credentialed: bool,
    /// The route compresses: the coding is in the key.
    gate_compresses: bool,
    decoded_path: Box<str>,
    /// Held for its `Drop`: the waiters wake when this fill ends.
    _guard: Option<FillGuard>,
    /// A stale copy within its `stale-if-error` window.
    stale: Option<Arc<Entry>>,
}

impl Fill {
    pub(super) fn new(
        store: Arc<Store>,
        primary: Vec<u8>,
        req: &Request<'_>,
        credentialed: bool,
        guard: Option<FillGuard>,
        stale: Option<Arc<Entry>>,
    ) -> Box<Fill> {
        Box::new(Fill {
            store,
            primary: primary.into(),
            req_headers: req.headers.clone(),
            method: req.method.clone(),
            credentialed,
            gate_compresses: req.gate_compresses,
            decoded_path: req.decoded_path.into(),
            _guard: guard,
            stale,
        })
    }

    /// A background refresh sends a GET whatever found the stale copy, and
    /// its answer is stored as one (a HEAD's would not be).
    pub(super) fn refreshing(mut self: Box<Self>) -> Box<Self> {
        self.method = Method::GET;
        self
    }

    /// The request that fills the cache asks for the whole response: the
    /// client's validators are answered from the stored copy afterwards.
    pub fn prepare(&self, headers: &mut HeaderMap) {
        if self.method == Method::GET {
            for name in &policy::CONDITIONAL {
                headers.remove(name);
            }
        }
    }

    fn stale_response(&self, stale: &Entry) -> Response<GateBody> {
        let req = Request {
            method: &self.method,
            headers: &self.req_headers,
            proto: "",
            host: b"",
            path: "",
            query: None,
            decoded_path: "",
            coding: None,
            gate_compresses: false,
            claim: None,
            had_authorization: false,
            has_body: false,
        };
        serve(stale, &req, Outcome::Stale, crate::clock::unix_now_ms())
    }

    /// The worker failed: a stale copy instead, if one may be served.
    pub fn stale_on_error(&self) -> Option<Response<GateBody>> {
        let stale = self.stale.as_ref()?;
        Some(self.stale_response(stale))
    }

    /// The worker's response (after compression) on its way to the
    /// client: surrogate keys removed, stored if it may be (its body read
    /// first, up to `max_entry_size`).
    pub async fn finish(
        self: Box<Self>,
        resp: Response<GateBody>,
    ) -> (Response<GateBody>, Outcome) {
        let (mut parts, body) = resp.into_parts();
        let tags = policy::surrogate_keys(&parts.headers);
        policy::strip_surrogate_headers(&mut parts.headers);
        if parts.status.is_server_error() {
            if let Some(r) = self.stale_on_error() {
                return (r, Outcome::Stale);
            }
        }
        let now = crate::clock::unix_now_ms();
        let stored = match self.method == Method::GET {
            true => policy::storable(parts.status, &parts.headers, self.credentialed, now).ok(),
            false => None,
        };
        let mut vary = policy::vary_names(&parts.headers);
        if self.gate_compresses {
            // The gate's own `Vary: Accept-Encoding`: its negotiated coding
            // is in the primary key already, and the worker never saw the
            // header.
            if let Some(v) = &mut vary {
                v.retain(|n| n != header::ACCEPT_ENCODING);
            }
        }
        let fits = match parts.headers.get(header::CONTENT_LENGTH) {
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|n| n <= self.store.conf.max_entry_size),
            None => true,
        };
        let mut client_headers = parts.headers.clone();
        Outcome::Miss.mark(&mut client_headers);
        let (Some(freshness), Some(vary), true) = (stored, vary, fits) else {
            parts.headers = client_headers;
            return (Response::from_parts(parts, body), Outcome::Miss);
        };
        let pending = Pending {
            status: parts.status,
            headers: std::mem::replace(&mut parts.headers, client_headers),
            freshness,
            tags,
            vary,
            fill: *self,
        };
        if body.is_end_stream() {
            pending.store(Bytes::new());
            return (Response::from_parts(parts, body), Outcome::Miss);
        }
        let limit = pending.fill.store.conf.max_entry_size;
        let reserved = Reserved {
            store: pending.fill.store.clone(),
            bytes: 0,
        };
        let tee = Tee {
            inner: body,
            buf: BytesMut::new(),
            limit,
            reserved,
            pending: Some(Box::new(pending)),
            stored: None,
        };
        let body = ReadAhead::read(tee).await;
        (
            Response::from_parts(parts, GateBody::boxed(body)),
            Outcome::Miss,
        )
    }
}

/// A response waiting for the end of its body to be stored.
struct Pending {
    status: StatusCode,
    headers: HeaderMap,
    freshness: Freshness,
    tags: Vec<String>,
    vary: Vec<HeaderName>,
    fill: Fill,
}

impl Pending {
    fn store(mut self, body: Bytes) {
        self.headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let fill = self.fill;
        let entry = Entry {
            status: self.status,
            headers: self.headers,
            body,
            freshness: self.freshness,
            path: fill.decoded_path.clone(),
            tags: self.tags,
        };
        fill.store
            .put(&fill.primary, &fill.req_headers, entry, self.vary);
        // The waiters wake after the entry is in (`fill._guard` drops here).
    }
}

/// Bytes of copies being filled, counted against `Store::filling`: many
/// concurrent misses for large responses must not hold more than
/// `max_size` besides the store itself.
struct Reserved {
    store: Arc<Store>,
    bytes: u64,
}

impl Reserved {
    /// Counts `n` more bytes, or says no when the budget is spent.
    fn take(&mut self, n: u64) -> bool {
        let before = self.store.filling.fetch_add(n, Relaxed);
        if before.saturating_add(n) > self.store.conf.max_size {
            self.store.filling.fetch_sub(n, Relaxed);
            return false;
        }
        self.bytes += n;
        true
    }

    fn release(&mut self) {
        self.store
            .filling
            .fetch_sub(std::mem::take(&mut self.bytes), Relaxed);
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.release();
    }
}

pin_project_lite::pin_project! {
    /// The client's body, copied on its way until it ends (then stored) or
    /// grows past the limit or the fill budget (then the copy is dropped).
    struct Tee {
        #[pin]
        inner: GateBody,
        buf: BytesMut,
        limit: u64,
        reserved: Reserved,
        pending: Option<Box<Pending>>,
        // The body as stored: what the client is then sent (one copy).
        stored: Option<Bytes>,
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let r = ready!(this.inner.as_mut().poll_frame(cx));
        match &r {
            Some(Ok(frame)) if this.pending.is_some() => match frame.data_ref() {
                Some(d)
                    if (this.buf.len() + d.len()) as u64 <= *this.limit
                        && this.reserved.take(d.len() as u64) =>
                {
                    this.buf.extend_from_slice(d)
                }
                // Too large, over the budget, or trailers: not stored;
                // the waiters go on to the worker.
                _ => {
                    *this.pending = None;
                    *this.buf = BytesMut::new();
                    this.reserved.release();
                }
            },
            Some(Err(_)) => {
                *this.pending = None;
                *this.buf = BytesMut::new();
                this.reserved.release();
            }
            _ => {}
        }
        if r.is_none() || this.inner.is_end_stream() {
            if let Some(p) = this.pending.take() {
                let body = std::mem::take(this.buf).freeze();
                *this.stored = Some(body.clone());
                p.store(body);
            }
            this.reserved.release();
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body whose first frames were read from the worker before its client
/// asked for them: until the copy was stored or given up.
struct ReadAhead {
    ahead: VecDeque<Result<Frame<Bytes>, BoxError>>,
    rest: Pin<Box<Tee>>,
    /// The watched task's stall mark (`server::deadlines`): frames handed
    /// from memory are progress too.
    stall: Option<Arc<Stall>>,
}

impl ReadAhead {
    async fn read(tee: Tee) -> ReadAhead {
        let mut rest = Box::pin(tee);
        let mut ahead = VecDeque::new();
        while rest.pending.is_some() {
            match std::future::poll_fn(|cx| rest.as_mut().poll_frame(cx)).await {
                Some(frame) => ahead.push_back(frame),
                None => break,
            }
        }
        // Stored: its frames were all data, and the entry's bytes are them.
        if let Some(body) = rest.as_mut().project().stored.take() {
            ahead.clear();
            if !body.is_empty() {
                ahead.push_back(Ok(Frame::data(body)));
            }
        }
        ReadAhead {
            ahead,
            rest,
            stall: Stall::current(),
        }
    }
}

impl Body for ReadAhead {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(frame) = this.ahead.pop_front() {
            if let Some(s) = &this.stall {
                s.polled();
                s.handed();
            }
            return Poll::Ready(Some(frame));
        }
        let r = ready!(this.rest.as_mut().poll_frame(cx));
        if let (None, Some(s)) = (&r, &this.stall) {
            s.polled();
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let ahead: u64 = self
            .ahead
            .iter()
            .filter_map(|f| f.as_ref().ok()?.data_ref())
            .map(|d| d.len() as u64)
            .sum();
        let rest = self.rest.size_hint();
        match rest.exact() {
            Some(n) => SizeHint::with_exact(n.saturating_add(ahead)),
            None => {
                let mut h = SizeHint::new();
                h.set_lower(rest.lower().saturating_add(ahead));
                h
            }
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // Not waiting for hyper any more (as `body::Held`).
        if let Some(s) = &self.stall {
            s.polled();
        }
    }
}
