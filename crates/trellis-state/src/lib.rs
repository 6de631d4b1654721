//! The state management building block.
//!
//! A [`StateStore`] keeps opaque values under string keys with ETag-based optimistic
//! concurrency, optional TTLs, transactions and queries, as Dapr's state API defines them.
//! The runtime prefixes keys (`<app-id>||<key>` and friends, see [`KeyPrefix`]) before they
//! reach a store, and only the runtime's API layer knows the wire JSON.
//!
//! Backends live in their own modules behind cargo features and are registered in the
//! runtime's component registry. Every backend passes the same [`conformance`] suite.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod prefix;
pub mod query;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(any(feature = "postgres", feature = "mysql", feature = "redis"))]
mod remote;

pub use prefix::KeyPrefix;
pub use query::{Query, QueryResponse, QueryResult};
pub use trellis_core::Metadata;

/// `options.concurrency` of a write or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Concurrency {
    /// With an ETag: the write wins only if the ETag still matches. Without one: the write
    /// wins only if the key does not exist yet.
    FirstWrite,
    /// With an ETag: as first-write. Without one: the write always wins.
    #[default]
    LastWrite,
}

/// `options.consistency`; stores may ignore it when they only offer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    #[default]
    Eventual,
    Strong,
}

/// One value to save.
#[derive(Debug, Clone, PartialEq)]
pub struct SetRequest {
    /// The key as stored (already prefixed).
    pub key: String,
    /// The value's bytes. For JSON values these are the JSON text.
    pub value: Bytes,
    /// Whether `value` is JSON (stores that can query or index JSON keep it as such).
    pub is_json: bool,
    pub etag: Option<String>,
    pub concurrency: Concurrency,
    pub consistency: Consistency,
    /// Expire the key after this long (`metadata.ttlInSeconds`); `None` = never.
    pub ttl: Option<Duration>,
    /// `metadata.contentType`, kept and returned on reads.
    pub content_type: Option<String>,
}

impl SetRequest {
    /// A last-write-wins save without ETag, TTL or content type.
    pub fn new(key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        let value = value.into();
        let is_json = serde_json::from_slice::<serde::de::IgnoredAny>(&value).is_ok();
        Self {
            key: key.into(),
            value,
            is_json,
            etag: None,
            concurrency: Concurrency::LastWrite,
            consistency: Consistency::Eventual,
            ttl: None,
            content_type: None,
        }
    }
}

/// One key to delete.
#[derive(Debug, Clone, PartialEq)]
pub struct DeleteRequest {
    pub key: String,
    pub etag: Option<String>,
    pub concurrency: Concurrency,
    pub consistency: Consistency,
}

impl DeleteRequest {
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            etag: None,
            concurrency: Concurrency::LastWrite,
            consistency: Consistency::Eventual,
        }
    }
}

/// One key to read, with what the caller asked for beyond the key (Dapr's `GetRequest`:
/// `?consistency=` and `?metadata.<name>=` of `GET /v1.0/state/{store}/{key}`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GetRequest {
    /// The key as stored (already prefixed).
    pub key: String,
    pub consistency: Consistency,
    /// Per-request metadata, `metadata.` stripped from the names.
    pub metadata: BTreeMap<String, String>,
}

impl GetRequest {
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            ..Self::default()
        }
    }
}

/// A stored value.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub value: Bytes,
    pub etag: String,
    /// When a TTL was set: the moment the key expires.
    pub expires_at: Option<SystemTime>,
    pub content_type: Option<String>,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    Upsert(SetRequest),
    Delete(DeleteRequest),
}

/// What a store can do, reported by the metadata API and checked by the API layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub etag: bool,
    pub transactional: bool,
    pub query: bool,
    pub ttl: bool,
    /// Usable as the actor state store.
    pub actor: bool,
}

impl Capabilities {
    /// The names Dapr's metadata API uses.
    pub fn names(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.etag {
            out.push("ETAG");
        }
        if self.transactional {
            out.push("TRANSACTIONAL");
        }
        if self.query {
            out.push("QUERY_API");
        }
        if self.ttl {
            out.push("TTL");
        }
        if self.actor {
            out.push("ACTOR");
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The ETag given does not match the stored one (or the key is gone, or first-write
    /// found an existing key).
    #[error("possible etag mismatch: the value was changed or deleted since it was read")]
    EtagMismatch,
    /// The ETag is not one this store could have produced.
    #[error("invalid etag value: {0}")]
    InvalidEtag(String),
    /// The request itself is unusable (empty key, bad TTL...).
    #[error("{0}")]
    InvalidRequest(String),
    /// The store cannot do this (query on a store without query support...).
    #[error("{0} is not supported by this state store")]
    NotSupported(&'static str),
    /// The backend failed: connection refused, SQL error... The text is the backend's.
    #[error("{0}")]
    Backend(String),
}

/// A component setting that cannot be used is an unusable request to open it.
impl From<trellis_core::MetadataError> for StateError {
    fn from(err: trellis_core::MetadataError) -> Self {
        StateError::InvalidRequest(err.to_string())
    }
}

impl StateError {
    pub fn backend(err: impl std::fmt::Display) -> Self {
        StateError::Backend(err.to_string())
    }
}

/// Key-value state with optimistic concurrency.
///
/// Keys arrive already prefixed. Implementations must make every write change the ETag,
/// treat an expired key exactly like a missing one, and apply [`StateStore::transact`]
/// atomically: all operations or none.
#[async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug {
    fn capabilities(&self) -> Capabilities;

    async fn get(&self, key: &str) -> Result<Option<Item>, StateError>;

    /// Reads a key as `req` asks. The default reads `req.key` with [`StateStore::get`]:
    /// every backend here answers every read with the latest acknowledged write (strong
    /// consistency whatever was asked) and none takes per-read metadata; a store that does
    /// overrides this.
    async fn get_with(&self, req: &GetRequest) -> Result<Option<Item>, StateError> {
        self.get(&req.key).await
    }

    /// Reads several keys; the default reads them one by one.
    async fn bulk_get(&self, keys: &[String]) -> Vec<(String, Result<Option<Item>, StateError>)> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push((key.clone(), self.get(key).await));
        }
        out
    }

    async fn set(&self, req: SetRequest) -> Result<(), StateError>;

    /// Saves several values. Not atomic (use [`StateStore::transact`] for that); the first
    /// error is returned after trying all of them.
    async fn bulk_set(&self, reqs: Vec<SetRequest>) -> Result<(), StateError> {
        let mut first_error = None;
        for req in reqs {
            if let Err(e) = self.set(req).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Deletes a key; deleting a missing key without an ETag succeeds.
    async fn delete(&self, req: DeleteRequest) -> Result<(), StateError>;

    /// Applies every operation, or none of them.
    async fn transact(&self, ops: Vec<Operation>) -> Result<(), StateError>;

    /// Runs a query over the keys that start with `key_prefix`. Result keys keep the prefix.
    async fn query(&self, key_prefix: &str, query: &Query) -> Result<QueryResponse, StateError> {
        let _ = (key_prefix, query);
        Err(StateError::NotSupported("the query API"))
    }

    /// Checks the backend is reachable (used at start-up and by health reporting).
    async fn ping(&self) -> Result<(), StateError> {
        Ok(())
    }
}
