//! Human units in the YAML: durations (`100ms`, `30s`, `5m`, `2h`, `365d`),
//! sizes (`16KiB`, `10MiB`, `1GB`) and rates (`100/s`, `20/m`, `1000/h`),
//! plus the serde newtypes that accept them as YAML strings or integers.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use crate::types::Rate;

const DURATION_HINT: &str = "expected a number followed by ms, s, m, h or d";
const SIZE_HINT: &str =
    "expected a number of bytes, optionally followed by KiB, MiB, GiB, KB, MB or GB";
const RATE_HINT: &str = "expected a count per unit such as 100/s, 20/m or 1000/h";

/// Splits `"10MiB"` into `(10, "MiB")`; the number part is ASCII digits only.
fn split_number(s: &str) -> Option<(u64, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    let n = s[..end].parse::<u64>().ok()?;
    Some((n, s[end..].trim_start()))
}

/// Parses `100ms`, `30s`, `5m`, `2h`, `365d`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let bad = || format!("invalid duration `{s}`: {DURATION_HINT}");
    let (n, unit) = split_number(t).ok_or_else(bad)?;
    let ms_per: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let ms = n
        .checked_mul(ms_per)
        .ok_or_else(|| format!("duration `{s}` is too large"))?;
    Ok(Duration::from_millis(ms))
}

/// Parses a byte size. `KiB`/`MiB`/`GiB` are 1024-based; `KB`/`MB`/`GB` are
/// 1000-based (as their SI names say); a bare number is bytes. `B` is accepted.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("invalid size `{s}`: {SIZE_HINT}");
    let (n, unit) = split_number(t).ok_or_else(bad)?;
    let mul: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("size `{s}` is too large"))
}

/// Parses `100/s`, `20/m`, `1000/h` (also `/d`). A zero count parses; the
/// validator rejects it with a position.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let t = s.trim();
    let bad = || format!("invalid rate `{s}`: {RATE_HINT}");
    let (count, per) = t.split_once('/').ok_or_else(bad)?;
    let count = count.trim();
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let count = count
        .parse::<u32>()
        .map_err(|_| format!("rate `{s}` is too large"))?;
    let per = match per.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3_600),
        "d" => Duration::from_secs(86_400),
        _ => return Err(bad()),
    };
    Ok(Rate { count, per })
}

/// A duration in the YAML: a string with a unit, or an integer number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// A byte size in the YAML: a string with a unit, or an integer number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// A rate in the YAML: always a string such as `100/s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateV(pub Rate);

/// Shared visitor: strings go through `parse`, integers through `from_int`.
struct UnitVisitor<T> {
    what: &'static str,
    hint: &'static str,
    parse: fn(&str) -> Result<T, String>,
    from_int: Option<fn(u64) -> T>,
}

impl<T> UnitVisitor<T> {
    fn bad_number<E: de::Error>(&self, shown: &dyn fmt::Display) -> E {
        E::custom(format!("invalid {} `{shown}`: {}", self.what, self.hint))
    }
}

impl<'de, T> Visitor<'de> for UnitVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a {} ({})", self.what, self.hint)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        match self.from_int {
            Some(f) => Ok(f(v)),
            None => Err(self.bad_number(&v)),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        match (u64::try_from(v), self.from_int) {
            (Ok(u), Some(f)) => Ok(f(u)),
            _ => Err(self.bad_number(&v)),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        Err(self.bad_number(&v))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor {
            what: "duration",
            hint: DURATION_HINT,
            parse: |s| parse_duration(s).map(Dur),
            from_int: Some(|n| Dur(Duration::from_secs(n))),
        })
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor {
            what: "size",
            hint: SIZE_HINT,
            parse: |s| parse_size(s).map(Size),
            from_int: Some(Size),
        })
    }
}

impl<'de> Deserialize<'de> for RateV {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor {
            what: "rate",
            hint: RATE_HINT,
            parse: |s| parse_rate(s).map(RateV),
            from_int: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("365d"), Ok(Duration::from_secs(365 * 86400)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(
            parse_duration("5x"),
            Err("invalid duration `5x`: expected a number followed by ms, s, m, h or d".into())
        );
        for bad in ["", "s", "-1s", "1.5s", "5 min", "5S", "ms100"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(parse_duration("999999999999999999d").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("16KiB"), Ok(16 * 1024));
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2KB"), Ok(2000));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        for bad in ["", "KiB", "10mib", "1.5MiB", "-1", "10 XB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("10mb")
            .unwrap_err()
            .contains("invalid size `10mb`"));
    }

    #[test]
    fn rates() {
        let r = parse_rate("100/s").unwrap();
        assert_eq!((r.count, r.per), (100, Duration::from_secs(1)));
        let r = parse_rate("20/m").unwrap();
        assert_eq!((r.count, r.per), (20, Duration::from_secs(60)));
        let r = parse_rate("1000/h").unwrap();
        assert_eq!((r.count, r.per), (1000, Duration::from_secs(3600)));
        assert_eq!(parse_rate("0/s").map(|r| r.count), Ok(0));
        for bad in [
            "",
            "100",
            "/s",
            "100/x",
            "1.5/s",
            "-1/s",
            "100/sec",
            "99999999999/s",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_forms() {
        let d: Dur = serde_yaml::from_str("45").unwrap();
        assert_eq!(d.0, Duration::from_secs(45));
        let d: Dur = serde_yaml::from_str("250ms").unwrap();
        assert_eq!(d.0, Duration::from_millis(250));
        let s: Size = serde_yaml::from_str("2048").unwrap();
        assert_eq!(s.0, 2048);
        let e = serde_yaml::from_str::<Dur>("1.5").unwrap_err().to_string();
        assert!(e.starts_with("invalid duration `1.5`"), "{e}");
        let e = serde_yaml::from_str::<RateV>("100")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("invalid rate `100`"), "{e}");
        assert!(serde_yaml::from_str::<Dur>("[1]").is_err());
    }
}
