//! The state one running sidecar shares between its API handlers and background tasks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use trellis_nameres::AppRef;

use crate::config::{AppChannelConfig, DeliveryPolicy};
use crate::configuration::ConfigurationStores;
use crate::health::Health;
use crate::invoke::{AppChannel, Invoker};
use crate::lock::LockStores;
use crate::pubsub::PubSubs;
use crate::secrets::SecretStores;
use crate::state::StateStores;
use crate::subscriptions::SubscriptionSpec;

/// Counts of what happened to delivered messages, for logs and tests.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Subscriptions that joined their consumer group.
    pub subscribed: AtomicU64,
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub dropped: AtomicU64,
    pub dead_lettered: AtomicU64,
}

impl DeliveryStats {
    pub fn subscribed(&self) -> u64 {
        self.subscribed.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }
}

/// A streaming subscription's entry in the metadata API; dropping it removes the entry.
#[derive(Debug)]
pub struct ListedStream {
    rt: Arc<Runtime>,
    id: u64,
}

impl Drop for ListedStream {
    fn drop(&mut self) {
        self.rt
            .streams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(id, _)| *id != self.id);
    }
}

/// What the metadata API lists about a loaded component.
#[derive(Debug, Clone)]
pub struct ComponentSummary {
    pub name: String,
    pub type_name: String,
    pub version: String,
    pub capabilities: Vec<String>,
}

#[derive(Debug)]
pub struct Runtime {
    pub app: AppRef,
    pub invoker: Invoker,
    pub app_channel: Option<Arc<dyn AppChannel>>,
    pub app_config: Option<AppChannelConfig>,
    pub health: Arc<Health>,
    pub state: StateStores,
    pub pubsub: PubSubs,
    pub secrets: SecretStores,
    pub lock: LockStores,
    pub configuration: ConfigurationStores,
    /// The live configuration subscriptions, by id.
    pub config_subscriptions: crate::configuration_updates::ConfigSubscriptions,
    /// The workflow backend and engine (`None`: this build has no backend).
    pub workflows: Option<crate::workflow::Workflows>,
    /// The job store and scheduler (`None`: this build has no job store).
    pub jobs: Option<Arc<crate::jobs::Jobs>>,
    /// `spec.accessControl`, applied to calls arriving on the internal port.
    pub acl: Option<crate::acl::AccessControl>,
    /// `spec.api`: the Dapr APIs the app may call.
    pub api_allowlist: Option<crate::api::ApiAllowlist>,
    /// `spec.httpPipeline`, run before the public HTTP API's routes.
    pub http_pipeline: crate::api::middleware::Pipeline,
    /// `--allowed-origins` (empty: no CORS handling).
    pub allowed_origins: Vec<String>,
    pub delivery_stats: DeliveryStats,
    pub components: Vec<ComponentSummary>,
    pub http_endpoints: Vec<String>,
    pub enabled_features: Vec<String>,
    pub max_request_body: usize,
    pub api_token: Option<String>,
    pub enable_api_logging: bool,
    /// Retries and concurrency of deliveries, for every subscription.
    pub delivery: DeliveryPolicy,
    /// The app's Resiliency resources, merged (inbound policies of deliveries).
    pub resiliency: Arc<crate::resiliency::Resiliency>,
    /// The sidecar's Prometheus metrics (disabled: records nothing).
    pub metrics: crate::metrics::Metrics,
    /// How long work in progress may take to finish once the sidecar stops.
    pub graceful_shutdown: Duration,
    /// `spec.tracing`: the tracer every traced hop records with (`None`: tracing is off).
    pub tracer: Option<trellis_trace::Tracer>,
    /// Turns true when the sidecar stops; long-lived calls (streaming subscriptions) end.
    stopping: watch::Receiver<bool>,
    /// The app's subscriptions (declarative and programmatic), set once delivery starts.
    subscriptions: RwLock<Vec<SubscriptionSpec>>,
    /// Streaming subscriptions open right now, by a number of their own.
    streams: RwLock<Vec<(u64, SubscriptionSpec)>>,
    next_stream: AtomicU64,
    extended: RwLock<BTreeMap<String, String>>,
    shutdown_requested: watch::Sender<bool>,
}

/// Parts of [`Runtime`] that are set once at start-up.
#[derive(Debug)]
pub struct RuntimeParts {
    pub app: AppRef,
    pub invoker: Invoker,
    pub app_channel: Option<Arc<dyn AppChannel>>,
    pub app_config: Option<AppChannelConfig>,
    pub health: Arc<Health>,
    pub state: StateStores,
    pub pubsub: PubSubs,
    pub secrets: SecretStores,
    pub lock: LockStores,
    pub configuration: ConfigurationStores,
    pub workflows: Option<crate::workflow::Workflows>,
    pub jobs: Option<Arc<crate::jobs::Jobs>>,
    /// `spec.accessControl`, applied to calls arriving on the internal port.
    pub acl: Option<crate::acl::AccessControl>,
    /// `spec.api`: the Dapr APIs the app may call.
    pub api_allowlist: Option<crate::api::ApiAllowlist>,
    /// `spec.httpPipeline`, run before the public HTTP API's routes.
    pub http_pipeline: crate::api::middleware::Pipeline,
    /// `--allowed-origins` (empty: no CORS handling).
    pub allowed_origins: Vec<String>,
    pub components: Vec<ComponentSummary>,
    pub http_endpoints: Vec<String>,
    pub enabled_features: Vec<String>,
    pub max_request_body: usize,
    pub api_token: Option<String>,
    pub enable_api_logging: bool,
    pub extended: BTreeMap<String, String>,
    pub delivery: DeliveryPolicy,
    pub resiliency: Arc<crate::resiliency::Resiliency>,
    pub metrics: crate::metrics::Metrics,
    pub graceful_shutdown: Duration,
    /// The sidecar's stop signal (true once it stops).
    pub stopping: watch::Receiver<bool>,
    pub tracer: Option<trellis_trace::Tracer>,
}

impl Runtime {
    pub fn new(parts: RuntimeParts) -> Self {
        Self {
            app: parts.app,
            invoker: parts.invoker,
            app_channel: parts.app_channel,
            app_config: parts.app_config,
            health: parts.health,
            state: parts.state,
            pubsub: parts.pubsub,
            secrets: parts.secrets,
            lock: parts.lock,
            configuration: parts.configuration,
            config_subscriptions: Default::default(),
            workflows: parts.workflows,
            jobs: parts.jobs,
            acl: parts.acl,
            api_allowlist: parts.api_allowlist,
            http_pipeline: parts.http_pipeline,
            allowed_origins: parts.allowed_origins,
            delivery_stats: DeliveryStats::default(),
            delivery: parts.delivery,
            resiliency: parts.resiliency,
            metrics: parts.metrics,
            graceful_shutdown: parts.graceful_shutdown,
            stopping: parts.stopping,
            tracer: parts.tracer,
            subscriptions: RwLock::new(Vec::new()),
            streams: RwLock::new(Vec::new()),
            next_stream: AtomicU64::new(0),
            components: parts.components,
            http_endpoints: parts.http_endpoints,
            enabled_features: parts.enabled_features,
            max_request_body: parts.max_request_body,
            api_token: parts.api_token,
            enable_api_logging: parts.enable_api_logging,
            extended: RwLock::new(parts.extended),
            shutdown_requested: watch::channel(false).0,
        }
    }

    pub fn extended(&self) -> BTreeMap<String, String> {
        self.extended
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_extended(&self, key: String, value: String) {
        self.extended
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, value);
    }

    /// The subscriptions being delivered, as the metadata API lists them: the app's, then
    /// the streaming ones open now, oldest first.
    pub fn subscriptions(&self) -> Vec<SubscriptionSpec> {
        let mut subs = self
            .subscriptions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
        subs.extend(streams.iter().map(|(_, spec)| spec.clone()));
        subs
    }

    /// Sets the app's own subscriptions (streaming ones are listed by [`Runtime::list_stream`]).
    pub fn set_subscriptions(&self, subs: Vec<SubscriptionSpec>) {
        *self
            .subscriptions
            .write()
            .unwrap_or_else(|p| p.into_inner()) = subs;
    }

    /// Lists a streaming subscription until the returned guard is dropped.
    pub fn list_stream(self: &Arc<Self>, spec: SubscriptionSpec) -> ListedStream {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        self.streams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, spec));
        ListedStream {
            rt: self.clone(),
            id,
        }
    }

    /// The sidecar's stop signal: true once it is stopping.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.clone()
    }

    /// Asks the owner of this sidecar to shut it down (`POST /v1.0/shutdown`).
    pub fn request_shutdown(&self) {
        self.shutdown_requested.send_replace(true);
    }

    /// Resolves once a shutdown was requested through the API.
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shutdown_requested.subscribe();
        let _ = rx.wait_for(|requested| *requested).await;
    }
}
