//! The public API router, driven without a socket (`tower::ServiceExt::oneshot`).

use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;
use trellis_runtime::api::router;

use crate::{sidecar, url};
use trellis_test_support::request;

pub async fn call(
    router: axum::Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = router
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test]
async fn healthz_waits_for_the_app() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on yet.
    let port = trellis_test_support::free_port();
    let s = sidecar("health", dir.path(), Some(port), |_| {}).await;
    let r = router(s.runtime().clone());
    let (status, body) = call(r.clone(), "GET", "/v1.0/healthz", &[], "").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["errorCode"], "ERR_HEALTH_NOT_READY");
    let (status, _) = call(r.clone(), "GET", "/v1.0/healthz/outbound", &[], "").await;
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "outbound is ready before the app"
    );

    let _app = trellis_test_support::TestApp::start_on(port, "late").await;
    tokio::time::timeout(Duration::from_secs(10), s.runtime().health.wait_ready())
        .await
        .expect("app never became ready");
    let (status, _) = call(r.clone(), "GET", "/v1.0/healthz", &[], "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = call(r, "GET", "/v1.0/healthz?appid=other", &[], "").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["errorCode"], "ERR_HEALTH_APPID_NOT_MATCH");
    s.stop().await;
}

#[tokio::test]
async fn metadata_reports_the_sidecar_and_stores_attributes() {
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar("meta", dir.path(), Some(4321), |c| {
        c.extended_metadata.insert("cliPID".into(), "42".into());
    })
    .await;
    let r = router(s.runtime().clone());
    let (status, _) = call(r.clone(), "PUT", "/v1.0/metadata/team", &[], "payments").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, md) = call(r, "GET", "/v1.0/metadata", &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(md["id"], "meta");
    assert!(md["runtimeVersion"].as_str().unwrap().starts_with("1."));
    assert_eq!(md["extended"]["team"], "payments");
    assert_eq!(md["extended"]["cliPID"], "42");
    assert_eq!(md["appConnectionProperties"]["port"], 4321);
    assert_eq!(md["appConnectionProperties"]["protocol"], "http");
    assert_eq!(md["appConnectionProperties"]["channelAddress"], "127.0.0.1");
    assert!(md["actorRuntime"].is_object());
    let store = &md["components"][0];
    assert_eq!(
        store["name"], "statestore",
        "the embedded default store: {md}"
    );
    assert_eq!(store["type"], "state.sqlite");
    let caps: Vec<&str> = store["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for cap in ["ETAG", "TRANSACTIONAL", "QUERY_API"] {
        assert!(caps.contains(&cap), "{cap} in {caps:?}");
    }
    s.stop().await;
}

#[tokio::test]
async fn api_token_guards_everything_but_health() {
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar("guarded", dir.path(), None, |c| {
        c.api_token = Some("s3cret".into());
    })
    .await;
    let r = router(s.runtime().clone());
    for (headers, expected) in [
        (vec![], StatusCode::UNAUTHORIZED),
        (vec![("dapr-api-token", "wrong")], StatusCode::UNAUTHORIZED),
        (vec![("dapr-api-token", "s3cret")], StatusCode::OK),
    ] {
        let (status, body) = call(r.clone(), "GET", "/v1.0/metadata", &headers, "").await;
        assert_eq!(status, expected, "headers {headers:?}");
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(body["errorCode"], "ERR_API_UNAUTHORIZED");
        }
    }
    // The header form of invocation is guarded too.
    let (status, _) = call(r.clone(), "GET", "/x", &[("dapr-app-id", "guarded")], "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(r.clone(), "GET", "/v1.0/healthz", &[], "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(r, "GET", "/v1.0/healthz/outbound", &[], "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    s.stop().await;
}

#[tokio::test]
async fn shutdown_is_signalled_to_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar("stopper", dir.path(), None, |_| {}).await;
    let r = router(s.runtime().clone());
    let (status, _) = call(r, "POST", "/v1.0/shutdown", &[], "").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    tokio::time::timeout(Duration::from_secs(2), s.shutdown_requested())
        .await
        .expect("shutdown request not observed");
    s.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_missing_ids_answer_like_dapr() {
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar("routes", dir.path(), None, |_| {}).await;
    let r = router(s.runtime().clone());
    for path in ["/v1.0/nothing", "/v1.0/invoke//method/x", "/v1.0/invoke/x"] {
        let (status, body) = call(r.clone(), "GET", path, &[], "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["errorCode"], "ERR_DIRECT_INVOKE", "{path}");
    }
    // Invoking this sidecar's own app id without an app channel.
    let (status, body) = call(r, "GET", "/v1.0/invoke/routes/method/x", &[], "").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body["message"].as_str().unwrap().contains("--app-port"),
        "{body}"
    );
    s.stop().await;
}

/// `spec.api`: with an allowlist, only the listed APIs answer, per protocol; health checks
/// always do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_allowlist_refuses_what_it_does_not_list() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  \
                api:\n    allowed:\n    - {name: state, version: v1.0, protocol: http}\n    \
                - {name: state, version: v1, protocol: grpc}\n";
    let config = trellis_resources::parse_str(std::path::Path::new("c.yaml"), yaml)
        .unwrap()
        .configurations
        .remove(0);
    let s = crate::grpc_sidecar("allowlisted", dir.path(), None, |c| {
        c.configuration = Some(config)
    })
    .await;
    let r = request(
        "POST",
        &url(&s, "/v1.0/state/statestore"),
        &[],
        r#"[{"key":"k","value":1}]"#,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = request("POST", &url(&s, "/v1.0/publish/pubsub/t"), &[], "{}").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["errorCode"], "ERR_PERMISSION_DENIED");
    assert!(r.text().contains("publish API v1.0"), "{}", r.text());
    let r = request("GET", &url(&s, "/x"), &[("dapr-app-id", "other")], "").await;
    assert_eq!(
        r.status,
        403,
        "invocation by header is the invoke API: {}",
        r.text()
    );
    let r = request("GET", &url(&s, "/v1.0/healthz"), &[], "").await;
    assert_eq!(r.status, 204);

    let mut c = crate::grpc::client(&s).await;
    let got = c
        .get_state(trellis_proto::runtime::GetStateRequest {
            store_name: "statestore".into(),
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.data, b"1");
    let err = c
        .publish_event(trellis_proto::runtime::PublishEventRequest {
            pubsub_name: "pubsub".into(),
            topic: "t".into(),
            data: b"{}".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    s.stop().await;
}
