//! `secretstores.local.file`: secrets from a JSON file, read once when the component opens,
//! as Dapr's component.
//!
//! Metadata: `secretsFile` (required; a relative path means the app's directory, resolved
//! by the loader), `nestedSeparator` (default `:`), `multiValued` (default false).
//!
//! - Nested objects are flattened: `{"db": {"password": "x"}}` is the secret `db:password`;
//!   array elements are numbered (`hosts:0`). Numbers and booleans become their JSON text,
//!   `null` an empty string.
//! - `multiValued: true` keeps one level: each top-level key is a secret whose keys are its
//!   object's flattened contents (`get("db")` answers `{"password": "x"}`); a top-level
//!   scalar is a secret with one key, its own name.
//! - A name the file does not hold is [`SecretError::NotFound`].

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::Value;

use crate::{Metadata, Secret, SecretError, SecretStore};

#[derive(Debug)]
pub struct LocalFileStore {
    secrets: BTreeMap<String, Secret>,
}

impl LocalFileStore {
    /// Reads and flattens the file named by `secretsFile`.
    pub async fn open(md: &Metadata) -> Result<Self, SecretError> {
        let file = md.require("secretsFile")?.to_string();
        let separator = md.get("nestedSeparator").unwrap_or(":").to_string();
        let multi_valued = md.bool("multiValued", false)?;
        let text = tokio::fs::read(&file).await.map_err(|e| {
            SecretError::InvalidRequest(format!("cannot read secretsFile {file:?}: {e}"))
        })?;
        let json: Value = serde_json::from_slice(&text).map_err(|e| {
            SecretError::InvalidRequest(format!("secretsFile {file:?} is not valid JSON: {e}"))
        })?;
        Self::from_json(&json, &separator, multi_valued)
            .map_err(|e| SecretError::InvalidRequest(format!("secretsFile {file:?}: {e}")))
    }

    /// The store over an already parsed document (for tests and tools).
    pub fn from_json(json: &Value, separator: &str, multi_valued: bool) -> Result<Self, String> {
        let Value::Object(top) = json else {
            return Err("the file must hold a JSON object".into());
        };
        let mut secrets = BTreeMap::new();
        if multi_valued {
            for (name, value) in top {
                let mut secret = Secret::new();
                match value {
                    Value::Object(_) | Value::Array(_) => {
                        flatten("", value, separator, &mut secret);
                    }
                    scalar => {
                        secret.insert(name.clone(), text_of(scalar));
                    }
                }
                secrets.insert(name.clone(), secret);
            }
        } else {
            let mut flat = Secret::new();
            flatten("", json, separator, &mut flat);
            for (name, value) in flat {
                secrets.insert(name.clone(), Secret::from([(name, value)]));
            }
        }
        Ok(Self { secrets })
    }
}

/// Adds every scalar under `value` to `out`, its name the path joined by `separator`.
fn flatten(path: &str, value: &Value, separator: &str, out: &mut Secret) {
    let join = |key: &str| match path {
        "" => key.to_string(),
        _ => format!("{path}{separator}{key}"),
    };
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                flatten(&join(key), child, separator, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                flatten(&join(&i.to_string()), child, separator, out);
            }
        }
        scalar => {
            out.insert(path.to_string(), text_of(scalar));
        }
    }
}

fn text_of(scalar: &Value) -> String {
    match scalar {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[async_trait]
impl SecretStore for LocalFileStore {
    async fn get(
        &self,
        name: &str,
        _metadata: &BTreeMap<String, String>,
    ) -> Result<Secret, SecretError> {
        self.secrets
            .get(name)
            .cloned()
            .ok_or_else(|| SecretError::NotFound(name.to_string()))
    }

    async fn bulk(
        &self,
        _metadata: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Secret>, SecretError> {
        Ok(self.secrets.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        serde_json::json!({
            "plain": "p",
            "db": {"user": "admin", "password": "x", "port": 5432},
            "hosts": ["a", "b"],
            "on": true,
            "nothing": null
        })
    }

    fn names(store: &LocalFileStore) -> Vec<&str> {
        store.secrets.keys().map(String::as_str).collect()
    }

    #[tokio::test]
    async fn flattens_nested_values_with_the_separator() {
        let store = LocalFileStore::from_json(&doc(), ":", false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            names(&store),
            [
                "db:password",
                "db:port",
                "db:user",
                "hosts:0",
                "hosts:1",
                "nothing",
                "on",
                "plain"
            ]
        );
        let none = BTreeMap::new();
        let got = store.get("db:port", &none).await;
        assert_eq!(got, Ok(Secret::from([("db:port".into(), "5432".into())])));
        assert_eq!(
            store.get("missing", &none).await,
            Err(SecretError::NotFound("missing".into()))
        );
        let dotted =
            LocalFileStore::from_json(&doc(), ".", false).unwrap_or_else(|e| panic!("{e}"));
        assert!(names(&dotted).contains(&"db.user"));
    }

    #[tokio::test]
    async fn multi_valued_keeps_one_level() {
        let store = LocalFileStore::from_json(&doc(), ":", true).unwrap_or_else(|e| panic!("{e}"));
        let none = BTreeMap::new();
        let db = store.get("db", &none).await.unwrap_or_default();
        assert_eq!(db.get("password").map(String::as_str), Some("x"));
        assert_eq!(db.len(), 3);
        let plain = store.get("plain", &none).await.unwrap_or_default();
        assert_eq!(plain, Secret::from([("plain".into(), "p".into())]));
        let hosts = store.get("hosts", &none).await.unwrap_or_default();
        assert_eq!(hosts.get("1").map(String::as_str), Some("b"));
    }

    #[test]
    fn a_file_that_is_not_an_object_is_refused() {
        let err = LocalFileStore::from_json(&serde_json::json!(["a"]), ":", false).unwrap_err();
        assert!(err.contains("JSON object"), "{err}");
    }
}
