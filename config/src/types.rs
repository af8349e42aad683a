//! The checked configuration: what the rest of the gate reads. Built only by
//! validation (`crate::load*`), so every value here has passed its checks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, Method};
use ipnet::IpNet;

/// Default admin listener address.
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9901";

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this config came from (used in messages and by reload).
    pub source: PathBuf,
    /// Runtime worker threads (default 1).
    pub threads: usize,
    pub listen: Vec<Listener>,
    /// Always present: defaults to 127.0.0.1:9901 with no token.
    pub admin: Admin,
    pub trusted_proxies: Vec<IpNet>,
    pub upstreams: BTreeMap<String, Upstream>,
    pub auth: BTreeMap<String, AuthPolicy>,
    pub revocation: Option<Revocation>,
    pub rate_limits: BTreeMap<String, RateLimit>,
    pub compression: Option<Compression>,
    /// The response cache's storage; routes opt in with `cache:`.
    pub cache: Option<Cache>,
    pub cors: Option<Cors>,
    /// `None` = any host allowed.
    pub allowed_hosts: Option<Vec<String>>,
    pub https_redirect: bool,
    pub security_headers: Option<SecurityHeaders>,
    pub limits: Limits,
    /// `paths`: how encoded forms in a request path are treated.
    pub paths: PathRules,
    /// `headers`: which client header names are removed.
    pub headers: HeaderRules,
    /// How long SIGTERM waits for in-flight requests (`shutdown_grace`, default 30s).
    pub shutdown_grace: Duration,
    /// In file order.
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub address: SocketAddr,
    pub tls: Option<Tls>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub address: SocketAddr,
    pub token_env: Option<String>,
    /// The token read from `token_env` at load time (never logged).
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Worker sockets. Empty only when loaded with `LoadOptions::supervised`
    /// (the supervisor fills them in).
    pub sockets: Vec<PathBuf>,
    pub pool: Pool,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub health_check: Option<HealthCheck>,
    /// The adaptive per-worker concurrency limit; `None` = `concurrency: off`.
    pub concurrency: Option<Concurrency>,
}

/// Bounds of the adaptive concurrency limit (`upstreams.NAME.concurrency`).
#[derive(Debug, Clone, PartialEq)]
pub struct Concurrency {
    /// default 1: the lowest limit, and the concurrency of a min-RTT probe
    pub min: usize,
    /// default `pool.max_connections`
    pub max: usize,
    /// default 5s: longest wait in the gate's queue before a 503
    pub queue_timeout: Duration,
    /// default 0 (off): least work a worker holds while requests wait (the
    /// limit is at least the requests it completes in that time)
    pub min_work: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    /// default 64
    pub max_idle: usize,
    /// default 256; a hard cap on open sockets per worker socket
    pub max_connections: usize,
    /// default 4s (below uvicorn's 5 s keep-alive)
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// Starts with '/'.
    pub path: String,
    pub interval: Duration,
}

#[derive(Debug, Clone)]
pub struct AuthPolicy {
    /// Upper-case JWT algorithm names as written (HS256, RS256, ES256, EdDSA...); never "none".
    pub algorithms: Vec<String>,
    pub key: KeySource,
    pub issuer: Option<String>,
    pub audience: Vec<String>,
    pub leeway: Duration,
    /// claim name -> header name, in file order.
    pub forward_claims: Vec<(String, HeaderName)>,
    pub strip_authorization: bool,
}

#[derive(Debug, Clone)]
pub enum KeySource {
    /// HS*: the secret read from the named environment variable.
    Secret {
        env: String,
        value: String,
    },
    PublicKeyFile(PathBuf),
    JwksFile(PathBuf),
    JwksUrl(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Revocation {
    pub persist_file: Option<PathBuf>,
    pub redis: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    ClientIp,
    /// `claim:NAME`
    Claim(String),
    /// `header:NAME` (lower-case)
    Header(HeaderName),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub key: RateKey,
    pub rate: Rate,
    /// Defaults to `rate.count`.
    pub burst: u32,
    pub headers: bool,
    pub shared: bool,
    /// default 1_000_000
    pub max_keys: usize,
    /// IPv6 clients are keyed by this prefix (default /64), so one host
    /// cannot dodge a per-IP limit by rotating addresses.
    pub ipv6_prefix: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Coding {
    Br,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone)]
pub struct Compression {
    /// Server preference order.
    pub algorithms: Vec<Coding>,
    /// default 1024
    pub min_size: u64,
    /// e.g. "application/json", "text/*"
    pub content_types: Vec<String>,
    pub levels: BTreeMap<Coding, u32>,
}

/// The top-level `cache:` section: one store for every caching route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    /// default 64 MiB: bytes held, entries and their keys and headers counted
    pub max_size: u64,
    /// default 1 MiB: a larger response is streamed and not stored
    pub max_entry_size: u64,
    /// default 5s: how long a miss waits for the same key's fill in flight
    pub lock_timeout: Duration,
}

/// A route's `cache:` (off when absent).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteCache {
    /// Requests with `Authorization` may use the cache; only responses
    /// marked `public` or `s-maxage` are stored for them. Default false.
    pub authorized: bool,
    /// A verified claim added to the key: one copy per user. Default none.
    pub key_claim: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Cors {
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<Method>,
    pub allow_headers: Vec<HeaderName>,
    pub expose_headers: Vec<HeaderName>,
    pub allow_credentials: bool,
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct SecurityHeaders {
    pub hsts: Option<Duration>,
    pub content_type_options: Option<String>,
    pub referrer_policy: Option<String>,
    pub frame_options: Option<String>,
    pub remove: Vec<HeaderName>,
}

/// `paths.encoded_slash`: `%2F` in a path is refused (400) or kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodedSlash {
    #[default]
    Reject,
    Keep,
}

#[derive(Debug, Clone, Default)]
pub struct PathRules {
    pub encoded_slash: EncodedSlash,
}

/// `headers.underscores`: which names with `_` are removed from requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Underscores {
    /// Those that fold (`_` read as `-`) onto a header the gate owns.
    #[default]
    Owned,
    /// Every one (nginx's `underscores_in_headers off`).
    Drop,
}

#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    pub underscores: Underscores,
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// default 10 MiB
    pub max_body: u64,
    /// default 16 KiB
    pub max_header_bytes: usize,
    /// default 256: header fields hyper parses (over it: hyper's bare 431)
    pub max_header_fields: usize,
    /// default 10s: total time to receive the request head (and the TLS
    /// handshake or h2 preface before it), and the longest wait for the next
    /// request on an idle connection
    pub header_timeout: Duration,
    /// default 60s: longest stall of a request body (client not sending) or
    /// a response body (client not taking bytes)
    pub body_timeout: Duration,
    /// default 100: h2 streams in flight per client connection, so also the
    /// most worker connections one client connection can hold
    pub max_concurrent_streams: u32,
    /// default 10 000: open client connections on all listeners
    pub max_connections: usize,
    /// default 256: open client connections from one IP address
    pub max_connections_per_ip: usize,
    /// default 10m: a WebSocket session with no byte either way is closed
    /// (a route's `websocket.idle_timeout` takes precedence)
    pub websocket_idle_timeout: Duration,
    /// default 1GiB: request bodies buffered at once, gate-wide (memory
    /// and temporary files); beyond it a request gets 503
    pub max_buffered: u64,
}

#[derive(Debug, Clone)]
pub enum RouteTarget {
    Upstream(String),
    Static(StaticDir),
}

#[derive(Debug, Clone)]
pub struct StaticDir {
    pub dir: PathBuf,
    pub index: Option<String>,
    pub cache_control: Option<String>,
    /// Serve names starting with `.` (`.env`, `.git/`); off by default, when
    /// they are 404 (`.well-known` is served either way).
    pub dotfiles: bool,
    /// Serve `file.br` / `file.zst` / `file.gz` beside `file` to clients
    /// that accept that coding; off by default, as a stale sibling left by
    /// a deploy would be served in place of the file.
    pub precompressed: bool,
}

/// A route's own CORS setting.
#[derive(Debug, Clone)]
pub enum RouteCors {
    /// Not set: the global `cors:` applies (if any).
    Inherit,
    /// `cors: false`
    Off,
    Own(Cors),
}

#[derive(Debug, Clone)]
pub struct WebSocketOpts {
    pub max_message: Option<u64>,
    pub messages_per_second: Option<u32>,
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// matchit pattern as written, e.g. `/api/{*rest}`.
    pub path: String,
    /// `None` = every method.
    pub methods: Option<Vec<Method>>,
    pub target: RouteTarget,
    pub auth: Option<String>,
    pub scopes: Vec<String>,
    /// Names of `rate_limits` entries; all must allow.
    pub rate_limits: Vec<String>,
    /// `Some(false)` = `compression: false`; `None` = follow the top-level section.
    pub compression: Option<bool>,
    /// `compression: { sse: true }`: compress `text/event-stream` too,
    /// flushing every event.
    pub compress_event_stream: bool,
    /// `None`: responses on this route are never cached.
    pub cache: Option<RouteCache>,
    pub cors: RouteCors,
    pub websocket: Option<WebSocketOpts>,
    /// default true: the request body is read whole before the request
    /// takes a worker slot (`buffer_request: false` streams it).
    pub buffer_request: bool,
    /// `buffer_response: SIZE`: a worker response with a Content-Length up
    /// to SIZE is read whole before it is sent on, freeing the worker's
    /// connection while a slow client reads. Default off.
    pub buffer_response: Option<u64>,
}
