//! Supervisor mode end to end: `asgi-gate run` starts real uvicorn workers on
//! private sockets, serves them, restarts one that dies, drains before it
//! stops them, and leaves no worker behind, even when the gate is SIGKILLed.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const CONFIG: &str = "\
listen:
  - address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
shutdown_grace: 5s
routes:
  - path: /{*rest}
    upstream: app
";

/// `asgi-gate run` with its output captured; killed by PID on drop, and so
/// is every worker it was seen to have.
struct RunGate {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    seen_workers: Mutex<HashSet<u32>>,
    status: Option<ExitStatus>,
    _dir: tempfile::TempDir,
}

fn capture(reader: impl Read + Send + 'static, log: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { return };
            let mut l = log.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
}

fn listen_addr(log: &str) -> Option<SocketAddr> {
    log.lines()
        .find_map(|l| l.strip_prefix("asgi-gate: listening on "))
        .and_then(|a| a.trim().parse().ok())
}

fn spawn_run(
    run_args: &[&str],
    worker: &[String],
    config: Option<&str>,
) -> (Child, Arc<Mutex<String>>, tempfile::TempDir) {
    let bin = gate_bin();
    assert!(
        bin.exists(),
        "{} missing: cargo build -p asgi-gate",
        bin.display()
    );
    let dir = tempdir();
    let mut cmd = Command::new(bin);
    cmd.arg("run");
    if let Some(yaml) = config {
        let path = dir.path().join("gate.yaml");
        std::fs::write(&path, yaml).unwrap();
        cmd.arg("-c").arg(path);
    }
    cmd.args(run_args)
        .arg("--")
        .args(worker)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("RUST_LOG");
    // If the test process dies without Drop, the gate goes too (and its
    // workers with it, which is what the gate-SIGKILL test proves).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn asgi-gate run");
    let log = Arc::new(Mutex::new(String::new()));
    capture(child.stdout.take().unwrap(), log.clone());
    capture(child.stderr.take().unwrap(), log.clone());
    (child, log, dir)
}

fn uvicorn_cmd(extra: &[&str]) -> Vec<String> {
    let uvicorn = venv().join("bin").join("uvicorn");
    assert!(
        uvicorn.exists(),
        "{} missing: set ASGI_GATE_VENV",
        uvicorn.display()
    );
    let mut v = vec![
        uvicorn.display().to_string(),
        "app:app".into(),
        "--app-dir".into(),
        app_dir().display().to_string(),
        "--no-access-log".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

impl RunGate {
    async fn start(workers: u16, worker: Vec<String>) -> RunGate {
        let (mut child, log, dir) =
            spawn_run(&["--workers", &workers.to_string()], &worker, Some(CONFIG));
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            let found = listen_addr(&log.lock().unwrap());
            if let Some(addr) = found {
                let g = RunGate {
                    child,
                    addr,
                    log,
                    seen_workers: Mutex::new(HashSet::new()),
                    status: None,
                    _dir: dir,
                };
                // The gate listens only once every worker answers.
                assert_eq!(g.workers().len(), workers as usize, "log:\n{}", g.log());
                return g;
            }
            if let Ok(Some(st)) = child.try_wait() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!(
                    "asgi-gate run exited ({st}) before listening:\n{}",
                    log.lock().unwrap()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "asgi-gate run not listening after 45s:\n{}",
                    log.lock().unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The private socket directory, from the `worker started` log lines.
    fn socket_dir(&self) -> std::path::PathBuf {
        let log = self.log();
        let sock = log
            .lines()
            .find_map(|l| l.split("socket=").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("no socket in the log:\n{log}"));
        std::path::Path::new(sock).parent().unwrap().to_path_buf()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The gate's live child processes (its workers), remembered for Drop.
    fn workers(&self) -> HashSet<u32> {
        let now = children_of(self.pid());
        self.seen_workers.lock().unwrap().extend(&now);
        now
    }

    fn signal(&self, sig: libc::c_int) {
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RunGate {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM first, so that the gate removes its socket directory.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Backstop if the gate failed to stop them; the cmdline check keeps a
        // reused PID safe.
        for pid in self.seen_workers.lock().unwrap().iter() {
            if alive(*pid) && cmdline(*pid).contains("app:app") {
                unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}

/// `/proc/PID/stat` fields after the command name: state, ppid, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Running, not a zombie (a reparented zombie may never be reaped in a container).
fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z" && s != "X"))
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn children_of(parent: u32) -> HashSet<u32> {
    let mut out = HashSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(f) = stat_fields(pid) {
            if f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) && alive(pid) {
                out.insert(pid);
            }
        }
    }
    out
}

async fn all_gone(pids: &HashSet<u32>, limit: Duration) -> bool {
    eventually(limit, || async { pids.iter().all(|p| !alive(*p)) }).await
}

async fn pid_of(addr: SocketAddr, path: &str) -> Option<u32> {
    let r = req(http::Method::GET, addr, path)
        .body(http_body_util::Full::default())
        .unwrap();
    let resp = send_h1(addr, r).await.ok()?;
    if resp.status != 200 {
        return None;
    }
    resp.json()["pid"].as_u64().map(|p| p as u32)
}

#[tokio::test]
async fn two_workers_serve_and_a_killed_one_comes_back() {
    let g = RunGate::start(2, uvicorn_cmd(&[])).await;
    let workers = g.workers();
    assert_eq!(get(g.addr, "/hello").await.json()["message"], "hello");

    // Concurrent slow requests spread over both workers (least outstanding).
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let addr = g.addr;
        tasks.push(tokio::spawn(
            async move { pid_of(addr, "/slow?ms=300").await },
        ));
    }
    let mut served_by = HashSet::new();
    for t in tasks {
        served_by.insert(t.await.unwrap().expect("slow request answered"));
    }
    assert_eq!(served_by, workers, "both workers serve");

    // Kill the worker that idle requests go to.
    let victim = pid_of(g.addr, "/pid").await.expect("pid");
    assert!(workers.contains(&victim));
    unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };

    // Every request succeeds, allowing each a few retries within 3 s.
    for i in 0..20 {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            if pid_of(g.addr, "/pid").await.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "request {i} failed for 3 s; log:\n{}",
                g.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let back = eventually(Duration::from_secs(10), || async {
        let now = g.workers();
        now.len() == 2 && !now.contains(&victim)
    })
    .await;
    assert!(
        back,
        "no replacement worker; children {:?}; log:\n{}",
        g.workers(),
        g.log()
    );
    let log = g.log();
    assert!(
        log.lines().any(|l| l.contains("worker exited")
            && l.contains(&format!("pid={victim}"))
            && l.contains("SIGKILL")),
        "exit not logged with pid and status:\n{log}"
    );
    // The replacement serves.
    let replacement: HashSet<u32> = g.workers().difference(&workers).copied().collect();
    let ok = eventually(Duration::from_secs(10), || async {
        let mut seen = HashSet::new();
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let addr = g.addr;
            tasks.push(tokio::spawn(
                async move { pid_of(addr, "/slow?ms=200").await },
            ));
        }
        for t in tasks {
            if let Some(p) = t.await.unwrap() {
                seen.insert(p);
            }
        }
        seen.intersection(&replacement).next().is_some()
    })
    .await;
    assert!(
        ok,
        "replacement {replacement:?} never answered; log:\n{}",
        g.log()
    );
}

#[tokio::test]
async fn sigterm_drains_first_then_stops_every_worker() {
    let mut g = RunGate::start(2, uvicorn_cmd(&[])).await;
    let workers = g.workers();
    let addr = g.addr;
    let in_flight = tokio::spawn(async move { pid_of(addr, "/slow?ms=1500").await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    g.signal(libc::SIGTERM);
    assert!(
        in_flight.await.unwrap().is_some(),
        "in-flight request finished during the drain"
    );
    let st = g.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(0),
        "exit status; log:\n{}",
        g.log()
    );
    assert!(
        all_gone(&workers, Duration::from_secs(3)).await,
        "workers left behind: {:?}",
        workers.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
    assert!(!g.socket_dir().exists(), "socket directory left behind");
    let log = g.log();
    let drain = log.find("draining").expect("drain logged");
    let stop = log.find("stopping workers").expect("worker stop logged");
    assert!(
        drain < stop,
        "the gate drains before the workers stop:\n{log}"
    );
}

#[tokio::test]
async fn gate_sigkill_takes_the_workers_with_it() {
    let mut g = RunGate::start(2, uvicorn_cmd(&[])).await;
    let workers = g.workers();
    let dir = g.socket_dir();
    assert!(dir.exists());
    assert_eq!(get(g.addr, "/hello").await.status, 200);
    g.signal(libc::SIGKILL);
    assert!(g.wait_exit(Duration::from_secs(5)).await.is_some());
    assert!(
        all_gone(&workers, Duration::from_secs(5)).await,
        "orphans after the gate was SIGKILLed: {:?}",
        workers.iter().filter(|p| alive(**p)).collect::<Vec<_>>()
    );
    // Nobody was left to remove it.
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn socket_placeholder_and_python_dash_m() {
    let python = venv().join("bin").join("python");
    let cmd: Vec<String> = [
        python.display().to_string(),
        "-m".into(),
        "uvicorn".into(),
        "app:app".into(),
        "--app-dir".into(),
        app_dir().display().to_string(),
        "--uds={socket}".into(),
    ]
    .into();
    let g = RunGate::start(1, cmd).await;
    let w = g.workers();
    let pid = *w.iter().next().unwrap();
    assert_eq!(pid_of(g.addr, "/pid").await, Some(pid));
    let line = cmdline(pid);
    assert!(
        line.contains("--uds=/") && line.ends_with("/w0.sock "),
        "{line}"
    );
}

#[tokio::test]
async fn refusals_name_the_problem() {
    // A program the gate cannot give a socket to: usage error, nothing started.
    let (mut child, log, _dir) = spawn_run(&[], &["/bin/sleep".into(), "60".into()], None);
    let st = child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(st.code(), Some(64));
    assert!(
        log.lock().unwrap().contains("{socket}"),
        "{}",
        log.lock().unwrap()
    );

    // A worker that dies at start: the gate fails fast with its exit status.
    let started = Instant::now();
    let (mut child, log, _dir) = spawn_run(
        &["--workers", "1"],
        &uvicorn_cmd(&[])
            .into_iter()
            .map(|a| a.replace("app:app", "nosuchmodule:app"))
            .collect::<Vec<_>>(),
        Some(CONFIG),
    );
    let st = child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = log.lock().unwrap().clone();
    assert_eq!(st.code(), Some(1), "{log}");
    assert!(log.contains("before its socket answered"), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(!log.contains("listening on"), "{log}");
}
