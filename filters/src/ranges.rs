//! Byte ranges of a static file (RFC 9110 §14): which part of a
//! representation of `len` bytes a `Range` header asks for, and whether an
//! `If-Range` validator still matches. Pure: the server seeks and streams.
//!
//! One range is answered with 206. Several are answered with the whole
//! representation (200, which §14.2 allows: a server may ignore `Range`)
//! unless none is satisfiable (416): a multipart body costs a boundary per
//! part and is a known amplification vector, and browsers and download
//! tools ask for one range.

use http::HeaderValue;

/// Range specs read from one header; a header with more is ignored whole
/// (answered 200). Bounds the work a client can ask for.
pub const MAX_RANGES: usize = 16;

/// Bytes `first..=last` of the representation; never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub first: u64,
    pub last: u64,
}

impl ByteRange {
    /// How many bytes the range holds (`last - first + 1`, at least 1).
    pub fn count(&self) -> u64 {
        // first <= last < u64::MAX: made only by `parse`, under a length.
        self.last - self.first + 1
    }

    /// `Content-Range` of a 206: `bytes first-last/complete`.
    pub fn content_range(&self, complete: u64) -> HeaderValue {
        let v = format!("bytes {}-{}/{complete}", self.first, self.last);
        HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("bytes */0"))
    }
}

/// `Content-Range` of a 416: `bytes */complete`.
pub fn unsatisfied_range(complete: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("bytes */{complete}"))
        .unwrap_or(HeaderValue::from_static("bytes */0"))
}

/// What to answer to a `Range` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// 200 with the whole representation: no usable `Range` (malformed,
    /// another unit, several ranges, more than [`MAX_RANGES`]).
    Full,
    /// 206 with this part.
    Partial(ByteRange),
    /// 416: no range of the header overlaps the representation.
    NotSatisfiable,
}

/// One spec of a range set, before it meets the length.
enum Spec {
    /// `first-` or `first-last`; `last` saturated at `u64::MAX`.
    From { first: u64, last: u64 },
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

/// The answer for a `Range` header value on a representation of `len`
/// bytes. Malformed headers are ignored (§14.2: 200). Numbers too large
/// for a u64 saturate, which is what they mean against any real length.
pub fn parse(value: &HeaderValue, len: u64) -> RangeAnswer {
    let Ok(s) = value.to_str() else {
        return RangeAnswer::Full;
    };
    let Some((unit, set)) = s.split_once('=') else {
        return RangeAnswer::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeAnswer::Full;
    }
    let mut count = 0usize;
    let mut satisfiable = None;
    // A list may hold empty elements (RFC 9110 §5.6.1.2).
    for raw in set.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        count += 1;
        if count > MAX_RANGES {
            return RangeAnswer::Full;
        }
        let Some(spec) = parse_spec(raw) else {
            return RangeAnswer::Full;
        };
        if satisfiable.is_none() {
            satisfiable = against(spec, len);
        }
    }
    match (count, satisfiable) {
        (0, _) => RangeAnswer::Full,
        (_, None) => RangeAnswer::NotSatisfiable,
        (1, Some(r)) => RangeAnswer::Partial(r),
        (_, Some(_)) => RangeAnswer::Full,
    }
}

fn parse_spec(spec: &str) -> Option<Spec> {
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return Some(Spec::Suffix(digits(last)?));
    }
    let first = digits(first)?;
    let last = match last {
        "" => u64::MAX,
        l => digits(l)?,
    };
    // §14.1.1: a last position before the first makes the set invalid.
    (last >= first).then_some(Spec::From { first, last })
}

/// 1*DIGIT as a u64, saturating.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

fn against(spec: Spec, len: u64) -> Option<ByteRange> {
    let end = len.checked_sub(1)?;
    match spec {
        Spec::From { first, last } if first <= end => Some(ByteRange {
            first,
            last: last.min(end),
        }),
        Spec::From { .. } => None,
        Spec::Suffix(0) => None,
        Spec::Suffix(n) => Some(ByteRange {
            first: len - n.min(len),
            last: end,
        }),
    }
}

/// Whether a `Range` still applies given the request's `If-Range` value
/// (§13.1.5): an entity tag must equal `etag` by strong comparison (a weak
/// tag on either side never matches); an HTTP date must equal the
/// `Last-Modified` second exactly, and only counts when that second is
/// over (`now_secs`): a file changed twice within it would keep its date
/// (§8.8.2.2). Anything else (malformed) does not match, so the whole
/// representation is sent.
pub fn if_range_matches(
    value: &HeaderValue,
    etag: &HeaderValue,
    last_modified_secs: Option<u64>,
    now_secs: u64,
) -> bool {
    let v = value.as_bytes().trim_ascii();
    if v.starts_with(b"\"") {
        let ours = etag.as_bytes();
        return v.len() >= 2 && v.ends_with(b"\"") && !ours.starts_with(b"W/") && v == ours;
    }
    if v.starts_with(b"W/") {
        return false;
    }
    let Some(ours) = last_modified_secs.filter(|m| *m < now_secs) else {
        return false;
    };
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| httpdate::parse_http_date(s).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .is_some_and(|d| d.as_secs() == ours)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeAnswer::{Full, NotSatisfiable, Partial};

    fn p(v: &str, len: u64) -> RangeAnswer {
        parse(&HeaderValue::from_str(v).unwrap(), len)
    }

    fn part(first: u64, last: u64) -> RangeAnswer {
        Partial(ByteRange { first, last })
    }

    #[test]
    fn single_ranges() {
        for (v, want) in [
            ("bytes=0-0", part(0, 0)),
            ("bytes=0-99", part(0, 99)),
            ("bytes=10-19", part(10, 19)),
            ("bytes=90-200", part(90, 99)),
            ("bytes=50-", part(50, 99)),
            ("bytes=99-", part(99, 99)),
            ("bytes=-1", part(99, 99)),
            ("bytes=-10", part(90, 99)),
            ("bytes=-100", part(0, 99)),
            ("bytes=-1000", part(0, 99)),
            ("BYTES=1-2", part(1, 2)),
            ("bytes= 1 - 2 ", part(1, 2)),
            ("bytes=,1-2,", part(1, 2)),
            ("bytes=100-", NotSatisfiable),
            ("bytes=100-200", NotSatisfiable),
            ("bytes=-0", NotSatisfiable),
        ] {
            assert_eq!(p(v, 100), want, "{v}");
        }
        // An empty file has no satisfiable range.
        assert_eq!(p("bytes=0-", 0), NotSatisfiable);
        assert_eq!(p("bytes=-5", 0), NotSatisfiable);
    }

    #[test]
    fn malformed_or_other_units_are_ignored() {
        for v in [
            "",
            "bytes",
            "bytes=",
            "bytes=,",
            "items=0-1",
            "bytes=a-b",
            "bytes=1",
            "bytes=-",
            "bytes=5-4",
            "bytes=1-2-3",
            "bytes=0x10-",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=-+2",
            "bytes=1-2,junk",
            "bytes=--1",
        ] {
            assert_eq!(p(v, 100), Full, "{v}");
        }
        let not_utf8 = HeaderValue::from_bytes(b"bytes=0-\xff").unwrap();
        assert_eq!(parse(&not_utf8, 100), Full);
    }

    #[test]
    fn several_ranges_get_the_whole_file_unless_none_fits() {
        assert_eq!(p("bytes=0-1,5-6", 100), Full);
        assert_eq!(p("bytes=0-1, 200-300", 100), Full);
        assert_eq!(p("bytes=200-300, 400-", 100), NotSatisfiable);
        let at_cap = vec!["1-2"; MAX_RANGES].join(",");
        assert_eq!(p(&format!("bytes={at_cap}"), 100), Full);
        let over = vec!["200-300"; MAX_RANGES + 1].join(",");
        assert_eq!(p(&format!("bytes={over}"), 100), Full, "over the cap");
        let many = vec!["0-0"; 5000].join(",");
        assert_eq!(p(&format!("bytes={many}"), 100), Full);
    }

    #[test]
    fn huge_numbers_saturate_without_overflow() {
        let big = "9".repeat(400);
        assert_eq!(p(&format!("bytes=0-{big}"), 100), part(0, 99));
        assert_eq!(p(&format!("bytes={big}-"), 100), NotSatisfiable);
        assert_eq!(p(&format!("bytes=-{big}"), 100), part(0, 99));
        assert_eq!(p(&format!("bytes={big}-{big}"), u64::MAX), NotSatisfiable);
        let max = u64::MAX;
        assert_eq!(
            p(&format!("bytes={}-", max - 1), max),
            part(max - 1, max - 1)
        );
        assert_eq!(p("bytes=-18446744073709551615", max), part(0, max - 1));
        assert_eq!(
            ByteRange {
                first: 0,
                last: max - 1
            }
            .count(),
            max
        );
        assert_eq!(
            ByteRange { first: 3, last: 7 }.content_range(10),
            "bytes 3-7/10"
        );
        assert_eq!(unsatisfied_range(max), "bytes */18446744073709551615");
    }

    /// Property-style: for random specs against random lengths, a partial
    /// answer always lies inside the representation and is what the spec
    /// says; a rendered header round-trips.
    #[test]
    fn random_specs_stay_inside_the_file() {
        let mut rng = fastrand::Rng::with_seed(20);
        let pick = |rng: &mut fastrand::Rng| match rng.u8(0..4) {
            0 => rng.u64(0..8),
            1 => rng.u64(0..300),
            2 => u64::MAX - rng.u64(0..3),
            _ => rng.u64(..),
        };
        for _ in 0..20_000 {
            let len = pick(&mut rng);
            let (a, b) = (pick(&mut rng), pick(&mut rng));
            let (spec, want) = match rng.u8(0..3) {
                0 => (
                    format!("{a}-{b}"),
                    (b >= a).then(|| against_model(a, b, len)),
                ),
                1 => (format!("{a}-"), Some(against_model(a, u64::MAX, len))),
                _ => (format!("-{a}"), Some(suffix_model(a, len))),
            };
            let got = p(&format!("bytes={spec}"), len);
            match want {
                None => assert_eq!(got, Full, "{spec} of {len}"),
                Some(None) => assert_eq!(got, NotSatisfiable, "{spec} of {len}"),
                Some(Some((f, l))) => {
                    assert_eq!(got, part(f, l), "{spec} of {len}");
                    assert!(f <= l && l < len);
                    let back = p(&format!("bytes={f}-{l}"), len);
                    assert_eq!(back, got, "round trip of {spec}");
                }
            }
        }
        // Random bytes never panic.
        for _ in 0..20_000 {
            let n = rng.usize(0..24);
            let s: String = (0..n)
                .map(|_| *rng.choice(b"bytes=0123456789-, ;x".iter()).unwrap() as char)
                .collect();
            if let Ok(v) = HeaderValue::from_str(&s) {
                if let Partial(r) = parse(&v, 50) {
                    assert!(r.first <= r.last && r.last < 50, "{s}");
                }
            }
        }
    }

    /// The spec's meaning, written the long way (u128).
    fn against_model(first: u64, last: u64, len: u64) -> Option<(u64, u64)> {
        let (f, l, n) = (first as u128, last as u128, len as u128);
        (f < n).then(|| (first, l.min(n - 1) as u64))
    }

    fn suffix_model(n: u64, len: u64) -> Option<(u64, u64)> {
        (n > 0 && len > 0).then(|| ((len as u128 - (n as u128).min(len as u128)) as u64, len - 1))
    }

    #[test]
    fn if_range() {
        let etag = HeaderValue::from_static("\"6553f100-4d2\"");
        let secs = Some(1_700_000_000);
        let now = 1_800_000_000;
        let m = |v: &str| if_range_matches(&HeaderValue::from_str(v).unwrap(), &etag, secs, now);
        assert!(m("\"6553f100-4d2\""));
        assert!(m(" \"6553f100-4d2\" "));
        assert!(!m("W/\"6553f100-4d2\""), "weak never matches");
        assert!(!m("\"6553f100-4d3\""));
        assert!(!m("\"6553f100-4d2"));
        assert!(!m("\""));
        assert!(m("Tue, 14 Nov 2023 22:13:20 GMT"));
        assert!(!m("Tue, 14 Nov 2023 22:13:21 GMT"), "a later date");
        assert!(!m("Tue, 14 Nov 2023 22:13:19 GMT"), "an earlier date");
        assert!(!m("yesterday"));
        assert!(!m(""));
        let weak_ours = HeaderValue::from_static("W/\"x\"");
        let v = HeaderValue::from_static("W/\"x\"");
        assert!(!if_range_matches(&v, &weak_ours, None, now));
        let v = HeaderValue::from_static("\"x\"");
        assert!(!if_range_matches(&v, &weak_ours, None, now));
        let date = HeaderValue::from_static("Tue, 14 Nov 2023 22:13:20 GMT");
        assert!(
            !if_range_matches(&date, &etag, None, now),
            "no Last-Modified"
        );
        // Modified in the current second: the date is a weak validator.
        assert!(!if_range_matches(&date, &etag, secs, 1_700_000_000));
        assert!(if_range_matches(&date, &etag, secs, 1_700_000_001));
    }
}
