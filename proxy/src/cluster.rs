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
//!
//! Nothing is lost to a Redis outage or restart:
//! - the subscribed link is PINGed every [`PING_EVERY`] (RESP2 lets a
//!   subscribed connection PING; redis-rs's `PubSubSink::ping` handles the
//!   `pong` reply), so a half-open link is noticed and replaced instead of
//!   leaving the gate deaf; the live set is re-read every [`RESCAN_EVERY`];
//! - on every (re)connection each gate writes the live entries of its own
//!   that Redis lacks (the union heal, `SET NX`), so a Redis restarted
//!   empty is refilled by the gates;
//! - a change the admin API cannot write to Redis waits in an in-memory
//!   outbox, sent as soon as the link is up. It needs no file of its own:
//!   revocations are in the local log, and a gate restarted before Redis is
//!   back pushes them with the heal. A removal that waits is lost by such a
//!   restart (the entry comes back from Redis: fail closed, delete again);
//! - what a gate hears from Redis goes to its local log too, so a restart
//!   without Redis keeps it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use asgi_gate_filters::ratelimit::{Allowed, Limited, RateLimit};
use asgi_gate_filters::revocation::KeyHash;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::AsyncCommands;
use tokio::sync::Notify;

use crate::clock::unix_now;

/// The gate's local revocation list, as the Redis feed sees it: the feed is
/// handed the list (`follow`) and names nothing above this module.
pub trait LocalList: Send + Sync + 'static {
    /// Entries heard from Redis (announced or loaded); returns how many were
    /// new or extended. Blocking.
    fn apply_shared(&self, entries: &[(KeyHash, u64)]) -> usize;
    /// A removal heard from Redis. Blocking.
    fn remove_shared(&self, key: KeyHash);
    /// Every live entry at `now`.
    fn snapshot(&self, now: u64) -> Vec<(KeyHash, u64)>;
}

const KEY_PREFIX: &str = "asgi-gate:rev:";
const CHANNEL: &str = "asgi-gate:rev";
/// How long an admin call waits for Redis before queueing the change.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A link that does not answer a PING within [`PING_TIMEOUT`] is replaced.
const PING_EVERY: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// The safety net under pub/sub: every live key read again.
const RESCAN_EVERY: Duration = Duration::from_secs(60);
/// Between attempts while Redis is unreachable.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Keys per pipelined batch (heal, outbox, MGET).
const BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("revocation.redis: {0}")]
    Url(redis::RedisError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// Where an admin change stands with the other gates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Redis has it and it was announced.
    Done,
    /// Applied here; waiting in the outbox until Redis answers.
    Pending,
}

/// A change waiting for Redis; a later change to the same key replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Revoke(u64),
    Remove,
}

/// The Redis side of the revocation list.
pub struct SharedRevocations {
    client: redis::Client,
    conn: ConnectionManager,
    /// Set by the follower when its link fails, cleared when it is back:
    /// admin changes then go to the outbox at once instead of waiting.
    down: AtomicBool,
    outbox: Mutex<HashMap<KeyHash, Pending>>,
    /// Wakes the follower to send the outbox.
    wake: Notify,
    /// Direct admin writes and outbox sends, one at a time, so a queued
    /// change is never sent after a newer one to the same key.
    writes: tokio::sync::Mutex<()>,
}

impl SharedRevocations {
    /// Connects lazily: a gate starts (and serves with its local list) while
    /// Redis is down, and catches up when it comes.
    pub fn new(url: &str) -> Result<SharedRevocations, SharedError> {
        let (client, conn) = lazy_connection(url)?;
        Ok(SharedRevocations {
            client,
            conn,
            down: AtomicBool::new(false),
            outbox: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            writes: tokio::sync::Mutex::new(()),
        })
    }

    /// The connection, for the shared limits: one per gate, not one each.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Changes applied locally and not yet in Redis.
    pub fn outbox_len(&self) -> usize {
        self.outbox().len()
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, HashMap<KeyHash, Pending>> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores and announces a revocation, or queues it when Redis does not
    /// answer (the caller has applied it locally already).
    pub async fn revoke(&self, key: KeyHash, exp: u64) -> Sharing {
        self.write(key, Pending::Revoke(exp)).await
    }

    pub async fn remove(&self, key: KeyHash) -> Sharing {
        self.write(key, Pending::Remove).await
    }

    async fn write(&self, key: KeyHash, change: Pending) -> Sharing {
        if !self.down.load(Ordering::Relaxed) {
            let _one = self.writes.lock().await;
            if !self.outbox().contains_key(&key) {
                let mut conn = self.conn.clone();
                let mut pipe = redis::pipe();
                push(&mut pipe, key, change);
                match timed(pipe.query_async::<()>(&mut conn)).await {
                    Ok(()) => return Sharing::Done,
                    Err(e) => {
                        tracing::warn!(error = %e, "revocation change not written to Redis; queued until it answers")
                    }
                }
            }
        }
        self.outbox().insert(key, change);
        self.wake.notify_one();
        Sharing::Pending
    }

    /// Follows the channel for as long as `list` is in use; after a lost or
    /// silent link, the same again every second.
    pub async fn follow<L: LocalList>(&self, list: Weak<L>) {
        let mut warned = false;
        loop {
            if list.strong_count() == 0 {
                return;
            }
            let mut followed = false;
            match self.follow_once(&list, &mut followed).await {
                Ok(()) => return,
                Err(e) => {
                    self.down.store(true, Ordering::Relaxed);
                    // One warning per outage, not one per retry.
                    if followed {
                        tracing::warn!(error = %e, "shared revocations: Redis link lost; serving with the local list, reconnecting");
                        warned = true;
                    } else if !warned {
                        tracing::warn!(error = %e, "shared revocations: Redis unavailable; serving with the local list, retrying");
                        warned = true;
                    }
                }
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }

    /// Subscribe, send the outbox, load every live key, heal, then apply
    /// announcements, PINGing and re-reading as it goes. `Ok` only when
    /// the list is gone.
    async fn follow_once<L: LocalList>(
        &self,
        list: &Weak<L>,
        followed: &mut bool,
    ) -> Result<(), SharedError> {
        let pubsub = within(CONNECT_TIMEOUT, self.client.get_async_pubsub()).await?;
        let (mut sink, mut messages) = pubsub.split();
        within(WRITE_TIMEOUT, sink.subscribe(CHANNEL)).await?;
        // A connection of this link's own for reads and heals: the shared
        // manager may sit on a dead socket it does not know about.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(WRITE_TIMEOUT));
        let mut conn = within(
            CONNECT_TIMEOUT,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await?;
        // Subscribed first, then the snapshot: nothing falls in between.
        // Queued removals go first so the snapshot does not bring them back.
        self.send_outbox(&mut conn).await?;
        let in_redis = load(&mut conn, list).await?;
        let healed = heal(&mut conn, list, &in_redis).await?;
        self.down.store(false, Ordering::Relaxed);
        *followed = true;
        tracing::info!(
            loaded = in_redis.len(),
            healed,
            "shared revocations: following Redis"
        );
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        let mut rescan =
            tokio::time::interval_at(tokio::time::Instant::now() + RESCAN_EVERY, RESCAN_EVERY);
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else {
                        return Err(SharedError::Redis(redis::RedisError::from((
                            redis::ErrorKind::Io,
                            "subscription ended",
                        ))));
                    };
                    let Some(rev) = list.upgrade() else { return Ok(()) };
                    if let Some(a) = msg.get_payload::<String>().ok().as_deref().and_then(parse) {
                        let _ = tokio::task::spawn_blocking(move || match a {
                            Announcement::Revoke(key, exp) => {
                                rev.apply_shared(&[(key, exp)]);
                            }
                            Announcement::Remove(key) => rev.remove_shared(key),
                        })
                        .await;
                    }
                }
                _ = ping.tick() => {
                    if list.strong_count() == 0 {
                        return Ok(());
                    }
                    within(PING_TIMEOUT, sink.ping::<redis::Value>()).await?;
                }
                _ = rescan.tick() => {
                    load(&mut conn, list).await?;
                }
                _ = self.wake.notified() => {
                    self.send_outbox(&mut conn).await?;
                }
            }
        }
    }

    /// Everything queued, in batches; what could not be sent goes back
    /// (unless a newer change to the same key was queued meanwhile).
    async fn send_outbox(&self, conn: &mut MultiplexedConnection) -> Result<(), SharedError> {
        let _one = self.writes.lock().await;
        let queued: Vec<(KeyHash, Pending)> = self.outbox().drain().collect();
        let now = unix_now();
        for (i, batch) in queued.chunks(BATCH).enumerate() {
            let mut pipe = redis::pipe();
            for (key, change) in batch {
                if !matches!(change, Pending::Revoke(exp) if *exp <= now) {
                    push(&mut pipe, *key, *change);
                }
            }
            if let Err(e) = timed(pipe.query_async::<()>(conn)).await {
                let mut outbox = self.outbox();
                for (key, change) in &queued[i * BATCH..] {
                    outbox.entry(*key).or_insert(*change);
                }
                return Err(e);
            }
        }
        if !queued.is_empty() {
            tracing::info!(
                sent = queued.len(),
                "shared revocations: queued changes written to Redis"
            );
        }
        Ok(())
    }
}

/// One change as Redis commands: the key (expiring with the entry) and the
/// announcement.
fn push(pipe: &mut redis::Pipeline, key: KeyHash, change: Pending) {
    match change {
        Pending::Revoke(exp) => pipe
            .cmd("SET")
            .arg(format!("{KEY_PREFIX}{key}"))
            .arg(exp)
            .arg("EXAT")
            .arg(exp)
            .ignore()
            .cmd("PUBLISH")
            .arg(CHANNEL)
            .arg(format!("+{key} {exp}"))
            .ignore(),
        Pending::Remove => pipe
            .cmd("DEL")
            .arg(format!("{KEY_PREFIX}{key}"))
            .ignore()
            .cmd("PUBLISH")
            .arg(CHANNEL)
            .arg(format!("-{key}"))
            .ignore(),
    };
}

/// Every live revocation in Redis into the local list (and its log);
/// returns what Redis holds.
async fn load<L: LocalList>(
    conn: &mut MultiplexedConnection,
    list: &Weak<L>,
) -> Result<HashMap<KeyHash, u64>, SharedError> {
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
    let mut found = HashMap::with_capacity(keys.len());
    for chunk in keys.chunks(BATCH) {
        let values: Vec<Option<u64>> = conn.mget(chunk).await?;
        for (k, exp) in chunk.iter().zip(values) {
            let hash = k.strip_prefix(KEY_PREFIX).and_then(KeyHash::from_hex);
            if let (Some(hash), Some(exp)) = (hash, exp) {
                found.insert(hash, exp);
            }
        }
    }
    if let Some(rev) = list.upgrade() {
        let entries: Vec<(KeyHash, u64)> = found.iter().map(|(k, e)| (*k, *e)).collect();
        let _ = tokio::task::spawn_blocking(move || rev.apply_shared(&entries)).await;
    }
    Ok(found)
}

/// The union heal: our live entries that Redis lacks (or holds with an
/// earlier expiry) written and announced. `NX`/`XX` so a concurrent
/// change by another gate is not overwritten by this older view.
async fn heal<L: LocalList>(
    conn: &mut MultiplexedConnection,
    list: &Weak<L>,
    in_redis: &HashMap<KeyHash, u64>,
) -> Result<usize, SharedError> {
    let Some(rev) = list.upgrade() else {
        return Ok(0);
    };
    let missing: Vec<(KeyHash, u64, bool)> = rev
        .snapshot(unix_now())
        .into_iter()
        .filter_map(|(k, exp)| match in_redis.get(&k) {
            None => Some((k, exp, false)),
            Some(theirs) if *theirs < exp => Some((k, exp, true)),
            Some(_) => None,
        })
        .collect();
    drop(rev);
    let mut healed = 0;
    for batch in missing.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for (key, exp, present) in batch {
            pipe.cmd("SET")
                .arg(format!("{KEY_PREFIX}{key}"))
                .arg(exp)
                .arg(if *present { "XX" } else { "NX" })
                .arg("EXAT")
                .arg(exp);
        }
        let set: Vec<Option<String>> = timed(pipe.query_async(conn)).await?;
        let mut announce = redis::pipe();
        for ((key, exp, _), ok) in batch.iter().zip(set) {
            if ok.is_some() {
                announce
                    .cmd("PUBLISH")
                    .arg(CHANNEL)
                    .arg(format!("+{key} {exp}"))
                    .ignore();
                healed += 1;
            }
        }
        timed(announce.query_async::<()>(conn)).await?;
    }
    Ok(healed)
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
    /// Redis failed the last check: the local limiter decides at once,
    /// and one request per [`PROBE_EVERY`] tries Redis again (else every
    /// request would wait out [`CHECK_TIMEOUT`] or a reconnect).
    degraded: AtomicBool,
    /// When the next probe may go, in ms since `epoch`.
    next_probe: AtomicU64,
    epoch: Instant,
}

const CHECK_TIMEOUT: Duration = Duration::from_millis(100);
const PROBE_EVERY: Duration = Duration::from_secs(1);

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
            next_probe: AtomicU64::new(0),
            epoch: Instant::now(),
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
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        if self.degraded.load(Ordering::Relaxed) {
            let at = self.next_probe.load(Ordering::Relaxed);
            let probe_ms = now_ms + PROBE_EVERY.as_millis() as u64;
            let this_one_probes = now_ms >= at
                && self
                    .next_probe
                    .compare_exchange(at, probe_ms, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok();
            if !this_one_probes {
                return local();
            }
        }
        match tokio::time::timeout(CHECK_TIMEOUT, self.check_redis(limit, key)).await {
            Ok(Ok(answer)) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("shared rate limits: Redis answers again");
                }
                answer
            }
            failed => {
                self.next_probe
                    .store(now_ms + PROBE_EVERY.as_millis() as u64, Ordering::Relaxed);
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
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(WRITE_TIMEOUT));
    let conn = client
        .get_connection_manager_lazy(config)
        .map_err(SharedError::Url)?;
    Ok((client, conn))
}

/// A Redis call bounded by [`WRITE_TIMEOUT`].
async fn timed<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, SharedError> {
    within(WRITE_TIMEOUT, call).await
}

async fn within<T>(
    limit: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, SharedError> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(SharedError::Timeout(limit)),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Announcement {
    Revoke(KeyHash, u64),
    Remove(KeyHash),
}

/// One announcement: `+<hash> <exp>` or `-<hash>`; anything else `None`.
fn parse(msg: &str) -> Option<Announcement> {
    if let Some(rest) = msg.strip_prefix('+') {
        let mut parts = rest.split(' ');
        let hash = parts.next().and_then(KeyHash::from_hex)?;
        let exp = parts.next().and_then(|e| e.parse::<u64>().ok())?;
        parts
            .next()
            .is_none()
            .then_some(Announcement::Revoke(hash, exp))
    } else {
        msg.strip_prefix('-')
            .and_then(KeyHash::from_hex)
            .map(Announcement::Remove)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_parse_and_garbage_is_ignored() {
        let key = KeyHash::of("jti-1");
        assert_eq!(
            parse(&format!("+{key} 42")),
            Some(Announcement::Revoke(key, 42))
        );
        assert_eq!(parse(&format!("-{key}")), Some(Announcement::Remove(key)));
        for junk in [
            "",
            "+",
            "+zz 5",
            &format!("+{key}"),
            &format!("+{key} soon"),
            &format!("+{key} 5 6"),
            "?x",
        ] {
            assert_eq!(parse(junk), None, "{junk}");
        }
    }
}
