//! `Accept-Encoding` negotiation (RFC 9110 §12.5.3): which of the server's
//! codings the client accepts most, ties going to the server's order.

use http::header::{self, HeaderMap};

use super::Coding;

/// A weight in thousandths: `q=0.5` is 500, no `q` is 1000.
type Weight = u16;

/// One list member of `Accept-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Coding(Coding),
    Identity,
    Any,
    /// A coding the gate does not produce (`deflate`, `compress`, ...).
    Other,
}

/// The coding to use for a response to a request with these headers, or
/// `None` for identity. Every `Accept-Encoding` line counts; a line that is
/// not visible ASCII is ignored. No header at all means identity: the gate
/// does not guess for clients that did not ask.
pub fn negotiate(req_headers: &HeaderMap, server_order: &[Coding]) -> Option<Coding> {
    let mut lines = req_headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .peekable();
    lines.peek()?;
    negotiate_values(lines, server_order)
}

/// [`negotiate`] over the raw `Accept-Encoding` line values.
///
/// - A coding's weight is its own entry (`x-gzip` counts as `gzip`), else
///   the `*` entry, else it is not acceptable. Listed twice, the lower
///   weight holds, so an exclusion is never undone.
/// - `q=0` excludes; `*;q=0` excludes every coding not listed.
/// - A malformed weight (`q=2`, `q=0.1234`, `q=abc`) drops that entry.
/// - The highest weight wins; equal weights go to `server_order`.
/// - An explicit `identity` weighted above every acceptable coding wins
///   too, and that means `None`.
pub fn negotiate_values<'a, I>(values: I, server_order: &[Coding]) -> Option<Coding>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut own: [Option<Weight>; 3] = [None; 3];
    let mut any: Option<Weight> = None;
    let mut identity: Option<Weight> = None;
    let lower = |slot: &mut Option<Weight>, w: Weight| {
        *slot = Some(slot.map_or(w, |old| old.min(w)));
    };
    for line in values {
        for member in line.split(',') {
            let Some((token, weight)) = parse_member(member) else {
                continue;
            };
            match token {
                Token::Coding(c) => lower(&mut own[c.index()], weight),
                Token::Any => lower(&mut any, weight),
                Token::Identity => lower(&mut identity, weight),
                Token::Other => {}
            }
        }
    }
    let mut best: Option<(Coding, Weight)> = None;
    for &c in server_order {
        let w = own[c.index()].or(any).unwrap_or(0);
        // Strictly greater: an equal weight later in server_order loses.
        let better = match best {
            None => w > 0,
            Some((_, bw)) => w > bw,
        };
        if better {
            best = Some((c, w));
        }
    }
    let (coding, weight) = best?;
    match identity {
        Some(iw) if iw > weight => None,
        _ => Some(coding),
    }
}

/// `coding *( OWS ";" OWS name "=" value )`; `None` for an empty member or
/// a malformed weight. Parameters other than `q` are ignored.
fn parse_member(member: &str) -> Option<(Token, Weight)> {
    let mut parts = member.split(';');
    let name = parts.next()?.trim();
    if name.is_empty() {
        return None;
    }
    let mut weight: Weight = 1000;
    for param in parts {
        let (key, value) = param.split_once('=')?;
        if key.trim().eq_ignore_ascii_case("q") {
            weight = parse_qvalue(value.trim())?;
        }
    }
    let token = if name == "*" {
        Token::Any
    } else if name.eq_ignore_ascii_case("identity") {
        Token::Identity
    } else {
        Coding::parse(name).map_or(Token::Other, Token::Coding)
    };
    Some((token, weight))
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in
/// thousandths.
fn parse_qvalue(s: &str) -> Option<Weight> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths: Weight = 0;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += Weight::from(b - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use Coding::{Br, Gzip, Zstd};

    const ALL: &[Coding] = &[Br, Gzip, Zstd];

    fn one(v: &str, order: &[Coding]) -> Option<Coding> {
        negotiate_values([v], order)
    }

    #[test]
    fn negotiation_matrix() {
        let cases: &[(&str, &[Coding], Option<Coding>)] = &[
            // Plain lists: all weight 1, server order decides.
            ("gzip", ALL, Some(Gzip)),
            ("gzip, br", ALL, Some(Br)),
            ("gzip, deflate, br, zstd", ALL, Some(Br)),
            ("gzip, br", &[Gzip, Br], Some(Gzip)),
            ("zstd, gzip", &[Zstd, Gzip, Br], Some(Zstd)),
            // Weights beat server order.
            ("br;q=0.5, gzip", ALL, Some(Gzip)),
            ("gzip;q=1, br;q=0", ALL, Some(Gzip)),
            ("br;q=0.999, gzip;q=1.000", ALL, Some(Gzip)),
            ("br;q=0.8, gzip;q=0.8, zstd;q=0.7", ALL, Some(Br)),
            // Exclusions.
            ("gzip;q=0", ALL, None),
            ("gzip;q=0.000", ALL, None),
            ("br;q=0, *", ALL, Some(Gzip)),
            ("*;q=0", ALL, None),
            ("gzip, *;q=0", ALL, Some(Gzip)),
            // Wildcard.
            ("*", ALL, Some(Br)),
            ("*;q=0.5", &[Gzip, Br], Some(Gzip)),
            ("*;q=0.5, zstd", ALL, Some(Zstd)),
            ("br;q=0.1, *;q=0.5", ALL, Some(Gzip)),
            // Identity.
            ("identity", ALL, None),
            ("identity;q=0", ALL, None),
            ("identity;q=0, gzip", ALL, Some(Gzip)),
            ("gzip;q=0.5, identity", ALL, None),
            ("gzip, identity;q=0.5", ALL, Some(Gzip)),
            ("gzip;q=0.5, identity;q=0.5", ALL, Some(Gzip)),
            // Case and whitespace.
            ("GZIP", ALL, Some(Gzip)),
            ("Br;Q=0.9 , gZip ; q = 0.5", ALL, Some(Br)),
            ("  gzip  ;q=0.5,\tbr;q=0.4  ", ALL, Some(Gzip)),
            (",,gzip,,", ALL, Some(Gzip)),
            // x-gzip is gzip.
            ("x-gzip", ALL, Some(Gzip)),
            ("X-GZIP;q=0.3, br;q=0.2", ALL, Some(Gzip)),
            // Malformed weights drop only their entry.
            ("br;q=2, gzip", ALL, Some(Gzip)),
            ("br;q=0.1234, gzip;q=0.1", ALL, Some(Gzip)),
            ("br;q=abc, gzip;q=0.1", ALL, Some(Gzip)),
            ("br;q=1.001", ALL, None),
            ("br;q=, gzip;q=.5", ALL, None),
            ("br;q=-0.5", ALL, None),
            ("br;q=1., gzip;q=0.", ALL, Some(Br)),
            // Listed twice: the lower weight holds.
            ("gzip;q=0, gzip", ALL, None),
            // Unknown codings and codings the server does not offer.
            ("deflate, compress", ALL, None),
            ("br", &[Gzip], None),
            ("gzip", &[], None),
            // Empty header value.
            ("", ALL, None),
        ];
        for (value, order, want) in cases {
            assert_eq!(one(value, order), *want, "{value:?} with {order:?}");
        }
        assert!(cases.len() >= 20);
    }

    #[test]
    fn multiple_header_lines_are_one_list() {
        let mut h = HeaderMap::new();
        assert_eq!(negotiate(&h, ALL), None, "no header: identity");
        h.append(header::ACCEPT_ENCODING, HeaderValue::from_static("br;q=0"));
        h.append(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(negotiate(&h, ALL), Some(Gzip));
        h.append(header::ACCEPT_ENCODING, HeaderValue::from_static("*;q=0"));
        assert_eq!(negotiate(&h, &[Zstd, Gzip]), Some(Gzip));
        // A line that is not visible ASCII is skipped, the others count.
        h.append(
            header::ACCEPT_ENCODING,
            HeaderValue::from_bytes(b"zstd\xff").unwrap(),
        );
        assert_eq!(negotiate(&h, ALL), Some(Gzip));
    }

    #[test]
    fn qvalues() {
        for (s, w) in [
            ("0", 0),
            ("0.", 0),
            ("0.5", 500),
            ("0.05", 50),
            ("0.123", 123),
            ("1", 1000),
            ("1.", 1000),
            ("1.000", 1000),
        ] {
            assert_eq!(parse_qvalue(s), Some(w), "{s}");
        }
        for s in ["", ".5", "1.5", "1.0001", "0.1234", "2", "01", "0.5x", "+1"] {
            assert_eq!(parse_qvalue(s), None, "{s}");
        }
    }
}
