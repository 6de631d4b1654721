//! `spec.appHttpPipeline`: middleware on the callee's sidecar, between it and its app, over
//! real sockets: a rate limit per calling app, a route check and bearer tokens on
//! invocations, and the same pipeline on pub/sub deliveries; refusals answer the caller in
//! Dapr's error format and nothing reaches the app.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use trellis_runtime::{DeliveryPolicy, RunningSidecar, SidecarConfig};
use trellis_test_support::{HttpResponse, SubscriberApp, TestApp, request, wait_until};

use crate::bearer::{good_claims, key, token};
use crate::{sidecar, url};

const WAIT: Duration = Duration::from_secs(15);

/// Middleware components (YAML documents) and a Configuration whose `appHttpPipeline` lists
/// `handlers` (`name: type` pairs) in order.
fn app_pipeline(
    components: &str,
    handlers: &[(&str, &str)],
) -> (
    trellis_resources::Resources,
    trellis_resources::Configuration,
) {
    let mut config = "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\n\
                      spec:\n  appHttpPipeline:\n    handlers:\n"
        .to_string();
    for (name, type_name) in handlers {
        config.push_str(&format!("    - {{name: {name}, type: {type_name}}}\n"));
    }
    let path = std::path::Path::new("p.yaml");
    (
        trellis_resources::parse_str(path, components).unwrap(),
        trellis_resources::parse_str(path, &config)
            .unwrap()
            .configurations
            .remove(0),
    )
}

fn component(name: &str, type_name: &str, metadata: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  \
         type: {type_name}\n  version: v1\n  metadata:\n"
    );
    for (k, v) in metadata {
        yaml.push_str(&format!("  - name: {k}\n    value: '{v}'\n"));
    }
    yaml
}

fn assert_refused(r: &HttpResponse, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text());
    assert_eq!(r.json()["errorCode"], code, "{}", r.text());
}

/// A burst of invocations against the callee's `maxRequestsPerSecond`: the ones over it get
/// 429 and never reach the app; another calling app has a bucket of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_pipeline_rate_limit_admits_only_its_rate_per_calling_app() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start("limited").await;
    let (resources, config) = app_pipeline(
        &component(
            "rl",
            "middleware.http.ratelimit",
            &[("maxRequestsPerSecond", "5")],
        ),
        &[("rl", "middleware.http.ratelimit")],
    );
    let callee = sidecar("rl-callee", dir.path(), Some(app.port()), |c| {
        c.resources = resources;
        c.configuration = Some(config);
    })
    .await;
    let caller = sidecar("rl-caller", dir.path(), None, |_| {}).await;
    let other = sidecar("rl-other", dir.path(), None, |_| {}).await;

    let mut statuses = Vec::new();
    let started = std::time::Instant::now();
    for i in 0..12 {
        let r = request(
            "POST",
            &url(&caller, &format!("/v1.0/invoke/rl-callee/method/work/{i}")),
            &[],
            "x",
        )
        .await;
        if r.status == 429 {
            assert_refused(&r, 429, "ERR_TOO_MANY_REQUESTS");
        }
        statuses.push(r.status.as_u16());
    }
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(admitted + limited, 12, "{statuses:?}");
    // A full bucket (5) plus what refilled while the burst went on, however slow the
    // machine is.
    let refilled = (started.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        admitted <= 5 + refilled && limited >= 1,
        "a burst of 12 against 5/s: {statuses:?}"
    );
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert_eq!(
        app.hits(),
        admitted,
        "the app sees only the admitted calls: {statuses:?}"
    );
    // The limit is per calling app: another app still gets through.
    let r = request(
        "GET",
        &url(&other, "/v1.0/invoke/rl-callee/method/work/other"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(app.hits(), admitted + 1);
    // The caller's bucket refills with time.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = request(
        "GET",
        &url(&caller, "/v1.0/invoke/rl-callee/method/work/later"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for s in [caller, other, callee] {
        s.stop().await;
    }
}

/// `routerchecker` on the app pipeline: a method path off the rule is refused with 400 and
/// never reaches the app, an allowed one does. Bad references stop the start, naming the
/// field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_pipeline_route_check_refuses_paths_off_its_rule() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start("checked").await;
    let rc = component(
        "rc",
        "middleware.http.routerchecker",
        &[("rule", "^/orders(/[0-9]+)?$")],
    );
    let (resources, config) = app_pipeline(&rc, &[("rc", "middleware.http.routerchecker")]);
    let callee = sidecar("rc-callee", dir.path(), Some(app.port()), |c| {
        c.resources = resources;
        c.configuration = Some(config);
    })
    .await;
    let caller = sidecar("rc-caller", dir.path(), None, |_| {}).await;

    let r = request(
        "GET",
        &url(&caller, "/v1.0/invoke/rc-callee/method/orders/7"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/orders/7");
    for refused in ["/admin/drop", "/orders/7/../../admin", "/orders/x"] {
        let r = request(
            "DELETE",
            &url(&caller, &format!("/v1.0/invoke/rc-callee/method{refused}")),
            &[],
            "",
        )
        .await;
        assert_refused(&r, 400, "ERR_INVALID_ROUTE");
    }
    // The header form of invocation and the app invoking itself go the same way.
    let r = request(
        "POST",
        &url(&caller, "/admin/drop"),
        &[("dapr-app-id", "rc-callee")],
        "",
    )
    .await;
    assert_refused(&r, 400, "ERR_INVALID_ROUTE");
    let r = request(
        "GET",
        &url(&callee, "/v1.0/invoke/rc-callee/method/admin"),
        &[],
        "",
    )
    .await;
    assert_refused(&r, 400, "ERR_INVALID_ROUTE");
    assert_eq!(app.hits(), 1, "only /orders/7 reached the app");
    assert_eq!(app.hits_on("/orders/7"), 1);
    caller.stop().await;
    callee.stop().await;

    // A handler naming a component the app lacks, or one of another type, stops the start
    // with the field named.
    for (handlers, needle) in [
        (
            [("nope", "middleware.http.routerchecker")],
            "spec.appHttpPipeline: no middleware component named \"nope\"",
        ),
        (
            [("rc", "middleware.http.ratelimit")],
            "spec.appHttpPipeline: handler \"rc\" says type \"middleware.http.ratelimit\"",
        ),
    ] {
        let (resources, config) = app_pipeline(&rc, &handlers);
        let mut cfg = SidecarConfig::new("rc-bad", dir.path());
        cfg.resources = resources;
        cfg.configuration = Some(config);
        let err = crate::start_error(cfg).await;
        assert!(err.contains(needle), "{err}");
    }
}

/// The app pipeline is on the app channel, so deliveries go through it too: a route off the
/// rule never gets its events, the subscription list and allowed routes do. Bearer checks
/// the token of invocations; deliveries come from the sidecar itself and carry none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_pipeline_applies_to_deliveries_and_bearer_guards_invocations() {
    let dir = tempfile::tempdir().unwrap();
    let signer = key("k1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [signer.jwk.clone()]}).to_string()).unwrap();
    let components = format!(
        "{}---\n{}",
        component(
            "rc",
            "middleware.http.routerchecker",
            &[("rule", "^/(dapr/subscribe|orders|hello)$")],
        ),
        component(
            "jwt",
            "middleware.http.bearer",
            &[
                ("issuer", "https://idp.local"),
                ("audience", "orders"),
                ("jwksURL", jwks.to_str().unwrap()),
            ],
        ),
    );
    let (resources, config) = app_pipeline(
        &components,
        &[
            ("rc", "middleware.http.routerchecker"),
            ("jwt", "middleware.http.bearer"),
        ],
    );
    let app = SubscriberApp::start(Some(json!([
        {"pubsubname": "pubsub", "topic": "orders", "route": "/orders"},
        {"pubsubname": "pubsub", "topic": "audit", "route": "/audit"},
    ])))
    .await;
    let subscriber = sidecar(
        "piped-sub",
        dir.path(),
        Some(app.port()),
        |c: &mut SidecarConfig| {
            c.resources = resources;
            c.configuration = Some(config);
            c.delivery = DeliveryPolicy {
                max_attempts: 2,
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(20),
                max_in_flight: 4,
            };
        },
    )
    .await;
    // Both subscriptions came from `GET /dapr/subscribe`, through the pipeline.
    wait_subscribed(&subscriber, 2).await;
    let publisher = sidecar("piped-pub", dir.path(), None, |_| {}).await;

    for topic in ["audit", "orders"] {
        let r = request(
            "POST",
            &url(&publisher, &format!("/v1.0/publish/pubsub/{topic}")),
            &[("content-type", "application/json")],
            r#"{"n": 1}"#,
        )
        .await;
        assert_eq!(r.status, 204, "{}", r.text());
    }
    let got = app.wait_for("/orders", 1, WAIT).await;
    assert_eq!(got.len(), 1, "a delivery needs no token");
    assert_eq!(got[0].json()["data"], json!({"n": 1}));
    // `/audit` is off the rule: each attempt is refused (400, nacked) and none arrives.
    let rt = subscriber.runtime().clone();
    assert!(
        wait_until(WAIT, || {
            let rt = rt.clone();
            async move { rt.delivery_stats.retried.load(Ordering::Relaxed) >= 2 }
        })
        .await,
        "the refused delivery was not tried again"
    );
    assert!(app.received_on("/audit").is_empty(), "{:?}", app.received());

    // Invocations must carry a valid token; without one nothing reaches the app.
    let hello = url(&publisher, "/v1.0/invoke/piped-sub/method/hello");
    let r = request("POST", &hello, &[], "hi").await;
    assert_refused(&r, 401, "ERR_API_UNAUTHORIZED");
    let mut expired = good_claims();
    expired["exp"] = json!(crate::bearer::now() - 120);
    let stale = format!("Bearer {}", token(&signer, expired));
    let r = request("POST", &hello, &[("authorization", stale.as_str())], "hi").await;
    assert_refused(&r, 401, "ERR_API_UNAUTHORIZED");
    assert!(app.received_on("/hello").is_empty());
    let good = format!("Bearer {}", token(&signer, good_claims()));
    let r = request("POST", &hello, &[("authorization", good.as_str())], "hi").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(app.received_on("/hello").len(), 1);
    publisher.stop().await;
    subscriber.stop().await;
}

async fn wait_subscribed(s: &RunningSidecar, n: u64) {
    let rt = s.runtime().clone();
    assert!(
        wait_until(WAIT, || {
            let rt = rt.clone();
            async move { rt.delivery_stats.subscribed() >= n }
        })
        .await,
        "the sidecar did not subscribe"
    );
}
