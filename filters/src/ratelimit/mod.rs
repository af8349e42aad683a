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
//!
//! # Files
//! - `key.rs`: [`KeyKind`], [`Key`], [`key_for`] and the shared-store key.
//! - `table.rs`: the bucket map (sharded linear probing, the `max_keys` cap,
//!   housekeeping) behind governor's state store; its design notes are there.
//! - `headers.rs`: `RateLimit-Policy`, `RateLimit`, `Retry-After`.
//! - `limiter.rs`: [`RateLimit`], its parameters and errors, [`check_all`].
//! - `test_support.rs`: helpers shared by the unit tests.

mod headers;
mod key;
mod limiter;
mod table;
#[cfg(test)]
mod test_support;

pub use headers::{retry_after_secs, RATELIMIT, RATELIMIT_POLICY};
pub use key::{ip_key, key_for, ClaimValue, Key, KeyKind};
pub use limiter::{
    check_all, Allowed, LimitParams, Limited, RateLimit, RateLimitError, Refused,
    DEFAULT_IPV6_PREFIX, DEFAULT_MAX_KEYS,
};
