//! Server-wide sections: `threads`, `listen`, `admin`, `trusted_proxies`,
//! `allowed_hosts`, `https_redirect`, `security_headers`, `limits`, the
//! `paths`/`headers` request rules and `shutdown_grace`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde_yaml::Mapping;

use super::{present, root, Ctx};
use crate::defaults;
use crate::marks::{KeyPath, Pos};
use crate::raw::*;
use crate::types::*;
use crate::units::{Dur, Size};

impl Ctx<'_> {
    pub(super) fn threads(&mut self, top: &Mapping) -> usize {
        let p = root().key("threads");
        match present(top, "threads").and_then(|v| self.de::<usize>(v, &p)) {
            Some(0) => {
                self.at_value(&p, "threads must be at least 1");
                defaults::THREADS
            }
            Some(n) => n,
            None => defaults::THREADS,
        }
    }

    fn socket_addr(&mut self, s: &str, p: &KeyPath) -> Option<SocketAddr> {
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.at_value(
                    p,
                    format!(
                        "invalid address `{s}`: expected IP:PORT such as 0.0.0.0:8080 or [::]:8080"
                    ),
                );
                None
            }
        }
    }

    pub(super) fn listen(&mut self, top: &Mapping) -> Vec<Listener> {
        let lp = root().key("listen");
        let Some(v) = present(top, "listen") else {
            let pos = if top.contains_key("listen") {
                self.marks.key_pos(&lp)
            } else {
                Pos::START
            };
            self.push(pos, "no listeners: add `listen: [{address: 0.0.0.0:8080}]`");
            return Vec::new();
        };
        let Some(items) = v.as_sequence() else {
            self.at_value(
                &lp,
                "`listen` must be a list, e.g. `- address: 0.0.0.0:8080`",
            );
            return Vec::new();
        };
        if items.is_empty() {
            self.at_value(&lp, "no listeners: add `- address: 0.0.0.0:8080`");
        }
        let mut out: Vec<Listener> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ip = lp.idx(i);
            let Some(raw) = self.de::<RawListener>(item, &ip) else {
                continue;
            };
            let ap = ip.key("address");
            let tls = raw.tls.map(|t| Tls {
                cert: self.readable_file(&t.cert, &ip.key("tls").key("cert")),
                key: self.readable_file(&t.key, &ip.key("tls").key("key")),
            });
            let Some(address) = self.socket_addr(&raw.address, &ap) else {
                continue;
            };
            // Port 0 asks the OS for a free port: never a clash.
            if address.port() != 0 && out.iter().any(|l| l.address == address) {
                self.at_value(&ap, format!("address {address} is listed twice"));
                continue;
            }
            out.push(Listener { address, tls });
        }
        out
    }

    pub(super) fn admin(&mut self, top: &Mapping, listen: &[Listener]) -> Admin {
        let p = root().key("admin");
        let mut admin = defaults::admin();
        let Some(raw) = present(top, "admin").and_then(|v| self.de::<RawAdmin>(v, &p)) else {
            return admin;
        };
        if let Some(a) = raw.address {
            let ap = p.key("address");
            if let Some(addr) = self.socket_addr(&a, &ap) {
                if addr.port() != 0 && listen.iter().any(|l| l.address == addr) {
                    self.at_value(
                        &ap,
                        format!(
                            "admin address {addr} is also a `listen` address: use another port"
                        ),
                    );
                }
                admin.address = addr;
            }
        }
        if let Some(var) = raw.token_env {
            admin.token = self.env_secret(&var, &p.key("token_env"));
            admin.token_env = Some(var);
        }
        admin
    }

    pub(super) fn trusted_proxies(&mut self, top: &Mapping) -> Vec<IpNet> {
        let p = root().key("trusted_proxies");
        let raw = present(top, "trusted_proxies")
            .and_then(|v| self.de::<Vec<String>>(v, &p))
            .unwrap_or_default();
        let mut out = Vec::new();
        for (i, s) in raw.iter().enumerate() {
            let t = s.trim();
            if let Ok(net) = t.parse::<IpNet>() {
                out.push(net.trunc());
            } else if let Ok(ip) = t.parse::<IpAddr>() {
                out.push(IpNet::from(ip));
            } else {
                self.at_value(
                    &p.idx(i),
                    format!("invalid network `{s}`: expected a CIDR such as 10.0.0.0/8 or an IP address"),
                );
            }
        }
        out
    }

    pub(super) fn https_redirect(&mut self, top: &Mapping) -> bool {
        present(top, "https_redirect")
            .and_then(|v| self.de::<bool>(v, &root().key("https_redirect")))
            .unwrap_or(false)
    }

    pub(super) fn allowed_hosts(&mut self, top: &Mapping) -> Option<Vec<String>> {
        let p = root().key("allowed_hosts");
        let raw = present(top, "allowed_hosts").and_then(|v| self.de::<Vec<String>>(v, &p))?;
        if raw.is_empty() {
            self.at_value(&p, "allowed_hosts is empty, which would refuse every request: remove it to allow any host");
        }
        let mut out = Vec::new();
        for (i, h) in raw.iter().enumerate() {
            let lower = h.trim().to_ascii_lowercase();
            let bare = lower.strip_prefix("*.").unwrap_or(&lower);
            if bare.is_empty() || bare.contains(['*', '/', ':', ' ']) {
                self.at_value(
                    &p.idx(i),
                    format!("invalid host `{h}`: expected a name such as api.example.com or *.example.com, without scheme or port"),
                );
            } else {
                out.push(lower);
            }
        }
        Some(out)
    }

    pub(super) fn security_headers(&mut self, top: &Mapping) -> Option<SecurityHeaders> {
        let p = root().key("security_headers");
        let raw =
            present(top, "security_headers").and_then(|v| self.de::<RawSecurityHeaders>(v, &p))?;
        Some(SecurityHeaders {
            hsts: raw.hsts.map(|d| d.0),
            content_type_options: self
                .header_value(raw.content_type_options, &p.key("content_type_options")),
            referrer_policy: self.header_value(raw.referrer_policy, &p.key("referrer_policy")),
            frame_options: self.header_value(raw.frame_options, &p.key("frame_options")),
            remove: self.header_names(raw.remove, &p.key("remove")),
        })
    }

    pub(super) fn limits(&mut self, top: &Mapping) -> Limits {
        let p = root().key("limits");
        let mut l = defaults::limits();
        let Some(raw) = present(top, "limits").and_then(|v| self.de::<RawLimits>(v, &p)) else {
            return l;
        };
        if let Some(Size(n)) = raw.max_body {
            l.max_body = n;
        }
        if let Some(Size(n)) = raw.max_buffered {
            l.max_buffered = n;
        }
        if let Some(Size(n)) = raw.max_header_bytes {
            match usize::try_from(n) {
                Ok(n) if n > 0 => l.max_header_bytes = n,
                _ => self.at_value(
                    &p.key("max_header_bytes"),
                    "max_header_bytes must be greater than zero, e.g. 16KiB",
                ),
            }
        }
        if let Some(n) = raw.max_header_fields {
            match usize::try_from(n) {
                Ok(n) if (1..=8192).contains(&n) => l.max_header_fields = n,
                _ => self.at_value(
                    &p.key("max_header_fields"),
                    "max_header_fields must be between 1 and 8192, e.g. 256",
                ),
            }
        }
        if let Some(d) = self.positive(
            raw.header_timeout,
            &p.key("header_timeout"),
            "header_timeout",
        ) {
            l.header_timeout = d;
        }
        if let Some(d) = self.positive(raw.body_timeout, &p.key("body_timeout"), "body_timeout") {
            l.body_timeout = d;
        }
        if let Some(d) = self.positive(
            raw.websocket_idle_timeout,
            &p.key("websocket_idle_timeout"),
            "websocket_idle_timeout",
        ) {
            l.websocket_idle_timeout = d;
        }
        if let Some(n) = raw.max_concurrent_streams {
            match u32::try_from(n) {
                Ok(n) if n > 0 => l.max_concurrent_streams = n,
                _ => self.at_value(
                    &p.key("max_concurrent_streams"),
                    "max_concurrent_streams must be between 1 and 4294967295, e.g. 100",
                ),
            }
        }
        for (key, raw, slot) in [
            (
                "max_connections",
                raw.max_connections,
                &mut l.max_connections,
            ),
            (
                "max_connections_per_ip",
                raw.max_connections_per_ip,
                &mut l.max_connections_per_ip,
            ),
        ] {
            if let Some(n) = raw {
                match usize::try_from(n) {
                    Ok(n) if n > 0 => *slot = n,
                    _ => self.at_value(
                        &p.key(key),
                        format!("{key} must be greater than zero, e.g. 256"),
                    ),
                }
            }
        }
        l
    }

    /// `paths` and `headers`: one word each, from a short list.
    pub(super) fn request_rules(&mut self, top: &Mapping) -> (PathRules, HeaderRules) {
        let mut paths = PathRules::default();
        let p = root().key("paths");
        if let Some(raw) = present(top, "paths").and_then(|v| self.de::<RawPaths>(v, &p)) {
            match raw.encoded_slash.as_deref() {
                None | Some("reject") => {}
                Some("keep") => paths.encoded_slash = EncodedSlash::Keep,
                Some(other) => self.at_value(
                    &p.key("encoded_slash"),
                    format!("unknown encoded_slash `{other}`; expected reject or keep"),
                ),
            }
        }
        let mut headers = HeaderRules::default();
        let p = root().key("headers");
        if let Some(raw) = present(top, "headers").and_then(|v| self.de::<RawHeaders>(v, &p)) {
            match raw.underscores.as_deref() {
                None | Some("owned") => {}
                Some("drop") => headers.underscores = Underscores::Drop,
                Some(other) => self.at_value(
                    &p.key("underscores"),
                    format!("unknown underscores `{other}`; expected owned or drop"),
                ),
            }
        }
        (paths, headers)
    }

    pub(super) fn shutdown_grace(&mut self, top: &Mapping) -> Duration {
        present(top, "shutdown_grace")
            .and_then(|v| self.de::<Dur>(v, &root().key("shutdown_grace")))
            .map_or(defaults::SHUTDOWN_GRACE, |d| d.0)
    }
}
