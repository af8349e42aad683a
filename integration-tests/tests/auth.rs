//! JWT auth and revocation end to end: tokens minted by PyJWT and keys made
//! with `cryptography` at test time (tests/support/jwt_tool.py), the real
//! gate binary and real uvicorn workers. Every rejection is checked for its
//! exact status, body code and RFC 6750 challenge, and for never echoing the
//! token.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::Method;
use http_body_util::Full;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::client_async;
use tokio_tungstenite::tungstenite::{self, Message};

const SECRET: &str = "hs256-test-secret-that-is-at-least-32-bytes-long";
const ADMIN_TOKEN: &str = "admin-token-for-the-auth-tests";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "my-api";
/// The `hs` policy's leeway: the admin API adds the largest leeway of all
/// policies to a bare `{jti, exp}`.
const HS_LEEWAY: u64 = 5;

// ---------------------------------------------------------------- tokens and keys

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn tool_path() -> PathBuf {
    workspace_root()
        .join("integration-tests")
        .join("tests")
        .join("support")
        .join("jwt_tool.py")
}

fn python() -> PathBuf {
    venv().join("bin").join("python")
}

/// Runs jwt_tool.py subcommands in one Python process, in order; returns
/// what each printed.
fn tool(calls: &[Vec<String>]) -> Vec<String> {
    let mut child = Command::new(python())
        .arg(tool_path())
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
        "jwt_tool.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.len(), calls.len());
    v
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn genkeys(kind: &str, dir: &Path, kid: &str) -> Vec<String> {
    argv(&[
        "genkeys",
        kind,
        "--out",
        dir.to_str().unwrap(),
        "--kid",
        kid,
    ])
}

fn jwks(out: &Path, jwk_files: &[PathBuf]) -> Vec<String> {
    let mut v = argv(&["jwks", "--out", out.to_str().unwrap()]);
    v.extend(jwk_files.iter().map(|p| p.to_str().unwrap().to_string()));
    v
}

/// HS256 with the shared secret.
fn hs(claims: &Value) -> Vec<String> {
    argv(&[
        "sign",
        "--alg",
        "HS256",
        "--secret",
        SECRET,
        "--claims",
        &claims.to_string(),
    ])
}

/// Signed with the private key of `kid` in `dir`; `header_kid` goes in the header.
fn signed(
    alg: &str,
    dir: &Path,
    kid: &str,
    header_kid: Option<&str>,
    claims: &Value,
) -> Vec<String> {
    let key = dir.join(format!("{kid}.key.pem"));
    let mut v = argv(&[
        "sign",
        "--alg",
        alg,
        "--key",
        key.to_str().unwrap(),
        "--claims",
        &claims.to_string(),
    ]);
    if let Some(k) = header_kid {
        v.extend(argv(&["--kid", k]));
    }
    v
}

/// Valid claims for the `hs` policy.
fn hs_claims(sub: &str, extra: Value) -> Value {
    let mut c = json!({
        "sub": sub,
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now() + 600,
    });
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

// ---------------------------------------------------------------- HTTP helpers

async fn call(addr: SocketAddr, path: &str, token: Option<&str>, headers: &[(&str, &str)]) -> Resp {
    let mut b = req(Method::GET, addr, path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send_h1(addr, b.body(Full::<Bytes>::default()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// A request to the admin listener; `token` is the admin bearer token.
async fn admin(
    g: &Gate,
    method: Method,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> Resp {
    let mut b = req(method.clone(), g.admin, path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    let body = Full::new(Bytes::from(body.unwrap_or("").to_string()));
    send_h1(g.admin, b.body(body).unwrap())
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on admin: {e}"))
}

async fn revoke(g: &Gate, body: &Value) -> Resp {
    admin(
        g,
        Method::POST,
        "/revocations",
        Some(&body.to_string()),
        Some(ADMIN_TOKEN),
    )
    .await
}

const CHALLENGE: &str = "Bearer realm=\"asgi-gate\"";

/// 401 `invalid_token` with the exact challenge, and the token nowhere in
/// the answer.
#[track_caller]
fn assert_invalid(r: &Resp, description: &str, token: &str) {
    r.assert_rejection(401, "invalid_token");
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            format!("{CHALLENGE}, error=\"invalid_token\", error_description=\"{description}\"")
                .as_str()
        ),
        "body: {}",
        r.text()
    );
    assert_eq!(r.json()["detail"], description);
    assert_no_token(r, token);
}

#[track_caller]
fn assert_no_token(r: &Resp, token: &str) {
    // Every segment longer than a few characters; a whole token contains them.
    for seg in token.split('.').filter(|s| s.len() >= 8) {
        let head: String = seg.chars().take(16).collect();
        assert!(
            !r.text().contains(&head),
            "token echoed in body: {}",
            r.text()
        );
        for (name, value) in &r.headers {
            let value = value.to_str().unwrap_or("");
            assert!(!value.contains(&head), "token echoed in {name}: {value}");
        }
    }
}

/// The rejection shape on the admin listener (which sets no X-Request-Id).
#[track_caller]
fn assert_admin_rejection(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["error"], code, "body: {v}");
    assert!(
        v["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "body: {v}"
    );
}

/// 401 `unauthorized` (no token): the challenge has no error code.
#[track_caller]
fn assert_missing(r: &Resp) {
    r.assert_rejection(401, "unauthorized");
    assert_eq!(r.header("www-authenticate"), Some(CHALLENGE));
}

// ---------------------------------------------------------------- the usual gate

/// A worker and a gate with four policies (HS256 secret, RS256 PEM, ES256 +
/// EdDSA JWKS file) and keys made for this test.
struct Fixture {
    w: Worker,
    g: Gate,
    keys: tempfile::TempDir,
}

fn fixture_yaml(sock: &Path, keys: &Path, admin_token: bool) -> String {
    let token_env = if admin_token {
        "  token_env: GATE_ADMIN_TOKEN\n"
    } else {
        ""
    };
    format!(
        r#"listen:
  - address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
{token_env}upstreams:
  app:
    sockets: ["{sock}"]
auth:
  hs:
    algorithms: [HS256]
    secret_env: JWT_SECRET
    issuer: {ISSUER}
    audience: {AUDIENCE}
    leeway: {HS_LEEWAY}s
    forward_claims: {{ sub: X-Auth-Subject, scope: X-Auth-Scope, tenant: X-Auth-Tenant, roles: X-Auth-Roles }}
  rs:
    algorithms: [RS256]
    public_key_file: "{keys}/r1.pub.pem"
    leeway: 0s
    forward_claims: {{ sub: X-Auth-Subject }}
    strip_authorization: true
  files:
    algorithms: [ES256, EdDSA]
    jwks_file: "{keys}/jwks.json"
    leeway: 0s
    forward_claims: {{ sub: X-Auth-Subject, scope: X-Auth-Scope }}
rate_limits:
  per_user: {{ key: "claim:sub", rate: 2/m }}
routes:
  - path: /echo/hs
    upstream: app
    auth: hs
  - path: /echo/scoped
    upstream: app
    auth: hs
    scopes: [api]
  - path: /echo/rs
    upstream: app
    auth: rs
  - path: /echo/jwks
    upstream: app
    auth: files
  - path: /echo/limited
    upstream: app
    auth: hs
    rate_limit: per_user
  - path: /ws/{{*rest}}
    upstream: app
    auth: hs
  - path: /{{*rest}}
    upstream: app
"#,
        sock = sock.display(),
        keys = keys.display(),
    )
}

const GATE_ENV: &[(&str, &str)] = &[("JWT_SECRET", SECRET), ("GATE_ADMIN_TOKEN", ADMIN_TOKEN)];

impl Fixture {
    async fn start() -> Fixture {
        let keys = tempdir();
        let d = keys.path();
        tool(&[
            genkeys("rsa", d, "r1"),
            genkeys("ec", d, "e1"),
            genkeys("ed25519", d, "d1"),
            jwks(
                &d.join("jwks.json"),
                &[d.join("e1.jwk.json"), d.join("d1.jwk.json")],
            ),
        ]);
        let w = Worker::start().await;
        let g = Gate::start_env(&fixture_yaml(&w.sock, d, true), GATE_ENV).await;
        w.direct(Method::POST, "/count/reset").await;
        Fixture { w, g, keys }
    }

    fn dir(&self) -> &Path {
        self.keys.path()
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        call(self.g.addr, path, token, &[]).await
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn hs256_rs256_es256_and_eddsa_verify_and_forward_claims() {
    let fx = Fixture::start().await;
    let d = fx.dir();
    let exp = now() + 600;
    let t = tool(&[
        hs(&hs_claims(
            "alice",
            json!({"scope": "read api", "tenant": 42, "roles": ["admin", "ops"]}),
        )),
        signed(
            "RS256",
            d,
            "r1",
            None,
            &json!({"sub": "rsa-user", "exp": exp}),
        ),
        signed(
            "ES256",
            d,
            "e1",
            Some("e1"),
            &json!({"sub": "ec-user", "scope": "s1", "exp": exp}),
        ),
        signed(
            "EdDSA",
            d,
            "d1",
            Some("d1"),
            &json!({"sub": "ed-user", "exp": exp}),
        ),
        // Right key, but the header names the Ed25519 key.
        signed(
            "ES256",
            d,
            "e1",
            Some("d1"),
            &json!({"sub": "x", "exp": exp}),
        ),
        // An RSA token on the EC/Ed policy.
        signed(
            "RS256",
            d,
            "r1",
            Some("e1"),
            &json!({"sub": "x", "exp": exp}),
        ),
    ]);

    // HS256: claims as headers (number as text, array space-joined), and the
    // Authorization header kept (strip_authorization is false).
    let r = fx.get("/echo/hs", Some(&t[0])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.json();
    assert_eq!(echoed(&e, "x-auth-subject"), ["alice"]);
    assert_eq!(echoed(&e, "x-auth-scope"), ["read api"]);
    assert_eq!(echoed(&e, "x-auth-tenant"), ["42"]);
    assert_eq!(echoed(&e, "x-auth-roles"), ["admin ops"]);
    assert_eq!(echoed(&e, "authorization"), [format!("Bearer {}", t[0])]);

    // RS256 via public_key_file, with strip_authorization: true.
    let r = fx.get("/echo/rs", Some(&t[1])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.json();
    assert_eq!(echoed(&e, "x-auth-subject"), ["rsa-user"]);
    assert!(
        echoed(&e, "authorization").is_empty(),
        "strip_authorization: the worker saw {:?}",
        echoed(&e, "authorization")
    );
    // Claims the policy does not forward stay out.
    assert!(echoed(&e, "x-auth-scope").is_empty());

    // ES256 and EdDSA from a JWKS file, chosen by kid.
    let r = fx.get("/echo/jwks", Some(&t[2])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(echoed(&r.json(), "x-auth-subject"), ["ec-user"]);
    assert_eq!(echoed(&r.json(), "x-auth-scope"), ["s1"]);
    let r = fx.get("/echo/jwks", Some(&t[3])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(echoed(&r.json(), "x-auth-subject"), ["ed-user"]);
    assert_eq!(fx.w.hits().await, 4);

    // The kid names a key of another family: refused before any verification.
    assert_invalid(
        &fx.get("/echo/jwks", Some(&t[4])).await,
        "algorithm not allowed",
        &t[4],
    );
    assert_invalid(
        &fx.get("/echo/jwks", Some(&t[5])).await,
        "algorithm not allowed",
        &t[5],
    );
    // A token for one policy does not open another policy's route.
    assert_invalid(
        &fx.get("/echo/rs", Some(&t[0])).await,
        "algorithm not allowed",
        &t[0],
    );
    assert_eq!(
        fx.w.hits().await,
        4,
        "a rejected request reached the worker"
    );
}

#[tokio::test]
async fn client_sent_claim_headers_never_reach_the_worker() {
    let fx = Fixture::start().await;
    let t = tool(&[hs(&hs_claims("alice", json!({})))]);
    let forged = [
        ("x-auth-subject", "mallory"),
        ("X-Auth-Scope", "admin api"),
        ("x-auth-tenant", "1"),
    ];

    // Authenticated route: replaced by the verified claim (or removed when the
    // token has no such claim).
    let r = call(fx.g.addr, "/echo/hs", Some(&t[0]), &forged).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.json();
    assert_eq!(echoed(&e, "x-auth-subject"), ["alice"]);
    assert!(echoed(&e, "x-auth-scope").is_empty(), "{e}");
    assert!(echoed(&e, "x-auth-tenant").is_empty(), "{e}");

    // Public route: removed.
    let r = call(fx.g.addr, "/echo/public", None, &forged).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.json();
    for (name, _) in forged {
        assert!(
            echoed(&e, &name.to_ascii_lowercase()).is_empty(),
            "{name} reached the worker on a public route: {e}"
        );
    }
    // Also when sent twice.
    let r = call(
        fx.g.addr,
        "/echo",
        None,
        &[("x-auth-subject", "a"), ("x-auth-subject", "b")],
    )
    .await;
    assert!(echoed(&r.json(), "x-auth-subject").is_empty());
}

#[tokio::test]
async fn missing_bad_expired_and_foreign_tokens_get_rfc6750_challenges() {
    let fx = Fixture::start().await;
    let n = now();
    let wrong_secret = argv(&[
        "sign",
        "--alg",
        "HS256",
        "--secret",
        "another-secret-of-at-least-32-bytes-long!!",
        "--claims",
        &hs_claims("alice", json!({})).to_string(),
    ]);
    let no_exp = json!({"sub": "alice", "iss": ISSUER, "aud": AUDIENCE});
    let t = tool(&[
        wrong_secret,
        // Expired beyond the 5 s leeway.
        hs(&hs_claims("alice", json!({"exp": n - 60}))),
        hs(&hs_claims("alice", json!({"aud": "other-api"}))),
        hs(&hs_claims("alice", json!({"iss": "https://evil.test"}))),
        hs(&hs_claims("alice", json!({"nbf": n + 300}))),
        hs(&no_exp),
        // Expired, but within the leeway: still accepted.
        hs(&hs_claims("alice", json!({"exp": n - 1}))),
        // aud as a list containing ours.
        hs(&hs_claims("alice", json!({"aud": ["x", AUDIENCE]}))),
        // A claim to forward with CR/LF: the token is refused.
        hs(&hs_claims("alice\r\nx-injected: 1", json!({}))),
    ]);

    let r = fx.get("/echo/hs", None).await;
    assert_missing(&r);
    // Another scheme counts as no token.
    let r = call(
        fx.g.addr,
        "/echo/hs",
        None,
        &[("authorization", "Basic YTpi")],
    )
    .await;
    assert_missing(&r);

    assert_invalid(
        &fx.get("/echo/hs", Some(&t[0])).await,
        "bad signature",
        &t[0],
    );
    assert_invalid(
        &fx.get("/echo/hs", Some(&t[1])).await,
        "token expired",
        &t[1],
    );
    assert_invalid(
        &fx.get("/echo/hs", Some(&t[2])).await,
        "wrong audience",
        &t[2],
    );
    assert_invalid(
        &fx.get("/echo/hs", Some(&t[3])).await,
        "wrong issuer",
        &t[3],
    );
    assert_invalid(
        &fx.get("/echo/hs", Some(&t[4])).await,
        "token not yet valid",
        &t[4],
    );
    assert_invalid(
        &fx.get("/echo/hs", Some(&t[5])).await,
        "token has no expiry (exp)",
        &t[5],
    );
    assert_invalid(
        &fx.get("/echo/hs", Some(&t[8])).await,
        "claim value cannot be forwarded",
        &t[8],
    );
    assert_eq!(
        fx.w.hits().await,
        0,
        "a rejected request reached the worker"
    );

    assert_eq!(fx.get("/echo/hs", Some(&t[6])).await.status, 200);
    assert_eq!(fx.get("/echo/hs", Some(&t[7])).await.status, 200);
    assert_eq!(fx.w.hits().await, 2);
}

#[tokio::test]
async fn alg_none_and_algorithm_confusion_are_refused() {
    let fx = Fixture::start().await;
    let d = fx.dir();
    let claims = hs_claims("mallory", json!({}));
    let rs_claims = json!({"sub": "mallory", "exp": now() + 600});
    let pubkey = d.join("r1.pub.pem");
    let t = tool(&[
        argv(&["sign", "--alg", "none", "--claims", &claims.to_string()]),
        // Header says HS256, "secret" is the RSA public key PEM the RS256
        // policy verifies with.
        argv(&[
            "sign",
            "--alg",
            "HS256",
            "--secret-file",
            pubkey.to_str().unwrap(),
            "--claims",
            &rs_claims.to_string(),
        ]),
        // Same trick against the EC key of the JWKS policy (its JWK, as text).
        argv(&[
            "sign",
            "--alg",
            "HS256",
            "--secret-file",
            d.join("e1.jwk.json").to_str().unwrap(),
            "--kid",
            "e1",
            "--claims",
            &rs_claims.to_string(),
        ]),
        // "none" spelled otherwise.
        argv(&["sign", "--alg", "None", "--claims", &claims.to_string()]),
    ]);

    for path in ["/echo/hs", "/echo/rs", "/echo/jwks"] {
        assert_invalid(
            &fx.get(path, Some(&t[0])).await,
            "algorithm not allowed",
            &t[0],
        );
    }
    assert_invalid(
        &fx.get("/echo/rs", Some(&t[1])).await,
        "algorithm not allowed",
        &t[1],
    );
    assert_invalid(
        &fx.get("/echo/jwks", Some(&t[2])).await,
        "algorithm not allowed",
        &t[2],
    );
    assert_invalid(
        &fx.get("/echo/hs", Some(&t[3])).await,
        "algorithm not allowed",
        &t[3],
    );
    // A none token with the signature part dropped altogether.
    let two = t[0].trim_end_matches('.');
    assert_invalid(
        &fx.get("/echo/hs", Some(two)).await,
        "malformed token: not three segments",
        two,
    );
    assert_eq!(fx.w.hits().await, 0, "a forged token reached the worker");
}

#[tokio::test]
async fn oversized_garbage_and_json_bomb_tokens_are_401_never_500() {
    let fx = Fixture::start().await;
    let exp = now() + 600;
    let depth = 2500;
    let bomb_payload = format!(
        "{{\"sub\":\"a\",\"iss\":\"{ISSUER}\",\"aud\":\"{AUDIENCE}\",\"exp\":{exp},\"x\":{}{}}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    // `alg` itself nested deep: not a JOSE header.
    let bomb_alg = format!("{{\"alg\":{nested}}}");
    // A member the gate ignores nested deep, in a correctly signed token.
    let bomb_ignored = format!("{{\"alg\":\"HS256\",\"x\":{nested}}}");
    let t = tool(&[
        // Correctly signed, 9 KiB.
        hs(&hs_claims("alice", json!({"pad": "p".repeat(9 * 1024)}))),
        // Correctly signed, payload nested 2500 deep (under 8 KiB).
        argv(&[
            "sign",
            "--alg",
            "HS256",
            "--secret",
            SECRET,
            "--payload-raw",
            &bomb_payload,
        ]),
        // Header nested 2500 deep, signed.
        argv(&[
            "sign",
            "--alg",
            "HS256",
            "--secret",
            SECRET,
            "--header-raw",
            &bomb_alg,
            "--claims",
            &hs_claims("alice", json!({})).to_string(),
        ]),
        argv(&[
            "sign",
            "--alg",
            "HS256",
            "--secret",
            SECRET,
            "--header-raw",
            &bomb_ignored,
            "--claims",
            &hs_claims("alice", json!({})).to_string(),
        ]),
    ]);
    assert!(t[0].len() > 9 * 1024, "{}", t[0].len());
    assert!(
        t[1].len() < 8 * 1024,
        "the bomb must pass the size check: {}",
        t[1].len()
    );
    assert_invalid(
        &fx.get("/echo/hs", Some(&t[0])).await,
        "token too large",
        &t[0],
    );
    assert_invalid(
        &fx.get("/echo/hs", Some(&t[1])).await,
        "malformed token: payload is not a JSON object",
        &t[1],
    );
    assert!(t[2].len() < 8 * 1024 && t[3].len() < 8 * 1024);
    assert_invalid(
        &fx.get("/echo/hs", Some(&t[2])).await,
        "malformed token: header is not a JOSE header",
        &t[2],
    );
    assert_eq!(fx.w.hits().await, 0);
    // Deep nesting in a member nobody reads is skipped (serde_json does not
    // recurse to ignore it): the token is genuinely signed, so it is accepted.
    let r = fx.get("/echo/hs", Some(&t[3])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    w_reset(&fx).await;

    let garbage: &[(&str, &str)] = &[
        ("!!!!.@@@@.####", "malformed token: header is not base64url"),
        ("abc", "malformed token: not three segments"),
        ("a.b.c.d", "malformed token: not three segments"),
        (
            "e30.e30.e30",
            "malformed token: header is not a JOSE header",
        ),
        // {"alg":"HS256"} with a payload that is not base64url: the
        // signature is checked first, and fails.
        ("eyJhbGciOiJIUzI1NiJ9.%%%%.AAAA", "bad signature"),
        // The header is base64 of a JSON array.
        (
            "WzEsMiwzXQ.e30.AAAA",
            "malformed token: header is not a JOSE header",
        ),
    ];
    for (tok, desc) in garbage {
        assert_invalid(&fx.get("/echo/hs", Some(tok)).await, desc, tok);
    }
    // 9 KiB of base64 garbage in one segment.
    let big = "A".repeat(9 * 1024);
    assert_invalid(
        &fx.get("/echo/hs", Some(&big)).await,
        "token too large",
        &big,
    );
    // `Bearer` and nothing else, or two words.
    for value in ["Bearer", "Bearer ", "Bearer a b"] {
        let r = call(fx.g.addr, "/echo/hs", None, &[("authorization", value)]).await;
        assert_invalid(
            &r,
            "malformed token: expected `Authorization: Bearer <token>`",
            "",
        );
    }
    // Non-ASCII bytes in Authorization (raw, hyper's client would refuse).
    let raw = format!(
        "GET /echo/hs HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer \u{e9}\u{ff}.x.y\r\nConnection: close\r\n\r\n",
        fx.g.addr
    );
    match raw_exchange(fx.g.addr, raw.as_bytes(), Duration::from_secs(5)).await {
        RawOutcome::Response(r) => {
            assert_eq!(r.status, 401, "{:?}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.json()["error"], "invalid_token");
        }
        other => panic!("no response to a non-ASCII Authorization: {other:?}"),
    }
    assert_eq!(fx.w.hits().await, 0);
}

async fn w_reset(fx: &Fixture) {
    fx.w.direct(Method::POST, "/count/reset").await;
}

#[tokio::test]
async fn scopes_are_enforced_with_403_insufficient_scope() {
    let fx = Fixture::start().await;
    let t = tool(&[
        hs(&hs_claims("alice", json!({"scope": "read write"}))),
        hs(&hs_claims("alice", json!({}))),
        hs(&hs_claims("alice", json!({"scope": "read api"}))),
        hs(&hs_claims("alice", json!({"scp": ["api"]}))),
        // A scope that merely contains "api".
        hs(&hs_claims("alice", json!({"scope": "apiary"}))),
    ]);
    for i in [0, 1, 4] {
        let r = fx.get("/echo/scoped", Some(&t[i])).await;
        r.assert_rejection(403, "insufficient_scope");
        assert_eq!(
            r.header("www-authenticate"),
            Some(
                "Bearer realm=\"asgi-gate\", error=\"insufficient_scope\", \
                 error_description=\"token lacks a required scope\", scope=\"api\""
            ),
            "token {i}"
        );
        assert_no_token(&r, &t[i]);
    }
    assert_eq!(fx.w.hits().await, 0);
    assert_eq!(fx.get("/echo/scoped", Some(&t[2])).await.status, 200);
    assert_eq!(fx.get("/echo/scoped", Some(&t[3])).await.status, 200);
    // The same token without a scope is fine where no scope is required.
    assert_eq!(fx.get("/echo/hs", Some(&t[1])).await.status, 200);
    assert_eq!(fx.w.hits().await, 3);
}

#[tokio::test]
async fn claim_keyed_limits_give_each_subject_its_own_bucket() {
    let fx = Fixture::start().await;
    let t = tool(&[
        hs(&hs_claims("alice", json!({}))),
        hs(&hs_claims("bob", json!({}))),
        // Another token of alice's: same subject, same bucket.
        hs(&hs_claims("alice", json!({"jti": "second"}))),
    ]);
    assert_eq!(fx.get("/echo/limited", Some(&t[0])).await.status, 200);
    assert_eq!(fx.get("/echo/limited", Some(&t[2])).await.status, 200);
    let r = fx.get("/echo/limited", Some(&t[0])).await;
    r.assert_rejection(429, "rate_limited");
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.header("ratelimit-policy"), Some("\"per_user\";q=2;w=60"));
    // Bob is untouched by alice's bucket.
    assert_eq!(fx.get("/echo/limited", Some(&t[1])).await.status, 200);
    assert_eq!(fx.get("/echo/limited", Some(&t[1])).await.status, 200);
    fx.get("/echo/limited", Some(&t[1]))
        .await
        .assert_rejection(429, "rate_limited");
    // No token: 401 before any claim-keyed limit.
    assert_missing(&fx.get("/echo/limited", None).await);
    assert_eq!(fx.w.hits().await, 4);
}

async fn ws_connect(
    addr: SocketAddr,
    path: &str,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, http::Response<Option<Vec<u8>>>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    match client_async(format!("ws://{addr}{path}"), tcp).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101);
            Ok(ws)
        }
        Err(tungstenite::Error::Http(resp)) => Err(resp),
        Err(e) => panic!("websocket {path}: {e}"),
    }
}

/// The response to a handshake that must be refused.
async fn ws_refused(addr: SocketAddr, path: &str, why: &str) -> http::Response<Option<Vec<u8>>> {
    match ws_connect(addr, path).await {
        Ok(_) => panic!("{why}"),
        Err(r) => r,
    }
}

#[tokio::test]
async fn websocket_query_token_upgrade_and_revocation() {
    let fx = Fixture::start().await;
    let t = tool(&[hs(&hs_claims("wsuser", json!({"jti": "ws-1"})))]);
    let tok = &t[0];

    // Query tokens count only on WebSocket handshakes.
    assert_missing(&fx.get(&format!("/echo/hs?access_token={tok}"), None).await);

    let mut ws = ws_connect(fx.g.addr, &format!("/ws/echo?access_token={tok}&x=1"))
        .await
        .unwrap_or_else(|r| panic!("handshake refused: {r:?}"));
    ws.send(Message::Text("hi".into())).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("echo timed out")
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::Text("hi".into()));
    ws.close(None).await.unwrap();
    // uvicorn logs the path it was given when it accepts a WebSocket.
    let w = &fx.w;
    assert!(
        eventually(Duration::from_secs(3), || async move {
            w.log().contains("\"WebSocket /ws/echo?x=1\" [accepted]")
        })
        .await,
        "worker log: {}",
        w.log()
    );
    assert!(!w.log().contains("access_token"), "worker log: {}", w.log());
    assert!(
        !w.log().contains(tok.as_str()),
        "the token reached the worker"
    );

    // No token: refused.
    let r = ws_refused(fx.g.addr, "/ws/echo?x=1", "upgrade without a token").await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], CHALLENGE);

    // Revoked: the handshake is refused.
    let rv = revoke(&fx.g, &json!({"jti": "ws-1", "exp": now() + 600})).await;
    assert_eq!(rv.status, 201, "{}", rv.text());
    let r = ws_refused(
        fx.g.addr,
        &format!("/ws/echo?access_token={tok}"),
        "revoked token upgraded",
    )
    .await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"asgi-gate\", error=\"invalid_token\", error_description=\"token revoked\""
    );
    assert_eq!(
        fx.w.hits().await,
        1,
        "only the accepted WebSocket reached the app"
    );
}

#[tokio::test]
async fn revocation_admin_api() {
    let fx = Fixture::start().await;
    let g = &fx.g;
    let exp = now() + 600;
    let t = tool(&[
        hs(&hs_claims("alice", json!({"jti": "jti-1", "exp": exp}))),
        // No jti: revoked by the SHA-256 of the token.
        hs(&hs_claims("bob", json!({"exp": exp}))),
        // Signed by no configured policy.
        argv(&[
            "sign",
            "--alg",
            "HS256",
            "--secret",
            "another-secret-of-at-least-32-bytes-long!!",
            "--claims",
            &hs_claims("eve", json!({})).to_string(),
        ]),
    ]);

    // Accepted, and cached as verified.
    assert_eq!(fx.get("/echo/hs", Some(&t[0])).await.status, 200);
    assert_eq!(fx.get("/echo/hs", Some(&t[0])).await.status, 200);

    // {jti, exp}: 201 new, 200 again; the entry lasts exp + the largest leeway.
    let r = revoke(g, &json!({"jti": "jti-1", "exp": exp})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["jti"], "jti-1");
    // Refused at once (same second), although the signature check is cached.
    let started = Instant::now();
    assert_invalid(
        &fx.get("/echo/hs", Some(&t[0])).await,
        "token revoked",
        &t[0],
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    let r = revoke(g, &json!({"jti": "jti-1", "exp": exp})).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let r = admin(g, Method::GET, "/revocations/jti-1", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["jti"], "jti-1");
    assert_eq!(v["exp"], exp + HS_LEEWAY, "exp plus the policy leeway: {v}");
    let r = admin(g, Method::GET, "/revocations", None, None).await;
    assert_eq!(r.json()["count"], 1, "{}", r.text());

    // {token}: the gate verifies it and keys it by sha256 when it has no jti.
    assert_eq!(fx.get("/echo/hs", Some(&t[1])).await.status, 200);
    let r = revoke(g, &json!({"token": t[1]})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let key = sha256_hex(t[1].as_bytes());
    assert_eq!(r.json()["jti"], key.as_str(), "{}", r.text());
    assert_invalid(
        &fx.get("/echo/hs", Some(&t[1])).await,
        "token revoked",
        &t[1],
    );
    let r = admin(g, Method::GET, &format!("/revocations/{key}"), None, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["exp"], exp + HS_LEEWAY);
    let r = revoke(g, &json!({"token": t[1]})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A token no policy signed is not revoked by token.
    let r = revoke(g, &json!({"token": t[2]})).await;
    assert_admin_rejection(&r, 400, "bad_request");
    assert_no_token(&r, &t[2]);

    // DELETE: 204, then 404; the token works again.
    let r = admin(
        g,
        Method::DELETE,
        "/revocations/jti-1",
        None,
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(fx.get("/echo/hs", Some(&t[0])).await.status, 200);
    let r = admin(
        g,
        Method::DELETE,
        "/revocations/jti-1",
        None,
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_admin_rejection(&r, 404, "not_found");
    let r = admin(g, Method::GET, "/revocations/jti-1", None, None).await;
    assert_admin_rejection(&r, 404, "not_found");
    let r = admin(g, Method::GET, "/revocations/never-revoked", None, None).await;
    assert_admin_rejection(&r, 404, "not_found");

    // Mutations without the admin token, or with a wrong one: 401, nothing changes.
    let body = json!({"jti": "jti-2", "exp": exp}).to_string();
    let r = admin(g, Method::POST, "/revocations", Some(&body), None).await;
    assert_admin_rejection(&r, 401, "unauthorized");
    let r = admin(g, Method::POST, "/revocations", Some(&body), Some("wrong")).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(!r.text().contains("wrong"));
    let r = admin(
        g,
        Method::DELETE,
        &format!("/revocations/{key}"),
        None,
        None,
    )
    .await;
    assert_admin_rejection(&r, 401, "unauthorized");
    let r = admin(
        g,
        Method::DELETE,
        &format!("/revocations/{key}"),
        None,
        Some(ADMIN_TOKEN.trim_end_matches('s')),
    )
    .await;
    assert_eq!(
        r.status,
        401,
        "a prefix of the admin token passed: {}",
        r.text()
    );
    assert_eq!(
        admin(g, Method::GET, "/revocations/jti-2", None, None)
            .await
            .status,
        404
    );
    assert_eq!(
        admin(g, Method::GET, &format!("/revocations/{key}"), None, None)
            .await
            .status,
        200
    );

    // Bad input: 400 with a message.
    for bad in [
        "not json",
        "{\"jti\": \"x\"}",
        "{\"exp\": 5}",
        "{\"jti\": \"\", \"exp\": 99999999999}",
        "{\"jti\": 5, \"exp\": 99999999999}",
        "[]",
        "",
    ] {
        let r = admin(
            g,
            Method::POST,
            "/revocations",
            Some(bad),
            Some(ADMIN_TOKEN),
        )
        .await;
        assert_admin_rejection(&r, 400, "bad_request");
        assert!(
            r.json()["detail"].as_str().unwrap().len() > 10,
            "{bad}: {}",
            r.text()
        );
    }

    // The same gate without admin.token_env: mutations are 403, reads work.
    let g2 = Gate::start_env(&fixture_yaml(&fx.w.sock, fx.dir(), false), GATE_ENV).await;
    let r = admin(
        &g2,
        Method::POST,
        "/revocations",
        Some(&body),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_admin_rejection(&r, 403, "forbidden");
    assert!(r.text().contains("token_env"), "{}", r.text());
    let r = admin(&g2, Method::DELETE, "/revocations/jti-2", None, None).await;
    assert_admin_rejection(&r, 403, "forbidden");
    assert_eq!(
        admin(&g2, Method::GET, "/revocations/jti-2", None, None)
            .await
            .status,
        404
    );
}

// ---------------------------------------------------------------- gates of their own

fn hs_only_yaml(sock: &Path, extra: &str) -> String {
    format!(
        r#"listen:
  - address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
  token_env: GATE_ADMIN_TOKEN
upstreams:
  app:
    sockets: ["{sock}"]
auth:
  hs:
    algorithms: [HS256]
    secret_env: JWT_SECRET
    leeway: 0s
    forward_claims: {{ sub: X-Auth-Subject }}
routes:
  - path: /echo/hs
    upstream: app
    auth: hs
  - path: /{{*rest}}
    upstream: app
{extra}"#,
        sock = sock.display()
    )
}

#[tokio::test]
async fn a_revocation_is_forgotten_once_its_token_has_expired() {
    // No request is proxied here: the socket need not exist.
    let dir = tempdir();
    let g = Gate::start_env(&hs_only_yaml(&dir.path().join("none.sock"), ""), GATE_ENV).await;
    let exp = now() + 2;
    let r = revoke(&g, &json!({"jti": "short", "exp": exp})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = admin(&g, Method::GET, "/revocations/short", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["exp"], exp, "leeway 0: {}", r.text());
    // Already expired: nothing to keep.
    let r = revoke(&g, &json!({"jti": "old", "exp": now() - 1})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        admin(&g, Method::GET, "/revocations/old", None, None)
            .await
            .status,
        404
    );

    let started = Instant::now();
    let gr = &g;
    let gone = eventually(Duration::from_secs(5), || async move {
        admin(gr, Method::GET, "/revocations/short", None, None)
            .await
            .status
            == 404
    })
    .await;
    assert!(gone, "entry still there 5 s after its expiry");
    assert!(now() >= exp, "entry gone before its exp");
    // And swept from the list, not merely hidden.
    let swept = eventually(Duration::from_secs(3), || async move {
        admin(gr, Method::GET, "/revocations", None, None)
            .await
            .json()["count"]
            == 0
    })
    .await;
    assert!(
        swept,
        "count still {} {:?} after expiry",
        admin(&g, Method::GET, "/revocations", None, None)
            .await
            .text(),
        started.elapsed()
    );
}

#[tokio::test]
async fn revocations_survive_kill_9() {
    let w = Worker::start().await;
    let dir = tempdir();
    let log = dir.path().join("revocations.log");
    let yaml = hs_only_yaml(
        &w.sock,
        &format!("revocation:\n  persist_file: \"{}\"\n", log.display()),
    );
    let exp = now() + 600;
    let t = tool(&[
        hs(&json!({"sub": "a", "jti": "p-1", "exp": exp})),
        hs(&json!({"sub": "b", "exp": exp})),
        hs(&json!({"sub": "c", "jti": "p-3", "exp": exp})),
    ]);

    let mut g = Gate::start_env(&yaml, GATE_ENV).await;
    for tok in &t {
        assert_eq!(call(g.addr, "/echo/hs", Some(tok), &[]).await.status, 200);
    }
    assert_eq!(
        revoke(&g, &json!({"jti": "p-1", "exp": exp})).await.status,
        201
    );
    assert_eq!(revoke(&g, &json!({"token": t[1]})).await.status, 201);
    // kill -9 right after the 2xx.
    g.send_signal(libc::SIGKILL);
    assert!(g.wait_exit(Duration::from_secs(5)).await.is_some());

    let mut g2 = Gate::start_env(&yaml, GATE_ENV).await;
    assert_invalid(
        &call(g2.addr, "/echo/hs", Some(&t[0]), &[]).await,
        "token revoked",
        &t[0],
    );
    assert_invalid(
        &call(g2.addr, "/echo/hs", Some(&t[1]), &[]).await,
        "token revoked",
        &t[1],
    );
    assert_eq!(
        call(g2.addr, "/echo/hs", Some(&t[2]), &[]).await.status,
        200
    );
    let r = admin(&g2, Method::GET, "/revocations/p-1", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"jti": "p-1", "exp": exp}));
    let key = sha256_hex(t[1].as_bytes());
    let r = admin(&g2, Method::GET, &format!("/revocations/{key}"), None, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["exp"], exp);
    assert_eq!(
        admin(&g2, Method::GET, "/revocations", None, None)
            .await
            .json()["count"],
        2
    );

    // A DELETE is persisted too.
    let r = admin(
        &g2,
        Method::DELETE,
        "/revocations/p-1",
        None,
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(r.status, 204);
    g2.send_signal(libc::SIGKILL);
    assert!(g2.wait_exit(Duration::from_secs(5)).await.is_some());
    let g3 = Gate::start_env(&yaml, GATE_ENV).await;
    assert_eq!(
        call(g3.addr, "/echo/hs", Some(&t[0]), &[]).await.status,
        200
    );
    assert_invalid(
        &call(g3.addr, "/echo/hs", Some(&t[1]), &[]).await,
        "token revoked",
        &t[1],
    );
}

// ---------------------------------------------------------------- jwks_url

/// `python -m http.server` on port 0 serving a directory; killed by PID on drop.
struct FileServer {
    child: Child,
    port: u16,
    log_path: PathBuf,
}

impl FileServer {
    fn start(dir: &Path) -> FileServer {
        let log_path = dir.join("http-server.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(python());
        cmd.args([
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn http.server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("http.server said {line:?}");
        };
        FileServer {
            child,
            port,
            log_path,
        }
    }

    /// How many times the JWKS was fetched.
    fn fetches(&self) -> usize {
        std::fs::read_to_string(&self.log_path)
            .unwrap_or_default()
            .matches("\"GET /jwks.json ")
            .count()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn jwks_url_unknown_kid_triggers_one_refresh_after_rotation() {
    let keys = tempdir();
    let web = tempdir();
    let d = keys.path();
    let doc = web.path().join("jwks.json");
    tool(&[
        genkeys("ec", d, "key-a"),
        genkeys("ec", d, "key-b"),
        genkeys("ec", d, "key-c"),
        jwks(&doc, &[d.join("key-a.jwk.json")]),
    ]);
    let server = FileServer::start(web.path());
    let w = Worker::start().await;
    let yaml = format!(
        r#"listen:
  - address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
upstreams:
  app:
    sockets: ["{sock}"]
auth:
  remote:
    algorithms: [ES256]
    jwks_url: "http://127.0.0.1:{port}/jwks.json"
    leeway: 0s
    forward_claims: {{ sub: X-Auth-Subject }}
routes:
  - path: /echo/remote
    upstream: app
    auth: remote
  - path: /{{*rest}}
    upstream: app
"#,
        sock = w.sock.display(),
        port = server.port
    );
    let g = Gate::start(&yaml).await;
    assert_eq!(server.fetches(), 1, "fetched once at start");

    let exp = now() + 600;
    let t = tool(&[
        signed(
            "ES256",
            d,
            "key-a",
            Some("key-a"),
            &json!({"sub": "a", "exp": exp}),
        ),
        signed(
            "ES256",
            d,
            "key-b",
            Some("key-b"),
            &json!({"sub": "b", "exp": exp}),
        ),
        signed(
            "ES256",
            d,
            "key-c",
            Some("key-c"),
            &json!({"sub": "c", "exp": exp}),
        ),
        // Signed by c, but claims to be b.
        signed(
            "ES256",
            d,
            "key-c",
            Some("key-b"),
            &json!({"sub": "c", "exp": exp}),
        ),
    ]);
    let r = call(g.addr, "/echo/remote", Some(&t[0]), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(echoed(&r.json(), "x-auth-subject"), ["a"]);

    // Rotate: the server now has a and b. The gate does not know b yet; the
    // request is answered at once (never waits on the network) and triggers
    // a refresh.
    tool(&[jwks(
        &doc,
        &[d.join("key-a.jwk.json"), d.join("key-b.jwk.json")],
    )]);
    let r = call(g.addr, "/echo/remote", Some(&t[1]), &[]).await;
    assert_invalid(&r, "unknown signing key", &t[1]);
    let addr = g.addr;
    let tb = &t[1];
    let ok = eventually(Duration::from_secs(5), || async move {
        call(addr, "/echo/remote", Some(tb), &[]).await.status == 200
    })
    .await;
    assert!(
        ok,
        "kid b never accepted after rotation; gate log:\n{}",
        g.log()
    );
    assert_eq!(server.fetches(), 2, "one refresh for the unknown kid");
    let r = call(g.addr, "/echo/remote", Some(&t[1]), &[]).await;
    assert_eq!(echoed(&r.json(), "x-auth-subject"), ["b"]);
    assert_eq!(
        call(g.addr, "/echo/remote", Some(&t[0]), &[]).await.status,
        200
    );
    assert_invalid(
        &call(g.addr, "/echo/remote", Some(&t[3]), &[]).await,
        "bad signature",
        &t[3],
    );

    // Unknown kids right after a refresh: no new fetch within 30 s, however many.
    for _ in 0..5 {
        assert_invalid(
            &call(g.addr, "/echo/remote", Some(&t[2]), &[]).await,
            "unknown signing key",
            &t[2],
        );
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        server.fetches(),
        2,
        "an unknown kid refreshed again within 30 s"
    );
}

// ---------------------------------------------------------------- Redis

#[tokio::test]
async fn revocations_are_shared_through_redis() {
    let redis = Redis::start();
    let w = Worker::start().await;
    let yaml = hs_only_yaml(&w.sock, &format!("revocation:\n  redis: {}\n", redis.url()));
    let a = Gate::start_env(&yaml, GATE_ENV).await;
    let b = Gate::start_env(&yaml, GATE_ENV).await;
    let token = tool(&[hs(&hs_claims("alice", json!({"jti": "shared-1"})))]).remove(0);
    for g in [&a, &b] {
        assert_eq!(
            call(g.addr, "/echo/hs", Some(&token), &[]).await.status,
            200
        );
    }

    // Revoked on A: refused by B within the second, stored with its expiry.
    let r = revoke(&a, &json!({"jti": "shared-1", "exp": now() + 600})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let bb = &b;
    let tok = token.as_str();
    let refused = eventually(Duration::from_secs(2), || async move {
        call(bb.addr, "/echo/hs", Some(tok), &[]).await.status == 401
    })
    .await;
    assert!(refused, "gate B still accepts a token revoked on gate A");
    let keys = redis.cli(&["--scan", "--pattern", "asgi-gate:rev:*"]);
    assert_eq!(keys.lines().count(), 1, "{keys}");
    assert!(
        !keys.contains("shared-1"),
        "the jti is stored hashed: {keys}"
    );
    let ttl: i64 = redis.cli(&["TTL", keys.trim()]).parse().unwrap();
    assert!((590..=600).contains(&ttl), "TTL {ttl}");

    // A gate started afterwards loads it from Redis.
    let c = Gate::start_env(&yaml, GATE_ENV).await;
    let cc = &c;
    let loaded = eventually(Duration::from_secs(3), || async move {
        call(cc.addr, "/echo/hs", Some(tok), &[]).await.status == 401
    })
    .await;
    assert!(loaded, "a new gate did not load the revocation from Redis");

    // Removed on B: accepted again everywhere.
    let r = admin(
        &b,
        Method::DELETE,
        "/revocations/shared-1",
        None,
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    for g in [&a, &c] {
        let accepted = eventually(Duration::from_secs(2), || async move {
            call(g.addr, "/echo/hs", Some(tok), &[]).await.status == 200
        })
        .await;
        assert!(accepted, "still refused after the removal");
    }
    assert_eq!(redis.cli(&["--scan", "--pattern", "asgi-gate:rev:*"]), "");
}

#[tokio::test]
async fn without_redis_the_gate_serves_and_admin_writes_answer_202_pending() {
    let port = unused_port();
    let w = Worker::start().await;
    let yaml = hs_only_yaml(
        &w.sock,
        &format!("revocation:\n  redis: redis://127.0.0.1:{port}/0\n"),
    );
    let g = Gate::start_env(&yaml, GATE_ENV).await;
    let token = tool(&[hs(&hs_claims("bob", json!({"jti": "local-1"})))]).remove(0);
    assert_eq!(
        call(g.addr, "/echo/hs", Some(&token), &[]).await.status,
        200
    );
    let r = revoke(&g, &json!({"jti": "local-1", "exp": now() + 600})).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["shared"], "pending", "{}", r.text());
    // Applied locally at once: this gate refuses the token.
    assert_eq!(
        call(g.addr, "/echo/hs", Some(&token), &[]).await.status,
        401
    );
    assert_eq!(outbox(&g).await, 1);
    // A delete waits in the outbox too (it replaces the queued revocation).
    let r = admin(
        &g,
        Method::DELETE,
        "/revocations/local-1",
        None,
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["shared"], "pending", "{}", r.text());
    assert_eq!(
        call(g.addr, "/echo/hs", Some(&token), &[]).await.status,
        200
    );
    assert_eq!(outbox(&g).await, 1);
}

/// `asgi_gate_revocation_outbox` on `g`'s /metrics.
async fn outbox(g: &Gate) -> u64 {
    let text = admin(g, Method::GET, "/metrics", None, None).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix("asgi_gate_revocation_outbox "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no asgi_gate_revocation_outbox in:\n{text}"))
}

fn redis_yaml(sock: &Path, url: &str) -> String {
    hs_only_yaml(sock, &format!("revocation:\n  redis: {url}\n"))
}

/// Polls until `g` refuses `token` (401), up to `within`.
async fn refused_within(g: &Gate, token: &str, within: Duration) -> bool {
    eventually(within, || async move {
        call(g.addr, "/echo/hs", Some(token), &[]).await.status == 401
    })
    .await
}

#[tokio::test]
async fn a_silent_redis_link_is_noticed_and_replaced() {
    let redis = Redis::start();
    let relay = Relay::start(redis.port()).await;
    let w = Worker::start().await;
    let a = Gate::start_env(&redis_yaml(&w.sock, &redis.url()), GATE_ENV).await;
    let b = Gate::start_env(&redis_yaml(&w.sock, &relay.url()), GATE_ENV).await;
    let token = tool(&[hs(&hs_claims("carol", json!({"jti": "silent-1"})))]).remove(0);
    assert_eq!(
        call(b.addr, "/echo/hs", Some(&token), &[]).await.status,
        200
    );
    let bb = &b;
    let following = eventually(Duration::from_secs(5), || async move {
        bb.log().contains("following Redis")
    })
    .await;
    assert!(following, "gate B never followed Redis:\n{}", b.log());

    // B's links to Redis go silent but stay open (half-open TCP).
    relay.freeze();
    let opened = relay.opened();
    let r = revoke(&a, &json!({"jti": "silent-1", "exp": now() + 600})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    // B notices by its PING (every 5 s, 2 s to answer), reconnects and loads.
    assert!(
        refused_within(&b, &token, Duration::from_secs(15)).await,
        "gate B, on a silent link, still accepts a token revoked on gate A; relay connections {opened} -> {}; gate B log:\n{}",
        relay.opened(),
        b.log()
    );
}

#[tokio::test]
async fn a_revocation_made_while_redis_is_down_reaches_every_gate_when_it_returns_empty() {
    let mut redis = Redis::start();
    let port = redis.port();
    let w = Worker::start().await;
    let yaml = redis_yaml(&w.sock, &redis.url());
    let a = Gate::start_env(&yaml, GATE_ENV).await;
    let b = Gate::start_env(&yaml, GATE_ENV).await;
    let t = tool(&[
        hs(&hs_claims("dave", json!({"jti": "before-outage"}))),
        hs(&hs_claims("erin", json!({"jti": "during-outage"}))),
    ]);
    let r = revoke(&a, &json!({"jti": "before-outage", "exp": now() + 600})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["shared"], true, "{}", r.text());
    assert!(refused_within(&b, &t[0], Duration::from_secs(3)).await);

    redis.stop();
    let r = revoke(&a, &json!({"jti": "during-outage", "exp": now() + 600})).await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["shared"], "pending", "{}", r.text());
    assert_eq!(outbox(&a).await, 1);
    assert_eq!(call(a.addr, "/echo/hs", Some(&t[1]), &[]).await.status, 401);
    assert_eq!(call(b.addr, "/echo/hs", Some(&t[1]), &[]).await.status, 200);

    // A new, empty Redis where the old one was; nobody calls the admin API.
    let redis = Redis::start_on(port);
    assert!(
        refused_within(&b, &t[1], Duration::from_secs(5)).await,
        "gate B still accepts, 5 s after Redis came back, a token revoked on A during the outage; A log:\n{}\nB log:\n{}",
        a.log(),
        b.log()
    );
    let aa = &a;
    assert!(
        eventually(
            Duration::from_secs(3),
            || async move { outbox(aa).await == 0 }
        )
        .await,
        "A's outbox never emptied"
    );
    // The union heal refilled Redis with what the gates held.
    let rr = &redis;
    let refilled = eventually(Duration::from_secs(3), || async move {
        rr.cli(&["--scan", "--pattern", "asgi-gate:rev:*"])
            .lines()
            .count()
            == 2
    })
    .await;
    assert!(
        refilled,
        "Redis holds: {}",
        redis.cli(&["--scan", "--pattern", "asgi-gate:rev:*"])
    );
    assert_eq!(call(b.addr, "/echo/hs", Some(&t[0]), &[]).await.status, 401);
}

#[tokio::test]
async fn revocations_heard_from_redis_survive_a_gate_restart_without_redis() {
    let mut redis = Redis::start();
    let w = Worker::start().await;
    let dir = tempdir();
    let a = Gate::start_env(&redis_yaml(&w.sock, &redis.url()), GATE_ENV).await;
    let yaml_b = hs_only_yaml(
        &w.sock,
        &format!(
            "revocation:\n  redis: {}\n  persist_file: \"{}\"\n",
            redis.url(),
            dir.path().join("b.log").display()
        ),
    );
    let mut b = Gate::start_env(&yaml_b, GATE_ENV).await;
    let token = tool(&[hs(&hs_claims("frank", json!({"jti": "heard-1"})))]).remove(0);
    let r = revoke(&a, &json!({"jti": "heard-1", "exp": now() + 600})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(refused_within(&b, &token, Duration::from_secs(3)).await);

    // B dies, then Redis; B comes back alone and must still refuse.
    b.send_signal(libc::SIGKILL);
    assert!(b.wait_exit(Duration::from_secs(5)).await.is_some());
    redis.stop();
    let b = Gate::start_env(&yaml_b, GATE_ENV).await;
    assert_eq!(
        call(b.addr, "/echo/hs", Some(&token), &[]).await.status,
        401,
        "a revocation heard over pub/sub was not kept in B's log; B log:\n{}",
        b.log()
    );
}

#[tokio::test]
async fn a_reload_that_raises_the_leeway_keeps_jti_revocations_long_enough() {
    let w = Worker::start().await;
    let yaml = hs_only_yaml(&w.sock, "");
    let g = Gate::start_env(&yaml, GATE_ENV).await;
    let raised = yaml.replace("leeway: 0s", "leeway: 120s");
    assert_ne!(raised, yaml);
    std::fs::write(&g.config_path, raised).unwrap();
    let r = admin(&g, Method::POST, "/reload", None, Some(ADMIN_TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Expired 30 s ago: accepted under the new 120 s leeway...
    let exp = now() - 30;
    let token = tool(&[hs(&hs_claims("gina", json!({"jti": "late-1", "exp": exp})))]).remove(0);
    assert_eq!(
        call(g.addr, "/echo/hs", Some(&token), &[]).await.status,
        200
    );
    // ...so a revocation by {jti, exp} must outlive exp by that leeway.
    let r = revoke(&g, &json!({"jti": "late-1", "exp": exp})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["exp"], exp + 120, "{}", r.text());
    assert_eq!(
        call(g.addr, "/echo/hs", Some(&token), &[]).await.status,
        401
    );
}
