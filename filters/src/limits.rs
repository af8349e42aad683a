//! Request size limits checked before anything reaches the worker: the size
//! of the request head and a declared body length.

use http::header::{self, HeaderMap};
use http::{Method, Uri};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitError {
    /// The request head is larger than allowed (431).
    HeadersTooLarge { size: usize, max: usize },
    /// The declared body is larger than allowed (413).
    BodyTooLarge { declared: u64, max: u64 },
    /// Content-Length is not a single decimal number (400).
    BadContentLength,
}

/// Bytes of the request head as the client sent it on HTTP/1.1 (request
/// line plus `name: value\r\n` per header); the same measure on h2, so one
/// limit means the same on both.
pub fn head_size(method: &Method, uri: &Uri, headers: &HeaderMap) -> usize {
    let target = uri.path_and_query().map(|p| p.as_str().len()).unwrap_or(1);
    let line = method.as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + 2 + v.len() + 2)
}

pub fn check_head(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    max: usize,
) -> Result<(), LimitError> {
    let size = head_size(method, uri, headers);
    if size > max {
        return Err(LimitError::HeadersTooLarge { size, max });
    }
    Ok(())
}

/// The declared body length, refused when over `max`. Several Content-Length
/// values are accepted only when they agree (RFC 9110 §8.6).
pub fn check_content_length(headers: &HeaderMap, max: u64) -> Result<Option<u64>, LimitError> {
    let mut declared: Option<u64> = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        let s = v.to_str().map_err(|_| LimitError::BadContentLength)?;
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(LimitError::BadContentLength);
            }
            let n: u64 = part.parse().map_err(|_| LimitError::BadContentLength)?;
            match declared {
                Some(d) if d != n => return Err(LimitError::BadContentLength),
                _ => declared = Some(n),
            }
        }
    }
    match declared {
        Some(n) if n > max => Err(LimitError::BodyTooLarge { declared: n, max }),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn head_size_counts_line_and_headers() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("a"));
        let uri: Uri = "/x?y=1".parse().unwrap();
        // "GET /x?y=1 HTTP/1.1\r\n" = 21, "host: a\r\n" = 9
        assert_eq!(head_size(&Method::GET, &uri, &h), 30);
        assert!(check_head(&Method::GET, &uri, &h, 30).is_ok());
        assert_eq!(
            check_head(&Method::GET, &uri, &h, 29),
            Err(LimitError::HeadersTooLarge { size: 30, max: 29 })
        );
    }

    #[test]
    fn content_length_rules() {
        let mut h = HeaderMap::new();
        assert_eq!(check_content_length(&h, 10), Ok(None));
        h.insert("content-length", HeaderValue::from_static("10"));
        assert_eq!(check_content_length(&h, 10), Ok(Some(10)));
        assert_eq!(
            check_content_length(&h, 9),
            Err(LimitError::BodyTooLarge {
                declared: 10,
                max: 9
            })
        );
        h.insert("content-length", HeaderValue::from_static("5, 5"));
        assert_eq!(check_content_length(&h, 9), Ok(Some(5)));
        for bad in ["5, 6", "-1", "abc", "", "99999999999999999999999"] {
            h.insert("content-length", HeaderValue::from_str(bad).unwrap());
            assert_eq!(
                check_content_length(&h, 9),
                Err(LimitError::BadContentLength),
                "{bad}"
            );
        }
    }
}
