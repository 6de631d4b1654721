//! The conformance suite every [`WorkflowStore`] passes: call [`run`] with a fresh store
//! (its own tables or database) from a backend's tests; and [`scripted_turn`], the
//! decisions of a scripted worker that speaks the protocol without an SDK, which the
//! engine tests and the `workflows` bench drive the engine with.

use trellis_proto::durabletask::history_event::EventType;
use trellis_proto::durabletask::workflow_action::WorkflowActionType;
use trellis_proto::durabletask::{
    ActivityRequest, ActivityResponse, CompleteWorkflowAction, EventRaisedEvent,
    ParentInstanceInfo, ScheduleTaskAction, TaskCompletedEvent, TimerFiredEvent, WorkflowAction,
    WorkflowInstance, WorkflowRequest, WorkflowResponse,
};

use crate::events::{self, Start};
use crate::store::{
    ActivityTask, ListFilter, Message, MetaUpdate, NewInstance, TurnCommit, WorkflowStore,
};
use crate::{Status, WorkflowError, ids, now_ms};

/// Runs every check against `store`, each on instances of its own app id.
pub async fn run(store: &dyn WorkflowStore) {
    create_lease_commit_and_activity(store).await;
    leases_are_exclusive_and_checked(store).await;
    future_events_wait_until_due(store).await;
    suspended_instances_hold_their_events(store).await;
    purge_and_not_found(store).await;
    children_timers_and_continue_as_new(store).await;
}

fn app() -> String {
    format!("conf-{}", ids::random())
}

/// A start of workflow `wf` as instance `id` of `app`, execution `e1`, input `"in"`.
pub fn new_instance(app: &str, id: &str) -> NewInstance {
    NewInstance {
        app_id: app.into(),
        start: Start {
            name: "wf".into(),
            instance_id: id.into(),
            execution_id: "e1".into(),
            input: Some("\"in\"".into()),
            ..Start::default()
        },
        parent_app_id: None,
    }
}

fn raised(app: &str, id: &str, at: i64) -> Message {
    Message {
        app_id: app.into(),
        instance_id: id.into(),
        execution_id: None,
        event: events::event(
            at,
            EventType::EventRaised(EventRaisedEvent {
                name: "go".into(),
                input: None,
            }),
        ),
        visible_at: at,
    }
}

async fn create_lease_commit_and_activity(store: &dyn WorkflowStore) {
    let app = app();
    store.create(new_instance(&app, "a")).await.expect("create");
    let meta = store.get(&app, "a").await.expect("get").expect("exists");
    assert_eq!(meta.status, Status::Pending);
    assert_eq!(meta.input.as_deref(), Some("\"in\""));
    assert_eq!(
        store.create(new_instance(&app, "a")).await,
        Err(WorkflowError::AlreadyExists("a".into()))
    );
    let now = now_ms();
    let leases = store
        .lease_workflows(&app, "me", now, now + 10_000, 10)
        .await
        .expect("lease");
    assert_eq!(leases.len(), 1);
    let lease = &leases[0];
    assert!(lease.history.is_empty());
    assert_eq!(lease.inbox.len(), 1);
    assert_eq!(
        events::event_name(&lease.inbox[0].event),
        "executionStarted"
    );
    let mut scheduled = events::event(now, EventType::TaskScheduled(Default::default()));
    scheduled.event_id = 0;
    let request = ActivityRequest {
        name: "act".into(),
        task_id: 0,
        workflow_instance: Some(WorkflowInstance {
            instance_id: "a".into(),
            execution_id: Some("e1".into()),
        }),
        ..ActivityRequest::default()
    };
    store
        .commit_turn(
            "me",
            TurnCommit {
                app_id: app.clone(),
                instance_id: "a".into(),
                append: vec![
                    events::workflow_started(now),
                    lease.inbox[0].event.clone(),
                    scheduled,
                ],
                consumed: vec![lease.inbox[0].id],
                update: MetaUpdate {
                    status: Some(Status::Running),
                    custom_status: Some(Some("busy".into())),
                    ..MetaUpdate::default()
                },
                activities: vec![ActivityTask {
                    app_id: app.clone(),
                    workflow_app_id: app.clone(),
                    request: request.clone(),
                }],
                ..TurnCommit::default()
            },
        )
        .await
        .expect("commit");
    let meta = store.get(&app, "a").await.expect("get").expect("exists");
    assert_eq!((meta.status, meta.history_len), (Status::Running, 3));
    assert_eq!(meta.custom_status.as_deref(), Some("busy"));
    assert_eq!(store.history(&app, "a").await.expect("history").len(), 3);
    assert!(
        store
            .lease_workflows(&app, "me", now, now + 10_000, 10)
            .await
            .expect("lease")
            .is_empty(),
        "nothing new in the inbox"
    );
    let acts = store
        .lease_activities(&app, "me", now, now + 10_000, 10)
        .await
        .expect("lease");
    assert_eq!(acts.len(), 1);
    assert_eq!(acts[0].task.request, request);
    assert!(
        store
            .lease_activities(&app, "other", now, now + 10_000, 10)
            .await
            .expect("lease")
            .is_empty(),
        "a leased activity is nobody else's"
    );
    let result = |at| Message {
        app_id: app.clone(),
        instance_id: "a".into(),
        execution_id: Some("e1".into()),
        event: events::event(
            at,
            EventType::TaskCompleted(TaskCompletedEvent {
                task_scheduled_id: 0,
                result: Some("1".into()),
                ..TaskCompletedEvent::default()
            }),
        ),
        visible_at: at,
    };
    store
        .complete_activity(acts[0].id, result(now))
        .await
        .expect("complete");
    store
        .complete_activity(acts[0].id, result(now))
        .await
        .expect("a repeat is a no-op");
    let leases = store
        .lease_workflows(&app, "me", now, now + 10_000, 10)
        .await
        .expect("lease");
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].inbox.len(), 1, "the result arrived once");
    assert_eq!(leases[0].inbox[0].execution_id.as_deref(), Some("e1"));
}

async fn leases_are_exclusive_and_checked(store: &dyn WorkflowStore) {
    let app = app();
    store.create(new_instance(&app, "b")).await.expect("create");
    let now = now_ms();
    assert_eq!(
        store
            .lease_workflows(&app, "one", now, now + 60_000, 10)
            .await
            .expect("lease")
            .len(),
        1
    );
    assert!(
        store
            .lease_workflows(&app, "two", now, now + 60_000, 10)
            .await
            .expect("lease")
            .is_empty()
    );
    let commit = TurnCommit {
        app_id: app.clone(),
        instance_id: "b".into(),
        ..TurnCommit::default()
    };
    assert_eq!(
        store.commit_turn("two", commit.clone()).await,
        Err(WorkflowError::LeaseLost("b".into()))
    );
    // An expired lease is taken over, and the first owner can no longer commit.
    let later = now + 61_000;
    assert_eq!(
        store
            .lease_workflows(&app, "two", later, later + 60_000, 10)
            .await
            .expect("lease")
            .len(),
        1
    );
    assert_eq!(
        store.commit_turn("one", commit.clone()).await,
        Err(WorkflowError::LeaseLost("b".into()))
    );
    store
        .release_workflow(&app, "b", "two")
        .await
        .expect("release");
    assert_eq!(
        store
            .lease_workflows(&app, "one", later, later + 60_000, 10)
            .await
            .expect("lease")
            .len(),
        1
    );
}

async fn future_events_wait_until_due(store: &dyn WorkflowStore) {
    let app = app();
    let now = now_ms();
    let mut later = new_instance(&app, "c");
    later.start.scheduled_start = Some(now + 5_000);
    store.create(later).await.expect("create");
    assert!(
        store
            .lease_workflows(&app, "me", now, now + 1_000, 10)
            .await
            .expect("lease")
            .is_empty()
    );
    assert_eq!(
        store.next_due(&app, now).await.expect("due"),
        Some(now + 5_000)
    );
    // An event raised before the start waits for it.
    store.send(raised(&app, "c", now)).await.expect("send");
    assert!(
        store
            .lease_workflows(&app, "me", now, now + 1_000, 10)
            .await
            .expect("lease")
            .is_empty()
    );
    let leases = store
        .lease_workflows(&app, "me", now + 5_000, now + 6_000, 10)
        .await
        .expect("lease");
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].inbox.len(), 2);
}

async fn suspended_instances_hold_their_events(store: &dyn WorkflowStore) {
    let app = app();
    store.create(new_instance(&app, "d")).await.expect("create");
    let now = now_ms();
    let lease = store
        .lease_workflows(&app, "me", now, now + 10_000, 10)
        .await
        .expect("lease")
        .remove(0);
    store
        .commit_turn(
            "me",
            TurnCommit {
                app_id: app.clone(),
                instance_id: "d".into(),
                append: vec![lease.inbox[0].event.clone()],
                consumed: vec![lease.inbox[0].id],
                update: MetaUpdate {
                    status: Some(Status::Suspended),
                    ..MetaUpdate::default()
                },
                ..TurnCommit::default()
            },
        )
        .await
        .expect("commit");
    store.send(raised(&app, "d", now)).await.expect("send");
    assert!(
        store
            .lease_workflows(&app, "me", now, now + 10_000, 10)
            .await
            .expect("lease")
            .is_empty(),
        "a suspended instance does not take ordinary events"
    );
}

async fn purge_and_not_found(store: &dyn WorkflowStore) {
    let app = app();
    store.create(new_instance(&app, "e")).await.expect("create");
    assert!(matches!(
        store.purge(&app, "e", false, false).await,
        Err(WorkflowError::Refused(_))
    ));
    assert_eq!(
        store
            .purge(&app, "e", false, true)
            .await
            .expect("forced")
            .instances,
        1
    );
    assert_eq!(store.get(&app, "e").await.expect("get"), None);
    assert_eq!(
        store.send(raised(&app, "e", now_ms())).await,
        Err(WorkflowError::NotFound("e".into()))
    );
    assert!(matches!(
        store.purge(&app, "e", false, false).await,
        Err(WorkflowError::NotFound(_))
    ));
    assert!(
        store
            .list(&app, &ListFilter::default())
            .await
            .expect("list")
            .is_empty()
    );
}

/// A turn that starts a child and sends it an event, a durable timer (an event to the
/// instance itself, visible later), and continue-as-new emptying the history.
async fn children_timers_and_continue_as_new(store: &dyn WorkflowStore) {
    let app = app();
    store.create(new_instance(&app, "f")).await.expect("create");
    let now = now_ms();
    let lease = store
        .lease_workflows(&app, "me", now, now + 10_000, 10)
        .await
        .expect("lease")
        .remove(0);
    let mut child = new_instance(&app, "f-child");
    child.start.parent = Some(ParentInstanceInfo {
        workflow_instance: Some(WorkflowInstance {
            instance_id: "f".into(),
            execution_id: Some("e1".into()),
        }),
        ..ParentInstanceInfo::default()
    });
    let timer = Message {
        app_id: app.clone(),
        instance_id: "f".into(),
        execution_id: Some("e1".into()),
        event: events::event(
            now + 30_000,
            EventType::TimerFired(TimerFiredEvent {
                fire_at: Some(events::timestamp(now + 30_000)),
                timer_id: 1,
            }),
        ),
        visible_at: now + 30_000,
    };
    store
        .commit_turn(
            "me",
            TurnCommit {
                app_id: app.clone(),
                instance_id: "f".into(),
                append: vec![events::workflow_started(now), lease.inbox[0].event.clone()],
                consumed: vec![lease.inbox[0].id],
                update: MetaUpdate {
                    status: Some(Status::Running),
                    ..MetaUpdate::default()
                },
                new_instances: vec![child],
                messages: vec![raised(&app, "f-child", now), timer],
                ..TurnCommit::default()
            },
        )
        .await
        .expect("commit");
    let child = store
        .get(&app, "f-child")
        .await
        .expect("get")
        .expect("made");
    assert_eq!(child.parent_instance_id.as_deref(), Some("f"));
    // The child's start is visible from the commit's own clock on.
    let later = now_ms();
    let leases = store
        .lease_workflows(&app, "me", later, later + 10_000, 10)
        .await
        .expect("lease");
    assert_eq!(
        leases.len(),
        1,
        "the child, not the parent waiting for its timer"
    );
    assert_eq!(leases[0].meta.instance_id, "f-child");
    assert_eq!(
        leases[0].inbox.len(),
        2,
        "its start and the event sent with it"
    );
    store
        .release_workflow(&app, "f-child", "me")
        .await
        .expect("release");
    assert_eq!(
        store.next_due(&app, later).await.expect("due"),
        Some(now + 30_000)
    );
    let fired = store
        .lease_workflows(&app, "me", now + 30_000, now + 40_000, 10)
        .await
        .expect("lease")
        .into_iter()
        .find(|l| l.meta.instance_id == "f")
        .expect("the timer fired");
    assert_eq!(fired.history.len(), 2);
    assert_eq!(events::event_name(&fired.inbox[0].event), "timerFired");
    store
        .commit_turn(
            "me",
            TurnCommit {
                app_id: app.clone(),
                instance_id: "f".into(),
                reset_history: true,
                append: vec![events::workflow_started(now + 30_000)],
                consumed: vec![fired.inbox[0].id],
                update: MetaUpdate {
                    execution_id: Some("e2".into()),
                    ..MetaUpdate::default()
                },
                ..TurnCommit::default()
            },
        )
        .await
        .expect("commit");
    let meta = store.get(&app, "f").await.expect("get").expect("exists");
    assert_eq!((meta.history_len, meta.execution_id.as_str()), (1, "e2"));
    assert_eq!(store.history(&app, "f").await.expect("history").len(), 1);
}

/// A scripted worker's answer to a turn: schedules `fan` activities named `inc` at a time
/// (each with its task id as input), `rounds` times one after the other, then completes
/// with the sum of their results. `fan = 1, rounds = 5` is a chain of five activities;
/// `fan = 1000, rounds = 1` a fan-out.
pub fn scripted_turn(req: &WorkflowRequest, fan: i32, rounds: i32) -> WorkflowResponse {
    let events = req.past_events.iter().chain(&req.new_events);
    let mut scheduled = 0;
    let mut results = Vec::new();
    for e in events {
        match &e.event_type {
            Some(EventType::TaskScheduled(_)) => scheduled += 1,
            Some(EventType::TaskCompleted(t)) => {
                results.push(
                    t.result
                        .as_deref()
                        .and_then(|r| r.parse::<i64>().ok())
                        .unwrap_or(0),
                );
            }
            _ => {}
        }
    }
    let mut actions = Vec::new();
    if i32::try_from(results.len()).unwrap_or(i32::MAX) == scheduled {
        if scheduled >= fan * rounds {
            actions.push(WorkflowAction {
                id: scheduled,
                workflow_action_type: Some(WorkflowActionType::CompleteWorkflow(
                    CompleteWorkflowAction {
                        workflow_status: Status::Completed as i32,
                        result: Some(results.iter().sum::<i64>().to_string()),
                        ..CompleteWorkflowAction::default()
                    },
                )),
                router: None,
            });
        } else {
            for id in scheduled..scheduled + fan {
                actions.push(WorkflowAction {
                    id,
                    workflow_action_type: Some(WorkflowActionType::ScheduleTask(
                        ScheduleTaskAction {
                            name: "inc".into(),
                            input: Some(id.to_string()),
                            ..ScheduleTaskAction::default()
                        },
                    )),
                    router: None,
                });
            }
        }
    }
    WorkflowResponse {
        instance_id: req.instance_id.clone(),
        actions,
        ..WorkflowResponse::default()
    }
}

/// A scripted worker's answer to an activity: its input plus one.
pub fn scripted_activity(req: &ActivityRequest) -> ActivityResponse {
    let n: i64 = req
        .input
        .as_deref()
        .and_then(|i| i.parse().ok())
        .unwrap_or(0);
    ActivityResponse {
        instance_id: req
            .workflow_instance
            .as_ref()
            .map(|w| w.instance_id.clone())
            .unwrap_or_default(),
        task_id: req.task_id,
        result: Some((n + 1).to_string()),
        ..ActivityResponse::default()
    }
}
