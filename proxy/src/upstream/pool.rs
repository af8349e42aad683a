//! One worker's connection pool: the connector, the only way a socket to
//! the worker is opened, holding a semaphore permit per open socket; the
//! idle connections, warmest first; and the [`Lease`] a response holds
//! until its body ends.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use asgi_gate_config::Upstream as UpstreamConf;

use super::RequestBody;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Why no connection to a worker could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("all {0} connections to the worker are busy")]
    PoolFull(usize),
    #[error("connect timed out")]
    Timeout,
    #[error("connect failed: {0}")]
    Io(#[from] io::Error),
}

/// A socket to a worker, holding its pool permit until it is closed.
pub struct UdsStream {
    stream: UnixStream,
    _permit: OwnedSemaphorePermit,
    /// Bytes read so far: tells whether a failed request got any answer.
    read: Arc<AtomicU64>,
}

impl AsyncRead for UdsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for UdsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Opens sockets to one worker, never more than its permits allow.
struct UdsConnector {
    path: Arc<PathBuf>,
    permits: Arc<Semaphore>,
    max: usize,
    connect_timeout: Duration,
    waits: Option<prometheus::IntCounter>,
    errors: Option<prometheus::IntCounter>,
}

impl UdsConnector {
    /// The socket, for a permit already held.
    async fn open(
        &self,
        permit: OwnedSemaphorePermit,
        deadline: tokio::time::Instant,
        read: Arc<AtomicU64>,
    ) -> Result<UdsStream, ConnectError> {
        let connected = tokio::time::timeout_at(deadline, UnixStream::connect(&*self.path)).await;
        let stream = match connected {
            Ok(Ok(s)) => s,
            failed => {
                if let Some(e) = &self.errors {
                    e.inc();
                }
                return Err(match failed {
                    Ok(Err(e)) => ConnectError::Io(e),
                    _ => ConnectError::Timeout,
                });
            }
        };
        Ok(UdsStream {
            stream,
            _permit: permit,
            read,
        })
    }
}

type Sender = http1::SendRequest<RequestBody>;

/// One open connection: its request handle and its socket's read count.
struct Conn {
    tx: Sender,
    read: Arc<AtomicU64>,
}

struct IdleConn {
    conn: Conn,
    since: Instant,
}

/// One worker's connections: the idle ones (most recent last, so the
/// warmest is reused first) and the connector that opens new ones. A
/// connection is idle from the end of its response body until it is taken
/// again; a busy one is held by the [`Lease`] of its request.
pub(super) struct Pool {
    idle: Mutex<Vec<IdleConn>>,
    /// Signalled on every check-in, for requests waiting at the cap.
    returned: Notify,
    max_idle: usize,
    idle_timeout: Duration,
    connector: UdsConnector,
}

/// Why a request could not be sent to a worker.
#[derive(Debug)]
pub(super) enum SendError {
    Connect(ConnectError),
    Hyper(hyper::Error),
}

/// A request one worker did not answer.
pub(super) struct Failed {
    pub(super) error: SendError,
    /// The request itself when none of it was written (boxed: this is the
    /// rare path, and it keeps the send future small).
    pub(super) unsent: Option<Box<Request<RequestBody>>>,
    /// Some of a response had come back on the connection.
    pub(super) answered: bool,
}

impl Failed {
    fn unsent(error: SendError, req: Request<RequestBody>) -> Failed {
        Failed {
            error,
            unsent: Some(Box::new(req)),
            answered: false,
        }
    }
}

impl Pool {
    /// The pool of the worker at `socket`, opening at most `max` sockets
    /// (one per permit).
    pub(super) fn new(
        upstream: &str,
        socket: Arc<PathBuf>,
        permits: Arc<Semaphore>,
        max: usize,
        conf: &UpstreamConf,
    ) -> Pool {
        let metrics = crate::metrics::get();
        let connector = UdsConnector {
            path: socket,
            permits,
            max,
            connect_timeout: conf.connect_timeout,
            waits: metrics.map(|m| m.pool_waits.with_label_values(&[upstream])),
            errors: metrics.map(|m| m.connect_errors.with_label_values(&[upstream])),
        };
        Pool {
            idle: Mutex::new(Vec::new()),
            returned: Notify::new(),
            max_idle: conf.pool.max_idle,
            idle_timeout: conf.pool.idle_timeout,
            connector,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<IdleConn>> {
        // Nothing panics while it is held.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still open and not
    /// older than `idle_timeout` (older ones are dropped, which closes them:
    /// uvicorn closes its side after 5 s).
    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.lock();
        while let Some(c) = idle.pop() {
            if !c.conn.tx.is_closed() && c.since.elapsed() < self.idle_timeout {
                return Some(c.conn);
            }
        }
        None
    }

    fn checkin(&self, conn: Conn) {
        if conn.tx.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push(IdleConn {
                conn,
                since: Instant::now(),
            });
            drop(idle);
            self.returned.notify_one();
        }
    }

    /// Closes the connections idle for `idle_timeout` or more.
    pub(super) fn reap(&self) {
        let timeout = self.idle_timeout;
        self.lock()
            .retain(|c| !c.conn.tx.is_closed() && c.since.elapsed() < timeout);
    }

    /// A new connection (`false`), or an idle one (`true`) checked in while
    /// waiting at `max_connections`: it waits, until `connect_timeout`, for
    /// whichever comes first, a connection checked in or a permit freed by
    /// one that closed. Boxed by its caller: it is the rare path, and its
    /// future is large (the connect, the handshake, the wait).
    async fn connect(&self) -> Result<(Conn, bool), SendError> {
        let c = &self.connector;
        let deadline = tokio::time::Instant::now() + c.connect_timeout;
        let permit = match c.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if let Some(w) = &c.waits {
                    w.inc();
                }
                let full = || SendError::Connect(ConnectError::PoolFull(c.max));
                let permit = c.permits.clone().acquire_owned();
                let timeout = tokio::time::sleep_until(deadline);
                tokio::pin!(permit, timeout);
                loop {
                    tokio::select! {
                        p = &mut permit => break p.map_err(|_| full())?,
                        () = self.returned.notified() => {
                            if let Some(conn) = self.checkout() {
                                return Ok((conn, true));
                            }
                        }
                        () = &mut timeout => return Err(full()),
                    }
                }
            }
        };
        let read = Arc::new(AtomicU64::new(0));
        let io = c
            .open(permit, deadline, read.clone())
            .await
            .map_err(SendError::Connect)?;
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(SendError::Hyper)?;
        // Runs until the worker or the gate closes the connection; then the
        // socket, and with it the permit, is released.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "worker connection ended");
            }
        });
        Ok((Conn { tx, read }, false))
    }

    /// Sends `req` on an idle connection or a new one. A request that a
    /// reused connection could not take (the worker had closed it) is sent
    /// again on another; one that was written is never sent twice here.
    pub(super) async fn send(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), Failed> {
        loop {
            let (mut conn, reused) = match self.checkout() {
                Some(conn) => (conn, true),
                None => match Box::pin(self.connect()).await {
                    Ok(c) => c,
                    Err(e) => return Err(Failed::unsent(e, req)),
                },
            };
            if reused && !conn.tx.is_ready() && conn.tx.ready().await.is_err() {
                continue;
            }
            let read_before = conn.read.load(Ordering::Relaxed);
            match conn.tx.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        conn: Some((conn, self.clone())),
                    };
                    return Ok((resp, lease));
                }
                Err(mut e) => match e.take_message() {
                    Some(again) if reused => req = again,
                    Some(again) => {
                        return Err(Failed::unsent(SendError::Hyper(e.into_error()), again))
                    }
                    None => {
                        return Err(Failed {
                            error: SendError::Hyper(e.into_error()),
                            unsent: None,
                            answered: conn.read.load(Ordering::Relaxed) != read_before,
                        })
                    }
                },
            }
        }
    }
}

/// A worker connection serving one response. [`Lease::done`] at the end of
/// the response body puts it back in the pool; dropped before that (a
/// client gone mid-body, an upgrade), the connection is closed instead.
pub struct Lease {
    conn: Option<(Conn, Arc<Pool>)>,
}

impl Lease {
    pub fn done(mut self) {
        if let Some((conn, pool)) = self.conn.take() {
            pool.checkin(conn);
        }
    }
}
