//! The configuration stores of one sidecar: opened from its components (or the embedded
//! default), found by name.
//!
//! The embedded store (`configuration.sqlite` on `<data-dir>/configuration.db`, offered as
//! `configstore` when no configuration component exists, and written by `trellis config
//! set`) opens on first use, so that apps that never read configuration pay nothing for
//! it. Keys are used as the app names them, with no prefix, as in Dapr.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::OnceCell;
use trellis_configuration::{ConfigurationError, ConfigurationStore, Item, Metadata, Subscription};
use trellis_resources::Component;

use crate::components::{ConfigurationFactory, EMBEDDED_CONFIGURATION_TYPE, Registries};
use crate::config::SidecarConfig;
use crate::loading::{self, Embedded};

/// The name of the configuration store offered when no configuration component exists.
pub const DEFAULT_STORE_NAME: &str = "configstore";

/// The embedded store's file in the data directory.
pub const EMBEDDED_FILE: &str = "configuration.db";

#[derive(Debug)]
pub struct ConfigurationComponent {
    pub name: String,
    pub type_name: String,
    pub version: String,
    pub store: Arc<dyn ConfigurationStore>,
}

/// This app's configuration components by name.
pub type ConfigurationStores = crate::loading::Opened<ConfigurationComponent>;

impl ConfigurationStores {
    /// Opens every configuration component scoped to this app, or the embedded default
    /// when there is none. Returns every problem at once.
    pub async fn open(
        config: &SidecarConfig,
        registries: &Registries,
    ) -> Result<Self, Vec<String>> {
        let embedded = Embedded::if_registered(
            &registries.configuration,
            DEFAULT_STORE_NAME,
            EMBEDDED_CONFIGURATION_TYPE,
            EMBEDDED_FILE,
        );
        let (components, errors) = loading::select(config, "configuration", embedded);
        Self::open_each(components, errors, "configuration store", |c| async move {
            open_one(&c, registries).await
        })
        .await
    }
}

async fn open_one(
    component: &Component,
    registries: &Registries,
) -> Result<Option<ConfigurationComponent>, String> {
    let factory = registries
        .configuration
        .get(&component.type_name, &component.version)
        .map_err(|e| format!("spec.type: {e}"))?;
    let metadata = Metadata::new(&component.meta.name, loading::plain_metadata(component)?);
    let store: Arc<dyn ConfigurationStore> = if loading::is_built_in(component) {
        Arc::new(LazyStore {
            factory: *factory,
            metadata,
            store: OnceCell::new(),
        })
    } else {
        match loading::init(component, "configuration store", factory(metadata)).await? {
            Some(store) => store,
            None => return Ok(None),
        }
    };
    Ok(Some(ConfigurationComponent {
        name: component.meta.name.clone(),
        type_name: component.type_name.clone(),
        version: component.version.clone(),
        store,
    }))
}

/// A store opened on its first call; an error opening it surfaces on that call, and the
/// next call tries again.
struct LazyStore {
    factory: ConfigurationFactory,
    metadata: Metadata,
    store: OnceCell<Arc<dyn ConfigurationStore>>,
}

impl std::fmt::Debug for LazyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyStore")
            .field("opened", &self.store.initialized())
            .finish()
    }
}

#[async_trait]
impl ConfigurationStore for LazyStore {
    async fn get(
        &self,
        keys: &[String],
        metadata: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Item>, ConfigurationError> {
        self.opened().await?.get(keys, metadata).await
    }

    async fn subscribe(
        &self,
        keys: &[String],
        metadata: &BTreeMap<String, String>,
    ) -> Result<Subscription, ConfigurationError> {
        self.opened().await?.subscribe(keys, metadata).await
    }
}

impl LazyStore {
    async fn opened(&self) -> Result<&Arc<dyn ConfigurationStore>, ConfigurationError> {
        self.store
            .get_or_try_init(|| (self.factory)(self.metadata.clone()))
            .await
    }
}
