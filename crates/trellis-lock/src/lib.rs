//! The distributed lock building block: the [`LockStore`] trait, its backends and their
//! conformance suite.
//!
//! A lock is a lease: `try_lock` gives a resource to one owner for a while (its expiry),
//! nobody else gets it until the owner unlocks it or the lease runs out, and then the next
//! `try_lock` takes it over. Each successful acquisition comes with a fencing token, a
//! number that grows with every acquisition, so that whatever the lock guards can refuse a
//! holder whose lease has already passed to someone else (see docs/lock-stores.md).
//!
//! Backends, each behind its cargo feature:
//! - [`sqlite`] (`lock.sqlite`): the embedded store, one file shared by every `trellis`
//!   process on the machine;
//! - [`redis`] (`lock.redis`): Dapr's own, `SET NX PX` and a compare-and-delete script;
//! - [`postgres`] (`lock.postgresql`): a table, one statement per operation.

use std::time::Duration;

use async_trait::async_trait;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use trellis_core::{Metadata, MetadataError};

/// What `try_lock` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryLock {
    /// The caller holds the lock now; the fencing token is larger than every token handed
    /// out for the resource before.
    Acquired { fencing_token: u64 },
    /// Somebody (maybe the caller itself) holds an unexpired lease.
    Held,
}

impl TryLock {
    pub fn acquired(&self) -> bool {
        matches!(self, TryLock::Acquired { .. })
    }
}

/// What `unlock` answers, as Dapr's `UnlockResponse.Status` (a failure is an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnlockStatus {
    Success,
    /// Nobody holds the resource (never locked, unlocked, or its lease ran out).
    LockDoesNotExist,
    /// Another owner holds it (possibly after taking over the caller's expired lease).
    LockBelongsToOthers,
}

/// A lock store.
#[async_trait]
pub trait LockStore: Send + Sync + std::fmt::Debug {
    /// Gives `resource` to `owner` for `expiry` unless somebody holds an unexpired lease on
    /// it. Empty names and a zero expiry are [`LockError::InvalidRequest`].
    async fn try_lock(
        &self,
        resource: &str,
        owner: &str,
        expiry: Duration,
    ) -> Result<TryLock, LockError>;

    /// Releases `resource` if `owner` holds it.
    async fn unlock(&self, resource: &str, owner: &str) -> Result<UnlockStatus, LockError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// The store failed or is unreachable; the text is the backend's.
    #[error("{0}")]
    Backend(String),
    /// The request or the component's settings are unusable.
    #[error("{0}")]
    InvalidRequest(String),
}

impl LockError {
    pub fn backend(e: impl std::fmt::Display) -> Self {
        LockError::Backend(e.to_string())
    }
}

/// A component setting that cannot be used is an unusable request to open it.
impl From<MetadataError> for LockError {
    fn from(err: MetadataError) -> Self {
        LockError::InvalidRequest(err.to_string())
    }
}

/// Checks what every backend requires of a request.
pub fn validate(resource: &str, owner: &str, expiry: Option<Duration>) -> Result<(), LockError> {
    if resource.is_empty() {
        return Err(LockError::InvalidRequest("resource id is empty".into()));
    }
    if owner.is_empty() {
        return Err(LockError::InvalidRequest("lock owner is empty".into()));
    }
    if expiry.is_some_and(|e| e.is_zero()) {
        return Err(LockError::InvalidRequest("expiry is not positive".into()));
    }
    Ok(())
}

/// Whether `name` can go into SQL as a table name: letters, digits and `_`, optionally
/// `schema.table`.
#[cfg(feature = "postgres")]
fn valid_table(name: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && !p.starts_with(|c: char| c.is_ascii_digit())
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match name.split_once('.') {
        Some((schema, table)) => part(schema) && part(table),
        None => part(name),
    }
}

/// Milliseconds of a lease, at least one.
#[cfg(any(feature = "sqlite", feature = "redis", feature = "postgres"))]
fn expiry_ms(expiry: Duration) -> i64 {
    i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX).max(1)
}
