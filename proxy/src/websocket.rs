//! WebSocket passthrough: the handshake goes to the worker like any request;
//! on its 101 both connections are upgraded and bytes are copied both ways
//! until either side closes. Frames are not parsed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use asgi_gate_filters::forwarding;
use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::body::{GateBody, InFlight};
use crate::gate::Gate;
use crate::pipeline::to_client;
use crate::reject::Reject;

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// An HTTP/1.1 WebSocket handshake (RFC 6455 §4.1).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == http::Method::GET
        && req.version() == http::Version::HTTP_11
        && has_token(req.headers(), header::UPGRADE, "websocket")
        && has_token(req.headers(), header::CONNECTION, "upgrade")
}

struct OpenSession(Arc<AtomicUsize>);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// After one side has closed, how long the other may take to finish: the
/// close handshake needs milliseconds; a peer that never closes must not
/// hold the session (and its pooled socket) for ever.
const LINGER: Duration = Duration::from_secs(2);

/// Copies bytes both ways until either side closes, then lets the other
/// direction drain for at most `LINGER`.
async fn copy_both_ways<C, W>(client: C, worker: W)
where
    C: AsyncRead + AsyncWrite,
    W: AsyncRead + AsyncWrite,
{
    let (mut client_rx, mut client_tx) = tokio::io::split(client);
    let (mut worker_rx, mut worker_tx) = tokio::io::split(worker);
    let upstream = async {
        let r = tokio::io::copy(&mut client_rx, &mut worker_tx).await;
        let _ = worker_tx.shutdown().await;
        r
    };
    let downstream = async {
        let r = tokio::io::copy(&mut worker_rx, &mut client_tx).await;
        let _ = client_tx.shutdown().await;
        r
    };
    tokio::pin!(upstream, downstream);
    let first = tokio::select! {
        r = &mut upstream => { let _ = tokio::time::timeout(LINGER, downstream).await; r }
        r = &mut downstream => { let _ = tokio::time::timeout(LINGER, upstream).await; r }
    };
    if let Err(e) = first {
        tracing::debug!(error = %e, "websocket relay ended");
    }
}

/// Given the worker's answer to a handshake: on 101, relay in the
/// background and answer the client 101; anything else goes back as is.
pub fn relay(
    gate: &Gate,
    mut resp: Response<Incoming>,
    in_flight: InFlight,
    client_side: OnUpgrade,
) -> Result<Response<GateBody>, Reject> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(to_client(resp, in_flight));
    }
    let worker_side = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    forwarding::strip_hop_by_hop(&mut parts.headers, true);
    gate.websockets_open.fetch_add(1, Ordering::Relaxed);
    let session = OpenSession(gate.websockets_open.clone());
    tokio::spawn(async move {
        let _session = session;
        let _in_flight = in_flight;
        let (client, worker) = tokio::join!(client_side, worker_side);
        match (client, worker) {
            (Ok(client), Ok(worker)) => {
                copy_both_ways(TokioIo::new(client), TokioIo::new(worker)).await
            }
            (Err(e), _) | (_, Err(e)) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    Ok(Response::from_parts(parts, GateBody::empty()))
}
