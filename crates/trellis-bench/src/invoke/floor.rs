//! The proxy floor: two sidecars priced against two nginx hops measured in the same run.
//!
//! The sequential phase sends one request at a time on one keep-alive connection through
//! each path in turn, so nothing queues and the added latency is the hops' own cost, the
//! way a new user tries a proxy. The targets here compare trellis with nginx rather than
//! with fixed numbers, since both move together with the machine.

use std::fmt::Write as _;

use anyhow::Result;
use bytes::Bytes;

use crate::load::{self, Outcome, Target};
use crate::report::{self, Col, Row, Target as Goal};
use crate::runner::Results;

/// The sequential phase is split into this many rounds, every path taking its turn in each,
/// so that drift of the machine falls on all paths alike.
pub const ROUNDS: u64 = 5;
/// Unrecorded requests before a path's first round (a new connection, cold caches) and
/// before each later one (the other paths ran in between).
const FIRST_WARMUP: u64 = 2_000;
const ROUND_WARMUP: u64 = 200;
/// How far above nginx's added p99 the sidecars' may be in the sequential phase.
const P99_SLACK: f64 = 1.5;

/// One path of the sequential phase and what it measured.
pub struct Path {
    pub name: String,
    pub outcome: Outcome,
}

/// `count` requests (rounded up to whole rounds) through each of `paths`, one at a time on
/// one connection per path.
pub async fn sequential(paths: &[(&str, Target)], body: &Bytes, count: u64) -> Result<Vec<Path>> {
    let per_round = count.div_ceil(ROUNDS);
    // Per path: its name, its client, the number of its next operation, what it measured.
    let mut paths: Vec<_> = paths
        .iter()
        .map(|(name, target)| {
            (
                *name,
                load::echo_client(target, body.clone()),
                0u64,
                None::<Outcome>,
            )
        })
        .collect();
    for round in 0..ROUNDS {
        for (name, client, next, out) in &mut paths {
            let warmup = if round == 0 {
                FIRST_WARMUP
            } else {
                ROUND_WARMUP
            };
            eprintln!(
                "phase: {name}, sequential, round {} of {ROUNDS} ({warmup} + {per_round} requests)",
                round + 1
            );
            let o = load::sequential(client, *next, warmup, per_round).await?;
            *next += warmup + per_round;
            match out {
                Some(earlier) => earlier.merge_round(o)?,
                None => *out = Some(o),
            }
        }
    }
    Ok(paths
        .into_iter()
        .filter_map(|(name, _, _, out)| {
            out.map(|outcome| Path {
                name: name.to_owned(),
                outcome,
            })
        })
        .collect())
}

/// A note per path that had errors.
pub fn error_notes(paths: &[Path]) -> Vec<String> {
    paths
        .iter()
        .filter_map(|p| {
            let e = p.outcome.first_error.as_ref()?;
            Some(format!(
                "{} sequential: {} errors, first: {e}",
                p.name, p.outcome.errors
            ))
        })
        .collect()
}

/// "## Sequential": a row per path against `baseline`.
pub fn section(s: &mut String, paths: &[Path], baseline: &str, count: u64) {
    s.push_str("## Sequential: one connection, one request at a time\n\n");
    let _ = writeln!(
        s,
        "{} POSTs per path on one keep-alive connection after {FIRST_WARMUP} unrecorded, in {ROUNDS} \
         interleaved rounds (each after {ROUND_WARMUP} more unrecorded); latency from send to \
         answer, nothing else in flight. Added = path − {baseline}.\n",
        count.div_ceil(ROUNDS) * ROUNDS
    );
    let base = paths.iter().find(|p| p.name == baseline);
    let mut cols = vec![Col::text("path"), Col::Rate("req/s".into()), Col::Errors];
    cols.extend(report::latency_cols());
    let rows: Vec<Row<'_>> = paths
        .iter()
        .map(|p| {
            let against = base.filter(|b| b.name != p.name).map(|b| &b.outcome);
            Row::new(vec![p.name.clone()], &p.outcome, against)
        })
        .collect();
    report::comparison(&cols, &rows).render(s);
}

/// Added latency at `quantile` of `name` over `baseline` in the sequential phase, in ms.
fn seq_added(paths: &[Path], name: &str, baseline: &str, quantile: f64) -> Option<f64> {
    let get = |n: &str| paths.iter().find(|p| p.name == n && p.outcome.ok > 0);
    Some(get(name)?.outcome.ms(quantile) - get(baseline)?.outcome.ms(quantile))
}

/// The names of the paths the targets compare.
pub struct Names<'a> {
    pub direct: &'a str,
    pub trellis: &'a str,
    pub nginx: &'a str,
    /// How the target names the nginx layout ("" for the baseline, ", a process per hop").
    pub shape: &'a str,
}

/// Trellis against nginx: sequential added latency, added latency at the fixed rate, CPU
/// per sidecar against CPU per nginx hop, and closed-loop throughput.
pub fn targets(paths: &[Path], results: &Results, n: &Names<'_>) -> Vec<Goal> {
    let mut rows = Vec::new();
    for (label, q, slack) in [
        ("p50", 0.5, 1.0),
        ("p90", 0.9, 1.0),
        ("p99", 0.99, P99_SLACK),
    ] {
        let nginx = seq_added(paths, n.nginx, n.direct, q);
        let scale = if slack == 1.0 {
            String::new()
        } else {
            format!("{slack} × ")
        };
        rows.push(Goal::added_at_most(
            format!(
                "sequential: added {label} ≤ {scale}two nginx hops'{}",
                n.shape
            ),
            seq_added(paths, n.trellis, n.direct, q),
            nginx.map(|v| v * slack),
            nginx_ref(n.nginx, nginx),
        ));
    }
    for (label, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        let nginx = results.added_ms(n.nginx, q);
        rows.push(Goal::added_at_most(
            format!("fixed rate: added {label} ≤ two nginx hops'{}", n.shape),
            results.added_ms(n.trellis, q),
            nginx,
            nginx_ref(n.nginx, nginx),
        ));
    }
    let per_hop = results
        .get(n.nginx)
        .and_then(|r| r.fixed.usage.first())
        .map(|u| u.cpu_cores / 2.0);
    let trellis = results.get(n.trellis);
    let cores = |v: f64| format!("{v:.3} cores");
    for (i, side) in ["A", "B"].into_iter().enumerate() {
        rows.push(Goal::at_most(
            format!(
                "fixed rate: sidecar {side} CPU ≤ nginx's per hop{}",
                n.shape
            ),
            trellis
                .and_then(|r| r.fixed.usage.get(i))
                .map(|u| u.cpu_cores),
            per_hop,
            format!("{} per hop: {}", n.nginx, per_hop.map_or("—".into(), cores)),
            cores,
        ));
    }
    let rate = |name: &str| {
        results
            .get(name)
            .map(|r| r.max.outcome.rate())
            .filter(|r| *r > 0.0)
    };
    let per_s = |v: f64| format!("{v:.0} req/s");
    let nginx = rate(n.nginx);
    rows.push(Goal::at_least(
        format!("max throughput ≥ two nginx hops'{}", n.shape),
        rate(n.trellis),
        nginx,
        format!("{}: {}", n.nginx, nginx.map_or("—".into(), per_s)),
        per_s,
    ));
    rows
}

/// "nginx: +0.085 ms", the reference of an added-latency row.
fn nginx_ref(name: &str, added: Option<f64>) -> String {
    format!("{name}: {}", added.map_or("—".into(), report::added_ms))
}
