//! The public API router, driven without a socket (`tower::ServiceExt::oneshot`).

use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;
use trellis_runtime::api::router;

use crate::{sidecar, url};
use trellis_test_support::request;

pub async fn call<S>(
    router: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, serde_json::Value)
where
    S: tower::Service<
            Request<Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        >,
{
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (status, _, bytes) = answer(router, req.body(Body::from(body.to_string())).unwrap()).await;
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

fn pipeline_resources(
    limit: &str,
) -> (
    trellis_resources::Resources,
    trellis_resources::Configuration,
) {
    let components = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: rl\nspec:\n  \
         type: middleware.http.ratelimit\n  version: v1\n  metadata:\n  - name: maxRequestsPerSecond\n    \
         value: \"{limit}\"\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  \
         name: rc\nspec:\n  type: middleware.http.routerchecker\n  version: v1\n  metadata:\n  \
         - name: rule\n    value: \"^[A-Za-z0-9/._-]+$\"\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\n\
         metadata:\n  name: rs\nspec:\n  type: middleware.http.requestsize\n  version: v1\n  \
         metadata:\n  - name: maxBytes\n    value: 32\n  - name: pathRegex\n    value: \"^/v1.0/state/\"\n"
    );
    let config = "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  \
                  httpPipeline:\n    handlers:\n    - {name: rl, type: middleware.http.ratelimit}\n    \
                  - {name: rc, type: middleware.http.routerchecker}\n    \
                  - {name: rs, type: middleware.http.requestsize}\n";
    let path = std::path::Path::new("p.yaml");
    (
        trellis_resources::parse_str(path, &components).unwrap(),
        trellis_resources::parse_str(path, config)
            .unwrap()
            .configurations
            .remove(0),
    )
}

/// `spec.httpPipeline` runs its middleware in order before any route; `--allowed-origins`
/// answers browsers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_pipeline_limits_rates_checks_routes_and_cors_answers_browsers() {
    let dir = tempfile::tempdir().unwrap();
    let (resources, config) = pipeline_resources("5");
    let s = sidecar("piped", dir.path(), None, |c| {
        c.resources = resources;
        c.configuration = Some(config);
        c.allowed_origins = vec!["http://app.example".into()];
    })
    .await;
    let r = request("GET", &url(&s, "/v1.0/state/statestore/a%20b"), &[], "").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["errorCode"], "ERR_INVALID_ROUTE");
    // The state routes take at most 32 bytes; other routes only --max-body-size.
    let big = r#"[{"key":"k","value":"0123456789abcdef"}]"#;
    let r = request("POST", &url(&s, "/v1.0/state/statestore"), &[], big).await;
    assert_eq!(r.status, 413, "{}", r.text());
    let r = request("POST", &url(&s, "/v1.0/publish/pubsub/t"), &[], big).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let chunked =
        trellis_test_support::send_chunked("POST", &url(&s, "/v1.0/state/statestore"), &[], 8, 4)
            .await
            .unwrap();
    assert_eq!(chunked.status, 411, "{}", chunked.text());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(
            request("GET", &url(&s, "/v1.0/metadata"), &[], "")
                .await
                .status
                .as_u16(),
        );
    }
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(limited >= 5, "a burst of 12 against 5/s: {statuses:?}");
    assert_eq!(statuses[0], 200, "{statuses:?}");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let preflight = [
        ("origin", "http://app.example"),
        ("access-control-request-method", "POST"),
    ];
    let r = request(
        "OPTIONS",
        &url(&s, "/v1.0/state/statestore"),
        &preflight,
        "",
    )
    .await;
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    let r = request(
        "GET",
        &url(&s, "/v1.0/metadata"),
        &[("origin", "http://evil.example")],
        "",
    )
    .await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    s.stop().await;

    // A pipeline naming a component the app lacks, or a bad setting, stops the start.
    for (limit, needle) in [("0", "maxRequestsPerSecond")] {
        let (resources, config) = pipeline_resources(limit);
        let mut cfg = trellis_runtime::SidecarConfig::new("bad-pipe", dir.path());
        cfg.resources = resources;
        cfg.configuration = Some(config);
        let err = crate::start_error(cfg).await;
        assert!(err.contains(needle), "{err}");
    }
    let (_, config) = pipeline_resources("5");
    let mut cfg = trellis_runtime::SidecarConfig::new("no-components", dir.path());
    cfg.configuration = Some(config);
    let err = crate::start_error(cfg).await;
    assert!(
        err.contains("no middleware component named \"rl\""),
        "{err}"
    );
}

/// Status, headers that matter, and body of `req` sent to `svc`.
async fn answer<S>(svc: S, req: Request<Body>) -> (StatusCode, Option<String>, bytes::Bytes)
where
    S: tower::Service<
            Request<Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        >,
{
    let resp = svc.oneshot(req).await.unwrap();
    let custom = resp
        .headers()
        .get("x-custom")
        .map(|v| v.to_str().unwrap().to_string());
    let status = resp.status();
    (
        status,
        custom,
        resp.into_body().collect().await.unwrap().to_bytes(),
    )
}

/// The served API sends path-form invocations past the router (`api/fast.rs`); whatever the
/// call, the caller must not be able to tell, and the metrics must label it the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invocation_fast_path_answers_as_the_router_does() {
    let dir = tempfile::tempdir().unwrap();
    let app = trellis_test_support::TestApp::start("fast").await;
    let b = sidecar("fast-b", dir.path(), Some(app.port()), |_| {}).await;
    let a = sidecar("fast-a", dir.path(), None, |c| {
        c.max_request_body = 4096;
        // The call to an app nobody runs would wait out the built-in retries, twice.
        c.builtin_retries.retries = 0;
    })
    .await;
    let served = trellis_runtime::api::PublicApi::new(a.runtime().clone());
    assert!(served.has_fast_path(), "no layer but metrics is configured");
    let routed = router(a.runtime().clone());
    let cases: [(&str, &str, Vec<u8>); 7] = [
        (
            "POST",
            "/v1.0/invoke/fast-b/method/orders/7?x=%2F",
            b"payload".to_vec(),
        ),
        ("GET", "/v1.0/invoke/fast-b/method/status/418", vec![]),
        ("DELETE", "/v1.0/invoke/fast-b/method", vec![]),
        ("POST", "/v1.0/invoke/nobody-here/method/x", vec![]),
        ("POST", "/v1.0/invoke/bad..id/method/x", vec![]),
        ("POST", "/v1.0/invoke/fast-b/nomethod", vec![]),
        (
            "POST",
            "/v1.0/invoke/fast-b/method/upload",
            vec![b'x'; 5000],
        ),
    ];
    for (method, path, body) in &cases {
        let req = || {
            Request::builder()
                .method(*method)
                .uri(*path)
                .header("content-length", body.len())
                .body(Body::from(body.clone()))
                .unwrap()
        };
        let fast = answer(served.clone(), req()).await;
        let slow = answer(routed.clone(), req()).await;
        assert_eq!(fast, slow, "{method} {path}");
    }
    assert_eq!(app.hits_on("/orders/7"), 2, "both ways reached the app");
    // Every call above was counted under the invocation route, none as an unknown route.
    let text = a.runtime().metrics.encode();
    let counted: u64 = text
        .lines()
        .filter(|l| l.starts_with("dapr_http_server_request_count{"))
        .filter(|l| l.contains("path=\"/v1.0/invoke/{id}/method/{method}\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(counted, 2 * cases.len() as u64, "{text}");
    a.stop().await;
    b.stop().await;
}

/// Tracing keeps the fast path: its span goes around the handler there as in the router, so
/// either way the app gets the caller's trace, under a span of the sidecar's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invocation_fast_path_carries_the_trace_as_the_router_does() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: t\nspec:\n  \
                tracing:\n    samplingRate: \"0\"\n";
    let config = || {
        trellis_resources::parse_str(std::path::Path::new("t.yaml"), yaml)
            .unwrap()
            .configurations
            .remove(0)
    };
    let app = trellis_test_support::TestApp::start("traced").await;
    // Only A traces, so the app sees A's server span as its parent: the span of whichever
    // way A took.
    let b = sidecar("traced-b", dir.path(), Some(app.port()), |_| {}).await;
    let a = sidecar("traced-a", dir.path(), None, |c| {
        c.configuration = Some(config())
    })
    .await;
    let served = trellis_runtime::api::PublicApi::new(a.runtime().clone());
    assert!(served.has_fast_path(), "tracing is no reason to route");
    let routed = router(a.runtime().clone());
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let req = || {
        Request::post("/v1.0/invoke/traced-b/method/echo")
            .header("traceparent", caller)
            .body(Body::empty())
            .unwrap()
    };
    for (way, (status, _, body)) in [
        ("fast path", answer(served.clone(), req()).await),
        ("router", answer(routed.clone(), req()).await),
    ] {
        assert_eq!(status, StatusCode::OK, "{way}");
        let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let seen = echo["headers"]["traceparent"].as_str().unwrap_or_default();
        let parts: Vec<&str> = seen.split('-').collect();
        assert_eq!(parts.len(), 4, "{way}: {seen:?}");
        assert_eq!(
            parts[1], "4bf92f3577b34da6a3ce929d0e0e4736",
            "{way}: same trace"
        );
        assert_ne!(
            parts[2], "00f067aa0ba902b7",
            "{way}: A's span is the parent"
        );
        assert_eq!(parts[3], "00", "{way}: not sampled, as the caller said");
    }
    a.stop().await;
    b.stop().await;
}

/// Any layer beyond tracing, metrics and catch-panic turns the fast path off: the API token
/// here.
#[tokio::test]
async fn a_configured_layer_turns_the_invocation_fast_path_off() {
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar("fast-guarded", dir.path(), None, |c| {
        c.api_token = Some("s3cret".into());
    })
    .await;
    let served = trellis_runtime::api::PublicApi::new(s.runtime().clone());
    assert!(!served.has_fast_path());
    let req = Request::post("/v1.0/invoke/anyone/method/x")
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = answer(served, req).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["errorCode"], "ERR_API_UNAUTHORIZED");
    s.stop().await;
}
