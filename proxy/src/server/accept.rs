//! The accept loop of one listener: the connection caps (total and per
//! IP; over a cap a plain listener answers 503 and closes), TCP keepalive,
//! the TLS handshake and the first bytes (HTTP/1 or h2c), all within
//! `header_timeout` of the accept.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asgi_gate_config::Limits;
use asgi_gate_filters::forwarding;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::deadlines::ConnActivity;
use crate::gate::tls::Tls;
use crate::gate::Shared;
use crate::pipeline::ConnInfo;
use crate::reject::{self, Reject};

use super::connection::{serve_connection, Conn, ConnSettings};

/// TCP keepalive on accepted sockets: a peer gone without a FIN is found
/// after 60 s idle + 5 probes 10 s apart.
const TCP_KEEPIDLE: Duration = Duration::from_secs(60);
const TCP_KEEPINTVL: Duration = Duration::from_secs(10);
const TCP_KEEPCNT: u32 = 5;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Open client connections, in total and per IP, against `limits`.
#[derive(Default)]
pub(super) struct OpenConns {
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection; counted down when dropped.
struct ConnSlot {
    open: Arc<OpenConns>,
    ip: IpAddr,
}

impl OpenConns {
    /// `proxy`: the peer is a trusted proxy, which carries many clients'
    /// connections (an ingress, a load balancer): only the total applies.
    fn admit(self: &Arc<Self>, ip: IpAddr, limits: &Limits, proxy: bool) -> Option<ConnSlot> {
        let mut m = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = TOTAL.load(std::sync::atomic::Ordering::Relaxed);
        let n = m.get(&ip).copied().unwrap_or(0);
        if total >= limits.max_connections || (!proxy && n >= limits.max_connections_per_ip) {
            return None;
        }
        m.insert(ip, n + 1);
        TOTAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(ConnSlot {
            open: self.clone(),
            ip,
        })
    }
}

static TOTAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut m = self.open.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
        TOTAL.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A peer gone without a FIN (power loss, NAT timeout) is found by the
/// kernel rather than held forever.
fn set_tcp_keepalive(stream: &TcpStream) {
    use rustix::net::sockopt;
    let r = sockopt::set_socket_keepalive(stream, true)
        .and_then(|()| sockopt::set_tcp_keepidle(stream, TCP_KEEPIDLE))
        .and_then(|()| sockopt::set_tcp_keepintvl(stream, TCP_KEEPINTVL))
        .and_then(|()| sockopt::set_tcp_keepcnt(stream, TCP_KEEPCNT));
    if let Err(e) = r {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

/// Over a connection cap: a plain listener answers 503 JSON and closes; a
/// TLS one closes at once (a handshake per refused connection is the CPU an
/// overload should not spend).
async fn refuse(mut stream: TcpStream, tls: bool) {
    crate::metrics::client_cutoff("connection_limit");
    if tls {
        return;
    }
    let answer = reject::raw_http1(&Reject::ServiceUnavailable);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    })
    .await;
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    shared: Arc<Shared>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
    open: Arc<OpenConns>,
) {
    let mut settings = ConnSettings::default();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let accepted_at = Instant::now();
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        // The settings current when the connection is accepted, for its
        // whole life.
        let (builder, limits, proxy) = {
            let gate = shared.current();
            let proxy =
                forwarding::is_trusted(forwarding::canonical(peer.ip()), &gate.trusted_proxies);
            (settings.builder_for(&gate), gate.limits.clone(), proxy)
        };
        let Some(slot) = open.admit(peer.ip(), &limits, proxy) else {
            tracing::debug!(%peer, "over a connection cap; refused");
            tokio::spawn(refuse(stream, tls.is_some()));
            continue;
        };
        set_tcp_keepalive(&stream);
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // One deadline from the accept: TLS handshake, h2 preface and the
            // first request head all within header_timeout.
            let first_by = accepted_at + limits.header_timeout;
            let act = ConnActivity::new(limits.body_timeout);
            let conn = |h2| Conn {
                builder,
                watcher,
                act,
                h2,
                header_timeout: limits.header_timeout,
                first_by,
            };
            let Some(tls) = tls else {
                let Some(h2) = request_started(&stream, first_by).await else {
                    crate::metrics::client_cutoff("first_request");
                    return;
                };
                let info = ConnInfo::new(peer, "http");
                serve_connection(TokioIo::new(stream), info, shared, conn(h2)).await;
                return;
            };
            match tokio::time::timeout_at(first_by, tls.acceptor().accept(stream)).await {
                Ok(Ok(stream)) => {
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let info = ConnInfo::new(peer, "https");
                    serve_connection(TokioIo::new(stream), info, shared, conn(h2)).await;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                Err(_) => {
                    crate::metrics::client_cutoff("first_request");
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        });
    }
}

/// Waits until the client has sent enough to tell HTTP/1 from h2c, by
/// `deadline`: `Some(true)` for h2c. A connection that sends nothing, or
/// stalls inside the h2 preface, is closed: hyper-util's version detection
/// has no timeout.
async fn request_started(stream: &TcpStream, deadline: Instant) -> Option<bool> {
    let mut buf = [0u8; 24];
    let mut have = 0;
    loop {
        // Woken by new bytes only: a peek that finds no more than last time
        // clears the readiness.
        tokio::time::timeout_at(deadline, stream.readable())
            .await
            .ok()?
            .ok()?;
        let peeked = stream.try_io(Interest::READABLE, || {
            let (_, n) = rustix::net::recv(stream, &mut buf[..], rustix::net::RecvFlags::PEEK)?;
            if n == have && n != 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match peeked {
            Ok(0) => return None,
            Ok(n) => {
                have = n;
                if buf[..n] != H2_PREFACE[..n] {
                    return Some(false);
                }
                if n >= H2_PREFACE.len() {
                    return Some(true);
                }
                // A partial h2 preface: wait for more.
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
    }
}
