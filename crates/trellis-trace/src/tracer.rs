//! The tracer: decides which traces are sampled, starts spans, and exports finished ones
//! in batches from a task of its own.
//!
//! Export never slows a request down: a finished span is handed to a bounded queue with a
//! non-blocking send, and when the queue is full (the collector is down or slow and the
//! backlog reached [`Config::max_queue`]) the span is dropped and counted. The export task
//! sends a batch when it holds [`Config::max_batch`] spans or [`Config::flush_interval`]
//! has passed, to every configured exporter; a failed export is counted and dropped too,
//! and logged once per spell of failures (`export/health.rs`).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::context::{SpanContext, TraceId};
use crate::export::Exporter;
use crate::export::health::{Health, Note};
use crate::span::{Span, SpanData, SpanKind};

/// How a tracer samples and exports.
#[derive(Debug, Clone)]
pub struct Config {
    /// `service.name` of every span (the app id).
    pub service_name: String,
    /// The share of new traces sampled, 0 to 1; a trace with a parent follows the parent's
    /// decision.
    pub sampling_rate: f64,
    pub exporters: Vec<Exporter>,
    /// The most finished spans waiting for export; more are dropped.
    pub max_queue: usize,
    /// The most spans in one export.
    pub max_batch: usize,
    /// How long a finished span waits at most before its batch is sent.
    pub flush_interval: Duration,
}

impl Config {
    /// Defaults for a sidecar: 2,048 queued spans, batches of 512, flushed every second.
    pub fn new(service_name: impl Into<String>, sampling_rate: f64) -> Self {
        Config {
            service_name: service_name.into(),
            sampling_rate,
            exporters: Vec::new(),
            max_queue: 2048,
            max_batch: 512,
            flush_interval: Duration::from_secs(1),
        }
    }
}

/// Counts of what happened to finished spans.
#[derive(Debug, Default)]
pub struct Stats {
    /// Spans sent to every exporter without error.
    pub exported: AtomicU64,
    /// Spans dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Spans in exports that failed (per exporter).
    pub failed: AtomicU64,
}

/// A handle to the tracer; cheap to clone.
#[derive(Debug, Clone)]
pub struct Tracer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Traces whose trace id's low 64 bits fall under this are sampled.
    threshold: u64,
    sample_all: bool,
    queue: mpsc::Sender<Command>,
    stats: Arc<Stats>,
}

#[derive(Debug)]
enum Command {
    Span(SpanData),
    Flush(oneshot::Sender<()>),
}

impl Tracer {
    /// Starts the tracer's export task on the current tokio runtime.
    pub fn start(config: Config) -> Tracer {
        let rate = if config.sampling_rate.is_finite() {
            config.sampling_rate.clamp(0.0, 1.0)
        } else {
            0.0
        };
        // The threshold is a ratio of the id space: exact at 0 and 1, within 2^-53 between.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let threshold = (rate * u64::MAX as f64) as u64;
        let (tx, rx) = mpsc::channel(config.max_queue.max(1));
        let stats = Arc::new(Stats::default());
        tokio::spawn(export_loop(rx, config, stats.clone()));
        Tracer {
            inner: Arc::new(Inner {
                threshold,
                sample_all: rate >= 1.0,
                queue: tx,
                stats,
            }),
        }
    }

    /// Starts a span of `kind` called `name`: a child of `parent` (following its sampling
    /// decision) or, without one, the root of a new trace, sampled at the configured rate.
    pub fn span(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: Option<&SpanContext>,
    ) -> Span {
        self.span_with(kind, parent, || name.into())
    }

    /// As [`Tracer::span`], naming the span only when it records: a name built per
    /// request (`format!`) costs nothing for the unsampled majority.
    pub fn span_with(
        &self,
        kind: SpanKind,
        parent: Option<&SpanContext>,
        name: impl FnOnce() -> Cow<'static, str>,
    ) -> Span {
        let (context, parent_id) = match parent {
            Some(p) => (p.child(p.sampled), Some(p.span_id)),
            None => {
                let trace_id = TraceId::random();
                let sampled = self.samples(trace_id);
                let root = SpanContext {
                    trace_id,
                    span_id: crate::context::SpanId::random(),
                    sampled,
                    tracestate: String::new(),
                };
                (root, None)
            }
        };
        if context.sampled {
            Span::recording(self.clone(), context, parent_id, name(), kind)
        } else {
            Span::silent(context)
        }
    }

    fn samples(&self, trace_id: TraceId) -> bool {
        self.inner.sample_all || trace_id.low_u64() < self.inner.threshold
    }

    pub(crate) fn queue(&self, span: SpanData) {
        if self.inner.queue.try_send(Command::Span(span)).is_err() {
            self.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What happened to finished spans so far.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Exports everything finished so far and waits for it (at shutdown, and in tests).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.queue.send(Command::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn export_loop(mut rx: mpsc::Receiver<Command>, config: Config, stats: Arc<Stats>) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(config.max_batch.min(1024));
    let mut health: Vec<Health> = config.exporters.iter().map(|_| Health::default()).collect();
    let mut ticker = tokio::time::interval(config.flush_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let flushed = tokio::select! {
            command = rx.recv() => match command {
                Some(Command::Span(span)) => {
                    batch.push(span);
                    if batch.len() < config.max_batch {
                        continue;
                    }
                    None
                }
                Some(Command::Flush(done)) => Some(done),
                // Every handle is gone: send what is left and stop.
                None => {
                    send(&config, &stats, &mut health, &mut batch).await;
                    return;
                }
            },
            _ = ticker.tick() => None,
        };
        send(&config, &stats, &mut health, &mut batch).await;
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

async fn send(config: &Config, stats: &Stats, health: &mut [Health], batch: &mut Vec<SpanData>) {
    if batch.is_empty() {
        return;
    }
    let n = batch.len() as u64;
    let mut all_ok = true;
    for (exporter, health) in config.exporters.iter().zip(health) {
        let (kind, endpoint) = (exporter.kind(), exporter.endpoint());
        match exporter.export(&config.service_name, batch).await {
            Ok(()) => {
                if let Note::Recovered { failed_batches } = health.succeeded() {
                    tracing::info!(
                        exporter = kind,
                        endpoint,
                        failed_batches,
                        "span export works again"
                    );
                }
            }
            Err(error) => {
                all_ok = false;
                stats.failed.fetch_add(n, Ordering::Relaxed);
                tracing::debug!(exporter = kind, endpoint, %error, spans = n, "span export failed");
                if health.failed(&error, Instant::now()) == Note::Failing {
                    tracing::warn!(
                        exporter = kind,
                        endpoint,
                        %error,
                        "span export failing; spans are dropped and counted as failed until it works"
                    );
                }
            }
        }
    }
    if all_ok {
        stats.exported.fetch_add(n, Ordering::Relaxed);
    }
    batch.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(rate: f64, max_queue: usize) -> Tracer {
        let mut config = Config::new("app", rate);
        config.max_queue = max_queue;
        config.exporters.push(Exporter::Memory(Default::default()));
        Tracer::start(config)
    }

    #[tokio::test]
    async fn rates_zero_and_one_are_exact_and_children_follow_their_parent() {
        let none = tracer(0.0, 16);
        let all = tracer(1.0, 16);
        for _ in 0..200 {
            assert!(!none.span("x", SpanKind::Server, None).is_recording());
            assert!(all.span("x", SpanKind::Server, None).is_recording());
        }
        let root = all.span("root", SpanKind::Server, None);
        let child = none.span("child", SpanKind::Client, Some(root.context()));
        assert!(child.is_recording(), "a sampled parent's child is sampled");
        assert_eq!(child.context().trace_id, root.context().trace_id);
        let quiet = none.span("root", SpanKind::Server, None);
        let child = all.span("child", SpanKind::Client, Some(quiet.context()));
        assert!(!child.is_recording(), "an unsampled parent's child is not");
    }

    #[tokio::test]
    async fn a_tenth_samples_about_a_tenth() {
        let t = tracer(0.1, 16);
        let sampled = (0..20_000).filter(|_| t.samples(TraceId::random())).count();
        assert!((1_500..2_500).contains(&sampled), "{sampled} of 20000");
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let t = tracer(1.0, 1);
        // The export task gets no chance to run between these (a current-thread runtime),
        // so all but the first find the queue full.
        for _ in 0..5 {
            t.span("x", SpanKind::Internal, None).end();
        }
        assert_eq!(t.stats().dropped.load(Ordering::Relaxed), 4);
        t.flush().await;
        assert_eq!(t.stats().exported.load(Ordering::Relaxed), 1);
    }
}
