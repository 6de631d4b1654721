//! mTLS between `trellis` processes: on by default with a local authority made in the data
//! dir (private files), the internal port refusing plaintext, a bring-your-own authority
//! from files, and the refusal to run without mTLS on a non-loopback internal port.

use std::os::unix::fs::PermissionsExt as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use trellis_test_support::{TestApp, request};

use crate::{run_to_end, sidecar};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_by_default_with_a_private_local_authority_and_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start("guarded").await;
    let b = sidecar("guarded", dir.path()).app_port(app.port()).spawn();
    let a = sidecar("caller", dir.path()).spawn();
    b.wait_healthy().await;
    a.wait_healthy().await;
    assert!(b.output().contains("mtls=true"), "{}", b.output());
    for file in ["ca.crt", "issuer.crt", "issuer.key"] {
        let meta = std::fs::metadata(dir.path().join("mtls").join(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
    }
    let r = request(
        "POST",
        &a.url("/v1.0/invoke/guarded/method/x"),
        &[("dapr-caller-app-id", "forged")],
        "hi",
    )
    .await;
    assert_eq!(
        r.status.as_u16(),
        200,
        "{}\n{}\n{}",
        r.text(),
        a.output(),
        b.output()
    );
    assert_eq!(r.json()["headers"]["dapr-caller-app-id"], "caller");

    // A plaintext HTTP/2 client on the internal port gets no answer at all.
    let out = b.output();
    let internal = out
        .split_whitespace()
        .find_map(|w| w.strip_prefix("internal="))
        .unwrap_or_else(|| panic!("no internal address in:\n{out}"));
    let mut tcp = tokio::net::TcpStream::connect(internal).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(
        !buf.starts_with(b"\0\0"),
        "an HTTP/2 frame came back: {buf:?}"
    );
    assert_eq!(app.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_from_files_is_used_instead_of_the_local_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = tempfile::tempdir().unwrap();
    trellis_mtls::Authority::load_or_create(ca.path(), "public").unwrap();
    let files = |b: trellis_test_support::SidecarBuilder| {
        b.arg("--trust-anchors-file")
            .arg(ca.path().join("ca.crt").display().to_string())
            .arg("--issuer-cert-file")
            .arg(ca.path().join("issuer.crt").display().to_string())
            .arg("--issuer-key-file")
            .arg(ca.path().join("issuer.key").display().to_string())
    };
    let app = TestApp::start("byo").await;
    let b = files(sidecar("byo", dir.path()).app_port(app.port())).spawn();
    let a = files(sidecar("byo-caller", dir.path())).spawn();
    // Same data dir, but the local authority: its certificate chains to nothing b trusts.
    let local = sidecar("local-caller", dir.path()).spawn();
    for s in [&a, &b, &local] {
        s.wait_healthy().await;
    }
    let r = request("GET", &a.url("/v1.0/invoke/byo/method/x"), &[], "").await;
    assert_eq!(r.status.as_u16(), 200, "{}\n{}", r.text(), b.output());
    let r = request("GET", &local.url("/v1.0/invoke/byo/method/x"), &[], "").await;
    assert_eq!(r.status.as_u16(), 500, "{}", r.text());
    assert!(r.text().contains("tls handshake"), "{}", r.text());
    assert_eq!(app.hits(), 1, "the stranger's call never reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_cannot_be_off_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  \
         mtls:\n    enabled: false\n  nameResolution:\n    component: dns\n    configuration:\n      \
         template: \"{{.ID}}.example:50002\"\n",
    )
    .unwrap();
    let (code, p) = run_to_end(
        sidecar("exposed", dir.path())
            .arg("--config")
            .arg(config.display().to_string()),
    )
    .await;
    assert_ne!(code, Some(0), "{}", p.output());
    assert!(
        p.output().contains("remove `enabled: false`"),
        "{}",
        p.output()
    );

    // On loopback (the local registry) it may be off, and says so.
    let local = dir.path().join("local.yaml");
    std::fs::write(
        &local,
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  mtls:\n    enabled: false\n",
    )
    .unwrap();
    let s = sidecar("plain", dir.path())
        .arg("--config")
        .arg(local.display().to_string())
        .spawn();
    s.wait_healthy().await;
    assert!(s.output().contains("mtls=false"), "{}", s.output());
}
