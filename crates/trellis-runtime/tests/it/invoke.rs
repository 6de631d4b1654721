//! Invocation between in-process sidecars over real loopback sockets.

use trellis_test_support::{TestApp, request};

use crate::{sidecar, url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reach_the_other_app_and_come_back_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start("b1").await;
    let b = sidecar("b", dir.path(), Some(app.port()), |_| {}).await;
    let a = sidecar("a", dir.path(), None, |_| {}).await;

    let r = request(
        "PATCH",
        &url(&a, "/v1.0/invoke/b/method/orders/7?expand=items&x=%2F"),
        &[("x-trace", "abc"), ("dapr-api-token", "leak?")],
        "payload",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["method"], "PATCH");
    assert_eq!(echo["path"], "/orders/7");
    assert_eq!(echo["query"], "expand=items&x=%2F");
    assert_eq!(echo["body"], "payload");
    assert_eq!(echo["headers"]["x-trace"], "abc");
    assert_eq!(echo["headers"]["dapr-caller-app-id"], "a");
    assert_eq!(echo["headers"]["dapr-callee-app-id"], "b");
    assert!(echo["headers"].get("dapr-api-token").is_none());

    let r = request("GET", &url(&a, "/v1.0/invoke/b/method/status/418"), &[], "").await;
    assert_eq!(r.status, 418);
    assert_eq!(r.header("x-custom"), Some("yes"));
    assert_eq!(r.text(), "status 418");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_the_load_and_a_stopped_one_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (app1, app2) = (TestApp::start("one").await, TestApp::start("two").await);
    let b1 = sidecar("lb", dir.path(), Some(app1.port()), |_| {}).await;
    let b2 = sidecar("lb", dir.path(), Some(app2.port()), |_| {}).await;
    let a = sidecar("caller", dir.path(), None, |_| {}).await;
    for _ in 0..20 {
        let r = request("GET", &url(&a, "/v1.0/invoke/lb/method/x"), &[], "").await;
        assert_eq!(r.status, 200);
    }
    assert!(
        app1.hits() >= 5 && app2.hits() >= 5,
        "uneven: {} / {}",
        app1.hits(),
        app2.hits()
    );

    // Graceful stop withdraws the instance; calls keep succeeding on the other one.
    b1.stop().await;
    for _ in 0..10 {
        let r = request("GET", &url(&a, "/v1.0/invoke/lb/method/x"), &[], "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-instance"), Some("two"));
    }
    a.stop().await;
    b2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit_applies_to_invocation() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start("big").await;
    let b = sidecar("limited-b", dir.path(), Some(app.port()), |_| {}).await;
    let a = sidecar("limited-a", dir.path(), None, |c| c.max_request_body = 1024).await;
    let r = request(
        "POST",
        &url(&a, "/v1.0/invoke/limited-b/method/upload"),
        &[],
        vec![b'x'; 2048],
    )
    .await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["errorCode"], "ERR_BODY_READ");
    let r = request(
        "POST",
        &url(&a, "/v1.0/invoke/limited-b/method/upload"),
        &[],
        vec![b'x'; 1000],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["received"], 1000);
    a.stop().await;
    b.stop().await;
}

fn configuration(yaml: &str) -> trellis_resources::Configuration {
    trellis_resources::parse_str(std::path::Path::new("config.yaml"), yaml)
        .unwrap()
        .configurations
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_and_dns_resolvers_find_peers_without_the_registry() {
    let registry_b = tempfile::tempdir().unwrap();
    let registry_a = tempfile::tempdir().unwrap();
    let app = TestApp::start("far").await;
    // B registers in a registry A never reads: only the configured resolver can find it.
    let b = sidecar("far", registry_b.path(), Some(app.port()), |_| {}).await;
    let port = b.internal_addr.port();

    let static_config = configuration(&format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {{name: c}}\nspec:\n  nameResolution:\n    component: static\n    configuration:\n      apps:\n        far: [\"127.0.0.1:{port}\"]\n"
    ));
    let a = sidecar("near", registry_a.path(), None, |c| {
        c.configuration = Some(static_config)
    })
    .await;
    let r = request("GET", &url(&a, "/v1.0/invoke/far/method/hello"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-instance"), Some("far"));
    let r = request(
        "GET",
        &url(&a, "/v1.0/invoke/elsewhere/method/hello"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 500);
    a.stop().await;

    let dns_config = configuration(&format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata: {{name: c}}\nspec:\n  nameResolution:\n    component: dns\n    configuration:\n      template: \"localhost:{port}\"\n"
    ));
    let a = sidecar("near", registry_a.path(), None, |c| {
        c.configuration = Some(dns_config)
    })
    .await;
    let r = request("GET", &url(&a, "/v1.0/invoke/far/method/hello"), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    a.stop().await;
    b.stop().await;
}
