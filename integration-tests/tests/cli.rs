//! The command line: `check`, bad configs at serve time, unbuilt sections.

mod common;

use common::*;

// Three planted errors on lines 8 (duration), 10 (size) and 13 (unknown upstream).
const THREE_ERRORS: &str = "\
listen:
  - address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
upstreams:
  app:
    sockets: [/tmp/asgi-gate-it-none.sock]
    read_timeout: 5 parsecs
limits:
  max_body: lots
routes:
  - path: /{*rest}
    upstream: nope
";

const VALID: &str = "\
listen:
  - address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
upstreams:
  app:
    sockets: [/tmp/asgi-gate-it-none.sock]
    pool: {max_idle: 8, max_connections: 16, idle_timeout: 3s}
    connect_timeout: 1s
    read_timeout: 10s
    health_check: {path: /healthz, interval: 5s}
trusted_proxies: [10.0.0.0/8, 127.0.0.1]
limits: {max_body: 1MiB, max_header_bytes: 16KiB, header_timeout: 5s}
shutdown_grace: 5s
routes:
  - path: /hello
    methods: [GET]
    upstream: app
  - path: /{*rest}
    upstream: app
";

/// Parses `FILE:LINE:COL: message` lines; panics on any other line.
fn error_lines(stderr: &str, file: &std::path::Path) -> Vec<(usize, usize, String)> {
    let prefix = format!("{}:", file.display());
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let rest = l.strip_prefix(&prefix).unwrap_or_else(|| {
                panic!("not a `{prefix}LINE:COL: msg` line: {l:?}\nall:\n{stderr}")
            });
            let mut parts = rest.splitn(3, ':');
            let line = parts
                .next()
                .unwrap()
                .parse()
                .unwrap_or_else(|_| panic!("line in {l:?}"));
            let col = parts
                .next()
                .unwrap()
                .parse()
                .unwrap_or_else(|_| panic!("col in {l:?}"));
            let msg = parts.next().unwrap_or_else(|| panic!("message in {l:?}"));
            assert!(
                msg.starts_with(' ') && msg.trim().len() > 3,
                "message in {l:?}"
            );
            (line, col, msg.trim().to_string())
        })
        .collect()
}

#[tokio::test]
async fn check_reports_every_error_with_its_position() {
    let out = run_gate_to_exit(&["check"], THREE_ERRORS, &[]).await;
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    let errs = error_lines(&out.stderr, &out.config_path);
    let lines: Vec<usize> = errs.iter().map(|e| e.0).collect();
    assert_eq!(lines, vec![8, 10, 13], "errors:\n{}", out.stderr);
    // Columns point into the line (key at col 5 / 3 / 5, value further right).
    for (line, col, _) in &errs {
        let text = THREE_ERRORS.lines().nth(line - 1).unwrap();
        assert!(
            *col >= 1 && *col <= text.len(),
            "column {col} outside line {line} {text:?}"
        );
    }
    assert!(errs[0].2.contains("parsecs"), "{}", errs[0].2);
    assert!(errs[1].2.contains("lots"), "{}", errs[1].2);
    assert!(errs[2].2.contains("nope"), "{}", errs[2].2);
}

#[tokio::test]
async fn check_is_silent_on_a_valid_config() {
    let out = run_gate_to_exit(&["check"], VALID, &[]).await;
    assert_eq!(out.code, Some(0), "stderr:\n{}", out.stderr);
    assert_eq!(out.stderr, "");
    assert_eq!(out.stdout, "");
}

#[tokio::test]
async fn serve_with_a_bad_config_exits_64_with_the_same_messages() {
    let out = run_gate_to_exit(&[], THREE_ERRORS, &[]).await;
    assert_eq!(out.code, Some(64), "stderr:\n{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    let prefix = out.config_path.display().to_string();
    for line in [8, 10, 13] {
        assert!(
            out.stderr.contains(&format!("{prefix}:{line}:")),
            "line {line} not reported:\n{}",
            out.stderr
        );
    }
    // An empty file: same exit code, no panic.
    let missing = run_gate_to_exit(&[], "", &[]).await;
    assert_eq!(
        missing.code,
        Some(64),
        "empty config; stderr:\n{}",
        missing.stderr
    );
    assert!(!missing.stderr.contains("panicked"), "{}", missing.stderr);
}
