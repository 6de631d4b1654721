//! TLS to collectors: whose certificates an exporter trusts ([`Roots`]), and the one
//! connector the gRPC channel and the HTTP client both dial through, which wraps the TCP
//! connection in TLS when the exporter's endpoint is `https`.
//!
//! Server certificates are verified against the system's roots as rustls-native-certs finds
//! them: `SSL_CERT_FILE` (a PEM bundle) and `SSL_CERT_DIR` (a directory of PEM files), when
//! set, take the platform store's place, which is how a collector with a certificate from a
//! private CA is trusted without installing that CA machine-wide. The server's name is the
//! endpoint's host (a DNS name, or an IP address matched against the certificate's IP SANs).
//!
//! A failed handshake is an export error like a refused connection: the batch is dropped
//! and counted, never waited for by a request. Its message says which check failed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::ExporterError;

/// How long the TCP connection to a collector may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The certificates an exporter trusts to sign its collector's: the system's, or given ones.
#[derive(Debug, Clone)]
pub struct Roots(Source);

#[derive(Debug, Clone)]
enum Source {
    /// Read on first use, once per process.
    Native,
    Given(Arc<RootCertStore>),
}

impl Roots {
    /// The system's roots, or `SSL_CERT_FILE` / `SSL_CERT_DIR` when set; read when an
    /// exporter first needs them, once per process.
    pub fn native() -> Self {
        Roots(Source::Native)
    }

    /// Exactly the CA certificates in `pem` (one or more `CERTIFICATE` blocks).
    pub fn from_pem(pem: &[u8]) -> Result<Self, ExporterError> {
        let mut store = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| ExporterError::Invalid(format!("roots: {e}")))?;
            store
                .add(cert)
                .map_err(|e| ExporterError::Invalid(format!("roots: {e}")))?;
        }
        if store.is_empty() {
            return Err(ExporterError::Invalid(
                "roots: no CERTIFICATE block in the PEM".into(),
            ));
        }
        Ok(Roots(Source::Given(Arc::new(store))))
    }

    fn store(&self) -> Arc<RootCertStore> {
        match &self.0 {
            Source::Native => native_store(),
            Source::Given(store) => store.clone(),
        }
    }
}

/// The system's roots, read once per process; what could not be read is logged, and an
/// empty store leaves every TLS export failing with an unknown issuer, which is logged too.
fn native_store() -> Arc<RootCertStore> {
    static STORE: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    STORE
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "reading trusted root certificates for trace export");
            }
            let mut store = RootCertStore::empty();
            let (added, ignored) = store.add_parsable_certificates(found.certs);
            if ignored > 0 {
                tracing::debug!(ignored, "unusable root certificates skipped");
            }
            if added == 0 {
                tracing::warn!(
                    "no trusted root certificates found for trace export over TLS; \
                     set SSL_CERT_FILE to the collector's CA (PEM)"
                );
            }
            Arc::new(store)
        })
        .clone()
}

/// A client configuration trusting `roots` and offering `alpn` (`h2` for gRPC, `http/1.1`
/// for the HTTP exporters).
pub(crate) fn client_config(
    roots: &Roots,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, ExporterError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ExporterError::Invalid(format!("tls: {e}")))?
        .with_root_certificates(roots.store())
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// Dials a collector: TCP, then TLS when it was made with a client configuration.
#[derive(Clone)]
pub(crate) struct Connector {
    tcp: HttpConnector,
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = if self.tls.is_some() { "tls" } else { "plain" };
        write!(f, "Connector({tls})")
    }
}

impl Connector {
    pub(crate) fn new(tls: Option<Arc<ClientConfig>>) -> Self {
        let mut tcp = HttpConnector::new();
        // The scheme says whether this connector wraps in TLS, not whether TCP may be used.
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        Connector {
            tcp,
            tls: tls.map(TlsConnector::from),
        }
    }
}

/// Why a connection to a collector could not be made; the message is the whole story.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConnectError(String);

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        tower::Service::<Uri>::poll_ready(&mut self.tcp, cx)
            .map_err(|e| ConnectError(super::describe(&e)))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tcp = tower::Service::call(&mut self.tcp, uri.clone());
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = tcp
                .await
                .map_err(|e| ConnectError(super::describe(&e)))?
                .into_inner();
            let Some(tls) = tls else {
                return Ok(TokioIo::new(Stream::Plain(tcp)));
            };
            let host = server_host(&uri);
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| ConnectError(format!("tls: {host:?} is not a server name: {e}")))?;
            let stream = tls
                .connect(name, tcp)
                .await
                .map_err(|e| ConnectError(handshake_failure(host, &e)))?;
            Ok(TokioIo::new(Stream::Tls(Box::new(stream))))
        })
    }
}

/// The host a certificate must name: the URI's, without the brackets of an IPv6 address.
fn server_host(uri: &Uri) -> &str {
    let host = uri.host().unwrap_or_default();
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// What went wrong in a handshake with `host`, with what to do about the common cases.
fn handshake_failure(host: &str, error: &io::Error) -> String {
    let rustls_error = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    let hint = match rustls_error {
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            "; its issuer is not a trusted root: set SSL_CERT_FILE to the collector's CA (PEM)"
        }
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => "; the certificate does not name the host of endpointAddress",
        _ => "",
    };
    format!("tls handshake with {host}: {error}{hint}")
}

/// A connection to a collector, plain or TLS.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        // HTTP/1.1 for the HTTP exporters (the only protocol their configuration offers);
        // tonic speaks HTTP/2 on the gRPC channel whatever this says.
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host() {
        let host = |u: &str| server_host(&u.parse::<Uri>().unwrap()).to_string();
        assert_eq!(host("https://collector.example:4317"), "collector.example");
        assert_eq!(host("https://127.0.0.1:4318/v1/traces"), "127.0.0.1");
        assert_eq!(host("https://[::1]:4317"), "::1");
        assert!(ServerName::try_from(host("https://[::1]:4317")).is_ok());
    }

    #[test]
    fn handshake_failures_say_what_to_do() {
        let unknown = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let text = handshake_failure("collector", &unknown);
        assert!(text.starts_with("tls handshake with collector: "), "{text}");
        assert!(text.contains("SSL_CERT_FILE"), "{text}");
        let name = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
        );
        assert!(handshake_failure("h", &name).contains("does not name"));
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(!handshake_failure("h", &reset).contains(';'));
    }

    #[test]
    fn roots_from_pem_need_a_certificate() {
        assert!(Roots::from_pem(b"").is_err());
        assert!(
            Roots::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }
}
