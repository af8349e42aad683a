//! The access log: one line per request on stdout (JSON or text), written
//! when the response body ends, with per-request metrics recorded at the
//! same moment. Lines are buffered and written by a thread of their own, so
//! a slow stdout never stalls the runtime; if it stalls for long, lines are
//! dropped (and counted) rather than held without bound. Never logged: a
//! token, a cookie, a query string, an Authorization header.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, GateBody};
use crate::gate::router::RouteEntry;
use crate::json::push_json_str;
use crate::metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Text,
}

struct Logger {
    format: Format,
    buf: Mutex<Vec<u8>>,
    dropped: AtomicU64,
}

/// Lines held while stdout is slow; past this, new lines are dropped.
const MAX_BUFFERED: usize = 8 * 1024 * 1024;
const FLUSH_EVERY: Duration = Duration::from_millis(100);

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Response bytes as the client received them (after compression).
static CLIENT_BYTES: std::sync::LazyLock<Option<prometheus::IntCounter>> =
    std::sync::LazyLock::new(|| metrics::get().map(|m| m.bytes.with_label_values(&["client"])));

/// Turns the access log on (once, at start).
pub fn init(format: Format) {
    if LOGGER
        .set(Logger {
            format,
            buf: Mutex::new(Vec::with_capacity(64 * 1024)),
            dropped: AtomicU64::new(0),
        })
        .is_ok()
    {
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(|| loop {
                std::thread::sleep(FLUSH_EVERY);
                flush();
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access log writer");
        }
    }
}

/// Writes what is buffered (also called at exit).
pub fn flush() {
    let Some(logger) = LOGGER.get() else { return };
    let pending = std::mem::take(&mut *logger.buf.lock().unwrap_or_else(|p| p.into_inner()));
    if pending.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&pending);
    let _ = out.flush();
    let dropped = logger.dropped.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        tracing::warn!(dropped, "access log lines dropped: stdout too slow");
    }
}

fn enabled() -> bool {
    LOGGER.get().is_some()
}

/// What is known about a request by the time its response ends.
pub struct RequestLog {
    start: Instant,
    pub id: HeaderValue,
    pub client_ip: Option<IpAddr>,
    method: Method,
    /// Path without the query string; only kept when the access log is on.
    path: String,
    pub route: Option<Arc<RouteEntry>>,
    pub status: StatusCode,
    pub socket: Option<Arc<PathBuf>>,
    /// Time the request waited at the gate for a worker slot.
    pub queued: Option<Duration>,
    pub reason: Option<&'static str>,
    /// hit, miss, stale or bypass on a caching route; `None` elsewhere.
    pub cache: Option<&'static str>,
}

impl RequestLog {
    pub fn start(method: &Method, path: &str, id: HeaderValue) -> RequestLog {
        RequestLog {
            start: Instant::now(),
            id,
            client_ip: None,
            method: method.clone(),
            path: if enabled() {
                path.to_string()
            } else {
                String::new()
            },
            route: None,
            status: StatusCode::OK,
            socket: None,
            queued: None,
            reason: None,
            cache: None,
        }
    }

    /// The path in the form the gate routed and forwarded it.
    pub fn set_path(&mut self, path: &str) {
        if enabled() {
            self.path.clear();
            self.path.push_str(path);
        }
    }

    fn finish(&self, bytes: u64) {
        let elapsed = self.start.elapsed();
        let route = self
            .route
            .as_ref()
            .map(|r| r.conf.path.as_str())
            .unwrap_or("");
        if let Some(m) = metrics::get() {
            let method = metrics::method_label(&self.method);
            match &self.route {
                Some(r) => r.requests.inc(route, method, self.status),
                None => metrics::UNROUTED.inc(route, method, self.status),
            }
            match self.route.as_ref().and_then(|r| r.duration.as_ref()) {
                Some(h) => h.observe(elapsed.as_secs_f64()),
                None => m
                    .duration
                    .with_label_values(&[route])
                    .observe(elapsed.as_secs_f64()),
            }
            if let Some(reason) = self.reason {
                metrics::count_rejection(reason);
            }
            if let Some(c) = &*CLIENT_BYTES {
                c.inc_by(bytes);
            }
        }
        let Some(logger) = LOGGER.get() else { return };
        let line = match logger.format {
            Format::Json => self.json_line(route, bytes, elapsed),
            Format::Text => self.text_line(route, bytes, elapsed),
        };
        let mut buf = logger.buf.lock().unwrap_or_else(|p| p.into_inner());
        if buf.len() + line.len() > MAX_BUFFERED {
            logger.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        buf.extend_from_slice(line.as_bytes());
    }

    fn upstream(&self) -> &str {
        self.route
            .as_ref()
            .and_then(|r| match &r.conf.target {
                asgi_gate_config::RouteTarget::Upstream(u) if self.socket.is_some() => {
                    Some(u.as_str())
                }
                _ => None,
            })
            .unwrap_or("")
    }

    /// Written by hand: this runs once per request, and building a
    /// `serde_json::Value` costs more than the rest of the line.
    fn json_line(&self, route: &str, bytes: u64, elapsed: Duration) -> String {
        use std::fmt::Write as _;
        let mut line = String::with_capacity(320);
        line.push_str("{\"time\":\"");
        line.push_str(&rfc3339(started_at(elapsed)));
        line.push_str("\",\"request_id\":");
        push_json_str(&mut line, self.id.to_str().unwrap_or(""));
        line.push_str(",\"client_ip\":");
        match self.client_ip {
            Some(ip) => {
                let _ = write!(line, "\"{ip}\"");
            }
            None => line.push_str("null"),
        }
        line.push_str(",\"method\":");
        push_json_str(&mut line, self.method.as_str());
        line.push_str(",\"route\":");
        push_json_str(&mut line, route);
        line.push_str(",\"path\":");
        push_json_str(&mut line, &self.path);
        let _ = write!(
            line,
            ",\"status\":{},\"bytes\":{},\"duration_us\":{},\"upstream\":",
            self.status.as_u16(),
            bytes,
            elapsed.as_micros()
        );
        push_json_str(&mut line, self.upstream());
        line.push_str(",\"socket\":");
        match &self.socket {
            Some(s) => push_json_str(&mut line, &s.to_string_lossy()),
            None => line.push_str("null"),
        }
        line.push_str(",\"queue_us\":");
        match self.queued {
            Some(q) => {
                let _ = write!(line, "{}", q.as_micros());
            }
            None => line.push_str("null"),
        }
        line.push_str(",\"reason\":");
        match self.reason {
            Some(r) => push_json_str(&mut line, r),
            None => line.push_str("null"),
        }
        if let Some(c) = self.cache {
            line.push_str(",\"cache\":");
            push_json_str(&mut line, c);
        }
        line.push_str("}\n");
        line
    }

    fn text_line(&self, route: &str, bytes: u64, elapsed: Duration) -> String {
        format!(
            "{} {} \"{} {}\" {} {} {}us id={} route={} upstream={} queue={} reason={}{}\n",
            rfc3339(started_at(elapsed)),
            self.client_ip
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "-".into()),
            self.method,
            self.path.escape_debug(),
            self.status.as_u16(),
            bytes,
            elapsed.as_micros(),
            self.id.to_str().unwrap_or("-"),
            if route.is_empty() { "-" } else { route },
            match self.upstream() {
                "" => "-",
                u => u,
            },
            match self.queued {
                Some(q) => format!("{}us", q.as_micros()),
                None => "-".into(),
            },
            self.reason.unwrap_or("-"),
            match self.cache {
                Some(c) => format!(" cache={c}"),
                None => String::new(),
            },
        )
    }
}

pin_project_lite::pin_project! {
    /// The response body as the client receives it; logs the request when
    /// the body ends or is dropped (client gone).
    pub struct LoggedBody {
        #[pin]
        inner: GateBody,
        log: Option<Box<RequestLog>>,
        bytes: u64,
    }

    impl PinnedDrop for LoggedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(log) = this.log.take() {
                log.finish(*this.bytes);
            }
        }
    }
}

impl LoggedBody {
    pub fn new(inner: GateBody, log: RequestLog) -> Self {
        LoggedBody {
            inner,
            log: Some(Box::new(log)),
            bytes: 0,
        }
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let r = ready!(this.inner.poll_frame(cx));
        match &r {
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    *this.bytes += d.len() as u64;
                }
            }
            // Ended: log now rather than when hyper gets round to dropping.
            None => {
                if let Some(log) = this.log.take() {
                    log.finish(*this.bytes);
                }
            }
            Some(Err(_)) => {}
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The wall-clock start of a request that took `elapsed`: read only when a
/// line is written, so a gate without an access log reads one clock, not two.
fn started_at(elapsed: Duration) -> SystemTime {
    let now = SystemTime::now();
    now.checked_sub(elapsed).unwrap_or(now)
}

/// `2026-11-25T15:04:05.123Z`
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_is_one_valid_json_object() {
        let mut log = RequestLog::start(&Method::GET, "/x", HeaderValue::from_static("rid-1"));
        log.path = "/a\"b".into();
        log.client_ip = Some("127.0.0.1".parse().unwrap());
        log.status = StatusCode::NOT_FOUND;
        log.reason = Some("no_route");
        let line = log.json_line("", 42, Duration::from_micros(7));
        assert!(line.ends_with("}\n") && line.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["path"], "/a\"b");
        assert_eq!(v["status"], 404);
        assert_eq!(v["bytes"], 42);
        assert_eq!(v["duration_us"], 7);
        assert_eq!(v["client_ip"], "127.0.0.1");
        assert_eq!(v["reason"], "no_route");
        assert_eq!(v["request_id"], "rid-1");
        assert!(v["socket"].is_null());
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_619_045_123);
        assert_eq!(rfc3339(t), "2026-11-25T15:04:05.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
