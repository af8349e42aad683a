//! The stack's floor: hyper 1 + hyper-util's auto builder on a current-thread
//! tokio runtime, set up as the gate sets up its listener, with no pipeline at
//! all. benches/run.sh puts it beside the gate and nginx so a reader sees how
//! much of the gate's cost per request is the stack itself and how much is
//! ours.
//!
//!   hyper_floor reject ADDR        every request → the gate's 401 (same body/headers)
//!   hyper_floor proxy ADDR SOCK    every request → the worker on SOCK, one
//!                                  worker connection per client connection,
//!                                  headers passed as they are
//!
//! In both modes `GET /healthz` is answered 200 by the floor itself, so the
//! bench scripts can wait for it as they wait for the gate.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, UnixStream};

type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

const BODY_401: &[u8] = br#"{"error":"invalid_token","detail":"the token is not valid"}"#;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, addr, sock) = match args.as_slice() {
        [m, a] if m == "reject" => (Mode::Reject, a.clone(), String::new()),
        [m, a, s] if m == "proxy" => (Mode::Proxy, a.clone(), s.clone()),
        _ => {
            eprintln!("usage: hyper_floor reject ADDR | hyper_floor proxy ADDR SOCK");
            std::process::exit(64);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hyper_floor: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(serve(mode, addr, Arc::from(sock.as_str()))) {
        eprintln!("hyper_floor: {e}");
        std::process::exit(1);
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Reject,
    Proxy,
}

async fn serve(mode: Mode, addr: String, sock: Arc<str>) -> std::io::Result<()> {
    let listener = TcpListener::bind(&addr).await?;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .keep_alive(true);
    let builder = Arc::new(builder);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let sock = sock.clone();
        tokio::spawn(async move {
            let upstream: Arc<Mutex<Option<SendRequest<Incoming>>>> = Arc::default();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let sock = sock.clone();
                let upstream = upstream.clone();
                async move {
                    if req.uri().path() == "/healthz" {
                        return Ok::<_, Infallible>(plain(StatusCode::OK));
                    }
                    Ok(match mode {
                        Mode::Reject => reject(),
                        Mode::Proxy => proxy(req, &sock, &upstream).await,
                    })
                }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reject() -> Response<Body> {
    let mut res = Response::new(
        Full::new(Bytes::from_static(BODY_401))
            .map_err(|e| match e {})
            .boxed(),
    );
    *res.status_mut() = StatusCode::UNAUTHORIZED;
    let h = res.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    h.insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static(
            "Bearer realm=\"asgi-gate\", error=\"invalid_token\"",
        ),
    );
    res
}

fn plain(status: StatusCode) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::new()).map_err(|e| match e {}).boxed());
    *res.status_mut() = status;
    res
}

fn bad_gateway() -> Response<Body> {
    plain(StatusCode::BAD_GATEWAY)
}

async fn proxy(
    mut req: Request<Incoming>,
    sock: &str,
    slot: &Mutex<Option<SendRequest<Incoming>>>,
) -> Response<Body> {
    let taken = slot.lock().ok().and_then(|mut s| s.take());
    let mut sender = match taken {
        Some(s) => s,
        None => match connect(sock).await {
            Some(s) => s,
            None => return bad_gateway(),
        },
    };
    if sender.ready().await.is_err() {
        return bad_gateway();
    }
    if let Some(pq) = req.uri().path_and_query().cloned() {
        *req.uri_mut() = hyper::Uri::from(pq);
    }
    let res = sender.send_request(req).await;
    if let Ok(mut s) = slot.lock() {
        *s = Some(sender);
    }
    match res {
        Ok(res) => res.map(BodyExt::boxed),
        Err(_) => bad_gateway(),
    }
}

async fn connect(sock: &str) -> Option<SendRequest<Incoming>> {
    let stream = UnixStream::connect(sock).await.ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}
