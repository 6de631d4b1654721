//! The jobs (scheduler) building block: jobs an app schedules for later, triggered back to
//! that app at their times.
//!
//! - [`schedule`]: what a job's fields mean in time (cron with seconds, `@every`, the
//!   `@daily` family, due times and TTLs as RFC 3339, Go or ISO 8601 durations, repeats)
//!   and the one rule for a job's next trigger, as pure functions.
//! - [`store`]: the [`JobStore`] trait: jobs by app and name, with their progress, leased
//!   out when due so that several sidecars of one app trigger each tick once between them.
//! - [`sqlite`] (`scheduler.sqlite`, the embedded default on `<data-dir>/jobs.db`) and
//!   [`postgres`] (`scheduler.postgresql`), each behind its feature.
//! - [`scheduler`]: one sidecar's scheduler: sleeps until the earliest due job (woken early
//!   by a local change, and every `poll` for other processes' changes), leases what is due,
//!   triggers it through a [`Trigger`] and records the outcome by the failure policy.
//!
//! The crate knows nothing of Dapr's wire formats: a job's data is an opaque
//! [`JobData`] (a protobuf `Any`'s type URL and bytes), which the API layer fills and reads.

use std::time::Duration;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod schedule;
pub mod scheduler;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod store;

pub use scheduler::{Scheduler, SchedulerOptions, Trigger, TriggerOutcome};
pub use store::{JobStore, Settle, StoredJob};
pub use trellis_core::{Metadata, MetadataError};

/// Milliseconds since the Unix epoch: every time the store keeps.
pub type Millis = i64;

/// The current time in [`Millis`].
pub fn now_ms() -> Millis {
    trellis_core::time::now_ms()
}

/// A job's payload, as the API layer encoded it: a type URL and bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobData {
    pub type_url: String,
    pub value: Vec<u8>,
}

/// What happens when the app fails a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// The tick is dropped; the job goes on with its next one.
    Drop,
    /// The tick is tried again `interval` later, at most `max_retries` times (for ever when
    /// `None`), then dropped.
    Constant {
        interval: Duration,
        max_retries: Option<u32>,
    },
}

impl Default for FailurePolicy {
    /// Dapr's default: three retries, one second apart.
    fn default() -> Self {
        FailurePolicy::Constant {
            interval: Duration::from_secs(1),
            max_retries: Some(3),
        }
    }
}

/// A job as the app defined it; the times are kept as written, as `GET` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobSpec {
    pub name: String,
    pub schedule: Option<String>,
    pub repeats: Option<u32>,
    pub due_time: Option<String>,
    pub ttl: Option<String>,
    pub data: Option<JobData>,
    pub failure_policy: FailurePolicy,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The job cannot be scheduled as defined; the text names the field.
    #[error("{0}")]
    Invalid(String),
    /// A job of that name exists and the request did not ask to overwrite it.
    #[error("job {0:?} already exists")]
    AlreadyExists(String),
    /// The store failed or is unreachable; the text is the backend's.
    #[error("{0}")]
    Backend(String),
}

impl JobError {
    pub fn backend(e: impl std::fmt::Display) -> Self {
        JobError::Backend(e.to_string())
    }
}

impl From<MetadataError> for JobError {
    fn from(err: MetadataError) -> Self {
        JobError::Invalid(err.to_string())
    }
}

/// Checks a job name: not empty, and of the characters Dapr's scheduler accepts (letters,
/// digits, `-`, `_`, `.`, `:`, space and `||`), so never a `/`.
pub fn validate_name(name: &str) -> Result<(), JobError> {
    if name.is_empty() {
        return Err(JobError::Invalid("job name is empty".into()));
    }
    let ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | ' ' | '|'));
    if !ok || name.len() > 253 {
        return Err(JobError::Invalid(format!(
            "job name {name:?} is invalid: use letters, digits, '-', '_', '.', ':' and spaces, at most 253 characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_a_slash_or_empty_are_refused() {
        assert!(validate_name("").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("../x").is_err());
        assert!(validate_name("job-1_x.y:z").is_ok());
    }
}
