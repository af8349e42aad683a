//! Helpers for the unit tests of the `ratelimit` files: limits on a fake
//! clock, and client IPs and their keys from strings.

use std::net::IpAddr;
use std::time::Duration;

use governor::clock::FakeRelativeClock;

use super::{ip_key, Key, KeyKind, LimitParams, RateLimit, DEFAULT_IPV6_PREFIX};

pub(super) fn limit(
    name: &str,
    params: LimitParams,
) -> (RateLimit<FakeRelativeClock>, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    let l = RateLimit::with_clock(name, params, clock.clone()).unwrap();
    (l, clock)
}

pub(super) fn per_sec(count: u32) -> LimitParams {
    LimitParams::new(KeyKind::ClientIp, count, Duration::from_secs(1))
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(super) fn ipk(s: &str) -> Key {
    ip_key(ip(s), DEFAULT_IPV6_PREFIX)
}
