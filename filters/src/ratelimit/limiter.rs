//! One named limit, [`RateLimit`]: its parameters and their validation,
//! governor's GCRA limiter over the limit's buckets, the key and header
//! methods the server calls; and [`check_all`] for the limits of a route.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter};
use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::headers::PolicyHeaders;
use super::key::{key_for, shared_key, ClaimValue, Key, KeyKind};
use super::table::{Buckets, Store};

/// Default of [`LimitParams::max_keys`].
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;
/// Default of [`LimitParams::ipv6_prefix`]: IPv6 clients grouped by /64.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

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

/// One named limit with its buckets. Routes that name the same limit share
/// one `RateLimit` (wrap it in an `Arc`); hot reload can keep it when
/// [`RateLimit::name`] and [`RateLimit::params`] are unchanged.
pub struct RateLimit<C: Clock = DefaultClock> {
    name: Box<str>,
    params: LimitParams,
    burst: u32,
    interval: Duration,
    policy_headers: PolicyHeaders,
    limiter: RateLimiter<Key, Store, C, StateInformationMiddleware>,
    buckets: Arc<Buckets>,
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
        let policy_headers =
            PolicyHeaders::new(name, params.count, params.per).ok_or(RateLimitError::BadName)?;
        let buckets = Arc::new(Buckets::new(params.max_keys));
        let limiter = RateLimiter::new(quota, Store::new(Arc::clone(&buckets)), clock);
        Ok(RateLimit {
            name: name.into(),
            params,
            burst,
            interval,
            policy_headers,
            limiter,
            buckets,
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
        shared_key(
            &self.params.key,
            self.params.ipv6_prefix,
            client_ip,
            headers,
            claims,
        )
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
        self.buckets.capacity()
    }

    /// Checks that went to the shared overflow bucket since start, for metrics.
    pub fn overflow_checks(&self) -> u64 {
        self.buckets.overflow_checks()
    }

    /// `RateLimit-Policy` value, e.g. `"per_ip";q=100;w=1`.
    pub fn policy_header(&self) -> HeaderValue {
        self.policy_headers.policy()
    }

    /// `RateLimit` value for an allowed request, e.g. `"per_ip";r=99;t=1`.
    pub fn allowed_header(&self, allowed: &Allowed) -> HeaderValue {
        self.policy_headers
            .allowed(allowed.remaining, allowed.reset)
    }

    /// `RateLimit-Policy` and `RateLimit` for an allowed request, appended
    /// (several limits each add their own line).
    pub fn append_allowed_headers(&self, allowed: &Allowed, out: &mut HeaderMap) {
        self.policy_headers
            .append_allowed(allowed.remaining, allowed.reset, out);
    }

    /// `Retry-After`, `RateLimit-Policy` and `RateLimit` for a 429.
    pub fn limited_headers(&self, limited: &Limited) -> [(HeaderName, HeaderValue); 3] {
        self.policy_headers.limited(limited.wait)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::test_support::{ipk, limit, per_sec};
    use crate::ratelimit::{RATELIMIT, RATELIMIT_POLICY};
    use governor::clock::FakeRelativeClock;

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
    fn keys_are_small_and_limits_shareable() {
        assert!(std::mem::size_of::<Key>() <= 24);
        fn send_sync<T: Send + Sync>() {}
        send_sync::<RateLimit>();
        send_sync::<RateLimit<FakeRelativeClock>>();
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
