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
