//! asgi-gate configuration: the YAML schema users write (`raw`), its defaults,
//! and validation into the checked types (`types`) the gate runs on. Every
//! error carries the `file:line:col` of the key or value it is about, and
//! loading reports all errors at once.
#![forbid(unsafe_code)]

mod defaults;
mod error;
mod marks;
mod raw;
mod types;
mod units;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use types::*;

use std::path::Path;

/// How a config is loaded.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// `asgi-gate run`: `upstreams.app` may (and should) have no `sockets`;
    /// the supervisor fills them in.
    pub supervised: bool,
}

/// Reads, parses and validates a config file, reading `*_env` secrets from the
/// process environment.
pub fn load(path: &Path, opts: LoadOptions) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::single(ConfigError::whole_file(
            path,
            format!("cannot read config file: {e}"),
        ))
    })?;
    load_str(&text, path, opts, &|name| std::env::var(name).ok())
}

/// Parses and validates config text. `path` is only used in messages and for
/// resolving nothing else; `env` looks up environment variables (injected for tests).
pub fn load_str(
    text: &str,
    path: &Path,
    opts: LoadOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    validate::load_str(text, path, opts, env)
}
