//! Durations in Go's form (`30s`, `10m`, `168h`, `1h30m`, `1.5h`), as
//! distribution's configuration writes them.
//!
//! Written by hand rather than with humantime: humantime rejects fractions
//! (`1.5h`) and bare `0`, both of which distribution's files use.

use std::time::Duration;

use anyhow::{anyhow, bail};
use serde::{Deserialize, Deserializer, Serializer};

/// Parses a Go duration such as `168h`, `1h30m`, `10s` or `500ms`.
pub fn parse(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        bail!("empty duration");
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| anyhow!("duration {s:?} lacks a unit (h, m, s, ms)"))?;
        let (num, tail) = rest.split_at(num_end);
        let n: f64 = num.parse().map_err(|_| anyhow!("invalid duration {s:?}"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let secs = match unit {
            "h" => n * 3600.0,
            "m" => n * 60.0,
            "s" => n,
            "ms" => n / 1e3,
            "us" | "µs" => n / 1e6,
            "ns" => n / 1e9,
            _ => bail!("invalid duration unit {unit:?} in {s:?}"),
        };
        total += Duration::try_from_secs_f64(secs)
            .map_err(|_| anyhow!("duration {s:?} is out of range"))?;
        rest = tail;
    }
    Ok(total)
}

/// The shortest Go form of `d`: `24h`, `5m`, `30s`, `250ms`.
pub fn format(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() == 0 && secs > 0 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if d.subsec_nanos() == 0 && secs > 0 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else if d.subsec_millis() == 0 && d.subsec_nanos() == 0 {
        format!("{secs}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A duration written as a Go duration string (or a number of nanoseconds,
/// which is what Go's YAML decoder makes of a bare number).
#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Text(String),
    Nanos(u64),
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match Raw::deserialize(d)? {
        Raw::Text(s) => parse(&s).map_err(serde::de::Error::custom),
        Raw::Nanos(n) => Ok(Duration::from_nanos(n)),
    }
}

pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse("168h").unwrap(), Duration::from_secs(168 * 3600));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert!(parse("10").is_err());
        assert!(parse("10x").is_err());
        assert!(parse("").is_err());
        assert!(parse("1e400h").is_err());
        for s in ["24h", "5m", "30s", "250ms"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
