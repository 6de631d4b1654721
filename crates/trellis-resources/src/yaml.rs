//! Helpers for walking a parsed YAML document field by field, recording every problem with the dotted
//! path of the field it is about.
//!
//! Serde's derive would stop at the first error and lose the path, so the resource parsers read a
//! `serde_norway::Value` through these helpers instead. Absent fields and explicit `null`s are treated
//! alike, because `key:` with nothing after it is how YAML authors usually leave a field empty.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_norway::{Mapping, Value};

use crate::error::{LoadError, Location};
use trellis_core::duration::parse as parse_duration;

/// Strips YAML tags (`!!str 5`, `!Custom {..}`); no Dapr field gives them meaning.
pub(crate) fn untag(value: &Value) -> &Value {
    let mut v = value;
    while let Value::Tagged(tagged) = v {
        v = &tagged.value;
    }
    v
}

/// Names a value's type for messages such as "expected a list, found a mapping".
pub(crate) fn describe(value: &Value) -> &'static str {
    match untag(value) {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// `path.key`, or `key` at the top level.
pub(crate) fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `path[index]`.
pub(crate) fn item(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

/// The text of a scalar: strings as they are, numbers and booleans as YAML wrote them.
pub(crate) fn scalar_text(value: &Value) -> Option<String> {
    match untag(value) {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Converts a YAML value to JSON. Mapping keys that are not scalars are rendered as JSON text, since
/// JSON objects only have string keys.
pub(crate) fn to_json(value: &Value) -> serde_json::Value {
    match untag(value) {
        Value::Null | Value::Tagged(_) => serde_json::Value::Null,
        Value::Bool(b) => serde_json::Value::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                serde_json::Value::from(i)
            } else if let Some(u) = n.as_u64() {
                serde_json::Value::from(u)
            } else {
                // NaN and infinities have no JSON form; keep their YAML spelling rather than drop them.
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map_or_else(
                        || serde_json::Value::String(n.to_string()),
                        serde_json::Value::Number,
                    )
            }
        }
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Sequence(items) => serde_json::Value::Array(items.iter().map(to_json).collect()),
        Value::Mapping(map) => serde_json::Value::Object(
            map.iter()
                .map(|(k, v)| {
                    (
                        scalar_text(k).unwrap_or_else(|| to_json(k).to_string()),
                        to_json(v),
                    )
                })
                .collect(),
        ),
    }
}

/// Looks a key up in a mapping; `null` counts as absent.
pub(crate) fn get<'v>(map: &'v Mapping, key: &str) -> Option<&'v Value> {
    map.get(key).map(untag).filter(|v| !v.is_null())
}

/// Collects errors for one document.
pub(crate) struct Ctx<'e> {
    pub(crate) location: Location,
    errors: &'e mut Vec<LoadError>,
}

impl<'e> Ctx<'e> {
    pub(crate) fn new(location: Location, errors: &'e mut Vec<LoadError>) -> Self {
        Self { location, errors }
    }

    /// Records a problem with `field`.
    pub(crate) fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors
            .push(LoadError::at(&self.location, field, message));
    }

    fn wrong_type(&mut self, path: &str, expected: &str, found: &Value) {
        self.error(
            path,
            format!("expected {expected}, found {}", describe(found)),
        );
    }

    pub(crate) fn missing(&mut self, path: &str) {
        self.error(path, "missing required field");
    }

    // ---- value-level readers: `path` is the path of `value` itself ----

    pub(crate) fn as_mapping<'v>(&mut self, value: &'v Value, path: &str) -> Option<&'v Mapping> {
        match untag(value) {
            Value::Mapping(m) => Some(m),
            other => {
                self.wrong_type(path, "a mapping", other);
                None
            }
        }
    }

    /// Strings, plus numbers written without quotes (`version: 1`), which clearly mean their text.
    /// Booleans are refused: `true` in a string field is almost always a misplaced line.
    pub(crate) fn as_string(&mut self, value: &Value, path: &str) -> Option<String> {
        match untag(value) {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            other => {
                self.wrong_type(path, "a string", other);
                None
            }
        }
    }

    // ---- field-level readers: look `key` up in `map`, whose own path is `path` ----

    pub(crate) fn mapping<'v>(
        &mut self,
        map: &'v Mapping,
        key: &str,
        path: &str,
    ) -> Option<&'v Mapping> {
        let v = get(map, key)?;
        self.as_mapping(v, &child(path, key))
    }

    pub(crate) fn sequence<'v>(
        &mut self,
        map: &'v Mapping,
        key: &str,
        path: &str,
    ) -> Option<&'v [Value]> {
        match get(map, key)? {
            Value::Sequence(items) => Some(items),
            other => {
                self.wrong_type(&child(path, key), "a list", other);
                None
            }
        }
    }

    pub(crate) fn string(&mut self, map: &Mapping, key: &str, path: &str) -> Option<String> {
        let v = get(map, key)?;
        self.as_string(v, &child(path, key))
    }

    /// A string that must be present and non-empty; returns "" (after recording the error) otherwise.
    pub(crate) fn required_string(&mut self, map: &Mapping, key: &str, path: &str) -> String {
        match get(map, key) {
            None => {
                self.missing(&child(path, key));
                String::new()
            }
            Some(v) => match self.as_string(v, &child(path, key)) {
                Some(s) if s.trim().is_empty() => {
                    self.missing(&child(path, key));
                    String::new()
                }
                Some(s) => s,
                None => String::new(),
            },
        }
    }

    /// Booleans, plus the strings "true"/"false" (any case), which people quote out of habit.
    pub(crate) fn bool(&mut self, map: &Mapping, key: &str, path: &str) -> Option<bool> {
        let v = get(map, key)?;
        match v {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
            other => {
                self.wrong_type(&child(path, key), "a boolean", other);
                None
            }
        }
    }

    /// Integers, plus strings holding one.
    pub(crate) fn int(&mut self, map: &Mapping, key: &str, path: &str) -> Option<i64> {
        let v = get(map, key)?;
        let parsed = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        if parsed.is_none() {
            self.error(
                child(path, key),
                format!("expected an integer, found {}", describe_scalar(v)),
            );
        }
        parsed
    }

    /// A non-negative integer that fits in `u32`.
    pub(crate) fn u32(&mut self, map: &Mapping, key: &str, path: &str) -> Option<u32> {
        let n = self.int(map, key, path)?;
        match u32::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                self.error(
                    child(path, key),
                    format!(
                        "expected a non-negative integer up to {}, found {n}",
                        u32::MAX
                    ),
                );
                None
            }
        }
    }

    pub(crate) fn duration(&mut self, map: &Mapping, key: &str, path: &str) -> Option<Duration> {
        let v = get(map, key)?;
        let text = self.as_string(v, &child(path, key))?;
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(child(path, key), e.to_string());
                None
            }
        }
    }

    /// A list of strings; absent means empty.
    pub(crate) fn string_list(&mut self, map: &Mapping, key: &str, path: &str) -> Vec<String> {
        let list_path = child(path, key);
        let Some(items) = self.sequence(map, key, path) else {
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| self.as_string(v, &item(&list_path, i)))
            .collect()
    }

    /// A mapping of strings to scalars; values are turned into their text (`5` → "5").
    pub(crate) fn string_map(
        &mut self,
        map: &Mapping,
        key: &str,
        path: &str,
    ) -> BTreeMap<String, String> {
        let map_path = child(path, key);
        let Some(m) = self.mapping(map, key, path) else {
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        for (k, v) in m {
            let Some(k) = self.key(k, &map_path) else {
                continue;
            };
            match untag(v) {
                Value::Null => {
                    out.insert(k, String::new());
                }
                v => match scalar_text(v) {
                    Some(text) => {
                        out.insert(k, text);
                    }
                    None => self.wrong_type(&child(&map_path, &k), "a string", v),
                },
            }
        }
        out
    }

    /// The text of a mapping key; keys that are not scalars are reported.
    pub(crate) fn key(&mut self, key: &Value, path: &str) -> Option<String> {
        let text = scalar_text(key);
        if text.is_none() {
            self.error(
                path,
                format!("keys must be strings, found {}", describe(key)),
            );
        }
        text
    }
}

fn describe_scalar(v: &Value) -> String {
    match scalar_text(v) {
        Some(text) => format!("{} ({text:?})", describe(v)),
        None => describe(v).to_string(),
    }
}
