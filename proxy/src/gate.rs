//! The gate's runtime state built from a checked config: router, upstreams,
//! rate limits, JWT policies, revocation list. Shared read-only by every
//! connection (the parts that change — JWKS keys, revocations, buckets —
//! change behind their own locks).

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use asgi_gate_config::{Config, Limits, RateKey, Route, RouteTarget};
use asgi_gate_filters::ratelimit::{KeyKind, LimitParams, RateLimit, RateLimitError};
use http::HeaderName;
use ipnet::IpNet;

use crate::auth::{self, AuthSetupError, AuthSlot, Revocations};
use crate::router::{RouteEntry, Router, RouterError};
use crate::upstream::Upstream;

pub struct Gate {
    pub router: Router,
    pub upstreams: Vec<Upstream>,
    /// Named rate limits; routes naming the same limit share its buckets.
    pub rate_limits: Vec<Arc<RateLimit>>,
    pub auth: Vec<Arc<AuthSlot>>,
    /// Every header any policy forwards a claim in: removed from every
    /// client request, on every route, so identity cannot be forged.
    pub claim_headers: Vec<HeaderName>,
    pub revocations: Arc<Revocations>,
    pub trusted_proxies: Vec<IpNet>,
    pub limits: Limits,
    /// WebSocket sessions currently relayed.
    pub websockets_open: Arc<AtomicUsize>,
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
}

fn rate_limit(name: &str, conf: &asgi_gate_config::RateLimit) -> Result<RateLimit, GateError> {
    let key = match &conf.key {
        RateKey::ClientIp => KeyKind::ClientIp,
        RateKey::Claim(c) => KeyKind::Claim(c.as_str().into()),
        RateKey::Header(h) => KeyKind::Header(h.clone()),
    };
    let mut params = LimitParams::new(key, conf.rate.count, conf.rate.per);
    params.burst = Some(conf.burst);
    params.headers = conf.headers;
    params.max_keys = conf.max_keys;
    params.ipv6_prefix = conf.ipv6_prefix;
    RateLimit::new(name, params).map_err(|source| GateError::RateLimit {
        name: name.to_string(),
        source,
    })
}

impl Gate {
    /// Builds the gate. Async because a `jwks_url` is fetched once at start.
    pub async fn new(cfg: &Config) -> Result<Gate, GateError> {
        let rate_limits = cfg
            .rate_limits
            .iter()
            .map(|(name, conf)| rate_limit(name, conf).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let mut auth = Vec::with_capacity(cfg.auth.len());
        for (name, conf) in &cfg.auth {
            auth.push(Arc::new(auth::build_slot(name, conf).await?));
        }
        let mut claim_headers: Vec<HeaderName> = Vec::new();
        for slot in &auth {
            for h in slot.current().claim_header_names() {
                if !claim_headers.contains(h) {
                    claim_headers.push(h.clone());
                }
            }
        }
        let max_leeway = auth
            .iter()
            .map(|s| s.current().leeway_secs())
            .max()
            .unwrap_or(0);
        let revocations = Arc::new(Revocations::open(cfg.revocation.as_ref(), max_leeway)?);
        let upstreams: Vec<Upstream> = cfg
            .upstreams
            .iter()
            .map(|(name, conf)| Upstream::new(name, conf))
            .collect();
        let router = Router::new(&cfg.routes, |route| {
            route_entry(route, cfg, &upstreams, &rate_limits, &auth)
        })?;
        Ok(Gate {
            router,
            upstreams,
            rate_limits,
            auth,
            claim_headers,
            revocations,
            trusted_proxies: cfg.trusted_proxies.clone(),
            limits: cfg.limits.clone(),
            websockets_open: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Ready: every upstream has at least one worker answering.
    pub fn is_ready(&self) -> bool {
        self.upstreams.iter().all(|u| u.any_healthy())
    }
}

/// Resolves a route's names into the parts the pipeline uses.
fn route_entry(
    route: &Route,
    cfg: &Config,
    upstreams: &[Upstream],
    limits: &[Arc<RateLimit>],
    auth: &[Arc<AuthSlot>],
) -> Result<RouteEntry, RouterError> {
    let unknown = |kind, name: &str| RouterError::Unknown {
        path: route.path.clone(),
        kind,
        name: name.to_string(),
    };
    let upstream = match &route.target {
        RouteTarget::Upstream(name) => upstreams
            .iter()
            .position(|u| u.name == *name)
            .ok_or_else(|| unknown("upstream", name))?,
        // Static routes are refused before the gate is built.
        RouteTarget::Static(_) => usize::MAX,
    };
    let mut limits_before_auth = Vec::new();
    let mut limits_after_auth = Vec::new();
    for name in &route.rate_limits {
        let l = limits
            .iter()
            .find(|l| l.name() == name)
            .ok_or_else(|| unknown("rate limit", name))?;
        if l.needs_claims() {
            limits_after_auth.push(l.clone());
        } else {
            limits_before_auth.push(l.clone());
        }
    }
    let auth = match &route.auth {
        None => None,
        Some(name) => Some(
            auth.iter()
                .find(|s| s.name == *name)
                .cloned()
                .ok_or_else(|| unknown("auth policy", name))?,
        ),
    };
    Ok(RouteEntry {
        conf: route.clone(),
        upstream,
        limits_before_auth,
        limits_after_auth,
        auth,
        compression: crate::compress::route_policy(cfg.compression.as_ref(), route),
    })
}
