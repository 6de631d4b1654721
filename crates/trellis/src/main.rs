//! The `trellis` command: runs apps beside a Dapr-compatible sidecar.
//!
//! `trellis run` starts a sidecar in this process, launches the app, and supervises both;
//! `trellis run -f trellis.yaml` does the same for several apps at once; `trellis list`
//! shows the sidecars running on this machine; `trellis config` writes and reads the
//! embedded configuration store.

mod alloc;
mod args;
mod config_cmd;
mod launcher;
mod mtls;
mod runfile;
mod secret_cmd;
mod workflow_cmd;

use std::path::PathBuf;

/// mimalloc rather than glibc's malloc: on the invocation path it cut a sidecar's CPU per
/// request by about a tenth and its resident memory by most of a MiB (docs/benchmarks.md,
/// "The proxy floor"). `alloc` says how it is called.
#[global_allocator]
static ALLOCATOR: alloc::Mimalloc = alloc::Mimalloc;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "trellis", version, about = "A small, fast, Dapr-compatible application runtime", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an app (or several, with -f) beside a Trellis sidecar.
    Run(Box<args::RunArgs>),
    /// List the sidecars running on this machine.
    List {
        /// Data directory whose registry to read (default: same as `trellis run`).
        #[arg(long, env = "TRELLIS_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long, short = 'o', value_parser = ["table", "json"], default_value = "table")]
        output: String,
    },
    /// Set or read items of the embedded configuration store (`configstore`).
    Config {
        #[command(subcommand)]
        command: config_cmd::ConfigCommand,
    },
    /// Set, read, list or remove secrets of the embedded secret store (`secretstore`).
    Secret {
        #[command(subcommand)]
        command: secret_cmd::SecretCommand,
    },
    /// List, inspect, terminate or purge an app's workflow instances.
    Workflow {
        #[command(subcommand)]
        command: workflow_cmd::WorkflowCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("trellis: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let plan = args.into_plan()?;
            init_logging(&plan.log_level, plan.log_as_json);
            let runtime = build_runtime(plan.worker_threads)?;
            let code = runtime.block_on(launcher::run(plan))?;
            // Do not wait for stray blocking tasks (a child's pipe reader, say).
            runtime.shutdown_timeout(std::time::Duration::from_millis(100));
            Ok(ExitCode::from(code))
        }
        Command::List { data_dir, output } => {
            let dir = args::data_dir(data_dir).join("registry");
            let registry = trellis_nameres::local::LocalRegistry::open(&dir, None)
                .with_context(|| format!("opening the registry at {}", dir.display()))?;
            let entries = registry.all_entries()?;
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else if entries.is_empty() {
                println!("no sidecars running (registry: {})", dir.display());
            } else {
                println!(
                    "{:<20} {:<12} {:>8} {:<22} {:<22} {:<22} {:>8}",
                    "APP ID", "NAMESPACE", "PID", "HTTP", "GRPC", "INTERNAL", "APP PORT"
                );
                for e in entries {
                    println!(
                        "{:<20} {:<12} {:>8} {:<22} {:<22} {:<22} {:>8}",
                        e.app_id,
                        e.namespace,
                        e.pid,
                        e.http_address.map(|a| a.to_string()).unwrap_or_default(),
                        e.grpc_address.map(|a| a.to_string()).unwrap_or_default(),
                        e.internal_address,
                        e.app_port.map(|p| p.to_string()).unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Config { command } => {
            build_runtime(1)?.block_on(config_cmd::run(command))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Secret { command } => {
            build_runtime(1)?.block_on(secret_cmd::run(command))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Workflow { command } => {
            build_runtime(1)?.block_on(workflow_cmd::run(command))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One thread by default, as linkerd2-proxy does: a sidecar's work per request is a few
/// microseconds, and handing requests between worker threads (futex wake-ups, cache misses)
/// costs more than it saves while the app needs the machine's cores more than its sidecar.
/// `--worker-threads` raises it for sidecars that proxy heavy traffic.
fn build_runtime(worker_threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(worker_threads);
        b
    };
    builder
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The crates whose lines `--log-level` governs: every library crate the binary links. A
/// crate missing here logs only its warnings and errors (a failing backend poll at debug
/// level stayed invisible that way), so a new crate goes on this list, or on
/// [`NOT_LINKED`]; a test checks that every crate of the workspace is on one of them.
const OWN_CRATES: &[&str] = &[
    "trellis",
    "trellis_configuration",
    "trellis_core",
    "trellis_jobs",
    "trellis_lock",
    "trellis_mtls",
    "trellis_nameres",
    "trellis_proto",
    "trellis_pubsub",
    "trellis_resources",
    "trellis_runtime",
    "trellis_secrets",
    "trellis_sqlite",
    "trellis_state",
    "trellis_trace",
    "trellis_workflow",
];

/// Workspace crates the binary does not link (tools and test helpers), whose lines it never
/// has to show.
#[cfg(test)]
const NOT_LINKED: &[&str] = &["trellis_bench", "trellis_test_support", "trellis_tidy"];

/// Our own crates at the chosen level, everything else (hyper, h2...) only when it warns.
fn default_filter(level: &str) -> String {
    let mut filter = String::from("warn");
    for krate in OWN_CRATES {
        filter.push_str(&format!(",{krate}={level}"));
    }
    filter
}

fn init_logging(level: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("TRELLIS_LOG").unwrap_or_else(|_| default_filter(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        // Machines read these: which crate and module a line came from is worth its bytes.
        builder.json().init();
    } else {
        builder.with_target(false).compact().init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Whether a line from `target` at `level` passes the default filter for `--log-level
    /// chosen` (a macro: a callsite's target and level are static).
    macro_rules! shown {
        ($chosen:expr, $target:literal, $level:expr) => {{
            let filter = EnvFilter::new(default_filter($chosen));
            let subscriber = tracing_subscriber::registry().with(filter);
            tracing::subscriber::with_default(subscriber, || {
                tracing::enabled!(target: $target, $level)
            })
        }};
    }

    /// Every crate under `crates/` is either shown at the chosen level or known not to be
    /// linked: a new crate cannot be forgotten (its lines would be filtered out).
    #[test]
    fn every_workspace_crate_is_on_the_log_list() {
        let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut missing = Vec::new();
        for entry in std::fs::read_dir(&crates).unwrap() {
            let manifest = entry.unwrap().path().join("Cargo.toml");
            let Ok(text) = std::fs::read_to_string(&manifest) else {
                continue;
            };
            let name = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("name = "))
                .map(|n| n.trim_matches('"').replace('-', "_"))
                .unwrap_or_else(|| panic!("no package name in {}", manifest.display()));
            if !OWN_CRATES.contains(&name.as_str()) && !NOT_LINKED.contains(&name.as_str()) {
                missing.push(name);
            }
        }
        assert!(
            missing.is_empty(),
            "crates on neither OWN_CRATES nor NOT_LINKED in main.rs: {missing:?}"
        );
        for krate in OWN_CRATES {
            assert!(
                default_filter("debug").contains(&format!(",{krate}=debug")),
                "{krate}"
            );
        }
    }

    #[test]
    fn default_filter_shows_every_own_crate_at_the_chosen_level() {
        assert!(shown!("debug", "trellis_lock::redis", Level::DEBUG));
        assert!(shown!("debug", "trellis_configuration", Level::DEBUG));
        assert!(shown!("debug", "trellis_secrets::local_file", Level::DEBUG));
        assert!(shown!("debug", "trellis_workflow::engine", Level::DEBUG));
        assert!(shown!("warn", "trellis_workflow::engine", Level::WARN));
        assert!(!shown!("warn", "trellis_workflow::engine", Level::INFO));
        assert!(shown!("debug", "trellis_state::sqlite", Level::DEBUG));
        assert!(shown!("debug", "trellis_pubsub::sqlite", Level::DEBUG));
        assert!(shown!("debug", "trellis_sqlite", Level::DEBUG));
        assert!(shown!("debug", "trellis_runtime::delivery", Level::DEBUG));
        assert!(shown!("info", "trellis_pubsub::redis", Level::INFO));
        assert!(!shown!("info", "trellis_pubsub::redis", Level::DEBUG));
        assert!(shown!("info", "trellis::launcher", Level::INFO));
        // Other crates only when they warn.
        assert!(!shown!("debug", "hyper::proto", Level::INFO));
        assert!(shown!("debug", "hyper::proto", Level::WARN));
    }
}
