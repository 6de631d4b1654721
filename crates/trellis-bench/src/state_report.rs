//! The markdown report of `trellis-bench state`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::direct::Op;
use crate::load::Outcome;
use crate::procs::Usage;
use crate::report::{mib, ms, q, secs};

/// Sidecar overhead (sidecar − direct) at p50 that Redis and PostgreSQL must meet.
const ADDED_P50_MS: f64 = 0.05;
/// Dapr 1.17's measured overhead for Redis at p50, printed for reference.
const DAPR_REDIS_P50_MS: f64 = 0.28;
/// Raw capability of the embedded store, in process.
const RAW_SAVES_PER_S: f64 = 50_000.0;
const RAW_GETS_PER_S: f64 = 200_000.0;

/// One operation of one backend: through the sidecar and direct.
pub struct OpResult {
    pub op: Op,
    pub sidecar: Option<Outcome>,
    pub direct: Option<Outcome>,
}

pub struct SidecarUsage {
    pub idle_kb: u64,
    /// [save, get] of the fixed-rate phases.
    pub fixed: [Usage; 2],
    /// [save, get] of the max-throughput phases.
    pub max: [Usage; 2],
}

pub struct Part {
    pub title: &'static str,
    pub store: &'static str,
    pub direct_path: &'static str,
    /// Whether the sidecar-overhead target applies.
    pub target: bool,
    pub fixed: Vec<OpResult>,
    pub max: Vec<OpResult>,
    pub usage: Option<SidecarUsage>,
}

pub struct Raw {
    pub writers: usize,
    pub readers: usize,
    pub saves: Outcome,
    pub gets: Outcome,
    pub save_cpu: Usage,
    pub get_cpu: Usage,
}

pub struct StateReport {
    pub command: String,
    pub date: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub load: (String, String),
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub concurrency: usize,
    pub value: usize,
    pub keys: usize,
    pub versions: Vec<String>,
    pub parts: Vec<Part>,
    pub raw: Option<Raw>,
    /// Writers and readers the raw capability runs with (or would have).
    pub raw_callers: (usize, usize),
    pub notes: Vec<String>,
}

impl StateReport {
    pub fn render(&self) -> String {
        let mut s = String::new();
        self.header(&mut s);
        self.fixed_table(&mut s);
        self.max_table(&mut s);
        self.raw_section(&mut s);
        self.resources_table(&mut s);
        self.targets_table(&mut s);
        crate::report::write_notes(&mut s, &self.notes);
        s
    }

    fn header(&self, s: &mut String) {
        crate::report::write_run_header(
            s,
            "state",
            &self.command,
            &self.date,
            (self.cpus, &self.cpu_model),
            &self.load,
            &self.versions,
        );
        let _ = writeln!(
            s,
            "- Load: {} clients per phase (keep-alive HTTP/1.1 connections to the sidecar, or direct clients), \
             {} keys, {} B values (a JSON string), single-item saves (`POST /v1.0/state/<store>`) and gets \
             (`GET /v1.0/state/<store>/<key>`), {} warm-up before each phase (not recorded)",
            self.concurrency,
            self.keys,
            self.value,
            secs(self.warmup)
        );
        s.push_str("- Paths: sidecar = bench → `trellis run --app-id bench` (HTTP API) → store → backend; direct = the bench doing what the store does:\n");
        for p in &self.parts {
            let _ = writeln!(
                s,
                "  - {} (component `{}`): {}",
                p.title, p.store, p.direct_path
            );
        }
        s.push_str("- Everything on 127.0.0.1, sharing the same cores with the backends (and anything else running on the machine).\n\n");
    }

    fn fixed_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "## Fixed rate: {} ops/s for {}\n\nOpen loop; latency in ms, counted from the scheduled send time whenever the \
             client was still busy at that time (no coordinated omission). Added = sidecar − direct (ratio in brackets).\n",
            self.rate,
            secs(self.duration)
        );
        s.push_str("| store | op | path | ops/s | errors | p50 | p90 | p99 | max | added p50 | added p90 | added p99 |\n");
        s.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for p in &self.parts {
            for r in &p.fixed {
                for (path, o) in [("sidecar", &r.sidecar), ("direct", &r.direct)] {
                    let Some(o) = o else { continue };
                    let side = path == "sidecar";
                    let _ = writeln!(
                        s,
                        "| {} | {} | {path} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        p.title,
                        r.op.name(),
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
                        added(side, o, r.direct.as_ref(), 0.50),
                        added(side, o, r.direct.as_ref(), 0.90),
                        added(side, o, r.direct.as_ref(), 0.99),
                    );
                }
            }
        }
        s.push('\n');
    }

    fn max_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "## Max throughput: closed loop for {}, {} clients\n\nEach client sends its next operation as soon as the \
             previous one is answered. The bench (one thread), the sidecar and the backend share the same cores.\n",
            secs(self.duration),
            self.concurrency
        );
        s.push_str("| store | op | path | ops/s | vs direct | errors | p50 | p99 | added p50 | added p99 |\n");
        s.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for p in &self.parts {
            for r in &p.max {
                for (path, o) in [("sidecar", &r.sidecar), ("direct", &r.direct)] {
                    let Some(o) = o else { continue };
                    let side = path == "sidecar";
                    let vs = match &r.direct {
                        Some(d) if side && d.rate() > 0.0 => {
                            format!("{:.0} %", 100.0 * o.rate() / d.rate())
                        }
                        _ => "—".into(),
                    };
                    let _ = writeln!(
                        s,
                        "| {} | {} | {path} | {:.0} | {vs} | {} | {} | {} | {} | {} |",
                        p.title,
                        r.op.name(),
                        o.rate(),
                        o.errors,
                        q(o, 0.50),
                        q(o, 0.99),
                        added(side, o, r.direct.as_ref(), 0.50),
                        added(side, o, r.direct.as_ref(), 0.99),
                    );
                }
            }
        }
        s.push('\n');
    }

    fn raw_section(&self, s: &mut String) {
        s.push_str("## Embedded store, raw capability\n\n");
        let Some(r) = &self.raw else {
            s.push_str("Not measured in this run.\n\n");
            return;
        };
        let _ = writeln!(
            s,
            "`trellis_state::sqlite::SqliteStore` called in the bench process (no HTTP), default settings \
             (WAL, `synchronous=FULL`: every commit is an fsync, shared by the writes it holds; 2 reader threads), \
             closed loop for {}. Bench process CPU includes the load generator.\n",
            secs(self.duration)
        );
        s.push_str(
            "| op | concurrent callers | ops/s | errors | p50 | p99 | bench process CPU |\n",
        );
        s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        for (op, n, o, cpu) in [
            ("save (single key)", r.writers, &r.saves, r.save_cpu),
            ("get", r.readers, &r.gets, r.get_cpu),
        ] {
            let _ = writeln!(
                s,
                "| {op} | {n} | {:.0} | {} | {} | {} | {:.2} cores |",
                o.rate(),
                o.errors,
                q(o, 0.50),
                q(o, 0.99),
                cpu.cpu_cores
            );
        }
        s.push('\n');
    }

    fn resources_table(&self, s: &mut String) {
        s.push_str("## Sidecar resources\n\n");
        let with_usage: Vec<_> = self
            .parts
            .iter()
            .filter_map(|p| p.usage.as_ref().map(|u| (p.title, u)))
            .collect();
        if with_usage.is_empty() {
            s.push_str("No sidecar ran, so there is nothing to report.\n\n");
            return;
        }
        let _ = writeln!(
            s,
            "CPU from utime+stime in /proc/<pid>/stat over the measured window, in cores; RSS is VmRSS in MiB \
             (idle: after start, before any state call; under load: highest 100 ms sample).\n\n\
             | sidecar | RSS idle | CPU @ {0} saves/s | CPU @ {0} gets/s | RSS @ {0} ops/s | CPU @ max saves | CPU @ max gets | RSS @ max |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|",
            self.rate
        );
        for (title, u) in with_usage {
            let _ = writeln!(
                s,
                "| {title} | {:.1} | {:.3} | {:.3} | {:.1} | {:.2} | {:.2} | {:.1} |",
                mib(u.idle_kb),
                u.fixed[0].cpu_cores,
                u.fixed[1].cpu_cores,
                mib(u.fixed[0].rss_max_kb.max(u.fixed[1].rss_max_kb)),
                u.max[0].cpu_cores,
                u.max[1].cpu_cores,
                mib(u.max[0].rss_max_kb.max(u.max[1].rss_max_kb)),
            );
        }
        s.push('\n');
    }

    fn targets_table(&self, s: &mut String) {
        s.push_str("## Targets\n\n");
        s.push_str("| target | measured | reference | met |\n|---|---:|---|:---:|\n");
        for p in self.parts.iter().filter(|p| p.target) {
            for r in &p.fixed {
                let value = match (&r.sidecar, &r.direct) {
                    (Some(sc), Some(d)) if sc.ok > 0 && d.ok > 0 => Some(sc.ms(0.5) - d.ms(0.5)),
                    _ => None,
                };
                let reference = if p.title == "Redis" {
                    format!("Dapr 1.17: +{DAPR_REDIS_P50_MS:.2} ms")
                } else {
                    "—".into()
                };
                let _ = writeln!(
                    s,
                    "| {} {} sidecar overhead p50 @ {} ops/s ≤ {ADDED_P50_MS:.2} ms | {} | {reference} | {} |",
                    p.title,
                    r.op.name(),
                    self.rate,
                    value.map_or("—".into(), |v| format!("{v:+.3} ms")),
                    met(value.map(|v| v <= ADDED_P50_MS)),
                );
            }
        }
        let raw = self.raw.as_ref();
        for (label, value, limit) in [
            (
                format!(
                    "embedded store saves/s, {} writers ≥ {RAW_SAVES_PER_S:.0}",
                    self.raw_callers.0
                ),
                raw.map(|r| r.saves.rate()),
                RAW_SAVES_PER_S,
            ),
            (
                format!(
                    "embedded store gets/s, {} readers ≥ {RAW_GETS_PER_S:.0}",
                    self.raw_callers.1
                ),
                raw.map(|r| r.gets.rate()),
                RAW_GETS_PER_S,
            ),
        ] {
            let _ = writeln!(
                s,
                "| {label} | {} | — | {} |",
                value.map_or("—".into(), |v| format!("{v:.0}")),
                met(value.map(|v| v >= limit)),
            );
        }
        if (self.rate - 1000.0).abs() > f64::EPSILON {
            let _ = writeln!(
                s,
                "\nThe overhead target is defined at 1000 ops/s; this run used {} ops/s.",
                self.rate
            );
        }
        s.push('\n');
    }
}

fn met(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "✅",
        Some(false) => "❌",
        None => "— (not measured)",
    }
}

/// "+0.085 (×1.69)" on a sidecar row; a dash on direct rows or without data.
fn added(sidecar_row: bool, o: &Outcome, direct: Option<&Outcome>, quantile: f64) -> String {
    match direct {
        Some(d) if sidecar_row && d.ok > 0 && o.ok > 0 => {
            let (dv, v) = (d.ms(quantile), o.ms(quantile));
            format!("{:+.3} (×{:.2})", v - dv, v / dv)
        }
        _ => "—".into(),
    }
}
