//! Supervisor mode (`asgi-gate run -- CMD ARGS...`): owns the worker
//! processes. It makes their private socket directory, builds each worker's
//! command line, waits until every socket answers, restarts a worker that
//! exits (with backoff), and stops them all (SIGTERM to each process group,
//! SIGKILL after the grace period). It knows nothing of HTTP: main hands the
//! sockets to the server, and a worker's exit is told to the upstream's
//! health loop (`upstream::worker_exited`).

mod pdeathsig;

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Written in a worker's arguments where its socket path goes.
pub const SOCKET_PLACEHOLDER: &str = "{socket}";

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A worker that ran this long before exiting restarts after `BACKOFF_MIN` again.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("no worker command given: asgi-gate run -- uvicorn app:app")]
    NoCommand,
    #[error(
        "cannot tell how to give `{0}` its socket: write {{socket}} in its arguments where the \
         Unix socket path goes (uvicorn and gunicorn are recognised without it)"
    )]
    UnknownProgram(String),
    #[error(
        "`{flag}` is set by asgi-gate run for `{program}`: remove it, or write {{socket}} where \
         the socket path goes"
    )]
    SocketFlagGiven { program: String, flag: &'static str },
    #[error("cannot create the private socket directory in {}: {source}", base.display())]
    Dir { base: PathBuf, source: io::Error },
    #[error(
        "socket path {} is too long for a Unix socket; set XDG_RUNTIME_DIR to a shorter directory",
        .0.display()
    )]
    PathTooLong(PathBuf),
    #[error("socket path {} is not UTF-8", .0.display())]
    NotUtf8(PathBuf),
    #[error("cannot start worker `{program}`: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("worker {index} (pid {pid}) exited with {status} before its socket answered")]
    ExitedEarly {
        index: usize,
        pid: u32,
        status: String,
    },
    #[error("worker {index}'s socket {} did not answer within {secs}s", socket.display())]
    NotReady {
        index: usize,
        socket: PathBuf,
        secs: u64,
    },
}

/// How a program is told which socket to listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SocketArg {
    Placeholder,
    Uvicorn,
    Gunicorn,
}

/// Checks that `command` can be given a socket (the convention in docs/cli.md).
pub fn check_command(command: &[String]) -> Result<(), SupervisorError> {
    socket_arg(command).map(|_| ())
}

fn socket_arg(command: &[String]) -> Result<SocketArg, SupervisorError> {
    let (program, args) = command.split_first().ok_or(SupervisorError::NoCommand)?;
    if args.iter().any(|a| a.contains(SOCKET_PLACEHOLDER)) {
        return Ok(SocketArg::Placeholder);
    }
    let name = Path::new(program)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    // `python -m uvicorn` / `python3.12 -m gunicorn`
    let app = match args {
        [m, module, ..] if name.starts_with("python") && m == "-m" => module.as_str(),
        _ => name,
    };
    let (style, taken): (_, &[&'static str]) = match app {
        "uvicorn" => (SocketArg::Uvicorn, &["--uds", "--fd"]),
        "gunicorn" => (SocketArg::Gunicorn, &["--bind", "-b"]),
        _ => return Err(SupervisorError::UnknownProgram(program.clone())),
    };
    for flag in taken {
        let given = args.iter().any(|a| {
            a == flag
                || a.starts_with(&format!("{flag}="))
                || (flag.len() == 2 && a.starts_with(flag))
        });
        if given {
            return Err(SupervisorError::SocketFlagGiven {
                program: app.to_string(),
                flag,
            });
        }
    }
    Ok(style)
}

/// Worker `socket`'s command line, by the convention in docs/cli.md.
fn worker_argv(command: &[String], socket: &str) -> Result<Vec<String>, SupervisorError> {
    let mut argv = command.to_vec();
    match socket_arg(command)? {
        SocketArg::Placeholder => {
            for a in argv.iter_mut().skip(1) {
                *a = a.replace(SOCKET_PLACEHOLDER, socket);
            }
        }
        SocketArg::Uvicorn => argv.extend(["--uds".to_string(), socket.to_string()]),
        SocketArg::Gunicorn => argv.extend(["--bind".to_string(), format!("unix:{socket}")]),
    }
    Ok(argv)
}

/// One worker's fixed identity: restarts reuse the socket and command line.
#[derive(Clone)]
struct Slot {
    index: usize,
    socket: PathBuf,
    argv: Vec<String>,
}

impl Slot {
    fn spawn(&self) -> Result<(Child, u32), SupervisorError> {
        let spawn_err = |source| SupervisorError::Spawn {
            program: self.argv.first().cloned().unwrap_or_default(),
            source,
        };
        // A socket file left by a dead worker would answer nothing.
        match std::fs::remove_file(&self.socket) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(spawn_err(e)),
        }
        let (program, args) = self.argv.split_first().ok_or(SupervisorError::NoCommand)?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            // Its own group, so that stopping it also stops what it forked.
            .process_group(0);
        pdeathsig::die_with_gate(&mut cmd);
        let child = cmd.spawn().map_err(spawn_err)?;
        let pid = child.id().unwrap_or_default();
        tracing::info!(worker = self.index, pid, socket = %self.socket.display(), "worker started");
        Ok((child, pid))
    }
}

/// A worker exit seen while `wait_ready` still listens.
struct Exit {
    index: usize,
    pid: u32,
    status: String,
}

pub struct Supervisor {
    sockets: Vec<PathBuf>,
    /// `Some(grace)` = stop every worker within `grace`.
    stop: watch::Sender<Option<Duration>>,
    tasks: Vec<JoinHandle<()>>,
    exits: Option<mpsc::UnboundedReceiver<Exit>>,
    /// Removed (with any socket left in it) when the supervisor is dropped.
    dir: tempfile::TempDir,
}

fn private_dir() -> Result<tempfile::TempDir, SupervisorError> {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute() && p.is_dir())
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    tempfile::Builder::new()
        .prefix("asgi-gate-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&base)
        .map_err(|source| SupervisorError::Dir { base, source })
}

impl Supervisor {
    /// Starts `workers` copies of `command`, each on its own socket. On an
    /// error, the workers already started are stopped again.
    pub async fn start(command: &[String], workers: usize) -> Result<Supervisor, SupervisorError> {
        socket_arg(command)?;
        let dir = private_dir()?;
        let (stop, _) = watch::channel(None);
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let mut sup = Supervisor {
            sockets: Vec::with_capacity(workers),
            stop,
            tasks: Vec::with_capacity(workers),
            exits: Some(exits),
            dir,
        };
        for index in 0..workers {
            let socket = sup.dir.path().join(format!("w{index}.sock"));
            let started = socket_str(&socket)
                .and_then(|s| worker_argv(command, s))
                .and_then(|argv| {
                    let slot = Slot {
                        index,
                        socket: socket.clone(),
                        argv,
                    };
                    slot.spawn().map(|(child, pid)| (slot, child, pid))
                });
            let (slot, child, pid) = match started {
                Ok(x) => x,
                Err(e) => {
                    sup.shutdown(Duration::ZERO).await;
                    return Err(e);
                }
            };
            sup.sockets.push(socket);
            sup.tasks.push(tokio::spawn(supervise(
                slot,
                child,
                pid,
                sup.stop.subscribe(),
                exits_tx.clone(),
            )));
        }
        Ok(sup)
    }

    /// The worker sockets, in worker order.
    pub fn sockets(&self) -> &[PathBuf] {
        &self.sockets
    }

    /// Waits until every worker's socket accepts a connection. A worker that
    /// exits first, or a socket still silent after `limit`, is an error.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<(), SupervisorError> {
        let deadline = Instant::now() + limit;
        let mut pending: Vec<usize> = (0..self.sockets.len()).collect();
        loop {
            if let Some(exits) = self.exits.as_mut() {
                if let Ok(e) = exits.try_recv() {
                    return Err(SupervisorError::ExitedEarly {
                        index: e.index,
                        pid: e.pid,
                        status: e.status,
                    });
                }
            }
            let mut still = Vec::new();
            for i in pending {
                if UnixStream::connect(&self.sockets[i]).await.is_err() {
                    still.push(i);
                }
            }
            pending = still;
            let Some(&first) = pending.first() else {
                // Later exits are restarts, not start-up failures.
                self.exits = None;
                tracing::info!(workers = self.sockets.len(), "all workers answer");
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(SupervisorError::NotReady {
                    index: first,
                    socket: self.sockets[first].clone(),
                    secs: limit.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM to every worker's process group, SIGKILL to those still
    /// running after `grace`; returns when all are gone.
    pub async fn shutdown(mut self, grace: Duration) {
        tracing::info!(?grace, "stopping workers");
        let _ = self.stop.send(Some(grace));
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

fn socket_str(p: &Path) -> Result<&str, SupervisorError> {
    let s = p
        .to_str()
        .ok_or_else(|| SupervisorError::NotUtf8(p.to_path_buf()))?;
    if s.len() > MAX_SOCKET_PATH {
        return Err(SupervisorError::PathTooLong(p.to_path_buf()));
    }
    Ok(s)
}

/// Signals a worker's whole process group. Never group 0 (that is the gate's own).
fn signal_group(pid: u32, sig: Signal) {
    let Some(pgid) = i32::try_from(pid).ok().filter(|p| *p > 0) else {
        return;
    };
    // ESRCH: the group is already gone.
    let _ = killpg(Pid::from_raw(pgid), sig);
}

/// Resolves with the grace period once a stop is requested (zero if the
/// supervisor is gone).
async fn stop_requested(stop: &mut watch::Receiver<Option<Duration>>) -> Duration {
    match stop.wait_for(Option::is_some).await {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => Duration::ZERO,
    }
}

fn describe(status: io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("unknown status ({e})"),
    }
}

/// Keeps one worker running until a stop is requested, then stops it.
async fn supervise(
    slot: Slot,
    mut child: Child,
    mut pid: u32,
    mut stop: watch::Receiver<Option<Duration>>,
    exits: mpsc::UnboundedSender<Exit>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let status = tokio::select! {
            s = child.wait() => s,
            grace = stop_requested(&mut stop) => {
                stop_worker(&slot, &mut child, pid, grace).await;
                return;
            }
        };
        // Out of the rotation now, not when a request finds the socket dead;
        // the health loop brings it back once its socket answers again.
        crate::upstream::worker_exited(&slot.socket);
        // Whatever it forked dies with it.
        signal_group(pid, Signal::SIGKILL);
        let status = describe(status);
        let _ = exits.send(Exit {
            index: slot.index,
            pid,
            status: status.clone(),
        });
        if started.elapsed() >= STABLE_AFTER {
            backoff = BACKOFF_MIN;
        }
        tracing::warn!(worker = slot.index, pid, %status, restart_in = ?backoff, "worker exited");
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop_requested(&mut stop) => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            match slot.spawn() {
                Ok((c, p)) => {
                    if let Some(m) = crate::metrics::get() {
                        m.worker_restarts.inc();
                    }
                    (child, pid) = (c, p);
                    break;
                }
                Err(e) => {
                    tracing::error!(worker = slot.index, error = %e, retry_in = ?backoff, "cannot restart worker");
                }
            }
        }
    }
}

async fn stop_worker(slot: &Slot, child: &mut Child, pid: u32, grace: Duration) {
    signal_group(pid, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => {
            tracing::info!(worker = slot.index, pid, status = %describe(status), "worker stopped")
        }
        Err(_) => {
            tracing::warn!(
                worker = slot.index,
                pid,
                ?grace,
                "worker still running after the grace period; killing it"
            );
            signal_group(pid, Signal::SIGKILL);
            let _ = child.wait().await;
        }
    }
    // Anything it forked that outlived it.
    signal_group(pid, Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(cmd: &[&str]) -> Result<Vec<String>, SupervisorError> {
        let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        worker_argv(&cmd, "/run/g/w0.sock")
    }

    #[test]
    fn uvicorn_gets_uds() {
        assert_eq!(
            argv(&["/venv/bin/uvicorn", "app:app", "--app-dir", "x"]).unwrap(),
            [
                "/venv/bin/uvicorn",
                "app:app",
                "--app-dir",
                "x",
                "--uds",
                "/run/g/w0.sock"
            ]
        );
        assert_eq!(
            argv(&["python3", "-m", "uvicorn", "app:app"]).unwrap(),
            [
                "python3",
                "-m",
                "uvicorn",
                "app:app",
                "--uds",
                "/run/g/w0.sock"
            ]
        );
    }

    #[test]
    fn gunicorn_gets_bind() {
        assert_eq!(
            argv(&["gunicorn", "-k", "uvicorn.workers.UvicornWorker", "app:app"]).unwrap(),
            [
                "gunicorn",
                "-k",
                "uvicorn.workers.UvicornWorker",
                "app:app",
                "--bind",
                "unix:/run/g/w0.sock"
            ]
        );
    }

    #[test]
    fn placeholder_wins_for_any_program() {
        assert_eq!(
            argv(&["hypercorn", "app:app", "--bind", "unix:{socket}"]).unwrap(),
            ["hypercorn", "app:app", "--bind", "unix:/run/g/w0.sock"]
        );
        // Even for uvicorn: nothing is appended then.
        assert_eq!(
            argv(&["uvicorn", "app:app", "--uds={socket}"]).unwrap(),
            ["uvicorn", "app:app", "--uds=/run/g/w0.sock"]
        );
    }

    #[test]
    fn unknown_program_names_the_placeholder() {
        let e = argv(&["granian", "app:app"]).unwrap_err().to_string();
        assert!(e.contains("{socket}") && e.contains("granian"), "{e}");
        assert!(matches!(argv(&[]), Err(SupervisorError::NoCommand)));
        // `python -m something_else` is not uvicorn.
        assert!(argv(&["python", "-m", "http.server"]).is_err());
    }

    #[test]
    fn own_socket_flag_is_refused() {
        for cmd in [
            &["uvicorn", "app:app", "--uds", "/x.sock"][..],
            &["uvicorn", "app:app", "--uds=/x.sock"],
            &["gunicorn", "app:app", "-b", "0.0.0.0:80"],
            &["gunicorn", "app:app", "-b0.0.0.0:80"],
            &["gunicorn", "app:app", "--bind=unix:/x"],
        ] {
            assert!(
                matches!(argv(cmd), Err(SupervisorError::SocketFlagGiven { .. })),
                "{cmd:?}"
            );
        }
    }

    #[tokio::test]
    async fn private_dir_is_owner_only() {
        let d = private_dir().unwrap();
        let mode = std::fs::metadata(d.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
