//! Request integrity end to end: the route the gate checks is the route the
//! worker runs (percent-encoded and dot-segment paths), and no client header
//! passes as one the gate owns (underscore spellings, `Connection:`-named
//! headers, HTTP/2 split cookies). Real gate binary, real uvicorn workers.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Method;
use http_body_util::Full;
use serde_json::Value;

const SECRET: &str = "integrity-test-secret-that-is-at-least-32-bytes";

/// An HS256 token for SECRET with `sub`, minted by the venv's PyJWT.
fn token(sub: &str) -> String {
    let out = Command::new(venv().join("bin").join("python"))
        .args([
            "-c",
            "import jwt, sys, time\n\
             print(jwt.encode({'sub': sys.argv[2], 'exp': int(time.time()) + 3600}, \
             sys.argv[1], algorithm='HS256'))",
            SECRET,
            sub,
        ])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `routes` (YAML, unindented list items) behind an HS256 policy `p` that
/// forwards `sub` as X-Auth-Subject; `top` is added at the top level.
fn gate_yaml(sock: &std::path::Path, routes: &str, top: &str) -> String {
    format!(
        "listen:\n  - address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n\
         upstreams:\n  app:\n    sockets: [\"{}\"]\n\
         auth:\n  p:\n    algorithms: [HS256]\n    secret_env: INTEGRITY_SECRET\n    \
         forward_claims: {{ sub: X-Auth-Subject }}\n\
         routes:\n{routes}{top}",
        sock.display()
    )
}

const ECHO_ROUTES: &str = "  - path: /echo/{*rest}\n    upstream: app\n    auth: p\n\
                           \x20 - path: /{*rest}\n    upstream: app\n";

async fn start_gate(yaml: &str) -> Gate {
    Gate::start_env(yaml, &[("INTEGRITY_SECRET", SECRET)]).await
}

/// A raw HTTP/1.1 GET of `target` exactly as written (no client-side
/// normalisation), with extra header lines.
async fn raw_get(gate: &Gate, target: &str, extra: &str) -> RawResp {
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: gate.test\r\n{extra}Connection: close\r\n\r\n");
    match raw_exchange(gate.addr, request.as_bytes(), Duration::from_secs(10)).await {
        RawOutcome::Response(r) => r,
        other => panic!("no response for {target:?}: {other:?}"),
    }
}

fn echoed_header<'v>(echo: &'v Value, name: &str) -> Vec<&'v str> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|kv| kv[0] == name)
        .map(|kv| kv[1].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn encoded_paths_cannot_skip_a_routes_auth() {
    let w = Worker::start().await;
    let g = start_gate(&gate_yaml(&w.sock, ECHO_ROUTES, "")).await;
    let before = w.hits().await;
    // Each of these is /echo/... to uvicorn, which percent-decodes the path.
    for target in [
        "/%65cho/x",
        "/%65%63%68%6F/x",
        "/ECHO/../echo/x",
        "/x/%2e%2e/echo/x",
        "/x/%2E%2E/echo/x",
        "/./echo/x",
        "/echo%2Fx",
        "/x%2F..%2Fecho/x",
        "/x%5C..%5Cecho/x",
        "/x\\..\\echo/x",
        "/%65cho/x%00",
        "/%65cho/x%0d%0aX-Auth-Subject:%20admin",
        "/%65cho/%",
        "/%65cho/%zz",
        "/%65cho/%ff",
    ] {
        let r = raw_get(&g, target, "").await;
        assert!(
            r.status == 400 || r.status == 401,
            "{target:?} answered {} {:?}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        if r.status == 400 {
            let v = r.json();
            assert_eq!(v["error"], "bad_request", "{target:?}");
            // The detail names the problem, never the path.
            let detail = v["detail"].as_str().unwrap();
            assert!(detail.starts_with("the path"), "{detail}");
            assert!(r.header("x-request-id").is_some());
        }
    }
    assert_eq!(w.hits().await, before, "a request reached the worker");

    // With a token, the decoded form reaches the worker as its canonical
    // encoding: what uvicorn decodes is what the gate routed on.
    let t = token("alice");
    let r = raw_get(
        &g,
        "/%65cho/caf%c3%a9%20x?q=%2F",
        &format!("Authorization: Bearer {t}\r\n"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["path"], "/echo/café x");
    assert_eq!(v["raw_path"], "/echo/caf%C3%A9%20x");
    assert_eq!(v["query"], "q=%2F", "the query is forwarded untouched");
    assert_eq!(echoed_header(&v, "x-auth-subject"), ["alice"]);
    // The access log names the route and the canonical path.
    let id = r.header("x-request-id").unwrap().to_string();
    let line = wait_log_line(&g, &id).await;
    assert_eq!(line["route"], "/echo/{*rest}");
    assert_eq!(line["path"], "/echo/caf%C3%A9%20x");
}

#[tokio::test]
async fn encoded_slash_keep_routes_on_what_the_worker_decodes() {
    let w = Worker::start().await;
    let routes = "  - path: /echo/{*rest}\n    upstream: app\n\
                  \x20 - path: /e/{name}\n    upstream: app\n    auth: p\n";
    let g = start_gate(&gate_yaml(
        &w.sock,
        routes,
        "paths: { encoded_slash: keep }\n",
    ))
    .await;
    let r = raw_get(&g, "/echo/a%2fb", "").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["path"], "/echo/a/b");
    assert_eq!(v["raw_path"], "/echo/a%2Fb");
    // Dot-segments made of encoded slashes are still refused.
    let r = raw_get(&g, "/echo/a%2F..%2F..%2Fe/x", "").await;
    assert_eq!(r.status, 400);
}

/// Waits for the access-log line of request `id`.
async fn wait_log_line(g: &Gate, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = g
            .stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["request_id"] == id);
        if let Some(v) = found {
            return v;
        }
        assert!(Instant::now() < deadline, "no access-log line for {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- differential

/// A small seeded generator (xorshift64*): the same paths on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

fn pct(b: u8, lower: bool) -> String {
    match lower {
        true => format!("%{b:02x}"),
        false => format!("%{b:02X}"),
    }
}

/// One path segment: a word the routes know, possibly partly
/// percent-encoded, or one of the forms that make servers disagree.
fn segment(rng: &mut Rng) -> String {
    const WORDS: &[&str] = &[
        "api", "items", "files", "health", "edit", "x", "42", "a.b", "~u", "-", "_",
    ];
    const ODD: &[&str] = &[
        "",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        ".%2e",
        ";",
        ";v=1",
        "api;v=1",
        "%3B",
        "%2F",
        "%2f",
        "%5C",
        "\\",
        "%00",
        "%0a",
        "%7f",
        "%20",
        "%25",
        "%2525",
        "%c3%a9",
        "%C3%A9",
        "%c3",
        "%ff",
        "%e2%80%ae",
        "%c2%85",
        "%",
        "%4",
        "%zz",
        "caf%c3%a9",
        "%3F",
        "%23",
        "..;",
        "*",
        "api%2Fhealth",
        "%61pi",
        "it%65ms",
    ];
    match rng.below(10) {
        0..=6 => {
            let word = rng.pick(WORDS);
            encode_some(rng, word)
        }
        7 => pct(rng.below(256) as u8, rng.below(2) == 0),
        _ => rng.pick(ODD).to_string(),
    }
}

/// `word` with about one byte in five percent-encoded, in either hex case.
fn encode_some(rng: &mut Rng, word: &str) -> String {
    word.bytes()
        .map(|b| match rng.below(5) {
            0 => pct(b, rng.below(2) == 0),
            _ => char::from(b).to_string(),
        })
        .collect()
}

fn random_path(rng: &mut Rng) -> String {
    let n = 1 + rng.below(4);
    let mut path = String::new();
    for i in 0..n {
        path.push('/');
        if rng.below(12) == 0 {
            path.push('/');
        }
        // Mostly a route's first word first, so protected routes are hit.
        match i == 0 && rng.below(3) > 0 {
            true => {
                let word = rng.pick(&["api", "items", "files"]);
                path.push_str(&encode_some(rng, word))
            }
            false => path.push_str(&segment(rng)),
        }
    }
    if rng.below(6) == 0 {
        path.push('/');
    }
    path
}

/// The gate's routes: pattern and whether it needs a token, in Starlette's
/// first-match order (most specific first, as matchit decides).
const DIFF_ROUTES: &[(&str, bool)] = &[
    ("/api/health", false),
    ("/items/{id}/edit", true),
    ("/items/{id}", true),
    ("/api/{*rest}", true),
    ("/files/{*rest}", false),
    ("/{*rest}", false),
];

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_the_gate_and_starlette_route_every_forwarded_path_alike() {
    let routes_json = serde_json::to_string(DIFF_ROUTES).unwrap();
    let w = Worker::start_app("app_routes", &[("ROUTES", &routes_json)]).await;
    let mut routes = String::new();
    for (pattern, protected) in DIFF_ROUTES {
        routes.push_str(&format!("  - path: {pattern}\n    upstream: app\n"));
        if *protected {
            routes.push_str("    auth: p\n");
        }
    }
    let g = start_gate(&gate_yaml(&w.sock, &routes, "")).await;
    let auth = format!("Authorization: Bearer {}\r\n", token("diff"));

    const PATHS: usize = 2500;
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let paths: Vec<String> = (0..PATHS).map(|_| random_path(&mut rng)).collect();
    // Each path twice: without a token (a protected route must never reach
    // the worker) and with one (every route is compared).
    let mut jobs = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        jobs.push((format!("d{i}-anon"), p.clone(), String::new()));
        jobs.push((format!("d{i}-auth"), p.clone(), auth.clone()));
    }
    let addr = g.addr;
    let mut answers: HashMap<String, (String, RawResp)> = HashMap::new();
    for chunk in jobs.chunks(8) {
        let tasks: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|(id, path, extra)| {
                tokio::spawn(async move {
                    let request = format!(
                        "GET {path} HTTP/1.1\r\nHost: gate.test\r\nX-Request-Id: {id}\r\n\
                         {extra}Connection: close\r\n\r\n"
                    );
                    let out = raw_exchange(addr, request.as_bytes(), Duration::from_secs(10)).await;
                    (id, path, out)
                })
            })
            .collect();
        for t in tasks {
            let (id, path, out) = t.await.unwrap();
            match out {
                RawOutcome::Response(r) => {
                    answers.insert(id, (path, r));
                }
                other => panic!("{path:?}: {other:?}"),
            }
        }
    }

    // Let the access log catch up, then index it by request id.
    let last = format!("d{}-auth", PATHS - 1);
    wait_log_line(&g, &last).await;
    let log: HashMap<String, Value> = g
        .stdout()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["request_id"].as_str()?.to_string(), v)))
        .collect();

    let (mut forwarded, mut protected_forwarded) = (0, 0);
    let (mut refused, mut unauthorized, mut mismatches) = (0, 0, Vec::new());
    for (id, (path, r)) in &answers {
        let body: Option<Value> = serde_json::from_slice(&r.body).ok();
        let from_worker =
            r.status == 200 && body.as_ref().is_some_and(|v| v.get("route").is_some());
        if !from_worker {
            match r.status {
                400 => refused += 1,
                401 => unauthorized += 1,
                s => mismatches.push(format!("{path:?}: unexpected {s}")),
            }
            continue;
        }
        forwarded += 1;
        let v = r.json();
        let worker_route = v["route"].as_str().unwrap();
        if DIFF_ROUTES.iter().any(|(p, a)| *a && *p == worker_route) {
            protected_forwarded += 1;
        }
        let Some(line) = log.get(id) else {
            mismatches.push(format!("{path:?}: no access-log line"));
            continue;
        };
        let gate_route = line["route"].as_str().unwrap_or("");
        if gate_route != worker_route {
            mismatches.push(format!(
                "{path:?}: gate routed {gate_route}, worker ran {worker_route}"
            ));
        }
        let protected = DIFF_ROUTES.iter().any(|(p, a)| *a && *p == worker_route);
        if protected && id.ends_with("-anon") {
            mismatches.push(format!(
                "{path:?}: protected {worker_route} reached without a token"
            ));
        }
        // What the worker decoded is what the gate routed and logged.
        let logged = line["path"].as_str().unwrap_or("");
        if v["raw_path"] != logged
            || v["path"].as_str().unwrap().as_bytes() != percent_decode(logged)
        {
            mismatches.push(format!(
                "{path:?}: gate logged {logged:?}, worker saw {} / raw {}",
                v["path"], v["raw_path"]
            ));
        }
    }
    let stats = w.direct(Method::GET, "/__stats").await.json();
    println!(
        "differential: {} requests ({PATHS} paths × with/without token), {forwarded} forwarded, \
         {protected_forwarded} of them to a protected route, {refused} refused 400, \
         {unauthorized} answered 401, mismatches = {}",
        answers.len(),
        mismatches.len()
    );
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    assert_eq!(stats["unauthenticated_protected"], 0);
    // The generator must reach every kind of answer, or it tests too little.
    let n = answers.len();
    assert!(
        forwarded > n * 2 / 5
            && protected_forwarded > n / 20
            && refused > n / 20
            && unauthorized > n / 20,
        "too few of some kind of answer"
    );
}

// ---------------------------------------------------------------- headers

#[tokio::test]
async fn underscore_spellings_of_gate_headers_never_reach_the_worker() {
    let w = Worker::start().await;
    let g = start_gate(&gate_yaml(&w.sock, ECHO_ROUTES, "")).await;
    let t = token("alice");
    let forged = "X_Auth_Subject: admin\r\nx-auth_subject: admin\r\nX_Forwarded_For: 6.6.6.6\r\n\
                  X_Forwarded_Host: evil.test\r\nX_Request_Id: forged\r\nx_trace: kept\r\n";
    for target in ["/echo/x", "/echo"] {
        let extra = match target {
            "/echo/x" => format!("Authorization: Bearer {t}\r\n{forged}"),
            _ => forged.to_string(),
        };
        let r = raw_get(&g, target, &extra).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        for name in [
            "x_auth_subject",
            "x-auth_subject",
            "x_forwarded_for",
            "x_forwarded_host",
            "x_request_id",
        ] {
            assert!(
                echoed_header(&v, name).is_empty(),
                "{target}: {name} reached the worker"
            );
        }
        assert_eq!(echoed_header(&v, "x_trace"), ["kept"], "{target}");
        let subject = echoed_header(&v, "x-auth-subject");
        match target {
            "/echo/x" => assert_eq!(subject, ["alice"]),
            _ => assert!(subject.is_empty()),
        }
    }

    // `headers: { underscores: drop }`: nginx's default, every such name goes.
    let g = start_gate(&gate_yaml(
        &w.sock,
        ECHO_ROUTES,
        "headers: { underscores: drop }\n",
    ))
    .await;
    let v = raw_get(&g, "/echo", "x_trace: gone\r\nx-trace: kept\r\n")
        .await
        .json();
    assert!(echoed_header(&v, "x_trace").is_empty());
    assert_eq!(echoed_header(&v, "x-trace"), ["kept"]);
}

#[tokio::test]
async fn connection_cannot_remove_the_headers_the_gate_sets() {
    let w = Worker::start().await;
    let g = start_gate(&gate_yaml(&w.sock, ECHO_ROUTES, "")).await;
    let t = token("alice");
    let extra = format!(
        "Authorization: Bearer {t}\r\nX-Request-Id: keep-me\r\nX-Custom: gone\r\n\
         Connection: x-auth-subject, x-request-id, x-forwarded-for, x-forwarded-proto, x-custom\r\n"
    );
    let r = raw_get(&g, "/echo/x", &extra).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(echoed_header(&v, "x-auth-subject"), ["alice"]);
    // X-Request-Id is the gate's to keep or replace, whatever Connection says.
    assert_eq!(r.header("x-request-id"), Some("keep-me"));
    assert_eq!(echoed_header(&v, "x-request-id"), ["keep-me"]);
    assert_eq!(echoed_header(&v, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echoed_header(&v, "x-forwarded-proto"), ["http"]);
    assert!(
        echoed_header(&v, "x-custom").is_empty(),
        "Connection-named header kept"
    );
}

#[tokio::test]
async fn h2_split_cookies_reach_the_worker_as_one_line() {
    let w = Worker::start().await;
    let g = start_gate(&gate_yaml(&w.sock, ECHO_ROUTES, "")).await;
    let req = http::Request::builder()
        .method(Method::GET)
        .uri(format!("http://{}/echo", g.addr))
        .header("cookie", "session=abc")
        .header("cookie", "theme=dark")
        .header("cookie", "lang=en")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send_h2(g.addr, req).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    let v = r.json();
    assert_eq!(
        echoed_header(&v, "cookie"),
        ["session=abc; theme=dark; lang=en"]
    );
}

#[tokio::test]
async fn connection_cannot_hide_a_declared_body_from_max_body() {
    let w = Worker::start().await;
    let g = start_gate(&gate_yaml(
        &w.sock,
        ECHO_ROUTES,
        "limits: { max_body: 1KiB }\n",
    ))
    .await;
    let before = w.hits().await;
    let r = raw_get(
        &g,
        "/echo",
        "Content-Length: 50000000\r\nConnection: content-length\r\n",
    )
    .await;
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "payload_too_large");
    // A head over max_header_bytes is refused even if Connection names it.
    let big = "a".repeat(20 * 1024);
    let r = raw_get(
        &g,
        "/echo",
        &format!("X-Big: {big}\r\nConnection: x-big\r\n"),
    )
    .await;
    assert_eq!(r.status, 431);
    assert_eq!(w.hits().await, before, "a request reached the worker");
}

#[tokio::test]
async fn malformed_hosts_are_refused_before_the_worker() {
    let w = Worker::start().await;
    let yaml = gate_yaml(&w.sock, ECHO_ROUTES, "allowed_hosts: [\"*.example.com\"]\n");
    let g = start_gate(&yaml).await;
    let before = w.hits().await;
    for host in [
        "evil.com/x.example.com",
        "evil.com?.example.com",
        "user@evil.com/.example.com",
        "evil.com%2f.example.com",
        "x y.example.com",
        "",
    ] {
        let request = format!("GET /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        match raw_exchange(g.addr, request.as_bytes(), Duration::from_secs(10)).await {
            RawOutcome::Response(r) => {
                assert_eq!(r.status, 400, "Host {host:?}");
                // hyper refuses some forms itself; the gate's own answers are JSON.
                if !r.body.is_empty() {
                    assert_eq!(r.json()["error"], "bad_request", "Host {host:?}");
                }
            }
            other => panic!("Host {host:?}: {other:?}"),
        }
    }
    let ok = "GET /echo HTTP/1.1\r\nHost: api.example.com:8080\r\nConnection: close\r\n\r\n";
    match raw_exchange(g.addr, ok.as_bytes(), Duration::from_secs(10)).await {
        RawOutcome::Response(r) => assert_eq!(r.status, 200),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.hits().await, before + 1);
}

#[tokio::test]
async fn only_a_real_websocket_handshake_takes_its_token_from_the_query() {
    let w = Worker::start().await;
    let g = start_gate(&gate_yaml(&w.sock, ECHO_ROUTES, "")).await;
    let t = token("alice");
    // uvicorn serves these as plain HTTP: so must the gate.
    for upgrade in [
        "Upgrade: websocket, x\r\n",
        "Upgrade: websocket\r\nUpgrade: h2c\r\n",
        "Upgrade: websocket\r\nContent-Length: 3\r\n",
    ] {
        let extra = format!("{upgrade}Connection: upgrade\r\n");
        let target = format!("/echo/x?access_token={t}");
        let r = raw_get(&g, &target, &extra).await;
        assert_eq!(
            r.status,
            401,
            "{upgrade:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
}

#[tokio::test]
async fn forwarding_headers_the_gate_does_not_set_never_reach_the_worker() {
    let w = Worker::start().await;
    let g = start_gate(&gate_yaml(&w.sock, ECHO_ROUTES, "")).await;
    let extra = "Forwarded: for=8.8.8.8;proto=https;host=evil\r\nX-Forwarded-Port: 443\r\n\
                 X-Forwarded-Prefix: /admin\r\nX-Real-IP: 8.8.8.8\r\nX-Original-URL: /admin\r\n\
                 X-Keep: yes\r\n";
    let v = raw_get(&g, "/echo", extra).await.json();
    for name in [
        "forwarded",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-real-ip",
        "x-original-url",
    ] {
        assert!(
            echoed_header(&v, name).is_empty(),
            "{name} reached the worker"
        );
    }
    assert_eq!(echoed_header(&v, "x-keep"), ["yes"]);
}

#[tokio::test]
async fn raw_non_ascii_in_the_path_is_refused() {
    let w = Worker::start().await;
    let g = start_gate(&gate_yaml(&w.sock, ECHO_ROUTES, "")).await;
    let request = b"GET /echo/caf\xc3\xa9%20 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    match raw_exchange(g.addr, request, Duration::from_secs(10)).await {
        RawOutcome::Response(r) => {
            assert_eq!(r.status, 400);
            assert_eq!(r.json()["error"], "bad_request");
        }
        other => panic!("{other:?}"),
    }
}
