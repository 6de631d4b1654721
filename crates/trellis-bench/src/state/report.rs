//! The markdown report of `trellis-bench state`: the shared phase, resource and target
//! tables, and the embedded store's raw capability.

use std::fmt::Write as _;

use super::{KEYS, Part, Raw, StateArgs};
use crate::report::{self, Col, PhaseText, Row, Target};
use crate::runner::{Measured, Results, Session};

/// Sidecar overhead (sidecar − direct) at p50 that Redis and PostgreSQL must meet.
const ADDED_P50_MS: f64 = 0.05;
/// Dapr 1.17's measured overhead for Redis at p50, printed for reference.
const DAPR_REDIS_P50_MS: f64 = 0.28;
/// Raw capability of the embedded store, in process.
const RAW_SAVES_PER_S: f64 = 50_000.0;
const RAW_GETS_PER_S: f64 = 200_000.0;

pub fn render(args: &StateArgs, session: &Session, parts: &[Part], raw: Option<&Raw>) -> String {
    let bench = &args.bench;
    let mut s = String::new();
    report::write_run_header(&mut s, "state", session);
    let _ = writeln!(
        s,
        "- Load: {} clients per phase (keep-alive HTTP/1.1 connections to the sidecar, or direct clients), \
         {KEYS} keys, {} B values (a JSON string), single-item saves (`POST /v1.0/state/<store>`) and gets \
         (`GET /v1.0/state/<store>/<key>`), {} warm-up before each phase (not recorded)",
        bench.connections,
        args.value,
        report::secs(bench.warmup)
    );
    s.push_str("- Paths: sidecar = bench → `trellis run --app-id bench` (HTTP API) → store → backend; direct = the bench doing what the store does:\n");
    for p in parts {
        let _ = writeln!(
            s,
            "  - {} (component `{}`): {}",
            p.title, p.store, p.direct_path
        );
    }
    s.push_str("- Everything on 127.0.0.1, sharing the same cores with the backends (and anything else running on the machine).\n\n");
    let results: Vec<&Results> = parts.iter().map(|p| &p.results).collect();
    let text = PhaseText {
        labels: &["store", "op", "path"],
        unit: "ops/s",
        who: "client",
        added: "sidecar − direct",
        shares: "The bench (one thread), the sidecar and the backend share the same cores.",
    };
    report::phase_tables(&mut s, bench, &text, &results);
    raw_section(&mut s, args, raw);
    report::resources_table(&mut s, bench, "ops/s", &results);
    report::targets_table(
        &mut s,
        ["measured", "reference"],
        &targets(args, parts, raw),
    );
    if bench.rate != 1000 {
        let _ = writeln!(
            s,
            "The overhead target is defined at 1000 ops/s; this run used {} ops/s.\n",
            bench.rate
        );
    }
    report::write_notes(&mut s, &session.notes);
    s
}

fn raw_section(s: &mut String, args: &StateArgs, raw: Option<&Raw>) {
    s.push_str("## Embedded store, raw capability\n\n");
    let Some(r) = raw else {
        s.push_str("Not measured in this run.\n\n");
        return;
    };
    let _ = writeln!(
        s,
        "`trellis_state::sqlite::SqliteStore` called in the bench process (no HTTP), default settings \
         (WAL, `synchronous=FULL`: every commit is an fsync, shared by the writes it holds; \
         gets on the calling thread while the database is under 64 MiB, 2 reader threads otherwise), \
         closed loop for {}. Bench process CPU includes the load generator.\n",
        report::secs(args.bench.duration)
    );
    let cols = [
        Col::text("op"),
        Col::Text("concurrent callers".into(), report::Align::Right),
        Col::Rate("ops/s".into()),
        Col::Errors,
        Col::P(0.5),
        Col::P(0.99),
        Col::Text("bench process CPU".into(), report::Align::Right),
    ];
    let rows = [
        row("save (single key)", args.raw_writers, &r.saves),
        row("get", args.raw_readers, &r.gets),
    ];
    report::comparison(&cols, &rows).render(s);
}

fn row<'a>(op: &str, n: usize, m: &'a Measured) -> Row<'a> {
    let cpu = m.usage.first().map_or(0.0, |u| u.cpu_cores);
    Row::new(
        vec![op.into(), n.to_string(), format!("{cpu:.2} cores")],
        &m.outcome,
        None,
    )
}

fn targets(args: &StateArgs, parts: &[Part], raw: Option<&Raw>) -> Vec<Target> {
    let mut rows = Vec::new();
    for p in parts.iter().filter(|p| p.target) {
        for op in ["save", "get"] {
            let reference = if p.title == "Redis" {
                format!("Dapr 1.17: +{DAPR_REDIS_P50_MS:.2} ms")
            } else {
                "—".into()
            };
            rows.push(Target::added_at_most(
                format!(
                    "{} {op} sidecar overhead p50 @ {} ops/s ≤ {ADDED_P50_MS:.2} ms",
                    p.title, args.bench.rate
                ),
                p.results.added_ms(&format!("sidecar {op}"), 0.5),
                ADDED_P50_MS,
                reference,
            ));
        }
    }
    for (label, value, limit) in [
        (
            format!(
                "embedded store saves/s, {} writers ≥ {RAW_SAVES_PER_S:.0}",
                args.raw_writers
            ),
            raw.map(|r| r.saves.outcome.rate()),
            RAW_SAVES_PER_S,
        ),
        (
            format!(
                "embedded store gets/s, {} readers ≥ {RAW_GETS_PER_S:.0}",
                args.raw_readers
            ),
            raw.map(|r| r.gets.outcome.rate()),
            RAW_GETS_PER_S,
        ),
    ] {
        let per_s = |v: f64| format!("{v:.0}");
        rows.push(Target::at_least(label, value, limit, "—".into(), per_s));
    }
    rows
}
