//! Durations written as Go's `time.ParseDuration` and `metav1.Duration` write them (`90s`, `10m`, `1h30m`, `250ms`),
//! the form every Kubernetes user already types in YAML.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("duration {0:?} is not valid; expected a number with a unit, such as 30s, 10m, 1h30m or 500ms")]
    Format(String),
    #[error("duration {0:?} is negative; expected zero or more")]
    Negative(String),
    #[error("duration {0:?} is too large")]
    TooLarge(String),
}

impl DurationError {
    pub fn category(&self) -> &'static str {
        match self {
            DurationError::Format(_) => "format",
            DurationError::Negative(_) => "negative",
            DurationError::TooLarge(_) => "too_large",
        }
    }
}

/// JSON-schema pattern for such durations, used in the CRDs so the API server rejects bad ones.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$|^0$";

/// Parses a non-negative Go duration.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError::Format(input.to_string());
    if input.starts_with('-') {
        return Err(DurationError::Negative(input.to_string()));
    }
    let s = input.strip_prefix('+').unwrap_or(input);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err());
    }
    let mut total_nanos: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(err());
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(err()),
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole
                .parse()
                .map_err(|_| DurationError::TooLarge(input.into()))?
        };
        let mut nanos = whole
            .checked_mul(unit_nanos)
            .ok_or_else(|| DurationError::TooLarge(input.into()))?;
        let mut scale = unit_nanos;
        for d in frac.bytes().take(18) {
            scale /= 10;
            nanos += (d - b'0') as u128 * scale;
        }
        total_nanos = total_nanos
            .checked_add(nanos)
            .ok_or_else(|| DurationError::TooLarge(input.into()))?;
        rest = next;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000)
        .map_err(|_| DurationError::TooLarge(input.into()))?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// Formats a duration in the same notation (`1h30m0s` style is Go's; we print the shortest exact form).
pub fn format_duration(d: Duration) -> String {
    let total_ms = d.as_millis();
    if total_ms == 0 {
        return "0s".into();
    }
    if !total_ms.is_multiple_of(1000) {
        return format!("{total_ms}ms");
    }
    let mut secs = total_ms / 1000;
    let mut out = String::new();
    for (unit, size) in [("h", 3600u128), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{}", secs / size, unit));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        let cases = [
            ("0", 0),
            ("30s", 30_000),
            ("10m", 600_000),
            ("1h30m", 5_400_000),
            ("1.5h", 5_400_000),
            ("250ms", 250),
            ("2h45m30s", 9_930_000),
            ("1m0.5s", 60_500),
            ("+5s", 5_000),
        ];
        for (input, ms) in cases {
            assert_eq!(
                parse_duration(input).map(|d| d.as_millis()),
                Ok(ms),
                "{input}"
            );
        }
        assert_eq!(parse_duration("1500ns").unwrap().as_nanos(), 1500);
    }

    #[test]
    fn rejects_bad_durations() {
        for input in ["", "10", "1d", "m", "1.2.3s", "s10", "1 m", "abc"] {
            assert!(
                matches!(parse_duration(input), Err(DurationError::Format(_))),
                "{input:?}"
            );
        }
        assert_eq!(
            parse_duration("-1s"),
            Err(DurationError::Negative("-1s".into()))
        );
        assert!(matches!(
            parse_duration("99999999999999999999999999h"),
            Err(DurationError::TooLarge(_))
        ));
    }

    #[test]
    fn formats_round_trip() {
        for ms in [0u64, 250, 1000, 61_000, 5_400_000, 9_930_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }
}
