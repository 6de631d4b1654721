//! Where finished spans go: OTLP (gRPC or HTTP/protobuf) to an OpenTelemetry collector,
//! Zipkin's JSON v2 API, standard output (for local debugging), or memory (for tests).
//!
//! One closed set of exporters, chosen by `Configuration.spec.tracing`; each export is one
//! request carrying a batch, bounded by [`EXPORT_TIMEOUT`]. Collectors are reached over
//! plain TCP or TLS ([`Roots`], `tls.rs`), as the endpoint's scheme or OTLP's `isSecure` say.

pub(crate) mod health;
mod otlp;
mod stdout;
mod tls;
mod zipkin;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::span::SpanData;

pub use otlp::{OtlpGrpc, OtlpHttp};
pub use tls::Roots;
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
    /// Where spans go, for logs: the collector's URL.
    pub fn endpoint(&self) -> &str {
        match self {
            Exporter::OtlpGrpc(e) => e.url(),
            Exporter::OtlpHttp(e) => e.url(),
            Exporter::Zipkin(e) => e.url(),
            Exporter::Stdout => "stdout",
            Exporter::Memory(_) => "memory",
        }
    }

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

/// Where a collector is, as a URL, and whether it is reached over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) tls: bool,
}

/// The collector `endpoint` names: a URL (`http://` or `https://`, the scheme saying whether
/// TLS is used), or `host:port`, which takes `https` when `secure` (OTLP's `isSecure`) and
/// `http` otherwise. A scheme that contradicts `secure` is refused rather than guessed at.
pub(crate) fn target(
    endpoint: &str,
    secure: Option<bool>,
    what: &str,
) -> Result<Target, ExporterError> {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.is_empty() {
        return Err(ExporterError::Invalid(format!(
            "{what}: endpointAddress is empty"
        )));
    }
    let (url, tls) = match endpoint.split_once("://") {
        Some((scheme, _)) => {
            let tls = match scheme.to_ascii_lowercase().as_str() {
                "http" => false,
                "https" => true,
                _ => {
                    return Err(ExporterError::Invalid(format!(
                        "{what}: endpointAddress {endpoint:?}: the scheme must be http or https"
                    )));
                }
            };
            match secure {
                Some(true) if !tls => {
                    return Err(ExporterError::Invalid(format!(
                        "{what}: endpointAddress {endpoint:?} is plain http but isSecure is true; \
                         use https:// or host:port"
                    )));
                }
                Some(false) if tls => {
                    return Err(ExporterError::Invalid(format!(
                        "{what}: endpointAddress {endpoint:?} is https but isSecure is false; \
                         set isSecure: true for TLS"
                    )));
                }
                _ => {}
            }
            (endpoint.to_string(), tls)
        }
        None if secure == Some(true) => (format!("https://{endpoint}"), true),
        None => (format!("http://{endpoint}"), false),
    };
    let uri = url.parse::<http::Uri>().map_err(|e| {
        ExporterError::Invalid(format!("{what}: endpointAddress {endpoint:?}: {e}"))
    })?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(ExporterError::Invalid(format!(
            "{what}: endpointAddress {endpoint:?} names no host"
        )));
    }
    Ok(Target { url, tls })
}

pub(crate) use trellis_core::error::describe;

/// The HTTP client both HTTP exporters post batches with.
#[derive(Debug, Clone)]
pub(crate) struct Poster {
    client: hyper_util::client::legacy::Client<tls::Connector, http_body_util::Full<bytes::Bytes>>,
}

impl Poster {
    /// A client over TLS trusting `tls` when given, plaintext otherwise.
    pub(crate) fn new(tls: Option<&Roots>) -> Result<Self, ExporterError> {
        let tls = match tls {
            Some(roots) => Some(tls::client_config(roots, b"http/1.1")?),
            None => None,
        };
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(1)
                .build(tls::Connector::new(tls));
        Ok(Poster { client })
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
            .map_err(|e| format!("POST {url}: {}", describe(&e)))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_take_their_scheme_from_the_url_or_is_secure() {
        let t = |e: &str, secure| target(e, secure, "otel");
        let plain = |url: &str| {
            Ok(Target {
                url: url.into(),
                tls: false,
            })
        };
        let secure = |url: &str| {
            Ok(Target {
                url: url.into(),
                tls: true,
            })
        };
        assert_eq!(
            t("collector:4317", Some(false)),
            plain("http://collector:4317")
        );
        assert_eq!(
            t("collector:4317", Some(true)),
            secure("https://collector:4317")
        );
        assert_eq!(t(" collector:4317/ ", None), plain("http://collector:4317"));
        assert_eq!(
            t("https://collector:4318/v1/traces", Some(true)),
            secure("https://collector:4318/v1/traces")
        );
        assert_eq!(
            t("HTTPS://zipkin:9411/api/v2/spans", None),
            secure("HTTPS://zipkin:9411/api/v2/spans")
        );
        assert_eq!(t("http://[::1]:4318", None), plain("http://[::1]:4318"));
    }

    #[test]
    fn contradictions_and_nonsense_are_refused_naming_the_field() {
        let err = |e: &str, secure| target(e, secure, "otel").unwrap_err().to_string();
        assert!(err("", Some(true)).contains("otel: endpointAddress is empty"));
        assert!(err("https://c:4318", Some(false)).contains("set isSecure: true"));
        assert!(err("http://c:4318", Some(true)).contains("isSecure is true"));
        assert!(err("grpc://c:4317", None).contains("http or https"));
        assert!(err("http://[::1", None).contains("endpointAddress"));
        assert!(err("https://:4317", None).contains("names no host"));
    }

    #[test]
    fn errors_are_described_with_their_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Top(#[source] std::io::Error);
        let e = Top(std::io::Error::other(
            "tls handshake with c: bad certificate",
        ));
        assert_eq!(
            describe(&e),
            "client error (Connect): tls handshake with c: bad certificate"
        );
    }
}
