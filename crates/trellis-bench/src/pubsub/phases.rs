//! The phases of `trellis-bench pubsub` and the one sequence every broker goes through:
//! direct throughput; the sidecars started; sidecar throughput with a normal subscription
//! and with `bulkSubscribe`; publish latency direct and through the sidecar; publish→
//! delivery latency direct (and over any further direct baseline the broker has) and
//! through the sidecars. A broker supplies only its direct paths ([`Direct`]) and how the
//! sidecars reach it ([`Broker`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

use super::app::{self, Tally};
use super::paths::{self, Shape};
use super::report::{Cpu, Latency, PubsubReport, Throughput};
use super::{Ctx, PUB_APP, SUB_APP};
use crate::load::{self, Client, Mode};
use crate::procs::{self, Watch};
use crate::runner::{self, keep};
use crate::sidecar::{Sidecar, Spec};

/// How long a subscriber sidecar gets to deliver its first probe.
const SUBSCRIBE_LIMIT: Duration = Duration::from_secs(15);
/// How long the deliveries of a fixed-rate phase may trail its last publish.
const E2E_DRAIN: Duration = Duration::from_secs(10);

/// A broker as the bench reaches it itself: the baseline of every phase.
pub trait Direct: Sized {
    type Publisher: Client;

    /// A publisher of `topic`, publishing `shape` per call.
    fn publisher(&self, topic: &str, shape: Shape) -> Self::Publisher;

    /// `n` publishers of `topic`.
    fn publishers(&self, topic: &str, shape: Shape, n: usize) -> Vec<Self::Publisher> {
        (0..n).map(|_| self.publisher(topic, shape)).collect()
    }

    /// Starts a consumer of `topic` that records what arrives on the board, under `topic`.
    async fn consumer(&self, ctx: &Ctx<'_>, topic: &str) -> Result<Consumer>;

    /// A further publish→delivery baseline, opened only when its phase comes: its path as
    /// the report names it, and the paths.
    async fn second(&self) -> Result<Option<(&'static str, Self)>> {
        Ok(None)
    }
}

/// A direct consumer running on the app thread; stopped (and awaited) by [`Self::stop`].
pub struct Consumer {
    pub stop: tokio::sync::watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<Result<()>>,
}

impl Consumer {
    pub async fn stop(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| anyhow!("direct consumer panicked: {e}"))?
    }
}

/// One broker's part of the run.
pub struct Broker<D> {
    /// As the report names it.
    pub title: &'static str,
    /// As sidecar names and notes name it ("embedded", "JetStream").
    pub short: &'static str,
    /// The component the sidecars publish to and subscribe on.
    pub pubsub: &'static str,
    pub direct: D,
    /// The direct path as the report names it.
    pub direct_path: &'static str,
    /// Messages per throughput run.
    pub messages: u64,
    /// Topic `<what>` of path `<path>` is `<prefix><path><sep><what>`.
    pub prefix: String,
    pub sep: char,
    /// The sidecars' component file, when the broker is not built in.
    pub component: Option<String>,
    /// Processes whose CPU counts for every path (the NATS server).
    pub extra_watches: Vec<Watch>,
    /// Where the sidecars' data dir, resources and logs go.
    pub dir: PathBuf,
}

impl<D> Broker<D> {
    fn topic(&self, path: &str, what: &str) -> String {
        format!("{}{path}{}{what}", self.prefix, self.sep)
    }

    fn watches(&self, mut w: Vec<Watch>) -> Vec<Watch> {
        w.extend(self.extra_watches.iter().cloned());
        w
    }
}

/// The bench's own process: the publisher and the app.
fn bench_watch() -> Watch {
    crate::invoke::watch("bench (publisher + app)", std::process::id())
}

/// The whole sequence for one broker. Each failed phase becomes a note; the rest run.
pub async fn run_broker<D: Direct>(
    ctx: &Ctx<'_>,
    b: &Broker<D>,
    report: &mut PubsubReport,
    notes: &mut Vec<String>,
) -> Result<()> {
    let args = ctx.args;
    let (t, short) = (b.title, b.short);
    let bulk = Shape {
        size: args.payload,
        bulk: args.bulk,
        total: b.messages,
    };
    let single = Shape::single(args.payload);
    let me = bench_watch();

    // Direct throughput.
    let topic = b.topic("direct", "tput");
    let res = async {
        let consumer = b.direct.consumer(ctx, &topic).await?;
        let publishers = b.direct.publishers(&topic, bulk, args.publishers);
        let watches = b.watches(vec![me.clone()]);
        let row = throughput(ctx, t, b.direct_path, &topic, publishers, bulk, watches).await;
        consumer.stop().await?;
        row
    }
    .await;
    let what = format!("{short} direct throughput");
    report.throughput.extend(keep(notes, &what, res));

    let sidecars = match &ctx.bin {
        Some(bin) => {
            let started = start_sidecars(ctx, b, bin).await;
            keep(notes, &format!("starting the {short} sidecars"), started)
        }
        None => None,
    };
    let sidecar_watches = |both: bool| -> Vec<Watch> {
        let Some((p, s)) = &sidecars else {
            return Vec::new();
        };
        let mut w = vec![crate::invoke::watch("publisher sidecar", p.pid())];
        if both {
            w.push(crate::invoke::watch("subscriber sidecar", s.pid()));
        }
        w
    };
    let http_publishers = |port: u16, topic: &str, shape: Shape, n: usize| {
        (0..n)
            .map(|_| paths::http_publisher(port, b.pubsub, topic, shape))
            .collect::<Result<Vec<_>>>()
    };

    if let Some((p, _)) = &sidecars {
        for (what, path) in [
            ("tput", "sidecars, subscription"),
            ("tput-bulk", "sidecars, bulkSubscribe"),
        ] {
            let topic = b.topic("sidecar", what);
            let res = async {
                let publishers = http_publishers(p.port, &topic, bulk, args.publishers)?;
                let mut watches = sidecar_watches(true);
                watches.push(me.clone());
                throughput(ctx, t, path, &topic, publishers, bulk, b.watches(watches)).await
            }
            .await;
            let what = format!("{short} throughput, {path}");
            report.throughput.extend(keep(notes, &what, res));
        }
    }

    // Publish latency, nobody subscribed (the brokers store regardless).
    let topic = b.topic("direct", "lat");
    let clients = b.direct.publishers(&topic, single, args.bench.connections);
    let res = publish_latency(ctx, t, b.direct_path, true, clients, b.watches(vec![])).await;
    let what = format!("{short} direct publish latency");
    report.publish.extend(keep(notes, &what, res));
    if let Some((p, _)) = &sidecars {
        let res = async {
            let topic = b.topic("sidecar", "lat");
            let clients = http_publishers(p.port, &topic, single, args.bench.connections)?;
            let watches = b.watches(sidecar_watches(false));
            publish_latency(ctx, t, "sidecar", false, clients, watches).await
        }
        .await;
        let what = format!("{short} sidecar publish latency");
        report.publish.extend(keep(notes, &what, res));
    }

    // Publish→delivery latency: the direct baseline, any further one, then the sidecars.
    let direct_e2e = async |direct: &D, path: &str, baseline: bool, what: &str| {
        let topic = b.topic("direct", what);
        let consumer = direct.consumer(ctx, &topic).await?;
        let clients = direct.publishers(&topic, single, args.bench.connections);
        let watches = b.watches(vec![]);
        let row = end_to_end(ctx, t, path, baseline, &topic, clients, watches).await;
        consumer.stop().await?;
        row
    };
    let res = direct_e2e(&b.direct, b.direct_path, true, "e2e").await;
    let what = format!("{short} direct publish→delivery");
    report.e2e.extend(keep(notes, &what, res));
    let res = async {
        match b.direct.second().await? {
            Some((path, second)) => direct_e2e(&second, path, false, "e2e2").await.map(Some),
            None => Ok(None),
        }
    }
    .await;
    let what = format!("{short} second direct publish→delivery");
    report.e2e.extend(keep(notes, &what, res).flatten());
    if let Some((p, _)) = &sidecars {
        let topic = b.topic("sidecar", "e2e");
        let res = async {
            let clients = http_publishers(p.port, &topic, single, args.bench.connections)?;
            let watches = b.watches(sidecar_watches(true));
            end_to_end(ctx, t, "sidecars", false, &topic, clients, watches).await
        }
        .await;
        let what = format!("{short} sidecars publish→delivery");
        report.e2e.extend(keep(notes, &what, res));
    }

    if let Some((mut p, mut s)) = sidecars {
        // The subscriber first: it is the one with deliveries to drain.
        notes.extend(s.stop().await);
        notes.extend(p.stop().await);
    }
    Ok(())
}

fn subscription(pubsub: &str, topic: &str, bulk: bool) -> String {
    let bulk = if bulk {
        r#","bulkSubscribe":{"enabled":true,"maxMessagesCount":100,"maxAwaitDurationMs":10}"#
    } else {
        ""
    };
    format!(r#"{{"pubsubname":"{pubsub}","topic":"{topic}","route":"/in"{bulk}}}"#)
}

/// The publisher sidecar (no app) and the subscriber sidecar (fronting the bench's app),
/// on one data dir, waiting until each sidecar topic's subscription is live.
async fn start_sidecars<D>(
    ctx: &Ctx<'_>,
    b: &Broker<D>,
    bin: &std::path::Path,
) -> Result<(Sidecar, Sidecar)> {
    let data_dir = b.dir.join("data");
    let resources = b.dir.join("components");
    if let Some(yaml) = &b.component {
        paths::resources_dir(&resources, yaml)?;
    }
    let sidecar_topics = ["tput", "tput-bulk", "e2e"].map(|w| b.topic("sidecar", w));
    ctx.app.board.set_subscriptions(format!(
        "[{},{},{}]",
        subscription(b.pubsub, &sidecar_topics[0], false),
        subscription(b.pubsub, &sidecar_topics[1], true),
        subscription(b.pubsub, &sidecar_topics[2], false),
    ));
    let spec = |role: &str, app_id: &'static str| {
        let mut spec = Spec::new(
            format!("{role} sidecar ({})", b.short),
            app_id,
            &data_dir,
            b.dir.join(format!("{role}.log")),
        );
        spec.resources = b.component.as_ref().map(|_| resources.as_path());
        spec
    };
    let publisher = Sidecar::start(bin, spec("publisher", PUB_APP)).await?;
    let mut sub = spec("subscriber", SUB_APP);
    sub.app = Some((ctx.app.port, "http"));
    let subscriber = Sidecar::start(bin, sub).await?;
    for topic in &sidecar_topics {
        paths::wait_subscribed(
            &ctx.app.board,
            publisher.port,
            b.pubsub,
            topic,
            SUBSCRIBE_LIMIT,
        )
        .await?;
    }
    Ok((publisher, subscriber))
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
    let tally = take(board, topic)?;
    published?;
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

fn take(board: &app::Board, topic: &str) -> Result<Tally> {
    board
        .take(topic)
        .ok_or_else(|| anyhow!("no tally for {topic}"))
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
    let label = format!("publish {path}");
    let bench = &ctx.args.bench;
    let m = runner::phase(bench, &label, bench.fixed_rate(), clients, &watches).await?;
    Ok(Latency::new(broker, path, direct, m, None, &watches))
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
    let bench = &ctx.args.bench;
    let board = &ctx.app.board;
    // Message `seq` is scheduled at seq/rate after the start: the measured ones are those
    // scheduled after the warm-up, as in the publish outcome.
    let first_measured = (bench.warmup.as_secs_f64() * f64::from(bench.rate)).ceil() as u64;
    board.track(topic, first_measured)?;
    let label = format!("e2e {path}");
    let res = runner::phase(
        bench,
        &label,
        Mode::FixedRate(f64::from(bench.rate)),
        clients,
        &watches,
    )
    .await;
    let complete = match &res {
        Ok(m) => app::wait_for(board, topic, m.outcome.ok, E2E_DRAIN).await,
        Err(_) => false,
    };
    let tally = take(board, topic)?;
    let m = res?;
    eprintln!(
        "  {path}: delivered {} of {} measured, publish→delivery p50 {:.3} ms, p99 {:.3} ms{}",
        tally.measured,
        m.outcome.ok,
        tally.ms(0.5),
        tally.ms(0.99),
        if complete { "" } else { " (some missing)" }
    );
    Ok(Latency::new(broker, path, direct, m, Some(tally), &watches))
}
