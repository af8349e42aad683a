//! The request pipeline: the one place that runs a request through the
//! gate's policies, in request order. Read top-down, it is the life of a
//! request; every refusal is a `Reject`, turned into a response by
//! `reject::response` and nowhere else.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use asgi_gate_filters::compression::{Coding, Policy as CompressionPolicy};
use asgi_gate_filters::jwt::{self, AuthError, Claims, TokenLocation};
use asgi_gate_filters::limits;
use asgi_gate_filters::ratelimit::{self, ClaimValue, RateLimit};
use asgi_gate_filters::{
    cors, forwarding, header_names, hosts, path, request_id, security_headers,
};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;

use crate::accesslog::{LoggedBody, RequestLog};
use crate::body::{buffered_to_client, to_client, GateBody};
use crate::cluster::SharedLimits;
use crate::gate::router::{RouteEntry, Target};
use crate::gate::Gate;
use crate::reject::{self, Reject};
use crate::steps::auth::AuthSlot;
use crate::steps::cache::{self, Lookup};
use crate::steps::compress;
use crate::steps::websocket;
use crate::upstream::{RequestBody, Upstream, UpstreamError};

/// What the gate knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's IP, IPv4-mapped as IPv4.
    pub peer_ip: IpAddr,
    /// `peer_ip` as an X-Forwarded-For value, made once per connection.
    pub peer_value: HeaderValue,
    /// "http" or "https": what the worker is told in X-Forwarded-Proto.
    pub proto: &'static str,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, proto: &'static str) -> ConnInfo {
        let peer_ip = forwarding::canonical(peer.ip());
        ConnInfo {
            peer,
            peer_ip,
            peer_value: forwarding::ip_value(peer_ip),
            proto,
        }
    }
}

/// Handles one request; never fails: a refusal is a response too. The
/// request is logged (and counted) when its response body ends. Returns
/// hyper's service result itself, so that no wrapper future copies this one.
pub async fn handle(
    gate: Arc<Gate>,
    conn: Arc<ConnInfo>,
    mut req: Request<Incoming>,
) -> Result<Response<LoggedBody>, Infallible> {
    let id = request_id::ensure(req.headers_mut());
    let mut log = RequestLog::start(req.method(), req.uri().path(), id.clone());
    let mut cors = None;
    let mut resp = match process(&gate, &conn, req, &mut log, &mut cors).await {
        Ok(resp) => resp,
        Err(rej) => {
            log.reason = Some(rej.reason());
            reject::response(&rej)
        }
    };
    resp.headers_mut()
        .insert(request_id::X_REQUEST_ID.clone(), id);
    // Rejections too: a browser script may read the gate's 401 or 429.
    if let Some((policy, origin)) = &cors {
        policy.apply(origin, resp.headers_mut());
    }
    if let Some(policy) = &gate.security_headers {
        security_headers::apply(resp.headers_mut(), policy, conn.proto == "https");
    }
    log.status = resp.status();
    Ok(resp.map(|body| LoggedBody::new(body, log)))
}

/// The route's CORS policy and the request's `Origin`, for the response.
type CorsReply = Option<(Arc<cors::Policy>, HeaderValue)>;

async fn process(
    gate: &Gate,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    log: &mut RequestLog,
    cors_reply: &mut CorsReply,
) -> Result<Response<GateBody>, Reject> {
    // 1. Size limits on the head as it arrived; then hop-by-hop headers (and
    //    those the client names in `Connection`) go, before the gate adds any
    //    of its own, and so do names a worker could fold onto one of the
    //    gate's, and forwarding headers from a peer the gate does not trust.
    limits::check_head(
        req.method(),
        req.uri(),
        req.headers(),
        gate.limits.max_header_bytes,
    )?;
    limits::check_content_length(req.headers(), gate.limits.max_body)?;
    let is_websocket = websocket::is_upgrade(&req);
    forwarding::strip_hop_by_hop(req.headers_mut(), is_websocket);
    header_names::strip_impostors(req.headers_mut(), &gate.owned_headers, gate.underscores);
    if !forwarding::is_trusted(conn.peer_ip, &gate.trusted_proxies) {
        forwarding::strip_foreign_forwarding(req.headers_mut());
    }
    let host = forwarding::request_host(req.headers(), req.uri())
        .map_err(|_| Reject::BadRequest("more than one Host header"))?;
    if let Some(h) = &host {
        if !h.to_str().is_ok_and(hosts::is_valid) {
            return Err(Reject::BadRequest("the Host header is not a valid host"));
        }
    }
    if let Some(allowed) = &gate.allowed_hosts {
        let ok = host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .is_some_and(|h| hosts::is_allowed(h, allowed));
        if !ok {
            return Err(Reject::BadRequest("this host is not served here"));
        }
    }
    if let (Some(port), "http") = (gate.https_redirect, conn.proto) {
        return redirect_to_https(req.uri(), host.as_ref(), port);
    }

    // 2. Route on the path the worker will see (uvicorn percent-decodes it),
    //    then method; the worker gets the canonical encoding of that same
    //    path. A CORS preflight is routed by the method it asks about and,
    //    on a route that does CORS, answered here.
    let client_ip = forwarding::client_ip(conn.peer_ip, req.headers(), &gate.trusted_proxies);
    log.client_ip = Some(client_ip);
    let preflight = match req.method() == Method::OPTIONS {
        true => cors::preflight_method(req.headers()),
        false => None,
    };
    let canonical = path::canonicalize(req.uri().path(), gate.encoded_slash)
        .map_err(|e| Reject::BadRequest(e.detail()))?;
    let path = &*canonical.decoded;
    let mut route = gate
        .router
        .find(path, preflight.as_ref().unwrap_or(req.method()))?
        .clone();
    if preflight.is_some() {
        log.route = Some(route.clone());
        match &route.cors {
            Some(policy) => return answer_preflight(policy, req.headers()),
            // The gate does no CORS here: an OPTIONS request like any other.
            None => route = gate.router.find(path, req.method())?.clone(),
        }
    }
    log.route = Some(route.clone());
    // Purges by prefix compare the decoded path (cache routes only; boxed,
    // as everything the cache adds to the request's future).
    let mut cache_id: Option<Box<CacheId>> = route.cache.as_ref().map(|_| {
        Box::new(CacheId {
            decoded_path: path.into(),
            key_claim: None,
        })
    });
    if let Cow::Owned(encoded) = canonical.encoded {
        log.set_path(&encoded);
        let query = req.uri().query().map(str::to_owned);
        *req.uri_mut() = with_path_and_query(req.uri(), &encoded, query.as_deref())?;
    }
    if let (Some(policy), Some(origin)) = (&route.cors, req.headers().get(header::ORIGIN)) {
        *cors_reply = Some((policy.clone(), origin.clone()));
    }

    // 3. Rate limits keyed by client IP or header, before any token work.
    let mut limit_headers = HeaderMap::new();
    let keys = LimitKeys {
        client_ip,
        headers: req.headers(),
        claims: None,
    };
    rate_limit(gate, &route.limits_before_auth, keys, &mut limit_headers).await?;

    // 4. Identity: claim headers are the gate's alone, on every route; then
    //    the JWT, revocation, scopes and the limits keyed by claims.
    jwt::strip_client_claim_headers(req.headers_mut(), &gate.claim_headers);
    let had_authorization = req.headers().contains_key(header::AUTHORIZATION);
    if let Some(slot) = &route.auth {
        let key_claim = authenticate(
            gate,
            slot,
            &route,
            client_ip,
            &mut req,
            is_websocket,
            &mut limit_headers,
        )
        .await?;
        if let Some(id) = &mut cache_id {
            id.key_claim = key_claim;
        }
    }

    // 5. What the worker receives.
    let on_upgrade = is_websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // One growth of the map for the three X-Forwarded-* (not one per insert;
    // and only on requests that go on, not on rejections).
    let _ = parts.headers.try_reserve(3);
    if on_upgrade.is_some() && route.websocket.is_some() {
        websocket::remove_extension_offers(&mut parts.headers);
    }
    let client_value = match client_ip == conn.peer_ip {
        true => conn.peer_value.clone(),
        false => forwarding::ip_value(client_ip),
    };
    forwarding::set_forwarded(&mut parts.headers, client_value, conn.proto, host.clone());
    let method = parts.method.clone();
    let compression = match (&route.compression, &on_upgrade) {
        (Some(policy), None) => {
            let to_worker = matches!(route.target, Target::Upstream(_));
            let accepted = compress::negotiate(policy, &mut parts.headers, to_worker);
            Some((policy, accepted))
        }
        _ => None,
    };
    forwarding::join_cookies(&mut parts.headers);
    if !parts.headers.contains_key(header::HOST) {
        // h2 requests carry :authority instead; uvicorn wants a Host.
        let host = host.unwrap_or(HeaderValue::from_static("localhost"));
        parts.headers.insert(header::HOST, host);
    }

    // 6. The response cache, on routes with `cache:`: after the limits and
    //    the JWT (a stored answer is never a way around them), before a
    //    worker slot is taken. A stored answer goes back now; a miss either
    //    fills the key (the others wait for it, up to `lock_timeout`) or
    //    goes to the worker after that wait.
    let mut fill = None;
    let mut cached = None;
    if let (Some(rc), Some(store), None) = (&route.cache, &gate.cache, &on_upgrade) {
        let coding = compression.and_then(|(_, c)| c).map(|c| c.as_str());
        let key = CacheKeyParts {
            gate_compresses: compression.is_some(),
            proto: conn.proto,
            decoded_path: cache_id.as_ref().map_or("", |id| &id.decoded_path),
            coding,
            claim: cache_id.as_ref().and_then(|id| id.key_claim.as_deref()),
            had_authorization,
            has_body: !hyper::body::Body::is_end_stream(&body),
        };
        let lookup = Box::pin(cache_lookup(store, rc, &parts, key)).await;
        match lookup {
            Lookup::Bypass => cached = Some(cache::Outcome::Bypass),
            Lookup::Served(mut resp, outcome, refresh) => {
                if let (Some(refresh), Target::Upstream(index)) = (refresh, &route.target) {
                    if let Some(upstream) = gate.upstreams.get(*index) {
                        let compression = compression.map(|(p, c)| (p.clone(), c));
                        spawn_refresh(upstream.clone(), &parts, compression, refresh);
                    }
                }
                log.cache = Some(outcome.as_str());
                resp.headers_mut().extend(limit_headers);
                return Ok(resp);
            }
            Lookup::Miss(f) => {
                f.prepare(&mut parts.headers);
                fill = Some(f);
            }
        }
    }

    // 7. A static route's file, or the worker's answer over a pooled
    //    connection, streamed back.
    let fetched = match &route.target {
        Target::Static(files) => {
            // Boxed, as the other rare paths: the request's future is moved
            // a few times on its way, so it is kept to what most requests need.
            Box::pin(files.serve(&parts.method, parts.uri.path(), &parts.headers))
                .await
                .map_err(Reject::from)
        }
        Target::Upstream(index) => 'fetch: {
            // Inline, not a function of its own: a called future would
            // add its own copy of the request to the request's future.
            // Errors leave the block (`fail!`) so that a stale copy may
            // answer instead (stale-if-error).
            macro_rules! fail {
                ($label:lifetime, $e:expr) => {
                    match $e {
                        Ok(v) => v,
                        Err(e) => break $label Err(Reject::from(e)),
                    }
                };
            }
            let upstream = fail!('fetch, gate.upstreams.get(*index).ok_or(Reject::BadGateway));
            // The body is read whole here first (unless the route streams
            // uploads), so a slow upload never holds a worker slot; then
            // the request waits at the gate for a slot under the worker's
            // concurrency limit, and goes.
            let mut body = RequestBody::new(body, gate.limits.max_body, gate.limits.body_timeout);
            if route.conf.buffer_request && on_upgrade.is_none() && !body.is_empty() {
                let buffered = Box::pin(body.buffer(gate.limits.max_buffered)).await;
                let (buffered, len) = fail!('fetch, buffered.map_err(UpstreamError::from));
                body = buffered;
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            // WebSocket handshakes skip the queue: a session is no load
            // the limit can measure, and a burst of reconnects is not overload.
            let admit = on_upgrade.is_none();
            let sent = fail!(
                'fetch,
                upstream
                    .send(Request::from_parts(parts, body), admit)
                    .await
            );
            log.socket = Some(sent.socket);
            log.queued = Some(sent.queued);
            Ok(match on_upgrade {
                Some(client_side) => fail!(
                    'fetch,
                    websocket::relay(
                        &gate.websockets_open,
                        gate.limits.websocket_idle_timeout,
                        route.websocket.clone(),
                        sent.response,
                        sent.in_flight,
                        client_side,
                    )
                ),
                None => match route.conf.buffer_response {
                    Some(max) => fail!(
                        'fetch,
                        Box::pin(buffered_to_client(
                            sent.response,
                            sent.in_flight,
                            max,
                            upstream.read_timeout,
                        ))
                        .await
                    ),
                    None => to_client(sent.response, sent.in_flight),
                },
            })
        }
    };

    // 8. Compression, the cache's copy (or a stale one if the worker
    //    failed), and the response headers the policies asked for.
    let mut resp = match (fetched, fill) {
        (Err(e), Some(fill)) => {
            let stale = fill.stale_on_error().ok_or(e)?;
            cached = Some(cache::Outcome::Stale);
            stale
        }
        (Err(e), None) => return Err(e),
        (Ok(resp), fill) => match (compression, fill) {
            (None, None) => resp,
            (compression, fill) => {
                let respond = compress_and_fill(compression, &method, resp, fill);
                let (resp, outcome) = Box::pin(respond).await?;
                cached = outcome.or(cached);
                resp
            }
        },
    };
    if let Some(outcome) = cached {
        log.cache = Some(outcome.as_str());
        if outcome == cache::Outcome::Bypass {
            // Surrogate keys are the gate's, stored or not.
            asgi_gate_filters::cache::strip_surrogate_headers(resp.headers_mut());
            outcome.mark(resp.headers_mut());
        }
    }
    if !limit_headers.is_empty() {
        resp.headers_mut().extend(limit_headers);
    }
    Ok(resp)
}

/// Step 8's compression and the cache's copy (its body read ahead), one
/// boxed future for both: each await of its own would grow every
/// request's future.
async fn compress_and_fill(
    compression: Option<(&Arc<CompressionPolicy>, Option<Coding>)>,
    method: &Method,
    mut resp: Response<GateBody>,
    fill: Option<Box<cache::Fill>>,
) -> Result<(Response<GateBody>, Option<cache::Outcome>), Reject> {
    if let Some((policy, accepted)) = compression {
        resp = compress::respond(policy, method, accepted, resp).await?;
    }
    Ok(match fill {
        Some(fill) => {
            let (resp, outcome) = fill.finish(resp).await;
            (resp, Some(outcome))
        }
        None => (resp, None),
    })
}

/// What a caching route's key takes from earlier steps.
struct CacheId {
    decoded_path: Box<str>,
    /// The route's `key_claim`, from the verified token.
    key_claim: Option<String>,
}

/// What the cache key needs besides the request head.
struct CacheKeyParts<'r> {
    gate_compresses: bool,
    proto: &'r str,
    decoded_path: &'r str,
    coding: Option<&'r str>,
    claim: Option<&'r str>,
    had_authorization: bool,
    has_body: bool,
}

/// Step 6's lookup (boxed by the caller: only caching routes carry it).
async fn cache_lookup(
    store: &Arc<cache::Store>,
    route: &asgi_gate_config::RouteCache,
    parts: &http::request::Parts,
    key: CacheKeyParts<'_>,
) -> Lookup {
    let req = cache::Request {
        method: &parts.method,
        headers: &parts.headers,
        proto: key.proto,
        host: parts
            .headers
            .get(header::HOST)
            .map_or(&[][..], |h| h.as_bytes()),
        path: parts.uri.path(),
        query: parts.uri.query(),
        decoded_path: key.decoded_path,
        coding: key.coding,
        gate_compresses: key.gate_compresses,
        claim: key.claim,
        had_authorization: key.had_authorization,
        has_body: key.has_body,
    };
    store.lookup(route, &req).await
}

/// stale-while-revalidate (RFC 5861 §3): the stale copy went to the client;
/// this asks the worker again in the background, as the request that
/// filled it would have, and stores the answer. Its fill lock keeps it to
/// one refresh per key; dropping it (any failure) releases the key.
fn spawn_refresh(
    upstream: Arc<Upstream>,
    parts: &http::request::Parts,
    compression: Option<(Arc<CompressionPolicy>, Option<Coding>)>,
    fill: Box<cache::Fill>,
) {
    let mut req = Request::new(RequestBody::empty());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    fill.prepare(req.headers_mut());
    tokio::spawn(async move {
        let Ok(sent) = upstream.send(req, true).await else {
            return;
        };
        let mut resp = to_client(sent.response, sent.in_flight);
        if let Some((policy, accepted)) = &compression {
            match compress::respond(policy, &Method::GET, *accepted, resp).await {
                Ok(r) => resp = r,
                Err(_) => return,
            }
        }
        // Reading the body to its end is what stores it.
        let (resp, _) = fill.finish(resp).await;
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
    });
}

/// 204 with the CORS headers, or 400 saying what the policy refuses.
fn answer_preflight(
    policy: &cors::Policy,
    headers: &HeaderMap,
) -> Result<Response<GateBody>, Reject> {
    let allowed = policy
        .preflight(headers)
        .map_err(|e| Reject::BadRequest(e.detail()))?;
    let mut resp = Response::new(GateBody::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    *resp.headers_mut() = allowed;
    Ok(resp)
}

/// Verifies the bearer token and turns its claims into what the worker sees.
async fn authenticate(
    gate: &Gate,
    slot: &AuthSlot,
    route: &RouteEntry,
    client_ip: IpAddr,
    req: &mut Request<Incoming>,
    is_websocket: bool,
    limit_headers: &mut HeaderMap,
) -> Result<Option<String>, Reject> {
    let policy = slot.current();
    // `?access_token=` only on WebSocket handshakes: browsers cannot set
    // headers there, and elsewhere it would leak tokens into logs.
    let token = jwt::extract_token(req.headers(), req.uri().query(), is_websocket)?
        .ok_or(AuthError::Missing)?;
    let now = crate::clock::unix_now();
    let claims = policy.verify(&token.token, now).inspect_err(|e| {
        if e.wants_key_refresh() {
            slot.key_missing();
        }
    })?;
    gate.revocations
        .list
        .check_token(&claims, &token.token, now)?;
    jwt::check_scopes(&claims, &route.conf.scopes)?;
    let forwarded = jwt::forward_headers(&claims, policy.forward_claims())?;
    let keys = LimitKeys {
        client_ip,
        headers: req.headers(),
        claims: Some(&claims),
    };
    rate_limit(gate, &route.limits_after_auth, keys, limit_headers).await?;
    if token.location == TokenLocation::Query {
        *req.uri_mut() = without_access_token(req.uri())?;
    }
    if policy.strip_authorization() {
        req.headers_mut().remove(header::AUTHORIZATION);
    }
    for (name, value) in forwarded {
        req.headers_mut().insert(name, value);
    }
    // The route's cache `key_claim`: one copy per value.
    let key_claim = route.cache.as_ref().and_then(|c| c.key_claim.as_deref());
    Ok(
        key_claim.and_then(|name| match claim_value(&claims, name)? {
            // Typed, so that "1" and 1 are two keys.
            ClaimValue::Str(s) => Some(format!("s:{s}")),
            ClaimValue::UInt(n) => Some(format!("n:{n}")),
            ClaimValue::Int(n) => Some(format!("n:{n}")),
            ClaimValue::Float(n) => Some(format!("n:{n}")),
        }),
    )
}

/// The URI the worker sees when the token came in the query string.
fn without_access_token(uri: &Uri) -> Result<Uri, Reject> {
    let query = jwt::query_without_access_token(uri.query().unwrap_or(""));
    let query = Some(query.as_str()).filter(|q| !q.is_empty());
    with_path_and_query(uri, uri.path(), query)
}

/// `uri` with another path and query (scheme and authority kept).
fn with_path_and_query(uri: &Uri, path: &str, query: Option<&str>) -> Result<Uri, Reject> {
    let pq = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|_| Reject::BadRequest("invalid request target"))?,
    );
    Uri::from_parts(parts).map_err(|_| Reject::BadRequest("invalid request target"))
}

/// A claim as a rate-limit key.
fn claim_value<'c>(claims: &'c Claims, name: &str) -> Option<ClaimValue<'c>> {
    match claims.get(name)? {
        serde_json::Value::String(s) => Some(ClaimValue::Str(s)),
        serde_json::Value::Number(n) => n
            .as_u64()
            .map(ClaimValue::UInt)
            .or_else(|| n.as_i64().map(ClaimValue::Int))
            .or_else(|| n.as_f64().map(ClaimValue::Float)),
        _ => None,
    }
}

/// What a request's rate-limit keys are made of.
#[derive(Clone, Copy)]
struct LimitKeys<'r> {
    client_ip: IpAddr,
    headers: &'r HeaderMap,
    /// The verified claims, for the limits checked after the JWT.
    claims: Option<&'r Claims>,
}

impl<'r> LimitKeys<'r> {
    fn claim(&self, name: &str) -> Option<ClaimValue<'r>> {
        self.claims.and_then(|c| claim_value(c, name))
    }

    fn local(&self, l: &RateLimit) -> ratelimit::Key {
        l.key_for(self.client_ip, self.headers, |name| self.claim(name))
    }
}

/// All the limits must allow; the first that refuses answers 429.
async fn rate_limit(
    gate: &Gate,
    limits: &[Arc<RateLimit>],
    keys: LimitKeys<'_>,
    allowed_headers: &mut HeaderMap,
) -> Result<(), Reject> {
    if limits.is_empty() {
        return Ok(());
    }
    let shared = gate
        .shared_limits
        .as_ref()
        .filter(|_| limits.iter().any(|l| l.params().shared));
    let Some(shared) = shared else {
        let checks = limits.iter().map(|l| (&**l, keys.local(l)));
        return ratelimit::check_all(checks, allowed_headers)
            .map_err(|refused| Reject::RateLimited(Box::new(refused.headers())));
    };
    // Boxed: a Redis round trip is a large future, and the common case
    // (local limits only) should not carry its size.
    let check = shared_rate_limit(shared, limits, keys, allowed_headers);
    Box::pin(check).await
}

/// Some limit is shared: the same order and rules as `check_all`, with the
/// shared ones counted in Redis.
async fn shared_rate_limit(
    shared: &SharedLimits,
    limits: &[Arc<RateLimit>],
    keys: LimitKeys<'_>,
    allowed_headers: &mut HeaderMap,
) -> Result<(), Reject> {
    for l in limits {
        let local = || l.check(&keys.local(l));
        let answer = match l.params().shared {
            true => {
                let key = l.shared_key(keys.client_ip, keys.headers, |n| keys.claim(n));
                shared.check(l, &key, local).await
            }
            false => local(),
        };
        match answer {
            Ok(allowed) if l.headers() => l.append_allowed_headers(&allowed, allowed_headers),
            Ok(_) => {}
            Err(limited) => {
                let refused = ratelimit::Refused {
                    limit: &**l,
                    limited,
                };
                return Err(Reject::RateLimited(Box::new(refused.headers())));
            }
        }
    }
    Ok(())
}

/// `https_redirect: true` on a plain listener: 308 to the same URL on https.
fn redirect_to_https(
    uri: &Uri,
    host: Option<&HeaderValue>,
    port: u16,
) -> Result<Response<GateBody>, Reject> {
    let host = host
        .and_then(|h| h.to_str().ok())
        .map(hosts::host_only)
        .ok_or(Reject::BadRequest(
            "a Host header is needed to redirect to https",
        ))?;
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let location = if port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{port}{pq}")
    };
    let location = HeaderValue::from_str(&location)
        .map_err(|_| Reject::BadRequest("cannot redirect this request to https"))?;
    let mut resp = Response::new(GateBody::empty());
    *resp.status_mut() = http::StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(header::LOCATION, location);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future a closure returns, without calling it.
    fn future_size<A, F>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every request's future is written into hyper's slot and its inner
    /// futures into it: each byte is copied a few times per request. The
    /// rare paths (a Redis limit, a new worker connection, static files,
    /// compression) are boxed so that they do not grow it; these bounds
    /// fail when an await adds a large future to the common path.
    #[test]
    fn the_request_future_stays_small() {
        type Args = (
            &'static Gate,
            &'static [Arc<RateLimit>],
            LimitKeys<'static>,
            &'static mut HeaderMap,
        );
        let limits = future_size(|(g, l, k, out): Args| rate_limit(g, l, k, out));
        assert!(limits <= 128, "rate_limit future: {limits} bytes");
        type AuthArgs = (
            &'static Gate,
            &'static AuthSlot,
            &'static RouteEntry,
            IpAddr,
            &'static mut Request<Incoming>,
            bool,
            &'static mut HeaderMap,
        );
        let auth = future_size(|(g, s, r, ip, req, ws, out): AuthArgs| {
            authenticate(g, s, r, ip, req, ws, out)
        });
        assert!(auth <= 512, "authenticate future: {auth} bytes");
        let request = future_size(|(g, c, r)| handle(g, c, r));
        // 3840 before the worker slot (its permit and wait) and the buffered body.
        assert!(request <= 4096, "request future: {request} bytes");
    }
}
