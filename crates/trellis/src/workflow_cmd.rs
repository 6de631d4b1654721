//! `trellis workflow list | get | history | terminate | purge`: an app's workflow instances,
//! read from and changed in the same backend its sidecars use (the embedded store in the
//! data directory, or the `workflowbackend.*` component under `--resources-path`), while
//! they run. A terminate sent here is taken by the app's next turn, as one sent through
//! the API is.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use trellis_core::time::rfc3339_ms;
use trellis_runtime::SidecarConfig;
use trellis_runtime::api::ops::workflow::status_name as status_word;
use trellis_workflow::events::{self, event_name};
use trellis_workflow::proto::ExecutionTerminatedEvent;
use trellis_workflow::proto::history_event::EventType;
use trellis_workflow::store::{ListFilter, Message};
use trellis_workflow::{Status, WorkflowStore, now_ms};

/// Where the instances are: the app and its backend.
#[derive(clap::Args, Debug)]
pub struct Target {
    /// The app whose instances to show.
    #[arg(long, short = 'a')]
    app_id: String,
    /// Data directory of the embedded store (default: same as `trellis run`).
    #[arg(long, env = "TRELLIS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A directory (or file) of resource YAML files, to find a `workflowbackend.*`
    /// component; repeatable.
    #[arg(long, short = 'd')]
    resources_path: Vec<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum WorkflowCommand {
    /// List the app's instances, newest first.
    List {
        #[command(flatten)]
        target: Target,
        /// Only instances in this status (RUNNING, COMPLETED, FAILED, TERMINATED, ...).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long, short = 'o', value_parser = ["table", "json"], default_value = "table")]
        output: String,
    },
    /// Show one instance as the HTTP API does.
    Get {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Print an instance's history, one event per line.
    History {
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Terminate an instance and its running children.
    Terminate {
        id: String,
        #[command(flatten)]
        target: Target,
        /// The terminated instance's output (JSON).
        #[arg(long)]
        output: Option<String>,
    },
    /// Delete a finished instance (and its children) with its history.
    Purge {
        id: String,
        #[command(flatten)]
        target: Target,
        /// Purge it even if it has not finished.
        #[arg(long)]
        force: bool,
    },
}

async fn open(target: &Target) -> anyhow::Result<Arc<dyn WorkflowStore>> {
    trellis_nameres::validate_app_id(&target.app_id).context("--app-id")?;
    let mut config = SidecarConfig::new(
        target.app_id.clone(),
        crate::args::data_dir(target.data_dir.clone()),
    );
    if !target.resources_path.is_empty() {
        let resources = trellis_resources::load_paths(&target.resources_path)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        config.resources = resources.for_app(&target.app_id);
    }
    let registries = trellis_runtime::components::Registries::default();
    let workflows = trellis_runtime::workflow::Workflows::open(&config, &registries)
        .map_err(|e| anyhow::anyhow!("{}", e.join("\n")))?
        .context("this build of trellis has no workflow backend")?;
    workflows
        .open_store()
        .await
        .with_context(|| format!("opening the workflow backend {}", workflows.name))
}

fn parse_status(text: &str) -> anyhow::Result<Status> {
    let want = text.to_ascii_uppercase();
    [
        Status::Running,
        Status::Completed,
        Status::ContinuedAsNew,
        Status::Failed,
        Status::Canceled,
        Status::Terminated,
        Status::Pending,
        Status::Suspended,
    ]
    .into_iter()
    .find(|s| status_word(*s) == want)
    .with_context(|| format!("unknown status {text:?}; use RUNNING, COMPLETED, FAILED, TERMINATED, PENDING, SUSPENDED, CANCELED or CONTINUED_AS_NEW"))
}

/// A short description of what an event says, for `history`.
fn detail(kind: &EventType) -> String {
    match kind {
        EventType::ExecutionStarted(e) => {
            format!("{} input={}", e.name, e.input.as_deref().unwrap_or("-"))
        }
        EventType::ExecutionCompleted(e) => format!(
            "{} result={}{}",
            Status::try_from(e.workflow_status)
                .map(status_word)
                .unwrap_or("UNKNOWN"),
            e.result.as_deref().unwrap_or("-"),
            e.failure_details
                .as_ref()
                .map(|f| format!(" failure={}", f.error_message))
                .unwrap_or_default()
        ),
        EventType::TaskScheduled(e) => {
            format!("{} input={}", e.name, e.input.as_deref().unwrap_or("-"))
        }
        EventType::TaskCompleted(e) => format!(
            "task={} result={}",
            e.task_scheduled_id,
            e.result.as_deref().unwrap_or("-")
        ),
        EventType::TaskFailed(e) => format!(
            "task={} {}",
            e.task_scheduled_id,
            e.failure_details
                .as_ref()
                .map(|f| f.error_message.as_str())
                .unwrap_or("")
        ),
        EventType::TimerCreated(e) => format!(
            "fire_at={}",
            e.fire_at
                .as_ref()
                .map(|t| rfc3339_ms(events::millis(t)))
                .unwrap_or_default()
        ),
        EventType::TimerFired(e) => format!("timer={}", e.timer_id),
        EventType::EventRaised(e) => {
            format!("{} input={}", e.name, e.input.as_deref().unwrap_or("-"))
        }
        EventType::EventSent(e) => format!("to={} {}", e.instance_id, e.name),
        EventType::ChildWorkflowInstanceCreated(e) => format!("{} id={}", e.name, e.instance_id),
        EventType::ChildWorkflowInstanceCompleted(e) => format!(
            "task={} result={}",
            e.task_scheduled_id,
            e.result.as_deref().unwrap_or("-")
        ),
        EventType::ExecutionTerminated(e) => {
            format!("output={}", e.input.as_deref().unwrap_or("-"))
        }
        _ => String::new(),
    }
}

pub async fn run(command: WorkflowCommand) -> anyhow::Result<()> {
    match command {
        WorkflowCommand::List {
            target,
            status,
            limit,
            output,
        } => {
            let store = open(&target).await?;
            let filter = ListFilter {
                status: status.as_deref().map(parse_status).transpose()?,
                limit: Some(limit),
            };
            let instances = store.list(&target.app_id, &filter).await?;
            if output == "json" {
                let all: Vec<_> = instances
                    .iter()
                    .map(trellis_runtime::api::workflow_instance_json)
                    .collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if instances.is_empty() {
                println!("no workflow instances for app {}", target.app_id);
            } else {
                println!(
                    "{:<40} {:<20} {:<17} {:<24} UPDATED",
                    "INSTANCE", "WORKFLOW", "STATUS", "CREATED"
                );
                for m in instances {
                    println!(
                        "{:<40} {:<20} {:<17} {:<24} {}",
                        m.instance_id,
                        m.name,
                        status_word(m.status),
                        rfc3339_ms(m.created_at),
                        rfc3339_ms(m.updated_at)
                    );
                }
            }
        }
        WorkflowCommand::Get { id, target } => {
            let store = open(&target).await?;
            let Some(meta) = store.get(&target.app_id, &id).await? else {
                bail!(
                    "no workflow instance {id:?} for app {} (see `trellis workflow list --app-id {}`)",
                    target.app_id,
                    target.app_id
                );
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&trellis_runtime::api::workflow_instance_json(&meta))?
            );
        }
        WorkflowCommand::History { id, target } => {
            let store = open(&target).await?;
            if store.get(&target.app_id, &id).await?.is_none() {
                bail!("no workflow instance {id:?} for app {}", target.app_id);
            }
            for (seq, e) in store.history(&target.app_id, &id).await?.iter().enumerate() {
                let at = e
                    .timestamp
                    .as_ref()
                    .map(|t| rfc3339_ms(events::millis(t)))
                    .unwrap_or_default();
                let what = e.event_type.as_ref().map(detail).unwrap_or_default();
                println!(
                    "{seq:>4} {:>5} {at} {:<32} {what}",
                    e.event_id,
                    event_name(e)
                );
            }
        }
        WorkflowCommand::Terminate { id, target, output } => {
            let store = open(&target).await?;
            let now = now_ms();
            store
                .send(Message {
                    app_id: target.app_id.clone(),
                    instance_id: id.clone(),
                    execution_id: None,
                    event: events::event(
                        now,
                        EventType::ExecutionTerminated(ExecutionTerminatedEvent {
                            input: output,
                            recurse: true,
                        }),
                    ),
                    visible_at: now,
                })
                .await?;
            println!("terminate sent to {id}; the app's sidecar applies it on its next turn");
        }
        WorkflowCommand::Purge { id, target, force } => {
            let store = open(&target).await?;
            let purged = store.purge(&target.app_id, &id, true, force).await?;
            println!("purged {} instance(s)", purged.instances);
        }
    }
    Ok(())
}
