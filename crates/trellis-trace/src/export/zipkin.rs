//! The Zipkin exporter: the batch as Zipkin's JSON v2 span list, posted to the endpoint
//! (`http://host:9411/api/v2/spans`, or `https://`).

use serde_json::{Value as Json, json};

use super::{ExporterError, Poster, Roots, target};
use crate::span::{SpanData, SpanKind, Value};

#[derive(Debug, Clone)]
pub struct Zipkin {
    url: String,
    poster: Poster,
}

impl Zipkin {
    /// An exporter to the span API at `endpoint`, over TLS trusting `roots` when the URL is
    /// `https` (a bare `host:port` is plain HTTP).
    pub fn new(endpoint: &str, roots: &Roots) -> Result<Self, ExporterError> {
        let target = target(endpoint, None, "zipkin")?;
        Ok(Zipkin {
            poster: Poster::new(target.tls.then_some(roots))?,
            url: target.url,
        })
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    pub(super) async fn export(&self, service: &str, batch: &[SpanData]) -> Result<(), String> {
        let spans: Vec<Json> = batch.iter().map(|s| span(service, s)).collect();
        let body = serde_json::to_vec(&spans).map_err(|e| format!("encoding spans: {e}"))?;
        self.poster.post(&self.url, "application/json", body).await
    }
}

fn span(service: &str, s: &SpanData) -> Json {
    let mut tags: serde_json::Map<String, Json> = s
        .attributes
        .iter()
        .map(|(k, v)| ((*k).to_string(), Json::String(text(v))))
        .collect();
    if let Some(error) = &s.error {
        tags.insert("error".into(), Json::String(error.clone()));
    }
    let mut span = json!({
        "traceId": s.context.trace_id.to_string(),
        "id": s.context.span_id.to_string(),
        "name": s.name,
        "timestamp": s.start_unix_nanos / 1_000,
        "duration": ((s.end_unix_nanos - s.start_unix_nanos) / 1_000).max(1),
        "localEndpoint": {"serviceName": service},
        "tags": tags,
    });
    if let Some(parent) = s.parent {
        span["parentId"] = Json::String(parent.to_string());
    }
    let kind = match s.kind {
        SpanKind::Server => Some("SERVER"),
        SpanKind::Client => Some("CLIENT"),
        SpanKind::Producer => Some("PRODUCER"),
        SpanKind::Consumer => Some("CONSUMER"),
        SpanKind::Internal => None,
    };
    if let Some(kind) = kind {
        span["kind"] = Json::String(kind.into());
    }
    span
}

/// Zipkin's tags are strings.
fn text(v: &Value) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
    }
}

/// An attribute as JSON (for the stdout exporter).
pub(super) fn json_value(v: &Value) -> Json {
    match v {
        Value::Str(s) => Json::String(s.to_string()),
        Value::Int(n) => Json::from(*n),
        Value::Bool(b) => Json::Bool(*b),
    }
}
