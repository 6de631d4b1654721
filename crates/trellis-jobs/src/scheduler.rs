//! One sidecar's scheduler: the app's job operations, and the loop that triggers its due
//! jobs.
//!
//! The loop sleeps until the app's earliest due job (`next_due`), woken early by this
//! sidecar's own changes (a schedule, a settled trigger), and at least every `poll` to
//! hear of other processes' changes. When woken it leases what is due (a batch at a time,
//! at most `max_in_flight` triggers running), triggers each job through the [`Trigger`]
//! and settles the outcome: the next tick, a retry by the failure policy, or the end of
//! the job. Leases live in the store, so replicas of an app share the triggers and each
//! tick fires once between them; nothing of a job lives only in memory.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, Semaphore, watch};

use crate::schedule::{self, next_tick};
use crate::store::{JobStore, Settle, StoredJob};
use crate::{FailurePolicy, JobError, JobSpec, Millis, now_ms};

/// How a scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// The app whose jobs this scheduler serves (`<namespace>||<app-id>`).
    pub app: String,
    /// How long a leased tick stays this sidecar's; a trigger gets half of it.
    pub lease: Duration,
    /// How often the store is asked for changes other processes made.
    pub poll: Duration,
    /// Triggers running at once.
    pub max_in_flight: usize,
    /// The most jobs one lease takes.
    pub batch: usize,
}

impl SchedulerOptions {
    pub fn new(app: impl Into<String>) -> Self {
        SchedulerOptions {
            app: app.into(),
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(100),
            max_in_flight: 4096,
            batch: 1024,
        }
    }
}

/// How a trigger went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerOutcome {
    Delivered,
    /// The app failed it or could not be reached; the failure policy decides.
    Failed(String),
}

/// Delivers a due job to the app.
#[async_trait]
pub trait Trigger: Send + Sync + 'static {
    async fn trigger(&self, job: &StoredJob) -> TriggerOutcome;
}

/// A sidecar's scheduler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn JobStore>,
    opts: SchedulerOptions,
    /// This scheduler's name on the leases it takes.
    owner: String,
    wake: Notify,
}

impl Scheduler {
    pub fn new(store: Arc<dyn JobStore>, opts: SchedulerOptions) -> Scheduler {
        let owner = format!("{}-{}", opts.app, uuid::Uuid::new_v4().simple());
        Scheduler {
            inner: Arc::new(Inner {
                store,
                opts,
                owner,
                wake: Notify::new(),
            }),
        }
    }

    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.inner.store
    }

    pub fn app(&self) -> &str {
        &self.inner.opts.app
    }

    /// Schedules a job (replacing one of the same name only with `overwrite`).
    pub async fn schedule(&self, spec: &JobSpec, overwrite: bool) -> Result<(), JobError> {
        let timing = schedule::plan(spec, now_ms())?;
        self.inner
            .store
            .put(self.app(), spec, timing, overwrite)
            .await?;
        self.inner.wake.notify_one();
        Ok(())
    }

    pub async fn get(&self, name: &str) -> Result<Option<StoredJob>, JobError> {
        self.inner.store.get(self.app(), name).await
    }

    pub async fn delete(&self, name: &str) -> Result<bool, JobError> {
        self.inner.store.delete(self.app(), name).await
    }

    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, JobError> {
        self.inner.store.delete_prefix(self.app(), prefix).await
    }

    pub async fn list(&self) -> Result<Vec<StoredJob>, JobError> {
        self.inner.store.list(self.app()).await
    }

    /// Triggers the app's due jobs through `trigger` until `stop` turns true; then waits
    /// for the triggers in flight to finish (up to the lease's trigger time).
    pub async fn run(self, trigger: Arc<dyn Trigger>, mut stop: watch::Receiver<bool>) {
        let inner = self.inner;
        let slots = Arc::new(Semaphore::new(inner.opts.max_in_flight.max(1)));
        let until_stop = |stop: &watch::Receiver<bool>| *stop.borrow();
        tracing::debug!(
            app = inner.opts.app,
            owner = inner.owner,
            "job scheduler started"
        );
        while !until_stop(&stop) {
            let free = slots.available_permits().min(inner.opts.batch.max(1));
            if free == 0 {
                // Every slot is busy: wait for one, then lease again.
                tokio::select! {
                    permit = slots.clone().acquire_owned() => drop(permit),
                    _ = stop.changed() => {}
                }
                continue;
            }
            let now = now_ms();
            let until = now.saturating_add(millis(inner.opts.lease));
            match inner
                .store
                .lease_due(&inner.opts.app, &inner.owner, now, until, free)
                .await
            {
                Ok(jobs) => {
                    let full = jobs.len() >= free;
                    for job in jobs {
                        let Ok(permit) = slots.clone().acquire_owned().await else {
                            break;
                        };
                        let (inner, trigger) = (inner.clone(), trigger.clone());
                        tokio::spawn(async move {
                            fire(&inner, trigger.as_ref(), job).await;
                            drop(permit);
                        });
                    }
                    if full {
                        continue;
                    }
                }
                Err(e) => {
                    tracing::warn!(app = inner.opts.app, error = %e, "jobs: cannot lease due jobs")
                }
            }
            let pause = match inner.store.next_due(&inner.opts.app).await {
                Ok(Some(due)) => Duration::from_millis(
                    u64::try_from(due.saturating_sub(now_ms()))
                        .unwrap_or(0)
                        .max(1),
                )
                .min(inner.opts.poll),
                Ok(None) => inner.opts.poll,
                Err(e) => {
                    tracing::warn!(app = inner.opts.app, error = %e, "jobs: cannot read the next due time");
                    inner.opts.poll
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = inner.wake.notified() => {}
                _ = stop.changed() => {}
            }
        }
        // Let the triggers in flight settle, so their ticks are not left leased.
        let all = u32::try_from(inner.opts.max_in_flight.max(1)).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(inner.opts.lease / 2, slots.acquire_many(all)).await;
        tracing::debug!(app = inner.opts.app, "job scheduler stopped");
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Triggers one leased job and settles the outcome.
async fn fire(inner: &Arc<Inner>, trigger: &dyn Trigger, job: StoredJob) {
    let outcome = match tokio::time::timeout(inner.opts.lease / 2, trigger.trigger(&job)).await {
        Ok(outcome) => outcome,
        Err(_) => TriggerOutcome::Failed("the app did not answer in time".into()),
    };
    if let TriggerOutcome::Failed(reason) = &outcome {
        tracing::debug!(
            app = inner.opts.app,
            job = job.spec.name,
            attempt = job.attempts + 1,
            reason,
            "job trigger failed"
        );
    }
    let settle = decide(&job, &outcome, now_ms());
    match inner
        .store
        .settle(&job.app, &job.spec.name, &inner.owner, job.version, settle)
        .await
    {
        // Its next tick may be sooner than what the loop sleeps for.
        Ok(true) => inner.wake.notify_one(),
        Ok(false) => tracing::debug!(job = job.spec.name, "job replaced or deleted while it ran"),
        Err(e) => tracing::warn!(job = job.spec.name, error = %e, "jobs: cannot record a trigger"),
    }
}

/// What becomes of a tick after a trigger: a retry by the failure policy, the next tick,
/// or the end of the job. A failed tick that the policy gives up on counts as done.
pub fn decide(job: &StoredJob, outcome: &TriggerOutcome, now: Millis) -> Settle {
    if let (
        TriggerOutcome::Failed(_),
        FailurePolicy::Constant {
            interval,
            max_retries,
        },
    ) = (outcome, job.spec.failure_policy)
        && max_retries.is_none_or(|m| job.attempts < m)
    {
        return Settle::Next {
            tick: job.tick,
            due_at: now.saturating_add(millis(interval)),
            count: job.count,
            attempts: job.attempts.saturating_add(1),
        };
    }
    let count = job.count.saturating_add(1);
    match next_tick(&job.spec, job.expires, job.tick, count, now) {
        Some(tick) => Settle::Next {
            tick,
            due_at: tick,
            count,
            attempts: 0,
        },
        None => Settle::Finish,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(schedule: Option<&str>, policy: FailurePolicy) -> StoredJob {
        StoredJob {
            app: "a".into(),
            spec: JobSpec {
                name: "j".into(),
                schedule: schedule.map(str::to_string),
                failure_policy: policy,
                ..JobSpec::default()
            },
            expires: None,
            tick: 1_000,
            due_at: 1_000,
            count: 0,
            attempts: 0,
            version: 1,
        }
    }

    #[test]
    fn failures_retry_by_the_policy_then_the_tick_is_dropped() {
        let failed = TriggerOutcome::Failed("500".into());
        let mut j = job(Some("@every 10s"), FailurePolicy::default());
        assert_eq!(
            decide(&j, &failed, 1_050),
            Settle::Next {
                tick: 1_000,
                due_at: 2_050,
                count: 0,
                attempts: 1
            }
        );
        j.attempts = 3;
        assert_eq!(
            decide(&j, &failed, 4_000),
            Settle::Next {
                tick: 11_000,
                due_at: 11_000,
                count: 1,
                attempts: 0
            },
            "after three retries the tick is given up"
        );
        let drop = job(Some("@every 10s"), FailurePolicy::Drop);
        assert!(matches!(
            decide(&drop, &failed, 1_000),
            Settle::Next {
                count: 1,
                attempts: 0,
                ..
            }
        ));
        let one_shot = job(None, FailurePolicy::Drop);
        assert_eq!(
            decide(&one_shot, &TriggerOutcome::Delivered, 1_000),
            Settle::Finish
        );
        assert_eq!(decide(&one_shot, &failed, 1_000), Settle::Finish);
    }
}
