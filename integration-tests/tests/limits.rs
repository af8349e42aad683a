//! Request limits: body size, header size, header timeout, idle connections.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::Method;
use http_body_util::Full;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMITS: &str = "limits: {max_body: 1KiB, max_header_bytes: 16KiB, header_timeout: 1s}";

#[tokio::test]
async fn body_over_max_body_with_content_length_is_413_before_the_worker() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", LIMITS)).await;

    let at_limit = post(g.addr, "/upload", vec![7u8; 1024]).await;
    assert_eq!(at_limit.status, 200, "{}", at_limit.text());
    assert_eq!(at_limit.json()["bytes"], 1024);

    let hits = w.hits().await;
    for n in [1025usize, 2048] {
        let r = post(g.addr, "/upload", vec![7u8; n]).await;
        r.assert_rejection(413, "payload_too_large");
    }
    assert_eq!(
        w.hits().await,
        hits,
        "an oversized request reached the worker"
    );
}

/// A chunked body has no length up front, so the gate may already have
/// started streaming it to the worker when it crosses the limit. It must then
/// abort the upstream request rather than end it early. uvicorn's access log
/// is written only when the app sends a response, so "no `POST /upload ... 200`
/// line" means the app never completed the oversized upload.
#[tokio::test]
async fn chunked_body_over_max_body_is_cut_off() {
    let w = Worker::start_with_access_log().await;
    let g = Gate::start(&config(&w.sock, "", LIMITS)).await;
    let completed = |w: &Worker| w.log().matches("\"POST /upload HTTP/1.1\" 200").count();

    // Control: a chunked body under the limit goes through (and is logged).
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    let mut small =
        b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    small.extend_from_slice(b"12c\r\n");
    small.extend_from_slice(&[1u8; 300]);
    small.extend_from_slice(b"\r\n12c\r\n");
    small.extend_from_slice(&[1u8; 300]);
    small.extend_from_slice(b"\r\n0\r\n\r\n");
    s.write_all(&small).await.unwrap();
    match read_raw_response(&mut s, Duration::from_secs(10)).await {
        RawOutcome::Response(r) => {
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.json()["bytes"], 600);
        }
        other => panic!("no response to a small chunked upload: {other:?}"),
    }
    assert!(
        eventually(Duration::from_secs(2), || async { completed(&w) == 1 }).await,
        "access-log check is blind; worker log:\n{}",
        w.log()
    );

    // Over the limit: 8 × 512 bytes, a little at a time.
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..8 {
        let mut chunk = b"200\r\n".to_vec();
        chunk.extend_from_slice(&[2u8; 512]);
        chunk.extend_from_slice(b"\r\n");
        if s.write_all(&chunk).await.is_err() {
            break; // the gate already closed: fine
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    match read_raw_response(&mut s, Duration::from_secs(5)).await {
        RawOutcome::Response(r) => {
            assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.json()["error"], "payload_too_large");
            assert!(r.header("x-request-id").is_some());
        }
        RawOutcome::Closed(_) => {} // also acceptable
        RawOutcome::TimedOut(b) => panic!(
            "oversized chunked body: no answer and no close in 5s ({:?})",
            String::from_utf8_lossy(&b)
        ),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        completed(&w),
        1,
        "the worker completed the oversized upload; worker log:\n{}",
        w.log()
    );
    // The gate still serves.
    assert_eq!(get(g.addr, "/hello").await.status, 200);
}

#[tokio::test]
async fn headers_over_max_header_bytes_are_431() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", LIMITS)).await;
    let ok = send_h1(
        g.addr,
        req(Method::GET, g.addr, "/hello")
            .header("x-filler", "a".repeat(8 * 1024))
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        ok.status,
        200,
        "8 KiB of headers under a 16 KiB limit: {}",
        ok.text()
    );

    let hits = w.hits().await;
    for headers in [vec![20 * 1024], vec![4 * 1024; 5]] {
        let mut b = req(Method::GET, g.addr, "/hello");
        for (i, n) in headers.iter().enumerate() {
            b = b.header(format!("x-filler-{i}"), "a".repeat(*n));
        }
        let r = send_h1(g.addr, b.body(Full::default()).unwrap())
            .await
            .unwrap();
        r.assert_rejection(431, "headers_too_large");
    }
    assert_eq!(
        w.hits().await,
        hits,
        "a request with oversized headers reached the worker"
    );
}

/// A complete, valid request sent one byte every 100 ms (3+ s in all): the
/// header timeout is the total time for the head, so the gate must close
/// (optionally with 408) at about 1 s, never serve it.
#[tokio::test]
async fn slow_request_head_is_cut_at_header_timeout() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", LIMITS)).await;
    let hits = w.hits().await;

    let t0 = Instant::now();
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    let request = b"GET /hello HTTP/1.1\r\nHost: slow.test\r\n\r\n";
    let mut got = Vec::new();
    let mut closed_at = None;
    let mut buf = [0u8; 4096];
    'outer: for b in request.iter() {
        if s.write_all(&[*b]).await.is_err() {
            closed_at = Some(t0.elapsed());
            break;
        }
        let until = tokio::time::Instant::now() + Duration::from_millis(100);
        loop {
            match tokio::time::timeout_at(until, s.read(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed_at = Some(t0.elapsed());
                    break 'outer;
                }
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
    }
    if closed_at.is_none() {
        // Whole request written; the gate must still close, not answer 200.
        match tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        {
            Ok(()) => closed_at = Some(t0.elapsed()),
            Err(_) => panic!("slowloris connection still open after {:?}", t0.elapsed()),
        }
    }
    let closed_at = closed_at.unwrap();
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(
        closed_at < Duration::from_millis(2500),
        "closed only after {closed_at:?} with header_timeout 1s; received {text:?}"
    );
    assert!(
        got.is_empty() || text.starts_with("HTTP/1.1 408"),
        "a too-slow head gets 408 or nothing, got {text:?}"
    );
    assert_eq!(w.hits().await, hits, "the slow request reached the worker");
}

#[tokio::test]
async fn silent_connection_is_closed_without_a_response() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", LIMITS)).await;
    let t0 = Instant::now();
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let r = tokio::time::timeout(Duration::from_secs(4), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "a silent connection is still open after 4s (header_timeout 1s)"
    );
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "closed after {:?}",
        t0.elapsed()
    );
    assert!(
        got.is_empty(),
        "a connection that sent nothing got a response: {:?}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn garbage_request_is_400_or_closed_never_500() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", LIMITS)).await;
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /hello HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"GET /hello HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    ] {
        match raw_exchange(g.addr, garbage, Duration::from_secs(3)).await {
            RawOutcome::Response(r) => assert_eq!(
                r.status,
                400,
                "{:?} -> {} {:?}",
                String::from_utf8_lossy(garbage),
                r.status,
                String::from_utf8_lossy(&r.body)
            ),
            RawOutcome::Closed(_) | RawOutcome::TimedOut(_) => {}
        }
    }
    let r = get(g.addr, "/hello").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"message": "hello"}));
    assert!(!g.log().contains("panicked"), "{}", g.log());
}

/// RFC 9112 §3.2: more than one Host is a 400. Forwarding both lets the gate
/// (X-Forwarded-Host, allowed_hosts) and the app disagree on the host.
#[tokio::test]
async fn two_host_headers_are_400() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", LIMITS)).await;
    let hits = w.hits().await;
    let out = raw_exchange(
        g.addr,
        b"GET /echo HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    match out {
        RawOutcome::Response(r) => {
            assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.json()["error"], "bad_request");
        }
        RawOutcome::Closed(_) => {}
        RawOutcome::TimedOut(b) => panic!("no answer: {:?}", String::from_utf8_lossy(&b)),
    }
    assert_eq!(w.hits().await, hits, "the request reached the worker");
}

#[tokio::test]
async fn expect_continue_over_max_body_gets_413_without_sending_the_body() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", LIMITS)).await;
    let hits = w.hits().await;
    let out = raw_exchange(
        g.addr,
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    let RawOutcome::Response(r) = out else {
        panic!("no final answer while the client waits for 100-continue: {out:?}")
    };
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "payload_too_large");
    assert_eq!(w.hits().await, hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_body_over_max_body_is_refused() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", LIMITS)).await;
    let ok = send_h2(
        g.addr,
        http::Request::builder()
            .method(Method::POST)
            .uri(g.url("/upload"))
            .body(Full::new(bytes::Bytes::from(vec![1u8; 1000])))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["bytes"], 1000);

    let r = send_h2(
        g.addr,
        http::Request::builder()
            .method(Method::POST)
            .uri(g.url("/upload"))
            .body(Full::new(bytes::Bytes::from(vec![1u8; 4096])))
            .unwrap(),
    )
    .await;
    match r {
        Ok(r) => r.assert_rejection(413, "payload_too_large"),
        Err(e) => eprintln!("oversized h2 body ended with a stream error: {e}"),
    }
    assert_eq!(get(g.addr, "/hello").await.status, 200);
}

/// A GET /echo with `n` header fields `x-f-{i}: {value}`.
fn with_fields(
    addr: std::net::SocketAddr,
    n: usize,
    value: &str,
) -> http::Request<Full<bytes::Bytes>> {
    let mut b = req(Method::GET, addr, "/echo");
    for i in 0..n {
        b = b.header(format!("x-f-{i}"), value);
    }
    b.body(Full::default()).unwrap()
}

/// hyper's own limit is 100 header fields; a head within max_header_bytes
/// must reach the worker however many fields it has (up to the cap hyper is
/// given, 1024 here).
#[tokio::test]
async fn many_header_fields_within_max_header_bytes_reach_the_worker() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", LIMITS)).await;
    for n in [101, 150, 250] {
        let hits = w.hits().await;
        let r = send_h1(g.addr, with_fields(g.addr, n, "v")).await.unwrap();
        assert_eq!(r.status, 200, "{n} fields: {:?} {}", r.headers, r.text());
        assert_eq!(w.hits().await, hits + 1, "{n} fields");
        let echoed = echoed_headers(&r.json());
        assert!(echoed.iter().any(|(k, _)| k == &format!("x-f-{}", n - 1)));
    }
}

/// `max_header_fields` raises hyper's field limit; past it hyper answers
/// itself (a bare 431), as documented.
#[tokio::test]
async fn max_header_fields_sets_how_many_fields_hyper_parses() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", LIMITS)).await;
    let r = send_h1(g.addr, with_fields(g.addr, 300, "v"))
        .await
        .unwrap();
    assert_eq!(r.status, 431);
    assert!(r.body.is_empty(), "hyper's own 431 has no body");
    let yaml = "limits: {max_body: 1KiB, max_header_bytes: 16KiB, max_header_fields: 1000}";
    let g = Gate::start(&config(&w.sock, "", yaml)).await;
    let hits = w.hits().await;
    // 999 fields and Host.
    let r = send_h1(g.addr, with_fields(g.addr, 999, "v"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?} {}", r.headers, r.text());
    assert_eq!(w.hits().await, hits + 1);
}

#[tokio::test]
async fn many_header_fields_over_max_header_bytes_are_json_431() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", LIMITS)).await;
    let hits = w.hits().await;
    // 200 × ~110 bytes and 250 × ~80 bytes: both over 16 KiB.
    for (n, len) in [(200, 100), (250, 70)] {
        let r = send_h1(g.addr, with_fields(g.addr, n, &"a".repeat(len)))
            .await
            .unwrap();
        r.assert_rejection(431, "headers_too_large");
    }
    assert_eq!(w.hits().await, hits, "an oversized head reached the worker");
}

/// Far over max_header_bytes (16 KiB), under the hard cap (1 MiB): the
/// gate's JSON 431, on h1 and h2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_authorization_header_is_json_431() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", LIMITS)).await;
    let hits = w.hits().await;
    let token = format!("Bearer {}", "a".repeat(100 * 1024));
    let r = send_h1(
        g.addr,
        req(Method::GET, g.addr, "/hello")
            .header("authorization", &token)
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    r.assert_rejection(431, "headers_too_large");
    let r = send_h2(
        g.addr,
        http::Request::builder()
            .uri(g.url("/hello"))
            .header("authorization", &token)
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    r.assert_rejection(431, "headers_too_large");
    assert_eq!(w.hits().await, hits);
}

/// Rewrites the config and waits for the reload to be logged.
async fn reload(g: &Gate, yaml: &str) {
    let done = g.log().matches("config reloaded").count();
    let tmp = g.config_path.with_extension("yaml.tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, &g.config_path).unwrap();
    g.send_signal(libc::SIGHUP);
    let reloaded = eventually(Duration::from_secs(10), || async {
        g.log().matches("config reloaded").count() > done
    })
    .await;
    assert!(reloaded, "no reload logged:\n{}", g.log());
}

/// Whether the gate closes a connection that sent only part of a head
/// within `within`.
async fn partial_head_closed_within(addr: std::net::SocketAddr, within: Duration) -> bool {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /hello HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// header_timeout and max_header_bytes (with the hyper buffers sized from
/// it) apply to connections accepted after a reload; open ones keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_header_settings_to_new_connections() {
    let w = Worker::start().await;
    let before = "limits: {max_header_bytes: 16KiB, header_timeout: 10s}";
    let g = Gate::start(&config(&w.sock, "", before)).await;
    let mut old = H1::connect(g.addr).await.unwrap();
    assert_eq!(old.get("/hello").await.status, 200);

    // Raised: a 1.5 MB head is over the 1 MiB hard cap of the old setting
    // and under that of the new one (4 × 2 MiB): it reaches the gate.
    reload(
        &g,
        &config(
            &w.sock,
            "",
            "limits: {max_header_bytes: 2MiB, header_timeout: 1s}",
        ),
    )
    .await;
    let big = "a".repeat(1536 * 1024);
    let r = send_h1(
        g.addr,
        req(Method::GET, g.addr, "/hello")
            .header("x-big", &big)
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(
        r.header("x-request-id").is_some(),
        "a 1.5 MB head under max_header_bytes 2MiB: {} {:?}",
        r.status,
        r.headers
    );
    assert!(
        partial_head_closed_within(g.addr, Duration::from_millis(2500)).await,
        "header_timeout lowered to 1s by reload: a stalled head still open after 2.5s"
    );

    // Lowered: 2 KiB of headers are now over the limit.
    reload(
        &g,
        &config(
            &w.sock,
            "",
            "limits: {max_header_bytes: 1KiB, header_timeout: 1s}",
        ),
    )
    .await;
    let r = send_h1(
        g.addr,
        req(Method::GET, g.addr, "/hello")
            .header("x-filler", "a".repeat(2048))
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    r.assert_rejection(431, "headers_too_large");

    // The connection opened before the reloads still serves.
    assert_eq!(old.get("/hello").await.status, 200);
}
