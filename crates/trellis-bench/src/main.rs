//! trellis-bench: measures Trellis against baselines taken in the same run.
//!
//! Every subcommand is a set of scenarios run by one runner (`runner.rs`: set-up, warm-up,
//! fixed-rate and closed-loop phases, each scenario paired with its baseline of the same
//! run) and reported with one table (`report.rs`), as markdown on stdout (and `--out`).
//!
//! - `invoke` (`invoke.rs`): a small echo app reached directly, through two trellis
//!   sidecars and through two nginx hops; latency, throughput, CPU, memory, start-up time.
//! - `state` (`state.rs`): the state API through a sidecar against the same operations
//!   done directly, for Redis, PostgreSQL and the embedded SQLite store, and the embedded
//!   store's raw capability.
//! - `pubsub` (`pubsub.rs`): pub/sub throughput, publish latency and publish→delivery
//!   latency through two sidecars against the brokers used directly, for the embedded
//!   SQLite broker and NATS JetStream.
//! - `grpc` (`grpc.rs`): gRPC invocation (proxied with `dapr-app-id`, and `InvokeService`)
//!   and gRPC `GetState`/`SaveState` through sidecars against direct calls, beside the
//!   HTTP paths in the same run.
//! - `configuration` (`configuration.rs`): store change → subscribed app delivery latency
//!   and get overhead through a sidecar against the store used directly, for the embedded
//!   store, Redis and PostgreSQL.
//! - `workflows` (`workflows.rs`): workflow throughput, start→completion latency and a
//!   fan-out through a sidecar, driven by a scripted worker, against the engine in process.
//! - `jobs` (`jobs.rs`): scheduling rate, triggers delivered per second and fire lateness
//!   at 1,000 active jobs through a sidecar, against the scheduler in process.
//! - `blocks` (`blocks.rs`): secret gets and lock/unlock pairs through a sidecar against the
//!   embedded secret store and the embedded and Redis lock stores used directly.

mod blocks;
mod configuration;
mod direct;
mod echo;
mod grpc;
mod handshake;
mod invoke;
mod jobs;
mod load;
mod nginx;
mod otlp_sink;
mod procs;
mod pubsub;
mod report;
mod runner;
mod sidecar;
mod state;
#[cfg(test)]
mod tests;
mod workflows;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "trellis-bench", about, version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Service invocation: direct vs. two trellis sidecars vs. two nginx hops.
    Invoke(invoke::InvokeArgs),
    /// State API: sidecar vs. direct for Redis, PostgreSQL and the embedded store.
    State(state::StateArgs),
    /// Pub/sub: throughput and latency through sidecars vs. the brokers used directly.
    Pubsub(pubsub::PubsubArgs),
    /// gRPC invocation (proxied and InvokeService) and gRPC state through sidecars vs.
    /// direct, beside the HTTP paths.
    Grpc(grpc::GrpcArgs),
    /// Configuration: change → subscribed app latency, and get through a sidecar vs. the
    /// store directly, for the embedded store, Redis and PostgreSQL.
    Configuration(configuration::ConfigurationArgs),
    /// What opening a sidecar-to-sidecar connection costs with mTLS vs plain TCP.
    Handshake(handshake::HandshakeArgs),
    /// Workflows: chains, paced starts and a fan-out through a sidecar vs. the engine in
    /// process, driven by a scripted worker that speaks the protocol.
    Workflows(workflows::WorkflowsArgs),
    /// Jobs: scheduling rate, triggers per second and fire lateness through a sidecar vs.
    /// the scheduler in process.
    Jobs(jobs::JobsArgs),
    /// Secrets and lock through a sidecar vs. the same stores used directly.
    Blocks(blocks::BlocksArgs),
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
    /// A few rounds of the gRPC calls `grpc` measures, on the sidecar whose gRPC API is on
    /// `port` (for `scripts/link-order`).
    #[command(hide = true)]
    GrpcCalls {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 3)]
        count: u64,
        /// Only this call, `count` times (for `scripts/instructions-per-call`); all four
        /// otherwise.
        #[arg(long, value_enum)]
        only: Option<grpc::Call>,
        /// Bytes of each invocation's message and each saved value (a 10-byte text when
        /// not given).
        #[arg(long)]
        body: Option<usize>,
    },
    /// An OTLP/gRPC trace receiver that counts spans, until stdin closes (for
    /// `scripts/link-order`, whose sidecars export their spans to it).
    #[command(hide = true)]
    OtlpSink {
        #[arg(long)]
        port: u16,
    },
    /// How much of the link order file the binary has, as every report says it (for
    /// `scripts/link-order --check`).
    #[command(hide = true)]
    LinkOrder {
        #[arg(long)]
        trellis_bin: std::path::PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // One thread each for the load generator and the echo app: the proxies
    // under test need the remaining CPU more, and a single event loop keeps
    // the generator's own jitter low and its footprint predictable.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let served = match cli.command {
        Cmd::EchoServer { port } => rt.block_on(echo::serve(port)),
        Cmd::GrpcEchoServer { port } => rt.block_on(grpc::serve_echo(port)),
        Cmd::OtlpSink { port } => rt.block_on(otlp_sink::serve(port)),
        Cmd::LinkOrder { trellis_bin } => {
            println!("{}", sidecar::link_order(&trellis_bin));
            return Ok(());
        }
        Cmd::GrpcCalls {
            port,
            count,
            only,
            body,
        } => {
            return rt.block_on(grpc::calls(port, count, only, body));
        }
        Cmd::Invoke(args) => return rt.block_on(interruptible(invoke::run(args))),
        Cmd::State(args) => return rt.block_on(interruptible(state::run(args))),
        Cmd::Pubsub(args) => return rt.block_on(interruptible(pubsub::run(args))),
        Cmd::Grpc(args) => return rt.block_on(interruptible(grpc::run(args))),
        Cmd::Configuration(args) => {
            return rt.block_on(interruptible(configuration::run(args)));
        }
        Cmd::Handshake(args) => return rt.block_on(interruptible(handshake::run(args))),
        Cmd::Workflows(args) => return rt.block_on(interruptible(workflows::run(args))),
        Cmd::Jobs(args) => return rt.block_on(interruptible(jobs::run(args))),
        Cmd::Blocks(args) => return rt.block_on(interruptible(blocks::run(args))),
    };
    // Don't wait for the blocked stdin reader when serving failed.
    rt.shutdown_background();
    served
}

/// Runs a bench until it ends or Ctrl-C: dropping its future drops every child guard in
/// it, which stops the child processes.
async fn interruptible(bench: impl Future<Output = Result<()>>) -> Result<()> {
    tokio::select! {
        res = bench => res,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}
