//! What replicas share through Redis (`revocation.redis`): the revocation
//! list and the `shared: true` rate limits.
//!
//! # Revocations
//!
//! Each revocation is a Redis key `asgi-gate:rev:<hash>` holding its expiry,
//! set with `EXAT` so Redis forgets it when the token could no longer be
//! accepted anyway, and announced on the channel `asgi-gate:rev` (`+<hash>
//! <exp>`, or `-<hash>` for a removal). Every gate subscribes, applies what
//! it hears to its local list (lookups never touch the network) and, on each
//! (re)connection, loads every key first, so a gate that was away misses
//! nothing that is still live. `<hash>` is the list's own key hash (the
//! first 16 bytes of SHA-256 of the `jti`), so no token id is stored in
//! Redis in clear.

use std::sync::Weak;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use asgi_gate_filters::ratelimit::{Allowed, Limited, RateLimit};
use asgi_gate_filters::revocation::{KeyHash, RevocationList};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

use crate::auth::unix_now;

const KEY_PREFIX: &str = "asgi-gate:rev:";
const CHANNEL: &str = "asgi-gate:rev";
/// How long an admin call waits for Redis before answering 503.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("revocation.redis: {0}")]
    Url(redis::RedisError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// The Redis side of the revocation list.
pub struct SharedRevocations {
    client: redis::Client,
    conn: ConnectionManager,
}

impl SharedRevocations {
    /// Connects lazily: a gate starts (and serves with its local list) while
    /// Redis is down, and catches up when it comes.
    pub fn new(url: &str) -> Result<SharedRevocations, SharedError> {
        let (client, conn) = lazy_connection(url)?;
        Ok(SharedRevocations { client, conn })
    }

    /// The connection, for the shared limits: one per gate, not one each.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Stores and announces a revocation; the admin API answers 2xx only
    /// after this.
    pub async fn revoke(&self, key: KeyHash, exp: u64) -> Result<(), SharedError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(format!("{KEY_PREFIX}{key}"))
            .arg(exp)
            .arg("EXAT")
            .arg(exp)
            .ignore()
            .cmd("PUBLISH")
            .arg(CHANNEL)
            .arg(format!("+{key} {exp}"))
            .ignore();
        timed(pipe.query_async::<()>(&mut conn)).await
    }

    pub async fn remove(&self, key: KeyHash) -> Result<(), SharedError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(format!("{KEY_PREFIX}{key}"))
            .ignore()
            .cmd("PUBLISH")
            .arg(CHANNEL)
            .arg(format!("-{key}"))
            .ignore();
        timed(pipe.query_async::<()>(&mut conn)).await
    }

    /// Follows the channel for as long as `list` is in use: subscribe, load
    /// every live key, then apply each announcement; after a lost connection
    /// the same again, retrying every second.
    pub async fn follow(&self, list: Weak<crate::auth::Revocations>) {
        let mut warned = false;
        loop {
            if list.strong_count() == 0 {
                return;
            }
            match self.follow_once(&list).await {
                Ok(()) => return,
                Err(e) => {
                    if !warned {
                        tracing::warn!(error = %e, "shared revocations: Redis unavailable; serving with the local list, retrying");
                        warned = true;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// `Ok` only when the list is gone.
    async fn follow_once(&self, list: &Weak<crate::auth::Revocations>) -> Result<(), SharedError> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(CHANNEL).await?;
        // Subscribed first, then the snapshot: nothing falls in between.
        let loaded = self.load(list).await?;
        tracing::info!(loaded, "shared revocations: following Redis");
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            let Some(rev) = list.upgrade() else {
                return Ok(());
            };
            if let Ok(text) = msg.get_payload::<String>() {
                apply(&rev.list, &text);
            }
        }
        Err(SharedError::Redis(redis::RedisError::from((
            redis::ErrorKind::Io,
            "subscription ended",
        ))))
    }

    /// Every live revocation in Redis into the local list.
    async fn load(&self, list: &Weak<crate::auth::Revocations>) -> Result<usize, SharedError> {
        let mut conn = self.conn.clone();
        let keys: Vec<String> = {
            let mut iter = conn
                .scan_match::<_, String>(format!("{KEY_PREFIX}*"))
                .await?;
            let mut keys = Vec::new();
            while let Some(k) = iter.next_item().await {
                keys.push(k?);
            }
            keys
        };
        let Some(rev) = list.upgrade() else {
            return Ok(0);
        };
        let now = unix_now();
        let mut loaded = 0;
        for chunk in keys.chunks(500) {
            let values: Vec<Option<u64>> = conn.mget(chunk).await?;
            for (k, exp) in chunk.iter().zip(values) {
                let hash = k.strip_prefix(KEY_PREFIX).and_then(KeyHash::from_hex);
                if let (Some(hash), Some(exp)) = (hash, exp) {
                    rev.list.revoke_hash(hash, exp, now);
                    loaded += 1;
                }
            }
        }
        Ok(loaded)
    }
}

/// `shared: true` limits: GCRA in Redis, one atomic script per check, so
/// every replica counts into the same bucket. The state is one key per
/// bucket, `asgi-gate:rl:<limit>:<key>`, holding the theoretical arrival
/// time in microseconds of Redis's clock and expiring once the bucket is
/// full again. When Redis does not answer within [`CHECK_TIMEOUT`] the
/// gate's local limiter decides instead (each replica then limits on its
/// own), with one warning until Redis answers again.
pub struct SharedLimits {
    conn: ConnectionManager,
    script: redis::Script,
    degraded: AtomicBool,
}

const CHECK_TIMEOUT: Duration = Duration::from_millis(100);

/// KEYS[1] bucket; ARGV[1] emission interval µs; ARGV[2] burst. Returns
/// {1, remaining, reset µs} or {0, wait µs}.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat + interval - interval * burst
if now < allow_at then
  return {0, allow_at - now}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now - new_tat + interval * burst) / interval), new_tat - now}
";

impl SharedLimits {
    /// Each check is bounded by [`CHECK_TIMEOUT`] whatever the
    /// connection's own timeouts.
    pub fn new(conn: ConnectionManager) -> SharedLimits {
        SharedLimits {
            conn,
            script: redis::Script::new(GCRA),
            degraded: AtomicBool::new(false),
        }
    }

    /// For a gate whose revocation list (kept across reloads) has no Redis
    /// of its own yet.
    pub fn connect(url: &str) -> Result<SharedLimits, SharedError> {
        Ok(SharedLimits::new(lazy_connection(url)?.1))
    }

    /// One request under `key` (from [`RateLimit::shared_key`]) in the
    /// shared bucket, or in `limit`'s own when Redis cannot answer in time.
    pub async fn check(
        &self,
        limit: &RateLimit,
        key: &str,
        local: impl FnOnce() -> Result<Allowed, Limited>,
    ) -> Result<Allowed, Limited> {
        match tokio::time::timeout(CHECK_TIMEOUT, self.check_redis(limit, key)).await {
            Ok(Ok(answer)) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("shared rate limits: Redis answers again");
                }
                answer
            }
            failed => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {CHECK_TIMEOUT:?}"),
                    };
                    tracing::warn!(error = %why, "shared rate limits: Redis unavailable; each gate limits on its own until it answers");
                }
                local()
            }
        }
    }

    async fn check_redis(
        &self,
        limit: &RateLimit,
        key: &str,
    ) -> Result<Result<Allowed, Limited>, redis::RedisError> {
        let mut conn = self.conn.clone();
        let interval = limit.interval().as_micros().max(1) as u64;
        let reply: Vec<u64> = self
            .script
            .key(format!("asgi-gate:rl:{}:{key}", limit.name()))
            .arg(interval)
            .arg(limit.burst())
            .invoke_async(&mut conn)
            .await?;
        match reply.as_slice() {
            [1, remaining, reset] => Ok(Ok(Allowed {
                remaining: u32::try_from(*remaining).unwrap_or(u32::MAX),
                reset: Duration::from_micros(*reset),
            })),
            [0, wait, ..] => Ok(Err(Limited {
                wait: Duration::from_micros(*wait),
            })),
            _ => Err(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected GCRA script reply",
            ))),
        }
    }
}

/// A client and its connection manager, connecting on first use.
fn lazy_connection(url: &str) -> Result<(redis::Client, ConnectionManager), SharedError> {
    let client = redis::Client::open(url).map_err(SharedError::Url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(WRITE_TIMEOUT));
    let conn = client
        .get_connection_manager_lazy(config)
        .map_err(SharedError::Url)?;
    Ok((client, conn))
}

async fn timed(
    write: impl std::future::Future<Output = redis::RedisResult<()>>,
) -> Result<(), SharedError> {
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(SharedError::Timeout(WRITE_TIMEOUT)),
    }
}

/// One announcement: `+<hash> <exp>` or `-<hash>`; anything else ignored.
fn apply(list: &RevocationList, msg: &str) {
    if let Some(rest) = msg.strip_prefix('+') {
        let mut parts = rest.split(' ');
        let hash = parts.next().and_then(KeyHash::from_hex);
        let exp = parts.next().and_then(|e| e.parse::<u64>().ok());
        if let (Some(hash), Some(exp)) = (hash, exp) {
            list.revoke_hash(hash, exp, unix_now());
        }
    } else if let Some(hash) = msg.strip_prefix('-').and_then(KeyHash::from_hex) {
        list.remove_hash(hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_apply_and_garbage_is_ignored() {
        let list = RevocationList::new();
        let key = KeyHash::of("jti-1");
        let exp = unix_now() + 60;
        apply(&list, &format!("+{key} {exp}"));
        assert_eq!(list.get("jti-1", unix_now()), Some(exp));
        for junk in [
            "",
            "+",
            "+zz 5",
            &format!("+{key}"),
            &format!("+{key} soon"),
            "?x",
        ] {
            apply(&list, junk);
        }
        assert_eq!(list.len(), 1);
        apply(&list, &format!("-{key}"));
        assert_eq!(list.get("jti-1", unix_now()), None);
    }
}
