//! The YAML schema exactly as users write it: serde structs that reject
//! unknown keys. Nothing here is checked beyond its YAML type; `validate`
//! turns these into the checked `types`. Each top-level section (and each
//! entry of `upstreams`, `auth`, `rate_limits`, `listen`, `routes`) is
//! deserialized on its own so that one bad entry does not hide the others.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize as DeriveDeserialize;

use crate::units::{Dur, RateV, Size};

/// Every top-level key, in the order the design document lists them. Keys
/// starting with `x-` are also accepted and ignored: they hold YAML anchors.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "threads",
    "listen",
    "admin",
    "trusted_proxies",
    "upstreams",
    "auth",
    "revocation",
    "rate_limits",
    "compression",
    "cache",
    "cors",
    "allowed_hosts",
    "https_redirect",
    "security_headers",
    "limits",
    "paths",
    "headers",
    "routes",
    "shutdown_grace",
];

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub address: String,
    pub tls: Option<RawTls>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: Option<String>,
    pub token_env: Option<String>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub sockets: Option<Vec<String>>,
    pub pool: Option<RawPool>,
    pub connect_timeout: Option<Dur>,
    pub read_timeout: Option<Dur>,
    pub health_check: Option<RawHealthCheck>,
    pub concurrency: Option<RawConcurrency>,
}

/// `concurrency: off` (a static limit: `pool.max_connections` only),
/// `concurrency: on`, or the adaptive limit's bounds.
#[derive(Debug)]
pub enum RawConcurrency {
    Switch(bool),
    Options(RawConcurrencyOptions),
}

impl<'de> Deserialize<'de> for RawConcurrency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawConcurrency;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("off, on, or { min, max, queue_timeout, min_work }")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(RawConcurrency::Switch(b))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                match s {
                    "off" => Ok(RawConcurrency::Switch(false)),
                    "on" => Ok(RawConcurrency::Switch(true)),
                    _ => Err(E::invalid_value(de::Unexpected::Str(s), &self)),
                }
            }
            fn visit_map<M: MapAccess<'de>>(self, m: M) -> Result<Self::Value, M::Error> {
                RawConcurrencyOptions::deserialize(de::value::MapAccessDeserializer::new(m))
                    .map(RawConcurrency::Options)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConcurrencyOptions {
    pub min: Option<usize>,
    pub max: Option<usize>,
    pub queue_timeout: Option<Dur>,
    pub min_work: Option<Dur>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub max_idle: Option<usize>,
    pub max_connections: Option<usize>,
    pub idle_timeout: Option<Dur>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: String,
    pub interval: Option<Dur>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub algorithms: Vec<String>,
    pub secret_env: Option<String>,
    pub public_key_file: Option<String>,
    pub jwks_file: Option<String>,
    pub jwks_url: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<OneOrMany>,
    pub leeway: Option<Dur>,
    pub forward_claims: Option<OrderedMap>,
    pub strip_authorization: Option<bool>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRevocation {
    pub persist_file: Option<String>,
    pub redis: Option<String>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub key: String,
    pub rate: RateV,
    pub burst: Option<u32>,
    pub headers: Option<bool>,
    pub shared: Option<bool>,
    pub max_keys: Option<usize>,
    pub ipv6_prefix: Option<u8>,
}

/// `compression:` is this mapping (or `true` / `false`, handled by `validate`).
/// A route's `compression:`: `false` (off), `true` (the top-level policy),
/// or `{ sse: true }` to also compress `text/event-stream`, flushing each event.
#[derive(Debug)]
pub enum RawRouteCompression {
    Switch(bool),
    Options(RawRouteCompressionOptions),
}

impl<'de> Deserialize<'de> for RawRouteCompression {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRouteCompression;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or { sse: true }")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(RawRouteCompression::Switch(b))
            }
            fn visit_map<M: MapAccess<'de>>(self, m: M) -> Result<Self::Value, M::Error> {
                RawRouteCompressionOptions::deserialize(de::value::MapAccessDeserializer::new(m))
                    .map(RawRouteCompression::Options)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteCompressionOptions {
    pub sse: bool,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompression {
    pub algorithms: Option<Vec<String>>,
    pub min_size: Option<Size>,
    pub content_types: Option<Vec<String>>,
    pub levels: Option<RawLevels>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLevels {
    pub gzip: Option<i64>,
    pub br: Option<i64>,
    pub zstd: Option<i64>,
}

/// The top-level `cache:` section (or `true` for the defaults).
#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub max_size: Option<Size>,
    pub max_entry_size: Option<Size>,
    pub lock_timeout: Option<Dur>,
}

/// A route's `cache:`: `true`, `false`, or `{ authorized, key_claim }`.
#[derive(Debug)]
pub enum RawRouteCache {
    Switch(bool),
    Options(RawRouteCacheOptions),
}

impl<'de> Deserialize<'de> for RawRouteCache {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRouteCache;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or { authorized: true, key_claim: NAME }")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
                Ok(RawRouteCache::Switch(b))
            }
            fn visit_map<M: MapAccess<'de>>(self, m: M) -> Result<Self::Value, M::Error> {
                RawRouteCacheOptions::deserialize(de::value::MapAccessDeserializer::new(m))
                    .map(RawRouteCache::Options)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteCacheOptions {
    pub authorized: Option<bool>,
    pub key_claim: Option<String>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    pub allow_origins: Option<Vec<String>>,
    pub allow_methods: Option<Vec<String>>,
    pub allow_headers: Option<Vec<String>>,
    pub expose_headers: Option<Vec<String>>,
    pub allow_credentials: Option<bool>,
    pub max_age: Option<Dur>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecurityHeaders {
    pub hsts: Option<Dur>,
    pub content_type_options: Option<String>,
    pub referrer_policy: Option<String>,
    pub frame_options: Option<String>,
    pub remove: Option<Vec<String>>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_body: Option<Size>,
    pub max_header_bytes: Option<Size>,
    pub max_header_fields: Option<u64>,
    pub header_timeout: Option<Dur>,
    pub body_timeout: Option<Dur>,
    pub max_concurrent_streams: Option<u64>,
    pub max_connections: Option<u64>,
    pub max_connections_per_ip: Option<u64>,
    pub websocket_idle_timeout: Option<Dur>,
    pub max_buffered: Option<Size>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPaths {
    pub encoded_slash: Option<String>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaders {
    pub underscores: Option<String>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: String,
    pub methods: Option<Vec<String>>,
    pub upstream: Option<String>,
    #[serde(rename = "static")]
    pub static_dir: Option<RawStatic>,
    pub auth: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub rate_limit: Option<OneOrMany>,
    pub compression: Option<RawRouteCompression>,
    pub cache: Option<RawRouteCache>,
    /// `false` or a cors mapping; checked by `validate` so that errors inside
    /// the mapping keep their path.
    pub cors: Option<serde_yaml::Value>,
    pub buffer_request: Option<bool>,
    pub buffer_response: Option<Size>,
    pub websocket: Option<RawWebSocket>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatic {
    pub dir: String,
    pub index: Option<String>,
    pub cache_control: Option<String>,
    pub dotfiles: Option<bool>,
    pub precompressed: Option<bool>,
}

#[derive(Debug, DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebSocket {
    pub max_message: Option<Size>,
    pub messages_per_second: Option<u32>,
    pub idle_timeout: Option<Dur>,
}

/// A string or a list of strings (`audience`, a route's `rate_limit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string-to-string mapping that keeps file order (`forward_claims`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderedMap(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for OrderedMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of names to strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedMap, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    out.push((k, v));
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(V)
    }
}
