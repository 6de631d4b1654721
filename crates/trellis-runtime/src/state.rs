//! The state stores of one sidecar: built from its components, found by name, each with the
//! key prefix of this app.

use std::sync::Arc;

use trellis_resources::Component;
use trellis_state::{Capabilities, KeyPrefix, Metadata, StateStore};

use crate::components::{EMBEDDED_STATE_TYPE, Registries};
use crate::config::SidecarConfig;
use crate::loading::{self, Embedded};

/// The name of the state store offered when no state component is configured.
pub const DEFAULT_STORE_NAME: &str = "statestore";

/// What the embedded store reports once open (checked against the real thing in a test).
const EMBEDDED_CAPABILITIES: Capabilities = Capabilities {
    etag: true,
    transactional: true,
    query: true,
    ttl: true,
    actor: true,
};

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

/// This app's state components by name.
pub type StateStores = crate::loading::Opened<StateComponent>;

impl StateStores {
    /// Opens every state component scoped to this app, or the embedded default when there
    /// is none. Returns every problem at once.
    pub async fn open(
        config: &SidecarConfig,
        registries: &Registries,
    ) -> Result<Self, Vec<String>> {
        let embedded = Embedded::if_registered(
            &registries.state,
            DEFAULT_STORE_NAME,
            EMBEDDED_STATE_TYPE,
            "state.db",
        );
        let (components, errors) = loading::select(config, "state", embedded);
        Self::open_each(components, errors, "state store", |c| async move {
            open_one(&c, config, registries).await
        })
        .await
    }
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
    let metadata = Metadata::new(&component.meta.name, loading::plain_metadata(component)?);
    let key_prefix = KeyPrefix::parse(metadata.get("keyPrefix")).map_err(|e| e.to_string())?;
    let prefix = key_prefix.prefix(&config.app_id, &config.namespace, &component.meta.name);
    if loading::is_built_in(component) {
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
    let Some(store) = loading::init(component, "state store", factory(metadata)).await? else {
        return Ok(None);
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
        let md = Metadata::from_pairs([(
            "connectionString",
            dir.path().join("s.db").display().to_string(),
        )]);
        let store = trellis_state::sqlite::SqliteStore::open(&md).await.unwrap();
        assert_eq!(store.capabilities(), EMBEDDED_CAPABILITIES);
    }
}
