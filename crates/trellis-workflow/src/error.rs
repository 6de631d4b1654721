//! The one error type of the workflow building block; the API layer maps each variant to
//! Dapr's error codes.

/// What can go wrong with a workflow operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    /// No instance has this id (in this app).
    #[error("no workflow instance with id {0:?}")]
    NotFound(String),
    /// An instance with this id exists and has not finished.
    #[error("a workflow instance with id {0:?} already exists and is not finished")]
    AlreadyExists(String),
    /// The instance id is empty, too long, or has characters outside `[A-Za-z0-9_-]`.
    #[error("{0}")]
    InvalidId(String),
    /// Refused because of the instance's state (e.g. purging one that still runs).
    #[error("{0}")]
    Refused(String),
    /// This sidecar no longer holds the lease it acted under (another took the instance
    /// over): what it wanted to commit is dropped, the other sidecar redoes it.
    #[error("the lease on workflow instance {0:?} was lost")]
    LeaseLost(String),
    /// The backend failed.
    #[error("workflow store: {0}")]
    Backend(String),
}
