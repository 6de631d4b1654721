//! The state stores of one sidecar: built from its components, found by name, each with the
//! key prefix of this app.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use trellis_resources::{Component, MetadataValue};
use trellis_state::{Capabilities, KeyPrefix, Metadata, StateStore};

use crate::components::{EMBEDDED_STATE_TYPE, Registries};
use crate::config::SidecarConfig;

/// The name of the state store offered when no state component is configured.
pub const DEFAULT_STORE_NAME: &str = "statestore";

/// Where the built-in `statestore` component says it comes from.
const BUILT_IN: &str = "<built-in statestore>";

/// What the embedded store reports once open (checked against the real thing in a test).
const EMBEDDED_CAPABILITIES: Capabilities = Capabilities {
    etag: true,
    transactional: true,
    query: true,
    ttl: true,
    actor: true,
};

/// How long a component may take to initialise when it does not say (`spec.initTimeout`).
const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct StateComponent {
    pub name: String,
    pub type_name: String,
    pub version: String,
    pub store: Arc<dyn StateStore>,
    pub capabilities: Capabilities,
    /// Put in front of every key this app uses (`orders||`), per `keyPrefix`.
    pub prefix: String,
}

impl StateComponent {
    /// The key as stored.
    pub fn key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.prefix.len() + key.len());
        k.push_str(&self.prefix);
        k.push_str(key);
        k
    }

    /// The key as the app knows it.
    pub fn app_key<'a>(&self, stored: &'a str) -> &'a str {
        stored.strip_prefix(self.prefix.as_str()).unwrap_or(stored)
    }
}

#[derive(Debug, Default)]
pub struct StateStores {
    stores: BTreeMap<String, Arc<StateComponent>>,
}

impl StateStores {
    pub fn get(&self, name: &str) -> Option<&Arc<StateComponent>> {
        self.stores.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.stores.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<StateComponent>> {
        self.stores.values()
    }

    /// Opens every state component scoped to this app, or the embedded default when there
    /// is none. Returns every problem at once.
    pub async fn open(
        config: &SidecarConfig,
        registries: &Registries,
    ) -> Result<Self, Vec<String>> {
        let all_state = || {
            config
                .resources
                .components
                .iter()
                .filter(|c| c.building_block() == "state")
        };
        // The embedded default stands in only when no state component exists at all: an
        // app scoped out of every store must not silently get a local one instead.
        let use_default =
            all_state().next().is_none() && registries.state.get(EMBEDDED_STATE_TYPE, "v1").is_ok();
        let mut components: Vec<Component> = all_state()
            .filter(|c| c.is_scoped_to(&config.app_id))
            .cloned()
            .collect();
        let mut errors = Vec::new();
        if use_default {
            match default_component(config) {
                Ok(c) => components.push(c),
                Err(e) => errors.push(e),
            }
        }
        let mut stores = BTreeMap::new();
        for component in components {
            match open_one(&component, config, registries).await {
                Ok(Some(state)) => {
                    tracing::debug!(
                        name = state.name,
                        type_name = state.type_name,
                        "state store ready"
                    );
                    stores.insert(state.name.clone(), Arc::new(state));
                }
                Ok(None) => {}
                Err(e) => errors.push(format!("{}: {e}", component.location)),
            }
        }
        if errors.is_empty() {
            Ok(Self { stores })
        } else {
            Err(errors)
        }
    }
}

/// `statestore`: the embedded store in the data directory, shared by every sidecar of this
/// machine that uses the same data directory.
fn default_component(config: &SidecarConfig) -> Result<Component, String> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        format!(
            "cannot create the data directory {}: {e}; choose another with --data-dir",
            config.data_dir.display()
        )
    })?;
    let db = config.data_dir.join("state.db");
    let yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {DEFAULT_STORE_NAME}\nspec:\n  type: {EMBEDDED_STATE_TYPE}\n  version: v1\n  metadata:\n  - name: connectionString\n    value: {}\n",
        serde_json::to_string(&db.display().to_string()).unwrap_or_default()
    );
    let mut parsed = trellis_resources::parse_str(std::path::Path::new(BUILT_IN), &yaml)
        .map_err(|e| format!("built-in state store: {e}"))?;
    parsed
        .components
        .pop()
        .ok_or_else(|| "built-in state store: no component".to_string())
}

async fn open_one(
    component: &Component,
    config: &SidecarConfig,
    registries: &Registries,
) -> Result<Option<StateComponent>, String> {
    let factory = registries
        .state
        .get(&component.type_name, &component.version)
        .map_err(|e| format!("spec.type: {e}"))?;
    let mut metadata = BTreeMap::new();
    for item in &component.metadata {
        match &item.value {
            MetadataValue::Plain(v) => {
                metadata.insert(item.name.clone(), v.clone());
            }
            MetadataValue::SecretRef { .. } => {
                return Err(format!(
                    "spec.metadata {}: secretKeyRef is not supported yet; put the value inline",
                    item.name
                ));
            }
        }
    }
    let metadata = Metadata(metadata);
    let key_prefix = KeyPrefix::parse(metadata.get("keyPrefix")).map_err(|e| e.to_string())?;
    let prefix = key_prefix.prefix(&config.app_id, &config.namespace, &component.meta.name);
    if component.location.file == std::path::Path::new(BUILT_IN) {
        let store = crate::lazy_store::LazyStore::new(*factory, metadata, EMBEDDED_CAPABILITIES);
        return Ok(Some(StateComponent {
            name: component.meta.name.clone(),
            type_name: component.type_name.clone(),
            version: component.version.clone(),
            capabilities: EMBEDDED_CAPABILITIES,
            store: Arc::new(store),
            prefix,
        }));
    }
    let timeout = component.init_timeout.unwrap_or(DEFAULT_INIT_TIMEOUT);
    let opened = match tokio::time::timeout(timeout, factory(metadata)).await {
        Ok(Ok(store)) => Ok(store),
        Ok(Err(e)) => Err(format!(
            "initializing state store {:?}: {e}",
            component.meta.name
        )),
        Err(_) => Err(format!(
            "initializing state store {:?} timed out after {timeout:?}",
            component.meta.name
        )),
    };
    let store = match opened {
        Ok(store) => store,
        Err(e) if component.ignore_errors => {
            tracing::warn!(
                component = component.meta.name,
                error = e,
                "skipping a state store that failed to start (ignoreErrors)"
            );
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    Ok(Some(StateComponent {
        name: component.meta.name.clone(),
        type_name: component.type_name.clone(),
        version: component.version.clone(),
        capabilities: store.capabilities(),
        store,
        prefix,
    }))
}

#[cfg(all(test, feature = "state-sqlite"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_capabilities_match_the_real_store() {
        let dir = tempfile::tempdir().unwrap();
        let md = Metadata(BTreeMap::from([(
            "connectionString".to_string(),
            dir.path().join("s.db").display().to_string(),
        )]));
        let store = trellis_state::sqlite::SqliteStore::open(&md).await.unwrap();
        assert_eq!(store.capabilities(), EMBEDDED_CAPABILITIES);
    }
}
