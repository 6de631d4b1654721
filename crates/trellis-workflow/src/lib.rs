//! Durable workflows that the Dapr workflow SDKs run unchanged.
//!
//! The SDKs hold the workflow code; the sidecar holds the truth. A workflow advances in
//! *turns*: the sidecar hands a worker the instance's committed history and the events
//! that arrived since (its *inbox*), the worker replays the code over them and answers
//! with *actions* (run an activity, start a timer, complete...), and the sidecar commits
//! the new events those actions stand for, in one transaction, before anything else
//! happens. Everything a worker does is thus repeatable: a turn that was not committed is
//! simply run again, by the same worker or another.
//!
//! - [`turn`]: the rules of a turn, pure functions over events, unit-tested without I/O:
//!   which inbox events a turn takes, and what a worker's answer commits.
//! - [`store`]: the [`WorkflowStore`] trait a backend implements (instances, append-only
//!   history, inbox, activity queue, leases) and the records it keeps.
//! - [`sqlite`]: the embedded backend, one file shared by the processes on a machine.
//! - `postgres` (feature `postgres`): `workflowbackend.postgresql`, one database shared by
//!   sidecars on any number of machines.
//! - [`engine`]: one sidecar's dispatcher: leases ready work from the store, hands it to
//!   the connected SDK workers, commits their answers, redrives what a lost worker held.
//! - [`conformance`]: the suite every backend passes.
//!
//! The history events, actions and work items are the durabletask protocol's own
//! messages ([`trellis_proto::durabletask`]): they are this building block's data model,
//! stored as they travel, as a CloudEvent is the pub/sub block's.

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod engine;
mod error;
pub mod events;
pub mod ids;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
pub mod store;
pub mod turn;

pub use engine::{Engine, EngineOptions};
pub use error::WorkflowError;
pub use store::{InstanceMeta, WorkflowStore};
pub use trellis_core::{Metadata, MetadataError};
pub use trellis_proto::durabletask as proto;
pub use trellis_proto::durabletask::OrchestrationStatus as Status;

/// Milliseconds since the Unix epoch: the one clock of this crate's records.
pub type Millis = i64;

/// Now, as [`Millis`].
pub fn now_ms() -> Millis {
    trellis_core::time::now_ms()
}
