//! What the worker is told about the client: hop-by-hop headers removed
//! (RFC 9110 §7.6.1) and `X-Forwarded-*` set by the gate, never trusted from
//! an untrusted peer. `X-Forwarded-For` is overwritten, not appended, because
//! uvicorn believes its leftmost entry.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers: `Connection` and every header it names,
/// Keep-Alive, Proxy-Connection, TE, Transfer-Encoding, Trailer, and Upgrade
/// unless `keep_upgrade` (a WebSocket handshake, which needs `Connection:
/// upgrade` and `Upgrade` to reach the other side).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One cheap pass first: most requests carry none of these, and each
    // `remove` below is a hash lookup.
    let present = headers.keys().any(|k| {
        k == header::CONNECTION
            || k == header::TE
            || k == header::TRANSFER_ENCODING
            || k == header::TRAILER
            || k == header::UPGRADE
            || k == KEEP_ALIVE
            || k == PROXY_CONNECTION
    });
    if !present {
        if keep_upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        // Collect the named headers first: they are removed after the loop.
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            let Ok(s) = value.to_str() else { continue };
            for token in s.split(',') {
                let token = token.trim();
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    if (keep_upgrade && name == header::UPGRADE) || is_end_to_end(&name) {
                        continue;
                    }
                    named.push(name);
                }
            }
        }
        headers.remove(header::CONNECTION);
        for name in named {
            headers.remove(name);
        }
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TE);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::TRAILER);
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Headers a client may not turn hop-by-hop by naming them in `Connection`:
/// the message's framing and target, and the request id the gate keeps.
fn is_end_to_end(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::HOST
        || name == header::CONTENT_TYPE
        || name == crate::request_id::X_REQUEST_ID
}

/// A request with more than one `Host` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DuplicateHost;

/// The request's host: its one `Host` header, else the URI authority (h2's
/// `:authority`, or an absolute-form target). Two Host headers are an error
/// (RFC 9112 §3.2: answer 400), so gate and worker never disagree on it.
pub fn request_host(
    headers: &HeaderMap,
    uri: &http::Uri,
) -> Result<Option<HeaderValue>, DuplicateHost> {
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(DuplicateHost),
        (Some(h), None) => Ok(Some(h.clone())),
        (None, _) => Ok(uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())),
    }
}

/// Forwarding headers the gate does not set but some Python servers and
/// middlewares believe (Werkzeug's ProxyFix, Django's
/// `USE_X_FORWARDED_PORT`, RFC 7239 `Forwarded`): a client that is not a
/// trusted proxy may not send them. The three the gate sets are overwritten
/// anyway.
pub fn strip_foreign_forwarding(headers: &mut HeaderMap) {
    fn foreign(name: &str) -> bool {
        name.starts_with("x-forwarded-")
            || matches!(
                name,
                "forwarded"
                    | "x-real-ip"
                    | "x-client-ip"
                    | "x-original-url"
                    | "x-rewrite-url"
                    | "x-original-forwarded-for"
            )
    }
    crate::header_names::remove_where(headers, foreign);
}

/// True when the peer is one of `trusted_proxies`.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|net| net.contains(&ip))
}

/// IPv4-mapped IPv6 peers (`::ffff:1.2.3.4` on a dual-stack socket) are
/// treated as the IPv4 address they carry.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The client address the gate believes: the peer, or — when the peer is a
/// trusted proxy — the rightmost `X-Forwarded-For` entry that is not itself
/// trusted. An unparsable entry stops the walk: everything left of it could
/// have been written by anyone, so the last good address is used.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let mut current = peer;
    // Later header lines are appended by closer proxies: walk them in reverse.
    let values: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
    for value in values.into_iter().rev() {
        let Ok(s) = value.to_str() else {
            return current;
        };
        for entry in s.rsplit(',') {
            let Some(ip) = parse_entry(entry) else {
                return current;
            };
            current = canonical(ip);
            if !is_trusted(current, trusted) {
                return current;
            }
        }
    }
    current
}

/// One X-Forwarded-For entry: an IP, optionally `[v6]:port` or `v4:port`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = e.strip_prefix('[') {
        let end = rest.find(']')?;
        return rest[..end].parse().ok();
    }
    let (host, port) = e.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// Sets the `X-Forwarded-*` headers the worker reads, replacing whatever the
/// client sent. `client` is the client IP as a header value ([`ip_value`]);
/// `host` is the request's Host / :authority, when there is one.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client: HeaderValue,
    proto: &'static str,
    host: Option<HeaderValue>,
) {
    headers.insert(X_FORWARDED_FOR.clone(), client);
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST.clone(), h);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// Joins the `Cookie` fields an HTTP/2 client splits (RFC 9113 §8.2.3) into
/// the one line an HTTP/1.1 worker expects: Starlette reads only the first.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut all = headers.get_all(header::COOKIE).iter();
    if all.next().is_none() || all.next().is_none() {
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // Made of valid values and "; ": always a valid value.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// `ip` in its text form as a header value. The server makes the peer's once
/// per connection; only a client IP taken from a trusted proxy's header is
/// formatted per request.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 64];
    // An IP's text form is always a valid header value.
    HeaderValue::from_bytes(ip_text(ip, &mut buf).as_bytes())
        .unwrap_or(HeaderValue::from_static("0.0.0.0"))
}

fn ip_text(ip: IpAddr, buf: &mut [u8; 64]) -> &str {
    use std::io::Write;
    let n = match ip {
        // The common case without the formatting machinery.
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                let o = *octet;
                if o >= 100 {
                    buf[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    buf[n] = b'0' + (o / 10) % 10;
                    n += 1;
                }
                buf[n] = b'0' + o % 10;
                n += 1;
            }
            n
        }
        IpAddr::V6(_) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{ip}");
            cursor.position() as usize
        }
    };
    std::str::from_utf8(&buf[..n]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn split_cookies_become_one_line() {
        let mut h = hm(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
        let mut one = hm(&[("cookie", "a=1; b=2")]);
        join_cookies(&mut one);
        assert_eq!(one.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(one[header::COOKIE], "a=1; b=2");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = hm(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn connection_cannot_make_framing_or_the_request_id_hop_by_hop() {
        let mut h = hm(&[
            (
                "connection",
                "content-length, host, x-request-id, content-type, x-gone",
            ),
            ("content-length", "5"),
            ("host", "a"),
            ("x-request-id", "abc"),
            ("content-type", "text/plain"),
            ("x-gone", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["content-length", "content-type", "host", "x-request-id"]
        );
    }

    #[test]
    fn foreign_forwarding_headers_go_and_others_stay() {
        let mut h = hm(&[
            ("forwarded", "for=8.8.8.8"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("x-real-ip", "8.8.8.8"),
            ("x-original-url", "/admin"),
            ("x-forwardedish", "kept"),
            ("accept", "kept"),
        ]);
        strip_foreign_forwarding(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "x-forwardedish"]);
    }

    #[test]
    fn websocket_keeps_upgrade() {
        let mut h = hm(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let h = hm(&[("x-forwarded-for", "6.6.6.6")]);
        let ip = client_ip("127.0.0.1".parse().unwrap(), &h, &[]);
        assert_eq!(ip.to_string(), "127.0.0.1");
        let ip = client_ip("1.2.3.4".parse().unwrap(), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(ip.to_string(), "1.2.3.4");
    }

    #[test]
    fn trusted_peer_gives_rightmost_untrusted() {
        let trusted = nets(&["10.0.0.0/8", "127.0.0.1/32"]);
        let h = hm(&[("x-forwarded-for", "6.6.6.6, 5.5.5.5, 10.1.1.1")]);
        let ip = client_ip("127.0.0.1".parse().unwrap(), &h, &trusted);
        assert_eq!(ip.to_string(), "5.5.5.5");
        // Several header lines: the last line is the closest hop.
        let h = hm(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "10.2.2.2"),
        ]);
        let ip = client_ip("10.9.9.9".parse().unwrap(), &h, &trusted);
        assert_eq!(ip.to_string(), "6.6.6.6");
    }

    #[test]
    fn all_trusted_or_garbage_stops_at_last_good() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = hm(&[("x-forwarded-for", "10.0.0.2, 10.0.0.3")]);
        let ip = client_ip("10.0.0.1".parse().unwrap(), &h, &trusted);
        assert_eq!(ip.to_string(), "10.0.0.2");
        let h = hm(&[("x-forwarded-for", "6.6.6.6, garbage, 10.0.0.3")]);
        let ip = client_ip("10.0.0.1".parse().unwrap(), &h, &trusted);
        assert_eq!(ip.to_string(), "10.0.0.3");
        let h = hm(&[]);
        let ip = client_ip("10.0.0.1".parse().unwrap(), &h, &trusted);
        assert_eq!(ip.to_string(), "10.0.0.1");
    }

    #[test]
    fn entries_with_ports_and_mapped_v6() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = hm(&[("x-forwarded-for", "[2001:db8::1]:443, 1.2.3.4:80")]);
        let ip = client_ip("10.0.0.1".parse().unwrap(), &h, &trusted);
        assert_eq!(ip.to_string(), "1.2.3.4");
        let ip = client_ip("::ffff:10.0.0.1".parse().unwrap(), &HeaderMap::new(), &[]);
        assert_eq!(ip.to_string(), "10.0.0.1");
    }

    #[test]
    fn host_is_single_or_from_authority() {
        let uri: http::Uri = "http://api.example:8080/x".parse().unwrap();
        let h = hm(&[("host", "a.test")]);
        assert_eq!(request_host(&h, &uri).unwrap().unwrap(), "a.test");
        let h = hm(&[("host", "a.test"), ("host", "b.test")]);
        assert!(request_host(&h, &uri).is_err());
        assert_eq!(
            request_host(&HeaderMap::new(), &uri).unwrap().unwrap(),
            "api.example:8080"
        );
        let path_only: http::Uri = "/x".parse().unwrap();
        assert!(request_host(&HeaderMap::new(), &path_only)
            .unwrap()
            .is_none());
    }

    #[test]
    fn ip_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.100.255",
            "192.168.1.10",
            "::1",
            "2001:db8::ff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut buf = [0u8; 64];
            assert_eq!(ip_text(ip, &mut buf), ip.to_string());
        }
    }

    #[test]
    fn nothing_to_strip_leaves_headers_alone() {
        let mut h = hm(&[("host", "a"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn forwarded_headers_are_overwritten() {
        let mut h = hm(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
        ]);
        set_forwarded(&mut h, ip_value("1.2.3.4".parse().unwrap()), "http", None);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h.get("x-forwarded-host").is_none());
        set_forwarded(
            &mut h,
            ip_value("2001:db8::1".parse().unwrap()),
            "https",
            Some(HeaderValue::from_static("api.example.com")),
        );
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
    }
}
