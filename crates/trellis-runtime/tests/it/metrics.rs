//! Metrics of in-process sidecars, scraped from their metrics port and asserted by value: a
//! known number of calls gives that count, per route template, status, target app,
//! component and delivery outcome; request-borne label values stay bounded.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::json;
use trellis_runtime::{DeliveryPolicy, RunningSidecar};
use trellis_test_support::exposition::{Sample, parse, sum};
use trellis_test_support::{SubscriberApp, TestApp, request, wait_until};

use crate::{grpc_sidecar, sidecar, url};

const WAIT: Duration = Duration::from_secs(15);

/// `GET /metrics` on the sidecar's metrics port, parsed.
async fn scrape(s: &RunningSidecar) -> Vec<Sample> {
    let addr = s.metrics_addr.expect("a metrics listener");
    let r = request("GET", &format!("http://{addr}/metrics"), &[], "").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.header("content-type")
    );
    parse(&r.text())
}

/// Scrapes until `name` with `labels` sums to `want` (metrics recorded after the answer
/// went out may lag it a little); the last value seen.
async fn settle_on(s: &RunningSidecar, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let seen = sum(&scrape(s).await, name, labels);
        if seen == want || std::time::Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_count_by_route_template_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar("counted", dir.path(), None, |_| {}).await;
    for i in 0..5 {
        let r = request(
            "GET",
            &url(&s, &format!("/v1.0/state/statestore/k{i}")),
            &[],
            "",
        )
        .await;
        assert_eq!(r.status, 204);
    }
    for i in 0..2 {
        let body = json!([{"key": format!("k{i}"), "value": i}]).to_string();
        let r = request(
            "POST",
            &url(&s, "/v1.0/state/statestore"),
            &[("content-type", "application/json")],
            body,
        )
        .await;
        assert_eq!(r.status, 204);
    }
    let r = request("GET", &url(&s, "/v1.0/state/nostore/k"), &[], "").await;
    assert_eq!(r.status, 400);
    for _ in 0..3 {
        let r = request("GET", &url(&s, "/no/such/route"), &[], "").await;
        assert_eq!(r.status, 404);
    }

    let m = scrape(&s).await;
    let count = |labels: &[(&str, &str)]| sum(&m, "dapr_http_server_request_count", labels);
    let key_route = ("path", "/v1.0/state/{store}/{key}");
    let app = ("app_id", "counted");
    assert_eq!(
        count(&[app, ("method", "GET"), key_route, ("status", "204")]),
        5.0
    );
    assert_eq!(
        count(&[("method", "GET"), key_route, ("status", "400")]),
        1.0
    );
    let save = [
        ("method", "POST"),
        ("path", "/v1.0/state/{store}"),
        ("status", "204"),
    ];
    assert_eq!(count(&save), 2.0);
    assert_eq!(count(&[("path", "_other"), ("status", "404")]), 3.0);
    // The histogram counted the same calls.
    let timed = [key_route, ("status", "204")];
    assert_eq!(sum(&m, "dapr_http_server_latency_count", &timed), 5.0);
    assert_eq!(
        sum(
            &m,
            "dapr_http_server_latency_bucket",
            &[key_route, ("status", "204"), ("le", "+Inf")]
        ),
        5.0
    );
    // The store saw five reads and two writes, all successful, under its own name.
    let state = |op: &str| {
        let labels = [
            ("component", "statestore"),
            ("operation", op),
            ("success", "true"),
        ];
        sum(&m, "dapr_component_state_count", &labels)
    };
    assert_eq!(state("get"), 5.0);
    assert_eq!(state("set") + state("bulk_set"), 2.0);
    assert_eq!(
        sum(
            &m,
            "dapr_component_state_count",
            &[("namespace", "default"), ("success", "false")]
        ),
        0.0
    );
    assert_eq!(sum(&m, "trellis_app_healthy", &[app]), 1.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_distinct_paths_keep_the_series_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar("bounded", dir.path(), None, |_| {}).await;
    let paths: Vec<String> = (0..10_000)
        .map(|i| match i % 2 {
            0 => format!("/v1.0/secrets/nostore/key-{i}"),
            _ => format!("/random/{i}/path"),
        })
        .collect();
    for chunk in paths.chunks(50) {
        let urls: Vec<String> = chunk.iter().map(|p| url(&s, p)).collect();
        join_all(urls.iter().map(|u| request("GET", u, &[], ""))).await;
    }
    let m = scrape(&s).await;
    let series: Vec<&Sample> = m
        .iter()
        .filter(|x| x.name == "dapr_http_server_request_count")
        .collect();
    let paths: std::collections::BTreeSet<&str> =
        series.iter().map(|x| x.labels["path"].as_str()).collect();
    assert_eq!(
        paths.into_iter().collect::<Vec<_>>(),
        ["/v1.0/secrets/{store}/{key}", "_other"],
        "{series:#?}"
    );
    assert!(series.len() <= 4, "{series:#?}");
    let total: f64 = series.iter().map(|x| x.value).sum();
    assert_eq!(total, 10_000.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_count_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start("callee").await;
    let callee = sidecar("callee", dir.path(), Some(app.port()), |_| {}).await;
    let caller = sidecar("caller", dir.path(), None, |_| {}).await;
    for _ in 0..3 {
        let r = request(
            "POST",
            &url(&caller, "/v1.0/invoke/callee/method/echo"),
            &[],
            "hi",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = request(
        "GET",
        &url(&caller, "/anything"),
        &[("dapr-app-id", "callee")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(
        "GET",
        &url(&caller, "/v1.0/invoke/callee/method/status/404"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 404);

    let m = scrape(&caller).await;
    let invoke_route = ("path", "/v1.0/invoke/{id}/method/{method}");
    let api = |status| {
        sum(
            &m,
            "dapr_http_server_request_count",
            &[invoke_route, ("status", status)],
        )
    };
    assert_eq!(
        (api("200"), api("404")),
        (4.0, 1.0),
        "both invocation forms"
    );
    let sent = [
        ("app_id", "caller"),
        ("dst_app_id", "callee"),
        ("type", "unary"),
    ];
    assert_eq!(
        sum(&m, "dapr_runtime_service_invocation_req_sent_total", &sent),
        5.0
    );
    let answered = |status| {
        let labels = [("src_app_id", "callee"), ("status", status)];
        sum(
            &m,
            "dapr_runtime_service_invocation_res_recv_total",
            &labels,
        )
    };
    assert_eq!((answered("200"), answered("404")), (4.0, 1.0));
    let latency = [("src_app_id", "callee")];
    assert_eq!(
        sum(
            &m,
            "dapr_runtime_service_invocation_res_recv_latency_ms_count",
            &latency
        ),
        5.0
    );

    // The callee counted the same calls per caller, and its requests to its app.
    let m = scrape(&callee).await;
    let received = [("app_id", "callee"), ("src_app_id", "caller")];
    assert_eq!(
        sum(
            &m,
            "dapr_runtime_service_invocation_req_recv_total",
            &received
        ),
        5.0
    );
    let answered = [("dst_app_id", "caller"), ("status", "404")];
    assert_eq!(
        sum(
            &m,
            "dapr_runtime_service_invocation_res_sent_total",
            &answered
        ),
        1.0
    );
    let to_app = [("method", "POST"), ("path", "/echo"), ("status", "200")];
    assert_eq!(sum(&m, "dapr_http_client_completed_count", &to_app), 3.0);
    assert_eq!(
        sum(&m, "dapr_http_client_roundtrip_latency_count", &to_app),
        3.0
    );
    caller.stop().await;
    callee.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_count_by_how_they_settled() {
    let dir = tempfile::tempdir().unwrap();
    let app = SubscriberApp::start(Some(json!([
        {"pubsubname": "pubsub", "topic": "fine", "route": "/fine"},
        {"pubsubname": "pubsub", "topic": "junk", "route": "/junk"},
        {"pubsubname": "pubsub", "topic": "doomed", "route": "/doomed", "deadLetterTopic": "dead"},
        {"pubsubname": "pubsub", "topic": "dead", "route": "/dead"},
    ])))
    .await;
    app.respond("/junk", &[(200, r#"{"status": "DROP"}"#)]);
    app.respond("/doomed", &[(500, "")]);
    let s = sidecar("settler", dir.path(), Some(app.port()), |c| {
        c.delivery = DeliveryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_in_flight: 16,
        };
    })
    .await;
    let rt = s.runtime().clone();
    assert!(
        wait_until(WAIT, || {
            let rt = rt.clone();
            async move { rt.delivery_stats.subscribed() >= 4 }
        })
        .await
    );
    for (topic, n) in [("fine", 2), ("junk", 1), ("doomed", 1)] {
        for _ in 0..n {
            let path = format!("/v1.0/publish/pubsub/{topic}");
            let r = request(
                "POST",
                &url(&s, &path),
                &[("content-type", "application/json")],
                "{}",
            )
            .await;
            assert_eq!(r.status, 204, "{}", r.text());
        }
    }
    let ingress = "dapr_component_pubsub_ingress_count";
    let labels = |topic, status| {
        [
            ("component", "pubsub"),
            ("topic", topic),
            ("process_status", status),
            ("status", status),
        ]
    };
    assert_eq!(
        settle_on(&s, ingress, &labels("dead", "success"), 1.0).await,
        1.0
    );
    let m = scrape(&s).await;
    assert_eq!(sum(&m, ingress, &labels("fine", "success")), 2.0);
    assert_eq!(sum(&m, ingress, &labels("junk", "drop")), 1.0);
    assert_eq!(
        sum(&m, ingress, &labels("doomed", "retry")),
        2.0,
        "attempts 1 and 2"
    );
    assert_eq!(sum(&m, ingress, &labels("doomed", "dead_letter")), 1.0);
    assert_eq!(
        sum(
            &m,
            "dapr_component_pubsub_ingress_latencies_count",
            &labels("fine", "success")
        ),
        2.0
    );
    // Publishes, the dead letter's included.
    let egress = |topic| {
        let labels = [
            ("component", "pubsub"),
            ("topic", topic),
            ("success", "true"),
        ];
        sum(&m, "dapr_component_pubsub_egress_count", &labels)
    };
    assert_eq!(
        (
            egress("fine"),
            egress("junk"),
            egress("doomed"),
            egress("dead")
        ),
        (2.0, 1.0, 1.0, 1.0)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_count_by_method_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let s = grpc_sidecar("rpc", dir.path(), None, |_| {}).await;
    let mut client = crate::grpc::client(&s).await;
    for _ in 0..2 {
        client
            .get_metadata(trellis_proto::runtime::GetMetadataRequest::default())
            .await
            .unwrap();
    }
    let missing = trellis_proto::runtime::GetStateRequest {
        store_name: "nostore".into(),
        key: "k".into(),
        ..Default::default()
    };
    assert!(client.get_state(missing).await.is_err());
    let rpcs = "dapr_grpc_io_server_completed_rpcs";
    let labels = |method, status| {
        [
            ("grpc_server_method", method),
            ("grpc_server_status", status),
        ]
    };
    let metadata = labels("/dapr.proto.runtime.v1.Dapr/GetMetadata", "OK");
    assert_eq!(settle_on(&s, rpcs, &metadata, 2.0).await, 2.0);
    let m = scrape(&s).await;
    let failed = labels("/dapr.proto.runtime.v1.Dapr/GetState", "InvalidArgument");
    assert_eq!(
        sum(&m, rpcs, &failed),
        1.0,
        "{:#?}",
        m.iter().filter(|x| x.name == rpcs).collect::<Vec<_>>()
    );
    assert_eq!(
        sum(&m, "dapr_grpc_io_server_server_latency_count", &metadata),
        2.0
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resiliency_events_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::start("flaky").await;
    let yaml = "apiVersion: dapr.io/v1alpha1\nkind: Resiliency\nmetadata:\n  name: r\nspec:\n  policies:\n    retries:\n      twice:\n        policy: constant\n        duration: 10ms\n        maxRetries: 2\n    circuitBreakers:\n      cb:\n        maxRequests: 1\n        timeout: 60s\n        trip: consecutiveFailures > 2\n  targets:\n    apps:\n      flaky:\n        retry: twice\n        circuitBreaker: cb\n";
    let resources = trellis_resources::parse_str(std::path::Path::new("r.yaml"), yaml).unwrap();
    let callee = sidecar("flaky", dir.path(), Some(app.port()), |_| {}).await;
    let caller = sidecar("policed", dir.path(), None, |c| c.resources = resources).await;
    // Two failures, then a success: two retries, the breaker stays closed.
    let r = request(
        "GET",
        &url(&caller, "/v1.0/invoke/flaky/method/flaky/2/a"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = scrape(&caller).await;
    let policy = |name, kind| {
        [
            ("name", name),
            ("policy", kind),
            ("target", "app_flaky"),
            ("flow_direction", "outbound"),
        ]
    };
    assert_eq!(
        sum(
            &m,
            "dapr_resiliency_activations_total",
            &policy("twice", "retry")
        ),
        2.0
    );
    assert_eq!(
        sum(&m, "dapr_resiliency_count", &policy("twice", "retry")),
        1.0
    );
    let state = |status| {
        let mut labels = policy("cb", "circuitbreaker").to_vec();
        labels.push(("status", status));
        sum(&m, "dapr_resiliency_cb_state", &labels)
    };
    assert_eq!((state("closed"), state("open")), (1.0, 0.0));
    // Three failures in a row open it.
    let r = request(
        "GET",
        &url(&caller, "/v1.0/invoke/flaky/method/flaky/9/b"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    let m = scrape(&caller).await;
    let state = |status| {
        let mut labels = policy("cb", "circuitbreaker").to_vec();
        labels.push(("status", status));
        sum(&m, "dapr_resiliency_cb_state", &labels)
    };
    assert_eq!((state("closed"), state("open")), (0.0, 1.0));
    let mut opened = policy("cb", "circuitbreaker").to_vec();
    opened.push(("status", "open"));
    assert_eq!(sum(&m, "dapr_resiliency_activations_total", &opened), 1.0);
    caller.stop().await;
    callee.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_metrics_serve_and_record_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = sidecar("quiet", dir.path(), None, |c| c.enable_metrics = false).await;
    assert_eq!(s.metrics_addr, None, "no metrics port is served");
    assert!(!s.runtime().metrics.is_enabled());
    s.stop().await;
    // A Configuration's `spec.metrics.enabled: false` turns them off too.
    let yaml = "apiVersion: dapr.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: c\nspec:\n  metrics:\n    enabled: false\n";
    let cfg = trellis_resources::parse_str(std::path::Path::new("c.yaml"), yaml)
        .unwrap()
        .configurations
        .remove(0);
    let s = sidecar("quiet2", dir.path(), None, |c| c.configuration = Some(cfg)).await;
    assert_eq!(s.metrics_addr, None);
    s.stop().await;
}
