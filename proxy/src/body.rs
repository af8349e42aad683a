//! What the client receives: `GateBody`, the worker's stream (holding its
//! worker slot and connection until it ends) or a small body the gate made,
//! and the [`Stall`] mark a body leaves for its task's watcher
//! (`server::watch`). The client's body on its way to the worker is
//! `upstream::RequestBody`.

use std::cell::Cell;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use asgi_gate_filters::forwarding;
use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::upstream::InFlight;

/// Response bytes as the worker sent them (before compression).
static UPSTREAM_BYTES: std::sync::LazyLock<Option<prometheus::IntCounter>> =
    std::sync::LazyLock::new(|| {
        crate::metrics::get().map(|m| m.bytes.with_label_values(&["upstream"]))
    });

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

thread_local! {
    /// The stall slot of the watched task being polled.
    static STALL: Cell<Option<Arc<Stall>>> = const { Cell::new(None) };
}

/// Bit 0: the body handed hyper a frame and waits to be polled again. The
/// other bits count polls, so the watcher tells a new wait from an old one.
#[derive(Default)]
pub struct Stall(AtomicU32);

impl Stall {
    /// Makes `slot` the current task's slot while the watcher polls its
    /// task (`server::watch`); returns the previous one, to put back.
    pub fn enter(slot: Option<Arc<Stall>>) -> Option<Arc<Stall>> {
        STALL.with(|c| c.replace(slot))
    }

    /// The poll count and, in bit 0, whether the body waits for hyper.
    #[inline]
    pub fn state(&self) -> u32 {
        self.0.load(Relaxed)
    }

    /// The slot of the watched task being polled (none outside one).
    pub fn current() -> Option<Arc<Stall>> {
        STALL.with(|c| {
            let s = c.take();
            let r = s.clone();
            c.set(s);
            r
        })
    }

    /// hyper polled the body: whatever it had was taken.
    #[inline]
    pub fn polled(&self) {
        let v = self.0.load(Relaxed);
        self.0.store((v | 1).wrapping_add(1), Relaxed);
    }

    /// The body gave hyper bytes (or was just made): until the next poll,
    /// the client is what holds it up.
    #[inline]
    pub fn handed(&self) {
        let v = self.0.load(Relaxed);
        self.0.store(v | 1, Relaxed);
    }
}

/// What an upstream response body holds besides its stream: the worker's
/// in-flight slot with its connection's lease, and the stall slot of the
/// task hyper polls it in (see `server::watch`), told on drop that the body
/// no longer waits.
pub struct Held {
    in_flight: InFlight,
    stall: Option<Arc<Stall>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(s) = &self.stall {
            s.polled();
        }
    }
}

/// The response body has ended: the worker slot is released and the
/// connection can serve another request.
fn finish(guard: &mut Option<Held>) {
    if let Some(lease) = guard.take().and_then(|mut g| g.in_flight.take_lease()) {
        lease.done();
    }
}

/// The worker's response as the client gets it: hop-by-hop headers removed,
/// body streamed.
pub fn to_client(resp: Response<Incoming>, in_flight: InFlight) -> Response<GateBody> {
    let (mut parts, body) = resp.into_parts();
    forwarding::strip_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(parts, GateBody::upstream(body, in_flight))
}

/// Why a response to be buffered (`buffer_response`) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("no whole response body within read_timeout")]
    TimedOut,
    #[error("response body: {0}")]
    Worker(#[from] hyper::Error),
}

/// `buffer_response`: a response whose Content-Length is at most `max` is
/// read whole from the worker first, and its connection goes back to the
/// pool at once, so a slow client holds neither it nor the Python task that
/// writes it. Others (larger, or streamed without a length: SSE, chunked)
/// are streamed as usual.
pub async fn buffered_to_client(
    resp: Response<Incoming>,
    mut in_flight: InFlight,
    max: u64,
    timeout: std::time::Duration,
) -> Result<Response<GateBody>, BufferError> {
    let fits = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n <= max);
    if !fits {
        return Ok(to_client(resp, in_flight));
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = tokio::time::timeout(timeout, body.collect())
        .await
        .map_err(|_| BufferError::TimedOut)??
        .to_bytes();
    if let Some(c) = &*UPSTREAM_BYTES {
        c.inc_by(bytes.len() as u64);
    }
    if let Some(lease) = in_flight.take_lease() {
        lease.done();
    }
    forwarding::strip_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(parts, GateBody::full(bytes)))
}

pin_project_lite::pin_project! {
    /// A response body: the worker's stream, or a body the gate made itself.
    #[project = GateBodyProj]
    pub enum GateBody {
        Upstream { #[pin] body: Incoming, guard: Option<Held> },
        Full { #[pin] body: Full<Bytes> },
        /// A transformed stream (compressed, or buffered to decide).
        Boxed { #[pin] body: UnsyncBoxBody<Bytes, BoxError> },
    }
}

impl GateBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        GateBody::Full {
            body: Full::new(bytes.into()),
        }
    }

    pub fn empty() -> Self {
        GateBody::full(Bytes::new())
    }

    pub fn boxed<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        GateBody::Boxed {
            body: UnsyncBoxBody::new(body.map_err(Into::into)),
        }
    }

    pub fn upstream(body: Incoming, in_flight: InFlight) -> Self {
        // An empty body (204, HEAD, Content-Length: 0) is never polled.
        if body.is_end_stream() {
            let mut guard = Some(Held {
                in_flight,
                stall: None,
            });
            finish(&mut guard);
            return GateBody::Upstream { body, guard };
        }
        // Until hyper first polls it (an h2 stream may never get a window),
        // the client holds it up.
        let stall = Stall::current();
        if let Some(s) = &stall {
            s.handed();
        }
        GateBody::Upstream {
            body,
            guard: Some(Held { in_flight, stall }),
        }
    }
}

impl Body for GateBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            GateBodyProj::Upstream { mut body, guard } => {
                let stall = guard.as_ref().and_then(|g| g.stall.as_deref());
                if let Some(s) = stall {
                    s.polled();
                }
                let r = ready!(body.as_mut().poll_frame(cx));
                match &r {
                    // Release the worker slot as soon as its response is
                    // done; hyper stops polling once `is_end_stream` says so.
                    None => finish(guard),
                    Some(Ok(f)) => {
                        if let (Some(d), Some(c)) = (f.data_ref(), &*UPSTREAM_BYTES) {
                            c.inc_by(d.len() as u64);
                        }
                        if body.is_end_stream() {
                            finish(guard);
                        } else if let Some(s) = guard.as_ref().and_then(|g| g.stall.as_deref()) {
                            s.handed();
                        }
                    }
                    // The connection is not reused: dropping the lease closes it.
                    Some(Err(_)) => drop(guard.take()),
                }
                Poll::Ready(r.map(|f| f.map_err(BoxError::from)))
            }
            GateBodyProj::Boxed { body } => body.poll_frame(cx),
            GateBodyProj::Full { body } => match ready!(body.poll_frame(cx)) {
                Some(Ok(f)) => Poll::Ready(Some(Ok(f))),
                Some(Err(never)) => match never {},
                None => Poll::Ready(None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GateBody::Upstream { body, .. } => body.is_end_stream(),
            GateBody::Full { body } => body.is_end_stream(),
            GateBody::Boxed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GateBody::Upstream { body, .. } => body.size_hint(),
            GateBody::Full { body } => body.size_hint(),
            GateBody::Boxed { body } => body.size_hint(),
        }
    }
}
