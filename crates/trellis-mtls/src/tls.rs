//! rustls configurations for the internal port: a server that requires a client
//! certificate chained to the trust anchors, a client that presents its own and checks
//! the server's, both TLS 1.3 only with ALPN `h2`.
//!
//! Names are not DNS names here: a sidecar is known by the SPIFFE id in its certificate's
//! URI SAN, which webpki's server-name check does not cover. So the client verifies the
//! server's chain the way webpki verifies a client's (chain to an anchor, validity period,
//! key usage; workload certificates carry both server and client usages), and the caller
//! then compares [`peer_id`] with the app it meant to call. The server reads the caller's
//! id the same way; it is the only source of the caller's identity.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::{MtlsError, SpiffeId, WorkloadIdentity};

/// Hands rustls the workload's current certificate on every handshake, either side.
#[derive(Debug)]
struct Resolver(Arc<WorkloadIdentity>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified_key())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn chain_verifier(identity: &WorkloadIdentity) -> Result<Arc<dyn ClientCertVerifier>, MtlsError> {
    let mut roots = RootCertStore::empty();
    for anchor in identity.authority().trust_anchors() {
        roots
            .add(anchor.clone())
            .map_err(|e| MtlsError::Authority(format!("trust anchor: {e}")))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), identity.provider().clone())
        .build()
        .map_err(|e| MtlsError::Authority(format!("building the certificate verifier: {e}")))
}

/// The internal port's TLS: client certificates required and chained to the anchors.
pub fn server_config(identity: &Arc<WorkloadIdentity>) -> Result<Arc<ServerConfig>, MtlsError> {
    let verifier = chain_verifier(identity)?;
    let mut config = ServerConfig::builder_with_provider(identity.provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| MtlsError::Authority(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Resolver(identity.clone())));
    // HTTP/2 for multiplexed and streamed calls, HTTP/1.1 for pooled small ones.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// TLS to other sidecars: present this workload's certificate, verify the peer's chain.
pub fn client_config(identity: &Arc<WorkloadIdentity>) -> Result<Arc<ClientConfig>, MtlsError> {
    let verifier = Arc::new(ChainOnly(chain_verifier(identity)?));
    let mut config = ClientConfig::builder_with_provider(identity.provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| MtlsError::Authority(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(Resolver(identity.clone())));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The SPIFFE id of the peer of an established connection.
pub fn peer_id(certs: Option<&[CertificateDer<'_>]>) -> Result<SpiffeId, MtlsError> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or_else(|| MtlsError::Identity("the peer presented no certificate".into()))?;
    SpiffeId::from_cert(leaf)
}

/// Verifies a server's chain as webpki verifies a client's: anchors, validity, usage; the
/// identity check is the caller's, after the handshake.
#[derive(Debug)]
struct ChainOnly(Arc<dyn ClientCertVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .verify_client_cert(end_entity, intermediates, now)
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
