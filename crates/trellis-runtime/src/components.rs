//! The one place where component types are registered, per building block.
//!
//! Each building block gets a [`Registry`] keyed by component type and version, mapping to
//! a factory that builds the component from its metadata. Backends are registered here
//! explicitly (behind their cargo features) so that `grep` finds every type the binary can
//! load. A component whose type is not registered is a start-up error that names the types
//! that are.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use trellis_configuration::{ConfigurationError, ConfigurationStore};
use trellis_jobs::{JobError, JobStore};
use trellis_lock::{LockError, LockStore};
use trellis_pubsub::{PubSub, PubSubError};
use trellis_resources::registry::Registry;
use trellis_secrets::{SecretError, SecretStore};
use trellis_workflow::{WorkflowError, WorkflowStore};

use crate::api::middleware::{self, HttpMiddleware};
use trellis_state::{Metadata, StateError, StateStore};

/// Builds a state store from its component metadata.
pub type StateFactory = fn(Metadata) -> BoxFuture<'static, Result<Arc<dyn StateStore>, StateError>>;

/// Builds a pub/sub broker from its component metadata.
pub type PubSubFactory =
    fn(trellis_pubsub::Metadata) -> BoxFuture<'static, Result<Arc<dyn PubSub>, PubSubError>>;

/// Builds a secret store from its component metadata and the process environment (which
/// `secretstores.local.env` reads).
pub type SecretFactory = fn(
    trellis_secrets::Metadata,
    crate::config::Environment,
) -> BoxFuture<'static, Result<Arc<dyn SecretStore>, SecretError>>;

/// Builds an HTTP middleware from its component metadata.
pub type MiddlewareFactory =
    fn(trellis_core::Metadata) -> BoxFuture<'static, Result<Arc<dyn HttpMiddleware>, String>>;

/// Builds a lock store from its component metadata.
pub type LockFactory =
    fn(trellis_lock::Metadata) -> BoxFuture<'static, Result<Arc<dyn LockStore>, LockError>>;

/// Builds a configuration store from its component metadata.
pub type ConfigurationFactory =
    fn(
        trellis_configuration::Metadata,
    ) -> BoxFuture<'static, Result<Arc<dyn ConfigurationStore>, ConfigurationError>>;

/// Builds a workflow backend from its component metadata.
pub type WorkflowFactory = fn(
    trellis_workflow::Metadata,
) -> BoxFuture<'static, Result<Arc<dyn WorkflowStore>, WorkflowError>>;

/// Builds a job store (the scheduler's backend) from its component metadata.
pub type JobsFactory =
    fn(trellis_jobs::Metadata) -> BoxFuture<'static, Result<Arc<dyn JobStore>, JobError>>;

/// The building blocks Dapr defines, and `scheduler`: Dapr runs its job store as a
/// control-plane service, Trellis takes it as a component of this type.
pub const BUILDING_BLOCKS: [&str; 10] = [
    "state",
    "pubsub",
    "bindings",
    "secretstores",
    "configuration",
    "lock",
    "middleware",
    "workflow",
    "workflowbackend",
    "scheduler",
];

/// The type of the embedded state store used when no state component is configured.
pub const EMBEDDED_STATE_TYPE: &str = "state.sqlite";

/// The type of the embedded broker used when no pub/sub component is configured.
pub const EMBEDDED_PUBSUB_TYPE: &str = "pubsub.sqlite";

/// The type of the embedded lock store used when no lock component is configured.
pub const EMBEDDED_LOCK_TYPE: &str = "lock.sqlite";

/// The type of the embedded configuration store used when no configuration component is
/// configured.
pub const EMBEDDED_CONFIGURATION_TYPE: &str = "configuration.sqlite";

/// The type of the built-in secret store (an encrypted SQLite file, filled with `trellis
/// secret set`).
pub const EMBEDDED_SECRETS_TYPE: &str = "secretstores.sqlite";

/// The type of the embedded workflow backend used when no workflow backend is configured.
pub const EMBEDDED_WORKFLOW_TYPE: &str = "workflowbackend.sqlite";

/// The type of the embedded job store used when no `scheduler.*` component is configured.
pub const EMBEDDED_JOBS_TYPE: &str = "scheduler.sqlite";

#[derive(Debug)]
pub struct Registries {
    pub state: Registry<StateFactory>,
    pub pubsub: Registry<PubSubFactory>,
    pub secrets: Registry<SecretFactory>,
    pub middleware: Registry<MiddlewareFactory>,
    pub lock: Registry<LockFactory>,
    pub configuration: Registry<ConfigurationFactory>,
    pub workflow: Registry<WorkflowFactory>,
    pub jobs: Registry<JobsFactory>,
    /// Building blocks that have no component types yet; kept so that their components are
    /// reported as unknown types of a known block.
    pending: Vec<Registry<()>>,
}

impl Default for Registries {
    fn default() -> Self {
        // Mutated only when a backend feature is on.
        #[allow(unused_mut)]
        let mut state: Registry<StateFactory> = Registry::new("state");
        #[cfg(feature = "state-sqlite")]
        state.register("state.sqlite", &["v1"], |md| {
            Box::pin(async move {
                let store = trellis_state::sqlite::SqliteStore::open(&md).await?;
                Ok(Arc::new(store) as Arc<dyn StateStore>)
            })
        });
        #[cfg(feature = "state-postgres")]
        state.register("state.postgresql", &["v1"], |md| {
            Box::pin(async move {
                let store = trellis_state::postgres::PostgresStore::open(&md).await?;
                Ok(Arc::new(store) as Arc<dyn StateStore>)
            })
        });
        #[cfg(feature = "state-postgres")]
        state.register("state.postgresql", &["v2"], |md| {
            Box::pin(async move {
                let store = trellis_state::postgres::PostgresStore::open_v2(&md).await?;
                Ok(Arc::new(store) as Arc<dyn StateStore>)
            })
        });
        #[cfg(feature = "state-mysql")]
        state.register("state.mysql", &["v1"], |md| {
            Box::pin(async move {
                let store = trellis_state::mysql::MysqlStore::open(&md).await?;
                Ok(Arc::new(store) as Arc<dyn StateStore>)
            })
        });
        #[cfg(feature = "state-redis")]
        state.register("state.redis", &["v1"], |md| {
            Box::pin(async move {
                let store = trellis_state::redis::RedisStore::open(&md).await?;
                Ok(Arc::new(store) as Arc<dyn StateStore>)
            })
        });
        // The older name Dapr still registers for the same store.
        state.alias("state.postgres", "state.postgresql");
        #[allow(unused_mut)]
        let mut pubsub: Registry<PubSubFactory> = Registry::new("pubsub");
        #[cfg(feature = "pubsub-sqlite")]
        pubsub.register("pubsub.sqlite", &["v1"], |md| {
            Box::pin(async move {
                let broker = trellis_pubsub::sqlite::SqliteBroker::open(&md).await?;
                Ok(Arc::new(broker) as Arc<dyn PubSub>)
            })
        });
        #[cfg(feature = "pubsub-redis")]
        pubsub.register("pubsub.redis", &["v1"], |md| {
            Box::pin(async move {
                let broker = trellis_pubsub::redis::RedisBroker::open(&md).await?;
                Ok(Arc::new(broker) as Arc<dyn PubSub>)
            })
        });
        #[cfg(feature = "pubsub-rabbitmq")]
        pubsub.register("pubsub.rabbitmq", &["v1"], |md| {
            Box::pin(async move {
                let broker = trellis_pubsub::rabbitmq::RabbitBroker::open(&md).await?;
                Ok(Arc::new(broker) as Arc<dyn PubSub>)
            })
        });
        #[cfg(feature = "pubsub-jetstream")]
        pubsub.register("pubsub.jetstream", &["v1"], |md| {
            Box::pin(async move {
                let broker = trellis_pubsub::jetstream::JetStreamBroker::open(&md).await?;
                Ok(Arc::new(broker) as Arc<dyn PubSub>)
            })
        });
        #[cfg(feature = "pubsub-mqtt3")]
        pubsub.register("pubsub.mqtt3", &["v1"], |md| {
            Box::pin(async move {
                let broker = trellis_pubsub::mqtt::MqttBroker::open(&md).await?;
                Ok(Arc::new(broker) as Arc<dyn PubSub>)
            })
        });
        // Older Dapr releases' name for their MQTT 3.1.1 component.
        pubsub.alias("pubsub.mqtt", "pubsub.mqtt3");
        #[allow(unused_mut)]
        let mut secrets: Registry<SecretFactory> = Registry::new("secretstores");
        #[cfg(feature = "secretstores-local-env")]
        secrets.register("secretstores.local.env", &["v1"], |md, env| {
            Box::pin(async move {
                let store = trellis_secrets::local_env::LocalEnvStore::open(&md, env.0)?;
                Ok(Arc::new(store) as Arc<dyn SecretStore>)
            })
        });
        #[cfg(feature = "secretstores-local-file")]
        secrets.register("secretstores.local.file", &["v1"], |md, _| {
            Box::pin(async move {
                let store = trellis_secrets::local_file::LocalFileStore::open(&md).await?;
                Ok(Arc::new(store) as Arc<dyn SecretStore>)
            })
        });
        #[cfg(feature = "secretstores-sqlite")]
        secrets.register(EMBEDDED_SECRETS_TYPE, &["v1"], |md, _| {
            Box::pin(async move {
                let store = trellis_secrets::sqlite::SqliteSecretStore::open(&md).await?;
                Ok(Arc::new(store) as Arc<dyn SecretStore>)
            })
        });
        let mut http_middleware: Registry<MiddlewareFactory> = Registry::new("middleware");
        http_middleware.register("middleware.http.ratelimit", &["v1"], |md| {
            Box::pin(async move {
                let m = middleware::RateLimit::new(&md).map_err(|e| e.to_string())?;
                Ok(Arc::new(m) as Arc<dyn HttpMiddleware>)
            })
        });
        http_middleware.register("middleware.http.bearer", &["v1"], |md| {
            Box::pin(async move {
                let m = middleware::Bearer::new(&md).await?;
                Ok(Arc::new(m) as Arc<dyn HttpMiddleware>)
            })
        });
        http_middleware.register("middleware.http.requestsize", &["v1"], |md| {
            Box::pin(async move {
                let m = middleware::RequestSize::new(&md).map_err(|e| e.to_string())?;
                Ok(Arc::new(m) as Arc<dyn HttpMiddleware>)
            })
        });
        http_middleware.register("middleware.http.routerchecker", &["v1"], |md| {
            Box::pin(async move {
                let m = middleware::RouterChecker::new(&md).map_err(|e| e.to_string())?;
                Ok(Arc::new(m) as Arc<dyn HttpMiddleware>)
            })
        });
        #[allow(unused_mut)]
        let mut lock: Registry<LockFactory> = Registry::new("lock");
        #[cfg(feature = "lock-sqlite")]
        lock.register("lock.sqlite", &["v1"], |md| {
            Box::pin(async move {
                let store = trellis_lock::sqlite::SqliteLockStore::open(&md).await?;
                Ok(Arc::new(store) as Arc<dyn LockStore>)
            })
        });
        #[cfg(feature = "lock-redis")]
        lock.register("lock.redis", &["v1"], |md| {
            Box::pin(async move {
                let store = trellis_lock::redis::RedisLockStore::open(&md).await?;
                Ok(Arc::new(store) as Arc<dyn LockStore>)
            })
        });
        #[cfg(feature = "lock-postgres")]
        lock.register("lock.postgresql", &["v1"], |md| {
            Box::pin(async move {
                let store = trellis_lock::postgres::PostgresLockStore::open(&md).await?;
                Ok(Arc::new(store) as Arc<dyn LockStore>)
            })
        });
        #[allow(unused_mut)]
        let mut configuration: Registry<ConfigurationFactory> = Registry::new("configuration");
        #[cfg(feature = "configuration-sqlite")]
        configuration.register("configuration.sqlite", &["v1"], |md| {
            Box::pin(async move {
                let store =
                    trellis_configuration::sqlite::SqliteConfigurationStore::open(&md).await?;
                Ok(Arc::new(store) as Arc<dyn ConfigurationStore>)
            })
        });
        #[cfg(feature = "configuration-redis")]
        configuration.register("configuration.redis", &["v1"], |md| {
            Box::pin(async move {
                let store =
                    trellis_configuration::redis::RedisConfigurationStore::open(&md).await?;
                Ok(Arc::new(store) as Arc<dyn ConfigurationStore>)
            })
        });
        #[cfg(feature = "configuration-postgres")]
        configuration.register("configuration.postgresql", &["v1"], |md| {
            Box::pin(async move {
                let store =
                    trellis_configuration::postgres::PostgresConfigurationStore::open(&md).await?;
                Ok(Arc::new(store) as Arc<dyn ConfigurationStore>)
            })
        });
        #[cfg(feature = "configuration-postgres")]
        configuration.alias("configuration.postgres", "configuration.postgresql");
        #[allow(unused_mut)]
        let mut workflow: Registry<WorkflowFactory> = Registry::new("workflowbackend");
        #[cfg(feature = "workflow-sqlite")]
        workflow.register("workflowbackend.sqlite", &["v1"], |md| {
            Box::pin(async move {
                let store = trellis_workflow::sqlite::SqliteWorkflowStore::open(&md).await?;
                Ok(Arc::new(store) as Arc<dyn WorkflowStore>)
            })
        });
        #[cfg(feature = "workflow-postgres")]
        workflow.register("workflowbackend.postgresql", &["v1"], |md| {
            Box::pin(async move {
                let store = trellis_workflow::postgres::PostgresWorkflowStore::open(&md).await?;
                Ok(Arc::new(store) as Arc<dyn WorkflowStore>)
            })
        });
        #[cfg(feature = "workflow-postgres")]
        workflow.alias("workflowbackend.postgres", "workflowbackend.postgresql");
        #[allow(unused_mut)]
        let mut jobs: Registry<JobsFactory> = Registry::new("scheduler");
        #[cfg(feature = "jobs-sqlite")]
        jobs.register("scheduler.sqlite", &["v1"], |md| {
            Box::pin(async move {
                let store = trellis_jobs::sqlite::SqliteJobStore::open(&md).await?;
                Ok(Arc::new(store) as Arc<dyn JobStore>)
            })
        });
        #[cfg(feature = "jobs-postgres")]
        jobs.register("scheduler.postgresql", &["v1"], |md| {
            Box::pin(async move {
                let store = trellis_jobs::postgres::PostgresJobStore::open(&md).await?;
                Ok(Arc::new(store) as Arc<dyn JobStore>)
            })
        });
        #[cfg(feature = "jobs-postgres")]
        jobs.alias("scheduler.postgres", "scheduler.postgresql");
        let pending = BUILDING_BLOCKS
            .iter()
            .filter(|b| {
                ![
                    "state",
                    "pubsub",
                    "secretstores",
                    "middleware",
                    "lock",
                    "configuration",
                    "workflowbackend",
                    "scheduler",
                ]
                .contains(b)
            })
            .map(|b| Registry::new(b))
            .collect();
        Self {
            state,
            pubsub,
            secrets,
            middleware: http_middleware,
            lock,
            configuration,
            workflow,
            jobs,
            pending,
        }
    }
}

/// Metadata keys that name a file, per component type: a relative path in them is resolved
/// against the app's working directory ([`resolve_relative_paths`]), as Dapr resolves it
/// against daprd's, which `dapr run` starts in the app's directory.
const PATH_KEYS: &[(&str, &str)] = &[
    ("state.sqlite", "connectionString"),
    ("pubsub.sqlite", "connectionString"),
    ("secretstores.local.file", "secretsFile"),
    ("lock.sqlite", "connectionString"),
    ("configuration.sqlite", "connectionString"),
    ("secretstores.sqlite", "connectionString"),
    ("secretstores.sqlite", "keyFile"),
    ("workflowbackend.sqlite", "connectionString"),
    ("scheduler.sqlite", "connectionString"),
];

/// Rewrites every relative file path in the components' metadata ([`PATH_KEYS`]) to one
/// under `base`; `:memory:` and `file:` URIs are left as they are.
pub fn resolve_relative_paths(
    resources: &mut trellis_resources::Resources,
    base: &std::path::Path,
) {
    for component in &mut resources.components {
        let type_name = component.type_name.to_ascii_lowercase();
        for item in &mut component.metadata {
            let names_a_file = PATH_KEYS
                .iter()
                .any(|(t, key)| *t == type_name && item.name.eq_ignore_ascii_case(key));
            if !names_a_file {
                continue;
            }
            if let trellis_resources::MetadataValue::Plain(value) = &mut item.value {
                let path = std::path::Path::new(value.as_str());
                let special = value.starts_with("file:") || value.starts_with(':');
                if !special && !value.is_empty() && path.is_relative() {
                    *value = base.join(path).display().to_string();
                }
            }
        }
    }
}

impl Registries {
    /// Why `type_name` at `version` cannot be loaded, if it cannot.
    pub fn check(&self, type_name: &str, version: &str) -> Result<(), String> {
        let block = type_name.split('.').next().unwrap_or_default();
        if block == "state" {
            return self
                .state
                .get(type_name, version)
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
        if block == "pubsub" {
            return self
                .pubsub
                .get(type_name, version)
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
        if block == "middleware" {
            return self
                .middleware
                .get(type_name, version)
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
        if block == "secretstores" {
            return self
                .secrets
                .get(type_name, version)
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
        if block == "lock" {
            return self
                .lock
                .get(type_name, version)
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
        if block == "configuration" {
            return self
                .configuration
                .get(type_name, version)
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
        if block == "workflowbackend" {
            return self
                .workflow
                .get(type_name, version)
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
        if block == "scheduler" {
            return self
                .jobs
                .get(type_name, version)
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
        match self.pending.iter().find(|r| r.block() == block) {
            Some(registry) => registry
                .get(type_name, version)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => Err(format!(
                "unknown component type {type_name:?}: {block:?} is not a building block; known: {}",
                BUILDING_BLOCKS.join(", ")
            )),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn unknown_types_name_what_is_known() {
        let r = Registries::default();
        let err = r.check("state.nope", "v1").unwrap_err();
        assert!(err.contains("state.nope"), "{err}");
        #[cfg(feature = "state-sqlite")]
        assert!(err.contains("state.sqlite"), "{err}");
        let err = r.check("frob.x", "v1").unwrap_err();
        assert!(err.contains("pubsub") && err.contains("frob"), "{err}");
        assert!(r.check("pubsub.kafka", "v1").is_err());
        #[cfg(feature = "pubsub-sqlite")]
        assert!(r.check("pubsub.sqlite", "v1").is_ok());
        #[cfg(feature = "configuration-redis")]
        assert!(r.check("configuration.redis", "v1").is_ok());
        let err = r.check("configuration.nope", "v1").unwrap_err();
        #[cfg(feature = "configuration-sqlite")]
        assert!(err.contains("configuration.sqlite"), "{err}");
    }

    #[test]
    fn relative_file_paths_move_under_the_base_and_others_stay() {
        let text = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: a\nspec:\n  type: state.sqlite\n  metadata:\n  - name: connectionString\n    value: data/a.db\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: b\nspec:\n  type: pubsub.sqlite\n  metadata:\n  - name: ConnectionString\n    value: \":memory:\"\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: c\nspec:\n  type: state.sqlite\n  metadata:\n  - name: connectionString\n    value: /abs/c.db\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: d\nspec:\n  type: state.redis\n  metadata:\n  - name: connectionString\n    value: rel\n";
        let mut r = trellis_resources::parse_str(Path::new("c.yaml"), text).unwrap();
        resolve_relative_paths(&mut r, Path::new("/apps/shop"));
        let value = |i: usize| r.components[i].metadata_str("connectionString").unwrap();
        assert_eq!(value(0), "/apps/shop/data/a.db");
        assert_eq!(value(1), ":memory:");
        assert_eq!(value(2), "/abs/c.db");
        assert_eq!(value(3), "rel", "only keys that name a file");
    }

    #[test]
    #[cfg(all(feature = "state-postgres", feature = "pubsub-mqtt3"))]
    fn older_dapr_names_are_accepted() {
        let r = Registries::default();
        assert!(r.check("state.postgres", "v1").is_ok());
        assert!(r.check("state.postgres", "v2").is_ok());
        assert!(r.check("pubsub.mqtt", "v1").is_ok());
    }

    #[test]
    #[cfg(feature = "workflow-postgres")]
    fn both_workflow_backends_are_registered() {
        let r = Registries::default();
        for name in [
            "workflowbackend.sqlite",
            "workflowbackend.postgresql",
            "workflowbackend.postgres",
        ] {
            assert!(r.check(name, "v1").is_ok(), "{name}");
        }
    }

    #[test]
    #[cfg(all(feature = "jobs-sqlite", feature = "jobs-postgres"))]
    fn both_job_stores_are_registered() {
        let r = Registries::default();
        for name in [
            "scheduler.sqlite",
            "scheduler.postgresql",
            "scheduler.postgres",
        ] {
            assert!(r.check(name, "v1").is_ok(), "{name}");
        }
        assert!(r.check("scheduler.etcd", "v1").is_err());
    }
}
