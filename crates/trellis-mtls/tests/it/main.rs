//! mTLS over real loopback sockets: who each end sees, and every way a connection must be
//! refused (another CA, an expired certificate, plaintext, no SPIFFE id), plus renewal
//! and the local authority's files.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use trellis_mtls::rustls::pki_types::ServerName;
use trellis_mtls::{
    Authority, CertSettings, SpiffeId, TlsAcceptor, TlsConnector, WorkloadIdentity, tls,
};

fn identity(
    authority: &Arc<Authority>,
    app: &str,
    settings: CertSettings,
) -> Arc<WorkloadIdentity> {
    WorkloadIdentity::new(
        SpiffeId::new("public", "default", app),
        authority.clone(),
        settings,
    )
    .unwrap()
}

/// A server that completes handshakes and reports the client's id (or the error) per
/// connection, echoing one byte so the client knows the connection works.
async fn server(
    identity: &Arc<WorkloadIdentity>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<SpiffeId, String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(tls::server_config(identity).unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match acceptor.accept(stream).await {
                    Ok(mut tls) => {
                        let id = tls::peer_id(tls.get_ref().1.peer_certificates());
                        let _ = tx.send(id.map_err(|e| e.to_string()));
                        let mut b = [0u8; 1];
                        while tls.read_exact(&mut b).await.is_ok() {
                            let _ = tls.write_all(&b).await;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn connect(
    identity: &Arc<WorkloadIdentity>,
    addr: std::net::SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let connector = TlsConnector::from(tls::client_config(identity).unwrap());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3: the server checks the client's certificate after the client's handshake
    // ends, so a refusal shows on the first exchange.
    tls.write_all(b"x").await.map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
    Ok(tls)
}

/// Each end sees the other's id, and the two agree on AES-128-GCM (the suites are chosen
/// in `WorkloadIdentity`).
#[tokio::test]
async fn each_end_sees_the_others_spiffe_id() {
    let authority = Arc::new(Authority::create("public").unwrap());
    let (orders, checkout) = (
        identity(&authority, "orders", CertSettings::default()),
        identity(&authority, "checkout", CertSettings::default()),
    );
    let (addr, mut seen) = server(&orders).await;
    let tls = connect(&checkout, addr).await.unwrap();
    let server_id = tls::peer_id(tls.get_ref().1.peer_certificates()).unwrap();
    assert_eq!(server_id.to_string(), "spiffe://public/ns/default/orders");
    let client_id = seen.recv().await.unwrap().unwrap();
    assert_eq!(client_id, SpiffeId::new("public", "default", "checkout"));
    let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
    assert_eq!(
        suite,
        trellis_mtls::rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
    );
}

#[tokio::test]
async fn a_certificate_from_another_authority_is_refused_both_ways() {
    let ours = Arc::new(Authority::create("public").unwrap());
    let theirs = Arc::new(Authority::create("public").unwrap());
    let server_id = identity(&ours, "orders", CertSettings::default());
    let (addr, mut seen) = server(&server_id).await;
    let stranger = identity(&theirs, "checkout", CertSettings::default());
    let err = connect(&stranger, addr).await.unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("certificate"),
        "{err}"
    );
    let refused = seen.recv().await.unwrap().unwrap_err();
    assert!(!refused.is_empty());
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let authority = Arc::new(Authority::create("public").unwrap());
    let (addr, mut seen) = server(&identity(&authority, "orders", CertSettings::default())).await;
    let short = CertSettings {
        ttl: Duration::from_secs(1),
        skew: Duration::ZERO,
    };
    let expiring = identity(&authority, "checkout", short);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(connect(&expiring, addr).await.is_err());
    let refused = seen.recv().await.unwrap().unwrap_err();
    assert!(refused.to_lowercase().contains("expired"), "{refused}");
}

#[tokio::test]
async fn a_plaintext_client_gets_nothing() {
    let authority = Arc::new(Authority::create("public").unwrap());
    let (addr, mut seen) = server(&identity(&authority, "orders", CertSettings::default())).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP"), "{buf:?}");
    assert!(seen.recv().await.unwrap().is_err());
}

#[tokio::test]
async fn a_certificate_without_a_spiffe_id_has_no_identity() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Arc::new(Authority::load_or_create(dir.path(), "public").unwrap());
    // Signed by the real issuer, but with a DNS name instead of a SPIFFE id.
    let key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.path().join("issuer.key")).unwrap())
            .unwrap();
    let issuer_pem = std::fs::read_to_string(dir.path().join("issuer.crt")).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&issuer_pem, key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["orders.example".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let err = SpiffeId::from_cert(leaf.der()).unwrap_err();
    assert!(err.to_string().contains("no SPIFFE id"), "{err}");
    let _ = authority;
}

#[tokio::test]
async fn renewal_serves_new_handshakes_and_keeps_open_connections() {
    let authority = Arc::new(Authority::create("public").unwrap());
    let orders = identity(&authority, "orders", CertSettings::default());
    let (addr, _seen) = server(&orders).await;
    let client = identity(&authority, "checkout", CertSettings::default());
    let mut open = connect(&client, addr).await.unwrap();
    let first = open.get_ref().1.peer_certificates().unwrap()[0].clone();
    orders.renew().unwrap();
    let fresh = connect(&client, addr).await.unwrap();
    let second = fresh.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_ne!(
        first, second,
        "a new handshake gets the renewed certificate"
    );
    open.write_all(b"y").await.unwrap();
    let mut b = [0u8; 1];
    open.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"y", "the connection made before renewal still works");
}

#[test]
fn the_local_authority_is_kept_private_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Authority::load_or_create(dir.path(), "public").unwrap();
    for file in ["ca.crt", "issuer.crt", "issuer.key"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let again = Authority::load_or_create(dir.path(), "public").unwrap();
    assert_eq!(first.trust_anchors(), again.trust_anchors());
    let pem = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    let given =
        Authority::from_pem(&pem("ca.crt"), &pem("issuer.crt"), &pem("issuer.key")).unwrap();
    assert_eq!(given.trust_anchors(), first.trust_anchors());
    assert!(Authority::from_pem("", &pem("issuer.crt"), &pem("issuer.key")).is_err());
}
