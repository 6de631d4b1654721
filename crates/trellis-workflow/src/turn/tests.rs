//! The turn rules on hand-made histories.

use trellis_proto::durabletask::history_event::EventType;
use trellis_proto::durabletask::workflow_action::WorkflowActionType;
use trellis_proto::durabletask::{
    CompleteWorkflowAction, CreateChildWorkflowAction, EventRaisedEvent, ExecutionResumedEvent,
    ExecutionSuspendedEvent, ExecutionTerminatedEvent, HistoryEvent, ParentInstanceInfo,
    ScheduleTaskAction, TaskCompletedEvent, WorkflowAction, WorkflowInstance, WorkflowResponse,
};

use super::{Plan, Turn, apply, plan};
use crate::Status;
use crate::events::{self, Start};
use crate::store::{InboxItem, InstanceMeta, WorkflowLease};

const NOW: i64 = 1_700_000_000_000;

fn meta(status: Status) -> InstanceMeta {
    InstanceMeta {
        app_id: "app".into(),
        instance_id: "wf1".into(),
        name: "chain".into(),
        status,
        execution_id: "e1".into(),
        created_at: NOW,
        updated_at: NOW,
        completed_at: None,
        scheduled_start: None,
        input: None,
        output: None,
        custom_status: None,
        failure: None,
        parent_app_id: None,
        parent_instance_id: None,
        history_len: 0,
    }
}

fn start(parent: Option<ParentInstanceInfo>) -> HistoryEvent {
    events::execution_started(
        NOW,
        &Start {
            name: "chain".into(),
            instance_id: "wf1".into(),
            execution_id: "e1".into(),
            input: Some("1".into()),
            parent,
            ..Start::default()
        },
    )
}

fn item(id: i64, event: HistoryEvent) -> InboxItem {
    InboxItem {
        id,
        execution_id: None,
        event,
    }
}

fn task_done(task: i32) -> HistoryEvent {
    events::event(
        NOW,
        EventType::TaskCompleted(TaskCompletedEvent {
            task_scheduled_id: task,
            result: Some("2".into()),
            ..TaskCompletedEvent::default()
        }),
    )
}

fn schedule(id: i32) -> WorkflowAction {
    WorkflowAction {
        id,
        workflow_action_type: Some(WorkflowActionType::ScheduleTask(ScheduleTaskAction {
            name: "double".into(),
            input: Some("1".into()),
            ..ScheduleTaskAction::default()
        })),
        router: None,
    }
}

fn response(actions: Vec<WorkflowAction>) -> WorkflowResponse {
    WorkflowResponse {
        instance_id: "wf1".into(),
        actions,
        ..WorkflowResponse::default()
    }
}

fn run(plan: Plan) -> Turn {
    match plan {
        Plan::Run(turn) => turn,
        Plan::Settle(c) => panic!("expected a turn for the worker, got a settlement {c:?}"),
    }
}

/// A lease on an instance that has started and scheduled task 0.
fn running_with_task() -> WorkflowLease {
    let mut scheduled = events::event(NOW, EventType::TaskScheduled(Default::default()));
    scheduled.event_id = 0;
    WorkflowLease {
        meta: meta(Status::Running),
        history: vec![events::workflow_started(NOW), start(None), scheduled],
        inbox: vec![],
    }
}

#[test]
fn a_first_turn_runs_the_start_and_schedules_the_activity() {
    let lease = WorkflowLease {
        meta: meta(Status::Pending),
        history: vec![],
        inbox: vec![item(7, start(None))],
    };
    let turn = run(plan(&lease, NOW));
    assert_eq!(turn.taken, vec![7]);
    assert!(!turn.suspended);
    assert_eq!(events::event_name(&turn.new_events[0]), "workflowStarted");
    assert_eq!(events::event_name(&turn.new_events[1]), "executionStarted");
    let commit = apply(&lease.meta, turn, response(vec![schedule(0)]), NOW);
    assert_eq!(commit.append.len(), 3);
    assert_eq!(
        commit.append[2].event_id, 0,
        "the action id is the event id"
    );
    assert_eq!(commit.activities.len(), 1);
    let request = &commit.activities[0].request;
    assert_eq!((request.name.as_str(), request.task_id), ("double", 0));
    assert_eq!(
        request
            .workflow_instance
            .as_ref()
            .and_then(|w| w.execution_id.clone()),
        Some("e1".into())
    );
    assert_eq!(commit.update.status, Some(Status::Running));
}

#[test]
fn a_second_result_for_one_task_is_dropped() {
    let mut lease = running_with_task();
    lease.inbox = vec![item(1, task_done(0)), item(2, task_done(0))];
    let Turn {
        new_events, taken, ..
    } = run(plan(&lease, NOW));
    assert_eq!(taken, vec![1, 2], "both are taken from the inbox");
    assert_eq!(
        new_events.len(),
        2,
        "workflowStarted and one result: {new_events:?}"
    );
}

#[test]
fn results_for_an_earlier_execution_are_dropped() {
    let mut lease = running_with_task();
    lease.inbox = vec![InboxItem {
        id: 1,
        execution_id: Some("e0".into()),
        event: task_done(0),
    }];
    match plan(&lease, NOW) {
        Plan::Settle(c) => {
            assert_eq!(c.consumed, vec![1]);
            assert!(c.append.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_suspended_instance_keeps_its_events_until_resumed() {
    let mut lease = running_with_task();
    let suspend = events::event(
        NOW,
        EventType::ExecutionSuspended(ExecutionSuspendedEvent::default()),
    );
    lease.inbox = vec![item(1, suspend), item(2, task_done(0))];
    let Plan::Settle(c) = plan(&lease, NOW) else {
        panic!("suspend needs no worker")
    };
    assert_eq!(c.consumed, vec![1], "the result waits");
    assert_eq!(c.update.status, Some(Status::Suspended));

    lease.meta.status = Status::Suspended;
    let resume = events::event(
        NOW,
        EventType::ExecutionResumed(ExecutionResumedEvent::default()),
    );
    lease.inbox = vec![item(2, task_done(0)), item(3, resume)];
    let Plan::Settle(c) = plan(&lease, NOW) else {
        panic!("resume alone needs no worker")
    };
    assert_eq!(c.consumed, vec![3]);
    assert_eq!(c.update.status, Some(Status::Running));
}

#[test]
fn terminate_ends_the_instance_its_children_and_tells_its_parent() {
    let parent = ParentInstanceInfo {
        task_scheduled_id: 4,
        workflow_instance: Some(WorkflowInstance {
            instance_id: "parent".into(),
            execution_id: Some("pe".into()),
        }),
        ..ParentInstanceInfo::default()
    };
    let mut child = events::event(
        NOW,
        EventType::ChildWorkflowInstanceCreated(
            trellis_proto::durabletask::ChildWorkflowInstanceCreatedEvent {
                instance_id: "kid".into(),
                ..Default::default()
            },
        ),
    );
    child.event_id = 0;
    let terminate = events::event(
        NOW,
        EventType::ExecutionTerminated(ExecutionTerminatedEvent {
            input: Some("\"stop\"".into()),
            recurse: true,
        }),
    );
    let lease = WorkflowLease {
        meta: meta(Status::Running),
        history: vec![events::workflow_started(NOW), start(Some(parent)), child],
        inbox: vec![item(1, task_done(9)), item(2, terminate)],
    };
    let Plan::Settle(c) = plan(&lease, NOW) else {
        panic!("terminate needs no worker")
    };
    assert_eq!(c.consumed, vec![1, 2]);
    assert_eq!(c.update.status, Some(Status::Terminated));
    assert_eq!(c.update.output, Some(Some("\"stop\"".into())));
    let targets: Vec<(&str, &str)> = c
        .messages
        .iter()
        .map(|m| (m.instance_id.as_str(), events::event_name(&m.event)))
        .collect();
    assert!(
        targets.contains(&("kid", "executionTerminated")),
        "{targets:?}"
    );
    assert!(
        targets.contains(&("parent", "childWorkflowInstanceFailed")),
        "{targets:?}"
    );
    let to_parent = c
        .messages
        .iter()
        .find(|m| m.instance_id == "parent")
        .unwrap();
    assert_eq!(to_parent.execution_id.as_deref(), Some("pe"));
}

#[test]
fn an_action_that_reuses_a_history_id_fails_the_workflow_naming_the_event() {
    let mut lease = running_with_task();
    lease.inbox = vec![item(1, task_done(0))];
    let turn = run(plan(&lease, NOW));
    let child = WorkflowAction {
        id: 0,
        workflow_action_type: Some(WorkflowActionType::CreateChildWorkflow(
            CreateChildWorkflowAction::default(),
        )),
        router: None,
    };
    let commit = apply(&lease.meta, turn, response(vec![child]), NOW);
    assert_eq!(commit.update.status, Some(Status::Failed));
    let failure = commit.update.failure.clone().flatten().unwrap();
    assert!(
        failure.error_message.contains("createChildWorkflow"),
        "{failure:?}"
    );
    assert!(
        failure.error_message.contains("taskScheduled"),
        "{failure:?}"
    );
    assert!(commit.new_instances.is_empty());
}

#[test]
fn continue_as_new_restarts_the_history_with_the_carried_events() {
    let mut lease = running_with_task();
    lease.inbox = vec![item(1, task_done(0))];
    let turn = run(plan(&lease, NOW));
    let raised = events::event(
        NOW,
        EventType::EventRaised(EventRaisedEvent {
            name: "more".into(),
            input: None,
        }),
    );
    let again = WorkflowAction {
        id: 1,
        workflow_action_type: Some(WorkflowActionType::CompleteWorkflow(
            CompleteWorkflowAction {
                workflow_status: Status::ContinuedAsNew as i32,
                result: Some("5".into()),
                carryover_events: vec![raised],
                ..CompleteWorkflowAction::default()
            },
        )),
        router: None,
    };
    let commit = apply(&lease.meta, turn, response(vec![again]), NOW);
    assert!(commit.reset_history);
    assert!(commit.append.is_empty());
    let new_exec = commit.update.execution_id.clone().unwrap();
    assert_ne!(new_exec, "e1");
    let names: Vec<&str> = commit
        .messages
        .iter()
        .map(|m| events::event_name(&m.event))
        .collect();
    assert_eq!(names, vec!["executionStarted", "eventRaised"]);
    assert!(
        commit
            .messages
            .iter()
            .all(|m| m.execution_id.as_deref() == Some(new_exec.as_str()))
    );
    assert_eq!(commit.update.input, Some(Some("5".into())));
}

#[test]
fn completing_a_child_answers_its_parent() {
    let parent = ParentInstanceInfo {
        task_scheduled_id: 3,
        workflow_instance: Some(WorkflowInstance {
            instance_id: "parent".into(),
            execution_id: Some("pe".into()),
        }),
        app_id: Some("other-app".into()),
        ..ParentInstanceInfo::default()
    };
    let lease = WorkflowLease {
        meta: meta(Status::Pending),
        history: vec![],
        inbox: vec![item(1, start(Some(parent)))],
    };
    let turn = run(plan(&lease, NOW));
    let done = WorkflowAction {
        id: 0,
        workflow_action_type: Some(WorkflowActionType::CompleteWorkflow(
            CompleteWorkflowAction {
                workflow_status: Status::Completed as i32,
                result: Some("42".into()),
                ..CompleteWorkflowAction::default()
            },
        )),
        router: None,
    };
    let commit = apply(&lease.meta, turn, response(vec![done]), NOW);
    assert_eq!(commit.update.status, Some(Status::Completed));
    let m = &commit.messages[0];
    assert_eq!(
        (m.app_id.as_str(), m.instance_id.as_str()),
        ("other-app", "parent")
    );
    match &m.event.event_type {
        Some(EventType::ChildWorkflowInstanceCompleted(e)) => {
            assert_eq!(e.task_scheduled_id, 3);
            assert_eq!(e.result.as_deref(), Some("42"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_finished_instance_drops_what_arrives() {
    let mut lease = running_with_task();
    lease.meta.status = Status::Completed;
    lease.inbox = vec![item(5, task_done(0))];
    let Plan::Settle(c) = plan(&lease, NOW) else {
        panic!()
    };
    assert_eq!(c.consumed, vec![5]);
    assert!(c.append.is_empty() && c.update.status.is_none());
}
