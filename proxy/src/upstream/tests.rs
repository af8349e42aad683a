//! The pool against a worker in this process: a hyper HTTP/1.1 server on a
//! Unix socket in a temporary directory that counts the sockets it accepted
//! and closed and names each response's socket (`x-conn`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::Notify;

use super::{RequestBody, Sent, Upstream, UpstreamError};

/// What the test worker saw.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    closed: AtomicUsize,
    /// The most sockets open at once.
    most_open: AtomicUsize,
    /// Closes every open connection (its task drops the socket).
    drop_all: Notify,
    /// Signalled as a socket closes.
    gone: Notify,
}

impl Seen {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

struct TestWorker {
    path: PathBuf,
    seen: Arc<Seen>,
    _dir: tempfile::TempDir,
}

impl TestWorker {
    /// A worker answering every request 200 "ok", keeping connections alive.
    fn start() -> TestWorker {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        // Ends with the test's runtime.
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let id = s.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                s.most_open
                    .fetch_max(id - s.closed.load(Ordering::SeqCst), Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| async move {
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .header("x-conn", id)
                                .body(Full::new(Bytes::from_static(b"ok")))
                                .unwrap(),
                        )
                    });
                    let conn = server::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        () = s.drop_all.notified() => {}
                    }
                    s.closed.fetch_add(1, Ordering::SeqCst);
                    s.gone.notify_one();
                });
            }
        });
        TestWorker {
            path,
            seen,
            _dir: dir,
        }
    }
}

fn conf(
    sockets: Vec<PathBuf>,
    max_connections: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
) -> asgi_gate_config::Upstream {
    asgi_gate_config::Upstream {
        sockets,
        pool: asgi_gate_config::Pool {
            max_idle: 64,
            max_connections,
            idle_timeout,
        },
        connect_timeout,
        read_timeout: Duration::from_secs(5),
        health_check: None,
        // The pool's own behaviour; the queue has its tests below.
        concurrency: None,
    }
}

/// One worker, at most `max` sockets, idle for up to 10 s, 1 s to connect.
fn upstream(w: &TestWorker, max: usize) -> Arc<Upstream> {
    let c = conf(
        vec![w.path.clone()],
        max,
        Duration::from_secs(10),
        Duration::from_secs(1),
    );
    Arc::new(Upstream::new("test", &c))
}

fn get() -> Request<RequestBody> {
    Request::get("/")
        .header(http::header::HOST, "test")
        .body(RequestBody::empty())
        .unwrap()
}

/// The worker socket (its `x-conn`) that answered.
fn conn_of(sent: &Sent) -> usize {
    sent.response.headers()["x-conn"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Reads the body to its end and gives the connection back to the pool, as
/// `body.rs` does; returns which socket served it.
async fn finish(sent: Sent) -> usize {
    let id = conn_of(&sent);
    let Sent {
        response,
        mut in_flight,
        ..
    } = sent;
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    in_flight.take_lease().expect("a lease").done();
    id
}

/// Waits (at most 1 s) until `ready` holds.
async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(1), async {
        while !ready() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

/// Guards `Pool::checkin` (the push onto `idle`) and `Pool::checkout`: the
/// connection of a finished response is idle, and the next request reuses it.
#[tokio::test]
async fn a_returned_connection_is_reused() {
    let w = TestWorker::start();
    let up = upstream(&w, 4);

    let first = up.send(get(), true).await.unwrap();
    assert_eq!(w.seen.accepted(), 1, "a fresh pool opens one socket");
    let state = up.pool_state();
    assert_eq!((state.busy, state.idle, state.waiting), (1, 0, 0));
    let a = finish(first).await;
    let state = up.pool_state();
    assert_eq!((state.busy, state.idle, state.waiting), (0, 1, 0));

    let b = finish(up.send(get(), true).await.unwrap()).await;
    assert_eq!(b, a, "the idle connection is reused");
    assert_eq!(w.seen.accepted(), 1);
    assert_eq!(up.pool_state().idle, 1);
}

/// Guards the age test of `Pool::reap` (what the health loop calls every
/// interval) and of `Pool::checkout`. `idle` ages are `std::time::Instant`s,
/// so this waits a real 100 ms `idle_timeout`.
#[tokio::test]
async fn an_idle_connection_past_idle_timeout_is_closed() {
    let w = TestWorker::start();
    let idle_timeout = Duration::from_millis(100);
    let c = conf(
        vec![w.path.clone()],
        4,
        idle_timeout,
        Duration::from_secs(1),
    );
    let up = Upstream::new("test", &c);
    let pool = &up.workers[0].pool;

    // The connection's idle time starts between these two.
    let before = Instant::now();
    let first = finish(up.send(get(), true).await.unwrap()).await;
    let after = Instant::now();
    pool.reap();
    if before.elapsed() < idle_timeout {
        assert_eq!(up.pool_state().idle, 1, "younger than idle_timeout: kept");
    }
    assert_eq!(w.seen.closed(), 0);

    tokio::time::sleep_until((after + idle_timeout).into()).await;
    pool.reap();
    until("the worker to see the idle socket closed", || {
        w.seen.closed() == 1
    })
    .await;
    // The socket's permit goes with it.
    until("the pool to count it closed", || up.pool_state().idle == 0).await;

    let second = finish(up.send(get(), true).await.unwrap()).await;
    assert_ne!(second, first);
    assert_eq!(w.seen.accepted(), 2);

    // Not reaped, only too old: a checkout passes it over (and drops it).
    tokio::time::sleep(idle_timeout).await;
    let third = finish(up.send(get(), true).await.unwrap()).await;
    assert_ne!(third, second, "an expired idle connection is not reused");
    until("the expired one to be closed", || w.seen.closed() == 2).await;
}

/// Guards the permit a new socket takes in `Pool::connect` (one per open
/// socket, `max_connections` in all) and the wait for a returned connection
/// there: with both sockets held, a third request waits and gets the first
/// one given back, and no third socket is ever opened.
#[tokio::test]
async fn a_request_at_max_connections_waits_for_a_returned_one() {
    let w = TestWorker::start();
    let up = upstream(&w, 2);

    let a = up.send(get(), true).await.unwrap();
    let b = up.send(get(), true).await.unwrap();
    assert_eq!(w.seen.accepted(), 2);
    let a_conn = conn_of(&a);

    let up2 = up.clone();
    let third = tokio::spawn(async move { up2.send(get(), true).await });
    until("the third request to wait", || up.pool_state().waiting == 1).await;
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert!(!third.is_finished(), "no socket for it yet");

    let given_back = finish(a).await;
    assert_eq!(given_back, a_conn);
    let c = tokio::time::timeout(Duration::from_millis(500), third)
        .await
        .expect("a returned connection wakes the waiting request")
        .unwrap()
        .unwrap();
    assert_eq!(conn_of(&c), a_conn, "it gets the one given back");

    finish(b).await;
    finish(c).await;
    assert_eq!(w.seen.accepted(), 2);
    assert!(w.seen.most_open.load(Ordering::SeqCst) <= 2);
}

/// Guards the `connect_timeout` of the wait at `max_connections` in
/// `Pool::connect` and its `PoolFull` error (`UpstreamError::Busy`).
#[tokio::test]
async fn a_request_at_max_connections_fails_busy_after_connect_timeout() {
    let w = TestWorker::start();
    let connect_timeout = Duration::from_millis(100);
    let c = conf(
        vec![w.path.clone()],
        2,
        Duration::from_secs(10),
        connect_timeout,
    );
    let up = Upstream::new("test", &c);

    let a = up.send(get(), true).await.unwrap();
    let b = up.send(get(), true).await.unwrap();
    let started = Instant::now();
    let third = tokio::time::timeout(Duration::from_secs(1), up.send(get(), true))
        .await
        .expect("the wait ends at connect_timeout");
    assert_eq!(third.err(), Some(UpstreamError::Busy));
    assert!(started.elapsed() >= connect_timeout);
    assert!(up.workers[0].is_healthy(), "busy is not down");
    assert_eq!(w.seen.accepted(), 2);

    // Both still serve their responses.
    finish(a).await;
    finish(b).await;
    assert_eq!(w.seen.accepted(), 2);
}

/// The worker closes an idle keep-alive connection and the pool has seen
/// it go: the next request goes on a new socket. Guards `Pool::checkout`'s
/// `is_closed` test and `Pool::send`'s `ready` test of a reused
/// connection (`continue`) together: either one alone passes it over.
#[tokio::test]
async fn a_connection_seen_closed_is_not_reused() {
    let w = TestWorker::start();
    let up = upstream(&w, 4);

    let first = finish(up.send(get(), true).await.unwrap()).await;
    w.seen.drop_all.notify_waiters();
    // Its task ended and dropped the socket, and with it the permit.
    until("the pool to see the socket closed", || {
        up.pool_state().idle == 0
    })
    .await;

    let second = finish(up.send(get(), true).await.unwrap()).await;
    assert_ne!(second, first);
    assert_eq!(w.seen.accepted(), 2);
}

/// The worker closes an idle keep-alive connection just before the next
/// request: the pool still holds it as open, the request is handed to it,
/// and its connection task finds the socket closed and gives the request
/// back unwritten. `Pool::send` sends it again on a new socket (the
/// `take_message` of a reused connection). The test waits for the worker's
/// close by a notification, not by a timer, so the connection task has not
/// run since; were it to run first, the request would go through the
/// `is_closed` or `ready` path instead, and still succeed.
#[tokio::test]
async fn a_reused_connection_found_closed_is_retried() {
    let w = TestWorker::start();
    let up = upstream(&w, 4);

    let first = finish(up.send(get(), true).await.unwrap()).await;
    w.seen.drop_all.notify_waiters();
    w.seen.gone.notified().await;
    assert_eq!(up.pool_state().idle, 1, "the pool has not seen it yet");

    let second = finish(up.send(get(), true).await.unwrap()).await;
    assert_ne!(second, first);
    assert_eq!(w.seen.accepted(), 2);
}

/// A worker that refuses connections: the request goes to the other one
/// (`Upstream::retry` sending the unsent request on), and the refusing one
/// is out of the rotation at once (`classify` → `mark_down`). A POST too:
/// it is never sent twice, but none of it was written.
#[tokio::test]
async fn a_refused_connect_goes_to_another_worker() {
    let live = TestWorker::start();
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());

    for (i, method) in [http::Method::GET, http::Method::POST]
        .into_iter()
        .enumerate()
    {
        // Both idle: the first in the list is picked first.
        let c = conf(
            vec![dead.clone(), live.path.clone()],
            4,
            Duration::from_secs(10),
            Duration::from_secs(1),
        );
        let up = Upstream::new("test", &c);
        let mut req = get();
        *req.method_mut() = method.clone();

        let sent = up.send(req, true).await.unwrap();
        assert_eq!(*sent.socket, live.path, "{method}");
        finish(sent).await;
        assert!(
            !up.workers[0].is_healthy(),
            "{method}: the refusing worker is down"
        );
        assert!(up.workers[1].is_healthy());
        assert_eq!(live.seen.accepted(), i + 1);
    }
}
