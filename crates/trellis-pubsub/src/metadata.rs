//! Component metadata (`spec.metadata` of the Component resource) and the value formats
//! Dapr's components accept in it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::PubSubError;

/// Component metadata as given in the YAML, names compared case-insensitively as Dapr does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(pub BTreeMap<String, String>);

impl Metadata {
    /// From `(name, value)` pairs; handy in tests.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Metadata(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// The value of `name`, trimmed; `None` when absent or empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub fn bool(&self, name: &str, default: bool) -> Result<bool, PubSubError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "y" | "on" => Ok(true),
                "false" | "0" | "no" | "n" | "off" => Ok(false),
                _ => Err(invalid(name, v, "is not a boolean")),
            },
        }
    }

    /// A count within `range`.
    pub fn usize(
        &self,
        name: &str,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<usize, PubSubError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| range.contains(n))
                .ok_or_else(|| {
                    invalid(
                        name,
                        v,
                        &format!("must be a number from {} to {}", range.start(), range.end()),
                    )
                }),
        }
    }

    /// A duration (Go syntax such as `1h30m` or `250ms`, or a bare number of seconds).
    /// `Ok(None)` when `name` is absent, or its value is zero or negative, which Dapr's
    /// components read as "off".
    pub fn duration(&self, name: &str) -> Result<Option<Duration>, PubSubError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => parse_duration(v).map_err(|()| invalid(name, v, "is not a duration")),
        }
    }

    /// A duration that must be positive; `default` when absent.
    pub fn positive_duration(
        &self,
        name: &str,
        default: Duration,
    ) -> Result<Duration, PubSubError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => self
                .duration(name)?
                .ok_or_else(|| invalid(name, v, "must be positive")),
        }
    }
}

fn invalid(name: &str, value: &str, why: &str) -> PubSubError {
    PubSubError::InvalidRequest(format!("metadata {name}: {value:?} {why}"))
}

/// Parses a Go duration or a bare number of seconds; `None` for values `<= 0`.
fn parse_duration(value: &str) -> Result<Option<Duration>, ()> {
    let (negative, v) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value.strip_prefix('+').unwrap_or(value)),
    };
    if v.is_empty() {
        return Err(());
    }
    let total = match v.parse::<f64>() {
        Ok(secs) => secs,
        Err(_) => {
            let mut total = 0.0;
            let mut rest = v;
            while !rest.is_empty() {
                let num_len = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .ok_or(())?;
                let num: f64 = rest[..num_len].parse().map_err(drop)?;
                rest = &rest[num_len..];
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
                    _ => return Err(()),
                };
                total += num * scale;
                rest = &rest[unit_len..];
            }
            total
        }
    };
    if !total.is_finite() {
        return Err(());
    }
    if negative || total <= 0.0 {
        return Ok(None);
    }
    Duration::try_from_secs_f64(total).map(Some).map_err(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |v| parse_duration(v).unwrap();
        assert_eq!(d("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(d("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(d("100ms"), Some(Duration::from_millis(100)));
        assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(d("30"), Some(Duration::from_secs(30)));
        assert_eq!(d("0"), None);
        assert_eq!(d("-1h"), None);
        for bad in ["", "h", "1x", "1h2", "abc", "1..2s", "inf"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lookups() {
        let md = Metadata::from_pairs([("AckDeadline", " 2s "), ("empty", ""), ("n", "7")]);
        assert_eq!(
            md.positive_duration("ackDeadline", Duration::ZERO).unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(md.get("empty"), None);
        assert_eq!(md.usize("n", 1, 1..=10).unwrap(), 7);
        assert!(md.usize("n", 1, 1..=5).is_err());
        let md = Metadata::from_pairs([("d", "-1")]);
        assert!(md.positive_duration("d", Duration::ZERO).is_err());
        assert_eq!(md.duration("d").unwrap(), None);
    }
}
