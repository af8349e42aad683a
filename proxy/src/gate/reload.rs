//! How a reload swaps the gate: the config file is read again, a new
//! [`Gate`] built next to the current one, and swapped in whole; each
//! request finishes on the gate it started with. Also the one log line
//! per reload outcome (SIGHUP and `POST /reload` alike).

use std::sync::Arc;

use std::path::PathBuf;
use std::sync::RwLock;

use asgi_gate_config::{Config, ConfigErrors, LoadOptions};

use super::build::max_leeway;
use super::{Gate, GateError};

/// The gate currently serving, swapped whole on reload: each request takes
/// the current one when it starts and finishes on it.
pub struct Shared {
    current: RwLock<Arc<Gate>>,
    /// Settings only a restart applies, as the gate started with them.
    started: Config,
    path: Option<PathBuf>,
    opts: LoadOptions,
    /// Applied to every reloaded config (supervisor mode fills in sockets).
    adjust: Box<dyn Fn(&mut Config) + Send + Sync>,
    /// TLS listeners' certificates, re-read on every reload.
    certs: Vec<Arc<crate::gate::tls::Tls>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no config file to reload (built-in config)")]
    NoFile,
    #[error("{0}")]
    Invalid(ConfigErrors),
    #[error("{0}")]
    Build(#[from] GateError),
}

impl Shared {
    pub fn new(
        gate: Gate,
        started: Config,
        path: Option<PathBuf>,
        opts: LoadOptions,
        adjust: Box<dyn Fn(&mut Config) + Send + Sync>,
        certs: Vec<Arc<crate::gate::tls::Tls>>,
    ) -> Shared {
        Shared {
            current: RwLock::new(Arc::new(gate)),
            started,
            path,
            opts,
            adjust,
            certs,
        }
    }

    pub fn current(&self) -> Arc<Gate> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the config file. Valid: routes, policies, limits, upstreams
    /// and compression swap at once for new requests; the returned notes
    /// name changes that need a restart (not applied). Invalid: nothing
    /// changes and every error comes back with its position.
    pub async fn reload(&self) -> Result<Vec<String>, ReloadError> {
        let result = self.try_reload().await;
        if let Some(m) = crate::metrics::get() {
            let label = if result.is_ok() { "ok" } else { "failed" };
            m.reloads.with_label_values(&[label]).inc();
        }
        result
    }

    async fn try_reload(&self) -> Result<Vec<String>, ReloadError> {
        let path = self.path.as_ref().ok_or(ReloadError::NoFile)?;
        let mut cfg = asgi_gate_config::load(path, self.opts).map_err(ReloadError::Invalid)?;
        (self.adjust)(&mut cfg);
        let mut notes = Vec::new();
        let old = &self.started;
        if cfg.listen != old.listen {
            notes.push("`listen` changed: restart to apply".to_string());
        }
        if cfg.admin.address != old.admin.address {
            notes.push("`admin.address` changed: restart to apply".to_string());
        }
        if cfg.threads != old.threads {
            notes.push("`threads` changed: restart to apply".to_string());
        }
        if cfg.revocation != old.revocation {
            notes.push("`revocation` changed: restart to apply".to_string());
        }
        if cfg.limits.header_timeout != old.limits.header_timeout
            || cfg.limits.max_header_bytes != old.limits.max_header_bytes
        {
            notes.push(
                "`limits.header_timeout`/`max_header_bytes` apply to new connections only"
                    .to_string(),
            );
        }
        let previous = self.current();
        let gate = Gate::build(&cfg, Some(&previous)).await?;
        // While old and new policies both serve, the larger of their leeways.
        let (rev, leeway) = (gate.revocations.clone(), max_leeway(&gate.auth));
        rev.set_max_leeway(leeway.max(rev.max_leeway()));
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(gate);
        rev.set_max_leeway(leeway);
        for cert in &self.certs {
            if let Err(e) = cert.reload() {
                notes.push(format!("{e}; the previous certificate keeps serving"));
            }
        }
        Ok(notes)
    }
}

/// One log line per outcome, every config error with its position.
pub fn log_reload(result: &Result<Vec<String>, ReloadError>) {
    match result {
        Ok(notes) => {
            tracing::info!("config reloaded");
            for n in notes {
                tracing::warn!("{n}");
            }
        }
        Err(ReloadError::Invalid(errors)) => {
            for e in &errors.0 {
                tracing::error!("reload refused, old config keeps serving: {e}");
            }
        }
        Err(e) => tracing::error!("reload refused, old config keeps serving: {e}"),
    }
}
