//! The response cache end to end: the real gate in front of a real uvicorn
//! worker whose `/cached/{name}` endpoint sets Cache-Control, Vary,
//! Set-Cookie and Surrogate-Key from its query and counts its calls, so
//! every test reads what reached the worker.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::Full;

const ADMIN_TOKEN: &str = "cache-admin-token-4c1e";
const SECRET: &str = "cache-test-secret-that-is-at-least-32-bytes";

/// Caching routes: `/cached/{*rest}` (anonymous), `/private/{*rest}`
/// (JWT, `authorized: true`), `/user/{*rest}` (JWT, `key_claim: sub`);
/// everything else uncached. gzip and br compression on JSON.
fn yaml(sock: &Path, cache: &str) -> String {
    format!(
        "listen:\n  - address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n  token_env: CACHE_ADMIN_TOKEN\n\
         upstreams:\n  app:\n    sockets: [\"{sock}\"]\n\
         auth:\n  users:\n    algorithms: [HS256]\n    secret_env: CACHE_JWT_SECRET\n\
         \x20   forward_claims: {{ sub: X-User }}\n\
         compression:\n  algorithms: [gzip, br]\n  min_size: 1024\n  content_types: [application/json]\n\
         cache:\n{cache}\
         routes:\n\
         \x20 - path: /private/{{*rest}}\n    upstream: app\n    auth: users\n    cache: {{ authorized: true }}\n\
         \x20 - path: /user/{{*rest}}\n    upstream: app\n    auth: users\n    cache: {{ authorized: true, key_claim: sub }}\n\
         \x20 - path: /cached/{{*rest}}\n    upstream: app\n    cache: true\n\
         \x20 - path: /{{*rest}}\n    upstream: app\n",
        sock = sock.display()
    )
}

const DEFAULT_CACHE: &str = "  max_size: 8MiB\n  lock_timeout: 5s\n";

async fn start(cache: &str) -> (Worker, Gate) {
    let w = Worker::start().await;
    let g = Gate::start_env(
        &yaml(&w.sock, cache),
        &[
            ("CACHE_ADMIN_TOKEN", ADMIN_TOKEN),
            ("CACHE_JWT_SECRET", SECRET),
        ],
    )
    .await;
    (w, g)
}

async fn get_h(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    send_with(addr, Method::GET, path, headers).await
}

fn x_cache(r: &Resp) -> &str {
    r.header("x-cache").unwrap_or("-")
}

fn n(r: &Resp) -> u64 {
    r.json()["n"].as_u64().expect("n")
}

/// A request to the admin listener with the admin token.
async fn admin(g: &Gate, method: Method, path: &str) -> Resp {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    send_with(g.admin, method, path, &[("authorization", &auth)]).await
}

/// The value of an unlabelled metric, or of `name{label}`.
async fn metric(g: &Gate, sample: &str) -> f64 {
    let text = get(g.admin, "/metrics").await.text();
    text.lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// HS256 tokens minted by the test support tool (PyJWT).
fn tokens(subs: &[&str]) -> Vec<String> {
    let tool: PathBuf = workspace_root().join("integration-tests/tests/support/jwt_tool.py");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let calls: Vec<Vec<String>> = subs
        .iter()
        .map(|s| {
            let claims = serde_json::json!({ "sub": s, "exp": exp });
            [
                "sign",
                "--alg",
                "HS256",
                "--secret",
                SECRET,
                "--claims",
                &claims.to_string(),
            ]
            .iter()
            .map(|x| x.to_string())
            .collect()
        })
        .collect();
    let mut child = Command::new(venv().join("bin").join("python"))
        .arg(tool)
        .arg("batch")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("jwt_tool.py");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&calls).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn a_stored_response_answers_until_it_expires() {
    let (w, g) = start(DEFAULT_CACHE).await;
    let first = get(g.addr, "/cached/a?cc=max-age%3D1").await;
    assert_eq!(first.status, 200);
    assert_eq!(x_cache(&first), "MISS");
    let second = get(g.addr, "/cached/a?cc=max-age%3D1").await;
    assert_eq!(x_cache(&second), "HIT");
    assert_eq!(n(&second), n(&first));
    assert_eq!(second.header("age"), Some("0"));
    assert_eq!(w.hits().await, 1);
    // Another query is another key; an uncached route is never stored.
    get(g.addr, "/cached/a?cc=max-age%3D1&x=1").await;
    assert_eq!(w.hits().await, 2);
    let plain = get(g.addr, "/echo/x").await;
    assert!(plain.header("x-cache").is_none());
    // Stale after max-age: the worker again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let third = get(g.addr, "/cached/a?cc=max-age%3D1").await;
    assert_eq!(x_cache(&third), "MISS");
    assert_eq!(w.hits().await, 4);
    assert!(metric(&g, "asgi_gate_cache_requests_total{result=\"hit\"}").await >= 1.0);
    // The access log says what the cache did, on caching routes only.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !g.stdout().contains("\"cache\":\"hit\"") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = g.stdout();
    assert!(out.contains("\"cache\":\"hit\""), "{out}");
    assert!(out.contains("\"cache\":\"miss\""), "{out}");
    let echo_line = out.lines().find(|l| l.contains("\"/echo/x\"")).unwrap();
    assert!(!echo_line.contains("\"cache\""), "{echo_line}");
}

#[tokio::test]
async fn private_no_store_set_cookie_and_authorization_are_never_stored() {
    let (w, g) = start(DEFAULT_CACHE).await;
    let cases: [(&str, &[(&str, &str)]); 6] = [
        ("/cached/p?cc=private%2C%20max-age%3D60", &[]),
        ("/cached/s?cc=no-store%2C%20max-age%3D60", &[]),
        ("/cached/nc?cc=no-cache%2C%20max-age%3D60", &[]),
        ("/cached/c?cookie=1", &[]),
        (
            "/cached/auth?cc=public%2C%20max-age%3D60",
            &[("authorization", "Bearer x")],
        ),
        ("/cached/rq", &[("cache-control", "no-store")]),
    ];
    let mut expected = 0;
    for (path, headers) in cases {
        for _ in 0..2 {
            let r = get_h(g.addr, path, headers).await;
            assert_eq!(r.status, 200, "{path}");
            assert_ne!(x_cache(&r), "HIT", "{path}");
            expected += 1;
        }
        assert_eq!(w.hits().await, expected, "{path} was served from the cache");
    }
    // The Authorization request did not leave a copy for others either.
    let r = get(g.addr, "/cached/auth?cc=public%2C%20max-age%3D60").await;
    assert_eq!(x_cache(&r), "MISS");
    assert_eq!(r.json()["authorized"], false);
}

#[tokio::test]
async fn vary_by_a_custom_header_and_by_the_coding_sent() {
    let (w, g) = start(DEFAULT_CACHE).await;
    let path = "/cached/v?vary=X-Tenant";
    for (tenant, hits) in [("a", 1), ("b", 2), ("a", 2), ("b", 2)] {
        let r = get_h(g.addr, path, &[("x-tenant", tenant)]).await;
        assert_eq!(r.json()["tenant"], tenant);
        assert_eq!(w.hits().await, hits, "tenant {tenant}");
    }
    let none = get(g.addr, path).await;
    assert_eq!(none.json()["tenant"], serde_json::Value::Null);
    assert_eq!(w.hits().await, 3);

    // The gate compresses: one copy per coding it sends, each decodable.
    let path = "/cached/enc?kib=4";
    let mut bodies = Vec::new();
    for round in 0..2 {
        for ae in ["gzip", "br", "identity"] {
            let r = get_h(g.addr, path, &[("accept-encoding", ae)]).await;
            let expect_hit = round == 1;
            assert_eq!(x_cache(&r) == "HIT", expect_hit, "{ae} round {round}");
            let plain = match r.header("content-encoding") {
                Some("gzip") => {
                    let mut out = Vec::new();
                    flate2::read::GzDecoder::new(&r.body[..])
                        .read_to_end(&mut out)
                        .unwrap();
                    out
                }
                Some("br") => {
                    let mut out = Vec::new();
                    brotli::Decompressor::new(&r.body[..], 4096)
                        .read_to_end(&mut out)
                        .unwrap();
                    out
                }
                None => r.body.to_vec(),
                Some(other) => panic!("coding {other}"),
            };
            assert_eq!(r.header("content-encoding").unwrap_or("identity"), ae);
            bodies.push(plain);
        }
    }
    assert_eq!(w.hits().await, 6);
    // Every copy is one of the worker's three answers, byte for byte.
    for b in &bodies {
        let v: serde_json::Value = serde_json::from_slice(b).unwrap();
        assert_eq!(v["name"], "enc");
    }
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_while_one_refresh_runs() {
    let (w, g) = start(DEFAULT_CACHE).await;
    let path = "/cached/swr?cc=max-age%3D1%2C%20stale-while-revalidate%3D30&sleep_ms=1000";
    let first = get(g.addr, path).await;
    assert_eq!(w.hits().await, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let started = Instant::now();
    let stale: Vec<Resp> = futures_util::future::join_all((0..20).map(|_| get(g.addr, path))).await;
    // Served at once, without waiting for the 1 s refresh.
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    for r in &stale {
        assert_eq!(x_cache(r), "STALE");
        assert_eq!(n(r), n(&first));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(w.hits().await, 2, "exactly one refresh");
    let fresh = get(g.addr, path).await;
    assert_eq!(x_cache(&fresh), "HIT");
    assert_eq!(n(&fresh), n(&first) + 1);
}

#[tokio::test]
async fn stale_if_error_answers_when_the_worker_fails() {
    let (w, g) = start(DEFAULT_CACHE).await;
    let sie = "/cached/sie?cc=max-age%3D1%2C%20stale-if-error%3D60";
    let plain = "/cached/plain?cc=max-age%3D1";
    let first = get(g.addr, sie).await;
    get(g.addr, plain).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        w.direct(Method::POST, "/cached-failing?on=1").await.status,
        200
    );
    // The worker answers 503: the stale copy instead, within stale-if-error.
    let r = get(g.addr, sie).await;
    assert_eq!((r.status.as_u16(), x_cache(&r)), (200, "STALE"));
    assert_eq!(n(&r), n(&first));
    // Without stale-if-error the failure goes through.
    let r = get(g.addr, plain).await;
    assert_eq!((r.status.as_u16(), x_cache(&r)), (503, "MISS"));
    // No worker at all (the gate's 502): the stale copy too.
    let mut w = w;
    w.kill();
    let r = get(g.addr, sie).await;
    assert_eq!((r.status.as_u16(), x_cache(&r)), (200, "STALE"));
}

#[tokio::test]
async fn validators_are_answered_from_the_stored_copy() {
    let (w, g) = start(DEFAULT_CACHE).await;
    let path = "/cached/etag?etag=v1";
    // The filling request asks the worker for the whole response.
    let first = get_h(g.addr, path, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!((first.status.as_u16(), x_cache(&first)), (200, "MISS"));
    assert_eq!(first.json()["if_none_match"], serde_json::Value::Null);
    let r = get_h(g.addr, path, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!((r.status.as_u16(), x_cache(&r)), (304, "HIT"));
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some("\"v1\""));
    let r = get_h(g.addr, path, &[("if-none-match", "\"v2\"")]).await;
    assert_eq!((r.status.as_u16(), x_cache(&r)), (200, "HIT"));
    assert_eq!(n(&r), n(&first));
    assert_eq!(w.hits().await, 1);
}

#[tokio::test]
async fn concurrent_misses_coalesce_into_one_worker_request() {
    let (w, g) = start(DEFAULT_CACHE).await;
    let path = "/cached/slow?sleep_ms=300";
    let all: Vec<Resp> = futures_util::future::join_all((0..200).map(|_| get(g.addr, path))).await;
    assert_eq!(w.hits().await, 1);
    let first = n(&all[0]);
    for r in &all {
        assert_eq!(r.status, 200);
        assert_eq!(n(r), first);
    }
    assert_eq!(
        metric(&g, "asgi_gate_cache_requests_total{result=\"miss\"}").await,
        1.0
    );
    let coalesced = metric(&g, "asgi_gate_cache_coalesced_total").await;
    assert!(coalesced >= 1.0, "{coalesced} waited");
}

#[tokio::test]
async fn a_failed_fill_releases_its_waiters_to_the_worker() {
    let (w, g) = start("  max_size: 8MiB\n  lock_timeout: 20s\n").await;
    for (i, query) in ["status=500", "cc=no-store"].iter().enumerate() {
        let path = format!("/cached/fail{i}?sleep_ms=300&{query}");
        let before = w.hits().await;
        let started = Instant::now();
        let all: Vec<Resp> =
            futures_util::future::join_all((0..30).map(|_| get(g.addr, &path))).await;
        // Woken when the fill failed, not after lock_timeout (20 s).
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{query}: {:?}",
            started.elapsed()
        );
        assert!(all.iter().all(|r| x_cache(r) == "MISS"), "{query}");
        assert_eq!(w.hits().await - before, 30, "{query}");
    }
}

#[tokio::test]
async fn purge_by_surrogate_key_by_prefix_and_all() {
    let (w, g) = start(DEFAULT_CACHE).await;
    let p1 = "/cached/p/1?tags=items%20item-1";
    let p2 = "/cached/p/2?tags=items";
    let q1 = "/cached/q/1";
    for p in [p1, p2, q1] {
        let r = get(g.addr, p).await;
        // The tags are the gate's: never sent on.
        assert!(r.header("surrogate-key").is_none());
        assert_eq!(x_cache(&get(g.addr, p).await), "HIT");
    }
    assert_eq!(w.hits().await, 3);
    let refused = send_with(g.admin, Method::DELETE, "/cache", &[]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(x_cache(&get(g.addr, q1).await), "HIT");

    let r = admin(&g, Method::DELETE, "/cache?key=item-1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["purged"], 1);
    assert_eq!(x_cache(&get(g.addr, p1).await), "MISS");
    assert_eq!(x_cache(&get(g.addr, p2).await), "HIT");

    let r = admin(&g, Method::DELETE, "/cache?prefix=/cached/p/").await;
    assert_eq!(r.json()["purged"], 2, "{}", g.log());
    assert_eq!(x_cache(&get(g.addr, p2).await), "MISS");
    assert_eq!(x_cache(&get(g.addr, q1).await), "HIT");

    let r = admin(&g, Method::DELETE, "/cache").await;
    assert_eq!(r.status, 200);
    assert_eq!(x_cache(&get(g.addr, q1).await), "MISS");
}

#[tokio::test]
async fn the_memory_bound_holds_with_ten_times_more_keys_than_fit() {
    // About 8.6 KB per entry: some 120 fit in 1 MiB; 1,200 keys are asked.
    let (w, g) = start("  max_size: 1MiB\n  max_entry_size: 64KiB\n").await;
    let addr = g.addr;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            tokio::spawn(async move {
                let mut c = H1::connect(addr).await.unwrap();
                for i in (t..1200).step_by(8) {
                    // Identity: 8 KiB of one letter would compress to little.
                    let r = req(Method::GET, addr, &format!("/cached/k{i}?kib=8"))
                        .header("accept-encoding", "identity")
                        .body(Full::default())
                        .unwrap();
                    let r = c.send(r).await.unwrap();
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(w.hits().await, 1200);
    let bytes = metric(&g, "asgi_gate_cache_bytes").await;
    let entries = metric(&g, "asgi_gate_cache_entries").await;
    assert!(bytes <= 1024.0 * 1024.0, "{bytes} bytes held");
    assert!(entries > 10.0 && entries < 130.0, "{entries} entries");
}

#[tokio::test]
async fn cached_responses_still_need_the_token_and_stay_per_user() {
    let (w, g) = start(DEFAULT_CACHE).await;
    let t = tokens(&["alice", "bob"]);
    let (alice, bob) = (format!("Bearer {}", t[0]), format!("Bearer {}", t[1]));
    let shared = "/private/doc?cc=public%2C%20max-age%3D60";
    let r = get_h(g.addr, shared, &[("authorization", &alice)]).await;
    assert_eq!((r.status.as_u16(), x_cache(&r)), (200, "MISS"));
    assert_eq!(
        x_cache(&get_h(g.addr, shared, &[("authorization", &bob)]).await),
        "HIT"
    );
    assert_eq!(w.hits().await, 1);
    // No token, a bad token: refused before the cache is asked.
    get(g.addr, shared)
        .await
        .assert_rejection(401, "unauthorized");
    get_h(g.addr, shared, &[("authorization", "Bearer a.b.c")])
        .await
        .assert_rejection(401, "invalid_token");
    // Without `public`/`s-maxage` a response to a token is not stored.
    let own = "/private/own?cc=max-age%3D60";
    get_h(g.addr, own, &[("authorization", &alice)]).await;
    get_h(g.addr, own, &[("authorization", &alice)]).await;
    assert_eq!(w.hits().await, 3);
    // key_claim: one copy per user, never another user's.
    let me = "/user/me?cc=s-maxage%3D60";
    let a = get_h(g.addr, me, &[("authorization", &alice)]).await;
    let b = get_h(g.addr, me, &[("authorization", &bob)]).await;
    assert_eq!(
        (a.json()["user"].as_str(), x_cache(&a)),
        (Some("alice"), "MISS")
    );
    assert_eq!(
        (b.json()["user"].as_str(), x_cache(&b)),
        (Some("bob"), "MISS")
    );
    let a2 = get_h(g.addr, me, &[("authorization", &alice)]).await;
    assert_eq!(
        (a2.json()["user"].as_str(), x_cache(&a2)),
        (Some("alice"), "HIT")
    );
    get(g.addr, me).await.assert_rejection(401, "unauthorized");
}

/// A request with its own `Host` (the harness's `req` sets one).
async fn get_host(addr: SocketAddr, path: &str, host: &str, extra: &[(&str, &str)]) -> Resp {
    let mut b = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("host", host);
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    send_h1(addr, b.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn poisoning_attempts_do_not_reach_other_clients() {
    let (w, g) = start(DEFAULT_CACHE).await;
    // Forwarding headers from an untrusted client are replaced, so they
    // cannot change a stored answer.
    let poisoned = get_h(
        g.addr,
        "/cached/xfh",
        &[("x-forwarded-host", "evil.example")],
    )
    .await;
    assert_ne!(poisoned.json()["forwarded_host"], "evil.example");
    let clean = get(g.addr, "/cached/xfh").await;
    assert_eq!(x_cache(&clean), "HIT");
    assert_ne!(clean.json()["forwarded_host"], "evil.example");
    // The Host is in the key.
    let a = get_host(g.addr, "/cached/host", "a.example", &[]).await;
    let b = get_host(g.addr, "/cached/host", "b.example", &[]).await;
    assert_eq!((x_cache(&a), x_cache(&b)), ("MISS", "MISS"));
    assert_eq!(b.json()["host"], "b.example");
    // Encoded forms of one path share the entry the worker would answer.
    let hits = w.hits().await;
    assert_eq!(x_cache(&get(g.addr, "/cached/%78fh").await), "HIT");
    assert_eq!(w.hits().await, hits);
    // A HEAD is not stored as the GET's body; a GET's copy answers a HEAD.
    let head = send_with(g.addr, Method::HEAD, "/cached/head", &[]).await;
    assert_eq!(head.status, 200);
    let full = get(g.addr, "/cached/head").await;
    assert_eq!(x_cache(&full), "MISS");
    assert!(!full.body.is_empty());
    let head = send_with(g.addr, Method::HEAD, "/cached/head", &[]).await;
    assert_eq!(x_cache(&head), "HIT");
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(full.body.len().to_string().as_str())
    );
    // A Range request goes to the worker and leaves nothing behind.
    let ranged = get_h(g.addr, "/cached/range", &[("range", "bytes=0-3")]).await;
    assert_eq!(x_cache(&ranged), "BYPASS");
    assert_eq!(x_cache(&get(g.addr, "/cached/range").await), "MISS");
}

#[tokio::test]
async fn a_get_with_a_body_neither_fills_nor_is_served_from_the_cache() {
    let (w, g) = start(DEFAULT_CACHE).await;
    // A "fat GET": the key does not hold the body, while the worker reads it.
    let fat = req(Method::GET, g.addr, "/cached/fat")
        .header("content-length", "4")
        .body(Full::new(Bytes::from_static(b"evil")))
        .unwrap();
    let r = send_h1(g.addr, fat).await.unwrap();
    assert_eq!(r.json()["body"], "evil");
    assert_eq!(x_cache(&r), "BYPASS");
    let clean = get(g.addr, "/cached/fat").await;
    assert_eq!(x_cache(&clean), "MISS");
    assert_eq!(clean.json()["body"], "");
    // And a stored copy is not an answer to one either.
    let fat = req(Method::GET, g.addr, "/cached/fat")
        .header("content-length", "4")
        .body(Full::new(Bytes::from_static(b"evil")))
        .unwrap();
    let r = send_h1(g.addr, fat).await.unwrap();
    assert_eq!(
        (x_cache(&r), r.json()["body"].as_str()),
        ("BYPASS", Some("evil"))
    );
    assert_eq!(w.hits().await, 3);
}

#[tokio::test]
async fn a_client_that_reads_slowly_does_not_hold_up_the_others() {
    let (w, g) = start("  max_size: 64MiB\n  max_entry_size: 16MiB\n  lock_timeout: 5s\n").await;
    // 8 MiB: far more than the gate's and the kernel's buffers hold.
    let path = "/cached/slowreader?kib=8192";
    // The first miss fills the key, and its client reads nothing.
    let mut slow = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nhost: {}\r\n\r\n", g.addr);
    tokio::io::AsyncWriteExt::write_all(&mut slow, head.as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(w.hits().await, 1);
    // Another client is not made to wait for it (lock_timeout, 5 s).
    let started = Instant::now();
    let r = get(g.addr, path).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(w.hits().await, 1);
    drop(slow);
}

#[tokio::test]
async fn a_head_in_the_stale_while_revalidate_window_refreshes_the_copy() {
    let (w, g) = start(DEFAULT_CACHE).await;
    let path = "/cached/swr-head?cc=max-age%3D1%2C%20stale-while-revalidate%3D30";
    let first = get(g.addr, path).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let head = send_with(g.addr, Method::HEAD, path, &[("if-none-match", "\"x\"")]).await;
    assert_eq!((head.status.as_u16(), x_cache(&head)), (200, "STALE"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.hits().await, 2, "one refresh");
    // The refresh it started was stored.
    let fresh = get(g.addr, path).await;
    assert_eq!(x_cache(&fresh), "HIT");
    assert_eq!(n(&fresh), n(&first) + 1);
    assert_eq!(fresh.json()["if_none_match"], serde_json::Value::Null);
}
