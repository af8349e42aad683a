//! Harness for the end-to-end tests: real uvicorn workers (`Worker`), the real
//! gate binary (`Gate`), small HTTP clients (h1, h2c, raw bytes, UDS) and
//! process probes. Every process is killed by PID when its guard drops, also
//! when the test panics.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------- paths

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration-tests lives in the workspace")
        .to_path_buf()
}

pub fn gate_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ASGI_GATE_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("debug").join("asgi-gate")
}

pub fn venv() -> PathBuf {
    std::env::var_os("ASGI_GATE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv"))
}

pub fn app_dir() -> PathBuf {
    workspace_root().join("integration-tests").join("app")
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("asgi-gate-it-")
        .tempdir()
        .expect("tempdir")
}

/// Children get SIGKILL if the test thread that spawned them dies without
/// running Drop (e.g. the harness is killed); Drop remains the normal path.
fn die_with_parent(cmd: &mut Command) {
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn kill_and_reap(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill(); // SIGKILL to this PID
    }
    let _ = child.wait();
}

// ---------------------------------------------------------------- worker

/// One uvicorn worker serving `integration-tests/app/app.py` on a Unix socket.
pub struct Worker {
    child: Child,
    pub sock: PathBuf,
    pub log_path: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Worker {
    /// A worker on `<fresh tempdir>/w0.sock`.
    pub async fn start() -> Worker {
        let dir = tempdir();
        let sock = dir.path().join("w0.sock");
        Self::spawn(sock, Some(dir), false).await
    }

    /// Like `start`, with uvicorn's access log on (it is written only when a
    /// response is sent, so it tells which requests the app completed).
    pub async fn start_with_access_log() -> Worker {
        let dir = tempdir();
        let sock = dir.path().join("w0.sock");
        Self::spawn(sock, Some(dir), true).await
    }

    /// A worker on a given socket path (the caller owns the directory), e.g. to
    /// restart a worker where a killed one was.
    pub async fn start_at(sock: &Path) -> Worker {
        Self::spawn(sock.to_path_buf(), None, false).await
    }

    /// A worker on `<fresh tempdir>/w0.sock` serving `module:app` from
    /// integration-tests/app, with `env` added.
    pub async fn start_app(module: &str, env: &[(&str, &str)]) -> Worker {
        let dir = tempdir();
        let sock = dir.path().join("w0.sock");
        Self::spawn_app(module, env, sock, Some(dir), false).await
    }

    async fn spawn(sock: PathBuf, dir: Option<tempfile::TempDir>, access_log: bool) -> Worker {
        Self::spawn_app("app", &[], sock, dir, access_log).await
    }

    async fn spawn_app(
        module: &str,
        env: &[(&str, &str)],
        sock: PathBuf,
        dir: Option<tempfile::TempDir>,
        access_log: bool,
    ) -> Worker {
        let _ = std::fs::remove_file(&sock); // a stale file from a killed worker
        let uvicorn = venv().join("bin").join("uvicorn");
        assert!(
            uvicorn.exists(),
            "{} missing: run scripts/setup-python.sh or set ASGI_GATE_VENV",
            uvicorn.display()
        );
        let log_path = sock.with_extension(format!(
            "{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let log = std::fs::File::create(&log_path).expect("worker log file");
        let mut cmd = Command::new(&uvicorn);
        cmd.arg(format!("{module}:app"))
            .arg("--app-dir")
            .arg(app_dir())
            .arg("--uds")
            .arg(&sock)
            .args(["--proxy-headers", "--forwarded-allow-ips", "*"]);
        if !access_log {
            cmd.arg("--no-access-log");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env("PYTHONUNBUFFERED", "1")
            .envs(env.iter().copied());
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("spawn uvicorn");
        let mut w = Worker {
            child,
            sock,
            log_path,
            _dir: dir,
        };
        w.wait_ready().await;
        w
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("uvicorn exited early ({st}):\n{}", self.log());
            }
            if self.sock.exists() {
                if let Ok(r) = uds_request(&self.sock, Method::GET, "/healthz", Bytes::new()).await
                {
                    if r.status == 200 {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "uvicorn not ready after 30s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL by PID and reap.
    pub fn kill(&mut self) {
        kill_and_reap(&mut self.child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A request straight to the worker (bypassing the gate).
    pub async fn direct(&self, method: Method, path: &str) -> Resp {
        uds_request(&self.sock, method, path, Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("direct {path} to worker: {e}"))
    }

    /// `/count` hits, read straight from the worker (not counted itself).
    pub async fn hits(&self) -> u64 {
        self.direct(Method::GET, "/count").await.json()["hits"]
            .as_u64()
            .expect("hits")
    }

    /// Inodes of the connections the worker has accepted and still holds open.
    pub fn open_conns(&self) -> HashSet<u64> {
        accepted_unix_conns(&self.sock)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// Connections accepted on a Unix listening socket and still open, by inode.
/// Linux lists an accepted socket in /proc/net/unix with the listener's path
/// and state 03 (connected); the listener itself is state 01. Socket inodes are
/// never reused while the socket lives, so distinct inodes = distinct connections.
pub fn accepted_unix_conns(path: &Path) -> HashSet<u64> {
    let text = std::fs::read_to_string("/proc/net/unix").expect("/proc/net/unix");
    let want = path.to_str().unwrap();
    let mut out = HashSet::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // Num RefCount Protocol Flags Type St Inode [Path]
        if f.len() >= 8 && f[7] == want && f[5] == "03" {
            out.insert(f[6].parse().unwrap());
        }
    }
    out
}

/// Number of open file descriptors of a process.
pub fn count_open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

// ---------------------------------------------------------------- gate

#[derive(Default)]
struct Captured {
    /// stdout and stderr interleaved, as read.
    log: String,
    stdout: String,
    stderr: String,
    /// Plain listeners, then TLS ones, in the order announced.
    listen: Vec<SocketAddr>,
    tls: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
}

/// A running gate. Its stdout and stderr are drained by background threads
/// into one buffer (so the pipes never fill), which also yields the ports.
pub struct Gate {
    child: Child,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// The first plain listener (the first TLS one when there is none).
    pub addr: SocketAddr,
    pub listen: Vec<SocketAddr>,
    /// TLS listeners (`listening on ... (tls)`).
    pub tls: Vec<SocketAddr>,
    pub admin: SocketAddr,
    captured: Arc<Mutex<Captured>>,
    status: Option<ExitStatus>,
}

/// Removes ANSI colour sequences (in case the logger colours a pipe).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let tok: String = rest
        .trim_start()
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    tok.trim_matches(|c: char| matches!(c, '"' | '\'' | ',' | ')' | '(' | ';' | '`'))
        .parse()
        .ok()
}

fn drain(reader: impl Read + Send + 'static, cap: Arc<Mutex<Captured>>, is_stderr: bool) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = strip_ansi(&String::from_utf8_lossy(&buf));
            let mut c = cap.lock().unwrap();
            if line.contains("admin listening on") {
                if let Some(a) = addr_after(&line, "admin listening on") {
                    c.admin = Some(a);
                }
            } else if let Some(a) = addr_after(&line, "listening on") {
                match line.trim_end().ends_with("(tls)") {
                    true => c.tls.push(a),
                    false => c.listen.push(a),
                }
            }
            let mut line = line;
            if !line.ends_with('\n') {
                line.push('\n');
            }
            c.log.push_str(&line);
            match is_stderr {
                true => c.stderr.push_str(&line),
                false => c.stdout.push_str(&line),
            }
        }
    });
}

/// `<bin> <args> [-c <config>] <tail>`, output piped, dying with the test.
fn gate_command(bin: &Path, args: &[&str], config_path: Option<&Path>, tail: &[&str]) -> Command {
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p asgi-gate` or set ASGI_GATE_BIN",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    cmd.args(args);
    if let Some(path) = config_path {
        cmd.arg("-c").arg(path);
    }
    cmd.args(tail)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("RUST_LOG");
    if let Some(level) = std::env::var_os("ASGI_GATE_TEST_RUST_LOG") {
        cmd.env("RUST_LOG", level);
    }
    die_with_parent(&mut cmd);
    cmd
}

/// `yaml` written to `<new tempdir>/gate.yaml`.
fn write_config(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempdir();
    let config_path = dir.path().join("gate.yaml");
    std::fs::write(&config_path, yaml).unwrap();
    (dir, config_path)
}

impl Gate {
    /// Writes `yaml` to a tempdir, starts `asgi-gate -c` and waits until it has
    /// printed its listener and admin addresses.
    pub async fn start(yaml: &str) -> Gate {
        Self::start_env(yaml, &[]).await
    }

    pub async fn start_env(yaml: &str, env: &[(&str, &str)]) -> Gate {
        Self::start_with(yaml, &[], env).await
    }

    /// `asgi-gate <args> -c <dir>/gate.yaml` with `env` added.
    pub async fn start_with(yaml: &str, args: &[&str], env: &[(&str, &str)]) -> Gate {
        Self::launch(&gate_bin(), yaml, args, &[], env, Duration::from_secs(15)).await
    }

    /// Supervisor mode: `asgi-gate run -c <dir>/gate.yaml <run_args> -- <worker>`,
    /// waited for up to `wait` (the gate listens once every worker answers).
    pub async fn start_run(
        yaml: &str,
        run_args: &[&str],
        worker: &[String],
        wait: Duration,
    ) -> Gate {
        Self::start_run_bin(&gate_bin(), yaml, run_args, worker, &[], wait).await
    }

    /// `start_run` with another `asgi-gate` binary (one installed from the
    /// wheel) and `env` added.
    pub async fn start_run_bin(
        bin: &Path,
        yaml: &str,
        run_args: &[&str],
        worker: &[String],
        env: &[(&str, &str)],
        wait: Duration,
    ) -> Gate {
        let mut tail: Vec<&str> = run_args.to_vec();
        tail.push("--");
        tail.extend(worker.iter().map(String::as_str));
        Self::launch(bin, yaml, &["run"], &tail, env, wait).await
    }

    async fn launch(
        bin: &Path,
        yaml: &str,
        args: &[&str],
        tail: &[&str],
        env: &[(&str, &str)],
        wait: Duration,
    ) -> Gate {
        let (dir, config_path) = write_config(yaml);
        let mut cmd = gate_command(bin, args, Some(&config_path), tail);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn asgi-gate");
        let captured = Arc::new(Mutex::new(Captured::default()));
        drain(child.stdout.take().unwrap(), captured.clone(), false);
        drain(child.stderr.take().unwrap(), captured.clone(), true);

        let deadline = Instant::now() + wait;
        loop {
            {
                let c = captured.lock().unwrap();
                let first = c.listen.first().or(c.tls.first()).copied();
                if let (Some(admin), Some(addr)) = (c.admin, first) {
                    let (listen, tls) = (c.listen.clone(), c.tls.clone());
                    drop(c);
                    return Gate {
                        child,
                        dir,
                        config_path,
                        addr,
                        listen,
                        tls,
                        admin,
                        captured,
                        status: None,
                    };
                }
            }
            if let Ok(Some(st)) = child.try_wait() {
                // Let the drain threads catch the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!(
                    "asgi-gate exited before listening ({st}); config:\n{yaml}\nlog:\n{}",
                    captured.lock().unwrap().log
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "asgi-gate printed no `listening on` + `admin listening on` lines in {wait:?}; log:\n{}",
                    captured.lock().unwrap().log
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the gate printed so far (stdout and stderr, ANSI stripped).
    pub fn log(&self) -> String {
        self.captured.lock().unwrap().log.clone()
    }

    pub fn stdout(&self) -> String {
        self.captured.lock().unwrap().stdout.clone()
    }

    pub fn stderr(&self) -> String {
        self.captured.lock().unwrap().stderr.clone()
    }

    /// The exit status, if the gate has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn send_signal(&self, sig: libc::c_int) {
        if self.status.is_none() {
            let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
            assert_eq!(rc, 0, "kill({}, {sig})", self.child.id());
        }
    }

    /// Waits for the process to exit; `None` if it is still running at the deadline.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.status {
                return Some(st);
            }
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

    pub fn fd_count(&self) -> usize {
        count_open_fds(self.pid())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        if let Ok(None) = self.child.try_wait() {
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        kill_and_reap(&mut self.child);
    }
}

/// Outcome of a gate run that is expected to end by itself (`check`, refusals).
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

/// Runs `asgi-gate <args> -c <yaml in a tempdir>` to completion (killed after 30 s).
pub async fn run_gate_to_exit(args: &[&str], yaml: &str, env: &[(&str, &str)]) -> Finished {
    run_to_exit(args, Some(yaml), &[], env).await
}

/// Runs `asgi-gate <args> [-c <yaml in a tempdir>] <tail>` to completion
/// (killed after 30 s).
pub async fn run_to_exit(
    args: &[&str],
    yaml: Option<&str>,
    tail: &[&str],
    env: &[(&str, &str)],
) -> Finished {
    let (dir, config_path) = write_config(yaml.unwrap_or(""));
    let mut cmd = gate_command(&gate_bin(), args, yaml.map(|_| config_path.as_path()), tail);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn asgi-gate");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        if Instant::now() > deadline {
            kill_and_reap(&mut child);
            panic!("asgi-gate {args:?} {tail:?} still running after 30s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Finished {
        code: status.code(),
        stdout: String::from_utf8_lossy(&t_out.join().unwrap()).into_owned(),
        stderr: strip_ansi(&String::from_utf8_lossy(&t_err.join().unwrap())),
        config_path,
        _dir: dir,
    }
}

// ---------------------------------------------------------------- configs

fn indent(s: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{pad}{}\n", l.trim_end()))
        .collect()
}

/// A config with one listener and the admin on port 0, upstream `app` on
/// `sock` and a catch-all route. `upstream_extra` goes inside `upstreams.app`
/// and `top_extra` at the top level (both written unindented).
pub fn config(sock: &Path, upstream_extra: &str, top_extra: &str) -> String {
    config_sockets(&[sock], upstream_extra, top_extra)
}

/// `config` with several worker sockets in upstream `app`.
pub fn config_sockets(socks: &[&Path], upstream_extra: &str, top_extra: &str) -> String {
    let socks: Vec<String> = socks
        .iter()
        .map(|s| format!("\"{}\"", s.display()))
        .collect();
    format!(
        "listen:\n  - address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n\
         upstreams:\n  app:\n    sockets: [{socks}]\n{up}\
         routes:\n  - path: /{{*rest}}\n    upstream: app\n{top}",
        socks = socks.join(", "),
        up = indent(upstream_extra, 4),
        top = indent(top_extra, 0),
    )
}

// ---------------------------------------------------------------- clients

/// A response with its whole body.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}), status {}: {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }

    /// Asserts the gate's rejection shape: status, JSON `{"error","detail"}`,
    /// content type, and a request id.
    pub fn assert_rejection(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        let v = self.json();
        assert_eq!(v["error"], code, "body: {v}");
        assert!(
            v["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "body: {v}"
        );
        assert!(
            self.header("x-request-id").is_some(),
            "no x-request-id on rejection"
        );
    }
}

async fn collect(resp: http::Response<hyper::body::Incoming>) -> Result<Resp, BoxError> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// A request builder for path `path` with `Host` set (hyper's connection-level
/// client does not add one).
pub fn req(method: Method, addr: SocketAddr, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
}

/// One HTTP/1.1 keep-alive connection.
pub struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    pub addr: SocketAddr,
    pub local: SocketAddr,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> Result<H1, BoxError> {
        let tcp = TcpStream::connect(addr).await?;
        let local = tcp.local_addr()?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(H1 {
            sender,
            addr,
            local,
        })
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Resp, BoxError> {
        self.sender.ready().await?;
        collect(self.sender.send_request(req).await?).await
    }

    /// Sends and returns the response with its body still streaming.
    pub async fn send_streaming(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, BoxError> {
        self.sender.ready().await?;
        Ok(self.sender.send_request(req).await?)
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        let r = req(Method::GET, self.addr, path)
            .body(Full::default())
            .unwrap();
        self.send(r)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

/// One request on a fresh HTTP/1.1 connection.
pub async fn send_h1(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<Resp, BoxError> {
    H1::connect(addr).await?.send(req).await
}

/// An empty-bodied request with extra headers, over a fresh connection.
pub async fn send_with(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let mut b = req(method, addr, path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send_h1(addr, b.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap()
}

pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    let r = req(Method::GET, addr, path).body(Full::default()).unwrap();
    send_h1(addr, r)
        .await
        .unwrap_or_else(|e| panic!("GET {path} via {addr}: {e}"))
}

pub async fn post(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Resp {
    let r = req(Method::POST, addr, path)
        .body(Full::new(body.into()))
        .unwrap();
    send_h1(addr, r)
        .await
        .unwrap_or_else(|e| panic!("POST {path} via {addr}: {e}"))
}

/// One request over a fresh h2c prior-knowledge connection. `req`'s URI must
/// be absolute (`http://host:port/path`) so that :scheme and :authority are set.
pub async fn send_h2(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<Resp, BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.ready().await?;
    collect(sender.send_request(req).await?).await
}

/// One HTTP/1.1 request to a Unix socket (straight to a worker).
pub async fn uds_request(
    sock: &Path,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<Resp, BoxError> {
    let s = UnixStream::connect(sock).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let r = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "worker")
        .body(Full::new(body))?;
    collect(sender.send_request(r).await?).await
}

// ---------------------------------------------------------------- raw HTTP/1.1

/// A response parsed from raw bytes.
#[derive(Debug)]
pub struct RawResp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// What happened on a raw connection.
#[derive(Debug)]
pub enum RawOutcome {
    Response(RawResp),
    /// Closed (EOF or reset) with these bytes received and no complete response.
    Closed(Vec<u8>),
    /// Still open at the deadline.
    TimedOut(Vec<u8>),
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses one complete response from `buf`; `eof` = no more bytes will come.
fn parse_raw(buf: &[u8], eof: bool) -> Option<RawResp> {
    let head_end = find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let rest = &buf[head_end + 4..];
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let body = if let Some(cl) = get("content-length") {
        let n: usize = cl.parse().ok()?;
        if rest.len() < n {
            return None;
        }
        rest[..n].to_vec()
    } else if get("transfer-encoding").is_some_and(|t| t.to_ascii_lowercase().contains("chunked")) {
        let mut out = Vec::new();
        let mut p = rest;
        loop {
            let le = find(p, b"\r\n")?;
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&p[..le]).split(';').next()?.trim(),
                16,
            )
            .ok()?;
            p = &p[le + 2..];
            if size == 0 {
                break;
            }
            if p.len() < size + 2 {
                return None;
            }
            out.extend_from_slice(&p[..size]);
            p = &p[size + 2..];
        }
        out
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        if !eof {
            return None;
        }
        rest.to_vec()
    };
    Some(RawResp {
        status,
        headers,
        body,
    })
}

/// Reads until one full response arrives, the peer closes, or `timeout`.
pub async fn read_raw_response(s: &mut TcpStream, timeout: Duration) -> RawOutcome {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(r) = parse_raw(&buf, false) {
            return RawOutcome::Response(r);
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return RawOutcome::TimedOut(buf),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return match parse_raw(&buf, true) {
                    Some(r) => RawOutcome::Response(r),
                    None => RawOutcome::Closed(buf),
                }
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends raw bytes on a fresh connection and reads one response.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> RawOutcome {
    let mut s = TcpStream::connect(addr).await.expect("connect to gate");
    s.write_all(request).await.expect("write request");
    read_raw_response(&mut s, timeout).await
}

// ---------------------------------------------------------------- misc

/// sha256 hex of `data` (coreutils' sha256sum keeps the dependency list short).
pub fn sha256_hex(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(data).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// Deterministic pseudo-random bytes (splitmix64); enough to defeat any
/// accidental compression or pattern-based shortcut.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Polls `f` until it returns true or `timeout` passes; returns the last result.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- load

/// Client loops, each on its own keep-alive connection, until stopped: loop
/// `i` sends `GET /hello` when `i` is even and `POST /echo` with a small body
/// when it is odd. Every answer that is not a 200 (or a connection error) is
/// recorded with its method.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
}

#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    /// (method, status or error, when the answer came)
    pub failed: Vec<(Method, String, Instant)>,
}

impl Tally {
    /// Asserts what a worker SIGKILLed at `killed` may cost the load: no GET
    /// 502 (idempotent and bodiless, so retried); only requests that were at
    /// the worker as it died — a POST in flight or written while its socket
    /// was still open (a few ms) as 502, or any response the worker had
    /// begun and could not finish (its body cut: nothing can be retried once
    /// a response has started).
    pub fn assert_only_dying_posts_failed(&self, killed: Instant, log: &str) {
        for (m, what, at) in &self.failed {
            let after = at.saturating_duration_since(killed);
            let cut_body = what.contains("body");
            assert!(
                ((*m == Method::POST && what.starts_with("502")) || cut_body)
                    && after < Duration::from_millis(300),
                "{m} failed with {what} {after:?} after the kill; all failures: {:?}; log:\n{log}",
                self.failed
            );
        }
        assert!(self.ok > 50, "the load did not flow: {} ok", self.ok);
    }
}

impl Load {
    pub fn start(addr: SocketAddr, loops: usize) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..loops)
            .map(|i| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let method = if i % 2 == 0 {
                        Method::GET
                    } else {
                        Method::POST
                    };
                    let mut tally = Tally::default();
                    let mut conn: Option<H1> = None;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => match H1::connect(addr).await {
                                Ok(c) => conn.insert(c),
                                Err(e) => {
                                    tally.failed.push((
                                        method.clone(),
                                        format!("connect: {e}"),
                                        Instant::now(),
                                    ));
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    continue;
                                }
                            },
                        };
                        let r = match method {
                            Method::GET => req(Method::GET, addr, "/hello").body(Full::default()),
                            _ => req(Method::POST, addr, "/echo")
                                .body(Full::new(Bytes::from_static(b"{\"n\":1}"))),
                        }
                        .unwrap();
                        match c.send(r).await {
                            Ok(resp) if resp.status == 200 => tally.ok += 1,
                            Ok(resp) => tally.failed.push((
                                method.clone(),
                                resp.status.to_string(),
                                Instant::now(),
                            )),
                            Err(e) => {
                                tally
                                    .failed
                                    .push((method.clone(), e.to_string(), Instant::now()));
                                conn = None;
                            }
                        }
                    }
                    tally
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops the loops and adds up what they saw.
    pub async fn stop(self) -> Tally {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Tally::default();
        for t in self.tasks {
            let t = t.await.unwrap();
            all.ok += t.ok;
            all.failed.extend(t.failed);
        }
        all
    }
}

/// The headers an /echo response says the worker received, lower-case names.
pub fn echoed_headers(echo: &serde_json::Value) -> Vec<(String, String)> {
    echo["headers"]
        .as_array()
        .expect("headers array")
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// All values of header `name` the worker received.
pub fn echoed(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echoed_headers(echo)
        .into_iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v)
        .collect()
}

// ---------------------------------------------------------------- Redis

/// A loopback port nothing listens on (just released by the OS).
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real redis-server on a free loopback port, no persistence, in a
/// directory of its own (so it never loads a dump); killed on drop.
pub struct Redis {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_on(unused_port())
    }

    /// On `port`, e.g. a Redis restarted empty where the gates expect it.
    pub fn start_on(port: u16) -> Redis {
        let dir = tempdir();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        let r = Redis {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.cli(&["PING"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// Kills this redis-server (by PID) and waits until it is gone.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP relay to a loopback port that can go silent: after `freeze`, the
/// connections open then stop passing bytes either way but stay open (a
/// half-open link, as after a lost NAT entry or a dead peer host); new
/// connections pass as before.
pub struct Relay {
    pub port: u16,
    frozen_below: Arc<std::sync::atomic::AtomicU64>,
    opened: Arc<std::sync::atomic::AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target_port: u16) -> Relay {
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen_below = Arc::new(AtomicU64::new(0));
        let opened = Arc::new(AtomicU64::new(0));
        let (fb, op) = (frozen_below.clone(), opened.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                    continue;
                };
                let id = op.fetch_add(1, Ordering::SeqCst);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, id, fb.clone()));
                tokio::spawn(pump(sr, cw, id, fb.clone()));
            }
        });
        async fn pump(
            mut from: tokio::net::tcp::OwnedReadHalf,
            mut to: tokio::net::tcp::OwnedWriteHalf,
            id: u64,
            frozen_below: Arc<std::sync::atomic::AtomicU64>,
        ) {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if id < frozen_below.load(std::sync::atomic::Ordering::SeqCst) {
                    // Silent, and both sockets kept open.
                    let _keep = (from, to);
                    std::future::pending::<()>().await;
                    return;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
        Relay {
            port,
            frozen_below,
            opened,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Every connection open now goes silent.
    pub fn freeze(&self) {
        use std::sync::atomic::Ordering;
        self.frozen_below
            .store(self.opened.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
