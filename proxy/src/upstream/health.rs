//! Which workers take requests: a health check every
//! `health_check.interval`, those out of the rotation rechecked every
//! [`RECHECK`], and a worker whose process exited (supervisor mode) taken
//! out at once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::broadcast;

use super::{Upstream, Worker};

/// How often a worker out of the rotation is checked again, whatever the
/// health-check interval: a restarted worker takes traffic this soon after
/// its socket answers.
pub(super) const RECHECK: Duration = Duration::from_millis(200);

/// Sockets whose worker process just exited (supervisor mode), for the
/// health loops to take out of the rotation at once.
static EXITED: LazyLock<broadcast::Sender<Arc<PathBuf>>> =
    LazyLock::new(|| broadcast::channel(64).0);

/// Called by the supervisor when the worker serving `socket` exits.
pub fn worker_exited(socket: &Path) {
    // No receiver: no upstream uses it (yet); nothing to mark.
    let _ = EXITED.send(Arc::new(socket.to_path_buf()));
}

impl Upstream {
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
