//! The admin listener: health and readiness now; metrics, revocations and
//! reload join it with their features. Separate from the data plane so it
//! can stay on loopback.

use std::convert::Infallible;
use std::sync::Arc;

use asgi_gate_config::Admin;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::body::GateBody;
use crate::gate::Gate;
use crate::reject::{self, Reject};

pub async fn serve(listener: TcpListener, gate: Arc<Gate>, _conf: Admin) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let gate = gate.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let gate = gate.clone();
                async move { Ok::<_, Infallible>(route(&gate, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn json(status: StatusCode, body: &'static str) -> Response<GateBody> {
    let mut resp = Response::new(GateBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn route(gate: &Gate, req: &Request<Incoming>) -> Response<GateBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => json(StatusCode::OK, r#"{"status":"ok"}"#),
        (&Method::GET, "/readyz") => {
            if gate.is_ready() {
                json(StatusCode::OK, r#"{"status":"ready"}"#)
            } else {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"status":"not_ready","detail":"an upstream has no worker answering"}"#,
                )
            }
        }
        (_, "/healthz" | "/readyz") => {
            reject::response(&Reject::MethodNotAllowed(HeaderValue::from_static("GET")))
        }
        _ => reject::response(&Reject::NotFound),
    }
}
