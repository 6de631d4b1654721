//! The configuration building block: the [`ConfigurationStore`] trait, its backends and
//! their conformance suite.
//!
//! A configuration store holds items an app reads but does not write: each key has a
//! value, a version (which changes whenever the value does) and metadata. Apps read them
//! through Dapr's configuration API and subscribe to their changes; who writes them
//! depends on the store (an operator with `redis-cli` or `psql`, or `trellis config set`
//! for the embedded store).
//!
//! Backends, each behind its cargo feature:
//! - [`sqlite`] (`configuration.sqlite`): the embedded store, one file per machine,
//!   written by the `trellis config` command;
//! - [`redis`] (`configuration.redis`): Dapr's own, each key holding `value||version`,
//!   changes heard through keyspace notifications;
//! - [`postgres`] (`configuration.postgresql`): Dapr's table of `key`, `value`, `version`
//!   and `metadata`, changes heard through a trigger's `NOTIFY`.
//!
//! Subscriptions work the same way for every backend ([`subscription`]): the backend says
//! which keys may have changed, the shared subscription task reads them and passes on
//! what differs.

use std::collections::BTreeMap;

use async_trait::async_trait;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod subscription;

pub use subscription::{Subscription, Update};
pub use trellis_core::{Metadata, MetadataError};

/// One configuration item, as Dapr's `ConfigurationItem`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Item {
    pub value: String,
    /// Changes whenever the value does; empty when the store keeps none.
    pub version: String,
    pub metadata: BTreeMap<String, String>,
}

impl Item {
    pub fn new(value: impl Into<String>, version: impl Into<String>) -> Self {
        Item {
            value: value.into(),
            version: version.into(),
            metadata: BTreeMap::new(),
        }
    }
}

/// A configuration store.
#[async_trait]
pub trait ConfigurationStore: Send + Sync + std::fmt::Debug {
    /// The items of `keys` that exist, by key (missing keys are left out); an empty `keys`
    /// means every item in the store. `metadata` is the request's, for the backend.
    async fn get(
        &self,
        keys: &[String],
        metadata: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Item>, ConfigurationError>;

    /// Follows the changes of `keys` (an empty `keys`: of every item) from now on, until
    /// the [`Subscription`] is dropped: each change as the item now is, a deletion as an
    /// empty item. Fails when the store cannot be watched or read right now. `metadata` is
    /// the request's (PostgreSQL takes its `pgNotifyChannel` there).
    async fn subscribe(
        &self,
        keys: &[String],
        metadata: &BTreeMap<String, String>,
    ) -> Result<Subscription, ConfigurationError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigurationError {
    /// The store failed or is unreachable; the text is the backend's.
    #[error("{0}")]
    Backend(String),
    /// The request or the component's settings are unusable.
    #[error("{0}")]
    InvalidRequest(String),
}

impl ConfigurationError {
    pub fn backend(e: impl std::fmt::Display) -> Self {
        ConfigurationError::Backend(e.to_string())
    }
}

/// A component setting that cannot be used is an unusable request to open it.
impl From<MetadataError> for ConfigurationError {
    fn from(err: MetadataError) -> Self {
        ConfigurationError::InvalidRequest(err.to_string())
    }
}
