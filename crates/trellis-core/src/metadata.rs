//! Component metadata (`spec.metadata` of a Component resource): the one type every
//! building block reads its settings from, with one set of rules.
//!
//! The rules, and how they relate to Dapr's (components-contrib decodes metadata into a
//! struct with mapstructure, weakly typed, plus a few hooks):
//!
//! - **Keys are case-insensitive** (`connectionString` = `ConnectionString`), as
//!   mapstructure matches field names and `GetMetadataProperty` compares with `EqualFold`.
//! - **An empty value is an absent one**: the component's default applies. Dapr's weak
//!   decoding turns `""` into the field's zero value, which components treat as "use the
//!   default"; an explicit error for `""` would reject files Dapr accepts.
//! - **Values are trimmed.** Dapr passes them on untrimmed, and then Go's parsers reject
//!   `" 5s"`; trimming accepts what Dapr would refuse and changes nothing Dapr accepts,
//!   except a string whose edges were spaces on purpose, which no component's metadata has.
//!   A YAML block scalar (`value: |`) ends in a newline that nobody means.
//! - **Booleans** accept Go's `strconv.ParseBool` spellings and Dapr's `IsTruthy` ones
//!   (`true/false`, `1/0`, `t/f`, `yes/no`, `y/n`, `on/off`, any case). Anything else is an
//!   error rather than Dapr's silent `false`, because a typo there should not turn a
//!   setting off unnoticed.
//! - **Durations** are Go durations or a bare number of seconds (Dapr's duration hook);
//!   zero or negative means "off" where the component gives that a meaning
//!   ([`Metadata::signed_duration`]).
//! - **Errors name the component and the key** (and quote the value), so that a sidecar
//!   that refuses to start says which line of which file to change.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::duration::{self, Signed};

/// A component's metadata: `name → value` pairs, read by the rules in the module comment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The component's name, for error messages; empty when unknown (tests, tools).
    component: String,
    entries: BTreeMap<String, String>,
}

/// Why a metadata value was refused: the component, the key, the value and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct MetadataError {
    /// The component's name (empty when unknown).
    pub component: String,
    /// The key as the caller asked for it.
    pub key: String,
    /// The value as given (trimmed); `None` when the key was missing.
    pub value: Option<String>,
    /// What is wrong, e.g. `is not a duration`.
    pub reason: String,
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.component.is_empty() {
            write!(f, "component {:?}: ", self.component)?;
        }
        match &self.value {
            Some(v) => write!(f, "metadata {}: {v:?} {}", self.key, self.reason),
            None => write!(f, "metadata {} {}", self.key, self.reason),
        }
    }
}

/// One key, or several names for one setting (`timeout`, `timeoutInSeconds`), tried in order.
pub trait Keys {
    /// The names, in order of preference.
    fn names(&self) -> &[&str];
}

impl Keys for &str {
    fn names(&self) -> &[&str] {
        std::slice::from_ref(self)
    }
}

impl<const N: usize> Keys for [&str; N] {
    fn names(&self) -> &[&str] {
        self
    }
}

impl Keys for &[&str] {
    fn names(&self) -> &[&str] {
        self
    }
}

impl Metadata {
    /// The metadata of the component named `component`.
    pub fn new<K: Into<String>, V: Into<String>>(
        component: impl Into<String>,
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Metadata {
            component: component.into(),
            entries: entries
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Metadata of an unnamed component (tests, tools).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self::new(String::new(), pairs)
    }

    /// Sets `key` to `value`, replacing any spelling of that key.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        self.entries.retain(|k, _| !k.eq_ignore_ascii_case(&key));
        self.entries.insert(key, value.into());
    }

    /// The component's name (empty when unknown).
    pub fn component(&self) -> &str {
        &self.component
    }

    /// Every non-empty entry, values trimmed, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.trim()))
            .filter(|(_, v)| !v.is_empty())
    }

    /// The first of `keys` that has a non-empty value: that key and the trimmed value.
    fn lookup<'s, 'k>(&'s self, keys: &'k impl Keys) -> Option<(&'k str, &'s str)> {
        keys.names().iter().find_map(|name| {
            self.entries
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
                .filter(|v| !v.is_empty())
                .map(|v| (*name, v))
        })
    }

    /// The value (trimmed) of the first of `keys` that is set; `None` when none is or all
    /// are empty.
    pub fn get(&self, keys: impl Keys) -> Option<&str> {
        self.lookup(&keys).map(|(_, v)| v)
    }

    /// As [`Metadata::get`], but a missing value is an error.
    pub fn require(&self, keys: impl Keys) -> Result<&str, MetadataError> {
        match self.lookup(&keys) {
            Some((_, v)) => Ok(v),
            None => Err(self.error(first(&keys), None, "is required")),
        }
    }

    /// A boolean; `default` when absent.
    pub fn bool(&self, keys: impl Keys, default: bool) -> Result<bool, MetadataError> {
        let Some((key, v)) = self.lookup(&keys) else {
            return Ok(default);
        };
        match v.to_ascii_lowercase().as_str() {
            "true" | "t" | "1" | "yes" | "y" | "on" => Ok(true),
            "false" | "f" | "0" | "no" | "n" | "off" => Ok(false),
            _ => Err(self.error(key, Some(v), "is not a boolean")),
        }
    }

    /// A whole number, possibly negative; `None` when absent.
    pub fn i64(&self, keys: impl Keys) -> Result<Option<i64>, MetadataError> {
        let Some((key, v)) = self.lookup(&keys) else {
            return Ok(None);
        };
        v.parse::<i64>()
            .map(Some)
            .map_err(|_| self.error(key, Some(v), "is not an integer"))
    }

    /// A non-negative whole number; `default` when absent.
    pub fn u64(&self, keys: impl Keys, default: u64) -> Result<u64, MetadataError> {
        let Some((key, v)) = self.lookup(&keys) else {
            return Ok(default);
        };
        v.parse::<u64>()
            .map_err(|_| self.error(key, Some(v), "is not a non-negative integer"))
    }

    /// A count within `range`; `default` when absent.
    pub fn usize(
        &self,
        keys: impl Keys,
        default: usize,
        range: RangeInclusive<usize>,
    ) -> Result<usize, MetadataError> {
        let Some((key, v)) = self.lookup(&keys) else {
            return Ok(default);
        };
        v.parse::<usize>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                let why = format!("must be a number from {} to {}", range.start(), range.end());
                self.error(key, Some(v), &why)
            })
    }

    /// A duration (Go syntax such as `1h30m` or `250ms`, or a bare number of seconds) with
    /// its sign kept: `Some(Signed::NonPositive)` for zero or negative, which Dapr's
    /// components read as "off"; `None` when absent.
    pub fn signed_duration(&self, keys: impl Keys) -> Result<Option<Signed>, MetadataError> {
        let Some((key, v)) = self.lookup(&keys) else {
            return Ok(None);
        };
        duration::parse_or_seconds(v)
            .map(Some)
            .map_err(|e| self.error(key, Some(v), &format!("is not a duration ({e})")))
    }

    /// A duration; `None` when absent, zero or negative ("off").
    pub fn duration(&self, keys: impl Keys) -> Result<Option<Duration>, MetadataError> {
        Ok(self.signed_duration(keys)?.and_then(Signed::positive))
    }

    /// A duration that must be positive; `default` when absent.
    pub fn positive_duration(
        &self,
        keys: impl Keys,
        default: Duration,
    ) -> Result<Duration, MetadataError> {
        let Some((key, v)) = self.lookup(&keys) else {
            return Ok(default);
        };
        self.signed_duration(key)?
            .and_then(Signed::positive)
            .ok_or_else(|| self.error(key, Some(v), "must be positive"))
    }

    /// A size (`4Mi`, `512Ki`, `100`), or `default` when absent.
    pub fn size(&self, keys: impl Keys, default: usize) -> Result<usize, MetadataError> {
        let Some((key, value)) = self.lookup(&keys) else {
            return Ok(default);
        };
        crate::size::parse(value).map_err(|e| self.error(key, Some(value), e.reason))
    }

    /// An error about `key` of this component, for checks the getters do not cover.
    pub fn error(&self, key: &str, value: Option<&str>, reason: &str) -> MetadataError {
        MetadataError {
            component: self.component.clone(),
            key: key.to_string(),
            value: value.map(str::to_string),
            reason: reason.to_string(),
        }
    }
}

fn first(keys: &impl Keys) -> &str {
    keys.names().first().copied().unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_case_insensitive_values_trimmed_and_empty_is_absent() {
        let md = Metadata::from_pairs([("AckDeadline", " 2s "), ("empty", "  "), ("n", "7")]);
        assert_eq!(md.get("ackdeadline"), Some("2s"));
        assert_eq!(md.get("empty"), None);
        assert_eq!(md.get("missing"), None);
        assert_eq!(md.get(["missing", "N"]), Some("7"));
        assert_eq!(
            md.iter().collect::<Vec<_>>(),
            [("AckDeadline", "2s"), ("n", "7")]
        );
        assert_eq!(md.usize("empty", 3, 1..=5).unwrap(), 3);
    }

    #[test]
    fn typed_getters() {
        let md = Metadata::from_pairs([
            ("on", "Yes"),
            ("off", "f"),
            ("bad", "maybe"),
            ("n", "7"),
            ("neg", "-3"),
        ]);
        assert!(md.bool("on", false).unwrap());
        assert!(!md.bool("off", true).unwrap());
        assert!(md.bool("absent", true).unwrap());
        assert!(md.bool("bad", false).is_err());
        assert_eq!(md.usize("n", 1, 1..=10).unwrap(), 7);
        assert!(md.usize("n", 1, 1..=5).is_err());
        assert_eq!(md.u64("n", 0).unwrap(), 7);
        assert!(md.u64("neg", 0).is_err());
        assert_eq!(md.i64("neg").unwrap(), Some(-3));
        assert_eq!(md.i64("absent").unwrap(), None);
    }

    #[test]
    fn durations() {
        let md = Metadata::from_pairs([("a", "2s"), ("b", "30"), ("off", "-1"), ("x", "soon")]);
        let s = Duration::from_secs;
        assert_eq!(md.positive_duration("a", s(9)).unwrap(), s(2));
        assert_eq!(md.positive_duration("b", s(9)).unwrap(), s(30));
        assert_eq!(md.positive_duration("absent", s(9)).unwrap(), s(9));
        assert!(md.positive_duration("off", s(9)).is_err());
        assert_eq!(md.duration("off").unwrap(), None);
        assert_eq!(
            md.signed_duration("off").unwrap(),
            Some(Signed::NonPositive)
        );
        assert_eq!(md.signed_duration("absent").unwrap(), None);
        assert!(md.duration("x").is_err());
    }

    #[test]
    fn errors_name_component_key_and_value() {
        let md = Metadata::new("orders-db", [("busyTimeout", "abc")]);
        let err = md
            .duration(["timeout", "busyTimeout"])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "component \"orders-db\": metadata busyTimeout: \"abc\" is not a duration"
            ),
            "{err}"
        );
        let err = md
            .require(["connectionString", "url"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "component \"orders-db\": metadata connectionString is required"
        );
        let err = Metadata::from_pairs([("n", "x")])
            .i64("n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "metadata n: \"x\" is not an integer");
    }

    #[test]
    fn insert_replaces_any_spelling() {
        let mut md = Metadata::from_pairs([("Host", "a")]);
        md.insert("host", "b");
        assert_eq!(md.iter().collect::<Vec<_>>(), [("host", "b")]);
    }
}
