//! The exporters against real receivers on loopback: OTLP over gRPC and HTTP decoded by
//! `opentelemetry-proto` in the test receiver, Zipkin's JSON to an HTTP app, and a dead
//! collector costing the caller nothing but counted drops.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use trellis_test_support::{OtlpReceiver, SubscriberApp, free_port};
use trellis_trace::export::{OtlpGrpc, OtlpHttp, Zipkin};
use trellis_trace::{Config, Exporter, SpanContext, SpanKind, Tracer};

fn tracer(exporter: Exporter) -> Tracer {
    let mut config = Config::new("orders", 1.0);
    config.exporters.push(exporter);
    Tracer::start(config)
}

/// A parent from a caller, a server span under it and a client span under that.
fn record(t: &Tracer) -> (SpanContext, SpanContext, SpanContext) {
    let caller = SpanContext::from_headers(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        Some("k=v"),
    )
    .unwrap();
    let mut server = t.span("/v1.0/state/{store}", SpanKind::Server, Some(&caller));
    server.set_attribute("http.response.status_code", 204i64);
    let mut client = t.span("state/set", SpanKind::Client, Some(server.context()));
    client.set_error("store unreachable");
    let (s, c) = (server.context().clone(), client.context().clone());
    client.end();
    server.end();
    (caller, s, c)
}

#[tokio::test]
async fn otlp_over_grpc_and_http_reach_a_receiver_with_their_links() {
    let receiver = OtlpReceiver::start().await;
    for (exporter, via) in [
        (
            Exporter::OtlpGrpc(OtlpGrpc::new(&receiver.grpc_addr.to_string()).unwrap()),
            "grpc",
        ),
        (
            Exporter::OtlpHttp(OtlpHttp::new(&receiver.http_addr.to_string()).unwrap()),
            "http",
        ),
    ] {
        let t = tracer(exporter);
        let (caller, server, client) = record(&t);
        t.flush().await;
        assert_eq!(t.stats().exported.load(Ordering::Relaxed), 2, "{via}");
        let spans: Vec<_> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.via == via)
            .collect();
        assert_eq!(spans.len(), 2, "{via}: {spans:?}");
        let server_span = spans.iter().find(|s| s.kind == 2).unwrap();
        let client_span = spans.iter().find(|s| s.kind == 3).unwrap();
        assert_eq!(server_span.service, "orders");
        assert_eq!(server_span.name, "/v1.0/state/{store}");
        assert_eq!(server_span.trace_id, caller.trace_id.to_string());
        assert_eq!(server_span.span_id, server.span_id.to_string());
        assert_eq!(server_span.parent_id, Some(caller.span_id.to_string()));
        assert_eq!(server_span.attributes["http.response.status_code"], "204");
        assert_eq!(server_span.error, None);
        assert_eq!(client_span.span_id, client.span_id.to_string());
        assert_eq!(client_span.parent_id, Some(server.span_id.to_string()));
        assert_eq!(client_span.error.as_deref(), Some("store unreachable"));
    }
}

#[tokio::test]
async fn zipkin_gets_json_v2_spans() {
    let app = SubscriberApp::start(None).await;
    let url = format!("http://127.0.0.1:{}/api/v2/spans", app.port());
    let t = tracer(Exporter::Zipkin(Zipkin::new(&url).unwrap()));
    let (caller, server, _) = record(&t);
    t.flush().await;
    let got = app
        .wait_for("/api/v2/spans", 1, Duration::from_secs(5))
        .await;
    let spans = got[0].json();
    let spans = spans.as_array().unwrap();
    assert_eq!(spans.len(), 2);
    let s = spans.iter().find(|s| s["kind"] == "SERVER").unwrap();
    assert_eq!(s["traceId"], caller.trace_id.to_string());
    assert_eq!(s["id"], server.span_id.to_string());
    assert_eq!(s["parentId"], caller.span_id.to_string());
    assert_eq!(s["localEndpoint"]["serviceName"], "orders");
    let c = spans.iter().find(|s| s["kind"] == "CLIENT").unwrap();
    assert_eq!(c["tags"]["error"], "store unreachable");
}

#[tokio::test]
async fn a_dead_collector_fails_exports_without_holding_anyone_up() {
    let dead = format!("127.0.0.1:{}", free_port());
    let t = tracer(Exporter::OtlpGrpc(OtlpGrpc::new(&dead).unwrap()));
    let started = std::time::Instant::now();
    for _ in 0..10 {
        record(&t);
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "recording spans waited for the collector"
    );
    t.flush().await;
    assert_eq!(t.stats().failed.load(Ordering::Relaxed), 20);
    assert_eq!(t.stats().exported.load(Ordering::Relaxed), 0);
}

#[test]
fn endpoints_are_checked_when_configured() {
    assert!(OtlpGrpc::new("").is_err());
    let err = OtlpHttp::new("https://collector:4318")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("https endpoints are not supported yet"),
        "{err}"
    );
    assert!(Zipkin::new("http://[::1").is_err());
}
