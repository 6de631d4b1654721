//! The markdown report of `trellis-bench pubsub`: throughput, publish latency and
//! publish→delivery latency per broker and path, and the targets.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::app::Tally;
use super::{EMBEDDED, JETSTREAM, PubsubArgs};
use crate::load::Outcome;
use crate::procs::Watch;
use crate::report::{self, Align, Col, Latencies, Row, Table, Target, ms, q_cell, secs};
use crate::runner::{Measured, Session};

/// Messages per second the embedded broker must publish and deliver to an app through
/// the sidecars.
const THROUGHPUT_TARGET: f64 = 50_000.0;
/// Publish p50 through the sidecar over the direct broker call.
const ADDED_PUBLISH_P50_MS: f64 = 0.10;
/// Dapr 1.17's published p50 for an HTTP publish, for reference.
const DAPR_PUBLISH_P50_MS: f64 = 0.35;

/// CPU of one process over a phase, in cores.
pub struct Cpu {
    pub label: String,
    pub cores: f64,
    /// CPU time over the whole window, when the window is one batch of messages.
    pub seconds: Option<f64>,
}

/// One throughput run.
pub struct Throughput {
    pub broker: &'static str,
    pub path: String,
    pub messages: u64,
    /// First publish sent → last publish answered.
    pub publish_time: Duration,
    /// Distinct messages at the app when the last publish was answered.
    pub delivered_while_publishing: u64,
    /// When the first publish was sent.
    pub t0: Instant,
    /// Whether every message arrived within the drain limit.
    pub complete: bool,
    pub tally: Tally,
    pub cpu: Vec<Cpu>,
}

impl Throughput {
    pub fn publish_rate(&self) -> f64 {
        self.messages as f64 / self.publish_time.as_secs_f64()
    }

    /// Distinct messages delivered / (first publish → last delivery).
    pub fn deliver_rate(&self) -> Option<f64> {
        let last = self.tally.last?;
        let secs = last.saturating_duration_since(self.t0).as_secs_f64();
        (secs > 0.0).then(|| self.tally.unique as f64 / secs)
    }

    /// Delivery rate while publishing was going on.
    pub fn rate_while_publishing(&self) -> f64 {
        self.delivered_while_publishing as f64 / self.publish_time.as_secs_f64()
    }

    /// Delivery rate over the backlog left when publishing ended: `None` when nothing
    /// was left.
    pub fn drain_rate(&self) -> Option<f64> {
        let left = self
            .tally
            .unique
            .checked_sub(self.delivered_while_publishing)?;
        let last = self.tally.last?;
        let secs = last
            .saturating_duration_since(self.t0 + self.publish_time)
            .as_secs_f64();
        (left > 0 && secs > 0.0).then(|| left as f64 / secs)
    }
}

/// One fixed-rate phase: the publish outcome, and for publish→delivery phases what
/// arrived (latency from the publish being sent to the message being at the receiver).
pub struct Latency {
    pub broker: &'static str,
    pub path: String,
    /// The baseline the other paths of the broker are compared with.
    pub direct: bool,
    pub publish: Outcome,
    pub delivered: Option<Tally>,
    pub cpu: Vec<Cpu>,
}

impl Latency {
    pub fn new(
        broker: &'static str,
        path: &str,
        direct: bool,
        m: Measured,
        delivered: Option<Tally>,
        watches: &[Watch],
    ) -> Self {
        let cpu = watches
            .iter()
            .zip(&m.usage)
            .map(|(w, u)| Cpu {
                label: w.label.clone(),
                cores: u.cpu_cores,
                seconds: None,
            })
            .collect();
        Self {
            broker,
            path: path.to_owned(),
            direct,
            publish: m.outcome,
            delivered,
            cpu,
        }
    }
}

impl Latencies for Tally {
    fn count(&self) -> u64 {
        self.measured
    }
    fn histogram_us(&self) -> &hdrhistogram::Histogram<u64> {
        &self.latency
    }
}

pub struct PubsubReport {
    /// The temp dir holding the broker files, with its filesystem.
    pub data_dir: String,
    /// Size of the CloudEvent stored for one payload (the direct paths' message).
    pub stored: usize,
    pub throughput: Vec<Throughput>,
    pub publish: Vec<Latency>,
    pub e2e: Vec<Latency>,
}

impl PubsubReport {
    pub fn render(&self, args: &PubsubArgs, session: &Session) -> String {
        let mut s = String::new();
        self.header(&mut s, args, session);
        self.throughput_table(&mut s, args);
        self.publish_table(&mut s, args);
        self.e2e_table(&mut s, args);
        self.targets_table(&mut s, args);
        report::write_notes(&mut s, &session.notes);
        s
    }

    fn header(&self, s: &mut String, args: &PubsubArgs, session: &Session) {
        report::write_run_header(s, "pub/sub", session);
        let _ = writeln!(s, "- Broker files (embedded): {}", self.data_dir);
        let _ = writeln!(
            s,
            "- Messages: {} B JSON payloads; what the broker stores is the CloudEvent around it \
             (about {} B), on the direct paths too",
            args.payload, self.stored
        );
        s.push_str(
            "- Paths: *direct* = the bench publishing to and consuming from the broker itself \
             (embedded: `SqliteBroker` in process with the sidecar's defaults; JetStream: \
             async-nats, publish awaiting the stream's ack, a durable pull consumer); *sidecars* \
             = bench → publisher sidecar (`trellis run --app-id bench-pub`, HTTP publish API) → \
             broker → subscriber sidecar (`--app-id bench-sub --app-port <app>`) → the bench's \
             subscriber app (HTTP/1.1, served on its own thread of the bench process). Both \
             embedded sidecars share one `--data-dir`, hence one broker file.\n",
        );
        s.push_str("- Everything on 127.0.0.1, sharing the same cores (and anything else running on the machine).\n\n");
    }

    fn throughput_table(&self, s: &mut String, args: &PubsubArgs) {
        let _ = writeln!(
            s,
            "## Throughput\n\nEach run publishes its messages with bulk publishes of {} entries, {} \
             at once (closed loop), while the subscriber receives them. Published/s = messages ÷ \
             (first publish sent → last publish answered); delivered/s = distinct messages at the \
             app ÷ (first publish sent → last delivery). Durable: the embedded broker fsyncs every \
             publishing commit; the JetStream streams use file storage. Delivered/s is split \
             into the rate while publishing went on (messages at the app when the last publish was \
             answered ÷ publishing time) and after it (the backlog left ÷ the time it took to \
             deliver it). \"Per request\" is the \
             average number of messages per delivery request to the app (1 = one event per POST). \
             The direct embedded consumer settles up to {} deliveries at once. CPU in cores averaged \
             over the whole run (first publish → last delivery), and in CPU µs per message.\n",
            args.bulk, args.publishers, args.direct_in_flight
        );
        let right = |h: &str| (h.to_owned(), Align::Right);
        let mut t = Table::new([
            ("broker".to_owned(), Align::Left),
            ("path".to_owned(), Align::Left),
            right("messages"),
            right("published/s"),
            right("delivered/s"),
            right("while publishing"),
            right("after publishing"),
            right("delivered"),
            right("dups"),
            right("per request"),
            right("publish→delivery p50"),
            right("p99"),
            ("CPU: cores (µs per message)".to_owned(), Align::Left),
        ]);
        for r in &self.throughput {
            let tally = &r.tally;
            let per_request = if tally.requests > 0 {
                format!("{:.1}", tally.entries as f64 / tally.requests as f64)
            } else {
                "—".into()
            };
            let rate = |v: Option<f64>| v.map_or("—".into(), |r| format!("{r:.0}"));
            t.push(vec![
                r.broker.to_owned(),
                r.path.clone(),
                r.messages.to_string(),
                format!("{:.0}", r.publish_rate()),
                rate(r.deliver_rate()),
                format!("{:.0}", r.rate_while_publishing()),
                rate(r.drain_rate()),
                format!(
                    "{}{}",
                    tally.unique,
                    if r.complete { "" } else { " (timed out)" }
                ),
                tally.duplicates.to_string(),
                per_request,
                q_cell(tally, 0.5),
                q_cell(tally, 0.99),
                cpu_cell(&r.cpu, Some(r.messages)),
            ]);
        }
        t.render(s);
    }

    /// The row of `l` against the direct row of its broker in `rows`; `delivered` picks the
    /// latencies (the publish outcome's, or the deliveries').
    fn rows<'a>(
        rows: &'a [Latency],
        delivered: bool,
        text: impl Fn(&'a Latency) -> Vec<String>,
    ) -> Vec<Row<'a>> {
        let latency = |l: &'a Latency| -> Option<&'a dyn Latencies> {
            if delivered {
                l.delivered.as_ref().map(|t| t as &dyn Latencies)
            } else {
                Some(&l.publish)
            }
        };
        rows.iter()
            .filter_map(|l| {
                let base = rows
                    .iter()
                    .find(|b| b.direct && b.broker == l.broker)
                    .filter(|_| !l.direct)
                    .and_then(|b| Some((&b.publish, latency(b)?)));
                Some(Row {
                    text: text(l),
                    outcome: &l.publish,
                    latency: latency(l)?,
                    base,
                })
            })
            .collect()
    }

    fn publish_table(&self, s: &mut String, args: &PubsubArgs) {
        let bench = &args.bench;
        let _ = writeln!(
            s,
            "## Publish latency: {} msgs/s for {}\n\nOne message per publish, nobody subscribed; \
             open loop over {} publishers (keep-alive HTTP connections to the sidecar, or tasks \
             sharing one NATS connection / one broker handle), {} warm-up. Latency in ms, counted \
             from the scheduled send time whenever the publisher was still busy at that time. \
             Added = sidecar − direct; the ratio in brackets.\n",
            bench.rate,
            secs(bench.duration),
            bench.connections,
            secs(bench.warmup)
        );
        let mut cols = vec![
            Col::text("broker"),
            Col::text("path"),
            Col::Rate("msgs/s".into()),
            Col::Errors,
        ];
        cols.extend(report::latency_cols());
        cols.push(Col::text("CPU (cores)"));
        let rows = Self::rows(&self.publish, false, |l| {
            vec![l.broker.into(), l.path.clone(), cpu_cell(&l.cpu, None)]
        });
        report::comparison(&cols, &rows).render(s);
    }

    fn e2e_table(&self, s: &mut String, args: &PubsubArgs) {
        let _ = writeln!(
            s,
            "## Publish→delivery latency: {} msgs/s for {}\n\nThe same open-loop publishing, with \
             a subscriber (normal subscription, one event per delivery): latency in ms from the \
             publish being sent (timestamp in the payload) to the message reaching the app (or \
             the bench's direct consumer), first delivery of each message published after the \
             warm-up. Added = path − direct; the ratio in brackets.\n",
            args.bench.rate,
            secs(args.bench.duration)
        );
        let right = |h: &str| Col::Text(h.into(), Align::Right);
        let mut cols = vec![
            Col::text("broker"),
            Col::text("path"),
            right("delivered / published"),
            right("publish p50"),
        ];
        cols.extend(report::latency_cols());
        cols.push(Col::text("CPU (cores)"));
        let rows = Self::rows(&self.e2e, true, |l| {
            let measured = l.delivered.as_ref().map_or(0, |t| t.measured);
            vec![
                l.broker.into(),
                l.path.clone(),
                format!("{measured} / {}", l.publish.ok),
                q_cell(&l.publish, 0.5),
                cpu_cell(&l.cpu, None),
            ]
        });
        report::comparison(&cols, &rows).render(s);
    }

    fn targets_table(&self, s: &mut String, args: &PubsubArgs) {
        let mut rows = Vec::new();
        let direct = self
            .throughput
            .iter()
            .find(|t| t.broker == EMBEDDED && t.path.starts_with("direct"))
            .and_then(Throughput::deliver_rate);
        for path in ["sidecars, subscription", "sidecars, bulkSubscribe"] {
            let row = self
                .throughput
                .iter()
                .find(|t| t.broker == EMBEDDED && t.path == path);
            // Published and delivered: the delivery rate counts from the first publish, so
            // it can never exceed the publish rate; only complete runs count.
            let value = row.and_then(|t| t.deliver_rate().filter(|_| t.complete));
            let rate = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.0} msgs/s"));
            rows.push(Target {
                label: format!(
                    "{EMBEDDED}, {path}: ≥ {THROUGHPUT_TARGET:.0} msgs/s published and delivered ({} B payloads)",
                    args.payload
                ),
                measured: rate(row.and_then(Throughput::deliver_rate)),
                reference: format!("direct in process: {}", rate(direct)),
                met: row.map(|_| value.is_some_and(|v| v >= THROUGHPUT_TARGET)),
                // An incomplete run has no rate to hold against the target.
                miss: value
                    .filter(|v| *v < THROUGHPUT_TARGET)
                    .map(|v| format!("{:.0} msgs/s", THROUGHPUT_TARGET - v)),
            });
        }
        for broker in [EMBEDDED, JETSTREAM] {
            let find = |direct: bool| {
                self.publish
                    .iter()
                    .find(|l| l.direct == direct && l.broker == broker && l.publish.ok > 0)
            };
            let (sidecar, base) = (find(false), find(true));
            let value = sidecar
                .zip(base)
                .map(|(sc, b)| sc.publish.ms(0.5) - b.publish.ms(0.5));
            rows.push(Target::added_at_most(
                format!(
                    "{broker}: publish p50 through the sidecar − direct ≤ {ADDED_PUBLISH_P50_MS:.2} ms @ {} msgs/s",
                    args.bench.rate
                ),
                value,
                ADDED_PUBLISH_P50_MS,
                format!(
                    "sidecar p50 {}; Dapr 1.17: {DAPR_PUBLISH_P50_MS:.2} ms",
                    sidecar.map_or("—".into(), |sc| format!("{} ms", ms(sc.publish.ms(0.5))))
                ),
            ));
        }
        report::targets_table(s, ["measured", "reference"], &rows);
    }
}

/// "publisher sidecar 0.66 (13.2)": cores, and with `messages`, CPU µs per message.
fn cpu_cell(cpu: &[Cpu], messages: Option<u64>) -> String {
    if cpu.is_empty() {
        return "—".into();
    }
    cpu.iter()
        .map(|c| match (c.seconds, messages) {
            (Some(secs), Some(n)) if n > 0 => {
                format!("{} {:.2} ({:.1})", c.label, c.cores, secs * 1e6 / n as f64)
            }
            _ => format!("{} {:.2}", c.label, c.cores),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
