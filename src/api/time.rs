//! RFC 3339 timestamps, as the status and the token Secret's annotation carry them.
//!
//! jiff (what k8s-openapi's `Time` wraps) parses a superset of RFC 3339 (RFC 9557 zone
//! annotations, ISO 8601 basic format, minutes without seconds). The API server's `date-time`
//! format takes none of those, and a value it refuses in a status write would wedge the
//! LinkToken, so the RFC 3339 shape is checked before jiff checks the calendar.

use jiff::Timestamp;

/// `v` as a timestamp if it is RFC 3339 (`YYYY-MM-DDThh:mm:ss[.frac](Z|±hh:mm)`).
pub fn parse_rfc3339(v: &str) -> Option<Timestamp> {
    if !is_rfc3339_shape(v.as_bytes()) {
        return None;
    }
    v.parse().ok()
}

/// Now, as RFC 3339 in UTC with exactly three fractional digits (in-flight markers and
/// Secrets are ordered by it, so whole seconds are not enough).
pub fn now_rfc3339_millis() -> String {
    format!("{:.3}", Timestamp::now())
}

fn is_rfc3339_shape(b: &[u8]) -> bool {
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let at = |i: usize, set: &[u8]| b.get(i).is_some_and(|c| set.contains(c));
    if !(digits(0..4)
        && at(4, b"-")
        && digits(5..7)
        && at(7, b"-")
        && digits(8..10)
        && at(10, b"Tt ")
        && digits(11..13)
        && at(13, b":")
        && digits(14..16)
        && at(16, b":")
        && digits(17..19))
    {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_values_parse() {
        for v in [
            "2026-11-30T06:25:43Z",
            "2026-11-30T06:25:43.123Z",
            "2026-11-30t06:25:43.123456789z",
            "2026-11-30 06:25:43+02:00",
            "2026-11-30T06:25:43-05:30",
        ] {
            assert!(parse_rfc3339(v).is_some(), "{v}");
        }
        assert_eq!(
            parse_rfc3339("2026-11-30T08:25:43+02:00"),
            parse_rfc3339("2026-11-30T06:25:43Z")
        );
    }

    #[test]
    fn what_the_api_server_refuses_does_not_parse() {
        for v in [
            "",
            "soon",
            "2026-11-30",
            "2026-11-30T06:25Z",
            "2026-11-30T06:25:43",
            "2026-11-30T06:25:43.Z",
            "2026-11-30T06:25:43Z[UTC]",
            "20261130T062543Z",
            "2026-11-30T06:25:43+0200",
            "2026-13-30T06:25:43Z",
            "2026-02-30T06:25:43Z",
            "2026-11-30T06:25:43Z ",
        ] {
            assert!(parse_rfc3339(v).is_none(), "{v}");
        }
    }

    #[test]
    fn now_has_milliseconds_in_utc() {
        let now = now_rfc3339_millis();
        assert_eq!(now.len(), "2026-11-30T06:25:43.123Z".len(), "{now}");
        assert!(now.ends_with('Z'), "{now}");
        assert!(parse_rfc3339(&now).is_some(), "{now}");
    }
}
