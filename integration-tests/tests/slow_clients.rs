//! A slow or silent client pins nothing: stalled bodies release their worker
//! connection after `body_timeout`, silent connections close at
//! `header_timeout` (TLS and h2c included), connection and stream caps hold.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// One worker connection, and a full pool answers 503 after 1 s.
const ONE_CONN: &str = "pool: {max_idle: 1, max_connections: 1}\nconnect_timeout: 1s";

/// True once `addr` answers GET /hello with 200 (each try waits at most the
/// pool's connect_timeout).
async fn hello_gets_through(addr: SocketAddr, within: Duration) -> bool {
    eventually(within, || async move {
        let r = req(Method::GET, addr, "/hello")
            .body(Full::default())
            .unwrap();
        matches!(send_h1(addr, r).await, Ok(r) if r.status == 200)
    })
    .await
}

/// Reads until EOF or error; true if that happened within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 65536];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn client_that_stops_reading_releases_its_worker_connection() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, ONE_CONN, "limits: {body_timeout: 1s}")).await;

    // 256 MiB streamed; the client reads the head and stops.
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(b"GET /stream?kib=262144 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    // The only worker connection is held until body_timeout cuts it.
    let started = Instant::now();
    assert!(
        hello_gets_through(g.addr, Duration::from_secs(10)).await,
        "the stalled response still holds the worker connection; gate log:\n{}",
        g.log()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The stalled client's connection was closed, not left open.
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn client_that_stops_sending_its_body_releases_its_worker_connection() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, ONE_CONN, "limits: {body_timeout: 1s}")).await;

    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    match read_raw_response(&mut s, Duration::from_secs(8)).await {
        RawOutcome::Response(r) => {
            assert_eq!(r.status, 408, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.json()["error"], "request_timeout");
        }
        other => panic!("no answer to a stalled body within 8 s: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        hello_gets_through(g.addr, Duration::from_secs(5)).await,
        "the stalled request still holds the worker connection"
    );
}

#[tokio::test]
async fn half_an_h2c_preface_is_closed_at_header_timeout() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", "limits: {header_timeout: 1s}")).await;
    let mut s = TcpStream::connect(g.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn connections_over_max_connections_per_ip_get_503() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", "limits: {max_connections_per_ip: 3}")).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut h = H1::connect(g.addr).await.unwrap();
        assert_eq!(h.get("/hello").await.status, 200);
        open.push(h);
    }
    match raw_exchange(
        g.addr,
        b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    {
        RawOutcome::Response(r) => {
            assert_eq!(r.status, 503);
            assert_eq!(r.json()["error"], "service_unavailable");
        }
        other => panic!("4th connection: {other:?}"),
    }
    // A closed connection gives its place back.
    open.pop();
    assert!(hello_gets_through(g.addr, Duration::from_secs(5)).await);
}

/// A trusted proxy (an ingress, a load balancer) carries many clients'
/// connections from one address: the per-IP cap does not apply to it.
#[tokio::test]
async fn a_trusted_proxy_is_not_held_to_max_connections_per_ip() {
    let w = Worker::start().await;
    let g = Gate::start(&config(
        &w.sock,
        "",
        "limits: {max_connections_per_ip: 2}\ntrusted_proxies: [127.0.0.1/32]",
    ))
    .await;
    let mut open = Vec::new();
    for i in 0..6 {
        let mut h = H1::connect(g.addr).await.unwrap();
        assert_eq!(h.get("/hello").await.status, 200, "connection {i}");
        open.push(h);
    }
}

/// An h2 client opening many streams never holds more worker connections
/// than max_concurrent_streams.
#[tokio::test]
async fn h2_streams_per_connection_are_capped() {
    let w = Worker::start().await;
    let g = Gate::start(&config(
        &w.sock,
        "pool: {max_connections: 64}",
        "limits: {max_concurrent_streams: 4}",
    ))
    .await;
    let tcp = TcpStream::connect(g.addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    // One request first, so that the client has the gate's SETTINGS (and its
    // stream cap) before it opens the rest.
    let mut first = sender.clone();
    first.ready().await.unwrap();
    let r = Request::get(format!("http://{}/hello", g.addr))
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(first.send_request(r).await.unwrap().status(), 200);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut sender = sender.clone();
        let uri = format!("http://{}/slow?ms=300", g.addr);
        tasks.push(tokio::spawn(async move {
            sender.ready().await.unwrap();
            let r = Request::get(uri).body(Full::<Bytes>::default()).unwrap();
            let resp = sender.send_request(r).await.unwrap();
            let status = resp.status();
            resp.into_body().collect().await.unwrap();
            status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let c = get(g.addr, "/concurrency").await.json();
    let max = c["max"].as_u64().unwrap();
    assert!((1..=4).contains(&max), "{c}");
}

/// Streams whose flow-control window never opens are reset after
/// body_timeout, freeing their worker connections.
#[tokio::test]
async fn h2_streams_without_window_are_released_after_body_timeout() {
    let w = Worker::start().await;
    let g = Gate::start(&config(
        &w.sock,
        "pool: {max_idle: 4, max_connections: 4}\nconnect_timeout: 1s",
        "limits: {body_timeout: 1s, max_concurrent_streams: 8}",
    ))
    .await;
    let tcp = TcpStream::connect(g.addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut sender = sender.clone();
        let uri = format!("http://{}/big", g.addr);
        tasks.push(tokio::spawn(async move {
            sender.ready().await.unwrap();
            let r = Request::get(uri).body(Full::<Bytes>::default()).unwrap();
            let resp = sender.send_request(r).await.unwrap();
            assert_eq!(resp.status(), 200);
            // Never read, the window stays shut; the gate must reset it.
            resp.into_body().collect().await.is_err()
        }));
    }
    let started = Instant::now();
    for t in tasks {
        let reset = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("a stream without window was not released")
            .unwrap();
        assert!(reset, "the stream ended normally without a window?");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(hello_gets_through(g.addr, Duration::from_secs(5)).await);
}

// ---------------------------------------------------------------- TLS

fn tls_gate_config(w: &Worker, dir: &std::path::Path) -> String {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl CLI makes the test certificate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "listen:\n  - address: 127.0.0.1:0\n    tls: {{cert: \"{}\", key: \"{}\"}}\n\
         admin:\n  address: 127.0.0.1:0\n\
         upstreams:\n  app:\n    sockets: [\"{}\"]\n\
         routes:\n  - path: /{{*rest}}\n    upstream: app\n\
         limits: {{header_timeout: 1s}}\n",
        cert.display(),
        key.display(),
        w.sock.display()
    )
}

#[tokio::test]
async fn silent_tls_connection_is_closed_at_header_timeout() {
    let w = Worker::start().await;
    let dir = tempdir();
    let g = Gate::start(&tls_gate_config(&w, dir.path())).await;
    let addr = g.tls[0];
    let mut s = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
}

/// After a TLS handshake that chose h2, half a preface: hyper's h2 server
/// would wait for the rest for ever.
#[tokio::test]
async fn tls_h2_with_half_a_preface_is_closed_at_header_timeout() {
    let w = Worker::start().await;
    let dir = tempdir();
    let g = Gate::start(&tls_gate_config(&w, dir.path())).await;
    let addr = g.tls[0];

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.path().join("tls.crt")).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "still open 5 s after half a preface");
}
