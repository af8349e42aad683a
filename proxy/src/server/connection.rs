//! One client connection once accepted: hyper's settings from `limits`
//! (built once per gate), and HTTP/1.1 or h2 served on it under the
//! deadlines of [`super::deadlines`], each request on the gate current
//! when it starts.

use std::sync::{Arc, Weak};
use std::time::Duration;

use asgi_gate_config::Limits;
use hyper::service::service_fn;
use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;
use tokio::time::Instant;

use super::deadlines::{ConnActivity, ConnTask, GateExec};
use crate::gate::{Gate, Shared};
use crate::pipeline::{self, ConnInfo};

/// Heads up to this size reach the gate's own check (JSON 431 with
/// X-Request-Id); hyper refuses larger ones itself with a bare 431.
pub fn head_hard_cap(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_mul(4).max(1024 * 1024)
}

/// hyper's h1 limit on header fields (`limits.max_header_fields`). hyper
/// parses into a stack array of 100 when given none; any other setting fills
/// an array of that many slots on every parse (callgrind, `benches/profile.sh`:
/// about 10 instructions a slot, 10.5k per request at 1024), so 100 is passed
/// as "none".
fn header_fields(limits: &Limits) -> Option<usize> {
    (limits.max_header_fields != 100).then_some(limits.max_header_fields)
}

/// h2 PING every this long on a connection with streams in flight; no
/// answer within `H2_PING_TIMEOUT` closes it (a peer that vanished).
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The connection settings that come from `limits`, built with the gate (so
/// a reload applies them to new connections).
fn connection_builder(limits: &Limits) -> auto::Builder<GateExec> {
    let mut b = auto::Builder::new(GateExec);
    let cap = head_hard_cap(limits.max_header_bytes);
    // hyper's read buffer grows only as a head needs it: the memory is spent
    // on big heads only. (It also bounds the response bytes queued for a slow
    // client, at most 16 body chunks.) The header timer also runs between
    // keep-alive requests: that is the idle close of an h1 connection.
    let mut h1 = b.http1();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(cap)
        .keep_alive(true);
    if let Some(n) = header_fields(limits) {
        h1.max_headers(n);
    }
    // h2 counts 32 bytes more per field (RFC 7541 §4.1), and a head within
    // max_header_bytes has at most max_header_bytes/4 fields.
    let h2 = cap.saturating_add(limits.max_header_bytes.saturating_mul(8));
    // Each stream in flight may hold a worker connection: the stream cap is
    // the cap on worker connections one client connection can hold.
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(h2).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    b
}

/// hyper's settings from the current gate's `limits`, built once per gate
/// (by the first accept after a reload), so a reload applies them to the
/// connections accepted from then on.
#[derive(Default)]
pub(super) struct ConnSettings {
    /// The gate they were built for (a `Weak`: its address is not reused
    /// while this is held).
    gate: Weak<Gate>,
    builder: Option<auto::Builder<GateExec>>,
}

impl ConnSettings {
    pub(super) fn builder_for(&mut self, gate: &Arc<Gate>) -> auto::Builder<GateExec> {
        match &self.builder {
            Some(b) if std::ptr::eq(self.gate.as_ptr(), Arc::as_ptr(gate)) => b.clone(),
            _ => {
                let b = connection_builder(&gate.limits);
                self.gate = Arc::downgrade(gate);
                self.builder = Some(b.clone());
                b
            }
        }
    }
}

/// How one accepted connection is served.
pub(super) struct Conn {
    pub(super) builder: auto::Builder<GateExec>,
    pub(super) watcher: hyper_util::server::graceful::Watcher,
    pub(super) act: Arc<ConnActivity>,
    pub(super) h2: bool,
    pub(super) header_timeout: Duration,
    pub(super) first_by: Instant,
}

/// HTTP/1.1 or h2 (prior knowledge, or ALPN under TLS) on one connection,
/// each request on the config current when it starts.
pub(super) async fn serve_connection<I>(io: I, info: ConnInfo, shared: Arc<Shared>, conn: Conn)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = info.peer;
    // Shared by the connection's requests: a reference count each, not a copy.
    let info = Arc::new(info);
    let act = conn.act.clone();
    let svc = service_fn(move |req| {
        act.request_started();
        pipeline::handle(shared.current(), info.clone(), req)
    });
    let hyper_conn = conn.builder.serve_connection_with_upgrades(io, svc);
    let task = ConnTask::new(
        conn.watcher.watch(hyper_conn.into_owned()),
        conn.act,
        conn.h2,
        conn.header_timeout,
        conn.first_by,
    );
    if let Some(Err(e)) = task.await {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}
