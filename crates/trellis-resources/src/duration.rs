//! Parser for Go duration strings (`5s`, `1m30s`, `100ms`, `1.5h`), the format Dapr resource files use
//! for timeouts, retry intervals and the like.

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty.
    #[error("empty duration")]
    Empty,
    /// A leading `-`; `std::time::Duration` cannot hold it and no Dapr field means anything by it.
    #[error("invalid duration {0:?}: negative durations are not allowed")]
    Negative(String),
    /// A number without a unit (only `0` may omit it, as in Go).
    #[error("invalid duration {0:?}: missing unit (use ns, us, ms, s, m or h)")]
    MissingUnit(String),
    /// A unit that is not one of Go's.
    #[error("invalid duration {input:?}: unknown unit {unit:?} (use ns, us, ms, s, m or h)")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The unit as written.
        unit: String,
    },
    /// Anything else that is not `<number><unit>` repeated.
    #[error("invalid duration {0:?}: expected a number followed by a unit, such as 5s or 1m30s")]
    Malformed(String),
    /// Larger than Go can represent (about 292 years), which Dapr would reject too.
    #[error("invalid duration {0:?}: out of range")]
    Overflow(String),
}

const NANOS_PER_MICRO: u128 = 1_000;
const NANOS_PER_MILLI: u128 = 1_000_000;
const NANOS_PER_SECOND: u128 = 1_000_000_000;
// Go stores durations as i64 nanoseconds; staying within that keeps us from accepting files Dapr rejects.
const MAX_NANOS: u128 = i64::MAX as u128;

fn unit_nanos(unit: &str) -> Option<u128> {
    Some(match unit {
        "ns" => 1,
        // Go accepts both the micro sign (U+00B5) and the Greek mu (U+03BC).
        "us" | "\u{b5}s" | "\u{3bc}s" => NANOS_PER_MICRO,
        "ms" => NANOS_PER_MILLI,
        "s" => NANOS_PER_SECOND,
        "m" => 60 * NANOS_PER_SECOND,
        "h" => 3600 * NANOS_PER_SECOND,
        _ => return None,
    })
}

/// Parses a Go duration string such as `300ms`, `1.5h` or `2h45m`.
///
/// Like Go's `time.ParseDuration`: a sequence of decimal numbers, each with an optional fraction and a
/// unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`); `0` alone needs no unit. Unlike Go, negative
/// durations are rejected because `Duration` is unsigned.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let s = match s.strip_prefix('-') {
        Some(rest) => {
            // "-0" is zero in Go; harmless to accept.
            if rest == "0" {
                return Ok(Duration::ZERO);
            }
            return Err(DurationError::Negative(input.to_string()));
        }
        None => s.strip_prefix('+').unwrap_or(s),
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(DurationError::Malformed(input.to_string()));
    }

    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        // Integer part.
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        // Optional fraction.
        let (frac_digits, after_num) = match after_int.strip_prefix('.') {
            Some(after_dot) => {
                let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                after_dot.split_at(frac_len)
            }
            None => ("", after_int),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return Err(DurationError::Malformed(input.to_string()));
        }
        // Unit: everything up to the next digit or dot.
        let unit_len = after_num
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after_num.len(), |(i, _)| i);
        let (unit, after_unit) = after_num.split_at(unit_len);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit(input.to_string()));
        }
        let scale = unit_nanos(unit).ok_or_else(|| DurationError::UnknownUnit {
            input: input.to_string(),
            unit: unit.to_string(),
        })?;

        let overflow = || DurationError::Overflow(input.to_string());
        let mut whole: u128 = 0;
        for d in int_digits.bytes() {
            whole = whole
                .checked_mul(10)
                .and_then(|w| w.checked_add(u128::from(d - b'0')))
                .filter(|w| *w <= MAX_NANOS)
                .ok_or_else(overflow)?;
        }
        let mut nanos = whole.checked_mul(scale).ok_or_else(overflow)?;
        if !frac_digits.is_empty() {
            // Digits beyond nanosecond precision cannot change the result, so cap them to keep the
            // arithmetic in range (Go truncates the same way).
            let mut frac: u128 = 0;
            let mut denom: u128 = 1;
            for d in frac_digits.bytes().take(20) {
                frac = frac * 10 + u128::from(d - b'0');
                denom *= 10;
            }
            nanos = nanos
                .checked_add(frac * scale / denom)
                .ok_or_else(overflow)?;
        }
        total = total
            .checked_add(nanos)
            .filter(|t| *t <= MAX_NANOS)
            .ok_or_else(overflow)?;
        rest = after_unit;
    }

    let secs = u64::try_from(total / NANOS_PER_SECOND)
        .map_err(|_| DurationError::Overflow(input.to_string()))?;
    let sub = u32::try_from(total % NANOS_PER_SECOND)
        .map_err(|_| DurationError::Overflow(input.to_string()))?;
    Ok(Duration::new(secs, sub))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_go_durations() {
        let cases: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("-0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("5s", Duration::from_secs(5)),
            ("+5s", Duration::from_secs(5)),
            ("1m30s", Duration::from_secs(90)),
            ("100ms", Duration::from_millis(100)),
            ("1h", Duration::from_secs(3600)),
            ("500us", Duration::from_micros(500)),
            ("500\u{b5}s", Duration::from_micros(500)),
            ("500\u{3bc}s", Duration::from_micros(500)),
            ("42ns", Duration::from_nanos(42)),
            ("1.5h", Duration::from_secs(5400)),
            (".5s", Duration::from_millis(500)),
            ("5.s", Duration::from_secs(5)),
            ("2h45m", Duration::from_secs(2 * 3600 + 45 * 60)),
            ("1h2m3s4ms5us6ns", Duration::new(3723, 4_005_006)),
            ("0.000000001s", Duration::from_nanos(1)),
            ("1.0000000009s", Duration::from_secs(1)),
            (" 10s ", Duration::from_secs(10)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input), Ok(*want), "input {input:?}");
        }
    }

    #[test]
    fn rejects_bad_durations() {
        let cases: &[(&str, &str)] = &[
            ("", "empty duration"),
            ("5", "missing unit"),
            ("1m30", "missing unit"),
            ("5sec", "unknown unit \"sec\""),
            ("5d", "unknown unit \"d\""),
            ("-5s", "negative durations are not allowed"),
            ("s", "expected a number"),
            (".s", "expected a number"),
            ("+", "expected a number"),
            ("PT5S", "expected a number"),
            ("1..5s", "missing unit"),
            ("9999999999h", "out of range"),
            ("99999999999999999999999999999999999999999s", "out of range"),
        ];
        for (input, want) in cases {
            let err = parse_duration(input).expect_err(input).to_string();
            assert!(
                err.contains(want),
                "input {input:?}: {err:?} should contain {want:?}"
            );
        }
    }

    #[test]
    fn largest_go_duration_is_accepted() {
        // Go's maximum: 2562047h47m16.854775807s.
        let d = parse_duration("2562047h47m16.854775807s").unwrap();
        assert_eq!(d.as_nanos(), i64::MAX as u128);
        assert!(parse_duration("2562047h47m16.854775808s").is_err());
    }
}
