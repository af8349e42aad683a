//! Every default value of the schema, in one place, and the built-in config
//! `asgi-gate run` uses without `-c`.
//!
//! | key | default |
//! | --- | --- |
//! | `threads` | 1 |
//! | `admin.address` | 127.0.0.1:9901, no token |
//! | `upstreams.*.pool` | max_idle 64, max_connections 256, idle_timeout 4s |
//! | `upstreams.*.connect_timeout` / `read_timeout` | 1s / 30s |
//! | `upstreams.*.health_check.interval` | 5s |
//! | `auth.*.leeway` | 0s (set it, e.g. 30s, if issuer clocks drift) |
//! | `auth.*.strip_authorization` | false |
//! | `rate_limits.*.burst` | the rate's count |
//! | `rate_limits.*.max_keys` | 1 000 000 |
//! | `compression.algorithms` | br, gzip, zstd |
//! | `compression.min_size` | 1024 |
//! | `compression.content_types` | application/json, text/*, application/javascript |
//! | `compression.levels` | gzip 6, br 4, zstd 3 |
//! | `cache` | max_size 64MiB, max_entry_size 1MiB, lock_timeout 5s (used by routes with `cache:`) |
//! | `routes.*.cache` | off; `authorized` false, no `key_claim` |
//! | `cors.allow_methods` | GET, HEAD, POST |
//! | `limits` | max_body 10MiB, max_header_bytes 16KiB, max_header_fields 256, header_timeout 10s, body_timeout 60s, max_concurrent_streams 100, max_connections 10 000, max_connections_per_ip 256, websocket_idle_timeout 10m, max_buffered 1GiB |
//! | `paths.encoded_slash` | reject |
//! | `headers.underscores` | owned |
//! | `routes.*.static.dotfiles` | false (names starting with `.` are 404; `.well-known` is served) |
//! | `routes.*.static.precompressed` | false (`file.br`/`.zst`/`.gz` siblings are not looked for) |
//! | `shutdown_grace` | 30s |
//!
//! `security_headers` adds only what is written; `compression: true` means
//! the compression defaults above.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use http::Method;

use crate::types::*;

pub const THREADS: usize = 1;
pub const ADMIN_ADDRESS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9901);
pub const SUPERVISED_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 8000);
pub const POOL_MAX_IDLE: usize = 64;
pub const POOL_MAX_CONNECTIONS: usize = 256;
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(5);
pub const LEEWAY: Duration = Duration::ZERO;
pub const RATE_LIMIT_MAX_KEYS: usize = 1_000_000;
pub const RATE_LIMIT_IPV6_PREFIX: u8 = 64;
pub const COMPRESSION_ALGORITHMS: [Coding; 3] = [Coding::Br, Coding::Gzip, Coding::Zstd];
pub const COMPRESSION_MIN_SIZE: u64 = 1024;
pub const COMPRESSION_CONTENT_TYPES: [&str; 3] =
    ["application/json", "text/*", "application/javascript"];
pub const GZIP_LEVEL: u32 = 6;
pub const BR_LEVEL: u32 = 4;
pub const ZSTD_LEVEL: u32 = 3;
pub const CACHE_MAX_SIZE: u64 = 64 * 1024 * 1024;
pub const CACHE_MAX_ENTRY_SIZE: u64 = 1024 * 1024;
/// nginx's `proxy_cache_lock_timeout` default.
pub const CACHE_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

pub fn cache() -> Cache {
    Cache {
        max_size: CACHE_MAX_SIZE,
        max_entry_size: CACHE_MAX_ENTRY_SIZE,
        lock_timeout: CACHE_LOCK_TIMEOUT,
    }
}
pub const MAX_BODY: u64 = 10 * 1024 * 1024;
/// Request bodies buffered at once, gate-wide (`limits.max_buffered`).
pub const MAX_BUFFERED: u64 = 1024 * 1024 * 1024;
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// hyper builds an array of this many slots for every request head it
/// parses (callgrind: about 10 instructions a slot); 256 lets any realistic
/// head through to the gate's own byte check.
pub const MAX_HEADER_FIELDS: usize = 256;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// nginx's `client_body_timeout` / `send_timeout`.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Below nginx's `http2_max_concurrent_streams` (128) and hyper's 200.
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
pub const MAX_CONNECTIONS: usize = 10_000;
pub const MAX_CONNECTIONS_PER_IP: usize = 256;
pub const WEBSOCKET_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// The upstream `asgi-gate run` fills with its workers' sockets.
pub const SUPERVISED_UPSTREAM: &str = "app";

pub fn admin() -> Admin {
    Admin {
        address: ADMIN_ADDRESS,
        token_env: None,
        token: None,
    }
}

pub fn pool() -> Pool {
    Pool {
        max_idle: POOL_MAX_IDLE,
        max_connections: POOL_MAX_CONNECTIONS,
        idle_timeout: POOL_IDLE_TIMEOUT,
    }
}

/// An upstream with every default and the given sockets.
pub fn upstream(sockets: Vec<PathBuf>) -> Upstream {
    Upstream {
        sockets,
        pool: pool(),
        connect_timeout: CONNECT_TIMEOUT,
        read_timeout: READ_TIMEOUT,
        health_check: None,
        concurrency: Some(concurrency(POOL_MAX_CONNECTIONS)),
    }
}

/// Longest wait in an upstream's queue (`concurrency.queue_timeout`).
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Least work a worker holds while requests wait (`concurrency.min_work`).
pub const CONCURRENCY_MIN_WORK: Duration = Duration::ZERO;

/// The adaptive limit's default bounds for a pool of `max_connections`.
pub fn concurrency(max_connections: usize) -> Concurrency {
    Concurrency {
        min: 1,
        max: max_connections,
        queue_timeout: QUEUE_TIMEOUT,
        min_work: CONCURRENCY_MIN_WORK,
    }
}

pub fn level(c: Coding) -> u32 {
    match c {
        Coding::Gzip => GZIP_LEVEL,
        Coding::Br => BR_LEVEL,
        Coding::Zstd => ZSTD_LEVEL,
    }
}

pub fn compression() -> Compression {
    Compression {
        algorithms: COMPRESSION_ALGORITHMS.to_vec(),
        min_size: COMPRESSION_MIN_SIZE,
        content_types: COMPRESSION_CONTENT_TYPES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        levels: COMPRESSION_ALGORITHMS
            .iter()
            .map(|&c| (c, level(c)))
            .collect(),
    }
}

pub fn cors_methods() -> Vec<Method> {
    vec![Method::GET, Method::HEAD, Method::POST]
}

pub fn limits() -> Limits {
    Limits {
        max_body: MAX_BODY,
        max_header_bytes: MAX_HEADER_BYTES,
        max_header_fields: MAX_HEADER_FIELDS,
        header_timeout: HEADER_TIMEOUT,
        body_timeout: BODY_TIMEOUT,
        max_concurrent_streams: MAX_CONCURRENT_STREAMS,
        max_connections: MAX_CONNECTIONS,
        max_connections_per_ip: MAX_CONNECTIONS_PER_IP,
        websocket_idle_timeout: WEBSOCKET_IDLE_TIMEOUT,
        max_buffered: MAX_BUFFERED,
    }
}

fn app_route(path: &str) -> Route {
    Route {
        path: path.to_string(),
        methods: None,
        target: RouteTarget::Upstream(SUPERVISED_UPSTREAM.to_string()),
        auth: None,
        scopes: Vec::new(),
        rate_limits: Vec::new(),
        compression: None,
        compress_event_stream: false,
        cache: None,
        cors: RouteCors::Inherit,
        websocket: None,
        buffer_request: true,
        buffer_response: None,
    }
}

impl Default for Cache {
    /// What a route's `cache:` uses without a top-level `cache:` section.
    fn default() -> Cache {
        cache()
    }
}

impl Config {
    /// The config `run` uses without `-c`: listen 127.0.0.1:8000, upstream `app`
    /// with no sockets yet, one catch-all route, admin on the default address.
    /// (Here rather than in `types`, which names no other module.)
    pub fn supervised_default() -> Config {
        supervised_default()
    }
}

/// The `run` config without `-c`: listen 127.0.0.1:8000, upstream `app` with
/// no sockets yet (the supervisor fills them in), compression with defaults,
/// admin on its default address. `source` is empty: there is no file to reload.
///
/// Routes are `/` and `/{*rest}`, both to `app`: a matchit catch-all needs at
/// least one character, so `/{*rest}` alone would answer `/` with 404.
pub fn supervised_default() -> Config {
    let mut upstreams = BTreeMap::new();
    upstreams.insert(SUPERVISED_UPSTREAM.to_string(), upstream(Vec::new()));
    Config {
        source: PathBuf::new(),
        threads: THREADS,
        listen: vec![Listener {
            address: SUPERVISED_LISTEN,
            tls: None,
        }],
        admin: admin(),
        trusted_proxies: Vec::new(),
        upstreams,
        auth: BTreeMap::new(),
        revocation: None,
        rate_limits: BTreeMap::new(),
        compression: Some(compression()),
        cache: None,
        cors: None,
        allowed_hosts: None,
        https_redirect: false,
        security_headers: None,
        limits: limits(),
        paths: PathRules::default(),
        headers: HeaderRules::default(),
        shutdown_grace: SHUTDOWN_GRACE,
        routes: vec![app_route("/"), app_route("/{*rest}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_default_matches_public_constant() {
        assert_eq!(ADMIN_ADDRESS.to_string(), DEFAULT_ADMIN_ADDRESS);
    }

    #[test]
    fn supervised_default_routes_slash_too() {
        let c = supervised_default();
        let mut r = matchit::Router::new();
        for (i, route) in c.routes.iter().enumerate() {
            r.insert(route.path.as_str(), i).unwrap();
        }
        assert_eq!(*r.at("/").unwrap().value, 0);
        assert_eq!(*r.at("/x/y").unwrap().value, 1);
        assert!(c.upstreams["app"].sockets.is_empty());
        assert_eq!(c.listen[0].address.to_string(), "127.0.0.1:8000");
        assert!(c.compression.is_some());
    }

    #[test]
    fn catch_all_does_not_match_slash() {
        // Why supervised_default has a `/` route.
        let mut r = matchit::Router::new();
        r.insert("/{*rest}", ()).unwrap();
        assert!(r.at("/").is_err());
    }
}
