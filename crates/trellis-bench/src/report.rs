//! The markdown report: latency tables per phase, resource use, start-up
//! times and the targets, each with a ✅/❌.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::load::Outcome;
use crate::procs::Usage;

/// Targets for the trellis sidecar, as agreed for service invocation.
const ADDED_P50_MS: f64 = 0.10;
const ADDED_P90_MS: f64 = 0.15;
const ADDED_P99_MS: f64 = 0.30;
const CPU_CORES: f64 = 0.02;
const RSS_IDLE_MIB: f64 = 10.0;
const RSS_LOAD_MIB: f64 = 15.0;
const START_MS: f64 = 50.0;
/// The rate at which the latency and CPU targets are defined.
const TARGET_RATE: f64 = 1000.0;

/// Name of the scenario every other one is compared against.
pub const BASELINE: &str = "direct";
/// Name of the scenario the targets apply to.
pub const TRELLIS: &str = "trellis";

pub struct ScenarioResult {
    pub name: &'static str,
    pub fixed: Outcome,
    pub max: Outcome,
}

pub struct ResourceRow {
    pub label: String,
    /// Whether the per-sidecar targets apply to this row.
    pub sidecar: bool,
    pub idle_kb: u64,
    pub fixed: Usage,
    pub max: Usage,
}

pub struct Startup {
    pub first: Duration,
    pub cycles: Vec<Duration>,
    pub stops: Vec<Duration>,
}

pub struct Report {
    pub command: String,
    pub date: String,
    pub cpus: usize,
    pub cpu_model: String,
    /// Load averages at the start and at the end of the run.
    pub load: (String, String),
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub body: usize,
    pub versions: Vec<String>,
    pub scenarios: Vec<ScenarioResult>,
    pub resources: Vec<ResourceRow>,
    pub startup: Option<Startup>,
    /// Skipped scenarios, errors and anything else worth reading.
    pub notes: Vec<String>,
}

/// The lines every report opens with: what ran, when, on what, and how busy it was.
pub fn write_run_header(
    s: &mut String,
    title: &str,
    command: &str,
    date: &str,
    (cpus, cpu_model): (usize, &str),
    load: &(String, String),
    versions: &[String],
) {
    let _ = writeln!(s, "# Trellis benchmark: {title}\n");
    let _ = writeln!(s, "- Command: `{command}`");
    let _ = writeln!(s, "- Date: {date}");
    let _ = writeln!(s, "- Machine: {cpus} CPUs, {cpu_model}");
    let _ = writeln!(
        s,
        "- Load average (1/5/15 min): {} at start, {} at end",
        load.0, load.1
    );
    for v in versions {
        let _ = writeln!(s, "- {v}");
    }
}

/// The closing "Notes" section (skipped scenarios, errors), if there is anything to say.
pub fn write_notes(s: &mut String, notes: &[String]) {
    if notes.is_empty() {
        return;
    }
    s.push_str("## Notes\n\n");
    for note in notes {
        let _ = writeln!(s, "- {}", note.replace('\n', "\n  "));
    }
    s.push('\n');
}

impl Report {
    pub fn render(&self) -> String {
        let mut s = String::new();
        self.header(&mut s);
        self.fixed_table(&mut s);
        self.max_table(&mut s);
        self.resources_table(&mut s);
        self.startup_section(&mut s);
        self.targets_table(&mut s);
        write_notes(&mut s, &self.notes);
        s
    }

    fn header(&self, s: &mut String) {
        write_run_header(
            s,
            "service invocation",
            &self.command,
            &self.date,
            (self.cpus, &self.cpu_model),
            &self.load,
            &self.versions,
        );
        let _ = writeln!(
            s,
            "- Load: {} keep-alive HTTP/1.1 connections, {} B POST bodies, {} warm-up before each phase (not recorded)",
            self.connections,
            self.body,
            secs(self.warmup)
        );
        s.push_str(
            "- Paths: direct = client → echo app; trellis = client → sidecar A (HTTP API) → sidecar B → echo app; \
             nginx = client → nginx hop 1 → nginx hop 2 → echo app. Everything on 127.0.0.1, all on the same cores.\n\n",
        );
    }

    fn baseline(&self) -> Option<&ScenarioResult> {
        self.scenarios.iter().find(|r| r.name == BASELINE)
    }

    fn fixed_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "## Fixed rate: {} req/s for {}\n\nOpen loop; latency in ms, counted from the scheduled send time whenever the \
             connection was still busy at that time (no coordinated omission). Added = scenario − direct (ratio in brackets).\n",
            self.rate,
            secs(self.duration)
        );
        s.push_str("| scenario | req/s | errors | p50 | p90 | p99 | max | added p50 | added p90 | added p99 |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let base = self.baseline();
        for r in &self.scenarios {
            let o = &r.fixed;
            let _ = writeln!(
                s,
                "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.name,
                o.rate(),
                o.errors,
                q(o, 0.50),
                q(o, 0.90),
                q(o, 0.99),
                if o.ok == 0 {
                    "—".into()
                } else {
                    ms(o.max_ms())
                },
                added(base.map(|b| &b.fixed), r, |r| &r.fixed, 0.50),
                added(base.map(|b| &b.fixed), r, |r| &r.fixed, 0.90),
                added(base.map(|b| &b.fixed), r, |r| &r.fixed, 0.99),
            );
        }
        s.push('\n');
    }

    fn max_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "## Max throughput: closed loop for {}\n\nEach connection sends its next request as soon as the response \
             arrives. The load generator, the echo app and the proxies share the same cores.\n",
            secs(self.duration)
        );
        s.push_str(
            "| scenario | req/s | vs direct | errors | p50 | p99 | added p50 | added p99 |\n",
        );
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        let base = self.baseline();
        for r in &self.scenarios {
            let o = &r.max;
            let vs = match base {
                Some(b) if b.max.rate() > 0.0 => {
                    format!("{:.0} %", 100.0 * o.rate() / b.max.rate())
                }
                _ => "—".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                r.name,
                o.rate(),
                vs,
                o.errors,
                q(o, 0.50),
                q(o, 0.99),
                added(base.map(|b| &b.max), r, |r| &r.max, 0.50),
                added(base.map(|b| &b.max), r, |r| &r.max, 0.99),
            );
        }
        s.push('\n');
    }

    fn resources_table(&self, s: &mut String) {
        s.push_str("## Resources\n\n");
        if self.resources.is_empty() {
            s.push_str("No proxy ran, so there is nothing to report.\n\n");
            return;
        }
        let _ = writeln!(
            s,
            "CPU from utime+stime in /proc/<pid>/stat over the measured window, in cores; RSS is VmRSS in MiB \
             (idle: before any load; under load: highest 100 ms sample).\n\n\
             | process | CPU @ {0} req/s | RSS idle | RSS @ {0} req/s | CPU @ max throughput | RSS @ max throughput |\n\
             |---|---:|---:|---:|---:|---:|",
            self.rate
        );
        for r in &self.resources {
            let _ = writeln!(
                s,
                "| {} | {:.3} | {:.1} | {:.1} | {:.2} | {:.1} |",
                r.label,
                r.fixed.cpu_cores,
                mib(r.idle_kb),
                mib(r.fixed.rss_max_kb),
                r.max.cpu_cores,
                mib(r.max.rss_max_kb),
            );
        }
        s.push('\n');
    }

    fn startup_section(&self, s: &mut String) {
        s.push_str("## Start-to-healthy (sidecar A)\n\nFrom spawning the process to the first 204 from `GET /v1.0/healthz` (polled every ms).\n\n");
        match &self.startup {
            None => s.push_str("Not measured: the trellis scenario did not run.\n\n"),
            Some(st) => {
                let _ = writeln!(s, "- First start in this run: {}", ms_d(st.first));
                if let (Some(med), Some(max)) = (median(&st.cycles), st.cycles.iter().max()) {
                    let _ = writeln!(
                        s,
                        "- {} start/stop cycles: median {}, max {}",
                        st.cycles.len(),
                        ms_d(med),
                        ms_d(*max)
                    );
                }
                if let (Some(med), Some(max)) = (median(&st.stops), st.stops.iter().max()) {
                    let _ = writeln!(
                        s,
                        "- SIGTERM to exit: median {}, max {}",
                        ms_d(med),
                        ms_d(*max)
                    );
                }
                s.push('\n');
            }
        }
    }

    fn targets_table(&self, s: &mut String) {
        s.push_str("## Targets\n\n");
        if (self.rate - TARGET_RATE).abs() > f64::EPSILON {
            let _ = writeln!(
                s,
                "Latency and CPU targets are defined at {TARGET_RATE} req/s; this run used {} req/s.\n",
                self.rate
            );
        }
        s.push_str("| target | trellis | nginx (reference) | met |\n|---|---:|---:|:---:|\n");
        for row in self.target_rows() {
            let met = match row.trellis {
                Some(v) if v <= row.limit => "✅",
                Some(_) => "❌",
                None => "— (not measured)",
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {met} |",
                row.label,
                row.unit.show(row.trellis),
                row.unit.show(row.nginx)
            );
        }
        s.push('\n');
    }

    fn target_rows(&self) -> Vec<TargetRow> {
        let base = self.baseline();
        let find = |name: &str| self.scenarios.iter().find(|r| r.name == name);
        let added_ms = |name: &str, quantile: f64| -> Option<f64> {
            let (b, r) = (base?, find(name)?);
            (b.fixed.ok > 0 && r.fixed.ok > 0).then(|| r.fixed.ms(quantile) - b.fixed.ms(quantile))
        };
        let mut rows = Vec::new();
        for (label, quantile, limit) in [
            ("p50", 0.50, ADDED_P50_MS),
            ("p90", 0.90, ADDED_P90_MS),
            ("p99", 0.99, ADDED_P99_MS),
        ] {
            rows.push(TargetRow {
                label: format!("added latency {label} ≤ {limit:.2} ms"),
                trellis: added_ms(TRELLIS, quantile),
                nginx: added_ms("nginx", quantile),
                limit,
                unit: Unit::AddedMs,
            });
        }
        // Listed even when trellis was skipped, so a skipped run cannot be
        // mistaken for one that met the targets.
        for name in ["sidecar A", "sidecar B"] {
            let r = self.resources.iter().find(|r| r.sidecar && r.label == name);
            let row = |label: String, value: Option<f64>, limit: f64, unit: Unit| TargetRow {
                label,
                trellis: value,
                nginx: None,
                limit,
                unit,
            };
            rows.push(row(
                format!("{name} CPU ≤ {CPU_CORES} core"),
                r.map(|r| r.fixed.cpu_cores),
                CPU_CORES,
                Unit::Cores,
            ));
            rows.push(row(
                format!("{name} RSS idle ≤ {RSS_IDLE_MIB} MiB"),
                r.map(|r| mib(r.idle_kb)),
                RSS_IDLE_MIB,
                Unit::Mib,
            ));
            rows.push(row(
                format!("{name} RSS under load ≤ {RSS_LOAD_MIB} MiB"),
                r.map(|r| mib(r.fixed.rss_max_kb)),
                RSS_LOAD_MIB,
                Unit::Mib,
            ));
        }
        let to_ms = |d: Duration| d.as_secs_f64() * 1e3;
        let cycles = self.startup.as_ref().map(|st| &st.cycles[..]);
        rows.push(TargetRow {
            label: format!("start-to-healthy median ≤ {START_MS} ms"),
            trellis: cycles.and_then(median).map(to_ms),
            nginx: None,
            limit: START_MS,
            unit: Unit::Ms,
        });
        rows.push(TargetRow {
            label: format!("start-to-healthy max ≤ {START_MS} ms"),
            trellis: cycles.and_then(|c| c.iter().max().copied()).map(to_ms),
            nginx: None,
            limit: START_MS,
            unit: Unit::Ms,
        });
        rows
    }
}

struct TargetRow {
    label: String,
    trellis: Option<f64>,
    nginx: Option<f64>,
    limit: f64,
    unit: Unit,
}

#[derive(Clone, Copy)]
enum Unit {
    AddedMs,
    Ms,
    Cores,
    Mib,
}

impl Unit {
    fn show(self, v: Option<f64>) -> String {
        match (self, v) {
            (_, None) => "—".to_owned(),
            (Unit::AddedMs, Some(v)) => format!("{v:+.3} ms"),
            (Unit::Ms, Some(v)) => format!("{v:.1} ms"),
            (Unit::Cores, Some(v)) => format!("{v:.3} cores"),
            (Unit::Mib, Some(v)) => format!("{v:.1} MiB"),
        }
    }
}

/// Percentile cell, or a dash when nothing succeeded.
pub(crate) fn q(o: &Outcome, quantile: f64) -> String {
    if o.ok == 0 {
        "—".into()
    } else {
        ms(o.ms(quantile))
    }
}

/// "+0.085 (×1.69)" for a scenario against the baseline; a dash for the
/// baseline itself or when either side has no data.
fn added(
    base: Option<&Outcome>,
    r: &ScenarioResult,
    phase: fn(&ScenarioResult) -> &Outcome,
    quantile: f64,
) -> String {
    let o = phase(r);
    match base {
        Some(b) if r.name != BASELINE && b.ok > 0 && o.ok > 0 => {
            let (bv, v) = (b.ms(quantile), o.ms(quantile));
            format!("{:+.3} (×{:.2})", v - bv, v / bv)
        }
        _ => "—".into(),
    }
}

pub(crate) fn ms(v: f64) -> String {
    format!("{v:.3}")
}

fn ms_d(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

pub(crate) fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

pub(crate) fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn median(v: &[Duration]) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort_unstable();
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2),
    }
}

/// Current UTC time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let c = trellis_core::time::Civil::of(SystemTime::now());
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}
