//! The exporters against real receivers on loopback: OTLP over gRPC and HTTP decoded by
//! `opentelemetry-proto` in the test receiver, Zipkin's JSON to an HTTP app, and a dead
//! collector costing the caller nothing but counted drops; each over TLS to a receiver
//! with a certificate from a test CA, trusted or not.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use trellis_test_support::{OtlpReceiver, SubscriberApp, TestCa, free_port, wait_until};
use trellis_trace::export::{OtlpGrpc, OtlpHttp, Roots, Zipkin};
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
            Exporter::OtlpGrpc(OtlpGrpc::new(&receiver.grpc_addr.to_string(), None).unwrap()),
            "grpc",
        ),
        (
            Exporter::OtlpHttp(OtlpHttp::new(&receiver.http_addr.to_string(), None).unwrap()),
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
    let t = tracer(Exporter::Zipkin(
        Zipkin::new(&url, &Roots::native()).unwrap(),
    ));
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
    let t = tracer(Exporter::OtlpGrpc(OtlpGrpc::new(&dead, None).unwrap()));
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
    assert!(OtlpGrpc::new("", None).is_err());
    let err = OtlpHttp::new("https://collector:4318", None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("isSecure is false"), "{err}");
    assert!(Zipkin::new("http://[::1", &Roots::native()).is_err());
}

/// The two OTLP exporters to `receiver`, trusting `roots`.
fn otlp_exporters(receiver: &OtlpReceiver, roots: &Roots) -> [(Exporter, &'static str); 2] {
    let grpc = receiver.grpc_addr.to_string();
    let http = receiver.http_addr.to_string();
    [
        (
            Exporter::OtlpGrpc(OtlpGrpc::new(&grpc, Some(roots.clone())).unwrap()),
            "grpc",
        ),
        (
            Exporter::OtlpHttp(OtlpHttp::new(&http, Some(roots.clone())).unwrap()),
            "http",
        ),
    ]
}

#[tokio::test]
async fn otlp_over_tls_reaches_a_collector_whose_ca_is_trusted() {
    let ca = TestCa::new(&["127.0.0.1"]);
    let receiver = OtlpReceiver::start_tls(&ca).await;
    let roots = Roots::from_pem(ca.ca_pem().as_bytes()).unwrap();
    for (exporter, via) in otlp_exporters(&receiver, &roots) {
        assert!(exporter.endpoint().starts_with("https://127.0.0.1:"));
        let t = tracer(exporter);
        let (_, server, client) = record(&t);
        t.flush().await;
        assert_eq!(t.stats().failed.load(Ordering::Relaxed), 0, "{via}");
        assert_eq!(t.stats().exported.load(Ordering::Relaxed), 2, "{via}");
        let spans: Vec<_> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.via == via)
            .collect();
        let mut ids: Vec<_> = spans.iter().map(|s| s.span_id.clone()).collect();
        ids.sort();
        let mut want = vec![server.span_id.to_string(), client.span_id.to_string()];
        want.sort();
        assert_eq!(ids, want, "{via}");
    }
    assert_eq!(receiver.failed_handshakes(), 0);
}

#[tokio::test]
async fn an_untrusted_or_misnamed_certificate_fails_the_export_saying_why() {
    let ca = TestCa::new(&["127.0.0.1"]);
    let receiver = OtlpReceiver::start_tls(&ca).await;
    let stranger = TestCa::new(&["127.0.0.1"]);
    let other_roots = Roots::from_pem(stranger.ca_pem().as_bytes()).unwrap();
    for (exporter, via) in otlp_exporters(&receiver, &other_roots) {
        let error = exporter.export("orders", &[]).await.unwrap_err();
        assert!(
            error.contains("tls handshake with 127.0.0.1")
                && error.contains("UnknownIssuer")
                && error.contains("SSL_CERT_FILE"),
            "{via}: {error}"
        );
        let t = tracer(exporter);
        record(&t);
        t.flush().await;
        assert_eq!(t.stats().failed.load(Ordering::Relaxed), 2, "{via}");
        assert_eq!(t.stats().exported.load(Ordering::Relaxed), 0, "{via}");
    }
    assert!(receiver.spans().is_empty());
    // The receiver hears of each refusal a moment after the exporter gave up.
    let tried = wait_until(Duration::from_secs(5), || async {
        receiver.failed_handshakes() >= 4
    })
    .await;
    assert!(tried, "{} refused handshakes", receiver.failed_handshakes());

    // Trusted, but for another name than the endpoint's host.
    let misnamed = TestCa::new(&["collector.example"]);
    let receiver = OtlpReceiver::start_tls(&misnamed).await;
    let roots = Roots::from_pem(misnamed.ca_pem().as_bytes()).unwrap();
    for (exporter, via) in otlp_exporters(&receiver, &roots) {
        let error = exporter.export("orders", &[]).await.unwrap_err();
        assert!(error.contains("does not name"), "{via}: {error}");
    }
}

#[tokio::test]
async fn zipkin_over_https_follows_the_url() {
    // The receiver's HTTP endpoint serves OTLP only: a Zipkin post that gets its 404 made
    // it through the handshake.
    let ca = TestCa::new(&["127.0.0.1"]);
    let receiver = OtlpReceiver::start_tls(&ca).await;
    let url = format!("https://{}/api/v2/spans", receiver.http_addr);
    let trusted = Roots::from_pem(ca.ca_pem().as_bytes()).unwrap();
    let zipkin = Exporter::Zipkin(Zipkin::new(&url, &trusted).unwrap());
    let error = zipkin.export("orders", &[]).await.unwrap_err();
    assert!(error.ends_with("404 Not Found"), "{error}");
    let stranger = TestCa::new(&["127.0.0.1"]);
    let untrusted = Roots::from_pem(stranger.ca_pem().as_bytes()).unwrap();
    let zipkin = Exporter::Zipkin(Zipkin::new(&url, &untrusted).unwrap());
    let error = zipkin.export("orders", &[]).await.unwrap_err();
    assert!(error.contains("UnknownIssuer"), "{error}");
}
