//! Schedule parsing and the next-tick rules.

use super::*;

/// 2026-01-01T00:00:00Z, a Thursday.
const JAN1: Millis = 1_767_225_600_000;

fn spec(schedule: Option<&str>, due: Option<&str>) -> JobSpec {
    JobSpec {
        name: "j".into(),
        schedule: schedule.map(str::to_string),
        due_time: due.map(str::to_string),
        ..JobSpec::default()
    }
}

fn err(r: Result<Schedule, JobError>) -> String {
    match r {
        Err(e) => e.to_string(),
        Ok(s) => panic!("expected an error, got {s:?}"),
    }
}

#[test]
fn six_field_cron_and_descriptors_tick_in_utc() {
    let s = parse_schedule("*/10 * * * * *").unwrap();
    assert_eq!(s.next_after(JAN1), Some(JAN1 + 10_000));
    assert_eq!(s.next_after(JAN1 + 1), Some(JAN1 + 10_000));
    let hourly = parse_schedule("@hourly").unwrap();
    assert_eq!(hourly.next_after(JAN1), Some(JAN1 + 3_600_000));
    let daily = parse_schedule("@daily").unwrap();
    assert_eq!(daily.next_after(JAN1 + 5), Some(JAN1 + 86_400_000));
    assert!(parse_schedule("@midnight").is_ok() && parse_schedule("@annually").is_ok());
    // Sunday is 0: the first Sunday of 2026 is 4 January.
    let sundays = parse_schedule("0 0 0 * * 0").unwrap();
    assert_eq!(sundays.next_after(JAN1), Some(JAN1 + 3 * 86_400_000));
    let weekly = parse_schedule("@weekly").unwrap();
    assert_eq!(weekly.next_after(JAN1), Some(JAN1 + 3 * 86_400_000));
    assert!(parse_schedule("0 30 * * * mon-fri").is_ok());
}

#[test]
fn every_is_a_constant_delay_in_milliseconds() {
    let s = parse_schedule("@every 5s").unwrap();
    assert_eq!(s.next_after(JAN1 + 7), Some(JAN1 + 5_007));
    assert!(matches!(
        parse_schedule("@every 1h30m"),
        Ok(Schedule::Every(5_400_000))
    ));
    assert!(err(parse_schedule("@every soon")).contains("@every"));
}

#[test]
fn bad_expressions_name_the_field() {
    let five = err(parse_schedule("* * * * *"));
    assert!(
        five.contains("6 fields") && five.contains("has 5"),
        "{five}"
    );
    assert!(err(parse_schedule("61 * * * * *")).contains("seconds"));
    assert!(err(parse_schedule("0 60 * * * *")).contains("minutes"));
    assert!(err(parse_schedule("0 0 24 * * *")).contains("hours"));
    assert!(err(parse_schedule("0 0 0 32 * *")).contains("day of month"));
    assert!(err(parse_schedule("0 0 0 * 13 *")).contains("month"));
    assert!(err(parse_schedule("0 0 0 * * 9")).contains("day of week"));
    assert!(err(parse_schedule("@fortnightly")).contains("descriptor"));
}

#[test]
fn points_in_time_take_three_forms() {
    assert_eq!(
        point_in_time("10s", JAN1, "dueTime").unwrap(),
        JAN1 + 10_000
    );
    assert_eq!(
        point_in_time("2026-01-01T00:00:05Z", 0, "dueTime").unwrap(),
        JAN1 + 5_000
    );
    assert_eq!(point_in_time("PT1M", JAN1, "ttl").unwrap(), JAN1 + 60_000);
    // A month from 1 January is 1 February.
    assert_eq!(
        point_in_time("P1M", JAN1, "ttl").unwrap(),
        JAN1 + 31 * 86_400_000
    );
    for bad in ["tomorrow", "R2/PT1S", "-5s", ""] {
        let e = point_in_time(bad, JAN1, "dueTime").unwrap_err().to_string();
        assert!(
            e.contains("dueTime") || e.contains("repeating"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn plans_follow_daprs_rules() {
    assert!(plan(&spec(None, None), JAN1).is_err());
    let one_shot = plan(&spec(None, Some("2s")), JAN1).unwrap();
    assert_eq!(one_shot.first, JAN1 + 2_000);
    let cron = plan(&spec(Some("@every 1s"), None), JAN1).unwrap();
    assert_eq!(
        cron.first,
        JAN1 + 1_000,
        "without a due time the start does not fire"
    );
    let mut s = spec(None, Some("1s"));
    s.repeats = Some(2);
    assert!(plan(&s, JAN1).is_err(), "repeats need a schedule");
    s.repeats = Some(0);
    assert!(plan(&s, JAN1).is_err());
    let mut s = spec(None, Some("1s"));
    s.ttl = Some("5s".into());
    assert!(plan(&s, JAN1).is_err(), "a ttl needs a schedule");
    let mut s = spec(Some("@every 1s"), Some("10s"));
    s.ttl = Some("2026-01-01T00:00:05Z".into());
    assert!(plan(&s, JAN1).is_err(), "ttl before the due time");
    s.ttl = Some("5s".into());
    assert_eq!(
        plan(&s, JAN1).unwrap().expires,
        Some(JAN1 + 15_000),
        "a relative ttl counts from the due time"
    );
    let mut bad = spec(Some("@every 1s"), None);
    bad.name = "a/b".into();
    assert!(plan(&bad, JAN1).is_err());
}

#[test]
fn the_next_tick_skips_what_was_missed_and_ends_with_repeats_and_ttl() {
    let mut s = spec(Some("@every 1s"), None);
    // On time: from the tick, no drift.
    assert_eq!(next_tick(&s, None, JAN1, 1, JAN1 + 30), Some(JAN1 + 1_000));
    // Ten seconds late: once, then on from now.
    assert_eq!(
        next_tick(&s, None, JAN1, 1, JAN1 + 10_500),
        Some(JAN1 + 11_500)
    );
    s.repeats = Some(3);
    assert_eq!(next_tick(&s, None, JAN1, 2, JAN1), Some(JAN1 + 1_000));
    assert_eq!(next_tick(&s, None, JAN1, 3, JAN1), None);
    s.repeats = None;
    assert_eq!(next_tick(&s, Some(JAN1 + 500), JAN1, 1, JAN1), None);
    assert_eq!(
        next_tick(&spec(None, Some("1s")), None, JAN1, 1, JAN1),
        None
    );
}
