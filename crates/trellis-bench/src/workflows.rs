//! `trellis-bench workflows`: workflow throughput and latency through a sidecar, driven by a
//! load generator that speaks the workers' protocol (`TaskHubSidecarService`) itself, so
//! that what is measured is the sidecar and its store, not an SDK's replay speed.
//!
//! The generator is a scripted worker ([`trellis_workflow::conformance::scripted_turn`]):
//! two `GetWorkItems` streams (two workers) answer every turn and activity at once. The
//! scenarios:
//! * **throughput**: `--workflows` instances of a chain of five activities, started as fast
//!   as `--connections` clients can; workflows completed per second, start→completion
//!   latency under that load, and the sidecar's RSS before and after;
//! * **latency**: chains started at `--latency-rate` per second for `--duration`;
//!   start→completion p50/p99;
//! * **fan-out**: one instance that schedules `--fanout` activities at once; start→completion.
//!
//! The baseline is the same engine and embedded store used directly in process, with the
//! same scripted worker attached in process: what the gRPC hop and the process boundary add.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use tokio::sync::Notify;
use tonic::transport::{Channel, Endpoint};
use trellis_proto::durabletask::task_hub_sidecar_service_client::TaskHubSidecarServiceClient;
use trellis_proto::durabletask::work_item::Request;
use trellis_proto::durabletask::{CreateInstanceRequest, GetWorkItemsRequest};
use trellis_workflow::conformance::{scripted_activity, scripted_turn};
use trellis_workflow::engine::StartRequest;
use trellis_workflow::events::ends_execution;
use trellis_workflow::{Engine, EngineOptions, Metadata};

use crate::procs;
use crate::report::{self, Align, Table, Target as Goal};
use crate::runner::{BenchArgs, Session};
use crate::sidecar::{Sidecar, Spec};

/// Chained workflows per second through a sidecar on the embedded store (issue 12).
const TARGET_WF_PER_S: f64 = 1000.0;
/// Chained workflows per second through a sidecar on PostgreSQL (issue 12).
const TARGET_PG_WF_PER_S: f64 = 500.0;
/// Start→completion p50 at 100 workflows/s, ms (issue 12).
const TARGET_P50_MS: f64 = 20.0;
/// A fan-out of 1,000 activities, s (issue 12).
const TARGET_FANOUT_S: f64 = 2.0;

#[derive(Args)]
pub struct WorkflowsArgs {
    #[command(flatten)]
    bench: BenchArgs,
    /// Chained workflows in the throughput scenario.
    #[arg(long, default_value_t = 5000)]
    workflows: usize,
    /// Activities in the fan-out scenario.
    #[arg(long, default_value_t = 1000)]
    fanout: i32,
    /// Workflows started per second in the latency scenario.
    #[arg(long, default_value_t = 100)]
    latency_rate: u32,
    /// Which backends to run (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sqlite,postgres"
    )]
    backends: Vec<BackendName>,
    /// The PostgreSQL backend's connection string.
    #[arg(long, default_value = "host=127.0.0.1 user=postgres dbname=test")]
    postgres: String,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BackendName {
    /// The embedded store (`workflowbackend.sqlite`).
    Sqlite,
    /// `workflowbackend.postgresql` on `--postgres`.
    Postgres,
}

impl BackendName {
    fn label(self) -> &'static str {
        match self {
            BackendName::Sqlite => "embedded",
            BackendName::Postgres => "postgres",
        }
    }
}

/// The table prefix of the PostgreSQL runs: fixed, so repeated runs reuse their tables
/// (emptied before each phase) instead of piling up new ones.
const PG_TABLE: &str = "trellis_bench_workflow";

/// Which workflow a scripted worker runs, by the instance id's prefix.
fn shape(instance: &str) -> (i32, i32) {
    match instance.strip_prefix("fan") {
        Some(rest) => (
            rest.split('-')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(1),
            1,
        ),
        None => (1, 5),
    }
}

/// Start and completion times, by instance.
#[derive(Default)]
struct Tracker {
    started: Mutex<HashMap<String, Instant>>,
    latencies: Mutex<Vec<Duration>>,
    done: Notify,
}

impl Tracker {
    fn start(&self, id: &str) {
        if let Ok(mut s) = self.started.lock() {
            s.insert(id.to_string(), Instant::now());
        }
    }

    fn complete(&self, id: &str) {
        let started = self.started.lock().ok().and_then(|mut s| s.remove(id));
        if let (Some(t), Ok(mut l)) = (started, self.latencies.lock()) {
            l.push(t.elapsed());
        }
        self.done.notify_waiters();
    }

    fn take(&self) -> Vec<Duration> {
        self.latencies
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    fn completed(&self) -> usize {
        self.latencies.lock().map(|l| l.len()).unwrap_or(0)
    }

    async fn wait_for(&self, n: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let woken = self.done.notified();
            if self.completed() >= n {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            anyhow::ensure!(
                !left.is_zero(),
                "only {} of {n} workflows completed within {limit:?}",
                self.completed()
            );
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), woken).await;
        }
    }
}

/// Where the workflows run: a sidecar over gRPC, or the engine in process.
#[derive(Clone)]
enum Target {
    Sidecar(Vec<TaskHubSidecarServiceClient<Channel>>),
    InProcess(Engine),
}

impl Target {
    async fn start(&self, i: usize, id: String) -> Result<()> {
        match self {
            Target::Sidecar(clients) => {
                let mut c = clients[i % clients.len()].clone();
                c.start_instance(CreateInstanceRequest {
                    instance_id: id,
                    name: "bench".into(),
                    ..CreateInstanceRequest::default()
                })
                .await?;
            }
            Target::InProcess(engine) => {
                engine
                    .start_instance(StartRequest {
                        instance_id: Some(id),
                        name: "bench".into(),
                        ..StartRequest::default()
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// Attaches `n` scripted workers.
    fn workers(&self, n: usize, tracker: &Arc<Tracker>) {
        for w in 0..n {
            let tracker = tracker.clone();
            match self.clone() {
                Target::Sidecar(clients) => {
                    tokio::spawn(async move {
                        let mut c = clients[w % clients.len()].clone();
                        let Ok(stream) = c.get_work_items(GetWorkItemsRequest::default()).await
                        else {
                            eprintln!("bench worker: GetWorkItems failed");
                            return;
                        };
                        let mut stream = stream.into_inner();
                        let mut next = w;
                        while let Ok(Some(item)) = stream.message().await {
                            next += 1;
                            let mut c = clients[next % clients.len()].clone();
                            let tracker = tracker.clone();
                            tokio::spawn(async move {
                                match item.request {
                                    Some(Request::WorkflowRequest(req)) => {
                                        let (fan, rounds) = shape(&req.instance_id);
                                        let res = scripted_turn(&req, fan, rounds);
                                        let done = ends_execution(&res);
                                        if c.complete_orchestrator_task(res).await.is_ok() && done {
                                            tracker.complete(&req.instance_id);
                                        }
                                    }
                                    Some(Request::ActivityRequest(req)) => {
                                        let _ =
                                            c.complete_activity_task(scripted_activity(&req)).await;
                                    }
                                    _ => {}
                                }
                            });
                        }
                    });
                }
                Target::InProcess(engine) => {
                    tokio::spawn(async move {
                        let mut conn = engine.connect_worker();
                        while let Some(item) = conn.next().await {
                            let engine = engine.clone();
                            let tracker = tracker.clone();
                            tokio::spawn(async move {
                                match item.request {
                                    Some(Request::WorkflowRequest(req)) => {
                                        let (fan, rounds) = shape(&req.instance_id);
                                        let res = scripted_turn(&req, fan, rounds);
                                        let done = ends_execution(&res);
                                        if engine.complete_workflow(res).await.is_ok() && done {
                                            tracker.complete(&req.instance_id);
                                        }
                                    }
                                    Some(Request::ActivityRequest(req)) => {
                                        let _ =
                                            engine.complete_activity(scripted_activity(&req)).await;
                                    }
                                    _ => {}
                                }
                            });
                        }
                    });
                }
            }
        }
    }
}

/// What one target measured.
struct Measured {
    label: String,
    wf_per_s: f64,
    loaded: Histogram<u64>,
    paced: Histogram<u64>,
    fanout: Duration,
    rss: Option<(u64, u64)>,
}

fn histogram(latencies: &[Duration]) -> Histogram<u64> {
    let mut h =
        Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!("3 significant figures is valid"));
    for l in latencies {
        let _ = h.record(u64::try_from(l.as_micros()).unwrap_or(u64::MAX).max(1));
    }
    h
}

async fn measure(
    label: &str,
    target: Target,
    args: &WorkflowsArgs,
    pid: Option<u32>,
    run: &str,
) -> Result<Measured> {
    let tracker = Arc::new(Tracker::default());
    target.workers(2, &tracker);
    let limit = Duration::from_secs(300);
    // Warm-up: connections, statements, the store's pages.
    let warm = 200;
    starts(
        &target,
        &tracker,
        &format!("{run}-warm"),
        warm,
        args.bench.connections,
    )
    .await?;
    tracker.wait_for(warm, limit).await.context("warm-up")?;
    tracker.take();
    let rss_before = pid.map(|p| procs::rss_kb(&[p]));

    let began = Instant::now();
    starts(
        &target,
        &tracker,
        &format!("{run}-tp"),
        args.workflows,
        args.bench.connections,
    )
    .await?;
    tracker
        .wait_for(args.workflows, limit)
        .await
        .context("throughput")?;
    let wf_per_s = args.workflows as f64 / began.elapsed().as_secs_f64();
    let loaded = histogram(&tracker.take());
    let rss_after = pid.map(|p| procs::rss_kb(&[p]));

    // Paced: one start every 1/rate.
    let every = Duration::from_secs_f64(1.0 / f64::from(args.latency_rate));
    let n = (args.bench.duration.as_secs_f64() * f64::from(args.latency_rate)) as usize;
    let mut tick = tokio::time::interval(every);
    for i in 0..n {
        tick.tick().await;
        let id = format!("{run}-lat-{i}");
        tracker.start(&id);
        let target = target.clone();
        tokio::spawn(async move {
            if let Err(e) = target.start(i, id).await {
                eprintln!("start failed: {e:#}");
            }
        });
    }
    tracker.wait_for(n, limit).await.context("latency")?;
    let paced = histogram(&tracker.take());

    let id = format!("fan{}-{run}", args.fanout);
    tracker.start(&id);
    let began = Instant::now();
    target.start(0, id).await?;
    tracker.wait_for(1, limit).await.context("fan-out")?;
    let fanout = began.elapsed();
    tracker.take();
    Ok(Measured {
        label: label.into(),
        wf_per_s,
        loaded,
        paced,
        fanout,
        rss: rss_before.zip(rss_after),
    })
}

/// Starts `n` chains named `<prefix>-<i>` from `clients` concurrent tasks.
async fn starts(
    target: &Target,
    tracker: &Arc<Tracker>,
    prefix: &str,
    n: usize,
    clients: usize,
) -> Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (target, tracker, next, prefix) = (
            target.clone(),
            tracker.clone(),
            next.clone(),
            prefix.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                let id = format!("{prefix}-{i}");
                tracker.start(&id);
                target.start(c, id).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The in-process baseline and the sidecar run on one backend.
async fn run_backend(
    args: &WorkflowsArgs,
    session: &mut Session,
    backend: BackendName,
    results: &mut Vec<Measured>,
) -> Result<()> {
    let label = backend.label();
    let dir = session.tmp.path().join(label);
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("workflows.db").display().to_string();
    let (metadata, yaml) = match backend {
        BackendName::Sqlite => (
            Metadata::from_pairs([("connectionString", db.as_str())]),
            None,
        ),
        BackendName::Postgres => (
            Metadata::from_pairs([
                ("connectionString", args.postgres.as_str()),
                ("tableName", PG_TABLE),
            ]),
            Some(format!(
                "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: wf\nspec:\n  type: workflowbackend.postgresql\n  version: v1\n  metadata:\n  - name: connectionString\n    value: \"{}\"\n  - name: tableName\n    value: {PG_TABLE}\n",
                args.postgres
            )),
        ),
    };
    let store: Arc<dyn trellis_workflow::WorkflowStore> = match backend {
        BackendName::Sqlite => {
            Arc::new(trellis_workflow::sqlite::SqliteWorkflowStore::open(&metadata).await?)
        }
        BackendName::Postgres => {
            Arc::new(trellis_workflow::postgres::PostgresWorkflowStore::open(&metadata).await?)
        }
    };
    let pg = (backend == BackendName::Postgres).then_some(args.postgres.as_str());
    let deadlocks = before_pg_phase(pg).await?;
    let engine = Engine::start(store, EngineOptions::new(format!("bench-{label}")));
    results.push(
        measure(
            &format!("{label}: engine in process (baseline)"),
            Target::InProcess(engine),
            args,
            None,
            &format!("{label}-direct"),
        )
        .await?,
    );
    after_pg_phase(pg, deadlocks, &format!("{label} in process"), session).await;
    let Some(bin) = session.bin.clone() else {
        return Ok(());
    };
    let deadlocks = before_pg_phase(pg).await?;
    let data = dir.join("sidecar");
    std::fs::create_dir_all(&data)?;
    let resources = dir.join("resources");
    if let Some(yaml) = &yaml {
        std::fs::create_dir_all(&resources)?;
        std::fs::write(resources.join("wf.yaml"), yaml)?;
    }
    let mut spec = Spec::new(
        format!("{label} sidecar"),
        "wfbench",
        &data,
        dir.join("sidecar.log"),
    );
    spec.grpc = true;
    if yaml.is_some() {
        spec.resources = Some(&resources);
    }
    let mut sidecar = Sidecar::start(&bin, spec)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let port = sidecar.grpc_port.context("the sidecar has no gRPC port")?;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        clients
            .push(TaskHubSidecarServiceClient::new(channel).max_decoding_message_size(usize::MAX));
    }
    let pid = sidecar.pid();
    let m = measure(
        &format!("{label}: through a sidecar (gRPC)"),
        Target::Sidecar(clients),
        args,
        Some(pid),
        &format!("{label}-sidecar"),
    )
    .await;
    session.notes.extend(sidecar.stop().await);
    after_pg_phase(
        pg,
        deadlocks,
        &format!("{label} through a sidecar"),
        session,
    )
    .await;
    results.push(m?);
    Ok(())
}

/// Before a phase on PostgreSQL (`pg`, when the phase is on it): empties the bench's
/// tables (created by the store when it opened), so that each phase starts from fresh
/// storage, not from the dead rows of earlier phases and runs, which only a vacuum removes
/// (and autovacuum may be off, or not yet due); then reads the database's deadlock count.
async fn before_pg_phase(pg: Option<&str>) -> Result<Option<i64>> {
    let Some(conn) = pg else { return Ok(None) };
    let client = pg_client(conn).await?;
    let t = PG_TABLE;
    client
        .batch_execute(&format!(
            "TRUNCATE {t}_instances, {t}_history, {t}_inbox, {t}_activities RESTART IDENTITY"
        ))
        .await
        .context("emptying the bench's workflow tables")?;
    Ok(Some(pg_deadlocks(&client).await?))
}

/// Notes the deadlocks PostgreSQL detected during a phase: each one stalls the
/// transactions in it for `deadlock_timeout` (a second by default), so one is enough to
/// show in the throughput.
async fn after_pg_phase(pg: Option<&str>, before: Option<i64>, phase: &str, s: &mut Session) {
    let (Some(conn), Some(before)) = (pg, before) else {
        return;
    };
    let after = match pg_client(conn).await {
        Ok(client) => pg_deadlocks(&client).await,
        Err(e) => Err(e),
    };
    match after {
        Ok(after) => s.notes.push(format!(
            "{phase}: {} deadlocks detected by PostgreSQL (pg_stat_database, the whole database)",
            after - before
        )),
        Err(e) => s.notes.push(format!("{phase}: deadlocks not read: {e:#}")),
    }
}

/// A connection of the bench's own; it closes when the client is dropped.
async fn pg_client(conn: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
        .await
        .context("connecting to postgresql")?;
    tokio::spawn(connection);
    Ok(client)
}

/// The database's count of deadlocks detected so far.
async fn pg_deadlocks(client: &tokio_postgres::Client) -> Result<i64> {
    // A backend's counts reach the view when it flushes them: when it exits (the
    // sidecar's connections, closed by now) or within seconds of going idle (the
    // in-process engine's), so the last ones of a phase may show in the next.
    let row = client
        .query_one(
            "SELECT coalesce(deadlocks, 0) FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .context("reading pg_stat_database")?;
    Ok(row.try_get(0)?)
}

pub async fn run(args: WorkflowsArgs) -> Result<()> {
    let mut session = Session::start(&args.bench, "trellis-bench-workflows-", None)?;
    let mut results = Vec::new();
    for backend in args.backends.clone() {
        if let Err(e) = run_backend(&args, &mut session, backend, &mut results).await {
            session
                .notes
                .push(format!("{} runs failed: {e:#}", backend.label()));
        }
    }
    let mut md = String::new();
    report::write_run_header(&mut md, "workflows", &session);
    let _ = writeln!(
        md,
        "\n{} chained workflows (5 activities each) started by {} clients; then {} wf/s for {:?}; then one fan-out of {} activities. Two scripted workers on `GetWorkItems` streams.\n",
        args.workflows, args.bench.connections, args.latency_rate, args.bench.duration, args.fanout
    );
    let mut t = Table::new([
        ("path", Align::Left),
        ("wf/s", Align::Right),
        ("p50 loaded", Align::Right),
        ("p99 loaded", Align::Right),
        ("p50 paced", Align::Right),
        ("p99 paced", Align::Right),
        ("fan-out", Align::Right),
        ("RSS before→after", Align::Right),
    ]);
    for m in &results {
        let q = |h: &Histogram<u64>, q: f64| report::ms(h.value_at_quantile(q) as f64 / 1000.0);
        t.push(vec![
            m.label.clone(),
            format!("{:.0}", m.wf_per_s),
            q(&m.loaded, 0.5),
            q(&m.loaded, 0.99),
            q(&m.paced, 0.5),
            q(&m.paced, 0.99),
            format!("{:.2} s", m.fanout.as_secs_f64()),
            m.rss
                .map(|(a, b)| format!("{:.1}→{:.1} MiB", a as f64 / 1024.0, b as f64 / 1024.0))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    md.push_str("Latencies are start→completion in ms.\n\n");
    t.render(&mut md);
    let mut goals = Vec::new();
    let per_s = |v: f64| format!("{v:.0}");
    for (label, target) in [
        ("embedded", TARGET_WF_PER_S),
        ("postgres", TARGET_PG_WF_PER_S),
    ] {
        let Some(m) = results
            .iter()
            .find(|m| m.label == format!("{label}: through a sidecar (gRPC)"))
        else {
            continue;
        };
        goals.push(Goal::at_least(
            format!("≥ {target:.0} wf/s (chain of 5, {label})"),
            Some(m.wf_per_s),
            target,
            "—".into(),
            per_s,
        ));
        if label == "embedded" {
            let ms = |v: f64| format!("{v:.3} ms");
            let secs = |v: f64| format!("{v:.2} s");
            goals.push(Goal::at_most(
                format!("p50 ≤ {TARGET_P50_MS} ms at {} wf/s", args.latency_rate),
                Some(m.paced.value_at_quantile(0.5) as f64 / 1000.0),
                TARGET_P50_MS,
                "—".into(),
                ms,
            ));
            goals.push(Goal::at_most(
                format!("fan-out of {} ≤ {TARGET_FANOUT_S} s", args.fanout),
                Some(m.fanout.as_secs_f64()),
                TARGET_FANOUT_S,
                "—".into(),
                secs,
            ));
        }
    }
    if !goals.is_empty() {
        report::targets_table(&mut md, ["measured", "reference"], &goals);
    }
    report::write_notes(&mut md, &session.notes);
    session.finish(&md)
}
