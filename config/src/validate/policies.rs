//! Named and shared policies: `rate_limits`, `compression` and `cors` (the
//! top-level default and a route's own).

use std::collections::BTreeMap;

use serde_yaml::{Mapping, Value};

use super::{parse_header_name, parse_method, present, root, Ctx, Names};
use crate::defaults;
use crate::marks::KeyPath;
use crate::raw::*;
use crate::types::*;
use crate::units::Size;

impl Ctx<'_> {
    pub(super) fn rate_limits(
        &mut self,
        top: &Mapping,
        names: &mut Names,
        revocation: &Option<Revocation>,
    ) -> BTreeMap<String, RateLimit> {
        let mut out = BTreeMap::new();
        let has_redis = revocation.as_ref().is_some_and(|r| r.redis.is_some());
        for (name, p, v) in self.entries(top, "rate_limits") {
            names.rate_limits.insert(name.clone());
            let Some(raw) = self.de::<RawRateLimit>(&v, &p) else {
                continue;
            };
            let kp = p.key("key");
            let key = if raw.key == "client_ip" {
                Some(RateKey::ClientIp)
            } else if let Some(c) = raw.key.strip_prefix("claim:") {
                if c.is_empty() {
                    self.at_value(&kp, "`claim:` needs a claim name, e.g. claim:sub");
                    None
                } else {
                    Some(RateKey::Claim(c.to_string()))
                }
            } else if let Some(h) = raw.key.strip_prefix("header:") {
                match parse_header_name(h) {
                    Ok(h) => Some(RateKey::Header(h)),
                    Err(e) => {
                        self.at_value(&kp, e);
                        None
                    }
                }
            } else {
                self.at_value(
                    &kp,
                    format!(
                        "invalid rate limit key `{}`: use client_ip, claim:NAME or header:NAME",
                        raw.key
                    ),
                );
                None
            };
            let rate = raw.rate.0;
            if rate.count == 0 {
                self.at_value(
                    &p.key("rate"),
                    "the rate must allow at least 1 request, e.g. 1/s",
                );
            }
            let burst = raw.burst.unwrap_or(rate.count);
            if raw.burst == Some(0) {
                self.at_value(&p.key("burst"), "burst must be at least 1");
            }
            let max_keys = raw.max_keys.unwrap_or(defaults::RATE_LIMIT_MAX_KEYS);
            if max_keys == 0 {
                self.at_value(&p.key("max_keys"), "max_keys must be at least 1");
            }
            let ipv6_prefix = raw.ipv6_prefix.unwrap_or(defaults::RATE_LIMIT_IPV6_PREFIX);
            if ipv6_prefix > 128 {
                self.at_value(
                    &p.key("ipv6_prefix"),
                    "ipv6_prefix is a prefix length, 0 to 128",
                );
            }
            if !name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                self.at_key(
                    &p,
                    "rate limit names are printable ASCII (they appear in RateLimit headers)",
                );
            }
            let shared = raw.shared.unwrap_or(false);
            if shared && !has_redis {
                self.at_value(
                    &p.key("shared"),
                    format!("rate limit `{name}` is shared but no Redis is configured: set revocation.redis"),
                );
            }
            if let Some(key) = key {
                out.insert(
                    name,
                    RateLimit {
                        key,
                        rate,
                        burst,
                        headers: raw.headers.unwrap_or(false),
                        shared,
                        max_keys,
                        ipv6_prefix,
                    },
                );
            }
        }
        out
    }

    pub(super) fn compression(&mut self, top: &Mapping) -> Option<Compression> {
        let p = root().key("compression");
        match present(top, "compression")? {
            Value::Bool(true) => Some(defaults::compression()),
            Value::Bool(false) => None,
            v @ Value::Mapping(_) => {
                let raw = self.de::<RawCompression>(v, &p)?;
                Some(self.compression_from(raw, &p))
            }
            _ => {
                self.at_value(
                    &p,
                    "`compression` must be a mapping (or true for the defaults, false for none)",
                );
                None
            }
        }
    }

    fn compression_from(&mut self, raw: RawCompression, p: &KeyPath) -> Compression {
        let mut c = defaults::compression();
        if let Some(algs) = raw.algorithms {
            let ap = p.key("algorithms");
            if algs.is_empty() {
                self.at_value(
                    &ap,
                    "list at least one algorithm (br, gzip, zstd), or remove `compression`",
                );
            }
            c.algorithms.clear();
            for (i, a) in algs.iter().enumerate() {
                let coding = match a.as_str() {
                    "br" => Coding::Br,
                    "gzip" => Coding::Gzip,
                    "zstd" => Coding::Zstd,
                    _ => {
                        self.at_value(
                            &ap.idx(i),
                            format!("unknown compression `{a}`: use br, gzip or zstd"),
                        );
                        continue;
                    }
                };
                if c.algorithms.contains(&coding) {
                    self.at_value(&ap.idx(i), format!("`{a}` is listed twice"));
                } else {
                    c.algorithms.push(coding);
                }
            }
        }
        if let Some(Size(n)) = raw.min_size {
            c.min_size = n;
        }
        if let Some(types) = raw.content_types {
            let tp = p.key("content_types");
            c.content_types.clear();
            for (i, t) in types.iter().enumerate() {
                let lower = t.trim().to_ascii_lowercase();
                let valid = lower.split_once('/').is_some_and(|(a, b)| {
                    !a.is_empty()
                        && !b.is_empty()
                        && a != "*"
                        && !b.contains('/')
                        && !lower.contains(char::is_whitespace)
                });
                if valid {
                    c.content_types.push(lower);
                } else {
                    self.at_value(
                        &tp.idx(i),
                        format!("invalid content type `{t}`: expected type/subtype or type/*, e.g. text/*"),
                    );
                }
            }
        }
        if let Some(l) = raw.levels {
            let lp = p.key("levels");
            for (coding, key, v, lo, hi) in [
                (Coding::Gzip, "gzip", l.gzip, 1, 9),
                (Coding::Br, "br", l.br, 0, 11),
                (Coding::Zstd, "zstd", l.zstd, 1, 22),
            ] {
                let Some(v) = v else { continue };
                match u32::try_from(v) {
                    Ok(n) if (lo..=hi).contains(&n) => {
                        c.levels.insert(coding, n);
                    }
                    _ => self.at_value(
                        &lp.key(key),
                        format!("{key} level {v} is out of range: use {lo} to {hi}"),
                    ),
                }
            }
        }
        c
    }

    pub(super) fn cors(&mut self, v: &Value, p: &KeyPath) -> Option<Cors> {
        let raw = self.de::<RawCors>(v, p)?;
        let op = p.key("allow_origins");
        let origins = raw.allow_origins.unwrap_or_default();
        if origins.is_empty() {
            self.at_value(
                if self.marks.get(&op).is_some() {
                    &op
                } else {
                    p
                },
                "cors needs allow_origins, e.g. [\"https://app.example.com\"]",
            );
        }
        let mut allow_origins = Vec::new();
        let mut star = None;
        for (i, o) in origins.iter().enumerate() {
            if o == "*" {
                star = Some(i);
                allow_origins.push(o.clone());
                continue;
            }
            let lower = o.to_ascii_lowercase();
            let host = lower
                .strip_prefix("https://")
                .or_else(|| lower.strip_prefix("http://"));
            let valid = host.is_some_and(|h| {
                let bare = h.strip_prefix("*.").unwrap_or(h);
                !bare.is_empty() && !bare.contains(['/', '*', ' ', '?', '#'])
            });
            if valid {
                allow_origins.push(lower);
            } else {
                self.at_value(
                    &op.idx(i),
                    format!("invalid origin `{o}`: expected \"*\" or scheme://host[:port] such as https://app.example.com (no path)"),
                );
            }
        }
        let allow_credentials = raw.allow_credentials.unwrap_or(false);
        if let (true, Some(i)) = (allow_credentials, star) {
            self.at_value(
                &op.idx(i),
                "allow_credentials: true cannot be used with the \"*\" origin: list the allowed origins instead",
            );
        }
        let mp = p.key("allow_methods");
        let allow_methods = match raw.allow_methods {
            None => defaults::cors_methods(),
            Some(ms) => {
                let mut out = Vec::new();
                for (i, m) in ms.iter().enumerate() {
                    match parse_method(m) {
                        Ok(m) => out.push(m),
                        Err(e) => self.at_value(&mp.idx(i), e),
                    }
                }
                out
            }
        };
        let allow_headers = self.header_names(raw.allow_headers, &p.key("allow_headers"));
        let expose_headers = self.header_names(raw.expose_headers, &p.key("expose_headers"));
        Some(Cors {
            allow_origins,
            allow_methods,
            allow_headers,
            expose_headers,
            allow_credentials,
            max_age: raw.max_age.map(|d| d.0),
        })
    }
}

impl Ctx<'_> {
    /// The top-level `cache:` section: `true` for the defaults, or sizes.
    pub(super) fn cache(&mut self, top: &Mapping) -> Option<Cache> {
        let p = root().key("cache");
        let raw = match present(top, "cache")? {
            Value::Bool(true) => return Some(defaults::cache()),
            Value::Bool(false) => return None,
            v @ Value::Mapping(_) => self.de::<RawCache>(v, &p)?,
            _ => {
                self.at_value(
                    &p,
                    "`cache` must be a mapping such as `{ max_size: 256MiB }` (or true for the defaults)",
                );
                return None;
            }
        };
        let mut c = defaults::cache();
        if let Some(Size(n)) = raw.max_size {
            if n == 0 {
                self.at_value(&p.key("max_size"), "max_size must be greater than zero");
            }
            c.max_size = n;
        }
        if let Some(Size(n)) = raw.max_entry_size {
            if n == 0 {
                self.at_value(
                    &p.key("max_entry_size"),
                    "max_entry_size must be greater than zero",
                );
            }
            c.max_entry_size = n;
        }
        if c.max_entry_size > c.max_size {
            let at = match raw.max_entry_size {
                Some(_) => p.key("max_entry_size"),
                None => p.key("max_size"),
            };
            self.at_value(
                &at,
                format!(
                    "max_entry_size ({}) is larger than max_size ({}): no response that large could be kept",
                    c.max_entry_size, c.max_size
                ),
            );
        }
        if let Some(d) = self.positive(raw.lock_timeout, &p.key("lock_timeout"), "lock_timeout") {
            c.lock_timeout = d;
        }
        Some(c)
    }
}
