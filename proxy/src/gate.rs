//! The gate's runtime state built from a checked config: router, upstreams,
//! limits. Shared read-only by every connection.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use asgi_gate_config::{Config, Limits};
use ipnet::IpNet;

use crate::router::{Router, RouterError};
use crate::upstream::Upstream;

pub struct Gate {
    pub router: Router,
    pub upstreams: Vec<Upstream>,
    pub trusted_proxies: Vec<IpNet>,
    pub limits: Limits,
    /// WebSocket sessions currently relayed.
    pub websockets_open: Arc<AtomicUsize>,
}

impl Gate {
    pub fn new(cfg: &Config) -> Result<Gate, RouterError> {
        let upstreams: Vec<Upstream> = cfg
            .upstreams
            .iter()
            .map(|(name, conf)| Upstream::new(name, conf))
            .collect();
        let router = Router::new(&cfg.routes, |name| {
            upstreams.iter().position(|u| u.name == name)
        })?;
        Ok(Gate {
            router,
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
