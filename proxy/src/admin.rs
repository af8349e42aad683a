//! The admin listener: health, readiness, the revocation API and the
//! response cache's purges. Separate
//! from the data plane so it can stay on loopback. Reads need no token;
//! changes need `Authorization: Bearer <admin token>` (compared in constant
//! time), and are refused with 403 when no admin token is configured.

use std::convert::Infallible;
use std::sync::Arc;

use asgi_gate_config::Admin;
use asgi_gate_filters::jwt::{self, AuthError};
use asgi_gate_filters::revocation::{KeyHash, RevokeOutcome};
use asgi_gate_filters::static_path::percent_decode;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::body::GateBody;
use crate::clock::unix_now;
use crate::cluster::Sharing;
use crate::gate::{Gate, ReloadError, Shared};
use crate::reject::{self, Reject};

/// Admin request bodies are small JSON documents.
const MAX_ADMIN_BODY: usize = 64 * 1024;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>, conf: Admin) {
    let conf = Arc::new(conf);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let header_timeout = shared.current().limits.header_timeout;
        let shared = shared.clone();
        let conf = conf.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                let conf = conf.clone();
                async move {
                    let resp = match handle(&shared, &conf, req).await {
                        Ok(r) => r,
                        Err(rej) => reject::response(&rej),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            // The public listener's header_timeout: the head, and the wait
            // between keep-alive requests.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<GateBody> {
    let mut resp = Response::new(GateBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn json_value(status: StatusCode, v: &serde_json::Value) -> Response<GateBody> {
    json(status, serde_json::to_vec(v).unwrap_or_default())
}

async fn handle(
    shared: &Shared,
    conf: &Admin,
    req: Request<Incoming>,
) -> Result<Response<GateBody>, Reject> {
    let gate = &shared.current();
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthz") => Ok(json(StatusCode::OK, r#"{"status":"ok"}"#)),
        (Method::GET, "/readyz") => Ok(if gate.is_ready() {
            json(StatusCode::OK, r#"{"status":"ready"}"#)
        } else {
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"not_ready","detail":"an upstream has no worker answering"}"#,
            )
        }),
        (Method::GET, "/metrics") => {
            let mut r = Response::new(GateBody::full(render_metrics(gate)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            Ok(r)
        }
        (Method::GET, "/revocations") => Ok(json_value(
            StatusCode::OK,
            &serde_json::json!({ "count": gate.revocations.list.len() }),
        )),
        (Method::POST, "/reload") => {
            authorize(conf, &req)?;
            let result = shared.reload().await;
            crate::gate::log_reload(&result);
            Ok(match result {
                Ok(notes) => json_value(
                    StatusCode::OK,
                    &serde_json::json!({ "status": "reloaded", "notes": notes }),
                ),
                Err(ReloadError::Invalid(errors)) => json_value(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({
                        "error": "invalid_config",
                        "detail": "the old config keeps serving",
                        "errors": errors.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                    }),
                ),
                Err(e) => json_value(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({ "error": "reload_failed", "detail": e.to_string() }),
                ),
            })
        }
        (_, "/reload") => Err(Reject::MethodNotAllowed(HeaderValue::from_static("POST"))),
        (Method::POST, "/revocations") => {
            authorize(conf, &req)?;
            revoke(gate, req).await
        }
        (method, p) if p.starts_with("/revocations/") => {
            let key = percent_decode(&p["/revocations/".len()..])
                .ok_or(Reject::BadRequest("invalid percent-encoding in the jti"))?;
            match method {
                Method::GET => Ok(match gate.revocations.list.get(&key, unix_now()) {
                    Some(exp) => json_value(
                        StatusCode::OK,
                        &serde_json::json!({ "jti": key, "exp": exp }),
                    ),
                    None => reject::response(&Reject::NotFound),
                }),
                Method::DELETE => {
                    authorize(conf, &req)?;
                    let rev = gate.revocations.clone();
                    let k = key.clone();
                    let removed = tokio::task::spawn_blocking(move || rev.remove(&k))
                        .await
                        .map_err(|_| Reject::ServiceUnavailable)?
                        .map_err(|e| {
                            tracing::error!(error = %e, "revocation log write failed");
                            Reject::ServiceUnavailable
                        })?;
                    if !removed {
                        return Ok(reject::response(&Reject::NotFound));
                    }
                    let sharing = match &gate.revocations.shared {
                        Some(shared) => shared.remove(KeyHash::of(&key)).await,
                        None => Sharing::Done,
                    };
                    Ok(match sharing {
                        Sharing::Done => {
                            let mut r = Response::new(GateBody::empty());
                            *r.status_mut() = StatusCode::NO_CONTENT;
                            r
                        }
                        Sharing::Pending => json_value(
                            StatusCode::ACCEPTED,
                            &serde_json::json!({ "jti": key, "shared": "pending" }),
                        ),
                    })
                }
                _ => Err(Reject::MethodNotAllowed(HeaderValue::from_static(
                    "GET, DELETE",
                ))),
            }
        }
        (Method::GET, "/cache") => {
            let store = gate.cache.as_ref().ok_or(Reject::NotFound)?;
            let (bytes, entries) = store.usage();
            Ok(json_value(
                StatusCode::OK,
                &serde_json::json!({
                    "entries": entries,
                    "bytes": bytes,
                    "max_size": store.conf.max_size,
                }),
            ))
        }
        (Method::DELETE, "/cache") => {
            authorize(conf, &req)?;
            let store = gate.cache.as_ref().ok_or(Reject::NotFound)?;
            let (prefix, key) = purge_query(req.uri().query())?;
            let purged = store.purge(prefix.as_deref(), key.as_deref());
            Ok(json_value(
                StatusCode::OK,
                &serde_json::json!({ "purged": purged }),
            ))
        }
        (_, "/cache") => Err(Reject::MethodNotAllowed(HeaderValue::from_static(
            "GET, DELETE",
        ))),
        (_, "/healthz" | "/readyz") => {
            Err(Reject::MethodNotAllowed(HeaderValue::from_static("GET")))
        }
        (_, "/revocations") => Err(Reject::MethodNotAllowed(HeaderValue::from_static(
            "GET, POST",
        ))),
        _ => Err(Reject::NotFound),
    }
}

/// `DELETE /cache` parameters: `prefix` (a decoded path prefix) and `key`
/// (a surrogate key), percent-decoded; neither means everything.
fn purge_query(query: Option<&str>) -> Result<(Option<String>, Option<String>), Reject> {
    let (mut prefix, mut key) = (None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)
            .ok_or(Reject::BadRequest("invalid percent-encoding in the query"))?;
        if value.is_empty() {
            return Err(Reject::BadRequest(
                "an empty prefix or key would purge everything: use DELETE /cache",
            ));
        }
        match name {
            "prefix" if value.starts_with('/') => prefix = Some(value),
            "prefix" => return Err(Reject::BadRequest("prefix is a path and starts with /")),
            "key" => key = Some(value),
            _ => {
                return Err(Reject::BadRequest(
                    "DELETE /cache takes ?prefix=/path or ?key=SURROGATE-KEY",
                ))
            }
        }
    }
    Ok((prefix, key))
}

/// Mutations need the admin bearer token.
fn authorize(conf: &Admin, req: &Request<Incoming>) -> Result<(), Reject> {
    let Some(expected) = conf.token.as_deref() else {
        return Err(Reject::Forbidden(
            "admin changes are disabled: set admin.token_env to a variable holding a token",
        ));
    };
    let sent = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    match sent {
        None => Err(Reject::Auth(AuthError::Missing)),
        Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(Reject::Auth(AuthError::BadSignature)),
    }
}

/// Equal-length comparison whose time does not depend on where the inputs
/// differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[derive(Deserialize)]
#[serde(untagged, deny_unknown_fields)]
enum RevokeBody {
    Jti { jti: String, exp: u64 },
    Token { token: String },
}

const REVOKE_USAGE: &str =
    r#"body must be JSON {"jti": "...", "exp": <unix seconds>} or {"token": "<jwt>"}"#;

async fn revoke(gate: &Arc<Gate>, req: Request<Incoming>) -> Result<Response<GateBody>, Reject> {
    let body = Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map_err(|_| Reject::BadRequest("body missing or larger than 64 KiB"))?
        .to_bytes();
    let parsed: RevokeBody =
        serde_json::from_slice(&body).map_err(|_| Reject::BadRequest(REVOKE_USAGE))?;
    let (key, exp) = match parsed {
        RevokeBody::Jti { jti, exp } => {
            if jti.is_empty() {
                return Err(Reject::BadRequest("jti must not be empty"));
            }
            (jti, exp.saturating_add(gate.revocations.max_leeway()))
        }
        RevokeBody::Token { token } => gate
            .auth
            .iter()
            .find_map(|slot| {
                let policy = slot.current();
                let claims = policy.verify_for_revocation(&token).ok()?;
                Some((
                    jwt::revocation_key(&claims, &token),
                    policy.revocation_expiry(&claims),
                ))
            })
            .ok_or(Reject::BadRequest(
                "the token is not signed by any configured auth policy (or has no exp)",
            ))?,
    };
    let rev = gate.revocations.clone();
    let k = key.clone();
    let outcome = tokio::task::spawn_blocking(move || rev.revoke(&k, exp))
        .await
        .map_err(|_| Reject::ServiceUnavailable)?
        .map_err(|e| {
            tracing::error!(error = %e, "revocation log write failed");
            Reject::ServiceUnavailable
        })?;
    let (status, expired) = match outcome {
        RevokeOutcome::Inserted => (StatusCode::CREATED, false),
        RevokeOutcome::AlreadyRevoked => (StatusCode::OK, false),
        RevokeOutcome::AlreadyExpired => (StatusCode::OK, true),
    };
    let exp = gate.revocations.list.get(&key, unix_now()).unwrap_or(exp);
    let mut body = serde_json::json!({ "jti": key, "exp": exp, "expired": expired });
    if let (Some(shared), false) = (&gate.revocations.shared, expired) {
        // Applied here either way; a change Redis did not take waits in the
        // outbox and is sent when it answers: 202, nothing to retry.
        let (status, sharing) = match shared.revoke(KeyHash::of(&key), exp).await {
            Sharing::Done => (status, serde_json::json!(true)),
            Sharing::Pending => (StatusCode::ACCEPTED, serde_json::json!("pending")),
        };
        body["shared"] = sharing;
        return Ok(json_value(status, &body));
    }
    Ok(json_value(status, &body))
}

/// Text exposition format, with the gauges read from the gate just now.
fn render_metrics(gate: &Gate) -> Vec<u8> {
    let Some(m) = crate::metrics::get() else {
        return Vec::new();
    };
    for up in &gate.upstreams {
        let state = up.pool_state();
        m.pool_connections
            .with_label_values(&[up.name.as_str(), "busy"])
            .set(state.busy as i64);
        m.pool_connections
            .with_label_values(&[up.name.as_str(), "idle"])
            .set(state.idle as i64);
        m.pool_connections
            .with_label_values(&[up.name.as_str(), "waiting"])
            .set(state.waiting as i64);
        for (w, limit) in up.workers.iter().zip(up.concurrency_limits()) {
            m.concurrency_limit
                .with_label_values(&[up.name.as_str(), &w.socket.to_string_lossy()])
                .set(limit as i64);
        }
        m.queue_length
            .with_label_values(&[up.name.as_str()])
            .set(up.queued() as i64);
    }
    m.revocations.set(gate.revocations.list.len() as i64);
    m.revocation_outbox.set(
        gate.revocations
            .shared
            .as_ref()
            .map_or(0, |s| s.outbox_len() as i64),
    );
    for l in &gate.rate_limits {
        m.rate_limit_keys
            .with_label_values(&[l.name()])
            .set(l.len() as i64);
    }
    if let Some(store) = &gate.cache {
        let (bytes, entries) = store.usage();
        m.cache_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        m.cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }
    m.websockets_open.set(
        gate.websockets_open
            .load(std::sync::atomic::Ordering::Relaxed) as i64,
    );
    m.encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_values() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
