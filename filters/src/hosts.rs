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
}
