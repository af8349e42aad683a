//! Upstream workers and their pools. One hyper-util pooled client per worker
//! socket; its connector is the only way a socket to the worker is opened,
//! and it holds one semaphore permit per open socket, so `max_connections`
//! is a hard limit: a request that finds no idle connection and no free
//! permit waits for either until `connect_timeout`, then gets 503. Requests
//! go to the worker with the fewest in flight.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use asgi_gate_config::Upstream as UpstreamConf;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

impl Connection for UdsStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
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
#[derive(Clone)]
pub struct UdsConnector {
    path: Arc<PathBuf>,
    permits: Arc<Semaphore>,
    max: usize,
    connect_timeout: Duration,
    waits: Option<prometheus::IntCounter>,
    errors: Option<prometheus::IntCounter>,
}

impl tower_service::Service<Uri> for UdsConnector {
    type Response = TokioIo<UdsStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + me.connect_timeout;
            let permit = match me.permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    if let Some(w) = &me.waits {
                        w.inc();
                    }
                    match tokio::time::timeout_at(deadline, me.permits.acquire_owned()).await {
                        Ok(Ok(p)) => p,
                        _ => return Err(ConnectError::PoolFull(me.max)),
                    }
                }
            };
            let connected = tokio::time::timeout_at(deadline, UnixStream::connect(&*me.path)).await;
            let stream = match connected {
                Ok(Ok(s)) => s,
                failed => {
                    if let Some(e) = &me.errors {
                        e.inc();
                    }
                    return Err(match failed {
                        Ok(Err(e)) => ConnectError::Io(e),
                        _ => ConnectError::Timeout,
                    });
                }
            };
            Ok(TokioIo::new(UdsStream {
                stream,
                _permit: permit,
            }))
        })
    }
}

/// One worker socket with its pool.
pub struct Worker {
    pub socket: Arc<PathBuf>,
    client: Client<UdsConnector, RequestBody>,
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
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(conf.pool.idle_timeout)
            .pool_max_idle_per_host(conf.pool.max_idle)
            // Host is the client's, set by the pipeline; the URI is only a pool key.
            .set_host(false)
            // A reused connection the worker had closed is retried on a new one.
            .retry_canceled_requests(true)
            .build(connector);
        Worker {
            socket,
            client,
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

/// The authority every upstream request URI carries: the pool key only.
const POOL_AUTHORITY: &str = "worker";

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
        let guard = InFlight::enter(&worker.in_flight);
        *req.uri_mut() = pool_uri(req.uri())?;
        *req.version_mut() = http::Version::HTTP_11;
        match tokio::time::timeout(self.read_timeout, worker.client.request(req)).await {
            Ok(Ok(resp)) => Ok((resp, guard, worker.socket.clone())),
            Ok(Err(e)) => Err(self.classify(worker, &e)),
            Err(_) => {
                tracing::warn!(upstream = %self.name, socket = %worker.socket.display(), "worker did not answer within read_timeout");
                Err(Reject::GatewayTimeout)
            }
        }
    }

    /// Maps a client error to the rejection, logging upstream and socket
    /// (never told to the client).
    fn classify(&self, worker: &Worker, e: &hyper_util::client::legacy::Error) -> Reject {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(ce) = err.downcast_ref::<ConnectError>() {
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
            if let Some(be) = err.downcast_ref::<RequestBodyError>() {
                return match be {
                    RequestBodyError::TooLarge { .. } => Reject::PayloadTooLarge,
                    RequestBodyError::Client(_) => {
                        Reject::BadRequest("the request body was cut off or malformed")
                    }
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
        u.check_health().await;
    }
}

async fn probe(w: &Worker, path: &str, limit: Duration) -> bool {
    let Some(uri) = path.parse().ok().and_then(uri_for) else {
        return false;
    };
    let req = match Request::get(uri)
        .header(http::header::HOST, "localhost")
        .body(RequestBody::empty())
    {
        Ok(r) => r,
        Err(_) => return false,
    };
    match tokio::time::timeout(limit, w.client.request(req)).await {
        Ok(Ok(resp)) => {
            let ok = resp.status().is_success();
            // Drain so the connection goes back to the pool.
            let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
            ok
        }
        _ => false,
    }
}

/// `http://worker/<path?query>`: the legacy client wants an absolute URI and
/// sends only the path and query on the wire.
fn pool_uri(uri: &Uri) -> Result<Uri, Reject> {
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    uri_for(pq).ok_or(Reject::BadRequest("invalid request target"))
}

/// The pool URI for a path and query, built from parts: nothing is parsed
/// again per request.
fn uri_for(pq: http::uri::PathAndQuery) -> Option<Uri> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(http::uri::Authority::from_static(POOL_AUTHORITY));
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts).ok()
}
