//! WebSockets through the gate: many at once, abrupt client drops, worker death.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{client_async, WebSocketStream};

type Ws = WebSocketStream<TcpStream>;

async fn open_ws(addr: std::net::SocketAddr) -> Ws {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = client_async(format!("ws://{addr}/ws/echo"), tcp)
        .await
        .expect("websocket handshake through the gate");
    assert_eq!(resp.status(), 101);
    assert!(
        resp.headers().get("x-request-id").is_some(),
        "no x-request-id on 101"
    );
    ws
}

async fn echo_once(ws: &mut Ws, msg: Message) {
    ws.send(msg.clone()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("echo timed out")
        .expect("stream ended")
        .expect("websocket error");
    assert_eq!(got, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_websockets_echo_and_abrupt_drops_free_their_fds() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", "")).await;
    assert_eq!(get(g.addr, "/hello").await.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = g.fd_count();

    let addr = g.addr;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                let mut ws = open_ws(addr).await;
                for j in 0..20 {
                    let msg = if j % 2 == 0 {
                        Message::Text(format!("text {i}/{j}"))
                    } else {
                        Message::Binary(vec![i as u8, j as u8, 0, 255, 1])
                    };
                    echo_once(&mut ws, msg).await;
                }
                ws
            })
        })
        .collect();
    let mut sockets = Vec::new();
    for t in tasks {
        sockets.push(t.await.expect("a websocket task failed"));
    }
    let busy = g.fd_count();
    // Each session holds a client socket and an upstream socket.
    assert!(
        busy >= baseline + 380,
        "fd count {busy} with 200 open websockets (baseline {baseline}): sessions not held?"
    );

    // Abrupt: no close frame; half with FIN, half with RST.
    for (i, ws) in sockets.into_iter().enumerate() {
        if i % 2 == 0 {
            ws.get_ref().set_zero_linger().unwrap();
        }
        drop(ws);
    }
    let ok = eventually(Duration::from_secs(10), || async {
        g.fd_count() <= baseline + 5
    })
    .await;
    eprintln!(
        "gate fds: baseline {baseline}, 200 open {busy}, after drops {}",
        g.fd_count()
    );
    assert!(
        ok,
        "gate fds {} ten seconds after dropping 200 websockets (baseline {baseline}, {busy} while open)",
        g.fd_count()
    );
    let ok = eventually(Duration::from_secs(5), || async {
        w.open_conns().len() <= 2
    })
    .await;
    assert!(
        ok,
        "worker still holds {} connections",
        w.open_conns().len()
    );
    assert_eq!(get(g.addr, "/hello").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_ends_when_its_worker_dies() {
    let mut w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", "")).await;
    let baseline = g.fd_count();
    let mut ws = open_ws(g.addr).await;
    echo_once(&mut ws, Message::Text("before".into())).await;

    w.kill();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "websocket still open 5s after its worker was killed"
    );
    drop(ws);
    let ok = eventually(Duration::from_secs(5), || async {
        g.fd_count() <= baseline + 2
    })
    .await;
    assert!(
        ok,
        "gate fds {} after the session ended (baseline {baseline})",
        g.fd_count()
    );
}

#[tokio::test]
async fn websocket_refused_by_the_worker_is_refused_to_the_client() {
    let w = Worker::start().await;
    let g = Gate::start(&config(&w.sock, "", "")).await;
    let tcp = TcpStream::connect(g.addr).await.unwrap();
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        client_async(format!("ws://{}/ws/nope", g.addr), tcp),
    )
    .await
    .expect("handshake to a route the app does not serve hangs");
    match res {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(
                resp.status(),
                403,
                "uvicorn refuses unknown websocket routes with 403"
            );
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("handshake to /ws/nope succeeded"),
    }
    // The gate still serves websockets and plain requests.
    let mut ws = open_ws(g.addr).await;
    echo_once(&mut ws, Message::Text("still fine".into())).await;
    assert_eq!(get(g.addr, "/hello").await.status, 200);
}

/// A route with `websocket:` limits; `/ws/echo` is under it.
fn limited(w: &Worker, opts: &str) -> String {
    format!(
        "listen:\n  - address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n\
         upstreams:\n  app:\n    sockets: [\"{sock}\"]\n\
         routes:\n\
         \x20 - path: /ws/{{*rest}}\n    upstream: app\n    websocket: {opts}\n\
         \x20 - path: /{{*rest}}\n    upstream: app\n",
        sock = w.sock.display()
    )
}

/// The next frame: the close code the gate sent, or a message.
async fn next_close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("no close in time");
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => return Some(u16::from(frame.code)),
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn a_message_over_max_message_ends_the_session_with_1009() {
    let w = Worker::start().await;
    let g = Gate::start(&limited(&w, "{ max_message: 1KiB }")).await;
    let mut ws = open_ws(g.addr).await;
    echo_once(&mut ws, Message::Binary(vec![7; 1024])).await;
    echo_once(&mut ws, Message::Text("small".into())).await;
    ws.send(Message::Binary(vec![7; 1025])).await.unwrap();
    assert_eq!(next_close_code(&mut ws).await, Some(1009));
}

#[tokio::test]
async fn too_many_messages_end_the_session_with_1008() {
    let w = Worker::start().await;
    let g = Gate::start(&limited(&w, "{ messages_per_second: 5 }")).await;
    let mut ws = open_ws(g.addr).await;
    for i in 0..5 {
        echo_once(&mut ws, Message::Text(format!("m{i}"))).await;
    }
    // Sent back to back: past the burst of 5 within the same second.
    for i in 0..5 {
        let _ = ws.send(Message::Text(format!("x{i}"))).await;
    }
    assert_eq!(next_close_code(&mut ws).await, Some(1008));
}

#[tokio::test]
async fn an_idle_session_is_closed_with_1001_and_traffic_keeps_it_open() {
    let w = Worker::start().await;
    let g = Gate::start(&limited(&w, "{ idle_timeout: 1s }")).await;
    let mut ws = open_ws(g.addr).await;
    // Traffic every 400 ms for 2 s keeps it alive past the timeout.
    for i in 0..5 {
        echo_once(&mut ws, Message::Text(format!("m{i}"))).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let start = std::time::Instant::now();
    assert_eq!(next_close_code(&mut ws).await, Some(1001));
    let waited = start.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "closed after {waited:?} of silence"
    );
}

#[tokio::test]
async fn a_ping_flood_ends_the_session_with_1008() {
    let w = Worker::start().await;
    let g = Gate::start(&limited(&w, "{ messages_per_second: 5 }")).await;
    let mut ws = open_ws(g.addr).await;
    // Each ping makes the app's side write a pong; back to back, well past
    // the burst of 5.
    for i in 0..20u8 {
        if ws.send(Message::Ping(vec![i])).await.is_err() {
            break;
        }
    }
    assert_eq!(next_close_code(&mut ws).await, Some(1008));
}

/// A WebSocket handshake written by hand, so the client can offer (and then
/// use) `permessage-deflate` as browsers do. Returns the socket and the
/// response head.
async fn raw_handshake(addr: std::net::SocketAddr, path: &str, extra: &str) -> (TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    // Byte by byte: nothing after the head may be consumed here.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut b))
            .await
            .expect("handshake answer timed out")
            .unwrap();
        assert!(
            n == 1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    (tcp, String::from_utf8(head).unwrap())
}

/// A masked client frame with first byte `b0` (FIN, RSV, opcode).
fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![b0];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// The next server frame: its first byte and payload, `None` at EOF.
async fn read_server_frame(tcp: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let read = async {
        let mut h = [0u8; 2];
        tcp.read_exact(&mut h).await.ok()?;
        let len = match h[1] & 0x7f {
            126 => u64::from(tcp.read_u16().await.ok()?),
            127 => tcp.read_u64().await.ok()?,
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        tcp.read_exact(&mut payload).await.ok()?;
        Some((h[0], payload))
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("no frame and no EOF in 20s")
}

/// The close code of the next frame, which must be a Close.
async fn expect_close(tcp: &mut TcpStream, what: &str) -> u16 {
    match read_server_frame(tcp).await {
        Some((b0, p)) if b0 & 0x0f == 8 && p.len() >= 2 => u16::from_be_bytes([p[0], p[1]]),
        Some((b0, p)) => panic!(
            "{what}: got frame {b0:#04x} of {} bytes instead of a Close: the worker answered it",
            p.len()
        ),
        None => panic!("{what}: connection closed without a Close frame"),
    }
}

/// `/ws/echo`'s counters, asked of the worker itself once it has seen
/// `sessions` sessions end (so nothing is still on its way to it).
async fn worker_ws_stats(w: &Worker, sessions: u64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = uds_request(&w.sock, http::Method::GET, "/ws/stats", bytes::Bytes::new())
            .await
            .unwrap();
        let stats = r.json();
        if stats["ended"].as_u64() >= Some(sessions) {
            return stats;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the worker's session did not end: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_compressed_message_cannot_pass_max_message() {
    let w = Worker::start().await;
    let g = Gate::start(&limited(&w, "{ max_message: 64KiB }")).await;
    let (mut tcp, head) = raw_handshake(
        g.addr,
        "/ws/echo",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let agreed = head.to_ascii_lowercase().contains("permessage-deflate");

    // 2 MiB of zeros deflate to about 2 KiB (RFC 7692 §7.2.1: a sync flush,
    // its 00 00 ff ff tail removed), sent with RSV1 set as "compressed".
    let zeros = vec![0u8; 2 << 20];
    let mut z = flate2::Compress::new(flate2::Compression::default(), false);
    let mut deflated = Vec::with_capacity(64 << 10);
    z.compress_vec(&zeros, &mut deflated, flate2::FlushCompress::Sync)
        .unwrap();
    assert!(deflated.ends_with(&[0, 0, 0xff, 0xff]) && deflated.len() < 8 << 10);
    deflated.truncate(deflated.len() - 4);
    use tokio::io::AsyncWriteExt;
    tcp.write_all(&client_frame(0xC2, &deflated)).await.unwrap();

    // Refused as a protocol error: no extension was let through.
    let code = expect_close(&mut tcp, "a 2 MiB message deflated to 2 KiB").await;
    assert_eq!(code, 1002);
    let stats = worker_ws_stats(&w, 1).await;
    assert_eq!(
        stats["messages"], 0,
        "the worker received a message from this session: {stats}"
    );
    assert!(
        !agreed,
        "the 101 agreed to permessage-deflate on a route with websocket limits:\n{head}"
    );
}

#[tokio::test]
async fn a_worker_agreeing_to_an_extension_the_gate_removed_gets_no_session() {
    let w = Worker::start().await;
    let g = Gate::start(&limited(&w, "{ max_message: 64KiB }")).await;
    let (_tcp, head) = raw_handshake(
        g.addr,
        "/ws/rogue",
        "Sec-WebSocket-Extensions: permessage-deflate\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    // Without limits the gate relays whatever worker and client agree.
    let g = Gate::start(&config(&w.sock, "", "")).await;
    let (_tcp, head) = raw_handshake(g.addr, "/ws/rogue", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

#[tokio::test]
async fn a_length_with_its_top_bit_set_ends_the_session_with_1002() {
    let w = Worker::start().await;
    let g = Gate::start(&limited(&w, "{ messages_per_second: 5 }")).await;
    let (mut tcp, head) = raw_handshake(g.addr, "/ws/echo", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // 64-bit length 2^63 (RFC 6455 §5.2: its top bit must be 0), then
    // messages past the rate that the gate no longer saw as frames.
    let mut bytes = vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
    for _ in 0..10 {
        bytes.extend(client_frame(0x81, b"hello"));
    }
    use tokio::io::AsyncWriteExt;
    tcp.write_all(&bytes).await.unwrap();
    assert_eq!(expect_close(&mut tcp, "a 2^63-byte frame").await, 1002);
    let stats = worker_ws_stats(&w, 1).await;
    assert_eq!(stats["messages"], 0, "{stats}");
}
