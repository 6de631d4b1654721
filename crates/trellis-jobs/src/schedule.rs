//! What a job's fields mean in time, as pure functions: parsing `schedule` (six-field cron
//! with seconds, evaluated in UTC by `croner`; `@every <duration>`; `@yearly`, `@annually`,
//! `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`), `dueTime` and `ttl` (an
//! RFC 3339 time, or a Go or non-repeating ISO 8601 duration from now, the TTL from the due
//! time when there is one), and the rules Dapr's scheduler applies to them.
//!
//! The next tick is computed from the one before, so a job that runs on time never
//! drifts; but when that tick is already past (the app or every sidecar was down), the
//! job goes on from now: a job that missed several ticks fires once for all of them, not
//! once per missed tick.

use chrono::{DateTime, Days, Months, Utc};
use trellis_core::duration;

use crate::{JobError, JobSpec, Millis};

/// The names of a cron expression's six fields, in order, with their ranges.
const FIELDS: [(&str, &str); 6] = [
    ("seconds", "0-59"),
    ("minutes", "0-59"),
    ("hours", "0-23"),
    ("day of month", "1-31"),
    ("month", "1-12 or jan-dec"),
    ("day of week", "0-6 or sun-sat"),
];

/// A parsed `schedule`.
#[derive(Debug, Clone)]
pub enum Schedule {
    Cron(Box<croner::Cron>),
    /// `@every <duration>`, in milliseconds (at least one).
    Every(i64),
}

fn invalid(msg: String) -> JobError {
    JobError::Invalid(msg)
}

/// Parses a `schedule`; an error names the field that is wrong.
pub fn parse_schedule(text: &str) -> Result<Schedule, JobError> {
    let text = text.trim();
    if let Some(every) = text.strip_prefix("@every") {
        let d = duration::parse(every.trim())
            .map_err(|e| invalid(format!("schedule {text:?}: @every: {e}")))?;
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1);
        return Ok(Schedule::Every(ms));
    }
    let expression = match text.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 0 1 1 *".to_string(),
        "@monthly" => "0 0 0 1 * *".to_string(),
        "@weekly" => "0 0 0 * * 0".to_string(),
        "@daily" | "@midnight" => "0 0 0 * * *".to_string(),
        "@hourly" => "0 0 * * * *".to_string(),
        other if other.starts_with('@') => {
            return Err(invalid(format!(
                "schedule {text:?}: unknown descriptor (use @every <duration>, @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly)"
            )));
        }
        _ => text.to_string(),
    };
    let parts: Vec<&str> = expression.split_whitespace().collect();
    if parts.len() != 6 {
        return Err(invalid(format!(
            "schedule {text:?}: a cron expression has 6 fields (seconds minutes hours day-of-month month day-of-week), this one has {}",
            parts.len()
        )));
    }
    let parser = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .year(croner::parser::Year::Disallowed)
        .build();
    match parser.parse(&expression) {
        Ok(cron) => Ok(Schedule::Cron(Box::new(cron))),
        Err(e) => {
            // Find the field at fault: each alone, the others left open.
            for (i, (field, range)) in FIELDS.iter().enumerate() {
                let mut alone = ["*"; 6];
                alone[i] = parts[i];
                if parser.parse(&alone.join(" ")).is_err() {
                    return Err(invalid(format!(
                        "schedule {text:?}: the {field} field {:?} is invalid (allowed: {range})",
                        parts[i]
                    )));
                }
            }
            Err(invalid(format!("schedule {text:?}: {e}")))
        }
    }
}

impl Schedule {
    /// The first tick strictly after `t`; `None` when there is none (a cron expression no
    /// date matches, such as 30 February).
    pub fn next_after(&self, t: Millis) -> Option<Millis> {
        match self {
            Schedule::Every(ms) => t.checked_add(*ms),
            Schedule::Cron(cron) => {
                let at = DateTime::<Utc>::from_timestamp_millis(t)?;
                cron.find_next_occurrence(&at, false)
                    .ok()
                    .map(|d| d.timestamp_millis())
            }
        }
    }
}

/// Reads a point in time: an RFC 3339 time, or a Go or non-repeating ISO 8601 duration
/// after `from`. `field` names the field in errors.
pub fn point_in_time(text: &str, from: Millis, field: &str) -> Result<Millis, JobError> {
    let text = text.trim();
    if let Some(ms) = trellis_core::time::parse_rfc3339_ms(text) {
        return Ok(ms);
    }
    if let Ok(d) = duration::parse(text) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        return Ok(from.saturating_add(ms));
    }
    let unrecognised = || {
        invalid(format!(
            "{field} {text:?} is not an RFC 3339 time, a Go duration (such as 10s) or an ISO 8601 duration (such as PT10S)"
        ))
    };
    let iso = duration::parse_iso8601(text).map_err(|_| unrecognised())?;
    if iso.repeats.is_some() {
        return Err(invalid(format!(
            "{field} {text:?}: a repeating ISO 8601 duration is not allowed here"
        )));
    }
    let start = DateTime::<Utc>::from_timestamp_millis(from).ok_or_else(unrecognised)?;
    let months = iso.years.saturating_mul(12).saturating_add(iso.months);
    let at = start
        .checked_add_months(Months::new(months))
        .and_then(|t| t.checked_add_days(Days::new(u64::from(iso.days))))
        .ok_or_else(unrecognised)?;
    let time = i64::try_from(iso.time.as_millis()).unwrap_or(i64::MAX);
    Ok(at.timestamp_millis().saturating_add(time))
}

/// A job's timing, worked out once when it is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// When the job's first tick is due.
    pub first: Millis,
    /// After this no tick fires (`ttl`).
    pub expires: Option<Millis>,
}

/// Checks `spec` as Dapr's scheduler does and works out its timing at `now`.
pub fn plan(spec: &JobSpec, now: Millis) -> Result<Timing, JobError> {
    crate::validate_name(&spec.name)?;
    let schedule = spec.schedule.as_deref().map(parse_schedule).transpose()?;
    if schedule.is_none() && spec.due_time.is_none() {
        return Err(invalid("a job needs a schedule or a dueTime".into()));
    }
    match spec.repeats {
        Some(0) => return Err(invalid("repeats must be greater than 0".into())),
        Some(n) if n > 1 && schedule.is_none() => {
            return Err(invalid("a job needs a schedule to repeat".into()));
        }
        _ => {}
    }
    if schedule.is_none() && spec.ttl.is_some() {
        return Err(invalid("a job needs a schedule to have a ttl".into()));
    }
    let due = spec
        .due_time
        .as_deref()
        .map(|t| point_in_time(t, now, "dueTime"))
        .transpose()?;
    let expires = spec
        .ttl
        .as_deref()
        .map(|t| point_in_time(t, due.unwrap_or(now), "ttl"))
        .transpose()?;
    if let (Some(due), Some(expires)) = (due, expires)
        && expires < due
    {
        return Err(invalid("ttl must be later than dueTime".into()));
    }
    // With a due time the first tick is the due time itself; otherwise the schedule's
    // first tick after now.
    let first = match (due, &schedule) {
        (Some(due), _) => due,
        (None, Some(s)) => s.next_after(now).ok_or_else(|| {
            invalid(format!(
                "schedule {:?} never fires",
                spec.schedule.as_deref().unwrap_or_default()
            ))
        })?,
        (None, None) => now,
    };
    if expires.is_some_and(|e| first > e) {
        return Err(invalid(
            "the job expires (ttl) before its first tick".into(),
        ));
    }
    Ok(Timing { first, expires })
}

/// The tick after `tick`, once `count` ticks are done, at `now`; `None` when the job is
/// finished (a one-shot job, `repeats` reached, past its `ttl`). A tick already past is
/// skipped, with every other one until now (see the module docs).
pub fn next_tick(
    spec: &JobSpec,
    expires: Option<Millis>,
    tick: Millis,
    count: u32,
    now: Millis,
) -> Option<Millis> {
    let schedule = parse_schedule(spec.schedule.as_deref()?).ok()?;
    if spec.repeats.is_some_and(|r| count >= r) {
        return None;
    }
    let mut next = schedule.next_after(tick)?;
    if next <= now {
        next = schedule.next_after(now)?;
    }
    if expires.is_some_and(|e| next > e) {
        return None;
    }
    Some(next)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
