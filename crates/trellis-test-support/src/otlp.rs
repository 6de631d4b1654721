//! An OpenTelemetry trace receiver for tests: it accepts OTLP exports over gRPC
//! (`TraceService/Export`) and over HTTP (`POST /v1/traces`, protobuf), decodes them with
//! `opentelemetry-proto` (the protocol's own messages, so a malformed export fails to
//! decode rather than being accepted), and keeps every span it received.
//!
//! No collector can be installed from this machine's package registries, so this stands in
//! for one; what it checks is the wire format a collector would read.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message as _;
use tokio::net::TcpListener;

/// One span as received, ids in lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// The resource's `service.name`.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// None for a root span.
    pub parent_id: Option<String>,
    /// OTLP's span kind number (2 server, 3 client, 4 producer, 5 consumer).
    pub kind: i32,
    /// Attributes, each value as text.
    pub attributes: BTreeMap<String, String>,
    /// The status message of a span whose status is ERROR.
    pub error: Option<String>,
    /// How it arrived: "grpc" or "http".
    pub via: &'static str,
}

#[derive(Debug)]
pub struct OtlpReceiver {
    /// Where OTLP/gRPC exports go.
    pub grpc_addr: SocketAddr,
    /// Where OTLP/HTTP exports go (`/v1/traces` under it).
    pub http_addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct Grpc(Arc<Mutex<Vec<ReceivedSpan>>>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, request.into_inner(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn keep(into: &Mutex<Vec<ReceivedSpan>>, request: ExportTraceServiceRequest, via: &'static str) {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(|v| text(v.value.as_ref()))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                let status = s.status.unwrap_or_default();
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: s.name,
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_id: (!s.parent_span_id.is_empty()).then(|| hex(&s.parent_span_id)),
                    kind: s.kind,
                    attributes: s
                        .attributes
                        .into_iter()
                        .map(|kv| {
                            let value = text(kv.value.as_ref().and_then(|v| v.value.as_ref()));
                            (kv.key, value)
                        })
                        .collect(),
                    // OTLP's StatusCode ERROR is 2.
                    error: (status.code == 2).then_some(status.message),
                    via,
                });
            }
        }
    }
    if let Ok(mut spans) = into.lock() {
        spans.extend(out);
    }
}

fn text(v: Option<&any_value::Value>) -> String {
    match v {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(n)) => n.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

async fn http_export(
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let answer = |status: StatusCode, body: &'static str| {
        let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *resp.status_mut() = status;
        Ok(resp)
    };
    if req.method() != http::Method::POST || req.uri().path() != "/v1/traces" {
        return answer(StatusCode::NOT_FOUND, "not an OTLP traces endpoint");
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return answer(StatusCode::BAD_REQUEST, "unreadable body"),
    };
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            keep(&spans, request, "http");
            answer(StatusCode::OK, "")
        }
        Err(_) => answer(StatusCode::BAD_REQUEST, "not an ExportTraceServiceRequest"),
    }
}

impl OtlpReceiver {
    /// Starts both endpoints on free loopback ports.
    pub async fn start() -> Self {
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let grpc = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind otlp grpc");
        let grpc_addr = grpc.local_addr().expect("otlp grpc address");
        let service = TraceServiceServer::new(Grpc(spans.clone()));
        let grpc_task = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(grpc);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind otlp http");
        let http_addr = http.local_addr().expect("otlp http address");
        let kept = spans.clone();
        let http_task = tokio::spawn(async move {
            while let Ok((stream, _)) = http.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| http_export(kept.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        OtlpReceiver {
            grpc_addr,
            http_addr,
            spans,
            tasks: vec![grpc_task, http_task],
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until `done` holds for the spans received (or `timeout` passes); returns them.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
