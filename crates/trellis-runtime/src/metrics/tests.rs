//! The exposition a [`Metrics`] writes, read back and asserted by value.

use std::time::Duration;

use trellis_test_support::exposition::{parse, sum};

use super::*;

const MS: Duration = Duration::from_millis(1);

#[test]
fn dapr_names_labels_and_units() {
    let m = Metrics::new("orders", "prod");
    for _ in 0..3 {
        m.http_server(&http::Method::GET, "/v1.0/state/{store}/{key}", "200", MS);
    }
    m.http_server(&http::Method::GET, "/v1.0/state/{store}/{key}", "404", MS);
    let text = m.encode();
    // A Dapr counter keeps its name: no `_total` appended.
    assert!(
        text.contains("# TYPE dapr_http_server_request_count counter"),
        "{text}"
    );
    let samples = parse(&text);
    let route = ("path", "/v1.0/state/{store}/{key}");
    let labels = [
        ("app_id", "orders"),
        ("method", "GET"),
        route,
        ("status", "200"),
    ];
    assert_eq!(
        sum(&samples, "dapr_http_server_request_count", &labels),
        3.0
    );
    assert_eq!(
        sum(&samples, "dapr_http_server_latency_count", &labels),
        3.0
    );
    // Milliseconds: three calls of 1 ms sum to 3.
    let ms = sum(&samples, "dapr_http_server_latency_sum", &labels);
    assert!((ms - 3.0).abs() < 1e-6, "{ms}");
    let not_found = [route, ("status", "404")];
    assert_eq!(
        sum(&samples, "dapr_http_server_request_count", &not_found),
        1.0
    );
    assert_eq!(
        sum(
            &samples,
            "trellis_build_info",
            &[("version", crate::TRELLIS_VERSION)]
        ),
        1.0
    );
}

#[test]
fn request_values_are_bounded() {
    let m = Metrics::new("a", "default");
    for i in 0..10_000 {
        m.invoke_sent(&format!("app-{i}"));
        m.grpc_server(&format!("/svc.S/M{i}"), "OK", MS);
        m.app_call(&http::Method::POST, &format!("/orders/{i}"), "200", MS);
    }
    let samples = parse(&m.encode());
    let series = |name: &str| samples.iter().filter(|s| s.name == name).count();
    assert_eq!(
        series("dapr_runtime_service_invocation_req_sent_total"),
        LABEL_LIMIT + 1
    );
    assert_eq!(
        series("dapr_grpc_io_server_completed_rpcs"),
        GRPC_METHOD_LIMIT + 1
    );
    assert_eq!(series("dapr_http_client_completed_count"), LABEL_LIMIT + 1);
    let other = [("dst_app_id", OTHER)];
    let collapsed = sum(
        &samples,
        "dapr_runtime_service_invocation_req_sent_total",
        &other,
    );
    assert_eq!(collapsed, (10_000 - LABEL_LIMIT) as f64);
}

#[test]
fn unknown_methods_collapse() {
    let odd = http::Method::from_bytes(b"BREW").unwrap();
    assert_eq!(method_label(&odd), OTHER);
    assert_eq!(method_label(&http::Method::PATCH), "PATCH");
}

#[test]
fn breaker_state_is_one_series_at_one() {
    let m = Metrics::new("a", "default");
    let policed = m
        .policed(PolicyTarget {
            timeout: None,
            retry: Some("three"),
            breaker: Some("cb"),
            direction: "outbound",
            target: "app_b",
        })
        .unwrap();
    policed.breaker_is(BreakerState::Closed, false);
    policed.applied();
    policed.retried();
    policed.breaker_is(BreakerState::Open, true);
    let samples = parse(&m.encode());
    let state = |status| {
        let labels = [("name", "cb"), ("target", "app_b"), ("status", status)];
        sum(&samples, "dapr_resiliency_cb_state", &labels)
    };
    assert_eq!(
        (state("closed"), state("open"), state("half-open")),
        (0.0, 1.0, 0.0)
    );
    let retries = [("name", "three"), ("policy", "retry")];
    assert_eq!(
        sum(&samples, "dapr_resiliency_activations_total", &retries),
        1.0
    );
    assert_eq!(sum(&samples, "dapr_resiliency_count", &retries), 1.0);
    let opened = [("policy", "circuitbreaker"), ("status", "open")];
    assert_eq!(
        sum(&samples, "dapr_resiliency_activations_total", &opened),
        1.0
    );
    // Only the policies the target has get series.
    let timeouts = [("policy", "timeout")];
    assert_eq!(
        samples
            .iter()
            .filter(|s| s.name == "dapr_resiliency_count")
            .filter(|s| timeouts
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v)))
            .count(),
        0
    );
}

#[test]
fn disabled_records_nothing() {
    let m = Metrics::disabled();
    m.http_server(&http::Method::GET, "/x", "200", MS);
    assert!(m.ingress("pubsub", "t").is_none());
    assert_eq!(m.encode(), "");
}

#[test]
fn grpc_codes_by_go_names() {
    assert_eq!(layers::code_name(0), "OK");
    assert_eq!(layers::code_name(5), "NotFound");
    assert_eq!(layers::code_name(16), "Unauthenticated");
    assert_eq!(layers::code_name(99), OTHER);
}
