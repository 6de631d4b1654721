//! Invocation targets that are not app ids (issue 16): each is refused with 400
//! `ERR_DIRECT_INVOKE` before any resolver runs, through the URL path and the `dapr-app-id`
//! header, and nothing outside the registry directory is read.

use std::net::SocketAddr;

use axum::body::Body;
use http::{HeaderValue, Request, StatusCode};
use tower::ServiceExt as _;
use trellis_nameres::local::{Entry, process_start};
use trellis_runtime::api::router;
use trellis_runtime::{Sidecar, SidecarConfig, StartError};
use trellis_test_support::TestApp;

use crate::api::call;
use crate::sidecar;

/// A live registry entry in `dir` that sends calls straight to `app` (the test app speaks
/// HTTP/2 too, so it can stand in for a sidecar's internal port).
fn plant_entry(dir: &std::path::Path, app: &TestApp) {
    std::fs::create_dir_all(dir).unwrap();
    let pid = std::process::id();
    let entry = Entry {
        app_id: "decoy".into(),
        namespace: "default".into(),
        pid,
        process_start: process_start(pid),
        internal_address: SocketAddr::from(([127, 0, 0, 1], app.port())),
        http_address: None,
        grpc_address: None,
        app_port: None,
    };
    std::fs::write(dir.join("1-1.json"), serde_json::to_vec(&entry).unwrap()).unwrap();
}

fn assert_refused(status: StatusCode, body: &serde_json::Value, what: &str) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
    assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE", "{what}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("invalid app id") && message.contains("1 to 63 letters"),
        "{what}: the message names the rule: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_that_are_not_ids_are_refused_and_never_reach_the_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let decoy = TestApp::start("decoy").await;
    // The decoy beside the registry directory (`data/registry`), where `../../decoy/.` or
    // its absolute path used to lead; and a control entry inside the registry, which
    // proves the decoy app is reachable through an entry at all.
    let outside = data.join("decoy");
    plant_entry(&outside, &decoy);
    plant_entry(&data.join("registry/default/control"), &decoy);
    let s = sidecar("caller", &data, None, |_| {}).await;
    let r = router(s.runtime().clone());

    let (status, body) = call(r.clone(), "GET", "/v1.0/invoke/control/method/x", &[], "").await;
    assert_eq!(status, StatusCode::OK, "control: {body}");
    assert_eq!(decoy.hits(), 1);

    let enc = |s: &str| s.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
    let abs = outside.display().to_string();
    let long = "a".repeat(64);
    let in_path = [
        "..%2f..%2fdecoy%2f.".to_string(),
        "..%2F..%2F".to_string(),
        "../..".to_string(),
        "..".to_string(),
        "a%2fb".to_string(),
        "..%5c..%5cdecoy".to_string(),
        "a%00b".to_string(),
        enc(&abs),
        "http%3A%2F%2F127.0.0.1%3A5432".to_string(),
        ".x".to_string(),
        "%2Ex".to_string(),
        "x.".to_string(),
        "a.b.c".to_string(),
        long.clone(),
        "%ff".to_string(),
    ];
    for target in &in_path {
        let path = format!("/v1.0/invoke/{target}/method/x");
        let (status, body) = call(r.clone(), "POST", &path, &[], "payload").await;
        assert_refused(status, &body, &path);
    }
    let in_header = [
        "../../decoy/.",
        "../../",
        "..",
        "a/b",
        "..\\..\\decoy",
        "..%2f..%2fdecoy",
        abs.as_str(),
        "http://127.0.0.1:5432",
        ".x",
        "x.",
        "a.b.c",
        long.as_str(),
    ];
    for target in in_header {
        let (status, body) = call(r.clone(), "GET", "/x", &[("dapr-app-id", target)], "").await;
        assert_refused(status, &body, &format!("dapr-app-id: {target}"));
    }
    // A header value that is not UTF-8 is refused too, not taken for a missing header.
    // (NUL and line breaks cannot be in a header value at all.)
    let req = Request::builder()
        .uri("/v1.0/metadata")
        .header("dapr-app-id", HeaderValue::from_bytes(b"caf\xe9").unwrap())
        .body(Body::empty())
        .unwrap();
    let resp = r.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    assert_refused(
        status,
        &serde_json::from_slice(&bytes).unwrap(),
        "non-UTF-8 header",
    );

    // No id at all stays Dapr's 404, in both forms.
    for (path, headers) in [
        ("/v1.0/invoke//method/x", vec![]),
        ("/x", vec![("dapr-app-id", "")]),
    ] {
        let (status, body) = call(r.clone(), "GET", path, &headers, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path} {headers:?}");
        assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE");
    }

    assert_eq!(decoy.hits(), 1, "the decoy outside the registry got a call");
    // A valid id of an app that does not exist still goes to the resolver and fails there.
    let (status, body) = call(r, "GET", "/v1.0/invoke/nobody.prod/method/x", &[], "").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    s.stop().await;
}

#[tokio::test]
async fn a_sidecar_with_an_invalid_id_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    for (id, ns) in [("../x", "default"), ("ok", "/etc"), ("", "default")] {
        let mut config = SidecarConfig::new(id, dir.path());
        config.namespace = ns.into();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = Sidecar::start(config, http, internal).await.unwrap_err();
        assert!(
            matches!(err, StartError::InvalidAppId(_)),
            "{id} {ns}: {err}"
        );
    }
    assert!(!dir.path().join("registry").exists(), "nothing registered");
}
