//! The jobs (scheduler) of one sidecar: its job store (a `scheduler.*` component, or the
//! embedded store on `<data-dir>/jobs.db`), the scheduler over it, and the trigger that
//! delivers due jobs to the app through the [`AppChannel`].
//!
//! The scheduler opens on first use, so that apps that never schedule a job pay nothing
//! for it, except when there may be jobs already (the embedded file exists, or a
//! component is configured): then it opens when the sidecar starts, so that jobs survive
//! a restart and a tick missed while the sidecar was down fires (once) when it is back.
//! Jobs belong to `<namespace>||<app-id>`; only this app's sidecars trigger them.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{OnceCell, watch};
use trellis_jobs::{
    JobError, Metadata, Scheduler, SchedulerOptions, StoredJob, Trigger, TriggerOutcome,
};
use trellis_resources::Component;

use crate::components::{EMBEDDED_JOBS_TYPE, JobsFactory, Registries};
use crate::config::SidecarConfig;
use crate::health::Health;
use crate::invoke::{AppCall, AppChannel};
use crate::loading::{self, Embedded};

/// The name the embedded job store is listed under.
pub const DEFAULT_STORE_NAME: &str = "jobstore";

/// Where triggers go, and the sidecar's stop signal that ends them.
type Delivery = (Arc<dyn Trigger>, watch::Receiver<bool>);

/// The app's job store and, once used, its scheduler.
pub struct Jobs {
    /// The component's name and type, for `/v1.0/metadata`.
    pub name: String,
    pub type_name: String,
    factory: JobsFactory,
    metadata: Metadata,
    options: SchedulerOptions,
    /// Jobs may exist already: open at start.
    eager: bool,
    scheduler: OnceCell<Scheduler>,
    /// Where triggers go, once the sidecar has an app to send them to; taken when the
    /// trigger loop starts.
    trigger: Mutex<Option<Delivery>>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("name", &self.name)
            .field("type_name", &self.type_name)
            .field("started", &self.scheduler.initialized())
            .finish_non_exhaustive()
    }
}

impl Jobs {
    /// Picks the app's job store: its one `scheduler.*` component, or the embedded store.
    /// `None` when this build has no job store at all.
    pub fn open(
        config: &SidecarConfig,
        registries: &Registries,
    ) -> Result<Option<Self>, Vec<String>> {
        let embedded = Embedded::if_registered(
            &registries.jobs,
            DEFAULT_STORE_NAME,
            EMBEDDED_JOBS_TYPE,
            "jobs.db",
        );
        let Some(component) =
            loading::select_one(config, "scheduler", "job stores (scheduler.*)", embedded)?
        else {
            return Ok(None);
        };
        Self::from_component(&component, config, registries)
            .map(Some)
            .map_err(|e| vec![format!("job store {}: {e}", component.meta.name)])
    }

    fn from_component(
        component: &Component,
        config: &SidecarConfig,
        registries: &Registries,
    ) -> Result<Self, String> {
        let factory = registries
            .jobs
            .get(&component.type_name, &component.version)
            .map_err(|e| format!("spec.type: {e}"))?;
        let metadata = Metadata::new(&component.meta.name, loading::plain_metadata(component)?);
        let mut options = SchedulerOptions::new(app_key(&config.namespace, &config.app_id));
        // Trellis extensions: how long a dead sidecar's ticks stay its own, and how often
        // other processes' changes are looked for.
        if let Some(lease) = metadata
            .duration("leaseDuration")
            .map_err(|e| e.to_string())?
        {
            if lease < Duration::from_secs(1) {
                return Err("spec.metadata leaseDuration: must be at least 1s".into());
            }
            options.lease = lease;
        }
        if let Some(poll) = metadata
            .duration("pollInterval")
            .map_err(|e| e.to_string())?
        {
            options.poll = poll.max(Duration::from_millis(1));
        }
        let eager = if loading::is_built_in(component) {
            metadata
                .get("connectionString")
                .map(PathBuf::from)
                .is_some_and(|p| p.exists())
        } else {
            true
        };
        Ok(Jobs {
            name: component.meta.name.clone(),
            type_name: component.type_name.clone(),
            factory: *factory,
            metadata,
            options,
            eager,
            scheduler: OnceCell::new(),
            trigger: Mutex::new(None),
        })
    }

    /// The scheduler, opening the store on first use (and starting to trigger, when the
    /// sidecar has an app).
    pub async fn scheduler(&self) -> Result<&Scheduler, JobError> {
        self.scheduler
            .get_or_try_init(|| async {
                let store = (self.factory)(self.metadata.clone()).await?;
                tracing::debug!(store = self.name, "job scheduler opened");
                Ok(Scheduler::new(store, self.options.clone()))
            })
            .await
            .inspect(|s| self.start_triggering(s))
    }

    /// Starts the trigger loop once both the scheduler and the app's channel are there
    /// (whichever comes second starts it; the mutex makes it once).
    fn start_triggering(&self, scheduler: &Scheduler) {
        let delivery = self
            .trigger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((trigger, stop)) = delivery {
            tokio::spawn(scheduler.clone().run(trigger, stop));
        }
    }

    /// The scheduler if it has opened.
    pub fn started(&self) -> Option<&Scheduler> {
        self.scheduler.get()
    }

    /// Triggers due jobs through `channel` from now on, until `stop`; opens the store now
    /// if jobs may exist already.
    pub fn deliver_to(
        self: &Arc<Self>,
        channel: Arc<dyn AppChannel>,
        health: Arc<Health>,
        stop: watch::Receiver<bool>,
    ) {
        let trigger: Arc<dyn Trigger> = Arc::new(AppTrigger { channel, health });
        *self.trigger.lock().unwrap_or_else(|p| p.into_inner()) = Some((trigger, stop));
        if let Some(scheduler) = self.scheduler.get() {
            self.start_triggering(scheduler);
        }
        if self.eager {
            let jobs = self.clone();
            tokio::spawn(async move {
                if let Err(e) = jobs.scheduler().await {
                    tracing::warn!(store = jobs.name, error = %e, "cannot open the job store");
                }
            });
        }
    }
}

/// The key a job store files an app's jobs under.
pub fn app_key(namespace: &str, app_id: &str) -> String {
    format!("{namespace}||{app_id}")
}

/// Sends a due job to the app: `POST /job/<name>` (`OnJobEvent` for a gRPC app), once the
/// app is up; a 2xx answer is a delivery, anything else a failure.
struct AppTrigger {
    channel: Arc<dyn AppChannel>,
    health: Arc<Health>,
}

#[async_trait]
impl Trigger for AppTrigger {
    async fn trigger(&self, job: &StoredJob) -> TriggerOutcome {
        // A tick that comes due while the app is still starting waits for it rather than
        // using up its retries.
        self.health.wait_ready().await;
        let (path, req) = crate::api::ops::jobs::trigger_request(job);
        debug_assert!(matches!(
            req.extensions().get::<AppCall>(),
            Some(AppCall::JobEvent { .. })
        ));
        match self.channel.call(&path, req).await {
            Ok(resp) if resp.status().is_success() => TriggerOutcome::Delivered,
            Ok(resp) => TriggerOutcome::Failed(format!("the app answered {}", resp.status())),
            Err(e) => TriggerOutcome::Failed(e.to_string()),
        }
    }
}
