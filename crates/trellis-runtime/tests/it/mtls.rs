//! mTLS on the sidecar-to-sidecar port, in-process sidecars over loopback: calls between
//! sidecars of one authority work and the callee's app sees the caller its certificate
//! proves; a plaintext sidecar, a sidecar of another authority, a peer that is another app
//! than the one called, and a forged caller header all get nothing through to the app.

use std::sync::Arc;

use http_body_util::BodyExt as _;
use trellis_mtls::{Authority, CertSettings, SpiffeId, WorkloadIdentity};
use trellis_runtime::{MtlsConfig, SidecarConfig};
use trellis_test_support::{TestApp, request};

use crate::{sidecar, url};

fn mtls(authority: &Arc<Authority>) -> impl FnOnce(&mut SidecarConfig) + use<> {
    let authority = authority.clone();
    move |c: &mut SidecarConfig| {
        c.mtls = Some(MtlsConfig {
            authority,
            trust_domain: "public".into(),
            certs: CertSettings::default(),
        });
        // One try is enough to see a refusal; the built-in retries would only repeat it.
        c.builtin_retries.retries = 0;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_of_one_authority_call_each_other_and_others_get_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Arc::new(Authority::create("public").unwrap());
    let app = TestApp::start("secure").await;
    let b = sidecar("secure-b", dir.path(), Some(app.port()), mtls(&authority)).await;
    let a = sidecar("secure-a", dir.path(), None, mtls(&authority)).await;
    let r = request(
        "POST",
        &url(&a, "/v1.0/invoke/secure-b/method/x"),
        &[("dapr-caller-app-id", "forged")],
        "hi",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["dapr-caller-app-id"], "secure-a");
    assert_eq!(app.hits(), 1);

    // A sidecar without mTLS: its plaintext connection is refused.
    let plain = sidecar("plain", dir.path(), None, |c| c.builtin_retries.retries = 0).await;
    let r = request(
        "GET",
        &url(&plain, "/v1.0/invoke/secure-b/method/x"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
    // A sidecar of another authority: its certificate chains to nothing b trusts.
    let other = Arc::new(Authority::create("public").unwrap());
    let stranger = sidecar("stranger", dir.path(), None, mtls(&other)).await;
    let r = request(
        "GET",
        &url(&stranger, "/v1.0/invoke/secure-b/method/x"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("tls handshake"), "{}", r.text());
    assert_eq!(app.hits(), 1, "nothing else reached the app");
    for s in [a, b, plain, stranger] {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_another_app_gets_no_call() {
    let registry = tempfile::tempdir().unwrap();
    let authority = Arc::new(Authority::create("public").unwrap());
    let app = TestApp::start("real").await;
    let b = sidecar(
        "real-b",
        registry.path(),
        Some(app.port()),
        mtls(&authority),
    )
    .await;
    // The static resolver says "impersonated" lives at b's address; b's certificate says
    // it is real-b.
    let port = b.internal_addr.port();
    let config = trellis_resources::parse_str(
        std::path::Path::new("c.yaml"),
        &format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {{name: c}}\nspec:\n  nameResolution:\n    component: static\n    configuration:\n      apps:\n        impersonated: [\"127.0.0.1:{port}\"]\n"
        ),
    )
    .unwrap()
    .configurations
    .remove(0);
    let other = tempfile::tempdir().unwrap();
    let with_mtls = mtls(&authority);
    let a = sidecar("caller", other.path(), None, move |c| {
        with_mtls(c);
        c.configuration = Some(config);
    })
    .await;
    let r = request(
        "GET",
        &url(&a, "/v1.0/invoke/impersonated/method/x"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("proved to be app real-b"), "{}", r.text());
    assert_eq!(app.hits(), 0);
    a.stop().await;
    b.stop().await;
}

/// A client with a valid certificate for `mallory` that sends `dapr-caller-app-id: admin`:
/// the app sees `mallory`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_is_who_its_certificate_says() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Arc::new(Authority::create("public").unwrap());
    let app = TestApp::start("victim").await;
    let b = sidecar("victim", dir.path(), Some(app.port()), mtls(&authority)).await;
    let mallory = WorkloadIdentity::new(
        SpiffeId::new("public", "default", "mallory"),
        authority.clone(),
        CertSettings::default(),
    )
    .unwrap();
    let connector =
        trellis_mtls::TlsConnector::from(trellis_mtls::tls::client_config(&mallory).unwrap());
    let tcp = tokio::net::TcpStream::connect(b.internal_addr)
        .await
        .unwrap();
    let name = trellis_mtls::rustls::pki_types::ServerName::IpAddress(b.internal_addr.ip().into());
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/whoami", b.internal_addr))
        .header("dapr-callee-app-id", "victim")
        .header("dapr-caller-app-id", "admin")
        .header("dapr-caller-namespace", "kube-system")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["headers"]["dapr-caller-app-id"], "mallory");
    assert_eq!(echo["headers"]["dapr-caller-namespace"], "default");
    b.stop().await;
}

fn acl_configuration() -> trellis_resources::Configuration {
    let yaml = "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: acl\nspec:\n  \
                accessControl:\n    defaultAction: deny\n    trustDomain: public\n    policies:\n    \
                - appId: web\n      defaultAction: deny\n      namespace: default\n      operations:\n      \
                - {name: /orders/*, httpVerb: [GET], action: allow}\n";
    trellis_resources::parse_str(std::path::Path::new("acl.yaml"), yaml)
        .unwrap()
        .configurations
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_control_decides_per_verified_caller_operation_and_verb() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Arc::new(Authority::create("public").unwrap());
    let app = TestApp::start("guarded").await;
    let with_mtls = mtls(&authority);
    let b = sidecar("guarded", dir.path(), Some(app.port()), move |c| {
        with_mtls(c);
        c.configuration = Some(acl_configuration());
    })
    .await;
    let web = sidecar("web", dir.path(), None, mtls(&authority)).await;
    let nobody = sidecar("nobody", dir.path(), None, mtls(&authority)).await;

    let r = request(
        "GET",
        &url(&web, "/v1.0/invoke/guarded/method/orders/7"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for (caller, method, path) in [
        (&web, "POST", "/v1.0/invoke/guarded/method/orders/7"),
        (&web, "GET", "/v1.0/invoke/guarded/method/admin"),
        (&nobody, "GET", "/v1.0/invoke/guarded/method/orders/7"),
    ] {
        let r = request(method, &url(caller, path), &[], "").await;
        assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
        assert_eq!(r.json()["errorCode"], "ERR_DIRECT_INVOKE");
        assert!(
            r.text().contains("access control policy has denied access"),
            "{}",
            r.text()
        );
    }
    assert_eq!(app.hits(), 1, "only the allowed call reached the app");
    for s in [b, web, nobody] {
        s.stop().await;
    }

    // Without mTLS there is no identity to decide on: the sidecar refuses to start.
    let mut config = SidecarConfig::new("no-mtls-acl", dir.path());
    config.configuration = Some(acl_configuration());
    let err = crate::start_error(config).await;
    assert!(err.contains("needs mTLS"), "{err}");
}

#[test]
fn an_invalid_operation_glob_is_a_load_error_naming_the_field() {
    let yaml = "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: acl\nspec:\n  \
                accessControl:\n    policies:\n    - appId: web\n      operations:\n      \
                - {name: /orders/ab*, httpVerb: [FETCH], action: allow}\n";
    let err = trellis_resources::parse_str(std::path::Path::new("acl.yaml"), yaml)
        .unwrap_err()
        .to_string();
    assert!(err.contains("acl.yaml"), "{err}");
    assert!(
        err.contains("operations[0].name") && err.contains("whole segment"),
        "{err}"
    );
    assert!(err.contains("httpVerb") && err.contains("FETCH"), "{err}");
}

/// A peer whose TLS offers only HTTP/2 (a sidecar from before the internal port spoke
/// HTTP/1.1) still gets small calls: the refused `http/1.1` is remembered and they go over
/// HTTP/2, while a peer that offers both gets them over pooled HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_calls_fall_back_to_http2_for_a_peer_that_offers_only_it() {
    use http::Version;

    let authority = Arc::new(Authority::create("public").unwrap());
    let acceptor = |app: &str, alpn: &[&[u8]]| {
        let identity = WorkloadIdentity::new(
            SpiffeId::new("public", "default", app),
            authority.clone(),
            CertSettings::default(),
        )
        .unwrap();
        let mut config = (*trellis_mtls::tls::server_config(&identity).unwrap()).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        trellis_mtls::TlsAcceptor::from(Arc::new(config))
    };
    let none = std::time::Duration::ZERO;
    let (old_port, old_seen, old_task) =
        crate::invoke::fake_peer(Some(acceptor("old", &[b"h2"])), none).await;
    let (new_port, new_seen, new_task) =
        crate::invoke::fake_peer(Some(acceptor("new", &[b"h2", b"http/1.1"])), none).await;
    let config = crate::invoke::static_peers(&[("old", old_port), ("new", new_port)]);
    let dir = tempfile::tempdir().unwrap();
    let with_mtls = mtls(&authority);
    let a = sidecar("caller", dir.path(), None, move |c| {
        with_mtls(c);
        c.configuration = Some(config);
    })
    .await;
    for app in ["old", "new"] {
        for _ in 0..3 {
            let r = request(
                "POST",
                &url(&a, &format!("/v1.0/invoke/{app}/method/x")),
                &[],
                "small",
            )
            .await;
            assert_eq!(r.status, 200, "{app}: {}", r.text());
        }
    }
    assert_eq!(old_seen.versions(), vec![Version::HTTP_2; 3]);
    assert_eq!(
        old_seen.connections(),
        2,
        "one refused http/1.1 handshake, then one HTTP/2 connection"
    );
    assert_eq!(new_seen.versions(), vec![Version::HTTP_11; 3]);
    assert_eq!(new_seen.connections(), 1);
    a.stop().await;
    old_task.abort();
    new_task.abort();
}
