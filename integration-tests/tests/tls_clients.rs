//! The gate as a TLS client: `jwks_url: https://...` (a hosted identity
//! provider) and `revocation.redis: rediss://...` (a managed Redis), against
//! a local https JWKS server and a TLS redis-server, both with certificates
//! from a test CA the gate is given through `SSL_CERT_FILE`. The server's
//! certificate is always verified: with another CA the gate refuses.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Method;
use http_body_util::Full;

/// `openssl req` with `args`, checked.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI (Debian package `openssl`) makes the test certificates");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>-ca.crt`) and a server certificate it signed for
/// localhost and 127.0.0.1 (`<name>.crt`, `<name>.key`).
fn test_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca = format!("{name}-ca");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.crt"),
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
    (
        dir.join(format!("{ca}.crt")),
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    )
}

fn python() -> PathBuf {
    venv().join("bin").join("python")
}

/// Runs jwt_tool.py subcommands (tests/support) in one process.
fn jwt_tool(calls: &[Vec<String>]) -> Vec<String> {
    let tool = workspace_root().join("integration-tests/tests/support/jwt_tool.py");
    let mut child = Command::new(python())
        .arg(tool)
        .arg("batch")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn jwt_tool.py");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(calls).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// An https server for one directory (Python's http.server in an
/// ssl-wrapped socket) on a free port; killed on drop.
struct HttpsServer {
    child: Child,
    port: u16,
}

const HTTPS_SERVER: &str = "\
import http.server, ssl, sys, functools
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
srv = http.server.HTTPServer(('127.0.0.1', 0), handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
";

impl HttpsServer {
    fn start(dir: &Path, cert: &Path, key: &Path) -> HttpsServer {
        let mut child = Command::new(python())
            .args(["-u", "-c", HTTPS_SERVER])
            .arg(dir)
            .arg(cert)
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the https server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the https server's port");
        HttpsServer { child, port }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn jwks_yaml(sock: &Path, port: u16) -> String {
    format!(
        "listen:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n\
         upstreams:\n  app:\n    sockets: [\"{}\"]\n\
         auth:\n  idp:\n    algorithms: [ES256]\n    jwks_url: \"https://localhost:{port}/jwks.json\"\n    \
         forward_claims: {{ sub: X-Auth-Subject }}\n\
         routes:\n  - path: /api/{{*rest}}\n    upstream: app\n    auth: idp\n  - path: /{{*rest}}\n    upstream: app\n",
        sock.display()
    )
}

async fn whoami(addr: std::net::SocketAddr, token: Option<&str>) -> Resp {
    let mut b = req(Method::GET, addr, "/api/whoami");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    send_h1(addr, b.body(Full::default()).unwrap())
        .await
        .unwrap()
}

fn exp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600
}

#[tokio::test]
async fn an_https_jwks_url_is_fetched_with_the_certificate_verified() {
    let dir = tempdir();
    let d = dir.path();
    let (ca, cert, key) = test_ca(d, "idp");
    let (other_ca, _, _) = test_ca(d, "other");
    let web = d.join("web");
    std::fs::create_dir(&web).unwrap();
    let token = jwt_tool(&[
        args(&["genkeys", "ec", "--out", d.to_str().unwrap(), "--kid", "k1"]),
        args(&[
            "jwks",
            "--out",
            web.join("jwks.json").to_str().unwrap(),
            d.join("k1.jwk.json").to_str().unwrap(),
        ]),
        args(&[
            "sign",
            "--alg",
            "ES256",
            "--key",
            d.join("k1.key.pem").to_str().unwrap(),
            "--kid",
            "k1",
            "--claims",
            &serde_json::json!({"sub": "alice", "exp": exp()}).to_string(),
        ]),
    ])
    .remove(2);
    let server = HttpsServer::start(&web, &cert, &key);
    let w = Worker::start().await;
    let yaml = jwks_yaml(&w.sock, server.port);

    let ca_env = ca.to_str().unwrap();
    let g = Gate::start_env(&yaml, &[("SSL_CERT_FILE", ca_env)]).await;
    assert_eq!(whoami(g.addr, None).await.status, 401);
    let me = whoami(g.addr, Some(&token)).await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["sub"], "alice");

    // Another CA: the IdP's certificate does not verify, the gate refuses to start.
    let other = other_ca.to_str().unwrap();
    let f = run_gate_to_exit(&[], &yaml, &[("SSL_CERT_FILE", other)]).await;
    assert_ne!(f.code, Some(0));
    assert!(
        f.stderr.contains("cannot fetch jwks_url") && f.stderr.contains("certificate"),
        "{}",
        f.stderr
    );
}

/// redis-server with TLS only, on a free port; killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start() -> TlsRedis {
        let dir = tempdir();
        let (ca, cert, key) = test_ca(dir.path(), "redis");
        let port = unused_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        let r = TlsRedis {
            child,
            port,
            ca,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.cli(&["PING"]) != "PONG" {
            assert!(
                Instant::now() < deadline,
                "the TLS redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["--tls", "--cacert"])
            .arg(&self.ca)
            .args(["-h", "localhost", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SECRET: &str = "tls-clients-test-secret-that-is-at-least-32-bytes";
const ADMIN: &str = "tls-clients-admin-token";

fn redis_yaml(sock: &Path, url: &str) -> String {
    format!(
        "listen:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n  token_env: ADMIN_TOKEN\n\
         upstreams:\n  app:\n    sockets: [\"{}\"]\n\
         auth:\n  p:\n    algorithms: [HS256]\n    secret_env: JWT_SECRET\n    forward_claims: {{ sub: X-Auth-Subject }}\n\
         revocation:\n  redis: {url}\n\
         routes:\n  - path: /api/{{*rest}}\n    upstream: app\n    auth: p\n  - path: /{{*rest}}\n    upstream: app\n",
        sock.display()
    )
}

#[tokio::test]
async fn revocations_are_shared_through_a_rediss_url() {
    let redis = TlsRedis::start();
    let w = Worker::start().await;
    let yaml = redis_yaml(&w.sock, &format!("rediss://localhost:{}/0", redis.port));
    let ca = redis.ca.to_str().unwrap().to_string();
    let env = [
        ("SSL_CERT_FILE", ca.as_str()),
        ("JWT_SECRET", SECRET),
        ("ADMIN_TOKEN", ADMIN),
    ];
    let a = Gate::start_env(&yaml, &env).await;
    let b = Gate::start_env(&yaml, &env).await;
    let token = jwt_tool(&[args(&[
        "sign",
        "--alg",
        "HS256",
        "--secret",
        SECRET,
        "--claims",
        &serde_json::json!({"sub": "alice", "jti": "tls-1", "exp": exp()}).to_string(),
    ])])
    .remove(0);
    assert_eq!(whoami(b.addr, Some(&token)).await.status, 200);

    let body = serde_json::json!({"jti": "tls-1", "exp": exp()}).to_string();
    let r = req(Method::POST, a.admin, "/revocations")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let r = send_h1(a.admin, r).await.unwrap();
    assert_eq!(
        r.status,
        201,
        "stored in Redis over TLS: {}\n{}",
        r.text(),
        a.log()
    );
    let (bb, t) = (&b, token.as_str());
    let refused = eventually(Duration::from_secs(3), || async move {
        whoami(bb.addr, Some(t)).await.status == 401
    })
    .await;
    assert!(refused, "gate B still accepts the token\n{}", b.log());
    let keys = redis.cli(&["--scan", "--pattern", "asgi-gate:rev:*"]);
    assert_eq!(keys.lines().count(), 1, "{keys}");

    // Another CA: the link never comes up, so a revocation is only pending.
    let dir = tempdir();
    let (other, _, _) = test_ca(dir.path(), "other");
    let other = other.to_str().unwrap().to_string();
    let env = [
        ("SSL_CERT_FILE", other.as_str()),
        ("JWT_SECRET", SECRET),
        ("ADMIN_TOKEN", ADMIN),
    ];
    let c = Gate::start_env(&yaml, &env).await;
    let body = serde_json::json!({"jti": "tls-2", "exp": exp()}).to_string();
    let r = req(Method::POST, c.admin, "/revocations")
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let r = send_h1(c.admin, r).await.unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        redis
            .cli(&["--scan", "--pattern", "asgi-gate:rev:*"])
            .lines()
            .count(),
        1
    );
}
