//! Go durations (`5s`, `1m30s`, `100ms`, `1.5h`): the one parser and formatter every crate
//! uses, for resource files (timeouts, retry intervals), component metadata and the tools'
//! flags.
//!
//! Dapr writes and reads durations with Go's `time.ParseDuration` and `Duration.String`;
//! matching them exactly keeps a file that works with Dapr working here, and the other way
//! round.

use std::time::Duration;

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty.
    #[error("empty duration")]
    Empty,
    /// A leading `-` where only non-negative durations make sense.
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

/// A duration whose sign matters: Dapr's components read a zero or negative duration in
/// their metadata as "off" (`cleanupInterval: -1`), which `std::time::Duration` cannot hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signed {
    /// Greater than zero.
    Positive(Duration),
    /// Zero or negative.
    NonPositive,
}

impl Signed {
    /// The duration when positive; `None` for "off".
    pub fn positive(self) -> Option<Duration> {
        match self {
            Signed::Positive(d) => Some(d),
            Signed::NonPositive => None,
        }
    }
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

/// Parses a non-negative Go duration such as `300ms`, `1.5h` or `2h45m`.
///
/// Like Go's `time.ParseDuration`: a sequence of decimal numbers, each with an optional
/// fraction and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`); `0` alone needs no unit.
/// Surrounding whitespace is ignored. Unlike Go, negative durations are rejected, because
/// no field that uses this means anything by them.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    match parse_go(input)? {
        (true, d) if !d.is_zero() => Err(DurationError::Negative(input.to_string())),
        (_, d) => Ok(d),
    }
}

/// Parses a Go duration that may be negative, as [`parse`] does otherwise.
pub fn parse_signed(input: &str) -> Result<Signed, DurationError> {
    Ok(signed(parse_go(input)?))
}

/// Parses a Go duration or a bare number of seconds (`30`, `-1`), the two forms Dapr's
/// component metadata decoder accepts for a duration field (it takes whole seconds only; a
/// fraction such as `0.5` is accepted here as well).
pub fn parse_or_seconds(input: &str) -> Result<Signed, DurationError> {
    let trimmed = input.trim();
    let digits = trimmed.strip_prefix(['-', '+']).unwrap_or(trimmed);
    let bare_number = !digits.is_empty()
        && digits.bytes().any(|b| b.is_ascii_digit())
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if bare_number {
        parse_go(&format!("{trimmed}s"))
            .map(signed)
            .map_err(|e| rename(e, input))
    } else {
        parse_signed(input)
    }
}

fn signed((negative, d): (bool, Duration)) -> Signed {
    if negative || d.is_zero() {
        Signed::NonPositive
    } else {
        Signed::Positive(d)
    }
}

/// Reports an error against what the user wrote, not the string built from it.
fn rename(err: DurationError, input: &str) -> DurationError {
    let input = input.to_string();
    match err {
        DurationError::Empty => DurationError::Empty,
        DurationError::Negative(_) => DurationError::Negative(input),
        DurationError::MissingUnit(_) => DurationError::MissingUnit(input),
        DurationError::UnknownUnit { unit, .. } => DurationError::UnknownUnit { input, unit },
        DurationError::Malformed(_) => DurationError::Malformed(input),
        DurationError::Overflow(_) => DurationError::Overflow(input),
    }
}

/// Formats a duration as Go's `Duration.String` does: `0s`, `250ms`, `1.5µs`, `1m30s`,
/// `1h0m0s`, `2.25s`.
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < NANOS_PER_SECOND {
        let (scale, unit) = if nanos < NANOS_PER_MICRO {
            (1, "ns")
        } else if nanos < NANOS_PER_MILLI {
            (NANOS_PER_MICRO, "\u{b5}s")
        } else {
            (NANOS_PER_MILLI, "ms")
        };
        return format!("{}{unit}", decimal(nanos, scale));
    }
    let secs = d.as_secs();
    let (h, m) = (secs / 3600, secs / 60 % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    let rest = u128::from(secs % 60) * NANOS_PER_SECOND + u128::from(d.subsec_nanos());
    out.push_str(&decimal(rest, NANOS_PER_SECOND));
    out.push('s');
    out
}

/// `value / scale` in decimal, without trailing zeros in the fraction.
fn decimal(value: u128, scale: u128) -> String {
    let (whole, frac) = (value / scale, value % scale);
    if frac == 0 {
        return whole.to_string();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// The parser behind the public functions: the sign and the magnitude.
fn parse_go(input: &str) -> Result<(bool, Duration), DurationError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if s == "0" {
        return Ok((negative, Duration::ZERO));
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
    Ok((negative, Duration::new(secs, sub)))
}

/// An ISO 8601 duration (`P1Y2M3DT4H5M6.5S`, `P2W`, `PT30S`, optionally repeated as
/// `R5/PT30S`), as Dapr accepts it for a job's `dueTime` and `ttl`. Years, months and days
/// are calendar units, so they stay apart: only the caller knows the date they count from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Iso8601 {
    pub years: u32,
    pub months: u32,
    /// Days, weeks included (a week is seven days).
    pub days: u32,
    /// Hours, minutes and seconds.
    pub time: Duration,
    /// The `R<n>/` prefix: how often the duration repeats (`None` when absent).
    pub repeats: Option<u32>,
}

/// Parses an ISO 8601 duration (see [`Iso8601`]); designators are case-insensitive.
pub fn parse_iso8601(input: &str) -> Result<Iso8601, DurationError> {
    let bad = || DurationError::Malformed(input.to_string());
    let s = input.trim().to_ascii_uppercase();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut out = Iso8601::default();
    let body = match s.strip_prefix('R') {
        Some(rest) => {
            let (n, rest) = rest.split_once('/').ok_or_else(bad)?;
            out.repeats = Some(if n.is_empty() {
                u32::MAX
            } else {
                n.parse().map_err(|_| bad())?
            });
            rest.to_string()
        }
        None => s,
    };
    let body = body.strip_prefix('P').ok_or_else(bad)?;
    let (date, time) = match body.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return Err(bad()),
        None => (body, None),
    };
    if date.is_empty() && time.is_none() {
        return Err(bad());
    }
    let mut nanos: u128 = 0;
    for (part, units) in [(date, "YMWD"), (time.unwrap_or(""), "HMS")] {
        let mut rest = part;
        let mut allowed = units;
        while !rest.is_empty() {
            let len = rest
                .bytes()
                .take_while(|b| b.is_ascii_digit() || *b == b'.')
                .count();
            let (number, after) = rest.split_at(len);
            let unit = after.chars().next().ok_or_else(bad)?;
            // Each designator once, in order.
            let at = allowed.find(unit).ok_or_else(bad)?;
            allowed = &allowed[at + 1..];
            rest = &after[1..];
            if number.is_empty() {
                return Err(bad());
            }
            if units == "HMS" {
                let scale = match unit {
                    'H' => 3600 * NANOS_PER_SECOND,
                    'M' => 60 * NANOS_PER_SECOND,
                    _ => NANOS_PER_SECOND,
                };
                let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
                let whole: u128 = whole.parse().map_err(|_| bad())?;
                let mut part_nanos = whole.checked_mul(scale).ok_or_else(bad)?;
                if !frac.is_empty() {
                    let digits = &frac[..frac.len().min(9)];
                    let f: u128 = digits.parse().map_err(|_| bad())?;
                    part_nanos += f * scale / 10u128.pow(digits.len() as u32);
                }
                nanos = nanos.checked_add(part_nanos).ok_or_else(bad)?;
            } else {
                let n: u32 = number.parse().map_err(|_| bad())?;
                match unit {
                    'Y' => out.years = n,
                    'M' => out.months = n,
                    'W' => {
                        out.days = out
                            .days
                            .checked_add(n.checked_mul(7).ok_or_else(bad)?)
                            .ok_or_else(bad)?
                    }
                    _ => out.days = out.days.checked_add(n).ok_or_else(bad)?,
                }
            }
        }
    }
    if nanos > MAX_NANOS {
        return Err(DurationError::Overflow(input.to_string()));
    }
    out.time = Duration::from_nanos(u64::try_from(nanos).map_err(|_| bad())?);
    Ok(out)
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
            assert_eq!(parse(input), Ok(*want), "input {input:?}");
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
            ("-", "expected a number"),
            ("PT5S", "expected a number"),
            ("1..5s", "missing unit"),
            ("9999999999h", "out of range"),
            ("99999999999999999999999999999999999999999s", "out of range"),
        ];
        for (input, want) in cases {
            let err = parse(input).expect_err(input).to_string();
            assert!(
                err.contains(want),
                "input {input:?}: {err:?} should contain {want:?}"
            );
        }
    }

    #[test]
    fn largest_go_duration_is_accepted() {
        // Go's maximum: 2562047h47m16.854775807s.
        let d = parse("2562047h47m16.854775807s").unwrap();
        assert_eq!(d.as_nanos(), i64::MAX as u128);
        assert!(parse("2562047h47m16.854775808s").is_err());
    }

    #[test]
    fn signed_durations_keep_off_apart() {
        let s = Duration::from_secs;
        assert_eq!(parse_signed("-5m"), Ok(Signed::NonPositive));
        assert_eq!(parse_signed("0s"), Ok(Signed::NonPositive));
        assert_eq!(parse_signed("90s"), Ok(Signed::Positive(s(90))));
        assert_eq!(Signed::Positive(s(1)).positive(), Some(s(1)));
        assert_eq!(Signed::NonPositive.positive(), None);
    }

    #[test]
    fn bare_numbers_are_seconds() {
        let s = Duration::from_secs;
        let p = |t: &str| parse_or_seconds(t);
        assert_eq!(p("20"), Ok(Signed::Positive(s(20))));
        assert_eq!(p(" 30 "), Ok(Signed::Positive(s(30))));
        assert_eq!(p("1.5"), Ok(Signed::Positive(Duration::from_millis(1500))));
        assert_eq!(p("1h30m"), Ok(Signed::Positive(s(5400))));
        assert_eq!(p("250ms"), Ok(Signed::Positive(Duration::from_millis(250))));
        assert_eq!(p("-1"), Ok(Signed::NonPositive));
        assert_eq!(p("0"), Ok(Signed::NonPositive));
        assert_eq!(p("-5m"), Ok(Signed::NonPositive));
        for bad in ["", "s", "10x", "1h3", "abc", "-", "inf", "1..2s", "1..2"] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
        // Errors quote what was written, not the string with a unit added.
        let err = p("99999999999999").unwrap_err().to_string();
        assert!(err.contains("\"99999999999999\""), "{err}");
    }

    #[test]
    fn formats_like_go() {
        let cases: &[(Duration, &str)] = &[
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(42), "42ns"),
            (Duration::from_nanos(1_500), "1.5\u{b5}s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_micros(2_250), "2.25ms"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::new(3723, 4_005_006), "1h2m3.004005006s"),
        ];
        for (d, want) in cases {
            assert_eq!(format(*d), *want, "{d:?}");
            assert_eq!(parse(want), Ok(*d), "{want} parses back");
        }
    }

    #[test]
    fn reads_iso8601_durations() {
        let d = parse_iso8601("P1Y2M3DT4H5M6.5S").unwrap();
        assert_eq!((d.years, d.months, d.days, d.repeats), (1, 2, 3, None));
        assert_eq!(
            d.time,
            Duration::from_millis(4 * 3_600_000 + 5 * 60_000 + 6_500)
        );
        assert_eq!(
            parse_iso8601("pt30s").unwrap().time,
            Duration::from_secs(30)
        );
        assert_eq!(parse_iso8601("P2W").unwrap().days, 14);
        assert_eq!(parse_iso8601("R5/PT1M").unwrap().repeats, Some(5));
        for bad in [
            "", "P", "PT", "1D", "P1H", "PT1D", "P1D1Y", "P1.5D", "R5PT1M", "PTS",
        ] {
            assert!(parse_iso8601(bad).is_err(), "{bad:?}");
        }
    }
}
