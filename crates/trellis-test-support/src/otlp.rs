//! An OpenTelemetry trace receiver for tests: it accepts OTLP exports over gRPC
//! (`TraceService/Export`) and over HTTP (`POST /v1/traces`, protobuf), decodes them with
//! `opentelemetry-proto` (the protocol's own messages, so a malformed export fails to
//! decode rather than being accepted), and keeps every span it received. Both endpoints can
//! serve TLS instead, with a certificate from a [`TestCa`].
//!
//! No collector can be installed from this machine's package registries, so this stands in
//! for one; what it checks is the wire format a collector would read.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::tls::TestCa;

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
    failed_handshakes: Arc<AtomicU64>,
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
    /// Starts both endpoints on free loopback ports, plaintext.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts both endpoints on free loopback ports, over TLS with `ca`'s server certificate
    /// (which should name `127.0.0.1`, the address the endpoints are on).
    pub async fn start_tls(ca: &TestCa) -> Self {
        Self::start_with(Some(ca)).await
    }

    async fn start_with(ca: Option<&TestCa>) -> Self {
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let failed_handshakes = Arc::new(AtomicU64::new(0));
        // gRPC needs HTTP/2; the HTTP endpoint takes what the client offers.
        let tls = |alpn: &[&[u8]]| ca.map(|ca| TlsAcceptor::from(ca.server_config(alpn)));
        let grpc = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind otlp grpc");
        let grpc_addr = grpc.local_addr().expect("otlp grpc address");
        let service = TowerToHyperService::new(TraceServiceServer::new(Grpc(spans.clone())));
        let grpc_task = tokio::spawn(accept(
            grpc,
            tls(&[b"h2"]),
            failed_handshakes.clone(),
            move || service.clone(),
        ));
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind otlp http");
        let http_addr = http.local_addr().expect("otlp http address");
        let kept = spans.clone();
        let http_task = tokio::spawn(accept(
            http,
            tls(&[b"h2", b"http/1.1"]),
            failed_handshakes.clone(),
            move || {
                let kept = kept.clone();
                service_fn(move |req| http_export(kept.clone(), req))
            },
        ));
        OtlpReceiver {
            grpc_addr,
            http_addr,
            spans,
            failed_handshakes,
            tasks: vec![grpc_task, http_task],
        }
    }

    /// How many clients broke off the TLS handshake (e.g. not trusting the certificate).
    pub fn failed_handshakes(&self) -> u64 {
        self.failed_handshakes.load(Ordering::Relaxed)
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

/// Serves each connection `listener` accepts (after a TLS handshake, with `tls`) with a
/// service from `service`, HTTP/1.1 or HTTP/2 as the client speaks.
async fn accept<S, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    failed_handshakes: Arc<AtomicU64>,
    service: impl Fn() -> S,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    while let Ok((stream, _)) = listener.accept().await {
        // As a real collector does: a small answer must not wait for a delayed ACK.
        let _ = stream.set_nodelay(true);
        let svc = service();
        let tls = tls.clone();
        let failed = failed_handshakes.clone();
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            match tls {
                None => {
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                }
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                },
            }
        });
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
