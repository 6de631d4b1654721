//! The `stdout` exporter: one JSON object per span on standard output, for watching traces
//! locally without a collector.

use std::io::Write as _;

use serde_json::json;

use crate::span::SpanData;

pub(super) fn export(service: &str, batch: &[SpanData]) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    for span in batch {
        let attributes: serde_json::Map<String, serde_json::Value> = span
            .attributes
            .iter()
            .map(|(k, v)| ((*k).to_string(), super::zipkin::json_value(v)))
            .collect();
        let line = json!({
            "service": service,
            "name": span.name,
            "kind": format!("{:?}", span.kind),
            "traceId": span.context.trace_id.to_string(),
            "spanId": span.context.span_id.to_string(),
            "parentId": span.parent.map(|p| p.to_string()),
            "start": span.start_unix_nanos,
            "durationNanos": span.end_unix_nanos - span.start_unix_nanos,
            "attributes": attributes,
            "error": span.error,
        });
        writeln!(out, "{line}").map_err(|e| format!("writing to stdout: {e}"))?;
    }
    Ok(())
}
