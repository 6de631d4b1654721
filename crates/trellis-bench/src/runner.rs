//! The scenario runner every bench plugs into.
//!
//! A bench is a [`Session`] (the flags every subcommand shares, the trellis binary, a temp
//! dir, the notes and the versions its report prints) in which [`Scenario`]s run. A
//! scenario is one way of doing the measured operation (through sidecars, or directly as
//! the baseline) plus the processes whose CPU and memory count for it; [`run`] measures
//! every scenario at the fixed rate and then in a closed loop, each phase after an
//! unrecorded warm-up, and pairs each result with its baseline's from the same run.
//! [`phase`] is one such measurement on its own, for phases that are not a pair of modes
//! (the state bench's raw capability, the pub/sub bench's fixed-rate publishing).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use clap::builder::RangedU64ValueParser;
use futures_util::future::LocalBoxFuture;

use crate::load::{self, Client, Mode, Outcome, Schedule};
use crate::procs::{self, Usage, Watch};

/// The flags every bench takes. A bench changes a default or a flag's name with clap's
/// `mut_arg` on its own arguments (`--concurrency` for `state`, shorter phases for
/// `pubsub`), so every flag is defined and checked once.
#[derive(Args)]
pub struct BenchArgs {
    /// Operations (requests, saves, gets, publishes) per second in the fixed-rate phases.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Length of each measured phase, e.g. 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unrecorded warm-up before each phase.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Clients per phase, each with its own connection (an HTTP/1.1 keep-alive, an HTTP/2
    /// channel or a database connection) or its own task.
    #[arg(long, default_value_t = 16, value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    pub connections: usize,
    /// Also write the markdown report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Use this trellis binary instead of building one with cargo.
    #[arg(long)]
    pub trellis_bin: Option<PathBuf>,
    /// Splits each fixed-rate phase into this many rounds, every scenario taking its turn in
    /// each round, so that slow drift of the machine (other work, thermal, page cache)
    /// falls on all scenarios alike; a scenario's rounds are reported as one phase. Worth
    /// it when comparing scenarios that differ by a few microseconds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
}

impl BenchArgs {
    pub fn fixed_rate(&self) -> Mode {
        Mode::FixedRate(f64::from(self.rate))
    }
}

/// A flag's duration: "10s", "500ms", "2m" (Go syntax) or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    match trellis_core::duration::parse_or_seconds(s) {
        Ok(trellis_core::Signed::Positive(d)) => Ok(d),
        Ok(trellis_core::Signed::NonPositive) => Err(format!("duration `{s}` must be positive")),
        Err(e) => Err(e.to_string()),
    }
}

/// How long the run's start watches other processes, and the share of a core above which
/// one is named in the report.
const BUSY_WINDOW: Duration = Duration::from_millis(300);
const BUSY_CORES: f64 = 0.1;

// ---- the session ----------------------------------------------------------------------------

/// One bench run: what its report's header says, the trellis binary, a temp dir removed at
/// the end, and the notes (skipped paths, errors) gathered on the way.
pub struct Session {
    pub command: String,
    pub date: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub load_at_start: String,
    /// Other processes busy when the run started ([`procs::busy_others`]).
    pub busy_at_start: Vec<String>,
    pub versions: Vec<String>,
    pub notes: Vec<String>,
    /// `None` when no trellis binary could be found or built: every sidecar path is then
    /// skipped, with a note saying why, and the direct paths still run.
    pub bin: Option<PathBuf>,
    pub tmp: tempfile::TempDir,
    out: Option<PathBuf>,
}

impl Session {
    /// Finds (or builds) trellis first, since building takes a while and must not overlap
    /// a measurement, then makes a temp dir `<prefix>…` under `dir` (the system's temp dir
    /// when `None`).
    pub fn start(args: &BenchArgs, prefix: &str, dir: Option<&Path>) -> Result<Self> {
        let (cpus, cpu_model) = procs::machine();
        let load_at_start = procs::loadavg();
        let busy_at_start = procs::busy_others(BUSY_WINDOW, BUSY_CORES);
        if !busy_at_start.is_empty() {
            eprintln!(
                "warning: other processes are busy ({}); every path will read slow",
                busy_at_start.join(", ")
            );
        }
        let mut notes = Vec::new();
        let mut versions = Vec::new();
        let bin = crate::sidecar::locate(args.trellis_bin.as_deref())
            .inspect_err(|e| {
                eprintln!("no sidecar paths: {e:#}");
                notes.push(format!("every sidecar path skipped: {e:#}"));
            })
            .ok();
        if let Some(bin) = &bin {
            versions.push(format!(
                "trellis: {} ({})",
                bin.display(),
                crate::sidecar::link_order(bin)
            ));
        }
        let mut builder = tempfile::Builder::new();
        builder.prefix(prefix);
        let tmp = match dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                builder
                    .tempdir_in(dir)
                    .with_context(|| format!("creating a temp dir in {}", dir.display()))?
            }
            None => builder.tempdir().context("creating a temp dir")?,
        };
        Ok(Self {
            command: command_line(),
            date: crate::report::utc_now(),
            cpus,
            cpu_model,
            load_at_start,
            busy_at_start,
            versions,
            notes,
            bin,
            tmp,
            out: args.out.clone(),
        })
    }

    /// Prints the report and writes it to `--out` when given.
    pub fn finish(&self, md: &str) -> Result<()> {
        print!("{md}");
        if let Some(out) = &self.out {
            std::fs::write(out, md).with_context(|| format!("writing {}", out.display()))?;
            eprintln!("report written to {}", out.display());
        }
        Ok(())
    }
}

/// Records a failed step as a note and goes on without its result.
pub fn keep<T>(notes: &mut Vec<String>, what: &str, res: Result<T>) -> Option<T> {
    res.inspect_err(|e| {
        eprintln!("{what} failed: {e:#}");
        notes.push(format!("{what} failed: {e:#}"));
    })
    .ok()
}

/// The command as the user would retype it: `cargo run` sets `CARGO` for the program it
/// runs, in which case the cargo form is shown.
fn command_line() -> String {
    let quote = |a: String| {
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,".contains(c))
        {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    let mut argv = std::env::args().map(quote);
    let program = argv.next().unwrap_or_default();
    let rest: Vec<String> = argv.collect();
    if std::env::var_os("CARGO").is_some() {
        format!("cargo run --release -p trellis-bench -- {}", rest.join(" "))
    } else {
        format!("{program} {}", rest.join(" "))
    }
}

// ---- phases ---------------------------------------------------------------------------------

/// What one phase measured: the load's outcome and, per watched process, its CPU and peak
/// RSS over exactly the measured window.
pub struct Measured {
    pub outcome: Outcome,
    pub usage: Vec<Usage>,
    /// Each round's latency in ms at [`ROUND_QUANTILES`], in round order: one entry when
    /// the phase ran in one piece.
    pub rounds: Vec<[f64; ROUND_QUANTILES.len()]>,
}

/// The quantiles kept for each round of a phase, for [`Results::paired_ms`].
pub const ROUND_QUANTILES: [f64; 3] = [0.50, 0.90, 0.99];

impl Measured {
    /// Adds a later round of the same phase: requests add up, CPU is averaged over both
    /// windows, RSS is the higher peak.
    fn merge(&mut self, later: Measured) -> Result<()> {
        let (w1, w2) = (
            self.outcome.window.as_secs_f64(),
            later.outcome.window.as_secs_f64(),
        );
        for (u, v) in self.usage.iter_mut().zip(&later.usage) {
            if w1 + w2 > 0.0 {
                u.cpu_cores = (u.cpu_cores * w1 + v.cpu_cores * w2) / (w1 + w2);
            }
            u.rss_max_kb = u.rss_max_kb.max(v.rss_max_kb);
        }
        self.rounds.extend(later.rounds);
        self.outcome.merge_round(later.outcome)
    }
}

/// How one phase runs, owned so that a scenario's boxed driver can hold it.
struct PhaseSpec {
    label: String,
    mode: Mode,
    warmup: Duration,
    duration: Duration,
    watches: Vec<Watch>,
}

/// One measured phase: `clients` (one task each) in `mode` for `--warmup` then
/// `--duration`, with the watched processes sampled over the measured window.
pub async fn phase<C: Client>(
    args: &BenchArgs,
    label: &str,
    mode: Mode,
    clients: Vec<C>,
    watches: &[Watch],
) -> Result<Measured> {
    let spec = PhaseSpec {
        label: label.to_owned(),
        mode,
        warmup: args.warmup,
        duration: args.duration,
        watches: watches.to_vec(),
    };
    measure(spec, clients).await
}

async fn measure<C: Client>(spec: PhaseSpec, clients: Vec<C>) -> Result<Measured> {
    let schedule = Schedule::new(spec.warmup, spec.duration);
    let watches = spec.watches;
    let monitor = tokio::task::spawn_blocking(move || {
        procs::monitor(&watches, schedule.measure_from, schedule.end)
    });
    let outcome = load::run_clients(&spec.label, spec.mode, schedule, clients).await?;
    let usage = monitor.await.context("resource monitor panicked")?;
    eprintln!(
        "  {}: {:.0} ops/s, p50 {:.3} ms, p99 {:.3} ms, {} errors",
        spec.label,
        outcome.rate(),
        outcome.ms(0.5),
        outcome.ms(0.99),
        outcome.errors
    );
    let rounds = vec![ROUND_QUANTILES.map(|q| outcome.ms(q))];
    Ok(Measured {
        outcome,
        usage,
        rounds,
    })
}

// ---- scenarios ------------------------------------------------------------------------------

type Driver<'a> = Box<dyn Fn(PhaseSpec) -> LocalBoxFuture<'a, Result<Measured>> + 'a>;

/// One way of doing the measured operation, compared with a baseline of the same run.
pub struct Scenario<'a> {
    name: String,
    labels: Vec<String>,
    baseline: Option<String>,
    /// Watched processes, with their RSS when they were attached (before any load).
    watches: Vec<(Watch, u64)>,
    drive: Driver<'a>,
}

impl<'a> Scenario<'a> {
    /// A scenario named `name` (unique within its run) whose phases each run with fresh
    /// `clients()`. It is a baseline unless [`Self::against`] names one.
    pub fn new<C, F, Fut>(name: impl Into<String>, clients: F) -> Self
    where
        C: Client,
        F: Fn() -> Fut + 'a,
        Fut: Future<Output = Result<Vec<C>>> + 'a,
    {
        let name = name.into();
        let drive = move |spec: PhaseSpec| -> LocalBoxFuture<'a, Result<Measured>> {
            let clients = clients();
            Box::pin(async move { measure(spec, clients.await?).await })
        };
        Self {
            labels: vec![name.clone()],
            name,
            baseline: None,
            watches: Vec::new(),
            drive: Box::new(drive),
        }
    }

    /// Compares this scenario with the scenario named `baseline`.
    pub fn against(mut self, baseline: &str) -> Self {
        self.baseline = Some(baseline.to_owned());
        self
    }

    pub fn is_baseline(&self) -> bool {
        self.baseline.is_none()
    }

    /// The leading cells of its report rows, instead of its name.
    pub fn labels(mut self, labels: Vec<String>) -> Self {
        self.labels = labels;
        self
    }

    /// Measures `w`'s CPU and RSS in every phase; its idle RSS is read now.
    pub fn watch(mut self, w: Watch) -> Self {
        let idle = procs::rss_kb(&w.pids);
        self.watches.push((w, idle));
        self
    }
}

/// A scenario's results: a fixed-rate phase and a max-throughput phase.
pub struct ScenarioResult {
    pub name: String,
    pub labels: Vec<String>,
    pub baseline: Option<String>,
    /// Labels of the watched processes and their idle RSS in KiB, in `usage` order.
    pub watches: Vec<(String, u64)>,
    pub fixed: Measured,
    pub max: Measured,
}

impl ScenarioResult {
    pub fn phases(&self) -> [(&'static str, &Measured); 2] {
        [("fixed rate", &self.fixed), ("max throughput", &self.max)]
    }
}

/// The results of one [`run`], in scenario order.
pub struct Results {
    pub scenarios: Vec<ScenarioResult>,
}

impl Results {
    pub fn get(&self, name: &str) -> Option<&ScenarioResult> {
        self.scenarios.iter().find(|r| r.name == name)
    }

    /// The baseline `r` is compared with; `None` for a baseline.
    pub fn base_of(&self, r: &ScenarioResult) -> Option<&ScenarioResult> {
        self.get(r.baseline.as_deref()?)
    }

    /// p`quantile` at the fixed rate of `name` minus its baseline's, in ms.
    pub fn added_ms(&self, name: &str, quantile: f64) -> Option<f64> {
        let r = self.get(name)?;
        let (o, b) = (&r.fixed.outcome, &self.base_of(r)?.fixed.outcome);
        (o.ok > 0 && b.ok > 0).then(|| o.ms(quantile) - b.ms(quantile))
    }

    /// The median over rounds of `name`'s p`quantile` minus `other`'s in the same round, in
    /// ms, with the number of rounds; `None` unless both ran the same rounds (at least
    /// three) at the fixed rate and `quantile` is one of [`ROUND_QUANTILES`].
    ///
    /// Two scenarios that differ by a few microseconds cannot be told apart by their pooled
    /// tails on a shared machine: a burst of other work during one scenario's turn moves its
    /// pooled p99 by more than the difference sought. Within a round the two scenarios run
    /// back to back, so a burst spoils one round's difference, and the median over rounds
    /// leaves it out.
    pub fn paired_ms(&self, name: &str, other: &str, quantile: f64) -> Option<(f64, usize)> {
        let q = ROUND_QUANTILES.iter().position(|&x| x == quantile)?;
        let (a, b) = (&self.get(name)?.fixed, &self.get(other)?.fixed);
        if a.rounds.len() != b.rounds.len() || a.rounds.len() < 3 {
            return None;
        }
        let diffs: Vec<f64> = a
            .rounds
            .iter()
            .zip(&b.rounds)
            .map(|(x, y)| x[q] - y[q])
            .collect();
        Some((median(diffs)?, a.rounds.len()))
    }

    /// `name`'s p`quantile` at the fixed rate minus `base`'s, in ms, and how it was taken:
    /// the median of the per-round differences ([`Self::paired_ms`]) when there are rounds
    /// to pair, with the pooled difference in the note beside it; the pooled difference
    /// alone (and no note) otherwise.
    pub fn difference_ms(
        &self,
        name: &str,
        base: &str,
        quantile: f64,
    ) -> (Option<f64>, Option<String>) {
        let pooled = self.get(name).zip(self.get(base)).and_then(|(a, b)| {
            let (a, b) = (&a.fixed.outcome, &b.fixed.outcome);
            (a.ok > 0 && b.ok > 0).then(|| a.ms(quantile) - b.ms(quantile))
        });
        match self.paired_ms(name, base, quantile) {
            Some((median, n)) => (
                Some(median),
                Some(format!(
                    "median of {n} rounds; pooled {}",
                    pooled.map_or("—".into(), |v| format!("{v:+.3} ms"))
                )),
            ),
            None => (pooled, None),
        }
    }

    /// A note per phase that had errors: `<prefix><scenario> <phase>: N errors, first: …`.
    pub fn error_notes(&self, prefix: &str) -> Vec<String> {
        let mut notes = Vec::new();
        for r in &self.scenarios {
            for (phase, m) in r.phases() {
                if let Some(e) = &m.outcome.first_error {
                    notes.push(format!(
                        "{prefix}{} {phase}: {} errors, first: {e}",
                        r.name, m.outcome.errors
                    ));
                }
            }
        }
        notes
    }
}

/// Runs every scenario at `--rate`, then every scenario in a closed loop, so that a
/// scenario and its baseline are measured close together in time in each mode. `after`
/// runs after every phase, with the phase's description (a bench checks there that its
/// backend did not restart under it).
pub async fn run(
    args: &BenchArgs,
    scenarios: Vec<Scenario<'_>>,
    mut after: impl AsyncFnMut(&str),
) -> Result<Results> {
    let mut measured: Vec<Vec<Measured>> = scenarios.iter().map(|_| Vec::new()).collect();
    let rounds = args.rounds.max(1);
    let plan = [(args.fixed_rate(), rounds), (Mode::MaxThroughput, 1)];
    for (mode, rounds) in plan {
        // Each round's phase is a slice of `--duration`; its connections are new, so it
        // gets a warm-up of its own, shorter than a whole phase's.
        let (duration, warmup) = match rounds {
            1 => (args.duration, args.warmup),
            n => (
                args.duration / n,
                (args.warmup / n).max(Duration::from_millis(200)),
            ),
        };
        for round in 0..rounds {
            for (sc, out) in scenarios.iter().zip(&mut measured) {
                let mut what = match mode {
                    Mode::FixedRate(rate) => format!("{}, {rate} ops/s", sc.name),
                    Mode::MaxThroughput => format!("{}, max throughput", sc.name),
                };
                if rounds > 1 {
                    what.push_str(&format!(", round {} of {rounds}", round + 1));
                }
                eprintln!(
                    "phase: {what} ({} warm-up + {})",
                    crate::report::secs(warmup),
                    crate::report::secs(duration)
                );
                let spec = PhaseSpec {
                    label: sc.name.clone(),
                    mode,
                    warmup,
                    duration,
                    watches: sc.watches.iter().map(|(w, _)| w.clone()).collect(),
                };
                let m = (sc.drive)(spec).await?;
                match out.last_mut().filter(|_| round > 0) {
                    Some(earlier) => earlier.merge(m)?,
                    None => out.push(m),
                }
                after(&what).await;
            }
        }
    }
    let mut results = Vec::new();
    for (sc, phases) in scenarios.into_iter().zip(measured) {
        let [fixed, max]: [Measured; 2] = phases
            .try_into()
            .map_err(|_| anyhow::anyhow!("{}: expected two phases", sc.name))?;
        results.push(ScenarioResult {
            name: sc.name,
            labels: sc.labels,
            baseline: sc.baseline,
            watches: sc
                .watches
                .into_iter()
                .map(|(w, idle)| (w.label, idle))
                .collect(),
            fixed,
            max,
        });
    }
    Ok(Results { scenarios: results })
}

/// The median of `v`; the mean of the middle two when their number is even.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_unstable_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}
