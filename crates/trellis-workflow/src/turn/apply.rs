//! A worker's answer to a turn, applied: each action becomes the history event it stands
//! for (with the action's id) and the work it starts elsewhere (an activity to queue, a
//! timer in the inbox, a message or a new instance), all in one [`TurnCommit`].

use trellis_proto::durabletask::history_event::EventType;
use trellis_proto::durabletask::workflow_action::WorkflowActionType;
use trellis_proto::durabletask::{
    ActivityRequest, ChildWorkflowInstanceCompletedEvent, ChildWorkflowInstanceCreatedEvent,
    ChildWorkflowInstanceFailedEvent, DetachedWorkflowInstanceCreatedEvent, EventRaisedEvent,
    EventSentEvent, ExecutionCompletedEvent, ExecutionStalledEvent, ExecutionTerminatedEvent,
    HistoryEvent, ParentInstanceInfo, StalledReason, TaskFailureDetails, TaskScheduledEvent,
    TimerCreatedEvent, TimerFiredEvent, WorkflowInstance, WorkflowResponse, create_timer_action,
    timer_created_event,
};

use super::{Seen, Turn, base_commit, parent_message};
use crate::events::{self, Start};
use crate::store::{ActivityTask, InstanceMeta, Message, NewInstance, TurnCommit};
use crate::{Millis, Status, ids};

/// Builds the commit of a turn that ran: the new events it was given (`new_events`, the
/// inbox entries `taken`), then what `response`'s actions stand for.
pub fn apply(
    meta: &InstanceMeta,
    turn: Turn,
    response: WorkflowResponse,
    now: Millis,
) -> TurnCommit {
    let Turn {
        new_events,
        taken,
        suspended,
        seen,
    } = turn;
    let mut commit = base_commit(meta);
    commit.consumed = taken;
    commit.append = new_events;
    commit.update.status = Some(if suspended {
        Status::Suspended
    } else {
        Status::Running
    });
    commit.update.custom_status = Some(response.custom_status);
    if meta.status == Status::Pending {
        // The first turn: the instance's input is the start event's.
        commit.update.input = Some(seen.started.as_ref().and_then(|s| s.input.clone()));
    }
    let own_app = meta.app_id.clone();
    for action in response.actions {
        let id = action.id;
        if id >= 0
            && let Some(existing) = seen.ids.get(&id)
        {
            let message = format!(
                "non-deterministic workflow: action {id} ({}) does not match history event {id} ({existing})",
                events::action_name(&action)
            );
            fail(
                &mut commit,
                meta,
                &seen,
                now,
                "NonDeterminismError",
                message,
            );
            return commit;
        }
        let target = events::target_app(action.router.as_ref());
        let with_id = |kind: EventType| {
            let mut event = events::event(now, kind);
            event.event_id = id;
            event.router = action.router.clone();
            event
        };
        let Some(kind) = action.workflow_action_type.clone() else {
            continue;
        };
        match kind {
            WorkflowActionType::ScheduleTask(task) => {
                commit
                    .append
                    .push(with_id(EventType::TaskScheduled(TaskScheduledEvent {
                        name: task.name.clone(),
                        version: task.version.clone(),
                        input: task.input.clone(),
                        parent_trace_context: None,
                        task_execution_id: task.task_execution_id.clone(),
                        rerun_parent_instance_info: None,
                        history_propagation_scope: None,
                    })));
                commit.activities.push(ActivityTask {
                    app_id: target.unwrap_or_else(|| own_app.clone()),
                    workflow_app_id: own_app.clone(),
                    request: ActivityRequest {
                        name: task.name,
                        version: task.version,
                        input: task.input,
                        workflow_instance: Some(WorkflowInstance {
                            instance_id: meta.instance_id.clone(),
                            execution_id: Some(meta.execution_id.clone()),
                        }),
                        task_id: id,
                        parent_trace_context: None,
                        task_execution_id: task.task_execution_id,
                        propagated_history: None,
                    },
                });
            }
            WorkflowActionType::CreateTimer(timer) => {
                let fire_at = timer.fire_at.unwrap_or_else(|| events::timestamp(now));
                commit
                    .append
                    .push(with_id(EventType::TimerCreated(TimerCreatedEvent {
                        fire_at: Some(fire_at),
                        name: timer.name,
                        rerun_parent_instance_info: None,
                        origin: timer.origin.map(timer_origin),
                    })));
                commit.messages.push(Message {
                    app_id: own_app.clone(),
                    instance_id: meta.instance_id.clone(),
                    execution_id: Some(meta.execution_id.clone()),
                    event: events::event(
                        now,
                        EventType::TimerFired(TimerFiredEvent {
                            fire_at: Some(fire_at),
                            timer_id: id,
                        }),
                    ),
                    visible_at: events::millis(&fire_at),
                });
            }
            WorkflowActionType::SendEvent(send) => {
                let to = send.instance.map(|i| i.instance_id).unwrap_or_default();
                commit
                    .append
                    .push(with_id(EventType::EventSent(EventSentEvent {
                        instance_id: to.clone(),
                        name: send.name.clone(),
                        input: send.data.clone(),
                    })));
                commit.messages.push(Message {
                    app_id: target.unwrap_or_else(|| own_app.clone()),
                    instance_id: to,
                    execution_id: None,
                    event: events::event(
                        now,
                        EventType::EventRaised(EventRaisedEvent {
                            name: send.name,
                            input: send.data,
                        }),
                    ),
                    visible_at: now,
                });
            }
            WorkflowActionType::CreateChildWorkflow(child) => {
                let child_id = if child.instance_id.is_empty() {
                    ids::random()
                } else {
                    child.instance_id.clone()
                };
                commit
                    .append
                    .push(with_id(EventType::ChildWorkflowInstanceCreated(
                        ChildWorkflowInstanceCreatedEvent {
                            instance_id: child_id.clone(),
                            name: child.name.clone(),
                            version: child.version.clone(),
                            input: child.input.clone(),
                            ..ChildWorkflowInstanceCreatedEvent::default()
                        },
                    )));
                commit.new_instances.push(NewInstance {
                    app_id: target.unwrap_or_else(|| own_app.clone()),
                    start: Start {
                        name: child.name,
                        instance_id: child_id,
                        execution_id: ids::random(),
                        input: child.input,
                        scheduled_start: None,
                        parent: Some(ParentInstanceInfo {
                            task_scheduled_id: id,
                            name: Some(meta.name.clone()),
                            version: None,
                            workflow_instance: Some(WorkflowInstance {
                                instance_id: meta.instance_id.clone(),
                                execution_id: Some(meta.execution_id.clone()),
                            }),
                            app_id: Some(own_app.clone()),
                            app_namespace: None,
                        }),
                        tags: Default::default(),
                    },
                    parent_app_id: Some(own_app.clone()),
                });
            }
            WorkflowActionType::CreateDetachedWorkflow(detached) => {
                let child_id = if detached.instance_id.is_empty() {
                    ids::random()
                } else {
                    detached.instance_id.clone()
                };
                commit
                    .append
                    .push(with_id(EventType::DetachedWorkflowInstanceCreated(
                        DetachedWorkflowInstanceCreatedEvent {
                            instance_id: child_id.clone(),
                        },
                    )));
                commit.new_instances.push(NewInstance {
                    app_id: target.unwrap_or_else(|| own_app.clone()),
                    start: Start {
                        name: detached.name,
                        instance_id: child_id,
                        execution_id: detached.execution_id.unwrap_or_else(ids::random),
                        input: detached.input,
                        scheduled_start: detached
                            .scheduled_start_timestamp
                            .as_ref()
                            .map(events::millis),
                        parent: None,
                        tags: detached.tags,
                    },
                    parent_app_id: None,
                });
            }
            WorkflowActionType::TerminateWorkflow(t) => {
                commit.messages.push(Message {
                    app_id: target.unwrap_or_else(|| own_app.clone()),
                    instance_id: t.instance_id,
                    execution_id: None,
                    event: events::event(
                        now,
                        EventType::ExecutionTerminated(ExecutionTerminatedEvent {
                            input: t.reason,
                            recurse: t.recurse,
                        }),
                    ),
                    visible_at: now,
                });
            }
            WorkflowActionType::CompleteWorkflow(done) => {
                let status = Status::try_from(done.workflow_status).unwrap_or(Status::Failed);
                if status == Status::ContinuedAsNew {
                    continue_as_new(
                        &mut commit,
                        meta,
                        &seen,
                        done.result,
                        done.carryover_events,
                        now,
                    );
                    return commit;
                }
                let mut event = with_id(EventType::ExecutionCompleted(ExecutionCompletedEvent {
                    workflow_status: status as i32,
                    result: done.result.clone(),
                    failure_details: done.failure_details.clone(),
                }));
                event.router = None;
                commit.append.push(event);
                finish(
                    &mut commit,
                    meta,
                    &seen,
                    now,
                    status,
                    done.result,
                    done.failure_details,
                );
                return commit;
            }
            WorkflowActionType::WorkflowVersionNotAvailable(_) => {
                commit.append.push(with_id(EventType::ExecutionStalled(
                    ExecutionStalledEvent {
                        reason: StalledReason::VersionNotAvailable as i32,
                        description: Some("the worker has no version of this workflow".into()),
                    },
                )));
                commit.update.status = Some(Status::Stalled);
                return commit;
            }
        }
    }
    commit
}

fn timer_origin(origin: create_timer_action::Origin) -> timer_created_event::Origin {
    use create_timer_action::Origin as A;
    use timer_created_event::Origin as E;
    match origin {
        A::CreateTimer(o) => E::CreateTimer(o),
        A::ExternalEvent(o) => E::ExternalEvent(o),
        A::ActivityRetry(o) => E::ActivityRetry(o),
        A::ChildWorkflowRetry(o) => E::ChildWorkflowRetry(o),
    }
}

/// Ends the instance with `status` (completed, failed...) and tells its parent.
fn finish(
    commit: &mut TurnCommit,
    meta: &InstanceMeta,
    seen: &Seen,
    now: Millis,
    status: Status,
    result: Option<String>,
    failure: Option<TaskFailureDetails>,
) {
    commit.update.status = Some(status);
    commit.update.output = Some(result.clone());
    commit.update.failure = Some(failure.clone());
    commit.update.completed_at = Some(Some(now));
    let answer = if status == Status::Completed {
        EventType::ChildWorkflowInstanceCompleted(ChildWorkflowInstanceCompletedEvent {
            task_scheduled_id: 0,
            result,
            attestation: None,
            signer_certificate: None,
        })
    } else {
        EventType::ChildWorkflowInstanceFailed(ChildWorkflowInstanceFailedEvent {
            task_scheduled_id: 0,
            failure_details: Some(failure.unwrap_or_else(|| TaskFailureDetails {
                error_type: "WorkflowFailed".into(),
                error_message: format!(
                    "child workflow {} ended {}",
                    meta.instance_id,
                    status.as_str_name()
                ),
                ..TaskFailureDetails::default()
            })),
            attestation: None,
            signer_certificate: None,
        })
    };
    if let Some(message) = parent_message(meta, seen, now, answer) {
        commit.messages.push(message);
    }
}

/// Fails the instance because of what the worker answered.
fn fail(
    commit: &mut TurnCommit,
    meta: &InstanceMeta,
    seen: &Seen,
    now: Millis,
    error_type: &str,
    message: String,
) {
    tracing::warn!(
        instance = meta.instance_id,
        reason = message,
        "workflow failed"
    );
    let failure = TaskFailureDetails {
        error_type: error_type.into(),
        error_message: message,
        ..TaskFailureDetails::default()
    };
    commit.append.push(events::event(
        now,
        EventType::ExecutionCompleted(ExecutionCompletedEvent {
            workflow_status: Status::Failed as i32,
            result: None,
            failure_details: Some(failure.clone()),
        }),
    ));
    commit.activities.clear();
    commit.messages.clear();
    commit.new_instances.clear();
    finish(commit, meta, seen, now, Status::Failed, None, Some(failure));
}

/// Continue-as-new: the history starts over with a new execution, whose start (with the
/// new input) and the carried-over events go to the inbox for the next turn.
fn continue_as_new(
    commit: &mut TurnCommit,
    meta: &InstanceMeta,
    seen: &Seen,
    input: Option<String>,
    carryover: Vec<HistoryEvent>,
    now: Millis,
) {
    let execution_id = ids::random();
    let start = Start {
        name: meta.name.clone(),
        instance_id: meta.instance_id.clone(),
        execution_id: execution_id.clone(),
        input: input.clone(),
        scheduled_start: None,
        parent: seen
            .started
            .as_ref()
            .and_then(|s| s.parent_instance.clone()),
        tags: seen
            .started
            .as_ref()
            .map(|s| s.tags.clone())
            .unwrap_or_default(),
    };
    commit.reset_history = true;
    commit.append.clear();
    commit.activities.clear();
    commit.new_instances.clear();
    let message = |event: HistoryEvent| Message {
        app_id: meta.app_id.clone(),
        instance_id: meta.instance_id.clone(),
        execution_id: Some(execution_id.clone()),
        event,
        visible_at: now,
    };
    commit
        .messages
        .push(message(events::execution_started(now, &start)));
    commit.messages.extend(carryover.into_iter().map(message));
    commit.update.status = Some(Status::Running);
    commit.update.execution_id = Some(execution_id);
    commit.update.input = Some(input);
    commit.update.output = Some(None);
}
