//! Tests of the bench's own machinery: the command lines `docs/benchmarks.md` documents,
//! the scenario runner (with in-process clients, no sidecars) and the report table.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;

use crate::load::{Client, Mode};
use crate::report::{self, Align, Col, Row, Table};
use crate::runner::{self, BenchArgs, Scenario};
use crate::{Cli, Cmd};

fn parse(line: &str) -> Cmd {
    let argv = std::iter::once("trellis-bench").chain(line.split_whitespace());
    match Cli::try_parse_from(argv) {
        Ok(cli) => cli.command,
        Err(e) => panic!("`{line}` does not parse: {e}"),
    }
}

#[test]
fn every_documented_command_line_parses() {
    // The reproduce commands of docs/benchmarks.md, every flag spelled out.
    for line in [
        "invoke --rate 1000 --duration 10s --warmup 2s --connections 16 --body 1024 --sequential 20000 \
         --startup-cycles 10 --trellis-bin PATH --out FILE.md",
        "state --rate 1000 --duration 10s --warmup 2s --concurrency 16 --value 256 \
         --redis 127.0.0.1:6379 --postgres host=127.0.0.1 --raw-writers 64 --raw-readers 256 \
         --parts redis,postgres,embedded,raw --trellis-bin PATH --out FILE.md",
        "grpc --rate 1000 --duration 10s --warmup 2s --connections 16 --body 1024 --value 256 \
         --parts invoke,state --trellis-bin PATH --out FILE.md",
        "pubsub --messages 200000 --js-messages 50000 --payload 1024 --bulk 100 --publishers 4 \
         --drain-limit 60s --direct-in-flight 16 --rate 1000 --duration 5s --warmup 1s \
         --connections 16 --dir /var/tmp --nats nats://127.0.0.1:4222 \
         --parts embedded,jetstream --trellis-bin PATH --out FILE.md",
    ] {
        parse(line);
    }
}

#[test]
fn each_bench_keeps_its_own_defaults_and_flag_names() {
    let Cmd::Pubsub(p) = parse("pubsub") else {
        panic!("not pubsub")
    };
    assert_eq!(p.bench.duration, Duration::from_secs(5));
    assert_eq!(p.bench.warmup, Duration::from_secs(1));
    let Cmd::Invoke(i) = parse("invoke") else {
        panic!("not invoke")
    };
    assert_eq!(i.bench.duration, Duration::from_secs(10));
    assert_eq!(i.bench.warmup, Duration::from_secs(2));
    let Cmd::State(s) = parse("state --concurrency 3") else {
        panic!("not state")
    };
    assert_eq!(s.bench.connections, 3);
    // `state` names its clients `--concurrency`, as it always has.
    let argv = ["trellis-bench", "state", "--connections", "3"];
    assert!(Cli::try_parse_from(argv).is_err());
}

#[test]
fn zero_rates_and_clients_are_refused_by_the_parser() {
    for line in [
        "invoke --rate 0",
        "grpc --connections 0",
        "state --concurrency 0",
        "state --value 1",
        "pubsub --bulk 0",
        "invoke --duration 0s",
    ] {
        let argv = std::iter::once("trellis-bench").chain(line.split_whitespace());
        assert!(Cli::try_parse_from(argv).is_err(), "`{line}` parsed");
    }
}

/// An in-process client that takes `delay` per call and fails every `fail_every`th call.
struct Fake {
    delay: Duration,
    fail_every: Option<u64>,
}

impl Client for Fake {
    async fn call(&mut self, seq: u64) -> Result<()> {
        tokio::time::sleep(self.delay).await;
        if self.fail_every.is_some_and(|n| seq % n == n - 1) {
            bail!("call {seq} failed on purpose");
        }
        Ok(())
    }
}

fn fake<'a>(name: &str, delay_ms: u64, fail_every: Option<u64>) -> Scenario<'a> {
    Scenario::new(name, move || async move {
        Ok((0..2)
            .map(|_| Fake {
                delay: Duration::from_millis(delay_ms),
                fail_every,
            })
            .collect::<Vec<_>>())
    })
}

fn short_args() -> BenchArgs {
    BenchArgs {
        rate: 200,
        duration: Duration::from_millis(300),
        warmup: Duration::from_millis(50),
        connections: 2,
        out: None,
        trellis_bin: None,
        rounds: 1,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_runner_measures_every_scenario_in_both_modes_against_its_baseline() {
    let args = short_args();
    let me = crate::invoke::watch("bench", std::process::id());
    let scenarios = vec![
        fake("fast", 1, None),
        fake("slow", 4, Some(10)).against("fast").watch(me),
    ];
    let mut phases = Vec::new();
    let results = runner::run(&args, scenarios, async |what: &str| {
        phases.push(what.to_owned())
    })
    .await
    .expect("the run");

    // Fixed rate for every scenario first, then max throughput.
    assert_eq!(
        phases,
        [
            "fast, 200 ops/s",
            "slow, 200 ops/s",
            "fast, max throughput",
            "slow, max throughput"
        ]
    );
    let fast = results.get("fast").expect("fast");
    let slow = results.get("slow").expect("slow");
    assert!(results.base_of(fast).is_none());
    assert_eq!(results.base_of(slow).map(|b| b.name.as_str()), Some("fast"));
    // About 200 ops/s over the measured window at the fixed rate, some 1 in 10 failing.
    let rate = fast.fixed.outcome.rate();
    assert!((150.0..=250.0).contains(&rate), "fixed rate {rate}");
    assert!(slow.fixed.outcome.errors > 0);
    assert!(fast.max.outcome.rate() > slow.max.outcome.rate());
    let added = results.added_ms("slow", 0.5).expect("added p50");
    assert!((2.0..40.0).contains(&added), "added p50 {added} ms");
    // The watched process is sampled in both phases; the baseline watches nothing.
    assert_eq!(slow.fixed.usage.len(), 1);
    assert_eq!(slow.max.usage.len(), 1);
    assert!(slow.watches[0].1 > 0, "idle RSS of the bench");
    assert!(fast.fixed.usage.is_empty());
    let notes = results.error_notes("x: ");
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[0].starts_with("x: slow fixed rate: "), "{}", notes[0]);
    assert!(notes[0].contains("failed on purpose"), "{}", notes[0]);
}

#[tokio::test(flavor = "current_thread")]
async fn rounds_interleave_the_scenarios_and_merge_into_one_phase_each() {
    let args = BenchArgs {
        rounds: 3,
        duration: Duration::from_millis(600),
        ..short_args()
    };
    let scenarios = vec![fake("fast", 1, None), fake("slow", 4, None).against("fast")];
    let mut phases = Vec::new();
    let results = runner::run(&args, scenarios, async |what: &str| {
        phases.push(what.to_owned())
    })
    .await
    .expect("the run");

    // Fixed rate: every scenario in each round, in turn; max throughput once each.
    let expected: Vec<String> = (1..=3)
        .flat_map(|r| ["fast", "slow"].map(|name| format!("{name}, 200 ops/s, round {r} of 3")))
        .chain(["fast, max throughput".into(), "slow, max throughput".into()])
        .collect();
    assert_eq!(phases, expected);
    // The three rounds of 200 ms add up to one 600 ms window at about 200 ops/s.
    let fast = results.get("fast").expect("fast");
    assert_eq!(fast.fixed.outcome.window, Duration::from_millis(600));
    let rate = fast.fixed.outcome.rate();
    assert!((150.0..=250.0).contains(&rate), "fixed rate {rate}");
    assert!(fast.fixed.outcome.ok > 90, "{}", fast.fixed.outcome.ok);
    let added = results.added_ms("slow", 0.5).expect("added p50");
    assert!((2.0..40.0).contains(&added), "added p50 {added} ms");
    // Each round's quantiles are kept, so the two can be compared round by round.
    assert_eq!(fast.fixed.rounds.len(), 3);
    assert_eq!(fast.max.rounds.len(), 1);
    let (paired, n) = results.paired_ms("slow", "fast", 0.5).expect("paired p50");
    assert_eq!(n, 3);
    assert!((2.0..40.0).contains(&paired), "paired p50 {paired} ms");
    let (back, _) = results.paired_ms("fast", "slow", 0.99).expect("paired p99");
    assert!(back < 0.0, "fast minus slow at p99: {back} ms");
    // Only the kept quantiles can be paired.
    assert!(results.paired_ms("slow", "fast", 0.75).is_none());
}

#[test]
fn the_median_of_round_differences_ignores_one_spoiled_round() {
    assert_eq!(runner::median(vec![]), None);
    assert_eq!(runner::median(vec![0.01, 3.0, -0.02]), Some(0.01));
    assert_eq!(runner::median(vec![0.04, 0.02, 9.0, 0.0]), Some(0.03));
}

#[tokio::test(flavor = "current_thread")]
async fn a_single_phase_samples_its_watches_over_the_window() {
    let args = short_args();
    let clients = vec![Fake {
        delay: Duration::from_millis(1),
        fail_every: None,
    }];
    let me = [crate::invoke::watch("bench", std::process::id())];
    let m = runner::phase(&args, "one", Mode::MaxThroughput, clients, &me)
        .await
        .expect("the phase");
    assert!(m.outcome.ok > 10);
    assert_eq!(m.usage.len(), 1);
    assert!(m.usage[0].rss_max_kb > 0);
}

#[test]
fn tables_line_up_and_keep_markdown_alignment() {
    let mut t = Table::new([("name", Align::Left), ("value", Align::Right)]);
    t.push(vec!["a".into(), "1".into()]);
    t.push(vec!["longer name".into(), "12345678".into()]);
    t.push(vec!["short row".into()]);
    let mut s = String::new();
    t.render(&mut s);
    assert_eq!(
        s,
        "| name        |    value |\n\
         |-------------|---------:|\n\
         | a           |        1 |\n\
         | longer name | 12345678 |\n\
         | short row   |          |\n\n"
    );
}

#[test]
fn comparison_rows_show_added_latency_and_share_against_the_baseline() {
    let args = short_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let results = rt
        .block_on(runner::run(
            &args,
            vec![
                fake("base", 1, None),
                fake("other", 3, None).against("base"),
            ],
            async |_| {},
        ))
        .expect("the run");
    let (base, other) = (&results.scenarios[0], &results.scenarios[1]);
    let rows = [
        Row::new(vec!["base".into()], &base.fixed.outcome, None),
        Row::new(
            vec!["other".into()],
            &other.fixed.outcome,
            Some(&base.fixed.outcome),
        ),
    ];
    let cols = [
        Col::text("scenario"),
        Col::VsBase("vs direct".into()),
        Col::Added(0.5),
    ];
    let mut s = String::new();
    report::comparison(&cols, &rows).render(&mut s);
    let lines: Vec<&str> = s.lines().collect();
    assert!(
        lines[0].contains("| vs direct |") && lines[0].ends_with("added p50 |"),
        "{s}"
    );
    assert!(lines[2].contains("| base "), "{s}");
    assert!(
        lines[2].ends_with("— |"),
        "the baseline compares with nothing: {s}"
    );
    // At a fixed rate both do the same ops/s, and "other" is ~2 ms slower.
    assert!(lines[3].contains(" % |"), "{s}");
    assert!(lines[3].contains("+"), "{s}");
    assert!(lines[3].contains("(×"), "{s}");
}

#[test]
fn targets_show_met_missed_and_unmeasured() {
    let rows = [
        report::Target::added_at_most("a ≤ 0.05 ms".into(), Some(0.01), 0.05, "—".into()),
        report::Target::added_at_most("b ≤ 0.05 ms".into(), Some(0.2), 0.05, "—".into()),
        report::Target::added_at_most("c ≤ 0.05 ms".into(), None, 0.05, "—".into()),
        report::Target::added_at_most("d (no target)".into(), Some(0.3), None, "—".into()),
    ];
    let mut s = String::new();
    report::targets_table(&mut s, ["measured", "reference"], &rows);
    assert!(s.starts_with("## Targets\n\n| target "), "{s}");
    let lines: Vec<&str> = s.lines().collect();
    assert!(
        lines[4].contains("+0.010 ms") && lines[4].contains("✅"),
        "{s}"
    );
    assert!(
        lines[5].contains("+0.200 ms") && lines[5].contains("❌ by 0.150 ms"),
        "{s}"
    );
    assert!(lines[6].contains("— (not measured)"), "{s}");
    assert!(
        lines[7].contains("+0.300 ms") && lines[7].contains("— (reference)"),
        "{s}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn the_grpc_state_rows_are_also_shown_beyond_their_protocols_floor() {
    // A sidecar row about 6 ms over the store, of which 2 ms are the round trip of its
    // protocol.
    let scenarios = vec![
        fake("state get direct (in process)", 0, None),
        fake("grpc round trip (echo app)", 2, None),
        fake("state get via trellis gRPC", 6, None).against("state get direct (in process)"),
    ];
    let results = runner::run(&short_args(), scenarios, async |_| {})
        .await
        .expect("the run");
    let rows = crate::grpc::targets(&[&results]);
    let over_store = rows
        .iter()
        .find(|r| r.label.starts_with("gRPC GetState overhead over the store"))
        .expect("the target row");
    assert_eq!(over_store.met, Some(false), "{}", over_store.measured);
    let beyond = rows
        .iter()
        .find(|r| {
            r.label
                .starts_with("gRPC GetState p50 beyond one gRPC round trip")
        })
        .expect("the floor row");
    // Shown for reference, never judged, with the floor's own p50 in its label.
    assert_eq!(beyond.met, None);
    assert!(beyond.label.contains(" ms)"), "{}", beyond.label);
    let ms: f64 = beyond
        .measured
        .trim_start_matches('+')
        .trim_end_matches(" ms")
        .parse()
        .expect("a number of ms");
    assert!((2.0..20.0).contains(&ms), "{}", beyond.measured);
    // The HTTP floor did not run: its side says so instead of making a number up.
    assert!(beyond.reference.ends_with(": —"), "{}", beyond.reference);
}

#[test]
fn an_at_least_target_says_how_far_short_it_fell() {
    let show = |v: f64| format!("{v:.0} req/s");
    let short = report::Target::at_least("t".into(), Some(900.0), 1000.0, "—".into(), show);
    assert_eq!(
        (short.met, short.miss.as_deref()),
        (Some(false), Some("100 req/s"))
    );
    let over = report::Target::at_least("t".into(), Some(1200.0), 1000.0, "—".into(), show);
    assert_eq!((over.met, over.miss), (Some(true), None));
}

/// A client that records which operations it was asked for.
struct Recorder {
    seen: Vec<u64>,
    fail: u64,
}

impl Client for Recorder {
    async fn call(&mut self, seq: u64) -> Result<()> {
        self.seen.push(seq);
        if seq == self.fail {
            bail!("operation {seq} failed on purpose");
        }
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn sequential_records_only_after_its_warm_up_and_continues_the_numbering() {
    let mut c = Recorder {
        seen: Vec::new(),
        fail: 12,
    };
    let first = crate::load::sequential(&mut c, 0, 5, 10).await.unwrap();
    // Operation 12 fails in the recorded part (5..15) and is counted there.
    assert_eq!((first.ok, first.errors), (9, 1));
    let second = crate::load::sequential(&mut c, 15, 2, 3).await.unwrap();
    assert_eq!((second.ok, second.errors), (3, 0));
    assert_eq!(c.seen, (0..20).collect::<Vec<_>>());
    let mut failing = Recorder {
        seen: Vec::new(),
        fail: 1,
    };
    let out = crate::load::sequential(&mut failing, 0, 0, 3)
        .await
        .unwrap();
    assert_eq!((out.ok, out.errors), (2, 1));
    assert!(out.first_error.unwrap().contains("operation 1"));
}

#[test]
fn a_busy_process_is_named_at_the_start_of_a_run() {
    let mut spinner = std::process::Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .expect("sh");
    let busy = crate::procs::busy_others(Duration::from_millis(300), 0.1);
    let _ = spinner.kill();
    let _ = spinner.wait();
    let pid = format!("({})", spinner.id());
    assert!(
        busy.iter()
            .any(|b| b.starts_with("sh ") && b.contains(&pid)),
        "{busy:?}"
    );
}
