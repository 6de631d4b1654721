//! The secret stores of one sidecar: opened from its components, found by name, each with
//! the access rule `Configuration.spec.secrets.scopes` gives it; and the one place where
//! `secretKeyRef`s in other components' metadata are replaced by the secrets they name.
//!
//! Secret stores open first, before every other building block, so that the others'
//! metadata can come from them. When no secret store component exists, every app has the
//! embedded one (`secretstores.sqlite` on `<data-dir>/secrets.db`, named `secretstore`,
//! filled with `trellis secret set`), as it has `statestore`; it opens on first use, so
//! apps that read no secrets pay nothing for it.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::OnceCell;
use trellis_resources::{Component, MetadataValue, Resources, SecretsScope};
use trellis_secrets::{Metadata, Secret, SecretError, SecretStore};

use crate::components::{EMBEDDED_SECRETS_TYPE, Registries, SecretFactory};
use crate::config::{Environment, SidecarConfig};
use crate::loading::{self, Embedded};

/// The name of the secret store offered when no secret store component exists.
pub const DEFAULT_STORE_NAME: &str = "secretstore";

/// The embedded store's file in the data directory (its key: `secrets.key` beside it).
pub const EMBEDDED_FILE: &str = "secrets.db";

#[derive(Debug)]
pub struct SecretComponent {
    pub name: String,
    pub type_name: String,
    pub version: String,
    pub store: Arc<dyn SecretStore>,
    /// This store's entry of `spec.secrets.scopes`, if the configuration has one.
    scope: Option<SecretsScope>,
}

impl SecretComponent {
    /// Whether the app may read `key` through the API (Dapr's rule: a non-empty
    /// `allowedSecrets` decides alone; else `deniedSecrets` refuses; else `defaultAccess`,
    /// which is `allow` unless it says `deny`). `secretKeyRef`s are not subject to it.
    pub fn allows(&self, key: &str) -> bool {
        let Some(scope) = &self.scope else {
            return true;
        };
        if !scope.allowed_secrets.is_empty() {
            return scope.allowed_secrets.iter().any(|k| k == key);
        }
        if scope.denied_secrets.iter().any(|k| k == key) {
            return false;
        }
        !scope
            .default_access
            .as_deref()
            .is_some_and(|a| a.eq_ignore_ascii_case("deny"))
    }
}

/// This app's secrets components by name.
pub type SecretStores = crate::loading::Opened<SecretComponent>;

impl SecretStores {
    /// Opens every secret store component scoped to this app. Returns every problem at once.
    pub async fn open(
        config: &SidecarConfig,
        registries: &Registries,
    ) -> Result<Self, Vec<String>> {
        let embedded = Embedded::if_registered(
            &registries.secrets,
            DEFAULT_STORE_NAME,
            EMBEDDED_SECRETS_TYPE,
            EMBEDDED_FILE,
        );
        let (components, errors) = loading::select(config, "secretstores", embedded);
        let scopes: Vec<SecretsScope> = config
            .configuration
            .as_ref()
            .and_then(|c| c.spec.secrets.as_ref())
            .map(|s| s.scopes.clone())
            .unwrap_or_default();
        let scopes = &scopes;
        Self::open_each(components, errors, "secret store", |c| async move {
            let scope = scopes.iter().find(|s| s.store_name == c.meta.name).cloned();
            let store = open_one(&c, config, registries).await?;
            Ok(store.map(|store| SecretComponent {
                name: c.meta.name.clone(),
                type_name: c.type_name.clone(),
                version: c.version.clone(),
                store,
                scope,
            }))
        })
        .await
    }
}

async fn open_one(
    component: &Component,
    config: &SidecarConfig,
    registries: &Registries,
) -> Result<Option<Arc<dyn SecretStore>>, String> {
    let factory = registries
        .secrets
        .get(&component.type_name, &component.version)
        .map_err(|e| format!("spec.type: {e}"))?;
    // A secret store's own settings cannot come from a secret store.
    let metadata = Metadata::new(&component.meta.name, loading::plain_metadata(component)?);
    if loading::is_built_in(component) {
        return Ok(Some(Arc::new(LazyStore {
            factory: *factory,
            metadata,
            environment: config.environment.clone(),
            store: OnceCell::new(),
        })));
    }
    loading::init(
        component,
        "secret store",
        factory(metadata, config.environment.clone()),
    )
    .await
}

/// A store opened on its first call; an error opening it surfaces on that call, and the
/// next call tries again.
struct LazyStore {
    factory: SecretFactory,
    metadata: Metadata,
    environment: Environment,
    store: OnceCell<Arc<dyn SecretStore>>,
}

impl std::fmt::Debug for LazyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyStore")
            .field("opened", &self.store.initialized())
            .finish()
    }
}

impl LazyStore {
    async fn store(&self) -> Result<&Arc<dyn SecretStore>, SecretError> {
        self.store
            .get_or_try_init(|| (self.factory)(self.metadata.clone(), self.environment.clone()))
            .await
    }
}

#[async_trait]
impl SecretStore for LazyStore {
    async fn get(
        &self,
        name: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Secret, SecretError> {
        self.store().await?.get(name, metadata).await
    }

    async fn bulk(
        &self,
        metadata: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Secret>, SecretError> {
        self.store().await?.bulk(metadata).await
    }
}

/// Replaces every `secretKeyRef` in the metadata of the components that are not secret
/// stores with the value it names: key `key` (default: the secret's name) of secret `name`
/// in the store `auth.secretStore` names. Errors name the component, the item and the
/// secret, never a value.
pub async fn resolve_refs(
    resources: &mut Resources,
    stores: &SecretStores,
) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    for component in &mut resources.components {
        if component.building_block() == "secretstores" {
            continue;
        }
        let store_name = component.auth_secret_store.clone();
        for item in &mut component.metadata {
            let MetadataValue::SecretRef { name, key } = &item.value else {
                continue;
            };
            let at = format!("{}: spec.metadata {}", component.location, item.name);
            let Some(store_name) = &store_name else {
                errors.push(format!(
                    "{at}: secretKeyRef needs auth.secretStore naming the secret store to read it from"
                ));
                continue;
            };
            let Some(store) = stores.get(store_name) else {
                errors.push(format!(
                    "{at}: auth.secretStore {store_name:?} is not a secret store this app has"
                ));
                continue;
            };
            match store.store.get(name, &BTreeMap::new()).await {
                Ok(secret) => match secret.get(key) {
                    Some(value) => item.value = MetadataValue::Plain(value.clone()),
                    None => errors.push(format!(
                        "{at}: secret {name:?} in store {store_name:?} has no key {key:?}"
                    )),
                },
                Err(e) => errors.push(format!(
                    "{at}: reading secret {name:?} from store {store_name:?}: {e}"
                )),
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(all(test, feature = "secretstores-local-env"))]
mod tests {
    use super::*;

    fn component(scope: Option<SecretsScope>) -> SecretComponent {
        let md = Metadata::default();
        let env = Arc::new(BTreeMap::new());
        SecretComponent {
            name: "s".into(),
            type_name: "secretstores.local.env".into(),
            version: "v1".into(),
            store: match trellis_secrets::local_env::LocalEnvStore::open(&md, env) {
                Ok(s) => Arc::new(s),
                Err(e) => panic!("{e}"),
            },
            scope,
        }
    }

    fn scope(default: Option<&str>, allowed: &[&str], denied: &[&str]) -> Option<SecretsScope> {
        Some(SecretsScope {
            store_name: "s".into(),
            default_access: default.map(str::to_string),
            allowed_secrets: allowed.iter().map(|s| s.to_string()).collect(),
            denied_secrets: denied.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn scopes_decide_as_dapr_does() {
        assert!(component(None).allows("any"));
        let deny_all = component(scope(Some("DENY"), &[], &[]));
        assert!(!deny_all.allows("any"));
        let allow_list = component(scope(Some("deny"), &["a"], &["a"]));
        assert!(
            allow_list.allows("a"),
            "a non-empty allow list decides alone"
        );
        assert!(!allow_list.allows("b"));
        let deny_list = component(scope(None, &[], &["b"]));
        assert!(deny_list.allows("a"));
        assert!(!deny_list.allows("b"));
    }
}
