//! The [`WorkflowStore`] trait: what a backend keeps and the few transactions the engine
//! needs from it.
//!
//! Per instance a backend keeps a metadata row, an **append-only history** (a turn adds
//! the events it committed, never rewrites the earlier ones; only continue-as-new and
//! purge delete), and an **inbox** of events waiting for the next turn, each visible from
//! a time on (a durable timer is an inbox event visible when it fires). Activities wait in
//! a queue of their own. Instances and activities are handed out under **leases** that the
//! backend checks on every commit, so several sidecars of one app share the work and one
//! that dies leaves its work to the others once its leases run out; which sidecar gets
//! what is the database's decision.
//!
//! Every instance belongs to an app id: two apps on one store never see each other's
//! instances, except through the messages one sends to the other (child workflows and
//! activities on another app).

use async_trait::async_trait;
use trellis_proto::durabletask::{ActivityRequest, HistoryEvent, TaskFailureDetails};

use crate::events::Start;
use crate::{Millis, Status, WorkflowError};

/// An instance as `GET` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceMeta {
    pub app_id: String,
    pub instance_id: String,
    pub name: String,
    pub status: Status,
    pub execution_id: String,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub completed_at: Option<Millis>,
    pub scheduled_start: Option<Millis>,
    pub input: Option<String>,
    pub output: Option<String>,
    pub custom_status: Option<String>,
    pub failure: Option<TaskFailureDetails>,
    pub parent_app_id: Option<String>,
    pub parent_instance_id: Option<String>,
    /// How many events the history holds.
    pub history_len: u64,
}

/// The most instances one `purge_finished` call deletes, so that a sweep never holds the
/// store long.
pub const PURGE_SLICE: u32 = 1000;

/// Whether an instance in `status` has finished (nothing will change it but a purge or a
/// new start under its id).
pub fn is_terminal(status: Status) -> bool {
    matches!(
        status,
        Status::Completed | Status::Failed | Status::Terminated | Status::Canceled
    )
}

/// Refuses to purge an instance in `status` unless it finished or `force` says so: the one
/// rule every backend's `purge` applies.
pub fn check_purgeable(id: &str, status: Status, force: bool) -> Result<(), WorkflowError> {
    if force || is_terminal(status) {
        return Ok(());
    }
    Err(WorkflowError::Refused(format!(
        "workflow instance {id:?} is {}; only finished instances can be purged (terminate it first, or force the purge)",
        crate::events::status_word(status)
    )))
}

/// The child instances a history started, as `(app, instance)`; a child without a target
/// app runs on `app`. What a recursive purge also deletes.
pub fn child_instances(app: &str, history: &[HistoryEvent]) -> Vec<(String, String)> {
    history
        .iter()
        .filter_map(|event| match &event.event_type {
            Some(
                trellis_proto::durabletask::history_event::EventType::ChildWorkflowInstanceCreated(
                    child,
                ),
            ) => Some((
                crate::events::target_app(event.router.as_ref()).unwrap_or_else(|| app.to_string()),
                child.instance_id.clone(),
            )),
            _ => None,
        })
        .collect()
}

/// A new instance: its start event goes to its inbox, visible at its scheduled start.
#[derive(Debug, Clone)]
pub struct NewInstance {
    pub app_id: String,
    pub start: Start,
    pub parent_app_id: Option<String>,
}

/// An event for an instance's inbox.
#[derive(Debug, Clone)]
pub struct Message {
    pub app_id: String,
    pub instance_id: String,
    /// The execution the event belongs to, when it answers something an execution did
    /// (an activity result, a timer, a child's completion): an execution that ended by
    /// continuing as new no longer takes it. `None` for events from outside.
    pub execution_id: Option<String>,
    pub event: HistoryEvent,
    pub visible_at: Millis,
}

/// An inbox event as a turn sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxItem {
    pub id: i64,
    pub execution_id: Option<String>,
    pub event: HistoryEvent,
}

/// An instance leased for a turn.
#[derive(Debug, Clone)]
pub struct WorkflowLease {
    pub meta: InstanceMeta,
    pub history: Vec<HistoryEvent>,
    /// The visible inbox, oldest first.
    pub inbox: Vec<InboxItem>,
}

/// An activity to run, queued for the app that runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityTask {
    /// The app whose workers run it.
    pub app_id: String,
    /// The app of the workflow that scheduled it, where the result goes.
    pub workflow_app_id: String,
    pub request: ActivityRequest,
}

/// An activity leased for running.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityLease {
    /// The queue entry, to complete or release.
    pub id: i64,
    pub task: ActivityTask,
}

/// What a turn commits, in one transaction, if the lease on the instance is still held.
#[derive(Debug, Clone, Default)]
pub struct TurnCommit {
    pub app_id: String,
    pub instance_id: String,
    /// Continue-as-new: the history is emptied before `append`.
    pub reset_history: bool,
    pub append: Vec<HistoryEvent>,
    /// Inbox events the turn took (or dropped).
    pub consumed: Vec<i64>,
    pub update: MetaUpdate,
    pub messages: Vec<Message>,
    pub new_instances: Vec<NewInstance>,
    pub activities: Vec<ActivityTask>,
}

/// How a turn changes the instance's row; `None` leaves a field as it was.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetaUpdate {
    pub status: Option<Status>,
    pub execution_id: Option<String>,
    pub input: Option<Option<String>>,
    pub output: Option<Option<String>>,
    pub custom_status: Option<Option<String>>,
    pub failure: Option<Option<TaskFailureDetails>>,
    pub completed_at: Option<Option<Millis>>,
}

/// How a purge went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Purged {
    pub instances: u32,
}

/// Which instances `list` shows.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub limit: Option<u32>,
}

/// A workflow store.
#[async_trait]
pub trait WorkflowStore: Send + Sync + std::fmt::Debug {
    /// Creates an instance (and queues its start event). An instance with the id that has
    /// not finished is [`WorkflowError::AlreadyExists`]; a finished one is replaced.
    async fn create(&self, instance: NewInstance) -> Result<(), WorkflowError>;

    /// Puts an event in an existing instance's inbox; [`WorkflowError::NotFound`] when
    /// there is no such instance.
    async fn send(&self, message: Message) -> Result<(), WorkflowError>;

    /// The instance's row, if it exists.
    async fn get(
        &self,
        app_id: &str,
        instance_id: &str,
    ) -> Result<Option<InstanceMeta>, WorkflowError>;

    /// The instance's committed history (empty when it does not exist).
    async fn history(
        &self,
        app_id: &str,
        instance_id: &str,
    ) -> Result<Vec<HistoryEvent>, WorkflowError>;

    /// Leases up to `max` instances of `app_id` that have inbox events to run at `now`
    /// and no live lease, to `owner` until `until`.
    async fn lease_workflows(
        &self,
        app_id: &str,
        owner: &str,
        now: Millis,
        until: Millis,
        max: usize,
    ) -> Result<Vec<WorkflowLease>, WorkflowError>;

    /// Commits a turn and releases the lease; [`WorkflowError::LeaseLost`] (and nothing
    /// committed) when `owner` no longer holds it.
    async fn commit_turn(&self, owner: &str, commit: TurnCommit) -> Result<(), WorkflowError>;

    /// Gives a leased instance back untouched, to be run again.
    async fn release_workflow(
        &self,
        app_id: &str,
        instance_id: &str,
        owner: &str,
    ) -> Result<(), WorkflowError>;

    /// Leases up to `max` queued activities of `app_id`.
    async fn lease_activities(
        &self,
        app_id: &str,
        owner: &str,
        now: Millis,
        until: Millis,
        max: usize,
    ) -> Result<Vec<ActivityLease>, WorkflowError>;

    /// Removes a finished activity from the queue and sends its result, in one
    /// transaction. An activity that is no longer queued (it finished before, run by a
    /// sidecar that had taken it over) sends nothing.
    async fn complete_activity(&self, id: i64, result: Message) -> Result<(), WorkflowError>;

    /// Gives a leased activity back, to be run again.
    async fn release_activity(&self, id: i64, owner: &str) -> Result<(), WorkflowError>;

    /// Extends every lease `owner` holds on `app_id`'s work to `until`.
    async fn renew(&self, app_id: &str, owner: &str, until: Millis) -> Result<(), WorkflowError>;

    /// When `app_id` next has work that is not visible yet (a timer, a scheduled start),
    /// after `now`.
    async fn next_due(&self, app_id: &str, now: Millis) -> Result<Option<Millis>, WorkflowError>;

    /// Deletes an instance with its history, inbox and queued activities, and with
    /// `recursive` its child instances. One that has not finished is refused unless
    /// `force`.
    async fn purge(
        &self,
        app_id: &str,
        instance_id: &str,
        recursive: bool,
        force: bool,
    ) -> Result<Purged, WorkflowError>;

    /// Instances of `app_id`, newest first.
    async fn list(
        &self,
        app_id: &str,
        filter: &ListFilter,
    ) -> Result<Vec<InstanceMeta>, WorkflowError>;

    /// Deletes finished instances of `app_id` whose status is `status` and that finished
    /// before `before`, at most [`PURGE_SLICE`] at a time; returns how many.
    async fn purge_finished(
        &self,
        app_id: &str,
        status: Status,
        before: Millis,
    ) -> Result<u32, WorkflowError>;
}
