//! `trellis-bench pubsub`: pub/sub through trellis sidecars against the same brokers
//! used directly by the bench, in one run.
//!
//! Per broker (the embedded SQLite broker, NATS JetStream), the same sequence
//! (`pubsub/phases.rs`):
//!
//! 1. **Throughput**: N messages bulk-published (a few concurrent requests of `--bulk`
//!    entries), delivered to the bench's subscriber app; publish rate and delivery rate
//!    (first publish → last delivery). Through two sidecars (a publisher without an app,
//!    a subscriber fronting the app; for the embedded broker both share one data dir, so
//!    one broker file) with a normal subscription and with `bulkSubscribe`; and directly
//!    (the bench publishing to and consuming from the broker itself) as the baseline.
//! 2. **Publish latency** at a fixed rate: `POST /v1.0/publish/...` through the publisher
//!    sidecar against the direct publish (in-process `SqliteBroker::publish`; JetStream
//!    publish awaiting the stream's ack), no subscriber.
//! 3. **Publish→delivery latency** at the same fixed rate: from the moment the publish is
//!    sent to the moment the app (or the bench's direct consumer) has the message.
//!
//! The subscriber app lives in `pubsub/app.rs`, the publishers in `pubsub/paths.rs`, the
//! direct paths of each broker in `pubsub/brokers.rs`, the report in `pubsub/report.rs`.
//! Sidecars are stopped on exit and on error (their guards), temp dirs removed, and the
//! run's JetStream streams deleted at the end (they also expire after an hour if the
//! bench is killed).

pub(crate) mod app;
mod brokers;
mod paths;
mod phases;
mod report;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::Args;
use clap::builder::RangedU64ValueParser;

use self::app::App;
use self::report::PubsubReport;
use crate::runner::{BenchArgs, Session};

#[derive(Args)]
#[command(
    mut_arg("duration", |a| a.default_value("5s")),
    mut_arg("warmup", |a| a.default_value("1s")),
    mut_arg("connections", |a| a.help(
        "Publishers (keep-alive HTTP connections, or tasks on one NATS connection) in the \
         fixed-rate phases")),
)]
pub struct PubsubArgs {
    #[command(flatten)]
    pub bench: BenchArgs,
    /// Messages per embedded-broker throughput run.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    messages: u64,
    /// Messages per JetStream throughput run.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    js_messages: u64,
    /// Payload size in bytes (a JSON object; the stored CloudEvent is ~400 B more).
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Entries per bulk publish request in the throughput runs.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    bulk: u64,
    /// Concurrent bulk publish requests in the throughput runs.
    #[arg(long, default_value_t = 4, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    publishers: usize,
    /// Longest a throughput run may take, from the first publish to the last delivery.
    #[arg(long, default_value = "60s", value_parser = crate::runner::parse_duration)]
    drain_limit: std::time::Duration,
    /// Deliveries the bench's direct embedded consumer settles at once (the sidecar's
    /// default `max_in_flight` is 16).
    #[arg(long, default_value_t = 16)]
    direct_in_flight: usize,
    /// Where the broker files go (a fresh temp dir under it). Use a real disk, not
    /// tmpfs: every publish is fsynced.
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
    /// The NATS server for the JetStream part.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Which parts to run (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "embedded,jetstream"
    )]
    parts: Vec<PartName>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PartName {
    Embedded,
    Jetstream,
}

/// Broker names as the report shows them.
pub const EMBEDDED: &str = "embedded (SQLite)";
pub const JETSTREAM: &str = "NATS JetStream";

/// The subscriber app id; also the consumer group of the sidecar paths.
const SUB_APP: &str = "bench-sub";
const PUB_APP: &str = "bench-pub";
/// The embedded broker's name in the sidecars (the built-in default).
const EMBEDDED_PUBSUB: &str = "pubsub";

pub async fn run(args: PubsubArgs) -> Result<()> {
    // Fix the payload clock's epoch before anything is timed.
    let _ = app::now_us();
    let mut session = Session::start(&args.bench, "trellis-bench-pubsub-", Some(&args.dir))?;
    let fs = filesystem_of(session.tmp.path());
    if fs.starts_with("tmpfs") {
        session.notes.push(format!(
            "the broker files are on {fs}: fsync costs nothing there, so embedded numbers are \
             optimistic; pass --dir on a real disk"
        ));
    }
    let app = App::start()?;
    let ctx = Ctx {
        args: &args,
        bin: session.bin.clone(),
        tmp: session.tmp.path().to_owned(),
        app: &app,
        unique: unique_name(),
    };
    let mut report = PubsubReport {
        data_dir: format!("{} ({fs})", session.tmp.path().display()),
        stored: paths::cloud_event(
            EMBEDDED_PUBSUB,
            "sidecar-tput",
            0,
            &app::payload(0, 0, args.payload),
        )
        .len(),
        throughput: Vec::new(),
        publish: Vec::new(),
        e2e: Vec::new(),
    };

    if args.parts.contains(&PartName::Embedded) {
        eprintln!("part: {EMBEDDED}");
        let res = brokers::embedded(&ctx, &mut report, &mut session.notes).await;
        crate::runner::keep(&mut session.notes, &format!("{EMBEDDED} part"), res);
    }
    if args.parts.contains(&PartName::Jetstream) {
        eprintln!("part: {JETSTREAM}");
        brokers::jetstream(&ctx, &mut report, &mut session).await;
    }
    let stray = app.board.stray();
    if stray > 0 {
        session.notes.push(format!(
            "the app received {stray} deliveries it could not attribute to a measured topic"
        ));
    }
    drop(app);

    let md = report.render(&args, &session);
    session.finish(&md)
}

pub(crate) struct Ctx<'a> {
    args: &'a PubsubArgs,
    bin: Option<PathBuf>,
    tmp: PathBuf,
    app: &'a App,
    /// Unique per run, for NATS stream and subject names: `<pid>_<nanos hex>`.
    unique: String,
}

fn unique_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}_{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

/// The filesystem type and device holding `path`, from `/proc/mounts` (longest matching
/// mount point), e.g. `ext4 on /dev/vda`.
fn filesystem_of(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, mnt, fs) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mnt)
                .then(|| (mnt.len(), format!("{fs} on {dev}")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown filesystem".into(), |(_, s)| s)
}
