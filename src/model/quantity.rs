//! Resource quantities, parsed exactly as Kubernetes' `resource.ParseQuantity` parses them.
//!
//! A quantity is `<sign><digits>[.<digits>]<suffix>` where the suffix is a binary SI unit (Ki, Mi, Gi, Ti, Pi, Ei),
//! a decimal SI unit (n, u, m, "", k, M, G, T, P, E) or a decimal exponent (`e3`, `E-2`). Kubernetes keeps the
//! value as an arbitrary-precision decimal and rounds *up* when asked for an integer (`Value()`) or for
//! thousandths (`MilliValue()`): `0.1m` cpu is 1 millicore, `1.5Ki` is 1536 bytes, `100m` memory is 1 byte.
//! We keep the exact rational (digits × 10^e × 2^b) and round the same way, so berth never disagrees with the
//! kubelet about whether a pod fits.

use std::fmt;

/// Why a quantity string was rejected. Messages name the offending input, as the API server's do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error(
        "quantity {0:?} is empty; expected a number with an optional unit such as 500m, 2Gi or 1.5"
    )]
    Empty(String),
    #[error(
        "quantity {0:?} does not match the Kubernetes quantity format (e.g. 100m, 1.5, 2Gi, 1e3)"
    )]
    Format(String),
    #[error("quantity {0:?} has an unknown unit suffix {1:?}; valid suffixes are Ki Mi Gi Ti Pi Ei n u m k M G T P E and eN")]
    Suffix(String, String),
    #[error("quantity {0:?} is too large")]
    TooLarge(String),
    #[error("quantity {0:?} is negative; resource amounts must be zero or more")]
    Negative(String),
}

impl QuantityError {
    pub fn category(&self) -> &'static str {
        match self {
            QuantityError::Empty(_) => "empty",
            QuantityError::Format(_) => "format",
            QuantityError::Suffix(..) => "suffix",
            QuantityError::TooLarge(_) => "too_large",
            QuantityError::Negative(_) => "negative",
        }
    }
}

/// The exact value of a parsed quantity: `sign × digits × 10^exp10 × 2^exp2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    negative: bool,
    digits: u128,
    exp10: i32,
    exp2: u32,
}

impl Quantity {
    /// Parses a quantity string with Kubernetes' grammar.
    pub fn parse(input: &str) -> Result<Quantity, QuantityError> {
        if input.is_empty() {
            return Err(QuantityError::Empty(input.to_string()));
        }
        let bytes = input.as_bytes();
        let mut pos = 0;
        let mut negative = false;
        match bytes[0] {
            b'-' => {
                negative = true;
                pos = 1;
            }
            b'+' => pos = 1,
            _ => {}
        }
        let int_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        let int_part = &input[int_start..pos];
        let mut frac_part = "";
        if pos < bytes.len() && bytes[pos] == b'.' {
            pos += 1;
            let frac_start = pos;
            while pos < bytes.len() && bytes[pos].is_ascii_digit() {
                pos += 1;
            }
            frac_part = &input[frac_start..pos];
        }
        // Kubernetes accepts "", "-", "." and "1." as numbers (zero and one): its parser never demands a digit.
        let suffix = &input[pos..];
        let (exp10_suffix, exp2) = interpret_suffix(input, suffix)?;

        let mut digits: u128 = 0;
        let mut significant = 0usize;
        for ch in int_part.bytes().chain(frac_part.bytes()) {
            let d = (ch - b'0') as u128;
            if digits == 0 && d == 0 {
                continue;
            }
            significant += 1;
            if significant > 36 {
                return Err(QuantityError::TooLarge(input.to_string()));
            }
            digits = digits * 10 + d;
        }
        let exp10 = exp10_suffix
            .checked_sub(frac_part.len() as i32)
            .ok_or_else(|| QuantityError::TooLarge(input.to_string()))?;
        Ok(Quantity {
            negative: negative && digits != 0,
            digits,
            exp10,
            exp2,
        })
    }

    /// The value in whole units, rounded away from zero (Kubernetes' `Value()`): bytes for memory, cores for cpu.
    pub fn value(&self) -> Option<i64> {
        self.scaled(0)
    }

    /// The value in thousandths, rounded away from zero (Kubernetes' `MilliValue()`): millicores for cpu.
    pub fn milli_value(&self) -> Option<i64> {
        self.scaled(3)
    }

    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// `value × 10^extra10`, rounded up in magnitude; None when it does not fit in an i64.
    fn scaled(&self, extra10: i32) -> Option<i64> {
        if self.digits == 0 {
            return Some(0);
        }
        let mut numerator: u128 = self.digits;
        for _ in 0..self.exp2 {
            numerator = numerator.checked_mul(2)?;
        }
        let exp = self.exp10 + extra10;
        let magnitude: u128 = if exp >= 0 {
            let mut n = numerator;
            for _ in 0..exp {
                n = n.checked_mul(10)?;
            }
            n
        } else if -exp > 38 {
            // Smaller than any unit we can express: a positive remainder always rounds up to one.
            1
        } else {
            let divisor = 10u128.pow((-exp) as u32);
            numerator.div_ceil(divisor)
        };
        let magnitude = i64::try_from(magnitude).ok()?;
        Some(if self.negative { -magnitude } else { magnitude })
    }
}

impl fmt::Display for Quantity {
    /// Shows the exact value canonically in plain decimal (not Kubernetes' canonical suffix form).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.milli_value() {
            Some(m) if m % 1000 == 0 => write!(f, "{}", m / 1000),
            Some(m) => write!(f, "{m}m"),
            None => write!(f, "{}e{}*2^{}", self.digits, self.exp10, self.exp2),
        }
    }
}

/// Returns (power of ten, power of two) for a suffix, or the error Kubernetes gives for it.
fn interpret_suffix(input: &str, suffix: &str) -> Result<(i32, u32), QuantityError> {
    let known = match suffix {
        "" => Some((0, 0)),
        "n" => Some((-9, 0)),
        "u" => Some((-6, 0)),
        "m" => Some((-3, 0)),
        "k" => Some((3, 0)),
        "M" => Some((6, 0)),
        "G" => Some((9, 0)),
        "T" => Some((12, 0)),
        "P" => Some((15, 0)),
        "E" => Some((18, 0)),
        "Ki" => Some((0, 10)),
        "Mi" => Some((0, 20)),
        "Gi" => Some((0, 30)),
        "Ti" => Some((0, 40)),
        "Pi" => Some((0, 50)),
        "Ei" => Some((0, 60)),
        _ => None,
    };
    if let Some(k) = known {
        return Ok(k);
    }
    // A decimal exponent: e or E followed by an optionally signed integer.
    if suffix.len() > 1 && (suffix.starts_with('e') || suffix.starts_with('E')) {
        let exponent = &suffix[1..];
        let unsigned = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
        if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
            return exponent
                .parse::<i32>()
                .ok()
                .filter(|e| e.abs() <= 1000)
                .map(|e| (e, 0))
                .ok_or_else(|| QuantityError::TooLarge(input.to_string()));
        }
    }
    // Kubernetes distinguishes a malformed string from a well-formed but unknown suffix; so do we.
    let rest = suffix.trim_start_matches(|c| "eEinumkKMGTP".contains(c));
    let rest = rest.strip_prefix(['+', '-']).unwrap_or(rest);
    if rest.bytes().all(|b| b.is_ascii_digit()) {
        Err(QuantityError::Suffix(input.to_string(), suffix.to_string()))
    } else {
        Err(QuantityError::Format(input.to_string()))
    }
}

/// Parses a cpu quantity into millicores (rounded up, as the kubelet does). Negative amounts are rejected.
pub fn parse_cpu_millis(input: &str) -> Result<u64, QuantityError> {
    let q = Quantity::parse(input)?;
    if q.is_negative() {
        return Err(QuantityError::Negative(input.to_string()));
    }
    q.milli_value()
        .map(|v| v as u64)
        .ok_or_else(|| QuantityError::TooLarge(input.to_string()))
}

/// Parses a byte quantity (memory, storage) or a count (pods, GPUs) into whole units, rounded up.
pub fn parse_units(input: &str) -> Result<u64, QuantityError> {
    let q = Quantity::parse(input)?;
    if q.is_negative() {
        return Err(QuantityError::Negative(input.to_string()));
    }
    q.value()
        .map(|v| v as u64)
        .ok_or_else(|| QuantityError::TooLarge(input.to_string()))
}

/// Formats millicores the way `kubectl` shows them: `2` for whole cores, `1500m` otherwise.
pub fn format_cpu_millis(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// Formats bytes with the largest binary suffix that divides them exactly (`8Gi`, `1536Ki`, `100`).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u32); 6] = [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ];
    if bytes == 0 {
        return "0".to_string();
    }
    for (suffix, shift) in UNITS {
        let unit = 1u64 << shift;
        if bytes.is_multiple_of(unit) {
            return format!("{}{}", bytes / unit, suffix);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_millis_round_up_like_kubernetes() {
        let cases = [
            ("1", 1000),
            ("100m", 100),
            ("0.1", 100),
            ("1.5", 1500),
            ("0.0001", 1),
            ("0.1m", 1),
            ("250m", 250),
            ("2k", 2_000_000),
            ("1e3", 1_000_000),
            ("1E-3", 1),
            ("+2", 2000),
            ("0", 0),
            ("0000.000", 0),
            ("1.", 1000),
            (".5", 500),
        ];
        for (input, want) in cases.iter() {
            assert_eq!(parse_cpu_millis(input), Ok(*want), "cpu {input}");
        }
    }

    #[test]
    fn bytes_with_every_suffix() {
        let cases: [(&str, u64); 20] = [
            ("1Ki", 1024),
            ("1Mi", 1 << 20),
            ("1Gi", 1 << 30),
            ("1Ti", 1 << 40),
            ("1Pi", 1 << 50),
            ("1Ei", 1 << 60),
            ("1k", 1000),
            ("1M", 1_000_000),
            ("1G", 1_000_000_000),
            ("1T", 1_000_000_000_000),
            ("1P", 1_000_000_000_000_000),
            ("1E", 1_000_000_000_000_000_000),
            ("1.5Gi", 1_610_612_736),
            ("0.5Ki", 512),
            ("100m", 1), // 0.1 byte rounds up
            ("1n", 1),
            ("1u", 1),
            ("129e6", 129_000_000),
            ("123Mi", 128_974_848),
            ("1.G", 1_000_000_000), // Kubernetes' parser tolerates a trailing dot
        ];
        for (input, want) in cases {
            assert_eq!(parse_units(input), Ok(want), "bytes {input}");
        }
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        // From the invalid cases of Kubernetes' quantity tests.
        for input in [
            "1.1.M", "1+1.0M", "0.1mi", "0.1am", "aoeu", ".5i", "1i", "-3.01i", "-3.01e-", " 1",
            "1 ", "1e", "1Gib", "12 Mi", "1,5",
        ] {
            assert!(
                Quantity::parse(input).is_err(),
                "{input:?} should be rejected"
            );
        }
        assert_eq!(
            Quantity::parse(""),
            Err(QuantityError::Empty(String::new()))
        );
        assert!(matches!(Quantity::parse("0.1mi"), Err(QuantityError::Suffix(_, s)) if s == "mi"));
        assert!(matches!(
            Quantity::parse("5Zi"),
            Err(QuantityError::Format(_))
        ));
    }

    #[test]
    fn negative_resources_are_refused_but_parse() {
        assert!(Quantity::parse("-1").unwrap().is_negative());
        assert_eq!(
            parse_cpu_millis("-100m"),
            Err(QuantityError::Negative("-100m".into()))
        );
        // A negative zero is zero.
        assert_eq!(parse_units("-0"), Ok(0));
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        assert!(matches!(
            parse_units("1e30"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            parse_units("99999999999Ei"),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            parse_units("1e99999"),
            Err(QuantityError::TooLarge(_))
        ));
        assert_eq!(parse_units("1e-99"), Ok(1));
        assert!(parse_units(&"9".repeat(60)).is_err());
    }

    #[test]
    fn formatting_round_trips() {
        for m in [0u64, 1, 100, 1000, 1500, 64_000] {
            assert_eq!(parse_cpu_millis(&format_cpu_millis(m)), Ok(m));
        }
        for b in [0u64, 1, 1023, 1024, 1536 * 1024, 8 << 30, 7577 << 20] {
            assert_eq!(parse_units(&format_bytes(b)), Ok(b));
        }
        assert_eq!(format_bytes(8 << 30), "8Gi");
        assert_eq!(format_cpu_millis(1500), "1500m");
    }
}
