//! The lock stores of one sidecar: opened from its components (or the embedded default),
//! found by name, each with the key prefix of this app.
//!
//! As in Dapr, the resource id an app names is stored as `lock||<prefix><resource>`, where
//! the prefix follows the component's `keyPrefix` (`appid` by default, so two apps' locks
//! on one store do not meet unless they ask to: `name`, `none`, or a custom prefix), so
//! that a daprd and a Trellis sidecar of one app on one Redis lock the same keys.
//!
//! The embedded store (`lock.sqlite` on `<data-dir>/lock.db`, offered as `lockstore` when
//! no lock component exists) opens on first use, so that apps that never lock pay nothing
//! for it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::OnceCell;
use trellis_lock::{LockError, LockStore, Metadata, TryLock, UnlockStatus};
use trellis_resources::Component;

use crate::components::{EMBEDDED_LOCK_TYPE, LockFactory, Registries};
use crate::config::SidecarConfig;
use crate::loading::{self, Embedded};

/// The name of the lock store offered when no lock component is configured.
pub const DEFAULT_STORE_NAME: &str = "lockstore";

#[derive(Debug)]
pub struct LockComponent {
    pub name: String,
    pub type_name: String,
    pub version: String,
    pub store: Arc<dyn LockStore>,
    /// Put in front of every resource id (`lock||orders||`).
    pub prefix: String,
}

impl LockComponent {
    /// The resource id as stored.
    pub fn key(&self, resource: &str) -> String {
        format!("{}{resource}", self.prefix)
    }
}

/// This app's lock components by name.
pub type LockStores = crate::loading::Opened<LockComponent>;

impl LockStores {
    /// Opens every lock component scoped to this app, or the embedded default when there
    /// is none. Returns every problem at once.
    pub async fn open(
        config: &SidecarConfig,
        registries: &Registries,
    ) -> Result<Self, Vec<String>> {
        let embedded = Embedded::if_registered(
            &registries.lock,
            DEFAULT_STORE_NAME,
            EMBEDDED_LOCK_TYPE,
            "lock.db",
        );
        let (components, errors) = loading::select(config, "lock", embedded);
        Self::open_each(components, errors, "lock store", |c| async move {
            open_one(&c, config, registries).await
        })
        .await
    }
}

async fn open_one(
    component: &Component,
    config: &SidecarConfig,
    registries: &Registries,
) -> Result<Option<LockComponent>, String> {
    let factory = registries
        .lock
        .get(&component.type_name, &component.version)
        .map_err(|e| format!("spec.type: {e}"))?;
    let metadata = Metadata::new(&component.meta.name, loading::plain_metadata(component)?);
    let prefix = key_prefix(
        metadata.get("keyPrefix"),
        &config.app_id,
        &component.meta.name,
    )?;
    let store: Arc<dyn LockStore> = if loading::is_built_in(component) {
        Arc::new(LazyLockStore {
            factory: *factory,
            metadata,
            store: OnceCell::new(),
        })
    } else {
        match loading::init(component, "lock store", factory(metadata)).await? {
            Some(store) => store,
            None => return Ok(None),
        }
    };
    Ok(Some(LockComponent {
        name: component.meta.name.clone(),
        type_name: component.type_name.clone(),
        version: component.version.clone(),
        store,
        prefix,
    }))
}

/// What goes in front of every resource id, by Dapr's rules for lock stores (which are not
/// quite the state stores': the strategy is lowercased, custom prefixes too, and there is
/// no `namespace`).
fn key_prefix(strategy: Option<&str>, app_id: &str, store: &str) -> Result<String, String> {
    let strategy = strategy.unwrap_or("appid").to_lowercase();
    if strategy.contains("||") {
        return Err(format!(
            "spec.metadata keyPrefix: {strategy:?} must not contain \"||\""
        ));
    }
    Ok(match strategy.as_str() {
        "none" => "lock||".to_string(),
        "name" => format!("lock||{store}||"),
        "appid" | "" => format!("lock||{app_id}||"),
        custom => format!("lock||{custom}||"),
    })
}

/// A lock store opened on its first call; an error opening it surfaces on that call, and
/// the next call tries again.
struct LazyLockStore {
    factory: LockFactory,
    metadata: Metadata,
    store: OnceCell<Arc<dyn LockStore>>,
}

impl std::fmt::Debug for LazyLockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyLockStore")
            .field("opened", &self.store.initialized())
            .finish()
    }
}

impl LazyLockStore {
    async fn store(&self) -> Result<&Arc<dyn LockStore>, LockError> {
        self.store
            .get_or_try_init(|| (self.factory)(self.metadata.clone()))
            .await
    }
}

#[async_trait]
impl LockStore for LazyLockStore {
    async fn try_lock(
        &self,
        resource: &str,
        owner: &str,
        expiry: Duration,
    ) -> Result<TryLock, LockError> {
        self.store().await?.try_lock(resource, owner, expiry).await
    }

    async fn unlock(&self, resource: &str, owner: &str) -> Result<UnlockStatus, LockError> {
        self.store().await?.unlock(resource, owner).await
    }
}

#[cfg(test)]
mod tests {
    use super::key_prefix;

    #[test]
    fn resource_ids_are_prefixed_as_dapr_does() {
        let p = |s: Option<&str>| key_prefix(s, "shop", "locks");
        assert_eq!(p(None).as_deref(), Ok("lock||shop||"));
        assert_eq!(p(Some("AppID")).as_deref(), Ok("lock||shop||"));
        assert_eq!(p(Some("name")).as_deref(), Ok("lock||locks||"));
        assert_eq!(p(Some("none")).as_deref(), Ok("lock||"));
        assert_eq!(p(Some("Team")).as_deref(), Ok("lock||team||"));
        assert!(p(Some("a||b")).is_err());
    }
}
