//! WebSocket passthrough: the handshake goes to the worker like any request;
//! on its 101 both connections are upgraded and bytes are copied both ways
//! until either side closes. Frames are not parsed, unless the route sets
//! `websocket:` limits: then no extension is negotiated, frame headers are
//! read on the way through (`filters::websocket`) and a session over a limit
//! is ended with a Close frame to the client (1002 malformed frame, 1009
//! message too big, 1008 too many messages, 1001 idle), the worker's socket
//! simply closed.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asgi_gate_config::WebSocketOpts;
use asgi_gate_filters::forwarding;
use asgi_gate_filters::websocket::{close_frame, ClientRule, FrameTracker, MessageRate, Violation};
use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::body::{to_client, GateBody};
use crate::upstream::InFlight;

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// An HTTP/1.1 WebSocket handshake (RFC 6455 §4.1), as uvicorn tells one:
/// exactly one `Upgrade` value, `websocket`, and no body. Anything else is
/// plain HTTP to the worker, so it is plain HTTP to the gate too (no token
/// from the query string, `Upgrade` removed).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    if req.method() != http::Method::GET || req.version() != http::Version::HTTP_11 {
        return false;
    }
    let h = req.headers();
    let mut upgrade = h.get_all(header::UPGRADE).iter();
    let only_websocket = match (upgrade.next(), upgrade.next()) {
        (Some(v), None) => v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"),
        _ => false,
    };
    let has_body = h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    only_websocket && !has_body && has_token(h, header::CONNECTION, "upgrade")
}

struct OpenSession(Arc<AtomicUsize>);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// After one side has closed, how long the other may take to finish: the
/// close handshake needs milliseconds; a peer that never closes must not
/// hold the session (and its pooled socket) for ever.
const LINGER: Duration = Duration::from_secs(2);

/// Copies bytes both ways until either side closes, then lets the other
/// direction drain for at most `LINGER`. No byte either way for `idle` ends
/// the session (both sockets closed: without frame tracking the gate cannot
/// place a Close frame).
async fn copy_both_ways<C, W>(client: C, worker: W, idle: Duration)
where
    C: AsyncRead + AsyncWrite,
    W: AsyncRead + AsyncWrite,
{
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut worker_rx, mut worker_tx) = tokio::io::split(worker);
    let activity = Activity::new();
    let upstream = async {
        let r = pump(&mut client_rx, &mut worker_tx, &activity).await;
        let _ = worker_tx.shutdown().await;
        r
    };
    let downstream = async {
        let r = pump(&mut worker_rx, &mut client_tx, &activity).await;
        let _ = client_tx.shutdown().await;
        r
    };
    let quiet = activity.quiet_for(idle);
    tokio::pin!(upstream, downstream, quiet);
    let first = tokio::select! {
        r = &mut upstream => { let _ = tokio::time::timeout(LINGER, downstream).await; r }
        r = &mut downstream => { let _ = tokio::time::timeout(LINGER, upstream).await; r }
        () = &mut quiet => {
            tracing::debug!(?idle, "idle websocket session closed");
            Ok(())
        }
    };
    if let Err(e) = first {
        tracing::debug!(error = %e, "websocket relay ended");
    }
}

/// Copies until EOF, noting each read in `activity`.
async fn pump<R, W>(rx: &mut R, tx: &mut W, activity: &Activity) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; RELAY_BUFFER];
    loop {
        let n = rx.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        activity.touch();
        tx.write_all(&buf[..n]).await?;
    }
}

/// When a session last moved a byte.
struct Activity {
    /// Milliseconds since `start` of the last byte either way.
    last: AtomicU64,
    start: Instant,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            last: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no byte moved for `timeout`.
    async fn quiet_for(&self, timeout: Duration) {
        loop {
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let quiet = self.start.elapsed().saturating_sub(last);
            if quiet >= timeout {
                return;
            }
            tokio::time::sleep(timeout - quiet).await;
        }
    }
}

/// On a route with limits, the handshake the worker sees offers no
/// extension: the limits count payload bytes as sent, and with
/// `permessage-deflate` those would be compressed ones.
pub fn remove_extension_offers(headers: &mut HeaderMap) {
    headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
}

/// Given the worker's answer to a handshake: on 101, relay in the
/// background and answer the client 101; anything else goes back as is.
/// With limits, a 101 that agrees to an extension anyway is refused: its
/// frames could not be counted. `sessions` counts the sessions relayed;
/// `idle` ends one without a byte either way (unless its limits set their own).
pub fn relay(
    sessions: &Arc<AtomicUsize>,
    idle: Duration,
    limits: Option<Arc<Limits>>,
    mut resp: Response<Incoming>,
    in_flight: InFlight,
    client_side: OnUpgrade,
) -> Result<Response<GateBody>, ExtensionAgreed> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(to_client(resp, in_flight));
    }
    if limits.is_some()
        && resp
            .headers()
            .contains_key(header::SEC_WEBSOCKET_EXTENSIONS)
    {
        // Dropping the response and its lease closes the worker's socket.
        tracing::debug!("worker agreed to a websocket extension that was not offered");
        return Err(ExtensionAgreed);
    }
    let worker_side = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    forwarding::strip_hop_by_hop(&mut parts.headers, true);
    sessions.fetch_add(1, Ordering::Relaxed);
    let session = OpenSession(sessions.clone());
    tokio::spawn(async move {
        let _session = session;
        let mut in_flight = in_flight;
        let (client, worker) = tokio::join!(client_side, worker_side);
        in_flight.release_connection();
        match (client, worker) {
            (Ok(client), Ok(worker)) => match limits {
                None => copy_both_ways(TokioIo::new(client), TokioIo::new(worker), idle).await,
                Some(l) => {
                    relay_limited(&l, TokioIo::new(client), TokioIo::new(worker), idle).await
                }
            },
            (Err(e), _) | (_, Err(e)) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    Ok(Response::from_parts(parts, GateBody::empty()))
}

/// The worker agreed to a WebSocket extension on a route with limits,
/// where none was offered (`reject.rs`: 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtensionAgreed;

/// A route's `websocket:` limits.
#[derive(Debug)]
pub struct Limits {
    max_message: Option<u64>,
    per_second: Option<NonZeroU32>,
    idle_timeout: Option<Duration>,
}

impl Limits {
    /// `None` when the options set no limit at all.
    pub fn new(opts: &WebSocketOpts) -> Option<Limits> {
        let l = Limits {
            max_message: opts.max_message,
            per_second: opts.messages_per_second.and_then(NonZeroU32::new),
            idle_timeout: opts.idle_timeout,
        };
        (l.max_message.is_some() || l.per_second.is_some() || l.idle_timeout.is_some()).then_some(l)
    }
}

const RELAY_BUFFER: usize = 16 * 1024;

/// What ends a limited session early, shared by its two directions.
struct Ending {
    /// The close code to send (0: none yet).
    code: AtomicU16,
    wake: Notify,
    /// Milliseconds since `start` of the last byte either way.
    last_activity: AtomicU64,
    start: Instant,
}

impl Ending {
    fn request(&self, v: Violation) {
        if self
            .code
            .compare_exchange(0, v.code(), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::debug!(reason = v.reason(), "websocket session ended by a limit");
            self.wake.notify_one();
        }
    }

    fn violation(&self) -> Option<Violation> {
        match self.code.load(Ordering::Relaxed) {
            1002 => Some(Violation::ProtocolError),
            1009 => Some(Violation::MessageTooBig),
            1008 => Some(Violation::TooManyMessages),
            1001 => Some(Violation::Idle),
            _ => None,
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_activity.store(ms, Ordering::Relaxed);
    }
}

/// Like `copy_both_ways`, reading frame headers: client messages are checked
/// against the limits before they are forwarded, and the worker's frames are
/// tracked so the gate's Close frame never cuts one.
async fn relay_limited<C, W>(limits: &Limits, client: C, worker: W, default_idle: Duration)
where
    C: AsyncRead + AsyncWrite,
    W: AsyncRead + AsyncWrite,
{
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut worker_rx, mut worker_tx) = tokio::io::split(worker);
    let ending = Ending {
        code: AtomicU16::new(0),
        wake: Notify::new(),
        last_activity: AtomicU64::new(0),
        start: Instant::now(),
    };

    let upstream = async {
        let rate = limits.per_second.map(MessageRate::per_second);
        let mut rule = ClientRule::new(limits.max_message, rate);
        let mut frames = FrameTracker::default();
        let mut buf = vec![0u8; RELAY_BUFFER];
        loop {
            let n = client_rx.read(&mut buf).await?;
            if n == 0 {
                let _ = worker_tx.shutdown().await;
                return Ok(());
            }
            ending.touch();
            let checked = frames.scan(&buf[..n], |head| rule.on_frame(head));
            match checked {
                Ok(()) => worker_tx.write_all(&buf[..n]).await?,
                Err((at, v)) => {
                    worker_tx.write_all(&buf[..at]).await?;
                    ending.request(v);
                    return Ok(());
                }
            }
        }
    };
    let downstream = async {
        let mut frames = FrameTracker::default();
        let mut buf = vec![0u8; RELAY_BUFFER];
        loop {
            tokio::select! {
                read = worker_rx.read(&mut buf) => {
                    let n = read?;
                    if n == 0 {
                        let _ = client_tx.shutdown().await;
                        return Ok(());
                    }
                    ending.touch();
                    let _ = frames.scan(&buf[..n], |_| Ok::<(), ()>(()));
                    client_tx.write_all(&buf[..n]).await?;
                }
                () = ending.wake.notified() => {
                    if let (Some(v), true) = (ending.violation(), frames.at_boundary()) {
                        client_tx.write_all(&close_frame(v)).await?;
                    }
                    let _ = client_tx.shutdown().await;
                    return Ok::<(), std::io::Error>(());
                }
            }
        }
    };
    let idle = async {
        let timeout = limits.idle_timeout.unwrap_or(default_idle);
        loop {
            let last = Duration::from_millis(ending.last_activity.load(Ordering::Relaxed));
            let quiet = ending.start.elapsed().saturating_sub(last);
            if quiet >= timeout {
                ending.request(Violation::Idle);
                return std::future::pending::<()>().await;
            }
            tokio::time::sleep(timeout - quiet).await;
        }
    };
    tokio::pin!(upstream, downstream, idle);
    let first = tokio::select! {
        r = &mut upstream => { let _ = tokio::time::timeout(LINGER, &mut downstream).await; r }
        r = &mut downstream => { let _ = tokio::time::timeout(LINGER, &mut upstream).await; r }
        () = &mut idle => Ok(()),
    };
    if let Err(e) = first {
        tracing::debug!(error = %e, "websocket relay ended");
    }
}
