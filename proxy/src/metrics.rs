//! Prometheus metrics (`GET /metrics` on the admin listener). One registry
//! for the process, so counters survive config reloads. Labels are bounded:
//! the route label is the configured pattern, never the raw URL; methods
//! outside the standard set count as `other`.

use std::sync::{LazyLock, Mutex};

use http::{Method, StatusCode};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub rejections: IntCounterVec,
    pub pool_connections: IntGaugeVec,
    pub pool_waits: IntCounterVec,
    pub connect_errors: IntCounterVec,
    pub revocations: IntGauge,
    pub revocation_outbox: IntGauge,
    pub rate_limit_keys: IntGaugeVec,
    pub websockets_open: IntGauge,
    pub bytes: IntCounterVec,
    pub reloads: IntCounterVec,
    pub worker_restarts: IntCounter,
    pub slow_clients: IntCounterVec,
    pub concurrency_limit: IntGaugeVec,
    pub queue_length: IntGaugeVec,
    pub queue_wait: HistogramVec,
    pub shed: IntCounterVec,
    pub cache_requests: IntCounterVec,
    pub cache_coalesced: IntCounter,
    pub cache_evictions: IntCounter,
    pub cache_bytes: IntGauge,
    pub cache_entries: IntGauge,
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new_custom(Some("asgi_gate".into()), None)?;
    let requests = IntCounterVec::new(
        Opts::new(
            "requests_total",
            "Requests answered, by route pattern, method and status.",
        ),
        &["route", "method", "status"],
    )?;
    let duration = HistogramVec::new(
        HistogramOpts::new(
            "request_duration_seconds",
            "Time from request head to the end of the response body, by route pattern.",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
        &["route"],
    )?;
    let rejections = IntCounterVec::new(
        Opts::new(
            "rejections_total",
            "Requests the gate answered itself, by reason.",
        ),
        &["reason"],
    )?;
    let pool_connections = IntGaugeVec::new(
        Opts::new(
            "upstream_connections",
            "Upstream pool: open sockets busy with a request, idle, and requests waiting for one.",
        ),
        &["upstream", "state"],
    )?;
    let pool_waits = IntCounterVec::new(
        Opts::new(
            "upstream_pool_waits_total",
            "Connection attempts that had to wait because max_connections sockets were open.",
        ),
        &["upstream"],
    )?;
    let connect_errors = IntCounterVec::new(
        Opts::new(
            "upstream_connect_errors_total",
            "Failed connects to a worker socket.",
        ),
        &["upstream"],
    )?;
    let revocations = IntGauge::new("revocation_entries", "Live entries in the revocation list.")?;
    let revocation_outbox = IntGauge::new(
        "revocation_outbox",
        "Revocation changes applied here and waiting for Redis (revocation.redis).",
    )?;
    let rate_limit_keys = IntGaugeVec::new(
        Opts::new("rate_limit_keys", "Keys with a bucket, per named limit."),
        &["limit"],
    )?;
    let websockets_open = IntGauge::new(
        "websocket_connections_open",
        "WebSocket sessions currently relayed.",
    )?;
    let bytes = IntCounterVec::new(
        Opts::new(
            "response_bytes_total",
            "Response body bytes: from the worker (before compression) and to the client (after).",
        ),
        &["stage"],
    )?;
    let reloads = IntCounterVec::new(
        Opts::new("config_reloads_total", "Config reloads, by result."),
        &["result"],
    )?;
    let worker_restarts = IntCounter::new(
        "worker_restarts_total",
        "Workers restarted by the supervisor after they exited.",
    )?;
    let slow_clients = IntCounterVec::new(
        Opts::new(
            "client_cutoffs_total",
            "Client connections or streams the gate ended: a body stalled past body_timeout, no request within header_timeout, or over a connection cap.",
        ),
        &["reason"],
    )?;
    let concurrency_limit = IntGaugeVec::new(
        Opts::new(
            "upstream_concurrency_limit",
            "Requests a worker may have at once: its adaptive concurrency limit.",
        ),
        &["upstream", "socket"],
    )?;
    let queue_length = IntGaugeVec::new(
        Opts::new(
            "upstream_queue_length",
            "Requests waiting at the gate for a worker slot.",
        ),
        &["upstream"],
    )?;
    let queue_wait = HistogramVec::new(
        HistogramOpts::new(
            "upstream_queue_wait_seconds",
            "Time requests waited at the gate for a worker slot (granted or not).",
        )
        .buckets(vec![
            0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]),
        &["upstream"],
    )?;
    let shed = IntCounterVec::new(
        Opts::new(
            "upstream_shed_total",
            "Requests answered 503 without reaching a worker: refused by the overloaded queue, or waited queue_timeout.",
        ),
        &["upstream", "reason"],
    )?;
    let cache_requests = IntCounterVec::new(
        Opts::new(
            "cache_requests_total",
            "Requests on caching routes, by what the cache did: hit, miss, stale (served stale), bypass.",
        ),
        &["result"],
    )?;
    let cache_coalesced = IntCounter::new(
        "cache_coalesced_total",
        "Cache misses that waited for the same key's fill in flight instead of asking the worker at once.",
    )?;
    let cache_evictions = IntCounter::new(
        "cache_evictions_total",
        "Cache entries removed to stay within cache.max_size.",
    )?;
    let cache_bytes = IntGauge::new(
        "cache_bytes",
        "Bytes the response cache holds, as weighed against cache.max_size (keys, headers, bodies, overhead).",
    )?;
    let cache_entries = IntGauge::new("cache_entries", "Entries in the response cache.")?;
    registry.register(Box::new(cache_requests.clone()))?;
    registry.register(Box::new(cache_coalesced.clone()))?;
    registry.register(Box::new(cache_evictions.clone()))?;
    registry.register(Box::new(cache_bytes.clone()))?;
    registry.register(Box::new(cache_entries.clone()))?;
    registry.register(Box::new(concurrency_limit.clone()))?;
    registry.register(Box::new(queue_length.clone()))?;
    registry.register(Box::new(queue_wait.clone()))?;
    registry.register(Box::new(shed.clone()))?;
    registry.register(Box::new(slow_clients.clone()))?;
    registry.register(Box::new(requests.clone()))?;
    registry.register(Box::new(duration.clone()))?;
    registry.register(Box::new(rejections.clone()))?;
    registry.register(Box::new(pool_connections.clone()))?;
    registry.register(Box::new(pool_waits.clone()))?;
    registry.register(Box::new(connect_errors.clone()))?;
    registry.register(Box::new(revocations.clone()))?;
    registry.register(Box::new(revocation_outbox.clone()))?;
    registry.register(Box::new(rate_limit_keys.clone()))?;
    registry.register(Box::new(websockets_open.clone()))?;
    registry.register(Box::new(bytes.clone()))?;
    registry.register(Box::new(reloads.clone()))?;
    registry.register(Box::new(worker_restarts.clone()))?;
    Ok(Metrics {
        registry,
        requests,
        duration,
        rejections,
        pool_connections,
        pool_waits,
        connect_errors,
        revocations,
        revocation_outbox,
        rate_limit_keys,
        websockets_open,
        bytes,
        reloads,
        worker_restarts,
        slow_clients,
        concurrency_limit,
        queue_length,
        queue_wait,
        shed,
        cache_requests,
        cache_coalesced,
        cache_evictions,
        cache_bytes,
        cache_entries,
    })
}

/// The process's metrics. The names and label sets above are fixed, so
/// building them cannot fail at run time; if it ever did, the gate would
/// rather run without metrics than not at all.
pub static METRICS: LazyLock<Option<Metrics>> = LazyLock::new(|| match build() {
    Ok(m) => Some(m),
    Err(e) => {
        tracing::error!(error = %e, "metrics disabled");
        None
    }
});

pub fn get() -> Option<&'static Metrics> {
    METRICS.as_ref()
}

/// Counters for one route by (method, status), each resolved once: a label
/// lookup hashes every label on every call, this is a short scan under an
/// uncontended lock. Bounded: past 64 combinations it falls back to lookups.
#[derive(Default)]
pub struct RequestCounters {
    seen: Mutex<Vec<(&'static str, u16, IntCounter)>>,
}

impl RequestCounters {
    pub fn inc(&self, route: &str, method: &'static str, status: StatusCode) {
        let Some(m) = get() else { return };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let code = status.as_u16();
        if let Some((_, _, c)) = seen.iter().find(|(me, s, _)| *me == method && *s == code) {
            c.inc();
            return;
        }
        let c = m
            .requests
            .with_label_values(&[route, method, status.as_str()]);
        c.inc();
        if seen.len() < 64 {
            seen.push((method, code, c));
        }
    }
}

/// Requests that matched no route.
pub static UNROUTED: LazyLock<RequestCounters> = LazyLock::new(RequestCounters::default);

/// `asgi_gate_rejections_total{reason}`, resolved once per reason.
pub fn count_rejection(reason: &'static str) {
    static SEEN: LazyLock<Mutex<Vec<(&'static str, IntCounter)>>> =
        LazyLock::new(|| Mutex::new(Vec::new()));
    let Some(m) = get() else { return };
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    match seen.iter().find(|(r, _)| *r == reason) {
        Some((_, c)) => c.inc(),
        None => {
            let c = m.rejections.with_label_values(&[reason]);
            c.inc();
            seen.push((reason, c));
        }
    }
}

/// A bounded method label.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

impl Metrics {
    /// Every metric in the text exposition format (the gauges are set by the
    /// caller first: `admin::render_metrics`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// `asgi_gate_client_cutoffs_total{reason}`: `request_body`, `response_body`,
/// `first_request`, `idle`, `connection_limit`. Rare events, so the label is
/// looked up each time.
pub fn client_cutoff(reason: &str) {
    if let Some(m) = get() {
        m.slow_clients.with_label_values(&[reason]).inc();
    }
}
