//! Supervisor mode end to end: `asgi-gate run` starts real uvicorn workers on
//! private sockets, serves them, restarts one that dies, drains before it
//! stops them, and leaves no worker behind, even when the gate is SIGKILLed.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::ExitStatus;
use std::sync::Mutex;
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

/// `asgi-gate run` through the common harness (output captured, stopped on
/// drop), and every worker it was seen to have killed on drop too.
struct RunGate {
    gate: Gate,
    addr: SocketAddr,
    seen_workers: Mutex<HashSet<u32>>,
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
        let n = workers.to_string();
        let gate =
            Gate::start_run(CONFIG, &["--workers", &n], &worker, Duration::from_secs(45)).await;
        let g = RunGate {
            addr: gate.addr,
            gate,
            seen_workers: Mutex::new(HashSet::new()),
        };
        // The gate listens only once every worker answers.
        assert_eq!(g.workers().len(), workers as usize, "log:\n{}", g.log());
        g
    }

    fn pid(&self) -> u32 {
        self.gate.pid()
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
        self.gate.log()
    }

    /// The gate's live child processes (its workers), remembered for Drop.
    fn workers(&self) -> HashSet<u32> {
        let now = children_of(self.pid());
        self.seen_workers.lock().unwrap().extend(&now);
        now
    }

    fn signal(&self, sig: libc::c_int) {
        self.gate.send_signal(sig);
    }

    async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.gate.wait_exit(limit).await
    }
}

impl Drop for RunGate {
    fn drop(&mut self) {
        if self.gate.exited().is_none() {
            // SIGTERM and time to drain, so that the gate stops its workers and
            // removes its socket directory itself (the harness would SIGKILL it
            // after 3 s).
            self.gate.send_signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && self.gate.exited().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
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

/// Under steady load, a SIGKILLed worker costs no GET (a GET it had in flight
/// got no answer and goes to the other worker) and at most the POSTs it had
/// started (one per POST loop); its replacement takes traffic within 1 s of
/// its socket answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_costs_no_get_and_its_replacement_serves_within_1s() {
    let g = RunGate::start(2, uvicorn_cmd(&[])).await;
    let load = Load::start(g.addr, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let victim = pid_of(g.addr, "/pid").await.expect("pid");
    let log = g.log();
    let socket = log
        .lines()
        .filter(|l| l.contains("worker started") && l.contains(&format!("pid={victim} ")))
        .find_map(|l| l.split("socket=").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("no socket for pid {victim} in the log:\n{log}"));
    let killed = Instant::now();
    unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };

    // The replacement's socket answers (straight, not through the gate).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (replacement, answered) = loop {
        if let Ok(r) = uds_request(&socket, http::Method::GET, "/pid", bytes::Bytes::new()).await {
            let pid = r.json()["pid"].as_u64().map(|p| p as u32);
            if let Some(pid) = pid.filter(|p| *p != victim) {
                break (pid, Instant::now());
            }
        }
        assert!(
            Instant::now() < deadline,
            "no replacement answered; log:\n{}",
            g.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Through the gate: concurrent requests spread over the healthy workers.
    let seen = loop {
        let sent = Instant::now();
        let mut batch = Vec::new();
        for _ in 0..4 {
            let addr = g.addr;
            batch.push(tokio::spawn(
                async move { pid_of(addr, "/slow?ms=50").await },
            ));
        }
        let mut pids = Vec::new();
        for t in batch {
            pids.push(t.await.unwrap());
        }
        if pids.contains(&Some(replacement)) {
            break sent;
        }
        assert!(
            sent < answered + Duration::from_secs(3),
            "replacement {replacement} took no traffic 3 s after its socket answered; log:\n{}",
            g.log()
        );
    };
    let tally = load.stop().await;
    let late = seen.saturating_duration_since(answered);
    eprintln!(
        "replacement took traffic {late:?} after its socket answered; load: {} ok, failed {:?}",
        tally.ok,
        tally
            .failed
            .iter()
            .map(|(m, s, at)| (m, s, at.saturating_duration_since(killed)))
            .collect::<Vec<_>>()
    );
    assert!(
        late < Duration::from_secs(1),
        "replacement took traffic {late:?} after its socket answered"
    );
    tally.assert_only_dying_posts_failed(killed, &g.log());
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
    let done = run_to_exit(&["run"], None, &["--", "/bin/sleep", "60"], &[]).await;
    let log = done.stdout + &done.stderr;
    assert_eq!(done.code, Some(64), "{log}");
    assert!(log.contains("{socket}"), "{log}");

    // A worker that dies at start: the gate fails fast with its exit status.
    let started = Instant::now();
    let worker: Vec<String> = uvicorn_cmd(&[])
        .into_iter()
        .map(|a| a.replace("app:app", "nosuchmodule:app"))
        .collect();
    let mut tail = vec!["--workers", "1", "--"];
    tail.extend(worker.iter().map(String::as_str));
    let done = run_to_exit(&["run"], Some(CONFIG), &tail, &[]).await;
    let log = done.stdout + &done.stderr;
    assert_eq!(done.code, Some(1), "{log}");
    assert!(log.contains("before its socket answered"), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(!log.contains("listening on"), "{log}");
}
