//! The report table every bench renders, and the parts every report shares.
//!
//! [`Table`] is a markdown table whose columns are padded to line up, so the same text
//! reads well in a terminal and pastes into `docs/benchmarks.md`. [`comparison`] fills one
//! with rows measured against a baseline (throughput, errors, p50/p90/p99/max, added
//! latency with its ratio, throughput against the baseline's) from the [`Col`]s a table
//! asks for; [`phase_tables`] and [`resources_table`] are the fixed-rate, max-throughput
//! and CPU/RSS sections of a [`runner::run`](crate::runner::run), and [`targets_table`]
//! the ✅/❌ list. The run header and the notes close the set.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;

use crate::load::Outcome;
use crate::runner::{BenchArgs, Results, ScenarioResult, Session};

// ---- the table ------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A markdown table: a header, an alignment row and the rows, padded to line up.
pub struct Table {
    head: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(head: impl IntoIterator<Item = (S, Align)>) -> Self {
        Self {
            head: head.into_iter().map(|(h, a)| (h.into(), a)).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are left empty.
    pub fn push(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Appends the table and a blank line to `s`.
    pub fn render(&self, s: &mut String) {
        let cell = |row: &[String], i: usize| row.get(i).cloned().unwrap_or_default();
        let widths: Vec<usize> = (0..self.head.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| width(&cell(r, i)))
                    .chain([width(&self.head[i].0), 3])
                    .max()
                    .unwrap_or(3)
            })
            .collect();
        let line = |s: &mut String, cells: Vec<String>| {
            s.push('|');
            for ((text, w), (_, align)) in cells.iter().zip(&widths).zip(&self.head) {
                let pad = " ".repeat(w - width(text));
                match align {
                    Align::Left => {
                        let _ = write!(s, " {text}{pad} |");
                    }
                    Align::Right => {
                        let _ = write!(s, " {pad}{text} |");
                    }
                }
            }
            s.push('\n');
        };
        line(s, self.head.iter().map(|(h, _)| h.clone()).collect());
        s.push('|');
        for (w, (_, align)) in widths.iter().zip(&self.head) {
            let colon = if *align == Align::Right { ":" } else { "-" };
            let _ = write!(s, "{}{colon}|", "-".repeat(w + 1));
        }
        s.push('\n');
        for row in &self.rows {
            line(s, (0..self.head.len()).map(|i| cell(row, i)).collect());
        }
        s.push('\n');
    }
}

/// Columns a cell takes in a terminal: ✅ and ❌ are two wide.
fn width(text: &str) -> usize {
    text.chars()
        .map(|c| if matches!(c, '✅' | '❌') { 2 } else { 1 })
        .sum()
}

// ---- rows against a baseline ----------------------------------------------------------------

/// Latencies a table can show: a phase's [`Outcome`], or the deliveries the pub/sub bench
/// tallies. Both keep them in a histogram of microseconds.
pub trait Latencies {
    /// How many values were recorded (successful operations, messages delivered).
    fn count(&self) -> u64;
    fn histogram_us(&self) -> &Histogram<u64>;

    /// Latency at `quantile`, in ms.
    fn ms(&self, quantile: f64) -> f64 {
        self.histogram_us().value_at_quantile(quantile) as f64 / 1000.0
    }

    fn max_ms(&self) -> f64 {
        self.histogram_us().max() as f64 / 1000.0
    }
}

impl Latencies for Outcome {
    fn count(&self) -> u64 {
        self.ok
    }
    fn histogram_us(&self) -> &Histogram<u64> {
        &self.hist
    }
}

/// A column of a [`comparison`] table.
#[derive(Clone)]
pub enum Col {
    /// The row's next text cell (labels first, then anything else it brings).
    Text(String, Align),
    /// Successful operations per second; the header names the unit ("req/s").
    Rate(String),
    /// Operations per second as a share of the baseline's; the header ("vs direct").
    VsBase(String),
    Errors,
    /// Latency at a quantile, in ms.
    P(f64),
    Max,
    /// Latency at a quantile minus the baseline's, and their ratio: "+0.085 (×1.69)".
    Added(f64),
}

impl Col {
    pub fn text(header: &str) -> Self {
        Col::Text(header.to_owned(), Align::Left)
    }

    fn head(&self) -> (String, Align) {
        let p = |q: f64| format!("p{}", (q * 100.0).round());
        match self {
            Col::Text(h, a) => (h.clone(), *a),
            Col::Rate(h) | Col::VsBase(h) => (h.clone(), Align::Right),
            Col::Errors => ("errors".into(), Align::Right),
            Col::P(q) => (p(*q), Align::Right),
            Col::Max => ("max".into(), Align::Right),
            Col::Added(q) => (format!("added {}", p(*q)), Align::Right),
        }
    }
}

/// p50, p90, p99, max and the added p50, p90, p99: the latency columns of a fixed-rate
/// table.
pub fn latency_cols() -> [Col; 7] {
    [
        Col::P(0.5),
        Col::P(0.9),
        Col::P(0.99),
        Col::Max,
        Col::Added(0.5),
        Col::Added(0.9),
        Col::Added(0.99),
    ]
}

/// One row of a [`comparison`]: what was measured, and the baseline's, when it has one.
pub struct Row<'a> {
    /// The cells of the [`Col::Text`] columns, in order.
    pub text: Vec<String>,
    pub outcome: &'a Outcome,
    /// Usually `outcome` itself.
    pub latency: &'a dyn Latencies,
    pub base: Option<(&'a Outcome, &'a dyn Latencies)>,
}

impl<'a> Row<'a> {
    pub fn new(text: Vec<String>, outcome: &'a Outcome, base: Option<&'a Outcome>) -> Self {
        Self {
            text,
            outcome,
            latency: outcome,
            base: base.map(|b| (b, b as &dyn Latencies)),
        }
    }
}

/// A table of `rows` with the columns `cols`.
pub fn comparison(cols: &[Col], rows: &[Row<'_>]) -> Table {
    let mut t = Table::new(cols.iter().map(Col::head));
    for r in rows {
        let mut text = r.text.iter();
        let cells = cols
            .iter()
            .map(|c| match c {
                Col::Text(..) => text.next().cloned().unwrap_or_default(),
                Col::Rate(_) => format!("{:.0}", r.outcome.rate()),
                Col::VsBase(_) => match r.base {
                    Some((b, _)) if b.rate() > 0.0 => {
                        format!("{:.0} %", 100.0 * r.outcome.rate() / b.rate())
                    }
                    _ => DASH.into(),
                },
                Col::Errors => r.outcome.errors.to_string(),
                Col::P(q) => q_cell(r.latency, *q),
                Col::Max => {
                    if r.latency.count() == 0 {
                        DASH.into()
                    } else {
                        ms(r.latency.max_ms())
                    }
                }
                Col::Added(q) => added(r.latency, r.base.map(|(_, b)| b), *q),
            })
            .collect();
        t.push(cells);
    }
    t
}

const DASH: &str = "—";

/// A percentile cell, or a dash when nothing was recorded.
pub fn q_cell(l: &dyn Latencies, quantile: f64) -> String {
    if l.count() == 0 {
        DASH.into()
    } else {
        ms(l.ms(quantile))
    }
}

/// "+0.085 (×1.69)" against the baseline; a dash without one or without data.
fn added(l: &dyn Latencies, base: Option<&dyn Latencies>, quantile: f64) -> String {
    match base {
        Some(b) if b.count() > 0 && l.count() > 0 && b.ms(quantile) > 0.0 => {
            let (bv, v) = (b.ms(quantile), l.ms(quantile));
            format!("{:+.3} (×{:.2})", v - bv, v / bv)
        }
        _ => DASH.into(),
    }
}

// ---- sections of a runner's results ---------------------------------------------------------

/// How a bench words its fixed-rate and max-throughput sections.
pub struct PhaseText<'a> {
    /// Headers of the label columns ("scenario"; "store", "op", "path").
    pub labels: &'a [&'a str],
    /// "req/s", "ops/s".
    pub unit: &'a str,
    /// What each load task drives: "connection", "client".
    pub who: &'a str,
    /// What "added" subtracts: "scenario − direct".
    pub added: &'a str,
    /// Who shares the cores in the closed loop.
    pub shares: &'a str,
}

/// The fixed-rate section, then the max-throughput one, with the rows of every result set
/// (the state bench has one per backend).
pub fn phase_tables(s: &mut String, args: &BenchArgs, text: &PhaseText<'_>, results: &[&Results]) {
    let labels = || text.labels.iter().map(|l| Col::text(l));
    let rows = |fixed: bool| -> Vec<Row<'_>> {
        results
            .iter()
            .flat_map(|res| {
                res.scenarios.iter().map(move |r| {
                    let base = res.base_of(r).map(|b| pick(b, fixed));
                    Row::new(r.labels.clone(), pick(r, fixed), base)
                })
            })
            .collect()
    };
    let _ = writeln!(
        s,
        "## Fixed rate: {} {} for {}\n\nOpen loop; latency in ms, counted from the scheduled send \
         time whenever the {} was still busy at that time (no coordinated omission). Added = {}; the ratio \
         in brackets.{}\n",
        args.rate,
        text.unit,
        secs(args.duration),
        text.who,
        text.added,
        match args.rounds {
            0 | 1 => String::new(),
            n => format!(
                " Run in {n} rounds of {} (every scenario in turn in each round), merged.",
                secs(args.duration / n)
            ),
        }
    );
    let mut cols: Vec<Col> = labels().collect();
    cols.extend([Col::Rate(text.unit.into()), Col::Errors]);
    cols.extend(latency_cols());
    comparison(&cols, &rows(true)).render(s);
    let _ = writeln!(
        s,
        "## Max throughput: closed loop for {}, {} {}s\n\nEach {} sends its next operation as soon as the \
         previous one is answered. {}\n",
        secs(args.duration),
        args.connections,
        text.who,
        text.who,
        text.shares
    );
    let mut cols: Vec<Col> = labels().collect();
    cols.extend([
        Col::Rate(text.unit.into()),
        Col::VsBase("vs direct".into()),
        Col::Errors,
        Col::P(0.5),
        Col::P(0.99),
        Col::Added(0.5),
        Col::Added(0.99),
    ]);
    comparison(&cols, &rows(false)).render(s);
}

fn pick(r: &ScenarioResult, fixed: bool) -> &Outcome {
    if fixed {
        &r.fixed.outcome
    } else {
        &r.max.outcome
    }
}

/// CPU and RSS of every watched process of `results`, per phase.
pub fn resources_table(s: &mut String, args: &BenchArgs, unit: &str, results: &[&Results]) {
    s.push_str("## Resources\n\n");
    let rate = args.rate;
    let mut t = Table::new([
        ("process".to_owned(), Align::Left),
        (format!("CPU @ {rate} {unit}"), Align::Right),
        ("RSS idle".into(), Align::Right),
        (format!("RSS @ {rate} {unit}"), Align::Right),
        ("CPU @ max throughput".into(), Align::Right),
        ("RSS @ max throughput".into(), Align::Right),
    ]);
    for r in results.iter().flat_map(|res| &res.scenarios) {
        for (i, (label, idle_kb)) in r.watches.iter().enumerate() {
            let (Some(f), Some(m)) = (r.fixed.usage.get(i), r.max.usage.get(i)) else {
                continue;
            };
            t.push(vec![
                label.clone(),
                format!("{:.3}", f.cpu_cores),
                format!("{:.1}", mib(*idle_kb)),
                format!("{:.1}", mib(f.rss_max_kb)),
                format!("{:.2}", m.cpu_cores),
                format!("{:.1}", mib(m.rss_max_kb)),
            ]);
        }
    }
    if t.is_empty() {
        s.push_str("No sidecar or proxy ran, so there is nothing to report.\n\n");
        return;
    }
    s.push_str(
        "CPU from utime+stime in /proc/<pid>/stat over the measured window, in cores; RSS is VmRSS in MiB \
         (idle: before any load; under load: highest 100 ms sample).\n\n",
    );
    t.render(s);
}

// ---- targets, header, notes -----------------------------------------------------------------

/// One line of a targets table.
pub struct Target {
    pub label: String,
    pub measured: String,
    pub reference: String,
    /// `None` when not measured in this run.
    pub met: Option<bool>,
    /// How far a missed target is from its limit ("0.213 ms"), for its verdict; `None` when
    /// met or when the target has no distance.
    pub miss: Option<String>,
}

impl Target {
    /// A target met when `value ≤ limit`, shown as added milliseconds.
    pub fn added_at_most(
        label: String,
        value: Option<f64>,
        limit: impl Into<Option<f64>>,
        reference: String,
    ) -> Self {
        Self::at_most(label, value, limit, reference, added_ms)
    }

    /// A target met when `value ≤ limit`, both formatted by `show`. Without a limit (a
    /// reference that could not be measured in this run) the value is shown, not judged.
    pub fn at_most(
        label: String,
        value: Option<f64>,
        limit: impl Into<Option<f64>>,
        reference: String,
        show: impl Fn(f64) -> String,
    ) -> Self {
        let limit = limit.into();
        Self::judged(label, value, reference, show, |v| limit.map(|l| v - l))
    }

    /// A target met when `value ≥ limit`; as [`Self::at_most`] otherwise.
    pub fn at_least(
        label: String,
        value: Option<f64>,
        limit: impl Into<Option<f64>>,
        reference: String,
        show: impl Fn(f64) -> String,
    ) -> Self {
        let limit = limit.into();
        Self::judged(label, value, reference, show, |v| limit.map(|l| l - v))
    }

    /// `excess` is how far a value is past its limit (≤ 0 when met); `None` when there is no
    /// limit.
    fn judged(
        label: String,
        value: Option<f64>,
        reference: String,
        show: impl Fn(f64) -> String,
        excess: impl Fn(f64) -> Option<f64>,
    ) -> Self {
        let excess = value.and_then(excess);
        Self {
            label,
            measured: value.map_or(DASH.into(), &show),
            reference,
            met: excess.map(|d| d <= 0.0),
            // A distance has no sign, whatever `show` does with one.
            miss: excess
                .filter(|d| *d > 0.0)
                .map(|d| show(d).trim_start_matches('+').to_owned()),
        }
    }
}

/// "## Targets" with a table `| target | <measured> | <reference> | met |`.
pub fn targets_table(s: &mut String, head: [&str; 2], rows: &[Target]) {
    s.push_str("## Targets\n\n");
    let mut t = Table::new([
        ("target", Align::Left),
        (head[0], Align::Right),
        (head[1], Align::Left),
        ("met", Align::Left),
    ]);
    for r in rows {
        let met = match (r.met, &r.miss) {
            (Some(true), _) => "✅".to_owned(),
            (Some(false), Some(by)) => format!("❌ by {by}"),
            (Some(false), None) => "❌".to_owned(),
            // A value shown without a limit is there for reference.
            (None, _) if r.measured != DASH => "— (reference)".to_owned(),
            (None, _) => "— (not measured)".to_owned(),
        };
        t.push(vec![
            r.label.clone(),
            r.measured.clone(),
            r.reference.clone(),
            met,
        ]);
    }
    t.render(s);
}

/// The lines every report opens with: what ran, when, on what, and how busy it was.
pub fn write_run_header(s: &mut String, title: &str, session: &Session) {
    let _ = writeln!(s, "# Trellis benchmark: {title}\n");
    let _ = writeln!(s, "- Command: `{}`", session.command);
    let _ = writeln!(s, "- Date: {}", session.date);
    let _ = writeln!(
        s,
        "- Machine: {} CPUs, {}, Linux {}",
        session.cpus,
        session.cpu_model,
        crate::procs::kernel()
    );
    let _ = writeln!(
        s,
        "- Load average (1/5/15 min): {} at start, {} at end",
        session.load_at_start,
        crate::procs::loadavg()
    );
    let _ = writeln!(
        s,
        "- Other processes above 0.1 core at start: {}",
        match &session.busy_at_start[..] {
            [] => "none".to_owned(),
            busy => busy.join(", "),
        }
    );
    for v in &session.versions {
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

// ---- formatting -----------------------------------------------------------------------------

pub fn ms(v: f64) -> String {
    format!("{v:.3}")
}

/// "+0.123 ms".
pub fn added_ms(v: f64) -> String {
    format!("{v:+.3} ms")
}

pub fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

pub fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Current UTC time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let c = trellis_core::time::Civil::of(SystemTime::now());
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}
