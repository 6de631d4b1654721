//! Building and reading history events: timestamps, the constructors the engine and the
//! turn rules use, and the names of events and actions for messages.

use prost_types::Timestamp;
use trellis_proto::durabletask::history_event::EventType;
use trellis_proto::durabletask::workflow_action::WorkflowActionType;
use trellis_proto::durabletask::{
    ExecutionStartedEvent, HistoryEvent, ParentInstanceInfo, WorkflowAction, WorkflowInstance,
    WorkflowStartedEvent,
};

use crate::Millis;

/// A protobuf timestamp for `ms`.
pub fn timestamp(ms: Millis) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// `ts` as [`Millis`].
pub fn millis(ts: &Timestamp) -> Millis {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos) / 1_000_000)
}

/// An event without an id of its own (ids belong to events that actions made).
pub fn event(at: Millis, kind: EventType) -> HistoryEvent {
    HistoryEvent {
        event_id: -1,
        timestamp: Some(timestamp(at)),
        event_type: Some(kind),
        router: None,
    }
}

/// The `WorkflowStarted` event that opens every turn; its time is the workflow's "now"
/// during the turn, so it is kept in history for replays to see the same time.
pub fn workflow_started(at: Millis) -> HistoryEvent {
    event(
        at,
        EventType::WorkflowStarted(WorkflowStartedEvent { version: None }),
    )
}

/// What starts an execution: its name, input and (for a child) its parent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Start {
    pub name: String,
    pub instance_id: String,
    pub execution_id: String,
    pub input: Option<String>,
    pub scheduled_start: Option<Millis>,
    pub parent: Option<ParentInstanceInfo>,
    pub tags: std::collections::HashMap<String, String>,
}

/// The `ExecutionStarted` event of `start`.
pub fn execution_started(at: Millis, start: &Start) -> HistoryEvent {
    event(
        at,
        EventType::ExecutionStarted(ExecutionStartedEvent {
            name: start.name.clone(),
            version: None,
            input: start.input.clone(),
            workflow_instance: Some(WorkflowInstance {
                instance_id: start.instance_id.clone(),
                execution_id: Some(start.execution_id.clone()),
            }),
            parent_instance: start.parent.clone(),
            scheduled_start_timestamp: start.scheduled_start.map(timestamp),
            parent_trace_context: None,
            workflow_span_id: None,
            tags: start.tags.clone(),
        }),
    )
}

/// How the inbox treats an event: whether it may run while the instance is suspended or
/// before it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxKind {
    /// Waits for the instance to have started and not be suspended.
    Normal = 0,
    /// Terminate, suspend, resume: taken whatever the instance's state.
    Control = 1,
    /// `ExecutionStarted`: taken unless the instance is suspended.
    Start = 2,
}

impl InboxKind {
    pub fn of(event: &HistoryEvent) -> InboxKind {
        match event.event_type {
            Some(
                EventType::ExecutionTerminated(_)
                | EventType::ExecutionSuspended(_)
                | EventType::ExecutionResumed(_),
            ) => InboxKind::Control,
            Some(EventType::ExecutionStarted(_)) => InboxKind::Start,
            _ => InboxKind::Normal,
        }
    }

    /// Whether an event of this kind can be taken now. The SQL of the backends mirrors
    /// this rule to know when an instance is ready; keep them in step.
    pub fn runnable(self, started: bool, suspended: bool) -> bool {
        match self {
            InboxKind::Control => true,
            InboxKind::Start => !suspended,
            InboxKind::Normal => started && !suspended,
        }
    }
}

/// The name of an event's type, for messages (`taskScheduled`).
pub fn event_name(event: &HistoryEvent) -> &'static str {
    match &event.event_type {
        None => "empty",
        Some(kind) => match kind {
            EventType::ExecutionStarted(_) => "executionStarted",
            EventType::ExecutionCompleted(_) => "executionCompleted",
            EventType::ExecutionTerminated(_) => "executionTerminated",
            EventType::TaskScheduled(_) => "taskScheduled",
            EventType::TaskCompleted(_) => "taskCompleted",
            EventType::TaskFailed(_) => "taskFailed",
            EventType::ChildWorkflowInstanceCreated(_) => "childWorkflowInstanceCreated",
            EventType::ChildWorkflowInstanceCompleted(_) => "childWorkflowInstanceCompleted",
            EventType::ChildWorkflowInstanceFailed(_) => "childWorkflowInstanceFailed",
            EventType::TimerCreated(_) => "timerCreated",
            EventType::TimerFired(_) => "timerFired",
            EventType::WorkflowStarted(_) => "workflowStarted",
            EventType::WorkflowCompleted(_) => "workflowCompleted",
            EventType::EventSent(_) => "eventSent",
            EventType::EventRaised(_) => "eventRaised",
            EventType::ContinueAsNew(_) => "continueAsNew",
            EventType::ExecutionSuspended(_) => "executionSuspended",
            EventType::ExecutionResumed(_) => "executionResumed",
            EventType::ExecutionStalled(_) => "executionStalled",
            EventType::DetachedWorkflowInstanceCreated(_) => "detachedWorkflowInstanceCreated",
        },
    }
}

/// Whether a worker's answer ends the execution (completes, fails, or continues it as new).
pub fn ends_execution(res: &trellis_proto::durabletask::WorkflowResponse) -> bool {
    res.actions.iter().any(|a| {
        matches!(
            a.workflow_action_type,
            Some(WorkflowActionType::CompleteWorkflow(_))
        )
    })
}

/// The app an action or event is routed to, when its router names one.
pub fn target_app(router: Option<&trellis_proto::durabletask::TaskRouter>) -> Option<String> {
    router
        .and_then(|r| r.target_app_id.clone())
        .filter(|a| !a.is_empty())
}

/// A status as a word (`RUNNING`), for messages.
pub fn status_word(status: crate::Status) -> &'static str {
    status
        .as_str_name()
        .strip_prefix("ORCHESTRATION_STATUS_")
        .unwrap_or("UNKNOWN")
}

/// The name of an action's type, for messages (`scheduleTask`).
pub fn action_name(action: &WorkflowAction) -> &'static str {
    match &action.workflow_action_type {
        None => "empty",
        Some(kind) => match kind {
            WorkflowActionType::ScheduleTask(_) => "scheduleTask",
            WorkflowActionType::CreateChildWorkflow(_) => "createChildWorkflow",
            WorkflowActionType::CreateTimer(_) => "createTimer",
            WorkflowActionType::SendEvent(_) => "sendEvent",
            WorkflowActionType::CompleteWorkflow(_) => "completeWorkflow",
            WorkflowActionType::TerminateWorkflow(_) => "terminateWorkflow",
            WorkflowActionType::WorkflowVersionNotAvailable(_) => "workflowVersionNotAvailable",
            WorkflowActionType::CreateDetachedWorkflow(_) => "createDetachedWorkflow",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_through_millis() {
        for ms in [0, 1, 999, 1_000, 1_733_456_789_123, -1, -1_001] {
            assert_eq!(millis(&timestamp(ms)), ms, "{ms}");
        }
    }

    #[test]
    fn control_events_run_in_any_state_and_others_wait() {
        assert!(InboxKind::Control.runnable(false, true));
        assert!(InboxKind::Start.runnable(false, false));
        assert!(!InboxKind::Start.runnable(true, true));
        assert!(!InboxKind::Normal.runnable(false, false));
        assert!(!InboxKind::Normal.runnable(true, true));
        assert!(InboxKind::Normal.runnable(true, false));
    }
}
