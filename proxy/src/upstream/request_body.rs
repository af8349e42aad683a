//! The client's body on its way to the worker, cut off at `max_body` and
//! after `body_timeout` without a byte.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

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
