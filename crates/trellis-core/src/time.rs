//! The clock in milliseconds ([`now_ms`]) and RFC 3339 timestamps: the one formatter (UTC) for CloudEvent `time`/`expiration`, the
//! state API's `ttlExpireTime`, the workflow API and the benchmark reports, and the one
//! parser, for the start times clients send (`dapr.workflow.start_time`).
//!
//! Written here rather than taken from a date crate because that is all Trellis needs: no
//! time zones beyond a fixed offset, no calendar arithmetic.

use std::time::{SystemTime, UNIX_EPOCH};

/// How much of the second to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// `2024-05-01T12:00:00Z`, as Dapr reports `ttlExpireTime`.
    Seconds,
    /// `2024-05-01T12:00:00.123Z`, as CloudEvents carry `time`.
    Millis,
}

/// A UTC calendar date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millis: u32,
}

impl Civil {
    /// The UTC date and time of `t`; instants before 1970 count as 1970-01-01.
    pub fn of(t: SystemTime) -> Civil {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = days_to_civil(i64::try_from(days).unwrap_or(i64::MAX / 2));
        // Each of these is below 86,400 and so fits.
        let part = |v: u64| u32::try_from(v).unwrap_or(0);
        Civil {
            year,
            month,
            day,
            hour: part(rem / 3600),
            minute: part(rem / 60 % 60),
            second: part(rem % 60),
            millis: d.subsec_millis(),
        }
    }
}

/// `t` as RFC 3339 in UTC (`Z`), to the given precision.
pub fn rfc3339(t: SystemTime, precision: Precision) -> String {
    let c = Civil::of(t);
    let base = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    );
    match precision {
        Precision::Seconds => format!("{base}Z"),
        Precision::Millis => format!("{base}.{:03}Z", c.millis),
    }
}

/// Now, in milliseconds since the Unix epoch (the clock of the stores' records: workflow
/// timers, job ticks).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `ms` milliseconds since the Unix epoch as RFC 3339 with milliseconds (before the epoch:
/// the epoch), as the workflow API reports its times.
pub fn rfc3339_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    rfc3339(t, Precision::Millis)
}

/// Parses an RFC 3339 timestamp (`2024-05-01T12:00:00Z`, with optional fractional seconds
/// and a `Z` or `±HH:MM` offset) into milliseconds since the Unix epoch.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        let part = text.get(from..to)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let first3 = format!("{:0<3}", &frac[..digits.min(3)]);
        millis = first3.parse::<i64>().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let h: i64 = rest.get(1..3)?.parse().ok()?;
            let m: i64 = rest.get(4..6)?.parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (h * 60 + m)
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Some(secs * 1000 + millis)
}

/// (year, month, day) to days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn days_to_civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are small positive numbers by construction.
    let small = |v: i64| u32::try_from(v).unwrap_or(1);
    (year, small(month), small(day))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_utc() {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(
            rfc3339(UNIX_EPOCH, Precision::Seconds),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH, Precision::Millis),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339(at(1_795_000_000_000), Precision::Seconds),
            "2026-11-18T11:06:40Z"
        );
        assert_eq!(
            rfc3339(at(1_709_210_096_789), Precision::Millis),
            "2024-02-29T12:34:56.789Z"
        );
        // The last day of a leap year and the first of the next.
        assert_eq!(
            rfc3339(at(1_735_603_200_000), Precision::Seconds),
            "2024-12-31T00:00:00Z"
        );
        assert_eq!(
            rfc3339(at(1_735_689_600_000), Precision::Seconds),
            "2025-01-01T00:00:00Z"
        );
        // Before the epoch: clamped, not garbage.
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(rfc3339(before, Precision::Seconds), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn parses_what_it_formats_and_offsets() {
        for ms in [
            0u64,
            1_709_210_096_789,
            1_735_603_200_000,
            1_795_000_000_000,
        ] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(
                parse_rfc3339_ms(&rfc3339(t, Precision::Millis)),
                Some(ms as i64)
            );
        }
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T12:34:56Z"),
            Some(1_709_210_096_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T14:34:56.5+02:00"),
            Some(1_709_210_096_500)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-02-29T12:34:56.123456789Z"),
            Some(1_709_210_096_123)
        );
        for bad in [
            "",
            "2024-02-29",
            "2024-02-29T12:34:56",
            "2024-13-01T00:00:00Z",
            "2024-02-29T12:34:56+0200",
            "x024-02-29T12:34:56Z",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad}");
        }
    }
}
