//! The gate's runtime state built from a checked config: router, upstreams,
//! limits. Shared read-only by every connection.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use asgi_gate_config::{Config, Limits, RateKey};
use asgi_gate_filters::ratelimit::{KeyKind, LimitParams, RateLimit, RateLimitError};
use ipnet::IpNet;

use crate::router::{Router, RouterError};
use crate::upstream::Upstream;

pub struct Gate {
    pub router: Router,
    /// Named rate limits; routes naming the same limit share its buckets.
    pub rate_limits: Vec<Arc<RateLimit>>,
    pub upstreams: Vec<Upstream>,
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
    pub fn new(cfg: &Config) -> Result<Gate, GateError> {
        let rate_limits = cfg
            .rate_limits
            .iter()
            .map(|(name, conf)| rate_limit(name, conf).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let upstreams: Vec<Upstream> = cfg
            .upstreams
            .iter()
            .map(|(name, conf)| Upstream::new(name, conf))
            .collect();
        let router = Router::new(
            &cfg.routes,
            |name| upstreams.iter().position(|u| u.name == name),
            |name| rate_limits.iter().find(|l| l.name() == name).cloned(),
        )?;
        Ok(Gate {
            router,
            rate_limits,
            upstreams,
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
