//! The rules of a turn, as pure functions: [`plan`] decides what a leased instance's turn
//! takes from its inbox and whether a worker must run it, [`apply`] turns the worker's
//! answer into the [`TurnCommit`] the store applies in one transaction.
//!
//! The rules follow durabletask's, which the SDKs replay against:
//! - each turn that runs the workflow opens with a `WorkflowStarted` event (its time is
//!   the workflow's clock), followed by the inbox events it takes, then the events the
//!   worker's actions stand for, whose ids are the actions' ids;
//! - an answer (activity result, timer, child completion) is taken once: a second one for
//!   the same task is a duplicate (activities run at least once) and is dropped, as is
//!   one for an execution that has since continued as new;
//! - terminate, suspend and resume need no worker; events that arrive while an instance is
//!   suspended (or before its scheduled start) wait in the inbox;
//! - a finished instance drops whatever still arrives.

mod apply;
mod seen;
#[cfg(test)]
mod tests;

pub use apply::apply;
pub use seen::{Child, Seen};

use trellis_proto::durabletask::history_event::EventType;
use trellis_proto::durabletask::{
    ChildWorkflowInstanceFailedEvent, ExecutionCompletedEvent, HistoryEvent, TaskFailureDetails,
};

use crate::events::{self, InboxKind};
use crate::store::{InstanceMeta, Message, MetaUpdate, TurnCommit, WorkflowLease, is_terminal};
use crate::{Millis, Status};

/// What a turn does with a leased instance.
#[derive(Debug)]
pub enum Plan {
    /// Hand the worker the history and the turn's new events.
    Run(Turn),
    /// Commit this without a worker (terminate, suspend/resume, dropped strays), or
    /// nothing at all when the commit is empty.
    Settle(TurnCommit),
}

/// A turn handed to a worker: what [`apply`] needs besides the worker's answer.
#[derive(Debug)]
pub struct Turn {
    /// The new events, `WorkflowStarted` first.
    pub new_events: Vec<HistoryEvent>,
    /// The inbox entries they came from, with the ones dropped.
    pub taken: Vec<i64>,
    /// Whether the instance is suspended once the new events are applied.
    pub suspended: bool,
    /// What the history and the new events hold, so that the answer is checked against
    /// them without reading the history again.
    pub seen: Seen,
}

/// Plans the turn of `lease` at `now`.
pub fn plan(lease: &WorkflowLease, now: Millis) -> Plan {
    let meta = &lease.meta;
    let mut seen = Seen::of(&lease.history);
    let mut started = seen.started.is_some();
    let mut suspended = meta.status == Status::Suspended;
    let terminal = is_terminal(meta.status);
    let mut kept: Vec<HistoryEvent> = Vec::new();
    let mut taken = Vec::new();
    let mut needs_worker = false;
    for item in &lease.inbox {
        if terminal {
            taken.push(item.id);
            continue;
        }
        if item
            .execution_id
            .as_deref()
            .is_some_and(|e| e != meta.execution_id)
        {
            // An answer to an execution that continued as new.
            taken.push(item.id);
            continue;
        }
        let kind = InboxKind::of(&item.event);
        if !kind.runnable(started, suspended) {
            continue;
        }
        taken.push(item.id);
        match &item.event.event_type {
            Some(EventType::ExecutionTerminated(t)) => {
                let every: Vec<i64> = lease.inbox.iter().map(|i| i.id).collect();
                return Plan::Settle(terminate(lease, &seen, item.event.clone(), t, every, now));
            }
            Some(EventType::ExecutionSuspended(_)) => {
                if started && !suspended {
                    suspended = true;
                    kept.push(item.event.clone());
                }
            }
            Some(EventType::ExecutionResumed(_)) => {
                if suspended {
                    suspended = false;
                    kept.push(item.event.clone());
                }
            }
            _ => {
                if seen.record(&item.event) {
                    started |=
                        matches!(item.event.event_type, Some(EventType::ExecutionStarted(_)));
                    needs_worker = true;
                    kept.push(item.event.clone());
                } else {
                    tracing::debug!(
                        instance = meta.instance_id,
                        event = events::event_name(&item.event),
                        "workflow: dropped a duplicate or stray event"
                    );
                }
            }
        }
    }
    if needs_worker {
        let mut new_events = Vec::with_capacity(kept.len() + 1);
        new_events.push(events::workflow_started(now));
        new_events.extend(kept);
        return Plan::Run(Turn {
            new_events,
            taken,
            suspended,
            seen,
        });
    }
    let mut commit = base_commit(&lease.meta);
    commit.consumed = taken;
    if !kept.is_empty() {
        commit.update.status = Some(if suspended {
            Status::Suspended
        } else {
            Status::Running
        });
        commit.append = kept;
    }
    Plan::Settle(commit)
}

/// A commit for `lease` that changes nothing yet.
fn base_commit(meta: &InstanceMeta) -> TurnCommit {
    TurnCommit {
        app_id: meta.app_id.clone(),
        instance_id: meta.instance_id.clone(),
        ..TurnCommit::default()
    }
}

/// Ends the instance as terminated; with `recurse`, terminates its running children too,
/// and tells its parent, if any, that it failed.
fn terminate(
    lease: &WorkflowLease,
    seen: &Seen,
    event: HistoryEvent,
    terminated: &trellis_proto::durabletask::ExecutionTerminatedEvent,
    taken: Vec<i64>,
    now: Millis,
) -> TurnCommit {
    let meta = &lease.meta;
    let mut commit = base_commit(&lease.meta);
    commit.consumed = taken;
    commit.append = vec![
        event,
        events::event(
            now,
            EventType::ExecutionCompleted(ExecutionCompletedEvent {
                workflow_status: Status::Terminated as i32,
                result: terminated.input.clone(),
                failure_details: None,
            }),
        ),
    ];
    commit.update = MetaUpdate {
        status: Some(Status::Terminated),
        output: Some(terminated.input.clone()),
        completed_at: Some(Some(now)),
        ..MetaUpdate::default()
    };
    if terminated.recurse {
        for child in seen.running_children() {
            commit.messages.push(Message {
                app_id: child.app_id.clone().unwrap_or_else(|| meta.app_id.clone()),
                instance_id: child.instance_id.clone(),
                execution_id: None,
                event: events::event(now, EventType::ExecutionTerminated(terminated.clone())),
                visible_at: now,
            });
        }
    }
    if let Some(to_parent) = parent_message(
        meta,
        seen,
        now,
        EventType::ChildWorkflowInstanceFailed(ChildWorkflowInstanceFailedEvent {
            task_scheduled_id: 0,
            failure_details: Some(TaskFailureDetails {
                error_type: "WorkflowTerminated".into(),
                error_message: format!("child workflow {} was terminated", meta.instance_id),
                ..TaskFailureDetails::default()
            }),
            attestation: None,
            signer_certificate: None,
        }),
    ) {
        commit.messages.push(to_parent);
    }
    commit
}

/// The message that tells a child's parent how it ended (`answer` with its
/// `taskScheduledId` filled in), if the instance has a parent.
fn parent_message(
    meta: &InstanceMeta,
    seen: &Seen,
    now: Millis,
    mut answer: EventType,
) -> Option<Message> {
    let parent = seen.started.as_ref()?.parent_instance.as_ref()?;
    let instance = parent.workflow_instance.as_ref()?;
    match &mut answer {
        EventType::ChildWorkflowInstanceCompleted(e) => {
            e.task_scheduled_id = parent.task_scheduled_id
        }
        EventType::ChildWorkflowInstanceFailed(e) => e.task_scheduled_id = parent.task_scheduled_id,
        _ => {}
    }
    Some(Message {
        app_id: parent
            .app_id
            .clone()
            .or_else(|| meta.parent_app_id.clone())
            .unwrap_or_else(|| meta.app_id.clone()),
        instance_id: instance.instance_id.clone(),
        execution_id: instance.execution_id.clone(),
        event: events::event(now, answer),
        visible_at: now,
    })
}
