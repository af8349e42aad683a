//! The response cache: storage, lookup and request coalescing. What may be
//! stored, for how long, and under which key is `filters::cache`'s (RFC
//! 9111 §3, §4; RFC 5861); this module keeps the bytes and decides, per
//! request, hit, stale, miss or bypass.
//!
//! Storage is a `moka::sync::Cache` bounded by bytes: each entry weighs its
//! key, headers, body and a fixed overhead, and TinyLFU admission keeps a
//! flood of one-off keys from evicting the popular ones. moka is bounded,
//! concurrent and well kept; a `DashMap` would need an eviction policy of
//! our own. Entries expire when no stale window can use them any longer.
//! The sync cache, not moka's future one: nothing here awaits inside the
//! cache, and its get/insert are short (housekeeping runs inside calls).
//!
//! What is stored is the response as the client receives it, after the
//! gate's compression, under a key that includes the content coding the
//! gate negotiated: measured on the test app's 64 KiB JSON (criterion,
//! `benches/benches/compression.rs`, group `cache_hit`), compressing it
//! costs 230 µs (gzip 6) or 454 µs (br 4) and a full copy of the stored
//! bytes 1.8 µs, so a hit must not compress (docs/cache.md). The price:
//! up to one copy per coding (br, gzip, zstd, identity) per response.
//!
//! Coalescing (`fill`): the first miss for a key fills it; concurrent
//! misses wait up to `lock_timeout` for that fill (nginx's
//! `proxy_cache_lock`), then look again and, still missing, go to the
//! worker themselves. A fill that ends without storing (error, uncacheable
//! response, client gone before the answer) wakes them at once.

mod fill;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asgi_gate_config::{Cache as CacheConf, RouteCache};
use asgi_gate_filters::cache::{self as policy, Freshness, KeyParts, State};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use moka::notification::RemovalCause;

use crate::body::GateBody;

pub use fill::Fill;

/// `X-Cache` on every response of a caching route.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Bytes counted per entry besides its key, headers and body: moka's node
/// and the entry's own structs (measured order of size, rounded up).
const ENTRY_OVERHEAD: u64 = 320;
/// Per header field: `HeaderMap` bucket and index.
const HEADER_OVERHEAD: u64 = 48;

/// One stored response.
pub struct Entry {
    pub status: StatusCode,
    /// As sent to the client, with `Content-Length` set; no hop-by-hop,
    /// surrogate-key or per-request (`X-Request-Id`, rate-limit) headers.
    pub headers: HeaderMap,
    pub body: Bytes,
    pub freshness: Freshness,
    /// The decoded path, for purges by prefix.
    pub path: Box<str>,
    /// Surrogate keys, for purges by tag.
    pub tags: Vec<String>,
}

/// What a key holds: the response, or (when the response had `Vary`) the
/// header names its variants are keyed by (a second lookup).
#[derive(Clone)]
enum Slot {
    Entry(Arc<Entry>),
    Vary {
        names: Arc<[HeaderName]>,
        path: Arc<str>,
        until_ms: u64,
    },
}

impl Slot {
    fn until_ms(&self) -> u64 {
        match self {
            Slot::Entry(e) => e.freshness.stale_until_ms(),
            Slot::Vary { until_ms, .. } => *until_ms,
        }
    }

    fn path(&self) -> &str {
        match self {
            Slot::Entry(e) => &e.path,
            Slot::Vary { path, .. } => path,
        }
    }
}

#[allow(clippy::borrowed_box)] // moka hands the key as it is stored
fn weigh(key: &Box<[u8]>, slot: &Slot) -> u32 {
    let value = match slot {
        Slot::Entry(e) => {
            let headers: u64 = e
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().len() + v.len()) as u64 + HEADER_OVERHEAD)
                .sum();
            let tags: u64 = e.tags.iter().map(|t| t.len() as u64 + 24).sum();
            headers + tags + e.body.len() as u64 + e.path.len() as u64
        }
        Slot::Vary { names, path, .. } => {
            names
                .iter()
                .map(|n| n.as_str().len() as u64 + 24)
                .sum::<u64>()
                + path.len() as u64
        }
    };
    u32::try_from(ENTRY_OVERHEAD + key.len() as u64 + value).unwrap_or(u32::MAX)
}

/// Entries live until no stale window can use them.
struct UntilUnused;

impl UntilUnused {
    fn left(slot: &Slot) -> Option<Duration> {
        let now = crate::clock::unix_now_ms();
        Some(Duration::from_millis(slot.until_ms().saturating_sub(now)))
    }
}

impl moka::Expiry<Box<[u8]>, Slot> for UntilUnused {
    fn expire_after_create(&self, _: &Box<[u8]>, v: &Slot, _: Instant) -> Option<Duration> {
        Self::left(v)
    }

    fn expire_after_update(
        &self,
        _: &Box<[u8]>,
        v: &Slot,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Self::left(v)
    }
}

/// Counters resolved once (a label lookup hashes on every call).
struct Counters {
    results: [Option<prometheus::IntCounter>; 4],
    coalesced: Option<prometheus::IntCounter>,
}

static COUNTERS: std::sync::LazyLock<Counters> = std::sync::LazyLock::new(|| {
    let m = crate::metrics::get();
    let result = |r: &str| m.map(|m| m.cache_requests.with_label_values(&[r]));
    Counters {
        results: [
            result("hit"),
            result("miss"),
            result("stale"),
            result("bypass"),
        ],
        coalesced: m.map(|m| m.cache_coalesced.clone()),
    }
});

/// What the cache did for a request: the access log's `cache` field and
/// the `X-Cache` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
    Stale,
    Bypass,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Stale => "stale",
            Outcome::Bypass => "bypass",
        }
    }

    fn header(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Outcome::Hit => "HIT",
            Outcome::Miss => "MISS",
            Outcome::Stale => "STALE",
            Outcome::Bypass => "BYPASS",
        })
    }

    fn count(self) {
        let i = self as usize;
        if let Some(c) = &COUNTERS.results[i] {
            c.inc();
        }
    }

    /// Marks a response of a caching route.
    pub fn mark(self, headers: &mut HeaderMap) {
        headers.insert(X_CACHE.clone(), self.header());
    }
}

/// The store every caching route shares.
pub struct Store {
    entries: moka::sync::Cache<Box<[u8]>, Slot>,
    /// Fills in flight, by primary key (`fill`).
    fills: Mutex<HashMap<Box<[u8]>, tokio::sync::watch::Receiver<()>>>,
    /// Bytes held by copies being filled (at most `max_size`).
    filling: AtomicU64,
    pub conf: CacheConf,
}

impl Store {
    pub fn new(conf: &CacheConf) -> Store {
        let evictions = crate::metrics::get().map(|m| m.cache_evictions.clone());
        let entries = moka::sync::Cache::builder()
            .max_capacity(conf.max_size)
            .weigher(weigh)
            .expire_after(UntilUnused)
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    if let Some(c) = &evictions {
                        c.inc();
                    }
                }
            })
            .build();
        Store {
            entries,
            fills: Mutex::new(HashMap::new()),
            filling: AtomicU64::new(0),
            conf: conf.clone(),
        }
    }

    /// Bytes held (weights) and entries, after pending housekeeping.
    pub fn usage(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.weighted_size(), self.entries.entry_count())
    }

    /// Removes every entry whose decoded path starts with `prefix` (all
    /// with `""`), or that carries surrogate key `tag`. Returns how many.
    pub fn purge(&self, prefix: Option<&str>, tag: Option<&str>) -> u64 {
        if prefix.is_none() && tag.is_none() {
            let n = self.usage().1;
            self.entries.invalidate_all();
            self.entries.run_pending_tasks();
            return n;
        }
        let mut n = 0;
        for (k, slot) in self.entries.iter() {
            let by_prefix = prefix.is_some_and(|p| slot.path().starts_with(p));
            let by_tag = match (&slot, tag) {
                (Slot::Entry(e), Some(t)) => e.tags.iter().any(|x| x == t),
                _ => false,
            };
            if by_prefix || by_tag {
                self.entries.invalidate(&*k);
                // Responses, not the `Vary` slots that point at them.
                n += u64::from(matches!(slot, Slot::Entry(_)));
            }
        }
        self.entries.run_pending_tasks();
        n
    }

    /// The entry for this request's variant, if any.
    fn find(&self, primary: &[u8], req: &HeaderMap) -> Option<Arc<Entry>> {
        match self.entries.get(primary)? {
            Slot::Entry(e) => Some(e),
            Slot::Vary { names, .. } => {
                let key = policy::variant_key(primary, &names, req)?;
                match self.entries.get(key.as_slice())? {
                    Slot::Entry(e) => Some(e),
                    Slot::Vary { .. } => None,
                }
            }
        }
    }

    /// Stores a response under its variant's key.
    fn put(&self, primary: &[u8], req: &HeaderMap, entry: Entry, vary: Vec<HeaderName>) {
        let entry = Arc::new(entry);
        if vary.is_empty() {
            self.entries.insert(primary.into(), Slot::Entry(entry));
            return;
        }
        let Some(key) = policy::variant_key(primary, &vary, req) else {
            return;
        };
        // The names slot lives as long as the longest-lived variant it
        // has seen (a newer response's names replace older ones).
        let until_ms = match self.entries.get(primary) {
            Some(Slot::Vary {
                names, until_ms, ..
            }) if *names == *vary => until_ms.max(entry.freshness.stale_until_ms()),
            _ => entry.freshness.stale_until_ms(),
        };
        let path: Arc<str> = Arc::from(&*entry.path);
        self.entries.insert(key.into(), Slot::Entry(entry));
        self.entries.insert(
            primary.into(),
            Slot::Vary {
                names: vary.into(),
                path,
                until_ms,
            },
        );
    }
}

/// What the pipeline knows about a request on a caching route.
pub struct Request<'r> {
    pub method: &'r Method,
    /// As the worker would receive them (forwarding headers set,
    /// `Accept-Encoding` removed on compressing routes).
    pub headers: &'r HeaderMap,
    pub proto: &'r str,
    pub host: &'r [u8],
    /// Forwarded (canonical) path and query: the key.
    pub path: &'r str,
    pub query: Option<&'r str>,
    /// Decoded path: what purges by prefix compare.
    pub decoded_path: &'r str,
    /// The coding the gate will send (it compresses on this route).
    pub coding: Option<&'r str>,
    /// The route compresses (then `Accept-Encoding` never reaches the
    /// worker, and `coding` keys the copies).
    pub gate_compresses: bool,
    /// The route's `key_claim` value from the verified token.
    pub claim: Option<&'r str>,
    /// The client sent `Authorization` (before the gate may strip it).
    pub had_authorization: bool,
    /// The request has a body: the worker may read it, the key does not
    /// hold it ("fat GET" poisoning).
    pub has_body: bool,
}

/// The cache's answer before the worker is asked. Moved once, at once:
/// boxing the response would cost an allocation per hit.
#[allow(clippy::large_enum_variant)]
pub enum Lookup {
    /// Not for the cache; the response is not stored either.
    Bypass,
    /// Served from the cache (fresh, or stale while one refresh runs:
    /// then `Some(fill)`, which the caller runs in the background).
    Served(Response<GateBody>, Outcome, Option<Box<Fill>>),
    /// Ask the worker; hand its response to `Fill::finish`.
    Miss(Box<Fill>),
}

impl Store {
    /// Looks the request up; on a miss, takes the key's fill or waits for
    /// the one in flight (up to `lock_timeout`), then looks again.
    pub async fn lookup(self: &Arc<Self>, route: &RouteCache, req: &Request<'_>) -> Lookup {
        let credentialed = req.had_authorization || req.headers.contains_key(header::COOKIE);
        // `had_authorization`: the gate may have removed the header by now.
        let bypass = policy::bypass(req.method, req.headers, route.authorized).is_some()
            || (req.had_authorization && !route.authorized)
            || req.has_body
            // A key claim the token lacks: no key to keep it apart.
            || (route.key_claim.is_some() && req.claim.is_none())
            || policy::has_preconditions(req.headers);
        if bypass {
            Outcome::Bypass.count();
            return Lookup::Bypass;
        }
        let primary = policy::primary_key(&KeyParts {
            proto: req.proto,
            host: req.host,
            path: req.path,
            query: req.query,
            coding: req.coding,
            claim: req.claim,
        });
        let usable = |e: &Arc<Entry>| !credentialed || e.freshness.shared_with_auth;
        let mut waited = false;
        loop {
            let now = crate::clock::unix_now_ms();
            let found = self.find(&primary, req.headers).filter(usable);
            let state = found.as_ref().map(|e| e.freshness.state(now));
            match (&found, state) {
                (Some(e), Some(State::Fresh)) => {
                    Outcome::Hit.count();
                    return Lookup::Served(serve(e, req, Outcome::Hit, now), Outcome::Hit, None);
                }
                (Some(e), Some(State::StaleWhileRevalidate)) => {
                    Outcome::Stale.count();
                    // One refresh at a time; the others just serve stale.
                    let refresh = self.try_lock(&primary).map(|guard| {
                        Fill::new(
                            self.clone(),
                            primary.clone(),
                            req,
                            credentialed,
                            Some(guard),
                            None,
                        )
                        .refreshing()
                    });
                    let resp = serve(e, req, Outcome::Stale, now);
                    return Lookup::Served(resp, Outcome::Stale, refresh);
                }
                _ => {}
            }
            let stale = found.filter(|_| state == Some(State::StaleIfError));
            // HEAD never fills (its response has no body); after a wait,
            // go to the worker like nginx after proxy_cache_lock_timeout.
            if req.method == Method::HEAD || waited {
                Outcome::Miss.count();
                return Lookup::Miss(Fill::new(
                    self.clone(),
                    primary,
                    req,
                    credentialed,
                    None,
                    stale,
                ));
            }
            match self.lock_or_wait(&primary) {
                Ok(guard) => {
                    Outcome::Miss.count();
                    return Lookup::Miss(Fill::new(
                        self.clone(),
                        primary,
                        req,
                        credentialed,
                        Some(guard),
                        stale,
                    ));
                }
                Err(mut rx) => {
                    if let Some(c) = &COUNTERS.coalesced {
                        c.inc();
                    }
                    // Err: the fill ended (its sender dropped), stored or not.
                    let _ = tokio::time::timeout(self.conf.lock_timeout, rx.changed()).await;
                    waited = true;
                }
            }
        }
    }
}

/// A stored response as this request's answer: `Age` (RFC 9111 §5.1),
/// 304 when the client's validators match (RFC 9110 §13.1), no body for
/// HEAD.
fn serve(e: &Entry, req: &Request<'_>, outcome: Outcome, now_ms: u64) -> Response<GateBody> {
    let not_modified = e.status == StatusCode::OK && policy::not_modified(req.headers, &e.headers);
    let body = match req.method == Method::HEAD || not_modified {
        true => GateBody::empty(),
        false => GateBody::full(e.body.clone()),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = match not_modified {
        true => StatusCode::NOT_MODIFIED,
        false => e.status,
    };
    let h = resp.headers_mut();
    if not_modified {
        // RFC 9110 §15.4.5: the fields a 200 would have sent that describe it.
        for name in [
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::ETAG,
            header::EXPIRES,
            header::VARY,
            header::LAST_MODIFIED,
        ] {
            for v in e.headers.get_all(&name) {
                h.append(name.clone(), v.clone());
            }
        }
    } else {
        *h = e.headers.clone();
    }
    let h = resp.headers_mut();
    h.insert(header::AGE, HeaderValue::from(e.freshness.age_secs(now_ms)));
    outcome.mark(h);
    resp
}

#[cfg(test)]
mod tests;
