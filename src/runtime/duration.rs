//! Parsing of human-friendly durations for flags (`30s`, `10m`, `1h30m`, `500ms`).
//!
//! A tiny parser instead of a crate: the grammar operators actually type is small, and owning it
//! lets the error say exactly what was wrong with the flag value.

use std::time::Duration;

/// Parses a duration made of one or more `<integer><unit>` parts, units `ms`, `s`, `m`, `h`
/// (e.g. `90s`, `10m`, `1h30m`). A bare number is rejected: `30` could mean seconds or minutes,
/// and guessing wrong silently is worse than asking.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration; use e.g. 30s, 10m or 1h".to_string());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "invalid duration {input:?}: expected a number at {rest:?} (use e.g. 30s, 10m, 1h)"
            ));
        }
        let (number, tail) = rest.split_at(digits);
        let value: u64 = number
            .parse()
            .map_err(|_| format!("invalid duration {input:?}: {number} is too large"))?;
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let part = match unit {
            "ms" => Some(Duration::from_millis(value)),
            "s" => Some(Duration::from_secs(value)),
            "m" => value.checked_mul(60).map(Duration::from_secs),
            "h" => value.checked_mul(3600).map(Duration::from_secs),
            "" => {
                return Err(format!(
                    "invalid duration {input:?}: missing unit after {number} (ms, s, m or h)"
                ));
            }
            other => {
                return Err(format!(
                    "invalid duration {input:?}: unknown unit {other:?} (ms, s, m or h)"
                ));
            }
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| format!("invalid duration {input:?}: too large"))?;
        rest = tail;
    }
    Ok(total)
}

/// Like [`parse_duration`] but rejects zero, for intervals and timeouts where zero is meaningless.
pub fn parse_positive_duration(input: &str) -> Result<Duration, String> {
    let d = parse_duration(input)?;
    if d.is_zero() {
        return Err(format!("duration {input:?} must be greater than zero"));
    }
    Ok(d)
}

/// Formats a duration the way [`parse_duration`] reads it (used for defaults in help and docs).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if secs > 0 || out.is_empty() {
        out.push_str(&format!("{secs}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_compound_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(
            parse_duration("1m30s250ms"),
            Ok(Duration::from_millis(90_250))
        );
        assert_eq!(parse_duration(" 5s "), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_bad_input_with_a_clear_message() {
        let err = parse_duration("30").unwrap_err();
        assert!(err.contains("missing unit"), "{err}");
        let err = parse_duration("10d").unwrap_err();
        assert!(err.contains("unknown unit \"d\""), "{err}");
        let err = parse_duration("").unwrap_err();
        assert!(err.contains("empty"), "{err}");
        let err = parse_duration("s").unwrap_err();
        assert!(err.contains("expected a number"), "{err}");
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("9999999999999999999h").is_err());
    }

    #[test]
    fn positive_rejects_zero() {
        assert!(
            parse_positive_duration("0s")
                .unwrap_err()
                .contains("greater than zero")
        );
        assert_eq!(parse_positive_duration("1s"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn format_round_trips() {
        for s in ["30s", "10m", "1h", "1h30m", "500ms", "0s", "1h0m5s"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{s}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(25)), "25s");
    }
}
