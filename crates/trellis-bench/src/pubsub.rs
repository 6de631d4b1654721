//! `trellis-bench pubsub`: pub/sub through trellis sidecars against the same brokers
//! used directly by the bench, in one run.
//!
//! Per broker (the embedded SQLite broker, NATS JetStream):
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
//! The subscriber app and the direct consumers live in `pubsub/app.rs`, the publishers and
//! sidecars in `pubsub/paths.rs`, the report in `pubsub_report.rs`. Sidecars are stopped
//! on exit and on error (their guards), temp dirs removed, and the run's JetStream streams
//! deleted at the end (they also expire after an hour if the bench is killed).

pub(crate) mod app;
mod paths;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream::{self, consumer, stream};
use clap::Args;
use futures_util::StreamExt;
use tokio::sync::{Semaphore, watch};
use trellis_pubsub::sqlite::SqliteBroker;
use trellis_pubsub::{Metadata, PubSub, SubscribeRequest, Subscription};

use self::app::{App, Board};
use self::paths::{JsPublisher, Shape, Sidecar, SqlitePublisher};
use crate::load::{self, Client, Mode, Outcome, Schedule};
use crate::procs::{self, Usage, Watch};
use crate::pubsub_report::{Cpu, Latency, PubsubReport, Throughput};

#[derive(Args)]
pub struct PubsubArgs {
    /// Messages per embedded-broker throughput run.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Messages per JetStream throughput run.
    #[arg(long, default_value_t = 50_000)]
    js_messages: u64,
    /// Payload size in bytes (a JSON object; the stored CloudEvent is ~400 B more).
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Entries per bulk publish request in the throughput runs.
    #[arg(long, default_value_t = 100)]
    bulk: u64,
    /// Concurrent bulk publish requests in the throughput runs.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Longest a throughput run may take, from the first publish to the last delivery.
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration)]
    drain_limit: Duration,
    /// Deliveries the bench's direct embedded consumer settles at once (the sidecar's
    /// default `max_in_flight` is 16).
    #[arg(long, default_value_t = 16)]
    direct_in_flight: usize,
    /// Messages per second in the fixed-rate phases.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Length of each fixed-rate phase, e.g. 5s, 500ms, 1m.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// Unrecorded warm-up before each fixed-rate phase.
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    warmup: Duration,
    /// Publishers (keep-alive HTTP connections, or tasks on one NATS connection) in the
    /// fixed-rate phases.
    #[arg(long, default_value_t = 16)]
    connections: usize,
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
    /// Also write the markdown report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use this trellis binary instead of building one with cargo.
    #[arg(long)]
    trellis_bin: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PartName {
    Embedded,
    Jetstream,
}

/// Broker names as the report shows them.
pub const EMBEDDED: &str = "embedded (SQLite)";
pub const JETSTREAM: &str = "NATS JetStream";

/// How long reaching NATS may take before the JetStream part is skipped.
const NATS_REACH_LIMIT: Duration = Duration::from_secs(3);
/// How long a subscriber sidecar gets to deliver its first probe.
const SUBSCRIBE_LIMIT: Duration = Duration::from_secs(15);
/// How long the deliveries of a fixed-rate phase may trail its last publish.
const E2E_DRAIN: Duration = Duration::from_secs(10);

/// The subscriber app id; also the consumer group of the sidecar paths.
const SUB_APP: &str = "bench-sub";
const PUB_APP: &str = "bench-pub";
/// The JetStream component's name in the sidecars.
const JS_PUBSUB: &str = "jetstream";
/// The embedded broker's name in the sidecars (the built-in default).
const EMBEDDED_PUBSUB: &str = "pubsub";

pub async fn run(args: PubsubArgs) -> Result<()> {
    if args.rate == 0 || args.connections == 0 || args.duration.is_zero() {
        bail!("--rate, --connections and --duration must be greater than zero");
    }
    if args.messages == 0 || args.js_messages == 0 || args.bulk == 0 || args.publishers == 0 {
        bail!("--messages, --js-messages, --bulk and --publishers must be greater than zero");
    }
    // Fix the payload clock's epoch before anything is timed.
    let _ = app::now_us();
    let command = crate::command_line();
    let (cpus, cpu_model) = procs::machine();
    let load_at_start = procs::loadavg();
    let mut notes = Vec::new();
    let mut versions = Vec::new();

    let trellis_bin = crate::sidecar::locate(args.trellis_bin.as_deref())
        .inspect_err(|e| {
            eprintln!("no sidecar paths: {e:#}");
            notes.push(format!("every sidecar path skipped: {e:#}"));
        })
        .ok();
    if let Some(bin) = &trellis_bin {
        versions.push(format!("trellis: {}", bin.display()));
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("trellis-bench-pubsub-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("creating a temp dir in {}", args.dir.display()))?;
    let fs = filesystem_of(tmp.path());
    if fs.starts_with("tmpfs") {
        notes.push(format!(
            "the broker files are on {fs}: fsync costs nothing there, so embedded numbers are \
             optimistic; pass --dir on a real disk"
        ));
    }
    let app = App::start()?;
    let ctx = Ctx {
        args: &args,
        bin: trellis_bin.as_deref(),
        tmp: tmp.path(),
        app: &app,
        unique: unique_name(),
    };
    let mut report = PubsubReport {
        command,
        date: crate::report::utc_now(),
        cpus,
        cpu_model,
        load: (load_at_start, String::new()),
        versions: Vec::new(),
        data_dir: format!("{} ({fs})", tmp.path().display()),
        payload: args.payload,
        stored: paths::cloud_event(
            EMBEDDED_PUBSUB,
            "tput-sub",
            0,
            &app::payload(0, 0, args.payload),
        )
        .len(),
        bulk: args.bulk,
        publishers: args.publishers,
        rate: f64::from(args.rate),
        duration: args.duration,
        warmup: args.warmup,
        connections: args.connections,
        direct_in_flight: args.direct_in_flight,
        throughput: Vec::new(),
        publish: Vec::new(),
        e2e: Vec::new(),
        notes: Vec::new(),
    };

    if args.parts.contains(&PartName::Embedded) {
        eprintln!("part: {EMBEDDED}");
        if let Err(e) = embedded_part(&ctx, &mut report, &mut notes).await {
            eprintln!("{EMBEDDED} failed: {e:#}");
            notes.push(format!("{EMBEDDED} part failed: {e:#}"));
        }
    }
    if args.parts.contains(&PartName::Jetstream) {
        eprintln!("part: {JETSTREAM}");
        match connect_nats(&args.nats).await {
            Ok(client) => {
                versions.push(format!(
                    "NATS server: {} at {}",
                    client.server_info().version,
                    args.nats
                ));
                let js = jetstream::new(client);
                let res = jetstream_part(&ctx, &js, &mut report, &mut notes).await;
                if let Err(e) = res {
                    eprintln!("{JETSTREAM} failed: {e:#}");
                    notes.push(format!("{JETSTREAM} part failed: {e:#}"));
                }
            }
            Err(e) => {
                let msg = format!("{JETSTREAM} skipped: not reachable at {}: {e:#}", args.nats);
                eprintln!("{msg}");
                notes.push(msg);
            }
        }
    }
    let stray = app.board.stray();
    if stray > 0 {
        notes.push(format!(
            "the app received {stray} deliveries it could not attribute to a measured topic"
        ));
    }
    drop(app);

    report.load.1 = procs::loadavg();
    report.versions = versions;
    report.notes = notes;
    let md = report.render();
    print!("{md}");
    if let Some(out) = &args.out {
        std::fs::write(out, &md).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("report written to {}", out.display());
    }
    Ok(())
}

struct Ctx<'a> {
    args: &'a PubsubArgs,
    bin: Option<&'a Path>,
    tmp: &'a Path,
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

fn subscription(pubsub: &str, topic: &str, bulk: bool) -> String {
    let bulk = if bulk {
        r#","bulkSubscribe":{"enabled":true,"maxMessagesCount":100,"maxAwaitDurationMs":10}"#
    } else {
        ""
    };
    format!(r#"{{"pubsubname":"{pubsub}","topic":"{topic}","route":"/in"{bulk}}}"#)
}

/// CPU use of a few processes between two moments (utime + stime, in cores).
struct CpuWindow {
    watches: Vec<Watch>,
    before: Vec<u64>,
    started: Instant,
}

impl CpuWindow {
    fn start(watches: Vec<Watch>) -> Self {
        let before = watches.iter().map(ticks).collect();
        Self {
            watches,
            before,
            started: Instant::now(),
        }
    }

    fn finish(self) -> Vec<Cpu> {
        let wall = self.started.elapsed().as_secs_f64();
        self.watches
            .iter()
            .zip(self.before)
            .map(|(w, before)| {
                // USER_HZ is 100 (see procs.rs).
                let seconds = ticks(w).saturating_sub(before) as f64 / 100.0;
                Cpu {
                    label: w.label.clone(),
                    cores: seconds / wall,
                    seconds: Some(seconds),
                }
            })
            .collect()
    }
}

fn ticks(w: &Watch) -> u64 {
    w.pids.iter().filter_map(|&p| procs::cpu_ticks(p)).sum()
}

fn watch(label: &str, pid: u32) -> Watch {
    Watch {
        label: label.to_owned(),
        pids: vec![pid],
    }
}

fn bench_watch() -> Watch {
    watch("bench (publisher + app)", std::process::id())
}

/// The NATS server process, when it runs on this machine (its CPU is part of the cost of
/// the JetStream paths).
fn nats_server_watch() -> Option<Watch> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "nats-server")
        })
        .collect();
    (!pids.is_empty()).then(|| Watch {
        label: "nats-server".into(),
        pids,
    })
}

// ---- phases --------------------------------------------------------------------------------

/// One throughput run: publish `shape.total` messages with `publishers` (closed loop,
/// `shape.calls()` calls shared out), then wait for all of them on `topic`.
async fn throughput<C: Client>(
    ctx: &Ctx<'_>,
    broker: &'static str,
    path: &str,
    topic: &str,
    publishers: Vec<C>,
    shape: Shape,
    watches: Vec<Watch>,
) -> Result<Throughput> {
    eprintln!(
        "phase: {broker} throughput, {path}: {} messages",
        shape.total
    );
    let board = &ctx.app.board;
    board.track(topic, 0)?;
    let cpu = CpuWindow::start(watches);
    let t0 = Instant::now();
    let published = load::fill(publishers, shape.calls()).await;
    let publish_time = t0.elapsed();
    let delivered_while_publishing = board.progress(topic).0;
    let complete = match &published {
        Ok(()) => {
            let left = ctx.args.drain_limit.saturating_sub(publish_time);
            app::wait_for(board, topic, shape.total, left).await
        }
        Err(_) => false,
    };
    let cpu = cpu.finish();
    let tally = board
        .take(topic)
        .ok_or_else(|| anyhow!("no tally for {topic}"))?;
    published.context("publishing")?;
    let row = Throughput {
        broker,
        path: path.to_owned(),
        messages: shape.total,
        publish_time,
        delivered_while_publishing,
        t0,
        complete,
        tally,
        cpu,
    };
    eprintln!(
        "  published {:.0} msgs/s, delivered {:.0} msgs/s ({} of {}{})",
        row.publish_rate(),
        row.deliver_rate().unwrap_or(0.0),
        row.tally.unique,
        row.messages,
        if complete { "" } else { ", timed out" }
    );
    Ok(row)
}

/// One fixed-rate publishing phase; with watches, their CPU over the measured window.
async fn fixed_rate<C: Client>(
    ctx: &Ctx<'_>,
    label: &str,
    clients: Vec<C>,
    watches: Vec<Watch>,
) -> Result<(Outcome, Vec<Usage>)> {
    let args = ctx.args;
    let schedule = Schedule::new(args.warmup, args.duration);
    let monitor = tokio::task::spawn_blocking(move || {
        procs::monitor(&watches, schedule.measure_from, schedule.end)
    });
    let outcome = load::run_clients(
        label,
        Mode::FixedRate(f64::from(args.rate)),
        schedule,
        clients,
    )
    .await?;
    let usage = monitor.await.context("resource monitor panicked")?;
    eprintln!(
        "  {label}: {:.0} msgs/s, publish p50 {:.3} ms, p99 {:.3} ms, {} errors",
        outcome.rate(),
        outcome.ms(0.5),
        outcome.ms(0.99),
        outcome.errors
    );
    Ok((outcome, usage))
}

/// Publish latency at the fixed rate, nobody subscribed.
async fn publish_latency<C: Client>(
    ctx: &Ctx<'_>,
    broker: &'static str,
    path: &str,
    direct: bool,
    clients: Vec<C>,
    watches: Vec<Watch>,
) -> Result<Latency> {
    eprintln!("phase: {broker} publish latency, {path}");
    let (outcome, usage) =
        fixed_rate(ctx, &format!("publish {path}"), clients, watches.clone()).await?;
    Ok(Latency {
        broker,
        path: path.to_owned(),
        direct,
        publish: outcome,
        delivered: None,
        cpu: cpu_rows(&watches, &usage),
    })
}

/// Publish→delivery latency at the fixed rate, deliveries recorded on `topic`.
async fn end_to_end<C: Client>(
    ctx: &Ctx<'_>,
    broker: &'static str,
    path: &str,
    direct: bool,
    topic: &str,
    clients: Vec<C>,
    watches: Vec<Watch>,
) -> Result<Latency> {
    eprintln!("phase: {broker} publish→delivery latency, {path}");
    let args = ctx.args;
    let board = &ctx.app.board;
    // Message `seq` is scheduled at seq/rate after the start: the measured ones are those
    // scheduled after the warm-up, as in the publish outcome.
    let first_measured = (args.warmup.as_secs_f64() * f64::from(args.rate)).ceil() as u64;
    board.track(topic, first_measured)?;
    let res = fixed_rate(ctx, &format!("e2e {path}"), clients, watches.clone()).await;
    let complete = match &res {
        Ok((o, _)) => app::wait_for(board, topic, o.ok, E2E_DRAIN).await,
        Err(_) => false,
    };
    let tally = board
        .take(topic)
        .ok_or_else(|| anyhow!("no tally for {topic}"))?;
    let (outcome, usage) = res?;
    eprintln!(
        "  {path}: delivered {} of {} measured, publish→delivery p50 {:.3} ms, p99 {:.3} ms{}",
        tally.measured,
        outcome.ok,
        tally.ms(0.5),
        tally.ms(0.99),
        if complete { "" } else { " (some missing)" }
    );
    Ok(Latency {
        broker,
        path: path.to_owned(),
        direct,
        publish: outcome,
        delivered: Some(tally),
        cpu: cpu_rows(&watches, &usage),
    })
}

fn cpu_rows(watches: &[Watch], usage: &[Usage]) -> Vec<Cpu> {
    watches
        .iter()
        .zip(usage)
        .map(|(w, u)| Cpu {
            label: w.label.clone(),
            cores: u.cpu_cores,
            seconds: None,
        })
        .collect()
}

/// Records a failed phase as a note and goes on with the next one.
fn keep<T>(notes: &mut Vec<String>, what: &str, res: Result<T>) -> Option<T> {
    res.inspect_err(|e| {
        eprintln!("{what} failed: {e:#}");
        notes.push(format!("{what} failed: {e:#}"));
    })
    .ok()
}

// ---- the embedded broker -------------------------------------------------------------------

async fn open_sqlite(file: &Path) -> Result<Arc<SqliteBroker>> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Only the file, as the sidecar's built-in `pubsub` has: every other setting at its
    // default (prefetch 32, pollInterval 5 ms, fsync on every publishing commit).
    let md = Metadata::from_pairs([("connectionString", file.display().to_string())]);
    Ok(Arc::new(SqliteBroker::open(&md).await?))
}

/// The bench's direct consumer on the embedded broker: records each delivery on `topic`
/// and acks it, up to `in_flight` acks at once (as the sidecar's delivery loop settles up
/// to `max_in_flight` deliveries at once). Runs on the app thread until `stop`.
async fn consume_sqlite(
    board: Arc<Board>,
    mut sub: Box<dyn Subscription>,
    topic: String,
    in_flight: usize,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let permits = Arc::new(Semaphore::new(in_flight.max(1)));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p?,
            _ = stop.wait_for(|s| *s) => break,
        };
        let next = tokio::select! {
            n = sub.next() => n,
            _ = stop.wait_for(|s| *s) => break,
        };
        let delivery = match next {
            None => break,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                eprintln!("  direct consumer on {topic}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        board.record(Some(&topic), &[app::stamp_of(&delivery.message.data)]);
        tokio::spawn(async move {
            let _ = delivery.ack().await;
            drop(permit);
        });
    }
    sub.close().await?;
    Ok(())
}

/// A direct consumer running on the app thread; stopped (and awaited) by [`Self::stop`].
struct Consumer {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Consumer {
    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.task.await.context("direct consumer panicked")?
    }
}

async fn sqlite_consumer(
    ctx: &Ctx<'_>,
    broker: &Arc<SqliteBroker>,
    topic: &str,
) -> Result<Consumer> {
    // Subscribing creates the group: from here on it is owed every message of the topic.
    let sub = broker
        .subscribe(SubscribeRequest::new(topic, SUB_APP))
        .await?;
    let (stop, rx) = watch::channel(false);
    let task = ctx.app.spawn(consume_sqlite(
        ctx.app.board.clone(),
        sub,
        topic.to_owned(),
        ctx.args.direct_in_flight,
        rx,
    ));
    Ok(Consumer { stop, task })
}

async fn embedded_part(
    ctx: &Ctx<'_>,
    report: &mut PubsubReport,
    notes: &mut Vec<String>,
) -> Result<()> {
    let args = ctx.args;
    let dir = ctx.tmp.join("embedded");
    let raw = open_sqlite(&dir.join("direct/pubsub.db")).await?;
    let bulk = Shape {
        size: args.payload,
        bulk: args.bulk,
        total: args.messages,
    };
    let me = bench_watch();

    // Direct throughput: the broker in this process, publishing and consuming.
    let res = async {
        let consumer = sqlite_consumer(ctx, &raw, "tput-direct").await?;
        let publishers = (0..args.publishers)
            .map(|_| SqlitePublisher {
                broker: raw.clone(),
                topic: "tput-direct".into(),
                shape: bulk,
            })
            .collect();
        let row = throughput(
            ctx,
            EMBEDDED,
            "direct (in process)",
            "tput-direct",
            publishers,
            bulk,
            vec![me.clone()],
        )
        .await;
        consumer.stop().await?;
        row
    }
    .await;
    report
        .throughput
        .extend(keep(notes, "embedded direct throughput", res));

    // The sidecars: both on one data dir, so one broker file.
    let mut sidecars = None;
    if let Some(bin) = ctx.bin {
        let data_dir = dir.join("data");
        ctx.app.board.set_subscriptions(format!(
            "[{},{},{}]",
            subscription(EMBEDDED_PUBSUB, "tput-sub", false),
            subscription(EMBEDDED_PUBSUB, "tput-bulk", true),
            subscription(EMBEDDED_PUBSUB, "e2e-sidecar", false),
        ));
        let started = async {
            let publisher = Sidecar::start(
                bin,
                "publisher sidecar (embedded)",
                PUB_APP,
                None,
                &data_dir,
                None,
                dir.join("publisher.log"),
            )
            .await?;
            let subscriber = Sidecar::start(
                bin,
                "subscriber sidecar (embedded)",
                SUB_APP,
                Some(ctx.app.port),
                &data_dir,
                None,
                dir.join("subscriber.log"),
            )
            .await?;
            for topic in ["tput-sub", "tput-bulk", "e2e-sidecar"] {
                paths::wait_subscribed(
                    &ctx.app.board,
                    publisher.port,
                    EMBEDDED_PUBSUB,
                    topic,
                    SUBSCRIBE_LIMIT,
                )
                .await?;
            }
            anyhow::Ok((publisher, subscriber))
        }
        .await;
        sidecars = keep(notes, "starting the embedded sidecars", started);
    }

    if let Some((p, s)) = &sidecars {
        let watches = || {
            vec![
                watch("publisher sidecar", p.pid()),
                watch("subscriber sidecar", s.pid()),
                me.clone(),
            ]
        };
        for (topic, path) in [
            ("tput-sub", "sidecars, subscription"),
            ("tput-bulk", "sidecars, bulkSubscribe"),
        ] {
            let res = async {
                let publishers = (0..args.publishers)
                    .map(|_| paths::http_publisher(p.port, EMBEDDED_PUBSUB, topic, bulk))
                    .collect::<Result<Vec<_>>>()?;
                throughput(ctx, EMBEDDED, path, topic, publishers, bulk, watches()).await
            }
            .await;
            report
                .throughput
                .extend(keep(notes, &format!("embedded throughput, {path}"), res));
        }
    }

    // Publish latency, nobody subscribed.
    let single = Shape::single(args.payload);
    let direct_publishers = |topic: &str, broker: &Arc<SqliteBroker>| -> Vec<SqlitePublisher> {
        (0..args.connections)
            .map(|_| SqlitePublisher {
                broker: broker.clone(),
                topic: topic.to_owned(),
                shape: single,
            })
            .collect()
    };
    let res = publish_latency(
        ctx,
        EMBEDDED,
        "direct (in process)",
        true,
        direct_publishers("lat-direct", &raw),
        vec![],
    )
    .await;
    report
        .publish
        .extend(keep(notes, "embedded direct publish latency", res));
    if let Some((p, _)) = &sidecars {
        let res = async {
            let clients = (0..args.connections)
                .map(|_| paths::http_publisher(p.port, EMBEDDED_PUBSUB, "lat-sidecar", single))
                .collect::<Result<Vec<_>>>()?;
            publish_latency(
                ctx,
                EMBEDDED,
                "sidecar",
                false,
                clients,
                vec![watch("publisher sidecar", p.pid())],
            )
            .await
        }
        .await;
        report
            .publish
            .extend(keep(notes, "embedded sidecar publish latency", res));
    }

    // Publish→delivery latency.
    let res = async {
        let consumer = sqlite_consumer(ctx, &raw, "e2e-direct").await?;
        let row = end_to_end(
            ctx,
            EMBEDDED,
            "direct (in process)",
            true,
            "e2e-direct",
            direct_publishers("e2e-direct", &raw),
            vec![],
        )
        .await;
        consumer.stop().await?;
        row
    }
    .await;
    report
        .e2e
        .extend(keep(notes, "embedded direct publish→delivery", res));
    // The same with the consumer on a second broker handle on the same file: it learns of
    // the other handle's publishes by polling, as a subscriber sidecar does of the
    // publisher sidecar's.
    let res = async {
        let second = open_sqlite(&dir.join("direct/pubsub.db")).await?;
        let consumer = sqlite_consumer(ctx, &second, "e2e-direct2").await?;
        let row = end_to_end(
            ctx,
            EMBEDDED,
            "direct, two handles on one file",
            false,
            "e2e-direct2",
            direct_publishers("e2e-direct2", &raw),
            vec![],
        )
        .await;
        consumer.stop().await?;
        row
    }
    .await;
    report.e2e.extend(keep(
        notes,
        "embedded direct (two handles) publish→delivery",
        res,
    ));
    if let Some((p, s)) = &sidecars {
        let res = async {
            let clients = (0..args.connections)
                .map(|_| paths::http_publisher(p.port, EMBEDDED_PUBSUB, "e2e-sidecar", single))
                .collect::<Result<Vec<_>>>()?;
            end_to_end(
                ctx,
                EMBEDDED,
                "sidecars",
                false,
                "e2e-sidecar",
                clients,
                vec![
                    watch("publisher sidecar", p.pid()),
                    watch("subscriber sidecar", s.pid()),
                ],
            )
            .await
        }
        .await;
        report
            .e2e
            .extend(keep(notes, "embedded sidecars publish→delivery", res));
    }

    if let Some((p, s)) = sidecars {
        // The subscriber first: it is the one with deliveries to drain.
        notes.extend(s.stop());
        notes.extend(p.stop());
    }
    Ok(())
}

// ---- NATS JetStream ------------------------------------------------------------------------

async fn connect_nats(url: &str) -> Result<async_nats::Client> {
    let opts = async_nats::ConnectOptions::new().request_timeout(Some(Duration::from_secs(5)));
    tokio::time::timeout(NATS_REACH_LIMIT, opts.connect(url))
        .await
        .map_err(|_| anyhow!("connecting timed out after {NATS_REACH_LIMIT:?}"))?
        .map_err(|e| anyhow!("{e}"))
}

/// The bench's direct JetStream consumer: its own connection (as a separate app would
/// have), the durable pull consumer `name` of `stream` (created beforehand, so nothing
/// published after that is missed), async-nats's default continuous pull; records each
/// message on `topic` and acks it. Runs on the app thread until `stop`.
async fn consume_jetstream(
    board: Arc<Board>,
    url: String,
    stream: String,
    name: String,
    topic: String,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let client = connect_nats(&url).await?;
    let js = jetstream::new(client);
    let consumer: consumer::PullConsumer = js
        .get_stream(&stream)
        .await
        .map_err(|e| anyhow!("{e}"))?
        .get_consumer(&name)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let mut messages = consumer.messages().await.map_err(|e| anyhow!("{e}"))?;
    loop {
        let next = tokio::select! {
            m = messages.next() => m,
            _ = stop.wait_for(|s| *s) => break,
        };
        let msg = match next {
            None => break,
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                eprintln!("  direct consumer on {topic}: {e}");
                continue;
            }
        };
        board.record(Some(&topic), &[app::stamp_of(&msg.payload)]);
        if let Err(e) = msg.ack().await {
            eprintln!("  direct consumer on {topic}: ack: {e}");
        }
    }
    Ok(())
}

/// Creates the durable consumer `name` for `subject` on `stream` and starts consuming it
/// on the app thread, recording on `subject`.
async fn js_consumer(
    ctx: &Ctx<'_>,
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    subject: &str,
) -> Result<Consumer> {
    let st = js.get_stream(stream).await.map_err(|e| anyhow!("{e}"))?;
    let config = consumer::pull::Config {
        durable_name: Some(name.to_owned()),
        ack_policy: consumer::AckPolicy::Explicit,
        deliver_policy: consumer::DeliverPolicy::New,
        filter_subject: subject.to_owned(),
        ..Default::default()
    };
    st.create_consumer(config)
        .await
        .map_err(|e| anyhow!("creating consumer {name}: {e}"))?;
    let (stop, rx) = watch::channel(false);
    let task = ctx.app.spawn(consume_jetstream(
        ctx.app.board.clone(),
        ctx.args.nats.clone(),
        stream.to_owned(),
        name.to_owned(),
        subject.to_owned(),
        rx,
    ));
    // Give the pull request a moment to reach the server before anything is published.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(Consumer { stop, task })
}

async fn jetstream_part(
    ctx: &Ctx<'_>,
    js: &jetstream::Context,
    report: &mut PubsubReport,
    notes: &mut Vec<String>,
) -> Result<()> {
    // Two streams of this run: one the bench publishes to directly, one the sidecars use
    // (the component finds it by subject: `stream_by_subject`). File storage, as the
    // component creates by default; an hour's max age so a killed run leaves nothing big.
    let prefix = format!("trellisbench.{}", ctx.unique);
    let direct_stream = format!("TRELLISBENCH_{}_DIRECT", ctx.unique);
    let sidecar_stream = format!("TRELLISBENCH_{}_SIDECAR", ctx.unique);
    for (name, subjects) in [
        (&direct_stream, format!("{prefix}.direct.>")),
        (&sidecar_stream, format!("{prefix}.sidecar.>")),
    ] {
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subjects],
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("creating stream {name} (is JetStream enabled?): {e}"))?;
    }
    let res = jetstream_phases(ctx, js, &prefix, &direct_stream, report, notes).await;
    for name in [&direct_stream, &sidecar_stream] {
        match js.delete_stream(name).await {
            Ok(_) => eprintln!("  deleted stream {name}"),
            Err(e) => notes.push(format!("deleting stream {name} failed: {e}")),
        }
    }
    res
}

async fn jetstream_phases(
    ctx: &Ctx<'_>,
    js: &jetstream::Context,
    prefix: &str,
    direct_stream: &str,
    report: &mut PubsubReport,
    notes: &mut Vec<String>,
) -> Result<()> {
    let args = ctx.args;
    let subject = |path: &str, what: &str| format!("{prefix}.{path}.{what}");
    let bulk = Shape {
        size: args.payload,
        bulk: args.bulk,
        total: args.js_messages,
    };
    let single = Shape::single(args.payload);
    let me = bench_watch();
    let nats = nats_server_watch();
    let with_nats = |mut w: Vec<Watch>| {
        w.extend(nats.clone());
        w
    };

    // Direct throughput.
    let topic = subject("direct", "tput");
    let res = async {
        let consumer = js_consumer(ctx, js, direct_stream, "bench-tput", &topic).await?;
        let publishers = (0..args.publishers)
            .map(|_| JsPublisher {
                js: js.clone(),
                subject: topic.clone(),
                shape: bulk,
            })
            .collect();
        let row = throughput(
            ctx,
            JETSTREAM,
            "direct (async-nats)",
            &topic,
            publishers,
            bulk,
            with_nats(vec![me.clone()]),
        )
        .await;
        consumer.stop().await?;
        row
    }
    .await;
    report
        .throughput
        .extend(keep(notes, "JetStream direct throughput", res));

    // The sidecars, each with the JetStream component.
    let dir = ctx.tmp.join("jetstream");
    let mut sidecars = None;
    if let Some(bin) = ctx.bin {
        let started = async {
            let resources = dir.join("components");
            paths::resources_dir(
                &resources,
                &paths::jetstream_component(JS_PUBSUB, &args.nats),
            )?;
            ctx.app.board.set_subscriptions(format!(
                "[{},{},{}]",
                subscription(JS_PUBSUB, &subject("sidecar", "tput"), false),
                subscription(JS_PUBSUB, &subject("sidecar", "tput-bulk"), true),
                subscription(JS_PUBSUB, &subject("sidecar", "e2e"), false),
            ));
            let data_dir = dir.join("data");
            let publisher = Sidecar::start(
                bin,
                "publisher sidecar (JetStream)",
                PUB_APP,
                None,
                &data_dir,
                Some(&resources),
                dir.join("publisher.log"),
            )
            .await?;
            let subscriber = Sidecar::start(
                bin,
                "subscriber sidecar (JetStream)",
                SUB_APP,
                Some(ctx.app.port),
                &data_dir,
                Some(&resources),
                dir.join("subscriber.log"),
            )
            .await?;
            for what in ["tput", "tput-bulk", "e2e"] {
                paths::wait_subscribed(
                    &ctx.app.board,
                    publisher.port,
                    JS_PUBSUB,
                    &subject("sidecar", what),
                    SUBSCRIBE_LIMIT,
                )
                .await?;
            }
            anyhow::Ok((publisher, subscriber))
        }
        .await;
        sidecars = keep(notes, "starting the JetStream sidecars", started);
    }

    if let Some((p, s)) = &sidecars {
        for (what, path) in [
            ("tput", "sidecars, subscription"),
            ("tput-bulk", "sidecars, bulkSubscribe"),
        ] {
            let topic = subject("sidecar", what);
            let res = async {
                let publishers = (0..args.publishers)
                    .map(|_| paths::http_publisher(p.port, JS_PUBSUB, &topic, bulk))
                    .collect::<Result<Vec<_>>>()?;
                let watches = with_nats(vec![
                    watch("publisher sidecar", p.pid()),
                    watch("subscriber sidecar", s.pid()),
                    me.clone(),
                ]);
                throughput(ctx, JETSTREAM, path, &topic, publishers, bulk, watches).await
            }
            .await;
            report
                .throughput
                .extend(keep(notes, &format!("JetStream throughput, {path}"), res));
        }
    }

    // Publish latency, nobody subscribed (the streams store regardless).
    let direct_publishers = |subject: String| -> Vec<JsPublisher> {
        (0..args.connections)
            .map(|_| JsPublisher {
                js: js.clone(),
                subject: subject.clone(),
                shape: single,
            })
            .collect()
    };
    let res = publish_latency(
        ctx,
        JETSTREAM,
        "direct (async-nats)",
        true,
        direct_publishers(subject("direct", "lat")),
        with_nats(vec![]),
    )
    .await;
    report
        .publish
        .extend(keep(notes, "JetStream direct publish latency", res));
    if let Some((p, _)) = &sidecars {
        let res = async {
            let topic = subject("sidecar", "lat");
            let clients = (0..args.connections)
                .map(|_| paths::http_publisher(p.port, JS_PUBSUB, &topic, single))
                .collect::<Result<Vec<_>>>()?;
            publish_latency(
                ctx,
                JETSTREAM,
                "sidecar",
                false,
                clients,
                with_nats(vec![watch("publisher sidecar", p.pid())]),
            )
            .await
        }
        .await;
        report
            .publish
            .extend(keep(notes, "JetStream sidecar publish latency", res));
    }

    // Publish→delivery latency.
    let topic = subject("direct", "e2e");
    let res = async {
        let consumer = js_consumer(ctx, js, direct_stream, "bench-e2e", &topic).await?;
        let row = end_to_end(
            ctx,
            JETSTREAM,
            "direct (async-nats)",
            true,
            &topic,
            direct_publishers(topic.clone()),
            with_nats(vec![]),
        )
        .await;
        consumer.stop().await?;
        row
    }
    .await;
    report
        .e2e
        .extend(keep(notes, "JetStream direct publish→delivery", res));
    if let Some((p, s)) = &sidecars {
        let topic = subject("sidecar", "e2e");
        let res = async {
            let clients = (0..args.connections)
                .map(|_| paths::http_publisher(p.port, JS_PUBSUB, &topic, single))
                .collect::<Result<Vec<_>>>()?;
            end_to_end(
                ctx,
                JETSTREAM,
                "sidecars",
                false,
                &topic,
                clients,
                with_nats(vec![
                    watch("publisher sidecar", p.pid()),
                    watch("subscriber sidecar", s.pid()),
                ]),
            )
            .await
        }
        .await;
        report
            .e2e
            .extend(keep(notes, "JetStream sidecars publish→delivery", res));
    }

    if let Some((p, s)) = sidecars {
        notes.extend(s.stop());
        notes.extend(p.stop());
    }
    Ok(())
}
