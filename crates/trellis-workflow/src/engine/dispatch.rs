//! The dispatcher: leases ready instances and queued activities from the store while
//! workers are connected and the concurrency limits allow, hands them to the workers in
//! turn, commits their answers, and gives back what a disconnected worker held.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use trellis_proto::durabletask::history_event::EventType;
use trellis_proto::durabletask::work_item::Request;
use trellis_proto::durabletask::{
    ActivityResponse, CachedHistory, TaskCompletedEvent, TaskFailedEvent, WorkItem,
    WorkflowRequest, WorkflowResponse,
};

use super::{EngineStats, Inner};
use crate::store::{ActivityLease, InstanceMeta, Message, WorkflowLease};
use crate::turn::{self, Plan};
use crate::{WorkflowError, events, now_ms};

/// Who holds what, in memory.
#[derive(Debug, Default)]
pub(super) struct State {
    workers: Vec<(u64, mpsc::UnboundedSender<WorkItem>)>,
    next_worker: usize,
    next_id: u64,
    /// Turns in flight, by instance id.
    turns: HashMap<String, InFlight>,
    /// Activities in flight, by `instance/taskId`.
    activities: HashMap<String, Running>,
    /// Turns and activity results answered by a worker and not yet written: they count
    /// against the limits too, or a store slower than the workers would let them pile up
    /// in memory (the dispatcher leasing more while the writes queue).
    committing: usize,
    completing: usize,
    /// For each worker that keeps histories: per instance, how many committed events it
    /// was last given (what it has cached, if it still has).
    cached: HashMap<u64, HashMap<String, usize>>,
}

#[derive(Debug)]
struct InFlight {
    meta: InstanceMeta,
    turn: turn::Turn,
    worker: u64,
}

#[derive(Debug)]
struct Running {
    lease: ActivityLease,
    worker: u64,
}

impl State {
    /// The next worker in turn.
    fn pick(&mut self) -> Option<(u64, mpsc::UnboundedSender<WorkItem>)> {
        if self.workers.is_empty() {
            return None;
        }
        self.next_worker = (self.next_worker + 1) % self.workers.len();
        self.workers.get(self.next_worker).cloned()
    }
}

impl Inner {
    pub(super) fn stats(&self) -> EngineStats {
        let state = self.lock();
        EngineStats {
            workers: state.workers.len(),
            turns_in_flight: state.turns.len(),
            activities_in_flight: state.activities.len(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a few maps updated in single steps: a panic elsewhere cannot leave
        // it half-changed, so a poisoned lock is still good.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn until(&self) -> i64 {
        now_ms().saturating_add(i64::try_from(self.opts.lease.as_millis()).unwrap_or(i64::MAX))
    }
}

/// One worker's stream of work items. Dropping it disconnects the worker.
#[derive(Debug)]
pub struct WorkerConnection {
    id: u64,
    items: mpsc::UnboundedReceiver<WorkItem>,
    engine: Weak<Inner>,
}

impl WorkerConnection {
    /// The next work item; `None` once the engine is gone.
    pub async fn next(&mut self) -> Option<WorkItem> {
        self.items.recv().await
    }
}

impl Drop for WorkerConnection {
    fn drop(&mut self) {
        if let Some(inner) = self.engine.upgrade() {
            disconnect(&inner, self.id);
        }
    }
}

pub(super) fn connect(inner: &Arc<Inner>, stateful: bool) -> WorkerConnection {
    let (tx, items) = mpsc::unbounded_channel();
    let id = {
        let mut state = inner.lock();
        state.next_id += 1;
        let id = state.next_id;
        state.workers.push((id, tx));
        if stateful {
            state.cached.insert(id, HashMap::new());
        }
        id
    };
    tracing::debug!(
        worker = id,
        app_id = inner.opts.app_id,
        "workflow worker connected"
    );
    inner.wake.notify_one();
    WorkerConnection {
        id,
        items,
        engine: Arc::downgrade(inner),
    }
}

/// Gives back, at once, what the worker held, so another worker runs it.
fn disconnect(inner: &Arc<Inner>, worker: u64) {
    let (turns, activities) = {
        let mut state = inner.lock();
        state.workers.retain(|(id, _)| *id != worker);
        state.cached.remove(&worker);
        let turns: Vec<String> = state
            .turns
            .iter()
            .filter(|(_, t)| t.worker == worker)
            .map(|(k, _)| k.clone())
            .collect();
        let turns: Vec<InFlight> = turns.iter().filter_map(|k| state.turns.remove(k)).collect();
        let keys: Vec<String> = state
            .activities
            .iter()
            .filter(|(_, a)| a.worker == worker)
            .map(|(k, _)| k.clone())
            .collect();
        let activities: Vec<Running> = keys
            .iter()
            .filter_map(|k| state.activities.remove(k))
            .collect();
        (turns, activities)
    };
    tracing::debug!(
        worker,
        turns = turns.len(),
        activities = activities.len(),
        "workflow worker disconnected; its work goes back to the store"
    );
    if turns.is_empty() && activities.is_empty() {
        return;
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        for turn in turns {
            let m = &turn.meta;
            if let Err(e) = inner
                .store
                .release_workflow(&m.app_id, &m.instance_id, &inner.owner)
                .await
            {
                tracing::warn!(instance = m.instance_id, error = %e, "workflow: cannot release a turn");
            }
        }
        for run in activities {
            if let Err(e) = inner
                .store
                .release_activity(run.lease.id, &inner.owner)
                .await
            {
                tracing::warn!(activity = run.lease.id, error = %e, "workflow: cannot release an activity");
            }
        }
        inner.wake.notify_one();
    });
}

/// Starts the dispatcher, the lease renewal and the retention sweep; they end when the
/// engine is dropped.
pub(super) fn spawn(inner: &Arc<Inner>) {
    let weak = Arc::downgrade(inner);
    tokio::spawn(pump(weak.clone()));
    if let Some(shortest) = inner.opts.retention.iter().map(|(_, d)| *d).min() {
        // Sweeping at a tenth of the shortest retention (between 1 s and 1 min) purges
        // an instance at most 10% later than asked.
        let every = (shortest / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        tokio::spawn(sweep(weak.clone(), every));
    }
    let every = inner.opts.lease / 3;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(inner) = weak.upgrade() else { return };
            let until = inner.until();
            if let Err(e) = inner
                .store
                .renew(&inner.opts.app_id, &inner.owner, until)
                .await
            {
                tracing::warn!(error = %e, "workflow: cannot renew leases");
            }
        }
    });
}

/// Purges finished instances past their retention, in slices, every `every`.
async fn sweep(weak: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = weak.upgrade() else { return };
        for (status, keep) in &inner.opts.retention {
            let before =
                now_ms().saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
            loop {
                match inner
                    .store
                    .purge_finished(&inner.opts.app_id, *status, before)
                    .await
                {
                    Ok(n) if n >= crate::store::PURGE_SLICE => continue,
                    Ok(n) => {
                        if n > 0 {
                            tracing::debug!(
                                purged = n,
                                status = status.as_str_name(),
                                "workflow retention: purged finished instances"
                            );
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "workflow retention: cannot purge finished instances");
                        break;
                    }
                }
            }
        }
    }
}

async fn pump(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let busy = match dispatch_once(&inner).await {
            Ok(busy) => busy,
            Err(e) => {
                tracing::warn!(error = %e, "workflow dispatcher: store error");
                false
            }
        };
        if busy {
            continue;
        }
        let mut pause = inner.opts.poll;
        let now = now_ms();
        if let Ok(Some(due)) = inner.store.next_due(&inner.opts.app_id, now).await {
            pause = pause.min(Duration::from_millis(u64::try_from(due - now).unwrap_or(0)));
        }
        // Holding the engine while waiting keeps it alive for at most one `poll`.
        let _ = tokio::time::timeout(pause, inner.wake.notified()).await;
    }
}

/// Leases and hands out what it can; true when it found work (and should look again).
async fn dispatch_once(inner: &Arc<Inner>) -> Result<bool, WorkflowError> {
    let (workers, free_turns, free_activities) = {
        let state = inner.lock();
        (
            state.workers.len(),
            inner
                .opts
                .max_workflows
                .saturating_sub(state.turns.len() + state.committing),
            inner
                .opts
                .max_activities
                .saturating_sub(state.activities.len() + state.completing),
        )
    };
    if workers == 0 {
        return Ok(false);
    }
    let app = &inner.opts.app_id;
    let mut found = false;
    if free_turns > 0 {
        let now = now_ms();
        let leases = inner
            .store
            .lease_workflows(app, &inner.owner, now, inner.until(), free_turns.min(256))
            .await?;
        found |= !leases.is_empty();
        for lease in leases {
            start_turn(inner, lease, now);
        }
    }
    if free_activities > 0 {
        let leases = inner
            .store
            .lease_activities(
                app,
                &inner.owner,
                now_ms(),
                inner.until(),
                free_activities.min(256),
            )
            .await?;
        found |= !leases.is_empty();
        for lease in leases {
            start_activity(inner, lease);
        }
    }
    Ok(found)
}

fn start_turn(inner: &Arc<Inner>, lease: WorkflowLease, now: i64) {
    match turn::plan(&lease, now) {
        Plan::Settle(commit) => {
            let inner = inner.clone();
            tokio::spawn(async move {
                let (app, id) = (commit.app_id.clone(), commit.instance_id.clone());
                let empty = commit.consumed.is_empty() && commit.append.is_empty();
                let result = if empty {
                    inner.store.release_workflow(&app, &id, &inner.owner).await
                } else {
                    inner.store.commit_turn(&inner.owner, commit).await
                };
                if let Err(e) = result {
                    tracing::warn!(instance = id, error = %e, "workflow: cannot settle a turn");
                }
                inner.woke();
            });
        }
        Plan::Run(turn) => {
            let WorkflowLease { meta, history, .. } = lease;
            let mut state = inner.lock();
            let Some((worker, tx)) = state.pick() else {
                drop(state);
                release_later(inner, meta);
                return;
            };
            let id = meta.instance_id.clone();
            // A worker that keeps histories gets only what was committed since the
            // history it was last given; it asks for the whole one (GetInstanceHistory)
            // if it no longer has that. The history moves into the request: the answer is
            // checked against the turn's `Seen`, not the events.
            let known = state.cached.get_mut(&worker).map(|c| {
                c.insert(id.clone(), history.len())
                    .filter(|n| *n <= history.len())
            });
            let (past_events, cached_history) = match known {
                Some(Some(n)) => (
                    history.into_iter().skip(n).collect(),
                    Some(CachedHistory {
                        event_count: i32::try_from(n).unwrap_or(i32::MAX),
                    }),
                ),
                _ => (history, None),
            };
            let request = WorkflowRequest {
                instance_id: id.clone(),
                execution_id: Some(meta.execution_id.clone()),
                past_events,
                new_events: turn.new_events.clone(),
                cached_history,
                ..WorkflowRequest::default()
            };
            state
                .turns
                .insert(id.clone(), InFlight { meta, turn, worker });
            let item = WorkItem {
                request: Some(Request::WorkflowRequest(request)),
                completion_token: id.clone(),
            };
            if tx.send(item).is_err()
                && let Some(flight) = state.turns.remove(&id)
            {
                drop(state);
                release_later(inner, flight.meta);
            }
        }
    }
}

fn release_later(inner: &Arc<Inner>, meta: InstanceMeta) {
    let inner = inner.clone();
    tokio::spawn(async move {
        let _ = inner
            .store
            .release_workflow(&meta.app_id, &meta.instance_id, &inner.owner)
            .await;
    });
}

fn activity_key(instance_id: &str, task_id: i32) -> String {
    format!("{instance_id}/{task_id}")
}

fn start_activity(inner: &Arc<Inner>, lease: ActivityLease) {
    let request = lease.task.request.clone();
    let instance = request
        .workflow_instance
        .as_ref()
        .map(|w| w.instance_id.clone())
        .unwrap_or_default();
    let key = activity_key(&instance, request.task_id);
    let mut state = inner.lock();
    let Some((worker, tx)) = state.pick() else {
        drop(state);
        let inner = inner.clone();
        tokio::spawn(async move {
            let _ = inner.store.release_activity(lease.id, &inner.owner).await;
        });
        return;
    };
    state
        .activities
        .insert(key.clone(), Running { lease, worker });
    let item = WorkItem {
        request: Some(Request::ActivityRequest(request)),
        completion_token: key.clone(),
    };
    if tx.send(item).is_err()
        && let Some(run) = state.activities.remove(&key)
    {
        drop(state);
        let inner = inner.clone();
        tokio::spawn(async move {
            let _ = inner
                .store
                .release_activity(run.lease.id, &inner.owner)
                .await;
        });
    }
}

pub(super) async fn complete_workflow(
    inner: &Arc<Inner>,
    response: WorkflowResponse,
) -> Result<(), WorkflowError> {
    let ended = events::ends_execution(&response);
    let removed = {
        let mut state = inner.lock();
        let turn = state.turns.remove(&response.instance_id);
        if let Some(t) = &turn {
            state.committing += 1;
            if ended && let Some(cache) = state.cached.get_mut(&t.worker) {
                // A worker drops what it kept of an execution that ended.
                cache.remove(&response.instance_id);
            }
        }
        turn
    };
    let Some(turn) = removed else {
        return Err(WorkflowError::NotFound(format!(
            "{} (no turn of it is in flight on this sidecar)",
            response.instance_id
        )));
    };
    let counted = Counted::new(inner, |s| &mut s.committing);
    let commit = turn::apply(&turn.meta, turn.turn, response, now_ms());
    let result = inner.store.commit_turn(&inner.owner, commit).await;
    drop(counted);
    inner.woke();
    match result {
        Err(WorkflowError::LeaseLost(id)) => {
            tracing::warn!(
                instance = id,
                "workflow: lease lost before the turn committed; another sidecar runs it"
            );
            Ok(())
        }
        other => other,
    }
}

pub(super) async fn complete_activity(
    inner: &Arc<Inner>,
    response: ActivityResponse,
) -> Result<(), WorkflowError> {
    let key = activity_key(&response.instance_id, response.task_id);
    let removed = {
        let mut state = inner.lock();
        let run = state.activities.remove(&key);
        if run.is_some() {
            state.completing += 1;
        }
        run
    };
    let Some(run) = removed else {
        return Err(WorkflowError::NotFound(format!(
            "{} (no activity {} of it is in flight on this sidecar)",
            response.instance_id, response.task_id
        )));
    };
    let counted = Counted::new(inner, |s| &mut s.completing);
    let request = &run.lease.task.request;
    let now = now_ms();
    let kind = match response.failure_details {
        Some(failure) => EventType::TaskFailed(TaskFailedEvent {
            task_scheduled_id: response.task_id,
            failure_details: Some(failure),
            task_execution_id: request.task_execution_id.clone(),
            attestation: None,
            signer_certificate: None,
        }),
        None => EventType::TaskCompleted(TaskCompletedEvent {
            task_scheduled_id: response.task_id,
            result: response.result,
            task_execution_id: request.task_execution_id.clone(),
            attestation: None,
            signer_certificate: None,
        }),
    };
    let message = Message {
        app_id: run.lease.task.workflow_app_id.clone(),
        instance_id: response.instance_id.clone(),
        execution_id: request
            .workflow_instance
            .as_ref()
            .and_then(|w| w.execution_id.clone()),
        event: events::event(now, kind),
        visible_at: now,
    };
    let result = inner.store.complete_activity(run.lease.id, message).await;
    drop(counted);
    inner.wake.notify_one();
    result
}

/// Takes one off a write counter of [`State`] when dropped, so a write that fails, or whose
/// caller goes away mid-write, is uncounted too. The count was raised under the same lock
/// that took the work out of the in-flight map.
struct Counted<'a> {
    inner: &'a Inner,
    field: fn(&mut State) -> &mut usize,
}

impl<'a> Counted<'a> {
    fn new(inner: &'a Inner, field: fn(&mut State) -> &mut usize) -> Self {
        Counted { inner, field }
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        let n = (self.field)(&mut state);
        *n = n.saturating_sub(1);
    }
}
