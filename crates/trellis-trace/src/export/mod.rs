//! Where finished spans go: OTLP (gRPC or HTTP/protobuf) to an OpenTelemetry collector,
//! Zipkin's JSON v2 API, standard output (for local debugging), or memory (for tests).
//!
//! One closed set of exporters, chosen by `Configuration.spec.tracing`; each export is one
//! request carrying a batch, bounded by [`EXPORT_TIMEOUT`].

mod otlp;
mod stdout;
mod zipkin;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::span::SpanData;

pub use otlp::{OtlpGrpc, OtlpHttp};
pub use zipkin::Zipkin;

/// The longest one export may take; a collector slower than that loses the batch.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an exporter could not be built from its settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExporterError {
    #[error("{0}")]
    Invalid(String),
}

/// One destination of finished spans.
#[derive(Debug, Clone)]
pub enum Exporter {
    OtlpGrpc(OtlpGrpc),
    OtlpHttp(OtlpHttp),
    Zipkin(Zipkin),
    Stdout,
    /// Keeps spans in memory, for tests that look at them without a collector.
    Memory(Arc<Mutex<Vec<SpanData>>>),
}

impl Exporter {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Exporter::OtlpGrpc(_) => "otlp-grpc",
            Exporter::OtlpHttp(_) => "otlp-http",
            Exporter::Zipkin(_) => "zipkin",
            Exporter::Stdout => "stdout",
            Exporter::Memory(_) => "memory",
        }
    }

    /// Sends one batch.
    pub async fn export(&self, service: &str, batch: &[SpanData]) -> Result<(), String> {
        let sent = async {
            match self {
                Exporter::OtlpGrpc(e) => e.export(service, batch).await,
                Exporter::OtlpHttp(e) => e.export(service, batch).await,
                Exporter::Zipkin(e) => e.export(service, batch).await,
                Exporter::Stdout => stdout::export(service, batch),
                Exporter::Memory(spans) => {
                    spans
                        .lock()
                        .map_err(|_| "memory exporter poisoned".to_string())?
                        .extend_from_slice(batch);
                    Ok(())
                }
            }
        };
        tokio::time::timeout(EXPORT_TIMEOUT, sent)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {EXPORT_TIMEOUT:?}")))
    }
}

/// `http://host:port` for an endpoint given as `host:port` or with a scheme; `https` is
/// refused (TLS to collectors is not supported yet).
pub(crate) fn base_url(endpoint: &str, what: &str) -> Result<String, ExporterError> {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.is_empty() {
        return Err(ExporterError::Invalid(format!(
            "{what}: endpointAddress is empty"
        )));
    }
    if endpoint.starts_with("https://") {
        return Err(ExporterError::Invalid(format!(
            "{what}: https endpoints are not supported yet; use a collector reached over plain HTTP (on loopback or a local agent)"
        )));
    }
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    url.parse::<http::Uri>().map_err(|e| {
        ExporterError::Invalid(format!("{what}: endpointAddress {endpoint:?}: {e}"))
    })?;
    Ok(url)
}

/// The HTTP client both HTTP exporters post batches with.
#[derive(Debug, Clone)]
pub(crate) struct Poster {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl Poster {
    pub(crate) fn new() -> Self {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(1)
                .build_http();
        Poster { client }
    }

    /// POSTs `body` to `url`; a non-2xx answer is an error naming its status.
    pub(crate) async fn post(
        &self,
        url: &str,
        content_type: &'static str,
        body: Vec<u8>,
    ) -> Result<(), String> {
        let req = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|e| format!("building the request to {url}: {e}"))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        let status = resp.status();
        // Read the answer to the end so the connection can be reused.
        let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("POST {url}: {status}"))
        }
    }
}
