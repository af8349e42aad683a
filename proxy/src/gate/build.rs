//! How a [`Gate`] is built from a checked config: each route's names
//! resolved into the parts the pipeline uses, and what survives a reload
//! (buckets, pools, the revocation list) lent by the previous gate.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use asgi_gate_config::{Config, Cors, RateKey, Route, RouteCors, RouteTarget};
use asgi_gate_filters::ratelimit::{KeyKind, LimitParams, RateLimit};
use asgi_gate_filters::{cors, forwarding, header_names, path, request_id, security_headers};
use http::{HeaderName, HeaderValue};

use crate::cluster::SharedLimits;
use crate::gate::router::{RouteEntry, Router, RouterError, Target};
use crate::steps::auth::{self, AuthSlot, Revocations};
use crate::steps::cache::Store;
use crate::steps::static_files::StaticRoute;
use crate::upstream::Upstream;

use super::{Gate, GateError};

fn cors_policy(c: &Cors) -> cors::Policy {
    cors::Policy::new(
        &c.allow_origins,
        &c.allow_methods,
        &c.allow_headers,
        &c.expose_headers,
        c.allow_credentials,
        c.max_age,
    )
}

fn security_policy(cfg: &Config) -> Result<Option<security_headers::Policy>, GateError> {
    let Some(sh) = &cfg.security_headers else {
        return Ok(None);
    };
    let value = |v: &Option<String>, name: &'static str| {
        v.as_deref()
            .map(|s| HeaderValue::from_str(s).map_err(|_| GateError::HeaderValue(name)))
            .transpose()
    };
    Ok(Some(security_headers::Policy {
        hsts: sh.hsts,
        content_type_options: value(&sh.content_type_options, "content_type_options")?,
        referrer_policy: value(&sh.referrer_policy, "referrer_policy")?,
        frame_options: value(&sh.frame_options, "frame_options")?,
        remove: sh.remove.clone(),
    }))
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
    params.shared = conf.shared;
    RateLimit::new(name, params).map_err(|source| GateError::RateLimit {
        name: name.to_string(),
        source,
    })
}

impl Gate {
    /// Builds the gate. Async because a `jwks_url` is fetched once at start.
    /// On reload, `previous` lends what must survive it: the buckets of
    /// unchanged rate limits, the pools of unchanged upstreams, and the
    /// revocation list. New upstreams and policies get their background
    /// tasks here.
    pub async fn build(cfg: &Config, previous: Option<&Gate>) -> Result<Gate, GateError> {
        let mut rate_limits = Vec::with_capacity(cfg.rate_limits.len());
        for (name, conf) in &cfg.rate_limits {
            let fresh = rate_limit(name, conf)?;
            let kept = previous.and_then(|p| {
                p.rate_limits
                    .iter()
                    .find(|l| l.name() == name && l.params() == fresh.params())
            });
            rate_limits.push(kept.cloned().unwrap_or_else(|| Arc::new(fresh)));
        }
        let mut auth = Vec::with_capacity(cfg.auth.len());
        for (name, conf) in &cfg.auth {
            let slot = Arc::new(auth::build_slot(name, conf).await?);
            tokio::spawn(auth::jwks_refresher(Arc::downgrade(&slot)));
            auth.push(slot);
        }
        let mut claim_headers: Vec<HeaderName> = Vec::new();
        for slot in &auth {
            for h in slot.current().claim_header_names() {
                if !claim_headers.contains(h) {
                    claim_headers.push(h.clone());
                }
            }
        }
        let owned_headers = owned_headers(cfg, &claim_headers);
        let max_leeway = max_leeway(&auth);
        let revocations = match previous {
            // The list outlives reloads; its log file is a restart-time
            // setting. Its leeway is set by `try_reload` once this build
            // has succeeded.
            Some(p) => p.revocations.clone(),
            None => {
                let r = Arc::new(Revocations::open(cfg.revocation.as_ref(), max_leeway)?);
                tokio::spawn(auth::revocation_sweeper(Arc::downgrade(&r)));
                if let Some(shared) = r.shared.clone() {
                    let list = Arc::downgrade(&r);
                    tokio::spawn(async move { shared.follow(list).await });
                }
                r
            }
        };
        let upstreams: Vec<Arc<Upstream>> = cfg
            .upstreams
            .iter()
            .map(|(name, conf)| {
                let kept = previous.and_then(|p| {
                    p.upstreams
                        .iter()
                        .find(|u| u.name == *name && u.conf == *conf)
                });
                kept.cloned().unwrap_or_else(|| {
                    let up = Arc::new(Upstream::new(name, conf));
                    tokio::spawn(crate::upstream::health_loop(Arc::downgrade(&up)));
                    up
                })
            })
            .collect();
        let cors = cfg.cors.as_ref().map(|c| Arc::new(cors_policy(c)));
        // The revocation list's Redis connection serves the limits too.
        let shared_limits = match cfg.revocation.as_ref().and_then(|r| r.redis.as_deref()) {
            Some(url) if cfg.rate_limits.values().any(|l| l.shared) => {
                Some(Arc::new(match &revocations.shared {
                    Some(s) => SharedLimits::new(s.connection()),
                    None => SharedLimits::connect(url).map_err(GateError::Shared)?,
                }))
            }
            _ => None,
        };
        let router = Router::new(&cfg.routes, |route| {
            route_entry(route, cfg, &upstreams, &rate_limits, &auth, cors.as_ref())
        })?;
        Ok(Gate {
            router,
            upstreams,
            rate_limits,
            auth,
            claim_headers,
            owned_headers,
            underscores: match cfg.headers.underscores {
                asgi_gate_config::Underscores::Owned => header_names::Underscores::Owned,
                asgi_gate_config::Underscores::Drop => header_names::Underscores::Drop,
            },
            encoded_slash: match cfg.paths.encoded_slash {
                asgi_gate_config::EncodedSlash::Reject => path::EncodedSlash::Reject,
                asgi_gate_config::EncodedSlash::Keep => path::EncodedSlash::Keep,
            },
            revocations,
            trusted_proxies: cfg.trusted_proxies.clone(),
            limits: cfg.limits.clone(),
            allowed_hosts: cfg.allowed_hosts.clone(),
            https_redirect: cfg
                .https_redirect
                .then(|| {
                    cfg.listen
                        .iter()
                        .find(|l| l.tls.is_some())
                        .map(|l| l.address.port())
                })
                .flatten(),
            security_headers: security_policy(cfg)?,
            shared_limits,
            // Sessions outlive reloads; so does their count.
            websockets_open: previous
                .map(|p| p.websockets_open.clone())
                .unwrap_or_else(|| Arc::new(AtomicUsize::new(0))),
            cache: cache_store(cfg, previous),
        })
    }
}

/// The response cache, when a route uses it: the previous gate's (with its
/// entries) while its settings are unchanged. A route's own `cache:` with
/// no top-level section uses the defaults.
fn cache_store(cfg: &Config, previous: Option<&Gate>) -> Option<Arc<Store>> {
    if !cfg.routes.iter().any(|r| r.cache.is_some()) {
        return None;
    }
    let conf = cfg.cache.clone().unwrap_or_default();
    let kept = previous
        .and_then(|p| p.cache.as_ref())
        .filter(|s| s.conf == conf);
    Some(kept.cloned().unwrap_or_else(|| Arc::new(Store::new(&conf))))
}

/// The headers the gate sets (X-Forwarded-*, X-Request-Id, claims) or
/// decides on (rate-limit keys, Accept-Encoding).
fn owned_headers(cfg: &Config, claim_headers: &[HeaderName]) -> Vec<HeaderName> {
    let mut owned = vec![
        forwarding::X_FORWARDED_FOR.clone(),
        forwarding::X_FORWARDED_PROTO.clone(),
        forwarding::X_FORWARDED_HOST.clone(),
        request_id::X_REQUEST_ID.clone(),
        http::header::ACCEPT_ENCODING,
    ];
    let keyed = cfg.rate_limits.values().filter_map(|l| match &l.key {
        RateKey::Header(h) => Some(h),
        _ => None,
    });
    for h in claim_headers.iter().chain(keyed) {
        if !owned.contains(h) {
            owned.push(h.clone());
        }
    }
    owned
}

/// The largest leeway of all policies: what a bare `{jti, exp}` revocation
/// adds, so it lasts as long as any policy could accept the token.
pub(super) fn max_leeway(auth: &[Arc<AuthSlot>]) -> u64 {
    auth.iter()
        .map(|s| s.current().leeway_secs())
        .max()
        .unwrap_or(0)
}

/// Resolves a route's names into the parts the pipeline uses.
fn route_entry(
    route: &Route,
    cfg: &Config,
    upstreams: &[Arc<Upstream>],
    limits: &[Arc<RateLimit>],
    auth: &[Arc<AuthSlot>],
    global_cors: Option<&Arc<cors::Policy>>,
) -> Result<RouteEntry, RouterError> {
    let unknown = |kind, name: &str| RouterError::Unknown {
        path: route.path.clone(),
        kind,
        name: name.to_string(),
    };
    let target = match &route.target {
        RouteTarget::Upstream(name) => Target::Upstream(
            upstreams
                .iter()
                .position(|u| u.name == *name)
                .ok_or_else(|| unknown("upstream", name))?,
        ),
        RouteTarget::Static(dir) => Target::Static(Arc::new(StaticRoute::new(&route.path, dir)?)),
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
        target,
        limits_before_auth,
        limits_after_auth,
        auth,
        compression: crate::steps::compress::route_policy(cfg.compression.as_ref(), route),
        cache: route.cache.clone(),
        websocket: route
            .websocket
            .as_ref()
            .and_then(crate::steps::websocket::Limits::new)
            .map(Arc::new),
        cors: match &route.cors {
            RouteCors::Inherit => global_cors.cloned(),
            RouteCors::Off => None,
            RouteCors::Own(c) => Some(Arc::new(cors_policy(c))),
        },
        duration: crate::metrics::get().map(|m| m.duration.with_label_values(&[&route.path])),
        requests: Default::default(),
    })
}
