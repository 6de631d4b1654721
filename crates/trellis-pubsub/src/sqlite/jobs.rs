//! The work queued to the broker's writer thread: a [`Job`] per publish, subscribe, fetch
//! and settlement, what a fetch leases ([`Fetched`], [`Leased`]), and the [`Answer`] a job
//! produced, held back until the transaction it ran in is over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::{PubSubError, PublishRequest};

pub(super) type Reply<T> = oneshot::Sender<Result<T, PubSubError>>;

pub(super) enum Job {
    Publish {
        msgs: Vec<PublishRequest>,
        reply: Reply<()>,
    },
    /// Creates the group when new; answers its row id.
    Subscribe {
        topic: String,
        group: String,
        replay: bool,
        reply: Reply<i64>,
    },
    Fetch {
        group: i64,
        topic: Arc<str>,
        max: usize,
        reply: Reply<Fetched>,
    },
    Ack {
        group: i64,
        msg: i64,
        reply: Option<Reply<()>>,
    },
    /// Makes a delivery visible again after `after`, if it is still the lease `attempt`
    /// (a holder whose lease ran out and was re-leased must not move the new lease).
    Nack {
        group: i64,
        topic: Arc<str>,
        msg: i64,
        attempt: u32,
        after: Duration,
        reply: Option<Reply<()>>,
    },
    /// Gives back leased messages that were never handed to the application: visible at
    /// once, and the attempt undone, since they were not delivered.
    Release {
        group: i64,
        topic: Arc<str>,
        items: Vec<(i64, u32)>,
        reply: Option<Reply<()>>,
    },
    Ping {
        reply: Reply<()>,
    },
}

impl Job {
    /// Whether the caller stopped waiting for a job whose only point is the answer (a
    /// publish whose caller timed out and reported failure, a fetch nobody will read):
    /// such a job is skipped. Settlements are applied regardless.
    pub(super) fn abandoned(&self) -> bool {
        match self {
            Job::Publish { reply, .. } => reply.is_closed(),
            Job::Subscribe { reply, .. } => reply.is_closed(),
            Job::Fetch { reply, .. } => reply.is_closed(),
            Job::Ping { reply } => reply.is_closed(),
            Job::Ack { .. } | Job::Nack { .. } | Job::Release { .. } => false,
        }
    }

    /// Whether the job writes with at most one statement, which SQLite undoes by itself
    /// when it fails: such a job needs no savepoint of its own.
    pub(super) fn single_statement(&self) -> bool {
        match self {
            Job::Publish { msgs, .. } => msgs.len() <= 1,
            Job::Release { items, .. } => items.len() <= 1,
            Job::Ack { .. } | Job::Nack { .. } | Job::Ping { .. } => true,
            Job::Subscribe { .. } | Job::Fetch { .. } => false,
        }
    }

    pub(super) fn messages(&self) -> usize {
        match self {
            Job::Publish { msgs, .. } => msgs.len(),
            _ => 1,
        }
    }

    pub(super) fn fail(self, msg: &str) {
        fn err<T>(msg: &str) -> Result<T, PubSubError> {
            Err(PubSubError::Backend(msg.to_string()))
        }
        match self {
            Job::Publish { reply, .. } | Job::Ping { reply } => drop(reply.send(err(msg))),
            Job::Subscribe { reply, .. } => drop(reply.send(err(msg))),
            Job::Fetch { reply, .. } => drop(reply.send(err(msg))),
            Job::Ack { reply, .. } | Job::Nack { reply, .. } | Job::Release { reply, .. } => {
                if let Some(reply) = reply {
                    drop(reply.send(err(msg)));
                }
            }
        }
    }
}

/// What one fetch leased.
#[derive(Debug, Default)]
pub(super) struct Fetched {
    pub(super) items: Vec<Leased>,
    /// When the group's next in-flight message becomes visible (a lease running out, a
    /// nack's delay ending); "now" when more messages are waiting than were fetched.
    pub(super) next_visible: Option<i64>,
}

#[derive(Debug)]
pub(super) struct Leased {
    pub(super) id: i64,
    pub(super) attempt: u32,
    pub(super) lease_until: i64,
    pub(super) topic: Arc<str>,
    pub(super) data: Bytes,
    pub(super) content_type: Option<String>,
    pub(super) metadata: BTreeMap<String, String>,
    pub(super) published_at: i64,
}

/// An answer held back until the transaction that produced it has committed.
pub(super) enum Answer {
    Unit(Option<Reply<()>>, Result<(), PubSubError>),
    Group(Reply<i64>, Result<i64, PubSubError>),
    Fetch(i64, Arc<str>, Reply<Fetched>, Result<Fetched, PubSubError>),
}

impl Answer {
    /// The error the answer carries, if its job failed.
    pub(super) fn error(&self) -> Option<&PubSubError> {
        match self {
            Answer::Unit(_, Err(e)) => Some(e),
            Answer::Group(_, Err(e)) => Some(e),
            Answer::Fetch(_, _, _, Err(e)) => Some(e),
            _ => None,
        }
    }
}
