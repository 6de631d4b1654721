//! Assembling and running one sidecar.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use trellis_nameres::{AppRef, Balancer, BuildContext, Registration};

use crate::api;
use crate::config::SidecarConfig;
use crate::health::{self, Health};
use crate::invoke::{Caller, Invoker};
use crate::pubsub::PubSubs;
use crate::runtime::{ComponentSummary, Runtime, RuntimeParts};
use crate::server::Port;
use crate::state::StateStores;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read the address of a listener: {0}")]
    Listener(#[source] std::io::Error),
    #[error("name resolution: {0}")]
    NameResolution(#[from] trellis_nameres::ResolveError),
    #[error("invalid components:\n{}", .0.join("\n"))]
    Components(Vec<String>),
    #[error(transparent)]
    InvalidAppId(#[from] trellis_nameres::InvalidAppId),
    #[error("mtls: {0}")]
    Mtls(#[from] trellis_mtls::MtlsError),
    #[error(
        "spec.accessControl needs mTLS between sidecars (a caller's identity comes from its certificate); remove spec.mtls.enabled: false"
    )]
    AccessControlWithoutMtls,
    #[error("tracing: {0}")]
    Tracing(String),
}

/// Entry point: see [`Sidecar::start`].
#[derive(Debug)]
pub struct Sidecar;

/// The sockets a sidecar serves, bound by the caller (so tests can use port 0).
#[derive(Debug)]
pub struct Listeners {
    /// The Dapr HTTP API.
    pub http: TcpListener,
    /// The sidecar-to-sidecar port.
    pub internal: TcpListener,
    /// The Dapr gRPC API; `None` serves none.
    pub grpc: Option<TcpListener>,
    /// `GET /metrics`; `None` serves none (metrics are still recorded unless disabled).
    pub metrics: Option<TcpListener>,
}

/// A started sidecar. Dropping it without [`RunningSidecar::stop`] aborts its servers.
#[derive(Debug)]
pub struct RunningSidecar {
    pub http_addr: SocketAddr,
    pub internal_addr: SocketAddr,
    pub grpc_addr: Option<SocketAddr>,
    /// Where `GET /metrics` is served, when it is.
    pub metrics_addr: Option<SocketAddr>,
    runtime: Arc<Runtime>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Sidecar {
    /// Starts serving the Dapr API on `http` and peer traffic on `internal`, registers with
    /// name resolution, and begins waiting for the app. Returns as soon as both servers
    /// accept connections; `GET /v1.0/healthz` turns 204 when the app is up.
    pub async fn start(
        config: SidecarConfig,
        http: TcpListener,
        internal: TcpListener,
    ) -> Result<RunningSidecar, StartError> {
        let listeners = Listeners {
            http,
            internal,
            grpc: None,
            metrics: None,
        };
        Self::serve(config, listeners).await
    }

    /// As [`Sidecar::start`], also serving the gRPC API when `listeners.grpc` is given.
    pub async fn serve(
        config: SidecarConfig,
        listeners: Listeners,
    ) -> Result<RunningSidecar, StartError> {
        let Listeners {
            http,
            internal,
            grpc,
            metrics: metrics_listener,
        } = listeners;
        let http_addr = http.local_addr().map_err(StartError::Listener)?;
        let internal_addr = internal.local_addr().map_err(StartError::Listener)?;
        let grpc_addr = match &grpc {
            Some(l) => Some(l.local_addr().map_err(StartError::Listener)?),
            None => None,
        };
        // The one metrics handle of this sidecar, passed down to every place that records.
        let metrics_on = config.enable_metrics
            && config
                .configuration
                .as_ref()
                .and_then(|c| c.spec.metrics.as_ref())
                .is_none_or(|m| m.enabled);
        let metrics = match metrics_on {
            true => crate::metrics::Metrics::new(&config.app_id, &config.namespace),
            false => crate::metrics::Metrics::disabled(),
        };
        let metrics_addr = match (&metrics_listener, metrics_on) {
            (Some(l), true) => Some(l.local_addr().map_err(StartError::Listener)?),
            _ => None,
        };
        // The CLI has checked both already; a library caller gets the same rule here.
        let me = AppRef::new(config.app_id.clone(), config.namespace.clone())?;

        let registries = crate::components::Registries::default();
        check_components(&config, &registries)?;
        // Secret stores first: the other components' metadata may name their secrets.
        let secrets = crate::secrets::SecretStores::open(&config, &registries)
            .await
            .map_err(StartError::Components)?;
        let mut config = config;
        crate::secrets::resolve_refs(&mut config.resources, &secrets)
            .await
            .map_err(StartError::Components)?;
        let config = config;
        let state = StateStores::open(&config, &registries)
            .await
            .map_err(StartError::Components)?;
        let pubsub = PubSubs::open(&config, &registries)
            .await
            .map_err(StartError::Components)?;
        let lock = crate::lock::LockStores::open(&config, &registries)
            .await
            .map_err(StartError::Components)?;
        let configuration = crate::configuration::ConfigurationStores::open(&config, &registries)
            .await
            .map_err(StartError::Components)?;
        let workflows = crate::workflow::Workflows::open(&config, &registries)
            .map_err(StartError::Components)?;
        let jobs = crate::jobs::Jobs::open(&config, &registries)
            .map_err(StartError::Components)?
            .map(Arc::new);
        let http_pipeline = crate::api::middleware::Pipeline::open(
            &config,
            &registries,
            crate::api::middleware::Calls::ToSidecar,
        )
        .await
        .map_err(StartError::Components)?;
        // Opened (and checked) even without an app port: a bad reference is a bad file.
        let app_pipeline = crate::api::middleware::Pipeline::open(
            &config,
            &registries,
            crate::api::middleware::Calls::ToApp,
        )
        .await
        .map_err(StartError::Components)?;
        let tracer = crate::trace::tracer(
            config
                .configuration
                .as_ref()
                .and_then(|c| c.spec.tracing.as_ref()),
            &me.app_id,
        )
        .map_err(StartError::Tracing)?;
        if let Some(tracer) = &tracer {
            metrics.watch_tracer(tracer, &me.app_id);
        }
        // Resiliency: the outbound policies go on the components here, once, before
        // anything holds them; invocation and delivery get the same merged policies below.
        let resiliency = Arc::new(
            crate::resiliency::Resiliency::new(&config.resources.resiliencies, &config.app_id)
                .with_metrics(metrics.clone())
                .with_tracer(tracer.clone()),
        );
        let (state, pubsub, lock, configuration) = crate::resiliency::outbound::apply(
            &resiliency,
            &metrics,
            state,
            pubsub,
            lock,
            configuration,
        );
        let declarative =
            crate::subscriptions::declarative(&config, &pubsub).map_err(StartError::Components)?;
        let mut components: Vec<ComponentSummary> = state
            .iter()
            .map(|s| ComponentSummary {
                name: s.name.clone(),
                type_name: s.type_name.clone(),
                version: s.version.clone(),
                capabilities: s
                    .capabilities
                    .names()
                    .iter()
                    .map(|c| c.to_string())
                    .collect(),
            })
            .collect();
        components.extend(pubsub.iter().map(|p| ComponentSummary {
            name: p.name.clone(),
            type_name: p.type_name.clone(),
            version: p.version.clone(),
            capabilities: pubsub_capabilities(p.capabilities),
        }));
        components.extend(secrets.iter().map(|s| ComponentSummary {
            name: s.name.clone(),
            type_name: s.type_name.clone(),
            version: s.version.clone(),
            capabilities: Vec::new(),
        }));
        components.extend(lock.iter().map(|l| ComponentSummary {
            name: l.name.clone(),
            type_name: l.type_name.clone(),
            version: l.version.clone(),
            capabilities: Vec::new(),
        }));
        components.extend(configuration.iter().map(|c| ComponentSummary {
            name: c.name.clone(),
            type_name: c.type_name.clone(),
            version: c.version.clone(),
            capabilities: Vec::new(),
        }));
        components.extend(workflows.iter().map(|w| ComponentSummary {
            name: w.name.clone(),
            type_name: w.type_name.clone(),
            version: "v1".to_string(),
            capabilities: Vec::new(),
        }));
        components.extend(jobs.iter().map(|j| ComponentSummary {
            name: j.name.clone(),
            type_name: j.type_name.clone(),
            version: "v1".to_string(),
            capabilities: Vec::new(),
        }));
        let names: Vec<&str> = components.iter().map(|c| c.name.as_str()).collect();
        resiliency.warn_unknown_components(&names);

        let (resolver_name, resolver_config) = config
            .configuration
            .as_ref()
            .and_then(|c| c.spec.name_resolution.as_ref())
            .map(|nr| (nr.component.clone(), nr.configuration.clone()))
            .unwrap_or_default();
        let resolver = trellis_nameres::build(
            &resolver_name,
            &resolver_config,
            &BuildContext {
                registry_dir: config.registry_dir(),
                me: Some(Registration {
                    app: me.clone(),
                    internal_address: advertised(internal_addr),
                    http_address: Some(advertised(http_addr)),
                    grpc_address: grpc_addr.map(advertised),
                    app_port: config.app.as_ref().map(|a| a.port),
                }),
            },
        )?;

        // mTLS: this sidecar's certificate (renewed in the background) on both ends of the
        // internal port.
        let identity = match &config.mtls {
            Some(m) => Some(trellis_mtls::WorkloadIdentity::new(
                trellis_mtls::SpiffeId::new(&m.trust_domain, &me.namespace, &me.app_id),
                m.authority.clone(),
                m.certs,
            )?),
            None => None,
        };
        let (acceptor, peer_tls) = match &identity {
            Some(identity) => (
                Some(trellis_mtls::TlsAcceptor::from(
                    trellis_mtls::tls::server_config(identity)?,
                )),
                Some(crate::invoke::PeerTls {
                    connector: trellis_mtls::TlsConnector::from(trellis_mtls::tls::client_config(
                        identity,
                    )?),
                    trust_domain: identity.id().trust_domain.clone(),
                }),
            ),
            None => (None, None),
        };
        let acl = config
            .configuration
            .as_ref()
            .and_then(|c| c.spec.access_control.as_ref())
            .map(crate::acl::AccessControl::new);
        if acl.is_some() && config.mtls.is_none() {
            return Err(StartError::AccessControlWithoutMtls);
        }
        let health = Arc::new(Health::default());
        // The app pipeline outside the metrics: they time what reached the app.
        let app_channel = config.app.as_ref().map(|app| {
            let channel = crate::invoke::open_app_channel(app, config.app_api_token.as_deref());
            let channel = crate::metrics::app_channel::wrap(channel, &metrics);
            crate::api::middleware::on_app_channel(channel, app_pipeline, app.protocol)
        });
        let invoker = Invoker::new(
            Caller::new(me.clone()),
            Balancer::new(resolver),
            app_channel.clone(),
            config.peer_keepalive,
            crate::invoke::BuiltinRetries::from_resiliencies(&config.resources.resiliencies)
                .unwrap_or(config.builtin_retries),
            peer_tls,
            resiliency.clone(),
        )
        .with_metrics(metrics.clone());
        let (stop, _) = watch::channel(false);
        let runtime = Arc::new(Runtime::new(RuntimeParts {
            app: me,
            invoker,
            app_channel: app_channel.clone(),
            app_config: config.app.clone(),
            health: health.clone(),
            state,
            pubsub,
            secrets,
            lock,
            configuration,
            workflows,
            jobs: jobs.clone(),
            acl,
            api_allowlist: config
                .configuration
                .as_ref()
                .and_then(|c| c.spec.api.as_ref())
                .and_then(crate::api::ApiAllowlist::new),
            http_pipeline,
            allowed_origins: config.allowed_origins.clone(),
            components,
            http_endpoints: config
                .resources
                .http_endpoints
                .iter()
                .map(|e| e.meta.name.clone())
                .collect(),
            enabled_features: config
                .configuration
                .as_ref()
                .map(|c| {
                    c.spec
                        .features
                        .iter()
                        .filter(|f| f.enabled)
                        .map(|f| f.name.clone())
                        .collect()
                })
                .unwrap_or_default(),
            max_request_body: config.max_request_body,
            api_token: config.api_token.clone(),
            enable_api_logging: config.enable_api_logging,
            extended: config.extended_metadata.clone(),
            delivery: config.delivery.clone(),
            resiliency,
            metrics: metrics.clone(),
            graceful_shutdown: config.graceful_shutdown,
            stopping: stop.subscribe(),
            tracer,
        }));

        let mut tasks = JoinSet::new();
        let stopped = |stop: &watch::Sender<bool>| {
            let mut rx = stop.subscribe();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        tasks.spawn(crate::server::serve(
            http,
            Port::Public,
            api::PublicApi::new(runtime.clone()),
            stopped(&stop),
            config.graceful_shutdown,
        ));
        if let Some(grpc) = grpc {
            tasks.spawn(crate::server::serve(
                grpc,
                Port::Grpc,
                api::grpc::api(runtime.clone()),
                stopped(&stop),
                config.graceful_shutdown,
            ));
        }
        if let (Some(listener), Some(_)) = (metrics_listener, metrics_addr) {
            tasks.spawn(crate::server::serve(
                listener,
                Port::Public,
                crate::metrics::server::router(metrics, health.clone()),
                stopped(&stop),
                config.graceful_shutdown,
            ));
        }
        tasks.spawn(crate::server::serve(
            internal,
            Port::Internal(acceptor),
            api::internal_api(runtime.clone()),
            stopped(&stop),
            config.graceful_shutdown,
        ));
        if let Some(identity) = identity {
            let stopping = stopped(&stop);
            tasks.spawn(async move {
                tokio::select! {
                    () = identity.keep_renewed() => {}
                    () = stopping => {}
                }
            });
        }
        health.set_outbound_ready();
        if let (Some(jobs), Some(channel)) = (&jobs, &app_channel) {
            jobs.deliver_to(channel.clone(), health.clone(), stop.subscribe());
        }
        match &app_channel {
            Some(channel) => {
                tasks.spawn(crate::delivery::run(
                    runtime.clone(),
                    channel.clone(),
                    declarative,
                    stop.subscribe(),
                ));
            }
            None if !declarative.is_empty() => tracing::warn!(
                "declarative subscriptions need an app to deliver to (--app-port); none are delivered"
            ),
            None => {}
        }
        match (&config.app, app_channel) {
            (Some(app), Some(channel)) => {
                let watcher = health::watch_app(health.clone(), app.clone(), channel);
                let mut stop_rx = stop.subscribe();
                tasks.spawn(async move {
                    tokio::select! {
                        () = watcher => {}
                        _ = stop_rx.wait_for(|s| *s) => {}
                    }
                });
            }
            _ => health.set_app_ready(),
        }
        tracing::info!(
            app_id = %runtime.app.app_id,
            http = %http_addr,
            grpc = ?grpc_addr,
            internal = %internal_addr,
            metrics = ?metrics_addr,
            mtls = config.mtls.is_some(),
            resolver = runtime.invoker.resolver_kind(),
            "sidecar started"
        );
        Ok(RunningSidecar {
            http_addr,
            internal_addr,
            grpc_addr,
            metrics_addr,
            runtime,
            stop,
            tasks,
        })
    }
}

impl RunningSidecar {
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Resolves when `POST /v1.0/shutdown` was called.
    pub async fn shutdown_requested(&self) {
        self.runtime.shutdown_requested().await;
    }

    /// Stops advertising this sidecar, stops accepting, lets in-flight requests finish
    /// (up to the graceful-shutdown time), and returns when everything has stopped.
    pub async fn stop(mut self) {
        self.runtime.invoker.withdraw();
        self.stop.send_replace(true);
        while self.tasks.join_next().await.is_some() {}
        tracing::debug!(app_id = %self.runtime.app.app_id, "sidecar stopped");
    }
}

/// Capability names as Dapr's metadata API lists them for a pub/sub.
fn pubsub_capabilities(c: trellis_pubsub::Capabilities) -> Vec<String> {
    let mut names = Vec::new();
    if c.bulk_publish {
        names.push("BULK_PUBLISH".to_string());
    }
    if c.ttl {
        names.push("TTL".to_string());
    }
    names
}

/// The address peers should dial: a wildcard bind is reachable through loopback.
fn advertised(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = match addr {
            SocketAddr::V4(_) => std::net::IpAddr::from([127, 0, 0, 1]),
            SocketAddr::V6(_) => std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

/// Every component must be of a type this build knows; all unknown ones are reported at
/// once, with their locations.
fn check_components(
    config: &SidecarConfig,
    registries: &crate::components::Registries,
) -> Result<(), StartError> {
    let errors: Vec<String> = config
        .resources
        .components
        .iter()
        .filter_map(|c| {
            registries
                .check(&c.type_name, &c.version)
                .err()
                .map(|err| format!("{}: spec.type: {err}", c.location))
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(StartError::Components(errors))
    }
}
