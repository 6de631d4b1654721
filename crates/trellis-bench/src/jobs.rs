//! `trellis-bench jobs`: the jobs (scheduler) building block through a sidecar against the
//! scheduler and embedded store used in process.
//!
//! Three scenarios, each on both paths:
//! * **scheduling**: `--jobs` far-future one-shot jobs scheduled by `--connections`
//!   clients (`POST /v1.0/jobs/<name>` through the sidecar); jobs scheduled per second;
//! * **triggers**: `--triggers` one-shot jobs all due at one instant; triggers delivered
//!   to the app per second, from that instant to the last arrival;
//! * **lateness**: `--active` jobs `@every 1s`, their due times spread over the second,
//!   for `--duration`; how late each trigger reaches the app (p50/p99), ms.
//!
//! The app is an HTTP server in this process that notes each `POST /job/<name>`; the
//! baseline's trigger notes the job directly, without the app channel.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_trait::async_trait;
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use trellis_jobs::sqlite::SqliteJobStore;
use trellis_jobs::{
    JobData, JobSpec, Metadata, Scheduler, SchedulerOptions, StoredJob, Trigger, TriggerOutcome,
};

use crate::report::{self, Align, Table, Target as Goal};
use crate::runner::{BenchArgs, Session};
use crate::sidecar::{Sidecar, Spec};

/// Jobs scheduled per second through a sidecar, 16 clients (issue 13).
const TARGET_SCHEDULE_PER_S: f64 = 10_000.0;
/// Triggers delivered to an app per second (issue 13).
const TARGET_TRIGGERS_PER_S: f64 = 20_000.0;
/// Fire lateness p99 at 1,000 active jobs, ms (issue 13).
const TARGET_P99_MS: f64 = 50.0;

#[derive(Args)]
pub struct JobsArgs {
    #[command(flatten)]
    bench: BenchArgs,
    /// Jobs in the scheduling scenario.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Jobs due at one instant in the triggers scenario.
    #[arg(long, default_value_t = 20_000)]
    triggers: usize,
    /// Jobs firing every second in the lateness scenario.
    #[arg(long, default_value_t = 1000)]
    active: usize,
}

fn now_ms() -> i64 {
    trellis_jobs::now_ms()
}

/// What the app (or the baseline's trigger) saw: arrivals and lateness.
#[derive(Default)]
struct Seen {
    arrivals: Mutex<Vec<i64>>,
    late_us: Mutex<Vec<u64>>,
}

impl Seen {
    /// Notes one trigger of a job whose data is `{"t0": ms, "i": n}` (lateness jobs) or
    /// anything else (counted only).
    fn note(&self, data: &Value) {
        let at = now_ms();
        if let Ok(mut a) = self.arrivals.lock() {
            a.push(at);
        }
        if let (Some(t0), Some(i)) = (data["t0"].as_i64(), data["i"].as_i64()) {
            // Ticks are at t0 + i + k s: the nearest one before the arrival.
            let since = at - t0 - i;
            let k = since.div_euclid(1000);
            let late_ms = since - k * 1000;
            if let Ok(mut l) = self.late_us.lock() {
                l.push(u64::try_from(late_ms.max(0)).unwrap_or(0) * 1000);
            }
        }
    }

    fn count(&self) -> usize {
        self.arrivals.lock().map(|a| a.len()).unwrap_or(0)
    }

    fn take(&self) -> (Vec<i64>, Vec<u64>) {
        let a = self.arrivals.lock().map(|mut a| std::mem::take(&mut *a));
        let l = self.late_us.lock().map(|mut l| std::mem::take(&mut *l));
        (a.unwrap_or_default(), l.unwrap_or_default())
    }

    async fn wait_for(&self, n: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while self.count() < n {
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} of {n} triggers arrived within {limit:?}",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

/// The app: answers 200 to every request, noting `POST /job/...` bodies.
async fn serve_app(listener: TcpListener, seen: Arc<Seen>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let seen = seen.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let seen = seen.clone();
                async move {
                    let is_job = req.uri().path().starts_with("/job/");
                    let body = req.into_body().collect().await.map(|c| c.to_bytes());
                    if is_job && let Ok(body) = body {
                        seen.note(&serde_json::from_slice(&body).unwrap_or_default());
                    }
                    Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::new())))
                }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The baseline's trigger: notes the job's data without any app channel.
struct Direct(Arc<Seen>);

#[async_trait]
impl Trigger for Direct {
    async fn trigger(&self, job: &StoredJob) -> TriggerOutcome {
        let data = job
            .spec
            .data
            .as_ref()
            .and_then(|d| serde_json::from_slice(&d.value).ok())
            .unwrap_or_default();
        self.0.note(&data);
        TriggerOutcome::Delivered
    }
}

/// Where jobs are scheduled: a sidecar's HTTP API, or the scheduler in process.
#[derive(Clone)]
enum Target {
    Sidecar {
        client: Box<Client<HttpConnector, Full<Bytes>>>,
        port: u16,
    },
    InProcess(Scheduler),
}

impl Target {
    async fn schedule(&self, name: &str, body: Value) -> Result<()> {
        match self {
            Target::Sidecar { client, port } => {
                let req = Request::post(format!("http://127.0.0.1:{port}/v1.0/jobs/{name}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))?;
                let resp = client.request(req).await?;
                let status = resp.status();
                let text = resp.into_body().collect().await?.to_bytes();
                anyhow::ensure!(
                    status.is_success(),
                    "{status}: {}",
                    String::from_utf8_lossy(&text)
                );
            }
            Target::InProcess(s) => {
                let str_field = |k: &str| body[k].as_str().map(str::to_string);
                let spec = JobSpec {
                    name: name.to_string(),
                    schedule: str_field("schedule"),
                    due_time: str_field("dueTime"),
                    data: body.get("data").map(|d| JobData {
                        type_url: String::new(),
                        value: d.to_string().into_bytes(),
                    }),
                    ..JobSpec::default()
                };
                s.schedule(&spec, false).await?;
            }
        }
        Ok(())
    }

    /// Schedules `n` jobs named `<prefix>-<i>` with `body(i)` from `clients` tasks.
    async fn schedule_many(
        &self,
        prefix: &str,
        n: usize,
        clients: usize,
        body: impl Fn(usize) -> Value + Send + Sync + 'static,
    ) -> Result<Duration> {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let body = Arc::new(body);
        let began = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (target, next, body, prefix) =
                (self.clone(), next.clone(), body.clone(), prefix.to_string());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return Ok::<(), anyhow::Error>(());
                    }
                    target.schedule(&format!("{prefix}-{i}"), body(i)).await?;
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(began.elapsed())
    }
}

/// What one path measured.
struct Measured {
    label: String,
    scheduled_per_s: f64,
    triggers_per_s: f64,
    late: Histogram<u64>,
}

async fn measure(
    label: &str,
    target: Target,
    seen: &Arc<Seen>,
    args: &JobsArgs,
    run: &str,
) -> Result<Measured> {
    let clients = args.bench.connections;
    let limit = Duration::from_secs(300);
    // Scheduling: far-future one-shot jobs.
    target
        .schedule_many(
            &format!("{run}-warm"),
            500,
            clients,
            |_| json!({"dueTime": "1h"}),
        )
        .await
        .context("warm-up")?;
    let took = target
        .schedule_many(
            &format!("{run}-sched"),
            args.jobs,
            clients,
            |_| json!({"dueTime": "1h"}),
        )
        .await
        .context("scheduling")?;
    let scheduled_per_s = args.jobs as f64 / took.as_secs_f64();

    // Triggers: all due at one instant, far enough ahead to schedule them all first.
    seen.take();
    let lead = Duration::from_secs_f64((args.triggers as f64 / 2_000.0).max(2.0));
    let due = now_ms() + i64::try_from(lead.as_millis()).unwrap_or(i64::MAX);
    let due_text = trellis_core::time::rfc3339_ms(due);
    target
        .schedule_many(
            &format!("{run}-trig"),
            args.triggers,
            clients,
            move |_| json!({"dueTime": due_text, "data": {"n": 1}}),
        )
        .await
        .context("triggers")?;
    seen.wait_for(args.triggers, limit)
        .await
        .context("triggers")?;
    let (arrivals, _) = seen.take();
    let last = arrivals.iter().copied().max().unwrap_or(due);
    let triggers_per_s = args.triggers as f64 / ((last - due).max(1) as f64 / 1000.0);

    // Lateness: `--active` jobs every second, spread over the second.
    let t0 = now_ms() + 2_000;
    let n = args.active;
    target
        .schedule_many(&format!("{run}-late"), n, clients, move |i| {
            let offset = i64::try_from(i * 1000 / n.max(1)).unwrap_or(0);
            json!({
                "schedule": "@every 1s",
                "dueTime": trellis_core::time::rfc3339_ms(t0 + offset),
                "data": {"t0": t0, "i": offset},
            })
        })
        .await
        .context("lateness")?;
    let wait = Duration::from_millis(u64::try_from((t0 - now_ms()).max(0)).unwrap_or(0));
    tokio::time::sleep(wait + args.bench.warmup).await;
    seen.take();
    tokio::time::sleep(args.bench.duration).await;
    let (_, late) = seen.take();
    let mut h = Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!("3 figures is valid"));
    for l in late {
        let _ = h.record(l.max(1));
    }
    Ok(Measured {
        label: label.into(),
        scheduled_per_s,
        triggers_per_s,
        late: h,
    })
}

pub async fn run(args: JobsArgs) -> Result<()> {
    let session = Session::start(&args.bench, "trellis-bench-jobs-", None)?;
    let mut notes = Vec::new();
    let mut results = Vec::new();

    // Baseline: the scheduler and embedded store in process.
    let dir = session.tmp.path().join("direct");
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("jobs.db").display().to_string();
    let store = Arc::new(
        SqliteJobStore::open(&Metadata::from_pairs([("connectionString", db.as_str())])).await?,
    );
    let seen = Arc::new(Seen::default());
    let scheduler = Scheduler::new(store, SchedulerOptions::new("default||jobbench"));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(
        scheduler
            .clone()
            .run(Arc::new(Direct(seen.clone())), stopped),
    );
    match measure(
        "scheduler in process (baseline)",
        Target::InProcess(scheduler),
        &seen,
        &args,
        "direct",
    )
    .await
    {
        Ok(m) => results.push(m),
        Err(e) => notes.push(format!("baseline failed: {e:#}")),
    }
    stop.send_replace(true);

    // Through a sidecar, to an HTTP app in this process.
    if let Some(bin) = session.bin.clone() {
        let seen = Arc::new(Seen::default());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let app_port = listener.local_addr()?.port();
        let app = tokio::spawn(serve_app(listener, seen.clone()));
        let data = session.tmp.path().join("sidecar");
        std::fs::create_dir_all(&data)?;
        let mut spec = Spec::new(
            "sidecar",
            "jobbench",
            &data,
            session.tmp.path().join("sidecar.log"),
        );
        spec.app = Some((app_port, "http"));
        let sidecar = Sidecar::start(&bin, spec)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(args.bench.connections)
            .build(connector);
        let target = Target::Sidecar {
            client: Box::new(client),
            port: sidecar.port,
        };
        match measure("through a sidecar (HTTP)", target, &seen, &args, "sidecar").await {
            Ok(m) => results.push(m),
            Err(e) => notes.push(format!("sidecar path failed: {e:#}")),
        }
        drop(sidecar);
        app.abort();
    }

    let mut md = String::new();
    report::write_run_header(&mut md, "jobs", &session);
    let _ = writeln!(
        md,
        "\n{} one-shot jobs scheduled by {} clients; {} jobs due at one instant; {} jobs every second for {:?}.\n",
        args.jobs, args.bench.connections, args.triggers, args.active, args.bench.duration
    );
    let mut t = Table::new([
        ("path", Align::Left),
        ("scheduled/s", Align::Right),
        ("triggers/s", Align::Right),
        ("late p50", Align::Right),
        ("late p99", Align::Right),
    ]);
    let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    for m in &results {
        t.push(vec![
            m.label.clone(),
            format!("{:.0}", m.scheduled_per_s),
            format!("{:.0}", m.triggers_per_s),
            report::ms(q(&m.late, 0.5)),
            report::ms(q(&m.late, 0.99)),
        ]);
    }
    t.render(&mut md);
    if let Some(m) = results.iter().find(|m| m.label.starts_with("through")) {
        let per_s = |v: f64| format!("{v:.0}");
        let ms = |v: f64| format!("{v:.3} ms");
        let goals = [
            Goal::at_least(
                format!("≥ {TARGET_SCHEDULE_PER_S:.0} jobs scheduled/s"),
                Some(m.scheduled_per_s),
                TARGET_SCHEDULE_PER_S,
                "—".into(),
                per_s,
            ),
            Goal::at_least(
                format!("≥ {TARGET_TRIGGERS_PER_S:.0} triggers/s to the app"),
                Some(m.triggers_per_s),
                TARGET_TRIGGERS_PER_S,
                "—".into(),
                per_s,
            ),
            Goal::at_most(
                format!(
                    "lateness p99 ≤ {TARGET_P99_MS} ms at {} active jobs",
                    args.active
                ),
                Some(q(&m.late, 0.99)),
                TARGET_P99_MS,
                "—".into(),
                ms,
            ),
        ];
        md.push('\n');
        report::targets_table(&mut md, ["measured", "reference"], &goals);
    }
    for n in session.notes.iter().chain(&notes) {
        let _ = writeln!(md, "\n- {n}");
    }
    session.finish(&md)
}
