//! The server: everything between a socket and `pipeline::handle`. Binds
//! the listeners and the admin listener (`serve_until`), accepts and caps
//! connections (`accept`), sets a connection up and serves HTTP/1.1 and h2c
//! on one port with hyper-util's auto builder (`connection`), keeps the
//! client-side deadlines hyper does not (`deadlines`), reloads on SIGHUP
//! and drains in-flight requests on SIGTERM/SIGINT.
//!
//! The top of the house: it names the pipeline, the gate, admin and
//! `reject` (for the raw 503 over a connection cap); nothing names it but
//! `main`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::path::PathBuf;

use asgi_gate_config::{Config, LoadOptions};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin;
use crate::gate::tls::Tls;
use crate::gate::{Gate, Shared};

mod accept;
mod config_watch;
mod connection;
pub mod deadlines;

use accept::{accept_loop, OpenConns};

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
    #[error("--watch: {0}")]
    Watch(std::io::Error),
}

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
    /// `--watch`: reload when the file (or a TLS listener's) changes.
    pub watch: bool,
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
    // The config file, then each TLS listener's files (re-read on reload).
    let watched: Vec<PathBuf> = match (&source.path, source.watch) {
        (Some(p), true) => std::iter::once(p.clone())
            .chain(
                cfg.listen
                    .iter()
                    .filter_map(|l| l.tls.as_ref())
                    .flat_map(|t| [t.cert.clone(), t.key.clone()]),
            )
            .collect(),
        _ => Vec::new(),
    };
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
    if !watched.is_empty() {
        match config_watch::start(shared.clone(), watched) {
            Ok(task) => {
                tokio::spawn(task);
            }
            Err(e) => return Err(ServeError::Watch(e)),
        }
    }
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
