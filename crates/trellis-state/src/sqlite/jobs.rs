//! The work the store's threads do: a [`Job`] per request, queued to the writer or the
//! readers, and the [`Answer`] it produced, held back until the transaction it ran in is
//! over.

use tokio::sync::oneshot;

use crate::query::{Query, QueryResponse};
use crate::{Item, Operation, StateError};

pub(super) type Reply<T> = oneshot::Sender<Result<T, StateError>>;

pub(super) enum Job {
    /// One set or delete, or a transaction (`atomic`).
    Write {
        ops: Vec<Operation>,
        atomic: bool,
        reply: Reply<()>,
    },
    Get {
        keys: Vec<String>,
        reply: Reply<Vec<Option<Item>>>,
    },
    Query {
        prefix: String,
        query: Box<Query>,
        reply: Reply<QueryResponse>,
    },
}

impl Job {
    /// Whether the caller stopped waiting (timed out, or its request was dropped): such a
    /// job is skipped instead of done for nobody.
    pub(super) fn abandoned(&self) -> bool {
        match self {
            Job::Write { reply, .. } => reply.is_closed(),
            Job::Get { reply, .. } => reply.is_closed(),
            Job::Query { reply, .. } => reply.is_closed(),
        }
    }

    /// Answers a job that was never done.
    pub(super) fn fail(self, msg: &str) {
        let err = || StateError::Backend(msg.to_string());
        match self {
            Job::Write { reply, .. } => drop(reply.send(Err(err()))),
            Job::Get { reply, .. } => drop(reply.send(Err(err()))),
            Job::Query { reply, .. } => drop(reply.send(Err(err()))),
        }
    }
}

/// An answer held back until the transaction that produced it is over.
pub(super) enum Answer {
    Write(Reply<()>, Result<(), StateError>),
    Get(
        Reply<Vec<Option<Item>>>,
        Result<Vec<Option<Item>>, StateError>,
    ),
    Query(Reply<QueryResponse>, Result<QueryResponse, StateError>),
}

impl Answer {
    pub(super) fn send(self) {
        // A caller that stopped waiting is no error.
        match self {
            Answer::Write(tx, r) => drop(tx.send(r)),
            Answer::Get(tx, r) => drop(tx.send(r)),
            Answer::Query(tx, r) => drop(tx.send(r)),
        }
    }

    /// The transaction did not commit: whatever this answer said, it did not happen.
    pub(super) fn fail(self, msg: &str) -> Self {
        let err = || StateError::Backend(msg.to_string());
        match self {
            Answer::Write(tx, _) => Answer::Write(tx, Err(err())),
            Answer::Get(tx, _) => Answer::Get(tx, Err(err())),
            Answer::Query(tx, _) => Answer::Query(tx, Err(err())),
        }
    }

    /// The error the answer carries, if its job failed.
    pub(super) fn error(&self) -> Option<&StateError> {
        match self {
            Answer::Write(_, Err(e)) | Answer::Get(_, Err(e)) | Answer::Query(_, Err(e)) => Some(e),
            _ => None,
        }
    }
}
