//! Key derivation: what a request is counted under. A [`Key`] for this
//! process's buckets (the client IP, or a claim or header value SipHashed
//! under a per-process key; see the `ratelimit` module docs), and the stable
//! string of [`shared_key`] for a store that several replicas share.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::OnceLock;

use http::header::{HeaderMap, HeaderName};

use crate::forwarding::canonical;

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
    /// A claim or header value, hashed (see the `ratelimit` module docs).
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

/// The key of a request as every replica computes it, for a store they
/// share: the same buckets as [`key_for`], but header and claim values are
/// SHA-256 hashed (first 16 bytes, hex) instead of SipHashed under this
/// process's random key, so two gates agree and the value itself is never
/// stored.
pub(super) fn shared_key<'c>(
    kind: &KeyKind,
    ipv6_prefix: u8,
    client_ip: IpAddr,
    headers: &HeaderMap,
    claims: impl FnOnce(&str) -> Option<ClaimValue<'c>>,
) -> String {
    let ip = |ip| match ip_key(ip, ipv6_prefix) {
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
    match kind {
        KeyKind::ClientIp => ip(client_ip),
        KeyKind::Claim(name) => match claims(name) {
            Some(ClaimValue::Str(s)) => digest("c:s:", s.as_bytes()),
            Some(ClaimValue::Int(i)) => digest("c:n:", i.to_string().as_bytes()),
            Some(ClaimValue::UInt(u)) => digest("c:n:", u.to_string().as_bytes()),
            Some(ClaimValue::Float(f)) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e38 => {
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

const TAG_STR: u8 = 0;
const TAG_NUM: u8 = 1;
const TAG_FLOAT: u8 = 2;
const TAG_HEADER: u8 = 3;

/// Process-wide random key for hashing claim and header values.
pub(super) fn value_hasher() -> &'static RandomState {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::test_support::{ip, ipk, limit, per_sec};
    use crate::ratelimit::LimitParams;
    use http::header::HeaderValue;
    use std::time::Duration;

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
}
