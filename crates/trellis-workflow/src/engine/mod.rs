//! One sidecar's workflow engine: the client operations (start, get, wait, raise,
//! terminate, suspend, resume, purge) and the dispatcher that feeds the app's workers.
//!
//! The engine holds nothing that matters only in memory: instances, history, inboxes,
//! queued activities and leases are in the store, so a sidecar that dies loses only the
//! turns and activities it had handed out, which the store hands out again once their
//! leases run out (to this sidecar when it comes back, or to a replica). What it keeps in
//! memory is which worker holds which turn or activity right now, to match the worker's
//! answer with the lease it was given under, and to give a lost worker's work back at
//! once.

mod dispatch;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use trellis_proto::durabletask::history_event::EventType;
use trellis_proto::durabletask::{
    EventRaisedEvent, ExecutionResumedEvent, ExecutionSuspendedEvent, ExecutionTerminatedEvent,
    HistoryEvent,
};

pub use dispatch::WorkerConnection;

use crate::events::{self, Start};
use crate::store::{InstanceMeta, ListFilter, Message, NewInstance, Purged, WorkflowStore};
use crate::{Millis, Status, WorkflowError, ids, now_ms};

/// How an engine runs.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The app whose instances and activities this engine runs.
    pub app_id: String,
    /// How long a turn or an activity handed to a worker stays this sidecar's before
    /// another may take it over; renewed while the sidecar lives.
    pub lease: Duration,
    /// How often the store is asked for work this sidecar was not told about (events
    /// other processes sent, due timers are tracked exactly).
    pub poll: Duration,
    /// `maxConcurrentWorkflowInvocations`: turns in flight at once.
    pub max_workflows: usize,
    /// `maxConcurrentActivityInvocations`: activities in flight at once.
    pub max_activities: usize,
    /// `stateRetentionPolicy`: how long finished instances in each status are kept before
    /// they are purged; a status not listed is kept for ever.
    pub retention: Vec<(Status, Duration)>,
}

impl EngineOptions {
    pub fn new(app_id: impl Into<String>) -> Self {
        EngineOptions {
            app_id: app_id.into(),
            lease: Duration::from_secs(10),
            poll: Duration::from_millis(250),
            max_workflows: 1000,
            max_activities: 1000,
            retention: Vec::new(),
        }
    }
}

/// A request to start an instance.
#[derive(Debug, Clone, Default)]
pub struct StartRequest {
    /// The id; a random one when `None`.
    pub instance_id: Option<String>,
    pub name: String,
    pub input: Option<String>,
    pub scheduled_start: Option<Millis>,
    pub tags: std::collections::HashMap<String, String>,
}

/// Counts for `/v1.0/metadata`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub workers: usize,
    pub turns_in_flight: usize,
    pub activities_in_flight: usize,
}

/// A sidecar's workflow engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn WorkflowStore>,
    opts: EngineOptions,
    /// This engine's name on the leases it takes.
    owner: String,
    /// Wakes the dispatcher: new work may be ready.
    wake: Notify,
    /// Wakes waiters: an instance's state changed.
    changed: Notify,
    state: Mutex<dispatch::State>,
}

impl Engine {
    /// Starts an engine on `store`; its background tasks end when the last clone of the
    /// engine is dropped.
    pub fn start(store: Arc<dyn WorkflowStore>, opts: EngineOptions) -> Engine {
        let inner = Arc::new(Inner {
            store,
            owner: format!("{}-{}", opts.app_id, ids::random()),
            opts,
            wake: Notify::new(),
            changed: Notify::new(),
            state: Mutex::new(dispatch::State::default()),
        });
        dispatch::spawn(&inner);
        Engine { inner }
    }

    pub fn app_id(&self) -> &str {
        &self.inner.opts.app_id
    }

    pub fn store(&self) -> &Arc<dyn WorkflowStore> {
        &self.inner.store
    }

    pub fn stats(&self) -> EngineStats {
        self.inner.stats()
    }

    /// Starts an instance; returns its id.
    pub async fn start_instance(&self, req: StartRequest) -> Result<String, WorkflowError> {
        let id = match req.instance_id {
            Some(id) if !id.is_empty() => {
                ids::validate(&id)?;
                id
            }
            _ => ids::random(),
        };
        if req.name.is_empty() {
            return Err(WorkflowError::Refused("the workflow name is empty".into()));
        }
        self.inner
            .store
            .create(NewInstance {
                app_id: self.app_id().to_string(),
                start: Start {
                    name: req.name,
                    instance_id: id.clone(),
                    execution_id: ids::random(),
                    input: req.input,
                    scheduled_start: req.scheduled_start,
                    parent: None,
                    tags: req.tags,
                },
                parent_app_id: None,
            })
            .await?;
        self.inner.woke();
        Ok(id)
    }

    /// The instance, if it exists.
    pub async fn get(&self, instance_id: &str) -> Result<Option<InstanceMeta>, WorkflowError> {
        self.inner.store.get(self.app_id(), instance_id).await
    }

    /// The instance's committed history.
    pub async fn history(&self, instance_id: &str) -> Result<Vec<HistoryEvent>, WorkflowError> {
        self.inner.store.history(self.app_id(), instance_id).await
    }

    /// Instances of this app, newest first.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<InstanceMeta>, WorkflowError> {
        self.inner.store.list(self.app_id(), filter).await
    }

    /// Waits until the instance's status satisfies `done` or `timeout` passes; returns the
    /// instance as last seen (`None` when it does not exist).
    pub async fn wait(
        &self,
        instance_id: &str,
        done: impl Fn(Status) -> bool,
        timeout: Option<Duration>,
    ) -> Result<Option<InstanceMeta>, WorkflowError> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let meta = self.get(instance_id).await?;
            match &meta {
                None => return Ok(None),
                Some(m) if done(m.status) => return Ok(meta),
                Some(_) => {}
            }
            // Other processes' changes are not announced here: look again now and then.
            let mut pause = self.inner.opts.poll;
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Ok(meta);
                }
                pause = pause.min(left);
            }
            let _ = tokio::time::timeout(pause, changed).await;
        }
    }

    /// Raises an event to an instance.
    pub async fn raise_event(
        &self,
        instance_id: &str,
        name: &str,
        input: Option<String>,
    ) -> Result<(), WorkflowError> {
        if name.is_empty() {
            return Err(WorkflowError::Refused("the event name is empty".into()));
        }
        self.send_control(
            instance_id,
            EventType::EventRaised(EventRaisedEvent {
                name: name.to_string(),
                input,
            }),
        )
        .await
    }

    /// Terminates an instance (and with `recursive` its children); a finished one stays
    /// as it is.
    pub async fn terminate(
        &self,
        instance_id: &str,
        output: Option<String>,
        recursive: bool,
    ) -> Result<(), WorkflowError> {
        self.send_control(
            instance_id,
            EventType::ExecutionTerminated(ExecutionTerminatedEvent {
                input: output,
                recurse: recursive,
            }),
        )
        .await
    }

    pub async fn suspend(
        &self,
        instance_id: &str,
        reason: Option<String>,
    ) -> Result<(), WorkflowError> {
        self.send_control(
            instance_id,
            EventType::ExecutionSuspended(ExecutionSuspendedEvent { input: reason }),
        )
        .await
    }

    pub async fn resume(
        &self,
        instance_id: &str,
        reason: Option<String>,
    ) -> Result<(), WorkflowError> {
        self.send_control(
            instance_id,
            EventType::ExecutionResumed(ExecutionResumedEvent { input: reason }),
        )
        .await
    }

    /// Deletes an instance and its state; a running one only with `force`.
    pub async fn purge(
        &self,
        instance_id: &str,
        recursive: bool,
        force: bool,
    ) -> Result<Purged, WorkflowError> {
        let purged = self
            .inner
            .store
            .purge(self.app_id(), instance_id, recursive, force)
            .await?;
        self.inner.changed.notify_waiters();
        Ok(purged)
    }

    async fn send_control(&self, instance_id: &str, kind: EventType) -> Result<(), WorkflowError> {
        let now = now_ms();
        self.inner
            .store
            .send(Message {
                app_id: self.app_id().to_string(),
                instance_id: instance_id.to_string(),
                execution_id: None,
                event: events::event(now, kind),
                visible_at: now,
            })
            .await?;
        self.inner.woke();
        Ok(())
    }

    /// Connects a worker (one `GetWorkItems` stream): it gets work items until the
    /// connection is dropped, and what it held then goes back to the store.
    pub fn connect_worker(&self) -> WorkerConnection {
        dispatch::connect(&self.inner, false)
    }

    /// Connects a worker that keeps each instance's history between turns (it declared
    /// `WORKER_CAPABILITY_STATEFUL_HISTORY`): a turn of an instance it ran before carries
    /// only the events committed since, instead of the whole history again.
    pub fn connect_stateful_worker(&self) -> WorkerConnection {
        dispatch::connect(&self.inner, true)
    }

    /// A worker's answer to a turn.
    pub async fn complete_workflow(
        &self,
        response: trellis_proto::durabletask::WorkflowResponse,
    ) -> Result<(), WorkflowError> {
        dispatch::complete_workflow(&self.inner, response).await
    }

    /// A worker's answer to an activity.
    pub async fn complete_activity(
        &self,
        response: trellis_proto::durabletask::ActivityResponse,
    ) -> Result<(), WorkflowError> {
        dispatch::complete_activity(&self.inner, response).await
    }
}

impl Inner {
    /// Something changed that the dispatcher and the waiters may care about.
    fn woke(&self) {
        self.wake.notify_one();
        self.changed.notify_waiters();
    }
}
