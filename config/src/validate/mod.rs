//! Loading: YAML syntax, then per-section deserialization into `raw`, then
//! semantic checks into the checked `types`. Every problem is collected with
//! the position of the key or value it is about; nothing stops at the first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use crate::defaults;
use crate::error::{ConfigError, ConfigErrors};
use crate::marks::{KeyPath, Marks, Pos, Seg};
use crate::raw::*;
use crate::types::*;
use crate::units::{Dur, Size};
use crate::LoadOptions;

/// JWT algorithms the gate verifies, exactly as they must be written.
const JWT_ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

/// Methods a route or CORS policy may name.
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// Headers a claim must never be forwarded as: they frame or route the request.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Longest Unix socket path (sun_path is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

pub fn load_str(
    text: &str,
    path: &Path,
    opts: LoadOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let to_errors = |v: Vec<(Pos, String)>| {
        let mut v: Vec<ConfigError> = v
            .into_iter()
            .map(|(pos, message)| ConfigError {
                file: path.to_path_buf(),
                line: pos.line,
                col: pos.col,
                message,
            })
            .collect();
        v.sort_by_key(|e| (e.line, e.col));
        v.dedup();
        ConfigErrors(v)
    };

    // (a) syntax, duplicate keys, extra documents: nothing else is reliable after these.
    let marks = match Marks::parse(text) {
        Err(e) => return Err(to_errors(vec![(e.pos, one_line(&e.message))])),
        Ok((marks, problems)) if problems.is_empty() => marks,
        Ok((_, problems)) => {
            return Err(to_errors(
                problems.into_iter().map(|p| (p.pos, p.message)).collect(),
            ))
        }
    };
    let mut doc: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let pos = e
                .location()
                .map(|l| Pos {
                    line: l.line().max(1),
                    col: l.column().max(1),
                })
                .unwrap_or(Pos::START);
            let msg = e.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            return Err(to_errors(vec![(
                pos,
                format!("YAML error: {}", one_line(&msg)),
            )]));
        }
    };
    // `<<: *anchor` merges; merged keys are reported at the merging mapping.
    if let Err(e) = doc.apply_merge() {
        let msg = format!("YAML merge error: {}", one_line(&e.to_string()));
        return Err(to_errors(vec![(Pos::START, msg)]));
    }
    let top = match doc {
        Value::Mapping(m) => m,
        Value::Null => {
            return Err(to_errors(vec![(
                Pos::START,
                "the config file is empty: it needs at least `listen:` and `routes:`".to_string(),
            )]))
        }
        _ => {
            return Err(to_errors(vec![(
                Pos::START,
                "the top level must be a mapping of keys such as listen, upstreams and routes"
                    .to_string(),
            )]))
        }
    };

    let mut cx = Ctx {
        marks,
        errors: Vec::new(),
        opts,
        env,
    };
    let config = cx.build(&top, path);
    if cx.errors.is_empty() {
        Ok(config)
    } else {
        Err(to_errors(cx.errors))
    }
}

struct Ctx<'a> {
    marks: Marks,
    errors: Vec<(Pos, String)>,
    opts: LoadOptions,
    env: &'a dyn Fn(&str) -> Option<String>,
}

/// Names defined in the maps routes refer to, taken from the YAML keys so
/// that an entry with its own errors does not also cause "unknown name" errors.
#[derive(Default)]
struct Names {
    upstreams: BTreeSet<String>,
    auth: BTreeSet<String>,
    rate_limits: BTreeSet<String>,
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn root() -> KeyPath {
    KeyPath::root()
}

/// `Null` (a key written with nothing after it) counts as absent.
fn present<'v>(m: &'v Mapping, key: &str) -> Option<&'v Value> {
    m.get(key).filter(|v| !v.is_null())
}

fn list(names: &BTreeSet<String>) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rewrites serde's wording into the config's vocabulary.
fn humanize(msg: &str) -> String {
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        return match rest.split_once(", expected one of ") {
            Some((field, valid)) => format!("unknown key {field}; valid keys here: {valid}"),
            None => match rest.split_once(", expected ") {
                Some((field, valid)) => {
                    format!("unknown key {field}; the only valid key here is {valid}")
                }
                None => format!("unknown key {rest}"),
            },
        };
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        return format!("missing required key {rest}");
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            if let Some((found, expected)) = rest.rsplit_once(", expected ") {
                let expected = if expected.starts_with("struct ") || expected == "a map" {
                    "a mapping (key: value)"
                } else {
                    match expected {
                        "usize" | "u32" | "u64" | "i64" => "a whole number",
                        "a sequence" => "a list",
                        "a boolean" => "true or false",
                        other => other,
                    }
                };
                let found = found.replace("unit value", "nothing");
                return format!("expected {expected}, found {found}");
            }
        }
    }
    msg.to_string()
}

fn missing_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("missing field `")?;
    Some(rest.trim_end_matches('`').to_string())
}

fn to_keypath(p: &serde_path_to_error::Path) -> Option<KeyPath> {
    let mut out = Vec::new();
    for seg in p.iter() {
        match seg {
            serde_path_to_error::Segment::Seq { index } => out.push(Seg::Index(*index)),
            serde_path_to_error::Segment::Map { key } => out.push(Seg::Key(key.clone())),
            _ => return None,
        }
    }
    Some(KeyPath(out))
}

fn join(base: &KeyPath, rel: &KeyPath) -> KeyPath {
    let mut v = base.0.clone();
    v.extend(rel.0.iter().cloned());
    KeyPath(v)
}

/// Removes the innermost mapping key on `rel` from `v` (never a sequence item:
/// that would shift the indices later errors are reported with). Returns the
/// (parent path, key) removed.
fn remove_at(v: &mut Value, rel: &KeyPath) -> Option<(KeyPath, String)> {
    let last_key = rel.0.iter().rposition(|s| matches!(s, Seg::Key(_)))?;
    let key = match &rel.0[last_key] {
        Seg::Key(k) => k.clone(),
        Seg::Index(_) => return None,
    };
    let parent = KeyPath(rel.0[..last_key].to_vec());
    let mut cur = v;
    for seg in &parent.0 {
        cur = match seg {
            Seg::Key(k) => cur.as_mapping_mut()?.get_mut(k.as_str())?,
            Seg::Index(i) => cur.as_sequence_mut()?.get_mut(*i)?,
        };
    }
    cur.as_mapping_mut()?.remove(key.as_str())?;
    Some((parent, key))
}

fn parse_method(s: &str) -> Result<Method, String> {
    if METHODS.contains(&s) {
        return Method::from_bytes(s.as_bytes()).map_err(|_| format!("invalid method `{s}`"));
    }
    let upper = s.to_ascii_uppercase();
    if METHODS.contains(&upper.as_str()) {
        return Err(format!(
            "method `{s}` must be written in upper case: `{upper}`"
        ));
    }
    Err(format!(
        "unknown HTTP method `{s}`: use {}",
        METHODS.join(", ")
    ))
}

fn parse_header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.as_bytes()).map_err(|_| {
        format!("invalid header name `{s}`: use letters, digits and `-`, e.g. x-auth-subject")
    })
}

fn is_hs(alg: &str) -> bool {
    alg.starts_with("HS")
}

/// Key family a single public key file can serve.
fn key_family(alg: &str) -> &'static str {
    match alg {
        "ES256" => "EC P-256",
        "ES384" => "EC P-384",
        "EdDSA" => "Ed25519",
        _ => "RSA",
    }
}

impl Ctx<'_> {
    fn push(&mut self, pos: Pos, msg: impl AsRef<str>) {
        self.errors.push((pos, one_line(msg.as_ref())));
    }

    fn at_value(&mut self, p: &KeyPath, msg: impl AsRef<str>) {
        let pos = self.marks.value_pos(p);
        self.push(pos, msg);
    }

    fn at_key(&mut self, p: &KeyPath, msg: impl AsRef<str>) {
        let pos = self.marks.key_pos(p);
        self.push(pos, msg);
    }

    /// Deserializes one section or entry, reporting every serde error in it:
    /// after each error the offending key is removed and deserialization
    /// retried, so an unknown key does not hide a bad duration next to it.
    /// Returns `None` when the entry cannot be built at all.
    fn de<T: DeserializeOwned>(&mut self, v: &Value, base: &KeyPath) -> Option<T> {
        let mut v = v.clone();
        let mut removed: Vec<(KeyPath, String)> = Vec::new();
        // Bounded: each round removes one key.
        for _ in 0..256 {
            let err = match serde_path_to_error::deserialize::<_, T>(v.clone()) {
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let rel = to_keypath(err.path()).unwrap_or_default();
            let msg = err.inner().to_string();
            if let Some(field) = missing_field(&msg) {
                // A key we removed ourselves after reporting it.
                if removed.iter().any(|(p, k)| *p == rel && *k == field) {
                    return None;
                }
            }
            let full = join(base, &rel);
            if msg.starts_with("unknown field") {
                self.at_key(&full, humanize(&msg));
            } else {
                self.at_value(&full, humanize(&msg));
            }
            match remove_at(&mut v, &rel) {
                Some(r) => removed.push(r),
                None => return None,
            }
        }
        None
    }

    fn positive(&mut self, d: Option<Dur>, p: &KeyPath, what: &str) -> Option<Duration> {
        let d = d?.0;
        if d.is_zero() {
            self.at_value(p, format!("{what} must be greater than zero"));
            return None;
        }
        Some(d)
    }

    fn env_secret(&mut self, var: &str, p: &KeyPath) -> Option<String> {
        if var.is_empty() {
            self.at_value(p, "the environment variable name is empty");
            return None;
        }
        match (self.env)(var) {
            None => {
                self.at_value(
                    p,
                    format!("environment variable `{var}` ({p}) is not set: set it, e.g. from a Kubernetes Secret"),
                );
                None
            }
            Some(v) if v.is_empty() => {
                self.at_value(p, format!("environment variable `{var}` ({p}) is empty"));
                None
            }
            Some(v) => Some(v),
        }
    }

    /// A file that must exist and be readable now.
    fn readable_file(&mut self, file: &str, p: &KeyPath) -> PathBuf {
        let path = PathBuf::from(file);
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.at_value(p, format!("file `{file}` does not exist"))
            }
            Err(e) => self.at_value(p, format!("cannot read `{file}`: {e}")),
            Ok(m) if m.is_dir() => {
                self.at_value(p, format!("`{file}` is a directory; a file is expected"))
            }
            Ok(_) => {
                if let Err(e) = std::fs::File::open(&path) {
                    self.at_value(p, format!("cannot read `{file}`: {e}"));
                }
            }
        }
        path
    }

    fn readable_dir(&mut self, dir: &str, p: &KeyPath) -> PathBuf {
        let path = PathBuf::from(dir);
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.at_value(p, format!("directory `{dir}` does not exist"))
            }
            Err(e) => self.at_value(p, format!("cannot read `{dir}`: {e}")),
            Ok(m) if !m.is_dir() => self.at_value(p, format!("`{dir}` is not a directory")),
            Ok(_) => {
                if let Err(e) = std::fs::read_dir(&path) {
                    self.at_value(p, format!("cannot read directory `{dir}`: {e}"));
                }
            }
        }
        path
    }

    fn header_names(&mut self, names: Option<Vec<String>>, p: &KeyPath) -> Vec<HeaderName> {
        let mut out = Vec::new();
        for (i, n) in names.unwrap_or_default().iter().enumerate() {
            match parse_header_name(n) {
                Ok(h) => out.push(h),
                Err(e) => self.at_value(&p.idx(i), e),
            }
        }
        out
    }

    fn header_value(&mut self, v: Option<String>, p: &KeyPath) -> Option<String> {
        let v = v?;
        if HeaderValue::from_str(&v).is_err() || v.trim().is_empty() {
            self.at_value(
                p,
                format!("`{v}` is not a valid header value: use visible ASCII"),
            );
            return None;
        }
        Some(v)
    }

    fn build(&mut self, top: &Mapping, source: &Path) -> Config {
        for (k, _) in top {
            match k.as_str() {
                Some(k) if TOP_LEVEL_KEYS.contains(&k) => {}
                // Free for anchors (`x-defaults: &d {...}`), as in docker-compose.
                Some(k) if k.starts_with("x-") => {}
                Some(k) => self.at_key(
                    &root().key(k),
                    format!(
                        "unknown top-level key `{k}`; valid keys: {}",
                        TOP_LEVEL_KEYS.join(", ")
                    ),
                ),
                None => self.push(Pos::START, "top-level keys must be names such as `listen`"),
            }
        }

        let threads = self.threads(top);
        let listen = self.listen(top);
        let admin = self.admin(top, &listen);
        let trusted_proxies = self.trusted_proxies(top);
        let mut names = Names::default();
        let upstreams = self.upstreams(top, &mut names);
        let auth = self.auth(top, &mut names);
        let revocation = self.revocation(top);
        let rate_limits = self.rate_limits(top, &mut names, &revocation);
        let compression = self.compression(top);
        let cors = present(top, "cors").and_then(|v| self.cors(v, &root().key("cors")));
        let allowed_hosts = self.allowed_hosts(top);
        let https_redirect = present(top, "https_redirect")
            .and_then(|v| self.de::<bool>(v, &root().key("https_redirect")))
            .unwrap_or(false);
        let security_headers = self.security_headers(top);
        let limits = self.limits(top);
        let (paths, headers) = self.request_rules(top);
        let shutdown_grace = present(top, "shutdown_grace")
            .and_then(|v| self.de::<Dur>(v, &root().key("shutdown_grace")))
            .map_or(defaults::SHUTDOWN_GRACE, |d| d.0);
        let routes = self.routes(top, &names, &rate_limits);

        Config {
            source: source.to_path_buf(),
            threads,
            listen,
            admin,
            trusted_proxies,
            upstreams,
            auth,
            revocation,
            rate_limits,
            compression,
            cors,
            allowed_hosts,
            https_redirect,
            security_headers,
            limits,
            paths,
            headers,
            shutdown_grace,
            routes,
        }
    }

    fn threads(&mut self, top: &Mapping) -> usize {
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

    fn listen(&mut self, top: &Mapping) -> Vec<Listener> {
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

    fn admin(&mut self, top: &Mapping, listen: &[Listener]) -> Admin {
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

    fn trusted_proxies(&mut self, top: &Mapping) -> Vec<IpNet> {
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

    /// The entries of a top-level name -> entry mapping, with their paths.
    fn entries(&mut self, top: &Mapping, section: &str) -> Vec<(String, KeyPath, Value)> {
        let sp = root().key(section);
        let Some(v) = present(top, section) else {
            return Vec::new();
        };
        let Some(m) = v.as_mapping() else {
            self.at_value(
                &sp,
                format!("`{section}` must be a mapping of names to settings"),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in m {
            let name = match k {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    self.at_value(
                        &sp,
                        format!("`{section}` entries must be named by plain strings"),
                    );
                    continue;
                }
            };
            let ep = sp.key(&name);
            if v.is_null() {
                self.at_key(&ep, format!("`{section}.{name}` has no settings"));
                continue;
            }
            out.push((name, ep, v.clone()));
        }
        out
    }

    fn upstreams(&mut self, top: &Mapping, names: &mut Names) -> BTreeMap<String, Upstream> {
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
            out.insert(
                name,
                Upstream {
                    sockets,
                    pool,
                    connect_timeout,
                    read_timeout,
                    health_check,
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

    fn auth(&mut self, top: &Mapping, names: &mut Names) -> BTreeMap<String, AuthPolicy> {
        let mut out = BTreeMap::new();
        for (name, p, v) in self.entries(top, "auth") {
            names.auth.insert(name.clone());
            let Some(raw) = self.de::<RawAuth>(&v, &p) else {
                continue;
            };
            if let Some(policy) = self.auth_policy(&name, &p, raw) {
                out.insert(name, policy);
            }
        }
        out
    }

    fn auth_policy(&mut self, name: &str, p: &KeyPath, raw: RawAuth) -> Option<AuthPolicy> {
        let ap = p.key("algorithms");
        let mut ok = true;
        let mut algs: Vec<String> = Vec::new();
        if raw.algorithms.is_empty() {
            self.at_value(&ap, "list at least one algorithm, e.g. [RS256]");
            ok = false;
        }
        for (i, a) in raw.algorithms.iter().enumerate() {
            let ip = ap.idx(i);
            if a.eq_ignore_ascii_case("none") {
                self.at_value(
                    &ip,
                    "algorithm `none` accepts unsigned tokens and is never allowed: remove it",
                );
                ok = false;
            } else if JWT_ALGORITHMS.contains(&a.as_str()) {
                if algs.contains(a) {
                    self.at_value(&ip, format!("algorithm {a} is listed twice"));
                } else {
                    algs.push(a.clone());
                }
            } else if let Some(known) = JWT_ALGORITHMS.iter().find(|k| k.eq_ignore_ascii_case(a)) {
                self.at_value(&ip, format!("write algorithm `{a}` as `{known}`"));
                ok = false;
            } else {
                self.at_value(
                    &ip,
                    format!(
                        "unknown JWT algorithm `{a}`: use one of {}",
                        JWT_ALGORITHMS.join(", ")
                    ),
                );
                ok = false;
            }
        }
        let hs: Vec<&String> = algs.iter().filter(|a| is_hs(a)).collect();
        let asym: Vec<&String> = algs.iter().filter(|a| !is_hs(a)).collect();
        let mixed = !hs.is_empty() && !asym.is_empty();
        if mixed {
            self.at_value(
                &ap,
                format!(
                    "auth policy `{name}` mixes {} with {}: accepting both shared-secret and public-key algorithms allows algorithm confusion; split it into two policies",
                    hs[0], asym[0]
                ),
            );
            ok = false;
        }

        // Exactly one key source.
        let sources: Vec<(&str, &String)> = [
            ("secret_env", raw.secret_env.as_ref()),
            ("public_key_file", raw.public_key_file.as_ref()),
            ("jwks_file", raw.jwks_file.as_ref()),
            ("jwks_url", raw.jwks_url.as_ref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        let (src_key, src_val) = match sources.as_slice() {
            [] => {
                self.at_value(
                    p,
                    format!("auth policy `{name}` has no key: set one of secret_env, public_key_file, jwks_file or jwks_url"),
                );
                return None;
            }
            [one] => *one,
            [first, rest @ ..] => {
                for (k, _) in rest {
                    self.at_key(
                        &p.key(k),
                        format!(
                            "auth policy `{name}` sets both {} and {k}: keep only one key source",
                            first.0
                        ),
                    );
                }
                return None;
            }
        };
        let kp = p.key(src_key);
        if !mixed {
            if let (Some(h), true) = (hs.first(), src_key != "secret_env") {
                self.at_key(
                    &kp,
                    format!(
                        "{h} verifies with a shared secret: use secret_env instead of {src_key}"
                    ),
                );
                ok = false;
            }
            if let (Some(a), "secret_env") = (asym.first(), src_key) {
                self.at_key(
                    &kp,
                    format!("{a} verifies with a public key: use public_key_file, jwks_file or jwks_url instead of secret_env"),
                );
                ok = false;
            }
            if src_key == "public_key_file" {
                let fams: BTreeSet<&str> = asym.iter().map(|a| key_family(a)).collect();
                if fams.len() > 1 {
                    self.at_value(
                        &ap,
                        format!(
                            "one public_key_file cannot verify {} keys together; use jwks_file or split the policy",
                            fams.into_iter().collect::<Vec<_>>().join(" and ")
                        ),
                    );
                    ok = false;
                }
            }
        }
        let key = match src_key {
            "secret_env" => {
                let value = self.env_secret(src_val, &kp);
                value.map(|value| KeySource::Secret {
                    env: src_val.clone(),
                    value,
                })
            }
            "public_key_file" => Some(KeySource::PublicKeyFile(self.readable_file(src_val, &kp))),
            "jwks_file" => Some(KeySource::JwksFile(self.readable_file(src_val, &kp))),
            _ => {
                if src_val.starts_with("https://") || src_val.starts_with("http://") {
                    Some(KeySource::JwksUrl(src_val.clone()))
                } else {
                    self.at_value(
                        &kp,
                        format!("jwks_url `{src_val}` must start with https://"),
                    );
                    None
                }
            }
        };

        if let Some(iss) = &raw.issuer {
            if iss.is_empty() {
                self.at_value(
                    &p.key("issuer"),
                    "issuer is empty: remove it or set the expected `iss`",
                );
            }
        }
        let audience = raw.audience.map(|a| a.0).unwrap_or_default();
        for (i, a) in audience.iter().enumerate() {
            if a.is_empty() {
                self.at_value(&p.key("audience").idx(i), "audience is empty");
            }
        }
        let leeway = raw.leeway.map_or(defaults::LEEWAY, |d| d.0);

        let mut forward_claims: Vec<(String, HeaderName)> = Vec::new();
        let fp = p.key("forward_claims");
        for (claim, header) in raw.forward_claims.map(|m| m.0).unwrap_or_default() {
            let hp = fp.key(&claim);
            match parse_header_name(&header) {
                Err(e) => self.at_value(&hp, e),
                Ok(h) if RESERVED_HEADERS.contains(&h.as_str()) => self.at_value(
                    &hp,
                    format!("claims cannot be forwarded as `{h}`: pick a header of your own, e.g. x-auth-{claim}"),
                ),
                Ok(h) if forward_claims.iter().any(|(_, x)| *x == h) => {
                    self.at_value(&hp, format!("header `{h}` already carries another claim"))
                }
                Ok(h) => forward_claims.push((claim, h)),
            }
        }
        let key = key?;
        ok.then_some(AuthPolicy {
            algorithms: algs,
            key,
            issuer: raw.issuer,
            audience,
            leeway,
            forward_claims,
            strip_authorization: raw.strip_authorization.unwrap_or(false),
        })
    }

    fn revocation(&mut self, top: &Mapping) -> Option<Revocation> {
        let p = root().key("revocation");
        let raw = present(top, "revocation").and_then(|v| self.de::<RawRevocation>(v, &p))?;
        if let Some(r) = &raw.redis {
            if !(r.starts_with("redis://")
                || r.starts_with("rediss://")
                || r.starts_with("unix://"))
            {
                self.at_value(
                    &p.key("redis"),
                    format!("invalid redis URL `{r}`: expected redis://HOST:PORT/DB (or rediss:// for TLS)"),
                );
            }
        }
        if let Some("") = raw.persist_file.as_deref() {
            self.at_value(
                &p.key("persist_file"),
                "persist_file is empty: remove it or give a path",
            );
        }
        Some(Revocation {
            persist_file: raw.persist_file.map(PathBuf::from),
            redis: raw.redis,
        })
    }

    fn rate_limits(
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

    fn compression(&mut self, top: &Mapping) -> Option<Compression> {
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

    fn cors(&mut self, v: &Value, p: &KeyPath) -> Option<Cors> {
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

    fn allowed_hosts(&mut self, top: &Mapping) -> Option<Vec<String>> {
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

    fn security_headers(&mut self, top: &Mapping) -> Option<SecurityHeaders> {
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

    fn limits(&mut self, top: &Mapping) -> Limits {
        let p = root().key("limits");
        let mut l = defaults::limits();
        let Some(raw) = present(top, "limits").and_then(|v| self.de::<RawLimits>(v, &p)) else {
            return l;
        };
        if let Some(Size(n)) = raw.max_body {
            l.max_body = n;
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
    fn request_rules(&mut self, top: &Mapping) -> (PathRules, HeaderRules) {
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

    fn routes(
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
            cors,
            websocket,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanize_messages() {
        assert_eq!(
            humanize("unknown field `foo`, expected one of `a`, `b`"),
            "unknown key `foo`; valid keys here: `a`, `b`"
        );
        assert_eq!(
            humanize("missing field `path`"),
            "missing required key `path`"
        );
        assert_eq!(
            humanize("invalid type: string \"x\", expected usize"),
            "expected a whole number, found string \"x\""
        );
        assert_eq!(
            humanize("invalid type: unit value, expected struct RawPool"),
            "expected a mapping (key: value), found nothing"
        );
    }

    #[test]
    fn methods() {
        assert!(parse_method("GET").is_ok());
        assert!(parse_method("get").unwrap_err().contains("`GET`"));
        assert!(parse_method("FETCH")
            .unwrap_err()
            .contains("unknown HTTP method"));
    }
}
