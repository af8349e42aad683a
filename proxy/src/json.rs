//! JSON string literals written by hand, for the few small documents the
//! gate writes per request (rejection bodies, access-log lines), where going
//! through `serde_json` costs more than the rest of the work.

/// A JSON string literal (RFC 8259 escaping).
pub fn push_json_str(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    let clean = |b: &u8| *b >= 0x20 && *b != b'"' && *b != b'\\';
    if s.as_bytes().iter().all(clean) {
        out.push_str(s);
    } else {
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped_and_parse_back() {
        for s in [
            "plain",
            "q\"uote",
            "back\\slash",
            "nl\nand\ttab",
            "\u{1}ctl",
            "ünï",
        ] {
            let mut out = String::new();
            push_json_str(&mut out, s);
            let back: String = serde_json::from_str(&out).unwrap();
            assert_eq!(back, s);
        }
    }
}
