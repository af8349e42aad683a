//! Listeners and the connection lifecycle: accept, guard the request head
//! against slow clients, serve HTTP/1.1 and h2c on one port (hyper-util's
//! auto builder), and drain in-flight requests on SIGTERM/SIGINT.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use std::path::PathBuf;

use asgi_gate_config::{Config, Limits, LoadOptions};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::admin;
use crate::gate::tls::Tls;
use crate::gate::{Gate, Shared};
use crate::pipeline::{self, ConnInfo};
use crate::reject::{self, Reject};
use deadlines::{ConnActivity, ConnTask, GateExec};

pub mod deadlines;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Gate(#[from] crate::gate::GateError),
    #[error("{0}")]
    Tls(#[from] crate::gate::tls::TlsError),
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Where the config came from, so SIGHUP and `POST /reload` can read it again.
pub struct ConfigSource {
    pub path: Option<PathBuf>,
    pub opts: LoadOptions,
    /// Applied to every reloaded config (supervisor mode fills in sockets).
    pub adjust: Box<dyn Fn(&mut Config) + Send + Sync>,
}

/// Serves until SIGTERM/SIGINT, then drains for up to `shutdown_grace`.
pub async fn serve(cfg: Config, source: ConfigSource) -> Result<(), ServeError> {
    serve_until(cfg, source, shutdown_signal()).await
}

/// Serves until `shutdown` resolves, then drains for up to `shutdown_grace`.
pub async fn serve_until(
    cfg: Config,
    source: ConfigSource,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let gate = Gate::build(&cfg, None).await?;
    let mut listeners = Vec::with_capacity(cfg.listen.len());
    let mut certs = Vec::new();
    for l in &cfg.listen {
        let tls = match &l.tls {
            Some(t) => {
                let t = Arc::new(Tls::load(&t.cert, &t.key)?);
                certs.push(t.clone());
                Some(t)
            }
            None => None,
        };
        let listener = bind(l.address).await?;
        let local = listener.local_addr().unwrap_or(l.address);
        // Tests and scripts wait for this exact line.
        match tls {
            Some(_) => eprintln!("asgi-gate: listening on {local} (tls)"),
            None => eprintln!("asgi-gate: listening on {local}"),
        }
        listeners.push((listener, tls));
    }
    let shared = Arc::new(Shared::new(
        gate,
        cfg.clone(),
        source.path,
        source.opts,
        source.adjust,
        certs,
    ));
    let admin_listener = bind(cfg.admin.address).await?;
    let admin_local = admin_listener.local_addr().unwrap_or(cfg.admin.address);
    eprintln!("asgi-gate: admin listening on {admin_local}");

    tokio::spawn(rate_limit_housekeeping(shared.clone()));
    tokio::spawn(reload_on_sighup(shared.clone()));
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        shared.clone(),
        cfg.admin.clone(),
    ));

    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let open = Arc::new(OpenConns::default());
    let mut accept_tasks = Vec::new();
    for (listener, tls) in listeners {
        accept_tasks.push(tokio::spawn(accept_loop(
            listener,
            tls,
            shared.clone(),
            graceful.clone(),
            stop_rx.clone(),
            open.clone(),
        )));
    }
    drop(stop_rx);

    shutdown.await;
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    let _ = stop_tx.send(true);
    for t in accept_tasks {
        let _ = t.await;
    }
    // The accept loops held the only other references.
    let drained = match Arc::try_unwrap(graceful) {
        Ok(g) => tokio::time::timeout(cfg.shutdown_grace, g.shutdown())
            .await
            .is_ok(),
        Err(_) => false,
    };
    if !drained {
        tracing::warn!(grace = ?cfg.shutdown_grace, "requests still in flight after the grace period; closing them");
    }
    admin_task.abort();
    Ok(())
}

/// Heads up to this size reach the gate's own check (JSON 431 with
/// X-Request-Id); hyper refuses larger ones itself with a bare 431.
pub fn head_hard_cap(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_mul(4).max(1024 * 1024)
}

/// hyper's h1 limit on header fields. hyper parses into a stack array of 100;
/// any larger setting allocates that many slots (64 bytes each) on every
/// parse, and past ~2k slots glibc returns the block to the kernel each time
/// (measured: +50 ns per parse at 1024, +10 µs at 3000 and more). 1024
/// covers every head within max_header_bytes up to 4 KiB (a field is at least
/// `a:\r\n`); beyond that only heads of more than 1024 fields get hyper's
/// bare 431.
const MAX_HEADER_FIELDS: usize = 1024;

/// h2 PING every this long on a connection with streams in flight; no
/// answer within `H2_PING_TIMEOUT` closes it (a peer that vanished).
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// TCP keepalive on accepted sockets: a peer gone without a FIN is found
/// after 60 s idle + 5 probes 10 s apart.
const TCP_KEEPIDLE: Duration = Duration::from_secs(60);
const TCP_KEEPINTVL: Duration = Duration::from_secs(10);
const TCP_KEEPCNT: u32 = 5;

/// The connection settings that come from `limits`, built with the gate (so
/// a reload applies them to new connections).
fn connection_builder(limits: &Limits) -> auto::Builder<GateExec> {
    let mut b = auto::Builder::new(GateExec);
    let cap = head_hard_cap(limits.max_header_bytes);
    // hyper's read buffer grows only as a head needs it: the memory is spent
    // on big heads only. (It also bounds the response bytes queued for a slow
    // client, at most 16 body chunks.) The header timer also runs between
    // keep-alive requests: that is the idle close of an h1 connection.
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(cap)
        .max_headers((limits.max_header_bytes / 4).clamp(100, MAX_HEADER_FIELDS))
        .keep_alive(true);
    // h2 counts 32 bytes more per field (RFC 7541 §4.1), and a head within
    // max_header_bytes has at most max_header_bytes/4 fields.
    let h2 = cap.saturating_add(limits.max_header_bytes.saturating_mul(8));
    // Each stream in flight may hold a worker connection: the stream cap is
    // the cap on worker connections one client connection can hold.
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(h2).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    b
}

/// hyper's settings from the current gate's `limits`, built once per gate
/// (by the first accept after a reload), so a reload applies them to the
/// connections accepted from then on.
#[derive(Default)]
struct ConnSettings {
    /// The gate they were built for (a `Weak`: its address is not reused
    /// while this is held).
    gate: Weak<Gate>,
    builder: Option<auto::Builder<GateExec>>,
}

impl ConnSettings {
    fn builder_for(&mut self, gate: &Arc<Gate>) -> auto::Builder<GateExec> {
        match &self.builder {
            Some(b) if std::ptr::eq(self.gate.as_ptr(), Arc::as_ptr(gate)) => b.clone(),
            _ => {
                let b = connection_builder(&gate.limits);
                self.gate = Arc::downgrade(gate);
                self.builder = Some(b.clone());
                b
            }
        }
    }
}

/// Open client connections, in total and per IP, against `limits`.
#[derive(Default)]
struct OpenConns {
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection; counted down when dropped.
struct ConnSlot {
    open: Arc<OpenConns>,
    ip: IpAddr,
}

impl OpenConns {
    fn admit(self: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Option<ConnSlot> {
        let mut m = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = TOTAL.load(std::sync::atomic::Ordering::Relaxed);
        let n = m.get(&ip).copied().unwrap_or(0);
        if total >= limits.max_connections || n >= limits.max_connections_per_ip {
            return None;
        }
        m.insert(ip, n + 1);
        TOTAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(ConnSlot {
            open: self.clone(),
            ip,
        })
    }
}

static TOTAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut m = self.open.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
        TOTAL.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A peer gone without a FIN (power loss, NAT timeout) is found by the
/// kernel rather than held forever.
fn set_tcp_keepalive(stream: &TcpStream) {
    use rustix::net::sockopt;
    let r = sockopt::set_socket_keepalive(stream, true)
        .and_then(|()| sockopt::set_tcp_keepidle(stream, TCP_KEEPIDLE))
        .and_then(|()| sockopt::set_tcp_keepintvl(stream, TCP_KEEPINTVL))
        .and_then(|()| sockopt::set_tcp_keepcnt(stream, TCP_KEEPCNT));
    if let Err(e) = r {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

/// Over a connection cap: a plain listener answers 503 JSON and closes; a
/// TLS one closes at once (a handshake per refused connection is the CPU an
/// overload should not spend).
async fn refuse(mut stream: TcpStream, tls: bool) {
    crate::metrics::client_cutoff("connection_limit");
    if tls {
        return;
    }
    let answer = reject::raw_http1(&Reject::ServiceUnavailable);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    })
    .await;
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    shared: Arc<Shared>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
    open: Arc<OpenConns>,
) {
    let mut settings = ConnSettings::default();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let accepted_at = Instant::now();
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        // The settings current when the connection is accepted, for its
        // whole life.
        let (builder, limits) = {
            let gate = shared.current();
            (settings.builder_for(&gate), gate.limits.clone())
        };
        let Some(slot) = open.admit(peer.ip(), &limits) else {
            tracing::debug!(%peer, "over a connection cap; refused");
            tokio::spawn(refuse(stream, tls.is_some()));
            continue;
        };
        set_tcp_keepalive(&stream);
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // One deadline from the accept: TLS handshake, h2 preface and the
            // first request head all within header_timeout.
            let first_by = accepted_at + limits.header_timeout;
            let act = ConnActivity::new(limits.body_timeout);
            let Some(tls) = tls else {
                let Some(h2) = request_started(&stream, first_by).await else {
                    crate::metrics::client_cutoff("first_request");
                    return;
                };
                let info = ConnInfo::new(peer, "http");
                let conn = Conn {
                    builder,
                    watcher,
                    act,
                    h2,
                    header_timeout: limits.header_timeout,
                    first_by,
                };
                serve_connection(TokioIo::new(stream), info, shared, conn).await;
                return;
            };
            match tokio::time::timeout_at(first_by, tls.acceptor().accept(stream)).await {
                Ok(Ok(stream)) => {
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let info = ConnInfo::new(peer, "https");
                    let conn = Conn {
                        builder,
                        watcher,
                        act,
                        h2,
                        header_timeout: limits.header_timeout,
                        first_by,
                    };
                    serve_connection(TokioIo::new(stream), info, shared, conn).await;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                Err(_) => {
                    crate::metrics::client_cutoff("first_request");
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        });
    }
}

/// How one accepted connection is served.
struct Conn {
    builder: auto::Builder<GateExec>,
    watcher: hyper_util::server::graceful::Watcher,
    act: Arc<ConnActivity>,
    h2: bool,
    header_timeout: Duration,
    first_by: Instant,
}

/// HTTP/1.1 or h2 (prior knowledge, or ALPN under TLS) on one connection,
/// each request on the config current when it starts.
async fn serve_connection<I>(io: I, info: ConnInfo, shared: Arc<Shared>, conn: Conn)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = info.peer;
    // Shared by the connection's requests: a reference count each, not a copy.
    let info = Arc::new(info);
    let act = conn.act.clone();
    let svc = service_fn(move |req| {
        act.request_started();
        pipeline::handle(shared.current(), info.clone(), req)
    });
    let hyper_conn = conn.builder.serve_connection_with_upgrades(io, svc);
    let task = ConnTask::new(
        conn.watcher.watch(hyper_conn.into_owned()),
        conn.act,
        conn.h2,
        conn.header_timeout,
        conn.first_by,
    );
    if let Some(Err(e)) = task.await {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// Waits until the client has sent enough to tell HTTP/1 from h2c, by
/// `deadline`: `Some(true)` for h2c. A connection that sends nothing, or
/// stalls inside the h2 preface, is closed: hyper-util's version detection
/// has no timeout.
async fn request_started(stream: &TcpStream, deadline: Instant) -> Option<bool> {
    let mut buf = [0u8; 24];
    let mut have = 0;
    loop {
        // Woken by new bytes only: a peek that finds no more than last time
        // clears the readiness.
        tokio::time::timeout_at(deadline, stream.readable())
            .await
            .ok()?
            .ok()?;
        let peeked = stream.try_io(Interest::READABLE, || {
            let (_, n) = rustix::net::recv(stream, &mut buf[..], rustix::net::RecvFlags::PEEK)?;
            if n == have && n != 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match peeked {
            Ok(0) => return None,
            Ok(n) => {
                have = n;
                if buf[..n] != H2_PREFACE[..n] {
                    return Some(false);
                }
                if n >= H2_PREFACE.len() {
                    return Some(true);
                }
                // A partial h2 preface: wait for more.
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
    }
}

/// Drops idle buckets so memory follows the live key count, not the peak.
async fn rate_limit_housekeeping(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut freed = 0;
        for l in &shared.current().rate_limits {
            let before = l.capacity();
            l.housekeeping();
            freed += before.saturating_sub(l.capacity());
        }
        if freed >= crate::memory::TRIM_AFTER_FREED_SLOTS {
            let _ = tokio::task::spawn_blocking(crate::memory::trim).await;
        }
    }
}

/// SIGHUP re-reads the config; a bad one is logged and changes nothing.
async fn reload_on_sighup(shared: Arc<Shared>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload with POST /reload");
        return;
    };
    while hup.recv().await.is_some() {
        crate::gate::log_reload(&shared.reload().await);
    }
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
