//! Distributed tracing for the sidecar.
//!
//! - [`context`]: W3C trace context (`traceparent`, `tracestate`), ids.
//! - [`span`]: spans and the guard that records one.
//! - [`tracer`]: parent-based ratio sampling, and the bounded queue and batching task that
//!   export finished spans without ever blocking a request.
//! - [`export`]: OTLP over gRPC or HTTP, Zipkin, stdout, memory.
//!
//! Why not the OpenTelemetry SDK: a sidecar records a handful of span kinds on a hot path
//! measured in microseconds, and needs no global provider, context propagation framework or
//! metrics/logs pipelines. The wire format is not written here: OTLP messages come from
//! `opentelemetry-proto`, the protocol's own generated types (linkerd2-proxy exports the
//! same way).

pub mod context;
pub mod export;
pub mod span;
pub mod tracer;

pub use context::{SpanContext, SpanId, TraceId};
pub use export::{Exporter, ExporterError};
pub use span::{Span, SpanData, SpanKind, Value};
pub use tracer::{Config, Stats, Tracer};
