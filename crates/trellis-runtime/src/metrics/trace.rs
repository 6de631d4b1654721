//! `trellis_trace_spans_total{outcome}`: what became of the finished spans of a sidecar that
//! traces (`exported`, `dropped` because the export queue was full, `failed` in an export
//! the collector refused or never answered), read from the tracer's counters at each
//! scrape, so tracing's hot path does nothing for metrics.

use std::sync::atomic::Ordering;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, Opts};
use trellis_trace::Tracer;

pub(super) struct TraceSpans {
    tracer: Tracer,
    spans: IntCounterVec,
}

impl TraceSpans {
    pub(super) fn new(tracer: Tracer, app_id: &str) -> prometheus::Result<Self> {
        let opts = Opts::new(
            "trellis_trace_spans_total",
            "Finished spans by what became of them: exported, dropped (queue full), failed (export refused or unanswered)",
        )
        .const_label("app_id", app_id);
        Ok(TraceSpans {
            tracer,
            spans: IntCounterVec::new(opts, &["outcome"])?,
        })
    }
}

impl Collector for TraceSpans {
    fn desc(&self) -> Vec<&Desc> {
        self.spans.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let stats = self.tracer.stats();
        for (outcome, value) in [
            ("exported", &stats.exported),
            ("dropped", &stats.dropped),
            ("failed", &stats.failed),
        ] {
            if let Ok(c) = self.spans.get_metric_with_label_values(&[outcome]) {
                // The tracer's counters only grow: move the series up to them.
                let now = value.load(Ordering::Relaxed);
                c.inc_by(now.saturating_sub(c.get()));
            }
        }
        self.spans.collect()
    }
}
