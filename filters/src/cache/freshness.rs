//! What may be stored (RFC 9111 §3), how long it is fresh (§4.2.1), its
//! age (§4.2.3) and, once stale, whether it may still be served (RFC 5861).
//! Times are milliseconds since the Unix epoch, passed in by the caller.

use http::header::{self, HeaderMap};
use http::{Method, StatusCode};

use super::control::{RequestControl, ResponseControl};

/// Why a request is not served from the cache (nor stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bypass {
    /// Not GET or HEAD.
    Method,
    /// `Cache-Control: no-store` on the request.
    NoStore,
    /// `Authorization` on a route without `authorized: true` (§3.5).
    Authorization,
    /// `Range`: a partial answer is never stored, and never made from a
    /// stored one here.
    Range,
}

/// Whether a request may use the cache at all. `authorized` is the route's
/// `cache.authorized`.
pub fn bypass(method: &Method, headers: &HeaderMap, authorized: bool) -> Option<Bypass> {
    if method != Method::GET && method != Method::HEAD {
        return Some(Bypass::Method);
    }
    if RequestControl::parse(headers).no_store {
        return Some(Bypass::NoStore);
    }
    if headers.contains_key(header::RANGE) {
        return Some(Bypass::Range);
    }
    if headers.contains_key(header::AUTHORIZATION) && !authorized {
        return Some(Bypass::Authorization);
    }
    None
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Status,
    NoStore,
    Private,
    NoCache,
    SetCookie,
    VaryStar,
    /// No `s-maxage`, `max-age` or `Expires`: no heuristic freshness here.
    NoFreshness,
    /// A request with `Authorization`, and the response says neither
    /// `public` nor `s-maxage` (§3.5).
    Authorization,
    /// Fresh for no time, and no stale window either.
    NothingToServe,
}

/// How long a stored response may be served, from when it was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Its freshness lifetime (§4.2.1).
    pub lifetime_ms: u64,
    /// Its age when it arrived: the worker's `Age` (§4.2.3).
    pub initial_age_ms: u64,
    /// RFC 5861 windows after it goes stale (0 = none; 0 too when
    /// `must-revalidate`/`proxy-revalidate` forbid serving it stale).
    pub stale_while_revalidate_ms: u64,
    pub stale_if_error_ms: u64,
    /// `public` or `s-maxage`: may answer a request with `Authorization`.
    pub shared_with_auth: bool,
    /// When it arrived.
    pub received_ms: u64,
}

/// Statuses heuristically cacheable (RFC 9110 §15.1) plus 302/307: all
/// need explicit freshness here. 206 and 304 never are: they are not the
/// whole answer.
fn storable_status(s: StatusCode) -> bool {
    matches!(
        s.as_u16(),
        200 | 203 | 204 | 300 | 301 | 302 | 307 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

fn date_ms(headers: &HeaderMap, name: header::HeaderName) -> Option<u64> {
    let v = headers.get(name)?.to_str().ok()?;
    let t = httpdate::parse_http_date(v).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    u64::try_from(d.as_millis()).ok()
}

fn secs_to_ms(s: u64) -> u64 {
    s.saturating_mul(1000)
}

/// May this response to a GET be stored, and for how long (RFC 9111 §3,
/// §4.2.1, §4.2.3)? `request_had_auth`: the request carried
/// `Authorization` (the route allows it, or `bypass` would have said so).
pub fn storable(
    status: StatusCode,
    headers: &HeaderMap,
    request_had_auth: bool,
    now_ms: u64,
) -> Result<Freshness, NotStored> {
    if !storable_status(status) {
        return Err(NotStored::Status);
    }
    let cc = ResponseControl::parse(headers);
    if cc.no_store {
        return Err(NotStored::NoStore);
    }
    if cc.private {
        return Err(NotStored::Private);
    }
    if cc.no_cache {
        return Err(NotStored::NoCache);
    }
    if headers.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if super::key::vary_names(headers).is_none() {
        return Err(NotStored::VaryStar);
    }
    let shared_with_auth = cc.public || cc.s_maxage.is_some();
    if request_had_auth && !shared_with_auth {
        return Err(NotStored::Authorization);
    }
    let date = date_ms(headers, header::DATE);
    // §4.2.1: s-maxage, then max-age, then Expires - Date.
    let lifetime_ms = match (cc.s_maxage, cc.max_age) {
        (Some(s), _) | (None, Some(s)) => secs_to_ms(s),
        (None, None) => match headers.get(header::EXPIRES) {
            None => return Err(NotStored::NoFreshness),
            // An invalid Expires (e.g. "0") means already expired (§5.3).
            Some(_) => match date_ms(headers, header::EXPIRES) {
                Some(exp) => exp.saturating_sub(date.unwrap_or(now_ms)),
                None => 0,
            },
        },
    };
    // §4.2.3 with no apparent age: the worker is on a local socket and
    // shares this clock, so response delay and skew are ~0, while `Date`
    // has second precision and uvicorn refreshes it once a second; read as
    // age, that noise would make a `max-age=1` answer stale on arrival.
    let age_value = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(secs_to_ms)
        .unwrap_or(0);
    let (swr, sie) = match cc.allows_stale() {
        true => (
            secs_to_ms(cc.stale_while_revalidate.unwrap_or(0)),
            secs_to_ms(cc.stale_if_error.unwrap_or(0)),
        ),
        false => (0, 0),
    };
    let f = Freshness {
        lifetime_ms,
        initial_age_ms: age_value,
        stale_while_revalidate_ms: swr,
        stale_if_error_ms: sie,
        shared_with_auth,
        received_ms: now_ms,
    };
    if f.stale_until_ms() <= now_ms {
        return Err(NotStored::NothingToServe);
    }
    Ok(f)
}

/// What a stored response is good for at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Fresh,
    /// Serve it, and refresh it in the background (RFC 5861 §3).
    StaleWhileRevalidate,
    /// Only if the worker fails (RFC 5861 §4).
    StaleIfError,
    /// Of no use.
    Expired,
}

impl Freshness {
    /// `current_age` (§4.2.3) in milliseconds.
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        self.initial_age_ms
            .saturating_add(now_ms.saturating_sub(self.received_ms))
    }

    /// The `Age` header value: whole seconds.
    pub fn age_secs(&self, now_ms: u64) -> u64 {
        self.age_ms(now_ms) / 1000
    }

    /// When it goes stale, as a time (not an age).
    fn stale_at_ms(&self) -> u64 {
        self.received_ms
            .saturating_add(self.lifetime_ms.saturating_sub(self.initial_age_ms))
    }

    /// After this it is of no use at all: when storage may drop it.
    pub fn stale_until_ms(&self) -> u64 {
        let window = self.stale_while_revalidate_ms.max(self.stale_if_error_ms);
        self.stale_at_ms().saturating_add(window)
    }

    pub fn state(&self, now_ms: u64) -> State {
        let stale_at = self.stale_at_ms();
        if now_ms < stale_at {
            return State::Fresh;
        }
        let stale_for = now_ms - stale_at;
        if stale_for < self.stale_while_revalidate_ms {
            State::StaleWhileRevalidate
        } else if stale_for < self.stale_if_error_ms {
            State::StaleIfError
        } else {
            State::Expired
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const NOW: u64 = 1_700_000_000_000;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn http_date(ms: u64) -> String {
        httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
    }

    fn store(pairs: &[(&str, &str)]) -> Result<Freshness, NotStored> {
        storable(StatusCode::OK, &headers(pairs), false, NOW)
    }

    #[test]
    fn requests_that_bypass() {
        let none = HeaderMap::new();
        assert_eq!(bypass(&Method::POST, &none, false), Some(Bypass::Method));
        assert_eq!(bypass(&Method::GET, &none, false), None);
        assert_eq!(bypass(&Method::HEAD, &none, false), None);
        let h = headers(&[("cache-control", "no-store")]);
        assert_eq!(bypass(&Method::GET, &h, false), Some(Bypass::NoStore));
        let h = headers(&[("range", "bytes=0-10")]);
        assert_eq!(bypass(&Method::GET, &h, false), Some(Bypass::Range));
        let h = headers(&[("authorization", "Bearer x")]);
        assert_eq!(bypass(&Method::GET, &h, false), Some(Bypass::Authorization));
        assert_eq!(bypass(&Method::GET, &h, true), None);
    }

    #[test]
    fn freshness_order_is_s_maxage_then_max_age_then_expires() {
        let f = store(&[("cache-control", "max-age=10, s-maxage=20")]).unwrap();
        assert_eq!(f.lifetime_ms, 20_000);
        let f = store(&[("cache-control", "max-age=10")]).unwrap();
        assert_eq!(f.lifetime_ms, 10_000);
        let date = http_date(NOW);
        let exp = http_date(NOW + 30_000);
        let f = store(&[("date", &date), ("expires", &exp)]).unwrap();
        assert_eq!(f.lifetime_ms, 30_000);
        let f = store(&[
            ("cache-control", "max-age=5"),
            ("date", &date),
            ("expires", &exp),
        ]);
        assert_eq!(f.unwrap().lifetime_ms, 5_000);
    }

    #[test]
    fn never_stored() {
        use NotStored::*;
        for (pairs, why) in [
            (vec![("cache-control", "private, max-age=60")], Private),
            (vec![("cache-control", "no-store, max-age=60")], NoStore),
            (vec![("cache-control", "no-cache, max-age=60")], NoCache),
            (
                vec![("cache-control", "max-age=60"), ("set-cookie", "a=b")],
                SetCookie,
            ),
            (
                vec![("cache-control", "max-age=60"), ("vary", "*")],
                VaryStar,
            ),
            (vec![("cache-control", "public")], NoFreshness),
            (vec![], NoFreshness),
            (vec![("cache-control", "max-age=0")], NothingToServe),
            (vec![("expires", "0")], NothingToServe),
        ] {
            assert_eq!(store(&pairs), Err(why), "{pairs:?}");
        }
        let h = headers(&[("cache-control", "max-age=60")]);
        for s in [206, 304, 500, 502, 401, 403] {
            let s = StatusCode::from_u16(s).unwrap();
            assert_eq!(storable(s, &h, false, NOW), Err(NotStored::Status), "{s}");
        }
        assert!(storable(StatusCode::NOT_FOUND, &h, false, NOW).is_ok());
    }

    #[test]
    fn authorized_requests_need_public_or_s_maxage() {
        let h = headers(&[("cache-control", "max-age=60")]);
        assert_eq!(
            storable(StatusCode::OK, &h, true, NOW),
            Err(NotStored::Authorization)
        );
        for cc in ["public, max-age=60", "s-maxage=60"] {
            let h = headers(&[("cache-control", cc)]);
            let f = storable(StatusCode::OK, &h, true, NOW).unwrap();
            assert!(f.shared_with_auth);
        }
        let f = store(&[("cache-control", "max-age=60")]).unwrap();
        assert!(!f.shared_with_auth);
    }

    #[test]
    fn age_counts_the_worker_age_and_time_held() {
        let f = store(&[("cache-control", "max-age=60"), ("age", "10")]).unwrap();
        assert_eq!(f.age_secs(NOW), 10);
        assert_eq!(f.age_secs(NOW + 2_500), 12);
        assert_eq!(f.state(NOW + 49_000), State::Fresh);
        assert_eq!(f.state(NOW + 50_000), State::Expired);
        // An old `Date` is not age: only `Age` is (see `storable`).
        let date = http_date(NOW - 1_900);
        let f = store(&[("cache-control", "max-age=1"), ("date", &date)]).unwrap();
        assert_eq!(f.age_secs(NOW), 0);
        assert_eq!(f.state(NOW + 999), State::Fresh);
    }

    #[test]
    fn stale_windows() {
        let f = store(&[(
            "cache-control",
            "max-age=1, stale-while-revalidate=10, stale-if-error=100",
        )])
        .unwrap();
        assert_eq!(f.state(NOW + 999), State::Fresh);
        assert_eq!(f.state(NOW + 1_000), State::StaleWhileRevalidate);
        assert_eq!(f.state(NOW + 10_999), State::StaleWhileRevalidate);
        assert_eq!(f.state(NOW + 11_000), State::StaleIfError);
        assert_eq!(f.state(NOW + 101_000), State::Expired);
        assert_eq!(f.stale_until_ms(), NOW + 101_000);
        let f = store(&[(
            "cache-control",
            "max-age=1, must-revalidate, stale-while-revalidate=10",
        )])
        .unwrap();
        assert_eq!(f.state(NOW + 1_000), State::Expired);
        // Stale from the start, but within its window: stored.
        let f = store(&[("cache-control", "max-age=0, stale-while-revalidate=10")]).unwrap();
        assert_eq!(f.state(NOW), State::StaleWhileRevalidate);
    }
}
