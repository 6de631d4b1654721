//! `secretstores.local.env`: secrets from environment variables, as Dapr's component.
//!
//! - `get(name)` answers `{name: value}`, with an empty value for a variable that is not
//!   set (Dapr does the same: it never says "not found").
//! - `bulk` answers every variable as `{name: {name: value}}`.
//! - `prefix` (metadata): only variables starting with it are read, and names are given
//!   without it (`prefix: MYAPP_` makes `MYAPP_DB_PASSWORD` the secret `DB_PASSWORD`). The
//!   comparison is case-sensitive, as on Linux and macOS in Dapr.
//! - Variables that belong to the sidecar are never handed out: `APP_API_TOKEN` and every
//!   `DAPR_*` one (Dapr's rule; Trellis also keeps its own `TRELLIS_*` ones), whatever the
//!   prefix.
//!
//! The environment is a snapshot the caller passes in (the binary takes it at start-up), so
//! that no library code reads the process environment and tests can give their own.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{Metadata, Secret, SecretError, SecretStore};

#[derive(Debug)]
pub struct LocalEnvStore {
    env: Arc<BTreeMap<String, String>>,
    prefix: String,
}

impl LocalEnvStore {
    /// A store over `env` (the process environment, or any map of variables).
    pub fn open(md: &Metadata, env: Arc<BTreeMap<String, String>>) -> Result<Self, SecretError> {
        Ok(Self {
            env,
            prefix: md.get("prefix").unwrap_or_default().to_string(),
        })
    }

    /// Whether the variable may be handed out at all.
    fn allowed(var: &str) -> bool {
        let upper = var.to_ascii_uppercase();
        upper != "APP_API_TOKEN" && !upper.starts_with("DAPR_") && !upper.starts_with("TRELLIS_")
    }
}

#[async_trait]
impl SecretStore for LocalEnvStore {
    async fn get(
        &self,
        name: &str,
        _metadata: &BTreeMap<String, String>,
    ) -> Result<Secret, SecretError> {
        let var = format!("{}{name}", self.prefix);
        let value = match Self::allowed(&var) {
            true => self.env.get(&var).cloned().unwrap_or_default(),
            false => String::new(),
        };
        Ok(Secret::from([(name.to_string(), value)]))
    }

    async fn bulk(
        &self,
        _metadata: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Secret>, SecretError> {
        Ok(self
            .env
            .iter()
            .filter(|(var, _)| Self::allowed(var))
            .filter_map(|(var, value)| {
                let name = var.strip_prefix(self.prefix.as_str())?;
                // A variable named exactly the prefix has no name left.
                (!name.is_empty()).then(|| {
                    let secret = Secret::from([(name.to_string(), value.clone())]);
                    (name.to_string(), secret)
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Arc<BTreeMap<String, String>> {
        Arc::new(
            [
                ("HOME", "/root"),
                ("APP_DB_PASSWORD", "hunter2"),
                ("APP_", "nameless"),
                ("APP_API_TOKEN", "sidecar's"),
                ("DAPR_API_TOKEN", "sidecar's"),
                ("dapr_lower", "sidecar's"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        )
    }

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn reads_variables_and_never_the_sidecars_own() {
        let store =
            LocalEnvStore::open(&Metadata::default(), env()).unwrap_or_else(|e| panic!("{e}"));
        let none = BTreeMap::new();
        assert_eq!(
            store.get("HOME", &none).await,
            Ok(secret(&[("HOME", "/root")]))
        );
        assert_eq!(
            store.get("UNSET", &none).await,
            Ok(secret(&[("UNSET", "")]))
        );
        assert_eq!(
            store.get("DAPR_API_TOKEN", &none).await,
            Ok(secret(&[("DAPR_API_TOKEN", "")]))
        );
        let all = store.bulk(&none).await.unwrap_or_default();
        let names: Vec<&str> = all.keys().map(String::as_str).collect();
        assert_eq!(names, ["APP_", "APP_DB_PASSWORD", "HOME"]);
    }

    #[tokio::test]
    async fn a_prefix_filters_and_is_stripped() {
        let md = Metadata::from_pairs([("prefix", "APP_")]);
        let store = LocalEnvStore::open(&md, env()).unwrap_or_else(|e| panic!("{e}"));
        let none = BTreeMap::new();
        assert_eq!(
            store.get("DB_PASSWORD", &none).await,
            Ok(secret(&[("DB_PASSWORD", "hunter2")]))
        );
        // APP_ + API_TOKEN is the sidecar's token: refused with the prefix too.
        assert_eq!(
            store.get("API_TOKEN", &none).await,
            Ok(secret(&[("API_TOKEN", "")]))
        );
        let all = store.bulk(&none).await.unwrap_or_default();
        assert_eq!(
            all,
            BTreeMap::from([(
                "DB_PASSWORD".to_string(),
                secret(&[("DB_PASSWORD", "hunter2")])
            )])
        );
    }
}
