//! The upstream side: which worker takes a request (least outstanding,
//! retries, `health`), the pool of each worker (`pool`), the client's body
//! on its way (`request_body`) and the request head kept for a retry
//! (`replay`). Errors are [`UpstreamError`]; `reject.rs` picks the status.
//! Names only `metrics`.
//!
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
//! (see [`Upstream::send`] and docs/behaviour.md, "Errors from the worker side").

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use asgi_gate_config::Upstream as UpstreamConf;
use asgi_gate_filters::concurrency::Outcome;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use tokio::sync::{Notify, Semaphore};

mod admission;
mod health;
mod pool;
mod replay;
mod request_body;
/// A worker's answer as the pipeline gets it: the connection stays leased
/// to the response body, the replay copy goes back for reuse.
fn sent(
    worker: &Worker,
    response: Response<Incoming>,
    lease: Lease,
    mut in_flight: InFlight,
    replay: Option<Box<Replay>>,
) -> Sent {
    if let Some(r) = replay {
        r.recycle();
    }
    in_flight.hold(lease);
    Sent {
        response,
        in_flight,
        socket: worker.socket.clone(),
        queued: Duration::ZERO,
    }
}

/// Awaits `send` holding `permit`, but for at most the permit's hold cap:
/// then the slot is freed (teaching the limit nothing) and the request goes
/// on. Returns the permit if it is still held.
async fn held<F: std::future::Future>(send: F, permit: Permit) -> (F::Output, Option<Permit>) {
    tokio::pin!(send);
    tokio::select! {
        biased;
        r = &mut send => (r, Some(permit)),
        () = tokio::time::sleep(permit.hold) => {
            permit.release(Outcome::Ignored);
            (send.await, None)
        }
    }
}

/// What a worker's answer teaches its concurrency limit: an overload
/// answer shrinks it, a handshake's time says nothing about load.
fn outcome(status: http::StatusCode) -> Outcome {
    match status {
        http::StatusCode::SERVICE_UNAVAILABLE => Outcome::Dropped,
        http::StatusCode::SWITCHING_PROTOCOLS => Outcome::Ignored,
        _ => Outcome::Success,
    }
}

#[cfg(test)]
mod tests;

pub use health::{health_loop, worker_exited};
pub use request_body::{RequestBody, RequestBodyError};

use admission::{Admission, Permit, Refused};
use pool::{ConnectError, Failed, Lease, Pool, SendError};
use replay::Replay;

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
    /// Refused by the overloaded queue, without waiting.
    #[error("the upstream is overloaded")]
    Shed,
    /// Waited `concurrency.queue_timeout` for a worker slot.
    #[error("no worker slot within queue_timeout")]
    QueueTimeout,
}

impl From<&RequestBodyError> for UpstreamError {
    fn from(e: &RequestBodyError) -> Self {
        match e {
            RequestBodyError::TooLarge { .. } => UpstreamError::BodyTooLarge,
            RequestBodyError::Client(_) => UpstreamError::BodyCutOff,
            RequestBodyError::TimedOut(_) => UpstreamError::BodyTimedOut,
            // Gate-wide buffers full: busy now, not the client's fault.
            RequestBodyError::OverBudget => UpstreamError::Busy,
            RequestBodyError::Buffer(e) => {
                tracing::error!(error = %e, "could not buffer a request body (is TMPDIR writable?)");
                UpstreamError::Failed
            }
        }
    }
}

impl From<RequestBodyError> for UpstreamError {
    fn from(e: RequestBodyError) -> Self {
        (&e).into()
    }
}

impl From<Refused> for UpstreamError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Shed => UpstreamError::Shed,
            Refused::TimedOut => UpstreamError::QueueTimeout,
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
    healthy: Arc<AtomicBool>,
}

impl Worker {
    fn new(upstream: &str, socket: PathBuf, conf: &UpstreamConf) -> Worker {
        let max = conf.pool.max_connections.max(1);
        let permits = Arc::new(Semaphore::new(max));
        let socket = Arc::new(socket);
        let pool = Arc::new(Pool::new(
            upstream,
            socket.clone(),
            permits.clone(),
            max,
            conf,
        ));
        Worker {
            socket,
            pool,
            permits,
            max,
            in_flight: Arc::new(AtomicUsize::new(0)),
            // Optimistic until the first health check says otherwise.
            healthy: Arc::new(AtomicBool::new(true)),
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
/// A worker's answer to [`Upstream::send`]: its response head and body
/// stream, the worker slot the response holds until its body ends, and the
/// socket that answered (for the access log).
pub struct Sent {
    pub response: Response<Incoming>,
    pub in_flight: InFlight,
    pub socket: Arc<PathBuf>,
    /// Time waited at the gate for a worker slot.
    pub queued: Duration,
}

/// Open sockets and waiting requests over an upstream's workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolState {
    /// Open sockets serving a request.
    pub busy: usize,
    /// Open sockets idle in the pool.
    pub idle: usize,
    /// Requests without a socket.
    pub waiting: usize,
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
    /// The queue and the workers' adaptive limits; `None` with `concurrency: off`.
    admission: Option<Arc<Admission>>,
}

impl Upstream {
    pub fn new(name: &str, conf: &UpstreamConf) -> Upstream {
        let workers: Vec<Worker> = conf
            .sockets
            .iter()
            .map(|s| Worker::new(name, s.clone(), conf))
            .collect();
        let admission = conf.concurrency.as_ref().map(|c| {
            let healthy = workers.iter().map(|w| w.healthy.clone()).collect();
            Admission::new(name, healthy, c)
        });
        Upstream {
            name: name.to_string(),
            conf: conf.clone(),
            workers,
            read_timeout: conf.read_timeout,
            health: conf.health_check.clone(),
            down: Arc::new(Notify::new()),
            admission,
        }
    }

    /// Each worker's current concurrency limit (empty with `concurrency: off`).
    pub fn concurrency_limits(&self) -> Vec<usize> {
        self.admission
            .as_ref()
            .map(|a| a.limits())
            .unwrap_or_default()
    }

    /// Requests waiting at the gate for a worker slot.
    pub fn queued(&self) -> usize {
        self.admission.as_ref().map_or(0, |a| a.waiting())
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
    ///
    /// First the request takes a slot under the chosen worker's concurrency
    /// limit, waiting at the gate if every worker is at its limit; the slot
    /// is given back when the response head arrives. Retries on other
    /// workers do not wait again, and requests with `admit` false
    /// (WebSocket handshakes) do not wait at all.
    pub async fn send(
        &self,
        mut req: Request<RequestBody>,
        admit: bool,
    ) -> Result<Sent, UpstreamError> {
        let (permit, queued) = match &self.admission {
            Some(a) if admit => {
                let (p, waited) = Box::pin(a.acquire()).await?;
                (Some(p), waited)
            }
            _ => (None, Duration::ZERO),
        };
        let (index, worker) = match &permit {
            Some(p) => self
                .workers
                .get(p.worker)
                .map(|w| (p.worker, w))
                .ok_or(UpstreamError::NoWorker)?,
            None => self.pick().ok_or(UpstreamError::NoWorker)?,
        };
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            // h2 and absolute-form requests: the worker gets origin-form.
            *req.uri_mut() = origin_form(req.uri());
        }
        *req.version_mut() = http::Version::HTTP_11;
        let deadline = tokio::time::Instant::now() + self.read_timeout;
        let replay = Replay::of(self.workers.len(), &req);
        let guard = InFlight::enter(&worker.in_flight);
        // Bound in a statement of its own: a match on the awaited result
        // would keep its (large) slot across the retry's await.
        let send = tokio::time::timeout_at(deadline, worker.pool.send(req));
        let (answer, permit) = match permit {
            // Boxed: it holds the send future and a timer; one allocation
            // per request, against a future twice the size on every await.
            Some(p) => Box::pin(held(send, p)).await,
            None => (send.await, None),
        };
        let failed = match answer {
            Ok(Ok((resp, lease))) => {
                if let Some(p) = permit {
                    p.release(outcome(resp.status()));
                }
                let mut sent = sent(worker, resp, lease, guard, replay);
                sent.queued = queued;
                return Ok(sent);
            }
            Ok(Err(failed)) => failed,
            Err(_) => {
                if let Some(p) = permit {
                    p.release(Outcome::Dropped);
                }
                if let Some(r) = replay {
                    r.recycle();
                }
                return self.timed_out(worker);
            }
        };
        drop(guard);
        if let Some(p) = permit {
            // A body the client cut off, sent malformed or too long says
            // nothing about the worker's load: it must not shrink the limit
            // (30 such requests took a limit of 72 down to 16).
            p.release(if client_body_fault(&failed.error) {
                Outcome::Ignored
            } else {
                Outcome::Dropped
            });
        }
        Box::pin(self.retry(index, failed, replay, deadline)).await
    }

    /// The rare path of [`Upstream::send`]: the first worker failed.
    async fn retry(
        &self,
        first: usize,
        mut failed: Failed,
        mut replay: Option<Box<Replay>>,
        deadline: tokio::time::Instant,
    ) -> Result<Sent, UpstreamError> {
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
            let guard = InFlight::enter(&worker.in_flight);
            match tokio::time::timeout_at(deadline, worker.pool.send(req)).await {
                Ok(Ok((resp, lease))) => return Ok(sent(worker, resp, lease, guard, replay)),
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
                return be.into();
            }
            source = err.source();
        }
        tracing::warn!(upstream = %self.name, socket = %worker.socket.display(), error = %e, "worker request failed");
        UpstreamError::Failed
    }

    /// Busy, idle and waiting summed over the workers.
    pub fn pool_state(&self) -> PoolState {
        self.workers
            .iter()
            .fold(PoolState::default(), |sum, worker| {
                let open = worker
                    .max
                    .saturating_sub(worker.permits.available_permits());
                let in_flight = worker.in_flight.load(Ordering::Relaxed);
                let busy = in_flight.min(open);
                PoolState {
                    busy: sum.busy + busy,
                    idle: sum.idle + open - busy,
                    waiting: sum.waiting + in_flight - busy,
                }
            })
    }

    pub fn any_healthy(&self) -> bool {
        self.workers.iter().any(|w| w.is_healthy())
    }
}

/// Whether a send failed because of the client's request body.
fn client_body_fault(e: &SendError) -> bool {
    let SendError::Hyper(e) = e else {
        return false;
    };
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.downcast_ref::<RequestBodyError>().is_some() {
            return true;
        }
        source = err.source();
    }
    false
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

/// The path and query of `uri` alone, as HTTP/1.1 sends them.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}
