//! Upstream workers and their pools. One pool of HTTP/1.1 connections
//! (hyper's connection-level client) per worker socket; its connector is the
//! only way a socket to the worker is opened, and it holds one semaphore
//! permit per open socket, so `max_connections` is a hard limit: a request
//! that finds no idle connection and no free permit waits for either until
//! `connect_timeout`, then gets 503. Requests go to the worker with the
//! fewest in flight.
//!
//! Our own pool rather than hyper-util's legacy client: with one key per
//! worker and HTTP/1.1 only, its pool keys, checkout races and the task it
//! spawns per request to return a connection were about a tenth of the
//! gate's instructions per proxied request (callgrind, `benches/profile.sh`).
//! A connection goes back to the pool when its response body ends (the
//! [`Lease`]); a reused connection the worker had closed before our request
//! was written is retried on another, as hyper-util's `retry_canceled_requests`
//! did; idle ones older than `idle_timeout` are closed (uvicorn's keep-alive
//! is 5 s).
//!
//! A request a worker could not take goes to another worker of the upstream
//! (see [`Upstream::send`] and the README's "Errors from the worker side").

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use asgi_gate_config::Upstream as UpstreamConf;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Why a request got no answer from the upstream; `reject.rs` turns each
/// into the client's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("the upstream has no worker")]
    NoWorker,
    /// Every connection to the chosen worker stayed busy for `connect_timeout`.
    #[error("the worker's connections are all busy")]
    Busy,
    /// Refused, gone, or no connection within `connect_timeout`.
    #[error("no connection to the worker")]
    Unreachable,
    /// The request was written, but no (whole) answer came.
    #[error("the worker request failed")]
    Failed,
    #[error("no answer within read_timeout")]
    TimedOut,
    /// The client's body went past `max_body`.
    #[error("request body too large")]
    BodyTooLarge,
    /// The client's body ended early or was malformed.
    #[error("request body cut off or malformed")]
    BodyCutOff,
    /// The client's body stalled past `body_timeout`.
    #[error("request body timed out")]
    BodyTimedOut,
}

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
struct Pool {
    idle: Mutex<Vec<IdleConn>>,
    /// Signalled on every check-in, for requests waiting at the cap.
    returned: Notify,
    max_idle: usize,
    idle_timeout: Duration,
    connector: UdsConnector,
}

/// Why a request could not be sent to a worker.
#[derive(Debug)]
enum SendError {
    Connect(ConnectError),
    Hyper(hyper::Error),
}

/// A request one worker did not answer.
struct Failed {
    error: SendError,
    /// The request itself when none of it was written (boxed: this is the
    /// rare path, and it keeps the send future small).
    unsent: Option<Box<Request<RequestBody>>>,
    /// Some of a response had come back on the connection.
    answered: bool,
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
    fn reap(&self) {
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
    async fn send(
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

/// One worker socket with its pool.
pub struct Worker {
    pub socket: Arc<PathBuf>,
    pool: Arc<Pool>,
    permits: Arc<Semaphore>,
    max: usize,
    in_flight: Arc<AtomicUsize>,
    healthy: AtomicBool,
}

impl Worker {
    fn new(upstream: &str, socket: PathBuf, conf: &UpstreamConf) -> Worker {
        let max = conf.pool.max_connections.max(1);
        let permits = Arc::new(Semaphore::new(max));
        let socket = Arc::new(socket);
        let metrics = crate::metrics::get();
        let connector = UdsConnector {
            path: socket.clone(),
            permits: permits.clone(),
            max,
            connect_timeout: conf.connect_timeout,
            waits: metrics.map(|m| m.pool_waits.with_label_values(&[upstream])),
            errors: metrics.map(|m| m.connect_errors.with_label_values(&[upstream])),
        };
        let pool = Arc::new(Pool {
            idle: Mutex::new(Vec::new()),
            returned: Notify::new(),
            max_idle: conf.pool.max_idle,
            idle_timeout: conf.pool.idle_timeout,
            connector,
        });
        Worker {
            socket,
            pool,
            permits,
            max,
            in_flight: Arc::new(AtomicUsize::new(0)),
            // Optimistic until the first health check says otherwise.
            healthy: AtomicBool::new(true),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, ok: bool) {
        self.healthy.store(ok, Ordering::Relaxed);
    }
}

/// Extra attempts a request may get on other workers after its first one.
const MAX_RETRIES: usize = 2;
/// How often a worker out of the rotation is checked again, whatever the
/// health-check interval: a restarted worker takes traffic this soon after
/// its socket answers.
const RECHECK: Duration = Duration::from_millis(200);

/// Sockets whose worker process just exited (supervisor mode), for the
/// health loops to take out of the rotation at once.
static EXITED: LazyLock<broadcast::Sender<Arc<PathBuf>>> =
    LazyLock::new(|| broadcast::channel(64).0);

/// Called by the supervisor when the worker serving `socket` exits.
pub fn worker_exited(socket: &Path) {
    // No receiver: no upstream uses it (yet); nothing to mark.
    let _ = EXITED.send(Arc::new(socket.to_path_buf()));
}

/// A named group of workers.
pub struct Upstream {
    pub name: String,
    /// What it was built from: a reload keeps the pools of an unchanged upstream.
    pub conf: UpstreamConf,
    pub workers: Vec<Worker>,
    pub read_timeout: Duration,
    pub health: Option<asgi_gate_config::HealthCheck>,
    /// Wakes the health loop when a worker is taken out of the rotation.
    down: Arc<Notify>,
}

impl Upstream {
    pub fn new(name: &str, conf: &UpstreamConf) -> Upstream {
        Upstream {
            name: name.to_string(),
            conf: conf.clone(),
            workers: conf
                .sockets
                .iter()
                .map(|s| Worker::new(name, s.clone(), conf))
                .collect(),
            read_timeout: conf.read_timeout,
            health: conf.health_check.clone(),
            down: Arc::new(Notify::new()),
        }
    }

    /// Least outstanding requests among healthy workers (all, if none is).
    fn pick(&self) -> Option<(usize, &Worker)> {
        let load = |(_, w): &(usize, &Worker)| w.in_flight.load(Ordering::Relaxed);
        self.workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.is_healthy())
            .min_by_key(load)
            .or_else(|| self.workers.iter().enumerate().min_by_key(load))
    }

    /// For a retry: least outstanding among the healthy workers not tried yet.
    fn pick_next(&self, tried: &[usize]) -> Option<(usize, &Worker)> {
        self.workers
            .iter()
            .enumerate()
            .filter(|(i, w)| w.is_healthy() && !tried.contains(i))
            .min_by_key(|(_, w)| w.in_flight.load(Ordering::Relaxed))
    }

    /// Out of the rotation until a check finds it answering again (within
    /// [`RECHECK`]).
    fn mark_down(&self, worker: &Worker) {
        // Only on the change: a wake-up per failed request would keep
        // pushing the recheck back while every worker is down.
        if worker.healthy.swap(false, Ordering::Relaxed) {
            self.down.notify_one();
        }
    }

    /// Sends the request to a worker and returns its response head. The
    /// request's headers are already what the worker should see.
    ///
    /// A request the worker did not take (no connection, or its connection
    /// closed before any of it was written) goes to the next healthy worker,
    /// whatever its method. One that was written but got no byte of an answer
    /// goes again only if it is idempotent and bodiless, and only once. At
    /// most one attempt per worker and [`MAX_RETRIES`] extra attempts, all
    /// within one `read_timeout`.
    pub async fn send(
        &self,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, InFlight, Arc<PathBuf>), UpstreamError> {
        let (index, worker) = self.pick().ok_or(UpstreamError::NoWorker)?;
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            // h2 and absolute-form requests: the worker gets origin-form.
            *req.uri_mut() = origin_form(req.uri());
        }
        *req.version_mut() = http::Version::HTTP_11;
        let deadline = tokio::time::Instant::now() + self.read_timeout;
        let replay = Replay::of(self.workers.len(), &req);
        let mut guard = InFlight::enter(&worker.in_flight);
        // Bound in a statement of its own: a match on the awaited result
        // would keep its (large) slot across the retry's await.
        let failed = match tokio::time::timeout_at(deadline, worker.pool.send(req)).await {
            Ok(Ok((resp, lease))) => {
                if let Some(r) = replay {
                    r.recycle();
                }
                guard.hold(lease);
                return Ok((resp, guard, worker.socket.clone()));
            }
            Ok(Err(failed)) => failed,
            Err(_) => {
                if let Some(r) = replay {
                    r.recycle();
                }
                return self.timed_out(worker);
            }
        };
        drop(guard);
        Box::pin(self.retry(index, failed, replay, deadline)).await
    }

    /// The rare path of [`Upstream::send`]: the first worker failed.
    async fn retry(
        &self,
        first: usize,
        mut failed: Failed,
        mut replay: Option<Box<Replay>>,
        deadline: tokio::time::Instant,
    ) -> Result<(Response<Incoming>, InFlight, Arc<PathBuf>), UpstreamError> {
        let mut tried = vec![first];
        let mut worker = &self.workers[first];
        loop {
            let again = match failed.unsent.take() {
                // Busy, not dead: least outstanding chose it, so the others
                // are no less busy; waiting at a second cap only doubles the wait.
                _ if matches!(failed.error, SendError::Connect(ConnectError::PoolFull(_))) => None,
                Some(req) => Some(*req),
                // Sent, no answer: the worker died or dropped it. Once.
                None if !failed.answered => replay.take().and_then(|r| r.request()),
                None => None,
            };
            let error = self.classify(worker, &failed.error);
            let next = match again {
                Some(req) if tried.len() <= MAX_RETRIES => self.pick_next(&tried).map(|n| (req, n)),
                _ => None,
            };
            let Some((req, (index, next))) = next else {
                return Err(error);
            };
            tracing::debug!(upstream = %self.name, from = %worker.socket.display(), to = %next.socket.display(), "retrying on another worker");
            tried.push(index);
            worker = next;
            let mut guard = InFlight::enter(&worker.in_flight);
            match tokio::time::timeout_at(deadline, worker.pool.send(req)).await {
                Ok(Ok((resp, lease))) => {
                    if let Some(r) = replay {
                        r.recycle();
                    }
                    guard.hold(lease);
                    return Ok((resp, guard, worker.socket.clone()));
                }
                Ok(Err(f)) => failed = f,
                Err(_) => return self.timed_out(worker),
            }
        }
    }

    fn timed_out<T>(&self, worker: &Worker) -> Result<T, UpstreamError> {
        tracing::warn!(upstream = %self.name, socket = %worker.socket.display(), "worker did not answer within read_timeout");
        Err(UpstreamError::TimedOut)
    }

    /// Maps a send error to what the client is told, logging upstream and
    /// socket (never told to the client).
    fn classify(&self, worker: &Worker, e: &SendError) -> UpstreamError {
        let e = match e {
            SendError::Connect(ce) => {
                tracing::warn!(upstream = %self.name, socket = %worker.socket.display(), error = %ce, "no connection to worker");
                return match ce {
                    // Busy, but answering: it stays in the rotation.
                    ConnectError::PoolFull(_) => UpstreamError::Busy,
                    ConnectError::Timeout | ConnectError::Io(_) => {
                        // Refused, gone (a worker died) or not accepting:
                        // out of the rotation at once rather than at the next
                        // health check, which brings it back when it answers.
                        self.mark_down(worker);
                        UpstreamError::Unreachable
                    }
                };
            }
            SendError::Hyper(e) => e,
        };
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(be) = err.downcast_ref::<RequestBodyError>() {
                return match be {
                    RequestBodyError::TooLarge { .. } => UpstreamError::BodyTooLarge,
                    RequestBodyError::Client(_) => UpstreamError::BodyCutOff,
                    RequestBodyError::TimedOut(_) => UpstreamError::BodyTimedOut,
                };
            }
            source = err.source();
        }
        tracing::warn!(upstream = %self.name, socket = %worker.socket.display(), error = %e, "worker request failed");
        UpstreamError::Failed
    }

    /// Whether `w` answers: a GET of the health path, or, without one, a connect.
    async fn check(&self, w: &Worker) -> bool {
        match &self.health {
            Some(hc) => {
                probe(
                    &w.socket,
                    &hc.path,
                    self.read_timeout.min(Duration::from_secs(5)),
                )
                .await
            }
            None => UnixStream::connect(&*w.socket).await.is_ok(),
        }
    }

    fn set_health(&self, w: &Worker, ok: bool) {
        if ok != w.is_healthy() {
            tracing::info!(upstream = %self.name, socket = %w.socket.display(), healthy = ok, "worker health changed");
        }
        w.set_healthy(ok);
    }

    /// Checks every worker.
    pub async fn check_health(&self) {
        for w in &self.workers {
            let ok = self.check(w).await;
            self.set_health(w, ok);
        }
    }

    /// Checks the workers out of the rotation.
    async fn recheck_down(&self) {
        for w in self.workers.iter().filter(|w| !w.is_healthy()) {
            if self.check(w).await {
                self.set_health(w, true);
            }
        }
    }

    /// (busy, idle, waiting) summed over the workers: open sockets serving
    /// a request, open sockets idle in the pool, requests without a socket.
    pub fn pool_state(&self) -> (usize, usize, usize) {
        self.workers.iter().fold((0, 0, 0), |(b, i, w), worker| {
            let open = worker
                .max
                .saturating_sub(worker.permits.available_permits());
            let in_flight = worker.in_flight.load(Ordering::Relaxed);
            let busy = in_flight.min(open);
            (b + busy, i + open - busy, w + in_flight - busy)
        })
    }

    pub fn any_healthy(&self) -> bool {
        self.workers.iter().any(|w| w.is_healthy())
    }
}

/// Checks the upstream's workers every `health_check.interval` (5 s without
/// one) for as long as a gate uses this upstream, and those out of the
/// rotation every [`RECHECK`]. A worker whose process exited (supervisor
/// mode) is taken out at once.
pub async fn health_loop(up: std::sync::Weak<Upstream>) {
    let (every, down) = match up.upgrade() {
        Some(u) => (
            u.health
                .as_ref()
                .map(|h| h.interval)
                .unwrap_or(Duration::from_secs(5)),
            u.down.clone(),
        ),
        None => return,
    };
    let mut exited = EXITED.subscribe();
    let mut next_full = tokio::time::Instant::now();
    loop {
        let any_down = match up.upgrade() {
            Some(u) => !u.workers.iter().all(Worker::is_healthy),
            None => return,
        };
        let wake = match any_down {
            true => next_full.min(tokio::time::Instant::now() + RECHECK),
            false => next_full,
        };
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            // Marked down by a request: the recheck timer starts now.
            () = down.notified() => continue,
            gone = exited.recv() => {
                if let (Ok(socket), Some(u)) = (gone, up.upgrade()) {
                    for w in u.workers.iter().filter(|w| *w.socket == *socket) {
                        u.set_health(w, false);
                    }
                }
                continue;
            }
        }
        let Some(u) = up.upgrade() else { return };
        if tokio::time::Instant::now() >= next_full {
            for w in &u.workers {
                w.pool.reap();
            }
            u.check_health().await;
            next_full = tokio::time::Instant::now() + every;
        } else {
            u.recheck_down().await;
        }
    }
}

/// A GET of `path` on a connection of its own, outside the pool and its
/// cap: a worker whose pool is full is busy, not dead, and must pass. So a
/// probe uses one socket more than `max_connections`, for its duration.
async fn probe(socket: &Path, path: &str, limit: Duration) -> bool {
    let checked = async {
        let req = Request::get(path)
            .header(http::header::HOST, "localhost")
            .body(http_body_util::Empty::<Bytes>::new())
            .ok()?;
        let io = UnixStream::connect(socket).await.ok()?;
        let (mut tx, conn) = http1::handshake(TokioIo::new(io)).await.ok()?;
        let exchange = async {
            let resp = tx.send_request(req).await.ok()?;
            let ok = resp.status().is_success();
            http_body_util::BodyExt::collect(resp.into_body())
                .await
                .ok()?;
            Some(ok)
        };
        tokio::select! {
            biased;
            ok = exchange => ok,
            // The connection ended before the answer did.
            _ = conn => None,
        }
    };
    matches!(tokio::time::timeout(limit, checked).await, Ok(Some(true)))
}

/// The head of a bodiless idempotent request, copied before it is sent so
/// that it can go to another worker if the first one dies before answering.
/// Kept as bytes (cloning a header value can allocate) in buffers reused
/// per thread: a request answered at the first try allocates nothing for it.
struct Replay {
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
    fn of(workers: usize, req: &Request<RequestBody>) -> Option<Box<Replay>> {
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

    fn recycle(self: Box<Self>) {
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
    fn request(&self) -> Option<Request<RequestBody>> {
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

/// Counts requests in flight to one worker; decremented when dropped, which
/// is when the response body ends or the client goes away. Holds the worker
/// connection's [`Lease`]: back to the pool only if the body ended.
pub struct InFlight {
    counter: Arc<AtomicUsize>,
    lease: Option<Lease>,
}

impl InFlight {
    pub fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight {
            counter: counter.clone(),
            lease: None,
        }
    }

    /// The worker connection serving this response.
    pub fn hold(&mut self, lease: Lease) {
        self.lease = Some(lease);
    }

    /// The lease, at the end of the response body (`Lease::done` returns
    /// the connection to the pool).
    pub fn take_lease(&mut self) -> Option<Lease> {
        self.lease.take()
    }

    /// Drops the connection's handle without returning it: after an upgrade
    /// the socket belongs to the WebSocket relay, and the handle's request
    /// channel (a few KiB) would otherwise live as long as the session.
    pub fn release_connection(&mut self) {
        self.lease = None;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

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

/// The path and query of `uri` alone, as HTTP/1.1 sends them.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
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
