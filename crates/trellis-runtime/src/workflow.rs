//! The workflow engine of one sidecar: its backend (a `workflowbackend.*` component, or the
//! embedded store on `<data-dir>/workflows.db`) and the engine over it, started on first
//! use, so that apps that never run a workflow pay nothing for it (no file, no tasks).

use std::sync::Arc;

use tokio::sync::OnceCell;
use trellis_resources::Component;
use trellis_workflow::{Engine, EngineOptions, Metadata, WorkflowError, WorkflowStore};

use crate::components::{EMBEDDED_WORKFLOW_TYPE, Registries, WorkflowFactory};
use crate::config::SidecarConfig;
use crate::loading::{self, Embedded};

/// The name the embedded backend is listed under.
pub const DEFAULT_BACKEND_NAME: &str = "workflowstore";

/// The app's workflow backend and, once used, its engine.
#[derive(Debug)]
pub struct Workflows {
    /// The component's name and type, for `/v1.0/metadata`.
    pub name: String,
    pub type_name: String,
    factory: WorkflowFactory,
    metadata: Metadata,
    options: EngineOptions,
    engine: OnceCell<Engine>,
}

impl Workflows {
    /// Picks the app's backend: its one `workflowbackend.*` component, or the embedded
    /// store. `None` when this build has no backend at all.
    pub fn open(
        config: &SidecarConfig,
        registries: &Registries,
    ) -> Result<Option<Self>, Vec<String>> {
        let embedded = Embedded::if_registered(
            &registries.workflow,
            DEFAULT_BACKEND_NAME,
            EMBEDDED_WORKFLOW_TYPE,
            "workflows.db",
        );
        let Some(component) =
            loading::select_one(config, "workflowbackend", "workflow backends", embedded)?
        else {
            return Ok(None);
        };
        Self::from_component(&component, config, registries)
            .map(Some)
            .map_err(|e| vec![format!("workflow backend {}: {e}", component.meta.name)])
    }

    fn from_component(
        component: &Component,
        config: &SidecarConfig,
        registries: &Registries,
    ) -> Result<Self, String> {
        let factory = registries
            .workflow
            .get(&component.type_name, &component.version)
            .map_err(|e| format!("spec.type: {e}"))?;
        let metadata = Metadata::new(&component.meta.name, loading::plain_metadata(component)?);
        let mut options = EngineOptions::new(config.app_id.clone());
        // A Trellis extension: how long a dead sidecar's work stays its own before
        // another takes it over (leases are renewed while the sidecar lives).
        if let Some(lease) = metadata
            .duration("leaseDuration")
            .map_err(|e| e.to_string())?
        {
            if lease < std::time::Duration::from_millis(300) {
                return Err("spec.metadata leaseDuration: must be at least 300ms".into());
            }
            options.lease = lease;
        }
        let limits = WorkflowLimits::of(config)?;
        if let Some(n) = limits.max_workflows {
            options.max_workflows = n;
        }
        if let Some(n) = limits.max_activities {
            options.max_activities = n;
        }
        options.retention = limits.retention;
        Ok(Workflows {
            name: component.meta.name.clone(),
            type_name: component.type_name.clone(),
            factory: *factory,
            metadata,
            options,
            engine: OnceCell::new(),
        })
    }

    /// The engine, opening the backend on first use.
    pub async fn engine(&self) -> Result<&Engine, WorkflowError> {
        self.engine
            .get_or_try_init(|| async {
                let store: Arc<dyn WorkflowStore> = (self.factory)(self.metadata.clone()).await?;
                tracing::debug!(backend = self.name, "workflow engine started");
                Ok(Engine::start(store, self.options.clone()))
            })
            .await
    }

    /// Opens the backend alone, with no engine: for tools (`trellis workflow`) that read or
    /// change the store while the app's sidecars run.
    pub async fn open_store(&self) -> Result<Arc<dyn WorkflowStore>, WorkflowError> {
        (self.factory)(self.metadata.clone()).await
    }

    /// The engine if it has started.
    pub fn started(&self) -> Option<&Engine> {
        self.engine.get()
    }
}

/// `spec.workflow` of the app's Configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkflowLimits {
    /// `maxConcurrentWorkflowInvocations`.
    pub max_workflows: Option<usize>,
    /// `maxConcurrentActivityInvocations`.
    pub max_activities: Option<usize>,
    /// `stateRetentionPolicy`: per finished status, how long to keep instances.
    pub retention: Vec<(trellis_workflow::Status, std::time::Duration)>,
}

impl WorkflowLimits {
    /// Reads `spec.workflow` of the app's Configuration, if any.
    fn of(config: &SidecarConfig) -> Result<Self, String> {
        let Some(spec) = config.configuration.as_ref().map(|c| &c.spec.raw) else {
            return Ok(Self::default());
        };
        let read = |key: &str| -> Result<Option<usize>, String> {
            let Some(value) = spec.get("workflow").and_then(|w| w.get(key)) else {
                return Ok(None);
            };
            let n = match value {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.trim().parse().ok(),
                _ => None,
            };
            match n.and_then(|n| usize::try_from(n).ok()) {
                Some(n) if n > 0 => Ok(Some(n)),
                _ => Err(format!(
                    "Configuration spec.workflow.{key}: {value} is not a positive whole number"
                )),
            }
        };
        Ok(WorkflowLimits {
            max_workflows: read("maxConcurrentWorkflowInvocations")?,
            max_activities: read("maxConcurrentActivityInvocations")?,
            retention: retention(
                spec.get("workflow")
                    .and_then(|w| w.get("stateRetentionPolicy")),
            )?,
        })
    }
}

/// `spec.workflow.stateRetentionPolicy`: `completed`, `failed` and `terminated` durations,
/// each falling back to `anyTerminal`.
fn retention(
    policy: Option<&serde_json::Value>,
) -> Result<Vec<(trellis_workflow::Status, std::time::Duration)>, String> {
    use trellis_workflow::Status;
    let Some(policy) = policy else {
        return Ok(Vec::new());
    };
    let read = |key: &str| -> Result<Option<std::time::Duration>, String> {
        match policy.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(text)) => {
                trellis_core::duration::parse(text).map(Some).map_err(|e| {
                    format!("Configuration spec.workflow.stateRetentionPolicy.{key}: {e}")
                })
            }
            Some(other) => Err(format!(
                "Configuration spec.workflow.stateRetentionPolicy.{key}: {other} is not a duration such as \"72h\""
            )),
        }
    };
    let any = read("anyTerminal")?;
    let mut out = Vec::new();
    for (key, status) in [
        ("completed", Status::Completed),
        ("failed", Status::Failed),
        ("terminated", Status::Terminated),
    ] {
        if let Some(keep) = read(key)?.or(any) {
            out.push((status, keep));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::retention;
    use serde_json::json;
    use std::time::Duration;
    use trellis_workflow::Status;

    #[test]
    fn retention_falls_back_to_any_terminal_and_refuses_bad_durations() {
        let got =
            retention(Some(&json!({"anyTerminal": "1h", "completed": "1m"}))).unwrap_or_default();
        assert_eq!(
            got,
            vec![
                (Status::Completed, Duration::from_secs(60)),
                (Status::Failed, Duration::from_secs(3600)),
                (Status::Terminated, Duration::from_secs(3600)),
            ]
        );
        assert_eq!(
            retention(Some(&json!({"failed": "2h"}))).unwrap_or_default(),
            vec![(Status::Failed, Duration::from_secs(7200))]
        );
        assert!(retention(Some(&json!({"completed": "soon"}))).is_err());
        assert!(retention(Some(&json!({"completed": 5}))).is_err());
        assert_eq!(retention(None).unwrap_or_default(), vec![]);
    }
}
