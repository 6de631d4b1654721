//! Helpers shared by the backends that talk to a database server over the network
//! (PostgreSQL, MySQL, Redis): metadata parsing in Dapr's formats, operation timeouts, and
//! background tasks that end with their store.

// Each backend uses a subset of these helpers; with only one backend enabled the rest are
// unused, which is no reason to fail a `-D warnings` build of that feature alone.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use crate::{Metadata, StateError};

/// A duration-valued metadata entry, as Dapr's `metadata.DecodeMetadata` reads them: a Go
/// duration (`90s`, `1h30m`, `-1`...) or a bare number in `bare_unit`.
///
/// `Ok(None)` when none of `names` is set (or the value is empty); non-positive values come
/// back as `Some(Signed::NonPositive)` so that callers can treat them as "disabled".
pub(crate) fn duration(
    md: &Metadata,
    names: &[&str],
    bare_unit: Duration,
) -> Result<Option<Signed>, StateError> {
    for name in names {
        match md.get(name).map(str::trim) {
            None | Some("") => continue,
            Some(v) => {
                return parse_duration(v, bare_unit)
                    .map(Some)
                    .map_err(|why| invalid(name, v, &why));
            }
        }
    }
    Ok(None)
}

/// A parsed duration that keeps its sign, because Dapr gives `<= 0` a meaning ("disabled").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signed {
    Positive(Duration),
    NonPositive,
}

impl Signed {
    pub(crate) fn positive(self) -> Option<Duration> {
        match self {
            Signed::Positive(d) => Some(d),
            Signed::NonPositive => None,
        }
    }
}

/// Parses a Go duration (`time.ParseDuration`) or a bare number counted in `bare_unit`.
pub(crate) fn parse_duration(text: &str, bare_unit: Duration) -> Result<Signed, String> {
    let text = text.trim();
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if body.is_empty() {
        return Err("empty duration".into());
    }
    let seconds: f64 = if let Ok(n) = body.parse::<f64>() {
        n * bare_unit.as_secs_f64()
    } else {
        let mut total = 0.0;
        let mut rest = body;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| format!("missing unit in duration {text:?}"))?;
            if number_len == 0 {
                return Err(format!("invalid duration {text:?}"));
            }
            let number: f64 = rest[..number_len]
                .parse()
                .map_err(|_| format!("invalid duration {text:?}"))?;
            rest = &rest[number_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let scale = match &rest[..unit_len] {
                "ns" => 1e-9,
                "us" | "µs" | "μs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                other => return Err(format!("unknown unit {other:?} in duration {text:?}")),
            };
            total += number * scale;
            rest = &rest[unit_len..];
        }
        total
    };
    if !seconds.is_finite() || seconds > 1e12 {
        return Err(format!("duration {text:?} is out of range"));
    }
    if negative || seconds <= 0.0 {
        return Ok(Signed::NonPositive);
    }
    Ok(Signed::Positive(Duration::from_secs_f64(seconds)))
}

/// An integer-valued metadata entry (`maxConns`, `redisDB`...).
pub(crate) fn integer(md: &Metadata, names: &[&str]) -> Result<Option<i64>, StateError> {
    for name in names {
        match md.get(name).map(str::trim) {
            None | Some("") => continue,
            Some(v) => {
                return v
                    .parse::<i64>()
                    .map(Some)
                    .map_err(|_| invalid(name, v, "not an integer"));
            }
        }
    }
    Ok(None)
}

/// The first non-empty value among `names`.
pub(crate) fn string<'a>(md: &'a Metadata, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| md.get(n).filter(|v| !v.trim().is_empty()))
}

fn invalid(name: &str, value: &str, why: &str) -> StateError {
    StateError::InvalidRequest(format!("metadata {name}: {value:?}: {why}"))
}

/// Whether `name` is a plain SQL identifier (`[A-Za-z_][A-Za-z0-9_]*`), optionally qualified
/// by a schema when `allow_schema`. Table names are spliced into SQL text (no driver binds
/// identifiers), so anything else is refused rather than quoted.
pub(crate) fn valid_identifier(name: &str, allow_schema: bool) -> bool {
    let part_ok = |p: &str| {
        let mut chars = p.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match name.split_once('.') {
        Some((schema, table)) if allow_schema => part_ok(schema) && part_ok(table),
        Some(_) => false,
        None => part_ok(name),
    }
}

/// Runs `fut` for at most `limit`; on expiry the operation fails with a backend error that
/// says so, instead of hanging on a server that no longer answers.
pub(crate) async fn with_timeout<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, StateError>>,
) -> Result<T, StateError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => Err(StateError::Backend(format!(
            "operation timed out after {}",
            human(limit)
        ))),
    }
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A TTL in whole milliseconds for the database (at least 1: a zero TTL still expires).
pub(crate) fn ttl_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Checks that an ETag is one of the UUIDs the SQL backends hand out, so that a malformed one
/// is reported as such (HTTP 400) rather than as a mismatch (409).
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn uuid_etag(etag: &str) -> Result<uuid::Uuid, StateError> {
    uuid::Uuid::try_parse(etag).map_err(|_| StateError::InvalidEtag(etag.to_string()))
}

/// How Dapr's SQL stores keep bytes that are not JSON in a JSON column: a JSON string holding
/// their base64, with the row's `isbinary` flag set.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn binary_to_json(value: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(value);
    // A base64 alphabet string needs no escaping inside JSON quotes.
    format!("\"{encoded}\"").into_bytes()
}

/// The inverse of [`binary_to_json`].
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn binary_from_json(stored: &[u8]) -> Result<Vec<u8>, StateError> {
    use base64::Engine as _;
    let text: String = serde_json::from_slice(stored).map_err(|e| {
        StateError::Backend(format!("stored binary value is not a json string: {e}"))
    })?;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| StateError::Backend(format!("stored binary value is not base64: {e}")))
}

/// A background task (expired-row cleanup) that stops when its store is dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let s = Duration::from_secs;
        let p = |t: &str| parse_duration(t, s(1));
        assert_eq!(p("20"), Ok(Signed::Positive(s(20))));
        assert_eq!(p("1h"), Ok(Signed::Positive(s(3600))));
        assert_eq!(p("1h30m"), Ok(Signed::Positive(s(5400))));
        assert_eq!(p("1.5s"), Ok(Signed::Positive(Duration::from_millis(1500))));
        assert_eq!(p("250ms"), Ok(Signed::Positive(Duration::from_millis(250))));
        assert_eq!(p("-1"), Ok(Signed::NonPositive));
        assert_eq!(p("0"), Ok(Signed::NonPositive));
        assert_eq!(p("-5m"), Ok(Signed::NonPositive));
        assert_eq!(
            parse_duration("100", Duration::from_millis(1)),
            Ok(Signed::Positive(Duration::from_millis(100)))
        );
        for bad in ["", "s", "10x", "1h3", "abc", "-"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn identifiers() {
        assert!(valid_identifier("state", false));
        assert!(valid_identifier("_s1", false));
        assert!(valid_identifier("public.state", true));
        assert!(!valid_identifier("public.state", false));
        assert!(!valid_identifier("1state", false));
        assert!(!valid_identifier("st-ate", false));
        assert!(!valid_identifier("a.b.c", true));
        assert!(!valid_identifier("state; drop table x", true));
        assert!(!valid_identifier("", false));
    }

    #[cfg(any(feature = "postgres", feature = "mysql"))]
    #[test]
    fn binary_round_trip() {
        let raw = [0u8, 159, 146, 150, b'"'];
        let stored = binary_to_json(&raw);
        assert!(serde_json::from_slice::<String>(&stored).is_ok());
        assert_eq!(binary_from_json(&stored).unwrap(), raw);
    }
}
