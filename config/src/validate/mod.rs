//! Loading and checking: raw YAML → the checked `types`, with every error and
//! the position of the key or value it is about; nothing stops at the first.
//!
//! The order is YAML syntax (via `marks`), then per-section deserialization
//! into `raw`, then semantic checks. This module owns the entry point
//! (`load_str`), the checker (`Ctx`: collected errors, positions, options,
//! the environment) with its shared helpers (`push`, `at_value`, `at_key`,
//! `de`, `positive`, `env_secret`, `readable_file`, `readable_dir`,
//! `header_names`, `header_value`, `entries`) and `build`, which runs the
//! sections in order. The sections themselves live in the submodules:
//! `listen` (server-wide settings), `upstreams`, `auth` (with revocation),
//! `policies` (rate limits, compression, CORS) and `routes`.

mod auth;
mod listen;
mod policies;
mod routes;
mod upstreams;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use crate::error::{ConfigError, ConfigErrors};
use crate::marks::{KeyPath, Marks, Pos, Seg};
use crate::raw::*;
use crate::types::*;
use crate::units::Dur;
use crate::LoadOptions;

/// Methods a route or CORS policy may name.
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

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
        let cache = self.cache(top);
        let cors = present(top, "cors").and_then(|v| self.cors(v, &root().key("cors")));
        let allowed_hosts = self.allowed_hosts(top);
        let https_redirect = self.https_redirect(top);
        let security_headers = self.security_headers(top);
        let limits = self.limits(top);
        let (paths, headers) = self.request_rules(top);
        let shutdown_grace = self.shutdown_grace(top);
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
            cache,
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
