//! RFC 3339 timestamps in UTC: the one formatter for CloudEvent `time`/`expiration`, the
//! state API's `ttlExpireTime` and the benchmark reports.
//!
//! Written here rather than taken from a date crate because formatting a UTC instant is all
//! Trellis needs: no parsing, no time zones, no calendar arithmetic.

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
}
