//! The [`JobStore`] trait: jobs by app and name with their progress, and the lease that
//! lets one of several sidecars of an app trigger a due tick.
//!
//! Each job row keeps the app's definition ([`JobSpec`]), when it next becomes due
//! (`due_at`: the tick's time, a retry's time, or while leased the lease's end), which
//! tick it is on, how many ticks are done, how many attempts the current tick failed, and
//! a version that changes whenever the job is scheduled anew. Leasing takes the due rows
//! no one holds; settling records a leased tick's outcome only while the lease is still
//! the caller's and the job was not replaced or deleted meanwhile. So replicas share the
//! work, each tick is triggered once between them, and a sidecar that dies mid-trigger
//! leaves its tick to the others once the lease runs out.
//!
//! Every job belongs to an app (`<namespace>||<app-id>`): one app never sees another's
//! jobs.

use async_trait::async_trait;

use crate::schedule::Timing;
use crate::{FailurePolicy, JobError, JobSpec, Millis};

/// A stored job and its progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredJob {
    pub app: String,
    pub spec: JobSpec,
    /// When no tick may fire any more (`ttl`).
    pub expires: Option<Millis>,
    /// The scheduled time of the current tick.
    pub tick: Millis,
    /// When the job can next be leased.
    pub due_at: Millis,
    /// Ticks done.
    pub count: u32,
    /// Failed attempts of the current tick.
    pub attempts: u32,
    /// Changes whenever the job is scheduled anew.
    pub version: i64,
}

/// What became of a leased tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Go on: the current tick is `tick`, due at `due_at`, with `count` ticks done and
    /// `attempts` failed attempts of this one.
    Next {
        tick: Millis,
        due_at: Millis,
        count: u32,
        attempts: u32,
    },
    /// The job is finished: delete it.
    Finish,
}

/// A job store.
#[async_trait]
pub trait JobStore: Send + Sync + std::fmt::Debug {
    /// Stores a new job of `app` with its timing, due at `timing.first`. A job of that name
    /// is [`JobError::AlreadyExists`] unless `overwrite`, which replaces it and its
    /// progress (a lease on the old one no longer settles anything).
    async fn put(
        &self,
        app: &str,
        spec: &JobSpec,
        timing: Timing,
        overwrite: bool,
    ) -> Result<(), JobError>;

    /// The job, if it exists.
    async fn get(&self, app: &str, name: &str) -> Result<Option<StoredJob>, JobError>;

    /// Deletes the job; whether it existed.
    async fn delete(&self, app: &str, name: &str) -> Result<bool, JobError>;

    /// Deletes every job of `app` whose name starts with `prefix` (all of them when it is
    /// empty); how many.
    async fn delete_prefix(&self, app: &str, prefix: &str) -> Result<u64, JobError>;

    /// Every job of `app`, by name.
    async fn list(&self, app: &str) -> Result<Vec<StoredJob>, JobError>;

    /// Leases up to `max` jobs of `app` due at `now` that nobody holds, to `owner` until
    /// `until`; earliest first.
    async fn lease_due(
        &self,
        app: &str,
        owner: &str,
        now: Millis,
        until: Millis,
        max: usize,
    ) -> Result<Vec<StoredJob>, JobError>;

    /// Records a leased tick's outcome and releases the lease; `false` (and nothing
    /// changed) when `owner` no longer holds the lease on version `version` of the job.
    async fn settle(
        &self,
        app: &str,
        name: &str,
        owner: &str,
        version: i64,
        outcome: Settle,
    ) -> Result<bool, JobError>;

    /// When a job of `app` can next be leased (the earliest `due_at`), if there is one.
    async fn next_due(&self, app: &str) -> Result<Option<Millis>, JobError>;
}

/// A fresh version number for a job scheduled anew.
pub fn new_version() -> i64 {
    let (hi, _) = uuid::Uuid::new_v4().as_u64_pair();
    (hi >> 1) as i64
}

/// The failure policy as one column: `drop`, or `constant:<interval ms>:<max retries>`
/// (empty for unlimited).
pub fn policy_text(p: &FailurePolicy) -> String {
    match p {
        FailurePolicy::Drop => "drop".to_string(),
        FailurePolicy::Constant {
            interval,
            max_retries,
        } => format!(
            "constant:{}:{}",
            interval.as_millis(),
            max_retries.map(|m| m.to_string()).unwrap_or_default()
        ),
    }
}

/// Reads [`policy_text`] back; anything unreadable is the default policy.
pub fn policy_of(text: &str) -> FailurePolicy {
    if text == "drop" {
        return FailurePolicy::Drop;
    }
    let mut parts = text.split(':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("constant"), Some(ms), Some(max)) => FailurePolicy::Constant {
            interval: std::time::Duration::from_millis(ms.parse().unwrap_or(1000)),
            max_retries: max.parse().ok(),
        },
        _ => FailurePolicy::default(),
    }
}

/// The same columns, in this order, for both SQL backends' rows.
pub const COLUMNS: &str = "app, name, schedule, repeats, due_time, ttl, data_type, data, policy, \
     expires_at, tick_at, due_at, count, attempts, version";

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn policies_round_trip_through_their_column() {
        for p in [
            FailurePolicy::Drop,
            FailurePolicy::default(),
            FailurePolicy::Constant {
                interval: Duration::from_millis(250),
                max_retries: None,
            },
        ] {
            assert_eq!(policy_of(&policy_text(&p)), p);
        }
        assert!(new_version() >= 0);
    }
}
