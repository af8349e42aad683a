//! Header names that a worker may read as another. Django (WSGI and ASGI)
//! and every CGI-style server fold `-` into `_` (`X-Auth-Subject` becomes
//! `HTTP_X_AUTH_SUBJECT`), so a client's `X_Auth_Subject` would reach them
//! as the subject the gate verified. The gate removes such impostors of the
//! names it owns or decides on; `Underscores::Drop` removes every name with
//! `_`, as nginx does by default (`underscores_in_headers off`).
//!
//! ```
//! use asgi_gate_filters::header_names::{strip_impostors, Underscores};
//! use http::header::{HeaderMap, HeaderName, HeaderValue};
//! let mut h = HeaderMap::new();
//! h.insert("x_auth_subject", HeaderValue::from_static("admin"));
//! h.insert("x_trace", HeaderValue::from_static("1"));
//! strip_impostors(&mut h, &[HeaderName::from_static("x-auth-subject")], Underscores::Owned);
//! assert!(h.get("x_auth_subject").is_none());
//! assert!(h.get("x_trace").is_some());
//! ```

use http::header::{HeaderMap, HeaderName};

/// Which request headers with `_` in their name are removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Underscores {
    /// Those that, with `_` read as `-`, name a header the gate owns.
    #[default]
    Owned,
    /// Every one.
    Drop,
}

/// True when `name` (lower case, as `HeaderName`s are) equals `owned` with
/// `_` read as `-`.
fn folds_to(name: &str, owned: &str) -> bool {
    name.len() == owned.len()
        && name
            .bytes()
            .zip(owned.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
}

/// Removes the request headers `mode` names (see the module doc). `owned`
/// lists the names the gate sets or decides on, with their dashes.
pub fn strip_impostors(headers: &mut HeaderMap, owned: &[HeaderName], mode: Underscores) {
    remove_where(headers, |k| {
        k.contains('_')
            && match mode {
                Underscores::Drop => true,
                Underscores::Owned => owned.iter().any(|o| folds_to(k, o.as_str())),
            }
    });
}

/// Removes every header whose name `doomed` picks. Most requests have none:
/// one pass over the names, nothing allocated unless one is found.
pub(crate) fn remove_where(headers: &mut HeaderMap, doomed: impl Fn(&str) -> bool) {
    if !headers.keys().any(|k| doomed(k.as_str())) {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| doomed(k.as_str()))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

    fn map(names: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for n in names {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut v: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        v.sort_unstable();
        v
    }

    const OWNED: [HeaderName; 3] = [
        HeaderName::from_static("x-forwarded-for"),
        HeaderName::from_static("x-request-id"),
        HeaderName::from_static("x-auth-subject"),
    ];

    #[test]
    fn owned_names_in_any_underscore_spelling_go() {
        let mut h = map(&[
            "X_Forwarded_For",
            "x-forwarded_for",
            "x_request-id",
            "X_AUTH_SUBJECT",
            "x-auth-subject",
            "x_trace_id",
            "x_auth_subjects",
            "accept",
        ]);
        strip_impostors(&mut h, &OWNED, Underscores::Owned);
        // The dashed names are the gate's to set or overwrite later.
        assert_eq!(
            names(&h),
            ["accept", "x-auth-subject", "x_auth_subjects", "x_trace_id"]
        );
    }

    #[test]
    fn drop_removes_every_underscored_name() {
        let mut h = map(&["x_trace_id", "x-trace-id", "_", "accept"]);
        strip_impostors(&mut h, &OWNED, Underscores::Drop);
        assert_eq!(names(&h), ["accept", "x-trace-id"]);
    }

    #[test]
    fn folding_needs_the_same_length_and_dashes_only() {
        assert!(folds_to("x_a-b", "x-a-b"));
        assert!(!folds_to("x-a_b", "x-a_b-"));
        assert!(!folds_to("x-a-b", "x_a_b"));
        assert!(!folds_to("x_a_c", "x-a-b"));
    }
}
