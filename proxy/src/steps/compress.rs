//! Response compression as the pipeline applies it: which routes compress
//! (built from the config), and the response step that follows the decision
//! made by `filters::compression` (negotiation, eligibility, headers).

use std::sync::Arc;

use asgi_gate_config::{Coding as ConfCoding, Compression, Route};
use asgi_gate_filters::compression::{self, Coding, CompressedBody, Decision, Levels, Policy};
use http::{HeaderMap, Method, Response};

use crate::body::GateBody;

fn coding(c: ConfCoding) -> Coding {
    match c {
        ConfCoding::Br => Coding::Br,
        ConfCoding::Gzip => Coding::Gzip,
        ConfCoding::Zstd => Coding::Zstd,
    }
}

/// The policy of one route: `None` when it does not compress. A route's
/// `compression: true` without a top-level section uses the defaults.
pub fn route_policy(global: Option<&Compression>, route: &Route) -> Option<Arc<Policy>> {
    if route.compression == Some(false) || (global.is_none() && route.compression.is_none()) {
        return None;
    }
    let mut p = Policy::default();
    if let Some(g) = global {
        p.algorithms = g.algorithms.iter().map(|c| coding(*c)).collect();
        p.min_size = g.min_size;
        p.content_types = g.content_types.clone();
        let mut levels = Levels::default();
        for (c, level) in &g.levels {
            match c {
                ConfCoding::Gzip => levels.gzip = *level,
                ConfCoding::Br => levels.br = *level,
                ConfCoding::Zstd => levels.zstd = i32::try_from(*level).unwrap_or(levels.zstd),
            }
        }
        p.levels = levels;
    }
    p.sse = route.compress_event_stream;
    Some(Arc::new(p))
}

/// Request side: the coding the client accepts, and, for a request going
/// `to_worker`, `Accept-Encoding` removed so the worker never spends CPU
/// compressing. A static route keeps it: it picks precompressed files by it.
pub fn negotiate(policy: &Policy, req_headers: &mut HeaderMap, to_worker: bool) -> Option<Coding> {
    let accepted = compression::negotiate(req_headers, &policy.algorithms);
    if to_worker {
        compression::strip_accept_encoding(req_headers);
    }
    accepted
}

/// Why a response could not be compressed (`reject.rs`: 502; the cause
/// is logged here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressError {
    /// The worker's body failed before its first bytes.
    WorkerBody,
    /// The encoder could not start.
    Encoder,
}

/// Response side: compress when the decision says so, else leave the body
/// alone (adding `Vary` when it could have been compressed).
pub async fn respond(
    policy: &Policy,
    method: &Method,
    accepted: Option<Coding>,
    resp: Response<GateBody>,
) -> Result<Response<GateBody>, CompressError> {
    let decision =
        compression::should_compress(policy, method, accepted, resp.status(), resp.headers());
    let (mut parts, body) = resp.into_parts();
    let body = match decision {
        Decision::Compress(c) => encode(policy, c, &mut parts.headers, body)?,
        Decision::UnknownSize(c) => {
            // No Content-Length: the first chunk decides whether it is worth it.
            let head = compression::buffer_head(body, policy.min_size)
                .await
                .map_err(|e| {
                    tracing::debug!(error = %e, "worker response failed before its first bytes");
                    CompressError::WorkerBody
                })?;
            if head.is_small(policy.min_size) {
                compression::add_vary(&mut parts.headers);
                GateBody::boxed(head)
            } else {
                encode(policy, c, &mut parts.headers, head)?
            }
        }
        d if d.needs_vary() => {
            compression::add_vary(&mut parts.headers);
            body
        }
        _ => body,
    };
    Ok(Response::from_parts(parts, body))
}

fn encode<B>(
    policy: &Policy,
    c: Coding,
    headers: &mut HeaderMap,
    body: B,
) -> Result<GateBody, CompressError>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<crate::body::BoxError>,
{
    let flush = compression::is_event_stream(headers);
    let encoder = CompressedBody::new(body, c, &policy.levels, flush).map_err(|e| {
        tracing::warn!(error = %e, coding = c.as_str(), "cannot start the encoder");
        CompressError::Encoder
    })?;
    compression::apply_headers(headers, c);
    Ok(GateBody::boxed(encoder))
}
