//! Deadlines on the client side that hyper does not keep.
//!
//! hyper stops polling a response body while the client takes no bytes (h1:
//! its write queue is full; h2: the stream has no flow-control window), so a
//! timer inside the body would never be looked at. The body only records
//! whether it waits for hyper ([`Stall`], two plain stores per frame); the
//! task hyper polls anyway — the connection's on h1, the stream's on h2
//! (spawned through [`GateExec`]) — holds the one `Sleep`, reset only when
//! the body moved, and drops the connection (h1) or the stream (h2: RST_STREAM
//! CANCEL) once the wait passes `body_timeout`. Dropping the body drops its
//! worker connection's lease, which closes that connection.
//!
//! The connection's wrapper also keeps the first-request deadline (TLS
//! handshake, h2c preface and first request head within `header_timeout` of
//! the accept) and, on h2, the idle close: hyper has neither for h2, and on
//! h1 the wait for the next request is hyper's `header_read_timeout`.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::body::Stall;

thread_local! {
    /// The connection being polled, for the h2 streams it spawns.
    static CONN: Cell<Option<Arc<ConnActivity>>> = const { Cell::new(None) };
}

/// What the connection's wrapper knows about its requests.
pub struct ConnActivity {
    /// A request has started (h1: the service was called; h2: a stream).
    started: AtomicBool,
    /// h2 streams in flight.
    streams: AtomicUsize,
    /// When the last h2 stream ended, in ms since [`BASE`].
    idle_since: AtomicU64,
    body_timeout: Duration,
}

impl ConnActivity {
    pub fn new(body_timeout: Duration) -> Arc<ConnActivity> {
        Arc::new(ConnActivity {
            started: AtomicBool::new(false),
            streams: AtomicUsize::new(0),
            idle_since: AtomicU64::new(now_ms()),
            body_timeout,
        })
    }

    /// Called per request on h1 (a plain store).
    #[inline]
    pub fn request_started(&self) {
        self.started.store(true, Relaxed);
    }
}

static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    u64::try_from(BASE.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The one `Sleep` of a watched task for its response body.
struct StallWatch {
    slot: Option<Arc<Stall>>,
    seen: u32,
    sleep: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
}

impl StallWatch {
    fn new(slot: Option<Arc<Stall>>, timeout: Duration) -> StallWatch {
        StallWatch {
            slot,
            seen: 0,
            sleep: None,
            timeout,
        }
    }

    /// Polls `f` with this task's slot visible to the bodies made in it.
    fn scope<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let prev = Stall::enter(self.slot.take());
        let r = f();
        self.slot = Stall::enter(prev);
        r
    }

    /// After the inner poll: whether the body has waited for the client
    /// longer than the timeout.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(slot) = &self.slot else {
            return false;
        };
        let v = slot.state();
        if v & 1 == 0 {
            self.seen = v;
            return false;
        }
        if self.sleep.is_none() || v != self.seen {
            // A new wait: bytes moved since the last one.
            self.seen = v;
            let deadline = Instant::now() + self.timeout;
            match self.sleep.as_mut() {
                Some(s) => s.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        match self.sleep.as_mut() {
            Some(s) => s.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }
}

enum Phase {
    /// Until the first request starts, within `header_timeout` of the accept.
    FirstRequest,
    /// h2 after that: closed when no stream is in flight for `header_timeout`.
    Idle,
    /// h1 after that: hyper's header_read_timeout bounds the idle wait.
    Off,
}

pin_project_lite::pin_project! {
    /// A client connection's future under the gate's deadlines. Resolves to
    /// `None` when a deadline ended it (the connection is dropped).
    pub struct ConnTask<F> {
        #[pin]
        inner: F,
        act: Option<Arc<ConnActivity>>,
        stall: StallWatch,
        phase: Phase,
        h2: bool,
        header_timeout: Duration,
        deadline: Pin<Box<Sleep>>,
    }
}

impl<F: Future> ConnTask<F> {
    /// `first_by`: when the first request must have started (the accept
    /// plus `header_timeout`).
    pub fn new(
        inner: F,
        act: Arc<ConnActivity>,
        h2: bool,
        header_timeout: Duration,
        first_by: Instant,
    ) -> ConnTask<F> {
        // On h2 the bodies live in the streams' tasks, not here.
        let slot = (!h2).then(|| Arc::new(Stall::default()));
        ConnTask {
            inner,
            stall: StallWatch::new(slot, act.body_timeout),
            act: Some(act),
            phase: Phase::FirstRequest,
            h2,
            header_timeout,
            deadline: Box::pin(tokio::time::sleep_until(first_by)),
        }
    }
}

impl<F: Future> Future for ConnTask<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let inner = this.inner;
        let act_slot = this.act;
        let r = this.stall.scope(|| {
            let prev = CONN.with(|c| c.replace(act_slot.take()));
            let r = inner.poll(cx);
            *act_slot = CONN.with(|c| c.replace(prev));
            r
        });
        if let Poll::Ready(out) = r {
            return Poll::Ready(Some(out));
        }
        if this.stall.expired(cx) {
            crate::metrics::client_cutoff("response_body");
            tracing::debug!("client took no response bytes within body_timeout; connection closed");
            return Poll::Ready(None);
        }
        let Some(act) = act_slot.as_ref() else {
            return Poll::Pending;
        };
        while this.deadline.as_mut().poll(cx).is_ready() {
            match this.phase {
                Phase::FirstRequest if act.started.load(Relaxed) => {
                    *this.phase = if *this.h2 { Phase::Idle } else { Phase::Off };
                    if *this.h2 {
                        let next = Instant::now() + *this.header_timeout;
                        this.deadline.as_mut().reset(next);
                    } else {
                        return Poll::Pending;
                    }
                }
                Phase::FirstRequest => {
                    crate::metrics::client_cutoff("first_request");
                    tracing::debug!("no request within header_timeout; connection closed");
                    return Poll::Ready(None);
                }
                Phase::Idle => {
                    let next = if act.streams.load(Relaxed) == 0 {
                        let since = act.idle_since.load(Relaxed);
                        let due = since.saturating_add(
                            u64::try_from(this.header_timeout.as_millis()).unwrap_or(u64::MAX),
                        );
                        if now_ms() >= due {
                            crate::metrics::client_cutoff("idle");
                            tracing::debug!("idle h2 connection closed");
                            return Poll::Ready(None);
                        }
                        *BASE + Duration::from_millis(due)
                    } else {
                        Instant::now() + *this.header_timeout
                    };
                    this.deadline.as_mut().reset(next);
                }
                Phase::Off => return Poll::Pending,
            }
        }
        Poll::Pending
    }
}

/// Counts an h2 stream in flight on its connection.
struct StreamCount(Arc<ConnActivity>);

impl StreamCount {
    fn new(act: Arc<ConnActivity>) -> StreamCount {
        act.started.store(true, Relaxed);
        act.streams.fetch_add(1, Relaxed);
        StreamCount(act)
    }
}

impl Drop for StreamCount {
    fn drop(&mut self) {
        if self.0.streams.fetch_sub(1, Relaxed) == 1 {
            self.0.idle_since.store(now_ms(), Relaxed);
        }
    }
}

pin_project_lite::pin_project! {
    /// One h2 stream's task (hyper spawns one per stream) with its body
    /// deadline; resolves to `None` when it was cut off.
    pub struct StreamTask<F> {
        #[pin]
        inner: F,
        stall: StallWatch,
        _count: StreamCount,
    }
}

impl<F: Future> Future for StreamTask<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let inner = this.inner;
        if let Poll::Ready(out) = this.stall.scope(|| inner.poll(cx)) {
            return Poll::Ready(Some(out));
        }
        if this.stall.expired(cx) {
            crate::metrics::client_cutoff("response_body");
            tracing::debug!("h2 stream took no response bytes within body_timeout; reset");
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

/// hyper's executor for h2 streams: tokio's, with each stream watched.
#[derive(Clone, Copy, Debug, Default)]
pub struct GateExec;

impl<F> hyper::rt::Executor<F> for GateExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let act = CONN.with(|c| {
            let a = c.take();
            let r = a.clone();
            c.set(a);
            r
        });
        match act {
            Some(act) => {
                let timeout = act.body_timeout;
                tokio::spawn(StreamTask {
                    inner: fut,
                    stall: StallWatch::new(Some(Arc::new(Stall::default())), timeout),
                    _count: StreamCount::new(act),
                });
            }
            None => {
                tokio::spawn(fut);
            }
        }
    }
}
