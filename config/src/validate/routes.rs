//! `routes`: each route's path, methods, target (upstream or static
//! directory), auth, rate limits, CORS, compression and WebSocket options,
//! checked against the names defined elsewhere; then conflicts between routes.

use std::collections::{BTreeMap, HashMap};

use http::Method;
use serde_yaml::{Mapping, Value};

use super::{list, parse_method, present, root, Ctx, Names};
use crate::marks::KeyPath;
use crate::raw::*;
use crate::types::*;
use crate::units::Size;

impl Ctx<'_> {
    pub(super) fn routes(
        &mut self,
        top: &Mapping,
        names: &Names,
        rate_limits: &BTreeMap<String, RateLimit>,
    ) -> Vec<Route> {
        let rp = root().key("routes");
        let Some(v) = present(top, "routes") else {
            return Vec::new();
        };
        let Some(items) = v.as_sequence() else {
            self.at_value(&rp, "`routes` must be a list, e.g. `- path: /{*rest}`");
            return Vec::new();
        };
        // (index in file, route) for routes that were built.
        let mut built: Vec<(usize, Route)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = rp.idx(i);
            let Some(raw) = self.de::<RawRoute>(item, &p) else {
                continue;
            };
            if let Some(route) = self.route(raw, &p, names, rate_limits) {
                built.push((i, route));
            }
        }
        self.route_conflicts(&built, &rp);
        built.into_iter().map(|(_, r)| r).collect()
    }

    fn route(
        &mut self,
        raw: RawRoute,
        p: &KeyPath,
        names: &Names,
        rate_limits: &BTreeMap<String, RateLimit>,
    ) -> Option<Route> {
        let mut ok = true;
        let pp = p.key("path");
        if !raw.path.starts_with('/') {
            self.at_value(
                &pp,
                format!("route path `{}` must start with `/`", raw.path),
            );
            ok = false;
        }
        let methods = raw.methods.map(|ms| {
            let mp = p.key("methods");
            if ms.is_empty() {
                self.at_value(
                    &mp,
                    "methods is empty: list methods or remove `methods` to allow all",
                );
                ok = false;
            }
            let mut out: Vec<Method> = Vec::new();
            for (i, m) in ms.iter().enumerate() {
                match parse_method(m) {
                    Ok(m) if out.contains(&m) => {
                        self.at_value(&mp.idx(i), format!("method {m} is listed twice"))
                    }
                    Ok(m) => out.push(m),
                    Err(e) => {
                        self.at_value(&mp.idx(i), e);
                        ok = false;
                    }
                }
            }
            out
        });

        let target = match (raw.upstream, raw.static_dir) {
            (Some(_), Some(_)) => {
                self.at_key(
                    &p.key("static"),
                    "a route has either `upstream` or `static`, not both",
                );
                None
            }
            (None, None) => {
                self.at_value(
                    p,
                    format!(
                        "route `{}` needs `upstream: NAME` or `static: {{dir: PATH}}`",
                        raw.path
                    ),
                );
                None
            }
            (Some(u), None) => {
                if !names.upstreams.contains(&u) {
                    let defined = if names.upstreams.is_empty() {
                        "no upstreams are defined".to_string()
                    } else {
                        format!("defined upstreams: {}", list(&names.upstreams))
                    };
                    self.at_value(
                        &p.key("upstream"),
                        format!("unknown upstream `{u}`; {defined}"),
                    );
                }
                Some(RouteTarget::Upstream(u))
            }
            (None, Some(s)) => {
                let sp = p.key("static");
                let dir = self.readable_dir(&s.dir, &sp.key("dir"));
                if let Some(idx) = &s.index {
                    if idx.is_empty() || idx.contains('/') {
                        self.at_value(
                            &sp.key("index"),
                            format!("index `{idx}` must be a file name without `/`"),
                        );
                    }
                }
                let cache_control = self.header_value(s.cache_control, &sp.key("cache_control"));
                Some(RouteTarget::Static(StaticDir {
                    dir,
                    index: s.index,
                    cache_control,
                    dotfiles: s.dotfiles.unwrap_or(false),
                    precompressed: s.precompressed.unwrap_or(false),
                }))
            }
        };

        if let Some(a) = &raw.auth {
            if !names.auth.contains(a) {
                let defined = if names.auth.is_empty() {
                    "no auth policies are defined".to_string()
                } else {
                    format!("defined policies: {}", list(&names.auth))
                };
                self.at_value(
                    &p.key("auth"),
                    format!("unknown auth policy `{a}`; {defined}"),
                );
            }
        }
        let scopes = raw.scopes.unwrap_or_default();
        if !scopes.is_empty() && raw.auth.is_none() {
            self.at_key(
                &p.key("scopes"),
                "scopes need a token: add `auth: POLICY` to this route",
            );
        }

        let lp = p.key("rate_limit");
        let limits = raw.rate_limit.map(|l| l.0).unwrap_or_default();
        let single = self
            .marks
            .get(&lp)
            .is_some_and(|_| self.marks.get(&lp.idx(0)).is_none());
        let mut rate_names: Vec<String> = Vec::new();
        for (i, l) in limits.into_iter().enumerate() {
            let ip = if single { lp.clone() } else { lp.idx(i) };
            if !names.rate_limits.contains(&l) {
                let defined = if names.rate_limits.is_empty() {
                    "no rate_limits are defined".to_string()
                } else {
                    format!("defined rate limits: {}", list(&names.rate_limits))
                };
                self.at_value(&ip, format!("unknown rate limit `{l}`; {defined}"));
            } else if let (Some(RateKey::Claim(c)), None) =
                (rate_limits.get(&l).map(|r| &r.key), &raw.auth)
            {
                self.at_value(
                    &ip,
                    format!("rate limit `{l}` is keyed by claim `{c}`, which needs a verified token: add `auth: POLICY` to this route"),
                );
            }
            if rate_names.contains(&l) {
                self.at_value(&ip, format!("rate limit `{l}` is listed twice"));
            } else {
                rate_names.push(l);
            }
        }

        let cp = p.key("cors");
        let cors = match raw.cors {
            None => RouteCors::Inherit,
            Some(Value::Bool(false)) => RouteCors::Off,
            Some(v @ Value::Mapping(_)) => match self.cors(&v, &cp) {
                Some(c) => RouteCors::Own(c),
                None => RouteCors::Inherit,
            },
            Some(_) => {
                self.at_value(&cp, "a route's `cors` is `false` or a cors mapping");
                RouteCors::Inherit
            }
        };

        let websocket = raw.websocket.map(|w| {
            let wp = p.key("websocket");
            if matches!(target, Some(RouteTarget::Static(_))) {
                self.at_key(
                    &wp,
                    "a static route cannot take WebSocket connections: remove `websocket`",
                );
            }
            if let Some(Size(0)) = w.max_message {
                self.at_value(
                    &wp.key("max_message"),
                    "max_message must be greater than zero",
                );
            }
            if let Some(0) = w.messages_per_second {
                self.at_value(
                    &wp.key("messages_per_second"),
                    "messages_per_second must be at least 1",
                );
            }
            WebSocketOpts {
                max_message: w.max_message.map(|s| s.0),
                messages_per_second: w.messages_per_second,
                idle_timeout: self.positive(
                    w.idle_timeout,
                    &wp.key("idle_timeout"),
                    "idle_timeout",
                ),
            }
        });

        let static_route = matches!(target, Some(RouteTarget::Static(_)));
        let cache = raw.cache.and_then(|c| {
            let cp = p.key("cache");
            let c = match c {
                RawRouteCache::Switch(false) => return None,
                RawRouteCache::Switch(true) => RouteCache::default(),
                RawRouteCache::Options(o) => RouteCache {
                    authorized: o.authorized.unwrap_or(false),
                    key_claim: o.key_claim,
                },
            };
            if static_route {
                self.at_key(
                    &cp,
                    "`cache` is for routes to an upstream: a static route's files are read from disk with their own ETag and Last-Modified",
                );
            }
            if websocket.is_some() {
                self.at_key(
                    &cp,
                    "a route with `websocket` limits is for WebSocket sessions, which are never cached: remove `cache` or give plain requests a route of their own",
                );
            }
            if let Some(claim) = &c.key_claim {
                if claim.is_empty() {
                    self.at_value(&cp.key("key_claim"), "key_claim needs a claim name, e.g. sub");
                } else if raw.auth.is_none() {
                    self.at_value(
                        &cp.key("key_claim"),
                        format!("key_claim `{claim}` is read from a verified token: add `auth: POLICY` to this route"),
                    );
                }
            }
            Some(c)
        });
        for (key, set) in [
            ("buffer_request", raw.buffer_request.is_some()),
            ("buffer_response", raw.buffer_response.is_some()),
        ] {
            if static_route && set {
                self.at_key(
                    &p.key(key),
                    format!("`{key}` is for routes to an upstream: a static route has no worker"),
                );
            }
        }
        let buffer_response = match raw.buffer_response {
            Some(Size(0)) => {
                self.at_value(
                    &p.key("buffer_response"),
                    "buffer_response must be greater than zero (leave it out to stream every response)",
                );
                None
            }
            b => b.map(|s| s.0),
        };

        let target = target?;
        ok.then_some(Route {
            path: raw.path,
            methods,
            target,
            auth: raw.auth,
            scopes,
            rate_limits: rate_names,
            compression: match &raw.compression {
                None => None,
                Some(RawRouteCompression::Switch(on)) => Some(*on),
                Some(RawRouteCompression::Options(_)) => Some(true),
            },
            compress_event_stream: matches!(
                &raw.compression,
                Some(RawRouteCompression::Options(o)) if o.sse
            ),
            cache,
            cors,
            websocket,
            buffer_request: raw.buffer_request.unwrap_or(true),
            buffer_response,
        })
    }

    /// Two routes may not match the same request: distinct patterns must be
    /// insertable side by side in matchit, and routes sharing a pattern must
    /// have disjoint `methods`.
    fn route_conflicts(&mut self, routes: &[(usize, Route)], rp: &KeyPath) {
        let mut router: matchit::Router<usize> = matchit::Router::new();
        let mut first: HashMap<&str, usize> = HashMap::new();
        for (pos, (i, r)) in routes.iter().enumerate() {
            let pp = rp.idx(*i).key("path");
            if let Some(&prev) = first.get(r.path.as_str()) {
                let (pi, pr) = &routes[prev];
                let line = self.marks.value_pos(&rp.idx(*pi).key("path")).line;
                match (&pr.methods, &r.methods) {
                    (Some(a), Some(b)) => {
                        if let Some(m) = b.iter().find(|m| a.contains(m)) {
                            let at = b.iter().position(|x| x == m).unwrap_or(0);
                            self.at_value(
                                &rp.idx(*i).key("methods").idx(at),
                                format!("{m} {} is already routed by the route at line {line}: each method may appear on one route per path", r.path),
                            );
                        }
                    }
                    _ => self.at_value(
                        &pp,
                        format!("path `{}` is also routed at line {line}; routes that share a path need disjoint `methods` on both", r.path),
                    ),
                }
                continue;
            }
            first.insert(r.path.as_str(), pos);
            if let Err(e) = router.insert(r.path.as_str(), pos) {
                let msg = match e {
                    matchit::InsertError::Conflict { with } => {
                        let other = first
                            .get(with.as_str())
                            .map(|&j| self.marks.value_pos(&rp.idx(routes[j].0).key("path")).line);
                        match other {
                            Some(line) => format!("route path `{}` conflicts with `{with}` at line {line}: both would match the same requests; merge them or make one more specific", r.path),
                            None => format!("route path `{}` conflicts with `{with}`: both would match the same requests", r.path),
                        }
                    }
                    other => format!("invalid route path `{}`: {other}", r.path),
                };
                self.at_value(&pp, msg);
            }
        }
    }
}
