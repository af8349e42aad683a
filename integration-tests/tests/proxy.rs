//! The normal request path: forwarding, request ids, bodies, pooling,
//! forwarded headers, hop-by-hop headers, routing rejections, h2c.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Method;
use http_body_util::Full;
use serde_json::json;

fn is_sane_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// GET /echo with one `x-request-id` header; returns (worker saw, client got).
async fn echo_with_id(g: &Gate, id: Option<&str>) -> (Vec<String>, String) {
    let mut b = req(Method::GET, g.addr, "/echo");
    if let Some(id) = id {
        b = b.header("x-request-id", id);
    }
    let r = send_h1(g.addr, b.body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r
        .header("x-request-id")
        .expect("x-request-id on response")
        .to_string();
    (echoed(&r.json(), "x-request-id"), got)
}

#[tokio::test]
async fn hello_and_request_ids() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", "")).await;

    let r = get(g.addr, "/hello").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"message": "hello"}));
    assert!(is_sane_id(r.header("x-request-id").expect("x-request-id")));

    // Absent: generated, the same one to the worker and back, unique.
    let (seen1, got1) = echo_with_id(&g, None).await;
    assert_eq!(seen1, vec![got1.clone()]);
    assert!(is_sane_id(&got1), "generated id {got1:?}");
    let (seen2, got2) = echo_with_id(&g, None).await;
    assert_eq!(seen2, vec![got2.clone()]);
    assert_ne!(got1, got2, "generated ids repeat");

    // Sane: kept as is (128 visible characters is the upper bound).
    let long_ok = "a".repeat(128);
    for id in ["abc-123_XYZ.789", "req:42/x=y~!", long_ok.as_str()] {
        let (seen, got) = echo_with_id(&g, Some(id)).await;
        assert_eq!(seen, vec![id.to_string()], "sane id not forwarded as is");
        assert_eq!(got, id, "sane id not returned as is");
    }

    // Insane: replaced by a generated one, the worker never sees the original.
    let too_long = "b".repeat(129);
    let way_too_long = "c".repeat(200);
    for id in [
        too_long.as_str(),
        way_too_long.as_str(),
        "has space",
        "tab\there",
    ] {
        let (seen, got) = echo_with_id(&g, Some(id)).await;
        assert_eq!(seen.len(), 1, "worker got {seen:?} for {id:?}");
        assert_ne!(seen[0], id, "insane id {id:?} reached the worker");
        assert!(is_sane_id(&seen[0]), "replacement {:?}", seen[0]);
        assert_eq!(got, seen[0], "client and worker ids differ");
    }
}

#[tokio::test]
async fn one_mib_upload_arrives_intact() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", "")).await;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let data = random_bytes(1 << 20, seed);
    let want = sha256_hex(&data);
    let r = post(g.addr, "/upload", data).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"bytes": 1 << 20, "sha256": want}));
}

/// The worker side of upstream connections is read from /proc/net/unix (see
/// `accepted_unix_conns`): after every request, the connections the worker
/// holds open are recorded by inode. A gate that reuses its pooled connection
/// shows one inode throughout; one that opens a connection per request shows
/// new inodes (or none at all, if it closes them).
#[tokio::test]
async fn sequential_requests_reuse_upstream_connections() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", "")).await;
    // The readiness probe's own connection may still be closing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = w.open_conns();

    let mut seen = HashSet::new();
    let mut keepalive = H1::connect(g.addr).await.unwrap();
    for i in 0..200 {
        // Half on one client connection, half on fresh ones: pooling is per
        // worker, not per client.
        let r = if i % 2 == 0 {
            keepalive.get("/hello").await
        } else {
            get(g.addr, "/hello").await
        };
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        let open: HashSet<u64> = w.open_conns().difference(&before).copied().collect();
        assert!(
            !open.is_empty(),
            "after request {i} the gate holds no connection to the worker (not pooling)"
        );
        seen.extend(open);
    }
    eprintln!(
        "distinct upstream connections over 200 requests: {}",
        seen.len()
    );
    assert!(
        seen.len() <= 2,
        "200 sequential requests used {} upstream connections",
        seen.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_max_connections_is_a_hard_cap() {
    let w = Worker::start().await;
    let g = Gate::start(&config(
        &w.sock,
        "pool: {max_connections: 4}\nconnect_timeout: 5s",
        "",
    ))
    .await;
    w.direct(Method::POST, "/concurrency/reset").await;

    let addr = g.addr;
    let tasks: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { get(addr, "/slow?ms=300").await }))
        .collect();
    // Meanwhile, sample the sockets the worker holds.
    let mut max_open = 0;
    while !tasks.iter().all(|t| t.is_finished()) {
        max_open = max_open.max(w.open_conns().len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["slept_ms"], 300);
    }
    let c = w.direct(Method::GET, "/concurrency").await.json();
    let max = c["max"].as_u64().unwrap();
    eprintln!("max /slow in flight {max}, max worker connections {max_open}");
    assert!(
        max <= 4,
        "worker saw {max} /slow in flight with max_connections 4"
    );
    assert!(max >= 2, "requests were serialized (max in flight {max})");
    assert!(max_open <= 4, "worker held {max_open} connections at once");
}

/// uvicorn closes idle keep-alive connections after 5 s. With the default
/// pool idle_timeout (4 s) the gate drops them first; with a longer one it must
/// notice the close and not send on a dead connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_after_idle_period_succeeds() {
    let w = Worker::start().await;
    let g_default = Gate::start(&config(&w.sock, "", "")).await;
    let g_long = Gate::start(&config(&w.sock, "pool: {idle_timeout: 60s}", "")).await;
    for g in [&g_default, &g_long] {
        assert_eq!(get(g.addr, "/hello").await.status, 200);
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    for (name, g) in [("default pool", &g_default), ("idle_timeout 60s", &g_long)] {
        let r = get(g.addr, "/echo?after=idle").await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_eq!(r.json()["query"], "after=idle", "{name}");
    }
}

#[tokio::test]
async fn forwarded_headers_from_untrusted_peer_are_overwritten() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", "")).await;
    let r = send_h1(
        g.addr,
        http::Request::builder()
            .uri("/echo")
            .header("host", "shop.example:8080")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example")
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let e = r.json();
    assert_eq!(echoed(&e, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(e["client"][0], "127.0.0.1");
    assert_eq!(echoed(&e, "x-forwarded-proto"), vec!["http"]);
    assert_eq!(e["scheme"], "http");
    assert_eq!(echoed(&e, "x-forwarded-host"), vec!["shop.example:8080"]);
    assert!(
        !e.to_string().contains("6.6.6.6"),
        "spoofed address reached the worker: {e}"
    );
    assert!(
        !e.to_string().contains("evil.example"),
        "spoofed host reached the worker: {e}"
    );
}

#[tokio::test]
async fn forwarded_for_from_trusted_peer_uses_rightmost_untrusted() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", "trusted_proxies: [127.0.0.1]")).await;
    let r = send_h1(
        g.addr,
        req(Method::GET, g.addr, "/echo")
            .header("x-forwarded-for", "6.6.6.6, 10.1.1.1")
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let e = r.json();
    assert_eq!(echoed(&e, "x-forwarded-for"), vec!["10.1.1.1"]);
    assert_eq!(e["client"][0], "10.1.1.1");
    assert_eq!(echoed(&e, "x-forwarded-proto"), vec!["http"]);
    assert_eq!(echoed(&e, "x-forwarded-host"), vec![g.addr.to_string()]);

    // Trusted hops on the right are skipped.
    let r = send_h1(
        g.addr,
        req(Method::GET, g.addr, "/echo")
            .header("x-forwarded-for", "6.6.6.6, 10.1.1.1, 127.0.0.1")
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(echoed(&r.json(), "x-forwarded-for"), vec!["10.1.1.1"]);
}

#[tokio::test]
async fn hop_by_hop_headers_never_reach_the_worker() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", "")).await;
    // Raw bytes, so no client library can drop or rewrite these headers.
    let request = "GET /echo HTTP/1.1\r\n\
                   Host: hop.test\r\n\
                   Connection: x-secret-hop, keep-alive\r\n\
                   X-Secret-Hop: do-not-forward\r\n\
                   Keep-Alive: timeout=99\r\n\
                   TE: trailers, deflate\r\n\
                   Proxy-Connection: keep-alive\r\n\
                   Upgrade: example-proto/1\r\n\
                   X-End-To-End: forwarded\r\n\
                   \r\n";
    let out = raw_exchange(g.addr, request.as_bytes(), Duration::from_secs(10)).await;
    let RawOutcome::Response(r) = out else {
        panic!("no response: {out:?}")
    };
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let e = r.json();
    let names: Vec<String> = echoed_headers(&e).into_iter().map(|(k, _)| k).collect();
    for hop in [
        "x-secret-hop",
        "keep-alive",
        "te",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            !names.iter().any(|n| n == hop),
            "{hop} reached the worker: {names:?}"
        );
    }
    for v in echoed(&e, "connection") {
        assert!(
            !v.contains("x-secret-hop"),
            "client's Connection reached the worker: {v}"
        );
    }
    assert_eq!(echoed(&e, "x-end-to-end"), vec!["forwarded"]);
    assert!(!e.to_string().contains("do-not-forward"));
    assert!(!e.to_string().contains("timeout=99"));
}

#[tokio::test]
async fn unmatched_path_is_404_and_wrong_method_is_405() {
    let w = Worker::start().await;
    let yaml = format!(
        "listen:\n  - address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n\
         upstreams:\n  app:\n    sockets: [\"{}\"]\n\
         routes:\n\
         \x20 - path: /hello\n    methods: [GET]\n    upstream: app\n\
         \x20 - path: /echo/{{*rest}}\n    upstream: app\n",
        w.sock.display()
    );
    let g = Gate::start(&yaml).await;
    assert_eq!(get(g.addr, "/hello").await.status, 200);
    let hits = w.hits().await;

    for path in ["/nope", "/hello/extra", "/"] {
        let r = get(g.addr, path).await;
        r.assert_rejection(404, "not_found");
    }
    for m in [Method::POST, Method::DELETE] {
        let r = send_h1(
            g.addr,
            req(m.clone(), g.addr, "/hello")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
        r.assert_rejection(405, "method_not_allowed");
        let allow = r.header("allow").expect("Allow header on 405");
        let allowed: Vec<&str> = allow.split(',').map(str::trim).collect();
        assert!(allowed.contains(&"GET"), "Allow: {allow}");
        assert!(!allowed.contains(&m.as_str()), "Allow: {allow}");
    }
    assert_eq!(
        w.hits().await,
        hits,
        "a rejected request reached the worker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", "")).await;
    let r = send_h2(
        g.addr,
        http::Request::builder()
            .method(Method::POST)
            .uri(g.url("/echo/h2?x=1"))
            .header("x-test", "over-h2")
            .body(Full::new(Bytes::from_static(b"twelve bytes")))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.version, http::Version::HTTP_2);
    assert!(r.header("x-request-id").is_some());
    let e = r.json();
    assert_eq!(e["method"], "POST");
    assert_eq!(e["path"], "/echo/h2");
    assert_eq!(e["query"], "x=1");
    assert_eq!(e["body_bytes"], 12);
    assert_eq!(echoed(&e, "x-test"), vec!["over-h2"]);
    // uvicorn speaks HTTP/1.1 and needs a Host: the gate derives it from :authority.
    assert_eq!(echoed(&e, "host"), vec![g.addr.to_string()]);

    // Several streams at once on one connection.
    let tcp = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let mut s = sender.clone();
            let uri = g.url(&format!("/echo?stream={i}"));
            tokio::spawn(async move {
                s.ready().await.unwrap();
                let resp = s
                    .send_request(
                        http::Request::builder()
                            .uri(uri)
                            .body(Full::<Bytes>::default())
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let status = resp.status();
                let body = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                (i, status, body)
            })
        })
        .collect();
    for t in tasks {
        let (i, status, body) = t.await.unwrap();
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["query"], format!("stream={i}"));
    }
}

#[tokio::test]
async fn responses_stream_through_unbuffered() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", "")).await;
    let mut c = H1::connect(g.addr).await.unwrap();
    let t0 = std::time::Instant::now();
    let resp = c
        .send_streaming(
            req(Method::GET, g.addr, "/sse")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = resp.into_body();
    let mut text = String::new();
    let mut first_event_at = None;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        if let Ok(data) = frame.unwrap().into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
            if first_event_at.is_none() && text.contains("data: 0") {
                first_event_at = Some(t0.elapsed());
            }
        }
    }
    let total = t0.elapsed();
    assert_eq!(
        text,
        "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n"
    );
    let first = first_event_at.unwrap();
    // Events are 200 ms apart: a buffering proxy delivers the first one
    // together with the last (relative, so a loaded machine does not matter).
    assert!(
        total >= Duration::from_millis(750) && total - first >= Duration::from_millis(500),
        "first event after {first:?}, stream done after {total:?}"
    );
}

#[tokio::test]
async fn big_response_and_odd_paths_arrive_unchanged() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", "")).await;
    let direct = w.direct(Method::GET, "/big").await;
    let via = get(g.addr, "/big").await;
    assert_eq!(via.status, 200);
    assert!(via.body.len() > 60_000, "{} bytes", via.body.len());
    assert_eq!(via.body, direct.body);
    assert_eq!(via.header("content-type"), Some("application/json"));

    // Escapes the path needs stay as they are (an encoded `/` is refused:
    // integrity.rs); the query is never touched.
    let r = get(g.addr, "/echo/a%20b/%3B/caf%C3%A9?x=1&y=%2F&z=a+b&&w").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.json();
    assert_eq!(e["raw_path"], "/echo/a%20b/%3B/caf%C3%A9");
    assert_eq!(e["query"], "x=1&y=%2F&z=a+b&&w");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_over_several_workers() {
    let w1 = Worker::start().await;
    let w2 = Worker::start().await;
    let g = Gate::start(&config_sockets(&[&w1.sock, &w2.sock], "", "")).await;
    let addr = g.addr;
    let tasks: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { get(addr, "/slow?ms=400").await }))
        .collect();
    let mut pids = HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        pids.insert(r.json()["pid"].as_u64().unwrap() as u32);
    }
    let want: HashSet<u32> = [w1.pid(), w2.pid()].into();
    assert_eq!(pids, want, "8 concurrent requests did not use both workers");
}
