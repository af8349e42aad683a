//! Rate limiting: named limits keyed by the client IP, a verified JWT claim
//! or a request header, enforced with governor's GCRA keyed limiter, with
//! bounded memory and the IETF `RateLimit` / `RateLimit-Policy` headers.
//!
//! # Keys
//! A [`Key`] is a small `Copy` value, never a heap string:
//! - `client_ip`: IPv4 as is; IPv6 grouped by its `/64` (or the configured
//!   prefix), so one host cannot dodge a per-IP limit by rotating the
//!   addresses of its subnet; IPv4-mapped IPv6 (`::ffff:1.2.3.4`) is the IPv4
//!   address it carries.
//! - `claim:NAME` and `header:NAME`: the value is hashed to a `u64` with
//!   SipHash under a per-process random key ([`std::hash::RandomState`]). Two
//!   different values that collide share a bucket; with 64 bits that takes
//!   about 4 billion live values for a 50 % chance, and a client cannot aim
//!   for a collision without knowing the process key.
//! - A `header:` key whose header is absent (or empty), and a `claim:` key
//!   whose claim is absent or not a string/number, fall back to the client
//!   IP key. Values and IPs are different [`Key`] variants, so a header that
//!   reads `1.2.3.4` never shares the bucket of the client 1.2.3.4.
//!
//! # Bounded memory
//! Each limit holds at most `max_keys` buckets (default 1 000 000). Once that
//! many keys are live, a key that has no bucket yet is counted in ONE shared
//! overflow bucket (same rate and burst) instead of growing the map: under a
//! flood of distinct keys, new clients share a bucket (and are limited
//! together) while clients that already have a bucket keep theirs. The
//! server calls [`RateLimit::housekeeping`] periodically (every 10–60 s):
//! it drops buckets that are indistinguishable from fresh ones
//! (`retain_recent`) and returns the memory (`shrink_to_fit`), after which
//! new clients get their own buckets again. The count is kept beside the map,
//! so the cap costs nothing on the path of a key that already has a bucket;
//! concurrent inserts may overshoot the cap by at most the number of threads.
//!
//! # Bucket map
//! The buckets live in our own map rather than governor's dashmap store, so
//! that a check costs one hash, one shard read lock and (almost always) one
//! cache line: each slot holds the key and governor's state (its GCRA
//! `InMemoryState`, one atomic) side by side, 32 bytes aligned to 32. With
//! 1 M live keys the table is far larger than the CPU caches, so the cache
//! (and TLB) misses per check decide the cost; hashbrown under dashmap takes
//! two (control bytes, then the entry). Shards as dashmap sizes them (4 per
//! core, a power of two), each a linear-probing table at most 3/4 full,
//! doubled when it would pass that; housekeeping removes buckets by
//! rebuilding a shard's table (`retain_recent`, same size) or rebuilding it
//! smaller (`shrink_to_fit`), one shard at a time, so it briefly needs one
//! shard's table twice. Tables of 4 MiB and more are advised to the kernel
//! as transparent huge pages (`hugepages.rs`): at 1 M keys most of a
//! check's time was TLB misses.
//!
//! The hash is two rounds of a multiply-and-fold (the high and low halves
//! of a 64×64→128-bit product, XORed) over the key's words, keyed by three
//! per-process random seeds (drawn from [`RandomState`]). It is not SipHash:
//! `Value` keys are already SipHash outputs under a secret key, and IP keys
//! need only be spread well, but IPs are chosen by clients (an IPv6 client
//! holds whole /48s), and linear probing degrades badly when many keys land
//! on one slot. The seeds are why a client cannot aim keys at one slot
//! offline; learning them would take timing measurements through the proxy.
//! The damage is bounded anyway: `max_keys` caps the keys of each limit.
//!
//! # Clock
//! Production uses governor's default clock, [`QuantaClock`](governor::clock::QuantaClock)
//! (a TSC read scaled to nanoseconds, cheaper than `Instant::now`; quanta
//! falls back to the OS monotonic clock where the TSC is unreliable). Tests
//! use [`FakeRelativeClock`](governor::clock::FakeRelativeClock). The clock is
//! read once per check, and once more on a refusal to compute the wait.
//!
//! # Headers
//! Per draft-ietf-httpapi-ratelimit-headers-09 (March 2025), structured-field
//! form: `RateLimit-Policy` is a List of Items, each a String naming the
//! policy with parameters `q` (quota) and `w` (window, seconds); `RateLimit`
//! names the policy with `r` (remaining quota units) and `t` (seconds until
//! the quota resets). Example for `per_ip: { rate: 100/s }`:
//!
//! ```text
//! RateLimit-Policy: "per_ip";q=100;w=1
//! RateLimit: "per_ip";r=0;t=1
//! Retry-After: 1
//! ```
//!
//! Mapping from GCRA: `q` is the configured count and `w` its period (the
//! `rate:` the operator wrote); `r` is the burst capacity left right now, so
//! with `burst > count` it can exceed `q` (it is the truthful number of
//! requests that would pass now). On an allowed response `t` is the time
//! until the bucket is full again (rounded up); on a refusal `t` equals
//! `Retry-After`, as the draft asks ("the reset keyword value SHOULD
//! reference the same point in time as the Retry-After field value").
//! `Retry-After` is the wait in whole seconds rounded up, never below 1.
//!
//! # Several limits on one request
//! [`check_all`] checks the limits in the given order and stops at the first
//! refusal. governor's `check` consumes a cell when it allows, so the limits
//! before the refusing one have been charged for a request that is refused;
//! that is acceptable and what most proxies do. Limits after the refusing one
//! are not checked, so they are not charged; the refusal (and its
//! `Retry-After`) is the first refusing limit's. A later limit may still
//! refuse when the client comes back, with its own `Retry-After`.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use crate::forwarding::canonical;

/// `RateLimit` response header (draft-ietf-httpapi-ratelimit-headers-09).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `RateLimit-Policy` response header (draft-ietf-httpapi-ratelimit-headers-09).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

pub const DEFAULT_MAX_KEYS: usize = 1_000_000;
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// What a limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// `key: client_ip` — the client IP as resolved through `trusted_proxies`.
    ClientIp,
    /// `key: "claim:NAME"` — a verified JWT claim; checked after the JWT.
    Claim(Box<str>),
    /// `key: "header:NAME"` — a request header; absent → the client IP.
    Header(HeaderName),
}

impl KeyKind {
    /// Whether the key needs verified claims, i.e. the limit runs after the
    /// JWT check rather than before it.
    pub fn needs_claims(&self) -> bool {
        matches!(self, KeyKind::Claim(_))
    }
}

/// A bucket's key. Cheap to build and copy: no heap allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    /// An IPv4 client.
    V4(u32),
    /// An IPv6 client's prefix (high and low 64 bits, masked).
    V6(u64, u64),
    /// A claim or header value, hashed (see the module docs).
    Value(u64),
}

/// A claim value as the JWT module sees it; only strings and numbers key a
/// limit. Numbers that are equal key the same bucket whatever their JSON
/// form (`42`, `42.0`); a number and a string never share one (`42` ≠ `"42"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClaimValue<'a> {
    Str(&'a str),
    Int(i64),
    UInt(u64),
    Float(f64),
}

/// The parameters of one named limit, as the config crate hands them over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitParams {
    pub key: KeyKind,
    /// `count` requests per `per` (the `rate:`).
    pub count: u32,
    pub per: Duration,
    /// Largest burst; `None` = `count`.
    pub burst: Option<u32>,
    /// Add `RateLimit-Policy`/`RateLimit` to allowed responses too.
    pub headers: bool,
    pub max_keys: usize,
    /// IPv6 clients are keyed by this prefix length (0..=128).
    pub ipv6_prefix: u8,
    /// `shared: true`: enforced across replicas (the server checks it in
    /// Redis with [`RateLimit::shared_key`]; this limiter is the fallback).
    pub shared: bool,
}

impl LimitParams {
    /// `count` per `per` with the defaults: burst = count, no headers on
    /// allowed responses, 1 M keys, IPv6 /64.
    pub fn new(key: KeyKind, count: u32, per: Duration) -> Self {
        LimitParams {
            key,
            count,
            per,
            burst: None,
            headers: false,
            max_keys: DEFAULT_MAX_KEYS,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            shared: false,
        }
    }
}

/// Why a limit could not be built (a config error, reported at load time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitError {
    ZeroCount,
    ZeroPeriod,
    /// `per / count` is below one nanosecond.
    RateTooHigh,
    ZeroBurst,
    ZeroMaxKeys,
    Ipv6Prefix(u8),
    /// The name has a character outside printable ASCII, so it cannot be a
    /// structured-field String in the headers.
    BadName,
}

impl fmt::Display for RateLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateLimitError::ZeroCount => f.write_str("rate count must be at least 1"),
            RateLimitError::ZeroPeriod => f.write_str("rate period must be longer than zero"),
            RateLimitError::RateTooHigh => f.write_str("rate is above one request per nanosecond"),
            RateLimitError::ZeroBurst => f.write_str("burst must be at least 1"),
            RateLimitError::ZeroMaxKeys => f.write_str("max_keys must be at least 1"),
            RateLimitError::Ipv6Prefix(p) => {
                write!(f, "ipv6 prefix length {p} is not in 0..=128")
            }
            RateLimitError::BadName => {
                f.write_str("limit name must be printable ASCII to appear in RateLimit headers")
            }
        }
    }
}

impl std::error::Error for RateLimitError {}

/// A request that passed one limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// Requests that would pass right now after this one.
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset: Duration,
}

/// A request that one limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Time until a request under this key can pass again.
    pub wait: Duration,
}

/// The bucket map plus the overflow bucket, shared between governor's
/// limiter (which owns a [`Store`]) and [`RateLimit`] (for metrics).
struct Shared {
    map: BucketMap,
    /// Live keys in `map`: raised on insert, recounted by housekeeping.
    live: AtomicUsize,
    max_keys: usize,
    overflow: InMemoryState,
    overflow_checks: AtomicU64,
}

/// governor state store: our bucket map with a cap on the number of keys.
struct Store(Arc<Shared>);

impl StateStore for Store {
    type Key = Key;

    fn measure_and_replace<T, F, E>(&self, key: &Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let s = &*self.0;
        let hash = s.map.seeds.hash(key);
        let shard = s.map.shard(hash);
        // Fast path: the key has a bucket. One hash, one read lock, one
        // probe (usually one cache line), then governor's CAS on the state
        // stored in that same line. The read guard is dropped at the end of
        // this block, before the write lock below.
        {
            let table = read(shard);
            if let Some(slot) = table.find(key, hash) {
                return slot.state.measure_and_replace(&NotKeyed::NonKey, f);
            }
        }
        if s.live.load(Ordering::Relaxed) >= s.max_keys {
            s.overflow_checks.fetch_add(1, Ordering::Relaxed);
            return s.overflow.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let mut table = write(shard);
        let (slot, inserted) = table.find_or_insert(*key, hash, s.map.seeds);
        if inserted {
            s.live.fetch_add(1, Ordering::Relaxed);
        }
        slot.state.measure_and_replace(&NotKeyed::NonKey, f)
    }
}

impl ShrinkableKeyedStateStore<Key> for Store {
    fn retain_recent(&self, drop_below: Nanos) {
        let s = &*self.0;
        let drop_below = u64::from(drop_below);
        let mut live = 0;
        for shard in s.map.shards.iter() {
            let mut table = write(shard);
            // Same rule as governor's own stores: a bucket whose theoretical
            // arrival time is at or before `drop_below` is a fresh bucket.
            let slots = table.slots.len();
            table.rebuild(slots, s.map.seeds, |state| state_nanos(state) > drop_below);
            live += table.len;
        }
        s.live.store(live, Ordering::Relaxed);
    }

    fn shrink_to_fit(&self) {
        let s = &*self.0;
        for shard in s.map.shards.iter() {
            let mut table = write(shard);
            let slots = Table::slots_for(table.len);
            if slots < table.slots.len() {
                table.rebuild(slots, s.map.seeds, |_| true);
            }
        }
    }

    fn len(&self) -> usize {
        self.0.map.shards.iter().map(|s| read(s).len).sum()
    }

    fn is_empty(&self) -> bool {
        self.0.map.shards.iter().all(|s| read(s).len == 0)
    }
}

/// governor's stored value (the theoretical arrival time, 0 = fresh),
/// read without changing it.
fn state_nanos(state: &InMemoryState) -> u64 {
    let read = state.measure_and_replace(&NotKeyed::NonKey, |prev| {
        Err::<((), Nanos), u64>(prev.map_or(0, u64::from))
    });
    match read {
        Ok(()) => 0,
        Err(nanos) => nanos,
    }
}

/// Per-process random seeds of the bucket map's hash (see the module docs).
#[derive(Clone, Copy)]
struct Seeds([u64; 3]);

impl Seeds {
    fn get() -> Seeds {
        static SEEDS: OnceLock<Seeds> = OnceLock::new();
        *SEEDS.get_or_init(|| {
            let h = value_hasher();
            Seeds([0u8, 1, 2].map(|i| h.hash_one(("ratelimit map seed", i))))
        })
    }

    /// Two rounds of a keyed multiply-and-fold over the key's words.
    #[inline]
    fn hash(self, key: &Key) -> u64 {
        let [s0, s1, s2] = self.0;
        let (tag, a, b) = match *key {
            Key::V4(ip) => (1, u64::from(ip), 0),
            Key::V6(hi, lo) => (2, hi, lo),
            Key::Value(v) => (3, v, 0),
        };
        fold_mul(fold_mul(a ^ s0, b ^ s1) ^ tag, s2)
    }
}

/// The 128-bit product of `a` and `b`, high half XOR low half.
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The buckets: a fixed number of shards, each an open-addressing table
/// behind a read/write lock. Bits 32.. of the hash pick the shard, the low
/// bits the slot.
struct BucketMap {
    shards: Box<[Shard]>,
    shard_mask: usize,
    seeds: Seeds,
}

/// One shard on its own cache lines, so that two shards' locks never share
/// one.
#[repr(align(128))]
struct Shard(RwLock<Table>);

impl BucketMap {
    fn new() -> Self {
        // As many shards as dashmap would use: 4 per core, a power of two.
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let n = (cores * 4).next_power_of_two().min(1024);
        BucketMap {
            shards: (0..n)
                .map(|_| Shard(RwLock::new(Table::with_slots(MIN_SLOTS))))
                .collect(),
            shard_mask: n - 1,
            seeds: Seeds::get(),
        }
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[(hash >> 32) as usize & self.shard_mask]
    }

    fn capacity(&self) -> usize {
        self.shards.iter().map(|s| read(s).slots.len()).sum()
    }
}

// Nothing panics while a shard is locked (short of allocation failure,
// which aborts), so a poisoned lock still holds a consistent table.
fn read(shard: &Shard) -> RwLockReadGuard<'_, Table> {
    shard.0.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(shard: &Shard) -> RwLockWriteGuard<'_, Table> {
    shard.0.write().unwrap_or_else(PoisonError::into_inner)
}

const MIN_SLOTS: usize = 8;

/// One bucket: the key and governor's state side by side, 32 bytes aligned
/// to 32, so a lookup that finds its key at the first probe touches one
/// cache line for the key and the state.
#[derive(Default)]
#[repr(align(32))]
struct Slot {
    key: Option<Key>,
    state: InMemoryState,
}

/// Linear probing over a power-of-two array of slots, at most 3/4 full (so
/// a probe always ends at an empty slot). Removal is by rebuilding
/// (housekeeping only), so there are no tombstones.
struct Table {
    slots: Box<[Slot]>,
    len: usize,
}

impl Table {
    fn with_slots(n: usize) -> Self {
        debug_assert!(n.is_power_of_two() && n >= MIN_SLOTS);
        let mut slots = Vec::with_capacity(n);
        // Before the first write, so the first touches fault in huge pages.
        crate::hugepages::advise(&slots);
        slots.resize_with(n, Slot::default);
        Table {
            slots: slots.into_boxed_slice(),
            len: 0,
        }
    }

    /// The fewest slots that hold `len` keys within the load limit.
    fn slots_for(len: usize) -> usize {
        let mut n = MIN_SLOTS;
        while len > n / 4 * 3 {
            n *= 2;
        }
        n
    }

    #[inline]
    fn find(&self, key: &Key, hash: u64) -> Option<&Slot> {
        self.find_index(key, hash).map(|i| &self.slots[i])
    }

    fn find_index(&self, key: &Key, hash: u64) -> Option<usize> {
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            match &self.slots[i].key {
                None => return None,
                Some(k) if k == key => return Some(i),
                Some(_) => i = (i + 1) & mask,
            }
        }
    }

    /// The slot of `key`, inserting a fresh bucket when there is none
    /// (`true`), growing first if that would pass the load limit.
    fn find_or_insert(&mut self, key: Key, hash: u64, seeds: Seeds) -> (&Slot, bool) {
        if let Some(i) = self.find_index(&key, hash) {
            return (&self.slots[i], false);
        }
        if Table::slots_for(self.len + 1) > self.slots.len() {
            let slots = self.slots.len() * 2;
            self.rebuild(slots, seeds, |_| true);
        }
        let i = self.place(
            Slot {
                key: Some(key),
                state: InMemoryState::default(),
            },
            hash,
        );
        self.len += 1;
        (&self.slots[i], true)
    }

    /// Puts a slot whose key is absent into the first empty slot of its
    /// probe sequence; returns the index. `len` is the caller's.
    fn place(&mut self, slot: Slot, hash: u64) -> usize {
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        while self.slots[i].key.is_some() {
            i = (i + 1) & mask;
        }
        self.slots[i] = slot;
        i
    }

    /// Moves the buckets that `keep` accepts into a new array of `slots`
    /// slots (the state moves with its key).
    fn rebuild(&mut self, slots: usize, seeds: Seeds, keep: impl Fn(&InMemoryState) -> bool) {
        let old = std::mem::replace(self, Table::with_slots(slots));
        for slot in old.slots.into_vec() {
            if let Some(key) = &slot.key {
                if keep(&slot.state) {
                    let hash = seeds.hash(key);
                    self.place(slot, hash);
                    self.len += 1;
                }
            }
        }
        debug_assert!(Table::slots_for(self.len) <= self.slots.len());
    }
}

/// One named limit with its buckets. Routes that name the same limit share
/// one `RateLimit` (wrap it in an `Arc`); hot reload can keep it when
/// [`RateLimit::name`] and [`RateLimit::params`] are unchanged.
pub struct RateLimit<C: Clock = DefaultClock> {
    name: Box<str>,
    params: LimitParams,
    burst: u32,
    interval: Duration,
    /// The name as a structured-field String, quotes included.
    sf_name: Box<str>,
    policy: HeaderValue,
    limiter: RateLimiter<Key, Store, C, StateInformationMiddleware>,
    shared: Arc<Shared>,
}

impl<C: Clock> fmt::Debug for RateLimit<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("name", &self.name)
            .field("params", &self.params)
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

impl RateLimit<DefaultClock> {
    /// A limit on governor's default (quanta) clock.
    pub fn new(name: &str, params: LimitParams) -> Result<Self, RateLimitError> {
        Self::with_clock(name, params, DefaultClock::default())
    }
}

impl<C: Clock> RateLimit<C> {
    pub fn with_clock(name: &str, params: LimitParams, clock: C) -> Result<Self, RateLimitError> {
        if params.count == 0 {
            return Err(RateLimitError::ZeroCount);
        }
        if params.per.is_zero() {
            return Err(RateLimitError::ZeroPeriod);
        }
        if params.max_keys == 0 {
            return Err(RateLimitError::ZeroMaxKeys);
        }
        if params.ipv6_prefix > 128 {
            return Err(RateLimitError::Ipv6Prefix(params.ipv6_prefix));
        }
        let burst = params.burst.unwrap_or(params.count);
        let burst_nz = std::num::NonZeroU32::new(burst).ok_or(RateLimitError::ZeroBurst)?;
        let interval = params.per / params.count;
        let quota = Quota::with_period(interval)
            .ok_or(RateLimitError::RateTooHigh)?
            .allow_burst(burst_nz);
        let sf_name = sf_string(name).ok_or(RateLimitError::BadName)?;
        let window = whole_seconds_up(params.per).max(1);
        let policy = header_value(format!("{sf_name};q={};w={window}", params.count))
            .ok_or(RateLimitError::BadName)?;
        let shared = Arc::new(Shared {
            map: BucketMap::new(),
            live: AtomicUsize::new(0),
            max_keys: params.max_keys,
            overflow: InMemoryState::default(),
            overflow_checks: AtomicU64::new(0),
        });
        let limiter = RateLimiter::new(quota, Store(Arc::clone(&shared)), clock);
        Ok(RateLimit {
            name: name.into(),
            params,
            burst,
            interval,
            sf_name: sf_name.into_boxed_str(),
            policy,
            limiter,
            shared,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn params(&self) -> &LimitParams {
        &self.params
    }

    /// Whether allowed responses carry the RateLimit headers too.
    pub fn headers(&self) -> bool {
        self.params.headers
    }

    /// Whether this limit runs after the JWT check (a `claim:` key).
    pub fn needs_claims(&self) -> bool {
        self.params.key.needs_claims()
    }

    /// Time between two requests at the configured rate (GCRA's emission
    /// interval).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Largest burst (`burst`, or the count).
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The key of a request as every replica computes it, for a store they
    /// share: the same buckets as [`RateLimit::key_for`], but header and
    /// claim values are SHA-256 hashed (first 16 bytes, hex) instead of
    /// SipHashed under this process's random key, so two gates agree and
    /// the value itself is never stored.
    pub fn shared_key<'c>(
        &self,
        client_ip: IpAddr,
        headers: &HeaderMap,
        claims: impl FnOnce(&str) -> Option<ClaimValue<'c>>,
    ) -> String {
        let ip = |ip| match ip_key(ip, self.params.ipv6_prefix) {
            Key::V4(v) => format!("4:{v:08x}"),
            Key::V6(hi, lo) => format!("6:{hi:016x}{lo:016x}"),
            Key::Value(v) => format!("v:{v:016x}"),
        };
        let digest = |tag: &str, bytes: &[u8]| {
            use sha2::{Digest, Sha256};
            let d = Sha256::new()
                .chain_update(tag)
                .chain_update(bytes)
                .finalize();
            let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
            format!("{tag}{hex}")
        };
        match &self.params.key {
            KeyKind::ClientIp => ip(client_ip),
            KeyKind::Claim(name) => match claims(name) {
                Some(ClaimValue::Str(s)) => digest("c:s:", s.as_bytes()),
                Some(ClaimValue::Int(i)) => digest("c:n:", i.to_string().as_bytes()),
                Some(ClaimValue::UInt(u)) => digest("c:n:", u.to_string().as_bytes()),
                Some(ClaimValue::Float(f))
                    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e38 =>
                {
                    digest("c:n:", (f as i128).to_string().as_bytes())
                }
                Some(ClaimValue::Float(f)) => digest("c:f:", &f.to_bits().to_be_bytes()),
                None => ip(client_ip),
            },
            KeyKind::Header(name) => match headers.get(name) {
                Some(value) if !value.is_empty() => digest("h:", value.as_bytes()),
                _ => ip(client_ip),
            },
        }
    }

    /// This limit's key for a request; see [`key_for`].
    pub fn key_for<'c>(
        &self,
        client_ip: IpAddr,
        headers: &HeaderMap,
        claims: impl FnOnce(&str) -> Option<ClaimValue<'c>>,
    ) -> Key {
        key_for(
            &self.params.key,
            self.params.ipv6_prefix,
            client_ip,
            headers,
            claims,
        )
    }

    /// Counts one request under `key`: allowed (one cell consumed) or
    /// refused with the time to wait (nothing consumed).
    pub fn check(&self, key: &Key) -> Result<Allowed, Limited> {
        match self.limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = self.burst.saturating_sub(remaining);
                let reset = self.interval.checked_mul(used).unwrap_or(Duration::MAX);
                Ok(Allowed { remaining, reset })
            }
            Err(not_until) => Err(Limited {
                wait: not_until.wait_time_from(self.limiter.clock().now()),
            }),
        }
    }

    /// For a periodic task (every 10–60 s): forgets buckets that are full
    /// again (idle at least one full refill) and returns their memory. Locks
    /// one shard at a time; O(live keys).
    pub fn housekeeping(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Live buckets (the overflow bucket not included).
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.limiter.is_empty()
    }

    /// Bucket slots allocated, for metrics (and the shrink test).
    pub fn capacity(&self) -> usize {
        self.shared.map.capacity()
    }

    /// Checks that went to the shared overflow bucket since start, for metrics.
    pub fn overflow_checks(&self) -> u64 {
        self.shared.overflow_checks.load(Ordering::Relaxed)
    }

    /// `RateLimit-Policy` value, e.g. `"per_ip";q=100;w=1`.
    pub fn policy_header(&self) -> HeaderValue {
        self.policy.clone()
    }

    /// `RateLimit` value for an allowed request, e.g. `"per_ip";r=99;t=1`.
    pub fn allowed_header(&self, allowed: &Allowed) -> HeaderValue {
        self.ratelimit_value(allowed.remaining, whole_seconds_up(allowed.reset))
    }

    /// `RateLimit-Policy` and `RateLimit` for an allowed request, appended
    /// (several limits each add their own line).
    pub fn append_allowed_headers(&self, allowed: &Allowed, out: &mut HeaderMap) {
        out.append(RATELIMIT_POLICY.clone(), self.policy_header());
        out.append(RATELIMIT.clone(), self.allowed_header(allowed));
    }

    /// `Retry-After`, `RateLimit-Policy` and `RateLimit` for a 429.
    pub fn limited_headers(&self, limited: &Limited) -> [(HeaderName, HeaderValue); 3] {
        let secs = retry_after_secs(limited.wait);
        [
            (RETRY_AFTER, HeaderValue::from(secs)),
            (RATELIMIT_POLICY.clone(), self.policy_header()),
            (RATELIMIT.clone(), self.ratelimit_value(0, secs)),
        ]
    }

    fn ratelimit_value(&self, remaining: u32, reset_secs: u64) -> HeaderValue {
        let text = format!("{};r={remaining};t={reset_secs}", self.sf_name);
        // The name was checked at construction; digits are always valid.
        header_value(text).unwrap_or_else(|| HeaderValue::from_static(""))
    }
}

/// The first refusal among several limits.
#[derive(Debug)]
pub struct Refused<'l, C: Clock = DefaultClock> {
    pub limit: &'l RateLimit<C>,
    pub limited: Limited,
}

impl<C: Clock> Refused<'_, C> {
    /// `Retry-After`, `RateLimit-Policy` and `RateLimit` for the 429.
    pub fn headers(&self) -> [(HeaderName, HeaderValue); 3] {
        self.limit.limited_headers(&self.limited)
    }
}

/// Checks every limit of a route, in order, each with its key; all must
/// allow. Stops at the first refusal and returns it; earlier limits have
/// already consumed a cell, later ones are not charged (module docs). For
/// each allowing limit with `headers: true`, appends its RateLimit headers to
/// `allowed_headers` (meant for the response; drop them on a refusal).
///
/// The server calls this twice per request: with the IP/header limits before
/// the JWT check and with the claim limits after it.
pub fn check_all<'l, C: Clock + 'l>(
    checks: impl IntoIterator<Item = (&'l RateLimit<C>, Key)>,
    allowed_headers: &mut HeaderMap,
) -> Result<(), Refused<'l, C>> {
    for (limit, key) in checks {
        match limit.check(&key) {
            Ok(allowed) => {
                if limit.headers() {
                    limit.append_allowed_headers(&allowed, allowed_headers);
                }
            }
            Err(limited) => return Err(Refused { limit, limited }),
        }
    }
    Ok(())
}

/// The key of a request under `kind`. `claims` looks a verified claim up by
/// name (pass `|_| None` before the JWT check); it is called only for
/// `claim:` keys. Absent header or claim → the client IP key.
pub fn key_for<'c>(
    kind: &KeyKind,
    ipv6_prefix: u8,
    client_ip: IpAddr,
    headers: &HeaderMap,
    claims: impl FnOnce(&str) -> Option<ClaimValue<'c>>,
) -> Key {
    match kind {
        KeyKind::ClientIp => ip_key(client_ip, ipv6_prefix),
        KeyKind::Claim(name) => match claims(name) {
            Some(value) => Key::Value(claim_hash(value)),
            None => ip_key(client_ip, ipv6_prefix),
        },
        KeyKind::Header(name) => match headers.get(name) {
            Some(value) if !value.is_empty() => {
                Key::Value(value_hasher().hash_one((TAG_HEADER, value.as_bytes())))
            }
            _ => ip_key(client_ip, ipv6_prefix),
        },
    }
}

/// The key of a client IP: IPv4 as is (also when IPv4-mapped), IPv6 masked
/// to its first `ipv6_prefix` bits (clamped to 128).
pub fn ip_key(ip: IpAddr, ipv6_prefix: u8) -> Key {
    match canonical(ip) {
        IpAddr::V4(v4) => Key::V4(u32::from(v4)),
        IpAddr::V6(v6) => {
            let prefix = u32::from(ipv6_prefix.min(128));
            let mask = match prefix {
                0 => 0,
                p => u128::MAX << (128 - p),
            };
            let bits = u128::from(v6) & mask;
            Key::V6((bits >> 64) as u64, bits as u64)
        }
    }
}

/// `Retry-After` seconds for a wait: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    whole_seconds_up(wait).max(1)
}

const TAG_STR: u8 = 0;
const TAG_NUM: u8 = 1;
const TAG_FLOAT: u8 = 2;
const TAG_HEADER: u8 = 3;

/// Process-wide random key for hashing claim and header values.
fn value_hasher() -> &'static RandomState {
    static HASHER: OnceLock<RandomState> = OnceLock::new();
    HASHER.get_or_init(RandomState::new)
}

fn claim_hash(value: ClaimValue<'_>) -> u64 {
    let h = value_hasher();
    match value {
        ClaimValue::Str(s) => h.hash_one((TAG_STR, s.as_bytes())),
        ClaimValue::Int(i) => h.hash_one((TAG_NUM, i128::from(i))),
        ClaimValue::UInt(u) => h.hash_one((TAG_NUM, i128::from(u))),
        ClaimValue::Float(f) => {
            // An integral float is the integer it spells (42.0 == 42).
            if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e38 {
                h.hash_one((TAG_NUM, f as i128))
            } else {
                h.hash_one((TAG_FLOAT, f.to_bits()))
            }
        }
    }
}

fn whole_seconds_up(d: Duration) -> u64 {
    let secs = d.as_secs();
    if d.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

/// A structured-field String (RFC 8941 §3.3.3): printable ASCII, with `"`
/// and `\` escaped; `None` for anything else.
fn sf_string(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => return None,
        }
    }
    out.push('"');
    Some(out)
}

fn header_value(text: String) -> Option<HeaderValue> {
    HeaderValue::try_from(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limit(name: &str, params: LimitParams) -> (RateLimit<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let l = RateLimit::with_clock(name, params, clock.clone()).unwrap();
        (l, clock)
    }

    fn per_sec(count: u32) -> LimitParams {
        LimitParams::new(KeyKind::ClientIp, count, Duration::from_secs(1))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ipk(s: &str) -> Key {
        ip_key(ip(s), DEFAULT_IPV6_PREFIX)
    }

    #[test]
    fn shared_keys_are_stable_and_hide_values() {
        let none = HeaderMap::new();
        let (by_ip, _) = limit("a", per_sec(5));
        assert_eq!(
            by_ip.shared_key(ip("10.0.0.1"), &none, |_| None),
            "4:0a000001"
        );
        assert_eq!(
            by_ip.shared_key(ip("2001:db8::1"), &none, |_| None),
            by_ip.shared_key(ip("2001:db8::ffff"), &none, |_| None),
            "one /64, one key"
        );
        let h = HeaderName::from_static("x-api-key");
        let (by_header, _) = limit(
            "b",
            LimitParams::new(KeyKind::Header(h.clone()), 5, Duration::from_secs(1)),
        );
        let mut with = HeaderMap::new();
        with.insert(&h, HeaderValue::from_static("secret-key-1"));
        let k = by_header.shared_key(ip("10.0.0.1"), &with, |_| None);
        assert!(
            k.starts_with("h:") && k.len() == 34 && !k.contains("secret"),
            "{k}"
        );
        // The same in another limiter (another process would agree too:
        // nothing random goes in).
        let (again, _) = limit(
            "c",
            LimitParams::new(KeyKind::Header(h), 5, Duration::from_secs(1)),
        );
        assert_eq!(again.shared_key(ip("10.9.9.9"), &with, |_| None), k);
        assert_eq!(
            by_header.shared_key(ip("10.0.0.1"), &none, |_| None),
            "4:0a000001"
        );
        let (by_claim, _) = limit(
            "d",
            LimitParams::new(KeyKind::Claim("sub".into()), 5, Duration::from_secs(1)),
        );
        let n42 = by_claim.shared_key(ip("10.0.0.1"), &none, |_| Some(ClaimValue::Int(42)));
        let f42 = by_claim.shared_key(ip("10.0.0.1"), &none, |_| Some(ClaimValue::Float(42.0)));
        let s42 = by_claim.shared_key(ip("10.0.0.1"), &none, |_| Some(ClaimValue::Str("42")));
        assert_eq!(n42, f42);
        assert_ne!(n42, s42);
    }

    #[test]
    fn exact_burst_then_refused() {
        let mut p = per_sec(5);
        p.burst = Some(8);
        let (l, _clock) = limit("per_ip", p);
        let k = ipk("1.2.3.4");
        for i in 0..8 {
            let a = l.check(&k).unwrap();
            assert_eq!(a.remaining, 7 - i);
        }
        let refused = l.check(&k).unwrap_err();
        assert_eq!(refused.wait, Duration::from_millis(200));
        // A refusal consumes nothing: still refused, same wait.
        assert_eq!(l.check(&k).unwrap_err().wait, Duration::from_millis(200));
        // Other clients are untouched.
        assert!(l.check(&ipk("1.2.3.5")).is_ok());
    }

    #[test]
    fn burst_defaults_to_count_and_refills_at_rate() {
        let (l, clock) = limit("per_ip", per_sec(5));
        let k = ipk("1.2.3.4");
        for _ in 0..5 {
            l.check(&k).unwrap();
        }
        assert!(l.check(&k).is_err());
        clock.advance(Duration::from_millis(199));
        assert_eq!(l.check(&k).unwrap_err().wait, Duration::from_millis(1));
        clock.advance(Duration::from_millis(1));
        assert_eq!(l.check(&k).unwrap().remaining, 0);
        assert!(l.check(&k).is_err());
        // A full period refills the whole burst.
        clock.advance(Duration::from_secs(1));
        for _ in 0..5 {
            l.check(&k).unwrap();
        }
        assert!(l.check(&k).is_err());
    }

    #[test]
    fn allowed_reset_is_time_to_full() {
        let (l, clock) = limit(
            "per_key",
            LimitParams::new(KeyKind::ClientIp, 10, Duration::from_secs(60)),
        );
        let k = ipk("1.2.3.4");
        let a = l.check(&k).unwrap();
        assert_eq!(
            a,
            Allowed {
                remaining: 9,
                reset: Duration::from_secs(6)
            }
        );
        let a = l.check(&k).unwrap();
        assert_eq!(
            a,
            Allowed {
                remaining: 8,
                reset: Duration::from_secs(12)
            }
        );
        clock.advance(Duration::from_secs(12));
        let a = l.check(&k).unwrap();
        assert_eq!(
            a,
            Allowed {
                remaining: 9,
                reset: Duration::from_secs(6)
            }
        );
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1200)), 2);
        assert_eq!(retry_after_secs(Duration::new(2, 1)), 3);
        // Through a limit: one request per 1.2 s.
        let p = LimitParams::new(KeyKind::ClientIp, 1, Duration::from_millis(1200));
        let (l, clock) = limit("slow", p);
        let k = ipk("1.2.3.4");
        l.check(&k).unwrap();
        let refused = l.check(&k).unwrap_err();
        assert_eq!(refused.wait, Duration::from_millis(1200));
        let h = l.limited_headers(&refused);
        assert_eq!(h[0].1, "2");
        clock.advance(Duration::from_millis(1100));
        let h = l.limited_headers(&l.check(&k).unwrap_err());
        assert_eq!(h[0].1, "1");
        assert_eq!(h[2].1, "\"slow\";r=0;t=1");
    }

    #[test]
    fn header_formats() {
        let mut p = per_sec(100);
        p.burst = Some(200);
        let (l, _clock) = limit("per_ip", p);
        assert_eq!(l.policy_header(), "\"per_ip\";q=100;w=1");
        let k = ipk("1.2.3.4");
        let a = l.check(&k).unwrap();
        assert_eq!(l.allowed_header(&a), "\"per_ip\";r=199;t=1");
        for _ in 0..199 {
            l.check(&k).unwrap();
        }
        let refused = l.check(&k).unwrap_err();
        let h = l.limited_headers(&refused);
        assert_eq!(h[0].0, RETRY_AFTER);
        assert_eq!(h[0].1, "1");
        assert_eq!(h[1].0, "ratelimit-policy");
        assert_eq!(h[1].1, "\"per_ip\";q=100;w=1");
        assert_eq!(h[2].0, "ratelimit");
        assert_eq!(h[2].1, "\"per_ip\";r=0;t=1");

        let (l, _clock) = limit(
            "per_key",
            LimitParams::new(KeyKind::ClientIp, 1000, Duration::from_secs(60)),
        );
        assert_eq!(l.policy_header(), "\"per_key\";q=1000;w=60");
        let a = l.check(&k).unwrap();
        // 60 ms to refill the one used cell → rounded up to 1 s.
        assert_eq!(l.allowed_header(&a), "\"per_key\";r=999;t=1");

        let (l, _clock) = limit("a\"b\\c d", per_sec(3));
        assert_eq!(l.policy_header(), "\"a\\\"b\\\\c d\";q=3;w=1");
        let mut out = HeaderMap::new();
        l.append_allowed_headers(&l.check(&k).unwrap(), &mut out);
        assert_eq!(out[&RATELIMIT_POLICY], "\"a\\\"b\\\\c d\";q=3;w=1");
        assert_eq!(out[&RATELIMIT], "\"a\\\"b\\\\c d\";r=2;t=1");
    }

    #[test]
    fn bad_params_are_errors_not_panics() {
        let c = FakeRelativeClock::default;
        let mk = |name: &str, p: LimitParams| RateLimit::with_clock(name, p, c()).map(|_| ());
        assert_eq!(mk("x", per_sec(0)), Err(RateLimitError::ZeroCount));
        let p = LimitParams::new(KeyKind::ClientIp, 1, Duration::ZERO);
        assert_eq!(mk("x", p), Err(RateLimitError::ZeroPeriod));
        let p = LimitParams::new(KeyKind::ClientIp, 1000, Duration::from_nanos(10));
        assert_eq!(mk("x", p), Err(RateLimitError::RateTooHigh));
        let mut p = per_sec(1);
        p.burst = Some(0);
        assert_eq!(mk("x", p), Err(RateLimitError::ZeroBurst));
        let mut p = per_sec(1);
        p.max_keys = 0;
        assert_eq!(mk("x", p), Err(RateLimitError::ZeroMaxKeys));
        let mut p = per_sec(1);
        p.ipv6_prefix = 129;
        assert_eq!(mk("x", p), Err(RateLimitError::Ipv6Prefix(129)));
        assert_eq!(mk("é", per_sec(1)), Err(RateLimitError::BadName));
        assert_eq!(mk("a\nb", per_sec(1)), Err(RateLimitError::BadName));
        assert!(mk("ok", per_sec(1_000_000_000)).is_ok());
        let p = LimitParams::new(KeyKind::ClientIp, u32::MAX, Duration::from_secs(3600));
        assert!(mk("ok", p).is_ok());
        assert!(!RateLimitError::BadName.to_string().is_empty());
    }

    #[test]
    fn several_limits_on_one_route() {
        let (a, clock) = limit("a", per_sec(5));
        let b = RateLimit::with_clock("b", per_sec(2), clock.clone()).unwrap();
        let k = ipk("1.2.3.4");
        let mut out = HeaderMap::new();
        check_all([(&a, k), (&b, k)], &mut out).unwrap();
        check_all([(&a, k), (&b, k)], &mut out).unwrap();
        assert!(out.is_empty(), "no headers: true on either");
        let refused = check_all([(&a, k), (&b, k)], &mut out).unwrap_err();
        assert_eq!(refused.limit.name(), "b");
        assert_eq!(refused.limited.wait, Duration::from_millis(500));
        assert_eq!(refused.headers()[2].1, "\"b\";r=0;t=1");
        // `a` was charged for the refused request (3 of 5 used) ...
        assert_eq!(a.check(&k).unwrap().remaining, 1);
        // ... but when `a` refuses first, `b` is not charged.
        let (a, clock) = limit("a", per_sec(1));
        let b = RateLimit::with_clock("b", per_sec(3), clock.clone()).unwrap();
        check_all([(&a, k), (&b, k)], &mut out).unwrap();
        let refused = check_all([(&a, k), (&b, k)], &mut out).unwrap_err();
        assert_eq!(refused.limit.name(), "a");
        assert_eq!(b.check(&k).unwrap().remaining, 1);
    }

    #[test]
    fn allowed_headers_for_limits_that_ask() {
        let mut p = per_sec(10);
        p.headers = true;
        let (a, clock) = limit("a", p);
        let b = RateLimit::with_clock("b", per_sec(10), clock.clone()).unwrap();
        let mut p = per_sec(100);
        p.headers = true;
        let c = RateLimit::with_clock("c", p, clock.clone()).unwrap();
        let k = ipk("1.2.3.4");
        let mut out = HeaderMap::new();
        check_all([(&a, k), (&b, k), (&c, k)], &mut out).unwrap();
        let policies: Vec<_> = out.get_all(&RATELIMIT_POLICY).iter().collect();
        assert_eq!(policies, ["\"a\";q=10;w=1", "\"c\";q=100;w=1"]);
        let states: Vec<_> = out.get_all(&RATELIMIT).iter().collect();
        assert_eq!(states, ["\"a\";r=9;t=1", "\"c\";r=99;t=1"]);
    }

    #[test]
    fn ipv6_grouped_by_prefix() {
        let (l, _clock) = limit("per_ip", per_sec(1));
        let none = HeaderMap::new();
        let key = |s: &str| l.key_for(ip(s), &none, |_| None);
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff:eeee:dddd:9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        l.check(&key("2001:db8:1:2::1")).unwrap();
        assert!(l.check(&key("2001:db8:1:2:aaaa::2")).is_err());
        assert!(l.check(&key("2001:db8:1:3::1")).is_ok());
        // IPv4-mapped is the IPv4 client.
        assert_eq!(key("::ffff:1.2.3.4"), key("1.2.3.4"));
        assert_eq!(key("1.2.3.4"), Key::V4(0x0102_0304));
        // Other prefixes.
        let p48 = |s: &str| ip_key(ip(s), 48);
        assert_eq!(p48("2001:db8:1:2::1"), p48("2001:db8:1:ffff::1"));
        assert_ne!(p48("2001:db8:1::1"), p48("2001:db8:2::1"));
        let p128 = |s: &str| ip_key(ip(s), 128);
        assert_ne!(p128("2001:db8::1"), p128("2001:db8::2"));
        assert_eq!(ip_key(ip("2001:db8::1"), 0), ip_key(ip("fe80::1"), 0));
        assert_eq!(ip_key(ip("2001:db8::1"), 200), p128("2001:db8::1"));
        assert_eq!(p48("2001:db8:1:2::1"), Key::V6(0x2001_0db8_0001_0000, 0));
    }

    #[test]
    fn header_key_falls_back_to_client_ip() {
        let name = HeaderName::from_static("x-api-key");
        let p = LimitParams::new(KeyKind::Header(name.clone()), 1, Duration::from_secs(1));
        let (l, _clock) = limit("per_key", p);
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), HeaderValue::from_str(v).unwrap());
            h
        };
        let none = HeaderMap::new();
        let k1_a = l.key_for(ip("1.1.1.1"), &with("k1"), |_| None);
        let k1_b = l.key_for(ip("2.2.2.2"), &with("k1"), |_| None);
        let k2 = l.key_for(ip("1.1.1.1"), &with("k2"), |_| None);
        let absent_a = l.key_for(ip("1.1.1.1"), &none, |_| None);
        let empty_a = l.key_for(ip("1.1.1.1"), &with(""), |_| None);
        let absent_b = l.key_for(ip("2.2.2.2"), &none, |_| None);
        // A header value that spells the IP is still a value, not the IP.
        let spoof = l.key_for(ip("9.9.9.9"), &with("1.1.1.1"), |_| None);
        assert_eq!(k1_a, k1_b, "the key, not the IP, decides");
        assert_ne!(k1_a, k2);
        assert_eq!(absent_a, ipk("1.1.1.1"));
        assert_eq!(empty_a, absent_a);
        assert_ne!(absent_a, absent_b);
        assert_ne!(spoof, absent_a);
        assert!(matches!(spoof, Key::Value(_)));

        l.check(&k1_a).unwrap();
        assert!(l.check(&k1_b).is_err());
        l.check(&k2).unwrap();
        l.check(&absent_a).unwrap();
        assert!(l.check(&absent_a).is_err());
        l.check(&absent_b).unwrap();
        l.check(&spoof).unwrap();
    }

    #[test]
    fn claim_keys_are_per_subject() {
        let p = LimitParams::new(KeyKind::Claim("sub".into()), 1, Duration::from_secs(1));
        let (l, _clock) = limit("per_user", p);
        assert!(l.needs_claims());
        let none = HeaderMap::new();
        let client = ip("1.2.3.4");
        let sub = |v: ClaimValue<'static>| {
            l.key_for(client, &none, move |name| (name == "sub").then_some(v))
        };
        let alice = sub(ClaimValue::Str("alice"));
        let bob = sub(ClaimValue::Str("bob"));
        assert_ne!(alice, bob);
        l.check(&alice).unwrap();
        assert!(l.check(&alice).is_err());
        l.check(&bob).unwrap();
        // Numbers: equal values share, strings and numbers do not.
        assert_eq!(sub(ClaimValue::Int(42)), sub(ClaimValue::UInt(42)));
        assert_eq!(sub(ClaimValue::Int(42)), sub(ClaimValue::Float(42.0)));
        assert_ne!(sub(ClaimValue::Int(42)), sub(ClaimValue::Str("42")));
        assert_ne!(sub(ClaimValue::Float(0.5)), sub(ClaimValue::Int(0)));
        assert_ne!(sub(ClaimValue::Int(-1)), sub(ClaimValue::UInt(u64::MAX)));
        let nan = sub(ClaimValue::Float(f64::NAN));
        assert!(matches!(nan, Key::Value(_)));
        // Missing claim → the client IP.
        assert_eq!(l.key_for(client, &none, |_| None), Key::V4(0x0102_0304));
        assert!(!limit("ip", per_sec(1)).0.needs_claims());
    }

    #[test]
    fn max_keys_overflow_shares_one_bucket() {
        let mut p = per_sec(1);
        p.max_keys = 2;
        let (l, clock) = limit("per_ip", p);
        let (a, b, c, d) = (
            ipk("1.0.0.1"),
            ipk("1.0.0.2"),
            ipk("1.0.0.3"),
            ipk("1.0.0.4"),
        );
        l.check(&a).unwrap();
        l.check(&b).unwrap();
        assert_eq!(l.len(), 2);
        // Third and fourth keys share the overflow bucket.
        l.check(&c).unwrap();
        assert!(l.check(&d).is_err());
        assert!(l.check(&c).is_err());
        assert_eq!(l.len(), 2, "the map did not grow");
        assert_eq!(l.overflow_checks(), 3);
        // Existing keys keep their own buckets.
        assert!(l.check(&a).is_err());
        clock.advance(Duration::from_secs(1));
        l.check(&a).unwrap();
        l.check(&c).unwrap();
        assert!(l.check(&d).is_err());
        // Once idle buckets are dropped, new keys get their own again.
        clock.advance(Duration::from_secs(10));
        l.housekeeping();
        assert_eq!(l.len(), 0);
        l.check(&c).unwrap();
        l.check(&d).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l.overflow_checks(), 5);
    }

    #[test]
    fn max_keys_holds_under_concurrent_floods() {
        let mut p = per_sec(1);
        p.max_keys = 100;
        let (l, _clock) = limit("per_ip", p);
        let threads = 4u32;
        std::thread::scope(|s| {
            for t in 0..threads {
                let l = &l;
                s.spawn(move || {
                    for i in 0..10_000u32 {
                        let _ = l.check(&Key::V4(t << 24 | i));
                    }
                });
            }
        });
        assert!(l.len() >= 100);
        assert!(l.len() <= 100 + threads as usize, "{}", l.len());
        assert_eq!(l.overflow_checks(), 40_000 - l.len() as u64);
    }

    #[test]
    fn housekeeping_forgets_idle_keys_and_shrinks() {
        let (l, clock) = limit("per_ip", per_sec(10));
        for i in 0..5000u32 {
            l.check(&Key::V4(i)).unwrap();
        }
        assert_eq!(l.len(), 5000);
        let before = l.capacity();
        assert!(before >= 5000);
        // Not yet idle long enough: everything kept.
        l.housekeeping();
        assert_eq!(l.len(), 5000);
        // One key stays busy; the rest go idle past a full refill.
        clock.advance(Duration::from_secs(2));
        l.check(&Key::V4(7)).unwrap();
        l.housekeeping();
        assert_eq!(l.len(), 1);
        assert!(l.capacity() < before / 10, "{} -> {}", before, l.capacity());
        // A forgotten key starts fresh; the busy one kept its state.
        assert_eq!(l.check(&Key::V4(8)).unwrap().remaining, 9);
        assert_eq!(l.check(&Key::V4(7)).unwrap().remaining, 8);
    }

    #[test]
    fn keys_are_small_and_limits_shareable() {
        assert!(std::mem::size_of::<Key>() <= 24);
        fn send_sync<T: Send + Sync>() {}
        send_sync::<RateLimit>();
        send_sync::<RateLimit<FakeRelativeClock>>();
    }

    #[test]
    fn bucket_table_probes_wrap_and_rebuild() {
        assert_eq!(std::mem::size_of::<Slot>(), 32);
        assert_eq!(std::mem::align_of::<Slot>(), 32);
        let seeds = Seeds::get();
        let mut t = Table::with_slots(MIN_SLOTS);
        // Every key with the same hash, aimed at the last slot: probes wrap
        // around the end of the array, and the table grows past 3/4 full.
        let hash = (MIN_SLOTS - 1) as u64;
        for i in 0..20u32 {
            let (_, inserted) = t.find_or_insert(Key::V4(i), hash, seeds);
            assert!(inserted);
            let (_, inserted) = t.find_or_insert(Key::V4(i), hash, seeds);
            assert!(!inserted);
        }
        assert_eq!(t.len, 20);
        assert_eq!(t.slots.len(), 32);
        // Grows placed the earlier keys by their real hash, the later ones
        // sit at the fake one; a rebuild places every key by its real hash.
        t.rebuild(32, seeds, |_| true);
        for i in 0..20u32 {
            assert!(t.find(&Key::V4(i), seeds.hash(&Key::V4(i))).is_some());
        }
        assert!(t.find(&Key::V4(20), seeds.hash(&Key::V4(20))).is_none());
        assert!(t.find(&Key::Value(1), seeds.hash(&Key::Value(1))).is_none());
        t.rebuild(Table::slots_for(t.len), seeds, |_| true);
        assert_eq!((t.len, t.slots.len()), (20, 32));
        t.rebuild(MIN_SLOTS, seeds, |_| false);
        assert_eq!(t.len, 0);
        assert_eq!(Table::slots_for(0), MIN_SLOTS);
        assert_eq!(Table::slots_for(6), MIN_SLOTS);
        assert_eq!(Table::slots_for(7), 2 * MIN_SLOTS);
        // Variants with the same words are different keys.
        let v6 = Key::V6(5, 0);
        t.find_or_insert(Key::V4(5), seeds.hash(&Key::V4(5)), seeds);
        assert!(t.find(&v6, seeds.hash(&v6)).is_none());
        assert!(t.find(&Key::Value(5), seeds.hash(&Key::Value(5))).is_none());
    }

    #[test]
    fn default_clock_works() {
        let l = RateLimit::new("per_ip", per_sec(2)).unwrap();
        let k = ipk("1.2.3.4");
        l.check(&k).unwrap();
        l.check(&k).unwrap();
        let refused = l.check(&k).unwrap_err();
        assert!(refused.wait <= Duration::from_millis(500));
        assert!(format!("{l:?}").contains("per_ip"));
    }
}
