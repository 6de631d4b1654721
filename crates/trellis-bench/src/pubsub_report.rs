//! The markdown report of `trellis-bench pubsub`: throughput, publish latency and
//! publish→delivery latency per broker and path, and the targets.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::load::Outcome;
use crate::pubsub::app::Tally;
use crate::pubsub::{EMBEDDED, JETSTREAM};
use crate::report::{ms, q, secs};

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

pub struct PubsubReport {
    pub command: String,
    pub date: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub load: (String, String),
    pub versions: Vec<String>,
    /// The temp dir holding the broker files, with its filesystem.
    pub data_dir: String,
    pub payload: usize,
    /// Size of the CloudEvent stored for one payload (the direct paths' message).
    pub stored: usize,
    pub bulk: u64,
    pub publishers: usize,
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub direct_in_flight: usize,
    pub throughput: Vec<Throughput>,
    pub publish: Vec<Latency>,
    pub e2e: Vec<Latency>,
    pub notes: Vec<String>,
}

impl PubsubReport {
    pub fn render(&self) -> String {
        let mut s = String::new();
        self.header(&mut s);
        self.throughput_table(&mut s);
        self.publish_table(&mut s);
        self.e2e_table(&mut s);
        self.targets_table(&mut s);
        crate::report::write_notes(&mut s, &self.notes);
        s
    }

    fn header(&self, s: &mut String) {
        crate::report::write_run_header(
            s,
            "pub/sub",
            &self.command,
            &self.date,
            (self.cpus, &self.cpu_model),
            &self.load,
            &self.versions,
        );
        let _ = writeln!(s, "- Broker files (embedded): {}", self.data_dir);
        let _ = writeln!(
            s,
            "- Messages: {} B JSON payloads; what the broker stores is the CloudEvent around it \
             (about {} B), on the direct paths too",
            self.payload, self.stored
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

    fn throughput_table(&self, s: &mut String) {
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
            self.bulk, self.publishers, self.direct_in_flight
        );
        s.push_str("| broker | path | messages | published/s | delivered/s | while publishing | after publishing | delivered | dups | per request | publish→delivery p50 | p99 | CPU: cores (µs per message) |\n");
        s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for t in &self.throughput {
            let tally = &t.tally;
            let per_request = if tally.requests > 0 {
                format!("{:.1}", tally.entries as f64 / tally.requests as f64)
            } else {
                "—".into()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {} | {:.0} | {} | {}{} | {} | {} | {} | {} | {} |",
                t.broker,
                t.path,
                t.messages,
                t.publish_rate(),
                t.deliver_rate().map_or("—".into(), |r| format!("{r:.0}")),
                t.rate_while_publishing(),
                t.drain_rate().map_or("—".into(), |r| format!("{r:.0}")),
                tally.unique,
                if t.complete { "" } else { " (timed out)" },
                tally.duplicates,
                per_request,
                tally_q(tally, 0.5),
                tally_q(tally, 0.99),
                cpu_cell_per_msg(&t.cpu, t.messages),
            );
        }
        s.push('\n');
    }

    fn publish_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "## Publish latency: {} msgs/s for {}\n\nOne message per publish, nobody subscribed; \
             open loop over {} publishers (keep-alive HTTP connections to the sidecar, or tasks \
             sharing one NATS connection / one broker handle), {} warm-up. Latency in ms, counted \
             from the scheduled send time whenever the publisher was still busy at that time. \
             Added = sidecar − direct (ratio in brackets).\n",
            self.rate,
            secs(self.duration),
            self.connections,
            secs(self.warmup)
        );
        s.push_str("| broker | path | msgs/s | errors | p50 | p90 | p99 | max | added p50 | added p90 | added p99 | CPU (cores) |\n");
        s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for l in &self.publish {
            let base = self.base(&self.publish, l.broker, |b| Some(&b.publish));
            let o = &l.publish;
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                l.broker,
                l.path,
                o.rate(),
                o.errors,
                q(o, 0.5),
                q(o, 0.9),
                q(o, 0.99),
                if o.ok == 0 {
                    "—".into()
                } else {
                    ms(o.max_ms())
                },
                added(!l.direct, base.map(|b| b.ms(0.5)), o.ok, o.ms(0.5)),
                added(!l.direct, base.map(|b| b.ms(0.9)), o.ok, o.ms(0.9)),
                added(!l.direct, base.map(|b| b.ms(0.99)), o.ok, o.ms(0.99)),
                cpu_cell(&l.cpu),
            );
        }
        s.push('\n');
    }

    fn e2e_table(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "## Publish→delivery latency: {} msgs/s for {}\n\nThe same open-loop publishing, with \
             a subscriber (normal subscription, one event per delivery): latency in ms from the \
             publish being sent (timestamp in the payload) to the message reaching the app (or \
             the bench's direct consumer), first delivery of each message published after the \
             warm-up. Added = path − direct.\n",
            self.rate,
            secs(self.duration)
        );
        s.push_str("| broker | path | delivered / published | publish p50 | p50 | p90 | p99 | max | added p50 | added p90 | added p99 | CPU (cores) |\n");
        s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for l in &self.e2e {
            let Some(t) = &l.delivered else { continue };
            let base = self.base(&self.e2e, l.broker, |b| b.delivered.as_ref());
            let (n, has) = (t.measured, t.measured > 0);
            let bq = |q: f64| base.filter(|b| b.measured > 0).map(|b| b.ms(q));
            let _ = writeln!(
                s,
                "| {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                l.broker,
                l.path,
                n,
                l.publish.ok,
                q(&l.publish, 0.5),
                tally_q(t, 0.5),
                tally_q(t, 0.9),
                tally_q(t, 0.99),
                if has {
                    ms(t.latency.max() as f64 / 1000.0)
                } else {
                    "—".into()
                },
                added(!l.direct, bq(0.5), n, t.ms(0.5)),
                added(!l.direct, bq(0.9), n, t.ms(0.9)),
                added(!l.direct, bq(0.99), n, t.ms(0.99)),
                cpu_cell(&l.cpu),
            );
        }
        s.push('\n');
    }

    /// The direct row of `broker` in `rows`, through `get`.
    fn base<'a, T>(
        &self,
        rows: &'a [Latency],
        broker: &str,
        get: impl Fn(&'a Latency) -> Option<&'a T>,
    ) -> Option<&'a T> {
        rows.iter()
            .find(|r| r.direct && r.broker == broker)
            .and_then(get)
    }

    fn targets_table(&self, s: &mut String) {
        s.push_str("## Targets\n\n| target | measured | reference | met |\n|---|---:|---|:---:|\n");
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
            let _ = writeln!(
                s,
                "| {EMBEDDED}, {path}: ≥ {THROUGHPUT_TARGET:.0} msgs/s published and delivered ({} B payloads) | {} | direct in process: {} | {} |",
                self.payload,
                row.and_then(Throughput::deliver_rate)
                    .map_or("—".into(), |v| format!("{v:.0} msgs/s")),
                direct.map_or("—".into(), |v| format!("{v:.0} msgs/s")),
                met(row.map(|_| value.is_some_and(|v| v >= THROUGHPUT_TARGET))),
            );
        }
        for broker in [EMBEDDED, JETSTREAM] {
            let sidecar = self
                .publish
                .iter()
                .find(|l| !l.direct && l.broker == broker && l.publish.ok > 0);
            let base = self
                .publish
                .iter()
                .find(|l| l.direct && l.broker == broker && l.publish.ok > 0);
            let value = sidecar
                .zip(base)
                .map(|(sc, b)| sc.publish.ms(0.5) - b.publish.ms(0.5));
            let _ = writeln!(
                s,
                "| {broker}: publish p50 through the sidecar − direct ≤ {ADDED_PUBLISH_P50_MS:.2} ms @ {} msgs/s | {} | sidecar p50 {}; Dapr 1.17: {DAPR_PUBLISH_P50_MS:.2} ms | {} |",
                self.rate,
                value.map_or("—".into(), |v| format!("{v:+.3} ms")),
                sidecar.map_or("—".into(), |sc| format!("{} ms", ms(sc.publish.ms(0.5)))),
                met(value.map(|v| v <= ADDED_PUBLISH_P50_MS)),
            );
        }
        s.push('\n');
    }
}

fn tally_q(t: &Tally, quantile: f64) -> String {
    if t.measured == 0 {
        "—".into()
    } else {
        ms(t.ms(quantile))
    }
}

/// "+0.085 (×1.69)" on a compared row; a dash on the baseline or without data.
fn added(compared: bool, base: Option<f64>, n: u64, v: f64) -> String {
    match base {
        Some(b) if compared && n > 0 && b > 0.0 => format!("{:+.3} (×{:.2})", v - b, v / b),
        _ => "—".into(),
    }
}

fn cpu_cell(cpu: &[Cpu]) -> String {
    if cpu.is_empty() {
        return "—".into();
    }
    cpu.iter()
        .map(|c| format!("{} {:.2}", c.label, c.cores))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "publisher sidecar 0.66 (13.2)": cores, and CPU µs per message of the run.
fn cpu_cell_per_msg(cpu: &[Cpu], messages: u64) -> String {
    if cpu.is_empty() {
        return "—".into();
    }
    cpu.iter()
        .map(|c| match c.seconds {
            Some(secs) if messages > 0 => format!(
                "{} {:.2} ({:.1})",
                c.label,
                c.cores,
                secs * 1e6 / messages as f64
            ),
            _ => format!("{} {:.2}", c.label, c.cores),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn met(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "✅",
        Some(false) => "❌",
        None => "— (not measured)",
    }
}
