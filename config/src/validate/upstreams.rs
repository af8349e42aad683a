//! `upstreams`: the Unix-socket backends routes forward to, their pools and
//! timeouts, and the supervised `app` upstream `asgi-gate run` fills in.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_yaml::Mapping;

use super::{Ctx, Names};
use crate::defaults;
use crate::marks::KeyPath;
use crate::raw::*;
use crate::types::*;

/// Longest Unix socket path (sun_path is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

impl Ctx<'_> {
    pub(super) fn upstreams(
        &mut self,
        top: &Mapping,
        names: &mut Names,
    ) -> BTreeMap<String, Upstream> {
        let mut out = BTreeMap::new();
        let supervised = self.opts.supervised;
        for (name, p, v) in self.entries(top, "upstreams") {
            names.upstreams.insert(name.clone());
            let Some(raw) = self.de::<RawUpstream>(&v, &p) else {
                continue;
            };
            let is_app = name == defaults::SUPERVISED_UPSTREAM;
            let mut sockets = Vec::new();
            let sp = p.key("sockets");
            match raw.sockets {
                Some(list) if supervised && is_app && !list.is_empty() => self.at_key(
                    &sp,
                    "the supervisor provides upstreams.app sockets: remove `sockets` when using `asgi-gate run`",
                ),
                Some(list) if list.is_empty() && !(supervised && is_app) => self.at_value(
                    &sp,
                    format!("upstream `{name}` has no sockets: list at least one, e.g. [/run/app/app.sock]"),
                ),
                Some(list) => {
                    for (i, s) in list.into_iter().enumerate() {
                        if s.is_empty() {
                            self.at_value(&sp.idx(i), "empty socket path");
                        } else if s.len() > MAX_SOCKET_PATH {
                            self.at_value(
                                &sp.idx(i),
                                format!("socket path is {} bytes long; Unix sockets allow at most {MAX_SOCKET_PATH}: use a shorter path", s.len()),
                            );
                        } else {
                            sockets.push(PathBuf::from(s));
                        }
                    }
                }
                None if supervised && is_app => {}
                None if supervised => self.at_value(
                    &p,
                    format!("upstream `{name}` has no `sockets`: only `app` gets its sockets from `asgi-gate run`"),
                ),
                None => self.at_value(
                    &p,
                    format!("upstream `{name}` has no `sockets`: add e.g. `sockets: [/run/app/app.sock]` (only `asgi-gate run` fills them in)"),
                ),
            }
            let mut pool = defaults::pool();
            let pp = p.key("pool");
            if let Some(rp) = raw.pool {
                if let Some(n) = rp.max_connections {
                    if n == 0 {
                        self.at_value(
                            &pp.key("max_connections"),
                            "max_connections must be at least 1",
                        );
                    } else {
                        pool.max_connections = n;
                    }
                }
                match rp.max_idle {
                    Some(n) if n > pool.max_connections => {
                        self.at_value(
                            &pp.key("max_idle"),
                            format!(
                                "max_idle ({n}) is larger than max_connections ({}): lower max_idle",
                                pool.max_connections
                            ),
                        );
                    }
                    Some(n) => pool.max_idle = n,
                    // The default shrinks to fit a small max_connections.
                    None => pool.max_idle = pool.max_idle.min(pool.max_connections),
                }
                if let Some(d) =
                    self.positive(rp.idle_timeout, &pp.key("idle_timeout"), "idle_timeout")
                {
                    pool.idle_timeout = d;
                }
            }
            let connect_timeout = self
                .positive(
                    raw.connect_timeout,
                    &p.key("connect_timeout"),
                    "connect_timeout",
                )
                .unwrap_or(defaults::CONNECT_TIMEOUT);
            let read_timeout = self
                .positive(raw.read_timeout, &p.key("read_timeout"), "read_timeout")
                .unwrap_or(defaults::READ_TIMEOUT);
            let health_check = raw.health_check.map(|h| {
                let hp = p.key("health_check");
                if !h.path.starts_with('/') {
                    self.at_value(
                        &hp.key("path"),
                        format!("health_check path `{}` must start with `/`", h.path),
                    );
                }
                HealthCheck {
                    path: h.path,
                    interval: self
                        .positive(h.interval, &hp.key("interval"), "interval")
                        .unwrap_or(defaults::HEALTH_CHECK_INTERVAL),
                }
            });
            let concurrency = self.concurrency(raw.concurrency, &p.key("concurrency"), &pool);
            out.insert(
                name,
                Upstream {
                    sockets,
                    pool,
                    connect_timeout,
                    read_timeout,
                    health_check,
                    concurrency,
                },
            );
        }
        if supervised && !names.upstreams.contains(defaults::SUPERVISED_UPSTREAM) {
            names
                .upstreams
                .insert(defaults::SUPERVISED_UPSTREAM.to_string());
            out.insert(
                defaults::SUPERVISED_UPSTREAM.to_string(),
                defaults::upstream(Vec::new()),
            );
        }
        out
    }

    /// `concurrency`: on by default, bounded by the pool's connection cap.
    fn concurrency(
        &mut self,
        raw: Option<RawConcurrency>,
        p: &KeyPath,
        pool: &Pool,
    ) -> Option<Concurrency> {
        let mut c = defaults::concurrency(pool.max_connections);
        let o = match raw {
            None | Some(RawConcurrency::Switch(true)) => return Some(c),
            Some(RawConcurrency::Switch(false)) => return None,
            Some(RawConcurrency::Options(o)) => o,
        };
        if let Some(min) = o.min {
            if min == 0 {
                self.at_value(&p.key("min"), "min must be at least 1");
            } else {
                c.min = min;
            }
        }
        if let Some(max) = o.max {
            if max > pool.max_connections {
                self.at_value(
                    &p.key("max"),
                    format!(
                        "max ({max}) is larger than pool.max_connections ({}): a worker never gets more requests than it has connections",
                        pool.max_connections
                    ),
                );
            } else if max < c.min {
                self.at_value(
                    &p.key("max"),
                    format!("max ({max}) is smaller than min ({})", c.min),
                );
            } else {
                c.max = max;
            }
        }
        if c.min > c.max {
            self.at_value(
                &p.key("min"),
                format!("min ({}) is larger than max ({})", c.min, c.max),
            );
        }
        if let Some(d) = self.positive(o.queue_timeout, &p.key("queue_timeout"), "queue_timeout") {
            c.queue_timeout = d;
        }
        if let Some(d) = o.min_work {
            c.min_work = d.0;
        }
        Some(c)
    }
}
