//! Listeners and the connection lifecycle: accept, guard the request head
//! against slow clients, serve HTTP/1.1 and h2c on one port (hyper-util's
//! auto builder), and drain in-flight requests on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::path::PathBuf;

use asgi_gate_config::{Config, Limits, LoadOptions};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::admin;
use crate::gate::{Gate, ReloadError, Shared};
use crate::pipeline::{self, ConnInfo};
use crate::tls::Tls;

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
    Tls(#[from] crate::tls::TlsError),
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
    let mut accept_tasks = Vec::new();
    for (listener, tls) in listeners {
        accept_tasks.push(tokio::spawn(accept_loop(
            listener,
            tls,
            shared.clone(),
            graceful.clone(),
            stop_rx.clone(),
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

/// The connection settings that come from `limits`, built with the gate (so
/// a reload applies them to new connections).
pub fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    let cap = head_hard_cap(limits.max_header_bytes);
    // hyper's read buffer grows only as a head needs it: the memory is spent
    // on big heads only. (It also bounds the response bytes queued for a slow
    // client, at most 16 body chunks.)
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(cap)
        .max_headers((limits.max_header_bytes / 4).clamp(100, MAX_HEADER_FIELDS))
        .keep_alive(true);
    // h2 counts 32 bytes more per field (RFC 7541 §4.1), and a head within
    // max_header_bytes has at most max_header_bytes/4 fields.
    let h2 = cap.saturating_add(limits.max_header_bytes.saturating_mul(8));
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(h2).unwrap_or(u32::MAX));
    b
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    shared: Arc<Shared>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
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
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        // The settings current when the connection is accepted, for its
        // whole life.
        let (builder, header_timeout) = {
            let gate = shared.current();
            (gate.conn.clone(), gate.limits.header_timeout)
        };
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(tls) = tls else {
                if request_started(&stream, header_timeout).await {
                    let info = ConnInfo::new(peer, "http");
                    serve_connection(TokioIo::new(stream), info, shared, builder, watcher).await;
                }
                return;
            };
            // The handshake counts against the same budget as a request head.
            match tokio::time::timeout(header_timeout, tls.acceptor().accept(stream)).await {
                Ok(Ok(stream)) => {
                    let info = ConnInfo::new(peer, "https");
                    serve_connection(TokioIo::new(stream), info, shared, builder, watcher).await;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// HTTP/1.1 or h2 (prior knowledge, or ALPN under TLS) on one connection,
/// each request on the config current when it starts.
async fn serve_connection<I>(
    io: I,
    info: ConnInfo,
    shared: Arc<Shared>,
    builder: auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = info.peer;
    // Shared by the connection's requests: a reference count each, not a copy.
    let info = Arc::new(info);
    let svc = service_fn(move |req| pipeline::handle(shared.current(), info.clone(), req));
    let conn = builder.serve_connection_with_upgrades(io, svc);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// Waits until the client has sent enough to tell HTTP/1 from h2c, within
/// `limit`. A connection that sends nothing, or stalls inside the h2
/// preface, is closed: hyper-util's version detection has no timeout.
async fn request_started(stream: &TcpStream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = [0u8; 24];
    loop {
        match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            Ok(Ok(n)) => {
                if n >= H2_PREFACE.len() || buf[..n] != H2_PREFACE[..n] {
                    return true;
                }
                // Only a partial h2 preface gets here: wait for the rest.
                tokio::time::sleep(Duration::from_millis(5)).await;
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
            }
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
        log_reload(&shared.reload().await);
    }
}

/// One log line per outcome, every config error with its position.
pub fn log_reload(result: &Result<Vec<String>, ReloadError>) {
    match result {
        Ok(notes) => {
            tracing::info!("config reloaded");
            for n in notes {
                tracing::warn!("{n}");
            }
        }
        Err(ReloadError::Invalid(errors)) => {
            for e in &errors.0 {
                tracing::error!("reload refused, old config keeps serving: {e}");
            }
        }
        Err(e) => tracing::error!("reload refused, old config keeps serving: {e}"),
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
