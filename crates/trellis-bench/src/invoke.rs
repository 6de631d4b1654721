//! `trellis-bench invoke`: the same load sent to a small echo app seven ways (directly,
//! through two trellis sidecars with mTLS and metrics on (the defaults), through the same
//! pair with mTLS off, with metrics off, with tracing at sampling 0.1 and at 1.0 exporting
//! to a live OTLP receiver, and through two nginx hops),
//! and a markdown report of latency,
//! throughput, CPU, memory and start-up time next to the targets. A sequential phase (one
//! connection, one request at a time) prices the default pair against nginx at no load
//! ([`floor`]). Scenarios whose parts are unavailable (no trellis binary, no nginx) are
//! skipped with a note; the rest run.

mod floor;

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;

use crate::load::{self, Target};
use crate::procs::Watch;
use crate::report::{self, PhaseText, Target as Goal};
use crate::runner::{self, BenchArgs, Results, Scenario, Session};
use crate::{echo, nginx, sidecar};

/// Targets for the trellis sidecars, as agreed for service invocation.
const ADDED_P50_MS: f64 = 0.10;
const ADDED_P90_MS: f64 = 0.15;
const ADDED_P99_MS: f64 = 0.30;
const CPU_CORES: f64 = 0.02;
const RSS_IDLE_MIB: f64 = 10.0;
const RSS_LOAD_MIB: f64 = 15.0;
/// What mTLS between the sidecars may add to the plaintext pair's p50.
const MTLS_ADDED_P50_MS: f64 = 0.03;
/// What metrics and tracing (at sampling 0.1) together may add to the pair without them;
/// the row prices metrics alone (neither pair has `spec.tracing`) against the joint budget.
const OBSERVABILITY_ADDED_P50_MS: f64 = 0.02;
const OBSERVABILITY_ADDED_P99_MS: f64 = 0.05;
/// A sidecar's idle RSS with metrics on.
const RSS_IDLE_METRICS_MIB: f64 = 12.0;
const START_MS: f64 = 50.0;
/// The rate at which the latency and CPU targets are defined.
const TARGET_RATE: u32 = 1000;

/// Scenario names.
const DIRECT: &str = "direct";
const TRELLIS: &str = "trellis";
const NGINX: &str = "nginx";
/// The same two hops, one nginx process each ([`nginx::Layout::ProcessPerHop`]).
const NGINX_PER_HOP: &str = "nginx-per-hop";
/// The same two sidecars with mTLS off (`spec.mtls.enabled: false`), to price mTLS.
const PLAINTEXT: &str = "trellis-plaintext";
/// The same two sidecars with `--enable-metrics=false`, to price metrics.
const METRICS_OFF: &str = "trellis-metrics-off";
/// The same two sidecars (metrics on) tracing every request at sampling 0.1 and 1.0 to a
/// live OTLP receiver, to price tracing.
const TRACING: [(&str, &str); 2] = [("trellis-tracing-0.1", "0.1"), ("trellis-tracing-1", "1")];
/// The same two sidecars as trellis with a retry and a circuit breaker policy on the
/// invoked app, which never fails here: the price of a policy that only stands by.
const RESILIENCY: &str = "trellis-resiliency";
/// The Resiliency resource of the [`RESILIENCY`] pair: Dapr's usual shape, a constant retry
/// and a breaker that trips after five consecutive failures, on app `echo` (sidecar B's).
const RESILIENCY_YAML: &str = "apiVersion: dapr.io/v1alpha1
kind: Resiliency
metadata:
  name: bench
spec:
  policies:
    retries:
      fiveTimes:
        policy: constant
        duration: 10ms
        maxRetries: 5
    circuitBreakers:
      echoBreaker:
        maxRequests: 1
        interval: 10s
        timeout: 30s
        trip: consecutiveFailures > 5
  targets:
    apps:
      echo:
        retry: fiveTimes
        circuitBreaker: echoBreaker
";

#[derive(Args)]
pub struct InvokeArgs {
    #[command(flatten)]
    pub bench: BenchArgs,
    /// Request body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub body: usize,
    /// Start/stop cycles for the start-to-healthy measurement.
    #[arg(long, default_value_t = 10)]
    startup_cycles: usize,
    /// Requests per path (direct, trellis, nginx) in the sequential phase; 0 skips it.
    #[arg(long, default_value_t = 20_000)]
    sequential: u64,
}

/// `connections` echo clients of `target`, each sending `body`.
pub fn echo_clients(
    target: &Target,
    body: &Bytes,
    connections: usize,
) -> Vec<impl load::Client + use<>> {
    (0..connections)
        .map(|_| load::echo_client(target, body.clone()))
        .collect()
}

/// The scenario of POSTing `body` to `target` and expecting it echoed.
pub fn echo_scenario<'a>(
    name: &str,
    target: Target,
    body: &Bytes,
    connections: usize,
) -> Scenario<'a> {
    let body = body.clone();
    Scenario::new(name, move || {
        let clients = echo_clients(&target, &body, connections);
        async move { Ok(clients) }
    })
}

/// A watch on one process.
pub fn watch(label: &str, pid: u32) -> Watch {
    Watch {
        label: label.to_owned(),
        pids: vec![pid],
    }
}

pub async fn run(args: InvokeArgs) -> Result<()> {
    let mut session = Session::start(&args.bench, "trellis-bench-", None)?;
    let bench = &args.bench;
    let nginx_bin = nginx::ensure_installed();
    let tmp = session.tmp.path().to_owned();
    let echo_port = crate::procs::free_port()?;
    let _echo = echo::spawn(echo_port).await?;
    let body = Bytes::from(vec![b'x'; args.body]);
    let n = bench.connections;
    let target = |port: u16, path: &str| Target {
        port,
        path: path.to_owned(),
    };
    let mut scenarios = vec![echo_scenario(DIRECT, target(echo_port, "/echo"), &body, n)];

    let data_dir = tmp.join("trellis-data");
    let mut sidecars = None;
    let mut variants_started: Vec<sidecar::Sidecars> = Vec::new();
    let sink = runner::keep(
        &mut session.notes,
        "the OTLP receiver",
        crate::otlp_sink::Sink::start().await,
    );
    if let Some(bin) = &session.bin {
        eprintln!("starting trellis sidecars ({})", bin.display());
        std::fs::create_dir_all(&data_dir)?;
        let started = sidecar::start_pair(bin, &tmp, &data_dir, echo_port, None).await;
        if let Some(s) = runner::keep(&mut session.notes, "starting the trellis sidecars", started)
        {
            let target = target(s.a.port, sidecar::INVOKE_PATH);
            scenarios.push(
                echo_scenario(TRELLIS, target, &body, n)
                    .against(DIRECT)
                    .watch(watch("sidecar A", s.a.pid()))
                    .watch(watch("sidecar B", s.b.pid())),
            );
            sidecars = Some(s);
        }
        // The variants of the trellis pair, each in a directory of its own: (name, its
        // Configuration, its other flags, whether its sidecar A gets a row of resources).
        let mut variants: Vec<(&str, Option<String>, Vec<String>, bool)> = vec![
            (PLAINTEXT, Some(PLAINTEXT_CONFIG.into()), vec![], false),
            (
                METRICS_OFF,
                None,
                vec!["--enable-metrics=false".into()],
                false,
            ),
        ];
        if let Some(sink) = &sink {
            for (name, rate) in TRACING {
                variants.push((name, Some(tracing_config(rate, sink.port)), vec![], true));
            }
        }
        let resources = tmp.join(RESILIENCY).join("resources");
        std::fs::create_dir_all(&resources)?;
        std::fs::write(resources.join("resiliency.yaml"), RESILIENCY_YAML)?;
        let resources = vec!["--resources-path".into(), resources.display().to_string()];
        variants.push((RESILIENCY, None, resources, true));
        for (name, config, args, watch_a) in variants {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let started = start_variant(bin, &tmp.join(name), echo_port, config, &args).await;
            if let Some(s) = runner::keep(&mut session.notes, &format!("the {name} pair"), started)
            {
                let target = target(s.a.port, sidecar::INVOKE_PATH);
                let mut scenario = echo_scenario(name, target, &body, n).against(DIRECT);
                if watch_a {
                    scenario = scenario.watch(watch(&format!("{name} A"), s.a.pid()));
                }
                scenarios.push(scenario);
                variants_started.push(s);
            }
        }
    }
    let mut nginxes = Vec::new();
    for (name, layout, what) in [
        (NGINX, nginx::Layout::Shared, "both hops"),
        (NGINX_PER_HOP, nginx::Layout::ProcessPerHop, "one per hop"),
    ] {
        let started = match &nginx_bin {
            Ok(bin) => start_nginx(bin, &tmp.join(name), echo_port, layout).await,
            Err(e) => Err(anyhow::anyhow!("{e:#}")),
        };
        let Some(n_) = runner::keep(&mut session.notes, &format!("the {name} scenario"), started)
        else {
            continue;
        };
        if nginxes.is_empty() {
            session.versions.push(format!("nginx: {}", n_.version));
        }
        scenarios.push(
            echo_scenario(name, target(n_.port, "/echo"), &body, n)
                .against(DIRECT)
                .watch(Watch {
                    label: format!("{name} workers ({}, {what})", n_.workers.len()),
                    pids: n_.workers.clone(),
                }),
        );
        nginxes.push((name, n_));
    }

    let results = runner::run(bench, scenarios, async |_| {}).await?;
    session.notes.extend(results.error_notes(""));
    let mut seq_paths = vec![(DIRECT, target(echo_port, "/echo"))];
    if let Some(s) = &sidecars {
        seq_paths.push((TRELLIS, target(s.a.port, sidecar::INVOKE_PATH)));
    }
    for (name, n_) in &nginxes {
        seq_paths.push((name, target(n_.port, "/echo")));
    }
    let sequential = match args.sequential {
        0 => Vec::new(),
        count => floor::sequential(&seq_paths, &body, count).await?,
    };
    session.notes.extend(floor::error_notes(&sequential));

    let mut startup = None;
    if let (Some(s), Some(bin)) = (sidecars.as_mut(), &session.bin) {
        session.notes.extend(s.a.exited_note());
        session.notes.extend(s.b.exited_note());
        // A stops for good here: the cycles reuse its app id and data dir.
        session.notes.extend(s.a.stop().await);
        eprintln!(
            "phase: {} start/stop cycles of sidecar A",
            args.startup_cycles
        );
        let cycles = sidecar::start_stop_cycles(bin, &tmp, &data_dir, args.startup_cycles).await;
        startup = runner::keep(&mut session.notes, "the start/stop cycles", cycles)
            .map(|c| (s.a.started_in, c));
        session.notes.extend(s.stop().await);
    }
    drop(nginxes);
    for mut p in variants_started {
        session.notes.extend(p.stop().await);
    }
    if let Some(sink) = &sink {
        session.notes.push(format!(
            "the OTLP receiver got {} spans from the tracing pairs",
            sink.spans()
        ));
    }

    let md = render(&args, &session, &results, &sequential, startup.as_ref());
    session.finish(&md)
}

/// A variant of the trellis pair in `dir`, with `config` as its Configuration and `args` as
/// more flags of both sidecars.
async fn start_variant(
    bin: &Path,
    dir: &Path,
    echo_port: u16,
    config: Option<String>,
    args: &[&str],
) -> Result<sidecar::Sidecars> {
    std::fs::create_dir_all(dir.join("data"))?;
    let config = match config {
        Some(yaml) => {
            let path = dir.join("config.yaml");
            std::fs::write(&path, yaml)?;
            Some(path)
        }
        None => None,
    };
    sidecar::start_pair_with(
        bin,
        dir,
        &dir.join("data"),
        echo_port,
        config.as_deref(),
        args,
    )
    .await
}

/// The plaintext pair's Configuration: mTLS off.
const PLAINTEXT_CONFIG: &str = "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: plain\nspec:\n  mtls:\n    enabled: false\n";

/// A tracing pair's Configuration: sampling at `rate`, exporting over OTLP/gRPC to the
/// bench's receiver on `port`.
fn tracing_config(rate: &str, port: u16) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: traced\n\
         spec:\n  tracing:\n    samplingRate: \"{rate}\"\n    otel:\n      \
         endpointAddress: \"127.0.0.1:{port}\"\n      protocol: grpc\n      isSecure: false\n"
    )
}

async fn start_nginx(
    bin: &Path,
    dir: &Path,
    echo_port: u16,
    layout: nginx::Layout,
) -> Result<nginx::Nginx> {
    std::fs::create_dir_all(dir)?;
    nginx::start(bin, dir, echo_port, layout)
        .await
        .context("nginx did not start")
}

fn render(
    args: &InvokeArgs,
    session: &Session,
    results: &Results,
    sequential: &[floor::Path],
    startup: Option<&(Duration, sidecar::Cycles)>,
) -> String {
    let bench = &args.bench;
    let mut s = String::new();
    report::write_run_header(&mut s, "service invocation", session);
    let _ = writeln!(
        s,
        "- Load: {} keep-alive HTTP/1.1 connections, {} B POST bodies, {} warm-up before each phase (not recorded)",
        bench.connections,
        args.body,
        report::secs(bench.warmup)
    );
    s.push_str(
        "- Paths: direct = client → echo app; trellis = client → sidecar A (HTTP API) → sidecar B (mTLS, the default) → echo app; \
         trellis-plaintext = the same with `spec.mtls.enabled: false`; \
         trellis-metrics-off = the same as trellis with `--enable-metrics=false` (trellis has metrics on, the default); \
         trellis-tracing-0.1 / -1 = the same as trellis with `spec.tracing` at that sampling rate, exporting over OTLP/gRPC to a receiver in the bench; \
         trellis-resiliency = the same as trellis with a Resiliency resource putting a constant retry (5 × 10 ms) and a circuit breaker (trips after 5 consecutive failures) on app `echo`; \
         nginx = client → nginx hop 1 → nginx hop 2 → echo app, one nginx with two workers serving both hops (issue 14's baseline); \
         nginx-per-hop = the same two hops in two nginx processes of one worker each, the shape of two sidecars. Everything on 127.0.0.1, all on the same cores.\n\n",
    );
    let text = PhaseText {
        labels: &["scenario"],
        unit: "req/s",
        who: "connection",
        added: "scenario − direct",
        shares: "The load generator, the echo app and the proxies share the same cores.",
    };
    if !sequential.is_empty() {
        floor::section(&mut s, sequential, DIRECT, args.sequential);
    }
    report::phase_tables(&mut s, bench, &text, &[results]);
    report::resources_table(&mut s, bench, "req/s", &[results]);
    startup_section(&mut s, startup);
    let mut goals = Vec::new();
    for (nginx, shape) in [(NGINX, ""), (NGINX_PER_HOP, ", a process per hop")] {
        goals.extend(floor::targets(
            sequential,
            results,
            &floor::Names {
                direct: DIRECT,
                trellis: TRELLIS,
                nginx,
                shape,
            },
        ));
    }
    goals.extend(targets(results, startup));
    report::targets_table(&mut s, ["trellis", "reference"], &goals);
    if bench.rate != TARGET_RATE {
        let _ = writeln!(
            s,
            "Latency and CPU targets are defined at {TARGET_RATE} req/s; this run used {} req/s.\n",
            bench.rate
        );
    }
    report::write_notes(&mut s, &session.notes);
    s
}

fn startup_section(s: &mut String, startup: Option<&(Duration, sidecar::Cycles)>) {
    s.push_str("## Start-to-healthy (sidecar A)\n\nFrom spawning the process to the first 204 from `GET /v1.0/healthz` (polled every ms).\n\n");
    let Some((first, c)) = startup else {
        s.push_str("Not measured: the trellis scenario did not run.\n\n");
        return;
    };
    let _ = writeln!(s, "- First start in this run: {}", ms_d(*first));
    if let (Some(med), Some(max)) = (median_ms(&c.start), c.start.iter().max()) {
        let _ = writeln!(
            s,
            "- {} start/stop cycles: median {med:.1} ms, max {}",
            c.start.len(),
            ms_d(*max)
        );
    }
    if let (Some(med), Some(max)) = (median_ms(&c.stop), c.stop.iter().max()) {
        let _ = writeln!(
            s,
            "- SIGTERM to exit: median {med:.1} ms, max {}",
            ms_d(*max)
        );
    }
    s.push('\n');
}

fn targets(results: &Results, startup: Option<&(Duration, sidecar::Cycles)>) -> Vec<Goal> {
    let mut rows = Vec::new();
    for (label, quantile, limit) in [
        ("p50", 0.50, ADDED_P50_MS),
        ("p90", 0.90, ADDED_P90_MS),
        ("p99", 0.99, ADDED_P99_MS),
    ] {
        let nginx = results.added_ms(NGINX, quantile);
        rows.push(Goal::added_at_most(
            format!("added latency {label} ≤ {limit:.2} ms"),
            results.added_ms(TRELLIS, quantile),
            limit,
            nginx.map_or("—".into(), report::added_ms),
        ));
    }
    let mtls = results
        .added_ms(TRELLIS, 0.50)
        .zip(results.added_ms(PLAINTEXT, 0.50))
        .map(|(tls, plain)| tls - plain);
    rows.push(at_most(
        format!("mTLS adds to p50 ≤ {MTLS_ADDED_P50_MS:.2} ms (vs the plaintext pair)"),
        mtls,
        MTLS_ADDED_P50_MS,
        |v| format!("{v:+.3} ms"),
    ));
    rows.extend(metrics_rows(results));
    rows.extend(tracing_rows(results));
    rows.extend(resiliency_rows(results));
    // Listed even when trellis was skipped, so a skipped run cannot be mistaken for one
    // that met the targets.
    let trellis = results.get(TRELLIS);
    for (i, name) in ["sidecar A", "sidecar B"].into_iter().enumerate() {
        let idle = trellis
            .and_then(|r| r.watches.get(i))
            .map(|w| report::mib(w.1));
        let fixed = trellis.and_then(|r| r.fixed.usage.get(i));
        let cpu = fixed.map(|u| u.cpu_cores);
        let rss = fixed.map(|u| report::mib(u.rss_max_kb));
        for (label, value, limit, show) in [
            (
                format!("{name} CPU ≤ {CPU_CORES} core"),
                cpu,
                CPU_CORES,
                cores as fn(f64) -> String,
            ),
            (
                format!("{name} RSS idle ≤ {RSS_IDLE_MIB} MiB"),
                idle,
                RSS_IDLE_MIB,
                mib_cell,
            ),
            (
                format!("{name} RSS under load ≤ {RSS_LOAD_MIB} MiB"),
                rss,
                RSS_LOAD_MIB,
                mib_cell,
            ),
        ] {
            rows.push(at_most(label, value, limit, show));
        }
    }
    let to_ms = |d: Duration| d.as_secs_f64() * 1e3;
    let cycles = startup.map(|(_, c)| &c.start[..]);
    let ms_cell = |v: f64| format!("{v:.1} ms");
    rows.push(at_most(
        format!("start-to-healthy median ≤ {START_MS} ms"),
        cycles.and_then(median_ms),
        START_MS,
        ms_cell,
    ));
    rows.push(at_most(
        format!("start-to-healthy max ≤ {START_MS} ms"),
        cycles.and_then(|c| c.iter().max().copied()).map(to_ms),
        START_MS,
        ms_cell,
    ));
    rows
}

/// What metrics add (trellis − trellis-metrics-off) against the metrics + tracing budget,
/// and the idle RSS of the sidecars with metrics on.
fn metrics_rows(results: &Results) -> Vec<Goal> {
    let mut rows = Vec::new();
    for (label, quantile, limit) in [
        ("p50", 0.50, OBSERVABILITY_ADDED_P50_MS),
        ("p99", 0.99, OBSERVABILITY_ADDED_P99_MS),
    ] {
        let (added, reference) = price(results, TRELLIS, METRICS_OFF, quantile);
        rows.push(Goal::at_most(
            format!(
                "metrics add to {label} ≤ {limit:.2} ms (vs the metrics-off pair; budget shared with tracing at 0.1)"
            ),
            added,
            limit,
            reference,
            |v| format!("{v:+.3} ms"),
        ));
    }
    let idle = results
        .get(TRELLIS)
        .and_then(|r| r.watches.iter().map(|w| w.1).max())
        .map(report::mib);
    rows.push(at_most(
        format!(
            "sidecar RSS idle with metrics on ≤ {RSS_IDLE_METRICS_MIB} MiB (larger of A and B)"
        ),
        idle,
        RSS_IDLE_METRICS_MIB,
        mib_cell,
    ));
    rows
}

/// What metrics and tracing at 0.1 add together (trellis-tracing-0.1 − trellis-metrics-off),
/// the budget of issue 11; and tracing at 1.0, and its RSS, for reference.
fn tracing_rows(results: &Results) -> Vec<Goal> {
    let mut rows = Vec::new();
    for (label, quantile, limit) in [
        ("p50", 0.50, OBSERVABILITY_ADDED_P50_MS),
        ("p99", 0.99, OBSERVABILITY_ADDED_P99_MS),
    ] {
        for (name, rate) in TRACING {
            let (added, reference) = price(results, name, METRICS_OFF, quantile);
            // The budget is for sampling 0.1; 1.0 is shown for what full tracing costs.
            let (text, limit) = match rate {
                "0.1" => (format!("≤ {limit:.2} ms"), Some(limit)),
                _ => ("(no target)".to_owned(), None),
            };
            let row = Goal::at_most(
                format!(
                    "metrics + tracing at {rate} add to {label} {text} (vs the metrics-off pair)"
                ),
                added,
                limit,
                reference,
                |v| format!("{v:+.3} ms"),
            );
            rows.push(row);
        }
    }
    let idle = results
        .get(TRACING[1].0)
        .and_then(|r| r.watches.first())
        .map(|w| report::mib(w.1));
    rows.push(at_most(
        format!("sidecar A RSS idle with metrics and tracing on ≤ {RSS_IDLE_METRICS_MIB} MiB"),
        idle,
        RSS_IDLE_METRICS_MIB,
        mib_cell,
    ));
    rows
}

/// What a retry + breaker policy on the invoked app adds (trellis-resiliency − trellis),
/// for reference: issue 11 asks for the row, with no budget.
fn resiliency_rows(results: &Results) -> Vec<Goal> {
    [("p50", 0.50), ("p99", 0.99)]
        .into_iter()
        .map(|(label, quantile)| {
            let (added, reference) = price(results, RESILIENCY, TRELLIS, quantile);
            Goal::at_most(
                format!(
                    "a retry + breaker policy adds to {label} (no target; vs the trellis pair)"
                ),
                added,
                None,
                reference,
                |v| format!("{v:+.3} ms"),
            )
        })
        .collect()
}

/// What `name` adds over `base` at `quantile`, and the cell that says how it was taken
/// ([`Results::difference_ms`]).
fn price(results: &Results, name: &str, base: &str, quantile: f64) -> (Option<f64>, String) {
    let (value, how) = results.difference_ms(name, base, quantile);
    (value, how.unwrap_or_else(|| "pooled".into()))
}

fn at_most(label: String, value: Option<f64>, limit: f64, show: fn(f64) -> String) -> Goal {
    Goal::at_most(label, value, limit, "—".into(), show)
}

fn cores(v: f64) -> String {
    format!("{v:.3} cores")
}

fn mib_cell(v: f64) -> String {
    format!("{v:.1} MiB")
}

fn ms_d(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The median of `v` in ms.
fn median_ms(v: &[Duration]) -> Option<f64> {
    runner::median(v.iter().map(|d| d.as_secs_f64() * 1e3).collect())
}
