//! The gate: the state a request reads, built from a checked config —
//! router (`router`), upstreams, rate limits, JWT policies, revocation list,
//! TLS certificates (`tls`). `build` makes one; `reload` swaps it whole
//! ([`Shared`]). Shared read-only by every connection (the parts that
//! change — JWKS keys, revocations, buckets — change behind their own
//! locks).
//!
//! It holds each route's prepared step policies (`steps/`), upstreams and
//! the Redis link (`cluster`), and names nothing above it: not the
//! pipeline, `reject` or the server.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use asgi_gate_config::Limits;
use asgi_gate_filters::ratelimit::{RateLimit, RateLimitError};
use asgi_gate_filters::{header_names, path, security_headers};
use http::HeaderName;
use ipnet::IpNet;

use crate::cluster::SharedLimits;
use crate::gate::router::{Router, RouterError};
use crate::steps::auth::{AuthSetupError, AuthSlot, Revocations};
use crate::upstream::Upstream;

mod build;
pub mod reload;
pub mod router;
pub mod tls;

pub use reload::{log_reload, ReloadError, Shared};

pub struct Gate {
    pub router: Router,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Named rate limits; routes naming the same limit share its buckets.
    pub rate_limits: Vec<Arc<RateLimit>>,
    pub auth: Vec<Arc<AuthSlot>>,
    /// Every header any policy forwards a claim in: removed from every
    /// client request, on every route, so identity cannot be forged.
    pub claim_headers: Vec<HeaderName>,
    /// Names the gate sets or decides on; a client's spelling of one with
    /// `_` for `-` is removed (Django and CGI servers fold the two).
    pub owned_headers: Vec<HeaderName>,
    pub underscores: header_names::Underscores,
    pub encoded_slash: path::EncodedSlash,
    pub revocations: Arc<Revocations>,
    pub trusted_proxies: Vec<IpNet>,
    pub limits: Limits,
    /// `None` = any host.
    pub allowed_hosts: Option<Vec<String>>,
    /// `https_redirect: true`: the port plain-HTTP requests are sent to.
    pub https_redirect: Option<u16>,
    pub security_headers: Option<security_headers::Policy>,
    /// For `shared: true` limits (`revocation.redis` is then set).
    pub shared_limits: Option<Arc<SharedLimits>>,
    /// WebSocket sessions currently relayed.
    pub websockets_open: Arc<AtomicUsize>,
    /// The response cache, when some route has `cache:`.
    pub cache: Option<Arc<crate::steps::cache::Store>>,
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("{0}")]
    Router(#[from] RouterError),
    #[error("rate limit `{name}`: {source}")]
    RateLimit {
        name: String,
        source: RateLimitError,
    },
    #[error("{0}")]
    Auth(#[from] AuthSetupError),
    #[error("security_headers.{0}: not a valid header value")]
    HeaderValue(&'static str),
    #[error("{0}")]
    Shared(crate::cluster::SharedError),
}

impl Gate {
    /// Ready: every upstream has at least one worker answering.
    pub fn is_ready(&self) -> bool {
        self.upstreams.iter().all(|u| u.any_healthy())
    }
}
