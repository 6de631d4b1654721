//! OTLP exporters: the batch as an `ExportTraceServiceRequest` (the OpenTelemetry protocol's
//! protobuf messages, from `opentelemetry-proto`), sent over gRPC
//! (`TraceService/Export`, usually port 4317) or HTTP (`POST /v1/traces` with
//! `application/x-protobuf`, usually port 4318).

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use prost::Message as _;
use tonic::transport::{Channel, Endpoint};

use super::{ExporterError, Poster, Roots, target, tls};
use crate::span::{SpanData, SpanKind, Value};

/// OTLP over gRPC.
#[derive(Debug, Clone)]
pub struct OtlpGrpc {
    url: String,
    client: TraceServiceClient<Channel>,
}

impl OtlpGrpc {
    /// An exporter to `endpoint` (`host:port`, or an `http`/`https` URL), over TLS trusting
    /// `tls` when given (Dapr's `isSecure: true`) and plaintext otherwise; connects on first
    /// use, and again after a failure.
    pub fn new(endpoint: &str, tls: Option<Roots>) -> Result<Self, ExporterError> {
        let target = target(endpoint, Some(tls.is_some()), "otel")?;
        let config = match &tls {
            Some(roots) => Some(tls::client_config(roots, b"h2")?),
            None => None,
        };
        // TLS is done by the connector the HTTP exporters dial through too (one way to reach
        // a collector, one place that explains a failed handshake), not by tonic's TLS
        // features, which are off; the `https` URL still gives the requests their scheme.
        // (Were those features switched on, tonic would refuse `https` through a connector
        // without its own TLS settings: the TLS tests catch that.)
        let channel = Endpoint::from_shared(target.url.clone())
            .map_err(|e| ExporterError::Invalid(format!("otel: endpointAddress: {e}")))?
            .connect_timeout(std::time::Duration::from_secs(3))
            .connect_with_connector_lazy(tls::Connector::new(config));
        Ok(OtlpGrpc {
            url: target.url,
            client: TraceServiceClient::new(channel),
        })
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    pub(super) async fn export(&self, service: &str, batch: &[SpanData]) -> Result<(), String> {
        let mut client = self.client.clone();
        let answer = client
            .export(request(service, batch))
            .await
            .map_err(|s| format!("otlp export ({:?}): {}", s.code(), s.message()))?
            .into_inner();
        match answer.partial_success {
            Some(p) if p.rejected_spans > 0 => Err(format!(
                "collector rejected {} spans: {}",
                p.rejected_spans, p.error_message
            )),
            _ => Ok(()),
        }
    }
}

/// OTLP over HTTP with protobuf bodies.
#[derive(Debug, Clone)]
pub struct OtlpHttp {
    url: String,
    poster: Poster,
}

impl OtlpHttp {
    /// An exporter to `endpoint` (`host:port`, or an `http`/`https` URL), over TLS trusting
    /// `tls` when given and plaintext otherwise; batches go to its `/v1/traces` unless the
    /// URL names a path of its own.
    pub fn new(endpoint: &str, tls: Option<Roots>) -> Result<Self, ExporterError> {
        let target = target(endpoint, Some(tls.is_some()), "otel")?;
        let poster = Poster::new(tls.as_ref())?;
        let has_path = target
            .url
            .split_once("://")
            .is_some_and(|(_, rest)| rest.contains('/'));
        let url = if has_path {
            target.url
        } else {
            format!("{}/v1/traces", target.url)
        };
        Ok(OtlpHttp { url, poster })
    }

    pub(super) fn url(&self) -> &str {
        &self.url
    }

    pub(super) async fn export(&self, service: &str, batch: &[SpanData]) -> Result<(), String> {
        let body = request(service, batch).encode_to_vec();
        self.poster
            .post(&self.url, "application/x-protobuf", body)
            .await
    }
}

/// The batch as one resource (the app) with one instrumentation scope (Trellis).
pub fn request(service: &str, batch: &[SpanData]) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![key_value("service.name", &Value::from(service.to_string()))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "trellis".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: batch.iter().map(span).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn span(s: &SpanData) -> Span {
    Span {
        trace_id: s.context.trace_id.0.to_vec(),
        span_id: s.context.span_id.0.to_vec(),
        trace_state: s.context.tracestate.clone(),
        parent_span_id: s.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
        flags: u32::from(s.context.sampled),
        name: s.name.to_string(),
        kind: match s.kind {
            SpanKind::Server => span::SpanKind::Server,
            SpanKind::Client => span::SpanKind::Client,
            SpanKind::Producer => span::SpanKind::Producer,
            SpanKind::Consumer => span::SpanKind::Consumer,
            SpanKind::Internal => span::SpanKind::Internal,
        } as i32,
        start_time_unix_nano: s.start_unix_nanos,
        end_time_unix_nano: s.end_unix_nanos,
        attributes: s.attributes.iter().map(|(k, v)| key_value(k, v)).collect(),
        status: Some(match &s.error {
            Some(message) => Status {
                code: status::StatusCode::Error as i32,
                message: message.clone(),
            },
            None => Status {
                code: status::StatusCode::Unset as i32,
                message: String::new(),
            },
        }),
        ..Default::default()
    }
}

fn key_value(key: &str, value: &Value) -> KeyValue {
    let value = match value {
        Value::Str(s) => any_value::Value::StringValue(s.to_string()),
        Value::Int(n) => any_value::Value::IntValue(*n),
        Value::Bool(b) => any_value::Value::BoolValue(*b),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}
