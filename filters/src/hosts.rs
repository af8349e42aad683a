//! `allowed_hosts`: which Host / :authority values the gate serves. The port
//! is ignored, names compare case-insensitively, and `*.example.com`
//! matches any subdomain (not `example.com` itself, as in nginx's
//! `server_name *.example.com`).

/// The host part of a Host header value: `[v6]:port` → `v6`, `name:port` → `name`.
pub fn host_only(value: &str) -> &str {
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match value.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => value,
    }
}

/// A Host / :authority value the gate accepts: a name of letters, digits,
/// `-`, `.` and `_`, or an IP literal in brackets, then an optional numeric
/// port. Anything else (`/`, `?`, `@`, `\`, `%`, spaces, an empty value) is
/// refused before `allowed_hosts` or the worker sees it: a wildcard would
/// match `evil.com/x.example.com`, and Starlette answers a Host it cannot
/// parse with redirects built from the worker's socket path.
pub fn is_valid(value: &str) -> bool {
    let (host, port) = match value.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((lit, after)) => {
                let ok = !lit.is_empty()
                    && lit
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
                if !ok {
                    return false;
                }
                (None, after)
            }
            None => return false,
        },
        None => match value.find(':') {
            Some(i) => (Some(&value[..i]), &value[i..]),
            None => (Some(value), ""),
        },
    };
    let port_ok = match port.strip_prefix(':') {
        Some(p) => p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()),
        None => port.is_empty(),
    };
    let name_ok = host.is_none_or(|h| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    });
    port_ok && name_ok
}

/// True when `host` (a Host header value) matches one of `allowed`.
pub fn is_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host_only(host).trim_end_matches('.');
    allowed
        .iter()
        .any(|pattern| match pattern.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() + 1
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
            None => pattern.eq_ignore_ascii_case(host),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn exact_wildcard_port_and_case() {
        let allowed = list(&["api.example.com", "*.example.org", "::1"]);
        assert!(is_allowed("api.example.com", &allowed));
        assert!(is_allowed("API.Example.COM:8443", &allowed));
        assert!(is_allowed("a.example.org", &allowed));
        assert!(is_allowed("x.y.example.org:80", &allowed));
        assert!(is_allowed("[::1]:8080", &allowed));
        assert!(!is_allowed("example.org", &allowed));
        assert!(!is_allowed("evilexample.org", &allowed));
        assert!(!is_allowed("api.example.com.evil.net", &allowed));
        assert!(!is_allowed("", &allowed));
    }

    #[test]
    fn host_syntax() {
        for ok in [
            "api.example.com",
            "api.example.com:8080",
            "localhost",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "my_host.internal",
            "EXAMPLE.com.",
        ] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.com/x.example.com",
            "evil.com?.example.com",
            "evil.com#.example.com",
            "user@evil.com",
            "evil.com\\.example.com",
            "evil.com%2f.example.com",
            "a b",
            "[api.example.org]:1",
            "[::1",
            "host:80:80",
            "host:http",
            "host:123456",
            ":80",
        ] {
            assert!(!is_valid(bad), "{bad}");
        }
    }
}
