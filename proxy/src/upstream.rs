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

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use asgi_gate_config::Upstream as UpstreamConf;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::body::{InFlight, RequestBody, RequestBodyError};
use crate::reject::Reject;

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
}

impl AsyncRead for UdsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
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
        })
    }
}

type Sender = http1::SendRequest<RequestBody>;

struct IdleConn {
    tx: Sender,
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

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Vec<IdleConn>> {
        // Nothing panics while it is held.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still open and not
    /// older than `idle_timeout` (older ones are dropped, which closes them:
    /// uvicorn closes its side after 5 s).
    fn checkout(&self) -> Option<Sender> {
        let mut idle = self.lock();
        while let Some(c) = idle.pop() {
            if !c.tx.is_closed() && c.since.elapsed() < self.idle_timeout {
                return Some(c.tx);
            }
        }
        None
    }

    fn checkin(&self, tx: Sender) {
        if tx.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push(IdleConn {
                tx,
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
            .retain(|c| !c.tx.is_closed() && c.since.elapsed() < timeout);
    }

    /// A new connection (`false`), or an idle one (`true`) checked in while
    /// waiting at `max_connections`: it waits, until `connect_timeout`, for
    /// whichever comes first, a connection checked in or a permit freed by
    /// one that closed. Boxed by its caller: it is the rare path, and its
    /// future is large (the connect, the handshake, the wait).
    async fn connect(&self) -> Result<(Sender, bool), SendError> {
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
                            if let Some(tx) = self.checkout() {
                                return Ok((tx, true));
                            }
                        }
                        () = &mut timeout => return Err(full()),
                    }
                }
            }
        };
        let io = c.open(permit, deadline).await.map_err(SendError::Connect)?;
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
        Ok((tx, false))
    }

    /// Sends `req` on an idle connection or a new one. A request that a
    /// reused connection could not take (the worker had closed it) is sent
    /// again on another; one that was written is never sent twice.
    async fn send(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        loop {
            let (mut tx, reused) = match self.checkout() {
                Some(tx) => (tx, true),
                None => Box::pin(self.connect()).await?,
            };
            if reused && !tx.is_ready() && tx.ready().await.is_err() {
                continue;
            }
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        conn: Some((tx, self.clone())),
                    };
                    return Ok((resp, lease));
                }
                Err(mut e) => match e.take_message() {
                    Some(again) if reused => req = again,
                    _ => return Err(SendError::Hyper(e.into_error())),
                },
            }
        }
    }
}

/// A worker connection serving one response. [`Lease::done`] at the end of
/// the response body puts it back in the pool; dropped before that (a
/// client gone mid-body, an upgrade), the connection is closed instead.
pub struct Lease {
    conn: Option<(Sender, Arc<Pool>)>,
}

impl Lease {
    pub fn done(mut self) {
        if let Some((tx, pool)) = self.conn.take() {
            pool.checkin(tx);
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

/// A named group of workers.
pub struct Upstream {
    pub name: String,
    /// What it was built from: a reload keeps the pools of an unchanged upstream.
    pub conf: UpstreamConf,
    pub workers: Vec<Worker>,
    pub read_timeout: Duration,
    pub health: Option<asgi_gate_config::HealthCheck>,
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
        }
    }

    /// Least outstanding requests among healthy workers (all, if none is).
    fn pick(&self) -> Option<&Worker> {
        let load = |w: &&Worker| w.in_flight.load(Ordering::Relaxed);
        self.workers
            .iter()
            .filter(|w| w.is_healthy())
            .min_by_key(load)
            .or_else(|| self.workers.iter().min_by_key(load))
    }

    /// Sends the request to a worker and returns its response head. The
    /// request's headers are already what the worker should see.
    pub async fn send(
        &self,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, InFlight, Arc<PathBuf>), Reject> {
        let worker = self.pick().ok_or(Reject::BadGateway)?;
        let mut guard = InFlight::enter(&worker.in_flight);
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            // h2 and absolute-form requests: the worker gets origin-form.
            *req.uri_mut() = origin_form(req.uri());
        }
        *req.version_mut() = http::Version::HTTP_11;
        match tokio::time::timeout(self.read_timeout, worker.pool.send(req)).await {
            Ok(Ok((resp, lease))) => {
                guard.hold(lease);
                Ok((resp, guard, worker.socket.clone()))
            }
            Ok(Err(e)) => Err(self.classify(worker, &e)),
            Err(_) => {
                tracing::warn!(upstream = %self.name, socket = %worker.socket.display(), "worker did not answer within read_timeout");
                Err(Reject::GatewayTimeout)
            }
        }
    }

    /// Maps a send error to the rejection, logging upstream and socket
    /// (never told to the client).
    fn classify(&self, worker: &Worker, e: &SendError) -> Reject {
        let e = match e {
            SendError::Connect(ce) => {
                tracing::warn!(upstream = %self.name, socket = %worker.socket.display(), error = %ce, "no connection to worker");
                return match ce {
                    ConnectError::PoolFull(_) => Reject::ServiceUnavailable,
                    ConnectError::Timeout => Reject::BadGateway,
                    ConnectError::Io(_) => {
                        // Refused or gone (a worker died): out of the rotation
                        // at once rather than at the next health check, which
                        // brings it back when it answers again.
                        worker.set_healthy(false);
                        Reject::BadGateway
                    }
                };
            }
            SendError::Hyper(e) => e,
        };
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(be) = err.downcast_ref::<RequestBodyError>() {
                return match be {
                    RequestBodyError::TooLarge { .. } => Reject::PayloadTooLarge,
                    RequestBodyError::Client(_) => {
                        Reject::BadRequest("the request body was cut off or malformed")
                    }
                    RequestBodyError::TimedOut(_) => Reject::RequestTimeout,
                };
            }
            source = err.source();
        }
        tracing::warn!(upstream = %self.name, socket = %worker.socket.display(), error = %e, "worker request failed");
        Reject::BadGateway
    }

    /// A GET of the health path (or, without one, a connect) to each worker.
    pub async fn check_health(&self) {
        for w in &self.workers {
            let ok = match &self.health {
                Some(hc) => probe(w, &hc.path, self.read_timeout.min(Duration::from_secs(5))).await,
                None => UnixStream::connect(&*w.socket).await.is_ok(),
            };
            if ok != w.is_healthy() {
                tracing::info!(upstream = %self.name, socket = %w.socket.display(), healthy = ok, "worker health changed");
            }
            w.set_healthy(ok);
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
/// one) for as long as a gate uses this upstream.
pub async fn health_loop(up: std::sync::Weak<Upstream>) {
    let every = match up.upgrade() {
        Some(u) => u
            .health
            .as_ref()
            .map(|h| h.interval)
            .unwrap_or(Duration::from_secs(5)),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(u) = up.upgrade() else { return };
        for w in &u.workers {
            w.pool.reap();
        }
        u.check_health().await;
    }
}

async fn probe(w: &Worker, path: &str, limit: Duration) -> bool {
    let req = match Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(RequestBody::empty())
    {
        Ok(r) => r,
        Err(_) => return false,
    };
    let checked = async {
        let (resp, lease) = w.pool.send(req).await.ok()?;
        let ok = resp.status().is_success();
        // Read to the end so the connection goes back to the pool.
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .ok()?;
        lease.done();
        Some(ok)
    };
    matches!(tokio::time::timeout(limit, checked).await, Ok(Some(true)))
}

/// The path and query of `uri` alone, as HTTP/1.1 sends them.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}
