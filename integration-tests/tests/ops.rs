//! Operations end to end: hot reload (SIGHUP and `POST /reload`, valid and
//! invalid, under load, rate-limit buckets kept), TLS with h2 over ALPN and
//! certificate reload, Prometheus counters checked against the requests made,
//! and the access log (fields, formats, no secrets).
//!
//! The gate here is started by `OpsGate`, which keeps stdout (the access log)
//! apart from stderr (operational logs) and passes command-line flags.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_tungstenite::tungstenite::Message;

const TOKEN_ENV: &str = "OPS_ADMIN_TOKEN";
const ADMIN_TOKEN: &str = "ops-admin-token-7f3a9c";

// ---------------------------------------------------------------- the gate

/// The common test gate, started with the admin token in its environment,
/// plus the operations this file needs (reload, metrics).
struct OpsGate {
    g: Gate,
    /// The first TLS listener, if any.
    tls_addr: Option<SocketAddr>,
}

impl std::ops::Deref for OpsGate {
    type Target = Gate;
    fn deref(&self) -> &Gate {
        &self.g
    }
}

impl OpsGate {
    /// Starts `asgi-gate <args> -c gate.yaml` with `TOKEN_ENV` set.
    async fn start(yaml: &str, args: &[&str]) -> OpsGate {
        Self::start_env(yaml, args, &[]).await
    }

    async fn start_env(yaml: &str, args: &[&str], env: &[(&str, &str)]) -> OpsGate {
        let mut all = vec![(TOKEN_ENV, ADMIN_TOKEN)];
        all.extend_from_slice(env);
        let g = Gate::start_with(yaml, args, &all).await;
        OpsGate {
            tls_addr: g.tls.first().copied(),
            g,
        }
    }

    fn sighup(&self) {
        self.g.send_signal(libc::SIGHUP);
    }

    fn assert_alive(&mut self) {
        if let Some(st) = self.g.exited() {
            panic!("the gate died ({st}); stderr:\n{}", self.stderr());
        }
    }

    fn rewrite(&self, yaml: &str) {
        write_config(&self.config_path, yaml);
    }

    async fn metrics(&self) -> Vec<Sample> {
        let r = get(self.admin, "/metrics").await;
        assert_eq!(r.status, 200);
        parse_metrics(&r.text())
    }

    async fn reloads(&self, result: &str) -> f64 {
        value(
            &self.metrics().await,
            "asgi_gate_config_reloads_total",
            &[("result", result)],
        )
        .unwrap_or(0.0)
    }

    /// Sends SIGHUP and waits until the reload counter for `result` has
    /// grown past `before`.
    async fn sighup_and_wait(&mut self, result: &str) {
        let before = self.reloads(result).await;
        self.sighup();
        let done = eventually(Duration::from_secs(10), || async {
            self.reloads(result).await > before
        })
        .await;
        self.assert_alive();
        assert!(
            done,
            "no `{result}` reload counted within 10s of SIGHUP; stderr:\n{}",
            self.stderr()
        );
    }

    /// `POST /reload` on the admin listener, with `token` as the bearer.
    async fn post_reload(&self, token: Option<&str>) -> Resp {
        let mut b = req(Method::POST, self.admin, "/reload");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        send_h1(self.admin, b.body(Full::default()).unwrap())
            .await
            .expect("POST /reload")
    }
}

/// Replaces the file in one step, so a reload never reads half a file.
fn write_config(path: &Path, yaml: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The config's head: one plain listener, the admin with a token, upstream
/// `app` on `sock`. Routes and the rest are appended by each test.
fn head(sock: &Path) -> String {
    format!(
        "listen:\n  - address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n  token_env: {TOKEN_ENV}\n\
         upstreams:\n  app:\n    sockets: [\"{}\"]\n",
        sock.display()
    )
}

/// 1-based line and column of the first `needle` in `text`.
fn line_col(text: &str, needle: &str) -> (usize, usize) {
    let at = text.find(needle).expect("needle in the config");
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = at - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

async fn get_h(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut b = req(Method::GET, addr, path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send_h1(addr, b.body(Full::default()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

// ---------------------------------------------------------------- metrics text

#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (samples only; comments skipped).
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let name = &line[..open];
                let mut labels = BTreeMap::new();
                let b = line.as_bytes();
                let mut i = open + 1;
                loop {
                    if b[i] == b'}' {
                        i += 1;
                        break;
                    }
                    if b[i] == b',' {
                        i += 1;
                        continue;
                    }
                    let eq = i + line[i..].find('=').expect("label =");
                    let key = line[i..eq].trim().to_string();
                    assert_eq!(b[eq + 1], b'"', "label value quoted: {line}");
                    let mut val = String::new();
                    let mut j = eq + 2;
                    loop {
                        match b[j] {
                            b'\\' => {
                                val.push(match b[j + 1] {
                                    b'n' => '\n',
                                    c => c as char,
                                });
                                j += 2;
                            }
                            b'"' => break,
                            _ => {
                                let c = line[j..].chars().next().unwrap();
                                val.push(c);
                                j += c.len_utf8();
                            }
                        }
                    }
                    labels.insert(key, val);
                    i = j + 1;
                }
                (name.to_string(), labels, &line[i..])
            }
            None => {
                let sp = line.find(' ').expect("sample value");
                (line[..sp].to_string(), BTreeMap::new(), &line[sp..])
            }
        };
        let v = rest.split_whitespace().next().expect("value");
        let value = match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The one sample named `name` whose labels include `labels`; None if
/// there is none; panics if several match.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let hits: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(
        hits.len() <= 1,
        "{name}{labels:?} matches several samples: {hits:?}"
    );
    hits.first().map(|s| s.value)
}

fn must(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(samples, name, labels).unwrap_or_else(|| {
        let names: Vec<String> = samples
            .iter()
            .filter(|s| s.name.starts_with(name))
            .map(|s| format!("{}{:?} {}", s.name, s.labels, s.value))
            .collect();
        panic!("no sample {name}{labels:?}; samples of that name:\n{names:#?}")
    })
}

// ---------------------------------------------------------------- 1. SIGHUP

#[tokio::test]
async fn sighup_applies_a_valid_config_and_refuses_an_invalid_one() {
    let w = Worker::start().await;
    let a = format!(
        "{}routes:\n  - path: /{{*rest}}\n    upstream: app\n",
        head(&w.sock)
    );
    let mut g = OpsGate::start(&a, &[]).await;

    // Config A: /blocked goes to the app, which has no such endpoint.
    let r = get(g.addr, "/blocked").await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["detail"], "Not Found", "the app's own 404");

    // Config B: /blocked is POST-only, so the gate answers GET with 405.
    let b = format!(
        "{}routes:\n  - path: /blocked\n    methods: [POST]\n    upstream: app\n  - path: /{{*rest}}\n    upstream: app\n",
        head(&w.sock)
    );
    g.rewrite(&b);
    g.sighup_and_wait("ok").await;
    let ok = eventually(Duration::from_secs(5), || async {
        get(g.addr, "/blocked").await.status == 405
    })
    .await;
    assert!(ok, "GET /blocked is not 405 after SIGHUP with config B");
    let r = get(g.addr, "/blocked").await;
    r.assert_rejection(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));

    // An invalid config: refused, logged with its position, B keeps serving.
    let bad = format!("{b}bogus_top_level: 1\n");
    let (line, col) = line_col(&bad, "bogus_top_level");
    g.rewrite(&bad);
    g.sighup_and_wait("failed").await;
    get(g.addr, "/blocked")
        .await
        .assert_rejection(405, "method_not_allowed");
    assert_eq!(get(g.addr, "/hello").await.status, 200);
    let pos = format!("gate.yaml:{line}:{col}:");
    let ok = eventually(Duration::from_secs(3), || async {
        g.stderr()
            .lines()
            .any(|l| l.contains(&pos) && l.contains("bogus_top_level"))
    })
    .await;
    assert!(
        ok,
        "stderr has no `{pos} ...bogus_top_level` line:\n{}",
        g.stderr()
    );
    let m = g.metrics().await;
    assert_eq!(
        must(&m, "asgi_gate_config_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        must(
            &m,
            "asgi_gate_config_reloads_total",
            &[("result", "failed")]
        ),
        1.0
    );
    g.assert_alive();
}

// ---------------------------------------------------------------- 2. POST /reload

#[tokio::test]
async fn post_reload_needs_the_token_reports_restart_notes_and_refuses_bad_configs() {
    let w = Worker::start().await;
    let routes = "routes:\n  - path: /blocked\n    methods: [POST]\n    upstream: app\n  - path: /{*rest}\n    upstream: app\n";
    let base = format!(
        "{}routes:\n  - path: /{{*rest}}\n    upstream: app\n",
        head(&w.sock)
    );
    let g = OpsGate::start(&base, &[]).await;

    // No token, a wrong token: 401, and nothing is reloaded.
    g.rewrite(&format!("{}{routes}", head(&w.sock)));
    // (The admin listener's answers carry no X-Request-Id: not asserted.)
    let r = g.post_reload(None).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "unauthorized");
    assert!(r
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Bearer")));
    let r = g.post_reload(Some("not-the-token")).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(get(g.addr, "/blocked").await.status, 404);
    assert_eq!(g.reloads("ok").await, 0.0);
    let r = get(g.admin, "/reload").await;
    assert_eq!(r.status, 405, "GET /reload: {}", r.text());

    // With the token: applied, no notes.
    let r = g.post_reload(Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "reloaded", "{v}");
    assert_eq!(v["notes"], serde_json::json!([]), "{v}");
    get(g.addr, "/blocked")
        .await
        .assert_rejection(405, "method_not_allowed");

    // A new listen address: reported as needing a restart, not applied;
    // the rest of the file (the /blocked route removed) is applied.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let new_port = free.local_addr().unwrap().port();
    drop(free);
    let moved = head(&w.sock).replace(
        "  - address: 127.0.0.1:0\nadmin",
        &format!("  - address: 127.0.0.1:{new_port}\nadmin"),
    );
    assert!(moved.contains(&format!("127.0.0.1:{new_port}")));
    g.rewrite(&format!(
        "{moved}routes:\n  - path: /{{*rest}}\n    upstream: app\n"
    ));
    let r = g.post_reload(Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let notes: Vec<&str> = v["notes"]
        .as_array()
        .expect("notes array")
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("listen") && n.contains("restart")),
        "no restart note for `listen`: {v}"
    );
    assert_eq!(notes.len(), 1, "{v}");
    assert_eq!(get(g.addr, "/hello").await.status, 200, "old port serves");
    assert_eq!(
        get(g.addr, "/blocked").await.status,
        404,
        "the route change was applied"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", new_port)).await.is_err(),
        "the gate listens on the new port without a restart"
    );

    // Invalid: 400 with every error and its position; the old config stays.
    let bad = format!(
        "{}routes:\n  - path: /blocked\n    methods: [POST]\n    upstream: nowhere\n    no_such_key: 1\n  - path: /{{*rest}}\n    upstream: app\n",
        head(&w.sock)
    );
    let (l1, c1) = line_col(&bad, "no_such_key");
    let (l2, _) = line_col(&bad, "nowhere");
    g.rewrite(&bad);
    let r = g.post_reload(Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"], "invalid_config", "{v}");
    let errors: Vec<&str> = v["errors"]
        .as_array()
        .expect("errors array")
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    let key_pos = format!("gate.yaml:{l1}:{c1}:");
    assert!(
        errors
            .iter()
            .any(|e| e.contains(&key_pos) && e.contains("no_such_key")),
        "no `{key_pos}` error: {v}"
    );
    let up_pos = format!("gate.yaml:{l2}:");
    assert!(
        errors
            .iter()
            .any(|e| e.contains(&up_pos) && e.contains("nowhere")),
        "the unknown upstream is not reported at line {l2} in the same run: {v}"
    );
    assert_eq!(get(g.addr, "/hello").await.status, 200);
    assert_eq!(get(g.addr, "/blocked").await.status, 404);
    assert!(
        g.stderr().contains(&key_pos),
        "the refused reload is not logged with its position:\n{}",
        g.stderr()
    );
    let m = g.metrics().await;
    assert_eq!(
        must(&m, "asgi_gate_config_reloads_total", &[("result", "ok")]),
        2.0
    );
    assert_eq!(
        must(
            &m,
            "asgi_gate_config_reloads_total",
            &[("result", "failed")]
        ),
        1.0
    );
}

// ---------------------------------------------------------------- 3. under load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request() {
    let w = Worker::start().await;
    let x = format!(
        "{}rate_limits:\n  lim_a: {{ key: client_ip, rate: 1000/s }}\n\
         routes:\n  - path: /extra\n    upstream: app\n    rate_limit: lim_a\n  - path: /{{*rest}}\n    upstream: app\n",
        head(&w.sock)
    );
    let y = format!(
        "{}rate_limits:\n  lim_b: {{ key: client_ip, rate: 2000/s }}\n\
         compression: {{ algorithms: [gzip], min_size: 1 }}\n\
         routes:\n  - path: /{{*rest}}\n    upstream: app\n",
        head(&w.sock)
    );
    let g = OpsGate::start(&x, &[]).await;
    assert_eq!(get(g.addr, "/hello").await.status, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let addr = g.addr;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<H1> = None;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Tasks 0 and 1 keep their connection (a request on an old
                // connection takes the new config); 2 and 3 reconnect often.
                if conn.is_none() || (t >= 2 && n.is_multiple_of(5)) {
                    match H1::connect(addr).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            failures.lock().unwrap().push(format!("connect: {e}"));
                            conn = None;
                            continue;
                        }
                    }
                }
                let r = req(Method::GET, addr, "/hello")
                    .body(Full::default())
                    .unwrap();
                match conn.as_mut().unwrap().send(r).await {
                    Ok(r) if r.status == 200 && r.body.as_ref() == br#"{"message":"hello"}"# => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        failures.lock().unwrap().push(format!(
                            "status {} body {:?}",
                            r.status,
                            r.text()
                        ));
                    }
                    Err(e) => {
                        failures.lock().unwrap().push(format!("error: {e}"));
                        conn = None;
                    }
                }
                n += 1;
            }
        }));
    }

    // A request in flight across the reloads finishes on the config it
    // started with (X: no compression), although Y would gzip it.
    let slow =
        tokio::spawn(
            async move { get_h(addr, "/slow?ms=1500", &[("accept-encoding", "gzip")]).await },
        );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut marks = vec![done.load(Ordering::Relaxed)];
    for i in 0..5 {
        g.rewrite(if i % 2 == 0 { &y } else { &x });
        let r = g.post_reload(Some(ADMIN_TOKEN)).await;
        assert_eq!(r.status, 200, "reload {i}: {}", r.text());
        assert_eq!(r.json()["notes"], serde_json::json!([]));
        tokio::time::sleep(Duration::from_millis(450)).await;
        marks.push(done.load(Ordering::Relaxed));
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, 200, "{}", slow.text());
    assert_eq!(
        slow.header("content-encoding"),
        None,
        "an in-flight request switched config mid-way"
    );
    assert_eq!(slow.json()["slept_ms"], 1500);
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests across the reloads, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // Requests completed between every pair of reloads.
    for pair in marks.windows(2) {
        assert!(pair[1] > pair[0], "no request completed: {marks:?}");
    }
    let total = done.load(Ordering::Relaxed);
    eprintln!("{total} requests across 5 reloads; completed by mark: {marks:?}");
    assert!(total >= 50, "only {total} requests ran across the reloads");

    // Config Y (the last applied) compresses; X had /extra.
    let r = get_h(g.addr, "/hello", &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let m = g.metrics().await;
    assert_eq!(
        must(&m, "asgi_gate_config_reloads_total", &[("result", "ok")]),
        5.0
    );
    assert_eq!(
        value(
            &m,
            "asgi_gate_config_reloads_total",
            &[("result", "failed")]
        )
        .unwrap_or(0.0),
        0.0
    );
    assert!(
        must(
            &m,
            "asgi_gate_requests_total",
            &[("route", "/{*rest}"), ("method", "GET"), ("status", "200")]
        ) >= total as f64
    );
}

// ---------------------------------------------------------------- 4. buckets

#[tokio::test]
async fn rate_limit_buckets_survive_a_reload_unless_the_limit_changes() {
    let w = Worker::start().await;
    let cfg = |rate: &str, extra_route: bool| {
        format!(
            "{}rate_limits:\n  per_ip: {{ key: client_ip, rate: {rate} }}\n\
             routes:\n  - path: /hello\n    upstream: app\n    rate_limit: per_ip\n{}  - path: /{{*rest}}\n    upstream: app\n",
            head(&w.sock),
            if extra_route {
                "  - path: /other\n    upstream: app\n"
            } else {
                ""
            }
        )
    };
    let g = OpsGate::start(&cfg("3/m", false), &[]).await;
    for i in 0..3 {
        assert_eq!(get(g.addr, "/hello").await.status, 200, "request {i}");
    }

    // Something unrelated changes: the bucket is kept, the 4th is refused.
    g.rewrite(&cfg("3/m", true));
    let r = g.post_reload(Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(g.addr, "/other").await;
    assert_eq!(r.status, 404, "route /other applied (the app's 404)");
    assert_eq!(r.json()["detail"], "Not Found");
    get(g.addr, "/hello")
        .await
        .assert_rejection(429, "rate_limited");

    // The limit's rate changes: a fresh bucket.
    g.rewrite(&cfg("5/m", true));
    let r = g.post_reload(Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = get(g.addr, "/hello").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        get(g.addr, "/hello")
            .await
            .header("ratelimit-policy")
            .map(str::to_string),
        None,
        "headers: false → no RateLimit headers on allowed responses"
    );
    let m = g.metrics().await;
    assert_eq!(
        must(
            &m,
            "asgi_gate_rejections_total",
            &[("reason", "rate_limit")]
        ),
        1.0
    );
}

// ---------------------------------------------------------------- 5. TLS

/// Accepts any server certificate (the test compares it with the file
/// itself) but checks handshake signatures properly.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

struct TlsConn {
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    alpn: Option<Vec<u8>>,
    cert: Vec<u8>,
}

async fn tls_connect(addr: SocketAddr, alpn: &[&[u8]]) -> TlsConn {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the gate");
    let (_, conn) = stream.get_ref();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let cert = conn.peer_certificates().expect("a server certificate")[0]
        .as_ref()
        .to_vec();
    TlsConn { stream, alpn, cert }
}

/// GET `path` over TLS, h2 if ALPN chose it, else HTTP/1.1.
async fn tls_get(c: TlsConn, path: &str) -> Resp {
    let addr = c.stream.get_ref().0.peer_addr().unwrap();
    let io = TokioIo::new(c.stream);
    let resp = if c.alpn.as_deref() == Some(b"h2") {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let r = Request::get(format!("https://localhost:{}{path}", addr.port()))
            .body(Full::<Bytes>::default())
            .unwrap();
        sender.send_request(r).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let r = req(Method::GET, addr, path)
            .body(Full::<Bytes>::default())
            .unwrap();
        sender.send_request(r).await.unwrap()
    };
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// A fresh self-signed certificate and key (openssl CLI) at `cert`/`key`.
fn self_signed(dir: &Path, cn: &str, cert: &Path, key: &Path) {
    let (c, k) = (dir.join("new.crt"), dir.join("new.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "1", "-subj"])
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(&k)
        .arg("-out")
        .arg(&c)
        .output()
        .expect("the openssl CLI (Debian package `openssl`) makes the test certificates");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&k, key).unwrap();
    std::fs::rename(&c, cert).unwrap();
}

fn cert_der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path)
        .expect("PEM certificate")
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn tls_negotiates_h2_by_alpn_falls_back_to_h1_and_reloads_its_certificate() {
    let w = Worker::start().await;
    let dir = tempdir();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    self_signed(dir.path(), "gate-one", &cert, &key);
    let first = cert_der(&cert);
    let yaml = format!(
        "listen:\n  - address: 127.0.0.1:0\n  - address: 127.0.0.1:0\n    tls: {{ cert: \"{}\", key: \"{}\" }}\n\
         admin:\n  address: 127.0.0.1:0\n  token_env: {TOKEN_ENV}\n\
         upstreams:\n  app:\n    sockets: [\"{}\"]\n\
         routes:\n  - path: /{{*rest}}\n    upstream: app\n",
        cert.display(),
        key.display(),
        w.sock.display()
    );
    let mut g = OpsGate::start(&yaml, &[]).await;
    let tls = g.tls_addr.expect("a `listening on ... (tls)` line");
    assert_ne!(tls, g.addr);

    // ALPN h2 offered first: h2.
    let c = tls_connect(tls, &[b"h2", b"http/1.1"]).await;
    assert_eq!(c.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(c.cert, first, "the configured certificate");
    let r = tls_get(c, "/echo").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    let echo = r.json();
    assert_eq!(echoed(&echo, "x-forwarded-proto"), vec!["https"], "{echo}");

    // Only http/1.1 offered, or no ALPN at all: HTTP/1.1.
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let c = tls_connect(tls, alpn).await;
        assert_eq!(
            c.alpn.as_deref(),
            alpn.first().copied(),
            "ALPN with {alpn:?}"
        );
        let r = tls_get(c, "/echo").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.version, http::Version::HTTP_11);
        assert_eq!(echoed(&r.json(), "x-forwarded-proto"), vec!["https"]);
    }
    // The plain listener still says http.
    assert_eq!(
        echoed(&get(g.addr, "/echo").await.json(), "x-forwarded-proto"),
        vec!["http"]
    );

    // New files: not used until a reload, then every new handshake has them.
    self_signed(dir.path(), "gate-two", &cert, &key);
    let second = cert_der(&cert);
    assert_ne!(first, second);
    assert_eq!(tls_connect(tls, &[b"h2"]).await.cert, first);
    g.sighup_and_wait("ok").await;
    let renewed = eventually(Duration::from_secs(5), || async {
        tls_connect(tls, &[b"h2"]).await.cert == second
    })
    .await;
    assert!(renewed, "the new certificate is not served after SIGHUP");
    let r = tls_get(tls_connect(tls, &[b"h2", b"http/1.1"]).await, "/hello").await;
    assert_eq!((r.status.as_u16(), r.version), (200, http::Version::HTTP_2));

    // A broken certificate file: reported, and the previous one keeps serving.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let r = g.post_reload(Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(
        v["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("previous certificate")),
        "no note about the unreadable certificate: {v}"
    );
    assert_eq!(tls_connect(tls, &[b"h2"]).await.cert, second);
    g.assert_alive();
}

// ---------------------------------------------------------------- 6. metrics

#[tokio::test]
async fn metrics_count_exactly_the_requests_made() {
    let w = Worker::start().await;
    let yaml = format!(
        "{}rate_limits:\n  one: {{ key: client_ip, rate: 1/m }}\n\
         routes:\n  - path: /hello\n    upstream: app\n\
         \x20 - path: /echo\n    upstream: app\n    rate_limit: one\n\
         \x20 - path: /ws/{{*rest}}\n    upstream: app\n",
        head(&w.sock)
    );
    let g = OpsGate::start(&yaml, &["--no-access-log"]).await;

    let mut upstream_bytes = 0;
    let mut client_bytes = 0;
    for _ in 0..3 {
        let r = get(g.addr, "/hello").await;
        assert_eq!(r.status, 200);
        upstream_bytes += r.body.len();
        client_bytes += r.body.len();
    }
    for path in ["/nope", "/hello/extra"] {
        let r = get(g.addr, path).await;
        r.assert_rejection(404, "not_found");
        client_bytes += r.body.len();
    }
    let r = get(g.addr, "/echo").await;
    assert_eq!(r.status, 200);
    upstream_bytes += r.body.len();
    client_bytes += r.body.len();
    let r = get(g.addr, "/echo").await;
    r.assert_rejection(429, "rate_limited");
    client_bytes += r.body.len();

    let m = g.metrics().await;
    let req_total = |route: &str, status: &str| {
        value(
            &m,
            "asgi_gate_requests_total",
            &[("route", route), ("method", "GET"), ("status", status)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(req_total("/hello", "200"), 3.0);
    assert_eq!(req_total("", "404"), 2.0, "unmatched requests, route \"\"");
    assert_eq!(req_total("/echo", "200"), 1.0);
    assert_eq!(req_total("/echo", "429"), 1.0);
    let all: f64 = m
        .iter()
        .filter(|s| s.name == "asgi_gate_requests_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(all, 7.0, "no other request counted");
    assert!(
        m.iter()
            .filter(|s| s.name == "asgi_gate_requests_total")
            .all(|s| !s.labels["route"].contains("nope") && !s.labels["route"].contains("extra")),
        "a raw URL became a route label"
    );
    assert_eq!(
        must(&m, "asgi_gate_rejections_total", &[("reason", "no_route")]),
        2.0
    );
    assert_eq!(
        must(
            &m,
            "asgi_gate_rejections_total",
            &[("reason", "rate_limit")]
        ),
        1.0
    );
    let rejections: f64 = m
        .iter()
        .filter(|s| s.name == "asgi_gate_rejections_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(rejections, 3.0);

    // Duration histogram: one observation per request of the route.
    let hist = |suffix: &str, extra: &[(&str, &str)]| {
        let mut labels = vec![("route", "/hello")];
        labels.extend_from_slice(extra);
        must(
            &m,
            &format!("asgi_gate_request_duration_seconds{suffix}"),
            &labels,
        )
    };
    assert_eq!(hist("_count", &[]), 3.0);
    assert_eq!(hist("_bucket", &[("le", "+Inf")]), 3.0);
    let sum = hist("_sum", &[]);
    assert!(sum > 0.0 && sum < 30.0, "duration sum {sum}");
    assert_eq!(
        must(
            &m,
            "asgi_gate_request_duration_seconds_count",
            &[("route", "/echo")]
        ),
        2.0
    );

    // Upstream pool gauges for `app`: nothing busy or waiting now.
    assert_eq!(
        must(
            &m,
            "asgi_gate_upstream_connections",
            &[("upstream", "app"), ("state", "busy")]
        ),
        0.0
    );
    assert_eq!(
        must(
            &m,
            "asgi_gate_upstream_connections",
            &[("upstream", "app"), ("state", "waiting")]
        ),
        0.0
    );
    let idle = must(
        &m,
        "asgi_gate_upstream_connections",
        &[("upstream", "app"), ("state", "idle")],
    );
    assert!(
        idle >= 1.0,
        "no idle pooled connection after 4 proxied requests"
    );
    assert_eq!(
        value(
            &m,
            "asgi_gate_upstream_connect_errors_total",
            &[("upstream", "app")]
        )
        .unwrap_or(0.0),
        0.0
    );
    assert_eq!(
        must(&m, "asgi_gate_rate_limit_keys", &[("limit", "one")]),
        1.0
    );
    assert_eq!(must(&m, "asgi_gate_revocation_entries", &[]), 0.0);
    assert_eq!(
        must(
            &m,
            "asgi_gate_response_bytes_total",
            &[("stage", "upstream")]
        ),
        upstream_bytes as f64,
        "bytes from the worker (no compression configured)"
    );
    assert_eq!(
        must(&m, "asgi_gate_response_bytes_total", &[("stage", "client")]),
        client_bytes as f64,
        "bytes to the client, rejection bodies included"
    );
    assert_eq!(must(&m, "asgi_gate_websocket_connections_open", &[]), 0.0);

    // A WebSocket: counted open while it lives, back to 0 once closed.
    let tcp = TcpStream::connect(g.addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{}/ws/echo", g.addr), tcp)
        .await
        .expect("websocket handshake");
    assert_eq!(resp.status(), 101);
    ws.send(Message::Text("ping".into())).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("echo")
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::Text("ping".into()));
    let open = |g: &OpsGate| {
        let admin = g.admin;
        async move {
            let r = get(admin, "/metrics").await;
            must(
                &parse_metrics(&r.text()),
                "asgi_gate_websocket_connections_open",
                &[],
            )
        }
    };
    assert_eq!(open(&g).await, 1.0);
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    drop(ws);
    let closed = eventually(Duration::from_secs(5), || async { open(&g).await == 0.0 }).await;
    assert!(closed, "websocket gauge is {} after close", open(&g).await);
    let m = g.metrics().await;
    assert_eq!(
        value(
            &m,
            "asgi_gate_requests_total",
            &[
                ("route", "/ws/{*rest}"),
                ("method", "GET"),
                ("status", "101")
            ]
        ),
        Some(1.0)
    );
}

/// The open-WebSocket gauge is a process-wide figure: a config reload must
/// not make the sessions opened before it disappear from /metrics.
#[tokio::test]
async fn websocket_gauge_survives_a_reload() {
    let w = Worker::start().await;
    let yaml = format!(
        "{}routes:\n  - path: /{{*rest}}\n    upstream: app\n",
        head(&w.sock)
    );
    let g = OpsGate::start(&yaml, &["--no-access-log"]).await;
    let tcp = TcpStream::connect(g.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws/echo", g.addr), tcp)
        .await
        .expect("websocket handshake");
    ws.send(Message::Text("a".into())).await.unwrap();
    assert!(ws.next().await.unwrap().is_ok());
    let gauge = |m: &[Sample]| must(m, "asgi_gate_websocket_connections_open", &[]);
    assert_eq!(gauge(&g.metrics().await), 1.0);

    let r = g.post_reload(Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The session still relays...
    ws.send(Message::Text("b".into())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Text("b".into()));
    // ...so it is still open.
    assert_eq!(
        gauge(&g.metrics().await),
        1.0,
        "asgi_gate_websocket_connections_open forgot a live session after a reload"
    );
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    let closed = eventually(Duration::from_secs(5), || async {
        gauge(&g.metrics().await) == 0.0
    })
    .await;
    assert!(closed, "gauge not back to 0 after close");
}

// ---------------------------------------------------------------- 7. access log

const SECRET_BEARER: &str = "eyJSECRETBEARER.c2VjcmV0.Zm9vYmFy";
const SECRET_COOKIE: &str = "SECRETCOOKIE4242";
const SECRET_QUERY: &str = "SECRETQUERY9191";

fn log_config(sock: &Path) -> String {
    format!(
        "{}routes:\n  - path: /echo/{{*rest}}\n    upstream: app\n  - path: /hello\n    upstream: app\n",
        head(sock)
    )
}

/// Waits until stdout has a line containing `needle`, and returns it.
async fn log_line(g: &OpsGate, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(l) = g.stdout().lines().find(|l| l.contains(needle)) {
            return l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no access-log line with {needle:?} in 5s; stdout:\n{}\nstderr:\n{}",
            g.stdout(),
            g.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn access_log_json_lines_have_the_fields_and_no_secrets() {
    let w = Worker::start().await;
    // Default format (stdout is a pipe: JSON), operational logs at debug so
    // that the secrets grep covers them too.
    let g = OpsGate::start_env(&log_config(&w.sock), &[], &[("RUST_LOG", "debug")]).await;
    let bearer = format!("Bearer {SECRET_BEARER}");
    let cookie = format!("session={SECRET_COOKIE}; theme=dark");
    let r = get_h(
        g.addr,
        &format!("/echo/items?token={SECRET_QUERY}&page=2"),
        &[
            ("authorization", &bearer),
            ("cookie", &cookie),
            ("x-request-id", "ops-log-1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("ops-log-1"));
    assert_eq!(
        r.json()["query"],
        format!("token={SECRET_QUERY}&page=2"),
        "the worker still gets the query"
    );
    let body_len = r.body.len();
    let miss = get_h(
        g.addr,
        &format!("/missing?token={SECRET_QUERY}"),
        &[("x-request-id", "ops-log-2"), ("authorization", &bearer)],
    )
    .await;
    miss.assert_rejection(404, "not_found");

    let line = log_line(&g, "ops-log-1").await;
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["request_id"], "ops-log-1", "{v}");
    assert_eq!(v["client_ip"], "127.0.0.1", "{v}");
    assert_eq!(v["method"], "GET", "{v}");
    assert_eq!(v["route"], "/echo/{*rest}", "the configured pattern: {v}");
    assert_eq!(v["path"], "/echo/items", "path without the query: {v}");
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["bytes"], body_len as u64, "{v}");
    assert!(v["duration_us"].as_u64().is_some_and(|d| d > 0), "{v}");
    assert_eq!(v["upstream"], "app", "{v}");
    assert_eq!(v["socket"], w.sock.display().to_string(), "{v}");
    assert!(v["reason"].is_null(), "{v}");
    let time = v["time"].as_str().expect("time");
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "RFC 3339 UTC time: {time}"
    );

    let line = log_line(&g, "ops-log-2").await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 404, "{v}");
    assert_eq!(v["path"], "/missing", "{v}");
    assert_eq!(v["route"], "", "{v}");
    assert_eq!(v["reason"], "no_route", "{v}");
    assert_eq!(v["bytes"], miss.body.len() as u64, "{v}");
    assert_eq!(v["upstream"], "", "{v}");
    assert!(v["socket"].is_null(), "{v}");

    // Every stdout line is one JSON object; nothing secret anywhere.
    let out = g.stdout();
    for l in out.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v.is_object()),
            "stdout line is not a JSON object: {l:?}"
        );
    }
    assert_eq!(out.lines().count(), 2, "one line per request:\n{out}");
    let everything = format!("{out}{}", g.stderr());
    for secret in [SECRET_BEARER, "SECRETBEARER", SECRET_COOKIE, SECRET_QUERY] {
        assert!(
            !everything.contains(secret),
            "{secret:?} appears in the gate's output:\n{everything}"
        );
    }
    assert!(
        !everything.to_ascii_lowercase().contains("bearer "),
        "an Authorization value appears in the gate's output:\n{everything}"
    );
}

#[tokio::test]
async fn access_log_text_format_and_off_switch() {
    let w = Worker::start().await;
    let text = OpsGate::start(&log_config(&w.sock), &["--log-format", "text"]).await;
    let off = OpsGate::start(&log_config(&w.sock), &["--no-access-log"]).await;

    let r = get_h(
        text.addr,
        &format!("/hello?token={SECRET_QUERY}"),
        &[("x-request-id", "ops-text-1"), ("cookie", SECRET_COOKIE)],
    )
    .await;
    assert_eq!(r.status, 200);
    let line = log_line(&text, "ops-text-1").await;
    assert!(!line.trim_start().starts_with('{'), "not text: {line}");
    for part in [
        "127.0.0.1",
        "\"GET /hello\"",
        " 200 ",
        &format!(" {} ", r.body.len()),
        "id=ops-text-1",
        "route=/hello",
        "upstream=app",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
    let everything = format!("{}{}", text.stdout(), text.stderr());
    assert!(!everything.contains(SECRET_QUERY) && !everything.contains(SECRET_COOKIE));

    for i in 0..3 {
        let id = format!("ops-off-{i}");
        let r = get_h(off.addr, "/hello", &[("x-request-id", &id)]).await;
        assert_eq!(r.status, 200);
    }
    get(off.addr, "/missing")
        .await
        .assert_rejection(404, "not_found");
    // Lines are written every 100 ms: wait well past that.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(off.stdout(), "", "--no-access-log wrote to stdout");
    assert!(!off.stderr().contains("ops-off-"), "{}", off.stderr());
    // Metrics are still counted.
    let m = off.metrics().await;
    assert_eq!(
        must(
            &m,
            "asgi_gate_requests_total",
            &[("route", "/hello"), ("method", "GET"), ("status", "200")]
        ),
        3.0
    );
}
