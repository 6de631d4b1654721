//! A certificate authority made for one test: a self-signed root, a server certificate it
//! signed for the names a test connects to, the rustls server configuration serving it, and
//! the root as a PEM file (for `SSL_CERT_FILE`) in a directory removed with the value.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Debug)]
pub struct TestCa {
    ca_pem: String,
    ca_file: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl TestCa {
    /// A new root and a server certificate for `names` (DNS names, or IP addresses, which
    /// become IP SANs).
    pub fn new(names: &[&str]) -> Self {
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: a verifier that finds a root of the same name would try its
        // signature (BadSignature) instead of finding none (UnknownIssuer).
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let name = format!("trellis test ca {}-{serial}", std::process::id());
        ca.distinguished_name.push(DnType::CommonName, name);
        let ca_cert = ca.self_signed(&ca_key).expect("self-signed ca");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("server key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut leaf = CertificateParams::new(names).expect("server params");
        leaf.distinguished_name
            .push(DnType::CommonName, "trellis test collector");
        let cert = leaf.signed_by(&key, &issuer).expect("signed server cert");
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_file = dir.path().join("ca.pem");
        let ca_pem = ca_cert.pem();
        std::fs::write(&ca_file, &ca_pem).expect("write ca.pem");
        TestCa {
            ca_pem,
            ca_file,
            chain: vec![cert.der().clone()],
            key_der: key.serialize_der(),
            _dir: dir,
        }
    }

    /// The root, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A file holding the root, PEM: what `SSL_CERT_FILE` points at.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A TLS server presenting the certificate, offering `alpn` (e.g. `h2`, `http/1.1`).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), key)
            .expect("server certificate");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}
