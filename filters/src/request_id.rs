//! `X-Request-Id`: a client's id is kept when it is sane (1-128 visible
//! ASCII characters), else the gate makes one. Either way the same id goes to
//! the worker and back to the client.

use http::header::{Entry, HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// 1 to 128 visible ASCII characters (0x21..=0x7e).
pub fn is_sane(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// A new random id: 32 lower-case hex digits (128 bits).
pub fn generate() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    let n = fastrand::u128(..);
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = HEX[((n >> (i * 4)) & 0xf) as usize];
    }
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("0"))
}

/// The id for this request: the client's when sane, else a new one. Exactly
/// one `X-Request-Id` is left in `headers`.
pub fn ensure(headers: &mut HeaderMap) -> HeaderValue {
    // One lookup: this runs on every request.
    match headers.entry(&X_REQUEST_ID) {
        Entry::Occupied(mut e) => {
            let mut values = e.iter();
            if let (Some(v), None) = (values.next(), values.next()) {
                if is_sane(v) {
                    return v.clone();
                }
            }
            let id = generate();
            e.insert(id.clone());
            id
        }
        Entry::Vacant(e) => e.insert(generate()).clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123_XYZ"));
        assert_eq!(ensure(&mut h), "abc-123_XYZ");
        assert_eq!(h[&X_REQUEST_ID], "abc-123_XYZ");
    }

    #[test]
    fn insane_or_missing_ids_are_replaced() {
        for bad in ["", "has space", &"x".repeat(129)] {
            let mut h = HeaderMap::new();
            h.insert(&X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = ensure(&mut h);
            assert_ne!(id, bad);
            assert_eq!(id.len(), 32);
            assert!(is_sane(&id));
        }
        let mut h = HeaderMap::new();
        let a = ensure(&mut h);
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(h.get_all(&X_REQUEST_ID).iter().count(), 1);
        assert!(is_sane(&HeaderValue::from_str(&"x".repeat(128)).unwrap()));
    }

    #[test]
    fn two_ids_are_replaced_by_one() {
        let mut h = HeaderMap::new();
        h.append(&X_REQUEST_ID, HeaderValue::from_static("a"));
        h.append(&X_REQUEST_ID, HeaderValue::from_static("b"));
        let id = ensure(&mut h);
        assert_eq!(id.len(), 32);
        assert_eq!(h.get_all(&X_REQUEST_ID).iter().count(), 1);
    }
}
