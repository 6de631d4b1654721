//! The secrets building block: the [`SecretStore`] trait, its backends and their
//! conformance suite.
//!
//! A secret is a small map of strings: most stores keep one value per name (returned as
//! `{name: value}`), some keep several (`multiValued` files). Stores are read-only through
//! Dapr's API; they are filled by whatever owns them (the environment, a file, a vault).
//!
//! Backends, each behind its cargo feature:
//! - [`local_env`] (`secretstores.local.env`): the process environment, passed in by the
//!   caller so that this crate never reads it itself;
//! - [`local_file`] (`secretstores.local.file`): a JSON file, read once at open;
//! - [`sqlite`] (`secretstores.sqlite`): the embedded store, an encrypted SQLite file
//!   written with `trellis secret set`.
//!
//! Nothing here logs a secret's value, and no error message contains one.

use std::collections::BTreeMap;

use async_trait::async_trait;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "local-env")]
pub mod local_env;
#[cfg(feature = "local-file")]
pub mod local_file;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use trellis_core::{Metadata, MetadataError};

/// One secret: its keys and values (`{name: value}` for single-valued stores).
pub type Secret = BTreeMap<String, String>;

/// A secret store.
#[async_trait]
pub trait SecretStore: Send + Sync + std::fmt::Debug {
    /// The secret called `name`; `metadata` is the request's `metadata.*` (store-specific,
    /// e.g. a version).
    async fn get(
        &self,
        name: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Secret, SecretError>;

    /// Every secret the store holds, by name.
    async fn bulk(
        &self,
        metadata: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Secret>, SecretError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The store has no secret of that name.
    #[error("secret {0} not found")]
    NotFound(String),
    /// The store failed or is unreachable; the text is the backend's (never a value).
    #[error("{0}")]
    Backend(String),
    /// The request or the component's settings are unusable.
    #[error("{0}")]
    InvalidRequest(String),
}

/// A component setting that cannot be used is an unusable request to open it.
impl From<MetadataError> for SecretError {
    fn from(err: MetadataError) -> Self {
        SecretError::InvalidRequest(err.to_string())
    }
}
