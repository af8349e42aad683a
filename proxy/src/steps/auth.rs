//! JWT policies and the revocation list as the running gate holds them:
//! built from the config, a `jwks_url` key set refreshed in the background
//! (the request path never waits on the network after start), and the
//! revocation list with its fsync'ed log and expiry sweep.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use asgi_gate_config::{AuthPolicy, KeySource as ConfKeySource, Revocation};
use asgi_gate_filters::jwt::{self, JwtAlgorithm, KeySource, PolicyError, PolicyParams};
use asgi_gate_filters::revocation::{
    KeyHash, LogEvent, LogKey, RevocationList, RevocationLog, RevokeOutcome,
};
use tokio::sync::Notify;

use crate::clock::unix_now;

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("auth policy `{name}`: {source}")]
    Policy { name: String, source: PolicyError },
    #[error("auth policy `{name}`: unknown algorithm `{alg}`")]
    Algorithm { name: String, alg: String },
    #[error("auth policy `{name}`: cannot read {path}: {source}")]
    Read {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("auth policy `{name}`: cannot fetch jwks_url: {detail}")]
    Jwks { name: String, detail: String },
    #[error("revocation log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Shared(crate::cluster::SharedError),
}

/// One named policy. Its key set can be swapped by the JWKS refresher.
pub struct AuthSlot {
    pub name: String,
    policy: RwLock<Arc<jwt::Policy>>,
    jwks_url: Option<String>,
    /// When to refresh first: the start-up response's max-age, or 10 min.
    first_refresh: Duration,
    refresh: Notify,
}

impl AuthSlot {
    pub fn current(&self) -> Arc<jwt::Policy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A token named a key we do not have: ask the refresher (rate-limited
    /// there) to look again.
    pub fn key_missing(&self) {
        if self.jwks_url.is_some() {
            self.refresh.notify_one();
        }
    }

    fn replace(&self, p: jwt::Policy) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(p);
    }
}

/// Builds one policy; a `jwks_url` is fetched once here (first start).
pub async fn build_slot(name: &str, conf: &AuthPolicy) -> Result<AuthSlot, AuthSetupError> {
    let algorithms = conf
        .algorithms
        .iter()
        .map(|a| {
            a.parse::<JwtAlgorithm>()
                .map_err(|_| AuthSetupError::Algorithm {
                    name: name.to_string(),
                    alg: a.clone(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| AuthSetupError::Read {
            name: name.to_string(),
            path: path.clone(),
            source,
        })
    };
    let mut jwks_url = None;
    let mut first_refresh = JWKS_REFRESH;
    let key = match &conf.key {
        ConfKeySource::Secret { value, .. } => KeySource::Secret(value.clone().into_bytes()),
        ConfKeySource::PublicKeyFile(p) => KeySource::PublicKeyPem(read(p)?),
        ConfKeySource::JwksFile(p) => {
            KeySource::Jwks(String::from_utf8_lossy(&read(p)?).into_owned())
        }
        ConfKeySource::JwksUrl(url) => {
            jwks_url = Some(url.clone());
            let (doc, max_age) = fetch_jwks(url)
                .await
                .map_err(|detail| AuthSetupError::Jwks {
                    name: name.to_string(),
                    detail,
                })?;
            first_refresh = max_age.unwrap_or(JWKS_REFRESH);
            KeySource::Jwks(doc)
        }
    };
    let mut params = PolicyParams::new(algorithms, key);
    params.issuer = conf.issuer.clone();
    params.audience = conf.audience.clone();
    params.leeway = conf.leeway;
    params.forward_claims = conf.forward_claims.clone();
    params.strip_authorization = conf.strip_authorization;
    let policy = jwt::Policy::new(params).map_err(|source| AuthSetupError::Policy {
        name: name.to_string(),
        source,
    })?;
    for w in policy.jwks_warnings() {
        tracing::warn!(policy = name, "{w}");
    }
    Ok(AuthSlot {
        name: name.to_string(),
        policy: RwLock::new(Arc::new(policy)),
        jwks_url,
        first_refresh,
        refresh: Notify::new(),
    })
}

/// Default refresh period when the JWKS response names no max-age.
const JWKS_REFRESH: Duration = Duration::from_secs(600);
/// An unknown `kid` triggers at most one refresh per this period.
const JWKS_MIN_GAP: Duration = Duration::from_secs(30);
const JWKS_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps a `jwks_url` policy's keys fresh: on the response's max-age (or
/// every 10 min), and soon after an unknown `kid`, at most once per 30 s.
/// A failed refresh keeps the last good key set.
pub async fn jwks_refresher(weak: std::sync::Weak<AuthSlot>) {
    let Some((url, mut every)) = weak
        .upgrade()
        .and_then(|s| Some((s.jwks_url.clone()?, s.first_refresh)))
    else {
        return;
    };
    loop {
        // Hold the slot only while waiting on it; a reload that drops the
        // policy ends this task at its next wake-up.
        {
            let Some(slot) = weak.upgrade() else { return };
            tokio::select! {
                _ = tokio::time::sleep(every) => {},
                _ = slot.refresh.notified() => {},
            }
        }
        let Some(slot) = weak.upgrade() else { return };
        every = match fetch_jwks(&url).await {
            Ok((doc, max_age)) => match slot.current().with_jwks(&doc) {
                Ok(p) => {
                    tracing::info!(policy = %slot.name, keys = p.key_count(), "JWKS refreshed");
                    slot.replace(p);
                    max_age.unwrap_or(JWKS_REFRESH)
                }
                Err(e) => {
                    tracing::warn!(policy = %slot.name, error = %e, "JWKS refresh refused; keeping the last good keys");
                    JWKS_MIN_GAP
                }
            },
            Err(e) => {
                tracing::warn!(policy = %slot.name, error = %e, "JWKS fetch failed; keeping the last good keys");
                JWKS_MIN_GAP
            }
        };
        drop(slot);
        // At most one fetch per gap: a wake-up (unknown kid) arriving now is
        // kept by the Notify and served right after the gap.
        tokio::time::sleep(JWKS_MIN_GAP).await;
        every = every.saturating_sub(JWKS_MIN_GAP);
    }
}

/// GET the JWKS document (http or https); returns it and the
/// Cache-Control max-age.
async fn fetch_jwks(url: &str) -> Result<(String, Option<Duration>), String> {
    let got =
        crate::tls_client::get(url, asgi_gate_filters::jwt::MAX_JWKS_BYTES, JWKS_TIMEOUT).await?;
    let max_age = got
        .cache_control
        .as_deref()
        .and_then(|s| {
            s.split(',').find_map(|d| {
                d.trim()
                    .strip_prefix("max-age=")
                    .and_then(|n| n.parse::<u64>().ok())
            })
        })
        .map(Duration::from_secs);
    let doc = String::from_utf8(got.body.to_vec()).map_err(|_| "not UTF-8".to_string())?;
    Ok((doc, max_age))
}

/// The revocation list, its optional log, and the leeway the admin API adds
/// to a bare `{jti, exp}` (the largest of all policies, so the entry lasts
/// as long as any policy could still accept the token; set again on every
/// reload, since the list outlives the policies).
pub struct Revocations {
    pub list: RevocationList,
    log: Option<Mutex<RevocationLog>>,
    max_leeway: AtomicU64,
    /// `revocation.redis`: shared with the other gates.
    pub shared: Option<Arc<crate::cluster::SharedRevocations>>,
}

#[derive(Debug, thiserror::Error)]
#[error("revocation log write failed: {0}")]
pub struct LogWriteError(#[from] std::io::Error);

impl Revocations {
    pub fn open(conf: Option<&Revocation>, max_leeway: u64) -> Result<Revocations, AuthSetupError> {
        let list = RevocationList::new();
        let log = match conf.and_then(|c| c.persist_file.as_ref()) {
            None => None,
            Some(path) => {
                let (log, replay) = RevocationLog::open(path, unix_now()).map_err(|source| {
                    AuthSetupError::Log {
                        path: path.clone(),
                        source,
                    }
                })?;
                for w in &replay.warnings {
                    tracing::warn!(file = %path.display(), "revocation log: {w}");
                }
                let now = unix_now();
                for (key, exp) in &replay.entries {
                    list.revoke_hash(*key, *exp, now);
                }
                tracing::info!(file = %path.display(), live = list.len(), "revocation log replayed");
                Some(Mutex::new(log))
            }
        };
        let shared = match conf.and_then(|c| c.redis.as_deref()) {
            None => None,
            Some(url) => Some(Arc::new(
                crate::cluster::SharedRevocations::new(url).map_err(AuthSetupError::Shared)?,
            )),
        };
        Ok(Revocations {
            list,
            log,
            max_leeway: AtomicU64::new(max_leeway),
            shared,
        })
    }

    pub fn max_leeway(&self) -> u64 {
        self.max_leeway.load(Ordering::Relaxed)
    }

    pub fn set_max_leeway(&self, secs: u64) {
        self.max_leeway.store(secs, Ordering::Relaxed);
    }

    /// Entries heard from Redis (announced or loaded): those new here or
    /// later than ours are logged (one sync for all) and applied, so a
    /// restart without Redis keeps them. A failed log write is reported and
    /// the entries applied all the same (refusing is the safe side).
    /// Returns how many were new or extended. Blocking.
    pub fn apply_shared(&self, entries: &[(KeyHash, u64)]) -> usize {
        let now = unix_now();
        let mut log = self
            .log
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()));
        let fresh: Vec<(KeyHash, u64)> = entries
            .iter()
            .filter(|(k, exp)| *exp > now && self.list.get_hash(*k, now).is_none_or(|e| e < *exp))
            .copied()
            .collect();
        if let Some(log) = log.as_mut() {
            let events: Vec<LogEvent> = fresh
                .iter()
                .map(|(k, exp)| LogEvent::Revoke {
                    key: LogKey::Hashed(*k),
                    exp: *exp,
                })
                .collect();
            if let Err(e) = log.append_all(&events) {
                tracing::error!(error = %e, entries = events.len(), "revocation log write failed for entries from Redis");
            }
        }
        for (k, exp) in &fresh {
            self.list.revoke_hash(*k, *exp, now);
        }
        fresh.len()
    }

    /// A removal heard from Redis, logged so a replay does not bring the
    /// entry back. Blocking.
    pub fn remove_shared(&self, key: KeyHash) {
        let mut log = self
            .log
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()));
        if self.list.get_hash(key, unix_now()).is_none() {
            return;
        }
        if let Some(log) = log.as_mut() {
            let event = LogEvent::Remove {
                key: LogKey::Hashed(key),
            };
            if let Err(e) = log.append(&event) {
                tracing::error!(error = %e, "revocation log write failed for a removal from Redis");
            }
        }
        self.list.remove_hash(key);
    }

    /// Writes (and fsyncs) first, then revokes: a 2xx after this survives
    /// `kill -9`. Blocking: call from `spawn_blocking`.
    pub fn revoke(&self, key: &str, exp: u64) -> Result<RevokeOutcome, LogWriteError> {
        let now = unix_now();
        if exp <= now {
            return Ok(RevokeOutcome::AlreadyExpired);
        }
        if let Some(log) = &self.log {
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            log.append_revoke(key, exp)?;
            return Ok(self.list.revoke(key, exp, now));
        }
        Ok(self.list.revoke(key, exp, now))
    }

    /// Blocking, like `revoke`.
    pub fn remove(&self, key: &str) -> Result<bool, LogWriteError> {
        if self.list.get(key, unix_now()).is_none() {
            return Ok(false);
        }
        if let Some(log) = &self.log {
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            log.append_remove(key)?;
        }
        Ok(self.list.remove(key))
    }

    /// Forgets expired entries and compacts the log when it has grown past
    /// twice the live size. Blocking.
    pub fn maintain(&self) {
        let now = unix_now();
        self.list.sweep(now);
        if let Some(log) = &self.log {
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = log.compact_if_needed(&self.list, now) {
                tracing::warn!(error = %e, "revocation log compaction failed; will retry");
            }
        }
    }
}

impl crate::cluster::LocalList for Revocations {
    fn apply_shared(&self, entries: &[(KeyHash, u64)]) -> usize {
        Revocations::apply_shared(self, entries)
    }

    fn remove_shared(&self, key: KeyHash) {
        Revocations::remove_shared(self, key)
    }

    fn snapshot(&self, now: u64) -> Vec<(KeyHash, u64)> {
        self.list.snapshot(now)
    }
}

/// Sweeps expired revocations every second (O(expired) each time).
pub async fn revocation_sweeper(rev: std::sync::Weak<Revocations>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(r) = rev.upgrade() else { return };
        let _ = tokio::task::spawn_blocking(move || r.maintain()).await;
    }
}
