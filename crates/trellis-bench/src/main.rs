//! trellis-bench: measures Trellis against baselines taken in the same run.
//!
//! `trellis-bench invoke` sends the same load to a small echo app three ways
//! (directly, through two trellis sidecars, through two nginx hops) and
//! prints a markdown report of latency, throughput, CPU, memory and start-up
//! time next to the targets. Scenarios whose parts are unavailable (no
//! trellis binary yet, no nginx) are skipped with a message; the rest run.
//!
//! `trellis-bench state` measures the state API through a sidecar against the
//! same operations done directly, for Redis, PostgreSQL and the embedded
//! SQLite store, and the embedded store's raw capability (see `state.rs`).
//!
//! `trellis-bench pubsub` measures pub/sub throughput, publish latency and
//! publish→delivery latency through two sidecars against the brokers used
//! directly, for the embedded SQLite broker and NATS JetStream (see `pubsub.rs`).
//!
//! `trellis-bench grpc` measures gRPC invocation (proxied with `dapr-app-id`, and
//! `InvokeService`) through two sidecars against a direct gRPC call, beside the HTTP path
//! in the same run (see `grpc.rs`).

mod direct;
mod echo;
mod grpc;
mod load;
mod nginx;
mod procs;
mod pubsub;
mod pubsub_report;
mod report;
mod sidecar;
mod state;
mod state_report;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};

use crate::load::{Mode, Schedule, Target};
use crate::procs::{Usage, Watch};
use crate::report::{Report, ResourceRow, ScenarioResult, Startup};

#[derive(Parser)]
#[command(name = "trellis-bench", about, version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Service invocation: direct vs. two trellis sidecars vs. two nginx hops.
    Invoke(InvokeArgs),
    /// State API: sidecar vs. direct for Redis, PostgreSQL and the embedded store.
    State(state::StateArgs),
    /// Pub/sub: throughput and latency through sidecars vs. the brokers used directly.
    Pubsub(pubsub::PubsubArgs),
    /// gRPC invocation (proxied and InvokeService) through two sidecars vs. direct, beside
    /// the HTTP path.
    Grpc(grpc::GrpcArgs),
    /// The gRPC echo app used by `grpc` (the bench starts it itself).
    #[command(hide = true)]
    GrpcEchoServer {
        #[arg(long)]
        port: u16,
    },
    /// The echo app used as the target (the bench starts it itself).
    #[command(hide = true)]
    EchoServer {
        #[arg(long)]
        port: u16,
    },
}

#[derive(Args)]
struct InvokeArgs {
    /// Requests per second in the fixed-rate phase.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Length of each measured phase, e.g. 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unrecorded warm-up before each phase.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Persistent keep-alive connections used by the load generator.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Request body size in bytes.
    #[arg(long, default_value_t = 1024)]
    body: usize,
    /// Also write the markdown report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use this trellis binary instead of building one with cargo.
    #[arg(long)]
    trellis_bin: Option<PathBuf>,
    /// Start/stop cycles for the start-to-healthy measurement.
    #[arg(long, default_value_t = 10)]
    startup_cycles: usize,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // One thread each for the load generator and the echo app: the proxies
    // under test need the remaining CPU more, and a single event loop keeps
    // the generator's own jitter low and its footprint predictable.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::EchoServer { port } => {
            let res = rt.block_on(echo::serve(port));
            // Don't wait for the blocked stdin reader when serving failed.
            rt.shutdown_background();
            res
        }
        Cmd::Invoke(args) => rt.block_on(async {
            // Dropping the `invoke` future on Ctrl-C drops every ChildGuard
            // in it, which stops the child processes.
            tokio::select! {
                res = invoke(args) => res,
                _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            }
        }),
        Cmd::State(args) => rt.block_on(async {
            tokio::select! {
                res = state::run(args) => res,
                _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            }
        }),
        Cmd::GrpcEchoServer { port } => {
            let res = rt.block_on(grpc::serve_echo(port));
            rt.shutdown_background();
            res
        }
        Cmd::Grpc(args) => rt.block_on(async {
            tokio::select! {
                res = grpc::run(args) => res,
                _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            }
        }),
        Cmd::Pubsub(args) => rt.block_on(async {
            tokio::select! {
                res = pubsub::run(args) => res,
                _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            }
        }),
    }
}

/// A way of reaching the echo app, plus the processes in the path whose
/// resources are reported.
struct Scenario {
    name: &'static str,
    target: Target,
    watches: Vec<Watch>,
}

async fn invoke(args: InvokeArgs) -> Result<()> {
    if args.rate == 0 || args.connections == 0 || args.duration.is_zero() {
        bail!("--rate, --connections and --duration must be greater than zero");
    }
    let command = command_line();
    let (cpus, cpu_model) = procs::machine();
    let load_at_start = procs::loadavg();
    let mut notes = Vec::new();
    let mut versions = Vec::new();

    // Build and install first: both may take a while and print a lot, and
    // neither should overlap with a measurement.
    let trellis_bin = sidecar::locate(args.trellis_bin.as_deref())
        .inspect_err(|e| skip(&mut notes, "trellis", e))
        .ok();
    let nginx_bin = nginx::ensure_installed();

    let tmp = tempfile::Builder::new()
        .prefix("trellis-bench-")
        .tempdir()
        .context("creating a temp dir")?;
    let echo_port = procs::free_port()?;
    let _echo = echo::spawn(echo_port).await?;
    let mut scenarios = vec![Scenario {
        name: report::BASELINE,
        target: Target {
            port: echo_port,
            path: "/echo".to_owned(),
        },
        watches: Vec::new(),
    }];

    let data_dir = tmp.path().join("trellis-data");
    let mut sidecars = None;
    if let Some(bin) = &trellis_bin {
        match start_trellis(bin, tmp.path(), &data_dir, echo_port).await {
            Ok((s, scenario)) => {
                versions.push(format!("trellis: {}", bin.display()));
                scenarios.push(scenario);
                sidecars = Some(s);
            }
            Err(e) => skip(&mut notes, "trellis", &e),
        }
    }
    let nginx = match nginx_bin {
        Ok(bin) => start_nginx(&bin, tmp.path(), echo_port).await,
        Err(e) => Err(e),
    };
    let nginx = match nginx {
        Ok((n, scenario)) => {
            versions.push(format!("nginx: {}", n.version));
            scenarios.push(scenario);
            Some(n)
        }
        Err(e) => {
            skip(&mut notes, "nginx", &e);
            None
        }
    };

    let idle: Vec<Vec<u64>> = scenarios
        .iter()
        .map(|sc| sc.watches.iter().map(|w| procs::rss_kb(&w.pids)).collect())
        .collect();
    let body = Bytes::from(vec![b'x'; args.body]);
    let rate = f64::from(args.rate);

    let mut fixed = Vec::new();
    for sc in &scenarios {
        eprintln!(
            "phase: fixed rate {} req/s via {} ({:?} warm-up + {:?})",
            args.rate, sc.name, args.warmup, args.duration
        );
        fixed.push(measure(sc, Mode::FixedRate(rate), &args, body.clone()).await?);
    }
    let mut max = Vec::new();
    for sc in &scenarios {
        eprintln!(
            "phase: max throughput via {} ({:?} warm-up + {:?})",
            sc.name, args.warmup, args.duration
        );
        max.push(measure(sc, Mode::MaxThroughput, &args, body.clone()).await?);
    }

    let mut startup = None;
    if let (Some(s), Some(bin)) = (sidecars.as_mut(), &trellis_bin) {
        for (name, child) in [("sidecar A", &mut s.a), ("sidecar B", &mut s.b)] {
            if let Some(status) = child.exited() {
                notes.push(format!(
                    "{name} exited during the run ({status}); its numbers are suspect"
                ));
            }
        }
        // A stops for good here: the cycles reuse its app id and data dir.
        notes.extend(s.stop_a());
        eprintln!(
            "phase: {} start/stop cycles of sidecar A",
            args.startup_cycles
        );
        match sidecar::start_stop_cycles(bin, tmp.path(), &data_dir, args.startup_cycles).await {
            Ok(c) => {
                startup = Some(Startup {
                    first: s.first_start,
                    cycles: c.start,
                    stops: c.stop,
                })
            }
            Err(e) => notes.push(format!("start/stop cycles failed: {e:#}")),
        }
        notes.extend(s.stop());
    }
    drop(nginx);

    let mut scenario_results = Vec::new();
    let mut resources = Vec::new();
    for (((sc, idle), (f_out, f_use)), (m_out, m_use)) in
        scenarios.iter().zip(idle).zip(fixed).zip(max)
    {
        for (err, phase) in [
            (&f_out.first_error, "fixed rate"),
            (&m_out.first_error, "max throughput"),
        ] {
            if let Some(e) = err {
                notes.push(format!("{} {phase}: first error: {e}", sc.name));
            }
        }
        for (i, w) in sc.watches.iter().enumerate() {
            resources.push(ResourceRow {
                label: w.label.clone(),
                sidecar: sc.name == report::TRELLIS,
                idle_kb: idle[i],
                fixed: f_use[i],
                max: m_use[i],
            });
        }
        scenario_results.push(ScenarioResult {
            name: sc.name,
            fixed: f_out,
            max: m_out,
        });
    }

    let md = Report {
        command,
        date: report::utc_now(),
        cpus,
        cpu_model,
        load: (load_at_start, procs::loadavg()),
        rate,
        duration: args.duration,
        warmup: args.warmup,
        connections: args.connections,
        body: args.body,
        versions,
        scenarios: scenario_results,
        resources,
        startup,
        notes,
    }
    .render();
    print!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("report written to {}", out.display());
    }
    Ok(())
}

/// Reports a scenario that cannot run; the others go ahead without it.
fn skip(notes: &mut Vec<String>, scenario: &str, reason: &anyhow::Error) {
    eprintln!("skipping {scenario}: {reason:#}");
    notes.push(format!("{scenario} skipped: {reason:#}"));
}

async fn start_trellis(
    bin: &Path,
    tmp: &Path,
    data_dir: &Path,
    echo_port: u16,
) -> Result<(sidecar::Sidecars, Scenario)> {
    eprintln!("starting trellis sidecars ({})", bin.display());
    std::fs::create_dir_all(data_dir)?;
    let s = sidecar::start(bin, tmp, data_dir, echo_port)
        .await
        .context("sidecars did not start")?;
    let scenario = Scenario {
        name: report::TRELLIS,
        target: Target {
            port: s.port_a,
            path: sidecar::INVOKE_PATH.to_owned(),
        },
        watches: vec![
            Watch {
                label: "sidecar A".into(),
                pids: vec![s.a.pid()],
            },
            Watch {
                label: "sidecar B".into(),
                pids: vec![s.b.pid()],
            },
        ],
    };
    Ok((s, scenario))
}

async fn start_nginx(bin: &Path, tmp: &Path, echo_port: u16) -> Result<(nginx::Nginx, Scenario)> {
    let dir = tmp.join("nginx");
    std::fs::create_dir_all(&dir)?;
    let n = nginx::start(bin, &dir, echo_port).await?;
    let scenario = Scenario {
        name: "nginx",
        target: Target {
            port: n.port,
            path: "/echo".to_owned(),
        },
        watches: vec![Watch {
            label: format!("nginx workers ({}, both hops)", n.workers.len()),
            pids: n.workers.clone(),
        }],
    };
    Ok((n, scenario))
}

/// One phase against one scenario, with the scenario's processes monitored
/// over exactly the measured window.
async fn measure(
    sc: &Scenario,
    mode: Mode,
    args: &InvokeArgs,
    body: Bytes,
) -> Result<(load::Outcome, Vec<Usage>)> {
    let schedule = Schedule::new(args.warmup, args.duration);
    let watches = sc.watches.clone();
    let monitor = tokio::task::spawn_blocking(move || {
        procs::monitor(&watches, schedule.measure_from, schedule.end)
    });
    let outcome = load::run(sc.name, &sc.target, mode, args.connections, body, schedule).await?;
    let usage = monitor.await.context("resource monitor panicked")?;
    eprintln!(
        "  {}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors",
        sc.name,
        outcome.rate(),
        outcome.ms(0.5),
        outcome.ms(0.99),
        outcome.errors
    );
    Ok((outcome, usage))
}

/// A flag's duration: "10s", "500ms", "2m" (Go syntax) or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    match trellis_core::duration::parse_or_seconds(s) {
        Ok(trellis_core::Signed::Positive(d)) => Ok(d),
        Ok(trellis_core::Signed::NonPositive) => Err(format!("duration `{s}` must be positive")),
        Err(e) => Err(e.to_string()),
    }
}

/// The command as the user would retype it: `cargo run` sets `CARGO` for the
/// program it runs, in which case the cargo form is shown.
pub(crate) fn command_line() -> String {
    let quote = |a: String| {
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,".contains(c))
        {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    let mut argv = std::env::args().map(quote);
    let program = argv.next().unwrap_or_default();
    let rest: Vec<String> = argv.collect();
    if std::env::var_os("CARGO").is_some() {
        format!("cargo run --release -p trellis-bench -- {}", rest.join(" "))
    } else {
        format!("{program} {}", rest.join(" "))
    }
}
