//! What a user installs: the wheel `scripts/wheel.sh` builds, installed into a
//! fresh venv as a Python team would (`pip install`), serving the test app in
//! supervisor mode from that venv's bin/; and `--version`, which names the
//! release and the commit.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::Full;

use common::*;

/// Port 0 rather than `run`'s built-in 127.0.0.1:8000, which another test or
/// program on the machine may hold.
const RUN_CONFIG: &str = "\
listen:
  - address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
shutdown_grace: 5s
compression: true
routes:
  - path: /hello
    methods: [GET]
    upstream: app
  - path: /{*rest}
    upstream: app
";

/// What `asgi-gate --version` must print: the workspace version and the
/// short commit of this checkout ("unknown" outside a git checkout, as
/// build.rs decides).
fn expected_version() -> String {
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    format!("asgi-gate {} ({commit})", env!("CARGO_PKG_VERSION"))
}

fn version_of(bin: &Path) -> String {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{} --version: {e}", bin.display()));
    assert!(out.status.success(), "{} --version: {out:?}", bin.display());
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn version_names_the_release_and_the_commit() {
    let shown = version_of(&gate_bin());
    assert_eq!(shown, expected_version());
    // The commit is really there, not the "unknown" fallback, in a checkout.
    if workspace_root().join(".git").exists() {
        assert!(!shown.contains("(unknown)"), "{shown}");
    }
}

/// The wheel: `ASGI_GATE_WHEEL` (scripts/test.sh builds it once and sets it),
/// else built here by scripts/wheel.sh (one release build).
fn wheel() -> PathBuf {
    if let Some(p) = std::env::var_os("ASGI_GATE_WHEEL") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "ASGI_GATE_WHEEL={} is not a file", p.display());
        return p;
    }
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts").join("wheel.sh"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/wheel.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "scripts/wheel.sh failed:\n{stdout}");
    let path = stdout
        .lines()
        .find_map(|l| l.strip_prefix("wheel: "))
        .unwrap_or_else(|| panic!("no `wheel: PATH` line from scripts/wheel.sh:\n{stdout}"));
    PathBuf::from(path.trim())
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `/proc/PID/stat` state; `None` once the process is gone.
fn state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..].trim_start().chars().next()
}

/// Running, not a zombie (a reparented zombie may never be reaped in a container).
fn alive(pid: u32) -> bool {
    state(pid).is_some_and(|s| s != 'Z' && s != 'X')
}

fn parent(pid: u32) -> Option<u32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Live processes whose command line mentions `needle` (the venv's unique path).
fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if cmdline.contains(needle) && alive(pid) {
            out.push((pid, cmdline));
        }
    }
    out
}

fn live_children(of: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            if parent(pid) == Some(of) && alive(pid) {
                out.push(pid);
            }
        }
    }
    out
}

#[tokio::test]
async fn wheel_installs_into_a_fresh_venv_and_serves_uvicorn_workers() {
    let wheel = wheel();
    let name = wheel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    assert!(
        name.starts_with(&format!("asgi_gate-{}-", env!("CARGO_PKG_VERSION"))),
        "wheel {name} is not this workspace's version"
    );

    // A fresh venv: the wheel, uvicorn, FastAPI and the test app's pins.
    let dir = tempdir();
    let venv = dir.path().join("venv");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    run_ok(
        Command::new(&python).args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    );
    run_ok(
        Command::new(venv.join("bin").join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(&wheel)
            .arg("-r")
            .arg(
                workspace_root()
                    .join("integration-tests")
                    .join("requirements.txt"),
            ),
        "pip install the wheel with uvicorn and fastapi",
    );

    // The binary pip put in the venv's bin/, a file of its own (not a link
    // into target/).
    let bin = venv.join("bin").join("asgi-gate");
    let meta = std::fs::symlink_metadata(&bin).expect("asgi-gate in the venv's bin/");
    assert!(meta.is_file(), "{} is not a plain file", bin.display());
    assert_eq!(version_of(&bin), expected_version());

    // `asgi-gate run --workers 2 -- uvicorn app:app` with the venv's bin/
    // first on PATH, as in an activated venv: `uvicorn` is the venv's.
    let path = format!(
        "{}:{}",
        venv.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let worker: Vec<String> = [
        "uvicorn",
        "app:app",
        "--app-dir",
        &app_dir().display().to_string(),
        "--no-access-log",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut gate = Gate::start_run_bin(
        &bin,
        RUN_CONFIG,
        &["--workers", "2"],
        &worker,
        &[("PATH", path.as_str())],
        Duration::from_secs(60),
    )
    .await;
    let workers = live_children(gate.pid());
    assert_eq!(workers.len(), 2, "worker processes: {workers:?}");
    let venv_str = venv.display().to_string();
    for pid in &workers {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        assert!(
            cmd.contains(&venv_str),
            "worker {pid} is not the venv's uvicorn: {cmd}"
        );
    }

    assert_eq!(get(gate.addr, "/hello").await.status, 200);

    // Compressed by the gate.
    let big = send_h1(
        gate.addr,
        req(Method::GET, gate.addr, "/big")
            .header("accept-encoding", "gzip")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .expect("GET /big");
    assert_eq!(big.status, 200);
    assert_eq!(
        big.header("content-encoding"),
        Some("gzip"),
        "{:?}",
        big.headers
    );
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&big.body[..])
        .read_to_end(&mut plain)
        .expect("gunzip /big");
    assert!(
        plain.len() > 4 * big.body.len(),
        "{} -> {}",
        plain.len(),
        big.body.len()
    );
    serde_json::from_slice::<serde_json::Value>(&plain).expect("/big is JSON");

    // A 405 from the gate, with Allow.
    let refused = send_h1(
        gate.addr,
        req(Method::POST, gate.addr, "/hello")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await
    .expect("POST /hello");
    refused.assert_rejection(405, "method_not_allowed");
    assert_eq!(refused.header("allow"), Some("GET, HEAD"));

    // SIGTERM: drained, exit 0, nothing from the venv left running.
    gate.send_signal(libc::SIGTERM);
    let status = gate.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit after SIGTERM; log:\n{}",
        gate.log()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_mentioning(&venv_str);
        if left.is_empty() && !workers.iter().any(|p| alive(*p)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left running after the gate exited: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
