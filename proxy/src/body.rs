//! The two body types that cross the gate: `RequestBody` (the client's body
//! on its way to the worker, cut off at `max_body`) and `GateBody` (what the
//! client receives: the worker's stream or a small body the gate made).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::upstream::Lease;
use crate::watch::Stall;

/// Response bytes as the worker sent them (before compression).
static UPSTREAM_BYTES: std::sync::LazyLock<Option<prometheus::IntCounter>> =
    std::sync::LazyLock::new(|| {
        crate::metrics::get().map(|m| m.bytes.with_label_values(&["upstream"]))
    });

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("request body exceeds the {max}-byte limit")]
    TooLarge { max: u64 },
    #[error("client body error: {0}")]
    Client(#[source] hyper::Error),
    #[error("the client sent no request body bytes for {0:?}")]
    TimedOut(Duration),
}

/// The client's body, failing once more than `max` bytes arrived or when
/// no byte came for `timeout`. The error aborts the upstream request, so the
/// worker sees an incomplete body, never a truncated one that looks whole,
/// and its connection is closed rather than pooled. It is polled by the
/// worker connection's task, which is woken by the timer.
pub struct RequestBody {
    inner: Option<Incoming>,
    seen: u64,
    max: u64,
    timeout: Duration,
    /// Made at the first wait; armed at the first wait after bytes moved.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl RequestBody {
    pub fn new(inner: Incoming, max: u64, timeout: Duration) -> Self {
        RequestBody {
            inner: Some(inner),
            seen: 0,
            max,
            timeout,
            sleep: None,
            armed: false,
        }
    }

    /// No body (the gate's own requests, such as health checks).
    pub fn empty() -> Self {
        RequestBody {
            inner: None,
            seen: 0,
            max: 0,
            timeout: Duration::ZERO,
            sleep: None,
            armed: false,
        }
    }

    /// The client has nothing for us: true once that lasted `timeout`.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        let sleep = match &mut self.sleep {
            Some(s) => {
                if !self.armed {
                    s.as_mut().reset(tokio::time::Instant::now() + timeout);
                }
                s
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep(timeout))),
        };
        self.armed = true;
        sleep.as_mut().poll(cx).is_ready()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => {
                if self.stalled(cx) {
                    self.inner = None;
                    crate::metrics::client_cutoff("request_body");
                    let t = self.timeout;
                    return Poll::Ready(Some(Err(RequestBodyError::TimedOut(t))));
                }
                return Poll::Pending;
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => {
                return Poll::Ready(Some(Err(RequestBodyError::Client(e))))
            }
            Poll::Ready(Some(Ok(f))) => f,
        };
        self.armed = false;
        if let Some(data) = frame.data_ref() {
            self.seen += data.len() as u64;
            if self.seen > self.max {
                let max = self.max;
                return Poll::Ready(Some(Err(RequestBodyError::TooLarge { max })));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(b) => b.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

/// Counts requests in flight to one worker; decremented when dropped, which
/// is when the response body ends or the client goes away. Holds the worker
/// connection's [`Lease`]: back to the pool only if the body ended.
pub struct InFlight {
    counter: Arc<AtomicUsize>,
    lease: Option<Lease>,
    /// Where the response body tells its task's watch that it waits for the
    /// client (see `watch.rs`); cleared when this ends.
    stall: Option<Arc<Stall>>,
}

impl InFlight {
    pub fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight {
            counter: counter.clone(),
            lease: None,
            stall: None,
        }
    }

    /// The worker connection serving this response.
    pub fn hold(&mut self, lease: Lease) {
        self.lease = Some(lease);
    }

    /// Drops the connection's handle without returning it: after an upgrade
    /// the socket belongs to the WebSocket relay, and the handle's request
    /// channel (a few KiB) would otherwise live as long as the session.
    pub fn release_connection(&mut self) {
        self.lease = None;
    }
}

/// The response body has ended: the worker slot is released and the
/// connection can serve another request.
fn finish(guard: &mut Option<InFlight>) {
    if let Some(lease) = guard.take().and_then(|mut g| g.lease.take()) {
        lease.done();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
        if let Some(s) = &self.stall {
            s.polled();
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body: the worker's stream, or a body the gate made itself.
    #[project = GateBodyProj]
    pub enum GateBody {
        Upstream { #[pin] body: Incoming, guard: Option<InFlight> },
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

    pub fn upstream(body: Incoming, mut guard: InFlight) -> Self {
        // An empty body (204, HEAD, Content-Length: 0) is never polled.
        if body.is_end_stream() {
            let mut guard = Some(guard);
            finish(&mut guard);
            return GateBody::Upstream { body, guard };
        }
        // Until hyper first polls it (an h2 stream may never get a window),
        // the client holds it up.
        guard.stall = Stall::current();
        if let Some(s) = &guard.stall {
            s.handed();
        }
        GateBody::Upstream {
            body,
            guard: Some(guard),
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
